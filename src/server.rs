//! Listeners and connections: worker threads (`workers`; by default one per core
//! the process may use), each with its own
//! single-threaded runtime, its own `SO_REUSEPORT` sockets on the listening
//! addresses and its own upstream connection pool, so a request never crosses
//! cores. Serves HTTP/1.1, h2c (prior knowledge) and, on the TLS listener, HTTP/2 by
//! ALPN, with upgrades; caps connections; reloads on demand; shuts down gracefully.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch, Semaphore};

use crate::config::{Config, ConfigError, LimitsConfig};
use crate::proxy::{ConnInfo, Settings, State, Worker};
use crate::session::StoreError;
use crate::shutdown::stopped;
use crate::store::{self, StoreTasks};
use crate::tls::{ServerCert, TlsError};

/// A TLS handshake must finish within this, or the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}{}", in_use_hint(source))]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("no listener configured (`listen` or `tls.listen`)")]
    NoListener,
    #[error("cannot start a worker thread")]
    Thread(#[source] std::io::Error),
    #[error("cannot open the session store")]
    Store(#[source] StoreError),
    #[error("cannot load the TLS certificate")]
    Tls(#[source] TlsError),
}

/// Says who may be holding an address that is in use.
fn in_use_hint(source: &std::io::Error) -> &'static str {
    if source.kind() == std::io::ErrorKind::AddrInUse {
        " (another process listens there: another sessiongate still running, or another server)"
    } else {
        ""
    }
}

/// What a listening socket serves.
#[derive(Clone)]
enum Role {
    /// Plain HTTP, proxied.
    Plain,
    /// Plain HTTP answering `308` to the HTTPS port.
    Redirect { https_port: u16 },
    /// HTTPS.
    Tls(Arc<ServerCert>),
}

/// One address, bound once per worker.
struct Bound {
    role: Role,
    addr: SocketAddr,
    sockets: Vec<std::net::TcpListener>,
}

/// A bound proxy, ready to run.
pub struct Server {
    bound: Vec<Bound>,
    admin: Option<(SocketAddr, std::net::TcpListener)>,
    state: Arc<State>,
    cert: Option<Arc<ServerCert>>,
    store_tasks: StoreTasks,
    /// Delivery of lifecycle events, when `events` names a destination.
    events: crate::events::Delivery,
}

/// Binds `addr` with `SO_REUSEPORT`, so each worker accepts on its own socket and the
/// kernel spreads connections across them.
fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Claims `addr` for this process: listens on it once without `SO_REUSEPORT`, which
/// fails while any other socket listens there, another sessiongate's `SO_REUSEPORT`
/// sockets included. Returns the address claimed.
///
/// Without this, a second instance (an old one left running during an upgrade) would
/// join the first one's port group and the kernel would split visitors between two
/// memory stores.
fn claim(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // Lets the claim succeed over connections in TIME_WAIT, as the real sockets do.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1)?;
    let claimed = socket.local_addr()?.as_socket();
    claimed.ok_or_else(|| std::io::Error::other("not an IP address"))
}

/// Binds one socket per worker on `wanted` (port 0 picks one free port for all), once
/// no other process listens there.
fn bind_all(
    wanted: SocketAddr,
    workers: usize,
) -> Result<(SocketAddr, Vec<std::net::TcpListener>), ServerError> {
    let err = |addr| move |source| ServerError::Bind { addr, source };
    let (addr, first) = if wanted.port() == 0 {
        // The kernel picks a port no socket holds and never hands it to another
        // port-0 bind while this one holds it; claiming it first would open a window
        // in which another process could take the port between the claim and the bind.
        let first = bind_reuseport(wanted).map_err(err(wanted))?;
        let addr = first.local_addr().map_err(err(wanted))?;
        (addr, first)
    } else {
        let addr = claim(wanted).map_err(err(wanted))?;
        (addr, bind_reuseport(addr).map_err(err(addr))?)
    };
    let mut sockets = vec![first];
    for _ in 1..workers {
        sockets.push(bind_reuseport(addr).map_err(err(addr))?);
    }
    Ok((addr, sockets))
}

impl Server {
    /// Loads the certificate, opens the store and binds the listeners.
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        let workers = config.workers();
        let mut bound = Vec::new();
        let mut cert = None;
        let mut https_port = None;
        if let Some(tls) = &config.tls {
            let server_cert = Arc::new(ServerCert::new(
                crate::tls::server_config(&tls.cert, &tls.key).map_err(ServerError::Tls)?,
            ));
            let (addr, sockets) = bind_all(tls.listen, workers)?;
            https_port = Some(addr.port());
            cert = Some(server_cert.clone());
            bound.push(Bound {
                role: Role::Tls(server_cert),
                addr,
                sockets,
            });
        }
        if let Some(listen) = config.listen {
            let role = match (
                https_port,
                config.tls.as_ref().is_some_and(|t| t.redirect_http),
            ) {
                (Some(https_port), true) => Role::Redirect { https_port },
                _ => Role::Plain,
            };
            let (addr, sockets) = bind_all(listen, workers)?;
            // The plain listener first: `local_addr` reports it.
            bound.insert(
                0,
                Bound {
                    role,
                    addr,
                    sockets,
                },
            );
        }
        if bound.is_empty() {
            return Err(ServerError::NoListener);
        }
        let admin = match config.admin.listen {
            Some(wanted) => {
                let socket = std::net::TcpListener::bind(wanted)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .map_err(|source| ServerError::Bind {
                        addr: wanted,
                        source,
                    })?;
                let addr = socket.local_addr().map_err(|source| ServerError::Bind {
                    addr: wanted,
                    source,
                })?;
                Some((addr, socket))
            }
            None => None,
        };
        let queues = crate::events::queues(&config.events);
        let (store, store_tasks) = store::open(&config, queues.sink.clone(), workers)
            .await
            .map_err(ServerError::Store)?;
        let events = crate::events::spawn(&config.events, queues, &store);
        let state = Arc::new(State::new(config, store));
        Ok(Server {
            bound,
            admin,
            state,
            cert,
            store_tasks,
            events,
        })
    }

    /// The plain listener's address (the TLS one when there is no plain listener).
    pub fn local_addr(&self) -> SocketAddr {
        self.bound[0].addr
    }

    /// The HTTPS listener's address, when `tls` is configured.
    pub fn tls_local_addr(&self) -> Option<SocketAddr> {
        self.bound
            .iter()
            .find(|b| matches!(b.role, Role::Tls(_)))
            .map(|b| b.addr)
    }

    /// The admin listener's address, when `admin.listen` is set.
    pub fn admin_local_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(a, _)| *a)
    }

    /// The shared state (store, settings), for embedding and tests.
    pub fn state(&self) -> Arc<State> {
        self.state.clone()
    }

    /// A handle that reloads the configuration file and the certificate.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            state: self.state.clone(),
            cert: self.cert.clone(),
        }
    }

    /// Serves until `shutdown` completes, then stops accepting and waits for
    /// in-flight requests (at most `limits.shutdown_timeout`).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let limits = self.state.settings.load().config.limits.clone();
        let permits = Arc::new(Semaphore::new(limits.max_connections));
        let (stop_tx, stop_rx) = watch::channel(false);
        // Hand worker i its socket of every address.
        let workers = self.bound[0].sockets.len();
        let mut per_worker: Vec<Vec<(Role, std::net::TcpListener)>> =
            (0..workers).map(|_| Vec::new()).collect();
        let plural = if workers == 1 { "" } else { "s" };
        tracing::info!("{workers} worker thread{plural}");
        for b in self.bound {
            for (i, socket) in b.sockets.into_iter().enumerate() {
                per_worker[i].push((b.role.clone(), socket));
            }
            match &b.role {
                Role::Tls(_) => tracing::info!("listening on https://{}", b.addr),
                Role::Plain => tracing::info!("listening on http://{}", b.addr),
                Role::Redirect { .. } => {
                    tracing::info!("listening on http://{} (redirecting to https)", b.addr)
                }
            }
        }
        let mut finished = Vec::new();
        if let Some((addr, socket)) = self.admin {
            match TcpListener::from_std(socket) {
                Ok(listener) => {
                    tracing::info!("admin listening on http://{addr}");
                    tokio::spawn(crate::admin::serve(
                        listener,
                        self.state.clone(),
                        stop_rx.clone(),
                    ));
                }
                Err(e) => tracing::error!(error = %e, "cannot register the admin listener"),
            }
        }
        tokio::spawn(crate::health::run(self.state.clone(), stop_rx.clone()));
        for (i, sockets) in per_worker.into_iter().enumerate() {
            let (done_tx, done_rx) = oneshot::channel::<()>();
            let state = self.state.clone();
            let stop = stop_rx.clone();
            let permits = permits.clone();
            let limits = limits.clone();
            std::thread::Builder::new()
                .name(format!("sessiongate-worker-{i}"))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build();
                    match runtime {
                        Ok(rt) => rt.block_on(worker(sockets, state, stop, permits, limits)),
                        Err(e) => tracing::error!(error = %e, "cannot start a worker runtime"),
                    }
                    let _ = done_tx.send(());
                })
                .map_err(ServerError::Thread)?;
            finished.push(done_rx);
        }
        shutdown.await;
        tracing::info!("shutting down: waiting for in-flight requests");
        let _ = stop_tx.send(true);
        for done in finished {
            let _ = done.await;
        }
        // Events first: the final snapshot tells nothing, and what the last
        // requests did is delivered before the process ends.
        self.events.shutdown().await;
        self.store_tasks.shutdown().await;
        Ok(())
    }
}

/// Reloads the configuration (and the certificate) in place.
#[derive(Clone)]
pub struct Reloader {
    state: Arc<State>,
    cert: Option<Arc<ServerCert>>,
}

/// Why a reload was refused; the running configuration stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("invalid configuration")]
    Config(#[from] ConfigError),
    #[error("cannot load the new certificate")]
    Tls(#[from] TlsError),
}

impl Reloader {
    /// Parses and validates the file whole, loads the certificate it names, then
    /// swaps both in. On any error nothing changes. Settings that need a restart
    /// (listeners, the store, see [`Config::restart_needed`]) are reported and
    /// otherwise ignored.
    pub fn reload(&self, path: &Path, dev: bool) -> Result<Arc<Settings>, ReloadError> {
        let outcome = self.try_reload(path, dev);
        self.state.metrics.reload(outcome.is_ok());
        outcome
    }

    fn try_reload(&self, path: &Path, dev: bool) -> Result<Arc<Settings>, ReloadError> {
        let current = self.state.settings.load_full();
        let mut next = Config::load(path, dev)?;
        if next.dev_secret && current.config.dev_secret {
            // An ephemeral secret must survive a reload, or everybody is logged out.
            next.session.keys = current.config.session.keys.clone();
        }
        for (key, what) in current.config.restart_needed(&next) {
            tracing::warn!(
                "reload: a change of {key} ({what}) needs a restart; keeping the old one"
            );
        }
        if let (Some(cert), Some(tls)) = (&self.cert, &next.tls) {
            cert.reload(&tls.cert, &tls.key)?;
        }
        let settings = Arc::new(Settings::new(next, &self.state.metrics, Some(&current)));
        self.state.settings.store(settings.clone());
        Ok(settings)
    }
}

/// One worker: an accept loop per address, until `stop` turns true; then drains.
async fn worker(
    sockets: Vec<(Role, std::net::TcpListener)>,
    state: Arc<State>,
    stop: watch::Receiver<bool>,
    permits: Arc<Semaphore>,
    limits: LimitsConfig,
) {
    let worker = Arc::new(Worker::new(state));
    let builder = Arc::new(http_builder(&limits));
    let graceful = Arc::new(GracefulShutdown::new());
    let mut loops = tokio::task::JoinSet::new();
    for (role, socket) in sockets {
        let listener = match TcpListener::from_std(socket) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot register a listener");
                continue;
            }
        };
        loops.spawn(accept_loop(
            listener,
            role,
            worker.clone(),
            builder.clone(),
            graceful.clone(),
            stop.clone(),
            permits.clone(),
        ));
    }
    while loops.join_next().await.is_some() {}
    // The accept loops are gone, and with them every other handle on `graceful`.
    let Ok(graceful) = Arc::try_unwrap(graceful) else {
        return;
    };
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(limits.shutdown_timeout) => {
            tracing::warn!("shutdown timeout reached; closing remaining connections");
        }
    }
}

fn http_builder(limits: &LimitsConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        .max_concurrent_streams(256)
        .max_pending_accept_reset_streams(64)
        .max_local_error_reset_streams(256);
    builder
}

async fn accept_loop(
    listener: TcpListener,
    role: Role,
    worker: Arc<Worker>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
    permits: Arc<Semaphore>,
) {
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stopped(&mut stop) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Usually out of file handles: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let _ = stream.set_nodelay(true);
        let worker = worker.clone();
        let builder = builder.clone();
        let graceful = graceful.watcher();
        let role = role.clone();
        let held = Held::new(&worker.state.metrics.open_connections, permit);
        let mut stop = stop.clone();
        tokio::spawn(async move {
            match role {
                Role::Plain => {
                    let info = ConnInfo::new(peer, false);
                    serve_h1(stream, info, worker, &builder, graceful, &mut stop, held).await
                }
                Role::Redirect { https_port } => {
                    redirect(stream, https_port, &builder, graceful).await
                }
                Role::Tls(cert) => {
                    // The handshake runs here, in the connection's task, bounded in time.
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, cert.acceptor().accept(stream))
                        .await
                    {
                        Ok(Ok(tls)) => {
                            let info = ConnInfo::new(peer, true);
                            if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                                serve(tls, info, worker, &builder, graceful, held).await
                            } else {
                                serve_h1(tls, info, worker, &builder, graceful, &mut stop, held)
                                    .await
                            }
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// What an accepted connection holds: its place in `open_connections` and its
/// `limits.max_connections` permit. An HTTP/2 connection's streams run in tasks of
/// their own that can outlive it by a poll or more, so each holds a clone, and the
/// place and permit are given back when the last of them ends.
struct Held {
    open: prometheus_client::metrics::gauge::Gauge,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Held {
    fn new(
        open: &prometheus_client::metrics::gauge::Gauge,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Arc<Held> {
        open.inc();
        Arc::new(Held {
            open: open.clone(),
            _permit: permit,
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// An HTTP/2 stream's response body, holding its connection's [`Held`] until the
/// stream's task drops it.
struct Kept<B> {
    body: B,
    _held: Arc<Held>,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Kept<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Serves a connection on the HTTP/1 path; a plain-text client that opens with the
/// HTTP/2 preface is handed to hyper with the bytes read so far.
async fn serve_h1<IO>(
    io: IO,
    info: ConnInfo,
    worker: Arc<Worker>,
    builder: &auto::Builder<TokioExecutor>,
    graceful: Watcher,
    stop: &mut watch::Receiver<bool>,
    held: Arc<Held>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Over TLS, ALPN has already chosen the protocol.
    let detect_h2 = !info.tls;
    match crate::downstream::h1::serve(io, &info, &worker, stop, detect_h2).await {
        crate::downstream::h1::Served::Closed => drop(graceful),
        crate::downstream::h1::Served::H2 { io, read } => {
            serve(
                Prefixed::new(read, io),
                info,
                worker,
                builder,
                graceful,
                held,
            )
            .await
        }
    }
}

/// A stream with bytes already read from it put back in front.
struct Prefixed<IO> {
    prefix: bytes::Bytes,
    io: IO,
}

impl<IO> Prefixed<IO> {
    fn new(prefix: bytes::Bytes, io: IO) -> Prefixed<IO> {
        Prefixed { prefix, io }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let head = self.prefix.split_to(n);
            buf.put_slice(&head);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Prefixed<IO> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

async fn serve<IO>(
    io: IO,
    info: ConnInfo,
    worker: Arc<Worker>,
    builder: &auto::Builder<TokioExecutor>,
    graceful: Watcher,
    held: Arc<Held>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let info = Arc::new(info);
    let first_request_deadline = worker
        .state
        .settings
        .load()
        .config
        .limits
        .header_read_timeout;
    let seen = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen_by_service = seen.clone();
    let service = service_fn(move |req| {
        let worker = worker.clone();
        let info = info.clone();
        seen_by_service.store(true, std::sync::atomic::Ordering::Relaxed);
        // Boxed: hyper moves a stream's future into its task and the task moves it
        // between stages; a pointer is cheaper to move than the whole request path.
        let handled = Box::pin(crate::downstream::h2::handle(worker, info, req));
        let held = held.clone();
        async move {
            let response = handled.await.map(|body| Kept { body, _held: held });
            Ok::<_, Infallible>(response)
        }
    });
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .into_owned();
    let mut watched = std::pin::pin!(graceful.watch(conn));
    // hyper's header timeout starts only once it knows HTTP/1 from HTTP/2: a client
    // that sends nothing (or half a preface) would hold its slot forever. It gets
    // `header_read_timeout` to send a first request, then the connection is dropped.
    tokio::select! {
        ended = &mut watched => {
            if let Err(e) = ended {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            return;
        }
        _ = tokio::time::sleep(first_request_deadline) => {}
    }
    if !seen.load(std::sync::atomic::Ordering::Relaxed) {
        tracing::debug!("no request within header_read_timeout: connection closed");
        return;
    }
    if let Err(e) = watched.await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

async fn redirect<IO>(
    io: IO,
    https_port: u16,
    builder: &auto::Builder<TokioExecutor>,
    graceful: Watcher,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service =
        service_fn(
            move |req| async move { Ok::<_, Infallible>(redirect_to_https(&req, https_port)) },
        );
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .into_owned();
    if let Err(e) = graceful.watch(conn).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// The plain listener's answer under `tls.redirect_http`: `308` to the same host,
/// path and query on the HTTPS port.
fn redirect_to_https<B>(req: &http::Request<B>, https_port: u16) -> http::Response<Full<Bytes>> {
    let host = req
        .uri()
        .host()
        .map(str::to_owned)
        .or_else(|| {
            let h = req.headers().get(http::header::HOST)?.as_bytes();
            let host = crate::headers::host_without_port(h);
            Some(std::str::from_utf8(host).ok()?.to_owned())
        })
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'/' && b != b'@')
        });
    let Some(host) = host else {
        return crate::error::ProxyError::BadRequest("no host to redirect to").into_response();
    };
    let pq = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let location = if https_port == 443 {
        format!("https://{host}{pq}")
    } else {
        format!("https://{host}:{https_port}{pq}")
    };
    let mut resp = http::Response::new(Full::new(Bytes::from_static(
        b"308 Permanent Redirect: use HTTPS\n",
    )));
    *resp.status_mut() = http::StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = http::HeaderValue::from_str(&location) {
        resp.headers_mut().insert(http::header::LOCATION, v);
    }
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
