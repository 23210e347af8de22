//! The admin listener, separate from the public ones and never proxying:
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /healthz` | `200 ok` while the process runs |
//! | `GET /readyz` | `200` when the store answers, else `503` |
//!
//! With `admin.token` set, every other endpoint needs `Authorization: Bearer
//! <token>` (compared in constant time); the probes stay open for orchestrators.

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
use crate::session::SessionStore;

/// Serves the admin API until `stop` turns true.
pub async fn serve(listener: TcpListener, state: Arc<State>, mut stop: watch::Receiver<bool>) {
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
            _ = crate::server::stopped(&mut stop) => break,
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
pub fn token_matches(req_header: Option<&HeaderValue>, token: &str) -> bool {
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

async fn handle(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => match state.store.ping().await {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(_) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: session store unavailable\n",
            ),
        },
        _ => {
            let settings = state.settings.load();
            if let Some(token) = &settings.config.admin.token {
                if !token_matches(req.headers().get(header::AUTHORIZATION), token) {
                    let mut resp = text(StatusCode::UNAUTHORIZED, "401 Unauthorized\n");
                    resp.headers_mut()
                        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                    return resp;
                }
            }
            text(StatusCode::NOT_FOUND, "404 Not Found\n")
        }
    }
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
