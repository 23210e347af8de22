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
//! before a change, handled by this proxy after that change's invalidation.
//! Each key's slot carries an epoch, which only an invalidation (or a removal
//! by this proxy) ends, and each session in Redis a stamp (`m:v`), which every
//! write of its data raises. A reply is kept only when the slot's epoch is the
//! one its call started in, and its stamp is no older than what the slot
//! holds; a write of this proxy's whose reply cannot be kept removes the slot,
//! as no invalidation will come for it. So whatever order replies and
//! invalidations are handled in, the cache never keeps a session older than a
//! change it was told of or made, and concurrent requests of one visitor
//! (reads and writes alike) keep it filled with the latest.
//!
//! One reply may be kept across an invalidation: a write of this proxy's
//! that found the session changed by another (so read it whole) publishes a
//! fence, `<stamp> <key>`, on a channel only its own connection subscribes
//! to, in the same script. Redis writes the invalidations of the changes that
//! ran before the script onto that connection before the fence, and those of
//! the changes after it after, and the connection hands them to the cache in
//! that order ([`NearCache::fence`]). A fence handled in the slot's current
//! epoch therefore says the session was at that stamp after every change the
//! cache was told of, and no change since: a reply at that very stamp is kept
//! whatever epoch its call started in. Only that stamp: a reply at an older
//! one may predate a change announced before the fence. A reply handled
//! before its fence (a Redis that sends a script's own message after its
//! answer) is judged without it, as before.
//!
//! A lookup the cache cannot serve while a read of that session is in flight
//! in the slot's epoch waits for that read ([`NearCache::join`]) and is
//! served its answer: a burst of requests for a session another proxy just
//! changed makes one round trip, not one each. That answer is no older than
//! what a hit would have served when the lookup came: no invalidation had
//! been handled since the read was sent (the epoch was the same), and its
//! stamp is no older than what the slot held then, so this proxy's own
//! writes answered before are in it. A read that fails or finds the session
//! gone hands nothing on: the waiters read for themselves.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::watch;

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
    epoch: u64,
    /// The session, the instant it stops being served, and its stamp; `None`
    /// until a call fills it.
    value: Option<Entry>,
    started: Instant,
    /// The last read of this epoch sent: its answer once it is settled.
    reading: Option<watch::Receiver<Answer>>,
    /// The stamp of the last fence handled in this epoch (see the module).
    fenced: Option<u64>,
}

impl Slot {
    /// A slot of `epoch` that holds nothing yet, opened `now`.
    fn empty(epoch: u64, now: Instant, reading: Option<watch::Receiver<Answer>>) -> Slot {
        Slot {
            epoch,
            value: None,
            started: now,
            reading,
            fenced: None,
        }
    }
}

/// What a read hands the lookups waiting for it: the session and its stamp,
/// or nothing (not yet settled, or not found).
type Answer = Option<(SessionView, u64)>;

struct Entry {
    view: SessionView,
    until: Instant,
    stamp: u64,
}

pub(crate) struct NearCache {
    slots: DashMap<SessionId, Slot>,
    next: AtomicU64,
    /// Off until Redis is known to track keys read by scripts (7.0 and later).
    active: AtomicBool,
    counters: Arc<SessionCounters>,
    /// The fence channels of the connections in use; a fence on any other
    /// (a connection dropped after a failure, or to a master no longer the
    /// master) is ignored.
    trusted: std::sync::Mutex<std::collections::HashSet<Vec<u8>>>,
}

impl NearCache {
    pub(crate) fn new(counters: Arc<SessionCounters>) -> NearCache {
        NearCache {
            slots: DashMap::new(),
            next: AtomicU64::new(1),
            active: AtomicBool::new(false),
            counters,
            trusted: Default::default(),
        }
    }

    pub(crate) fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    pub(crate) fn activate(&self) {
        self.active.store(true, Ordering::Relaxed);
    }

    /// The session, when an entry for it is live and within `absolute_ms` of
    /// its creation by this machine's clock (Redis decides the rest).
    pub(crate) fn get(&self, id: &SessionId, absolute_ms: u64, now_ms: u64) -> Option<SessionView> {
        if !self.active() {
            return None;
        }
        self.slots.get(id).and_then(|slot| match &slot.value {
            Some(e) if Instant::now() < e.until && within(&e.view, absolute_ms, now_ms) => {
                Some(e.view.clone())
            }
            _ => None,
        })
    }

    /// Counts a lookup: served from the cache, or with a round trip of its own.
    pub(crate) fn count(&self, hit: bool) {
        self.counters.add(
            if hit {
                SessionCount::NearHit
            } else {
                SessionCount::NearMiss
            },
            1,
        );
    }

    /// A read of `id` in flight in this epoch, to wait for instead of reading.
    pub(crate) fn join(&self, id: &SessionId) -> Option<Joined> {
        if !self.active() {
            return None;
        }
        let slot = self.slots.get(id)?;
        // A closed channel: that read is settled already.
        let reading = (slot.reading.as_ref()).filter(|r| r.has_changed().is_ok())?;
        Some(Joined {
            answer: reading.clone(),
            floor: slot.value.as_ref().map(|e| e.stamp),
        })
    }

    /// Before a read of `id` from Redis; lookups meanwhile may wait for it.
    pub(crate) fn read(self: &Arc<Self>, id: &SessionId) -> Option<Pending> {
        Some(self.start(id, false)?.0)
    }

    /// Before a write of `id` to Redis. What the slot holds is still served
    /// while the write is in flight (a concurrent request of the visitor's).
    /// Also returns the entry the slot holds, if live: as of this epoch, the
    /// session as Redis held it at that stamp. A reply built from it is kept
    /// only if no invalidation came since, as with any other.
    pub(crate) fn write(self: &Arc<Self>, id: &SessionId) -> Option<(Pending, Option<Base>)> {
        self.start(id, true)
    }

    fn start(self: &Arc<Self>, id: &SessionId, write: bool) -> Option<(Pending, Option<Base>)> {
        if !self.active() {
            return None;
        }
        let now = Instant::now();
        // A read is announced in its slot, for lookups meanwhile to wait for.
        let (settled, reading) = if write {
            (None, None)
        } else {
            let (settled, reading) = watch::channel(None);
            (Some(settled), Some(reading))
        };
        let (epoch, base) = match self.slots.get_mut(id) {
            Some(mut slot) => {
                let base = (slot.value.as_ref())
                    .filter(|e| write && now < e.until)
                    .map(|e| Base {
                        view: e.view.clone(),
                        stamp: e.stamp,
                        until: e.until,
                    });
                if reading.is_some() {
                    slot.reading = reading;
                }
                (slot.epoch, base)
            }
            None => (self.open(id, now, reading)?.epoch, None),
        };
        let pending = Pending {
            cache: self.clone(),
            id: *id,
            epoch,
            sent: now,
            write,
            done: false,
            settled,
        };
        Some((pending, base))
    }

    fn remove(&self, id: &SessionId) {
        self.slots.remove(id);
    }

    /// A write of this proxy's left `id` at `stamp`, and every invalidation
    /// of a change before it has been handled (see the module): a reply at
    /// that stamp may fill the slot in this epoch. Only a slot that is there
    /// (an invalidation leaves it, in a new epoch): one this proxy removed
    /// (a destroy, a session found gone) stays removed. Only on a trusted
    /// `channel`.
    pub(crate) fn fence(&self, channel: &[u8], id: &SessionId, stamp: u64) {
        if !self.active() || !self.trusted.lock().is_ok_and(|t| t.contains(channel)) {
            return;
        }
        if let Some(mut slot) = self.slots.get_mut(id) {
            slot.fenced = Some(stamp);
        }
    }

    /// Fences on `channel` may be heeded: its connection was just opened.
    pub(crate) fn trust(&self, channel: &str) {
        if let Ok(mut t) = self.trusted.lock() {
            t.insert(channel.as_bytes().to_vec());
        }
    }

    /// Fences on `channel` are ignored from now on: its connection failed.
    pub(crate) fn distrust(&self, channel: &str) {
        if let Ok(mut t) = self.trusted.lock() {
            t.remove(channel.as_bytes());
        }
    }

    /// Fences on every channel opened so far are ignored: the master moved.
    pub(crate) fn distrust_all(&self) {
        if let Ok(mut t) = self.trusted.lock() {
            t.clear();
        }
    }

    /// A slot of a new epoch for `id`, unless the cache is full. Another call
    /// may have opened one meanwhile: that one, in its epoch.
    fn open(
        &self,
        id: &SessionId,
        now: Instant,
        reading: Option<watch::Receiver<Answer>>,
    ) -> Option<dashmap::mapref::one::RefMut<'_, SessionId, Slot>> {
        if self.slots.len() >= MAX_ENTRIES {
            return None;
        }
        let epoch = self.next.fetch_add(1, Ordering::Relaxed);
        Some(
            self.slots
                .entry(*id)
                .or_insert(Slot::empty(epoch, now, reading)),
        )
    }

    /// Redis says `key` changed: forgets it.
    /// The slot stays, empty, in a new epoch, for a fence to find.
    pub(crate) fn invalidate(&self, id: &SessionId) {
        if let Some(mut slot) = self.slots.get_mut(id) {
            *slot = Slot::empty(
                self.next.fetch_add(1, Ordering::Relaxed),
                Instant::now(),
                None,
            );
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

    /// Drops entries past their time and slots no reply came back for.
    pub(crate) fn sweep(&self) {
        let now = Instant::now();
        self.slots.retain(|_, slot| match &slot.value {
            Some(e) => now < e.until,
            None => now.duration_since(slot.started) < ABANDONED,
        });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.len()
    }
}

/// Whether `view` is within `absolute_ms` of its creation at `now_ms`, by
/// this machine's clock.
pub(crate) fn within(view: &SessionView, absolute_ms: u64, now_ms: u64) -> bool {
    view.created_ms.saturating_add(absolute_ms) > now_ms
}

/// A live entry, as a write found it.
pub(crate) struct Base {
    pub(crate) view: SessionView,
    /// The session's `m:v` in Redis when it was read or written.
    pub(crate) stamp: u64,
    /// When the entry stops being served: a write does not refresh the session.
    pub(crate) until: Instant,
}

/// A read or write of one session in flight. Settled by [`Pending::fill`] with
/// what Redis answered, or [`Pending::gone`]; a write dropped without either
/// (the call failed, the request was dropped) removes the slot.
pub(crate) struct Pending {
    cache: Arc<NearCache>,
    id: SessionId,
    epoch: u64,
    /// When the call was sent: an entry's lifetime counts from here.
    sent: Instant,
    write: bool,
    done: bool,
    /// For a read, the lookups waiting for it: told the answer when it is
    /// filled, closed when this is dropped.
    settled: Option<watch::Sender<Answer>>,
}

/// A wait for a read of another request's (see [`NearCache::join`]).
pub(crate) struct Joined {
    answer: watch::Receiver<Answer>,
    /// The stamp the slot held when the wait began: an answer older than
    /// that misses a write of this proxy's that was answered before.
    floor: Option<u64>,
}

impl Joined {
    /// The session the read found, once it is settled; `None` when it failed,
    /// found the session gone, or found it older than the slot held.
    pub(crate) async fn answer(mut self) -> Option<SessionView> {
        // Ends with the answer, or with the channel closed without one.
        let _ = self.answer.changed().await;
        let answer = self.answer.borrow();
        let (view, stamp) = answer.as_ref()?;
        (self.floor.is_none_or(|f| *stamp >= f)).then(|| view.clone())
    }
}

impl Pending {
    /// Redis answered `view` with its `stamp`, last refreshed `age` before it
    /// answered.
    pub(crate) fn fill(self, view: SessionView, stamp: u64, age: Duration) {
        let until = self.sent + MAX_AGE.saturating_sub(age);
        self.fill_until(view, stamp, until);
    }

    /// As [`Pending::fill`], for a session served until `until`.
    pub(crate) fn fill_until(mut self, view: SessionView, stamp: u64, until: Instant) {
        self.done = true;
        if let Some(settled) = &self.settled {
            settled.send_replace(Some((view.clone(), stamp)));
        }
        let kept = match self.cache.slots.get_mut(&self.id) {
            Some(mut slot) if slot.epoch == self.epoch || slot.fenced == Some(stamp) => {
                if slot.value.as_ref().is_none_or(|e| e.stamp <= stamp) {
                    slot.value = Some(Entry { view, until, stamp });
                }
                true
            }
            _ => false,
        };
        if !kept && self.write {
            self.cache.remove(&self.id);
        }
    }

    /// A regeneration moved the session to a new ID, whose slot's call is
    /// `new` (`None` when the cache had no room for it): this ID's slot is
    /// removed, and `view` fills the new one only.
    pub(crate) fn moved(self, new: Option<Pending>, view: SessionView, stamp: u64, age: Duration) {
        self.gone();
        if let Some(new) = new {
            new.fill(view, stamp, age);
        }
    }

    /// The session is gone, or the answer says nothing of it: removes the
    /// slot, as a reply from before that may come later would otherwise fill it.
    pub(crate) fn gone(mut self) {
        self.done = true;
        self.cache.remove(&self.id);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done && self.write {
            self.cache.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> Arc<NearCache> {
        let c = Arc::new(NearCache::new(Arc::default()));
        c.activate();
        c.trust("ch");
        c
    }

    /// The fence channel [`cache`] trusts.
    const CH: &[u8] = b"ch";

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
        c.read(&id).unwrap().fill(view(NOW), 0, Duration::ZERO);
        assert_eq!(c.get(&id, ABSOLUTE, NOW).unwrap().created_ms, NOW);
        // Past the absolute timeout by this clock: not served.
        assert!(c.get(&id, ABSOLUTE, NOW + ABSOLUTE).is_none());
        // Refreshed a whole second before the answer: never served.
        let other = SessionId::random();
        c.read(&other).unwrap().fill(view(NOW), 0, MAX_AGE);
        assert!(c.get(&other, ABSOLUTE, NOW).is_none());
    }

    #[test]
    fn an_invalidation_before_the_reply_is_handled_keeps_the_reply_out() {
        let c = cache();
        let id = SessionId::random();
        let read = c.read(&id).unwrap();
        c.invalidate(&id);
        read.fill(view(1), 0, Duration::ZERO);
        assert!(c.get(&id, ABSOLUTE, NOW).is_none());
        // Not even once a newer call opened the slot again.
        let read = c.read(&id).unwrap();
        c.invalidate(&id);
        let newer = c.read(&id).unwrap();
        read.fill(view(1), 5, Duration::ZERO);
        assert!(c.get(&id, ABSOLUTE, NOW).is_none());
        newer.fill(view(2), 0, Duration::ZERO);
        assert_eq!(c.get(&id, ABSOLUTE, NOW).unwrap().created_ms, 2);
        // And after it: the invalidation removes what was filled.
        c.invalidate(&id);
        assert!(c.get(&id, ABSOLUTE, NOW).is_none());
    }

    #[test]
    fn the_newest_stamp_wins_whatever_order_replies_come_in() {
        let c = cache();
        let id = SessionId::random();
        let (r1, w2, w3) = (
            c.read(&id).unwrap(),
            c.write(&id).unwrap().0,
            c.write(&id).unwrap().0,
        );
        w3.fill(view(3), 3, Duration::ZERO);
        r1.fill(view(1), 1, Duration::ZERO);
        w2.fill(view(2), 2, Duration::ZERO);
        assert_eq!(c.get(&id, ABSOLUTE, NOW).unwrap().created_ms, 3);
        // What the slot holds is served while a write is in flight.
        let w4 = c.write(&id).unwrap().0;
        assert_eq!(c.get(&id, ABSOLUTE, NOW).unwrap().created_ms, 3);
        w4.fill(view(4), 4, Duration::ZERO);
        assert_eq!(c.get(&id, ABSOLUTE, NOW).unwrap().created_ms, 4);
    }

    #[test]
    fn a_write_that_cannot_be_kept_removes_the_slot() {
        // An invalidation while this proxy's write is in flight, then a read
        // that began after it (but ran in Redis before the write) fills first:
        // no invalidation will come for the write, so it removes the slot.
        let c = cache();
        let id = SessionId::random();
        let write = c.write(&id).unwrap().0;
        c.invalidate(&id);
        c.read(&id).unwrap().fill(view(1), 1, Duration::ZERO);
        write.fill(view(2), 2, Duration::ZERO);
        assert!(c.get(&id, ABSOLUTE, NOW).is_none());
        // A failed or dropped write too.
        c.read(&id).unwrap().fill(view(1), 1, Duration::ZERO);
        let write = c.write(&id).unwrap().0;
        drop(write);
        assert!(c.get(&id, ABSOLUTE, NOW).is_none());
    }

    #[test]
    fn a_regeneration_empties_the_old_ids_slot_even_when_the_new_id_gets_none() {
        let c = cache();
        let (old, new) = (SessionId::random(), SessionId::random());
        c.read(&old).unwrap().fill(view(1), 1, Duration::ZERO);
        // The new ID got a slot: it is filled, the old one's is gone.
        let write = c.write(&old).unwrap().0;
        let fresh = c.write(&new).unwrap().0;
        write.moved(Some(fresh), view(2), 2, Duration::ZERO);
        assert!(c.get(&old, ABSOLUTE, NOW).is_none());
        assert_eq!(c.get(&new, ABSOLUTE, NOW).unwrap().created_ms, 2);
        // No room for the new ID: the old one's slot is gone all the same,
        // and the new session's state is cached under neither.
        let (old, new) = (new, SessionId::random());
        let write = c.write(&old).unwrap().0;
        write.moved(None, view(3), 3, Duration::ZERO);
        assert!(c.get(&old, ABSOLUTE, NOW).is_none());
        assert!(c.get(&new, ABSOLUTE, NOW).is_none());
    }

    #[test]
    fn a_fenced_write_is_kept_across_an_invalidation_that_came_before_its_fence() {
        // Another proxy's change, announced while this proxy's write was in
        // flight, ran before the write: the fence comes after the invalidation.
        let c = cache();
        let id = SessionId::random();
        c.read(&id).unwrap().fill(view(1), 1, Duration::ZERO);
        let write = c.write(&id).unwrap().0;
        c.invalidate(&id);
        c.fence(CH, &id, 3);
        write.fill(view(3), 3, Duration::ZERO);
        assert_eq!(c.get(&id, ABSOLUTE, NOW).unwrap().created_ms, 3);
        // With the slot still open when the fence comes, likewise.
        let write = c.write(&id).unwrap().0;
        c.invalidate(&id);
        c.read(&id).unwrap();
        c.fence(CH, &id, 5);
        write.fill(view(5), 5, Duration::ZERO);
        assert_eq!(c.get(&id, ABSOLUTE, NOW).unwrap().created_ms, 5);
    }

    #[test]
    fn a_fence_keeps_nothing_after_a_later_invalidation_or_at_another_stamp() {
        // The change came after the write: its invalidation after the fence.
        let c = cache();
        let id = SessionId::random();
        let write = c.write(&id).unwrap().0;
        c.fence(CH, &id, 3);
        c.invalidate(&id);
        write.fill(view(3), 3, Duration::ZERO);
        assert!(c.get(&id, ABSOLUTE, NOW).is_none());
        // A read that ran before a change announced before the fence answers
        // an older stamp: not kept, though the fence is of this epoch.
        let read = c.read(&id).unwrap();
        c.invalidate(&id);
        c.fence(CH, &id, 7);
        read.fill(view(5), 5, Duration::ZERO);
        assert!(c.get(&id, ABSOLUTE, NOW).is_none());
        // Nor a newer stamp the fence did not vouch for.
        let write = c.write(&id).unwrap().0;
        c.invalidate(&id);
        c.fence(CH, &id, 7);
        write.fill(view(8), 8, Duration::ZERO);
        assert!(c.get(&id, ABSOLUTE, NOW).is_none());
        // A fence on an inactive cache opens nothing.
        let off = Arc::new(NearCache::new(Arc::default()));
        off.trust("ch");
        off.fence(CH, &id, 1);
        assert!(off.get(&id, ABSOLUTE, NOW).is_none());
    }

    #[test]
    fn a_fence_heeds_neither_a_distrusted_channel_nor_a_slot_this_proxy_removed() {
        let c = cache();
        let id = SessionId::random();
        // A channel of a connection that failed, or of the old master.
        for distrust in [
            &(|c: &NearCache| c.distrust("ch")) as &dyn Fn(&NearCache),
            &|c: &NearCache| c.distrust_all(),
        ] {
            let write = c.write(&id).unwrap().0;
            c.invalidate(&id);
            distrust(&c);
            c.fence(CH, &id, 3);
            write.fill(view(3), 3, Duration::ZERO);
            assert!(c.get(&id, ABSOLUTE, NOW).is_none());
            c.trust("ch");
        }
        c.fence(b"other", &id, 3);
        let write = c.write(&id).unwrap().0;
        c.invalidate(&id);
        c.fence(b"other", &id, 4);
        write.fill(view(4), 4, Duration::ZERO);
        assert!(c.get(&id, ABSOLUTE, NOW).is_none());
        // A destroy through this proxy removed the slot: a fence of a write
        // that ran before it, handled late, opens nothing.
        let write = c.write(&id).unwrap().0;
        c.read(&id).unwrap().gone();
        c.fence(CH, &id, 5);
        write.fill(view(5), 5, Duration::ZERO);
        assert!(c.get(&id, ABSOLUTE, NOW).is_none());
    }

    #[test]
    fn a_session_found_gone_keeps_older_replies_out() {
        let c = cache();
        let id = SessionId::random();
        let first = c.read(&id).unwrap();
        let second = c.read(&id).unwrap();
        second.gone();
        first.fill(view(1), 1, Duration::ZERO);
        assert!(c.get(&id, ABSOLUTE, NOW).is_none());
        // And removes what an older reply filled before.
        let first = c.read(&id).unwrap();
        let second = c.read(&id).unwrap();
        first.fill(view(1), 1, Duration::ZERO);
        second.gone();
        assert!(c.get(&id, ABSOLUTE, NOW).is_none());
    }

    #[test]
    fn concurrent_reads_all_fill() {
        let c = cache();
        let id = SessionId::random();
        let reads: Vec<Pending> = (0..5).map(|_| c.read(&id).unwrap()).collect();
        for r in reads {
            r.fill(view(7), 0, Duration::ZERO);
        }
        assert_eq!(c.get(&id, ABSOLUTE, NOW).unwrap().created_ms, 7);
    }

    /// Polls `answer` once: `None` while it still waits.
    fn ready(
        answer: &mut std::pin::Pin<Box<impl std::future::Future<Output = Option<SessionView>>>>,
    ) -> Option<Option<SessionView>> {
        let waker = std::task::Waker::noop();
        match answer
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker))
        {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }

    #[test]
    fn a_lookup_waits_for_the_read_in_flight_and_gets_its_answer() {
        let c = cache();
        let id = SessionId::random();
        assert!(c.join(&id).is_none(), "no read in flight");
        let read = c.read(&id).unwrap();
        let mut answer = Box::pin(c.join(&id).unwrap().answer());
        assert!(ready(&mut answer).is_none(), "answered before the read was");
        read.fill(view(7), 3, Duration::ZERO);
        assert_eq!(ready(&mut answer).unwrap().unwrap().created_ms, 7);
        // Settled: a later lookup is a hit, and has nothing to wait for.
        assert!(c.join(&id).is_none());
        assert_eq!(c.get(&id, ABSOLUTE, NOW).unwrap().created_ms, 7);
    }

    #[test]
    fn a_lookup_that_came_before_an_invalidation_gets_the_answer_one_after_it_reads_itself() {
        let c = cache();
        let id = SessionId::random();
        let read = c.read(&id).unwrap();
        let mut before = Box::pin(c.join(&id).unwrap().answer());
        c.invalidate(&id);
        assert!(c.join(&id).is_none(), "a read of an ended epoch was joined");
        read.fill(view(7), 3, Duration::ZERO);
        // The reply is not kept, but the lookup that waited before the
        // invalidation came is served it, as a hit would have been.
        assert!(c.get(&id, ABSOLUTE, NOW).is_none());
        assert_eq!(ready(&mut before).unwrap().unwrap().created_ms, 7);
    }

    #[test]
    fn a_read_that_fails_or_finds_nothing_hands_nothing_on() {
        let c = cache();
        let id = SessionId::random();
        let read = c.read(&id).unwrap();
        let mut answer = Box::pin(c.join(&id).unwrap().answer());
        read.gone();
        assert!(matches!(ready(&mut answer), Some(None)));
        let read = c.read(&id).unwrap();
        let mut answer = Box::pin(c.join(&id).unwrap().answer());
        drop(read);
        assert!(matches!(ready(&mut answer), Some(None)));
        assert!(c.join(&id).is_none());
    }

    #[test]
    fn an_answer_older_than_a_write_of_this_proxys_is_not_handed_on() {
        // A read sent before this proxy's write, answered after it: a lookup
        // that came after the write was answered must see the write.
        let c = cache();
        let id = SessionId::random();
        let read = c.read(&id).unwrap();
        c.write(&id).unwrap().0.fill(view(2), 2, Duration::ZERO);
        let mut answer = Box::pin(c.join(&id).unwrap().answer());
        read.fill(view(1), 1, Duration::ZERO);
        assert!(matches!(ready(&mut answer), Some(None)));
        // One at the write's stamp or newer is.
        let read = c.read(&id).unwrap();
        let mut answer = Box::pin(c.join(&id).unwrap().answer());
        read.fill(view(3), 3, Duration::ZERO);
        assert_eq!(ready(&mut answer).unwrap().unwrap().created_ms, 3);
    }

    #[test]
    fn clear_and_sweep_empty_the_cache() {
        let c = cache();
        let id = SessionId::random();
        c.read(&id).unwrap().fill(view(1), 0, Duration::ZERO);
        let pending = c.read(&SessionId::random()).unwrap();
        c.clear();
        pending.fill(view(1), 0, Duration::ZERO);
        assert_eq!(c.len(), 0);
        // An entry whose second is over is swept.
        c.read(&id).unwrap().fill(view(1), 0, MAX_AGE);
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
