//! Routes, the login gate and cross-site protection (`DESIGN.md` §11), seen from
//! outside: what the client gets and what reaches the upstream.
//!
//! Every test runs over HTTP/1.1, h2c and h2 over TLS (see `support::protocol`).

mod support;

use reqwest::Method;
use support::protocol::{over_every_protocol, Protocol, ProtocolProxy};
use support::*;

/// `/login?as=NAME&role=ROLE` logs in (sets `user` and `role`); `/logout`
/// empties `user`; anything else answers `ok`.
fn app(req: &Seen) -> Reply {
    match req.uri.path() {
        "/login" => match req.query("as") {
            Some(name) => {
                let role = req.query("role").unwrap_or_else(|| "user".to_owned());
                Reply::ok().session_set(&format!("user={name}&role={role}"))
            }
            None => Reply::ok().body("the login form"),
        },
        "/logout" => Reply::ok().session_set("user="),
        _ => Reply::ok(),
    }
}

/// The example site: `/admin/` for `role=admin`, `/account/` for anyone logged
/// in, `/static/` without sessions, `/api/` open but protected from other sites,
/// and the rest open.
const ROUTES: &str = r#"[
  {match: {path: /admin/}, require: {key: role, values: [admin]}, login_url: /login},
  {match: {path: /account/}, require: {key: user}, login_url: "/login"},
  {match: {path: /static/}, session: off},
  {match: {path: /partner/}, trusted_origins: ["https://partner.example"]},
  {match: {path: /open/}, cross_site: allow},
  {match: {path: /}}
]"#;

async fn site(p: Protocol, routes: &str) -> (Upstream, ProtocolProxy) {
    let upstream = Upstream::start(app).await;
    let proxy = p
        .start_proxy(config(&upstream.url()).set("routes", routes))
        .await;
    (upstream, proxy)
}

async fn a_navigation_without_login_is_sent_to_the_login_page_with_next(p: Protocol) {
    let (upstream, proxy) = site(p, ROUTES).await;
    let client = p.plain_client();
    for mode in [Some("navigate"), None] {
        let mut request = client
            .get(proxy.url("/account/orders?page=2&sort=a b"))
            .header("accept", "text/html,application/xhtml+xml;q=0.9");
        if let Some(mode) = mode {
            request = request.header("sec-fetch-mode", mode);
        }
        let response = p.send(request).await;
        assert_eq!(response.status(), 303, "[{p}] Sec-Fetch-Mode {mode:?}");
        assert_eq!(
            response.headers()["location"],
            "/login?next=/account/orders%3Fpage%3D2%26sort%3Da%2520b",
            "[{p}]"
        );
        assert_eq!(response.headers()["cache-control"], "no-store", "[{p}]");
    }
    assert_eq!(upstream.count(), 0, "[{p}] a gated request reached the app");
}

async fn fetch_json_and_other_methods_get_a_json_401(p: Protocol) {
    let (upstream, proxy) = site(p, ROUTES).await;
    let client = p.plain_client();
    let cases = [
        (
            Method::GET,
            vec![("sec-fetch-mode", "cors"), ("accept", "text/html")],
        ),
        (Method::GET, vec![("accept", "application/json")]),
        (Method::GET, vec![]),
        (
            Method::POST,
            vec![("sec-fetch-mode", "navigate"), ("accept", "text/html")],
        ),
    ];
    for (method, headers) in cases {
        let mut request = client.request(method.clone(), proxy.url("/account/data"));
        for (name, value) in &headers {
            request = request.header(*name, *value);
        }
        let response = p.send(request).await;
        assert_eq!(response.status(), 401, "[{p}] {method} {headers:?}");
        assert_eq!(response.headers()["cache-control"], "no-store", "[{p}]");
        assert_eq!(response.headers()["content-type"], "application/json");
        let body = response.text().await.unwrap();
        assert_eq!(
            body.trim_end(),
            r#"{"error":"login required","login_url":"/login"}"#,
            "[{p}]"
        );
    }
    assert_eq!(upstream.count(), 0, "[{p}] a gated request reached the app");
}

async fn head_navigation_gets_the_redirect_without_a_body(p: Protocol) {
    let (_upstream, proxy) = site(p, ROUTES).await;
    let request = p
        .plain_client()
        .head(proxy.url("/admin/"))
        .header("sec-fetch-mode", "navigate");
    let response = p.send(request).await;
    assert_eq!(response.status(), 303, "[{p}]");
    assert_eq!(response.headers()["location"], "/login?next=/admin/");
    assert!(response.bytes().await.unwrap().is_empty(), "[{p}]");
    // The connection carries the next request cleanly.
    let again = p.send(p.plain_client().get(proxy.url("/"))).await;
    assert_eq!(again.status(), 200, "[{p}]");
}

async fn after_login_the_gate_lets_the_user_through_and_checks_the_role(p: Protocol) {
    let (upstream, proxy) = site(p, ROUTES).await;
    let browser = p.browser();
    // The login page itself is never gated.
    let form = browser.get(&proxy.url("/login?next=/account/")).await;
    assert_eq!(form.status(), 200, "[{p}]");
    assert_eq!(form.text().await.unwrap(), "the login form");

    browser.get(&proxy.url("/login?as=alice")).await;
    let account = browser.get(&proxy.url("/account/")).await;
    assert_eq!(account.status(), 200, "[{p}]");
    assert_eq!(upstream.last().uri.path(), "/account/");
    assert_eq!(
        upstream.last().data().get("user").map(String::as_str),
        Some("alice")
    );

    // Logged in, but not an admin.
    let admin = browser.get(&proxy.url("/admin/users")).await;
    assert_eq!(admin.status(), 403, "[{p}]");
    assert_eq!(
        upstream.last().uri.path(),
        "/account/",
        "[{p}] /admin/ reached the app"
    );

    // An admin gets in.
    browser.get(&proxy.url("/login?as=root&role=admin")).await;
    let admin = browser.get(&proxy.url("/admin/users")).await;
    assert_eq!(admin.status(), 200, "[{p}]");
    assert_eq!(upstream.last().uri.path(), "/admin/users");

    // Logging out (emptying the key) closes the gate again.
    browser.get(&proxy.url("/logout")).await;
    let account = browser.get(&proxy.url("/account/")).await;
    assert_eq!(account.status(), 401, "[{p}]");
}

async fn next_never_leaves_the_site(p: Protocol) {
    let routes = r#"[{match: {path: /}, require: {key: user}, login_url: /login}]"#;
    let (_upstream, proxy) = site(p, routes).await;
    // Targets a browser could read as another host, were they echoed as they are.
    for target in ["//evil.example/x", "/\\evil.example/x", "///evil.example"] {
        let request = p
            .plain_client()
            .get(proxy.url(target))
            .header("sec-fetch-mode", "navigate");
        let response = p.send(request).await;
        assert_eq!(response.status(), 303, "[{p}] {target}");
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        let next = location.strip_prefix("/login?next=").expect("next");
        assert!(
            next.starts_with('/') && !next.starts_with("//") && !next.contains('\\'),
            "[{p}] {target} -> {location}"
        );
    }
}

async fn a_session_off_route_gets_no_session_and_no_session_headers(p: Protocol) {
    let (upstream, proxy) = site(p, ROUTES).await;
    let browser = p.browser();
    browser.get(&proxy.url("/login?as=alice")).await;
    let css = browser.get(&proxy.url("/static/site.css")).await;
    assert_eq!(css.status(), 200);
    assert!(p.session_set_cookie(css.headers()).is_none(), "[{p}]");
    let seen = upstream.last();
    assert_eq!(seen.uri.path(), "/static/site.css");
    assert!(
        seen.session_header_names().is_empty(),
        "[{p}] {:?}",
        seen.session_header_names()
    );
    assert!(
        !seen.cookies().iter().any(|(n, _)| *n == p.cookie_name()),
        "[{p}] the proxy's cookie reached the app"
    );
}

async fn cross_site_unsafe_requests_are_refused(p: Protocol) {
    let (upstream, proxy) = site(p, ROUTES).await;
    let client = p.plain_client();
    let refused: &[&[(&str, &str)]] = &[
        &[("sec-fetch-site", "cross-site")],
        &[("sec-fetch-site", "same-site")],
        &[("origin", "https://evil.example")],
        &[("origin", "null")],
    ];
    for headers in refused {
        let mut request = client.post(proxy.url("/transfer")).body("amount=100");
        for (name, value) in *headers {
            request = request.header(*name, *value);
        }
        let response = p.send(request).await;
        assert_eq!(response.status(), 403, "[{p}] {headers:?}");
    }
    assert_eq!(
        upstream.count(),
        0,
        "[{p}] a cross-site POST reached the app"
    );

    let own_origin = proxy.url("");
    let allowed: Vec<Vec<(&str, String)>> = vec![
        vec![("sec-fetch-site", "same-origin".into())],
        vec![("sec-fetch-site", "none".into())],
        vec![("origin", own_origin.clone())],
        vec![],
    ];
    for headers in &allowed {
        let mut request = client.post(proxy.url("/transfer")).body("amount=100");
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = p.send(request).await;
        assert_eq!(response.status(), 200, "[{p}] {headers:?}");
    }
    assert_eq!(upstream.count(), allowed.len(), "[{p}]");

    // Safe methods pass from anywhere; a trusted origin and an `allow` route too.
    let get = client
        .get(proxy.url("/"))
        .header("sec-fetch-site", "cross-site");
    assert_eq!(p.send(get).await.status(), 200, "[{p}]");
    let partner = client
        .post(proxy.url("/partner/hook"))
        .header("origin", "https://partner.example")
        .header("sec-fetch-site", "cross-site");
    assert_eq!(p.send(partner).await.status(), 200, "[{p}]");
    let open = client
        .post(proxy.url("/open/form"))
        .header("sec-fetch-site", "cross-site");
    assert_eq!(p.send(open).await.status(), 200, "[{p}]");
}

async fn no_matching_route_is_a_404(p: Protocol) {
    let routes = r#"[{match: {path: /app/}}, {match: {host: "*.example.test"}}]"#;
    let (upstream, proxy) = site(p, routes).await;
    let response = p.send(p.plain_client().get(proxy.url("/elsewhere"))).await;
    assert_eq!(response.status(), 404, "[{p}]");
    assert_eq!(upstream.count(), 0);
    let ok = p.send(p.plain_client().get(proxy.url("/app/x"))).await;
    assert_eq!(ok.status(), 200, "[{p}]");
    let by_host = proxy.get_as_host("shop.example.test", "/elsewhere").await;
    assert_eq!(by_host.status, 200, "[{p}] a host suffix route");
    let bare = proxy.get_as_host("example.test", "/elsewhere").await;
    assert_eq!(bare.status, 404, "[{p}] *.example.test is not example.test");
}

async fn without_routes_nothing_changes(p: Protocol) {
    let upstream = Upstream::start(app).await;
    let proxy = p.start_proxy(config(&upstream.url())).await;
    let response = p
        .send(
            p.plain_client()
                .post(proxy.url("/anything"))
                .header("sec-fetch-site", "cross-site"),
        )
        .await;
    assert_eq!(
        response.status(),
        200,
        "[{p}] no routes, no cross-site rule"
    );
    assert!(p.session_set_cookie(response.headers()).is_some());
}

over_every_protocol!(
    a_navigation_without_login_is_sent_to_the_login_page_with_next,
    fetch_json_and_other_methods_get_a_json_401,
    head_navigation_gets_the_redirect_without_a_body,
    after_login_the_gate_lets_the_user_through_and_checks_the_role,
    next_never_leaves_the_site,
    a_session_off_route_gets_no_session_and_no_session_headers,
    cross_site_unsafe_requests_are_refused,
    no_matching_route_is_a_404,
    without_routes_nothing_changes,
);
