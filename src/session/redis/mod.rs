//! The Redis store: sessions shared by any number of proxies, on one Redis or a
//! Redis Cluster.
//!
//! Layout, for a session whose ID is `AbCdEfGh…` (43 characters) and the default
//! prefix:
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `sessiongate:{AbCd}EfGh…` | hash | `m:c` created and `m:s` last refreshed (Unix ms), `m:v` raised by each write of the data (for the near cache), `d:<key>` one field per data key |
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
//! policy, so one shortened by a reload applies at the next use. Every
//! read-modify-write (load with refresh, apply with the size check, regenerate) is
//! one Lua script, with Redis's clock, so proxies on skewed clocks agree and
//! concurrent writers to different keys lose nothing. Creation reads nothing,
//! so it is a plain `MULTI`/`EXEC`, far cheaper for Redis, for a batch of
//! sessions at once; its times are Redis's clock as the proxy measures it
//! every second (`TIME`, halfway through the round trip).
//!
//! Every round trip is bounded by `store.redis.timeout`; a failure becomes a
//! [`StoreError`] (a 503 on the request path), never a fresh session. Every
//! operation is safe to repeat and is retried once when the connection had
//! dropped, since the first command after a drop fails while the client reconnects. `revoke`, `find`
//! and `count` walk the keys with `SCAN` (on every primary of a Cluster): admin
//! path only. `max_sessions` is not enforced here: size Redis with `maxmemory` and a
//! `volatile-*` eviction policy.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{
    Cmd, IntoConnectionInfo, Pipeline, ProtocolVersion, PushInfo, PushKind, RedisError,
    RedisFuture, RedisResult, Script, Value,
};

mod combine;
mod creates;
mod lanes;
mod pipe;
mod ready;
mod sentinel;

use combine::{Combiner, WriteOne};
use creates::{CreateMany, Creates, NewSession};
use ready::Ready;

use lanes::{
    request, request_each, Lanes, Local, LocalClient, Nodes, Opener, SentinelConn, Shards,
    SlotOwners,
};

use super::data::{LOGIN_IP_KEY, LOGIN_UA_KEY};
use super::events::{Event, EventKind, EventSink, Reason};
use super::near::{self, Base, NearCache};
use super::{
    Applied, Changes, Inserted, Lookup, Policy, SessionCount, SessionCounters, SessionData,
    SessionId, SessionInfo, SessionStore, SessionView, StoreError, UserSession,
};

/// Reads a session and refreshes its TTL, at most once a second. A session past
/// the given timeouts (shorter than those its TTL was set by) is deleted.
/// KEYS: session, tombstone. ARGV: idle ms, absolute ms, the user field ('' for none).
/// Returns the hash's fields and a last pseudo-field `m:a`, the milliseconds
/// since the last refresh; 0 (missing); 2 (regenerated); or, for a session
/// this call found expired and deleted, {'!expired', 'idle'|'absolute', user}.
/// After its own refresh it reads the key again: with `CLIENT TRACKING ... NOLOOP`
/// a connection's own write stops the tracking of a key, a read restarts it.
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
  local user = ''
  for i = 1, #fields, 2 do
    if fields[i] == ARGV[3] then user = fields[i + 1] end
  end
  local why = 'idle'
  if now - seen <= idle then why = 'absolute' end
  return {'!expired', why, user}
end
local age = math.max(0, now - seen)
if age >= 1000 then
  redis.call('HSET', KEYS[1], 'm:s', string.format('%d', now))
  redis.call('PEXPIRE', KEYS[1], string.format('%d', ttl))
  redis.call('EXISTS', KEYS[1])
  age = 0
end
fields[#fields + 1] = 'm:a'
fields[#fields + 1] = string.format('%d', age)
return fields
"#;

/// Applies removals then sets, refusing the whole write when the encoded data
/// would exceed the limit, then, when asked, moves the session to a new ID.
/// KEYS: session, new session, tombstone of the session.
/// ARGV: max bytes, idle ms, absolute ms, grace ms, regenerate (0/1), the user
/// field ('' for none), number of removals, the state wanted back (0/1), the
/// stamp the caller holds the session at ('' for none), the fence channel (''
/// for none), the removed keys, then set key, value, ...
/// Returns {0} missing, {1, 0, user before, user after} stored, {1, 1, user
/// before, user after} regenerated, {2, bytes} too large, {3} new ID taken,
/// {4} stored at the stamp given. The new ID is fresh (2^-232 odds of meeting
/// another), so a moved session found under it is this regeneration's own
/// earlier try.
///
/// The stamp given is the near cache's: a caller that holds the session at
/// the stamp Redis has holds every value in it (each write of the data raises
/// the stamp), so it has checked the size and knows the user, and the script
/// only writes. Otherwise the script reads the session and does it all itself;
/// for Redis that costs about three times as much.
/// With the state wanted, a stored or regenerated reply has two more items:
/// the session's creation time, stamp and data as they now are (`m:c`, `m:v`,
/// `d:` fields), and its last refresh (`m:s`, Unix ms; -1 when unknown). The
/// key is read last, so it stays tracked (see `LOAD`). Only a regeneration
/// asks Redis the time: `TIME` is among the dearest calls a script makes.
/// With a fence channel, a write that read the session whole (it was not at
/// the stamp given) and did not move it publishes `<stamp> <key>` there last:
/// the near cache's fence (see `near`).
///
/// The size is that of the `x-www-form-urlencoded` form `SessionData` builds: every
/// byte outside `[A-Za-z0-9-_.* ]` takes three.
const APPLY: &str = r#"
local key = KEYS[1]
local regenerate = ARGV[5] == '1'
local nrem = tonumber(ARGV[7])
local first_set = 11 + nrem
-- Removals, then sets, and the stamp raised to `stamp`.
local function write(stamp)
  if nrem > 0 then
    local del = {}
    for i = 11, first_set - 1 do del[#del + 1] = 'd:' .. ARGV[i] end
    redis.call('HDEL', key, unpack(del))
  end
  local set = {'m:v', string.format('%d', stamp)}
  for i = first_set, #ARGV, 2 do
    set[#set + 1] = 'd:' .. ARGV[i]
    set[#set + 1] = ARGV[i + 1]
  end
  redis.call('HSET', key, unpack(set))
end
if ARGV[9] ~= '' and not regenerate then
  local held = redis.call('HGET', key, 'm:v')
  -- Sessions are created without a stamp: 0.
  if held == false and ARGV[9] == '0' and redis.call('EXISTS', key) == 1 then held = '0' end
  if held == ARGV[9] then
    write(tonumber(held) + 1)
    -- Tracked again after this connection's own write (see LOAD).
    if ARGV[8] == '1' then redis.call('EXISTS', key) end
    return {4}
  end
end
local fields = redis.call('HGETALL', key)
if #fields == 0 then
  -- A retried regeneration whose first try moved the data already.
  if regenerate and redis.call('EXISTS', KEYS[2]) == 1 then
    local user = ''
    if ARGV[6] ~= '' then user = redis.call('HGET', KEYS[2], ARGV[6]) or '' end
    return {1, 1, user, user}
  end
  return {0}
end
if regenerate and redis.call('EXISTS', KEYS[2]) == 1 then return {3} end
local user_field = ARGV[6]
local before, created, seen, stamp = '', '0', nil, 0
for i = 1, #fields, 2 do
  local f = fields[i]
  if f == user_field then before = fields[i + 1]
  elseif f == 'm:c' then created = fields[i + 1]
  elseif f == 'm:s' then seen = tonumber(fields[i + 1])
  elseif f == 'm:v' then stamp = tonumber(fields[i + 1]) end
end
local after = before
local data = nil
if nrem > 0 or first_set <= #ARGV then
  data = {}
  for i = 1, #fields, 2 do
    local f = fields[i]
    if string.sub(f, 1, 2) == 'd:' then data[string.sub(f, 3)] = fields[i + 1] end
  end
  for i = 11, first_set - 1 do data[ARGV[i]] = nil end
  for i = first_set, #ARGV, 2 do data[ARGV[i]] = ARGV[i + 1] end
  -- Three bytes a byte at most: counted exactly only when that is too many.
  local size, n = 0, 0
  for k, v in pairs(data) do
    size = size + 3 * (#k + #v) + 1
    n = n + 1
  end
  if n > 1 then size = size + n - 1 end
  if size > tonumber(ARGV[1]) then
    size = 0
    for k, v in pairs(data) do
      local _, sk = string.gsub(k, '[^%w%-_%.%* ]', '')
      local _, sv = string.gsub(v, '[^%w%-_%.%* ]', '')
      size = size + #k + 2 * sk + 1 + #v + 2 * sv
    end
    if n > 1 then size = size + n - 1 end
  end
  if size > tonumber(ARGV[1]) then return {2, size} end
  if user_field ~= '' then after = data[string.sub(user_field, 3)] or '' end
  stamp = stamp + 1
  write(stamp)
end
local at, refreshed = key, 0
if regenerate then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  created = string.format('%d', now)
  seen = now
  redis.call('RENAME', key, KEYS[2])
  redis.call('HSET', KEYS[2], 'm:c', created, 'm:s', created)
  local ttl = math.min(tonumber(ARGV[2]) + 1000, tonumber(ARGV[3]))
  redis.call('PEXPIRE', KEYS[2], string.format('%d', ttl))
  local grace = tonumber(ARGV[4])
  if grace > 0 then redis.call('SET', KEYS[3], '1', 'PX', string.format('%d', grace)) end
  at, refreshed = KEYS[2], 1
end
local r = {1, refreshed, before, after}
if ARGV[8] == '1' then
  -- Tracked again after this connection's own write (see LOAD).
  redis.call('EXISTS', at)
  local state = {'m:c', created, 'm:v', string.format('%d', stamp)}
  if data == nil then
    for i = 1, #fields, 2 do
      if string.sub(fields[i], 1, 2) == 'd:' then
        state[#state + 1] = fields[i]
        state[#state + 1] = fields[i + 1]
      end
    end
  else
    for k, v in pairs(data) do
      state[#state + 1] = 'd:' .. k
      state[#state + 1] = v
    end
  end
  r[5] = state
  r[6] = seen or -1
  if ARGV[10] ~= '' and not regenerate then
    -- pcall: the write is done; a refused fence only costs the cache.
    redis.pcall('PUBLISH', ARGV[10], string.format('%d', stamp) .. ' ' .. key)
  end
end
return r
"#;

/// Destroys a session, if its data still has the key and value when one is given
/// (revoke: the data may have changed since the scan or the index found it).
/// KEYS: session. ARGV: `d:<key>` or '', value, the user field or ''.
/// Returns {1, user} when destroyed, else {0}.
const DESTROY: &str = r#"
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
  return {0}
end
local user = ''
if ARGV[3] ~= '' then user = redis.call('HGET', KEYS[1], ARGV[3]) or '' end
if redis.call('DEL', KEYS[1]) == 0 then return {0} end
return {1, user}
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
    /// `url` and `nodes` name a Redis Cluster: `store.redis.cluster`, or
    /// `nodes` given (the config sets it so).
    pub cluster: bool,
    /// Cluster seed nodes.
    pub nodes: Vec<String>,
    /// The master is found through Redis Sentinel, and followed after a failover.
    pub sentinel: Option<SentinelConfig>,
    /// Keep the sessions used in the last second on this proxy, kept true by
    /// Redis's client-side caching (RESP3, Redis 7 or later).
    pub near_cache: bool,
}

/// `store.redis.sentinel`.
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelConfig {
    /// The name the Sentinels monitor the master by.
    pub master: String,
    /// `redis://host:port` of each Sentinel.
    pub nodes: Vec<String>,
    /// The master's `AUTH` (the Sentinels' own are in their URLs).
    pub username: Option<String>,
    pub password: Option<String>,
    /// Reach the master over TLS, its certificate checked against the
    /// system's roots for the address the Sentinels announce.
    pub tls: bool,
}

impl std::fmt::Debug for SentinelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelConfig")
            .field("master", &self.master)
            .field("nodes", &self.nodes.len())
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .finish()
    }
}

/// A connection to one Redis or to a Cluster. Both are multiplexed handles, cheap
/// to clone, that reconnect by themselves.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    /// The master Redis Sentinel names, asked again after a failure.
    Sentinel(Arc<SentinelConn>),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Sentinel(s) => Box::pin(async move {
                let mut opened = s.get().await?;
                let reply = opened.conn.req_packed_command(cmd).await;
                if let Err(e) = &reply {
                    s.failed(&opened, e);
                }
                reply
            }),
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
            Conn::Sentinel(s) => Box::pin(async move {
                let mut opened = s.get().await?;
                let reply = opened
                    .conn
                    .req_packed_commands(pipeline, offset, count)
                    .await;
                if let Err(e) = &reply {
                    s.failed(&opened, e);
                }
                reply
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Sentinel(_) => 0,
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
    apply: Script,
    destroy: Script,
    /// `session.user_key`, when sessions are indexed by user, and its hash
    /// field (`d:` and the key).
    user_key: Option<String>,
    user_field: Option<Vec<u8>>,
    /// Lifecycle events.
    events: EventSink,
    /// `store.redis.near_cache`.
    near: Option<Arc<NearCache>>,
    /// The sessions with a write in flight, and the writes that wait to go
    /// with the next.
    combiner: Combiner,
    /// New sessions, created in batches.
    creates: Creates,
    /// New sessions made ahead, for a flow of new visitors.
    ready: Ready,
    /// On a Cluster, which node holds which slot, for those batches.
    owners: SlotOwners,
    /// How the request path's calls reach Redis.
    lanes: Lanes,
    /// With `sentinel`: the master followed.
    master: Option<Arc<sentinel::Master>>,
    /// Redis's clock minus this proxy's, in milliseconds, as last measured
    /// (see `measure_clock`); 0 until then.
    clock: AtomicI64,
    /// How far off that offset may be (half the round trip that measured it,
    /// rounded up); `u64::MAX` until it is measured.
    clock_error: AtomicU64,
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

/// Whether the call failed for Redis's `MOVED` or `ASK`: a key's slot is on
/// another node.
fn is_redirect(e: &StoreError) -> bool {
    let StoreError::Unavailable(source) = e else {
        return false;
    };
    source.downcast_ref::<RedisError>().is_some_and(|e| {
        matches!(
            e.kind(),
            redis::ErrorKind::Server(redis::ServerErrorKind::Moved | redis::ServerErrorKind::Ask)
        )
    })
}

/// The error a dropped or not-yet-reconnected connection gives: the command never
/// ran, or ran and its answer was lost.
fn is_dropped(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
        || e.is_connection_refusal()
        // A master demoted by a failover: the command never ran.
        || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
}

/// Milliseconds, as the scripts take them.
fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

/// `EVALSHA` of `script` with its keys; the caller adds the arguments.
fn evalsha(script: &Script, keys: &[&[u8]]) -> Cmd {
    // Room for the arguments of the largest call but for its data, so that
    // building one seldom grows its buffers.
    let bytes = 128 + keys.iter().map(|k| k.len()).sum::<usize>();
    let mut cmd = Cmd::with_capacity(16 + keys.len(), bytes);
    cmd.arg("EVALSHA").arg(script.get_hash()).arg(keys.len());
    for k in keys {
        cmd.arg(*k);
    }
    cmd
}

/// Runs `call`, an `EVALSHA` of `script`, as [`request`] does (given the fence
/// channel of the connection it goes on, if any). Loads the script and tries
/// again when Redis does not have it.
async fn eval(
    c: &mut Conn,
    lanes: &Lanes,
    script: &Script,
    track: bool,
    key: &[u8],
    call: impl Fn(Option<&str>) -> Cmd,
) -> RedisResult<Value> {
    let cmds = |fence: Option<&str>| vec![call(fence)];
    match request(lanes, cmds, track, key).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            script.prepare_invoke().load_async(c).await?;
            request(lanes, cmds, track, key).await
        }
        other => other,
    }
}

/// Hands what Redis pushes to the near cache, as the connection reads it: an
/// invalidated session is forgotten; a flush (no keys) or a lost connection
/// forgets them all; a fence (a message on a connection's own channel, see
/// `APPLY`) is handed on.
#[derive(Clone)]
struct Forget {
    near: Arc<NearCache>,
    prefix: String,
}

impl redis::aio::AsyncPushSender for Forget {
    fn send(&self, push: PushInfo) -> Result<(), redis::aio::SendError> {
        match push.kind {
            PushKind::Invalidate => match push.data.first() {
                Some(Value::Array(keys)) => {
                    for key in keys {
                        if let Some(id) = bytes_of(key).and_then(|k| id_of(&self.prefix, k)) {
                            self.near.invalidate(&id);
                        }
                    }
                }
                _ => self.near.clear(),
            },
            PushKind::Disconnection => self.near.clear(),
            PushKind::Message => {
                if let Some((channel, id, stamp)) = self.fence_of(&push.data) {
                    self.near.fence(channel, &id, stamp);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl Forget {
    /// The session and stamp of a fence: `[channel, "<stamp> <key>"]`, on a
    /// channel of this prefix's fences.
    fn fence_of<'a>(&self, data: &'a [Value]) -> Option<(&'a [u8], SessionId, u64)> {
        let [channel, payload] = data else {
            return None;
        };
        let channel = bytes_of(channel)?;
        if !channel
            .strip_prefix(self.prefix.as_bytes())?
            .starts_with(FENCES.as_bytes())
        {
            return None;
        }
        let payload = bytes_of(payload)?;
        let space = payload.iter().position(|b| *b == b' ')?;
        let stamp = std::str::from_utf8(&payload[..space]).ok()?.parse().ok()?;
        Some((channel, id_of(&self.prefix, &payload[space + 1..])?, stamp))
    }
}

/// What the fence channels' names start with, after the key prefix.
const FENCES: &str = "fence:";

/// The lowest major version of Redis an `INFO server` answer names (one per
/// node on a Cluster).
fn major_version(info: &Value) -> Option<u32> {
    let texts: Vec<&[u8]> = match info {
        Value::Map(nodes) => nodes.iter().filter_map(|(_, v)| bytes_of(v)).collect(),
        v => bytes_of(v).into_iter().collect(),
    };
    texts
        .iter()
        .flat_map(|t| {
            String::from_utf8_lossy(t)
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter_map(|line| {
            let version = line.strip_prefix("redis_version:")?;
            version.split('.').next()?.trim().parse().ok()
        })
        .min()
}

/// While the store lives, measures Redis's clock every second and, with the
/// near cache, turns it on once Redis is known to track the keys its scripts
/// read (7.0 and later), then sweeps it.
async fn upkeep(inner: std::sync::Weak<Inner>) {
    let mut checked = false;
    loop {
        tokio::time::sleep(Duration::from_millis(if checked { 1000 } else { 200 })).await;
        let Some(inner) = inner.upgrade() else { return };
        let store = RedisStore { inner };
        if let Some(master) = &store.inner.master {
            // A switch no Sentinel announced to this proxy, found within a second.
            let _ = master.ask().await;
        }
        store.measure_clock().await;
        let Some(near) = store.inner.near.clone() else {
            checked = true;
            continue;
        };
        if !checked {
            // Known either way once Redis answers; off (older Redis) is for good.
            checked = store.check_version().await.is_some();
            continue;
        }
        drop(store);
        if near.active() {
            near.sweep();
        }
    }
}

/// The session ID a key under `prefix` names; `None` for tombstones and
/// foreign keys.
fn id_of(prefix: &str, key: &[u8]) -> Option<SessionId> {
    let rest = key.strip_prefix(prefix.as_bytes())?;
    if rest.len() != 45 || rest[0] != b'{' || rest[5] != b'}' {
        return None;
    }
    let mut text = [0u8; 43];
    text[..4].copy_from_slice(&rest[1..5]);
    text[4..].copy_from_slice(&rest[6..]);
    SessionId::decode(&text)
}

impl RedisStore {
    /// Connects (lazily: the proxy starts while Redis is down, and answers 503
    /// until it is back). Fails only on settings that can never work.
    /// `workers`: the proxy's worker threads; the calls the near cache tracks
    /// go on as many connections.
    pub async fn open(
        r: &RedisConfig,
        user_key: Option<&str>,
        events: EventSink,
        workers: usize,
    ) -> Result<RedisStore, StoreError> {
        let invalid = |e: RedisError| StoreError::Misconfigured(Box::new(e));
        let uses_tls = r.url.starts_with("rediss://")
            || r.nodes.iter().any(|n| n.starts_with("rediss://"))
            || (r.sentinel.as_ref())
                .is_some_and(|s| s.tls || s.nodes.iter().any(|n| n.starts_with("rediss://")));
        if uses_tls {
            // The process-wide rustls provider; a no-op when the TLS listener set it.
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        }
        let cluster = r.cluster;
        let counters: Arc<SessionCounters> = Arc::default();
        // With the near cache, connections speak RESP3, and what Redis pushes on
        // them (invalidations, and the client's own word of a lost connection)
        // goes straight to the cache (`Forget`).
        let near = r
            .near_cache
            .then(|| Arc::new(NearCache::new(counters.clone())));
        let pushes = near.as_ref().map(|near| Forget {
            near: near.clone(),
            prefix: r.key_prefix.clone(),
        });
        let protocol = if near.is_some() {
            ProtocolVersion::RESP3
        } else {
            ProtocolVersion::RESP2
        };
        // How the request path's connections are opened: with the near
        // cache's push sender for those whose keys it tracks.
        let tracked: Option<Arc<dyn redis::aio::AsyncPushSender>> = pushes
            .clone()
            .map(|p| Arc::new(p) as Arc<dyn redis::aio::AsyncPushSender>);
        let opener = |with_pushes: bool| Opener {
            timeout: r.timeout,
            pushes: tracked.clone().filter(|_| with_pushes),
        };
        // Per topology: the shared connection, the client of the per-thread
        // connections, and that of the shards (with the near cache).
        let mut master = None;
        let (conn, local, shard, nodes) = if let Some(sentinel) = &r.sentinel {
            let mut settings = redis::RedisConnectionInfo::default().set_protocol(protocol);
            if let Some(password) = &sentinel.password {
                settings = settings.set_password(password);
            }
            if let Some(username) = &sentinel.username {
                settings = settings.set_username(username);
            }
            let followed = sentinel::Master::new(
                &sentinel.master,
                &sentinel.nodes,
                settings,
                sentinel.tls,
                near.clone(),
            )
            .map_err(invalid)?;
            master = Some(followed.clone());
            let local = LocalClient::Sentinel(followed.clone(), opener(false));
            let shard =
                (pushes.is_some()).then(|| LocalClient::Sentinel(followed.clone(), opener(true)));
            let shared = LocalClient::Sentinel(followed, opener(true));
            let conn = Conn::Sentinel(Arc::new(SentinelConn::new(shared, near.clone())));
            (conn, local, shard, None)
        } else if cluster {
            let nodes: Vec<&str> = if r.nodes.is_empty() {
                vec![r.url.as_str()]
            } else {
                r.nodes.iter().map(String::as_str).collect()
            };
            // The untracked calls of the request path (creations) go on
            // connections of their own to the primary of their slot, as
            // learnt: the settings are the first node's.
            let first = nodes[0].into_connection_info().map_err(invalid)?;
            let node_settings = first.redis_settings().clone();
            let tls = matches!(first.addr(), redis::ConnectionAddr::TcpTls { .. });
            let direct = Nodes {
                settings: node_settings,
                tls,
                opener: opener(false),
            };
            let mut builder = redis::cluster::ClusterClientBuilder::new(nodes)
                .connection_timeout(r.timeout)
                .response_timeout(r.timeout)
                .use_protocol(protocol);
            if let Some(pushes) = pushes {
                builder = builder.push_sender(pushes);
            }
            let client = builder.build().map_err(invalid)?;
            // The client carries the `Forget` push sender: the shards'
            // connections tell the near cache what Redis pushes.
            let local = LocalClient::Cluster(client.clone(), r.timeout);
            let shard = near
                .as_ref()
                .map(|_| LocalClient::Cluster(client.clone(), r.timeout));
            let config = redis::cluster::ClusterConfig::new()
                .set_connection_timeout(r.timeout)
                .set_response_timeout(r.timeout);
            let conn = Conn::Cluster(client.get_pending_async_connection_with_config(config));
            (conn, local, shard, Some(direct))
        } else {
            let info = r.url.as_str().into_connection_info().map_err(invalid)?;
            let settings = info.redis_settings().clone().set_protocol(protocol);
            let info = info.set_redis_settings(settings);
            let client = redis::Client::open(info.clone()).map_err(invalid)?;
            let local = LocalClient::Single(info.clone(), opener(false));
            let shard = (pushes.is_some()).then(|| LocalClient::Single(info, opener(true)));
            let mut config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(r.timeout))
                .set_response_timeout(Some(r.timeout))
                .set_max_delay(Duration::from_secs(1))
                .set_number_of_retries(3);
            if let Some(pushes) = pushes {
                config = config.set_push_sender(pushes);
            }
            let manager =
                ConnectionManager::new_lazy_with_config(client, config).map_err(invalid)?;
            (Conn::Single(manager), local, shard, None)
        };
        // Fence channels, on one Redis and on Sentinel's master: named after
        // the key prefix and a number of this process's own, so no other
        // proxy's connection subscribes to one of them.
        let fences = (!cluster).then(|| {
            let mut process = [0u8; 8];
            getrandom::fill(&mut process).expect("the operating system's random source failed");
            format!(
                "{}{}{:016x}:",
                r.key_prefix,
                FENCES,
                u64::from_le_bytes(process)
            )
        });
        let lanes = Lanes {
            local: Local::new(local, nodes),
            shards: shard
                .zip(near.clone())
                .map(|(c, near)| Shards::new(c, near, fences, workers)),
        };
        let store = RedisStore {
            inner: Arc::new(Inner {
                conn,
                cluster,
                reachable: AtomicBool::new(false),
                counters,
                pattern: format!("{}*", escape_glob(&r.key_prefix)),
                prefix: r.key_prefix.clone(),
                timeout: r.timeout,
                load: Script::new(LOAD),
                apply: Script::new(APPLY),
                destroy: Script::new(DESTROY),
                user_key: user_key.map(str::to_owned),
                user_field: user_key.map(data_field),
                events,
                near,
                combiner: Combiner::default(),
                creates: Creates::default(),
                ready: Ready::default(),
                owners: SlotOwners::default(),
                lanes,
                master,
                clock: AtomicI64::new(0),
                clock_error: AtomicU64::new(u64::MAX),
            }),
        };
        tokio::spawn(upkeep(Arc::downgrade(&store.inner)));
        match store.ping().await {
            Ok(()) => {
                tracing::info!(cluster, "connected to the Redis session store");
                store.measure_clock().await;
                store.check_version().await;
            }
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
        session_key(&self.inner.prefix, id)
    }

    /// A new session's ID. On a Cluster, in the slot this thread's other new
    /// sessions go to, once the store knows which node holds which slot (see
    /// `creates.rs`).
    fn draw_id(&self) -> SessionId {
        if !self.inner.cluster {
            return SessionId::random();
        }
        let owners = self.inner.owners.map();
        // The slot of the key's hash tag, the ID's head (see `key`), without
        // building the key for every draw. A prefix holding a tag of its own
        // puts every session in one slot, where the drawing changes nothing.
        (self.inner.creates).new_id(owners.as_deref(), |id| lanes::key_slot(&id.head()))
    }

    fn tombstone(key: &str) -> String {
        let mut t = String::with_capacity(key.len() + 6);
        t.push_str(key);
        t.push_str(":moved");
        t
    }

    /// The session ID a key names; `None` for tombstones and foreign keys.
    fn id_of(&self, key: &[u8]) -> Option<SessionId> {
        id_of(&self.inner.prefix, key)
    }

    /// Asks Redis its version and turns the near cache on when it is 7 or
    /// later; `None` while Redis does not answer.
    async fn check_version(&self) -> Option<bool> {
        let near = self.inner.near.as_ref()?;
        if near.active() {
            return Some(true);
        }
        let info = self
            .run(|mut c| async move { redis::cmd("INFO").arg("server").query_async(&mut c).await })
            .await;
        let major = major_version(info.as_ref().ok()?)?;
        if major >= 7 {
            near.activate();
            tracing::info!(
                "near cache on: Redis tells this proxy of every change to a session it holds"
            );
            Some(true)
        } else {
            tracing::warn!(
                major,
                "near cache off: it needs Redis 7 or later; every request goes to Redis"
            );
            Some(false)
        }
    }

    /// Asks Redis the time and keeps its offset from this proxy's clock,
    /// taking the answer as given halfway through the round trip. Leaves the
    /// last offset while Redis does not answer.
    async fn measure_clock(&self) {
        let before = super::now_ms();
        let time = self
            .run(|mut c| async move { redis::cmd("TIME").query_async::<(u64, u64)>(&mut c).await })
            .await;
        let after = super::now_ms();
        if let Ok((secs, micros)) = time {
            let redis = secs.saturating_mul(1000).saturating_add(micros / 1000);
            let local = before / 2 + after / 2;
            let offset = i64::try_from(redis)
                .unwrap_or(i64::MAX)
                .saturating_sub(i64::try_from(local).unwrap_or(i64::MAX));
            self.inner.clock.store(offset, Ordering::Relaxed);
            let error = after.saturating_sub(before).div_ceil(2) + 1;
            self.inner.clock_error.store(error, Ordering::Relaxed);
        }
    }

    /// The time since a session's last refresh at `seen` (Unix ms on Redis's
    /// clock), never less than it is: it bounds how long the near cache keeps
    /// the session. Unknown (`seen` < 0, or the clock not measured yet) is
    /// taken as too old to keep.
    fn age(&self, seen: i64) -> Duration {
        let error = self.inner.clock_error.load(Ordering::Relaxed);
        let (Ok(seen), true) = (u64::try_from(seen), error != u64::MAX) else {
            return Duration::MAX;
        };
        Duration::from_millis(
            self.redis_now_ms()
                .saturating_sub(seen)
                .saturating_add(error),
        )
    }

    /// Now on Redis's clock (Unix ms), from this proxy's and the last offset
    /// measured: within a few milliseconds of what Redis's `TIME` would say.
    fn redis_now_ms(&self) -> u64 {
        let offset = self.inner.clock.load(Ordering::Relaxed);
        super::now_ms().saturating_add_signed(offset)
    }

    /// The near cache, when it is on.
    fn near(&self) -> Option<&Arc<NearCache>> {
        self.inner.near.as_ref().filter(|n| n.active())
    }

    /// The set of `user`'s session IDs.
    fn user_index(&self, user: &str) -> String {
        format!("{}user:{user}", self.inner.prefix)
    }

    fn user_field(&self) -> &[u8] {
        self.inner.user_field.as_deref().unwrap_or_default()
    }

    /// `SADD` or `SREM` of session IDs to or from `user`'s set.
    async fn index(&self, add: bool, user: &str, ids: &[SessionId]) -> Result<(), StoreError> {
        if user.is_empty() || ids.is_empty() || self.inner.user_field.is_none() {
            return Ok(());
        }
        let key = self.user_index(user);
        let members: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
        let (key, members) = (&key, &members);
        let _: i64 = self
            .run(|mut c| async move {
                redis::cmd(if add { "SADD" } else { "SREM" })
                    .arg(key)
                    .arg(members)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(())
    }

    /// The IDs `user`'s set holds (some may have ended since).
    async fn members(&self, user: &str) -> Result<Vec<SessionId>, StoreError> {
        let key = self.user_index(user);
        let key = &key;
        let members: Vec<Vec<u8>> = self
            .run(|mut c| async move { redis::cmd("SMEMBERS").arg(key).query_async(&mut c).await })
            .await?;
        Ok(members
            .iter()
            .filter_map(|m| SessionId::decode(m))
            .collect())
    }

    /// Destroys `id`, when given only if its data holds `field` = `value`;
    /// `Some(user)` when it was destroyed. Counted and told as an event.
    async fn destroy_one(
        &self,
        id: &SessionId,
        only_if: Option<(&[u8], &str)>,
        reason: Reason,
    ) -> Result<Option<String>, StoreError> {
        let inner = &self.inner;
        let key = self.key(id);
        let (field, value) = only_if.unwrap_or((b"", ""));
        let user_field = self.user_field();
        let key = &key;
        // Out of the near cache before the call and again after its reply
        // (when this is dropped): a read in flight cannot bring it back.
        let pending = self.near().and_then(|n| n.write(id)).map(|(p, _)| p);
        // With the near cache, on the session's own connection (even when the
        // cache had no room for a slot now: an earlier write's may come back):
        // its reply is handled after everything Redis sent there before it, so
        // no fence or answer of an earlier write can fill a slot once this
        // returns.
        let track = self.near().is_some();
        let reply: Vec<Value> = self
            .run(|mut c| async move {
                let reply = eval(
                    &mut c,
                    &inner.lanes,
                    &inner.destroy,
                    track,
                    key.as_bytes(),
                    |_| {
                        let mut call = evalsha(&inner.destroy, &[key.as_bytes()]);
                        call.arg(field).arg(value).arg(user_field);
                        call
                    },
                )
                .await?;
                Ok(redis::from_redis_value(reply)?)
            })
            .await?;
        drop(pending);
        if !matches!(reply.first(), Some(Value::Int(1))) {
            return Ok(None);
        }
        let user = reply
            .get(1)
            .and_then(bytes_of)
            .map(|u| String::from_utf8_lossy(u).into_owned())
            .unwrap_or_default();
        inner.counters.add(SessionCount::Destroyed, 1);
        if !user.is_empty() {
            // The set forgets it; a failure here only leaves a member that
            // every reader skips.
            let _ = self.index(false, &user, &[*id]).await;
        }
        let named = (!user.is_empty()).then(|| user.clone());
        inner
            .events
            .session(EventKind::Destroyed, id, named, Some(reason));
        Ok(Some(user))
    }

    /// What the admin API shows of one of `user`'s sessions; `None` when it has
    /// ended or belongs to somebody else now.
    async fn user_session(
        &self,
        id: SessionId,
        user: &str,
    ) -> Result<Option<UserSession>, StoreError> {
        let key = self.key(&id);
        let key = &key;
        let user_field = self.user_field();
        let ip = data_field(LOGIN_IP_KEY);
        let ua = data_field(LOGIN_UA_KEY);
        let (ip, ua) = (&ip, &ua);
        let values: Vec<Option<Vec<u8>>> = self
            .run(|mut c| async move {
                redis::cmd("HMGET")
                    .arg(key)
                    .arg("m:c")
                    .arg("m:s")
                    .arg(user_field)
                    .arg(ip)
                    .arg(ua)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let text = |i: usize| {
            values
                .get(i)
                .cloned()
                .flatten()
                .map(|v| String::from_utf8_lossy(&v).into_owned())
        };
        let number = |i: usize| text(i).and_then(|t| t.parse::<u64>().ok());
        let (Some(created_ms), Some(last_seen_ms)) = (number(0), number(1)) else {
            return Ok(None);
        };
        if text(2).as_deref() != Some(user) {
            return Ok(None);
        }
        Ok(Some(UserSession {
            id,
            created_ms,
            last_seen_ms: last_seen_ms / 1000 * 1000,
            client_ip: text(3),
            user_agent: text(4),
        }))
    }

    /// `user`'s live sessions, most recently seen first; members of the set
    /// that ended are taken out of it.
    async fn live_sessions(&self, user: &str) -> Result<Vec<UserSession>, StoreError> {
        let mut live = Vec::new();
        let mut stale = Vec::new();
        for id in self.members(user).await? {
            match self.user_session(id, user).await? {
                Some(s) => live.push(s),
                None => stale.push(id),
            }
        }
        self.index(false, user, &stale).await?;
        live.sort_by(|a, b| b.last_seen_ms.cmp(&a.last_seen_ms).then(a.id.cmp(&b.id)));
        Ok(live)
    }

    /// `session.max_per_user`, after `keep` joined `user`.
    async fn enforce_limit(
        &self,
        user: &str,
        keep: &SessionId,
        policy: &Policy,
    ) -> Result<(), StoreError> {
        let Some(max) = policy.max_per_user else {
            return Ok(());
        };
        if user.is_empty() || self.inner.user_field.is_none() {
            return Ok(());
        }
        let mut others: Vec<UserSession> = self
            .live_sessions(user)
            .await?
            .into_iter()
            .filter(|s| s.id != *keep)
            .collect();
        // Least recently seen last.
        while others.len() + 1 > max {
            let Some(oldest) = others.pop() else { break };
            let field = self.user_field();
            self.destroy_one(&oldest.id, Some((field, user)), Reason::Limit)
                .await?;
        }
        Ok(())
    }

    /// Appends lifecycle events to the stream `key` (one `XADD` each, field
    /// `event`, the stream trimmed to about `max_len` entries), in one round trip.
    pub(crate) async fn append_events(
        &self,
        key: &str,
        lines: &[Vec<u8>],
        max_len: usize,
    ) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        for line in lines {
            pipe.cmd("XADD")
                .arg(key)
                .arg("MAXLEN")
                .arg("~")
                .arg(max_len)
                .arg("*")
                .arg("event")
                .arg(line)
                .ignore();
        }
        let pipe = &pipe;
        self.run(|mut c| async move { pipe.query_async::<()>(&mut c).await })
            .await
    }

    /// A fresh ID for regenerated data: on a Cluster it keeps the hash tag so that
    /// both keys are in one slot.
    fn next_id(&self, old: &SessionId) -> SessionId {
        if self.inner.cluster {
            SessionId::random_under(old.first_bytes())
        } else {
            SessionId::random()
        }
    }

    /// The servers to walk with `SCAN`.
    async fn nodes(&self) -> Result<Vec<Node>, StoreError> {
        if !self.inner.cluster {
            return Ok(vec![Node::Single]);
        }
        let mut primaries: Vec<(String, u16)> = Vec::new();
        for (_, _, primary) in self.cluster_slots().await? {
            if !primaries.contains(&primary) {
                primaries.push(primary);
            }
        }
        Ok(primaries
            .into_iter()
            .map(|(host, port)| Node::Primary { host, port })
            .collect())
    }

    /// A Cluster's slot ranges (`CLUSTER SLOTS`): first slot, last slot, and
    /// the primary's host and port.
    async fn cluster_slots(&self) -> Result<Vec<(u16, u16, (String, u16))>, StoreError> {
        let slots: Value = self
            .run(
                |mut c| async move { redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut c).await },
            )
            .await?;
        let mut ranges = Vec::new();
        let Value::Array(entries) = slots else {
            return Ok(ranges);
        };
        let int = |v: Option<&Value>| match v {
            Some(Value::Int(n)) => u16::try_from(*n).ok(),
            _ => None,
        };
        for entry in entries {
            let Value::Array(parts) = entry else { continue };
            let Some(Value::Array(primary)) = parts.get(2) else {
                continue;
            };
            let host = match primary.first() {
                Some(Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
                Some(Value::SimpleString(h)) => h.clone(),
                _ => continue,
            };
            let (Some(first), Some(last), Some(port)) =
                (int(parts.first()), int(parts.get(1)), int(primary.get(1)))
            else {
                continue;
            };
            ranges.push((first, last.min(16383), (host, port)));
        }
        Ok(ranges)
    }

    /// The Cluster slot of `key`; 0 on one Redis.
    fn slot(&self, key: &str) -> u16 {
        if self.inner.cluster {
            lanes::key_slot(key.as_bytes())
        } else {
            0
        }
    }

    /// Learns which node holds which slot, for creating sessions.
    async fn learn_owners(&self) {
        match self.cluster_slots().await {
            Ok(ranges) if !ranges.is_empty() => self.inner.owners.learn(&ranges),
            Ok(_) => tracing::debug!("CLUSTER SLOTS named no slot"),
            Err(e) => tracing::debug!(error = %crate::chain::Chain(&e), "CLUSTER SLOTS failed"),
        }
    }

    /// Sends `sessions`' transactions (`blocks`: the sessions of each, by
    /// index) in one pipeline, to the primary of the first one's slot; the
    /// outcome of each transaction, or of the call.
    async fn create_blocks(
        &self,
        sessions: &[NewSession],
        blocks: &[Vec<usize>],
    ) -> Result<Vec<RedisResult<()>>, StoreError> {
        let inner = &self.inner;
        let Some(&first) = blocks.first().and_then(|b| b.first()) else {
            return Ok(Vec::new());
        };
        let pipeline = || {
            let mut cmds = Vec::with_capacity(2 * sessions.len() + 2 * blocks.len());
            for block in blocks {
                cmds.push(redis::cmd("MULTI"));
                for s in block.iter().map(|&i| &sessions[i]) {
                    // Sized up front: growing the buffers of each command
                    // cost about 1,300 instructions a new visitor.
                    let pairs = s.data.pairs();
                    let data: usize = pairs.iter().map(|(k, v)| k.len() + 2 + v.len()).sum();
                    let bytes = s.key.len() + 40 + data;
                    let mut hset = Cmd::with_capacity(6 + 2 * pairs.len(), bytes);
                    hset.arg("HSET")
                        .arg(&s.key)
                        .arg("m:c")
                        .arg(s.now)
                        .arg("m:s")
                        .arg(s.now);
                    for (k, v) in pairs {
                        hset.arg(data_field(k)).arg(v);
                    }
                    let mut pexpire = Cmd::with_capacity(3, s.key.len() + 32);
                    pexpire.arg("PEXPIRE").arg(&s.key).arg(s.ttl);
                    cmds.extend([hset, pexpire]);
                }
                cmds.push(redis::cmd("EXEC"));
            }
            cmds
        };
        let key = sessions[first].key.as_bytes();
        let node = (inner.cluster)
            .then(|| inner.owners.primary(self.slot(&sessions[first].key)))
            .flatten();
        let node = node.as_ref();
        let replies = self
            .run(|_| async move { request_each(&inner.lanes, pipeline(), key, node).await })
            .await?;
        let mut replies = replies.into_iter();
        Ok(blocks
            .iter()
            .map(|block| {
                // `MULTI`, two commands a session, `EXEC`.
                let n = 2 * block.len() + 2;
                let mut error = None;
                let mut exec = None;
                for reply in replies.by_ref().take(n) {
                    match reply {
                        Value::ServerError(e) => {
                            error.get_or_insert(RedisError::from(e));
                        }
                        reply => exec = Some(reply),
                    }
                }
                match (error, exec) {
                    (Some(e), _) => Err(e),
                    (None, Some(Value::Array(done))) if done.len() == 2 * block.len() => Ok(()),
                    _ => Err(RedisError::from((
                        redis::ErrorKind::Client,
                        "Redis did not run the transaction that creates sessions",
                    ))),
                }
            })
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
    /// `LOAD`'s pseudo-field `m:a`: milliseconds since the last refresh.
    age_ms: u64,
    /// `m:v`, raised by every write of the data (0 before the first).
    stamp: u64,
}

fn bytes_of(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes()),
        _ => None,
    }
}

fn parse_fields(items: &[Value]) -> Fields {
    let mut pairs = Vec::new();
    let (mut created_ms, mut seen_ms, mut age_ms, mut stamp) = (0, 0, 0, 0);
    for pair in items.chunks_exact(2) {
        let (Some(f), Some(v)) = (bytes_of(&pair[0]), bytes_of(&pair[1])) else {
            continue;
        };
        let number = || std::str::from_utf8(v).ok().and_then(|s| s.parse().ok());
        match f {
            b"m:c" => created_ms = number().unwrap_or(0),
            b"m:s" => seen_ms = number().unwrap_or(0),
            b"m:a" => age_ms = number().unwrap_or(0),
            b"m:v" => stamp = number().unwrap_or(0),
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
        age_ms,
        stamp,
    }
}

/// A write worked out on this proxy from the near cache's copy of the session.
struct Ahead {
    base: Base,
    /// The data after the write.
    data: SessionData,
    /// The user before and after (empty for none).
    before: String,
    after: String,
}

impl Ahead {
    fn of(base: Base, changes: &Changes, user_key: Option<&str>) -> Ahead {
        let held = (base.view.data.as_ref()).map_or_else(SessionData::default, |h| {
            SessionData::from_encoded(h.as_bytes())
        });
        let data = held.with_changes(changes);
        let user = |d: &SessionData| user_key.and_then(|k| d.get(k)).unwrap_or("").to_owned();
        Ahead {
            before: user(&held),
            after: user(&data),
            base,
            data,
        }
    }
}

/// The form pairs as script arguments: key, value, key, value, ...
fn push_pairs<'a>(args: &mut Vec<&'a [u8]>, pairs: impl Iterator<Item = &'a (String, String)>) {
    for (k, v) in pairs {
        args.push(k.as_bytes());
        args.push(v.as_bytes());
    }
}

impl WriteOne for RedisStore {
    async fn write_one(
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
        let user_field = self.user_field();
        // A login is filed under its user before it is written (see `insert`).
        let login = (inner.user_key.as_deref())
            .and_then(|k| changes.touches(k))
            .flatten()
            .filter(|u| !u.is_empty());
        for _ in 0..3 {
            // A retry reuses the new ID: the script recognises a move it already made.
            let new_id = if regenerate { self.next_id(id) } else { *id };
            if let Some(user) = login {
                self.index(true, user, &[new_id]).await?;
            }
            let new_key = self.key(&new_id);
            let (key, new_key, tombstone, args) = (&key, &new_key, &tombstone, &args);
            // The session as the script leaves it goes to the near cache: the
            // next request needs no round trip of its own.
            let near = self.near();
            let (pending, base) = match near.and_then(|n| n.write(id)) {
                Some((pending, base)) => (Some(pending), base),
                None => (None, None),
            };
            let pending_new = (near.filter(|_| regenerate))
                .and_then(|n| n.write(&new_id))
                .map(|(pending, _)| pending);
            // With the session cached, this proxy works the write out itself,
            // and Redis only checks that the session is still at that stamp.
            let ahead = (base.filter(|_| !regenerate && changes.writes_data()))
                .map(|base| Ahead::of(base, changes, inner.user_key.as_deref()))
                .filter(|ahead| ahead.data.encoded_len() <= policy.max_data_bytes);
            let stamp = ahead.as_ref().map(|a| a.base.stamp);
            let track = pending.is_some();
            let reply: Vec<Value> = self
                .run(|mut c| async move {
                    let reply = eval(
                        &mut c,
                        &inner.lanes,
                        &inner.apply,
                        track,
                        key.as_bytes(),
                        |fence| {
                            let mut call = evalsha(
                                &inner.apply,
                                &[key.as_bytes(), new_key.as_bytes(), tombstone.as_bytes()],
                            );
                            call.arg(policy.max_data_bytes)
                                .arg(ms(policy.idle_timeout))
                                .arg(ms(policy.absolute_timeout))
                                .arg(ms(policy.regenerate_grace))
                                .arg(u8::from(regenerate))
                                .arg(user_field)
                                .arg(nrem)
                                .arg(u8::from(track));
                            match stamp {
                                Some(stamp) => call.arg(stamp),
                                None => call.arg(""),
                            };
                            call.arg(fence.unwrap_or(""));
                            for a in args {
                                call.arg(*a);
                            }
                            call
                        },
                    )
                    .await?;
                    Ok(redis::from_redis_value(reply)?)
                })
                .await?;
            let int = |i: usize| match reply.get(i) {
                Some(Value::Int(n)) => Some(*n),
                _ => None,
            };
            let text = |i: usize| {
                (reply.get(i).and_then(bytes_of))
                    .map(|u| String::from_utf8_lossy(u).into_owned())
                    .unwrap_or_default()
            };
            let mut users = (text(2), text(3));
            if int(0) == Some(4) {
                // Stored at the stamp given, so as worked out here.
                let Some(ahead) = ahead else {
                    return Err(StoreError::Unavailable(
                        "Redis answered a write at a stamp that was not given".into(),
                    ));
                };
                if let Some(pending) = pending {
                    let view = SessionView {
                        data: ahead.data.header().cloned(),
                        created_ms: ahead.base.view.created_ms,
                    };
                    pending.fill_until(view, ahead.base.stamp + 1, ahead.base.until);
                }
                users = (ahead.before, ahead.after);
            } else if let (Some(Value::Array(fields)), Some(Value::Int(seen))) =
                (reply.get(4), reply.get(5))
            {
                let fields = parse_fields(fields);
                let view = SessionView {
                    data: fields.data.header().cloned(),
                    created_ms: fields.created_ms,
                };
                let age = self.age(*seen);
                match pending {
                    // The state is the new session's; the old ID's slot goes
                    // even when the new one got none (a full cache).
                    Some(old) if regenerate => old.moved(pending_new, view, fields.stamp, age),
                    Some(old) => old.fill(view, fields.stamp, age),
                    None => {}
                }
            }
            let applied = match (int(0), int(1)) {
                (Some(1), Some(1)) => Applied::Regenerated(new_id),
                (Some(1 | 4), _) => Applied::Stored,
                (Some(2), Some(bytes)) => Applied::TooLarge {
                    bytes: bytes as usize,
                },
                (Some(3), _) => {
                    if let Some(user) = login {
                        self.index(false, user, &[new_id]).await?;
                    }
                    continue;
                }
                _ => Applied::Missing,
            };
            let (before, after) = users;
            match applied {
                Applied::Regenerated(_) => inner.counters.add(SessionCount::Regenerated, 1),
                Applied::TooLarge { .. } => inner.counters.add(SessionCount::RefusedTooLarge, 1),
                Applied::Stored | Applied::Missing => {}
            }
            if let Applied::Regenerated(new_id) = applied {
                self.index(true, &after, &[new_id]).await?;
                self.index(false, &before, &[*id]).await?;
                if inner.events.enabled() {
                    let user = (!after.is_empty()).then(|| after.clone());
                    let mut event = Event::new(EventKind::Regenerated, &new_id, user, None);
                    event.previous = Some(id.tag());
                    inner.events.emit(event);
                }
            } else if before != after {
                self.index(false, &before, &[*id]).await?;
            }
            if matches!(applied, Applied::Stored | Applied::Regenerated(_))
                && !after.is_empty()
                && (before != after || login.is_some())
            {
                let current = match applied {
                    Applied::Regenerated(new_id) => new_id,
                    _ => *id,
                };
                self.enforce_limit(&after, &current, policy).await?;
            }
            if matches!(applied, Applied::Missing | Applied::TooLarge { .. }) {
                if let Some(user) = login {
                    self.index(false, user, &[new_id]).await?;
                }
            }
            return Ok(applied);
        }
        Err(StoreError::Unavailable(
            "three random session IDs were all taken".into(),
        ))
    }
}

/// Sessions are created in batches (see `creates.rs`).
impl CreateMany for RedisStore {
    /// One transaction per slot (on one Redis, one for all), each an `HSET`
    /// and a `PEXPIRE` per session between `MULTI` and `EXEC`: plain commands,
    /// cheaper for Redis than a script. The transactions go in one pipeline.
    /// The IDs are fresh (2^-256 odds of meeting another), so nothing is
    /// checked first, and a retry after a dropped connection writes the same.
    /// Not cached or tracked: most new visitors never come back, and one that
    /// does costs a single read, which is then cached.
    ///
    /// On a Cluster the call goes to the primary of the first session's slot,
    /// and the others' slots are there as far as [`SlotOwners`] knows. Where it
    /// was wrong, Redis answers `MOVED`: the sessions go again, each slot's
    /// alone, and the owners are learnt anew.
    async fn create_many(&self, sessions: &[NewSession]) -> Vec<Result<(), StoreError>> {
        let mut blocks: Vec<(u16, Vec<usize>)> = Vec::new();
        for (i, s) in sessions.iter().enumerate() {
            let slot = self.slot(&s.key);
            match blocks.iter_mut().find(|(b, _)| *b == slot) {
                Some((_, block)) => block.push(i),
                None => blocks.push((slot, vec![i])),
            }
        }
        let blocks: Vec<Vec<usize>> = blocks.into_iter().map(|(_, b)| b).collect();
        let n = blocks.len();
        // The outcome of each transaction, and those answered `MOVED`: on a
        // connection of its own to a primary, a transaction whose slot moved
        // is; the Cluster's client follows a `MOVED` with the whole pipeline,
        // which then meets one for another transaction, back and forth, until
        // it gives up. Those go again, each alone and through the Cluster's
        // client, once the owners are forgotten.
        let (mut outcomes, moved): (Vec<Result<(), StoreError>>, Vec<usize>) =
            match self.create_blocks(sessions, &blocks).await {
                Ok(outcomes) => {
                    let outcomes: Vec<_> = (outcomes.into_iter())
                        .map(|o| o.map_err(unavailable))
                        .collect();
                    let moved = (0..n)
                        .filter(|&b| outcomes[b].as_ref().is_err_and(is_redirect))
                        .collect();
                    (outcomes, moved)
                }
                Err(e) if n > 1 && is_redirect(&e) => {
                    ((0..n).map(|_| Err(e.copied())).collect(), (0..n).collect())
                }
                Err(e) => {
                    let e = Err(e);
                    return (sessions.iter())
                        .map(|_| e.as_ref().copied().map_err(StoreError::copied))
                        .collect();
                }
            };
        if !moved.is_empty() {
            self.inner.owners.forget();
            let blocks = &blocks;
            let again = moved.iter().map(|&b| async move {
                let alone = std::slice::from_ref(&blocks[b]);
                self.create_blocks(sessions, alone).await.and_then(|o| {
                    o.into_iter().next().map_or_else(
                        || Err(StoreError::Unavailable("no reply to a request".into())),
                        |o| o.map_err(unavailable),
                    )
                })
            });
            let again = futures_util::future::join_all(again).await;
            for (b, outcome) in moved.into_iter().zip(again) {
                outcomes[b] = outcome;
            }
        }
        let mut answers: Vec<Result<(), StoreError>> =
            (0..sessions.len()).map(|_| Ok(())).collect();
        for (block, outcome) in blocks.iter().zip(outcomes) {
            for &i in block {
                answers[i] = outcome.as_ref().copied().map_err(StoreError::copied);
            }
        }
        answers
    }

    fn call_of(&self, key: &str) -> Option<u32> {
        if !self.inner.cluster {
            return None;
        }
        let slot = self.slot(key);
        let (owner, ask) = self.inner.owners.owner(slot);
        if ask {
            let store = self.clone();
            tokio::spawn(async move { store.learn_owners().await });
        }
        // Unknown: the slot's own call.
        Some(owner.map_or(0x1_0000 | u32::from(slot), u32::from))
    }

    fn spare(&self) -> (SessionId, String) {
        let id = self.draw_id();
        (id, self.key(&id))
    }
}

impl SessionStore for RedisStore {
    async fn load(&self, id: &SessionId, policy: &Policy) -> Result<Lookup, StoreError> {
        let near = self.near();
        if let Some(near) = near {
            let absolute = ms(policy.absolute_timeout);
            if let Some(view) = near.get(id, absolute, super::now_ms()) {
                near.count(true);
                return Ok(Lookup::Found(view));
            }
            // A read of this session in flight: its answer serves this request
            // too. Its call is bounded by the same timeout, so this wait ends
            // in time unless Redis stalled; then this request has had its
            // time. Without an answer (the read failed, its request was
            // dropped), this request reads for itself.
            if let Some(read) = near.join(id) {
                match tokio::time::timeout(self.inner.timeout, read.answer()).await {
                    Ok(Some(view)) if near::within(&view, absolute, super::now_ms()) => {
                        near.count(true);
                        return Ok(Lookup::Found(view));
                    }
                    Ok(_) => {}
                    Err(_) => {
                        near.count(false);
                        return Err(StoreError::Timeout);
                    }
                }
            }
            near.count(false);
        }
        let pending = near.and_then(|n| n.read(id));
        let key = self.key(id);
        let tombstone = Self::tombstone(&key);
        let inner = &self.inner;
        let (key, tombstone) = (&key, &tombstone);
        let track = pending.is_some();
        let value: Value = self
            .run(|mut c| async move {
                eval(
                    &mut c,
                    &inner.lanes,
                    &inner.load,
                    track,
                    key.as_bytes(),
                    |_| {
                        let mut call =
                            evalsha(&inner.load, &[key.as_bytes(), tombstone.as_bytes()]);
                        call.arg(ms(policy.idle_timeout))
                            .arg(ms(policy.absolute_timeout))
                            .arg(self.user_field());
                        call
                    },
                )
                .await
            })
            .await?;
        if let Value::Array(items) = &value {
            if items.first().and_then(bytes_of) != Some(&b"!expired"[..]) {
                let fields = parse_fields(items);
                let view = SessionView {
                    data: fields.data.header().cloned(),
                    created_ms: fields.created_ms,
                };
                if let Some(pending) = pending {
                    pending.fill(
                        view.clone(),
                        fields.stamp,
                        Duration::from_millis(fields.age_ms),
                    );
                }
                return Ok(Lookup::Found(view));
            }
        }
        if let Some(pending) = pending {
            pending.gone();
        }
        Ok(match value {
            Value::Array(items) if items.first().and_then(bytes_of) == Some(&b"!expired"[..]) => {
                let reason = match items.get(1).and_then(bytes_of) {
                    Some(b"absolute") => Reason::Absolute,
                    _ => Reason::Idle,
                };
                let user = (items.get(2).and_then(bytes_of))
                    .map(|u| String::from_utf8_lossy(u).into_owned())
                    .filter(|u| !u.is_empty());
                if let Some(user) = &user {
                    let _ = self.index(false, user, &[*id]).await;
                }
                inner.counters.add(SessionCount::Expired, 1);
                inner
                    .events
                    .session(EventKind::Expired, id, user, Some(reason));
                Lookup::Missing
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
        // Filed under its user before it is stored: the index never misses a
        // session, and a member that never came to be is skipped by readers.
        let user = (inner.user_key.as_deref())
            .and_then(|k| data.get(k))
            .filter(|u| !u.is_empty())
            .map(str::to_owned);
        if let Some(user) = &user {
            self.index(true, user, &[*id]).await?;
        }
        // The times are Redis's clock, as this proxy last measured it.
        let ttl = ms(policy.idle_timeout.saturating_add(Duration::from_secs(1)))
            .min(ms(policy.absolute_timeout));
        let now = self.redis_now_ms();
        // One made ahead and handed to this request is stored already, as
        // long as the response wrote nothing to it (see `ready.rs`).
        let made = inner.ready.stored(id, ttl);
        if !(made && data.is_empty()) {
            let key = self.key(id);
            let session = NewSession {
                key,
                ttl,
                now,
                data,
            };
            inner.creates.create(self, session).await?;
        }
        inner.ready.count(self, ttl, now);
        inner.counters.add(SessionCount::Created, 1);
        inner
            .events
            .session(EventKind::Created, id, user.clone(), None);
        if let Some(user) = &user {
            self.enforce_limit(user, id, policy).await?;
        }
        Ok(Inserted::Stored)
    }

    async fn apply(
        &self,
        id: &SessionId,
        changes: &Changes,
        policy: &Policy,
    ) -> Result<Applied, StoreError> {
        let user_key = self.inner.user_key.as_deref();
        (self.inner.combiner)
            .apply(self, id, changes, policy, user_key)
            .await
    }

    async fn destroy(&self, id: &SessionId, reason: Reason) -> Result<bool, StoreError> {
        Ok(self.destroy_one(id, None, reason).await?.is_some())
    }

    async fn user_sessions(&self, user: &str) -> Result<Vec<UserSession>, StoreError> {
        if self.inner.user_field.is_none() {
            return Ok(Vec::new());
        }
        self.live_sessions(user).await
    }

    async fn destroy_user(
        &self,
        user: &str,
        except: Option<&SessionId>,
        reason: Reason,
    ) -> Result<u64, StoreError> {
        if self.inner.user_field.is_none() || user.is_empty() {
            return Ok(0);
        }
        let mut n = 0;
        // A regeneration files its new ID under the user right after it moved
        // the data: a second look catches one that raced with the first.
        for round in 0..3 {
            let mut found = 0;
            let mut stale = Vec::new();
            for id in self.members(user).await? {
                if Some(&id) == except {
                    continue;
                }
                match (self.destroy_one(&id, Some((self.user_field(), user)), reason)).await? {
                    Some(_) => found += 1,
                    None => stale.push(id),
                }
            }
            self.index(false, user, &stale).await?;
            n += found;
            if round > 0 && found == 0 {
                break;
            }
        }
        Ok(n)
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
        let field = data_field(key);
        let mut n = 0;
        for session in self.matching(key, value).await? {
            let Some(id) = self.id_of(&session) else {
                continue;
            };
            if self
                .destroy_one(&id, Some((&field, value)), Reason::Admin)
                .await?
                .is_some()
            {
                n += 1;
            }
        }
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

    /// A session made ahead on this thread, while one is fresh (see
    /// `ready.rs`); else drawn as [`RedisStore::draw_id`] draws.
    fn new_id(&self) -> SessionId {
        self.inner.ready.take().unwrap_or_else(|| self.draw_id())
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

    fn events(&self) -> &EventSink {
        &self.inner.events
    }
}

/// A session's key: `prefix`, then the ID with its head (its first four
/// characters, [`SessionId::head`]) as the hash tag.
fn session_key(prefix: &str, id: &SessionId) -> String {
    let mut encoded = String::with_capacity(43);
    id.encode_into(&mut encoded);
    let mut key = String::with_capacity(prefix.len() + 45);
    key.push_str(prefix);
    key.push('{');
    key.push_str(&encoded[..4]);
    key.push('}');
    key.push_str(&encoded[4..]);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keys_slot_is_its_ids_heads() {
        for _ in 0..200 {
            let id = SessionId::random();
            let key = session_key("sessiongate:", &id);
            assert_eq!(
                lanes::key_slot(key.as_bytes()),
                lanes::key_slot(&id.head()),
                "{key}"
            );
        }
    }

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
