//! Upstream groups (`DESIGN.md` §11): several servers per group, balance for new
//! visitors, session affinity kept server-side, health checks, draining, reloads,
//! and what `/metrics` and `GET /upstreams` say of each server.
//!
//! The servers here answer with their own name, and can be killed: every
//! connection they hold is cut, as when the process dies.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use support::ops::AdminProxy;
use support::*;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// A server that answers `200` with `x-server: NAME`, echoes the session data it
/// got in `x-seen-data`, answers `/healthz`, and sets `user` on `/login?as=…`.
struct Server {
    addr: std::net::SocketAddr,
    tasks: Arc<Mutex<JoinSet<()>>>,
    served: Arc<AtomicUsize>,
}

impl Server {
    async fn start(name: &'static str) -> Server {
        Server::start_on(name, "127.0.0.1:0").await
    }

    async fn start_on(name: &'static str, addr: &str) -> Server {
        let listener = TcpListener::bind(addr).await.expect("bind server");
        let addr = listener.local_addr().unwrap();
        let tasks = Arc::new(Mutex::new(JoinSet::new()));
        let served = Arc::new(AtomicUsize::new(0));
        let (inner, count) = (tasks.clone(), served.clone());
        tasks.lock().unwrap().spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let count = count.clone();
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let count = count.clone();
                        async move {
                            let mut resp = Response::builder().header("x-server", name);
                            if let Some(data) = req.headers().get("x-session-data") {
                                resp = resp.header("x-seen-data", data.clone());
                            }
                            if req.uri().path() != "/healthz" {
                                count.fetch_add(1, Ordering::SeqCst);
                            }
                            if req.uri().path() == "/login" {
                                let user = req
                                    .uri()
                                    .query()
                                    .unwrap_or("as=x")
                                    .trim_start_matches("as=");
                                resp = resp.header("x-session-set", format!("user={user}"));
                            }
                            if req.uri().path() == "/forge" {
                                resp = resp.header(
                                    "x-session-set",
                                    "+sessiongate.upstream.app=http%3A%2F%2Fx",
                                );
                            }
                            Ok::<_, std::convert::Infallible>(
                                resp.body(Full::new(Bytes::from(name))).unwrap(),
                            )
                        }
                    });
                inner.lock().unwrap().spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Server {
            addr,
            tasks,
            served,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    /// Stops listening and cuts every connection.
    fn kill(&self) {
        self.tasks.lock().unwrap().abort_all();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A proxy in front of the group `app` of `servers` (YAML for each), every
/// request routed to it.
fn group_config(servers: &[String], group: &str) -> ConfigYaml {
    config("http://127.0.0.1:9")
        .set(
            "upstreams",
            &format!("{{app: {{servers: [{}], {group}}}}}", servers.join(", ")),
        )
        .set("routes", "[{match: {path: /}, upstream: app}]")
}

async fn name_of(response: reqwest::Response) -> String {
    assert_eq!(response.status(), 200, "{:?}", response.headers());
    response.headers()["x-server"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn new_visitors_are_spread_by_weight() {
    let (a, b) = (Server::start("a").await, Server::start("b").await);
    let servers = [
        format!("{{url: \"{}\", weight: 3}}", a.url()),
        format!("\"{}\"", b.url()),
    ];
    let proxy = AdminProxy::start(group_config(&servers, "balance: round_robin")).await;
    let client = plain_client();
    let mut counts = BTreeMap::new();
    for _ in 0..400 {
        let name = name_of(client.get(proxy.url("/")).send().await.unwrap()).await;
        *counts.entry(name).or_insert(0) += 1;
    }
    assert_eq!(counts.get("a"), Some(&300), "{counts:?}");
    assert_eq!(counts.get("b"), Some(&100), "{counts:?}");
}

#[tokio::test]
async fn a_session_stays_on_its_server_for_a_thousand_requests_and_never_sees_the_choice() {
    let (a, b) = (Server::start("a").await, Server::start("b").await);
    let servers = [format!("\"{}\"", a.url()), format!("\"{}\"", b.url())];
    let proxy = AdminProxy::start(group_config(&servers, "affinity: session")).await;
    let mut first = BTreeMap::new();
    for visitor in 0..6 {
        let browser = Browser::new();
        browser
            .get(&proxy.url(&format!("/login?as=v{visitor}")))
            .await;
        let home = name_of(browser.get(&proxy.url("/")).await).await;
        for i in 0..if visitor == 0 { 1000 } else { 50 } {
            let response = browser.get(&proxy.url(&format!("/page/{i}"))).await;
            let seen = response
                .headers()
                .get("x-seen-data")
                .map(|v| v.to_str().unwrap().to_owned());
            assert_eq!(
                name_of(response).await,
                home,
                "visitor {visitor}, request {i}"
            );
            assert_eq!(seen.as_deref(), Some(format!("user=v{visitor}").as_str()));
        }
        let cookie = browser.cookie_header(&proxy.url("/")).unwrap();
        assert!(!cookie.contains(&a.addr.port().to_string()));
        assert!(!cookie.contains(&b.addr.port().to_string()));
        *first.entry(home).or_insert(0) += 1;
    }
    assert_eq!(first.len(), 2, "new sessions go to both servers: {first:?}");
}

#[tokio::test]
async fn the_app_cannot_write_the_proxys_own_keys() {
    let a = Server::start("a").await;
    let servers = [format!("\"{}\"", a.url())];
    let proxy = AdminProxy::start(group_config(&servers, "affinity: session")).await;
    let browser = Browser::new();
    browser.get(&proxy.url("/login?as=alice")).await;
    browser.get(&proxy.url("/forge")).await;
    let response = browser.get(&proxy.url("/")).await;
    assert_eq!(response.headers()["x-seen-data"], "user=alice");
    assert_eq!(name_of(response).await, "a");
}

/// Eight visitors with sessions keep clicking, all at once, while one server
/// dies. Requests that started before the checks noticed may fail (counted);
/// every request that started after fails none, and each visitor of the dead
/// server is served by the other one, logged in still.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_server_under_load_moves_its_sessions_and_fails_nothing_once_noticed() {
    let (a, b) = (Server::start("a").await, Server::start("b").await);
    let servers = [format!("\"{}\"", a.url()), format!("\"{}\"", b.url())];
    let health = "affinity: session, health: {path: /healthz, interval: 100ms, timeout: 500ms, unhealthy: 2, healthy: 2}";
    let proxy = AdminProxy::start(group_config(&servers, health)).await;
    let mut visitors = Vec::new();
    for v in 0..8 {
        let browser = Browser::new();
        browser.get(&proxy.url(&format!("/login?as=v{v}"))).await;
        let home = name_of(browser.get(&proxy.url("/")).await).await;
        visitors.push((v, browser, home));
    }
    assert!(visitors.iter().any(|(_, _, h)| h == "a") && visitors.iter().any(|(_, _, h)| h == "b"));
    let started = std::time::Instant::now();
    let mut load = JoinSet::new();
    for (v, browser, home) in visitors {
        let url = proxy.url("/");
        load.spawn(async move {
            // (when it started, status, server, data the server saw)
            let mut log = Vec::new();
            for _ in 0..150 {
                let at = started.elapsed();
                match browser.request(reqwest::Method::GET, &url).send().await {
                    Ok(r) => {
                        let server = r
                            .headers()
                            .get("x-server")
                            .map(|s| s.to_str().unwrap().to_owned());
                        let data = r
                            .headers()
                            .get("x-seen-data")
                            .map(|s| s.to_str().unwrap().to_owned());
                        log.push((at, r.status().as_u16(), server, data));
                    }
                    Err(_) => log.push((at, 0, None, None)),
                }
            }
            (v, home, log)
        });
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    a.kill();
    // The moment the checks have noticed: its health gauge reads 0.
    let noticed = loop {
        let scrape = proxy.scrape().await;
        let up = scrape.get(
            "sessiongate_upstream_server_healthy",
            &[("group", "app"), ("server", &a.url())],
        );
        if up == Some(0.0) {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the checks never noticed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let (mut before, mut after, mut moved) = (0, 0, 0);
    while let Some(done) = load.join_next().await {
        let (v, home, log) = done.unwrap();
        assert_eq!(log.len(), 150);
        for (at, status, server, data) in log {
            if status != 200 {
                if at < noticed {
                    before += 1
                } else {
                    after += 1
                }
                continue;
            }
            if at > noticed {
                assert_eq!(
                    server.as_deref(),
                    Some("b"),
                    "visitor {v} of {home} served by the dead server"
                );
                assert_eq!(
                    data.as_deref(),
                    Some(format!("user=v{v}").as_str()),
                    "visitor {v} lost the session data"
                );
                if home == "a" {
                    moved += 1;
                }
            }
        }
    }
    assert_eq!(
        after, 0,
        "{after} requests failed after the checks noticed ({before} before)"
    );
    assert!(
        moved > 0,
        "no visitor of the dead server was served after it died"
    );
    eprintln!("failed before the checks noticed: {before}; after: {after}");

    let ups = plain_client()
        .get(proxy.admin_url("/upstreams"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ups: serde_json::Value = serde_json::from_str(&ups).unwrap();
    let servers = ups["groups"][0]["servers"].as_array().unwrap();
    let state_of = |url: &str| {
        servers
            .iter()
            .find(|s| s["url"] == url)
            .map(|s| s["state"].as_str().unwrap().to_owned())
    };
    assert_eq!(state_of(&a.url()).as_deref(), Some("unhealthy"), "{ups}");
    assert_eq!(state_of(&b.url()).as_deref(), Some("healthy"), "{ups}");
    let sessions_on_b = servers.iter().find(|s| s["url"] == b.url()).unwrap()["sessions"].as_u64();
    assert_eq!(sessions_on_b, Some(8), "{ups}");

    // The server comes back on the same address: healthy again after 2 good checks.
    let a = Server::start_on("a", &a.addr.to_string()).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let scrape = proxy.scrape().await;
    let healthy = |url: &str| {
        scrape.get(
            "sessiongate_upstream_server_healthy",
            &[("group", "app"), ("server", url)],
        )
    };
    assert_eq!(healthy(&a.url()), Some(1.0));
    assert_eq!(healthy(&b.url()), Some(1.0));
}

#[tokio::test]
async fn a_draining_server_keeps_its_sessions_and_gets_no_new_ones() {
    let (a, b) = (Server::start("a").await, Server::start("b").await);
    let path = std::env::temp_dir().join(format!("sg-drain-{}.yaml", std::process::id()));
    let both = [format!("\"{}\"", a.url()), format!("\"{}\"", b.url())];
    let yaml = group_config(&both, "affinity: session");
    std::fs::write(&path, yaml.to_string()).unwrap();
    let proxy = AdminProxy::start(yaml).await;
    let mut on_b = Vec::new();
    while on_b.len() < 3 {
        let browser = Browser::new();
        browser.get(&proxy.url("/login?as=x")).await;
        if name_of(browser.get(&proxy.url("/")).await).await == "b" {
            on_b.push(browser);
        }
    }
    let drained = [
        format!("\"{}\"", a.url()),
        format!("{{url: \"{}\", drain: true}}", b.url()),
    ];
    std::fs::write(
        &path,
        group_config(&drained, "affinity: session").to_string(),
    )
    .unwrap();
    proxy.reloader().reload(&path, false).expect("reload");
    for browser in &on_b {
        for _ in 0..10 {
            assert_eq!(name_of(browser.get(&proxy.url("/")).await).await, "b");
        }
    }
    for _ in 0..20 {
        let browser = Browser::new();
        assert_eq!(
            name_of(browser.get(&proxy.url("/")).await).await,
            "a",
            "a new visitor went to the draining server"
        );
    }
    let _ = std::fs::remove_file(&path);
}

/// Routes and servers change under load by reload; no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_groups_and_routes_under_load_fails_no_request() {
    let (a, b, c) = (
        Server::start("a").await,
        Server::start("b").await,
        Server::start("c").await,
    );
    let path = std::env::temp_dir().join(format!("sg-reload-{}.yaml", std::process::id()));
    let configs = [
        group_config(&[format!("\"{}\"", a.url())], "balance: round_robin"),
        group_config(
            &[format!("\"{}\"", a.url()), format!("\"{}\"", b.url())],
            "affinity: session",
        ),
        group_config(&[format!("\"{}\"", c.url())], "balance: least_conn").set(
            "routes",
            "[{match: {path: /x/}, upstream: app}, {match: {path: /}, upstream: app}]",
        ),
    ];
    std::fs::write(&path, configs[0].to_string()).unwrap();
    let proxy = AdminProxy::start(configs[0].clone()).await;
    let url = proxy.url("/x/page");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = JoinSet::new();
    for _ in 0..4 {
        let (url, stop) = (url.clone(), stop.clone());
        load.spawn(async move {
            let browser = Browser::new();
            let (mut ok, mut failed) = (0, 0);
            while !stop.load(Ordering::SeqCst) && ok + failed < 5_000 {
                match browser.request(reqwest::Method::GET, &url).send().await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        });
    }
    for round in 0..9 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::fs::write(&path, configs[round % 3].to_string()).unwrap();
        proxy.reloader().reload(&path, false).expect("reload");
    }
    stop.store(true, Ordering::SeqCst);
    let (mut ok, mut failed) = (0, 0);
    while let Some(done) = load.join_next().await {
        let (o, f) = done.unwrap();
        ok += o;
        failed += f;
    }
    assert!(ok > 100, "too little load to say anything: {ok}");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed across reloads",
        ok + failed
    );
    assert!(
        a.served() > 0 && c.served() > 0,
        "{} {} {}",
        a.served(),
        b.served(),
        c.served()
    );
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn a_group_with_no_healthy_server_answers_502() {
    let servers = [format!("\"http://{}\"", refused_addr())];
    let health = "health: {path: /healthz, interval: 50ms, timeout: 200ms, unhealthy: 1}";
    let proxy = AdminProxy::start(group_config(&servers, health)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let response = plain_client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(
        response.text().await.unwrap(),
        "502 Bad Gateway: no healthy upstream server\n"
    );
    let ready = plain_client()
        .get(proxy.admin_url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
}

#[tokio::test]
async fn metrics_count_requests_and_errors_per_server() {
    let a = Server::start("a").await;
    let dead = format!("http://{}", refused_addr());
    let servers = [format!("\"{}\"", a.url()), format!("\"{dead}\"")];
    let proxy = AdminProxy::start(group_config(&servers, "balance: round_robin")).await;
    let client = plain_client();
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(
            client
                .get(proxy.url("/"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    let scrape = proxy.scrape().await;
    let get = |name: &str, url: &str| scrape.get(name, &[("group", "app"), ("server", url)]);
    let ok = statuses.iter().filter(|&&s| s == 200).count() as f64;
    assert_eq!(
        get("sessiongate_upstream_server_requests_total", &a.url()),
        Some(ok)
    );
    assert_eq!(
        get("sessiongate_upstream_server_errors_total", &a.url()),
        Some(0.0)
    );
    let failed = statuses.iter().filter(|&&s| s == 502).count() as f64;
    assert!(failed >= 3.0, "{statuses:?}");
    assert_eq!(
        get("sessiongate_upstream_server_errors_total", &dead),
        Some(failed)
    );
    // Three connection failures in a row made it unhealthy: the rest went to `a`.
    assert_eq!(get("sessiongate_upstream_server_healthy", &dead), Some(0.0));
    assert_eq!(failed, 3.0, "{statuses:?}");
}

/// Two proxies on one Redis: the server a session was given by one proxy is
/// the one the other proxy sends it to.
#[tokio::test]
async fn affinity_is_shared_by_proxies_on_one_redis() {
    let Some(redis) =
        support::redis::RedisServer::start("affinity_is_shared_by_proxies_on_one_redis").await
    else {
        return;
    };
    let (a, b) = (Server::start("a").await, Server::start("b").await);
    let servers = [format!("\"{}\"", a.url()), format!("\"{}\"", b.url())];
    let yaml = group_config(&servers, "affinity: session").with_redis(&redis.url());
    let first = AdminProxy::start(yaml.clone()).await;
    let second = AdminProxy::start(yaml).await;
    let mut homes = BTreeMap::new();
    for v in 0..6 {
        let browser = Browser::new();
        browser.get(&first.url(&format!("/login?as=v{v}"))).await;
        let home = name_of(browser.get(&first.url("/")).await).await;
        let cookie = browser.cookie_header(&first.url("/")).unwrap();
        for _ in 0..20 {
            let other = plain_client()
                .get(second.url("/"))
                .header("cookie", &cookie)
                .send()
                .await
                .unwrap();
            assert_eq!(
                other.headers()["x-seen-data"],
                format!("user=v{v}").as_str()
            );
            assert_eq!(
                name_of(other).await,
                home,
                "visitor {v} changed servers between proxies"
            );
        }
        *homes.entry(home).or_insert(0) += 1;
    }
    assert_eq!(homes.len(), 2, "{homes:?}");
}
