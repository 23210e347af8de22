//! The embedded memory store: a sharded concurrent map with idle and absolute
//! timeouts, a background sweep, and a hard cap on the number of sessions.
//!
//! Eviction when full takes the oldest session that never came back (created, its
//! cookie never presented again) first, so a flood of cookie-less requests only
//! evicts its own kind. Only when no such session remains does the least recently
//! seen of a sample of returning sessions go.
//!
//! Creating a session takes no lock beyond its own shard of the map: the creation
//! order that eviction follows is a lock-free queue, so a flood of new visitors
//! on every core never waits on one mutex.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_queue::SegQueue;
use dashmap::DashMap;
use http::HeaderValue;

use super::{
    now_ms, Applied, Changes, Lookup, SessionData, SessionId, SessionInfo, SessionStore,
    SessionView, StoreError,
};

/// Session IDs are uniformly random and only ever looked up after their HMAC
/// verified, so their first 8 bytes are already a good hash: no need to SipHash them.
#[derive(Clone, Copy, Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8).take(1) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(b);
        }
    }
    fn write_usize(&mut self, _: usize) {}
}

#[derive(Clone, Copy, Default)]
pub struct IdHash;

impl BuildHasher for IdHash {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

/// Timeouts and bounds the store enforces.
#[derive(Clone, Debug)]
pub struct MemorySettings {
    pub idle_timeout: Duration,
    pub absolute_timeout: Duration,
    pub max_sessions: usize,
    pub max_data_bytes: usize,
    pub regenerate_grace: Duration,
}

/// Counters the store keeps (read by metrics and tests).
#[derive(Default, Debug)]
pub struct MemoryStats {
    pub created: AtomicU64,
    pub expired: AtomicU64,
    pub evicted: AtomicU64,
    pub destroyed: AtomicU64,
    pub regenerated: AtomicU64,
    pub refused_writes: AtomicU64,
}

/// Kept small on purpose: a million of these must fit in a few hundred MiB. Times
/// are Unix seconds (timeouts are enforced to the second); the data is kept only in
/// its encoded form, which is what every read needs.
struct Entry {
    /// The `X-Session-Data` bytes; `None` when the session holds no data.
    data: Option<Box<[u8]>>,
    created_s: u32,
    /// Refreshed on use, at most once a second: reads take only the shard's read lock.
    last_seen_s: AtomicU32,
    /// Set the first time the cookie comes back; such sessions are evicted last.
    returned: AtomicBool,
}

struct Inner {
    sessions: DashMap<SessionId, Entry, IdHash>,
    /// Number of sessions, kept beside the map so the cap check is one atomic.
    count: AtomicUsize,
    /// Creation order of sessions that had not come back when created, oldest
    /// first; entries that came back or died since are skipped when popped and
    /// dropped by the sweep. Lock-free: every session creation pushes here.
    fresh: SegQueue<SessionId>,
    /// Old IDs of regenerated sessions, with the end of their grace (ms).
    regenerated: DashMap<SessionId, u64, IdHash>,
    /// Swapped whole by a reload.
    settings: arc_swap::ArcSwap<MemorySettings>,
    stats: MemoryStats,
}

/// A cheap-to-clone handle to the memory store.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

/// Stops the background sweep when dropped.
pub struct SweepGuard(tokio::task::JoinHandle<()>);

impl Drop for SweepGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Shards of the session map. The sweep write-locks one shard at a time, so many
/// small shards keep the wait of a request that meets the sweep short (a
/// million sessions: about 4,000 per shard).
const SHARDS: usize = 256;

impl MemoryStore {
    /// Applies new timeouts and bounds (a reload); a lower `max_sessions` evicts
    /// down to it on the next insert.
    pub fn reconfigure(&self, settings: MemorySettings) {
        self.inner.settings.store(Arc::new(settings));
    }

    pub fn new(settings: MemorySettings) -> MemoryStore {
        MemoryStore {
            inner: Arc::new(Inner {
                sessions: DashMap::with_hasher_and_shard_amount(IdHash, SHARDS),
                count: AtomicUsize::new(0),
                fresh: SegQueue::new(),
                regenerated: DashMap::with_hasher(IdHash),
                settings: arc_swap::ArcSwap::from_pointee(settings),
                stats: MemoryStats::default(),
            }),
        }
    }

    /// Starts the background sweep of expired sessions (every `period`).
    pub fn spawn_sweeper(&self, period: Duration) -> SweepGuard {
        let store = self.clone();
        SweepGuard(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                store.sweep(now_ms());
            }
        }))
    }

    pub fn len(&self) -> usize {
        self.inner.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn stats(&self) -> &MemoryStats {
        &self.inner.stats
    }

    fn expired(&self, e: &Entry, now_ms: u64) -> bool {
        self.expired_at(e.created_s, e.last_seen_s.load(Ordering::Relaxed), now_ms)
    }

    fn expired_at(&self, created_s: u32, last_seen_s: u32, now_ms: u64) -> bool {
        let s = self.inner.settings.load();
        let now = secs(now_ms);
        // Strictly greater: with whole seconds, a session may live up to a second
        // past its timeout, never a moment less.
        now.saturating_sub(last_seen_s) as u64 > s.idle_timeout.as_secs()
            || now.saturating_sub(created_s) as u64 > s.absolute_timeout.as_secs()
    }

    /// Removes expired sessions and stale bookkeeping; returns how many expired.
    pub fn sweep(&self, now: u64) -> usize {
        let inner = &self.inner;
        let mut expired = 0;
        inner.sessions.retain(|_, e| {
            let dead = self.expired(e, now);
            expired += dead as usize;
            !dead
        });
        inner.count.fetch_sub(expired, Ordering::Relaxed);
        inner
            .stats
            .expired
            .fetch_add(expired as u64, Ordering::Relaxed);
        inner.regenerated.retain(|_, until| *until > now);
        let live = inner.count.load(Ordering::Relaxed);
        let queued = inner.fresh.len();
        if queued > 2 * live.max(1024) {
            // One pass round the queue, putting back the sessions still waiting for
            // their first return. Sessions created meanwhile queue up among them:
            // at worst they are evicted a little before a few older ones.
            for _ in 0..queued {
                let Some(id) = inner.fresh.pop() else { break };
                if self.never_returned(&id) {
                    inner.fresh.push(id);
                }
            }
        }
        expired
    }

    fn load_now(&self, id: &SessionId, now: u64) -> Lookup {
        let inner = &self.inner;
        if let Some(e) = inner.sessions.get(id) {
            if !self.expired(&e, now) {
                let now_s = secs(now);
                if e.last_seen_s.load(Ordering::Relaxed) != now_s {
                    e.last_seen_s.store(now_s, Ordering::Relaxed);
                }
                if !e.returned.load(Ordering::Relaxed) {
                    e.returned.store(true, Ordering::Relaxed);
                }
                return Lookup::Found(SessionView {
                    data: e
                        .data
                        .as_deref()
                        .and_then(|d| HeaderValue::from_bytes(d).ok()),
                    created_ms: e.created_s as u64 * 1000,
                });
            }
            drop(e);
            if inner
                .sessions
                .remove_if(id, |_, e| self.expired(e, now))
                .is_some()
            {
                inner.count.fetch_sub(1, Ordering::Relaxed);
                inner.stats.expired.fetch_add(1, Ordering::Relaxed);
            }
            return Lookup::Missing;
        }
        match inner.regenerated.get(id) {
            Some(until) if *until > now => Lookup::Regenerated,
            _ => Lookup::Missing,
        }
    }

    /// The session is live and its cookie never came back.
    fn never_returned(&self, id: &SessionId) -> bool {
        self.inner
            .sessions
            .get(id)
            .is_some_and(|e| !e.returned.load(Ordering::Relaxed))
    }

    /// Reserves room for one session, evicting if the store is full.
    fn reserve_slot(&self) {
        let inner = &self.inner;
        let max = inner.settings.load().max_sessions;
        loop {
            let n = inner.count.load(Ordering::Relaxed);
            if n < max {
                if inner
                    .count
                    .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    return;
                }
                continue;
            }
            if !self.evict_one() {
                // Nothing could be evicted (entries vanished under us): take the slot
                // anyway rather than refuse a visitor; the count self-corrects.
                inner.count.fetch_add(1, Ordering::AcqRel);
                return;
            }
        }
    }

    /// Evicts one session: the oldest never-returned one, else the least recently
    /// seen of a sample. Returns false when the store was empty.
    fn evict_one(&self) -> bool {
        let inner = &self.inner;
        while let Some(id) = inner.fresh.pop() {
            if inner
                .sessions
                .remove_if(&id, |_, e| !e.returned.load(Ordering::Relaxed))
                .is_some()
            {
                inner.count.fetch_sub(1, Ordering::AcqRel);
                inner.stats.evicted.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        }
        // Every session came back: approximate LRU over a sample.
        let victim = inner
            .sessions
            .iter()
            .take(64)
            .min_by_key(|e| e.last_seen_s.load(Ordering::Relaxed))
            .map(|e| *e.key());
        match victim {
            Some(id) if inner.sessions.remove(&id).is_some() => {
                inner.count.fetch_sub(1, Ordering::AcqRel);
                inner.stats.evicted.fetch_add(1, Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }

    /// Stores a new session under `id`; `false` when the ID is taken. A collision
    /// must never merge two visitors: the slot is taken only if it is free, in one
    /// step.
    fn insert_now(&self, id: SessionId, data: SessionData, now: u64) -> bool {
        let inner = &self.inner;
        self.reserve_slot();
        match inner.sessions.entry(id) {
            dashmap::Entry::Vacant(slot) => {
                slot.insert(Entry {
                    data: data.header().map(|h| h.as_bytes().into()),
                    created_s: secs(now),
                    last_seen_s: AtomicU32::new(secs(now)),
                    returned: AtomicBool::new(false),
                });
            }
            dashmap::Entry::Occupied(_) => {
                inner.count.fetch_sub(1, Ordering::AcqRel);
                return false;
            }
        }
        inner.fresh.push(id);
        inner.stats.created.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Applies the set/remove changes to one entry, or says why not.
    fn write_changes(&self, e: &mut Entry, changes: &Changes, now: u64) -> Result<(), Applied> {
        if self.expired(e, now) {
            return Err(Applied::Missing);
        }
        if changes.writes_data() {
            let current = SessionData::from_encoded(e.data.as_deref().unwrap_or_default());
            let next = current.with_changes(changes);
            if next.encoded_len() > self.inner.settings.load().max_data_bytes {
                self.inner
                    .stats
                    .refused_writes
                    .fetch_add(1, Ordering::Relaxed);
                return Err(Applied::TooLarge {
                    bytes: next.encoded_len(),
                });
            }
            e.data = next.header().map(|h| h.as_bytes().into());
        }
        Ok(())
    }

    fn apply_now(&self, id: &SessionId, changes: &Changes, now: u64) -> Applied {
        let inner = &self.inner;
        if !changes.regenerate {
            let Some(mut e) = inner.sessions.get_mut(id) else {
                return Applied::Missing;
            };
            return match self.write_changes(&mut e, changes, now) {
                Ok(()) => Applied::Stored,
                Err(refused) => refused,
            };
        }
        // Regenerate: the data moves to a new ID, the old one dies now and is
        // remembered for the grace period. The write and the removal happen under
        // one lock, so a concurrent write to the old ID either moves with the data
        // or finds it gone, never lands on a removed entry. The old ID is
        // remembered first, so a concurrent load sees it regenerated, not unknown.
        let grace = inner.settings.load().regenerate_grace.as_millis() as u64;
        if grace > 0 {
            inner.regenerated.insert(*id, now + grace);
        }
        let mut written = Err(Applied::Missing);
        let removed = inner.sessions.remove_if_mut(id, |_, e| {
            written = self.write_changes(e, changes, now);
            written.is_ok()
        });
        let entry = match (written, removed) {
            (Ok(()), Some((_, entry))) => entry,
            (written, _) => {
                inner.regenerated.remove(id);
                return written.err().unwrap_or(Applied::Missing);
            }
        };
        inner.count.fetch_sub(1, Ordering::AcqRel);
        let data = SessionData::from_encoded(entry.data.as_deref().unwrap_or_default());
        let new_id = loop {
            let new_id = SessionId::random();
            if self.insert_now(new_id, data.clone(), now) {
                break new_id;
            }
        };
        // A regenerated session was handed to a returning visitor: protect it.
        if let Some(e) = inner.sessions.get(&new_id) {
            e.returned.store(true, Ordering::Relaxed);
        }
        inner.stats.created.fetch_sub(1, Ordering::Relaxed);
        inner.stats.regenerated.fetch_add(1, Ordering::Relaxed);
        Applied::Regenerated(new_id)
    }

    fn destroy_now(&self, id: &SessionId) -> bool {
        let inner = &self.inner;
        if inner.sessions.remove(id).is_some() {
            inner.count.fetch_sub(1, Ordering::AcqRel);
            inner.stats.destroyed.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}

/// A live session as a snapshot records it (borrowed from the store).
#[derive(Clone, Copy, Debug)]
pub struct SessionRecord<'a> {
    pub id: &'a SessionId,
    /// The encoded data; `None` when the session holds none.
    pub data: Option<&'a [u8]>,
    /// Unix seconds.
    pub created_s: u32,
    /// Unix seconds.
    pub last_seen_s: u32,
    /// The cookie came back at least once (such sessions are evicted last).
    pub returned: bool,
}

/// A session read back from a snapshot.
#[derive(Clone, Debug)]
pub struct RestoredSession {
    pub id: SessionId,
    pub data: Option<Box<[u8]>>,
    pub created_s: u32,
    pub last_seen_s: u32,
    pub returned: bool,
}

/// Snapshots: reading every session out, and putting sessions back at start.
impl MemoryStore {
    /// The IDs of the sessions alive at `now_ms`. Collected first so that a
    /// snapshot never holds a map lock while it writes to disk.
    pub fn live_ids(&self, now_ms: u64) -> Vec<SessionId> {
        let mut ids = Vec::with_capacity(self.len());
        ids.extend(
            self.inner
                .sessions
                .iter()
                .filter(|e| !self.expired(e.value(), now_ms))
                .map(|e| *e.key()),
        );
        ids
    }

    /// Calls `f` with the session's record, unless it is gone or expired. The
    /// map's shard stays read-locked while `f` runs: copy, do not block.
    pub fn read_record<R>(
        &self,
        id: &SessionId,
        now_ms: u64,
        f: impl FnOnce(SessionRecord<'_>) -> R,
    ) -> Option<R> {
        let e = self.inner.sessions.get(id)?;
        if self.expired(&e, now_ms) {
            return None;
        }
        Some(f(SessionRecord {
            id,
            data: e.data.as_deref(),
            created_s: e.created_s,
            last_seen_s: e.last_seen_s.load(Ordering::Relaxed),
            returned: e.returned.load(Ordering::Relaxed),
        }))
    }

    /// Puts a session back as it was; false (and nothing stored) when it has
    /// expired by `now_ms`. The cap is enforced by [`MemoryStore::finish_restore`].
    pub fn restore(&self, session: RestoredSession, now_ms: u64) -> bool {
        if self.expired_at(session.created_s, session.last_seen_s, now_ms) {
            return false;
        }
        let entry = Entry {
            data: session.data,
            created_s: session.created_s,
            last_seen_s: AtomicU32::new(session.last_seen_s),
            returned: AtomicBool::new(session.returned),
        };
        if self.inner.sessions.insert(session.id, entry).is_none() {
            self.inner.count.fetch_add(1, Ordering::AcqRel);
        }
        true
    }

    /// After the last [`MemoryStore::restore`]: queues the never-returned sessions
    /// for eviction, oldest first, and evicts down to `max_sessions` (the cap may
    /// have been lowered since the snapshot). Returns how many were evicted.
    pub fn finish_restore(&self) -> usize {
        let inner = &self.inner;
        let mut fresh: Vec<(u32, SessionId)> = inner
            .sessions
            .iter()
            .filter(|e| !e.returned.load(Ordering::Relaxed))
            .map(|e| (e.created_s, *e.key()))
            .collect();
        fresh.sort_unstable();
        while inner.fresh.pop().is_some() {}
        for (_, id) in fresh {
            inner.fresh.push(id);
        }
        let mut evicted = 0;
        while self.len() > inner.settings.load().max_sessions && self.evict_one() {
            evicted += 1;
        }
        evicted
    }

    /// Forgets every session (a snapshot that failed half-way through loading).
    pub fn clear(&self) {
        let inner = &self.inner;
        inner.sessions.clear();
        inner.count.store(0, Ordering::Release);
        while inner.fresh.pop().is_some() {}
        inner.regenerated.clear();
    }
}

/// Unix seconds from Unix milliseconds (fits `u32` until 2106).
fn secs(ms: u64) -> u32 {
    (ms / 1000).min(u32::MAX as u64) as u32
}

impl SessionStore for MemoryStore {
    async fn load(&self, id: &SessionId) -> Result<Lookup, StoreError> {
        Ok(self.load_now(id, now_ms()))
    }

    async fn insert(&self, id: &SessionId, data: SessionData) -> Result<bool, StoreError> {
        Ok(self.insert_now(*id, data, now_ms()))
    }

    async fn apply(&self, id: &SessionId, changes: &Changes) -> Result<Applied, StoreError> {
        Ok(self.apply_now(id, changes, now_ms()))
    }

    async fn destroy(&self, id: &SessionId) -> Result<bool, StoreError> {
        Ok(self.destroy_now(id))
    }

    async fn inspect(&self, id: &SessionId) -> Result<Option<SessionInfo>, StoreError> {
        let now = now_ms();
        Ok(self.inner.sessions.get(id).and_then(|e| {
            (!self.expired(&e, now)).then(|| SessionInfo {
                data: SessionData::from_encoded(e.data.as_deref().unwrap_or_default()),
                created_ms: e.created_s as u64 * 1000,
                last_seen_ms: e.last_seen_s.load(Ordering::Relaxed) as u64 * 1000,
            })
        }))
    }

    async fn revoke(&self, key: &str, value: &str) -> Result<u64, StoreError> {
        let ids = self.matching(key, value);
        let mut n = 0;
        for id in &ids {
            n += self.destroy_now(id) as u64;
        }
        Ok(n)
    }

    async fn find(&self, key: &str, value: &str) -> Result<Vec<SessionId>, StoreError> {
        Ok(self.matching(key, value))
    }

    async fn count(&self) -> Result<u64, StoreError> {
        Ok(self.len() as u64)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

impl MemoryStore {
    /// Live sessions whose data has `key` = `value`: a full scan, for the admin
    /// path only (never on the request path).
    fn matching(&self, key: &str, value: &str) -> Vec<SessionId> {
        let now = now_ms();
        let mut needle = String::new();
        super::data::encode_component(key, &mut needle);
        needle.push('=');
        super::data::encode_component(value, &mut needle);
        self.inner
            .sessions
            .iter()
            .filter(|e| !self.expired(e.value(), now))
            .filter(|e| {
                e.data.as_deref().is_some_and(|d| {
                    d.split(|&b| b == b'&')
                        .any(|pair| pair == needle.as_bytes())
                })
            })
            .map(|e| *e.key())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new empty session created at `now`.
    fn insert(s: &MemoryStore, now: u64) -> SessionId {
        let id = SessionId::random();
        assert!(s.insert_now(id, SessionData::default(), now));
        id
    }

    #[test]
    fn a_taken_id_is_refused_and_takes_no_slot() {
        let s = store(10);
        let id = insert(&s, 0);
        assert!(!s.insert_now(id, SessionData::default(), 0));
        assert_eq!(s.len(), 1);
        assert_eq!(s.inner.count.load(Ordering::Relaxed), 1);
    }

    fn store(max: usize) -> MemoryStore {
        MemoryStore::new(MemorySettings {
            idle_timeout: Duration::from_secs(60),
            absolute_timeout: Duration::from_secs(3600),
            max_sessions: max,
            max_data_bytes: 64,
            regenerate_grace: Duration::from_secs(10),
        })
    }

    fn set(kv: &str) -> Changes {
        let mut c = Changes::default();
        c.add_set(kv.as_bytes()).unwrap();
        c
    }

    #[test]
    fn idle_and_absolute_expiry() {
        let s = store(10);
        let id = insert(&s, 0);
        assert!(matches!(s.load_now(&id, 59_000), Lookup::Found(_)));
        // Refreshed at 59s: alive at 118s, dead at 119s+ of idleness.
        assert!(matches!(s.load_now(&id, 118_000), Lookup::Found(_)));
        assert!(matches!(s.load_now(&id, 178_000), Lookup::Found(_)));
        assert!(matches!(s.load_now(&id, 239_000), Lookup::Missing));
        assert_eq!(s.len(), 0);
        let id = insert(&s, 0);
        for t in (30_000..=3_600_000).step_by(30_000) {
            assert!(matches!(s.load_now(&id, t), Lookup::Found(_)), "at {t}");
        }
        assert!(matches!(s.load_now(&id, 3_601_000), Lookup::Missing));
    }

    #[test]
    fn sweep_removes_expired() {
        let s = store(10);
        insert(&s, 0);
        insert(&s, 50_000);
        assert_eq!(s.sweep(61_000), 1);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn flood_evicts_never_returned_first() {
        let s = store(10);
        let kept: Vec<_> = (0..3).map(|_| insert(&s, 0)).collect();
        for id in &kept {
            assert!(matches!(s.load_now(id, 1), Lookup::Found(_)));
        }
        for _ in 0..1000 {
            insert(&s, 2);
        }
        assert_eq!(s.len(), 10);
        for id in &kept {
            assert!(matches!(s.load_now(id, 3), Lookup::Found(_)));
        }
    }

    #[test]
    fn the_sweep_drops_stale_queue_entries_and_keeps_the_order() {
        let s = store(10_000);
        let ids: Vec<_> = (0..3000).map(|_| insert(&s, 0)).collect();
        for id in &ids[..2000] {
            s.destroy_now(id);
        }
        s.load_now(&ids[2000], 1);
        s.sweep(1);
        assert_eq!(s.inner.fresh.len(), 999);
        // The oldest session still waiting for its first return goes first.
        assert!(s.evict_one());
        assert!(matches!(s.load_now(&ids[2001], 2), Lookup::Missing));
        assert!(matches!(s.load_now(&ids[2000], 2), Lookup::Found(_)));
        assert!(matches!(s.load_now(&ids[2002], 2), Lookup::Found(_)));
    }

    #[test]
    fn full_of_returning_sessions_evicts_least_recent() {
        let s = store(2);
        let a = insert(&s, 0);
        let b = insert(&s, 0);
        s.load_now(&a, 5_000);
        s.load_now(&b, 10_000);
        insert(&s, 11_000);
        assert_eq!(s.len(), 2);
        assert!(matches!(s.load_now(&a, 11_000), Lookup::Missing));
        assert!(matches!(s.load_now(&b, 11_000), Lookup::Found(_)));
    }

    #[test]
    fn oversized_write_keeps_old_data() {
        let s = store(10);
        let id = insert(&s, 0);
        assert_eq!(s.apply_now(&id, &set("a=1"), 0), Applied::Stored);
        let big = format!("b={}", "x".repeat(100));
        assert!(matches!(
            s.apply_now(&id, &set(&big), 0),
            Applied::TooLarge { .. }
        ));
        let Lookup::Found(v) = s.load_now(&id, 0) else {
            panic!()
        };
        assert_eq!(v.data.unwrap(), "a=1");
    }

    #[test]
    fn regenerate_moves_data_and_remembers_old_id() {
        let s = store(10);
        let id = insert(&s, 0);
        let mut c = set("user=alice");
        c.regenerate = true;
        let Applied::Regenerated(new) = s.apply_now(&id, &c, 0) else {
            panic!()
        };
        assert_ne!(new, id);
        assert!(matches!(s.load_now(&id, 5_000), Lookup::Regenerated));
        assert!(matches!(s.load_now(&id, 10_000), Lookup::Missing));
        let Lookup::Found(v) = s.load_now(&new, 0) else {
            panic!()
        };
        assert_eq!(v.data.unwrap(), "user=alice");
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn concurrent_writes_all_land() {
        let s = MemoryStore::new(MemorySettings {
            max_data_bytes: 1 << 20,
            ..store(10).inner.settings.load().as_ref().clone()
        });
        let id = insert(&s, 0);
        std::thread::scope(|scope| {
            for i in 0..8 {
                let s = &s;
                scope.spawn(move || {
                    for j in 0..50 {
                        s.apply_now(&id, &set(&format!("k{i}_{j}=1")), 0);
                    }
                });
            }
        });
        let e = s.inner.sessions.get(&id).unwrap();
        let data = SessionData::from_encoded(e.data.as_deref().unwrap_or_default());
        assert_eq!(data.pairs().len(), 400);
    }
}
