//! The Redis store through the proxy: several proxies sharing sessions on one
//! Redis and on a three-node Redis Cluster, Redis (or a Cluster's node) stopped,
//! stalled or not yet up (503 with Retry-After, never a new session, then
//! recovery on its own), and the key and TTL Redis keeps; a proxy whose clock is
//! off still stamps sessions with Redis's.
//!
//! Every test starts its own `redis-server` processes on free loopback ports and
//! kills them when it ends (tests/support/redis.rs).

mod support;

use std::time::Duration;

use support::redis::{start_proxy_with_admin, text, RedisCluster, RedisServer};
use support::*;

/// The app behind the proxies: `?set=k%3Dv` writes to the session, `/login`
/// writes `user=alice` and regenerates; every answer's body is the session data
/// the app was given.
async fn app() -> Upstream {
    Upstream::start(|seen| {
        let mut reply = Reply::ok().body(seen.session_data().unwrap_or("").to_owned());
        if let Some(pairs) = seen.query("set") {
            reply = reply.session_set(&pairs);
        }
        if seen.uri.path() == "/login" {
            reply = reply.session_set("user=alice").session_regenerate();
        }
        reply
    })
    .await
}

/// The app, and a proxy on `redis` without the near cache: every request
/// reads the session from Redis.
async fn uncached_proxy(redis: &RedisServer) -> (Upstream, Proxy) {
    let upstream = app().await;
    let proxy = Proxy::start(
        config(&upstream.url())
            .with_redis(&redis.url())
            .set("store.redis.near_cache", "false"),
    )
    .await;
    (upstream, proxy)
}

/// What the app saw on the last request.
fn app_saw(upstream: &Upstream) -> Seen {
    upstream.last()
}

async fn ready(admin: std::net::SocketAddr) -> u16 {
    plain_client()
        .get(format!("http://{admin}/readyz"))
        .send()
        .await
        .expect("admin answers")
        .status()
        .as_u16()
}

/// The full flow, on whatever Redis the two proxies share: a session made on A
/// is read and written on B, writes on both land, and a regeneration on A makes
/// the old cookie inert on B.
async fn two_proxies_share_sessions(a: &Proxy, b: &Proxy, upstream: &Upstream) {
    let browser = Browser::new();
    let first = browser.get(&a.url("/?set=color%3Dblue")).await;
    assert_eq!(first.status(), 200);
    let old_cookie = expect_session_cookie(first.headers());
    let seen = app_saw(upstream);
    assert!(seen.is_new_session());
    let id = seen.expect_session_id();

    // The same browser, sent to B by the load balancer.
    let on_b = browser.get(&b.url("/")).await;
    assert_eq!(on_b.status(), 200);
    assert!(
        session_set_cookie(on_b.headers()).is_none(),
        "B issued a new cookie"
    );
    let seen = app_saw(upstream);
    assert_eq!(
        seen.session_id(),
        Some(id.as_str()),
        "B did not find A's session"
    );
    assert!(!seen.is_new_session());
    assert_eq!(seen.session_data(), Some("color=blue"));

    // Written on B, read on A; then both write different keys at once.
    browser.get(&b.url("/?set=size%3DL")).await;
    assert_eq!(
        browser.get(&a.url("/")).await.text().await.unwrap(),
        "color=blue&size=L"
    );
    let (x, y) = tokio::join!(
        browser.get_owned(a.url("/?set=x%3D1")),
        browser.get_owned(b.url("/?set=y%3D2"))
    );
    assert_eq!((x.status().as_u16(), y.status().as_u16()), (200, 200));
    assert_eq!(
        browser.get(&b.url("/")).await.text().await.unwrap(),
        "color=blue&size=L&x=1&y=2",
        "a concurrent write was lost"
    );

    // Log in on A: the data moves to a new ID, which B knows at once.
    let login = browser.get(&a.url("/login")).await;
    let new_cookie = expect_session_cookie(login.headers());
    assert_ne!(new_cookie.id(), id);
    assert_eq!(
        browser.get(&b.url("/")).await.text().await.unwrap(),
        "color=blue&size=L&user=alice&x=1&y=2"
    );
    assert_eq!(app_saw(upstream).session_id(), Some(new_cookie.id()));

    // The old cookie, replayed on B: no session, no data, no new cookie.
    let replay = get_with_cookie(&b.url("/"), &old_cookie.pair()).await;
    assert_eq!(replay.status(), 200);
    assert!(session_set_cookie(replay.headers()).is_none());
    let seen = app_saw(upstream);
    assert!(
        seen.session_id() != Some(id.as_str()) && seen.session_id() != Some(new_cookie.id()),
        "the old cookie still reaches a session"
    );
    assert!(seen.data().is_empty(), "the old cookie still reads data");
}

#[tokio::test]
async fn two_proxies_on_one_redis_share_sessions() {
    let Some(redis) = RedisServer::start("two_proxies_on_one_redis_share_sessions").await else {
        return;
    };
    let upstream = app().await;
    let yaml = config(&upstream.url()).with_redis(&redis.url());
    let a = Proxy::start(yaml.clone()).await;
    let b = Proxy::start(yaml).await;
    two_proxies_share_sessions(&a, &b, &upstream).await;
}

#[tokio::test]
async fn two_proxies_on_a_redis_cluster_share_sessions() {
    let Some(cluster) = RedisCluster::start("two_proxies_on_a_redis_cluster_share_sessions").await
    else {
        return;
    };
    let upstream = app().await;
    let yaml = config(&upstream.url()).with_redis_cluster(&cluster.urls());
    let a = Proxy::start(yaml.clone()).await;
    let b = Proxy::start(yaml).await;
    two_proxies_share_sessions(&a, &b, &upstream).await;

    // Sessions spread over the primaries, in proportion to the slots each
    // holds (a third here). A worker's new IDs share a slot, 64 in a row, the
    // run's first a plain draw: 3,000 new visitors make at least 46 such
    // runs, and a node's share falls under a tenth with odds below 10^-4.
    let (client, url) = (plain_client(), a.url("/"));
    let visitors = 3000;
    let mut created = std::collections::HashSet::new();
    for _ in 0..visitors / 50 {
        let answers =
            futures_util::future::join_all((0..50).map(|_| client.get(&url).send())).await;
        for answer in answers {
            let answer = answer.expect("GET failed");
            assert_eq!(answer.status(), 200);
            created.insert(expect_session_cookie(answer.headers()).id().to_owned());
        }
    }
    assert_eq!(created.len(), visitors as usize, "a session ID came twice");
    let mut held = Vec::new();
    for node in cluster.nodes() {
        let ::redis::Value::Int(keys) = node.command(&["DBSIZE"]).await else {
            panic!("DBSIZE is not a number")
        };
        held.push(keys);
    }
    assert_eq!(held.len(), 3);
    assert!(
        held.iter().sum::<i64>() >= visitors,
        "sessions are missing: {held:?}"
    );
    assert!(
        held.iter().all(|&keys| keys >= visitors / 10),
        "the sessions did not spread over the nodes: {held:?}"
    );
}

/// An app that writes its whole session back on every response (as PHP does)
/// costs Redis nothing for the keys it did not change; a change is written.
#[tokio::test]
async fn a_write_that_changes_nothing_costs_no_call_to_redis() {
    let test = "a_write_that_changes_nothing_costs_no_call_to_redis";
    let Some(redis) = RedisServer::start(test).await else {
        return;
    };
    // Without the near cache every request reads the session from Redis: one
    // call each, and one more for each write.
    let (_upstream, proxy) = uncached_proxy(&redis).await;
    let browser = Browser::new();
    let url = |q: &str| proxy.url(&format!("/?set={q}"));
    assert_eq!(
        browser.get(&url("user%3Dalice%26n%3D1")).await.status(),
        200
    );
    let calls = redis.evalsha_calls().await;
    for _ in 0..10 {
        let response = browser.get(&url("user%3Dalice%26n%3D1")).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "n=1&user=alice");
    }
    assert_eq!(redis.evalsha_calls().await, calls + 10, "reads only");
    for n in 2..12 {
        let response = browser.get(&url(&format!("user%3Dalice%26n%3D{n}"))).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.text().await.unwrap(),
            format!("n={}&user=alice", n - 1)
        );
    }
    assert_eq!(
        redis.evalsha_calls().await,
        calls + 30,
        "a read and a write each"
    );
    let response = browser.get(&proxy.url("/")).await;
    assert_eq!(response.text().await.unwrap(), "n=11&user=alice");
}

/// A page that fires many requests at once, each writing the session: none
/// of the writes is lost, and those that wait for the one in flight go to
/// Redis as one call. Redis holds writes back for a moment (`CLIENT PAUSE`),
/// so that all of them wait for the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_one_session_at_once_go_to_redis_together_and_none_is_lost() {
    let test = "writes_to_one_session_at_once_go_to_redis_together_and_none_is_lost";
    let Some(redis) = RedisServer::start(test).await else {
        return;
    };
    let upstream = app().await;
    let proxy = Proxy::start(config(&upstream.url()).with_redis(&redis.url())).await;
    let browser = Browser::new();
    assert_eq!(browser.get(&proxy.url("/?set=n%3D0")).await.status(), 200);
    // Read once: the session is now in the proxy's near cache, so the reads
    // below need no call to Redis.
    assert_eq!(
        browser.get(&proxy.url("/")).await.text().await.unwrap(),
        "n=0"
    );
    let calls = redis.evalsha_calls().await;
    redis.command(&["CLIENT", "PAUSE", "400", "WRITE"]).await;
    let writes = (1..=20).map(|i| browser.get_owned(proxy.url(&format!("/?set=k{i:02}%3D{i}"))));
    let answers = futures_util::future::join_all(writes).await;
    assert_eq!(answers.len(), 20);
    for answer in answers {
        assert_eq!(answer.status(), 200);
    }
    let calls = redis.evalsha_calls().await - calls;
    // The first write alone, then the nineteen that waited for it as one
    // (and a read, if the cached copy's second ran out meanwhile).
    assert!(calls <= 3, "20 writes made {calls} calls to Redis");
    let held = browser.get(&proxy.url("/")).await.text().await.unwrap();
    let expected: Vec<String> = (1..=20).map(|i| format!("k{i:02}={i}")).collect();
    assert_eq!(held, format!("{}&n=0", expected.join("&")));
}

#[tokio::test]
async fn old_cookie_gets_a_fresh_session_after_the_grace_period() {
    let Some(redis) = RedisServer::start("old_cookie_gets_a_fresh_session_after_the_grace").await
    else {
        return;
    };
    let upstream = app().await;
    let yaml = config(&upstream.url())
        .with_redis(&redis.url())
        .set("session.regenerate_grace", "1s");
    let a = Proxy::start(yaml.clone()).await;
    let b = Proxy::start(yaml).await;
    let first = get_without_cookie(&a.url("/")).await;
    let old = expect_session_cookie(first.headers());
    let login = get_with_cookie(&a.url("/login"), &old.pair()).await;
    let new = expect_session_cookie(login.headers());

    tokio::time::sleep(Duration::from_millis(2500)).await;
    let replay = get_with_cookie(&b.url("/"), &old.pair()).await;
    let fresh = expect_session_cookie(replay.headers());
    assert!(fresh.id() != old.id() && fresh.id() != new.id());
    assert!(app_saw(&upstream).is_new_session());
    assert!(app_saw(&upstream).data().is_empty());
}

/// The connections Redis has accepted so far.
async fn connections_received(redis: &RedisServer) -> u64 {
    let info = text(&redis.command(&["INFO", "stats"]).await);
    info.lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("INFO stats has total_connections_received")
}

/// A burst of new visitors on a proxy that has no connection to Redis yet
/// opens one connection per worker thread, not one per request: a thundering
/// herd, on a Redis that has just come back, could meet `maxclients`.
#[tokio::test]
async fn a_burst_of_new_visitors_opens_one_connection_per_worker() {
    let test = "a_burst_of_new_visitors_opens_one_connection_per_worker";
    let Some(redis) = RedisServer::start(test).await else {
        return;
    };
    let upstream = app().await;
    let proxy = Proxy::start(config(&upstream.url()).with_redis(&redis.url())).await;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    const BURST: usize = 60;
    let url = proxy.url("/");
    let requests = (0..BURST).map(|_| {
        let url = url.clone();
        async move { get_without_cookie(&url).await }
    });
    let before = connections_received(&redis).await;
    let responses = futures_util::future::join_all(requests).await;
    // This count's own connection is the one more.
    let opened = connections_received(&redis).await - before - 1;
    assert_eq!(responses.len(), BURST);
    for r in &responses {
        assert_eq!(r.status(), 200);
        expect_session_cookie(r.headers());
    }
    assert_eq!(upstream.count(), BURST, "the app saw every visitor");
    assert!(
        opened <= workers,
        "{BURST} new visitors opened {opened} connections to Redis ({workers} workers)"
    );
}

/// New visitors whose pages the app answers at one moment are created in
/// Redis together: 40 sessions in a few transactions, not 40. Each is whole:
/// its own ID, its creation time, a TTL.
#[tokio::test]
async fn new_visitors_answered_at_once_are_created_in_few_transactions() {
    let test = "new_visitors_answered_at_once_are_created_in_few_transactions";
    let Some(redis) = RedisServer::start(test).await else {
        return;
    };
    let (gate, upstream) = held_app().await;
    let proxy = Proxy::start(config(&upstream.url()).with_redis(&redis.url())).await;
    const VISITORS: usize = 40;
    let took = bursts_until_batched(&proxy, &upstream, &gate, VISITORS, || async {
        redis.calls("exec").await
    })
    .await;

    let keys = created_sessions(&redis).await;
    assert_eq!(keys.len(), took.len() * VISITORS, "{keys:?}");
    assert!(
        took.iter().any(|&t| t > 0 && t <= (VISITORS / 2) as u64),
        "{VISITORS} new visitors answered at once took {took:?} transactions"
    );
}

/// Sends bursts of `visitors` new visitors, each answered at once (see
/// [`new_visitors_at_once`]), until one is created in at most half as many
/// transactions as visitors, three at most; the transactions (`exec`
/// counts them) each took, one entry a burst. Each visitor has a session
/// of its own. A burst is answered at one moment as far as the machine lets
/// it: on a loaded one the app's answers may trickle in, and sessions
/// created apart go apart. Bursts are 600 ms apart, so none is counted as a
/// flow for sessions made ahead (see `ready.rs`).
async fn bursts_until_batched<F, Fut>(
    proxy: &Proxy,
    upstream: &Upstream,
    gate: &Gate,
    visitors: usize,
    exec: F,
) -> Vec<u64>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = u64>,
{
    let mut took = Vec::new();
    while took.len() < 3 {
        if !took.is_empty() {
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        let before = exec().await;
        let responses = new_visitors_at_once(proxy, upstream, gate, visitors).await;
        let transactions = exec().await - before;
        assert_sessions_of_their_own(&responses);
        took.push(transactions);
        if transactions <= (visitors / 2) as u64 {
            break;
        }
    }
    took
}

/// The same on a Cluster: a worker's new IDs share a slot, 64 in a row, so
/// new visitors answered at once are created in a few transactions there
/// too, not one per session (a transaction's keys must share a slot).
#[tokio::test]
async fn new_visitors_answered_at_once_on_a_cluster_are_created_in_few_transactions() {
    let test = "new_visitors_answered_at_once_on_a_cluster_are_created_in_few_transactions";
    let Some(cluster) = RedisCluster::start(test).await else {
        return;
    };
    let (gate, upstream) = held_app().await;
    let proxy = Proxy::start(config(&upstream.url()).with_redis_cluster(&cluster.urls())).await;
    let execs = || async {
        let mut n = 0;
        for node in cluster.nodes() {
            n += node.calls("exec").await;
        }
        n
    };
    // The first visitors make the proxy learn which node holds which slot.
    let first = new_visitors_at_once(&proxy, &upstream, &gate, 5).await;
    assert_sessions_of_their_own(&first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    const VISITORS: usize = 40;
    let took = bursts_until_batched(&proxy, &upstream, &gate, VISITORS, execs).await;

    let mut keys = Vec::new();
    for node in cluster.nodes() {
        keys.extend(created_sessions(node).await);
    }
    assert_eq!(keys.len(), 5 + took.len() * VISITORS, "{keys:?}");
    assert!(
        took.iter().any(|&t| t > 0 && t <= (VISITORS / 2) as u64),
        "{VISITORS} new visitors answered at once took {took:?} transactions"
    );
}

/// A steady flow of new visitors is handed sessions each worker made ahead
/// in Redis: every visitor keeps its session when it comes back, one whose
/// first page wrote to its session keeps what was written, and the flow costs
/// Redis far fewer transactions than visitors. What was made and not handed
/// out is bounded.
#[tokio::test]
async fn a_flow_of_new_visitors_is_handed_sessions_made_ahead_and_keeps_them() {
    let test = "a_flow_of_new_visitors_is_handed_sessions_made_ahead_and_keeps_them";
    let Some(redis) = RedisServer::start(test).await else {
        return;
    };
    let (upstream, proxy) = uncached_proxy(&redis).await;
    const VISITORS: usize = 3_000;
    // Every 50th visitor's first page writes to its session.
    let writes = |i: usize| i.is_multiple_of(50);
    let client = plain_client();
    // Twenty at a time, at least 6 ms apart: a flow of at most 3,333 a
    // second, so the first thousand take over a quarter second (the span a
    // flow is counted over) and show the flow; those after them are counted.
    const COUNTED_FROM: usize = 1_000;
    let mut before = 0;
    let mut cookies = Vec::with_capacity(VISITORS);
    let all: Vec<usize> = (0..VISITORS).collect();
    let mut pace = tokio::time::interval(Duration::from_millis(6));
    for chunk in all.chunks(20) {
        pace.tick().await;
        if chunk[0] == COUNTED_FROM {
            before = redis.calls("exec").await;
        }
        let answers = futures_util::future::join_all(chunk.iter().map(|&i| {
            let url = match writes(i) {
                true => proxy.url(&format!("/?set=n%3D{i}")),
                false => proxy.url("/"),
            };
            client.get(url).send()
        }))
        .await;
        for answer in answers {
            let answer = answer.expect("a new visitor is answered");
            assert_eq!(answer.status(), 200);
            cookies.push(expect_session_cookie(answer.headers()).pair());
        }
    }
    let transactions = redis.calls("exec").await - before;
    assert_eq!(cookies.len(), VISITORS);
    let distinct: std::collections::HashSet<&String> = cookies.iter().collect();
    assert_eq!(
        distinct.len(),
        VISITORS,
        "every visitor has a session of its own"
    );
    // Stored one by one, or in batches of the few answered at one moment,
    // they took hundreds of transactions.
    let counted = VISITORS - COUNTED_FROM;
    assert!(
        before > 0 && transactions > 0 && transactions < (counted / 10) as u64,
        "{counted} new visitors took {transactions} transactions"
    );

    // Each comes back: its session is found (no new cookie), with its data.
    for chunk in all.chunks(20) {
        let answers = futures_util::future::join_all(chunk.iter().map(|&i| {
            client
                .get(proxy.url("/"))
                .header("cookie", &cookies[i])
                .send()
        }))
        .await;
        for (&i, answer) in chunk.iter().zip(answers) {
            let answer = answer.expect("a returning visitor is answered");
            assert_eq!(answer.status(), 200, "visitor {i}");
            assert!(
                session_set_cookie(answer.headers()).is_none(),
                "visitor {i} was given a new session"
            );
            let body = answer.text().await.expect("body");
            let expected = if writes(i) {
                format!("n={i}")
            } else {
                String::new()
            };
            assert_eq!(body, expected, "visitor {i}'s session data");
        }
    }
    assert_eq!(upstream.count(), 2 * VISITORS);

    // Redis holds every visitor's session, and at most a few calls' worth
    // made ahead and not handed out: fewer than 96 a worker thread (half a
    // call of 64 left, and one call on top), one worker a core.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let keys = created_sessions(&redis).await.len();
    assert!(
        (VISITORS..VISITORS + workers * 96).contains(&keys),
        "{keys} sessions in Redis for {VISITORS} visitors"
    );
}

/// An app that holds every answer until `gate` lets it go.
async fn held_app() -> (Gate, Upstream) {
    let gate = Gate::new();
    let held = gate.clone();
    let upstream = Upstream::start(move |_| Reply::ok().held_until(&held)).await;
    (gate, upstream)
}

/// Every one of `responses` is a 200 with a session cookie of its own.
fn assert_sessions_of_their_own(responses: &[reqwest::Response]) {
    let statuses: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(statuses, vec![200; responses.len()]);
    let mut ids: Vec<String> = responses
        .iter()
        .map(|r| expect_session_cookie(r.headers()).id().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        responses.len(),
        "every visitor has a session of its own"
    );
}

/// The session keys `node` holds, each checked whole: a TTL and its
/// creation time.
async fn created_sessions(node: &RedisServer) -> Vec<String> {
    let keys = match node.command(&["KEYS", "sessiongate:*"]).await {
        ::redis::Value::Array(keys) => keys.iter().map(text).collect::<Vec<_>>(),
        other => panic!("KEYS answered {other:?}"),
    };
    for key in &keys {
        let ttl = node.command(&["PTTL", key]).await;
        assert!(
            matches!(ttl, ::redis::Value::Int(ms) if ms > 0),
            "{key} has no TTL: {ttl:?}"
        );
        let created = text(&node.command(&["HGET", key, "m:c"]).await);
        assert!(created.parse::<u64>().is_ok(), "{key}: m:c {created:?}");
    }
    keys
}

/// `n` new visitors whose pages the app (holding every answer on `gate`)
/// answers at one moment; their responses.
async fn new_visitors_at_once(
    proxy: &Proxy,
    upstream: &Upstream,
    gate: &Gate,
    n: usize,
) -> Vec<reqwest::Response> {
    let before = upstream.requests().len();
    let url = proxy.url("/");
    let visits = tokio::spawn(futures_util::future::join_all((0..n).map(|_| {
        let url = url.clone();
        async move { get_without_cookie(&url).await }
    })));
    upstream.wait_for_arrivals(before + n).await;
    for _ in 0..n {
        gate.open();
    }
    visits.await.expect("visits")
}

/// Gives every slot of `from` to the other nodes, half to each, by
/// `CLUSTER SETSLOT … NODE` on every node (after emptying `from`).
async fn move_slots_away(cluster: &RedisCluster, from: usize) {
    let nodes = cluster.nodes();
    let ids: Vec<String> = futures_util::future::join_all(
        nodes
            .iter()
            .map(|n| async move { text(&n.command(&["CLUSTER", "MYID"]).await) }),
    )
    .await;
    let mut slots = Vec::new();
    let ::redis::Value::Array(ranges) = nodes[from].command(&["CLUSTER", "SLOTS"]).await else {
        panic!("CLUSTER SLOTS is not an array")
    };
    for range in ranges {
        let ::redis::Value::Array(parts) = range else {
            continue;
        };
        let (::redis::Value::Int(first), ::redis::Value::Int(last)) = (&parts[0], &parts[1]) else {
            continue;
        };
        let ::redis::Value::Array(primary) = &parts[2] else {
            continue;
        };
        if text(&primary[2]) == ids[from] {
            slots.extend(*first..=*last);
        }
    }
    assert!(!slots.is_empty(), "node {from} holds no slot");
    // A master left without slots would otherwise turn replica of a new owner
    // as soon as gossip tells it, which can come before its own `SETSLOT`s.
    nodes[from]
        .command(&["CONFIG", "SET", "cluster-allow-replica-migration", "no"])
        .await;
    nodes[from].command(&["FLUSHALL"]).await;
    let others: Vec<usize> = (0..nodes.len()).filter(|&n| n != from).collect();
    let half = slots.len() / 2;
    // The new owners first, then the old, then the rest.
    let mut order = others.clone();
    order.push(from);
    for node in order {
        let client = ::redis::Client::open(nodes[node].url()).expect("client");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let mut pipe = ::redis::pipe();
        for (i, slot) in slots.iter().enumerate() {
            let to = &ids[others[usize::from(i >= half)]];
            pipe.cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("NODE")
                .arg(to)
                .ignore();
        }
        pipe.query_async::<()>(&mut conn)
            .await
            .expect("CLUSTER SETSLOT");
    }
    for &node in &others {
        nodes[node].command(&["CLUSTER", "BUMPEPOCH"]).await;
    }
}

/// On a Cluster, the new sessions of one moment go to each node in one call,
/// as the proxy last learnt which node holds which slot. Slots moved since
/// cost no visitor anything: after a node gave its slots to the other two,
/// 40 new visitors answered at once each get a session, stored whole on the
/// node that holds its slot now.
#[tokio::test]
async fn new_visitors_on_a_cluster_whose_slots_moved_each_get_a_session() {
    let test = "new_visitors_on_a_cluster_whose_slots_moved_each_get_a_session";
    let Some(cluster) = RedisCluster::start(test).await else {
        return;
    };
    let (gate, upstream) = held_app().await;
    let proxy = Proxy::start(config(&upstream.url()).with_redis_cluster(&cluster.urls())).await;
    // The first visitors have the proxy learn where the slots are. They are
    // few, too few a flow for a worker to make sessions ahead, so every
    // session counted below is a visitor's.
    for r in new_visitors_at_once(&proxy, &upstream, &gate, 5).await {
        assert_eq!(r.status(), 200);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    for node in cluster.nodes() {
        node.command(&["FLUSHALL"]).await;
    }
    move_slots_away(&cluster, 0).await;
    const VISITORS: usize = 40;
    let responses = new_visitors_at_once(&proxy, &upstream, &gate, VISITORS).await;
    assert_sessions_of_their_own(&responses);

    let nodes = cluster.nodes();
    let gone = created_sessions(&nodes[0]).await;
    assert!(
        gone.is_empty(),
        "the node that gave its slots away holds {gone:?}"
    );
    let mut keys = created_sessions(&nodes[1]).await;
    keys.extend(created_sessions(&nodes[2]).await);
    assert_eq!(keys.len(), VISITORS, "{keys:?}");
}

/// An operator's `SCRIPT FLUSH` (or a Redis that lost its scripts) costs
/// nothing: the first call of each script loads it again. A returning visitor
/// and a write each find theirs gone; a new visitor, made without one, works
/// the same after it.
#[tokio::test]
async fn scripts_flushed_from_redis_are_loaded_again_by_the_call_that_needs_them() {
    let test = "scripts_flushed_from_redis_are_loaded_again_by_the_call_that_needs_them";
    let Some(redis) = RedisServer::start(test).await else {
        return;
    };
    let (upstream, proxy) = uncached_proxy(&redis).await;
    let browser = Browser::new();
    redis.command(&["SCRIPT", "FLUSH"]).await;
    let first = browser.get(&proxy.url("/?set=color%3Dblue")).await;
    assert_eq!(first.status(), 200);
    expect_session_cookie(first.headers());
    let id = app_saw(&upstream).expect_session_id();
    assert!(app_saw(&upstream).is_new_session());

    redis.command(&["SCRIPT", "FLUSH"]).await;
    let returning = browser.get(&proxy.url("/")).await;
    assert_eq!(returning.status(), 200);
    assert_eq!(returning.text().await.unwrap(), "color=blue");
    assert_eq!(app_saw(&upstream).session_id(), Some(id.as_str()));

    redis.command(&["SCRIPT", "FLUSH"]).await;
    let write = browser.get(&proxy.url("/?set=size%3DL")).await;
    assert_eq!(write.status(), 200);
    assert_eq!(
        browser.get(&proxy.url("/")).await.text().await.unwrap(),
        "color=blue&size=L"
    );
    assert!(
        redis.calls("script|load").await >= 3,
        "the scripts were not loaded again"
    );
}

#[tokio::test]
async fn redis_stopped_answers_503_then_recovers_with_the_session_intact() {
    let test = "redis_stopped_answers_503_then_recovers_with_the_session_intact";
    let Some(mut redis) = RedisServer::start_durable(test).await else {
        return;
    };
    let upstream = app().await;
    let (proxy, admin) = start_proxy_with_admin(
        config(&upstream.url())
            .with_redis(&redis.url())
            .set("store.redis.timeout", "300ms"),
    )
    .await;
    let browser = Browser::new();
    assert_eq!(
        browser.get(&proxy.url("/?set=user%3Dalice")).await.status(),
        200
    );
    let id = app_saw(&upstream).expect_session_id();
    assert_eq!(ready(admin).await, 200);

    redis.kill();
    refused_while_down(&browser, &proxy, &upstream).await;
    assert_eq!(ready(admin).await, 503);

    redis.restart().await;
    served_again(&browser, &proxy, &upstream, &id).await;
    assert_eq!(ready(admin).await, 200);
}

/// With the store down: a returning visitor, the same again and a new visitor
/// each get 503 with `Retry-After: 1` and no new session, and the app sees
/// none of them.
async fn refused_while_down(browser: &Browser, proxy: &Proxy, upstream: &Upstream) {
    let returning = support::redis::once_noticed(browser, &proxy.url("/")).await;
    let forwarded = upstream.count();
    for (who, response) in [
        ("a returning visitor", returning),
        ("the same visitor again", browser.get(&proxy.url("/")).await),
        ("a new visitor", get_without_cookie(&proxy.url("/")).await),
    ] {
        assert_eq!(response.status(), 503, "{who}");
        assert_eq!(
            response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap()),
            Some("1"),
            "{who}"
        );
        assert!(
            session_set_cookie(response.headers()).is_none(),
            "{who} was given a new session while Redis was down"
        );
        let body = response.text().await.unwrap();
        assert!(body.contains("session store"), "{who}: {body}");
    }
    assert_eq!(upstream.count(), forwarded, "a request reached the app");
}

/// Once the store is back, the proxy (not restarted) serves the visitor's
/// session `id`, holding `user=alice`, with no new cookie.
async fn served_again(browser: &Browser, proxy: &Proxy, upstream: &Upstream, id: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let response = loop {
        let response = browser.get(&proxy.url("/")).await;
        if response.status() != 503 {
            break response;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the proxy did not recover after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(response.status(), 200);
    assert!(session_set_cookie(response.headers()).is_none());
    assert_eq!(response.text().await.unwrap(), "user=alice");
    assert_eq!(app_saw(upstream).session_id(), Some(id));
}

/// On a Cluster, the primary holding a session dies: that visitor gets 503
/// (never a new session) until the node is back with its data.
#[tokio::test]
async fn a_cluster_node_down_answers_503_then_recovers_with_the_session_intact() {
    let test = "a_cluster_node_down_answers_503_then_recovers_with_the_session_intact";
    let Some(mut cluster) = RedisCluster::start_durable(test).await else {
        return;
    };
    let upstream = app().await;
    let proxy = Proxy::start(
        config(&upstream.url())
            .with_redis_cluster(&cluster.urls())
            .set("store.redis.timeout", "300ms"),
    )
    .await;
    let browser = Browser::new();
    assert_eq!(
        browser.get(&proxy.url("/?set=user%3Dalice")).await.status(),
        200
    );
    let id = app_saw(&upstream).expect_session_id();
    let mut holders = Vec::new();
    for (i, node) in cluster.nodes().iter().enumerate() {
        if matches!(node.command(&["DBSIZE"]).await, ::redis::Value::Int(n) if n > 0) {
            holders.push(i);
        }
    }
    assert_eq!(holders.len(), 1, "one node holds the session");
    let node = &mut cluster.nodes_mut()[holders[0]];
    node.kill();
    // Within the node timeout (5 s) the others still serve their slots, so a
    // new visitor may land on one of them: only the returning one is checked.
    let response = support::redis::once_noticed(&browser, &proxy.url("/")).await;
    assert_eq!(response.status(), 503);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("1")
    );
    assert!(session_set_cookie(response.headers()).is_none());
    node.restart().await;
    served_again(&browser, &proxy, &upstream, &id).await;
}

#[tokio::test]
async fn a_proxy_started_while_redis_is_down_serves_once_it_is_up() {
    let test = "a_proxy_started_while_redis_is_down_serves_once_it_is_up";
    let Some(mut redis) = RedisServer::start(test).await else {
        return;
    };
    redis.kill();
    let upstream = app().await;
    let (proxy, admin) = start_proxy_with_admin(
        config(&upstream.url())
            .with_redis(&redis.url())
            .set("store.redis.timeout", "300ms"),
    )
    .await;
    let response = get_without_cookie(&proxy.url("/")).await;
    assert_eq!(response.status(), 503);
    assert!(session_set_cookie(response.headers()).is_none());
    assert_eq!(ready(admin).await, 503);

    redis.restart().await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while ready(admin).await != 200 {
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let response = get_without_cookie(&proxy.url("/")).await;
    assert_eq!(response.status(), 200);
    expect_session_cookie(response.headers());
}

#[tokio::test]
async fn redis_slower_than_the_timeout_answers_503_quickly() {
    let Some(redis) = RedisServer::start("redis_slower_than_the_timeout_answers_503").await else {
        return;
    };
    let upstream = app().await;
    let (proxy, admin) = start_proxy_with_admin(
        config(&upstream.url())
            .with_redis(&redis.url())
            .set("store.redis.timeout", "300ms"),
    )
    .await;
    let browser = Browser::new();
    browser.get(&proxy.url("/?set=user%3Dalice")).await;
    let id = app_saw(&upstream).expect_session_id();

    // Redis holds every command for 3 seconds. The session, used a moment ago,
    // may be served from the near cache for the rest of its second.
    redis.command(&["CLIENT", "PAUSE", "3000", "ALL"]).await;
    let paused = tokio::time::Instant::now();
    let response = support::redis::once_noticed(&browser, &proxy.url("/")).await;
    assert!(
        paused.elapsed() < Duration::from_millis(2500),
        "served from the near cache for {:?}",
        paused.elapsed()
    );
    let started = tokio::time::Instant::now();
    let response = match response.status().as_u16() {
        503 => browser.get(&proxy.url("/")).await,
        _ => response,
    };
    let waited = started.elapsed();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert!(session_set_cookie(response.headers()).is_none());
    assert!(
        waited < Duration::from_secs(2),
        "the request waited {waited:?} for a stalled Redis (timeout 300ms)"
    );
    assert_eq!(ready(admin).await, 503);

    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let response = browser.get(&proxy.url("/")).await;
        if response.status() == 200 {
            assert_eq!(response.text().await.unwrap(), "user=alice");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no recovery");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app_saw(&upstream).session_id(), Some(id.as_str()));
}

#[tokio::test]
async fn redis_keeps_each_session_in_one_hash_with_a_ttl_from_the_timeouts() {
    let Some(redis) = RedisServer::start("redis_keeps_each_session_in_one_hash").await else {
        return;
    };
    let upstream = app().await;
    let proxy = Proxy::start(
        config(&upstream.url())
            .with_redis(&redis.url())
            .set("store.redis.key_prefix", "\"shop:\"")
            .set("session.idle_timeout", "3s")
            .set("session.absolute_timeout", "1h"),
    )
    .await;
    let first = get_without_cookie(&proxy.url("/?set=user%3Dalice")).await;
    let cookie = expect_session_cookie(first.headers());
    let id = cookie.id();
    let key = format!("shop:{{{}}}{}", &id[..4], &id[4..]);

    let field = redis.command(&["HGET", &key, "d:user"]).await;
    assert_eq!(text(&field), "alice");
    let ttl = |v: ::redis::Value| match v {
        ::redis::Value::Int(ms) => ms,
        other => panic!("PTTL: {other:?}"),
    };
    let first_ttl = ttl(redis.command(&["PTTL", &key]).await);
    assert!(
        (1000..=4000).contains(&first_ttl),
        "TTL {first_ttl}ms, idle timeout 3s"
    );

    // Used again more than a second later: the TTL starts over.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    get_with_cookie(&proxy.url("/"), &cookie.pair()).await;
    let refreshed = ttl(redis.command(&["PTTL", &key]).await);
    assert!(refreshed > 3000, "TTL {refreshed}ms was not refreshed");

    // The absolute timeout caps it.
    let capped = Proxy::start(
        config(&upstream.url())
            .with_redis(&redis.url())
            .set("session.idle_timeout", "1h")
            .set("session.absolute_timeout", "5s"),
    )
    .await;
    let response = get_without_cookie(&capped.url("/")).await;
    let id = expect_session_cookie(response.headers()).id().to_owned();
    let key = format!("sessiongate:{{{}}}{}", &id[..4], &id[4..]);
    let ttl = ttl(redis.command(&["PTTL", &key]).await);
    assert!(
        (1..=5000).contains(&ttl),
        "TTL {ttl}ms, absolute timeout 5s"
    );
}

/// libfaketime, which moves a process's clock (Debian's `faketime`).
const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

#[tokio::test]
async fn a_proxy_whose_clock_is_an_hour_behind_keeps_redis_time() {
    let Some(redis) = RedisServer::start("a_proxy_whose_clock_is_behind").await else {
        return;
    };
    if !std::path::Path::new(FAKETIME).exists() {
        // As for redis-server: CI installs it (.ci/run), and requires it.
        assert!(
            std::env::var_os("CI").is_none(),
            "{FAKETIME} is missing: apt-get install faketime"
        );
        eprintln!("skipped: {FAKETIME} is missing (apt-get install faketime)");
        return;
    }
    let upstream = app().await;
    let yaml = config(&upstream.url())
        .with_redis(&redis.url())
        .set("log.level", "info")
        .set("session.idle_timeout", "30m")
        .to_string();
    // Its wall clock an hour behind Redis's; timers (the monotonic clock) as is.
    let proxy = ops::Binary::start_with_env(
        &yaml,
        &[
            ("LD_PRELOAD", FAKETIME),
            ("FAKETIME", "-1h"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    )
    .await;

    let first = get_without_cookie(&proxy.url("/?set=n%3D1")).await;
    assert_eq!(first.status(), 200);
    let cookie = expect_session_cookie(first.headers());
    let id = cookie.id();
    let key = format!("sessiongate:{{{}}}{}", &id[..4], &id[4..]);

    // Created on Redis's clock: within a couple of seconds of Redis's TIME,
    // not an hour before it.
    let stamp: i64 = text(&redis.command(&["HGET", &key, "m:c"]).await)
        .parse()
        .expect("m:c is a number");
    let now = match redis.command(&["TIME"]).await {
        ::redis::Value::Array(parts) => {
            let secs: i64 = text(&parts[0]).parse().expect("seconds");
            secs * 1000
        }
        other => panic!("TIME: {other:?}"),
    };
    assert!(
        (stamp - now).abs() < 3000,
        "m:c {stamp} is {} ms from Redis's clock",
        stamp - now
    );

    // Stamped with the proxy's own clock, an idle timeout of 30 minutes
    // would have ended the session already: it goes on.
    let again = get_with_cookie(&proxy.url("/"), &cookie.pair()).await;
    assert_eq!(again.status(), 200);
    assert!(again.headers().get("set-cookie").is_none(), "a new session");
    assert_eq!(again.text().await.expect("body"), "n=1");
}

/// `rediss://`: the store reached over TLS, Redis's certificate checked
/// against the system's roots (here a test CA, named by `SSL_CERT_FILE`). A
/// proxy that does not trust it answers 503, never a new session.
#[tokio::test]
async fn a_redis_reached_over_tls_keeps_sessions_and_its_certificate_is_checked() {
    let test = "a_redis_reached_over_tls_keeps_sessions_and_its_certificate_is_checked";
    let Some(tls) = support::redis::TlsRedis::start(test).await else {
        return;
    };
    let (redis, tls_port, ca_file) = (&tls.server, tls.tls_port, tls.ca_file());
    let upstream = app().await;
    let yaml = config(&upstream.url())
        .with_redis(&format!("rediss://127.0.0.1:{tls_port}"))
        .set("log.level", "info")
        .to_string();
    let trusting = ops::Binary::start_with_env(&yaml, &[("SSL_CERT_FILE", ca_file.as_str())]).await;
    let first = get_without_cookie(&trusting.url("/?set=user%3Dalice")).await;
    assert_eq!(first.status(), 200);
    let cookie = expect_session_cookie(first.headers());
    let again = get_with_cookie(&trusting.url("/"), &cookie.pair()).await;
    assert_eq!(again.status(), 200);
    assert!(again.headers().get("set-cookie").is_none(), "a new session");
    assert_eq!(again.text().await.expect("body"), "user=alice");
    // The session is in that Redis (read over its plain port).
    let key = format!("sessiongate:{{{}}}{}", &cookie.id()[..4], &cookie.id()[4..]);
    assert_eq!(
        text(&redis.command(&["HGET", &key, "d:user"]).await),
        "alice"
    );

    // The system's own roots do not include the test CA.
    let doubting = ops::Binary::start_with_env(
        &yaml,
        &[
            ("SSL_CERT_FILE", tls.cert_file().as_str()),
            ("SSL_CERT_DIR", "/nonexistent"),
        ],
    )
    .await;
    let refused = get_with_cookie(&doubting.url("/"), &cookie.pair()).await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().get("set-cookie").is_none());
}
