//! The Redis store's near cache, seen from outside: what it saves (round trips
//! Redis counts in `INFO commandstats`), and that it never keeps a proxy on a
//! session another proxy changed, destroyed, regenerated or revoked, on one
//! Redis and on a Redis Cluster.
//!
//! "At once" is checked against a bound well under the second an entry may
//! live: a cache that missed an invalidation would keep the old session for up
//! to that second, and the check would fail. Each change is made right after
//! the watching proxy cached the session anew, so the entry is fresh.

mod support;

use std::time::{Duration, Instant};

use sessiongate::config::RedisConfig;
use sessiongate::session::{
    Applied, Changes, Created, EventSink, Lookup, Policy, Reason, RedisStore, SessionCount,
    SessionData, SessionId, SessionStore,
};
use support::redis::{RedisCluster, RedisServer};

const POLICY: Policy = Policy {
    idle_timeout: Duration::from_secs(60),
    absolute_timeout: Duration::from_secs(3600),
    max_sessions: 10_000,
    max_data_bytes: 4096,
    regenerate_grace: Duration::ZERO,
    max_per_user: None,
};

/// Well under the second an entry may live without an invalidation.
const AT_ONCE: Duration = Duration::from_millis(300);

async fn store(url: &str, nodes: Vec<String>, prefix: &str, near_cache: bool) -> RedisStore {
    let settings = RedisConfig {
        url: url.to_owned(),
        key_prefix: prefix.to_owned(),
        timeout: Duration::from_secs(2),
        cluster: !nodes.is_empty(),
        nodes,
        sentinel: None,
        near_cache,
    };
    let store = RedisStore::open(&settings, Some("user"), EventSink::default(), 2)
        .await
        .expect("open the Redis store");
    store.ping().await.expect("Redis answers");
    store
}

fn prefix() -> String {
    format!("near:{}:", SessionId::random())
}

/// A Redis server and one proxy's store on it, under a prefix of its own.
async fn one_proxy(test: &str) -> Option<(RedisServer, String, RedisStore)> {
    let redis = RedisServer::start(test).await?;
    let p = prefix();
    let a = store(&redis.url(), Vec::new(), &p, true).await;
    Some((redis, p, a))
}

/// The session's key, as an operator's `redis-cli` would name it.
fn key(prefix: &str, id: &SessionId) -> String {
    let id = id.to_string();
    format!("{prefix}{{{}}}{}", &id[..4], &id[4..])
}

fn set(pairs: &str) -> Changes {
    let mut c = Changes::default();
    c.add_set(pairs.as_bytes()).expect("valid X-Session-Set");
    c
}

fn data(pairs: &[(&str, &str)]) -> SessionData {
    SessionData::from_pairs(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
}

async fn create(s: &RedisStore, pairs: &[(&str, &str)]) -> SessionId {
    match s.create(data(pairs), &POLICY).await.expect("store answers") {
        Created::Stored(id) => id,
        refused => panic!("session not created: {refused:?}"),
    }
}

/// What a load shows: the data, or how the session is gone.
async fn shown(s: &RedisStore, id: &SessionId) -> String {
    match s.load(id, &POLICY).await.expect("store answers") {
        Lookup::Found(view) => view
            .data
            .map(|d| d.to_str().unwrap().to_owned())
            .unwrap_or_default(),
        Lookup::Regenerated => "<regenerated>".into(),
        Lookup::Missing => "<missing>".into(),
    }
}

fn hits(s: &RedisStore) -> u64 {
    s.counters().get(SessionCount::NearHit)
}

/// Makes `watcher` hold `id` freshly: a write through it leaves the session
/// in its cache, and a load is then a hit. An entry lives until a second
/// after the session's last refresh in Redis, which a write within that
/// second does not move: on a loaded machine the load may come after it, and
/// then reads the session, refreshing it. So a few tries.
async fn cache_fresh(watcher: &RedisStore, id: &SessionId) {
    for _ in 0..3 {
        let applied = watcher
            .apply(id, &set("seen=1"), &POLICY)
            .await
            .expect("store answers");
        assert_eq!(applied, Applied::Stored);
        let before = hits(watcher);
        shown(watcher, id).await;
        if hits(watcher) == before + 1 {
            return;
        }
    }
    panic!("the watcher did not serve it from its cache");
}

/// Loads through `watcher` until it shows `expected`; how long that took.
async fn seen_at_once(watcher: &RedisStore, id: &SessionId, expected: &str, what: &str) {
    let start = Instant::now();
    loop {
        let now = shown(watcher, id).await;
        if now == expected {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{what}: the other proxy still shows {now:?}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = start.elapsed();
    assert!(
        took < AT_ONCE,
        "{what}: the other proxy kept the old session for {took:?} (an invalidation was missed)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_used_again_within_a_second_costs_no_round_trip() {
    let Some((redis, p, a)) =
        one_proxy("a_session_used_again_within_a_second_costs_no_round_trip").await
    else {
        return;
    };
    let id = create(&a, &[("color", "blue")]).await;
    // A new session is not cached (most new visitors never come back): its
    // first use reads it, and the next ones within the second are served here.
    let calls = redis.evalsha_calls().await;
    for _ in 0..20 {
        assert_eq!(shown(&a, &id).await, "color=blue");
    }
    assert_eq!(
        redis.evalsha_calls().await,
        calls + 1,
        "a session used a moment ago went to Redis again"
    );
    assert_eq!(hits(&a), 19);

    // A second on, the next use goes to Redis, which refreshes the idle timeout.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let pttl = || async {
        redis::from_redis_value::<i64>(redis.command(&["PTTL", &key(&p, &id)]).await).unwrap()
    };
    let before = pttl().await;
    assert_eq!(shown(&a, &id).await, "color=blue");
    assert_eq!(redis.evalsha_calls().await, calls + 2);
    let after = pttl().await;
    assert!(
        after > before,
        "the idle timeout was not refreshed: PTTL {before} then {after}"
    );

    // A write answers with the session as written: no round trip to read it back.
    assert_eq!(
        a.apply(&id, &set("size=L"), &POLICY).await.unwrap(),
        Applied::Stored
    );
    let calls = redis.evalsha_calls().await;
    assert_eq!(shown(&a, &id).await, "color=blue&size=L");
    assert_eq!(redis.evalsha_calls().await, calls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_near_cache_every_use_goes_to_redis() {
    let Some(redis) = RedisServer::start("without_the_near_cache_every_use_goes_to_redis").await
    else {
        return;
    };
    let a = store(&redis.url(), Vec::new(), &prefix(), false).await;
    let id = create(&a, &[("color", "blue")]).await;
    // The first use loads the script into Redis.
    assert_eq!(shown(&a, &id).await, "color=blue");
    let calls = redis.evalsha_calls().await;
    for _ in 0..5 {
        assert_eq!(shown(&a, &id).await, "color=blue");
    }
    assert_eq!(redis.evalsha_calls().await, calls + 5);
    assert_eq!(hits(&a), 0);
}

/// Every change one proxy can make, watched by another that holds the session.
async fn changes_reach_the_other_proxy_at_once(url: &str, nodes: Vec<String>) {
    let p = prefix();
    let a = store(url, nodes.clone(), &p, true).await;
    let b = store(url, nodes, &p, true).await;

    // A write.
    let id = create(&a, &[("user", "alice")]).await;
    cache_fresh(&b, &id).await;
    a.apply(&id, &set("color=blue"), &POLICY).await.unwrap();
    seen_at_once(&b, &id, "color=blue&seen=1&user=alice", "a write on A").await;

    // A removal.
    cache_fresh(&b, &id).await;
    let mut remove = Changes::default();
    remove.add_remove(b"color").unwrap();
    a.apply(&id, &remove, &POLICY).await.unwrap();
    seen_at_once(&b, &id, "seen=1&user=alice", "a removal on A").await;

    // A regeneration: the old ID is gone for B, the new one shows the data.
    cache_fresh(&b, &id).await;
    let mut regenerate = Changes::default();
    regenerate.regenerate = true;
    let Applied::Regenerated(new_id) = a.apply(&id, &regenerate, &POLICY).await.unwrap() else {
        panic!("not regenerated");
    };
    seen_at_once(&b, &id, "<missing>", "a regeneration on A (the old ID)").await;
    assert_eq!(shown(&b, &new_id).await, "seen=1&user=alice");
    let id = new_id;

    // A logout (X-Session-Destroy).
    cache_fresh(&b, &id).await;
    assert!(a.destroy(&id, Reason::Logout).await.unwrap());
    seen_at_once(&b, &id, "<missing>", "a logout on A").await;

    // DELETE /sessions/{id} on the admin API.
    let id = create(&a, &[("user", "bob")]).await;
    cache_fresh(&b, &id).await;
    assert!(a.destroy(&id, Reason::Admin).await.unwrap());
    seen_at_once(&b, &id, "<missing>", "DELETE /sessions/{id} on A").await;

    // DELETE /sessions?key=user&value=carol.
    let id = create(&a, &[("user", "carol")]).await;
    cache_fresh(&b, &id).await;
    assert_eq!(a.revoke("user", "carol").await.unwrap(), 1);
    seen_at_once(&b, &id, "<missing>", "a revoke on A").await;

    // DELETE /users/dave/sessions.
    let id = create(&a, &[("user", "dave")]).await;
    cache_fresh(&b, &id).await;
    assert_eq!(
        a.destroy_user("dave", None, Reason::Admin).await.unwrap(),
        1
    );
    seen_at_once(&b, &id, "<missing>", "logging a user out everywhere on A").await;

    // And the watcher's own writes are never undone by a read of its own.
    let id = create(&a, &[("n", "0")]).await;
    for n in 1..=20 {
        let write = set(&format!("n={n}"));
        let (x, y) = tokio::join!(b.apply(&id, &write, &POLICY), b.load(&id, &POLICY));
        assert_eq!(x.unwrap(), Applied::Stored);
        y.unwrap();
        assert_eq!(shown(&b, &id).await, format!("n={n}"), "write {n} undone");
        seen_at_once(&a, &id, &format!("n={n}"), "a write on B").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_on_one_proxy_reach_another_at_once() {
    let Some(redis) = RedisServer::start("changes_on_one_proxy_reach_another_at_once").await else {
        return;
    };
    changes_reach_the_other_proxy_at_once(&redis.url(), Vec::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_on_one_proxy_reach_another_at_once_on_a_cluster() {
    let Some(cluster) =
        RedisCluster::start("changes_on_one_proxy_reach_another_at_once_on_a_cluster").await
    else {
        return;
    };
    let urls = cluster.urls();
    changes_reach_the_other_proxy_at_once(&urls[0], urls.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_in_redis_itself_reach_the_proxy_at_once() {
    let Some((redis, p, a)) =
        one_proxy("changes_made_in_redis_itself_reach_the_proxy_at_once").await
    else {
        return;
    };

    // An operator's HSET, DEL and FLUSHALL in redis-cli.
    let id = create(&a, &[("role", "user")]).await;
    cache_fresh(&a, &id).await;
    redis
        .command(&["HSET", &key(&p, &id), "d:role", "admin"])
        .await;
    seen_at_once(&a, &id, "role=admin&seen=1", "HSET in redis-cli").await;
    cache_fresh(&a, &id).await;
    redis.command(&["DEL", &key(&p, &id)]).await;
    seen_at_once(&a, &id, "<missing>", "DEL in redis-cli").await;
    let id = create(&a, &[("role", "user")]).await;
    cache_fresh(&a, &id).await;
    redis.command(&["FLUSHALL"]).await;
    seen_at_once(&a, &id, "<missing>", "FLUSHALL in redis-cli").await;

    // Expiry by Redis (the key's TTL, shortened here to 50 ms).
    let id = create(&a, &[("role", "user")]).await;
    cache_fresh(&a, &id).await;
    redis.command(&["PEXPIRE", &key(&p, &id), "50"]).await;
    let start = Instant::now();
    while shown(&a, &id).await != "<missing>" {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "an expired key is still served"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        start.elapsed() < AT_ONCE + Duration::from_millis(50),
        "an expired key was served for {:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_empties_the_near_cache() {
    let Some((redis, p, a)) = one_proxy("a_lost_connection_empties_the_near_cache").await else {
        return;
    };
    let id = create(&a, &[("role", "user")]).await;
    cache_fresh(&a, &id).await;
    // Redis drops every client; the key then changes while nobody tracks it.
    redis
        .command(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"])
        .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    redis
        .command(&["HSET", &key(&p, &id), "d:role", "admin"])
        .await;
    seen_at_once(
        &a,
        &id,
        "role=admin&seen=1",
        "a change after a reconnection",
    )
    .await;
}

/// The proxy that destroys or regenerates a session it holds never serves the
/// old one again, not even to the very next lookup: Redis does not tell a
/// proxy of its own changes (`NOLOOP`), so its cache must settle them itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_never_serves_what_it_destroyed_or_moved_itself() {
    let Some((_redis, _p, a)) =
        one_proxy("a_proxy_never_serves_what_it_destroyed_or_moved_itself").await
    else {
        return;
    };
    let id = create(&a, &[("role", "user")]).await;
    cache_fresh(&a, &id).await;
    assert!(a.destroy(&id, Reason::Logout).await.unwrap());
    assert_eq!(shown(&a, &id).await, "<missing>", "after its own destroy");

    let id = create(&a, &[("role", "user")]).await;
    cache_fresh(&a, &id).await;
    let mut regenerate = set("step=2");
    regenerate.regenerate = true;
    let Applied::Regenerated(new_id) = a.apply(&id, &regenerate, &POLICY).await.unwrap() else {
        panic!("not regenerated");
    };
    assert_eq!(
        shown(&a, &id).await,
        "<missing>",
        "the old ID after its own regeneration"
    );
    assert_eq!(shown(&a, &new_id).await, "role=user&seen=1&step=2");
    // And the new ID is then served from the cache.
    let before = hits(&a);
    assert_eq!(shown(&a, &new_id).await, "role=user&seen=1&step=2");
    assert_eq!(hits(&a), before + 1, "the new ID was not cached");
}

/// A proxy's own writes stop Redis tracking a key for it (`NOLOOP`); each
/// script that writes and keeps the session cached reads the key again last,
/// so it is tracked anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxys_own_writes_keep_the_session_tracked() {
    let Some((redis, p, a)) = one_proxy("a_proxys_own_writes_keep_the_session_tracked").await
    else {
        return;
    };

    // Created here, then used: cached, and tracked.
    let id = create(&a, &[("role", "user")]).await;
    assert_eq!(shown(&a, &id).await, "role=user");
    let before = hits(&a);
    assert_eq!(shown(&a, &id).await, "role=user");
    assert_eq!(hits(&a), before + 1);
    redis
        .command(&["HSET", &key(&p, &id), "d:role", "admin"])
        .await;
    seen_at_once(&a, &id, "role=admin", "a change after the creation").await;

    // A second on, a use refreshes the idle timeout (a write of this proxy).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(shown(&a, &id).await, "role=admin");
    let before = hits(&a);
    assert_eq!(shown(&a, &id).await, "role=admin");
    assert_eq!(hits(&a), before + 1, "the refreshed session was not cached");
    redis
        .command(&["HSET", &key(&p, &id), "d:role", "guest"])
        .await;
    seen_at_once(&a, &id, "role=guest", "a change after a refresh").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_a_session_held_here_is_worked_out_here() {
    let Some((redis, p, a)) = one_proxy("a_write_to_a_session_held_here_is_worked_out_here").await
    else {
        return;
    };
    let b = store(&redis.url(), Vec::new(), &p, true).await;
    let id = create(&a, &[("color", "blue"), ("size", "M")]).await;
    assert_eq!(shown(&a, &id).await, "color=blue&size=M");

    // Held in A's cache, the session is at a stamp Redis can check: each write
    // costs Redis a look at the stamp, not a read of the whole session.
    let reads = redis.calls("hgetall").await;
    let calls = redis.evalsha_calls().await;
    let mut remove = Changes::default();
    remove.add_remove(b"color").unwrap();
    let writes = [
        set("n=1"),
        set("n=2&note=a+b%26c"),
        remove,
        set("user=alice"),
        set("n=3&color=red"),
    ];
    for write in &writes {
        assert_eq!(a.apply(&id, write, &POLICY).await.unwrap(), Applied::Stored);
    }
    assert_eq!(redis.evalsha_calls().await, calls + writes.len() as u64);
    assert_eq!(
        redis.calls("hgetall").await,
        reads,
        "a write to a session held here read it in Redis"
    );

    // What A worked out is what Redis holds: A serves it from its cache, B
    // (which holds nothing) reads it from Redis.
    let expected = "color=red&n=3&note=a+b%26c&size=M&user=alice";
    let hits_before = hits(&a);
    assert_eq!(shown(&a, &id).await, expected);
    assert_eq!(hits(&a), hits_before + 1, "A did not keep what it wrote");
    assert_eq!(shown(&b, &id).await, expected);
    // The login was filed under its user.
    let listed = b.user_sessions("alice").await.unwrap();
    assert_eq!(listed.len(), 1, "alice's sessions: {listed:?}");
    assert_eq!(listed[0].id, id);

    // A write that would pass the size limit goes to Redis, which refuses it.
    let big = set(&format!("big={}", "x".repeat(POLICY.max_data_bytes)));
    assert!(matches!(
        a.apply(&id, &big, &POLICY).await.unwrap(),
        Applied::TooLarge { .. }
    ));
    assert_eq!(shown(&b, &id).await, expected);
}

/// Two proxies write one session in turn, each right after the other, near
/// the size limit: a proxy whose copy another's write has just made stale
/// (its invalidation not yet handled) must not work the write out from it.
/// Redis sees the stamp moved, and checks the size and merges itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_from_a_copy_another_proxy_made_stale_is_checked_by_redis() {
    let Some((redis, p, a)) =
        one_proxy("a_write_from_a_copy_another_proxy_made_stale_is_checked_by_redis").await
    else {
        return;
    };
    let b = store(&redis.url(), Vec::new(), &p, true).await;
    // Each value takes about 40% of the limit: any two fit, three do not.
    let value = |c: char| c.to_string().repeat(POLICY.max_data_bytes * 2 / 5);
    let mut refused = 0;
    for round in 0..40 {
        let id = create(&a, &[]).await;
        let write = |k: &str, c: char| set(&format!("{k}={}", value(c)));
        assert_eq!(
            a.apply(&id, &write("a", 'a'), &POLICY).await.unwrap(),
            Applied::Stored
        );
        assert_eq!(shown(&a, &id).await, format!("a={}", value('a')));
        // B adds a second value; then at once A a third, from its copy that
        // holds only the first.
        assert_eq!(
            b.apply(&id, &write("b", 'b'), &POLICY).await.unwrap(),
            Applied::Stored
        );
        match a.apply(&id, &write("c", 'c'), &POLICY).await.unwrap() {
            Applied::TooLarge { .. } => refused += 1,
            other => panic!("round {round}: a third value was {other:?}"),
        }
        let held = redis.command(&["HLEN", &key(&p, &id)]).await;
        // m:c, m:s, m:v, d:a, d:b.
        assert_eq!(
            redis::from_redis_value::<i64>(held).unwrap(),
            5,
            "round {round}"
        );
        assert_eq!(
            shown(&a, &id).await,
            format!("a={}&b={}", value('a'), value('b')),
            "round {round}: A's cache"
        );
    }
    assert_eq!(refused, 40);
}

/// Many requests at once for a session another proxy has just changed, as a
/// page's many requests come: one read of Redis answers them all, and each
/// is shown the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_at_once_after_a_change_elsewhere_cost_one_read() {
    let Some((redis, p, a)) =
        one_proxy("lookups_at_once_after_a_change_elsewhere_cost_one_read").await
    else {
        return;
    };
    let b = store(&redis.url(), Vec::new(), &p, true).await;
    let id = create(&a, &[]).await;
    for round in 1..=5 {
        cache_fresh(&b, &id).await;
        let invalidated = b.counters().get(SessionCount::NearInvalidated);
        let changed = set(&format!("n={round}"));
        assert_eq!(
            a.apply(&id, &changed, &POLICY).await.unwrap(),
            Applied::Stored
        );
        let start = Instant::now();
        while b.counters().get(SessionCount::NearInvalidated) == invalidated {
            assert!(
                start.elapsed() < Duration::from_secs(3),
                "round {round}: B was not told of A's write"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let expected = shown(&a, &id).await;
        assert!(expected.contains(&format!("n={round}")), "{expected}");
        let (hits_before, misses_before) = (hits(&b), b.counters().get(SessionCount::NearMiss));
        let scripts_before = redis.evalsha_calls().await;
        let seen = futures_util::future::join_all((0..20).map(|_| shown(&b, &id))).await;
        assert_eq!(seen.len(), 20);
        for (i, s) in seen.iter().enumerate() {
            assert_eq!(s, &expected, "round {round}, request {i}");
        }
        assert_eq!(
            redis.evalsha_calls().await - scripts_before,
            1,
            "round {round}: Redis read the session more than once"
        );
        assert_eq!(b.counters().get(SessionCount::NearMiss) - misses_before, 1);
        assert_eq!(hits(&b) - hits_before, 19);
    }
}

/// A change another proxy made while this proxy's write was on its way to
/// Redis: the invalidation reaches this proxy before its write's answer, yet
/// the write ran after the change, so its answer is the session as it now is
/// and stays in the cache (the write's fence, on a channel of the
/// connection's own, says so). The next lookup is a hit, and shows both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_ran_after_a_change_announced_meanwhile_stays_cached() {
    let Some((redis, p, a)) =
        one_proxy("a_write_that_ran_after_a_change_announced_meanwhile_stays_cached").await
    else {
        return;
    };
    let b = store(&redis.url(), Vec::new(), &p, true).await;
    for round in 1..=3 {
        // A session of its own each round: an entry lives a second at most
        // after the session's last refresh.
        let id = create(&a, &[]).await;
        cache_fresh(&b, &id).await;
        let invalidated = b.counters().get(SessionCount::NearInvalidated);
        // Another writer changes the session as a proxy would (a data field
        // and the stamp), then keeps Redis busy for 300 ms: B's write, sent
        // meanwhile, runs after it, and the invalidation waits in Redis's
        // output to B until then, ahead of the write's answer.
        let change = format!(
            "redis.call('HSET', KEYS[1], 'd:x', '{round}') \
             redis.call('HINCRBY', KEYS[1], 'm:v', 1) \
             local t = redis.call('TIME') \
             repeat local n = redis.call('TIME') \
             until (n[1] - t[1]) * 1000000 + (n[2] - t[2]) > 300000 \
             return 1"
        );
        let k = key(&p, &id);
        let eval = ["EVAL", &change, "1", &k];
        let (_, applied) = tokio::join!(redis.command(&eval), async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let write = set(&format!("y={round}"));
            b.apply(&id, &write, &POLICY).await
        });
        assert_eq!(applied.expect("store answers"), Applied::Stored);
        assert!(
            b.counters().get(SessionCount::NearInvalidated) > invalidated,
            "round {round}: B was not told of the change"
        );
        let (hits_before, scripts_before) = (hits(&b), redis.evalsha_calls().await);
        let seen = shown(&b, &id).await;
        assert!(
            seen.contains(&format!("x={round}")) && seen.contains(&format!("y={round}")),
            "round {round}: B shows {seen:?}"
        );
        assert_eq!(
            hits(&b),
            hits_before + 1,
            "round {round}: not from B's cache"
        );
        assert_eq!(redis.evalsha_calls().await, scripts_before);
    }
}

/// A Redis user whose ACL allows no channel: the connections of the near
/// cache have no fence channel, and everything else works as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_user_without_channels_still_gets_the_near_cache() {
    let Some(redis) =
        RedisServer::start("a_redis_user_without_channels_still_gets_the_near_cache").await
    else {
        return;
    };
    redis
        .command(&[
            "ACL",
            "SETUSER",
            "nochannels",
            "on",
            ">pw-0123456789",
            "~*",
            "+@all",
            "resetchannels",
        ])
        .await;
    let url = redis
        .url()
        .replacen("redis://", "redis://nochannels:pw-0123456789@", 1);
    let p = prefix();
    let (a, b) = (
        store(&url, Vec::new(), &p, true).await,
        store(&url, Vec::new(), &p, true).await,
    );
    let id = create(&a, &[("color", "blue")]).await;
    cache_fresh(&b, &id).await;
    assert_eq!(
        a.apply(&id, &set("color=green"), &POLICY).await.unwrap(),
        Applied::Stored
    );
    seen_at_once(&b, &id, "color=green&seen=1", "a write through A").await;
    assert_eq!(
        b.apply(&id, &set("size=9"), &POLICY).await.unwrap(),
        Applied::Stored
    );
    cache_fresh(&b, &id).await;
    assert_eq!(shown(&a, &id).await, "color=green&seen=1&size=9");
}
