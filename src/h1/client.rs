//! Connections to the upstream for the HTTP/1 path: raw streams (plain or TLS),
//! each with the read buffer its next response lands in, kept by the worker's
//! [`crate::pool::Pool`].

use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::pool::{Reusable, UpstreamTls};
use crate::upstream::UpstreamFailure;

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
        super::shrink(&mut self.buf);
    }
}

/// A worker's idle connections for the HTTP/1 path.
pub(crate) type Pool = crate::pool::Pool<Conn>;

impl Pool {
    /// A new connection.
    pub(crate) async fn connect(&self) -> Result<Conn, UpstreamFailure> {
        let io = connect(&self.authority, self.connect_timeout, self.tls.as_ref()).await?;
        Ok(Conn {
            io,
            buf: BytesMut::with_capacity(8192),
            reused: false,
        })
    }
}
