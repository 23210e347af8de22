//! New sessions made on one thread at one moment, created in Redis by one call.
//!
//! A proxy worker's runtime runs the tasks that are ready in turn, so the
//! requests of many new visitors reach the point of creating their session
//! within one pass. Each adds its session to its thread's batch and waits for
//! the answer; the first to find the batch empty spawns the task that sends
//! it, which runs after the requests already ready. One transaction then
//! creates every session of the batch, and each request gets its answer.
//!
//! - For the proxy, one call is made and answered per batch instead of one
//!   per session; for one Redis, one `MULTI`/`EXEC` wraps them all.
//! - Nothing waits for anything but its own call: a batch goes as soon as the
//!   requests ready with it have added theirs, while earlier batches are
//!   still in flight. A session created alone goes alone, one task hop later.
//! - On a Cluster, a call goes to one node: a batch goes as one call per node
//!   (as the store last learnt which node holds which slot), and there each
//!   slot's sessions are a transaction of their own, since a transaction's
//!   keys must share a slot.
//! - A batch goes in calls of at most [`MOST`] sessions, so no single
//!   transaction holds Redis for long.
//! - On a Cluster, a thread draws its new sessions' IDs so that those it
//!   creates at about one time share a slot: [`Creates::new_id`] gives
//!   [`RUN`] IDs in a row the first three bytes (the hash tag) of the run's
//!   first, a plain draw, and the rest fresh. A batch then mostly goes as one
//!   call and one transaction, as on one Redis, not one per node and one per
//!   session; every slot, and so every node, still gets new sessions in
//!   proportion.
//! - A request dropped while it waits leaves its session created (the call
//!   was on its way), unanswered, as a request dropped a moment later would.
//!   The call is the spawned task's, so no other request is held by it.

use std::cell::Cell;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

use super::super::{SessionData, SessionId, StoreError};
use super::lanes::{per_thread, PerThread};

/// The most sessions one call creates.
pub(super) const MOST: usize = 64;

/// How many new IDs in a row a thread draws for one slot of a Cluster.
const RUN: u16 = 64;

/// A session to create: its key, TTL (ms), creation time (Redis's clock,
/// Unix ms) and data.
pub(super) struct NewSession {
    pub(super) key: String,
    pub(super) ttl: u64,
    pub(super) now: u64,
    pub(super) data: SessionData,
}

/// How the store creates, in one call, sessions that one call can carry.
pub(super) trait CreateMany: Clone + Send + Sync + 'static {
    /// Creates `sessions`, all of one call (see [`CreateMany::call_of`]); the
    /// answer for each, in their order.
    fn create_many(
        &self,
        sessions: &[NewSession],
    ) -> impl std::future::Future<Output = Vec<Result<(), StoreError>>> + Send;

    /// Which call can carry the creation of the session stored at `key`: on
    /// one Redis any (`None`); on a Cluster, that of the node holding its slot.
    fn call_of(&self, key: &str) -> Option<u32>;

    /// A new session's ID, drawn as any new visitor's, and its key: for
    /// sessions made ahead (see `ready.rs`).
    fn spare(&self) -> (SessionId, String);
}

struct Waiting {
    session: NewSession,
    answer: oneshot::Sender<Result<(), StoreError>>,
}

type Batch = Arc<Mutex<Vec<Waiting>>>;

thread_local! {
    /// Each store's batch on this thread.
    static BATCHES: PerThread<Mutex<Vec<Waiting>>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Each store's node for this thread's new IDs (see [`Creates::new_id`]).
    static PLACES: PerThread<Cell<Place>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The slot a thread's next new IDs are drawn for (the first three bytes
/// they share), its node, and for how many more: none when `left` is 0.
#[derive(Clone, Copy, Default)]
struct Place {
    head: [u8; 3],
    node: u16,
    left: u16,
}

/// The batches of one store, one per thread.
#[derive(Default)]
pub(super) struct Creates {
    /// This store's batch in each thread's list (see [`per_thread`]).
    token: Arc<()>,
}

impl Creates {
    /// A new session's ID: 32 bytes from the CSPRNG, as every ID. With `owners`
    /// (a Cluster's map: each slot's node; see `SlotOwners::map`), the IDs a
    /// thread makes in a row, [`RUN`] of them, start with the same three
    /// bytes, their hash tag, so they share a slot: sessions created together
    /// go in one call and one transaction. The run's first ID is a plain draw,
    /// so slots, and nodes, get new sessions in proportion. Each ID keeps 232
    /// fresh bits; what the run's head tells of it is its slot, as for any ID
    /// whose key is known, and that it was made near the others of the run.
    /// A run ends early when the map moves its slot to another node.
    pub(super) fn new_id(
        &self,
        owners: Option<&[u16]>,
        slot_of: impl Fn(&SessionId) -> u16,
    ) -> SessionId {
        let Some(owners) = owners else {
            return SessionId::random();
        };
        let node_of = |id: &SessionId| owners.get(usize::from(slot_of(id))).copied();
        let place = per_thread(&PLACES, &self.token);
        let Place { head, node, left } = place.get();
        if left > 0 {
            let id = SessionId::random_under(head);
            if node_of(&id) == Some(node) {
                place.set(Place {
                    head,
                    node,
                    left: left - 1,
                });
                return id;
            }
        }
        // A new run, in the slot this ID names. A slot no node holds starts
        // no run.
        let id = SessionId::random();
        match node_of(&id).filter(|&n| n != u16::MAX) {
            Some(node) => place.set(Place {
                head: id.first_bytes(),
                node,
                left: RUN - 1,
            }),
            None => place.set(Place::default()),
        }
        id
    }

    /// Creates `session` with the others of this thread's batch.
    pub(super) async fn create<S: CreateMany>(
        &self,
        store: &S,
        session: NewSession,
    ) -> Result<(), StoreError> {
        let (answer, answered) = oneshot::channel();
        let batch = per_thread(&BATCHES, &self.token);
        let first = {
            let mut waiting = batch.lock().unwrap_or_else(PoisonError::into_inner);
            waiting.push(Waiting { session, answer });
            waiting.len() == 1
        };
        if first {
            tokio::spawn(send(store.clone(), batch));
        }
        answered.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "the call that creates the session ended unanswered".into(),
            ))
        })
    }
}

/// Takes the batch and creates its sessions: per node on a Cluster, at most
/// [`MOST`] per call, the calls at once.
async fn send<S: CreateMany>(store: S, batch: Batch) {
    let waiting = std::mem::take(&mut *batch.lock().unwrap_or_else(PoisonError::into_inner));
    let mut groups: Vec<(Option<u32>, Vec<Waiting>)> = Vec::new();
    for w in waiting {
        let call = store.call_of(&w.session.key);
        match groups
            .iter_mut()
            .find(|(c, group)| *c == call && group.len() < MOST)
        {
            Some((_, group)) => group.push(w),
            None => groups.push((call, vec![w])),
        }
    }
    let calls = groups.into_iter().map(|(_, group)| {
        let store = store.clone();
        async move {
            let (sessions, answers): (Vec<_>, Vec<_>) =
                group.into_iter().map(|w| (w.session, w.answer)).unzip();
            let results = store.create_many(&sessions).await;
            // A missing answer reads as "ended unanswered".
            for (answer, result) in answers.into_iter().zip(results) {
                let _ = answer.send(result);
            }
        }
    });
    futures_util::future::join_all(calls).await;
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// Records each call's keys; fails the calls that hold a key starting
    /// with `fail`; on a "Cluster", a key's node is its first character.
    #[derive(Clone, Default)]
    struct Fake {
        calls: Arc<Mutex<Vec<Vec<String>>>>,
        cluster: bool,
        in_flight: Arc<AtomicUsize>,
        most_at_once: Arc<AtomicUsize>,
    }

    impl CreateMany for Fake {
        async fn create_many(&self, sessions: &[NewSession]) -> Vec<Result<(), StoreError>> {
            let result = self.create(sessions).await;
            sessions
                .iter()
                .map(|_| result.as_ref().copied().map_err(StoreError::copied))
                .collect()
        }

        fn call_of(&self, key: &str) -> Option<u32> {
            self.cluster.then(|| u32::from(key.as_bytes()[0]))
        }

        fn spare(&self) -> (SessionId, String) {
            let id = SessionId::random();
            (id, id.to_string())
        }
    }

    impl Fake {
        async fn create(&self, sessions: &[NewSession]) -> Result<(), StoreError> {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_at_once.fetch_max(now, Ordering::SeqCst);
            let keys: Vec<String> = sessions.iter().map(|s| s.key.clone()).collect();
            self.calls.lock().unwrap().push(keys.clone());
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            if keys.iter().any(|k| k.starts_with("fail")) {
                return Err(StoreError::Unavailable("Redis said no".into()));
            }
            Ok(())
        }
    }

    fn session(key: &str) -> NewSession {
        NewSession {
            key: key.to_owned(),
            ttl: 1000,
            now: 1,
            data: SessionData::default(),
        }
    }

    /// Starts `keys`' creations on this thread at once; their answers in order.
    async fn create_all(
        creates: &Arc<Creates>,
        store: &Fake,
        keys: &[&str],
    ) -> Vec<Result<(), String>> {
        let calls = keys.iter().map(|k| {
            let (creates, store, s) = (creates.clone(), store.clone(), session(k));
            async move { creates.create(&store, s).await }
        });
        let answers = futures_util::future::join_all(calls).await;
        (answers.into_iter())
            .map(|r| r.map_err(|e| crate::chain::Chain(&e).to_string()))
            .collect()
    }

    #[tokio::test]
    async fn sessions_created_at_once_go_in_one_call() {
        let (creates, store) = (Arc::new(Creates::default()), Fake::default());
        let answers = create_all(&creates, &store, &["a", "b", "c", "d", "e"]).await;
        assert_eq!(answers, vec![Ok(()); 5]);
        assert_eq!(
            *store.calls.lock().unwrap(),
            vec![vec!["a", "b", "c", "d", "e"]]
        );
        // Later ones make a call of their own.
        let answers = create_all(&creates, &store, &["f"]).await;
        assert_eq!(answers, vec![Ok(())]);
        assert_eq!(store.calls.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_batch_goes_while_the_one_before_is_in_flight() {
        let (creates, store) = (Arc::new(Creates::default()), Fake::default());
        let first = create_all(&creates, &store, &["a", "b"]);
        let second = async {
            // The first batch's call is in flight (it takes 20 ms).
            tokio::time::sleep(Duration::from_millis(5)).await;
            create_all(&creates, &store, &["c"]).await
        };
        let (first, second) = tokio::join!(first, second);
        assert_eq!((first.len(), second), (2, vec![Ok(())]));
        assert_eq!(store.most_at_once.load(Ordering::SeqCst), 2);
        assert_eq!(store.calls.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_failed_call_answers_each_of_its_sessions_and_no_other() {
        let store = Fake {
            cluster: true,
            ..Fake::default()
        };
        let creates = Arc::new(Creates::default());
        // "fail1" and "fail2" share a node ('f'); "ok" is on another.
        let answers = create_all(&creates, &store, &["fail1", "ok", "fail2"]).await;
        assert_eq!(answers[1], Ok(()));
        for i in [0, 2] {
            let e = answers[i].as_ref().unwrap_err();
            assert!(e.contains("Redis said no"), "{e}");
        }
        let mut calls = store.calls.lock().unwrap().clone();
        calls.sort();
        assert_eq!(calls, vec![vec!["fail1", "fail2"], vec!["ok"]]);
    }

    #[tokio::test]
    async fn a_large_batch_goes_in_calls_of_at_most_the_most() {
        let (creates, store) = (Arc::new(Creates::default()), Fake::default());
        let keys: Vec<String> = (0..MOST * 2 + 1).map(|i| format!("k{i}")).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let answers = create_all(&creates, &store, &keys).await;
        assert_eq!(answers.len(), MOST * 2 + 1);
        assert!(answers.iter().all(Result::is_ok));
        let sizes: Vec<usize> = store.calls.lock().unwrap().iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![MOST, MOST, 1]);
        // At once, not one after the other.
        assert_eq!(store.most_at_once.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_request_dropped_while_it_waits_holds_back_no_other() {
        let (creates, store) = (Arc::new(Creates::default()), Fake::default());
        let start = |key: &'static str| {
            let (creates, store) = (creates.clone(), store.clone());
            tokio::spawn(async move { creates.create(&store, session(key)).await })
        };
        let (gone, kept) = (start("gone"), start("kept"));
        // Both are in the call, which takes 20 ms.
        tokio::time::sleep(Duration::from_millis(5)).await;
        gone.abort();
        assert!(kept.await.expect("not aborted").is_ok());
        assert_eq!(*store.calls.lock().unwrap(), vec![vec!["gone", "kept"]]);
    }

    /// A three-node map: slot `s` on node `s % 3`; an ID's slot from its
    /// first two bytes, as a hash tag of its start makes it.
    fn three_nodes() -> (Vec<u16>, impl Fn(&SessionId) -> u16) {
        let map = (0..16384u16).map(|s| s % 3).collect();
        let slot_of =
            |id: &SessionId| u16::from_be_bytes([id.as_bytes()[0], id.as_bytes()[1]]) % 16384;
        (map, slot_of)
    }

    #[test]
    fn a_threads_new_ids_share_a_slot_for_a_run_then_another_slot_is_drawn() {
        let creates = Creates::default();
        let (map, slot_of) = three_nodes();
        let node = |id: &SessionId| map[usize::from(slot_of(id))];
        let mut runs = Vec::new();
        for _ in 0..30 {
            let ids: Vec<SessionId> = (0..RUN)
                .map(|_| creates.new_id(Some(&map), &slot_of))
                .collect();
            // One slot, one head: one transaction for all of them.
            let head = ids[0].first_bytes();
            assert!(ids.iter().all(|id| id.first_bytes() == head));
            // The rest of each is its own draw.
            let rests: std::collections::HashSet<&[u8]> =
                ids.iter().map(|id| &id.as_bytes()[3..]).collect();
            assert_eq!(rests.len(), ids.len());
            runs.push(node(&ids[0]));
        }
        // The next run shares a head of its own.
        let next = creates.new_id(Some(&map), &slot_of);
        let last = creates.new_id(Some(&map), &slot_of);
        assert_eq!(next.first_bytes(), last.first_bytes());
        // Each run's node is its first ID's: all three turn up in 30 runs
        // (odds of one missing: 3 × (2/3)^30, below 10^-4).
        for n in 0..3 {
            assert!(runs.contains(&n), "no run on node {n}: {runs:?}");
        }
        // The IDs stay distinct.
        let ids: std::collections::HashSet<SessionId> = (0..1000)
            .map(|_| creates.new_id(Some(&map), &slot_of))
            .collect();
        assert_eq!(ids.len(), 1000);
    }

    #[test]
    fn a_run_ends_when_the_map_moves_its_slot_to_another_node() {
        let creates = Creates::default();
        let (map, slot_of) = three_nodes();
        let first = creates.new_id(Some(&map), &slot_of);
        let slot = usize::from(slot_of(&first));
        let mut moved = map.clone();
        moved[slot] = (moved[slot] + 1) % 3;
        let next = creates.new_id(Some(&moved), &slot_of);
        assert_ne!(next.first_bytes(), first.first_bytes(), "the run went on");
    }

    #[test]
    fn without_a_map_or_for_a_slot_no_node_holds_ids_are_plain_draws() {
        let creates = Creates::default();
        let (_, slot_of) = three_nodes();
        let nodes = |ids: &[SessionId], map: &[u16]| -> std::collections::HashSet<u16> {
            ids.iter().map(|id| map[usize::from(slot_of(id))]).collect()
        };
        let (map, _) = three_nodes();
        let ids: Vec<SessionId> = (0..60).map(|_| creates.new_id(None, &slot_of)).collect();
        assert_eq!(
            nodes(&ids, &map).len(),
            3,
            "60 plain draws fall on all three nodes"
        );
        // A map that names no node for any slot starts no run.
        let none = vec![u16::MAX; 16384];
        let ids: Vec<SessionId> = (0..60)
            .map(|_| creates.new_id(Some(&none), &slot_of))
            .collect();
        assert_eq!(nodes(&ids, &map).len(), 3);
    }

    #[test]
    fn each_store_draws_for_a_run_of_its_own() {
        let (map, slot_of) = three_nodes();
        let node = |id: &SessionId| map[usize::from(slot_of(id))];
        // Two stores on one thread: each keeps its own run, so interleaving
        // them breaks neither.
        let (a, b) = (Creates::default(), Creates::default());
        let mut on_a = Vec::new();
        let mut on_b = Vec::new();
        for _ in 0..20 {
            on_a.push(node(&a.new_id(Some(&map), &slot_of)));
            on_b.push(node(&b.new_id(Some(&map), &slot_of)));
        }
        assert!(on_a.iter().all(|&n| n == on_a[0]), "{on_a:?}");
        assert!(on_b.iter().all(|&n| n == on_b[0]), "{on_b:?}");
    }
}
