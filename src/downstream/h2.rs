//! The HTTP/2 adapter: hyper's server reads the frames; each stream is one
//! request through [`proxy::forward`], its body read from the stream as it
//! arrives and its response body read straight off the upstream connection.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;

use crate::config::LimitsConfig;
use crate::error::ProxyError;
use crate::h1::client::ResponseBody;
use crate::h1::codec::{self, BodyHead, Framing, Outgoing, ResponseHead};
use crate::headers::{self, Extras, Keep, RequestView};
use crate::proxy::{self, ConnInfo, Downstream, Incoming, Refusal, Reply, Worker};

/// Serves one HTTP/2 stream; never fails (errors become responses).
pub(crate) async fn handle(
    worker: Arc<Worker>,
    conn: Arc<ConnInfo>,
    req: Request<hyper::body::Incoming>,
) -> Response<StreamBody> {
    let (parts, body) = req.into_parts();
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
    let framing = if body.is_end_stream() {
        Framing::Empty
    } else {
        match body.size_hint().exact() {
            Some(n) => Framing::Length(n),
            None => Framing::Chunked,
        }
    };
    let request_id = parts
        .headers
        .get(header::HeaderName::from_static("x-request-id"))
        .map(|v| v.as_bytes());
    let incoming = Incoming {
        method: &parts.method,
        view,
        framing,
        expect_continue: false,
        request_id,
        refused: refused(&parts),
    };
    let mut stream = Stream {
        body,
        chunked: framing == Framing::Chunked,
        seen: 0,
        done: framing == Framing::Empty,
    };
    match proxy::forward(&worker, &conn, &mut stream, incoming).await {
        Reply::Upstream { head, first, body } => head.map(|_| StreamBody::Upstream {
            first: (!first.is_empty()).then(|| Bytes::from(first)),
            body,
        }),
        Reply::Own(head) => head,
        // Neither is possible on a stream (no `101`, no `100 Continue` to
        // fail); the stream is answered all the same.
        Reply::Switched { .. } | Reply::Gone => {
            let mut resp = Response::new(StreamBody::Own(None));
            *resp.status_mut() = StatusCode::BAD_GATEWAY;
            resp
        }
    }
}

/// What makes a request unfit to forward, which HTTP/2 itself allows.
fn refused(parts: &http::request::Parts) -> Option<Refusal> {
    // No tunnels, as over HTTP/1 (DESIGN.md §9).
    if parts.method == http::Method::CONNECT {
        return Some(Refusal::Connect);
    }
    // HTTP/2 carries header names as bytes; forwarded over HTTP/1 each must be
    // a token, or the upstream would read a line the proxy did not mean.
    if parts
        .headers
        .keys()
        .any(|name| !name.as_str().bytes().all(headers::is_tchar))
    {
        return Some(Refusal::Malformed("header name is not a token"));
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
            return Some(Refusal::Malformed("host disagrees with :authority"));
        }
    }
    None
}

/// One request's view of its HTTP/2 stream, for the request path.
struct Stream {
    body: hyper::body::Incoming,
    /// The body goes upstream chunked (its length was not declared).
    chunked: bool,
    seen: u64,
    done: bool,
}

impl Stream {
    /// Moves one frame of the body into `out`, framed for the upstream.
    fn frame(
        &mut self,
        frame: Option<Result<Frame<Bytes>, hyper::Error>>,
        out: &mut Vec<u8>,
        limits: &LimitsConfig,
    ) -> Result<(), ProxyError> {
        match frame {
            None => {
                if self.chunked {
                    out.extend_from_slice(codec::LAST_CHUNK);
                }
                self.done = true;
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "request body broke off");
                return Err(ProxyError::BadRequest("malformed request body"));
            }
            Some(Ok(frame)) => {
                // Trailers are not forwarded.
                let Ok(data) = frame.into_data() else {
                    return Ok(());
                };
                self.seen += data.len() as u64;
                if limits.max_body_bytes.is_some_and(|max| self.seen > max) {
                    return Err(ProxyError::BodyTooLarge);
                }
                if self.chunked {
                    codec::put_chunk(out, &data);
                } else {
                    out.extend_from_slice(&data);
                }
            }
        }
        Ok(())
    }
}

impl Downstream for Stream {
    type Head = Response<StreamBody>;

    fn body_ready(&mut self, out: &mut Vec<u8>, limits: &LimitsConfig) -> Result<(), ProxyError> {
        let mut cx = Context::from_waker(Waker::noop());
        while !self.done {
            match Pin::new(&mut self.body).poll_frame(&mut cx) {
                Poll::Ready(frame) => self.frame(frame, out, limits)?,
                Poll::Pending => break,
            }
        }
        Ok(())
    }

    fn body_done(&self) -> bool {
        self.done
    }

    async fn body_wait(
        &mut self,
        out: &mut Vec<u8>,
        limits: &LimitsConfig,
    ) -> Result<(), ProxyError> {
        let frame = tokio::time::timeout(limits.client_body_timeout, self.body.frame())
            .await
            .map_err(|_| ProxyError::BodyTimeout)?;
        self.frame(frame, out, limits)?;
        // What else already arrived goes with it.
        self.body_ready(out, limits)
    }

    async fn go_on(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    fn head(
        &mut self,
        rh: &ResponseHead<'_>,
        keep: &Keep,
        extras: &Extras<'_>,
    ) -> (Response<StreamBody>, bool) {
        let mut headers = headers::header_map(&rh.lines, keep, extras);
        // The length is the proxy's to state, from what the parser found;
        // a chunked or close-delimited body is sent as it comes.
        let length = match rh.framing {
            Framing::Empty | Framing::Length(_) => {
                codec::client_framing(rh.status, rh.framing, rh.declared_length, Outgoing::AsIs)
            }
            Framing::Chunked | Framing::Close => BodyHead::None,
        };
        if let BodyHead::Length(n) = length {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        let mut resp = Response::new(StreamBody::Own(None));
        *resp.status_mut() = rh.status;
        *resp.headers_mut() = headers;
        (resp, false)
    }

    fn own(
        &mut self,
        status: StatusCode,
        headers: &HeaderMap,
        body: Bytes,
        head_only: bool,
        _clean: bool,
    ) -> Response<StreamBody> {
        let length = body.len();
        let mut resp = Response::new(StreamBody::Own((!head_only).then_some(body)));
        *resp.status_mut() = status;
        *resp.headers_mut() = headers.clone();
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        resp
    }
}

/// A response body on an HTTP/2 stream: the upstream's, read off its
/// connection as the client takes it, or the proxy's own.
pub(crate) enum StreamBody {
    Upstream {
        /// What arrived with the head, not yet sent.
        first: Option<Bytes>,
        body: ResponseBody,
    },
    Own(Option<Bytes>),
}

impl Body for StreamBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            StreamBody::Own(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            StreamBody::Upstream { first, body } => {
                if let Some(first) = first.take() {
                    return Poll::Ready(Some(Ok(Frame::data(first))));
                }
                let mut out = Vec::new();
                while !body.is_done() {
                    if let Err(e) = std::task::ready!(body.poll_next(cx, &mut out)) {
                        tracing::debug!(error = %e, "upstream body broke off");
                        return Poll::Ready(Some(Err(e)));
                    }
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                    }
                }
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            StreamBody::Own(bytes) => bytes.is_none(),
            StreamBody::Upstream { first, body } => first.is_none() && body.is_done(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            StreamBody::Own(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            StreamBody::Own(None) => SizeHint::with_exact(0),
            StreamBody::Upstream { .. } => SizeHint::default(),
        }
    }
}
