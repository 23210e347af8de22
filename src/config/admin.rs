//! `admin`: the admin listener and the token that guards its session API.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::source::{ConfigError, Source};
use super::values::{Addr, Secret};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: Option<SocketAddr>,
    pub(crate) token: Option<String>,
}

impl AdminConfig {
    /// This section without the keys a reload applies (`token`): what is left is
    /// set up when the listener is bound. A key added to the section counts here
    /// until it is listed as reloadable.
    pub(super) fn fixed_at_start(&self) -> AdminConfig {
        AdminConfig {
            token: None,
            ..self.clone()
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAdmin {
    listen: Option<Addr>,
    token: Option<Secret>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            listen: Some(Addr(SocketAddr::from(([127, 0, 0, 1], 9091)))),
            token: None,
        }
    }
}

impl RawAdmin {
    /// A session API reachable from the network needs a token.
    pub(super) fn validate(&self, src: &Source<'_>) -> Result<AdminConfig, ConfigError> {
        if let Some(Addr(addr)) = self.listen {
            if !addr.ip().is_loopback() && self.token.is_none() {
                return Err(src.error(
                    "admin.listen",
                    format!(
                        "{addr} is not a loopback address and admin.token is not set: anybody who \
                         reaches it could read and destroy sessions; set admin.token or listen on 127.0.0.1",
                    ),
                ));
            }
        }
        Ok(AdminConfig {
            listen: self.listen.map(|a| a.0),
            token: self.token.as_ref().map(|t| t.0.clone()),
        })
    }
}
