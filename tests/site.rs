//! In front of a real site (DESIGN.md §10): the port is the proxy's alone,
//! redirects stay on the proxy, and a request that fails leaves no session behind.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;

use support::ops::*;
use support::redis::RedisServer;
use support::*;

// ---------------------------------------------------------------------------
// The listening port
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_second_proxy_on_a_taken_port_is_refused_with_the_address() {
    let upstream = Upstream::ok().await;
    let first = AdminProxy::start(config(&upstream.url())).await;
    let taken = first.addr();

    let second = bind(
        config(&upstream.url())
            .set("listen", &taken.to_string())
            .set("admin.listen", "null"),
    )
    .await;

    let Err(err) = second else {
        panic!("a second proxy started on {taken}, sharing the first one's port")
    };
    let message = err.to_string();
    assert!(message.contains(&taken.to_string()), "{message}");
    assert!(message.contains("another"), "{message}");
    // The first one still serves every visitor, with its own sessions.
    let browser = Browser::new();
    assert_eq!(browser.get(&first.url("/")).await.status(), 200);
    let id = upstream.last().expect_session_id();
    for _ in 0..20 {
        assert_eq!(browser.get(&first.url("/")).await.status(), 200);
        assert_eq!(upstream.last().expect_session_id(), id);
    }
}

#[tokio::test]
async fn another_program_on_the_port_is_refused_too() {
    let upstream = Upstream::ok().await;
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = other.local_addr().unwrap();

    let Err(err) = bind(config(&upstream.url()).set("listen", &taken.to_string())).await else {
        panic!("the proxy started on a port another program listens on")
    };
    assert!(err.to_string().contains(&taken.to_string()), "{err}");
}

#[tokio::test]
async fn a_port_freed_by_a_stopped_proxy_can_be_taken_again() {
    let upstream = Upstream::ok().await;
    let first = AdminProxy::start(config(&upstream.url())).await;
    let port = first.addr();
    // A connection, so the port has a socket in TIME_WAIT after the stop.
    assert_eq!(get_without_cookie(&first.url("/")).await.status(), 200);
    first.shutdown().await;

    let again = AdminProxy::start(config(&upstream.url()).set("listen", &port.to_string())).await;
    assert_eq!(again.addr(), port);
    assert_eq!(get_without_cookie(&again.url("/")).await.status(), 200);
}

// ---------------------------------------------------------------------------
// Redirects
// ---------------------------------------------------------------------------

/// An upstream that answers every request with a redirect to its own address, as
/// an app that builds absolute URLs from the `Host` it received does.
async fn self_redirecting_upstream() -> Upstream {
    Upstream::start(|seen| {
        let host = seen.header("host").unwrap_or("missing-host").to_owned();
        Reply::status(302)
            .header(
                "location",
                &format!("http://{host}/doku.php?id=start&do=login"),
            )
            .header("content-location", &format!("http://{host}/page"))
            .header("refresh", &format!("0; url=http://{host}/next"))
            .header("link", &format!("<http://{host}/style.css>; rel=preload"))
    })
    .await
}

#[tokio::test]
async fn redirects_to_the_upstreams_own_address_stay_on_the_proxy() {
    let upstream = self_redirecting_upstream().await;
    let up = upstream.addr().to_string();
    let proxy = Proxy::start(config(&upstream.url())).await;
    let here = proxy.addr().to_string();

    let response = get_without_cookie(&proxy.url("/doku.php?do=login")).await;

    assert_eq!(response.status(), 302);
    assert_eq!(upstream.last().header("host"), Some(up.as_str()));
    let h = response.headers();
    assert_eq!(
        h["location"],
        format!("http://{here}/doku.php?id=start&do=login").as_str()
    );
    assert_eq!(
        h["content-location"],
        format!("http://{here}/page").as_str()
    );
    assert_eq!(h["refresh"], format!("0; url=http://{here}/next").as_str());
    // Only the three URL headers are rewritten; others are the app's business.
    assert_eq!(
        h["link"],
        format!("<http://{up}/style.css>; rel=preload").as_str()
    );
    assert_eq!(h.get_all("location").iter().count(), 1);
}

#[tokio::test]
async fn redirects_over_http2_use_the_authority_the_client_used() {
    let upstream = self_redirecting_upstream().await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let mut h2 = h2c(proxy.addr()).await;

    let response = h2
        .send_request(
            http::Request::get("http://site.example:8080/login")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .expect("h2 request");

    assert_eq!(response.status(), 302);
    assert_eq!(
        response.headers()["location"],
        "http://site.example:8080/doku.php?id=start&do=login"
    );
}

#[tokio::test]
async fn redirects_name_the_scheme_a_trusted_proxy_says_the_client_used() {
    let upstream = self_redirecting_upstream().await;
    let proxy =
        Proxy::start(config(&upstream.url()).set("trusted_proxies", "[\"127.0.0.1/32\"]")).await;

    let response = plain_client()
        .get(proxy.url("/"))
        .header("host", "www.example")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();

    assert_eq!(
        response.headers()["location"],
        "https://www.example/doku.php?id=start&do=login"
    );
}

#[tokio::test]
async fn other_locations_pass_unchanged() {
    let upstream = Upstream::start(|seen| {
        let to = seen.query("to").unwrap_or_default();
        Reply::status(303).header("location", &to)
    })
    .await;
    let port = upstream.addr().port();
    let proxy = Proxy::start(config(&upstream.url())).await;

    for to in [
        "/relative?x=1".to_owned(),
        "https://elsewhere.example/".to_owned(),
        format!("http://127.0.0.1:{}/other-port", port.wrapping_add(1)),
        format!("https://127.0.0.1:{port}/other-scheme"),
        format!("http://user@127.0.0.1:{port}/userinfo"),
    ] {
        let url = format!(
            "{}?to={}",
            proxy.url("/"),
            form_urlencoded::byte_serialize(to.as_bytes()).collect::<String>()
        );
        let response = get_without_cookie(&url).await;
        assert_eq!(response.status(), 303);
        assert_eq!(response.headers()["location"], to.as_str(), "{to}");
    }
}

#[tokio::test]
async fn rewrite_redirects_false_passes_the_upstreams_address() {
    let upstream = self_redirecting_upstream().await;
    let up = upstream.addr().to_string();
    let proxy =
        Proxy::start(config(&upstream.url()).set("upstream.rewrite_redirects", "false")).await;

    let response = get_without_cookie(&proxy.url("/")).await;

    assert_eq!(
        response.headers()["location"],
        format!("http://{up}/doku.php?id=start&do=login").as_str()
    );
}

#[tokio::test]
async fn the_upstream_urls_path_is_a_prefix_taken_off_redirects() {
    let upstream = Upstream::start(|seen| {
        let host = seen.header("host").unwrap_or_default().to_owned();
        Reply::status(302).header(
            "location",
            &format!("http://{host}/legacy/next?from={}", seen.uri.path()),
        )
    })
    .await;
    let proxy = Proxy::start(config(&format!("{}/legacy/", upstream.url()))).await;
    let here = proxy.addr().to_string();

    let response = get_without_cookie(&proxy.url("/page?a=1")).await;

    assert_eq!(upstream.last().uri.path(), "/legacy/page");
    assert_eq!(
        response.headers()["location"],
        format!("http://{here}/next?from=/legacy/page").as_str()
    );
}

#[tokio::test]
async fn with_preserve_host_the_app_names_the_proxy_itself() {
    let upstream = self_redirecting_upstream().await;
    let proxy = Proxy::start(config(&upstream.url()).set("upstream.preserve_host", "true")).await;
    let here = proxy.addr().to_string();

    let response = get_without_cookie(&proxy.url("/")).await;

    assert_eq!(upstream.last().header("host"), Some(here.as_str()));
    assert_eq!(
        response.headers()["location"],
        format!("http://{here}/doku.php?id=start&do=login").as_str()
    );
}

// ---------------------------------------------------------------------------
// Failed requests leave nothing behind
// ---------------------------------------------------------------------------

const FAILED: usize = 12;

#[tokio::test]
async fn requests_that_fail_upstream_leave_no_session_in_the_memory_store() {
    let dead = refused_addr();
    let slow = Upstream::start(|_| Reply::ok().after(Duration::from_secs(5))).await;
    let refused = AdminProxy::start(config(&format!("http://{dead}"))).await;
    let timing_out = AdminProxy::start(config(&slow.url()).set("upstream.timeout", "200ms")).await;

    for _ in 0..FAILED {
        assert_eq!(get_without_cookie(&refused.url("/")).await.status(), 502);
    }
    for _ in 0..3 {
        assert_eq!(get_without_cookie(&timing_out.url("/")).await.status(), 504);
    }

    for (proxy, failed) in [(&refused, FAILED), (&timing_out, 3)] {
        let metrics = proxy.scrape().await;
        let requests: f64 = metrics
            .samples
            .iter()
            .filter(|((name, _), _)| name == "sessiongate_requests_total")
            .map(|(_, v)| v)
            .sum();
        assert_eq!(requests, failed as f64, "the failures were counted");
        assert_eq!(metrics.value("sessiongate_sessions_active", &[]), 0.0);
        assert_eq!(
            metrics.value("sessiongate_sessions_created_total", &[]),
            0.0
        );
    }
}

#[tokio::test]
async fn a_session_is_stored_once_its_cookie_is_sent() {
    let upstream = Upstream::ok().await;
    let proxy = AdminProxy::start(config(&upstream.url())).await;

    let response = get_without_cookie(&proxy.url("/")).await;

    let cookie = expect_session_cookie(response.headers());
    let metrics = proxy.scrape().await;
    assert_eq!(metrics.value("sessiongate_sessions_active", &[]), 1.0);
    assert_eq!(
        metrics.value("sessiongate_sessions_created_total", &[]),
        1.0
    );
    // The ID the upstream was told is the one stored and signed in the cookie.
    assert_eq!(upstream.last().expect_session_id(), cookie.id());
    let again = get_with_cookie(&proxy.url("/"), &cookie.pair()).await;
    assert_eq!(again.status(), 200);
    assert!(!upstream.last().is_new_session());
    assert_eq!(upstream.last().expect_session_id(), cookie.id());
}

#[tokio::test]
async fn a_new_sessions_first_write_back_is_stored_with_it() {
    let upstream = Upstream::start(|seen| {
        if seen.uri.path() == "/login" {
            Reply::ok().session_set("user=alice").session_regenerate()
        } else if seen.uri.path() == "/bye" {
            Reply::ok().session_destroy()
        } else {
            Reply::ok()
        }
    })
    .await;
    let proxy = AdminProxy::start(config(&upstream.url())).await;
    let browser = Browser::new();

    // A login on the very first request: one session, holding the data, under an
    // ID the upstream has not seen.
    let response = browser.get(&proxy.url("/login")).await;
    assert_eq!(response.status(), 200);
    let first_id = upstream.last().expect_session_id();
    let cookie = expect_session_cookie(response.headers());
    assert_ne!(cookie.id(), first_id, "regenerated on its first response");
    browser.get(&proxy.url("/")).await;
    let seen = upstream.last();
    assert!(!seen.is_new_session());
    assert_eq!(seen.expect_session_id(), cookie.id());
    assert_eq!(seen.data().get("user").map(String::as_str), Some("alice"));
    let metrics = proxy.scrape().await;
    assert_eq!(metrics.value("sessiongate_sessions_active", &[]), 1.0);
    assert_eq!(
        metrics.value("sessiongate_sessions_created_total", &[]),
        1.0
    );

    // Destroyed on its first response: nothing stored at all.
    let response = get_without_cookie(&proxy.url("/bye")).await;
    assert_eq!(response.status(), 200);
    let metrics = proxy.scrape().await;
    assert_eq!(metrics.value("sessiongate_sessions_active", &[]), 1.0);
    assert_eq!(
        metrics.value("sessiongate_sessions_created_total", &[]),
        1.0
    );
}

#[tokio::test]
async fn requests_that_fail_upstream_leave_no_key_in_redis() {
    let Some(redis) = RedisServer::start("requests_that_fail_upstream_leave_no_key_in_redis").await
    else {
        return;
    };
    let dead = refused_addr();
    let proxy = Proxy::start(config(&format!("http://{dead}")).with_redis(&redis.url())).await;

    for _ in 0..FAILED {
        assert_eq!(get_without_cookie(&proxy.url("/")).await.status(), 502);
    }

    let dbsize = redis.command(&["DBSIZE"]).await;
    assert_eq!(dbsize, ::redis::Value::Int(0), "orphan sessions in Redis");

    // The same proxy against a live upstream stores exactly one key per visitor.
    let upstream = Upstream::ok().await;
    let live = Proxy::start(config(&upstream.url()).with_redis(&redis.url())).await;
    assert_eq!(get_without_cookie(&live.url("/")).await.status(), 200);
    assert_eq!(redis.command(&["DBSIZE"]).await, ::redis::Value::Int(1));
}
