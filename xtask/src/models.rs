//! `cargo xtask models FILE`: refreshes the figures of `bin/weir/data/models.toml` from
//! LiteLLM's `model_prices_and_context_window.json` (a JSON object keyed by model name, each
//! with `max_input_tokens`, `input_cost_per_token` and `output_cost_per_token`). The models
//! listed, their order and the file's header are kept; each changed figure is printed.

use crate::Result;
use std::path::Path;

/// Prefixes LiteLLM files some models under.
const PREFIXES: &[&str] = &[
    "",
    "openai/",
    "anthropic/",
    "gemini/",
    "deepseek/",
    "mistral/",
];

pub(crate) fn run(root: &Path, args: &[String]) -> Result {
    let [source] = args else {
        return Err("usage: cargo xtask models model_prices_and_context_window.json".into());
    };
    let json = std::fs::read_to_string(source).map_err(|e| format!("{source}: {e}"))?;
    let table: serde_json::Value =
        serde_json::from_str(&json).map_err(|e| format!("{source}: {e}"))?;
    let path = root.join("bin/weir/data/models.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
    let (updated, changes) = refresh(&text, &table)?;
    for change in &changes {
        println!("{change}");
    }
    if changes.is_empty() {
        println!("no figure changed");
    } else {
        std::fs::write(&path, updated).map_err(|e| e.to_string())?;
        println!(
            "{} figures changed in {}: set `checked` to today's date, then commit",
            changes.len(),
            path.display()
        );
    }
    Ok(())
}

/// The file with each listed model's figures taken from `table`, and what changed.
fn refresh(text: &str, table: &serde_json::Value) -> Result<(String, Vec<String>)> {
    let mut out = String::with_capacity(text.len());
    let mut changes = Vec::new();
    let mut model: Option<&serde_json::Value> = None;
    let mut name = String::new();
    for line in text.lines() {
        if let Some(value) = line.strip_prefix("name = ") {
            name = value.trim_matches('"').to_owned();
            model = PREFIXES
                .iter()
                .find_map(|prefix| table.get(format!("{prefix}{name}")));
            if model.is_none() {
                changes.push(format!("{name}: not in the source, kept as it was"));
            }
        }
        let field = line.split_once(" = ").map(|(k, v)| (k, v.trim()));
        let fresh = match (field, model) {
            (Some(("context_window", _)), Some(m)) => m["max_input_tokens"]
                .as_u64()
                .map(|tokens| tokens.to_string()),
            (Some(("input", _)), Some(m)) => m["input_cost_per_token"].as_f64().map(per_million),
            (Some(("output", _)), Some(m)) => m["output_cost_per_token"].as_f64().map(per_million),
            _ => None,
        };
        match (field, fresh) {
            (Some((key, old)), Some(new)) if old != new => {
                changes.push(format!("{name}: {key} {old} -> {new}"));
                out.push_str(&format!("{key} = {new}\n"));
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    Ok((out, changes))
}

/// USD per token as USD per million tokens, as the file writes it.
fn per_million(per_token: f64) -> String {
    let value = (per_token * 1e6 * 1e6).round() / 1e6;
    let text = format!("{value}");
    if text.contains('.') {
        text
    } else {
        format!("{text}.0")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_refreshed_and_the_rest_kept() {
        let file = "# header\nchecked = \"2025-06\"\n\n[[models]]\nname = \"gpt-4o\"\ncontext_window = 128000\ninput = 2.5\noutput = 10.0\n\n[[models]]\nname = \"claude-3-5-haiku\"\ncontext_window = 200000\ninput = 0.8\noutput = 4.0\n\n[[models]]\nname = \"gone\"\ncontext_window = 1\ninput = 1.0\noutput = 1.0\n";
        let table = serde_json::json!({
            "gpt-4o": {"max_input_tokens": 128000, "input_cost_per_token": 2.0e-6, "output_cost_per_token": 8.0e-6},
            "anthropic/claude-3-5-haiku": {"max_input_tokens": 200000, "input_cost_per_token": 8.0e-7, "output_cost_per_token": 4.0e-6},
        });
        let (out, changes) = refresh(file, &table).unwrap();
        assert_eq!(
            changes,
            [
                "gpt-4o: input 2.5 -> 2.0",
                "gpt-4o: output 10.0 -> 8.0",
                "gone: not in the source, kept as it was"
            ]
        );
        assert!(out.starts_with("# header\nchecked = \"2025-06\"\n"));
        assert!(
            out.contains("name = \"gpt-4o\"\ncontext_window = 128000\ninput = 2.0\noutput = 8.0\n")
        );
        assert!(out.contains("name = \"gone\"\ncontext_window = 1\n"));
        assert_eq!(out.lines().count(), file.lines().count());
    }
}
