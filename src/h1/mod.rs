//! The HTTP/1 path: one loop per client connection reads a request head, runs the
//! session work on it ([`proxy::prepare`], [`proxy::respond`]) and forwards it as
//! bytes over one of the worker's upstream connections, then streams the response
//! back. No task, channel or body object sits between the two sockets, and each
//! head is parsed once on the way in and once on the way back.
//!
//! HTTP/2 (by prior knowledge on a plain listener) is handed to hyper's server.

pub mod client;
pub mod codec;

use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Method, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::error::ProxyError;
use crate::proxy::{self, Begun, ConnInfo, Worker};
use crate::upstream::UpstreamFailure;
use codec::{ChunkedDecoder, Framing, HeadError, Outgoing, RequestHead};

/// What an HTTP/2 client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The most a response head from the upstream may take: large enough for a
/// write-back the store will refuse by size rather than a 502.
const MAX_RESPONSE_HEAD: usize = 512 * 1024;
/// How much of a body is moved per read.
const BODY_CHUNK: usize = 65_536;

/// How a connection's HTTP/1 service ended.
pub enum Served<IO> {
    /// Closed (by either side, a timeout, or an error).
    Closed,
    /// The client speaks HTTP/2: the connection and what was read of it so far.
    H2 { io: IO, read: Bytes },
}

/// What reading a request head came to.
enum Head {
    Request(Box<RequestHead>),
    H2,
    Closed,
    Refused(StatusCode, &'static str),
}

/// Serves HTTP/1 requests on `io` until either side closes it or `stop` turns
/// true. `detect_h2`: a client opening with the HTTP/2 preface is handed back.
pub async fn serve<IO>(
    mut io: IO,
    conn: &ConnInfo,
    worker: &Worker,
    stop: &mut watch::Receiver<bool>,
    detect_h2: bool,
) -> Served<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let (read_timeout, max_head) = {
        let limits = &worker.state.settings.load().config.limits;
        (limits.header_read_timeout, limits.max_header_bytes)
    };
    let mut buf = BytesMut::with_capacity(8192);
    let mut detect_h2 = detect_h2;
    loop {
        let head = read_head(&mut io, &mut buf, read_timeout, max_head, stop, detect_h2).await;
        detect_h2 = false;
        let head = match head {
            Head::Request(head) => head,
            Head::H2 => {
                return Served::H2 {
                    io,
                    read: buf.freeze(),
                }
            }
            Head::Closed => return Served::Closed,
            Head::Refused(status, why) => {
                tracing::debug!(why, status = status.as_u16(), "request head refused");
                let mut out = Vec::new();
                let mut headers = http::HeaderMap::new();
                let body = format!("{status}\n");
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
                codec::write_response(&mut out, status, &headers, Outgoing::AsIs, true);
                out.extend_from_slice(body.as_bytes());
                let _ = send(&mut io, &out).await;
                close(&mut io).await;
                return Served::Closed;
            }
        };
        let mut begun = worker.begin(conn, &head.parts);
        let closing = !head.keep_alive || *stop.borrow();
        match exchange(&mut io, &mut buf, conn, worker, &mut begun, *head, closing).await {
            Ok(done) => {
                worker.finish(&mut begun, conn, done.status, done.bytes);
                match done.next {
                    Next::KeepAlive => {}
                    Next::Close => {
                        close(&mut io).await;
                        return Served::Closed;
                    }
                    Next::Tunnel(up) => {
                        tunnel(&mut io, buf, up).await;
                        return Served::Closed;
                    }
                }
            }
            Err(Failed::Proxy { err, clean }) => {
                worker.failed(&begun, &err);
                let status = err.status();
                let body = err.body();
                let close_after = closing || !clean;
                let (mut parts, _) = err.into_response().into_parts();
                parts.headers.remove(header::CONNECTION);
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
                worker.finish_headers(&begun, conn, &mut parts.headers);
                let mut out = Vec::with_capacity(256);
                codec::write_response(
                    &mut out,
                    status,
                    &parts.headers,
                    Outgoing::AsIs,
                    close_after,
                );
                out.extend_from_slice(body.as_bytes());
                worker.finish(&mut begun, conn, status, Some(body.len() as u64));
                let sent = send(&mut io, &out).await.is_ok();
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

/// Reads until `buf` starts with a whole request head. A connection that sends
/// nothing, or not a whole head, within `timeout` is closed; so is an idle one
/// once `stop` turns true.
async fn read_head<IO>(
    io: &mut IO,
    buf: &mut BytesMut,
    timeout: Duration,
    max_head: usize,
    stop: &mut watch::Receiver<bool>,
    mut detect_h2: bool,
) -> Head
where
    IO: AsyncRead + Unpin,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if !buf.is_empty() {
            let mut parse = true;
            if detect_h2 {
                let n = buf.len().min(H2_PREFACE.len());
                if buf[..n] == H2_PREFACE[..n] {
                    if n == H2_PREFACE.len() {
                        return Head::H2;
                    }
                    parse = false;
                } else {
                    detect_h2 = false;
                }
            }
            if parse {
                match codec::parse_request(buf, max_head) {
                    Ok(Some(head)) => return Head::Request(Box::new(head)),
                    Ok(None) => {}
                    Err(HeadError::TooLarge) => {
                        return Head::Refused(
                            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                            "request head too large",
                        )
                    }
                    Err(HeadError::Version) => {
                        return Head::Refused(
                            StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                            "unsupported HTTP version",
                        )
                    }
                    Err(HeadError::Bad(why)) => return Head::Refused(StatusCode::BAD_REQUEST, why),
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
            _ = crate::server::stopped(stop), if idle => return Head::Closed,
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

/// How a request ended, for the log and the connection loop.
struct Done {
    status: StatusCode,
    bytes: Option<u64>,
    next: Next,
}

/// What the connection does after a response.
enum Next {
    KeepAlive,
    Close,
    /// `101 Switching Protocols`: bytes flow both ways from now on.
    Tunnel(client::Conn),
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
            done: matches!(framing, Framing::Empty),
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

/// Writes all of `bytes` and flushes (TLS streams buffer).
async fn send<W: AsyncWrite + Unpin>(io: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    io.write_all(bytes).await?;
    io.flush().await
}

/// Ends a connection with a FIN (and, over TLS, `close_notify`), bounded in time.
async fn close<W: AsyncWrite + Unpin>(io: &mut W) {
    let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
}

/// Reads more of the upstream's response into its buffer; 0 means it closed.
/// `timeout`: none while the whole round trip is already bounded.
async fn read_upstream(up: &mut client::Conn, timeout: Option<Duration>) -> std::io::Result<usize> {
    if up.buf.capacity() - up.buf.len() < 1024 {
        up.buf.reserve(BODY_CHUNK);
    }
    let Some(timeout) = timeout else {
        return up.io.read_buf(&mut up.buf).await;
    };
    match tokio::time::timeout(timeout, up.io.read_buf(&mut up.buf)).await {
        Ok(read) => read,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// One request: session work, the upstream round trip, the response streamed back.
async fn exchange<IO>(
    io: &mut IO,
    buf: &mut BytesMut,
    conn: &ConnInfo,
    worker: &Worker,
    begun: &mut Begun,
    head: RequestHead,
    closing: bool,
) -> Result<Done, Failed>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let RequestHead {
        mut parts,
        framing,
        keep_alive: _,
        expect_continue,
    } = head;
    let client_version = parts.version;
    let bodiless = framing == Framing::Empty;
    let mut exchange = proxy::prepare(worker, conn, begun, &mut parts)
        .await
        .map_err(|err| Failed::Proxy {
            err,
            clean: bodiless,
        })?;
    let settings = &*begun.settings;
    let cfg = &settings.config;
    if expect_continue {
        // The proxy answers `100 Continue` itself when it wants the body.
        parts.headers.remove(header::EXPECT);
    }

    // The head, and as much of the body as already arrived with it.
    let mut out = Vec::with_capacity(1024);
    codec::write_request(&mut out, &parts, framing);
    let mut body = BodyIn::new(framing, cfg.limits.max_body_bytes);
    body.take(buf, &mut out)
        .map_err(|err| Failed::Proxy { err, clean: false })?;
    let replayable = body.done;
    let idempotent = matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    let stall = cfg.limits.header_read_timeout;

    let pool = worker.h1_pool(settings);
    let asked = Instant::now();
    let timeout = cfg.upstream.timeout;
    let method = parts.method.clone();
    let round_trip = async {
        let mut fresh_only = false;
        loop {
            let checked_out = if fresh_only { None } else { pool.checkout() };
            let mut up = match checked_out {
                Some(up) => up,
                None => pool
                    .connect()
                    .await
                    .map_err(|kind| Failed::upstream(kind, body.done))?,
            };
            // A reused connection the upstream closed while idle fails here or
            // before any response byte: an idempotent request sent whole is tried
            // again once on a new connection. Others are never sent twice.
            let retry = up.reused && replayable && idempotent;
            if let Err(e) = send(&mut up.io, &out).await {
                if retry {
                    fresh_only = true;
                    continue;
                }
                tracing::debug!(error = %e, "upstream write failed");
                return Err(Failed::upstream(UpstreamFailure::Reset, false));
            }
            if !body.done {
                out.clear();
                if expect_continue && buf.is_empty() {
                    send(io, b"HTTP/1.1 100 Continue\r\n\r\n")
                        .await
                        .map_err(|_| Failed::Io {
                            status: StatusCode::BAD_REQUEST,
                        })?;
                }
                while !body.done {
                    if buf.capacity() - buf.len() < 1024 {
                        buf.reserve(BODY_CHUNK);
                    }
                    let read = tokio::time::timeout(stall, io.read_buf(buf)).await;
                    let fail = |err| Failed::Proxy { err, clean: false };
                    match read {
                        Err(_) => return Err(fail(ProxyError::BodyTimeout)),
                        Ok(Ok(0)) | Ok(Err(_)) => {
                            return Err(fail(ProxyError::BadRequest("malformed request body")))
                        }
                        Ok(Ok(_)) => body.take(buf, &mut out).map_err(fail)?,
                    }
                    if !out.is_empty() {
                        send(&mut up.io, &out)
                            .await
                            .map_err(|_| Failed::upstream(UpstreamFailure::Reset, body.done))?;
                        out.clear();
                    }
                }
            }
            let mut received = false;
            loop {
                match codec::parse_response(&mut up.buf, MAX_RESPONSE_HEAD, &method) {
                    Ok(Some(head)) => {
                        if head.status.is_informational()
                            && head.status != StatusCode::SWITCHING_PROTOCOLS
                        {
                            continue;
                        }
                        return Ok((up, head));
                    }
                    Ok(None) => {}
                    Err(bad) => {
                        tracing::warn!(reason = bad.0, "malformed response from the upstream");
                        return Err(Failed::upstream(UpstreamFailure::Protocol, true));
                    }
                }
                match read_upstream(&mut up, None).await {
                    Ok(n) if n > 0 => received = true,
                    Ok(_) | Err(_) if retry && !received => break,
                    Ok(_) | Err(_) => return Err(Failed::upstream(UpstreamFailure::Reset, true)),
                }
            }
            fresh_only = true;
        }
    };
    let (mut up, mut rh) = match tokio::time::timeout(timeout, round_trip).await {
        Ok(got) => got?,
        Err(_) => {
            return Err(Failed::Proxy {
                err: ProxyError::UpstreamTimeout,
                clean: body.done,
            })
        }
    };
    begun.trace.upstream = Some(asked.elapsed());

    proxy::respond(
        &worker.state,
        settings,
        &mut exchange,
        rh.status,
        &mut rh.headers,
    )
    .await
    .map_err(|err| Failed::Proxy { err, clean: true })?;
    worker.finish_headers(begun, conn, &mut rh.headers);

    let status = rh.status;
    let http10 = client_version == Version::HTTP_10;
    let outgoing = match rh.framing {
        Framing::Empty | Framing::Length(_) => Outgoing::AsIs,
        Framing::Chunked | Framing::Close if http10 => Outgoing::UntilClose,
        Framing::Chunked | Framing::Close => Outgoing::Chunked,
    };
    let close_client = closing || outgoing == Outgoing::UntilClose;
    let bytes = match rh.framing {
        Framing::Length(n) => Some(n),
        _ => rh
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()),
    };
    let mut resp = Vec::with_capacity(512);
    codec::write_response(&mut resp, status, &rh.headers, outgoing, close_client);
    worker.finish(begun, conn, status, bytes);
    let broke = Failed::Io { status };

    if status == StatusCode::SWITCHING_PROTOCOLS {
        resp.extend_from_slice(&up.buf);
        up.buf.clear();
        send(io, &resp).await.map_err(|_| broke)?;
        return Ok(Done {
            status,
            bytes,
            next: Next::Tunnel(up),
        });
    }

    match rh.framing {
        Framing::Empty => send(io, &resp).await.map_err(|_| broke)?,
        Framing::Length(n) => {
            let mut left = n;
            let here = left.min(up.buf.len() as u64) as usize;
            resp.extend_from_slice(&up.buf[..here]);
            up.buf.advance(here);
            left -= here as u64;
            send(io, &resp).await.map_err(|_| Failed::Io { status })?;
            while left > 0 {
                match read_upstream(&mut up, Some(timeout)).await {
                    Ok(n) if n > 0 => {}
                    _ => return Err(Failed::Io { status }),
                }
                let here = left.min(up.buf.len() as u64) as usize;
                send(io, &up.buf[..here])
                    .await
                    .map_err(|_| Failed::Io { status })?;
                up.buf.advance(here);
                left -= here as u64;
            }
        }
        Framing::Chunked => {
            let mut decoder = ChunkedDecoder::default();
            loop {
                let rechunk = outgoing == Outgoing::Chunked;
                decoder
                    .decode(&mut up.buf, |data| {
                        if rechunk {
                            codec::put_chunk(&mut resp, data);
                        } else {
                            resp.extend_from_slice(data);
                        }
                    })
                    .map_err(|_| Failed::Io { status })?;
                if decoder.is_done() {
                    break;
                }
                // What arrived goes out before waiting for more (event streams).
                if !resp.is_empty() {
                    send(io, &resp).await.map_err(|_| Failed::Io { status })?;
                    resp.clear();
                }
                match read_upstream(&mut up, Some(timeout)).await {
                    Ok(n) if n > 0 => {}
                    _ => return Err(Failed::Io { status }),
                }
            }
            if outgoing == Outgoing::Chunked {
                resp.extend_from_slice(codec::LAST_CHUNK);
            }
            send(io, &resp).await.map_err(|_| Failed::Io { status })?;
        }
        Framing::Close => {
            loop {
                if !up.buf.is_empty() {
                    if outgoing == Outgoing::Chunked {
                        codec::put_chunk(&mut resp, &up.buf);
                    } else {
                        resp.extend_from_slice(&up.buf);
                    }
                    up.buf.clear();
                }
                send(io, &resp).await.map_err(|_| Failed::Io { status })?;
                resp.clear();
                match read_upstream(&mut up, Some(timeout)).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(_) => return Err(Failed::Io { status }),
                }
            }
            if outgoing == Outgoing::Chunked {
                send(io, codec::LAST_CHUNK)
                    .await
                    .map_err(|_| Failed::Io { status })?;
            }
        }
    }
    if rh.keep_alive {
        pool.checkin(up);
    }
    Ok(Done {
        status,
        bytes,
        next: if close_client {
            Next::Close
        } else {
            Next::KeepAlive
        },
    })
}

/// After `101`: the client's bytes already read go upstream first, then bytes are
/// copied both ways until either side closes.
async fn tunnel<IO>(io: &mut IO, leftover: BytesMut, mut up: client::Conn)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    if !leftover.is_empty() && send(&mut up.io, &leftover).await.is_err() {
        return;
    }
    if let Err(e) = tokio::io::copy_bidirectional(io, &mut up.io).await {
        tracing::debug!(error = %e, "tunnel closed");
    }
}
