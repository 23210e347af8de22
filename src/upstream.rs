//! The upstream side: how a request to it fails, and who counts as a trusted
//! proxy.

use std::net::IpAddr;

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

/// Whether `peer` is one of `trusted_proxies`.
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
