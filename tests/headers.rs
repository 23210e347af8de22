//! What the upstream receives and what the client gets back: session
//! headers, stripping, cookies, hop-by-hop, X-Forwarded-*, Host, caching.
//!
//! Every test runs over HTTP/1.1, h2c and h2 over TLS (see
//! `support::protocol`): `http1::name`, `h2c::name`, `h2_tls::name`. The few
//! that only HTTP/1 can express are plain `#[tokio::test]`s and say why.

mod support;

use support::protocol::{over_every_protocol, Protocol, ProtocolProxy};
use support::*;

async fn site(
    p: Protocol,
    responder: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    config_change: impl FnOnce(ConfigYaml) -> ConfigYaml,
) -> (Upstream, ProtocolProxy) {
    let upstream = Upstream::start(responder).await;
    let proxy = p.start_proxy(config_change(config(&upstream.url()))).await;
    (upstream, proxy)
}

/// The plain HTTP/1.1 listener, for the tests only HTTP/1 can express.
async fn http1_site(
    responder: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    config_change: impl FnOnce(ConfigYaml) -> ConfigYaml,
) -> (Upstream, Proxy) {
    let upstream = Upstream::start(responder).await;
    let proxy = Proxy::start(config_change(config(&upstream.url()))).await;
    (upstream, proxy)
}

async fn upstream_learns_the_session_from_the_session_headers(p: Protocol) {
    let (upstream, proxy) = site(p, |_| Reply::ok(), |c| c).await;
    let browser = p.browser();

    browser.get(&proxy.url("/")).await;
    let created = upstream.last();
    browser.get(&proxy.url("/")).await;
    let returning = upstream.last();

    let id = created.expect_session_id();
    assert!(
        is_base64url_32(&id),
        "X-Session-Id {id:?} is not a session id"
    );
    assert!(created.is_new_session());
    assert_eq!(
        created.session_data(),
        None,
        "no data yet: X-Session-Data absent"
    );
    assert_eq!(returning.expect_session_id(), id);
    assert_eq!(returning.header("x-session-new"), None);
}

async fn session_id_header_is_not_the_cookie(p: Protocol) {
    let (upstream, proxy) = site(p, |_| Reply::ok(), |c| c).await;

    let response = p.get_without_cookie(&proxy.url("/")).await;

    let cookie = p.expect_session_cookie(response.headers());
    let id = upstream.last().expect_session_id();
    assert_eq!(id, cookie.id());
    assert!(!id.contains(cookie.value.split_once('.').unwrap().1));
}

async fn client_sent_session_headers_never_reach_the_upstream(p: Protocol) {
    let (upstream, proxy) = site(p, |_| Reply::ok(), |c| c).await;
    let browser = p.browser();
    browser.get(&proxy.url("/")).await;
    let id = upstream.last().expect_session_id();

    browser
        .send(
            browser
                .request(http::Method::GET, &proxy.url("/"))
                .header("X-Session-Id", "forged-id")
                .header("x-session-new", "true")
                .header("X-SESSION-DATA", "role=admin")
                .header("X-Session-Anything", "1"),
        )
        .await;

    let seen = upstream.last();
    assert_eq!(seen.expect_session_id(), id);
    assert!(!seen.is_new_session());
    assert_eq!(seen.session_data(), None);
    assert_eq!(seen.header("x-session-anything"), None);
    assert_eq!(
        seen.session_header_names(),
        vec!["x-session-id".to_owned()],
        "only the proxy's own session headers may reach the upstream"
    );
}

async fn client_cannot_forge_a_session_id_on_its_first_request(p: Protocol) {
    let (upstream, proxy) = site(p, |_| Reply::ok(), |c| c).await;

    p.send(
        p.plain_client()
            .get(proxy.url("/"))
            .header("X-Session-Id", "attacker-chosen"),
    )
    .await;

    let seen = upstream.last();
    assert_ne!(seen.expect_session_id(), "attacker-chosen");
    assert!(seen.is_new_session());
}

// HTTP/1 only: HTTP/2 forbids `Connection` (RFC 9113 §8.2.2), so nothing can be named in it.
#[tokio::test]
async fn naming_session_headers_in_connection_cannot_hide_them() {
    let (upstream, proxy) = http1_site(|_| Reply::ok(), |c| c).await;

    plain_client()
        .get(proxy.url("/"))
        .header("Connection", "keep-alive, X-Session-Id, X-Session-New")
        .header("X-Session-Id", "forged-id")
        .send()
        .await
        .unwrap();

    let seen = upstream.last();
    let id = seen.expect_session_id();
    assert_ne!(id, "forged-id");
    assert!(is_base64url_32(&id));
    assert!(
        seen.is_new_session(),
        "X-Session-New was hidden by Connection"
    );
    for connection in seen.header_all("connection") {
        assert!(
            !connection.to_ascii_lowercase().contains("x-session"),
            "upstream got Connection: {connection}"
        );
    }
}

async fn custom_header_prefix_names_every_session_header(p: Protocol) {
    let (upstream, proxy) = site(
        p,
        |req| match req.uri.path() {
            "/login" => Reply::ok().header("X-Auth-Set", "user=alice"),
            _ => Reply::ok(),
        },
        |c| c.set("session.header_prefix", "X-Auth-"),
    )
    .await;
    let browser = p.browser();

    let login = browser.get(&proxy.url("/login")).await;
    let created = upstream.last();
    browser
        .send(
            browser
                .request(http::Method::GET, &proxy.url("/"))
                .header("X-Auth-Data", "user=mallory"),
        )
        .await;
    let returning = upstream.last();

    assert!(header_names_with_prefix(login.headers(), "x-auth-").is_empty());
    let id = created.header("x-auth-id").expect("X-Auth-Id").to_owned();
    assert_eq!(created.header("x-auth-new"), Some("true"));
    assert_eq!(
        created.session_id(),
        None,
        "X-Session-Id sent despite the prefix"
    );
    assert_eq!(returning.header("x-auth-id"), Some(id.as_str()));
    assert_eq!(returning.header("x-auth-data"), Some("user=alice"));
}

async fn proxy_cookie_is_removed_and_other_cookies_pass_untouched(p: Protocol) {
    let (upstream, proxy) = site(p, |_| Reply::ok(), |c| c).await;
    let issued = p.expect_session_cookie(p.get_without_cookie(&proxy.url("/")).await.headers());

    p.get_with_cookie(
        &proxy.url("/"),
        &format!(
            "theme=dark; {}; lang=en-GB; sessiongate_other=1",
            issued.pair()
        ),
    )
    .await;

    let seen = upstream.last();
    assert_eq!(seen.expect_session_id(), issued.id());
    assert_eq!(
        seen.cookies(),
        vec![
            ("theme".to_owned(), "dark".to_owned()),
            ("lang".to_owned(), "en-GB".to_owned()),
            ("sessiongate_other".to_owned(), "1".to_owned()),
        ]
    );
}

async fn cookie_header_holding_only_the_proxy_cookie_is_dropped(p: Protocol) {
    let (upstream, proxy) = site(p, |_| Reply::ok(), |c| c).await;
    let issued = p.expect_session_cookie(p.get_without_cookie(&proxy.url("/")).await.headers());

    p.get_with_cookie(&proxy.url("/"), &issued.pair()).await;

    let seen = upstream.last();
    assert_eq!(seen.expect_session_id(), issued.id());
    assert!(
        seen.header_all("cookie").is_empty(),
        "upstream got Cookie: {:?}",
        seen.header_all("cookie")
    );
}

async fn host_prefixed_proxy_cookie_is_removed_too(p: Protocol) {
    let (upstream, proxy) = site(p, |_| Reply::ok(), |c| c).await;

    p.get_with_cookie(
        &proxy.url("/"),
        "a=1; __Host-sessiongate=whatever.value; sessiongate=x.y",
    )
    .await;

    assert_eq!(
        upstream.last().cookies(),
        vec![("a".to_owned(), "1".to_owned())]
    );
}

// HTTP/1 only: `Connection`, `Keep-Alive` and `TE: gzip` are malformed in HTTP/2 (RFC 9113 §8.2.2).
#[tokio::test]
async fn hop_by_hop_request_headers_are_not_forwarded() {
    let (upstream, proxy) = http1_site(|_| Reply::ok(), |c| c).await;

    plain_client()
        .get(proxy.url("/"))
        .header("Connection", "keep-alive, X-Hop-Secret")
        .header("X-Hop-Secret", "1")
        .header("Keep-Alive", "timeout=5")
        .header("Proxy-Authorization", "Basic Zm9vOmJhcg==")
        .header("TE", "gzip")
        .header("X-End-To-End", "kept")
        .send()
        .await
        .unwrap();

    let seen = upstream.last();
    for name in ["x-hop-secret", "keep-alive", "proxy-authorization"] {
        assert!(
            seen.header_all(name).is_empty(),
            "upstream got hop-by-hop {name}: {:?}",
            seen.headers
        );
    }
    assert!(
        !seen
            .header_all("te")
            .iter()
            .any(|v| v.to_ascii_lowercase().contains("gzip")),
        "upstream got TE: gzip"
    );
    assert_eq!(seen.header("x-end-to-end"), Some("kept"));
}

async fn hop_by_hop_response_headers_are_not_returned(p: Protocol) {
    let (_upstream, proxy) = site(
        p,
        |_| {
            Reply::ok()
                .header("Connection", "X-Upstream-Hop")
                .header("X-Upstream-Hop", "1")
                .header("Keep-Alive", "timeout=5")
                .header("X-App", "kept")
        },
        |c| c,
    )
    .await;

    let response = p.get_without_cookie(&proxy.url("/")).await;

    assert_eq!(response.status(), 200);
    assert!(response.headers().get("x-upstream-hop").is_none());
    assert!(response.headers().get("keep-alive").is_none());
    assert_eq!(response.headers()["x-app"], "kept");
}

async fn forwarded_headers_from_an_untrusted_peer_are_replaced(p: Protocol) {
    let (upstream, proxy) = site(p, |_| Reply::ok(), |c| c).await;

    p.send(
        p.plain_client()
            .get(proxy.url("/"))
            .header("X-Forwarded-For", "203.0.113.9")
            .header("X-Forwarded-Proto", "https")
            .header("X-Forwarded-Host", "evil.example"),
    )
    .await;

    let seen = upstream.last();
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some(p.scheme()));
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some(proxy.addr().to_string().as_str())
    );
}

async fn forwarded_headers_from_a_trusted_proxy_are_extended(p: Protocol) {
    let (upstream, proxy) = site(
        p,
        |_| Reply::ok(),
        |c| c.set("trusted_proxies", "[\"127.0.0.0/8\"]"),
    )
    .await;

    p.send(
        p.plain_client()
            .get(proxy.url("/"))
            .header("X-Forwarded-For", "203.0.113.9")
            .header("X-Forwarded-Proto", "https")
            .header("X-Forwarded-Host", "www.example.com"),
    )
    .await;

    let seen = upstream.last();
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("x-forwarded-host"), Some("www.example.com"));
}

async fn forwarded_headers_are_set_when_the_client_sent_none(p: Protocol) {
    let (upstream, proxy) = site(
        p,
        |_| Reply::ok(),
        |c| c.set("trusted_proxies", "[\"127.0.0.0/8\"]"),
    )
    .await;

    p.get_without_cookie(&proxy.url("/")).await;

    let seen = upstream.last();
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some(p.scheme()));
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some(proxy.addr().to_string().as_str())
    );
}

async fn host_is_rewritten_to_the_upstream_by_default(p: Protocol) {
    let (upstream, proxy) = site(p, |_| Reply::ok(), |c| c).await;

    // `Host` over HTTP/1.1, `:authority` over HTTP/2.
    proxy.get_as_host("app.example.com", "/").await;

    let seen = upstream.last();
    assert_eq!(
        seen.header("host"),
        Some(upstream.addr().to_string().as_str())
    );
    assert_eq!(seen.header("x-forwarded-host"), Some("app.example.com"));
}

async fn preserve_host_passes_the_client_host(p: Protocol) {
    let (upstream, proxy) = site(
        p,
        |_| Reply::ok(),
        |c| c.set("upstream.preserve_host", "true"),
    )
    .await;

    // `Host` over HTTP/1.1, `:authority` over HTTP/2.
    proxy.get_as_host("app.example.com", "/").await;

    assert_eq!(upstream.last().header("host"), Some("app.example.com"));
}

async fn response_with_the_session_cookie_is_made_private(p: Protocol) {
    let (_upstream, proxy) = site(
        p,
        |_| Reply::ok().header("Cache-Control", "public, max-age=60, s-maxage=600"),
        |c| c,
    )
    .await;

    let response = p.get_without_cookie(&proxy.url("/")).await;

    p.expect_session_cookie(response.headers());
    let directives = header_tokens(response.headers(), "cache-control");
    assert!(directives.contains(&"private".to_owned()), "{directives:?}");
    assert!(!directives.contains(&"public".to_owned()), "{directives:?}");
    assert!(
        !directives.iter().any(|d| d.starts_with("s-maxage")),
        "{directives:?}"
    );
    assert!(
        directives.contains(&"max-age=60".to_owned()),
        "{directives:?}"
    );
}

async fn response_with_the_session_cookie_and_no_cache_control_gets_private(p: Protocol) {
    let (_upstream, proxy) = site(p, |_| Reply::ok(), |c| c).await;

    let response = p.get_without_cookie(&proxy.url("/")).await;

    p.expect_session_cookie(response.headers());
    assert_eq!(
        header_tokens(response.headers(), "cache-control"),
        vec!["private".to_owned()]
    );
}

async fn no_store_is_kept_on_a_response_with_the_session_cookie(p: Protocol) {
    let (_upstream, proxy) = site(
        p,
        |_| Reply::ok().header("Cache-Control", "no-store"),
        |c| c,
    )
    .await;

    let response = p.get_without_cookie(&proxy.url("/")).await;

    p.expect_session_cookie(response.headers());
    let directives = header_tokens(response.headers(), "cache-control");
    assert!(
        directives.contains(&"no-store".to_owned()),
        "{directives:?}"
    );
    assert!(!directives.contains(&"public".to_owned()), "{directives:?}");
}

async fn response_without_the_session_cookie_keeps_its_cache_control(p: Protocol) {
    let (_upstream, proxy) = site(
        p,
        |_| Reply::ok().header("Cache-Control", "public, max-age=60"),
        |c| c,
    )
    .await;
    let browser = p.browser();
    browser.get(&proxy.url("/")).await;

    let returning = browser.get(&proxy.url("/")).await;

    assert!(p.session_set_cookie(returning.headers()).is_none());
    assert_eq!(
        header_tokens(returning.headers(), "cache-control"),
        vec!["public".to_owned(), "max-age=60".to_owned()]
    );
}

async fn response_to_a_session_request_varies_on_cookie(p: Protocol) {
    let (_upstream, proxy) =
        site(p, |_| Reply::ok().header("Vary", "Accept-Encoding"), |c| c).await;
    let browser = p.browser();
    browser.get(&proxy.url("/")).await;

    let returning = browser.get(&proxy.url("/")).await;

    let vary = header_tokens(returning.headers(), "vary");
    assert!(vary.contains(&"accept-encoding".to_owned()), "{vary:?}");
    assert!(vary.contains(&"cookie".to_owned()), "{vary:?}");
}

async fn vary_cookie_is_not_duplicated(p: Protocol) {
    let (_upstream, proxy) = site(p, |_| Reply::ok().header("Vary", "Cookie"), |c| c).await;

    let response = p.get_without_cookie(&proxy.url("/")).await;

    let vary = header_tokens(response.headers(), "vary");
    assert_eq!(
        vary.iter().filter(|t| *t == "cookie").count(),
        1,
        "{vary:?}"
    );
}

async fn upstream_cookies_are_kept_beside_the_session_cookie(p: Protocol) {
    let (_upstream, proxy) = site(
        p,
        |_| {
            Reply::ok()
                .header("Set-Cookie", "app=1; Path=/")
                .header("Set-Cookie", "csrf=xyz; Path=/; SameSite=Strict")
        },
        |c| c,
    )
    .await;

    let response = p.get_without_cookie(&proxy.url("/")).await;

    let names: Vec<String> = set_cookies(response.headers())
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert!(names.contains(&"app".to_owned()), "{names:?}");
    assert!(names.contains(&"csrf".to_owned()), "{names:?}");
    p.expect_session_cookie(response.headers());
}

over_every_protocol!(
    upstream_learns_the_session_from_the_session_headers,
    session_id_header_is_not_the_cookie,
    client_sent_session_headers_never_reach_the_upstream,
    client_cannot_forge_a_session_id_on_its_first_request,
    custom_header_prefix_names_every_session_header,
    proxy_cookie_is_removed_and_other_cookies_pass_untouched,
    cookie_header_holding_only_the_proxy_cookie_is_dropped,
    host_prefixed_proxy_cookie_is_removed_too,
    hop_by_hop_response_headers_are_not_returned,
    forwarded_headers_from_an_untrusted_peer_are_replaced,
    forwarded_headers_from_a_trusted_proxy_are_extended,
    forwarded_headers_are_set_when_the_client_sent_none,
    host_is_rewritten_to_the_upstream_by_default,
    preserve_host_passes_the_client_host,
    response_with_the_session_cookie_is_made_private,
    response_with_the_session_cookie_and_no_cache_control_gets_private,
    no_store_is_kept_on_a_response_with_the_session_cookie,
    response_without_the_session_cookie_keeps_its_cache_control,
    response_to_a_session_request_varies_on_cookie,
    vary_cookie_is_not_duplicated,
    upstream_cookies_are_kept_beside_the_session_cookie,
);
