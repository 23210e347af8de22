//! Value types that parse, expand `${VAR}` and check themselves while the YAML
//! parser still knows where they are, so that their errors carry the line, the
//! column and the exact key. A check that needs only the value lives here, in the
//! value's type; checks that span keys live in the section that owns them.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

/// Replaces `${NAME}` with the environment variable NAME; `$$` is a literal `$`.
pub(super) fn expand_env(input: &str) -> Result<String, String> {
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
pub(super) fn expanded<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    expand_env(&s).map_err(de::Error::custom)
}

/// A string with `${VAR}` expanded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Text(pub(super) String);

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

/// What a [`Checked`] string must be.
pub(super) trait Rule {
    fn accepts(value: &str) -> bool;
    /// What is wrong with a value it refuses, in words for the operator.
    fn refusal(value: &str) -> String;
}

/// A string with `${VAR}` expanded that `R` accepts.
pub(super) struct Checked<R> {
    pub(super) text: String,
    rule: PhantomData<R>,
}

impl<R> Checked<R> {
    pub(super) fn new(text: &str) -> Checked<R> {
        Checked {
            text: text.to_owned(),
            rule: PhantomData,
        }
    }
}

impl<R> Clone for Checked<R> {
    fn clone(&self) -> Self {
        Checked::new(&self.text)
    }
}

impl<'de, R: Rule> Deserialize<'de> for Checked<R> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = expanded(d)?;
        if !R::accepts(&text) {
            return Err(de::Error::custom(R::refusal(&text)));
        }
        Ok(Checked {
            text,
            rule: PhantomData,
        })
    }
}

impl<R> Serialize for Checked<R> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

/// A secret: expanded like [`Text`], never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub(super) struct Secret(pub(super) String);

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

/// A duration such as `500ms`, `30s`, `30m`, `24h`, `7d`, of at least `MIN_MS`
/// milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Dur<const MIN_MS: u64 = 0>(pub(super) Duration);

/// A timeout: zero would fail every wait at once.
pub(super) type Timeout = Dur<1>;

/// A session timeout: the stores keep time to the second.
pub(super) type SessionTimeout = Dur<1000>;

/// Parses `500ms`, `30s`, `30m`, `24h`, `7d` (a bare `0` is zero).
pub(super) fn parse_duration(s: &str) -> Option<Duration> {
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

pub(super) fn format_duration(d: Duration) -> String {
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

impl<'de, const MIN_MS: u64> Deserialize<'de> for Dur<MIN_MS> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = expanded(d)?;
        let value = parse_duration(&s).ok_or_else(|| {
            de::Error::custom(format!(
                "invalid duration {s:?} (expected a number with ms, s, m, h or d, e.g. 30m)"
            ))
        })?;
        let min = Duration::from_millis(MIN_MS);
        if value >= min {
            Ok(Dur(value))
        } else if MIN_MS == 1 {
            Err(de::Error::custom("must be greater than zero"))
        } else {
            Err(de::Error::custom(format!(
                "must be at least {}",
                format_duration(min)
            )))
        }
    }
}

impl<const MIN_MS: u64> Serialize for Dur<MIN_MS> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

/// A count or a size in bytes of at least `MIN`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct AtLeast<const MIN: usize>(pub(super) usize);

impl<'de, const MIN: usize> Deserialize<'de> for AtLeast<MIN> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = usize::deserialize(d)?;
        if n < MIN {
            return Err(de::Error::custom(format!("must be at least {MIN}")));
        }
        Ok(AtLeast(n))
    }
}

impl<const MIN: usize> Serialize for AtLeast<MIN> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0 as u64)
    }
}

/// The most worker threads `workers` may ask for.
pub(super) const MAX_WORKERS: usize = 1024;

/// `workers:` — `auto` (one per core the process may use, as its CPU
/// affinity and cgroup quota allow: `None`), or a number from 1 to
/// [`MAX_WORKERS`], given as a YAML integer or a string (so `${VAR}` works).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Workers(pub(super) Option<std::num::NonZeroUsize>);

impl Workers {
    /// `n`, when it is a count from 1 to [`MAX_WORKERS`]; else the error,
    /// which shows the value as `shown`.
    fn of(n: Option<u64>, shown: impl std::fmt::Display) -> Result<Workers, String> {
        n.and_then(|n| usize::try_from(n).ok())
            .filter(|n| *n <= MAX_WORKERS)
            .and_then(std::num::NonZeroUsize::new)
            .map(|n| Workers(Some(n)))
            .ok_or_else(|| {
                format!("invalid worker count {shown} (expected auto or 1 to {MAX_WORKERS})")
            })
    }
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Workers;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(
                    f,
                    "auto or a number of worker threads from 1 to {MAX_WORKERS}"
                )
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Workers, E> {
                Workers::of(Some(n), n).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Workers, E> {
                Workers::of(u64::try_from(n).ok(), n).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Workers, E> {
                let v = expand_env(v).map_err(E::custom)?;
                match v.trim() {
                    "auto" => Ok(Workers(None)),
                    n => Workers::of(n.parse().ok(), format!("{v:?}")).map_err(E::custom),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Workers {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            None => s.serialize_str("auto"),
            Some(n) => s.serialize_u64(n.get() as u64),
        }
    }
}

/// A socket address such as `127.0.0.1:8080` or `[::1]:8080`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Addr(pub(super) SocketAddr);

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
pub(super) struct Cidr(pub(super) IpNet);

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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn durations_print_in_their_largest_whole_unit() {
        for (ms, shown) in [
            (0, "0ms"),
            (500, "500ms"),
            (90_000, "90s"),
            (1_800_000, "30m"),
        ] {
            assert_eq!(format_duration(Duration::from_millis(ms)), shown);
        }
    }
}
