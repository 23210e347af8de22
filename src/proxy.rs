//! The request path, top to bottom: one request in, one response out.
//!
//! 1. strip hop-by-hop and session-prefixed client headers, take the proxy's cookie
//!    out of `Cookie`;
//! 2. verify the cookie and load the session (or create one);
//! 3. add the session headers and `X-Forwarded-*`, forward with the body streamed;
//! 4. consume the upstream's write-back headers and apply them;
//! 5. add `Set-Cookie` when needed, fix caching headers, stream the body back.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::config::{Config, CreateMode};
use crate::cookie::{CookieFlavor, Verified};
use crate::error::ProxyError;
use crate::headers::{self, Candidate, Extras, Keep, Line, RequestView, UpstreamSession};
use crate::metrics::{CookieRejection, Metrics};
use crate::pool::{HyperPool, Pool, PooledBody, Reusable, SendError};
use crate::redirect::ClientOrigin;
use crate::session::{
    now_ms, Applied, Changes, Created, Inserted, Lookup, SessionData, SessionId, SessionStore,
    Store, StoreError,
};
use crate::upstream::{self, RequestBody};
use smallvec::SmallVec;

pub use crate::settings::{ConnInfo, Settings};

/// The body of every response the proxy sends: the upstream's, streamed, or its own.
pub type ProxyBody = Either<PooledBody, Full<Bytes>>;

/// State shared by every worker thread.
pub struct State {
    pub settings: ArcSwap<Settings>,
    pub store: Store,
    pub metrics: Metrics,
}

impl State {
    pub fn new(config: Config, store: Store) -> State {
        State {
            settings: ArcSwap::from_pointee(Settings::new(config)),
            metrics: Metrics::new(store.counters().clone()),
            store,
        }
    }
}

/// What the access log says about a request beyond its method, path and status.
#[derive(Default)]
pub(crate) struct Trace {
    pub upstream: Option<std::time::Duration>,
    session: Option<SessionId>,
}

/// What one worker thread owns: its upstream connection pool and its request-id
/// counter, so that requests on different cores share no hot cache line.
pub struct Worker {
    pub state: Arc<State>,
    /// This worker's connections to the upstream; replaced when a reload changes
    /// the upstream.
    pool: ArcSwap<HyperPool>,
    /// The same for the HTTP/1 path, which speaks to the upstream as bytes.
    h1_pool: ArcSwap<crate::h1::client::Pool>,
    request_prefix: u32,
    request_counter: AtomicU64,
}

/// The pool in `slot` if it still serves the configured upstream, else a new
/// one put in its place (after a reload changed the upstream).
fn current_pool<C: Reusable>(slot: &ArcSwap<Pool<C>>, settings: &Settings) -> Arc<Pool<C>> {
    let upstream = &settings.config.upstream;
    let pool = slot.load_full();
    if pool.serves(upstream) {
        return pool;
    }
    let fresh = Arc::new(Pool::new(upstream));
    slot.store(fresh.clone());
    fresh
}

impl Worker {
    pub fn new(state: Arc<State>) -> Worker {
        let upstream = &state.settings.load().config.upstream;
        let pool = ArcSwap::from_pointee(Pool::new(upstream));
        let h1_pool = ArcSwap::from_pointee(Pool::new(upstream));
        let mut prefix = [0u8; 4];
        getrandom::fill(&mut prefix).expect("the operating system's random source failed");
        Worker {
            state,
            pool,
            h1_pool,
            request_prefix: u32::from_le_bytes(prefix),
            request_counter: AtomicU64::new(0),
        }
    }

    /// The HTTP/2 path's pool for the current upstream.
    fn pool(&self, settings: &Settings) -> Arc<HyperPool> {
        current_pool(&self.pool, settings)
    }

    /// The HTTP/1 path's pool for the current upstream.
    pub(crate) fn h1_pool(&self, settings: &Settings) -> Arc<crate::h1::client::Pool> {
        current_pool(&self.h1_pool, settings)
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

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The bookkeeping one request carries from its head to its last byte: when it
/// started, the settings it was served under, its id, and what the access log needs.
pub(crate) struct Begun {
    started: Instant,
    pub settings: arc_swap::Guard<Arc<Settings>>,
    pub method: Method,
    pub trusted: bool,
    pub request_id: HeaderValue,
    path: Option<String>,
    pub trace: Trace,
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
            ProxyError::BodyTooLarge | ProxyError::BodyTimeout | ProxyError::BadRequest(_) => {}
        }
        // Which upstream, for the failures that are its (never a URL with a path or
        // credentials: `host:port` only).
        let upstream = matches!(err, ProxyError::Upstream(_) | ProxyError::UpstreamTimeout)
            .then_some(begun.settings.config.upstream.connect_to.as_str());
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
                session = begun.trace.session.map(|id| session_tag(&id)).as_deref(),
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

/// Serves one request over hyper (HTTP/2, and HTTP/1 on the redirecting
/// listener); never fails (errors become responses).
pub async fn handle(
    worker: Arc<Worker>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let (parts, body) = req.into_parts();
    let client_request_id = parts.headers.get(&X_REQUEST_ID).map(|v| v.as_bytes());
    let mut begun = worker.begin(
        &conn,
        &parts.method,
        parts.uri.path().as_bytes(),
        client_request_id,
    );
    let outcome = proxy(&worker, &conn, &mut begun, &parts, body).await;
    let mut response = match outcome {
        Ok(resp) => resp,
        Err(err) => {
            worker.failed(&begun, &err);
            err.into_response().map(Either::Right)
        }
    };
    worker.finish_headers(&begun, &conn, response.headers_mut());
    let bytes = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    worker.finish(&mut begun, &conn, response.status(), bytes);
    response
}

/// A short, one-way tag of a session ID for logs: the first 8 bytes of its SHA-256,
/// in hex. Lets an operator follow one visitor through the log without the log ever
/// holding anything that could be turned into a cookie.
fn session_tag(id: &SessionId) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(id.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

async fn proxy(
    worker: &Worker,
    conn: &ConnInfo,
    begun: &mut Begun,
    parts: &http::request::Parts,
    body: Incoming,
) -> Result<Response<ProxyBody>, ProxyError> {
    let Begun {
        settings,
        trusted,
        request_id,
        trace,
        ..
    } = begun;
    let settings: &Settings = settings;
    let cfg = &settings.config;
    // HTTP/2 carries header names as bytes; forwarded over HTTP/1 each must be
    // a token, or the upstream would read a line the proxy did not mean.
    if parts
        .headers
        .keys()
        .any(|name| !name.as_str().bytes().all(headers::is_tchar))
    {
        return Err(ProxyError::BadRequest("header name is not a token"));
    }
    // One host per request (RFC 9112 §3.2, RFC 9113 §8.3.1): a `host` beside a
    // different `:authority` names two sites to two readers.
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    if let (Some(host), more) = (hosts.next(), hosts.next()) {
        let differs = parts
            .uri
            .authority()
            .is_some_and(|a| !a.as_str().as_bytes().eq_ignore_ascii_case(host.as_bytes()));
        if more.is_some() || differs {
            return Err(ProxyError::BadRequest("host disagrees with :authority"));
        }
    }
    let lines = headers::lines_of(&parts.headers);
    let view = RequestView {
        path: parts.uri.path().as_bytes(),
        target: parts
            .uri
            .path_and_query()
            .map_or(b"/", |pq| pq.as_str().as_bytes()),
        authority: parts.uri.authority().map(|a| a.as_str().as_bytes()),
        lines: &lines,
    };
    let state = &*worker.state;
    let prepared = prepare(
        state,
        settings,
        conn,
        *trusted,
        request_id,
        &parts.method,
        &view,
        trace,
    )
    .await?;
    let mut exchange = prepared.exchange;
    let uri = Uri::try_from(&*prepared.target)
        .map_err(|_| ProxyError::BadRequest("unusable request target"))?;
    let mut request_body = RequestBody::new(
        body,
        cfg.limits.max_body_bytes,
        cfg.limits.client_body_timeout,
    );
    let body_sent = request_body.watch_sent();
    let mut out = Request::new(request_body);
    *out.method_mut() = parts.method.clone();
    *out.uri_mut() = uri;
    *out.version_mut() = Version::HTTP_11;
    *out.headers_mut() = headers::to_header_map(&parts.headers, &prepared.keep, &prepared.extras);

    let asked = Instant::now();
    let pool = worker.pool(settings);
    // `upstream.timeout` counts from the moment the whole body has been sent.
    let timeout = cfg.upstream.timeout;
    let sent = match body_sent {
        None => tokio::time::timeout(timeout, pool.send(out))
            .await
            .map_err(|_| ()),
        Some(mut body_sent) => tokio::select! {
            sent = pool.send(out) => Ok(sent),
            _ = async {
                let _ = body_sent.wait_for(|sent| *sent).await;
                tokio::time::sleep(timeout).await;
            } => Err(()),
        },
    };
    trace.upstream = Some(asked.elapsed());
    let mut resp = match sent {
        Err(()) => return Err(ProxyError::UpstreamTimeout),
        Ok(Err(SendError::Upstream(kind))) => return Err(ProxyError::Upstream(kind)),
        Ok(Err(SendError::BodyTooLarge)) => return Err(ProxyError::BodyTooLarge),
        Ok(Err(SendError::ClientBody)) => {
            return Err(ProxyError::BadRequest("malformed request body"))
        }
        Ok(Err(SendError::BodyStalled)) => return Err(ProxyError::BodyTimeout),
        Ok(Ok(resp)) => resp,
    };
    let status = resp.status();
    let rewritten = {
        let lines = headers::lines_of(resp.headers());
        let (keep, extras) = respond(
            state,
            settings,
            &mut exchange,
            status,
            &lines,
            settings.hsts_for(conn),
        )
        .await?;
        let mut map = headers::to_header_map(resp.headers(), &keep, &extras);
        // The framing of the response to the client is hyper's to compute from
        // the body; a response without one (to HEAD, a 304) still tells the
        // size the upstream declared.
        if parts.method == Method::HEAD || status == StatusCode::NOT_MODIFIED {
            if let Some(length) = resp.headers().get(header::CONTENT_LENGTH) {
                map.insert(header::CONTENT_LENGTH, length.clone());
            }
        }
        map
    };
    *resp.headers_mut() = rewritten;
    Ok(resp.map(Either::Left))
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
    pub upgrade: bool,
    method: Method,
}

/// What steps 1 to 3 decided: the request to send upstream is the kept lines,
/// the proxy's extra lines, and `target`.
pub(crate) struct Prepared<'a> {
    pub exchange: Exchange,
    pub keep: Keep,
    pub extras: Extras<'a>,
    /// The target for the upstream, in origin form under `upstream.base_path`.
    pub target: Cow<'a, [u8]>,
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
    let cfg = &settings.config;

    // 1. Strip what the client may not send upstream, before adding anything.
    let scan = headers::scan_request(settings, conn, trusted, view, Some(&state.metrics))?;
    let flavor = settings.jar.flavor(scan.https);

    // 2. Find or make the session.
    // A Secure cookie is never sent over plain HTTP: with `secure: true`, such
    // requests get no session at all.
    let no_session = scan.excluded || (flavor.secure && !scan.https);
    let (session, data) = if no_session {
        (SessionState::Excluded, None)
    } else {
        resolve_session(state, settings, method, &scan.candidates).await?
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
    let extras = scan.extras(settings, conn, upstream_session, request_id);
    let target = if view.target.is_empty() {
        &b"/"[..]
    } else {
        view.target
    };
    // `*` (OPTIONS for the whole server) has no path to put under base_path.
    let target = if cfg.upstream.base_path.is_empty() || target == b"*" {
        Cow::Borrowed(target)
    } else {
        Cow::Owned([cfg.upstream.base_path.as_bytes(), target].concat())
    };
    Ok(Prepared {
        exchange: Exchange {
            session,
            https: scan.https,
            client_host: settings
                .redirects
                .as_ref()
                .and(scan.host())
                .map(SmallVec::from_slice),
            carried_session,
            upgrade: scan.upgrade,
            method: method.clone(),
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
    let changes = scan.changes.unwrap_or_else(|reason| {
        state.metrics.write_malformed();
        tracing::warn!(%reason, "write-back refused: malformed session header from the upstream");
        Changes::default()
    });
    let mut set_cookie = if matches!(exchange.session, SessionState::Live { new: true, .. }) {
        store_new(state, settings, flavor, &mut exchange.session, &changes).await?
    } else if !changes.is_empty() {
        apply_write_back(
            state,
            settings,
            flavor,
            &exchange.method,
            &mut exchange.session,
            &changes,
        )
        .await?
    } else {
        None
    };

    // 5. The cookie, and headers that keep shared caches from mixing visitors.
    if set_cookie.is_none() {
        set_cookie = cookie_for(settings, flavor, &exchange.session);
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
    if let (Some(upstream), Some(host)) = (&settings.redirects, &exchange.client_host) {
        let client = ClientOrigin {
            https: exchange.https,
            host,
        };
        headers::rewrite_redirects(lines, &kinds, &mut keep, &mut extras, upstream, client);
    }
    Ok((keep, extras))
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
        id: SessionId::random(),
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
        *id = SessionId::random();
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
) -> Result<Option<HeaderValue>, ProxyError> {
    let keys = &settings.config.session.keys;
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
            Ok(Some(
                flavor.set_cookie(&keys.sign(&id), settings.jar.max_age),
            ))
        }
        SessionState::Live { id, .. } => {
            if changes.destroy {
                state.store.destroy(id).await.map_err(ProxyError::Store)?;
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
                    Ok(Some(
                        flavor.set_cookie(&keys.sign(&new_id), settings.jar.max_age),
                    ))
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

/// The `Set-Cookie` a session needs when the write-back did not decide one: a new
/// session's first cookie, or an old-secret cookie re-signed (keeping its expiry).
fn cookie_for(
    settings: &Settings,
    flavor: &CookieFlavor,
    session: &SessionState,
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
    if !*new && !*resign {
        return None;
    }
    let keys = &settings.config.session.keys;
    let max_age = if *new {
        settings.jar.max_age
    } else {
        settings.jar.max_age.map(|age| {
            let used = std::time::Duration::from_millis(now_ms().saturating_sub(*created_ms));
            age.saturating_sub(used)
        })
    };
    Some(flavor.set_cookie(&keys.sign(id), max_age))
}

/// The plain listener's answer under `tls.redirect_http`: `308` to the same host,
/// path and query on the HTTPS port.
pub fn redirect_to_https<B>(req: &Request<B>, https_port: u16) -> Response<ProxyBody> {
    let host = req
        .uri()
        .host()
        .map(str::to_owned)
        .or_else(|| {
            let h = req.headers().get(header::HOST)?.to_str().ok()?;
            // Strip a port, keeping bracketed IPv6 literals whole.
            let host = match h.rfind(':') {
                Some(i) if !h[i..].contains(']') => &h[..i],
                _ => h,
            };
            Some(host.to_owned())
        })
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'/' && b != b'@')
        });
    let Some(host) = host else {
        return ProxyError::BadRequest("no host to redirect to")
            .into_response()
            .map(Either::Right);
    };
    let pq = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let location = if https_port == 443 {
        format!("https://{host}{pq}")
    } else {
        format!("https://{host}:{https_port}{pq}")
    };
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from_static(
        b"308 Permanent Redirect: use HTTPS\n",
    ))));
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
