//! The memory store: idle and absolute expiry, and which sessions the
//! `max_sessions` cap evicts.
//!
//! Expiry can only be observed by letting real time pass, so these tests use
//! timeouts of a couple of seconds and sleep past them. A session must live at
//! least its timeout; the store may take up to a second longer to notice (it
//! keeps times to the second and sweeps every second), so "gone" is checked
//! 1.5s past the timeout and "alive" well inside it.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::*;

async fn site(config_change: impl FnOnce(ConfigYaml) -> ConfigYaml) -> (Upstream, Proxy) {
    let upstream = Upstream::ok().await;
    let proxy = Proxy::start(config_change(config(&upstream.url()))).await;
    (upstream, proxy)
}

/// Waits until 850ms past a wall-clock second. A store that keeps times to the
/// second sees 1.2s later as two seconds later: the worst case for rounding, so a
/// session that would expire early does so on every run, not one in five.
async fn late_in_a_wall_clock_second() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let wait = (1850 - u64::from(now.subsec_millis())) % 1000;
    tokio::time::sleep(Duration::from_millis(wait)).await;
}

/// A visitor with no cookie: the session cookie it is given.
async fn new_visitor(client: &reqwest::Client, proxy: &Proxy) -> SetCookie {
    let response = client.get(proxy.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    expect_session_cookie(response.headers())
}

/// Presents `cookie`: what the upstream saw.
async fn come_back(upstream: &Upstream, proxy: &Proxy, cookie: &SetCookie) -> Seen {
    let response = get_with_cookie(&proxy.url("/"), &cookie.pair()).await;
    assert_eq!(response.status(), 200);
    upstream.last()
}

/// Fails unless `cookie` still names its live session.
async fn assert_alive(upstream: &Upstream, proxy: &Proxy, cookie: &SetCookie, why: &str) {
    let seen = come_back(upstream, proxy, cookie).await;
    assert!(
        !seen.is_new_session() && seen.session_id() == Some(cookie.id()),
        "session lost: {why}"
    );
}

/// Fails unless `cookie` now gets a brand new session.
async fn assert_gone(upstream: &Upstream, proxy: &Proxy, cookie: &SetCookie, why: &str) {
    let seen = come_back(upstream, proxy, cookie).await;
    assert!(
        seen.is_new_session() && seen.session_id() != Some(cookie.id()),
        "session still alive: {why}"
    );
}

#[tokio::test]
async fn session_expires_after_the_idle_timeout() {
    let (upstream, proxy) = site(|c| c.set("session.idle_timeout", "2s")).await;
    let cookie = new_visitor(&plain_client(), &proxy).await;

    tokio::time::sleep(Duration::from_millis(3500)).await;

    assert_gone(
        &upstream,
        &proxy,
        &cookie,
        "idle for longer than idle_timeout",
    )
    .await;
}

#[tokio::test]
async fn use_keeps_a_session_alive_past_the_idle_timeout() {
    let (upstream, proxy) = site(|c| c.set("session.idle_timeout", "2s")).await;
    late_in_a_wall_clock_second().await;
    let cookie = new_visitor(&plain_client(), &proxy).await;

    // Each visit is within 2s of the previous one; the last is 3.6s after creation.
    for visit in 1..=3 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let why = format!("visit {visit}, each within idle_timeout of the last");
        assert_alive(&upstream, &proxy, &cookie, &why).await;
    }
}

#[tokio::test]
async fn session_expires_at_the_absolute_timeout_even_when_used() {
    let (upstream, proxy) = site(|c| {
        c.set("session.idle_timeout", "10s")
            .set("session.absolute_timeout", "2s")
    })
    .await;
    late_in_a_wall_clock_second().await;
    let cookie = new_visitor(&plain_client(), &proxy).await;
    assert_eq!(cookie.max_age(), Some(2), "Max-Age is the absolute timeout");

    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_alive(&upstream, &proxy, &cookie, "younger than absolute_timeout").await;
    tokio::time::sleep(Duration::from_millis(2300)).await;

    // Used 2.3s ago (well inside the idle timeout) but created 3.5s ago.
    assert_gone(&upstream, &proxy, &cookie, "older than absolute_timeout").await;
}

#[tokio::test]
async fn a_flood_of_cookieless_requests_cannot_evict_returning_visitors() {
    let (upstream, proxy) = site(|c| c.set("session.max_sessions", "20")).await;
    let client = plain_client();
    let mut users = Vec::new();
    for _ in 0..5 {
        let cookie = new_visitor(&client, &proxy).await;
        assert_alive(&upstream, &proxy, &cookie, "just created").await;
        users.push(cookie);
    }

    let mut flood = Vec::new();
    for _ in 0..200 {
        flood.push(new_visitor(&client, &proxy).await);
    }

    for user in &users {
        assert_alive(
            &upstream,
            &proxy,
            user,
            "a returning visitor was evicted by the flood",
        )
        .await;
    }
    assert_alive(
        &upstream,
        &proxy,
        flood.last().unwrap(),
        "the newest session was evicted",
    )
    .await;
    assert_gone(
        &upstream,
        &proxy,
        &flood[0],
        "max_sessions: 20 held 200 never-returned sessions",
    )
    .await;
}

#[tokio::test]
async fn oldest_never_returned_sessions_are_evicted_first() {
    let (upstream, proxy) = site(|c| c.set("session.max_sessions", "10")).await;
    let client = plain_client();

    let mut visitors = Vec::new();
    for _ in 0..15 {
        visitors.push(new_visitor(&client, &proxy).await);
    }

    // The 10 newest remain; check them before the 5 oldest, since each
    // look-up of an evicted cookie creates a session of its own.
    for (i, cookie) in visitors.iter().enumerate().skip(5) {
        assert_alive(&upstream, &proxy, cookie, &format!("visitor {i} of 15")).await;
    }
    for (i, cookie) in visitors.iter().enumerate().take(5) {
        assert_gone(&upstream, &proxy, cookie, &format!("visitor {i} of 15")).await;
    }
}

#[tokio::test]
async fn when_every_session_came_back_the_least_recently_seen_is_evicted() {
    let (upstream, proxy) = site(|c| c.set("session.max_sessions", "3")).await;
    let client = plain_client();
    let first = new_visitor(&client, &proxy).await;
    let second = new_visitor(&client, &proxy).await;
    let third = new_visitor(&client, &proxy).await;

    // Last-seen times are kept to the second: space the returns by more.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_alive(&upstream, &proxy, &second, "came back").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_alive(&upstream, &proxy, &first, "came back").await;
    assert_alive(&upstream, &proxy, &third, "came back").await;
    new_visitor(&client, &proxy).await;

    assert_alive(&upstream, &proxy, &first, "seen recently").await;
    assert_alive(&upstream, &proxy, &third, "seen recently").await;
    assert_gone(
        &upstream,
        &proxy,
        &second,
        "least recently seen, store full",
    )
    .await;
}
