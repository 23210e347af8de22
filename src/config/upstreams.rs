//! `upstreams`: named groups of servers, each with its balance, affinity and
//! health checks (`DESIGN.md` §11).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::source::{ConfigError, Source};
use super::upstream::{server, Balance, HealthConfig, UpstreamConfig, UpstreamUrl};
use super::values::{AtLeast, Checked, Dur, Rule, Text, Timeout};

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGroup {
    servers: Vec<RawServer>,
    #[serde(default = "round_robin")]
    balance: Balance,
    #[serde(default)]
    affinity: RawAffinity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    health: Option<RawHealth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ca_file: Option<Text>,
    #[serde(default = "five_seconds")]
    connect_timeout: Timeout,
    #[serde(default = "sixty_seconds")]
    timeout: Timeout,
    #[serde(default)]
    preserve_host: bool,
    #[serde(default = "yes")]
    rewrite_redirects: bool,
}

fn round_robin() -> Balance {
    Balance::RoundRobin
}
fn five_seconds() -> Timeout {
    Dur(Duration::from_secs(5))
}
fn sixty_seconds() -> Timeout {
    Dur(Duration::from_secs(60))
}
fn yes() -> bool {
    true
}

/// A server: its URL, or `{url, weight, drain}`.
#[derive(Clone, Serialize)]
#[serde(untagged)]
enum RawServer {
    Url(UpstreamUrl),
    Full(FullServer),
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FullServer {
    url: UpstreamUrl,
    #[serde(default = "one")]
    weight: AtLeast<1>,
    #[serde(default)]
    drain: bool,
}

impl<'de> Deserialize<'de> for RawServer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawServer;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a server URL, or {url, weight, drain}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawServer, E> {
                let v = super::values::expand_env(v).map_err(E::custom)?;
                UpstreamUrl::parse(&v)
                    .map(RawServer::Url)
                    .map_err(E::custom)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawServer, A::Error> {
                FullServer::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawServer::Full)
            }
        }
        d.deserialize_any(Visitor)
    }
}

fn one() -> AtLeast<1> {
    AtLeast(1)
}

#[derive(Clone, Copy, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawAffinity {
    Session,
    #[default]
    None,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    path: Checked<HealthPath>,
    #[serde(default = "five_seconds")]
    interval: Timeout,
    #[serde(default = "two_seconds")]
    timeout: Timeout,
    #[serde(default = "two")]
    healthy: AtLeast<1>,
    #[serde(default = "three")]
    unhealthy: AtLeast<1>,
}

fn two_seconds() -> Timeout {
    Dur(Duration::from_secs(2))
}
fn two() -> AtLeast<1> {
    AtLeast(2)
}
fn three() -> AtLeast<1> {
    AtLeast(3)
}

/// The path a health check asks for: origin form, no spaces.
pub(super) struct HealthPath;

impl Rule for HealthPath {
    fn accepts(value: &str) -> bool {
        value.starts_with('/') && !value.bytes().any(|b| b.is_ascii_control() || b == b' ')
    }
    fn refusal(value: &str) -> String {
        format!("{value:?} is not a path to check (it begins with / and has no spaces)")
    }
}

/// Validates `upstreams` into groups, sorted by name.
pub(super) fn validate(
    raw: &BTreeMap<String, RawGroup>,
    src: &Source<'_>,
) -> Result<Vec<UpstreamConfig>, ConfigError> {
    let mut groups = Vec::new();
    for (name, g) in raw {
        let at = format!("upstreams.{name}");
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(src.error(
                &at,
                format!("{name:?} is not a group name (letters, digits, _ and -)"),
            ));
        }
        if g.servers.is_empty() {
            return Err(src.error(
                &format!("{at}.servers"),
                "a group needs at least one server",
            ));
        }
        let ca_file = g.ca_file.as_ref().map(|p| src.path(&p.0));
        let mut servers = Vec::new();
        for (i, raw) in g.servers.iter().enumerate() {
            let (url, weight, drain) = match raw {
                RawServer::Url(url) => (url, 1, false),
                RawServer::Full(f) => (&f.url, f.weight.0 as u32, f.drain),
            };
            let server = server(src, &at, url, weight, drain, ca_file.as_deref())?;
            if servers
                .iter()
                .any(|s: &super::upstream::ServerConfig| s.name == server.name)
            {
                return Err(src.error(
                    &format!("{at}.servers[{i}]"),
                    format!("{} is listed twice", server.name),
                ));
            }
            servers.push(server);
        }
        if servers.iter().all(|s| s.drain) {
            return Err(src.error(
                &format!("{at}.servers"),
                "every server drains: new visitors would have nowhere to go",
            ));
        }
        let health = g.health.as_ref().map(|h| HealthConfig {
            path: h.path.text.clone(),
            interval: h.interval.0,
            timeout: h.timeout.0,
            healthy: h.healthy.0 as u32,
            unhealthy: h.unhealthy.0 as u32,
        });
        groups.push(UpstreamConfig {
            name: name.clone(),
            servers,
            balance: g.balance,
            affinity: matches!(g.affinity, RawAffinity::Session),
            health,
            ca_file,
            connect_timeout: g.connect_timeout.0,
            timeout: g.timeout.0,
            preserve_host: g.preserve_host,
            rewrite_redirects: g.rewrite_redirects,
        });
    }
    Ok(groups)
}
