//! What requests are served under: the settings derived from the configuration,
//! swapped whole on reload. Read by the request path; the header rules get the
//! few values they need as [`Rules`].

use http::HeaderValue;

use crate::config::{Config, SessionConfig};
use crate::conn::ConnInfo;
use crate::cookie::CookieJar;
use crate::headers::Rules;
use crate::metrics::Metrics;
use crate::route::Routes;
use crate::session::Policy;
use crate::upstreams::{Target, Upstreams};
use std::sync::atomic::{AtomicU64, Ordering};

/// Per-request settings derived from the configuration, swapped whole on reload.
pub struct Settings {
    pub config: Config,
    pub jar: CookieJar,
    /// The session rules every store call of the request is made under.
    pub policy: Policy,
    /// `Strict-Transport-Security` for responses over TLS.
    hsts: Option<HeaderValue>,
    /// The upstream groups and their servers.
    pub(crate) upstreams: Upstreams,
    /// `routes`, indexed for matching; empty when the file has none.
    pub(crate) routes: Routes,
    /// Each route's group, by route index.
    route_groups: Vec<usize>,
    /// The group `default`.
    default_group: usize,
    /// `session.user_key` in the encoded form of session data.
    pub(crate) user_key: Option<Vec<u8>>,
    /// Tells these settings from every earlier ones: each worker rebuilds its
    /// pools when it changes.
    pub(crate) generation: u64,
}

/// Counts settings as they are made.
static GENERATION: AtomicU64 = AtomicU64::new(0);

impl Settings {
    /// What the header rules need, borrowed from these settings, before a
    /// server is chosen.
    pub fn rules(&self) -> Rules<'_> {
        let c = &self.config;
        Rules {
            names: &c.session.headers,
            keys: &c.session.keys,
            jar: &self.jar,
            exclude_paths: &c.session.exclude_paths,
            max_body_bytes: c.limits.max_body_bytes,
            preserve_host: false,
            upstream_host: None,
        }
    }

    /// The header rules for a request to `target`.
    pub(crate) fn rules_to<'a>(&'a self, target: &'a Target) -> Rules<'a> {
        Rules {
            preserve_host: self.upstreams.groups[target.group].preserve_host,
            upstream_host: target.host.as_ref(),
            ..self.rules()
        }
    }

    /// `Strict-Transport-Security` for a response on `conn`, if any.
    pub(crate) fn hsts_for(&self, conn: &ConnInfo) -> Option<&HeaderValue> {
        self.hsts.as_ref().filter(|_| conn.tls)
    }

    /// The group of the route at `route`, or `default` without routes.
    pub(crate) fn group_of(&self, route: Option<usize>) -> usize {
        route.map_or(self.default_group, |r| self.route_groups[r])
    }

    /// Settings for `config` alone, counting into metrics of their own (for
    /// benchmarks and tools that run no proxy).
    pub fn standalone(config: Config) -> Settings {
        let counters = std::sync::Arc::new(crate::session::SessionCounters::default());
        Settings::new(config, &Metrics::new(counters, &Default::default()), None)
    }

    /// Settings for `config`, whose servers keep the health and load their
    /// `previous` settings had for them.
    pub(crate) fn new(config: Config, metrics: &Metrics, previous: Option<&Settings>) -> Settings {
        let jar = config.session.cookie.jar();
        let policy = Policy::from(&config.session);
        let hsts = config
            .tls
            .as_ref()
            .and_then(|t| t.hsts.as_deref())
            .and_then(|h| HeaderValue::from_str(h).ok());
        let upstreams = Upstreams::new(&config.groups, metrics, previous.map(|p| &p.upstreams));
        let default_group = upstreams
            .group("default")
            .expect("the configuration always has a default group");
        let route_groups = config
            .routes
            .iter()
            .map(|r| {
                upstreams
                    .group(&r.upstream)
                    .expect("the configuration checked every route's group")
            })
            .collect();
        let routes = Routes::new(config.routes.clone());
        Settings {
            routes,
            route_groups,
            default_group,
            upstreams,
            user_key: (config.session.user_key.as_deref()).map(crate::session::encoded),
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            config,
            jar,
            policy,
            hsts,
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
            max_per_user: s.max_per_user,
        }
    }
}
