//! `tls`: the HTTPS listener and its certificate.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::source::{ConfigError, Source};
use super::values::{Addr, Text};
use crate::chain::Chain;
use crate::tls::TlsError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TlsConfig {
    pub(crate) listen: SocketAddr,
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) redirect_http: bool,
    pub(crate) hsts: Option<String>,
}

impl TlsConfig {
    /// This section without the keys a reload applies (the certificate pair is
    /// reloaded, `hsts` goes with the settings): what is left is set up when the
    /// listeners are bound. A key added to the section counts here until it is
    /// listed as reloadable.
    pub(super) fn fixed_at_start(&self) -> TlsConfig {
        TlsConfig {
            cert: PathBuf::new(),
            key: PathBuf::new(),
            hsts: None,
            ..self.clone()
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    listen: Addr,
    cert: Text,
    key: Text,
    #[serde(default)]
    redirect_http: bool,
    #[serde(default)]
    hsts: Option<Text>,
}

impl RawTls {
    /// Reads the pair the HTTPS listener will serve, so that `check` and a reload
    /// report a missing or broken file with its line.
    pub(super) fn validate(&self, src: &Source<'_>) -> Result<TlsConfig, ConfigError> {
        let (cert, key) = (src.path(&self.cert.0), src.path(&self.key.0));
        if let Err(e) = crate::tls::server_config(&cert, &key) {
            let field = match e {
                TlsError::Key { .. } => "tls.key",
                _ => "tls.cert",
            };
            return Err(src.error(field, Chain(&e).to_string()));
        }
        Ok(TlsConfig {
            listen: self.listen.0,
            cert,
            key,
            redirect_http: self.redirect_http,
            hsts: self.hsts.as_ref().map(|h| h.0.clone()),
        })
    }
}
