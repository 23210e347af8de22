//! The near cache of the Redis store: the sessions this proxy used in the last
//! second, kept true by Redis's server-assisted client-side caching.
//!
//! Every script that reads a session key runs right after
//! `CLIENT TRACKING ON NOLOOP` on the same connection, so Redis remembers that
//! this proxy holds the key and pushes an `invalidate` message on that
//! connection when anybody else changes or deletes it (or when it expires, is
//! evicted, or the database is flushed). Writes of this proxy's own are not
//! pushed back (`NOLOOP`); the store settles them itself (see [`Pending`]).
//!
//! What a hit may serve, and for how long:
//! - an entry lives at most until a second after the session's last refresh in
//!   Redis, so a visitor's idle timeout is still refreshed once a second, the
//!   absolute timeout is checked by Redis at least that often, and an
//!   invalidation that never came (a push lost with its connection) leaves an
//!   entry wrong for at most that second;
//! - a lost connection (`Disconnection`) empties the cache: what the old
//!   connection tracked is no longer watched.
//!
//! The race every client-side cache has to close is a reply that left Redis
//! before a change, read by this proxy after that change's invalidation. Each
//! key's slot carries a version: a read takes the version of the slot it found
//! pending (or starts a new one), an invalidation removes the slot, a write
//! starts a new version. A read's reply is kept only when its version is still
//! the slot's and nothing was filled under it yet; a write's reply, likewise,
//! and otherwise the write removes the slot. So whatever order replies and
//! invalidations are handled in, the cache never keeps a value older than a
//! change it was told of or made.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::{SessionCount, SessionCounters, SessionId, SessionView};

/// The longest an entry lives: a session is refreshed in Redis once a second.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(1);

/// A placeholder no reply came back for (a request dropped mid-flight) is
/// swept after this.
const ABANDONED: Duration = Duration::from_secs(10);

/// Entries held at most; past it, new sessions are not cached until the sweep
/// makes room. A second of sessions is far fewer for most sites.
const MAX_ENTRIES: usize = 1_000_000;

struct Slot {
    version: u64,
    /// The session and the instant it stops being served; `None` while a read
    /// or a write is in flight.
    value: Option<(SessionView, Instant)>,
    started: Instant,
}

pub(crate) struct NearCache {
    slots: DashMap<SessionId, Slot>,
    next: AtomicU64,
    /// Off until Redis is known to track keys read by scripts (7.0 and later).
    active: AtomicBool,
    counters: Arc<SessionCounters>,
}

impl NearCache {
    pub(crate) fn new(counters: Arc<SessionCounters>) -> NearCache {
        NearCache {
            slots: DashMap::new(),
            next: AtomicU64::new(1),
            active: AtomicBool::new(false),
            counters,
        }
    }

    pub(crate) fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    pub(crate) fn activate(&self) {
        self.active.store(true, Ordering::Relaxed);
    }

    fn version(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// The session, when an entry for it is live and within `absolute_ms` of
    /// its creation by this machine's clock (Redis decides the rest).
    pub(crate) fn get(&self, id: &SessionId, absolute_ms: u64, now_ms: u64) -> Option<SessionView> {
        if !self.active() {
            return None;
        }
        let hit = self.slots.get(id).and_then(|slot| match &slot.value {
            Some((view, until))
                if Instant::now() < *until
                    && view.created_ms.saturating_add(absolute_ms) > now_ms =>
            {
                Some(view.clone())
            }
            _ => None,
        });
        self.counters.add(
            if hit.is_some() {
                SessionCount::NearHit
            } else {
                SessionCount::NearMiss
            },
            1,
        );
        hit
    }

    /// Before a read of `id` from Redis: joins the read already in flight, or
    /// starts a new version.
    pub(crate) fn read(self: &Arc<Self>, id: &SessionId) -> Option<Pending> {
        self.start(id, false)
    }

    /// Before a write of `id` to Redis: always a new version, so a read in
    /// flight from before the write can no longer fill the slot.
    pub(crate) fn write(self: &Arc<Self>, id: &SessionId) -> Option<Pending> {
        self.start(id, true)
    }

    fn start(self: &Arc<Self>, id: &SessionId, write: bool) -> Option<Pending> {
        if !self.active() {
            return None;
        }
        let now = Instant::now();
        let version = match self.slots.get_mut(id) {
            Some(mut slot) => {
                if write || slot.value.is_some() {
                    slot.version = self.version();
                    slot.value = None;
                    slot.started = now;
                }
                slot.version
            }
            None => {
                if self.slots.len() >= MAX_ENTRIES {
                    return None;
                }
                let version = self.version();
                self.slots.insert(
                    *id,
                    Slot {
                        version,
                        value: None,
                        started: now,
                    },
                );
                version
            }
        };
        Some(Pending {
            cache: self.clone(),
            id: *id,
            version,
            sent: now,
            write,
            done: false,
        })
    }

    /// Redis says `key` changed: forgets it.
    pub(crate) fn invalidate(&self, id: &SessionId) {
        if self.slots.remove(id).is_some() {
            self.counters.add(SessionCount::NearInvalidated, 1);
        }
    }

    /// Forgets everything: the connection whose keys were tracked is gone, or
    /// Redis was flushed.
    pub(crate) fn clear(&self) {
        let n = self.slots.len();
        self.slots.clear();
        self.counters.add(SessionCount::NearInvalidated, n as u64);
    }

    /// Drops entries past their time and placeholders no reply came back for.
    pub(crate) fn sweep(&self) {
        let now = Instant::now();
        self.slots.retain(|_, slot| match &slot.value {
            Some((_, until)) => now < *until,
            None => now.duration_since(slot.started) < ABANDONED,
        });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.len()
    }
}

/// A read or write of one session in flight. Settled by [`Pending::fill`] with
/// what Redis answered; dropped without that (the session is gone, the call
/// failed, the request was dropped), a write removes the slot.
pub(crate) struct Pending {
    cache: Arc<NearCache>,
    id: SessionId,
    version: u64,
    /// When the call was sent: an entry's lifetime counts from here.
    sent: Instant,
    write: bool,
    done: bool,
}

impl Pending {
    /// Redis answered `view`, last refreshed `age` before it answered.
    pub(crate) fn fill(mut self, view: SessionView, age: Duration) {
        self.done = true;
        let until = self.sent + MAX_AGE.saturating_sub(age);
        let mut filled = false;
        if let Some(mut slot) = self.cache.slots.get_mut(&self.id) {
            if slot.version == self.version && slot.value.is_none() {
                slot.value = Some((view, until));
                slot.version = self.cache.version();
                filled = true;
            }
        }
        if !filled && self.write {
            self.cache.slots.remove(&self.id);
        }
    }

    /// The session is gone, or the answer says nothing of it: a read or a
    /// write alike removes the slot, as a reply from before that may come
    /// later would otherwise fill it.
    pub(crate) fn gone(mut self) {
        self.done = true;
        self.cache.slots.remove(&self.id);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done && self.write {
            self.cache.slots.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> Arc<NearCache> {
        let c = Arc::new(NearCache::new(Arc::default()));
        c.activate();
        c
    }

    fn view(created_ms: u64) -> SessionView {
        SessionView {
            data: None,
            created_ms,
        }
    }

    const NOW: u64 = 1_000_000;
    const ABSOLUTE: u64 = 3_600_000;

    #[test]
    fn a_filled_read_is_served_until_its_second_ends() {
        let c = cache();
        let id = SessionId::random();
        assert!(c.get(&id, ABSOLUTE, NOW).is_none());
        c.read(&id).unwrap().fill(view(NOW), Duration::ZERO);
        assert_eq!(c.get(&id, ABSOLUTE, NOW).unwrap().created_ms, NOW);
        // Past the absolute timeout by this clock: not served.
        assert!(c.get(&id, ABSOLUTE, NOW + ABSOLUTE).is_none());
        // Refreshed a whole second before the answer: never served.
        let other = SessionId::random();
        c.read(&other).unwrap().fill(view(NOW), MAX_AGE);
        assert!(c.get(&other, ABSOLUTE, NOW).is_none());
    }

    #[test]
    fn an_invalidation_before_the_reply_is_handled_keeps_the_reply_out() {
        let c = cache();
        let id = SessionId::random();
        let read = c.read(&id).unwrap();
        c.invalidate(&id);
        read.fill(view(NOW), Duration::ZERO);
        assert!(c.get(&id, ABSOLUTE, NOW).is_none());
        // And after it: the invalidation removes what was filled.
        c.read(&id).unwrap().fill(view(NOW), Duration::ZERO);
        c.invalidate(&id);
        assert!(c.get(&id, ABSOLUTE, NOW).is_none());
    }

    #[test]
    fn a_read_from_before_a_write_never_outlives_the_write() {
        let c = cache();
        let id = SessionId::random();
        // A read in flight, then a write: the read's (older) reply is refused.
        let read = c.read(&id).unwrap();
        let write = c.write(&id).unwrap();
        read.fill(view(1), Duration::ZERO);
        write.fill(view(2), Duration::ZERO);
        assert_eq!(c.get(&id, ABSOLUTE, NOW).unwrap().created_ms, 2);

        // A read joining the write's version and answered (with what Redis had
        // before the write) first: the write then removes the slot.
        let id = SessionId::random();
        let write = c.write(&id).unwrap();
        let read = c.read(&id).unwrap();
        read.fill(view(1), Duration::ZERO);
        write.fill(view(2), Duration::ZERO);
        assert!(c.get(&id, ABSOLUTE, NOW).is_none());

        // The same, the write answered first: the read cannot overwrite it.
        let id = SessionId::random();
        let write = c.write(&id).unwrap();
        let read = c.read(&id).unwrap();
        write.fill(view(2), Duration::ZERO);
        read.fill(view(1), Duration::ZERO);
        assert_eq!(c.get(&id, ABSOLUTE, NOW).unwrap().created_ms, 2);
    }

    #[test]
    fn a_failed_or_dropped_write_removes_what_a_read_filled_meanwhile() {
        let c = cache();
        let id = SessionId::random();
        let write = c.write(&id).unwrap();
        c.read(&id).unwrap().fill(view(1), Duration::ZERO);
        drop(write);
        assert!(c.get(&id, ABSOLUTE, NOW).is_none());
        // A session found gone by a read removes a fill from an older reply.
        let id = SessionId::random();
        let first = c.read(&id).unwrap();
        let second = c.read(&id).unwrap();
        first.fill(view(1), Duration::ZERO);
        second.gone();
        assert!(c.get(&id, ABSOLUTE, NOW).is_none());
    }

    #[test]
    fn concurrent_reads_share_one_version_so_one_of_them_fills() {
        let c = cache();
        let id = SessionId::random();
        let reads: Vec<Pending> = (0..5).map(|_| c.read(&id).unwrap()).collect();
        for r in reads {
            r.fill(view(7), Duration::ZERO);
        }
        assert_eq!(c.get(&id, ABSOLUTE, NOW).unwrap().created_ms, 7);
    }

    #[test]
    fn clear_and_sweep_empty_the_cache() {
        let c = cache();
        let id = SessionId::random();
        c.read(&id).unwrap().fill(view(1), Duration::ZERO);
        let pending = c.read(&SessionId::random()).unwrap();
        c.clear();
        pending.fill(view(1), Duration::ZERO);
        assert_eq!(c.len(), 0);
        // A fill that ended before its time is swept.
        c.read(&id).unwrap().fill(view(1), MAX_AGE);
        c.sweep();
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn an_inactive_cache_holds_nothing() {
        let c = Arc::new(NearCache::new(Arc::default()));
        let id = SessionId::random();
        assert!(c.read(&id).is_none());
        assert!(c.get(&id, ABSOLUTE, NOW).is_none());
    }
}
