//! What the differential HTTP/1 targets (`h1_request_diff`, `h1_response_diff`)
//! share: the real proxy started in-process once, a client that writes bytes and
//! reads until close, and an HTTP/1 reader written here, independent of
//! `sessiongate::h1::codec`: `httparse` finds the head, the framing (lengths,
//! chunks, what the headers mean) is decided by the code below.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Once};
use std::time::Duration;

use sessiongate::config::Config;
use sessiongate::proxy::State;
use sessiongate::server::Server;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;

/// The proxy's signing secret (fixed: nothing here depends on its value).
pub const SECRET: &str = "fuzz-diff-secret-0123456789abcdef0123456789";
/// The longest a client waits for the proxy to close its connection. Every
/// input ends with the client's FIN and an upstream that answers at once, so
/// reaching this is a finding (a hang), not load.
/// Generous against a machine busy with other work (a starved process is no
/// finding), and below libFuzzer's `-timeout=10`.
pub const CLIENT_BOUND: Duration = Duration::from_secs(8);
/// Header lines the independent parser accepts (more than the proxy's 128: a
/// head the proxy refuses as too large is allowed, never required).
pub const MAX_HEADERS: usize = 256;
/// The HTTP/2 connection preface: such a connection goes to hyper's h2 server.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub type Lines = Vec<(Vec<u8>, Vec<u8>)>;

/// `H1DIFF_VERBOSE=1`: print what each input came to (for reading a run of
/// the seeds, `-runs=0`), not only failures.
pub fn verbose() -> bool {
    static VERBOSE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VERBOSE.get_or_init(|| std::env::var_os("H1DIFF_VERBOSE").is_some_and(|v| v != "0"))
}

/// Panics anywhere (the proxy's worker threads included) abort the process, so
/// libFuzzer reports them even when a runtime would have caught them.
/// libfuzzer-sys installs the same hook; this keeps it true whatever runs first.
pub fn abort_on_panic() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            std::process::abort();
        }));
    });
}

/// The runtime the harness's upstream and client run on (the proxy runs its own
/// worker threads, one per core, as in production).
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Starts the proxy on `127.0.0.1:0` in front of `upstream`, as
/// tests/support/mod.rs does, and returns its address and shared state.
pub async fn start_proxy(upstream: SocketAddr) -> (SocketAddr, Arc<State>) {
    let yaml = |body_timeout: &str| {
        format!(
            "listen: 127.0.0.1:0\n\
             upstream: {{url: \"http://{upstream}\", timeout: 5s, connect_timeout: 5s}}\n\
             session: {{secrets: [\"{SECRET}\"], max_sessions: 50000}}\n\
             admin: {{listen: null}}\n\
             limits: {{header_read_timeout: 2s{body_timeout}}}\n\
             log: {{level: error, access: false}}\n"
        )
    };
    // `client_body_timeout` is recent: fall back when this build lacks it.
    let config = Config::parse(
        &yaml(", client_body_timeout: 2s"),
        Path::new("fuzz.yaml"),
        false,
    )
    .or_else(|_| Config::parse(&yaml(""), Path::new("fuzz.yaml"), false))
    .unwrap_or_else(|e| panic!("the fuzz config was refused: {e}"));
    let server = Server::bind(config)
        .await
        .unwrap_or_else(|e| panic!("the proxy did not bind: {e}"));
    let addr = server.local_addr();
    let state = server.state();
    tokio::spawn(async move {
        let outcome = server.run(std::future::pending::<()>()).await;
        panic!(
            "the proxy stopped: {:?}",
            outcome.err().map(|e| e.to_string())
        );
    });
    (addr, state)
}

/// Connects to the proxy, writes `bytes`, shuts the write half, and reads until
/// the proxy closes. Panics (a finding) when it has not closed within
/// [`CLIENT_BOUND`].
pub async fn client_exchange(proxy: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    client_exchange_paced(proxy, bytes, Duration::ZERO).await
}

/// [`client_exchange`], holding the write half open after the bytes until the
/// proxy has sent nothing for 2 ms, at most `linger` (hyper's HTTP/2 server
/// drops the streams of a connection whose client already sent its FIN).
pub async fn client_exchange_paced(proxy: SocketAddr, bytes: &[u8], linger: Duration) -> Vec<u8> {
    let last_read = std::cell::Cell::new(std::time::Instant::now());
    let mut stream = TcpStream::connect(proxy)
        .await
        .expect("cannot connect to the proxy");
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.split();
    let write = async {
        let _ = wr.write_all(bytes).await;
        let written = std::time::Instant::now();
        let quiet = Duration::from_millis(2);
        while written.elapsed() < linger
            && (written.elapsed() < quiet || last_read.get().elapsed() < quiet)
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let _ = wr.shutdown().await;
    };
    let mut got = Vec::new();
    let read = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    last_read.set(std::time::Instant::now());
                }
            }
        }
    };
    let both = async { tokio::join!(write, read) };
    if tokio::time::timeout(CLIENT_BOUND, both).await.is_err() {
        panic!(
            "the proxy did not close the client connection within {CLIENT_BOUND:?} \
             after the client's FIN\ninput: {}",
            show(bytes)
        );
    }
    got
}

// ---------------------------------------------------------------------------
// Bytes.
// ---------------------------------------------------------------------------

/// Bytes as an escaped string, for failure messages.
pub fn show(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() + 2);
    s.push('"');
    for &c in b {
        match c {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(c as char),
            _ => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    s.push('"');
    s
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

pub fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.len() >= needle.len()
        && hay
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Optional whitespace (SP, HTAB) off both ends.
pub fn trim_ows(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

/// The non-empty elements of a comma-separated list, trimmed.
pub fn list(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&c| c == b',')
        .map(trim_ows)
        .filter(|t| !t.is_empty())
}

/// `1*DIGIT` as a number; `None` when not that or too large.
pub fn decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// A header name compared the way the session rules read it (DESIGN §9):
/// lower case, `_` as `-`.
pub fn cgi_name(name: &[u8]) -> Vec<u8> {
    name.iter()
        .map(|&c| {
            if c == b'_' {
                b'-'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

pub fn lines_of(headers: &[httparse::Header<'_>]) -> Lines {
    headers
        .iter()
        .map(|h| (h.name.as_bytes().to_vec(), h.value.to_vec()))
        .collect()
}

/// Every value of the lines named `name` (case-insensitively).
pub fn values<'a>(lines: &'a Lines, name: &'static str) -> impl Iterator<Item = &'a [u8]> + 'a {
    lines
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| v.as_slice())
}

/// A line ending that is not CRLF: a bare LF, or a CR not followed by LF.
pub fn has_bare_cr_or_lf(b: &[u8]) -> bool {
    b.iter().enumerate().any(|(i, &c)| {
        (c == b'\n' && (i == 0 || b[i - 1] != b'\r'))
            || (c == b'\r' && b.get(i + 1) != Some(&b'\n'))
    })
}

// ---------------------------------------------------------------------------
// Chunked bodies.
// ---------------------------------------------------------------------------

/// What decoding a chunked body came to.
#[derive(Debug)]
pub enum Dechunked {
    /// The last chunk and the trailer section were read; `used` bytes of input.
    Done { body: Vec<u8>, used: usize },
    /// The input ends inside the body: what was decoded so far.
    Partial { body: Vec<u8> },
    /// Broken framing after `body`.
    Bad { body: Vec<u8>, why: &'static str },
}

/// Decodes a chunked body at the start of `b`.
///
/// `strict` (what the proxy itself must write): CRLF line ends, a size of hex
/// digits only, no extension. Lenient (what a peer may send, as RFC 9112 §7.1
/// reads it): a size line may carry whitespace and `;` extensions, lines may end
/// in a bare LF; a bare CR anywhere in a line is ambiguous and refused.
pub fn dechunk(b: &[u8], strict: bool) -> Dechunked {
    let mut body = Vec::new();
    let mut at = 0;
    // One line from `at`: its content (without the line end) and where the next starts.
    let line = |at: usize| -> Result<Option<(&[u8], usize)>, &'static str> {
        let Some(nl) = b[at..].iter().position(|&c| c == b'\n') else {
            if b[at..]
                .iter()
                .enumerate()
                .any(|(i, &c)| c == b'\r' && i + at + 1 < b.len())
            {
                return Err("bare CR in a chunk line");
            }
            return Ok(None);
        };
        let raw = &b[at..at + nl];
        let content = match raw.strip_suffix(b"\r") {
            Some(c) => c,
            None if strict => return Err("chunk line ends in a bare LF"),
            None => raw,
        };
        if content.contains(&b'\r') {
            return Err("bare CR in a chunk line");
        }
        Ok(Some((content, at + nl + 1)))
    };
    loop {
        let (size_line, next) = match line(at) {
            Ok(Some(l)) => l,
            Ok(None) => return Dechunked::Partial { body },
            Err(why) => return Dechunked::Bad { body, why },
        };
        let (digits, ext) = match size_line.iter().position(|&c| c == b';') {
            Some(i) => (&size_line[..i], Some(&size_line[i..])),
            None => (size_line, None),
        };
        let digits = if strict { digits } else { trim_ows(digits) };
        if strict && ext.is_some() {
            return Dechunked::Bad {
                body,
                why: "chunk extension from the proxy",
            };
        }
        let significant: &[u8] = {
            let first = digits
                .iter()
                .position(|&c| c != b'0')
                .unwrap_or(digits.len());
            &digits[first..]
        };
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_hexdigit) {
            return Dechunked::Bad {
                body,
                why: "chunk size is not hex",
            };
        }
        if significant.len() > 15 {
            return Dechunked::Bad {
                body,
                why: "chunk size too large",
            };
        }
        let size = significant.iter().fold(0u64, |n, &d| {
            n * 16 + u64::from((d as char).to_digit(16).unwrap_or(0))
        });
        at = next;
        if size == 0 {
            // Trailer section: field lines up to an empty line.
            loop {
                match line(at) {
                    Ok(Some((content, next))) => {
                        at = next;
                        if content.is_empty() {
                            return Dechunked::Done { body, used: at };
                        }
                    }
                    Ok(None) => return Dechunked::Partial { body },
                    Err(why) => return Dechunked::Bad { body, why },
                }
            }
        }
        let size = size as usize;
        if b.len() - at < size {
            body.extend_from_slice(&b[at..]);
            return Dechunked::Partial { body };
        }
        body.extend_from_slice(&b[at..at + size]);
        at += size;
        let rest = &b[at..];
        if rest.starts_with(b"\r\n") {
            at += 2;
        } else if !strict && rest.starts_with(b"\n") {
            at += 1;
        } else if rest.is_empty() || rest == b"\r" {
            return Dechunked::Partial { body };
        } else {
            return Dechunked::Bad {
                body,
                why: "no line end after chunk data",
            };
        }
    }
}

// ---------------------------------------------------------------------------
// Responses as the proxy writes them to its client (strict).
// ---------------------------------------------------------------------------

/// One response read from the client's side of the proxy.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub lines: Lines,
    pub body: Vec<u8>,
    /// The body was read to its end (false: the stream stopped inside it).
    pub complete: bool,
    /// No length and not chunked: the body ran to the end of the stream.
    pub close_delimited: bool,
    /// Bytes of the stream this response took.
    pub len: usize,
}

impl Resp {
    pub fn header(&self, name: &'static str) -> Option<&[u8]> {
        values(&self.lines, name).next()
    }
}

/// Reads the response at the start of `buf` (non-empty) as a client of the proxy
/// must be able to: CRLF only, at most one framing header (`Content-Length`
/// digits, or `Transfer-Encoding: chunked`), well-formed chunks. `bodiless`
/// says, from the status and lines, that this response has no body (it answers
/// `HEAD`). A body cut short by the end of the stream is `complete: false`.
pub fn read_proxy_response(
    buf: &[u8],
    bodiless: impl Fn(u16, &Lines) -> bool,
) -> Result<Resp, String> {
    if !buf.starts_with(b"HTTP/1.1 ") {
        return Err(format!(
            "not a response: {}",
            show(&buf[..buf.len().min(64)])
        ));
    }
    let Some(end) = find(buf, b"\r\n\r\n").map(|i| i + 4) else {
        return Err(format!("a response head cut short: {}", show(buf)));
    };
    let head = &buf[..end];
    if has_bare_cr_or_lf(head) {
        return Err(format!("bare CR or LF in a response head: {}", show(head)));
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == end => {}
        other => {
            return Err(format!(
                "unreadable response head ({other:?}): {}",
                show(head)
            ))
        }
    }
    let status = resp.code.unwrap_or(0);
    let lines = lines_of(resp.headers);
    let lengths: Vec<&[u8]> = values(&lines, "content-length").collect();
    let codings: Vec<&[u8]> = values(&lines, "transfer-encoding").collect();
    if lengths.len() + codings.len() > 1 {
        return Err(format!(
            "{} framing headers in one response: {}",
            lengths.len() + codings.len(),
            show(head)
        ));
    }
    if let Some(te) = codings.first() {
        if !te.eq_ignore_ascii_case(b"chunked") {
            return Err(format!(
                "Transfer-Encoding other than chunked: {}",
                show(head)
            ));
        }
    }
    let length = match lengths.first() {
        Some(v) => Some(decimal(v).ok_or_else(|| format!("bad Content-Length: {}", show(head)))?),
        None => None,
    };
    let rest = &buf[end..];
    let mut out = Resp {
        status,
        lines: lines.clone(),
        body: Vec::new(),
        complete: true,
        close_delimited: false,
        len: end,
    };
    if (100..200).contains(&status) || status == 204 || status == 304 || bodiless(status, &lines) {
        return Ok(out);
    }
    if !codings.is_empty() {
        match dechunk(rest, true) {
            Dechunked::Done { body, used } => {
                out.body = body;
                out.len += used;
            }
            Dechunked::Partial { body } => {
                out.body = body;
                out.complete = false;
                out.len = buf.len();
            }
            Dechunked::Bad { why, .. } => {
                return Err(format!(
                    "a malformed chunked body from the proxy ({why}): {}",
                    show(buf)
                ))
            }
        }
    } else if let Some(n) = length {
        if (rest.len() as u64) >= n {
            out.body = rest[..n as usize].to_vec();
            out.len += n as usize;
        } else {
            out.body = rest.to_vec();
            out.complete = false;
            out.len = buf.len();
        }
    } else {
        out.body = rest.to_vec();
        out.close_delimited = true;
        out.len = buf.len();
    }
    Ok(out)
}

/// The session cookie values (`id.tag`) a response sets.
pub fn session_cookies(resp: &Resp) -> Vec<Vec<u8>> {
    values(&resp.lines, "set-cookie")
        .filter_map(|v| {
            let pair = v.split(|&c| c == b';').next()?;
            let eq = pair.iter().position(|&c| c == b'=')?;
            let (name, value) = (trim_ows(&pair[..eq]), trim_ows(&pair[eq + 1..]));
            (name == b"sessiongate" || name == b"__Host-sessiongate").then(|| value.to_vec())
        })
        .collect()
}
