//! `assertion`: the signed assertion the upstream can verify, and `events`: where
//! session lifecycle events go.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use serde::{Deserialize, Serialize};

use super::source::{ConfigError, Source};
use super::values::{AtLeast, Dur, Secret, Text, Timeout};
use crate::assertion::{Alg, Signer};
use crate::headers::HeaderNames;

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAssertion {
    header: Option<Text>,
    alg: Alg,
    keys: Vec<Secret>,
    ttl: Timeout,
}

impl Default for RawAssertion {
    fn default() -> Self {
        RawAssertion {
            header: None,
            alg: Alg::HS256,
            keys: Vec::new(),
            ttl: Dur(Duration::from_secs(60)),
        }
    }
}

impl RawAssertion {
    /// The signer, when `header` is set. The header must carry the session
    /// header prefix: the proxy then strips a client's copy, as it does every
    /// header under the prefix, and never lets one through from the upstream.
    pub(super) fn validate(
        &self,
        src: &Source<'_>,
        names: &HeaderNames,
    ) -> Result<Option<Arc<Signer>>, ConfigError> {
        let Some(Text(header)) = &self.header else {
            return Ok(None);
        };
        let lower = header.to_ascii_lowercase();
        let name = HeaderName::from_bytes(lower.as_bytes()).map_err(|_| {
            src.error(
                "assertion.header",
                format!("{header:?} is not a header name"),
            )
        })?;
        let taken = [
            &names.id,
            &names.new,
            &names.data,
            &names.set,
            &names.remove,
            &names.destroy,
            &names.regenerate,
            &names.destroy_others,
            &names.persist,
        ];
        if !lower.replace('_', "-").starts_with(&names.prefix) || lower.len() == names.prefix.len()
        {
            return Err(src.error(
                "assertion.header",
                format!(
                    "{header} does not begin with the session header prefix ({}): the proxy strips \
                     a client's headers under that prefix, so only a name under it cannot be forged \
                     by a client (e.g. {}Assertion)",
                    names.prefix, names.prefix
                ),
            ));
        }
        if taken.contains(&&name) {
            return Err(src.error(
                "assertion.header",
                format!("{header} is one of the session headers"),
            ));
        }
        if self.keys.is_empty() {
            return Err(src.error(
                "assertion.keys",
                "no key: HS256 takes secrets of at least 32 bytes (`sessiongate gen-secret`), \
                 EdDSA PEM private keys (`openssl genpkey -algorithm ed25519`)",
            ));
        }
        let keys: Vec<&str> = self.keys.iter().map(|k| k.0.as_str()).collect();
        Signer::new(name, self.alg, &keys, self.ttl.0)
            .map(|s| Some(Arc::new(s)))
            .map_err(|(i, e)| src.error(&format!("assertion.keys[{i}]"), e.to_string()))
    }
}

/// `events`: where lifecycle events go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventsConfig {
    /// `http://` or `https://` URL that receives POSTed batches.
    pub webhook: Option<http::Uri>,
    /// With the Redis store: the stream key events are added to.
    pub redis_stream: Option<String>,
    pub batch: usize,
    pub flush_interval: Duration,
    pub queue: usize,
}

impl EventsConfig {
    pub fn enabled(&self) -> bool {
        self.webhook.is_some() || self.redis_stream.is_some()
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawEvents {
    /// Often holds a token: redacted by `check`, never logged.
    webhook: Option<Secret>,
    redis_stream: Option<Text>,
    batch: AtLeast<1>,
    flush_interval: Timeout,
    queue: AtLeast<1>,
}

impl Default for RawEvents {
    fn default() -> Self {
        RawEvents {
            webhook: None,
            redis_stream: None,
            batch: AtLeast(100),
            flush_interval: Dur(Duration::from_secs(1)),
            queue: AtLeast(10_000),
        }
    }
}

impl RawEvents {
    pub(super) fn validate(
        &self,
        src: &Source<'_>,
        redis: bool,
    ) -> Result<EventsConfig, ConfigError> {
        let webhook = match &self.webhook {
            None => None,
            Some(Secret(url)) => {
                let uri: http::Uri = url
                    .parse()
                    .map_err(|_| src.error("events.webhook", "not a URL"))?;
                let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
                if !scheme_ok || uri.host().is_none() {
                    return Err(src.error(
                        "events.webhook",
                        "needs an http:// or https:// URL with a host",
                    ));
                }
                Some(uri)
            }
        };
        let redis_stream =
            match &self.redis_stream {
                None => None,
                Some(_) if !redis => return Err(src.error(
                    "events.redis_stream",
                    "needs store.type: redis (the stream is written to the session store's Redis)",
                )),
                Some(Text(key)) if key.is_empty() => {
                    return Err(src.error("events.redis_stream", "the stream key is empty"))
                }
                Some(Text(key)) => Some(key.clone()),
            };
        Ok(EventsConfig {
            webhook,
            redis_stream,
            batch: self.batch.0,
            flush_interval: self.flush_interval.0,
            queue: self.queue.0,
        })
    }
}
