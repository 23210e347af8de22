//! The HTTP/1 adapter: one loop per client connection reads a request head,
//! hands it to the request path ([`proxy::forward`]) and sends back what it
//! returns, streaming the upstream's body from its connection. No task, channel
//! or body object sits between the two sockets, and each head is parsed once on
//! the way in and once on the way back.
//!
//! HTTP/2 (by prior knowledge on a plain listener) is handed back to the caller.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{StatusCode, Uri, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::config::LimitsConfig;
use crate::error::ProxyError;
use crate::h1::client::{self, shrink};
use crate::h1::codec::{
    self, ChunkedDecoder, Framing, HeadError, Outgoing, RequestHead, ResponseHead,
};
use crate::headers::{Extras, Keep, RequestView};
use crate::io::{close, send};
use crate::proxy::{self, ConnInfo, Downstream, Incoming, Reply, Worker};

/// What an HTTP/2 client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
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
enum HeadRead {
    /// A whole head of this many bytes is at the start of the buffer.
    Ready(usize),
    H2,
    Closed,
    Refused(HeadError),
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
            HeadRead::Ready(len) => buf.split_to(len).freeze(),
            HeadRead::H2 => {
                return Served::H2 {
                    io,
                    read: buf.freeze(),
                }
            }
            HeadRead::Closed => return Served::Closed,
            HeadRead::Refused(error) => return refuse(io, error, send_timeout).await,
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
        let closing = !parsed.keep_alive || *stop.borrow();
        let mut origin = Vec::new();
        let mut client = Client {
            io: &mut io,
            buf: &mut buf,
            body: BodyIn::new(parsed.framing),
            http10: parsed.version == Version::HTTP_10,
            closing,
            send_timeout,
        };
        let incoming = Incoming {
            method: &parsed.method,
            view: request_view(&parsed, absolute.as_ref(), path, &mut origin),
            framing: parsed.framing,
            expect_continue: parsed.expect_continue,
            request_id: parsed
                .lines
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(b"x-request-id"))
                .map(|(_, v)| *v),
            refused: None,
        };
        let reply = proxy::forward(worker, conn, &mut client, incoming).await;
        if !answer(&mut io, &mut buf, reply, send_timeout, tunnel_idle).await {
            close(&mut io).await;
            return Served::Closed;
        }
        shrink(&mut buf);
    }
}

/// Sends what the request path returned. Whether the connection can carry
/// another request.
async fn answer<IO>(
    io: &mut IO,
    buf: &mut BytesMut,
    reply: Reply<Head>,
    send_timeout: Duration,
    tunnel_idle: Duration,
) -> bool
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    match reply {
        Reply::Upstream { head, first, body } => relay(io, head, first, body, send_timeout).await,
        Reply::Switched { head, first, up } => {
            let mut out = head.bytes;
            out.extend_from_slice(&first);
            if send(io, &out, send_timeout).await.is_ok() {
                let leftover = std::mem::take(buf);
                tunnel(io, leftover, up, tunnel_idle, send_timeout).await;
            }
            false
        }
        Reply::Own(head) => send(io, &head.bytes, send_timeout).await.is_ok() && !head.close,
        Reply::Gone => false,
    }
}

/// Sends the upstream's response: its head with the first of its body, then
/// the rest as it arrives. Whether the connection can carry another request.
async fn relay<IO>(
    io: &mut IO,
    head: Head,
    first: Vec<u8>,
    mut body: client::ResponseBody,
    send_timeout: Duration,
) -> bool
where
    IO: AsyncWrite + Unpin,
{
    let mut out = head.bytes;
    out.extend_from_slice(&first);
    if send(io, &out, send_timeout).await.is_err() {
        return false;
    }
    // What arrived goes out before waiting for more (event streams).
    while !body.is_done() {
        out.clear();
        if body.next(&mut out).await.is_err() {
            return false;
        }
        if !out.is_empty() && send(io, &out, send_timeout).await.is_err() {
            return false;
        }
    }
    !head.close
}

/// The request as the request path reads it. An absolute-form target goes
/// upstream in origin form: its path and query, with the path `/` when it has
/// none (`http://host?q` is `/?q`); `origin` holds that form when it is made.
fn request_view<'a, 'h: 'a>(
    head: &'a RequestHead<'h>,
    absolute: Option<&'a Uri>,
    path: &'a [u8],
    origin: &'a mut Vec<u8>,
) -> RequestView<'a> {
    let target = match absolute.and_then(|uri| uri.path_and_query()) {
        Some(pq) if pq.as_str().starts_with('/') => pq.as_str().as_bytes(),
        Some(pq) => {
            *origin = [&b"/"[..], pq.as_str().as_bytes()].concat();
            &origin[..]
        }
        None if absolute.is_some() => b"/",
        None => head.target,
    };
    RequestView {
        path,
        target,
        authority: absolute
            .and_then(|uri| uri.authority())
            .map(|a| a.as_str().as_bytes()),
        lines: &head.lines,
    }
}

/// A response head for an HTTP/1 client, and whether the connection closes
/// after it.
pub(crate) struct Head {
    bytes: Vec<u8>,
    close: bool,
}

/// One request's view of its HTTP/1 connection, for the request path.
struct Client<'c, IO> {
    io: &'c mut IO,
    /// What was read past the request head: the start of its body, or more.
    buf: &'c mut BytesMut,
    body: BodyIn,
    http10: bool,
    /// The connection closes after this response.
    closing: bool,
    send_timeout: Duration,
}

impl<IO> Downstream for Client<'_, IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    type Head = Head;

    fn body_ready(&mut self, out: &mut Vec<u8>, limits: &LimitsConfig) -> Result<(), ProxyError> {
        self.body.take(self.buf, out, limits.max_body_bytes)
    }

    fn body_done(&self) -> bool {
        self.body.done
    }

    async fn body_wait(
        &mut self,
        out: &mut Vec<u8>,
        limits: &LimitsConfig,
    ) -> Result<(), ProxyError> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(BODY_CHUNK);
        }
        match tokio::time::timeout(limits.client_body_timeout, self.io.read_buf(self.buf)).await {
            Err(_) => Err(ProxyError::BodyTimeout),
            Ok(Ok(0)) | Ok(Err(_)) => Err(ProxyError::BadRequest("malformed request body")),
            Ok(Ok(_)) => self.body.take(self.buf, out, limits.max_body_bytes),
        }
    }

    async fn go_on(&mut self) -> std::io::Result<()> {
        // A client that already started its body is not waiting.
        if !self.buf.is_empty() {
            return Ok(());
        }
        send(self.io, b"HTTP/1.1 100 Continue\r\n\r\n", self.send_timeout).await
    }

    fn head(&mut self, rh: &ResponseHead<'_>, keep: &Keep, extras: &Extras<'_>) -> (Head, bool) {
        let outgoing = match rh.framing {
            Framing::Empty | Framing::Length(_) => Outgoing::AsIs,
            Framing::Chunked | Framing::Close if self.http10 => Outgoing::UntilClose,
            Framing::Chunked | Framing::Close => Outgoing::Chunked,
        };
        let close = self.closing || outgoing == Outgoing::UntilClose;
        let mut bytes = Vec::with_capacity(512);
        codec::write_response(
            &mut bytes,
            rh.status,
            &rh.lines,
            keep,
            extras,
            codec::client_framing(rh.status, rh.framing, rh.declared_length, outgoing),
            close,
        );
        (Head { bytes, close }, outgoing == Outgoing::Chunked)
    }

    fn own(
        &mut self,
        status: StatusCode,
        headers: &HeaderMap,
        body: Bytes,
        head_only: bool,
        clean: bool,
    ) -> Head {
        let close = self.closing || !clean;
        let mut bytes = Vec::with_capacity(256);
        codec::write_own_response(&mut bytes, status, headers, &body, head_only, close);
        Head { bytes, close }
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
    codec::write_own_response(&mut out, status, &headers, body.as_bytes(), false, true);
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
) -> HeadRead
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
                        return HeadRead::H2;
                    }
                    look = false;
                } else {
                    detect_h2 = false;
                }
            }
            if look {
                match codec::request_head_end(buf, max_head) {
                    Ok(Some(len)) => return HeadRead::Ready(len),
                    Ok(None) => {}
                    Err(refused) => return HeadRead::Refused(refused),
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
            _ = stopping.as_mut(), if idle => return HeadRead::Closed,
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => return HeadRead::Closed,
            Ok(Ok(_)) => {}
            Err(_) => {
                tracing::debug!("no whole request head within header_read_timeout: closed");
                return HeadRead::Closed;
            }
        }
    }
}

/// The client's request body on its way upstream, re-framed as it goes.
struct BodyIn {
    framing: Framing,
    /// Bytes still to come of a `Content-Length` body.
    left: u64,
    decoder: ChunkedDecoder,
    seen: u64,
    done: bool,
}

impl BodyIn {
    fn new(framing: Framing) -> BodyIn {
        BodyIn {
            framing,
            left: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            decoder: ChunkedDecoder::default(),
            seen: 0,
            done: matches!(framing, Framing::Empty | Framing::Length(0)),
        }
    }

    /// Moves what `buf` holds of the body into `out`. A chunked body past
    /// `limit` fails (a declared length was checked against it with the head).
    fn take(
        &mut self,
        buf: &mut BytesMut,
        out: &mut Vec<u8>,
        limit: Option<u64>,
    ) -> Result<(), ProxyError> {
        match self.framing {
            Framing::Empty | Framing::Close => self.done = true,
            Framing::Length(_) => self.done = codec::take_length(&mut self.left, buf, out),
            Framing::Chunked => {
                let (mut seen, mut over) = (self.seen, false);
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
