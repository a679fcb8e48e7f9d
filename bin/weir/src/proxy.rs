//! The OpenAI-compatible front: routes a request to its provider and streams the answer back.

use crate::body::{ResponseBody, UpstreamBody};
use crate::config::{Config, Provider};
use crate::headers::{self, RequestIds, X_REQUEST_ID, X_WEIR_PROVIDER};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, Uri};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;
use weir_client::{ClientBuilder, HttpClient};
use weir_llm::{Endpoint, ErrorBody, ErrorKind, LlmRequest};

/// The read buffer of each HTTP/1.1 upstream connection.
const UPSTREAM_READ_BUF: usize = 8192;

/// One provider, ready to take requests.
#[derive(Debug)]
struct Upstream {
    name: Arc<str>,
    client: HttpClient<Full<Bytes>>,
    /// The full URI of each endpoint under the base URL.
    uris: [Uri; 3],
    /// `Authorization` and the configured extra headers, marked sensitive.
    headers: HeaderMap,
    idle_timeout: Duration,
}

impl Upstream {
    fn new(p: &Provider) -> Result<Self, weir_client::Error> {
        let client = ClientBuilder::new()
            .connect_timeout(p.connect_timeout)
            .response_timeout(p.response_timeout)
            .pool_idle_timeout(p.pool_idle_timeout)
            .pool_max_idle_per_host(p.pool_max_idle)
            .http_version(p.http_version)
            .allow_http(p.allow_http)
            .tls_roots(p.tls_roots)
            .add_root_certificates(p.extra_roots.iter().cloned())
            // A fixed 8 KiB read buffer per upstream connection (hyper's adaptive one grows
            // past it on a burst and keeps the larger buffer).
            .http1_read_buf_exact_size(UPSTREAM_READ_BUF)
            .build()?;
        let base = p.base_url.to_string();
        let base = base.trim_end_matches('/');
        let uri = |e: Endpoint| -> Uri {
            format!("{base}{}", e.upstream_path())
                .parse()
                .expect("a valid base URL plus a fixed path is a valid URI")
        };
        let mut headers = HeaderMap::new();
        if let Some(key) = &p.api_key {
            let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
                .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid-key"));
            value.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, value);
        }
        for (name, secret) in &p.headers {
            let mut value =
                HeaderValue::from_str(secret.expose()).expect("config validated header values");
            value.set_sensitive(true);
            headers.insert(name.clone(), value);
        }
        Ok(Self {
            name: p.name.as_str().into(),
            client,
            uris: [
                uri(Endpoint::ChatCompletions),
                uri(Endpoint::Completions),
                uri(Endpoint::Embeddings),
            ],
            headers,
            idle_timeout: p.idle_timeout,
        })
    }

    fn uri(&self, endpoint: Endpoint) -> Uri {
        self.uris[match endpoint {
            Endpoint::ChatCompletions => 0,
            Endpoint::Completions => 1,
            Endpoint::Embeddings => 2,
        }]
        .clone()
    }
}

#[derive(Debug)]
struct RouteEntry {
    upstream: Arc<Upstream>,
    model: String,
}

/// The gateway: routes, providers and limits, shared by every connection.
#[derive(Debug)]
pub struct Gateway {
    routes: HashMap<String, RouteEntry>,
    models: Bytes,
    max_request_bytes: usize,
    ids: RequestIds,
}

fn error(body: ErrorBody) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(body.to_json()));
    *response.status_mut() = body.status();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn json(data: Bytes) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(data));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

impl Gateway {
    /// Builds the gateway (and one connection pool per provider) from a validated config.
    pub fn new(config: &Config) -> Result<Self, weir_client::Error> {
        let upstreams = config
            .providers
            .iter()
            .map(|p| Upstream::new(p).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let routes = config
            .routes
            .iter()
            .map(|r| {
                let entry = RouteEntry {
                    upstream: upstreams[r.target.provider].clone(),
                    model: r.target.model.clone(),
                };
                (r.model.clone(), entry)
            })
            .collect();
        let data: Vec<serde_json::Value> = config
            .routes
            .iter()
            .map(|r| serde_json::json!({"id": r.model, "object": "model", "created": 0, "owned_by": "weir"}))
            .collect();
        let models = serde_json::to_vec(&serde_json::json!({"object": "list", "data": data}))
            .expect("JSON values serialize");
        Ok(Self {
            routes,
            models: models.into(),
            max_request_bytes: config.server.max_request_bytes,
            ids: RequestIds::default(),
        })
    }

    /// Answers one client request. Never fails: every error is an OpenAI-style response.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<ResponseBody> {
        let id = self.ids.take_or_make(request.headers());
        let mut response = self.route(request, &id).await;
        response.headers_mut().insert(X_REQUEST_ID.clone(), id);
        response
    }

    async fn route(&self, request: Request<Incoming>, id: &HeaderValue) -> Response<ResponseBody> {
        let path = request.uri().path();
        if path == "/v1/models" {
            if request.method() != Method::GET {
                return method_not_allowed("GET");
            }
            return json(self.models.clone());
        }
        let Some(endpoint) = Endpoint::from_path(path) else {
            return error(
                ErrorBody::new(
                    ErrorKind::NotFound,
                    format!("Unknown request URL: {} {path}.", request.method()),
                )
                .code("unknown_url"),
            );
        };
        if request.method() != Method::POST {
            return method_not_allowed("POST");
        }
        self.proxy(endpoint, request, id).await
    }

    async fn proxy(
        &self,
        endpoint: Endpoint,
        request: Request<Incoming>,
        id: &HeaderValue,
    ) -> Response<ResponseBody> {
        let (parts, body) = request.into_parts();
        let too_large = || {
            error(
                ErrorBody::new(
                    ErrorKind::PayloadTooLarge,
                    format!(
                        "Request body is larger than the limit of {} bytes.",
                        self.max_request_bytes
                    ),
                )
                .code("request_too_large"),
            )
        };
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max_request_bytes as u64) {
            return too_large();
        }
        let body = match Limited::new(body, self.max_request_bytes).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<LengthLimitError>() => return too_large(),
            Err(_) => {
                return error(ErrorBody::new(
                    ErrorKind::InvalidRequest,
                    "The request body could not be read.",
                ))
            }
        };
        let llm = match LlmRequest::parse(endpoint, &body) {
            Ok(llm) => llm,
            Err(invalid) => {
                let mut body =
                    ErrorBody::new(ErrorKind::InvalidRequest, invalid.message().to_owned());
                if let Some(param) = invalid.param() {
                    body = body.param(param);
                }
                return error(body);
            }
        };
        let Some(route) = self.routes.get(llm.model()) else {
            return error(
                ErrorBody::new(
                    ErrorKind::NotFound,
                    format!(
                        "The model `{}` does not exist or you do not have access to it.",
                        llm.model()
                    ),
                )
                .param("model")
                .code("model_not_found"),
            );
        };
        let upstream = &route.upstream;

        let mut headers = headers::upstream_request_headers(&parts.headers, &upstream.headers);
        headers.insert(X_REQUEST_ID.clone(), id.clone());
        let mut outgoing = Request::new(Full::new(llm.with_model(&body, &route.model)));
        *outgoing.method_mut() = Method::POST;
        *outgoing.uri_mut() = upstream.uri(endpoint);
        *outgoing.headers_mut() = headers;

        let response = match upstream.client.clone().oneshot(outgoing).await {
            Ok(response) => response,
            Err(e) => {
                tracing::warn!(provider = %upstream.name, error = %e, "upstream request failed");
                let (kind, code, what) = if e.is_timeout() {
                    (
                        ErrorKind::GatewayTimeout,
                        "upstream_timeout",
                        "did not answer in time",
                    )
                } else if e.is_connect() {
                    (
                        ErrorKind::BadGateway,
                        "upstream_connect_error",
                        "could not be reached",
                    )
                } else {
                    (
                        ErrorKind::BadGateway,
                        "upstream_error",
                        "closed the connection",
                    )
                };
                return error(
                    ErrorBody::new(
                        kind,
                        format!("The upstream provider `{}` {what}.", upstream.name),
                    )
                    .code(code),
                );
            }
        };

        let (mut parts, incoming) = response.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        let sse = parts.status.is_success()
            && !parts.headers.contains_key(header::CONTENT_ENCODING)
            && parts
                .headers
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        if sse {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        parts.headers.insert(
            X_WEIR_PROVIDER.clone(),
            HeaderValue::from_str(&upstream.name).expect("provider names are header-safe"),
        );
        let body = UpstreamBody::new(incoming, sse, upstream.name.clone(), upstream.idle_timeout);
        Response::from_parts(parts, ResponseBody::upstream(body))
    }
}

fn method_not_allowed(allow: &'static str) -> Response<ResponseBody> {
    let mut response = error(ErrorBody::new(
        ErrorKind::MethodNotAllowed,
        format!("This endpoint only accepts {allow}."),
    ));
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}
