//! `store`: which session store runs, its snapshot file, and where Redis is.

use std::path::PathBuf;
use std::time::Duration;

use serde::de::Deserializer;
use serde::{Deserialize, Serialize, Serializer};

use super::source::{ConfigError, Source};
use super::values::{expanded, Dur, Secret, Text, Timeout};
pub use crate::session::redis::{RedisConfig, SentinelConfig};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreType {
    Memory,
    Redis,
}

/// The whole section is read once, when the store opens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    pub(crate) kind: StoreType,
    pub snapshot: Option<PathBuf>,
    pub(crate) snapshot_interval: Duration,
    pub(crate) redis: RedisConfig,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawStore {
    #[serde(rename = "type")]
    kind: StoreType,
    snapshot: Option<Text>,
    snapshot_interval: Timeout,
    redis: RawRedis,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            kind: StoreType::Memory,
            snapshot: None,
            snapshot_interval: Dur(Duration::from_secs(60)),
            redis: RawRedis::default(),
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRedis {
    url: RedisUrl,
    key_prefix: Text,
    timeout: Dur,
    cluster: bool,
    nodes: Vec<RedisUrl>,
    sentinel: Option<RawSentinel>,
    near_cache: bool,
}

/// `store.redis.sentinel`: the master's name and the Sentinels to ask for it.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSentinel {
    master: Text,
    nodes: Vec<RedisUrl>,
    /// The master's `AUTH`; the Sentinels' own go in their URLs.
    #[serde(default)]
    username: Option<Text>,
    #[serde(default)]
    password: Option<Secret>,
    /// Reach the master over TLS; by default, when the Sentinels are.
    #[serde(default)]
    tls: Option<bool>,
}

impl Default for RawRedis {
    fn default() -> Self {
        RawRedis {
            url: RedisUrl("redis://127.0.0.1:6379".into()),
            key_prefix: Text("sessiongate:".into()),
            timeout: Dur(Duration::from_millis(500)),
            cluster: false,
            nodes: Vec::new(),
            sentinel: None,
            near_cache: true,
        }
    }
}

impl RawStore {
    /// The Redis URLs are checked only when Redis is the store; the snapshot's
    /// directory must exist.
    pub(super) fn validate(&self, src: &Source<'_>) -> Result<StoreConfig, ConfigError> {
        let r = &self.redis;
        // `nodes` name a Cluster's seed nodes, so they make it one too.
        let cluster = r.cluster || !r.nodes.is_empty();
        if self.kind == StoreType::Redis {
            for (i, node) in r.nodes.iter().enumerate() {
                if !(node.0.starts_with("redis://") || node.0.starts_with("rediss://")) {
                    return Err(src.error(
                        &format!("store.redis.nodes[{i}]"),
                        "expected a redis:// or rediss:// URL",
                    ));
                }
            }
            if let Some(sentinel) = &r.sentinel {
                if cluster {
                    return Err(src.error(
                        "store.redis.sentinel",
                        "a Redis Cluster fails over by itself: use sentinel or cluster, not both",
                    ));
                }
                if sentinel.master.0.is_empty() {
                    return Err(src.error(
                        "store.redis.sentinel.master",
                        "needs the name the Sentinels monitor the master by (sentinel monitor NAME ...)",
                    ));
                }
                if sentinel.nodes.is_empty() {
                    return Err(src.error(
                        "store.redis.sentinel.nodes",
                        "needs at least one Sentinel, e.g. [\"redis://10.0.0.5:26379\"]",
                    ));
                }
                if sentinel.username.is_some() && sentinel.password.is_none() {
                    return Err(src.error(
                        "store.redis.sentinel.username",
                        "needs store.redis.sentinel.password too (AUTH takes both)",
                    ));
                }
                for (i, node) in sentinel.nodes.iter().enumerate() {
                    if !(node.0.starts_with("redis://") || node.0.starts_with("rediss://")) {
                        return Err(src.error(
                            &format!("store.redis.sentinel.nodes[{i}]"),
                            "expected a redis:// or rediss:// URL",
                        ));
                    }
                }
            }
            // Each key's hash tag is the session ID's head, which spreads the
            // sessions over a Cluster's slots; a brace in the prefix would take
            // the tag's place.
            if cluster && r.key_prefix.0.contains(['{', '}']) {
                return Err(src.error(
                    "store.redis.key_prefix",
                    "may not hold { or } on a Redis Cluster: a hash tag in the prefix \
                     would put every session in one slot, on one node",
                ));
            }
            let url = r.url.0.as_str();
            if !["redis://", "rediss://", "unix://"]
                .iter()
                .any(|scheme| url.starts_with(scheme))
            {
                return Err(src.error(
                    "store.redis.url",
                    "expected a redis://, rediss:// or unix:// URL",
                ));
            }
        }
        let snapshot = self.snapshot.as_ref().map(|p| src.path(&p.0));
        if let Some(path) = &snapshot {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            if dir.is_some_and(|d| !d.is_dir()) {
                return Err(src.error(
                    "store.snapshot",
                    format!("the directory of {} does not exist", path.display()),
                ));
            }
        }
        Ok(StoreConfig {
            kind: self.kind.clone(),
            snapshot,
            snapshot_interval: self.snapshot_interval.0,
            redis: RedisConfig {
                url: r.url.0.clone(),
                key_prefix: r.key_prefix.0.clone(),
                timeout: r.timeout.0,
                cluster,
                nodes: r.nodes.iter().map(|n| n.0.clone()).collect(),
                sentinel: r.sentinel.as_ref().map(|s| SentinelConfig {
                    master: s.master.0.clone(),
                    nodes: s.nodes.iter().map(|n| n.0.clone()).collect(),
                    username: s.username.as_ref().map(|u| u.0.clone()),
                    password: s.password.as_ref().map(|p| p.0.clone()),
                    tls: s
                        .tls
                        .unwrap_or_else(|| s.nodes.iter().any(|n| n.0.starts_with("rediss://"))),
                }),
                near_cache: r.near_cache,
            },
        })
    }
}

/// A Redis URL: expanded like [`Text`], printed with its password redacted (the
/// rest of it is what an operator checks).
#[derive(Clone, Default, PartialEq, Eq)]
struct RedisUrl(String);

impl<'de> Deserialize<'de> for RedisUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        expanded(d).map(RedisUrl)
    }
}

impl Serialize for RedisUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&redact_url_password(&self.0))
    }
}

/// `scheme://user:password@host/...` with the password (or, with no `:`, the
/// whole user part, which may be a password) shown as `<redacted>`; a query
/// string, which may carry one too, is dropped.
fn redact_url_password(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((rest, _)) => (rest, "?<redacted>"),
        None => (rest, ""),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:<redacted>@{host}"),
            None => format!("<redacted>@{host}"),
        },
        None => authority.to_owned(),
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{authority}{path}{query}"),
        None => format!("{authority}{path}{query}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls_print_without_their_password() {
        for (url, shown) in [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("redis://:pw@h:1/0", "redis://:<redacted>@h:1/0"),
            ("rediss://user:pw@h", "rediss://user:<redacted>@h"),
            ("redis://pw@h", "redis://<redacted>@h"),
            ("redis://h/0?password=pw", "redis://h/0?<redacted>"),
            ("unix:///run/redis.sock", "unix:///run/redis.sock"),
        ] {
            assert_eq!(redact_url_password(url), shown, "{url}");
        }
    }
}
