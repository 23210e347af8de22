//! How the request path's calls reach Redis: each worker thread's own
//! connection for the calls the near cache does not track, and one connection
//! per core, chosen by the session's slot, for those it does. One way to open
//! a connection (one Redis, a Cluster, the master the Sentinels name) and one
//! way to send a unit of commands on it.

use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, RedisError, RedisResult, Value};

use crate::session::near::NearCache;

/// Sends `cmds` as one unit and returns the reply to the last of them. With
/// `track`, the keys they read are tracked on the connection they run on, so
/// the near cache hears of every change to them (see [`Lanes`] for which
/// connection that is).
pub(super) async fn request(
    lanes: &Lanes,
    cmds: Vec<Cmd>,
    track: bool,
    key: &[u8],
) -> RedisResult<Value> {
    match (track, &lanes.shards) {
        (true, Some(shards)) => shards.call(cmds, key).await,
        // Only the near cache asks for tracking, and it comes with shards.
        _ => lanes.local.call(cmds, key).await,
    }
}

/// The reply to the last command of a unit; a pipeline hands a command's error
/// back as a value.
fn last_reply(replies: Vec<Value>) -> RedisResult<Value> {
    let mut first_error = None;
    let mut last = None;
    for reply in replies {
        match reply.extract_error() {
            Ok(v) => last = Some(v),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match (first_error, last) {
        (Some(e), _) => Err(e),
        (None, Some(v)) => Ok(v),
        (None, None) => Err(RedisError::from((
            redis::ErrorKind::Client,
            "no reply to a request",
        ))),
    }
}

/// After `e`, a connection of [`Local`] or [`Shards`] is dropped: anything but
/// Redis's own refusal may have left it unusable (a runtime that ended takes
/// its driver with it), and a master demoted by a failover (`READONLY`) is
/// left for the one the Sentinels name now.
fn unusable(e: &RedisError) -> bool {
    !matches!(e.kind(), redis::ErrorKind::Server(_))
        || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
}

/// How the request path's calls reach Redis: untracked ones through the
/// calling thread's own connection ([`Local`]), tracked ones through their
/// session's shard ([`Shards`]); on Sentinel, to the master the Sentinels name.
/// The store's shared connection serves the admin path and the index.
pub(super) struct Lanes {
    pub(super) local: Local,
    pub(super) shards: Option<Shards>,
}

/// The connections for the calls the near cache tracks, on one Redis or a
/// Cluster: one per core, and each session's calls always on the same one (by
/// its key's slot), so every key is tracked on one connection and this
/// proxy's own writes (`NOLOOP`) never invalidate its own copy. Each is opened
/// by the first call that needs it, on that caller's runtime (a proxy
/// worker's), and again after a failure; what Redis pushes on it goes to the
/// near cache (`Forget`), and its loss empties the cache. On one Redis,
/// tracking is turned on as it opens; on a Cluster, whose node connections
/// come and go inside the client, before every call.
pub(super) struct Shards {
    /// With the `Forget` push sender.
    client: LocalClient,
    near: Arc<NearCache>,
    shards: Vec<Shard>,
}

#[derive(Default)]
struct Shard {
    /// The open connection and its generation.
    current: std::sync::Mutex<Option<(u64, LocalConn)>>,
    /// Held while one call opens the connection; the others wait for it.
    opening: tokio::sync::Mutex<u64>,
}

impl Shards {
    pub(super) fn new(client: LocalClient, near: Arc<NearCache>) -> Shards {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        Shards {
            client,
            near,
            shards: (0..n).map(|_| Shard::default()).collect(),
        }
    }

    fn current(shard: &Shard) -> Option<(u64, LocalConn)> {
        shard.current.lock().ok()?.clone()
    }

    async fn connection(&self, shard: &Shard) -> RedisResult<(u64, LocalConn)> {
        if let Some(c) = Self::current(shard) {
            return Ok(c);
        }
        let mut generation = shard.opening.lock().await;
        if let Some(c) = Self::current(shard) {
            return Ok(c);
        }
        let mut conn = self.client.open().await?;
        if let LocalConn::Single(c) = &mut conn {
            redis::cmd("CLIENT")
                .arg("TRACKING")
                .arg("ON")
                .arg("NOLOOP")
                .query_async::<()>(c)
                .await?;
        }
        *generation += 1;
        let opened = (*generation, conn);
        if let Ok(mut current) = shard.current.lock() {
            *current = Some(opened.clone());
        }
        Ok(opened)
    }

    /// Sends `cmds` as one unit on the connection of `key`'s shard.
    async fn call(&self, cmds: Vec<Cmd>, key: &[u8]) -> RedisResult<Value> {
        let shard = &self.shards[usize::from(key_slot(key)) % self.shards.len()];
        let (generation, mut conn) = self.connection(shard).await?;
        let track = matches!(conn, LocalConn::Cluster(_));
        match conn.send(cmds, track, key).await {
            Ok(values) => last_reply(values),
            Err(e) => {
                if unusable(&e) {
                    // The keys tracked on it are no longer: forget them all,
                    // and open another at the next call.
                    if let Ok(mut current) = shard.current.lock() {
                        if current.as_ref().is_some_and(|(g, _)| *g == generation) {
                            *current = None;
                        }
                    }
                    self.near.clear();
                }
                Err(e)
            }
        }
    }
}

/// Connections of the calling thread, one per store. On a proxy worker thread
/// (one runtime per thread) a call goes out and its answer comes back on the
/// thread that asked, with no wake-up of another thread on either way: a new
/// visitor's session costs no more than that round trip.
pub(super) struct Local {
    client: LocalClient,
    /// Tells this store's connections from those of another in a thread's list
    /// (stores come and go in tests): an entry holds it weakly, so while the
    /// entry lives no other store's token can take its address.
    token: Arc<()>,
}

pub(super) enum LocalClient {
    Single(redis::Client, redis::AsyncConnectionConfig),
    Cluster(redis::cluster::ClusterClient, Duration),
    /// Opens a connection to the master the Sentinels name at that moment.
    Sentinel(
        tokio::sync::Mutex<redis::sentinel::SentinelClient>,
        redis::AsyncConnectionConfig,
    ),
}

#[derive(Clone)]
enum LocalConn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl LocalClient {
    async fn open(&self) -> RedisResult<LocalConn> {
        Ok(match self {
            LocalClient::Single(client, config) => LocalConn::Single(
                client
                    .get_multiplexed_async_connection_with_config(config)
                    .await?,
            ),
            LocalClient::Cluster(client, timeout) => {
                let config = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(*timeout)
                    .set_response_timeout(*timeout);
                LocalConn::Cluster(client.get_async_connection_with_config(config).await?)
            }
            LocalClient::Sentinel(client, config) => LocalConn::Single(
                (client.lock().await)
                    .get_async_connection_with_config(config)
                    .await?,
            ),
        })
    }
}

impl LocalConn {
    /// Sends `cmds` in one pipeline, on a Cluster to the primary of `key`'s
    /// slot; with `track`, after `CLIENT TRACKING ON NOLOOP`. Returns the
    /// replies to `cmds`.
    async fn send(&mut self, cmds: Vec<Cmd>, track: bool, key: &[u8]) -> RedisResult<Vec<Value>> {
        let mut pipe = redis::pipe();
        if track {
            pipe.cmd("CLIENT").arg("TRACKING").arg("ON").arg("NOLOOP");
        }
        let n = cmds.len();
        for cmd in cmds {
            pipe.add_command(cmd);
        }
        let skip = usize::from(track);
        match self {
            LocalConn::Single(c) => c.req_packed_commands(&pipe, skip, n).await,
            LocalConn::Cluster(c) => {
                // The client would route `CLIENT TRACKING` by `TRACKING` as a
                // key, and `MULTI` by none.
                let route = Route::new(key_slot(key), SlotAddr::Master);
                c.route_pipeline(pipe, skip, n, SingleNodeRoutingInfo::SpecificNode(route))
                    .await
            }
        }
    }
}

thread_local! {
    static LOCAL: std::cell::RefCell<Vec<(Weak<()>, LocalConn)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

impl Local {
    pub(super) fn new(client: LocalClient) -> Local {
        Local {
            client,
            token: Arc::new(()),
        }
    }

    fn mine(&self, entry: &Weak<()>) -> bool {
        std::ptr::eq(entry.as_ptr(), Arc::as_ptr(&self.token))
    }

    /// This thread's connection.
    fn current(&self) -> Option<LocalConn> {
        LOCAL.with_borrow(|conns| {
            (conns.iter())
                .find(|(token, _)| self.mine(token))
                .map(|(_, c)| c.clone())
        })
    }

    async fn connection(&self) -> RedisResult<LocalConn> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let made = self.client.open().await?;
        // Another task of this thread may have connected meanwhile; those of
        // stores gone are forgotten here, off the path of every call.
        Ok(LOCAL.with_borrow_mut(|conns| {
            conns.retain(|(token, _)| token.strong_count() > 0);
            match conns.iter().find(|(token, _)| self.mine(token)) {
                Some((_, c)) => c.clone(),
                None => {
                    conns.push((Arc::downgrade(&self.token), made.clone()));
                    made
                }
            }
        }))
    }

    fn forget(&self) {
        LOCAL.with_borrow_mut(|conns| conns.retain(|(token, _)| !self.mine(token)));
    }

    /// Sends `cmds` as one unit; on a Cluster, to the primary of `key`'s slot.
    async fn call(&self, cmds: Vec<Cmd>, key: &[u8]) -> RedisResult<Value> {
        let reply = self.connection().await?.send(cmds, false, key).await;
        match reply {
            Ok(values) => last_reply(values),
            Err(e) => {
                // The next call makes a new one.
                if unusable(&e) {
                    self.forget();
                }
                Err(e)
            }
        }
    }
}

/// The Cluster slot of `key`: CRC16 (XMODEM) of its hash tag, or of the whole
/// key when it has none, modulo 16384.
pub(super) fn key_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    let mut crc: u16 = 0;
    for &b in tagged.unwrap_or(key) {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_slots_are_those_redis_computes() {
        // CLUSTER KEYSLOT on a real Redis Cluster.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"123456789"), 12739);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), 8363);
        assert_eq!(key_slot(b"sessiongate:{AbCd}rest"), key_slot(b"AbCd"));
    }
}
