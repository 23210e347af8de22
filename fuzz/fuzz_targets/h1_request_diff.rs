//! Differential: arbitrary client bytes through the REAL proxy (HTTP/1 path,
//! and hyper's h2c path when the input opens with the HTTP/2 preface), checked
//! against a parser written here.
//!
//! Once per process: a tokio runtime, a recording upstream (raw `TcpListener`;
//! heads by `httparse`, bodies by the framing code of this file, never
//! `sessiongate::h1::codec`) and the proxy in front of it. Per input: one client
//! connection writes the input, sends its FIN and reads until the proxy closes.
//! Then, with the input parsed independently as a sequence of HTTP/1.1 requests
//! (ambiguous framing refused, as RFC 9112 §6 requires):
//!
//! - each upstream answer (`X-Seq: k`, k counting this input's answers) reaches
//!   the client in order, as the response to the request the upstream got: the
//!   request at that position in the input, with the same method, target (as
//!   sent in origin form; an absolute-form target as its path and query) and
//!   body, byte for byte;
//! - the upstream gets nothing else: a request the client got no answer for is
//!   smuggled, except one cut short when the proxy gave up on its body;
//! - the proxy's own answers (400, 408, 413, 431, ...) stand only for requests
//!   it did not forward whole; a 504 means it waited for an answer to a request
//!   the upstream never saw the end of;
//! - no client header named like the session prefix (case-insensitive, `_` read
//!   as `-`) reaches the upstream: only the proxy's own `x-session-id` (43
//!   base64url characters found nowhere in the input) and `x-session-new: true`;
//!   never `X-Session-Data` (every session here is new and empty);
//! - every message the upstream reads has at most one framing header, and the
//!   body it carries agrees with it;
//! - the proxy closes the client connection within 8 s, and never panics (every
//!   panic aborts the process).
#![no_main]

mod h1diff;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use h1diff::{cgi_name, dechunk, decimal, list, show, values, Dechunked, Lines, Resp};
use libfuzzer_sys::fuzz_target;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::runtime::Runtime;

// ---------------------------------------------------------------------------
// The recording upstream.
// ---------------------------------------------------------------------------

/// One request as the upstream read it.
#[derive(Clone, Debug)]
struct UpMsg {
    /// The input it belongs to.
    generation: u64,
    method: Vec<u8>,
    target: Vec<u8>,
    lines: Lines,
    /// The body as decoded so far.
    body: Vec<u8>,
    /// Read to the end its framing gives.
    complete: bool,
    /// The `X-Seq` it was answered with.
    seq: Option<u64>,
    /// What the upstream could not read (the message, and its connection, end here).
    error: Option<String>,
}

/// How the body of the message being read is delimited.
#[derive(Clone, Copy, Debug)]
enum UpBody {
    Length(usize),
    Chunked,
}

struct Reading {
    msg: Arc<Mutex<UpMsg>>,
    body: UpBody,
}

#[derive(Default)]
struct ConnState {
    /// Bytes read and not yet part of a finished message.
    buf: Vec<u8>,
    reading: Option<Reading>,
    eof: bool,
    /// The upstream stopped reading this connection (malformed input).
    dead: bool,
    outbox: Vec<u8>,
    write_failed: bool,
}

struct Conn {
    stream: TcpStream,
    state: Mutex<ConnState>,
}

#[derive(Default)]
struct Record {
    generation: u64,
    msgs: Vec<Arc<Mutex<UpMsg>>>,
    answered: u64,
}

struct Upstream {
    listener: AsyncFd<std::net::TcpListener>,
    /// Held across accept-and-register, so that [`Upstream::settle`] sees every
    /// connection the kernel accepted.
    accepting: Mutex<()>,
    conns: Mutex<Vec<Arc<Conn>>>,
    record: Mutex<Record>,
}

impl Upstream {
    fn bind() -> Upstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("upstream bind");
        listener.set_nonblocking(true).expect("nonblocking");
        // SAFETY: the AsyncFd owns the listener, so its descriptor stays open
        // and the same for the AsyncFd's whole life.
        let listener = unsafe { AsyncFd::register(listener) }
            .unwrap_or_else(|_| panic!("cannot register the upstream listener"));
        Upstream {
            listener,
            accepting: Mutex::new(()),
            conns: Mutex::new(Vec::new()),
            record: Mutex::new(Record::default()),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.listener.get_ref().local_addr().expect("upstream addr")
    }

    /// Accepts what the kernel holds; call inside the runtime.
    /// Accepts every connection waiting; returns how many.
    fn accept_pending(&'static self) -> usize {
        let _held = self.accepting.lock().unwrap();
        let mut n = 0;
        while let Ok((s, _)) = self.listener.get_ref().accept() {
            self.register(s);
            n += 1;
        }
        n
    }

    fn register(&'static self, s: std::net::TcpStream) {
        let _ = s.set_nonblocking(true);
        let _ = s.set_nodelay(true);
        let Ok(stream) = TcpStream::from_std(s) else {
            return;
        };
        let conn = Arc::new(Conn {
            stream,
            state: Mutex::new(ConnState::default()),
        });
        self.conns.lock().unwrap().push(conn.clone());
        tokio::spawn(self.serve(conn));
    }

    async fn accept_loop(&'static self) {
        loop {
            let Ok(mut ready) = self.listener.readable().await else {
                return;
            };
            let _ = ready.try_io(|l| {
                let _held = self.accepting.lock().unwrap();
                let (s, _) = l.get_ref().accept()?;
                self.register(s);
                Ok(())
            });
        }
    }

    async fn serve(&'static self, conn: Arc<Conn>) {
        loop {
            let want_write = {
                let st = conn.state.lock().unwrap();
                !st.outbox.is_empty() && !st.write_failed
            };
            let interest = if want_write {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if conn.stream.ready(interest).await.is_err() {
                conn.state.lock().unwrap().eof = true;
            }
            self.drain(&conn, false);
            let st = conn.state.lock().unwrap();
            if (st.eof || st.dead) && (st.outbox.is_empty() || st.write_failed || st.dead) {
                break;
            }
        }
        self.conns
            .lock()
            .unwrap()
            .retain(|c| !Arc::ptr_eq(c, &conn));
        // The last reference closes the socket.
    }

    /// Reads what the kernel holds for `conn`, reads messages out of it, answers
    /// them. Both the connection's task and [`Upstream::settle`] call this.
    /// Reads what the socket holds, parses it and writes the answers.
    ///
    /// `raw` (for [`Upstream::settle`]): read with a plain `recv`. tokio's
    /// `try_read` answers `WouldBlock` without asking the kernel while its
    /// reactor has not yet seen the socket readable, and bytes already waiting
    /// would look like none. The connection's own task reads with `try_read`,
    /// which clears tokio's readiness when the socket is empty (a plain `recv`
    /// there would leave it set, and the task would spin).
    fn drain(&self, conn: &Conn, raw: bool) {
        use std::io::Read as _;
        let mut st = conn.state.lock().unwrap();
        let mut chunk = [0u8; 16 * 1024];
        let socket = socket2::SockRef::from(&conn.stream);
        while !st.eof && !st.dead {
            let read = if raw {
                (&*socket).read(&mut chunk)
            } else {
                conn.stream.try_read(&mut chunk)
            };
            match read {
                Ok(0) => st.eof = true,
                Ok(n) => st.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => st.eof = true,
            }
        }
        self.parse(&mut st);
        while !st.outbox.is_empty() && !st.write_failed {
            match conn.stream.try_write(&st.outbox) {
                Ok(n) => {
                    st.outbox.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => st.write_failed = true,
            }
        }
    }

    /// Reads messages out of the connection's buffer.
    fn parse(&self, st: &mut ConnState) {
        loop {
            if st.dead {
                st.buf.clear();
                return;
            }
            let Some(reading) = &st.reading else {
                if st.buf.is_empty() {
                    return;
                }
                let Some(end) = h1diff::find(&st.buf, b"\r\n\r\n").map(|i| i + 4) else {
                    if st.eof {
                        let buf = std::mem::take(&mut st.buf);
                        self.push_broken(format!(
                            "the connection closed inside a head: {}",
                            show(&buf)
                        ));
                        st.dead = true;
                    }
                    return;
                };
                match self.begin(&st.buf[..end]) {
                    Ok(reading) => {
                        st.buf.drain(..end);
                        st.reading = Some(reading);
                    }
                    Err(()) => st.dead = true,
                }
                continue;
            };
            let (msg, body) = (reading.msg.clone(), reading.body);
            let finished = match body {
                UpBody::Length(n) if st.buf.len() >= n => {
                    let body: Vec<u8> = st.buf.drain(..n).collect();
                    msg.lock().unwrap().body = body;
                    true
                }
                UpBody::Length(_) => {
                    msg.lock().unwrap().body = st.buf.clone();
                    false
                }
                UpBody::Chunked => match dechunk(&st.buf, true) {
                    Dechunked::Done { body, used } => {
                        st.buf.drain(..used);
                        msg.lock().unwrap().body = body;
                        true
                    }
                    Dechunked::Partial { body } => {
                        msg.lock().unwrap().body = body;
                        false
                    }
                    Dechunked::Bad { body, why } => {
                        let mut m = msg.lock().unwrap();
                        m.body = body;
                        m.error = Some(format!(
                            "a malformed chunked body from the proxy ({why}): {}",
                            show(&st.buf)
                        ));
                        st.dead = true;
                        false
                    }
                },
            };
            if !finished {
                return;
            }
            st.reading = None;
            let answer = self.answer(&msg);
            st.outbox.extend_from_slice(&answer);
        }
    }

    /// Reads a request head; records the message (broken ones too).
    fn begin(&self, head: &[u8]) -> Result<Reading, ()> {
        let mut headers = [httparse::EMPTY_HEADER; h1diff::MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(head) {
            Ok(httparse::Status::Complete(n)) if n == head.len() => {}
            other => {
                self.push_broken(format!(
                    "a request head the upstream cannot read ({other:?}): {}",
                    show(head)
                ));
                return Err(());
            }
        }
        let lines = h1diff::lines_of(req.headers);
        let mut msg = UpMsg {
            generation: 0,
            method: req.method.unwrap_or("").as_bytes().to_vec(),
            target: req.path.unwrap_or("").as_bytes().to_vec(),
            lines: lines.clone(),
            body: Vec::new(),
            complete: false,
            seq: None,
            error: None,
        };
        if h1diff::has_bare_cr_or_lf(head) {
            msg.error = Some(format!(
                "bare CR or LF in a head from the proxy: {}",
                show(head)
            ));
        }
        let lengths: Vec<&[u8]> = values(&lines, "content-length").collect();
        let codings: Vec<&[u8]> = values(&lines, "transfer-encoding").collect();
        let body = if lengths.len() + codings.len() > 1 {
            msg.error = Some(format!(
                "{} framing headers in one request from the proxy: {}",
                lengths.len() + codings.len(),
                show(head)
            ));
            None
        } else if let Some(te) = codings.first() {
            if te.eq_ignore_ascii_case(b"chunked") {
                Some(UpBody::Chunked)
            } else {
                msg.error = Some(format!(
                    "Transfer-Encoding other than chunked: {}",
                    show(head)
                ));
                None
            }
        } else if let Some(cl) = lengths.first() {
            match decimal(cl) {
                Some(n) if n < (1 << 30) => Some(UpBody::Length(n as usize)),
                _ => {
                    msg.error = Some(format!("bad Content-Length from the proxy: {}", show(head)));
                    None
                }
            }
        } else {
            Some(UpBody::Length(0))
        };
        let broken = msg.error.is_some();
        let msg = self.push(msg);
        match body {
            Some(body) if !broken => Ok(Reading { msg, body }),
            _ => Err(()),
        }
    }

    fn push(&self, mut msg: UpMsg) -> Arc<Mutex<UpMsg>> {
        let mut record = self.record.lock().unwrap();
        msg.generation = record.generation;
        let msg = Arc::new(Mutex::new(msg));
        record.msgs.push(msg.clone());
        msg
    }

    fn push_broken(&self, error: String) {
        self.push(UpMsg {
            generation: 0,
            method: Vec::new(),
            target: Vec::new(),
            lines: Vec::new(),
            body: Vec::new(),
            complete: false,
            seq: None,
            error: Some(error),
        });
    }

    /// Marks the message complete and writes its answer: `X-Seq` counts this
    /// input's answers; a message of an earlier input is answered `stale`.
    fn answer(&self, msg: &Mutex<UpMsg>) -> Vec<u8> {
        let mut record = self.record.lock().unwrap();
        let mut m = msg.lock().unwrap();
        m.complete = true;
        let seq = if m.generation == record.generation {
            let k = record.answered;
            record.answered += 1;
            m.seq = Some(k);
            k.to_string()
        } else {
            "stale".to_owned()
        };
        let body = format!("seq={seq}");
        let mut out = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Seq: {seq}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        if m.method != b"HEAD" {
            out.extend_from_slice(body.as_bytes());
        }
        out
    }

    /// Waits until the upstream has read everything the proxy sent: every
    /// connection accepted and drained, none left open inside a message.
    /// Returns whether one stayed open inside a message (after ~0.5 s).
    async fn settle(&'static self) -> bool {
        for _ in 0..500 {
            self.accept_pending();
            let conns: Vec<Arc<Conn>> = self.conns.lock().unwrap().clone();
            let mut busy = false;
            for c in &conns {
                self.drain(c, true);
                let st = c.state.lock().unwrap();
                busy |= !st.eof && !st.dead && (st.reading.is_some() || !st.buf.is_empty());
            }
            if !busy {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        true
    }

    /// Starts recording a new input.
    fn next_generation(&self) {
        let mut record = self.record.lock().unwrap();
        record.generation += 1;
        record.msgs.clear();
        record.answered = 0;
    }

    fn snapshot(&self) -> Vec<UpMsg> {
        let record = self.record.lock().unwrap();
        record
            .msgs
            .iter()
            .map(|m| m.lock().unwrap().clone())
            .filter(|m| m.generation == record.generation)
            .collect()
    }
}

// ---------------------------------------------------------------------------
// The input, parsed independently.
// ---------------------------------------------------------------------------

/// One request of the input.
struct InReq {
    method: Vec<u8>,
    /// The target the upstream must get, when this file can tell.
    expect_target: Option<Vec<u8>>,
    body: Vec<u8>,
    /// The input holds all of it.
    complete: bool,
}

impl std::fmt::Debug for InReq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (upstream target {}) body {}{}",
            show(&self.method),
            self.expect_target.as_deref().map_or("unknown".into(), show),
            show(&self.body),
            if self.complete { "" } else { " (cut short)" }
        )
    }
}

#[derive(Debug, PartialEq, Eq)]
enum InEnd {
    /// The input ends between requests.
    Clean,
    /// The input ends inside a request.
    Cut,
    /// The last request closes the connection (`Connection: close`, HTTP/1.0,
    /// or framing that obliges the server to close): later bytes are not requests.
    Closes,
    /// The request after the last one can never be forwarded.
    Refused(String),
    /// An HTTP/2 connection: not checked against this parser.
    H2,
}

#[derive(Debug)]
struct InParse {
    reqs: Vec<InReq>,
    end: InEnd,
    /// The method of the refused request, when its head could be read.
    refused_method: Option<Vec<u8>>,
}

/// The origin-form target a proxy forwards for `target` (RFC 9112 §3.2), when
/// this file is sure of it.
fn expected_target(target: &[u8]) -> Option<Vec<u8>> {
    if target.starts_with(b"/") || target == b"*" {
        return Some(target.to_vec());
    }
    let lower = target.to_ascii_lowercase();
    let rest = [&b"http://"[..], b"https://"]
        .iter()
        .find_map(|scheme| lower.starts_with(scheme).then(|| &target[scheme.len()..]))?;
    let authority_end = rest
        .iter()
        .position(|&c| matches!(c, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let path = &rest[authority_end..];
    if authority_end == 0 || path.contains(&b'#') {
        return None;
    }
    Some(match path.first() {
        None => b"/".to_vec(),
        Some(b'?') => [&b"/"[..], path].concat(),
        Some(_) => path.to_vec(),
    })
}

fn parse_input(input: &[u8]) -> InParse {
    let mut out = InParse {
        reqs: Vec::new(),
        end: InEnd::Clean,
        refused_method: None,
    };
    let mut at = 0;
    let refuse = |out: &mut InParse, why: String| out.end = InEnd::Refused(why);
    loop {
        // Empty lines before a request line are ignored (RFC 9112 §2.2).
        loop {
            if input[at..].starts_with(b"\r\n") {
                at += 2;
            } else if input[at..].starts_with(b"\n") {
                at += 1;
            } else {
                break;
            }
        }
        if at == input.len() {
            out.end = InEnd::Clean;
            return out;
        }
        if out.reqs.is_empty() && input[at..].starts_with(h1diff::H2_PREFACE) {
            out.end = InEnd::H2;
            return out;
        }
        let mut headers = [httparse::EMPTY_HEADER; h1diff::MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let head_len = match req.parse(&input[at..]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                out.end = InEnd::Cut;
                return out;
            }
            Err(e) => {
                refuse(&mut out, format!("unreadable head: {e}"));
                return out;
            }
        };
        let method = req.method.unwrap_or("").as_bytes().to_vec();
        let target = req.path.unwrap_or("").as_bytes().to_vec();
        let http10 = req.version == Some(0);
        let lines = h1diff::lines_of(req.headers);
        at += head_len;

        let mut close = false;
        let mut keep_alive = false;
        for v in values(&lines, "connection") {
            for token in list(v) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        let mut closes = close || (http10 && !keep_alive);
        let codings: Vec<Vec<u8>> = values(&lines, "transfer-encoding")
            .flat_map(list)
            .map(<[u8]>::to_ascii_lowercase)
            .collect();
        let te_lines = values(&lines, "transfer-encoding").count();
        let lengths: Vec<&[u8]> = values(&lines, "content-length").collect();
        enum Body {
            Length(u64),
            Chunked,
        }
        let body = if te_lines > 0 {
            if http10 {
                out.refused_method = Some(method);
                refuse(&mut out, "Transfer-Encoding in an HTTP/1.0 request".into());
                return out;
            }
            if codings.last().map(Vec::as_slice) != Some(b"chunked") {
                out.refused_method = Some(method);
                refuse(&mut out, "chunked is not the final transfer coding".into());
                return out;
            }
            if codings
                .iter()
                .filter(|c| c.as_slice() == b"chunked")
                .count()
                > 1
            {
                out.refused_method = Some(method);
                refuse(&mut out, "chunked applied twice".into());
                return out;
            }
            // With Content-Length too: processed as chunked, and the server
            // must close the connection after it (RFC 9112 §6.1) - if it does
            // not refuse it outright.
            closes |= !lengths.is_empty();
            Body::Chunked
        } else if !lengths.is_empty() {
            let mut values = lengths.iter().flat_map(|v| v.split(|&c| c == b','));
            let mut length = None;
            let mut bad = false;
            for v in values.by_ref() {
                match (decimal(h1diff::trim_ows(v)), length) {
                    (None, _) => bad = true,
                    (Some(n), Some(m)) if n != m => bad = true,
                    (Some(n), _) => length = Some(n),
                }
            }
            match length {
                Some(n) if !bad => Body::Length(n),
                _ => {
                    out.refused_method = Some(method);
                    refuse(&mut out, "invalid or conflicting Content-Length".into());
                    return out;
                }
            }
        } else {
            Body::Length(0)
        };
        let expect_target = expected_target(&target);
        let mut req = InReq {
            method,
            expect_target,
            body: Vec::new(),
            complete: false,
        };
        match body {
            Body::Length(n) => {
                let left = (input.len() - at) as u64;
                if left < n {
                    req.body = input[at..].to_vec();
                    out.reqs.push(req);
                    out.end = InEnd::Cut;
                    return out;
                }
                req.body = input[at..at + n as usize].to_vec();
                req.complete = true;
                at += n as usize;
            }
            Body::Chunked => match dechunk(&input[at..], false) {
                Dechunked::Done { body, used } => {
                    req.body = body;
                    req.complete = true;
                    at += used;
                }
                Dechunked::Partial { body } => {
                    req.body = body;
                    out.reqs.push(req);
                    out.end = InEnd::Cut;
                    return out;
                }
                Dechunked::Bad { body, why } => {
                    req.body = body;
                    out.reqs.push(req);
                    refuse(&mut out, format!("malformed chunked body: {why}"));
                    return out;
                }
            },
        }
        out.reqs.push(req);
        if closes {
            out.end = InEnd::Closes;
            return out;
        }
    }
}

// ---------------------------------------------------------------------------
// The check.
// ---------------------------------------------------------------------------

/// What the client got, response by response.
#[derive(Debug)]
enum Answer {
    /// An upstream answer.
    Seq(u64),
    /// The proxy's own.
    Own(Resp),
}

fn read_client_stream(got: &[u8], parsed: &InParse, faults: &mut Vec<String>) -> Vec<Answer> {
    let mut answers = Vec::new();
    let mut at = 0;
    while at < got.len() {
        let j = answers.len();
        let method = parsed
            .reqs
            .get(j)
            .map(|r| r.method.as_slice())
            .or(parsed.refused_method.as_deref());
        let is_head = method == Some(&b"HEAD"[..]);
        // An upstream answer to HEAD has no body; the proxy's own responses
        // carry theirs whatever the method.
        let bodiless = |_: u16, lines: &Lines| is_head && values(lines, "x-seq").next().is_some();
        let resp = match h1diff::read_proxy_response(&got[at..], bodiless) {
            Ok(r) => r,
            Err(e) => {
                faults.push(format!("response #{j} to the client: {e}"));
                return answers;
            }
        };
        at += resp.len;
        if (100..200).contains(&resp.status) {
            if resp.status == 101 {
                faults.push("a 101 reached the client, but the upstream never sends one".into());
            }
            continue;
        }
        if resp.close_delimited {
            faults.push(format!(
                "response #{j}: neither Content-Length nor chunked on an HTTP/1.1 connection"
            ));
        }
        let seqs: Vec<&[u8]> = values(&resp.lines, "x-seq").collect();
        match seqs.as_slice() {
            [] => answers.push(Answer::Own(resp)),
            [one] => match decimal(one) {
                Some(k) => {
                    let body = format!("seq={k}");
                    if !is_head && (resp.body != body.as_bytes() || !resp.complete) {
                        faults.push(format!(
                            "the answer X-Seq {k} reached the client with the body {} (sent: {body:?})",
                            show(&resp.body)
                        ));
                    }
                    answers.push(Answer::Seq(k));
                }
                None => {
                    faults.push(format!(
                        "the client got an answer the upstream gave to an earlier input (X-Seq: {})",
                        show(one)
                    ));
                    answers.push(Answer::Own(resp));
                }
            },
            _ => {
                faults.push("one response carries two X-Seq lines".into());
                answers.push(Answer::Own(resp));
            }
        }
    }
    answers
}

/// `m` is what the upstream got for `r`: same method and target; the body the
/// same, or (for a message cut short) a prefix of it.
fn compare(m: &UpMsg, r: &InReq, j: usize, faults: &mut Vec<String>) {
    if m.method != r.method {
        faults.push(format!(
            "request #{j}: the upstream got method {} for {}",
            show(&m.method),
            show(&r.method)
        ));
    }
    if let Some(t) = &r.expect_target {
        if &m.target != t {
            faults.push(format!(
                "request #{j}: the upstream got target {} for {}",
                show(&m.target),
                show(t)
            ));
        }
    }
    if m.complete {
        if !r.complete || m.body != r.body {
            faults.push(format!(
                "request #{j}: the upstream got the body {} where the input has {}{}",
                show(&m.body),
                show(&r.body),
                if r.complete { "" } else { " (cut short)" }
            ));
        }
    } else if !r.body.starts_with(&m.body) {
        faults.push(format!(
            "request #{j}: the upstream got the start of a body, {}, that is not the start of {}",
            show(&m.body),
            show(&r.body)
        ));
    }
}

/// Session headers and framing of one upstream message.
fn check_message(m: &UpMsg, i: usize, input: &[u8], faults: &mut Vec<String>) {
    if let Some(e) = &m.error {
        faults.push(format!("upstream message #{i}: {e}"));
    }
    let (mut ids, mut news) = (0, 0);
    for (name, value) in &m.lines {
        let cgi = cgi_name(name);
        if !cgi.starts_with(b"x-session-") {
            continue;
        }
        if name == b"x-session-id" {
            ids += 1;
            let well_formed = value.len() == 43
                && value
                    .iter()
                    .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_');
            if !well_formed || h1diff::find(input, value).is_some() {
                faults.push(format!(
                    "upstream message #{i}: x-session-id {} is not one the proxy made",
                    show(value)
                ));
            }
        } else if name == b"x-session-new" {
            news += 1;
            if value != b"true" {
                faults.push(format!(
                    "upstream message #{i}: x-session-new: {}",
                    show(value)
                ));
            }
        } else {
            faults.push(format!(
                "upstream message #{i}: the client's session header {}: {} reached the upstream",
                show(name),
                show(value)
            ));
        }
    }
    if ids > 1 || news > 1 || (news == 1 && ids == 0) {
        faults.push(format!(
            "upstream message #{i}: {ids} x-session-id and {news} x-session-new lines"
        ));
    }
}

fn check(input: &[u8], got: &[u8], msgs: &[UpMsg], stuck: bool) {
    let parsed = parse_input(input);
    let mut faults = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        check_message(m, i, input, &mut faults);
    }
    if stuck && parsed.end != InEnd::H2 {
        faults.push(
            "an upstream connection stayed open inside a request after the client was done".into(),
        );
    }
    if parsed.end != InEnd::H2 {
        let answers = read_client_stream(got, &parsed, &mut faults);
        let mut u = 0;
        for (j, a) in answers.iter().enumerate() {
            match a {
                Answer::Seq(k) => {
                    let Some(m) = msgs.get(u) else {
                        faults.push(format!(
                            "response #{j}: the client got X-Seq {k}, but the upstream got no request #{u}"
                        ));
                        break;
                    };
                    if m.seq != Some(*k) {
                        faults.push(format!(
                            "response #{j}: the client got the answer X-Seq {k}, where the \
                             upstream's next request (#{u}) was answered {:?}",
                            m.seq
                        ));
                    }
                    match parsed.reqs.get(j) {
                        Some(r) => compare(m, r, j, &mut faults),
                        None => faults.push(format!(
                            "response #{j}: an upstream answer for a request the input does not hold \
                             (it holds {}; {:?}); the upstream got {} {}",
                            parsed.reqs.len(),
                            parsed.end,
                            show(&m.method),
                            show(&m.target)
                        )),
                    }
                    u += 1;
                }
                Answer::Own(resp) => {
                    if resp.status == 504 {
                        faults.push(format!(
                            "response #{j}: 504, the proxy waited for an answer to a request \
                             the upstream never saw the end of"
                        ));
                    }
                    if j > parsed.reqs.len() {
                        faults.push(format!(
                            "response #{j}: the proxy answered {} to a request the input does not hold",
                            resp.status
                        ));
                    }
                    // A request the proxy gave up on after forwarding its start.
                    if let (Some(m), Some(r)) = (msgs.get(u), parsed.reqs.get(j)) {
                        if !m.complete {
                            compare(m, r, j, &mut faults);
                            u += 1;
                        }
                    }
                }
            }
        }
        for (i, m) in msgs.iter().enumerate().skip(u) {
            let j = answers.len() + (i - u);
            if m.complete || i + 1 < msgs.len() {
                faults.push(format!(
                    "upstream message #{i} ({} {}, body {}) got no answer to the client: \
                     the input parses as {} request(s), {:?}",
                    show(&m.method),
                    show(&m.target),
                    show(&m.body),
                    parsed.reqs.len(),
                    parsed.end
                ));
            } else if let Some(r) = parsed.reqs.get(j) {
                compare(m, r, j, &mut faults);
            } else if m.error.is_none() {
                faults.push(format!(
                    "upstream message #{i} ({} {}) stands for no request of the input ({:?})",
                    show(&m.method),
                    show(&m.target),
                    parsed.end
                ));
            }
        }
    }
    if h1diff::verbose() {
        eprintln!(
            "h1_request_diff: {} request(s) in the input ({:?}); upstream got {:?}; client got {}",
            parsed.reqs.len(),
            parsed.end,
            msgs.iter()
                .map(|m| format!(
                    "{} {} {}B{}",
                    show(&m.method),
                    show(&m.target),
                    m.body.len(),
                    if m.complete { "" } else { " (cut)" }
                ))
                .collect::<Vec<_>>(),
            show(got)
        );
    }
    if !faults.is_empty() {
        let mut report = String::from("h1_request_diff: the proxy broke an invariant\n");
        for f in &faults {
            report.push_str(&format!("  - {f}\n"));
        }
        report.push_str(&format!("input: {}\n", show(input)));
        report.push_str(&format!("input parses as: {parsed:#?}\n"));
        for (i, m) in msgs.iter().enumerate() {
            report.push_str(&format!(
                "upstream #{i}: {} {} seq {:?} complete {} lines {:?} body {}\n",
                show(&m.method),
                show(&m.target),
                m.seq,
                m.complete,
                m.lines
                    .iter()
                    .map(|(n, v)| format!(
                        "{}: {}",
                        String::from_utf8_lossy(n),
                        String::from_utf8_lossy(v)
                    ))
                    .collect::<Vec<_>>(),
                show(&m.body)
            ));
        }
        report.push_str(&format!("client got: {}\n", show(got)));
        report.push_str(&PREVIOUS.with(|p| p.borrow().clone()));
        panic!("{report}");
    }
}

// ---------------------------------------------------------------------------
// The harness.
// ---------------------------------------------------------------------------

struct Harness {
    rt: Runtime,
    proxy: SocketAddr,
    state: Arc<sessiongate::proxy::State>,
    upstream: &'static Upstream,
}

impl Harness {
    /// Waits (at most 3 s) until the proxy holds no client connection: from then
    /// on it sends the upstream nothing more for the inputs before. Without this,
    /// a request the proxy was still forwarding when the client's connection
    /// closed could reach the upstream after the next input began, and be
    /// recorded as that input's. An HTTP/2 connection counts as open until the
    /// last of its streams' tasks has ended, not only its own.
    async fn proxy_idle(&self) -> bool {
        for _ in 0..3000 {
            if self.state.metrics.open_connections.get() == 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        false
    }
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        h1diff::abort_on_panic();
        let rt = h1diff::runtime();
        let (upstream, proxy, state) = rt.block_on(async {
            let upstream: &'static Upstream = Box::leak(Box::new(Upstream::bind()));
            tokio::spawn(upstream.accept_loop());
            let (proxy, state) = h1diff::start_proxy(upstream.addr()).await;
            (upstream, proxy, state)
        });
        Harness {
            rt,
            proxy,
            state,
            upstream,
        }
    })
}

thread_local! {
    /// The input before the current one, and how the harness found the proxy
    /// and the upstream between them.
    static PREVIOUS: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

fuzz_target!(|input: &[u8]| {
    let h = harness();
    h.rt.block_on(async {
        let settled_before = !h.upstream.settle().await;
        let idle = h.proxy_idle().await;
        let settled = !h.upstream.settle().await;
        h.upstream.next_generation();
        // What a failure report says of the input before this one, to tell a
        // late message of that input from one of this input.
        let note = PREVIOUS.with(|p| std::mem::take(&mut *p.borrow_mut()));
        PREVIOUS.with(|p| {
            *p.borrow_mut() = format!(
                "{note}before this input: upstream settled {settled_before}, proxy idle {idle} \
                 (open connections {}), upstream settled again {settled}\n",
                h.state.metrics.open_connections.get()
            )
        });
        // An HTTP/2 connection (h2c by prior knowledge) gets time to forward
        // its streams before the client's FIN; HTTP/1 needs none.
        let start = input
            .iter()
            .position(|&b| b != b'\r' && b != b'\n')
            .unwrap_or(input.len());
        let linger = if input[start..].starts_with(h1diff::H2_PREFACE) {
            Duration::from_millis(20)
        } else {
            Duration::ZERO
        };
        let got = h1diff::client_exchange_paced(h.proxy, input, linger).await;
        // This input, for the report of the next one if that fails.
        let this = format!("the input before: {}\n", show(input));
        let stuck = h.upstream.settle().await;
        let msgs = h.upstream.snapshot();
        check(input, &got, &msgs, stuck);
        PREVIOUS.with(|p| *p.borrow_mut() = this);
    });
});
