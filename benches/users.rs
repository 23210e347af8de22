//! Ending one user's sessions in a full store: `DELETE /users/{value}/sessions`
//! (the per-user index) against `DELETE /sessions?key=user&value=…` (a scan of
//! every session), with 1,000,000 sessions of which the user holds 5.
//!
//!     cargo bench --bench users                          # memory store
//!     REDIS_URL=redis://127.0.0.1:6399 cargo bench --bench users   # and a Redis
//!     SESSIONS=100000 cargo bench --bench users
//!
//! Each figure is the median of `ROUNDS` rounds; every round puts the user's 5
//! sessions back first. The Redis run fills the server (prefix `bench-users:`)
//! and deletes what it wrote at the end.
use std::time::{Duration, Instant};

use sessiongate::config::RedisConfig;
use sessiongate::session::memory::MemoryStore;
use sessiongate::session::{
    Created, EventSink, Policy, Reason, RedisStore, SessionData, SessionId, SessionStore,
};

const ROUNDS: usize = 5;
const USER_SESSIONS: usize = 5;

fn policy(n: usize) -> Policy {
    Policy {
        idle_timeout: Duration::from_secs(3600),
        absolute_timeout: Duration::from_secs(86400),
        max_sessions: n + 100,
        max_data_bytes: 4096,
        regenerate_grace: Duration::from_secs(10),
        max_per_user: None,
    }
}

fn user(name: &str) -> SessionData {
    SessionData::from_pairs([("user".to_owned(), name.to_owned())])
}

/// Gives the user their 5 sessions back.
async fn log_in(store: &impl SessionStore, policy: &Policy) {
    for _ in 0..USER_SESSIONS {
        match store.create(user("alice"), policy).await.expect("store") {
            Created::Stored(_) => {}
            other => panic!("{other:?}"),
        }
    }
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// Times the index and the scan on `store`; prints one line each.
async fn compare(what: &str, store: &impl SessionStore, policy: &Policy) {
    let (mut index, mut scan) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        log_in(store, policy).await;
        let t = Instant::now();
        let n = store
            .destroy_user("alice", None, Reason::Admin)
            .await
            .expect("store");
        index.push(t.elapsed());
        assert_eq!(
            n, USER_SESSIONS as u64,
            "the index ended the user's sessions"
        );
        log_in(store, policy).await;
        let t = Instant::now();
        let n = store.revoke("user", "alice").await.expect("store");
        scan.push(t.elapsed());
        assert_eq!(
            n, USER_SESSIONS as u64,
            "the scan ended the user's sessions"
        );
    }
    let (index, scan) = (median(index), median(scan));
    println!(
        "{what}: DELETE /users/alice/sessions {:>10.3} ms   key/value scan {:>10.3} ms   scan / index {:>8.0}x",
        index.as_secs_f64() * 1e3,
        scan.as_secs_f64() * 1e3,
        scan.as_secs_f64() / index.as_secs_f64().max(1e-9)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") || args.iter().any(|a| !a.starts_with("--")) {
        return;
    }
    let n: usize = std::env::var("SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let policy = policy(n);
    rt.block_on(async {
        let store = MemoryStore::with(Some("user"), EventSink::default());
        for i in 0..n {
            store
                .create(user(&format!("user{i}")), &policy)
                .await
                .expect("memory store");
        }
        println!("{n} sessions, the user holds {USER_SESSIONS}, median of {ROUNDS} rounds");
        compare("memory", &store, &policy).await;

        let Ok(url) = std::env::var("REDIS_URL") else {
            return;
        };
        let config = RedisConfig {
            url,
            key_prefix: "bench-users:".to_owned(),
            timeout: Duration::from_secs(30),
            cluster: false,
            nodes: Vec::new(),
            sentinel: None,
            near_cache: true,
        };
        let store = RedisStore::open(&config, Some("user"), EventSink::default(), 2)
            .await
            .expect("Redis");
        fill_redis(&config, n).await;
        compare("redis ", &store, &policy).await;
        let client = redis::Client::open(config.url.as_str()).expect("url");
        let mut c = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let _: () = redis::cmd("FLUSHDB")
            .arg("ASYNC")
            .query_async(&mut c)
            .await
            .expect("FLUSHDB");
    });
}

/// `n` sessions of other users, written in the store's layout in pipelines.
async fn fill_redis(config: &RedisConfig, n: usize) {
    let client = redis::Client::open(config.url.as_str()).expect("url");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string();
    let started = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            let id = SessionId::random().to_string();
            let key = format!("{}{{{}}}{}", config.key_prefix, &id[..4], &id[4..]);
            pipe.cmd("HSET")
                .arg(&key)
                .arg("m:c")
                .arg(&now)
                .arg("m:s")
                .arg(&now)
                .arg("d:user")
                .arg(format!("user{i}"))
                .ignore();
            pipe.cmd("PEXPIRE").arg(&key).arg(3_600_000).ignore();
        }
        let _: () = pipe.query_async(&mut c).await.expect("fill");
    }
    println!(
        "filled Redis with {n} sessions in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
