//! Byte-exact fixtures for the hostile-input tests: a client that writes exactly
//! the bytes a test gives it and reports everything that came back, an upstream
//! that records every byte it receives and answers with canned bytes, and just
//! enough HTTP/2 framing (no Huffman, no dynamic table) to send headers that a
//! well-behaved HTTP/2 library would refuse to send.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::PATIENCE;

/// After a complete response, how long the client waits for the connection to
/// close (or for more bytes) before calling it open.
pub const LINGER: Duration = Duration::from_millis(750);

// ---------------------------------------------------------------------------
// HTTP/1 responses as bytes.
// ---------------------------------------------------------------------------

/// One HTTP/1 response parsed out of the bytes a peer sent.
#[derive(Clone, Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Header names lower-cased, values as sent, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// Every value of a header.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_all(name).into_iter().next()
    }

    /// Names of the headers starting with `prefix` (lower case).
    pub fn names_with_prefix(&self, prefix: &str) -> Vec<&str> {
        self.headers
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| n.starts_with(prefix))
            .collect()
    }
}

/// Where the `\r\n\r\n` ending a message head is, as the index just past it.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn parse_head(head: &[u8]) -> Option<(String, Vec<(String, String)>)> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let start = lines.next()?.to_owned();
    let headers = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap_or((l, ""));
            (n.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    Some((start, headers))
}

/// How a message body is framed, by its head.
enum Framing {
    Length(usize),
    Chunked,
    /// No body (a request without framing headers).
    None,
    /// Until the connection closes (a response without framing headers).
    UntilClose,
}

fn framing(headers: &[(String, String)], is_response: bool, status: u16) -> Framing {
    if is_response && (status == 101 || status == 204 || status == 304 || status < 200) {
        return Framing::None;
    }
    let te = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    if te {
        return Framing::Chunked;
    }
    match headers.iter().find(|(n, _)| n == "content-length") {
        Some((_, v)) => Framing::Length(v.parse().unwrap_or(0)),
        None if is_response => Framing::UntilClose,
        None => Framing::None,
    }
}

/// The length of a complete chunked body at the start of `buf` (trailers
/// included) and its decoded data, or `None` while incomplete.
pub fn chunked_body(buf: &[u8]) -> Option<(usize, Vec<u8>)> {
    let mut at = 0;
    let mut data = Vec::new();
    loop {
        let line_end = at + buf[at..].windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(&buf[at..line_end]).ok()?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let end = at + buf[at..].windows(2).position(|w| w == b"\r\n")?;
                let empty = end == at;
                at = end + 2;
                if empty {
                    return Some((at, data));
                }
            }
        }
        if buf.len() < at + size + 2 {
            return None;
        }
        data.extend_from_slice(&buf[at..at + size]);
        at += size + 2;
    }
}

/// Splits `buf` into complete responses. With `eof`, a response framed by the
/// connection's close takes the rest.
pub fn parse_responses(buf: &[u8], eof: bool) -> Vec<RawResponse> {
    let mut out = Vec::new();
    let mut rest = buf;
    while let Some(end) = head_end(rest) {
        let Some((start, headers)) = parse_head(&rest[..end]) else {
            break;
        };
        let status = start
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0);
        let after = &rest[end..];
        let (used, body) = match framing(&headers, true, status) {
            Framing::None => (0, Vec::new()),
            Framing::Length(n) if after.len() >= n => (n, after[..n].to_vec()),
            Framing::Length(_) => break,
            Framing::Chunked => match chunked_body(after) {
                Some(done) => done,
                None => break,
            },
            Framing::UntilClose if eof => (after.len(), after.to_vec()),
            Framing::UntilClose => break,
        };
        out.push(RawResponse {
            status,
            headers,
            body,
        });
        rest = &after[used..];
        if status == 101 {
            break;
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The client.
// ---------------------------------------------------------------------------

/// What one raw connection got back.
#[derive(Debug)]
pub struct Exchange {
    /// Every byte the proxy sent, in order.
    pub received: Vec<u8>,
    /// The complete responses in `received`.
    pub responses: Vec<RawResponse>,
    /// The proxy closed the connection (FIN or RST) before the client gave up.
    pub closed: bool,
}

impl Exchange {
    /// The only response, failing the test when there was not exactly one.
    pub fn response(&self) -> &RawResponse {
        assert_eq!(
            self.responses.len(),
            1,
            "expected exactly one response, got {:?}",
            String::from_utf8_lossy(&self.received)
        );
        &self.responses[0]
    }

    /// The status of the only response.
    pub fn status(&self) -> u16 {
        self.response().status
    }

    /// `received` as text, for assertion messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.received).into_owned()
    }
}

/// A raw TCP connection to the proxy.
pub struct RawClient {
    stream: TcpStream,
    received: Vec<u8>,
    closed: bool,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr)
            .await
            .expect("connect to the proxy");
        stream.set_nodelay(true).expect("nodelay");
        RawClient {
            stream,
            received: Vec::new(),
            closed: false,
        }
    }

    /// Writes `bytes` as they are. A write the proxy refuses (it closed
    /// already) is not an error: the test looks at what came back.
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok() && self.stream.flush().await.is_ok()
    }

    /// Reads until `deadline`, the connection's end, or `done` says enough.
    pub async fn read_until(&mut self, deadline: Instant, done: impl Fn(&[u8]) -> bool) {
        let mut buf = vec![0u8; 64 * 1024];
        while !self.closed && !done(&self.received) {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Err(_) => return,
                Ok(Ok(0)) | Ok(Err(_)) => self.closed = true,
                Ok(Ok(n)) => self.received.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Waits for `n` complete responses (or the connection's end, or
    /// [`PATIENCE`]), then up to [`LINGER`] for the connection to close.
    pub async fn responses(&mut self, n: usize) -> Exchange {
        let deadline = Instant::now() + PATIENCE;
        self.read_until(deadline, |b| parse_responses(b, false).len() >= n)
            .await;
        self.linger().await;
        self.exchange()
    }

    /// Waits up to [`LINGER`] for more bytes or the connection's end.
    pub async fn linger(&mut self) {
        let deadline = Instant::now() + LINGER;
        self.read_until(deadline, |_| false).await;
    }

    /// Waits up to `limit` for the proxy to close the connection.
    pub async fn wait_closed(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        self.read_until(deadline, |_| false).await;
        self.closed
    }

    /// Everything received so far.
    pub fn exchange(&self) -> Exchange {
        Exchange {
            received: self.received.clone(),
            responses: parse_responses(&self.received, self.closed),
            closed: self.closed,
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Every byte received so far.
    pub fn received(&self) -> &[u8] {
        &self.received
    }

    /// The underlying stream, for protocols spoken after an exchange.
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }
}

/// Sends `request` on a new connection and waits for one response.
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> Exchange {
    let mut client = RawClient::connect(addr).await;
    client.send(request).await;
    client.responses(1).await
}

// ---------------------------------------------------------------------------
// The recording upstream.
// ---------------------------------------------------------------------------

/// An upstream on `127.0.0.1:0` that records every byte and answers each
/// complete request with the same canned bytes.
pub struct RawUpstream {
    addr: SocketAddr,
    state: Arc<RawState>,
    accept: JoinHandle<()>,
}

struct RawState {
    reply: Vec<u8>,
    /// Every byte received, one entry per connection.
    received: Mutex<Vec<Vec<u8>>>,
    /// Complete requests received (head and body as sent).
    requests: Mutex<Vec<Vec<u8>>>,
    /// Bumped whenever anything arrives.
    activity: watch::Sender<usize>,
}

/// The length of the complete request at the start of `buf`, if it is complete.
fn complete_request(buf: &[u8]) -> Option<usize> {
    let end = head_end(buf)?;
    let (_, headers) = parse_head(&buf[..end])?;
    match framing(&headers, false, 0) {
        Framing::None | Framing::UntilClose => Some(end),
        Framing::Length(n) => (buf.len() >= end + n).then_some(end + n),
        Framing::Chunked => chunked_body(&buf[end..]).map(|(n, _)| end + n),
    }
}

impl RawUpstream {
    /// Answers every complete request with `reply`, exactly as given.
    pub async fn start(reply: impl Into<Vec<u8>>) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let state = Arc::new(RawState {
            reply: reply.into(),
            received: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
            activity: watch::channel(0).0,
        });
        let accept_state = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve_raw(stream, accept_state.clone()));
            }
        });
        RawUpstream {
            addr,
            state,
            accept,
        }
    }

    /// An upstream answering `200 ok`.
    pub async fn ok() -> RawUpstream {
        Self::start(&b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..]).await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every byte received, all connections one after the other.
    pub fn received(&self) -> Vec<u8> {
        self.state.received.lock().unwrap().concat()
    }

    /// `received` as text, for assertions and messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.received()).into_owned()
    }

    /// How many connections the proxy opened.
    pub fn connections(&self) -> usize {
        self.state.received.lock().unwrap().len()
    }

    /// The complete requests received, as bytes.
    pub fn requests(&self) -> Vec<Vec<u8>> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Waits up to `limit` for `n` complete requests; false when they did not come.
    pub async fn wait_for_requests(&self, n: usize, limit: Duration) -> bool {
        let mut activity = self.state.activity.subscribe();
        let state = self.state.clone();
        let reached = tokio::time::timeout(
            limit,
            activity.wait_for(|_| state.requests.lock().unwrap().len() >= n),
        )
        .await
        .is_ok();
        reached
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn serve_raw(mut stream: TcpStream, state: Arc<RawState>) {
    let index = {
        let mut received = state.received.lock().unwrap();
        received.push(Vec::new());
        received.len() - 1
    };
    state.activity.send_modify(|n| *n += 1);
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + PATIENCE;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => break,
        };
        state.received.lock().unwrap()[index].extend_from_slice(&buf[..n]);
        pending.extend_from_slice(&buf[..n]);
        while let Some(len) = complete_request(&pending) {
            let request: Vec<u8> = pending.drain(..len).collect();
            state.requests.lock().unwrap().push(request);
            if stream.write_all(&state.reply).await.is_err() {
                break;
            }
        }
        state.activity.send_modify(|n| *n += 1);
    }
    state.activity.send_modify(|n| *n += 1);
}

// ---------------------------------------------------------------------------
// HTTP/2 by hand.
// ---------------------------------------------------------------------------

pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const FRAME_DATA: u8 = 0;
pub const FRAME_HEADERS: u8 = 1;
pub const FRAME_RST_STREAM: u8 = 3;
pub const FRAME_SETTINGS: u8 = 4;
pub const FRAME_PING: u8 = 6;
pub const FRAME_GOAWAY: u8 = 7;
pub const FLAG_END_STREAM: u8 = 0x1;
pub const FLAG_ACK: u8 = 0x1;
pub const FLAG_END_HEADERS: u8 = 0x4;

/// One HTTP/2 frame.
#[derive(Clone, Debug)]
pub struct H2Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl H2Frame {
    pub fn encode(&self) -> Vec<u8> {
        let len = self.payload.len() as u32;
        let mut out = Vec::with_capacity(9 + self.payload.len());
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.push(self.kind);
        out.push(self.flags);
        out.extend_from_slice(&(self.stream & 0x7fff_ffff).to_be_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    /// The error code of a RST_STREAM or GOAWAY frame.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            FRAME_RST_STREAM => 0,
            FRAME_GOAWAY => 4,
            _ => return None,
        };
        let bytes = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes(bytes.try_into().ok()?))
    }
}

/// HPACK integer with an `n`-bit prefix whose high bits are `first`.
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// An HPACK block of literal fields, never indexed, no Huffman: every byte of
/// every name and value goes on the wire as given.
pub fn hpack(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x10);
        hpack_int(&mut out, 0, 7, name.len());
        out.extend_from_slice(name);
        hpack_int(&mut out, 0, 7, value.len());
        out.extend_from_slice(value);
    }
    out
}

/// The client's opening: preface, empty SETTINGS, then one HEADERS frame on
/// stream 1 that ends the stream.
/// A `GET /h2` for `example.test` over plain HTTP/2: the pseudo-headers, then
/// `extra`.
pub fn h2_get_fields<'a>(extra: &[(&'a [u8], &'a [u8])]) -> Vec<(&'a [u8], &'a [u8])> {
    let mut fields: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":authority", b"example.test"),
        (b":path", b"/h2"),
    ];
    fields.extend_from_slice(extra);
    fields
}

pub fn h2_request(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = H2_PREFACE.to_vec();
    out.extend(
        H2Frame {
            kind: FRAME_SETTINGS,
            flags: 0,
            stream: 0,
            payload: Vec::new(),
        }
        .encode(),
    );
    out.extend(
        H2Frame {
            kind: FRAME_HEADERS,
            flags: FLAG_END_STREAM | FLAG_END_HEADERS,
            stream: 1,
            payload: hpack(fields),
        }
        .encode(),
    );
    out
}

/// What the proxy did with stream 1.
#[derive(Debug)]
pub struct H2Outcome {
    /// Every frame received, in order.
    pub frames: Vec<H2Frame>,
    /// The proxy closed the TCP connection.
    pub closed: bool,
}

impl H2Outcome {
    /// True when the proxy answered stream 1 with response headers.
    pub fn answered(&self) -> bool {
        self.frames
            .iter()
            .any(|f| f.kind == FRAME_HEADERS && f.stream == 1)
    }

    /// True when stream 1 was reset, or the whole connection refused.
    pub fn refused(&self) -> bool {
        self.frames
            .iter()
            .any(|f| (f.kind == FRAME_RST_STREAM && f.stream == 1) || f.kind == FRAME_GOAWAY)
    }

    /// The `:status` of stream 1's response, when the server sent it as an
    /// indexed static-table field (200, 204, 206, 304, 400, 404, 500).
    pub fn indexed_status(&self) -> Option<u16> {
        let headers = self
            .frames
            .iter()
            .find(|f| f.kind == FRAME_HEADERS && f.stream == 1)?;
        headers.payload.iter().find_map(|&b| match b {
            0x88 => Some(200),
            0x89 => Some(204),
            0x8a => Some(206),
            0x8b => Some(304),
            0x8c => Some(400),
            0x8d => Some(404),
            0x8e => Some(500),
            _ => None,
        })
    }
}

/// Speaks HTTP/2 on a fresh connection: sends `opening`, acknowledges the
/// server's SETTINGS, and collects frames until stream 1 ends, the connection
/// is refused or closed, or [`PATIENCE`] runs out.
pub async fn h2_exchange(addr: SocketAddr, opening: &[u8]) -> H2Outcome {
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    if stream.write_all(opening).await.is_err() {
        return H2Outcome {
            frames: Vec::new(),
            closed: true,
        };
    }
    h2_read(&mut stream).await
}

/// Reads HTTP/2 frames from `stream`, acknowledging the server's SETTINGS, until
/// stream 1 ends, the connection is refused or closed, or [`PATIENCE`] runs out.
pub async fn h2_read(stream: &mut TcpStream) -> H2Outcome {
    let mut frames = Vec::new();
    let mut closed = false;
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + PATIENCE;
    'read: while !closed {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => break,
            Ok(Ok(0)) | Ok(Err(_)) => closed = true,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let frame = H2Frame {
                kind: buf[3],
                flags: buf[4],
                stream: u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff,
                payload: buf[9..9 + len].to_vec(),
            };
            buf.drain(..9 + len);
            if frame.kind == FRAME_SETTINGS && frame.flags & FLAG_ACK == 0 {
                let ack = H2Frame {
                    kind: FRAME_SETTINGS,
                    flags: FLAG_ACK,
                    stream: 0,
                    payload: Vec::new(),
                };
                let _ = stream.write_all(&ack.encode()).await;
            }
            let ends_stream_1 = frame.stream == 1
                && (frame.kind == FRAME_RST_STREAM
                    || (matches!(frame.kind, FRAME_HEADERS | FRAME_DATA)
                        && frame.flags & FLAG_END_STREAM != 0));
            let goaway = frame.kind == FRAME_GOAWAY;
            frames.push(frame);
            if ends_stream_1 || goaway {
                break 'read;
            }
        }
    }
    H2Outcome { frames, closed }
}
