//! Listeners and connections: accept with a connection cap, serve HTTP/1.1 and h2c
//! (prior knowledge) with upgrades, and shut down gracefully.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::proxy::{self, ConnInfo, State};
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
}

/// A bound proxy, ready to run.
pub struct Server {
    listener: TcpListener,
    state: Arc<State>,
    _sweeper: SweepGuard,
}

impl Server {
    /// Builds the store and the upstream client and binds `listen`.
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        let addr = config.listen.ok_or(ServerError::NoListener)?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
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
            listener,
            state,
            _sweeper: sweeper,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
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
        let settings = self.state.settings.load_full();
        let limits = settings.config.limits.clone();
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
        let builder = Arc::new(builder);
        let graceful = GracefulShutdown::new();
        let permits = Arc::new(Semaphore::new(limits.max_connections));
        tracing::info!("listening on http://{}", self.local_addr());
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = &mut shutdown => break,
            };
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Usually out of file handles: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let state = self.state.clone();
            let conn_info = ConnInfo { peer, tls: false };
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(proxy::handle(state, conn_info, req).await) }
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
        drop(self.listener);
        tracing::info!("shutting down: waiting for in-flight requests");
        tokio::select! {
            _ = graceful.shutdown() => tracing::info!("all connections closed"),
            _ = tokio::time::sleep(limits.shutdown_timeout) => {
                tracing::warn!("shutdown timeout reached; closing remaining connections");
            }
        }
        Ok(())
    }
}
