//! Wire fixtures for the conformance corpus (`tests/conformance.rs`).
//!
//! - [`WireUpstream`]: a recording HTTP/1.1 origin that keeps every byte the proxy
//!   wrote, splits it into requests with its own strict parser, and answers each
//!   request with whatever a test's responder returns (by default an echo
//!   `METHOD TARGET|BODY`, so a response shows which request it answers).
//! - [`Conn`]: a raw client connection, and [`parse_client`], which splits what the
//!   proxy sent back into responses knowing the method each one answers (so a
//!   response to `HEAD` has no body) and counts each response's framing lines.
//! - A strict chunked decoder both sides share, and an HTTP/2 request with a body
//!   (the `:status` of an HTTP/2 response is `support::raw::H2Outcome::status`).
//!
//! Everything here is deliberately simple and strict: it exists to show what went
//! over each socket, not to be a general HTTP implementation.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::support::raw::{
    H2Frame, RawClient, FLAG_END_HEADERS, FLAG_END_STREAM, FRAME_DATA, FRAME_HEADERS,
    FRAME_SETTINGS, H2_PREFACE,
};

/// How long an upstream connection may sit idle before the upstream closes it.
const UPSTREAM_IDLE: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------
// Bytes for messages.
// ---------------------------------------------------------------------------

/// Bytes as an escaped string for failure messages, cut to `max` bytes.
pub fn show(bytes: &[u8], max: usize) -> String {
    let cut = bytes.len() > max;
    let shown = &bytes[..bytes.len().min(max)];
    let mut out = String::with_capacity(shown.len() + 16);
    for &b in shown {
        match b {
            b'\r' => out.push_str("\\r"),
            b'\n' => out.push_str("\\n"),
            b'\t' => out.push_str("\\t"),
            b'\\' => out.push_str("\\\\"),
            b'"' => out.push_str("\\\""),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    if cut {
        out.push_str(&format!("...(+{} bytes)", bytes.len() - max));
    }
    format!("\"{out}\"")
}

/// True when `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if from > hay.len() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

// ---------------------------------------------------------------------------
// Chunked bodies, strictly.
// ---------------------------------------------------------------------------

/// Decodes the chunked body at the start of `buf`: `Ok(Some((used, data)))` when
/// complete (trailers included), `Ok(None)` while incomplete, `Err` when the bytes
/// can never become a valid chunked body (RFC 9112 §7.1, no leniency).
pub fn decode_chunked(buf: &[u8]) -> Result<Option<(usize, Vec<u8>)>, String> {
    let mut at = 0;
    let mut data = Vec::new();
    loop {
        let Some(eol) = find(buf, b"\r\n", at) else {
            if buf.len() - at > 64 * 1024 {
                return Err("chunk-size line longer than 64 KiB".into());
            }
            return Ok(None);
        };
        let line = &buf[at..eol];
        if line.contains(&b'\r') || line.contains(&b'\n') {
            return Err(format!(
                "bare CR or LF in chunk-size line {}",
                show(line, 80)
            ));
        }
        let size_text = line.split(|&b| b == b';').next().unwrap_or(&[]);
        if size_text.is_empty() || !size_text.iter().all(u8::is_ascii_hexdigit) {
            return Err(format!("invalid chunk-size line {}", show(line, 80)));
        }
        let size = std::str::from_utf8(size_text)
            .ok()
            .and_then(|s| u64::from_str_radix(s, 16).ok())
            .ok_or_else(|| format!("chunk size overflows: {}", show(line, 80)))?;
        at = eol + 2;
        if size == 0 {
            // Trailer fields, then an empty line.
            loop {
                let Some(end) = find(buf, b"\r\n", at) else {
                    return Ok(None);
                };
                let empty = end == at;
                at = end + 2;
                if empty {
                    return Ok(Some((at, data)));
                }
            }
        }
        let size = usize::try_from(size).map_err(|_| "chunk size too large".to_string())?;
        if size > 64 * 1024 * 1024 {
            return Err(format!("chunk size {size} is absurd"));
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        data.extend_from_slice(&buf[at..at + size]);
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        at += size + 2;
    }
}

// ---------------------------------------------------------------------------
// The recording upstream.
// ---------------------------------------------------------------------------

/// One request as the upstream read it off the wire.
#[derive(Clone, Debug)]
pub struct WireRequest {
    /// Which upstream connection (0-based, in accept order) carried it.
    pub conn: usize,
    pub method: String,
    pub target: String,
    pub version: String,
    /// Header lines in order: the name exactly as sent, the value with its
    /// surrounding spaces and tabs removed.
    pub lines: Vec<(String, Vec<u8>)>,
    /// The body, de-chunked when it came chunked.
    pub body: Vec<u8>,
    /// The request's bytes exactly as received (head and body).
    pub raw: Vec<u8>,
}

impl WireRequest {
    /// Every value of header `name` (compared case-insensitively, byte for byte).
    pub fn values(&self, name: &str) -> Vec<String> {
        self.lines
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    /// The framing lines (`content-length` / `transfer-encoding`), as sent.
    pub fn framing_lines(&self) -> Vec<String> {
        self.lines
            .iter()
            .filter(|(n, _)| {
                n.eq_ignore_ascii_case("content-length")
                    || n.eq_ignore_ascii_case("transfer-encoding")
            })
            .map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v)))
            .collect()
    }

    /// The head as text, for messages.
    pub fn head(&self) -> String {
        let end = find(&self.raw, b"\r\n\r\n", 0).map_or(self.raw.len(), |i| i + 4);
        show(&self.raw[..end], 2000)
    }
}

/// Parses the request at the start of `buf`: `Ok(None)` while incomplete.
fn parse_wire_request(buf: &[u8], conn: usize) -> Result<Option<(WireRequest, usize)>, String> {
    let Some(head_end) = find(buf, b"\r\n\r\n", 0) else {
        if buf.len() > 1024 * 1024 {
            return Err("no end of head in 1 MiB".into());
        }
        return Ok(None);
    };
    let head = &buf[..head_end];
    let mut lines = Vec::new();
    let mut at = 0;
    while at <= head.len() {
        let end = find(head, b"\r\n", at).unwrap_or(head.len());
        lines.push(&head[at..end]);
        at = end + 2;
    }
    for line in &lines {
        if line.contains(&b'\r') || line.contains(&b'\n') {
            return Err(format!("bare CR or LF in a head line {}", show(line, 200)));
        }
    }
    let start = String::from_utf8_lossy(lines[0]).into_owned();
    let mut parts = start.splitn(3, ' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("malformed request line {}", show(lines[0], 200)));
    };
    let mut fields = Vec::new();
    for line in &lines[1..] {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(format!("header line without a colon {}", show(line, 200)));
        };
        let name = String::from_utf8_lossy(&line[..colon]).into_owned();
        let value = line[colon + 1..].trim_ascii().to_vec();
        fields.push((name, value));
    }
    let body_start = head_end + 4;
    let te: Vec<&Vec<u8>> = fields
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"))
        .map(|(_, v)| v)
        .collect();
    let cl: Vec<&Vec<u8>> = fields
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v)
        .collect();
    let (used, body) = if !te.is_empty() {
        if te.len() != 1 || !te[0].eq_ignore_ascii_case(b"chunked") {
            return Err(format!(
                "a transfer-encoding the origin cannot frame: {te:?} in {}",
                show(head, 2000)
            ));
        }
        match decode_chunked(&buf[body_start..])? {
            None => return Ok(None),
            Some((used, data)) => (used, data),
        }
    } else if let Some(value) = cl.first() {
        let n: usize = std::str::from_utf8(value)
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("invalid content-length {}", show(value, 80)))?;
        if buf.len() < body_start + n {
            return Ok(None);
        }
        (n, buf[body_start..body_start + n].to_vec())
    } else {
        (0, Vec::new())
    };
    let total = body_start + used;
    Ok(Some((
        WireRequest {
            conn,
            method: method.to_owned(),
            target: target.to_owned(),
            version: version.to_owned(),
            lines: fields,
            body,
            raw: buf[..total].to_vec(),
        },
        total,
    )))
}

/// What the upstream writes back for one request.
pub struct Answer {
    pub bytes: Vec<u8>,
    /// Close the connection after writing.
    pub close: bool,
}

impl Answer {
    /// `200 OK` whose body is `METHOD TARGET|BODY` (no body for `HEAD`).
    pub fn echo(req: &WireRequest) -> Answer {
        let mut body = format!("{} {}|", req.method, req.target).into_bytes();
        body.extend_from_slice(&req.body);
        let mut bytes = Vec::new();
        if req.method == "HEAD" {
            bytes.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        } else {
            bytes.extend_from_slice(
                format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).as_bytes(),
            );
            bytes.extend_from_slice(&body);
        }
        Answer {
            bytes,
            close: false,
        }
    }
}

/// The body [`Answer::echo`] sends for a request.
pub fn echo_body(method: &str, target: &str, body: &[u8]) -> Vec<u8> {
    if method == "HEAD" {
        return Vec::new();
    }
    let mut out = format!("{method} {target}|").into_bytes();
    out.extend_from_slice(body);
    out
}

type Responder = dyn Fn(&WireRequest) -> Answer + Send + Sync;

struct WireState {
    responder: Box<Responder>,
    /// Every byte received, one entry per connection.
    received: Mutex<Vec<Vec<u8>>>,
    requests: Mutex<Vec<WireRequest>>,
    /// Bytes the upstream could not read as HTTP/1.1 (it closed the connection).
    errors: Mutex<Vec<String>>,
    activity: watch::Sender<usize>,
}

/// A recording origin on `127.0.0.1:0`.
pub struct WireUpstream {
    addr: SocketAddr,
    state: Arc<WireState>,
    accept: JoinHandle<()>,
}

impl WireUpstream {
    pub async fn start(responder: impl Fn(&WireRequest) -> Answer + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let state = Arc::new(WireState {
            responder: Box::new(responder),
            received: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
            errors: Mutex::new(Vec::new()),
            activity: watch::channel(0).0,
        });
        let accept_state = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve_wire(stream, accept_state.clone()));
            }
        });
        WireUpstream {
            addr,
            state,
            accept,
        }
    }

    /// An origin answering every request with [`Answer::echo`].
    pub async fn echo() -> Self {
        Self::start(Answer::echo).await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<WireRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Every byte received, all connections one after the other.
    pub fn received(&self) -> Vec<u8> {
        self.state.received.lock().unwrap().concat()
    }

    pub fn connections(&self) -> usize {
        self.state.received.lock().unwrap().len()
    }

    pub fn errors(&self) -> Vec<String> {
        self.state.errors.lock().unwrap().clone()
    }

    /// Waits up to `limit` for `n` complete requests.
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

    /// What the upstream got, for failure messages.
    pub fn describe(&self) -> String {
        let received = self.received();
        let mut out = format!(
            "{} connection(s), {} complete request(s), {} byte(s): {}",
            self.connections(),
            self.requests().len(),
            received.len(),
            show(&received, 1500)
        );
        for e in self.errors() {
            out.push_str(&format!("\n      upstream could not read: {e}"));
        }
        out
    }
}

impl Drop for WireUpstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn serve_wire(mut stream: TcpStream, state: Arc<WireState>) {
    let index = {
        let mut received = state.received.lock().unwrap();
        received.push(Vec::new());
        received.len() - 1
    };
    state.activity.send_modify(|n| *n += 1);
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    'conn: loop {
        let n = match tokio::time::timeout(UPSTREAM_IDLE, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => break,
        };
        state.received.lock().unwrap()[index].extend_from_slice(&buf[..n]);
        pending.extend_from_slice(&buf[..n]);
        loop {
            match parse_wire_request(&pending, index) {
                Ok(None) => break,
                Ok(Some((request, used))) => {
                    pending.drain(..used);
                    let answer = (state.responder)(&request);
                    state.requests.lock().unwrap().push(request);
                    state.activity.send_modify(|n| *n += 1);
                    if stream.write_all(&answer.bytes).await.is_err() {
                        break 'conn;
                    }
                    let _ = stream.flush().await;
                    if answer.close {
                        let _ = stream.shutdown().await;
                        break 'conn;
                    }
                }
                Err(e) => {
                    state.errors.lock().unwrap().push(e);
                    break 'conn;
                }
            }
        }
        state.activity.send_modify(|n| *n += 1);
    }
    state.activity.send_modify(|n| *n += 1);
}

// ---------------------------------------------------------------------------
// The client side: a raw connection and a method-aware response parser.
// ---------------------------------------------------------------------------

/// One response as the client read it.
#[derive(Clone, Debug)]
pub struct Resp {
    pub status: u16,
    /// Header names lower-cased, values trimmed, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// How many `content-length` / `transfer-encoding` lines the head carried.
    pub framing_lines: usize,
}

impl Resp {
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn is_final(&self) -> bool {
        self.status >= 200 || self.status == 101
    }

    /// `name=value` of the session cookie this response sets, if any.
    pub fn session_cookie(&self, cookie: &str) -> Option<String> {
        self.header_all("set-cookie").into_iter().find_map(|v| {
            let pair = v.split(';').next()?.trim();
            let (name, _) = pair.split_once('=')?;
            (name == cookie || name == format!("__Host-{cookie}")).then(|| pair.to_owned())
        })
    }

    pub fn short(&self) -> String {
        format!("{} {}", self.status, show(&self.body, 200))
    }
}

/// What the client got, split into responses.
#[derive(Debug, Default)]
pub struct ClientView {
    /// Final responses (and a 101), in order.
    pub finals: Vec<Resp>,
    /// Interim 1xx responses (other than 101), in order.
    pub interim: Vec<Resp>,
    /// Bytes that could not be read as a response.
    pub error: Option<String>,
}

/// Splits `buf` into responses; the n-th final response answers a request whose
/// method is `methods[n]` (`GET` past the end). With `eof`, a response without
/// framing takes the rest.
pub fn parse_client(buf: &[u8], methods: &[&str], eof: bool) -> ClientView {
    let mut view = ClientView::default();
    let mut at = 0;
    while at < buf.len() {
        let Some(end) = find(buf, b"\r\n\r\n", at) else {
            if eof {
                view.error = Some(format!("trailing bytes {}", show(&buf[at..], 300)));
            }
            break;
        };
        let head = &buf[at..end];
        let text = String::from_utf8_lossy(head);
        let mut lines = text.split("\r\n");
        let start = lines.next().unwrap_or("");
        let status = if start.starts_with("HTTP/1.1 ") || start.starts_with("HTTP/1.0 ") {
            start[9..]
                .get(..3)
                .and_then(|s| s.parse::<u16>().ok())
                .unwrap_or(0)
        } else {
            0
        };
        if status == 0 {
            view.error = Some(format!("not a status line: {}", show(head, 300)));
            break;
        }
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap_or((l, ""));
                (n.trim().to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        let framing_lines = headers
            .iter()
            .filter(|(n, _)| n == "content-length" || n == "transfer-encoding")
            .count();
        let method = methods.get(view.finals.len()).copied().unwrap_or("GET");
        let body_at = end + 4;
        let interim = (100..200).contains(&status) && status != 101;
        let bodiless =
            interim || status == 101 || status == 204 || status == 304 || method == "HEAD";
        let te: Vec<&str> = headers
            .iter()
            .filter(|(n, _)| n == "transfer-encoding")
            .map(|(_, v)| v.as_str())
            .collect();
        let cl: Vec<&str> = headers
            .iter()
            .filter(|(n, _)| n == "content-length")
            .map(|(_, v)| v.as_str())
            .collect();
        let (used, body) = if bodiless {
            (0, Vec::new())
        } else if !te.is_empty() {
            if te.len() != 1 || !te[0].eq_ignore_ascii_case("chunked") || !cl.is_empty() {
                view.error = Some(format!("ambiguous framing in {}", show(head, 300)));
                break;
            }
            match decode_chunked(&buf[body_at..]) {
                Ok(Some(done)) => done,
                Ok(None) => break,
                Err(e) => {
                    view.error = Some(format!("bad chunked body: {e}"));
                    break;
                }
            }
        } else if !cl.is_empty() {
            let Some(n) = cl[0].parse::<usize>().ok().filter(|_| cl.len() == 1) else {
                view.error = Some(format!("bad content-length in {}", show(head, 300)));
                break;
            };
            if buf.len() < body_at + n {
                break;
            }
            (n, buf[body_at..body_at + n].to_vec())
        } else if eof {
            (buf.len() - body_at, buf[body_at..].to_vec())
        } else {
            break;
        };
        let resp = Resp {
            status,
            headers,
            body,
            framing_lines,
        };
        at = body_at + used;
        if interim {
            view.interim.push(resp);
        } else {
            view.finals.push(resp);
            if status == 101 {
                break;
            }
        }
    }
    view
}

/// A raw client connection to the proxy, read as a corpus case needs.
pub struct Conn(RawClient);

impl Conn {
    pub async fn connect(addr: SocketAddr) -> Conn {
        Conn(RawClient::connect(addr).await)
    }

    /// Writes `bytes`; a refused write (the proxy closed already) is not an error.
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        self.0.send(bytes).await
    }

    pub fn received(&self) -> &[u8] {
        self.0.received()
    }

    pub fn closed(&self) -> bool {
        self.0.is_closed()
    }

    async fn read_until(&mut self, deadline: Instant, done: impl Fn(&[u8]) -> bool) {
        self.0.read_until(deadline, done).await
    }

    /// Waits up to `limit` until `n` final responses (answering `methods`) are
    /// complete, or the connection ends.
    pub async fn wait_finals(&mut self, methods: &[&str], n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        self.read_until(deadline, |b| {
            let view = parse_client(b, methods, false);
            view.finals.len() >= n || view.error.is_some()
        })
        .await;
    }

    /// Reads for up to `limit` more, or until the connection ends.
    pub async fn linger(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        self.read_until(deadline, |_| false).await;
    }

    pub fn view(&self, methods: &[&str]) -> ClientView {
        parse_client(self.received(), methods, self.closed())
    }
}

// ---------------------------------------------------------------------------
// HTTP/2.
// ---------------------------------------------------------------------------

/// The client's opening: preface, empty SETTINGS, HEADERS on stream 1 (not
/// ending the stream), then one DATA frame carrying `data` that ends it.
pub fn h2_request_with_body(fields: &[(&[u8], &[u8])], data: &[u8]) -> Vec<u8> {
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
            flags: FLAG_END_HEADERS,
            stream: 1,
            payload: super::support::raw::hpack(fields),
        }
        .encode(),
    );
    out.extend(
        H2Frame {
            kind: FRAME_DATA,
            flags: FLAG_END_STREAM,
            stream: 1,
            payload: data.to_vec(),
        }
        .encode(),
    );
    out
}
