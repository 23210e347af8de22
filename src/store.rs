//! Opens the session store the configuration names (`store.type`) and hands it a
//! reloaded configuration's timeouts and bounds. Above both `config` and `session`:
//! the stores take the settings types they define, built here from a `Config`.

use std::time::Duration;

use crate::config::{Config, StoreType};
use crate::session::memory::{MemorySettings, MemoryStore, SweepGuard};
use crate::session::snapshot::{self, Snapshots};
use crate::session::{RedisSettings, RedisStore, Store, StoreError};

/// How often the memory store looks for expired sessions.
const SWEEP_PERIOD: Duration = Duration::from_secs(1);

/// Background work a store needs while the proxy runs (the memory store's sweep
/// and snapshots). Stopped, and a final snapshot written, by
/// [`StoreTasks::shutdown`].
pub(crate) struct StoreTasks {
    /// The memory store's expiry sweep; stops when dropped.
    sweeper: Option<SweepGuard>,
    /// The memory store's periodic snapshots, when `store.snapshot` is set.
    snapshots: Option<Snapshots>,
}

impl StoreTasks {
    /// Stops the background work and saves what must survive a restart. Called
    /// after the last request finished, so the final snapshot misses nothing.
    pub(crate) async fn shutdown(self) {
        drop(self.sweeper);
        if let Some(snapshots) = self.snapshots {
            snapshots.shutdown().await;
        }
    }
}

fn memory_settings(config: &Config) -> MemorySettings {
    let s = &config.session;
    MemorySettings {
        idle_timeout: s.idle_timeout,
        absolute_timeout: s.absolute_timeout,
        max_sessions: s.max_sessions,
        max_data_bytes: s.max_data_bytes,
        regenerate_grace: s.regenerate_grace,
    }
}

fn redis_settings(config: &Config) -> RedisSettings {
    let s = &config.session;
    RedisSettings {
        redis: config.store.redis.clone(),
        idle_timeout: s.idle_timeout,
        absolute_timeout: s.absolute_timeout,
        max_data_bytes: s.max_data_bytes,
        regenerate_grace: s.regenerate_grace,
    }
}

/// Opens the configured store and starts its background work: for the memory
/// store, restores the snapshot first.
pub(crate) async fn open(config: &Config) -> Result<(Store, StoreTasks), StoreError> {
    match config.store.kind {
        StoreType::Memory => {
            let store = MemoryStore::new(memory_settings(config));
            let snapshots = match &config.store.snapshot {
                Some(path) => {
                    let (restoring, file) = (store.clone(), path.clone());
                    tokio::task::spawn_blocking(move || snapshot::restore(&restoring, &file))
                        .await
                        .map_err(|e| StoreError::Unavailable(Box::new(e)))??;
                    Some(Snapshots::spawn(
                        store.clone(),
                        path.clone(),
                        config.store.snapshot_interval,
                    ))
                }
                None => None,
            };
            let sweeper = store.spawn_sweeper(SWEEP_PERIOD);
            Ok((
                Store::Memory(store),
                StoreTasks {
                    sweeper: Some(sweeper),
                    snapshots,
                },
            ))
        }
        StoreType::Redis => {
            if config.store.snapshot.is_some() {
                tracing::warn!(
                    "store.snapshot is for the memory store; ignored with store.type: redis"
                );
            }
            let store = RedisStore::open(&redis_settings(config)).await?;
            Ok((
                Store::Redis(store),
                StoreTasks {
                    sweeper: None,
                    snapshots: None,
                },
            ))
        }
    }
}

/// Applies a reloaded configuration's session timeouts and bounds to the running
/// store.
pub(crate) fn reconfigure(store: &Store, config: &Config) {
    match store {
        Store::Memory(m) => m.reconfigure(memory_settings(config)),
        Store::Redis(r) => r.reconfigure(&redis_settings(config)),
    }
}
