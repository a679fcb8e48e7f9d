//! Known models: context windows and list prices of well-known models, from the data file
//! `bin/weir/data/models.toml` (its header says where the figures come from, when they were
//! checked, and how to refresh them). Used only where the configuration says nothing.

use serde::Deserialize;
use std::sync::LazyLock;

/// One known model.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KnownModel {
    /// Its name as providers' APIs take it.
    pub name: String,
    /// Its context window, in tokens.
    pub context_window: u32,
    /// USD per million input tokens.
    pub input: f64,
    /// USD per million output tokens.
    pub output: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[allow(dead_code)]
    checked: String,
    models: Vec<KnownModel>,
}

/// The data file, compiled in.
pub const MODELS_TOML: &str = include_str!("../../data/models.toml");

static KNOWN: LazyLock<Vec<KnownModel>> = LazyLock::new(|| {
    toml::from_str::<File>(MODELS_TOML)
        .expect("bin/weir/data/models.toml is valid (a unit test reads it)")
        .models
});

/// The known model `name` is, if any: by its full name, else without a `vendor/` prefix,
/// else without a date suffix (`-2024-08-06`, `-20241022`).
pub fn lookup(name: &str) -> Option<&'static KnownModel> {
    let find = |n: &str| KNOWN.iter().find(|m| m.name == n);
    let bare = name.rsplit('/').next().unwrap_or(name);
    find(name)
        .or_else(|| find(bare))
        .or_else(|| find(without_date(bare)?))
}

/// `name` without a trailing `-YYYY-MM-DD` or `-YYYYMMDD`.
fn without_date(name: &str) -> Option<&str> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if let Some((head, day)) = name.rsplit_once('-') {
        if day.len() == 8 && digits(day) {
            return Some(head);
        }
        let (head, month) = head.rsplit_once('-')?;
        let (head, year) = head.rsplit_once('-')?;
        if year.len() == 4
            && month.len() == 2
            && day.len() == 2
            && digits(year)
            && digits(month)
            && digits(day)
        {
            return Some(head);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_file_reads_and_names_are_unique() {
        let names: Vec<&str> = KNOWN.iter().map(|m| m.name.as_str()).collect();
        assert!(names.len() >= 20, "{names:?}");
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len(), "a model listed twice");
        assert!(KNOWN
            .iter()
            .all(|m| m.context_window >= 4096 && m.input >= 0.0 && m.output >= m.input));
    }

    #[test]
    fn names_match_with_vendor_prefixes_and_date_suffixes() {
        assert_eq!(lookup("gpt-4.1").unwrap().context_window, 1_047_576);
        assert_eq!(lookup("gpt-4o-2024-08-06").unwrap().name, "gpt-4o");
        assert_eq!(lookup("openai/gpt-4o-mini").unwrap().name, "gpt-4o-mini");
        assert_eq!(
            lookup("claude-3-5-sonnet-20241022").unwrap().name,
            "claude-3-5-sonnet"
        );
        assert_eq!(
            lookup("gpt-4.1-mini").unwrap().name,
            "gpt-4.1-mini",
            "not gpt-4.1"
        );
        assert!(lookup("my-finetune").is_none());
        assert!(lookup("gpt-4o-2024-8-6").is_none());
    }
}
