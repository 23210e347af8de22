//! The master the Sentinels name, as this proxy follows it.
//!
//! A planned failover (`SENTINEL FAILOVER`) leaves the old master running and
//! writable for about ten seconds after the Sentinels switch to the new one;
//! only then do they turn it into a replica, and everything written to it since
//! the promotion is gone. A connection opened before the switch never learns
//! of it by itself. So every connection here carries the epoch of the master it
//! was opened to, and the epoch moves the moment any Sentinel says so:
//!
//! - `+failover-state-send-slaveof-noone` (the leader is about to promote a
//!   replica): calls wait ([`Master::ready`]) until the switch, so nothing more
//!   is written to the master being left;
//! - `+switch-master`: the new address, a new epoch, the calls go on there;
//! - `-failover-abort-*`: the calls go on where they were.
//!
//! Each Sentinel is listened to on a connection of its own; whichever leads a
//! failover announces it. Besides, every second and after a connection to the
//! master fails, every Sentinel is asked (`SENTINEL MASTER`), and the answer
//! with the highest configuration epoch wins. A master is used only once it
//! says so itself (`ROLE`).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{IntoConnectionInfo, RedisConnectionInfo, RedisError, RedisResult};

use crate::session::near::NearCache;

/// Past this, a switch whose end no Sentinel announced is given up on, and the
/// Sentinels are asked again.
const LONGEST_SWITCH: Duration = Duration::from_secs(5);

/// The Sentinels are asked at most this often.
const ASK_EVERY: Duration = Duration::from_millis(100);

/// How long the other Sentinels' answers are waited for once one has answered.
const LATE_ANSWER: Duration = Duration::from_millis(50);

/// What is heard from the Sentinels, and acted on.
const CHANNELS: [&str; 5] = [
    "+failover-state-send-slaveof-noone",
    "+switch-master",
    "-failover-abort-not-elected",
    "-failover-abort-slave-timeout",
    "-failover-abort-no-good-slave",
];

pub(super) struct Master {
    /// The name the Sentinels monitor it by.
    name: String,
    sentinels: Vec<Sentinel>,
    /// How to speak to the master (the protocol, `AUTH`), wherever it is.
    settings: RedisConnectionInfo,
    /// Over TLS.
    tls: bool,
    followed: Mutex<Followed>,
    /// Held while the Sentinels are asked: a call that comes meanwhile waits
    /// for that answer, rather than find them just asked and nothing followed.
    asking: tokio::sync::Mutex<()>,
    /// Raised with every new address: a connection opened at an older epoch
    /// is not used again.
    epoch: AtomicU64,
    /// A replica is being promoted: calls wait for the switch.
    switching: AtomicBool,
    switched: tokio::sync::Notify,
    /// Emptied at every switch: the new master tracks nothing for this proxy.
    near: Option<Arc<NearCache>>,
}

#[derive(Default)]
struct Followed {
    addr: Option<(String, u16)>,
    /// The Sentinels' configuration epoch of `addr`, or a lower bound of it.
    config_epoch: u64,
    /// When the Sentinels were last asked.
    asked: Option<Instant>,
    /// When the switch under way began.
    switch_began: Option<Instant>,
}

struct Sentinel {
    client: redis::Client,
    /// For `SENTINEL MASTER`, opened on first use.
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
}

/// How to reach the server at `host`:`port` (over TLS with `tls`, verifying
/// its name) and speak to it (`settings`).
pub(super) fn server_info(
    host: &str,
    port: u16,
    tls: bool,
    settings: &RedisConnectionInfo,
) -> RedisResult<redis::ConnectionInfo> {
    let addr = if tls {
        redis::ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: false,
            tls_params: None,
        }
    } else {
        redis::ConnectionAddr::Tcp(host.to_owned(), port)
    };
    Ok(addr
        .into_connection_info()?
        .set_redis_settings(settings.clone()))
}

impl Master {
    /// `nodes` are the Sentinels' URLs; `settings` how to speak to the master,
    /// and `tls` whether over TLS.
    pub(super) fn new(
        name: &str,
        nodes: &[String],
        settings: RedisConnectionInfo,
        tls: bool,
        near: Option<Arc<NearCache>>,
    ) -> RedisResult<Arc<Master>> {
        let sentinels = nodes
            .iter()
            .map(|n| {
                Ok(Sentinel {
                    client: redis::Client::open(n.as_str())?,
                    conn: tokio::sync::Mutex::new(None),
                })
            })
            .collect::<RedisResult<Vec<_>>>()?;
        let master = Arc::new(Master {
            name: name.to_owned(),
            sentinels,
            settings,
            tls,
            followed: Mutex::new(Followed::default()),
            asking: tokio::sync::Mutex::new(()),
            epoch: AtomicU64::new(0),
            switching: AtomicBool::new(false),
            switched: tokio::sync::Notify::new(),
            near,
        });
        for i in 0..master.sentinels.len() {
            tokio::spawn(listen(Arc::downgrade(&master), i));
        }
        Ok(master)
    }

    /// The epoch whose connections may be used now; while a replica is being
    /// promoted, waits for the switch (the caller's timeout bounds the wait).
    pub(super) async fn ready(&self) -> u64 {
        loop {
            // Registered before the check: a switch in between still wakes it.
            let switched = self.switched.notified();
            if !self.switching.load(Ordering::Acquire) {
                return self.epoch.load(Ordering::Acquire);
            }
            switched.await;
        }
    }

    /// A connection to the master as of the returned epoch, opened by
    /// `connect` from the master's address and the settings to speak to it.
    /// When the address followed does not answer as a master, the Sentinels
    /// are asked again and the new one tried.
    pub(super) async fn open<C, F>(
        &self,
        connect: impl Fn(redis::ConnectionInfo) -> F,
    ) -> RedisResult<(u64, C)>
    where
        C: ConnectionLike,
        F: Future<Output = RedisResult<C>>,
    {
        if self.current().is_none() {
            self.ask().await?;
        }
        let Some((epoch, addr)) = self.current() else {
            return Err(no_master(&self.name));
        };
        match self.connect(&addr, &connect).await {
            Ok(conn) => Ok((epoch, conn)),
            Err(e) => {
                // The Sentinels may know better; if not, this is the answer.
                if self.ask().await.is_ok() {
                    if let Some((epoch, moved)) = self.current().filter(|(_, a)| *a != addr) {
                        return Ok((epoch, self.connect(&moved, &connect).await?));
                    }
                }
                Err(e)
            }
        }
    }

    fn current(&self) -> Option<(u64, (String, u16))> {
        let followed = self.followed.lock().ok()?;
        let addr = followed.addr.clone()?;
        Some((self.epoch.load(Ordering::Acquire), addr))
    }

    async fn connect<C, F>(
        &self,
        (host, port): &(String, u16),
        connect: &impl Fn(redis::ConnectionInfo) -> F,
    ) -> RedisResult<C>
    where
        C: ConnectionLike,
        F: Future<Output = RedisResult<C>>,
    {
        let info = server_info(host, *port, self.tls, &self.settings)?;
        let mut conn = connect(info).await?;
        match redis::cmd("ROLE").query_async(&mut conn).await? {
            redis::Role::Primary { .. } => Ok(conn),
            _ => Err(RedisError::from((
                redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
                "the server the Sentinels name is not a master (yet)",
            ))),
        }
    }

    /// Asks every Sentinel for the master and follows the answer with the
    /// highest configuration epoch; at most every [`ASK_EVERY`].
    pub(super) async fn ask(&self) -> RedisResult<()> {
        let _asking = self.asking.lock().await;
        {
            let Ok(mut followed) = self.followed.lock() else {
                return Err(no_master(&self.name));
            };
            if followed.asked.is_some_and(|t| t.elapsed() < ASK_EVERY) {
                return Ok(());
            }
            followed.asked = Some(Instant::now());
        }
        // Every Sentinel at once; once one has answered, the others have
        // [`LATE_ANSWER`] more: one that is down or cut off holds no call up.
        let mut pending: FuturesUnordered<_> = self
            .sentinels
            .iter()
            .map(|s| s.master(&self.name))
            .collect();
        let mut best: Option<(u64, (String, u16))> = None;
        let mut error = None;
        let mut until = None;
        loop {
            let next = match until {
                Some(t) => match tokio::time::timeout_at(t, pending.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
                None => pending.next().await,
            };
            match next {
                Some(Ok((epoch, addr))) => {
                    if best.as_ref().is_none_or(|(e, _)| epoch > *e) {
                        best = Some((epoch, addr));
                    }
                    until.get_or_insert(tokio::time::Instant::now() + LATE_ANSWER);
                }
                Some(Err(e)) => error = Some(e),
                None => break,
            }
        }
        match (best, error) {
            (Some((config_epoch, addr)), _) => {
                self.follow(addr, Some(config_epoch));
                Ok(())
            }
            (None, Some(e)) => Err(e),
            (None, None) => Err(no_master(&self.name)),
        }
    }

    /// Follows `addr` from now on, unless what is followed is newer: with the
    /// configuration epoch a Sentinel answered, or, with `None`, as announced
    /// by a switch (newer than anything followed before it).
    fn follow(&self, addr: (String, u16), config_epoch: Option<u64>) {
        let Ok(mut followed) = self.followed.lock() else {
            return;
        };
        match config_epoch {
            Some(e) => {
                if followed.addr.is_some() && e <= followed.config_epoch {
                    return;
                }
                followed.config_epoch = e;
            }
            None => {
                if followed.addr.as_ref() == Some(&addr) {
                    return;
                }
                // A lower bound: each switch raises the epoch by one at least.
                followed.config_epoch += 1;
            }
        }
        if followed.addr.as_ref() == Some(&addr) {
            return;
        }
        tracing::info!(
            master = %self.name,
            addr = %format_args!("{}:{}", addr.0, addr.1),
            "following the Redis master the Sentinels name"
        );
        followed.addr = Some(addr);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if let Some(near) = &self.near {
            // The old master's connections may still hand fences on.
            near.distrust_all();
            near.clear();
        }
        // However it was learnt, the switch is over.
        if followed.switch_began.take().is_some() {
            drop(followed);
            self.switch_ends();
        }
    }

    /// A Sentinel began promoting a replica of this master.
    fn switch_begins(self: &Arc<Self>) {
        let began = Instant::now();
        if let Ok(mut followed) = self.followed.lock() {
            followed.switch_began = Some(began);
        }
        if self.switching.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::info!(master = %self.name, "the Sentinels are promoting a replica: calls wait for the switch");
        // Should no Sentinel announce the end, the wait does not last.
        let master = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(LONGEST_SWITCH).await;
            let Some(master) = master.upgrade() else {
                return;
            };
            let stale =
                (master.followed.lock().ok()).is_some_and(|f| f.switch_began == Some(began));
            if stale {
                tracing::warn!(master = %master.name, "no Sentinel announced the end of the failover; asking them");
                master.switch_ends();
                let _ = master.ask().await;
            }
        });
    }

    fn switch_ends(&self) {
        if let Ok(mut followed) = self.followed.lock() {
            followed.switch_began = None;
        }
        self.switching.store(false, Ordering::Release);
        self.switched.notify_waiters();
    }

    /// A message on one of [`CHANNELS`].
    fn heard(self: &Arc<Self>, channel: &str, payload: &str) {
        let words: Vec<&str> = payload.split(' ').collect();
        match channel {
            // "slave <name> <ip> <port> @ <master> <ip> <port>"
            "+failover-state-send-slaveof-noone" => {
                if words.get(5) == Some(&self.name.as_str()) {
                    self.switch_begins();
                }
            }
            // "<master> <old ip> <old port> <new ip> <new port>"
            "+switch-master" => {
                if words.first() == Some(&self.name.as_str()) {
                    if let (Some(ip), Some(Ok(port))) =
                        (words.get(3), words.get(4).map(|p| p.parse::<u16>()))
                    {
                        self.follow((ip.to_string(), port), None);
                    }
                    self.switch_ends();
                }
            }
            // "master <master> <ip> <port>"
            _ => {
                if words.get(1) == Some(&self.name.as_str()) {
                    tracing::info!(master = %self.name, event = channel, "the failover was abandoned");
                    self.switch_ends();
                }
            }
        }
    }
}

impl Sentinel {
    /// This Sentinel's master of `name`: its configuration epoch and address.
    async fn master(&self, name: &str) -> RedisResult<(u64, (String, u16))> {
        let mut slot = self.conn.lock().await;
        let conn = match slot.as_ref() {
            Some(c) => c.clone(),
            None => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(1)))
                    .set_response_timeout(Some(Duration::from_secs(1)));
                let c = self
                    .client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                *slot = Some(c.clone());
                c
            }
        };
        drop(slot);
        let mut conn = conn;
        let reply: RedisResult<std::collections::HashMap<String, String>> = redis::cmd("SENTINEL")
            .arg("MASTER")
            .arg(name)
            .query_async(&mut conn)
            .await;
        let fields = match reply {
            Ok(f) => f,
            Err(e) => {
                if !matches!(e.kind(), redis::ErrorKind::Server(_)) {
                    *self.conn.lock().await = None;
                }
                return Err(e);
            }
        };
        let field = |k: &str| fields.get(k).map(String::as_str);
        match (field("ip"), field("port").and_then(|p| p.parse().ok())) {
            (Some(ip), Some(port)) => {
                let epoch = field("config-epoch")
                    .and_then(|e| e.parse().ok())
                    .unwrap_or(0);
                Ok((epoch, (ip.to_owned(), port)))
            }
            _ => Err(no_master(name)),
        }
    }
}

fn no_master(name: &str) -> RedisError {
    RedisError::from((
        redis::ErrorKind::Client,
        "no Sentinel names a master",
        name.to_owned(),
    ))
}

/// Listens to Sentinel `i` for as long as `master` is followed, reconnecting
/// after a second when the connection is lost.
async fn listen(master: Weak<Master>, i: usize) {
    loop {
        let Some(client) = master.upgrade().map(|m| m.sentinels[i].client.clone()) else {
            return;
        };
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            for channel in CHANNELS {
                pubsub.subscribe(channel).await?;
            }
            RedisResult::Ok(pubsub)
        };
        if let Ok(Ok(pubsub)) = tokio::time::timeout(Duration::from_secs(2), subscribed).await {
            // Whatever was missed while not listening.
            if let Some(m) = master.upgrade() {
                let _ = m.ask().await;
            }
            let mut messages = pubsub.into_on_message();
            loop {
                match tokio::time::timeout(Duration::from_secs(1), messages.next()).await {
                    Ok(Some(msg)) => {
                        let Some(m) = master.upgrade() else { return };
                        if let Ok(payload) = msg.get_payload::<String>() {
                            m.heard(msg.get_channel_name(), &payload);
                        }
                    }
                    Ok(None) => break,
                    Err(_) if master.strong_count() == 0 => return,
                    Err(_) => {}
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Following master `m` at port 7001.
    fn master(config_epoch: u64) -> Arc<Master> {
        let nodes = ["redis://127.0.0.1:1".to_owned()];
        let m = Master::new("m", &nodes, RedisConnectionInfo::default(), false, None).unwrap();
        m.follow(("127.0.0.1".into(), 7001), Some(config_epoch));
        m
    }

    /// The leader of a failover of `master` starts promoting 7002.
    fn promoting(m: &Arc<Master>, master: &str) {
        m.heard(
            "+failover-state-send-slaveof-noone",
            &format!("slave 127.0.0.1:7002 127.0.0.1 7002 @ {master} 127.0.0.1 7001"),
        );
    }

    /// A call that waits for the master.
    fn call(m: &Arc<Master>) -> tokio::task::JoinHandle<u64> {
        let m = m.clone();
        tokio::spawn(async move { m.ready().await })
    }

    #[tokio::test]
    async fn a_switch_holds_calls_and_moves_the_epoch() {
        let m = master(3);
        let before = m.ready().await;
        promoting(&m, "m");
        let waiting = call(&m);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a call waits during the switch");
        m.heard("+switch-master", "m 127.0.0.1 7001 127.0.0.1 7002");
        let after = waiting.await.unwrap();
        assert_ne!(before, after);
        assert_eq!(m.current().unwrap().1, ("127.0.0.1".to_owned(), 7002));
        // A Sentinel that has not heard yet names the old one, at the old epoch.
        m.follow(("127.0.0.1".into(), 7001), Some(3));
        assert_eq!(m.current().unwrap().1, ("127.0.0.1".to_owned(), 7002));
        // Every Sentinel announces the switch in turn; it counts once.
        m.heard("+switch-master", "m 127.0.0.1 7001 127.0.0.1 7002");
        m.heard("+switch-master", "m 127.0.0.1 7001 127.0.0.1 7002");
        assert_eq!(m.ready().await, after);
        // The new configuration, once asked, changes nothing.
        m.follow(("127.0.0.1".into(), 7002), Some(4));
        assert_eq!(m.ready().await, after);
        // The next failover, found by asking rather than heard, is followed.
        m.follow(("127.0.0.1".into(), 7003), Some(5));
        assert_eq!(m.current().unwrap().1, ("127.0.0.1".to_owned(), 7003));
        assert!(m.ready().await > after);
    }

    #[tokio::test]
    async fn a_switch_found_by_asking_ends_the_wait() {
        let m = master(1);
        promoting(&m, "m");
        let waiting = call(&m);
        m.follow(("127.0.0.1".into(), 7002), Some(2));
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("the wait ended")
            .unwrap();
    }

    /// A Sentinel that answers `SENTINEL MASTER` with `port` at `config_epoch`
    /// and `+OK` to anything else; with `None`, one that accepts connections
    /// and never answers. Its URL.
    async fn fake_sentinel(answer: Option<(u16, u64)>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = socket.read(&mut buf).await {
                        let Some((port, epoch)) = answer.filter(|_| n > 0) else {
                            if n == 0 {
                                return;
                            }
                            continue;
                        };
                        seen.extend_from_slice(&buf[..n]);
                        // Whole commands only: each ends where the next `*` begins.
                        let text = String::from_utf8_lossy(&seen).into_owned();
                        let mut reply = String::new();
                        for command in text.split('*').skip(1) {
                            if command.contains("SENTINEL") {
                                let (port, epoch) = (port.to_string(), epoch.to_string());
                                reply.push_str("*6\r\n");
                                for f in ["ip", "127.0.0.1", "port", &port, "config-epoch", &epoch]
                                {
                                    reply.push_str(&format!("${}\r\n{f}\r\n", f.len()));
                                }
                            } else {
                                reply.push_str("+OK\r\n");
                            }
                        }
                        seen.clear();
                        if socket.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        url
    }

    #[tokio::test]
    async fn the_newest_answer_wins_and_a_silent_sentinel_holds_nothing_up() {
        let nodes = [
            fake_sentinel(None).await,
            fake_sentinel(Some((7002, 4))).await,
            fake_sentinel(Some((7003, 5))).await,
        ];
        let m = Master::new("m", &nodes, RedisConnectionInfo::default(), false, None).unwrap();
        let asked = Instant::now();
        m.ask().await.unwrap();
        // The silent one would take its response timeout, a second.
        assert!(
            asked.elapsed() < Duration::from_millis(500),
            "{:?}",
            asked.elapsed()
        );
        assert_eq!(m.current().unwrap().1, ("127.0.0.1".to_owned(), 7003));
    }

    #[tokio::test]
    async fn other_masters_and_abandoned_failovers_change_nothing() {
        let m = master(1);
        let epoch = m.ready().await;
        promoting(&m, "other");
        m.heard("+switch-master", "other 127.0.0.1 7001 127.0.0.1 7002");
        assert_eq!(m.ready().await, epoch);
        promoting(&m, "m");
        let waiting = call(&m);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a call waits during the switch");
        m.heard("-failover-abort-slave-timeout", "master m 127.0.0.1 7001");
        assert_eq!(waiting.await.unwrap(), epoch);
        assert_eq!(m.current().unwrap().1, ("127.0.0.1".to_owned(), 7001));
    }
}
