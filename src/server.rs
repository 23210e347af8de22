//! Listeners and connections: one worker thread per core, each with its own
//! single-threaded runtime, its own `SO_REUSEPORT` listener on the same address and
//! its own upstream connection pool, so a request never crosses cores. Serves
//! HTTP/1.1 and h2c (prior knowledge) with upgrades, caps connections, and shuts down
//! gracefully.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch, Semaphore};

use crate::config::{Config, LimitsConfig};
use crate::proxy::{self, ConnInfo, State, Worker};
use crate::session::memory::{MemorySettings, SweepGuard};
use crate::session::MemoryStore;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("no plain listener configured (`listen`)")]
    NoListener,
    #[error("cannot start a worker thread")]
    Thread(#[source] std::io::Error),
}

/// A bound proxy, ready to run.
pub struct Server {
    /// One listener per worker, all on the same address.
    listeners: Vec<std::net::TcpListener>,
    addr: SocketAddr,
    state: Arc<State>,
    _sweeper: SweepGuard,
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

/// How many workers to run: one per core the process may use.
fn worker_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Server {
    /// Builds the store and binds `listen` (port 0 picks a free port).
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        let wanted = config.listen.ok_or(ServerError::NoListener)?;
        let bind_err = |addr| move |source| ServerError::Bind { addr, source };
        let first = bind_reuseport(wanted).map_err(bind_err(wanted))?;
        let addr = first.local_addr().map_err(bind_err(wanted))?;
        let mut listeners = vec![first];
        for _ in 1..worker_count() {
            listeners.push(bind_reuseport(addr).map_err(bind_err(addr))?);
        }
        let s = &config.session;
        let store = MemoryStore::new(MemorySettings {
            idle_timeout: s.idle_timeout,
            absolute_timeout: s.absolute_timeout,
            max_sessions: s.max_sessions,
            max_data_bytes: s.max_data_bytes,
            regenerate_grace: s.regenerate_grace,
        });
        let sweeper = store.spawn_sweeper(Duration::from_secs(1));
        let state = Arc::new(State::new(config, store));
        Ok(Server {
            listeners,
            addr,
            state,
            _sweeper: sweeper,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shared state (store, settings), for embedding and tests.
    pub fn state(&self) -> Arc<State> {
        self.state.clone()
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
        let mut finished = Vec::new();
        for (i, listener) in self.listeners.into_iter().enumerate() {
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
                        Ok(rt) => rt.block_on(serve(listener, state, stop, permits, limits)),
                        Err(e) => tracing::error!(error = %e, "cannot start a worker runtime"),
                    }
                    let _ = done_tx.send(());
                })
                .map_err(ServerError::Thread)?;
            finished.push(done_rx);
        }
        tracing::info!("listening on http://{}", self.addr);
        shutdown.await;
        tracing::info!("shutting down: waiting for in-flight requests");
        let _ = stop_tx.send(true);
        for done in finished {
            let _ = done.await;
        }
        Ok(())
    }
}

/// One worker's accept loop, until `stop` turns true; then drains its connections.
async fn serve(
    listener: std::net::TcpListener,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
    permits: Arc<Semaphore>,
    limits: LimitsConfig,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot register the listener");
            return;
        }
    };
    let worker = Arc::new(Worker::new(state));
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
    let graceful = GracefulShutdown::new();
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stop.wait_for(|s| *s) => break,
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
            _ = stop.wait_for(|s| *s) => break,
        };
        let _ = stream.set_nodelay(true);
        let conn_info = Arc::new(ConnInfo::new(peer, false));
        let worker = worker.clone();
        let service = service_fn(move |req| {
            let worker = worker.clone();
            let conn_info = conn_info.clone();
            async move { Ok::<_, Infallible>(proxy::handle(worker, conn_info, req).await) }
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(limits.shutdown_timeout) => {
            tracing::warn!("shutdown timeout reached; closing remaining connections");
        }
    }
}
