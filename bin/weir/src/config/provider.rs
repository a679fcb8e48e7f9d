//! `[[providers]]`: one upstream API each, with its client, breaker, probes and limits.

use super::limits::{self, Concurrency, RateLimit};
use super::read::{expected, shorten, At, Table};
use super::Secret;
use std::path::Path;
use std::time::Duration;
use toml::de::DeValue;

/// `[[providers]]`: one upstream API.
#[derive(Debug, Clone, PartialEq)]
pub struct Provider {
    /// The name routes refer to.
    pub name: String,
    /// The base URL, without a trailing `/` (`https://api.openai.com/v1`).
    pub base_url: http::Uri,
    /// The API it speaks: OpenAI's (chat, completions, embeddings, responses) or Anthropic's
    /// (messages).
    pub api: ProviderApi,
    /// Sent as `Authorization: Bearer <key>` (OpenAI) or `x-api-key: <key>` (Anthropic).
    pub api_key: Option<Secret>,
    /// Anthropic: the `anthropic-version` sent when the client sends none.
    pub anthropic_version: http::HeaderValue,
    /// Extra headers sent on every request (values may be `${VAR}`; they are treated as
    /// secrets).
    pub headers: Vec<(http::HeaderName, Secret)>,
    /// Plain `http://` allowed (local models, tests).
    pub allow_http: bool,
    /// `auto` (HTTP/2 when TLS negotiates it), `http1`, or `http2` (h2c on plain http).
    pub http_version: weir_client::HttpVersion,
    /// TLS roots: `webpki` (built in) or `native` (the OS store).
    pub tls_roots: weir_client::TlsRoots,
    /// Certificates trusted besides those roots (`tls_ca`, a PEM file).
    pub extra_roots: Vec<weir_client::CertificateDer<'static>>,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Time allowed for the response headers (for a non-streaming request, the whole answer).
    pub response_timeout: Duration,
    /// Longest silence allowed between two events of a stream.
    pub idle_timeout: Duration,
    /// The largest event of a stream: a larger one fails the attempt.
    pub max_event_bytes: usize,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
    /// Idle pooled connections kept.
    pub pool_max_idle: usize,
    /// The circuit breaker's policy (`breaker = {...}`).
    pub breaker: weir_breaker::PolicyConfig,
    /// Count 429 as a failure (by default it only keeps the provider out for `Retry-After`).
    pub breaker_counts_rate_limits: bool,
    /// A first byte later than this counts as a failure.
    pub slow_first_byte: Option<Duration>,
    /// Active health probes (`health = {...}`).
    pub health: Health,
    /// The limit on requests in flight to this provider.
    pub concurrency: Option<Concurrency>,
    /// Open connections per host at most (in use and idle); a request that needs one more
    /// waits for one to come back.
    pub max_connections: Option<usize>,
    /// The provider's own published limits: weir keeps under them.
    pub rate_limit: Option<RateLimit>,
}

/// The API a provider speaks (`api = "openai"` or `"anthropic"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProviderApi {
    /// OpenAI's and every OpenAI-compatible server's: `/chat/completions`, `/completions`,
    /// `/embeddings`, `/responses`; the key as `Authorization: Bearer`.
    #[default]
    OpenAi,
    /// Anthropic's: `/messages`, `/messages/count_tokens`; the key as `x-api-key`, with
    /// `anthropic-version`.
    Anthropic,
}

impl ProviderApi {
    /// Whether a provider of this API serves `endpoint`.
    pub fn serves(self, endpoint: weir_llm::Endpoint) -> bool {
        (endpoint.api() == weir_llm::Api::Messages) == (self == Self::Anthropic)
    }
}

/// Active health probing of a provider.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// What a probe sends.
    pub probe: Probe,
    /// Time between probes.
    pub interval: Duration,
    /// How long a probe may take.
    pub timeout: Duration,
}

/// What a health probe sends.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// No active probes: the breaker learns from traffic only.
    Off,
    /// `GET {base_url}/models`.
    Models,
    /// A one-token chat completion to this model.
    Completion(String),
}

/// The keys a `[[providers]]` entry takes.
pub(super) const KEYS: &[&str] = &[
    "name",
    "base_url",
    "api",
    "api_key",
    "anthropic_version",
    "headers",
    "allow_http",
    "http_version",
    "tls_roots",
    "tls_ca",
    "connect_timeout",
    "response_timeout",
    "idle_timeout",
    "max_event_bytes",
    "pool_idle_timeout",
    "pool_max_idle",
    "breaker",
    "health",
    "max_concurrency",
    "max_queue",
    "queue_timeout",
    "adaptive_concurrency",
    "max_connections",
    "rate_limit",
];

const BREAKER_KEYS: &[&str] = &[
    "consecutive_failures",
    "error_rate",
    "window",
    "min_requests",
    "open_for",
    "max_open_for",
    "half_open_probes",
    "count_rate_limits",
    "slow_first_byte",
];

const HEALTH_KEYS: &[&str] = &[
    "probe",
    "model",
    "interval",
    "timeout",
    "unhealthy_after",
    "healthy_after",
];

/// The name of a provider or a client key: letters, digits, `-`, `_` and `.`.
pub(super) fn name<'a>(t: &Table<'a>) -> Option<At<&'a str>> {
    let name = t.required("name")?;
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.value.is_empty() || !name.value.chars().all(valid) {
        t.problem(
            name.span.clone(),
            "name",
            "use letters, digits, `-`, `_` and `.` only",
        );
    }
    Some(name)
}

/// Reads one `[[providers]]` entry; `env` resolves `${VAR}`.
pub(super) fn read(t: &Table<'_>, env: &dyn Fn(&str) -> Option<String>) -> Provider {
    let allow_http = t.boolean("allow_http");
    // A mistyped `allow_http` is its own problem: do not also refuse http:// for it.
    let base_url = base_url(t, allow_http.unwrap_or(t.has("allow_http")));
    let allow_http = allow_http.unwrap_or(false);
    let api_key = t
        .string("api_key")
        .map(|v| env_secret(t, &v, "api_key", env, true));
    let mut headers = Vec::new();
    for (name, value) in t.entries("headers") {
        let key = format!("headers.{}", name.value);
        let Ok(header) = name.value.parse::<http::HeaderName>() else {
            t.problem(
                name.span,
                "headers",
                format!("`{}` is not a header name", shorten(name.value)),
            );
            continue;
        };
        if matches!(
            header.as_str(),
            "host" | "content-length" | "transfer-encoding" | "connection"
        ) {
            t.problem(name.span, "headers", format!("`{header}` cannot be set"));
            continue;
        }
        let DeValue::String(text) = value.get_ref() else {
            t.problem(value.span(), &key, expected("a string", value.get_ref()));
            continue;
        };
        let text = At {
            value: text.as_ref(),
            span: value.span(),
        };
        let secret = env_secret(t, &text, &key, env, false);
        if http::HeaderValue::from_str(secret.expose()).is_err() {
            t.problem(value.span(), &key, "is not a valid header value");
        }
        headers.push((header, secret));
    }
    let extra_roots = match t.string("tls_ca") {
        None => Vec::new(),
        Some(path) => certificates(t, &path),
    };
    let breaker = t.table("breaker", BREAKER_KEYS);
    let (mut policy, counts_rate_limits, slow_first_byte) = breaker_config(breaker.as_ref());
    let health = health(t.table("health", HEALTH_KEYS).as_ref(), &mut policy);
    Provider {
        name: t
            .string("name")
            .map_or_else(String::new, |n| n.value.to_owned()),
        base_url,
        api: t.choice(
            "api",
            &[
                ("openai", ProviderApi::OpenAi),
                ("anthropic", ProviderApi::Anthropic),
            ],
        ),
        api_key,
        anthropic_version: match t.string("anthropic_version") {
            None => http::HeaderValue::from_static("2023-06-01"),
            Some(v) => http::HeaderValue::from_str(v.value).unwrap_or_else(|_| {
                t.problem(
                    v.span.clone(),
                    "anthropic_version",
                    "is not a valid header value",
                );
                http::HeaderValue::from_static("2023-06-01")
            }),
        },
        headers,
        allow_http,
        http_version: t.choice(
            "http_version",
            &[
                ("auto", weir_client::HttpVersion::Auto),
                ("http1", weir_client::HttpVersion::Http1),
                ("http2", weir_client::HttpVersion::Http2),
            ],
        ),
        tls_roots: t.choice(
            "tls_roots",
            &[
                ("webpki", weir_client::TlsRoots::Webpki),
                ("native", weir_client::TlsRoots::Native),
            ],
        ),
        extra_roots,
        connect_timeout: t.duration_or("connect_timeout", Duration::from_secs(10)),
        response_timeout: t.duration_or("response_timeout", Duration::from_secs(120)),
        idle_timeout: t.duration_or("idle_timeout", Duration::from_secs(60)),
        max_event_bytes: match t.whole("max_event_bytes") {
            None => 1 << 20,
            Some(v) if v.value < 1024 => {
                t.problem(v.span, "max_event_bytes", "must be at least 1024");
                1024
            }
            Some(v) => usize::try_from(v.value).unwrap_or(usize::MAX),
        },
        pool_idle_timeout: t.duration_or("pool_idle_timeout", Duration::from_secs(90)),
        pool_max_idle: t.whole("pool_max_idle").map_or(256, |v| v.value as usize),
        breaker: policy,
        breaker_counts_rate_limits: counts_rate_limits,
        slow_first_byte,
        health,
        concurrency: limits::concurrency(t, true),
        max_connections: match t.whole("max_connections") {
            None => None,
            Some(v) if v.value == 0 => {
                t.problem(v.span, "max_connections", "must be at least 1");
                None
            }
            Some(v) => Some(usize::try_from(v.value).unwrap_or(usize::MAX)),
        },
        rate_limit: limits::rate_limit(t, "rate_limit", true),
    }
}

/// `base_url`: https (or http with consent), a host, no credentials, no query.
fn base_url(t: &Table<'_>, allow_http: bool) -> http::Uri {
    let unset = http::Uri::from_static("https://unset.invalid");
    let Some(text) = t.required("base_url") else {
        return unset;
    };
    let trimmed = text.value.trim_end_matches('/');
    let bad = |why: &str| {
        t.problem(text.span.clone(), "base_url", why.to_owned());
        unset.clone()
    };
    let Ok(url) = trimmed.parse::<http::Uri>() else {
        return bad(&format!("`{}` is not a URL", shorten(trimmed)));
    };
    match url.scheme_str() {
        Some("https") => {}
        Some("http") if allow_http => {}
        Some("http") => return bad("plain http:// needs `allow_http = true` on this provider"),
        _ => return bad("must start with https:// (or http:// with allow_http = true)"),
    }
    let Some(authority) = url.authority() else {
        return bad("has no host");
    };
    if authority.as_str().contains('@') {
        return bad("must not carry credentials (user:password@); use api_key");
    }
    if url.query().is_some() {
        return bad("must not have a query string");
    }
    url
}

/// The certificates of a PEM file, its path relative to the config file's folder.
fn certificates(t: &Table<'_>, path: &At<&str>) -> Vec<weir_client::CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    let file = t
        .reader()
        .file()
        .parent()
        .unwrap_or(Path::new("."))
        .join(path.value);
    let read = weir_client::CertificateDer::pem_file_iter(&file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>());
    match read {
        Err(e) => {
            let message = format!("cannot read `{}`: {e}", file.display());
            t.problem(path.span.clone(), "tls_ca", message);
            Vec::new()
        }
        Ok(certificates) if certificates.is_empty() => {
            let message = format!("`{}` holds no PEM certificate", file.display());
            t.problem(path.span.clone(), "tls_ca", message);
            Vec::new()
        }
        Ok(certificates) => certificates,
    }
}

/// `breaker = {...}`: the policy, whether 429 counts, and the slow-first-byte bound.
fn breaker_config(t: Option<&Table<'_>>) -> (weir_breaker::PolicyConfig, bool, Option<Duration>) {
    let default = weir_breaker::PolicyConfig::default();
    let Some(t) = t else {
        return (default, false, None);
    };
    let consecutive_failures = match t.whole32("consecutive_failures") {
        None => default.consecutive_failures,
        Some(v) if v.value == 0 => None,
        Some(v) => Some(v.value),
    };
    let failure_rate = match t.number("error_rate") {
        None => default.failure_rate,
        Some(v) if v.value == 0.0 => None,
        Some(v) if !(0.0..=1.0).contains(&v.value) => {
            t.problem(v.span, "error_rate", "must be between 0 (off) and 1");
            default.failure_rate
        }
        Some(v) => Some(v.value),
    };
    let config = weir_breaker::PolicyConfig {
        consecutive_failures,
        failure_rate,
        window: t.duration_or("window", default.window),
        min_calls: t
            .whole32("min_requests")
            .map_or(default.min_calls, |v| v.value),
        open_for: t.duration_or("open_for", default.open_for),
        max_open_for: t.duration_or("max_open_for", default.max_open_for),
        half_open_probes: t
            .whole32("half_open_probes")
            .map_or(default.half_open_probes, |v| v.value),
        ..default
    };
    let slow_first_byte = t.duration("slow_first_byte").map(|d| d.value);
    (
        config,
        t.boolean("count_rate_limits").unwrap_or(false),
        slow_first_byte,
    )
}

/// `health = {...}`; its thresholds live in the breaker's policy.
fn health(t: Option<&Table<'_>>, breaker: &mut weir_breaker::PolicyConfig) -> Health {
    let Some(t) = t else {
        return Health {
            probe: Probe::Models,
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
        };
    };
    let probe = match t.string("probe") {
        None => Probe::Models,
        Some(p) => match p.value {
            "models" => Probe::Models,
            "off" => Probe::Off,
            "completion" => match t.string("model") {
                Some(model) if !model.value.is_empty() => Probe::Completion(model.value.to_owned()),
                _ => {
                    t.problem(p.span, "probe", "a \"completion\" probe needs `model`");
                    Probe::Off
                }
            },
            other => {
                t.problem(
                    p.span,
                    "probe",
                    format!(
                        "`{}` is not one of \"models\", \"completion\", \"off\"",
                        shorten(other)
                    ),
                );
                Probe::Off
            }
        },
    };
    for (name, slot) in [
        ("unhealthy_after", &mut breaker.unhealthy_after),
        ("healthy_after", &mut breaker.healthy_after),
    ] {
        match t.whole32(name) {
            Some(v) if v.value == 0 => t.problem(v.span, name, "must be at least 1"),
            Some(v) => *slot = v.value,
            None => {}
        }
    }
    Health {
        probe,
        interval: t.positive_duration_or("interval", Duration::from_secs(30)),
        timeout: t.duration_or("timeout", Duration::from_secs(5)),
    }
}

/// Expands `${VAR}` references in the value of `name`. With `whole`, the value must be
/// exactly one reference: keys never sit in the file (and a literal one is never echoed).
pub(super) fn env_secret(
    t: &Table<'_>,
    value: &At<&str>,
    name: &str,
    env: &dyn Fn(&str) -> Option<String>,
    whole: bool,
) -> Secret {
    let text = value.value;
    let problem = |message: String| {
        t.problem(value.span.clone(), name, message);
        Secret(String::new())
    };
    let is_ref = |s: &str| {
        s.starts_with("${") && s.ends_with('}') && s[2..s.len() - 1].find(['$', '{', '}']).is_none()
    };
    if whole && !is_ref(text) {
        return problem(
            "must name an environment variable, like \"${OPENAI_API_KEY}\": weir reads no key from the config file"
                .to_owned(),
        );
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return problem("has an unclosed `${`".to_owned());
        };
        let var = &after[..end];
        if var.is_empty() {
            return problem("has an empty `${}`".to_owned());
        }
        match env(var) {
            Some(resolved) => out.push_str(&resolved),
            None => {
                return problem(format!(
                    "environment variable `{}` is not set",
                    shorten(var)
                ))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Secret(out)
}
