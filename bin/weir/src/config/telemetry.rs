//! `[telemetry]`: logs, the access log and trace export, with the standard `OTEL_*`
//! variables for what the file leaves out.

use super::read::{shorten, Reader, Table};
use std::time::Duration;

/// `[telemetry]`: logs, the access log and trace export.
#[derive(Debug, Clone, PartialEq)]
pub struct Telemetry {
    /// `text` or `json` log lines on stderr.
    pub log_format: LogFormat,
    /// An `EnvFilter` directive (`info`, `weir=debug`, ...). `WEIR_LOG` overrides it.
    pub log_level: String,
    /// One line per request (target `weir::access`, level INFO) when its answer ends.
    pub access_log: bool,
    /// Trace export over OTLP (`None`: no spans are made).
    pub otlp: Option<Otlp>,
}

/// Where and how spans are exported: `otlp_endpoint` and its companions, or the standard
/// `OTEL_*` variables for what the file leaves out.
#[derive(Debug, Clone, PartialEq)]
pub struct Otlp {
    /// The collector: `http://host:4317` (gRPC) or `http://host:4318` (HTTP; `/v1/traces`
    /// is added unless the path already names it).
    pub endpoint: String,
    /// `grpc` or `http/protobuf`.
    pub protocol: OtlpProtocol,
    /// `service.name` of the resource.
    pub service_name: String,
    /// The share of new traces kept (a client's sampled flag is followed).
    pub sample_ratio: f64,
    /// Spans waiting for export; more are dropped (and counted), never waited for.
    pub max_queue: usize,
    /// The most spans in one export.
    pub max_batch: usize,
    /// How long an export may take before it is abandoned.
    pub export_timeout: Duration,
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    HttpProtobuf,
}

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

/// The keys `[telemetry]` takes.
pub(super) const KEYS: &[&str] = &[
    "log_format",
    "log_level",
    "access_log",
    "otlp_endpoint",
    "otlp_protocol",
    "service_name",
    "sample_ratio",
    "max_queue",
    "max_batch",
    "export_timeout",
];

const PROTOCOLS: [(&str, OtlpProtocol); 2] = [
    ("grpc", OtlpProtocol::Grpc),
    ("http/protobuf", OtlpProtocol::HttpProtobuf),
];

/// Reads `[telemetry]` (absent: text logs at `info`, the access log, no export unless the
/// `OTEL_*` variables ask for it).
pub(super) fn read(
    reader: &Reader<'_>,
    t: Option<&Table<'_>>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Telemetry {
    let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let log_format = t.map_or(LogFormat::Text, |t| {
        t.choice(
            "log_format",
            &[("text", LogFormat::Text), ("json", LogFormat::Json)],
        )
    });
    let log_level = t
        .and_then(|t| t.string("log_level"))
        .map_or_else(|| "info".to_owned(), |l| l.value.to_owned());
    let access_log = t.and_then(|t| t.boolean("access_log")).unwrap_or(true);

    let from_file = t.and_then(|t| t.string("otlp_endpoint"));
    let endpoint = match &from_file {
        Some(e) => Some(e.value.to_owned()),
        None => {
            var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
        }
    };
    let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v == "none");
    let otlp = match endpoint {
        Some(endpoint) if !disabled => {
            let bad = |message: String| match (&from_file, t) {
                (Some(e), Some(t)) => t.problem(e.span.clone(), "otlp_endpoint", message),
                _ => reader.env_problem("OTEL_EXPORTER_OTLP_ENDPOINT", message),
            };
            match endpoint.parse::<http::Uri>() {
                Err(_) => bad(format!("`{}` is not a URL", shorten(&endpoint))),
                Ok(uri)
                    if !matches!(uri.scheme_str(), Some("http" | "https"))
                        || uri.host().is_none() =>
                {
                    bad(format!(
                        "`{}` is not an http:// or https:// URL with a host",
                        shorten(&endpoint)
                    ))
                }
                Ok(_) => {}
            }
            Some(otlp(reader, t, endpoint, &var))
        }
        _ => None,
    };
    Telemetry {
        log_format,
        log_level,
        access_log,
        otlp,
    }
}

/// The export settings beside an endpoint.
fn otlp(
    reader: &Reader<'_>,
    t: Option<&Table<'_>>,
    endpoint: String,
    var: &dyn Fn(&str) -> Option<String>,
) -> Otlp {
    let protocol = match t.filter(|t| t.has("otlp_protocol")) {
        Some(t) => t.choice("otlp_protocol", &PROTOCOLS),
        None => match var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        {
            None => OtlpProtocol::Grpc,
            Some(p) => match PROTOCOLS.iter().find(|(name, _)| *name == p) {
                Some((_, protocol)) => *protocol,
                None => {
                    reader.env_problem(
                        "OTEL_EXPORTER_OTLP_PROTOCOL",
                        format!("`{}` is not \"grpc\" or \"http/protobuf\"", shorten(&p)),
                    );
                    OtlpProtocol::Grpc
                }
            },
        },
    };
    let service_name = match t.and_then(|t| t.string("service_name").map(|n| (t, n))) {
        Some((t, name)) if name.value.trim().is_empty() => {
            t.problem(name.span, "service_name", "is empty");
            "weir".to_owned()
        }
        Some((_, name)) => name.value.to_owned(),
        None => var("OTEL_SERVICE_NAME").unwrap_or_else(|| "weir".to_owned()),
    };
    let sample_ratio = match t.and_then(|t| t.number("sample_ratio").map(|r| (t, r))) {
        None => 1.0,
        Some((_, r)) if (0.0..=1.0).contains(&r.value) => r.value,
        Some((t, r)) => {
            t.problem(r.span, "sample_ratio", "must be between 0 and 1");
            1.0
        }
    };
    let max_queue = t.map_or(2048, |t| t.count("max_queue", 2048, 1, 1 << 20)) as usize;
    let max_batch = t.map_or(512, |t| t.count("max_batch", 512, 1, 1 << 20)) as usize;
    Otlp {
        endpoint,
        protocol,
        service_name,
        sample_ratio,
        max_queue,
        max_batch: max_batch.min(max_queue),
        export_timeout: t.map_or(Duration::from_secs(10), |t| {
            t.duration_or("export_timeout", Duration::from_secs(10))
        }),
    }
}
