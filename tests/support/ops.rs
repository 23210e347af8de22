//! Fixtures for operating the proxy: the in-process proxy together with its admin
//! listener and reloader, a parsed Prometheus scrape, and the built binary running
//! from a config file that a test rewrites and reloads with SIGHUP.
//!
//! ```ignore
//! let proxy = AdminProxy::start(config(&upstream.url())).await;
//! let before = proxy.scrape().await;
//! browser.get(&proxy.url("/")).await;
//! let after = proxy.scrape().await;
//! assert_eq!(after.delta(&before, "sessiongate_sessions_created_total", &[]), 1.0);
//! ```

use super::Running;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sessiongate::config::Config;
use sessiongate::server::{Reloader, Server, ServerError};
use tokio::sync::mpsc;

use super::{plain_client, PATIENCE};

/// The built binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_sessiongate");

// ---------------------------------------------------------------------------
// The proxy in-process, with its admin listener.
// ---------------------------------------------------------------------------

/// Parses `yaml` as `test.yaml` and binds a server, without running it.
pub async fn bind(yaml: impl fmt::Display) -> Result<Server, ServerError> {
    let yaml = yaml.to_string();
    let config = Config::parse(&yaml, Path::new("test.yaml"), false)
        .unwrap_or_else(|e| panic!("the test config was rejected: {e}\n---\n{yaml}"));
    Server::bind(config).await
}

/// A running proxy whose admin listener address and reloader a test can reach.
pub struct AdminProxy {
    addr: SocketAddr,
    admin: SocketAddr,
    reloader: Reloader,
    running: Running,
}

impl AdminProxy {
    /// Binds (the config must set `admin.listen`) and runs until dropped.
    pub async fn start(yaml: impl fmt::Display) -> AdminProxy {
        let server = bind(yaml)
            .await
            .unwrap_or_else(|e| panic!("the proxy did not bind: {e}"));
        let addr = server.local_addr();
        let admin = server
            .admin_local_addr()
            .expect("the test config has no admin.listen");
        let reloader = server.reloader();
        let running = Running::spawn(server);
        AdminProxy {
            addr,
            admin,
            reloader,
            running,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://PROXY{path}`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `http://ADMIN{path}`
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn reloader(&self) -> &Reloader {
        &self.reloader
    }

    /// `GET /metrics` (no token), parsed.
    pub async fn scrape(&self) -> Scrape {
        scrape(&self.admin_url("/metrics"), None).await
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn shutdown(self) {
        self.running.shutdown().await;
    }
}

// ---------------------------------------------------------------------------
// Prometheus text exposition, parsed.
// ---------------------------------------------------------------------------

/// A series: metric name and its labels.
pub type Series = (String, BTreeMap<String, String>);

/// One scrape of `/metrics`: every sample by (name, labels), and each family's type.
#[derive(Clone, Debug)]
pub struct Scrape {
    pub samples: BTreeMap<Series, f64>,
    /// `# TYPE` of each family.
    pub types: BTreeMap<String, String>,
}

/// `GET url` with an optional bearer token; fails the test unless it answers 200.
pub async fn scrape(url: &str, token: Option<&str>) -> Scrape {
    let mut request = plain_client().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("GET /metrics");
    assert_eq!(response.status(), 200, "GET {url}");
    Scrape::parse(&response.text().await.expect("metrics body"))
}

impl Scrape {
    /// Parses the text format (Prometheus 0.0.4 or OpenMetrics), failing the test
    /// on anything a Prometheus server would reject: a malformed line, a sample of
    /// a family without `# TYPE`, a duplicate series.
    pub fn parse(text: &str) -> Scrape {
        let mut samples = BTreeMap::new();
        let mut types = BTreeMap::new();
        for line in text.lines() {
            if line.is_empty() || line == "# EOF" {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest
                    .split_once(' ')
                    .unwrap_or_else(|| panic!("bad TYPE line: {line:?}"));
                types.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = parse_sample(line);
            let family = family_of(&series.0, &types)
                .unwrap_or_else(|| panic!("sample without a # TYPE family: {line:?}"));
            assert!(!family.is_empty());
            let previous = samples.insert(series, value);
            assert!(previous.is_none(), "duplicate series: {line:?}");
        }
        Scrape { samples, types }
    }

    /// The value of a series, if exported.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples.get(&series(name, labels)).copied()
    }

    /// The value of a series, failing the test (listing that metric's series) when
    /// it is not exported.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or_else(|| {
            let known: Vec<String> = self
                .samples
                .keys()
                .filter(|(n, _)| n == name)
                .map(|(n, l)| format!("{n}{l:?}"))
                .collect();
            panic!("no series {name}{labels:?}; series of that name: {known:?}")
        })
    }

    /// How much a series moved since `before` (both must export it).
    pub fn delta(&self, before: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels) - before.value(name, labels)
    }

    /// The metric names of every sample.
    pub fn names(&self) -> BTreeSet<String> {
        self.samples.keys().map(|(n, _)| n.clone()).collect()
    }

    /// Every series whose name is `name`, with its value.
    pub fn series_of(&self, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        self.samples
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|((_, l), v)| (l.clone(), *v))
            .collect()
    }
}

/// The key of a series.
pub fn series(name: &str, labels: &[(&str, &str)]) -> Series {
    (
        name.to_owned(),
        labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

/// The family a sample name belongs to: itself, or itself minus a suffix the type
/// adds (`_total`, `_bucket`, `_sum`, `_count`, `_created`).
fn family_of<'a>(name: &'a str, types: &BTreeMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    ["_total", "_bucket", "_sum", "_count", "_created", "_info"]
        .iter()
        .filter_map(|suffix| name.strip_suffix(suffix))
        .find(|family| types.contains_key(*family))
}

/// `name{k="v",...} value [timestamp]`
fn parse_sample(line: &str) -> (Series, f64) {
    let bad = || -> ! { panic!("malformed sample line: {line:?}") };
    let name_end = line.find(['{', ' ']).unwrap_or_else(|| bad());
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
    {
        bad();
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        loop {
            // A label name, or the closing brace.
            let mut label = String::new();
            let mut closed = false;
            for (_, c) in chars.by_ref() {
                match c {
                    '}' if label.is_empty() => {
                        closed = true;
                        break;
                    }
                    '=' => break,
                    c if c.is_ascii_alphanumeric() || c == '_' => label.push(c),
                    _ => bad(),
                }
            }
            if closed {
                break;
            }
            if label.is_empty() || chars.next().map(|(_, c)| c) != Some('"') {
                bad();
            }
            let mut value = String::new();
            loop {
                match chars.next().map(|(_, c)| c) {
                    Some('"') => break,
                    Some('\\') => match chars.next().map(|(_, c)| c) {
                        Some('n') => value.push('\n'),
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        _ => bad(),
                    },
                    Some(c) => value.push(c),
                    None => bad(),
                }
            }
            if labels.insert(label, value).is_some() {
                bad();
            }
            match chars.next() {
                Some((_, ',')) => {
                    // OpenMetrics allows no trailing comma; Prometheus does.
                    if let Some((i, '}')) = chars.peek().copied() {
                        chars.next();
                        rest = &after[i + 1..];
                        break;
                    }
                }
                Some((i, '}')) => {
                    rest = &after[i + 1..];
                    break;
                }
                _ => bad(),
            }
        }
    }
    let mut fields = rest.split_whitespace();
    let value = match fields.next().unwrap_or_else(|| bad()) {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().unwrap_or_else(|_| bad()),
    };
    // An optional timestamp, nothing else (no exemplars here).
    if fields.next().is_some_and(|t| t.parse::<f64>().is_err()) || fields.next().is_some() {
        bad();
    }
    ((name.to_owned(), labels), value)
}

// ---------------------------------------------------------------------------
// The built binary, run from a config file a test rewrites.
// ---------------------------------------------------------------------------

/// `sessiongate --config DIR/sessiongate.yaml`, its output read line by line;
/// killed when dropped.
pub struct Binary {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    /// Every output line (stdout and stderr) read so far, in arrival order.
    pub output: Vec<String>,
    /// Lines before this index have been looked at by `wait_for_new_line`.
    seen: usize,
    /// The directory the config file was written to, when the binary owns it.
    _dir: Option<tempfile::TempDir>,
    pub config_path: PathBuf,
    /// The plain listener's address, from its `listening on http://` line.
    pub addr: SocketAddr,
}

impl Binary {
    /// Writes `yaml` to a file in a fresh directory, starts the binary on it and
    /// waits for its `listening on http://` line (the config must log at `info`).
    pub async fn start(yaml: impl fmt::Display) -> Binary {
        Binary::start_with(yaml, &[]).await
    }

    /// [`Binary::start`] with extra command-line arguments (`--dev`, ...).
    pub async fn start_with(yaml: impl fmt::Display, extra_args: &[&str]) -> Binary {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("sessiongate.yaml");
        std::fs::write(&config_path, yaml.to_string()).expect("write config");
        Binary::launch(config_path, extra_args, Some(dir)).await
    }

    /// [`Binary::start`] with extra environment variables (`LD_PRELOAD`, ...).
    pub async fn start_with_env(yaml: impl fmt::Display, env: &[(&str, &str)]) -> Binary {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("sessiongate.yaml");
        std::fs::write(&config_path, yaml.to_string()).expect("write config");
        Binary::launch_with(config_path, &[], env, Some(dir)).await
    }

    /// Writes `yaml` to `dir/sessiongate.yaml` (a directory the test keeps, for
    /// files that outlive one run) and starts the binary on it.
    pub async fn start_in(dir: &std::path::Path, yaml: impl fmt::Display) -> Binary {
        let config_path = dir.join("sessiongate.yaml");
        std::fs::write(&config_path, yaml.to_string()).expect("write config");
        Binary::launch(config_path, &[], None).await
    }

    async fn launch(
        config_path: PathBuf,
        extra_args: &[&str],
        dir: Option<tempfile::TempDir>,
    ) -> Binary {
        Binary::launch_with(config_path, extra_args, &[], dir).await
    }

    async fn launch_with(
        config_path: PathBuf,
        extra_args: &[&str],
        env: &[(&str, &str)],
        dir: Option<tempfile::TempDir>,
    ) -> Binary {
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(&config_path)
            .args(extra_args)
            .envs(env.iter().copied())
            .env_remove("SESSIONGATE_SECRET")
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sessiongate");
        let (tx, lines) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        for pipe in [
            Box::new(stdout) as Box<dyn std::io::Read + Send>,
            Box::new(stderr),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        let mut binary = Binary {
            child,
            lines,
            output: Vec::new(),
            seen: 0,
            _dir: dir,
            config_path,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let line = binary
            .wait_for_line(|l| l.contains("listening on http://") && !l.contains("admin listening"))
            .await;
        binary.addr = address_in(&line);
        binary
    }

    /// The process's ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://ADDR{path}` on the plain listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The admin listener's address, from its `admin listening on` line.
    pub async fn admin_addr(&mut self) -> SocketAddr {
        let line = self
            .find_or_wait(|l| l.contains("admin listening on http://"))
            .await;
        address_in(&line)
    }

    /// `GET /metrics` on the admin listener, parsed.
    pub async fn scrape(&mut self) -> Scrape {
        let admin = self.admin_addr().await;
        scrape(&format!("http://{admin}/metrics"), None).await
    }

    /// Replaces the config file (the process only reads it on SIGHUP).
    pub fn rewrite(&self, yaml: impl fmt::Display) {
        std::fs::write(&self.config_path, yaml.to_string()).expect("rewrite config");
    }

    /// Sends SIGHUP and waits for the outcome line: `configuration reloaded` or
    /// `reload failed`. Returns it.
    pub async fn reload(&mut self) -> String {
        self.skip_seen();
        self.signal("HUP");
        self.wait_for_new_line(|l| {
            l.contains("configuration reloaded") || l.contains("reload failed")
        })
        .await
    }

    /// Sends a signal (`HUP`, `TERM`, ...) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// SIGTERM, then waits for exit 0 and returns every line the process printed.
    pub async fn stop(&mut self) -> Vec<String> {
        let code = self.stop_with("TERM").await;
        let output = self.all_output().await;
        assert_eq!(
            code,
            Some(0),
            "sessiongate exited with {code:?}; its output:\n{}",
            output.join("\n")
        );
        output
    }

    /// Sends `signal` and waits for the exit; the exit code (`None`: killed).
    pub async fn stop_with(&mut self, signal: &str) -> Option<i32> {
        self.signal(signal);
        self.exit_code().await
    }

    /// Waits for the process to exit (failing after [`PATIENCE`]); its exit code.
    pub async fn exit_code(&mut self) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "sessiongate did not exit"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// After exit: every line the process printed (the pipes are read to their end).
    pub async fn all_output(&mut self) -> Vec<String> {
        while let Ok(Some(line)) = tokio::time::timeout(PATIENCE, self.lines.recv()).await {
            self.output.push(line);
        }
        self.output.clone()
    }

    /// The first line, already read or still to come, that contains `needle`.
    pub async fn wait_for(&mut self, needle: &str) -> String {
        self.find_or_wait(|l| l.contains(needle)).await
    }

    /// Marks every line read so far as seen.
    fn skip_seen(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.output.push(line);
        }
        self.seen = self.output.len();
    }

    /// The first line, already read or still to come, that matches.
    pub async fn find_or_wait(&mut self, matches: impl Fn(&str) -> bool) -> String {
        if let Some(line) = self.output.iter().find(|l| matches(l)) {
            return line.clone();
        }
        self.wait_for_line(matches).await
    }

    /// The next unseen line that matches (lines read before are skipped).
    pub async fn wait_for_new_line(&mut self, matches: impl Fn(&str) -> bool) -> String {
        if let Some(i) = (self.seen..self.output.len()).find(|&i| matches(&self.output[i])) {
            self.seen = i + 1;
            return self.output[i].clone();
        }
        self.seen = self.output.len();
        let line = self.wait_for_line(matches).await;
        self.seen = self.output.len();
        line
    }

    /// Reads lines until one matches; fails the test after [`PATIENCE`].
    async fn wait_for_line(&mut self, matches: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    self.output.push(line.clone());
                    if matches(&line) {
                        return line;
                    }
                }
                Ok(None) | Err(_) => panic!(
                    "sessiongate never printed the awaited line; its output:\n{}",
                    self.output.join("\n")
                ),
            }
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The `host:port` after the first `http://` of a log line.
fn address_in(line: &str) -> SocketAddr {
    let (_, rest) = line
        .split_once("http://")
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '"' || c == ')')
        .unwrap_or(rest.len());
    rest[..end]
        .parse()
        .unwrap_or_else(|_| panic!("no address in {line:?}"))
}

/// Runs the binary to its exit (failing the test if it is still running after
/// [`PATIENCE`], e.g. because it started serving); its exit code and stderr.
pub async fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("SESSIONGATE_SECRET")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sessiongate");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sessiongate {args:?} did not exit");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    (status.code(), stderr)
}
