//! Session data and write-back changes, and their `x-www-form-urlencoded` forms.
//!
//! Data is a small sorted list of UTF-8 key/value pairs. Its encoded form (the
//! `X-Session-Data` header) is built once per write and shared by every read. Keys
//! and values never hold control characters, and the encoded form percent-encodes
//! everything outside the unreserved set, so CR, LF and NUL can never reach a header.

use bytes::Bytes;
use http::HeaderValue;

/// A session's key/value pairs, sorted by key, with their encoded form cached.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionData {
    pairs: Vec<(String, String)>,
    header: Option<HeaderValue>,
}

impl SessionData {
    /// Builds data from pairs (later duplicates win).
    pub fn from_pairs<I: IntoIterator<Item = (String, String)>>(pairs: I) -> SessionData {
        let mut data = SessionData::default();
        for (k, v) in pairs {
            data.insert(k, v);
        }
        data.reencode();
        data
    }

    /// Rebuilds data from its encoded form (as stored by a store).
    pub fn from_encoded(encoded: &[u8]) -> SessionData {
        let mut data = SessionData::default();
        for (k, v) in encoded_pairs(encoded) {
            if let (Ok(k), Ok(v)) = (decode_component(k), decode_component(v)) {
                if !k.is_empty() {
                    data.insert(k, v);
                }
            }
        }
        data.reencode();
        data
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| self.pairs[i].1.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The `X-Session-Data` value; `None` when empty.
    pub fn header(&self) -> Option<&HeaderValue> {
        self.header.as_ref()
    }

    /// Size of the encoded form in bytes (what `max_data_bytes` bounds).
    pub fn encoded_len(&self) -> usize {
        self.header.as_ref().map_or(0, |h| h.len())
    }

    fn insert(&mut self, key: String, value: String) {
        match self.pairs.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(i) => self.pairs[i].1 = value,
            Err(i) => self.pairs.insert(i, (key, value)),
        }
    }

    fn remove(&mut self, key: &str) {
        if let Ok(i) = self.pairs.binary_search_by(|(k, _)| k.as_str().cmp(key)) {
            self.pairs.remove(i);
        }
    }

    fn reencode(&mut self) {
        if self.pairs.is_empty() {
            self.header = None;
            return;
        }
        let mut out = String::new();
        for (i, (k, v)) in self.pairs.iter().enumerate() {
            if i > 0 {
                out.push('&');
            }
            encode_component(k, &mut out);
            out.push('=');
            encode_component(v, &mut out);
        }
        self.header = Some(
            HeaderValue::from_maybe_shared(Bytes::from(out))
                .expect("percent-encoded text is a valid header value"),
        );
    }

    /// The data after `changes`: removals first, then sets (a key both removed and
    /// set in one response ends up set).
    pub fn with_changes(&self, changes: &Changes) -> SessionData {
        let mut next = self.clone();
        for key in &changes.remove {
            next.remove(key);
        }
        for (k, v) in &changes.set {
            next.insert(k.clone(), v.clone());
        }
        next.reencode();
        next
    }
}

/// Percent-encodes like `application/x-www-form-urlencoded` (space as `+`).
pub(crate) fn encode_component(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'*');
    // Runs of unreserved bytes are copied whole. They are ASCII, so a run
    // begins and ends on character boundaries.
    let mut run = 0;
    for (i, &b) in s.as_bytes().iter().enumerate() {
        if unreserved(b) {
            continue;
        }
        if run < i {
            out.push_str(&s[run..i]);
        }
        run = i + 1;
        if b == b' ' {
            out.push('+');
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
    }
    if run < s.len() {
        out.push_str(&s[run..]);
    }
}

/// Why a write-back was refused as a whole.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChangesError {
    #[error("malformed percent-encoding")]
    BadEncoding,
    #[error("not UTF-8")]
    NotUtf8,
    #[error("control character in a key or value")]
    ControlCharacter,
    #[error("empty key")]
    EmptyKey,
    #[error("too many write-back headers or keys")]
    TooMany,
    #[error("a key the proxy keeps for itself")]
    Reserved,
}

/// Keys beginning with this are the proxy's own (a session's upstream server):
/// the upstream never sees them in `X-Session-Data` and cannot write them.
pub const RESERVED_PREFIX: &str = " sessiongate.";
/// [`RESERVED_PREFIX`] in the encoded form, where a space is `+`.
const RESERVED_ENCODED: &[u8] = b"+sessiongate.";

/// Encoded session data (as `split_reserved` shows it) as a JSON object,
/// keys sorted as the data holds them. Everything outside printable ASCII is
/// written as a `\u` escape, so the header stays ASCII.
pub fn form_to_json(encoded: &HeaderValue) -> HeaderValue {
    let mut out = String::with_capacity(encoded.len() + 16);
    out.push('{');
    let mut first = true;
    for pair in encoded.as_bytes().split(|&b| b == b'&') {
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        let (Ok(k), Ok(v)) = (decode_component(k), decode_component(v)) else {
            continue;
        };
        if !first {
            out.push(',');
        }
        first = false;
        json_string(&k, &mut out);
        out.push(':');
        json_string(&v, &mut out);
    }
    out.push('}');
    HeaderValue::from_str(&out).expect("escaped JSON is printable ASCII")
}

/// `s` as a JSON string, everything outside printable ASCII as `\u` escapes.
pub(crate) fn json_string(s: &str, out: &mut String) {
    out.push('"');
    if s.bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
    {
        out.push_str(s);
        out.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
}

/// The proxy's own keys: the visitor's choice of a persistent cookie, and the
/// client address and user agent of the request that logged the user in.
pub const PERSIST_KEY: &str = " sessiongate.persist";
/// [`PERSIST_KEY`] in the encoded form.
pub const PERSIST_KEY_ENCODED: &[u8] = b"+sessiongate.persist";
pub const LOGIN_IP_KEY: &str = " sessiongate.ip";
pub const LOGIN_UA_KEY: &str = " sessiongate.ua";

/// The encoded value of `key` (given encoded) in encoded session data. The
/// data's encoding is canonical (the proxy wrote it), so keys compare as bytes.
pub fn encoded_value<'a>(data: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    encoded_pairs(data).find_map(|(k, v)| (k == key).then_some(v))
}

/// The encoded key and value of each pair of encoded session data (`k=v&…`;
/// a pair without `=` has an empty value).
fn encoded_pairs(data: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    data.split(|&b| b == b'&')
        .map(|pair| match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        })
}

/// The decoded value of `key` (given encoded) in encoded session data.
pub fn value_of(data: &[u8], key: &[u8]) -> Option<String> {
    encoded_value(data, key).and_then(|v| decode_component(v).ok())
}

/// The user encoded session data belongs to: the value of the user key (given
/// encoded); an empty value is nobody.
pub fn user_of(data: &[u8], key: &[u8]) -> Option<String> {
    (encoded_value(data, key))
        .filter(|v| !v.is_empty())
        .and_then(|v| decode_component(v).ok())
}

/// The key that holds which server of the group `group` a session stays on.
pub fn affinity_key(group: &str) -> String {
    format!("{RESERVED_PREFIX}upstream.{group}")
}

/// A key or value in the encoded form of session data.
pub fn encoded(text: &str) -> Vec<u8> {
    let mut out = String::new();
    encode_component(text, &mut out);
    out.into_bytes()
}

/// Encoded session data as the upstream may see it, without the proxy's own
/// keys, and the encoded value the data holds for `key` (one of those, given
/// encoded) if any.
///
/// Pairs are sorted by key and only keys that begin with a space can be the
/// proxy's own, so only the leading pairs whose encoded key begins with `+`
/// are looked at: data without any costs one byte compare.
pub fn split_reserved<'a>(
    encoded: &'a HeaderValue,
    key: Option<&[u8]>,
) -> (Option<HeaderValue>, Option<&'a [u8]>) {
    let bytes = encoded.as_bytes();
    if !bytes.starts_with(b"+") {
        return (Some(encoded.clone()), None);
    }
    let mut value = None;
    let mut rest = bytes;
    // An app key that begins with a space is among the leading pairs.
    let mut theirs = false;
    while rest.starts_with(b"+") {
        let end = rest.iter().position(|&b| b == b'&').unwrap_or(rest.len());
        let pair = &rest[..end];
        if pair.starts_with(RESERVED_ENCODED) {
            let split = pair.iter().position(|&b| b == b'=').unwrap_or(pair.len());
            let (k, v) = pair.split_at(split);
            if key == Some(k) {
                value = Some(v.get(1..).unwrap_or_default());
            }
        } else {
            theirs = true;
        }
        rest = rest.get(end + 1..).unwrap_or_default();
    }
    if !theirs {
        // The usual case: the reserved pairs lead, the rest is shown as it is.
        let shown = (!rest.is_empty())
            .then(|| HeaderValue::from_bytes(rest).ok())
            .flatten();
        return (shown, value);
    }
    let mut shown: Vec<u8> = Vec::with_capacity(bytes.len());
    for pair in bytes.split(|&b| b == b'&') {
        if pair.starts_with(RESERVED_ENCODED) {
            continue;
        }
        if !shown.is_empty() {
            shown.push(b'&');
        }
        shown.extend_from_slice(pair);
    }
    let shown = (!shown.is_empty())
        .then(|| HeaderValue::from_bytes(&shown).ok())
        .flatten();
    (shown, value)
}

/// The write-back a response asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub set: Vec<(String, String)>,
    pub remove: Vec<String>,
    pub(crate) destroy: bool,
    pub regenerate: bool,
    /// `X-Session-Destroy-Others`: the user's other sessions go.
    pub(crate) destroy_others: bool,
    /// `X-Session-Persist`: a persistent cookie (`true`) or a browser-session
    /// one (`false`) for this session.
    pub(crate) persist: Option<bool>,
}

/// A bound on the number of keys one response may touch, against header floods.
pub(crate) const MAX_CHANGED_KEYS: usize = 256;

impl Changes {
    pub(crate) fn is_empty(&self) -> bool {
        self.set.is_empty()
            && self.remove.is_empty()
            && !self.destroy
            && !self.regenerate
            && !self.destroy_others
            && self.persist.is_none()
    }

    /// The value this write gives `key`: `Some(Some(v))` set, `Some(None)`
    /// removed, `None` untouched (a set wins over a removal, as in
    /// [`SessionData::with_changes`]).
    pub fn touches(&self, key: &str) -> Option<Option<&str>> {
        if let Some((_, v)) = self.set.iter().rev().find(|(k, _)| k == key) {
            return Some(Some(v));
        }
        self.remove.iter().any(|k| k == key).then_some(None)
    }

    pub(crate) fn writes_data(&self) -> bool {
        !self.set.is_empty() || !self.remove.is_empty()
    }

    /// Whether this write leaves `data` (encoded, as the store holds it) as it
    /// is: it sets only values the data holds already, removes only keys it
    /// does not hold, and ends or moves nothing. Such a write needs no call
    /// to the store, as with PHP's `session.lazy_write`; the read that came
    /// before it refreshed the session's idle timeout already.
    pub fn changes_nothing_in(&self, data: Option<&[u8]>) -> bool {
        if self.destroy || self.regenerate || self.destroy_others {
            return false;
        }
        let data = data.unwrap_or_default();
        // The encoded value `key` holds, found and compared without decoding
        // (or allocating): this runs for every write.
        let held =
            |key: &str| encoded_pairs(data).find_map(|(k, v)| decodes_to(k, key).then_some(v));
        // A key set ends with its last value, which must be the one held; a
        // key removed and not set again must not be held. A write that changes
        // something, the usual one, is told at its first such key.
        let last_sets = (self.set.iter().enumerate())
            .filter(|(i, (k, _))| !self.set[i + 1..].iter().any(|(later, _)| later == k));
        for (_, (k, v)) in last_sets {
            if !held(k).is_some_and(|held| decodes_to(held, v)) {
                return false;
            }
        }
        (self.remove.iter())
            .filter(|k| !self.set.iter().any(|(set, _)| set == *k))
            .all(|k| held(k).is_none())
    }

    /// Writes made one after the other, as one write: each key ends as the
    /// last of them left it (a removal, or its last value).
    pub(crate) fn in_turn<'a>(writes: impl IntoIterator<Item = &'a Changes>) -> Changes {
        let mut last: std::collections::BTreeMap<&str, Option<&str>> = Default::default();
        for write in writes {
            for k in &write.remove {
                last.insert(k, None);
            }
            for (k, v) in &write.set {
                last.insert(k, Some(v));
            }
        }
        let mut all = Changes::default();
        for (k, v) in last {
            match v {
                Some(v) => all.set.push((k.to_owned(), v.to_owned())),
                None => all.remove.push(k.to_owned()),
            }
        }
        all
    }

    /// Adds one `X-Session-Set` value (`k=v&k2=v2`).
    pub fn add_set(&mut self, value: &[u8]) -> Result<(), ChangesError> {
        for pair in value.split(|&b| b == b'&') {
            if pair.is_empty() {
                continue;
            }
            let (k, v) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &b""[..]),
            };
            let k = decode_component(k)?;
            if k.is_empty() {
                return Err(ChangesError::EmptyKey);
            }
            if k.starts_with(RESERVED_PREFIX) {
                return Err(ChangesError::Reserved);
            }
            let v = decode_component(v)?;
            if self.set.len() >= MAX_CHANGED_KEYS {
                return Err(ChangesError::TooMany);
            }
            self.set.push((k, v));
        }
        Ok(())
    }

    /// Adds one `X-Session-Remove` value (`k, k2`).
    pub fn add_remove(&mut self, value: &[u8]) -> Result<(), ChangesError> {
        for key in value.split(|&b| b == b',') {
            let key = key.trim_ascii();
            if key.is_empty() {
                continue;
            }
            let key = decode_component(key)?;
            if key.starts_with(RESERVED_PREFIX) {
                return Err(ChangesError::Reserved);
            }
            if self.remove.len() >= MAX_CHANGED_KEYS {
                return Err(ChangesError::TooMany);
            }
            self.remove.push(key);
        }
        Ok(())
    }
}

/// Is a value a no? (`false`, `0`, `no`, any case.)
pub fn is_false(value: &[u8]) -> bool {
    let v = value.trim_ascii();
    v.eq_ignore_ascii_case(b"false") || v == b"0" || v.eq_ignore_ascii_case(b"no")
}

/// Is a `-Destroy` / `-Regenerate` value a yes? (`true`, `1`, `yes`, any case.)
pub fn is_true(value: &[u8]) -> bool {
    let v = value.trim_ascii();
    v.eq_ignore_ascii_case(b"true") || v == b"1" || v.eq_ignore_ascii_case(b"yes")
}

/// Strict form decoding: `+` is a space, `%XX` a byte, the result UTF-8 without
/// control characters.
pub fn decode_component(input: &[u8]) -> Result<String, ChangesError> {
    percent_decode(input, true)
}

/// Strict decoding of one URL path segment: as [`decode_component`], but `+`
/// stays `+`.
pub fn decode_segment(input: &[u8]) -> Result<String, ChangesError> {
    percent_decode(input, false)
}

/// Whether `encoded` (a key or value of encoded session data) decodes to
/// `text`, byte by byte, as [`decode_component`] would decode it.
fn decodes_to(encoded: &[u8], text: &str) -> bool {
    let mut want = text.as_bytes().iter();
    let mut i = 0;
    while i < encoded.len() {
        let byte = match encoded[i] {
            b'+' => b' ',
            b'%' => {
                let Some(byte) = escaped_byte(encoded, i) else {
                    return false;
                };
                i += 2;
                byte
            }
            b => b,
        };
        if want.next() != Some(&byte) {
            return false;
        }
        i += 1;
    }
    want.next().is_none()
}

/// The byte `%XX` at `input[i]` stands for; `None` unless both `X` are hex.
fn escaped_byte(input: &[u8], i: usize) -> Option<u8> {
    let hex = |at: usize| input.get(at).and_then(|&b| (b as char).to_digit(16));
    Some((hex(i + 1)? * 16 + hex(i + 2)?) as u8)
}

fn percent_decode(input: &[u8], plus_is_space: bool) -> Result<String, ChangesError> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' => {
                out.push(escaped_byte(input, i).ok_or(ChangesError::BadEncoding)?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    let s = String::from_utf8(out).map_err(|_| ChangesError::NotUtf8)?;
    if s.chars().any(|c| c.is_control()) {
        return Err(ChangesError::ControlCharacter);
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn changes(set: &str, remove: &str) -> Changes {
        let mut c = Changes::default();
        c.add_set(set.as_bytes()).unwrap();
        c.add_remove(remove.as_bytes()).unwrap();
        c
    }

    #[test]
    fn a_write_changes_nothing_only_when_the_data_stays_as_it_is() {
        let held = Some(&b"n=1&user=alice"[..]);
        assert!(changes("user=alice", "").changes_nothing_in(held));
        assert!(changes("n=1&user=alice", "gone").changes_nothing_in(held));
        // A key removed and set again in one response ends up set.
        assert!(changes("n=1", "n").changes_nothing_in(held));
        assert!(!changes("user=bob", "").changes_nothing_in(held));
        assert!(!changes("", "n").changes_nothing_in(held));
        assert!(!changes("new=1", "").changes_nothing_in(held));
        assert!(!changes("user=", "").changes_nothing_in(held));
        assert!(changes("", "n").changes_nothing_in(None));
        assert!(!changes("n=1", "").changes_nothing_in(None));
        for end in [
            |c: &mut Changes| c.destroy = true,
            |c: &mut Changes| c.regenerate = true,
            |c: &mut Changes| c.destroy_others = true,
        ] {
            let mut c = changes("user=alice", "");
            end(&mut c);
            assert!(!c.changes_nothing_in(held), "{c:?}");
        }
    }

    #[test]
    fn encodes_sorted() {
        let d = SessionData::from_pairs([
            ("user".to_owned(), "alice".to_owned()),
            ("role".to_owned(), "admin & co".to_owned()),
        ]);
        assert_eq!(d.header().unwrap(), "role=admin+%26+co&user=alice");
        assert_eq!(d.get("user"), Some("alice"));
    }

    #[test]
    fn the_proxys_own_keys_are_hidden_and_not_writable() {
        let key = affinity_key("app");
        let d = SessionData::from_pairs([
            ("user".to_owned(), "alice".to_owned()),
            (key.clone(), "http://10.0.0.1:3000".to_owned()),
            (affinity_key("other"), "http://10.0.0.9".to_owned()),
        ]);
        let header = d.header().unwrap();
        let k = encoded(&key);
        let (shown, value) = split_reserved(header, Some(&k));
        assert_eq!(shown.unwrap(), "user=alice");
        assert_eq!(value, Some(&encoded("http://10.0.0.1:3000")[..]));
        let only = SessionData::from_pairs([(key.clone(), "x".to_owned())]);
        assert_eq!(
            split_reserved(only.header().unwrap(), Some(&k)),
            (None, Some(&b"x"[..]))
        );
        let plain = HeaderValue::from_static("a=1&sessiongate.x=2");
        assert_eq!(
            split_reserved(&plain, Some(&k)),
            (Some(plain.clone()), None)
        );
        // An app key that begins with a space sorts among the proxy's own.
        let mixed = SessionData::from_pairs([
            (" a".to_owned(), "1".to_owned()),
            (key.clone(), "x".to_owned()),
            ("z".to_owned(), "2".to_owned()),
        ]);
        let (shown, value) = split_reserved(mixed.header().unwrap(), Some(&k));
        assert_eq!(shown.unwrap(), "+a=1&z=2");
        assert_eq!(value, Some(&b"x"[..]));

        let mut c = Changes::default();
        assert_eq!(
            c.add_set(b"+sessiongate.upstream.app=x"),
            Err(ChangesError::Reserved)
        );
        assert_eq!(
            c.add_set(b"%20sessiongate.anything=x"),
            Err(ChangesError::Reserved)
        );
        assert_eq!(
            c.add_remove(b"%20sessiongate.upstream.app"),
            Err(ChangesError::Reserved)
        );
        assert!(
            c.add_set(b"sessiongate.upstream=x").is_ok(),
            "no leading space: the app's own"
        );
    }

    #[test]
    fn json_form_escapes_to_ascii_and_keeps_the_order() {
        let d = SessionData::from_pairs([
            ("user".to_owned(), "Jürgen \"J\" \\ 😀".to_owned()),
            ("a b".to_owned(), "x&y=z".to_owned()),
        ]);
        let json = form_to_json(d.header().unwrap());
        assert_eq!(
            json,
            r#"{"a b":"x&y=z","user":"J\u00fcrgen \"J\" \\ \ud83d\ude00"}"#
        );
    }

    #[test]
    fn path_segments_decode_percent_only() {
        let dec = |s: &str| decode_segment(s.as_bytes()).ok();
        assert_eq!(dec("al%20ice+x").as_deref(), Some("al ice+x"));
        assert_eq!(dec("j%C3%BCrgen").as_deref(), Some("jürgen"));
        assert_eq!(dec("team%2Fops").as_deref(), Some("team/ops"));
        assert_eq!(dec("bad%2"), None);
        assert_eq!(dec("%+A"), None);
        assert_eq!(dec("%FF"), None);
        assert_eq!(dec("a%0Ab"), None);
    }

    #[test]
    fn empty_data_has_no_header() {
        assert!(SessionData::default().header().is_none());
    }

    #[test]
    fn set_and_remove() {
        let mut c = Changes::default();
        c.add_set(b"a=1&b=%C3%A9t%C3%A9&c").unwrap();
        c.add_remove(b" x , y,,").unwrap();
        assert_eq!(
            c.set,
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "été".into()),
                ("c".into(), "".into())
            ]
        );
        assert_eq!(c.remove, vec!["x".to_owned(), "y".to_owned()]);
    }

    #[test]
    fn control_characters_and_bad_encoding_are_refused() {
        let mut c = Changes::default();
        assert_eq!(
            c.add_set(b"a=1%0D%0ASet-Cookie:x"),
            Err(ChangesError::ControlCharacter)
        );
        assert_eq!(c.add_set(b"a=%00"), Err(ChangesError::ControlCharacter));
        assert_eq!(c.add_set(b"a=%zz"), Err(ChangesError::BadEncoding));
        assert_eq!(c.add_set(b"a=%FF"), Err(ChangesError::NotUtf8));
        assert_eq!(c.add_set(b"=v"), Err(ChangesError::EmptyKey));
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(k in "[^\\p{Cc}]{1,20}", v in "[^\\p{Cc}]{0,40}") {
            let d = SessionData::from_pairs([(k.clone(), v.clone())]);
            let mut c = Changes::default();
            c.add_set(d.header().unwrap().as_bytes()).unwrap();
            prop_assert_eq!(c.set, vec![(k, v)]);
        }

        /// Keys and values from a small alphabet (with a space, `&`, `+` and
        /// a two-byte letter, all encoded), so that sets and removals often
        /// meet the keys held.
        #[test]
        fn a_write_is_skipped_exactly_when_it_leaves_the_data_as_it_is(
            held in proptest::collection::vec(("[aé&]{1,2}", "[xé +]{0,2}"), 0..4),
            set in proptest::collection::vec(("[aé&]{1,2}", "[xé +]{0,2}"), 0..4),
            remove in proptest::collection::vec("[aé&]{1,2}", 0..3),
        ) {
            let data = SessionData::from_pairs(held);
            let changes = Changes { set, remove, ..Changes::default() };
            let unchanged = data.with_changes(&changes).pairs() == data.pairs();
            let bytes = data.header().map(|h| h.as_bytes());
            prop_assert_eq!(changes.changes_nothing_in(bytes), unchanged);
        }

        #[test]
        fn writes_in_turn_as_one_leave_the_data_as_each_in_turn(
            held in proptest::collection::vec(("[aé&]{1,2}", "[xé +]{0,2}"), 0..4),
            writes in proptest::collection::vec((
                proptest::collection::vec(("[aé&]{1,2}", "[xé +]{0,2}"), 0..3),
                proptest::collection::vec("[aé&]{1,2}", 0..3),
            ), 1..5),
        ) {
            let writes: Vec<Changes> = (writes.into_iter())
                .map(|(set, remove)| Changes { set, remove, ..Changes::default() })
                .collect();
            let data = SessionData::from_pairs(held);
            let each = writes.iter().fold(data.clone(), |d, w| d.with_changes(w));
            let all = Changes::in_turn(&writes);
            let once = data.with_changes(&all);
            prop_assert_eq!(once.pairs(), each.pairs());
        }

        #[test]
        fn decode_never_panics(input in proptest::collection::vec(any::<u8>(), 0..100)) {
            let mut c = Changes::default();
            let _ = c.add_set(&input);
            let _ = c.add_remove(&input);
        }
    }
}
