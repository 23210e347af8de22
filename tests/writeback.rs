//! The upstream writes to its session with response headers, which the
//! proxy applies and never lets reach the client.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

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

async fn site(config_change: impl FnOnce(ConfigYaml) -> ConfigYaml) -> (Upstream, Proxy) {
    let upstream = Upstream::start(app).await;
    let proxy = Proxy::start(config_change(config(&upstream.url()))).await;
    (upstream, proxy)
}

/// The session data the upstream sees on the browser's next request.
async fn data_seen_next(
    browser: &Browser,
    upstream: &Upstream,
    proxy: &Proxy,
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

#[tokio::test]
async fn set_stores_keys_that_the_next_request_carries_sorted() {
    let (upstream, proxy) = site(|c| c).await;
    let browser = Browser::new();

    let response = browser.get(&proxy.url("/set?user=alice&role=admin")).await;
    assert_eq!(response.status(), 200);
    browser.get(&proxy.url("/")).await;

    assert_eq!(
        upstream.last().session_data(),
        Some("role=admin&user=alice")
    );
}

#[tokio::test]
async fn set_round_trips_encoded_values() {
    let (upstream, proxy) = site(|c| c).await;
    let browser = Browser::new();

    browser
        .get(&proxy.url("/set?name=J%C3%BCrgen+M%C3%BCller&note=a%26b%3Dc%25"))
        .await;

    assert_eq!(
        data_seen_next(&browser, &upstream, &proxy).await,
        map(&[("name", "Jürgen Müller"), ("note", "a&b=c%")])
    );
}

#[tokio::test]
async fn repeated_set_headers_are_all_applied() {
    let upstream = Upstream::start(|_| Reply::ok().session_set("a=1").session_set("b=2&c=3")).await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let browser = Browser::new();

    browser.get(&proxy.url("/")).await;

    assert_eq!(
        data_seen_next(&browser, &upstream, &proxy).await,
        map(&[("a", "1"), ("b", "2"), ("c", "3")])
    );
}

#[tokio::test]
async fn set_overwrites_an_existing_key() {
    let (upstream, proxy) = site(|c| c).await;
    let browser = Browser::new();

    browser.get(&proxy.url("/set?role=user&user=alice")).await;
    browser.get(&proxy.url("/set?role=admin")).await;

    assert_eq!(
        data_seen_next(&browser, &upstream, &proxy).await,
        map(&[("role", "admin"), ("user", "alice")])
    );
}

#[tokio::test]
async fn remove_deletes_the_named_keys() {
    let (upstream, proxy) = site(|c| c).await;
    let browser = Browser::new();
    browser.get(&proxy.url("/set?a=1&b=2&c=3")).await;

    browser.get(&proxy.url("/remove?keys=a,%20c")).await;

    assert_eq!(
        data_seen_next(&browser, &upstream, &proxy).await,
        map(&[("b", "2")])
    );
}

#[tokio::test]
async fn removing_every_key_leaves_no_data_header() {
    let (upstream, proxy) = site(|c| c).await;
    let browser = Browser::new();
    browser.get(&proxy.url("/set?a=1")).await;

    browser.get(&proxy.url("/remove?keys=a")).await;
    browser.get(&proxy.url("/")).await;

    let seen = upstream.last();
    assert_eq!(seen.session_data(), None);
    assert!(seen.session_id().is_some(), "the session itself remains");
}

#[tokio::test]
async fn destroy_expires_the_cookie_and_the_next_request_starts_a_new_session() {
    let (upstream, proxy) = site(|c| c).await;
    let first = get_without_cookie(&proxy.url("/set?user=alice")).await;
    let issued = expect_session_cookie(first.headers());

    let destroyed = get_with_cookie(&proxy.url("/destroy"), &issued.pair()).await;

    assert_eq!(destroyed.status(), 200);
    let expired = expect_session_cookie(destroyed.headers());
    assert_eq!(expired.name, issued.name);
    assert_eq!(expired.max_age(), Some(0), "{}", expired.raw);
    assert_eq!(expired.value, "");
    assert_eq!(expired.attr("Path"), Some("/"));

    // Even a client that ignores the expiry gets a fresh, empty session.
    get_with_cookie(&proxy.url("/"), &issued.pair()).await;
    let seen = upstream.last();
    assert!(seen.is_new_session());
    assert_ne!(seen.expect_session_id(), issued.id());
    assert_eq!(seen.session_data(), None);
}

#[tokio::test]
async fn destroy_on_the_first_visit_sends_only_the_expired_cookie() {
    let (upstream, proxy) = site(|c| c).await;

    let response = get_without_cookie(&proxy.url("/destroy")).await;

    // expect_session_cookie also fails on two proxy Set-Cookie headers.
    assert_eq!(expect_session_cookie(response.headers()).max_age(), Some(0));
    assert!(upstream.last().is_new_session());
}

#[tokio::test]
async fn regenerate_on_the_first_visit_sends_one_cookie_for_the_new_id() {
    let (upstream, proxy) = site(|c| c).await;

    let response = get_without_cookie(&proxy.url("/regenerate")).await;

    let cookie = expect_session_cookie(response.headers());
    let first_id = upstream.last().expect_session_id();
    assert_ne!(cookie.id(), first_id);
    get_with_cookie(&proxy.url("/"), &cookie.pair()).await;
    assert_eq!(upstream.last().expect_session_id(), cookie.id());
    assert!(!upstream.last().is_new_session());
}

#[tokio::test]
async fn destroy_wins_over_set_and_regenerate() {
    let upstream = Upstream::start(|req| match req.uri.path() {
        "/all" => Reply::ok()
            .session_set("user=mallory")
            .session_regenerate()
            .session_destroy(),
        _ => Reply::ok(),
    })
    .await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let issued = expect_session_cookie(get_without_cookie(&proxy.url("/")).await.headers());

    let response = get_with_cookie(&proxy.url("/all"), &issued.pair()).await;

    assert_eq!(expect_session_cookie(response.headers()).max_age(), Some(0));
    get_with_cookie(&proxy.url("/"), &issued.pair()).await;
    let seen = upstream.last();
    assert!(seen.is_new_session());
    assert_eq!(seen.session_data(), None);
}

#[tokio::test]
async fn regenerate_moves_the_data_to_a_new_id() {
    let (upstream, proxy) = site(|c| c).await;
    let browser = Browser::new();
    browser.get(&proxy.url("/set?user=alice")).await;
    let old_id = upstream.last().expect_session_id();

    let response = browser.get(&proxy.url("/regenerate")).await;

    let renewed = expect_session_cookie(response.headers());
    assert_ne!(renewed.id(), old_id);
    assert!(renewed.max_age().unwrap_or(1) > 0);
    browser.get(&proxy.url("/")).await;
    let seen = upstream.last();
    assert_eq!(seen.expect_session_id(), renewed.id());
    assert!(!seen.is_new_session());
    assert_eq!(seen.data(), map(&[("user", "alice")]));
}

#[tokio::test]
async fn regenerate_applies_the_same_responses_writes_first() {
    let upstream = Upstream::start(|req| match req.uri.path() {
        "/login" => Reply::ok()
            .session_set("user=alice")
            .session_remove("cart")
            .session_regenerate(),
        "/cart" => Reply::ok().session_set("cart=3"),
        _ => Reply::ok(),
    })
    .await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let browser = Browser::new();
    browser.get(&proxy.url("/cart")).await;

    let login = browser.get(&proxy.url("/login")).await;
    expect_session_cookie(login.headers());

    assert_eq!(
        data_seen_next(&browser, &upstream, &proxy).await,
        map(&[("user", "alice")])
    );
}

#[tokio::test]
async fn old_cookie_within_the_regenerate_grace_gets_no_session() {
    let (upstream, proxy) = site(|c| c).await;
    let first = get_without_cookie(&proxy.url("/set?user=alice")).await;
    let old = expect_session_cookie(first.headers());
    let regenerated = get_with_cookie(&proxy.url("/regenerate"), &old.pair()).await;
    expect_session_cookie(regenerated.headers());

    let late = get_with_cookie(&proxy.url("/"), &old.pair()).await;

    assert_eq!(late.status(), 200);
    assert!(
        session_set_cookie(late.headers()).is_none(),
        "a late request must not overwrite the browser's new cookie"
    );
    let seen = upstream.last();
    assert!(
        seen.session_header_names().is_empty(),
        "a late request must not read any session: {:?}",
        seen.session_header_names()
    );
}

#[tokio::test]
async fn old_cookie_after_the_regenerate_grace_gets_a_new_session() {
    let (upstream, proxy) = site(|c| c.set("session.regenerate_grace", "1s")).await;
    let first = get_without_cookie(&proxy.url("/set?user=alice")).await;
    let old = expect_session_cookie(first.headers());
    let regenerated = get_with_cookie(&proxy.url("/regenerate"), &old.pair()).await;
    let renewed = expect_session_cookie(regenerated.headers());

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let late = get_with_cookie(&proxy.url("/"), &old.pair()).await;

    let fresh = expect_session_cookie(late.headers());
    let seen = upstream.last();
    assert!(seen.is_new_session());
    assert_ne!(seen.expect_session_id(), old.id());
    assert_ne!(seen.expect_session_id(), renewed.id());
    assert_eq!(fresh.id(), seen.expect_session_id());
    assert_eq!(seen.session_data(), None);
}

#[tokio::test]
async fn write_over_max_data_bytes_is_refused_and_the_old_data_kept() {
    let (upstream, proxy) = site(|c| c.set("session.max_data_bytes", "64")).await;
    let browser = Browser::new();
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

#[tokio::test]
async fn data_of_exactly_max_data_bytes_is_accepted() {
    let (upstream, proxy) = site(|c| c.set("session.max_data_bytes", "64")).await;
    let browser = Browser::new();
    let value = "v".repeat(62); // "k=" + 62 bytes = 64 encoded bytes

    browser.get(&proxy.url(&format!("/set?k={value}"))).await;

    assert_eq!(
        data_seen_next(&browser, &upstream, &proxy).await,
        map(&[("k", value.as_str())])
    );
}

#[tokio::test]
async fn control_characters_never_reach_a_header() {
    let (upstream, proxy) = site(|c| c).await;
    let browser = Browser::new();
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

// Several worker threads, so the proxy really handles the requests in parallel.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_of_one_session_all_land() {
    // Each request holds the session for a while, so all 40 overlap.
    let upstream = Upstream::start(|req| match req.query("key") {
        Some(key) => Reply::ok()
            .session_set(&format!("{key}=1"))
            .after(Duration::from_millis(200)),
        None => Reply::ok(),
    })
    .await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let browser = Browser::new();
    browser.get(&proxy.url("/")).await;

    let writes = (0..40).map(|i| browser.get_owned(proxy.url(&format!("/?key=k{i:02}"))));
    for response in futures_util::future::join_all(writes).await {
        assert_eq!(response.status(), 200);
        assert!(session_set_cookie(response.headers()).is_none());
    }

    let data = data_seen_next(&browser, &upstream, &proxy).await;
    let expected: BTreeMap<String, String> = (0..40)
        .map(|i| (format!("k{i:02}"), "1".to_owned()))
        .collect();
    let missing: Vec<_> = expected.keys().filter(|k| !data.contains_key(*k)).collect();
    assert!(missing.is_empty(), "lost writes: {missing:?}");
    assert_eq!(data, expected);
}

#[tokio::test]
async fn write_back_headers_never_reach_the_client() {
    let upstream = Upstream::start(|_| {
        Reply::ok()
            .session_set("a=1")
            .session_remove("b")
            .session_regenerate()
            .header("X-Session-Debug", "internal")
            .header("x-session-id", "leak")
    })
    .await;
    let proxy = Proxy::start(config(&upstream.url())).await;

    let response = get_without_cookie(&proxy.url("/")).await;

    assert_eq!(response.status(), 200);
    assert_eq!(
        header_names_with_prefix(response.headers(), "x-session-"),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn destroy_header_never_reaches_the_client() {
    let (_upstream, proxy) = site(|c| c).await;
    let browser = Browser::new();
    browser.get(&proxy.url("/")).await;

    let response = browser.get(&proxy.url("/destroy")).await;

    assert!(header_names_with_prefix(response.headers(), "x-session-").is_empty());
}

#[tokio::test]
async fn excluded_paths_get_no_session_work() {
    let upstream = Upstream::start(|_| Reply::ok().session_set("hijack=1")).await;
    let proxy = Proxy::start(
        config(&upstream.url()).set("session.exclude_paths", "[\"/static/\", \"/healthz\"]"),
    )
    .await;
    let browser = Browser::new();

    let asset = browser
        .request(http::Method::GET, &proxy.url("/static/app.js"))
        .header("X-Session-Id", "forged")
        .send()
        .await
        .unwrap();

    assert_eq!(asset.status(), 200);
    assert!(session_set_cookie(asset.headers()).is_none());
    assert!(header_names_with_prefix(asset.headers(), "x-session-").is_empty());
    assert!(!header_tokens(asset.headers(), "vary").contains(&"cookie".to_owned()));
    assert!(upstream.last().session_header_names().is_empty());
    assert_eq!(browser.cookie_header(&proxy.url("/")), None);
}

#[tokio::test]
async fn excluded_paths_do_not_apply_writes_and_hide_the_proxy_cookie() {
    let upstream = Upstream::start(|req| match req.uri.path() {
        "/static/app.js" => Reply::ok().session_set("hijack=1"),
        _ => Reply::ok(),
    })
    .await;
    let proxy =
        Proxy::start(config(&upstream.url()).set("session.exclude_paths", "[\"/static/\"]")).await;
    let issued = expect_session_cookie(get_without_cookie(&proxy.url("/")).await.headers());

    let asset = get_with_cookie(
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
    get_with_cookie(&proxy.url("/"), &issued.pair()).await;
    assert_eq!(
        upstream.last().session_data(),
        None,
        "an excluded path wrote data"
    );
}

#[tokio::test]
async fn options_request_creates_no_session() {
    let (upstream, proxy) = site(|c| c).await;

    let response = plain_client()
        .request(http::Method::OPTIONS, proxy.url("/api"))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    assert!(session_set_cookie(response.headers()).is_none());
    let seen = upstream.last();
    assert_eq!(seen.method, http::Method::OPTIONS);
    assert!(seen.session_header_names().is_empty());
}

#[tokio::test]
async fn options_request_with_a_session_still_passes_it_on() {
    let (upstream, proxy) = site(|c| c).await;
    let issued = expect_session_cookie(get_without_cookie(&proxy.url("/set?a=1")).await.headers());

    let response = plain_client()
        .request(http::Method::OPTIONS, proxy.url("/api"))
        .header("cookie", issued.pair())
        .send()
        .await
        .unwrap();

    assert!(session_set_cookie(response.headers()).is_none());
    let seen = upstream.last();
    assert_eq!(seen.expect_session_id(), issued.id());
    assert_eq!(seen.data(), map(&[("a", "1")]));
}

#[tokio::test]
async fn create_on_write_makes_a_session_only_when_the_upstream_writes() {
    let (upstream, proxy) = site(|c| c.set("session.create", "on_write")).await;
    let browser = Browser::new();

    let browsing = browser.get(&proxy.url("/")).await;
    assert!(session_set_cookie(browsing.headers()).is_none());
    assert!(upstream.last().session_header_names().is_empty());

    let login = browser.get(&proxy.url("/set?user=alice")).await;
    let cookie = expect_session_cookie(login.headers());
    assert!(header_names_with_prefix(login.headers(), "x-session-").is_empty());

    browser.get(&proxy.url("/")).await;
    let seen = upstream.last();
    assert_eq!(seen.expect_session_id(), cookie.id());
    assert_eq!(seen.data(), map(&[("user", "alice")]));
}
