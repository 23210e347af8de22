//! sessiongate: a reverse proxy that gives an unchanged web application secure,
//! server-side sessions.
//!
//! - [`config`]: YAML → validated [`config::Config`]; errors name file, line, key.
//! - [`cookie`]: signing keys, `<id>.<tag>` sign/verify, `Set-Cookie` building.
//! - [`session`]: session IDs, data and its form encoding, the store trait.
//! - [`session::memory`]: the embedded store: timeouts, sweep, capped eviction.
//! - [`session::snapshot`]: the memory store's snapshot file: format, atomic save, load at start.
//! - [`session::redis`]: the Redis store (one server or a Cluster): Lua scripts, TTLs, SCAN-based revoke.
//! - [`h1`]: the HTTP/1 path: request and response heads as bytes, parsed strictly.
//! - [`pool`]: each worker's keep-alive connections to the upstream (HTTP/2 path).
//! - [`redirect`]: the upstream's own URLs in `Location` and its kin, moved to the client's origin.
//! - [`upstream`]: the request body limit, hop-by-hop and `X-Forwarded-*` rules.
//! - [`proxy`]: the request path, read top to bottom.
//! - [`settings`]: what a request is served under: its connection and the settings from the config.
//! - [`shutdown`]: the stop signal listeners and connections wait on.
//! - [`server`]: listeners (plain, TLS), workers, reload, graceful shutdown.
//! - [`tls`]: certificates for the HTTPS listener and `https://` upstreams.
//! - [`admin`]: health, readiness (and, later, metrics and the session API).
//! - [`devcert`]: `gen-cert` and `healthcheck`, small operator tools.
//! - [`error`]: what the proxy answers itself, mapped in one place.
//! - [`metrics`]: Prometheus metrics, updated without locks.
//! - [`logging`]: pretty or JSON logs and the access log.
#![forbid(unsafe_code)]

pub mod admin;
pub mod chain;
pub mod config;
pub mod conn;
pub mod cookie;
pub mod devcert;
pub mod error;
pub mod h1;
pub mod headers;
pub mod logging;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod redirect;
pub mod server;
pub mod session;
pub mod settings;
pub mod shutdown;
pub mod store;
pub mod tls;
pub mod upstream;
