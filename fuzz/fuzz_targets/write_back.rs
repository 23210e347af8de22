//! Write-back from the upstream: `X-Session-Set` / `X-Session-Remove` values
//! (`Changes::add_set` / `add_remove`) applied to session data
//! (`SessionData::with_changes`) and its stored form (`SessionData::from_encoded`).
//!
//! The input is header values, one per line, alternating Set and Remove.
//! Properties, beyond "never panics":
//! - accepted changes are bounded and hold no control character and no empty key;
//! - applying them matches a plain map model (removals first, then sets);
//! - encoding then decoding gives back the same pairs, sorted, and the encoded
//!   form is a valid header value that is also a valid `X-Session-Set`;
//! - `from_encoded` of anything, re-encoded and decoded again, is a fixed point;
//! - a write is skipped as changing nothing (`Changes::changes_nothing_in`)
//!   exactly when the model after it equals the data before it.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use sessiongate::session::{Changes, SessionData};

/// `session::data::MAX_CHANGED_KEYS` (not exported): keys one response may touch.
const MAX_CHANGED_KEYS: usize = 256;

fn encoded(data: &SessionData) -> &[u8] {
    data.header().map_or(&b""[..], |h| h.as_bytes())
}

fn assert_round_trip(data: &SessionData) {
    let bytes = encoded(data);
    assert_eq!(bytes.is_empty(), data.is_empty());
    assert_eq!(data.encoded_len(), bytes.len());
    assert!(
        bytes.iter().all(|b| b.is_ascii_graphic()),
        "encoded data holds a byte a header must not: {bytes:?}"
    );
    let back = SessionData::from_encoded(bytes);
    assert_eq!(back.pairs(), data.pairs(), "decode(encode(x)) != x");
    assert_eq!(encoded(&back), bytes);
    assert!(
        data.pairs().windows(2).all(|w| w[0].0 < w[1].0),
        "not sorted"
    );
    for (k, v) in data.pairs() {
        assert_eq!(data.get(k), Some(v.as_str()));
    }
    if data.pairs().len() <= MAX_CHANGED_KEYS {
        let mut again = Changes::default();
        again
            .add_set(bytes)
            .expect("encoded data is a valid X-Session-Set");
        let set: Vec<(String, String)> = data.pairs().to_vec();
        assert_eq!(again.set, set);
    }
}

fn no_control(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

fuzz_target!(|input: &[u8]| {
    let mut changes = Changes::default();
    let mut accepted = true;
    for (i, value) in input.split(|&b| b == b'\n').enumerate() {
        let outcome = if i % 2 == 0 {
            changes.add_set(value)
        } else {
            changes.add_remove(value)
        };
        if outcome.is_err() {
            accepted = false;
            break;
        }
    }
    assert!(changes.set.len() <= MAX_CHANGED_KEYS);
    assert!(changes.remove.len() <= MAX_CHANGED_KEYS);
    for (k, v) in &changes.set {
        assert!(!k.is_empty() && no_control(k) && no_control(v));
    }
    for k in &changes.remove {
        assert!(no_control(k));
    }

    if accepted {
        let before = SessionData::from_encoded(b"role=member&user=alice&z=%C3%A9");
        let after = before.with_changes(&changes);
        let mut model: BTreeMap<String, String> = before.pairs().iter().cloned().collect();
        for k in &changes.remove {
            model.remove(k);
        }
        for (k, v) in &changes.set {
            model.insert(k.clone(), v.clone());
        }
        let model: Vec<(String, String)> = model.into_iter().collect();
        assert_eq!(
            after.pairs(),
            &model[..],
            "with_changes disagrees with the model"
        );
        assert_eq!(
            changes.changes_nothing_in(Some(encoded(&before))),
            model == before.pairs(),
            "a write skipped (or made) against the model"
        );
        assert_round_trip(&after);
        assert_round_trip(&SessionData::default().with_changes(&changes));
    }

    let stored = SessionData::from_encoded(input);
    assert_round_trip(&stored);
    if accepted {
        let mut model: BTreeMap<String, String> = stored.pairs().iter().cloned().collect();
        for k in &changes.remove {
            model.remove(k);
        }
        for (k, v) in &changes.set {
            model.insert(k.clone(), v.clone());
        }
        let unchanged = model.into_iter().eq(stored.pairs().iter().cloned());
        assert_eq!(
            changes.changes_nothing_in(Some(encoded(&stored))),
            unchanged,
            "a write skipped (or made) against the model, on stored data"
        );
    }
});
