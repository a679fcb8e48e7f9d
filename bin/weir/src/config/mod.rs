//! The TOML configuration file.
//!
//! ```toml
//! [server]
//! listen = "127.0.0.1:8080"
//! admin_listen = "127.0.0.1:9090"
//!
//! [[providers]]
//! name = "openai"
//! base_url = "https://api.openai.com/v1"
//! api_key = "${OPENAI_API_KEY}"
//!
//! [[routes]]
//! model = "gpt-4.1"
//! targets = [{ provider = "openai", model = "gpt-4.1" }]
//! ```
//!
//! Loading never half-succeeds, and it reports every problem in one run: each unknown key
//! (with the known key it is likely a typo of), wrong type, bad value, dangling reference or
//! missing environment variable, in file order, as `file:line:column: key.path: what is
//! wrong`. Each section is read by its own module (`server`, `provider`, `route`, ...)
//! through the spanned tree of the `read` module. Upstream API keys come only from the environment
//! (`"${VAR}"`) and are held in [`Secret`], whose `Debug` is redacted.

pub mod catalogue;
mod keys;
mod limits;
mod provider;
mod ratelimit;
mod read;
mod route;
mod server;
mod telemetry;
mod websocket;

pub(crate) use keys::key_hash;
pub use keys::{hash_key, ClientKey};
pub use limits::{AdaptiveConcurrency, Concurrency, RateLimit};
pub use provider::{Health, Probe, Provider, ProviderApi};
pub use ratelimit::{LimitStore, Redis};
pub use read::parse_duration;
pub use route::{Continuation, RetryBudgetConfig, Route, Target};
pub use server::Server;
pub use telemetry::{LogFormat, Otlp, OtlpProtocol, Telemetry};
pub use websocket::WebSocket;

use read::{shorten, Reader, Table};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use toml::de::DeTable;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[server]`
    pub server: Server,
    /// `[telemetry]`
    pub telemetry: Telemetry,
    /// `[websocket]`: the `GET /v1/ws` endpoint.
    pub websocket: WebSocket,
    /// `[ratelimit]`: where the rate limits keep their state (this process, or Redis).
    pub ratelimit: LimitStore,
    /// `[[providers]]`, in file order.
    pub providers: Vec<Provider>,
    /// `[[routes]]`, in file order.
    pub routes: Vec<Route>,
    /// `[[keys]]`: the client keys (none: every client is accepted).
    pub keys: Vec<ClientKey>,
    /// `[prices]`: USD per million tokens, by the model name sent upstream (the catalogue's
    /// list price for a known model the section leaves out).
    pub prices: HashMap<String, weir_metrics::Price>,
}

/// A value that must never be shown: `Debug` and `Display` print `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself. Call it only where the value is sent upstream.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Why a configuration was refused: every problem found, in file order. `Display` prints one
/// per line, `file:line:column: key: what is wrong`.
#[derive(Debug)]
pub struct ConfigError {
    problems: Vec<Problem>,
}

/// One problem in a configuration file.
#[derive(Debug, Clone)]
pub struct Problem {
    file: PathBuf,
    line: usize,
    column: usize,
    key: String,
    message: String,
}

impl ConfigError {
    /// Every problem, in file order (problems in environment variables last).
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// The line of the first problem (see [`Problem::line`]).
    pub fn line(&self) -> usize {
        self.problems.first().map_or(0, |p| p.line)
    }

    /// The key of the first problem (see [`Problem::key`]).
    pub fn key(&self) -> &str {
        self.problems.first().map_or("", |p| p.key.as_str())
    }

    fn file(file: &Path, message: String) -> Self {
        Self {
            problems: vec![Problem {
                file: file.to_owned(),
                line: 0,
                column: 0,
                key: String::new(),
                message,
            }],
        }
    }
}

impl Problem {
    /// The 1-based line of the offending key or value (0 when the problem is about the file
    /// or an environment variable).
    pub fn line(&self) -> usize {
        self.line
    }

    /// The 1-based column, in characters.
    pub fn column(&self) -> usize {
        self.column
    }

    /// The key at fault (dotted path, or the environment variable), empty when none.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// What is wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Reads and validates a configuration file; `${VAR}` references read the process
/// environment.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::file(path, format!("cannot read the file: {e}")))?;
    parse(path, &text, &|name| std::env::var(name).ok())
}

/// The top-level keys.
const KEYS: &[&str] = &[
    "server",
    "telemetry",
    "websocket",
    "ratelimit",
    "providers",
    "routes",
    "keys",
    "prices",
];

const PRICE_KEYS: &[&str] = &["input", "output"];

/// Parses and validates configuration text. `env` resolves `${VAR}` references.
pub fn parse(
    file: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let reader = Reader::new(file, text);
    let (document, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        // What follows a syntax error is a guess of the parser's: report the errors alone.
        for e in syntax {
            let span = e.span().unwrap_or(0..0);
            let mut message = e.message().trim().to_owned();
            if let Some(key) = text
                .get(span.clone())
                .filter(|_| message == "duplicate key")
            {
                message = format!("`{}` is set twice", shorten(key.trim()));
            }
            reader.problem(span, "", message);
        }
        return Err(reader.finish(()).unwrap_err());
    }
    let root = reader.root(&document, KEYS);
    let config = read(&root, env);
    reader.finish(config)
}

/// Reads every section, then what ties them together (names, `auth`, prices).
fn read(root: &Table<'_>, env: &dyn Fn(&str) -> Option<String>) -> Config {
    let server_table = root.table("server", server::KEYS);
    if !root.has("server") {
        root.problem(
            0..0,
            "server",
            "a [server] table with `listen` and `admin_listen` is required",
        );
    }
    let (server, auth) = match &server_table {
        Some(t) => server::read(t),
        None => (server::unset(), None),
    };
    let telemetry = telemetry::read(
        root.reader(),
        root.table("telemetry", telemetry::KEYS).as_ref(),
        env,
    );
    let websocket = websocket::read(
        root.table("websocket", websocket::KEYS).as_ref(),
        server.max_request_bytes,
    );

    let ratelimit = ratelimit::read(root.table("ratelimit", ratelimit::KEYS).as_ref(), env);

    let provider_tables = root
        .tables("providers", provider::KEYS)
        .map_or_else(Vec::new, |l| l.value);
    if provider_tables.is_empty() {
        root.problem(
            0..0,
            "providers",
            "at least one [[providers]] entry is needed",
        );
    }
    let mut names: Vec<&str> = Vec::with_capacity(provider_tables.len());
    for t in &provider_tables {
        let Some(name) = provider::name(t) else {
            names.push("");
            continue;
        };
        if names.contains(&name.value) {
            let message = format!("provider name `{}` is used twice", shorten(name.value));
            t.problem(name.span, "name", message);
        }
        names.push(name.value);
    }
    let providers = provider_tables
        .iter()
        .map(|t| provider::read(t, env))
        .collect();

    let route_tables = root
        .tables("routes", route::KEYS)
        .map_or_else(Vec::new, |l| l.value);
    if route_tables.is_empty() {
        root.problem(0..0, "routes", "at least one [[routes]] entry is needed");
    }
    let mut routes: Vec<Route> = Vec::with_capacity(route_tables.len());
    for t in &route_tables {
        let route = route::read(t, &names);
        if routes.iter().any(|r| r.model == route.model) && !route.model.is_empty() {
            if let Some(v) = t.get("model") {
                let message = format!("model `{}` is routed twice", shorten(&route.model));
                t.problem(v.span(), "model", message);
            }
        }
        routes.push(route);
    }

    let models: HashSet<&str> = routes.iter().map(|r| r.model.as_str()).collect();
    let key_tables = root
        .tables("keys", keys::KEYS)
        .map_or_else(Vec::new, |l| l.value);
    let keys = keys::read(&key_tables, &models);
    check_auth(root, server_table.as_ref(), auth, !keys.is_empty());
    let mut prices = prices(root, &routes);
    // What `[prices]` leaves out, the catalogue of known models may know.
    for target in routes.iter().flat_map(|r| &r.targets) {
        if let (false, Some(known)) = (
            prices.contains_key(&target.model),
            catalogue::lookup(&target.model),
        ) {
            let price = weir_metrics::Price {
                input: known.input,
                output: known.output,
            };
            prices.insert(target.model.clone(), price);
        }
    }
    Config {
        server,
        telemetry,
        websocket,
        ratelimit,
        providers,
        routes,
        keys,
        prices,
    }
}

/// Accepting every client is a choice the file makes, never a default.
fn check_auth(
    root: &Table<'_>,
    server: Option<&Table<'_>>,
    auth: Option<read::At<&str>>,
    has_keys: bool,
) {
    let Some(server) = server else {
        return;
    };
    let problem = |span, message: &str| root.problem(span, "server.auth", message);
    match (auth.as_ref().map(|a| a.value), has_keys) {
        (Some("off"), true) => problem(
            auth.unwrap().span,
            "is \"off\" but [[keys]] are configured: remove one or the other",
        ),
        (Some("off"), false) | (Some("keys") | None, true) => {}
        (Some("keys"), false) => problem(auth.unwrap().span, "is \"keys\" but no [[keys]] are configured"),
        (None, false) => problem(
            server.span(),
            "no [[keys]] are configured: add client keys, or set auth = \"off\" to accept every client (a trusted network only)",
        ),
        (Some(other), _) => problem(
            auth.as_ref().unwrap().span.clone(),
            &format!("`{}` is not one of \"keys\", \"off\"", shorten(other)),
        ),
    }
}

/// `[prices]`, keyed by the model name sent upstream.
fn prices(root: &Table<'_>, routes: &[Route]) -> HashMap<String, weir_metrics::Price> {
    let mut prices = HashMap::new();
    for (model, value) in root.entries("prices") {
        let path = format!("prices.\"{}\"", model.value);
        let sent = routes
            .iter()
            .any(|r| r.targets.iter().any(|t| t.model == model.value));
        if !sent {
            root.reader().problem(
                model.span.clone(),
                &path,
                format!(
                    "no route target sends the model `{}` (prices are keyed by the model name sent upstream)",
                    shorten(model.value)
                ),
            );
        }
        let Some(t) = root.reader().table(value, path, PRICE_KEYS) else {
            continue;
        };
        let usd = |name: &str| match t.number(name) {
            Some(v) if v.value.is_finite() && v.value >= 0.0 => v.value,
            Some(v) => {
                t.problem(
                    v.span,
                    name,
                    "must be a price in USD per million tokens, 0 or more",
                );
                0.0
            }
            None => {
                if !t.has(name) {
                    t.problem(t.span(), name, "is required");
                }
                0.0
            }
        };
        let price = weir_metrics::Price {
            input: usd("input"),
            output: usd("output"),
        };
        prices.insert(model.value.to_owned(), price);
    }
    prices
}

#[cfg(test)]
mod tests;
