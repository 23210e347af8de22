//! `limits`: connections, sizes and the timeouts that bound a client.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::values::{AtLeast, Dur, Timeout};

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LimitsConfig {
    pub(crate) max_connections: usize,
    pub(crate) header_read_timeout: Duration,
    pub(crate) max_header_bytes: usize,
    pub(crate) max_body_bytes: Option<u64>,
    pub(crate) shutdown_timeout: Duration,
    /// The longest pause between two reads of a request body (then `408`).
    pub(crate) client_body_timeout: Duration,
    /// The longest a write to the client may make no progress (then the
    /// connection is closed).
    pub(crate) send_timeout: Duration,
    /// An upgraded connection with no bytes either way this long is closed.
    pub(crate) tunnel_idle_timeout: Duration,
}

impl LimitsConfig {
    /// This section without the keys a reload applies (each request, or each
    /// new connection, reads them): what is left is set up once, when the
    /// listeners start (the connection cap, the shutdown grace, and the header
    /// limits the HTTP/2 server is built with). A key added to the section
    /// counts here until it is listed as reloadable.
    pub(super) fn fixed_at_start(&self) -> LimitsConfig {
        LimitsConfig {
            max_body_bytes: None,
            client_body_timeout: Duration::ZERO,
            send_timeout: Duration::ZERO,
            tunnel_idle_timeout: Duration::ZERO,
            ..self.clone()
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLimits {
    max_connections: AtLeast<1>,
    header_read_timeout: Dur,
    max_header_bytes: AtLeast<8192>,
    max_body_bytes: Option<u64>,
    shutdown_timeout: Dur,
    client_body_timeout: Timeout,
    send_timeout: Timeout,
    tunnel_idle_timeout: Timeout,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_connections: AtLeast(10_000),
            header_read_timeout: Dur(Duration::from_secs(10)),
            max_header_bytes: AtLeast(65_536),
            max_body_bytes: None,
            shutdown_timeout: Dur(Duration::from_secs(30)),
            client_body_timeout: Dur(Duration::from_secs(60)),
            send_timeout: Dur(Duration::from_secs(60)),
            tunnel_idle_timeout: Dur(Duration::from_secs(3600)),
        }
    }
}

impl RawLimits {
    /// Every check of this section is in its values' types.
    pub(super) fn validate(&self) -> LimitsConfig {
        LimitsConfig {
            max_connections: self.max_connections.0,
            header_read_timeout: self.header_read_timeout.0,
            max_header_bytes: self.max_header_bytes.0,
            max_body_bytes: self.max_body_bytes,
            shutdown_timeout: self.shutdown_timeout.0,
            client_body_timeout: self.client_body_timeout.0,
            send_timeout: self.send_timeout.0,
            tunnel_idle_timeout: self.tunnel_idle_timeout.0,
        }
    }
}
