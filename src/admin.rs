//! The admin listener, separate from the public ones and never proxying:
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /healthz` | `200 ok` while the process runs |
//! | `GET /readyz` | `200` when the store answers (and the upstream accepts a connection), else `503` |
//! | `GET /metrics` | Prometheus text exposition |
//! | `GET /sessions/{id}` | the session's data, created and last-seen times, as JSON; `404` when absent |
//! | `DELETE /sessions/{id}` | destroy one session (`204`; `404` when absent) |
//! | `GET /sessions?key=K&value=V` | the IDs of sessions whose data has K=V, as JSON |
//! | `DELETE /sessions?key=K&value=V` | destroy every such session; answers the count as JSON |
//! | `GET /upstreams` | every upstream group and server: state, requests, errors and (under affinity) sessions, as JSON |
//! | `GET /users/{value}/sessions` | the sessions of the user (`session.user_key` = value), as JSON |
//! | `DELETE /users/{value}/sessions` | destroy every session of the user; answers the count as JSON |
//!
//! With `admin.token` set, every endpoint but the probes needs `Authorization:
//! Bearer <token>` (compared in constant time); the probes stay open for
//! orchestrators.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::proxy::State;
use crate::session::{Reason, SessionId, SessionStore};

/// Serves the admin API until `stop` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = crate::shutdown::stopped(&mut stop) => break,
        };
        let state = state.clone();
        let service = service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(handle(&state, req).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Constant-time comparison of the bearer token.
pub(crate) fn token_matches(req_header: Option<&HeaderValue>, token: &str) -> bool {
    let Some(given) = req_header.and_then(|v| v.as_bytes().strip_prefix(b"Bearer ")) else {
        return false;
    };
    let want = token.as_bytes();
    let mut diff = (given.len() ^ want.len()) as u8 | (given.len() != want.len()) as u8;
    for (i, &b) in want.iter().enumerate() {
        diff |= b ^ given.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Full<Bytes>> {
    let mut body = value.to_string();
    body.push('\n');
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn handle(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    match (req.method(), path) {
        // Probes answer HEAD too: some health checkers send it.
        (&Method::GET | &Method::HEAD, "/healthz") => return text(StatusCode::OK, "ok\n"),
        (&Method::GET | &Method::HEAD, "/readyz") => return readiness(state).await,
        _ => {}
    }
    let settings = state.settings.load();
    if let Some(token) = &settings.config.admin.token {
        if !token_matches(req.headers().get(header::AUTHORIZATION), token) {
            let mut resp = text(StatusCode::UNAUTHORIZED, "401 Unauthorized\n");
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return resp;
        }
    }
    drop(settings);
    let query = req.uri().query().unwrap_or("");
    let method = req.method();
    if method == Method::GET && path == "/metrics" {
        return metrics(state).await;
    }
    if method != Method::GET && method != Method::DELETE {
        return text(StatusCode::NOT_FOUND, "404 Not Found\n");
    }
    if path == "/sessions" {
        return by_key(state, method == Method::GET, query).await;
    }
    if path == "/upstreams" && method == Method::GET {
        return upstreams(state).await;
    }
    if let Some(user) = path
        .strip_prefix("/users/")
        .and_then(|rest| rest.strip_suffix("/sessions"))
    {
        return users(state, method == Method::GET, user).await;
    }
    let Some(id_text) = path.strip_prefix("/sessions/") else {
        return text(StatusCode::NOT_FOUND, "404 Not Found\n");
    };
    let Some(id) = SessionId::decode(id_text.as_bytes()) else {
        return text(StatusCode::NOT_FOUND, "404 Not Found: no such session\n");
    };
    if method == Method::GET {
        return match state.store.inspect(&id).await {
            Ok(Some(info)) => {
                let data: serde_json::Map<String, serde_json::Value> = info
                    .data
                    .pairs()
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                    .collect();
                json(
                    StatusCode::OK,
                    serde_json::json!({
                        "id": id.to_string(),
                        "data": data,
                        "created": info.created_ms / 1000,
                        "last_seen": info.last_seen_ms / 1000,
                    }),
                )
            }
            Ok(None) => text(StatusCode::NOT_FOUND, "404 Not Found: no such session\n"),
            Err(_) => store_down(),
        };
    }
    match state.store.destroy(&id, Reason::Admin).await {
        Ok(true) => {
            tracing::info!("admin: session destroyed");
            let mut resp = text(StatusCode::NO_CONTENT, "");
            resp.headers_mut().remove(header::CONTENT_TYPE);
            resp
        }
        Ok(false) => text(StatusCode::NOT_FOUND, "404 Not Found: no such session\n"),
        Err(_) => store_down(),
    }
}

/// `GET` or `DELETE /sessions?key=K&value=V`: find or revoke by a data key and value.
async fn by_key(state: &State, find: bool, query: &str) -> Response<Full<Bytes>> {
    let mut key = None;
    let mut value = None;
    let Some(pairs) = form_pairs(query) else {
        return text(
            StatusCode::BAD_REQUEST,
            "400 Bad Request: malformed percent-encoding in the query\n",
        );
    };
    for (k, v) in pairs {
        match k.as_str() {
            "key" => key = Some(v),
            "value" => value = Some(v),
            _ => {}
        }
    }
    let (Some(key), Some(value)) = (key.filter(|k| !k.is_empty()), value) else {
        return text(
            StatusCode::BAD_REQUEST,
            "400 Bad Request: needs ?key=K&value=V\n",
        );
    };
    if find {
        return match state.store.find(&key, &value).await {
            Ok(ids) => {
                let ids: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
                json(StatusCode::OK, serde_json::json!({ "sessions": ids }))
            }
            Err(_) => store_down(),
        };
    }
    match state.store.revoke(&key, &value).await {
        Ok(n) => {
            tracing::info!(key = %key, destroyed = n, "admin: sessions revoked");
            json(StatusCode::OK, serde_json::json!({ "destroyed": n }))
        }
        Err(_) => store_down(),
    }
}

/// `GET` or `DELETE /users/{value}/sessions`: one user's sessions, through the
/// per-user index (never a scan).
async fn users(state: &State, list: bool, encoded: &str) -> Response<Full<Bytes>> {
    if state.settings.load().config.session.user_key.is_none() {
        return text(
            StatusCode::NOT_FOUND,
            "404 Not Found: session.user_key is not set\n",
        );
    }
    // One segment: a `/` in the value is written `%2F`.
    let segment = Some(encoded).filter(|e| !e.contains('/'));
    let decoded = segment.and_then(|e| crate::session::decode_segment(e.as_bytes()).ok());
    let Some(user) = decoded.filter(|u| !u.is_empty()) else {
        return text(
            StatusCode::BAD_REQUEST,
            "400 Bad Request: the user is one percent-encoded path segment\n",
        );
    };
    if list {
        return match state.store.user_sessions(&user).await {
            Ok(sessions) => {
                let sessions: Vec<serde_json::Value> = sessions
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "id": s.id.to_string(),
                            "created": s.created_ms / 1000,
                            "last_seen": s.last_seen_ms / 1000,
                            "client_ip": s.client_ip,
                            "user_agent": s.user_agent,
                        })
                    })
                    .collect();
                json(
                    StatusCode::OK,
                    serde_json::json!({ "user": user, "sessions": sessions }),
                )
            }
            Err(_) => store_down(),
        };
    }
    match state.store.destroy_user(&user, None, Reason::Admin).await {
        Ok(n) => {
            tracing::info!(destroyed = n, "admin: a user's sessions destroyed");
            json(StatusCode::OK, serde_json::json!({ "destroyed": n }))
        }
        Err(_) => store_down(),
    }
}

fn store_down() -> Response<Full<Bytes>> {
    let mut resp = text(
        StatusCode::SERVICE_UNAVAILABLE,
        "503 Service Unavailable: the session store is unavailable\n",
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// Ready when the store answers and the upstream accepts a TCP connection within a
/// short probe (so a load balancer stops sending traffic to a proxy that could only
/// answer 502 or 503).
async fn readiness(state: &State) -> Response<Full<Bytes>> {
    const PROBE: std::time::Duration = std::time::Duration::from_secs(1);
    if !matches!(
        tokio::time::timeout(PROBE, state.store.ping()).await,
        Ok(Ok(()))
    ) {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: session store unavailable\n",
        );
    }
    // Every group needs one server that is healthy and accepts a connection.
    let settings = state.settings.load_full();
    let ups = &settings.upstreams;
    for group in &ups.groups {
        let mut reachable = false;
        for &i in &group.targets {
            let t = &ups.targets[i];
            if !t.state.is_healthy() {
                continue;
            }
            let connect = tokio::net::TcpStream::connect(t.endpoint.authority.as_str());
            if matches!(tokio::time::timeout(PROBE, connect).await, Ok(Ok(_))) {
                reachable = true;
                break;
            }
        }
        if !reachable {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: upstream unreachable\n",
            );
        }
    }
    text(StatusCode::OK, "ready\n")
}

/// `GET /upstreams`: every group and server, with its state and, under
/// affinity, how many sessions stay on it.
async fn upstreams(state: &State) -> Response<Full<Bytes>> {
    let settings = state.settings.load_full();
    let ups = &settings.upstreams;
    let mut groups = Vec::new();
    for group in &ups.groups {
        let mut servers = Vec::new();
        for &i in &group.targets {
            let t = &ups.targets[i];
            let status = match (t.state.is_healthy(), t.drain) {
                (false, _) => "unhealthy",
                (true, true) => "draining",
                (true, false) => "healthy",
            };
            let sessions = if group.affinity {
                match state.store.find(&group.pin_key, &t.tag).await {
                    Ok(ids) => serde_json::json!(ids.len()),
                    Err(_) => return store_down(),
                }
            } else {
                serde_json::Value::Null
            };
            servers.push(serde_json::json!({
                "url": t.name,
                "state": status,
                "requests": t.state.metrics.requests.get(),
                "errors": t.state.metrics.errors.get(),
                "sessions": sessions,
            }));
        }
        groups.push(serde_json::json!({
            "name": group.name,
            "affinity": if group.affinity { "session" } else { "none" },
            "servers": servers,
        }));
    }
    json(StatusCode::OK, serde_json::json!({ "groups": groups }))
}

/// The session counters are the store's own, read as the registry encodes them.
async fn metrics(state: &State) -> Response<Full<Bytes>> {
    let m = &state.metrics;
    if let crate::session::Store::Memory(mem) = &state.store {
        // Counting Redis sessions would SCAN the keyspace on every scrape: the
        // gauge is the memory store's alone.
        m.sessions_active.set(mem.len() as i64);
    }
    let mut resp = Response::new(Full::new(Bytes::from(m.encode())));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `application/x-www-form-urlencoded` query pairs; `None` when one is not
/// well formed (so a bad value never stands for another, such as the empty one).
fn form_pairs(query: &str) -> Option<Vec<(String, String)>> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let dec = |s: &str| crate::session::decode_component(s.as_bytes()).ok();
            Some((dec(k)?, dec(v)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_compare() {
        let v = HeaderValue::from_static("Bearer s3cret-token");
        assert!(token_matches(Some(&v), "s3cret-token"));
        assert!(!token_matches(Some(&v), "s3cret-toke"));
        assert!(!token_matches(Some(&v), "s3cret-token2"));
        assert!(!token_matches(None, "s3cret-token"));
        let v = HeaderValue::from_static("Basic s3cret-token");
        assert!(!token_matches(Some(&v), "s3cret-token"));
    }
}
