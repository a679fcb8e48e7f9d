//! Active health probes, and the providers page of the admin listener.
//!
//! One task per provider probes on its interval (`GET {base}/models`, or a one-token chat
//! completion), around the breaker, with a timeout, and reports to the provider's breaker: a
//! provider that fails `unhealthy_after` probes in a row is taken out, and one that answers
//! `healthy_after` probes is put back, traffic or not. One probe at a time per provider, so
//! probe traffic is bounded; the tasks end when weir drains.

use crate::config::Probe;
use crate::gateway::{Gateway, Upstream};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::ServiceExt;
use weir_llm::Endpoint;

/// Starts the probe task of a provider, if it has probes on.
pub(crate) fn spawn_probe(upstream: &Arc<Upstream>) -> Option<JoinHandle<()>> {
    (upstream.health.probe != Probe::Off).then(|| tokio::spawn(probe_loop(upstream.clone())))
}

async fn probe_loop(upstream: Arc<Upstream>) {
    let interval = upstream.health.interval;
    let mut next = Instant::now() + interval;
    loop {
        *upstream.next_probe.lock().expect("probe lock") = Some(next);
        tokio::time::sleep_until(next).await;
        let result = tokio::time::timeout(upstream.health.timeout, probe_once(&upstream)).await;
        match result {
            Ok(Ok(())) => upstream.breaker.probe_result(true, None),
            Ok(Err(why)) => {
                tracing::debug!(provider = %upstream.name, %why, "health probe failed");
                upstream.breaker.probe_result(false, Some(&why));
            }
            Err(_) => upstream
                .breaker
                .probe_result(false, Some("health probe timed out")),
        }
        // The next probe is an interval after this one was due, never in a burst.
        next = (next + interval).max(Instant::now());
    }
}

async fn probe_once(upstream: &Upstream) -> Result<(), String> {
    let mut request = match &upstream.health.probe {
        Probe::Completion(model) => {
            let body = serde_json::json!({
                "model": model,
                "max_tokens": 1,
                "messages": [{"role": "user", "content": "ping"}],
            });
            let mut request = Request::new(Full::new(Bytes::from(body.to_string())));
            *request.method_mut() = Method::POST;
            *request.uri_mut() = upstream.uri(Endpoint::ChatCompletions);
            request.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            request
        }
        Probe::Models | Probe::Off => {
            let mut request = Request::new(Full::new(Bytes::new()));
            *request.uri_mut() = upstream.models_uri.clone();
            request
        }
    };
    for (name, value) in &upstream.headers {
        request.headers_mut().insert(name.clone(), value.clone());
    }
    let response = upstream
        .client
        .clone()
        .oneshot(request)
        .await
        .map_err(|e| format!("health probe: {e}"))?;
    let status = response.status();
    // Read the (small) answer to its end, so the connection goes back to the pool.
    let _ = response.into_body().collect().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("health probe answered {status}"))
    }
}

/// `GET /admin/providers`: each provider's breaker and probe state, as JSON.
pub(crate) fn providers_json(gateway: &Gateway) -> Bytes {
    let now = Instant::now();
    let providers: Vec<serde_json::Value> = gateway
        .upstreams()
        .iter()
        .map(|u| {
            let s = u.breaker.snapshot();
            let next_probe = *u.next_probe.lock().expect("probe lock");
            serde_json::json!({
                "name": &*u.name,
                "state": s.state.as_str(),
                "failure_rate": s.failure_rate,
                "calls_in_window": s.calls,
                "transitions": s.transitions,
                "last_error": s.last_failure,
                "retry_after_seconds": s.retry_after.map(|d| d.as_secs_f64()),
                "health_probe": match &u.health.probe {
                    Probe::Off => "off",
                    Probe::Models => "models",
                    Probe::Completion(_) => "completion",
                },
                "next_probe_in_seconds": next_probe.map(|at| at.saturating_duration_since(now).as_secs_f64()),
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({ "providers": providers }))
        .expect("JSON values serialize")
        .into()
}

/// `GET /metrics` (the breaker families, until the metrics layer adds the rest): Prometheus
/// text format. Labels are configured provider names only.
pub(crate) fn breaker_metrics(gateway: &Gateway) -> Bytes {
    let snapshots: Vec<_> = gateway
        .upstreams()
        .iter()
        .map(|u| (u, u.breaker.snapshot()))
        .collect();
    let mut out = String::with_capacity(1024);
    family(
        &mut out,
        "weir_breaker_state",
        "gauge",
        "Circuit breaker state per provider: 0 closed, 1 half-open, 2 open.",
        snapshots.iter().map(|(u, s)| {
            let state = match s.state {
                weir_breaker::State::Closed => 0.0,
                weir_breaker::State::HalfOpen => 1.0,
                weir_breaker::State::Open { .. } => 2.0,
            };
            (&*u.name, state)
        }),
    );
    family(
        &mut out,
        "weir_breaker_transitions_total",
        "counter",
        "Circuit breaker state changes per provider.",
        snapshots
            .iter()
            .map(|(u, s)| (&*u.name, s.transitions as f64)),
    );
    family(
        &mut out,
        "weir_breaker_failure_rate",
        "gauge",
        "Failure rate over the breaker window per provider.",
        snapshots.iter().map(|(u, s)| (&*u.name, s.failure_rate)),
    );
    family(
        &mut out,
        "weir_malformed_events_total",
        "counter",
        "Malformed stream events dropped per provider.",
        snapshots.iter().map(|(u, _)| {
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
