//! What a connection knows about its peer, worked out once when it is accepted
//! and read by the header rules and the request path for every request on it.

use std::net::SocketAddr;

use http::HeaderValue;

/// What a connection knows about its peer, worked out once per connection.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub(crate) peer: SocketAddr,
    /// The request arrived over TLS.
    pub(crate) tls: bool,
    /// The peer's IP as a header value, for `X-Forwarded-For`.
    pub(crate) peer_header: HeaderValue,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: bool) -> ConnInfo {
        let peer_header = HeaderValue::from_str(&peer.ip().to_string())
            .expect("an IP address is a valid header value");
        ConnInfo {
            peer,
            tls,
            peer_header,
        }
    }
}
