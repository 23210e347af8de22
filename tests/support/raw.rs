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
        self.responses_within(n, PATIENCE).await
    }

    /// Like [`RawClient::responses`], waiting up to `limit` for the responses.
    pub async fn responses_within(&mut self, n: usize, limit: Duration) -> Exchange {
        let deadline = Instant::now() + limit;
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
pub const FRAME_CONTINUATION: u8 = 9;
pub const FLAG_END_STREAM: u8 = 0x1;
pub const FLAG_ACK: u8 = 0x1;
pub const FLAG_END_HEADERS: u8 = 0x4;
/// Error codes of RST_STREAM and GOAWAY (RFC 9113 §7).
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const REFUSED_STREAM: u32 = 0x7;
pub const CANCEL: u32 = 0x8;
/// The largest frame payload a peer accepts before its SETTINGS say otherwise.
const MAX_FRAME_PAYLOAD: usize = 16_384;
/// SETTINGS_HEADER_TABLE_SIZE and SETTINGS_MAX_CONCURRENT_STREAMS (RFC 9113 §6.5.2).
const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;

/// Anything a raw client can speak over: TCP, or TLS over TCP.
pub trait Wire: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Wire for T {}

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

    /// True when this frame ends `stream`: a reset, or HEADERS or DATA with END_STREAM.
    fn ends(&self, stream: u32) -> bool {
        self.stream == stream
            && (self.kind == FRAME_RST_STREAM
                || (matches!(self.kind, FRAME_HEADERS | FRAME_DATA)
                    && self.flags & FLAG_END_STREAM != 0))
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

/// The HPACK integer with an `n`-bit prefix at the start of `p`, and how many
/// bytes it took.
fn hpack_int_at(p: &[u8], n: u32) -> Option<(usize, usize)> {
    let max = (1usize << n) - 1;
    let mut value = usize::from(*p.first()?) & max;
    if value < max {
        return Some((value, 1));
    }
    for (i, &b) in p.iter().enumerate().skip(1).take(4) {
        value += usize::from(b & 0x7f) << (7 * (i - 1));
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
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

/// Huffman-coded decimal digits (RFC 7541 Appendix B: `0`-`2` are 5 bits,
/// `3`-`9` are 6 bits), padded with ones.
fn huffman_digits(bytes: &[u8]) -> Option<String> {
    let bits: Vec<u8> = bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let value = |from: usize, n: usize| -> Option<u8> {
        bits.get(from..from + n)
            .map(|s| s.iter().fold(0u8, |acc, &b| (acc << 1) | b))
    };
    let mut out = String::new();
    let mut at = 0;
    while at < bits.len() {
        if bits[at..].iter().all(|&b| b == 1) && bits.len() - at < 8 {
            break;
        }
        match value(at, 5)? {
            v @ 0..=2 => {
                out.push((b'0' + v) as char);
                at += 5;
            }
            _ => {
                let v = value(at, 6)?;
                if !(0b011001..=0b011111).contains(&v) {
                    return None;
                }
                out.push((b'0' + 3 + (v - 0b011001)) as char);
                at += 6;
            }
        }
    }
    Some(out)
}

/// The `:status` at the head of a response's header block (where h2 puts it):
/// indexed, or a literal with an indexed `:status` name and a plain or
/// Huffman-coded value, after any dynamic table size updates. A status kept in
/// the dynamic table is not read: [`H2Conn`] sets the table size to 0.
fn status_of(block: &[u8]) -> Option<u16> {
    let mut p = block;
    while p.first().is_some_and(|b| b & 0xe0 == 0x20) {
        let (_, used) = hpack_int_at(p, 5)?;
        p = &p[used..];
    }
    let first = *p.first()?;
    if first & 0x80 != 0 {
        let (index, _) = hpack_int_at(p, 7)?;
        return [200, 204, 206, 304, 400, 404, 500]
            .get(index.checked_sub(8)?)
            .copied();
    }
    // Literal with incremental indexing (01xxxxxx), without indexing (0000xxxx)
    // or never indexed (0001xxxx), name from the static table (:status is 8-14).
    let (index, used) = if first & 0xc0 == 0x40 {
        hpack_int_at(p, 6)?
    } else if first & 0xe0 == 0x00 {
        hpack_int_at(p, 4)?
    } else {
        return None;
    };
    if !(8..=14).contains(&index) {
        return None;
    }
    let p = &p[used..];
    let huffman = *p.first()? & 0x80 != 0;
    let (len, used) = hpack_int_at(p, 7)?;
    let value = p.get(used..used + len)?;
    let text = if huffman {
        huffman_digits(value)?
    } else {
        String::from_utf8(value.to_vec()).ok()?
    };
    text.parse().ok()
}

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

/// The client's opening: preface, empty SETTINGS, then one HEADERS frame on
/// stream 1 that ends the stream.
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

/// What the proxy did with one stream (stream 1 unless said otherwise).
#[derive(Debug)]
pub struct H2Outcome {
    /// The stream the methods below look at.
    pub stream: u32,
    /// Every frame received on the connection, in order.
    pub frames: Vec<H2Frame>,
    /// The proxy closed the TCP connection.
    pub closed: bool,
}

impl H2Outcome {
    /// True when the proxy answered the stream with response headers.
    pub fn answered(&self) -> bool {
        self.frames
            .iter()
            .any(|f| f.kind == FRAME_HEADERS && f.stream == self.stream)
    }

    /// True when the stream was reset, or the whole connection refused.
    pub fn refused(&self) -> bool {
        self.reset_code().is_some() || self.goaway().is_some()
    }

    /// The error code of the stream's RST_STREAM, if it was reset.
    pub fn reset_code(&self) -> Option<u32> {
        self.frames
            .iter()
            .find(|f| f.kind == FRAME_RST_STREAM && f.stream == self.stream)
            .and_then(H2Frame::error_code)
    }

    /// The error code of a GOAWAY, if the proxy sent one.
    pub fn goaway(&self) -> Option<u32> {
        self.frames
            .iter()
            .find(|f| f.kind == FRAME_GOAWAY)
            .and_then(H2Frame::error_code)
    }

    /// The stream's `:status`, when the server sent it as an indexed
    /// static-table field (200, 204, 206, 304, 400, 404, 500).
    pub fn indexed_status(&self) -> Option<u16> {
        let headers = self
            .frames
            .iter()
            .find(|f| f.kind == FRAME_HEADERS && f.stream == self.stream)?;
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

    /// The stream's `:status`: indexed, or a literal with a plain or
    /// Huffman-coded value (see [`status_of`]).
    pub fn status(&self) -> Option<u16> {
        let headers = self
            .frames
            .iter()
            .find(|f| f.kind == FRAME_HEADERS && f.stream == self.stream)?;
        status_of(&headers.payload)
    }

    /// Every frame received, one line each, for failure messages.
    pub fn describe(&self) -> String {
        let frames: Vec<String> = self
            .frames
            .iter()
            .map(|f| {
                let mut s = format!(
                    "kind={} flags={:#x} stream={} len={}",
                    f.kind,
                    f.flags,
                    f.stream,
                    f.payload.len()
                );
                if let Some(code) = f.error_code() {
                    s.push_str(&format!(" error={code}"));
                }
                if f.kind == FRAME_HEADERS {
                    s.push_str(&format!(" status={:?}", status_of(&f.payload)));
                }
                s
            })
            .collect();
        format!("[{}] (closed: {})", frames.join("; "), self.closed)
    }

    /// The stream's DATA, concatenated.
    pub fn body(&self) -> Vec<u8> {
        self.frames
            .iter()
            .filter(|f| f.kind == FRAME_DATA && f.stream == self.stream)
            .flat_map(|f| f.payload.iter().copied())
            .collect()
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
            stream: 1,
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
    let deadline = Instant::now() + PATIENCE;
    let closed = read_frames(stream, &mut Vec::new(), &mut frames, deadline, |f| {
        f.ends(1) || f.kind == FRAME_GOAWAY
    })
    .await;
    H2Outcome {
        stream: 1,
        frames,
        closed,
    }
}

/// Reads frames from `io` into `frames`, acknowledging the server's SETTINGS,
/// until `done` holds for a frame, the connection closes, or `deadline`.
/// `buf` keeps the bytes of a frame not yet complete. True when closed.
async fn read_frames<S: Wire + ?Sized>(
    io: &mut S,
    buf: &mut Vec<u8>,
    frames: &mut Vec<H2Frame>,
    deadline: Instant,
    done: impl Fn(&H2Frame) -> bool,
) -> bool {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
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
                let _ = io.write_all(&ack.encode()).await;
            }
            let enough = done(&frame);
            frames.push(frame);
            if enough {
                return false;
            }
        }
        match tokio::time::timeout_at(deadline, io.read(&mut chunk)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A hand-driven HTTP/2 client connection over TCP or TLS: the test chooses
/// every frame, so it can send what an HTTP/2 library refuses to, on as many
/// streams as it likes. It asks for an HPACK table of size 0, so that every
/// response's `:status` can be read (see [`H2Outcome::status`]).
pub struct H2Conn {
    io: Box<dyn Wire>,
    buf: Vec<u8>,
    frames: Vec<H2Frame>,
    closed: bool,
    last_stream: u32,
}

impl H2Conn {
    /// Sends the preface and the client's SETTINGS on `io`.
    pub async fn open(io: impl Wire + 'static) -> H2Conn {
        let mut settings = SETTINGS_HEADER_TABLE_SIZE.to_be_bytes().to_vec();
        settings.extend_from_slice(&0u32.to_be_bytes());
        let mut conn = H2Conn {
            io: Box::new(io),
            buf: Vec::new(),
            frames: Vec::new(),
            closed: false,
            last_stream: 0,
        };
        let mut opening = H2_PREFACE.to_vec();
        opening.extend(
            H2Frame {
                kind: FRAME_SETTINGS,
                flags: 0,
                stream: 0,
                payload: settings,
            }
            .encode(),
        );
        assert!(conn.write(&opening).await, "the proxy refused the preface");
        conn
    }

    /// Reads frames until one received (now or before) satisfies `done`, the
    /// connection closes, or `limit` passes.
    async fn read_until(&mut self, limit: Duration, done: impl Fn(&H2Frame) -> bool) {
        if !self.closed && !self.frames.iter().any(&done) {
            let deadline = Instant::now() + limit;
            let (io, buf, frames) = (&mut self.io, &mut self.buf, &mut self.frames);
            self.closed = read_frames(io, buf, frames, deadline, done).await;
        }
    }

    /// The value the server's SETTINGS give `id`, waiting up to [`PATIENCE`]
    /// for them.
    pub async fn server_setting(&mut self, id: u16) -> Option<u32> {
        let settings = |f: &H2Frame| f.kind == FRAME_SETTINGS && f.flags & FLAG_ACK == 0;
        self.read_until(PATIENCE, settings).await;
        let frame = self.frames.iter().find(|f| settings(f))?;
        frame
            .payload
            .chunks_exact(6)
            .find(|s| u16::from_be_bytes([s[0], s[1]]) == id)
            .map(|s| u32::from_be_bytes([s[2], s[3], s[4], s[5]]))
    }

    /// The next client stream id: 1, 3, 5...
    pub fn new_stream(&mut self) -> u32 {
        self.last_stream = if self.last_stream == 0 {
            1
        } else {
            self.last_stream + 2
        };
        self.last_stream
    }

    /// Writes `bytes`; false when the proxy has closed the connection.
    pub async fn write(&mut self, bytes: &[u8]) -> bool {
        self.io.write_all(bytes).await.is_ok() && self.io.flush().await.is_ok()
    }

    /// A header block on `stream`: one HEADERS frame, then CONTINUATION frames
    /// when the block is larger than a frame may be.
    pub async fn headers(
        &mut self,
        stream: u32,
        fields: &[(&[u8], &[u8])],
        end_stream: bool,
    ) -> bool {
        let block = hpack(fields);
        let pieces: Vec<&[u8]> = block.chunks(MAX_FRAME_PAYLOAD).collect();
        let mut bytes = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            let last = i + 1 == pieces.len();
            let (kind, mut flags) = if i == 0 {
                (FRAME_HEADERS, if end_stream { FLAG_END_STREAM } else { 0 })
            } else {
                (FRAME_CONTINUATION, 0)
            };
            if last {
                flags |= FLAG_END_HEADERS;
            }
            bytes.extend(
                H2Frame {
                    kind,
                    flags,
                    stream,
                    payload: piece.to_vec(),
                }
                .encode(),
            );
        }
        self.write(&bytes).await
    }

    /// `data` on `stream`, in frames no larger than a frame may be.
    pub async fn data(&mut self, stream: u32, data: &[u8], end_stream: bool) -> bool {
        let pieces: Vec<&[u8]> = data.chunks(MAX_FRAME_PAYLOAD).collect();
        let mut bytes = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            let last = i + 1 == pieces.len();
            bytes.extend(
                H2Frame {
                    kind: FRAME_DATA,
                    flags: if last && end_stream {
                        FLAG_END_STREAM
                    } else {
                        0
                    },
                    stream,
                    payload: piece.to_vec(),
                }
                .encode(),
            );
        }
        self.write(&bytes).await
    }

    /// Cancels `stream` with RST_STREAM carrying `code`.
    pub async fn reset(&mut self, stream: u32, code: u32) -> bool {
        let frame = H2Frame {
            kind: FRAME_RST_STREAM,
            flags: 0,
            stream,
            payload: code.to_be_bytes().to_vec(),
        };
        self.write(&frame.encode()).await
    }

    /// Waits up to `limit` for `stream` to end (or a GOAWAY, or the connection's
    /// end) and tells what happened to it.
    pub async fn outcome_within(&mut self, stream: u32, limit: Duration) -> H2Outcome {
        self.read_until(limit, |f| f.ends(stream) || f.kind == FRAME_GOAWAY)
            .await;
        H2Outcome {
            stream,
            frames: self.frames.clone(),
            closed: self.closed,
        }
    }

    /// [`H2Conn::outcome_within`] [`PATIENCE`].
    pub async fn outcome(&mut self, stream: u32) -> H2Outcome {
        self.outcome_within(stream, PATIENCE).await
    }

    /// Sends `fields` as a request without a body on a new stream and waits for
    /// its outcome.
    pub async fn request(&mut self, fields: &[(&[u8], &[u8])]) -> H2Outcome {
        let stream = self.new_stream();
        self.headers(stream, fields, true).await;
        self.outcome(stream).await
    }
}
