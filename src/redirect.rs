//! `upstream.rewrite_redirects`: a URL in `Location`, `Content-Location` or `Refresh`
//! that names the upstream's own origin is rewritten to the origin the client used
//! (nginx's `proxy_redirect default`). The upstream's own origin is its authority
//! (as sent in `Host`, or the same host and port) under its own scheme or under the
//! scheme the proxy told it the client used (`X-Forwarded-Proto`): an application
//! behind the HTTPS listener that honours that header writes
//! `https://<its own address>/...`. Without it, an application that builds
//! absolute URLs from the `Host` it received (the upstream's address, with
//! `preserve_host: false`) would send the browser around the proxy.
//!
//! Pure functions over bytes; the request path decides when to call them.

use http::Uri;

/// The upstream's origin as its own absolute URLs spell it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UpstreamOrigin {
    https: bool,
    /// The authority as the proxy sends it in `Host`, lower case.
    authority: String,
    /// Lower case; an IPv6 address without its brackets.
    host: String,
    port: u16,
    /// The path prefix from `upstream.url`, without a trailing `/` (may be empty).
    base_path: String,
}

/// The origin the client used: `https` or not, and its `Host`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClientOrigin<'a> {
    pub(crate) https: bool,
    pub(crate) host: &'a [u8],
}

impl UpstreamOrigin {
    /// From `upstream.url` (scheme and authority) and its path prefix.
    pub(crate) fn new(uri: &Uri, base_path: &str) -> Option<UpstreamOrigin> {
        let https = uri.scheme_str()? == "https";
        let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
        Some(UpstreamOrigin {
            https,
            authority: uri.authority()?.as_str().to_ascii_lowercase(),
            host: host.to_ascii_lowercase(),
            port: uri.port_u16().unwrap_or(default_port(https)),
            base_path: base_path.trim_end_matches('/').to_owned(),
        })
    }

    /// `url` rewritten to the client's origin, when it is absolute (or
    /// scheme-relative) and names this origin; `None` leaves it as it is. The
    /// path prefix of `upstream.url` is taken off the path, since the proxy puts it
    /// back on every request.
    pub(crate) fn rewrite(&self, url: &[u8], client: ClientOrigin<'_>) -> Option<Vec<u8>> {
        let (scheme, rest) = if let Some(rest) = strip_prefix_ci(url, b"http://") {
            (Some(false), rest)
        } else if let Some(rest) = strip_prefix_ci(url, b"https://") {
            (Some(true), rest)
        } else if let Some(rest) = url.strip_prefix(b"//") {
            (None, rest)
        } else {
            return None;
        };
        // Its own scheme, or the one it was told the client used.
        if scheme.is_some_and(|https| https != self.https && https != client.https) {
            return None;
        }
        let end = rest
            .iter()
            .position(|&b| matches!(b, b'/' | b'?' | b'#'))
            .unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if !self.is_authority(authority, scheme.unwrap_or(self.https)) {
            return None;
        }
        let path = self.strip_base_path(path);
        let mut out = Vec::with_capacity(url.len() + client.host.len());
        if scheme.is_some() {
            out.extend_from_slice(if client.https { b"https:" } else { b"http:" });
        }
        out.extend_from_slice(b"//");
        out.extend_from_slice(client.host);
        if !path.starts_with(b"/") {
            out.push(b'/');
        }
        out.extend_from_slice(path);
        Some(out)
    }

    /// A `Refresh` value (`5; url=http://...`) with its URL rewritten, when the URL
    /// names this origin.
    pub(crate) fn rewrite_refresh(
        &self,
        value: &[u8],
        client: ClientOrigin<'_>,
    ) -> Option<Vec<u8>> {
        let semi = value.iter().position(|&b| b == b';' || b == b',')?;
        let mut at = semi + 1;
        let skip_space = |at: &mut usize| {
            while value.get(*at).is_some_and(|b| *b == b' ' || *b == b'\t') {
                *at += 1;
            }
        };
        skip_space(&mut at);
        if !value.get(at..at + 3)?.eq_ignore_ascii_case(b"url") {
            return None;
        }
        at += 3;
        skip_space(&mut at);
        if value.get(at) != Some(&b'=') {
            return None;
        }
        at += 1;
        skip_space(&mut at);
        let quote = value.get(at).copied().filter(|&b| b == b'"' || b == b'\'');
        if quote.is_some() {
            at += 1;
        }
        let end = match quote {
            Some(q) => at + value[at..].iter().position(|&b| b == q)?,
            None => value.len(),
        };
        let url = value[at..end].trim_ascii_end();
        let rewritten = self.rewrite(url, client)?;
        let mut out = Vec::with_capacity(value.len() + rewritten.len());
        out.extend_from_slice(&value[..at]);
        out.extend_from_slice(&rewritten);
        out.extend_from_slice(&value[at + url.len()..]);
        Some(out)
    }

    /// `host[:port]` names this origin: as sent in `Host`, or the same host and port
    /// (the URL's scheme's default port when it names none).
    fn is_authority(&self, authority: &[u8], https: bool) -> bool {
        if authority.contains(&b'@') {
            return false;
        }
        if authority.eq_ignore_ascii_case(self.authority.as_bytes()) {
            return true;
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix(b"[") {
            let Some(close) = v6.iter().position(|&b| b == b']') else {
                return false;
            };
            (&v6[..close], &v6[close + 1..])
        } else {
            match authority.iter().rposition(|&b| b == b':') {
                Some(colon) => (&authority[..colon], &authority[colon..]),
                None => (authority, &b""[..]),
            }
        };
        let port = match port {
            b"" => default_port(https),
            [b':', digits @ ..] => match std::str::from_utf8(digits)
                .ok()
                .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|d| d.parse().ok())
            {
                Some(port) => port,
                None => return false,
            },
            _ => return false,
        };
        port == self.port && host.eq_ignore_ascii_case(self.host.as_bytes())
    }

    fn strip_base_path<'p>(&self, path: &'p [u8]) -> &'p [u8] {
        let prefix = self.base_path.as_bytes();
        match path.strip_prefix(prefix) {
            Some(rest)
                if !prefix.is_empty()
                    && (rest.is_empty() || matches!(rest[0], b'/' | b'?' | b'#')) =>
            {
                rest
            }
            _ => path,
        }
    }
}

fn default_port(https: bool) -> u16 {
    if https {
        443
    } else {
        80
    }
}

fn strip_prefix_ci<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(url: &str, base: &str) -> UpstreamOrigin {
        UpstreamOrigin::new(&url.parse().unwrap(), base).unwrap()
    }

    const PLAIN: ClientOrigin<'static> = ClientOrigin {
        https: false,
        host: b"proxy.example:8080",
    };
    const TLS: ClientOrigin<'static> = ClientOrigin {
        https: true,
        host: b"www.example",
    };

    fn rewrite(o: &UpstreamOrigin, url: &str, client: ClientOrigin<'_>) -> Option<String> {
        o.rewrite(url.as_bytes(), client)
            .map(|v| String::from_utf8(v).unwrap())
    }

    #[test]
    fn the_upstreams_own_urls_move_to_the_clients_origin() {
        let o = origin("http://127.0.0.1:18000", "");
        let cases = [
            (
                "http://127.0.0.1:18000/doku.php?id=start",
                "http://proxy.example:8080/doku.php?id=start",
            ),
            ("HTTP://127.0.0.1:18000/a", "http://proxy.example:8080/a"),
            ("http://127.0.0.1:18000", "http://proxy.example:8080/"),
            (
                "http://127.0.0.1:18000?q=1",
                "http://proxy.example:8080/?q=1",
            ),
            (
                "http://127.0.0.1:18000#top",
                "http://proxy.example:8080/#top",
            ),
            ("//127.0.0.1:18000/x", "//proxy.example:8080/x"),
        ];
        for (from, to) in cases {
            assert_eq!(rewrite(&o, from, PLAIN).as_deref(), Some(to), "{from}");
        }
        assert_eq!(
            rewrite(&o, "http://127.0.0.1:18000/a", TLS).as_deref(),
            Some("https://www.example/a")
        );
    }

    #[test]
    fn other_urls_stay() {
        let o = origin("http://app.internal:3000", "");
        for url in [
            "/relative",
            "relative",
            "http://app.internal:3001/",
            "http://app.internal/",
            "https://app.internal:3000/",
            "http://app.internal.evil:3000/",
            "http://user@app.internal:3000/",
            "http://app.internal:3000@evil/",
            "http://app.internal:/",
            "http://evil/http://app.internal:3000/",
            "ftp://app.internal:3000/",
            "",
        ] {
            assert_eq!(rewrite(&o, url, PLAIN), None, "{url}");
        }
        assert_eq!(
            rewrite(&o, "http://APP.internal:3000/x", PLAIN).as_deref(),
            Some("http://proxy.example:8080/x")
        );
    }

    #[test]
    fn default_ports_and_ipv6() {
        let o = origin("http://app", "");
        assert!(rewrite(&o, "http://app:80/x", PLAIN).is_some());
        assert!(rewrite(&o, "http://app/x", PLAIN).is_some());
        let o = origin("https://app:443", "");
        assert!(rewrite(&o, "https://app/x", PLAIN).is_some());
        assert!(rewrite(&o, "http://app/x", PLAIN).is_none());
        let o = origin("http://[::1]:3000", "");
        assert_eq!(
            rewrite(&o, "http://[::1]:3000/x", PLAIN).as_deref(),
            Some("http://proxy.example:8080/x")
        );
        assert!(rewrite(&o, "http://[::2]:3000/x", PLAIN).is_none());
    }

    #[test]
    fn behind_tls_the_scheme_the_upstream_was_told_counts_as_its_own() {
        // The app honours X-Forwarded-Proto: https and writes its own address
        // under https.
        let o = origin("http://127.0.0.1:18000", "");
        assert_eq!(
            rewrite(&o, "https://127.0.0.1:18000/get", TLS).as_deref(),
            Some("https://www.example/get")
        );
        assert_eq!(rewrite(&o, "https://127.0.0.1:18000/get", PLAIN), None);
        // No port in the app's URL: the Host it was sent had none either.
        let o = origin("http://app", "");
        assert_eq!(
            rewrite(&o, "https://app/x", TLS).as_deref(),
            Some("https://www.example/x")
        );
        assert_eq!(rewrite(&o, "https://app:8443/x", TLS), None);
    }

    #[test]
    fn the_path_prefix_comes_off() {
        let o = origin("http://app:3000", "/legacy");
        let cases = [
            (
                "http://app:3000/legacy/page",
                "http://proxy.example:8080/page",
            ),
            ("http://app:3000/legacy", "http://proxy.example:8080/"),
            ("http://app:3000/legacy?x", "http://proxy.example:8080/?x"),
            // Not under the prefix: only the origin changes.
            (
                "http://app:3000/legacyx",
                "http://proxy.example:8080/legacyx",
            ),
            ("http://app:3000/other", "http://proxy.example:8080/other"),
        ];
        for (from, to) in cases {
            assert_eq!(rewrite(&o, from, PLAIN).as_deref(), Some(to), "{from}");
        }
    }

    #[test]
    fn refresh_urls() {
        let o = origin("http://app:3000", "");
        let r = |v: &str| {
            o.rewrite_refresh(v.as_bytes(), PLAIN)
                .map(|v| String::from_utf8(v).unwrap())
        };
        assert_eq!(
            r("5; url=http://app:3000/next").as_deref(),
            Some("5; url=http://proxy.example:8080/next")
        );
        assert_eq!(
            r("0;URL='http://app:3000/a?b=1'").as_deref(),
            Some("0;URL='http://proxy.example:8080/a?b=1'")
        );
        assert_eq!(
            r("0; url = \"http://app:3000/\" ").as_deref(),
            Some("0; url = \"http://proxy.example:8080/\" ")
        );
        assert_eq!(r("5"), None);
        assert_eq!(r("5; url=/relative"), None);
        assert_eq!(r("5; url=http://other/"), None);
        assert_eq!(r("5; url='http://app:3000/unclosed"), None);
    }
}
