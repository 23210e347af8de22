//! Opens the session store the configuration names (`store.type`). Above both
//! `config` and `session`: the stores take the types they define, built here
//! from a `Config`. A reload needs nothing of the store: the session policy
//! travels in each request's settings.

use std::time::Duration;

use crate::config::{Config, StoreType};
use crate::session::memory::{MemoryStore, SweepGuard};
use crate::session::snapshot::{self, Snapshots};
use crate::session::{EventSink, Policy, RedisStore, Store, StoreError};

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

/// Opens the configured store and starts its background work: for the memory
/// store, restores the snapshot first. `workers`: the proxy's worker threads,
/// which the Redis store sizes its connections by.
pub(crate) async fn open(
    config: &Config,
    events: EventSink,
    workers: usize,
) -> Result<(Store, StoreTasks), StoreError> {
    let user_key = config.session.user_key.as_deref();
    match config.store.kind {
        StoreType::Memory => {
            let store = MemoryStore::with(user_key, events);
            let snapshots = match &config.store.snapshot {
                Some(path) => {
                    let (restoring, file) = (store.clone(), path.clone());
                    // Under the policy the proxy starts with.
                    let policy = Policy::from(&config.session);
                    tokio::task::spawn_blocking(move || {
                        snapshot::restore(&restoring, &file, &policy)
                    })
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
            let store = RedisStore::open(&config.store.redis, user_key, events, workers).await?;
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
