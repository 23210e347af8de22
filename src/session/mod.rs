//! Sessions: the ID, the data and its form encoding, write-back changes, and the
//! store interface every store implements.

mod data;
pub mod memory;

use std::future::Future;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::HeaderValue;

pub use data::{decode_component, is_true, Changes, ChangesError, SessionData};
pub use memory::MemoryStore;

/// A session ID: 32 bytes from the OS CSPRNG. Shown as 43 base64url characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId([u8; 32]);

impl SessionId {
    pub fn random() -> SessionId {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("the operating system's random source failed");
        SessionId(bytes)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> SessionId {
        SessionId(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Decodes the 43-character base64url form; anything else is `None`.
    pub fn decode(text: &[u8]) -> Option<SessionId> {
        if text.len() != 43 {
            return None;
        }
        let mut bytes = [0u8; 32];
        match URL_SAFE_NO_PAD.decode_slice(text, &mut bytes) {
            Ok(32) => {}
            _ => return None,
        }
        // Reject non-canonical encodings (trailing bits set) so one ID has one form.
        let canonical = SessionId(bytes);
        let mut again = String::with_capacity(43);
        canonical.encode_into(&mut again);
        (again.as_bytes() == text).then_some(canonical)
    }

    pub fn encode_into(&self, out: &mut String) {
        URL_SAFE_NO_PAD.encode_string(self.0, out);
    }

    pub fn to_header_value(&self) -> HeaderValue {
        let mut s = String::with_capacity(43);
        self.encode_into(&mut s);
        HeaderValue::from_str(&s).expect("base64url is a valid header value")
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = String::with_capacity(43);
        self.encode_into(&mut s);
        f.write_str(&s)
    }
}

/// Never prints the ID itself: debug output can end up in logs.
impl std::fmt::Debug for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionId(..)")
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A live session as the request path sees it.
#[derive(Clone, Debug)]
pub struct SessionView {
    /// `X-Session-Data`, or `None` when the session holds no data.
    pub data: Option<HeaderValue>,
    /// Creation time (ms since the epoch), for the remaining cookie lifetime.
    pub created_ms: u64,
}

/// The result of looking a session up.
#[derive(Clone, Debug)]
pub enum Lookup {
    Found(SessionView),
    /// The ID was regenerated moments ago (within `regenerate_grace`).
    Regenerated,
    Missing,
}

/// What applying a response's write-back did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Changes stored (possibly none).
    Stored,
    /// Changes stored and the data moved to a new ID.
    Regenerated(SessionId),
    /// The write would exceed `max_data_bytes`; the session keeps its data.
    TooLarge { bytes: usize },
    /// The session is gone (expired, evicted or destroyed meanwhile).
    Missing,
}

/// Store failures (a remote store being unreachable or slow).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("session store unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("session store timed out")]
    Timeout,
}

/// The operations the request path needs from a store. Implemented by every store;
/// the conformance suite in `tests/` runs against each.
pub trait SessionStore: Send + Sync + 'static {
    /// Looks `id` up, refreshing its idle timeout and marking it as returned.
    fn load(&self, id: &SessionId) -> impl Future<Output = Result<Lookup, StoreError>> + Send;
    /// Creates a session holding `data`, evicting one if the store is full.
    fn create(
        &self,
        data: SessionData,
    ) -> impl Future<Output = Result<SessionId, StoreError>> + Send;
    /// Applies set/remove changes and, when asked, regeneration.
    fn apply(
        &self,
        id: &SessionId,
        changes: &Changes,
    ) -> impl Future<Output = Result<Applied, StoreError>> + Send;
    /// Deletes the session; `true` when it existed.
    fn destroy(&self, id: &SessionId) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// The session's data and times, without touching it (admin API).
    fn inspect(
        &self,
        id: &SessionId,
    ) -> impl Future<Output = Result<Option<SessionInfo>, StoreError>> + Send;
    /// Destroys every session whose data has `key` = `value`; returns how many.
    fn revoke(
        &self,
        key: &str,
        value: &str,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// The IDs of sessions whose data has `key` = `value` (admin API).
    fn find(
        &self,
        key: &str,
        value: &str,
    ) -> impl Future<Output = Result<Vec<SessionId>, StoreError>> + Send;
    /// Number of live sessions (may include some expired but not yet swept).
    fn count(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// Answers when the store is reachable (readiness).
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// A session as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    pub data: SessionData,
    /// Unix milliseconds.
    pub created_ms: u64,
    /// Unix milliseconds (to the second).
    pub last_seen_ms: u64,
}

/// The store the proxy runs with, chosen by `store.type`. The request path talks
/// to this enum only, so it never knows which store answers.
#[derive(Clone)]
pub enum Store {
    Memory(MemoryStore),
}

impl SessionStore for Store {
    async fn load(&self, id: &SessionId) -> Result<Lookup, StoreError> {
        match self {
            Store::Memory(s) => s.load(id).await,
        }
    }
    async fn create(&self, data: SessionData) -> Result<SessionId, StoreError> {
        match self {
            Store::Memory(s) => s.create(data).await,
        }
    }
    async fn apply(&self, id: &SessionId, changes: &Changes) -> Result<Applied, StoreError> {
        match self {
            Store::Memory(s) => s.apply(id, changes).await,
        }
    }
    async fn destroy(&self, id: &SessionId) -> Result<bool, StoreError> {
        match self {
            Store::Memory(s) => s.destroy(id).await,
        }
    }
    async fn inspect(&self, id: &SessionId) -> Result<Option<SessionInfo>, StoreError> {
        match self {
            Store::Memory(s) => s.inspect(id).await,
        }
    }
    async fn revoke(&self, key: &str, value: &str) -> Result<u64, StoreError> {
        match self {
            Store::Memory(s) => s.revoke(key, value).await,
        }
    }
    async fn find(&self, key: &str, value: &str) -> Result<Vec<SessionId>, StoreError> {
        match self {
            Store::Memory(s) => s.find(key, value).await,
        }
    }
    async fn count(&self) -> Result<u64, StoreError> {
        match self {
            Store::Memory(s) => s.count().await,
        }
    }
    async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Memory(s) => s.ping().await,
        }
    }
}

/// Background work a store needs while the proxy runs (the memory store's sweep;
/// snapshots). Stopped, and a final snapshot written, by [`StoreTasks::shutdown`].
pub struct StoreTasks {
    _sweeper: Option<memory::SweepGuard>,
}

impl StoreTasks {
    /// Stops the background work and saves what must survive a restart.
    pub async fn shutdown(self) {}
}

/// Opens the configured store and starts its background work.
pub async fn open(config: &crate::config::Config) -> Result<(Store, StoreTasks), StoreError> {
    let s = &config.session;
    let store = MemoryStore::new(memory::MemorySettings {
        idle_timeout: s.idle_timeout,
        absolute_timeout: s.absolute_timeout,
        max_sessions: s.max_sessions,
        max_data_bytes: s.max_data_bytes,
        regenerate_grace: s.regenerate_grace,
    });
    let sweeper = store.spawn_sweeper(std::time::Duration::from_secs(1));
    Ok((
        Store::Memory(store),
        StoreTasks {
            _sweeper: Some(sweeper),
        },
    ))
}
