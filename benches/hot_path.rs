//! Micro benchmarks of the per-request work: signing, verifying, store lookup and
//! update, form encoding, and building the upstream request's headers.
//!
//!     cargo bench --bench hot_path
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderValue, Method, StatusCode};
use sessiongate::config::Config;
use sessiongate::cookie::SigningKeys;
use sessiongate::h1::codec::{self, BodyHead, Framing};
use sessiongate::headers::{self, RequestView, UpstreamSession};
use sessiongate::proxy::{ConnInfo, Settings};
use sessiongate::session::memory::MemoryStore;
use sessiongate::session::{Changes, Created, Policy, SessionData, SessionId, SessionStore};

const SECRET: &[u8] = b"bench-secret-0123456789abcdef0123456789";

/// Runs a future that is ready at once (the memory store's are) without a runtime,
/// so the figures are the store's, not an executor's.
fn ready<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("the memory store never waits"),
    }
}

fn settings() -> Settings {
    let yaml = "listen: 127.0.0.1:0\nupstream: { url: \"http://127.0.0.1:3000\" }\n\
                session: { secrets: [\"bench-secret-0123456789abcdef0123456789\"] }\n";
    Settings::standalone(Config::parse(yaml, Path::new("bench.yaml"), false).expect("bench config"))
}

const POLICY: Policy = capped(1_000_000);

const fn capped(max_sessions: usize) -> Policy {
    Policy {
        idle_timeout: Duration::from_secs(3600),
        absolute_timeout: Duration::from_secs(86400),
        max_sessions,
        max_data_bytes: 4096,
        regenerate_grace: Duration::from_secs(10),
        max_per_user: None,
    }
}

/// A new empty session in `s`.
fn create(s: &MemoryStore, policy: &Policy) -> SessionId {
    match ready(s.create(SessionData::default(), policy)) {
        Ok(Created::Stored(id)) => id,
        other => panic!("{other:?}"),
    }
}

/// Threads creating sessions at once, as a cookie-less flood makes them.
const CREATORS: u64 = 4;

/// `iters` sessions created by [`CREATORS`] threads at once in a store made by
/// `fresh` (not timed): the wall time, so the figure is the time per session of
/// the whole store's throughput.
fn create_concurrently(iters: u64, policy: &Policy, fresh: impl Fn() -> MemoryStore) -> Duration {
    let s = fresh();
    let per_thread = iters.div_ceil(CREATORS);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..CREATORS {
            scope.spawn(|| {
                for _ in 0..per_thread {
                    black_box(create(&s, policy));
                }
            });
        }
    });
    let took = started.elapsed();
    drop(s);
    took
}

/// A browser's request head, as bytes on the wire.
fn browser_request(cookie: &str) -> Vec<u8> {
    format!(
        "GET /account/settings?tab=profile HTTP/1.1\r\n\
         Host: www.example.com\r\n\
         User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120 Safari/537.36\r\n\
         Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n\
         Accept-Language: en-GB,en;q=0.9\r\n\
         Accept-Encoding: gzip, deflate, br\r\n\
         Cookie: _ga=GA1.2.1234; sessiongate={cookie}; theme=dark\r\n\
         Connection: keep-alive\r\n\r\n"
    )
    .into_bytes()
}

/// An application's response head, as bytes on the wire.
const APP_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nServer: app\r\n\
    Content-Type: text/html; charset=utf-8\r\nContent-Length: 1234\r\n\
    Cache-Control: no-cache\r\nX-Session-Set: theme=dark\r\n\r\n";

/// The upstream request head for `raw`: parse, the header rules, write.
fn upstream_head(
    settings: &Settings,
    conn: &ConnInfo,
    raw: &[u8],
    session: Option<UpstreamSession<'_>>,
    request_id: &HeaderValue,
) -> Vec<u8> {
    let head = codec::parse_request(raw).expect("request head");
    let view = RequestView {
        path: b"/account/settings",
        target: head.target,
        authority: None,
        lines: &head.lines,
    };
    let scan = headers::scan_request(settings.rules(), conn, false, &view, None).expect("scan");
    let extras = scan.extras(settings.rules(), conn, session, request_id);
    let mut out = Vec::with_capacity(1024);
    codec::write_request(
        &mut out,
        &head.method,
        view.target,
        &head.lines,
        &scan.keep,
        &extras,
        Framing::Empty,
    );
    out
}

/// The client's response head for [`APP_RESPONSE`]: parse, the write-back and
/// caching rules, write.
fn client_head(settings: &Settings, set_cookie: Option<HeaderValue>) -> Vec<u8> {
    let head = codec::parse_response(APP_RESPONSE, 65536, &Method::GET)
        .expect("response head")
        .expect("whole");
    let names = &settings.config.session.headers;
    let scan = headers::scan_response(&head.lines, names, &settings.jar, false);
    let mut keep = scan.keep;
    let extras = headers::response_extras(
        &head.lines,
        &scan.names,
        &mut keep,
        set_cookie,
        true,
        None,
        false,
    );
    let mut out = Vec::with_capacity(512);
    codec::write_response(
        &mut out,
        StatusCode::OK,
        &head.lines,
        &keep,
        &extras,
        BodyHead::Length(1234),
        false,
    );
    out
}

fn bench(c: &mut Criterion) {
    let keys = SigningKeys::new(&[SECRET]);
    let id = SessionId::random();
    let cookie = keys.sign(&id);
    c.bench_function("sign", |b| b.iter(|| keys.sign(black_box(&id))));
    c.bench_function("verify", |b| {
        b.iter(|| keys.verify(black_box(cookie.as_bytes())))
    });

    let s = MemoryStore::new();
    let ids: Vec<SessionId> = (0..100_000).map(|_| create(&s, &POLICY)).collect();
    let mut changes = Changes::default();
    changes.add_set(b"user=alice&role=admin").expect("form");
    ready(s.apply(&ids[0], &changes, &POLICY)).expect("apply");
    let mut i = 0usize;
    c.bench_function("store lookup (100k sessions)", |b| {
        b.iter(|| {
            i = (i + 7919) % ids.len();
            ready(s.load(black_box(&ids[i]), &POLICY))
        })
    });
    let mut one = Changes::default();
    one.add_set(b"n=1").expect("form");
    c.bench_function("store update one key", |b| {
        b.iter(|| {
            i = (i + 7919) % ids.len();
            ready(s.apply(black_box(&ids[i]), &one, &POLICY))
        })
    });
    c.bench_function("store create", |b| {
        b.iter(|| ready(s.create(SessionData::default(), &POLICY)))
    });
    c.bench_function("store create, 4 threads at once", |b| {
        b.iter_custom(|iters| create_concurrently(iters, &POLICY, MemoryStore::new))
    });
    let full = capped(10_000);
    c.bench_function("store create, 4 threads at once, full (each evicts)", |b| {
        b.iter_custom(|iters| {
            create_concurrently(iters, &full, || {
                let store = MemoryStore::new();
                for _ in 0..10_000 {
                    create(&store, &full);
                }
                store
            })
        })
    });

    let data = SessionData::default().with_changes(&changes);
    c.bench_function("form encode (2 keys)", |b| {
        b.iter(|| black_box(&data).with_changes(&one))
    });
    c.bench_function("form decode write-back", |b| {
        b.iter(|| {
            let mut c = Changes::default();
            c.add_set(black_box(b"user=alice+smith&role=admin&theme=dark"))
                .map(|_| c)
        })
    });

    let settings = settings();
    let conn = ConnInfo::new("127.0.0.1:50000".parse().expect("addr"), false);
    let request_id = HeaderValue::from_static("0123456789abcdef0123");
    let data_header = data.header().cloned();
    let raw = browser_request(&cookie);
    c.bench_function(
        "request head (parse, strip, verify cookie, session, forwarded, write)",
        |b| {
            b.iter(|| {
                let session = UpstreamSession {
                    id: &id,
                    new: false,
                    data: data_header.clone(),
                };
                upstream_head(
                    &settings,
                    &conn,
                    black_box(&raw),
                    Some(session),
                    &request_id,
                )
            })
        },
    );
    c.bench_function("response head (parse, write-back, vary, write)", |b| {
        b.iter(|| client_head(&settings, None))
    });
    c.bench_function("parse request head (httparse, framing)", |b| {
        b.iter(|| codec::parse_request(black_box(&raw)).map(|h| h.lines.len()))
    });
    let live = keys.sign(&ids[0]);
    let raw_live = browser_request(&live);
    c.bench_function(
        "one request: parse + verify + lookup + upstream head + sign (target < 1 us without parse)",
        |b| {
            b.iter(|| {
                let found = ready(s.load(&ids[0], &POLICY));
                let session = UpstreamSession {
                    id: &ids[0],
                    new: false,
                    data: data_header.clone(),
                };
                let up = upstream_head(
                    &settings,
                    &conn,
                    black_box(&raw_live),
                    Some(session),
                    &request_id,
                );
                let signed = keys.sign(&ids[0]);
                (found, up, signed)
            })
        },
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
