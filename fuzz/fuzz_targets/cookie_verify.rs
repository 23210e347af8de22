//! The session cookie as a client sends it: `Cookie` header splitting
//! (`cookie::cookie_pairs`) and `<id>.<tag>` verification (`SigningKeys::check`).
//!
//! Properties, beyond "never panics":
//! - every pair is cut from the input: the name holds no `;` or `=` and no
//!   surrounding blanks, the value no `;`;
//! - a value that verifies is exactly the cookie the verifying key would issue
//!   for that ID (one ID has one cookie: no malleable encodings), and it says
//!   which key verified it.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sessiongate::cookie::{cookie_pairs, SigningKeys, Verified, COOKIE_VALUE_LEN};

const CURRENT: &[u8] = b"fuzz-secret-current-0123456789abcdef";
const OLDER: &[u8] = b"fuzz-secret-older-0123456789abcdef01";

struct Keys {
    both: SigningKeys,
    current: SigningKeys,
    older: SigningKeys,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        both: SigningKeys::new(&[CURRENT, OLDER]),
        current: SigningKeys::new(&[CURRENT]),
        older: SigningKeys::new(&[OLDER]),
    })
}

fn is_blank(b: &u8) -> bool {
    *b == b' ' || *b == b'\t'
}

fn check_value(value: &[u8]) {
    let keys = keys();
    let Ok((id, which)) = keys.both.check(value) else {
        assert!(keys.both.verify(value).is_none());
        return;
    };
    assert_eq!(value.len(), COOKIE_VALUE_LEN);
    let issuer = match which {
        Verified::Current => &keys.current,
        Verified::Older => &keys.older,
    };
    assert_eq!(
        issuer.sign(&id).as_bytes(),
        value,
        "a second spelling of a valid cookie verifies"
    );
    if which == Verified::Older {
        assert!(keys.current.check(value).is_err());
    }
    assert_eq!(keys.both.verify(value), Some((id, which)));
}

fuzz_target!(|data: &[u8]| {
    check_value(data);
    let pieces = data.iter().filter(|&&b| b == b';').count() + 1;
    let mut pairs = 0;
    for (name, value) in cookie_pairs(data) {
        pairs += 1;
        assert!(!name.contains(&b';') && !name.contains(&b'='));
        assert!(!value.contains(&b';'));
        assert!(name.first().is_none_or(|b| !is_blank(b)));
        assert!(name.last().is_none_or(|b| !is_blank(b)));
        check_value(value);
    }
    assert!(pairs <= pieces);
});
