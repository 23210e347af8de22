//! `upstream`: where requests go, and how long the proxy waits for it.

use std::path::PathBuf;
use std::time::Duration;

use http::Uri;
use rustls::pki_types::ServerName;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use super::source::{ConfigError, Source};
use super::values::{expanded, Dur, Text, Timeout};
use crate::chain::Chain;
use crate::tls::UpstreamTls;

#[derive(Clone, Debug)]
pub(crate) struct UpstreamConfig {
    /// Scheme and authority of the upstream, e.g. `http://127.0.0.1:3000`.
    pub(crate) uri: Uri,
    /// `host:port` to connect to (the scheme's default port filled in).
    pub(crate) connect_to: String,
    /// For `https://` upstreams: the verifying connector and the SNI name.
    pub(crate) tls: Option<UpstreamTls>,
    /// `upstream.ca_file`, for `check` and reloads.
    pub(crate) ca_file: Option<PathBuf>,
    /// A path prefix from the URL (empty when the URL has none).
    pub(crate) base_path: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) timeout: Duration,
    pub(crate) preserve_host: bool,
    /// `upstream.rewrite_redirects`: the upstream's own absolute URLs in `Location`,
    /// `Content-Location` and `Refresh` go to the client under its origin.
    pub(crate) rewrite_redirects: bool,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawUpstream {
    url: UpstreamUrl,
    ca_file: Option<Text>,
    connect_timeout: Timeout,
    timeout: Timeout,
    preserve_host: bool,
    rewrite_redirects: bool,
}

impl Default for RawUpstream {
    fn default() -> Self {
        RawUpstream {
            url: UpstreamUrl::parse("http://127.0.0.1:3000").expect("the default URL is valid"),
            ca_file: None,
            connect_timeout: Dur(Duration::from_secs(5)),
            timeout: Dur(Duration::from_secs(60)),
            preserve_host: false,
            rewrite_redirects: true,
        }
    }
}

impl RawUpstream {
    /// Builds the HTTPS client when the URL asks for one (reading `ca_file`).
    pub(super) fn validate(&self, src: &Source<'_>) -> Result<UpstreamConfig, ConfigError> {
        let ca_file = self.ca_file.as_ref().map(|p| src.path(&p.0));
        let tls = match &self.url.server_name {
            Some(server_name) => {
                let client = crate::tls::client_config(ca_file.as_deref()).map_err(|e| {
                    let key = match ca_file {
                        Some(_) => "upstream.ca_file",
                        None => "upstream.url",
                    };
                    src.error(key, Chain(&e).to_string())
                })?;
                Some(UpstreamTls {
                    connector: tokio_rustls::TlsConnector::from(client),
                    server_name: server_name.clone(),
                })
            }
            None if ca_file.is_some() => {
                return Err(src.error("upstream.ca_file", "ca_file needs an https:// upstream.url"))
            }
            None => None,
        };
        let uri = &self.url.uri;
        let connect_to = match uri.port_u16() {
            Some(_) => uri.authority().map_or_else(String::new, |a| a.to_string()),
            None => {
                let port = if tls.is_some() { 443 } else { 80 };
                format!("{}:{port}", uri.host().unwrap_or_default())
            }
        };
        Ok(UpstreamConfig {
            uri: uri.clone(),
            connect_to,
            tls,
            ca_file,
            base_path: self.url.base_path.clone(),
            connect_timeout: self.connect_timeout.0,
            timeout: self.timeout.0,
            preserve_host: self.preserve_host,
            rewrite_redirects: self.rewrite_redirects,
        })
    }
}

/// `upstream.url`: `http://` or `https://`, a host, an optional path prefix, no
/// query string.
#[derive(Clone)]
struct UpstreamUrl {
    /// As written (variables expanded), for `check`.
    text: String,
    /// Scheme and authority, path `/`.
    uri: Uri,
    /// The path without its trailing `/` (empty when the URL has none).
    base_path: String,
    /// The name the certificate must carry, for an `https://` URL.
    server_name: Option<ServerName<'static>>,
}

impl UpstreamUrl {
    fn parse(text: &str) -> Result<UpstreamUrl, &'static str> {
        let url: Uri = text
            .parse()
            .map_err(|_| "invalid URL (expected e.g. http://127.0.0.1:3000)")?;
        let https = match url.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err("the URL must start with http:// or https://"),
        };
        let authority = url.authority().cloned().ok_or("the URL has no host")?;
        if url.query().is_some() {
            return Err("the URL must not have a query string");
        }
        let uri = Uri::builder()
            .scheme(if https { "https" } else { "http" })
            .authority(authority)
            .path_and_query("/")
            .build()
            .map_err(|_| "invalid URL")?;
        let server_name = if https {
            let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
            let name = ServerName::try_from(host.to_owned())
                .map_err(|_| "the host is not a valid TLS server name")?;
            Some(name)
        } else {
            None
        };
        Ok(UpstreamUrl {
            text: text.to_owned(),
            base_path: url.path().trim_end_matches('/').to_owned(),
            uri,
            server_name,
        })
    }
}

impl<'de> Deserialize<'de> for UpstreamUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        UpstreamUrl::parse(&expanded(d)?).map_err(de::Error::custom)
    }
}

impl Serialize for UpstreamUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_split_into_origin_and_path_prefix() {
        let url = UpstreamUrl::parse("https://app.internal:8443/legacy/").unwrap();
        assert_eq!(url.uri.to_string(), "https://app.internal:8443/");
        assert_eq!(url.base_path, "/legacy");
        assert!(url.server_name.is_some());
        assert!(UpstreamUrl::parse("http://app")
            .unwrap()
            .server_name
            .is_none());
    }

    #[test]
    fn a_url_the_proxy_cannot_use_says_why() {
        for (url, why) in [
            ("ftp://app", "http:// or https://"),
            ("http://app/?x=1", "query string"),
            ("/relative", "http:// or https://"),
            ("not a url", "invalid URL"),
        ] {
            let err = UpstreamUrl::parse(url)
                .err()
                .unwrap_or_else(|| panic!("{url}"));
            assert!(err.contains(why), "{url}: {err}");
        }
    }
}
