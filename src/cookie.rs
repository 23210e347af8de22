//! The session cookie: signing keys, `<id>.<tag>` sign and verify, and `Set-Cookie`.
//!
//! The tag is HMAC-SHA256 over a fixed context prefix and the 32 ID bytes, written
//! base64url without padding. The first key signs; every key verifies, so a secret can
//! be rotated without logging anybody out. Verification is constant time
//! (`Mac::verify_slice`).

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use http::HeaderValue;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::session::SessionId;

type HmacSha256 = Hmac<Sha256>;

/// Binds tags to this use: a tag made for something else with the same secret
/// never verifies as a session cookie.
const CONTEXT: &[u8] = b"sessiongate/v1\0";

/// Length of a cookie value: 43 ID characters, a dot, 43 tag characters.
pub const COOKIE_VALUE_LEN: usize = 43 + 1 + 43;

/// The HMAC keys, first one signing. Each holds the MAC state with the context
/// already absorbed, so signing costs one clone and one short update.
#[derive(Clone)]
pub struct SigningKeys {
    macs: Vec<HmacSha256>,
}

/// Which key verified a cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verified {
    /// Signed by the current (first) key.
    Current,
    /// Signed by an older key: re-sign on the next response.
    Older,
}

impl SigningKeys {
    /// Builds keys from secrets; the first signs. `secrets` must not be empty.
    pub fn new<S: AsRef<[u8]>>(secrets: &[S]) -> SigningKeys {
        let macs = secrets
            .iter()
            .map(|s| {
                let mut mac = <HmacSha256 as KeyInit>::new_from_slice(s.as_ref())
                    .expect("HMAC accepts keys of any length");
                mac.update(CONTEXT);
                mac
            })
            .collect();
        SigningKeys { macs }
    }

    fn tag(mac: &HmacSha256, id: &SessionId) -> [u8; 32] {
        let mut mac = mac.clone();
        mac.update(id.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The cookie value `<id>.<tag>` for `id`, signed with the first key.
    pub fn sign(&self, id: &SessionId) -> String {
        let tag = Self::tag(&self.macs[0], id);
        let mut out = String::with_capacity(COOKIE_VALUE_LEN);
        id.encode_into(&mut out);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(tag, &mut out);
        out
    }

    /// Parses and verifies a cookie value. Anything that does not parse or verify is
    /// `None`: the caller treats it as no cookie.
    pub fn verify(&self, value: &[u8]) -> Option<(SessionId, Verified)> {
        self.check(value).ok()
    }

    /// Like [`SigningKeys::verify`], saying why a value was refused.
    pub fn check(&self, value: &[u8]) -> Result<(SessionId, Verified), Refused> {
        if value.len() != COOKIE_VALUE_LEN || value[43] != b'.' {
            return Err(Refused::Malformed);
        }
        let id = SessionId::decode(&value[..43]).ok_or(Refused::Malformed)?;
        let mut tag = [0u8; 32];
        match URL_SAFE_NO_PAD.decode_slice(&value[44..], &mut tag) {
            Ok(32) => {}
            _ => return Err(Refused::Malformed),
        }
        for (i, mac) in self.macs.iter().enumerate() {
            let mut mac = mac.clone();
            mac.update(id.as_bytes());
            if mac.verify_slice(&tag).is_ok() {
                let which = if i == 0 {
                    Verified::Current
                } else {
                    Verified::Older
                };
                return Ok((id, which));
            }
        }
        Err(Refused::BadSignature)
    }
}

/// Why a cookie value was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    Malformed,
    BadSignature,
}

/// A fresh secret: 32 bytes from the OS CSPRNG, base64url (43 characters).
pub fn random_secret() -> Vec<u8> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    URL_SAFE_NO_PAD.encode(bytes).into_bytes()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecureMode {
    /// Secure on requests that arrived over TLS (or a trusted `X-Forwarded-Proto: https`).
    Auto,
    Always,
    Never,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

/// Cookie attributes from the configuration.
#[derive(Clone, Debug)]
pub struct CookieSettings {
    pub name: String,
    pub host_prefix: bool,
    pub secure: SecureMode,
    pub http_only: bool,
    pub same_site: SameSite,
    pub path: String,
    pub domain: Option<String>,
    /// `Max-Age` of persistent cookies (the absolute timeout); `None` = session cookie.
    pub max_age: Option<Duration>,
}

/// The cookie's name and attributes for one kind of request (plain or secure),
/// with the `Set-Cookie` suffix built once.
#[derive(Clone, Debug)]
pub(crate) struct CookieFlavor {
    pub(crate) name: String,
    pub(crate) secure: bool,
    /// `; Path=/; HttpOnly; SameSite=Lax` and friends, without Max-Age.
    attributes: String,
}

/// The two flavors the proxy may need, chosen per request by how it arrived.
#[derive(Clone, Debug)]
pub struct CookieJar {
    pub(crate) plain: CookieFlavor,
    pub(crate) secure: CookieFlavor,
    pub(crate) max_age: Option<Duration>,
}

impl CookieSettings {
    pub fn jar(&self) -> CookieJar {
        let flavor = |secure: bool| {
            let prefixed = secure && self.host_prefix && self.path == "/" && self.domain.is_none();
            let name = if prefixed {
                format!("__Host-{}", self.name)
            } else {
                self.name.clone()
            };
            // Built with the cookie crate so the attribute syntax is its, not ours.
            let mut c = ::cookie::Cookie::new("x", "");
            c.set_path(self.path.clone());
            if let Some(d) = &self.domain {
                c.set_domain(d.clone());
            }
            c.set_http_only(self.http_only);
            c.set_secure(secure);
            c.set_same_site(match self.same_site {
                SameSite::Strict => ::cookie::SameSite::Strict,
                SameSite::Lax => ::cookie::SameSite::Lax,
                SameSite::None => ::cookie::SameSite::None,
            });
            let full = c.to_string();
            let attributes = full.strip_prefix("x=").unwrap_or(&full).to_owned();
            CookieFlavor {
                name,
                secure,
                attributes,
            }
        };
        let (plain, secure) = match self.secure {
            SecureMode::Auto => (flavor(false), flavor(true)),
            SecureMode::Always => (flavor(true), flavor(true)),
            SecureMode::Never => (flavor(false), flavor(false)),
        };
        CookieJar {
            plain,
            secure,
            max_age: self.max_age,
        }
    }
}

impl CookieJar {
    /// The flavor for a request that arrived over TLS (`https`) or not.
    pub(crate) fn flavor(&self, https: bool) -> &CookieFlavor {
        if https {
            &self.secure
        } else {
            &self.plain
        }
    }
}

impl CookieFlavor {
    /// `Set-Cookie` for a session: `max_age` overrides the configured lifetime (used
    /// when re-signing, so the cookie keeps its original expiry).
    pub(crate) fn set_cookie(&self, value: &str, max_age: Option<Duration>) -> HeaderValue {
        let mut s =
            String::with_capacity(self.name.len() + value.len() + self.attributes.len() + 24);
        s.push_str(&self.name);
        s.push('=');
        s.push_str(value);
        s.push_str(&self.attributes);
        if let Some(age) = max_age {
            s.push_str("; Max-Age=");
            s.push_str(&age.as_secs().to_string());
        }
        HeaderValue::from_str(&s).expect("cookie names and values are validated ASCII")
    }

    /// `Set-Cookie` that expires the cookie now.
    pub(crate) fn removal(&self) -> HeaderValue {
        let mut s = String::with_capacity(self.name.len() + self.attributes.len() + 64);
        s.push_str(&self.name);
        s.push('=');
        s.push_str(&self.attributes);
        s.push_str("; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT");
        HeaderValue::from_str(&s).expect("cookie names are validated ASCII")
    }
}

/// Iterates `name=value` pairs of `Cookie` header values (RFC 6265 `; ` separated,
/// lenient about spaces). Values are raw bytes; nothing here allocates.
pub fn cookie_pairs(header: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    header.split(|&b| b == b';').filter_map(|pair| {
        let pair = trim(pair);
        if pair.is_empty() {
            return None;
        }
        let eq = pair.iter().position(|&b| b == b'=')?;
        let value = trim(&pair[eq + 1..]);
        let value = value
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(value);
        Some((trim(&pair[..eq]), value))
    })
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const K1: &[u8] = b"0123456789abcdef0123456789abcdef";
    const K2: &[u8] = b"fedcba9876543210fedcba9876543210";

    #[test]
    fn known_answer_vector() {
        // HMAC-SHA256(key = K1, "sessiongate/v1\0" || 32 zero bytes), computed independently:
        // printf 'sessiongate/v1\0' > m; head -c32 /dev/zero >> m;
        // openssl dgst -sha256 -mac HMAC -macopt key:0123456789abcdef0123456789abcdef -binary m | basenc --base64url
        let keys = SigningKeys::new(&[K1]);
        let id = SessionId::from_bytes([0u8; 32]);
        let value = keys.sign(&id);
        assert_eq!(
            value,
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.NRQtKwfU-wKbaN6A3GfbTn9EUdIzCzveLxKf3VTbtXA"
        );
    }

    #[test]
    fn rotation_verifies_old_and_reports_it() {
        let old = SigningKeys::new(&[K2]);
        let both = SigningKeys::new(&[K1, K2]);
        let id = SessionId::random();
        let v = old.sign(&id);
        assert_eq!(both.verify(v.as_bytes()), Some((id, Verified::Older)));
        let v = both.sign(&id);
        assert_eq!(both.verify(v.as_bytes()), Some((id, Verified::Current)));
        assert_eq!(old.verify(v.as_bytes()), None);
    }

    #[test]
    fn tampering_fails() {
        let keys = SigningKeys::new(&[K1]);
        let v = keys.sign(&SessionId::random());
        let mut bad = v.clone().into_bytes();
        bad[10] = if bad[10] == b'A' { b'B' } else { b'A' };
        assert_eq!(keys.verify(&bad), None);
        let mut bad = v.clone().into_bytes();
        bad[80] = if bad[80] == b'A' { b'B' } else { b'A' };
        assert_eq!(keys.verify(&bad), None);
        assert_eq!(keys.verify(&v.as_bytes()[..86]), None);
        assert_eq!(keys.verify(b""), None);
        assert_eq!(keys.verify(format!("{v}x").as_bytes()), None);
    }

    #[test]
    fn host_prefix_only_when_secure_root_and_no_domain() {
        let mut s = CookieSettings {
            name: "sg".into(),
            host_prefix: true,
            secure: SecureMode::Auto,
            http_only: true,
            same_site: SameSite::Lax,
            path: "/".into(),
            domain: None,
            max_age: Some(Duration::from_secs(60)),
        };
        let jar = s.jar();
        assert_eq!(jar.plain.name, "sg");
        assert_eq!(jar.secure.name, "__Host-sg");
        let v = jar.secure.set_cookie("abc", jar.max_age);
        assert_eq!(
            v,
            "__Host-sg=abc; HttpOnly; SameSite=Lax; Secure; Path=/; Max-Age=60"
        );
        s.domain = Some("example.com".into());
        assert_eq!(s.jar().secure.name, "sg");
        s.domain = None;
        s.host_prefix = false;
        assert_eq!(s.jar().secure.name, "sg");
    }

    #[test]
    fn cookie_pairs_split() {
        let pairs: Vec<_> = cookie_pairs(b"a=1; b = 2 ;c=\"3\"; bad; =x").collect();
        assert_eq!(
            pairs,
            vec![
                (&b"a"[..], &b"1"[..]),
                (&b"b"[..], &b"2"[..]),
                (&b"c"[..], &b"3"[..]),
                (&b""[..], &b"x"[..])
            ]
        );
    }

    proptest! {
        #[test]
        fn sign_verify_round_trip(bytes in any::<[u8; 32]>()) {
            let keys = SigningKeys::new(&[K1, K2]);
            let id = SessionId::from_bytes(bytes);
            let v = keys.sign(&id);
            prop_assert_eq!(v.len(), COOKIE_VALUE_LEN);
            prop_assert_eq!(keys.verify(v.as_bytes()), Some((id, Verified::Current)));
        }

        #[test]
        fn verify_never_panics(input in proptest::collection::vec(any::<u8>(), 0..200)) {
            let keys = SigningKeys::new(&[K1]);
            let _ = keys.verify(&input);
        }
    }
}
