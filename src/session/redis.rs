//! The Redis store: sessions shared by any number of proxies, on one Redis or a
//! Redis Cluster.
//!
//! Layout, for a session whose ID is `AbCdEfGh…` (43 characters) and the default
//! prefix:
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `sessiongate:{AbCd}EfGh…` | hash | `m:c` created and `m:s` last refreshed (Unix ms), `d:<key>` one field per data key |
//! | `sessiongate:{AbCd}EfGh…:moved` | string | present for `regenerate_grace` after the ID was regenerated |
//!
//! The hash tag is the ID's first four characters: every key of one session hashes
//! to one Cluster slot, and on a Cluster a regenerated ID keeps those four
//! characters (the other 232 bits are fresh), so the data moves to it atomically
//! in one script. On a single Redis a new ID is entirely fresh.
//!
//! The key's TTL is the time left until the idle or the absolute timeout, whichever
//! comes first, so Redis itself removes expired sessions. A load refreshes it at
//! most once a second, adding that second to the idle timeout so a session never
//! expires early; it also holds the session to the timeouts of the request's
//! policy, so one shortened by a reload applies at the next use. Every read-modify-write (load with refresh, apply with the size
//! check, regenerate, create) is one Lua script, with Redis's clock, so proxies on
//! skewed clocks agree and concurrent writers to different keys lose nothing.
//!
//! Every round trip is bounded by `store.redis.timeout`; a failure becomes a
//! [`StoreError`] (a 503 on the request path), never a fresh session. Every
//! operation is safe to repeat and is retried once when the connection had
//! dropped, since the first command after a drop fails while the client reconnects. `revoke`, `find`
//! and `count` walk the keys with `SCAN` (on every primary of a Cluster): admin
//! path only. `max_sessions` is not enforced here: size Redis with `maxmemory` and a
//! `volatile-*` eviction policy.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Script, Value};

use super::{
    Applied, Changes, Inserted, Lookup, Policy, SessionCount, SessionCounters, SessionData,
    SessionId, SessionInfo, SessionStore, SessionView, StoreError,
};

/// Reads a session and refreshes its TTL, at most once a second. A session past
/// the given timeouts (shorter than those its TTL was set by) is deleted.
/// KEYS: session, tombstone. ARGV: idle ms, absolute ms.
/// Returns the hash's fields, 0 (missing) or 2 (regenerated).
const LOAD: &str = r#"
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then
  return redis.call('EXISTS', KEYS[2]) * 2
end
local created, seen
for i = 1, #fields, 2 do
  if fields[i] == 'm:c' then created = tonumber(fields[i + 1])
  elseif fields[i] == 'm:s' then seen = tonumber(fields[i + 1]) end
end
if created == nil or seen == nil then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local idle = tonumber(ARGV[1]) + 1000
local ttl = math.min(idle, created + tonumber(ARGV[2]) - now)
if ttl <= 0 or now - seen > idle then
  redis.call('DEL', KEYS[1])
  return 0
end
if now - seen >= 1000 then
  redis.call('HSET', KEYS[1], 'm:s', string.format('%d', now))
  redis.call('PEXPIRE', KEYS[1], string.format('%d', ttl))
end
return fields
"#;

/// Creates a session unless the ID is taken.
/// KEYS: session. ARGV: idle ms, absolute ms, then data key, value, ...
/// Returns the creation time (Unix ms), or -1 when the ID exists.
const CREATE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stamp = string.format('%d', now)
redis.call('HSET', KEYS[1], 'm:c', stamp, 'm:s', stamp)
local batch = {}
for i = 3, #ARGV, 2 do
  batch[#batch + 1] = 'd:' .. ARGV[i]
  batch[#batch + 1] = ARGV[i + 1]
  if #batch >= 1000 then
    redis.call('HSET', KEYS[1], unpack(batch))
    batch = {}
  end
end
if #batch > 0 then redis.call('HSET', KEYS[1], unpack(batch)) end
local ttl = math.min(tonumber(ARGV[1]) + 1000, tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], string.format('%d', ttl))
return now
"#;

/// Applies removals then sets, refusing the whole write when the encoded data
/// would exceed the limit, then, when asked, moves the session to a new ID.
/// KEYS: session, new session, tombstone of the session.
/// ARGV: max bytes, idle ms, absolute ms, grace ms, regenerate (0/1), number of
/// removals, the removed keys, then set key, value, ...
/// Returns {0} missing, {1, 0} stored, {1, 1} regenerated, {2, bytes} too large,
/// {3} new ID taken. The new ID is fresh (2^-232 odds of meeting another), so a
/// moved session found under it is this regeneration's own earlier try.
///
/// The size is that of the `x-www-form-urlencoded` form `SessionData` builds: every
/// byte outside `[A-Za-z0-9-_.* ]` takes three.
const APPLY: &str = r#"
local key = KEYS[1]
local regenerate = ARGV[5] == '1'
local fields = redis.call('HGETALL', key)
if #fields == 0 then
  -- A retried regeneration whose first try moved the data already.
  if regenerate and redis.call('EXISTS', KEYS[2]) == 1 then return {1, 1} end
  return {0}
end
if regenerate and redis.call('EXISTS', KEYS[2]) == 1 then return {3} end
local nrem = tonumber(ARGV[6])
local first_set = 7 + nrem
if nrem > 0 or first_set <= #ARGV then
  local data = {}
  for i = 1, #fields, 2 do
    local f = fields[i]
    if string.sub(f, 1, 2) == 'd:' then data[string.sub(f, 3)] = fields[i + 1] end
  end
  for i = 7, first_set - 1 do data[ARGV[i]] = nil end
  for i = first_set, #ARGV, 2 do data[ARGV[i]] = ARGV[i + 1] end
  local size, n = 0, 0
  for k, v in pairs(data) do
    local _, sk = string.gsub(k, '[^%w%-_%.%* ]', '')
    local _, sv = string.gsub(v, '[^%w%-_%.%* ]', '')
    size = size + #k + 2 * sk + 1 + #v + 2 * sv
    n = n + 1
  end
  if n > 1 then size = size + n - 1 end
  if size > tonumber(ARGV[1]) then return {2, size} end
  if nrem > 0 then
    local del = {}
    for i = 7, first_set - 1 do del[#del + 1] = 'd:' .. ARGV[i] end
    redis.call('HDEL', key, unpack(del))
  end
  if first_set <= #ARGV then
    local set = {}
    for i = first_set, #ARGV, 2 do
      set[#set + 1] = 'd:' .. ARGV[i]
      set[#set + 1] = ARGV[i + 1]
    end
    redis.call('HSET', key, unpack(set))
  end
end
if not regenerate then return {1, 0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stamp = string.format('%d', now)
redis.call('RENAME', key, KEYS[2])
redis.call('HSET', KEYS[2], 'm:c', stamp, 'm:s', stamp)
local ttl = math.min(tonumber(ARGV[2]) + 1000, tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[2], string.format('%d', ttl))
local grace = tonumber(ARGV[4])
if grace > 0 then redis.call('SET', KEYS[3], '1', 'PX', string.format('%d', grace)) end
return {1, 1}
"#;

/// Destroys the session if its data still has the key and value (revoke: the data
/// may have changed since the scan found it).
/// KEYS: session. ARGV: `d:<key>`, value. Returns 1 when destroyed.
const REVOKE: &str = r#"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// Keys asked for per `SCAN` call in the admin path.
const SCAN_BATCH: usize = 1000;

/// Where Redis is and how to reach it: the `store.redis` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://`, `rediss://` or `unix://`; with `cluster`, a seed node.
    pub url: String,
    /// Put in front of every key, so proxies of different sites can share a Redis.
    pub key_prefix: String,
    /// The longest a round trip may take; past it the request gets `503`.
    pub timeout: Duration,
    /// `url` (or `nodes`) names a Redis Cluster.
    pub cluster: bool,
    /// Cluster seed nodes; when set, the store is a Cluster.
    pub nodes: Vec<String>,
}

/// A connection to one Redis or to a Cluster. Both are multiplexed handles, cheap
/// to clone, that reconnect by themselves.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// One server whose keys a `SCAN` walks: the Redis, or one Cluster primary.
enum Node {
    Single,
    Primary { host: String, port: u16 },
}

struct Inner {
    conn: Conn,
    /// True on a Cluster: a regenerated ID keeps the hash tag (see the module doc).
    cluster: bool,
    prefix: String,
    /// `prefix` with glob characters escaped, then `*`, for `SCAN MATCH`.
    pattern: String,
    timeout: Duration,
    /// The last command reached Redis. While it did not, a new visitor's request
    /// waits for a `PING` before it goes upstream (see `ensure_reachable`).
    reachable: AtomicBool,
    /// What this proxy did to sessions, for its metrics (Redis expires keys
    /// unseen: no expiry is counted here).
    counters: Arc<SessionCounters>,
    load: Script,
    create: Script,
    apply: Script,
    revoke: Script,
}

/// A cheap-to-clone handle to the Redis store. It holds no session rules: each
/// call that needs them is handed the [`Policy`] of the request making it.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

fn unavailable(e: RedisError) -> StoreError {
    if e.is_timeout() {
        StoreError::Timeout
    } else {
        StoreError::Unavailable(Box::new(e))
    }
}

/// The error a dropped or not-yet-reconnected connection gives: the command never
/// ran, or ran and its answer was lost.
fn is_dropped(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error()
}

/// Milliseconds, as the scripts take them.
fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

impl RedisStore {
    /// Connects (lazily: the proxy starts while Redis is down, and answers 503
    /// until it is back). Fails only on settings that can never work.
    pub async fn open(r: &RedisConfig) -> Result<RedisStore, StoreError> {
        let invalid = |e: RedisError| StoreError::Misconfigured(Box::new(e));
        let uses_tls =
            r.url.starts_with("rediss://") || r.nodes.iter().any(|n| n.starts_with("rediss://"));
        if uses_tls {
            // The process-wide rustls provider; a no-op when the TLS listener set it.
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        }
        let cluster = r.cluster || !r.nodes.is_empty();
        let conn = if cluster {
            let nodes: Vec<&str> = if r.nodes.is_empty() {
                vec![r.url.as_str()]
            } else {
                r.nodes.iter().map(String::as_str).collect()
            };
            let client = redis::cluster::ClusterClientBuilder::new(nodes)
                .connection_timeout(r.timeout)
                .response_timeout(r.timeout)
                .build()
                .map_err(invalid)?;
            let config = redis::cluster::ClusterConfig::new()
                .set_connection_timeout(r.timeout)
                .set_response_timeout(r.timeout);
            Conn::Cluster(client.get_pending_async_connection_with_config(config))
        } else {
            let client = redis::Client::open(r.url.as_str()).map_err(invalid)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(r.timeout))
                .set_response_timeout(Some(r.timeout))
                .set_max_delay(Duration::from_secs(1))
                .set_number_of_retries(3);
            Conn::Single(ConnectionManager::new_lazy_with_config(client, config).map_err(invalid)?)
        };
        let store = RedisStore {
            inner: Arc::new(Inner {
                conn,
                cluster,
                reachable: AtomicBool::new(false),
                counters: Arc::default(),
                pattern: format!("{}*", escape_glob(&r.key_prefix)),
                prefix: r.key_prefix.clone(),
                timeout: r.timeout,
                load: Script::new(LOAD),
                create: Script::new(CREATE),
                apply: Script::new(APPLY),
                revoke: Script::new(REVOKE),
            }),
        };
        match store.ping().await {
            Ok(()) => tracing::info!(cluster, "connected to the Redis session store"),
            Err(e) => tracing::warn!(
                cluster,
                error = %crate::chain::Chain(&e),
                "the Redis session store does not answer yet: requests that need a session \
                 get 503 until it does"
            ),
        }
        Ok(store)
    }

    /// Runs `op` on a connection within `store.redis.timeout`, once more after a
    /// dropped connection. Every operation here is safe to repeat (see `create`
    /// and `APPLY` for the two that needed care).
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let attempt = async {
            match op(self.inner.conn.clone()).await {
                Err(e) if is_dropped(&e) => {
                    tracing::debug!(error = %e, "Redis connection dropped; retrying once");
                    op(self.inner.conn.clone()).await
                }
                other => other,
            }
        };
        let result = match tokio::time::timeout(self.inner.timeout, attempt).await {
            Ok(result) => result.map_err(|e| {
                if is_dropped(&e) || e.is_timeout() {
                    self.inner.reachable.store(false, Ordering::Relaxed);
                }
                unavailable(e)
            }),
            Err(_) => {
                self.inner.reachable.store(false, Ordering::Relaxed);
                Err(StoreError::Timeout)
            }
        };
        if result.is_ok() && !self.inner.reachable.load(Ordering::Relaxed) {
            self.inner.reachable.store(true, Ordering::Relaxed);
        }
        result
    }

    fn key(&self, id: &SessionId) -> String {
        let mut encoded = String::with_capacity(43);
        id.encode_into(&mut encoded);
        let mut key = String::with_capacity(self.inner.prefix.len() + 45);
        key.push_str(&self.inner.prefix);
        key.push('{');
        key.push_str(&encoded[..4]);
        key.push('}');
        key.push_str(&encoded[4..]);
        key
    }

    fn tombstone(key: &str) -> String {
        let mut t = String::with_capacity(key.len() + 6);
        t.push_str(key);
        t.push_str(":moved");
        t
    }

    /// The session ID a key names; `None` for tombstones and foreign keys.
    fn id_of(&self, key: &[u8]) -> Option<SessionId> {
        let rest = key.strip_prefix(self.inner.prefix.as_bytes())?;
        if rest.len() != 45 || rest[0] != b'{' || rest[5] != b'}' {
            return None;
        }
        let mut text = [0u8; 43];
        text[..4].copy_from_slice(&rest[1..5]);
        text[4..].copy_from_slice(&rest[6..]);
        SessionId::decode(&text)
    }

    /// A fresh ID for regenerated data: on a Cluster it keeps the hash tag so that
    /// both keys are in one slot.
    fn next_id(&self, old: &SessionId) -> SessionId {
        let mut bytes = *SessionId::random().as_bytes();
        if self.inner.cluster {
            // Four base64 characters are the first three bytes.
            bytes[..3].copy_from_slice(&old.as_bytes()[..3]);
        }
        SessionId::from_bytes(bytes)
    }

    /// The servers to walk with `SCAN`.
    async fn nodes(&self) -> Result<Vec<Node>, StoreError> {
        if !self.inner.cluster {
            return Ok(vec![Node::Single]);
        }
        let slots: Value = self
            .run(
                |mut c| async move { redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut c).await },
            )
            .await?;
        let mut primaries: Vec<(String, u16)> = Vec::new();
        if let Value::Array(ranges) = slots {
            for range in ranges {
                let Value::Array(parts) = range else { continue };
                let Some(Value::Array(primary)) = parts.get(2) else {
                    continue;
                };
                let host = match primary.first() {
                    Some(Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
                    Some(Value::SimpleString(h)) => h.clone(),
                    _ => continue,
                };
                let Some(Value::Int(port)) = primary.get(1) else {
                    continue;
                };
                let node = (host, *port as u16);
                if !primaries.contains(&node) {
                    primaries.push(node);
                }
            }
        }
        Ok(primaries
            .into_iter()
            .map(|(host, port)| Node::Primary { host, port })
            .collect())
    }

    /// One `SCAN` page of this store's keys on `node`.
    async fn scan_page(&self, node: &Node, cursor: u64) -> Result<(u64, Vec<Vec<u8>>), StoreError> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(&self.inner.pattern)
            .arg("COUNT")
            .arg(SCAN_BATCH);
        let cmd = &cmd;
        self.run(|c| async move {
            let value = match (c, node) {
                (Conn::Cluster(mut c), Node::Primary { host, port }) => {
                    c.route_command(cmd.clone(), by_address(host, *port))
                        .await?
                }
                (mut c, _) => cmd.query_async(&mut c).await?,
            };
            Ok(redis::from_redis_value(value)?)
        })
        .await
    }

    /// `HGET key field` for every key (all on `node`), in one pipeline.
    async fn hget_all_on(
        &self,
        node: &Node,
        keys: &[Vec<u8>],
        field: &[u8],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("HGET").arg(key).arg(field);
        }
        let pipe = &pipe;
        self.run(|c| async move {
            match (c, node) {
                (Conn::Cluster(mut c), Node::Primary { host, port }) => {
                    let values = c
                        .route_pipeline(
                            pipe.clone(),
                            0,
                            keys.len(),
                            SingleNodeRoutingInfo::ByAddress {
                                host: host.clone(),
                                port: *port,
                            },
                        )
                        .await?;
                    Ok(redis::from_redis_value(Value::Array(values))?)
                }
                (mut c, _) => pipe.query_async(&mut c).await,
            }
        })
        .await
    }

    /// Keys of live sessions whose data has `key` = `value`.
    async fn matching(&self, key: &str, value: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        let field = data_field(key);
        let mut found = Vec::new();
        for node in self.nodes().await? {
            let mut cursor = 0;
            loop {
                let (next, keys) = self.scan_page(&node, cursor).await?;
                let keys: Vec<Vec<u8>> = keys
                    .into_iter()
                    .filter(|k| self.id_of(k).is_some())
                    .collect();
                if !keys.is_empty() {
                    let values = self.hget_all_on(&node, &keys, &field).await?;
                    for (k, v) in keys.into_iter().zip(values) {
                        if v.as_deref() == Some(value.as_bytes()) {
                            found.push(k);
                        }
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(found)
    }
}

fn by_address(host: &str, port: u16) -> RoutingInfo {
    RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
        host: host.to_owned(),
        port,
    })
}

/// The hash field of a data key.
fn data_field(key: &str) -> Vec<u8> {
    let mut f = Vec::with_capacity(key.len() + 2);
    f.extend_from_slice(b"d:");
    f.extend_from_slice(key.as_bytes());
    f
}

/// `SCAN MATCH` treats `*?[]\` specially.
fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A session hash as Redis returns it (field, value, field, value, ...).
struct Fields {
    data: SessionData,
    created_ms: u64,
    seen_ms: u64,
}

fn bytes_of(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn parse_fields(items: &[Value]) -> Fields {
    let mut pairs = Vec::new();
    let (mut created_ms, mut seen_ms) = (0, 0);
    for pair in items.chunks_exact(2) {
        let (Some(f), Some(v)) = (bytes_of(&pair[0]), bytes_of(&pair[1])) else {
            continue;
        };
        let number = || std::str::from_utf8(v).ok().and_then(|s| s.parse().ok());
        match f {
            b"m:c" => created_ms = number().unwrap_or(0),
            b"m:s" => seen_ms = number().unwrap_or(0),
            _ => {
                if let (Some(k), Ok(v)) = (f.strip_prefix(b"d:"), std::str::from_utf8(v)) {
                    if let Ok(k) = std::str::from_utf8(k) {
                        pairs.push((k.to_owned(), v.to_owned()));
                    }
                }
            }
        }
    }
    Fields {
        data: SessionData::from_pairs(pairs),
        created_ms,
        seen_ms,
    }
}

/// The form pairs as script arguments: key, value, key, value, ...
fn push_pairs<'a>(args: &mut Vec<&'a [u8]>, pairs: impl Iterator<Item = &'a (String, String)>) {
    for (k, v) in pairs {
        args.push(k.as_bytes());
        args.push(v.as_bytes());
    }
}

impl SessionStore for RedisStore {
    async fn load(&self, id: &SessionId, policy: &Policy) -> Result<Lookup, StoreError> {
        let key = self.key(id);
        let tombstone = Self::tombstone(&key);
        let inner = &self.inner;
        let (key, tombstone) = (&key, &tombstone);
        let value: Value = self
            .run(|mut c| async move {
                inner
                    .load
                    .key(key)
                    .key(tombstone)
                    .arg(ms(policy.idle_timeout))
                    .arg(ms(policy.absolute_timeout))
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(match value {
            Value::Array(items) => {
                let fields = parse_fields(&items);
                Lookup::Found(SessionView {
                    data: fields.data.header().cloned(),
                    created_ms: fields.created_ms,
                })
            }
            Value::Int(2) => Lookup::Regenerated,
            _ => Lookup::Missing,
        })
    }

    async fn insert(
        &self,
        id: &SessionId,
        data: SessionData,
        policy: &Policy,
    ) -> Result<Inserted, StoreError> {
        if let Some(bytes) = policy.refuses(&data) {
            self.inner.counters.add(SessionCount::RefusedTooLarge, 1);
            return Ok(Inserted::TooLarge { bytes });
        }
        let inner = &self.inner;
        let mut args: Vec<&[u8]> = Vec::new();
        push_pairs(&mut args, data.pairs().iter());
        let args = &args;
        let key = &self.key(id);
        let tries = &std::sync::atomic::AtomicU32::new(0);
        let (created, retried): (i64, bool) = self
            .run(|mut c| async move {
                let retried = tries.fetch_add(1, Ordering::Relaxed) > 0;
                let mut call = inner.create.key(key);
                call.arg(ms(policy.idle_timeout))
                    .arg(ms(policy.absolute_timeout));
                for a in args {
                    call.arg(*a);
                }
                Ok((call.invoke_async(&mut c).await?, retried))
            })
            .await?;
        // On a retry after a dropped connection, an existing key is the first try's
        // write having landed (a random ID taken by another visitor has odds of
        // 2^-256).
        if created < 0 && !retried {
            return Ok(Inserted::Taken);
        }
        inner.counters.add(SessionCount::Created, 1);
        Ok(Inserted::Stored)
    }

    async fn apply(
        &self,
        id: &SessionId,
        changes: &Changes,
        policy: &Policy,
    ) -> Result<Applied, StoreError> {
        let inner = &self.inner;
        let key = self.key(id);
        let tombstone = Self::tombstone(&key);
        let mut args: Vec<&[u8]> = Vec::with_capacity(changes.remove.len() + 2 * changes.set.len());
        args.extend(changes.remove.iter().map(|k| k.as_bytes()));
        push_pairs(&mut args, changes.set.iter());
        let nrem = changes.remove.len();
        let regenerate = changes.regenerate;
        for _ in 0..3 {
            // A retry reuses the new ID: the script recognises a move it already made.
            let new_id = if regenerate { self.next_id(id) } else { *id };
            let new_key = self.key(&new_id);
            let (key, new_key, tombstone, args) = (&key, &new_key, &tombstone, &args);
            let reply: Vec<i64> = self
                .run(|mut c| async move {
                    let mut call = inner.apply.key(key);
                    call.key(new_key)
                        .key(tombstone)
                        .arg(policy.max_data_bytes)
                        .arg(ms(policy.idle_timeout))
                        .arg(ms(policy.absolute_timeout))
                        .arg(ms(policy.regenerate_grace))
                        .arg(u8::from(regenerate))
                        .arg(nrem);
                    for a in args {
                        call.arg(*a);
                    }
                    call.invoke_async(&mut c).await
                })
                .await?;
            let applied = match reply.as_slice() {
                [1, 1] => Applied::Regenerated(new_id),
                [1, _] => Applied::Stored,
                [2, bytes] => Applied::TooLarge {
                    bytes: *bytes as usize,
                },
                [3] => continue,
                _ => Applied::Missing,
            };
            match applied {
                Applied::Regenerated(_) => inner.counters.add(SessionCount::Regenerated, 1),
                Applied::TooLarge { .. } => inner.counters.add(SessionCount::RefusedTooLarge, 1),
                Applied::Stored | Applied::Missing => {}
            }
            return Ok(applied);
        }
        Err(StoreError::Unavailable(
            "three random session IDs were all taken".into(),
        ))
    }

    async fn destroy(&self, id: &SessionId) -> Result<bool, StoreError> {
        let key = self.key(id);
        let key = &key;
        let n: i64 = self
            .run(|mut c| async move { redis::cmd("DEL").arg(key).query_async(&mut c).await })
            .await?;
        self.inner
            .counters
            .add(SessionCount::Destroyed, n.max(0) as u64);
        Ok(n > 0)
    }

    async fn inspect(&self, id: &SessionId) -> Result<Option<SessionInfo>, StoreError> {
        let key = self.key(id);
        let key = &key;
        let value: Value = self
            .run(|mut c| async move { redis::cmd("HGETALL").arg(key).query_async(&mut c).await })
            .await?;
        let items = match value {
            Value::Array(items) if !items.is_empty() => items,
            Value::Map(map) if !map.is_empty() => {
                map.into_iter().flat_map(|(k, v)| [k, v]).collect()
            }
            _ => return Ok(None),
        };
        let fields = parse_fields(&items);
        if fields.created_ms == 0 {
            return Ok(None);
        }
        Ok(Some(SessionInfo {
            data: fields.data,
            created_ms: fields.created_ms,
            last_seen_ms: fields.seen_ms,
        }))
    }

    async fn revoke(&self, key: &str, value: &str) -> Result<u64, StoreError> {
        let inner = &self.inner;
        let field = data_field(key);
        let field = &field;
        let mut n = 0;
        for session in self.matching(key, value).await? {
            let session = &session;
            let destroyed: i64 = self
                .run(|mut c| async move {
                    inner
                        .revoke
                        .key(session)
                        .arg(field)
                        .arg(value)
                        .invoke_async(&mut c)
                        .await
                })
                .await?;
            n += destroyed as u64;
        }
        inner.counters.add(SessionCount::Destroyed, n);
        Ok(n)
    }

    async fn find(&self, key: &str, value: &str) -> Result<Vec<SessionId>, StoreError> {
        Ok(self
            .matching(key, value)
            .await?
            .iter()
            .filter_map(|k| self.id_of(k))
            .collect())
    }

    async fn count(&self) -> Result<u64, StoreError> {
        let mut n = 0;
        for node in self.nodes().await? {
            let mut cursor = 0;
            loop {
                let (next, keys) = self.scan_page(&node, cursor).await?;
                n += keys.iter().filter(|k| self.id_of(k).is_some()).count() as u64;
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(n)
    }

    async fn ensure_reachable(&self) -> Result<(), StoreError> {
        if self.inner.reachable.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.ping().await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let _: Value = self
            .run(|mut c| async move { redis::cmd("PING").query_async(&mut c).await })
            .await?;
        Ok(())
    }

    fn counters(&self) -> &Arc<SessionCounters> {
        &self.inner.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(escape_glob("app:*[x]?\\"), "app:\\*\\[x\\]\\?\\\\");
        assert_eq!(escape_glob("sessiongate:"), "sessiongate:");
    }

    #[test]
    fn hash_fields_parse_into_data_and_times() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let f = parse_fields(&[
            b("m:c"),
            b("1000"),
            b("d:user"),
            b("alice & bob"),
            b("m:s"),
            b("2000"),
        ]);
        assert_eq!(f.created_ms, 1000);
        assert_eq!(f.seen_ms, 2000);
        assert_eq!(f.data.get("user"), Some("alice & bob"));
        assert_eq!(f.data.pairs().len(), 1);
    }
}
