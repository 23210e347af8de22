//! HTTP/1 from the network: request and response heads (`h1::codec`), the
//! header rules applied to them (`headers`), and chunked bodies.
//!
//! The input is bytes as a client (or an upstream) would send them. Properties,
//! beyond "never panics":
//! - a request head that parses keeps no hop-by-hop line and no line under the
//!   session prefix once the rules ran, and the proxy's own lines are well formed;
//! - a chunked body, decoded, re-encoded with `put_chunk` and decoded again,
//!   gives the same bytes.
#![no_main]

use std::sync::OnceLock;

use bytes::BytesMut;
use http::{HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use sessiongate::conn::ConnInfo;
use sessiongate::cookie::{CookieJar, CookieSettings, SameSite, SecureMode, SigningKeys};
use sessiongate::h1::codec::{self, ChunkedDecoder};
use sessiongate::headers::{self, HeaderNames, Name, RequestView, Rules};

/// What the rules read, as the default configuration has it.
struct Owned {
    names: HeaderNames,
    keys: SigningKeys,
    jar: CookieJar,
    upstream_host: HeaderValue,
}

fn rules() -> Rules<'static> {
    static OWNED: OnceLock<Owned> = OnceLock::new();
    let owned = OWNED.get_or_init(|| Owned {
        names: HeaderNames::new("X-Session-").expect("a valid prefix"),
        keys: SigningKeys::new(&[b"fuzz-secret-0123456789abcdef0123456789"]),
        jar: CookieSettings {
            name: "sessiongate".into(),
            host_prefix: true,
            secure: SecureMode::Auto,
            http_only: true,
            same_site: SameSite::Lax,
            path: "/".into(),
            domain: None,
            max_age: None,
        }
        .jar(),
        upstream_host: HeaderValue::from_static("127.0.0.1:3000"),
    });
    Rules {
        names: &owned.names,
        keys: &owned.keys,
        jar: &owned.jar,
        exclude_paths: &[],
        max_body_bytes: None,
        preserve_host: false,
        upstream_host: Some(&owned.upstream_host),
    }
}

fn decode_all(body: &[u8]) -> Option<Vec<u8>> {
    let mut decoder = ChunkedDecoder::default();
    let mut buf = BytesMut::from(body);
    let mut out = Vec::new();
    decoder.decode(&mut buf, |d| out.extend_from_slice(d)).ok()?;
    decoder.is_done().then_some(out)
}

fuzz_target!(|input: &[u8]| {
    let conn = ConnInfo::new("127.0.0.1:40000".parse().expect("addr"), false);
    let request_id = HeaderValue::from_static("0123456789abcdef0123");
    if let Some(end) = codec::head_end(input) {
        if let Ok(head) = codec::parse_request(&input[..end]) {
            let path = head.target.split(|&b| b == b'?').next().unwrap_or_default();
            let view = RequestView {
                path,
                target: head.target,
                authority: None,
                lines: &head.lines,
            };
            if let Ok(scan) = headers::scan_request(rules(), &conn, false, &view, None) {
                for (((name, _), &kind), &kept) in
                    head.lines.iter().zip(&scan.names).zip(&scan.keep)
                {
                    if !kept {
                        continue;
                    }
                    assert!(
                        !name.to_ascii_lowercase().starts_with(b"x-session-"),
                        "a session header went through"
                    );
                    assert!(
                        !matches!(
                            kind,
                            Name::Connection | Name::TransferEncoding | Name::OtherHopByHop
                        ) && !(kind == Name::Upgrade && !scan.upgrade),
                        "a hop-by-hop header went through"
                    );
                }
                let extras = scan.extras(rules(), &conn, None, &request_id);
                for (_, value) in &extras.0 {
                    let value = value.as_bytes();
                    assert!(HeaderValue::from_bytes(value).is_ok(), "{value:?}");
                }
            }
        }
        if let Some(data) = decode_all(&input[end..]) {
            let mut again = Vec::new();
            for piece in data.chunks(7) {
                codec::put_chunk(&mut again, piece);
            }
            again.extend_from_slice(codec::LAST_CHUNK);
            assert_eq!(decode_all(&again).as_deref(), Some(&data[..]));
        }
    }
    for method in [Method::GET, Method::HEAD] {
        let _ = codec::parse_response(input, 65536, &method);
    }
});
