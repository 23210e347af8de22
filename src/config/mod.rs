//! The configuration file: YAML → raw serde structs → a validated [`Config`].
//!
//! Everything downstream trusts a `Config`: durations are `Duration`s, addresses are
//! `SocketAddr`s, secrets are signing keys. Every error names the file, the line and
//! column, and the dotted key; no error ever echoes a secret.
//!
//! - `values`: value types that check themselves as they parse (a [`Timeout`] is
//!   never zero), so the error names the exact key and points at the value.
//! - `source`: parsing with located errors; locating a key for the checks that
//!   come after parsing; paths relative to the file.
//! - one module per section (`upstream`, `session`, `store`, `tls`, `admin`,
//!   `limits`, `log`): its raw serde struct, its validated type, and the checks
//!   that span its keys, each naming the key that is wrong.
//!
//! [`Timeout`]: values::Timeout

mod admin;
mod assertion;
mod limits;
mod log;
mod routes;
mod session;
mod source;
mod store;
mod tls;
mod upstream;
mod upstreams;
mod values;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use self::admin::AdminConfig;
pub use self::assertion::EventsConfig;
pub(crate) use self::limits::LimitsConfig;
pub use self::log::{LogConfig, LogFormat};
pub use self::session::{CreateMode, DataFormat, SessionConfig};
pub use self::source::ConfigError;
pub use self::store::{RedisConfig, SentinelConfig, StoreConfig, StoreType};
pub(crate) use self::tls::TlsConfig;
pub(crate) use self::upstream::{Balance, HealthConfig, ServerConfig, UpstreamConfig};
use source::Source;
use values::{Addr, Cidr, Workers};

/// The validated configuration the proxy runs with.
#[derive(Clone)]
pub struct Config {
    /// The file this configuration came from (for messages and reloads).
    pub(crate) origin: PathBuf,
    pub(crate) listen: Option<SocketAddr>,
    pub(crate) tls: Option<TlsConfig>,
    /// `workers`: the worker threads asked for; `None` is `auto` (see
    /// [`Config::workers`]).
    workers: Option<std::num::NonZeroUsize>,
    /// The upstream groups by name: `upstreams`, and `default` from `upstream`
    /// unless `upstreams` names a group `default` itself.
    pub(crate) groups: Vec<UpstreamConfig>,
    /// `routes`, in order; empty: every request goes to the `default` group.
    pub(crate) routes: Vec<crate::route::Route>,
    pub session: SessionConfig,
    pub(crate) trusted_proxies: Vec<IpNet>,
    pub store: StoreConfig,
    pub admin: AdminConfig,
    pub(crate) limits: LimitsConfig,
    pub log: LogConfig,
    /// `assertion`, when `assertion.header` is set.
    pub(crate) assertion: Option<std::sync::Arc<crate::assertion::Signer>>,
    pub events: EventsConfig,
    /// True when `--dev` replaced missing secrets with an ephemeral one.
    pub dev_secret: bool,
    /// The raw form, with defaults filled in, for `sessiongate check`.
    raw: RawConfig,
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path, dev: bool) -> Result<Config, ConfigError> {
        let src = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&src, path, dev)
    }

    /// Validates YAML text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &Path, dev: bool) -> Result<Config, ConfigError> {
        let src = Source { text, origin };
        let raw: RawConfig = src.parse()?;
        raw.validate(&src, dev)
    }

    /// How many worker threads to run: `workers`, or with `auto` one per core
    /// the process may use (its CPU affinity and cgroup quota count).
    pub fn workers(&self) -> usize {
        self.workers.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            |n| n.get(),
        )
    }

    /// The effective configuration as YAML, defaults filled in, secrets redacted.
    pub fn to_redacted_yaml(&self) -> String {
        serde_saphyr::to_string(&self.raw)
            .unwrap_or_else(|e| format!("# cannot render the configuration: {e}\n"))
    }

    /// What `next` changes that a running proxy takes only at start, as the
    /// section's key and what it sets up: a reload applies the rest and says
    /// these need a restart.
    ///
    /// Sections are compared whole. A section a reload applies in part compares
    /// what is left once the keys it applies are set aside, so a key added to any
    /// section needs a restart until it is made reloadable; a section added to
    /// `Config` does not compile here until it is sorted.
    pub(crate) fn restart_needed(&self, next: &Config) -> Vec<(&'static str, &'static str)> {
        let Config {
            origin: _,
            listen,
            tls,
            workers,
            groups: _,
            routes: _,
            session: _,
            trusted_proxies: _,
            store,
            admin,
            limits,
            log,
            assertion: _,
            events,
            dev_secret: _,
            raw: _,
        } = next;
        let tls_fixed = |t: &Option<TlsConfig>| t.as_ref().map(TlsConfig::fixed_at_start);
        [
            ("listen", "the listener address", *listen == self.listen),
            ("workers", "the worker threads", *workers == self.workers),
            (
                "tls",
                "the HTTPS listener",
                tls_fixed(tls) == tls_fixed(&self.tls),
            ),
            ("store", "the session store", *store == self.store),
            (
                "session.user_key",
                "the per-user index",
                next.session.user_key == self.session.user_key,
            ),
            ("events", "event delivery", *events == self.events),
            (
                "admin",
                "the admin listener",
                admin.fixed_at_start() == self.admin.fixed_at_start(),
            ),
            (
                "limits",
                "limits read once, at start",
                limits.fixed_at_start() == self.limits.fixed_at_start(),
            ),
            (
                "log",
                "the log format",
                log.fixed_at_start() == self.log.fixed_at_start(),
            ),
        ]
        .into_iter()
        .filter(|&(_, _, same)| !same)
        .map(|(key, what, _)| (key, what))
        .collect()
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("origin", &self.origin)
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

/// The file's shape: every section of the contract, with its default.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    /// Absent means 127.0.0.1:8080, or no plain listener when `tls` is set.
    listen: Option<Addr>,
    tls: Option<tls::RawTls>,
    workers: Workers,
    upstream: upstream::RawUpstream,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    upstreams: std::collections::BTreeMap<String, upstreams::RawGroup>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    routes: Vec<routes::RawRoute>,
    session: session::RawSession,
    trusted_proxies: Vec<Cidr>,
    store: store::RawStore,
    admin: admin::RawAdmin,
    limits: limits::RawLimits,
    log: log::RawLog,
    assertion: assertion::RawAssertion,
    events: assertion::RawEvents,
}

impl RawConfig {
    /// Each section checks what spans its keys (the values checked themselves
    /// while parsing); `dev` lets a missing secret be an ephemeral one.
    fn validate(mut self, src: &Source<'_>, dev: bool) -> Result<Config, ConfigError> {
        if self.listen.is_none() && self.tls.is_none() {
            self.listen = Some(Addr(SocketAddr::from(([127, 0, 0, 1], 8080))));
        }
        let mut groups = upstreams::validate(&self.upstreams, src)?;
        if !groups.iter().any(|g| g.name == "default") {
            groups.push(self.upstream.validate(src)?);
            groups.sort_by(|a, b| a.name.cmp(&b.name));
        }
        let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
        let routes = (self.routes.iter().enumerate())
            .map(|(i, r)| r.validate(i, src, &names))
            .collect::<Result<Vec<_>, _>>()?;
        let (session, dev_secret) = self.session.validate(src, dev)?;
        let store = self.store.validate(src)?;
        let tls = self.tls.as_ref().map(|t| t.validate(src)).transpose()?;
        let admin = self.admin.validate(src)?;
        let assertion = self.assertion.validate(src, &session.headers)?;
        let events = self.events.validate(src, store.kind == StoreType::Redis)?;
        // The raw form is kept for `check`: without a secret in it.
        for secret in &mut self.session.secrets {
            secret.value.clear();
        }
        Ok(Config {
            origin: src.origin.to_owned(),
            listen: self.listen.map(|a| a.0),
            tls,
            workers: self.workers.0,
            groups,
            routes,
            session,
            trusted_proxies: self.trusted_proxies.iter().map(|c| c.0).collect(),
            store,
            admin,
            limits: self.limits.validate(),
            log: self.log.validate(),
            assertion,
            events,
            dev_secret,
            raw: self,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn parse(src: &str) -> Result<Config, ConfigError> {
        Config::parse(src, Path::new("t.yaml"), false)
    }

    fn invalid(src: &str) -> (u64, u64, String, String) {
        match parse(src) {
            Err(ConfigError::Invalid {
                line,
                column,
                key,
                message,
                ..
            }) => (line, column, key, message),
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("config accepted"),
        }
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = parse(&format!("session:\n  secrets: [\"{SECRET}\"]\n")).unwrap();
        assert_eq!(c.listen, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(c.groups.len(), 1);
        assert_eq!(c.groups[0].name, "default");
        assert_eq!(
            c.groups[0].servers[0].uri.to_string(),
            "http://127.0.0.1:3000/"
        );
        assert_eq!(c.groups[0].connect_timeout, Duration::from_secs(5));
        assert_eq!(c.groups[0].timeout, Duration::from_secs(60));
        assert_eq!(c.session.idle_timeout, Duration::from_secs(1800));
        assert_eq!(c.session.absolute_timeout, Duration::from_secs(86400));
        assert_eq!(c.session.max_sessions, 1_000_000);
        assert_eq!(c.session.max_data_bytes, 4096);
        assert_eq!(c.session.regenerate_grace, Duration::from_secs(10));
        assert_eq!(c.session.headers.id.as_str(), "x-session-id");
        assert_eq!(c.session.cookie.name, "sessiongate");
        assert_eq!(c.admin.listen, Some("127.0.0.1:9091".parse().unwrap()));
        assert_eq!(c.limits.max_header_bytes, 65536);
        assert_eq!(c.log.level, "info");
    }

    #[test]
    fn users_events_and_assertion_errors_name_their_key() {
        let base = format!("session:\n  secrets: [\"{SECRET}\"]\n");
        let (line, _, key, msg) = invalid(&format!("{base}  max_per_user: 3\n"));
        assert_eq!((line, key.as_str()), (3, "session.max_per_user"), "{msg}");
        assert!(msg.contains("session.user_key"), "{msg}");
        let (line, _, key, msg) = invalid(&format!(
            "{base}assertion:\n  header: X-Assertion\n  keys: [\"{SECRET}\"]\n"
        ));
        assert_eq!((line, key.as_str()), (4, "assertion.header"), "{msg}");
        assert!(msg.contains("x-session-"), "{msg}");
        let (line, _, key, msg) = invalid(&format!(
            "{base}assertion:\n  header: X-Session-Assertion\n  keys: [\"{SECRET}\", \"short\"]\n"
        ));
        assert_eq!((line, key.as_str()), (5, "assertion.keys[1]"), "{msg}");
        assert!(!msg.contains(SECRET), "a key is never quoted: {msg}");
        let (_, _, key, msg) = invalid(&format!(
            "{base}assertion:\n  header: X-Session-Data\n  keys: [\"{SECRET}\"]\n"
        ));
        assert_eq!(key, "assertion.header", "{msg}");
        let (line, _, key, msg) = invalid(&format!(
            "{base}events:\n  redis_stream: sessiongate:events\n"
        ));
        assert_eq!((line, key.as_str()), (4, "events.redis_stream"), "{msg}");
        let (_, _, key, msg) = invalid(&format!(
            "{base}events:\n  webhook: \"ftp://x/?token=s3cret\"\n"
        ));
        assert_eq!(key, "events.webhook", "{msg}");
        assert!(!msg.contains("s3cret"), "{msg}");
        let c = parse(&format!(
            "{base}  user_key: user\n  max_per_user: 3\nassertion:\n  header: X-Session-Assertion\n  keys: [\"{SECRET}\"]\nevents:\n  webhook: \"http://127.0.0.1:9/hook?token=s3cret\"\n"
        ))
        .unwrap();
        assert_eq!(c.session.user_key.as_deref(), Some("user"));
        assert!(c.assertion.is_some() && c.events.enabled());
        let shown = c.to_redacted_yaml();
        assert!(
            !shown.contains("s3cret") && !shown.contains(SECRET),
            "{shown}"
        );
    }

    #[test]
    fn unknown_key_names_line_column_and_key() {
        let (line, col, key, msg) = invalid(&format!(
            "session:\n  secrets: [\"{SECRET}\"]\n  cookie_nam: x\n"
        ));
        assert_eq!(line, 3, "{msg}");
        assert_eq!(col, 3);
        assert!(key.starts_with("session"), "{key}");
        assert!(msg.contains("cookie_nam"), "{msg}");
    }

    #[test]
    fn bad_duration_names_key() {
        let (line, _, key, msg) = invalid(&format!(
            "session:\n  secrets: [\"{SECRET}\"]\n  idle_timeout: 30x\n"
        ));
        assert_eq!(line, 3);
        assert_eq!(key, "session.idle_timeout");
        assert!(msg.contains("30x"), "{msg}");
    }

    #[test]
    fn a_misspelled_log_level_is_an_error_with_its_line() {
        for bad in ["infoo", "verbose", "sessiongate", "info,hyper", "x=loud"] {
            let (line, _, key, msg) = invalid(&format!(
                "session:\n  secrets: [\"{SECRET}\"]\nlog:\n  level: \"{bad}\"\n"
            ));
            assert_eq!((line, key.as_str()), (4, "log.level"), "{bad}: {msg}");
            assert!(msg.contains("error, warn, info, debug, trace"), "{msg}");
        }
        for good in [
            "error",
            "WARN",
            "info",
            "debug",
            "trace",
            "info,hyper=warn",
            "sessiongate=debug",
        ] {
            let c = parse(&format!(
                "session:\n  secrets: [\"{SECRET}\"]\nlog:\n  level: \"{good}\"\n"
            ))
            .unwrap_or_else(|e| panic!("{good}: {e}"));
            assert_eq!(c.log.level, good);
        }
    }

    #[test]
    fn each_timeout_is_named_by_its_own_key() {
        for (section, key, value) in [
            ("upstream", "connect_timeout", "0s"),
            ("upstream", "timeout", "0ms"),
            ("session", "idle_timeout", "500ms"),
            ("session", "absolute_timeout", "999ms"),
        ] {
            let src = if section == "session" {
                format!("session:\n  secrets: [\"{SECRET}\"]\n  {key}: {value}\n")
            } else {
                format!("session:\n  secrets: [\"{SECRET}\"]\n{section}:\n  {key}: {value}\n")
            };
            let (line, _, named, msg) = invalid(&src);
            assert_eq!(named, format!("{section}.{key}"), "{msg}");
            assert_eq!(
                line,
                if section == "session" { 3 } else { 4 },
                "{key}: {msg}"
            );
        }
    }

    #[test]
    fn routes_are_checked_value_by_value_and_across_keys() {
        let base = format!("session:\n  secrets: [\"{SECRET}\"]\n");
        let ok = parse(&format!(
            "{base}routes:\n  - match: {{host: \"*.Example.com\", path: /admin/}}\n    require: {{key: role, values: [admin]}}\n    login_url: /login\n  - match: {{path: /static/}}\n    session: off\n"
        ))
        .unwrap();
        assert_eq!(ok.routes.len(), 2);
        assert_eq!(
            ok.routes[0].host,
            crate::route::HostMatch::Suffix(".example.com".into())
        );
        assert_eq!(ok.routes[0].cross_site, crate::route::CrossSite::Block);
        assert!(!ok.routes[1].session);
        assert_eq!(ok.routes[1].cross_site, crate::route::CrossSite::Allow);
        for (route, line, key, says) in [
            (
                "  - login_url: //evil.test\n",
                4,
                "routes[0].login_url",
                "exactly one /",
            ),
            (
                "  - login_url: https://evil.test/\n",
                4,
                "routes[0].login_url",
                "exactly one /",
            ),
            (
                "  - match: {path: admin}\n",
                4,
                "routes[0].match.path",
                "begins with /",
            ),
            (
                "  - match: {host: \"http://a.test\"}\n",
                4,
                "routes[0].match.host",
                "no scheme",
            ),
            (
                "  - trusted_origins: [\"https://a.test/\"]\n",
                4,
                "routes[0].trusted_origins[0]",
                "not an origin",
            ),
            ("  - session: maybe\n", 4, "routes[0].session", "on or off"),
            (
                "  - upstream: app\n",
                4,
                "routes[0].upstream",
                "no upstream group",
            ),
            (
                "  - match: {path: /}\n  - session: off\n    require: {key: user}\n",
                6,
                "routes[1].require",
                "session: off",
            ),
            (
                "  - {match: {path: /}}\n  - upstream: other\n",
                5,
                "routes[1].upstream",
                "no upstream group",
            ),
        ] {
            let (l, _, k, msg) = invalid(&format!("{base}routes:\n{route}"));
            assert_eq!((l, k.as_str()), (line, key), "{route}: {msg}");
            assert!(msg.contains(says), "{route}: {msg}");
        }
    }

    #[test]
    fn bad_address_names_key() {
        let (line, _, key, _) = invalid(&format!(
            "listen: nowhere\nsession:\n  secrets: [\"{SECRET}\"]\n"
        ));
        assert_eq!(line, 1);
        assert_eq!(key, "listen");
    }

    #[test]
    fn unset_variable_is_named() {
        let (line, _, key, msg) =
            invalid("session:\n  secrets: [\"${SESSIONGATE_TEST_SURELY_UNSET}\"]\n");
        assert_eq!(line, 2);
        assert_eq!(key, "session.secrets");
        assert!(msg.contains("SESSIONGATE_TEST_SURELY_UNSET"), "{msg}");
        assert!(msg.contains("sessiongate gen-secret"), "{msg}");
        let src = "session:\n  secrets: [\"${SESSIONGATE_TEST_SURELY_UNSET}\"]\n";
        assert!(
            Config::parse(src, Path::new("t.yaml"), true)
                .unwrap()
                .dev_secret
        );
        let (line, _, key, msg) = invalid(&format!(
            "upstream:\n  url: \"${{SESSIONGATE_TEST_SURELY_UNSET}}\"\nsession:\n  secrets: [\"{SECRET}\"]\n"
        ));
        assert_eq!((line, key.as_str()), (2, "upstream.url"));
        assert!(msg.contains("SESSIONGATE_TEST_SURELY_UNSET"), "{msg}");
    }

    #[test]
    fn missing_secret_points_to_gen_secret_and_dev_works() {
        let (_, _, key, msg) = invalid("listen: 127.0.0.1:0\n");
        assert_eq!(key, "session.secrets");
        assert!(msg.contains("sessiongate gen-secret"), "{msg}");
        let c = Config::parse("listen: 127.0.0.1:0\n", Path::new("t.yaml"), true).unwrap();
        assert!(c.dev_secret);
    }

    #[test]
    fn short_secret_is_refused_without_echo() {
        let (line, _, key, msg) = invalid("session:\n  secrets:\n    - tooshortsecret\n");
        assert_eq!(key, "session.secrets[0]");
        assert_eq!(line, 3, "the line of the secret itself");
        assert!(!msg.contains("tooshortsecret"), "{msg}");
    }

    #[test]
    fn a_value_that_checks_itself_is_reported_where_it_stands() {
        // Flow style, the value on a line of its own: the error points at it,
        // not at its section.
        let (line, column, key, msg) = invalid(&format!(
            "session:\n  secrets: [\"{SECRET}\"]\nupstream: {{url: \"http://a\",\n  connect_timeout: 0s}}\n"
        ));
        assert_eq!(key, "upstream.connect_timeout");
        assert_eq!(msg, "must be greater than zero");
        assert_eq!((line, column), (4, 20));
        for (section, value, key, says) in [
            (
                "limits",
                "max_header_bytes: 100",
                "limits.max_header_bytes",
                "at least 8192",
            ),
            (
                "limits",
                "max_connections: 0",
                "limits.max_connections",
                "at least 1",
            ),
            (
                "limits",
                "send_timeout: 0s",
                "limits.send_timeout",
                "greater than zero",
            ),
            (
                "store",
                "snapshot_interval: 0s",
                "store.snapshot_interval",
                "greater than zero",
            ),
            ("log", "level: loud", "log.level", "is not a level"),
        ] {
            let (line, _, named, msg) = invalid(&format!(
                "session:\n  secrets: [\"{SECRET}\"]\n{section}:\n  {value}\n"
            ));
            assert_eq!((line, named.as_str()), (4, key), "{msg}");
            assert!(msg.contains(says), "{key}: {msg}");
        }
    }

    #[test]
    fn a_session_key_is_checked_where_it_stands() {
        for (value, key, says) in [
            (
                "cookie_name: \"a b\"",
                "session.cookie_name",
                "letters, digits",
            ),
            ("path: app", "session.path", "start with '/'"),
            ("domain: \"a;b\"", "session.domain", "invalid domain"),
            ("max_sessions: 0", "session.max_sessions", "at least 1"),
            ("max_data_bytes: 0", "session.max_data_bytes", "at least 1"),
            (
                "header_prefix: \"X Session\"",
                "session.header_prefix",
                "header name",
            ),
            (
                "exclude_paths: [/a, b]",
                "session.exclude_paths[1]",
                "start with '/'",
            ),
        ] {
            let (line, _, named, msg) =
                invalid(&format!("session:\n  secrets: [\"{SECRET}\"]\n  {value}\n"));
            assert_eq!((line, named.as_str()), (3, key), "{msg}");
            assert!(msg.contains(says), "{key}: {msg}");
        }
    }

    #[test]
    fn checks_across_keys_name_the_key_that_is_wrong() {
        for (yaml, key) in [
            ("session:\n  secrets: [\"{S}\"]\n  secure: false\n  same_site: none\n", "session.same_site"),
            ("session:\n  secrets: [\"{S}\"]\nupstream:\n  ca_file: ca.pem\n", "upstream.ca_file"),
            ("session:\n  secrets: [\"{S}\"]\nadmin:\n  listen: 0.0.0.0:9091\n", "admin.listen"),
            ("session:\n  secrets: [\"{S}\"]\nstore:\n  type: redis\n  redis:\n    url: http://r\n", "store.redis.url"),
            ("session:\n  secrets: [\"{S}\"]\nstore:\n  type: redis\n  redis:\n    cluster: true\n    key_prefix: \"app{1}:\"\n", "store.redis.key_prefix"),
            ("session:\n  secrets: [\"{S}\"]\nstore:\n  type: redis\n  redis:\n    nodes: [\"redis://a:7000\"]\n    key_prefix: \"app{\"\n", "store.redis.key_prefix"),
            ("session:\n  secrets: [\"{S}\", \"\"]\n", "session.secrets[1]"),
        ] {
            let (_, _, named, msg) = invalid(&yaml.replace("{S}", SECRET));
            assert_eq!(named, key, "{msg}");
        }
    }

    #[test]
    fn a_brace_in_the_key_prefix_is_refused_on_a_cluster_only() {
        let redis = "store:\n  type: redis\n  redis:\n    key_prefix: \"app{1}:\"\n";
        let one = parse(&format!("session:\n  secrets: [\"{SECRET}\"]\n{redis}")).unwrap();
        assert_eq!(one.store.redis.key_prefix, "app{1}:");
        let cluster = format!("session:\n  secrets: [\"{SECRET}\"]\n{redis}    cluster: true\n");
        let (line, _, key, message) = invalid(&cluster);
        assert_eq!((line, key.as_str()), (6, "store.redis.key_prefix"));
        assert!(message.contains("one slot"), "{message}");
    }

    #[test]
    fn workers_is_auto_or_a_count_and_a_bad_one_names_its_key() {
        let base = format!("session:\n  secrets: [\"{SECRET}\"]\n");
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(parse(&base).unwrap().workers(), cores);
        assert_eq!(
            parse(&format!("{base}workers: auto\n")).unwrap().workers(),
            cores
        );
        for (value, n) in [("1", 1), ("3", 3), ("\"2\"", 2), ("1024", 1024)] {
            let c = parse(&format!("{base}workers: {value}\n")).unwrap();
            assert_eq!(c.workers(), n, "{value}");
            assert!(
                c.to_redacted_yaml().contains(&format!("workers: {n}")),
                "{value}: {}",
                c.to_redacted_yaml()
            );
        }
        assert!(parse(&base)
            .unwrap()
            .to_redacted_yaml()
            .contains("workers: auto"));
        for value in ["0", "-1", "1025", "many", "2.5", "\"\""] {
            let (line, _, key, msg) = invalid(&format!("{base}workers: {value}\n"));
            assert_eq!((line, key.as_str()), (3, "workers"), "{value}: {msg}");
            assert!(
                msg.contains("auto") && msg.contains("1024"),
                "{value}: {msg}"
            );
        }
    }

    #[test]
    fn a_reload_names_each_section_it_cannot_apply() {
        let running = parse(&format!("session:\n  secrets: [\"{SECRET}\"]\n")).unwrap();
        for (change, needs) in [
            ("listen: 127.0.0.1:8081", Some("listen")),
            ("workers: 1", Some("workers")),
            ("workers: auto", None),
            ("admin:\n  listen: 127.0.0.1:9092", Some("admin")),
            ("admin:\n  token: t", None),
            ("store:\n  snapshot_interval: 5s", Some("store")),
            ("store:\n  redis:\n    key_prefix: other", Some("store")),
            ("limits:\n  max_connections: 5", Some("limits")),
            ("limits:\n  shutdown_timeout: 1s", Some("limits")),
            ("limits:\n  header_read_timeout: 5s", Some("limits")),
            ("limits:\n  max_body_bytes: 100", None),
            ("limits:\n  send_timeout: 5s", None),
            ("log:\n  format: json", Some("log")),
            ("log:\n  level: debug", None),
            ("upstream:\n  url: http://elsewhere:3000", None),
            ("trusted_proxies: [10.0.0.0/8]", None),
        ] {
            let next = parse(&format!("session:\n  secrets: [\"{SECRET}\"]\n{change}\n")).unwrap();
            let keys: Vec<&str> = running
                .restart_needed(&next)
                .iter()
                .map(|(k, _)| *k)
                .collect();
            assert_eq!(keys, Vec::from_iter(needs), "{change}");
        }
        let tls = TlsConfig {
            listen: "127.0.0.1:8443".parse().unwrap(),
            cert: "a.pem".into(),
            key: "a-key.pem".into(),
            redirect_http: false,
            hsts: None,
        };
        let renewed = TlsConfig {
            cert: "b.pem".into(),
            key: "b-key.pem".into(),
            hsts: Some("max-age=60".into()),
            ..tls.clone()
        };
        assert_eq!(tls.fixed_at_start(), renewed.fixed_at_start());
        let redirecting = TlsConfig {
            redirect_http: true,
            ..tls.clone()
        };
        assert_ne!(tls.fixed_at_start(), redirecting.fixed_at_start());
    }

    #[test]
    fn redacted_yaml_hides_secrets() {
        let c = parse(&format!("session:\n  secrets: [\"{SECRET}\"]\n")).unwrap();
        let y = c.to_redacted_yaml();
        assert!(!y.contains(SECRET), "{y}");
        assert!(y.contains("<redacted>"), "{y}");
        assert!(y.contains("idle_timeout: 30m"), "{y}");
    }
}
