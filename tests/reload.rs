//! Live reload of the built binary on SIGHUP: what applies, what a broken file
//! does (nothing but a log line), and that no request fails while it happens.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::ops::*;
use support::*;

/// The test config, logging at `info` so the listener and reload lines show.
fn base(upstream: &Upstream) -> ConfigYaml {
    config(&upstream.url()).set("log.level", "info")
}

/// `(success, failure)` of `sessiongate_config_reloads_total`.
async fn reloads(proxy: &mut Binary) -> (f64, f64) {
    let metrics = proxy.scrape().await;
    let outcome = |o: &str| metrics.value("sessiongate_config_reloads_total", &[("outcome", o)]);
    (outcome("success"), outcome("failure"))
}

/// Rewrites the file to `next` and reloads; what the proxy said about it (the
/// reload itself must succeed).
async fn reload_to(proxy: &mut Binary, next: ConfigYaml) -> Vec<String> {
    proxy.rewrite(next);
    let mark = proxy.output.len();
    let outcome = proxy.reload().await;
    assert!(outcome.contains("configuration reloaded"), "{outcome}");
    proxy.output[mark..].to_vec()
}

/// Whether `said` says that `what` needs a restart.
fn needs_restart(said: &[String], what: &str) -> bool {
    said.iter()
        .any(|l| l.contains("restart") && l.contains(what))
}

/// 1-based line and column where `needle` starts in `text`.
fn position(text: &str, needle: &str) -> (usize, usize) {
    text.lines()
        .enumerate()
        .find_map(|(i, line)| line.find(needle).map(|col| (i + 1, col + 1)))
        .unwrap_or_else(|| panic!("{needle:?} not in the file"))
}

#[tokio::test(flavor = "multi_thread")]
async fn rotating_the_secret_keeps_old_cookies_and_re_signs_them() {
    let upstream = Upstream::ok().await;
    let mut proxy = Binary::start(base(&upstream)).await;
    let response = get_without_cookie(&proxy.url("/")).await;
    let old = expect_session_cookie(response.headers());
    let id = upstream.last().expect_session_id();
    assert_eq!(old.value, signed_cookie_value(&id, SECRET_A));

    proxy.rewrite(base(&upstream).set(
        "session.secrets",
        &format!("[\"{SECRET_B}\", \"{SECRET_A}\"]"),
    ));
    let outcome = proxy.reload().await;

    assert!(outcome.contains("configuration reloaded"), "{outcome}");
    let response = get_with_cookie(&proxy.url("/after"), &old.pair()).await;
    assert_eq!(response.status(), 200);
    let seen = upstream.last();
    assert_eq!(
        seen.expect_session_id(),
        id,
        "the old cookie lost its session"
    );
    assert!(!seen.is_new_session());
    let resigned = expect_session_cookie(response.headers());
    assert_ne!(resigned.value, old.value, "the cookie was not re-signed");
    assert_eq!(resigned.value, signed_cookie_value(&id, SECRET_B));
    assert!(resigned.has("HttpOnly"));
    assert_eq!(resigned.attr("Path"), Some("/"));
    // The re-signed cookie is current: no further Set-Cookie.
    let response = get_with_cookie(&proxy.url("/again"), &resigned.pair()).await;
    assert!(session_set_cookie(response.headers()).is_none());
    assert_eq!(upstream.last().expect_session_id(), id);
    assert_eq!(reloads(&mut proxy).await, (1.0, 0.0));

    // Rotation done: the old secret goes, and cookies signed with it with it.
    proxy.rewrite(base(&upstream).set("session.secrets", &format!("[\"{SECRET_B}\"]")));
    assert!(proxy.reload().await.contains("configuration reloaded"));
    get_with_cookie(&proxy.url("/"), &old.pair()).await;
    assert!(
        upstream.last().is_new_session(),
        "a removed secret still verifies"
    );
    get_with_cookie(&proxy.url("/"), &resigned.pair()).await;
    assert_eq!(upstream.last().expect_session_id(), id);
    assert_eq!(reloads(&mut proxy).await, (2.0, 0.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_key_is_logged_with_its_line_and_nothing_of_the_file_applies() {
    let upstream = Upstream::ok().await;
    let mut proxy = Binary::start(base(&upstream)).await;
    let browser = Browser::new();
    browser.get(&proxy.url("/")).await;
    let id = upstream.last().expect_session_id();
    // A valid change and a typo in one file.
    let broken = base(&upstream)
        .set("session.exclude_paths", "[\"/static/\"]")
        .set("session.cookie_nam", "sid")
        .to_string();
    let (line, column) = position(&broken, "cookie_nam");

    proxy.rewrite(&broken);
    let outcome = proxy.reload().await;

    assert!(outcome.contains("reload failed"), "{outcome}");
    let location = format!("sessiongate.yaml:{line}:{column}");
    assert!(outcome.contains(&location), "{location} not in {outcome}");
    assert!(outcome.contains("session.cookie_nam"), "{outcome}");
    assert!(!outcome.contains(SECRET_A), "the log echoes the file");
    // The old configuration serves on, whole: the session stays, and the valid
    // half of the broken file did not apply.
    let response = browser.get(&proxy.url("/static/app.js")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.last().session_id(), Some(id.as_str()));
    assert_eq!(reloads(&mut proxy).await, (0.0, 1.0));

    // Fixed, it applies.
    proxy.rewrite(base(&upstream).set("session.exclude_paths", "[\"/static/\"]"));
    assert!(proxy.reload().await.contains("configuration reloaded"));
    browser.get(&proxy.url("/static/app.js")).await;
    assert_eq!(upstream.last().session_header_names(), Vec::<String>::new());
    assert_eq!(reloads(&mut proxy).await, (1.0, 1.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_yaml_is_logged_with_its_line_and_the_old_config_serves_on() {
    let upstream = Upstream::ok().await;
    let mut proxy = Binary::start(base(&upstream)).await;
    let browser = Browser::new();
    browser.get(&proxy.url("/")).await;
    let id = upstream.last().expect_session_id();
    // A tab where YAML wants spaces.
    let broken = base(&upstream)
        .set("session.exclude_paths", "[\"/static/\"]")
        .to_string()
        .replace("  exclude_paths", "\texclude_paths");
    let (line, _) = position(&broken, "\texclude_paths");

    proxy.rewrite(&broken);
    let outcome = proxy.reload().await;

    assert!(outcome.contains("reload failed"), "{outcome}");
    let location = format!("sessiongate.yaml:{line}:");
    assert!(outcome.contains(&location), "{location} not in {outcome}");
    let response = browser.get(&proxy.url("/static/app.js")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.last().session_id(), Some(id.as_str()));
    assert_eq!(reloads(&mut proxy).await, (0.0, 1.0));
}

/// A key written twice (two people edited the file) is an error naming the key.
#[tokio::test(flavor = "multi_thread")]
async fn a_duplicate_key_is_logged_with_its_line_and_key() {
    let upstream = Upstream::ok().await;
    let mut proxy = Binary::start(base(&upstream)).await;
    let mut broken = base(&upstream).to_string();
    broken.push_str("listen: 127.0.0.1:0\n");
    let line = broken.lines().count();

    proxy.rewrite(&broken);
    let outcome = proxy.reload().await;

    assert!(outcome.contains("reload failed"), "{outcome}");
    let location = format!("sessiongate.yaml:{line}:1: listen:");
    assert!(outcome.contains(&location), "{location} not in {outcome}");
    assert_eq!(reloads(&mut proxy).await, (0.0, 1.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn new_exclude_paths_apply_on_reload() {
    let upstream = Upstream::ok().await;
    let mut proxy = Binary::start(base(&upstream)).await;
    let response = get_without_cookie(&proxy.url("/static/app.js")).await;
    assert!(session_set_cookie(response.headers()).is_some());
    assert!(upstream.last().session_id().is_some());

    proxy.rewrite(base(&upstream).set("session.exclude_paths", "[\"/static/\"]"));
    assert!(proxy.reload().await.contains("configuration reloaded"));

    let browser = Browser::new();
    browser.get(&proxy.url("/page")).await;
    let id = upstream.last().expect_session_id();
    for request in 0..2 {
        let response = if request == 0 {
            browser.get(&proxy.url("/static/app.js")).await
        } else {
            get_without_cookie(&proxy.url("/static/app.js")).await
        };
        assert_eq!(response.status(), 200);
        assert!(
            session_set_cookie(response.headers()).is_none(),
            "an excluded path set a cookie"
        );
        let seen = upstream.last();
        assert_eq!(seen.session_header_names(), Vec::<String>::new());
        assert!(
            seen.cookies().iter().all(|(name, _)| name != COOKIE),
            "the session cookie went upstream"
        );
    }
    browser.get(&proxy.url("/page")).await;
    let seen = upstream.last();
    assert_eq!(seen.expect_session_id(), id);
    assert!(!seen.is_new_session());
    assert_eq!(reloads(&mut proxy).await, (1.0, 0.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_listener_address_is_reported_as_needing_a_restart() {
    let upstream = Upstream::ok().await;
    let mut proxy = Binary::start(base(&upstream)).await;
    let elsewhere = refused_addr();

    let said = reload_to(
        &mut proxy,
        base(&upstream)
            .set("listen", &elsewhere.to_string())
            .set("session.exclude_paths", "[\"/static/\"]"),
    )
    .await;

    assert!(
        needs_restart(&said, "listener"),
        "no word that the listener needs a restart:\n{}",
        said.join("\n")
    );
    assert!(
        std::net::TcpStream::connect(elsewhere).is_err(),
        "a reload opened a listener"
    );
    // The old listener serves on, with the rest of the file applied.
    let response = get_without_cookie(&proxy.url("/static/app.js")).await;
    assert_eq!(response.status(), 200);
    assert!(upstream.last().session_id().is_none());
}

/// The connection cap is set up once, at start: a reload that changes it says so.
/// (The field-by-field list this replaced had no entry for it.)
#[tokio::test(flavor = "multi_thread")]
async fn a_new_connection_cap_is_reported_as_needing_a_restart() {
    let upstream = Upstream::ok().await;
    let mut proxy = Binary::start(base(&upstream)).await;

    let said = reload_to(
        &mut proxy,
        base(&upstream).set("limits.max_connections", "5"),
    )
    .await;

    assert!(
        needs_restart(&said, "limits"),
        "no word that limits needs a restart:\n{}",
        said.join("\n")
    );
    assert!(
        !needs_restart(&said, "listen"),
        "a listener reported as changed:\n{}",
        said.join("\n")
    );
}

/// The worker threads are started once: a reload that changes `workers` says
/// so and serves on with the threads it has.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_worker_count_is_reported_as_needing_a_restart() {
    let upstream = Upstream::ok().await;
    let mut proxy = Binary::start(base(&upstream).set("workers", "2")).await;

    let said = reload_to(&mut proxy, base(&upstream).set("workers", "3")).await;

    assert!(
        needs_restart(&said, "workers"),
        "no word that workers needs a restart:\n{}",
        said.join("\n")
    );
    let response = get_without_cookie(&proxy.url("/")).await;
    assert_eq!(response.status(), 200);
}

/// Eight browsers request without pause while the config is reloaded ten times:
/// every response is a 2xx, and no browser loses its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_reloads_under_load_fail_no_request() {
    let upstream = Upstream::start(|_| Reply::ok().after(Duration::from_millis(1))).await;
    let mut proxy = Binary::start(base(&upstream)).await;
    let before = proxy.scrape().await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut browsers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let url = proxy.url("/load");
        let stop = stop.clone();
        browsers.spawn(async move {
            let browser = Browser::new();
            let mut statuses = Vec::new();
            let mut cookies = BTreeSet::new();
            while !stop.load(Ordering::Relaxed) {
                let response = browser.get(&url).await;
                statuses.push(response.status().as_u16());
                if let Some(cookie) = session_set_cookie(response.headers()) {
                    cookies.insert(cookie.value);
                }
            }
            (statuses, cookies)
        });
    }
    for i in 0..10 {
        // Each reload lands among at least 20 fresh requests.
        upstream.wait_for_arrivals(upstream.count() + 20).await;
        proxy.rewrite(base(&upstream).set("session.idle_timeout", &format!("{}m", 30 + i)));
        let outcome = proxy.reload().await;
        assert!(outcome.contains("configuration reloaded"), "{outcome}");
    }
    stop.store(true, Ordering::Relaxed);

    let mut total = 0;
    while let Some(joined) = browsers.join_next().await {
        let (statuses, cookies) = joined.expect("a browser failed (a request was dropped?)");
        total += statuses.len();
        let failed: Vec<_> = statuses
            .iter()
            .filter(|s| !(200..300).contains(*s))
            .collect();
        assert!(failed.is_empty(), "non-2xx under reload: {failed:?}");
        assert_eq!(
            cookies.len(),
            1,
            "a browser was given a new session during reloads"
        );
    }
    assert!(total >= 200, "too little load: {total} requests");
    let after = proxy.scrape().await;
    let get = |class: &str| {
        after.delta(
            &before,
            "sessiongate_requests_total",
            &[("method", "GET"), ("status_class", class)],
        )
    };
    assert_eq!(get("2xx"), total as f64);
    assert_eq!(get("5xx"), 0.0);
    assert_eq!(
        after.value(
            "sessiongate_config_reloads_total",
            &[("outcome", "success")]
        ),
        10.0
    );
    assert_eq!(after.value("sessiongate_sessions_created_total", &[]), 8.0);
}

/// An admin token added (or rotated) by a reload guards the admin API at once.
#[tokio::test(flavor = "multi_thread")]
async fn an_admin_token_set_by_reload_applies_at_once() {
    let upstream = Upstream::ok().await;
    let mut proxy = Binary::start(base(&upstream)).await;
    let metrics = format!("http://{}/metrics", proxy.admin_addr().await);
    let client = plain_client();
    assert_eq!(client.get(&metrics).send().await.unwrap().status(), 200);

    proxy.rewrite(base(&upstream).set("admin.token", "\"reloaded-admin-token\""));
    assert!(proxy.reload().await.contains("configuration reloaded"));

    assert_eq!(client.get(&metrics).send().await.unwrap().status(), 401);
    let scraped = scrape(&metrics, Some("reloaded-admin-token")).await;
    assert_eq!(
        scraped.value(
            "sessiongate_config_reloads_total",
            &[("outcome", "success")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shorter_idle_timeout_applies_to_live_sessions_on_reload() {
    let upstream = Upstream::ok().await;
    let mut proxy = Binary::start(base(&upstream).set("session.idle_timeout", "1h")).await;
    let browser = Browser::new();
    browser.get(&proxy.url("/")).await;
    let id = upstream.last().expect_session_id();

    proxy.rewrite(base(&upstream).set("session.idle_timeout", "1s"));
    assert!(proxy.reload().await.contains("configuration reloaded"));

    // Timeouts are kept to the second: idle for over 2 s is past a 1 s timeout.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    browser.get(&proxy.url("/")).await;
    let seen = upstream.last();
    assert_ne!(
        seen.expect_session_id(),
        id,
        "the old idle timeout still applied"
    );
    assert!(seen.is_new_session());
}

/// Whether `cookie` still names its session: what the upstream saw.
async fn still_live(proxy: &Binary, upstream: &Upstream, cookie: &SetCookie) -> bool {
    let response = get_with_cookie(&proxy.url("/"), &cookie.pair()).await;
    assert_eq!(response.status(), 200);
    let seen = upstream.last();
    !seen.is_new_session() && seen.session_id() == Some(cookie.id())
}

/// A reload that shortens both session timeouts applies both, together, to the
/// sessions made before it, at their next use. `store` picks the store.
async fn both_timeouts_change_together_on_reload(store: impl Fn(ConfigYaml) -> ConfigYaml) {
    let upstream = Upstream::ok().await;
    let yaml = |idle: &str, absolute: &str| {
        store(base(&upstream))
            .set("session.idle_timeout", idle)
            .set("session.absolute_timeout", absolute)
    };
    let mut proxy = Binary::start(yaml("1h", "1h")).await;
    // Timeouts are kept to the second: start late in one, the worst case.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(
        (1850 - u64::from(now.subsec_millis())) % 1000,
    ))
    .await;
    let cookie =
        || async { expect_session_cookie(get_without_cookie(&proxy.url("/")).await.headers()) };
    let (in_use, left) = (cookie().await, cookie().await);
    let created = tokio::time::Instant::now();

    proxy.rewrite(yaml("1s", "3s"));
    assert!(proxy.reload().await.contains("configuration reloaded"));

    // Used every 0.7 s, so never idle for the new idle timeout.
    let late = Duration::from_millis(1500);
    let mut left_checked = false;
    while created.elapsed() < Duration::from_secs(3) + late {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let live = still_live(&proxy, &upstream, &in_use).await;
        if created.elapsed() < Duration::from_millis(2100) {
            assert!(live, "a session in use was lost");
        }
        if !left_checked && created.elapsed() >= Duration::from_secs(1) + late {
            assert!(
                !still_live(&proxy, &upstream, &left).await,
                "the old idle timeout still applied"
            );
            left_checked = true;
        }
    }
    assert!(
        !still_live(&proxy, &upstream, &in_use).await,
        "the old absolute timeout still applied"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn both_timeouts_change_together_on_reload_in_memory() {
    both_timeouts_change_together_on_reload(|yaml| yaml).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn both_timeouts_change_together_on_reload_on_redis() {
    let test = "both_timeouts_change_together_on_reload_on_redis";
    let Some(redis) = support::redis::RedisServer::start(test).await else {
        return;
    };
    both_timeouts_change_together_on_reload(|yaml| yaml.with_redis(&redis.url())).await;
}
