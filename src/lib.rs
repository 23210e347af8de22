//! sessiongate: a reverse proxy that gives an unchanged web application secure,
//! server-side sessions.
//!
//! - [`config`]: YAML → validated [`config::Config`]; errors name file, line, key.
//! - [`cookie`]: signing keys, `<id>.<tag>` sign/verify, `Set-Cookie` building.
//! - [`session`]: session IDs, data and its form encoding, the store trait.
//! - [`session::memory`]: the embedded store: timeouts, sweep, capped eviction.
//! - [`pool`]: each worker's keep-alive connections to the upstream.
//! - [`upstream`]: the request body limit, hop-by-hop and `X-Forwarded-*` rules.
//! - [`proxy`]: the request path, read top to bottom.
//! - [`server`]: listeners, connection limits, graceful shutdown.
//! - [`error`]: what the proxy answers itself, mapped in one place.
//! - [`logging`]: pretty or JSON logs and the access log.
#![forbid(unsafe_code)]

pub mod config;
pub mod cookie;
pub mod error;
pub mod logging;
pub mod pool;
pub mod proxy;
pub mod server;
pub mod session;
pub mod upstream;
