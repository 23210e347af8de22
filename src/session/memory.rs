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
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_queue::SegQueue;
use dashmap::DashMap;
use http::HeaderValue;

use super::data::{user_of, value_of, LOGIN_IP_KEY, LOGIN_UA_KEY};
use super::events::{Event, EventKind, EventSink, Reason};
use super::{
    now_ms, Applied, Changes, Inserted, Lookup, Policy, SessionCount, SessionCounters, SessionData,
    SessionId, SessionInfo, SessionStore, SessionView, StoreError, UserSession,
};

/// Session IDs are uniformly random and only ever looked up after their HMAC
/// verified, so their first 8 bytes are already a good hash: no need to SipHash them.
#[derive(Clone, Copy, Default)]
pub(crate) struct IdHasher(u64);

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
pub(crate) struct IdHash;

impl BuildHasher for IdHash {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
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
    /// The last second the session is alive, set with `last_seen_s` under the
    /// policy of that use; the sweep, snapshots and the admin API judge by it.
    expires_s: AtomicU32,
    /// Set the first time the cookie comes back; such sessions are evicted last.
    returned: AtomicBool,
}

impl Entry {
    /// A new session's entry, alive under `policy` from `now_s`.
    fn new(data: Option<Box<[u8]>>, now_s: u32, policy: &Policy) -> Entry {
        Entry {
            data,
            created_s: now_s,
            last_seen_s: AtomicU32::new(now_s),
            expires_s: AtomicU32::new(deadline(policy, now_s, now_s)),
            returned: AtomicBool::new(false),
        }
    }

    /// Alive at `now_s` by the deadline its last use set.
    fn alive(&self, now_s: u32) -> bool {
        now_s <= self.expires_s.load(Ordering::Relaxed)
    }

    /// Alive at `now_s` for a request made under `policy`: by its deadline, and by
    /// that policy's timeouts (a reload may have shortened them).
    fn alive_under(&self, policy: &Policy, now_s: u32) -> bool {
        let last_seen_s = self.last_seen_s.load(Ordering::Relaxed);
        self.alive(now_s) && now_s <= deadline(policy, self.created_s, last_seen_s)
    }
}

/// The last second a session created at `created_s` and last seen at
/// `last_seen_s` is alive under `policy`. Inclusive: with whole seconds, a
/// session may live up to a second past its timeout, never a moment less.
fn deadline(policy: &Policy, created_s: u32, last_seen_s: u32) -> u32 {
    let whole = |d: Duration| d.as_secs().min(u32::MAX as u64) as u32;
    let idle_end = last_seen_s.saturating_add(whole(policy.idle_timeout));
    idle_end.min(created_s.saturating_add(whole(policy.absolute_timeout)))
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
    /// What happened to sessions, for the metrics.
    counters: Arc<SessionCounters>,
    /// The per-user index, with `session.user_key`.
    users: Option<Users>,
    /// Lifecycle events.
    events: EventSink,
    /// The idle timeout of the last session stored (seconds), to tell an idle
    /// expiry from an absolute one.
    idle_s: AtomicU32,
}

/// The sessions of each user: `session.user_key`'s value, kept exact on every
/// write, regeneration and removal, so listing or ending a user's sessions costs
/// their number, not a scan.
struct Users {
    /// The user key in the encoded form of the data.
    key: Vec<u8>,
    by_user: DashMap<String, smallvec::SmallVec<[SessionId; 2]>>,
    owner: DashMap<SessionId, String, IdHash>,
    /// Regenerations of indexed sessions under way: ending all of a user's
    /// sessions waits them out, so a session moving to a new ID is never missed.
    moving: AtomicUsize,
}

impl Users {
    fn new(key: &str) -> Users {
        Users {
            key: super::encoded(key),
            by_user: DashMap::new(),
            owner: DashMap::with_hasher(IdHash),
            moving: AtomicUsize::new(0),
        }
    }

    /// The user encoded data belongs to (an empty value is nobody).
    fn user_in(&self, data: Option<&[u8]>) -> Option<String> {
        data.and_then(|d| user_of(d, &self.key))
    }

    /// Files `id` under `user` (or under nobody); true when it joined a user.
    fn set(&self, id: SessionId, user: Option<String>) -> bool {
        if user.is_some() && self.owner.get(&id).as_deref() == user.as_ref() {
            return false;
        }
        self.remove(&id);
        let Some(user) = user else { return false };
        self.by_user.entry(user.clone()).or_default().push(id);
        self.owner.insert(id, user);
        true
    }

    /// Takes `id` out of the index; the user it belonged to.
    fn remove(&self, id: &SessionId) -> Option<String> {
        let (_, user) = self.owner.remove(id)?;
        if let dashmap::Entry::Occupied(mut e) = self.by_user.entry(user.clone()) {
            e.get_mut().retain(|x| x != id);
            if e.get().is_empty() {
                e.remove();
            }
        }
        Some(user)
    }

    fn ids(&self, user: &str) -> Vec<SessionId> {
        self.by_user
            .get(user)
            .map(|ids| ids.to_vec())
            .unwrap_or_default()
    }

    fn clear(&self) {
        self.by_user.clear();
        self.owner.clear();
    }
}

/// A cheap-to-clone handle to the memory store. It holds no settings: each call
/// that judges a session is handed the [`Policy`] of the request making it.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

/// Stops the background sweep when dropped.
pub(crate) struct SweepGuard(tokio::task::JoinHandle<()>);

impl Drop for SweepGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Shards of the session map. The sweep write-locks one shard at a time, so many
/// small shards keep the wait of a request that meets the sweep short (a
/// million sessions: about 4,000 per shard).
const SHARDS: usize = 256;

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::with(None, EventSink::default())
    }

    /// A store that indexes sessions by `user_key`'s value, and tells `events`
    /// what happens to sessions.
    pub fn with(user_key: Option<&str>, events: EventSink) -> MemoryStore {
        MemoryStore {
            inner: Arc::new(Inner {
                sessions: DashMap::with_hasher_and_shard_amount(IdHash, SHARDS),
                count: AtomicUsize::new(0),
                fresh: SegQueue::new(),
                regenerated: DashMap::with_hasher(IdHash),
                counters: Arc::default(),
                users: user_key.map(Users::new),
                events,
                idle_s: AtomicU32::new(u32::MAX),
            }),
        }
    }

    /// A session left the store: out of the index, and told as an event.
    fn gone(&self, id: &SessionId, kind: EventKind, reason: Reason) {
        let inner = &self.inner;
        let user = inner.users.as_ref().and_then(|u| u.remove(id));
        inner.events.session(kind, id, user, Some(reason));
    }

    /// Why `e` expired: idle, unless its absolute timeout came first.
    fn expiry_reason(&self, e: &Entry) -> Reason {
        let idle_end = (e.last_seen_s.load(Ordering::Relaxed))
            .saturating_add(self.inner.idle_s.load(Ordering::Relaxed));
        if e.expires_s.load(Ordering::Relaxed) >= idle_end {
            Reason::Idle
        } else {
            Reason::Absolute
        }
    }

    /// Starts the background sweep of expired sessions (every `period`). It needs
    /// no policy: each session carries the deadline its last use set.
    pub(crate) fn spawn_sweeper(&self, period: Duration) -> SweepGuard {
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

    /// Removes expired sessions and stale bookkeeping; returns how many expired.
    pub(crate) fn sweep(&self, now: u64) -> usize {
        let inner = &self.inner;
        let now_s = secs(now);
        let mut expired = 0;
        let tell = inner.users.is_some() || inner.events.enabled();
        inner.sessions.retain(|id, e| {
            let alive = e.alive(now_s);
            expired += !alive as usize;
            if !alive && tell {
                self.gone(id, EventKind::Expired, self.expiry_reason(e));
            }
            alive
        });
        inner.count.fetch_sub(expired, Ordering::Relaxed);
        inner.counters.add(SessionCount::Expired, expired as u64);
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

    fn load_now(&self, id: &SessionId, now: u64, policy: &Policy) -> Lookup {
        let inner = &self.inner;
        let now_s = secs(now);
        if let Some(e) = inner.sessions.get(id) {
            if e.alive_under(policy, now_s) {
                if e.last_seen_s.load(Ordering::Relaxed) != now_s {
                    e.last_seen_s.store(now_s, Ordering::Relaxed);
                    e.expires_s
                        .store(deadline(policy, e.created_s, now_s), Ordering::Relaxed);
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
            if let Some((_, e)) = inner
                .sessions
                .remove_if(id, |_, e| !e.alive_under(policy, now_s))
            {
                inner.count.fetch_sub(1, Ordering::Relaxed);
                inner.counters.add(SessionCount::Expired, 1);
                let idle_end = e
                    .last_seen_s
                    .load(Ordering::Relaxed)
                    .saturating_add(policy.idle_timeout.as_secs().min(u32::MAX as u64) as u32);
                let reason = if now_s > idle_end {
                    Reason::Idle
                } else {
                    Reason::Absolute
                };
                self.gone(id, EventKind::Expired, reason);
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

    /// Reserves room for one session, evicting if the store holds `max` already.
    fn reserve_slot(&self, max: usize) {
        let inner = &self.inner;
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
                inner.counters.add(SessionCount::Evicted, 1);
                self.gone(&id, EventKind::Evicted, Reason::Capacity);
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
                inner.counters.add(SessionCount::Evicted, 1);
                self.gone(&id, EventKind::Evicted, Reason::Capacity);
                true
            }
            _ => false,
        }
    }

    /// Puts `entry` under `id`, evicting one session if the store holds `max`
    /// already; the entry back, with nothing stored, when the ID is taken. A
    /// collision must never merge two visitors: the slot is taken only if it is
    /// free, in one step.
    fn put(&self, id: SessionId, entry: Entry, max: usize) -> Result<(), Entry> {
        let inner = &self.inner;
        self.reserve_slot(max);
        match inner.sessions.entry(id) {
            dashmap::Entry::Vacant(slot) => {
                slot.insert(entry);
                Ok(())
            }
            dashmap::Entry::Occupied(_) => {
                inner.count.fetch_sub(1, Ordering::AcqRel);
                Err(entry)
            }
        }
    }

    /// Stores a new session under `id`, queued for eviction until its cookie
    /// comes back.
    fn insert_now(&self, id: SessionId, data: SessionData, now: u64, policy: &Policy) -> Inserted {
        let inner = &self.inner;
        if let Some(bytes) = policy.refuses(&data) {
            inner.counters.add(SessionCount::RefusedTooLarge, 1);
            return Inserted::TooLarge { bytes };
        }
        let data: Option<Box<[u8]>> = data.header().map(|h| h.as_bytes().into());
        let user = (inner.users.as_ref()).and_then(|u| u.user_in(data.as_deref()));
        inner.idle_s.store(
            policy.idle_timeout.as_secs().min(u32::MAX as u64) as u32,
            Ordering::Relaxed,
        );
        let entry = Entry::new(data, secs(now), policy);
        if self.put(id, entry, policy.max_sessions).is_err() {
            return Inserted::Taken;
        }
        inner.fresh.push(id);
        inner.counters.add(SessionCount::Created, 1);
        inner
            .events
            .session(EventKind::Created, &id, user.clone(), None);
        if let (Some(users), Some(user)) = (&inner.users, user) {
            // Indexed once stored: a removal racing with this store finds it.
            if let Some(e) = inner.sessions.get(&id) {
                let now_user = users.user_in(e.data.as_deref());
                users.set(id, now_user.clone());
                drop(e);
                if now_user.as_deref() == Some(user.as_str()) {
                    self.enforce_limit(&user, &id, policy);
                }
            }
        }
        Inserted::Stored
    }

    /// Applies the set/remove changes to one entry, or says why not.
    fn write_changes(
        &self,
        e: &mut Entry,
        changes: &Changes,
        now: u64,
        policy: &Policy,
    ) -> Result<(), Applied> {
        if !e.alive_under(policy, secs(now)) {
            return Err(Applied::Missing);
        }
        if changes.writes_data() {
            let current = SessionData::from_encoded(e.data.as_deref().unwrap_or_default());
            let next = current.with_changes(changes);
            if let Some(bytes) = policy.refuses(&next) {
                self.inner.counters.add(SessionCount::RefusedTooLarge, 1);
                return Err(Applied::TooLarge { bytes });
            }
            e.data = next.header().map(|h| h.as_bytes().into());
        }
        Ok(())
    }

    /// After a write to `id` under its lock: files it under its user; the user
    /// when it has just joined one.
    fn reindex(&self, id: SessionId, e: &Entry) -> Option<String> {
        let users = self.inner.users.as_ref()?;
        let user = users.user_in(e.data.as_deref());
        users.set(id, user.clone()).then_some(user).flatten()
    }

    /// `session.max_per_user`: the user's least recently used sessions go until
    /// they hold the limit; `keep` (the one that just logged in) stays.
    fn enforce_limit(&self, user: &str, keep: &SessionId, policy: &Policy) {
        let (Some(users), Some(max)) = (&self.inner.users, policy.max_per_user) else {
            return;
        };
        let ids = users.ids(user);
        if ids.len() <= max {
            return;
        }
        let mut others: Vec<(u32, SessionId)> = ids
            .iter()
            .filter(|id| *id != keep)
            .filter_map(|id| {
                let e = self.inner.sessions.get(id)?;
                Some((e.last_seen_s.load(Ordering::Relaxed), *id))
            })
            .collect();
        others.sort_unstable();
        let excess = (others.len() + 1).saturating_sub(max);
        for (_, id) in others.iter().take(excess) {
            self.destroy_if_user(id, user, Reason::Limit);
        }
    }

    /// Destroys `id` if it still belongs to `user`.
    fn destroy_if_user(&self, id: &SessionId, user: &str, reason: Reason) -> bool {
        let inner = &self.inner;
        let Some(users) = &inner.users else {
            return false;
        };
        let removed = inner.sessions.remove_if(id, |_, e| {
            users.user_in(e.data.as_deref()).as_deref() == Some(user)
        });
        if removed.is_none() {
            return false;
        }
        inner.count.fetch_sub(1, Ordering::AcqRel);
        inner.counters.add(SessionCount::Destroyed, 1);
        self.gone(id, EventKind::Destroyed, reason);
        true
    }

    /// Destroys every session of `user` but `except`; how many.
    fn destroy_user_now(&self, user: &str, except: Option<&SessionId>, reason: Reason) -> u64 {
        let Some(users) = &self.inner.users else {
            return 0;
        };
        let mut n = 0;
        // A regeneration under way moves a session to an ID not indexed yet:
        // rounds go on until none is under way and a round finds nothing.
        for round in 0..1000 {
            let moving = users.moving.load(Ordering::Acquire);
            let mut found = 0;
            for id in users.ids(user) {
                if Some(&id) != except && self.destroy_if_user(&id, user, reason) {
                    found += 1;
                }
            }
            n += found;
            if found == 0 && moving == 0 {
                break;
            }
            if round > 0 {
                std::thread::yield_now();
            }
        }
        n
    }

    /// The user's sessions, most recently seen first.
    fn user_sessions_now(&self, user: &str, now: u64) -> Vec<UserSession> {
        let Some(users) = &self.inner.users else {
            return Vec::new();
        };
        let now_s = secs(now);
        let ip_key = super::encoded(LOGIN_IP_KEY);
        let ua_key = super::encoded(LOGIN_UA_KEY);
        let mut list: Vec<UserSession> = users
            .ids(user)
            .into_iter()
            .filter_map(|id| {
                let e = self.inner.sessions.get(&id)?;
                if !e.alive(now_s) || users.user_in(e.data.as_deref()).as_deref() != Some(user) {
                    return None;
                }
                let data = e.data.as_deref().unwrap_or_default();
                Some(UserSession {
                    id,
                    created_ms: e.created_s as u64 * 1000,
                    last_seen_ms: e.last_seen_s.load(Ordering::Relaxed) as u64 * 1000,
                    client_ip: value_of(data, &ip_key),
                    user_agent: value_of(data, &ua_key),
                })
            })
            .collect();
        list.sort_by(|a, b| b.last_seen_ms.cmp(&a.last_seen_ms).then(a.id.cmp(&b.id)));
        list
    }

    fn apply_now(&self, id: &SessionId, changes: &Changes, now: u64, policy: &Policy) -> Applied {
        let inner = &self.inner;
        if !changes.regenerate {
            let Some(mut e) = inner.sessions.get_mut(id) else {
                return Applied::Missing;
            };
            if let Err(refused) = self.write_changes(&mut e, changes, now, policy) {
                return refused;
            }
            let joined = self.reindex(*id, &e);
            drop(e);
            if let Some(user) = joined {
                self.enforce_limit(&user, id, policy);
            }
            return Applied::Stored;
        }
        // Regenerate: the data moves to a new ID, the old one dies now and is
        // remembered for the grace period. The write and the removal happen under
        // one lock, so a concurrent write to the old ID either moves with the data
        // or finds it gone, never lands on a removed entry. The old ID is
        // remembered first, so a concurrent load sees it regenerated, not unknown.
        let grace = policy.regenerate_grace.as_millis() as u64;
        if grace > 0 {
            inner.regenerated.insert(*id, now + grace);
        }
        let moving = inner.users.as_ref().map(|u| {
            u.moving.fetch_add(1, Ordering::AcqRel);
            &u.moving
        });
        let applied = self.regenerate_now(id, changes, now, policy);
        if let Some(moving) = moving {
            moving.fetch_sub(1, Ordering::AcqRel);
        }
        applied
    }

    /// The regeneration half of [`MemoryStore::apply_now`].
    fn regenerate_now(
        &self,
        id: &SessionId,
        changes: &Changes,
        now: u64,
        policy: &Policy,
    ) -> Applied {
        let inner = &self.inner;
        let mut written = Err(Applied::Missing);
        let removed = inner.sessions.remove_if_mut(id, |_, e| {
            written = self.write_changes(e, changes, now, policy);
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
        let mut moved = Entry::new(entry.data, secs(now), policy);
        // A regenerated session was handed to a returning visitor: protect it.
        *moved.returned.get_mut() = true;
        let new_id = loop {
            let new_id = SessionId::random();
            match self.put(new_id, moved, policy.max_sessions) {
                Ok(()) => break new_id,
                Err(taken) => moved = taken,
            }
        };
        inner.counters.add(SessionCount::Regenerated, 1);
        let previous = inner.users.as_ref().and_then(|u| u.remove(id));
        let mut joined = None;
        let mut user = None;
        if let Some(e) = inner.sessions.get(&new_id) {
            joined = self.reindex(new_id, &e);
            user = (inner.users.as_ref()).and_then(|u| u.user_in(e.data.as_deref()));
        }
        if inner.events.enabled() {
            let mut event = Event::new(EventKind::Regenerated, &new_id, user.clone(), None);
            event.previous = Some(id.tag());
            inner.events.emit(event);
        }
        // A login that came with the regeneration counts against the limit.
        if let Some(user) = joined.filter(|u| previous.as_ref() != Some(u)) {
            self.enforce_limit(&user, &new_id, policy);
        }
        Applied::Regenerated(new_id)
    }

    fn destroy_now(&self, id: &SessionId, reason: Reason) -> bool {
        let inner = &self.inner;
        if inner.sessions.remove(id).is_some() {
            inner.count.fetch_sub(1, Ordering::AcqRel);
            inner.counters.add(SessionCount::Destroyed, 1);
            self.gone(id, EventKind::Destroyed, reason);
            true
        } else {
            false
        }
    }
}

/// A live session as a snapshot records it (borrowed from the store).
#[derive(Clone, Copy, Debug)]
pub(crate) struct SessionRecord<'a> {
    pub(crate) id: &'a SessionId,
    /// The encoded data; `None` when the session holds none.
    pub(crate) data: Option<&'a [u8]>,
    /// Unix seconds.
    pub(crate) created_s: u32,
    /// Unix seconds.
    pub(crate) last_seen_s: u32,
    /// The cookie came back at least once (such sessions are evicted last).
    pub(crate) returned: bool,
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
    pub(crate) fn live_ids(&self, now_ms: u64) -> Vec<SessionId> {
        let mut ids = Vec::with_capacity(self.len());
        ids.extend(
            self.inner
                .sessions
                .iter()
                .filter(|e| e.alive(secs(now_ms)))
                .map(|e| *e.key()),
        );
        ids
    }

    /// Calls `f` with the session's record, unless it is gone or expired. The
    /// map's shard stays read-locked while `f` runs: copy, do not block.
    pub(crate) fn read_record<R>(
        &self,
        id: &SessionId,
        now_ms: u64,
        f: impl FnOnce(SessionRecord<'_>) -> R,
    ) -> Option<R> {
        let e = self.inner.sessions.get(id)?;
        if !e.alive(secs(now_ms)) {
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
    /// expired under `policy` by `now_ms`. The cap is enforced by
    /// [`MemoryStore::finish_restore`].
    pub fn restore(&self, session: RestoredSession, now_ms: u64, policy: &Policy) -> bool {
        let expires_s = deadline(policy, session.created_s, session.last_seen_s);
        if secs(now_ms) > expires_s {
            return false;
        }
        let entry = Entry {
            data: session.data,
            created_s: session.created_s,
            last_seen_s: AtomicU32::new(session.last_seen_s),
            expires_s: AtomicU32::new(expires_s),
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
    pub fn finish_restore(&self, max_sessions: usize) -> usize {
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
        if let Some(users) = &inner.users {
            users.clear();
            for e in inner.sessions.iter() {
                users.set(*e.key(), users.user_in(e.data.as_deref()));
            }
        }
        let mut evicted = 0;
        while self.len() > max_sessions && self.evict_one() {
            evicted += 1;
        }
        evicted
    }

    /// Forgets every session (a snapshot that failed half-way through loading).
    pub(crate) fn clear(&self) {
        let inner = &self.inner;
        inner.sessions.clear();
        if let Some(users) = &inner.users {
            users.clear();
        }
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
    async fn load(&self, id: &SessionId, policy: &Policy) -> Result<Lookup, StoreError> {
        Ok(self.load_now(id, now_ms(), policy))
    }

    async fn insert(
        &self,
        id: &SessionId,
        data: SessionData,
        policy: &Policy,
    ) -> Result<Inserted, StoreError> {
        Ok(self.insert_now(*id, data, now_ms(), policy))
    }

    async fn apply(
        &self,
        id: &SessionId,
        changes: &Changes,
        policy: &Policy,
    ) -> Result<Applied, StoreError> {
        Ok(self.apply_now(id, changes, now_ms(), policy))
    }

    async fn destroy(&self, id: &SessionId, reason: Reason) -> Result<bool, StoreError> {
        Ok(self.destroy_now(id, reason))
    }

    async fn user_sessions(&self, user: &str) -> Result<Vec<UserSession>, StoreError> {
        Ok(self.user_sessions_now(user, now_ms()))
    }

    async fn destroy_user(
        &self,
        user: &str,
        except: Option<&SessionId>,
        reason: Reason,
    ) -> Result<u64, StoreError> {
        Ok(self.destroy_user_now(user, except, reason))
    }

    async fn inspect(&self, id: &SessionId) -> Result<Option<SessionInfo>, StoreError> {
        let now_s = secs(now_ms());
        Ok(self.inner.sessions.get(id).and_then(|e| {
            e.alive(now_s).then(|| SessionInfo {
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
            n += self.destroy_now(id, Reason::Admin) as u64;
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

    fn counters(&self) -> &Arc<SessionCounters> {
        &self.inner.counters
    }

    fn events(&self) -> &EventSink {
        &self.inner.events
    }
}

impl MemoryStore {
    /// Live sessions whose data has `key` = `value`: a full scan, for the admin
    /// path only (never on the request path).
    fn matching(&self, key: &str, value: &str) -> Vec<SessionId> {
        let now_s = secs(now_ms());
        let mut needle = String::new();
        super::data::encode_component(key, &mut needle);
        needle.push('=');
        super::data::encode_component(value, &mut needle);
        self.inner
            .sessions
            .iter()
            .filter(|e| e.alive(now_s))
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

    /// The store under test, with the policy every call is made under.
    struct Fixture {
        s: MemoryStore,
        p: Policy,
    }

    fn store(max: usize) -> Fixture {
        Fixture {
            s: MemoryStore::new(),
            p: Policy {
                idle_timeout: Duration::from_secs(60),
                absolute_timeout: Duration::from_secs(3600),
                max_sessions: max,
                max_data_bytes: 64,
                regenerate_grace: Duration::from_secs(10),
                max_per_user: None,
            },
        }
    }

    impl Fixture {
        /// A new empty session created at `now`.
        fn insert(&self, now: u64) -> SessionId {
            let id = SessionId::random();
            let stored = self.s.insert_now(id, SessionData::default(), now, &self.p);
            assert_eq!(stored, Inserted::Stored);
            id
        }

        fn load(&self, id: &SessionId, now: u64) -> Lookup {
            self.s.load_now(id, now, &self.p)
        }

        fn apply(&self, id: &SessionId, changes: &Changes, now: u64) -> Applied {
            self.s.apply_now(id, changes, now, &self.p)
        }
    }

    #[test]
    fn the_user_index_forgets_evicted_and_swept_sessions() {
        let s = MemoryStore::with(Some("user"), EventSink::default());
        let p = Policy {
            max_sessions: 3,
            ..store(3).p
        };
        let user = |name: &str| SessionData::default().with_changes(&set(&format!("user={name}")));
        let ids: Vec<SessionId> = (0..3)
            .map(|_| {
                let id = SessionId::random();
                assert_eq!(s.insert_now(id, user("ann"), 0, &p), Inserted::Stored);
                id
            })
            .collect();
        assert_eq!(s.user_sessions_now("ann", 0).len(), 3);
        // Full: a new visitor evicts the oldest never-returned session.
        s.insert_now(SessionId::random(), SessionData::default(), 0, &p);
        let left: Vec<SessionId> = s.user_sessions_now("ann", 0).iter().map(|u| u.id).collect();
        assert_eq!(left.len(), 2);
        assert!(
            !left.contains(&ids[0]),
            "the evicted session left the index"
        );
        assert!(s.inner.users.as_ref().unwrap().owner.get(&ids[0]).is_none());
        // Expired and swept: gone from the index, and its user's entry with it.
        assert_eq!(s.sweep(1_000_000), 3);
        assert!(s.user_sessions_now("ann", 1_000_000).is_empty());
        let users = s.inner.users.as_ref().unwrap();
        assert!(users.by_user.is_empty() && users.owner.is_empty());
    }

    #[test]
    fn an_entry_stays_32_bytes() {
        assert!(std::mem::size_of::<Entry>() <= 32);
    }

    #[test]
    fn a_taken_id_is_refused_and_takes_no_slot() {
        let f = store(10);
        let id = f.insert(0);
        let again = f.s.insert_now(id, SessionData::default(), 0, &f.p);
        assert_eq!(again, Inserted::Taken);
        assert_eq!(f.s.len(), 1);
        assert_eq!(f.s.inner.count.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn oversized_first_data_is_refused_and_takes_no_slot() {
        let f = store(10);
        let big = SessionData::default().with_changes(&set(&format!("b={}", "x".repeat(100))));
        let id = SessionId::random();
        let refused = f.s.insert_now(id, big, 0, &f.p);
        assert_eq!(refused, Inserted::TooLarge { bytes: 102 });
        assert!(f.s.is_empty());
        assert!(matches!(f.load(&id, 0), Lookup::Missing));
    }

    fn set(kv: &str) -> Changes {
        let mut c = Changes::default();
        c.add_set(kv.as_bytes()).unwrap();
        c
    }

    #[test]
    fn idle_and_absolute_expiry() {
        let f = store(10);
        let id = f.insert(0);
        assert!(matches!(f.load(&id, 59_000), Lookup::Found(_)));
        // Refreshed at 59s: alive at 118s, dead at 119s+ of idleness.
        assert!(matches!(f.load(&id, 118_000), Lookup::Found(_)));
        assert!(matches!(f.load(&id, 178_000), Lookup::Found(_)));
        assert!(matches!(f.load(&id, 239_000), Lookup::Missing));
        assert_eq!(f.s.len(), 0);
        let id = f.insert(0);
        for t in (30_000..=3_600_000).step_by(30_000) {
            assert!(matches!(f.load(&id, t), Lookup::Found(_)), "at {t}");
        }
        assert!(matches!(f.load(&id, 3_601_000), Lookup::Missing));
    }

    #[test]
    fn each_use_is_judged_and_refreshed_under_its_own_policy() {
        let f = store(10);
        let id = f.insert(0);
        // A reload shortens both timeouts: the next use is held to both.
        let short = Policy {
            idle_timeout: Duration::from_secs(10),
            absolute_timeout: Duration::from_secs(20),
            ..f.p.clone()
        };
        for t in [9_000, 18_000] {
            assert!(matches!(f.s.load_now(&id, t, &short), Lookup::Found(_)));
        }
        assert!(matches!(f.s.load_now(&id, 21_000, &short), Lookup::Missing));
        // Idle past the shorter timeout: gone at once, though the old one allowed it.
        let id = f.insert(0);
        assert!(matches!(f.s.load_now(&id, 11_000, &short), Lookup::Missing));
        // A longer policy never revives a session whose deadline has passed, and
        // the sweep goes by the deadline the last use set.
        let long = Policy {
            idle_timeout: Duration::from_secs(3600),
            ..f.p.clone()
        };
        let lapsed = f.insert(0);
        let used = f.insert(0);
        assert!(matches!(
            f.s.load_now(&used, 30_000, &long),
            Lookup::Found(_)
        ));
        assert!(matches!(
            f.s.load_now(&lapsed, 61_000, &long),
            Lookup::Missing
        ));
        assert_eq!(f.s.sweep(1_000_000), 0);
        assert!(matches!(
            f.s.load_now(&used, 1_000_000, &long),
            Lookup::Found(_)
        ));
    }

    #[test]
    fn sweep_removes_expired() {
        let f = store(10);
        f.insert(0);
        f.insert(50_000);
        assert_eq!(f.s.sweep(61_000), 1);
        assert_eq!(f.s.len(), 1);
    }

    #[test]
    fn flood_evicts_never_returned_first() {
        let f = store(10);
        let kept: Vec<_> = (0..3).map(|_| f.insert(0)).collect();
        for id in &kept {
            assert!(matches!(f.load(id, 1), Lookup::Found(_)));
        }
        for _ in 0..1000 {
            f.insert(2);
        }
        assert_eq!(f.s.len(), 10);
        for id in &kept {
            assert!(matches!(f.load(id, 3), Lookup::Found(_)));
        }
    }

    #[test]
    fn the_sweep_drops_stale_queue_entries_and_keeps_the_order() {
        let f = store(10_000);
        let ids: Vec<_> = (0..3000).map(|_| f.insert(0)).collect();
        for id in &ids[..2000] {
            f.s.destroy_now(id, Reason::Admin);
        }
        f.load(&ids[2000], 1);
        f.s.sweep(1);
        assert_eq!(f.s.inner.fresh.len(), 999);
        // The oldest session still waiting for its first return goes first.
        assert!(f.s.evict_one());
        assert!(matches!(f.load(&ids[2001], 2), Lookup::Missing));
        assert!(matches!(f.load(&ids[2000], 2), Lookup::Found(_)));
        assert!(matches!(f.load(&ids[2002], 2), Lookup::Found(_)));
    }

    #[test]
    fn full_of_returning_sessions_evicts_least_recent() {
        let f = store(2);
        let a = f.insert(0);
        let b = f.insert(0);
        f.load(&a, 5_000);
        f.load(&b, 10_000);
        f.insert(11_000);
        assert_eq!(f.s.len(), 2);
        assert!(matches!(f.load(&a, 11_000), Lookup::Missing));
        assert!(matches!(f.load(&b, 11_000), Lookup::Found(_)));
    }

    #[test]
    fn oversized_write_keeps_old_data() {
        let f = store(10);
        let id = f.insert(0);
        assert_eq!(f.apply(&id, &set("a=1"), 0), Applied::Stored);
        let big = format!("b={}", "x".repeat(100));
        assert!(matches!(
            f.apply(&id, &set(&big), 0),
            Applied::TooLarge { .. }
        ));
        let Lookup::Found(v) = f.load(&id, 0) else {
            panic!()
        };
        assert_eq!(v.data.unwrap(), "a=1");
    }

    #[test]
    fn regenerate_moves_data_and_remembers_old_id() {
        let f = store(10);
        let id = f.insert(0);
        let mut c = set("user=alice");
        c.regenerate = true;
        let Applied::Regenerated(new) = f.apply(&id, &c, 0) else {
            panic!()
        };
        assert_ne!(new, id);
        assert!(matches!(f.load(&id, 5_000), Lookup::Regenerated));
        assert!(matches!(f.load(&id, 10_000), Lookup::Missing));
        let Lookup::Found(v) = f.load(&new, 0) else {
            panic!()
        };
        assert_eq!(v.data.unwrap(), "user=alice");
        assert_eq!(f.s.len(), 1);
    }

    #[test]
    fn concurrent_writes_all_land() {
        let mut f = store(10);
        f.p.max_data_bytes = 1 << 20;
        let id = f.insert(0);
        std::thread::scope(|scope| {
            for i in 0..8 {
                let f = &f;
                scope.spawn(move || {
                    for j in 0..50 {
                        f.apply(&id, &set(&format!("k{i}_{j}=1")), 0);
                    }
                });
            }
        });
        let e = f.s.inner.sessions.get(&id).unwrap();
        let data = SessionData::from_encoded(e.data.as_deref().unwrap_or_default());
        assert_eq!(data.pairs().len(), 400);
    }
}
