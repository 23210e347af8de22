//! What requests are served under: the settings derived from the configuration,
//! swapped whole on reload. Read by the request path; the header rules get the
//! few values they need as [`Rules`].

use http::HeaderValue;

use crate::config::{Config, SessionConfig};
use crate::conn::ConnInfo;
use crate::cookie::CookieJar;
use crate::headers::Rules;
use crate::pool::Endpoint;
use crate::redirect::UpstreamOrigin;
use crate::route::Routes;
use crate::session::Policy;

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
    /// Where requests go and how connections there are made.
    pub(crate) endpoint: Endpoint,
    /// `routes`, indexed for matching; empty when the file has none.
    pub(crate) routes: Routes,
}

impl Settings {
    /// What the header rules need, borrowed from these settings.
    pub fn rules(&self) -> Rules<'_> {
        let c = &self.config;
        Rules {
            names: &c.session.headers,
            keys: &c.session.keys,
            jar: &self.jar,
            exclude_paths: &c.session.exclude_paths,
            max_body_bytes: c.limits.max_body_bytes,
            preserve_host: c.upstream.preserve_host,
            upstream_host: self.upstream_host.as_ref(),
        }
    }

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
        let upstream = &config.upstream;
        let endpoint = Endpoint {
            authority: upstream.connect_to.clone(),
            connect_timeout: upstream.connect_timeout,
            tls: upstream.tls.clone(),
            identity: format!(
                "{} {:?} {:?}",
                upstream.uri, upstream.ca_file, upstream.connect_timeout
            ),
        };
        let routes = Routes::new(config.routes.clone());
        Settings {
            routes,
            config,
            jar,
            policy,
            upstream_host,
            hsts,
            redirects,
            endpoint,
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
