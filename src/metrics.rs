//! Prometheus metrics, all named `sessiongate_*`, served by the admin listener.
//!
//! Every series the request path touches is created at start and held as a plain
//! atomic handle, found by an enum rather than by label text, so recording a
//! request takes no lock: no label lookup, no mutex (the request-duration
//! histograms are lock-free too, see [`AtomicHistogram`]). The session counters
//! are the store's own ([`SessionCounters`]), read at each scrape.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::session::{SessionCount, SessionCounters, StoreError};
use crate::upstream::UpstreamFailure;

/// Upper bounds in seconds, from 100 µs (a hit served from memory) to 30 s.
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0, 30.0,
];

/// The values of one label, as an enum: its series are made at start, one per
/// value, and found again by the value's discriminant.
trait LabelValue: Copy + 'static {
    /// Every value, in the order of the discriminants.
    const ALL: &'static [Self];
    /// The label's text.
    fn label(self) -> &'static str;
    /// The value's place in [`LabelValue::ALL`].
    fn index(self) -> usize;
}

/// Declares an enum of label values (see [`LabelValue`]).
macro_rules! label_values {
    ($(#[$doc:meta])* $vis:vis enum $name:ident {
        $($(#[$vdoc:meta])* $variant:ident => $text:literal,)*
    }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        $vis enum $name {
            $($(#[$vdoc])* $variant,)*
        }

        impl LabelValue for $name {
            const ALL: &'static [$name] = &[$($name::$variant,)*];
            fn label(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
            fn index(self) -> usize {
                self as usize
            }
        }
    };
}

label_values! {
    /// The `method` label of `requests_total`.
    enum MethodLabel {
        Get => "GET",
        Head => "HEAD",
        Post => "POST",
        Put => "PUT",
        Delete => "DELETE",
        Patch => "PATCH",
        Options => "OPTIONS",
        Connect => "CONNECT",
        Other => "other",
    }
}

impl MethodLabel {
    fn of(method: &Method) -> MethodLabel {
        match *method {
            Method::GET => MethodLabel::Get,
            Method::HEAD => MethodLabel::Head,
            Method::POST => MethodLabel::Post,
            Method::PUT => MethodLabel::Put,
            Method::DELETE => MethodLabel::Delete,
            Method::PATCH => MethodLabel::Patch,
            Method::OPTIONS => MethodLabel::Options,
            Method::CONNECT => MethodLabel::Connect,
            _ => MethodLabel::Other,
        }
    }
}

label_values! {
    /// The `status_class` label of `requests_total`.
    enum StatusClass {
        Informational => "1xx",
        Success => "2xx",
        Redirection => "3xx",
        ClientError => "4xx",
        ServerError => "5xx",
    }
}

impl StatusClass {
    fn of(status: StatusCode) -> StatusClass {
        match status.as_u16() {
            ..=199 => StatusClass::Informational,
            200..=299 => StatusClass::Success,
            300..=399 => StatusClass::Redirection,
            400..=499 => StatusClass::ClientError,
            _ => StatusClass::ServerError,
        }
    }
}

label_values! {
    /// The `kind` label of `upstream_errors_total`.
    enum UpstreamErrorKind {
        Refused => "refused",
        ConnectTimeout => "connect_timeout",
        Timeout => "timeout",
        Reset => "reset",
        Protocol => "protocol",
        Tls => "tls",
    }
}

impl UpstreamErrorKind {
    /// `None`: the upstream did not answer in `upstream.timeout`.
    fn of(failure: Option<UpstreamFailure>) -> UpstreamErrorKind {
        match failure {
            Some(UpstreamFailure::Refused) => UpstreamErrorKind::Refused,
            Some(UpstreamFailure::ConnectTimeout) => UpstreamErrorKind::ConnectTimeout,
            None => UpstreamErrorKind::Timeout,
            Some(UpstreamFailure::Reset) => UpstreamErrorKind::Reset,
            Some(UpstreamFailure::Protocol) => UpstreamErrorKind::Protocol,
            Some(UpstreamFailure::Tls) => UpstreamErrorKind::Tls,
        }
    }
}

label_values! {
    /// The `kind` label of `store_errors_total`.
    enum StoreErrorKind {
        Unavailable => "unavailable",
        Timeout => "timeout",
    }
}

impl StoreErrorKind {
    fn of(e: &StoreError) -> StoreErrorKind {
        match e {
            StoreError::Timeout => StoreErrorKind::Timeout,
            // The last two happen at start only, never to a request.
            StoreError::Unavailable(_)
            | StoreError::Misconfigured(_)
            | StoreError::Snapshot { .. } => StoreErrorKind::Unavailable,
        }
    }
}

label_values! {
    /// Why a session cookie was not accepted (`cookies_rejected_total`).
    pub enum CookieRejection {
        /// Not `<id>.<tag>` in base64url.
        Malformed => "malformed",
        /// Well formed, but no secret verifies its tag.
        BadSignature => "bad_signature",
        /// Verified, but its session is gone (expired, evicted, destroyed).
        Expired => "expired",
    }
}

label_values! {
    /// The `outcome` label of `config_reloads_total`.
    enum ReloadOutcome {
        Success => "success",
        Failure => "failure",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    status_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    group: String,
    server: String,
}

/// One upstream server's series, shared by every worker and kept across reloads.
#[derive(Clone, Debug, Default)]
pub struct ServerMetrics {
    /// Requests sent to it.
    pub requests: Counter,
    /// Requests it failed: no connection, reset, no answer in time.
    pub errors: Counter,
    /// 1 while it is healthy.
    pub healthy: Gauge,
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

/// The series of one family with one label, one per value of `K`.
struct PerLabel<K, M> {
    series: Vec<M>,
    values: PhantomData<K>,
}

impl<K: LabelValue> PerLabel<K, Counter> {
    /// Registers a family `name` whose label is made by `labels`, with a series
    /// for every value of `K` (exported at zero from the start).
    fn register<L>(
        registry: &mut Registry,
        name: &str,
        help: &str,
        labels: impl Fn(&'static str) -> L,
    ) -> Self
    where
        L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
    {
        let family = Family::<L, Counter>::default();
        let series = K::ALL
            .iter()
            .map(|v| family.get_or_create_owned(&labels(v.label())))
            .collect();
        registry.register(name, help, family);
        PerLabel {
            series,
            values: PhantomData,
        }
    }

    fn inc(&self, value: K) {
        self.series[value.index()].inc();
    }
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

/// A counter the store keeps, read at each scrape; `also` adds what the request
/// path counts under the same name (write-backs refused as malformed).
#[derive(Clone, Debug)]
struct StoreCounter {
    counters: Arc<SessionCounters>,
    what: SessionCount,
    also: Option<Counter>,
}

impl TypedMetric for StoreCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for StoreCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let also = self.also.as_ref().map_or(0, Counter::get);
        let total = self.counters.get(self.what) + also;
        encoder.encode_counter::<NoLabelSet, _, u64>(&total, None)
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

/// Every metric, with pre-made handles for the request path.
pub struct Metrics {
    registry: Registry,
    /// By method, then status class: see [`Metrics::request`].
    requests: Vec<ShardedCounter>,
    pub(crate) request_duration: AtomicHistogram,
    pub(crate) upstream_duration: AtomicHistogram,
    upstream_errors: PerLabel<UpstreamErrorKind, Counter>,
    store_errors: PerLabel<StoreErrorKind, Counter>,
    /// Set from the memory store at each scrape (counting Redis keys would mean
    /// a `SCAN` per scrape).
    pub sessions_active: Gauge,
    cookies_rejected: PerLabel<CookieRejection, Counter>,
    /// Write-backs refused as malformed; the store counts those refused as too
    /// large, and `session_writes_refused_total` is the sum.
    writes_malformed: Counter,
    pub open_connections: Gauge,
    reloads: PerLabel<ReloadOutcome, Counter>,
    server_requests: Family<ServerLabels, Counter>,
    server_errors: Family<ServerLabels, Counter>,
    server_healthy: Family<ServerLabels, Gauge>,
}

impl Metrics {
    /// The metrics of a proxy whose store keeps `sessions`.
    pub fn new(sessions: Arc<SessionCounters>, events: &crate::session::EventCounters) -> Metrics {
        let mut registry = Registry::with_prefix("sessiongate");
        let requests_family = Family::<RequestLabels, ShardedCounter>::default();
        let mut requests = Vec::with_capacity(MethodLabel::ALL.len() * StatusClass::ALL.len());
        for m in MethodLabel::ALL {
            for c in StatusClass::ALL {
                requests.push(requests_family.get_or_create_owned(&RequestLabels {
                    method: m.label().to_owned(),
                    status_class: c.label().to_owned(),
                }));
            }
        }
        registry.register(
            "requests",
            "Requests answered, by method and status class",
            requests_family,
        );
        registry.register(
            "events_delivered",
            "Session lifecycle events the destination accepted, by destination",
            events.delivered.clone(),
        );
        registry.register(
            "events_dropped",
            "Session lifecycle events dropped (queue full, or left at shutdown), by destination",
            events.dropped.clone(),
        );
        registry.register(
            "events_delivery_failures",
            "Event deliveries that failed and were tried again, by destination",
            events.failed.clone(),
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
        let kind = |k: &str| KindLabels { kind: k.to_owned() };
        let upstream_errors = PerLabel::register(
            &mut registry,
            "upstream_errors",
            "Failed requests to the upstream, by kind",
            kind,
        );
        let store_errors = PerLabel::register(
            &mut registry,
            "store_errors",
            "Requests answered 503 because the session store failed, by kind",
            kind,
        );
        let sessions_active = Gauge::default();
        registry.register(
            "sessions_active",
            "Sessions in the store",
            sessions_active.clone(),
        );
        let writes_malformed = Counter::default();
        let mut store_counter = |name: &str, help: &str, what, also: Option<&Counter>| {
            let counter = StoreCounter {
                counters: sessions.clone(),
                what,
                also: also.cloned(),
            };
            registry.register(name, help, counter);
        };
        store_counter(
            "sessions_created",
            "Sessions created",
            SessionCount::Created,
            None,
        );
        store_counter(
            "sessions_destroyed",
            "Sessions destroyed (write-back or admin API)",
            SessionCount::Destroyed,
            None,
        );
        store_counter(
            "sessions_regenerated",
            "Sessions moved to a new ID",
            SessionCount::Regenerated,
            None,
        );
        store_counter(
            "sessions_expired",
            "Sessions that timed out (memory store)",
            SessionCount::Expired,
            None,
        );
        store_counter(
            "sessions_evicted",
            "Sessions evicted at max_sessions (memory store)",
            SessionCount::Evicted,
            None,
        );
        store_counter(
            "session_writes_refused",
            "Write-backs refused (over max_data_bytes, malformed, control characters)",
            SessionCount::RefusedTooLarge,
            Some(&writes_malformed),
        );
        store_counter(
            "near_cache_hits",
            "Sessions served from the Redis store's near cache",
            SessionCount::NearHit,
            None,
        );
        store_counter(
            "near_cache_misses",
            "Session lookups the near cache could not serve (a round trip to Redis)",
            SessionCount::NearMiss,
            None,
        );
        store_counter(
            "near_cache_invalidations",
            "Near-cache entries dropped because Redis told of a change or the connection was lost",
            SessionCount::NearInvalidated,
            None,
        );
        let cookies_rejected = PerLabel::register(
            &mut registry,
            "cookies_rejected",
            "Session cookies not accepted, by reason",
            |r| ReasonLabels {
                reason: r.to_owned(),
            },
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Client connections open now",
            open_connections.clone(),
        );
        let reloads = PerLabel::register(
            &mut registry,
            "config_reloads",
            "Configuration reloads, by outcome",
            |o| OutcomeLabels {
                outcome: o.to_owned(),
            },
        );
        let server_requests = Family::<ServerLabels, Counter>::default();
        registry.register(
            "upstream_server_requests",
            "Requests sent to each upstream server",
            server_requests.clone(),
        );
        let server_errors = Family::<ServerLabels, Counter>::default();
        registry.register(
            "upstream_server_errors",
            "Requests each upstream server failed (no connection, reset, no answer in time)",
            server_errors.clone(),
        );
        let server_healthy = Family::<ServerLabels, Gauge>::default();
        registry.register(
            "upstream_server_healthy",
            "1 while the upstream server is healthy, else 0",
            server_healthy.clone(),
        );
        Metrics {
            registry,
            server_requests,
            server_errors,
            server_healthy,
            requests,
            request_duration,
            upstream_duration,
            upstream_errors,
            store_errors,
            sessions_active,
            cookies_rejected,
            writes_malformed,
            open_connections,
            reloads,
        }
    }

    pub fn request(&self, method: &Method, status: StatusCode, took: Duration) {
        let (m, c) = (MethodLabel::of(method), StatusClass::of(status));
        self.requests[m.index() * StatusClass::ALL.len() + c.index()].inc();
        self.request_duration.observe(took);
    }

    /// A request the upstream failed; `None`: it did not answer in time.
    pub fn upstream_error(&self, failure: Option<UpstreamFailure>) {
        self.upstream_errors.inc(UpstreamErrorKind::of(failure));
    }

    /// A request answered 503 because the store failed (never an upstream error).
    pub fn store_error(&self, e: &StoreError) {
        self.store_errors.inc(StoreErrorKind::of(e));
    }

    pub fn cookie_rejected(&self, why: CookieRejection) {
        self.cookies_rejected.inc(why);
    }

    /// A write-back refused as malformed (the store counts those too large).
    pub fn write_malformed(&self) {
        self.writes_malformed.inc();
    }

    /// The series of the server `server` (its URL) of the group `group`.
    pub fn server(&self, group: &str, server: &str) -> ServerMetrics {
        let labels = ServerLabels {
            group: group.to_owned(),
            server: server.to_owned(),
        };
        ServerMetrics {
            requests: self.server_requests.get_or_create_owned(&labels),
            errors: self.server_errors.get_or_create_owned(&labels),
            healthy: self.server_healthy.get_or_create_owned(&labels),
        }
    }

    /// Drops the series of a server no longer configured.
    pub fn forget_server(&self, group: &str, server: &str) {
        let labels = ServerLabels {
            group: group.to_owned(),
            server: server.to_owned(),
        };
        self.server_requests.remove(&labels);
        self.server_errors.remove(&labels);
        self.server_healthy.remove(&labels);
    }

    pub fn reload(&self, ok: bool) {
        let outcome = if ok {
            ReloadOutcome::Success
        } else {
            ReloadOutcome::Failure
        };
        self.reloads.inc(outcome);
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
        let m = Metrics::new(Arc::default(), &Default::default());
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

    #[test]
    fn label_enums_index_in_order() {
        fn in_order<K: LabelValue + std::fmt::Debug>() {
            for (i, v) in K::ALL.iter().enumerate() {
                assert_eq!(v.index(), i, "{v:?}");
            }
        }
        in_order::<MethodLabel>();
        in_order::<StatusClass>();
        in_order::<UpstreamErrorKind>();
        in_order::<StoreErrorKind>();
        in_order::<CookieRejection>();
        in_order::<ReloadOutcome>();
    }

    #[test]
    fn session_series_read_the_store_and_errors_keep_their_families() {
        let sessions = Arc::new(SessionCounters::default());
        let m = Metrics::new(sessions.clone(), &Default::default());
        sessions.add(SessionCount::Created, 3);
        sessions.add(SessionCount::RefusedTooLarge, 1);
        m.write_malformed();
        m.store_error(&StoreError::Timeout);
        let text = m.encode();
        assert!(
            text.contains("sessiongate_sessions_created_total 3\n"),
            "{text}"
        );
        assert!(
            text.contains("sessiongate_session_writes_refused_total 2\n"),
            "{text}"
        );
        assert!(
            text.contains("sessiongate_store_errors_total{kind=\"timeout\"} 1\n"),
            "{text}"
        );
        for line in text
            .lines()
            .filter(|l| l.starts_with("sessiongate_upstream_errors"))
        {
            assert!(line.ends_with(" 0"), "{line}");
        }
    }
}
