//! Sessions: the ID, the data and its form encoding, write-back changes, and the
//! store interface every store implements.

mod data;
pub mod memory;

use std::future::Future;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::HeaderValue;

pub use data::{is_true, Changes, ChangesError, SessionData};
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
}
