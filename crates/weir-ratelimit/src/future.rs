use crate::body::ResponseBody;
use crate::headers;
use crate::limiter::{Charge, Key, Standings};
use crate::refusal::Limited;
use crate::BoxError;
use http::Response;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use weir_llm::stream::Meter;

type Waiting<RB, K> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody<RB, K>>, BoxError>> + Send>>;

pin_project! {
    /// The response future of [`RateLimit`](crate::RateLimit): the inner call of an admitted
    /// request, the 429 of a refused one, or (in wait mode, the rare path) a boxed wait for a
    /// turn followed by the call.
    pub struct ResponseFuture<F, RB, K: Key> {
        #[pin]
        state: State<F, RB, K>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, RB, K: Key> {
        Calling {
            #[pin]
            future: F,
            charge: Option<Charge<K>>,
            standings: Option<Standings>,
            meter: Option<Meter>,
        },
        Refused {
            response: Option<Response<ResponseBody<RB, K>>>,
        },
        Waiting {
            future: Waiting<RB, K>,
        },
    }
}

impl<F, RB, K: Key> std::fmt::Debug for ResponseFuture<F, RB, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl<F, RB, K: Key> ResponseFuture<F, RB, K> {
    pub(crate) fn calling(
        future: F,
        charge: Option<Charge<K>>,
        standings: Option<Standings>,
        meter: Option<Meter>,
    ) -> Self {
        Self {
            state: State::Calling {
                future,
                charge,
                standings,
                meter,
            },
        }
    }

    pub(crate) fn refused(response: Response<ResponseBody<RB, K>>) -> Self {
        Self {
            state: State::Refused {
                response: Some(response),
            },
        }
    }

    pub(crate) fn waiting(future: Waiting<RB, K>) -> Self {
        Self {
            state: State::Waiting { future },
        }
    }
}

/// An admitted call's answer: the charge rides on its body (settled from the usage it
/// reports: the meter the response or the request carried, else a scan of its own), and its
/// headers show where the limit stands, unless a limit further in (more specific) wrote its
/// own. A 429 that a limit further in answered gives this
/// charge back and keeps that limit's headers.
pub(crate) fn admitted<RB, K: Key>(
    mut response: Response<RB>,
    mut charge: Option<Charge<K>>,
    standings: Option<Standings>,
    meter: Option<Meter>,
) -> Response<ResponseBody<RB, K>> {
    if response.extensions().get::<Limited>().is_some() {
        if let Some(charge) = charge.take() {
            charge.cancel();
        }
    } else if let Some(standings) = standings.filter(|_| !headers::written(response.headers())) {
        headers::write(response.headers_mut(), &standings);
    }
    let meter = match charge {
        None => None,
        Some(_) => response.extensions().get::<Meter>().cloned().or(meter),
    };
    response.map(|body| ResponseBody::new(body, charge, meter))
}

impl<F, E, RB, K> Future for ResponseFuture<F, RB, K>
where
    F: Future<Output = Result<Response<RB>, E>>,
    E: Into<BoxError>,
    K: Key,
{
    type Output = Result<Response<ResponseBody<RB, K>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Calling {
                future,
                charge,
                standings,
                meter,
            } => {
                let response = ready!(future.poll(cx)).map_err(Into::into)?;
                Poll::Ready(Ok(admitted(
                    response,
                    charge.take(),
                    standings.take(),
                    meter.take(),
                )))
            }
            StateProj::Refused { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
            StateProj::Waiting { future } => future.as_mut().poll(cx),
        }
    }
}
