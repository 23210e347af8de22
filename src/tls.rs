//! TLS: the HTTPS listener's certificate (reloadable), and the client side for
//! `https://` upstreams.
//!
//! The crypto provider is aws-lc-rs, installed once at start: it is rustls's
//! default, builds on Debian with gcc alone, is the faster of the two providers for
//! TLS 1.3 handshakes and AES-GCM, and offers the X25519MLKEM768 hybrid key exchange.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the certificate chain {path}")]
    Cert {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCert { path: PathBuf },
    #[error("cannot read the private key {path} (PKCS#8, PKCS#1 or SEC1 PEM)")]
    Key {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the certificate and key in {cert} and {key} do not form a usable pair")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("cannot read the CA file {path}")]
    Ca {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("no usable CA certificate (system roots or upstream.ca_file)")]
    NoRoots,
    #[error("cannot load the system's CA certificates")]
    SystemRoots(#[source] io::Error),
}

/// Installs aws-lc-rs as the process's crypto provider (idempotent).
pub fn install_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Builds the HTTPS listener's configuration: TLS 1.2 and 1.3, ALPN `h2` then
/// `http/1.1`.
pub(crate) fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    install_provider();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|source| TlsError::Cert {
            path: cert.to_owned(),
            source,
        })?
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Cert {
            path: cert.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCert {
            path: cert.to_owned(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key {
        path: key.to_owned(),
        source,
    })?;
    let mut config = ServerConfig::builder_with_protocol_versions(&[
        &rustls::version::TLS13,
        &rustls::version::TLS12,
    ])
    .with_no_client_auth()
    .with_single_cert(chain, key_der)
    .map_err(|source| TlsError::Pair {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The listener's certificate, swapped whole on reload: new handshakes use the new
/// one, open connections keep theirs.
pub(crate) struct ServerCert {
    current: ArcSwap<ServerConfig>,
}

impl ServerCert {
    pub(crate) fn new(config: Arc<ServerConfig>) -> ServerCert {
        ServerCert {
            current: ArcSwap::new(config),
        }
    }

    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }

    /// Loads the files again; on error the old certificate stays in use.
    pub(crate) fn reload(&self, cert: &Path, key: &Path) -> Result<(), TlsError> {
        let config = server_config(cert, key)?;
        self.current.store(config);
        Ok(())
    }
}

/// The client configuration for `https://` upstreams: verified against
/// `ca_file` when given, else against the system's roots; ALPN `http/1.1`.
pub(crate) fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    install_provider();
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path).map_err(|source| TlsError::Ca {
                path: path.to_owned(),
                source,
            })?;
            for cert in certs {
                let cert = cert.map_err(|source| TlsError::Ca {
                    path: path.to_owned(),
                    source,
                })?;
                let _ = roots.add(cert);
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                if let Some(e) = found.errors.into_iter().next() {
                    return Err(TlsError::SystemRoots(io::Error::other(e.to_string())));
                }
            }
            let _ = roots.add_parsable_certificates(found.certs);
        }
    }
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    let mut config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// TLS to an `https://` upstream: the verifying connector and the SNI name.
#[derive(Clone)]
pub(crate) struct UpstreamTls {
    pub(crate) connector: tokio_rustls::TlsConnector,
    pub(crate) server_name: rustls::pki_types::ServerName<'static>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}
