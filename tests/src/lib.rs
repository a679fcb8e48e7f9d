//! End-to-end harness: a mock upstream and the real weir stack on loopback ports, and a plain
//! HTTP client that reads answers frame by frame, as an application would.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::path::Path;
use weir_llm::SseDecoder;
use weir_test::{MockConfig, MockUpstream};

/// The provider key the mock expects, and weir's config provides through the environment.
pub const PROVIDER_KEY: &str = "sk-provider-canary-7d1c";

/// A mock upstream and a running weir in front of it.
#[derive(Debug)]
pub struct Harness {
    /// The mock upstream.
    pub mock: MockUpstream,
    /// weir, until drained.
    pub weir: Option<weir::Running>,
    /// weir's public address.
    pub addr: SocketAddr,
    /// weir's admin address.
    pub admin: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// The config used by the harness: one provider (the mock) and routes onto it. `extra` is
/// appended to the `[[providers]]` table (e.g. `idle_timeout = "2s"`).
pub fn config_text(mock: &MockUpstream, provider_extra: &str) -> String {
    // Health probes would add requests to the mock's log: off unless a test asks for them.
    let health = if provider_extra.contains("health") {
        ""
    } else {
        "health = { probe = \"off\" }"
    };
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
forward_headers = ["x-mock", "x-raw-end"]
max_request_bytes = 65536
header_read_timeout = "5s"
drain_timeout = "10s"
auth = "off"

[[providers]]
name = "mock"
base_url = "{base}"
api_key = "${{WEIR_E2E_PROVIDER_KEY}}"
allow_http = true
{health}
{provider_extra}

[[routes]]
model = "gpt-test"
targets = [{{ provider = "mock", model = "mock-upstream" }}]

[[routes]]
model = "short"
targets = [{{ provider = "mock", model = "mock-upstream@chunks=3" }}]
"#,
        base = mock.base_url()
    )
}

impl Harness {
    /// Starts a mock (that requires [`PROVIDER_KEY`]) and weir with the default config.
    pub async fn start() -> Self {
        Self::with_provider("").await
    }

    /// Same, with lines added to the provider table.
    pub async fn with_provider(provider_extra: &str) -> Self {
        let mock = MockUpstream::start_with(MockConfig {
            api_key: Some(PROVIDER_KEY.to_owned()),
            ..MockConfig::default()
        })
        .await;
        let text = config_text(&mock, provider_extra);
        let config = weir::config::parse(Path::new("e2e.toml"), &text, &|name| {
            (name == "WEIR_E2E_PROVIDER_KEY").then(|| PROVIDER_KEY.to_owned())
        })
        .expect("the e2e config is valid");
        let weir = weir::start(&config).await.expect("weir starts");
        Self {
            mock,
            addr: weir.addr(),
            admin: weir.admin_addr(),
            weir: Some(weir),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// weir's public base URL (`http://127.0.0.1:port/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Sends a request to weir's public port.
    pub async fn send(&self, request: Request<Full<Bytes>>) -> Response<Incoming> {
        self.client.request(request).await.expect("weir answers")
    }

    /// `POST path` with a JSON body and extra headers.
    pub async fn post(
        &self,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> Response<Incoming> {
        let mut request = Request::post(format!("http://{}{path}", self.addr))
            .header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(
            request
                .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
                .unwrap(),
        )
        .await
    }

    /// A streaming chat completion on the route `gpt-test`, with mock directives (`x-mock`).
    pub async fn chat_stream(&self, directives: &str) -> Response<Incoming> {
        self.post(
            "/v1/chat/completions",
            r#"{"model":"gpt-test","stream":true}"#,
            &[("x-mock", directives)],
        )
        .await
    }

    /// `GET` on the admin port.
    pub async fn admin_get(&self, path: &str) -> StatusCode {
        let request = Request::get(format!("http://{}{path}", self.admin))
            .body(Full::new(Bytes::new()))
            .unwrap();
        self.client
            .request(request)
            .await
            .expect("admin answers")
            .status()
    }

    /// Sends the same request straight to the mock (the baseline for "unchanged").
    pub async fn post_direct(&self, body: &str) -> Response<Incoming> {
        self.post_direct_with(body, "application/json").await
    }

    /// [`post_direct`](Self::post_direct) with the body labelled `content_type`.
    pub async fn post_direct_with(&self, body: &str, content_type: &str) -> Response<Incoming> {
        let request = Request::post(format!("{}/chat/completions", self.mock.base_url()))
            .header("content-type", content_type)
            .header("authorization", format!("Bearer {PROVIDER_KEY}"))
            .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
            .unwrap();
        self.client
            .request(request)
            .await
            .expect("the mock answers")
    }
}

/// What a client read from a body: the bytes, and whether it ended cleanly.
#[derive(Debug)]
pub struct Read {
    /// Every byte received, in order.
    pub bytes: Bytes,
    /// How many data frames they came in.
    pub frames: usize,
    /// The transport error that ended the body, if it did not end cleanly.
    pub error: Option<String>,
}

impl Read {
    /// The `data:` payloads of the SSE events received.
    pub fn events(&self) -> Vec<String> {
        let mut decoder = SseDecoder::new();
        decoder.push(self.bytes.clone());
        let mut out = Vec::new();
        while let Some(event) = decoder.next_event().expect("events within bounds") {
            out.push(event.data_str().into_owned());
        }
        out
    }

    /// The concatenated `delta.content` of the chunks.
    pub fn content(&self) -> String {
        self.events()
            .iter()
            .filter(|e| *e != "[DONE]")
            .filter_map(|e| {
                let chunk = weir_llm::Chunk::parse(e.as_bytes()).ok()?;
                chunk.content.map(|c| c.into_owned())
            })
            .collect()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.bytes).expect("a JSON body")
    }
}

/// Reads a body to its end (or its error), frame by frame.
pub async fn read(response: Response<Incoming>) -> Read {
    let mut body = response.into_body();
    let mut bytes = BytesMut::new();
    let mut frames = 0;
    loop {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    frames += 1;
                    bytes.extend_from_slice(&data);
                }
            }
            Some(Err(e)) => {
                return Read {
                    bytes: bytes.freeze(),
                    frames,
                    error: Some(e.to_string()),
                }
            }
        }
    }
    Read {
        bytes: bytes.freeze(),
        frames,
        error: None,
    }
}

/// Asserts an OpenAI-style error body and returns its `error` object.
pub fn assert_openai_error(read: &Read) -> serde_json::Value {
    let json = read.json();
    let error = json.get("error").expect("an `error` object").clone();
    assert!(error["message"].is_string(), "message: {error}");
    assert!(error["type"].is_string(), "type: {error}");
    assert!(error.get("code").is_some(), "code: {error}");
    error
}

/// Headers as a map, for assertions.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A streaming chat request on the route `gpt-test` to weir at `addr`, with mock directives
/// (`x-mock`); the answer once its headers are in.
pub async fn stream_at(addr: SocketAddr, directives: &str) -> Response<Incoming> {
    let client = Client::builder(TokioExecutor::new()).build_http();
    let request = Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("x-mock", directives)
        .body(Full::new(Bytes::from_static(
            br#"{"model":"gpt-test","stream":true,"messages":[]}"#,
        )))
        .unwrap();
    client.request(request).await.expect("weir answers")
}

/// `/metrics` on the admin port at `admin`, as text.
pub async fn metrics_at(admin: SocketAddr) -> String {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let uri = format!("http://{admin}/metrics");
    let response = client
        .get(uri.parse().unwrap())
        .await
        .expect("admin answers");
    String::from_utf8(read(response).await.bytes.to_vec()).expect("metrics are text")
}

/// The value of one sample in Prometheus text, by its name and labels as written.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no `{series}` in:\n{text}"))
        .parse()
        .expect("a number")
}

/// One sample of Prometheus text.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric name (with `_bucket`, `_sum`, `_count` for histograms).
    pub name: String,
    /// Its labels, in order.
    pub labels: Vec<(String, String)>,
    /// Its value.
    pub value: f64,
}

impl Sample {
    /// The value of label `name`.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses Prometheus text exposition the way a scraper would, and panics on anything a
/// scraper would reject: a sample before its family's `# TYPE`, a family declared twice, a bad
/// label or value.
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut families: std::collections::HashMap<String, String> = Default::default();
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            let earlier = families.insert(name.to_owned(), kind.to_owned());
            assert!(earlier.is_none(), "family declared twice: {name}");
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample and its value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("{line}"));
                let mut labels = Vec::new();
                let mut rest = body;
                while !rest.is_empty() {
                    let (label, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                    assert!(
                        label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                        "bad label name in {line}"
                    );
                    let mut value = String::new();
                    let mut chars = after.char_indices();
                    let end = loop {
                        match chars.next() {
                            Some((_, '\\')) => value.push(chars.next().expect("escape").1),
                            Some((i, '"')) => break i,
                            Some((_, c)) => value.push(c),
                            None => panic!("unterminated label value in {line}"),
                        }
                    };
                    labels.push((label.to_owned(), value));
                    rest = after[end + 1..].trim_start_matches(',');
                }
                (name, labels)
            }
        };
        let family = [
            name,
            name.trim_end_matches("_bucket"),
            name.trim_end_matches("_sum"),
            name.trim_end_matches("_count"),
        ]
        .into_iter()
        .find(|f| families.contains_key(*f))
        .unwrap_or_else(|| panic!("sample before its # TYPE: {line}"));
        if families[family] == "histogram" && name.ends_with("_bucket") {
            assert!(labels.iter().any(|(n, _)| n == "le"), "{line}");
        }
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    samples
}

/// weir over one mock provider (`mock`, no key, probes off) and the route `gpt-test` on it:
/// `server` goes in `[server]`, `route` in the route's table, `rest` after it (more routes,
/// `[[keys]]`).
pub async fn one_mock(server: &str, route: &str, rest: &str) -> (MockUpstream, weir::Running) {
    let mock = MockUpstream::start().await;
    let auth = if rest.contains("[[keys]]") {
        ""
    } else {
        "auth = \"off\""
    };
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
forward_headers = ["x-mock", "x-raw-end"]
{auth}
{server}

[[providers]]
name = "mock"
base_url = "{}"
allow_http = true
health = {{ probe = "off" }}

[[routes]]
model = "gpt-test"
targets = [{{ provider = "mock", model = "m" }}]
{route}

{rest}
"#,
        mock.base_url()
    );
    let config = weir::config::parse("one-mock.toml".as_ref(), &text, &|_| None)
        .expect("the test config is valid");
    let weir = weir::start(&config).await.expect("weir starts");
    (mock, weir)
}

/// `[[providers]]` for a loopback upstream: plain HTTP allowed, health probes off, `extra`
/// lines added.
pub fn provider(name: &str, base_url: &str, extra: &str) -> String {
    format!(
        "\n[[providers]]\nname = \"{name}\"\nbase_url = \"{base_url}\"\nallow_http = true\nhealth = {{ probe = \"off\" }}\n{extra}\n"
    )
}

/// `[[routes]]` for `model` over `targets` (a TOML array), `extra` lines added.
pub fn route(model: &str, targets: &str, extra: &str) -> String {
    format!("\n[[routes]]\nmodel = \"{model}\"\ntargets = {targets}\n{extra}\n")
}

/// weir on loopback ports, every client accepted, with `sections` (providers, routes, tables)
/// after `[server]`.
pub async fn weir_with(sections: &[String]) -> weir::Running {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nauth = \"off\"\nforward_headers = [\"x-mock\", \"x-raw-end\"]\n{}",
        sections.concat()
    );
    let config = weir::config::parse("test.toml".as_ref(), &text, &|_| None)
        .unwrap_or_else(|e| panic!("the test config is valid: {e}\n{text}"));
    weir::start(&config).await.expect("weir starts")
}

/// A route over two mock providers, `primary` then `backup`.
pub mod two {
    use bytes::Bytes;
    use http::Request;
    use http_body_util::Full;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use weir_test::MockUpstream;

    /// Two mock providers behind one weir.
    #[derive(Debug)]
    pub struct Setup {
        /// The route's first target.
        pub primary: MockUpstream,
        /// Its second.
        pub backup: MockUpstream,
        /// weir.
        pub weir: weir::Running,
        /// Its configuration.
        pub config: weir::config::Config,
    }

    /// weir with a primary and a backup provider (probes off), the route `gpt-test` over both.
    /// `primary_url` replaces the primary's base URL (a dead port), `extra` goes in the primary's
    /// provider table, `targets` overrides the route's targets.
    pub async fn setup(primary_url: Option<String>, extra: &str, targets: Option<&str>) -> Setup {
        setup_with(primary_url, extra, targets, "").await
    }

    /// [`setup`], with `tail` appended to the file (top-level tables: `[prices]`,
    /// `[telemetry]`).
    pub async fn setup_with(
        primary_url: Option<String>,
        extra: &str,
        targets: Option<&str>,
        tail: &str,
    ) -> Setup {
        let primary = MockUpstream::start().await;
        let backup = MockUpstream::start().await;
        // Probes off unless the test sets them.
        let health = if extra.contains("health") {
            ""
        } else {
            "health = { probe = \"off\" }"
        };
        let targets = targets.unwrap_or(
            r#"[{ provider = "primary", model = "m" }, { provider = "backup", model = "m" }]"#,
        );
        let text = format!(
            r#"
    [server]
    listen = "127.0.0.1:0"
    admin_listen = "127.0.0.1:0"
    forward_headers = ["x-mock", "x-raw-end"]
    auth = "off"

    [[providers]]
    name = "primary"
    base_url = "{}"
    allow_http = true
    {health}
    {extra}

    [[providers]]
    name = "backup"
    base_url = "{}"
    allow_http = true
    health = {{ probe = "off" }}

    [[routes]]
    model = "gpt-test"
    targets = {targets}

    {tail}
    "#,
            primary_url.unwrap_or_else(|| primary.base_url()),
            backup.base_url()
        );
        let config = weir::config::parse("failover.toml".as_ref(), &text, &|_| None).unwrap();
        let weir = weir::start(&config).await.unwrap();
        Setup {
            primary,
            backup,
            weir,
            config,
        }
    }

    /// What a client got.
    #[derive(Debug)]
    pub struct Answer {
        /// Status.
        pub status: u16,
        /// `x-weir-provider`.
        pub provider: Option<String>,
        /// `x-weir-attempts`.
        pub attempts: Option<String>,
        /// The streamed content (200) or the body (errors).
        pub text: String,
        /// The SSE events' data.
        pub events: Vec<String>,
        /// Whether the body ended with an error.
        pub broken: bool,
        /// Every byte of the body, as received.
        pub raw: String,
    }

    /// A streaming chat completion on `gpt-test` with mock directives, read to its end.
    pub async fn ask(weir: &weir::Running, directives: &str) -> Answer {
        ask_at(weir.addr(), directives).await
    }

    /// [`ask`], of the weir at `addr`.
    pub async fn ask_at(addr: std::net::SocketAddr, directives: &str) -> Answer {
        let client = Client::builder(TokioExecutor::new()).build_http();
        let request = Request::post(format!("http://{addr}/v1/chat/completions"))
            .header("x-mock", directives)
            .body(Full::new(Bytes::from_static(
                br#"{"model":"gpt-test","stream":true,"messages":[]}"#,
            )))
            .unwrap();
        let response = client.request(request).await.unwrap();
        let status = response.status().as_u16();
        let provider = crate::header(response.headers(), "x-weir-provider").map(str::to_owned);
        let attempts = crate::header(response.headers(), "x-weir-attempts").map(str::to_owned);
        let read = crate::read(response).await;
        let text = if status == 200 {
            read.content()
        } else {
            String::from_utf8_lossy(&read.bytes).into_owned()
        };
        Answer {
            status,
            provider,
            attempts,
            text,
            events: read.events(),
            broken: read.error.is_some(),
            raw: String::from_utf8_lossy(&read.bytes).into_owned(),
        }
    }
}

/// An in-process OpenTelemetry collector: OTLP/gRPC (the `opentelemetry-proto` service over
/// tonic) or OTLP/HTTP (protobuf bodies on `POST /v1/traces`), on 127.0.0.1. It keeps every
/// span it receives.
pub mod otlp {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    pub use opentelemetry_proto::tonic::common::v1::any_value::Value;
    pub use opentelemetry_proto::tonic::trace::v1::Span;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    /// What the collector received.
    #[derive(Clone, Debug, Default)]
    pub struct Received {
        spans: Arc<Mutex<Vec<Span>>>,
        /// Each export's `service.name`.
        services: Arc<Mutex<Vec<String>>>,
    }

    impl Received {
        /// Every span so far.
        pub fn spans(&self) -> Vec<Span> {
            self.spans.lock().unwrap().clone()
        }

        /// The `service.name` of each export so far.
        pub fn services(&self) -> Vec<String> {
            self.services.lock().unwrap().clone()
        }

        fn keep(&self, request: ExportTraceServiceRequest) {
            for resource in request.resource_spans {
                let service = resource
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                        Value::StringValue(s) => Some(s.clone()),
                        _ => None,
                    });
                self.services
                    .lock()
                    .unwrap()
                    .push(service.unwrap_or_default());
                for scope in resource.scope_spans {
                    self.spans.lock().unwrap().extend(scope.spans);
                }
            }
        }
    }

    #[tonic::async_trait]
    impl TraceService for Received {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            self.keep(request.into_inner());
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }

    /// A collector that speaks OTLP/gRPC.
    pub async fn grpc() -> (SocketAddr, Received) {
        let received = Received::default();
        let incoming =
            tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = incoming.local_addr().unwrap();
        let service = TraceServiceServer::new(received.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming),
        );
        (addr, received)
    }

    /// A collector that speaks OTLP/HTTP with protobuf bodies.
    pub async fn http() -> (SocketAddr, Received) {
        let received = Received::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let keep = received.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let keep = keep.clone();
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let keep = keep.clone();
                        async move {
                            let protobuf = request.uri().path() == "/v1/traces"
                                && request
                                    .headers()
                                    .get("content-type")
                                    .is_some_and(|v| v == "application/x-protobuf");
                            let body = request.into_body().collect().await?.to_bytes();
                            let status =
                                match <ExportTraceServiceRequest as prost::Message>::decode(body) {
                                    Ok(export) if protobuf => {
                                        keep.keep(export);
                                        200
                                    }
                                    _ => 400,
                                };
                            let mut response = http::Response::new(Full::new(Bytes::new()));
                            *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            response
                                .headers_mut()
                                .insert("content-type", "application/x-protobuf".parse().unwrap());
                            Ok::<_, hyper::Error>(response)
                        }
                    },
                );
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        (addr, received)
    }

    /// A collector that takes connections and never answers.
    pub async fn silent() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        addr
    }

    /// The string value of a span attribute.
    pub fn attr(span: &Span, key: &str) -> Option<String> {
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => Some(s.clone()),
                Value::IntValue(i) => Some(i.to_string()),
                Value::DoubleValue(d) => Some(d.to_string()),
                Value::BoolValue(b) => Some(b.to_string()),
                _ => None,
            })
    }

    /// Lowercase hex of an id.
    pub fn hex(id: &[u8]) -> String {
        id.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The Python that runs the SDK checks (`tests/python/requirements.txt` installed):
/// `WEIR_PYTHON`, or `.venv/bin/python` at the workspace root, which `cargo xtask test`
/// creates. `what` names the packages a test needs, for the message when there is none.
pub fn python(what: &str) -> std::path::PathBuf {
    if let Some(python) = std::env::var_os("WEIR_PYTHON") {
        return python.into();
    }
    let venv = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        venv.exists(),
        "no Python with {what}: run `cargo xtask test` (it creates .venv) or set WEIR_PYTHON"
    );
    venv
}

/// Runs `tests/python/{script}` with `args` on [`python`]`(what)`; its stdout, after
/// asserting that it succeeded (its output in the failure message).
pub async fn run_python(what: &str, script: &str, args: &[String]) -> String {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(script);
    let out = tokio::process::Command::new(python(what))
        .arg(path)
        .args(args)
        .output()
        .await
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{stderr}");
    stdout
}
