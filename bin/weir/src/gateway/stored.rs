//! Stored responses: OpenAI's Responses API keeps each response at the provider that made it,
//! so `GET` and `DELETE /v1/responses/{id}` (and `.../input_items`, `.../cancel`) must go
//! there. weir remembers which provider made each response it passed on (and for which client
//! key), in memory and bounded: the oldest are forgotten first. A response weir does not know
//! (made through another replica, before a restart, or forgotten) goes to the one provider
//! that speaks the Responses API when there is only one, and is refused clearly otherwise.

use super::answer::ResponseBody;
use super::errors::{error, shorten};
use super::judge::{buffered, client_failure};
use super::provider::Upstream;
use crate::config::ProviderApi;
use crate::headers;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::Full;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tower::ServiceExt;
use weir_llm::{ErrorBody, ErrorKind};

/// The largest stored response (or list of input items) weir passes on.
const STORED_LIMIT: usize = 16 << 20;

/// How many response ids are remembered.
const REMEMBERED: usize = 65_536;

/// Who made a stored response.
#[derive(Clone, Debug)]
pub(crate) struct Owner {
    pub(crate) provider: Arc<str>,
    /// The client key that made it (`None` without authentication).
    pub(crate) key: Option<Arc<str>>,
}

/// Which provider made each response weir passed on. See the [module docs](self).
#[derive(Debug, Default)]
pub(crate) struct Owners {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_id: HashMap<Box<str>, Owner>,
    order: VecDeque<Box<str>>,
}

impl Owners {
    /// `id` was made by `owner`.
    pub(crate) fn record(&self, id: &str, owner: Owner) {
        let mut inner = self.inner.lock().expect("owners lock");
        if inner.by_id.insert(id.into(), owner).is_none() {
            inner.order.push_back(id.into());
        }
        while inner.order.len() > REMEMBERED {
            if let Some(old) = inner.order.pop_front() {
                inner.by_id.remove(&old);
            }
        }
    }

    /// Who made `id`, if weir remembers.
    pub(crate) fn get(&self, id: &str) -> Option<Owner> {
        self.inner
            .lock()
            .expect("owners lock")
            .by_id
            .get(id)
            .cloned()
    }

    /// `id` was deleted.
    pub(crate) fn forget(&self, id: &str) {
        self.inner.lock().expect("owners lock").by_id.remove(id);
    }
}

/// A request for a stored response, as the classifier read it.
#[derive(Clone, Debug)]
pub(crate) struct StoredRequest {
    pub(crate) method: Method,
    /// The path after `/v1/responses/`, with its query.
    pub(crate) rest: String,
    /// The client's headers that may go upstream.
    pub(crate) headers: HeaderMap,
    /// The client key's name.
    pub(crate) key: Option<Arc<str>>,
}

impl StoredRequest {
    /// The response id the path names.
    fn id(&self) -> &str {
        let path = self.rest.split('?').next().unwrap_or_default();
        path.split('/').next().unwrap_or_default()
    }
}

/// Answers a request for a stored response from the provider that made it.
pub(crate) async fn answer(
    request: StoredRequest,
    owners: &Owners,
    upstreams: &[Arc<Upstream>],
) -> Response<ResponseBody> {
    let id = request.id().to_owned();
    let serving: Vec<&Arc<Upstream>> = upstreams
        .iter()
        .filter(|u| u.config.api == ProviderApi::OpenAi)
        .collect();
    let upstream = match owners.get(&id) {
        // Another key's response is as unknown as one that does not exist.
        Some(owner) if owner.key == request.key => {
            upstreams.iter().find(|u| *u.name == *owner.provider)
        }
        Some(_) => None,
        None if serving.len() == 1 => Some(serving[0]),
        None => None,
    };
    let Some(upstream) = upstream else {
        return error(
            ErrorBody::new(
                ErrorKind::NotFound,
                format!(
                    "weir does not know which provider stored the response `{}`: it was made through another weir instance, before a restart, by another key, or too long ago. Ask the provider that made it.",
                    shorten(&id, 128)
                ),
            )
            .code("response_not_found"),
        );
    };
    let base = upstream.uri(weir_llm::Endpoint::Responses).to_string();
    let uri = format!("{base}/{}", request.rest);
    let mut outgoing = Request::new(Full::new(Bytes::new()));
    *outgoing.method_mut() = request.method.clone();
    match uri.parse() {
        Ok(uri) => *outgoing.uri_mut() = uri,
        Err(_) => {
            return error(ErrorBody::new(
                ErrorKind::InvalidRequest,
                "The response id is not valid in a URL.",
            ))
        }
    }
    *outgoing.headers_mut() =
        headers::upstream_request_headers(&request.headers, &upstream.headers);
    let answer = match upstream.client.clone().oneshot(outgoing).await {
        Ok(response) => buffered(response, upstream, STORED_LIMIT).await.0,
        Err(e) => client_failure(&weir_breaker::BoxError::from(e), upstream).0,
    };
    if request.method == Method::DELETE && answer.status().is_success() {
        owners.forget(&id);
    }
    answer
}
