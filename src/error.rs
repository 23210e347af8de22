//! Errors the proxy answers itself, and their single mapping to a response.
//!
//! Bodies are short plain text that say what went wrong on whose side, and never
//! name the upstream's address or echo anything from the request.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::upstream::UpstreamFailure;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("upstream failed: {0:?}")]
    Upstream(UpstreamFailure),
    #[error("upstream did not answer within upstream.timeout")]
    UpstreamTimeout,
    #[error("session store unavailable")]
    Store(#[source] crate::session::StoreError),
    #[error("request body larger than limits.max_body_bytes")]
    BodyTooLarge,
    #[error("request body stalled past limits.client_body_timeout")]
    BodyTimeout,
    #[error("malformed request")]
    BadRequest(&'static str),
    /// `CONNECT`: the proxy opens no tunnels.
    #[error("CONNECT is not served")]
    MethodNotAllowed,
    /// Every server of the request's group is unhealthy.
    #[error("no healthy upstream server")]
    NoServer,
    /// `routes` is set and none matches the request.
    #[error("no route matches the request")]
    NoRoute,
    /// Cross-site protection refused an unsafe request from another site.
    #[error("cross-site request refused")]
    CrossSite,
    /// The login gate sends a browser navigation to this login page.
    #[error("login required: sent to the login page")]
    Login(HeaderValue),
    /// The login gate answers any other request with this JSON body.
    #[error("login required")]
    Unauthorized(Bytes),
    /// The session's value for the route's `require` key is not one it accepts.
    #[error("the session may not use this route")]
    Forbidden,
}

impl ProxyError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ProxyError::Upstream(UpstreamFailure::ConnectTimeout) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Upstream(
                UpstreamFailure::Refused
                | UpstreamFailure::Reset
                | UpstreamFailure::Protocol
                | UpstreamFailure::Tls,
            ) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::NoServer => StatusCode::BAD_GATEWAY,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::CrossSite | ProxyError::Forbidden => StatusCode::FORBIDDEN,
            ProxyError::Login(_) => StatusCode::SEE_OTHER,
            ProxyError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        }
    }

    /// A short name of the kind, for logs and metrics.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            ProxyError::Upstream(UpstreamFailure::Refused) => "upstream_refused",
            ProxyError::Upstream(UpstreamFailure::ConnectTimeout) => "upstream_connect_timeout",
            ProxyError::Upstream(UpstreamFailure::Reset) => "upstream_reset",
            ProxyError::Upstream(UpstreamFailure::Protocol) => "upstream_protocol",
            ProxyError::Upstream(UpstreamFailure::Tls) => "upstream_tls",
            ProxyError::UpstreamTimeout => "upstream_timeout",
            ProxyError::Store(_) => "store_unavailable",
            ProxyError::BodyTooLarge => "body_too_large",
            ProxyError::BodyTimeout => "body_timeout",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::MethodNotAllowed => "method_not_allowed",
            ProxyError::NoServer => "no_healthy_upstream",
            ProxyError::NoRoute => "no_route",
            ProxyError::CrossSite => "cross_site",
            ProxyError::Login(_) | ProxyError::Unauthorized(_) => "login_required",
            ProxyError::Forbidden => "forbidden",
        }
    }

    pub(crate) fn body(&self) -> Bytes {
        if let ProxyError::Unauthorized(json) = self {
            return json.clone();
        }
        Bytes::from_static(self.text().as_bytes())
    }

    fn text(&self) -> &'static str {
        match self {
            ProxyError::Upstream(UpstreamFailure::Refused) => {
                "502 Bad Gateway: upstream refused the connection\n"
            }
            ProxyError::Upstream(UpstreamFailure::Reset) => {
                "502 Bad Gateway: upstream reset the connection\n"
            }
            ProxyError::Upstream(UpstreamFailure::Protocol) => {
                "502 Bad Gateway: upstream sent an invalid response\n"
            }
            ProxyError::Upstream(UpstreamFailure::Tls) => {
                "502 Bad Gateway: upstream TLS handshake failed\n"
            }
            ProxyError::Upstream(UpstreamFailure::ConnectTimeout) => {
                "504 Gateway Timeout: could not connect to the upstream in time\n"
            }
            ProxyError::UpstreamTimeout => "504 Gateway Timeout: upstream did not answer in time\n",
            ProxyError::Store(_) => {
                "503 Service Unavailable: the session store is unavailable, retry shortly\n"
            }
            ProxyError::BodyTooLarge => "413 Payload Too Large: request body over the limit\n",
            ProxyError::BodyTimeout => "408 Request Timeout: the request body stalled\n",
            ProxyError::BadRequest(_) => "400 Bad Request\n",
            ProxyError::MethodNotAllowed => "405 Method Not Allowed\n",
            ProxyError::NoServer => "502 Bad Gateway: no healthy upstream server\n",
            ProxyError::NoRoute => "404 Not Found\n",
            ProxyError::CrossSite => "403 Forbidden: cross-site request refused\n",
            ProxyError::Login(_) => "303 See Other: login required\n",
            ProxyError::Unauthorized(_) => "",
            ProxyError::Forbidden => "403 Forbidden: not allowed for this session\n",
        }
    }

    pub(crate) fn into_response(self) -> Response<Full<Bytes>> {
        let mut resp = Response::new(Full::new(self.body()));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        let content_type = match self {
            ProxyError::Unauthorized(_) => "application/json",
            _ => "text/plain; charset=utf-8",
        };
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match self {
            ProxyError::Store(_) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ProxyError::BadRequest(_) | ProxyError::BodyTooLarge | ProxyError::BodyTimeout => {
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            ProxyError::MethodNotAllowed => {
                h.insert(
                    header::ALLOW,
                    HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH, TRACE"),
                );
            }
            ProxyError::Login(location) => {
                h.insert(header::LOCATION, location);
            }
            ProxyError::Upstream(_)
            | ProxyError::UpstreamTimeout
            | ProxyError::NoServer
            | ProxyError::NoRoute
            | ProxyError::CrossSite
            | ProxyError::Unauthorized(_)
            | ProxyError::Forbidden => {}
        }
        resp
    }
}
