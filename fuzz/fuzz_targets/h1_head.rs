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

use std::path::Path;
use std::sync::OnceLock;

use bytes::BytesMut;
use http::{HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use sessiongate::config::Config;
use sessiongate::h1::codec::{self, ChunkedDecoder};
use sessiongate::headers::{self, Name, RequestView};
use sessiongate::proxy::{ConnInfo, Settings};

fn settings() -> &'static Settings {
    static SETTINGS: OnceLock<Settings> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let yaml = "listen: 127.0.0.1:0\nupstream: { url: \"http://127.0.0.1:3000\" }\n\
                    session: { secrets: [\"fuzz-secret-0123456789abcdef0123456789\"] }\n";
        Settings::new(Config::parse(yaml, Path::new("fuzz.yaml"), false).expect("config"))
    })
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
            let settings = settings();
            if let Ok(scan) = headers::scan_request(settings, &conn, false, &view, None) {
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
                let extras = scan.extras(settings, &conn, None, &request_id);
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
