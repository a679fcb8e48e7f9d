//! Walking the file: the spanned TOML tree read table by table, every problem collected.
//!
//! A section reads its keys through a [`Table`], which names each key by its full path
//! (`providers[0].breaker.window`), knows the keys its table may hold (anything else is an
//! unknown key, with a "did you mean" when one is near), and turns a value of the wrong type
//! into words a person reads (`expected a duration such as "30s", found the number 30`).
//! Readers never stop at a problem: they note it with the [`Reader`] and go on with the
//! default, so one run reports every mistake in the file; [`Reader::finish`] then refuses the
//! whole configuration if any was noted.

use super::{ConfigError, Problem};
use std::cell::RefCell;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// A value and where it sits in the file.
#[derive(Debug, Clone)]
pub(super) struct At<T> {
    pub(super) value: T,
    pub(super) span: Range<usize>,
}

/// The problems found in one file.
pub(super) struct Reader<'a> {
    file: &'a Path,
    text: &'a str,
    problems: RefCell<Vec<(usize, Problem)>>,
}

impl<'a> Reader<'a> {
    pub(super) fn new(file: &'a Path, text: &'a str) -> Self {
        Self {
            file,
            text,
            problems: RefCell::new(Vec::new()),
        }
    }

    /// Notes a problem with the value or key at `span`.
    pub(super) fn problem(&self, span: Range<usize>, key: &str, message: impl Into<String>) {
        let start = span.start.min(self.text.len());
        let before = &self.text[..start];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let problem = Problem {
            file: self.file.to_owned(),
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
            key: key.to_owned(),
            message: message.into(),
        };
        self.problems.borrow_mut().push((start, problem));
    }

    /// Notes a problem in an environment variable the file leaves a setting to (no line).
    pub(super) fn env_problem(&self, name: &str, message: impl Into<String>) {
        let problem = Problem {
            file: self.file.to_owned(),
            line: 0,
            column: 0,
            key: name.to_owned(),
            message: message.into(),
        };
        self.problems.borrow_mut().push((usize::MAX, problem));
    }

    /// The file being read.
    pub(super) fn file(&self) -> &'a Path {
        self.file
    }

    /// `value`, unless a problem was noted: then every problem, in file order.
    pub(super) fn finish<T>(self, value: T) -> Result<T, ConfigError> {
        let mut problems = self.problems.into_inner();
        if problems.is_empty() {
            return Ok(value);
        }
        problems.sort_by_key(|(at, _)| *at);
        Err(ConfigError {
            problems: problems.into_iter().map(|(_, p)| p).collect(),
        })
    }

    /// The document's top-level table.
    pub(super) fn root(
        &'a self,
        root: &'a Spanned<DeTable<'a>>,
        keys: &'static [&'static str],
    ) -> Table<'a> {
        Table::new(self, String::new(), root.span(), root.get_ref(), keys)
    }

    /// `value` as a table at `path`, or a problem if it is something else.
    pub(super) fn table(
        &'a self,
        value: &'a Spanned<DeValue<'a>>,
        path: String,
        keys: &'static [&'static str],
    ) -> Option<Table<'a>> {
        match value.get_ref() {
            DeValue::Table(table) => Some(Table::new(self, path, value.span(), table, keys)),
            other => {
                self.problem(value.span(), &path, expected("a table", other));
                None
            }
        }
    }
}

/// One table of the file, with the keys it may hold.
pub(super) struct Table<'a> {
    reader: &'a Reader<'a>,
    path: String,
    span: Range<usize>,
    entries: &'a DeTable<'a>,
    keys: &'static [&'static str],
}

impl<'a> Table<'a> {
    fn new(
        reader: &'a Reader<'a>,
        path: String,
        span: Range<usize>,
        entries: &'a DeTable<'a>,
        keys: &'static [&'static str],
    ) -> Self {
        let table = Self {
            reader,
            path,
            span,
            entries,
            keys,
        };
        for (key, _) in entries.iter() {
            if !keys.contains(&key.get_ref().as_ref()) {
                let message = match near(key.get_ref(), keys) {
                    Some(known) => format!("unknown key (did you mean `{known}`?)"),
                    None if keys.len() <= 12 => {
                        format!("unknown key (this table takes {})", list(keys))
                    }
                    None => "unknown key".to_owned(),
                };
                reader.problem(key.span(), &table.key(key.get_ref()), message);
            }
        }
        table
    }

    /// The reader problems go to.
    pub(super) fn reader(&self) -> &'a Reader<'a> {
        self.reader
    }

    /// Where the table sits (its header, or its inline braces).
    pub(super) fn span(&self) -> Range<usize> {
        self.span.clone()
    }

    /// The full path of `name` in this table.
    pub(super) fn key(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    /// Notes a problem with the value of `name` (or the table when `name` is absent).
    pub(super) fn problem(&self, span: Range<usize>, name: &str, message: impl Into<String>) {
        self.reader.problem(span, &self.key(name), message);
    }

    /// The raw value of `name`.
    pub(super) fn get(&self, name: &str) -> Option<&'a Spanned<DeValue<'a>>> {
        debug_assert!(
            self.keys.contains(&name),
            "`{name}` is not declared for this table"
        );
        self.entries.get(name)
    }

    /// Whether `name` is set.
    pub(super) fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Looks `name` up with `read`; a value of another type is a problem described as `what`.
    fn typed<T>(
        &self,
        name: &str,
        what: &str,
        read: impl FnOnce(&'a DeValue<'a>) -> Option<T>,
    ) -> Option<At<T>> {
        let value = self.get(name)?;
        match read(value.get_ref()) {
            Some(v) => Some(At {
                value: v,
                span: value.span(),
            }),
            None => {
                self.problem(value.span(), name, expected(what, value.get_ref()));
                None
            }
        }
    }

    /// A string.
    pub(super) fn string(&self, name: &str) -> Option<At<&'a str>> {
        self.typed(name, "a string", |v| match v {
            DeValue::String(s) => Some(s.as_ref()),
            _ => None,
        })
    }

    /// A string that must be there: its absence is a problem.
    pub(super) fn required(&self, name: &str) -> Option<At<&'a str>> {
        if !self.has(name) {
            self.problem(self.span(), name, "is required");
        }
        self.string(name)
    }

    /// `true` or `false`.
    pub(super) fn boolean(&self, name: &str) -> Option<bool> {
        self.typed(name, "true or false", DeValue::as_bool)
            .map(|b| b.value)
    }

    /// A whole number, 0 or more.
    pub(super) fn whole(&self, name: &str) -> Option<At<u64>> {
        let at = self.typed(name, "a whole number", |v| match v {
            DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix()).ok(),
            _ => None,
        })?;
        match u64::try_from(at.value) {
            Ok(value) => Some(At {
                value,
                span: at.span,
            }),
            Err(_) if at.value < 0 => {
                self.problem(at.span, name, "must be 0 or more");
                None
            }
            Err(_) => {
                self.problem(at.span, name, "is too large");
                None
            }
        }
    }

    /// A whole number that fits a `u32`.
    pub(super) fn whole32(&self, name: &str) -> Option<At<u32>> {
        let at = self.whole(name)?;
        match u32::try_from(at.value) {
            Ok(value) => Some(At {
                value,
                span: at.span,
            }),
            Err(_) => {
                self.problem(at.span, name, format!("must be at most {}", u32::MAX));
                None
            }
        }
    }

    /// A whole number between `min` and `max`, or `default` when unset.
    pub(super) fn count(&self, name: &str, default: u64, min: u64, max: u64) -> u64 {
        match self.whole(name) {
            None => default,
            Some(v) if (min..=max).contains(&v.value) => v.value,
            Some(v) => {
                self.problem(v.span, name, format!("must be between {min} and {max}"));
                default
            }
        }
    }

    /// A number (whole or not).
    pub(super) fn number(&self, name: &str) -> Option<At<f64>> {
        let at = self.typed(name, "a number", |v| match v {
            DeValue::Float(f) => f.as_str().parse().ok(),
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .map(|i| i as f64),
            _ => None,
        })?;
        if at.value.is_nan() {
            self.problem(at.span, name, "must be a number, not nan");
            return None;
        }
        Some(at)
    }

    /// A duration (`"500ms"`, `"30s"`, `"2m"`, `"1h"`).
    pub(super) fn duration(&self, name: &str) -> Option<At<Duration>> {
        let text = self.typed(name, "a duration such as \"30s\"", |v| match v {
            DeValue::String(s) => Some(s.as_ref()),
            _ => None,
        })?;
        match parse_duration(text.value) {
            Some(value) => Some(At {
                value,
                span: text.span,
            }),
            None => {
                self.problem(
                    text.span,
                    name,
                    format!(
                        "`{}` is not a duration (write e.g. \"500ms\", \"30s\", \"2m\")",
                        shorten(text.value)
                    ),
                );
                None
            }
        }
    }

    /// A duration, or `default` when unset (or wrong: the problem is noted).
    pub(super) fn duration_or(&self, name: &str, default: Duration) -> Duration {
        self.duration(name).map_or(default, |d| d.value)
    }

    /// A duration above zero, or `default`.
    pub(super) fn positive_duration_or(&self, name: &str, default: Duration) -> Duration {
        match self.duration(name) {
            Some(d) if d.value.is_zero() => {
                self.problem(d.span, name, "must be above 0");
                default
            }
            Some(d) => d.value,
            None => default,
        }
    }

    /// One of `choices` by name; the first is the default (and what a wrong name reads as).
    pub(super) fn choice<T: Copy>(&self, name: &str, choices: &[(&str, T)]) -> T {
        let Some(value) = self.string(name) else {
            return choices[0].1;
        };
        match choices.iter().find(|(n, _)| *n == value.value) {
            Some((_, choice)) => *choice,
            None => {
                let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
                let mut message = format!(
                    "`{}` is not one of {}",
                    shorten(value.value),
                    quoted(&names)
                );
                if let Some(known) = near(value.value, &names) {
                    message.push_str(&format!(" (did you mean \"{known}\"?)"));
                }
                self.problem(value.span, name, message);
                choices[0].1
            }
        }
    }

    /// A list of strings.
    pub(super) fn strings(&self, name: &str) -> Option<Vec<At<&'a str>>> {
        let list = self.typed(name, "a list of strings", |v| match v {
            DeValue::Array(items) => Some(items),
            _ => None,
        })?;
        let mut out = Vec::with_capacity(list.value.len());
        for (i, item) in list.value.iter().enumerate() {
            match item.get_ref() {
                DeValue::String(s) => out.push(At {
                    value: s.as_ref(),
                    span: item.span(),
                }),
                other => self.problem(
                    item.span(),
                    &format!("{name}[{i}]"),
                    expected("a string", other),
                ),
            }
        }
        Some(out)
    }

    /// A table inside this one, with its own keys.
    pub(super) fn table(&self, name: &str, keys: &'static [&'static str]) -> Option<Table<'a>> {
        let value = self.get(name)?;
        self.reader.table(value, self.key(name), keys)
    }

    /// A list of tables (`[[name]]` sections or an inline list of tables), each with `keys`.
    pub(super) fn tables(
        &self,
        name: &str,
        keys: &'static [&'static str],
    ) -> Option<At<Vec<Table<'a>>>> {
        let list = self.typed(name, "a list of tables", |v| match v {
            DeValue::Array(items) => Some(items),
            _ => None,
        })?;
        let tables = list
            .value
            .iter()
            .enumerate()
            .filter_map(|(i, item)| {
                self.reader
                    .table(item, format!("{}[{i}]", self.key(name)), keys)
            })
            .collect();
        Some(At {
            value: tables,
            span: list.span,
        })
    }

    /// A table of free-form keys (header names, model names): each key with its raw value.
    pub(super) fn entries(&self, name: &str) -> Vec<(At<&'a str>, &'a Spanned<DeValue<'a>>)> {
        let Some(table) = self.typed(name, "a table", |v| match v {
            DeValue::Table(t) => Some(t),
            _ => None,
        }) else {
            return Vec::new();
        };
        table
            .value
            .iter()
            .map(|(k, v)| {
                let key = At {
                    value: k.get_ref().as_ref(),
                    span: k.span(),
                };
                (key, v)
            })
            .collect()
    }
}

/// `expected {what}, found {the value}` in words (a string's text is shown only when short:
/// a wrong value may be a secret in the wrong place).
pub(super) fn expected(what: &str, found: &DeValue<'_>) -> String {
    let found = match found {
        DeValue::String(s) if s.len() <= 24 && !s.contains("${") => format!("the string \"{s}\""),
        DeValue::String(_) => "a string".to_owned(),
        DeValue::Integer(i) => format!("the number {i}"),
        DeValue::Float(f) => format!("the number {f}"),
        DeValue::Boolean(b) => format!("{b}"),
        DeValue::Datetime(d) => format!("the date {d}"),
        DeValue::Array(_) => "a list".to_owned(),
        DeValue::Table(_) => "a table".to_owned(),
    };
    format!("expected {what}, found {found}")
}

/// A name from the file as a message shows it: at most 64 characters.
pub(super) fn shorten(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(64) {
        None => text.into(),
        Some((end, _)) => format!("{}…", &text[..end]).into(),
    }
}

fn quoted(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    quoted.join(", ")
}

fn list(keys: &[&str]) -> String {
    let shown: Vec<String> = keys.iter().map(|k| format!("`{k}`")).collect();
    shown.join(", ")
}

/// The known name nearest to `name`, if it is a likely typo of it.
fn near<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    let limit = (name.chars().count() / 3).clamp(1, 3);
    known
        .iter()
        .map(|k| (edits(name, k), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Edit distance with transpositions (optimal string alignment).
fn edits(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

/// `"250ms"`, `"30s"`, `"2m"`, `"1h"`, or a plain number of seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds).ok()
}
