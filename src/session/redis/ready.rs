//! Sessions made ahead: under a steady flow of new visitors, each worker
//! thread keeps a few new sessions already created in Redis, empty, and hands
//! them to the next new visitors.
//!
//! A new visitor's session is stored when the response carrying its cookie is
//! ready, which costs a call to Redis. Most new visitors' responses write
//! nothing to the session; for those, one handed a session made ahead costs no
//! call at all: it is already there, as storing it would have left it.
//!
//! - Sessions are made only while this thread stores at least [`MIN`] new
//!   sessions per [`WINDOW`]: as many as it stored in the last window (at most
//!   [`MOST`]), in one call, when fewer than half of that are left. A thread
//!   that sees a new visitor now and then makes none.
//! - One is handed out only while younger than [`FRESH`]: its creation and
//!   last-seen times are those of its making, at most a second early, as an
//!   idle refresh may leave a session's last-seen time.
//! - A response that writes to its new session, a session policy other than
//!   the one it was made under, or a request that took longer than [`FRESH`]:
//!   the session is stored as any new one, which overwrites what was made.
//! - The ID is drawn from the CSPRNG as every ID, and never handed out twice.
//!   One handed to a request that then failed, or made and not handed out in
//!   time, stays in Redis, empty, until the idle timeout, as a visitor who
//!   never came back leaves: when a flow of new visitors stops, fewer than
//!   half of [`MOST`] left and one call's worth made on top of them, so fewer
//!   than 96 per thread.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::super::{SessionData, SessionId};
use super::creates::{CreateMany, NewSession, MOST};
use super::lanes::{per_thread, PerThread};

/// How long a session made ahead may wait to be handed out and stored.
const FRESH: Duration = Duration::from_secs(1);

/// The span over which a thread's flow of new sessions is counted.
const WINDOW: Duration = Duration::from_millis(250);

/// The fewest new sessions stored in a window for the thread to make any
/// ahead (32 a second).
const MIN: usize = 8;

/// A session made ahead: its ID, the TTL it was made with (ms), and when the
/// call that made it was sent.
struct Made {
    id: SessionId,
    ttl: u64,
    at: Instant,
}

/// One store's sessions made ahead on one thread.
#[derive(Default)]
struct Shelf {
    /// Made, not yet handed out, oldest first.
    fresh: VecDeque<Made>,
    /// Handed out, not yet stored by their request.
    handed: Vec<Made>,
    /// When the call making more was sent, while it is in flight.
    making: Option<Instant>,
    /// When this window started, and the new sessions stored in it and in
    /// the one before.
    window: Option<Instant>,
    this: usize,
    last: usize,
}

thread_local! {
    /// Each store's shelf on this thread.
    static SHELVES: PerThread<RefCell<Shelf>> = const { RefCell::new(Vec::new()) };
}

/// The sessions made ahead of one store, one shelf per thread.
#[derive(Default)]
pub(super) struct Ready {
    /// This store's shelf in each thread's list (see [`per_thread`]).
    token: Arc<()>,
}

impl Ready {
    /// The ID of a session made ahead on this thread, when one is fresh.
    pub(super) fn take(&self) -> Option<SessionId> {
        let shelf = per_thread(&SHELVES, &self.token);
        let mut shelf = shelf.borrow_mut();
        let now = Instant::now();
        shelf.handed.retain(|m| now.duration_since(m.at) < FRESH);
        while let Some(made) = shelf.fresh.pop_front() {
            if now.duration_since(made.at) < FRESH {
                let id = made.id;
                shelf.handed.push(made);
                return Some(id);
            }
        }
        None
    }

    /// Whether `id` is a session made ahead, handed out on this thread, made
    /// with `ttl` and still fresh: then it is in Redis, empty, as storing it
    /// now would leave it. Asked once per ID: it is forgotten here.
    pub(super) fn stored(&self, id: &SessionId, ttl: u64) -> bool {
        let shelf = per_thread(&SHELVES, &self.token);
        let mut shelf = shelf.borrow_mut();
        let Some(i) = shelf.handed.iter().position(|m| m.id == *id) else {
            return false;
        };
        let made = shelf.handed.swap_remove(i);
        made.ttl == ttl && made.at.elapsed() < FRESH
    }

    /// Counts a new session stored on this thread and, when the flow of them
    /// calls for it, makes more ahead with `ttl` and creation time `now_ms`
    /// (Redis's clock), in one call of their own.
    pub(super) fn count<S: CreateMany>(&self, store: &S, ttl: u64, now_ms: u64) {
        let shelf = per_thread(&SHELVES, &self.token);
        let now = Instant::now();
        let want = {
            let mut s = shelf.borrow_mut();
            match s.window {
                Some(start) if now.duration_since(start) < WINDOW => {}
                start => {
                    let next = start.is_some_and(|t| now.duration_since(t) < 2 * WINDOW);
                    s.last = if next { s.this } else { 0 };
                    s.this = 0;
                    s.window = Some(now);
                }
            }
            s.this += 1;
            let want = s.last.min(MOST);
            let busy = s.making.is_some_and(|t| now.duration_since(t) < FRESH);
            if want < MIN || busy || s.fresh.len() * 2 >= want {
                return;
            }
            s.making = Some(now);
            want
        };
        // Those that one call can carry: the first one's.
        let mut call = None;
        let mut ids = Vec::with_capacity(want);
        let mut sessions = Vec::with_capacity(want);
        for _ in 0..want {
            let (id, key) = store.spare();
            let of = store.call_of(&key);
            if *call.get_or_insert(of) != of {
                continue;
            }
            ids.push(id);
            sessions.push(NewSession {
                key,
                ttl,
                now: now_ms,
                data: SessionData::default(),
            });
        }
        let (store, token) = (store.clone(), self.token.clone());
        tokio::spawn(async move {
            let answers = store.create_many(&sessions).await;
            let shelf = per_thread(&SHELVES, &token);
            let mut s = shelf.borrow_mut();
            s.making = None;
            let made = ids.into_iter().zip(answers).filter(|(_, a)| a.is_ok());
            s.fresh
                .extend(made.map(|(id, _)| Made { id, ttl, at: now }));
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::super::super::StoreError;
    use super::*;

    /// Records the keys of each call; refuses every call while `down`.
    #[derive(Clone, Default)]
    struct Fake {
        calls: Arc<Mutex<Vec<Vec<String>>>>,
        down: Arc<std::sync::atomic::AtomicBool>,
    }

    impl CreateMany for Fake {
        async fn create_many(&self, sessions: &[NewSession]) -> Vec<Result<(), StoreError>> {
            let keys = sessions.iter().map(|s| s.key.clone()).collect();
            self.calls.lock().unwrap().push(keys);
            let down = self.down.load(std::sync::atomic::Ordering::SeqCst);
            (sessions.iter())
                .map(|_| match down {
                    true => Err(StoreError::Unavailable("Redis said no".into())),
                    false => Ok(()),
                })
                .collect()
        }

        fn call_of(&self, _key: &str) -> Option<u32> {
            None
        }

        fn spare(&self) -> (SessionId, String) {
            let id = SessionId::random();
            (id, id.to_string())
        }
    }

    /// Lets the spawned call that makes sessions run.
    async fn settle() {
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    }

    /// Stores `n` new sessions on this thread, as `n` visitors would, taking a
    /// made one where there is one; how many were.
    async fn visitors(ready: &Ready, store: &Fake, n: usize, ttl: u64) -> usize {
        let mut handed = 0;
        for _ in 0..n {
            if let Some(id) = ready.take() {
                assert!(ready.stored(&id, ttl));
                handed += 1;
            }
            ready.count(store, ttl, 1);
            settle().await;
        }
        handed
    }

    #[tokio::test]
    async fn a_thread_that_sees_a_few_new_visitors_makes_nothing_ahead() {
        let (ready, store) = (Ready::default(), Fake::default());
        for _ in 0..3 {
            assert_eq!(visitors(&ready, &store, MIN - 1, 1000).await, 0);
            tokio::time::sleep(WINDOW).await;
        }
        assert!(store.calls.lock().unwrap().is_empty());
        assert!(ready.take().is_none());
    }

    #[tokio::test]
    async fn a_flow_of_new_visitors_is_handed_sessions_made_ahead_each_once() {
        let (ready, store) = (Ready::default(), Fake::default());
        // One window of 40 new sessions, then the next window's visitors.
        assert_eq!(visitors(&ready, &store, 40, 1000).await, 0);
        tokio::time::sleep(WINDOW).await;
        let mut ids = Vec::new();
        ready.count(&store, 1000, 1);
        settle().await;
        while let Some(id) = ready.take() {
            ids.push(id);
        }
        // As many as the last window stored, made in one call.
        assert_eq!(ids.len(), 40);
        let calls = store.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 1);
        let made: Vec<String> = ids.iter().map(ToString::to_string).collect();
        assert_eq!(calls[0], made);
        // Each is stored once: a second ask, or an ID never handed out, is not.
        assert!(ready.stored(&ids[0], 1000));
        assert!(!ready.stored(&ids[0], 1000));
        assert!(!ready.stored(&SessionId::random(), 1000));
    }

    #[tokio::test]
    async fn a_session_made_under_another_policy_or_too_long_ago_is_stored_anew() {
        let (ready, store) = (Ready::default(), Fake::default());
        visitors(&ready, &store, 40, 1000).await;
        tokio::time::sleep(WINDOW).await;
        ready.count(&store, 1000, 1);
        settle().await;
        let (a, b) = (ready.take().unwrap(), ready.take().unwrap());
        assert!(!ready.stored(&a, 2000), "made with another TTL");
        tokio::time::sleep(FRESH).await;
        assert!(
            !ready.stored(&b, 1000),
            "handed out over a second after its making"
        );
        assert!(ready.take().is_none(), "none is handed out once stale");
    }

    #[tokio::test]
    async fn sessions_a_failed_call_did_not_make_are_never_handed_out() {
        let (ready, store) = (Ready::default(), Fake::default());
        store.down.store(true, std::sync::atomic::Ordering::SeqCst);
        visitors(&ready, &store, 40, 1000).await;
        tokio::time::sleep(WINDOW).await;
        ready.count(&store, 1000, 1);
        settle().await;
        assert_eq!(store.calls.lock().unwrap().len(), 1, "the call was made");
        assert!(ready.take().is_none());
    }

    #[tokio::test]
    async fn each_store_keeps_a_shelf_of_its_own() {
        let (a, b, store) = (Ready::default(), Ready::default(), Fake::default());
        visitors(&a, &store, 40, 1000).await;
        tokio::time::sleep(WINDOW).await;
        a.count(&store, 1000, 1);
        settle().await;
        assert!(b.take().is_none());
        let id = a.take().unwrap();
        assert!(!b.stored(&id, 1000));
        assert!(a.stored(&id, 1000));
    }
}
