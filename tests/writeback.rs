//! The upstream writes to its session with response headers, which the
//! proxy applies and never lets reach the client.
//!
//! Every test runs over HTTP/1.1, h2c and h2 over TLS (see
//! `support::protocol`): `http1::name`, `h2c::name`, `h2_tls::name`.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::protocol::{over_every_protocol, Protocol, ProtocolBrowser, ProtocolProxy};
use support::*;

/// An upstream whose answer depends on the path: `/set?…` sets the query
/// as session data, `/remove?keys=…`, `/destroy`, `/regenerate`, else `ok`.
fn app(req: &Seen) -> Reply {
    let query = req.uri.query().unwrap_or("");
    match req.uri.path() {
        "/set" => Reply::ok().session_set(query),
        "/remove" => Reply::ok().session_remove(&req.query("keys").unwrap()),
        "/destroy" => Reply::ok().session_destroy(),
        "/regenerate" => Reply::ok().session_regenerate(),
        _ => Reply::ok(),
    }
}

async fn site(
    p: Protocol,
    config_change: impl FnOnce(ConfigYaml) -> ConfigYaml,
) -> (Upstream, ProtocolProxy) {
    let upstream = Upstream::start(app).await;
    let proxy = p.start_proxy(config_change(config(&upstream.url()))).await;
    (upstream, proxy)
}

/// The session data the upstream sees on the browser's next request.
async fn data_seen_next(
    browser: &ProtocolBrowser,
    upstream: &Upstream,
    proxy: &ProtocolProxy,
) -> BTreeMap<String, String> {
    browser.get(&proxy.url("/")).await;
    upstream.last().data()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn set_stores_keys_that_the_next_request_carries_sorted(p: Protocol) {
    let (upstream, proxy) = site(p, |c| c).await;
    let browser = p.browser();

    let response = browser.get(&proxy.url("/set?user=alice&role=admin")).await;
    assert_eq!(response.status(), 200);
    browser.get(&proxy.url("/")).await;

    assert_eq!(
        upstream.last().session_data(),
        Some("role=admin&user=alice")
    );
}

/// `session.data_format: json`: the upstream gets the same data as a JSON
/// object, keys sorted, ASCII only, that a JSON parser reads back exactly.
async fn json_data_format_reads_back_exactly(p: Protocol) {
    let (upstream, proxy) = site(p, |c| c.set("session.data_format", "json")).await;
    let browser = p.browser();
    browser
        .get(
            &proxy.url(
                "/set?name=J%C3%BCrgen+%22J%22+M%C3%BCller&note=a%26b%3Dc%5C&emoji=%F0%9F%98%80",
            ),
        )
        .await;
    browser.get(&proxy.url("/")).await;
    let seen = upstream.last();
    let raw = seen.session_data().expect("X-Session-Data").to_owned();
    assert!(raw.is_ascii(), "[{p}] {raw}");
    let value: serde_json::Value = serde_json::from_str(&raw).expect("JSON");
    assert_eq!(
        value,
        serde_json::json!({"emoji": "😀", "name": "Jürgen \"J\" Müller", "note": "a&b=c\\"}),
        "[{p}] {raw}"
    );
    let keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert!(
        raw.find("emoji") < raw.find("name") && raw.find("name") < raw.find("note"),
        "[{p}] {keys:?}"
    );
}

async fn set_round_trips_encoded_values(p: Protocol) {
    let (upstream, proxy) = site(p, |c| c).await;
    let browser = p.browser();

    browser
        .get(&proxy.url("/set?name=J%C3%BCrgen+M%C3%BCller&note=a%26b%3Dc%25"))
        .await;

    assert_eq!(
        data_seen_next(&browser, &upstream, &proxy).await,
        map(&[("name", "Jürgen Müller"), ("note", "a&b=c%")])
    );
}

async fn repeated_set_headers_are_all_applied(p: Protocol) {
    let upstream = Upstream::start(|_| Reply::ok().session_set("a=1").session_set("b=2&c=3")).await;
    let proxy = p.start_proxy(config(&upstream.url())).await;
    let browser = p.browser();

    browser.get(&proxy.url("/")).await;

    assert_eq!(
        data_seen_next(&browser, &upstream, &proxy).await,
        map(&[("a", "1"), ("b", "2"), ("c", "3")])
    );
}

async fn set_overwrites_an_existing_key(p: Protocol) {
    let (upstream, proxy) = site(p, |c| c).await;
    let browser = p.browser();

    browser.get(&proxy.url("/set?role=user&user=alice")).await;
    browser.get(&proxy.url("/set?role=admin")).await;

    assert_eq!(
        data_seen_next(&browser, &upstream, &proxy).await,
        map(&[("role", "admin"), ("user", "alice")])
    );
}

async fn remove_deletes_the_named_keys(p: Protocol) {
    let (upstream, proxy) = site(p, |c| c).await;
    let browser = p.browser();
    browser.get(&proxy.url("/set?a=1&b=2&c=3")).await;

    browser.get(&proxy.url("/remove?keys=a,%20c")).await;

    assert_eq!(
        data_seen_next(&browser, &upstream, &proxy).await,
        map(&[("b", "2")])
    );
}

async fn removing_every_key_leaves_no_data_header(p: Protocol) {
    let (upstream, proxy) = site(p, |c| c).await;
    let browser = p.browser();
    browser.get(&proxy.url("/set?a=1")).await;

    browser.get(&proxy.url("/remove?keys=a")).await;
    browser.get(&proxy.url("/")).await;

    let seen = upstream.last();
    assert_eq!(seen.session_data(), None);
    assert!(seen.session_id().is_some(), "the session itself remains");
}

async fn destroy_expires_the_cookie_and_the_next_request_starts_a_new_session(p: Protocol) {
    let (upstream, proxy) = site(p, |c| c).await;
    let first = p.get_without_cookie(&proxy.url("/set?user=alice")).await;
    let issued = p.expect_session_cookie(first.headers());

    let destroyed = p
        .get_with_cookie(&proxy.url("/destroy"), &issued.pair())
        .await;

    assert_eq!(destroyed.status(), 200);
    let expired = p.expect_session_cookie(destroyed.headers());
    assert_eq!(expired.name, issued.name);
    assert_eq!(expired.max_age(), Some(0), "{}", expired.raw);
    assert_eq!(expired.value, "");
    assert_eq!(expired.attr("Path"), Some("/"));

    // Even a client that ignores the expiry gets a fresh, empty session.
    p.get_with_cookie(&proxy.url("/"), &issued.pair()).await;
    let seen = upstream.last();
    assert!(seen.is_new_session());
    assert_ne!(seen.expect_session_id(), issued.id());
    assert_eq!(seen.session_data(), None);
}

async fn destroy_on_the_first_visit_sends_only_the_expired_cookie(p: Protocol) {
    let (upstream, proxy) = site(p, |c| c).await;

    let response = p.get_without_cookie(&proxy.url("/destroy")).await;

    // expect_session_cookie also fails on two proxy Set-Cookie headers.
    assert_eq!(
        p.expect_session_cookie(response.headers()).max_age(),
        Some(0)
    );
    assert!(upstream.last().is_new_session());
}

async fn regenerate_on_the_first_visit_sends_one_cookie_for_the_new_id(p: Protocol) {
    let (upstream, proxy) = site(p, |c| c).await;

    let response = p.get_without_cookie(&proxy.url("/regenerate")).await;

    let cookie = p.expect_session_cookie(response.headers());
    let first_id = upstream.last().expect_session_id();
    assert_ne!(cookie.id(), first_id);
    p.get_with_cookie(&proxy.url("/"), &cookie.pair()).await;
    assert_eq!(upstream.last().expect_session_id(), cookie.id());
    assert!(!upstream.last().is_new_session());
}

async fn destroy_wins_over_set_and_regenerate(p: Protocol) {
    let upstream = Upstream::start(|req| match req.uri.path() {
        "/all" => Reply::ok()
            .session_set("user=mallory")
            .session_regenerate()
            .session_destroy(),
        _ => Reply::ok(),
    })
    .await;
    let proxy = p.start_proxy(config(&upstream.url())).await;
    let issued = p.expect_session_cookie(p.get_without_cookie(&proxy.url("/")).await.headers());

    let response = p.get_with_cookie(&proxy.url("/all"), &issued.pair()).await;

    assert_eq!(
        p.expect_session_cookie(response.headers()).max_age(),
        Some(0)
    );
    p.get_with_cookie(&proxy.url("/"), &issued.pair()).await;
    let seen = upstream.last();
    assert!(seen.is_new_session());
    assert_eq!(seen.session_data(), None);
}

async fn regenerate_moves_the_data_to_a_new_id(p: Protocol) {
    let (upstream, proxy) = site(p, |c| c).await;
    let browser = p.browser();
    browser.get(&proxy.url("/set?user=alice")).await;
    let old_id = upstream.last().expect_session_id();

    let response = browser.get(&proxy.url("/regenerate")).await;

    let renewed = p.expect_session_cookie(response.headers());
    assert_ne!(renewed.id(), old_id);
    assert!(renewed.max_age().unwrap_or(1) > 0);
    browser.get(&proxy.url("/")).await;
    let seen = upstream.last();
    assert_eq!(seen.expect_session_id(), renewed.id());
    assert!(!seen.is_new_session());
    assert_eq!(seen.data(), map(&[("user", "alice")]));
}

async fn regenerate_applies_the_same_responses_writes_first(p: Protocol) {
    let upstream = Upstream::start(|req| match req.uri.path() {
        "/login" => Reply::ok()
            .session_set("user=alice")
            .session_remove("cart")
            .session_regenerate(),
        "/cart" => Reply::ok().session_set("cart=3"),
        _ => Reply::ok(),
    })
    .await;
    let proxy = p.start_proxy(config(&upstream.url())).await;
    let browser = p.browser();
    browser.get(&proxy.url("/cart")).await;

    let login = browser.get(&proxy.url("/login")).await;
    p.expect_session_cookie(login.headers());

    assert_eq!(
        data_seen_next(&browser, &upstream, &proxy).await,
        map(&[("user", "alice")])
    );
}

async fn old_cookie_within_the_regenerate_grace_gets_no_session(p: Protocol) {
    let (upstream, proxy) = site(p, |c| c).await;
    let first = p.get_without_cookie(&proxy.url("/set?user=alice")).await;
    let old = p.expect_session_cookie(first.headers());
    let regenerated = p
        .get_with_cookie(&proxy.url("/regenerate"), &old.pair())
        .await;
    p.expect_session_cookie(regenerated.headers());

    let late = p.get_with_cookie(&proxy.url("/"), &old.pair()).await;

    assert_eq!(late.status(), 200);
    assert!(
        p.session_set_cookie(late.headers()).is_none(),
        "a late request must not overwrite the browser's new cookie"
    );
    let seen = upstream.last();
    assert!(
        seen.session_header_names().is_empty(),
        "a late request must not read any session: {:?}",
        seen.session_header_names()
    );
}

async fn old_cookie_after_the_regenerate_grace_gets_a_new_session(p: Protocol) {
    let (upstream, proxy) = site(p, |c| c.set("session.regenerate_grace", "1s")).await;
    let first = p.get_without_cookie(&proxy.url("/set?user=alice")).await;
    let old = p.expect_session_cookie(first.headers());
    let regenerated = p
        .get_with_cookie(&proxy.url("/regenerate"), &old.pair())
        .await;
    let renewed = p.expect_session_cookie(regenerated.headers());

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let late = p.get_with_cookie(&proxy.url("/"), &old.pair()).await;

    let fresh = p.expect_session_cookie(late.headers());
    let seen = upstream.last();
    assert!(seen.is_new_session());
    assert_ne!(seen.expect_session_id(), old.id());
    assert_ne!(seen.expect_session_id(), renewed.id());
    assert_eq!(fresh.id(), seen.expect_session_id());
    assert_eq!(seen.session_data(), None);
}

async fn write_over_max_data_bytes_is_refused_and_the_old_data_kept(p: Protocol) {
    let (upstream, proxy) = site(p, |c| c.set("session.max_data_bytes", "64")).await;
    let browser = p.browser();
    browser.get(&proxy.url("/set?a=1")).await;

    let big = "x".repeat(100);
    let response = browser
        .get(&proxy.url(&format!("/set?b=2&big={big}")))
        .await;

    assert_eq!(
        response.status(),
        200,
        "a refused write is not the client's fault"
    );
    assert_eq!(
        data_seen_next(&browser, &upstream, &proxy).await,
        map(&[("a", "1")]),
        "the whole write of that response is refused"
    );
    // The session still takes writes that fit.
    browser.get(&proxy.url("/set?c=3")).await;
    assert_eq!(
        data_seen_next(&browser, &upstream, &proxy).await,
        map(&[("a", "1"), ("c", "3")])
    );
}

async fn data_of_exactly_max_data_bytes_is_accepted(p: Protocol) {
    let (upstream, proxy) = site(p, |c| c.set("session.max_data_bytes", "64")).await;
    let browser = p.browser();
    let value = "v".repeat(62); // "k=" + 62 bytes = 64 encoded bytes

    browser.get(&proxy.url(&format!("/set?k={value}"))).await;

    assert_eq!(
        data_seen_next(&browser, &upstream, &proxy).await,
        map(&[("k", value.as_str())])
    );
}

async fn control_characters_never_reach_a_header(p: Protocol) {
    let (upstream, proxy) = site(p, |c| c).await;
    let browser = p.browser();
    browser.get(&proxy.url("/set?a=1")).await;

    for evil in [
        "/set?name=x%0D%0AX-Injected%3A%201&ok=1",
        "/set?name=x%0AX-Injected%3A%201",
        "/set?name=x%00y",
        "/set?bad%0D%0Akey=1",
    ] {
        let response = browser.get(&proxy.url(evil)).await;
        assert_eq!(response.status(), 200, "{evil}");
        assert!(response.headers().get("x-injected").is_none());
    }

    browser.get(&proxy.url("/")).await;
    let seen = upstream.last();
    assert_eq!(seen.data(), map(&[("a", "1")]));
    assert!(seen.header_all("x-injected").is_empty());
    let raw = seen.session_data().unwrap_or("");
    assert!(!raw.contains(['\r', '\n', '\0']), "{raw:?}");
}

// Several worker threads, so the proxy really handles the requests in parallel
// (see the `over_every_protocol!` list).
async fn concurrent_writes_of_one_session_all_land(p: Protocol) {
    // Each request holds the session for a while, so all 40 overlap.
    let upstream = Upstream::start(|req| match req.query("key") {
        Some(key) => Reply::ok()
            .session_set(&format!("{key}=1"))
            .after(Duration::from_millis(200)),
        None => Reply::ok(),
    })
    .await;
    let proxy = p.start_proxy(config(&upstream.url())).await;
    let browser = p.browser();
    browser.get(&proxy.url("/")).await;

    let writes = (0..40).map(|i| browser.get_owned(proxy.url(&format!("/?key=k{i:02}"))));
    for response in futures_util::future::join_all(writes).await {
        assert_eq!(response.status(), 200);
        assert!(p.session_set_cookie(response.headers()).is_none());
    }

    let data = data_seen_next(&browser, &upstream, &proxy).await;
    let expected: BTreeMap<String, String> = (0..40)
        .map(|i| (format!("k{i:02}"), "1".to_owned()))
        .collect();
    let missing: Vec<_> = expected.keys().filter(|k| !data.contains_key(*k)).collect();
    assert!(missing.is_empty(), "lost writes: {missing:?}");
    assert_eq!(data, expected);
}

async fn write_back_headers_never_reach_the_client(p: Protocol) {
    let upstream = Upstream::start(|_| {
        Reply::ok()
            .session_set("a=1")
            .session_remove("b")
            .session_regenerate()
            .header("X-Session-Debug", "internal")
            .header("x-session-id", "leak")
    })
    .await;
    let proxy = p.start_proxy(config(&upstream.url())).await;

    let response = p.get_without_cookie(&proxy.url("/")).await;

    assert_eq!(response.status(), 200);
    assert_eq!(
        header_names_with_prefix(response.headers(), "x-session-"),
        Vec::<String>::new()
    );
}

async fn destroy_header_never_reaches_the_client(p: Protocol) {
    let (_upstream, proxy) = site(p, |c| c).await;
    let browser = p.browser();
    browser.get(&proxy.url("/")).await;

    let response = browser.get(&proxy.url("/destroy")).await;

    assert!(header_names_with_prefix(response.headers(), "x-session-").is_empty());
}

async fn excluded_paths_get_no_session_work(p: Protocol) {
    let upstream = Upstream::start(|_| Reply::ok().session_set("hijack=1")).await;
    let proxy = p
        .start_proxy(
            config(&upstream.url()).set("session.exclude_paths", "[\"/static/\", \"/healthz\"]"),
        )
        .await;
    let browser = p.browser();

    let asset = browser
        .send(
            browser
                .request(http::Method::GET, &proxy.url("/static/app.js"))
                .header("X-Session-Id", "forged"),
        )
        .await;

    assert_eq!(asset.status(), 200);
    assert!(p.session_set_cookie(asset.headers()).is_none());
    assert!(header_names_with_prefix(asset.headers(), "x-session-").is_empty());
    assert!(!header_tokens(asset.headers(), "vary").contains(&"cookie".to_owned()));
    assert!(upstream.last().session_header_names().is_empty());
    assert_eq!(browser.cookie_header(&proxy.url("/")), None);
}

async fn excluded_paths_do_not_apply_writes_and_hide_the_proxy_cookie(p: Protocol) {
    let upstream = Upstream::start(|req| match req.uri.path() {
        "/static/app.js" => Reply::ok().session_set("hijack=1"),
        _ => Reply::ok(),
    })
    .await;
    let proxy = p
        .start_proxy(config(&upstream.url()).set("session.exclude_paths", "[\"/static/\"]"))
        .await;
    let issued = p.expect_session_cookie(p.get_without_cookie(&proxy.url("/")).await.headers());

    let asset = p
        .get_with_cookie(
            &proxy.url("/static/app.js"),
            &format!("{}; theme=dark", issued.pair()),
        )
        .await;

    assert!(set_cookies(asset.headers()).is_empty());
    let seen = upstream.last();
    assert!(seen.session_header_names().is_empty());
    assert_eq!(
        seen.cookies(),
        vec![("theme".to_owned(), "dark".to_owned())]
    );
    p.get_with_cookie(&proxy.url("/"), &issued.pair()).await;
    assert_eq!(
        upstream.last().session_data(),
        None,
        "an excluded path wrote data"
    );
}

async fn options_request_creates_no_session(p: Protocol) {
    let (upstream, proxy) = site(p, |c| c).await;

    let response = p
        .send(
            p.plain_client()
                .request(http::Method::OPTIONS, proxy.url("/api")),
        )
        .await;

    assert_eq!(response.status(), 200);
    assert!(p.session_set_cookie(response.headers()).is_none());
    let seen = upstream.last();
    assert_eq!(seen.method, http::Method::OPTIONS);
    assert!(seen.session_header_names().is_empty());
}

async fn options_request_with_a_session_still_passes_it_on(p: Protocol) {
    let (upstream, proxy) = site(p, |c| c).await;
    let issued =
        p.expect_session_cookie(p.get_without_cookie(&proxy.url("/set?a=1")).await.headers());

    let response = p
        .send(
            p.plain_client()
                .request(http::Method::OPTIONS, proxy.url("/api"))
                .header("cookie", issued.pair()),
        )
        .await;

    assert!(p.session_set_cookie(response.headers()).is_none());
    let seen = upstream.last();
    assert_eq!(seen.expect_session_id(), issued.id());
    assert_eq!(seen.data(), map(&[("a", "1")]));
}

async fn create_on_write_makes_a_session_only_when_the_upstream_writes(p: Protocol) {
    let (upstream, proxy) = site(p, |c| c.set("session.create", "on_write")).await;
    let browser = p.browser();

    let browsing = browser.get(&proxy.url("/")).await;
    assert!(p.session_set_cookie(browsing.headers()).is_none());
    assert!(upstream.last().session_header_names().is_empty());

    let login = browser.get(&proxy.url("/set?user=alice")).await;
    let cookie = p.expect_session_cookie(login.headers());
    assert!(header_names_with_prefix(login.headers(), "x-session-").is_empty());

    browser.get(&proxy.url("/")).await;
    let seen = upstream.last();
    assert_eq!(seen.expect_session_id(), cookie.id());
    assert_eq!(seen.data(), map(&[("user", "alice")]));
}

over_every_protocol!(
    set_stores_keys_that_the_next_request_carries_sorted,
    set_round_trips_encoded_values,
    json_data_format_reads_back_exactly,
    repeated_set_headers_are_all_applied,
    set_overwrites_an_existing_key,
    remove_deletes_the_named_keys,
    removing_every_key_leaves_no_data_header,
    destroy_expires_the_cookie_and_the_next_request_starts_a_new_session,
    destroy_on_the_first_visit_sends_only_the_expired_cookie,
    regenerate_on_the_first_visit_sends_one_cookie_for_the_new_id,
    destroy_wins_over_set_and_regenerate,
    regenerate_moves_the_data_to_a_new_id,
    regenerate_applies_the_same_responses_writes_first,
    old_cookie_within_the_regenerate_grace_gets_no_session,
    old_cookie_after_the_regenerate_grace_gets_a_new_session,
    write_over_max_data_bytes_is_refused_and_the_old_data_kept,
    data_of_exactly_max_data_bytes_is_accepted,
    control_characters_never_reach_a_header,
    concurrent_writes_of_one_session_all_land { flavor = "multi_thread", worker_threads = 4 },
    write_back_headers_never_reach_the_client,
    destroy_header_never_reaches_the_client,
    excluded_paths_get_no_session_work,
    excluded_paths_do_not_apply_writes_and_hide_the_proxy_cookie,
    options_request_creates_no_session,
    options_request_with_a_session_still_passes_it_on,
    create_on_write_makes_a_session_only_when_the_upstream_writes,
);
