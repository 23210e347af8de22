//! The configuration file: YAML → raw serde structs → a validated [`Config`].
//!
//! Everything downstream trusts a `Config`: durations are `Duration`s, addresses are
//! `SocketAddr`s, secrets are signing keys. Every error names the file, the line and
//! column, and the dotted key; no error ever echoes a secret.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use ipnet::IpNet;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use crate::cookie::{CookieSettings, SameSite, SecureMode, SigningKeys};
pub use crate::headers::HeaderNames;
pub use crate::session::redis::RedisConfig;

/// A configuration that failed to load.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read the configuration file")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML or a value does not fit its key.
    #[error("{path}:{line}:{column}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        line: u64,
        column: u64,
        key: String,
        message: String,
    },
}

/// The validated configuration the proxy runs with.
#[derive(Clone)]
pub struct Config {
    /// The file this configuration came from (for messages and reloads).
    pub origin: PathBuf,
    pub listen: Option<SocketAddr>,
    pub tls: Option<TlsConfig>,
    pub upstream: UpstreamConfig,
    pub session: SessionConfig,
    pub trusted_proxies: Vec<IpNet>,
    pub store: StoreConfig,
    pub admin: AdminConfig,
    pub limits: LimitsConfig,
    pub log: LogConfig,
    /// True when `--dev` replaced missing secrets with an ephemeral one.
    pub dev_secret: bool,
    /// The raw form, with defaults filled in, for `sessiongate check`.
    raw: RawConfig,
}

#[derive(Clone, Debug)]
pub struct TlsConfig {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub redirect_http: bool,
    pub hsts: Option<String>,
}

#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    /// Scheme and authority of the upstream, e.g. `http://127.0.0.1:3000`.
    pub uri: Uri,
    /// `host:port` to connect to (the scheme's default port filled in).
    pub connect_to: String,
    /// For `https://` upstreams: the verifying connector and the SNI name.
    pub tls: Option<crate::pool::UpstreamTls>,
    /// `upstream.ca_file`, for `check` and reloads.
    pub ca_file: Option<PathBuf>,
    /// A path prefix from the URL (empty when the URL has none).
    pub base_path: String,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub preserve_host: bool,
    /// `upstream.rewrite_redirects`: the upstream's own absolute URLs in `Location`,
    /// `Content-Location` and `Refresh` go to the client under its origin.
    pub rewrite_redirects: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreateMode {
    Always,
    OnWrite,
}

#[derive(Clone)]
pub struct SessionConfig {
    pub cookie: CookieSettings,
    pub keys: SigningKeys,
    pub idle_timeout: Duration,
    pub absolute_timeout: Duration,
    pub create: CreateMode,
    pub max_sessions: usize,
    pub max_data_bytes: usize,
    pub headers: HeaderNames,
    pub exclude_paths: Vec<String>,
    pub regenerate_grace: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreType {
    Memory,
    Redis,
}

#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub kind: StoreType,
    pub snapshot: Option<PathBuf>,
    pub snapshot_interval: Duration,
    pub redis: RedisConfig,
}

#[derive(Clone, Debug)]
pub struct AdminConfig {
    pub listen: Option<SocketAddr>,
    pub token: Option<String>,
}

#[derive(Clone, Debug)]
pub struct LimitsConfig {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_body_bytes: Option<u64>,
    pub shutdown_timeout: Duration,
    /// The longest pause between two reads of a request body (then `408`).
    pub client_body_timeout: Duration,
    /// The longest a write to the client may make no progress (then the
    /// connection is closed).
    pub send_timeout: Duration,
    /// An upgraded connection with no bytes either way this long is closed.
    pub tunnel_idle_timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Clone, Debug)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
    pub access: bool,
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
    pub fn parse(src: &str, origin: &Path, dev: bool) -> Result<Config, ConfigError> {
        let raw = parse_raw(src, origin)?;
        let located = Locator { src, origin };
        raw.validate(origin, &located, dev)
    }

    /// The effective configuration as YAML, defaults filled in, secrets redacted.
    pub fn to_redacted_yaml(&self) -> String {
        serde_saphyr::to_string(&self.raw)
            .unwrap_or_else(|e| format!("# cannot render the configuration: {e}\n"))
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

fn parse_raw(src: &str, origin: &Path) -> Result<RawConfig, ConfigError> {
    let options = serde_saphyr::options! { with_snippet: false };
    let mut key_path = String::new();
    let result = serde_saphyr::with_deserializer_from_str_with_options(src, options, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            key_path = e.path().to_string();
            e.into_inner()
        })
    });
    result.map_err(|err| {
        let (line, column) = err
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        let mut message = strip_location(&err.without_snippet().to_string());
        let mut key = if key_path.is_empty() || key_path == "." {
            "(document)".to_owned()
        } else {
            key_path.clone()
        };
        // The parser names a repeated key in its message, not in the path.
        if let Some(rest) = message.strip_prefix("duplicate mapping key: ") {
            let name = rest.split(',').next().unwrap_or(rest).trim().to_owned();
            let parent = key.trim_end_matches('?').trim_end_matches('.');
            key = if parent.is_empty() || parent == "(document)" {
                name
            } else {
                format!("{parent}.{name}")
            };
            message = "duplicate key: each key may appear once".to_owned();
        }
        ConfigError::Invalid {
            path: origin.to_owned(),
            line,
            column,
            key,
            message,
        }
    })
}

/// The YAML parser appends " at line L column C"; the error already carries both.
fn strip_location(msg: &str) -> String {
    let trimmed = match msg.rfind(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    };
    trimmed.trim().to_owned()
}

/// Finds the line of a dotted key for errors found after parsing (cross-field rules).
struct Locator<'a> {
    src: &'a str,
    origin: &'a Path,
}

impl Locator<'_> {
    fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let (line, column) = self.find(key);
        ConfigError::Invalid {
            path: self.origin.to_owned(),
            line,
            column,
            key: key.to_owned(),
            message: message.into(),
        }
    }

    /// A line-based search: follows the dotted path through indentation levels. Good
    /// enough for block-style YAML; flow style falls back to the nearest parent found.
    fn find(&self, key: &str) -> (u64, u64) {
        let mut best = (1, 1);
        let mut parent_indent: Option<usize> = None;
        let mut lines = self.src.lines().enumerate();
        for part in key.split('.') {
            let part = part.split('[').next().unwrap_or(part);
            let mut found = false;
            for (no, line) in lines.by_ref() {
                let indent = line.len() - line.trim_start().len();
                let body = line.trim_start();
                if body.is_empty() || body.starts_with('#') {
                    continue;
                }
                if let Some(p) = parent_indent {
                    if indent <= p {
                        break;
                    }
                }
                if body.starts_with(&format!("{part}:")) {
                    best = (no as u64 + 1, indent as u64 + 1);
                    parent_indent = Some(indent);
                    found = true;
                    break;
                }
            }
            if !found {
                break;
            }
        }
        best
    }
}

// ---------------------------------------------------------------------------------
// Value types that parse (and expand `${VAR}`) while the YAML parser still knows the
// location, so their errors carry line and column.

/// Replaces `${NAME}` with the environment variable NAME; `$$` is a literal `$`.
pub fn expand_env(input: &str) -> Result<String, String> {
    if !input.contains('$') {
        return Ok(input.to_owned());
    }
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| "unterminated ${ in value".to_owned())?;
            let name = &body[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("invalid variable name in ${{{name}}}"));
            }
            match std::env::var(name) {
                Ok(v) => out.push_str(&v),
                Err(_) => return Err(format!("environment variable {name} is not set")),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Reads a string and expands `${VAR}` in it, while the parser still knows where
/// the value is (so errors carry its line and column).
fn expanded<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    expand_env(&s).map_err(de::Error::custom)
}

/// A string with `${VAR}` expanded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        expanded(d).map(Text)
    }
}

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// A secret: expanded like [`Text`], never printed.
#[derive(Clone, Default, PartialEq, Eq)]
struct Secret(String);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        expanded(d).map(Secret)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
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

/// An entry of `session.secrets`. An unset `${VAR}` is kept as such, so that the
/// error can say how to make a secret, and so that `--dev` can run without one.
#[derive(Clone, Default, PartialEq, Eq)]
struct SigningSecret {
    value: String,
    /// The variable that was not set, if any.
    unset: Option<String>,
}

impl<'de> Deserialize<'de> for SigningSecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match expand_env(&s) {
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

/// A duration such as `500ms`, `30s`, `30m`, `24h`, `7d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

/// Parses `500ms`, `30s`, `30m`, `24h`, `7d` (a bare `0` is zero).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(unit_ms).map(Duration::from_millis)
}

fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms != 0 && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = expanded(d)?;
        parse_duration(&s).map(Dur).ok_or_else(|| {
            de::Error::custom(format!(
                "invalid duration {s:?} (expected a number with ms, s, m, h or d, e.g. 30m)"
            ))
        })
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

/// A socket address such as `127.0.0.1:8080` or `[::1]:8080`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Addr(SocketAddr);

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = expanded(d)?;
        s.parse().map(Addr).map_err(|_| {
            de::Error::custom(format!(
                "invalid address {s:?} (expected IP:PORT, e.g. 127.0.0.1:8080 or [::1]:8080)"
            ))
        })
    }
}

impl Serialize for Addr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// A CIDR such as `10.0.0.0/8`; a bare address means a single host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cidr(IpNet);

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = expanded(d)?;
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(Cidr(net));
        }
        s.parse::<std::net::IpAddr>()
            .map(|ip| Cidr(IpNet::from(ip)))
            .map_err(|_| {
                de::Error::custom(format!("invalid CIDR {s:?} (expected e.g. 10.0.0.0/8)"))
            })
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

// ---------------------------------------------------------------------------------
// The raw file shape: every key of the contract, with its default.

/// `listen` absent means 127.0.0.1:8080, or no plain listener when `tls` is set.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    listen: Option<Addr>,
    tls: Option<RawTls>,
    upstream: RawUpstream,
    session: RawSession,
    trusted_proxies: Vec<Cidr>,
    store: RawStore,
    admin: RawAdmin,
    limits: RawLimits,
    log: RawLog,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    listen: Addr,
    cert: Text,
    key: Text,
    #[serde(default)]
    redirect_http: bool,
    #[serde(default)]
    hsts: Option<Text>,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawUpstream {
    url: Text,
    ca_file: Option<Text>,
    connect_timeout: Dur,
    timeout: Dur,
    preserve_host: bool,
    rewrite_redirects: bool,
}

impl Default for RawUpstream {
    fn default() -> Self {
        RawUpstream {
            url: Text("http://127.0.0.1:3000".into()),
            ca_file: None,
            connect_timeout: Dur(Duration::from_secs(5)),
            timeout: Dur(Duration::from_secs(60)),
            preserve_host: false,
            rewrite_redirects: true,
        }
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

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSession {
    cookie_name: Text,
    host_prefix: bool,
    secure: SecureSetting,
    http_only: bool,
    same_site: SameSite,
    path: Text,
    domain: Option<Text>,
    persistent: bool,
    secrets: Vec<SigningSecret>,
    idle_timeout: Dur,
    absolute_timeout: Dur,
    create: CreateMode,
    max_sessions: usize,
    max_data_bytes: usize,
    header_prefix: Text,
    exclude_paths: Vec<Text>,
    regenerate_grace: Dur,
}

impl Default for RawSession {
    fn default() -> Self {
        RawSession {
            cookie_name: Text("sessiongate".into()),
            host_prefix: true,
            secure: SecureSetting(SecureMode::Auto),
            http_only: true,
            same_site: SameSite::Lax,
            path: Text("/".into()),
            domain: None,
            persistent: true,
            secrets: Vec::new(),
            idle_timeout: Dur(Duration::from_secs(30 * 60)),
            absolute_timeout: Dur(Duration::from_secs(24 * 3600)),
            create: CreateMode::Always,
            max_sessions: 1_000_000,
            max_data_bytes: 4096,
            header_prefix: Text("X-Session-".into()),
            exclude_paths: Vec::new(),
            regenerate_grace: Dur(Duration::from_secs(10)),
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawStore {
    #[serde(rename = "type")]
    kind: StoreType,
    snapshot: Option<Text>,
    snapshot_interval: Dur,
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
}

impl Default for RawRedis {
    fn default() -> Self {
        RawRedis {
            url: RedisUrl("redis://127.0.0.1:6379".into()),
            key_prefix: Text("sessiongate:".into()),
            timeout: Dur(Duration::from_millis(500)),
            cluster: false,
            nodes: Vec::new(),
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAdmin {
    listen: Option<Addr>,
    token: Option<Secret>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            listen: Some(Addr(SocketAddr::from(([127, 0, 0, 1], 9091)))),
            token: None,
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    max_connections: usize,
    header_read_timeout: Dur,
    max_header_bytes: usize,
    max_body_bytes: Option<u64>,
    shutdown_timeout: Dur,
    client_body_timeout: Dur,
    send_timeout: Dur,
    tunnel_idle_timeout: Dur,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_connections: 10_000,
            header_read_timeout: Dur(Duration::from_secs(10)),
            max_header_bytes: 65_536,
            max_body_bytes: None,
            shutdown_timeout: Dur(Duration::from_secs(30)),
            client_body_timeout: Dur(Duration::from_secs(60)),
            send_timeout: Dur(Duration::from_secs(60)),
            tunnel_idle_timeout: Dur(Duration::from_secs(3600)),
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    format: LogFormat,
    level: Text,
    access: bool,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            format: LogFormat::Pretty,
            level: Text("info".into()),
            access: true,
        }
    }
}

/// The smallest secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

impl RawConfig {
    fn validate(
        mut self,
        origin: &Path,
        at: &Locator<'_>,
        dev: bool,
    ) -> Result<Config, ConfigError> {
        // Listeners: `listen` is optional when `tls` is set.
        if self.listen.is_none() && self.tls.is_none() {
            self.listen = Some(Addr(SocketAddr::from(([127, 0, 0, 1], 8080))));
        }

        // Upstream.
        let uri: Uri = self.upstream.url.0.parse().map_err(|_| {
            at.error(
                "upstream.url",
                "invalid URL (expected e.g. http://127.0.0.1:3000)",
            )
        })?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => {
                return Err(at.error(
                    "upstream.url",
                    "the URL must start with http:// or https://",
                ))
            }
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| at.error("upstream.url", "the URL has no host"))?;
        if uri.query().is_some() {
            return Err(at.error("upstream.url", "the URL must not have a query string"));
        }
        let base_path = uri.path().trim_end_matches('/').to_owned();
        let upstream_uri = Uri::builder()
            .scheme(uri.scheme_str().unwrap_or("http"))
            .authority(authority)
            .path_and_query("/")
            .build()
            .map_err(|_| at.error("upstream.url", "invalid URL"))?;
        let ca_file = self
            .upstream
            .ca_file
            .as_ref()
            .map(|p| relative_to(origin, &p.0));
        let upstream_tls = if upstream_uri.scheme_str() == Some("https") {
            let client = crate::tls::client_config(ca_file.as_deref()).map_err(|e| {
                let key = if ca_file.is_some() {
                    "upstream.ca_file"
                } else {
                    "upstream.url"
                };
                at.error(key, crate::chain::Chain(&e).to_string())
            })?;
            let host = upstream_uri
                .host()
                .unwrap_or_default()
                .trim_matches(['[', ']'])
                .to_owned();
            let server_name = rustls::pki_types::ServerName::try_from(host)
                .map_err(|_| at.error("upstream.url", "the host is not a valid TLS server name"))?;
            Some(crate::pool::UpstreamTls {
                connector: tokio_rustls::TlsConnector::from(client),
                server_name,
            })
        } else {
            if ca_file.is_some() {
                return Err(at.error("upstream.ca_file", "ca_file needs an https:// upstream.url"));
            }
            None
        };
        for (key, value) in [
            ("upstream.connect_timeout", &self.upstream.connect_timeout),
            ("upstream.timeout", &self.upstream.timeout),
        ] {
            if value.0.is_zero() {
                return Err(at.error(key, "must be greater than zero"));
            }
        }

        // Session.
        let s = &self.session;
        let name = s.cookie_name.0.as_str();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(at.error(
                "session.cookie_name",
                "a cookie name is letters, digits, '-', '_' or '.'",
            ));
        }
        if !s.path.0.starts_with('/') || s.path.0.bytes().any(|b| b.is_ascii_control() || b == b';')
        {
            return Err(at.error(
                "session.path",
                "the path must start with '/' and hold no ';'",
            ));
        }
        if let Some(domain) = &s.domain {
            if domain.0.is_empty()
                || !domain
                    .0
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
            {
                return Err(at.error("session.domain", "invalid domain"));
            }
        }
        if s.same_site == SameSite::None && s.secure.0 == SecureMode::Never {
            return Err(at.error(
                "session.same_site",
                "same_site: none needs secure cookies (browsers drop SameSite=None without Secure)",
            ));
        }
        for (key, value) in [
            ("session.idle_timeout", &s.idle_timeout),
            ("session.absolute_timeout", &s.absolute_timeout),
        ] {
            if value.0 < Duration::from_secs(1) {
                return Err(at.error(key, "must be at least 1s"));
            }
        }
        if s.max_sessions == 0 {
            return Err(at.error("session.max_sessions", "must be at least 1"));
        }
        if s.max_data_bytes == 0 {
            return Err(at.error("session.max_data_bytes", "must be at least 1"));
        }
        let headers = HeaderNames::new(&s.header_prefix.0)
            .ok_or_else(|| at.error("session.header_prefix", "not a valid header name prefix"))?;
        for (i, p) in s.exclude_paths.iter().enumerate() {
            if !p.0.starts_with('/') {
                return Err(at.error(
                    &format!("session.exclude_paths[{i}]"),
                    "a path prefix must start with '/'",
                ));
            }
        }

        // Secrets: never echoed, only counted and measured.
        let unset: Vec<&str> = s
            .secrets
            .iter()
            .filter_map(|x| x.unset.as_deref())
            .collect();
        if !unset.is_empty() && !dev {
            return Err(at.error(
                "session.secrets",
                format!(
                    "environment variable {} is not set: export {}=$(sessiongate gen-secret), \
                     or run with --dev for an ephemeral secret",
                    unset[0], unset[0]
                ),
            ));
        }
        let mut dev_secret = false;
        let secrets: Vec<Vec<u8>> = s
            .secrets
            .iter()
            .filter(|x| x.unset.is_none() && !x.value.is_empty())
            .map(|x| x.value.clone().into_bytes())
            .collect();
        let keys = if secrets.is_empty() {
            if !dev {
                return Err(at.error(
                    "session.secrets",
                    "no secret is set: add one made by `sessiongate gen-secret` \
                     (e.g. secrets: [\"${SESSIONGATE_SECRET}\"] with \
                     export SESSIONGATE_SECRET=$(sessiongate gen-secret)), \
                     or run with --dev for an ephemeral secret",
                ));
            }
            dev_secret = true;
            SigningKeys::new(&[crate::cookie::random_secret()])
        } else {
            for (i, x) in s.secrets.iter().enumerate() {
                let len = x.value.len();
                if x.unset.is_none() && len < MIN_SECRET_BYTES {
                    return Err(at.error(
                        &format!("session.secrets[{i}]"),
                        format!(
                            "the secret is {len} bytes; at least {MIN_SECRET_BYTES} are required \
                             (make one with `sessiongate gen-secret`)"
                        ),
                    ));
                }
            }
            SigningKeys::new(&secrets)
        };

        // Store.
        let r = &self.store.redis;
        if self.store.kind == StoreType::Redis {
            for (i, node) in r.nodes.iter().enumerate() {
                if !(node.0.starts_with("redis://") || node.0.starts_with("rediss://")) {
                    return Err(at.error(
                        &format!("store.redis.nodes[{i}]"),
                        "expected a redis:// or rediss:// URL",
                    ));
                }
            }
            let url = r.url.0.as_str();
            if !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("unix://"))
            {
                return Err(at.error(
                    "store.redis.url",
                    "expected a redis://, rediss:// or unix:// URL",
                ));
            }
        }
        let snapshot = self
            .store
            .snapshot
            .as_ref()
            .map(|p| relative_to(origin, &p.0));
        if let Some(path) = &snapshot {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            if dir.is_some_and(|d| !d.is_dir()) {
                return Err(at.error(
                    "store.snapshot",
                    format!("the directory of {} does not exist", path.display()),
                ));
            }
        }
        if let Some(t) = &self.tls {
            // The pair the HTTPS listener will serve, read now so that `check` and a
            // reload report a missing or broken file with its line.
            let (cert, key) = (
                relative_to(origin, &t.cert.0),
                relative_to(origin, &t.key.0),
            );
            if let Err(e) = crate::tls::server_config(&cert, &key) {
                let field = match e {
                    crate::tls::TlsError::Key { .. } => "tls.key",
                    _ => "tls.cert",
                };
                return Err(at.error(field, crate::chain::Chain(&e).to_string()));
            }
        }
        if self.store.snapshot_interval.0.is_zero() {
            return Err(at.error("store.snapshot_interval", "must be greater than zero"));
        }

        // Admin: a session API reachable from the network needs a token.
        if let Some(addr) = self.admin.listen {
            if !addr.0.ip().is_loopback() && self.admin.token.is_none() {
                return Err(at.error(
                    "admin.listen",
                    format!(
                        "{} is not a loopback address and admin.token is not set: anybody who \
                         reaches it could read and destroy sessions; set admin.token or listen on 127.0.0.1",
                        addr.0
                    ),
                ));
            }
        }

        // Limits.
        let l = &self.limits;
        if l.max_connections == 0 {
            return Err(at.error("limits.max_connections", "must be at least 1"));
        }
        if l.max_header_bytes < 8192 {
            return Err(at.error("limits.max_header_bytes", "must be at least 8192"));
        }
        for (key, value) in [
            ("limits.client_body_timeout", &l.client_body_timeout),
            ("limits.send_timeout", &l.send_timeout),
            ("limits.tunnel_idle_timeout", &l.tunnel_idle_timeout),
        ] {
            if value.0.is_zero() {
                return Err(at.error(key, "must be greater than zero"));
            }
        }

        // Log.
        if !is_log_level(&self.log.level.0) {
            return Err(at.error(
                "log.level",
                format!(
                    "`{}` is not a level: expected error, warn, info, debug, trace, \
                     or a filter with `=` such as `info,sessiongate=debug`",
                    self.log.level.0
                ),
            ));
        }

        let cookie = CookieSettings {
            name: s.cookie_name.0.clone(),
            host_prefix: s.host_prefix,
            secure: s.secure.0,
            http_only: s.http_only,
            same_site: s.same_site,
            path: s.path.0.clone(),
            domain: s.domain.as_ref().map(|d| d.0.clone()),
            max_age: s.persistent.then_some(s.absolute_timeout.0),
        };

        let session = SessionConfig {
            cookie,
            keys,
            idle_timeout: s.idle_timeout.0,
            absolute_timeout: s.absolute_timeout.0,
            create: s.create.clone(),
            max_sessions: s.max_sessions,
            max_data_bytes: s.max_data_bytes,
            headers,
            exclude_paths: s.exclude_paths.iter().map(|p| p.0.clone()).collect(),
            regenerate_grace: s.regenerate_grace.0,
        };

        let config = Config {
            origin: origin.to_owned(),
            listen: self.listen.map(|a| a.0),
            tls: self.tls.as_ref().map(|t| TlsConfig {
                listen: t.listen.0,
                cert: relative_to(origin, &t.cert.0),
                key: relative_to(origin, &t.key.0),
                redirect_http: t.redirect_http,
                hsts: t.hsts.as_ref().map(|h| h.0.clone()),
            }),
            upstream: UpstreamConfig {
                connect_to: match upstream_uri.port_u16() {
                    Some(_) => upstream_uri
                        .authority()
                        .map_or_else(String::new, |a| a.to_string()),
                    None => format!(
                        "{}:{}",
                        upstream_uri.host().unwrap_or_default(),
                        if upstream_uri.scheme_str() == Some("https") {
                            443
                        } else {
                            80
                        }
                    ),
                },
                uri: upstream_uri,
                tls: upstream_tls,
                ca_file,
                base_path,
                connect_timeout: self.upstream.connect_timeout.0,
                timeout: self.upstream.timeout.0,
                preserve_host: self.upstream.preserve_host,
                rewrite_redirects: self.upstream.rewrite_redirects,
            },
            session,
            trusted_proxies: self.trusted_proxies.iter().map(|c| c.0).collect(),
            store: StoreConfig {
                kind: self.store.kind.clone(),
                snapshot,
                snapshot_interval: self.store.snapshot_interval.0,
                redis: RedisConfig {
                    url: r.url.0.clone(),
                    key_prefix: r.key_prefix.0.clone(),
                    timeout: r.timeout.0,
                    cluster: r.cluster,
                    nodes: r.nodes.iter().map(|n| n.0.clone()).collect(),
                },
            },
            admin: AdminConfig {
                listen: self.admin.listen.map(|a| a.0),
                token: self.admin.token.as_ref().map(|t| t.0.clone()),
            },
            limits: LimitsConfig {
                max_connections: l.max_connections,
                header_read_timeout: l.header_read_timeout.0,
                max_header_bytes: l.max_header_bytes,
                max_body_bytes: l.max_body_bytes,
                shutdown_timeout: l.shutdown_timeout.0,
                client_body_timeout: l.client_body_timeout.0,
                send_timeout: l.send_timeout.0,
                tunnel_idle_timeout: l.tunnel_idle_timeout.0,
            },
            log: LogConfig {
                format: self.log.format.clone(),
                level: self.log.level.0.clone(),
                access: self.log.access,
            },
            dev_secret,
            raw: {
                // Keep the raw form for `check`, with every secret shown as redacted.
                self.session
                    .secrets
                    .iter_mut()
                    .for_each(|s| s.value.clear());
                self
            },
        };
        Ok(config)
    }
}

/// A path from the config file: a relative one is taken from the file's directory,
/// not from wherever the proxy was started.
fn relative_to(origin: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    match origin.parent() {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_owned(),
    }
}

/// A level name, or a filter whose every directive names its level with `=` (a bare
/// word would be read as a target name, and `infoo` would silence every line).
fn is_log_level(value: &str) -> bool {
    const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];
    let value = value.trim();
    if LEVELS.iter().any(|l| value.eq_ignore_ascii_case(l)) {
        return true;
    }
    value.contains('=')
        && tracing_subscriber::EnvFilter::try_new(value).is_ok()
        && value.split(',').all(|directive| {
            let directive = directive.trim();
            LEVELS.iter().any(|l| directive.eq_ignore_ascii_case(l))
                || directive.rsplit_once('=').is_some_and(|(_, level)| {
                    LEVELS
                        .iter()
                        .chain(&["off"])
                        .any(|l| level.trim().eq_ignore_ascii_case(l))
                })
        })
}

#[cfg(test)]
mod tests {
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
        assert_eq!(c.upstream.uri.to_string(), "http://127.0.0.1:3000/");
        assert_eq!(c.upstream.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.upstream.timeout, Duration::from_secs(60));
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
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("30m"), Some(Duration::from_secs(1800)));
        assert_eq!(parse_duration("24h"), Some(Duration::from_secs(86400)));
        assert_eq!(parse_duration("30x"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("99999999999999999999s"), None);
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
        assert_eq!(line, 2);
        assert!(!msg.contains("tooshortsecret"), "{msg}");
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
