//! TLS fixtures: a certificate authority made at test time, certificate files in a
//! temporary directory, the proxy started from a config *file* (so that it can be
//! reloaded), a client connection whose ALPN, certificate and HTTP version a test
//! can look at, and an HTTPS upstream.
//!
//! ```ignore
//! let ca = TestCa::new("test CA");
//! let files = TlsFiles::new(&ca.issue("first"));
//! let proxy = TlsProxy::start(&files, tls_config(&upstream.url(), &files)).await;
//! let mut conn = TlsConn::open(proxy.https_addr(), &ca, Alpn::H2).await;
//! let answer = conn.get("/").await;
//! ```

use super::Running;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Version};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ProtocolVersion, RootCertStore};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use sessiongate::server::{ReloadError, Reloader, Server};

use super::{config, ConfigYaml, PATIENCE};

/// The name every test certificate is valid for, besides `127.0.0.1`.
pub const HOST: &str = "localhost";

// ---------------------------------------------------------------------------
// Certificates.
// ---------------------------------------------------------------------------

/// A certificate authority that exists for one test.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        sessiongate::tls::install_provider();
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A root store trusting this CA alone.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.issuer.der().clone()).expect("CA is a root");
        roots
    }

    /// A server certificate for `localhost` and `127.0.0.1`, its subject's common
    /// name set to `common_name`, so two certificates are easy to tell apart.
    pub fn issue(&self, common_name: &str) -> Leaf {
        self.issue_for(common_name, &[HOST, "127.0.0.1"])
    }

    /// A server certificate valid for `names` only.
    pub fn issue_for(&self, common_name: &str, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

/// A certificate and its private key.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

/// A directory holding the proxy's `cert.pem`, `key.pem` and `config.yaml`.
pub struct TlsFiles {
    dir: tempfile::TempDir,
}

impl TlsFiles {
    /// A new directory with `leaf` installed.
    pub fn new(leaf: &Leaf) -> TlsFiles {
        let files = TlsFiles {
            dir: tempfile::tempdir().expect("temporary directory"),
        };
        files.install(leaf);
        files
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("config.yaml")
    }

    /// Overwrites the certificate and key files with `leaf`.
    pub fn install(&self, leaf: &Leaf) {
        self.write_cert(&leaf.cert_pem);
        self.write_key(&leaf.key_pem);
    }

    pub fn write_cert(&self, pem: &str) {
        std::fs::write(self.cert(), pem).expect("write cert.pem");
    }

    pub fn write_key(&self, pem: &str) {
        std::fs::write(self.key(), pem).expect("write key.pem");
    }

    /// Writes `pem` to `name` in this directory and returns its path.
    pub fn write_extra(&self, name: &str, pem: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, pem).expect("write file");
        path
    }
}

/// The test defaults plus an HTTPS listener on `127.0.0.1:0` serving `files`'
/// certificate. The plain listener stays; `.without("listen")` drops it.
pub fn tls_config(upstream_url: &str, files: &TlsFiles) -> ConfigYaml {
    config(upstream_url)
        .set("tls.listen", "127.0.0.1:0")
        .set("tls.cert", &yaml_path(&files.cert()))
        .set("tls.key", &yaml_path(&files.key()))
}

/// A path as a double-quoted YAML string.
pub fn yaml_path(path: &Path) -> String {
    format!("{:?}", path.to_str().expect("UTF-8 path"))
}

// ---------------------------------------------------------------------------
// The proxy, from a config file.
// ---------------------------------------------------------------------------

/// The proxy loaded from `files.config()`, with its reloader kept.
pub struct TlsProxy {
    plain: SocketAddr,
    https: Option<SocketAddr>,
    reloader: Reloader,
    config_path: PathBuf,
    running: Running,
}

impl TlsProxy {
    /// Writes `yaml` to `files.config()`, loads it as the binary does, binds, and runs.
    pub async fn start(files: &TlsFiles, yaml: ConfigYaml) -> TlsProxy {
        Self::try_start(files, yaml)
            .await
            .unwrap_or_else(|e| panic!("the proxy did not bind: {e:#}"))
    }

    pub async fn try_start(files: &TlsFiles, yaml: ConfigYaml) -> anyhow::Result<TlsProxy> {
        let path = files.config();
        std::fs::write(&path, yaml.to_string()).expect("write config.yaml");
        let config = sessiongate::config::Config::load(&path, false)?;
        let server = Server::bind(config).await?;
        let plain = server.local_addr();
        let https = server.tls_local_addr();
        let reloader = server.reloader();
        let running = Running::spawn(server);
        Ok(TlsProxy {
            plain,
            https,
            reloader,
            config_path: path,
            running,
        })
    }

    /// The plain listener (the HTTPS one when there is no plain listener).
    pub fn plain_addr(&self) -> SocketAddr {
        self.plain
    }

    pub fn https_addr(&self) -> SocketAddr {
        self.https.expect("the proxy has no HTTPS listener")
    }

    /// `http://127.0.0.1:PORT{path}` on the plain listener.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.plain)
    }

    /// Writes `yaml` over the config file (the next reload reads it).
    pub fn rewrite_config(&self, yaml: &ConfigYaml) {
        std::fs::write(&self.config_path, yaml.to_string()).expect("write config.yaml");
    }

    /// What SIGHUP does: re-reads the config file and the certificate.
    pub fn reload(&self) -> Result<(), ReloadError> {
        self.reloader.reload(&self.config_path, false).map(|_| ())
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn shutdown(self) {
        self.running.shutdown().await;
    }
}

// ---------------------------------------------------------------------------
// Client: one TLS connection, kept open across requests.
// ---------------------------------------------------------------------------

/// The protocols a client offers by ALPN.
#[derive(Clone, Copy, Debug)]
pub enum Alpn {
    /// `h2`, then `http/1.1`, as a browser offers them.
    H2,
    /// `http/1.1` only.
    Http1,
    /// No ALPN extension at all.
    None,
}

/// What came back for one request, body read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// Reads `response` whole, within [`PATIENCE`].
    pub async fn read(response: http::Response<hyper::body::Incoming>) -> Answer {
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout(PATIENCE, body.collect())
            .await
            .expect("body did not finish in time")
            .expect("body failed")
            .to_bytes();
        Answer {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// A TLS connection to the proxy, speaking whatever ALPN chose.
pub struct TlsConn {
    addr: SocketAddr,
    /// The protocol ALPN settled on, if any.
    pub alpn: Option<Vec<u8>>,
    pub protocol: Option<ProtocolVersion>,
    /// The certificate the server presented (its leaf).
    pub peer_cert: CertificateDer<'static>,
    sender: Sender,
    driver: JoinHandle<()>,
}

impl TlsConn {
    /// Connects to `addr` trusting `ca` alone, with TLS 1.2 and 1.3 allowed.
    pub async fn open(addr: SocketAddr, ca: &TestCa, alpn: Alpn) -> TlsConn {
        Self::open_with(addr, client_config(ca, alpn, None))
            .await
            .unwrap_or_else(|e| panic!("TLS connection to {addr} failed: {e}"))
    }

    /// Connects with exactly this client configuration.
    pub async fn open_with(
        addr: SocketAddr,
        config: rustls::ClientConfig,
    ) -> std::io::Result<TlsConn> {
        let tcp = TcpStream::connect(addr).await?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = ServerName::try_from(HOST).expect("server name");
        let tls = tokio::time::timeout(PATIENCE, connector.connect(name, tcp))
            .await
            .map_err(|_| std::io::Error::other("TLS handshake timed out"))??;
        let (_, session) = tls.get_ref();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let protocol = session.protocol_version();
        let peer_cert = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .expect("the server sent no certificate")
            .clone()
            .into_owned();
        let io = TokioIo::new(tls);
        let (sender, driver) = if alpn.as_deref() == Some(b"h2") {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(std::io::Error::other)?;
            let driver = tokio::spawn(async move {
                let _ = conn.await;
            });
            (Sender::H2(sender), driver)
        } else {
            let (sender, conn) = http1::handshake(io).await.map_err(std::io::Error::other)?;
            let driver = tokio::spawn(async move {
                let _ = conn.await;
            });
            (Sender::H1(sender), driver)
        };
        Ok(TlsConn {
            addr,
            alpn,
            protocol,
            peer_cert,
            sender,
            driver,
        })
    }

    /// GET `path` with `headers` on this connection.
    pub async fn get(&mut self, path: &str) -> Answer {
        self.get_with(path, &[]).await
    }

    pub async fn get_with(&mut self, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut builder = Request::get(path);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        self.send(builder.body(Full::new(Bytes::new())).expect("request"))
            .await
    }

    /// Sends `req` (origin-form URI) on this connection and reads the whole answer.
    pub async fn send(&mut self, mut req: Request<Full<Bytes>>) -> Answer {
        let authority = format!("{HOST}:{}", self.addr.port());
        let sent = match &mut self.sender {
            Sender::H1(sender) => {
                req.headers_mut()
                    .entry(http::header::HOST)
                    .or_insert(authority.parse().expect("host header"));
                sender.ready().await.expect("HTTP/1.1 connection closed");
                tokio::time::timeout(PATIENCE, sender.send_request(req)).await
            }
            Sender::H2(sender) => {
                let pq = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
                *req.uri_mut() = format!("https://{authority}{pq}").parse().expect("URI");
                *req.version_mut() = Version::HTTP_2;
                sender.ready().await.expect("HTTP/2 connection closed");
                tokio::time::timeout(PATIENCE, sender.send_request(req)).await
            }
        };
        Answer::read(sent.expect("no answer in time").expect("request failed")).await
    }
}

impl Drop for TlsConn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A client configuration trusting `ca` alone; `versions` defaults to TLS 1.2 and 1.3.
pub fn client_config(
    ca: &TestCa,
    alpn: Alpn,
    versions: Option<&[&'static rustls::SupportedProtocolVersion]>,
) -> rustls::ClientConfig {
    sessiongate::tls::install_provider();
    let builder = match versions {
        Some(v) => rustls::ClientConfig::builder_with_protocol_versions(v),
        None => rustls::ClientConfig::builder(),
    };
    let mut config = builder
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    config.alpn_protocols = match alpn {
        Alpn::H2 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        Alpn::Http1 => vec![b"http/1.1".to_vec()],
        Alpn::None => Vec::new(),
    };
    config
}

/// One request on a fresh connection (HTTP/1.1).
pub async fn https_get(
    addr: SocketAddr,
    ca: &TestCa,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    TlsConn::open(addr, ca, Alpn::Http1)
        .await
        .get_with(path, headers)
        .await
}

// ---------------------------------------------------------------------------
// An HTTPS upstream.
// ---------------------------------------------------------------------------

/// An upstream on `127.0.0.1:0` behind TLS with `leaf`; answers every request
/// `200 secure upstream` and records the request headers.
pub struct TlsUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<HeaderMap>>>,
    accept: JoinHandle<()>,
}

impl TlsUpstream {
    pub async fn start(leaf: &Leaf) -> TlsUpstream {
        use rustls::pki_types::pem::PemObject as _;
        sessiongate::tls::install_provider();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes())
            .expect("leaf key");
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der.clone()], key)
            .expect("upstream TLS config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorded = seen.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    // A failed handshake (the proxy refusing our certificate) just ends here.
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req: Request<_>| {
                        recorded.lock().unwrap().push(req.headers().clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from_static(b"secure upstream"),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsUpstream { addr, seen, accept }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The headers of every request that got through, oldest first.
    pub fn requests(&self) -> Vec<HeaderMap> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
