//! The session cookie: issue, reuse, tampering, rotation, attributes.
//!
//! Every test runs over HTTP/1.1, h2c and h2 over TLS (see
//! `support::protocol`): `http1::name`, `h2c::name`, `h2_tls::name`, except
//! the few about plain HTTP, which leave out h2 over TLS (see the list at
//! the end).

mod support;

use support::protocol::{over_every_protocol, site, Protocol, ProtocolProxy};
use support::*;

/// A session the proxy issued to a cookie-less visitor: its Set-Cookie.
async fn issued_session(p: Protocol, proxy: &ProtocolProxy) -> SetCookie {
    let response = p.get_without_cookie(&proxy.url("/")).await;
    assert_eq!(response.status(), 200);
    p.expect_session_cookie(response.headers())
}

/// Sends `sessiongate=<value made from a genuine cookie>` (under the
/// protocol's cookie name) and checks the visitor is treated as having no
/// cookie: a new session, never an error.
async fn assert_tampered_cookie_gets_a_new_session(
    p: Protocol,
    tamper: impl Fn(&SetCookie) -> String,
) {
    let (upstream, proxy) = site(p, |c| c).await;
    let genuine = issued_session(p, &proxy).await;
    let tampered = tamper(&genuine);

    let response = p
        .get_with_cookie(&proxy.url("/"), &format!("{}={tampered}", p.cookie_name()))
        .await;

    assert_eq!(
        response.status(),
        200,
        "a bad cookie must never be an error"
    );
    let fresh = p.expect_session_cookie(response.headers());
    let seen = upstream.last();
    assert!(
        seen.is_new_session(),
        "cookie {tampered:?} was not treated as absent"
    );
    assert_ne!(seen.expect_session_id(), genuine.id());
    assert_eq!(fresh.id(), seen.expect_session_id());
    assert_ne!(fresh.value, genuine.value);
    assert_eq!(response.text().await.unwrap(), "ok");
}

async fn first_visit_gets_a_session_cookie_with_every_default_attribute(p: Protocol) {
    let (upstream, proxy) = site(p, |c| c).await;

    let response = p.browser().get(&proxy.url("/")).await;

    assert_eq!(response.status(), 200);
    let cookie = p.expect_session_cookie(response.headers());
    // `secure: auto`: plain HTTP gets no Secure, so no __Host- prefix either;
    // TLS gets both.
    let name = if p.is_tls() {
        "__Host-sessiongate"
    } else {
        "sessiongate"
    };
    assert_eq!(cookie.name, name);
    assert_eq!(cookie.has("Secure"), p.is_tls(), "[{p}] {}", cookie.raw);
    assert!(cookie.has("HttpOnly"), "{}", cookie.raw);
    assert_eq!(
        cookie.attr("SameSite").map(str::to_ascii_lowercase),
        Some("lax".to_owned()),
        "{}",
        cookie.raw
    );
    assert_eq!(cookie.attr("Path"), Some("/"), "{}", cookie.raw);
    assert!(!cookie.has("Domain"), "{}", cookie.raw);
    assert_eq!(
        cookie.max_age(),
        Some(24 * 3600),
        "Max-Age is the absolute timeout"
    );

    let (id, tag) = cookie.value.split_once('.').expect("value is <id>.<tag>");
    assert!(
        is_base64url_32(id),
        "id {id:?} is not 32 bytes in base64url"
    );
    assert!(
        is_base64url_32(tag),
        "tag {tag:?} is not 32 bytes in base64url"
    );

    let seen = upstream.last();
    assert_eq!(seen.expect_session_id(), id);
    assert!(seen.is_new_session());
    assert_eq!(seen.session_data(), None);
}

async fn cookie_tag_is_the_hmac_of_the_id_under_the_first_secret(p: Protocol) {
    let (_upstream, proxy) = site(p, |c| c).await;

    let cookie = issued_session(p, &proxy).await;

    assert_eq!(cookie.value, signed_cookie_value(cookie.id(), SECRET_A));
}

async fn every_visitor_gets_a_different_session_id(p: Protocol) {
    let (_upstream, proxy) = site(p, |c| c).await;

    let first = issued_session(p, &proxy).await;
    let second = issued_session(p, &proxy).await;

    assert_ne!(first.id(), second.id());
}

async fn returning_visitor_keeps_the_session_without_a_new_set_cookie(p: Protocol) {
    let (upstream, proxy) = site(p, |c| c).await;
    let browser = p.browser();
    let first = browser.get(&proxy.url("/")).await;
    let issued = p.expect_session_cookie(first.headers());

    let again = browser.get(&proxy.url("/again")).await;

    assert_eq!(again.status(), 200);
    assert!(
        p.session_set_cookie(again.headers()).is_none(),
        "a returning visitor got a new Set-Cookie"
    );
    let seen = upstream.last();
    assert_eq!(seen.expect_session_id(), issued.id());
    assert!(!seen.is_new_session());
}

async fn cookie_with_a_bad_tag_gets_a_new_session(p: Protocol) {
    assert_tampered_cookie_gets_a_new_session(p, |genuine| {
        let (id, tag) = genuine.value.split_once('.').unwrap();
        // Change the tag's first character, which carries 6 full bits.
        let flipped = if tag.starts_with('A') { 'B' } else { 'A' };
        format!("{id}.{flipped}{}", &tag[1..])
    })
    .await;
}

async fn truncated_cookie_gets_a_new_session(p: Protocol) {
    assert_tampered_cookie_gets_a_new_session(p, |genuine| {
        genuine.value[..genuine.value.len() - 5].to_owned()
    })
    .await;
}

async fn cookie_with_the_id_alone_gets_a_new_session(p: Protocol) {
    assert_tampered_cookie_gets_a_new_session(p, |genuine| genuine.id().to_owned()).await;
}

async fn cookie_signed_with_an_unknown_secret_gets_a_new_session(p: Protocol) {
    assert_tampered_cookie_gets_a_new_session(p, |genuine| {
        signed_cookie_value(genuine.id(), "a-secret-this-proxy-has-never-known-42")
    })
    .await;
}

async fn garbage_cookie_gets_a_new_session(p: Protocol) {
    assert_tampered_cookie_gets_a_new_session(p, |_| "!!not-a-session*cookie!!".to_owned()).await;
}

async fn empty_cookie_gets_a_new_session(p: Protocol) {
    assert_tampered_cookie_gets_a_new_session(p, |_| String::new()).await;
}

async fn cookie_with_extra_dots_gets_a_new_session(p: Protocol) {
    assert_tampered_cookie_gets_a_new_session(p, |genuine| {
        let (id, tag) = genuine.value.split_once('.').unwrap();
        format!("{id}.{tag}.{tag}")
    })
    .await;
    assert_tampered_cookie_gets_a_new_session(p, |genuine| {
        let (id, tag) = genuine.value.split_once('.').unwrap();
        format!("{id}..{tag}")
    })
    .await;
}

async fn five_kib_cookie_gets_a_new_session(p: Protocol) {
    assert_tampered_cookie_gets_a_new_session(p, |genuine| {
        format!("{}{}", genuine.value, "A".repeat(5 * 1024))
    })
    .await;
}

async fn correctly_signed_cookie_of_an_unknown_session_gets_a_new_session(p: Protocol) {
    assert_tampered_cookie_gets_a_new_session(p, |_| {
        signed_cookie_value(&unknown_session_id(), SECRET_A)
    })
    .await;
}

async fn cookie_signed_by_an_older_secret_is_accepted_and_re_signed_with_the_first(p: Protocol) {
    let (upstream, proxy) = site(p, |c| {
        c.set(
            "session.secrets",
            &format!("[\"{SECRET_A}\", \"{SECRET_B}\"]"),
        )
    })
    .await;
    let issued = issued_session(p, &proxy).await;
    let id = issued.id().to_owned();
    let under_old_secret = signed_cookie_value(&id, SECRET_B);

    let response = p
        .get_with_cookie(
            &proxy.url("/"),
            &format!("{}={under_old_secret}", p.cookie_name()),
        )
        .await;

    assert_eq!(response.status(), 200);
    let seen = upstream.last();
    assert_eq!(
        seen.expect_session_id(),
        id,
        "the session was lost in rotation"
    );
    assert!(!seen.is_new_session());
    let resigned = p.expect_session_cookie(response.headers());
    assert_eq!(resigned.value, signed_cookie_value(&id, SECRET_A));
    let max_age = resigned
        .max_age()
        .expect("re-signed cookie keeps a Max-Age");
    assert!(
        (24 * 3600 - 60..=24 * 3600).contains(&max_age),
        "Max-Age {max_age} is not the remaining absolute lifetime"
    );

    // The re-signed cookie is a plain returning visitor from now on.
    let next = p.get_with_cookie(&proxy.url("/"), &resigned.pair()).await;
    assert!(p.session_set_cookie(next.headers()).is_none());
    assert_eq!(upstream.last().expect_session_id(), id);
}

async fn first_duplicate_cookie_that_names_a_live_session_wins(p: Protocol) {
    let (upstream, proxy) = site(p, |c| c).await;
    let live = issued_session(p, &proxy).await;
    let other = issued_session(p, &proxy).await;
    let unknown = signed_cookie_value(&unknown_session_id(), SECRET_A);
    let url = proxy.url("/");
    let cookie = p.cookie_name();

    // Invalid and unknown values before the live one are skipped.
    let header = format!("{cookie}=garbage; {cookie}={unknown}; {}", live.pair());
    let response = p.get_with_cookie(&url, &header).await;
    assert_eq!(response.status(), 200);
    assert!(p.session_set_cookie(response.headers()).is_none());
    let seen = upstream.last();
    assert_eq!(seen.expect_session_id(), live.id());
    assert!(!seen.is_new_session());
    assert!(
        seen.cookies().iter().all(|(name, _)| *name != cookie),
        "a duplicate proxy cookie reached the upstream: {:?}",
        seen.cookies()
    );

    // Of two live ones, the first wins, whichever it is.
    p.get_with_cookie(&url, &format!("{}; {}", live.pair(), other.pair()))
        .await;
    assert_eq!(upstream.last().expect_session_id(), live.id());
    p.get_with_cookie(&url, &format!("{}; {}", other.pair(), live.pair()))
        .await;
    assert_eq!(upstream.last().expect_session_id(), other.id());
}

/// A site whose requests come through a trusted TLS-terminating proxy on loopback:
/// requests saying `X-Forwarded-Proto: https` count as HTTPS (as requests
/// over TLS do anyway).
async fn site_behind_tls(
    p: Protocol,
    config_change: impl FnOnce(ConfigYaml) -> ConfigYaml,
) -> (Upstream, ProtocolProxy) {
    site(p, |c| {
        config_change(c.set("trusted_proxies", "[\"127.0.0.0/8\"]"))
    })
    .await
}

/// GET `url` as the trusted TLS terminator forwards it, with this Cookie header.
async fn get_forwarded_https(p: Protocol, url: &str, cookie: Option<&str>) -> reqwest::Response {
    let mut request = p
        .plain_client()
        .get(url)
        .header("x-forwarded-proto", "https");
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    p.send(request).await
}

/// A session issued over (forwarded) HTTPS to a cookie-less visitor. Its
/// name is the test's to check: with `secure: true` it need not be the
/// protocol's default one.
async fn issued_secure_session(p: Protocol, proxy: &ProtocolProxy) -> SetCookie {
    let response = get_forwarded_https(p, &proxy.url("/"), None).await;
    assert_eq!(response.status(), 200);
    expect_session_cookie(response.headers())
}

async fn secure_cookie_gets_the_host_prefix(p: Protocol) {
    let (_upstream, proxy) = site_behind_tls(p, |c| c.set("session.secure", "true")).await;

    let cookie = issued_secure_session(p, &proxy).await;

    assert_eq!(cookie.name, "__Host-sessiongate");
    assert!(cookie.has("Secure"));
    assert_eq!(cookie.attr("Path"), Some("/"));
    assert!(!cookie.has("Domain"));
}

async fn host_prefixed_cookie_is_accepted_back(p: Protocol) {
    let (upstream, proxy) = site_behind_tls(p, |c| c.set("session.secure", "true")).await;
    let cookie = issued_secure_session(p, &proxy).await;

    let response = get_forwarded_https(p, &proxy.url("/"), Some(&cookie.pair())).await;

    assert!(session_set_cookie(response.headers()).is_none());
    let seen = upstream.last();
    assert_eq!(seen.expect_session_id(), cookie.id());
    assert!(!seen.is_new_session());
    assert!(seen.cookies().is_empty(), "{:?}", seen.cookies());
}

async fn host_prefix_false_keeps_the_plain_name_on_a_secure_cookie(p: Protocol) {
    let (_upstream, proxy) = site_behind_tls(p, |c| {
        c.set("session.secure", "true")
            .set("session.host_prefix", "false")
    })
    .await;

    let cookie = issued_secure_session(p, &proxy).await;

    assert_eq!(cookie.name, "sessiongate");
    assert!(cookie.has("Secure"));
}

async fn a_domain_rules_out_the_host_prefix(p: Protocol) {
    let (_upstream, proxy) = site_behind_tls(p, |c| {
        c.set("session.secure", "true")
            .set("session.domain", "example.test")
    })
    .await;

    let cookie = issued_secure_session(p, &proxy).await;

    assert_eq!(cookie.name, "sessiongate");
    assert!(cookie.has("Secure"));
    assert_eq!(
        cookie.attr("Domain").map(|d| d.trim_start_matches('.')),
        Some("example.test")
    );
}

async fn secure_true_over_plain_http_gets_no_session_and_no_cookie(p: Protocol) {
    let (upstream, proxy) = site_behind_tls(p, |c| c.set("session.secure", "true")).await;
    let genuine = issued_secure_session(p, &proxy).await;

    // Plain HTTP: no X-Forwarded-Proto, or one from nobody trusted.
    for response in [
        p.get_without_cookie(&proxy.url("/")).await,
        p.get_with_cookie(&proxy.url("/"), &format!("{}; theme=dark", genuine.pair()))
            .await,
    ] {
        assert_eq!(response.status(), 200);
        assert!(
            set_cookies(response.headers()).is_empty(),
            "a Secure cookie was sent over plain HTTP: {:?}",
            response.headers()
        );
        let seen = upstream.last();
        assert!(
            seen.session_header_names().is_empty(),
            "the upstream got session headers over plain HTTP: {:?}",
            seen.session_header_names()
        );
        assert!(
            seen.cookies()
                .iter()
                .all(|(name, _)| !name.contains(COOKIE)),
            "the proxy's cookie reached the upstream: {:?}",
            seen.cookies()
        );
    }
    assert_eq!(
        upstream.last().cookies(),
        vec![("theme".to_owned(), "dark".to_owned())]
    );
}

async fn secure_true_over_plain_http_ignores_session_writes(p: Protocol) {
    for create in ["always", "on_write"] {
        let upstream = Upstream::start(|_| Reply::ok().session_set("user=alice")).await;
        let proxy = p
            .start_proxy(
                config(&upstream.url())
                    .set("session.secure", "true")
                    .set("session.create", create),
            )
            .await;

        let response = p.get_without_cookie(&proxy.url("/")).await;

        assert_eq!(response.status(), 200);
        assert!(
            set_cookies(response.headers()).is_empty(),
            "create: {create}: a session cookie over plain HTTP: {:?}",
            response.headers()
        );
        assert!(
            header_names_with_prefix(response.headers(), "x-session-").is_empty(),
            "create: {create}: write-back headers reached the client"
        );
        assert!(upstream.last().session_header_names().is_empty());
    }
}

async fn secure_true_ignores_a_forwarded_proto_from_an_untrusted_peer(p: Protocol) {
    let (upstream, proxy) = site(p, |c| c.set("session.secure", "true")).await;

    let response = get_forwarded_https(p, &proxy.url("/"), None).await;

    assert_eq!(response.status(), 200);
    assert!(set_cookies(response.headers()).is_empty());
    assert!(upstream.last().session_header_names().is_empty());
}

async fn auto_secure_follows_a_trusted_forwarded_proto(p: Protocol) {
    let (_upstream, proxy) = site(p, |c| c.set("trusted_proxies", "[\"127.0.0.1/32\"]")).await;

    let response = p
        .send(
            p.plain_client()
                .get(proxy.url("/"))
                .header("x-forwarded-proto", "https"),
        )
        .await;

    let cookie = expect_session_cookie(response.headers());
    assert!(cookie.has("Secure"), "{}", cookie.raw);
    assert_eq!(cookie.name, "__Host-sessiongate");
}

async fn auto_secure_ignores_an_untrusted_forwarded_proto(p: Protocol) {
    let (_upstream, proxy) = site(p, |c| c).await;

    let response = p
        .send(
            p.plain_client()
                .get(proxy.url("/"))
                .header("x-forwarded-proto", "https"),
        )
        .await;

    let cookie = p.expect_session_cookie(response.headers());
    assert!(!cookie.has("Secure"), "{}", cookie.raw);
    assert_eq!(cookie.name, "sessiongate");
}

async fn configured_cookie_attributes_are_used(p: Protocol) {
    // A Path other than `/` rules out the __Host- prefix, over TLS too.
    let (upstream, proxy) = site(p, |c| {
        c.set("session.cookie_name", "sid")
            .set("session.http_only", "false")
            .set("session.same_site", "strict")
            .set("session.path", "/app")
            .set("session.absolute_timeout", "2h")
    })
    .await;

    let response = p.get_without_cookie(&proxy.url("/app/")).await;

    let cookie = set_cookies(response.headers())
        .into_iter()
        .find(|c| c.name == "sid")
        .expect("no `sid` cookie");
    assert!(!cookie.has("HttpOnly"), "{}", cookie.raw);
    assert_eq!(
        cookie.attr("SameSite").map(str::to_ascii_lowercase),
        Some("strict".to_owned())
    );
    assert_eq!(cookie.attr("Path"), Some("/app"));
    assert_eq!(cookie.max_age(), Some(2 * 3600));

    let back = p.get_with_cookie(&proxy.url("/app/"), &cookie.pair()).await;
    assert!(set_cookies(back.headers()).is_empty());
    assert_eq!(upstream.last().expect_session_id(), cookie.id());
}

async fn session_cookie_without_persistence_has_no_lifetime(p: Protocol) {
    let (_upstream, proxy) = site(p, |c| c.set("session.persistent", "false")).await;

    let cookie = issued_session(p, &proxy).await;

    assert!(!cookie.has("Max-Age"), "{}", cookie.raw);
    assert!(!cookie.has("Expires"), "{}", cookie.raw);
}

over_every_protocol! {
        first_visit_gets_a_session_cookie_with_every_default_attribute,
        cookie_tag_is_the_hmac_of_the_id_under_the_first_secret,
        every_visitor_gets_a_different_session_id,
        returning_visitor_keeps_the_session_without_a_new_set_cookie,
        cookie_with_a_bad_tag_gets_a_new_session,
        truncated_cookie_gets_a_new_session,
        cookie_with_the_id_alone_gets_a_new_session,
        cookie_signed_with_an_unknown_secret_gets_a_new_session,
        garbage_cookie_gets_a_new_session,
        empty_cookie_gets_a_new_session,
        cookie_with_extra_dots_gets_a_new_session,
        five_kib_cookie_gets_a_new_session,
        correctly_signed_cookie_of_an_unknown_session_gets_a_new_session,
        cookie_signed_by_an_older_secret_is_accepted_and_re_signed_with_the_first,
        first_duplicate_cookie_that_names_a_live_session_wins,
        // Over TLS the request is HTTPS itself; elsewhere the trusted
        // terminator's X-Forwarded-Proto makes it so.
        secure_cookie_gets_the_host_prefix,
        host_prefixed_cookie_is_accepted_back,
        host_prefix_false_keeps_the_plain_name_on_a_secure_cookie,
        a_domain_rules_out_the_host_prefix,
        configured_cookie_attributes_are_used,
        session_cookie_without_persistence_has_no_lifetime,
    // Plain-HTTP behaviour (`secure: true` refusing it, X-Forwarded-Proto
    // deciding `secure: auto`): a request over TLS is HTTPS whatever it says.
    ; plain:
        secure_true_over_plain_http_gets_no_session_and_no_cookie,
        secure_true_over_plain_http_ignores_session_writes,
        secure_true_ignores_a_forwarded_proto_from_an_untrusted_peer,
        auto_secure_follows_a_trusted_forwarded_proto,
        auto_secure_ignores_an_untrusted_forwarded_proto,
}
