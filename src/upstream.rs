//! The upstream side: the request body that enforces `limits.max_body_bytes`
//! while streaming (HTTP/2 path), and who counts as a trusted proxy.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
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
pub(crate) struct BodyTooLarge;

/// The client's body broke off or was malformed (bad chunk framing): the client's
/// fault, answered 400.
#[derive(Debug, thiserror::Error)]
#[error("malformed or interrupted request body")]
pub(crate) struct ClientBodyError(#[source] pub(crate) hyper::Error);

/// The client's body on its way upstream: streamed, and cut off with
/// [`BodyTooLarge`] once it passes the configured limit.
pub(crate) struct RequestBody {
    inner: Option<Incoming>,
    remaining: Option<u64>,
    /// The longest a client may pause between body bytes (slow POST).
    idle: Duration,
    /// Armed when the client has nothing to give; made on first need, so
    /// requests without a body never allocate it.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Told once the whole body has been handed on (or it failed): from then on
    /// `upstream.timeout` runs.
    sent: Option<tokio::sync::watch::Sender<bool>>,
}

/// The client stopped sending its body for longer than the idle limit.
#[derive(Debug, thiserror::Error)]
#[error("request body stalled past limits.client_body_timeout")]
pub(crate) struct BodyStalled;

impl RequestBody {
    pub(crate) fn new(inner: Incoming, limit: Option<u64>, idle: Duration) -> RequestBody {
        RequestBody {
            inner: Some(inner),
            remaining: limit,
            idle,
            stall: None,
            sent: None,
        }
    }

    /// A receiver that turns true once the whole body has been sent; `None`
    /// when it has already ended (a request without a body), which costs no
    /// channel.
    pub(crate) fn watch_sent(&mut self) -> Option<tokio::sync::watch::Receiver<bool>> {
        if self.is_end_stream() {
            return None;
        }
        let (tx, rx) = tokio::sync::watch::channel(false);
        self.sent = Some(tx);
        Some(rx)
    }

    fn mark_sent(&mut self) {
        if let Some(tx) = self.sent.take() {
            let _ = tx.send(true);
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
            this.mark_sent();
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
                        this.mark_sent();
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    *remaining -= n;
                }
                if this.inner.as_ref().is_none_or(|b| b.is_end_stream()) {
                    this.mark_sent();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.inner = None;
                this.mark_sent();
                Poll::Ready(Some(Err(Box::new(ClientBodyError(e)))))
            }
            Poll::Ready(None) => {
                this.mark_sent();
                Poll::Ready(None)
            }
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

pub(crate) fn is_trusted(peer: IpAddr, trusted: &[IpNet]) -> bool {
    let peer = match peer {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    trusted.iter().any(|net| net.contains(&peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_matches_cidrs_and_mapped_v4() {
        let nets: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        assert!(is_trusted("10.1.2.3".parse().unwrap(), &nets));
        assert!(is_trusted("::ffff:10.1.2.3".parse().unwrap(), &nets));
        assert!(!is_trusted("11.0.0.1".parse().unwrap(), &nets));
    }
}
