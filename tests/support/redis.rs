//! Real `redis-server` processes for the tests: one server, or a three-node
//! Redis Cluster, each on free loopback ports with its files in a temporary
//! directory, and killed when dropped.
//!
//! ```ignore
//! let Some(redis) = RedisServer::start("my_test").await else { return };
//! let proxy = Proxy::start(config(&upstream.url()).with_redis(&redis.url())).await;
//! ```
//!
//! Without `redis-server` on the PATH these helpers return `None` (the test is
//! skipped, saying so) unless `CI` is set: in CI a missing Redis fails the test.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{ConfigYaml, Proxy, PATIENCE};

/// True when the Redis tests can run; otherwise says why `test` is skipped, or
/// fails in CI.
pub fn redis_available(test: &str) -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: redis-server is not installed, and CI is set: .ci/run installs it");
    }
    eprintln!(
        "SKIPPED {test}: redis-server is not installed (apt-get install redis-server; \
         CI installs it and never skips)"
    );
    false
}

/// A loopback port that was free a moment ago, whose cluster bus port (+10000)
/// was free too when `bus` is set.
fn free_port(bus: bool) -> u16 {
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        if !bus {
            return port;
        }
        if port <= 55535 && std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

/// One `redis-server`.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    args: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// A server that keeps nothing on disk (`--save '' --appendonly no`).
    pub async fn start(test: &str) -> Option<RedisServer> {
        Self::start_with(test, &["--save", "", "--appendonly", "no"]).await
    }

    /// A server that writes every command to its append-only file before
    /// answering, so a restart after SIGKILL finds every session.
    pub async fn start_durable(test: &str) -> Option<RedisServer> {
        Self::start_with(
            test,
            &[
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ],
        )
        .await
    }

    pub async fn start_with(test: &str, args: &[&str]) -> Option<RedisServer> {
        if !redis_available(test) {
            return None;
        }
        let bus = args.contains(&"--cluster-enabled");
        // A port can be taken between finding it free and Redis binding it.
        for _ in 0..5 {
            let mut server = RedisServer {
                port: free_port(bus),
                dir: tempfile::tempdir().expect("temp dir"),
                args: args.iter().map(|a| a.to_string()).collect(),
                child: None,
            };
            if server.launch().await {
                return Some(server);
            }
        }
        panic!("redis-server did not start on any of five free ports");
    }

    /// Starts the process on `self.port`; false when it exited (port taken).
    async fn launch(&mut self) -> bool {
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while tokio::time::Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if child.try_wait().expect("wait").is_some() {
                    self.child = None;
                    return false;
                }
            }
            if self.ping().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "redis-server on port {} did not answer PING; its log:\n{}",
            self.port,
            self.log()
        );
    }

    async fn ping(&self) -> bool {
        let Ok(reply) =
            tokio::time::timeout(Duration::from_secs(1), self.try_command(&["PING"])).await
        else {
            return false;
        };
        matches!(reply, Ok(::redis::Value::SimpleString(s)) if s == "PONG")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Redis's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// Calls of `EVALSHA` this server has served so far.
    pub async fn evalsha_calls(&self) -> u64 {
        self.calls("evalsha").await
    }

    /// Calls of `command` (lower case) this server has run so far, those
    /// scripts made included.
    pub async fn calls(&self, command: &str) -> u64 {
        let info = text(&self.command(&["INFO", "commandstats"]).await);
        let prefix = format!("cmdstat_{command}:");
        // Calls that failed (NOSCRIPT, before the script is loaded) do not count.
        let Some(line) = info.lines().find_map(|l| l.strip_prefix(prefix.as_str())) else {
            return 0;
        };
        let field = |name: &str| -> u64 {
            line.split(',')
                .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0)
        };
        field("calls") - field("failed_calls") - field("rejected_calls")
    }

    /// Runs one command on a fresh connection; its error, if any.
    pub async fn try_command(&self, args: &[&str]) -> ::redis::RedisResult<::redis::Value> {
        command_at(&self.url(), args).await
    }

    /// Runs one command on a fresh connection.
    pub async fn command(&self, args: &[&str]) -> ::redis::Value {
        self.try_command(args)
            .await
            .unwrap_or_else(|e| panic!("redis {args:?} failed: {e}"))
    }

    /// Kills the server (SIGKILL): its clients see their connections drop.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, with the same files.
    pub async fn restart(&mut self) {
        self.kill();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !self.launch().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server could not get its port {} back; its log:\n{}",
                self.port,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `redis-server` that listens for TLS too (its plain port stays for the
/// tests' own commands), with a certificate for 127.0.0.1 from a test CA.
pub struct TlsRedis {
    pub server: RedisServer,
    pub tls_port: u16,
    files: super::tls::TlsFiles,
}

impl TlsRedis {
    pub async fn start(test: &str) -> Option<TlsRedis> {
        let ca = super::tls::TestCa::new("redis test CA");
        let files = super::tls::TlsFiles::new(&ca.issue("redis"));
        std::fs::write(files.dir().join("ca.pem"), ca.pem()).expect("write the CA");
        let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut args = vec![
            "--save".to_owned(),
            String::new(),
            "--appendonly".to_owned(),
            "no".to_owned(),
            "--tls-port".to_owned(),
            tls_port.to_string(),
            "--tls-auth-clients".to_owned(),
            "no".to_owned(),
        ];
        for (flag, file) in [
            ("--tls-cert-file", files.cert()),
            ("--tls-key-file", files.key()),
            ("--tls-ca-cert-file", files.dir().join("ca.pem")),
        ] {
            args.extend([flag.to_owned(), file.display().to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = RedisServer::start_with(test, &args).await?;
        Some(TlsRedis {
            server,
            tls_port,
            files,
        })
    }

    /// The CA's certificate file: what `SSL_CERT_FILE` names to trust it.
    pub fn ca_file(&self) -> String {
        self.files.dir().join("ca.pem").display().to_string()
    }

    /// The server's certificate file (not a CA: trusting it alone trusts nothing).
    pub fn cert_file(&self) -> String {
        self.files.cert().display().to_string()
    }

    /// What a Sentinel's configuration needs to reach this server over TLS.
    pub fn sentinel_lines(&self) -> String {
        format!(
            "tls-replication yes\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n",
            self.cert_file(),
            self.files.key().display(),
            self.ca_file()
        )
    }
}

/// Runs one command on a fresh connection to `url`.
async fn command_at(url: &str, args: &[&str]) -> ::redis::RedisResult<::redis::Value> {
    let client = ::redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut cmd = ::redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(&mut conn).await
}

/// One `redis-server --sentinel` watching one master, stopped when dropped.
pub struct RedisSentinel {
    master: String,
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl RedisSentinel {
    /// Starts a Sentinel on a free port, trying another port when the one
    /// picked was taken meanwhile (the process then exits at once).
    pub async fn start(master: &str, master_port: u16) -> RedisSentinel {
        Self::start_with(master, master_port, "").await
    }

    /// With `extra` lines in its configuration file.
    pub async fn start_with(master: &str, master_port: u16, extra: &str) -> RedisSentinel {
        for _ in 0..5 {
            let mut sentinel = RedisSentinel::spawn(master, master_port, extra);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while tokio::time::Instant::now() < deadline {
                if sentinel.child.try_wait().ok().flatten().is_some() {
                    break;
                }
                if sentinel.command(&["PING"]).await.is_ok() {
                    return sentinel;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        panic!("no Sentinel started on any of five ports");
    }

    fn spawn(master: &str, master_port: u16, extra: &str) -> RedisSentinel {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {dir}\n\
                 logfile {dir}/sentinel.log\n\
                 sentinel monitor {master} 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds {master} 1000\n\
                 sentinel failover-timeout {master} 5000\n{extra}\n",
                dir = dir.path().display()
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server --sentinel");
        RedisSentinel {
            master: master.to_owned(),
            port,
            child,
            _dir: dir,
        }
    }

    /// Its log, for a failure's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("sentinel.log")).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs one command on a fresh connection.
    pub async fn command(&self, args: &[&str]) -> ::redis::RedisResult<::redis::Value> {
        command_at(&self.url(), args).await
    }

    /// The master's port as this Sentinel names it.
    pub async fn master_port(&self) -> Option<u16> {
        let reply = self
            .command(&["SENTINEL", "get-master-addr-by-name", &self.master])
            .await
            .ok()?;
        match reply {
            ::redis::Value::Array(parts) => parts.get(1).map(text)?.parse().ok(),
            _ => None,
        }
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A three-primary Redis Cluster made with `redis-cli --cluster create`.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start(test: &str) -> Option<RedisCluster> {
        Self::start_with(test, false).await
    }

    /// A Cluster whose nodes write every command to their append-only file
    /// before answering, so a node killed and restarted has every session.
    pub async fn start_durable(test: &str) -> Option<RedisCluster> {
        Self::start_with(test, true).await
    }

    async fn start_with(test: &str, durable: bool) -> Option<RedisCluster> {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let args = [
                "--save",
                "",
                "--appendonly",
                if durable { "yes" } else { "no" },
                "--appendfsync",
                "always",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "5000",
            ];
            nodes.push(RedisServer::start_with(test, &args).await?);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let output = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli (package redis-tools)");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_until_ok().await;
        Some(cluster)
    }

    /// Until every node reports the cluster up with all slots served and every
    /// node known.
    async fn wait_until_ok(&self) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        'poll: loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the cluster never became ready"
            );
            for node in &self.nodes {
                let info = match node.try_command(&["CLUSTER", "INFO"]).await {
                    Ok(v) => text(&v),
                    Err(_) => String::new(),
                };
                if !(info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_ok:16384")
                    && info.contains("cluster_known_nodes:3"))
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue 'poll;
                }
            }
            return;
        }
    }

    /// `redis://127.0.0.1:PORT` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }
}

/// A Redis reply as text (bulk or simple strings), for assertions.
pub fn text(value: &::redis::Value) -> String {
    match value {
        ::redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        ::redis::Value::SimpleString(s) => s.clone(),
        ::redis::Value::VerbatimString { text, .. } => text.clone(),
        other => format!("{other:?}"),
    }
}

impl ConfigYaml {
    /// The Redis store on one server.
    pub fn with_redis(self, url: &str) -> Self {
        self.set("store.type", "redis")
            .set("store.redis.url", &format!("\"{url}\""))
    }

    /// The Redis store on a Cluster, reached through `urls`.
    pub fn with_redis_cluster(self, urls: &[String]) -> Self {
        let nodes: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
        self.set("store.type", "redis")
            .set("store.redis.cluster", "true")
            .set("store.redis.nodes", &format!("[{}]", nodes.join(", ")))
    }
}

/// Like [`Proxy::start`], also answering the admin listener's address.
pub async fn start_proxy_with_admin(yaml: impl std::fmt::Display) -> (Proxy, SocketAddr) {
    let yaml = yaml.to_string();
    let config = sessiongate::config::Config::parse(&yaml, Path::new("test.yaml"), false)
        .unwrap_or_else(|e| panic!("the test config was rejected: {e}\n---\n{yaml}"));
    let server = sessiongate::server::Server::bind(config)
        .await
        .unwrap_or_else(|e| panic!("the proxy did not bind: {e}"));
    let addr = server.local_addr();
    let admin = server
        .admin_local_addr()
        .expect("the test config sets admin.listen");
    let proxy = Proxy {
        addr,
        running: super::Running::spawn(server),
    };
    (proxy, admin)
}

/// After Redis went away, a returning visitor's next answer. A proxy with the
/// near cache may serve a session it used in the last second until it notices
/// (at once for a closed connection, within that second at most): this asks
/// until the answer is no longer such a hit, checking that each hit was the
/// session served whole (200, no new cookie), never a new session.
pub async fn once_noticed(browser: &super::Browser, url: &str) -> reqwest::Response {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let response = browser.get(url).await;
        if response.status() != 200 {
            return response;
        }
        assert!(
            super::session_set_cookie(response.headers()).is_none(),
            "a new session was given while Redis was down"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "the proxy still serves from its near cache 2 s after Redis went away"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
