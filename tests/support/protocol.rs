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

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Version};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;

use super::tls::{client_config, yaml_path, Alpn, Answer, Leaf, TestCa, TlsFiles, TlsProxy, HOST};
use super::{ConfigYaml, Proxy, SetCookie, COOKIE, PATIENCE};

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
        let tcp = tokio::net::TcpStream::connect(self.addr())
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
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .expect("h2 handshake");
        tokio::spawn(connection);
        sender
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
// Every test binary includes `support`; only some use the macro.
#[allow(unused_macros)]
macro_rules! over_every_protocol {
    (
        $($name:ident $({ $($args:tt)* })?),* $(,)?
        $(; plain: $($plain:ident $({ $($pargs:tt)* })?),* $(,)?)?
    ) => {
        $crate::support::protocol::over_every_protocol!(@in http1, Http1;
            $($name $({ $($args)* })?,)* $($($plain $({ $($pargs)* })?,)*)?);
        $crate::support::protocol::over_every_protocol!(@in h2c, H2c;
            $($name $({ $($args)* })?,)* $($($plain $({ $($pargs)* })?,)*)?);
        $crate::support::protocol::over_every_protocol!(@in h2_tls, H2Tls;
            $($name $({ $($args)* })?,)*);
    };
    (@in $module:ident, $protocol:ident; $($name:ident $({ $($args:tt)* })?,)*) => {
        mod $module {
            $(
                #[tokio::test $(($($args)*))?]
                async fn $name() {
                    super::$name($crate::support::protocol::Protocol::$protocol).await
                }
            )*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use over_every_protocol;
