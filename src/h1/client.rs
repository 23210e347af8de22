//! Connections to the upstream for the HTTP/1 path: each worker keeps its own idle
//! keep-alive connections, each with the read buffer its next response lands in.

use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::pool::UpstreamTls;
use crate::upstream::UpstreamFailure;

/// Idle connections older than this are closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per worker.
const MAX_IDLE: usize = 1024;

/// A connected byte stream to the upstream, plain or TLS.
pub enum UpstreamIo {
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
pub async fn connect(
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
pub struct Conn {
    pub io: UpstreamIo,
    pub buf: BytesMut,
    /// It served a request before: a failure before any response byte may just
    /// mean the upstream closed it while idle.
    pub reused: bool,
    since: Instant,
}

impl Conn {
    /// Whether the upstream has closed (or sent unasked bytes on) this idle
    /// connection. Never waits.
    fn is_stale(&self) -> bool {
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(Waker::noop());
        !matches!(self.io.tcp().poll_peek(&mut cx, &mut probe), Poll::Pending)
    }
}

/// A worker's idle connections to one upstream.
pub struct Pool {
    /// `host:port` to connect to.
    authority: String,
    connect_timeout: Duration,
    tls: Option<UpstreamTls>,
    /// The upstream URL and CA file this pool was made for.
    made_for: (http::Uri, Option<std::path::PathBuf>),
    idle: Mutex<Vec<Conn>>,
}

impl Pool {
    pub fn new(
        authority: String,
        connect_timeout: Duration,
        tls: Option<UpstreamTls>,
        made_for: (http::Uri, Option<std::path::PathBuf>),
    ) -> Pool {
        Pool {
            authority,
            connect_timeout,
            tls,
            made_for,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Whether this pool still matches the configured upstream.
    pub fn serves(&self, uri: &http::Uri, ca_file: &Option<std::path::PathBuf>) -> bool {
        self.made_for.0 == *uri && self.made_for.1 == *ca_file
    }

    /// An idle connection that still looks open, most recently used first.
    pub fn checkout(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(conn) = idle.pop() {
            if conn.since.elapsed() < IDLE_TIMEOUT && !conn.is_stale() {
                return Some(conn);
            }
        }
        None
    }

    /// A new connection.
    pub async fn connect(&self) -> Result<Conn, UpstreamFailure> {
        let io = connect(&self.authority, self.connect_timeout, self.tls.as_ref()).await?;
        Ok(Conn {
            io,
            buf: BytesMut::with_capacity(8192),
            reused: false,
            since: Instant::now(),
        })
    }

    /// Gives back a connection whose last response was read to its end.
    pub fn checkin(&self, mut conn: Conn) {
        if !conn.buf.is_empty() {
            return;
        }
        conn.reused = true;
        conn.since = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // The oldest sit at the front: drop the ones past their time.
        if idle
            .first()
            .is_some_and(|c| c.since.elapsed() >= IDLE_TIMEOUT)
        {
            idle.retain(|c| c.since.elapsed() < IDLE_TIMEOUT);
        }
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }
}
