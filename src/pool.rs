//! A worker's pool of keep-alive connections to the upstream.
//!
//! Each worker thread owns one pool: checkout is a `Vec::pop`, no hashing and no
//! lock shared between cores. A connection goes back to the pool when the response
//! body has been read to its end (HTTP/1.1 cannot reuse it before); a response
//! dropped half-read closes its connection instead.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::tls::UpstreamTls;

/// Idle connections older than this are closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per worker.
const MAX_IDLE: usize = 1024;

/// A connection that can wait in a [`Pool`].
pub(crate) trait Reusable {
    /// Still usable: the upstream has not closed it. Never waits.
    fn is_open(&mut self) -> bool;
    /// Called as it goes back into the pool.
    fn returned(&mut self) {}
}

struct Idle<C> {
    conn: C,
    since: Instant,
}

/// Where a pool's connections go, and how they are made.
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    /// `host:port` to connect to.
    pub(crate) authority: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) tls: Option<UpstreamTls>,
    /// What names this endpoint in the configuration (its URL and CA file): a
    /// pool serves a reloaded configuration while that stays the same.
    pub(crate) identity: String,
}

/// A worker's idle keep-alive connections to one upstream, and how to reach it.
pub(crate) struct Pool<C> {
    pub(crate) endpoint: Endpoint,
    idle: Mutex<Vec<Idle<C>>>,
}

impl<C: Reusable> Pool<C> {
    /// An empty pool for `endpoint`.
    pub(crate) fn new(endpoint: Endpoint) -> Pool<C> {
        Pool {
            endpoint,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Whether this pool is the one for the endpoint named `identity`.
    pub(crate) fn serves(&self, identity: &str) -> bool {
        self.endpoint.identity == identity
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
