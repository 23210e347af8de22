//! The one upstream client: raw HTTP/1.1 connections (plain or TLS), each with the
//! read buffer its next response lands in, kept by the worker's
//! `crate::pool::Pool`, and the reader of a response body off such a
//! connection. Requests from HTTP/1 and HTTP/2 clients alike go upstream here.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::codec::{self, BadChunk, ChunkedDecoder, Framing};
use crate::pool::Reusable;
use crate::tls::UpstreamTls;
use crate::upstream::UpstreamFailure;

/// How much room is made in a connection's buffer for one read.
const READ_CHUNK: usize = 65_536;

/// A connected byte stream to the upstream, plain or TLS.
pub(crate) enum UpstreamIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl UpstreamIo {
    fn tcp(&self) -> &TcpStream {
        match self {
            UpstreamIo::Plain(s) => s,
            UpstreamIo::Tls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Connects to `authority`, then speaks TLS when `tls` is set; both steps are
/// bounded by `timeout`.
pub(crate) async fn connect(
    authority: &str,
    timeout: Duration,
    tls: Option<&UpstreamTls>,
) -> Result<UpstreamIo, UpstreamFailure> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(authority)).await {
        Err(_) => return Err(UpstreamFailure::ConnectTimeout),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "upstream connect failed");
            return Err(match e.kind() {
                std::io::ErrorKind::TimedOut => UpstreamFailure::ConnectTimeout,
                _ => UpstreamFailure::Refused,
            });
        }
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    let Some(tls) = tls else {
        return Ok(UpstreamIo::Plain(stream));
    };
    let connecting = tls.connector.connect(tls.server_name.clone(), stream);
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(stream)) => Ok(UpstreamIo::Tls(Box::new(stream))),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "upstream TLS handshake failed");
            Err(UpstreamFailure::Tls)
        }
        Err(_) => Err(UpstreamFailure::ConnectTimeout),
    }
}

/// One connection to the upstream and the bytes read from it but not yet used.
pub(crate) struct Conn {
    pub(crate) io: UpstreamIo,
    pub(crate) buf: BytesMut,
    /// It served a request before: a failure before any response byte may just
    /// mean the upstream closed it while idle.
    pub(crate) reused: bool,
}

impl Reusable for Conn {
    /// Open, and nothing unasked arrived on it: a closed connection reads as
    /// end of stream, and one with bytes waiting cannot be trusted. Over TLS,
    /// bytes may also wait inside the TLS session, already read off the socket
    /// (decrypted plaintext, or records not yet processed): those count too.
    /// Never waits.
    fn is_open(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        if let UpstreamIo::Tls(tls) = &mut self.io {
            let (_, session) = tls.get_mut();
            match session.process_new_packets() {
                Ok(state) if state.plaintext_bytes_to_read() == 0 && !state.peer_has_closed() => {}
                _ => return false,
            }
        }
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(Waker::noop());
        matches!(self.io.tcp().poll_peek(&mut cx, &mut probe), Poll::Pending)
    }

    fn returned(&mut self) {
        self.reused = true;
        shrink(&mut self.buf);
    }
}

/// A connection's buffer after a large body: back to its usual size once empty,
/// so that idle keep-alive connections do not each hold the largest body's room.
pub(crate) fn shrink(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > 4 * 8192 {
        *buf = BytesMut::with_capacity(8192);
    }
}

impl Conn {
    /// Reads more of the upstream's bytes into the buffer; 0 means it closed.
    /// Silence for `limit` fails with `TimedOut`; `timer` is that wait's clock,
    /// made only when a read has to wait and kept across calls.
    pub(crate) fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        limit: Duration,
        timer: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    ) -> Poll<std::io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_CHUNK);
        }
        if let Poll::Ready(read) =
            tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
        {
            if let Some(timer) = timer.as_mut() {
                timer.as_mut().reset(tokio::time::Instant::now() + limit);
            }
            return Poll::Ready(read);
        }
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::ErrorKind::TimedOut.into())),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Reads more of the upstream's bytes into the buffer, failing with
    /// `TimedOut` at `deadline`; 0 means it closed.
    pub(crate) async fn fill_until(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> std::io::Result<usize> {
        use tokio::io::AsyncReadExt as _;
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_CHUNK);
        }
        match tokio::time::timeout_at(deadline, self.io.read_buf(&mut self.buf)).await {
            Ok(read) => read,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }
}

/// The upstream's response body, read off its connection and framed for the
/// client as it goes: copied as framed, re-chunked (`rechunk`), or decoded to
/// plain data (HTTP/2, HTTP/1.0 clients). Silence from the upstream for
/// `upstream.timeout` between reads ends it with `TimedOut`. The connection
/// goes back to the pool once the body has been read to its end, if the
/// upstream keeps it open; a body dropped half-read closes it.
pub(crate) struct ResponseBody {
    up: Option<Conn>,
    pool: Arc<Pool>,
    framing: Framing,
    /// Bytes still to come of a `Content-Length` body.
    left: u64,
    decoder: ChunkedDecoder,
    rechunk: bool,
    keep_alive: bool,
    timeout: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    done: bool,
}

impl ResponseBody {
    pub(crate) fn new(
        up: Conn,
        pool: Arc<Pool>,
        framing: Framing,
        keep_alive: bool,
        rechunk: bool,
        timeout: Duration,
    ) -> ResponseBody {
        ResponseBody {
            up: Some(up),
            pool,
            framing,
            left: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            decoder: ChunkedDecoder::default(),
            rechunk,
            keep_alive,
            timeout,
            timer: None,
            done: false,
        }
    }

    /// The whole body has been handed on.
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// Moves what has arrived of the body into `out`, framed for the client.
    /// Fails when the upstream's chunked framing is broken.
    pub(crate) fn take(&mut self, out: &mut Vec<u8>) -> Result<(), BadChunk> {
        let Some(up) = self.up.as_mut() else {
            return Ok(());
        };
        let buf = &mut up.buf;
        match self.framing {
            Framing::Empty => self.done = true,
            Framing::Length(_) => self.done = codec::take_length(&mut self.left, buf, out),
            Framing::Chunked => {
                codec::relay_chunks(&mut self.decoder, buf, out, self.rechunk)?;
                if self.decoder.is_done() {
                    if self.rechunk {
                        out.extend_from_slice(codec::LAST_CHUNK);
                    }
                    self.done = true;
                }
            }
            Framing::Close => {
                if self.rechunk {
                    codec::put_chunk(out, buf);
                } else {
                    out.extend_from_slice(buf);
                }
                buf.clear();
            }
        }
        if self.done {
            self.release();
        }
        Ok(())
    }

    /// Reads more of the body from the upstream and moves it into `out`. The
    /// upstream closing ends a body delimited by its close; any other body it
    /// cuts short fails with `UnexpectedEof`, as does a broken chunk.
    pub(crate) fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<u8>,
    ) -> Poll<std::io::Result<()>> {
        let Some(up) = self.up.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        match up.poll_fill(cx, self.timeout, &mut self.timer) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(0)) if self.framing == Framing::Close => {
                if self.rechunk {
                    out.extend_from_slice(codec::LAST_CHUNK);
                }
                self.done = true;
                // Ended by its close: nothing to give back.
                self.up = None;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Ok(0)) => Poll::Ready(Err(std::io::ErrorKind::UnexpectedEof.into())),
            Poll::Ready(Ok(_)) => Poll::Ready(
                self.take(out)
                    .map_err(|_| std::io::ErrorKind::InvalidData.into()),
            ),
        }
    }

    /// [`ResponseBody::poll_next`] as a future.
    pub(crate) async fn next(&mut self, out: &mut Vec<u8>) -> std::io::Result<()> {
        std::future::poll_fn(|cx| self.poll_next(cx, out)).await
    }

    /// The connection, once the body is read whole, back to the pool when the
    /// upstream keeps it open.
    fn release(&mut self) {
        if let Some(up) = self.up.take() {
            if self.keep_alive {
                self.pool.checkin(up);
            }
        }
    }
}

/// A worker's idle connections to the upstream.
pub(crate) type Pool = crate::pool::Pool<Conn>;

impl Pool {
    /// A new connection.
    pub(crate) async fn connect(&self) -> Result<Conn, UpstreamFailure> {
        let endpoint = &self.endpoint;
        let io = connect(
            &endpoint.authority,
            endpoint.connect_timeout,
            endpoint.tls.as_ref(),
        )
        .await?;
        Ok(Conn {
            io,
            buf: BytesMut::with_capacity(8192),
            reused: false,
        })
    }
}
