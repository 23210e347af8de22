//! Session lifecycle events: what happened to a session, told to whoever
//! listens (`events.webhook`, `events.redis_stream`) without ever holding a
//! request up. The stores and the request path [`emit`](EventSink::emit) into
//! bounded queues; the delivery tasks (`crate::events`) drain them. A full
//! queue drops the event and counts it.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::mpsc;

use super::SessionId;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Regenerated,
    Destroyed,
    Expired,
    Evicted,
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The application destroyed it (`X-Session-Destroy`).
    Logout,
    /// Through the admin API.
    Admin,
    /// `X-Session-Destroy-Others` from another of the user's sessions.
    Others,
    /// `session.max_per_user`: the user's least recently used session.
    Limit,
    /// Unused for `idle_timeout`.
    Idle,
    /// Older than `absolute_timeout`.
    Absolute,
    /// The store was full (`max_sessions`).
    Capacity,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Regenerated => "regenerated",
            EventKind::Destroyed => "destroyed",
            EventKind::Expired => "expired",
            EventKind::Evicted => "evicted",
        }
    }
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Logout => "logout",
            Reason::Admin => "admin",
            Reason::Others => "others",
            Reason::Limit => "limit",
            Reason::Idle => "idle",
            Reason::Absolute => "absolute",
            Reason::Capacity => "capacity",
        }
    }
}

/// One event. The session is named by its one-way tag, never its ID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// Unix milliseconds.
    pub at_ms: u64,
    pub session: String,
    /// A regenerated session's tag before the regeneration.
    pub previous: Option<String>,
    pub user: Option<String>,
    pub reason: Option<Reason>,
}

impl Event {
    pub fn new(
        kind: EventKind,
        id: &SessionId,
        user: Option<String>,
        reason: Option<Reason>,
    ) -> Event {
        Event {
            kind,
            at_ms: super::now_ms(),
            session: id.tag(),
            previous: None,
            user,
            reason,
        }
    }

    /// One line of JSON, `\n` included.
    pub fn write_line(&self, out: &mut Vec<u8>) {
        let mut v = serde_json::json!({
            "type": self.kind.as_str(),
            "at": rfc3339(self.at_ms),
            "session": self.session,
            "user": self.user,
            "reason": self.reason.map(Reason::as_str),
        });
        if let Some(previous) = &self.previous {
            v["previous"] = serde_json::Value::from(previous.as_str());
        }
        serde_json::to_writer(&mut *out, &v).expect("JSON to memory");
        out.push(b'\n');
    }
}

/// `2026-12-01T20:44:36.123Z` from Unix milliseconds.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    )
}

/// The destination an event count is about: `webhook` or `redis_stream`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    pub sink: String,
}

/// What happened to events, per destination, for `/metrics`.
#[derive(Clone, Default)]
pub struct EventCounters {
    /// Events the destination accepted.
    pub delivered: Family<SinkLabel, Counter>,
    /// Events dropped: the queue was full, or the proxy stopped before they went.
    pub dropped: Family<SinkLabel, Counter>,
    /// Deliveries that failed and will be tried again.
    pub failed: Family<SinkLabel, Counter>,
}

impl EventCounters {
    /// The counters of one destination, created so they show as 0.
    pub fn of(&self, sink: &str) -> (Counter, Counter, Counter) {
        let label = SinkLabel {
            sink: sink.to_owned(),
        };
        (
            self.delivered.get_or_create(&label).clone(),
            self.dropped.get_or_create(&label).clone(),
            self.failed.get_or_create(&label).clone(),
        )
    }
}

/// One destination's queue, and the count of events it had no room for.
#[derive(Clone)]
struct Queue {
    tx: mpsc::Sender<Arc<Event>>,
    dropped: Counter,
}

/// Where events go: cheap to clone, a no-op when no destination is set.
#[derive(Clone, Default)]
pub struct EventSink {
    queues: Arc<Vec<Queue>>,
    counters: EventCounters,
}

impl EventSink {
    /// A sink with a queue of `capacity` events per destination named in
    /// `sinks`; the receivers in the same order.
    pub fn new(
        capacity: usize,
        sinks: &[&str],
        counters: EventCounters,
    ) -> (EventSink, Vec<mpsc::Receiver<Arc<Event>>>) {
        let mut queues = Vec::new();
        let mut receivers = Vec::new();
        for sink in sinks {
            let (tx, rx) = mpsc::channel(capacity.max(1));
            queues.push(Queue {
                tx,
                dropped: counters.of(sink).1,
            });
            receivers.push(rx);
        }
        let queues = Arc::new(queues);
        (EventSink { queues, counters }, receivers)
    }

    pub fn counters(&self) -> &EventCounters {
        &self.counters
    }

    /// Whether anybody listens: the stores skip building events otherwise.
    pub fn enabled(&self) -> bool {
        !self.queues.is_empty()
    }

    /// Queues the event for every destination; never waits.
    pub fn emit(&self, event: Event) {
        if self.queues.is_empty() {
            return;
        }
        let event = Arc::new(event);
        for q in self.queues.iter() {
            if q.tx.try_send(event.clone()).is_err() {
                q.dropped.inc();
            }
        }
    }

    /// Shorthand for [`Event::new`] then [`EventSink::emit`].
    pub fn session(
        &self,
        kind: EventKind,
        id: &SessionId,
        user: Option<String>,
        reason: Option<Reason>,
    ) {
        if self.enabled() {
            self.emit(Event::new(kind, id, user, reason));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_796_157_876_000), "2026-12-01T20:44:36.000Z");
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let counters = EventCounters::default();
        let (sink, mut rx) = EventSink::new(2, &["webhook"], counters.clone());
        let dropped = counters.of("webhook").1;
        let id = SessionId::random();
        for _ in 0..5 {
            sink.session(
                EventKind::Destroyed,
                &id,
                Some("alice".into()),
                Some(Reason::Logout),
            );
        }
        assert_eq!(dropped.get(), 3);
        let ev = rx[0].try_recv().unwrap();
        let mut line = Vec::new();
        ev.write_line(&mut line);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["type"], "destroyed");
        assert_eq!(v["user"], "alice");
        assert_eq!(v["reason"], "logout");
        assert_eq!(v["session"], id.tag());
        assert!(!String::from_utf8(line).unwrap().contains(&id.to_string()));
    }
}
