//! Session lifecycle events (`events`) as whoever listens sees them: a real
//! webhook receiver on loopback and a real Redis Stream, fed by sessions that
//! browsers make and end through the proxy. What an event says (type, user,
//! reason, the one-way session tag), that it never holds a session ID, that a
//! receiver that is down or failing gets every event later and exactly once,
//! that requests never wait on delivery, that a full queue drops and counts,
//! and that shutdown delivers what is still queued.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sha2::Digest as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use support::ops::*;
use support::redis::{text, RedisServer};
use support::*;

/// The event counters in `/metrics`, each labelled `sink="webhook"` or
/// `sink="redis_stream"`.
const DELIVERED: &str = "sessiongate_events_delivered_total";
const DROPPED: &str = "sessiongate_events_dropped_total";
const FAILURES: &str = "sessiongate_events_delivery_failures_total";
const WEBHOOK: &str = "webhook";
const STREAM: &str = "redis_stream";
const STREAM_KEY: &str = "sessiongate:events";

/// A request the proxy must answer without waiting on event delivery: well
/// under the 10 s a webhook has to answer, and under the 3.1 s five tries of
/// a refused delivery take; above 1 s so that a loaded 2-core machine running
/// debug builds does not fail it.
const PROMPT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------
// The webhook receiver: a real HTTP/1.1 server recording every request.
// ---------------------------------------------------------------------------

/// One request as the receiver got it.
#[derive(Clone, Debug)]
struct Post {
    method: String,
    /// Path and query.
    target: String,
    host: Option<String>,
    content_type: Option<String>,
    body: String,
    /// What the receiver answered.
    status: u16,
}

struct HookState {
    posts: Mutex<Vec<Post>>,
    /// Answer `500` to this many requests before answering `200`.
    failures_left: AtomicUsize,
}

/// A webhook receiver on `127.0.0.1`.
struct Hook {
    addr: SocketAddr,
    state: Arc<HookState>,
    accept: JoinHandle<()>,
}

impl Hook {
    /// A receiver on a free port that accepts every batch.
    async fn start() -> Hook {
        Hook::failing_first(0).await
    }

    /// A receiver that answers `500` to its first `n` requests.
    async fn failing_first(n: usize) -> Hook {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Hook::serve(listener, n)
    }

    /// A receiver on `listener`.
    fn serve(listener: TcpListener, failures: usize) -> Hook {
        let addr = listener.local_addr().expect("receiver address");
        let state = Arc::new(HookState {
            posts: Mutex::new(Vec::new()),
            failures_left: AtomicUsize::new(failures),
        });
        let accepting = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = accepting.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |request| receive(state.clone(), request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Hook {
            addr,
            state,
            accept,
        }
    }

    /// What `events.webhook` is set to.
    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// From now on, answer every request `200`.
    fn heal(&self) {
        self.state.failures_left.store(0, Ordering::SeqCst);
    }

    /// Every request received, answered `200` or not, oldest first.
    fn posts(&self) -> Vec<Post> {
        self.state.posts.lock().unwrap().clone()
    }

    /// The events of every batch the receiver accepted, in arrival order.
    fn events(&self) -> Vec<Value> {
        self.posts()
            .iter()
            .filter(|p| p.status == 200)
            .flat_map(|p| lines(&p.body))
            .collect()
    }

    /// Waits until the accepted events satisfy `done`; returns them.
    async fn wait_for(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let events = self.events();
            if done(&events) {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "the webhook never received {what}; it received {:#?}",
                self.posts()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn receive(
    state: Arc<HookState>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let fail = state
        .failures_left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let status = if fail { 500 } else { 200 };
    // Recorded before the answer: once the proxy reads it, the test sees it.
    state.posts.lock().unwrap().push(Post {
        method: parts.method.to_string(),
        target: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        host: parts
            .headers
            .get(http::header::HOST)
            .map(|v| v.to_str().expect("Host is text").to_owned()),
        content_type: parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.to_str().expect("Content-Type is text").to_owned()),
        body: String::from_utf8(body.to_vec()).expect("an event batch is UTF-8"),
        status,
    });
    Ok(Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()))
        .expect("receiver response"))
}

/// A loopback port held by a socket that is bound and not listening: a
/// connection to it is refused, and nothing else can take the port until
/// [`ClosedPort::open`] starts a receiver on it.
struct ClosedPort(socket2::Socket);

impl ClosedPort {
    fn new() -> ClosedPort {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .expect("socket");
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        socket.bind(&loopback.into()).expect("bind");
        ClosedPort(socket)
    }

    /// The webhook URL of the receiver that is not there yet.
    fn url(&self) -> String {
        let addr = self.0.local_addr().expect("address");
        let addr = addr.as_socket().expect("an IP address");
        format!("http://{addr}/hook")
    }

    /// Starts listening: a receiver that accepts every batch.
    fn open(self) -> Hook {
        self.0.listen(128).expect("listen");
        self.0.set_nonblocking(true).expect("non-blocking");
        let listener = TcpListener::from_std(self.0.into()).expect("tokio listener");
        Hook::serve(listener, 0)
    }
}

/// A receiver that accepts connections and never answers.
struct BlackHole {
    addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl BlackHole {
    async fn start() -> BlackHole {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let accept = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                if let Ok((stream, _)) = listener.accept().await {
                    held.push(stream);
                }
            }
        });
        BlackHole { addr, accept }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

// ---------------------------------------------------------------------------
// Events as data: parsing and checking each line.
// ---------------------------------------------------------------------------

/// The events of one batch: one JSON object a line, each line ended by `\n`,
/// each checked by [`check_event`].
fn lines(body: &str) -> Vec<Value> {
    assert!(!body.is_empty(), "an empty event batch");
    assert!(
        body.ends_with('\n'),
        "an NDJSON batch ends each line with \\n: {body:?}"
    );
    body.split_terminator('\n')
        .map(|line| {
            let event: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("an event line is not JSON ({e}): {line:?}"));
            check_event(&event);
            event
        })
        .collect()
}

/// Fails the test unless `event` has exactly the documented fields, each
/// well-formed, with an `at` within a few minutes of now.
fn check_event(event: &Value) {
    let object = event
        .as_object()
        .unwrap_or_else(|| panic!("an event is a JSON object: {event}"));
    let kind = object
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("an event without a type: {event}"));
    let mut fields: BTreeSet<&str> = ["type", "at", "session", "user", "reason"].into();
    if kind == "regenerated" {
        fields.insert("previous");
    }
    let keys: BTreeSet<&str> = object.keys().map(String::as_str).collect();
    assert_eq!(keys, fields, "the fields of a {kind} event: {event}");
    assert!(is_tag(&object["session"]), "session is a tag: {event}");
    if kind == "regenerated" {
        assert!(is_tag(&object["previous"]), "previous is a tag: {event}");
        assert_ne!(object["previous"], object["session"], "{event}");
    }
    assert!(
        object["user"].is_null() || object["user"].is_string(),
        "user is a string or null: {event}"
    );
    let reasons: &[&str] = match kind {
        "created" | "regenerated" => &[],
        "destroyed" => &["logout", "admin", "others", "limit"],
        "expired" => &["idle", "absolute"],
        "evicted" => &["capacity"],
        other => panic!("unknown event type {other:?}: {event}"),
    };
    match &object["reason"] {
        Value::Null => assert!(reasons.is_empty(), "a {kind} event needs a reason: {event}"),
        Value::String(r) => assert!(
            reasons.contains(&r.as_str()),
            "a {kind} event's reason {r:?} is not one of {reasons:?}"
        ),
        other => panic!("reason is a string or null, not {other}"),
    }
    let at = object["at"]
        .as_str()
        .unwrap_or_else(|| panic!("at is a string: {event}"));
    let at_ms = unix_ms(at);
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64;
    assert!(
        (now_ms - at_ms).abs() < 5 * 60 * 1000,
        "at {at} is not about now ({now_ms} ms since 1970)"
    );
}

/// 16 lowercase hex digits.
fn is_tag(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// Unix milliseconds of an RFC 3339 UTC time with milliseconds
/// (`2026-12-01T20:44:36.123Z`), failing the test on any other form.
fn unix_ms(at: &str) -> i64 {
    let b = at.as_bytes();
    let shape = b.len() == 24
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        });
    assert!(shape, "at is not RFC 3339 UTC with milliseconds: {at:?}");
    let n = |from: usize, to: usize| at[from..to].parse::<i64>().expect("digits");
    let (y, m, d) = (n(0, 4), n(5, 7), n(8, 10));
    let (hh, mm, ss, ms) = (n(11, 13), n(14, 16), n(17, 19), n(20, 23));
    assert!(
        (1..=12).contains(&m) && (1..=31).contains(&d) && hh < 24 && mm < 60 && ss < 60,
        "at is not a valid time: {at:?}"
    );
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000) + ms
}

/// The tag events name a session by: the first 8 bytes of SHA-256 of the 32
/// raw ID bytes, in hex.
fn tag_of(id: &str) -> String {
    let raw = URL_SAFE_NO_PAD
        .decode(id)
        .unwrap_or_else(|e| panic!("X-Session-Id {id:?} is not base64url: {e}"));
    assert_eq!(raw.len(), 32, "a session ID is 32 bytes: {id:?}");
    sha2::Sha256::digest(&raw)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn field<'a>(event: &'a Value, name: &str) -> Option<&'a str> {
    event[name].as_str()
}

/// `(type, user, reason)` of an event, for comparing with what a test expects.
fn told(event: &Value) -> (String, Option<String>, Option<String>) {
    (
        field(event, "type").unwrap_or_default().to_owned(),
        field(event, "user").map(str::to_owned),
        field(event, "reason").map(str::to_owned),
    )
}

fn want(
    kind: &str,
    user: Option<&str>,
    reason: Option<&str>,
) -> (String, Option<String>, Option<String>) {
    (
        kind.to_owned(),
        user.map(str::to_owned),
        reason.map(str::to_owned),
    )
}

/// The events about the session tagged `tag`, in order.
fn about<'a>(events: &'a [Value], tag: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| field(e, "session") == Some(tag))
        .collect()
}

/// True once an event of `kind` about `tag` is among `events`.
fn has(events: &[Value], kind: &str, tag: &str) -> bool {
    about(events, tag)
        .iter()
        .any(|e| field(e, "type") == Some(kind))
}

/// How many events name each session.
fn per_session(events: &[Value]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for e in events {
        *counts
            .entry(field(e, "session").unwrap_or_default().to_owned())
            .or_insert(0) += 1;
    }
    counts
}

/// Fails the test when `text` holds any of `ids` in any form a leak would
/// take: base64url as in the cookie and X-Session-Id, standard base64, or hex.
fn assert_no_ids(text: &str, ids: &[String], what: &str) {
    assert!(!ids.is_empty(), "no session IDs to look for");
    for id in ids {
        let raw = URL_SAFE_NO_PAD.decode(id).expect("base64url");
        let forms = [
            id.clone(),
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(&raw),
            raw.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        ];
        for form in forms {
            assert!(
                !text.contains(&form),
                "{what} holds the session ID {id} (as {form}): {text}"
            );
        }
    }
}

/// Every X-Session-Id the upstream was sent.
fn ids_seen(upstream: &Upstream) -> Vec<String> {
    let ids: BTreeSet<String> = upstream
        .requests()
        .iter()
        .filter_map(|s| s.session_id().map(str::to_owned))
        .collect();
    ids.into_iter().collect()
}

/// Fails the test when any request the receiver got, accepted or not, holds
/// an ID the upstream saw.
fn assert_hook_saw_no_ids(hook: &Hook, upstream: &Upstream) {
    let posts = hook.posts();
    assert!(!posts.is_empty(), "the webhook received nothing");
    let ids = ids_seen(upstream);
    for post in posts {
        assert_no_ids(&post.body, &ids, "a webhook batch");
        assert_no_ids(&post.target, &ids, "the webhook path");
    }
}

// ---------------------------------------------------------------------------
// The application behind the proxy, and the proxy's settings.
// ---------------------------------------------------------------------------

/// `/login?user=NAME` logs in, `/regenerate` regenerates, `/login-regenerate`
/// logs alice in with a new ID, `/logout` destroys,
/// `/others` ends the user's other sessions; anything else just answers.
async fn app() -> Upstream {
    Upstream::start(|seen| match seen.uri.path() {
        "/login" => Reply::ok().session_set(&format!(
            "user={}",
            seen.query("user").expect("/login needs ?user=")
        )),
        "/regenerate" => Reply::ok().session_regenerate(),
        "/login-regenerate" => Reply::ok().session_set("user=alice").session_regenerate(),
        "/logout" => Reply::ok().session_destroy(),
        "/others" => Reply::ok().header("X-Session-Destroy-Others", "true"),
        _ => Reply::ok(),
    })
    .await
}

/// Sessions indexed by `user`, events to `webhook` (when given) every 200 ms.
fn events_config(upstream: &Upstream, webhook: Option<&str>) -> ConfigYaml {
    let yaml = config(&upstream.url())
        .set("session.user_key", "user")
        .set("events.flush_interval", "200ms");
    match webhook {
        Some(url) => yaml.set("events.webhook", &format!("\"{url}\"")),
        None => yaml,
    }
}

/// GETs `path` as `browser`, promptly and `200`; the X-Session-Id the
/// upstream saw with it.
async fn visit(proxy: &AdminProxy, upstream: &Upstream, browser: &Browser, path: &str) -> String {
    let before = upstream.count();
    let started = Instant::now();
    let response = browser.get(&proxy.url(path)).await;
    let took = started.elapsed();
    assert_eq!(response.status(), 200, "GET {path}");
    assert!(
        took < PROMPT,
        "GET {path} took {took:?}: a request never waits on event delivery"
    );
    assert_eq!(
        upstream.count(),
        before + 1,
        "GET {path} reached the upstream"
    );
    upstream.last().expect_session_id()
}

/// A new browser logged in as `user`, and its session ID.
async fn login(proxy: &AdminProxy, upstream: &Upstream, user: &str) -> (Browser, String) {
    let browser = Browser::new();
    let id = visit(proxy, upstream, &browser, &format!("/login?user={user}")).await;
    assert!(upstream.last().is_new_session());
    (browser, id)
}

/// `n` new visitors, each with one request; their session IDs.
async fn visitors(proxy: &AdminProxy, upstream: &Upstream, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let id = visit(proxy, upstream, &Browser::new(), "/").await;
        assert!(upstream.last().is_new_session());
        ids.push(id);
    }
    ids
}

/// One event counter of one destination.
async fn counter(proxy: &AdminProxy, name: &str, sink: &str) -> f64 {
    proxy.scrape().await.value(name, &[("sink", sink)])
}

/// Waits until an event counter satisfies `done`; returns its value.
async fn wait_for_counter(
    proxy: &AdminProxy,
    name: &str,
    sink: &str,
    done: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let value = counter(proxy, name, sink).await;
        if done(value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{{sink=\"{sink}\"}} stayed at {value}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two flush intervals and then some: long enough for a stray extra batch.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

// ---------------------------------------------------------------------------
// The test's own readers of times and tags.
// ---------------------------------------------------------------------------

#[test]
fn the_rfc3339_reader_of_these_tests_is_right() {
    assert_eq!(unix_ms("1970-01-01T00:00:00.000Z"), 0);
    assert_eq!(unix_ms("2000-02-29T00:00:00.123Z"), 951_782_400_123);
    assert_eq!(unix_ms("2026-12-01T20:44:36.000Z"), 1_796_157_876_000);
    let id = URL_SAFE_NO_PAD.encode([0u8; 32]);
    // SHA-256 of 32 zero bytes starts 66687aadf862bd77.
    assert_eq!(tag_of(&id), "66687aadf862bd77");
}

// ---------------------------------------------------------------------------
// One session's life, told to a webhook.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_session_life_reaches_the_webhook_in_order_as_ndjson_without_its_id() {
    let hook = Hook::start().await;
    let upstream = app().await;
    // A webhook URL often carries a token: it is sent as it is.
    let url = format!("{}?token=s3cret", hook.url());
    let proxy = AdminProxy::start(events_config(&upstream, Some(&url))).await;
    let browser = Browser::new();

    let first = visit(&proxy, &upstream, &browser, "/").await;
    assert!(upstream.last().is_new_session());
    assert_eq!(
        visit(&proxy, &upstream, &browser, "/login?user=alice").await,
        first
    );
    // The regenerating request still carries the first ID; the next, the new one.
    assert_eq!(
        visit(&proxy, &upstream, &browser, "/regenerate").await,
        first
    );
    let second = visit(&proxy, &upstream, &browser, "/").await;
    assert_ne!(
        second, first,
        "X-Session-Regenerate gave the browser a new ID"
    );
    assert_eq!(visit(&proxy, &upstream, &browser, "/logout").await, second);
    let (old, new) = (tag_of(&first), tag_of(&second));

    hook.wait_for("the destroyed event", |e| has(e, "destroyed", &new))
        .await;
    settle().await;
    let events = hook.events();
    assert!(!events.is_empty());
    let got: Vec<_> = events.iter().map(told).collect();
    assert_eq!(
        got,
        [
            want("created", None, None),
            want("regenerated", Some("alice"), None),
            want("destroyed", Some("alice"), Some("logout")),
        ],
        "the events of one session's life, in order: {events:#?}"
    );
    assert_eq!(field(&events[0], "session"), Some(old.as_str()));
    assert_eq!(field(&events[1], "session"), Some(new.as_str()));
    assert_eq!(field(&events[1], "previous"), Some(old.as_str()));
    assert_eq!(field(&events[2], "session"), Some(new.as_str()));
    let times: Vec<i64> = events
        .iter()
        .map(|e| unix_ms(field(e, "at").expect("at")))
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "events are told in the order they happened: {times:?}"
    );

    let posts = hook.posts();
    assert!(!posts.is_empty());
    for post in &posts {
        assert_eq!(post.method, "POST", "{post:?}");
        assert_eq!(post.target, "/hook?token=s3cret", "{post:?}");
        assert_eq!(post.host, Some(hook.addr.to_string()), "{post:?}");
        assert_eq!(
            post.content_type.as_deref(),
            Some("application/x-ndjson"),
            "{post:?}"
        );
        assert_eq!(post.status, 200, "{post:?}");
    }
    assert_hook_saw_no_ids(&hook, &upstream);
    let metrics = proxy.scrape().await;
    assert_eq!(metrics.value(DELIVERED, &[("sink", WEBHOOK)]), 3.0);
    assert_eq!(metrics.value(DROPPED, &[("sink", WEBHOOK)]), 0.0);
    assert_eq!(metrics.value(FAILURES, &[("sink", WEBHOOK)]), 0.0);
    assert_eq!(
        metrics.get(DELIVERED, &[("sink", STREAM)]),
        None,
        "no redis_stream series without events.redis_stream"
    );
}

#[tokio::test]
async fn a_login_that_regenerates_is_told_as_regenerated_with_the_user() {
    let hook = Hook::start().await;
    let upstream = app().await;
    let proxy = AdminProxy::start(events_config(&upstream, Some(&hook.url()))).await;
    let browser = Browser::new();
    let first = visit(&proxy, &upstream, &browser, "/").await;
    assert_eq!(
        visit(&proxy, &upstream, &browser, "/login-regenerate").await,
        first
    );
    let second = visit(&proxy, &upstream, &browser, "/").await;
    assert_ne!(second, first);
    assert_eq!(
        upstream.last().data().get("user").map(String::as_str),
        Some("alice")
    );

    let (old, new) = (tag_of(&first), tag_of(&second));
    hook.wait_for("the regeneration", |e| has(e, "regenerated", &new))
        .await;
    settle().await;
    let events = hook.events();
    assert!(!events.is_empty());
    let got: Vec<_> = events.iter().map(told).collect();
    assert_eq!(
        got,
        [
            want("created", None, None),
            want("regenerated", Some("alice"), None)
        ],
        "{events:#?}"
    );
    assert_eq!(field(&events[0], "session"), Some(old.as_str()));
    assert_eq!(field(&events[1], "session"), Some(new.as_str()));
    assert_eq!(field(&events[1], "previous"), Some(old.as_str()));
    assert_hook_saw_no_ids(&hook, &upstream);
}

// ---------------------------------------------------------------------------
// Why a session ended.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_admin_api_ending_sessions_is_told_as_destroyed_admin() {
    let hook = Hook::start().await;
    let upstream = app().await;
    let proxy = AdminProxy::start(events_config(&upstream, Some(&hook.url()))).await;
    let (_a1, alice1) = login(&proxy, &upstream, "alice").await;
    let (_a2, alice2) = login(&proxy, &upstream, "alice").await;
    let (_b, bob) = login(&proxy, &upstream, "bob").await;
    let anonymous = visitors(&proxy, &upstream, 1).await.remove(0);

    let response = plain_client()
        .delete(proxy.admin_url(&format!("/sessions/{anonymous}")))
        .send()
        .await
        .expect("admin DELETE");
    assert_eq!(response.status(), 204);
    let response = plain_client()
        .delete(proxy.admin_url("/users/alice/sessions"))
        .send()
        .await
        .expect("admin DELETE");
    assert_eq!(response.status(), 200);

    let [alice1, alice2, bob, anonymous] = [alice1, alice2, bob, anonymous].map(|id| tag_of(&id));
    hook.wait_for("three destroyed events", |e| {
        has(e, "destroyed", &alice1)
            && has(e, "destroyed", &alice2)
            && has(e, "destroyed", &anonymous)
    })
    .await;
    settle().await;
    let events = hook.events();
    for (tag, user) in [
        (&alice1, Some("alice")),
        (&alice2, Some("alice")),
        (&anonymous, None),
    ] {
        let told: Vec<_> = about(&events, tag).into_iter().map(told).collect();
        assert_eq!(
            told,
            [
                want("created", user, None),
                want("destroyed", user, Some("admin"))
            ],
            "session {tag}"
        );
    }
    let bobs: Vec<_> = about(&events, &bob).into_iter().map(told).collect();
    assert_eq!(
        bobs,
        [want("created", Some("bob"), None)],
        "bob's session lives on"
    );
    assert_hook_saw_no_ids(&hook, &upstream);
}

#[tokio::test]
async fn destroy_others_ends_only_the_users_other_sessions_as_destroyed_others() {
    let hook = Hook::start().await;
    let upstream = app().await;
    let proxy = AdminProxy::start(events_config(&upstream, Some(&hook.url()))).await;
    let (here, this) = login(&proxy, &upstream, "alice").await;
    let (_there, other) = login(&proxy, &upstream, "alice").await;
    let (_bob, bob) = login(&proxy, &upstream, "bob").await;
    assert_eq!(visit(&proxy, &upstream, &here, "/others").await, this);

    let [this, other, bob] = [this, other, bob].map(|id| tag_of(&id));
    hook.wait_for("the other session's end", |e| has(e, "destroyed", &other))
        .await;
    settle().await;
    let events = hook.events();
    let others: Vec<_> = about(&events, &other).into_iter().map(told).collect();
    assert_eq!(
        others,
        [
            want("created", Some("alice"), None),
            want("destroyed", Some("alice"), Some("others"))
        ]
    );
    for tag in [&this, &bob] {
        let told: Vec<_> = about(&events, tag).into_iter().map(told).collect();
        assert_eq!(told.len(), 1, "session {tag} lives on: {told:?}");
        assert_eq!(told[0].0, "created");
    }
    assert_hook_saw_no_ids(&hook, &upstream);
}

#[tokio::test]
async fn a_login_beyond_max_per_user_ends_the_least_recently_used_as_destroyed_limit() {
    let hook = Hook::start().await;
    let upstream = app().await;
    let proxy = AdminProxy::start(
        events_config(&upstream, Some(&hook.url())).set("session.max_per_user", "2"),
    )
    .await;
    let (_first, first) = login(&proxy, &upstream, "alice").await;
    // Sessions are last seen to the second: the next logins come a second later.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_second, second) = login(&proxy, &upstream, "alice").await;
    let (_third, third) = login(&proxy, &upstream, "alice").await;

    let [first, second, third] = [first, second, third].map(|id| tag_of(&id));
    hook.wait_for("the first session's end", |e| has(e, "destroyed", &first))
        .await;
    settle().await;
    let events = hook.events();
    let firsts: Vec<_> = about(&events, &first).into_iter().map(told).collect();
    assert_eq!(
        firsts,
        [
            want("created", Some("alice"), None),
            want("destroyed", Some("alice"), Some("limit"))
        ]
    );
    for tag in [&second, &third] {
        let told: Vec<_> = about(&events, tag).into_iter().map(told).collect();
        assert_eq!(
            told,
            [want("created", Some("alice"), None)],
            "session {tag}"
        );
    }
    assert_hook_saw_no_ids(&hook, &upstream);
}

#[tokio::test]
async fn a_full_memory_store_evicts_as_evicted_capacity() {
    let hook = Hook::start().await;
    let upstream = app().await;
    let proxy = AdminProxy::start(
        events_config(&upstream, Some(&hook.url())).set("session.max_sessions", "2"),
    )
    .await;
    // The oldest session whose cookie never came back goes first.
    let (_first, first) = login(&proxy, &upstream, "alice").await;
    let rest = visitors(&proxy, &upstream, 2).await;

    let first = tag_of(&first);
    let rest: Vec<String> = rest.iter().map(|id| tag_of(id)).collect();
    hook.wait_for("the eviction", |e| has(e, "evicted", &first))
        .await;
    settle().await;
    let events = hook.events();
    let firsts: Vec<_> = about(&events, &first).into_iter().map(told).collect();
    assert_eq!(
        firsts,
        [
            want("created", Some("alice"), None),
            want("evicted", Some("alice"), Some("capacity"))
        ]
    );
    for tag in &rest {
        let told: Vec<_> = about(&events, tag).into_iter().map(told).collect();
        assert_eq!(told, [want("created", None, None)], "session {tag}");
    }
    assert_hook_saw_no_ids(&hook, &upstream);
}

#[tokio::test]
async fn an_idle_session_in_the_memory_store_is_told_as_expired_idle() {
    let hook = Hook::start().await;
    let upstream = app().await;
    let proxy = AdminProxy::start(
        events_config(&upstream, Some(&hook.url())).set("session.idle_timeout", "1s"),
    )
    .await;
    let (_browser, id) = login(&proxy, &upstream, "alice").await;
    let started = Instant::now();

    let tag = tag_of(&id);
    // Nobody touches it: the sweep (every second) finds it.
    hook.wait_for("the expiry", |e| has(e, "expired", &tag))
        .await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "expired only after {took:?}");
    let events = hook.events();
    let told: Vec<_> = about(&events, &tag).into_iter().map(told).collect();
    assert_eq!(
        told,
        [
            want("created", Some("alice"), None),
            want("expired", Some("alice"), Some("idle"))
        ]
    );
    assert_hook_saw_no_ids(&hook, &upstream);
}

// ---------------------------------------------------------------------------
// A receiver that is down or failing.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn events_wait_for_a_receiver_that_is_down_and_arrive_once_it_is_up() {
    let port = ClosedPort::new();
    let url = port.url();
    let upstream = app().await;
    let proxy = AdminProxy::start(events_config(&upstream, Some(&url))).await;
    // `visit` fails any request that is not answered promptly.
    let ids = visitors(&proxy, &upstream, 5).await;
    let tags: BTreeSet<String> = ids.iter().map(|id| tag_of(id)).collect();
    assert_eq!(tags.len(), 5);

    wait_for_counter(&proxy, FAILURES, WEBHOOK, |n| n >= 2.0).await;
    let metrics = proxy.scrape().await;
    assert_eq!(metrics.value(DELIVERED, &[("sink", WEBHOOK)]), 0.0);
    assert_eq!(metrics.value(DROPPED, &[("sink", WEBHOOK)]), 0.0);
    // The proxy still answers while the receiver is down.
    visit(&proxy, &upstream, &Browser::new(), "/").await;

    let hook = port.open();
    let events = hook
        .wait_for("the five created events", |e| {
            tags.iter().all(|t| has(e, "created", t))
        })
        .await;
    assert!(!events.is_empty());
    settle().await;
    let events = hook.events();
    let received = per_session(&events);
    for tag in &tags {
        assert_eq!(received.get(tag), Some(&1), "session {tag}: {events:#?}");
    }
    // The sixth visitor's event came on its own or with the others.
    assert_eq!(events.len(), 6, "{events:#?}");
    let delivered =
        wait_for_counter(&proxy, DELIVERED, WEBHOOK, |n| n >= events.len() as f64).await;
    assert_eq!(delivered, events.len() as f64);
    let metrics = proxy.scrape().await;
    assert_eq!(metrics.value(DROPPED, &[("sink", WEBHOOK)]), 0.0);
    assert!(metrics.value(FAILURES, &[("sink", WEBHOOK)]) >= 2.0);
    assert_hook_saw_no_ids(&hook, &upstream);
}

#[tokio::test]
async fn a_receiver_that_fails_then_recovers_gets_each_event_exactly_once() {
    let hook = Hook::failing_first(3).await;
    let upstream = app().await;
    let proxy = AdminProxy::start(events_config(&upstream, Some(&hook.url()))).await;
    let ids = visitors(&proxy, &upstream, 5).await;
    let tags: BTreeSet<String> = ids.iter().map(|id| tag_of(id)).collect();

    hook.wait_for("the five created events", |e| {
        tags.iter().all(|t| has(e, "created", t))
    })
    .await;
    settle().await;
    let events = hook.events();
    assert!(!events.is_empty());
    let received = per_session(&events);
    assert_eq!(
        received.values().copied().collect::<Vec<_>>(),
        vec![1; 5],
        "each event once: {events:#?}"
    );
    assert_eq!(received.keys().cloned().collect::<BTreeSet<_>>(), tags);

    // The failed batch was kept and sent again as it was.
    let posts = hook.posts();
    assert!(posts.len() >= 4, "{posts:#?}");
    let statuses: Vec<u16> = posts.iter().map(|p| p.status).collect();
    assert_eq!(&statuses[..4], [500, 500, 500, 200], "{posts:#?}");
    assert!(statuses[4..].iter().all(|s| *s == 200), "{statuses:?}");
    for rejected in &posts[..3] {
        assert_eq!(rejected.body, posts[3].body, "the retried batch changed");
    }
    let delivered = wait_for_counter(&proxy, DELIVERED, WEBHOOK, |n| n >= 5.0).await;
    assert_eq!(delivered, 5.0);
    let metrics = proxy.scrape().await;
    assert_eq!(metrics.value(FAILURES, &[("sink", WEBHOOK)]), 3.0);
    assert_eq!(metrics.value(DROPPED, &[("sink", WEBHOOK)]), 0.0);
    assert_hook_saw_no_ids(&hook, &upstream);
}

#[tokio::test]
async fn a_full_queue_drops_new_events_and_counts_them_while_requests_go_on() {
    let port = ClosedPort::new();
    let url = port.url();
    let upstream = app().await;
    let proxy =
        AdminProxy::start(events_config(&upstream, Some(&url)).set("events.queue", "3")).await;
    // A first event, taken from the queue into a batch the delivery keeps
    // trying: from then on nothing leaves the queue.
    let primer = visitors(&proxy, &upstream, 1).await;
    wait_for_counter(&proxy, FAILURES, WEBHOOK, |n| n >= 1.0).await;
    let ids = visitors(&proxy, &upstream, 10).await;
    let tags: Vec<String> = ids.iter().map(|id| tag_of(id)).collect();
    let metrics = proxy.scrape().await;
    assert_eq!(
        metrics.value(DROPPED, &[("sink", WEBHOOK)]),
        7.0,
        "a queue of 3 takes 3 of 10 events and drops the rest"
    );
    assert_eq!(metrics.value(DELIVERED, &[("sink", WEBHOOK)]), 0.0);

    let hook = port.open();
    let primer = tag_of(&primer[0]);
    hook.wait_for("the primer and three queued events", |e| {
        has(e, "created", &primer) && tags[..3].iter().all(|t| has(e, "created", t))
    })
    .await;
    settle().await;
    let events = hook.events();
    assert!(!events.is_empty());
    let of_ten: Vec<&String> = tags.iter().filter(|t| has(&events, "created", t)).collect();
    assert!(of_ten.len() <= 3, "{} of the 10 arrived", of_ten.len());
    assert_eq!(
        of_ten,
        tags[..3].iter().collect::<Vec<_>>(),
        "the first three queued"
    );
    assert_eq!(events.len(), 4, "{events:#?}");
    let delivered = wait_for_counter(&proxy, DELIVERED, WEBHOOK, |n| n >= 4.0).await;
    assert_eq!(delivered, 4.0);
    assert_eq!(counter(&proxy, DROPPED, WEBHOOK).await, 7.0);
    assert_hook_saw_no_ids(&hook, &upstream);
}

/// Without a stalled delivery to hold the queue up, a batch being gathered
/// takes events out of the queue: what the proxy keeps for a destination that
/// is down is `queue` plus up to `batch` events, never more. Every event is
/// either delivered or counted as dropped.
#[tokio::test]
async fn a_destination_that_is_down_costs_at_most_queue_plus_batch_events() {
    let port = ClosedPort::new();
    let url = port.url();
    let upstream = app().await;
    let proxy = AdminProxy::start(
        events_config(&upstream, Some(&url))
            .set("events.queue", "3")
            .set("events.batch", "2"),
    )
    .await;
    let ids = visitors(&proxy, &upstream, 10).await;
    let tags: BTreeSet<String> = ids.iter().map(|id| tag_of(id)).collect();
    assert_eq!(tags.len(), 10);
    let dropped = counter(&proxy, DROPPED, WEBHOOK).await;
    assert!(
        dropped >= 5.0,
        "10 events, room for 3 + 2: {dropped} dropped"
    );
    wait_for_counter(&proxy, FAILURES, WEBHOOK, |n| n >= 1.0).await;

    let hook = port.open();
    let kept = 10 - dropped as usize;
    hook.wait_for("every event not dropped", |e| e.len() >= kept)
        .await;
    settle().await;
    let events = hook.events();
    assert!(!events.is_empty());
    assert_eq!(events.len(), kept, "{dropped} dropped; {events:#?}");
    let received = per_session(&events);
    assert!(received.values().all(|n| *n == 1), "{received:?}");
    assert!(received.keys().all(|t| tags.contains(t)), "{received:?}");
    let delivered = wait_for_counter(&proxy, DELIVERED, WEBHOOK, |n| n >= kept as f64).await;
    assert_eq!(delivered + counter(&proxy, DROPPED, WEBHOOK).await, 10.0);
    assert_hook_saw_no_ids(&hook, &upstream);
}

#[tokio::test]
async fn a_webhook_that_never_answers_holds_up_neither_requests_nor_shutdown() {
    let hole = BlackHole::start().await;
    let upstream = app().await;
    let proxy = AdminProxy::start(events_config(&upstream, Some(&hole.url()))).await;
    let browser = Browser::new();
    visit(&proxy, &upstream, &browser, "/").await;
    // The batch is out, waiting for an answer that never comes.
    tokio::time::sleep(Duration::from_millis(400)).await;
    visit(&proxy, &upstream, &browser, "/login?user=alice").await;
    visitors(&proxy, &upstream, 3).await;
    drop(browser);
    let started = Instant::now();
    proxy.shutdown().await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "shutdown waited {took:?} on a webhook that never answers"
    );
}

// ---------------------------------------------------------------------------
// A Redis Stream, alone and beside a webhook.
// ---------------------------------------------------------------------------

/// The `event` field of every entry of the stream, parsed and checked.
async fn stream_events(redis: &RedisServer) -> Vec<Value> {
    let reply = redis.command(&["XRANGE", STREAM_KEY, "-", "+"]).await;
    let ::redis::Value::Array(entries) = reply else {
        panic!("XRANGE answered {reply:?}");
    };
    entries
        .iter()
        .map(|entry| {
            let ::redis::Value::Array(parts) = entry else {
                panic!("a stream entry {entry:?}");
            };
            let ::redis::Value::Array(fields) = &parts[1] else {
                panic!("a stream entry's fields {entry:?}");
            };
            assert_eq!(fields.len(), 2, "one field, `event`: {entry:?}");
            assert_eq!(text(&fields[0]), "event", "{entry:?}");
            let line = text(&fields[1]);
            assert!(!line.contains('\n'), "one line, no newline: {line:?}");
            let mut events = lines(&format!("{line}\n"));
            assert_eq!(events.len(), 1);
            events.remove(0)
        })
        .collect()
}

async fn wait_for_stream(
    redis: &RedisServer,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let events = stream_events(redis).await;
        if done(&events) {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "the stream never held {what}; it holds {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A visitor arrives, logs in as alice, regenerates and logs out; the tags of
/// its first and second IDs.
async fn a_life(proxy: &AdminProxy, upstream: &Upstream) -> (String, String) {
    let browser = Browser::new();
    let first = visit(proxy, upstream, &browser, "/").await;
    visit(proxy, upstream, &browser, "/login?user=alice").await;
    visit(proxy, upstream, &browser, "/regenerate").await;
    let second = visit(proxy, upstream, &browser, "/logout").await;
    assert_ne!(first, second);
    (tag_of(&first), tag_of(&second))
}

/// What [`a_life`] tells.
fn assert_a_life(events: &[Value], first: &str, second: &str) {
    assert!(!events.is_empty());
    let got: Vec<_> = events.iter().map(told).collect();
    assert_eq!(
        got,
        [
            want("created", None, None),
            want("regenerated", Some("alice"), None),
            want("destroyed", Some("alice"), Some("logout")),
        ],
        "{events:#?}"
    );
    assert_eq!(field(&events[0], "session"), Some(first));
    assert_eq!(field(&events[1], "session"), Some(second));
    assert_eq!(field(&events[1], "previous"), Some(first));
    assert_eq!(field(&events[2], "session"), Some(second));
}

#[tokio::test]
async fn a_redis_stream_receives_each_event_as_an_entry() {
    let Some(redis) = RedisServer::start("a_redis_stream_receives_each_event_as_an_entry").await
    else {
        return;
    };
    let upstream = app().await;
    let proxy = AdminProxy::start(
        events_config(&upstream, None)
            .with_redis(&redis.url())
            .set("events.redis_stream", &format!("\"{STREAM_KEY}\"")),
    )
    .await;
    let (first, second) = a_life(&proxy, &upstream).await;

    wait_for_stream(&redis, "the destroyed event", |e| {
        has(e, "destroyed", &second)
    })
    .await;
    settle().await;
    let events = stream_events(&redis).await;
    assert_a_life(&events, &first, &second);
    let delivered = wait_for_counter(&proxy, DELIVERED, STREAM, |n| n >= 3.0).await;
    assert_eq!(delivered, 3.0);
    let metrics = proxy.scrape().await;
    assert_eq!(metrics.value(DROPPED, &[("sink", STREAM)]), 0.0);
    assert_eq!(metrics.value(FAILURES, &[("sink", STREAM)]), 0.0);
    assert_eq!(metrics.get(DELIVERED, &[("sink", WEBHOOK)]), None);
    let raw = redis.command(&["XRANGE", STREAM_KEY, "-", "+"]).await;
    assert_no_ids(&format!("{raw:?}"), &ids_seen(&upstream), "the stream");
}

#[tokio::test]
async fn a_webhook_and_a_redis_stream_receive_the_same_events() {
    let Some(redis) =
        RedisServer::start("a_webhook_and_a_redis_stream_receive_the_same_events").await
    else {
        return;
    };
    let hook = Hook::start().await;
    let upstream = app().await;
    let proxy = AdminProxy::start(
        events_config(&upstream, Some(&hook.url()))
            .with_redis(&redis.url())
            .set("events.redis_stream", &format!("\"{STREAM_KEY}\"")),
    )
    .await;
    let (first, second) = a_life(&proxy, &upstream).await;

    hook.wait_for("the destroyed event", |e| has(e, "destroyed", &second))
        .await;
    wait_for_stream(&redis, "the destroyed event", |e| {
        has(e, "destroyed", &second)
    })
    .await;
    settle().await;
    let (posted, streamed) = (hook.events(), stream_events(&redis).await);
    assert_a_life(&posted, &first, &second);
    assert_eq!(posted, streamed, "both destinations are told the same");
    for sink in [WEBHOOK, STREAM] {
        let delivered = wait_for_counter(&proxy, DELIVERED, sink, |n| n >= 3.0).await;
        assert_eq!(delivered, 3.0, "{sink}");
    }
    assert_hook_saw_no_ids(&hook, &upstream);
}

#[tokio::test]
async fn a_dead_webhook_does_not_hold_up_the_redis_stream() {
    let Some(redis) = RedisServer::start("a_dead_webhook_does_not_hold_up_the_redis_stream").await
    else {
        return;
    };
    let port = ClosedPort::new();
    let url = port.url();
    let upstream = app().await;
    let proxy = AdminProxy::start(
        events_config(&upstream, Some(&url))
            .with_redis(&redis.url())
            .set("events.redis_stream", &format!("\"{STREAM_KEY}\"")),
    )
    .await;
    let (first, second) = a_life(&proxy, &upstream).await;

    wait_for_stream(&redis, "the destroyed event", |e| {
        has(e, "destroyed", &second)
    })
    .await;
    assert_a_life(&stream_events(&redis).await, &first, &second);
    wait_for_counter(&proxy, FAILURES, WEBHOOK, |n| n >= 1.0).await;
    let metrics = proxy.scrape().await;
    assert_eq!(metrics.value(DELIVERED, &[("sink", WEBHOOK)]), 0.0);
    assert_eq!(metrics.value(FAILURES, &[("sink", STREAM)]), 0.0);
}

#[tokio::test]
async fn with_the_redis_store_each_reason_is_told_too() {
    let Some(redis) = RedisServer::start("with_the_redis_store_each_reason_is_told_too").await
    else {
        return;
    };
    let hook = Hook::start().await;
    let upstream = app().await;
    let proxy = AdminProxy::start(
        events_config(&upstream, Some(&hook.url()))
            .with_redis(&redis.url())
            .set("session.max_per_user", "2"),
    )
    .await;
    // alice: one session ends the other, then the admin ends the first.
    let (here, alice1) = login(&proxy, &upstream, "alice").await;
    let (_there, alice2) = login(&proxy, &upstream, "alice").await;
    visit(&proxy, &upstream, &here, "/others").await;
    // bob: a third login ends his least recently used session.
    let (_b1, bob1) = login(&proxy, &upstream, "bob").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_b2, bob2) = login(&proxy, &upstream, "bob").await;
    let (_b3, bob3) = login(&proxy, &upstream, "bob").await;
    let response = plain_client()
        .delete(proxy.admin_url("/users/alice/sessions"))
        .send()
        .await
        .expect("admin DELETE");
    assert_eq!(response.status(), 200);

    let [alice1, alice2, bob1, bob2, bob3] =
        [alice1, alice2, bob1, bob2, bob3].map(|id| tag_of(&id));
    hook.wait_for("three ends", |e| {
        has(e, "destroyed", &alice1) && has(e, "destroyed", &alice2) && has(e, "destroyed", &bob1)
    })
    .await;
    settle().await;
    let events = hook.events();
    let expected = [
        (&alice1, "alice", Some("admin")),
        (&alice2, "alice", Some("others")),
        (&bob1, "bob", Some("limit")),
        (&bob2, "bob", None),
        (&bob3, "bob", None),
    ];
    for (tag, user, ended) in expected {
        let got: Vec<_> = about(&events, tag).into_iter().map(told).collect();
        let mut wanted = vec![want("created", Some(user), None)];
        if let Some(reason) = ended {
            wanted.push(want("destroyed", Some(user), Some(reason)));
        }
        assert_eq!(got, wanted, "session {tag} of {user}");
    }
    assert_eq!(events.len(), 8, "{events:#?}");
    assert_hook_saw_no_ids(&hook, &upstream);
}

// ---------------------------------------------------------------------------
// Shutdown.
// ---------------------------------------------------------------------------

/// Events gathered into a batch that waits for `flush_interval` go out at
/// shutdown, not after the interval.
#[tokio::test]
async fn shutdown_sends_the_batch_being_gathered() {
    let hook = Hook::start().await;
    let upstream = app().await;
    let proxy = AdminProxy::start(
        events_config(&upstream, Some(&hook.url())).set("events.flush_interval", "10s"),
    )
    .await;
    let browser = Browser::new();
    let id = visit(&proxy, &upstream, &browser, "/").await;
    visit(&proxy, &upstream, &browser, "/login?user=alice").await;
    visit(&proxy, &upstream, &browser, "/logout").await;
    let early = visitors(&proxy, &upstream, 1).await;
    drop(browser);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        hook.posts().is_empty(),
        "with flush_interval 10s nothing is sent yet: {:#?}",
        hook.posts()
    );

    let started = Instant::now();
    proxy.shutdown().await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "shutdown took {took:?}");
    // No waiting: the events are there when shutdown returns.
    let events = hook.events();
    assert!(
        !events.is_empty(),
        "shutdown sent nothing: {:#?}",
        hook.posts()
    );
    let (tag, early) = (tag_of(&id), tag_of(&early[0]));
    let got: Vec<_> = about(&events, &tag).into_iter().map(told).collect();
    assert_eq!(
        got,
        [
            want("created", None, None),
            want("destroyed", Some("alice"), Some("logout"))
        ]
    );
    let got: Vec<_> = about(&events, &early).into_iter().map(told).collect();
    assert_eq!(got, [want("created", None, None)]);
    assert_eq!(events.len(), 3, "{events:#?}");
    assert_hook_saw_no_ids(&hook, &upstream);
}

/// A destination that failed and is waiting to be tried again: at shutdown the
/// batch it kept and the events queued behind it get one last try.
#[tokio::test]
async fn shutdown_gives_a_destination_waiting_to_retry_one_last_try() {
    let hook = Hook::failing_first(usize::MAX).await;
    let upstream = app().await;
    let proxy = AdminProxy::start(events_config(&upstream, Some(&hook.url()))).await;
    let kept = visitors(&proxy, &upstream, 2).await;
    // Tries at about 0.2, 0.3, 0.5, 0.9 s; the next waits 1.6 s.
    wait_for_counter(&proxy, FAILURES, WEBHOOK, |n| n >= 4.0).await;
    // Behind the failed batch, in the queue.
    let queued = visitors(&proxy, &upstream, 2).await;
    assert!(hook.events().is_empty());
    hook.heal();

    let started = Instant::now();
    proxy.shutdown().await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "shutdown took {took:?}");
    let events = hook.events();
    assert!(
        !events.is_empty(),
        "shutdown sent nothing: {:#?}",
        hook.posts()
    );
    let received = per_session(&events);
    for id in kept.iter().chain(&queued) {
        let tag = tag_of(id);
        assert_eq!(received.get(&tag), Some(&1), "session {tag}: {events:#?}");
    }
    assert_eq!(events.len(), 4, "{events:#?}");
    assert_hook_saw_no_ids(&hook, &upstream);
}
