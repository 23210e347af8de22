//! Form decoding of one write-back component (`session::decode_component`).
//!
//! Properties, beyond "never panics":
//! - what it accepts is UTF-8 without control characters, never longer than
//!   the input;
//! - it agrees with the `form_urlencoded` crate on every input it accepts;
//! - what it accepts survives encoding (as session data) and decoding again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sessiongate::session::{decode_component, SessionData};

fuzz_target!(|data: &[u8]| {
    let Ok(decoded) = decode_component(data) else {
        return;
    };
    assert!(decoded.len() <= data.len());
    assert!(!decoded.chars().any(char::is_control));

    if !data.contains(&b'&') && !data.contains(&b'=') {
        let (reference, _) = form_urlencoded::parse(data).next().unwrap_or_default();
        assert_eq!(decoded, reference, "disagrees with form_urlencoded");
    }

    let stored = SessionData::from_pairs([("k".to_owned(), decoded.clone())]);
    let header = stored.header().expect("one pair").as_bytes();
    let value = header.strip_prefix(b"k=").expect("k=...");
    assert_eq!(decode_component(value).as_deref(), Ok(decoded.as_str()));
});
