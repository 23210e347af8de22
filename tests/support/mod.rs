//! Shared fixtures for the integration tests: a recording upstream, the proxy
//! started in-process on `127.0.0.1:0`, a config builder, and a browser-like
//! client that keeps cookies.
//!
//! A test reads like a story:
//!
//! ```ignore
//! let upstream = Upstream::start(|_| Reply::ok()).await;
//! let proxy = Proxy::start(config(&upstream.url())).await;
//! let browser = Browser::new();
//! let response = browser.get(&proxy.url("/")).await;
//! assert!(upstream.last().session_id().is_some());
//! ```

// Every test binary includes this module and uses a different part of it.
#![allow(dead_code)]
pub mod ops;
pub mod protocol;
pub mod raw;
pub mod redis;
pub mod tls;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use hmac::{KeyInit as _, Mac as _};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

/// The signing secret every test proxy uses unless a test says otherwise.
pub const SECRET_A: &str = "sessiongate-test-secret-A-0123456789abcdef";
/// A second secret, for rotation tests.
pub const SECRET_B: &str = "sessiongate-test-secret-B-0123456789abcdef";
/// The default cookie name.
pub const COOKIE: &str = "sessiongate";
/// The context prefix the cookie tag is computed over (decisions.md).
const TAG_CONTEXT: &[u8] = b"sessiongate/v1\0";
/// How long a test waits for anything that should happen promptly.
pub const PATIENCE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Upstream: a real HTTP/1.1 server that records what it receives.
// ---------------------------------------------------------------------------

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    /// The first `KEEP_BODY_BYTES` of the body.
    pub body: Bytes,
    /// Every byte of the body, counted.
    pub body_len: u64,
}

/// Bodies larger than this are counted, not kept.
const KEEP_BODY_BYTES: usize = 64 * 1024;

impl Seen {
    /// The single value of a header, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut values = self.headers.get_all(name).iter();
        let first = values.next()?;
        assert!(
            values.next().is_none(),
            "upstream received {name} more than once: {:?}",
            self.headers
        );
        Some(first.to_str().expect("header is not text"))
    }

    /// Every value of a header, as text.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().expect("header is not text").to_owned())
            .collect()
    }

    pub fn session_id(&self) -> Option<&str> {
        self.header("x-session-id")
    }

    /// The session id, failing the test when the request had none.
    pub fn expect_session_id(&self) -> String {
        self.session_id()
            .unwrap_or_else(|| panic!("upstream got no X-Session-Id: {:?}", self.headers))
            .to_owned()
    }

    pub fn is_new_session(&self) -> bool {
        match self.header("x-session-new") {
            None => false,
            Some("true") => true,
            Some(other) => panic!("X-Session-New must be `true` or absent, got {other:?}"),
        }
    }

    pub fn session_data(&self) -> Option<&str> {
        self.header("x-session-data")
    }

    /// X-Session-Data decoded into a sorted map (empty when absent).
    pub fn data(&self) -> BTreeMap<String, String> {
        let raw = self.session_data().unwrap_or("");
        form_urlencoded::parse(raw.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    /// Names of every header the upstream got that starts with `X-Session-`.
    pub fn session_header_names(&self) -> Vec<String> {
        header_names_with_prefix(&self.headers, "x-session-")
    }

    /// The cookies of the Cookie header(s), in order.
    pub fn cookies(&self) -> Vec<(String, String)> {
        self.header_all("cookie")
            .iter()
            .flat_map(|line| {
                line.split(';')
                    .filter(|p| !p.trim().is_empty())
                    .map(|pair| {
                        let (name, value) = pair.trim().split_once('=').unwrap_or((pair, ""));
                        (name.trim().to_owned(), value.trim().to_owned())
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// A query parameter of the request URI.
    pub fn query(&self, key: &str) -> Option<String> {
        form_urlencoded::parse(self.uri.query().unwrap_or("").as_bytes())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    }
}

pub fn header_names_with_prefix(headers: &HeaderMap, prefix: &str) -> Vec<String> {
    headers
        .keys()
        .map(|name| name.as_str().to_owned())
        .filter(|name| name.starts_with(prefix))
        .collect()
}

/// What the upstream answers to one request.
pub struct Reply {
    status: StatusCode,
    headers: Vec<(String, String)>,
    body: ReplyBody,
    delay: Option<Duration>,
    hold: Option<Gate>,
}

enum ReplyBody {
    Bytes(Bytes),
    /// `len` bytes of `pattern`, streamed in chunks; with a gate, the
    /// stream pauses after its first chunk until the gate opens.
    Download {
        len: u64,
        gate: Option<Gate>,
    },
    /// 101 Switching Protocols, then echo every WebSocket message.
    WebSocketEcho,
}

impl Reply {
    /// `200 OK` with the body `ok`.
    pub fn ok() -> Self {
        Self::status(200).body("ok")
    }

    pub fn status(code: u16) -> Self {
        Reply {
            status: StatusCode::from_u16(code).expect("status code"),
            headers: Vec::new(),
            body: ReplyBody::Bytes(Bytes::new()),
            delay: None,
            hold: None,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = ReplyBody::Bytes(body.into());
        self
    }

    /// Adds an `X-Session-Set` header; call again to repeat it.
    pub fn session_set(self, pairs: &str) -> Self {
        self.header("X-Session-Set", pairs)
    }

    pub fn session_remove(self, keys: &str) -> Self {
        self.header("X-Session-Remove", keys)
    }

    pub fn session_destroy(self) -> Self {
        self.header("X-Session-Destroy", "true")
    }

    pub fn session_regenerate(self) -> Self {
        self.header("X-Session-Regenerate", "true")
    }

    /// Sleep this long before sending the response headers.
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Hold the response headers back until `gate` opens.
    pub fn held_until(mut self, gate: &Gate) -> Self {
        self.hold = Some(gate.clone());
        self
    }

    /// `200 OK` with a streamed body of `len` pattern bytes (see [`pattern`]).
    pub fn download(len: u64) -> Self {
        Reply {
            body: ReplyBody::Download { len, gate: None },
            ..Reply::status(200)
        }
    }

    /// For a download: stop after the first chunk until `gate` opens.
    pub fn paused_until(mut self, gate: &Gate) -> Self {
        match &mut self.body {
            ReplyBody::Download { gate: slot, .. } => *slot = Some(gate.clone()),
            _ => panic!("paused_until applies to Reply::download only"),
        }
        self
    }

    /// Accept a WebSocket handshake and echo every message.
    pub fn websocket_echo() -> Self {
        Reply {
            body: ReplyBody::WebSocketEcho,
            ..Reply::status(101)
        }
    }
}

/// An application that answers a WebSocket handshake with an echo tunnel and
/// anything else with `200`.
pub fn websocket_app(req: &Seen) -> Reply {
    let upgrade = req.header("upgrade").unwrap_or("").to_ascii_lowercase();
    if upgrade == "websocket" {
        Reply::websocket_echo()
    } else {
        Reply::ok()
    }
}

/// A one-shot signal one side of a test opens and the other waits for.
#[derive(Clone, Default)]
pub struct Gate(Arc<Notify>);

impl Gate {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn open(&self) {
        // notify_one stores a permit when nobody waits yet.
        self.0.notify_one();
    }

    pub async fn wait(&self) {
        self.0.notified().await;
    }
}

type Responder = dyn Fn(&Seen) -> Reply + Send + Sync;
type UpstreamBody = UnsyncBoxBody<Bytes, io::Error>;

struct UpstreamState {
    responder: Box<Responder>,
    seen: Mutex<Vec<Seen>>,
    /// Requests whose headers have arrived (body possibly still coming).
    arrived: watch::Sender<usize>,
    /// Request body bytes received so far, over all requests.
    body_bytes: watch::Sender<u64>,
    /// TCP connections accepted so far.
    connections: AtomicUsize,
}

/// A recording upstream on `127.0.0.1:0`.
pub struct Upstream {
    addr: SocketAddr,
    state: Arc<UpstreamState>,
    accept: JoinHandle<()>,
}

impl Upstream {
    /// Starts an upstream answering every request with `responder`.
    pub async fn start(responder: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream address");
        let state = Arc::new(UpstreamState {
            responder: Box::new(responder),
            seen: Mutex::new(Vec::new()),
            arrived: watch::channel(0).0,
            body_bytes: watch::channel(0).0,
            connections: AtomicUsize::new(0),
        });
        let accept_state = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = accept_state.clone();
                state.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |request| answer(state.clone(), request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Upstream {
            addr,
            state,
            accept,
        }
    }

    /// An upstream that answers `200 ok` to everything.
    pub async fn ok() -> Upstream {
        Self::start(|_| Reply::ok()).await
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// The most recent request, failing the test when there was none.
    pub fn last(&self) -> Seen {
        self.requests()
            .pop()
            .expect("the upstream received no request")
    }

    pub fn count(&self) -> usize {
        self.state.seen.lock().unwrap().len()
    }

    /// How many TCP connections the upstream has accepted.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Waits until `n` requests have at least sent their headers.
    pub async fn wait_for_arrivals(&self, n: usize) {
        let mut arrived = self.state.arrived.subscribe();
        tokio::time::timeout(PATIENCE, arrived.wait_for(|&count| count >= n))
            .await
            .unwrap_or_else(|_| panic!("the upstream did not receive {n} request(s)"))
            .expect("upstream state dropped");
    }

    /// Waits until the upstream has received at least `n` request body bytes.
    /// Returns false when that did not happen within `limit`.
    pub async fn received_body_bytes(&self, n: u64, limit: Duration) -> bool {
        let mut bytes = self.state.body_bytes.subscribe();
        let reached = tokio::time::timeout(limit, bytes.wait_for(|&count| count >= n))
            .await
            .is_ok_and(|waited| waited.is_ok());
        reached
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn answer(
    state: Arc<UpstreamState>,
    mut request: Request<Incoming>,
) -> Result<Response<UpstreamBody>, Infallible> {
    state.arrived.send_modify(|n| *n += 1);
    let upgrade = hyper::upgrade::on(&mut request);
    let (parts, mut body) = request.into_parts();
    let mut kept = Vec::new();
    let mut body_len = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Ok(data) = frame.into_data() {
            body_len += data.len() as u64;
            let room = KEEP_BODY_BYTES.saturating_sub(kept.len());
            kept.extend_from_slice(&data[..room.min(data.len())]);
            state.body_bytes.send_modify(|n| *n += data.len() as u64);
        }
    }
    let seen = Seen {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
        body: Bytes::from(kept),
        body_len,
    };
    state.seen.lock().unwrap().push(seen.clone());
    let reply = (state.responder)(&seen);
    if let Some(delay) = reply.delay {
        tokio::time::sleep(delay).await;
    }
    if let Some(gate) = &reply.hold {
        gate.wait().await;
    }

    let mut response = Response::builder().status(reply.status);
    for (name, value) in &reply.headers {
        response = response.header(name.as_str(), value.as_str());
    }
    let body = match reply.body {
        ReplyBody::Bytes(bytes) => Full::new(bytes)
            .map_err(|never| match never {})
            .boxed_unsync(),
        ReplyBody::Download { len, gate } => download_body(len, gate),
        ReplyBody::WebSocketEcho => {
            let key = seen
                .header("sec-websocket-key")
                .expect("websocket handshake without Sec-WebSocket-Key");
            let accept =
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            response = response
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", accept);
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else { return };
                let mut socket =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                while let Some(Ok(message)) = socket.next().await {
                    if message.is_text() || message.is_binary() {
                        if socket.send(message).await.is_err() {
                            break;
                        }
                    } else if message.is_close() {
                        break;
                    }
                }
            });
            Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed_unsync()
        }
    };
    Ok(response.body(body).expect("upstream response"))
}

const DOWNLOAD_CHUNK: usize = 64 * 1024;

/// The byte at `offset` of every download and upload: a 251-periodic ramp,
/// so a dropped, duplicated or reordered chunk shows up.
pub fn pattern(offset: u64, len: usize) -> Bytes {
    static RAMP: OnceLock<Bytes> = OnceLock::new();
    let ramp = RAMP.get_or_init(|| {
        (0..DOWNLOAD_CHUNK + 251)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>()
            .into()
    });
    assert!(len <= DOWNLOAD_CHUNK);
    let start = (offset % 251) as usize;
    ramp.slice(start..start + len)
}

/// True when `chunk`, found at `offset` of a stream, matches [`pattern`].
pub fn matches_pattern(offset: u64, chunk: &[u8]) -> bool {
    chunk.chunks(DOWNLOAD_CHUNK).enumerate().all(|(i, piece)| {
        let at = offset + (i * DOWNLOAD_CHUNK) as u64;
        piece == &pattern(at, piece.len())[..]
    })
}

fn download_body(len: u64, gate: Option<Gate>) -> UpstreamBody {
    let chunks = futures_util::stream::unfold((0u64, gate), move |(sent, gate)| async move {
        if sent >= len {
            return None;
        }
        let gate = match gate {
            Some(gate) if sent > 0 => {
                gate.wait().await;
                None
            }
            other => other,
        };
        let n = DOWNLOAD_CHUNK.min((len - sent) as usize);
        let frame = Ok::<_, io::Error>(Frame::data(pattern(sent, n)));
        Some((frame, (sent + n as u64, gate)))
    });
    StreamBody::new(chunks).boxed_unsync()
}

/// Sockets bound and never listening, held until the test process ends.
static REFUSING: Mutex<Vec<socket2::Socket>> = Mutex::new(Vec::new());

/// An address nothing listens on, and nothing will: a socket bound to it
/// that never listens is held until the test process ends, so a connection
/// to it is refused, and no other test running beside this one can take the
/// port for a server of its own.
pub fn refused_addr() -> SocketAddr {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("a socket");
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    let addr = socket
        .local_addr()
        .expect("address")
        .as_socket()
        .expect("an IP address");
    REFUSING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(socket);
    addr
}

/// A loopback port that was free a moment ago, for a server to bind.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

/// An upstream that reads each request and then resets the connection.
pub struct ResettingUpstream {
    addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl ResettingUpstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    // Read the request head, so the proxy is waiting for an answer.
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    // SO_LINGER 0: closing sends RST instead of FIN.
                    let _ = stream.set_zero_linger();
                    drop(stream);
                });
            }
        });
        ResettingUpstream { addr, accept }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for ResettingUpstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

// ---------------------------------------------------------------------------
// Config: the YAML a test proxy starts with, each test stating what it changes.
// ---------------------------------------------------------------------------

/// A proxy config as dotted keys (`session.idle_timeout`) and YAML values.
#[derive(Clone, Debug)]
pub struct ConfigYaml {
    entries: Vec<(String, String)>,
}

/// The test defaults: listen on `127.0.0.1:0`, forward to `upstream_url`,
/// sign with [`SECRET_A`], log only warnings.
pub fn config(upstream_url: &str) -> ConfigYaml {
    ConfigYaml {
        entries: Vec::new(),
    }
    .set("listen", "127.0.0.1:0")
    .set("upstream.url", upstream_url)
    .set("session.secrets", &format!("[\"{SECRET_A}\"]"))
    .set("admin.listen", "127.0.0.1:0")
    .set("log.level", "warn")
    .set("log.access", "false")
}

impl ConfigYaml {
    /// Sets `key` (dotted path) to the YAML `value`, replacing a previous one.
    pub fn set(mut self, key: &str, value: &str) -> Self {
        self.entries.retain(|(k, _)| k != key);
        self.entries.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Leaves `key` out of the file.
    pub fn without(mut self, key: &str) -> Self {
        self.entries.retain(|(k, _)| k != key);
        self
    }
}

impl fmt::Display for ConfigYaml {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Group dotted keys into nested mappings, keeping first-seen order.
        #[derive(Default)]
        struct Node {
            value: Option<String>,
            children: Vec<(String, Node)>,
        }
        fn insert(node: &mut Node, path: &[&str], value: &str) {
            let Some((head, rest)) = path.split_first() else {
                node.value = Some(value.to_owned());
                return;
            };
            let index = match node.children.iter().position(|(k, _)| k == head) {
                Some(i) => i,
                None => {
                    node.children.push((head.to_string(), Node::default()));
                    node.children.len() - 1
                }
            };
            insert(&mut node.children[index].1, rest, value);
        }
        fn write(f: &mut fmt::Formatter<'_>, node: &Node, depth: usize) -> fmt::Result {
            for (key, child) in &node.children {
                let indent = "  ".repeat(depth);
                match &child.value {
                    Some(value) => writeln!(f, "{indent}{key}: {value}")?,
                    None => {
                        writeln!(f, "{indent}{key}:")?;
                        write(f, child, depth + 1)?;
                    }
                }
            }
            Ok(())
        }
        let mut root = Node::default();
        for (key, value) in &self.entries {
            insert(&mut root, &key.split('.').collect::<Vec<_>>(), value);
        }
        write(f, &root, 0)
    }
}

// ---------------------------------------------------------------------------
// Proxy: the library's server, in-process, on 127.0.0.1:0.
// ---------------------------------------------------------------------------

/// A server running in a task until [`Running::shutdown`], or until dropped.
pub struct Running {
    stop: Option<oneshot::Sender<()>>,
    run: Option<JoinHandle<Result<(), sessiongate::server::ServerError>>>,
}

impl Running {
    pub fn spawn(server: sessiongate::server::Server) -> Running {
        let (stop, stopped) = oneshot::channel::<()>();
        let run = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        Running {
            stop: Some(stop),
            run: Some(run),
        }
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let run = self.run.take().expect("proxy already shut down");
        tokio::time::timeout(PATIENCE, run)
            .await
            .expect("the proxy did not stop")
            .expect("the proxy task panicked")
            .unwrap_or_else(|e| panic!("the proxy stopped with an error: {e}"));
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub struct Proxy {
    addr: SocketAddr,
    running: Running,
}

impl Proxy {
    /// Parses `yaml` as `test.yaml`, binds, and runs the server until
    /// [`Proxy::shutdown`] (or drop).
    pub async fn start(yaml: impl fmt::Display) -> Proxy {
        let yaml = yaml.to_string();
        let config = sessiongate::config::Config::parse(&yaml, Path::new("test.yaml"), false)
            .unwrap_or_else(|e| panic!("the test config was rejected: {e}\n---\n{yaml}"));
        let server = sessiongate::server::Server::bind(config)
            .await
            .unwrap_or_else(|e| panic!("the proxy did not bind: {e}"));
        let addr = server.local_addr();
        let running = Running::spawn(server);
        Proxy { addr, running }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT{path}`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn shutdown(self) {
        self.running.shutdown().await;
    }
}

// ---------------------------------------------------------------------------
// Clients.
// ---------------------------------------------------------------------------

/// A client that keeps cookies like a browser (over plain HTTP, so a
/// `Secure` cookie would not be sent back).
pub struct Browser {
    client: reqwest::Client,
    jar: Arc<reqwest::cookie::Jar>,
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    pub fn new() -> Self {
        let jar = Arc::new(reqwest::cookie::Jar::default());
        let client = reqwest::Client::builder()
            .cookie_provider(jar.clone())
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        Browser { client, jar }
    }

    pub async fn get(&self, url: &str) -> reqwest::Response {
        self.client.get(url).send().await.expect("GET failed")
    }

    /// Like [`Browser::get`], for futures that outlive the URL's owner.
    pub async fn get_owned(&self, url: String) -> reqwest::Response {
        self.get(&url).await
    }

    /// A request builder, for other methods and extra headers.
    pub fn request(&self, method: Method, url: &str) -> reqwest::RequestBuilder {
        self.client.request(method, url)
    }

    /// The Cookie header this browser would send to `url`.
    pub fn cookie_header(&self, url: &str) -> Option<String> {
        use reqwest::cookie::CookieStore as _;
        let url = url.parse().expect("url");
        self.jar
            .cookies(&url)
            .map(|v| v.to_str().expect("cookie text").to_owned())
    }
}

/// A client with no cookie jar: every header is exactly what the test sets.
pub fn plain_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// GET `url` with exactly this Cookie header.
pub async fn get_with_cookie(url: &str, cookie: &str) -> reqwest::Response {
    plain_client()
        .get(url)
        .header("cookie", cookie)
        .send()
        .await
        .expect("GET failed")
}

/// GET `url` with no cookie at all.
/// An HTTP/2 connection to `addr` by prior knowledge (h2c), its driver spawned.
pub async fn h2c<B>(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect for h2c");
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .expect("h2c handshake");
    tokio::spawn(connection);
    sender
}

pub async fn get_without_cookie(url: &str) -> reqwest::Response {
    plain_client().get(url).send().await.expect("GET failed")
}

// ---------------------------------------------------------------------------
// Set-Cookie.
// ---------------------------------------------------------------------------

/// One parsed `Set-Cookie` header.
#[derive(Clone, Debug)]
pub struct SetCookie {
    pub raw: String,
    pub name: String,
    pub value: String,
    attributes: Vec<(String, Option<String>)>,
}

impl SetCookie {
    pub fn parse(raw: &str) -> SetCookie {
        let mut parts = raw.split(';');
        let pair = parts.next().unwrap_or("");
        let (name, value) = pair.split_once('=').expect("Set-Cookie without name=value");
        let attributes = parts
            .map(|attribute| match attribute.split_once('=') {
                Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim().to_owned())),
                None => (attribute.trim().to_ascii_lowercase(), None),
            })
            .collect();
        SetCookie {
            raw: raw.to_owned(),
            name: name.trim().to_owned(),
            value: value.trim().to_owned(),
            attributes,
        }
    }

    /// True when the attribute (e.g. `HttpOnly`) is present.
    pub fn has(&self, attribute: &str) -> bool {
        let attribute = attribute.to_ascii_lowercase();
        self.attributes.iter().any(|(k, _)| *k == attribute)
    }

    /// The value of an attribute (e.g. `Path`).
    pub fn attr(&self, attribute: &str) -> Option<&str> {
        let attribute = attribute.to_ascii_lowercase();
        self.attributes
            .iter()
            .find(|(k, _)| *k == attribute)
            .and_then(|(_, v)| v.as_deref())
    }

    pub fn max_age(&self) -> Option<i64> {
        self.attr("max-age")
            .map(|v| v.parse().expect("Max-Age is not a number"))
    }

    /// `name=value`, as a browser sends it back.
    pub fn pair(&self) -> String {
        format!("{}={}", self.name, self.value)
    }

    /// The session id part of the cookie value (`<id>.<tag>`).
    pub fn id(&self) -> &str {
        self.value
            .split_once('.')
            .map(|(id, _)| id)
            .unwrap_or_else(|| panic!("cookie value {:?} is not <id>.<tag>", self.value))
    }
}

pub fn set_cookies(headers: &HeaderMap) -> Vec<SetCookie> {
    headers
        .get_all("set-cookie")
        .iter()
        .map(|v| SetCookie::parse(v.to_str().expect("Set-Cookie is not text")))
        .collect()
}

/// The proxy's Set-Cookie (`sessiongate` or `__Host-sessiongate`), if any.
pub fn session_set_cookie(headers: &HeaderMap) -> Option<SetCookie> {
    let mut ours: Vec<SetCookie> = set_cookies(headers)
        .into_iter()
        .filter(|c| c.name == COOKIE || c.name == format!("__Host-{COOKIE}"))
        .collect();
    assert!(
        ours.len() <= 1,
        "more than one session Set-Cookie: {ours:?}"
    );
    ours.pop()
}

/// The proxy's Set-Cookie, failing the test when there is none.
pub fn expect_session_cookie(headers: &HeaderMap) -> SetCookie {
    session_set_cookie(headers)
        .unwrap_or_else(|| panic!("the response set no session cookie: {headers:?}"))
}

/// All values of a comma-separated header, lowercased and split into tokens.
pub fn header_tokens(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| {
            v.to_str()
                .expect("header is not text")
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .filter(|t| !t.is_empty())
                .collect::<Vec<_>>()
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Cookie signing, as decisions.md specifies it, to forge test cookies.
// ---------------------------------------------------------------------------

/// `<id>.<tag>` for `id` (43 base64url chars) signed with `secret`.
pub fn signed_cookie_value(id: &str, secret: &str) -> String {
    let id_bytes = URL_SAFE_NO_PAD.decode(id).expect("id is base64url");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(TAG_CONTEXT);
    mac.update(&id_bytes);
    let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{id}.{tag}")
}

/// A syntactically valid session id no proxy ever issued.
pub fn unknown_session_id() -> String {
    URL_SAFE_NO_PAD.encode([7u8; 32])
}

/// True when `s` is 43 base64url characters (a 32-byte id or tag).
pub fn is_base64url_32(s: &str) -> bool {
    s.len() == 43
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && URL_SAFE_NO_PAD.decode(s).ok().map(|b| b.len()) == Some(32)
}
