//! Micro benchmarks of the per-request work: signing, verifying, store lookup and
//! update, form encoding, and building the upstream request's headers.
//!
//!     cargo bench --bench hot_path
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderValue, Request};
use sessiongate::config::Config;
use sessiongate::cookie::SigningKeys;
use sessiongate::proxy::{self, ConnInfo, Settings, UpstreamSession};
use sessiongate::session::memory::{MemorySettings, MemoryStore};
use sessiongate::session::{Changes, SessionData, SessionId, SessionStore};

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
    Settings::new(Config::parse(yaml, Path::new("bench.yaml"), false).expect("bench config"))
}

fn store() -> MemoryStore {
    MemoryStore::new(MemorySettings {
        idle_timeout: Duration::from_secs(3600),
        absolute_timeout: Duration::from_secs(86400),
        max_sessions: 1_000_000,
        max_data_bytes: 4096,
        regenerate_grace: Duration::from_secs(10),
    })
}

fn browser_request(cookie: &str) -> http::request::Parts {
    let (parts, ()) = Request::builder()
        .uri("/account/settings?tab=profile")
        .header("host", "www.example.com")
        .header(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120 Safari/537.36",
        )
        .header(
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        )
        .header("accept-language", "en-GB,en;q=0.9")
        .header("accept-encoding", "gzip, deflate, br")
        .header(
            "cookie",
            format!("_ga=GA1.2.1234; sessiongate={cookie}; theme=dark"),
        )
        .header("connection", "keep-alive")
        .body(())
        .expect("request")
        .into_parts();
    parts
}

fn bench(c: &mut Criterion) {
    let keys = SigningKeys::new(&[SECRET]);
    let id = SessionId::random();
    let cookie = keys.sign(&id);
    c.bench_function("sign", |b| b.iter(|| keys.sign(black_box(&id))));
    c.bench_function("verify", |b| {
        b.iter(|| keys.verify(black_box(cookie.as_bytes())))
    });

    let s = store();
    let ids: Vec<SessionId> = ready(async {
        let mut v = Vec::new();
        for _ in 0..100_000 {
            v.push(s.create(SessionData::default()).await.expect("create"));
        }
        v
    });
    let mut changes = Changes::default();
    changes.add_set(b"user=alice&role=admin").expect("form");
    ready(s.apply(&ids[0], &changes)).expect("apply");
    let mut i = 0usize;
    c.bench_function("store lookup (100k sessions)", |b| {
        b.iter(|| {
            i = (i + 7919) % ids.len();
            ready(s.load(black_box(&ids[i])))
        })
    });
    let mut one = Changes::default();
    one.add_set(b"n=1").expect("form");
    c.bench_function("store update one key", |b| {
        b.iter(|| {
            i = (i + 7919) % ids.len();
            ready(s.apply(black_box(&ids[i]), &one))
        })
    });
    c.bench_function("store create", |b| {
        b.iter(|| ready(s.create(SessionData::default())))
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
    c.bench_function("request headers (strip, cookie, session, forwarded)", |b| {
        b.iter_batched(
            || browser_request(&cookie),
            |mut parts| {
                let inbound =
                    proxy::inbound(&settings, &conn, false, &mut parts, None).expect("inbound");
                let session = UpstreamSession {
                    id: &id,
                    new: false,
                    data: data_header.clone(),
                };
                let uri = proxy::outbound(
                    &settings,
                    &conn,
                    &inbound,
                    &mut parts,
                    Some(session),
                    request_id.clone(),
                );
                (parts, uri)
            },
            criterion::BatchSize::SmallInput,
        )
    });
    c.bench_function("sign+verify+lookup+headers (one request)", |b| {
        b.iter_batched(
            || browser_request(&cookie),
            |mut parts| {
                let inbound =
                    proxy::inbound(&settings, &conn, false, &mut parts, None).expect("inbound");
                let found = ready(s.load(&ids[0]));
                let session = UpstreamSession {
                    id: &ids[0],
                    new: false,
                    data: data_header.clone(),
                };
                let uri = proxy::outbound(
                    &settings,
                    &conn,
                    &inbound,
                    &mut parts,
                    Some(session),
                    request_id.clone(),
                );
                let resigned = keys.sign(&ids[0]);
                (parts, uri, found, resigned)
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
