//! Redis Sentinel (`store.redis.sentinel`): real `redis-server` processes, a
//! master and a replica, watched by three real Sentinels. The proxy finds the
//! master through the Sentinels and follows it through a failover, planned or
//! after the master is killed, with the sessions it replicated.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::redis::{text, RedisSentinel as Sentinel, RedisServer};
use support::*;

const MASTER: &str = "sessions";

/// A master, its replica and three Sentinels that agree on the master.
async fn topology(test: &str) -> Option<(RedisServer, RedisServer, Vec<Sentinel>)> {
    let master = RedisServer::start(test).await?;
    let port = master.port().to_string();
    let replica = RedisServer::start_with(
        test,
        &[
            "--save",
            "",
            "--appendonly",
            "no",
            "--replicaof",
            "127.0.0.1",
            &port,
        ],
    )
    .await?;
    let mut sentinels = Vec::new();
    for _ in 0..3 {
        sentinels.push(Sentinel::start(MASTER, master.port()).await);
    }
    // Sentinels find each other by hello messages every 2 s, and the replica
    // by INFO: on a busy machine this takes a while.
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let mut agreed = 0;
        for s in &sentinels {
            if s.master_port().await == Some(master.port()) {
                agreed += 1;
            }
        }
        // The replica is in sync, and every Sentinel knows it and its peers.
        let synced = text(&replica.command(&["INFO", "replication"]).await)
            .contains("master_link_status:up");
        let known = match sentinels[0].command(&["SENTINEL", "master", MASTER]).await {
            Ok(::redis::Value::Array(fields)) => {
                let fields: Vec<String> = fields.iter().map(text).collect();
                let at = |name: &str| {
                    fields
                        .iter()
                        .position(|f| f == name)
                        .and_then(|i| fields.get(i + 1))
                        .and_then(|v| v.parse::<u32>().ok())
                };
                at("num-slaves") == Some(1) && at("num-other-sentinels") == Some(2)
            }
            _ => false,
        };
        if agreed == 3 && synced && known {
            break;
        }
        if Instant::now() >= deadline {
            let logs: Vec<String> = sentinels.iter().map(Sentinel::log).collect();
            panic!(
                "the Sentinels never agreed on the master ({agreed} of 3, replica synced: \
                 {synced}, peers and replica known: {known}); their logs:\n{}",
                logs.join("\n---\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Some((master, replica, sentinels))
}

fn sentinel_config(upstream: &Upstream, sentinels: &[Sentinel]) -> ConfigYaml {
    let nodes: Vec<String> = sentinels
        .iter()
        .map(|s| format!("\"{}\"", s.url()))
        .collect();
    config(&upstream.url())
        .set("store.type", "redis")
        .set("store.redis.timeout", "1s")
        .set("store.redis.sentinel.master", MASTER)
        .set(
            "store.redis.sentinel.nodes",
            &format!("[{}]", nodes.join(", ")),
        )
}

/// `/login?user=NAME` writes the user; everything else answers with what it saw.
async fn app() -> Upstream {
    Upstream::start(|seen| match seen.uri.path() {
        "/login" => Reply::ok().session_set(&format!("user={}", seen.query("user").unwrap())),
        // Answers with the counter the session held before this write.
        "/write" => Reply::ok()
            .session_set(&format!("n={}", seen.query("n").unwrap()))
            .body(seen.data().get("n").cloned().unwrap_or_default()),
        _ => Reply::ok(),
    })
    .await
}

/// Waits until every Sentinel names `port` as the master.
async fn master_moved_to(sentinels: &[Sentinel], port: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let mut agreed = 0;
        for s in sentinels {
            if s.master_port().await == Some(port) {
                agreed += 1;
            }
        }
        if agreed == sentinels.len() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no failover to port {port} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A visitor logs in as `user` through the proxy at `base`, and its next
/// request carries the user.
async fn logs_in(base: &str, upstream: &Upstream, user: &str) {
    let browser = Browser::new();
    let login = browser.get(&format!("{base}/login?user={user}")).await;
    assert_eq!(login.status(), 200);
    assert_eq!(browser.get(&format!("{base}/whoami")).await.status(), 200);
    assert_eq!(
        upstream.last().data().get("user").map(String::as_str),
        Some(user)
    );
}

/// What one visitor of [`load`] saw: requests answered 200, the statuses of
/// the others, and the last value of its counter a 200 acknowledged.
struct Visitor {
    browser: Browser,
    ok: usize,
    refused: Vec<u16>,
    acknowledged: Option<usize>,
    /// The longest any of its requests took.
    slowest: Duration,
    /// Each time a request found the session without the write acknowledged
    /// before it: (acknowledged, found).
    went_back: Vec<(usize, Option<usize>)>,
}

/// Eight visitors logged in, each writing its counter in a loop until `stop`.
async fn load(proxy: &Proxy, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<Visitor>> {
    let mut tasks = Vec::new();
    for i in 0..8 {
        let browser = Browser::new();
        let login = browser.get(&proxy.url(&format!("/login?user=u{i}"))).await;
        assert_eq!(login.status(), 200);
        let url = proxy.url("/write");
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut visitor = Visitor {
                browser,
                ok: 0,
                refused: Vec::new(),
                acknowledged: None,
                slowest: Duration::ZERO,
                went_back: Vec::new(),
            };
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 5_000 {
                n += 1;
                let sent = Instant::now();
                let response = visitor.browser.get(&format!("{url}?n={n}")).await;
                visitor.slowest = visitor.slowest.max(sent.elapsed());
                if response.status() == 200 {
                    let found = response.text().await.unwrap().parse().ok();
                    if let Some(acknowledged) = visitor.acknowledged {
                        if found < Some(acknowledged) {
                            visitor.went_back.push((acknowledged, found));
                        }
                    }
                    visitor.ok += 1;
                    visitor.acknowledged = Some(n);
                } else {
                    visitor.refused.push(response.status().as_u16());
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            visitor
        }));
    }
    tasks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_planned_failover_costs_at_most_the_requests_in_flight() {
    let Some((master, replica, sentinels)) =
        topology("a_planned_failover_costs_at_most_the_requests_in_flight").await
    else {
        return;
    };
    let upstream = app().await;
    let proxy = Proxy::start(sentinel_config(&upstream, &sentinels)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(&proxy, stop.clone()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = upstream.count();
    sentinels[0]
        .command(&["SENTINEL", "FAILOVER", MASTER])
        .await
        .expect("SENTINEL FAILOVER");
    master_moved_to(&sentinels, replica.port(), PATIENCE).await;
    // The load runs on well past the switch, while the demoted master still
    // takes writes (Sentinel turns it into a replica some 10 s later).
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut visitors = Vec::new();
    for t in tasks {
        visitors.push(t.await.unwrap());
    }
    let ok: usize = visitors.iter().map(|v| v.ok).sum();
    let refused: Vec<u16> = visitors.iter().flat_map(|v| v.refused.clone()).collect();
    let slowest = visitors.iter().map(|v| v.slowest).max();
    eprintln!(
        "planned failover: {ok} answered 200, {} refused {refused:?}, the slowest in {slowest:?}",
        refused.len()
    );
    assert!(
        upstream.count() > before + 100,
        "the load ran through the failover"
    );
    assert!(refused.iter().all(|&s| s == 503), "{refused:?}");
    // Each refused request is retried 20 ms later: a visitor whose request
    // waited out the switch may be refused more than once.
    assert!(
        refused.len() <= 8 * 4,
        "about the requests in flight during the switch, not {}: {refused:?}",
        refused.len()
    );
    // The new master holds the sessions, and takes the writes.
    let role = replica.command(&["ROLE"]).await;
    assert!(
        matches!(&role, ::redis::Value::Array(r) if r.first().map(text).as_deref() == Some("master")),
        "{role:?}"
    );
    // Sentinel demotes the old master some 10 s after the switch: whatever a
    // proxy wrote there since is gone then.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Sentinel's `CLIENT KILL` may cut this connection too.
        let role = master.try_command(&["ROLE"]).await;
        if matches!(&role, Ok(::redis::Value::Array(r)) if r.first().map(text).as_deref() == Some("slave"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the old master was never demoted: {role:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // No acknowledged write was lost: each visitor's session holds the last
    // value a 200 answered, read back through the proxy.
    let went_back: Vec<_> = visitors.iter().flat_map(|v| v.went_back.clone()).collect();
    assert!(
        went_back.is_empty(),
        "a visitor found its session without a write already acknowledged \
         (acknowledged, found): {went_back:?}"
    );
    let mut lost = Vec::new();
    for (i, v) in visitors.iter().enumerate() {
        let response = v.browser.get(&proxy.url("/whoami")).await;
        assert_eq!(response.status(), 200);
        let data = upstream.last().data();
        assert_eq!(
            data.get("user").map(String::as_str),
            Some(format!("u{i}").as_str()),
            "visitor {i} kept its session"
        );
        let acknowledged = v.acknowledged.expect("every visitor had a write answered");
        let held = data.get("n").and_then(|n| n.parse::<usize>().ok());
        if held != Some(acknowledged) {
            lost.push((i, acknowledged, held));
        }
    }
    assert!(
        lost.is_empty(),
        "acknowledged writes lost (visitor, acknowledged, held): {lost:?}"
    );
    logs_in(&proxy.url(""), &upstream, "after").await;
    drop(master);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_proxy_follows_the_master_after_it_is_killed() {
    let Some((mut master, replica, sentinels)) =
        topology("the_proxy_follows_the_master_after_it_is_killed").await
    else {
        return;
    };
    let upstream = app().await;
    // The per-user index and the event stream ride along: ordinary keys.
    let (proxy, admin) = support::redis::start_proxy_with_admin(
        sentinel_config(&upstream, &sentinels)
            .set("session.user_key", "user")
            .set("events.redis_stream", "sessiongate:events")
            .set("events.flush_interval", "100ms"),
    )
    .await;
    let browser = Browser::new();
    assert_eq!(
        browser.get(&proxy.url("/login?user=alice")).await.status(),
        200
    );
    let id = upstream.last().expect_session_id();
    // The created event is in the stream before the master dies.
    let deadline = Instant::now() + PATIENCE;
    while !matches!(master.command(&["XLEN", "sessiongate:events"]).await, ::redis::Value::Int(n) if n >= 1)
    {
        assert!(Instant::now() < deadline, "no event reached the stream");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Replicated before the master dies.
    master.command(&["WAIT", "1", "2000"]).await;
    master.kill();
    let killed = Instant::now();
    // Until the Sentinels promote the replica, the visitor gets 503 with
    // Retry-After, never a new session.
    let (mut refused, mut served) = (0, 0);
    let deadline = killed + Duration::from_secs(30);
    loop {
        let response = browser.get(&proxy.url("/whoami")).await;
        match response.status().as_u16() {
            503 => {
                assert!(response.headers().get("retry-after").is_some());
                assert!(
                    response.headers().get("set-cookie").is_none(),
                    "a store outage never hands out a new session"
                );
                refused += 1;
            }
            200 => {
                let seen = upstream.last();
                assert_eq!(
                    seen.expect_session_id(),
                    id,
                    "the same session, not a new one"
                );
                assert_eq!(seen.data().get("user").map(String::as_str), Some("alice"));
                served += 1;
                if served == 3 {
                    break;
                }
            }
            other => panic!("unexpected {other}"),
        }
        assert!(
            Instant::now() < deadline,
            "the proxy never followed the new master"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let outage = killed.elapsed();
    eprintln!("killed master: {refused} requests refused with 503 over {outage:?} until the proxy followed");
    master_moved_to(&sentinels, replica.port(), Duration::from_secs(1)).await;
    // Writes land on the new master.
    let browser2 = Browser::new();
    assert_eq!(
        browser2.get(&proxy.url("/login?user=bob")).await.status(),
        200
    );
    let keys = replica.command(&["DBSIZE"]).await;
    assert!(matches!(keys, ::redis::Value::Int(n) if n >= 2), "{keys:?}");
    // The new master has the index and the stream.
    let listed = plain_client()
        .get(format!("http://{admin}/users/alice/sessions"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(
        listed["sessions"][0]["id"],
        serde_json::Value::from(id),
        "{listed}"
    );
    // bob's created event goes to the new master's stream.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let events = replica.command(&["XLEN", "sessiongate:events"]).await;
        if matches!(events, ::redis::Value::Int(n) if n >= 2) {
            break;
        }
        assert!(Instant::now() < deadline, "{events:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A Sentinel setting with `extra` keys set is refused, naming `key`.
fn refused_by_key(extra: &[(&str, &str)], key: &str) {
    let mut yaml = config("http://127.0.0.1:9")
        .set("store.type", "redis")
        .set("store.redis.sentinel.master", MASTER)
        .set(
            "store.redis.sentinel.nodes",
            "[\"redis://127.0.0.1:26379\"]",
        );
    for (k, v) in extra {
        yaml = yaml.set(k, v);
    }
    let error = sessiongate::config::Config::parse(
        &yaml.to_string(),
        std::path::Path::new("t.yaml"),
        false,
    )
    .expect_err("refused");
    assert!(error.to_string().contains(key), "{error}");
}

#[test]
fn sentinel_with_cluster_is_refused_by_key() {
    refused_by_key(&[("store.redis.cluster", "true")], "store.redis.sentinel");
}

#[test]
fn a_sentinel_username_without_a_password_is_refused_by_key() {
    refused_by_key(
        &[("store.redis.sentinel.username", "sessiongate")],
        "store.redis.sentinel.username",
    );
}

/// A master that requires a password: `store.redis.sentinel.password` is its
/// `AUTH`. Without it the proxy answers 503, never a new session; the
/// password is never printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_that_requires_a_password_is_reached_with_it() {
    const PASSWORD: &str = "master-password-3f9a";
    let test = "a_master_that_requires_a_password_is_reached_with_it";
    let Some(master) = RedisServer::start(test).await else {
        return;
    };
    let sentinel = Sentinel::start(MASTER, master.port()).await;
    sentinel
        .command(&["SENTINEL", "SET", MASTER, "auth-pass", PASSWORD])
        .await
        .expect("SENTINEL SET auth-pass");
    master
        .command(&["CONFIG", "SET", "requirepass", PASSWORD])
        .await;
    let upstream = app().await;
    let sentinels = [sentinel];

    let with =
        sentinel_config(&upstream, &sentinels).set("store.redis.sentinel.password", PASSWORD);
    let printed = sessiongate::config::Config::parse(
        &with.to_string(),
        std::path::Path::new("t.yaml"),
        false,
    )
    .expect("a valid config")
    .to_redacted_yaml();
    assert!(!printed.contains(PASSWORD), "{printed}");
    let proxy = Proxy::start(with).await;
    logs_in(&proxy.url(""), &upstream, "alice").await;

    let without = Proxy::start(sentinel_config(&upstream, &sentinels)).await;
    let forwarded = upstream.count();
    let response = Browser::new().get(&without.url("/login?user=bob")).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().get("retry-after").is_some());
    assert!(
        support::session_set_cookie(response.headers()).is_none(),
        "no session without the store"
    );
    assert_eq!(upstream.count(), forwarded, "the app saw no request");
}

/// A master reached over TLS (`store.redis.sentinel.tls`), its certificate
/// checked against the system's roots (a test CA, by `SSL_CERT_FILE`); the
/// Sentinel announces its TLS port. Without `tls`, requests get 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_reached_over_tls() {
    let test = "a_master_reached_over_tls";
    let Some(tls) = support::redis::TlsRedis::start(test).await else {
        return;
    };
    let (master, ca_path) = (&tls.server, tls.ca_file());
    // The Sentinel itself is plain; it reaches the master over TLS.
    let sentinel = Sentinel::start_with(MASTER, tls.tls_port, &tls.sentinel_lines()).await;
    let upstream = app().await;
    let sentinels = [sentinel];
    let yaml = sentinel_config(&upstream, &sentinels).set("log.level", "info");
    let env = [("SSL_CERT_FILE", ca_path.as_str())];

    let proxy =
        ops::Binary::start_with_env(yaml.clone().set("store.redis.sentinel.tls", "true"), &env)
            .await;
    logs_in(&proxy.url(""), &upstream, "alice").await;
    let keys = master.command(&["DBSIZE"]).await;
    assert!(matches!(keys, ::redis::Value::Int(n) if n >= 1), "{keys:?}");

    // Plain TCP to a TLS port: no answer a proxy could use.
    let plain = ops::Binary::start_with_env(yaml, &env).await;
    let response = Browser::new().get(&plain.url("/login?user=bob")).await;
    assert_eq!(response.status(), 503);
    assert!(support::session_set_cookie(response.headers()).is_none());
}
