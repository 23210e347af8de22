//! sessiongate: a reverse proxy that gives an unchanged web application secure,
//! server-side sessions.
//!
//! The modules stand in layers; each imports only from its own layer and those
//! below it (`.ci/layers` holds the table and checks every import;
//! `ARCHITECTURE.md` tells the same on one page):
//!
//! 1. Foundation, importing nothing of the crate:
//!    - [`chain`]: an error and its causes on one line, for logs and config errors.
//!    - `io`: writes bounded by how long they may make no progress.
//!    - `shutdown`: the stop signal listeners and connections wait on.
//!    - [`tls`]: certificates for the HTTPS listener and `https://` upstreams.
//!    - [`devcert`]: `gen-cert` and `healthcheck`, small operator tools.
//! 2. Domain: sessions, cookies and the rules for headers, knowing nothing of the
//!    configuration file or of connections:
//!    - [`session`]: session IDs, data and its form encoding, the session policy,
//!      the store trait and the counters each store keeps; [`session::memory`]
//!      (sweep, capped eviction) with its [`session::snapshot`] file, and
//!      `session::redis` (one server or a Cluster).
//!    - [`cookie`]: signing keys, `<id>.<tag>` sign/verify, `Set-Cookie` building.
//!    - [`headers`]: the header rules of the request path, over lines as bytes.
//!    - [`h1::codec`]: HTTP/1 request and response heads as bytes, parsed strictly.
//!    - `redirect`: the upstream's own URLs in `Location` and its kin, moved to the
//!      client's origin.
//!    - `upstream`: how a request to the upstream fails; trusted proxies.
//!    - [`conn`]: what a connection knows about its peer.
//!    - `error`: what the proxy answers itself, mapped in one place.
//!    - `route`: routes by host and path, the login gate and cross-site protection.
//!    - `metrics`: Prometheus metrics, updated without locks.
//! 3. The upstream client: [`h1::client`] (connections, and the reader of a
//!    response body) and `pool` (each worker's keep-alive connections).
//! 4. [`config`]: YAML → a validated [`config::Config`], one module per section;
//!    builds the values the layers below define. Errors name file, line and key.
//! 5. `settings` (what requests are served under, swapped whole on reload),
//!    `upstreams` (the groups' servers, their health and load, and how a group
//!    picks one) and `store` (opens the store `store.type` names).
//! 6. [`proxy`]: the request path, one driver for HTTP/1 and HTTP/2, read top to
//!    bottom; `health`: the active checks of the upstream servers.
//! 7. `downstream`: the adapters, an HTTP/1 connection and an HTTP/2 stream.
//! 8. [`server`] (listeners, workers, reload, graceful shutdown), `admin`
//!    (health, readiness, metrics and the session API), [`logging`].
//! 9. `main.rs`: the command line.
//!
//! Items are `pub(crate)` unless the binary, the tests, the benchmarks or the
//! fuzz targets use them.
#![forbid(unsafe_code)]

mod admin;
pub mod assertion;
pub mod chain;
pub mod config;
pub mod conn;
pub mod cookie;
pub mod devcert;
pub(crate) mod downstream;
mod error;
mod events;
pub mod h1;
pub mod headers;
mod health;
pub(crate) mod io;
pub mod logging;
mod metrics;
mod pool;
pub mod proxy;
mod redirect;
pub(crate) mod route;
pub mod server;
pub mod session;
mod settings;
mod shutdown;
mod store;
pub mod tls;
mod upstream;
mod upstreams;
