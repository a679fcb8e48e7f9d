//! Logs and traces. The binary owns the global subscriber; library code only emits `tracing`
//! events and spans.
//!
//! - Logs: stderr, text or JSON, filtered by `WEIR_LOG` or the config's `log_level`. The
//!   access log (target `weir::access`) is one of them.
//! - Traces, when `[telemetry] otlp_endpoint` (or `OTEL_EXPORTER_OTLP_ENDPOINT`) is set: the
//!   request spans (`weir::request`) and attempt spans (`weir::attempt`) go through
//!   `tracing-opentelemetry` to an OTLP exporter (gRPC or HTTP/protobuf). Between them is
//!   weir's own batch queue: bounded, never waited for (a full queue drops the span and counts
//!   it), drained by one task on the runtime, each export bounded by `export_timeout`. A
//!   collector that is down or slow costs requests nothing.

use crate::config::{LogFormat, Otlp, OtlpProtocol, Telemetry};
use bytes::Bytes;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// Spans handed to the exporter, dropped at a full queue, or lost in a failed export.
#[derive(Debug)]
struct ExportStats {
    exported: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

static STATS: ExportStats = ExportStats {
    exported: AtomicU64::new(0),
    dropped: AtomicU64::new(0),
    failed: AtomicU64::new(0),
};

/// `weir_trace_spans_total{result}`: exported, dropped (queue full), failed (export error).
pub(crate) fn render_stats(out: &mut String) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "# HELP weir_trace_spans_total Trace spans by what became of them: exported, dropped (export queue full) or failed (the collector refused or did not answer)."
    );
    let _ = writeln!(out, "# TYPE weir_trace_spans_total counter");
    for (result, n) in [
        ("exported", &STATS.exported),
        ("dropped", &STATS.dropped),
        ("failed", &STATS.failed),
    ] {
        let _ = writeln!(
            out,
            "weir_trace_spans_total{{result=\"{result}\"}} {}",
            n.load(Ordering::Relaxed)
        );
    }
}

/// Why telemetry could not start.
#[derive(Debug)]
pub struct InitError(String);

impl std::fmt::Display for InitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot start trace export: {}", self.0)
    }
}

impl std::error::Error for InitError {}

/// Keeps trace export running; [`shutdown`](Guard::shutdown) flushes it on exit.
#[must_use = "dropping it stops trace export without a final flush"]
#[derive(Debug, Default)]
pub struct Guard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    control: Option<mpsc::Sender<oneshot::Sender<()>>>,
}

impl Guard {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports what is queued (within `timeout`), then shuts the exporter down.
    pub async fn shutdown(mut self, timeout: Duration) {
        if let Some(control) = self.control.take() {
            let (done, flushed) = oneshot::channel();
            if control.send(done).await.is_ok() {
                let _ = tokio::time::timeout(timeout, flushed).await;
            }
        }
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber, and trace export when it is configured. Call it inside a
/// tokio runtime when `telemetry.otlp` is set (the export task runs on it).
pub fn init(telemetry: &Telemetry) -> Result<Guard, InitError> {
    // The request and attempt spans are for the exporter; on log lines they would only add
    // noise (and formatting work per request).
    let directives = std::env::var("WEIR_LOG").unwrap_or_else(|_| telemetry.log_level.clone());
    let filter = EnvFilter::try_new(format!("{directives},weir::request=off,weir::attempt=off"))
        .or_else(|_| EnvFilter::try_new(&telemetry.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = match telemetry.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed(),
    }
    .with_filter(filter);
    let Some(otlp) = &telemetry.otlp else {
        let _ = tracing_subscriber::registry().with(logs).try_init();
        return Ok(Guard::default());
    };
    let (provider, control) = tracer_provider(otlp)?;
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("weir"))
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_target(false)
        .with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target("weir::request", tracing::Level::DEBUG)
                .with_target("weir::attempt", tracing::Level::DEBUG),
        );
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init();
    Ok(Guard {
        provider: Some(provider),
        control: Some(control),
    })
}

/// Puts `span`'s trace context in `headers` as W3C `traceparent` (and `tracestate`),
/// replacing the client's.
pub(crate) fn inject(span: &tracing::Span, headers: &mut http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    struct Injector<'a>(&'a mut http::HeaderMap);
    impl opentelemetry::propagation::Injector for Injector<'_> {
        fn set(&mut self, key: &str, value: String) {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(key.as_bytes()),
                http::HeaderValue::from_str(&value),
            ) {
                self.0.insert(name, value);
            }
        }
    }
    let cx = span.context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut Injector(headers));
    });
}

type Control = mpsc::Sender<oneshot::Sender<()>>;

fn tracer_provider(
    otlp: &Otlp,
) -> Result<(opentelemetry_sdk::trace::SdkTracerProvider, Control), InitError> {
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    let fail = |e: &dyn std::fmt::Display| InitError(e.to_string());
    let exporter = match otlp.protocol {
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(otlp.endpoint.clone())
            .with_timeout(otlp.export_timeout)
            .build()
            .map_err(|e| fail(&e))?,
        OtlpProtocol::HttpProtobuf => {
            let client = weir_client::ClientBuilder::new()
                .connect_timeout(otlp.export_timeout)
                .response_timeout(otlp.export_timeout)
                .allow_http(true)
                .build()
                .map_err(|e| fail(&e))?;
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(traces_url(&otlp.endpoint))
                .with_timeout(otlp.export_timeout)
                .with_http_client(OtlpHttp(client))
                .build()
                .map_err(|e| fail(&e))?
        }
    };
    let (spans, queue) = mpsc::channel(otlp.max_queue);
    let (control, controls) = mpsc::channel(1);
    let parked = Arc::new(Mutex::new(None));
    let processor = Queue {
        spans,
        resource: parked.clone(),
    };
    let resource = Resource::builder()
        .with_service_name(otlp.service_name.clone())
        .build();
    let sampler = opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
        opentelemetry_sdk::trace::Sampler::TraceIdRatioBased(otlp.sample_ratio),
    ));
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource)
        .with_sampler(sampler)
        .build();
    let mut exporter = exporter;
    if let Some(resource) = parked.lock().expect("resource lock").take() {
        exporter.set_resource(&resource);
    }
    tokio::spawn(export_loop(
        exporter,
        queue,
        controls,
        otlp.max_batch,
        otlp.export_timeout,
    ));
    Ok((provider, control))
}

/// `…/v1/traces` for an OTLP/HTTP base URL.
fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}

/// The span processor: ended spans go into a bounded queue, never waited for.
#[derive(Debug)]
struct Queue {
    spans: mpsc::Sender<SpanData>,
    /// The resource the provider hands over at build time, for the exporter.
    resource: Arc<Mutex<Option<Resource>>>,
}

impl SpanProcessor for Queue {
    fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if self.spans.try_send(span).is_err() {
            STATS.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        *self.resource.lock().expect("resource lock") = Some(resource.clone());
    }
}

/// How long spans gather before a batch that is not full goes.
const BATCH_DELAY: Duration = Duration::from_millis(500);

async fn export_loop<E: SpanExporter>(
    exporter: E,
    mut queue: mpsc::Receiver<SpanData>,
    mut controls: mpsc::Receiver<oneshot::Sender<()>>,
    max_batch: usize,
    timeout: Duration,
) {
    let mut batch = Vec::with_capacity(max_batch);
    let mut failing = false;
    loop {
        tokio::select! {
            biased;
            control = controls.recv() => {
                // A final flush: what is queued now, then stop.
                while let Ok(span) = queue.try_recv() {
                    batch.push(span);
                    if batch.len() == max_batch {
                        export(&exporter, &mut batch, timeout, &mut failing).await;
                    }
                }
                export(&exporter, &mut batch, timeout, &mut failing).await;
                let _ = exporter.shutdown();
                if let Some(done) = control {
                    let _ = done.send(());
                }
                return;
            }
            span = queue.recv() => {
                let Some(span) = span else { return };
                batch.push(span);
                let deadline = tokio::time::Instant::now() + BATCH_DELAY;
                while batch.len() < max_batch {
                    match tokio::time::timeout_at(deadline, queue.recv()).await {
                        Ok(Some(span)) => batch.push(span),
                        _ => break,
                    }
                }
                export(&exporter, &mut batch, timeout, &mut failing).await;
            }
        }
    }
}

async fn export<E: SpanExporter>(
    exporter: &E,
    batch: &mut Vec<SpanData>,
    timeout: Duration,
    failing: &mut bool,
) {
    if batch.is_empty() {
        return;
    }
    let n = batch.len() as u64;
    let spans = std::mem::replace(batch, Vec::with_capacity(batch.capacity()));
    let error = match tokio::time::timeout(timeout, exporter.export(spans)).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer within {timeout:?}")),
    };
    match error {
        None => {
            STATS.exported.fetch_add(n, Ordering::Relaxed);
            if std::mem::take(failing) {
                tracing::info!("trace export works again");
            }
        }
        Some(error) => {
            STATS.failed.fetch_add(n, Ordering::Relaxed);
            // Said once per outage, not per batch.
            if !std::mem::replace(failing, true) {
                tracing::warn!(%error, spans = n, "trace export failed; spans are dropped until the collector answers");
            }
        }
    }
}

/// OTLP/HTTP over weir's own client.
#[derive(Debug)]
struct OtlpHttp(weir_client::HttpClient<http_body_util::Full<Bytes>>);

/// The largest answer a collector may send.
const MAX_COLLECTOR_ANSWER: usize = 1 << 20;

impl opentelemetry_http::HttpClient for OtlpHttp {
    fn send_bytes<'a, 'b>(
        &'a self,
        request: http::Request<Bytes>,
    ) -> Pin<
        Box<
            dyn Future<Output = Result<http::Response<Bytes>, opentelemetry_http::HttpError>>
                + Send
                + 'b,
        >,
    >
    where
        'a: 'b,
        Self: 'b,
    {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let client = self.0.clone();
        Box::pin(async move {
            let request = request.map(http_body_util::Full::new);
            let response = client.oneshot(request).await?;
            let (parts, body) = response.into_parts();
            let body = http_body_util::Limited::new(body, MAX_COLLECTOR_ANSWER)
                .collect()
                .await?
                .to_bytes();
            Ok(http::Response::from_parts(parts, body))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_endpoints_get_the_traces_path_once() {
        assert_eq!(
            traces_url("http://collector:4318"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://otel.example/v1/traces"),
            "https://otel.example/v1/traces"
        );
    }
}
