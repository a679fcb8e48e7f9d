use std::fmt;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Connect,
    Timeout,
    Request,
    Response,
    /// A malformed response: framing or head against RFC 9112.
    Protocol(&'static str),
    /// The connection ended before (or inside) a response.
    Closed(&'static str),
    TlsRoots,
}

/// Why a request got no response. Opaque: ask it what it is.
pub struct Error {
    kind: Kind,
    source: Option<BoxError>,
}

impl Error {
    pub(crate) fn timeout() -> Self {
        Self {
            kind: Kind::Timeout,
            source: None,
        }
    }

    pub(crate) fn connect(source: BoxError) -> Self {
        Self {
            kind: Kind::Connect,
            source: Some(source),
        }
    }

    pub(crate) fn connect_hyper(source: hyper::Error) -> Self {
        Self::connect(source.into())
    }

    pub(crate) fn request(source: hyper::Error) -> Self {
        Self {
            kind: Kind::Request,
            source: Some(source.into()),
        }
    }

    /// Writing the request failed.
    pub(crate) fn request_io(source: std::io::Error) -> Self {
        Self {
            kind: Kind::Request,
            source: Some(source.into()),
        }
    }

    /// The request's own body failed.
    pub(crate) fn request_body(source: BoxError) -> Self {
        Self {
            kind: Kind::Request,
            source: Some(source),
        }
    }

    /// Reading the response failed.
    pub(crate) fn response_io(source: std::io::Error) -> Self {
        Self {
            kind: Kind::Response,
            source: Some(source.into()),
        }
    }

    /// Reading an HTTP/2 response body failed.
    pub(crate) fn response_hyper(source: hyper::Error) -> Self {
        Self {
            kind: Kind::Response,
            source: Some(source.into()),
        }
    }

    /// The response broke the protocol (or the connection ended too early).
    pub(crate) fn protocol(what: &'static str) -> Self {
        Self {
            kind: Kind::Protocol(what),
            source: None,
        }
    }

    /// The response head did not parse.
    pub(crate) fn closed(what: &'static str) -> Self {
        Self {
            kind: Kind::Closed(what),
            source: None,
        }
    }

    pub(crate) fn protocol_source(source: BoxError) -> Self {
        Self {
            kind: Kind::Protocol("the response head is malformed"),
            source: Some(source),
        }
    }

    pub(crate) fn tls(source: BoxError) -> Self {
        Self {
            kind: Kind::TlsRoots,
            source: Some(source),
        }
    }

    /// The connection could not be made: refused, DNS, TLS handshake, connect timeout. Nothing
    /// reached the upstream, so a retry is always safe.
    pub fn is_connect(&self) -> bool {
        self.kind == Kind::Connect
    }

    /// No response headers within the response timeout.
    pub fn is_timeout(&self) -> bool {
        self.kind == Kind::Timeout
    }

    /// Whether the connection failed under the request before any response came: closed or
    /// reset while the request was written or its answer awaited (asked of the request's
    /// error, not of a body's). On a reused connection
    /// this is often the peer closing an idle connection as the request went out.
    pub fn is_closed_before_response(&self) -> bool {
        matches!(self.kind, Kind::Request | Kind::Response | Kind::Closed(_))
    }

    /// Whether the upstream's response was malformed (its head, or its body's framing): not a
    /// network failure, a broken server. [`Display`](fmt::Display) says what was wrong.
    pub fn is_malformed(&self) -> bool {
        matches!(self.kind, Kind::Protocol(_))
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("weir_client::Error");
        d.field("kind", &self.kind);
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            Kind::Connect => "could not connect to the upstream",
            Kind::Timeout => "the upstream sent no response headers in time",
            Kind::Request => "the upstream request failed",
            Kind::Response => "reading the upstream response failed",
            Kind::Protocol(what) | Kind::Closed(what) => what,
            Kind::TlsRoots => "could not load the TLS trust roots",
        })
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}
