//! The HTTPS listener: handshake, ALPN and HTTP/2, secure cookies, HSTS, the 308
//! redirect, certificate reload, and HTTPS upstreams. Every certificate comes from a
//! CA made by the test that uses it.

mod support;

use std::time::Duration;

use support::tls::*;
use support::*;

/// An upstream answering `ok`, a CA, and the proxy serving a certificate from that
/// CA on both a plain and an HTTPS listener; `change` edits the defaults.
async fn tls_site(
    change: impl FnOnce(ConfigYaml) -> ConfigYaml,
) -> (Upstream, TestCa, TlsFiles, TlsProxy) {
    let upstream = Upstream::ok().await;
    let ca = TestCa::new("sessiongate test CA");
    let files = TlsFiles::new(&ca.issue("first"));
    let proxy = TlsProxy::start(&files, change(tls_config(&upstream.url(), &files))).await;
    (upstream, ca, files, proxy)
}

fn session_headers(answer: &Answer) -> SetCookie {
    expect_session_cookie(&answer.headers)
}

// ---------------------------------------------------------------------------
// Handshake and protocols.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn handshake_presents_the_configured_certificate_and_proxies() {
    let upstream = Upstream::ok().await;
    let ca = TestCa::new("sessiongate test CA");
    let leaf = ca.issue("first");
    let files = TlsFiles::new(&leaf);
    let proxy = TlsProxy::start(&files, tls_config(&upstream.url(), &files)).await;

    let mut conn = TlsConn::open(proxy.https_addr(), &ca, Alpn::Http1).await;
    let answer = conn.get("/hello?x=1").await;

    assert_eq!(conn.protocol, Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(conn.peer_cert, leaf.der);
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.text(), "ok");
    let seen = upstream.last();
    assert_eq!(seen.uri.path_and_query().unwrap().as_str(), "/hello?x=1");
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert!(seen.session_id().is_some());
}

#[tokio::test]
async fn tls12_clients_are_served_too() {
    let (_upstream, ca, _files, proxy) = tls_site(|c| c).await;

    let config = client_config(&ca, Alpn::Http1, Some(&[&rustls::version::TLS12]));
    let mut conn = TlsConn::open_with(proxy.https_addr(), config)
        .await
        .expect("TLS 1.2 handshake");
    let answer = conn.get("/").await;

    assert_eq!(conn.protocol, Some(rustls::ProtocolVersion::TLSv1_2));
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn alpn_negotiates_h2_and_the_request_is_served_over_http2() {
    let (upstream, ca, _files, proxy) = tls_site(|c| c).await;

    let mut conn = TlsConn::open(proxy.https_addr(), &ca, Alpn::H2).await;
    assert_eq!(conn.alpn.as_deref(), Some(&b"h2"[..]));
    let first = conn.get("/over-h2").await;

    assert_eq!(first.version, http::Version::HTTP_2);
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.text(), "ok");
    let cookie = session_headers(&first);
    // The upstream still gets HTTP/1.1, with the session.
    let seen = upstream.last();
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(seen.uri.path(), "/over-h2");
    assert_eq!(seen.expect_session_id(), cookie.id());

    // A second stream on the same connection carries the cookie back.
    let second = conn.get_with("/again", &[("cookie", &cookie.pair())]).await;
    assert_eq!(second.version, http::Version::HTTP_2);
    assert!(session_set_cookie(&second.headers).is_none());
    assert_eq!(upstream.last().expect_session_id(), cookie.id());
}

#[tokio::test]
async fn a_client_offering_only_http1_gets_http1() {
    let (_upstream, ca, _files, proxy) = tls_site(|c| c).await;

    let mut conn = TlsConn::open(proxy.https_addr(), &ca, Alpn::Http1).await;
    let answer = conn.get("/").await;

    assert_eq!(conn.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(answer.version, http::Version::HTTP_11);
    assert_eq!(answer.status, 200);

    let mut bare = TlsConn::open(proxy.https_addr(), &ca, Alpn::None).await;
    assert_eq!(bare.alpn, None);
    assert_eq!(bare.get("/").await.status, 200);
}

#[tokio::test]
async fn stalled_handshakes_do_not_block_other_clients() {
    let (_upstream, ca, _files, proxy) = tls_site(|c| c).await;

    // Connections that never send a ClientHello, more than there are workers.
    let mut stalled = Vec::new();
    for _ in 0..16 {
        stalled.push(
            tokio::net::TcpStream::connect(proxy.https_addr())
                .await
                .expect("connect"),
        );
    }

    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        https_get(proxy.https_addr(), &ca, "/", &[]),
    )
    .await
    .expect("a stalled handshake blocked the accept loop");
    assert_eq!(answer.status, 200);
    drop(stalled);
}

// ---------------------------------------------------------------------------
// Secure cookies and HSTS.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn cookie_over_tls_is_secure_with_the_host_prefix() {
    let (upstream, ca, _files, proxy) = tls_site(|c| c).await;

    let first = https_get(proxy.https_addr(), &ca, "/", &[]).await;

    let cookie = session_headers(&first);
    assert_eq!(cookie.name, "__Host-sessiongate", "{}", cookie.raw);
    assert!(cookie.has("Secure"), "{}", cookie.raw);
    assert!(cookie.has("HttpOnly"), "{}", cookie.raw);
    assert_eq!(cookie.attr("Path"), Some("/"), "{}", cookie.raw);
    assert!(!cookie.has("Domain"), "{}", cookie.raw);
    assert_eq!(cookie.value, signed_cookie_value(cookie.id(), SECRET_A));

    // Sent back over TLS, it names the same session and never reaches the upstream.
    let back = https_get(
        proxy.https_addr(),
        &ca,
        "/",
        &[("cookie", &format!("{}; theme=dark", cookie.pair()))],
    )
    .await;
    assert!(session_set_cookie(&back.headers).is_none());
    let seen = upstream.last();
    assert_eq!(seen.expect_session_id(), cookie.id());
    assert!(!seen.is_new_session());
    assert_eq!(
        seen.cookies(),
        vec![("theme".to_owned(), "dark".to_owned())]
    );
}

#[tokio::test]
async fn plain_listener_of_the_same_proxy_keeps_the_plain_cookie() {
    let (upstream, ca, _files, proxy) = tls_site(|c| c).await;
    let secure = session_headers(&https_get(proxy.https_addr(), &ca, "/", &[]).await);

    let plain = get_with_cookie(&proxy.http_url("/"), &secure.pair()).await;

    // `secure: auto` over plain HTTP: no Secure, no prefix; the __Host- cookie is
    // not read there (a browser would never send it) and is not forwarded either.
    let cookie = expect_session_cookie(plain.headers());
    assert_eq!(cookie.name, "sessiongate", "{}", cookie.raw);
    assert!(!cookie.has("Secure"), "{}", cookie.raw);
    let seen = upstream.last();
    assert_ne!(seen.expect_session_id(), secure.id());
    assert!(seen.cookies().is_empty(), "{:?}", seen.cookies());
}

#[tokio::test]
async fn secure_true_serves_sessions_over_tls() {
    let (upstream, ca, _files, proxy) = tls_site(|c| c.set("session.secure", "true")).await;

    let answer = https_get(proxy.https_addr(), &ca, "/", &[]).await;

    let cookie = session_headers(&answer);
    assert_eq!(cookie.name, "__Host-sessiongate");
    assert!(cookie.has("Secure"));
    assert_eq!(upstream.last().expect_session_id(), cookie.id());
}

#[tokio::test]
async fn hsts_is_sent_over_tls_and_never_over_plain_http() {
    let hsts = "max-age=31536000; includeSubDomains";
    let (_upstream, ca, _files, proxy) =
        tls_site(|c| c.set("tls.hsts", &format!("\"{hsts}\""))).await;

    let secure = https_get(proxy.https_addr(), &ca, "/", &[]).await;
    let plain = get_without_cookie(&proxy.http_url("/")).await;

    let values: Vec<_> = secure
        .headers
        .get_all("strict-transport-security")
        .iter()
        .collect();
    assert_eq!(values, vec![hsts], "{:?}", secure.headers);
    assert_eq!(plain.status(), 200);
    assert!(
        plain.headers().get("strict-transport-security").is_none(),
        "HSTS over plain HTTP: {:?}",
        plain.headers()
    );
}

#[tokio::test]
async fn no_hsts_unless_configured() {
    let (_upstream, ca, _files, proxy) = tls_site(|c| c).await;

    let secure = https_get(proxy.https_addr(), &ca, "/", &[]).await;

    assert!(secure.headers.get("strict-transport-security").is_none());
}

// ---------------------------------------------------------------------------
// Redirect from plain HTTP.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn redirect_http_answers_308_to_the_same_host_path_and_query() {
    let (upstream, ca, _files, proxy) = tls_site(|c| c.set("tls.redirect_http", "true")).await;
    let https_port = proxy.https_addr().port();
    let client = plain_client();

    let answer = client
        .get(proxy.http_url("/a/b%20c?x=1&y=two%2Fthree"))
        .send()
        .await
        .unwrap();

    assert_eq!(answer.status(), 308);
    let location = answer.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(
        location,
        format!("https://127.0.0.1:{https_port}/a/b%20c?x=1&y=two%2Fthree")
    );
    assert!(set_cookies(answer.headers()).is_empty());

    // The host comes from the request, the port is the HTTPS listener's.
    let named = client
        .post(proxy.http_url("/login?next=%2Fhome"))
        .header("host", "shop.example.test:8080")
        .body("user=alice")
        .send()
        .await
        .unwrap();
    assert_eq!(named.status(), 308);
    assert_eq!(
        named.headers()["location"],
        format!("https://shop.example.test:{https_port}/login?next=%2Fhome").as_str()
    );
    assert_eq!(
        upstream.count(),
        0,
        "a redirected request reached the upstream"
    );

    // Following it lands on the HTTPS listener, which proxies.
    let followed = https_get(proxy.https_addr(), &ca, "/a/b%20c?x=1&y=two%2Fthree", &[]).await;
    assert_eq!(followed.status, 200);
    assert_eq!(
        upstream.last().uri.path_and_query().unwrap().as_str(),
        "/a/b%20c?x=1&y=two%2Fthree"
    );
}

// ---------------------------------------------------------------------------
// Certificate reload.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn reload_serves_the_new_certificate_to_new_handshakes_and_keeps_old_connections() {
    let upstream = Upstream::ok().await;
    let ca = TestCa::new("sessiongate test CA");
    let first = ca.issue("first");
    let files = TlsFiles::new(&first);
    let proxy = TlsProxy::start(&files, tls_config(&upstream.url(), &files)).await;
    let mut old = TlsConn::open(proxy.https_addr(), &ca, Alpn::Http1).await;
    assert_eq!(old.get("/before").await.status, 200);
    assert_eq!(old.peer_cert, first.der);

    let second = ca.issue("second");
    files.install(&second);
    proxy.reload().expect("reload with a good certificate");

    let mut new = TlsConn::open(proxy.https_addr(), &ca, Alpn::Http1).await;
    assert_eq!(
        new.peer_cert, second.der,
        "a handshake after the reload did not get the new certificate"
    );
    assert_eq!(new.get("/new").await.status, 200);
    // The connection from before the reload still serves, on its old certificate.
    let answer = old.get("/after").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.text(), "ok");
    assert_eq!(old.peer_cert, first.der);
    let paths: Vec<_> = upstream
        .requests()
        .iter()
        .map(|s| s.uri.path().to_owned())
        .collect();
    assert_eq!(paths, ["/before", "/new", "/after"]);
}

#[tokio::test]
async fn reload_over_h2_keeps_the_open_connection() {
    let upstream = Upstream::ok().await;
    let ca = TestCa::new("sessiongate test CA");
    let first = ca.issue("first");
    let files = TlsFiles::new(&first);
    let proxy = TlsProxy::start(&files, tls_config(&upstream.url(), &files)).await;
    let mut old = TlsConn::open(proxy.https_addr(), &ca, Alpn::H2).await;
    assert_eq!(old.get("/").await.status, 200);

    let second = ca.issue("second");
    files.install(&second);
    proxy.reload().expect("reload");

    assert_eq!(old.get("/").await.version, http::Version::HTTP_2);
    let new = TlsConn::open(proxy.https_addr(), &ca, Alpn::H2).await;
    assert_eq!(new.peer_cert, second.der);
}

#[tokio::test]
async fn reload_refuses_an_unreadable_certificate_and_keeps_the_old_one() {
    let upstream = Upstream::ok().await;
    let ca = TestCa::new("sessiongate test CA");
    let first = ca.issue("first");
    let files = TlsFiles::new(&first);
    let proxy = TlsProxy::start(&files, tls_config(&upstream.url(), &files)).await;

    files.write_cert("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n");
    let err = proxy
        .reload()
        .expect_err("a broken certificate was accepted");
    assert!(
        format!("{:#}", anyhow::Error::from(err)).contains("cert.pem"),
        "the error does not name the file"
    );

    let mut conn = TlsConn::open(proxy.https_addr(), &ca, Alpn::Http1).await;
    assert_eq!(conn.peer_cert, first.der);
    assert_eq!(conn.get("/").await.status, 200);
}

#[tokio::test]
async fn reload_refuses_a_certificate_that_does_not_match_the_key() {
    let upstream = Upstream::ok().await;
    let ca = TestCa::new("sessiongate test CA");
    let first = ca.issue("first");
    let files = TlsFiles::new(&first);
    let proxy = TlsProxy::start(&files, tls_config(&upstream.url(), &files)).await;

    // A new certificate, but the old key left in place.
    files.write_cert(&ca.issue("second").cert_pem);
    assert!(proxy.reload().is_err(), "a mismatched pair was accepted");

    let mut conn = TlsConn::open(proxy.https_addr(), &ca, Alpn::Http1).await;
    assert_eq!(conn.peer_cert, first.der);
    assert_eq!(conn.get("/").await.status, 200);
}

#[tokio::test]
async fn reload_refuses_a_missing_key_file() {
    let upstream = Upstream::ok().await;
    let ca = TestCa::new("sessiongate test CA");
    let first = ca.issue("first");
    let files = TlsFiles::new(&first);
    let proxy = TlsProxy::start(&files, tls_config(&upstream.url(), &files)).await;

    std::fs::remove_file(files.key()).unwrap();
    assert!(proxy.reload().is_err(), "a missing key was accepted");

    let conn = TlsConn::open(proxy.https_addr(), &ca, Alpn::Http1).await;
    assert_eq!(conn.peer_cert, first.der);
}

#[tokio::test]
async fn a_bad_certificate_at_start_is_an_error_naming_the_file() {
    let upstream = Upstream::ok().await;
    let ca = TestCa::new("sessiongate test CA");
    let files = TlsFiles::new(&ca.issue("first"));
    files.write_key(&ca.issue("other").key_pem);

    let result = TlsProxy::try_start(&files, tls_config(&upstream.url(), &files)).await;

    let err = result
        .err()
        .expect("a mismatched certificate and key started");
    let message = format!("{err:#}");
    assert!(message.contains("cert.pem"), "{message}");
}

// ---------------------------------------------------------------------------
// HTTPS upstreams.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn https_upstream_verified_against_ca_file() {
    let upstream_ca = TestCa::new("upstream CA");
    let upstream = TlsUpstream::start(&upstream_ca.issue("upstream")).await;
    let files = TlsFiles::new(&upstream_ca.issue("unused"));
    let ca_file = files.write_extra("upstream-ca.pem", &upstream_ca.pem());
    let proxy =
        Proxy::start(config(&upstream.url()).set("upstream.ca_file", &yaml_path(&ca_file))).await;

    let answer = get_without_cookie(&proxy.url("/")).await;

    assert_eq!(answer.status(), 200);
    let cookie = expect_session_cookie(answer.headers());
    assert_eq!(answer.text().await.unwrap(), "secure upstream");
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].get("x-session-id").and_then(|v| v.to_str().ok()),
        Some(cookie.id())
    );
}

/// A request through the proxy to an HTTPS upstream it must refuse: a `502` that
/// says nothing about where the upstream is.
async fn assert_upstream_refused(upstream: &TlsUpstream, trusted: &TestCa) {
    let files = TlsFiles::new(&trusted.issue("unused"));
    let ca_file = files.write_extra("upstream-ca.pem", &trusted.pem());
    let proxy =
        Proxy::start(config(&upstream.url()).set("upstream.ca_file", &yaml_path(&ca_file))).await;

    let answer = get_without_cookie(&proxy.url("/")).await;

    assert_eq!(answer.status(), 502);
    let body = answer.text().await.unwrap();
    let port = upstream.addr().port().to_string();
    for leak in ["127.0.0.1", port.as_str(), "localhost"] {
        assert!(
            !body.contains(leak),
            "the 502 body leaks {leak:?}: {body:?}"
        );
    }
    assert!(
        body.contains("TLS"),
        "the 502 body does not name the cause: {body:?}"
    );
    assert!(
        upstream.requests().is_empty(),
        "a request reached the upstream"
    );
}

#[tokio::test]
async fn https_upstream_signed_by_another_ca_is_refused_with_502() {
    let upstream = TlsUpstream::start(&TestCa::new("upstream CA").issue("upstream")).await;

    assert_upstream_refused(&upstream, &TestCa::new("some other CA")).await;
}

#[tokio::test]
async fn https_upstream_with_a_certificate_for_another_name_is_refused_with_502() {
    let ca = TestCa::new("upstream CA");
    let upstream = TlsUpstream::start(&ca.issue_for("elsewhere", &["elsewhere.test"])).await;

    assert_upstream_refused(&upstream, &ca).await;
}

#[tokio::test]
async fn https_upstream_behind_the_tls_listener_end_to_end() {
    let upstream_ca = TestCa::new("upstream CA");
    let upstream = TlsUpstream::start(&upstream_ca.issue("upstream")).await;
    let ca = TestCa::new("edge CA");
    let files = TlsFiles::new(&ca.issue("edge"));
    let ca_file = files.write_extra("upstream-ca.pem", &upstream_ca.pem());
    let proxy = TlsProxy::start(
        &files,
        tls_config(&upstream.url(), &files).set("upstream.ca_file", &yaml_path(&ca_file)),
    )
    .await;

    let mut conn = TlsConn::open(proxy.https_addr(), &ca, Alpn::H2).await;
    let answer = conn.get("/").await;

    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.text(), "secure upstream");
    assert_eq!(answer.version, http::Version::HTTP_2);
    assert_eq!(session_headers(&answer).name, "__Host-sessiongate");
}

/// An HTTPS upstream that sends bytes nobody asked for after its response, in a
/// TLS record of their own: they may be read off the socket and held, already
/// decrypted, inside the TLS session, where a peek at the socket cannot see
/// them. A connection holding them is never reused, so they never become the
/// answer to the next request.
#[tokio::test]
async fn https_upstream_stale_bytes_never_answer_the_next_request() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let upstream_ca = TestCa::new("upstream CA");
    let leaf = upstream_ca.issue("upstream");
    sessiongate::tls::install_provider();
    let key = {
        use rustls::pki_types::pem::PemObject as _;
        rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap()
    };
    let server = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der.clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            counted.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while support::raw::head_end(&buf).is_none() {
                        match tls.read(&mut chunk).await {
                            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                    }
                    let end = support::raw::head_end(&buf).unwrap();
                    buf.drain(..end);
                    // The response fills the proxy's 8 KiB read exactly, so the
                    // stale bytes behind it stay inside the TLS session.
                    let reply = reply_filling(8192);
                    let stale = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nstale!";
                    let _ = tls.write_all(&reply).await;
                    if tls.write_all(stale).await.is_err() || tls.flush().await.is_err() {
                        return;
                    }
                }
            });
        }
    });

    let files = TlsFiles::new(&upstream_ca.issue("unused"));
    let ca_file = files.write_extra("upstream-ca.pem", &upstream_ca.pem());
    let proxy = Proxy::start(
        config(&format!("https://{addr}")).set("upstream.ca_file", &yaml_path(&ca_file)),
    )
    .await;
    // One client connection: one worker, one pool.
    let mut client = support::raw::RawClient::connect(proxy.addr()).await;
    for i in 1..=3 {
        client
            .send(format!("GET /{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await;
        let got = client.responses(i).await;
        assert_eq!(got.responses.len(), i, "{}", got.text());
        let expected = reply_filling(8192);
        let body_len = expected.len() - support::raw::head_end(&expected).unwrap();
        for r in &got.responses {
            assert_eq!(r.status, 200);
            assert!(
                r.body.len() == body_len && r.body.iter().all(|&b| b == b'o'),
                "stale bytes answered a request: {:?}",
                String::from_utf8_lossy(&r.body[..r.body.len().min(64)])
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(connections.load(Ordering::SeqCst), 3);
}

/// A `200` whose head and body together are exactly `total` bytes.
fn reply_filling(total: usize) -> Vec<u8> {
    let head = |n: usize| format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n");
    let mut n = total - head(0).len();
    while head(n).len() + n > total {
        n -= 1;
    }
    let mut reply = head(n).into_bytes();
    reply.resize(total, b'o');
    reply
}
