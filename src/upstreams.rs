//! Upstream groups at run time: every server's health and load, shared by all
//! workers and kept across reloads, and how a group picks a server for a request.
//!
//! A server is unhealthy after `unhealthy` failed checks or connection failures
//! in a row, and healthy again after `healthy` good checks. A group without a
//! `health` block has no checks: a server its connection failures made unhealthy
//! is tried again after [`RETRY_AFTER`], and one answered request makes it
//! healthy.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderValue;

use crate::config::{Balance, HealthConfig, ServerConfig, UpstreamConfig};
use crate::metrics::{Metrics, ServerMetrics};
use crate::pool::Endpoint;
use crate::redirect::UpstreamOrigin;

/// How long a group without health checks keeps a failed server out.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(10);
/// Connection failures in a row that make a server unhealthy, without `health`.
const UNHEALTHY_WITHOUT_CHECKS: u32 = 3;

/// One server's health and load, kept across reloads while it stays configured.
#[derive(Debug)]
pub(crate) struct ServerState {
    healthy: AtomicBool,
    /// Failures in a row (checks or connections).
    fails: AtomicU32,
    /// Good checks in a row while unhealthy.
    oks: AtomicU32,
    /// Without checks: when an unhealthy server may be tried again, in ms since
    /// `epoch`.
    retry_at_ms: AtomicU64,
    epoch: Instant,
    /// Requests sent to it that have not had their response head yet.
    active: AtomicUsize,
    pub(crate) metrics: ServerMetrics,
}

impl ServerState {
    fn new(metrics: ServerMetrics) -> ServerState {
        metrics.healthy.set(1);
        ServerState {
            healthy: AtomicBool::new(true),
            fails: AtomicU32::new(0),
            oks: AtomicU32::new(0),
            retry_at_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            active: AtomicUsize::new(0),
            metrics,
        }
    }

    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    fn set_healthy(&self, healthy: bool) {
        if self.healthy.swap(healthy, Ordering::Relaxed) != healthy {
            self.metrics.healthy.set(i64::from(healthy));
            if healthy {
                tracing::info!("upstream server healthy again");
            }
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Usable for a request: healthy, or (without checks) due for another try.
    fn usable(&self, checked: bool) -> bool {
        self.is_healthy() || (!checked && self.now_ms() >= self.retry_at_ms.load(Ordering::Relaxed))
    }

    /// The result of an active check.
    pub(crate) fn checked(&self, ok: bool, health: &HealthConfig) {
        if ok {
            self.fails.store(0, Ordering::Relaxed);
            let oks = self.oks.fetch_add(1, Ordering::Relaxed) + 1;
            if !self.is_healthy() && oks >= health.healthy {
                self.set_healthy(true);
            }
        } else {
            self.oks.store(0, Ordering::Relaxed);
            let fails = self.fails.fetch_add(1, Ordering::Relaxed) + 1;
            if self.is_healthy() && fails >= health.unhealthy {
                tracing::warn!("upstream server unhealthy: {fails} failed checks in a row");
                self.set_healthy(false);
            }
        }
    }
}

/// One server of one group, as the request path uses it.
#[derive(Debug)]
pub(crate) struct Target {
    /// The server's URL, as configured.
    pub(crate) name: String,
    /// What a session's data holds to say it stays on this server: 12 hex
    /// digits of the SHA-256 of `name`. Short, so that it costs little in every
    /// write of the session's data, and naming no address.
    pub(crate) tag: String,
    pub(crate) group: usize,
    pub(crate) endpoint: Endpoint,
    /// `Host` for the server when `preserve_host` is off.
    pub(crate) host: Option<HeaderValue>,
    /// The URL's path prefix (empty when it has none).
    pub(crate) base_path: String,
    /// The server's origin, when `rewrite_redirects` is on.
    pub(crate) redirects: Option<UpstreamOrigin>,
    weight: u32,
    pub(crate) drain: bool,
    pub(crate) state: Arc<ServerState>,
}

impl Target {
    /// A request is on its way to this server: counted in its load until the
    /// [`Sent`] is dropped.
    pub(crate) fn send(&self) -> Sent<'_> {
        self.state.metrics.requests.inc();
        self.state.active.fetch_add(1, Ordering::Relaxed);
        Sent { state: &self.state }
    }
}

/// A request in flight to a server, for `least_conn` and passive health. It
/// borrows the server from the settings the request is served under.
pub(crate) struct Sent<'a> {
    state: &'a ServerState,
}

impl Sent<'_> {
    /// The server answered with a response head.
    pub(crate) fn answered(self, checked: bool) {
        self.state.fails.store(0, Ordering::Relaxed);
        if !checked {
            self.state.set_healthy(true);
        }
    }

    /// The server failed the request: `connect` when no connection could be
    /// made, which counts toward making it unhealthy.
    pub(crate) fn failed(self, connect: bool, health: Option<&HealthConfig>) {
        let s = self.state;
        s.metrics.errors.inc();
        if !connect {
            return;
        }
        let limit = health.map_or(UNHEALTHY_WITHOUT_CHECKS, |h| h.unhealthy);
        let fails = s.fails.fetch_add(1, Ordering::Relaxed) + 1;
        s.oks.store(0, Ordering::Relaxed);
        if fails >= limit {
            if health.is_none() {
                let at = s.now_ms() + RETRY_AFTER.as_millis() as u64;
                s.retry_at_ms.store(at, Ordering::Relaxed);
            }
            if s.is_healthy() {
                tracing::warn!("upstream server unhealthy: {fails} connection failures in a row");
                s.set_healthy(false);
            }
        }
    }
}

impl Drop for Sent<'_> {
    fn drop(&mut self) {
        self.state.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A group of servers.
#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) name: String,
    /// Its place in [`Upstreams::groups`].
    pub(crate) index: usize,
    /// The session data key that holds a session's server under affinity, and
    /// its encoded form.
    pub(crate) pin_key: String,
    pub(crate) pin_key_encoded: Vec<u8>,
    /// Its servers, as indexes into [`Upstreams::targets`].
    pub(crate) targets: Vec<usize>,
    balance: Balance,
    pub(crate) affinity: bool,
    pub(crate) health: Option<HealthConfig>,
    pub(crate) timeout: Duration,
    pub(crate) preserve_host: bool,
    /// The round-robin position, in units of weight.
    next: AtomicUsize,
    total_weight: usize,
}

/// What a group chose for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Choice {
    pub(crate) target: usize,
    /// The session's affinity must be written: it had none, or its server is
    /// gone or unhealthy.
    pub(crate) pin: bool,
}

/// Every group and server of one configuration.
#[derive(Debug)]
pub(crate) struct Upstreams {
    pub(crate) targets: Vec<Target>,
    pub(crate) groups: Vec<Group>,
}

impl Upstreams {
    /// Builds the groups of `config`, keeping the state of every server that
    /// `previous` had under the same group and URL.
    pub(crate) fn new(
        configs: &[UpstreamConfig],
        metrics: &Metrics,
        previous: Option<&Upstreams>,
    ) -> Upstreams {
        let mut targets = Vec::new();
        let mut groups = Vec::new();
        for (g, config) in configs.iter().enumerate() {
            let mut members = Vec::new();
            for server in &config.servers {
                let state = previous
                    .and_then(|p| p.find(&config.name, &server.name))
                    .map(|t| t.state.clone())
                    .unwrap_or_else(|| {
                        Arc::new(ServerState::new(metrics.server(&config.name, &server.name)))
                    });
                members.push(targets.len());
                targets.push(target(g, config, server, state));
            }
            let pin_key = crate::session::affinity_key(&config.name);
            groups.push(Group {
                name: config.name.clone(),
                index: g,
                pin_key_encoded: crate::session::encoded(&pin_key),
                pin_key,
                total_weight: config.servers.iter().map(|s| s.weight as usize).sum(),
                targets: members,
                balance: config.balance,
                affinity: config.affinity,
                health: config.health.clone(),
                timeout: config.timeout,
                preserve_host: config.preserve_host,
                next: AtomicUsize::new(0),
            });
        }
        if let Some(previous) = previous {
            for t in &previous.targets {
                let group = &previous.groups[t.group].name;
                let kept = configs
                    .iter()
                    .any(|c| &c.name == group && c.servers.iter().any(|s| s.name == t.name));
                if !kept {
                    metrics.forget_server(group, &t.name);
                }
            }
        }
        Upstreams { targets, groups }
    }

    fn find(&self, group: &str, name: &str) -> Option<&Target> {
        self.targets
            .iter()
            .find(|t| t.name == name && self.groups[t.group].name == group)
    }

    /// The group named `name`.
    pub(crate) fn group(&self, name: &str) -> Option<usize> {
        self.groups.iter().position(|g| g.name == name)
    }

    /// Picks a server of `group`: the one whose tag is `pinned` when the group keeps
    /// affinity and that server is usable; else one by the group's balance among
    /// the usable servers that do not drain (draining ones when no other is
    /// usable). `None`: no server is usable.
    pub(crate) fn choose(&self, group: usize, pinned: Option<&[u8]>) -> Option<Choice> {
        let g = &self.groups[group];
        let checked = g.health.is_some();
        if g.affinity {
            if let Some(name) = pinned {
                let kept = g.targets.iter().copied().find(|&i| {
                    let t = &self.targets[i];
                    t.tag.as_bytes() == name && t.state.usable(checked)
                });
                if let Some(target) = kept {
                    return Some(Choice { target, pin: false });
                }
            }
        }
        let usable = |i: &usize| self.targets[*i].state.usable(checked);
        let fresh = |i: &usize| usable(i) && !self.targets[*i].drain;
        let target = self.balance(g, fresh).or_else(|| self.balance(g, usable))?;
        Some(Choice {
            target,
            pin: g.affinity,
        })
    }

    fn balance(&self, g: &Group, eligible: impl Fn(&usize) -> bool) -> Option<usize> {
        match g.balance {
            Balance::LeastConn => g
                .targets
                .iter()
                .filter(|i| eligible(i))
                .min_by_key(|&&i| {
                    let t = &self.targets[i];
                    // Load per unit of weight, compared without division.
                    t.state.active.load(Ordering::Relaxed) * g.total_weight / t.weight as usize
                })
                .copied(),
            Balance::RoundRobin => {
                let n = g.total_weight.max(1);
                let start = g.next.fetch_add(1, Ordering::Relaxed) % n;
                // The server owning the position `start` in units of weight, or
                // the next eligible one after it.
                let mut owner = 0;
                let mut acc = 0;
                for (k, &i) in g.targets.iter().enumerate() {
                    acc += self.targets[i].weight as usize;
                    if start < acc {
                        owner = k;
                        break;
                    }
                }
                (0..g.targets.len())
                    .map(|step| g.targets[(owner + step) % g.targets.len()])
                    .find(|i| eligible(i))
            }
        }
    }
}

/// 12 hex digits of the SHA-256 of a server's URL.
fn tag_of(name: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(name.as_bytes());
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

fn target(
    group: usize,
    config: &UpstreamConfig,
    server: &ServerConfig,
    state: Arc<ServerState>,
) -> Target {
    Target {
        name: server.name.clone(),
        tag: tag_of(&server.name),
        group,
        endpoint: Endpoint {
            authority: server.connect_to.clone(),
            connect_timeout: config.connect_timeout,
            tls: server.tls.clone(),
            identity: format!(
                "{} {:?} {:?}",
                server.uri, config.ca_file, config.connect_timeout
            ),
        },
        host: server
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
        base_path: server.base_path.clone(),
        redirects: config
            .rewrite_redirects
            .then(|| UpstreamOrigin::new(&server.uri, &server.base_path))
            .flatten(),
        weight: server.weight.max(1),
        drain: server.drain,
        state,
    }
}
