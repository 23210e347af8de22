//! The wire rules of DESIGN.md §9, one test per attack an outside tester found:
//! a header that unframes a request or a response, an empty line that hides a
//! second response, session headers spelled with `_`, a client that never
//! reads, a slow but live upload, `Host`, `CONNECT` and `h2c`, a broken chunk
//! before anything was sent, `Forwarded` and `X-Real-IP`, a silent tunnel, and
//! stale bytes on a pooled TLS connection.
//!
//! Each test says what the client got, what the upstream got, and, where it
//! matters, what the session holds afterwards.

mod support;

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;

use support::raw::*;
use support::*;

/// An upstream that answers `METHOD PATH|BODY`, so a response shows which
/// request it belongs to.
async fn echo_upstream() -> Upstream {
    Upstream::start(|seen| {
        let body = String::from_utf8_lossy(&seen.body);
        Reply::ok().body(format!("{} {}|{body}", seen.method, seen.uri.path()))
    })
    .await
}

fn bodies(got: &Exchange) -> Vec<String> {
    got.responses
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect()
}

fn paths(upstream: &Upstream) -> Vec<String> {
    upstream
        .requests()
        .iter()
        .map(|s| format!("{} {}", s.method, s.uri.path()))
        .collect()
}

/// No header the upstream saw is a session header but the proxy's own, in any
/// spelling, and no forged value got through.
#[track_caller]
fn assert_no_forged_session_headers(seen: &Seen, forged: &[&str]) {
    for (name, value) in seen.headers.iter() {
        let folded = name.as_str().replace('_', "-").to_ascii_lowercase();
        if folded.starts_with("x-session-") {
            assert!(
                ["x-session-id", "x-session-new", "x-session-data"].contains(&name.as_str()),
                "a client's {name} reached the upstream"
            );
        }
        let value = value.to_str().unwrap_or("");
        for f in forged {
            assert!(
                !value.contains(f),
                "the forged value {f:?} reached the upstream as {name}: {value:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// 1. Framing is computed, never copied.
// ---------------------------------------------------------------------------

/// The attack as reported: `Connection: Content-Length` used to drop the
/// framing, so the body reached the upstream as a request of its own, with a
/// forged `X-Session-Data`. The body is this request's body; the next request
/// on the connection gets its own answer.
#[tokio::test]
async fn connection_naming_content_length_cannot_smuggle_a_request() {
    let upstream = echo_upstream().await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let smuggled = "GET /admin HTTP/1.1\r\nHost: x\r\nX-Session-Data: role=admin\r\n\r\n";
    for connection in [
        "Content-Length",
        "content-length, keep-alive",
        "Transfer-Encoding",
    ] {
        let attack = format!(
            "POST /a HTTP/1.1\r\nHost: x\r\nConnection: {connection}\r\nContent-Length: {}\r\n\r\n{smuggled}",
            smuggled.len()
        );
        let before = upstream.count();
        let mut client = RawClient::connect(proxy.addr()).await;
        client.send(attack.as_bytes()).await;
        client.send(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let got = client.responses(2).await;
        assert_eq!(
            bodies(&got),
            vec![format!("POST /a|{smuggled}"), "GET /next|".to_owned()],
            "Connection: {connection}: {}",
            got.text()
        );
        let seen = &upstream.requests()[before..];
        assert_eq!(
            seen.len(),
            2,
            "Connection: {connection}: {:?}",
            paths(&upstream)
        );
        assert_eq!(
            seen[0].header("content-length"),
            Some(smuggled.len().to_string().as_str())
        );
        assert!(!paths(&upstream).iter().any(|p| p.ends_with("/admin")));
        for s in seen {
            assert_ne!(s.session_data(), Some("role=admin"));
        }
    }
}

/// The chunked spelling of the same trick: the upstream gets the body, chunked
/// by the proxy, as this request's body.
#[tokio::test]
async fn connection_naming_transfer_encoding_keeps_a_chunked_body_framed() {
    let upstream = echo_upstream().await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let got = exchange(
        proxy.addr(),
        b"POST /c HTTP/1.1\r\nHost: x\r\nConnection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(
        bodies(&got).first().map(String::as_str),
        Some("POST /c|hello"),
        "{}",
        got.text()
    );
    assert!(!paths(&upstream)
        .iter()
        .any(|p| p.ends_with("/smuggled") && upstream.count() < 2));
    let first = &upstream.requests()[0];
    assert_eq!(first.header("transfer-encoding"), Some("chunked"));
    assert_eq!(first.header("content-length"), None);
}

/// An upstream response whose `Connection` names `Content-Length`: the client
/// still gets the response framed, and the next request on its kept-alive
/// connection gets its own answer.
#[tokio::test]
async fn response_connection_naming_content_length_keeps_its_framing() {
    let upstream = RawUpstream::start(
        &b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 2\r\n\r\nok"[..],
    )
    .await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let mut client = RawClient::connect(proxy.addr()).await;
    client.send(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n").await;
    client.send(b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let got = client.responses(2).await;
    assert_eq!(got.responses.len(), 2, "{}", got.text());
    for r in &got.responses {
        assert_eq!(r.status, 200);
        assert_eq!(r.header_all("content-length"), vec!["2"], "{}", got.text());
        assert_eq!(r.body, b"ok");
    }
    assert!(!got.closed, "the connection closed: {}", got.text());
}

// ---------------------------------------------------------------------------
// 2. One parser decides where a response starts.
// ---------------------------------------------------------------------------

/// An empty line before the status line used to make the interim check (raw
/// bytes) and the head parser disagree, so the body was served as the response
/// and its write-back applied. Whatever the client gets, the session never
/// holds what the body said.
#[tokio::test]
async fn an_empty_line_before_a_response_cannot_hide_a_second_one() {
    let hidden = "HTTP/1.1 200 OK\r\nX-Session-Set: role=admin\r\nContent-Length: 6\r\n\r\nhidden";
    let reply = format!(
        "\r\nHTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{hidden}",
        hidden.len()
    );
    let upstream = RawUpstream::start(reply.into_bytes()).await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let got = exchange(proxy.addr(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let first = got.response().clone();
    assert_ne!(first.body, b"hidden", "the hidden response was served");
    if first.status == 200 {
        assert_eq!(first.body, hidden.as_bytes());
    } else {
        assert_eq!(first.status, 502, "{}", got.text());
    }
    // The session, if one was issued, does not hold role=admin.
    let Some(cookie) = first
        .header_all("set-cookie")
        .into_iter()
        .find(|c| c.starts_with("sessiongate="))
        .map(|c| c.split(';').next().unwrap().to_owned())
    else {
        return;
    };
    let follow = format!("GET /again HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n");
    exchange(proxy.addr(), follow.as_bytes()).await;
    assert!(upstream.wait_for_requests(2, PATIENCE).await);
    let second = String::from_utf8_lossy(&upstream.requests()[1]).into_owned();
    assert!(second.contains("GET /again"), "{second}");
    assert!(
        !second.contains("role=admin"),
        "the hidden write-back was applied: {second}"
    );
}

/// Interim responses are skipped by what the parser says, whatever their
/// spelling; the final one is relayed once.
#[tokio::test]
async fn interim_responses_are_skipped_by_the_parse() {
    let upstream = RawUpstream::start(
        &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal"[..],
    )
    .await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let got = exchange(proxy.addr(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(got.responses.len(), 1, "{}", got.text());
    assert_eq!(got.status(), 200);
    assert_eq!(got.response().body, b"final");
}

// ---------------------------------------------------------------------------
// 3. Session headers in any spelling.
// ---------------------------------------------------------------------------

const FORGED: [(&str, &str); 5] = [
    ("X_Session_Id", "forged-id"),
    ("X-Session_Data", "role=forged"),
    ("x_session_data", "role=forged2"),
    ("X_SESSION_NEW", "forged-new"),
    ("x-session_id", "forged-id2"),
];

fn forged_request(method: &str, path: &str, cookie: Option<&str>) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n");
    for (n, v) in FORGED {
        r.push_str(&format!("{n}: {v}\r\n"));
    }
    if let Some(c) = cookie {
        r.push_str(&format!("Cookie: {c}\r\n"));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

fn forged_values() -> Vec<&'static str> {
    FORGED.iter().map(|(_, v)| *v).collect()
}

/// With a session, on an excluded path, and for `OPTIONS` (no session work
/// at all, so a forged value would be the only one the app sees).
#[tokio::test]
async fn session_headers_spelled_with_underscores_never_reach_the_upstream() {
    let upstream = Upstream::ok().await;
    let proxy =
        Proxy::start(config(&upstream.url()).set("session.exclude_paths", "[\"/static/\"]")).await;
    for (method, path) in [("GET", "/"), ("GET", "/static/a.css"), ("OPTIONS", "/")] {
        let got = exchange(proxy.addr(), &forged_request(method, path, None)).await;
        assert_eq!(got.status(), 200, "{method} {path}: {}", got.text());
        let seen = upstream.last();
        assert_eq!(seen.uri.path(), path);
        assert_no_forged_session_headers(&seen, &forged_values());
    }
}

/// During the regenerate grace window the old cookie gets no session headers
/// of its own: forged ones must not stand in for them.
#[tokio::test]
async fn forged_session_headers_do_not_fill_the_regenerate_grace_window() {
    let upstream = Upstream::start(|seen| match seen.uri.path() {
        "/login" => Reply::ok().session_set("user=alice").session_regenerate(),
        _ => Reply::ok(),
    })
    .await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let first = expect_session_cookie(get_without_cookie(&proxy.url("/")).await.headers());
    let login = get_with_cookie(&proxy.url("/login"), &first.pair()).await;
    let renewed = expect_session_cookie(login.headers());
    assert_ne!(renewed.id(), first.id());
    let got = exchange(
        proxy.addr(),
        &forged_request("GET", "/late", Some(&first.pair())),
    )
    .await;
    assert_eq!(got.status(), 200, "{}", got.text());
    let seen = upstream.last();
    assert_eq!(seen.uri.path(), "/late");
    assert_no_forged_session_headers(&seen, &forged_values());
}

// ---------------------------------------------------------------------------
// 4 and 5. Timeouts: a client that never reads, a slow but live upload.
// ---------------------------------------------------------------------------

/// A client that asks for 32 MB and never reads: after `limits.send_timeout`
/// without progress the proxy closes, and the upstream connection is let go
/// (the upstream's own writes fail) instead of being held for good.
#[tokio::test]
async fn a_client_that_never_reads_releases_the_upstream_after_send_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (released_tx, released_rx) = tokio::sync::oneshot::channel::<Duration>();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1024];
        while head_end(&head).is_none() {
            let n = stream.read(&mut byte).await.unwrap();
            assert!(n > 0);
            head.extend_from_slice(&byte[..n]);
        }
        let total: usize = 32 * 1024 * 1024;
        let started = std::time::Instant::now();
        let header = format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n");
        stream.write_all(header.as_bytes()).await.unwrap();
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        while sent < total {
            if stream.write_all(&chunk).await.is_err() {
                let _ = released_tx.send(started.elapsed());
                return;
            }
            sent += chunk.len();
        }
    });
    let proxy =
        Proxy::start(config(&format!("http://{addr}")).set("limits.send_timeout", "1s")).await;
    let mut client = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    client
        .write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // Never read. The upstream must be let go within a bounded time.
    let released = tokio::time::timeout(Duration::from_secs(20), released_rx)
        .await
        .expect("the upstream connection is still held 20 s after the client stopped reading")
        .expect("upstream task ended");
    assert!(released < Duration::from_secs(20));
    drop(client);
}

/// `upstream.timeout` starts once the whole request body has been sent: an
/// upload slower than it, but never pausing past `client_body_timeout`, is
/// forwarded and answered.
#[tokio::test]
async fn a_slow_but_live_upload_is_not_cut_off_by_the_upstream_timeout() {
    let upstream = echo_upstream().await;
    let proxy = Proxy::start(
        config(&upstream.url())
            .set("upstream.timeout", "1s")
            .set("limits.client_body_timeout", "2s"),
    )
    .await;
    let mut client = RawClient::connect(proxy.addr()).await;
    client
        .send(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
        .await;
    for b in b"0123456789" {
        tokio::time::sleep(Duration::from_millis(250)).await;
        client.send(&[*b]).await;
    }
    let got = client.responses(1).await;
    assert_eq!(got.status(), 200, "{}", got.text());
    assert_eq!(got.response().body, b"POST /up|0123456789");
}

/// A chunked upload, likewise slower than `upstream.timeout`.
#[tokio::test]
async fn a_slow_chunked_upload_is_not_cut_off_by_the_upstream_timeout() {
    let upstream = echo_upstream().await;
    let proxy = Proxy::start(config(&upstream.url()).set("upstream.timeout", "1s")).await;
    let mut client = RawClient::connect(proxy.addr()).await;
    client
        .send(b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await;
    for piece in ["3\r\nabc\r\n", "3\r\ndef\r\n", "3\r\nghi\r\n", "0\r\n\r\n"] {
        tokio::time::sleep(Duration::from_millis(450)).await;
        client.send(piece.as_bytes()).await;
    }
    let got = client.responses(1).await;
    assert_eq!(got.status(), 200, "{}", got.text());
    assert_eq!(got.response().body, b"POST /up|abcdefghi");
}

/// Once the body is sent, an upstream slower than `upstream.timeout` is a 504.
#[tokio::test]
async fn the_upstream_timeout_still_bounds_the_wait_for_an_answer() {
    let upstream = Upstream::start(|_| Reply::ok().after(Duration::from_secs(3))).await;
    let proxy = Proxy::start(config(&upstream.url()).set("upstream.timeout", "1s")).await;
    let started = std::time::Instant::now();
    let got = exchange(
        proxy.addr(),
        b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
    )
    .await;
    assert_eq!(got.status(), 504, "{}", got.text());
    assert!(started.elapsed() < Duration::from_millis(2900));
}

// ---------------------------------------------------------------------------
// 6 and 7. Host, CONNECT, h2c.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn http11_without_host_or_with_two_is_refused() {
    let upstream = Upstream::ok().await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    for bad in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
        b"GET http://a/ HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a@evil\r\n\r\n",
        b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET internal:8080 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET file:///etc/passwd HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        let got = exchange(proxy.addr(), bad).await;
        assert_eq!(
            got.status(),
            400,
            "{:?}: {}",
            String::from_utf8_lossy(bad),
            got.text()
        );
        assert!(got.closed);
    }
    assert_eq!(upstream.count(), 0, "{:?}", paths(&upstream));
    // HTTP/1.0 may leave Host out.
    let got = exchange(proxy.addr(), b"GET /old HTTP/1.0\r\n\r\n").await;
    assert_eq!(got.status(), 200, "{}", got.text());
}

#[tokio::test]
async fn connect_is_refused_with_405() {
    let upstream = Upstream::ok().await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let got = exchange(
        proxy.addr(),
        b"CONNECT internal.example:443 HTTP/1.1\r\nHost: internal.example:443\r\n\r\n",
    )
    .await;
    assert_eq!(got.status(), 405, "{}", got.text());
    assert!(got.response().header("allow").is_some());
    assert!(got.closed);
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn upgrade_to_h2c_is_removed_and_the_request_goes_on_as_http11() {
    let upstream = Upstream::ok().await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let got = exchange(
        proxy.addr(),
        b"GET /h2c HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert_eq!(got.status(), 200, "{}", got.text());
    let seen = upstream.last();
    assert_eq!(seen.uri.path(), "/h2c");
    assert_eq!(seen.header("upgrade"), None);
    assert_eq!(seen.header("http2-settings"), None);
    assert_ne!(seen.header("connection"), Some("upgrade"));
}

// ---------------------------------------------------------------------------
// 8. A broken upstream response found before anything was sent.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_malformed_first_chunk_is_a_502() {
    for reply in [
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5 5\r\nhello\r\n0\r\n\r\n",
        // Transfer-Encoding in HTTP/1.0 is faulty framing (RFC 9112 §6.1).
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ] {
        let upstream = RawUpstream::start(reply).await;
        let proxy = Proxy::start(config(&upstream.url())).await;
        let got = exchange(proxy.addr(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(
            got.status(),
            502,
            "{:?}: {}",
            String::from_utf8_lossy(reply),
            got.text()
        );
        assert!(!got.text().contains("hello"), "{}", got.text());
    }
}

/// Bytes past a response's `Content-Length` never become the answer to the
/// next request: that connection is not reused.
#[tokio::test]
async fn bytes_past_a_responses_length_never_answer_the_next_request() {
    let upstream = RawUpstream::start(
        &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nstale!"[..],
    )
    .await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let mut client = RawClient::connect(proxy.addr()).await;
    client.send(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let first = client.responses(1).await;
    assert_eq!(bodies(&first), vec!["ok"]);
    client.send(b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let got = client.responses(2).await;
    assert_eq!(bodies(&got), vec!["ok", "ok"], "{}", got.text());
    assert_eq!(
        upstream.connections(),
        2,
        "the connection with stale bytes was reused"
    );
}

// ---------------------------------------------------------------------------
// 9. Forwarded and X-Real-IP; a silent tunnel.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn forwarded_and_x_real_ip_are_kept_only_from_a_trusted_proxy() {
    let request = b"GET / HTTP/1.1\r\nHost: x\r\nForwarded: for=203.0.113.9;proto=https\r\n\
                    X-Real-IP: 203.0.113.9\r\nX_Real_IP: 203.0.113.10\r\n\r\n";
    let upstream = Upstream::ok().await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    assert_eq!(exchange(proxy.addr(), request).await.status(), 200);
    let seen = upstream.last();
    assert_eq!(seen.header("forwarded"), None);
    assert_eq!(seen.header("x-real-ip"), None);
    assert_eq!(seen.header("x_real_ip"), None);
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));

    let trusting =
        Proxy::start(config(&upstream.url()).set("trusted_proxies", "[\"127.0.0.1/32\"]")).await;
    assert_eq!(exchange(trusting.addr(), request).await.status(), 200);
    let seen = upstream.last();
    assert_eq!(
        seen.header("forwarded"),
        Some("for=203.0.113.9;proto=https")
    );
    assert_eq!(seen.header("x-real-ip"), Some("203.0.113.9"));
}

/// An upgraded connection with no bytes either way for
/// `limits.tunnel_idle_timeout` is closed; one in use is not.
#[tokio::test]
async fn a_silent_tunnel_is_closed_after_tunnel_idle_timeout() {
    let upstream = Upstream::start(websocket_app).await;
    let proxy = Proxy::start(config(&upstream.url()).set("limits.tunnel_idle_timeout", "1s")).await;
    let handshake = format!("ws://{}/ws", proxy.addr())
        .into_client_request()
        .unwrap();
    let (mut socket, response) =
        tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(handshake))
            .await
            .expect("handshake timed out")
            .expect("handshake failed");
    assert_eq!(response.status(), 101);
    // In use: messages every 400 ms for 2 s keep it open.
    for i in 0..5 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let message = Message::text(format!("ping {i}"));
        socket.send(message.clone()).await.unwrap();
        let echoed = tokio::time::timeout(PATIENCE, socket.next())
            .await
            .expect("no echo")
            .expect("tunnel closed while in use")
            .expect("tunnel error");
        assert_eq!(echoed, message);
    }
    // Silent: closed within the idle timeout and some slack.
    let started = std::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match socket.next().await {
                None | Some(Err(_)) => break,
                Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "a silent tunnel is still open after 5 s");
    assert!(started.elapsed() >= Duration::from_millis(900));
}

/// `OPTIONS *` asks about the whole server: it goes upstream as `*`, also when
/// the upstream URL has a path.
#[tokio::test]
async fn options_asterisk_goes_upstream_as_asterisk() {
    let upstream = RawUpstream::ok().await;
    let proxy = Proxy::start(config(&format!("{}/app", upstream.url()))).await;
    let got = exchange(proxy.addr(), b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(got.status(), 200, "{}", got.text());
    assert!(
        upstream.text().starts_with("OPTIONS * HTTP/1.1\r\n"),
        "{}",
        upstream.text()
    );
}

/// The session cookie is the proxy's alone: an upstream `Set-Cookie` under its
/// name (either spelling) never reaches the browser, where it would replace or
/// fixate the visitor's session. Found by the h1_response_diff fuzz target.
#[tokio::test]
async fn the_upstream_cannot_set_the_proxys_cookie() {
    let upstream = RawUpstream::start(
        &b"HTTP/1.1 200 OK\r\nSet-Cookie: sessiongate=fixated.value; Path=/\r\n\
           Set-Cookie: __Host-sessiongate=fixated; Secure; Path=/\r\n\
           Set-Cookie: app=kept; Path=/\r\nContent-Length: 2\r\n\r\nok"[..],
    )
    .await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let got = exchange(proxy.addr(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(got.status(), 200, "{}", got.text());
    let cookies = got.response().header_all("set-cookie");
    assert!(
        cookies.iter().any(|c| c.starts_with("app=kept")),
        "{cookies:?}"
    );
    assert!(
        !cookies.iter().any(|c| c.contains("fixated")),
        "{cookies:?}"
    );
    assert_eq!(
        cookies
            .iter()
            .filter(|c| c.starts_with("sessiongate="))
            .count(),
        1,
        "{cookies:?}"
    );
}

/// The same over HTTP/2: `upstream.timeout` starts once the stream's body has
/// been sent, so an upload slower than it is forwarded and answered.
#[tokio::test]
async fn a_slow_http2_upload_is_not_cut_off_by_the_upstream_timeout() {
    use http_body_util::{BodyExt as _, StreamBody};
    let upstream = echo_upstream().await;
    let proxy = Proxy::start(config(&upstream.url()).set("upstream.timeout", "1s")).await;
    let mut sender = h2c(proxy.addr()).await;
    let (tx, rx) =
        tokio::sync::mpsc::channel::<Result<hyper::body::Frame<bytes::Bytes>, std::io::Error>>(4);
    tokio::spawn(async move {
        for piece in ["abc", "def", "ghi", "jkl"] {
            tokio::time::sleep(Duration::from_millis(450)).await;
            let frame = hyper::body::Frame::data(bytes::Bytes::from_static(piece.as_bytes()));
            if tx.send(Ok(frame)).await.is_err() {
                return;
            }
        }
    });
    let body = StreamBody::new(tokio_stream_from(rx));
    let request = hyper::Request::post(format!("http://{}/up2", proxy.addr()))
        .body(body)
        .unwrap();
    let response = tokio::time::timeout(PATIENCE, sender.send_request(request))
        .await
        .expect("no answer")
        .expect("request failed");
    assert_eq!(response.status(), 200);
    let got = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&got[..], b"POST /up2|abcdefghijkl");
}

/// An mpsc receiver as a stream of body frames.
fn tokio_stream_from<T>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
