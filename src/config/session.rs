//! `session`: the cookie, the signing secrets, the timeouts and bounds, and the
//! names of the session headers.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use super::source::{ConfigError, Source};
use super::values::{expand_env, expanded, AtLeast, Checked, Dur, Rule, SessionTimeout, Text};
use crate::cookie::{CookieSettings, SameSite, SecureMode, SigningKeys};
use crate::headers::HeaderNames;

/// The smallest secret accepted, in bytes.
const MIN_SECRET_BYTES: usize = 32;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreateMode {
    Always,
    OnWrite,
}

/// `session.data_format`: how `X-Session-Data` is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataFormat {
    /// `application/x-www-form-urlencoded`, keys sorted.
    Form,
    /// A JSON object, keys sorted, ASCII only.
    Json,
}

#[derive(Clone)]
pub struct SessionConfig {
    pub(crate) cookie: CookieSettings,
    pub(crate) keys: SigningKeys,
    pub(crate) idle_timeout: Duration,
    pub(crate) absolute_timeout: Duration,
    pub(crate) create: CreateMode,
    pub(crate) max_sessions: usize,
    pub(crate) max_data_bytes: usize,
    pub headers: HeaderNames,
    pub(crate) exclude_paths: Vec<String>,
    pub(crate) regenerate_grace: Duration,
    pub(crate) data_format: DataFormat,
    /// `session.user_key`: sessions are indexed by this data key's value.
    pub(crate) user_key: Option<String>,
    pub(crate) max_per_user: Option<usize>,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawSession {
    cookie_name: Checked<CookieName>,
    host_prefix: bool,
    secure: SecureSetting,
    http_only: bool,
    same_site: SameSite,
    path: Checked<CookiePath>,
    domain: Option<Checked<CookieDomain>>,
    persistent: bool,
    pub(super) secrets: Vec<SigningSecret>,
    idle_timeout: SessionTimeout,
    absolute_timeout: SessionTimeout,
    create: CreateMode,
    max_sessions: AtLeast<1>,
    max_data_bytes: AtLeast<1>,
    header_prefix: HeaderPrefix,
    exclude_paths: Vec<Checked<PathPrefix>>,
    regenerate_grace: Dur,
    data_format: DataFormat,
    user_key: Option<Text>,
    max_per_user: Option<AtLeast<1>>,
}

impl Default for RawSession {
    fn default() -> Self {
        RawSession {
            cookie_name: Checked::new("sessiongate"),
            host_prefix: true,
            secure: SecureSetting(SecureMode::Auto),
            http_only: true,
            same_site: SameSite::Lax,
            path: Checked::new("/"),
            domain: None,
            persistent: true,
            secrets: Vec::new(),
            idle_timeout: Dur(Duration::from_secs(30 * 60)),
            absolute_timeout: Dur(Duration::from_secs(24 * 3600)),
            create: CreateMode::Always,
            max_sessions: AtLeast(1_000_000),
            max_data_bytes: AtLeast(4096),
            header_prefix: HeaderPrefix::parse("X-Session-").expect("the default prefix is valid"),
            exclude_paths: Vec::new(),
            regenerate_grace: Dur(Duration::from_secs(10)),
            data_format: DataFormat::Form,
            user_key: None,
            max_per_user: None,
        }
    }
}

impl RawSession {
    /// Checks what spans keys, and makes the signing keys: with `dev`, a missing
    /// secret becomes an ephemeral one (the `bool` says so).
    pub(super) fn validate(
        &self,
        src: &Source<'_>,
        dev: bool,
    ) -> Result<(SessionConfig, bool), ConfigError> {
        if self.same_site == SameSite::None && self.secure.0 == SecureMode::Never {
            return Err(src.error(
                "session.same_site",
                "same_site: none needs secure cookies (browsers drop SameSite=None without Secure)",
            ));
        }
        let (keys, ephemeral) = self.signing_keys(src, dev)?;
        if let Some(Text(key)) = &self.user_key {
            if key.is_empty() || key.starts_with(' ') {
                return Err(src.error(
                    "session.user_key",
                    "needs the name of a session data key (e.g. user)",
                ));
            }
        }
        if self.max_per_user.is_some() && self.user_key.is_none() {
            return Err(src.error(
                "session.max_per_user",
                "needs session.user_key: the sessions of a user are those whose data holds \
                 the same value under that key",
            ));
        }
        let cookie = CookieSettings {
            name: self.cookie_name.text.clone(),
            host_prefix: self.host_prefix,
            secure: self.secure.0,
            http_only: self.http_only,
            same_site: self.same_site,
            path: self.path.text.clone(),
            domain: self.domain.as_ref().map(|d| d.text.clone()),
            max_age: self.persistent.then_some(self.absolute_timeout.0),
        };
        let session = SessionConfig {
            cookie,
            keys,
            idle_timeout: self.idle_timeout.0,
            absolute_timeout: self.absolute_timeout.0,
            create: self.create.clone(),
            max_sessions: self.max_sessions.0,
            max_data_bytes: self.max_data_bytes.0,
            headers: self.header_prefix.names.clone(),
            exclude_paths: self.exclude_paths.iter().map(|p| p.text.clone()).collect(),
            regenerate_grace: self.regenerate_grace.0,
            data_format: self.data_format,
            user_key: self.user_key.as_ref().map(|t| t.0.clone()),
            max_per_user: self.max_per_user.map(|m| m.0),
        };
        Ok((session, ephemeral))
    }

    /// Keys from the secrets that are set, or with `dev` and none set, from an
    /// ephemeral one. Secrets are never echoed, only counted and measured.
    fn signing_keys(
        &self,
        src: &Source<'_>,
        dev: bool,
    ) -> Result<(SigningKeys, bool), ConfigError> {
        let unset = self.secrets.iter().find_map(|x| x.unset.as_deref());
        if let (Some(name), false) = (unset, dev) {
            return Err(src.error(
                "session.secrets",
                format!(
                    "environment variable {name} is not set: export {name}=$(sessiongate gen-secret), \
                     or run with --dev for an ephemeral secret"
                ),
            ));
        }
        let set: Vec<&[u8]> = self
            .secrets
            .iter()
            .filter(|x| !x.value.is_empty())
            .map(|x| x.value.as_bytes())
            .collect();
        if set.is_empty() {
            if !dev {
                return Err(src.error(
                    "session.secrets",
                    "no secret is set: add one made by `sessiongate gen-secret` \
                     (e.g. secrets: [\"${SESSIONGATE_SECRET}\"] with \
                     export SESSIONGATE_SECRET=$(sessiongate gen-secret)), \
                     or run with --dev for an ephemeral secret",
                ));
            }
            return Ok((SigningKeys::new(&[crate::cookie::random_secret()]), true));
        }
        // Beside secrets that are set, an empty one is a mistake, not "unset".
        let empty = self
            .secrets
            .iter()
            .position(|x| x.unset.is_none() && x.value.is_empty());
        if let Some(i) = empty {
            return Err(src.error(&format!("session.secrets[{i}]"), too_short(0)));
        }
        Ok((SigningKeys::new(&set), false))
    }
}

fn too_short(len: usize) -> String {
    format!(
        "the secret is {len} bytes; at least {MIN_SECRET_BYTES} are required \
         (make one with `sessiongate gen-secret`)"
    )
}

/// `session.cookie_name`.
enum CookieName {}

impl Rule for CookieName {
    fn accepts(name: &str) -> bool {
        made_of(name, b"-_.")
    }
    fn refusal(_: &str) -> String {
        "a cookie name is letters, digits, '-', '_' or '.'".into()
    }
}

/// `session.path`.
enum CookiePath {}

impl Rule for CookiePath {
    fn accepts(path: &str) -> bool {
        path.starts_with('/') && !path.bytes().any(|b| b.is_ascii_control() || b == b';')
    }
    fn refusal(_: &str) -> String {
        "the path must start with '/' and hold no ';'".into()
    }
}

/// `session.domain`.
enum CookieDomain {}

impl Rule for CookieDomain {
    fn accepts(domain: &str) -> bool {
        made_of(domain, b"-.")
    }
    fn refusal(_: &str) -> String {
        "invalid domain".into()
    }
}

/// Not empty, and only letters, digits and the bytes of `extra`.
fn made_of(value: &str, extra: &[u8]) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
}

/// An entry of `session.exclude_paths`.
enum PathPrefix {}

impl Rule for PathPrefix {
    fn accepts(prefix: &str) -> bool {
        prefix.starts_with('/')
    }
    fn refusal(_: &str) -> String {
        "a path prefix must start with '/'".into()
    }
}

/// `session.header_prefix`, and the header names made from it.
#[derive(Clone)]
struct HeaderPrefix {
    text: String,
    names: HeaderNames,
}

impl HeaderPrefix {
    fn parse(text: &str) -> Option<HeaderPrefix> {
        let names = HeaderNames::new(text)?;
        Some(HeaderPrefix {
            text: text.to_owned(),
            names,
        })
    }
}

impl<'de> Deserialize<'de> for HeaderPrefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        HeaderPrefix::parse(&expanded(d)?)
            .ok_or_else(|| de::Error::custom("not a valid header name prefix"))
    }
}

impl Serialize for HeaderPrefix {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

/// `secure:` accepts `auto` or a YAML boolean.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SecureSetting(SecureMode);

impl<'de> Deserialize<'de> for SecureSetting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = SecureSetting;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("auto, true or false")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<SecureSetting, E> {
                Ok(SecureSetting(if v {
                    SecureMode::Always
                } else {
                    SecureMode::Never
                }))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SecureSetting, E> {
                match v {
                    "auto" => Ok(SecureSetting(SecureMode::Auto)),
                    "true" => Ok(SecureSetting(SecureMode::Always)),
                    "false" => Ok(SecureSetting(SecureMode::Never)),
                    other => Err(E::custom(format!(
                        "invalid value {other:?} (expected auto, true or false)"
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for SecureSetting {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            SecureMode::Auto => s.serialize_str("auto"),
            SecureMode::Always => s.serialize_bool(true),
            SecureMode::Never => s.serialize_bool(false),
        }
    }
}

/// An entry of `session.secrets`. An unset `${VAR}` is kept as such, so that the
/// error can say how to make a secret, and so that `--dev` can run without one.
/// A secret that is set is at least [`MIN_SECRET_BYTES`] long.
#[derive(Clone, Default, PartialEq, Eq)]
pub(super) struct SigningSecret {
    /// Cleared once the keys are made: the raw form kept for `check` holds none.
    pub(super) value: String,
    /// The variable that was not set, if any.
    unset: Option<String>,
}

impl<'de> Deserialize<'de> for SigningSecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match expand_env(&s) {
            Ok(value) if !value.is_empty() && value.len() < MIN_SECRET_BYTES => {
                Err(de::Error::custom(too_short(value.len())))
            }
            Ok(value) => Ok(SigningSecret { value, unset: None }),
            Err(_) => match unset_variable(&s) {
                Some(name) => Ok(SigningSecret {
                    value: String::new(),
                    unset: Some(name),
                }),
                None => Err(de::Error::custom("invalid ${...} reference")),
            },
        }
    }
}

impl Serialize for SigningSecret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// The first `${NAME}` in `s` whose variable is unset.
fn unset_variable(s: &str) -> Option<String> {
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        let body = &rest[i + 2..];
        let end = body.find('}')?;
        let name = &body[..end];
        if std::env::var(name).is_err() {
            return Some(name.to_owned());
        }
        rest = &body[end + 1..];
    }
    None
}
