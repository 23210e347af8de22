//! The upstream side: the request body that enforces
//! `limits.max_body_bytes` while streaming, and the header rules shared by requests
//! and responses (hop-by-hop removal, `X-Forwarded-*`).

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use ipnet::IpNet;

/// Why a request to the upstream failed, by whose fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// Connection refused (nothing listening).
    Refused,
    /// Could not connect within `upstream.connect_timeout`.
    ConnectTimeout,
    /// The connection was reset or closed before a full response.
    Reset,
    /// Anything else the upstream did wrong (malformed response, ...).
    Protocol,
    /// The TLS handshake with an `https://` upstream failed (certificate not
    /// trusted, name mismatch, ...).
    Tls,
}

/// A body error from the client's side: the upload broke the size limit.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than limits.max_body_bytes")]
pub struct BodyTooLarge;

/// The client's body broke off or was malformed (bad chunk framing): the client's
/// fault, answered 400.
#[derive(Debug, thiserror::Error)]
#[error("malformed or interrupted request body")]
pub struct ClientBodyError(#[source] pub hyper::Error);

/// The client's body on its way upstream: streamed, and cut off with
/// [`BodyTooLarge`] once it passes the configured limit.
pub struct RequestBody {
    inner: Option<Incoming>,
    remaining: Option<u64>,
    /// The longest a client may pause between body bytes (slow POST).
    idle: Duration,
    /// Armed when the client has nothing to give; made on first need, so
    /// requests without a body never allocate it.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// The client stopped sending its body for longer than the idle limit.
#[derive(Debug, thiserror::Error)]
#[error("request body stalled past limits.header_read_timeout")]
pub struct BodyStalled;

impl RequestBody {
    pub fn new(inner: Incoming, limit: Option<u64>, idle: Duration) -> RequestBody {
        RequestBody {
            inner: Some(inner),
            remaining: limit,
            idle,
            stall: None,
        }
    }

    pub fn empty() -> RequestBody {
        RequestBody {
            inner: None,
            remaining: None,
            idle: Duration::MAX,
            stall: None,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if polled.is_pending() {
            let idle = this.idle;
            let stall = this
                .stall
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
            if stall.as_mut().poll(cx).is_ready() {
                this.inner = None;
                return Poll::Ready(Some(Err(Box::new(BodyStalled))));
            }
            return Poll::Pending;
        }
        if let Some(stall) = this.stall.as_mut() {
            stall
                .as_mut()
                .reset(tokio::time::Instant::now() + this.idle);
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(remaining), Some(data)) = (this.remaining.as_mut(), frame.data_ref()) {
                    let n = data.len() as u64;
                    if n > *remaining {
                        this.inner = None;
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    *remaining -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.inner = None;
                Poll::Ready(Some(Err(Box::new(ClientBodyError(e)))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Removes hop-by-hop headers, the headers named in `Connection`, and every header
/// whose (lower-case) name starts with `prefix`. `Upgrade` is kept, with a plain
/// `Connection: upgrade`, when `upgrade` is true.
///
/// Runs before the proxy adds its own headers, so nothing a client or upstream
/// names in `Connection` can remove them. One pass over the headers; nothing is
/// allocated unless something has to go.
pub fn strip_headers(headers: &mut HeaderMap, prefix: &str, upgrade: bool) {
    let mut doomed: Vec<HeaderName> = Vec::new();
    for (name, value) in headers.iter() {
        if *name == header::CONNECTION {
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.is_empty() || (upgrade && token.eq_ignore_ascii_case(b"upgrade")) {
                    continue;
                }
                if let Ok(named) = HeaderName::from_bytes(token) {
                    doomed.push(named);
                }
            }
        }
        let hop = is_hop_by_hop(name) && !(upgrade && *name == header::UPGRADE);
        if hop || name.as_str().starts_with(prefix) {
            doomed.push(name.clone());
        }
    }
    for name in &doomed {
        if upgrade && *name == header::UPGRADE {
            continue;
        }
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Is this an `Upgrade` request (`Connection: upgrade` plus an `Upgrade` header)?
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .map(|s| {
                    s.split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
                })
                .unwrap_or(false)
        })
}

pub fn is_trusted(peer: IpAddr, trusted: &[IpNet]) -> bool {
    let peer = match peer {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    trusted.iter().any(|net| net.contains(&peer))
}

/// Sets `X-Forwarded-For/-Proto/-Host`. A trusted peer's values are kept (and its
/// `X-Forwarded-For` appended to); anybody else's are replaced.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: &HeaderValue,
    trusted: bool,
    https: bool,
    host: Option<&HeaderValue>,
) {
    const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
    const XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
    const XFH: HeaderName = HeaderName::from_static("x-forwarded-host");
    let prior: Vec<&[u8]> = if trusted {
        headers.get_all(&XFF).iter().map(|v| v.as_bytes()).collect()
    } else {
        Vec::new()
    };
    if prior.is_empty() {
        headers.insert(XFF, peer.clone());
    } else {
        let mut joined = prior.join(&b", "[..]);
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(peer.as_bytes());
        if let Ok(v) = HeaderValue::from_bytes(&joined) {
            headers.insert(XFF, v);
        }
    }
    if !(trusted && headers.contains_key(&XFP)) {
        headers.insert(
            XFP,
            HeaderValue::from_static(if https { "https" } else { "http" }),
        );
    }
    if !(trusted && headers.contains_key(&XFH)) {
        match host {
            Some(h) => {
                headers.insert(XFH, h.clone());
            }
            None => {
                headers.remove(XFH);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_named_headers_and_prefix_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            "keep-alive, x-secret, X-Session-Id".parse().unwrap(),
        );
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("x-session-id", "spoof".parse().unwrap());
        h.insert("x-session-anything", "spoof".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("accept", "*/*".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        strip_headers(&mut h, "x-session-", false);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["accept"]);
    }

    #[test]
    fn upgrade_is_kept_for_upgrades() {
        let mut h = HeaderMap::new();
        h.insert("connection", "Upgrade".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        assert!(wants_upgrade(&h));
        strip_headers(&mut h, "x-session-", true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
    }

    #[test]
    fn forwarded_for_trust_rules() {
        let peer = HeaderValue::from_static("10.0.0.2");
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "1.2.3.4".parse().unwrap());
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        let host = HeaderValue::from_static("a.example");
        set_forwarded(&mut h, &peer, false, false, Some(&host));
        assert_eq!(h["x-forwarded-for"], "10.0.0.2");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "a.example");
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "1.2.3.4".parse().unwrap());
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        set_forwarded(&mut h, &peer, true, false, None);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.2");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn trusted_matches_cidrs_and_mapped_v4() {
        let nets: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        assert!(is_trusted("10.1.2.3".parse().unwrap(), &nets));
        assert!(is_trusted("::ffff:10.1.2.3".parse().unwrap(), &nets));
        assert!(!is_trusted("11.0.0.1".parse().unwrap(), &nets));
    }
}
