//! The proxy's own HTTP/1 path (`src/h1`), seen from the two sockets it sits
//! between: pipelined requests, chunked request bodies, every response framing an
//! upstream can choose (and how it is re-framed for HTTP/1.1 and HTTP/1.0
//! clients), `Expect: 100-continue`, upstream keep-alive and stale connections,
//! request heads refused before anything reaches the upstream, an HTTP/2 preface
//! that arrives in pieces, and large bodies byte for byte.
//!
//! The client side is a raw socket, so every byte the proxy sends is visible. The
//! upstream is either the recording [`Upstream`] (a real HTTP/1.1 server) or a
//! [`Scripted`] one, which writes exactly the bytes a test gives it and closes
//! exactly when the test says.
//!
//! Each proxy runs one worker thread per core, each with its own upstream pool;
//! a test that counts upstream connections keeps all its requests on one client
//! connection, so they are served by one worker.

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use support::raw::{chunked_body, h2_read, h2_request, head_end, parse_responses, RawResponse};
use support::*;

const MIB: u64 = 1024 * 1024;

/// A plain 200 with a two-byte body.
const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: example.test\r\n\r\n").into_bytes()
}

fn post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: example.test\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// An upstream that answers `METHOD PATH|BODY`, so a response shows which
/// request it belongs to.
async fn echo_upstream() -> Upstream {
    Upstream::start(|seen| {
        let body = String::from_utf8_lossy(&seen.body);
        Reply::ok().body(format!("{} {}|{body}", seen.method, seen.uri.path()))
    })
    .await
}

// ---------------------------------------------------------------------------
// The client: one raw connection to the proxy, everything it sent kept.
// ---------------------------------------------------------------------------

struct Client {
    stream: TcpStream,
    /// Every byte the proxy sent on this connection, in order.
    got: Vec<u8>,
    /// The proxy closed the connection (FIN or RST).
    closed: bool,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr)
            .await
            .expect("connect to the proxy");
        stream.set_nodelay(true).expect("nodelay");
        Client {
            stream,
            got: Vec::new(),
            closed: false,
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .await
            .expect("the proxy stopped reading");
    }

    /// Reads until `done` holds for what arrived so far, the connection ends,
    /// or `limit` passes; returns whether `done` came to hold.
    async fn read_until(&mut self, limit: Duration, done: impl Fn(&[u8]) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        let mut buf = vec![0u8; 64 * 1024];
        while !done(&self.got) {
            if self.closed {
                return false;
            }
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => self.closed = true,
                Ok(Ok(n)) => self.got.extend_from_slice(&buf[..n]),
            }
        }
        true
    }

    /// The `n`th (1-based) response on this connection, waiting up to
    /// [`PATIENCE`] for it.
    async fn response(&mut self, n: usize) -> RawResponse {
        self.read_until(PATIENCE, |b| parse_responses(b, false).len() >= n)
            .await;
        let mut all = parse_responses(&self.got, self.closed);
        assert!(
            all.len() >= n,
            "response {n} never came (closed: {}): {:?}",
            self.closed,
            self.text()
        );
        all.swap_remove(n - 1)
    }

    /// Waits up to `limit` for the proxy to close the connection.
    async fn closed_within(&mut self, limit: Duration) -> bool {
        self.read_until(limit, |_| false).await;
        self.closed
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.got).into_owned()
    }
}

#[track_caller]
fn assert_body(response: &RawResponse, body: &[u8]) {
    assert_eq!(
        String::from_utf8_lossy(&response.body),
        String::from_utf8_lossy(body),
        "status {}, headers {:?}",
        response.status,
        response.headers
    );
}

/// The response leaves the client connection open for another request.
#[track_caller]
fn assert_keeps_alive(response: &RawResponse) {
    let connection: Vec<String> = response
        .header_all("connection")
        .iter()
        .map(|v| v.to_ascii_lowercase())
        .collect();
    assert!(
        !connection.iter().any(|v| v.contains("close")),
        "Connection: close on a reusable connection: {:?}",
        response.headers
    );
}

// ---------------------------------------------------------------------------
// The scripted upstream: each connection runs the test's script.
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Log {
    connections: AtomicUsize,
    /// Each complete request as text, with the index of its connection.
    requests: Mutex<Vec<(usize, String)>>,
}

/// An upstream on `127.0.0.1:0` that hands every accepted connection to a script.
struct Scripted {
    addr: SocketAddr,
    log: Arc<Log>,
    accept: JoinHandle<()>,
}

/// One upstream connection, as a script sees it.
struct UpConn {
    /// 0 for the first connection the proxy opened, 1 for the next, ...
    index: usize,
    stream: TcpStream,
    /// Bytes read but not yet part of a complete request.
    pending: Vec<u8>,
    log: Arc<Log>,
}

impl Scripted {
    async fn start<F, Fut>(script: F) -> Scripted
    where
        F: Fn(UpConn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let log = Arc::new(Log::default());
        let accept_log = log.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let index = accept_log.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(script(UpConn {
                    index,
                    stream,
                    pending: Vec::new(),
                    log: accept_log.clone(),
                }));
            }
        });
        Scripted { addr, log, accept }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn connections(&self) -> usize {
        self.log.connections.load(Ordering::SeqCst)
    }

    /// `(connection index, request line)` of every complete request, in order.
    fn request_lines(&self) -> Vec<(usize, String)> {
        self.log
            .requests
            .lock()
            .unwrap()
            .iter()
            .map(|(i, r)| (*i, r.lines().next().unwrap_or("").to_owned()))
            .collect()
    }

    /// Every complete request as text.
    fn requests(&self) -> Vec<String> {
        self.log
            .requests
            .lock()
            .unwrap()
            .iter()
            .map(|(_, r)| r.clone())
            .collect()
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// The length of the complete request at the start of `buf`, if it is complete.
fn request_len(buf: &[u8]) -> Option<usize> {
    let end = head_end(buf)?;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    if head
        .lines()
        .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"))
    {
        return chunked_body(&buf[end..]).map(|(n, _)| end + n);
    }
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse::<usize>().expect("Content-Length"));
    (buf.len() >= end + length).then_some(end + length)
}

impl UpConn {
    /// Reads one complete request; `None` when the proxy closed the connection
    /// (or sent nothing whole within [`PATIENCE`]).
    async fn request(&mut self) -> Option<String> {
        let deadline = Instant::now() + PATIENCE;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(len) = request_len(&self.pending) {
                let request: Vec<u8> = self.pending.drain(..len).collect();
                let text = String::from_utf8_lossy(&request).into_owned();
                self.log
                    .requests
                    .lock()
                    .unwrap()
                    .push((self.index, text.clone()));
                return Some(text);
            }
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => self.pending.extend_from_slice(&buf[..n]),
                _ => return None,
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }
}

/// What the framing upstream does after a reply.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Then {
    Stay,
    Close,
}

/// One reply per framing, chosen by the request line.
fn framing_reply(request: &str) -> (&'static [u8], Then) {
    let line = request.lines().next().unwrap_or("");
    let path = line.split(' ').nth(1).unwrap_or("");
    match (line.starts_with("HEAD "), path) {
        (true, "/cl") => (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\n",
            Then::Stay,
        ),
        (_, "/cl") => (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world",
            Then::Stay,
        ),
        (_, "/chunked") => (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\
Trailer: X-Checksum\r\n\r\n\
3;ext=one\r\nhel\r\n6\r\nlo wor\r\n2\r\nld\r\n0\r\nX-Checksum: trailer-value\r\n\r\n",
            Then::Stay,
        ),
        // No framing header: the body ends when the upstream closes.
        (_, "/close") => (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello world",
            Then::Close,
        ),
        (_, "/204") => (
            b"HTTP/1.1 204 No Content\r\nX-Kind: none\r\n\r\n",
            Then::Stay,
        ),
        // A 304 may carry the Content-Length of the representation it stands for.
        (_, "/304") => (
            b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 11\r\n\r\n",
            Then::Stay,
        ),
        // The upstream says it will close, but leaves the socket open: only the
        // header tells the proxy not to reuse it.
        (_, "/conn-close") => (
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 11\r\n\r\nhello world",
            Then::Stay,
        ),
        (_, "/http10") => (
            b"HTTP/1.0 200 OK\r\nContent-Length: 11\r\n\r\nhello world",
            Then::Stay,
        ),
        (_, "/garbage") => (
            b"HTTP/1.1 2OO OK\r\nContent-Length: 2\r\n\r\nok",
            Then::Stay,
        ),
        _ => (
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            Then::Stay,
        ),
    }
}

/// Answers each request with [`framing_reply`], on every connection.
async fn framing_upstream() -> Scripted {
    Scripted::start(|mut conn: UpConn| async move {
        while let Some(request) = conn.request().await {
            let (reply, then) = framing_reply(&request);
            conn.send(reply).await;
            if then == Then::Close {
                break;
            }
        }
    })
    .await
}

/// Sends `GET /cl` on `client` as its `n`th request and checks the answer.
async fn then_cl_still_works(client: &mut Client, n: usize) {
    client.send(&get("/cl")).await;
    let next = client.response(n).await;
    assert_eq!(next.status, 200, "{:?}", client.text());
    assert_body(&next, b"hello world");
}

// ---------------------------------------------------------------------------
// Pipelining.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn two_pipelined_requests_get_two_responses_in_order() {
    let upstream = echo_upstream().await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let mut client = Client::connect(proxy.addr()).await;

    client.send(&[get("/one"), get("/two")].concat()).await;

    let first = client.response(1).await;
    let second = client.response(2).await;
    assert_eq!(
        (first.status, second.status),
        (200, 200),
        "{}",
        client.text()
    );
    assert_body(&first, b"GET /one|");
    assert_body(&second, b"GET /two|");
    let paths: Vec<String> = upstream
        .requests()
        .iter()
        .map(|s| s.uri.path().to_owned())
        .collect();
    assert_eq!(paths, ["/one", "/two"]);
}

/// A body in the middle of the pipeline ends exactly where its Content-Length
/// says: the request after it is neither eaten nor shifted.
#[tokio::test]
async fn three_pipelined_requests_with_a_body_between_keep_their_boundaries() {
    let upstream = echo_upstream().await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let mut client = Client::connect(proxy.addr()).await;

    client
        .send(&[get("/a"), post("/b", "hello"), get("/c")].concat())
        .await;

    let bodies: Vec<String> = [
        client.response(1).await,
        client.response(2).await,
        client.response(3).await,
    ]
    .iter()
    .map(|r| {
        assert_eq!(r.status, 200);
        String::from_utf8_lossy(&r.body).into_owned()
    })
    .collect();
    assert_eq!(bodies, ["GET /a|", "POST /b|hello", "GET /c|"]);
    let seen = upstream.requests();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(&seen[1].body[..], b"hello");
    assert_eq!(seen[1].body_len, 5);
    assert_eq!(seen[2].body_len, 0);
}

/// `Connection: close` on a pipelined request ends the connection after its
/// response: what the client wrote after it is never served.
#[tokio::test]
async fn pipelined_requests_after_connection_close_are_not_served() {
    let upstream = echo_upstream().await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let mut client = Client::connect(proxy.addr()).await;

    let closing = b"GET /last HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n";
    client
        .send(&[&get("/first")[..], closing, &get("/never")].concat())
        .await;

    assert!(
        client.closed_within(PATIENCE).await,
        "still open: {:?}",
        client.text()
    );
    let responses = parse_responses(&client.got, true);
    assert_eq!(responses.len(), 2, "{:?}", client.text());
    assert_body(&responses[0], b"GET /first|");
    assert_body(&responses[1], b"GET /last|");
    assert_eq!(responses[1].header("connection"), Some("close"));
    let paths: Vec<String> = upstream
        .requests()
        .iter()
        .map(|s| s.uri.path().to_owned())
        .collect();
    assert_eq!(paths, ["/first", "/last"]);
}

// ---------------------------------------------------------------------------
// Chunked request bodies.
// ---------------------------------------------------------------------------

/// A chunked body written in pieces (a chunk extension, a chunk split in its
/// size line and in its data, a trailer) reaches the upstream as exactly its
/// data, in order, and the connection carries the next request.
#[tokio::test]
async fn chunked_request_body_reaches_the_upstream_whole_and_in_order() {
    let upstream = echo_upstream().await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let mut client = Client::connect(proxy.addr()).await;

    client
        .send(
            b"POST /upload HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\
Trailer: X-Digest\r\n\r\n4;note=first\r\nabcd\r\n",
        )
        .await;
    // The body is streamed: the first chunk goes upstream before the rest exists.
    assert!(
        upstream.received_body_bytes(4, PATIENCE).await,
        "the first chunk did not reach the upstream"
    );
    client.send(b"1").await;
    client.send(b"0\r\n01234567").await;
    assert!(
        upstream.received_body_bytes(12, PATIENCE).await,
        "part of a chunk did not reach the upstream"
    );
    client
        .send(b"89abcdef\r\n3\r\nxyz\r\n0\r\nX-Digest: sha-256=trailer\r\n\r\n")
        .await;

    let response = client.response(1).await;
    assert_eq!(response.status, 200, "{:?}", client.text());
    const DATA: &str = "abcd0123456789abcdefxyz";
    assert_body(&response, format!("POST /upload|{DATA}").as_bytes());
    let seen = upstream.last();
    assert_eq!(String::from_utf8_lossy(&seen.body), DATA);
    assert_eq!(seen.body_len, DATA.len() as u64);
    assert_eq!(seen.header("x-digest"), None, "a trailer became a header");
    assert_eq!(seen.header("trailer"), None);

    client.send(&get("/after")).await;
    let after = client.response(2).await;
    assert_body(&after, b"GET /after|");
}

/// On the wire to the upstream: the body is re-chunked with nothing of the
/// client's extensions or trailers left in it.
#[tokio::test]
async fn chunked_request_body_goes_upstream_without_extensions_or_trailers() {
    let upstream = Scripted::start(|mut conn: UpConn| async move {
        while conn.request().await.is_some() {
            conn.send(OK).await;
        }
    })
    .await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let mut client = Client::connect(proxy.addr()).await;

    client
        .send(
            b"POST /upload HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n\
5;marker-ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Marker-Trailer: 1\r\n\r\n",
        )
        .await;
    let response = client.response(1).await;
    assert_eq!(response.status, 200, "{:?}", client.text());

    let requests = upstream.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let wire = &requests[0];
    let end = head_end(wire.as_bytes()).expect("a request head");
    let (_, data) = chunked_body(&wire.as_bytes()[end..]).expect("a chunked body");
    assert_eq!(String::from_utf8_lossy(&data), "hello world");
    assert!(
        !wire.contains("marker-ext") && !wire.to_ascii_lowercase().contains("x-marker-trailer"),
        "client framing reached the upstream: {wire:?}"
    );
}

// ---------------------------------------------------------------------------
// Response framings from the upstream, to an HTTP/1.1 client.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn content_length_response_is_relayed_and_both_connections_reused() {
    let upstream = framing_upstream().await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let mut client = Client::connect(proxy.addr()).await;

    for n in 1..=3 {
        client.send(&get("/cl")).await;
        let response = client.response(n).await;
        assert_eq!(response.status, 200, "{:?}", client.text());
        assert_body(&response, b"hello world");
        assert_eq!(response.header("content-length"), Some("11"));
        assert_eq!(response.header("transfer-encoding"), None);
        assert_keeps_alive(&response);
    }
    assert_eq!(upstream.connections(), 1, "{:?}", upstream.request_lines());
}

/// Chunk extensions and trailers are the upstream's framing: the client gets the
/// data re-chunked, none of them, and a connection it can use again.
#[tokio::test]
async fn chunked_response_is_rechunked_without_extensions_or_trailers() {
    let upstream = framing_upstream().await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let mut client = Client::connect(proxy.addr()).await;

    client.send(&get("/chunked")).await;
    let response = client.response(1).await;
    assert_eq!(response.status, 200, "{:?}", client.text());
    assert_eq!(response.header("transfer-encoding"), Some("chunked"));
    assert_eq!(response.header("content-length"), None);
    assert_body(&response, b"hello world");
    assert_keeps_alive(&response);
    let text = client.text();
    assert!(
        !text.contains("ext=one") && !text.contains("trailer-value"),
        "upstream chunk framing reached the client: {text:?}"
    );

    then_cl_still_works(&mut client, 2).await;
    assert_eq!(upstream.connections(), 1, "{:?}", upstream.request_lines());
}

/// An upstream that ends its body by closing: the 1.1 client gets it chunked,
/// its own connection stays open, and the closed upstream connection is not
/// used again.
#[tokio::test]
async fn close_delimited_response_is_chunked_to_a_1_1_client_that_keeps_its_connection() {
    let upstream = framing_upstream().await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let mut client = Client::connect(proxy.addr()).await;

    client.send(&get("/close")).await;
    let response = client.response(1).await;
    assert_eq!(response.status, 200, "{:?}", client.text());
    assert_eq!(response.header("transfer-encoding"), Some("chunked"));
    assert_body(&response, b"hello world");
    assert_keeps_alive(&response);

    then_cl_still_works(&mut client, 2).await;
    assert_eq!(
        upstream.request_lines(),
        [
            (0, "GET /close HTTP/1.1".to_owned()),
            (1, "GET /cl HTTP/1.1".to_owned())
        ]
    );
}

/// 204 and 304 have no body, whatever their headers say: nothing after their
/// heads is taken as body, and the next response on the connection is intact.
#[tokio::test]
async fn no_content_and_not_modified_responses_carry_no_body() {
    let upstream = framing_upstream().await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let mut client = Client::connect(proxy.addr()).await;

    client.send(&get("/204")).await;
    let no_content = client.response(1).await;
    assert_eq!(no_content.status, 204, "{:?}", client.text());
    assert_eq!(no_content.header("x-kind"), Some("none"));
    assert_eq!(no_content.header("transfer-encoding"), None);
    assert!(no_content.body.is_empty());

    client.send(&get("/304")).await;
    let not_modified = client.response(2).await;
    assert_eq!(not_modified.status, 304, "{:?}", client.text());
    assert_eq!(not_modified.header("etag"), Some("\"v1\""));
    assert_eq!(not_modified.header("transfer-encoding"), None);

    then_cl_still_works(&mut client, 3).await;
    // Exactly three heads and one body went to the client.
    let text = client.text();
    assert_eq!(text.matches("HTTP/1.1 ").count(), 3, "{text:?}");
    assert!(text.ends_with("\r\n\r\nhello world"), "{text:?}");
    assert_eq!(upstream.connections(), 1, "{:?}", upstream.request_lines());
}

/// A response to HEAD keeps its Content-Length and has no body: the next bytes
/// on the connection are the next response's head.
#[tokio::test]
async fn head_response_keeps_content_length_and_sends_no_body() {
    let upstream = framing_upstream().await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let mut client = Client::connect(proxy.addr()).await;

    client
        .send(b"HEAD /cl HTTP/1.1\r\nHost: example.test\r\n\r\n")
        .await;
    assert!(
        client.read_until(PATIENCE, |b| head_end(b).is_some()).await,
        "no response to HEAD: {:?}",
        client.text()
    );
    client.send(&get("/cl")).await;
    assert!(
        client
            .read_until(PATIENCE, |b| b.ends_with(b"hello world"))
            .await,
        "no response to the GET after HEAD: {:?}",
        client.text()
    );

    let text = client.text();
    let end = head_end(&client.got).expect("a head");
    let head = text[..end].to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{text:?}");
    assert!(head.contains("content-length: 11\r\n"), "{head:?}");
    assert!(
        text[end..].starts_with("HTTP/1.1 200"),
        "bytes after the HEAD response's head: {text:?}"
    );
    assert_eq!(text.matches("hello world").count(), 1, "{text:?}");
    assert_eq!(upstream.connections(), 1, "{:?}", upstream.request_lines());
}

// ---------------------------------------------------------------------------
// HTTP/1.0 clients.
// ---------------------------------------------------------------------------

/// An HTTP/1.0 client cannot read chunks: it gets the data as it is, ended by
/// the connection's close. A Content-Length body to a 1.0 client without
/// keep-alive is followed by the close too.
#[tokio::test]
async fn http10_client_gets_plain_bodies_and_a_closed_connection() {
    let upstream = framing_upstream().await;
    let proxy = Proxy::start(config(&upstream.url())).await;

    for path in ["/chunked", "/close", "/cl"] {
        let mut client = Client::connect(proxy.addr()).await;
        client
            .send(format!("GET {path} HTTP/1.0\r\nHost: example.test\r\n\r\n").as_bytes())
            .await;
        assert!(
            client.closed_within(PATIENCE).await,
            "{path}: the connection stayed open: {:?}",
            client.text()
        );
        let responses = parse_responses(&client.got, true);
        assert_eq!(responses.len(), 1, "{path}: {:?}", client.text());
        let response = &responses[0];
        assert_eq!(response.status, 200, "{path}: {:?}", client.text());
        assert_eq!(
            response.header("transfer-encoding"),
            None,
            "{path}: chunked to an HTTP/1.0 client"
        );
        assert_body(response, b"hello world");
    }
}

/// `Connection: keep-alive` from a 1.0 client is honoured for a response whose
/// length is known.
#[tokio::test]
async fn http10_keep_alive_client_can_send_a_second_request() {
    let upstream = framing_upstream().await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let mut client = Client::connect(proxy.addr()).await;
    let request = b"GET /cl HTTP/1.0\r\nHost: example.test\r\nConnection: keep-alive\r\n\r\n";

    for n in 1..=2 {
        client.send(request).await;
        let response = client.response(n).await;
        assert_eq!(response.status, 200, "{:?}", client.text());
        assert_body(&response, b"hello world");
        assert_keeps_alive(&response);
    }
    let lines = upstream.request_lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines.iter().all(|(_, l)| l == "GET /cl HTTP/1.1"),
        "HTTP/1.1 to the upstream: {lines:?}"
    );
}

// ---------------------------------------------------------------------------
// Expect: 100-continue.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn expect_continue_gets_100_before_the_body_is_sent() {
    let upstream = echo_upstream().await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let mut client = Client::connect(proxy.addr()).await;

    client
        .send(
            b"POST /form HTTP/1.1\r\nHost: example.test\r\nContent-Length: 11\r\n\
Expect: 100-continue\r\n\r\n",
        )
        .await;
    assert!(
        client.read_until(PATIENCE, |b| head_end(b).is_some()).await,
        "no 100 Continue while the client holds its body back: {:?}",
        client.text()
    );
    assert_eq!(client.text(), "HTTP/1.1 100 Continue\r\n\r\n");
    assert_eq!(
        upstream.count(),
        0,
        "the upstream answered without the body"
    );

    client.send(b"hello world").await;
    let last = client.response(2).await;
    assert_eq!(last.status, 200, "{:?}", client.text());
    assert_body(&last, b"POST /form|hello world");
    let seen = upstream.last();
    assert_eq!(&seen.body[..], b"hello world");
    assert_eq!(seen.header("expect"), None, "Expect reached the upstream");

    then_echo_still_works(&mut client, 3).await;
}

/// A client that sends its body right behind the head gets the final response
/// (a 100 before it is allowed, nothing else) and the upstream gets the body.
#[tokio::test]
async fn expect_continue_with_the_body_already_sent_gets_the_final_response() {
    let upstream = echo_upstream().await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let mut client = Client::connect(proxy.addr()).await;

    client
        .send(
            b"POST /form HTTP/1.1\r\nHost: example.test\r\nContent-Length: 11\r\n\
Expect: 100-continue\r\n\r\nhello world",
        )
        .await;
    client
        .read_until(PATIENCE, |b| {
            parse_responses(b, false).iter().any(|r| r.status >= 200)
        })
        .await;
    let responses = parse_responses(&client.got, client.closed);
    let (last, before) = responses.split_last().expect("no response");
    assert!(
        before.iter().all(|r| r.status == 100) && before.len() <= 1,
        "{:?}",
        client.text()
    );
    assert_eq!(last.status, 200, "{:?}", client.text());
    assert_body(last, b"POST /form|hello world");
    assert_eq!(upstream.last().header("expect"), None);
}

/// A body the proxy will refuse by its declared size is never invited.
#[tokio::test]
async fn expect_continue_over_max_body_bytes_gets_413_and_no_100() {
    let upstream = Upstream::ok().await;
    let proxy = Proxy::start(config(&upstream.url()).set("limits.max_body_bytes", "1024")).await;
    let mut client = Client::connect(proxy.addr()).await;

    client
        .send(
            b"POST /form HTTP/1.1\r\nHost: example.test\r\nContent-Length: 4096\r\n\
Expect: 100-continue\r\n\r\n",
        )
        .await;
    let response = client.response(1).await;
    assert_eq!(response.status, 413, "{:?}", client.text());
    assert!(!client.text().contains(" 100 "), "{:?}", client.text());
    assert!(client.closed_within(PATIENCE).await, "{:?}", client.text());
    assert_eq!(upstream.connections(), 0);
}

async fn then_echo_still_works(client: &mut Client, n: usize) {
    client.send(&get("/next")).await;
    let next = client.response(n).await;
    assert_eq!(next.status, 200, "{:?}", client.text());
    assert_body(&next, b"GET /next|");
}

// ---------------------------------------------------------------------------
// Upstream keep-alive: reuse, stale connections, retries.
// ---------------------------------------------------------------------------

/// The upstream closes its keep-alive connection as soon as the first
/// response is out (as servers with a short idle timeout do): the next request
/// goes out on a new connection and succeeds.
#[tokio::test]
async fn upstream_closing_an_idle_connection_costs_no_request() {
    let first_closed = Gate::new();
    let signal = first_closed.clone();
    let upstream = Scripted::start(move |mut conn: UpConn| {
        let signal = signal.clone();
        async move {
            if conn.index == 0 {
                if conn.request().await.is_some() {
                    conn.send(OK).await;
                }
                drop(conn);
                signal.open();
                return;
            }
            while conn.request().await.is_some() {
                conn.send(OK).await;
            }
        }
    })
    .await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let mut client = Client::connect(proxy.addr()).await;

    client.send(&get("/first")).await;
    assert_eq!(client.response(1).await.status, 200, "{:?}", client.text());
    tokio::time::timeout(PATIENCE, first_closed.wait())
        .await
        .expect("the upstream did not close its first connection");
    client.send(&get("/second")).await;
    let second = client.response(2).await;
    assert_eq!(second.status, 200, "{:?}", client.text());
    assert_body(&second, b"ok");

    assert_eq!(
        upstream.request_lines(),
        [
            (0, "GET /first HTTP/1.1".to_owned()),
            (1, "GET /second HTTP/1.1".to_owned())
        ]
    );
}

/// An upstream whose first connection answers one request, then reads the
/// next and closes without a byte of answer; later connections answer all.
async fn drops_the_second_request_on_its_first_connection() -> Scripted {
    Scripted::start(|mut conn: UpConn| async move {
        if conn.index == 0 {
            if conn.request().await.is_some() {
                conn.send(OK).await;
            }
            // The next request finds the connection closing: read, never answer.
            let _ = conn.request().await;
            return;
        }
        while conn.request().await.is_some() {
            conn.send(OK).await;
        }
    })
    .await
}

/// The race the stale check cannot see: the reused connection takes the next
/// request, then closes without a byte of answer. A bodiless GET is sent again,
/// once, on a new connection, and the client never learns of it.
#[tokio::test]
async fn get_dropped_by_a_reused_upstream_connection_is_retried_on_a_new_one() {
    let upstream = drops_the_second_request_on_its_first_connection().await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let mut client = Client::connect(proxy.addr()).await;

    client.send(&get("/first")).await;
    assert_eq!(client.response(1).await.status, 200, "{:?}", client.text());
    client.send(&get("/second")).await;
    let second = client.response(2).await;
    assert_eq!(second.status, 200, "{:?}", client.text());
    assert_body(&second, b"ok");
    assert_keeps_alive(&second);

    assert_eq!(
        upstream.request_lines(),
        [
            (0, "GET /first HTTP/1.1".to_owned()),
            (0, "GET /second HTTP/1.1".to_owned()),
            (1, "GET /second HTTP/1.1".to_owned())
        ]
    );
}

/// The same race with a POST: the upstream already holds the whole request,
/// and may have acted on it before it went away. nginx (`proxy_next_upstream`
/// without `non_idempotent`), Go's Transport, and this proxy's own HTTP/2 path
/// (hyper's pool retries only a request that was never written) do not send a
/// non-idempotent request twice; the client gets a 502 instead.
#[tokio::test]
async fn post_taken_by_a_reused_upstream_connection_is_not_sent_twice() {
    let upstream = drops_the_second_request_on_its_first_connection().await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let mut client = Client::connect(proxy.addr()).await;

    client.send(&get("/first")).await;
    assert_eq!(client.response(1).await.status, 200, "{:?}", client.text());
    client.send(&post("/order", "pay=100")).await;
    let answer = client.response(2).await;

    let posts: Vec<(usize, String)> = upstream
        .request_lines()
        .into_iter()
        .filter(|(_, l)| l.starts_with("POST"))
        .collect();
    assert_eq!(
        posts.len(),
        1,
        "the POST reached the upstream {} times (client got {}): {posts:?}",
        posts.len(),
        answer.status
    );
    assert_eq!(answer.status, 502, "{:?}", client.text());
}

/// `Connection: close` from an HTTP/1.1 upstream, and an HTTP/1.0 response
/// without keep-alive, each end that upstream connection even when the socket
/// stays open; the client's own connection is unaffected.
#[tokio::test]
async fn upstream_connection_announced_as_closing_is_not_reused() {
    let upstream = framing_upstream().await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let mut client = Client::connect(proxy.addr()).await;

    for (n, path) in [(1, "/conn-close"), (2, "/http10")] {
        client.send(&get(path)).await;
        let response = client.response(n).await;
        assert_eq!(response.status, 200, "{path}: {:?}", client.text());
        assert_body(&response, b"hello world");
        assert_keeps_alive(&response);
    }
    then_cl_still_works(&mut client, 3).await;

    assert_eq!(
        upstream.request_lines(),
        [
            (0, "GET /conn-close HTTP/1.1".to_owned()),
            (1, "GET /http10 HTTP/1.1".to_owned()),
            (2, "GET /cl HTTP/1.1".to_owned())
        ]
    );
}

/// A malformed status line is a 502 for that request only: the request was
/// read whole, so the client's connection carries the next one, which goes
/// to a new upstream connection (the broken one is never reused).
#[tokio::test]
async fn malformed_upstream_status_gets_502_and_the_client_connection_carries_on() {
    let upstream = framing_upstream().await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let mut client = Client::connect(proxy.addr()).await;

    client.send(&get("/garbage")).await;
    let bad = client.response(1).await;
    assert_eq!(bad.status, 502, "{:?}", client.text());
    assert!(!client.text().contains("2OO"), "{:?}", client.text());
    assert_keeps_alive(&bad);

    then_cl_still_works(&mut client, 2).await;
    assert_eq!(
        upstream.request_lines(),
        [
            (0, "GET /garbage HTTP/1.1".to_owned()),
            (1, "GET /cl HTTP/1.1".to_owned())
        ]
    );
}

// ---------------------------------------------------------------------------
// Request heads refused before anything reaches the upstream.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn request_line_with_an_unsupported_version_gets_505_and_closes() {
    let upstream = Upstream::ok().await;
    let proxy = Proxy::start(config(&upstream.url())).await;

    for version in ["HTTP/2.0", "HTTP/1.2", "HTTP/3.0", "HTTP/0.9"] {
        let mut client = Client::connect(proxy.addr()).await;
        client
            .send(format!("GET / {version}\r\nHost: example.test\r\n\r\n").as_bytes())
            .await;
        let response = client.response(1).await;
        assert_eq!(response.status, 505, "{version}: {:?}", client.text());
        assert!(
            client.closed_within(PATIENCE).await,
            "{version}: the connection stayed open"
        );
    }
    assert_eq!(upstream.connections(), 0);
    assert_eq!(upstream.count(), 0);
}

/// A head that is still unfinished when it reaches `max_header_bytes` is
/// refused then, not after `header_read_timeout`.
#[tokio::test]
async fn unfinished_head_reaching_max_header_bytes_gets_431_at_once() {
    let upstream = Upstream::ok().await;
    let proxy = Proxy::start(
        config(&upstream.url())
            .set("limits.max_header_bytes", "8192")
            .set("limits.header_read_timeout", "60s"),
    )
    .await;
    let mut client = Client::connect(proxy.addr()).await;

    // Exactly the limit, no blank line: all of it is read, none left unread.
    let mut head = b"GET / HTTP/1.1\r\nHost: example.test\r\nX-Big: ".to_vec();
    head.resize(8192, b'a');
    client.send(&head).await;

    let response = client.response(1).await;
    assert_eq!(response.status, 431, "{:?}", client.text());
    assert!(client.closed_within(PATIENCE).await);
    assert_eq!(upstream.connections(), 0);
}

/// A bad head after a good request on a kept-alive connection: the good one
/// was served, the bad one is refused and ends the connection, and nothing of
/// it reaches the upstream.
#[tokio::test]
async fn bad_second_head_on_a_kept_alive_connection_is_refused_and_closes_it() {
    let upstream = echo_upstream().await;
    let proxy = Proxy::start(config(&upstream.url())).await;

    for (bad, status) in [
        (&b"GET /bad HTTP/2.0\r\nHost: example.test\r\n\r\n"[..], 505),
        (
            b"GET /bad HTTP/1.1\r\nHost: example.test\r\nContent-Length: x\r\n\r\n",
            400,
        ),
    ] {
        let mut client = Client::connect(proxy.addr()).await;
        client.send(&get("/good")).await;
        assert_body(&client.response(1).await, b"GET /good|");
        client.send(bad).await;
        let refused = client.response(2).await;
        assert_eq!(refused.status, status, "{:?}", client.text());
        assert_eq!(refused.header("connection"), Some("close"));
        assert!(client.closed_within(PATIENCE).await, "{:?}", client.text());
    }
    assert!(
        upstream.requests().iter().all(|s| s.uri.path() == "/good"),
        "{:?}",
        upstream.requests()
    );
}

// ---------------------------------------------------------------------------
// HTTP/2 by prior knowledge, the preface arriving in pieces.
// ---------------------------------------------------------------------------

/// The HTTP/2 preface split over several TCP writes is still recognised: the
/// proxy waits for the rest of it instead of parsing `PRI` as HTTP/1.
#[tokio::test]
async fn h2c_preface_arriving_in_pieces_is_still_recognised() {
    let upstream = Upstream::ok().await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let opening = h2_request(&[
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":authority", b"example.test"),
        (b":path", b"/h2-split"),
    ]);
    let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");

    // Three pieces inside the 24-byte preface, each given time to be read on its
    // own (a pause too short only makes the split less likely, never a failure).
    for piece in [
        &opening[..3],
        &opening[3..10],
        &opening[10..20],
        &opening[20..],
    ] {
        stream.write_all(piece).await.expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let got = h2_read(&mut stream).await;
    assert!(got.answered(), "no HTTP/2 response: {:?}", got.frames);
    assert_eq!(got.indexed_status(), Some(200), "{:?}", got.frames);
    let seen = upstream.last();
    assert_eq!(seen.uri.path(), "/h2-split");
    assert!(seen.is_new_session());
}

// ---------------------------------------------------------------------------
// Streaming and large bodies.
// ---------------------------------------------------------------------------

/// A chunk reaches the client while the upstream is still working on the next
/// one (server-sent events, progress output): the upstream sends its head and
/// one small chunk, then waits for the client to have seen that chunk.
#[tokio::test]
async fn chunked_response_chunk_reaches_the_client_before_the_next_is_sent() {
    let client_saw_first = Gate::new();
    let gate = client_saw_first.clone();
    let upstream = Scripted::start(move |mut conn: UpConn| {
        let gate = gate.clone();
        async move {
            if conn.request().await.is_none() {
                return;
            }
            conn.send(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
Transfer-Encoding: chunked\r\n\r\nd\r\ndata: first\n\n\r\n",
            )
            .await;
            let _ = tokio::time::timeout(PATIENCE, gate.wait()).await;
            conn.send(b"e\r\ndata: second\n\n\r\n0\r\n\r\n").await;
        }
    })
    .await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let mut client = Client::connect(proxy.addr()).await;

    client.send(&get("/events")).await;
    let first_arrived = client
        .read_until(PATIENCE, |b| {
            String::from_utf8_lossy(b).contains("data: first")
        })
        .await;
    client_saw_first.open();
    assert!(
        first_arrived,
        "the first event did not reach the client while the upstream waited; got {:?}",
        client.text()
    );
    let response = client.response(1).await;
    assert_body(&response, b"data: first\n\ndata: second\n\n");
}

/// A large chunked body (an odd length, so the last chunk is partial) arrives
/// byte for byte: re-chunked to an HTTP/1.1 client, raw to an HTTP/1.0 one.
#[tokio::test]
async fn large_chunked_response_arrives_byte_exact_to_1_1_and_1_0_clients() {
    const LEN: u64 = 3 * MIB + 7;
    let upstream = Upstream::start(|_| Reply::download(LEN)).await;
    let proxy = Proxy::start(config(&upstream.url())).await;

    let mut client = Client::connect(proxy.addr()).await;
    client.send(&get("/big")).await;
    let response = client.response(1).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("transfer-encoding"), Some("chunked"));
    assert_eq!(response.body.len() as u64, LEN);
    assert!(matches_pattern(0, &response.body), "corrupt 1.1 body");

    let mut old = Client::connect(proxy.addr()).await;
    old.send(b"GET /big HTTP/1.0\r\nHost: example.test\r\n\r\n")
        .await;
    assert!(old.closed_within(PATIENCE).await, "1.0 download not ended");
    let responses = parse_responses(&old.got, true);
    assert_eq!(responses.len(), 1);
    assert_eq!(responses[0].header("transfer-encoding"), None);
    assert_eq!(responses[0].body.len() as u64, LEN);
    assert!(matches_pattern(0, &responses[0].body), "corrupt 1.0 body");
}

/// A large body ended by the upstream's close arrives byte for byte, chunked,
/// and the client's connection then carries another such download.
#[tokio::test]
async fn large_close_delimited_response_arrives_byte_exact() {
    const LEN: u64 = 2 * MIB + 13;
    let upstream = Scripted::start(|mut conn: UpConn| async move {
        if conn.request().await.is_none() {
            return;
        }
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
            .await;
        let mut sent = 0u64;
        while sent < LEN {
            let n = (LEN - sent).min(60_000) as usize;
            conn.send(&pattern(sent, n)).await;
            sent += n as u64;
        }
    })
    .await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let mut client = Client::connect(proxy.addr()).await;

    for n in 1..=2 {
        client.send(&get("/big")).await;
        let response = client.response(n).await;
        assert_eq!(response.status, 200);
        assert_eq!(response.header("transfer-encoding"), Some("chunked"));
        assert_eq!(response.body.len() as u64, LEN, "download {n}");
        assert!(matches_pattern(0, &response.body), "download {n} corrupt");
    }
    assert_eq!(upstream.connections(), 2);
}
