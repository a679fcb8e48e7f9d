//! A pooled, streaming HTTP client as a tower [`Service`](tower_service::Service).
//!
//! [`HttpClient`] is hyper-util's pooled client over rustls (HTTP/1.1 and HTTP/2 by ALPN,
//! TCP_NODELAY, bounded idle pool) with two timeouts that a gateway needs and hyper-util leaves
//! to its user: a connect timeout and a **response-header timeout**. The response body is
//! hyper's [`Incoming`](hyper::body::Incoming), handed over as it arrives: the client never
//! buffers it.
//!
//! The client is always ready (hyper-util's pool never pushes back): limits belong to the
//! layers in front of it.
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

mod error;
mod future;

pub use error::Error;
pub use future::ResponseFuture;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::task::{Context, Poll};
use std::time::Duration;

/// Where the client takes its TLS trust roots from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsRoots {
    /// Mozilla's roots compiled into the binary (works in a scratch container).
    #[default]
    Webpki,
    /// The operating system's trust store.
    Native,
}

/// Builds an [`HttpClient`].
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    connect_timeout: Option<Duration>,
    response_timeout: Option<Duration>,
    pool_idle_timeout: Option<Duration>,
    pool_max_idle_per_host: usize,
    http2_only: bool,
    allow_http: bool,
    roots: TlsRoots,
    read_buf_size: Option<usize>,
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
            http2_only: false,
            allow_http: false,
            roots: TlsRoots::Webpki,
            read_buf_size: None,
        }
    }

    /// How long a TCP connect may take (`None`: no limit).
    pub fn connect_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.connect_timeout = timeout.into();
        self
    }

    /// How long after sending a request its response headers may take (`None`: no limit). It
    /// covers connecting too. It does not cover the body: a stream may last as long as it runs.
    pub fn response_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.response_timeout = timeout.into();
        self
    }

    /// How long an idle pooled connection is kept (`None`: forever).
    pub fn pool_idle_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.pool_idle_timeout = timeout.into();
        self
    }

    /// How many idle connections are kept per host.
    pub fn pool_max_idle_per_host(mut self, max: usize) -> Self {
        self.pool_max_idle_per_host = max;
        self
    }

    /// Speak HTTP/2 only (h2c with prior knowledge on plain `http://` upstreams).
    pub fn http2_only(mut self, yes: bool) -> Self {
        self.http2_only = yes;
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

    /// Reads HTTP/1.1 responses into a buffer of exactly this size instead of hyper's adaptive
    /// one: bounds the memory each open upstream stream holds.
    pub fn http1_read_buf_exact_size(mut self, size: impl Into<Option<usize>>) -> Self {
        self.read_buf_size = size.into();
        self
    }

    /// Builds the client. Fails only when the native trust store is asked for and cannot be
    /// read.
    pub fn build<B>(&self) -> Result<HttpClient<B>, Error>
    where
        B: http_body::Body + Send + 'static + Unpin,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(self.connect_timeout);
        let builder = HttpsConnectorBuilder::new();
        let builder = match self.roots {
            TlsRoots::Webpki => builder.with_webpki_roots(),
            TlsRoots::Native => builder.with_native_roots().map_err(Error::tls_roots)?,
        };
        let builder = if self.allow_http {
            builder.https_or_http()
        } else {
            builder.https_only()
        };
        let connector = if self.http2_only {
            builder.enable_http2().wrap_connector(http)
        } else {
            builder.enable_http1().enable_http2().wrap_connector(http)
        };
        let mut client = Client::builder(TokioExecutor::new());
        client
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(self.pool_idle_timeout)
            .pool_max_idle_per_host(self.pool_max_idle_per_host)
            .http2_only(self.http2_only);
        if let Some(size) = self.read_buf_size {
            client.http1_read_buf_exact_size(size);
        }
        Ok(HttpClient {
            inner: client.build(connector),
            response_timeout: self.response_timeout,
        })
    }
}

/// The pooled client. Clones share one pool. See the [crate docs](crate).
#[derive(Debug)]
pub struct HttpClient<B> {
    inner: Client<HttpsConnector<HttpConnector>, B>,
    response_timeout: Option<Duration>,
}

impl<B> Clone for HttpClient<B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            response_timeout: self.response_timeout,
        }
    }
}

impl<B> HttpClient<B> {
    /// The response-header timeout in force.
    pub fn response_timeout(&self) -> Option<Duration> {
        self.response_timeout
    }
}

impl<B> tower_service::Service<Request<B>> for HttpClient<B>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<Incoming>;
    type Error = Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> ResponseFuture {
        ResponseFuture::new(self.inner.request(request), self.response_timeout)
    }
}

#[cfg(test)]
mod tests;
