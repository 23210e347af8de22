//! Log output: `pretty` for people, `json` (one object per line, stable field
//! names) for collectors. `RUST_LOG`, when set, overrides `log.level`; otherwise the
//! level follows the configuration, also across reloads.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::config::{LogConfig, LogFormat};

/// Changes the level filter after start (on reload).
#[derive(Clone)]
pub struct LevelHandle {
    handle: Option<reload::Handle<EnvFilter, Registry>>,
}

impl LevelHandle {
    /// Applies `level` unless `RUST_LOG` decides.
    pub fn set(&self, level: &str) {
        if std::env::var_os("RUST_LOG").is_some() {
            return;
        }
        if let (Some(handle), Ok(filter)) = (&self.handle, EnvFilter::try_new(level)) {
            let _ = handle.reload(filter);
        }
    }
}

/// Installs the global subscriber. Call once, early in `main`.
pub fn init(cfg: &LogConfig) -> LevelHandle {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match cfg.format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    LevelHandle {
        handle: installed.is_ok().then_some(handle),
    }
}
