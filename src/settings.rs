//! What one request is served under: the connection it came on, and the settings
//! derived from the configuration (swapped whole on reload). Below both the header
//! rules and the request path, which each read them.

use std::net::SocketAddr;

use http::HeaderValue;

use crate::config::{Config, SessionConfig};
use crate::cookie::CookieJar;
use crate::redirect::UpstreamOrigin;
use crate::session::Policy;

/// What a connection knows about its peer, worked out once per connection.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The request arrived over TLS.
    pub tls: bool,
    /// The peer's IP as a header value, for `X-Forwarded-For`.
    pub(crate) peer_header: HeaderValue,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: bool) -> ConnInfo {
        let peer_header = HeaderValue::from_str(&peer.ip().to_string())
            .expect("an IP address is a valid header value");
        ConnInfo {
            peer,
            tls,
            peer_header,
        }
    }
}

/// Per-request settings derived from the configuration, swapped whole on reload.
pub struct Settings {
    pub config: Config,
    pub jar: CookieJar,
    /// The session rules every store call of the request is made under.
    pub policy: Policy,
    /// `Host` for the upstream when `preserve_host` is off.
    pub(crate) upstream_host: Option<HeaderValue>,
    /// `Strict-Transport-Security` for responses over TLS.
    hsts: Option<HeaderValue>,
    /// The upstream's origin, when `upstream.rewrite_redirects` is on.
    pub(crate) redirects: Option<UpstreamOrigin>,
}

impl Settings {
    /// `Strict-Transport-Security` for a response on `conn`, if any.
    pub(crate) fn hsts_for(&self, conn: &ConnInfo) -> Option<&HeaderValue> {
        self.hsts.as_ref().filter(|_| conn.tls)
    }

    pub fn new(config: Config) -> Settings {
        let jar = config.session.cookie.jar();
        let policy = Policy::from(&config.session);
        let upstream_host = config
            .upstream
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
        let hsts = config
            .tls
            .as_ref()
            .and_then(|t| t.hsts.as_deref())
            .and_then(|h| HeaderValue::from_str(h).ok());
        let redirects = config
            .upstream
            .rewrite_redirects
            .then(|| UpstreamOrigin::new(&config.upstream.uri, &config.upstream.base_path))
            .flatten();
        Settings {
            config,
            jar,
            policy,
            upstream_host,
            hsts,
            redirects,
        }
    }
}

impl From<&SessionConfig> for Policy {
    fn from(s: &SessionConfig) -> Policy {
        Policy {
            idle_timeout: s.idle_timeout,
            absolute_timeout: s.absolute_timeout,
            max_sessions: s.max_sessions,
            max_data_bytes: s.max_data_bytes,
            regenerate_grace: s.regenerate_grace,
        }
    }
}
