//! The admin listener as an operator uses it: probes, the session API, the bearer
//! token, the refusal to expose it without one, and metrics that move by exactly
//! what the requests made.

mod support;

use sessiongate::config::Config;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use support::ops::*;
use support::*;

const TOKEN: &str = "admin-token-0123456789";

/// An upstream that logs in `/login?user=NAME` by writing `user=NAME` to the session.
async fn app() -> Upstream {
    Upstream::start(|seen| match seen.uri.path() {
        "/login" => Reply::ok().session_set(&format!(
            "user={}",
            seen.query("user").expect("/login needs ?user=")
        )),
        _ => Reply::ok(),
    })
    .await
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

async fn admin_get(url: &str) -> reqwest::Response {
    plain_client().get(url).send().await.expect("admin GET")
}

async fn admin_delete(url: &str) -> reqwest::Response {
    plain_client()
        .delete(url)
        .send()
        .await
        .expect("admin DELETE")
}

async fn json_body(response: reqwest::Response) -> Value {
    let status = response.status();
    let body = response.text().await.expect("body");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({status}): {e}: {body:?}"))
}

/// Logs a new browser in as `user`; returns it and its session id.
async fn login(proxy: &AdminProxy, upstream: &Upstream, user: &str) -> (Browser, String) {
    let browser = Browser::new();
    let response = browser
        .get(&proxy.url(&format!("/login?user={user}")))
        .await;
    assert_eq!(response.status(), 200);
    let id = upstream.last().expect_session_id();
    (browser, id)
}

/// What the upstream learns from the browser's next request.
async fn next_request(proxy: &AdminProxy, upstream: &Upstream, browser: &Browser) -> Seen {
    let response = browser.get(&proxy.url("/whoami")).await;
    assert_eq!(response.status(), 200);
    upstream.last()
}

// ---------------------------------------------------------------------------
// Probes.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn healthz_answers_ok() {
    let upstream = Upstream::ok().await;
    let proxy = AdminProxy::start(config(&upstream.url())).await;

    let response = admin_get(&proxy.admin_url("/healthz")).await;

    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap().trim(), "ok");
}

#[tokio::test]
async fn readyz_is_ready_while_the_upstream_accepts_connections() {
    let upstream = Upstream::ok().await;
    let proxy = AdminProxy::start(config(&upstream.url())).await;

    let response = admin_get(&proxy.admin_url("/readyz")).await;

    assert_eq!(response.status(), 200);
    assert_eq!(
        upstream.count(),
        0,
        "the readiness probe must not send requests"
    );
}

#[tokio::test]
async fn readyz_answers_503_when_the_upstream_is_down() {
    let proxy = AdminProxy::start(config(&format!("http://{}", refused_addr()))).await;

    let response = admin_get(&proxy.admin_url("/readyz")).await;

    assert_eq!(response.status(), 503);
    let body = response.text().await.unwrap();
    assert!(
        body.contains("upstream"),
        "the 503 does not say why: {body:?}"
    );
    // Liveness is not readiness: the process still runs.
    assert_eq!(admin_get(&proxy.admin_url("/healthz")).await.status(), 200);
}

#[tokio::test]
async fn the_admin_listener_never_proxies() {
    let upstream = Upstream::ok().await;
    let proxy = AdminProxy::start(config(&upstream.url())).await;

    for path in ["/", "/login?user=alice", "/sessions/../login"] {
        let response = admin_get(&proxy.admin_url(path)).await;
        assert_eq!(response.status(), 404, "admin GET {path}");
        assert!(session_set_cookie(response.headers()).is_none());
    }
    assert_eq!(
        upstream.count(),
        0,
        "the admin listener forwarded a request"
    );
}

// ---------------------------------------------------------------------------
// The session API.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn get_session_shows_its_data_and_times() {
    let upstream = app().await;
    let proxy = AdminProxy::start(config(&upstream.url())).await;
    let started = unix_now();
    let (_browser, id) = login(&proxy, &upstream, "alice").await;

    let response = admin_get(&proxy.admin_url(&format!("/sessions/{id}"))).await;

    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let session = json_body(response).await;
    assert_eq!(session["id"], id.as_str(), "{session}");
    assert_eq!(session["data"], serde_json::json!({ "user": "alice" }));
    let created = session["created"].as_u64().expect("created: Unix seconds");
    let last_seen = session["last_seen"]
        .as_u64()
        .expect("last_seen: Unix seconds");
    assert!(
        (started..=unix_now()).contains(&created),
        "created {created} is not now ({started})"
    );
    assert!(
        (created..=unix_now()).contains(&last_seen),
        "last_seen {last_seen} before created {created}"
    );
}

#[tokio::test]
async fn get_session_answers_404_for_an_unknown_or_malformed_id() {
    let upstream = Upstream::ok().await;
    let proxy = AdminProxy::start(config(&upstream.url())).await;

    for id in [unknown_session_id().as_str(), "not-a-session-id"] {
        let response = admin_get(&proxy.admin_url(&format!("/sessions/{id}"))).await;
        assert_eq!(response.status(), 404, "GET /sessions/{id}");
    }
}

#[tokio::test]
async fn delete_session_logs_that_browser_out() {
    let upstream = app().await;
    let proxy = AdminProxy::start(config(&upstream.url())).await;
    let (browser, id) = login(&proxy, &upstream, "alice").await;
    let url = proxy.admin_url(&format!("/sessions/{id}"));

    let response = admin_delete(&url).await;

    assert_eq!(response.status(), 204);
    assert_eq!(admin_get(&url).await.status(), 404);
    assert_eq!(
        admin_delete(&url).await.status(),
        404,
        "a second DELETE found it"
    );
    let response = browser.get(&proxy.url("/whoami")).await;
    let seen = upstream.last();
    assert!(
        seen.is_new_session(),
        "the deleted session's cookie still works"
    );
    assert_ne!(seen.expect_session_id(), id);
    assert!(seen.data().is_empty(), "the new session inherited data");
    let cookie = expect_session_cookie(response.headers());
    assert_eq!(cookie.id(), seen.expect_session_id());
}

#[tokio::test]
async fn revoke_by_key_destroys_every_matching_session_and_only_those() {
    let upstream = app().await;
    let proxy = AdminProxy::start(config(&upstream.url())).await;
    let mut alices = Vec::new();
    for _ in 0..3 {
        alices.push(login(&proxy, &upstream, "alice").await);
    }
    let (bob, bob_id) = login(&proxy, &upstream, "bob").await;
    let before = proxy.scrape().await;
    let by_key = proxy.admin_url("/sessions?key=user&value=alice");

    // Find first: the three alice sessions, not bob's.
    let found = json_body(admin_get(&by_key).await).await;
    let found: BTreeSet<String> = found["sessions"]
        .as_array()
        .unwrap_or_else(|| panic!("no sessions array: {found}"))
        .iter()
        .map(|id| id.as_str().expect("id is a string").to_owned())
        .collect();
    let alice_ids: BTreeSet<String> = alices.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(found, alice_ids);

    let response = admin_delete(&by_key).await;

    assert_eq!(response.status(), 200);
    assert_eq!(
        json_body(response).await,
        serde_json::json!({ "destroyed": 3 })
    );
    for (browser, old_id) in &alices {
        let seen = next_request(&proxy, &upstream, browser).await;
        assert!(seen.is_new_session(), "an alice session survived");
        assert_ne!(&seen.expect_session_id(), old_id);
        assert!(seen.data().is_empty(), "{:?}", seen.data());
    }
    let seen = next_request(&proxy, &upstream, &bob).await;
    assert!(!seen.is_new_session(), "bob was logged out too");
    assert_eq!(seen.expect_session_id(), bob_id);
    assert_eq!(seen.data().get("user").map(String::as_str), Some("bob"));
    let found = json_body(admin_get(&by_key).await).await;
    assert_eq!(found, serde_json::json!({ "sessions": [] }));
    let after = proxy.scrape().await;
    assert_eq!(
        after.delta(&before, "sessiongate_sessions_destroyed_total", &[]),
        3.0
    );
    // bob, and the three new sessions the alice browsers got.
    assert_eq!(after.value("sessiongate_sessions_active", &[]), 4.0);
}

#[tokio::test]
async fn revoke_by_key_needs_a_key_and_a_value() {
    let upstream = app().await;
    let proxy = AdminProxy::start(config(&upstream.url())).await;
    let (_browser, id) = login(&proxy, &upstream, "alice").await;

    for query in ["", "?key=user", "?value=alice"] {
        let response = admin_delete(&proxy.admin_url(&format!("/sessions{query}"))).await;
        assert_eq!(response.status(), 400, "DELETE /sessions{query}");
    }
    let response = admin_get(&proxy.admin_url(&format!("/sessions/{id}"))).await;
    assert_eq!(response.status(), 200, "a bad revoke destroyed a session");
}

// ---------------------------------------------------------------------------
// The token.
// ---------------------------------------------------------------------------

async fn with_token() -> (Upstream, AdminProxy) {
    let upstream = app().await;
    let proxy =
        AdminProxy::start(config(&upstream.url()).set("admin.token", &format!("\"{TOKEN}\"")))
            .await;
    (upstream, proxy)
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_refused_with_401() {
    let (upstream, proxy) = with_token().await;
    let (_browser, id) = login(&proxy, &upstream, "alice").await;
    let client = plain_client();
    let longer = format!("Bearer {TOKEN}x");
    let basic = format!("Basic {TOKEN}");
    let wrong_credentials: [Option<&str>; 5] = [
        None,
        Some("Bearer wrong-token"),
        Some(&longer),
        Some(&basic),
        Some(TOKEN),
    ];

    for path in [
        "/metrics".to_owned(),
        format!("/sessions/{id}"),
        "/sessions?key=user&value=alice".to_owned(),
    ] {
        for credentials in wrong_credentials {
            for method in [http::Method::GET, http::Method::DELETE] {
                let mut request = client.request(method.clone(), proxy.admin_url(&path));
                if let Some(credentials) = credentials {
                    request = request.header("authorization", credentials);
                }
                let response = request.send().await.unwrap();
                assert_eq!(
                    response.status(),
                    401,
                    "{method} {path} with {credentials:?}"
                );
                let challenge = response.headers().get("www-authenticate");
                assert!(
                    challenge.is_some_and(|c| c.to_str().unwrap().starts_with("Bearer")),
                    "401 without a Bearer challenge: {challenge:?}"
                );
            }
        }
    }
    // Nothing was destroyed by the refused DELETEs.
    let response = client
        .get(proxy.admin_url(&format!("/sessions/{id}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn the_right_token_is_accepted() {
    let (upstream, proxy) = with_token().await;
    let (_browser, id) = login(&proxy, &upstream, "alice").await;
    let client = plain_client();

    let metrics = scrape(&proxy.admin_url("/metrics"), Some(TOKEN)).await;
    assert_eq!(
        metrics.value("sessiongate_sessions_created_total", &[]),
        1.0
    );
    let response = client
        .get(proxy.admin_url(&format!("/sessions/{id}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = client
        .delete(proxy.admin_url("/sessions?key=user&value=alice"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        json_body(response).await,
        serde_json::json!({ "destroyed": 1 })
    );
}

#[tokio::test]
async fn the_probes_stay_open_without_the_token() {
    let (_upstream, proxy) = with_token().await;

    for path in ["/healthz", "/readyz"] {
        let response = admin_get(&proxy.admin_url(path)).await;
        assert_eq!(response.status(), 200, "GET {path} without the token");
    }
}

// ---------------------------------------------------------------------------
// Exposure.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_non_loopback_admin_listener_without_token_is_refused() {
    let upstream = Upstream::ok().await;
    for listen in ["0.0.0.0:0", "\"[::]:0\""] {
        let yaml = config(&upstream.url())
            .set("admin.listen", listen)
            .to_string();
        // Refused when the file is validated (so `check` refuses it too), with its
        // line and key.
        let Err(error) = Config::parse(&yaml, Path::new("test.yaml"), false) else {
            panic!("admin.listen {listen} without a token was accepted");
        };
        let message = error.to_string();
        assert!(
            message.contains("admin.token"),
            "the error does not say how to fix it: {message}"
        );
        assert!(message.contains("test.yaml:"), "{message}");
        assert!(message.contains("admin.listen"), "{message}");
    }
}

#[tokio::test]
async fn the_binary_exits_1_when_admin_is_exposed_without_token() {
    let upstream = Upstream::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("exposed.yaml");
    let yaml = config(&upstream.url())
        .set("admin.listen", "0.0.0.0:0")
        .set("log.level", "info");
    std::fs::write(&path, yaml.to_string()).unwrap();

    let (code, stderr) = run_to_exit(&["--config", path.to_str().unwrap()]).await;

    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("admin.token"), "{stderr}");
    assert!(stderr.contains("0.0.0.0"), "{stderr}");
    assert!(
        !stderr.contains("admin listening"),
        "it listened before refusing: {stderr}"
    );
    assert_eq!(upstream.count(), 0);
}

/// `check` is how an operator vets a file before deploying it: a file the proxy
/// would refuse to start with must not pass.
#[tokio::test]
async fn check_refuses_an_exposed_admin_listener_without_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("exposed.yaml");
    let yaml = config("http://127.0.0.1:3000").set("admin.listen", "0.0.0.0:9091");
    std::fs::write(&path, yaml.to_string()).unwrap();

    let (code, stderr) = run_to_exit(&["check", "--config", path.to_str().unwrap()]).await;

    assert_eq!(
        code,
        Some(1),
        "check passed a file the proxy refuses: {stderr}"
    );
    assert!(stderr.contains("exposed.yaml"), "{stderr}");
    assert!(stderr.contains("admin.token"), "{stderr}");
}

// ---------------------------------------------------------------------------
// Metrics.
// ---------------------------------------------------------------------------

/// Every series the dashboard and alerts rely on, exported from the start at zero
/// (so a rate over a fresh process is 0, not "no data").
#[tokio::test]
async fn every_series_is_exported_from_the_start() {
    let upstream = Upstream::ok().await;
    let proxy = AdminProxy::start(config(&upstream.url())).await;

    let response = admin_get(&proxy.admin_url("/metrics")).await;
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain")
            || content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let metrics = Scrape::parse(&response.text().await.unwrap());

    for class in ["1xx", "2xx", "3xx", "4xx", "5xx"] {
        for method in ["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS"] {
            let labels = [("method", method), ("status_class", class)];
            assert_eq!(metrics.value("sessiongate_requests_total", &labels), 0.0);
        }
    }
    for kind in [
        "refused",
        "connect_timeout",
        "timeout",
        "reset",
        "protocol",
        "tls",
    ] {
        let labels = [("kind", kind)];
        assert_eq!(
            metrics.value("sessiongate_upstream_errors_total", &labels),
            0.0
        );
    }
    for kind in ["unavailable", "timeout"] {
        let labels = [("kind", kind)];
        assert_eq!(
            metrics.value("sessiongate_store_errors_total", &labels),
            0.0
        );
    }
    for reason in ["malformed", "bad_signature", "expired"] {
        let labels = [("reason", reason)];
        assert_eq!(
            metrics.value("sessiongate_cookies_rejected_total", &labels),
            0.0
        );
    }
    for outcome in ["success", "failure"] {
        let labels = [("outcome", outcome)];
        assert_eq!(
            metrics.value("sessiongate_config_reloads_total", &labels),
            0.0
        );
    }
    for name in [
        "sessiongate_sessions_active",
        "sessiongate_sessions_created_total",
        "sessiongate_sessions_destroyed_total",
        "sessiongate_sessions_regenerated_total",
        "sessiongate_sessions_expired_total",
        "sessiongate_sessions_evicted_total",
        "sessiongate_session_writes_refused_total",
        "sessiongate_open_connections",
        "sessiongate_request_duration_seconds_count",
        "sessiongate_request_duration_seconds_sum",
        "sessiongate_upstream_duration_seconds_count",
        "sessiongate_upstream_duration_seconds_sum",
    ] {
        assert_eq!(metrics.value(name, &[]), 0.0, "{name}");
    }
}

/// `histogram_quantile` needs the `le="+Inf"` bucket: without it every latency
/// quantile on the dashboard is NaN.
#[tokio::test]
async fn latency_histograms_are_cumulative_and_end_in_plus_inf() {
    let upstream = Upstream::ok().await;
    let proxy = AdminProxy::start(config(&upstream.url())).await;
    for _ in 0..3 {
        assert_eq!(get_without_cookie(&proxy.url("/")).await.status(), 200);
    }

    let metrics = proxy.scrape().await;

    for name in [
        "sessiongate_request_duration_seconds",
        "sessiongate_upstream_duration_seconds",
    ] {
        assert_eq!(
            metrics.types.get(name).map(String::as_str),
            Some("histogram"),
            "{name}"
        );
        assert_eq!(metrics.value(&format!("{name}_count"), &[]), 3.0);
        assert!(metrics.value(&format!("{name}_sum"), &[]) > 0.0);
        assert_histogram_consistent(&metrics, name);
    }
}

/// The histogram's buckets are cumulative and end in `+Inf` = `_count`.
fn assert_histogram_consistent(metrics: &Scrape, name: &str) {
    let mut buckets: Vec<(f64, f64)> = metrics
        .series_of(&format!("{name}_bucket"))
        .into_iter()
        .map(|(labels, value)| {
            let le = &labels["le"];
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            (bound, value)
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() >= 5, "{name}: too few buckets: {buckets:?}");
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "{name}: buckets are not cumulative: {buckets:?}"
    );
    let (last_bound, last_count) = *buckets.last().unwrap();
    assert_eq!(last_bound, f64::INFINITY, "{name}: no +Inf bucket");
    assert_eq!(last_count, metrics.value(&format!("{name}_count"), &[]));
}

#[tokio::test]
async fn metrics_move_by_exactly_what_the_requests_did() {
    let upstream = Upstream::start(|seen| match seen.uri.path() {
        "/login" => Reply::ok().session_set("user=alice"),
        "/big" => Reply::ok().session_set(&format!("blob={}", "x".repeat(200))),
        "/rotate" => Reply::ok().session_regenerate(),
        "/logout" => Reply::ok().session_destroy(),
        _ => Reply::ok(),
    })
    .await;
    let yaml = config(&upstream.url()).set("session.max_data_bytes", "64");
    let proxy = AdminProxy::start(yaml.clone()).await;
    let before = proxy.scrape().await;
    let browser = Browser::new();
    let get = |path: &str| browser.get_owned(proxy.url(path));

    // A visitor logs in, tries to store too much, regenerates, logs out.
    assert_eq!(get("/login").await.status(), 200);
    let first_cookie = browser.cookie_header(&proxy.url("/")).unwrap();
    assert_eq!(get("/big").await.status(), 200);
    assert_eq!(get("/page").await.status(), 200);
    assert_eq!(
        upstream.last().session_data(),
        Some("user=alice"),
        "the refused write changed the session"
    );
    assert_eq!(get("/rotate").await.status(), 200);
    assert_eq!(get("/logout").await.status(), 200);
    // Three bad cookies: tampered, malformed, and signed but unknown.
    let (name, value) = first_cookie.split_once('=').unwrap();
    let (id, tag) = value.split_once('.').unwrap();
    let flipped = if tag.starts_with('A') { 'B' } else { 'A' };
    let tampered = format!("{name}={id}.{flipped}{}", &tag[1..]);
    let unknown = format!(
        "{COOKIE}={}",
        signed_cookie_value(&unknown_session_id(), SECRET_A)
    );
    for cookie in [
        tampered.as_str(),
        &format!("{COOKIE}=not-a-cookie"),
        &unknown,
    ] {
        let response = get_with_cookie(&proxy.url("/page"), cookie).await;
        assert_eq!(response.status(), 200);
        assert!(upstream.last().is_new_session(), "{cookie} was accepted");
    }
    let live_cookie =
        expect_session_cookie(get_without_cookie(&proxy.url("/page")).await.headers());

    let after = proxy.scrape().await;
    let moved = |name: &str, labels: &[(&str, &str)]| after.delta(&before, name, labels);
    assert_eq!(
        moved(
            "sessiongate_requests_total",
            &[("method", "GET"), ("status_class", "2xx")]
        ),
        9.0
    );
    for class in ["1xx", "3xx", "4xx", "5xx"] {
        let labels = [("method", "GET"), ("status_class", class)];
        assert_eq!(moved("sessiongate_requests_total", &labels), 0.0, "{class}");
    }
    assert_eq!(
        moved("sessiongate_request_duration_seconds_count", &[]),
        9.0
    );
    assert!(moved("sessiongate_request_duration_seconds_sum", &[]) > 0.0);
    assert_eq!(
        moved("sessiongate_upstream_duration_seconds_count", &[]),
        9.0
    );
    // login, the three bad cookies, and the last cookie-less request.
    assert_eq!(moved("sessiongate_sessions_created_total", &[]), 5.0);
    assert_eq!(moved("sessiongate_sessions_regenerated_total", &[]), 1.0);
    assert_eq!(moved("sessiongate_sessions_destroyed_total", &[]), 1.0);
    assert_eq!(moved("sessiongate_session_writes_refused_total", &[]), 1.0);
    for reason in ["malformed", "bad_signature", "expired"] {
        let labels = [("reason", reason)];
        assert_eq!(
            moved("sessiongate_cookies_rejected_total", &labels),
            1.0,
            "{reason}"
        );
    }
    assert_eq!(after.value("sessiongate_sessions_active", &[]), 4.0);
    for (labels, value) in after.series_of("sessiongate_upstream_errors_total") {
        assert_eq!(value, 0.0, "{labels:?}");
    }
    // Scraping is not a request.
    let again = proxy.scrape().await;
    assert_eq!(
        again.delta(&after, "sessiongate_request_duration_seconds_count", &[]),
        0.0
    );

    // Point the proxy at a dead upstream by a reload: a 502, counted as refused.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sessiongate.yaml");
    let dead = yaml.set("upstream.url", &format!("http://{}", refused_addr()));
    std::fs::write(&file, dead.to_string()).unwrap();
    proxy
        .reloader()
        .reload(&file, false)
        .unwrap_or_else(|e| panic!("reload: {e}"));
    let response = get_with_cookie(&proxy.url("/page"), &live_cookie.pair()).await;
    assert_eq!(response.status(), 502);
    std::fs::write(&file, "listen: [this is not a config\n").unwrap();
    assert!(proxy.reloader().reload(&file, false).is_err());

    let last = proxy.scrape().await;
    let moved = |name: &str, labels: &[(&str, &str)]| last.delta(&again, name, labels);
    assert_eq!(
        moved(
            "sessiongate_requests_total",
            &[("method", "GET"), ("status_class", "5xx")]
        ),
        1.0
    );
    assert_eq!(
        moved(
            "sessiongate_requests_total",
            &[("method", "GET"), ("status_class", "2xx")]
        ),
        0.0
    );
    assert_eq!(
        moved("sessiongate_upstream_errors_total", &[("kind", "refused")]),
        1.0
    );
    for (labels, value) in last.series_of("sessiongate_upstream_errors_total") {
        if labels["kind"] != "refused" {
            assert_eq!(value, 0.0, "{labels:?}");
        }
    }
    assert_eq!(
        moved("sessiongate_request_duration_seconds_count", &[]),
        1.0
    );
    assert_eq!(
        moved("sessiongate_sessions_created_total", &[]),
        0.0,
        "a request with a live cookie created a session"
    );
    assert_eq!(
        last.value(
            "sessiongate_config_reloads_total",
            &[("outcome", "success")]
        ),
        1.0
    );
    assert_eq!(
        last.value(
            "sessiongate_config_reloads_total",
            &[("outcome", "failure")]
        ),
        1.0
    );
}

#[tokio::test]
async fn other_methods_are_counted_under_their_own_label() {
    let upstream = Upstream::ok().await;
    let proxy = AdminProxy::start(config(&upstream.url())).await;
    let before = proxy.scrape().await;
    let client = plain_client();

    for method in [
        http::Method::POST,
        http::Method::PUT,
        http::Method::DELETE,
        http::Method::HEAD,
        http::Method::OPTIONS,
    ] {
        let response = client.request(method, proxy.url("/")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let response = client
        .request(http::Method::from_bytes(b"PURGE").unwrap(), proxy.url("/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let after = proxy.scrape().await;
    for method in ["POST", "PUT", "DELETE", "HEAD", "OPTIONS", "other"] {
        let labels = [("method", method), ("status_class", "2xx")];
        assert_eq!(
            after.delta(&before, "sessiongate_requests_total", &labels),
            1.0,
            "{method}"
        );
    }
    assert_eq!(
        after.delta(
            &before,
            "sessiongate_requests_total",
            &[("method", "GET"), ("status_class", "2xx")]
        ),
        0.0
    );
    // OPTIONS never creates a session; the other five did.
    assert_eq!(
        after.delta(&before, "sessiongate_sessions_created_total", &[]),
        5.0
    );
}

#[tokio::test]
async fn open_connections_follow_the_clients() {
    let upstream = Upstream::ok().await;
    let proxy = AdminProxy::start(config(&upstream.url())).await;
    let open = |metrics: Scrape| metrics.value("sessiongate_open_connections", &[]);
    assert_eq!(open(proxy.scrape().await), 0.0);
    let p = &proxy;

    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(tokio::net::TcpStream::connect(proxy.addr()).await.unwrap());
    }
    wait_until(
        || async move { open(p.scrape().await) == 3.0 },
        "3 open connections",
    )
    .await;
    drop(clients);
    wait_until(
        || async move { open(p.scrape().await) == 0.0 },
        "0 open connections",
    )
    .await;
}

/// One new visitor, then the same visitor back: `sessions_created` moves by
/// exactly one, whichever store (`store` picks it) counts it.
async fn one_new_session_is_counted_once(store: impl FnOnce(ConfigYaml) -> ConfigYaml) {
    let upstream = Upstream::ok().await;
    let proxy = AdminProxy::start(store(config(&upstream.url()))).await;
    let created = |m: &Scrape| m.value("sessiongate_sessions_created_total", &[]);
    let before = proxy.scrape().await;

    let browser = Browser::new();
    assert_eq!(browser.get(&proxy.url("/")).await.status(), 200);
    assert!(upstream.last().is_new_session());
    let after_one = proxy.scrape().await;
    assert_eq!(created(&after_one) - created(&before), 1.0);

    assert_eq!(browser.get(&proxy.url("/again")).await.status(), 200);
    assert!(!upstream.last().is_new_session());
    assert_eq!(created(&proxy.scrape().await), created(&after_one));
}

#[tokio::test]
async fn one_new_session_moves_sessions_created_by_one_in_memory() {
    one_new_session_is_counted_once(|yaml| yaml).await;
}

#[tokio::test]
async fn one_new_session_moves_sessions_created_by_one_on_redis() {
    let test = "one_new_session_moves_sessions_created_by_one_on_redis";
    let Some(redis) = support::redis::RedisServer::start(test).await else {
        return;
    };
    one_new_session_is_counted_once(|yaml| yaml.with_redis(&redis.url())).await;
}

/// Redis down: the request gets 503 and is counted as a store error, never as an
/// upstream error (the upstream was never asked).
#[tokio::test]
async fn a_redis_outage_is_a_store_error_not_an_upstream_error() {
    let test = "a_redis_outage_is_a_store_error_not_an_upstream_error";
    let Some(mut redis) = support::redis::RedisServer::start(test).await else {
        return;
    };
    let upstream = Upstream::ok().await;
    let proxy = AdminProxy::start(
        config(&upstream.url())
            .with_redis(&redis.url())
            .set("store.redis.timeout", "300ms"),
    )
    .await;
    let browser = Browser::new();
    assert_eq!(browser.get(&proxy.url("/")).await.status(), 200);
    let before = proxy.scrape().await;

    redis.kill();
    let response = support::redis::once_noticed(&browser, &proxy.url("/")).await;
    assert_eq!(response.status(), 503);

    let after = proxy.scrape().await;
    for (labels, value) in after.series_of("sessiongate_upstream_errors_total") {
        let kind = &labels["kind"];
        let was = before.value("sessiongate_upstream_errors_total", &[("kind", kind)]);
        assert_eq!(value, was, "upstream_errors_total{{kind={kind}}} moved");
    }
    let store_errors: f64 = ["unavailable", "timeout"]
        .iter()
        .map(|kind| after.delta(&before, "sessiongate_store_errors_total", &[("kind", kind)]))
        .sum();
    assert_eq!(store_errors, 1.0);
    assert_eq!(
        after.delta(
            &before,
            "sessiongate_requests_total",
            &[("method", "GET"), ("status_class", "5xx")]
        ),
        1.0
    );
}

#[tokio::test]
async fn evicted_sessions_are_counted() {
    let upstream = Upstream::ok().await;
    let proxy = AdminProxy::start(config(&upstream.url()).set("session.max_sessions", "2")).await;

    for _ in 0..5 {
        get_without_cookie(&proxy.url("/")).await;
    }

    let metrics = proxy.scrape().await;
    assert_eq!(
        metrics.value("sessiongate_sessions_created_total", &[]),
        5.0
    );
    assert_eq!(
        metrics.value("sessiongate_sessions_evicted_total", &[]),
        3.0
    );
    assert_eq!(metrics.value("sessiongate_sessions_active", &[]), 2.0);
}

#[tokio::test]
async fn expired_sessions_are_counted() {
    let upstream = Upstream::ok().await;
    let proxy = AdminProxy::start(config(&upstream.url()).set("session.idle_timeout", "1s")).await;
    let browser = Browser::new();
    browser.get(&proxy.url("/")).await;
    let id = upstream.last().expect_session_id();

    // Timeouts count whole seconds: the session dies within about two.
    let session = proxy.admin_url(&format!("/sessions/{id}"));
    let session = session.as_str();
    wait_until(
        || async move { admin_get(session).await.status() == 404 },
        "the session to expire",
    )
    .await;
    browser.get(&proxy.url("/")).await;
    assert!(upstream.last().is_new_session());

    let metrics = proxy.scrape().await;
    assert_eq!(
        metrics.value("sessiongate_sessions_expired_total", &[]),
        1.0
    );
    assert_eq!(
        metrics.value(
            "sessiongate_cookies_rejected_total",
            &[("reason", "expired")]
        ),
        1.0
    );
    assert_eq!(metrics.value("sessiongate_sessions_active", &[]), 1.0);
}

/// Polls `condition` every 50 ms until it holds; fails the test after [`PATIENCE`].
async fn wait_until<F, Fut>(condition: F, what: &str)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// The dashboard is built on what is exported.
// ---------------------------------------------------------------------------

/// Every `sessiongate_*` name a query in `deploy/grafana-dashboard.json` uses is a
/// series the proxy exports, and every exported family is on the dashboard.
#[tokio::test]
async fn the_grafana_dashboard_queries_exported_series_only() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana-dashboard.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read the dashboard"))
            .expect("the dashboard is not JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "too few queries: {exprs:?}");
    let upstream = Upstream::ok().await;
    let proxy = AdminProxy::start(config(&upstream.url())).await;
    let exported = proxy.scrape().await.names();

    let mut used = BTreeSet::new();
    for expr in &exprs {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("sessiongate_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                exported.contains(&name),
                "the dashboard queries {name}, which is not exported: {expr}"
            );
            used.insert(name.clone());
            rest = &rest[at + name.len()..];
        }
    }
    let family = |name: &str| {
        ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name)
            .to_owned()
    };
    // Every `by (label)` groups by a label the metric after it carries.
    let metrics = proxy.scrape().await;
    for expr in &exprs {
        for (at, _) in expr.match_indices("by (") {
            let rest = &expr[at + 4..];
            let labels = &rest[..rest.find(')').expect("by (...) is closed")];
            let metric: String = rest[rest.find("sessiongate_").expect("a metric after by")..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            for label in labels.split(',').map(str::trim) {
                match label {
                    // Target labels, added by Prometheus.
                    "instance" | "job" => continue,
                    "le" => {
                        assert!(metric.ends_with("_bucket"), "{expr}: by (le) over {metric}");
                        continue;
                    }
                    _ => {}
                }
                let series = metrics.series_of(&metric);
                assert!(
                    !series.is_empty() && series.iter().all(|(l, _)| l.contains_key(label)),
                    "{expr}: {metric} has no label {label}"
                );
            }
        }
    }
    let used: BTreeSet<String> = used.iter().map(|n| family(n)).collect();
    let exported: BTreeSet<String> = exported.iter().map(|n| family(n)).collect();
    let missing: Vec<_> = exported.difference(&used).collect();
    assert!(missing.is_empty(), "not on the dashboard: {missing:?}");
}

fn collect_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", Value::String(expr)) => out.push(expr.clone()),
                    _ => collect_exprs(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}
