//! Differential, the other direction: arbitrary upstream response bytes through
//! the REAL proxy, checked against a response parser written here.
//!
//! Once per process: a tokio runtime, a scripted upstream (raw `TcpListener`)
//! that reads one request head per connection, writes the fuzz input as its
//! answer and closes, and the proxy in front of it. Per input: one client sends
//! two pipelined GETs (`/first`, `/second`) on one kept-alive connection, sends
//! its FIN and reads until the proxy closes. Then, with the input parsed
//! independently as the upstream's answer (empty lines before the status line
//! and interim 1xx heads skipped; the first final response, framed by its own
//! headers, is what may be relayed):
//!
//! - the client gets at most one response per request, in order, each readable
//!   with consistent framing (exactly one of Content-Length / chunked; never an
//!   unframed body on a kept-alive HTTP/1.1 connection; Content-Length matching
//!   the body), and nothing after them;
//! - each is either the proxy's own 502/504, or a relay of the upstream's final
//!   response: same status, the same body (a prefix when the upstream's own
//!   body is cut short or malformed), header lines taken from that response in
//!   order (the proxy's Set-Cookie, Cache-Control, Vary, framing and Connection
//!   lines aside) - and relayed only for a request the upstream actually read;
//! - no `X-Session-*` line reaches the client (the proxy consumes them);
//! - the write-back comes from the relayed head only: the seeds carry
//!   `X-Session-Set: pwned=1` in bodies and interim heads; the session each
//!   response's cookie names (looked up in the proxy's store) may hold `pwned`
//!   only when the final head itself mentions it;
//! - the proxy closes within 8 s and never panics.
#![no_main]

mod h1diff;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use h1diff::{contains_ci, dechunk, decimal, list, show, values, Dechunked, Lines, Resp};
use libfuzzer_sys::fuzz_target;
use sessiongate::proxy::State;
use sessiongate::session::{Lookup, SessionId, SessionStore as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

/// What the client sends: two pipelined requests on one connection.
const REQUESTS: &[u8] = b"GET /first HTTP/1.1\r\nHost: fuzz.test\r\n\r\n\
                          GET /second HTTP/1.1\r\nHost: fuzz.test\r\n\r\n";
const PATHS: [&[u8]; 2] = [b"/first", b"/second"];

// ---------------------------------------------------------------------------
// The scripted upstream.
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Script {
    /// What every connection answers, this input.
    input: Mutex<Arc<Vec<u8>>>,
    /// The targets of the request heads read, this input.
    seen: Mutex<Vec<Vec<u8>>>,
}

impl Script {
    async fn accept_loop(&'static self, listener: TcpListener) {
        loop {
            if let Ok((s, _)) = listener.accept().await {
                tokio::spawn(self.serve(s));
            }
        }
    }

    async fn serve(&'static self, mut s: TcpStream) {
        let _ = s.set_nodelay(true);
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let read_head = async {
            loop {
                if let Some(end) = h1diff::find(&buf, b"\r\n\r\n") {
                    return Some(end + 4);
                }
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        };
        let Ok(Some(end)) = tokio::time::timeout(Duration::from_secs(2), read_head).await else {
            return;
        };
        let mut headers = [httparse::EMPTY_HEADER; h1diff::MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let target = match req.parse(&buf[..end]) {
            Ok(httparse::Status::Complete(_)) => req.path.unwrap_or("").as_bytes().to_vec(),
            _ => b"(unreadable head)".to_vec(),
        };
        // Recorded before answering: a relayed answer implies the record.
        self.seen.lock().unwrap().push(target);
        let input = self.input.lock().unwrap().clone();
        let _ = s.write_all(&input).await;
        let _ = s.shutdown().await;
        // Until the proxy closes its end (bounded), so that the close is clean.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Ok(n) = s.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }
}

// ---------------------------------------------------------------------------
// The input, read independently as the upstream's answer to a GET.
// ---------------------------------------------------------------------------

/// The final response the proxy may relay.
struct Final {
    status: u16,
    /// The head's bytes, as the upstream wrote them.
    head: Vec<u8>,
    lines: Lines,
    body: Vec<u8>,
    /// The input holds the whole body, well framed.
    complete: bool,
}

impl std::fmt::Debug for Final {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Final")
            .field("status", &self.status)
            .field("head", &show(&self.head))
            .field("body", &show(&self.body))
            .field("complete", &self.complete)
            .finish()
    }
}

#[derive(Debug)]
enum Expected {
    /// Nothing the proxy may relay: it can only answer with its own error.
    Invalid(String),
    Final(Final),
}

fn expected(input: &[u8]) -> Expected {
    let mut at = 0;
    loop {
        while input[at..].starts_with(b"\r\n") || input[at..].starts_with(b"\n") {
            at += if input[at] == b'\r' { 2 } else { 1 };
        }
        if at == input.len() {
            return Expected::Invalid("no response".into());
        }
        let mut headers = [httparse::EMPTY_HEADER; h1diff::MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let len = match resp.parse(&input[at..]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Expected::Invalid("head cut short".into()),
            Err(e) => return Expected::Invalid(format!("unreadable head: {e}")),
        };
        let status = resp.code.unwrap_or(0);
        let lines = h1diff::lines_of(resp.headers);
        let head = input[at..at + len].to_vec();
        at += len;
        if (100..200).contains(&status) && status != 101 {
            continue; // interim: no body, the final response follows
        }
        if status == 101 {
            return Expected::Invalid("101 to a request that asked for no upgrade".into());
        }
        let rest = &input[at..];
        let mut fin = Final {
            status,
            head,
            lines,
            body: Vec::new(),
            complete: true,
        };
        if status == 204 || status == 304 {
            return Expected::Final(fin);
        }
        let codings: Vec<Vec<u8>> = values(&fin.lines, "transfer-encoding")
            .flat_map(list)
            .map(<[u8]>::to_ascii_lowercase)
            .collect();
        let has_te = values(&fin.lines, "transfer-encoding").next().is_some();
        let lengths: Vec<&[u8]> = values(&fin.lines, "content-length").collect();
        enum Body {
            Length(u64),
            Chunked,
            Close,
        }
        // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length; chunked
        // last means chunked, any other last coding means until close.
        let body = if has_te {
            match codings.last().map(Vec::as_slice) {
                Some(b"chunked") => {
                    if codings
                        .iter()
                        .filter(|c| c.as_slice() == b"chunked")
                        .count()
                        > 1
                    {
                        return Expected::Invalid("chunked applied twice".into());
                    }
                    Body::Chunked
                }
                _ => Body::Close,
            }
        } else if !lengths.is_empty() {
            let mut length = None;
            for v in lengths.iter().flat_map(|v| v.split(|&c| c == b',')) {
                match (decimal(h1diff::trim_ows(v)), length) {
                    (Some(n), None) => length = Some(n),
                    (Some(n), Some(m)) if n == m => {}
                    _ => return Expected::Invalid("invalid or conflicting Content-Length".into()),
                }
            }
            Body::Length(length.unwrap_or(0))
        } else {
            Body::Close
        };
        match body {
            Body::Length(n) if (rest.len() as u64) >= n => fin.body = rest[..n as usize].to_vec(),
            Body::Length(_) => {
                fin.body = rest.to_vec();
                fin.complete = false;
            }
            Body::Chunked => match dechunk(rest, false) {
                Dechunked::Done { body, .. } => fin.body = body,
                Dechunked::Partial { body } | Dechunked::Bad { body, .. } => {
                    fin.body = body;
                    fin.complete = false;
                }
            },
            Body::Close => fin.body = rest.to_vec(),
        }
        return Expected::Final(fin);
    }
}

// ---------------------------------------------------------------------------
// The check.
// ---------------------------------------------------------------------------

/// Lines the proxy writes itself, or rewrites, in a relayed response.
const PROXY_LINES: &[&str] = &[
    "set-cookie",
    "cache-control",
    "vary",
    "content-length",
    "transfer-encoding",
    "connection",
    "strict-transport-security",
];

fn is_own_error(c: &Resp) -> bool {
    c.complete
        && ((c.status == 502 && c.body.starts_with(b"502 Bad Gateway"))
            || (c.status == 504 && c.body.starts_with(b"504 Gateway Timeout")))
}

fn check_relay(c: &Resp, r: &Final, i: usize, faults: &mut Vec<String>) {
    if c.status != r.status {
        faults.push(format!(
            "response #{i}: status {} relayed for the upstream's {}",
            c.status, r.status
        ));
    }
    if c.complete {
        if !r.complete || c.body != r.body {
            faults.push(format!(
                "response #{i}: the client got the body {} for the upstream's {}{}",
                show(&c.body),
                show(&r.body),
                if r.complete {
                    ""
                } else {
                    " (cut short or malformed)"
                }
            ));
        }
    } else if !r.body.starts_with(&c.body) {
        faults.push(format!(
            "response #{i}: the client got the start of a body, {}, that is not the start of {}",
            show(&c.body),
            show(&r.body)
        ));
    }
    let mut from = 0;
    for (name, value) in &c.lines {
        let lower = name.to_ascii_lowercase();
        if PROXY_LINES.iter().any(|p| lower == p.as_bytes()) {
            continue;
        }
        match r.lines[from..]
            .iter()
            .position(|(n, v)| n.eq_ignore_ascii_case(name) && v == value)
        {
            Some(k) => from += k + 1,
            None => faults.push(format!(
                "response #{i}: the line {}: {} is not (in this order) in the upstream's final head",
                show(name),
                show(value)
            )),
        }
    }
}

/// Percent-decoded, `+` as space: how a write-back value reads.
fn form_decoded(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    out
}

fn mentions_pwned(b: &[u8]) -> bool {
    contains_ci(b, b"pwned") || contains_ci(&form_decoded(b), b"pwned")
}

async fn check(input: &[u8], got: &[u8], seen: &[Vec<u8>], state: &State) {
    let expect = expected(input);
    let mut faults = Vec::new();
    let mut responses: Vec<Resp> = Vec::new();
    let mut at = 0;
    while at < got.len() {
        let i = responses.len();
        let c = match h1diff::read_proxy_response(&got[at..], |_, _| false) {
            Ok(c) => c,
            Err(e) => {
                faults.push(format!("response #{i} to the client: {e}"));
                break;
            }
        };
        at += c.len;
        if (100..200).contains(&c.status) {
            if c.status == 101 {
                faults.push(format!(
                    "response #{i}: a 101 reached a client that asked for no upgrade"
                ));
            }
            continue;
        }
        if i >= PATHS.len() {
            faults.push(format!(
                "response #{i}: more responses than the client's {} requests",
                PATHS.len()
            ));
            break;
        }
        if c.close_delimited {
            faults.push(format!(
                "response #{i}: neither Content-Length nor chunked on an HTTP/1.1 connection: \
                 its framing was removed"
            ));
        }
        for (name, value) in &c.lines {
            if name.len() >= 10 && name[..10].eq_ignore_ascii_case(b"x-session-") {
                faults.push(format!(
                    "response #{i}: the upstream's {}: {} reached the client",
                    show(name),
                    show(value)
                ));
            }
        }
        if !is_own_error(&c) {
            match &expect {
                Expected::Invalid(why) => faults.push(format!(
                    "response #{i}: status {} relayed, but the upstream's answer has nothing to relay ({why})",
                    c.status
                )),
                Expected::Final(r) => check_relay(&c, r, i, &mut faults),
            }
            if !seen.iter().any(|t| t == PATHS[i]) {
                faults.push(format!(
                    "response #{i}: relayed as the answer to {}, which the upstream never read \
                     (it read {:?})",
                    show(PATHS[i]),
                    seen.iter().map(|t| show(t)).collect::<Vec<_>>()
                ));
            }
        }
        responses.push(c);
    }

    // The write-back: only from the final head.
    let allowed = matches!(&expect, Expected::Final(r) if mentions_pwned(&r.head));
    if !allowed {
        for (i, c) in responses.iter().enumerate() {
            // An empty value is the expired cookie of a destroyed session.
            for cookie in h1diff::session_cookies(c)
                .into_iter()
                .filter(|v| !v.is_empty())
            {
                let Some(id) = cookie.get(..43).and_then(SessionId::decode) else {
                    faults.push(format!(
                        "response #{i}: a session cookie {} the proxy did not make",
                        show(&cookie)
                    ));
                    continue;
                };
                let settings = state.settings.load();
                if let Ok(Lookup::Found(view)) = state.store.load(&id, &settings.policy).await {
                    if let Some(data) = view.data {
                        if mentions_pwned(data.as_bytes()) {
                            faults.push(format!(
                                "response #{i}: its session holds {} although the relayed head \
                                 carries no such write-back",
                                show(data.as_bytes())
                            ));
                        }
                    }
                }
            }
        }
    }

    if h1diff::verbose() {
        eprintln!(
            "h1_response_diff: expected {}; the upstream read {:?}; client got {}",
            match &expect {
                Expected::Invalid(why) => format!("an error ({why})"),
                Expected::Final(r) => format!(
                    "a relay of {} with {}B{}",
                    r.status,
                    r.body.len(),
                    if r.complete { "" } else { " (cut)" }
                ),
            },
            seen.iter().map(|t| show(t)).collect::<Vec<_>>(),
            show(got)
        );
    }
    if !faults.is_empty() {
        let mut report = String::from("h1_response_diff: the proxy broke an invariant\n");
        for f in &faults {
            report.push_str(&format!("  - {f}\n"));
        }
        report.push_str(&format!("upstream answer (input): {}\n", show(input)));
        report.push_str(&format!("read independently as: {expect:#?}\n"));
        report.push_str(&format!(
            "the upstream read: {:?}\n",
            seen.iter().map(|t| show(t)).collect::<Vec<_>>()
        ));
        report.push_str(&format!("client got: {}\n", show(got)));
        panic!("{report}");
    }
}

// ---------------------------------------------------------------------------
// The harness.
// ---------------------------------------------------------------------------

struct Harness {
    rt: Runtime,
    proxy: SocketAddr,
    state: Arc<State>,
    script: &'static Script,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        h1diff::abort_on_panic();
        let rt = h1diff::runtime();
        let (proxy, state, script) = rt.block_on(async {
            let script: &'static Script = Box::leak(Box::default());
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .expect("upstream bind");
            let addr = listener.local_addr().expect("upstream addr");
            tokio::spawn(script.accept_loop(listener));
            let (proxy, state) = h1diff::start_proxy(addr).await;
            (proxy, state, script)
        });
        Harness {
            rt,
            proxy,
            state,
            script,
        }
    })
}

fuzz_target!(|input: &[u8]| {
    let h = harness();
    h.rt.block_on(async {
        *h.script.input.lock().unwrap() = Arc::new(input.to_vec());
        h.script.seen.lock().unwrap().clear();
        let got = h1diff::client_exchange(h.proxy, REQUESTS).await;
        let seen = h.script.seen.lock().unwrap().clone();
        check(input, &got, &seen, &h.state).await;
    });
});
