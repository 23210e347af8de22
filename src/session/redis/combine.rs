//! Concurrent writes to one session, combined into one call to Redis.
//!
//! A page that fires many requests at once, each of which writes the session,
//! would otherwise send Redis one script call per request, each on the same
//! key: Redis runs them one after the other anyway. Here, while one write of
//! a session is in flight from this proxy, the writes that come for it wait;
//! when it is answered, the first of them writes for all that waited, as one
//! write with their changes in the order they came (a key's last value wins,
//! as if each had been written in turn), and each gets that answer.
//!
//! - A combined write that would pass the size limit is not stored; the writes
//!   in it then go one at a time, in order, so each gets its own answer.
//! - Writes that regenerate the ID or change the session's user (the per-user
//!   index follows each) are not combined: they go as they are.
//! - A write waits at most for the write in flight and then its own (and,
//!   when they go one at a time, for those before it), each bounded by
//!   `store.redis.timeout`.
//! - A request dropped while it waits or writes for others (its client went
//!   away) hands its turn on: the writes it carried join again.
//!
//! With one write of a session in flight at a time, a session the near cache
//! holds is written from its copy (the stamp stays the one the cache holds),
//! so each combined write is the cheap one for Redis too.

use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::sync::oneshot;

use super::super::{Applied, Changes, Policy, SessionId, StoreError};

/// One write of a session, as the store does it without combining.
pub(super) trait WriteOne {
    async fn write_one(
        &self,
        id: &SessionId,
        changes: &Changes,
        policy: &Policy,
    ) -> Result<Applied, StoreError>;
}

type Queues = Arc<DashMap<SessionId, Vec<Waiter>>>;

/// The sessions with a write in flight from this proxy, and the writes that
/// wait for it.
#[derive(Default)]
pub(super) struct Combiner {
    queues: Queues,
}

struct Waiter {
    changes: Changes,
    turn: oneshot::Sender<Turn>,
}

enum Turn {
    Done(Result<Applied, StoreError>),
    Lead(Round),
}

/// The turn to write a session, with the writes that waited for it. Dropped,
/// it passes to the next writes that wait.
struct Round {
    queues: Queues,
    id: SessionId,
    others: Vec<Waiter>,
    passed: bool,
}

impl Combiner {
    /// Writes `changes` to `id`: at once when nothing of the session is in
    /// flight, else with the other writes that wait for it.
    pub(super) async fn apply<W: WriteOne>(
        &self,
        store: &W,
        id: &SessionId,
        changes: &Changes,
        policy: &Policy,
        user_key: Option<&str>,
    ) -> Result<Applied, StoreError> {
        if !combinable(changes, user_key) {
            return store.write_one(id, changes, policy).await;
        }
        let round = loop {
            let waiting = match self.queues.entry(*id) {
                Entry::Vacant(e) => {
                    e.insert(Vec::new());
                    None
                }
                Entry::Occupied(mut e) => {
                    let (turn, waiting) = oneshot::channel();
                    e.get_mut().push(Waiter {
                        changes: changes.clone(),
                        turn,
                    });
                    Some(waiting)
                }
            };
            match waiting {
                None => {
                    break Round {
                        queues: self.queues.clone(),
                        id: *id,
                        others: Vec::new(),
                        passed: false,
                    }
                }
                Some(waiting) => match waiting.await {
                    Ok(Turn::Done(result)) => return result,
                    Ok(Turn::Lead(round)) => break round,
                    // The request that carried this write was dropped: join again.
                    Err(_) => continue,
                },
            }
        };
        round.write(store, changes, policy).await
    }
}

/// Whether a write may go with others: it writes data, keeps the ID, and
/// leaves the session's user as it is.
fn combinable(changes: &Changes, user_key: Option<&str>) -> bool {
    changes.writes_data()
        && !changes.regenerate
        && !changes.destroy
        && user_key.is_none_or(|k| changes.touches(k).is_none())
}

impl Round {
    async fn write<W: WriteOne>(
        mut self,
        store: &W,
        own: &Changes,
        policy: &Policy,
    ) -> Result<Applied, StoreError> {
        if self.others.is_empty() {
            return store.write_one(&self.id, own, policy).await;
        }
        let all =
            Changes::in_turn(std::iter::once(own).chain(self.others.iter().map(|w| &w.changes)));
        let result = store.write_one(&self.id, &all, policy).await;
        if let Ok(Applied::TooLarge { .. }) = result {
            // Nothing was stored: each in turn, for an answer of its own.
            let result = store.write_one(&self.id, own, policy).await;
            for waiter in std::mem::take(&mut self.others) {
                let answer = store.write_one(&self.id, &waiter.changes, policy).await;
                let _ = waiter.turn.send(Turn::Done(answer));
            }
            return result;
        }
        for waiter in std::mem::take(&mut self.others) {
            let answer = result.as_ref().cloned().map_err(StoreError::copied);
            let _ = waiter.turn.send(Turn::Done(answer));
        }
        result
    }
}

impl Drop for Round {
    fn drop(&mut self) {
        if self.passed {
            return;
        }
        self.passed = true;
        // Writes this round carried and did not answer join again.
        self.others.clear();
        pass(&self.queues, self.id);
    }
}

/// Hands the turn to write `id` to the first of the writes that wait, or
/// marks nothing in flight when none do.
fn pass(queues: &Queues, id: SessionId) {
    loop {
        let waiting = match queues.entry(id) {
            Entry::Vacant(_) => return,
            Entry::Occupied(e) if e.get().is_empty() => {
                e.remove();
                return;
            }
            Entry::Occupied(mut e) => std::mem::take(e.get_mut()),
        };
        // Sent outside the map's lock: a turn refused comes back, and is
        // passed on here.
        let mut waiting = waiting.into_iter();
        while let Some(first) = waiting.next() {
            let round = Round {
                queues: queues.clone(),
                id,
                others: waiting.collect(),
                passed: false,
            };
            // A turn that comes back: that request is gone, the next one leads.
            let Err(Turn::Lead(mut round)) = first.turn.send(Turn::Lead(round)) else {
                return;
            };
            round.passed = true;
            waiting = std::mem::take(&mut round.others).into_iter();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::session::SessionData;

    const POLICY: Policy = Policy {
        idle_timeout: Duration::from_secs(60),
        absolute_timeout: Duration::from_secs(3600),
        max_sessions: 100,
        max_data_bytes: 100,
        regenerate_grace: Duration::ZERO,
        max_per_user: None,
    };

    /// A store whose every write takes a while, so that writes pile up.
    #[derive(Default)]
    struct Slow {
        data: Mutex<SessionData>,
        calls: AtomicUsize,
        /// Each write's keys, as it reached the store.
        seen: Mutex<Vec<usize>>,
        fail: bool,
    }

    impl WriteOne for Slow {
        async fn write_one(
            &self,
            _id: &SessionId,
            changes: &Changes,
            policy: &Policy,
        ) -> Result<Applied, StoreError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.seen
                .lock()
                .unwrap()
                .push(changes.set.len() + changes.remove.len());
            tokio::time::sleep(Duration::from_millis(30)).await;
            if self.fail {
                return Err(StoreError::Unavailable("connection refused".into()));
            }
            let mut data = self.data.lock().unwrap();
            let next = data.with_changes(changes);
            if next.encoded_len() > policy.max_data_bytes {
                return Ok(Applied::TooLarge {
                    bytes: next.encoded_len(),
                });
            }
            *data = next;
            Ok(Applied::Stored)
        }
    }

    fn set(pairs: &str) -> Changes {
        let mut c = Changes::default();
        c.add_set(pairs.as_bytes()).unwrap();
        c
    }

    /// Starts a write to one session (the same for every call) in a task;
    /// sessions are indexed by `user`.
    fn writer(
        store: &Arc<Slow>,
        combiner: &Arc<Combiner>,
    ) -> impl Fn(Changes) -> tokio::task::JoinHandle<Result<Applied, StoreError>> {
        let (store, combiner, id) = (store.clone(), combiner.clone(), SessionId::random());
        move |w: Changes| {
            let (store, combiner) = (store.clone(), combiner.clone());
            tokio::spawn(async move {
                combiner
                    .apply(&*store, &id, &w, &POLICY, Some("user"))
                    .await
            })
        }
    }

    /// The answers of `tasks`, in order; each must come within 5 s.
    async fn answered(
        tasks: Vec<tokio::task::JoinHandle<Result<Applied, StoreError>>>,
    ) -> Vec<Result<Applied, StoreError>> {
        let mut answers = Vec::new();
        for t in tasks {
            let answer = tokio::time::timeout(Duration::from_secs(5), t).await;
            answers.push(answer.expect("a write was never answered").unwrap());
        }
        answers
    }

    /// Writes `writes` to one session, each from a task of its own, started
    /// 1 ms apart (so they arrive in order); their answers, in that order.
    async fn concurrently(
        store: &Arc<Slow>,
        combiner: &Arc<Combiner>,
        writes: Vec<Changes>,
    ) -> Vec<Result<Applied, StoreError>> {
        let spawn = writer(store, combiner);
        let mut tasks = Vec::new();
        for w in writes {
            tasks.push(spawn(w));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let answers = answered(tasks).await;
        assert!(
            combiner.queues.is_empty(),
            "a session left marked in flight"
        );
        answers
    }

    #[tokio::test]
    async fn writes_that_wait_go_as_one_with_each_key_as_the_last_left_it() {
        let (store, combiner) = (Arc::new(Slow::default()), Arc::new(Combiner::default()));
        let mut remove = Changes::default();
        remove.add_remove(b"a").unwrap();
        let writes = vec![set("a=1"), set("a=2&b=1"), set("c=1"), remove, set("b=2")];
        let answers = concurrently(&store, &combiner, writes).await;
        assert_eq!(answers.len(), 5);
        assert!(answers.iter().all(|a| matches!(a, Ok(Applied::Stored))));
        // The first alone, the four that waited for it as one.
        assert_eq!(store.calls.load(Ordering::SeqCst), 2);
        assert_eq!(*store.seen.lock().unwrap(), vec![1, 3]);
        let data = store.data.lock().unwrap();
        assert_eq!(data.header().unwrap(), "b=2&c=1");
    }

    #[tokio::test]
    async fn writes_too_large_together_go_one_at_a_time() {
        let (store, combiner) = (Arc::new(Slow::default()), Arc::new(Combiner::default()));
        let value = |c: &str| format!("{c}={}", "x".repeat(40));
        let writes = vec![
            set("first=1"),
            set(&value("a")),
            set(&value("b")),
            set(&value("c")),
        ];
        let answers = concurrently(&store, &combiner, writes).await;
        assert_eq!(answers.len(), 4);
        assert!(matches!(answers[0], Ok(Applied::Stored)));
        assert!(matches!(answers[1], Ok(Applied::Stored)));
        assert!(matches!(answers[2], Ok(Applied::Stored)));
        assert!(matches!(answers[3], Ok(Applied::TooLarge { .. })));
        // first; a+b+c refused together; then a, b, c in turn.
        assert_eq!(*store.seen.lock().unwrap(), vec![1, 3, 1, 1, 1]);
        let data = store.data.lock().unwrap();
        assert_eq!(data.pairs().len(), 3, "{:?}", data.pairs());
    }

    #[tokio::test]
    async fn a_failure_reaches_every_write_in_it() {
        let store = Arc::new(Slow {
            fail: true,
            ..Slow::default()
        });
        let combiner = Arc::new(Combiner::default());
        let answers =
            concurrently(&store, &combiner, vec![set("a=1"), set("b=1"), set("c=1")]).await;
        assert_eq!(answers.len(), 3);
        for answer in answers {
            let Err(e) = answer else {
                panic!("a failed write answered {answer:?}")
            };
            assert!(
                format!("{e}: {:?}", e).contains("connection refused"),
                "{e:?}"
            );
        }
        assert_eq!(store.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_login_or_a_new_id_is_never_held_back() {
        let (store, combiner) = (Arc::new(Slow::default()), Arc::new(Combiner::default()));
        let mut regenerate = set("x=1");
        regenerate.regenerate = true;
        let writes = vec![set("a=1"), set("user=alice"), regenerate, set("b=1")];
        let answers = concurrently(&store, &combiner, writes).await;
        assert_eq!(answers.len(), 4);
        // a alone; the login and the regeneration at once beside it; b waits.
        assert_eq!(*store.seen.lock().unwrap(), vec![1, 1, 1, 1]);
    }

    #[tokio::test]
    async fn a_request_dropped_while_it_writes_for_others_hands_its_turn_on() {
        let (store, combiner) = (Arc::new(Slow::default()), Arc::new(Combiner::default()));
        let spawn = writer(&store, &combiner);
        // The first writes alone; two wait; the first's request goes away.
        let first = spawn(set("a=1"));
        tokio::time::sleep(Duration::from_millis(5)).await;
        let second = spawn(set("b=1"));
        let third = spawn(set("c=1"));
        tokio::time::sleep(Duration::from_millis(5)).await;
        first.abort();
        // The second leads now; drop it while it writes for both.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let fourth = spawn(set("d=1"));
        tokio::time::sleep(Duration::from_millis(10)).await;
        second.abort();
        let done = answered(vec![third, fourth]).await;
        assert!(matches!(
            done[..],
            [Ok(Applied::Stored), Ok(Applied::Stored)]
        ));
        let data = store.data.lock().unwrap();
        assert!(
            data.get("c").is_some() && data.get("d").is_some(),
            "{:?}",
            data.pairs()
        );
        assert!(combiner.queues.is_empty());
    }

    #[tokio::test]
    async fn a_write_whose_request_went_away_before_its_turn_is_skipped() {
        let (store, combiner) = (Arc::new(Slow::default()), Arc::new(Combiner::default()));
        let spawn = writer(&store, &combiner);
        let first = spawn(set("a=1"));
        tokio::time::sleep(Duration::from_millis(5)).await;
        let gone = spawn(set("b=1"));
        tokio::time::sleep(Duration::from_millis(2)).await;
        let last = spawn(set("c=1"));
        tokio::time::sleep(Duration::from_millis(2)).await;
        gone.abort();
        let done = answered(vec![first, last]).await;
        assert!(matches!(
            done[..],
            [Ok(Applied::Stored), Ok(Applied::Stored)]
        ));
        assert_eq!(store.data.lock().unwrap().header().unwrap(), "a=1&c=1");
        assert!(combiner.queues.is_empty());
    }
}
