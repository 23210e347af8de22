//! A worker's pool of keep-alive connections to the upstream.
//!
//! Each worker thread owns one pool: checkout is a `Vec::pop`, no hashing and no
//! lock shared between cores. A connection goes back to the pool when the response
//! body has been read to its end (HTTP/1.1 cannot reuse it before); a response
//! dropped half-read closes its connection instead.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use crate::config::UpstreamConfig;
use crate::upstream::{BodyStalled, BodyTooLarge, ClientBodyError, RequestBody, UpstreamFailure};

/// Idle connections older than this are closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per worker.
const MAX_IDLE: usize = 1024;

/// Why a request to the upstream failed.
#[derive(Debug)]
pub(crate) enum SendError {
    Upstream(UpstreamFailure),
    BodyTooLarge,
    /// The client's own body was malformed or broke off.
    ClientBody,
    /// The client paused its body past the idle limit (slow POST).
    BodyStalled,
}

/// TLS to an `https://` upstream: the verifying connector and the SNI name.
#[derive(Clone)]
pub(crate) struct UpstreamTls {
    pub(crate) connector: tokio_rustls::TlsConnector,
    pub(crate) server_name: rustls::pki_types::ServerName<'static>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// A connection that can wait in a [`Pool`].
pub(crate) trait Reusable {
    /// Still usable: the upstream has not closed it. Never waits.
    fn is_open(&mut self) -> bool;
    /// Called as it goes back into the pool.
    fn returned(&mut self) {}
}

impl Reusable for SendRequest<RequestBody> {
    fn is_open(&mut self) -> bool {
        !self.is_closed()
    }
}

struct Idle<C> {
    conn: C,
    since: Instant,
}

/// A worker's idle keep-alive connections to one upstream (`C`: hyper's client
/// connection on the HTTP/2 path, a raw connection on the HTTP/1 path), and how
/// to reach it.
pub(crate) struct Pool<C> {
    /// `host:port` to connect to.
    pub(crate) authority: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) tls: Option<UpstreamTls>,
    /// The upstream URL and CA file this pool was made for.
    made_for: (http::Uri, Option<std::path::PathBuf>),
    idle: Mutex<Vec<Idle<C>>>,
}

impl<C: Reusable> Pool<C> {
    /// An empty pool for `upstream`.
    pub(crate) fn new(upstream: &UpstreamConfig) -> Pool<C> {
        Pool {
            authority: upstream.connect_to.clone(),
            connect_timeout: upstream.connect_timeout,
            tls: upstream.tls.clone(),
            made_for: (upstream.uri.clone(), upstream.ca_file.clone()),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Whether this pool still matches the configured upstream.
    pub(crate) fn serves(&self, upstream: &UpstreamConfig) -> bool {
        self.made_for.0 == upstream.uri && self.made_for.1 == upstream.ca_file
    }

    /// An idle connection that still looks open, most recently used first.
    pub(crate) fn checkout(&self) -> Option<C> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(mut entry) = idle.pop() {
            if entry.since.elapsed() < IDLE_TIMEOUT && entry.conn.is_open() {
                return Some(entry.conn);
            }
        }
        None
    }

    /// Gives back a connection whose last response was read to its end.
    pub(crate) fn checkin(&self, mut conn: C) {
        if !conn.is_open() {
            return;
        }
        conn.returned();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // The oldest sit at the front: drop the ones past their time.
        if idle
            .first()
            .is_some_and(|e| e.since.elapsed() >= IDLE_TIMEOUT)
        {
            idle.retain(|e| e.since.elapsed() < IDLE_TIMEOUT);
        }
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }
}

/// The HTTP/2 path's pool: hyper's HTTP/1 client connections.
pub(crate) type HyperPool = Pool<SendRequest<RequestBody>>;

impl HyperPool {
    async fn connect(&self) -> Result<SendRequest<RequestBody>, UpstreamFailure> {
        let io =
            crate::h1::client::connect(&self.authority, self.connect_timeout, self.tls.as_ref())
                .await?;
        handshake(io).await
    }

    /// Sends `req` on a pooled connection (or a new one). A request that a stale
    /// keep-alive connection refused before any byte was sent is retried once on a
    /// fresh connection.
    pub(crate) async fn send(
        self: &Arc<Self>,
        req: Request<RequestBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        let mut req = req;
        let mut fresh = false;
        loop {
            let mut sender = match self.checkout() {
                Some(s) => s,
                None => {
                    fresh = true;
                    self.connect().await.map_err(SendError::Upstream)?
                }
            };
            if sender.ready().await.is_err() {
                if fresh {
                    return Err(SendError::Upstream(UpstreamFailure::Reset));
                }
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    // Both framings at once is how responses get smuggled: refuse
                    // it, and never reuse that connection.
                    let h = resp.headers();
                    if h.contains_key(http::header::TRANSFER_ENCODING)
                        && h.contains_key(http::header::CONTENT_LENGTH)
                    {
                        tracing::warn!(
                            "upstream response with both Content-Length and Transfer-Encoding"
                        );
                        return Err(SendError::Upstream(UpstreamFailure::Protocol));
                    }
                    let (parts, body) = resp.into_parts();
                    let body = PooledBody::new(body, sender, self.clone(), parts.status);
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !fresh => req = unsent,
                    _ => return Err(classify(e.error())),
                },
            }
        }
    }
}

/// Starts HTTP/1.1 on a connected stream; its connection task runs on this worker.
async fn handshake<IO>(io: IO) -> Result<SendRequest<RequestBody>, UpstreamFailure>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|_| UpstreamFailure::Reset)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// Sorts a hyper client error by whose fault it is.
fn classify(err: &hyper::Error) -> SendError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if e.is::<BodyTooLarge>() {
            return SendError::BodyTooLarge;
        }
        if e.is::<ClientBodyError>() {
            return SendError::ClientBody;
        }
        if e.is::<BodyStalled>() {
            return SendError::BodyStalled;
        }
        source = e.source();
    }
    if err.is_parse() || err.is_parse_status() {
        SendError::Upstream(UpstreamFailure::Protocol)
    } else {
        SendError::Upstream(UpstreamFailure::Reset)
    }
}

/// The upstream's response body, streamed; gives its connection back to the pool
/// once read to the end.
pub(crate) struct PooledBody {
    inner: Incoming,
    ret: Option<(SendRequest<RequestBody>, Arc<HyperPool>)>,
}

impl PooledBody {
    fn new(
        inner: Incoming,
        sender: SendRequest<RequestBody>,
        pool: Arc<HyperPool>,
        status: http::StatusCode,
    ) -> PooledBody {
        let mut body = PooledBody {
            inner,
            // An upgraded connection is the tunnel's now.
            ret: (status != http::StatusCode::SWITCHING_PROTOCOLS).then_some((sender, pool)),
        };
        if body.inner.is_end_stream() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some((sender, pool)) = self.ret.take() {
            pool.checkin(sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            Poll::Ready(Some(Err(_))) => self.ret = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
