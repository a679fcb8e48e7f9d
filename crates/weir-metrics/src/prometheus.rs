//! A [`Recorder`] that keeps Prometheus series and renders them in the text format.

use crate::histogram::{
    Histogram, DURATION_BUCKETS, FIRST_TOKEN_BUCKETS, INTER_TOKEN_BUCKETS, OVERHEAD_BUCKETS,
    TOKENS_PER_SECOND_BUCKETS,
};
use crate::recorder::{Labels, Outcome, Phase, Recorder, Report};
use std::collections::HashMap;
use std::fmt::Write;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// The most label sets kept; past it, new ones are counted under `route="other"` (labels are
/// configured names, so only a config with thousands of routes gets there).
const MAX_SERIES: usize = 10_000;

/// Every series of one label set.
#[derive(Debug)]
pub struct Series {
    labels: Labels,
    active: AtomicI64,
    /// Requests by status and outcome: a few pairs, searched in order.
    requests: Mutex<Vec<((u16, Outcome), u64)>>,
    duration: Histogram,
    first_token: Histogram,
    inter_token: Histogram,
    stream_duration: Histogram,
    tokens_per_second: Histogram,
    overhead: Histogram,
    tokens_in: AtomicU64,
    tokens_out: AtomicU64,
    /// In nano-dollars, to add without a float race.
    cost_nanos: AtomicU64,
    retries: AtomicU64,
}

impl Series {
    fn new(labels: Labels) -> Self {
        Self {
            labels,
            active: AtomicI64::new(0),
            requests: Mutex::new(Vec::new()),
            duration: Histogram::new(DURATION_BUCKETS),
            first_token: Histogram::new(FIRST_TOKEN_BUCKETS),
            inter_token: Histogram::new(INTER_TOKEN_BUCKETS),
            stream_duration: Histogram::new(DURATION_BUCKETS),
            tokens_per_second: Histogram::new(TOKENS_PER_SECOND_BUCKETS),
            overhead: Histogram::new(OVERHEAD_BUCKETS),
            tokens_in: AtomicU64::new(0),
            tokens_out: AtomicU64::new(0),
            cost_nanos: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        }
    }
}

/// Picks one histogram of a series.
type PickHistogram = fn(&Series) -> &Histogram;
/// Reads one value of a series.
type PickValue = fn(&Series) -> f64;

type FailoverKey = (Arc<str>, Arc<str>, Arc<str>, Phase);

/// Prometheus series for the exchanges a [`Metrics`](crate::Metrics) layer observes.
/// [`render`](PrometheusRecorder::render) writes them in the text exposition format.
#[derive(Debug, Default)]
pub struct PrometheusRecorder {
    series: RwLock<HashMap<Labels, Arc<Series>, BuildHasherDefault<FxHasher>>>,
    failovers: Mutex<HashMap<FailoverKey, u64>>,
}

/// A fast hash for label sets (configured names only: nothing for a client to collide).
#[derive(Default)]
struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    fn write_u8(&mut self, byte: u8) {
        self.0 = (self.0.rotate_left(5) ^ u64::from(byte)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl PrometheusRecorder {
    /// No series yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn series(&self, labels: &Labels) -> Arc<Series> {
        if let Some(s) = self.series.read().expect("series lock").get(labels) {
            return s.clone();
        }
        let mut all = self.series.write().expect("series lock");
        let key = if all.len() >= MAX_SERIES && !all.contains_key(labels) {
            Labels::new("other", "other", "other")
        } else {
            labels.clone()
        };
        all.entry(key.clone())
            .or_insert_with(|| Arc::new(Series::new(key)))
            .clone()
    }

    /// Appends every family, with `# HELP` and `# TYPE`, to `out`.
    pub fn render(&self, out: &mut String) {
        let mut series: Vec<(Labels, Arc<Series>)> = self
            .series
            .read()
            .expect("series lock")
            .iter()
            .map(|(l, s)| (l.clone(), s.clone()))
            .collect();
        series.sort_by(|a, b| {
            (&a.0.route, &a.0.provider, &a.0.model).cmp(&(&b.0.route, &b.0.provider, &b.0.model))
        });
        let label = |l: &Labels| {
            format!(
                "route=\"{}\",provider=\"{}\",model=\"{}\"",
                escape_label(&l.route),
                escape_label(&l.provider),
                escape_label(&l.model)
            )
        };
        head(out, "weir_requests_total", "counter", "Requests by route, provider, model, status and outcome (ok, rescued, client_error, rate_limited, upstream_error, truncated, cancelled).");
        for (l, s) in &series {
            let mut requests: Vec<_> = s.requests.lock().expect("requests lock").clone();
            requests.sort_by_key(|((status, outcome), _)| (*status, outcome.as_str()));
            for ((status, outcome), n) in requests {
                let _ = writeln!(
                    out,
                    "weir_requests_total{{{},status=\"{status}\",outcome=\"{}\"}} {n}",
                    label(l),
                    outcome.as_str()
                );
            }
        }
        let histograms: [(&str, &str, PickHistogram); 6] = [
            (
                "weir_request_duration_seconds",
                "From a request's arrival to the end of its answer.",
                |s| &s.duration,
            ),
            (
                "weir_time_to_first_token_seconds",
                "From a request's arrival to the first content its client received.",
                |s| &s.first_token,
            ),
            (
                "weir_inter_token_seconds",
                "Gaps between the chunks of a streamed answer.",
                |s| &s.inter_token,
            ),
            (
                "weir_stream_duration_seconds",
                "From the first token its client received to the end of the answer.",
                |s| &s.stream_duration,
            ),
            (
                "weir_tokens_per_second",
                "Answer tokens per second after the first token.",
                |s| &s.tokens_per_second,
            ),
            (
                "weir_overhead_seconds",
                "Time spent in weir before the first upstream request went out.",
                |s| &s.overhead,
            ),
        ];
        for (name, help, pick) in histograms {
            head(out, name, "histogram", help);
            for (l, s) in &series {
                histogram(out, name, &label(l), pick(s));
            }
        }
        head(out, "weir_tokens_total", "counter", "Tokens by direction: from the answers' usage, else estimated (prompt estimate, one per streamed chunk).");
        for (l, s) in &series {
            for (direction, n) in [("input", &s.tokens_in), ("output", &s.tokens_out)] {
                let _ = writeln!(
                    out,
                    "weir_tokens_total{{{},direction=\"{direction}\"}} {}",
                    label(l),
                    n.load(Ordering::Relaxed)
                );
            }
        }
        let counters: [(&str, &str, &str, PickValue); 3] = [
            (
                "weir_cost_usd_total",
                "counter",
                "What the tokens cost in USD, from the configured prices.",
                |s| s.cost_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            ),
            (
                "weir_active_streams",
                "gauge",
                "Answers being sent now.",
                |s| s.active.load(Ordering::Relaxed) as f64,
            ),
            (
                "weir_retries_total",
                "counter",
                "Upstream attempts beyond the first.",
                |s| s.retries.load(Ordering::Relaxed) as f64,
            ),
        ];
        for (name, kind, help, value) in counters {
            head(out, name, kind, help);
            for (l, s) in &series {
                let _ = writeln!(out, "{name}{{{}}} {}", label(l), value(s));
            }
        }
        head(
            out,
            "weir_failovers_total",
            "counter",
            "Requests moved from one provider to another, before or after their first token.",
        );
        let mut failovers: Vec<_> = self
            .failovers
            .lock()
            .expect("failovers lock")
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        failovers.sort_by(|a, b| {
            (&a.0 .0, &a.0 .1, &a.0 .2, a.0 .3.as_str()).cmp(&(
                &b.0 .0,
                &b.0 .1,
                &b.0 .2,
                b.0 .3.as_str(),
            ))
        });
        for ((route, from, to, phase), n) in failovers {
            let _ = writeln!(
                out,
                "weir_failovers_total{{route=\"{}\",from=\"{}\",to=\"{}\",phase=\"{}\"}} {n}",
                escape_label(&route),
                escape_label(&from),
                escape_label(&to),
                phase.as_str()
            );
        }
    }
}

impl Recorder for PrometheusRecorder {
    type Stream = Arc<Series>;

    fn open(&self, labels: &Labels) -> Arc<Series> {
        let series = self.series(labels);
        series.active.fetch_add(1, Ordering::Relaxed);
        series
    }

    fn close(&self, opened: Arc<Series>, report: &Report<'_>) {
        opened.active.fetch_sub(1, Ordering::Relaxed);
        let labels_moved = opened.active.load(Ordering::Relaxed) < 0;
        debug_assert!(!labels_moved, "active streams below zero");
        // A rescued stream ends on another provider: its series, from here on.
        let series = if opened.labels == *report.labels {
            opened
        } else {
            self.series(report.labels)
        };
        {
            let key = (report.status.as_u16(), report.outcome);
            let mut requests = series.requests.lock().expect("requests lock");
            match requests.iter_mut().find(|(k, _)| *k == key) {
                Some((_, n)) => *n += 1,
                None => requests.push((key, 1)),
            }
        }
        series.duration.observe(report.duration.as_secs_f64());
        if let Some(first) = report.first_token {
            series.first_token.observe(first.as_secs_f64());
        }
        series.inter_token.merge(report.gaps);
        if let Some(streaming) = report.stream_duration() {
            series.stream_duration.observe(streaming.as_secs_f64());
        }
        if let Some(tps) = report.tokens_per_second() {
            series.tokens_per_second.observe(tps);
        }
        if let Some(overhead) = report.overhead {
            series.overhead.observe(overhead.as_secs_f64());
        }
        series
            .tokens_in
            .fetch_add(u64::from(report.tokens.input), Ordering::Relaxed);
        series
            .tokens_out
            .fetch_add(u64::from(report.tokens.output), Ordering::Relaxed);
        if let Some(cost) = report.cost_usd {
            series
                .cost_nanos
                .fetch_add((cost * 1e9).round() as u64, Ordering::Relaxed);
        }
        if report.attempts > 1 {
            series
                .retries
                .fetch_add(u64::from(report.attempts - 1), Ordering::Relaxed);
        }
        if !report.failovers.is_empty() {
            let mut failovers = self.failovers.lock().expect("failovers lock");
            for f in report.failovers {
                *failovers
                    .entry((
                        report.labels.route.clone(),
                        f.from.clone(),
                        f.to.clone(),
                        f.phase,
                    ))
                    .or_default() += 1;
            }
        }
    }
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    let (bounds, cumulative, sum) = h.snapshot();
    for (bound, n) in bounds.iter().zip(&cumulative) {
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {n}");
    }
    let total = cumulative.last().copied().unwrap_or(0);
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {total}");
    let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
    let _ = writeln!(out, "{name}_count{{{labels}}} {total}");
}

/// A label value as the Prometheus text format wants it (backslash, quote and newline
/// escaped): for pages that add series of their own beside the recorder's.
pub fn escape_label(value: &str) -> std::borrow::Cow<'_, str> {
    if value.contains(['\\', '"', '\n']) {
        value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .into()
    } else {
        value.into()
    }
}
