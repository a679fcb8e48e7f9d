//! A pooled, streaming HTTP client as a tower [`Service`].
//!
//! [`HttpClient`] pools connections to upstreams over hyper's connection API, hyper-util's
//! connector and rustls (HTTP/1.1, and HTTP/2 by ALPN or prior knowledge; TCP_NODELAY; a
//! bounded idle pool), with two timeouts that a gateway needs: a connect timeout and a
//! **response-header timeout**. The response body ([`ResponseBody`]) is handed over as it
//! arrives: the client never buffers it.
//!
//! An HTTP/1.1 connection is driven by the response body itself, in the reader's task, rather
//! than by a task of its own: see the `pool` module notes. For a streaming proxy this is the
//! difference between one write per burst and one write (and two task switches) per frame.
//!
//! The client is always ready (its pool never pushes back): limits belong to the layers in
//! front of it.
//!
//! ```no_run
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use std::time::Duration;
//! use tower::{Service, ServiceExt};
//! use weir_client::ClientBuilder;
//!
//! # async fn doc() -> Result<(), Box<dyn std::error::Error>> {
//! let mut client = ClientBuilder::new()
//!     .connect_timeout(Duration::from_secs(5))
//!     .response_timeout(Duration::from_secs(30))
//!     .build::<Full<Bytes>>()?;
//! let request = http::Request::post("https://api.openai.com/v1/chat/completions")
//!     .body(Full::new(Bytes::from_static(b"{}")))?;
//! let response = client.ready().await?.call(request).await?;
//! println!("{}", response.status());
//! # Ok(()) }
//! ```

pub mod decompress;
#[cfg(test)]
mod differential;
mod error;
mod future;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod h1;
mod pool;

pub use decompress::Decompress;
pub use error::Error;
pub use future::ResponseFuture;
pub use http::{header, HeaderValue, Request, Response, Uri};
use hyper::client::conn::http2;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use pool::{Http1, Key, Open, Pool, Slot};
pub use pool::{PoolSnapshot, ResponseBody};
pub use rustls::pki_types::CertificateDer;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower_service::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request extension: this request's response-header timeout, in place of the client's
/// (`None`: no timeout). A caller that bounds the whole start of an answer itself (headers
/// and first event under one deadline) sets it to what is left of that deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseTimeout(pub Option<Duration>);

/// A request extension: send this request on a new connection, never a pooled one (a health
/// probe that failed on a reused connection tries again this way before it counts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FreshConnection;

/// Where the client takes its TLS trust roots from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsRoots {
    /// Mozilla's roots compiled into the binary (works in a scratch container).
    #[default]
    Webpki,
    /// The operating system's trust store.
    Native,
}

/// Which HTTP version the client speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HttpVersion {
    /// HTTP/2 when TLS negotiates it (ALPN), else HTTP/1.1. Plain `http://` is HTTP/1.1.
    #[default]
    Auto,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only: ALPN `h2` on TLS, prior knowledge (h2c) on plain `http://`.
    Http2,
}

/// Builds an [`HttpClient`].
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    connect_timeout: Option<Duration>,
    response_timeout: Option<Duration>,
    pool_idle_timeout: Option<Duration>,
    pool_max_idle_per_host: usize,
    pool_max_per_host: Option<usize>,
    version: HttpVersion,
    allow_http: bool,
    roots: TlsRoots,
    extra_roots: Vec<CertificateDer<'static>>,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientBuilder {
    /// Defaults: connect timeout 10 s, response-header timeout 60 s, idle connections kept
    /// 90 s, at most 256 idle per host, HTTP/1.1 or HTTP/2 by ALPN, https only, webpki roots.
    pub fn new() -> Self {
        Self {
            connect_timeout: Some(Duration::from_secs(10)),
            response_timeout: Some(Duration::from_secs(60)),
            pool_idle_timeout: Some(Duration::from_secs(90)),
            pool_max_idle_per_host: 256,
            pool_max_per_host: None,
            version: HttpVersion::Auto,
            allow_http: false,
            roots: TlsRoots::Webpki,
            extra_roots: Vec::new(),
        }
    }

    /// How long a TCP connect may take (`None`: no limit).
    pub fn connect_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.connect_timeout = timeout.into();
        self
    }

    /// How long after a request is handed over its response headers may take (`None`: no
    /// limit). It covers connecting too. It does not cover the body: a stream may last as long
    /// as it runs.
    pub fn response_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.response_timeout = timeout.into();
        self
    }

    /// How long an idle pooled connection is kept (`None`: forever).
    pub fn pool_idle_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.pool_idle_timeout = timeout.into();
        self
    }

    /// How many HTTP/1.1 connections may be open per host, in use and idle (default: no
    /// limit). At the limit a request waits, first come first served, for a connection to go
    /// back to idle or to close (within the response timeout).
    pub fn pool_max_per_host(mut self, max: impl Into<Option<usize>>) -> Self {
        self.pool_max_per_host = max.into();
        self
    }

    /// How many idle HTTP/1.1 connections are kept per host (default 256).
    pub fn pool_max_idle_per_host(mut self, max: usize) -> Self {
        self.pool_max_idle_per_host = max;
        self
    }

    /// The HTTP version policy.
    pub fn http_version(mut self, version: HttpVersion) -> Self {
        self.version = version;
        self
    }

    /// Allow plain `http://` upstreams (local models, tests). Off by default.
    pub fn allow_http(mut self, yes: bool) -> Self {
        self.allow_http = yes;
        self
    }

    /// The TLS trust roots.
    pub fn tls_roots(mut self, roots: TlsRoots) -> Self {
        self.roots = roots;
        self
    }

    /// Also trusts these certificates (a private CA in front of a self-hosted model server).
    pub fn add_root_certificates(
        mut self,
        certificates: impl IntoIterator<Item = CertificateDer<'static>>,
    ) -> Self {
        self.extra_roots.extend(certificates);
        self
    }

    fn tls_config(&self) -> Result<rustls::ClientConfig, Error> {
        let mut roots = rustls::RootCertStore::empty();
        match self.roots {
            TlsRoots::Webpki => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            TlsRoots::Native => {
                let native = rustls_native_certs::load_native_certs();
                if native.certs.is_empty() {
                    let why = native.errors.first().map(ToString::to_string);
                    return Err(Error::tls(
                        why.unwrap_or_else(|| "the OS trust store is empty".into())
                            .into(),
                    ));
                }
                roots.add_parsable_certificates(native.certs);
            }
        }
        for certificate in &self.extra_roots {
            roots
                .add(certificate.clone())
                .map_err(|e| Error::tls(e.into()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::tls(e.into()))?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }

    /// Builds the client. Fails only when the trust roots cannot be loaded (an unreadable
    /// native store, an invalid extra certificate).
    pub fn build<B>(&self) -> Result<HttpClient<B>, Error>
    where
        B: http_body::Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(self.connect_timeout);
        let builder = HttpsConnectorBuilder::new().with_tls_config(self.tls_config()?);
        let builder = if self.allow_http {
            builder.https_or_http()
        } else {
            builder.https_only()
        };
        let connector = match self.version {
            HttpVersion::Auto => builder.enable_http1().enable_http2().wrap_connector(http),
            HttpVersion::Http1 => builder.enable_http1().wrap_connector(http),
            HttpVersion::Http2 => builder.enable_http2().wrap_connector(http),
        };
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2.timer(TokioTimer::new());
        Ok(HttpClient {
            shared: Arc::new(Shared {
                connector,
                http2,
                version: self.version,
                pool: Arc::new(Pool::new(
                    self.pool_idle_timeout,
                    self.pool_max_idle_per_host,
                    self.pool_max_per_host,
                )),
            }),
            response_timeout: self.response_timeout,
        })
    }
}

struct Shared<B: http_body::Body + 'static> {
    connector: HttpsConnector<HttpConnector>,
    http2: http2::Builder<TokioExecutor>,
    version: HttpVersion,
    pool: Arc<Pool<B>>,
}

/// The pooled client. Clones share one pool. See the [crate docs](crate).
pub struct HttpClient<B: http_body::Body + 'static> {
    shared: Arc<Shared<B>>,
    response_timeout: Option<Duration>,
}

impl<B: http_body::Body + 'static> std::fmt::Debug for HttpClient<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("version", &self.shared.version)
            .field("response_timeout", &self.response_timeout)
            .finish_non_exhaustive()
    }
}

impl<B: http_body::Body + 'static> Clone for HttpClient<B> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            response_timeout: self.response_timeout,
        }
    }
}

impl<B> HttpClient<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// The response-header timeout in force.
    pub fn response_timeout(&self) -> Option<Duration> {
        self.response_timeout
    }

    /// Idle HTTP/1.1 connections in the pool, over all hosts.
    pub fn idle_connections(&self) -> usize {
        self.shared.pool.idle()
    }

    /// The pool's HTTP/1.1 connections now: open, idle, in use, and requests waiting for one.
    pub fn pool_snapshot(&self) -> PoolSnapshot {
        self.shared.pool.snapshot()
    }
}

/// A connection for one request. The HTTP/1.1 state (about 1.7 KiB) is boxed once, when the
/// connection is made, so that handing it between pool, request and body moves a pointer.
enum Conn<B: http_body::Body + 'static> {
    Http1(Box<Http1>),
    Http2(http2::SendRequest<B>),
}

impl<B> Shared<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    async fn connect(&self, key: &Key, open: Open) -> Result<Conn<B>, Error> {
        let uri = Uri::builder()
            .scheme(key.scheme.clone())
            .authority(key.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| Error::connect(e.into()))?;
        let io = self
            .connector
            .clone()
            .call(uri)
            .await
            .map_err(Error::connect)?;
        let h2 = match self.version {
            HttpVersion::Http2 => true,
            HttpVersion::Http1 => false,
            HttpVersion::Auto => io.connected().is_negotiated_h2(),
        };
        if h2 {
            let (sender, conn) = self
                .http2
                .handshake(io)
                .await
                .map_err(Error::connect_hyper)?;
            tokio::spawn(conn);
            self.pool.insert_http2(key.clone(), sender.clone());
            Ok(Conn::Http2(sender))
        } else {
            Ok(Conn::Http1(Box::new(Http1 {
                conn: h1::Conn::new(io),
                _open: open,
            })))
        }
    }

    async fn request(
        self: Arc<Self>,
        mut request: Request<B>,
    ) -> Result<Response<ResponseBody<B>>, Error> {
        let key = key(request.uri())?;
        let fresh = request.extensions().get::<FreshConnection>().is_some();
        let mut pooled = match self.version {
            _ if fresh => None,
            HttpVersion::Http1 => None,
            _ => self.pool.checkout_http2(&key),
        }
        .map(Conn::Http2);
        if pooled.is_none() && self.version != HttpVersion::Http2 && !fresh {
            pooled = self.pool.checkout_http1(&key).map(Conn::Http1);
        }
        let mut from_pool = pooled.is_some();
        // Connecting is rare once the pool is warm: boxed, its large future stays out of this
        // one (which is built on the stack and copied into a box on every request).
        let conn = match pooled {
            Some(conn) => conn,
            None if fresh => {
                let open = Box::pin(self.pool.fresh_slot(&key)).await;
                Box::pin(self.connect(&key, open)).await?
            }
            None => match Box::pin(self.pool.slot(&key)).await {
                Slot::Idle(conn) => {
                    from_pool = true;
                    Conn::Http1(conn)
                }
                Slot::New(open) => Box::pin(self.connect(&key, open)).await?,
            },
        };
        let request = match conn {
            Conn::Http2(mut sender) => {
                let response = sender.send_request(request).await.map_err(Error::request)?;
                return Ok(response.map(ResponseBody::http2));
            }
            Conn::Http1(conn) => {
                origin_form(&mut request, &key);
                match send_http1(conn, request, &key, &self.pool).await {
                    Ok(response) => return Ok(response),
                    // A pooled connection closed under us before the request was written:
                    // nothing reached the upstream, so a fresh connection may try it.
                    Err((_, Some(request))) if from_pool => request,
                    Err((error, _)) => return Err(error),
                }
            }
        };
        let open = match Box::pin(self.pool.slot(&key)).await {
            Slot::Idle(conn) => {
                return send_http1(conn, request, &key, &self.pool)
                    .await
                    .map_err(|(e, _)| e)
            }
            Slot::New(open) => open,
        };
        match Box::pin(self.connect(&key, open)).await? {
            Conn::Http1(conn) => send_http1(conn, request, &key, &self.pool)
                .await
                .map_err(|(e, _)| e),
            Conn::Http2(mut sender) => {
                let response = sender.send_request(request).await.map_err(Error::request)?;
                Ok(response.map(ResponseBody::http2))
            }
        }
    }
}

fn key(uri: &Uri) -> Result<Key, Error> {
    match (uri.scheme(), uri.authority()) {
        (Some(scheme), Some(authority)) => Ok(Key {
            scheme: scheme.clone(),
            authority: authority.clone(),
        }),
        _ => Err(Error::connect(
            "the request URI needs a scheme and a host".into(),
        )),
    }
}

/// HTTP/1.1 sends the path as the request target, and the authority as `Host`.
fn origin_form<B>(request: &mut Request<B>, key: &Key) {
    if !request.headers().contains_key(header::HOST) {
        if let Ok(host) = HeaderValue::from_str(key.authority.as_str()) {
            request.headers_mut().insert(header::HOST, host);
        }
    }
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .unwrap_or_else(|_| Uri::from_static("/"));
    *request.uri_mut() = path;
}

/// Sends on an HTTP/1.1 connection and reads the response head. A pooled connection found
/// closed before anything was written gives the request back, for a fresh connection.
async fn send_http1<B>(
    mut conn: Box<Http1>,
    request: Request<B>,
    key: &Key,
    pool: &Arc<Pool<B>>,
) -> Result<Response<ResponseBody<B>>, (Error, Option<Request<B>>)>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    if !conn.conn.usable() {
        return Err((
            Error::protocol("the pooled connection was closed"),
            Some(request),
        ));
    }
    let sent = conn.conn.send(request).await.map_err(|e| (e, None))?;
    let (head, framing) = conn.conn.read_head(sent).await.map_err(|e| (e, None))?;
    let body = ResponseBody::http1(h1::Decoder::new(framing), conn, key.clone(), pool.clone());
    Ok(head.map(|()| body))
}

impl<B> Service<Request<B>> for HttpClient<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<B>>;
    type Error = Error;
    type Future = ResponseFuture<B>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> ResponseFuture<B> {
        let timeout = match request.extensions().get::<ResponseTimeout>() {
            Some(ResponseTimeout(timeout)) => *timeout,
            None => self.response_timeout,
        };
        ResponseFuture::new(Box::pin(self.shared.clone().request(request)), timeout)
    }
}

#[cfg(test)]
mod tests;
