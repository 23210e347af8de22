//! `upstream` and `upstreams`: where requests go, and how long the proxy waits.
//!
//! The single `upstream` block is the group named `default` with one server;
//! `upstreams` names groups of several servers (`DESIGN.md` §11).

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

/// One server of a group.
#[derive(Clone, Debug)]
pub(crate) struct ServerConfig {
    /// The URL as written, naming the server in metrics, logs and the admin API.
    pub(crate) name: String,
    /// Scheme and authority of the server, e.g. `http://127.0.0.1:3000`.
    pub(crate) uri: Uri,
    /// `host:port` to connect to (the scheme's default port filled in).
    pub(crate) connect_to: String,
    /// For `https://` servers: the verifying connector and the SNI name.
    pub(crate) tls: Option<UpstreamTls>,
    /// A path prefix from the URL (empty when the URL has none).
    pub(crate) base_path: String,
    /// Its share of new visitors, against the group's other servers.
    pub(crate) weight: u32,
    /// Keeps the sessions it has; gets no new ones.
    pub(crate) drain: bool,
}

/// How a group picks a server for a request without affinity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Balance {
    RoundRobin,
    LeastConn,
}

/// `health`: active checks of each server of a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HealthConfig {
    pub(crate) path: String,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    /// Good checks in a row that make an unhealthy server healthy again.
    pub(crate) healthy: u32,
    /// Failed checks (or connection failures) in a row that make it unhealthy.
    pub(crate) unhealthy: u32,
}

/// A group of servers and how requests reach them.
#[derive(Clone, Debug)]
pub(crate) struct UpstreamConfig {
    pub(crate) name: String,
    pub(crate) servers: Vec<ServerConfig>,
    pub(crate) balance: Balance,
    /// `affinity: session`: a session stays on the server that first served it.
    pub(crate) affinity: bool,
    pub(crate) health: Option<HealthConfig>,
    /// `ca_file`, for `check` and reloads.
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) connect_timeout: Duration,
    pub(crate) timeout: Duration,
    pub(crate) preserve_host: bool,
    /// `rewrite_redirects`: the upstream's own absolute URLs in `Location`,
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
    /// The group `default`, of the one server `url` names.
    pub(super) fn validate(&self, src: &Source<'_>) -> Result<UpstreamConfig, ConfigError> {
        let ca_file = self.ca_file.as_ref().map(|p| src.path(&p.0));
        let server = server(src, "upstream", &self.url, 1, false, ca_file.as_deref())?;
        Ok(UpstreamConfig {
            name: "default".to_owned(),
            servers: vec![server],
            balance: Balance::RoundRobin,
            affinity: false,
            health: None,
            ca_file,
            connect_timeout: self.connect_timeout.0,
            timeout: self.timeout.0,
            preserve_host: self.preserve_host,
            rewrite_redirects: self.rewrite_redirects,
        })
    }
}

/// A server from its URL; builds the HTTPS client when the URL asks for one
/// (reading `ca_file`). `at`: the key of the section, for errors.
pub(super) fn server(
    src: &Source<'_>,
    at: &str,
    url: &UpstreamUrl,
    weight: u32,
    drain: bool,
    ca_file: Option<&std::path::Path>,
) -> Result<ServerConfig, ConfigError> {
    let tls = match &url.server_name {
        Some(server_name) => {
            let client = crate::tls::client_config(ca_file).map_err(|e| {
                let key = match ca_file {
                    Some(_) => format!("{at}.ca_file"),
                    None => format!("{at}.url"),
                };
                src.error(&key, Chain(&e).to_string())
            })?;
            Some(UpstreamTls {
                connector: tokio_rustls::TlsConnector::from(client),
                server_name: server_name.clone(),
            })
        }
        None if ca_file.is_some() => {
            let message = match at {
                "upstream" => "ca_file needs an https:// upstream.url".to_owned(),
                _ => format!("ca_file needs https:// servers in {at}"),
            };
            return Err(src.error(&format!("{at}.ca_file"), message));
        }
        None => None,
    };
    let uri = &url.uri;
    let connect_to = match uri.port_u16() {
        Some(_) => uri.authority().map_or_else(String::new, |a| a.to_string()),
        None => {
            let port = if tls.is_some() { 443 } else { 80 };
            format!("{}:{port}", uri.host().unwrap_or_default())
        }
    };
    Ok(ServerConfig {
        name: url.text.clone(),
        uri: uri.clone(),
        connect_to,
        tls,
        base_path: url.base_path.clone(),
        weight,
        drain,
    })
}

/// `upstream.url`: `http://` or `https://`, a host, an optional path prefix, no
/// query string.
#[derive(Clone)]
pub(super) struct UpstreamUrl {
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
    pub(super) fn parse(text: &str) -> Result<UpstreamUrl, &'static str> {
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
