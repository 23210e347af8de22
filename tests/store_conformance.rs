//! One conformance suite, written once as functions generic over
//! `S: SessionStore`, run against every store: the memory store, the Redis store
//! on one `redis-server` (with its near cache, and without), and the Redis store
//! on a three-node Redis Cluster and on a master found through Redis Sentinel.
//!
//! Expiry can only be seen by letting real time pass, so the suite uses an idle
//! timeout of 2s and an absolute one of 4s. A session must live at least its
//! timeout and may take up to a second longer to go (the memory store keeps
//! seconds; the Redis store refreshes a TTL at most once a second): "gone" is
//! checked 1.5s past the timeout, "alive" well inside it.

mod support;

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sessiongate::config::{RedisConfig, SentinelConfig};
use sessiongate::session::memory::MemoryStore;
use sessiongate::session::{
    Applied, Changes, Created, Event, EventCounters, EventKind, EventSink, Lookup, Policy, Reason,
    RedisStore, SessionData, SessionId, SessionStore,
};
use support::redis::{RedisCluster, RedisSentinel, RedisServer};

const IDLE: Duration = Duration::from_secs(2);
const ABSOLUTE: Duration = Duration::from_secs(4);
const GRACE: Duration = Duration::from_secs(2);
const MAX_DATA_BYTES: usize = 256;
/// How far past a timeout a session may still be seen.
const LATE: Duration = Duration::from_millis(1500);
/// What every call of the suite is made under.
const POLICY: Policy = Policy {
    idle_timeout: IDLE,
    absolute_timeout: ABSOLUTE,
    max_sessions: 10_000,
    max_data_bytes: MAX_DATA_BYTES,
    regenerate_grace: GRACE,
    max_per_user: None,
};

/// What every case needs of a store: the trait, and handles it can share.
trait Conforming: SessionStore + Clone {}
impl<S: SessionStore + Clone> Conforming for S {}

// ---------------------------------------------------------------------------
// The stores.
// ---------------------------------------------------------------------------

/// The data key every store of the suite indexes sessions by.
const USER_KEY: &str = "user";

fn memory_store() -> MemoryStore {
    MemoryStore::with(Some(USER_KEY), EventSink::default())
}

/// A key prefix of its own for each case, so cases can share one Redis.
fn unique_prefix() -> String {
    format!("conformance:{}:", SessionId::random())
}

async fn redis_store(url: &str, nodes: Vec<String>) -> RedisStore {
    redis_store_on(url, nodes, &unique_prefix(), EventSink::default()).await
}

/// The Redis store with `store.redis.near_cache: false`.
async fn uncached_redis_store(url: &str) -> RedisStore {
    open(
        &settings(url, &unique_prefix(), false),
        EventSink::default(),
    )
    .await
}

/// A Redis store under `prefix`: two of them on one prefix are two proxies.
async fn redis_store_on(
    url: &str,
    nodes: Vec<String>,
    prefix: &str,
    events: EventSink,
) -> RedisStore {
    let settings = RedisConfig {
        cluster: !nodes.is_empty(),
        nodes,
        ..settings(url, prefix, true)
    };
    open(&settings, events).await
}

/// One Redis at `url`, keys under `prefix`.
fn settings(url: &str, prefix: &str, near_cache: bool) -> RedisConfig {
    RedisConfig {
        url: url.to_owned(),
        key_prefix: prefix.to_owned(),
        timeout: Duration::from_secs(2),
        cluster: false,
        nodes: Vec::new(),
        sentinel: None,
        near_cache,
    }
}

/// The store `settings` describe, once Redis answers.
async fn open(settings: &RedisConfig, events: EventSink) -> RedisStore {
    let store = RedisStore::open(settings, Some(USER_KEY), events, 2)
        .await
        .expect("open the Redis store");
    store.ping().await.expect("Redis answers");
    store
}

// ---------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------

fn set(pairs: &str) -> Changes {
    let mut c = Changes::default();
    c.add_set(pairs.as_bytes()).expect("valid X-Session-Set");
    c
}

fn remove(keys: &str) -> Changes {
    let mut c = Changes::default();
    c.add_remove(keys.as_bytes())
        .expect("valid X-Session-Remove");
    c
}

fn regenerate(mut c: Changes) -> Changes {
    c.regenerate = true;
    c
}

fn data(pairs: &[(&str, &str)]) -> SessionData {
    SessionData::from_pairs(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A new session holding `data`, failing when the store refuses it.
async fn create(store: &impl SessionStore, data: SessionData) -> SessionId {
    match store.create(data, &POLICY).await.expect("store answers") {
        Created::Stored(id) => id,
        refused => panic!("session not created: {refused:?}"),
    }
}

/// The session's `X-Session-Data`, failing when it is not found.
async fn found(store: &impl SessionStore, id: &SessionId, why: &str) -> String {
    match store.load(id, &POLICY).await.expect("store answers") {
        Lookup::Found(view) => view
            .data
            .map(|d| d.to_str().unwrap().to_owned())
            .unwrap_or_default(),
        other => panic!("session not found ({why}): {other:?}"),
    }
}

async fn assert_missing(store: &impl SessionStore, id: &SessionId, why: &str) {
    let lookup = store.load(id, &POLICY).await.expect("store answers");
    assert!(matches!(lookup, Lookup::Missing), "{why}: {lookup:?}");
}

/// Waits until 850ms past a wall-clock second: the worst case for a store that
/// keeps whole seconds, so an early expiry shows on every run.
async fn late_in_a_wall_clock_second() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let wait = (1850 - u64::from(now.subsec_millis())) % 1000;
    tokio::time::sleep(Duration::from_millis(wait)).await;
}

// ---------------------------------------------------------------------------
// The cases.
// ---------------------------------------------------------------------------

async fn create_then_load<S: Conforming>(s: S) {
    let before = now_ms();
    let empty = create(&s, SessionData::default()).await;
    let full = create(&s, data(&[("user", "alice"), ("n", "1")])).await;
    assert_ne!(empty, full);
    assert_eq!(found(&s, &empty, "just created").await, "");
    assert_eq!(found(&s, &full, "just created").await, "n=1&user=alice");
    let Lookup::Found(view) = s.load(&full, &POLICY).await.unwrap() else {
        panic!("just created")
    };
    assert!(
        view.created_ms + 1000 >= before && view.created_ms <= now_ms() + 1000,
        "created_ms {} is not now ({before})",
        view.created_ms
    );
    assert_missing(&s, &SessionId::random(), "never created").await;
}

/// A first write of many keys keeps every one, more than a script could hand
/// one Redis command at once (Lua's `unpack`).
async fn a_session_created_with_many_keys_keeps_them_all<S: Conforming>(s: S) {
    let policy = Policy {
        max_data_bytes: 64 * 1024,
        ..POLICY
    };
    let keys: Vec<(String, String)> = (0..1501)
        .map(|i| (format!("k{i}"), i.to_string()))
        .collect();
    let data = SessionData::from_pairs(keys.iter().cloned());
    let expected = data.header().expect("data").to_str().unwrap().to_owned();
    let id = match s.create(data, &policy).await.expect("store answers") {
        Created::Stored(id) => id,
        refused => panic!("session not created: {refused:?}"),
    };
    let Lookup::Found(view) = s.load(&id, &policy).await.expect("store answers") else {
        panic!("just created")
    };
    let got = view.data.map(|d| d.to_str().unwrap().to_owned());
    assert_eq!(got.as_deref().map(|d| d.split('&').count()), Some(1501));
    assert_eq!(got.as_deref(), Some(expected.as_str()));
}

async fn set_and_remove_per_key<S: Conforming>(s: S) {
    let id = create(&s, SessionData::default()).await;
    assert_eq!(
        s.apply(&id, &set("a=1&b=2"), &POLICY).await.unwrap(),
        Applied::Stored
    );
    assert_eq!(found(&s, &id, "written").await, "a=1&b=2");
    let mut c = remove("a");
    c.add_set(b"c=3").unwrap();
    assert_eq!(s.apply(&id, &c, &POLICY).await.unwrap(), Applied::Stored);
    assert_eq!(found(&s, &id, "written").await, "b=2&c=3");
    // Removed and set by one response: set wins.
    let mut c = remove("b");
    c.add_set(b"b=new").unwrap();
    s.apply(&id, &c, &POLICY).await.unwrap();
    assert_eq!(found(&s, &id, "written").await, "b=new&c=3");
    // Text that needs encoding survives as is.
    s.apply(&id, &set("note=caf%C3%A9+%26+cr%C3%A8me&b=x%3Dy"), &POLICY)
        .await
        .unwrap();
    let info = s.inspect(&id).await.unwrap().expect("live session");
    assert_eq!(info.data.get("note"), Some("café & crème"));
    assert_eq!(info.data.get("b"), Some("x=y"));
    s.apply(&id, &remove("b, c, note, never-set"), &POLICY)
        .await
        .unwrap();
    assert_eq!(found(&s, &id, "emptied").await, "");
    assert_eq!(
        s.apply(&SessionId::random(), &set("a=1"), &POLICY)
            .await
            .unwrap(),
        Applied::Missing
    );
}

async fn concurrent_writers_of_different_keys_lose_nothing<S: Conforming>(s: S) {
    let id = create(&s, SessionData::default()).await;
    let writers: Vec<_> = (0..20)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.apply(&id, &set(&format!("k{i:02}=v")), &POLICY).await })
        })
        .collect();
    for w in writers {
        assert_eq!(w.await.unwrap().unwrap(), Applied::Stored);
    }
    let info = s.inspect(&id).await.unwrap().unwrap();
    assert_eq!(info.data.pairs().len(), 20, "a write was lost: {info:?}");
}

async fn oversized_write_is_refused_and_changes_nothing<S: Conforming>(s: S) {
    let id = create(&s, SessionData::default()).await;
    s.apply(&id, &set("a=1"), &POLICY).await.unwrap();
    // "a=1&v=" is 6 bytes; each "é" encodes to 6, each "-" to 1.
    let value_for = |bytes: usize| -> String {
        let room = bytes - 6;
        "é".repeat(room / 6) + &"-".repeat(room % 6)
    };
    let exactly = data(&[("a", "1"), ("v", &value_for(MAX_DATA_BYTES))]);
    assert_eq!(exactly.encoded_len(), MAX_DATA_BYTES);
    let pairs = exactly.header().unwrap().to_str().unwrap().to_owned();
    let v_only = pairs.split('&').nth(1).unwrap().to_owned();
    assert_eq!(
        s.apply(&id, &set(&v_only), &POLICY).await.unwrap(),
        Applied::Stored
    );
    assert_eq!(found(&s, &id, "at the limit").await, pairs);

    let over = format!("{v_only}&w=%20");
    let expected = SessionData::from_encoded(pairs.as_bytes())
        .with_changes(&set(&over))
        .encoded_len();
    assert_eq!(
        s.apply(&id, &set(&over), &POLICY).await.unwrap(),
        Applied::TooLarge { bytes: expected }
    );
    assert_eq!(found(&s, &id, "refused write").await, pairs, "data changed");

    // A removal that makes room, with a set, is judged on the result.
    let mut c = remove("v");
    c.add_set(b"w=ok").unwrap();
    assert_eq!(s.apply(&id, &c, &POLICY).await.unwrap(), Applied::Stored);
    assert_eq!(found(&s, &id, "shrunk").await, "a=1&w=ok");
}

async fn destroy<S: Conforming>(s: S) {
    let id = create(&s, data(&[("user", "alice")])).await;
    let other = create(&s, SessionData::default()).await;
    assert!(s.destroy(&id, Reason::Logout).await.unwrap());
    assert_missing(&s, &id, "destroyed").await;
    assert!(
        !s.destroy(&id, Reason::Logout).await.unwrap(),
        "destroyed twice"
    );
    assert_eq!(
        s.apply(&id, &set("a=1"), &POLICY).await.unwrap(),
        Applied::Missing
    );
    assert!(s.inspect(&id).await.unwrap().is_none());
    assert_eq!(found(&s, &other, "untouched").await, "");
}

async fn regenerate_moves_the_data_and_the_old_id_dies<S: Conforming>(s: S) {
    let old = create(&s, data(&[("cart", "3")])).await;
    let Applied::Regenerated(new) = s
        .apply(&old, &regenerate(set("user=alice")), &POLICY)
        .await
        .unwrap()
    else {
        panic!("not regenerated")
    };
    assert_ne!(new, old);
    assert_eq!(found(&s, &new, "regenerated").await, "cart=3&user=alice");
    assert!(
        matches!(s.load(&old, &POLICY).await.unwrap(), Lookup::Regenerated),
        "the old ID is remembered for the grace period"
    );
    assert_eq!(
        s.apply(&old, &set("a=1"), &POLICY).await.unwrap(),
        Applied::Missing
    );
    assert!(s.inspect(&old).await.unwrap().is_none());
    assert_eq!(s.count().await.unwrap(), 1);
    // A regeneration with nothing else to do moves the data too.
    let Applied::Regenerated(newer) = s
        .apply(&new, &regenerate(Changes::default()), &POLICY)
        .await
        .unwrap()
    else {
        panic!("not regenerated")
    };
    assert_eq!(found(&s, &newer, "regenerated").await, "cart=3&user=alice");
    // A refused write refuses the regeneration with it.
    let big = format!("big={}", "x".repeat(MAX_DATA_BYTES));
    assert!(matches!(
        s.apply(&newer, &regenerate(set(&big)), &POLICY)
            .await
            .unwrap(),
        Applied::TooLarge { .. }
    ));
    assert_eq!(found(&s, &newer, "refused").await, "cart=3&user=alice");

    tokio::time::sleep(GRACE + LATE).await;
    assert_missing(&s, &old, "past the grace period").await;
}

/// Writers race a regeneration: every write reported stored is in the new
/// session, and none lands anywhere else.
async fn regenerate_is_atomic_under_concurrent_writes<S: Conforming>(s: S) {
    let old = create(&s, SessionData::default()).await;
    let writers: Vec<_> = (0..30)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let result = s
                    .apply(&old, &set(&format!("w{i:02}=1")), &POLICY)
                    .await
                    .unwrap();
                (format!("w{i:02}"), result)
            })
        })
        .collect();
    let regenerated = {
        let s = s.clone();
        tokio::spawn(async move { s.apply(&old, &regenerate(set("user=alice")), &POLICY).await })
    };
    let Applied::Regenerated(new) = regenerated.await.unwrap().unwrap() else {
        panic!("not regenerated")
    };
    let info = s.inspect(&new).await.unwrap().expect("new session");
    assert_eq!(info.data.get("user"), Some("alice"));
    for w in writers {
        let (key, result) = w.await.unwrap();
        match result {
            Applied::Stored => assert!(
                info.data.get(&key).is_some(),
                "{key} was stored but did not move with the data"
            ),
            Applied::Missing => assert!(info.data.get(&key).is_none()),
            other => panic!("{key}: {other:?}"),
        }
    }
    let late = s.inspect(&new).await.unwrap().unwrap();
    assert_eq!(late.data, info.data, "a write landed after the move");
    assert!(s.inspect(&old).await.unwrap().is_none());
}

async fn idle_timeout_expires_an_unused_session<S: Conforming>(s: S) {
    let id = create(&s, SessionData::default()).await;
    tokio::time::sleep(IDLE + LATE).await;
    assert_missing(&s, &id, "idle past idle_timeout").await;
    assert!(s.inspect(&id).await.unwrap().is_none());
}

async fn use_keeps_a_session_past_the_idle_timeout<S: Conforming>(s: S) {
    late_in_a_wall_clock_second().await;
    let id = create(&s, SessionData::default()).await;
    for visit in 1..=3 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        found(&s, &id, &format!("visit {visit}, each within idle_timeout")).await;
    }
}

async fn absolute_timeout_expires_a_session_in_use<S: Conforming>(s: S) {
    late_in_a_wall_clock_second().await;
    let id = create(&s, SessionData::default()).await;
    let created = tokio::time::Instant::now();
    while created.elapsed() < ABSOLUTE - Duration::from_millis(900) {
        tokio::time::sleep(Duration::from_millis(700)).await;
        found(&s, &id, "younger than absolute_timeout").await;
    }
    tokio::time::sleep_until(created + ABSOLUTE + LATE).await;
    assert_missing(&s, &id, "older than absolute_timeout").await;
}

/// A reload shortens both timeouts: sessions made under the old policy are held
/// to the new idle and the new absolute timeout at their next use, together.
async fn a_new_policy_applies_both_timeouts_at_the_next_use<S: Conforming>(s: S) {
    let old = Policy {
        idle_timeout: Duration::from_secs(60),
        absolute_timeout: Duration::from_secs(60),
        ..POLICY
    };
    let new = Policy {
        idle_timeout: Duration::from_secs(1),
        absolute_timeout: Duration::from_secs(3),
        ..POLICY
    };
    let create_old = || async {
        match s.create(SessionData::default(), &old).await.unwrap() {
            Created::Stored(id) => id,
            refused => panic!("{refused:?}"),
        }
    };
    late_in_a_wall_clock_second().await;
    let (used, left) = (create_old().await, create_old().await);
    let created = tokio::time::Instant::now();
    let mut left_checked = false;
    // Used every 0.7 s: never idle for the new idle timeout.
    while created.elapsed() < new.absolute_timeout + LATE {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let lookup = s.load(&used, &new).await.unwrap();
        if created.elapsed() < new.absolute_timeout - Duration::from_millis(900) {
            assert!(matches!(lookup, Lookup::Found(_)), "in use: {lookup:?}");
        }
        if !left_checked && created.elapsed() >= new.idle_timeout + LATE {
            let lookup = s.load(&left, &new).await.unwrap();
            assert!(
                matches!(lookup, Lookup::Missing),
                "idle past the new idle timeout: {lookup:?}"
            );
            left_checked = true;
        }
    }
    let lookup = s.load(&used, &new).await.unwrap();
    assert!(
        matches!(lookup, Lookup::Missing),
        "in use, but older than the new absolute timeout: {lookup:?}"
    );
}

async fn an_oversized_first_write_stores_nothing<S: Conforming>(s: S) {
    let big = data(&[("big", &"x".repeat(MAX_DATA_BYTES))]);
    let refused = s.create(big, &POLICY).await.unwrap();
    assert_eq!(
        refused,
        Created::TooLarge {
            bytes: MAX_DATA_BYTES + 4
        }
    );
    assert_eq!(s.count().await.unwrap(), 0);
}

async fn revoke_and_find_by_key_and_value<S: Conforming>(s: S) {
    let who = "alice & co";
    let a1 = create(&s, data(&[("user", who), ("n", "1")])).await;
    let a2 = create(&s, SessionData::default()).await;
    s.apply(&a2, &set("user=alice+%26+co"), &POLICY)
        .await
        .unwrap();
    let bob = create(&s, data(&[("user", "bob")])).await;
    let nobody = create(&s, data(&[("name", who)])).await;

    let mut want = vec![a1, a2];
    want.sort();
    let mut got = s.find("user", who).await.unwrap();
    got.sort();
    assert_eq!(got, want);
    assert!(
        s.find("user", "alice").await.unwrap().is_empty(),
        "prefix match"
    );

    assert_eq!(s.revoke("user", who).await.unwrap(), 2);
    assert_missing(&s, &a1, "revoked").await;
    assert_missing(&s, &a2, "revoked").await;
    assert_eq!(found(&s, &bob, "other value").await, "user=bob");
    found(&s, &nobody, "same value, other key").await;
    assert!(s.find("user", who).await.unwrap().is_empty());
    assert_eq!(s.revoke("user", who).await.unwrap(), 0);
}

async fn count_and_inspect<S: Conforming>(s: S) {
    assert_eq!(s.count().await.unwrap(), 0);
    let before = now_ms();
    let ids = [
        create(&s, SessionData::default()).await,
        create(&s, data(&[("k", "v")])).await,
        create(&s, SessionData::default()).await,
    ];
    assert_eq!(s.count().await.unwrap(), 3);
    s.destroy(&ids[0], Reason::Admin).await.unwrap();
    assert_eq!(s.count().await.unwrap(), 2);

    let info = s.inspect(&ids[1]).await.unwrap().expect("live session");
    assert_eq!(info.data, data(&[("k", "v")]));
    let after = now_ms();
    assert!(info.created_ms + 1000 >= before && info.created_ms <= after);
    assert!(info.last_seen_ms + 1000 >= info.created_ms && info.last_seen_ms <= after);
    assert!(s.inspect(&SessionId::random()).await.unwrap().is_none());
    s.ping().await.unwrap();
}

// ---------------------------------------------------------------------------
// The per-user index.
// ---------------------------------------------------------------------------

/// The IDs of the user's sessions, as the admin API lists them, sorted.
async fn of_user(s: &impl SessionStore, user: &str) -> Vec<SessionId> {
    let mut ids: Vec<SessionId> = (s.user_sessions(user).await.expect("store answers"))
        .iter()
        .map(|u| u.id)
        .collect();
    ids.sort();
    ids
}

fn sorted(mut ids: Vec<SessionId>) -> Vec<SessionId> {
    ids.sort();
    ids
}

async fn user_index_follows_write_regenerate_destroy_and_logout<S: Conforming>(s: S) {
    assert!(of_user(&s, "alice").await.is_empty(), "nobody yet");
    // Created logged in, and logged in by a write.
    let a = create(&s, data(&[("user", "alice")])).await;
    let b = create(&s, SessionData::default()).await;
    let anon = create(&s, data(&[("user", "")])).await;
    s.apply(&b, &set("user=alice&theme=dark"), &POLICY)
        .await
        .unwrap();
    assert_eq!(of_user(&s, "alice").await, sorted(vec![a, b]));
    assert!(
        of_user(&s, "").await.is_empty(),
        "an empty value is nobody: {anon:?}"
    );
    // Regenerated: the new ID replaces the old one.
    let Applied::Regenerated(b2) = s.apply(&b, &regenerate(set("n=1")), &POLICY).await.unwrap()
    else {
        panic!("regenerated")
    };
    assert_eq!(of_user(&s, "alice").await, sorted(vec![a, b2]));
    // Logged in as somebody else: moves to that user.
    s.apply(&a, &set("user=bob"), &POLICY).await.unwrap();
    assert_eq!(of_user(&s, "alice").await, vec![b2]);
    assert_eq!(of_user(&s, "bob").await, vec![a]);
    // Logged out by removing the key, and destroyed.
    s.apply(&b2, &remove("user"), &POLICY).await.unwrap();
    assert!(of_user(&s, "alice").await.is_empty());
    assert!(s.destroy(&a, Reason::Logout).await.unwrap());
    assert!(of_user(&s, "bob").await.is_empty());
    // What the list shows of a session.
    let c = create(
        &s,
        data(&[
            ("user", "carol"),
            (" sessiongate.ip", "192.0.2.7"),
            (" sessiongate.ua", "curl/8"),
        ]),
    )
    .await;
    let listed = s.user_sessions("carol").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, c);
    assert_eq!(listed[0].client_ip.as_deref(), Some("192.0.2.7"));
    assert_eq!(listed[0].user_agent.as_deref(), Some("curl/8"));
    assert!(
        listed[0].created_ms > 0 && listed[0].last_seen_ms >= listed[0].created_ms / 1000 * 1000
    );
}

async fn user_index_forgets_expired_sessions<S: Conforming>(s: S) {
    let a = create(&s, data(&[("user", "dave")])).await;
    assert_eq!(of_user(&s, "dave").await, vec![a]);
    tokio::time::sleep(IDLE + LATE).await;
    assert!(
        of_user(&s, "dave").await.is_empty(),
        "expired sessions are not listed"
    );
    assert_missing(&s, &a, "expired").await;
}

async fn destroy_user_ends_every_session_but_the_one_kept<S: Conforming>(s: S) {
    let ids: Vec<SessionId> = {
        let mut ids = Vec::new();
        for _ in 0..5 {
            ids.push(create(&s, data(&[("user", "erin")])).await);
        }
        ids
    };
    let other = create(&s, data(&[("user", "frank")])).await;
    let n = s
        .destroy_user("erin", Some(&ids[0]), Reason::Others)
        .await
        .unwrap();
    assert_eq!(n, 4);
    assert_eq!(of_user(&s, "erin").await, vec![ids[0]]);
    for id in &ids[1..] {
        assert_missing(&s, id, "destroyed with the user's others").await;
    }
    found(&s, &ids[0], "kept").await;
    assert_eq!(
        s.destroy_user("erin", None, Reason::Admin).await.unwrap(),
        1
    );
    assert_missing(&s, &ids[0], "destroyed with the user").await;
    assert_eq!(
        s.destroy_user("erin", None, Reason::Admin).await.unwrap(),
        0
    );
    assert_eq!(
        of_user(&s, "frank").await,
        vec![other],
        "other users untouched"
    );
}

async fn max_per_user_ends_the_least_recently_used<S: Conforming>(s: S) {
    let limited = Policy {
        max_per_user: Some(2),
        ..POLICY
    };
    let first = create(&s, data(&[("user", "gina")])).await;
    let second = create(&s, data(&[("user", "gina")])).await;
    // The first is used after the second: the second is now the least recent.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    found(&s, &first, "used").await;
    let third = match s.create(SessionData::default(), &limited).await.unwrap() {
        Created::Stored(id) => id,
        other => panic!("{other:?}"),
    };
    s.apply(&third, &set("user=gina"), &limited).await.unwrap();
    assert_eq!(of_user(&s, "gina").await, sorted(vec![first, third]));
    assert_missing(&s, &second, "the least recently used went").await;
}

async fn concurrent_logins_of_one_user_are_all_indexed<S: Conforming>(s: S) {
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(create(&s, SessionData::default()).await);
    }
    let logins: Vec<_> = ids
        .iter()
        .map(|id| {
            let (s, id) = (s.clone(), *id);
            tokio::spawn(async move { s.apply(&id, &set("user=hank"), &POLICY).await })
        })
        .collect();
    for l in logins {
        assert_eq!(l.await.unwrap().unwrap(), Applied::Stored);
    }
    assert_eq!(of_user(&s, "hank").await, sorted(ids.clone()));
    assert_eq!(
        s.destroy_user("hank", None, Reason::Admin).await.unwrap(),
        20
    );
    for id in &ids {
        assert_missing(&s, id, "logged out everywhere").await;
    }
}

// ---------------------------------------------------------------------------
// Every case against every store.
// ---------------------------------------------------------------------------

type Case<S> = fn(S) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// Every case, by name, for one store type.
fn cases<S: Conforming>() -> Vec<(&'static str, Case<S>)> {
    macro_rules! boxed {
        ($($name:ident),* $(,)?) => {
            vec![$((stringify!($name), (|s| Box::pin($name(s))) as Case<S>)),*]
        };
    }
    boxed![
        create_then_load,
        a_session_created_with_many_keys_keeps_them_all,
        set_and_remove_per_key,
        concurrent_writers_of_different_keys_lose_nothing,
        oversized_write_is_refused_and_changes_nothing,
        destroy,
        regenerate_moves_the_data_and_the_old_id_dies,
        regenerate_is_atomic_under_concurrent_writes,
        idle_timeout_expires_an_unused_session,
        use_keeps_a_session_past_the_idle_timeout,
        absolute_timeout_expires_a_session_in_use,
        a_new_policy_applies_both_timeouts_at_the_next_use,
        an_oversized_first_write_stores_nothing,
        revoke_and_find_by_key_and_value,
        count_and_inspect,
        user_index_follows_write_regenerate_destroy_and_logout,
        user_index_forgets_expired_sessions,
        destroy_user_ends_every_session_but_the_one_kept,
        max_per_user_ends_the_least_recently_used,
        concurrent_logins_of_one_user_are_all_indexed,
    ]
}

/// Runs the named case against a store made by `make` (`None`: skipped).
async fn run_case<S, F, Fut>(name: &str, make: F)
where
    S: Conforming,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Option<(S, Box<dyn std::any::Any + Send>)>>,
{
    let Some((store, _keep_alive)) = make().await else {
        return;
    };
    let (_, case) = cases::<S>()
        .into_iter()
        .find(|(n, _)| *n == name)
        .expect("case name");
    case(store).await;
}

async fn make_memory() -> Option<(MemoryStore, Box<dyn std::any::Any + Send>)> {
    Some((memory_store(), Box::new(())))
}

async fn make_redis(test: &str) -> Option<(RedisStore, Box<dyn std::any::Any + Send>)> {
    let server = RedisServer::start(test).await?;
    let store = redis_store(&server.url(), Vec::new()).await;
    Some((store, Box::new(server)))
}

async fn make_uncached_redis(test: &str) -> Option<(RedisStore, Box<dyn std::any::Any + Send>)> {
    let server = RedisServer::start(test).await?;
    let store = uncached_redis_store(&server.url()).await;
    Some((store, Box::new(server)))
}

/// One `#[tokio::test]` per case and store, so a failure names both.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::run_case(stringify!($case), super::make_memory).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let test = concat!("redis::", stringify!($case));
                    super::run_case(stringify!($case), || super::make_redis(test)).await;
                }
            )*
        }
        mod redis_without_near_cache {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let test = concat!("redis_without_near_cache::", stringify!($case));
                    super::run_case(stringify!($case), || super::make_uncached_redis(test)).await;
                }
            )*
        }
    };
}

conformance![
    create_then_load,
    a_session_created_with_many_keys_keeps_them_all,
    set_and_remove_per_key,
    concurrent_writers_of_different_keys_lose_nothing,
    oversized_write_is_refused_and_changes_nothing,
    destroy,
    regenerate_moves_the_data_and_the_old_id_dies,
    regenerate_is_atomic_under_concurrent_writes,
    idle_timeout_expires_an_unused_session,
    use_keeps_a_session_past_the_idle_timeout,
    absolute_timeout_expires_a_session_in_use,
    a_new_policy_applies_both_timeouts_at_the_next_use,
    an_oversized_first_write_stores_nothing,
    revoke_and_find_by_key_and_value,
    count_and_inspect,
    user_index_follows_write_regenerate_destroy_and_logout,
    user_index_forgets_expired_sessions,
    destroy_user_ends_every_session_but_the_one_kept,
    max_per_user_ends_the_least_recently_used,
    concurrent_logins_of_one_user_are_all_indexed,
];

/// A Cluster takes seconds to form: one Cluster runs every case at once, each
/// under its own key prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cluster_passes_every_case() {
    let Some(cluster) = RedisCluster::start("redis_cluster_passes_every_case").await else {
        return;
    };
    let urls = cluster.urls();
    every_case_at_once("the Cluster", || RedisConfig {
        cluster: true,
        nodes: urls.clone(),
        ..settings(&urls[0], &unique_prefix(), true)
    })
    .await;
}

/// The master a Sentinel names: every case at once, each under its own key
/// prefix, on the connections that follow a failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_sentinel_passes_every_case() {
    let Some(master) = RedisServer::start("redis_sentinel_passes_every_case").await else {
        return;
    };
    let sentinel = RedisSentinel::start("conformance", master.port()).await;
    every_case_at_once("Sentinel", || RedisConfig {
        sentinel: Some(SentinelConfig {
            master: "conformance".to_owned(),
            nodes: vec![sentinel.url()],
            username: None,
            password: None,
            tls: false,
        }),
        ..settings("", &unique_prefix(), true)
    })
    .await;
}

/// Runs every case at once, each on a store of its own opened with
/// `settings()`.
async fn every_case_at_once(on: &str, settings: impl Fn() -> RedisConfig) {
    let mut running = Vec::new();
    for (name, case) in cases::<RedisStore>() {
        let store = open(&settings(), EventSink::default()).await;
        running.push((name, tokio::spawn(case(store))));
    }
    let mut failed = Vec::new();
    for (name, task) in running {
        if task.await.is_err() {
            failed.push(name);
        }
    }
    assert!(failed.is_empty(), "cases failed on {on}: {failed:?}");
}

// ---------------------------------------------------------------------------
// Several proxies on one Redis, and events.
// ---------------------------------------------------------------------------

/// Three proxies log one user in at once, 10 sessions each: every proxy lists
/// all 30, and one of them logging the user out ends them for all.
async fn logins_from_several_proxies(url: &str, nodes: Vec<String>) {
    let prefix = unique_prefix();
    let mut proxies = Vec::new();
    for _ in 0..3 {
        proxies.push(redis_store_on(url, nodes.clone(), &prefix, EventSink::default()).await);
    }
    let mut tasks = Vec::new();
    for p in &proxies {
        for _ in 0..10 {
            let p = p.clone();
            tasks.push(tokio::spawn(async move {
                let id = create(&p, SessionData::default()).await;
                assert_eq!(
                    p.apply(&id, &set("user=ivy"), &POLICY).await.unwrap(),
                    Applied::Stored
                );
                id
            }));
        }
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    assert_eq!(ids.len(), 30);
    for p in &proxies {
        assert_eq!(of_user(p, "ivy").await, sorted(ids.clone()));
    }
    assert_eq!(
        proxies[2]
            .destroy_user("ivy", None, Reason::Admin)
            .await
            .unwrap(),
        30
    );
    for p in &proxies {
        assert!(of_user(p, "ivy").await.is_empty());
        assert_missing(p, &ids[0], "logged out everywhere").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_logins_from_several_proxies_are_all_indexed() {
    let Some(server) =
        RedisServer::start("redis_logins_from_several_proxies_are_all_indexed").await
    else {
        return;
    };
    logins_from_several_proxies(&server.url(), Vec::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cluster_logins_from_several_proxies_are_all_indexed() {
    let Some(cluster) = RedisCluster::start("redis_cluster_logins_from_several_proxies").await
    else {
        return;
    };
    let urls = cluster.urls();
    logins_from_several_proxies(&urls[0], urls.clone()).await;
}

/// The events a store emits while a session lives and ends, as the delivery
/// tasks would receive them.
async fn lifecycle_events<S: Conforming>(
    s: S,
    mut rx: tokio::sync::mpsc::Receiver<std::sync::Arc<Event>>,
) {
    let a = create(&s, data(&[("user", "jo")])).await;
    let Applied::Regenerated(a2) = s.apply(&a, &regenerate(set("x=1")), &POLICY).await.unwrap()
    else {
        panic!("regenerated")
    };
    assert!(s.destroy(&a2, Reason::Logout).await.unwrap());
    let b = create(&s, data(&[("user", "kim")])).await;
    let c = create(&s, data(&[("user", "kim")])).await;
    assert_eq!(
        s.destroy_user("kim", Some(&c), Reason::Others)
            .await
            .unwrap(),
        1
    );
    let d = create(&s, SessionData::default()).await;
    // Found past a shortened idle timeout (a reload): expired by the proxy,
    // which tells it. (Sessions Redis expires unseen by their TTL are not told.)
    let short = Policy {
        idle_timeout: Duration::from_secs(1),
        ..POLICY
    };
    tokio::time::sleep(Duration::from_millis(2600)).await;
    for (id, what) in [(d, "d"), (c, "c")] {
        let lookup = s.load(&id, &short).await.unwrap();
        assert!(
            matches!(lookup, Lookup::Missing),
            "{what} expired: {lookup:?}"
        );
    }
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while seen.len() < 9 {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(e)) => seen.push(e),
            _ => break,
        }
    }
    let tell = |e: &Event| (e.kind, e.session.clone(), e.user.clone(), e.reason);
    let got: Vec<_> = seen.iter().map(|e| tell(e)).collect();
    let want = |kind, id: &SessionId, user: Option<&str>, reason| {
        (kind, id.tag(), user.map(str::to_owned), reason)
    };
    for expected in [
        want(EventKind::Created, &a, Some("jo"), None),
        want(EventKind::Regenerated, &a2, Some("jo"), None),
        want(EventKind::Destroyed, &a2, Some("jo"), Some(Reason::Logout)),
        want(EventKind::Created, &b, Some("kim"), None),
        want(EventKind::Created, &c, Some("kim"), None),
        want(EventKind::Destroyed, &b, Some("kim"), Some(Reason::Others)),
        want(EventKind::Created, &d, None, None),
        want(EventKind::Expired, &d, None, Some(Reason::Idle)),
        want(EventKind::Expired, &c, Some("kim"), Some(Reason::Idle)),
    ] {
        assert!(got.contains(&expected), "missing {expected:?} in {got:?}");
    }
    let regenerated = seen
        .iter()
        .find(|e| e.kind == EventKind::Regenerated)
        .unwrap();
    assert_eq!(regenerated.previous.as_deref(), Some(a.tag().as_str()));
    for e in &seen {
        let mut line = Vec::new();
        e.write_line(&mut line);
        let text = String::from_utf8(line).unwrap();
        for id in [a, a2, b, c, d] {
            assert!(
                !text.contains(&id.to_string()),
                "an event never holds an ID: {text}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_tells_lifecycle_events() {
    let (sink, mut rx) = EventSink::new(100, &["test"], EventCounters::default());
    let store = MemoryStore::with(Some(USER_KEY), sink);
    lifecycle_events(store, rx.remove(0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_store_tells_lifecycle_events() {
    let Some(server) = RedisServer::start("redis_store_tells_lifecycle_events").await else {
        return;
    };
    let (sink, mut rx) = EventSink::new(100, &["test"], EventCounters::default());
    let store = redis_store_on(&server.url(), Vec::new(), &unique_prefix(), sink).await;
    lifecycle_events(store, rx.remove(0)).await;
}
