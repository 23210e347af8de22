//! `routes`: an ordered list, first match wins, each naming its upstream group and
//! session rules. Values check themselves as they parse (a host pattern, a path
//! prefix, a login URL, an origin); what spans keys is checked here.

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use super::source::{ConfigError, Source};
use super::values::{Checked, Rule, Text};
use crate::route::{CrossSite, HostMatch, Require, Route};

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    #[serde(rename = "match", default)]
    matching: RawMatch,
    #[serde(default = "default_group")]
    upstream: Text,
    #[serde(default)]
    session: Switch,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    require: Option<RawRequire>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    login_url: Option<Checked<LoginUrl>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cross_site: Option<RawCrossSite>,
    #[serde(default)]
    trusted_origins: Vec<Checked<Origin>>,
}

fn default_group() -> Text {
    Text("default".to_owned())
}

#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<Checked<HostPattern>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<Checked<PathPrefix>>,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequire {
    key: Checked<Key>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    values: Option<Vec<Text>>,
}

#[derive(Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawCrossSite {
    Block,
    Allow,
}

/// `on` or `off` (YAML booleans too).
#[derive(Clone, Copy)]
struct Switch(bool);

impl Default for Switch {
    fn default() -> Self {
        Switch(true)
    }
}

impl<'de> Deserialize<'de> for Switch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Switch;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("on or off")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Switch, E> {
                Ok(Switch(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Switch, E> {
                match v {
                    "on" | "true" => Ok(Switch(true)),
                    "off" | "false" => Ok(Switch(false)),
                    _ => Err(E::custom(format!("expected on or off, not {v:?}"))),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl Serialize for Switch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0 { "on" } else { "off" })
    }
}

/// `example.com` or `*.example.com`: a host name without scheme, port or path.
pub(super) struct HostPattern;

impl Rule for HostPattern {
    fn accepts(value: &str) -> bool {
        let name = value.strip_prefix("*.").unwrap_or(value);
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
            && !name.starts_with('.')
            && !name.ends_with('.')
    }
    fn refusal(value: &str) -> String {
        format!(
            "{value:?} is not a host pattern (a host name such as app.example.com, or \
             *.example.com for its subdomains; no scheme, port or path)"
        )
    }
}

/// A path prefix beginning with `/`.
pub(super) struct PathPrefix;

impl Rule for PathPrefix {
    fn accepts(value: &str) -> bool {
        value.starts_with('/')
            && !value
                .bytes()
                .any(|b| b.is_ascii_control() || b == b' ' || b == b'?' || b == b'#')
    }
    fn refusal(value: &str) -> String {
        format!("{value:?} is not a path prefix (it begins with / and has no query)")
    }
}

/// A login page on this site: a path beginning with exactly one `/`.
pub(super) struct LoginUrl;

impl Rule for LoginUrl {
    fn accepts(value: &str) -> bool {
        value.starts_with('/')
            && !value.starts_with("//")
            && !value.starts_with("/\\")
            && !value
                .bytes()
                .any(|b| b.is_ascii_control() || b == b' ' || b == b'"' || b == b'#' || b >= 0x80)
    }
    fn refusal(value: &str) -> String {
        format!(
            "{value:?} is not a login URL on this site (a path beginning with exactly one /, \
             such as /login)"
        )
    }
}

/// A session data key.
pub(super) struct Key;

impl Rule for Key {
    fn accepts(value: &str) -> bool {
        !value.is_empty() && !value.chars().any(char::is_control)
    }
    fn refusal(_: &str) -> String {
        "the session key must not be empty".to_owned()
    }
}

/// `scheme://host[:port]`, as a browser sends it in `Origin`.
pub(super) struct Origin;

impl Rule for Origin {
    fn accepts(value: &str) -> bool {
        let Some((scheme, rest)) = value.split_once("://") else {
            return false;
        };
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, Some(p)),
            _ => (rest, None),
        };
        matches!(scheme, "http" | "https")
            && !host.is_empty()
            && host.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'[' | b']' | b':')
            })
            && port.is_none_or(|p| !p.is_empty() && p.parse::<u16>().is_ok())
    }
    fn refusal(value: &str) -> String {
        format!(
            "{value:?} is not an origin (scheme://host or scheme://host:port, such as \
             https://partner.example.com, without a path)"
        )
    }
}

impl RawRoute {
    /// The route, checked against the groups that exist (`groups`).
    pub(super) fn validate(
        &self,
        index: usize,
        src: &Source<'_>,
        groups: &[&str],
    ) -> Result<Route, ConfigError> {
        let key = |k: &str| format!("routes[{index}].{k}");
        if !groups.contains(&self.upstream.0.as_str()) {
            return Err(src.error(
                &key("upstream"),
                format!(
                    "no upstream group is named {:?} (the groups: {})",
                    self.upstream.0,
                    groups.join(", ")
                ),
            ));
        }
        let session = self.session.0;
        if self.require.is_some() && !session {
            return Err(src.error(
                &key("require"),
                "a route with session: off has no session for require to look in",
            ));
        }
        let host = match &self.matching.host {
            None => HostMatch::Any,
            Some(h) => match h.text.strip_prefix('*') {
                Some(suffix) => HostMatch::Suffix(suffix.to_ascii_lowercase()),
                None => HostMatch::Exact(h.text.to_ascii_lowercase()),
            },
        };
        let cross_site = match self.cross_site {
            Some(RawCrossSite::Block) => CrossSite::Block,
            Some(RawCrossSite::Allow) => CrossSite::Allow,
            None if session => CrossSite::Block,
            None => CrossSite::Allow,
        };
        Ok(Route {
            host,
            path: self
                .matching
                .path
                .as_ref()
                .map_or_else(|| "/".to_owned(), |p| p.text.clone()),
            upstream: self.upstream.0.clone(),
            session,
            require: self.require.as_ref().map(|r| Require {
                key: r.key.text.clone(),
                values: r
                    .values
                    .as_ref()
                    .map(|v| v.iter().map(|t| t.0.clone()).collect()),
            }),
            login_url: self.login_url.as_ref().map(|l| l.text.clone()),
            cross_site,
            trusted_origins: self
                .trusted_origins
                .iter()
                .map(|o| o.text.to_ascii_lowercase())
                .collect(),
        })
    }
}
