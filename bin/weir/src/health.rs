//! Active health probes, and the providers page of the admin listener.
//!
//! Two kinds of probe, each on the provider's `interval`, around the breakers, with a timeout:
//!
//! - one per provider asks whether its endpoint answers (`GET {base}/models`, or a one-token
//!   completion with `probe = "completion"`): any answer but a 5xx is healthy, a 5xx or a
//!   failed connection is not. It reports to the endpoint breaker, shared by the provider's
//!   models, so it can take a provider out but never vouches for one model;
//! - one per deployment (a model a route targets), only while that model's breaker is open or
//!   half-open: a one-token chat completion to that model, healthy when it answers 2xx. It is
//!   what closes the model's breaker, so a model is back within one interval of recovering.
//!
//! A probe that fails because the connection closed under it (a pooled connection the
//! provider had closed) is tried once more on a fresh connection before it counts. One probe
//! at a time per provider and per deployment; the tasks end when weir drains.

use crate::config::Probe;
use crate::gateway::{Deployment, Gateway, Upstream};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use std::sync::Arc;
use std::sync::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::ServiceExt;
use weir_breaker::{Breaker, State};
use weir_llm::Endpoint;

/// Starts the endpoint probe task of a provider, if it has probes on.
pub(crate) fn spawn_probe(upstream: &Arc<Upstream>) -> Option<JoinHandle<()>> {
    (upstream.health.probe != Probe::Off).then(|| {
        let upstream = upstream.clone();
        tokio::spawn(async move {
            probe_loop(&upstream.endpoint, &upstream.next_probe, &upstream, || {
                let upstream = upstream.clone();
                async move { endpoint_probe(&upstream).await }
            })
            .await
        })
    })
}

/// Starts the probe task of a deployment, if its provider has probes on: it probes only while
/// the model's breaker is not closed.
pub(crate) fn spawn_model_probe(deployment: &Arc<Deployment>) -> Option<JoinHandle<()>> {
    let upstream = deployment.upstream.clone();
    (upstream.health.probe != Probe::Off).then(|| {
        let deployment = deployment.clone();
        tokio::spawn(async move {
            let d = &deployment;
            probe_loop(&d.breaker, &d.next_probe, &d.upstream, || async move {
                if d.breaker.state() == State::Closed {
                    return None;
                }
                let request = completion(&d.upstream, &d.model);
                Some(send(&d.upstream, request, |s| s.is_success()).await)
            })
            .await
        })
    })
}

/// How often a replica reads the cool-downs the others published.
pub(crate) const COOL_DOWN_READS: std::time::Duration = std::time::Duration::from_millis(250);

/// With limits shared through Redis: every `every`, the 429 cool-downs any replica published
/// (one pipelined read for all models), applied to this replica's models, so that a model
/// one replica saw answer 429 with `Retry-After` is skipped by all. Ends with the gateway
/// holder.
pub(crate) async fn shared_cool_downs(
    current: std::sync::Weak<crate::current::Current>,
    every: std::time::Duration,
) {
    let mut names: Vec<String> = Vec::new();
    loop {
        tokio::time::sleep(every).await;
        let Some(current) = current.upgrade() else {
            return;
        };
        let gateway = current.get();
        drop(current);
        let Some(store) = gateway.shared_store() else {
            continue;
        };
        let deployments = gateway.deployments();
        names.clear();
        names.extend(
            deployments
                .iter()
                .map(|d| crate::gateway::cool_down_name(&d.upstream.name, &d.model)),
        );
        if let Some(waits) = store.cool_downs(&names).await {
            for (d, wait) in deployments.iter().zip(waits) {
                if let Some(wait) = wait {
                    d.breaker.cool_down(wait);
                }
            }
        }
    }
}

/// Probes every interval and reports to `breaker`; `probe` answers `None` when there is
/// nothing to probe this time.
async fn probe_loop<F, P>(
    breaker: &Breaker,
    next_probe: &Mutex<Option<Instant>>,
    upstream: &Upstream,
    probe: P,
) where
    P: Fn() -> F,
    F: std::future::Future<Output = Option<Result<(), String>>>,
{
    let interval = upstream.health.interval;
    let mut next = Instant::now() + interval;
    loop {
        *next_probe.lock().expect("probe lock") = Some(next);
        tokio::time::sleep_until(next).await;
        match tokio::time::timeout(upstream.health.timeout, probe()).await {
            Ok(None) => {}
            Ok(Some(Ok(()))) => breaker.probe_result(true, None),
            Ok(Some(Err(why))) => {
                tracing::debug!(provider = %upstream.name, %why, "health probe failed");
                breaker.probe_result(false, Some(&why));
            }
            Err(_) => breaker.probe_result(false, Some("health probe timed out")),
        }
        // The next probe is an interval after this one was due, never in a burst.
        next = (next + interval).max(Instant::now());
    }
}

/// Whether the provider's endpoint answers at all.
async fn endpoint_probe(upstream: &Upstream) -> Option<Result<(), String>> {
    let request = match &upstream.health.probe {
        Probe::Completion(model) => completion(upstream, model),
        Probe::Models | Probe::Off => {
            let mut request = Request::new(Full::new(Bytes::new()));
            *request.uri_mut() = upstream.models_uri.clone();
            request
        }
    };
    // A provider-wide outage answers 5xx; a missing `/models` (404) or a key it refuses
    // still shows an endpoint that answers.
    Some(send(upstream, request, |s| !s.is_server_error()).await)
}

/// A one-token chat completion (or message, on an Anthropic provider) to `model`.
fn completion(upstream: &Upstream, model: &str) -> Request<Full<Bytes>> {
    let body = serde_json::json!({
        "model": model,
        "max_tokens": 1,
        "messages": [{"role": "user", "content": "ping"}],
    });
    let mut request = Request::new(Full::new(Bytes::from(body.to_string())));
    *request.method_mut() = Method::POST;
    request.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // The same body is a one-token message to an Anthropic provider.
    let endpoint = match upstream.config.api {
        crate::config::ProviderApi::OpenAi => Endpoint::ChatCompletions,
        crate::config::ProviderApi::Anthropic => {
            request.headers_mut().insert(
                http::HeaderName::from_static("anthropic-version"),
                upstream.config.anthropic_version.clone(),
            );
            Endpoint::Messages
        }
    };
    *request.uri_mut() = upstream.uri(endpoint);
    request
}

/// Sends a probe with the provider's headers; healthy when `healthy` says so of its status.
/// A connection that closed under it is tried once more, fresh.
async fn send(
    upstream: &Upstream,
    mut request: Request<Full<Bytes>>,
    healthy: fn(http::StatusCode) -> bool,
) -> Result<(), String> {
    for (name, value) in &upstream.headers {
        request.headers_mut().insert(name.clone(), value.clone());
    }
    let again = {
        let mut again = Request::new(request.body().clone());
        *again.method_mut() = request.method().clone();
        *again.uri_mut() = request.uri().clone();
        *again.headers_mut() = request.headers().clone();
        again.extensions_mut().insert(weir_client::FreshConnection);
        again
    };
    let response = match upstream.client.clone().oneshot(request).await {
        Err(e) if e.is_closed_before_response() => {
            tracing::debug!(provider = %upstream.name, error = %e, "health probe: the connection closed under it; once more on a fresh one");
            upstream.client.clone().oneshot(again).await
        }
        other => other,
    }
    .map_err(|e| format!("health probe: {e}"))?;
    let status = response.status();
    // Read the (small) answer to its end, so the connection goes back to the pool.
    let _ = response.into_body().collect().await;
    if healthy(status) {
        Ok(())
    } else {
        Err(format!("health probe answered {status}"))
    }
}

/// `GET /admin/providers`: each provider's endpoint breaker and probe, and each of its
/// models' breakers, as JSON.
pub(crate) fn providers_json(gateway: &Gateway) -> Bytes {
    let now = Instant::now();
    let next = |at: &Mutex<Option<Instant>>| {
        at.lock()
            .expect("probe lock")
            .map(|at| at.saturating_duration_since(now).as_secs_f64())
    };
    let breaker = |s: weir_breaker::Snapshot| {
        serde_json::json!({
            "state": s.state.as_str(),
            "failure_rate": s.failure_rate,
            "calls_in_window": s.calls,
            "transitions": s.transitions,
            "last_error": s.last_failure,
            "retry_after_seconds": s.retry_after.map(|d| d.as_secs_f64()),
        })
    };
    let providers: Vec<serde_json::Value> = gateway
        .upstreams()
        .iter()
        .map(|u| {
            let models: Vec<serde_json::Value> = gateway
                .deployments()
                .iter()
                .filter(|d| Arc::ptr_eq(&d.upstream, u))
                .map(|d| {
                    let mut model = breaker(d.breaker.snapshot());
                    model["model"] = serde_json::Value::from(&*d.model);
                    if d.breaker.state() != State::Closed {
                        model["next_probe_in_seconds"] = next(&d.next_probe).into();
                    }
                    model
                })
                .collect();
            let mut provider = breaker(u.endpoint.snapshot());
            provider["name"] = serde_json::Value::from(&*u.name);
            provider["health_probe"] = match &u.health.probe {
                Probe::Off => "off",
                Probe::Models => "models",
                Probe::Completion(_) => "completion",
            }
            .into();
            provider["next_probe_in_seconds"] = next(&u.next_probe).into();
            provider["models"] = models.into();
            provider
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({ "providers": providers }))
        .expect("JSON values serialize")
        .into()
}

/// `GET /metrics` (the breaker families, until the metrics layer adds the rest): Prometheus
/// text format. Labels are configured names only: the provider's, and the model's as the
/// config sends it upstream.
pub(crate) fn breaker_metrics(gateway: &Gateway) -> Bytes {
    use std::fmt::Write;
    let mut out = String::with_capacity(1024);
    let state = |s: &weir_breaker::Snapshot| match s.state {
        State::Closed => 0.0,
        State::HalfOpen => 1.0,
        State::Open { .. } => 2.0,
    };
    let models: Vec<_> = gateway
        .deployments()
        .iter()
        .map(|d| {
            let labels = format!(
                "provider=\"{}\",model=\"{}\"",
                d.upstream.name,
                weir_metrics::escape_label(&d.model)
            );
            (labels, d.breaker.snapshot())
        })
        .collect();
    for (name, kind, help, value) in [
        (
            "weir_breaker_state",
            "gauge",
            "Circuit breaker state per model of a provider: 0 closed, 1 half-open, 2 open.",
            &(|s: &weir_breaker::Snapshot| state(s)) as &dyn Fn(&weir_breaker::Snapshot) -> f64,
        ),
        (
            "weir_breaker_transitions_total",
            "counter",
            "Circuit breaker state changes per model of a provider.",
            &|s| s.transitions as f64,
        ),
        (
            "weir_breaker_failure_rate",
            "gauge",
            "Failure rate over the breaker window per model of a provider.",
            &|s| s.failure_rate,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, snapshot) in &models {
            let _ = writeln!(out, "{name}{{{labels}}} {}", value(snapshot));
        }
    }
    let endpoints: Vec<_> = gateway
        .upstreams()
        .iter()
        .map(|u| (u, u.endpoint.snapshot()))
        .collect();
    family(
        &mut out,
        "weir_endpoint_breaker_state",
        "gauge",
        "The provider's endpoint breaker (failed connections, for all its models): 0 closed, 1 half-open, 2 open.",
        endpoints.iter().map(|(u, s)| (&*u.name, state(s))),
    );
    family(
        &mut out,
        "weir_endpoint_breaker_transitions_total",
        "counter",
        "State changes of the provider's endpoint breaker.",
        endpoints
            .iter()
            .map(|(u, s)| (&*u.name, s.transitions as f64)),
    );
    family(
        &mut out,
        "weir_malformed_events_total",
        "counter",
        "Malformed stream events dropped per provider.",
        endpoints.iter().map(|(u, _)| {
            let dropped = u.malformed.load(std::sync::atomic::Ordering::Relaxed);
            (&*u.name, dropped as f64)
        }),
    );
    let pools: Vec<_> = gateway
        .upstreams()
        .iter()
        .map(|u| (u, u.client.pool_snapshot()))
        .collect();
    for (name, help, value) in [
        (
            "weir_upstream_pool_open",
            "Open HTTP/1.1 upstream connections per provider.",
            (|s: &weir_client::PoolSnapshot| s.open) as fn(&weir_client::PoolSnapshot) -> usize,
        ),
        (
            "weir_upstream_pool_idle",
            "Idle pooled HTTP/1.1 upstream connections per provider.",
            |s| s.idle,
        ),
        (
            "weir_upstream_pool_in_use",
            "HTTP/1.1 upstream connections carrying a request per provider.",
            |s| s.in_use,
        ),
        (
            "weir_upstream_pool_waiting",
            "Requests waiting for an upstream connection (at max_connections) per provider.",
            |s| s.waiting,
        ),
    ] {
        family(
            &mut out,
            name,
            "gauge",
            help,
            pools.iter().map(|(u, s)| (&*u.name, value(s) as f64)),
        );
    }
    backpressure_metrics(gateway, &mut out);
    ratelimit_metrics(gateway, &mut out);
    out.into()
}

/// The concurrency limits: the server-wide one (`scope="server"`) and each provider's
/// (`scope="provider"`). A provider without `max_concurrency` reports only what is in flight.
fn backpressure_metrics(gateway: &Gateway, out: &mut String) {
    use std::fmt::Write;
    let mut limits: Vec<(String, bool, weir_backpressure::Snapshot)> = Vec::new();
    if let Some(limit) = gateway.limit() {
        limits.push(("scope=\"server\"".to_owned(), true, limit.snapshot()));
    }
    for u in gateway.upstreams() {
        limits.push((
            format!("scope=\"provider\",provider=\"{}\"", u.name),
            u.limited,
            u.limit.snapshot(),
        ));
    }
    let mut family = |name: &str,
                      kind: &str,
                      help: &str,
                      all: bool,
                      value: &dyn Fn(&weir_backpressure::Snapshot) -> f64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, limited, snapshot) in &limits {
            if all || *limited {
                let _ = writeln!(out, "{name}{{{labels}}} {}", value(snapshot));
            }
        }
    };
    family(
        "weir_in_flight",
        "gauge",
        "Requests in flight, streams counted to their end.",
        true,
        &|s| s.in_flight as f64,
    );
    family(
        "weir_concurrency_limit",
        "gauge",
        "Requests allowed in flight at once (it moves under an adaptive limit).",
        false,
        &|s| s.limit as f64,
    );
    family(
        "weir_queued",
        "gauge",
        "Requests waiting for a slot.",
        false,
        &|s| s.queued as f64,
    );
    let _ = writeln!(
        out,
        "# HELP weir_shed_total Requests refused with a 503 because the limit was reached."
    );
    let _ = writeln!(out, "# TYPE weir_shed_total counter");
    for (labels, limited, s) in &limits {
        if *limited {
            let _ = writeln!(
                out,
                "weir_shed_total{{{labels},reason=\"queue_full\"}} {}",
                s.shed_queue_full
            );
            let _ = writeln!(
                out,
                "weir_shed_total{{{labels},reason=\"timed_out\"}} {}",
                s.shed_timed_out
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP weir_queue_wait_seconds How long requests waited for a slot (or to be refused)."
    );
    let _ = writeln!(out, "# TYPE weir_queue_wait_seconds histogram");
    for (labels, limited, s) in &limits {
        if !*limited {
            continue;
        }
        let mut cumulative = 0;
        for (bound, count) in weir_backpressure::WAIT_BUCKETS.iter().zip(&s.wait_buckets) {
            cumulative += count;
            let _ = writeln!(
                out,
                "weir_queue_wait_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += s.wait_buckets.last().copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "weir_queue_wait_seconds_bucket{{{labels},le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            out,
            "weir_queue_wait_seconds_sum{{{labels}}} {}",
            s.wait_seconds_sum
        );
        let _ = writeln!(
            out,
            "weir_queue_wait_seconds_count{{{labels}}} {cumulative}"
        );
    }
}

/// The rate limiters: labelled by scope (`server`, `route`, `key`, `provider`) and the
/// configured name (the route's model, the key's name, never the key itself).
fn ratelimit_metrics(gateway: &Gateway, out: &mut String) {
    use std::fmt::Write;
    let limiters: Vec<_> = gateway
        .rate_limiters()
        .map(|(scope, name, l)| (scope, name.to_owned(), l.counts()))
        .chain(gateway.upstreams().iter().filter_map(|u| {
            let counts = u.rate_limiter.as_ref()?.counts();
            Some(("provider", u.name.to_string(), counts))
        }))
        .collect();
    let _ = writeln!(
        out,
        "# HELP weir_ratelimit_rejections_total Requests refused (429) by a rate limit, by quota."
    );
    let _ = writeln!(out, "# TYPE weir_ratelimit_rejections_total counter");
    for (scope, name, c) in &limiters {
        let _ = writeln!(out, "weir_ratelimit_rejections_total{{scope=\"{scope}\",name=\"{name}\",reason=\"requests\"}} {}", c.refused_requests);
        let _ = writeln!(out, "weir_ratelimit_rejections_total{{scope=\"{scope}\",name=\"{name}\",reason=\"tokens\"}} {}", c.refused_tokens);
    }
    let _ = writeln!(
        out,
        "# HELP weir_ratelimit_admitted_total Requests a rate limit let through."
    );
    let _ = writeln!(out, "# TYPE weir_ratelimit_admitted_total counter");
    for (scope, name, c) in &limiters {
        let _ = writeln!(
            out,
            "weir_ratelimit_admitted_total{{scope=\"{scope}\",name=\"{name}\"}} {}",
            c.admitted
        );
    }
    let _ = writeln!(
        out,
        "# HELP weir_ratelimit_waits_total Requests that waited for a provider's rate limit."
    );
    let _ = writeln!(out, "# TYPE weir_ratelimit_waits_total counter");
    for (scope, name, c) in &limiters {
        let _ = writeln!(
            out,
            "weir_ratelimit_waits_total{{scope=\"{scope}\",name=\"{name}\"}} {}",
            c.waited
        );
    }
    if let Some(store) = gateway.shared_store() {
        let _ = writeln!(
            out,
            "# HELP weir_ratelimit_store_up Whether the shared rate-limit store (Redis) answered the last decision in time."
        );
        let _ = writeln!(out, "# TYPE weir_ratelimit_store_up gauge");
        let _ = writeln!(
            out,
            "weir_ratelimit_store_up{{store=\"redis\"}} {}",
            u8::from(!store.is_down())
        );
        let _ = writeln!(
            out,
            "# HELP weir_ratelimit_store_decisions_total Rate-limit decisions by who took them: redis, or this replica's share when Redis did not answer within the budget (fallback)."
        );
        let _ = writeln!(out, "# TYPE weir_ratelimit_store_decisions_total counter");
        let _ = writeln!(
            out,
            "weir_ratelimit_store_decisions_total{{store=\"redis\",by=\"redis\"}} {}",
            store.answered()
        );
        let _ = writeln!(
            out,
            "weir_ratelimit_store_decisions_total{{store=\"redis\",by=\"fallback\"}} {}",
            store.fallbacks()
        );
    }
}

/// One metric family with a `provider` label.
fn family<'a>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: impl Iterator<Item = (&'a str, f64)>,
) {
    use std::fmt::Write;
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (provider, value) in samples {
        let _ = writeln!(out, "{name}{{provider=\"{provider}\"}} {value}");
    }
}
