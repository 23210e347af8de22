//! The request path, top to bottom: one request in, one response out, the same
//! for HTTP/1 and HTTP/2. [`forward`] runs the steps; the protocol's adapter
//! (`crate::downstream`) reads the request and sends what it returns, and the
//! one upstream client ([`crate::h1::client`]) carries it to the upstream.
//!
//! 1. strip hop-by-hop and session-prefixed client headers, take the proxy's cookie
//!    out of `Cookie`;
//! 2. verify the cookie and load the session (or create one);
//! 3. add the session headers and `X-Forwarded-*`, forward with the body streamed;
//! 4. consume the upstream's write-back headers and apply them;
//! 5. add `Set-Cookie` when needed, fix caching headers, stream the body back.

use bytes::Bytes;
use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Buf;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};

use crate::config::DataFormat;
use crate::config::{Config, CreateMode, LimitsConfig};
use crate::cookie::{CookieFlavor, Verified};
use crate::error::ProxyError;
use crate::h1::client::{Conn, Pool, ResponseBody};
use crate::h1::codec::{self, Framing, ResponseHead};
use crate::headers::{self, Candidate, Extras, Keep, Line, RequestView, UpstreamSession};
use crate::io;
use crate::metrics::{CookieRejection, Metrics};
use crate::redirect::ClientOrigin;
use crate::route::{self, Gate};
use crate::session::{form_to_json, split_reserved, user_of, value_of};
use crate::session::{
    now_ms, Applied, Changes, Created, Inserted, Lookup, Reason, SessionData, SessionId,
    SessionStore, Store, StoreError, LOGIN_IP_KEY, LOGIN_UA_KEY, PERSIST_KEY, PERSIST_KEY_ENCODED,
};
use crate::upstream::{self, UpstreamFailure};
use crate::upstreams::{Group, Sent};
use smallvec::SmallVec;

pub use crate::conn::ConnInfo;
pub use crate::settings::Settings;

/// State shared by every worker thread.
pub struct State {
    pub settings: ArcSwap<Settings>,
    pub store: Store,
    pub metrics: Metrics,
}

impl State {
    pub(crate) fn new(config: Config, store: Store) -> State {
        let metrics = Metrics::new(store.counters().clone(), store.events().counters());
        State {
            settings: ArcSwap::from_pointee(Settings::new(config, &metrics, None)),
            metrics,
            store,
        }
    }
}

/// What the access log says about a request beyond its method, path and status.
#[derive(Default)]
pub(crate) struct Trace {
    pub(crate) upstream: Option<std::time::Duration>,
    session: Option<SessionId>,
}

/// What one worker thread owns: its upstream connection pool and its request-id
/// counter, so that requests on different cores share no hot cache line.
pub(crate) struct Worker {
    pub(crate) state: Arc<State>,
    /// This worker's connections to each upstream server, rebuilt when a reload
    /// changes the settings.
    pools: ArcSwap<Pools>,
    request_prefix: u32,
    request_counter: AtomicU64,
}

impl Worker {
    pub fn new(state: Arc<State>) -> Worker {
        let pools = Pools::for_settings(&state.settings.load(), None);
        let mut prefix = [0u8; 4];
        getrandom::fill(&mut prefix).expect("the operating system's random source failed");
        Worker {
            state,
            pools: ArcSwap::from_pointee(pools),
            request_prefix: u32::from_le_bytes(prefix),
            request_counter: AtomicU64::new(0),
        }
    }

    /// This worker's pool for the server `target` of `settings`; after a reload,
    /// the pools are rebuilt once, keeping those of servers that stay the same.
    fn pool(&self, settings: &Settings, target: usize) -> Arc<Pool> {
        let pools = self.pools.load();
        if pools.generation == settings.generation {
            return pools.pools[target].clone();
        }
        let fresh = Pools::for_settings(settings, Some(&pools));
        let pool = fresh.pools[target].clone();
        self.pools.store(Arc::new(fresh));
        pool
    }

    /// A request id: 8 hex digits of per-worker random prefix, 12 of counter.
    fn request_id(&self) -> HeaderValue {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = self.request_counter.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 20];
        let p = self.request_prefix as u64;
        for (i, b) in buf[..8].iter_mut().enumerate() {
            *b = HEX[((p >> (28 - 4 * i)) & 15) as usize];
        }
        for (i, b) in buf[8..].iter_mut().enumerate() {
            *b = HEX[((n >> (44 - 4 * i)) & 15) as usize];
        }
        HeaderValue::from_bytes(&buf).expect("hex is a valid header value")
    }
}

/// A worker's pools, one per server of one generation of settings.
struct Pools {
    generation: u64,
    pools: Vec<Arc<Pool>>,
}

impl Pools {
    fn for_settings(settings: &Settings, previous: Option<&Pools>) -> Pools {
        let pools = (settings.upstreams.targets.iter())
            .map(|t| {
                previous
                    .and_then(|p| p.pools.iter().find(|p| p.serves(&t.endpoint.identity)))
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Pool::new(t.endpoint.clone())))
            })
            .collect();
        Pools {
            generation: settings.generation,
            pools,
        }
    }
}

/// The session a request carries on its way through the proxy.
enum SessionState {
    /// No session work: an excluded path.
    Excluded,
    /// No session, and none was created (OPTIONS, or `create: on_write`).
    Absent,
    /// The cookie names a session regenerated moments ago: no headers, no cookie.
    Grace,
    /// A session: `new` when created by this request; `resign` when its cookie was
    /// signed by an older secret.
    Live {
        id: SessionId,
        new: bool,
        resign: bool,
        created_ms: u64,
    },
}

/// The bookkeeping one request carries from its head to its last byte: when it
/// started, the settings it was served under, its id, and what the access log needs.
pub(crate) struct Begun {
    started: Instant,
    pub(crate) settings: arc_swap::Guard<Arc<Settings>>,
    pub(crate) method: Method,
    pub(crate) trusted: bool,
    pub(crate) request_id: HeaderValue,
    path: Option<String>,
    pub(crate) trace: Trace,
    /// The upstream server chosen, once it is.
    pub(crate) target: Option<usize>,
    /// Counted and logged already.
    finished: bool,
}

impl Worker {
    /// Starts a request's bookkeeping, before any of its work.
    pub(crate) fn begin(
        &self,
        conn: &ConnInfo,
        method: &Method,
        path: &[u8],
        client_request_id: Option<&[u8]>,
    ) -> Begun {
        let settings = self.state.settings.load();
        let trusted = upstream::is_trusted(conn.peer.ip(), &settings.config.trusted_proxies);
        // A trusted proxy's request id is kept (and logged); anybody else gets ours.
        let request_id = client_request_id
            .filter(|id| trusted && !id.is_empty() && id.len() <= 128)
            .and_then(|id| HeaderValue::from_bytes(id).ok())
            .unwrap_or_else(|| self.request_id());
        let path = settings
            .config
            .log
            .access
            .then(|| String::from_utf8_lossy(path).into_owned());
        Begun {
            started: Instant::now(),
            settings,
            method: method.clone(),
            trusted,
            request_id,
            path,
            trace: Trace::default(),
            target: None,
            finished: false,
        }
    }

    /// Counts a failed request and logs why; the caller answers with
    /// [`ProxyError::into_response`].
    pub(crate) fn failed(&self, begun: &Begun, err: &ProxyError) {
        let metrics = &self.state.metrics;
        match err {
            ProxyError::Upstream(kind) => metrics.upstream_error(Some(*kind)),
            ProxyError::UpstreamTimeout => metrics.upstream_error(None),
            ProxyError::Store(e) => metrics.store_error(e),
            ProxyError::BodyTooLarge
            | ProxyError::BodyTimeout
            | ProxyError::BadRequest(_)
            | ProxyError::MethodNotAllowed
            | ProxyError::NoServer => {}
            // A route's rules answered: the proxy working as configured.
            ProxyError::NoRoute
            | ProxyError::CrossSite
            | ProxyError::Login(_)
            | ProxyError::Unauthorized(_)
            | ProxyError::Forbidden => {
                tracing::debug!(
                    request_id = begun.request_id.to_str().unwrap_or(""),
                    kind = err.kind(),
                    "request refused by its route"
                );
                return;
            }
        }
        // Which upstream, for the failures that are its (never a URL with a path or
        // credentials: `host:port` only).
        let upstream = begun
            .target
            .filter(|_| matches!(err, ProxyError::Upstream(_) | ProxyError::UpstreamTimeout))
            .map(|t| {
                begun.settings.upstreams.targets[t]
                    .endpoint
                    .authority
                    .as_str()
            });
        tracing::warn!(
            request_id = begun.request_id.to_str().unwrap_or(""),
            kind = err.kind(),
            error = %err,
            upstream,
            "request failed"
        );
    }

    /// Adds the headers every response over TLS gets to a response the proxy
    /// makes itself.
    pub(crate) fn finish_headers(&self, begun: &Begun, conn: &ConnInfo, h: &mut HeaderMap) {
        if let Some(hsts) = begun.settings.hsts_for(conn) {
            h.insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
    }

    /// Ends a request's bookkeeping: metrics and the access log line. Called when
    /// the response head is ready, before it is sent, so that a client that has
    /// its response sees it counted; later calls do nothing.
    pub(crate) fn finish(
        &self,
        begun: &mut Begun,
        conn: &ConnInfo,
        status: StatusCode,
        bytes: Option<u64>,
    ) {
        if std::mem::replace(&mut begun.finished, true) {
            return;
        }
        let metrics = &self.state.metrics;
        let took = begun.started.elapsed();
        metrics.request(&begun.method, status, took);
        if let Some(up) = begun.trace.upstream {
            metrics.upstream_duration.observe(up);
        }
        if let Some(path) = begun.path.take() {
            tracing::info!(
                target: "sessiongate::access",
                method = %begun.method,
                path = %path,
                status = status.as_u16(),
                bytes,
                duration_ms = millis(took),
                upstream_ms = begun.trace.upstream.map(millis),
                request_id = begun.request_id.to_str().unwrap_or(""),
                session = begun.trace.session.map(|id| SessionId::tag(&id)).as_deref(),
                peer = %conn.peer.ip(),
            );
        }
    }
}

/// Milliseconds to the microsecond, for the access log: `50.181`, never
/// `50.180913000000004`.
fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// A request as its protocol delivered it, ready for steps 1 to 6.
pub(crate) struct Incoming<'a> {
    pub method: &'a Method,
    pub view: RequestView<'a>,
    /// How its body travels to the upstream.
    pub framing: Framing,
    /// The client waits for `100 Continue` before it sends its body.
    pub expect_continue: bool,
    /// The client's `X-Request-Id`, kept when a trusted proxy sent it.
    pub request_id: Option<&'a [u8]>,
    /// Why the adapter found the request unfit to forward, if it did: answered
    /// like any failed request, counted and logged.
    pub refused: Option<Refusal>,
}

/// Why an adapter refuses a request its protocol's parser let through.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Refusal {
    /// Unfit to forward over HTTP/1: `400`.
    Malformed(&'static str),
    /// `CONNECT`: the proxy opens no tunnels: `405`.
    Connect,
}

/// The client's side of one request: an HTTP/1 connection or an HTTP/2 stream.
/// [`forward`] reads the request body through it and gets back the response
/// head in the client's protocol; the adapter sends what [`forward`] returns.
#[allow(async_fn_in_trait)]
pub(crate) trait Downstream {
    /// A response head as this protocol sends it.
    type Head;
    /// Moves what has already arrived of the request body into `out`, framed
    /// for the upstream. Never waits.
    fn body_ready(&mut self, out: &mut Vec<u8>, limits: &LimitsConfig) -> Result<(), ProxyError>;
    /// The whole request body has been moved.
    fn body_done(&self) -> bool;
    /// Waits for more of the request body, each wait at most
    /// `limits.client_body_timeout`, and moves it into `out`.
    async fn body_wait(
        &mut self,
        out: &mut Vec<u8>,
        limits: &LimitsConfig,
    ) -> Result<(), ProxyError>;
    /// Tells a client that waits for it to send its body (`100 Continue`).
    async fn go_on(&mut self) -> std::io::Result<()>;
    /// The upstream's final response head with the kept lines and the added
    /// ones, for this client; and whether its body is re-chunked on the way
    /// (else copied as framed, or decoded to data).
    fn head(
        &mut self,
        response: &ResponseHead<'_>,
        keep: &Keep,
        extras: &Extras<'_>,
    ) -> (Self::Head, bool);
    /// A response the proxy makes itself, with `body`; `head_only` (a `HEAD`
    /// request): its length is stated and the body left out. `clean`: the
    /// request was read whole, so its connection can carry another.
    fn own(
        &mut self,
        status: StatusCode,
        headers: &HeaderMap,
        body: Bytes,
        head_only: bool,
        clean: bool,
    ) -> Self::Head;
}

/// What [`forward`] came to, for the adapter to send.
pub(crate) enum Reply<H> {
    /// The upstream's response: its head, the first bytes of its body (framed
    /// for the client), and the rest still to read.
    Upstream {
        head: H,
        first: Vec<u8>,
        body: ResponseBody,
    },
    /// `101 Switching Protocols`: the upstream connection for a tunnel, and
    /// the upstream's bytes that came with the head.
    Switched { head: H, first: Vec<u8>, up: Conn },
    /// The proxy's own answer.
    Own(H),
    /// The client went away before anything could be answered.
    Gone,
}

/// Why a request failed before its response head was ready.
enum Failed {
    /// The client gets the error's answer. `clean`: the request was read whole.
    Proxy { err: ProxyError, clean: bool },
    /// The client is gone.
    Gone,
}

impl Failed {
    fn upstream(kind: UpstreamFailure, clean: bool) -> Failed {
        Failed::Proxy {
            err: ProxyError::Upstream(kind),
            clean,
        }
    }
}

/// What a failed request tells of its server's health: a connection failure
/// counts toward making it unhealthy; a failure after it connected is an error
/// of the server's but not of its health; the rest are not the server's.
fn blame(sent: Sent<'_>, failed: Failed, group: &Group) -> Failed {
    match &failed {
        Failed::Proxy {
            err: ProxyError::Upstream(kind),
            ..
        } => {
            let connect = matches!(
                kind,
                UpstreamFailure::Refused | UpstreamFailure::ConnectTimeout | UpstreamFailure::Tls
            );
            sent.failed(connect, group.health.as_ref());
        }
        Failed::Proxy {
            err: ProxyError::UpstreamTimeout,
            ..
        } => sent.failed(false, group.health.as_ref()),
        _ => drop(sent),
    }
    failed
}

/// One try at the upstream round trip.
enum Attempt {
    /// A reused connection broke before answering; try a new one.
    Retry,
    Failed(Failed),
}

/// The most a response head from the upstream may take: large enough for a
/// write-back the store will refuse by size rather than a 502.
const MAX_RESPONSE_HEAD: usize = 512 * 1024;

/// Steps 1 to 6 of one request, whichever protocol carried it: the bookkeeping,
/// the session, the upstream round trip with its retry policy and timeouts, the
/// write-back, and the answer. Never fails: an error becomes the proxy's own
/// answer, counted and logged here.
pub(crate) async fn forward<D: Downstream>(
    worker: &Worker,
    conn: &ConnInfo,
    down: &mut D,
    request: Incoming<'_>,
) -> Reply<D::Head> {
    let mut begun = worker.begin(conn, request.method, request.view.path, request.request_id);
    match exchange(worker, conn, &mut begun, down, &request).await {
        Ok(reply) => reply,
        Err(Failed::Gone) => {
            worker.finish(&mut begun, conn, StatusCode::BAD_REQUEST, None);
            Reply::Gone
        }
        Err(Failed::Proxy { err, clean }) => {
            worker.failed(&begun, &err);
            let (status, body) = (err.status(), err.body());
            let (mut parts, _) = err.into_response().into_parts();
            parts.headers.remove(header::CONNECTION);
            worker.finish_headers(&begun, conn, &mut parts.headers);
            let head_only = *request.method == Method::HEAD;
            let sent = if head_only { 0 } else { body.len() as u64 };
            worker.finish(&mut begun, conn, status, Some(sent));
            Reply::Own(down.own(status, &parts.headers, body, head_only, clean))
        }
    }
}

async fn exchange<D: Downstream>(
    worker: &Worker,
    conn: &ConnInfo,
    begun: &mut Begun,
    down: &mut D,
    request: &Incoming<'_>,
) -> Result<Reply<D::Head>, Failed> {
    let state = &*worker.state;
    let (mut exchange, mut out) = upstream_request(state, conn, begun, request)
        .await
        .map_err(|err| Failed::Proxy {
            err,
            clean: matches!(request.framing, Framing::Empty | Framing::Length(0)),
        })?;
    let settings: &Settings = &begun.settings;
    let method = request.method;
    let limits = &settings.config.limits;
    // The head goes with as much of the body as already arrived with it.
    down.body_ready(&mut out, limits)
        .map_err(|err| Failed::Proxy { err, clean: false })?;

    // The upstream round trip, counted against the server for its health and load.
    begun.target = Some(exchange.target);
    let server = &settings.upstreams.targets[exchange.target];
    let group = &settings.upstreams.groups[server.group];
    let pool = worker.pool(settings, exchange.target);
    let timeout = group.timeout;
    let asked = Instant::now();
    let sent = server.send();
    let (mut up, deadline) = match round_trip(&pool, limits, timeout, down, out, request).await {
        Ok(trip) => trip,
        Err(failed) => return Err(blame(sent, failed, group)),
    };

    // Steps 4 and 5 on the response head, then its body for the adapter.
    let answer = read_answer(
        state,
        settings,
        conn,
        &mut exchange,
        &mut up,
        deadline,
        method,
        down,
        asked,
    )
    .await;
    let answer = match answer {
        Ok(answer) => answer,
        Err(failed) => return Err(blame(sent, failed, group)),
    };
    sent.answered(group.health.is_some());
    let Answer {
        head,
        status,
        framing,
        keep_alive,
        rechunk,
        bytes,
        took,
    } = answer;
    begun.trace.upstream = Some(took);
    if status == StatusCode::SWITCHING_PROTOCOLS {
        let first = up.buf.split().to_vec();
        worker.finish(begun, conn, status, None);
        return Ok(Reply::Switched { head, first, up });
    }
    let mut body = ResponseBody::new(up, pool, framing, keep_alive, rechunk, timeout);
    // A chunked body broken in what arrived with the head is found before
    // anything is sent: the client gets a 502, not half a response.
    let mut first = Vec::new();
    if body.take(&mut first).is_err() {
        tracing::warn!("malformed chunked body from the upstream");
        return Err(Failed::upstream(UpstreamFailure::Protocol, true));
    }
    worker.finish(begun, conn, status, bytes);
    Ok(Reply::Upstream { head, first, body })
}

/// Steps 1 to 3: the session, and the request head for the upstream, as bytes.
async fn upstream_request(
    state: &State,
    conn: &ConnInfo,
    begun: &mut Begun,
    request: &Incoming<'_>,
) -> Result<(Exchange, Vec<u8>), ProxyError> {
    match request.refused {
        Some(Refusal::Malformed(why)) => return Err(ProxyError::BadRequest(why)),
        Some(Refusal::Connect) => return Err(ProxyError::MethodNotAllowed),
        None => {}
    }
    let prepared = prepare(
        state,
        &begun.settings,
        conn,
        begun.trusted,
        &begun.request_id,
        request.method,
        &request.view,
        &mut begun.trace,
    )
    .await?;
    let mut keep = prepared.keep;
    if request.expect_continue {
        // The proxy answers `100 Continue` itself when it wants the body.
        for (k, (name, _)) in keep.iter_mut().zip(request.view.lines.iter()) {
            *k &= !name.eq_ignore_ascii_case(b"expect");
        }
    }
    let mut out = Vec::with_capacity(1024);
    codec::write_request(
        &mut out,
        request.method,
        &prepared.target,
        request.view.lines,
        &keep,
        &prepared.extras,
        request.framing,
    );
    Ok((prepared.exchange, out))
}

/// Sends the request upstream and waits for the first byte of its answer; the
/// deadline for the rest of the head is returned with the connection.
///
/// A reused connection the upstream closed while idle fails on the write or
/// before any response byte: an idempotent request whose body was sent whole
/// with its head is tried again, once, on a new connection. Others are never
/// sent twice.
async fn round_trip<D: Downstream>(
    pool: &Pool,
    limits: &LimitsConfig,
    timeout: Duration,
    down: &mut D,
    mut out: Vec<u8>,
    request: &Incoming<'_>,
) -> Result<(Conn, tokio::time::Instant), Failed> {
    let idempotent = matches!(
        *request.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    let replayable = idempotent && down.body_done();
    let mut fresh_only = false;
    loop {
        let up = if fresh_only { None } else { pool.checkout() };
        let up = match up {
            Some(up) => up,
            None => pool
                .connect()
                .await
                .map_err(|kind| Failed::upstream(kind, down.body_done()))?,
        };
        let retry = up.reused && replayable;
        let sent = attempt(up, limits, timeout, down, &mut out, request, retry);
        match sent.await {
            Ok(answered) => return Ok(answered),
            Err(Attempt::Retry) => fresh_only = true,
            Err(Attempt::Failed(failed)) => return Err(failed),
        }
    }
}

/// One try: the head (with what came of the body), the rest of the body as the
/// client sends it, then the wait for the first byte of the answer.
async fn attempt<D: Downstream>(
    mut up: Conn,
    limits: &LimitsConfig,
    timeout: Duration,
    down: &mut D,
    out: &mut Vec<u8>,
    request: &Incoming<'_>,
    retry: bool,
) -> Result<(Conn, tokio::time::Instant), Attempt> {
    // Writes to the upstream that make no progress for `upstream.timeout` are
    // its fault: 504.
    let stalled = |e: std::io::Error, clean: bool| {
        if e.kind() == std::io::ErrorKind::TimedOut {
            Attempt::Failed(Failed::Proxy {
                err: ProxyError::UpstreamTimeout,
                clean,
            })
        } else {
            tracing::debug!(error = %e, "upstream write failed");
            Attempt::Failed(Failed::upstream(UpstreamFailure::Reset, clean))
        }
    };
    if let Err(e) = io::send(&mut up.io, out, timeout).await {
        if retry && e.kind() != std::io::ErrorKind::TimedOut {
            return Err(Attempt::Retry);
        }
        return Err(stalled(e, false));
    }
    if !down.body_done() {
        out.clear();
        if request.expect_continue {
            down.go_on()
                .await
                .map_err(|_| Attempt::Failed(Failed::Gone))?;
        }
        // The upload is bounded by `limits.client_body_timeout` between reads,
        // not by `upstream.timeout`: a slow but live client is not the
        // upstream's fault.
        while !down.body_done() {
            down.body_wait(out, limits)
                .await
                .map_err(|err| Attempt::Failed(Failed::Proxy { err, clean: false }))?;
            if !out.is_empty() {
                io::send(&mut up.io, out, timeout)
                    .await
                    .map_err(|e| stalled(e, down.body_done()))?;
                out.clear();
            }
        }
    }
    // `upstream.timeout` counts from here: the whole request is sent. A reused
    // connection that ends before its first byte is retried.
    let deadline = tokio::time::Instant::now() + timeout;
    while up.buf.is_empty() {
        match up.fill_until(deadline).await {
            Ok(n) if n > 0 => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(Attempt::Failed(Failed::Proxy {
                    err: ProxyError::UpstreamTimeout,
                    clean: true,
                }))
            }
            Ok(_) | Err(_) if retry => return Err(Attempt::Retry),
            Ok(_) | Err(_) => {
                return Err(Attempt::Failed(Failed::upstream(
                    UpstreamFailure::Reset,
                    true,
                )))
            }
        }
    }
    Ok((up, deadline))
}

/// The final response head, rewritten for the client, and what its body
/// needs.
struct Answer<H> {
    head: H,
    status: StatusCode,
    framing: Framing,
    /// The upstream keeps its connection open after this response.
    keep_alive: bool,
    rechunk: bool,
    /// The body's length, for the access log, when known.
    bytes: Option<u64>,
    /// From the request's first byte upstream to its answer's head.
    took: Duration,
}

/// Reads the response head as the one response parser does: interim (1xx but
/// 101) heads are skipped, and the final one goes through steps 4 and 5 to
/// the adapter. Its bytes are taken off the connection's buffer.
#[allow(clippy::too_many_arguments)]
async fn read_answer<D: Downstream>(
    state: &State,
    settings: &Settings,
    conn: &ConnInfo,
    exchange: &mut Exchange,
    up: &mut Conn,
    deadline: tokio::time::Instant,
    method: &Method,
    down: &mut D,
    asked: Instant,
) -> Result<Answer<D::Head>, Failed> {
    loop {
        // `Ok(len)`: a whole head of `len` bytes was used; `Err(len)`: an
        // interim head of `len` bytes; `None`: not all here yet. The parse
        // (borrowing the buffer) ends with this block.
        let used = 'head: {
            let rh = match codec::parse_response(&up.buf, MAX_RESPONSE_HEAD, method) {
                Ok(Some(rh)) => rh,
                Ok(None) => break 'head None,
                Err(why) => {
                    tracing::warn!(why = why.0, "malformed response head from the upstream");
                    return Err(Failed::upstream(UpstreamFailure::Protocol, true));
                }
            };
            if rh.status.is_informational() && rh.status != StatusCode::SWITCHING_PROTOCOLS {
                break 'head Some(Err(rh.len));
            }
            let took = asked.elapsed();
            let (keep, extras) = respond(
                state,
                settings,
                exchange,
                rh.status,
                &rh.lines,
                settings.hsts_for(conn),
            )
            .await
            .map_err(|err| Failed::Proxy { err, clean: true })?;
            let (head, rechunk) = down.head(&rh, &keep, &extras);
            let answer = Answer {
                head,
                status: rh.status,
                framing: rh.framing,
                keep_alive: rh.keep_alive,
                rechunk,
                bytes: rh.declared_length,
                took,
            };
            Some(Ok((answer, rh.len)))
        };
        match used {
            Some(Ok((answer, len))) => {
                up.buf.advance(len);
                return Ok(answer);
            }
            Some(Err(len)) => {
                up.buf.advance(len);
                continue;
            }
            None => {}
        }
        match up.fill_until(deadline).await {
            Ok(n) if n > 0 => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(Failed::Proxy {
                    err: ProxyError::UpstreamTimeout,
                    clean: true,
                })
            }
            Ok(_) | Err(_) => return Err(Failed::upstream(UpstreamFailure::Reset, true)),
        }
    }
}

/// A request's session state between its two halves: what [`prepare`] found and
/// [`respond`] finishes.
pub(crate) struct Exchange {
    session: SessionState,
    https: bool,
    /// The `Host` the client used, kept for `upstream.rewrite_redirects`.
    client_host: Option<SmallVec<[u8; 48]>>,
    carried_session: bool,
    /// The client asked for an upgrade (WebSocket).
    pub(crate) upgrade: bool,
    method: Method,
    /// The upstream server, in `Settings::upstreams`.
    pub(crate) target: usize,
    /// The session's affinity is to be written: to this server.
    pin: bool,
    /// The session's data as the store holds it (the proxy's own keys too).
    data: Option<HeaderValue>,
    /// With `session.user_key`: the client's address and `User-Agent`, kept
    /// with the session when this response logs a user in.
    login: Option<(String, Option<String>)>,
}

/// The longest `User-Agent` kept with a login.
const MAX_LOGIN_UA: usize = 256;

/// What steps 1 to 3 decided: the request to send upstream is the kept lines,
/// the proxy's extra lines, and `target`.
pub(crate) struct Prepared<'a> {
    pub(crate) exchange: Exchange,
    pub(crate) keep: Keep,
    pub(crate) extras: Extras<'a>,
    /// The target for the upstream, in origin form under `upstream.base_path`.
    pub(crate) target: Cow<'a, [u8]>,
}

/// Steps 1 to 3: strips what the client may not send upstream, finds or makes the
/// session, and works out the lines that tell the upstream about it.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn prepare<'a>(
    state: &State,
    settings: &'a Settings,
    conn: &'a ConnInfo,
    trusted: bool,
    request_id: &'a HeaderValue,
    method: &Method,
    view: &RequestView<'a>,
    trace: &mut Trace,
) -> Result<Prepared<'a>, ProxyError> {
    // 1. Strip what the client may not send upstream, before adding anything.
    let scan = headers::scan_request(settings.rules(), conn, trusted, view, Some(&state.metrics))?;
    let flavor = settings.jar.flavor(scan.https);

    // The route, when there are routes: its session switch and cross-site rule.
    let route = match settings.routes.is_empty() {
        true => None,
        false => {
            let index = (settings.routes)
                .find(scan.host(), view.path)
                .ok_or(ProxyError::NoRoute)?;
            Some((index, settings.routes.get(index)))
        }
    };
    if let Some((_, r)) = route {
        if route::cross_site_refused(r, method, view.lines, scan.https, scan.host()) {
            return Err(ProxyError::CrossSite);
        }
    }

    // 2. Find or make the session.
    // A Secure cookie is never sent over plain HTTP: with `secure: true`, such
    // requests get no session at all.
    let session_off = route.is_some_and(|(_, r)| !r.session);
    let no_session = scan.excluded || session_off || (flavor.secure && !scan.https);
    let (session, data) = if no_session {
        (SessionState::Excluded, None)
    } else {
        resolve_session(state, settings, method, &scan.candidates).await?
    };
    // The login gate, on what the session holds.
    if let Some((index, _)) = route.filter(|(_, r)| r.require.is_some()) {
        let held = data
            .as_ref()
            .filter(|_| matches!(session, SessionState::Live { .. }));
        match (settings.routes).gate(index, method, view.path, view.target, view.lines, held) {
            Gate::Pass => {}
            Gate::Login(location) => return Err(ProxyError::Login(location)),
            Gate::Unauthorized => {
                return Err(ProxyError::Unauthorized(
                    settings.routes.unauthorized(index),
                ))
            }
            Gate::Forbidden => return Err(ProxyError::Forbidden),
        }
    }

    // The server: the session's own under affinity, else by the group's balance.
    // The proxy's own keys in the data are never shown to the upstream.
    let group = &settings.upstreams.groups[settings.group_of(route.map(|(i, _)| i))];
    let live = matches!(session, SessionState::Live { .. });
    let pin_key = (group.affinity && live).then_some(group.pin_key_encoded.as_slice());
    let (shown, pinned) = match &data {
        Some(d) => split_reserved(d, pin_key),
        None => (None, None),
    };
    let choice = (settings.upstreams)
        .choose(group.index, pinned)
        .ok_or(ProxyError::NoServer)?;
    let server = &settings.upstreams.targets[choice.target];
    let assertion = (settings.config.assertion.as_deref()).filter(|_| live);
    // `session.data_format: json`: the same data, as a JSON object. The form
    // is kept for the assertion only.
    let full = data;
    let (data, shown) = match (settings.config.session.data_format, assertion) {
        (DataFormat::Form, None) => (shown, None),
        (DataFormat::Form, Some(_)) => (shown.clone(), shown),
        (DataFormat::Json, _) => (shown.as_ref().map(form_to_json), shown),
    };

    // 3. Tell the upstream.
    let carried_session = matches!(session, SessionState::Live { .. });
    if let SessionState::Live { id, .. } = &session {
        trace.session = Some(*id);
    }
    let upstream_session = match &session {
        SessionState::Live { id, new, .. } => Some(UpstreamSession {
            id,
            new: *new,
            data,
        }),
        _ => None,
    };
    let rules = settings.rules_to(server);
    let mut extras = scan.extras(rules, conn, upstream_session, request_id);
    let target = if view.target.is_empty() {
        &b"/"[..]
    } else {
        view.target
    };
    // `*` (OPTIONS for the whole server) has no path to put under base_path.
    let target = if server.base_path.is_empty() || target == b"*" {
        Cow::Borrowed(target)
    } else {
        Cow::Owned([server.base_path.as_bytes(), target].concat())
    };
    if let (Some(signer), SessionState::Live { id, .. }) = (assertion, &session) {
        let aud = match scan.host() {
            Some(h) if rules.preserve_host => h,
            _ => rules.upstream_host.map_or(&b""[..], |h| h.as_bytes()),
        };
        let token = signer.sign(&crate::assertion::Claims {
            id: id.as_bytes(),
            user_key: settings.user_key.as_deref(),
            data: shown.as_ref(),
            aud,
            htm: method.as_str(),
            htu: &target,
            now_s: now_ms() / 1000,
        });
        extras.add(&signer.header, token);
    }
    // A login's client details are kept only for a session not logged in.
    let logged_in = || {
        let key = settings.user_key.as_deref();
        (full.as_ref().zip(key)).is_some_and(|(d, k)| {
            crate::session::encoded_value(d.as_bytes(), k).is_some_and(|v| !v.is_empty())
        })
    };
    let login = (settings.user_key.is_some() && live && !logged_in()).then(|| {
        let ip = String::from_utf8_lossy(scan.client_ip(conn)).into_owned();
        let ua = (view.lines.iter())
            .find(|(name, _)| name.eq_ignore_ascii_case(b"user-agent"))
            .map(|(_, v)| {
                let v = String::from_utf8_lossy(v);
                let cut = (0..=MAX_LOGIN_UA.min(v.len()))
                    .rev()
                    .find(|&i| v.is_char_boundary(i))
                    .unwrap_or(0);
                v[..cut].to_owned()
            });
        (ip, ua)
    });
    Ok(Prepared {
        exchange: Exchange {
            session,
            https: scan.https,
            client_host: (server.redirects.as_ref())
                .and(scan.host())
                .map(SmallVec::from_slice),
            carried_session,
            upgrade: scan.upgrade,
            method: method.clone(),
            target: choice.target,
            pin: choice.pin && live,
            data: full.filter(|_| live),
            login,
        },
        keep: scan.keep,
        extras,
        target,
    })
}

/// Steps 4 and 5, on the upstream's response head: consumes the write-back (none
/// of it reaches the client), then works out `Set-Cookie` and the caching
/// headers. Returns which lines go on and what is added.
pub(crate) async fn respond<'a>(
    state: &State,
    settings: &'a Settings,
    exchange: &mut Exchange,
    status: StatusCode,
    lines: &[Line<'_>],
    hsts: Option<&'a HeaderValue>,
) -> Result<(Keep, Extras<'a>), ProxyError> {
    let names = &settings.config.session.headers;
    let flavor = settings.jar.flavor(exchange.https);
    // 4. Consume the upstream's write-back.
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    if switching && !exchange.upgrade {
        return Err(ProxyError::Upstream(upstream::UpstreamFailure::Protocol));
    }
    let scan = headers::scan_response(lines, names, &settings.jar, switching);
    let mut keep = scan.keep;
    let kinds = scan.names;
    let mut changes = scan.changes.unwrap_or_else(|reason| {
        state.metrics.write_malformed();
        tracing::warn!(%reason, "write-back refused: malformed session header from the upstream");
        Changes::default()
    });
    let server = &settings.upstreams.targets[exchange.target];
    if exchange.pin && !changes.destroy {
        let group = &settings.upstreams.groups[server.group];
        changes
            .set
            .push((group.pin_key.clone(), server.tag.clone()));
    }
    // The proxy's own keys the write-back calls for: the cookie's kind, and who
    // logged in from where.
    if let Some(persist) = changes.persist.filter(|_| !changes.destroy) {
        let flag = if persist { "1" } else { "0" };
        changes.set.push((PERSIST_KEY.to_owned(), flag.to_owned()));
    }
    let user_after = login_keys(settings, exchange, &mut changes);
    // The cookie's kind is looked up only when a cookie is to be sent.
    let resign = matches!(exchange.session, SessionState::Live { resign: true, .. });
    let persist = changes.persist.or_else(|| {
        if !changes.regenerate && !resign {
            return None;
        }
        let d = exchange.data.as_ref()?;
        Some(value_of(d.as_bytes(), PERSIST_KEY_ENCODED)? == "1")
    });
    let unchanged = || changes.changes_nothing_in(exchange.data.as_ref().map(|d| d.as_bytes()));
    let mut set_cookie = if matches!(exchange.session, SessionState::Live { new: true, .. }) {
        store_new(state, settings, flavor, &mut exchange.session, &changes).await?
    } else if !changes.is_empty() && !unchanged() {
        apply_write_back(
            state,
            settings,
            flavor,
            &exchange.method,
            &mut exchange.session,
            &changes,
            persist,
        )
        .await?
    } else {
        None
    };
    // `X-Session-Destroy-Others`: every other session of the user ends.
    if let (true, Some(user), SessionState::Live { id, .. }) =
        (changes.destroy_others, &user_after, &exchange.session)
    {
        let n = (state.store)
            .destroy_user(user, Some(id), Reason::Others)
            .await
            .map_err(ProxyError::Store)?;
        tracing::info!(destroyed = n, "the user's other sessions were destroyed");
    }

    // 5. The cookie, and headers that keep shared caches from mixing visitors.
    if set_cookie.is_none() {
        set_cookie = cookie_for(
            settings,
            flavor,
            &exchange.session,
            persist,
            changes.persist.is_some(),
        );
    }
    let mut extras = headers::response_extras(
        lines,
        &kinds,
        &mut keep,
        set_cookie,
        exchange.carried_session,
        hsts,
        switching,
    );
    if let (Some(upstream), Some(host)) = (&server.redirects, &exchange.client_host) {
        let client = ClientOrigin {
            https: exchange.https,
            host,
        };
        headers::rewrite_redirects(lines, &kinds, &mut keep, &mut extras, upstream, client);
    }
    Ok((keep, extras))
}

/// With `session.user_key`: who the session belongs to after this write,
/// looked at only when the write touches the user key or ends the user's other
/// sessions. A login keeps where it came from among the proxy's own keys (the
/// details were taken only for a session not logged in); a session that
/// changes users, or logs out, loses the old ones.
fn login_keys(
    settings: &Settings,
    exchange: &mut Exchange,
    changes: &mut Changes,
) -> Option<String> {
    let (name, key) = (
        settings.config.session.user_key.as_deref()?,
        settings.user_key.as_deref()?,
    );
    let user_before = || (exchange.data.as_ref()).and_then(|d| user_of(d.as_bytes(), key));
    let Some(touched) = changes.touches(name) else {
        return changes.destroy_others.then(user_before).flatten();
    };
    let after = touched.filter(|u| !u.is_empty()).map(str::to_owned);
    if changes.destroy || user_before() == after {
        return after;
    }
    match (&after, exchange.login.take()) {
        (Some(_), Some((ip, ua))) => {
            changes.set.push((LOGIN_IP_KEY.to_owned(), ip));
            match ua {
                Some(ua) => changes.set.push((LOGIN_UA_KEY.to_owned(), ua)),
                None => changes.remove.push(LOGIN_UA_KEY.to_owned()),
            }
        }
        _ => (changes.remove).extend([LOGIN_IP_KEY, LOGIN_UA_KEY].map(str::to_owned)),
    }
    after
}

/// The first candidate naming a live session wins; a later cookie can never displace
/// it. With none, a new session is created unless the request must not create one.
async fn resolve_session(
    state: &State,
    settings: &Settings,
    method: &Method,
    candidates: &[Candidate],
) -> Result<(SessionState, Option<HeaderValue>), ProxyError> {
    let mut grace = false;
    for c in candidates {
        let lookup = state.store.load(&c.id, &settings.policy).await;
        match lookup.map_err(ProxyError::Store)? {
            Lookup::Found(view) => {
                let live = SessionState::Live {
                    id: c.id,
                    new: false,
                    resign: c.verified == Verified::Older,
                    created_ms: view.created_ms,
                };
                return Ok((live, view.data));
            }
            Lookup::Regenerated => grace = true,
            Lookup::Missing => state.metrics.cookie_rejected(CookieRejection::Expired),
        }
    }
    if grace {
        return Ok((SessionState::Grace, None));
    }
    if *method == Method::OPTIONS || settings.config.session.create == CreateMode::OnWrite {
        return Ok((SessionState::Absent, None));
    }
    // Stored by `store_new` once the response carrying its cookie is ready.
    state
        .store
        .ensure_reachable()
        .await
        .map_err(ProxyError::Store)?;
    let live = SessionState::Live {
        id: state.store.new_id(),
        new: true,
        resign: false,
        created_ms: now_ms(),
    };
    Ok((live, None))
}

/// Stores the session this request created, with the response's write-back applied
/// to it, now that its cookie is about to be sent: a request that fails before its
/// response leaves nothing in the store. Returns the `Set-Cookie` the write-back
/// calls for, when it is not the new session's own cookie.
async fn store_new(
    state: &State,
    settings: &Settings,
    flavor: &CookieFlavor,
    session: &mut SessionState,
    changes: &Changes,
) -> Result<Option<HeaderValue>, ProxyError> {
    let SessionState::Live { id, .. } = session else {
        return Ok(None);
    };
    if changes.destroy {
        // Never stored; a cookie the client may still hold for an older session
        // goes too.
        *session = SessionState::Absent;
        return Ok(Some(flavor.removal()));
    }
    if changes.regenerate {
        // The upstream saw the first ID; the browser gets another.
        *id = state.store.new_id();
    }
    let (store, policy) = (&state.store, &settings.policy);
    let data = SessionData::default().with_changes(changes);
    let mut stored = store.insert(id, data, policy).await;
    if let Ok(Inserted::TooLarge { bytes }) = stored {
        refused(settings, bytes);
        // The session starts empty, as a refused write leaves a session's data.
        stored = store.insert(id, SessionData::default(), policy).await;
    }
    if stored.map_err(ProxyError::Store)? != Inserted::Stored {
        return Err(ProxyError::Store(StoreError::Unavailable(
            "a new session ID was taken".into(),
        )));
    }
    Ok(None)
}

/// Logs a write the store refused (and counted) as over `session.max_data_bytes`.
fn refused(settings: &Settings, bytes: usize) {
    let max = settings.policy.max_data_bytes;
    tracing::warn!(
        bytes,
        max,
        "session write refused: over session.max_data_bytes"
    );
}

/// Applies a response's write-back to the session; returns the `Set-Cookie` it calls
/// for (destroyed, regenerated, or created by a write under `create: on_write`).
async fn apply_write_back(
    state: &State,
    settings: &Settings,
    flavor: &CookieFlavor,
    method: &Method,
    session: &mut SessionState,
    changes: &Changes,
    persist: Option<bool>,
) -> Result<Option<HeaderValue>, ProxyError> {
    let keys = &settings.config.session.keys;
    let max_age = cookie_age(settings, persist);
    match session {
        SessionState::Excluded | SessionState::Grace => {
            tracing::debug!("write-back ignored: no session on this request");
            Ok(None)
        }
        SessionState::Absent => {
            if changes.set.is_empty() || changes.destroy || *method == Method::OPTIONS {
                return Ok(None);
            }
            let data = SessionData::default().with_changes(changes);
            let created = state.store.create(data, &settings.policy).await;
            let id = match created.map_err(ProxyError::Store)? {
                Created::Stored(id) => id,
                Created::TooLarge { bytes } => {
                    refused(settings, bytes);
                    return Ok(None);
                }
            };
            *session = SessionState::Live {
                id,
                new: false,
                resign: false,
                created_ms: now_ms(),
            };
            Ok(Some(flavor.set_cookie(&keys.sign(&id), max_age)))
        }
        SessionState::Live { id, .. } => {
            if changes.destroy {
                (state.store)
                    .destroy(id, Reason::Logout)
                    .await
                    .map_err(ProxyError::Store)?;
                *session = SessionState::Absent;
                return Ok(Some(flavor.removal()));
            }
            match state
                .store
                .apply(id, changes, &settings.policy)
                .await
                .map_err(ProxyError::Store)?
            {
                Applied::Stored => Ok(None),
                Applied::Regenerated(new_id) => {
                    *session = SessionState::Live {
                        id: new_id,
                        new: false,
                        resign: false,
                        created_ms: now_ms(),
                    };
                    Ok(Some(flavor.set_cookie(&keys.sign(&new_id), max_age)))
                }
                Applied::TooLarge { bytes } => {
                    refused(settings, bytes);
                    Ok(None)
                }
                Applied::Missing => Ok(None),
            }
        }
    }
}

/// The cookie's `Max-Age` for a session: `X-Session-Persist` chooses a
/// persistent cookie (for the absolute timeout) or a browser-session one;
/// without a choice, `session.persistent` decides.
fn cookie_age(settings: &Settings, persist: Option<bool>) -> Option<Duration> {
    match persist {
        None => settings.jar.max_age,
        Some(true) => Some(
            settings
                .jar
                .max_age
                .unwrap_or(settings.policy.absolute_timeout),
        ),
        Some(false) => None,
    }
}

/// The `Set-Cookie` a session needs when the write-back did not decide one: a new
/// session's first cookie, an old-secret cookie re-signed (keeping its expiry),
/// or the same cookie again when the write-back chose its kind (`chosen`).
fn cookie_for(
    settings: &Settings,
    flavor: &CookieFlavor,
    session: &SessionState,
    persist: Option<bool>,
    chosen: bool,
) -> Option<HeaderValue> {
    let SessionState::Live {
        id,
        new,
        resign,
        created_ms,
    } = session
    else {
        return None;
    };
    if !*new && !*resign && !chosen {
        return None;
    }
    let keys = &settings.config.session.keys;
    let age = cookie_age(settings, persist);
    let max_age = if *new {
        age
    } else {
        age.map(|age| {
            let used = std::time::Duration::from_millis(now_ms().saturating_sub(*created_ms));
            age.saturating_sub(used)
        })
    };
    Some(flavor.set_cookie(&keys.sign(id), max_age))
}
