//! A conformance corpus for the proxy's HTTP/1 wire path (and the HTTP/2
//! downgrade), as tables of cases: one case for every class in nodejs/llhttp's
//! `test/request/*.md` and `test/response/*.md`, plus every request-smuggling
//! class from PortSwigger's research (CL.TE, TE.CL, TE.TE, CL.0, 0.CL, response
//! queue poisoning, pipeline desync, the `Connection: Content-Length` hop-by-hop
//! trick).
//!
//! Each case is the exact bytes a client (or, for responses, the upstream) sends,
//! the decision the proxy must make, and a one-line `why`. Where sessiongate is
//! stricter than llhttp, the `why` says `stricter than llhttp: ...`.
//!
//! Request decisions (DESIGN.md §8, §9):
//! - `Forward { method, target, body }` / `ForwardAll`: exactly these requests
//!   reached the upstream, in order, each with exactly one framing line written by
//!   the proxy when it has a body (`content-length: N` or `transfer-encoding:
//!   chunked`), one `Host`, at most one `X-Session-Id` (the proxy's, 43 chars), and
//!   the client got each one's answer in order. Anything sent after them never
//!   reaches the upstream as a request of its own.
//! - `Refuse(status)`: the proxy answered `status` itself, closed the connection,
//!   and the upstream received not one byte.
//! - `RefuseMidBody(status)`: the same for a body found bad while streaming: the
//!   head may have gone upstream, but no complete request, and never the request
//!   hidden after the bad bytes.
//!
//! Response decisions: `Relay { status, body }` or `BadGateway` (a `502` from the
//! proxy, no upstream body bytes leaked). Either way a second and a third request
//! on the same client connection get their own answers (no response queue
//! poisoning), and no `X-Session-Set` hidden in an upstream body is ever applied.
//!
//! Each case runs against its own proxy and recording upstream; the cases of a
//! table run concurrently. A failure names every failing case of the table and
//! shows what the client and the upstream got.

#[path = "support/corpus.rs"]
mod corpus;
mod support;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt as _;

use corpus::*;
use support::raw::{h2_exchange, h2_get_fields, h2_request, FRAME_GOAWAY, FRAME_RST_STREAM};
use support::{config, is_base64url_32, Proxy, COOKIE};

/// How long a client waits for the responses it expects.
const RESPONSE_WAIT: Duration = Duration::from_secs(5);
/// After the expected responses: how long the client waits for the connection
/// to close or for more bytes (a smuggled request's answer).
const LINGER: Duration = Duration::from_millis(600);
/// After a refusal: how long the client waits for the proxy to close.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// After the client is done: time for the upstream to finish reading.
const SETTLE: Duration = Duration::from_millis(200);
/// Cases of one table in flight at once (each has its own proxy).
const CONCURRENCY: usize = 24;

const HOST: &str = "Host: example.test";
/// A request hidden behind another; it must never reach the upstream as one.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: example.test\r\n\r\n";

// ---------------------------------------------------------------------------
// Building bytes.
// ---------------------------------------------------------------------------

/// Head lines joined with CRLF, the empty line, then `body`.
fn msg(head: &[&str], body: &str) -> Vec<u8> {
    msg_b(head, body.as_bytes())
}

fn msg_b(head: &[&str], body: &[u8]) -> Vec<u8> {
    let mut out = head.join("\r\n").into_bytes();
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
    out
}

/// `data` as one chunk and the last chunk.
fn chunked(data: &str) -> String {
    format!("{:x}\r\n{data}\r\n0\r\n\r\n", data.len())
}

// ---------------------------------------------------------------------------
// Request cases.
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Fwd {
    method: &'static str,
    target: &'static str,
    body: Vec<u8>,
}

#[derive(Clone, Debug)]
enum Decision {
    Forward {
        method: &'static str,
        target: &'static str,
        body: Vec<u8>,
    },
    ForwardAll(Vec<Fwd>),
    Refuse(u16),
    RefuseMidBody(u16),
}

use Decision::{Refuse, RefuseMidBody};

fn fwd(method: &'static str, target: &'static str, body: impl AsRef<[u8]>) -> Decision {
    Decision::Forward {
        method,
        target,
        body: body.as_ref().to_vec(),
    }
}

fn fwd_all(list: &[(&'static str, &'static str, &str)]) -> Decision {
    Decision::ForwardAll(
        list.iter()
            .map(|&(method, target, body)| Fwd {
                method,
                target,
                body: body.as_bytes().to_vec(),
            })
            .collect(),
    )
}

impl Decision {
    fn forwarded(&self) -> Vec<Fwd> {
        match self {
            Decision::Forward {
                method,
                target,
                body,
            } => vec![Fwd {
                method,
                target,
                body: body.clone(),
            }],
            Decision::ForwardAll(list) => list.clone(),
            Refuse(_) | RefuseMidBody(_) => Vec::new(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Refuse(s) => format!("Refuse({s}): answered by the proxy, closed, no byte upstream"),
            RefuseMidBody(s) => format!(
                "RefuseMidBody({s}): answered by the proxy, closed, no complete request upstream"
            ),
            _ => {
                let list: Vec<String> = self
                    .forwarded()
                    .iter()
                    .map(|f| format!("{} {} body={}", f.method, f.target, show(&f.body, 120)))
                    .collect();
                format!("Forward [{}]", list.join(", "))
            }
        }
    }
}

/// Extra upstream-side checks for one case.
#[derive(Clone, Debug)]
enum Also {
    /// No forwarded request carries a header of this name (compared
    /// case-insensitively with `_` read as `-`).
    NoHeader(&'static str),
    /// Every forwarded request carries exactly one `X-Session-Id`, the proxy's.
    OwnSessionId,
    /// These bytes never reach the upstream.
    NeverUpstream(&'static str),
}

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    expect: Decision,
    why: &'static str,
    also: Vec<Also>,
    max_body: Option<u64>,
}

fn case(
    name: &'static str,
    bytes: impl Into<Vec<u8>>,
    expect: Decision,
    why: &'static str,
) -> Case {
    Case {
        name,
        bytes: bytes.into(),
        expect,
        why,
        also: Vec::new(),
        max_body: None,
    }
}

impl Case {
    fn also(mut self, also: Also) -> Self {
        self.also.push(also);
        self
    }

    /// Runs this case's proxy with `limits.max_body_bytes: n`.
    fn max_body(mut self, n: u64) -> Self {
        self.max_body = Some(n);
        self
    }
}

/// A header name as CGI-style back ends read it: lower case, `_` as `-`.
fn normalized(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

/// What every request the proxy forwards must look like.
fn forwarded_request_problems(req: &WireRequest) -> Vec<String> {
    let mut problems = Vec::new();
    let at = format!("upstream request {} {}", req.method, req.target);
    if req.version != "HTTP/1.1" {
        problems.push(format!("{at}: version {:?}, not HTTP/1.1", req.version));
    }
    let framing = req.framing_lines();
    if framing.len() > 1 || (!req.body.is_empty() && framing.len() != 1) {
        problems.push(format!(
            "{at}: {} framing line(s) {framing:?} for a {}-byte body; the proxy writes exactly one",
            framing.len(),
            req.body.len()
        ));
    }
    for (name, value) in &req.lines {
        let value = String::from_utf8_lossy(value);
        if name.eq_ignore_ascii_case("content-length") && value != req.body.len().to_string() {
            problems.push(format!(
                "{at}: `{name}: {value}` is not the computed length {}",
                req.body.len()
            ));
        }
        if name.eq_ignore_ascii_case("transfer-encoding") && !value.eq_ignore_ascii_case("chunked")
        {
            problems.push(format!("{at}: `{name}: {value}` is not a lone chunked"));
        }
        let norm = normalized(name);
        if name.contains('_')
            && matches!(
                norm.as_str(),
                "content-length" | "transfer-encoding" | "host" | "connection"
            )
        {
            problems.push(format!("{at}: `{name}` reached the upstream"));
        }
        if norm.starts_with("x-session-") {
            let own = matches!(
                norm.as_str(),
                "x-session-id" | "x-session-new" | "x-session-data"
            );
            if !own || name.contains('_') {
                problems.push(format!("{at}: client session header `{name}: {value}`"));
            }
        }
    }
    let hosts = req.values("host");
    if hosts.len() != 1 {
        problems.push(format!("{at}: {} Host line(s) {hosts:?}", hosts.len()));
    }
    let ids = req.values("x-session-id");
    if ids.len() > 1 || ids.iter().any(|id| !is_base64url_32(id)) {
        problems.push(format!("{at}: X-Session-Id {ids:?} is not one 43-char id"));
    }
    problems
}

fn also_problems(also: &[Also], upstream: &WireUpstream) -> Vec<String> {
    let mut problems = Vec::new();
    let received = upstream.received();
    for check in also {
        match check {
            Also::NoHeader(name) => {
                for req in upstream.requests() {
                    for (n, v) in &req.lines {
                        if normalized(n) == *name {
                            problems.push(format!(
                                "upstream request {} got `{n}: {}`",
                                req.target,
                                String::from_utf8_lossy(v)
                            ));
                        }
                    }
                }
            }
            Also::OwnSessionId => {
                for req in upstream.requests() {
                    let ids = req.values("x-session-id");
                    if ids.len() != 1 || !is_base64url_32(&ids[0]) {
                        problems.push(format!(
                            "upstream request {} got X-Session-Id {ids:?}, not exactly the proxy's",
                            req.target
                        ));
                    }
                }
            }
            Also::NeverUpstream(bytes) => {
                if contains(&received, bytes.as_bytes()) {
                    problems.push(format!("{bytes:?} reached the upstream"));
                }
            }
        }
    }
    problems
}

async fn run_request_case(case: Case) -> Result<(), String> {
    let upstream = WireUpstream::echo().await;
    let mut yaml = config(&upstream.url());
    if let Some(n) = case.max_body {
        yaml = yaml.set("limits.max_body_bytes", &n.to_string());
    }
    let proxy = Proxy::start(yaml).await;
    let expected = case.expect.forwarded();
    let methods: Vec<&str> = if expected.is_empty() {
        vec!["GET"]
    } else {
        expected.iter().map(|f| f.method).collect()
    };
    let mut conn = Conn::connect(proxy.addr()).await;
    conn.send(&case.bytes).await;
    conn.wait_finals(&methods, methods.len(), RESPONSE_WAIT)
        .await;
    // A refusal closes the connection (the wait ends there); a forward leaves
    // time for the answer to anything smuggled behind it.
    let linger = if expected.is_empty() {
        CLOSE_WAIT
    } else {
        LINGER
    };
    conn.linger(linger).await;
    tokio::time::sleep(SETTLE).await;
    let view = conn.view(&methods);

    let mut problems = Vec::new();
    let requests = upstream.requests();
    match &case.expect {
        Refuse(status) | RefuseMidBody(status) => {
            let statuses: Vec<u16> = view.finals.iter().map(|r| r.status).collect();
            if statuses != [*status] {
                problems.push(format!(
                    "client got status(es) {statuses:?}, expected only {status} from the proxy"
                ));
            }
            if !conn.closed() {
                problems.push("the proxy left the connection open".into());
            }
            if matches!(case.expect, Refuse(_)) {
                if !upstream.received().is_empty() {
                    problems.push("the upstream received bytes".into());
                }
            } else if !requests.is_empty() {
                problems.push(format!(
                    "the upstream got {} complete request(s)",
                    requests.len()
                ));
            }
            if contains(&upstream.received(), b"/smuggled") {
                problems.push("bytes of the smuggled request reached the upstream".into());
            }
        }
        _ => {
            if requests.len() != expected.len() {
                problems.push(format!(
                    "the upstream got {} request(s) {:?}, expected {}",
                    requests.len(),
                    requests
                        .iter()
                        .map(|r| format!("{} {}", r.method, r.target))
                        .collect::<Vec<_>>(),
                    expected.len()
                ));
            }
            for (got, want) in requests.iter().zip(&expected) {
                if got.method != want.method || got.target != want.target || got.body != want.body {
                    problems.push(format!(
                        "upstream got {} {} body={}, expected {} {} body={}",
                        got.method,
                        got.target,
                        show(&got.body, 200),
                        want.method,
                        want.target,
                        show(&want.body, 200)
                    ));
                }
            }
            for req in &requests {
                problems.extend(forwarded_request_problems(req));
                if req.target.contains("smuggled")
                    && !expected.iter().any(|f| f.target == req.target)
                {
                    problems.push(format!(
                        "a smuggled request reached the upstream: {}",
                        req.target
                    ));
                }
            }
            for (i, want) in expected.iter().enumerate() {
                let body = echo_body(want.method, want.target, &want.body);
                match view.finals.get(i) {
                    Some(r) if r.status == 200 && r.body == body => {}
                    Some(r) => problems.push(format!(
                        "response {} to the client is {}, expected 200 {}",
                        i + 1,
                        r.short(),
                        show(&body, 200)
                    )),
                    None => problems.push(format!("the client got no response {}", i + 1)),
                }
            }
            for extra in view.finals.iter().skip(expected.len()) {
                if extra.status < 300 {
                    problems.push(format!(
                        "the client got an extra successful response {}",
                        extra.short()
                    ));
                }
            }
        }
    }
    for r in &view.finals {
        if r.framing_lines > 1 {
            problems.push(format!(
                "a response to the client has {} framing lines",
                r.framing_lines
            ));
        }
    }
    if let Some(e) = &view.error {
        problems.push(format!("the client could not read the proxy's bytes: {e}"));
    }
    for e in upstream.errors() {
        problems.push(format!(
            "the upstream could not read the proxy's bytes: {e}"
        ));
    }
    problems.extend(also_problems(&case.also, &upstream));

    if problems.is_empty() {
        return Ok(());
    }
    let mut out = format!(
        "[{}] {}\n  expected: {}\n  problems:",
        case.name,
        case.why,
        case.expect.describe()
    );
    for p in &problems {
        let _ = write!(out, "\n    - {p}");
    }
    let _ = write!(
        out,
        "\n  client sent: {}\n  client got (closed: {}): {}\n  upstream: {}",
        show(&case.bytes, 700),
        conn.closed(),
        show(conn.received(), 900),
        upstream.describe()
    );
    for req in &requests {
        let _ = write!(out, "\n    upstream request head: {}", req.head());
    }
    Err(out)
}

async fn run_cases<C, F, Fut>(table: &str, cases: Vec<C>, run: F)
where
    F: Fn(C) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let total = cases.len();
    println!("{table}: {total} case(s)");
    let mut failures: Vec<String> = futures_util::stream::iter(cases.into_iter().map(run))
        .buffer_unordered(CONCURRENCY)
        .filter_map(|r| async move { r.err() })
        .collect()
        .await;
    if !failures.is_empty() {
        failures.sort();
        panic!(
            "{table}: {} of {total} case(s) failed\n\n{}\n",
            failures.len(),
            failures.join("\n\n")
        );
    }
}

async fn run_requests(table: &str, cases: Vec<Case>) {
    let mut names: Vec<&str> = cases.iter().map(|c| c.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "{table}: case names repeat");
    run_cases(table, cases, run_request_case).await;
}

// ---------------------------------------------------------------------------
// llhttp test/request/content-length.md, and every malformed Content-Length.
// ---------------------------------------------------------------------------

fn content_length_cases() -> Vec<Case> {
    let bad = |name, value: &str, why| {
        case(
            name,
            msg(
                &[
                    "POST /cl HTTP/1.1",
                    HOST,
                    &format!("Content-Length: {value}"),
                ],
                "hello",
            ),
            Refuse(400),
            why,
        )
    };
    vec![
        case(
            "cl_leading_zeros",
            msg(&["PUT /url HTTP/1.1", HOST, "Content-Length: 003"], "abc"),
            fwd("PUT", "/url", "abc"),
            "llhttp: `003` is 1*DIGIT, so 3; the proxy writes its own `content-length: 3`",
        ),
        case(
            "cl_then_other_headers",
            msg(&["PUT /url HTTP/1.1", HOST, "Content-Length: 003", "Ohai: world"], "abc"),
            fwd("PUT", "/url", "abc"),
            "llhttp: a header after Content-Length does not disturb it",
        ),
        case(
            "cl_overflow",
            msg(&["PUT /url HTTP/1.1", HOST, "Content-Length: 1000000000000000000000"], ""),
            Refuse(400),
            "llhttp: Content-Length overflow; a length no integer holds is malformed, never truncated",
        ),
        case(
            "cl_duplicate_different",
            msg(&["PUT /url HTTP/1.1", HOST, "Content-Length: 1", "Content-Length: 2"], "ab"),
            Refuse(400),
            "llhttp: duplicate Content-Length; which one frames the body is anyone's guess",
        ),
        case(
            "cl_duplicate_equal",
            msg(&["PUT /url HTTP/1.1", HOST, "Content-Length: 5", "Content-Length: 5"], "hello"),
            Refuse(400),
            "two Content-Length lines, even equal: stricter than RFC 9110 §8.6 (which may merge them); llhttp refuses too",
        ),
        case(
            "cl_with_te_identity",
            msg(&["PUT /url HTTP/1.1", HOST, "Content-Length: 1", "Transfer-Encoding: identity"], "x"),
            Refuse(400),
            "llhttp: Content-Length can't be present with Transfer-Encoding",
        ),
        case(
            "cl_with_te_chunked",
            msg(&["PUT /url HTTP/1.1", HOST, "Content-Length: 1", "Transfer-Encoding: chunked"], "0\r\n\r\n"),
            Refuse(400),
            "stricter than llhttp: its lenient_chunked_length flag lets TE win; CL beside TE is the CL.TE/TE.CL seed",
        ),
        case(
            "cl_mixed_case_name_http10",
            msg(&["GET /get_funky_content_length_body_hello HTTP/1.0", "conTENT-Length: 5"], "HELLO"),
            fwd("GET", "/get_funky_content_length_body_hello", "HELLO"),
            "llhttp: field names are case-insensitive; HTTP/1.0 without Host is forwarded",
        ),
        case(
            "cl_surrounding_spaces",
            msg(&["POST / HTTP/1.1", HOST, "Content-Length:  42 "], &"x".repeat(42)),
            fwd("POST", "/", "x".repeat(42)),
            "llhttp: OWS around a field value is not part of it",
        ),
        case(
            "cl_surrounding_tabs",
            msg(&["POST / HTTP/1.1", HOST, "Content-Length:\t5\t"], "hello"),
            fwd("POST", "/", "hello"),
            "llhttp (response file): HTAB is OWS too",
        ),
        bad("cl_inner_space_4_2", "4 2", "llhttp: Invalid character in Content-Length"),
        bad("cl_inner_space_13_37", "13 37", "llhttp: Invalid character in Content-Length"),
        bad("cl_inner_space_5_5", "5 5", "a space inside the digits: one parser reads 5, another 55"),
        bad("cl_empty", "", "llhttp: Empty Content-Length"),
        bad("cl_plus_sign", "+5", "not 1*DIGIT: some parsers read +5 as 5"),
        bad("cl_hex", "0x5", "not 1*DIGIT: some parsers read 0x5 as 5"),
        bad("cl_negative", "-1", "not 1*DIGIT: a negative length is never a length"),
        bad("cl_list", "5,5", "stricter than RFC 9110 §8.6: a list of equal lengths is refused, never merged"),
        case(
            "cl_cr_instead_of_dash",
            msg(&["PUT /url HTTP/1.1", HOST, "Content\rLength: 003"], "abc"),
            Refuse(400),
            "llhttp: Invalid header token; a bare CR inside a name",
        ),
        case(
            "cl_zero_on_get",
            msg(&["GET /zero HTTP/1.1", HOST, "Content-Length: 0"], ""),
            fwd("GET", "/zero", ""),
            "an explicit empty body is forwarded as an empty body",
        ),
        case(
            "cl_over_max_body",
            msg(&["POST /big HTTP/1.1", HOST, "Content-Length: 2000"], &"b".repeat(2000)),
            Refuse(413),
            "§8: a declared body over limits.max_body_bytes is refused before anything is forwarded",
        )
        .max_body(1000),
    ]
}

// ---------------------------------------------------------------------------
// llhttp test/request/transfer-encoding.md, and malformed chunked bodies.
// ---------------------------------------------------------------------------

fn transfer_encoding_cases() -> Vec<Case> {
    let te = |name, body: &str, expect, why| {
        case(
            name,
            msg(
                &["PUT /url HTTP/1.1", HOST, "Transfer-Encoding: chunked"],
                body,
            ),
            expect,
            why,
        )
    };
    let bad_chunks = |name, chunks: &str, why| {
        te(
            name,
            &format!("{chunks}0\r\n\r\n{SMUGGLED}"),
            RefuseMidBody(400),
            why,
        )
    };
    let coding = |name, lines: &[&str], body: &str, why| {
        let mut head = vec!["POST /te HTTP/1.1", HOST];
        head.extend_from_slice(lines);
        case(name, msg(&head, body), Refuse(400), why)
    };
    let long_ext = format!("5;x={}\r\nhello\r\n0\r\n\r\n", "a".repeat(100 * 1024));
    vec![
        coding(
            "te_empty_with_cl",
            &["Transfer-Encoding:", "Content-Length: 5"],
            "hello",
            "llhttp: Empty Transfer-Encoding",
        ),
        te("te_chunked_empty_body", "0\r\n\r\n", fwd("PUT", "/url", ""), "llhttp: chunked with only the last chunk"),
        te(
            "te_lowercase_hex_size",
            "a\r\n0123456789\r\n0\r\n\r\n",
            fwd("PUT", "/url", "0123456789"),
            "llhttp: chunk sizes are hex, lower case",
        ),
        te(
            "te_uppercase_hex_size",
            "A\r\n0123456789\r\n0\r\n\r\n",
            fwd("PUT", "/url", "0123456789"),
            "llhttp: chunk sizes are hex, upper case",
        ),
        case(
            "te_post_chunked",
            msg(
                &["POST /post_chunked_all_your_base HTTP/1.1", HOST, "Transfer-Encoding: chunked"],
                "1e\r\nall your base are belong to us\r\n0\r\n\r\n",
            ),
            fwd("POST", "/post_chunked_all_your_base", "all your base are belong to us"),
            "llhttp: POST with a chunked body",
        ),
        te(
            "te_triple_zero_last_chunk",
            "5\r\nhello\r\n6\r\n world\r\n000\r\n\r\n",
            fwd("PUT", "/url", "hello world"),
            "llhttp: `000` is a last chunk",
        ),
        te(
            "te_trailers",
            "5\r\nhello\r\n6\r\n world\r\n0\r\nVary: *\r\nContent-Type: text/plain\r\n\r\n",
            fwd("PUT", "/url", "hello world"),
            "llhttp: trailer fields end with an empty line; the body is the chunks' data",
        ),
        te(
            "te_chunk_extensions",
            "5;ilovew3;somuchlove=aretheseparametersfor;another=withvalue\r\nhello\r\n6;blahblah;blah\r\n world\r\n0\r\n\r\n",
            fwd("PUT", "/url", "hello world"),
            "llhttp: extensions are legal and ignored; re-chunked by the proxy, they never reach the upstream",
        )
        .also(Also::NeverUpstream("ilovew3")),
        bad_chunks(
            "te_chunk_ext_without_semicolon",
            "2 erfrferferf\r\naa\r\n",
            "llhttp: Invalid character in chunk size",
        ),
        bad_chunks(
            "te_chunk_ext_empty_after_semicolon",
            "2;\r\naa\r\n",
            "llhttp: Invalid character in chunk extensions (a chunk-ext name is a token)",
        ),
        te(
            "te_chunk_ext_quoted",
            "5;ilovew3=\"I \\\"love\\\"; \\\\extensions\\\\\";somuchlove=\"aretheseparametersfor\";blah;foo=bar\r\nhello\r\n6;blahblah;blah\r\n world\r\n0\r\n\r\n",
            fwd("PUT", "/url", "hello world"),
            "llhttp: a quoted extension value may hold `;` and escaped quotes",
        )
        .also(Also::NeverUpstream("ilovew3")),
        bad_chunks(
            "te_chunk_ext_unbalanced_quote",
            "5;ilovew3=\"abc\";somuchlove=\"def; ghi\r\nhello\r\n",
            "llhttp: Invalid character in chunk extensions quoted value",
        ),
        coding("te_pigeons", &["Transfer-Encoding: pigeons"], "", "llhttp: Request has invalid Transfer-Encoding; no length can be known"),
        coding(
            "te_identity_with_cl",
            &["Transfer-Encoding: identity", "Content-Length: 5"],
            "World",
            "llhttp: Content-Length can't be present with Transfer-Encoding",
        ),
        coding(
            "te_cl_then_three_empty_te",
            &["Content-Length: 10", "Transfer-Encoding:", "Transfer-Encoding:", "Transfer-Encoding:"],
            "2\r\nAA\r\n0\r\n",
            "llhttp: Transfer-Encoding can't be present with Content-Length",
        ),
        coding(
            "te_chunked_then_deflate",
            &["Transfer-Encoding: chunked, deflate"],
            "World",
            "llhttp: Invalid Transfer-Encoding header value; chunked must be last",
        ),
        coding(
            "te_chunked_line_then_deflate_line",
            &["Transfer-Encoding: chunked", "Transfer-Encoding: deflate"],
            "World",
            "llhttp: Invalid Transfer-Encoding header value; chunked must be last",
        ),
        coding(
            "te_deflate_then_chunked",
            &["Transfer-Encoding: deflate, chunked"],
            "5\r\nWorld\r\n0\r\n\r\n",
            "stricter than llhttp: it accepts chunked as the final coding; §9 allows only a lone chunked",
        ),
        coding(
            "te_deflate_line_then_chunked_line",
            &["Transfer-Encoding: deflate", "Transfer-Encoding: chunked"],
            "5\r\nWorld\r\n0\r\n\r\n",
            "stricter than llhttp: it accepts chunked last over two lines; §9 allows only one lone chunked",
        ),
        coding(
            "te_chunkedchunked",
            &["Transfer-Encoding: chunkedchunked"],
            "5\r\nWorld\r\n0\r\n\r\n",
            "llhttp: `chunkedchunked` is not chunked",
        ),
        te(
            "te_missing_last_chunk",
            "3\r\nfoo\r\n\r\n",
            RefuseMidBody(400),
            "llhttp: an empty chunk-size line is not a last chunk",
        ),
        te(
            "te_chunk_size_space_then_lf",
            "3 \n  \r\nfoo\r\n\r\n",
            RefuseMidBody(400),
            "llhttp: Invalid character in chunk size (space, then a bare LF)",
        ),
        case(
            "te_obs_fold_after_chunked",
            msg(&["PUT /url HTTP/1.1", HOST, "Transfer-Encoding: chunked", "  abc"], "5\r\nWorld\r\n0\r\n\r\n"),
            Refuse(400),
            "stricter than llhttp: lenient_headers folds it into `chunked abc`; obs-fold is never unfolded",
        ),
        case(
            "te_chunk_size_bare_cr",
            msg(
                &["GET / HTTP/1.1", "Host: a", "Connection: close ", "Transfer-Encoding: chunked "],
                "5\r\r;ABCD\r\n34\r\nE\r\n0\r\n\r\nGET /smuggled HTTP/1.1 \r\nHost: a\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
            ),
            RefuseMidBody(400),
            "stricter than llhttp: lenient_optional_lf_after_cr reads `5\\r\\r;ABCD` as a size line and eats the next request",
        ),
        te(
            "te_chunk_data_without_crlf",
            "5\r\nABCDE0\r\n\r\n",
            RefuseMidBody(400),
            "stricter than llhttp: lenient_optional_crlf_after_chunk accepts it; llhttp: Expected LF after chunk data",
        ),
        te(
            "te_space_after_chunk_size",
            "a \r\n0123456789\r\n0\r\n\r\n",
            RefuseMidBody(400),
            "stricter than llhttp: lenient_spaces_after_chunk_size accepts it; BWS only precedes `;`",
        ),
        bad_chunks("te_chunk_size_0x", "0x5\r\nhello\r\n", "a chunk size is HEXDIG only; some parsers read 0x5"),
        bad_chunks("te_chunk_size_negative", "-1\r\nhello\r\n", "a chunk size is HEXDIG only"),
        bad_chunks(
            "te_chunk_size_overflow",
            "fffffffffffffffff\r\nhello\r\n",
            "a chunk size no integer holds is malformed, never truncated",
        ),
        bad_chunks("te_chunk_size_inner_space", "1 0\r\n0123456789abcdef\r\n", "a space inside a chunk size"),
        bad_chunks("te_chunk_size_plus", "+5\r\nhello\r\n", "a chunk size is HEXDIG only; some parsers read +5"),
        te(
            "te_chunk_ext_too_long",
            &long_ext,
            RefuseMidBody(400),
            "a 100 KiB chunk-extension line is refused, never buffered without bound",
        ),
        case(
            "te_on_http10",
            msg(&["POST / HTTP/1.0", HOST, "Transfer-Encoding: chunked"], &format!("0\r\n\r\n{SMUGGLED}")),
            Refuse(400),
            "RFC 9112 §6.1: HTTP/1.0 has no chunked; a 1.0 back end would read the chunks as the next request",
        ),
        case(
            "te_tab_before_chunked",
            msg(&["POST /te HTTP/1.1", HOST, "Transfer-Encoding:\tchunked"], "5\r\nhello\r\n0\r\n\r\n"),
            fwd("POST", "/te", "hello"),
            "HTAB before the value is OWS: a lone chunked, decoded once and re-framed",
        ),
        case(
            "te_uppercase_chunked",
            msg(&["POST /te HTTP/1.1", HOST, "Transfer-Encoding: CHUNKED"], "5\r\nhello\r\n0\r\n\r\n"),
            fwd("POST", "/te", "hello"),
            "RFC 9112 §7: transfer-coding names are case-insensitive",
        ),
        case(
            "te_chunked_over_max_body",
            msg(
                &["POST /big HTTP/1.1", HOST, "Transfer-Encoding: chunked"],
                &format!("400\r\n{}\r\n400\r\n{}\r\n0\r\n\r\n", "a".repeat(1024), "b".repeat(1024)),
            ),
            RefuseMidBody(413),
            "§8: a chunked body growing past limits.max_body_bytes is cut off with 413",
        )
        .max_body(1500),
    ]
}

// ---------------------------------------------------------------------------
// llhttp test/request/connection.md, Upgrade and h2c.
// ---------------------------------------------------------------------------

fn connection_cases() -> Vec<Case> {
    vec![
        case(
            "conn_keep_alive",
            msg(&["PUT /url HTTP/1.1", HOST, "Connection: keep-alive"], ""),
            fwd("PUT", "/url", ""),
            "llhttp: keep-alive sets a flag, nothing more",
        ),
        case(
            "conn_keep_alive_restart",
            [
                msg(&["PUT /url HTTP/1.1", HOST, "Connection: keep-alive"], ""),
                msg(&["PUT /url2 HTTP/1.1", HOST, "Connection: keep-alive"], ""),
            ]
            .concat(),
            fwd_all(&[("PUT", "/url", ""), ("PUT", "/url2", "")]),
            "llhttp: a keep-alive connection carries the next request",
        ),
        case(
            "conn_http10_then_more",
            [msg(&["PUT /url HTTP/1.0"], ""), SMUGGLED.as_bytes().to_vec()].concat(),
            fwd("PUT", "/url", ""),
            "llhttp strict: Data after `Connection: close`; an HTTP/1.0 request without keep-alive ends the connection",
        ),
        case(
            "conn_http10_cl0_then_chunked",
            [
                msg(&["PUT /url HTTP/1.0", "Content-Length: 0"], ""),
                msg(&["PUT /smuggled HTTP/1.1", HOST, "Transfer-Encoding: chunked"], "0\r\n\r\n"),
            ]
            .concat(),
            fwd("PUT", "/url", ""),
            "llhttp loose mode restarts after 1.0; the proxy closes after answering it",
        ),
        case(
            "conn_crlf_between_requests",
            [
                msg(
                    &[
                        "POST / HTTP/1.1",
                        HOST,
                        "Content-Type: application/x-www-form-urlencoded",
                        "Content-Length: 4",
                    ],
                    "q=42\r\n",
                ),
                msg(&["GET /second HTTP/1.1", HOST], ""),
            ]
            .concat(),
            fwd_all(&[("POST", "/", "q=42"), ("GET", "/second", "")]),
            "llhttp: RFC 9112 §2.2, an empty line before a request line is ignored",
        ),
        case(
            "conn_close",
            msg(&["PUT /url HTTP/1.1", HOST, "Connection: close"], ""),
            fwd("PUT", "/url", ""),
            "llhttp: close sets a flag; the request is forwarded",
        ),
        case(
            "conn_close_then_more",
            [
                msg(&["POST / HTTP/1.1", HOST, "Content-Length: 4", "Connection: close"], "q=42\r\n"),
                SMUGGLED.as_bytes().to_vec(),
            ]
            .concat(),
            fwd("POST", "/", "q=42"),
            "llhttp strict: Data after `Connection: close` is never a request",
        ),
        case(
            "conn_many_tokens",
            msg(&["PUT /url HTTP/1.1", HOST, "Connection: close, token, upgrade, token, keep-alive"], ""),
            fwd("PUT", "/url", ""),
            "llhttp: a token list; close wins",
        ),
        case(
            "conn_tokens_folded",
            msg(
                &[
                    "GET /demo HTTP/1.1",
                    HOST,
                    "Connection: Something,",
                    " Upgrade, ,Keep-Alive",
                    "Upgrade: WebSocket",
                ],
                "",
            ),
            Refuse(400),
            "stricter than llhttp: it unfolds obs-fold by default; RFC 9112 §5.2 lets a server refuse it",
        ),
        case(
            "conn_tokens_folded_after_space",
            msg(&["GET /demo HTTP/1.1", HOST, "Connection: keep-alive, ", " upgrade", "Upgrade: WebSocket"], ""),
            Refuse(400),
            "stricter than llhttp: obs-fold after trailing whitespace, unfolded by llhttp",
        ),
        case(
            "conn_upgrade_ws",
            msg(&["PUT /url HTTP/1.1", HOST, "Connection: upgrade", "Upgrade: ws"], ""),
            fwd("PUT", "/url", ""),
            "llhttp pauses on Upgrade; the proxy forwards it and, answered 200, opens no tunnel",
        ),
        case(
            "conn_upgrade_with_body",
            msg(&["PUT /url HTTP/1.1", HOST, "Connection: upgrade", "Content-Length: 4", "Upgrade: ws"], "abcdefgh"),
            fwd("PUT", "/url", "abcd"),
            "llhttp: the body is 4 bytes; what follows is not tunnelled before a 101",
        )
        .also(Also::NeverUpstream("efgh")),
        case(
            "conn_upgrade_get_then_bytes",
            msg(
                &[
                    "GET /demo HTTP/1.1",
                    HOST,
                    "Connection: Upgrade",
                    "Sec-WebSocket-Key2: 12998 5 Y3 1  .P00",
                    "Sec-WebSocket-Protocol: sample",
                    "Upgrade: WebSocket",
                    "Sec-WebSocket-Key1: 4 @1  46546xW%0l 1 5",
                    "Origin: http://example.com",
                ],
                "Hot diggity dogg",
            ),
            fwd("GET", "/demo", ""),
            "llhttp: bytes after an upgrade request are not sent upstream until a 101 says so",
        )
        .also(Also::NeverUpstream("Hot diggity")),
        case(
            "conn_upgrade_post_http2",
            msg(
                &["POST /demo HTTP/1.1", HOST, "Connection: Upgrade", "Upgrade: HTTP/2.0", "Content-Length: 15"],
                "sweet post bodyHot diggity dogg",
            ),
            fwd("POST", "/demo", "sweet post body"),
            "llhttp: an upgrade request's body is its Content-Length; the rest is not tunnelled",
        )
        .also(Also::NeverUpstream("Hot diggity")),
        case(
            "conn_h2c_upgrade",
            msg(
                &[
                    "GET /h2c HTTP/1.1",
                    HOST,
                    "Connection: Upgrade, HTTP2-Settings",
                    "Upgrade: h2c",
                    "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
                ],
                "",
            ),
            fwd("GET", "/h2c", ""),
            "§9: Upgrade: h2c is removed; the request goes on as plain HTTP/1.1",
        )
        .also(Also::NoHeader("upgrade"))
        .also(Also::NoHeader("http2-settings")),
        case(
            "conn_h2c_upgrade_with_body",
            msg(
                &[
                    "POST /h2c HTTP/1.1",
                    HOST,
                    "Connection: Upgrade, HTTP2-Settings",
                    "Upgrade: h2c",
                    "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
                    "Content-Length: 5",
                ],
                "hello",
            ),
            fwd("POST", "/h2c", "hello"),
            "§9: Upgrade: h2c is removed, the body forwarded as this request's",
        )
        .also(Also::NoHeader("upgrade"))
        .also(Also::NoHeader("http2-settings")),
    ]
}

// ---------------------------------------------------------------------------
// llhttp test/request/invalid.md (and the malformed heads of sample.md).
// ---------------------------------------------------------------------------

fn invalid_cases() -> Vec<Case> {
    let bad = |name, bytes: Vec<u8>, why| case(name, bytes, Refuse(400), why);
    vec![
        bad(
            "ice_protocol",
            msg(&["GET /music/sweet/music ICE/1.0", HOST], ""),
            "llhttp: Expected SOURCE method for ICE/x.x request; not HTTP at all",
        ),
        bad(
            "ihttp_protocol",
            msg(&["GET /music/sweet/music IHTTP/1.0", HOST], ""),
            "llhttp: Expected HTTP/",
        ),
        bad(
            "rtsp_protocol",
            msg(&["PUT /music/sweet/music RTSP/1.0", HOST], ""),
            "llhttp: Invalid method for RTSP/x.x request; not HTTP",
        ),
        case(
            "announce_over_http10",
            msg(&["ANNOUNCE /music/sweet/music HTTP/1.0", HOST], ""),
            fwd("ANNOUNCE", "/music/sweet/music", ""),
            "llhttp refuses RTSP methods over HTTP; RFC 9110 §9 methods are open tokens, so the proxy forwards it",
        ),
        bad(
            "headers_separated_by_cr",
            msg(&["GET / HTTP/1.1", HOST, "Foo: 1\rBar: 2"], ""),
            "llhttp: Missing expected LF after header value; a bare CR is never a line end",
        ),
        bad(
            "headers_separated_by_lf",
            msg(&["POST / HTTP/1.1", HOST, "x:x\nTransfer-Encoding: chunked"], "1\r\nA\r\n0\r\n\r\n"),
            "llhttp: Missing expected CR; stricter than llhttp's lenient flags, a bare LF hides Transfer-Encoding",
        ),
        bad(
            "headers_dummy_after_cr",
            b"GET / HTTP/1.1\r\nConnection: close\r\nHost: a\r\n\rZGET /evil: HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
            "llhttp: Expected LF after headers; stricter than its lenient_optional_lf_after_cr",
        ),
        bad(
            "empty_header_then_cr",
            msg(&["POST / HTTP/1.1", "Connection: Close", HOST, "x:\rTransfer-Encoding: chunked"], "1\r\nA\r\n0\r\n\r\n"),
            "llhttp: Expected LF after CR",
        ),
        bad(
            "empty_header_then_lf",
            msg(&["POST / HTTP/1.1", HOST, "x:\nTransfer-Encoding: chunked"], "1\r\nA\r\n0\r\n\r\n"),
            "llhttp: Invalid header value char; a bare LF line end",
        ),
        bad("invalid_token_at", msg(&["GET / HTTP/1.1", HOST, "Fo@: Failure"], ""), "llhttp: Invalid header token `@`"),
        bad(
            "invalid_token_ctl",
            msg(&["GET / HTTP/1.1", HOST, "Foo\x01\test: Bar"], ""),
            "llhttp: Invalid header token (a control byte and a tab in a name)",
        ),
        bad("empty_header_name", msg(&["GET / HTTP/1.1", HOST, ": Bar"], ""), "llhttp: Invalid header token (empty name)"),
        case(
            "unknown_method_mkcola",
            msg(&["MKCOLA / HTTP/1.1", HOST], ""),
            fwd("MKCOLA", "/", ""),
            "llhttp knows only its method list; any token is a method (RFC 9110 §9.1), so the proxy forwards it",
        ),
        bad(
            "name_line_folding",
            msg(&["GET / HTTP/1.1", HOST, "name", " : value"], ""),
            "llhttp: Invalid header token; a name split over two lines",
        ),
        bad(
            "corrupted_connection_header",
            b"GET / HTTP/1.1\r\nHost: www.example.com\r\nConnection\r\x1b\x35\xd5eep-Alive\r\nAccept-Encoding: gzip\r\n\r\n".to_vec(),
            "llhttp: Invalid header token",
        ),
        bad(
            "corrupted_header_name",
            b"GET / HTTP/1.1\r\nHost: www.example.com\r\nX-Some-Header\r\x1b\x35\xd5eep-Alive\r\nAccept-Encoding: gzip\r\n\r\n".to_vec(),
            "llhttp: Invalid header token",
        ),
        case(
            "missing_cr_between_headers",
            msg(
                &["GET / HTTP/1.1", "Host: localhost", "Dummy: x\nContent-Length: 23"],
                "GET / HTTP/1.1\r\nDummy: GET /admin HTTP/1.1\r\nHost: localhost\r\n\r\n",
            ),
            Refuse(400),
            "llhttp: Missing expected CR after header value; stricter than llhttp's lenient flags (bare LF smuggles a length)",
        )
        .also(Also::NeverUpstream("/admin")),
        case(
            "version_5_6",
            msg(&["GET / HTTP/5.6", HOST], ""),
            Refuse(505),
            "llhttp: Invalid HTTP version; well-formed but unsupported, so 505 (RFC 9110 §15.6.6)",
        ),
        case("version_2_0", msg(&["GET / HTTP/2.0", HOST], ""), Refuse(505), "HTTP/2 is never spoken in an HTTP/1 request line: 505"),
        case("version_3_0", msg(&["GET / HTTP/3.0", HOST], ""), Refuse(505), "HTTP/3 on an HTTP/1 request line: 505"),
        bad("version_1_1_1", msg(&["GET / HTTP/1.1.1", HOST], ""), "a garbage version is malformed: 400"),
        bad("version_01_1", msg(&["GET / HTTP/01.1", HOST], ""), "HTTP-version is DIGIT.DIGIT: 400"),
        bad("version_lowercase", msg(&["GET / http/1.1", HOST], ""), "HTTP-name is case-sensitive (RFC 9112 §2.3): 400"),
        bad("version_missing", b"GET /\r\n\r\n".to_vec(), "stricter than llhttp: it accepts an HTTP/0.9 request line"),
        bad(
            "space_after_start_line",
            b"GET / HTTP/1.1\r\n Host: foo\r\n\r\n".to_vec(),
            "llhttp: Unexpected space after start line (RFC 9112 §2.2 MUST reject or skip)",
        ),
        bad(
            "only_lfs",
            b"POST / HTTP/1.1\nTransfer-Encoding: chunked\nTrailer: Baz\r\nFoo: abc\nBar: def\n\n1\nA\n1;abc\nB\n0\n\nBaz: ghi\n\n".to_vec(),
            "llhttp: Expected CRLF after version; stricter than llhttp's lenient_all",
        ),
        case(
            "spaces_before_headers",
            msg(&["POST /hello HTTP/1.1", "Host: localhost", "Foo: bar", " Content-Length: 38"], "GET /bye HTTP/1.1\r\nHost: localhost\r\n\r\n"),
            Refuse(400),
            "llhttp: Unexpected whitespace after header value; stricter than its lenient_headers, which folds the length away",
        )
        .also(Also::NeverUpstream("/bye")),
        bad(
            "bare_lf_line_ends",
            format!("GET / HTTP/1.1\nHost: example.test\nX-A: 1\n\n{SMUGGLED}").into_bytes(),
            "stricter than llhttp: its lenient_optional_cr_before_lf accepts bare LF",
        ),
        bad(
            "bare_cr_line_ends",
            b"GET / HTTP/1.1\rHost: example.test\r\r".to_vec(),
            "stricter than llhttp: its lenient_optional_lf_after_cr accepts bare CR",
        ),
        bad(
            "obs_fold_value",
            msg(&["GET / HTTP/1.1", HOST, "Line1:   abc", "\tdef", " ghi", "Line2: \t line2\t"], ""),
            "stricter than llhttp: it unfolds obs-fold by default (sample.md)",
        ),
        bad(
            "obs_fold_certificate",
            msg(&["GET / HTTP/1.1", HOST, "X-SSL-Nonsense:   -----BEGIN CERTIFICATE-----", "\tMIIFbTCCBFWgAwIBAgICH4cwDQYJKoZIhvcNAQEFBQAwcDELMAkGA1UEBhMCVUsx", "\t-----END CERTIFICATE-----"], ""),
            "stricter than llhttp: a folded certificate (sample.md X-SSL-Nonsense) is obs-fold",
        ),
        bad(
            "line_folding_bare_lf",
            b"GET / HTTP/1.1\nLine1:   abc\n\tdef\nHost: example.test\n\n".to_vec(),
            "llhttp: Missing expected CR after header value",
        ),
    ]
}

// ---------------------------------------------------------------------------
// Header names, values, Host, and the session headers (§3, §9).
// ---------------------------------------------------------------------------

fn header_cases() -> Vec<Case> {
    let get = |name, line: &str, also: Vec<Also>, why| {
        let mut c = case(
            name,
            msg(&["GET /h HTTP/1.1", HOST, line], ""),
            fwd("GET", "/h", ""),
            why,
        );
        c.also = also;
        c
    };
    let bad = |name, line: &[u8], why| {
        let mut bytes = format!("GET /h HTTP/1.1\r\n{HOST}\r\n").into_bytes();
        bytes.extend_from_slice(line);
        bytes.extend_from_slice(b"\r\n\r\n");
        case(name, bytes, Refuse(400), why)
    };
    let forged = || vec![Also::OwnSessionId, Also::NeverUpstream("forged")];
    vec![
        get(
            "x_session_id_underscores",
            "X_Session_Id: forged",
            forged(),
            "§9: `_` reads as `-`; CGI/PHP/WSGI/Rack map it to HTTP_X_SESSION_ID",
        ),
        get(
            "x_session_data_mixed",
            "X-Session_Data: role=forged",
            forged(),
            "§9: a session header with one `_` is still a session header",
        ),
        get(
            "x_session_data_lower_underscores",
            "x_session_data: role=forged",
            forged(),
            "§9: lower case with underscores is still X-Session-Data",
        ),
        get("x_session_id_plain", "X-Session-Id: forged", forged(), "§3: a client never sets the session id"),
        get(
            "x_session_new_shouting",
            "X_SESSION_NEW: forged",
            forged(),
            "§9: names compare case-insensitively with `_` as `-`",
        ),
        case(
            "x_session_named_in_connection",
            msg(&["GET /h HTTP/1.1", HOST, "Connection: X-Session-Id", "X-Session-Id: forged"], ""),
            fwd("GET", "/h", ""),
            "§3: removed also when named in Connection; §9: forwarded with framing intact",
        )
        .also(Also::OwnSessionId)
        .also(Also::NeverUpstream("forged")),
        get(
            "forwarded_untrusted",
            "Forwarded: for=203.0.113.99;host=forged.example",
            vec![Also::NoHeader("forwarded"), Also::NeverUpstream("forged.example")],
            "§9: Forwarded from a peer outside trusted_proxies is removed",
        ),
        get(
            "x_real_ip_untrusted",
            "X-Real-IP: 203.0.113.99",
            vec![Also::NoHeader("x-real-ip"), Also::NeverUpstream("203.0.113.99")],
            "§9: X-Real-IP from a peer outside trusted_proxies is removed",
        ),
        get(
            "x_real_ip_underscores",
            "X_Real_IP: 203.0.113.99",
            vec![Also::NoHeader("x-real-ip"), Also::NeverUpstream("203.0.113.99")],
            "§9: `_` reads as `-`, so X_Real_IP is X-Real-IP",
        ),
        get(
            "x_forwarded_for_underscores",
            "X_Forwarded_For: 203.0.113.99",
            vec![Also::NeverUpstream("203.0.113.99")],
            "§3/§9: an untrusted X-Forwarded-For in any spelling never reaches the upstream",
        ),
        case(
            "host_missing_http11",
            b"GET /h HTTP/1.1\r\nAccept: */*\r\n\r\n".to_vec(),
            Refuse(400),
            "§9 / RFC 9112 §3.2: HTTP/1.1 without Host is 400",
        ),
        case(
            "host_twice",
            msg(&["GET /h HTTP/1.1", "Host: a.example", "Host: b.example"], ""),
            Refuse(400),
            "§9: two Host lines is 400 (llhttp's lenient-host-header.md accepts them by default)",
        ),
        case(
            "host_twice_equal",
            msg(&["GET /h HTTP/1.1", HOST, HOST], ""),
            Refuse(400),
            "§9: more than one Host is 400, even equal",
        ),
        case(
            "host_missing_http10",
            b"GET /ten HTTP/1.0\r\n\r\n".to_vec(),
            fwd("GET", "/ten", ""),
            "§9: HTTP/1.0 without Host is forwarded",
        ),
        case(
            "host_underscore_spelling",
            msg(&["GET /h HTTP/1.1", HOST, "X_Host: forged.example"], ""),
            fwd("GET", "/h", ""),
            "an unrelated `_` name is not Host; only one Host reaches the upstream",
        ),
        bad("nul_in_value", b"X-A: a\0b", "§3: NUL never reaches a header"),
        bad("cr_in_value", b"X-A: a\rb", "§3: a bare CR never reaches a header"),
        bad("form_feed_in_value", b"Header1: \x0c", "llhttp lenient-headers.md: Invalid header value char"),
        bad("paren_in_name", b"X(Y): 1", "a name is a token; `(` is not tchar"),
        bad("space_in_name", b"X Y: 1", "a name is a token; a space splits it"),
        bad("non_ascii_name", "X-Ü: 1".as_bytes(), "a name is a token; UTF-8 is not tchar"),
        bad(
            "space_before_colon",
            b"X-A : 1",
            "stricter than llhttp's lenient mode: RFC 9112 §5.1 MUST reject whitespace before the colon",
        ),
        get(
            "obs_text_value",
            "Test: Düsseldorf",
            Vec::new(),
            "llhttp sample.md: obs-text in a value is allowed",
        ),
        case(
            "byte_ff_in_value",
            [&b"GET /h HTTP/1.1\r\nHost: example.test\r\nHeader2: \xffValue2\r\n\r\n"[..]].concat(),
            fwd("GET", "/h", ""),
            "llhttp sample.md: 0xff is obs-text",
        ),
        get(
            "underscore_name_passes",
            "DCLK_imp: v7;x;114750856",
            Vec::new(),
            "llhttp sample.md: `_` in an ordinary name is a valid token",
        ),
        case(
            "oversized_headers",
            msg(&["GET /h HTTP/1.1", HOST, &format!("X-Big: {}", "a".repeat(70 * 1024))], ""),
            Refuse(431),
            "§8: headers over limits.max_header_bytes (64 KiB) are 431",
        ),
    ]
}

// ---------------------------------------------------------------------------
// llhttp test/request/sample.md: ordinary requests pass.
// ---------------------------------------------------------------------------

fn sample_cases() -> Vec<Case> {
    vec![
        case(
            "simple_options",
            msg(&["OPTIONS /url HTTP/1.1", HOST, "Header1: Value1", "Header2:\t Value2"], ""),
            fwd("OPTIONS", "/url", ""),
            "llhttp: a plain request; HTAB is OWS",
        ),
        case(
            "head_request",
            msg(&["HEAD /url HTTP/1.1", HOST], ""),
            fwd("HEAD", "/url", ""),
            "llhttp: a method starting with H is not a response",
        ),
        case(
            "curl_get",
            msg(
                &[
                    "GET /test HTTP/1.1",
                    "User-Agent: curl/7.18.0 (i486-pc-linux-gnu) libcurl/7.18.0 OpenSSL/0.9.8g zlib/1.2.3.3 libidn/1.1",
                    "Host: 0.0.0.0=5000",
                    "Accept: */*",
                ],
                "",
            ),
            fwd("GET", "/test", ""),
            "llhttp: curl GET",
        ),
        case(
            "firefox_get",
            msg(
                &[
                    "GET /favicon.ico HTTP/1.1",
                    "Host: 0.0.0.0=5000",
                    "User-Agent: Mozilla/5.0 (X11; U; Linux i686; en-US; rv:1.9) Gecko/2008061015 Firefox/3.0",
                    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
                    "Accept-Language: en-us,en;q=0.5",
                    "Accept-Encoding: gzip,deflate",
                    "Accept-Charset: ISO-8859-1,utf-8;q=0.7,*;q=0.7",
                    "Keep-Alive: 300",
                    "Connection: keep-alive",
                ],
                "",
            ),
            fwd("GET", "/favicon.ico", ""),
            "llhttp: Firefox GET with Keep-Alive",
        ),
        case(
            "dumbpack",
            msg(&["GET /dumbpack HTTP/1.1", HOST, "aaaaaaaaaaaaa:++++++++++"], ""),
            fwd("GET", "/dumbpack", ""),
            "llhttp: no space after the colon",
        ),
        case(
            "no_headers_no_body_http10",
            msg(&["GET /get_no_headers_no_body/world HTTP/1.0"], ""),
            fwd("GET", "/get_no_headers_no_body/world", ""),
            "llhttp: no headers at all (HTTP/1.0, so no Host needed)",
        ),
        case(
            "apache_bench_http10",
            msg(&["GET /test HTTP/1.0", "Host: 0.0.0.0:5000", "User-Agent: ApacheBench/2.3", "Accept: */*"], ""),
            fwd("GET", "/test", ""),
            "llhttp: HTTP/1.0 with no body needs no EOF",
        ),
        case(
            "prefix_crlf",
            [&b"\r\n"[..], &msg(&["GET /test HTTP/1.1", HOST, "Header1: Value1"], "")].concat(),
            fwd("GET", "/test", ""),
            "llhttp: RFC 9112 §2.2, an empty line before the request line is ignored",
        ),
    ]
}

// ---------------------------------------------------------------------------
// llhttp test/request/pipelining.md, and pipeline desync.
// ---------------------------------------------------------------------------

fn pipelining_cases() -> Vec<Case> {
    vec![
        case(
            "three_in_one_write",
            [
                msg(&["POST /aaa HTTP/1.1", HOST, "Content-Length: 3"], "AAA"),
                msg(&["PUT /bbb HTTP/1.1", HOST, "Content-Length: 4"], "BBBB"),
                msg(&["PATCH /ccc HTTP/1.1", HOST, "Content-Length: 5"], "CCCCC"),
            ]
            .concat(),
            fwd_all(&[("POST", "/aaa", "AAA"), ("PUT", "/bbb", "BBBB"), ("PATCH", "/ccc", "CCCCC")]),
            "llhttp: three requests in one write, each forwarded once, in order, answered in order",
        ),
        case(
            "three_with_crlf_between",
            [
                msg(&["POST /aaa HTTP/1.1", HOST, "Content-Length: 3"], "AAA\r\n"),
                msg(&["PUT /bbb HTTP/1.1", HOST, "Content-Length: 4"], "BBBB\r\n"),
                msg(&["PATCH /ccc HTTP/1.1", HOST, "Content-Length: 5"], "CCCCC"),
            ]
            .concat(),
            fwd_all(&[("POST", "/aaa", "AAA"), ("PUT", "/bbb", "BBBB"), ("PATCH", "/ccc", "CCCCC")]),
            "llhttp's exact shape: a CRLF after each body is an empty line before the next request",
        ),
        case(
            "two_gets",
            [msg(&["GET /one HTTP/1.1", HOST], ""), msg(&["GET /two HTTP/1.1", HOST], "")].concat(),
            fwd_all(&[("GET", "/one", ""), ("GET", "/two", "")]),
            "two bodiless requests in one write",
        ),
        case(
            "chunked_then_get",
            [
                msg(&["POST /one HTTP/1.1", HOST, "Transfer-Encoding: chunked"], "5\r\nhello\r\n0\r\n\r\n"),
                msg(&["GET /two HTTP/1.1", HOST], ""),
            ]
            .concat(),
            fwd_all(&[("POST", "/one", "hello"), ("GET", "/two", "")]),
            "a chunked body ends at its last chunk; the next request starts there",
        ),
        case(
            "pipeline_desync_short_body",
            [
                msg(&["POST /a HTTP/1.1", HOST, "Content-Length: 10"], "helloGET /"),
                b"b HTTP/1.1\r\nHost: example.test\r\n\r\n".to_vec(),
            ]
            .concat(),
            fwd("POST", "/a", "helloGET /"),
            "PortSwigger pipeline desync: the proxy's length is the only length; the tail is a malformed request, never forwarded",
        ),
    ]
}

// ---------------------------------------------------------------------------
// llhttp test/request/uri.md.
// ---------------------------------------------------------------------------

fn uri_cases() -> Vec<Case> {
    let get = |name, target: &str, expect, why| {
        case(
            name,
            msg(&[&format!("GET {target} HTTP/1.1"), HOST], ""),
            expect,
            why,
        )
    };
    vec![
        get(
            "quotes_in_uri",
            "/with_\"lovely\"_quotes?foo=\\\"bar\\\"",
            fwd("GET", "/with_\"lovely\"_quotes?foo=\\\"bar\\\"", ""),
            "llhttp accepts quotes; the target goes upstream byte for byte",
        ),
        get(
            "question_mark_in_query",
            "/test.cgi?foo=bar?baz",
            fwd("GET", "/test.cgi?foo=bar?baz", ""),
            "llhttp: `?` inside a query",
        ),
        get(
            "absolute_host_then_query",
            "http://hypnotoad.org?hail=all",
            fwd("GET", "/?hail=all", ""),
            "llhttp: an absolute-form target; the upstream gets origin form",
        ),
        get(
            "absolute_host_port_then_query",
            "http://hypnotoad.org:1234?hail=all",
            fwd("GET", "/?hail=all", ""),
            "llhttp: host:port ended by a query",
        ),
        get(
            "vertical_bar",
            "/test.cgi?query=|",
            fwd("GET", "/test.cgi?query=|", ""),
            "llhttp (nodejs/node#27584): `|` in a query",
        ),
        get(
            "absolute_host_port_only",
            "http://hypnotoad.org:1234",
            fwd("GET", "/", ""),
            "llhttp: host:port ended by a space; empty path is /",
        ),
        get(
            "utf8_in_path",
            "/δ¶/δt/pope?q=1#narf",
            Refuse(400),
            "llhttp strict: Invalid char in url path; raw UTF-8 is not a URI character",
        ),
        get(
            "fragment",
            "/forums/1/topics/2375?page=1#posts-17408",
            fwd("GET", "/forums/1/topics/2375?page=1#posts-17408", ""),
            "llhttp accepts a fragment; it cannot move where the message ends, so it goes on unchanged",
        ),
        case(
            "connect_underscore_host",
            msg(&["CONNECT home_0.netscape.com:443 HTTP/1.0", "User-agent: Mozilla/1.1N", "Proxy-authorization: basic aGVsbG86d29ybGQ="], ""),
            Refuse(405),
            "§9: CONNECT is 405",
        ),
        get(
            "absolute_with_userinfo",
            "http://a%12:b!&*$@hypnotoad.org:1234/toto",
            Refuse(400),
            "stricter than llhttp: RFC 9110 §4.2.4, userinfo in an http URI SHOULD be treated as an error",
        ),
        case(
            "space_in_uri",
            msg(&["GET /foo bar/ HTTP/1.1", HOST], ""),
            Refuse(400),
            "llhttp: Expected HTTP/; a space inside a target",
        ),
    ]
}

// ---------------------------------------------------------------------------
// llhttp test/request/method.md.
// ---------------------------------------------------------------------------

fn method_cases() -> Vec<Case> {
    let plain = |method: &'static str, target: &'static str, why| {
        case(
            method,
            msg(&[&format!("{method} {target} HTTP/1.1"), HOST], ""),
            fwd(method, target, ""),
            why,
        )
    };
    vec![
        plain("REPORT", "/test", "llhttp: WebDAV REPORT"),
        case(
            "connect_http10_with_data",
            msg(
                &[
                    "CONNECT 0-home0.netscape.com:443 HTTP/1.0",
                    "User-agent: Mozilla/1.1N",
                    "Proxy-authorization: basic aGVsbG86d29ybGQ=",
                ],
                "some data\r\nand yet even more data",
            ),
            Refuse(405),
            "§9: CONNECT is 405; the data after it is never tunnelled",
        ),
        case(
            "connect_caps",
            msg(
                &[
                    "CONNECT HOME0.NETSCAPE.COM:443 HTTP/1.0",
                    "User-agent: Mozilla/1.1N",
                ],
                "",
            ),
            Refuse(405),
            "§9: CONNECT is 405",
        ),
        case(
            "connect_with_body",
            msg(
                &["CONNECT foo.bar.com:443 HTTP/1.0", "Content-Length: 10"],
                "blarfcicle",
            ),
            Refuse(405),
            "§9: CONNECT is 405, body or not",
        ),
        case(
            "connect_http11",
            msg(
                &[
                    "CONNECT example.test:443 HTTP/1.1",
                    "Host: example.test:443",
                ],
                "",
            ),
            Refuse(405),
            "§9: CONNECT host:443 HTTP/1.1 is 405",
        ),
        case(
            "m_search_asterisk",
            msg(
                &[
                    "M-SEARCH * HTTP/1.1",
                    "HOST: 239.255.255.250:1900",
                    "MAN: \"ssdp:discover\"",
                    "ST: \"ssdp:all\"",
                ],
                "",
            ),
            Refuse(400),
            "stricter than llhttp: asterisk-form is for OPTIONS only (RFC 9112 §3.2.4)",
        ),
        case(
            "PATCH",
            msg(
                &[
                    "PATCH /file.txt HTTP/1.1",
                    "Host: www.example.com",
                    "Content-Type: application/example",
                    "If-Match: \"e0023aa4e\"",
                    "Content-Length: 10",
                ],
                "cccccccccc",
            ),
            fwd("PATCH", "/file.txt", "cccccccccc"),
            "llhttp: PATCH with a body",
        ),
        plain("PURGE", "/file.txt", "llhttp: PURGE"),
        plain("SEARCH", "/", "llhttp: SEARCH"),
        case(
            "LINK",
            msg(
                &[
                    "LINK /images/my_dog.jpg HTTP/1.1",
                    HOST,
                    "Link: <http://example.com/profiles/joe>; rel=\"tag\"",
                    "Link: <http://example.com/profiles/sally>; rel=\"tag\"",
                ],
                "",
            ),
            fwd("LINK", "/images/my_dog.jpg", ""),
            "llhttp: LINK with repeated Link lines",
        ),
        plain("UNLINK", "/images/my_dog.jpg", "llhttp: UNLINK"),
        plain(
            "SOURCE",
            "/music/sweet/music",
            "llhttp: SOURCE over HTTP/1.1",
        ),
        plain(
            "QUERY",
            "/contacts",
            "an unknown but valid token method is forwarded",
        ),
        plain(
            "get",
            "/lower",
            "methods are case-sensitive tokens: `get` is a different, valid method",
        ),
        case(
            "method_paren",
            msg(&["G(T / HTTP/1.1", HOST], ""),
            Refuse(400),
            "`(` is not tchar: invalid method",
        ),
        case(
            "method_at",
            msg(&["GE@T / HTTP/1.1", HOST], ""),
            Refuse(400),
            "`@` is not tchar: invalid method",
        ),
        case(
            "method_brace",
            msg(&["G{}T / HTTP/1.1", HOST], ""),
            Refuse(400),
            "`{` is not tchar: invalid method",
        ),
        case(
            "method_empty",
            msg(&[" / HTTP/1.1", HOST], ""),
            Refuse(400),
            "an empty method",
        ),
    ]
}

// ---------------------------------------------------------------------------
// PortSwigger's request smuggling classes.
// ---------------------------------------------------------------------------

fn smuggling_cases() -> Vec<Case> {
    let cl_te_body = format!("0\r\n\r\n{SMUGGLED}");
    let te_te = |name, te_lines: &[&str], why| {
        let body = format!("0\r\n\r\n{SMUGGLED}");
        let cl = format!("Content-Length: {}", body.len());
        let mut head = vec!["POST /te-te HTTP/1.1", HOST, cl.as_str()];
        head.extend_from_slice(te_lines);
        case(name, msg(&head, &body), Refuse(400), why)
    };
    let te_only = |name, te_lines: &[&str], why| {
        let mut head = vec!["POST /te-only HTTP/1.1", HOST];
        head.extend_from_slice(te_lines);
        case(
            name,
            msg(&head, &format!("0\r\n\r\n{SMUGGLED}")),
            Refuse(400),
            why,
        )
    };
    let te_cl_chunk = format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len());
    let smuggled_len = SMUGGLED.len().to_string();
    vec![
        case(
            "cl_te",
            msg(
                &["POST /cl-te HTTP/1.1", HOST, &format!("Content-Length: {}", cl_te_body.len()), "Transfer-Encoding: chunked"],
                &cl_te_body,
            ),
            Refuse(400),
            "CL.TE: a front end using CL and a back end using TE disagree; stricter than llhttp's lenient_chunked_length",
        ),
        case(
            "te_cl",
            msg(&["POST /te-cl HTTP/1.1", HOST, "Content-Length: 4", "Transfer-Encoding: chunked"], &te_cl_chunk),
            Refuse(400),
            "TE.CL: CL covers only the chunk-size line; the chunk data is a request",
        ),
        case(
            "te_cl_te_first",
            msg(&["POST /te-cl HTTP/1.1", HOST, "Transfer-Encoding: chunked", "Content-Length: 4"], &te_cl_chunk),
            Refuse(400),
            "TE.CL with the headers the other way round: order never decides",
        ),
        te_te(
            "te_te_xchunked",
            &["Transfer-Encoding: xchunked"],
            "TE.TE: `xchunked` is not chunked; one hop might still see `chunked` in it",
        ),
        te_te(
            "te_te_space_before_colon",
            &["Transfer-Encoding : chunked"],
            "TE.TE: stricter than llhttp's lenient mode; RFC 9112 §5.1 MUST reject whitespace before the colon",
        ),
        te_te(
            "te_te_tab_with_cl",
            &["Transfer-Encoding:\tchunked"],
            "TE.TE: a tab is OWS, so this is CL with TE: 400",
        ),
        te_te(
            "te_te_chunked_identity",
            &["Transfer-Encoding: chunked, identity"],
            "TE.TE: chunked not last, and not lone",
        ),
        te_te(
            "te_te_folded",
            &["Transfer-Encoding:", " chunked"],
            "TE.TE: stricter than llhttp, which unfolds obs-fold; one hop sees an empty TE, another chunked",
        ),
        te_te(
            "te_te_duplicated",
            &["Transfer-Encoding: chunked", "Transfer-Encoding: x"],
            "TE.TE: two TE lines, one a junk coding",
        ),
        te_te(
            "te_te_duplicated_chunked",
            &["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"],
            "TE.TE: two TE lines are not a lone chunked",
        ),
        te_te(
            "te_te_underscore",
            &["Transfer_Encoding: chunked"],
            "TE.TE: §9, a framing name spelled with `_` is refused (CGI reads it as Transfer-Encoding)",
        ),
        te_te(
            "te_te_quoted",
            &["Transfer-Encoding: \"chunked\""],
            "TE.TE: a quoted coding is not a coding",
        ),
        te_te(
            "te_te_vertical_tab",
            &["Transfer-Encoding: \x0bchunked"],
            "TE.TE: VT is not OWS; some parsers trim it",
        ),
        te_te(
            "te_te_bare_lf",
            &["X: X\nTransfer-Encoding: chunked"],
            "TE.TE: stricter than llhttp's lenient flags; a TE behind a bare LF",
        ),
        te_te(
            "te_te_fold_after_other",
            &["X-Pad: 1", " Transfer-Encoding: chunked"],
            "TE.TE: stricter than llhttp, which folds it into X-Pad; one hop sees TE, another not",
        ),
        te_only(
            "te_only_underscore",
            &["Transfer_Encoding: chunked"],
            "§9: Transfer_Encoding alone is refused, never ignored into a bodiless request",
        ),
        te_only(
            "te_only_space_before_colon",
            &["Transfer-Encoding : chunked"],
            "RFC 9112 §5.1: whitespace before the colon is 400",
        ),
        te_only("te_only_xchunked", &["Transfer-Encoding: xchunked"], "no lone chunked: no length can be known"),
        case(
            "cl_0_get_with_body",
            msg(&["GET /static HTTP/1.1", HOST, &format!("Content-Length: {smuggled_len}")], SMUGGLED),
            fwd("GET", "/static", SMUGGLED),
            "CL.0: a GET's body is its body; forwarded with its length so the origin cannot take it for a request",
        ),
        case(
            "cl_0_post_keep_alive",
            msg(&["POST /resource HTTP/1.1", HOST, "Connection: keep-alive", &format!("Content-Length: {smuggled_len}")], SMUGGLED),
            fwd("POST", "/resource", SMUGGLED),
            "CL.0: the proxy forwards the body with its computed content-length",
        ),
        case(
            "zero_cl_space_before_colon",
            msg(&["GET /zero-cl HTTP/1.1", HOST, &format!("Content-Length : {smuggled_len}")], SMUGGLED),
            Refuse(400),
            "0.CL: stricter than llhttp's lenient mode; a front end ignoring the length leaves a request in the body",
        ),
        case(
            "zero_cl_folded",
            msg(&["GET /zero-cl HTTP/1.1", HOST, "Content-Length:", &format!(" {smuggled_len}")], SMUGGLED),
            Refuse(400),
            "0.CL: stricter than llhttp (unfolds obs-fold); one hop sees an empty length, another a length",
        ),
        case(
            "zero_cl_underscore",
            msg(&["GET /zero-cl HTTP/1.1", HOST, &format!("Content_Length: {smuggled_len}")], SMUGGLED),
            Refuse(400),
            "0.CL: §9, Content_Length is refused (CGI reads it as CONTENT_LENGTH)",
        ),
        case(
            "response_queue_poisoning_te_cl",
            msg(
                &["POST /rqp HTTP/1.1", HOST, "Content-Length: 4", "Transfer-Encoding: chunked"],
                &format!("{:x}\r\nGET /smuggled HTTP/1.1\r\nHost: example.test\r\nContent-Length: 0\r\n\r\n\r\n0\r\n\r\n", SMUGGLED.len() + 19),
            ),
            Refuse(400),
            "response queue poisoning: a complete request smuggled inside a chunk would get its own response",
        ),
        case(
            "connection_content_length",
            msg(&["POST /hop HTTP/1.1", HOST, "Connection: Content-Length", &format!("Content-Length: {smuggled_len}")], SMUGGLED),
            fwd("POST", "/hop", SMUGGLED),
            "hop-by-hop trick: Connection never removes framing; the upstream sees the body, not a second request",
        ),
        case(
            "connection_transfer_encoding",
            msg(&["POST /hop HTTP/1.1", HOST, "Connection: Transfer-Encoding", "Transfer-Encoding: chunked"], &chunked(SMUGGLED)),
            fwd("POST", "/hop", SMUGGLED),
            "hop-by-hop trick: Connection: Transfer-Encoding, forwarded with the proxy's own framing",
        ),
        case(
            "connection_close_content_length",
            msg(&["POST /hop HTTP/1.1", HOST, "Connection: close, Content-Length", &format!("Content-Length: {smuggled_len}")], SMUGGLED),
            fwd("POST", "/hop", SMUGGLED),
            "hop-by-hop trick in a list: framing stays",
        ),
        case(
            "connection_host",
            msg(&["GET /hop HTTP/1.1", HOST, "Connection: Host"], ""),
            fwd("GET", "/hop", ""),
            "hop-by-hop trick: Connection: Host; the upstream still gets exactly one Host",
        ),
    ]
}

// ---------------------------------------------------------------------------
// Response cases: the upstream writes exact bytes.
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum RespDecision {
    Relay { status: u16, body: Vec<u8> },
    BadGateway,
}

use RespDecision::BadGateway;

fn relay(status: u16, body: impl AsRef<[u8]>) -> RespDecision {
    RespDecision::Relay {
        status,
        body: body.as_ref().to_vec(),
    }
}

struct RespCase {
    name: &'static str,
    /// The method of the client's first request (`GET` or `HEAD`).
    method: &'static str,
    /// What the upstream writes for the first request.
    reply: Vec<u8>,
    /// The upstream closes the connection after writing `reply`.
    close: bool,
    expect: RespDecision,
    why: &'static str,
}

/// A response case answered on a connection the upstream keeps open.
fn resp(
    name: &'static str,
    reply: impl Into<Vec<u8>>,
    expect: RespDecision,
    why: &'static str,
) -> RespCase {
    RespCase {
        name,
        method: "GET",
        reply: reply.into(),
        close: false,
        expect,
        why,
    }
}

impl RespCase {
    /// The upstream closes after the reply (a body delimited by the close).
    fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    fn head(mut self) -> Self {
        self.method = "HEAD";
        self
    }
}

/// Markers that must never reach the client: upstream bytes a 502 must not leak
/// (`LEAK`) and responses smuggled in an upstream body (`poisoned`).
const NEVER_TO_CLIENT: [&str; 2] = ["LEAK", "poisoned"];
/// Write-back keys hidden in upstream bodies: never applied to a session.
const NEVER_IN_SESSION: [&str; 2] = ["poisoned", "planted"];

/// The client side of a response case: requests on one connection while the
/// proxy keeps it open, on a new one when it closed.
struct Client {
    addr: SocketAddr,
    /// Every connection used, and the methods asked on it.
    conns: Vec<(Conn, Vec<&'static str>)>,
}

impl Client {
    async fn ask(
        &mut self,
        method: &'static str,
        target: &str,
        cookie: Option<&str>,
    ) -> Option<Resp> {
        let mut request = format!("{method} {target} HTTP/1.1\r\n{HOST}\r\n");
        if let Some(cookie) = cookie {
            let _ = write!(request, "Cookie: {cookie}\r\n");
        }
        request.push_str("\r\n");
        for attempt in 0..2 {
            let reuse = attempt == 0 && self.conns.last().is_some_and(|(c, _)| !c.closed());
            if !reuse {
                self.conns
                    .push((Conn::connect(self.addr).await, Vec::new()));
            }
            let (conn, methods) = self.conns.last_mut().expect("a connection");
            methods.push(method);
            conn.send(request.as_bytes()).await;
            conn.wait_finals(methods, methods.len(), RESPONSE_WAIT)
                .await;
            let view = conn.view(methods);
            if let Some(r) = view.finals.get(methods.len() - 1) {
                return Some(r.clone());
            }
            // A keep-alive race (the proxy closed as the request went out) is
            // retried once on a new connection, as any client would.
            if !(reuse && conn.closed() && view.finals.len() + 1 == methods.len()) {
                return None;
            }
            methods.pop();
        }
        None
    }

    fn transcript(&self) -> String {
        let mut out = String::new();
        for (i, (conn, methods)) in self.conns.iter().enumerate() {
            let _ = write!(
                out,
                "\n    connection {} asked {methods:?} (closed: {}): {}",
                i + 1,
                conn.closed(),
                show(conn.received(), 900)
            );
        }
        out
    }

    fn received(&self) -> Vec<u8> {
        self.conns
            .iter()
            .flat_map(|(c, _)| c.received().to_vec())
            .collect()
    }
}

async fn run_response_case(case: RespCase) -> Result<(), String> {
    let reply = case.reply.clone();
    let close = case.close;
    let upstream = WireUpstream::start(move |req| {
        if req.target == "/first" {
            Answer {
                bytes: reply.clone(),
                close,
            }
        } else {
            Answer::echo(req)
        }
    })
    .await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let mut client = Client {
        addr: proxy.addr(),
        conns: Vec::new(),
    };
    let mut problems = Vec::new();

    let first = client.ask(case.method, "/first", None).await;
    match (&case.expect, &first) {
        (_, None) => problems.push("the client got no complete response to /first".to_string()),
        (RespDecision::Relay { status, body }, Some(r)) => {
            if r.status != *status || r.body != *body {
                problems.push(format!(
                    "/first was answered {}, expected {status} {}",
                    r.short(),
                    show(body, 200)
                ));
            }
            let written_back: Vec<&(String, String)> = r
                .headers
                .iter()
                .filter(|(n, _)| normalized(n).starts_with("x-session-"))
                .collect();
            if !written_back.is_empty() {
                problems.push(format!(
                    "write-back headers reached the client: {written_back:?}"
                ));
            }
        }
        (BadGateway, Some(r)) => {
            if r.status != 502 {
                problems.push(format!(
                    "/first was answered {}, expected 502 from the proxy",
                    r.short()
                ));
            }
        }
    }
    if let Some(r) = &first {
        if r.framing_lines > 1 {
            problems.push(format!(
                "the response to /first has {} framing lines",
                r.framing_lines
            ));
        }
    }
    // Let anything the proxy sends past the first response arrive, so that it is
    // read as the answer to /second (response queue poisoning shows there).
    if let Some((conn, _)) = client.conns.last_mut() {
        conn.linger(Duration::from_millis(150)).await;
    }
    let mut cookie = first.as_ref().and_then(|r| r.session_cookie(COOKIE));
    if first.is_some() {
        for target in ["/second", "/third"] {
            let got = client.ask("GET", target, cookie.as_deref()).await;
            let want = echo_body("GET", target, b"");
            match &got {
                Some(r) if r.status == 200 && r.body == want => {}
                Some(r) => problems.push(format!(
                    "{target} was answered {}, not its own 200 {}",
                    r.short(),
                    show(&want, 100)
                )),
                None => problems.push(format!("the client got no answer to {target}")),
            }
            if let Some(c) = got.as_ref().and_then(|r| r.session_cookie(COOKIE)) {
                cookie = Some(c);
            }
        }
    }
    tokio::time::sleep(SETTLE).await;
    let received = client.received();
    for marker in NEVER_TO_CLIENT {
        if contains(&received, marker.as_bytes()) {
            problems.push(format!("{marker:?} reached the client"));
        }
    }
    for req in upstream.requests().iter().filter(|r| r.target != "/first") {
        for data in req.values("x-session-data") {
            for key in NEVER_IN_SESSION {
                if data.contains(key) {
                    problems.push(format!(
                        "a write-back hidden in an upstream body was applied: {} carried X-Session-Data {data:?}",
                        req.target
                    ));
                }
            }
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    let expect = match &case.expect {
        RespDecision::Relay { status, body } => {
            format!("Relay {{ {status}, {} }}", show(body, 200))
        }
        BadGateway => "BadGateway (502 from the proxy)".into(),
    };
    let mut out = format!(
        "[{}] {}\n  expected: {expect}, then /second and /third answered on their own\n  problems:",
        case.name, case.why
    );
    for p in &problems {
        let _ = write!(out, "\n    - {p}");
    }
    let _ = write!(
        out,
        "\n  upstream wrote for {} /first (then {}): {}\n  client:{}\n  upstream: {}",
        case.method,
        if case.close {
            "closed"
        } else {
            "kept the connection"
        },
        show(&case.reply, 700),
        client.transcript(),
        upstream.describe()
    );
    Err(out)
}

fn response_cases() -> Vec<RespCase> {
    let poison =
        "HTTP/1.1 200 OK\r\nX-Session-Set: poisoned=1\r\nContent-Length: 8\r\n\r\npoisoned";
    let planted_body = "HTTP/1.1 200 OK\r\nX-Session-Set: planted=1\r\nContent-Length: 2\r\n\r\nok";
    vec![
        // content-length.md
        resp(
            "no_length_until_close",
            "HTTP/1.1 200 OK\r\nContent-Type: text/xml; charset=utf-8\r\nConnection: close\r\n\r\n<xml>body</xml>",
            relay(200, "<xml>body</xml>"),
            "llhttp: no Content-Length and Connection: close; the body ends at the close and is re-framed",
        )
        .closing(),
        resp(
            "content_length_x_is_not_cl",
            "HTTP/1.1 200 OK\r\nContent-Length-X: 0\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nOK\r\n0\r\n\r\n",
            relay(200, "OK"),
            "llhttp: Content-Length-X is not Content-Length",
        ),
        resp(
            "head_length_without_body",
            "HTTP/1.1 200 OK\r\nContent-Length: 123\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 456\r\n\r\n",
            relay(200, ""),
            "llhttp skipBody: a HEAD response has no body; the second head is an extra response, never the next answer",
        )
        .head(),
        resp(
            "length_between_tabs",
            "HTTP/1.1 200 OK\r\nContent-Length:\t2\t\r\n\r\nok",
            relay(200, "ok"),
            "llhttp: HTAB around the length is OWS",
        ),
        // transfer-encoding.md
        resp(
            "empty_te_with_cl",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding:\r\nContent-Length: 5\r\n\r\nLEAK!",
            BadGateway,
            "llhttp: Empty Transfer-Encoding",
        ),
        resp(
            "chunk_size_trailing_spaces",
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n25  \r\nLEAK is the data in the first chunk\r\n\r\n1C\r\nand this is the second one\r\n\r\n0  \r\n\r\n",
            BadGateway,
            "llhttp: Invalid character in chunk size; found before anything was sent, so 502",
        ),
        resp(
            "te_chunked_then_deflate",
            "HTTP/1.1 200 OK\r\nAccept: */*\r\nTransfer-Encoding: chunked, deflate\r\n\r\nLEAK",
            BadGateway,
            "stricter than llhttp, which reads it until close: the proxy cannot re-frame a coding it does not know",
        )
        .closing(),
        resp(
            "te_chunked_line_then_identity_line",
            "HTTP/1.1 200 OK\r\nAccept: */*\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\nLEAK",
            BadGateway,
            "stricter than llhttp (reads until close): two TE lines are not a lone chunked",
        )
        .closing(),
        resp(
            "te_chunkedchunked",
            "HTTP/1.1 200 OK\r\nAccept: */*\r\nTransfer-Encoding: chunkedchunked\r\n\r\n4\r\nLEAK\r\n0\r\n\r\n",
            BadGateway,
            "stricter than llhttp (reads until close): `chunkedchunked` is an unknown coding",
        )
        .closing(),
        resp(
            "chunk_extensions",
            "HTTP/1.1 200 OK\r\nHost: localhost\r\nTransfer-encoding: chunked\r\n\r\n5;ilovew3;somuchlove=aretheseparametersfor\r\nhello\r\n6;blahblah;blah\r\n world\r\n0\r\n\r\n",
            relay(200, "hello world"),
            "llhttp: extensions are ignored and never re-sent",
        ),
        resp(
            "chunk_ext_without_semicolon",
            "HTTP/1.1 200 OK\r\nHost: localhost\r\nTransfer-encoding: chunked\r\n\r\n2 erfrferferf\r\naa\r\n0 rrrr\r\n\r\n",
            BadGateway,
            "llhttp: Invalid character in chunk size, at the start of the body: 502",
        ),
        resp(
            "chunk_ext_empty_after_semicolon",
            "HTTP/1.1 200 OK\r\nHost: localhost\r\nTransfer-encoding: chunked\r\n\r\n2;\r\naa\r\n0\r\n\r\n",
            BadGateway,
            "llhttp: Invalid character in chunk extensions",
        ),
        resp(
            "chunk_ext_quoted",
            "HTTP/1.1 200 OK\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5;ilovew3=\"I love; extensions\";somuchlove=\"aretheseparametersfor\";blah;foo=bar\r\nhello\r\n6;blahblah;blah\r\n world\r\n0\r\n\r\n",
            relay(200, "hello world"),
            "llhttp: a quoted extension value may hold `;`",
        ),
        resp(
            "chunk_ext_unbalanced_quote",
            "HTTP/1.1 200 OK\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5;ilovew3=\"abc\";somuchlove=\"def; ghi\r\nhello\r\n6;blahblah;blah\r\n world\r\n0\r\n\r\n",
            BadGateway,
            "llhttp: Invalid character in chunk extensions quoted value",
        ),
        resp(
            "obs_fold_after_chunked",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n  abc\r\n\r\n4\r\nLEAK\r\n0\r\n\r\n",
            BadGateway,
            "stricter than llhttp's lenient_headers, which reads `chunked abc` until close",
        ),
        // connection.md
        resp(
            "proxy_connection_close",
            "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=UTF-8\r\nContent-Length: 11\r\nProxy-Connection: close\r\nDate: Thu, 31 Dec 2009 20:55:48 +0000\r\n\r\nhello world",
            relay(200, "hello world"),
            "llhttp: Proxy-Connection does not change the framing",
        ),
        resp(
            "http10_keep_alive_until_close",
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\nHTTP/1.0 200 OK",
            relay(200, "HTTP/1.0 200 OK"),
            "llhttp: no length, so the body runs to the close, even when it looks like a response",
        )
        .closing(),
        resp(
            "http10_204_then_bytes",
            "HTTP/1.0 204 No content\r\nConnection: keep-alive\r\n\r\nHTTP/1.0 200 OK",
            relay(204, ""),
            "llhttp: a 204 has no body; the bytes after it never answer the next request",
        ),
        resp(
            "http11_until_close",
            "HTTP/1.1 200 OK\r\n\r\nHTTP/1.1 200 OK",
            relay(200, "HTTP/1.1 200 OK"),
            "llhttp: HTTP/1.1 without framing runs to the close",
        )
        .closing(),
        resp(
            "http11_204_then_bytes",
            "HTTP/1.1 204 No content\r\n\r\nHTTP/1.1 200 OK\r\nX-Session-Set: poisoned=1\r\nContent-Length: 8\r\n\r\npoisoned",
            relay(204, ""),
            "llhttp: a 204 has no body; what follows is never a response to anyone",
        ),
        resp(
            "http11_204_close_then_bytes",
            "HTTP/1.1 204 No content\r\nConnection: close\r\n\r\nHTTP/1.1 200 OK",
            relay(204, ""),
            "llhttp: Data after Connection: close; that upstream connection is never reused",
        ),
        resp(
            "length_then_close_longer_body",
            "HTTP/1.1 200 No content\r\nContent-Length: 5\r\nConnection: close\r\n\r\n2ad731e3-4dcd-4f70-b871-0ad284b29ffc",
            relay(200, "2ad73"),
            "llhttp: the length wins; bytes past it are discarded",
        ),
        resp(
            "switching_protocols_with_length",
            "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\nContent-Length: 4\r\n\r\nLEAKLEAK-PROTO",
            BadGateway,
            "a 101 to a request that asked for no upgrade is a malformed answer: 502, nothing tunnelled",
        ),
        resp(
            "switching_protocols_chunked",
            "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nLE\r\n2\r\nAK\r\n0\r\n\r\nLEAK-PROTO",
            BadGateway,
            "a 101 nobody asked for: 502, nothing tunnelled",
        ),
        resp(
            "upgrade_header_on_200_until_close",
            "HTTP/1.1 200 OK\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\nbody",
            relay(200, "body"),
            "llhttp: Upgrade on a 200 changes nothing; the body runs to the close",
        )
        .closing(),
        resp(
            "upgrade_header_on_200_with_length",
            "HTTP/1.1 200 OK\r\nConnection: upgrade\r\nUpgrade: h2c\r\nContent-Length: 4\r\n\r\nbody",
            relay(200, "body"),
            "llhttp: Upgrade on a 200 with a length",
        ),
        resp(
            "upgrade_header_on_200_chunked",
            "HTTP/1.1 200 OK\r\nConnection: upgrade\r\nUpgrade: h2c\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nbo\r\n2\r\ndy\r\n0\r\n\r\n",
            relay(200, "body"),
            "llhttp: Upgrade on a chunked 200",
        ),
        // invalid.md
        resp("htp_protocol", "HTP/1.1 200 OK\r\n\r\nLEAK", BadGateway, "llhttp: Expected HTTP/").closing(),
        resp("major_version_leading_zero", "HTTP/01.1 200 OK\r\n\r\nLEAK", BadGateway, "llhttp: Expected dot").closing(),
        resp("major_version_two_digits", "HTTP/11.1 200 OK\r\n\r\nLEAK", BadGateway, "llhttp: Expected dot").closing(),
        resp("minor_version_two_digits", "HTTP/1.01 200 OK\r\n\r\nLEAK", BadGateway, "llhttp: Expected space after version").closing(),
        resp("tab_after_version", "HTTP/1.1\t200 OK\r\n\r\nLEAK", BadGateway, "llhttp: Expected space after version").closing(),
        resp(
            "cr_then_tab_after_version",
            "\rHTTP/1.1\t200 OK\r\n\r\nLEAK",
            BadGateway,
            "llhttp: Expected space after version (after a stray CR)",
        )
        .closing(),
        resp(
            "headers_separated_by_cr",
            "HTTP/1.1 200 OK\r\nFoo: 1\rBar: 2\r\nContent-Length: 4\r\n\r\nLEAK",
            BadGateway,
            "llhttp: Missing expected LF after header value",
        ),
        resp("version_5_6", "HTTP/5.6 200 OK\r\nContent-Length: 4\r\n\r\nLEAK", BadGateway, "llhttp: Invalid HTTP version (lenient-version.md accepts it)"),
        resp(
            "space_after_status_line",
            "HTTP/1.1 200 OK\r\n Host: foo\r\nContent-Length: 4\r\n\r\nLEAK",
            BadGateway,
            "llhttp: Unexpected space after start line",
        ),
        resp("two_spaces_before_status", "HTTP/1.1  200 OK\r\n\r\nLEAK", BadGateway, "llhttp: Invalid status code").closing(),
        resp(
            "two_spaces_before_reason",
            "HTTP/1.1 200  OK\r\nContent-Length: 2\r\n\r\nok",
            relay(200, "ok"),
            "llhttp: a reason phrase may start with a space",
        ),
        resp("one_digit_status", "HTTP/1.1 2 OK\r\n\r\nLEAK", BadGateway, "llhttp: Invalid status code").closing(),
        resp(
            "only_lfs_no_body",
            "HTTP/1.1 200 OK\nContent-Length: 0\n\n",
            BadGateway,
            "llhttp: Missing expected CR after response line; stricter than its lenient_all",
        ),
        resp(
            "only_lfs_with_body",
            "HTTP/1.1 200 OK\nFoo: abc\nBar: def\n\nLEAK\n",
            BadGateway,
            "llhttp: Missing expected CR; stricter than its lenient_all",
        )
        .closing(),
        // sample.md
        resp(
            "simple_with_tab_ows",
            "HTTP/1.1 200 OK\r\nHeader1: Value1\r\nHeader2:\t Value2\r\nContent-Length: 0\r\n\r\n",
            relay(200, ""),
            "llhttp: an ordinary response",
        ),
        resp("rtsp_response", "RTSP/1.1 200 OK\r\n\r\nLEAK", BadGateway, "an RTSP status line is not HTTP").closing(),
        resp("ice_response", "ICE/1.1 200 OK\r\n\r\nLEAK", BadGateway, "an ICE status line is not HTTP").closing(),
        resp("httper_response", "HTTPER/1.1 200 OK\r\n\r\nLEAK", BadGateway, "llhttp: Expected HTTP/").closing(),
        resp(
            "empty_response_until_close",
            "HTTP/1.1 200 OK\r\n\r\n",
            relay(200, ""),
            "llhttp (sample.md, finish.md): no framing and nothing before the close is an empty body",
        )
        .closing(),
        resp(
            "google_301_padded_length",
            "HTTP/1.1 301 Moved Permanently\r\nLocation: http://www.google.com/\r\nContent-Type: text/html; charset=UTF-8\r\nX-$PrototypeBI-Version: 1.6.0.3\r\nCache-Control: public, max-age=2592000\r\nServer: gws\r\nContent-Length:  11  \r\n\r\nhello world",
            relay(301, "hello world"),
            "llhttp: `$` in a name, OWS around the length",
        ),
        resp(
            "amazon_chunk_of_lf",
            "HTTP/1.1 301 MovedPermanently\r\nServer: Server\r\nContent-Type: text/html; charset=ISO-8859-1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n\n\r\n0\r\n\r\n",
            relay(301, "\n"),
            "llhttp: a one-byte chunk holding LF",
        ),
        resp(
            "no_headers_404_until_close",
            "HTTP/1.1 404 Not Found\r\n\r\n",
            relay(404, ""),
            "llhttp: no headers, no body",
        )
        .closing(),
        resp("no_reason_phrase", "HTTP/1.1 301\r\n\r\n", relay(301, ""), "llhttp: the reason phrase is optional").closing(),
        resp("empty_reason_phrase", "HTTP/1.1 200 \r\n\r\n", relay(200, ""), "llhttp: an empty reason after the space").closing(),
        resp(
            "no_carriage_returns",
            "HTTP/1.1 200 OK\nContent-Type: text/html; charset=utf-8\nConnection: close\n\nLEAK these headers are from http://news.ycombinator.com/",
            BadGateway,
            "llhttp: Missing expected CR after response line; stricter than lenient_optional_cr_before_lf",
        )
        .closing(),
        resp(
            "underscore_in_name",
            "HTTP/1.1 200 OK\r\nServer: DCLK-AdSvr\r\nContent-Type: text/xml\r\nContent-Length: 0\r\nDCLK_imp: v7;x;114750856;0-0;0;17820020;0/0;21603567/21621457/1;;~okv=;dcmt=text/xml;;~cs=o\r\n\r\n",
            relay(200, ""),
            "llhttp: `_` in an ordinary response header name",
        ),
        resp(
            "empty_value_not_merged",
            "HTTP/1.0 301 Moved Permanently\r\nCache-Control: public\r\nPragma: \r\nLocation: http://www.bonjourmadame.fr/\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n",
            relay(301, ""),
            "llhttp: an empty value is not merged with the next line",
        ),
        resp(
            "odd_header_names",
            "HTTP/1.1 200 OK\r\nCache-Control: no-cache, must-revalidate\r\n.et-Cookie: PlaxoCS=1274804622353690521; path=/\r\n_eep-Alive: timeout=45\r\n_onnection: Keep-Alive\r\nTransfer-Encoding: chunked\r\nContent-Type: text/html\r\nConnection: close\r\n\r\n0\r\n\r\n",
            relay(200, ""),
            "llhttp: `.` and `_` are token characters",
        ),
        resp(
            "space_in_header_name",
            "HTTP/1.1 200 OK\r\nServer: Microsoft-IIS/6.0\r\nen-US Content-Type: text/xml\r\nContent-Type: text/xml\r\nContent-Length: 4\r\n\r\nLEAK",
            BadGateway,
            "llhttp: Invalid header token",
        ),
        resp(
            "non_ascii_reason",
            b"HTTP/1.1 500 Ori\xc3\xabntatieprobleem\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
            relay(500, ""),
            "llhttp: obs-text in a reason phrase",
        ),
        resp("http_0_9_version", "HTTP/0.9 200 OK\r\n\r\nLEAK", BadGateway, "HTTP/0.9 has no status line").closing(),
        resp(
            "no_framing_until_close",
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello world",
            relay(200, "hello world"),
            "llhttp: neither length nor chunked: the body runs to the close",
        )
        .closing(),
        resp(
            "crlf_before_response",
            "\r\nHTTP/1.1 200 OK\r\nHeader1: Value1\r\nHeader2:\t Value2\r\nContent-Length: 2\r\n\r\nok",
            relay(200, "ok"),
            "llhttp: an empty line before the status line is skipped; it moves no message boundary",
        ),
        // pipelining.md
        resp(
            "three_responses_for_one_request",
            format!("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nAAA{poison}HTTP/1.1 202 Accepted\r\nContent-Length: 5\r\n\r\nCCCCC"),
            relay(200, "AAA"),
            "llhttp pipelining: answers nobody asked for never answer the next request",
        ),
        // The brief's own response classes.
        resp(
            "connection_content_length",
            format!("HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: {}\r\n\r\n{planted_body}", planted_body.len()),
            relay(200, planted_body),
            "§9: Connection never removes framing; the client gets this body, whole, and the next answer is its own",
        ),
        resp(
            "connection_transfer_encoding",
            format!("HTTP/1.1 200 OK\r\nConnection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n{}", chunked(planted_body)),
            relay(200, planted_body),
            "§9: Connection: Transfer-Encoding never unframes the body",
        ),
        resp(
            "malformed_first_chunk",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nLEAK\r\n0\r\n\r\n",
            BadGateway,
            "§9: malformed before anything was sent to the client: 502",
        ),
        resp(
            "conflicting_content_lengths",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 4\r\n\r\nLEAK",
            BadGateway,
            "conflicting Content-Length: no length can be trusted",
        ),
        resp(
            "content_length_with_te",
            "HTTP/1.1 200 OK\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nLEAK\r\n0\r\n\r\n",
            BadGateway,
            "Content-Length with Transfer-Encoding in a response: 502",
        ),
        resp(
            "content_length_with_te_hiding_a_response",
            format!("HTTP/1.1 200 OK\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{}", chunked(&format!("LEAK{poison}"))),
            BadGateway,
            "CL+TE response hiding a response with a write-back: 502, and the hidden one is never used",
        ),
        resp(
            "interim_100_then_final",
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
            relay(200, "final"),
            "an interim 1xx is not the answer; the final one is relayed once",
        ),
        resp(
            "interim_103_then_final",
            "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
            relay(200, "final"),
            "103 Early Hints then the final response, relayed once",
        ),
        resp(
            "two_interims_then_final",
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
            relay(200, "final"),
            "several 1xx before the final response",
        ),
        resp(
            "body_longer_than_length",
            format!("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello{poison}"),
            relay(200, "hello"),
            "the extra bytes are never the answer to the next request, and their write-back is never applied",
        ),
    ]
}

// ---------------------------------------------------------------------------
// HTTP/2 downgrade (h2c prior knowledge on the plain listener).
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum H2Decision {
    /// RST_STREAM / GOAWAY or a 4xx; the upstream received not one byte.
    Refused,
    /// The same, for a problem only the body shows: no complete request upstream.
    RefusedMidBody,
    /// Answered 200; the upstream got exactly this request.
    Served {
        path: &'static str,
        body: &'static [u8],
    },
}

struct H2Case {
    name: &'static str,
    opening: Vec<u8>,
    expect: H2Decision,
    why: &'static str,
}

fn h2_fields<'a>(extra: &[(&'a [u8], &'a [u8])]) -> Vec<(&'a [u8], &'a [u8])> {
    h2_get_fields(extra)
}

fn h2_post<'a>(extra: &[(&'a [u8], &'a [u8])]) -> Vec<(&'a [u8], &'a [u8])> {
    let mut fields: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":authority", b"example.test"),
        (b":path", b"/h2"),
    ];
    fields.extend_from_slice(extra);
    fields
}

async fn run_h2_case(case: H2Case) -> Result<(), String> {
    let upstream = WireUpstream::echo().await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let outcome = h2_exchange(proxy.addr(), &case.opening).await;
    tokio::time::sleep(SETTLE + Duration::from_millis(200)).await;
    let status = outcome.status();
    let reset = outcome
        .frames
        .iter()
        .any(|f| (f.kind == FRAME_RST_STREAM && f.stream == 1) || f.kind == FRAME_GOAWAY);
    let mut problems = Vec::new();
    let requests = upstream.requests();
    match &case.expect {
        H2Decision::Refused | H2Decision::RefusedMidBody => {
            let refused = match status {
                Some(s) => (400..500).contains(&s),
                None => reset,
            };
            if !refused {
                problems.push(format!(
                    "stream 1 was not refused: status {status:?}, reset {reset}"
                ));
            }
            if matches!(case.expect, H2Decision::Refused) {
                if !upstream.received().is_empty() {
                    problems.push("the upstream received bytes".into());
                }
            } else if !requests.is_empty() {
                problems.push(format!(
                    "the upstream got {} complete request(s)",
                    requests.len()
                ));
            }
        }
        H2Decision::Served { path, body } => {
            if status != Some(200) {
                problems.push(format!(
                    "stream 1 was answered {status:?}, reset {reset}, expected 200"
                ));
            }
            match requests.as_slice() {
                [req] if req.target == *path && req.body == *body => {
                    problems.extend(forwarded_request_problems(req));
                }
                _ => problems.push(format!(
                    "the upstream got {:?}, expected one request for {path} with body {}",
                    requests
                        .iter()
                        .map(|r| format!("{} {} body={}", r.method, r.target, show(&r.body, 100)))
                        .collect::<Vec<_>>(),
                    show(body, 100)
                )),
            }
        }
    }
    for e in upstream.errors() {
        problems.push(format!(
            "the upstream could not read the proxy's bytes: {e}"
        ));
    }
    if problems.is_empty() {
        return Ok(());
    }
    let mut out = format!(
        "[{}] {}\n  expected: {:?}\n  problems:",
        case.name, case.why, case.expect
    );
    for p in &problems {
        let _ = write!(out, "\n    - {p}");
    }
    let _ = write!(
        out,
        "\n  client sent: {}\n  client got frames: {}\n  upstream: {}",
        show(&case.opening, 400),
        outcome.describe(),
        upstream.describe()
    );
    Err(out)
}

fn h2_cases() -> Vec<H2Case> {
    let refused = |name, extra: &[(&[u8], &[u8])], why| H2Case {
        name,
        opening: h2_request(&h2_fields(extra)),
        expect: H2Decision::Refused,
        why,
    };
    vec![
        H2Case {
            name: "h2_plain_get_is_served",
            opening: h2_request(&h2_fields(&[])),
            expect: H2Decision::Served { path: "/h2", body: b"" },
            why: "control: a clean hand-written request goes through",
        },
        H2Case {
            name: "h2_matching_content_length_is_served",
            opening: h2_request_with_body(&h2_post(&[(b"content-length", b"5")]), b"hello"),
            expect: H2Decision::Served { path: "/h2", body: b"hello" },
            why: "control: content-length equal to the DATA sent",
        },
        H2Case {
            name: "h2_content_length_more_than_data",
            opening: h2_request_with_body(&h2_post(&[(b"content-length", b"10")]), b"hello"),
            expect: H2Decision::RefusedMidBody,
            why: "RFC 9113 §8.1.1: content-length disagreeing with the DATA is malformed; never a complete request upstream",
        },
        H2Case {
            name: "h2_content_length_less_than_data",
            opening: h2_request_with_body(&h2_post(&[(b"content-length", b"3")]), b"helloGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
            expect: H2Decision::RefusedMidBody,
            why: "H2.CL downgrade smuggling: a short content-length must not cut the DATA into a second request",
        },
        refused(
            "h2_transfer_encoding_chunked",
            &[(b"transfer-encoding", b"chunked")],
            "H2.TE: RFC 9113 §8.2.2, connection-specific fields are malformed",
        ),
        refused("h2_cr_in_value", &[(b"x-note", b"a\rb")], "RFC 9113 §8.2.1: CR in a value is malformed (H2.CRLF)"),
        refused(
            "h2_lf_in_value",
            &[(b"x-note", b"a\nx-session-id: forged")],
            "RFC 9113 §8.2.1: LF in a value would split the HTTP/1 header (H2.CRLF)",
        ),
        refused("h2_nul_in_value", &[(b"x-note", b"a\0b")], "RFC 9113 §8.2.1: NUL in a value is malformed"),
        refused(
            "h2_authority_differs_from_host",
            &[(b"host", b"evil.example")],
            "RFC 9113 §8.3.1: a Host naming another authority than :authority is treated as malformed",
        ),
        H2Case {
            name: "h2_pseudo_after_regular",
            opening: h2_request(&[
                (b":method", b"GET"),
                (b":scheme", b"http"),
                (b"x-note", b"1"),
                (b":authority", b"example.test"),
                (b":path", b"/h2"),
            ]),
            expect: H2Decision::Refused,
            why: "RFC 9113 §8.3: a pseudo-header after a regular field is malformed",
        },
        refused(
            "h2_connection_keep_alive",
            &[(b"connection", b"keep-alive")],
            "RFC 9113 §8.2.2: connection-specific fields are malformed",
        ),
        refused("h2_upgrade", &[(b"upgrade", b"h2c")], "RFC 9113 §8.2.2: Upgrade is connection-specific"),
    ]
}

// ---------------------------------------------------------------------------
// The tables.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llhttp_request_content_length() {
    run_requests("content-length", content_length_cases()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llhttp_request_transfer_encoding() {
    run_requests("transfer-encoding", transfer_encoding_cases()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llhttp_request_connection() {
    run_requests("connection", connection_cases()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llhttp_request_invalid() {
    run_requests("invalid", invalid_cases()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llhttp_request_sample() {
    run_requests("sample", sample_cases()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llhttp_request_pipelining() {
    run_requests("pipelining", pipelining_cases()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llhttp_request_uri() {
    run_requests("uri", uri_cases()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llhttp_request_method() {
    run_requests("method", method_cases()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_names_values_and_session_headers() {
    run_requests("headers", header_cases()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portswigger_request_smuggling() {
    run_requests("smuggling", smuggling_cases()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llhttp_responses_and_response_queue_poisoning() {
    let cases = response_cases();
    let mut names: Vec<&str> = cases.iter().map(|c| c.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "response case names repeat");
    run_cases("responses", cases, run_response_case).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_downgrade() {
    run_cases("h2", h2_cases(), run_h2_case).await;
}
