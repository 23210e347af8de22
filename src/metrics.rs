//! Prometheus metrics, all named `sessiongate_*`, served by the admin listener.
//!
//! Every series the request path touches is created at start and held as a plain
//! atomic handle, so recording a request takes no lock: no label lookup, no mutex
//! (the request-duration histograms are lock-free too, see [`AtomicHistogram`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{Method, StatusCode};
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::upstream::UpstreamFailure;

const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "other",
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Upper bounds in seconds, from 100 µs (a hit served from memory) to 30 s.
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0, 30.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    status_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

/// Cells per hot metric. Each worker thread takes one, so recording a request
/// touches cache lines no other core writes; a scrape sums them.
const SHARDS: usize = 8;

/// One cache line (or more) to itself, so neighbouring shards never share one.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Padded<T>(T);

/// This thread's shard, handed out round-robin on first use.
fn shard() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

/// A counter split into per-thread cells: `inc` is one relaxed add on a line
/// only this thread writes.
#[derive(Clone, Debug, Default)]
pub(crate) struct ShardedCounter {
    cells: std::sync::Arc<[Padded<AtomicU64>; SHARDS]>,
}

impl ShardedCounter {
    pub(crate) fn inc(&self) {
        self.cells[shard()].0.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.cells.iter().map(|c| c.0.load(Ordering::Relaxed)).sum()
    }
}

impl TypedMetric for ShardedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for ShardedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// A histogram whose `observe` is two relaxed atomic adds on this thread's cells
/// (a cheap-to-clone handle).
#[derive(Clone, Debug, Default)]
pub(crate) struct AtomicHistogram {
    inner: std::sync::Arc<[Padded<HistogramCells>; SHARDS]>,
}

#[derive(Debug, Default)]
struct HistogramCells {
    counts: [AtomicU64; BUCKETS.len() + 1],
    /// Sum in microseconds (integer, so it can be an atomic).
    sum_us: AtomicU64,
}

impl AtomicHistogram {
    pub(crate) fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(BUCKETS.len());
        let cells = &self.inner[shard()].0;
        cells.counts[i].fetch_add(1, Ordering::Relaxed);
        cells
            .sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut counts = [0u64; BUCKETS.len() + 1];
        let mut sum_us = 0u64;
        for cells in self.inner.iter() {
            for (total, c) in counts.iter_mut().zip(cells.0.counts.iter()) {
                *total += c.load(Ordering::Relaxed);
            }
            sum_us += cells.0.sum_us.load(Ordering::Relaxed);
        }
        let mut buckets: Vec<(f64, u64)> = BUCKETS
            .iter()
            .copied()
            .zip(counts.iter().copied())
            .collect();
        buckets.push((f64::INFINITY, counts[BUCKETS.len()]));
        let count = counts.iter().sum();
        let sum = sum_us as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Why a session cookie was not accepted.
#[derive(Clone, Copy, Debug)]
pub(crate) enum CookieRejection {
    /// Not `<id>.<tag>` in base64url.
    Malformed,
    /// Well formed, but no secret verifies its tag.
    BadSignature,
    /// Verified, but its session is gone (expired, evicted, destroyed).
    Expired,
}

/// Every metric, with pre-made handles for the request path.
pub struct Metrics {
    registry: Registry,
    requests: Vec<ShardedCounter>,
    pub(crate) request_duration: AtomicHistogram,
    pub(crate) upstream_duration: AtomicHistogram,
    upstream_errors: [Counter; 7],
    pub(crate) sessions_active: Gauge,
    pub(crate) sessions_created: Counter,
    pub(crate) sessions_destroyed: Counter,
    pub(crate) sessions_regenerated: Counter,
    pub(crate) sessions_expired: Counter,
    pub(crate) sessions_evicted: Counter,
    cookies_rejected: [Counter; 3],
    pub(crate) writes_refused: Counter,
    pub open_connections: Gauge,
    reloads: [Counter; 2],
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("sessiongate");
        let requests_family = Family::<RequestLabels, ShardedCounter>::default();
        let mut requests = Vec::with_capacity(METHODS.len() * CLASSES.len());
        for m in METHODS {
            for c in CLASSES {
                requests.push(requests_family.get_or_create_owned(&RequestLabels {
                    method: m.to_owned(),
                    status_class: c.to_owned(),
                }));
            }
        }
        registry.register(
            "requests",
            "Requests answered, by method and status class",
            requests_family,
        );
        let request_duration = AtomicHistogram::default();
        registry.register(
            "request_duration_seconds",
            "Time from request headers to response headers",
            request_duration.clone(),
        );
        let upstream_duration = AtomicHistogram::default();
        registry.register(
            "upstream_duration_seconds",
            "Time the upstream took to answer with its headers",
            upstream_duration.clone(),
        );
        let errors = Family::<KindLabels, Counter>::default();
        let kind = |k: &str| errors.get_or_create_owned(&KindLabels { kind: k.to_owned() });
        let upstream_errors = [
            kind("refused"),
            kind("connect_timeout"),
            kind("timeout"),
            kind("reset"),
            kind("protocol"),
            kind("tls"),
            kind("store"),
        ];
        registry.register(
            "upstream_errors",
            "Failed requests to the upstream (and the store), by kind",
            errors,
        );
        let sessions_active = Gauge::default();
        registry.register(
            "sessions_active",
            "Sessions in the store",
            sessions_active.clone(),
        );
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let sessions_created = counter(&mut registry, "sessions_created", "Sessions created");
        let sessions_destroyed = counter(
            &mut registry,
            "sessions_destroyed",
            "Sessions destroyed (write-back or admin API)",
        );
        let sessions_regenerated = counter(
            &mut registry,
            "sessions_regenerated",
            "Sessions moved to a new ID",
        );
        let sessions_expired = counter(
            &mut registry,
            "sessions_expired",
            "Sessions that timed out (memory store)",
        );
        let sessions_evicted = counter(
            &mut registry,
            "sessions_evicted",
            "Sessions evicted at max_sessions (memory store)",
        );
        let rejected = Family::<ReasonLabels, Counter>::default();
        let reason = |r: &str| {
            rejected.get_or_create_owned(&ReasonLabels {
                reason: r.to_owned(),
            })
        };
        let cookies_rejected = [
            reason("malformed"),
            reason("bad_signature"),
            reason("expired"),
        ];
        registry.register(
            "cookies_rejected",
            "Session cookies not accepted, by reason",
            rejected,
        );
        let writes_refused = counter(
            &mut registry,
            "session_writes_refused",
            "Write-backs refused (over max_data_bytes, malformed, control characters)",
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Client connections open now",
            open_connections.clone(),
        );
        let reloads_family = Family::<OutcomeLabels, Counter>::default();
        let outcome = |o: &str| {
            reloads_family.get_or_create_owned(&OutcomeLabels {
                outcome: o.to_owned(),
            })
        };
        let reloads = [outcome("success"), outcome("failure")];
        registry.register(
            "config_reloads",
            "Configuration reloads, by outcome",
            reloads_family,
        );
        Metrics {
            registry,
            requests,
            request_duration,
            upstream_duration,
            upstream_errors,
            sessions_active,
            sessions_created,
            sessions_destroyed,
            sessions_regenerated,
            sessions_expired,
            sessions_evicted,
            cookies_rejected,
            writes_refused,
            open_connections,
            reloads,
        }
    }

    pub(crate) fn request(&self, method: &Method, status: StatusCode, took: Duration) {
        let m = match *method {
            Method::GET => 0,
            Method::HEAD => 1,
            Method::POST => 2,
            Method::PUT => 3,
            Method::DELETE => 4,
            Method::PATCH => 5,
            Method::OPTIONS => 6,
            Method::CONNECT => 7,
            _ => 8,
        };
        let c = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.requests[m * CLASSES.len() + c].inc();
        self.request_duration.observe(took);
    }

    pub(crate) fn upstream_error(&self, failure: Option<UpstreamFailure>) {
        let i = match failure {
            Some(UpstreamFailure::Refused) => 0,
            Some(UpstreamFailure::ConnectTimeout) => 1,
            None => 2,
            Some(UpstreamFailure::Reset) => 3,
            Some(UpstreamFailure::Protocol) => 4,
            Some(UpstreamFailure::Tls) => 5,
        };
        self.upstream_errors[i].inc();
    }

    pub(crate) fn store_error(&self) {
        self.upstream_errors[6].inc();
    }

    pub(crate) fn cookie_rejected(&self, why: CookieRejection) {
        self.cookies_rejected[why as usize].inc();
    }

    pub(crate) fn reload(&self, ok: bool) {
        self.reloads[usize::from(!ok)].inc();
    }

    /// The text exposition.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_the_series() {
        let m = Metrics::new();
        m.request(&Method::GET, StatusCode::OK, Duration::from_micros(300));
        m.request(
            &Method::POST,
            StatusCode::BAD_GATEWAY,
            Duration::from_millis(3),
        );
        m.cookie_rejected(CookieRejection::BadSignature);
        let text = m.encode();
        assert!(
            text.contains("sessiongate_requests_total{method=\"GET\",status_class=\"2xx\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sessiongate_requests_total{method=\"POST\",status_class=\"5xx\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sessiongate_cookies_rejected_total{reason=\"bad_signature\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sessiongate_request_duration_seconds_count 2"),
            "{text}"
        );
        assert!(
            text.contains("sessiongate_request_duration_seconds_bucket{le=\"0.0005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sessiongate_request_duration_seconds_bucket{le=\"0.005\"} 2"),
            "{text}"
        );
    }
}
