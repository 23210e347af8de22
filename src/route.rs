//! Routes: which rules a request is served under, chosen by its host and path,
//! and the two access rules a route can hold — the login gate and cross-site
//! protection (`DESIGN.md` §11).
//!
//! The configuration builds [`Route`]s; [`Routes`] finds the first that matches a
//! request with one hash lookup of the host and a scan of the few routes left for
//! it. The checks are pure functions of the request's lines and session data, so
//! the request path asks and answers; nothing here does I/O.

use std::collections::HashMap;

use bytes::Bytes;
use http::{HeaderValue, Method};

use crate::headers::{self, Line};
use crate::session::encoded;

/// Which hosts a route serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostMatch {
    Any,
    /// One host, lowercase, without a port.
    Exact(String),
    /// `*.example.com`: any host ending in `.example.com` (stored with the dot),
    /// not `example.com` itself.
    Suffix(String),
}

/// `require`: the session key the gate looks for, and the values it accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Require {
    pub key: String,
    /// `None`: any value will do.
    pub values: Option<Vec<String>>,
}

/// `cross_site`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrossSite {
    Block,
    Allow,
}

/// One entry of `routes`, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub host: HostMatch,
    /// A path prefix; `/` matches every path.
    pub path: String,
    /// The upstream group's name.
    pub upstream: String,
    /// `session: on`.
    pub session: bool,
    pub require: Option<Require>,
    /// A relative path beginning with exactly one `/`.
    pub login_url: Option<String>,
    pub cross_site: CrossSite,
    /// Origins (`scheme://host[:port]`, lowercase) that may always send unsafe requests.
    pub trusted_origins: Vec<String>,
}

impl Route {
    fn matches_path(&self, path: &[u8]) -> bool {
        path.starts_with(self.path.as_bytes())
    }
}

/// The routes in order, indexed by host.
#[derive(Debug)]
pub struct Routes {
    routes: Vec<Route>,
    /// For each host named exactly by some route: the indexes of the routes that
    /// can match it (its exact ones, the suffixes it ends with, the host-less
    /// ones), in configuration order.
    by_host: HashMap<String, Vec<usize>>,
    /// For any other host: the suffix and host-less routes, in order.
    others: Vec<usize>,
    /// The JSON body of each route's `401`.
    unauthorized: Vec<Bytes>,
    /// Each route's `require`, its key and values in the encoded form of
    /// session data, so that the gate reads the data as it is stored.
    required: Vec<Option<Encoded>>,
}

/// A `require` in the encoded form of session data.
#[derive(Debug)]
struct Encoded {
    key: Vec<u8>,
    values: Option<Vec<Vec<u8>>>,
}

impl Routes {
    pub fn new(routes: Vec<Route>) -> Routes {
        let mut by_host: HashMap<String, Vec<usize>> = HashMap::new();
        for route in &routes {
            if let HostMatch::Exact(h) = &route.host {
                by_host.entry(h.clone()).or_default();
            }
        }
        for (host, list) in by_host.iter_mut() {
            *list = (0..routes.len())
                .filter(|&i| host_matches(&routes[i].host, host.as_bytes()))
                .collect();
        }
        let others = (0..routes.len())
            .filter(|&i| !matches!(routes[i].host, HostMatch::Exact(_)))
            .collect();
        let unauthorized = routes.iter().map(unauthorized_body).collect();
        let required = routes
            .iter()
            .map(|r| {
                r.require.as_ref().map(|q| Encoded {
                    key: encoded(&q.key),
                    values: q
                        .values
                        .as_ref()
                        .map(|v| v.iter().map(|v| encoded(v)).collect()),
                })
            })
            .collect();
        Routes {
            routes,
            by_host,
            others,
            unauthorized,
            required,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The first route matching `host` (from `Host` or the authority; a port is
    /// ignored) and `path`, by its index.
    pub fn find(&self, host: Option<&[u8]>, path: &[u8]) -> Option<usize> {
        let host = host.map(headers::host_without_port).unwrap_or_default();
        let candidates = if host.iter().any(u8::is_ascii_uppercase) {
            let lower = host.to_ascii_lowercase();
            self.candidates(&lower).iter().copied().find(|&i| {
                host_matches(&self.routes[i].host, &lower) && self.routes[i].matches_path(path)
            })
        } else {
            self.candidates(host).iter().copied().find(|&i| {
                host_matches(&self.routes[i].host, host) && self.routes[i].matches_path(path)
            })
        };
        candidates
    }

    fn candidates(&self, host: &[u8]) -> &[usize] {
        std::str::from_utf8(host)
            .ok()
            .and_then(|h| self.by_host.get(h))
            .unwrap_or(&self.others)
    }

    pub fn get(&self, index: usize) -> &Route {
        &self.routes[index]
    }

    /// The `401` body for the route at `index`.
    pub fn unauthorized(&self, index: usize) -> Bytes {
        self.unauthorized[index].clone()
    }

    /// The login gate of the route at `index`, on the session's data in its
    /// encoded form (`X-Session-Data`): whether it holds the key `require`
    /// names, with an accepted value.
    pub fn gate(
        &self,
        index: usize,
        method: &Method,
        path: &[u8],
        target: &[u8],
        lines: &[Line<'_>],
        data: Option<&HeaderValue>,
    ) -> Gate {
        let route = &self.routes[index];
        let Some(require) = &self.required[index] else {
            return Gate::Pass;
        };
        if let Some(login) = &route.login_url {
            let login_path = login.split('?').next().unwrap_or(login);
            if path == login_path.as_bytes() {
                return Gate::Pass;
            }
        }
        // A key set to nothing counts as absent: apps log out by emptying it.
        let held = data
            .and_then(|d| crate::session::encoded_value(d.as_bytes(), &require.key))
            .filter(|v| !v.is_empty());
        if let Some(value) = held {
            return match &require.values {
                Some(values) if !values.iter().any(|v| v == value) => Gate::Forbidden,
                _ => Gate::Pass,
            };
        }
        match &route.login_url {
            Some(login) if navigation(method, lines) => Gate::Login(login_location(login, target)),
            _ => Gate::Unauthorized,
        }
    }
}

/// `{"error":"login required","login_url":"/login"}` (without `login_url` when the
/// route has none).
fn unauthorized_body(route: &Route) -> Bytes {
    let mut body = String::from(r#"{"error":"login required""#);
    if let Some(url) = &route.login_url {
        body.push_str(r#","login_url":"#);
        crate::session::json_string(url, &mut body);
    }
    body.push_str("}\n");
    Bytes::from(body)
}

fn host_matches(rule: &HostMatch, host: &[u8]) -> bool {
    match rule {
        HostMatch::Any => true,
        HostMatch::Exact(h) => h.as_bytes() == host,
        HostMatch::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_bytes()),
    }
}

fn line<'a>(lines: &'a [Line<'a>], name: &str) -> Option<&'a [u8]> {
    lines
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| *v)
}

/// Methods that change nothing, which cross-site protection lets through.
fn safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Cross-site protection: whether a request must be refused with `403`.
///
/// Unsafe methods only. `Sec-Fetch-Site` decides when present (`same-origin` and
/// `none` pass); without it, an `Origin` other than the request's own is refused.
/// An origin in `trusted_origins` always passes, and a request with neither
/// header (a client that is not a browser) passes.
pub fn cross_site_refused(
    route: &Route,
    method: &Method,
    lines: &[Line<'_>],
    https: bool,
    host: Option<&[u8]>,
) -> bool {
    if route.cross_site == CrossSite::Allow || safe(method) {
        return false;
    }
    let origin = line(lines, "origin");
    if let Some(origin) = origin {
        if route
            .trusted_origins
            .iter()
            .any(|t| t.as_bytes().eq_ignore_ascii_case(origin))
        {
            return false;
        }
    }
    if let Some(site) = line(lines, "sec-fetch-site") {
        return !(site.eq_ignore_ascii_case(b"same-origin") || site.eq_ignore_ascii_case(b"none"));
    }
    match (origin, host) {
        (None, _) => false,
        (Some(origin), Some(host)) => !same_origin(origin, https, host),
        (Some(_), None) => true,
    }
}

/// Whether `origin` is `scheme://host` of this request (the port as the client
/// wrote it in `Host`; a default port may be left out on either side).
fn same_origin(origin: &[u8], https: bool, host: &[u8]) -> bool {
    let (scheme, default_port): (&[u8], &[u8]) = if https {
        (b"https://", b":443")
    } else {
        (b"http://", b":80")
    };
    let Some(rest) = strip_prefix_ignore_case(origin, scheme) else {
        return false;
    };
    if rest.eq_ignore_ascii_case(host) {
        return true;
    }
    // `Origin: http://a.test:80` against `Host: a.test`, and the other way round.
    let without = |s: &[u8]| -> Option<Vec<u8>> {
        s.len()
            .checked_sub(default_port.len())
            .filter(|&i| s[i..] == *default_port)
            .map(|i| s[..i].to_vec())
    };
    match (without(rest), without(host)) {
        (Some(r), None) => r.eq_ignore_ascii_case(host),
        (None, Some(h)) => rest.eq_ignore_ascii_case(&h),
        _ => false,
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &s[prefix.len()..])
}

/// What the login gate decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    Pass,
    /// `303` to this `Location`.
    Login(HeaderValue),
    /// `401` with the route's JSON body.
    Unauthorized,
    /// `403`: the session's value is not one the route accepts.
    Forbidden,
}

/// A browser loading a page: `GET` or `HEAD` with `Sec-Fetch-Mode: navigate`, or
/// without `Sec-Fetch-Mode` and with `text/html` in `Accept`.
fn navigation(method: &Method, lines: &[Line<'_>]) -> bool {
    if !matches!(*method, Method::GET | Method::HEAD) {
        return false;
    }
    match line(lines, "sec-fetch-mode") {
        Some(mode) => mode.eq_ignore_ascii_case(b"navigate"),
        None => line(lines, "accept").is_some_and(|accept| {
            accept.split(|&b| b == b',').any(|media| {
                trim(media.split(|&b| b == b';').next().unwrap_or_default())
                    .eq_ignore_ascii_case(b"text/html")
            })
        }),
    }
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end]
}

/// `login_url?next=<target, percent-encoded>`. The target always becomes a path
/// beginning with exactly one `/`: an absolute or scheme-relative target is
/// never echoed, so `next` can never send the browser to another site.
fn login_location(login: &str, target: &[u8]) -> HeaderValue {
    let mut path: &[u8] = target;
    while path.len() > 1 && path[0] == b'/' && (path[1] == b'/' || path[1] == b'\\') {
        path = &path[1..];
    }
    if path.first() != Some(&b'/') {
        path = b"/";
    }
    let mut location = String::with_capacity(login.len() + 6 + path.len() * 3);
    location.push_str(login);
    location.push(if login.contains('?') { '&' } else { '?' });
    location.push_str("next=");
    for &b in path {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            location.push(b as char);
        } else {
            location.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&location).expect("percent-encoded ASCII is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: HostMatch, path: &str) -> Route {
        Route {
            host,
            path: path.to_owned(),
            upstream: "default".to_owned(),
            session: true,
            require: None,
            login_url: None,
            cross_site: CrossSite::Allow,
            trusted_origins: Vec::new(),
        }
    }

    #[test]
    fn the_first_matching_route_wins_by_host_then_path() {
        let routes = Routes::new(vec![
            route(HostMatch::Exact("admin.example.com".into()), "/"),
            route(HostMatch::Suffix(".example.com".into()), "/static/"),
            route(HostMatch::Any, "/api/"),
            route(HostMatch::Exact("www.example.com".into()), "/"),
        ]);
        let find = |h: &str, p: &str| routes.find(Some(h.as_bytes()), p.as_bytes());
        assert_eq!(find("admin.example.com", "/static/x"), Some(0));
        assert_eq!(find("ADMIN.example.com:8443", "/"), Some(0));
        assert_eq!(find("www.example.com", "/static/a.css"), Some(1));
        assert_eq!(find("www.example.com", "/api/x"), Some(2));
        assert_eq!(find("www.example.com", "/page"), Some(3));
        assert_eq!(find("cdn.example.com", "/static/"), Some(1));
        assert_eq!(
            find("example.com", "/static/"),
            None,
            "a suffix is not its own domain"
        );
        assert_eq!(find("other.test", "/api/v1"), Some(2));
        assert_eq!(find("other.test", "/"), None);
        assert_eq!(routes.find(None, b"/api/"), Some(2));
    }

    #[test]
    fn next_is_always_one_relative_path() {
        let loc = |t: &str| login_location("/login", t.as_bytes());
        assert_eq!(
            loc("/admin/x?a=1&b=2"),
            "/login?next=/admin/x%3Fa%3D1%26b%3D2"
        );
        assert_eq!(loc("//evil.test/x"), "/login?next=/evil.test/x");
        assert_eq!(loc("/\\evil.test"), "/login?next=/");
        assert_eq!(loc("http://evil.test/"), "/login?next=/");
        assert_eq!(loc("*"), "/login?next=/");
        assert_eq!(login_location("/login?x=1", b"/a"), "/login?x=1&next=/a");
    }

    fn lines<'a>(pairs: &'a [(&'a str, &'a str)]) -> Vec<Line<'a>> {
        pairs
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect()
    }

    #[test]
    fn cross_site_rules() {
        let mut r = route(HostMatch::Any, "/");
        r.cross_site = CrossSite::Block;
        r.trusted_origins = vec!["https://partner.test".into()];
        let post = Method::POST;
        let host = Some(&b"app.test"[..]);
        let refused =
            |l: &[(&str, &str)], https: bool| cross_site_refused(&r, &post, &lines(l), https, host);
        assert!(refused(&[("Sec-Fetch-Site", "cross-site")], false));
        assert!(refused(&[("Sec-Fetch-Site", "same-site")], false));
        assert!(!refused(&[("Sec-Fetch-Site", "same-origin")], false));
        assert!(!refused(&[("Sec-Fetch-Site", "none")], false));
        assert!(!refused(&[], false), "no browser headers: not a browser");
        assert!(refused(&[("Origin", "http://evil.test")], false));
        assert!(!refused(&[("Origin", "http://app.test")], false));
        assert!(!refused(&[("Origin", "http://app.test:80")], false));
        assert!(
            refused(&[("Origin", "http://app.test")], true),
            "scheme differs"
        );
        assert!(refused(&[("Origin", "null")], false));
        assert!(!refused(
            &[
                ("Origin", "https://partner.test"),
                ("Sec-Fetch-Site", "cross-site")
            ],
            false
        ));
        assert!(!cross_site_refused(
            &r,
            &Method::GET,
            &lines(&[("Sec-Fetch-Site", "cross-site")]),
            false,
            host
        ));
    }

    #[test]
    fn the_gate_sends_navigations_to_login_and_answers_others_401() {
        let mut r = route(HostMatch::Any, "/admin/");
        r.require = Some(Require {
            key: "role".into(),
            values: Some(vec!["admin".into()]),
        });
        r.login_url = Some("/login".into());
        let get = Method::GET;
        let nav = lines(&[("Sec-Fetch-Mode", "navigate")]);
        let fetch = lines(&[("Sec-Fetch-Mode", "cors"), ("Accept", "text/html")]);
        let html = lines(&[("Accept", "text/html,application/xhtml+xml;q=0.9")]);
        let json = lines(&[("Accept", "application/json")]);
        let routes = Routes::new(vec![r.clone()]);
        let g = |m: &Method, l: &[Line<'_>], data: Option<&str>| {
            let data = data.map(|d| HeaderValue::from_str(d).unwrap());
            routes.gate(0, m, b"/admin/x", b"/admin/x?y=1", l, data.as_ref())
        };
        let to_login = Gate::Login(HeaderValue::from_static("/login?next=/admin/x%3Fy%3D1"));
        assert_eq!(g(&get, &nav, None), to_login);
        assert_eq!(g(&Method::HEAD, &html, None), to_login);
        assert_eq!(g(&get, &fetch, None), Gate::Unauthorized);
        assert_eq!(g(&get, &json, None), Gate::Unauthorized);
        assert_eq!(g(&Method::POST, &nav, None), Gate::Unauthorized);
        assert_eq!(g(&get, &nav, Some("user=bob")), to_login);
        assert_eq!(g(&get, &nav, Some("role=user&user=bob")), Gate::Forbidden);
        assert_eq!(g(&get, &nav, Some("role=admin&user=bob")), Gate::Pass);
        assert_eq!(
            g(&get, &nav, Some("role=&user=bob")),
            to_login,
            "an empty value is no value"
        );
        assert_eq!(
            g(&get, &nav, Some("roles=admin")),
            to_login,
            "a longer key is another key"
        );
        assert_eq!(
            routes.gate(0, &get, b"/login", b"/login?next=/", &nav, None),
            Gate::Pass,
            "the login page is never gated"
        );
        assert_eq!(
            &routes.unauthorized(0)[..],
            b"{\"error\":\"login required\",\"login_url\":\"/login\"}\n"
        );
    }
}
