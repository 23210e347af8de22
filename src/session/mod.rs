//! Sessions: the ID, the data and its form encoding, write-back changes, the
//! [`Policy`] a store enforces, the store interface every store implements (with
//! the [`SessionCounters`] each store keeps), and [`open`], which picks the store
//! `store.type` names: [`memory`] (with [`snapshot`]s when `store.snapshot` is
//! set) or [`redis`].

mod counters;
mod data;
pub mod events;
pub mod memory;
mod near;
pub(crate) mod redis;
pub mod snapshot;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::HeaderValue;

pub use self::redis::RedisStore;
pub use counters::{SessionCount, SessionCounters};
pub(crate) use data::json_string;
pub use data::{
    affinity_key, decode_component, decode_segment, encoded, encoded_value, form_to_json, is_false,
    is_true, split_reserved, user_of, value_of, Changes, ChangesError, SessionData, LOGIN_IP_KEY,
    LOGIN_UA_KEY, PERSIST_KEY, PERSIST_KEY_ENCODED,
};
pub use events::{Event, EventCounters, EventKind, EventSink, Reason};
pub(crate) use memory::MemoryStore;

/// A session ID: 32 bytes from the OS CSPRNG. Shown as 43 base64url characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId([u8; 32]);

/// OS randomness fetched 1 KiB at a time per thread, so creating a session is not a
/// system call each time. Bytes handed out are wiped from the buffer.
struct RandomBuffer {
    bytes: [u8; 1024],
    used: usize,
}

thread_local! {
    static RANDOM: std::cell::RefCell<RandomBuffer> = const {
        std::cell::RefCell::new(RandomBuffer { bytes: [0; 1024], used: 1024 })
    };
}

impl SessionId {
    pub fn random() -> SessionId {
        RANDOM.with_borrow_mut(|r| {
            if r.used + 32 > r.bytes.len() {
                getrandom::fill(&mut r.bytes).expect("the operating system's random source failed");
                r.used = 0;
            }
            let taken = &mut r.bytes[r.used..r.used + 32];
            let mut id = [0u8; 32];
            id.copy_from_slice(taken);
            taken.fill(0);
            r.used += 32;
            SessionId(id)
        })
    }

    /// A fresh ID that starts with the three bytes `head`, whose four base64
    /// characters are its [`SessionId::head`] (its hash tag on a Redis
    /// Cluster, so its slot): the other 232 bits are drawn anew.
    pub(crate) fn random_under(head: [u8; 3]) -> SessionId {
        let mut id = SessionId::random();
        id.0[..3].copy_from_slice(&head);
        id
    }

    /// The ID's first three bytes (see [`SessionId::random_under`]).
    pub(crate) fn first_bytes(&self) -> [u8; 3] {
        [self.0[0], self.0[1], self.0[2]]
    }

    pub(crate) fn from_bytes(bytes: [u8; 32]) -> SessionId {
        SessionId(bytes)
    }

    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
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

    /// A short, one-way tag of the ID for logs and events: the first 8 bytes of
    /// its SHA-256, in hex. Lets an operator follow one visitor without anything
    /// that could be turned into a cookie.
    pub fn tag(&self) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(self.0);
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    pub(crate) fn encode_into(&self, out: &mut String) {
        URL_SAFE_NO_PAD.encode_string(self.0, out);
    }

    /// The first four characters of the encoded ID, which are its first three
    /// bytes: the Redis store's hash tag for the session's keys.
    pub(crate) fn head(&self) -> [u8; 4] {
        let mut head = [0u8; 4];
        let written = URL_SAFE_NO_PAD.encode_slice(&self.0[..3], &mut head);
        debug_assert_eq!(written.ok(), Some(4));
        head
    }

    pub(crate) fn to_header_value(self) -> HeaderValue {
        let mut s = String::with_capacity(43);
        self.encode_into(&mut s);
        // One allocation: the header value takes the string's buffer.
        HeaderValue::from_maybe_shared(bytes::Bytes::from(s))
            .expect("base64url is a valid header value")
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
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The rules a store enforces: timeouts, the cap, the size bound and the grace
/// of a regenerated ID. One value, built from `session.*` and carried in the
/// settings a request is served under, so a reload changes all of it at once:
/// no request sees a new idle timeout with an old absolute one. Each store call
/// that judges a session is handed the policy of the request making it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Unused this long, a session expires; each use starts it again.
    pub idle_timeout: Duration,
    /// This long after its creation a session expires, however much it is used.
    pub absolute_timeout: Duration,
    /// The memory store's hard cap (Redis is sized by its own `maxmemory`).
    pub max_sessions: usize,
    /// The largest encoded data a session holds; a write over it is refused.
    pub max_data_bytes: usize,
    /// How long after a regeneration the old ID is still recognised.
    pub regenerate_grace: Duration,
    /// `session.max_per_user`: a login beyond it ends the user's least
    /// recently used session.
    pub max_per_user: Option<usize>,
}

impl Policy {
    /// The encoded size of `data`, when it is over `max_data_bytes`.
    pub fn refuses(&self, data: &SessionData) -> Option<usize> {
        let bytes = data.encoded_len();
        (bytes > self.max_data_bytes).then_some(bytes)
    }
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

/// What storing a new session did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inserted {
    Stored,
    /// The ID is taken already; nothing stored.
    Taken,
    /// The data is over `max_data_bytes`; nothing stored.
    TooLarge {
        bytes: usize,
    },
}

/// What creating a session under a fresh ID did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    Stored(SessionId),
    /// The data is over `max_data_bytes`; nothing stored.
    TooLarge {
        bytes: usize,
    },
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
    /// Settings that can never work (a malformed Redis URL), found at start.
    #[error("invalid session store settings")]
    Misconfigured(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The snapshot could not be read, nor moved aside: starting would overwrite it
    /// at the next save.
    #[error("cannot move the unreadable snapshot {} aside", path.display())]
    Snapshot {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// The same failure again, for each of several requests that one call
    /// answered: a timeout stays a timeout; any other is unavailable, with the
    /// whole chain of causes as its message.
    pub(crate) fn copied(&self) -> StoreError {
        let message = match self {
            StoreError::Timeout => return StoreError::Timeout,
            StoreError::Unavailable(source) => crate::chain::Chain(source.as_ref()).to_string(),
            e => crate::chain::Chain(e).to_string(),
        };
        StoreError::Unavailable(message.into())
    }
}

/// The operations the request path needs from a store. Implemented by every store;
/// the conformance suite in `tests/` runs against each.
///
/// A session lives until the deadline its last use set (the idle timeout from
/// then, capped by the absolute timeout, under that use's policy); a request's
/// policy can end it sooner, never revive it. So a reload applies to every
/// session at its next use, on every store alike.
pub trait SessionStore: Send + Sync + 'static {
    /// Looks `id` up, refreshing its idle timeout and marking it as returned.
    fn load(
        &self,
        id: &SessionId,
        policy: &Policy,
    ) -> impl Future<Output = Result<Lookup, StoreError>> + Send;
    /// Stores a new session under `id` holding `data`, evicting one if the store is
    /// full. Nothing is stored when `id` is taken already or `data` is over
    /// `max_data_bytes`.
    ///
    /// The request path picks a new session's ID when the request arrives (the
    /// upstream sees it) and stores it only once the response that sends its cookie
    /// is on its way, so a request that fails leaves nothing behind.
    fn insert(
        &self,
        id: &SessionId,
        data: SessionData,
        policy: &Policy,
    ) -> impl Future<Output = Result<Inserted, StoreError>> + Send;
    /// A fresh ID for a new session (see [`SessionId::random`]); a store may
    /// draw it so that the sessions it creates together are stored together.
    fn new_id(&self) -> SessionId {
        SessionId::random()
    }
    /// Creates a session holding `data` under a fresh random ID.
    fn create(
        &self,
        data: SessionData,
        policy: &Policy,
    ) -> impl Future<Output = Result<Created, StoreError>> + Send {
        async move {
            // A taken ID has odds of 2^-256; a second try makes it 2^-512.
            for _ in 0..3 {
                let id = self.new_id();
                match self.insert(&id, data.clone(), policy).await? {
                    Inserted::Stored => return Ok(Created::Stored(id)),
                    Inserted::TooLarge { bytes } => return Ok(Created::TooLarge { bytes }),
                    Inserted::Taken => {}
                }
            }
            Err(StoreError::Unavailable(
                "three random session IDs were all taken".into(),
            ))
        }
    }
    /// Applies set/remove changes and, when asked, regeneration.
    fn apply(
        &self,
        id: &SessionId,
        changes: &Changes,
        policy: &Policy,
    ) -> impl Future<Output = Result<Applied, StoreError>> + Send;
    /// Deletes the session; `true` when it existed.
    fn destroy(
        &self,
        id: &SessionId,
        reason: Reason,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// The sessions of `user` (`session.user_key`'s value), most recently seen
    /// first; empty without a user key. Costs the user's sessions, not a scan.
    fn user_sessions(
        &self,
        user: &str,
    ) -> impl Future<Output = Result<Vec<UserSession>, StoreError>> + Send;
    /// Destroys every session of `user` but `except`; how many.
    fn destroy_user(
        &self,
        user: &str,
        except: Option<&SessionId>,
        reason: Reason,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
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
    /// What this store has counted: the one source of the session metrics.
    fn counters(&self) -> &Arc<SessionCounters>;
    /// Where this store tells what happens to sessions.
    fn events(&self) -> &EventSink;
    /// Before a new visitor's request goes upstream: fails when the store is known
    /// to be out of reach (its last command failed and a `PING` fails too), so that
    /// such a request gets `503` without reaching the application, as a returning
    /// visitor's does. Free while the store answers.
    fn ensure_reachable(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        async { Ok(()) }
    }
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

/// One of a user's sessions, as the admin API lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSession {
    pub id: SessionId,
    /// Unix milliseconds.
    pub created_ms: u64,
    /// Unix milliseconds (to the second).
    pub last_seen_ms: u64,
    /// The client address of the request that logged the user in.
    pub client_ip: Option<String>,
    /// Its `User-Agent`.
    pub user_agent: Option<String>,
}

/// The store the proxy runs with, chosen by `store.type`. The request path talks
/// to this enum only, so it never knows which store answers.
#[derive(Clone)]
pub enum Store {
    Memory(MemoryStore),
    Redis(RedisStore),
}

/// Forwards a call to whichever store this is.
macro_rules! each_store {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            Store::Memory($s) => $call.await,
            Store::Redis($s) => $call.await,
        }
    };
}

impl SessionStore for Store {
    async fn load(&self, id: &SessionId, policy: &Policy) -> Result<Lookup, StoreError> {
        each_store!(self, s => s.load(id, policy))
    }
    async fn insert(
        &self,
        id: &SessionId,
        data: SessionData,
        policy: &Policy,
    ) -> Result<Inserted, StoreError> {
        each_store!(self, s => s.insert(id, data, policy))
    }
    async fn apply(
        &self,
        id: &SessionId,
        changes: &Changes,
        policy: &Policy,
    ) -> Result<Applied, StoreError> {
        each_store!(self, s => s.apply(id, changes, policy))
    }
    async fn destroy(&self, id: &SessionId, reason: Reason) -> Result<bool, StoreError> {
        each_store!(self, s => s.destroy(id, reason))
    }
    async fn user_sessions(&self, user: &str) -> Result<Vec<UserSession>, StoreError> {
        each_store!(self, s => s.user_sessions(user))
    }
    async fn destroy_user(
        &self,
        user: &str,
        except: Option<&SessionId>,
        reason: Reason,
    ) -> Result<u64, StoreError> {
        each_store!(self, s => s.destroy_user(user, except, reason))
    }
    async fn inspect(&self, id: &SessionId) -> Result<Option<SessionInfo>, StoreError> {
        each_store!(self, s => s.inspect(id))
    }
    async fn revoke(&self, key: &str, value: &str) -> Result<u64, StoreError> {
        each_store!(self, s => s.revoke(key, value))
    }
    async fn find(&self, key: &str, value: &str) -> Result<Vec<SessionId>, StoreError> {
        each_store!(self, s => s.find(key, value))
    }
    async fn count(&self) -> Result<u64, StoreError> {
        each_store!(self, s => s.count())
    }
    async fn ping(&self) -> Result<(), StoreError> {
        each_store!(self, s => s.ping())
    }
    async fn ensure_reachable(&self) -> Result<(), StoreError> {
        each_store!(self, s => s.ensure_reachable())
    }
    fn new_id(&self) -> SessionId {
        match self {
            Store::Memory(s) => s.new_id(),
            Store::Redis(s) => s.new_id(),
        }
    }
    fn counters(&self) -> &Arc<SessionCounters> {
        match self {
            Store::Memory(s) => s.counters(),
            Store::Redis(s) => s.counters(),
        }
    }
    fn events(&self) -> &EventSink {
        match self {
            Store::Memory(s) => s.events(),
            Store::Redis(s) => s.events(),
        }
    }
}
