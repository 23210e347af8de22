//! How the request path's calls reach Redis: each worker thread's own
//! connection for the calls the near cache does not track, and as many
//! connections as worker threads, chosen by the session's slot, for those it
//! does. One way to open a connection (one Redis, a Cluster, the master the
//! Sentinels name) and one way to send a unit of commands on it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use redis::aio::{AsyncPushSender, ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, RedisError, RedisResult, Value};

use super::pipe::{Pipe, PipeConfig};
use super::sentinel::{server_info, Master};
use crate::session::near::NearCache;

/// Sends the commands `cmds` builds as one unit and returns the reply to the
/// last of them. With `track`, the keys they read are tracked on the
/// connection they run on, so the near cache hears of every change to them
/// (see [`Lanes`] for which connection that is); `cmds` is then given that
/// connection's fence channel, when it has one (see [`Shards`]).
pub(super) async fn request(
    lanes: &Lanes,
    cmds: impl FnOnce(Option<&str>) -> Vec<Cmd>,
    track: bool,
    key: &[u8],
) -> RedisResult<Value> {
    let replies = match (track, &lanes.shards) {
        (true, Some(shards)) => shards.call(cmds, key).await,
        // Only the near cache asks for tracking, and it comes with shards.
        _ => lanes.local.call(cmds(None), key, None).await,
    };
    last_reply(replies?)
}

/// Sends `cmds` untracked in one pipeline, on a Cluster to the primary of
/// `key`'s slot, and returns the reply to each: a command's error is its
/// reply ([`Value::ServerError`]), the pipeline's own failure the `Err`.
pub(super) async fn request_each(
    lanes: &Lanes,
    cmds: Vec<Cmd>,
    key: &[u8],
    node: Option<&NodeAddr>,
) -> RedisResult<Vec<Value>> {
    lanes.local.call(cmds, key, node).await
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
/// Cluster: one per worker thread, and each session's calls always on the same one (by
/// its key's slot), so every key is tracked on one connection and this
/// proxy's own writes (`NOLOOP`) never invalidate its own copy. Each is opened
/// by the first call that needs it, on that caller's runtime (a proxy
/// worker's), and again after a failure; what Redis pushes on it goes to the
/// near cache (`Forget`), and its loss empties the cache. On one Redis,
/// tracking is turned on as it opens; on a Cluster, whose node connections
/// come and go inside the client, before every call.
///
/// On one Redis (and on Sentinel's master), each connection also subscribes
/// to a channel of its own, `fences` followed by a number no other connection
/// of this process had: the channel a write on it publishes its fence on (see
/// the near cache). A Redis whose ACL refuses the subscription leaves the
/// connection without one, and its writes publish nothing.
pub(super) struct Shards {
    /// With the `Forget` push sender.
    client: LocalClient,
    near: Arc<NearCache>,
    shards: Vec<Slot>,
    /// The start of every fence channel's name; `None` on a Cluster.
    fences: Option<String>,
}

impl Shards {
    /// With one connection for each of the proxy's `workers` worker threads.
    pub(super) fn new(
        client: LocalClient,
        near: Arc<NearCache>,
        fences: Option<String>,
        workers: usize,
    ) -> Shards {
        Shards {
            client,
            near,
            shards: (0..workers.max(1)).map(|_| Slot::default()).collect(),
            fences,
        }
    }

    /// Sends the commands `cmds` builds as one unit on the connection of
    /// `key`'s shard, given its fence channel; the reply to each.
    async fn call(
        &self,
        cmds: impl FnOnce(Option<&str>) -> Vec<Cmd>,
        key: &[u8],
    ) -> RedisResult<Vec<Value>> {
        let shard = &self.shards[usize::from(key_slot(key)) % self.shards.len()];
        let track = Track {
            near: &self.near,
            fences: self.fences.as_deref(),
        };
        shard.call(&self.client, Some(track), cmds, key).await
    }
}

/// What a connection of [`Shards`] is opened with: tracking on, for `near`,
/// and a fence channel under `fences`.
#[derive(Clone, Copy)]
struct Track<'a> {
    near: &'a NearCache,
    fences: Option<&'a str>,
}

/// Numbers the fence channels of this process.
static FENCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// One connection, opened by the first call that needs it and again after it
/// failed or its master moved; calls that come meanwhile wait for it.
#[derive(Default)]
pub(super) struct Slot {
    current: std::sync::Mutex<Option<Opened>>,
    /// Held while one call opens the connection; counts the connections opened.
    opening: tokio::sync::Mutex<u64>,
}

/// A connection of a [`Slot`].
#[derive(Clone)]
pub(super) struct Opened {
    generation: u64,
    /// Of the master it goes to (see [`LocalClient::epoch`]).
    epoch: u64,
    pub(super) conn: LocalConn,
    /// The channel this connection alone subscribes to (see [`Shards`]).
    fence: Option<Arc<str>>,
}

impl Slot {
    fn current(&self, epoch: u64) -> Option<Opened> {
        let current = self.current.lock().ok()?;
        current.as_ref().filter(|o| o.epoch >= epoch).cloned()
    }

    /// The connection, opened first when there is none for `epoch`; with
    /// `track`, on one Redis, tracking keys from its first command and
    /// subscribed to a fence channel, when one is named.
    async fn get(
        &self,
        client: &LocalClient,
        epoch: u64,
        track: Option<Track<'_>>,
    ) -> RedisResult<Opened> {
        self.get_with(epoch, track, || client.open()).await
    }

    /// As [`Slot::get`], with `open` opening the connection.
    async fn get_with<F>(
        &self,
        epoch: u64,
        track: Option<Track<'_>>,
        open: impl FnOnce() -> F,
    ) -> RedisResult<Opened>
    where
        F: std::future::Future<Output = RedisResult<(u64, LocalConn)>>,
    {
        if let Some(o) = self.current(epoch) {
            return Ok(o);
        }
        let mut generation = self.opening.lock().await;
        if let Some(o) = self.current(epoch) {
            return Ok(o);
        }
        let (epoch, mut conn) = open().await?;
        let mut fence = None;
        if let (Some(track), false) = (track, matches!(conn, LocalConn::Cluster(_))) {
            redis::cmd("CLIENT")
                .arg("TRACKING")
                .arg("ON")
                .arg("NOLOOP")
                .query_async::<()>(&mut conn)
                .await?;
            if let Some(fences) = track.fences {
                let channel = format!("{fences}{}", FENCES.fetch_add(1, Ordering::Relaxed));
                match conn.subscribe(&channel).await {
                    Ok(()) => {
                        track.near.trust(&channel);
                        fence = Some(Arc::from(channel));
                    }
                    // Refused (an ACL without the channel): no fences here.
                    Err(e) if matches!(e.kind(), redis::ErrorKind::Server(_)) => {
                        tracing::debug!(error = %e, "no fence channel on a near-cache connection");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        *generation += 1;
        let opened = Opened {
            generation: *generation,
            epoch,
            conn,
            fence,
        };
        if let Ok(mut current) = self.current.lock() {
            *current = Some(opened.clone());
        }
        Ok(opened)
    }

    /// After `opened` answered `e`: when it may be unusable, drops it (unless
    /// another connection took its place already), so the next call opens
    /// another, and empties `near`, since the keys tracked on it are no longer.
    pub(super) fn failed(&self, opened: &Opened, e: &RedisError, near: Option<&NearCache>) {
        if !unusable(e) {
            return;
        }
        if let Ok(mut current) = self.current.lock() {
            if current
                .as_ref()
                .is_some_and(|c| c.generation == opened.generation)
            {
                *current = None;
            }
        }
        if let Some(near) = near {
            // What is still in flight on it may hand fences on.
            if let Some(fence) = &opened.fence {
                near.distrust(fence);
            }
            near.clear();
        }
    }

    /// Sends the commands `cmds` builds, given the connection's fence channel,
    /// as one unit on this slot's connection, opened first when there is none
    /// (see [`Slot::get`]), and returns the reply to each; after a failure, as
    /// [`Slot::failed`] says.
    async fn call(
        &self,
        client: &LocalClient,
        track: Option<Track<'_>>,
        cmds: impl FnOnce(Option<&str>) -> Vec<Cmd>,
        key: &[u8],
    ) -> RedisResult<Vec<Value>> {
        let epoch = client.epoch().await;
        self.call_with(epoch, track, || client.open(), cmds, key)
            .await
    }

    /// As [`Slot::call`], with `open` opening the connection.
    async fn call_with<F>(
        &self,
        epoch: u64,
        track: Option<Track<'_>>,
        open: impl FnOnce() -> F,
        cmds: impl FnOnce(Option<&str>) -> Vec<Cmd>,
        key: &[u8],
    ) -> RedisResult<Vec<Value>>
    where
        F: std::future::Future<Output = RedisResult<(u64, LocalConn)>>,
    {
        let mut opened = self.get_with(epoch, track, open).await?;
        let cmds = cmds(opened.fence.as_deref());
        match opened.conn.send(cmds, track.is_some(), key).await {
            Ok(values) => Ok(values),
            Err(e) => {
                self.failed(&opened, &e, track.map(|t| t.near));
                Err(e)
            }
        }
    }
}

/// The store's shared connection on Sentinel (the admin path, the index, the
/// clock): a [`Slot`] on the master the Sentinels name.
pub(super) struct SentinelConn {
    client: LocalClient,
    slot: Slot,
    /// Emptied with each connection dropped.
    near: Option<Arc<NearCache>>,
}

impl SentinelConn {
    pub(super) fn new(client: LocalClient, near: Option<Arc<NearCache>>) -> SentinelConn {
        SentinelConn {
            client,
            slot: Slot::default(),
            near,
        }
    }

    /// The connection to use now; waits out a switch of master.
    pub(super) async fn get(&self) -> RedisResult<Opened> {
        let epoch = self.client.epoch().await;
        self.slot.get(&self.client, epoch, None).await
    }

    /// After `opened` answered `e` (see [`Slot::failed`]).
    pub(super) fn failed(&self, opened: &Opened, e: &RedisError) {
        self.slot.failed(opened, e, self.near.as_deref());
    }
}

/// Connections of the calling thread, one per store. On a proxy worker thread
/// (one runtime per thread) a call goes out and its answer comes back on the
/// thread that asked, with no wake-up of another thread on either way: a new
/// visitor's session costs no more than that round trip. Each is a [`Slot`]:
/// a burst of calls on a thread with none (the first requests, or all those
/// waiting when Redis comes back) opens one connection, not one per call.
pub(super) struct Local {
    client: LocalClient,
    /// On a Cluster, how a connection to one of its primaries is opened.
    nodes: Option<Nodes>,
    /// This store's slot in each thread's list (see [`per_thread`]).
    token: Arc<()>,
}

/// How a connection of [`Local`] to one primary of a Cluster, named by its
/// address, is opened (with the settings of the Cluster's own connections).
pub(super) struct Nodes {
    pub(super) settings: redis::RedisConnectionInfo,
    pub(super) tls: bool,
    pub(super) opener: Opener,
}

impl Nodes {
    async fn open(&self, (host, port): &(String, u16)) -> RedisResult<(u64, LocalConn)> {
        let info = server_info(host, *port, self.tls, &self.settings)?;
        Ok((0, self.opener.open(info).await?))
    }
}

/// A Cluster primary's host and port.
pub(super) type NodeAddr = Arc<(String, u16)>;

/// A thread's connections to the primaries of a Cluster, by address.
#[derive(Default)]
pub(super) struct NodeSlots(std::sync::Mutex<Vec<(NodeAddr, Arc<Slot>)>>);

impl NodeSlots {
    fn of(&self, node: &NodeAddr) -> Arc<Slot> {
        let mut slots = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, slot)) = slots.iter().find(|(n, _)| n == node) {
            return slot.clone();
        }
        let slot = Arc::new(Slot::default());
        slots.push((node.clone(), slot.clone()));
        slot
    }
}

pub(super) enum LocalClient {
    Single(redis::ConnectionInfo, Opener),
    Cluster(redis::cluster::ClusterClient, Duration),
    /// Opens a connection to the master the Sentinels name at that moment.
    Sentinel(Arc<Master>, Opener),
}

/// How a connection to one server (one Redis, or the master the Sentinels
/// name) is opened: over plain TCP, as a [`Pipe`]; over TLS or a Unix socket,
/// by the `redis` crate. Both time out after `timeout` and tell `pushes` what
/// Redis pushes.
#[derive(Clone)]
pub(super) struct Opener {
    pub(super) timeout: Duration,
    pub(super) pushes: Option<Arc<dyn AsyncPushSender>>,
}

impl Opener {
    async fn open(&self, info: redis::ConnectionInfo) -> RedisResult<LocalConn> {
        Ok(match info.addr() {
            redis::ConnectionAddr::Tcp(host, port) => {
                let settings = info.redis_settings();
                LocalConn::Pipe(
                    Pipe::open(PipeConfig {
                        host,
                        port: *port,
                        username: settings.username(),
                        password: settings.password(),
                        db: settings.db(),
                        protocol: settings.protocol(),
                        timeout: self.timeout,
                        pushes: self.pushes.clone(),
                    })
                    .await?,
                )
            }
            _ => {
                let mut config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout));
                if let Some(pushes) = &self.pushes {
                    config = config.set_push_sender(pushes.clone());
                }
                LocalConn::Single(
                    redis::Client::open(info)?
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                )
            }
        })
    }
}

#[derive(Clone)]
pub(super) enum LocalConn {
    Pipe(Pipe),
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl LocalClient {
    /// Which connections may be used now: those opened at this epoch or later.
    /// It is always 0 but on Sentinel, where it moves with each switch of
    /// master, and where a call waits while a replica is being promoted.
    async fn epoch(&self) -> u64 {
        match self {
            LocalClient::Sentinel(master, _) => master.ready().await,
            _ => 0,
        }
    }

    /// A new connection, and the epoch it belongs to.
    async fn open(&self) -> RedisResult<(u64, LocalConn)> {
        Ok(match self {
            LocalClient::Single(info, opener) => (0, opener.open(info.clone()).await?),
            LocalClient::Cluster(client, timeout) => {
                let config = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(*timeout)
                    .set_response_timeout(*timeout);
                (
                    0,
                    LocalConn::Cluster(client.get_async_connection_with_config(config).await?),
                )
            }
            LocalClient::Sentinel(master, opener) => master.open(|info| opener.open(info)).await?,
        })
    }
}

impl LocalConn {
    /// Sends `cmds` in one pipeline, on a Cluster to the primary of `key`'s
    /// slot, and returns the replies to them. With `track` (the call's keys
    /// are to be tracked), on a Cluster, after `CLIENT TRACKING ON NOLOOP`:
    /// its node connections come and go inside the client (see [`Shards`]);
    /// other connections turned tracking on as they opened.
    async fn send(&mut self, cmds: Vec<Cmd>, track: bool, key: &[u8]) -> RedisResult<Vec<Value>> {
        match self {
            LocalConn::Pipe(p) => p.send(&cmds, 0).await,
            LocalConn::Single(c) => {
                let n = cmds.len();
                let mut pipe = redis::pipe();
                for cmd in cmds {
                    pipe.add_command(cmd);
                }
                c.req_packed_commands(&pipe, 0, n).await
            }
            LocalConn::Cluster(c) => {
                let n = cmds.len();
                let mut pipe = redis::pipe();
                if track {
                    pipe.cmd("CLIENT").arg("TRACKING").arg("ON").arg("NOLOOP");
                }
                for cmd in cmds {
                    pipe.add_command(cmd);
                }
                // The client would route `CLIENT TRACKING` by `TRACKING` as a
                // key, and `MULTI` by none.
                let route = Route::new(key_slot(key), SlotAddr::Master);
                let skip = usize::from(track);
                c.route_pipeline(pipe, skip, n, SingleNodeRoutingInfo::SpecificNode(route))
                    .await
            }
        }
    }

    /// Subscribes to `channel`, whose messages go to the connection's push
    /// sender (RESP3 only).
    async fn subscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            LocalConn::Pipe(p) => p.subscribe(channel).await,
            LocalConn::Single(c) => c.subscribe(channel).await,
            LocalConn::Cluster(_) => Err(RedisError::from((
                redis::ErrorKind::Client,
                "no fence channel on a Cluster",
            ))),
        }
    }
}

impl ConnectionLike for LocalConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            LocalConn::Pipe(p) => Box::pin(async move {
                let replies = p.send(std::slice::from_ref(cmd), 0).await?;
                replies
                    .into_iter()
                    .next()
                    .ok_or_else(|| RedisError::from((redis::ErrorKind::Client, "no reply")))
            }),
            LocalConn::Single(c) => c.req_packed_command(cmd),
            LocalConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            LocalConn::Pipe(p) => Box::pin(async move {
                let packed = pipeline.get_packed_pipeline();
                p.send_packed(&packed, offset + count, offset).await
            }),
            LocalConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            LocalConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            LocalConn::Pipe(p) => p.db(),
            LocalConn::Single(c) => c.get_db(),
            LocalConn::Cluster(c) => c.get_db(),
        }
    }
}

/// A thread's values of one kind, one per store, each under its store's
/// token.
pub(super) type PerThread<T> = std::cell::RefCell<Vec<(Weak<()>, Arc<T>)>>;

/// The calling thread's value in `list` for the store whose token is `token`,
/// made when there is none; the values of stores gone are forgotten then, off
/// the path of every other call. An entry holds its token weakly, so while
/// the entry lives no other store's token can take its address (stores come
/// and go in tests).
pub(super) fn per_thread<T: Default>(
    list: &'static std::thread::LocalKey<PerThread<T>>,
    token: &Arc<()>,
) -> Arc<T> {
    let mine = |entry: &Weak<()>| std::ptr::eq(entry.as_ptr(), Arc::as_ptr(token));
    list.with_borrow_mut(|values| {
        if let Some((_, value)) = values.iter().find(|(entry, _)| mine(entry)) {
            return value.clone();
        }
        values.retain(|(entry, _)| entry.strong_count() > 0);
        let value = Arc::new(T::default());
        values.push((Arc::downgrade(token), value.clone()));
        value
    })
}

thread_local! {
    /// Each store's slot on this thread.
    static LOCAL: PerThread<Slot> = const { std::cell::RefCell::new(Vec::new()) };
    /// Each store's connections to a Cluster's primaries on this thread.
    static NODES: PerThread<NodeSlots> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Local {
    pub(super) fn new(client: LocalClient, nodes: Option<Nodes>) -> Local {
        Local {
            client,
            nodes,
            token: Arc::new(()),
        }
    }

    /// Sends `cmds` as one unit; on a Cluster, to the primary of `key`'s slot:
    /// on a connection of its own to `node` when it is named (it may then
    /// answer `MOVED`), else through the Cluster's client. The reply to each.
    async fn call(
        &self,
        cmds: Vec<Cmd>,
        key: &[u8],
        node: Option<&NodeAddr>,
    ) -> RedisResult<Vec<Value>> {
        if let (Some(nodes), Some(node)) = (&self.nodes, node) {
            return (per_thread(&NODES, &self.token).of(node))
                .call_with(0, None, || nodes.open(node), |_| cmds, key)
                .await;
        }
        (per_thread(&LOCAL, &self.token))
            .call(&self.client, None, |_| cmds, key)
            .await
    }
}

/// On a Cluster, which primary holds each slot, as this proxy last learnt it
/// (`CLUSTER SLOTS`), so that sessions whose slots share a primary are created
/// by one call. Only a hint: a call that it sent to the wrong node meets
/// `MOVED` for those sessions, which then go again alone, and it is learnt
/// anew. It is asked for when first needed, then every [`SlotOwners::FRESH`],
/// and after a `MOVED`; never more than once a second.
#[derive(Default)]
pub(super) struct SlotOwners {
    state: std::sync::Mutex<Owners>,
}

#[derive(Default)]
struct Owners {
    /// A number for each slot's primary, `u16::MAX` for a slot none holds;
    /// empty until learnt. Shared, so that a caller can look up many slots
    /// without holding the lock.
    of: Arc<[u16]>,
    /// Each primary's address, by its number.
    primaries: Vec<NodeAddr>,
    learnt: Option<Instant>,
    asked: Option<Instant>,
}

impl SlotOwners {
    /// How long a map is used before it is asked for again.
    pub(super) const FRESH: Duration = Duration::from_secs(60);

    /// The primary of `slot`, if known, and whether the map is to be asked
    /// for now (then the caller asks, and no other for a second).
    pub(super) fn owner(&self, slot: u16) -> (Option<u16>, bool) {
        let Ok(mut owners) = self.state.lock() else {
            return (None, false);
        };
        let owner = owners
            .of
            .get(usize::from(slot))
            .copied()
            .filter(|&o| o != u16::MAX);
        let now = Instant::now();
        let stale = owners
            .learnt
            .is_none_or(|at| now.duration_since(at) >= Self::FRESH);
        let asked_lately = owners
            .asked
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(1));
        let ask = stale && !asked_lately;
        if ask {
            owners.asked = Some(now);
        }
        (owner, ask)
    }

    /// The address of `slot`'s primary, if known.
    pub(super) fn primary(&self, slot: u16) -> Option<NodeAddr> {
        let owners = self.state.lock().ok()?;
        let n = *owners.of.get(usize::from(slot))?;
        owners.primaries.get(usize::from(n)).cloned()
    }

    /// The map as last learnt (each slot's primary, as [`SlotOwners::owner`]
    /// numbers them), unless none is known.
    pub(super) fn map(&self) -> Option<Arc<[u16]>> {
        let owners = self.state.lock().ok()?;
        (!owners.of.is_empty()).then(|| owners.of.clone())
    }

    /// Learns the owners from `ranges`: first slot, last slot, primary.
    pub(super) fn learn(&self, ranges: &[(u16, u16, (String, u16))]) {
        let mut of = vec![u16::MAX; 16384];
        let mut primaries: Vec<&(String, u16)> = Vec::new();
        for (first, last, primary) in ranges {
            let n = match primaries.iter().position(|p| *p == primary) {
                Some(n) => n,
                None => {
                    primaries.push(primary);
                    primaries.len() - 1
                }
            };
            let n = u16::try_from(n).unwrap_or(u16::MAX);
            for slot in of
                .iter_mut()
                .take(usize::from(*last) + 1)
                .skip(usize::from(*first))
            {
                *slot = n;
            }
        }
        let primaries: Vec<NodeAddr> = primaries.into_iter().map(|p| Arc::new(p.clone())).collect();
        if let Ok(mut owners) = self.state.lock() {
            owners.of = of.into();
            owners.primaries = primaries;
            owners.learnt = Some(Instant::now());
        }
    }

    /// Forgets the map, which was wrong: it is asked for again by the next
    /// caller (after a second since the last ask).
    pub(super) fn forget(&self) {
        if let Ok(mut owners) = self.state.lock() {
            owners.of = Arc::from([]);
            owners.primaries.clear();
            owners.learnt = None;
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
    fn slot_owners_are_asked_for_once_a_second_until_learnt_and_forgotten_when_wrong() {
        let owners = SlotOwners::default();
        // Unknown: the first caller asks, the next within a second does not.
        assert_eq!(owners.owner(7), (None, true));
        assert_eq!(owners.owner(9000), (None, false));
        let a = ("10.0.0.1".to_owned(), 6379);
        let b = ("10.0.0.2".to_owned(), 6379);
        owners.learn(&[(0, 99, a.clone()), (100, 16383, b), (50, 60, a)]);
        assert_eq!(owners.owner(0), (Some(0), false));
        assert_eq!(owners.owner(99), (Some(0), false));
        assert_eq!(owners.owner(100), (Some(1), false));
        assert_eq!(owners.owner(16383), (Some(1), false));
        owners.forget();
        assert_eq!(owners.owner(0), (None, false), "asked a moment ago");
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(owners.owner(0), (None, true));
    }

    #[test]
    fn a_slot_no_node_holds_has_no_owner() {
        let owners = SlotOwners::default();
        owners.learn(&[(0, 8191, ("a".to_owned(), 1))]);
        assert_eq!(owners.owner(8191).0, Some(0));
        assert_eq!(owners.owner(8192).0, None);
    }

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
