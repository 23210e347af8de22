//! Hostile input, one test per attack: request smuggling and malformed
//! framing, malformed header fields, header and body limits, slow clients,
//! headers HTTP/2 forbids, duplicated and oversized session cookies,
//! malformed upstream replies and write-back, and upgrades.
//!
//! Each test says what the client got (a status, a reset stream, or nothing),
//! what the upstream got (usually nothing), and what became of the connection.
//! DESIGN.md §3 and §8 give the contract: a malformed request is `400` and a
//! closed connection, oversized headers `431`, an oversized body `413`, a
//! malformed upstream reply `502`.
//!
//! Every attack an HTTP/2 client can make as well runs over HTTP/1.1, h2c and
//! h2 over TLS (see `support::protocol` and the `over_every_protocol!` list at
//! the end): `http1::name`, `h2c::name`, `h2_tls::name`, so that a failure
//! names the case and the protocol. Over HTTP/1.1 a refused request closes the
//! connection; over HTTP/2 the proxy goes on serving the client. A request no
//! client library would send is written by hand (`ProtocolProxy::raw`): bytes
//! over HTTP/1.1, frames over HTTP/2. The attacks on HTTP/1 syntax itself
//! stay plain `#[tokio::test]`s, in sections whose titles start "HTTP/1
//! only" and say why; the attacks on HTTP/2 itself run over h2c and h2 over
//! TLS only (the `http2:` part of the list).
//!
//! Ambiguous framing (Content-Length beside Transfer-Encoding, a repeated
//! Content-Length, bare LF line ends) is refused with `400`; the test beside each
//! also pins that nothing ambiguous reaches the upstream.

mod support;

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::AsyncWriteExt as _;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;

use support::protocol::{
    over_every_protocol, site as protocol_site, Protocol, ProtocolProxy, RawAnswer, RawBody,
    RawConn,
};
use support::raw::*;
use support::*;

/// A second request hidden behind the first; it must never reach the upstream
/// as a request of its own.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: example.test\r\n\r\n";

async fn site(config_change: impl FnOnce(ConfigYaml) -> ConfigYaml) -> (Upstream, Proxy) {
    let upstream = Upstream::ok().await;
    let proxy = Proxy::start(config_change(config(&upstream.url()))).await;
    (upstream, proxy)
}

/// The proxy answered `status` itself and closed the connection.
#[track_caller]
fn assert_refused(got: &Exchange, status: u16) {
    assert_eq!(got.status(), status, "the proxy answered {:?}", got.text());
    assert!(
        got.closed,
        "the connection stayed open after {status}: {:?}",
        got.text()
    );
}

/// Not a byte reached the upstream: it was never even connected to.
#[track_caller]
fn assert_upstream_saw_nothing(upstream: &Upstream) {
    assert_eq!(
        upstream.count(),
        0,
        "the upstream received {:?}",
        upstream.requests()
    );
    assert_eq!(upstream.connections(), 0, "the proxy connected upstream");
}

/// No request for `/smuggled` reached the upstream as a request of its own.
#[track_caller]
fn assert_nothing_smuggled(upstream: &Upstream) {
    let paths: Vec<String> = upstream
        .requests()
        .iter()
        .map(|s| s.uri.path().to_owned())
        .collect();
    assert!(
        !paths.iter().any(|p| p == "/smuggled"),
        "a smuggled request reached the upstream: {paths:?}"
    );
}

/// Sends `bytes` to a fresh proxy in front of a recording upstream, then
/// checks the contract for a malformed request: `400`, closed, nothing upstream.
async fn assert_malformed_request_refused(bytes: &[u8]) {
    let (upstream, proxy) = site(|c| c).await;
    let got = exchange(proxy.addr(), bytes).await;
    assert_refused(&got, 400);
    assert_upstream_saw_nothing(&upstream);
}

fn post(headers: &str, body: &str) -> Vec<u8> {
    format!("POST /submit HTTP/1.1\r\nHost: example.test\r\n{headers}\r\n{body}").into_bytes()
}

/// How the proxy refuses a request, as the client sees it.
#[derive(Clone, Copy, Debug)]
enum Refusal {
    /// This status, from the proxy itself, over every protocol.
    Status(u16),
    /// A request HTTP/2 itself calls malformed (RFC 9113 §8.1.1): over HTTP/2
    /// a PROTOCOL_ERROR without an answer, on the stream (RST_STREAM) or on the
    /// whole connection (GOAWAY, which §5.4.1 allows for any stream error);
    /// over HTTP/1.1 a `400`.
    Malformed,
    /// Over HTTP/2 a `400`, or a PROTOCOL_ERROR without an answer as for
    /// [`Refusal::Malformed`]; over HTTP/1.1 a `400`.
    BadRequestOrMalformed,
}

/// The contract for a refused request (`case` names it in a failure): the
/// client got `expect` from the proxy itself and nothing reached the upstream.
/// Over HTTP/1.1 the connection is then closed. Over HTTP/2 the same
/// connection serves the next request, unless the proxy refused the whole
/// connection with a GOAWAY: then a new connection does.
async fn assert_refused_on(
    proxy: &ProtocolProxy,
    conn: &mut RawConn,
    got: &RawAnswer,
    expect: Refusal,
    upstream: &Upstream,
    case: &str,
) {
    let p = conn.protocol();
    let status = got.status();
    let malformed = !got.answered()
        && (got.reset == Some(PROTOCOL_ERROR) || got.goaway == Some(PROTOCOL_ERROR));
    match (p, expect) {
        (Protocol::Http1, expect) => {
            let want = match expect {
                Refusal::Status(s) => s,
                Refusal::Malformed | Refusal::BadRequestOrMalformed => 400,
            };
            assert_eq!(got.statuses, vec![want], "[{p}] {case}: {}", got.trace);
            assert!(got.closed, "[{p}] {case}: connection left open");
        }
        (_, Refusal::Status(s)) => {
            assert_eq!(status, Some(s), "[{p}] {case}: {}", got.trace)
        }
        (_, Refusal::Malformed) => assert!(
            malformed,
            "[{p}] {case}: not refused as malformed: {}",
            got.trace
        ),
        (_, Refusal::BadRequestOrMalformed) => assert!(
            status == Some(400) || malformed,
            "[{p}] {case}: neither 400 nor refused as malformed: {}",
            got.trace
        ),
    }
    assert!(
        upstream.count() == 0 && upstream.connections() == 0,
        "[{p}] {case}: the upstream received {:?}",
        upstream.requests()
    );
    if p != Protocol::Http1 {
        if got.goaway.is_some() {
            *conn = proxy.raw().await;
        }
        assert_next_request_served(conn, upstream, case).await;
    }
}

/// The same connection still serves a request, and the upstream gets it.
async fn assert_next_request_served(conn: &mut RawConn, upstream: &Upstream, case: &str) {
    let p = conn.protocol();
    let next = conn.get("/next").await;
    assert_eq!(
        next.status(),
        Some(200),
        "[{p}] {case}: the connection did not serve the next request: {}",
        next.trace
    );
    assert_eq!(upstream.last().uri.path(), "/next", "[{p}] {case}");
}

/// On a fresh proxy over `p` (its config as `config_change` leaves it), the
/// request `send` makes by hand is refused as `expect`.
async fn assert_refused_over(
    p: Protocol,
    config_change: impl FnOnce(ConfigYaml) -> ConfigYaml,
    send: impl AsyncFnOnce(&mut RawConn) -> RawAnswer,
    expect: Refusal,
    case: &str,
) {
    let (upstream, proxy) = protocol_site(p, config_change).await;
    let mut conn = proxy.raw().await;
    let got = send(&mut conn).await;
    assert_refused_on(&proxy, &mut conn, &got, expect, &upstream, case).await;
}

/// `GET /h2` with `extra` is refused as `expect`.
async fn assert_get_refused(p: Protocol, extra: &[(&[u8], &[u8])], expect: Refusal, case: &str) {
    let send = async |conn: &mut RawConn| conn.request("GET", "/h2", extra, None).await;
    assert_refused_over(p, |c| c, send, expect, case).await;
}

// ---------------------------------------------------------------------------
// HTTP/1 only: Content-Length and Transfer-Encoding. HTTP/2 frames a body
// with DATA frames; there is no length or coding syntax to disagree on.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn content_length_with_transfer_encoding_gets_400() {
    let body = format!("0\r\n\r\n{SMUGGLED}");
    let bytes = post(
        &format!(
            "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
            body.len()
        ),
        &body,
    );
    assert_malformed_request_refused(&bytes).await;
}

/// The proxy's own answer to `HEAD` (here a `502` from a dead upstream) states
/// its length and carries no body: a body there would be read as the start of
/// the next response on the connection.
#[tokio::test]
async fn own_answer_to_head_has_no_body_and_the_next_response_follows() {
    let proxy = Proxy::start(config(&format!("http://{}", refused_addr()))).await;
    let mut client = RawClient::connect(proxy.addr()).await;
    client
        .send(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let got = client.responses_within(2, Duration::from_secs(3)).await;
    let text = got.text();
    let first_end = text.find("\r\n\r\n").expect("a response head") + 4;
    assert!(text.starts_with("HTTP/1.1 502"), "{text:?}");
    assert!(
        text[first_end..].starts_with("HTTP/1.1 502"),
        "the HEAD answer carried a body: {text:?}"
    );
    assert!(text[..first_end]
        .to_ascii_lowercase()
        .contains("content-length: "));
}

/// What does hold for CL+TE today: Transfer-Encoding wins, the body is framed
/// afresh for the upstream, the connection is closed after the response, and
/// the request hidden behind the body is never forwarded.
#[tokio::test]
async fn content_length_with_transfer_encoding_never_smuggles_a_request() {
    let (upstream, proxy) = site(|c| c).await;
    for te_first in [false, true] {
        let body = format!("0\r\n\r\n{SMUGGLED}");
        let cl = format!("Content-Length: {}\r\n", body.len());
        let te = "Transfer-Encoding: chunked\r\n";
        let headers = if te_first {
            format!("{te}{cl}")
        } else {
            format!("{cl}{te}")
        };
        let got = exchange(proxy.addr(), &post(&headers, &body)).await;
        assert!(
            got.responses.len() <= 1,
            "the smuggled request was answered: {:?}",
            got.text()
        );
        assert!(got.closed, "connection left open: {:?}", got.text());
    }
    assert_nothing_smuggled(&upstream);
    for seen in upstream.requests() {
        assert_eq!(
            seen.body_len, 0,
            "the CL-framed bytes went upstream as a body"
        );
    }
}

#[tokio::test]
async fn transfer_encoding_xchunked_gets_400() {
    let body = format!("0\r\n\r\n{SMUGGLED}");
    assert_malformed_request_refused(&post("Transfer-Encoding: xchunked\r\n", &body)).await;
}

#[tokio::test]
async fn transfer_encoding_chunked_then_identity_gets_400() {
    let body = format!("0\r\n\r\n{SMUGGLED}");
    assert_malformed_request_refused(&post("Transfer-Encoding: chunked, identity\r\n", &body))
        .await;
}

#[tokio::test]
async fn transfer_encoding_repeated_with_identity_last_gets_400() {
    let body = format!("0\r\n\r\n{SMUGGLED}");
    assert_malformed_request_refused(&post(
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
        &body,
    ))
    .await;
}

#[tokio::test]
async fn transfer_encoding_repeated_gets_400() {
    let body = format!("0\r\n\r\n{SMUGGLED}");
    assert_malformed_request_refused(&post(
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        &body,
    ))
    .await;
}

/// Leading space or tab before `chunked` is optional whitespace (RFC 9110
/// §5.5), not an obfuscation: the body is chunked, decoded once, and the
/// upstream gets exactly its data, freshly framed.
#[tokio::test]
async fn transfer_encoding_with_leading_whitespace_is_read_as_chunked() {
    let (upstream, proxy) = site(|c| c).await;
    for value in [" chunked", "\tchunked", "  \t chunked"] {
        let bytes = post(
            &format!("Transfer-Encoding:{value}\r\n"),
            "5\r\nhello\r\n0\r\n\r\n",
        );
        let got = exchange(proxy.addr(), &bytes).await;
        assert_eq!(got.status(), 200, "{value:?}: {:?}", got.text());
        let seen = upstream.last();
        assert_eq!(&seen.body[..], b"hello", "{value:?}");
        // Framed afresh by the proxy: its own single `chunked`, nothing of the client's.
        assert_eq!(seen.header_all("transfer-encoding"), vec!["chunked"]);
    }
    assert_eq!(upstream.count(), 3);
}

/// A header line that starts with whitespace continues the previous one
/// (obs-fold): a front end that unfolds it sees `Transfer-Encoding`, one that
/// does not sees none. Never guess.
#[tokio::test]
async fn transfer_encoding_on_a_folded_line_gets_400() {
    for fold in [" ", "\t"] {
        let bytes = post(
            &format!("X-Pad: 1\r\n{fold}Transfer-Encoding: chunked\r\nContent-Length: 5\r\n"),
            "0\r\n\r\n",
        );
        assert_malformed_request_refused(&bytes).await;
    }
}

#[tokio::test]
async fn transfer_encoding_on_http_1_0_gets_400() {
    let bytes = format!(
        "POST / HTTP/1.0\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"
    );
    assert_malformed_request_refused(bytes.as_bytes()).await;
}

#[tokio::test]
async fn conflicting_content_lengths_get_400() {
    let bytes = post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!");
    assert_malformed_request_refused(&bytes).await;
}

#[tokio::test]
async fn content_length_list_gets_400() {
    assert_malformed_request_refused(&post("Content-Length: 5, 5\r\n", "hello")).await;
}

#[tokio::test]
async fn repeated_identical_content_length_gets_400() {
    let bytes = post("Content-Length: 5\r\nContent-Length: 5\r\n", "hello");
    assert_malformed_request_refused(&bytes).await;
}

#[tokio::test]
async fn content_length_with_plus_sign_gets_400() {
    assert_malformed_request_refused(&post("Content-Length: +5\r\n", "hello")).await;
}

#[tokio::test]
async fn content_length_in_hex_gets_400() {
    assert_malformed_request_refused(&post("Content-Length: 0x5\r\n", "hello")).await;
}

#[tokio::test]
async fn content_length_with_inner_space_gets_400() {
    assert_malformed_request_refused(&post("Content-Length: 5 5\r\n", "hello")).await;
}

#[tokio::test]
async fn negative_content_length_gets_400() {
    assert_malformed_request_refused(&post("Content-Length: -1\r\n", "hello")).await;
}

#[tokio::test]
async fn content_length_overflowing_u64_gets_400() {
    assert_malformed_request_refused(&post(
        "Content-Length: 99999999999999999999999\r\n",
        "hello",
    ))
    .await;
}

// ---------------------------------------------------------------------------
// HTTP/1 only: chunked bodies (HTTP/2 has no chunk syntax). The body is
// streamed, so the request head may go upstream before a bad chunk is read
// (today hyper's client holds the head back until the first chunk, so a bad
// first chunk sends nothing): the upstream must never receive a complete
// request, nor the bytes after it.
// ---------------------------------------------------------------------------

/// Sends a chunked POST whose body is `chunks` and checks: the client gets
/// `400` and a closed connection; the upstream never gets a complete request
/// nor the bytes after the bad chunk.
async fn assert_bad_chunked_body_refused(chunks: &str) {
    let upstream = RawUpstream::ok().await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let bytes = post(
        "Transfer-Encoding: chunked\r\n",
        &format!("{chunks}0\r\n\r\n{SMUGGLED}"),
    );
    let got = exchange(proxy.addr(), &bytes).await;
    assert!(
        !upstream
            .wait_for_requests(1, Duration::from_millis(200))
            .await,
        "the upstream got a complete request: {:?}",
        upstream.text()
    );
    assert!(
        !upstream.text().contains("/smuggled"),
        "bytes after the bad chunk went upstream: {:?}",
        upstream.text()
    );
    assert_refused(&got, 400);
}

#[tokio::test]
async fn chunk_size_not_hex_gets_400() {
    assert_bad_chunked_body_refused("zz\r\nhello\r\n").await;
}

#[tokio::test]
async fn chunk_size_overflowing_u64_gets_400() {
    assert_bad_chunked_body_refused("1ffffffffffffffff\r\nhello\r\n").await;
}

#[tokio::test]
async fn chunk_size_with_leading_plus_gets_400() {
    assert_bad_chunked_body_refused("+5\r\nhello\r\n").await;
}

#[tokio::test]
async fn chunk_extension_with_bare_lf_gets_400() {
    assert_bad_chunked_body_refused("5;ext=1\nhello\r\n").await;
}

#[tokio::test]
async fn chunk_data_longer_than_its_size_gets_400() {
    assert_bad_chunked_body_refused("3\r\nhello\r\n").await;
}

#[tokio::test]
async fn chunk_size_line_ending_in_bare_lf_gets_400() {
    assert_bad_chunked_body_refused("5\nhello\r\n").await;
}

/// What holds for every broken chunked body today: the upstream never gets
/// a complete request, nothing after the bad chunk goes upstream, the client
/// gets an error status, and the connection is closed.
#[tokio::test]
async fn bad_chunked_bodies_never_complete_a_request_upstream() {
    for chunks in [
        "zz\r\nhello\r\n",
        "1ffffffffffffffff\r\nhello\r\n",
        "+5\r\nhello\r\n",
        "5;ext=1\nhello\r\n",
        "3\r\nhello\r\n",
        "5\nhello\r\n",
    ] {
        let upstream = RawUpstream::ok().await;
        let proxy = Proxy::start(config(&upstream.url())).await;
        let bytes = post(
            "Transfer-Encoding: chunked\r\n",
            &format!("{chunks}0\r\n\r\n{SMUGGLED}"),
        );
        let got = exchange(proxy.addr(), &bytes).await;
        assert!(
            !upstream
                .wait_for_requests(1, Duration::from_millis(200))
                .await,
            "{chunks:?}: the upstream got a complete request: {:?}",
            upstream.text()
        );
        assert!(
            !upstream.text().contains("/smuggled"),
            "{chunks:?}: {:?}",
            upstream.text()
        );
        let status = got.status();
        assert!(
            status == 400 || status == 502,
            "{chunks:?}: the client got {:?}",
            got.text()
        );
        assert!(got.closed, "{chunks:?}: connection left open");
    }
}

/// Extensions are legal and ignored; they never reach the upstream.
#[tokio::test]
async fn chunk_extensions_are_dropped_not_forwarded() {
    let upstream = RawUpstream::ok().await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let bytes = post(
        "Transfer-Encoding: chunked\r\n",
        "5;name=\"x-session-id\";evil\r\nhello\r\n0;last\r\n\r\n",
    );
    let got = exchange(proxy.addr(), &bytes).await;
    assert_eq!(got.status(), 200, "{:?}", got.text());
    assert!(upstream.wait_for_requests(1, PATIENCE).await);
    let forwarded = upstream.text();
    assert!(forwarded.contains("hello"), "{forwarded:?}");
    assert!(
        !forwarded.contains("evil") && !forwarded.contains("last"),
        "a chunk extension went upstream: {forwarded:?}"
    );
}

// ---------------------------------------------------------------------------
// HTTP/1 only: the request head as bytes (line ends, whitespace, folding).
// HTTP/2 carries each field as a length-prefixed string.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn bare_lf_line_endings_get_400() {
    let bytes = format!("GET / HTTP/1.1\nHost: example.test\nX-A: 1\n\n{SMUGGLED}");
    assert_malformed_request_refused(bytes.as_bytes()).await;
}

/// What holds for bare-LF heads today: the request is read the way a strict
/// server would read the CRLF version of it, and is re-framed with CRLF.
#[tokio::test]
async fn bare_lf_line_endings_are_normalised_never_passed_through() {
    let upstream = RawUpstream::ok().await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let bytes = "GET /lf HTTP/1.1\nHost: example.test\nX-A: 1\n\n";
    let got = exchange(proxy.addr(), bytes.as_bytes()).await;
    assert!(matches!(got.status(), 200 | 400), "{:?}", got.text());
    if got.status() == 200 {
        assert!(upstream.wait_for_requests(1, PATIENCE).await);
        let forwarded = upstream.requests().remove(0);
        let head = &forwarded[..head_end(&forwarded).expect("a CRLF head")];
        for (i, &b) in head.iter().enumerate() {
            if b == b'\n' {
                assert_eq!(head[i - 1], b'\r', "bare LF forwarded: {head:?}");
            }
        }
    }
}

#[tokio::test]
async fn bare_cr_line_endings_get_400() {
    assert_malformed_request_refused(b"GET / HTTP/1.1\rHost: example.test\r\r").await;
}

#[tokio::test]
async fn space_before_colon_in_header_name_gets_400() {
    for name in [
        "Transfer-Encoding : chunked",
        "Content-Length :5",
        "X-A\t: 1",
    ] {
        let bytes = post(&format!("{name}\r\n"), "hello");
        assert_malformed_request_refused(&bytes).await;
    }
}

#[tokio::test]
async fn obs_fold_header_line_gets_400() {
    let bytes = "GET / HTTP/1.1\r\nHost: example.test\r\nX-A: first\r\n  continued\r\n\r\n";
    assert_malformed_request_refused(bytes.as_bytes()).await;
}

// ---------------------------------------------------------------------------
// Every protocol: header fields and targets no client library would send,
// and session headers from the client.
// ---------------------------------------------------------------------------

async fn nul_in_header_value_is_refused(p: Protocol) {
    assert_get_refused(p, &[(b"x-note", b"a\0b")], Refusal::Malformed, "NUL").await;
}

/// A CR (or, over HTTP/2, a CRLF or LF) in a value would start a line of the
/// client's choosing in the request to the upstream.
async fn cr_in_header_value_is_refused(p: Protocol) {
    let mut values = vec![&b"a\rx-session-id: spoofed"[..]];
    if p != Protocol::Http1 {
        // Over HTTP/1.1 these end the line: a header of their own, not a value.
        values.extend([
            &b"a\r\nx-session-id: spoofed"[..],
            b"a\nx-session-id: spoofed",
        ]);
    }
    for value in values {
        let case = format!("{:?}", String::from_utf8_lossy(value));
        assert_get_refused(p, &[(b"x-note", value)], Refusal::Malformed, &case).await;
    }
}

/// HTTP/2 lets a header name hold bytes no HTTP/1 name may (`"`, `(`, `@`...);
/// forwarded as they are, the upstream would read a line the proxy did not
/// mean. Found by the h1_request_diff fuzz target. Over HTTP/1.1 they are
/// malformed.
async fn non_token_header_name_is_refused(p: Protocol) {
    for name in ["x\"session", "content-le\"gth", "x(y)", "a@b", "x{}"] {
        let field = (name.as_bytes(), &b"1"[..]);
        assert_get_refused(p, &[field], Refusal::BadRequestOrMalformed, name).await;
    }
}

/// A space in the target (`:path` over HTTP/2) splits a request line in two.
async fn space_in_request_target_is_refused(p: Protocol) {
    let send = async |conn: &mut RawConn| conn.request("GET", "/a b", &[], None).await;
    assert_refused_over(p, |c| c, send, Refusal::BadRequestOrMalformed, "/a b").await;
}

/// A request that names two different hosts (two `Host` lines over HTTP/1.1,
/// RFC 9112 §3.2; a `host` beside a different `:authority` over HTTP/2, RFC
/// 9113 §8.3.1) names two sites to two readers: `400`, and nothing reaches
/// the upstream, whether the upstream would be told the client's host or not.
async fn second_host_disagreeing_is_refused(p: Protocol) {
    for preserve_host in ["false", "true"] {
        let change = |c: ConfigYaml| c.set("upstream.preserve_host", preserve_host);
        let host: (&[u8], &[u8]) = (b"host", b"evil.example");
        let send = async |conn: &mut RawConn| conn.request("GET", "/h2", &[host], None).await;
        let case = format!("preserve_host {preserve_host}");
        assert_refused_over(p, change, send, Refusal::Status(400), &case).await;
    }
}

/// Session headers spelled with `_` for `-` (which CGI, PHP, WSGI and Rack
/// read as the same name) and write-back headers sent by the client: none
/// reaches the upstream, and none is applied to the session.
async fn forged_session_headers_in_any_spelling_never_reach_the_upstream(p: Protocol) {
    let (upstream, proxy) = protocol_site(p, |c| c).await;
    let browser = p.browser();
    browser.get(&proxy.url("/")).await;
    let id = upstream.last().expect_session_id();

    let forged = [
        ("x_session_id", "forged-id"),
        ("x-session_data", "role=forged"),
        ("x_session_new", "true"),
        ("x-session-set", "role=admin"),
        ("x_session_regenerate", "true"),
    ];
    let mut request = browser.request(http::Method::GET, &proxy.url("/forged"));
    for (name, value) in forged {
        request = request.header(name, value);
    }
    let response = browser.send(request).await;
    assert_eq!(response.status(), 200, "[{p}]");
    assert!(p.session_set_cookie(response.headers()).is_none(), "[{p}]");

    let seen = upstream.last();
    assert_eq!(seen.uri.path(), "/forged");
    let names: Vec<String> = seen.headers.keys().map(|n| n.to_string()).collect();
    assert!(
        !names.is_empty(),
        "[{p}] the upstream got no headers at all"
    );
    let leaked: Vec<&String> = names
        .iter()
        .filter(|n| n.replace('_', "-").starts_with("x-session-") && *n != "x-session-id")
        .collect();
    assert!(
        leaked.is_empty(),
        "[{p}] forged headers went upstream: {leaked:?}"
    );
    assert_eq!(seen.expect_session_id(), id, "[{p}]");
    browser.get(&proxy.url("/check")).await;
    assert_eq!(
        upstream.last().session_data(),
        None,
        "[{p}] a client write was applied"
    );
}

// ---------------------------------------------------------------------------
// Every protocol: header limits. Over HTTP/2, h2 itself answers a header
// list over the limit with `431` and then refuses the stream.
// ---------------------------------------------------------------------------

async fn oversized_headers_get_431(p: Protocol) {
    let change = |c: ConfigYaml| c.set("limits.max_header_bytes", "8192");
    let big = "a".repeat(16 * 1024);
    let field: (&[u8], &[u8]) = (b"x-big", big.as_bytes());
    let send = async |conn: &mut RawConn| conn.request("GET", "/", &[field], None).await;
    assert_refused_over(p, change, send, Refusal::Status(431), "16 KiB header").await;
}

async fn many_small_headers_over_the_limit_get_431(p: Protocol) {
    let change = |c: ConfigYaml| c.set("limits.max_header_bytes", "8192");
    let names: Vec<String> = (0..90).map(|i| format!("x-h{i}")).collect();
    let value = "b".repeat(120);
    let fields: Vec<(&[u8], &[u8])> = names
        .iter()
        .map(|n| (n.as_bytes(), value.as_bytes()))
        .collect();
    let size: usize = fields.iter().map(|(n, v)| n.len() + v.len()).sum();
    assert!(size > 8192, "{size} bytes are not over the limit");
    let send = async |conn: &mut RawConn| conn.request("GET", "/", &fields, None).await;
    assert_refused_over(p, change, send, Refusal::Status(431), "90 headers").await;
}

// ---------------------------------------------------------------------------
// HTTP/1 only: slow and silent heads, and the plain listener before its
// first request. An HTTP/2 head is a frame; before the first bytes no
// protocol is chosen (and TLS has a handshake timeout of its own).
// ---------------------------------------------------------------------------

/// Headers dribbled one byte at a time, never finished: cut off after
/// `limits.header_read_timeout`, nothing forwarded.
#[tokio::test]
async fn slowloris_headers_are_cut_off_after_header_read_timeout() {
    let (upstream, proxy) = site(|c| c.set("limits.header_read_timeout", "1s")).await;
    let mut client = RawClient::connect(proxy.addr()).await;
    client
        .send(b"GET / HTTP/1.1\r\nHost: example.test\r\n")
        .await;
    let started = std::time::Instant::now();
    let mut cut_off = false;
    // Bounded: one byte every 100 ms for at most 6 s.
    for byte in b"X-Slow: ".iter().chain([b'a'; 52].iter()).cycle().take(60) {
        if !client.send(&[*byte]).await || client.wait_closed(Duration::from_millis(100)).await {
            cut_off = true;
            break;
        }
    }
    let took = started.elapsed();
    assert!(
        cut_off,
        "the slow client was still connected after {took:?}"
    );
    assert!(took < Duration::from_secs(4), "cut off only after {took:?}");
    let got = client.exchange();
    assert!(
        got.responses.iter().all(|r| r.status == 408),
        "the slow client got {:?}",
        got.text()
    );
    assert_upstream_saw_nothing(&upstream);
}

/// A connection that never sends a byte holds a slot of
/// `limits.max_connections`; it must be closed like a slow one.
#[tokio::test]
async fn silent_connection_is_closed_after_header_read_timeout() {
    let (upstream, proxy) = site(|c| c.set("limits.header_read_timeout", "1s")).await;
    let mut client = RawClient::connect(proxy.addr()).await;
    assert!(
        client.wait_closed(Duration::from_secs(4)).await,
        "a connection that sent nothing is still open after 4 s"
    );
    assert_upstream_saw_nothing(&upstream);
}

/// Half an HTTP/2 preface, then silence: the same slot-holding trick.
#[tokio::test]
async fn partial_h2_preface_is_closed_after_header_read_timeout() {
    let (upstream, proxy) = site(|c| c.set("limits.header_read_timeout", "1s")).await;
    let mut client = RawClient::connect(proxy.addr()).await;
    client.send(&H2_PREFACE[..10]).await;
    assert!(
        client.wait_closed(Duration::from_secs(4)).await,
        "a connection that sent half a preface is still open after 4 s"
    );
    assert_upstream_saw_nothing(&upstream);
}

// ---------------------------------------------------------------------------
// Every protocol: request bodies, too slow, too big, or with trailers.
// ---------------------------------------------------------------------------

/// Slow POST: the headers arrive, then the body stalls. After
/// `limits.client_body_timeout` without a body byte the client gets 408 (and
/// over HTTP/1.1 the connection closes), instead of holding a connection to
/// the upstream for `upstream.timeout`.
async fn slow_post_body_is_cut_off_after_client_body_timeout(p: Protocol) {
    let (upstream, proxy) = protocol_site(p, |c| c.set("limits.client_body_timeout", "1s")).await;
    let mut conn = proxy.raw().await;
    conn.head("POST", "/upload", &[], RawBody::Declared(100))
        .await;
    conn.body(b"0123456789", false).await;
    let started = std::time::Instant::now();
    let got = conn.answer_within(Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert_eq!(
        got.statuses,
        vec![408],
        "[{p}] after {took:?}: {}",
        got.trace
    );
    assert!(
        took >= Duration::from_millis(900),
        "[{p}] cut off too early: {took:?}"
    );
    if p == Protocol::Http1 {
        assert!(
            got.closed,
            "[{p}] a stalled body still holds the connection"
        );
    } else {
        assert_next_request_served(&mut conn, &upstream, "after 408").await;
    }
}

async fn declared_body_over_max_body_bytes_gets_413(p: Protocol) {
    let change = |c: ConfigYaml| c.set("limits.max_body_bytes", "1024");
    let send = async |conn: &mut RawConn| {
        conn.request("POST", "/submit", &[], Some(&[b'x'; 2048]))
            .await
    };
    assert_refused_over(p, change, send, Refusal::Status(413), "2048 bytes").await;
}

async fn declared_body_of_exactly_max_body_bytes_passes(p: Protocol) {
    let (upstream, proxy) = protocol_site(p, |c| c.set("limits.max_body_bytes", "1024")).await;
    let mut conn = proxy.raw().await;
    let got = conn
        .request("POST", "/submit", &[], Some(&[b'x'; 1024]))
        .await;
    assert_eq!(got.status(), Some(200), "[{p}] {}", got.trace);
    assert_eq!(upstream.last().body_len, 1024, "[{p}]");
}

/// A body of undeclared length (chunked over HTTP/1.1, DATA frames without a
/// `content-length` over HTTP/2) that grows past the limit half-way: the
/// client gets `413` (or the request is cut off), the upstream never more
/// than the limit.
async fn body_growing_past_max_body_bytes_is_cut_off(p: Protocol) {
    let (upstream, proxy) = protocol_site(p, |c| c.set("limits.max_body_bytes", "1024")).await;
    let mut conn = proxy.raw().await;
    conn.head("POST", "/upload", &[], RawBody::Streamed).await;
    // 8 pieces of 512 bytes, a pause between each so they are read apart.
    for _ in 0..8 {
        if !conn.body(&[b'y'; 0x200], false).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    conn.body(b"", true).await;
    let got = conn.answer().await;
    match got.status() {
        Some(status) => assert_eq!(status, 413, "[{p}] {}", got.trace),
        None => assert!(
            got.closed || got.reset.is_some(),
            "[{p}] no answer, and the request was not cut off: {}",
            got.trace
        ),
    }
    assert!(
        !upstream
            .received_body_bytes(1025, Duration::from_millis(300))
            .await,
        "[{p}] the upstream received more than max_body_bytes"
    );
    for seen in upstream.requests() {
        assert!(
            seen.body_len <= 1024,
            "[{p}] upstream got {} bytes",
            seen.body_len
        );
    }
    if p == Protocol::Http1 {
        assert!(got.closed, "[{p}] connection left open: {}", got.trace);
    } else {
        assert_next_request_served(&mut conn, &upstream, "after the cut").await;
    }
}

/// Trailer fields (after the last chunk over HTTP/1.1, a second HEADERS frame
/// over HTTP/2) named like the session headers never reach the upstream.
async fn request_trailers_never_carry_session_headers_upstream(p: Protocol) {
    let upstream = RawUpstream::ok().await;
    let proxy = p.start_proxy(config(&upstream.url())).await;
    let mut conn = proxy.raw().await;
    conn.head(
        "POST",
        "/submit",
        &[
            (b"te", b"trailers"),
            (b"trailer", b"X-Session-Id, X-Session-Data, X-Note"),
        ],
        RawBody::Streamed,
    )
    .await;
    conn.body(b"hello", false).await;
    conn.trailers(&[
        (b"x-session-id", b"spoofed-session"),
        (b"x-session-data", b"role=admin"),
        (b"x-note", b"ok"),
    ])
    .await;
    let got = conn.answer().await;
    assert_eq!(got.status(), Some(200), "[{p}] {}", got.trace);
    assert!(upstream.wait_for_requests(1, PATIENCE).await, "[{p}]");
    let forwarded = upstream.text();
    assert!(forwarded.contains("hello"), "[{p}] {forwarded:?}");
    assert!(
        !forwarded.contains("spoofed-session") && !forwarded.contains("role=admin"),
        "[{p}] a session trailer reached the upstream: {forwarded:?}"
    );
    let lower = forwarded.to_ascii_lowercase();
    assert_eq!(
        lower.matches("x-session-id:").count(),
        1,
        "[{p}] exactly the proxy's own X-Session-Id: {forwarded:?}"
    );
}

// ---------------------------------------------------------------------------
// HTTP/2 only (h2c and h2 over TLS): what HTTP/2 itself forbids, with frames
// written by hand so that a request a well-behaved library refuses to send
// can be sent. A malformed request (RFC 9113 §8.1.1) is refused with a
// PROTOCOL_ERROR, nothing of it reaches the upstream, and the proxy serves
// the next request (on the same connection unless it sent GOAWAY).
// ---------------------------------------------------------------------------

/// Sends exactly `fields` as a request without a body on a fresh proxy, and
/// checks it is refused as malformed.
async fn assert_h2_fields_refused(p: Protocol, fields: &[(&[u8], &[u8])], case: &str) {
    let send = async |conn: &mut RawConn| {
        conn.h2_head(fields, RawBody::None).await;
        conn.answer().await
    };
    assert_refused_over(p, |c| c, send, Refusal::Malformed, case).await;
}

/// The hand-written frames are understood: a clean request goes through.
async fn h2_hand_written_request_is_served(p: Protocol) {
    let (upstream, proxy) = protocol_site(p, |c| c).await;
    let mut conn = proxy.raw().await;
    let got = conn.get("/h2").await;
    assert_eq!(got.status(), Some(200), "[{p}] {}", got.trace);
    assert_eq!(upstream.last().uri.path(), "/h2", "[{p}]");
}

async fn h2_connection_header_is_refused(p: Protocol) {
    let field: (&[u8], &[u8]) = (b"connection", b"keep-alive");
    assert_get_refused(p, &[field], Refusal::Malformed, "connection").await;
}

async fn h2_transfer_encoding_header_is_refused(p: Protocol) {
    let field: (&[u8], &[u8]) = (b"transfer-encoding", b"chunked");
    assert_get_refused(p, &[field], Refusal::Malformed, "transfer-encoding").await;
}

async fn h2_keep_alive_and_upgrade_headers_are_refused(p: Protocol) {
    for field in [
        (&b"keep-alive"[..], &b"timeout=5"[..]),
        (b"upgrade", b"websocket"),
        (b"proxy-connection", b"keep-alive"),
    ] {
        let case = String::from_utf8_lossy(field.0).into_owned();
        assert_get_refused(p, &[field], Refusal::Malformed, &case).await;
    }
}

/// `te` may only say `trailers` (RFC 9113 §8.2.2), which is served.
async fn h2_te_other_than_trailers_is_refused(p: Protocol) {
    assert_get_refused(p, &[(b"te", b"gzip")], Refusal::Malformed, "te: gzip").await;
    let (_upstream, proxy) = protocol_site(p, |c| c).await;
    let mut conn = proxy.raw().await;
    let got = conn
        .request("GET", "/h2", &[(b"te", b"trailers")], None)
        .await;
    assert_eq!(got.status(), Some(200), "[{p}] te: trailers: {}", got.trace);
}

async fn h2_uppercase_header_name_is_refused(p: Protocol) {
    let field: (&[u8], &[u8]) = (b"X-Session-Id", b"spoofed");
    assert_get_refused(p, &[field], Refusal::Malformed, "X-Session-Id").await;
}

/// Pseudo-header fields come first (RFC 9113 §8.3): one after a regular field
/// could be read by one party as the request's and ignored by another.
async fn h2_pseudo_header_after_a_regular_one_is_refused(p: Protocol) {
    let scheme = p.scheme().as_bytes();
    assert_h2_fields_refused(
        p,
        &[
            (b":method", b"GET"),
            (b":scheme", scheme),
            (b":authority", b"example.test"),
            (b"x-note", b"1"),
            (b":path", b"/h2"),
        ],
        ":path after x-note",
    )
    .await;
}

/// The other pseudo-header sets RFC 9113 §8.3.1 calls malformed.
async fn h2_malformed_pseudo_headers_are_refused(p: Protocol) {
    let scheme = p.scheme().as_bytes();
    let get: [(&[u8], &[u8]); 3] = [
        (b":method", b"GET"),
        (b":scheme", scheme),
        (b":authority", b"example.test"),
    ];
    let with = |extra: &[(&'static [u8], &'static [u8])]| {
        let mut fields = get.to_vec();
        fields.extend_from_slice(extra);
        fields
    };
    for (case, fields) in [
        ("no :path", with(&[])),
        ("empty :path", with(&[(b":path", b"")])),
        (
            "two :path",
            with(&[(b":path", b"/h2"), (b":path", b"/admin")]),
        ),
        (
            "unknown pseudo",
            with(&[(b":path", b"/h2"), (b":x-session-id", b"spoofed")]),
        ),
        (
            "response pseudo",
            with(&[(b":path", b"/h2"), (b":status", b"200")]),
        ),
    ] {
        assert_h2_fields_refused(p, &fields, case).await;
    }
}

/// Without SETTINGS_ENABLE_CONNECT_PROTOCOL from the proxy, a `:protocol`
/// (extended CONNECT, RFC 8441 §4: how a WebSocket opens over HTTP/2) is
/// malformed, and never reaches the upstream.
async fn h2_extended_connect_is_refused(p: Protocol) {
    let scheme = p.scheme().as_bytes();
    assert_h2_fields_refused(
        p,
        &[
            (b":method", b"CONNECT"),
            (b":protocol", b"websocket"),
            (b":scheme", scheme),
            (b":authority", b"example.test"),
            (b":path", b"/ws"),
        ],
        "extended CONNECT",
    )
    .await;
}

/// A CONNECT (RFC 9113 §8.5: `:method` and `:authority` only) asks for a
/// tunnel the proxy never opens: `405` (DESIGN.md §9), as over HTTP/1.1.
async fn h2_connect_gets_405(p: Protocol) {
    let send = async |conn: &mut RawConn| {
        let connect: [(&[u8], &[u8]); 2] = [
            (b":method", b"CONNECT"),
            (b":authority", b"example.test:443"),
        ];
        conn.h2_head(&connect, RawBody::None).await;
        conn.answer().await
    };
    assert_refused_over(p, |c| c, send, Refusal::Status(405), "CONNECT").await;
}

/// `host` equal to `:authority` (in any case) is fine; `:authority` names the
/// host.
async fn h2_host_equal_to_authority_is_served(p: Protocol) {
    let (upstream, proxy) = protocol_site(p, |c| c.set("upstream.preserve_host", "true")).await;
    let mut conn = proxy.raw().await;
    conn.h2_head(
        &[
            (b":method", b"GET"),
            (b":scheme", p.scheme().as_bytes()),
            (b":authority", b"good.example"),
            (b":path", b"/h2"),
            (b"host", b"GOOD.example"),
        ],
        RawBody::None,
    )
    .await;
    let got = conn.answer().await;
    assert_eq!(got.status(), Some(200), "[{p}] {}", got.trace);
    let seen = upstream.last();
    assert_eq!(seen.header("host"), Some("good.example"), "[{p}]");
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some("good.example"),
        "[{p}]"
    );
}

/// A client that resets its stream half-way through an upload, after the
/// request went upstream: the upstream connection carrying the cut request
/// is never reused for the next one (whose bytes would be read as the rest of
/// the first body). The next request on the same client connection is served
/// whole.
async fn h2_reset_mid_upload_leaves_the_next_request_whole(p: Protocol) {
    let (upstream, proxy) = protocol_site(p, |c| c).await;
    let mut conn = proxy.raw().await;
    conn.head("POST", "/upload", &[], RawBody::Declared(100))
        .await;
    conn.body(b"0123456789", false).await;
    upstream.wait_for_arrivals(1).await;
    conn.reset_stream(CANCEL).await;

    conn.head("POST", "/after", &[], RawBody::Declared(5)).await;
    conn.body(b"hello", true).await;
    let got = conn.answer().await;
    assert_eq!(got.status(), Some(200), "[{p}] {}", got.trace);
    let requests = upstream.requests();
    let after: Vec<&Seen> = requests
        .iter()
        .filter(|s| s.uri.path() == "/after")
        .collect();
    assert_eq!(after.len(), 1, "[{p}] {requests:?}");
    assert_eq!(&after[0].body[..], b"hello", "[{p}]");
    for seen in &requests {
        assert!(
            seen.uri.path() != "/upload" || seen.body_len < 100,
            "[{p}] the cut upload reached the upstream whole: {seen:?}"
        );
    }
}

/// The proxy allows at most 256 concurrent streams per HTTP/2 connection
/// (README, Hostile input), and says how many in its SETTINGS. A client that
/// opens more at once gets the extra ones refused with REFUSED_STREAM (safe
/// to retry: RFC 9113 §8.7), none of which reaches the upstream; every stream
/// within the limit is served, and the connection goes on.
async fn h2_streams_over_the_concurrency_limit_are_refused(p: Protocol) {
    // Slow answers keep every accepted stream open while the rest arrive.
    let upstream = Upstream::start(|_| Reply::ok().after(Duration::from_millis(1500))).await;
    let proxy = p.start_proxy(config(&upstream.url())).await;
    let mut conn = proxy.raw_h2().await;
    let limit = conn
        .server_setting(SETTINGS_MAX_CONCURRENT_STREAMS)
        .await
        .unwrap_or_else(|| panic!("[{p}] the proxy advertises no stream limit"));
    assert!((1..=256).contains(&limit), "[{p}] {limit} streams allowed");
    let paths: Vec<String> = (0..limit + 4).map(|i| format!("/s{i}")).collect();
    let mut streams = Vec::new();
    for path in &paths {
        let stream = conn.new_stream();
        assert!(
            conn.headers(stream, &p.h2_fields("GET", path), true).await,
            "[{p}] the proxy closed the connection"
        );
        streams.push(stream);
    }
    let (mut served, mut refused) = (0, 0);
    for stream in streams {
        let got = conn.outcome(stream).await;
        match (got.status(), got.reset_code()) {
            (Some(200), None) => served += 1,
            (None, Some(REFUSED_STREAM)) => refused += 1,
            _ => panic!("[{p}] stream {stream}: {}", got.describe()),
        }
    }
    assert_eq!((served, refused), (limit, 4), "[{p}]");
    assert_eq!(upstream.count(), limit as usize, "[{p}]");
    let next = conn.request(&p.h2_fields("GET", "/next")).await;
    assert_eq!(next.status(), Some(200), "[{p}] {}", next.describe());
}

// ---------------------------------------------------------------------------
// HTTP/1 only: the absolute-form request target, which HTTP/2 does not have
// (`:authority` names the host; a `host` beside it must agree, above).
// ---------------------------------------------------------------------------

/// In HTTP/1, an absolute-form target names the host; `Host` is ignored.
#[tokio::test]
async fn absolute_form_target_wins_over_host() {
    let (upstream, proxy) = site(|c| c).await;
    let got = exchange(
        proxy.addr(),
        b"GET http://good.example/abs HTTP/1.1\r\nHost: evil.example\r\n\r\n",
    )
    .await;
    assert_eq!(got.status(), 200, "{:?}", got.text());
    let seen = upstream.last();
    assert_eq!(seen.uri.path(), "/abs");
    assert_eq!(seen.header("x-forwarded-host"), Some("good.example"));
}

// ---------------------------------------------------------------------------
// Every protocol: the session cookie, more than once, or too big. The rule:
// the first cookie that names a live session wins; a later one never
// displaces it.
// ---------------------------------------------------------------------------

/// Two live sessions, as `name=value` cookie pairs, with their ids.
async fn two_sessions(p: Protocol, proxy: &ProtocolProxy) -> ((String, String), (String, String)) {
    let mut out = Vec::new();
    for _ in 0..2 {
        let response = p.get_without_cookie(&proxy.url("/")).await;
        let cookie = p.expect_session_cookie(response.headers());
        out.push((cookie.pair(), cookie.id().to_owned()));
    }
    let second = out.pop().unwrap();
    (out.pop().unwrap(), second)
}

/// Sends the Cookie header `cookie` makes of a live session's `name=value`
/// pair and the cookie's name, and checks that the session is kept: the
/// upstream gets its id, the client no new cookie. Returns what the upstream
/// saw.
async fn assert_session_kept(p: Protocol, cookie: impl FnOnce(&str, &str) -> String) -> Seen {
    let (upstream, proxy) = protocol_site(p, |c| c).await;
    let ((pair, id), _) = two_sessions(p, &proxy).await;
    let header = cookie(&pair, &p.cookie_name());
    let response = p.get_with_cookie(&proxy.url("/"), &header).await;
    assert_eq!(response.status(), 200, "[{p}] {header}");
    assert!(
        p.session_set_cookie(response.headers()).is_none(),
        "[{p}] {header}"
    );
    let seen = upstream.last();
    assert_eq!(seen.expect_session_id(), id, "[{p}] {header}");
    assert!(!seen.is_new_session(), "[{p}] {header}");
    seen
}

async fn session_cookie_valid_then_garbage_keeps_the_session(p: Protocol) {
    let seen = assert_session_kept(p, |pair, name| format!("{pair}; {name}=garbage.garbage")).await;
    assert!(seen.cookies().is_empty(), "[{p}] {:?}", seen.cookies());
}

async fn session_cookie_garbage_then_valid_keeps_the_session(p: Protocol) {
    assert_session_kept(p, |pair, name| format!("{name}=garbage.garbage; {pair}")).await;
}

/// Over HTTP/2 the two Cookie header lines are two `cookie` fields, which the
/// proxy joins in order (RFC 9113 §8.2.3).
async fn two_valid_session_cookies_the_first_wins(p: Protocol) {
    let (upstream, proxy) = protocol_site(p, |c| c).await;
    let ((pair_a, id_a), (pair_b, id_b)) = two_sessions(p, &proxy).await;

    p.get_with_cookie(&proxy.url("/"), &format!("{pair_a}; {pair_b}"))
        .await;
    assert_eq!(upstream.last().expect_session_id(), id_a, "[{p}]");
    p.get_with_cookie(&proxy.url("/"), &format!("{pair_b}; {pair_a}"))
        .await;
    assert_eq!(upstream.last().expect_session_id(), id_b, "[{p}]");
    // Split over two Cookie header lines: still in order.
    let response = p
        .send(
            p.plain_client()
                .get(proxy.url("/"))
                .header("cookie", pair_b.clone())
                .header("cookie", pair_a.clone()),
        )
        .await;
    assert!(p.session_set_cookie(response.headers()).is_none(), "[{p}]");
    assert_eq!(upstream.last().expect_session_id(), id_b, "[{p}]");
}

/// A correctly signed cookie for a session that does not exist (expired,
/// destroyed, or never issued) does not displace a live one after it.
async fn signed_cookie_of_a_dead_session_then_a_live_one_keeps_the_live_one(p: Protocol) {
    let dead = signed_cookie_value(&unknown_session_id(), SECRET_A);
    assert_session_kept(p, |pair, name| format!("{name}={dead}; {pair}")).await;
}

async fn oversized_session_cookie_is_ignored_and_a_new_session_issued(p: Protocol) {
    let (upstream, proxy) = protocol_site(p, |c| c).await;
    let huge = "A".repeat(5 * 1024);
    let name = p.cookie_name();
    let response = p
        .get_with_cookie(&proxy.url("/"), &format!("{name}={huge}; theme=dark"))
        .await;
    assert_eq!(response.status(), 200);
    p.expect_session_cookie(response.headers());
    let seen = upstream.last();
    assert!(seen.is_new_session(), "[{p}]");
    assert_eq!(
        seen.cookies(),
        vec![("theme".to_owned(), "dark".to_owned())],
        "[{p}] the oversized session cookie went upstream"
    );
}

async fn oversized_session_cookie_never_displaces_a_valid_one(p: Protocol) {
    let (upstream, proxy) = protocol_site(p, |c| c).await;
    let ((pair, id), _) = two_sessions(p, &proxy).await;
    // A valid tag followed by 4 KiB of padding: never a prefix match.
    let padded = format!("{pair}{}", "A".repeat(4 * 1024));
    for cookie in [format!("{pair}; {padded}"), format!("{padded}; {pair}")] {
        let response = p.get_with_cookie(&proxy.url("/"), &cookie).await;
        assert_eq!(response.status(), 200);
        assert!(p.session_set_cookie(response.headers()).is_none(), "[{p}]");
        assert_eq!(upstream.last().expect_session_id(), id, "[{p}]");
    }
    let response = p.get_with_cookie(&proxy.url("/"), &padded).await;
    p.expect_session_cookie(response.headers());
    assert!(upstream.last().is_new_session(), "[{p}]");
}

// ---------------------------------------------------------------------------
// Every protocol: upstream replies (the upstream speaks HTTP/1.1 whatever
// the client speaks).
// ---------------------------------------------------------------------------

/// What a client got through the proxy.
struct Through {
    status: u16,
    headers: http::HeaderMap,
    /// The body as far as it came.
    body: Vec<u8>,
    /// The body ended cleanly.
    complete: bool,
    /// Everything the client received: over HTTP/1.1 the bytes, over HTTP/2
    /// the fields and the body, as text.
    wire: String,
}

/// `GET /page` over `p` through a fresh proxy in front of an upstream that
/// answers `reply` byte for byte.
async fn reply_through_proxy(p: Protocol, reply: &[u8]) -> (Through, RawUpstream) {
    let upstream = RawUpstream::start(reply).await;
    let proxy = p.start_proxy(config(&upstream.url())).await;
    if p == Protocol::Http1 {
        let got = exchange(
            proxy.addr(),
            b"GET /page HTTP/1.1\r\nHost: example.test\r\n\r\n",
        )
        .await;
        let response = got.response();
        let mut headers = http::HeaderMap::new();
        for (name, value) in &response.headers {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_str(value),
            ) {
                headers.append(name, value);
            }
        }
        let through = Through {
            status: response.status,
            headers,
            body: response.body.clone(),
            complete: true,
            wire: got.text(),
        };
        return (through, upstream);
    }
    let mut response = p.send(p.plain_client().get(proxy.url("/page"))).await;
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    let mut body = Vec::new();
    let complete = loop {
        match tokio::time::timeout(PATIENCE, response.chunk()).await {
            Ok(Ok(Some(chunk))) => body.extend_from_slice(&chunk),
            Ok(Ok(None)) => break true,
            Ok(Err(_)) | Err(_) => break false,
        }
    };
    let wire = format!("{headers:?}\n{}", String::from_utf8_lossy(&body));
    let through = Through {
        status,
        headers,
        body,
        complete,
        wire,
    };
    (through, upstream)
}

/// An upstream that refuses the connection, resets it, or does not answer
/// within `upstream.timeout`: the client gets the proxy's own `502` or `504`,
/// naming no upstream address and setting no session cookie (DESIGN.md §8,
/// §10: a request that fails before a response stores no session), and so
/// does a second request from the same client.
async fn dead_or_silent_upstream_gets_the_proxys_own_error(p: Protocol) {
    let refused = refused_addr();
    let resetting = ResettingUpstream::start().await;
    let silent = Upstream::start(|_| Reply::ok().after(Duration::from_secs(5))).await;
    for (addr, status) in [
        (refused, 502),
        (resetting.addr(), 502),
        (silent.addr(), 504),
    ] {
        let url = format!("http://{addr}");
        let proxy = p
            .start_proxy(config(&url).set("upstream.timeout", "500ms"))
            .await;
        let client = p.plain_client();
        for attempt in 1..=2 {
            let response = p.send(client.get(proxy.url("/"))).await;
            let case = format!("[{p}] {url}, request {attempt}");
            assert_eq!(response.status(), status, "{case}");
            assert!(p.session_set_cookie(response.headers()).is_none(), "{case}");
            let body = response.text().await.expect("body");
            assert!(
                !body.contains("127.0.0.1") && !body.contains(&addr.port().to_string()),
                "{case}: {body:?} names the upstream"
            );
        }
    }
}

/// The upstream's `reply` reaches the client as the proxy's own `502`.
async fn assert_reply_gets_502(p: Protocol, reply: &[u8]) -> Through {
    let (got, _upstream) = reply_through_proxy(p, reply).await;
    assert_eq!(got.status, 502, "[{p}] {:?}", got.wire);
    got
}

async fn upstream_malformed_status_line_gets_502(p: Protocol) {
    for reply in [
        &b"HTTP/1.1 2OO OK\r\ncontent-length: 2\r\n\r\nok"[..],
        b"HTTP/1.1 99999 OK\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/9.9 200 OK\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1200 OK\r\ncontent-length: 2\r\n\r\nok",
        b"garbage\r\n\r\n",
    ] {
        let (got, upstream) = reply_through_proxy(p, reply).await;
        assert_eq!(
            got.status,
            502,
            "[{p}] {:?} -> {:?}",
            String::from_utf8_lossy(reply),
            got.wire
        );
        assert_eq!(upstream.requests().len(), 1, "[{p}]");
        assert!(!got.wire.contains("garbage"), "[{p}]");
    }
}

/// Two upstream replies with Content-Length beside Transfer-Encoding.
const CL_TE_REPLIES: [&[u8]; 2] = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n\
5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n\
2d\r\nokHTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsmuggle\r\n0\r\n\r\n",
];

async fn upstream_content_length_with_transfer_encoding_gets_502(p: Protocol) {
    assert_reply_gets_502(p, CL_TE_REPLIES[0]).await;
}

/// What holds for a CL+TE upstream reply today: hyper reads the body as
/// chunked and the proxy keeps the upstream's Content-Length, but the client
/// never gets a byte past that length (no second response can be spliced in)
/// and a body shorter than it never ends as if complete (over HTTP/1.1 the
/// connection is closed; over HTTP/2 the stream does not end cleanly).
async fn upstream_content_length_with_transfer_encoding_never_splits_the_response(p: Protocol) {
    for reply in CL_TE_REPLIES {
        if p != Protocol::Http1 {
            let (got, _upstream) = reply_through_proxy(p, reply).await;
            assert!(
                got.headers.get("transfer-encoding").is_none(),
                "[{p}] {:?}",
                got.headers
            );
            assert!(!got.wire.contains("smuggle"), "[{p}] {:?}", got.wire);
            if let Some(declared) = got.headers.get("content-length") {
                let declared: usize = declared.to_str().unwrap().parse().unwrap();
                assert!(got.body.len() <= declared, "[{p}] {:?}", got.wire);
                assert!(
                    got.body.len() == declared || !got.complete,
                    "[{p}] a short body ended as if complete: {:?}",
                    got.wire
                );
            }
            continue;
        }
        let upstream = RawUpstream::start(reply).await;
        let proxy = Proxy::start(config(&upstream.url())).await;
        let mut client = RawClient::connect(proxy.addr()).await;
        client
            .send(b"GET /page HTTP/1.1\r\nHost: example.test\r\n\r\n")
            .await;
        client.wait_closed(Duration::from_secs(1)).await;
        let got = client.exchange();
        let end = head_end(&got.received).expect("no response head");
        let head = String::from_utf8_lossy(&got.received[..end]).to_ascii_lowercase();
        let declared: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().expect("Content-Length"))
            .expect("a Content-Length");
        let body = got.received.len() - end;
        assert!(
            body <= declared,
            "bytes past Content-Length reached the client: {:?}",
            got.text()
        );
        assert!(
            body == declared || got.closed,
            "short body on an open connection: {:?}",
            got.text()
        );
        assert!(!got.text().contains("smuggle"), "{:?}", got.text());
        assert!(!head.contains("transfer-encoding"), "{head:?}");
    }
}

async fn upstream_conflicting_content_lengths_get_502(p: Protocol) {
    assert_reply_gets_502(
        p,
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
    )
    .await;
}

async fn upstream_malformed_content_length_gets_502(p: Protocol) {
    assert_reply_gets_502(p, b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok").await;
}

async fn upstream_obs_fold_header_gets_502_or_is_unfolded(p: Protocol) {
    let (got, _upstream) = reply_through_proxy(
        p,
        b"HTTP/1.1 200 OK\r\nX-A: one\r\n two\r\ncontent-length: 2\r\n\r\nok",
    )
    .await;
    assert!(
        got.status == 502 || got.status == 200,
        "[{p}] {:?}",
        got.wire
    );
    assert!(
        !got.wire.contains("\r\n two"),
        "[{p}] a folded line reached the client"
    );
    for value in got.headers.get_all("x-a") {
        assert!(
            !value.as_bytes().iter().any(|b| matches!(b, b'\r' | b'\n')),
            "[{p}] a folded line reached the client: {value:?}"
        );
    }
}

async fn upstream_nul_in_header_gets_502(p: Protocol) {
    assert_reply_gets_502(
        p,
        b"HTTP/1.1 200 OK\r\nX-A: a\0b\r\ncontent-length: 2\r\n\r\nok",
    )
    .await;
}

async fn upstream_101_to_a_plain_request_gets_502(p: Protocol) {
    let got = assert_reply_gets_502(p, b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nTUNNEL-MARKER").await;
    assert!(!got.wire.contains("TUNNEL-MARKER"), "[{p}]");
}

// ---------------------------------------------------------------------------
// Every protocol: write-back from the upstream, refused whole; the session
// keeps its data, and none of it reaches the client.
// ---------------------------------------------------------------------------

/// Logs in (`user=alice`), sends one request the upstream answers with
/// `attack`, then reads the session back. Returns the attack's response and
/// the data the upstream saw afterwards.
async fn write_back_attack(
    p: Protocol,
    attack: fn() -> Reply,
) -> (
    reqwest::StatusCode,
    http::HeaderMap,
    std::collections::BTreeMap<String, String>,
) {
    let upstream = Upstream::start(move |req| match req.uri.path() {
        "/login" => Reply::ok().session_set("user=alice&role=member"),
        "/attack" => attack(),
        _ => Reply::ok(),
    })
    .await;
    let proxy = p.start_proxy(config(&upstream.url())).await;
    let browser = p.browser();
    browser.get(&proxy.url("/login")).await;
    let response = browser.get(&proxy.url("/attack")).await;
    let status = response.status();
    let headers = response.headers().clone();
    browser.get(&proxy.url("/check")).await;
    let after = upstream.last();
    assert_eq!(after.uri.path(), "/check");
    (status, headers, after.data())
}

fn alice() -> std::collections::BTreeMap<String, String> {
    [("role", "member"), ("user", "alice")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[track_caller]
fn assert_no_write_back_leaked(p: Protocol, headers: &http::HeaderMap) {
    let leaked = header_names_with_prefix(headers, "x-session-");
    assert!(
        leaked.is_empty(),
        "[{p}] write-back reached the client: {leaked:?}"
    );
    assert!(
        p.session_set_cookie(headers).is_none(),
        "[{p}] a refused write changed the cookie"
    );
}

async fn session_set_repeated_1000_times_is_refused(p: Protocol) {
    let (status, headers, data) = write_back_attack(p, || {
        (0..1000).fold(Reply::ok(), |r, i| {
            r.session_set(&format!("user=mallory&k{i}=v"))
        })
    })
    .await;
    // Today hyper's client refuses a reply with over 100 header lines (502). A
    // proxy that read them all must still refuse the write (too many keys).
    assert!(status == 502 || status == 200, "[{p}] {status}");
    assert_no_write_back_leaked(p, &headers);
    assert_eq!(data, alice(), "[{p}]");
}

async fn session_set_touching_more_keys_than_allowed_is_refused(p: Protocol) {
    // 90 header lines (under hyper's 100), 270 keys (over the proxy's 256).
    let (status, headers, data) = write_back_attack(p, || {
        (0..90).fold(Reply::ok(), |r, i| {
            r.session_set(&format!("user=mallory&a{i}=1&b{i}=2"))
        })
    })
    .await;
    assert_eq!(status, 200, "[{p}]");
    assert_no_write_back_leaked(p, &headers);
    assert_eq!(data, alice(), "[{p}]");
}

async fn session_set_of_200_kib_is_refused(p: Protocol) {
    let (status, headers, data) = write_back_attack(p, || {
        Reply::ok().session_set(&format!("user=mallory&blob={}", "z".repeat(200 * 1024)))
    })
    .await;
    // Read whole (hyper's client takes heads up to ~400 KiB), refused by
    // session.max_data_bytes.
    assert_eq!(status, 200, "[{p}]");
    assert_no_write_back_leaked(p, &headers);
    assert_eq!(data, alice(), "[{p}]");
}

async fn session_set_with_encoded_nul_is_refused(p: Protocol) {
    let (status, headers, data) =
        write_back_attack(p, || Reply::ok().session_set("user=mallory&x=a%00b")).await;
    assert_eq!(status, 200, "[{p}]");
    assert_no_write_back_leaked(p, &headers);
    assert_eq!(data, alice(), "[{p}]");
}

async fn session_set_with_encoded_crlf_is_refused(p: Protocol) {
    let (status, headers, data) = write_back_attack(p, || {
        Reply::ok().session_set("user=mallory%0D%0ASet-Cookie:%20sessiongate=x")
    })
    .await;
    assert_eq!(status, 200, "[{p}]");
    assert_no_write_back_leaked(p, &headers);
    assert_eq!(data, alice(), "[{p}]");
}

async fn session_set_with_invalid_percent_encoding_is_refused(p: Protocol) {
    for attack in [
        (|| Reply::ok().session_set("user=mallory&x=%zz")) as fn() -> Reply,
        || Reply::ok().session_set("user=mallory&x=%4"),
        || Reply::ok().session_set("user=mallory&x=%"),
        || Reply::ok().session_set("user=mallory&x=%C3%28"),
        || Reply::ok().session_set("user=mallory&x=%FF"),
    ] {
        let (status, headers, data) = write_back_attack(p, attack).await;
        assert_eq!(status, 200, "[{p}]");
        assert_no_write_back_leaked(p, &headers);
        assert_eq!(data, alice(), "[{p}]");
    }
}

async fn one_bad_set_header_refuses_the_good_ones_beside_it(p: Protocol) {
    let (status, headers, data) = write_back_attack(p, || {
        Reply::ok()
            .session_set("user=mallory")
            .session_set("x=%zz")
            .session_remove("role")
    })
    .await;
    assert_eq!(status, 200, "[{p}]");
    assert_no_write_back_leaked(p, &headers);
    assert_eq!(data, alice(), "[{p}]");
}

async fn session_remove_with_bad_encoding_is_refused(p: Protocol) {
    let (status, headers, data) =
        write_back_attack(p, || Reply::ok().session_remove("role, %zz")).await;
    assert_eq!(status, 200, "[{p}]");
    assert_no_write_back_leaked(p, &headers);
    assert_eq!(data, alice(), "[{p}]");
}

// ---------------------------------------------------------------------------
// HTTP/1 only: WebSocket and other upgrades. HTTP/2 has no `Upgrade` (RFC
// 9113 §8.6); its extended CONNECT is refused in the HTTP/2 section above.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn websocket_tunnel_carries_the_session_and_strips_spoofed_headers() {
    let upstream = Upstream::start(websocket_app).await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let issued = expect_session_cookie(get_without_cookie(&proxy.url("/")).await.headers());
    let mut handshake = format!("ws://{}/ws", proxy.addr())
        .into_client_request()
        .unwrap();
    let h = handshake.headers_mut();
    h.insert("cookie", issued.pair().parse().unwrap());
    h.insert("x-session-id", "spoofed-session".parse().unwrap());
    h.insert("x-session-new", "true".parse().unwrap());
    h.insert("x-session-data", "role=admin".parse().unwrap());
    h.insert("x-session-set", "role=admin".parse().unwrap());

    let (mut socket, response) =
        tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(handshake))
            .await
            .expect("handshake timed out")
            .expect("handshake failed");

    assert_eq!(response.status(), 101);
    assert!(header_names_with_prefix(response.headers(), "x-session-").is_empty());
    let seen = upstream.last();
    assert_eq!(seen.expect_session_id(), issued.id());
    assert!(!seen.is_new_session());
    assert_eq!(seen.session_data(), None);
    assert_eq!(seen.session_header_names(), vec!["x-session-id".to_owned()]);
    assert!(seen.cookies().is_empty(), "{:?}", seen.cookies());

    for message in [
        Message::text("hello"),
        Message::binary(vec![0u8, 1, 2, 255]),
        Message::binary(pattern(0, 60 * 1024).to_vec()),
    ] {
        socket.send(message.clone()).await.unwrap();
        let echoed = tokio::time::timeout(PATIENCE, socket.next())
            .await
            .expect("no echo")
            .expect("tunnel closed")
            .expect("tunnel error");
        assert_eq!(echoed, message);
    }
    socket.close(None).await.unwrap();
}

/// An upstream that answers an Upgrade with `200`: no tunnel. Bytes the
/// client sends right after its request (an eager WebSocket frame) are read
/// as HTTP, refused, and never reach the upstream.
#[tokio::test]
async fn upgrade_answered_with_200_opens_no_tunnel() {
    let upstream = RawUpstream::ok().await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let mut client = RawClient::connect(proxy.addr()).await;
    let mut bytes = b"GET /ws HTTP/1.1\r\nHost: example.test\r\nConnection: Upgrade\r\n\
Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        .to_vec();
    // A masked text frame, then plain text that would show up verbatim in a tunnel.
    let frame = [
        0x81u8, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    bytes.extend_from_slice(&frame);
    bytes.extend_from_slice(b"TUNNEL-MARKER\r\n\r\n");
    client.send(&bytes).await;
    let got = client.responses(1).await;

    let first = got.responses.first().expect("no response");
    assert_eq!(first.status, 200, "{:?}", got.text());
    assert_eq!(first.body, b"ok");
    assert!(
        got.responses.iter().all(|r| r.status != 101),
        "{:?}",
        got.text()
    );
    // Give anything that was going to be forwarded the time to arrive.
    upstream
        .wait_for_requests(2, Duration::from_millis(300))
        .await;
    let forwarded = upstream.received();
    assert!(
        !String::from_utf8_lossy(&forwarded).contains("TUNNEL-MARKER"),
        "bytes after the request were tunnelled: {:?}",
        String::from_utf8_lossy(&forwarded)
    );
    assert!(
        !forwarded.windows(frame.len()).any(|w| w == frame),
        "the WebSocket frame was tunnelled"
    );
    assert_eq!(upstream.requests().len(), 1);
}

/// The same, with the client waiting for the `200` before sending frames.
#[tokio::test]
async fn bytes_after_a_refused_upgrade_are_not_tunnelled() {
    let upstream = RawUpstream::ok().await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let mut client = RawClient::connect(proxy.addr()).await;
    client
        .send(
            b"GET /ws HTTP/1.1\r\nHost: example.test\r\nConnection: Upgrade\r\n\
Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await;
    let got = client.responses(1).await;
    assert_eq!(got.status(), 200, "{:?}", got.text());
    let _ = client
        .stream()
        .write_all(b"\x81\x85\x37\xfa\x21\x3dTUNNEL-MARKER")
        .await;
    let got = client.responses(2).await;
    assert!(
        got.responses.iter().all(|r| r.status != 101),
        "{:?}",
        got.text()
    );
    upstream
        .wait_for_requests(2, Duration::from_millis(300))
        .await;
    assert!(
        !upstream.text().contains("TUNNEL-MARKER"),
        "bytes after the request were tunnelled: {:?}",
        upstream.text()
    );
    assert_eq!(upstream.requests().len(), 1);
}

over_every_protocol! {
    nul_in_header_value_is_refused,
    cr_in_header_value_is_refused,
    non_token_header_name_is_refused,
    space_in_request_target_is_refused,
    second_host_disagreeing_is_refused,
    forged_session_headers_in_any_spelling_never_reach_the_upstream,
    oversized_headers_get_431,
    many_small_headers_over_the_limit_get_431,
    slow_post_body_is_cut_off_after_client_body_timeout,
    declared_body_over_max_body_bytes_gets_413,
    declared_body_of_exactly_max_body_bytes_passes,
    body_growing_past_max_body_bytes_is_cut_off,
    request_trailers_never_carry_session_headers_upstream,
    session_cookie_valid_then_garbage_keeps_the_session,
    session_cookie_garbage_then_valid_keeps_the_session,
    two_valid_session_cookies_the_first_wins,
    signed_cookie_of_a_dead_session_then_a_live_one_keeps_the_live_one,
    oversized_session_cookie_is_ignored_and_a_new_session_issued,
    oversized_session_cookie_never_displaces_a_valid_one,
    upstream_malformed_status_line_gets_502,
    upstream_content_length_with_transfer_encoding_gets_502,
    upstream_content_length_with_transfer_encoding_never_splits_the_response,
    upstream_conflicting_content_lengths_get_502,
    upstream_malformed_content_length_gets_502,
    upstream_obs_fold_header_gets_502_or_is_unfolded,
    upstream_nul_in_header_gets_502,
    upstream_101_to_a_plain_request_gets_502,
    dead_or_silent_upstream_gets_the_proxys_own_error,
    session_set_repeated_1000_times_is_refused,
    session_set_touching_more_keys_than_allowed_is_refused,
    session_set_of_200_kib_is_refused,
    session_set_with_encoded_nul_is_refused,
    session_set_with_encoded_crlf_is_refused,
    session_set_with_invalid_percent_encoding_is_refused,
    one_bad_set_header_refuses_the_good_ones_beside_it,
    session_remove_with_bad_encoding_is_refused,
    ; http2:
    h2_hand_written_request_is_served,
    h2_connection_header_is_refused,
    h2_transfer_encoding_header_is_refused,
    h2_keep_alive_and_upgrade_headers_are_refused,
    h2_te_other_than_trailers_is_refused,
    h2_uppercase_header_name_is_refused,
    h2_pseudo_header_after_a_regular_one_is_refused,
    h2_malformed_pseudo_headers_are_refused,
    h2_extended_connect_is_refused,
    h2_connect_gets_405,
    h2_host_equal_to_authority_is_served,
    h2_reset_mid_upload_leaves_the_next_request_whole,
    h2_streams_over_the_concurrency_limit_are_refused,
}
