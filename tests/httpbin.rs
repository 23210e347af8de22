//! sessiongate in front of an application it was not written for: httpbin (Debian's
//! python3-httpbin 0.7) on gunicorn, with gunicorn's defaults, reached over HTTP/1.1
//! and h2c (prior knowledge) on the plain listener and h2 over TLS (ALPN, with a
//! certificate from `sessiongate gen-cert` that the client trusts alone).
//!
//! Each check is what a user deciding whether the proxy is transparent would try, and
//! asserts on what the client observes (status, headers, body) or on what httpbin
//! echoed back. The same checks run over each protocol; every failure names its
//! configuration, protocol and check, and all of them are reported together.
//!
//! httpbin 0.7 caps `/bytes`, `/stream-bytes` and `/range` at 100 KiB, and `/drip`
//! writes one byte per write (a megabyte takes most of a minute), so the 5 MB
//! download is httpbin's echo of a 5 MB upload, and the streamed downloads are its
//! largest (100 KiB), compared with httpbin's own answer.
//!
//! Without gunicorn or httpbin the test says so and passes, unless
//! `SESSIONGATE_THIRDPARTY_TEST=required` (set by `.ci/run`), where it fails.

#[path = "support/processes.rs"]
mod processes;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use base64::Engine as _;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use processes::{Process, Stop, STEP};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use sha2::Digest as _;
use tokio::net::TcpStream;

const SESSIONGATE: &str = env!("CARGO_BIN_EXE_sessiongate");
const REQUIRED: &str = "SESSIONGATE_THIRDPARTY_TEST";
/// How gunicorn and sessiongate are stopped: SIGTERM first, so that gunicorn's
/// master stops its workers and sessiongate exits cleanly, then SIGKILL.
const STOP: Stop = Stop::Term(Duration::from_secs(10));
/// How long one check, all its requests included, may take.
const CHECK_LIMIT: Duration = Duration::from_secs(30);
/// The uploads, and so the echo that comes back down.
const UPLOAD_BYTES: usize = 5 * 1024 * 1024;
/// The largest body httpbin 0.7 streams from `/stream-bytes` and `/range`.
const HTTPBIN_MAX_BYTES: usize = 100 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httpbin_behind_sessiongate_over_http1_h2c_and_h2() {
    let Some(gunicorn) = gunicorn_with_httpbin() else {
        return;
    };
    let started = Instant::now();
    let work = tempfile::tempdir().expect("temporary directory");
    // gunicorn's defaults (one sync worker, `forwarded_allow_ips` 127.0.0.1), as
    // `gunicorn httpbin:app` runs it; in an empty directory, so no gunicorn.conf.py
    // is picked up.
    let httpbin = Process::try_start_each(
        "gunicorn",
        Command::new(&gunicorn)
            .current_dir(work.path())
            .env_remove("GUNICORN_CMD_ARGS")
            .args(["--bind", "127.0.0.1:0", "--access-logfile", "-"])
            .arg("httpbin:app"),
        &["Listening at: http://"],
        STOP,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let upstream = httpbin.address().to_owned();
    let certs = work.path().join("certs");
    let secret = make_cert_and_secret(&certs).unwrap_or_else(|e| panic!("{e:#}"));
    let tls = client_tls(&certs.join("dev-cert.pem")).unwrap_or_else(|e| panic!("{e:#}"));
    let tls = Arc::new(tls);

    let mut outcomes = Vec::new();
    let mut logs = Vec::new();
    for setup in SETUPS {
        let config = work.path().join(format!("{}.yaml", setup.file));
        let proxy = start_sessiongate(&config, &certs, &upstream, setup.upstream_yaml, &secret);
        let proxy = match proxy {
            Ok(proxy) => proxy,
            Err(e) => {
                // Every check of this setup fails with the reason; the others still run.
                for protocol in Protocol::ALL {
                    for (check, _) in setup.checks {
                        outcomes.push(Outcome {
                            setup: setup.name,
                            protocol,
                            check,
                            took: Duration::ZERO,
                            result: Err(format!("sessiongate did not start: {e:#}")),
                        });
                    }
                }
                continue;
            }
        };
        for protocol in Protocol::ALL {
            let site = Site {
                protocol,
                proxy: proxy.addresses()[usize::from(protocol.tls())].clone(),
                upstream: upstream.clone(),
                tls: tls.clone(),
            };
            for (check, run) in setup.checks {
                let began = Instant::now();
                let result = match tokio::time::timeout(CHECK_LIMIT, run(site.clone())).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(format!("{e:#}")),
                    Err(_) => Err(format!("did not finish within {CHECK_LIMIT:?}")),
                };
                outcomes.push(Outcome {
                    setup: setup.name,
                    protocol,
                    check,
                    took: began.elapsed(),
                    result,
                });
            }
        }
        logs.push(proxy.log_tail(40));
    }

    let mut summary = String::new();
    for o in &outcomes {
        summary.push_str(&format!("{o}\n"));
    }
    eprintln!(
        "{summary}({} checks in {:.1?})",
        outcomes.len(),
        started.elapsed()
    );
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.result.is_err()).collect();
    if !failed.is_empty() {
        let mut message = format!("{} of {} checks failed:\n", failed.len(), outcomes.len());
        for o in failed {
            message.push_str(&format!("{o}\n"));
        }
        for log in logs {
            message.push_str(&format!("--- {log}\n"));
        }
        message.push_str(&format!("--- {}", httpbin.log_tail(60)));
        panic!("{message}");
    }
}

// ---------------------------------------------------------------------------
// What runs: three configurations, each with its checks.
// ---------------------------------------------------------------------------

/// A check: given where the proxy and httpbin are, succeed or say what was wrong.
type Check = fn(Site) -> BoxFuture<'static, anyhow::Result<()>>;

/// A sessiongate configuration and the checks run through it over every protocol.
struct Setup {
    name: &'static str,
    file: &'static str,
    /// Lines added under `upstream:`.
    upstream_yaml: &'static str,
    checks: &'static [(&'static str, Check)],
}

const SETUPS: &[Setup] = &[
    Setup {
        name: "defaults",
        file: "defaults",
        upstream_yaml: "",
        checks: &[
            ("headers httpbin sees", |s| headers_httpbin_sees(s).boxed()),
            ("app cookies both ways", |s| {
                app_cookies_both_ways(s).boxed()
            }),
            ("redirects stay on the proxy", |s| {
                redirects_stay_on_the_proxy(s).boxed()
            }),
            ("httpbin's absolute redirects", |s| {
                absolute_redirects_stay_on_the_proxy(s).boxed()
            }),
            ("Content-Location and Refresh", |s| {
                content_location_and_refresh(s).boxed()
            }),
            ("gzip", |s| gzip(s).boxed()),
            ("/stream/20", |s| stream(s).boxed()),
            ("/drip arrives incrementally", |s| drip(s).boxed()),
            ("204, 304 and HEAD", |s| bodiless(s).boxed()),
            ("Range", |s| range(s).boxed()),
            ("5 MB upload with Content-Length", |s| {
                upload_with_content_length(s).boxed()
            }),
            ("5 MB upload chunked", |s| upload_chunked(s).boxed()),
            ("downloads match httpbin's", |s| downloads_match(s).boxed()),
            ("basic auth", |s| basic_auth(s).boxed()),
            ("write-back, spoofing", |s| write_back(s).boxed()),
        ],
    },
    Setup {
        name: "rewrite_redirects: false",
        file: "no-rewrite",
        upstream_yaml: "  rewrite_redirects: false\n",
        checks: &[("the upstream's address passes through", |s| {
            upstream_address_passes_through(s).boxed()
        })],
    },
    Setup {
        name: "preserve_host: true",
        file: "preserve-host",
        upstream_yaml: "  preserve_host: true\n",
        checks: &[("redirects already name the proxy", |s| {
            preserved_host_names_the_proxy(s).boxed()
        })],
    },
];

// ---------------------------------------------------------------------------
// The checks.
// ---------------------------------------------------------------------------

/// What the application is told: its own authority as `Host`, the client's in
/// `X-Forwarded-Host`, the session, and the client's own headers untouched.
async fn headers_httpbin_sees(site: Site) -> anyhow::Result<()> {
    let mut client = site.client();
    let first = client
        .get_with(
            "/headers?show_env=1",
            &[("user-agent", "httpbin-test/1"), ("x-custom", "kept")],
        )
        .await?;
    first.expect_status(StatusCode::OK)?;
    let seen = first.json()?;
    let seen = &seen["headers"];
    expect_echoed(seen, "Host", Some(&site.upstream))?;
    expect_echoed(seen, "X-Forwarded-Host", Some(&site.proxy))?;
    expect_echoed(seen, "X-Forwarded-Proto", Some(site.scheme()))?;
    expect_echoed(seen, "X-Forwarded-For", Some("127.0.0.1"))?;
    expect_echoed(seen, "User-Agent", Some("httpbin-test/1"))?;
    expect_echoed(seen, "X-Custom", Some("kept"))?;
    expect_echoed(seen, "X-Session-New", Some("true"))?;
    expect_echoed(seen, "X-Session-Data", None)?;
    ensure!(
        echoed(seen, "X-Request-Id").is_some(),
        "no X-Request-Id reached httpbin: {seen}"
    );
    let id = session_id(seen)?;

    let second = client.get("/headers?show_env=1").await?;
    second.expect_status(StatusCode::OK)?;
    let seen = second.json()?;
    let seen = &seen["headers"];
    expect_echoed(seen, "X-Session-New", None)?;
    ensure!(
        session_id(seen)? == id,
        "the second request, with the cookie, reached httpbin with another session id"
    );
    expect_echoed(seen, "Cookie", None)?;
    Ok(())
}

/// httpbin's own cookies are set and read through the proxy; the proxy's cookie is
/// never among those httpbin sees.
async fn app_cookies_both_ways(site: Site) -> anyhow::Result<()> {
    let mut client = site.client();
    let set = client.get("/cookies/set?a=1").await?;
    set.expect_status(StatusCode::FOUND)?;
    set.expect_header("location", Some("/cookies"))?;
    let cookies = set.all("set-cookie");
    ensure!(
        cookies.iter().any(|c| c.starts_with("a=1;") || *c == "a=1"),
        "httpbin's Set-Cookie a=1 did not reach the client: {cookies:?}"
    );
    ensure!(
        cookies
            .iter()
            .any(|c| c.starts_with(&format!("{}=", site.cookie_name()))),
        "no {} session cookie on the first response: {cookies:?}",
        site.cookie_name()
    );

    let shown = client.get("/cookies").await?;
    shown.expect_status(StatusCode::OK)?;
    let cookies = &shown.json()?["cookies"];
    ensure!(
        *cookies == json!({"a": "1"}),
        "the client sent a=1 and the session cookie; httpbin saw {cookies} \
         (expected a=1 alone: the proxy's cookie is removed before the app)"
    );
    ensure!(
        shown.all("set-cookie").is_empty(),
        "a returning visitor got a Set-Cookie: {:?}",
        shown.all("set-cookie")
    );

    let deleted = client.get("/cookies/delete?a").await?;
    deleted.expect_status(StatusCode::FOUND)?;
    let shown = client.get("/cookies").await?;
    shown.expect_status(StatusCode::OK)?;
    let cookies = &shown.json()?["cookies"];
    ensure!(
        *cookies == json!({}),
        "after httpbin deleted its cookie it still saw {cookies}"
    );
    ensure!(
        client.jar.contains_key(site.cookie_name()),
        "the app deleting its cookie took the session cookie with it: {:?}",
        client.jar
    );
    Ok(())
}

/// Relative and foreign Locations pass unchanged; one naming the upstream's own
/// `http://` origin is rewritten to the origin the client used.
async fn redirects_stay_on_the_proxy(site: Site) -> anyhow::Result<()> {
    let mut client = site.client();
    let origin = site.origin();

    let relative = client.get("/redirect-to?url=%2Fget").await?;
    relative.expect_status(StatusCode::FOUND)?;
    relative.expect_header("location", Some("/get"))?;

    let foreign = client
        .get(&format!(
            "/redirect-to?url={}",
            encode("https://example.com/x?y=1")
        ))
        .await?;
    foreign.expect_header("location", Some("https://example.com/x?y=1"))?;

    let named = client
        .get(&format!(
            "/redirect-to?url={}&status_code=307",
            encode(&format!("http://{}/get?q=1", site.upstream))
        ))
        .await?;
    named.expect_status(StatusCode::TEMPORARY_REDIRECT)?;
    named
        .expect_header("location", Some(&format!("{origin}/get?q=1")))
        .context("a Location of the upstream's own http://address")?;

    let (end, seen) = client.follow("/redirect/1").await?;
    ensure!(seen == ["/get"], "/redirect/1 sent the client to {seen:?}");
    end.expect_status(StatusCode::OK)?;
    Ok(())
}

/// httpbin's own absolute redirects, followed as a browser would: they must never
/// leave the proxy. httpbin builds them from the `Host` it got (the upstream's, with
/// `preserve_host: false`) and from the scheme gunicorn takes from
/// `X-Forwarded-Proto` (it trusts 127.0.0.1 by default): over TLS they read
/// `https://<upstream>/...`, the upstream's authority with the client's scheme.
async fn absolute_redirects_stay_on_the_proxy(site: Site) -> anyhow::Result<()> {
    let mut client = site.client();
    let origin = site.origin();
    let (end, seen) = client.follow("/absolute-redirect/2").await?;
    ensure!(
        seen == [
            format!("{origin}/absolute-redirect/1"),
            format!("{origin}/get")
        ],
        "/absolute-redirect/2 sent the client through {seen:?}"
    );
    end.expect_status(StatusCode::OK)?;

    let (end, seen) = client.follow("/redirect/3?absolute=true").await?;
    ensure!(
        seen.len() == 3 && seen.iter().all(|l| l.starts_with(&format!("{origin}/"))),
        "/redirect/3?absolute=true sent the client through {seen:?}"
    );
    end.expect_status(StatusCode::OK)?;
    Ok(())
}

/// DESIGN §10: `Content-Location` and `Refresh` naming the upstream are rewritten
/// like `Location`.
async fn content_location_and_refresh(site: Site) -> anyhow::Result<()> {
    let mut client = site.client();
    let origin = site.origin();
    let up = format!("http://{}", site.upstream);
    let answer = client
        .get(&format!(
            "/response-headers?Content-Location={}&Refresh={}",
            encode(&format!("{up}/anything/1")),
            encode(&format!("5; url={up}/get"))
        ))
        .await?;
    answer.expect_status(StatusCode::OK)?;
    answer.expect_header("content-location", Some(&format!("{origin}/anything/1")))?;
    answer.expect_header("refresh", Some(&format!("5; url={origin}/get")))?;
    Ok(())
}

/// A gzip-encoded answer arrives encoded, and decodes to httpbin's JSON.
async fn gzip(site: Site) -> anyhow::Result<()> {
    let mut client = site.client();
    let answer = client
        .get_with("/gzip", &[("accept-encoding", "gzip")])
        .await?;
    answer.expect_status(StatusCode::OK)?;
    answer.expect_header("content-encoding", Some("gzip"))?;
    ensure!(
        answer.body.starts_with(&[0x1f, 0x8b]),
        "the body is not gzip: {}",
        answer.describe()
    );
    let plain = gunzip(&answer.body)?;
    let doc: Value = serde_json::from_slice(&plain).context("the gunzipped body is not JSON")?;
    ensure!(doc["gzipped"] == json!(true), "gunzipped: {doc}");
    expect_echoed(&doc["headers"], "Accept-Encoding", Some("gzip"))?;
    Ok(())
}

/// `/stream/20`: twenty JSON lines, in order, each the request httpbin saw.
async fn stream(site: Site) -> anyhow::Result<()> {
    let mut client = site.client();
    let answer = client.get("/stream/20").await?;
    answer.expect_status(StatusCode::OK)?;
    let text = std::str::from_utf8(&answer.body).context("/stream/20 is not text")?;
    let lines: Vec<&str> = text.lines().collect();
    ensure!(
        lines.len() == 20,
        "{} lines instead of 20: {}",
        lines.len(),
        answer.describe()
    );
    for (i, line) in lines.iter().enumerate() {
        let doc: Value =
            serde_json::from_str(line).with_context(|| format!("line {i} is not JSON"))?;
        ensure!(doc["id"] == json!(i), "line {i} has id {}", doc["id"]);
        ensure!(
            session_id(&doc["headers"]).is_ok(),
            "line {i}: no session id: {doc}"
        );
    }
    Ok(())
}

/// `/drip`: httpbin writes five bytes 0.4 s apart; the client must get them as
/// they are written, not all at the end.
async fn drip(site: Site) -> anyhow::Result<()> {
    let mut client = site.client();
    let started = Instant::now();
    let response = client
        .request(
            Method::GET,
            "/drip?duration=2&numbytes=5&delay=0",
            &[],
            empty(),
        )
        .await?;
    ensure!(
        response.status() == StatusCode::OK,
        "/drip: {}",
        response.status()
    );
    let mut body = response.into_body();
    let mut arrivals = Vec::new();
    let mut data = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(chunk) = frame.context("reading /drip")?.into_data() {
            if !chunk.is_empty() {
                arrivals.push(started.elapsed());
                data.extend_from_slice(&chunk);
            }
        }
    }
    ensure!(data == b"*****", "/drip body: {:?}", Bytes::from(data));
    let (first, last) = (arrivals[0], arrivals[arrivals.len() - 1]);
    // httpbin spreads the five bytes over 1.6 s; a proxy that held them back would
    // deliver them in one piece, together.
    ensure!(
        arrivals.len() >= 3 && last - first >= Duration::from_millis(800),
        "the bytes httpbin wrote over 1.6 s arrived in {} piece(s), at {arrivals:?}",
        arrivals.len()
    );
    Ok(())
}

/// `204` and `304` arrive with their status and no body; HEAD gets the headers of a
/// GET and no body.
async fn bodiless(site: Site) -> anyhow::Result<()> {
    let mut client = site.client();
    for (path, status) in [
        ("/status/204", StatusCode::NO_CONTENT),
        ("/status/304", StatusCode::NOT_MODIFIED),
    ] {
        let answer = client.get(path).await?;
        answer.expect_status(status).context(path)?;
        ensure!(
            answer.body.is_empty(),
            "{path}: a body: {}",
            answer.describe()
        );
    }
    let head = client
        .fetch(Method::HEAD, "/get", &[], empty())
        .await
        .context("HEAD /get")?;
    head.expect_status(StatusCode::OK).context("HEAD /get")?;
    head.expect_header("content-type", Some("application/json"))
        .context("HEAD /get")?;
    ensure!(
        head.body.is_empty(),
        "HEAD /get: a body: {}",
        head.describe()
    );
    // What a GET would carry: httpbin (Flask) states the length of the JSON.
    ensure!(
        head.header("content-length")
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n > 0),
        "HEAD /get: no Content-Length: {}",
        head.describe()
    );
    Ok(())
}

/// A byte range: `206`, the right `Content-Range` and the right ten bytes.
async fn range(site: Site) -> anyhow::Result<()> {
    let mut client = site.client();
    let answer = client
        .get_with("/range/1024", &[("range", "bytes=10-19")])
        .await?;
    answer.expect_status(StatusCode::PARTIAL_CONTENT)?;
    answer.expect_header("content-range", Some("bytes 10-19/1024"))?;
    answer.expect_header("accept-ranges", Some("bytes"))?;
    // httpbin's byte i is 'a' + i % 26.
    ensure!(
        answer.body == b"klmnopqrst"[..],
        "bytes 10-19: {}",
        answer.describe()
    );
    Ok(())
}

/// 5 MB up with a `Content-Length`, echoed back down whole.
async fn upload_with_content_length(site: Site) -> anyhow::Result<()> {
    let data = random_ascii(UPLOAD_BYTES);
    let length = UPLOAD_BYTES.to_string();
    let body = Full::new(data.clone()).boxed();
    let echo = upload(&site, &[("content-length", &length)], body, &data).await?;
    expect_echoed(&echo["headers"], "Content-Length", Some(&length))?;
    Ok(())
}

/// 5 MB up as a stream of unknown length (chunked on HTTP/1.1, DATA frames without
/// `content-length` on HTTP/2); httpbin gets it chunked, streamed.
async fn upload_chunked(site: Site) -> anyhow::Result<()> {
    let data = random_ascii(UPLOAD_BYTES);
    let pieces: Vec<Result<Frame<Bytes>, Infallible>> = data
        .chunks(64 * 1024)
        .map(|piece| Ok(Frame::data(data.slice_ref(piece))))
        .collect();
    let body = BoxBody::new(StreamBody::new(futures_util::stream::iter(pieces)));
    let echo = upload(&site, &[], body, &data).await?;
    expect_echoed(&echo["headers"], "Transfer-Encoding", Some("chunked"))?;
    expect_echoed(&echo["headers"], "Content-Length", None)?;
    Ok(())
}

/// POSTs `body` (which is `data`) to `/anything` and compares what httpbin echoed, by
/// SHA-256; returns the echo.
async fn upload(
    site: &Site,
    headers: &[(&str, &str)],
    body: Body,
    data: &Bytes,
) -> anyhow::Result<Value> {
    let mut client = site.client();
    let mut all = vec![("content-type", "application/octet-stream")];
    all.extend_from_slice(headers);
    let answer = client.fetch(Method::POST, "/anything", &all, body).await?;
    answer.expect_status(StatusCode::OK)?;
    ensure!(
        answer.body.len() > UPLOAD_BYTES,
        "the echo of {UPLOAD_BYTES} bytes is only {} bytes long",
        answer.body.len()
    );
    let echo = answer.json()?;
    let echoed = echo["data"].as_str().unwrap_or_default();
    ensure!(
        sha256(echoed.as_bytes()) == sha256(data),
        "httpbin echoed {} bytes (SHA-256 {}) for the {} sent (SHA-256 {})",
        echoed.len(),
        sha256(echoed.as_bytes()),
        data.len(),
        sha256(data)
    );
    Ok(echo)
}

/// httpbin's largest streamed downloads are the same bytes through the proxy as
/// straight from httpbin.
async fn downloads_match(site: Site) -> anyhow::Result<()> {
    let mut client = site.client();
    let mut direct = site.direct();
    for path in [
        format!("/stream-bytes/{HTTPBIN_MAX_BYTES}?seed=1"),
        format!("/range/{HTTPBIN_MAX_BYTES}"),
    ] {
        let via = client.get(&path).await?;
        via.expect_status(StatusCode::OK).context(path.clone())?;
        let own = direct.get(&path).await.context("straight from httpbin")?;
        own.expect_status(StatusCode::OK)
            .context("straight from httpbin")?;
        ensure!(
            own.body.len() == HTTPBIN_MAX_BYTES,
            "httpbin itself sent {} bytes for {path}",
            own.body.len()
        );
        ensure!(
            sha256(&via.body) == sha256(&own.body),
            "{path}: {} bytes through the proxy (SHA-256 {}), {} from httpbin (SHA-256 {})",
            via.body.len(),
            sha256(&via.body),
            own.body.len(),
            sha256(&own.body)
        );
    }
    Ok(())
}

/// `401` with httpbin's `WWW-Authenticate` without credentials, `200` with them.
async fn basic_auth(site: Site) -> anyhow::Result<()> {
    let mut client = site.client();
    let refused = client.get("/basic-auth/u/p").await?;
    refused.expect_status(StatusCode::UNAUTHORIZED)?;
    refused.expect_header("www-authenticate", Some("Basic realm=\"Fake Realm\""))?;

    let credentials = base64::engine::general_purpose::STANDARD.encode("u:p");
    let admitted = client
        .get_with(
            "/basic-auth/u/p",
            &[("authorization", &format!("Basic {credentials}"))],
        )
        .await?;
    admitted.expect_status(StatusCode::OK)?;
    ensure!(
        admitted.json()? == json!({"authenticated": true, "user": "u"}),
        "with credentials: {}",
        admitted.describe()
    );
    Ok(())
}

/// httpbin sets `X-Session-Set` (its `/response-headers` echoes the query as
/// headers): the client never sees it, and the next request carries the data. A
/// client's own `X-Session-*` never reaches httpbin.
async fn write_back(site: Site) -> anyhow::Result<()> {
    let mut client = site.client();
    let written = client
        .get("/response-headers?X-Session-Set=color%3Dblue")
        .await?;
    written.expect_status(StatusCode::OK)?;
    let leaked: Vec<&str> = written
        .headers
        .keys()
        .map(|name| name.as_str())
        .filter(|name| name.replace('_', "-").starts_with("x-session-"))
        .collect();
    ensure!(
        leaked.is_empty(),
        "session headers reached the client: {leaked:?}"
    );

    let seen = client
        .get_with(
            "/headers",
            &[
                ("x-session-data", "user=mallory"),
                ("x-session-id", "forged"),
            ],
        )
        .await?;
    seen.expect_status(StatusCode::OK)?;
    let echo = seen.json()?;
    let echo = &echo["headers"];
    expect_echoed(echo, "X-Session-Data", Some("color=blue"))?;
    ensure!(
        session_id(echo)? != "forged",
        "the client's X-Session-Id reached httpbin"
    );
    ensure!(
        !echo.to_string().contains("mallory"),
        "the client's X-Session-Data reached httpbin: {echo}"
    );
    Ok(())
}

/// With `rewrite_redirects: false` the Location httpbin builds from its own
/// authority reaches the client as it was written.
async fn upstream_address_passes_through(site: Site) -> anyhow::Result<()> {
    let mut client = site.client();
    let absolute = client.get("/absolute-redirect/1").await?;
    absolute.expect_status(StatusCode::FOUND)?;
    // gunicorn trusts X-Forwarded-Proto from 127.0.0.1, so httpbin writes the scheme
    // the client used, with its own authority.
    absolute.expect_header(
        "location",
        Some(&format!("{}://{}/get", site.scheme(), site.upstream)),
    )?;
    let named = format!("http://{}/get", site.upstream);
    let passed = client
        .get(&format!("/redirect-to?url={}", encode(&named)))
        .await?;
    passed.expect_header("location", Some(&named))?;
    Ok(())
}

/// With `preserve_host: true` httpbin sees the client's `Host` and its absolute
/// redirects name the proxy by themselves.
async fn preserved_host_names_the_proxy(site: Site) -> anyhow::Result<()> {
    let mut client = site.client();
    let seen = client.get("/headers").await?;
    expect_echoed(&seen.json()?["headers"], "Host", Some(&site.proxy))?;
    let (end, seen) = client.follow("/absolute-redirect/2").await?;
    let origin = site.origin();
    ensure!(
        seen == [
            format!("{origin}/absolute-redirect/1"),
            format!("{origin}/get")
        ],
        "/absolute-redirect/2 sent the client through {seen:?}"
    );
    end.expect_status(StatusCode::OK)?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Assertions on httpbin's echo.
// ---------------------------------------------------------------------------

/// The value of header `name` in httpbin's echo of the request headers.
fn echoed<'a>(headers: &'a Value, name: &str) -> Option<&'a str> {
    headers
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.as_str())
}

/// That httpbin saw `name` with `value` (`None`: did not see it at all).
fn expect_echoed(headers: &Value, name: &str, value: Option<&str>) -> anyhow::Result<()> {
    let got = echoed(headers, name);
    ensure!(
        got == value,
        "httpbin saw {name}: {got:?}, expected {value:?}; all it saw: {headers}"
    );
    Ok(())
}

/// The `X-Session-Id` httpbin saw, which must look like one.
fn session_id(headers: &Value) -> anyhow::Result<String> {
    let id = echoed(headers, "X-Session-Id")
        .with_context(|| format!("no X-Session-Id reached httpbin: {headers}"))?;
    ensure!(id.len() == 43, "X-Session-Id {id:?} is not 43 characters");
    Ok(id.to_owned())
}

// ---------------------------------------------------------------------------
// The client: one per check, with a cookie jar, speaking the check's protocol.
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    H2c,
    H2Tls,
}

impl Protocol {
    const ALL: [Protocol; 3] = [Protocol::Http1, Protocol::H2c, Protocol::H2Tls];

    fn tls(self) -> bool {
        self == Protocol::H2Tls
    }

    fn version(self) -> Version {
        match self {
            Protocol::Http1 => Version::HTTP_11,
            Protocol::H2c | Protocol::H2Tls => Version::HTTP_2,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::H2c => "h2c",
            Protocol::H2Tls => "h2+TLS",
        })
    }
}

/// Where one check's requests go.
#[derive(Clone)]
struct Site {
    protocol: Protocol,
    /// The proxy's listener for this protocol, `127.0.0.1:port`: the authority the
    /// client uses.
    proxy: String,
    /// httpbin's own address, `127.0.0.1:port`.
    upstream: String,
    /// Trusts the `gen-cert` certificate alone; ALPN `h2`.
    tls: Arc<rustls::ClientConfig>,
}

impl Site {
    fn scheme(&self) -> &'static str {
        if self.protocol.tls() {
            "https"
        } else {
            "http"
        }
    }

    /// `scheme://authority` as the client reaches the proxy.
    fn origin(&self) -> String {
        format!("{}://{}", self.scheme(), self.proxy)
    }

    /// The session cookie's name: `__Host-` over TLS (`secure: auto`, `host_prefix`).
    fn cookie_name(&self) -> &'static str {
        if self.protocol.tls() {
            "__Host-sessiongate"
        } else {
            "sessiongate"
        }
    }

    /// A client with an empty cookie jar.
    fn client(&self) -> Client {
        Client {
            site: self.clone(),
            jar: BTreeMap::new(),
            h2: None,
        }
    }

    /// A client that asks httpbin itself, over HTTP/1.1.
    fn direct(&self) -> Client {
        Site {
            protocol: Protocol::Http1,
            proxy: self.upstream.clone(),
            ..self.clone()
        }
        .client()
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn empty() -> Body {
    Empty::new().boxed()
}

struct Client {
    site: Site,
    /// Cookie name to value, from every `Set-Cookie` seen; sent on every request.
    jar: BTreeMap<String, String>,
    /// HTTP/2: one connection for the client's life. HTTP/1.1 opens one per request.
    h2: Option<http2::SendRequest<Body>>,
}

impl Client {
    async fn get(&mut self, path: &str) -> anyhow::Result<Answer> {
        self.fetch(Method::GET, path, &[], empty()).await
    }

    async fn get_with(&mut self, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<Answer> {
        self.fetch(Method::GET, path, headers, empty()).await
    }

    /// A request, its whole answer read.
    async fn fetch(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> anyhow::Result<Answer> {
        let what = format!("{method} {path}");
        let response = self.request(method, path, headers, body).await?;
        let (head, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .with_context(|| format!("{what}: reading the body"))?
            .to_bytes();
        Ok(Answer {
            what,
            status: head.status,
            headers: head.headers,
            body,
        })
    }

    /// Sends a request with the jar's cookies; keeps the answer's cookies.
    async fn request(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> anyhow::Result<Response<Incoming>> {
        let what = format!("{method} {path}");
        let mut request = Request::builder().method(method);
        request = match self.site.protocol {
            Protocol::Http1 => request.uri(path).header("host", &self.site.proxy),
            Protocol::H2c | Protocol::H2Tls => request.uri(format!("{}{path}", self.site.origin())),
        };
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if !self.jar.is_empty() {
            let cookies: Vec<String> = self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
            request = request.header("cookie", cookies.join("; "));
        }
        let request = request.body(body).context("building the request")?;
        let response = match self.site.protocol {
            Protocol::Http1 => {
                let tcp = TcpStream::connect(&self.site.proxy)
                    .await
                    .with_context(|| format!("connecting to {}", self.site.proxy))?;
                let (mut sender, connection) = http1::handshake(TokioIo::new(tcp)).await?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                sender.send_request(request).await
            }
            Protocol::H2c | Protocol::H2Tls => {
                let mut sender = self.h2_sender().await?;
                sender.ready().await.context("the HTTP/2 connection")?;
                sender.send_request(request).await
            }
        }
        .with_context(|| format!("{what}: no response"))?;
        ensure!(
            response.version() == self.site.protocol.version(),
            "{what}: answered in {:?}",
            response.version()
        );
        for set in response.headers().get_all("set-cookie") {
            self.keep_cookie(set.to_str().unwrap_or_default());
        }
        Ok(response)
    }

    async fn h2_sender(&mut self) -> anyhow::Result<http2::SendRequest<Body>> {
        if let Some(sender) = &self.h2 {
            if !sender.is_closed() {
                return Ok(sender.clone());
            }
        }
        let tcp = TcpStream::connect(&self.site.proxy)
            .await
            .with_context(|| format!("connecting to {}", self.site.proxy))?;
        let sender = if self.site.protocol.tls() {
            let connector = tokio_rustls::TlsConnector::from(self.site.tls.clone());
            let name = ServerName::try_from("127.0.0.1")?;
            let tls = connector
                .connect(name, tcp)
                .await
                .context("TLS handshake")?;
            let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            ensure!(
                alpn.as_deref() == Some(b"h2"),
                "ALPN settled on {alpn:?}, not h2"
            );
            let (sender, connection) =
                http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            sender
        } else {
            let (sender, connection) =
                http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            sender
        };
        self.h2 = Some(sender.clone());
        Ok(sender)
    }

    /// Records `name=value` from a `Set-Cookie`, or forgets the cookie when it expires.
    fn keep_cookie(&mut self, set_cookie: &str) {
        let mut parts = set_cookie.split(';');
        let Some((name, value)) = parts.next().and_then(|p| p.split_once('=')) else {
            return;
        };
        let expired = parts.any(|attribute| {
            let attribute = attribute.trim().to_ascii_lowercase();
            attribute == "max-age=0" || attribute.starts_with("expires=thu, 01 jan 1970")
        });
        if expired {
            self.jar.remove(name.trim());
        } else {
            self.jar
                .insert(name.trim().to_owned(), value.trim().to_owned());
        }
    }

    /// GETs `path` and follows redirects as a browser would (at most five); every
    /// Location must lead back to the proxy. The last answer and every Location.
    async fn follow(&mut self, start: &str) -> anyhow::Result<(Answer, Vec<String>)> {
        let mut path = start.to_owned();
        let mut seen = Vec::new();
        for _ in 0..=5 {
            let answer = self.get(&path).await?;
            if !answer.status.is_redirection() {
                return Ok((answer, seen));
            }
            let location = answer
                .header("location")
                .with_context(|| format!("a redirect without Location: {}", answer.describe()))?
                .to_owned();
            seen.push(location.clone());
            path = self
                .on_proxy(&location)
                .with_context(|| format!("following redirects from {start}: {seen:?}"))?;
        }
        bail!("more than five redirects: {seen:?}")
    }

    /// The path a Location leads to on the proxy; an error when it leads elsewhere.
    fn on_proxy(&self, location: &str) -> anyhow::Result<String> {
        if location.starts_with('/') && !location.starts_with("//") {
            return Ok(location.to_owned());
        }
        let origin = self.site.origin();
        match location.strip_prefix(&origin) {
            Some("") => Ok("/".to_owned()),
            Some(rest) if rest.starts_with('/') => Ok(rest.to_owned()),
            _ if location.contains(&self.site.upstream) => bail!(
                "Location {location:?} names the upstream {}, not the proxy {origin}",
                self.site.upstream
            ),
            _ => bail!("Location {location:?} leaves the proxy {origin}"),
        }
    }
}

/// A whole answer, as the client got it.
struct Answer {
    /// The request, for messages.
    what: String,
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    }

    fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("the body is not JSON: {}", self.describe()))
    }

    fn expect_status(&self, status: StatusCode) -> anyhow::Result<()> {
        ensure!(
            self.status == status,
            "expected {status}, got {}",
            self.describe()
        );
        Ok(())
    }

    /// That header `name` reached the client once, as `value` (`None`: not at all).
    fn expect_header(&self, name: &str, value: Option<&str>) -> anyhow::Result<()> {
        let got = self.all(name);
        ensure!(
            got == value.into_iter().collect::<Vec<_>>(),
            "expected {name}: {value:?}, got {got:?}: {}",
            self.describe()
        );
        Ok(())
    }

    /// The request, status, headers and the start of the body.
    fn describe(&self) -> String {
        let mut text = format!("{} -> {}", self.what, self.status);
        for (name, value) in &self.headers {
            text.push_str(&format!(
                "\n  {name}: {}",
                value.to_str().unwrap_or("<bytes>")
            ));
        }
        let shown = &self.body[..self.body.len().min(300)];
        text.push_str(&format!(
            "\n  ({} body bytes) {}",
            self.body.len(),
            String::from_utf8_lossy(shown)
        ));
        text
    }
}

/// One check's result over one protocol, through one configuration.
struct Outcome {
    setup: &'static str,
    protocol: Protocol,
    check: &'static str,
    took: Duration,
    result: Result<(), String>,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = match &self.result {
            Ok(()) => "ok",
            Err(_) => "FAILED",
        };
        write!(
            f,
            "[{} / {}] {}: {verdict} ({:.2?})",
            self.setup, self.protocol, self.check, self.took
        )?;
        if let Err(e) = &self.result {
            write!(f, "\n    {}", e.replace('\n', "\n    "))?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Small helpers.
// ---------------------------------------------------------------------------

fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

fn sha256(data: &[u8]) -> String {
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `len` random letters and digits: httpbin echoes them verbatim in its JSON.
fn random_ascii(len: usize) -> Bytes {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut data = vec![0u8; len];
    getrandom::fill(&mut data).expect("random bytes");
    for b in &mut data {
        *b = ALPHABET[usize::from(*b) % ALPHABET.len()];
    }
    Bytes::from(data)
}

/// Decodes gzip with the system's `gzip` (Debian's is essential), to need no crate.
fn gunzip(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let out = run_bounded(Command::new("gzip").arg("-dc"), data)?;
    ensure!(
        out.status.success(),
        "gzip -dc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

// ---------------------------------------------------------------------------
// The pieces, started as an operator would.
// ---------------------------------------------------------------------------

/// gunicorn, when it is on PATH and can load `httpbin:app`; `None` (and a note)
/// otherwise, a failure when the third-party tests are required.
fn gunicorn_with_httpbin() -> Option<PathBuf> {
    let missing = match processes::on_path("gunicorn") {
        None => "gunicorn is not on PATH".to_owned(),
        Some(gunicorn) => {
            // gunicorn's own interpreter decides whether httpbin is importable.
            match run_bounded(
                Command::new(&gunicorn).args(["--check-config", "httpbin:app"]),
                b"",
            ) {
                Ok(out) if out.status.success() => return Some(gunicorn),
                Ok(out) => format!(
                    "gunicorn cannot load httpbin:app ({})",
                    String::from_utf8_lossy(&out.stderr)
                        .lines()
                        .last()
                        .unwrap_or_default()
                ),
                Err(e) => format!("cannot run {}: {e:#}", gunicorn.display()),
            }
        }
    };
    processes::missing(
        REQUIRED,
        &format!(
            "{missing}: install Debian's gunicorn and python3-httpbin packages \
             (`.ci/run` does)"
        ),
    );
    None
}

/// Writes a certificate with `gen-cert` into `certs`, and returns a secret from
/// `gen-secret`.
fn make_cert_and_secret(certs: &Path) -> anyhow::Result<String> {
    let made = run_bounded(
        Command::new(SESSIONGATE)
            .args(["gen-cert", "--dir"])
            .arg(certs),
        b"",
    )?;
    ensure!(made.status.success(), "gen-cert failed: {made:?}");
    let secret = run_bounded(Command::new(SESSIONGATE).arg("gen-secret"), b"")?;
    ensure!(secret.status.success(), "gen-secret failed: {secret:?}");
    Ok(String::from_utf8(secret.stdout)?.trim().to_owned())
}

/// A client configuration that trusts the `gen-cert` certificate alone, ALPN `h2`.
fn client_tls(cert: &Path) -> anyhow::Result<rustls::ClientConfig> {
    sessiongate::tls::install_provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(cert).context("reading dev-cert.pem")?)?;
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The binary with a config file: a plain and a TLS listener, both on free ports,
/// `upstream_yaml` added under `upstream:`. Its addresses: plain, then TLS.
fn start_sessiongate(
    config: &Path,
    certs: &Path,
    upstream: &str,
    upstream_yaml: &str,
    secret: &str,
) -> anyhow::Result<Process> {
    let yaml = format!(
        "listen: 127.0.0.1:0\n\
         tls:\n  listen: 127.0.0.1:0\n  cert: {:?}\n  key: {:?}\n\
         upstream:\n  url: http://{upstream}\n{upstream_yaml}\
         session:\n  secrets: [\"${{SESSIONGATE_SECRET}}\"]\n\
         admin:\n  listen: null\n\
         log:\n  level: info\n  access: true\n",
        certs.join("dev-cert.pem"),
        certs.join("dev-key.pem"),
    );
    std::fs::write(config, yaml).context("writing the config")?;
    Process::try_start_each(
        "sessiongate",
        Command::new(SESSIONGATE)
            .arg("--config")
            .arg(config)
            .env("SESSIONGATE_SECRET", secret)
            .env_remove("RUST_LOG"),
        &["listening on http://", "listening on https://"],
        STOP,
    )
    .map_err(anyhow::Error::msg)
}

/// Runs a command to its end, feeding it `input`; killed past `STEP`.
fn run_bounded(command: &mut Command, input: &[u8]) -> anyhow::Result<Output> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let readers = processes::take_output(&mut child).map(|stream| {
        std::thread::spawn(move || {
            let mut read = Vec::new();
            if let Some(mut stream) = stream {
                let _ = stream.read_to_end(&mut read);
            }
            read
        })
    });
    let deadline = Instant::now() + STEP;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{command:?} did not finish within {STEP:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = writer.join();
    let [stdout, stderr] = readers.map(|r| r.join().unwrap_or_default());
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}
