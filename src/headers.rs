//! The header rules of steps 1, 3, 4 and 5, applied to header lines as byte pairs
//! (`name`, `value`), so that the HTTP/1 path applies them to the bytes it read
//! and the HTTP/2 path to a `HeaderMap`, with one set of rules.
//!
//! A rule never edits lines in place: it marks which lines go on unchanged
//! (`keep`) and lists the lines the proxy adds ([`Extras`]). Names compare
//! case-insensitively, as HTTP/1 writes them in any case.

use http::header::{self, HeaderName, HeaderValue};
use smallvec::SmallVec;

use crate::conn::ConnInfo;
use crate::cookie::{cookie_pairs, CookieJar, Refused, SigningKeys, Verified};
use crate::error::ProxyError;
use crate::metrics::{CookieRejection, Metrics};
use crate::redirect::{ClientOrigin, UpstreamOrigin};
use crate::session::{is_true, Changes, ChangesError, SessionId};

/// Session headers, named from the configured prefix once at load time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderNames {
    /// The prefix in lower case with `_` written `-`, the form header names
    /// are compared in.
    pub(crate) prefix: String,
    pub(crate) id: HeaderName,
    pub(crate) new: HeaderName,
    pub(crate) data: HeaderName,
    pub(crate) set: HeaderName,
    pub(crate) remove: HeaderName,
    pub(crate) destroy: HeaderName,
    pub(crate) regenerate: HeaderName,
    pub(crate) destroy_others: HeaderName,
    pub(crate) persist: HeaderName,
}

impl HeaderNames {
    /// The names under `prefix` (e.g. `X-Session-`); `None` when it cannot begin
    /// a header name.
    pub fn new(prefix: &str) -> Option<HeaderNames> {
        if prefix.is_empty() {
            return None;
        }
        let lower = prefix.to_ascii_lowercase();
        let make =
            |suffix: &str| HeaderName::from_bytes(format!("{lower}{suffix}").as_bytes()).ok();
        Some(HeaderNames {
            // Compared with `_` read as `-` (DESIGN.md §9), so kept in that form.
            prefix: lower.replace('_', "-"),
            id: make("id")?,
            new: make("new")?,
            data: make("data")?,
            set: make("set")?,
            remove: make("remove")?,
            destroy: make("destroy")?,
            regenerate: make("regenerate")?,
            destroy_others: make("destroy-others")?,
            persist: make("persist")?,
        })
    }
}

/// What the request rules need from the configuration, borrowed for one request.
/// A few plain values, so the rules run (and are fuzzed) without a configuration.
#[derive(Clone, Copy)]
pub struct Rules<'a> {
    /// The session headers, and the prefix no client header may carry.
    pub names: &'a HeaderNames,
    /// Verify the session cookie.
    pub keys: &'a SigningKeys,
    /// The proxy's own cookie, under its plain and its secure name.
    pub jar: &'a CookieJar,
    /// `session.exclude_paths`: path prefixes proxied with no session work.
    pub exclude_paths: &'a [String],
    /// `limits.max_body_bytes`: a larger `Content-Length` is refused at once.
    pub max_body_bytes: Option<u64>,
    /// `upstream.preserve_host`: the client's `Host` goes upstream.
    pub preserve_host: bool,
    /// The `Host` sent upstream otherwise.
    pub upstream_host: Option<&'a HeaderValue>,
}

/// One header line: name and value as they arrived.
pub(crate) type Line<'a> = (&'a [u8], &'a [u8]);

/// Which lines go on unchanged, by position.
pub(crate) type Keep = SmallVec<[bool; 16]>;

/// The value of a line the proxy adds: borrowed, its own bytes, or a header
/// value it already holds (never copied).
#[derive(Debug)]
pub enum Value<'a> {
    Borrowed(&'a [u8]),
    Owned(Vec<u8>),
    Header(HeaderValue),
}

impl Value<'_> {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Value::Borrowed(b) => b,
            Value::Owned(v) => v,
            Value::Header(h) => h.as_bytes(),
        }
    }
}

impl<'a> From<&'a [u8]> for Value<'a> {
    fn from(b: &'a [u8]) -> Self {
        Value::Borrowed(b)
    }
}

impl From<Vec<u8>> for Value<'_> {
    fn from(v: Vec<u8>) -> Self {
        Value::Owned(v)
    }
}

impl From<HeaderValue> for Value<'_> {
    fn from(h: HeaderValue) -> Self {
        Value::Header(h)
    }
}

/// Lines the proxy adds, after the kept ones.
#[derive(Debug, Default)]
pub struct Extras<'a>(pub SmallVec<[(&'a HeaderName, Value<'a>); 10]>);

impl<'a> Extras<'a> {
    pub(crate) fn add(&mut self, name: &'a HeaderName, value: impl Into<Value<'a>>) {
        self.0.push((name, value.into()));
    }
}

/// A header name byte as the rules compare it: lower case, `_` read as `-`
/// (CGI, PHP, WSGI and Rack map both to the same `HTTP_*` variable).
#[inline]
fn fold(b: u8) -> u8 {
    match b {
        b'_' => b'-',
        b => b.to_ascii_lowercase(),
    }
}

/// A `tchar` (RFC 9110 §5.6.2): the bytes a header name is made of.
pub(crate) fn is_tchar(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'!' | b'#' | b'$' | b'%' | b'&'
        | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~')
}

/// Whether `a` and `b` name the same header: case-insensitive, `_` read as `-`.
pub(crate) fn same_name(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| fold(x) == fold(y))
}

/// [`same_name`] against a name already written in lower case with `-`: one
/// pass, the plain spelling first.
#[inline]
fn is_lower(name: &[u8], lower: &[u8]) -> bool {
    name.len() == lower.len()
        && name.iter().zip(lower).all(|(&a, &b)| {
            a == b || (b.is_ascii_lowercase() && a | 0x20 == b) || (a == b'_' && b == b'-')
        })
}

fn is(name: &[u8], lower: &str) -> bool {
    is_lower(name, lower.as_bytes())
}

/// Whether `name` starts with `prefix` (lower case), compared as [`same_name`]
/// does.
pub(crate) fn has_prefix(name: &[u8], prefix: &str) -> bool {
    if name.len() < prefix.len() {
        return false;
    }
    is_lower(&name[..prefix.len()], prefix.as_bytes())
}

/// The header names the rules act on, recognised once per line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Name {
    ContentLength,
    TransferEncoding,
    Connection,
    Upgrade,
    /// `Keep-Alive`, `Proxy-Connection`, `Proxy-Authenticate`,
    /// `Proxy-Authorization`, `TE`, `Trailer`, `HTTP2-Settings`.
    OtherHopByHop,
    Cookie,
    SetCookie,
    Host,
    ForwardedFor,
    ForwardedProto,
    ForwardedHost,
    /// `Forwarded` (RFC 7239) and `X-Real-IP`: a client's claims about itself,
    /// kept only from a trusted proxy.
    ForwardedOther,
    RequestId,
    Expect,
    CacheControl,
    Vary,
    StrictTransportSecurity,
    /// `Location`, `Content-Location` and `Refresh`: URLs `upstream.rewrite_redirects`
    /// may move to the client's origin.
    Location,
    ContentLocation,
    Refresh,
    Other,
}

impl Name {
    /// Headers that describe one connection, or the framing of one message,
    /// never forwarded as they came (RFC 9110 §7.6.1): the proxy writes the
    /// framing of every message it sends itself (DESIGN.md §9).
    fn hop_by_hop(self) -> bool {
        matches!(
            self,
            Name::Connection
                | Name::TransferEncoding
                | Name::ContentLength
                | Name::Upgrade
                | Name::OtherHopByHop
        )
    }
}

/// Which [`Name`] a header name is, by its length first; `_` reads as `-`, so
/// `X_Forwarded_For` is `X-Forwarded-For` (see [`same_name`]). The HTTP/1 codec
/// refuses framing names spelled with `_` before this is asked.
pub(crate) fn classify(name: &[u8]) -> Name {
    let is = |s: &str| is(name, s);
    match name.len() {
        2 if is("te") => Name::OtherHopByHop,
        4 if is("host") => Name::Host,
        4 if is("vary") => Name::Vary,
        6 if is("cookie") => Name::Cookie,
        6 if is("expect") => Name::Expect,
        7 if is("upgrade") => Name::Upgrade,
        7 if is("trailer") => Name::OtherHopByHop,
        7 if is("refresh") => Name::Refresh,
        8 if is("location") => Name::Location,
        10 if is("connection") => Name::Connection,
        10 if is("keep-alive") => Name::OtherHopByHop,
        10 if is("set-cookie") => Name::SetCookie,
        9 if is("forwarded") => Name::ForwardedOther,
        9 if is("x-real-ip") => Name::ForwardedOther,
        12 if is("x-request-id") => Name::RequestId,
        13 if is("cache-control") => Name::CacheControl,
        14 if is("content-length") => Name::ContentLength,
        14 if is("http2-settings") => Name::OtherHopByHop,
        15 if is("x-forwarded-for") => Name::ForwardedFor,
        16 if is("proxy-connection") => Name::OtherHopByHop,
        16 if is("x-forwarded-host") => Name::ForwardedHost,
        16 if is("content-location") => Name::ContentLocation,
        17 if is("transfer-encoding") => Name::TransferEncoding,
        17 if is("x-forwarded-proto") => Name::ForwardedProto,
        18 if is("proxy-authenticate") => Name::OtherHopByHop,
        19 if is("proxy-authorization") => Name::OtherHopByHop,
        25 if is("strict-transport-security") => Name::StrictTransportSecurity,
        _ => Name::Other,
    }
}

/// A `Content-Length` value: `1*DIGIT`, nothing else (no sign, no spaces
/// inside, no list); `None` for anything else.
pub(crate) fn content_length(value: &[u8]) -> Option<u64> {
    let v = value.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Each line's [`Name`], in order.
pub(crate) type Names = SmallVec<[Name; 16]>;

pub(crate) fn classify_all(lines: &[Line<'_>]) -> Names {
    lines.iter().map(|(name, _)| classify(name)).collect()
}

fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Marks for removal the hop-by-hop headers, the headers named in `Connection`,
/// and every header whose name starts with `prefix` (lower case). With `upgrade`,
/// `Upgrade` stays (the caller adds `Connection: upgrade`).
pub(crate) fn hop_filter(lines: &[Line<'_>], names: &[Name], prefix: &str, upgrade: bool) -> Keep {
    let mut named: SmallVec<[&[u8]; 8]> = SmallVec::new();
    for ((_, value), &kind) in lines.iter().zip(names) {
        if kind == Name::Connection {
            named.extend(tokens(value).filter(|t| !(upgrade && is(t, "upgrade"))));
        }
    }
    lines
        .iter()
        .zip(names)
        .map(|((name, _), &kind)| {
            if upgrade && kind == Name::Upgrade {
                return true;
            }
            let drop = kind.hop_by_hop()
                || has_prefix(name, prefix)
                || named.iter().any(|t| same_name(name, t));
            !drop
        })
        .collect()
}

/// Is this an `Upgrade` request (`Connection: upgrade` plus an `Upgrade` header)?
/// An upgrade to `h2c` is not: the proxy never switches a connection to HTTP/2
/// on the upstream's say-so, so the request goes on as HTTP/1.1 without it
/// (DESIGN.md §9).
fn wants_upgrade(lines: &[Line<'_>], names: &[Name]) -> bool {
    let mut offered = false;
    for ((_, value), &kind) in lines.iter().zip(names) {
        if kind == Name::Upgrade {
            if tokens(value).any(|t| is(t, "h2c")) {
                return false;
            }
            offered = true;
        }
    }
    offered
        && lines
            .iter()
            .zip(names)
            .any(|((_, v), &kind)| kind == Name::Connection && tokens(v).any(|t| is(t, "upgrade")))
}

/// `host:port` → `host`; a bracketed IPv6 literal keeps its brackets.
pub(crate) fn host_without_port(authority: &[u8]) -> &[u8] {
    if authority.first() == Some(&b'[') {
        return match authority.iter().position(|&b| b == b']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    match authority.iter().rposition(|&b| b == b':') {
        Some(i) => &authority[..i],
        None => authority,
    }
}

/// The request as the rules see it.
pub struct RequestView<'a> {
    /// The path (no query), for `session.exclude_paths`.
    pub path: &'a [u8],
    /// The target in origin form: path and query.
    pub target: &'a [u8],
    /// The authority of an absolute-form target; it names the host.
    pub authority: Option<&'a [u8]>,
    pub lines: &'a [Line<'a>],
}

/// A verified session cookie from the request.
pub(crate) struct Candidate {
    pub(crate) id: SessionId,
    pub(crate) verified: Verified,
}

/// What step 1 learned about a request, and what it decided about its lines.
pub struct RequestScan<'a> {
    /// Arrived over TLS, or via a trusted proxy that says so.
    pub(crate) https: bool,
    pub upgrade: bool,
    pub(crate) excluded: bool,
    pub(crate) candidates: SmallVec<[Candidate; 1]>,
    pub keep: Keep,
    /// Each line's [`Name`].
    pub names: Names,
    /// `Cookie` without the proxy's cookies, when they were taken out of it.
    cookie: Option<Vec<u8>>,
    /// The host the client asked for.
    host: Option<&'a [u8]>,
    /// A trusted proxy's `X-Forwarded-For` values, to append to.
    forwarded_for: SmallVec<[&'a [u8]; 2]>,
    set_proto: bool,
    set_host: bool,
}

/// Refuses a request whose framing lines are ambiguous (more than one
/// `Transfer-Encoding`, or a list) or declare a body over `limit`.
fn check_framing(lines: &[Line<'_>], names: &[Name], limit: Option<u64>) -> Result<(), ProxyError> {
    let mut encodings = 0;
    for ((_, value), &kind) in lines.iter().zip(names) {
        if kind == Name::ContentLength {
            if limit.is_some_and(|limit| content_length(value).is_some_and(|n| n > limit)) {
                return Err(ProxyError::BodyTooLarge);
            }
        } else if kind == Name::TransferEncoding {
            encodings += 1;
            if encodings > 1 || value.contains(&b',') {
                return Err(ProxyError::BadRequest("ambiguous Transfer-Encoding"));
            }
        }
    }
    Ok(())
}

/// Takes the proxy's cookies, under either flavor's name, out of one `Cookie`
/// line: those of this request's flavor that verify become candidates, and
/// none reaches the upstream. The other pairs are appended to `kept`. Whether
/// the line held one of the proxy's cookies.
fn take_session_cookies(
    rules: &Rules<'_>,
    https: bool,
    value: &[u8],
    metrics: Option<&Metrics>,
    (candidates, kept): (&mut SmallVec<[Candidate; 1]>, &mut Vec<u8>),
) -> bool {
    let keys = rules.keys;
    let plain = rules.jar.plain.name.as_bytes();
    let secure = rules.jar.secure.name.as_bytes();
    let ours = rules.jar.flavor(https).name.as_bytes();
    let mut touched = false;
    for (n, v) in cookie_pairs(value) {
        if n == plain || n == secure {
            touched = true;
            if n == ours {
                match keys.check(v) {
                    Ok((id, verified)) => candidates.push(Candidate { id, verified }),
                    Err(why) => {
                        tracing::debug!(?why, "session cookie rejected");
                        if let Some(m) = metrics {
                            m.cookie_rejected(match why {
                                Refused::Malformed => CookieRejection::Malformed,
                                Refused::BadSignature => CookieRejection::BadSignature,
                            });
                        }
                    }
                }
            }
            continue;
        }
        if !kept.is_empty() {
            kept.extend_from_slice(b"; ");
        }
        kept.extend_from_slice(n);
        kept.push(b'=');
        kept.extend_from_slice(v);
    }
    touched
}

/// Step 1: refuses what can never be forwarded, marks hop-by-hop and
/// session-prefixed headers for removal, and takes the proxy's cookie out of
/// `Cookie`. `trusted`: the peer is in `trusted_proxies`.
pub fn scan_request<'a>(
    rules: Rules<'_>,
    conn: &ConnInfo,
    trusted: bool,
    view: &RequestView<'a>,
    metrics: Option<&Metrics>,
) -> Result<RequestScan<'a>, ProxyError> {
    let lines = view.lines;
    let names = classify_all(lines);
    check_framing(lines, &names, rules.max_body_bytes)?;
    let forwarded_https = lines
        .iter()
        .zip(&names)
        .find(|(_, &kind)| kind == Name::ForwardedProto)
        .is_some_and(|((_, v), _)| v.eq_ignore_ascii_case(b"https"));
    let https = conn.tls || (trusted && forwarded_https);
    let upgrade = wants_upgrade(lines, &names);
    let mut keep = hop_filter(lines, &names, &rules.names.prefix, upgrade);

    let mut candidates = SmallVec::new();
    let mut kept_cookies: Vec<u8> = Vec::new();
    let mut touched = false;
    let mut host = view.authority;
    let mut forwarded_for = SmallVec::new();
    let (mut has_proto, mut has_host) = (false, false);
    for (i, ((_, value), &kind)) in lines.iter().zip(&names).enumerate() {
        if !keep[i] {
            continue;
        }
        if kind == Name::Cookie {
            let cookies = (&mut candidates, &mut kept_cookies);
            touched |= take_session_cookies(&rules, https, value, metrics, cookies);
        } else if kind == Name::Host {
            if host.is_none() {
                host = Some(value);
            }
            keep[i] = false;
        } else if kind == Name::ForwardedFor {
            if trusted {
                forwarded_for.push(*value);
            }
            keep[i] = false;
        } else if kind == Name::ForwardedProto {
            has_proto = true;
        } else if kind == Name::ForwardedHost {
            has_host = true;
        } else if kind == Name::RequestId || (kind == Name::ForwardedOther && !trusted) {
            keep[i] = false;
        }
    }
    let set_proto = !(trusted && has_proto);
    let set_host = !(trusted && has_host);
    for (k, &kind) in keep.iter_mut().zip(&names) {
        if (touched && kind == Name::Cookie)
            || (set_proto && kind == Name::ForwardedProto)
            || (set_host && kind == Name::ForwardedHost)
        {
            *k = false;
        }
    }
    let excluded = rules
        .exclude_paths
        .iter()
        .any(|p| view.path.starts_with(p.as_bytes()));
    Ok(RequestScan {
        https,
        upgrade,
        excluded,
        candidates,
        keep,
        names,
        cookie: touched.then_some(kept_cookies),
        host,
        forwarded_for,
        set_proto,
        set_host,
    })
}

impl<'a> RequestScan<'a> {
    /// The client's address: the peer's, or when the peer is a trusted proxy,
    /// the last address its `X-Forwarded-For` names.
    pub(crate) fn client_ip(&self, conn: &'a ConnInfo) -> &'a [u8] {
        let forwarded = (self.forwarded_for.last())
            .and_then(|v| v.rsplit(|&b| b == b',').next())
            .map(|v| v.trim_ascii())
            .filter(|v| !v.is_empty());
        forwarded.unwrap_or(conn.peer_header.as_bytes())
    }

    /// The host the client asked for (`Host`, or the authority of an absolute target).
    pub(crate) fn host(&self) -> Option<&'a [u8]> {
        self.host
    }
}

/// The session as the upstream is told about it.
pub struct UpstreamSession<'a> {
    pub id: &'a SessionId,
    pub new: bool,
    pub data: Option<HeaderValue>,
}

// The names of the lines the proxy adds, as statics: an added line borrows its
// name, never clones it.
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
static XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
static XFH: HeaderName = HeaderName::from_static("x-forwarded-host");
static HOST: HeaderName = header::HOST;
static COOKIE: HeaderName = header::COOKIE;
static CONNECTION: HeaderName = header::CONNECTION;
static SET_COOKIE: HeaderName = header::SET_COOKIE;
static CACHE_CONTROL: HeaderName = header::CACHE_CONTROL;
static VARY: HeaderName = header::VARY;
static STRICT_TRANSPORT_SECURITY: HeaderName = header::STRICT_TRANSPORT_SECURITY;
static LOCATION: HeaderName = header::LOCATION;
static CONTENT_LOCATION: HeaderName = header::CONTENT_LOCATION;
static REFRESH: HeaderName = header::REFRESH;

impl<'a> RequestScan<'a> {
    /// Step 3's lines: `Host`, the session headers, `Cookie` without the proxy's,
    /// `X-Forwarded-*` and `X-Request-Id`.
    pub fn extras(
        &self,
        rules: Rules<'a>,
        conn: &'a ConnInfo,
        session: Option<UpstreamSession<'_>>,
        request_id: &'a HeaderValue,
    ) -> Extras<'a> {
        let names = rules.names;
        let mut extras = Extras::default();
        let host: Option<&'a [u8]> = match self.host {
            Some(h) if rules.preserve_host => Some(h),
            _ => rules.upstream_host.map(|h| h.as_bytes()),
        };
        if let Some(h) = host {
            extras.add(&HOST, h);
        }
        if let Some(s) = session {
            extras.add(&names.id, s.id.to_header_value());
            if s.new {
                extras.add(&names.new, &b"true"[..]);
            }
            if let Some(data) = s.data {
                extras.add(&names.data, data);
            }
        }
        if let Some(cookie) = &self.cookie {
            if !cookie.is_empty() {
                extras.add(&COOKIE, cookie.clone());
            }
        }
        let peer = conn.peer_header.as_bytes();
        if self.forwarded_for.is_empty() {
            extras.add(&XFF, peer);
        } else {
            let mut joined = self.forwarded_for.join(&b", "[..]);
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(peer);
            extras.add(&XFF, joined);
        }
        if self.set_proto {
            extras.add(&XFP, if self.https { &b"https"[..] } else { b"http" });
        }
        if self.set_host {
            if let Some(h) = self.host {
                extras.add(&XFH, h);
            }
        }
        extras.add(&X_REQUEST_ID, request_id.as_bytes());
        if self.upgrade {
            extras.add(&CONNECTION, &b"upgrade"[..]);
        }
        extras
    }
}

/// What step 4 read from the upstream's response head.
pub struct ResponseScan {
    pub keep: Keep,
    pub names: Names,
    /// The write-back, or why it is refused.
    pub(crate) changes: Result<Changes, ChangesError>,
}

/// Step 4: reads the write-back headers and marks them, every hop-by-hop
/// header, and every `Set-Cookie` under the proxy's own cookie names (`jar`)
/// for removal: the session cookie is the proxy's alone, and one set by the
/// upstream would replace or fixate the visitor's session. `switching`: a
/// `101` to an upgrade request.
pub fn scan_response(
    lines: &[Line<'_>],
    names: &HeaderNames,
    jar: &CookieJar,
    switching: bool,
) -> ResponseScan {
    let kinds = classify_all(lines);
    let mut keep = hop_filter(lines, &kinds, &names.prefix, switching);
    let ours = [jar.plain.name.as_bytes(), jar.secure.name.as_bytes()];
    for (((_, value), &kind), k) in lines.iter().zip(&kinds).zip(keep.iter_mut()) {
        if kind == Name::SetCookie {
            let cookie = value.split(|&b| b == b'=').next().unwrap_or_default();
            if ours.contains(&cookie.trim_ascii()) {
                tracing::warn!("the upstream set the proxy's own cookie: removed");
                *k = false;
            }
        }
    }
    let mut changes = Changes::default();
    let mut read = || -> Result<(), ChangesError> {
        for (name, value) in lines {
            if !has_prefix(name, &names.prefix) {
                continue;
            }
            let is = |wanted: &HeaderName| same_name(name, wanted.as_str().as_bytes());
            if is(&names.set) {
                changes.add_set(value)?;
            } else if is(&names.remove) {
                changes.add_remove(value)?;
            } else if is(&names.destroy) {
                changes.destroy |= is_true(value);
            } else if is(&names.regenerate) {
                changes.regenerate |= is_true(value);
            } else if is(&names.destroy_others) {
                changes.destroy_others |= is_true(value);
            } else if is(&names.persist) {
                // Anything but a yes or a no leaves the choice as it was.
                if is_true(value) {
                    changes.persist = Some(true);
                } else if crate::session::is_false(value) {
                    changes.persist = Some(false);
                }
            }
        }
        Ok(())
    };
    let outcome = read();
    ResponseScan {
        keep,
        names: kinds,
        changes: outcome.map(|()| changes),
    }
}

/// Step 5's lines: `Set-Cookie` with `Cache-Control` made private, `Vary: Cookie`
/// when the response depends on the session, `Strict-Transport-Security` over
/// TLS, `Connection: upgrade` for a `101`.
pub fn response_extras<'a>(
    lines: &[Line<'_>],
    names: &[Name],
    keep: &mut Keep,
    set_cookie: Option<HeaderValue>,
    carried_session: bool,
    hsts: Option<&'a HeaderValue>,
    switching: bool,
) -> Extras<'a> {
    let mut extras = Extras::default();
    if let Some(cookie) = set_cookie {
        extras.add(&SET_COOKIE, cookie);
        let mut directives: SmallVec<[&[u8]; 8]> = SmallVec::new();
        for (((_, value), &kind), k) in lines.iter().zip(names).zip(keep.iter_mut()) {
            if *k && kind == Name::CacheControl {
                directives.extend(tokens(value));
                *k = false;
            }
        }
        extras.add(&CACHE_CONTROL, private_cache_control(&directives));
    }
    if carried_session {
        let covered = lines
            .iter()
            .zip(names)
            .zip(keep.iter())
            .any(|(((_, value), &kind), &k)| {
                k && kind == Name::Vary && tokens(value).any(|t| t == b"*" || is(t, "cookie"))
            });
        if !covered {
            extras.add(&VARY, &b"Cookie"[..]);
        }
    }
    if let Some(hsts) = hsts {
        for (k, &kind) in keep.iter_mut().zip(names) {
            if kind == Name::StrictTransportSecurity {
                *k = false;
            }
        }
        extras.add(&STRICT_TRANSPORT_SECURITY, hsts.as_bytes());
    }
    if switching {
        extras.add(&CONNECTION, &b"upgrade"[..]);
    }
    extras
}

/// `upstream.rewrite_redirects`: each `Location`, `Content-Location` and `Refresh`
/// whose URL names the upstream's origin is replaced by one naming the client's.
pub(crate) fn rewrite_redirects<'a>(
    lines: &[Line<'_>],
    names: &[Name],
    keep: &mut Keep,
    extras: &mut Extras<'a>,
    upstream: &UpstreamOrigin,
    client: ClientOrigin<'_>,
) {
    for (((_, value), &kind), k) in lines.iter().zip(names).zip(keep.iter_mut()) {
        if !*k {
            continue;
        }
        let (name, rewritten) = match kind {
            Name::Location => (&LOCATION, upstream.rewrite(value, client)),
            Name::ContentLocation => (&CONTENT_LOCATION, upstream.rewrite(value, client)),
            Name::Refresh => (&REFRESH, upstream.rewrite_refresh(value, client)),
            _ => continue,
        };
        if let Some(url) = rewritten {
            *k = false;
            extras.add(name, url);
        }
    }
}

/// A response that sets the proxy's cookie must not be stored by shared caches:
/// `public` and `s-maxage` go, `private` comes first unless `private` or
/// `no-store` is there already.
fn private_cache_control(directives: &[&[u8]]) -> Vec<u8> {
    let name_is = |d: &[u8], name: &str| {
        is(d, name) || (has_prefix(d, name) && d.get(name.len()) == Some(&b'='))
    };
    let kept: SmallVec<[&[u8]; 8]> = directives
        .iter()
        .copied()
        .filter(|d| !is(d, "public") && !has_prefix(d, "s-maxage"))
        .collect();
    let mut out = Vec::with_capacity(64);
    if !kept
        .iter()
        .any(|d| name_is(d, "private") || name_is(d, "no-store"))
    {
        out.extend_from_slice(b"private");
    }
    for d in kept {
        if !out.is_empty() {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(d);
    }
    out
}

/// Writes `name: value` lines: the kept ones as they arrived, then the extras.
pub(crate) fn put_lines(out: &mut Vec<u8>, lines: &[Line<'_>], keep: &[bool], extras: &Extras<'_>) {
    for ((name, value), _) in lines.iter().zip(keep).filter(|(_, &k)| k) {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in &extras.0 {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// The kept lines and the added ones as a `HeaderMap` (for an HTTP/2 client).
/// The lines come from the strict parser, so every name is a token; a value
/// `http` refuses is left out.
pub(crate) fn header_map(
    lines: &[Line<'_>],
    keep: &[bool],
    extras: &Extras<'_>,
) -> http::HeaderMap {
    let mut out = http::HeaderMap::with_capacity(lines.len() + extras.0.len());
    for ((name, value), _) in lines.iter().zip(keep).filter(|(_, &k)| k) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name),
            HeaderValue::from_bytes(value),
        ) {
            out.append(name, value);
        }
    }
    for (name, value) in &extras.0 {
        let value = match value {
            Value::Header(h) => Ok(h.clone()),
            other => HeaderValue::from_bytes(other.as_bytes()),
        };
        if let Ok(v) = value {
            out.append((*name).clone(), v);
        }
    }
    out
}

/// A `HeaderMap`'s lines as byte pairs, in its iteration order.
pub(crate) fn lines_of(map: &http::HeaderMap) -> SmallVec<[Line<'_>; 16]> {
    map.iter()
        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept<'a>(lines: &[Line<'a>], keep: &[bool]) -> Vec<&'a str> {
        lines
            .iter()
            .zip(keep)
            .filter(|(_, &k)| k)
            .map(|((n, _), _)| std::str::from_utf8(n).unwrap())
            .collect()
    }

    #[test]
    fn connection_named_headers_and_prefix_are_dropped() {
        let lines: Vec<Line> = vec![
            (b"Connection", b"keep-alive, X-Secret, X-Session-Id"),
            (b"X-Secret", b"1"),
            (b"X-Session-Id", b"spoof"),
            (b"x-session-anything", b"spoof"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Accept", b"*/*"),
            (b"Upgrade", b"websocket"),
        ];
        let keep = hop_filter(&lines, &classify_all(&lines), "x-session-", false);
        assert_eq!(kept(&lines, &keep), vec!["Accept"]);
    }

    #[test]
    fn upgrade_keeps_upgrade() {
        let lines: Vec<Line> = vec![(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")];
        let names = classify_all(&lines);
        assert!(wants_upgrade(&lines, &names));
        let keep = hop_filter(&lines, &names, "x-session-", true);
        assert_eq!(kept(&lines, &keep), vec!["Upgrade"]);
    }

    #[test]
    fn cache_control_is_made_private() {
        let cc = |d: &[&[u8]]| String::from_utf8(private_cache_control(d)).unwrap();
        assert_eq!(cc(&[]), "private");
        assert_eq!(cc(&[b"public", b"max-age=60"]), "private, max-age=60");
        assert_eq!(cc(&[b"no-store", b"s-maxage=5"]), "no-store");
        assert_eq!(cc(&[b"Private"]), "Private");
    }
}
