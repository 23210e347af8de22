//! The HTTP/1 path: one loop per client connection reads a request head, runs the
//! session work on it ([`proxy::prepare`], [`proxy::respond`]) and forwards it as
//! bytes over one of the worker's upstream connections, then streams the response
//! back. No task, channel or body object sits between the two sockets, and each
//! head is parsed once on the way in and once on the way back.
//!
//! HTTP/2 (by prior knowledge on a plain listener) is handed to hyper's server.

pub(crate) mod client;
pub mod codec;

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Method, StatusCode, Uri, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::error::ProxyError;
use crate::headers::RequestView;
use crate::proxy::{self, Begun, ConnInfo, Worker};
use crate::upstream::UpstreamFailure;
use codec::{BodyHead, ChunkedDecoder, Framing, HeadError, Outgoing, RequestHead};

/// What an HTTP/2 client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The most a response head from the upstream may take: large enough for a
/// write-back the store will refuse by size rather than a 502.
const MAX_RESPONSE_HEAD: usize = 512 * 1024;
/// How much of a body is moved per read.
const BODY_CHUNK: usize = 65_536;

/// How a connection's HTTP/1 service ended.
pub(crate) enum Served<IO> {
    /// Closed (by either side, a timeout, or an error).
    Closed,
    /// The client speaks HTTP/2: the connection and what was read of it so far.
    H2 { io: IO, read: Bytes },
}

/// What reading a request head came to.
enum Head {
    /// A whole head of this many bytes is at the start of the buffer.
    Ready(usize),
    H2,
    Closed,
    Refused(HeadError),
}

/// Serves HTTP/1 requests on `io` until either side closes it or `stop` turns
/// true. `detect_h2`: a client opening with the HTTP/2 preface is handed back.
pub(crate) async fn serve<IO>(
    mut io: IO,
    conn: &ConnInfo,
    worker: &Worker,
    stop: &mut watch::Receiver<bool>,
    detect_h2: bool,
) -> Served<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let (read_timeout, max_head, send_timeout, tunnel_idle) = {
        let limits = &worker.state.settings.load().config.limits;
        (
            limits.header_read_timeout,
            limits.max_header_bytes,
            limits.send_timeout,
            limits.tunnel_idle_timeout,
        )
    };
    let mut buf = BytesMut::with_capacity(8192);
    let mut detect_h2 = detect_h2;
    // One wait for the stop signal for the whole connection, polled between
    // requests: it joins the signal's waiters once, not once per request.
    let mut stop_signal = stop.clone();
    let mut stopping =
        std::pin::pin!(async move { crate::shutdown::stopped(&mut stop_signal).await });
    loop {
        let head = read_head(
            &mut io,
            &mut buf,
            read_timeout,
            max_head,
            stopping.as_mut(),
            detect_h2,
        )
        .await;
        detect_h2 = false;
        let head = match head {
            Head::Ready(len) => buf.split_to(len).freeze(),
            Head::H2 => {
                return Served::H2 {
                    io,
                    read: buf.freeze(),
                }
            }
            Head::Closed => return Served::Closed,
            Head::Refused(error) => return refuse(io, error, send_timeout).await,
        };
        let parsed = match codec::parse_request(&head) {
            Ok(parsed) => parsed,
            Err(error) => return refuse(io, error, send_timeout).await,
        };
        let absolute = match absolute_target(parsed.target) {
            Ok(absolute) => absolute,
            Err(error) => return refuse(io, error, send_timeout).await,
        };
        let path = match &absolute {
            Some(uri) => uri.path().as_bytes(),
            None => parsed
                .target
                .split(|&b| b == b'?')
                .next()
                .unwrap_or_default(),
        };
        let client_request_id = parsed
            .lines
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(b"x-request-id"))
            .map(|(_, v)| *v);
        let mut begun = worker.begin(conn, &parsed.method, path, client_request_id);
        let closing = !parsed.keep_alive || *stop.borrow();
        let request = Request {
            head: &parsed,
            absolute: absolute.as_ref(),
            path,
        };
        match exchange(
            &mut io, &mut buf, conn, worker, &mut begun, request, closing,
        )
        .await
        {
            Ok(next) => match next {
                Next::KeepAlive => shrink(&mut buf),
                Next::Close => {
                    close(&mut io).await;
                    return Served::Closed;
                }
                Next::Tunnel(up) => {
                    tunnel(&mut io, buf, up, tunnel_idle, send_timeout).await;
                    return Served::Closed;
                }
            },
            Err(Failed::Proxy { err, clean }) => {
                worker.failed(&begun, &err);
                let status = err.status();
                let body = err.body();
                let close_after = closing || !clean;
                let (mut parts, _) = err.into_response().into_parts();
                parts.headers.remove(header::CONNECTION);
                worker.finish_headers(&begun, conn, &mut parts.headers);
                let mut out = Vec::with_capacity(256);
                codec::write_own_response(
                    &mut out,
                    status,
                    &parts.headers,
                    body.as_bytes(),
                    close_after,
                );
                worker.finish(&mut begun, conn, status, Some(body.len() as u64));
                let sent = send(&mut io, &out, send_timeout).await.is_ok();
                if close_after || !sent {
                    close(&mut io).await;
                    return Served::Closed;
                }
            }
            Err(Failed::Io { status }) => {
                worker.finish(&mut begun, conn, status, None);
                return Served::Closed;
            }
        }
    }
}

/// Answers a request head that cannot be served (400, 405, 431, 505) and closes.
async fn refuse<IO>(mut io: IO, error: HeadError, send_timeout: Duration) -> Served<IO>
where
    IO: AsyncWrite + Unpin,
{
    let (status, why) = match error {
        HeadError::TooLarge => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request head too large",
        ),
        HeadError::Version => (
            StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            "unsupported HTTP version",
        ),
        HeadError::Method => (StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not served"),
        HeadError::Bad(why) => (StatusCode::BAD_REQUEST, why),
    };
    tracing::debug!(why, status = status.as_u16(), "request head refused");
    let mut headers = http::HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH, TRACE"),
        );
    }
    let body = format!("{status}\n");
    let mut out = Vec::new();
    codec::write_own_response(&mut out, status, &headers, body.as_bytes(), true);
    let _ = send(&mut io, &out, send_timeout).await;
    close(&mut io).await;
    Served::Closed
}

/// An absolute-form target (`http://host/path`) as a URI; `None` for origin form
/// and `*`. Anything else (authority form, a scheme other than http and https,
/// no host) is refused.
fn absolute_target(target: &[u8]) -> Result<Option<Uri>, HeadError> {
    if target.first() == Some(&b'/') || target == b"*" {
        return Ok(None);
    }
    let uri = Uri::try_from(target).ok().filter(|uri| {
        matches!(uri.scheme_str(), Some("http" | "https"))
            && uri
                .authority()
                .is_some_and(|a| !a.host().is_empty() && !a.as_str().contains('@'))
    });
    match uri {
        Some(uri) => Ok(Some(uri)),
        None => Err(HeadError::Bad("malformed request target")),
    }
}

/// A parsed request and what its target says.
struct Request<'r, 'h> {
    head: &'r RequestHead<'h>,
    absolute: Option<&'r Uri>,
    path: &'r [u8],
}

/// Reads until `buf` starts with a whole request head and returns its length. A
/// connection that sends nothing, or not a whole head, within `timeout` is closed;
/// so is an idle one once `stop` turns true.
async fn read_head<IO>(
    io: &mut IO,
    buf: &mut BytesMut,
    timeout: Duration,
    max_head: usize,
    mut stopping: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    mut detect_h2: bool,
) -> Head
where
    IO: AsyncRead + Unpin,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        // Empty lines before a request line are ignored (RFC 9112 §2.2).
        while buf.starts_with(b"\r\n") {
            buf.advance(2);
        }
        if !buf.is_empty() {
            let mut look = true;
            if detect_h2 {
                let n = buf.len().min(H2_PREFACE.len());
                if buf[..n] == H2_PREFACE[..n] {
                    if n == H2_PREFACE.len() {
                        return Head::H2;
                    }
                    look = false;
                } else {
                    detect_h2 = false;
                }
            }
            if look {
                match codec::request_head_end(buf, max_head) {
                    Ok(Some(len)) => return Head::Ready(len),
                    Ok(None) => {}
                    Err(refused) => return Head::Refused(refused),
                }
            }
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(8192);
        }
        let idle = buf.is_empty();
        let read = tokio::select! {
            biased;
            read = tokio::time::timeout_at(deadline, io.read_buf(buf)) => read,
            _ = stopping.as_mut(), if idle => return Head::Closed,
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => return Head::Closed,
            Ok(Ok(_)) => {}
            Err(_) => {
                tracing::debug!("no whole request head within header_read_timeout: closed");
                return Head::Closed;
            }
        }
    }
}

/// What the connection does after a response.
enum Next {
    KeepAlive,
    Close,
    /// `101 Switching Protocols`: bytes flow both ways from now on.
    Tunnel(client::Conn),
}

/// One try at the upstream round trip.
enum Attempt {
    /// A reused connection broke before answering; try a new one.
    Retry,
    Failed(Failed),
}

/// The upstream's response head, rewritten for the client, and what the body
/// loop needs to know of it.
struct Answer {
    status: StatusCode,
    framing: Framing,
    /// The upstream keeps its connection open after this response.
    keep_alive: bool,
    /// How the body travels to the client.
    outgoing: Outgoing,
    /// The client connection closes after this response.
    close_client: bool,
    /// The body's length, for the access log, when known.
    bytes: Option<u64>,
    /// The head for the client, as bytes.
    head: Vec<u8>,
    /// Bytes of the upstream's head, to take off its buffer.
    upstream_head_len: usize,
}

/// Why a request failed.
enum Failed {
    /// Nothing has been sent to the client yet: it gets the error's response.
    /// `clean`: the request was read whole, so the connection can carry another.
    Proxy { err: ProxyError, clean: bool },
    /// The response broke off after its head was sent: the connection is closed.
    Io { status: StatusCode },
}

impl Failed {
    fn upstream(kind: UpstreamFailure, clean: bool) -> Failed {
        Failed::Proxy {
            err: ProxyError::Upstream(kind),
            clean,
        }
    }
}

/// The client's request body on its way upstream, re-framed as it goes.
struct BodyIn {
    framing: Framing,
    /// Bytes still to come of a `Content-Length` body.
    left: u64,
    decoder: ChunkedDecoder,
    limit: Option<u64>,
    seen: u64,
    done: bool,
}

impl BodyIn {
    fn new(framing: Framing, limit: Option<u64>) -> BodyIn {
        BodyIn {
            framing,
            left: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            decoder: ChunkedDecoder::default(),
            limit,
            seen: 0,
            done: matches!(framing, Framing::Empty | Framing::Length(0)),
        }
    }

    /// Moves what `buf` holds of the body into `out`.
    fn take(&mut self, buf: &mut BytesMut, out: &mut Vec<u8>) -> Result<(), ProxyError> {
        match self.framing {
            Framing::Empty | Framing::Close => self.done = true,
            Framing::Length(_) => {
                let n = self.left.min(buf.len() as u64) as usize;
                out.extend_from_slice(&buf[..n]);
                buf.advance(n);
                self.left -= n as u64;
                self.done = self.left == 0;
            }
            Framing::Chunked => {
                let (limit, mut seen, mut over) = (self.limit, self.seen, false);
                self.decoder
                    .decode(buf, |data| {
                        seen += data.len() as u64;
                        if limit.is_some_and(|l| seen > l) {
                            over = true;
                        } else {
                            codec::put_chunk(out, data);
                        }
                    })
                    .map_err(|_| ProxyError::BadRequest("malformed request body"))?;
                self.seen = seen;
                if over {
                    return Err(ProxyError::BodyTooLarge);
                }
                if self.decoder.is_done() {
                    out.extend_from_slice(codec::LAST_CHUNK);
                    self.done = true;
                }
            }
        }
        Ok(())
    }
}

/// A connection's buffer after a large body: back to its usual size once empty,
/// so that idle keep-alive connections do not each hold the largest body's room.
pub(crate) fn shrink(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > 4 * 8192 {
        *buf = BytesMut::with_capacity(8192);
    }
}

/// Writes all of `bytes` and flushes (TLS streams buffer). A write that makes no
/// progress for `stall` fails with `TimedOut` (`limits.send_timeout` toward the
/// client): a peer that stops reading never holds the connection for good. A
/// write the socket takes at once arms no timer.
async fn send<W: AsyncWrite + Unpin>(
    io: &mut W,
    mut bytes: &[u8],
    stall: Duration,
) -> std::io::Result<()> {
    while !bytes.is_empty() {
        let n = within(stall, |cx| Pin::new(&mut *io).poll_write(cx, bytes)).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n..];
    }
    within(stall, |cx| Pin::new(&mut *io).poll_flush(cx)).await
}

/// Polls `op` until it is ready, failing with `TimedOut` when it stays pending
/// for `limit`. The timer is made only once `op` has to wait.
async fn within<T>(
    limit: Duration,
    mut op: impl FnMut(&mut Context<'_>) -> Poll<std::io::Result<T>>,
) -> std::io::Result<T> {
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(done) = op(cx) {
            return Poll::Ready(done);
        }
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::ErrorKind::TimedOut.into())),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// Ends a connection with a FIN (and, over TLS, `close_notify`), bounded in time.
async fn close<W: AsyncWrite + Unpin>(io: &mut W) {
    let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
}

/// Reads more of the upstream's response into its buffer, waiting at most
/// `timeout`; 0 means it closed.
async fn read_upstream(up: &mut client::Conn, timeout: Duration) -> std::io::Result<usize> {
    read_upstream_until(up, tokio::time::Instant::now() + timeout).await
}

/// [`read_upstream`] with a deadline.
async fn read_upstream_until(
    up: &mut client::Conn,
    deadline: tokio::time::Instant,
) -> std::io::Result<usize> {
    if up.buf.capacity() - up.buf.len() < 1024 {
        up.buf.reserve(BODY_CHUNK);
    }
    match tokio::time::timeout_at(deadline, up.io.read_buf(&mut up.buf)).await {
        Ok(read) => read,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// The framing line of the response head written to the client: computed from
/// how the body travels and what the parser found, never copied.
fn client_framing(
    status: StatusCode,
    framing: Framing,
    declared: Option<u64>,
    outgoing: Outgoing,
) -> BodyHead {
    match (outgoing, framing) {
        (Outgoing::Chunked, _) => BodyHead::Chunked,
        (Outgoing::UntilClose, _) => BodyHead::None,
        (Outgoing::AsIs, Framing::Length(n)) => BodyHead::Length(n),
        // 1xx and 204 carry no Content-Length (RFC 9110 §8.6); a response to
        // HEAD or a 304 tells the size the upstream declared, and an empty body
        // declared as one is `Content-Length: 0`.
        (Outgoing::AsIs, _) if status.is_informational() || status == StatusCode::NO_CONTENT => {
            BodyHead::None
        }
        (Outgoing::AsIs, _) => declared.map_or(BodyHead::None, BodyHead::Length),
    }
}

/// One request: session work, the upstream round trip, the response streamed back.
async fn exchange<IO>(
    io: &mut IO,
    buf: &mut BytesMut,
    conn: &ConnInfo,
    worker: &Worker,
    begun: &mut Begun,
    request: Request<'_, '_>,
    closing: bool,
) -> Result<Next, Failed>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let head = request.head;
    let framing = head.framing;
    let expect_continue = head.expect_continue;
    let method = &head.method;
    // An absolute-form target goes upstream in origin form: its path and query,
    // with the path `/` when it has none (`http://host?q` is `/?q`).
    let origin: Vec<u8>;
    let view = RequestView {
        path: request.path,
        target: match request.absolute.and_then(|uri| uri.path_and_query()) {
            Some(pq) if pq.as_str().starts_with('/') => pq.as_str().as_bytes(),
            Some(pq) => {
                origin = [&b"/"[..], pq.as_str().as_bytes()].concat();
                &origin
            }
            None if request.absolute.is_some() => b"/",
            None => head.target,
        },
        authority: request
            .absolute
            .and_then(|uri| uri.authority())
            .map(|a| a.as_str().as_bytes()),
        lines: &head.lines,
    };
    let state = &*worker.state;
    let settings: &proxy::Settings = &begun.settings;
    let cfg = &settings.config;
    let (mut exchange, out) = {
        let prepared = proxy::prepare(
            state,
            settings,
            conn,
            begun.trusted,
            &begun.request_id,
            method,
            &view,
            &mut begun.trace,
        )
        .await
        .map_err(|err| Failed::Proxy {
            err,
            clean: matches!(framing, Framing::Empty | Framing::Length(0)),
        })?;
        let mut keep = prepared.keep;
        if expect_continue {
            // The proxy answers `100 Continue` itself when it wants the body.
            for (k, (name, _)) in keep.iter_mut().zip(head.lines.iter()) {
                *k &= !name.eq_ignore_ascii_case(b"expect");
            }
        }
        let mut out = Vec::with_capacity(1024);
        codec::write_request(
            &mut out,
            method,
            &prepared.target,
            &head.lines,
            &keep,
            &prepared.extras,
            framing,
        );
        (prepared.exchange, out)
    };
    let mut out = out;

    // The head goes with as much of the body as already arrived with it.
    let mut body = BodyIn::new(framing, cfg.limits.max_body_bytes);
    body.take(buf, &mut out)
        .map_err(|err| Failed::Proxy { err, clean: false })?;
    let replayable = body.done;
    let idempotent = matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    let limits = &cfg.limits;
    let (body_stall, send_stall) = (limits.client_body_timeout, limits.send_timeout);
    let pool = worker.h1_pool(settings);
    let asked = Instant::now();
    let timeout = cfg.upstream.timeout;
    let mut fresh_only = false;
    let (mut up, deadline) = loop {
        let attempt = async {
            let checked_out = if fresh_only { None } else { pool.checkout() };
            let mut up = match checked_out {
                Some(up) => up,
                None => pool
                    .connect()
                    .await
                    .map_err(|kind| Attempt::Failed(Failed::upstream(kind, body.done)))?,
            };
            // A reused connection the upstream closed while idle fails here or
            // before any response byte: an idempotent request sent whole is tried
            // again once on a new connection. Others are never sent twice.
            let retry = up.reused && replayable && idempotent;
            // Writes to the upstream that make no progress for `upstream.timeout`
            // are its fault: 504.
            let stalled = |e: std::io::Error, done: bool| {
                if e.kind() == std::io::ErrorKind::TimedOut {
                    Attempt::Failed(Failed::Proxy {
                        err: ProxyError::UpstreamTimeout,
                        clean: done,
                    })
                } else {
                    tracing::debug!(error = %e, "upstream write failed");
                    Attempt::Failed(Failed::upstream(UpstreamFailure::Reset, done))
                }
            };
            if let Err(e) = send(&mut up.io, &out, timeout).await {
                if retry && e.kind() != std::io::ErrorKind::TimedOut {
                    return Err(Attempt::Retry);
                }
                return Err(stalled(e, false));
            }
            if !body.done {
                out.clear();
                if expect_continue && buf.is_empty() {
                    send(io, b"HTTP/1.1 100 Continue\r\n\r\n", send_stall)
                        .await
                        .map_err(|_| {
                            Attempt::Failed(Failed::Io {
                                status: StatusCode::BAD_REQUEST,
                            })
                        })?;
                }
                // The upload is bounded by `limits.client_body_timeout` between
                // reads, not by `upstream.timeout`: a slow but live client is
                // not the upstream's fault.
                while !body.done {
                    if buf.capacity() - buf.len() < 1024 {
                        buf.reserve(BODY_CHUNK);
                    }
                    let read = tokio::time::timeout(body_stall, io.read_buf(buf)).await;
                    let fail = |err| Attempt::Failed(Failed::Proxy { err, clean: false });
                    match read {
                        Err(_) => return Err(fail(ProxyError::BodyTimeout)),
                        Ok(Ok(0)) | Ok(Err(_)) => {
                            return Err(fail(ProxyError::BadRequest("malformed request body")))
                        }
                        Ok(Ok(_)) => body.take(buf, &mut out).map_err(fail)?,
                    }
                    if !out.is_empty() {
                        send(&mut up.io, &out, timeout)
                            .await
                            .map_err(|e| stalled(e, body.done))?;
                        out.clear();
                    }
                }
            }
            // `upstream.timeout` counts from here: the whole request is sent.
            // A reused connection that ends before its first byte is retried.
            let deadline = tokio::time::Instant::now() + timeout;
            while up.buf.is_empty() {
                match read_upstream_until(&mut up, deadline).await {
                    Ok(n) if n > 0 => {}
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                        return Err(Attempt::Failed(Failed::Proxy {
                            err: ProxyError::UpstreamTimeout,
                            clean: true,
                        }))
                    }
                    Ok(_) | Err(_) if retry => return Err(Attempt::Retry),
                    Ok(_) | Err(_) => {
                        return Err(Attempt::Failed(Failed::upstream(
                            UpstreamFailure::Reset,
                            true,
                        )))
                    }
                }
            }
            Ok((up, deadline))
        };
        match attempt.await {
            Ok(answered) => break answered,
            Err(Attempt::Retry) => fresh_only = true,
            Err(Attempt::Failed(failed)) => return Err(failed),
        }
    };

    // The response head, as the one response parser reads it: interim (1xx but
    // 101) heads are skipped, and the final one is rewritten by steps 4 and 5
    // into the client's bytes.
    let answer = 'answer: loop {
        // `Some(len)`: an interim head of `len` bytes; `None`: not all here yet.
        // The parse (borrowing the buffer) ends with this block.
        let skip = 'head: {
            let parsed = codec::parse_response(&up.buf, MAX_RESPONSE_HEAD, method);
            let rh = match parsed {
                Ok(Some(rh)) => rh,
                Ok(None) => break 'head None,
                Err(why) => {
                    tracing::warn!(why = why.0, "malformed response head from the upstream");
                    return Err(Failed::upstream(UpstreamFailure::Protocol, true));
                }
            };
            if rh.status.is_informational() && rh.status != StatusCode::SWITCHING_PROTOCOLS {
                break 'head Some(rh.len);
            }
            begun.trace.upstream = Some(asked.elapsed());
            let (keep, extras) = proxy::respond(
                state,
                settings,
                &mut exchange,
                rh.status,
                &rh.lines,
                settings.hsts_for(conn),
            )
            .await
            .map_err(|err| Failed::Proxy { err, clean: true })?;
            let http10 = head.version == Version::HTTP_10;
            let outgoing = match rh.framing {
                Framing::Empty | Framing::Length(_) => Outgoing::AsIs,
                Framing::Chunked | Framing::Close if http10 => Outgoing::UntilClose,
                Framing::Chunked | Framing::Close => Outgoing::Chunked,
            };
            let close_client = closing || outgoing == Outgoing::UntilClose;
            let mut head = Vec::with_capacity(512);
            codec::write_response(
                &mut head,
                rh.status,
                &rh.lines,
                &keep,
                &extras,
                client_framing(rh.status, rh.framing, rh.declared_length, outgoing),
                close_client,
            );
            break 'answer Answer {
                status: rh.status,
                framing: rh.framing,
                keep_alive: rh.keep_alive,
                outgoing,
                close_client,
                bytes: rh.declared_length,
                head,
                upstream_head_len: rh.len,
            };
        };
        if let Some(len) = skip {
            up.buf.advance(len);
            continue;
        }
        match read_upstream_until(&mut up, deadline).await {
            Ok(n) if n > 0 => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(Failed::Proxy {
                    err: ProxyError::UpstreamTimeout,
                    clean: true,
                })
            }
            Ok(_) | Err(_) => return Err(Failed::upstream(UpstreamFailure::Reset, true)),
        }
    };
    up.buf.advance(answer.upstream_head_len);
    let Answer {
        status,
        outgoing,
        close_client,
        head: mut resp,
        ..
    } = answer;
    let rechunk = outgoing == Outgoing::Chunked;
    // A chunked body broken in what arrived with the head is found before
    // anything is sent: the client gets a 502, not half a response.
    let mut decoder = ChunkedDecoder::default();
    if answer.framing == Framing::Chunked
        && codec::relay_chunks(&mut decoder, &mut up.buf, &mut resp, rechunk).is_err()
    {
        tracing::warn!("malformed chunked body from the upstream");
        return Err(Failed::upstream(UpstreamFailure::Protocol, true));
    }
    worker.finish(begun, conn, status, answer.bytes);
    let broke = |_| Failed::Io { status };

    if status == StatusCode::SWITCHING_PROTOCOLS {
        resp.extend_from_slice(&up.buf);
        up.buf.clear();
        send(io, &resp, send_stall).await.map_err(broke)?;
        return Ok(Next::Tunnel(up));
    }

    match answer.framing {
        Framing::Empty => send(io, &resp, send_stall).await.map_err(broke)?,
        Framing::Length(n) => {
            let mut left = n;
            let here = left.min(up.buf.len() as u64) as usize;
            resp.extend_from_slice(&up.buf[..here]);
            up.buf.advance(here);
            left -= here as u64;
            send(io, &resp, send_stall).await.map_err(broke)?;
            while left > 0 {
                match read_upstream(&mut up, timeout).await {
                    Ok(n) if n > 0 => {}
                    _ => return Err(Failed::Io { status }),
                }
                let here = left.min(up.buf.len() as u64) as usize;
                send(io, &up.buf[..here], send_stall).await.map_err(broke)?;
                up.buf.advance(here);
                left -= here as u64;
            }
        }
        Framing::Chunked => {
            loop {
                if decoder.is_done() {
                    break;
                }
                // What arrived goes out before waiting for more (event streams).
                if !resp.is_empty() {
                    send(io, &resp, send_stall).await.map_err(broke)?;
                    resp.clear();
                }
                match read_upstream(&mut up, timeout).await {
                    Ok(n) if n > 0 => {}
                    _ => return Err(Failed::Io { status }),
                }
                codec::relay_chunks(&mut decoder, &mut up.buf, &mut resp, rechunk)
                    .map_err(|_| Failed::Io { status })?;
            }
            if rechunk {
                resp.extend_from_slice(codec::LAST_CHUNK);
            }
            send(io, &resp, send_stall).await.map_err(broke)?;
        }
        Framing::Close => {
            loop {
                if !up.buf.is_empty() {
                    if rechunk {
                        codec::put_chunk(&mut resp, &up.buf);
                    } else {
                        resp.extend_from_slice(&up.buf);
                    }
                    up.buf.clear();
                }
                send(io, &resp, send_stall).await.map_err(broke)?;
                resp.clear();
                match read_upstream(&mut up, timeout).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(_) => return Err(Failed::Io { status }),
                }
            }
            if rechunk {
                send(io, codec::LAST_CHUNK, send_stall)
                    .await
                    .map_err(broke)?;
            }
        }
    }
    if answer.keep_alive {
        pool.checkin(up);
    }
    Ok(if close_client {
        Next::Close
    } else {
        Next::KeepAlive
    })
}

/// After `101`: the client's bytes already read go upstream first, then bytes are
/// copied both ways until either side closes, or neither sends anything for
/// `idle` (`limits.tunnel_idle_timeout`).
async fn tunnel<IO>(
    io: &mut IO,
    leftover: BytesMut,
    mut up: client::Conn,
    idle: Duration,
    send_stall: Duration,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    if !leftover.is_empty() && send(&mut up.io, &leftover, send_stall).await.is_err() {
        return;
    }
    let mut from_client = vec![0u8; 16 * 1024];
    let mut from_upstream = vec![0u8; 16 * 1024];
    let (mut client_open, mut upstream_open) = (true, true);
    // One timer for the tunnel, pushed back whenever a byte moves.
    let quiet = tokio::time::sleep(idle);
    let mut quiet = std::pin::pin!(quiet);
    while client_open || upstream_open {
        quiet.as_mut().reset(tokio::time::Instant::now() + idle);
        tokio::select! {
            read = io.read(&mut from_client), if client_open => match read {
                Ok(0) | Err(_) => {
                    client_open = false;
                    let _ = tokio::time::timeout(send_stall, up.io.shutdown()).await;
                }
                Ok(n) => {
                    if send(&mut up.io, &from_client[..n], send_stall).await.is_err() {
                        return;
                    }
                }
            },
            read = up.io.read(&mut from_upstream), if upstream_open => match read {
                Ok(0) | Err(_) => {
                    upstream_open = false;
                    let _ = tokio::time::timeout(send_stall, io.shutdown()).await;
                }
                Ok(n) => {
                    if send(io, &from_upstream[..n], send_stall).await.is_err() {
                        return;
                    }
                }
            },
            _ = quiet.as_mut() => {
                tracing::debug!("tunnel idle past limits.tunnel_idle_timeout: closed");
                return;
            }
        }
    }
}
