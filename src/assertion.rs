//! The signed assertion (`assertion.header`): a compact JWS (RFC 7515) on every
//! request with a session, so an application reachable by other paths than the
//! proxy can tell the proxy's session headers from forged ones.
//!
//! Protected header `{"alg":…,"typ":"JWT","kid":…}`, where `kid` is the first 8
//! bytes of the SHA-256 of the key material in hex (the secret for HS256, the
//! raw public key for EdDSA). Claims: `sid`, `sub` (the `session.user_key`
//! value, when there is one), `data`, `iat`, `exp`, `aud` (the `Host` the
//! upstream gets), `htm` (the method) and `htu` (the target the upstream gets).
//! The first key signs; the others are listed so applications can be given the
//! next key before it signs (rotation, as with `session.secrets`).

use std::fmt;
use std::time::Duration;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{KeyInit, Mac};
use http::{HeaderName, HeaderValue};
use sha2::{Digest, Sha256};

/// `assertion.alg`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Alg {
    HS256,
    EdDSA,
}

impl Alg {
    fn name(self) -> &'static str {
        match self {
            Alg::HS256 => "HS256",
            Alg::EdDSA => "EdDSA",
        }
    }
}

/// Why a key was refused (never quoting it).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("an HS256 key must be at least 32 bytes; this one is {0}")]
    Short(usize),
    #[error("not a PEM private key (-----BEGIN PRIVATE KEY----- … -----END PRIVATE KEY-----)")]
    NotPem,
    #[error("not an Ed25519 private key in PKCS#8 form (make one with `openssl genpkey -algorithm ed25519`)")]
    NotEd25519,
}

enum Key {
    Hs256(hmac::Hmac<Sha256>),
    EdDSA(Box<Ed25519KeyPair>),
}

/// Signs assertions with the first configured key.
pub struct Signer {
    pub(crate) header: HeaderName,
    ttl_s: u64,
    key: Key,
    /// The protected header, base64url, then `.`.
    prefix: String,
    /// The `kid` of every configured key, signing key first.
    kids: Vec<String>,
    /// Tells this signer from every other one made in this process.
    serial: u64,
}

/// Counts signers as they are made.
static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("header", &self.header)
            .field("kids", &self.kids)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Signer {
    fn eq(&self, other: &Self) -> bool {
        self.header == other.header && self.ttl_s == other.ttl_s && self.prefix == other.prefix
    }
}

fn kid(material: &[u8]) -> String {
    Sha256::digest(material)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The DER inside a PEM block.
fn pem_der(text: &str) -> Option<Vec<u8>> {
    let begin = text.find("-----BEGIN PRIVATE KEY-----")?;
    let rest = &text[begin + "-----BEGIN PRIVATE KEY-----".len()..];
    let end = rest.find("-----END PRIVATE KEY-----")?;
    let b64: String = rest[..end]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    STANDARD.decode(b64).ok()
}

/// One key's `kid` and, for the first, the signing key.
fn read_key(alg: Alg, text: &str) -> Result<(String, Key), KeyError> {
    match alg {
        Alg::HS256 => {
            if text.len() < 32 {
                return Err(KeyError::Short(text.len()));
            }
            let mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(text.as_bytes())
                .expect("HMAC takes a key of any length");
            Ok((kid(text.as_bytes()), Key::Hs256(mac)))
        }
        Alg::EdDSA => {
            let der = pem_der(text).ok_or(KeyError::NotPem)?;
            let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
                .map_err(|_| KeyError::NotEd25519)?;
            let kid = kid(pair.public_key().as_ref());
            Ok((kid, Key::EdDSA(Box::new(pair))))
        }
    }
}

/// A request's facts the claims are made of.
pub struct Claims<'a> {
    /// The session ID's bytes.
    pub id: &'a [u8; 32],
    /// `session.user_key`, encoded: `sub` is its value in `data`.
    pub user_key: Option<&'a [u8]>,
    /// The session data the upstream is shown, form-encoded.
    pub data: Option<&'a HeaderValue>,
    pub aud: &'a [u8],
    pub htm: &'a str,
    pub htu: &'a [u8],
    /// Unix seconds.
    pub now_s: u64,
}

impl Claims<'_> {
    /// Everything the claims are made of, in one buffer: equal buffers make
    /// equal claims.
    fn key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.id);
        out.extend_from_slice(&self.now_s.to_le_bytes());
        for part in [
            self.htm.as_bytes(),
            self.aud,
            self.htu,
            self.data.map_or(&b""[..], |d| d.as_bytes()),
            self.user_key.unwrap_or(b"\xff"),
        ] {
            out.extend_from_slice(&(part.len() as u32).to_le_bytes());
            out.extend_from_slice(part);
        }
    }

    /// The JSON claims.
    fn json(&self, ttl_s: u64) -> Vec<u8> {
        use crate::session::json_string;
        let text = |bytes| String::from_utf8_lossy(bytes);
        let data = self.data.map(crate::session::form_to_json);
        let data = data.as_ref().map_or("{}", |d| d.to_str().unwrap_or("{}"));
        let mut claims = String::with_capacity(160 + data.len() + self.htu.len());
        claims.push_str("{\"sid\":\"");
        URL_SAFE_NO_PAD.encode_string(self.id, &mut claims);
        claims.push('"');
        let sub = (self.user_key.zip(self.data))
            .and_then(|(k, d)| crate::session::user_of(d.as_bytes(), k));
        if let Some(sub) = sub {
            claims.push_str(",\"sub\":");
            json_string(&sub, &mut claims);
        }
        claims.push_str(",\"data\":");
        claims.push_str(data);
        let mut n = itoa::Buffer::new();
        claims.push_str(",\"iat\":");
        claims.push_str(n.format(self.now_s));
        claims.push_str(",\"exp\":");
        claims.push_str(n.format(self.now_s + ttl_s));
        claims.push_str(",\"aud\":");
        json_string(&text(self.aud), &mut claims);
        claims.push_str(",\"htm\":");
        json_string(self.htm, &mut claims);
        claims.push_str(",\"htu\":");
        json_string(&text(self.htu), &mut claims);
        claims.push('}');
        claims.into_bytes()
    }
}

impl Signer {
    /// Reads the keys (`keys[i]` is named in errors by its index).
    pub fn new(
        header: HeaderName,
        alg: Alg,
        keys: &[&str],
        ttl: Duration,
    ) -> Result<Signer, (usize, KeyError)> {
        let mut kids = Vec::new();
        let mut signing = None;
        for (i, text) in keys.iter().enumerate() {
            let (kid, key) = read_key(alg, text).map_err(|e| (i, e))?;
            kids.push(kid);
            if signing.is_none() {
                signing = Some(key);
            }
        }
        let key = signing.ok_or((0, KeyError::Short(0)))?;
        let protected = format!(
            r#"{{"alg":"{}","typ":"JWT","kid":"{}"}}"#,
            alg.name(),
            kids[0]
        );
        let mut prefix = URL_SAFE_NO_PAD.encode(protected);
        prefix.push('.');
        Ok(Signer {
            header,
            ttl_s: ttl.as_secs().max(1),
            key,
            prefix,
            kids,
            serial: SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// The `kid` of every key, signing key first.
    pub fn kids(&self) -> &[String] {
        &self.kids
    }

    /// The compact JWS for one request.
    pub fn sign(&self, c: &Claims<'_>) -> HeaderValue {
        // One worker signs the same claims again and again when a visitor
        // repeats a request within a second: the last token is kept per
        // thread (each worker is one thread) and given again. Both algorithms
        // are deterministic, so it is the token a new signature would make.
        let me = self.serial;
        let hit = LAST.with_borrow_mut(|last| {
            let last = last.get_or_insert_with(|| Last {
                signer: u64::MAX,
                key: Vec::new(),
                probe: Vec::new(),
                token: HeaderValue::from_static(""),
            });
            last.probe.clear();
            c.key(&mut last.probe);
            (last.signer == me && last.probe == last.key).then(|| last.token.clone())
        });
        if let Some(token) = hit {
            return token;
        }
        let claims = c.json(self.ttl_s);
        let mut token = Vec::with_capacity(self.prefix.len() + claims.len().div_ceil(3) * 4 + 90);
        token.extend_from_slice(self.prefix.as_bytes());
        base64_into(&claims, &mut token);
        let signature: Vec<u8> = match &self.key {
            Key::Hs256(mac) => {
                let mut mac = mac.clone();
                mac.update(&token);
                mac.finalize().into_bytes().to_vec()
            }
            Key::EdDSA(pair) => pair.sign(&token).as_ref().to_vec(),
        };
        token.push(b'.');
        base64_into(&signature, &mut token);
        let token = HeaderValue::from_maybe_shared(bytes::Bytes::from(token))
            .expect("base64url is a valid header value");
        LAST.with_borrow_mut(|last| {
            if let Some(last) = last {
                last.signer = me;
                std::mem::swap(&mut last.key, &mut last.probe);
                last.token = token.clone();
            }
        });
        token
    }
}

/// The last token a thread made, what it was made of, and by which signer.
struct Last {
    signer: u64,
    /// What the last token's claims were made of ([`Claims::key`]).
    key: Vec<u8>,
    /// The request at hand's, reused from one request to the next.
    probe: Vec<u8>,
    token: HeaderValue,
}

thread_local! {
    static LAST: std::cell::RefCell<Option<Last>> = const { std::cell::RefCell::new(None) };
}

/// Appends the base64url (no padding) of `bytes`.
fn base64_into(bytes: &[u8], out: &mut Vec<u8>) {
    let at = out.len();
    out.resize(at + bytes.len().div_ceil(3) * 4, 0);
    let n = URL_SAFE_NO_PAD
        .encode_slice(bytes, &mut out[at..])
        .expect("room for the encoding");
    out.truncate(at + n);
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "assertion-test-secret-0123456789abcdef";

    fn parts(token: &HeaderValue) -> (serde_json::Value, serde_json::Value, Vec<u8>) {
        let text = token.to_str().unwrap();
        let mut it = text.split('.');
        let dec = |s: &str| URL_SAFE_NO_PAD.decode(s).unwrap();
        let h = serde_json::from_slice(&dec(it.next().unwrap())).unwrap();
        let c = serde_json::from_slice(&dec(it.next().unwrap())).unwrap();
        let s = dec(it.next().unwrap());
        assert!(it.next().is_none());
        (h, c, s)
    }

    static ID: [u8; 32] = [7; 32];
    static DATA: HeaderValue = HeaderValue::from_static("role=admin&user=alice");

    fn claims(user_key: Option<&'static [u8]>) -> Claims<'static> {
        Claims {
            id: &ID,
            user_key,
            data: Some(&DATA),
            aud: b"app.example",
            htm: "POST",
            htu: b"/a?b=\"c\"\xff",
            now_s: 1_000,
        }
    }

    #[test]
    fn hs256_token_verifies_and_carries_the_claims() {
        let signer = Signer::new(
            HeaderName::from_static("x-session-assertion"),
            Alg::HS256,
            &[SECRET, "another-secret-0123456789abcdef-xyz"],
            Duration::from_secs(60),
        )
        .unwrap();
        let token = signer.sign(&claims(Some(b"user")));
        let (h, c, sig) = parts(&token);
        assert_eq!(c["sid"], URL_SAFE_NO_PAD.encode(ID));
        assert_eq!(h["alg"], "HS256");
        assert_eq!(h["kid"], signer.kids()[0].as_str());
        assert_eq!(signer.kids().len(), 2);
        assert_eq!(c["sub"], "alice");
        assert_eq!(c["data"]["role"], "admin");
        assert_eq!(c["exp"], 1_060);
        assert_eq!(c["htu"], "/a?b=\"c\"\u{fffd}");
        let text = token.to_str().unwrap();
        let signed = &text[..text.rfind('.').unwrap()];
        let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(signed.as_bytes());
        mac.verify_slice(&sig).unwrap();
        let (_, c, _) = parts(&signer.sign(&claims(None)));
        assert!(c.get("sub").is_none());
        // The same request again: the same token; another second: another.
        assert_eq!(signer.sign(&claims(None)), signer.sign(&claims(None)));
        let later = Claims {
            now_s: 1_001,
            ..claims(None)
        };
        let (_, c, _) = parts(&signer.sign(&later));
        assert_eq!(c["iat"], 1_001);
        // Another signer (a reload with a new key) never gets this one's token.
        let next = Signer::new(
            HeaderName::from_static("x-session-assertion"),
            Alg::HS256,
            &["another-secret-0123456789abcdef-xyz"],
            Duration::from_secs(60),
        )
        .unwrap();
        let (h, _, _) = parts(&next.sign(&later));
        assert_eq!(h["kid"], next.kids()[0].as_str());
        assert_ne!(next.kids()[0], signer.kids()[0]);
    }

    #[test]
    fn eddsa_token_verifies_with_the_public_key() {
        let der = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new()).unwrap();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            STANDARD.encode(der.as_ref())
        );
        let signer = Signer::new(
            HeaderName::from_static("x-session-assertion"),
            Alg::EdDSA,
            &[&pem],
            Duration::from_secs(60),
        )
        .unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(der.as_ref()).unwrap();
        let token = signer.sign(&claims(None));
        let text = token.to_str().unwrap();
        let (h, _, sig) = parts(&token);
        assert_eq!(h["alg"], "EdDSA");
        let public = aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ED25519,
            pair.public_key().as_ref(),
        );
        public
            .verify(&text.as_bytes()[..text.rfind('.').unwrap()], &sig)
            .unwrap();
    }

    #[test]
    fn bad_keys_are_refused_by_index() {
        let h = HeaderName::from_static("x-session-assertion");
        let d = Duration::from_secs(60);
        assert_eq!(
            Signer::new(h.clone(), Alg::HS256, &[SECRET, "short"], d).unwrap_err(),
            (1, KeyError::Short(5))
        );
        assert_eq!(
            Signer::new(h.clone(), Alg::EdDSA, &["not a pem"], d).unwrap_err(),
            (0, KeyError::NotPem)
        );
        let junk = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----";
        assert_eq!(
            Signer::new(h, Alg::EdDSA, &[junk], d).unwrap_err(),
            (0, KeyError::NotEd25519)
        );
    }
}
