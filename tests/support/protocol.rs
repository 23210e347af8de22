//! One suite, many transports: the proxy started with what a [`Protocol`] needs,
//! and browser-like clients that speak exactly that protocol to it.
//!
//! A suite writes each test once as `async fn name(p: Protocol)` and lists it in
//! [`over_every_protocol!`], which makes one `#[tokio::test]` per protocol
//! (`http1::name`, `h2c::name`, `h2_tls::name`), so a failure names both.
//!
//! ```ignore
//! async fn a_test(p: Protocol) {
//!     let upstream = Upstream::ok().await;
//!     let proxy = p.start_proxy(config(&upstream.url())).await;
//!     let browser = p.browser();
//!     let response = browser.get(&proxy.url("/")).await; // version checked
//!     p.expect_session_cookie(response.headers());        // name checked
//! }
//! over_every_protocol!(a_test);
//! ```
//!
//! Every response a client here returns has already been checked to be of the
//! protocol's HTTP version, so a silent fallback to HTTP/1.1 fails the test.
//!
//! For requests no client library would send, [`ProtocolProxy::raw`] gives a
//! connection that writes them by hand: bytes over HTTP/1.1, frames over
//! HTTP/2 (h2c, or h2 over TLS).

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Version};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use super::raw::{H2Conn, RawClient};
use super::tls::{client_config, yaml_path, Alpn, Answer, Leaf, TestCa, TlsFiles, TlsProxy, HOST};
use super::{config, ConfigYaml, Proxy, SetCookie, Upstream, COOKIE, PATIENCE};

/// How a client talks to the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 on the plain listener.
    Http1,
    /// HTTP/2 by prior knowledge on the plain listener.
    H2c,
    /// HTTP/2 over TLS on the HTTPS listener, chosen by ALPN (`h2`, `http/1.1` offered).
    H2Tls,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Http1, Protocol::H2c, Protocol::H2Tls];

    /// The HTTP version every response must come back with.
    pub fn version(self) -> Version {
        match self {
            Protocol::Http1 => Version::HTTP_11,
            Protocol::H2c | Protocol::H2Tls => Version::HTTP_2,
        }
    }

    pub fn is_tls(self) -> bool {
        self == Protocol::H2Tls
    }

    /// `http` or `https`: the scheme of the proxy's URLs, and what
    /// `X-Forwarded-Proto` says when the proxy sets it itself.
    pub fn scheme(self) -> &'static str {
        if self.is_tls() {
            "https"
        } else {
            "http"
        }
    }

    /// The session cookie's name: with `session.secure: auto` and the default
    /// `host_prefix`, a request over TLS gets `__Host-sessiongate`.
    pub fn cookie_name(self) -> String {
        if self.is_tls() {
            format!("__Host-{COOKIE}")
        } else {
            COOKIE.to_owned()
        }
    }

    /// The pseudo-header fields of an HTTP/2 request for `example.test` in
    /// this protocol's scheme.
    pub fn h2_fields<'a>(self, method: &'a str, path: &'a str) -> Vec<(&'a [u8], &'a [u8])> {
        vec![
            (b":method", method.as_bytes()),
            (b":scheme", self.scheme().as_bytes()),
            (b":authority", b"example.test"),
            (b":path", path.as_bytes()),
        ]
    }

    /// Starts the proxy with `yaml`, plus an HTTPS listener for [`Protocol::H2Tls`].
    pub async fn start_proxy(self, yaml: ConfigYaml) -> ProtocolProxy {
        let inner = if self.is_tls() {
            let files = TlsFiles::new(&pki().leaf);
            let yaml = yaml
                .set("tls.listen", "127.0.0.1:0")
                .set("tls.cert", &yaml_path(&files.cert()))
                .set("tls.key", &yaml_path(&files.key()));
            let proxy = TlsProxy::start(&files, yaml).await;
            Listener::Tls {
                https: proxy.https_addr(),
                _proxy: proxy,
                _files: files,
            }
        } else {
            Listener::Plain(Proxy::start(yaml).await)
        };
        ProtocolProxy {
            protocol: self,
            inner,
        }
    }

    /// A client builder that speaks this protocol, follows no redirect and
    /// uses no system proxy.
    pub fn client_builder(self) -> reqwest::ClientBuilder {
        let builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none());
        match self {
            Protocol::Http1 => builder.http1_only(),
            Protocol::H2c => builder.http2_prior_knowledge(),
            // Offers h2 and http/1.1 by ALPN, as a browser does; the version
            // check on every response makes sure h2 was chosen.
            Protocol::H2Tls => builder
                .tls_certs_only([reqwest::Certificate::from_pem(pki().ca_pem.as_bytes())
                    .expect("test CA certificate")]),
        }
    }

    /// A client with no cookie jar: every header is exactly what the test sets.
    pub fn plain_client(self) -> reqwest::Client {
        self.client_builder().build().expect("client")
    }

    /// A client that keeps cookies like a browser.
    pub fn browser(self) -> ProtocolBrowser {
        let jar = Arc::new(reqwest::cookie::Jar::default());
        let client = self
            .client_builder()
            .cookie_provider(jar.clone())
            .build()
            .expect("client");
        ProtocolBrowser {
            protocol: self,
            client,
            jar,
        }
    }

    /// Sends `request`, failing the test when it fails or the response is not
    /// of this protocol's HTTP version.
    pub async fn send(self, request: reqwest::RequestBuilder) -> reqwest::Response {
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("[{self}] request failed: {e:?}"));
        self.check(response)
    }

    /// Fails the test when `response` did not come over this protocol's HTTP version.
    pub fn check(self, response: reqwest::Response) -> reqwest::Response {
        assert_eq!(
            response.version(),
            self.version(),
            "[{self}] {} came back over the wrong HTTP version",
            response.url()
        );
        response
    }

    /// GET `url` with exactly this Cookie header.
    pub async fn get_with_cookie(self, url: &str, cookie: &str) -> reqwest::Response {
        self.send(self.plain_client().get(url).header("cookie", cookie))
            .await
    }

    /// GET `url` with no cookie at all.
    pub async fn get_without_cookie(self, url: &str) -> reqwest::Response {
        self.send(self.plain_client().get(url)).await
    }

    /// The proxy's Set-Cookie, if any; fails when it is not named as this
    /// protocol expects (or there are two).
    pub fn session_set_cookie(self, headers: &HeaderMap) -> Option<SetCookie> {
        let cookie = super::session_set_cookie(headers)?;
        assert_eq!(
            cookie.name,
            self.cookie_name(),
            "[{self}] the session cookie has the wrong name: {}",
            cookie.raw
        );
        Some(cookie)
    }

    /// The proxy's Set-Cookie, failing the test when there is none.
    pub fn expect_session_cookie(self, headers: &HeaderMap) -> SetCookie {
        self.session_set_cookie(headers)
            .unwrap_or_else(|| panic!("[{self}] the response set no session cookie: {headers:?}"))
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::H2c => "h2c",
            Protocol::H2Tls => "h2 over TLS",
        })
    }
}

/// The CA the TLS clients trust and the certificate the proxy presents, made
/// once per test binary.
struct Pki {
    ca_pem: String,
    leaf: Leaf,
    /// For clients below reqwest: trusts the CA alone, offers `h2` and `http/1.1`.
    client_tls: Arc<rustls::ClientConfig>,
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let ca = TestCa::new("sessiongate protocol test CA");
        Pki {
            ca_pem: ca.pem(),
            leaf: ca.issue("sessiongate protocol test"),
            client_tls: Arc::new(client_config(&ca, Alpn::H2, None)),
        }
    })
}

/// An upstream answering `200 ok`, and the proxy in front of it over `p`
/// with the test config as `config_change` leaves it.
pub async fn site(
    p: Protocol,
    config_change: impl FnOnce(ConfigYaml) -> ConfigYaml,
) -> (Upstream, ProtocolProxy) {
    let upstream = Upstream::ok().await;
    let proxy = p.start_proxy(config_change(config(&upstream.url()))).await;
    (upstream, proxy)
}

/// The proxy, reachable over one [`Protocol`].
pub struct ProtocolProxy {
    protocol: Protocol,
    inner: Listener,
}

enum Listener {
    Plain(Proxy),
    Tls {
        https: SocketAddr,
        // Dropped in this order: the proxy, then its certificate files.
        _proxy: TlsProxy,
        _files: TlsFiles,
    },
}

impl ProtocolProxy {
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The address the protocol's clients connect to.
    pub fn addr(&self) -> SocketAddr {
        match &self.inner {
            Listener::Plain(proxy) => proxy.addr(),
            Listener::Tls { https, .. } => *https,
        }
    }

    /// `http://127.0.0.1:PORT{path}`, or `https://…` on the HTTPS listener.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.protocol.is_tls() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}{path}", self.addr())
    }

    /// GET `path` on a fresh connection, naming `host` as the host the client
    /// asked for: the `Host` header over HTTP/1.1, `:authority` over HTTP/2
    /// (where a `Host` that differs from `:authority` makes the request
    /// malformed, RFC 9113 §8.3.1). The answer is version-checked.
    pub async fn get_as_host(&self, host: &str, path: &str) -> Answer {
        let p = self.protocol;
        let answer = match p {
            Protocol::Http1 => {
                let request = p.plain_client().get(self.url(path)).header("host", host);
                let response = p.send(request).await;
                let (status, version) = (response.status(), response.version());
                let headers = response.headers().clone();
                let body = response.bytes().await.expect("body");
                Answer {
                    status,
                    version,
                    headers,
                    body,
                }
            }
            Protocol::H2c | Protocol::H2Tls => {
                let request = Request::get(format!("{}://{host}{path}", p.scheme()))
                    .version(Version::HTTP_2)
                    .body(Full::new(Bytes::new()))
                    .expect("request");
                let mut sender = if p.is_tls() {
                    self.h2_over_tls().await
                } else {
                    super::h2c(self.addr()).await
                };
                let response = tokio::time::timeout(PATIENCE, sender.send_request(request))
                    .await
                    .unwrap_or_else(|_| panic!("[{p}] no answer in time"))
                    .unwrap_or_else(|e| panic!("[{p}] request failed: {e:?}"));
                Answer::read(response).await
            }
        };
        assert_eq!(
            answer.version,
            p.version(),
            "[{p}] {path} as {host} came back over the wrong HTTP version"
        );
        answer
    }

    /// An HTTP/2 connection to the HTTPS listener, `h2` chosen by ALPN.
    async fn h2_over_tls(&self) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
        let tls = self.tls_h2().await;
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .expect("h2 handshake");
        tokio::spawn(connection);
        sender
    }

    /// A TLS connection to the HTTPS listener on which ALPN chose `h2`.
    async fn tls_h2(&self) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.addr())
            .await
            .expect("connect for h2 over TLS");
        let connector = tokio_rustls::TlsConnector::from(pki().client_tls.clone());
        let name = ServerName::try_from(HOST).expect("server name");
        let tls = tokio::time::timeout(PATIENCE, connector.connect(name, tcp))
            .await
            .expect("TLS handshake timed out")
            .expect("TLS handshake failed");
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            Some(&b"h2"[..]),
            "ALPN did not choose h2"
        );
        tls
    }

    /// A hand-driven HTTP/2 connection (h2c, or h2 over TLS), for frames no
    /// HTTP/2 library would send. Not for [`Protocol::Http1`].
    pub async fn raw_h2(&self) -> H2Conn {
        match self.protocol {
            Protocol::Http1 => panic!("raw_h2 needs an HTTP/2 protocol"),
            Protocol::H2c => {
                H2Conn::open(
                    TcpStream::connect(self.addr())
                        .await
                        .expect("connect for h2c"),
                )
                .await
            }
            Protocol::H2Tls => H2Conn::open(self.tls_h2().await).await,
        }
    }

    /// A connection that writes exactly what a test gives it, in this
    /// protocol's framing: bytes over HTTP/1.1, frames over HTTP/2.
    pub async fn raw(&self) -> RawConn {
        let wire = match self.protocol {
            Protocol::Http1 => RawWire::Http1(RawClient::connect(self.addr()).await),
            Protocol::H2c | Protocol::H2Tls => RawWire::Http2 {
                conn: self.raw_h2().await,
                stream: 0,
            },
        };
        RawConn {
            protocol: self.protocol,
            wire,
            chunked: false,
        }
    }
}

/// How a request made by hand carries its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawBody {
    /// No body: the head ends the request.
    None,
    /// A body of this many bytes, declared with `Content-Length`.
    Declared(usize),
    /// A body of unknown length: chunked over HTTP/1.1, DATA frames without a
    /// `content-length` over HTTP/2.
    Streamed,
}

/// A connection to the proxy on which a test writes requests by hand, in one
/// protocol's framing (see [`ProtocolProxy::raw`]): what a client library
/// refuses to send, such as a header name that is no token, a CR or NUL in a
/// value, or a body that stops half-way.
pub struct RawConn {
    protocol: Protocol,
    wire: RawWire,
    /// HTTP/1.1: the body in flight is chunked.
    chunked: bool,
}

enum RawWire {
    Http1(RawClient),
    /// `stream`: the request in flight.
    Http2 {
        conn: H2Conn,
        stream: u32,
    },
}

/// What came back for one request made by hand.
#[derive(Debug)]
pub struct RawAnswer {
    /// The status of every response: over HTTP/1.1 each complete one on the
    /// connection (0 for one that is no HTTP); over HTTP/2 the stream's (0
    /// when its `:status` could not be read). Empty when nothing was answered.
    pub statuses: Vec<u16>,
    /// HTTP/2: the error code of the stream's RST_STREAM.
    pub reset: Option<u32>,
    /// HTTP/2: the error code of a GOAWAY (the whole connection refused).
    pub goaway: Option<u32>,
    /// The connection was closed.
    pub closed: bool,
    /// What came back, for failure messages.
    pub trace: String,
}

impl RawAnswer {
    /// The first response's status.
    pub fn status(&self) -> Option<u16> {
        self.statuses.first().copied()
    }

    pub fn answered(&self) -> bool {
        !self.statuses.is_empty()
    }
}

impl RawConn {
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    fn h2(&mut self) -> (&mut H2Conn, &mut u32) {
        match &mut self.wire {
            RawWire::Http1(_) => panic!("an HTTP/2 frame on an HTTP/1.1 connection"),
            RawWire::Http2 { conn, stream } => (conn, stream),
        }
    }

    /// HTTP/2 only: starts a request whose header block is exactly `fields`
    /// (pseudo-header fields included, in the order given) on a new stream.
    pub async fn h2_head(&mut self, fields: &[(&[u8], &[u8])], body: RawBody) -> bool {
        self.chunked = false;
        let (conn, stream) = self.h2();
        *stream = conn.new_stream();
        conn.headers(*stream, fields, body == RawBody::None).await
    }

    /// HTTP/2 only: resets the request in flight with RST_STREAM `code`.
    pub async fn reset_stream(&mut self, code: u32) -> bool {
        let (conn, stream) = self.h2();
        conn.reset(*stream, code).await
    }

    /// Starts a request for `example.test`: the request line and `Host` over
    /// HTTP/1.1, the pseudo-header fields over HTTP/2 (on a new stream), then
    /// `headers` as they are, then what `body` needs to frame the body.
    pub async fn head(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&[u8], &[u8])],
        body: RawBody,
    ) -> bool {
        self.chunked = body == RawBody::Streamed;
        let length = match body {
            RawBody::Declared(n) => Some(n.to_string()),
            _ => None,
        };
        match &mut self.wire {
            RawWire::Http1(client) => {
                let mut bytes =
                    format!("{method} {path} HTTP/1.1\r\nHost: example.test\r\n").into_bytes();
                push_lines(&mut bytes, headers);
                match (&length, body) {
                    (Some(n), _) => bytes.extend(format!("Content-Length: {n}\r\n").bytes()),
                    (None, RawBody::Streamed) => {
                        bytes.extend_from_slice(b"Transfer-Encoding: chunked\r\n")
                    }
                    _ => {}
                }
                bytes.extend_from_slice(b"\r\n");
                client.send(&bytes).await
            }
            RawWire::Http2 { conn, stream } => {
                let mut fields = self.protocol.h2_fields(method, path);
                fields.extend_from_slice(headers);
                if let Some(n) = &length {
                    fields.push((b"content-length", n.as_bytes()));
                }
                *stream = conn.new_stream();
                conn.headers(*stream, &fields, body == RawBody::None).await
            }
        }
    }

    /// A piece of the body; `last` ends it (a last chunk over HTTP/1.1 when
    /// chunked, END_STREAM over HTTP/2).
    pub async fn body(&mut self, data: &[u8], last: bool) -> bool {
        match &mut self.wire {
            RawWire::Http1(client) => {
                let mut bytes = Vec::new();
                if self.chunked {
                    if !data.is_empty() {
                        bytes.extend(format!("{:x}\r\n", data.len()).bytes());
                        bytes.extend_from_slice(data);
                        bytes.extend_from_slice(b"\r\n");
                    }
                    if last {
                        bytes.extend_from_slice(b"0\r\n\r\n");
                    }
                } else {
                    bytes.extend_from_slice(data);
                }
                client.send(&bytes).await
            }
            RawWire::Http2 { conn, stream } => conn.data(*stream, data, last).await,
        }
    }

    /// Ends a streamed body with trailer fields: the last chunk's trailer
    /// section over HTTP/1.1, a HEADERS frame over HTTP/2.
    pub async fn trailers(&mut self, fields: &[(&[u8], &[u8])]) -> bool {
        match &mut self.wire {
            RawWire::Http1(client) => {
                let mut bytes = b"0\r\n".to_vec();
                push_lines(&mut bytes, fields);
                bytes.extend_from_slice(b"\r\n");
                client.send(&bytes).await
            }
            RawWire::Http2 { conn, stream } => conn.headers(*stream, fields, true).await,
        }
    }

    /// Waits up to [`PATIENCE`] for the answer to the request in flight.
    pub async fn answer(&mut self) -> RawAnswer {
        self.answer_within(PATIENCE).await
    }

    /// Waits up to `limit` for the answer to the request in flight; over
    /// HTTP/1.1, then up to [`LINGER`](super::raw::LINGER) for the connection to close.
    pub async fn answer_within(&mut self, limit: std::time::Duration) -> RawAnswer {
        match &mut self.wire {
            RawWire::Http1(client) => {
                let got = client.responses_within(1, limit).await;
                RawAnswer {
                    statuses: got.responses.iter().map(|r| r.status).collect(),
                    reset: None,
                    goaway: None,
                    closed: got.closed,
                    trace: got.text(),
                }
            }
            RawWire::Http2 { conn, stream } => {
                let got = conn.outcome_within(*stream, limit).await;
                let status = got.answered().then(|| got.status().unwrap_or(0));
                RawAnswer {
                    statuses: status.into_iter().collect(),
                    reset: got.reset_code(),
                    goaway: got.goaway(),
                    closed: got.closed,
                    trace: got.describe(),
                }
            }
        }
    }

    /// Sends a whole request, its body (when there is one) declared with
    /// `Content-Length`, and waits for its answer.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&[u8], &[u8])],
        body: Option<&[u8]>,
    ) -> RawAnswer {
        match body {
            None => self.head(method, path, headers, RawBody::None).await,
            Some(body) => {
                let declared = RawBody::Declared(body.len());
                self.head(method, path, headers, declared).await && self.body(body, true).await
            }
        };
        self.answer().await
    }

    /// Sends a plain `GET {path}` and waits for its answer.
    pub async fn get(&mut self, path: &str) -> RawAnswer {
        self.request("GET", path, &[], None).await
    }
}

/// Appends `name: value` lines, each byte as given.
fn push_lines(bytes: &mut Vec<u8>, fields: &[(&[u8], &[u8])]) {
    for (name, value) in fields {
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(b": ");
        bytes.extend_from_slice(value);
        bytes.extend_from_slice(b"\r\n");
    }
}

/// A cookie-keeping client of one [`Protocol`]; every response is version-checked.
pub struct ProtocolBrowser {
    protocol: Protocol,
    client: reqwest::Client,
    jar: Arc<reqwest::cookie::Jar>,
}

impl ProtocolBrowser {
    pub async fn get(&self, url: &str) -> reqwest::Response {
        self.protocol.send(self.client.get(url)).await
    }

    /// Like [`ProtocolBrowser::get`], for futures that outlive the URL's owner.
    pub async fn get_owned(&self, url: String) -> reqwest::Response {
        self.get(&url).await
    }

    /// A request builder, for other methods and extra headers; send it with
    /// [`ProtocolBrowser::send`].
    pub fn request(&self, method: Method, url: &str) -> reqwest::RequestBuilder {
        self.client.request(method, url)
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> reqwest::Response {
        self.protocol.send(request).await
    }

    /// The Cookie header this browser would send to `url`.
    pub fn cookie_header(&self, url: &str) -> Option<String> {
        use reqwest::cookie::CookieStore as _;
        let url = url.parse().expect("url");
        self.jar
            .cookies(&url)
            .map(|v| v.to_str().expect("cookie text").to_owned())
    }
}

/// One `#[tokio::test]` per listed test per protocol, in modules `http1`, `h2c`
/// and `h2_tls`; each calls `name(Protocol::…)` of the invoking module.
/// `name { flavor = "multi_thread", worker_threads = 4 }` passes arguments on
/// to `#[tokio::test]`. Tests listed after `; plain:` are about plain HTTP (a
/// request over TLS is HTTPS whatever it says) and run over HTTP/1.1 and h2c only.
/// Tests listed after `; http2:` are about HTTP/2 itself and run over h2c and
/// h2 over TLS only. Attributes before a name (`#[ignore = "why"] name`) go on
/// each of its tests.
// Every test binary includes `support`; only some use the macro.
#[allow(unused_macros)]
macro_rules! over_every_protocol {
    (@in $module:ident, $protocol:ident;
        $($(#[$meta:meta])* $name:ident $({ $($args:tt)* })?,)*) => {
        mod $module {
            $(
                $(#[$meta])*
                #[tokio::test $(($($args)*))?]
                async fn $name() {
                    super::$name($crate::support::protocol::Protocol::$protocol).await
                }
            )*
        }
    };
    (
        $($(#[$m:meta])* $name:ident $({ $($args:tt)* })?),* $(,)?
        $(; plain: $($(#[$pm:meta])* $plain:ident $({ $($pargs:tt)* })?),* $(,)?)?
        $(; http2: $($(#[$hm:meta])* $h2:ident $({ $($hargs:tt)* })?),* $(,)?)?
    ) => {
        $crate::support::protocol::over_every_protocol!(@in http1, Http1;
            $($(#[$m])* $name $({ $($args)* })?,)*
            $($($(#[$pm])* $plain $({ $($pargs)* })?,)*)?);
        $crate::support::protocol::over_every_protocol!(@in h2c, H2c;
            $($(#[$m])* $name $({ $($args)* })?,)*
            $($($(#[$pm])* $plain $({ $($pargs)* })?,)*)?
            $($($(#[$hm])* $h2 $({ $($hargs)* })?,)*)?);
        $crate::support::protocol::over_every_protocol!(@in h2_tls, H2Tls;
            $($(#[$m])* $name $({ $($args)* })?,)*
            $($($(#[$hm])* $h2 $({ $($hargs)* })?,)*)?);
    };
}
#[allow(unused_imports)]
pub(crate) use over_every_protocol;
