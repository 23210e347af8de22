//! The deployment examples for several proxies sharing one Redis, kept true:
//! `deploy/compose.yaml`, `deploy/kubernetes.yaml` and the configuration both
//! use, `deploy/several/config.yaml` (with `deploy/several/nginx.conf`, the
//! Compose front load balancer).
//!
//! - Linters, offline (every network access goes to a dead proxy):
//!   `check-jsonschema --builtin-schema vendor.compose-spec` (the compose-spec
//!   JSON schema vendored in that PyPI package), `docker compose config` or
//!   Debian's `docker-compose config` (the real Compose loader: interpolation,
//!   references between services), and `kubernetes-validate --strict` against
//!   the schemas of pinned Kubernetes versions that the package ships.
//! - What no linter sees: every proxy is probed for readiness on `/readyz` and
//!   (Kubernetes) liveness on `/healthz` at the admin listener's port; the
//!   mounted configuration exists, is the one the image reads, uses the Redis
//!   store and passes the real `sessiongate check`; the Kubernetes ConfigMap
//!   holds the same text; the security context matches the Dockerfile's user;
//!   the service names the configuration uses exist; and no file holds a
//!   literal secret. The Dockerfile's dependency stage, which `docker compose
//!   up --build` runs first, is replayed against the manifest.
//! - The topology run for real without Docker: one `redis-server` started with
//!   the Compose file's Redis arguments, the demo application, three
//!   `sessiongate` processes with the shared configuration (addresses moved to
//!   127.0.0.1), and, where `nginx` is installed, nginx with
//!   `deploy/several/nginx.conf` in front of them.
//!
//! Without the linters (`python3 -m pip install kubernetes-validate==1.37.0
//! check-jsonschema==0.39.0`, `apt-get install --no-install-recommends
//! docker-compose`) or `redis-server` the tests that need them are skipped,
//! saying so; with `CI` set (or `SESSIONGATE_DEPLOY_TEST=required`) they fail.
//! nginx is optional everywhere.

#[path = "support/processes.rs"]
mod processes;

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use processes::{on_path, Process, Stop};
use serde_json::Value;

/// Kubernetes versions the manifest is validated against: the oldest it is
/// written for (the preStop `sleep` action is on by default from 1.30) and the
/// newest that the pinned kubernetes-validate (1.37.0) ships.
const KUBERNETES_VERSIONS: &[&str] = &["1.30.0", "1.37.0"];

/// Test values of the two variables; never written to any file.
const TEST_SECRET: &str = "deploy-test-secret-0123456789-abcdefghijklmnop";
const TEST_TOKEN: &str = "deploy-test-admin-token-0123456789";

/// A proxy's names in the Compose file, and of its process here.
const PROXIES: [&str; 3] = ["sessiongate-1", "sessiongate-2", "sessiongate-3"];

/// How long any one thing that should be prompt may take.
const PATIENCE: Duration = Duration::from_secs(15);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn deploy() -> PathBuf {
    root().join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn yaml(path: &Path) -> Value {
    serde_saphyr::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn compose() -> Value {
    yaml(&deploy().join("compose.yaml"))
}

fn kubernetes() -> Vec<Value> {
    let path = deploy().join("kubernetes.yaml");
    let docs: Vec<Value> = serde_saphyr::from_multiple(&read(&path))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn config_path() -> PathBuf {
    deploy().join("several/config.yaml")
}

fn config() -> Value {
    yaml(&config_path())
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// A program or Python package is missing: fails in CI (or when
/// `SESSIONGATE_DEPLOY_TEST=required`), else the test is skipped, saying so.
fn unavailable(what: &str) {
    if in_ci() {
        panic!("{what} (CI is set: .ci/run installs it)");
    }
    processes::missing("SESSIONGATE_DEPLOY_TEST", what);
}

/// `command`, offline: every HTTP(S) access it might try goes to a closed port.
fn offline(command: &mut Command) -> &mut Command {
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        command.env(var, "http://127.0.0.1:9");
    }
    command.env_remove("NO_PROXY").env_remove("no_proxy")
}

fn output(command: &mut Command) -> Output {
    command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `command`, failing the test with its output unless it exits 0.
fn succeeds(command: &mut Command) -> String {
    let out = output(command);
    let all = text(&out);
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\n{all}",
        out.status
    );
    all
}

/// Whether `python3` can import `module`.
fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn sessiongate() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sessiongate"));
    command
        .current_dir(root())
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG");
    command
}

// ---------------------------------------------------------------------------
// Reading the files.
// ---------------------------------------------------------------------------

/// `host:port` of an address or URL, less any scheme and path.
fn host_port(address: &str) -> (String, u16) {
    let rest = address.split_once("://").map_or(address, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or_default();
    let authority = authority.rsplit('@').next().unwrap_or_default();
    let (host, port) = authority
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{address:?} has no port"));
    let port = port
        .parse()
        .unwrap_or_else(|_| panic!("{address:?}: port {port:?}"));
    (host.to_owned(), port)
}

/// The path of a URL (after the authority).
fn url_path(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.find('/')
        .map_or("/".to_owned(), |i| rest[i..].to_owned())
}

fn str_at<'a>(v: &'a Value, pointer: &str, what: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{what}: no string at {pointer}"))
}

/// The admin and public ports of the shared configuration.
fn config_ports() -> (u16, u16) {
    let config = config();
    let (_, public) = host_port(str_at(&config, "/listen", "config"));
    let (_, admin) = host_port(str_at(&config, "/admin/listen", "config"));
    (public, admin)
}

/// The Dockerfile's `USER uid:gid`, the config path its `CMD` passes, and its
/// `ENTRYPOINT` program.
struct Image {
    uid: u64,
    gid: Option<u64>,
    config: String,
    program: String,
}

fn image() -> Image {
    let dockerfile = read(&root().join("Dockerfile"));
    let instruction = |name: &str| {
        dockerfile
            .lines()
            .rev()
            .find(|l| l.starts_with(&format!("{name} ")))
            .map(|l| l[name.len() + 1..].trim().to_owned())
            .unwrap_or_else(|| panic!("the Dockerfile has no {name}"))
    };
    let user = instruction("USER");
    let (uid, gid) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user.as_str(), None),
    };
    let uid = uid
        .parse()
        .unwrap_or_else(|_| panic!("USER {user}: not numeric, runAsNonRoot needs a number"));
    let gid = gid.map(|g| g.parse().expect("numeric group"));
    let array = |name: &str| -> Vec<String> {
        serde_json::from_str(&instruction(name))
            .unwrap_or_else(|e| panic!("{name} is not in exec (JSON) form: {e}"))
    };
    let cmd = array("CMD");
    let at = cmd
        .iter()
        .position(|a| a == "--config")
        .expect("CMD passes --config");
    Image {
        uid,
        gid,
        config: cmd[at + 1].clone(),
        program: array("ENTRYPOINT")[0].clone(),
    }
}

/// The Compose services that run sessiongate: built from the repository, or
/// from a `sessiongate` image.
fn compose_proxies(compose: &Value) -> BTreeMap<String, Value> {
    compose["services"]
        .as_object()
        .expect("compose.yaml has services")
        .iter()
        .filter(|(_, s)| {
            s.get("build").is_some()
                || s["image"]
                    .as_str()
                    .is_some_and(|i| i.starts_with("sessiongate"))
        })
        .map(|(name, s)| (name.clone(), s.clone()))
        .collect()
}

/// A Compose service's environment, as a map whether written as a map or a list.
fn compose_environment(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect(),
        Value::Array(list) => list
            .iter()
            .filter_map(Value::as_str)
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// A string list (a Compose or Kubernetes command), or a string split on spaces.
fn words(v: &Value) -> Vec<String> {
    match v {
        Value::Array(list) => list
            .iter()
            .map(|w| match w {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

/// The value after `flag` in a command.
fn flag_value<'a>(command: &'a [String], flag: &str) -> Option<&'a str> {
    let at = command.iter().position(|w| w == flag)?;
    command.get(at + 1).map(String::as_str)
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn named<'a>(docs: &'a [Value], kind_name: &str, name: &str) -> &'a Value {
    kind(docs, kind_name)
        .into_iter()
        .find(|d| d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("kubernetes.yaml has no {kind_name} named {name:?}"))
}

/// The Deployments whose pods run a sessiongate image.
fn kubernetes_proxies(docs: &[Value]) -> Vec<&Value> {
    kind(docs, "Deployment")
        .into_iter()
        .filter(|d| {
            containers(d)
                .iter()
                .any(|c| c["image"].as_str().is_some_and(is_sessiongate_image))
        })
        .collect()
}

fn is_sessiongate_image(image: &str) -> bool {
    let name = image.rsplit('/').next().unwrap_or(image);
    name == "sessiongate" || name.starts_with("sessiongate:") || name.starts_with("sessiongate@")
}

fn containers(deployment: &Value) -> Vec<&Value> {
    deployment
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .map(|c| c.iter().collect())
        .unwrap_or_default()
}

/// A probe's or a Service's port, a number or the name of a container port.
fn container_port(container: &Value, port: &Value) -> u16 {
    if let Some(n) = port.as_u64() {
        return n as u16;
    }
    let name = port.as_str().expect("a port number or name");
    container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {name:?}")) as u16
}

/// A security setting, the container's own or else the pod's.
fn security<'a>(deployment: &'a Value, container: &'a Value, key: &str) -> Option<&'a Value> {
    container["securityContext"]
        .get(key)
        .or_else(|| deployment.pointer(&format!("/spec/template/spec/securityContext/{key}")))
}

// ---------------------------------------------------------------------------
// The shared configuration.
// ---------------------------------------------------------------------------

#[test]
fn the_shared_configuration_passes_sessiongate_check() {
    let out = output(
        sessiongate()
            .args(["check", "--config"])
            .arg(config_path())
            .env("SESSIONGATE_SECRET", TEST_SECRET)
            .env("SESSIONGATE_ADMIN_TOKEN", TEST_TOKEN),
    );
    let all = text(&out);
    assert!(out.status.success(), "sessiongate check failed:\n{all}");
    let effective: Value = serde_saphyr::from_str(&String::from_utf8_lossy(&out.stdout))
        .unwrap_or_else(|e| panic!("check printed no YAML ({e}):\n{all}"));
    assert_eq!(effective["store"]["type"], "redis", "{all}");
    assert_eq!(effective["session"]["user_key"], "user", "{all}");
    assert!(
        !all.contains(TEST_SECRET) && !all.contains(TEST_TOKEN),
        "check printed a secret:\n{all}"
    );

    // Each variable is needed: without it, check names it and exits 1.
    for missing in ["SESSIONGATE_SECRET", "SESSIONGATE_ADMIN_TOKEN"] {
        let out = output(
            sessiongate()
                .args(["check", "--config"])
                .arg(config_path())
                .env("SESSIONGATE_SECRET", TEST_SECRET)
                .env("SESSIONGATE_ADMIN_TOKEN", TEST_TOKEN)
                .env_remove(missing),
        );
        assert_eq!(
            out.status.code(),
            Some(1),
            "without {missing}: {}",
            text(&out)
        );
        assert!(
            text(&out).contains(missing),
            "without {missing}, check does not name it:\n{}",
            text(&out)
        );
    }
}

#[test]
fn the_shared_configuration_uses_one_redis_and_a_guarded_admin_listener() {
    let config = config();
    assert_eq!(config["store"]["type"], "redis", "store.type");
    let url = str_at(&config, "/store/redis/url", "config");
    assert!(url.starts_with("redis://"), "store.redis.url: {url}");
    assert_eq!(
        host_port(url),
        ("redis".to_owned(), 6379),
        "store.redis.url names the service `redis`"
    );
    assert_eq!(
        config["session"]["secrets"],
        serde_json::json!(["${SESSIONGATE_SECRET}"])
    );
    assert_eq!(config["session"]["user_key"], "user");
    let (host, port) = host_port(str_at(&config, "/admin/listen", "config"));
    assert_eq!(
        (host.as_str(), port),
        ("0.0.0.0", 9091),
        "admin.listen: the probes come from outside the process's loopback"
    );
    assert_eq!(config["admin"]["token"], "${SESSIONGATE_ADMIN_TOKEN}");
    let (host, _) = host_port(str_at(&config, "/listen", "config"));
    assert_eq!(host, "0.0.0.0", "listen: reachable from the load balancer");
    assert_eq!(
        host_port(str_at(&config, "/upstream/url", "config")).0,
        "app",
        "upstream.url names the service `app`"
    );
}

// ---------------------------------------------------------------------------
// The image both files run.
// ---------------------------------------------------------------------------

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn dockerfile_instructions() -> Vec<String> {
    let text = read(&root().join("Dockerfile"));
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    instructions
}

/// The dependency stage (`docker compose up --build` runs it first) replayed in
/// a temporary directory: its `COPY`s, and its `RUN` up to `cargo build`, which
/// is replaced by `cargo fetch --offline`: cargo reads the manifest whole, and
/// fails when a target it declares (a new `[[bench]]`, say) has no file there.
#[test]
fn the_dockerfile_dependency_stage_can_read_the_manifest() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let stage: Vec<String> = dockerfile_instructions()
        .into_iter()
        .skip(1)
        .take_while(|i| !i.starts_with("FROM "))
        .collect();
    let mut replayed = false;
    for instruction in &stage {
        if let Some(args) = instruction.strip_prefix("COPY ") {
            let words: Vec<&str> = args.split_whitespace().collect();
            assert!(
                !words[0].starts_with("--"),
                "COPY {args}: flags not replayed"
            );
            // Relative to WORKDIR, the temporary directory here. As Docker does:
            // into `dest` when it ends with `/` or there are several sources;
            // a directory's contents, not the directory itself.
            let (dest, sources) = words.split_last().expect("COPY sources dest");
            let into = dest.ends_with('/') || sources.len() > 1;
            let dest = dir.path().join(dest.trim_start_matches("./"));
            for source in sources {
                let from = root().join(source);
                let to = match from.file_name() {
                    Some(name) if into && from.is_file() => dest.join(name),
                    _ => dest.clone(),
                };
                copy_tree(&from, &to);
            }
        } else if let Some(run) = instruction.strip_prefix("RUN ") {
            let Some(at) = run.find("cargo build") else {
                continue;
            };
            let before = run[..at].trim_end().trim_end_matches("&&");
            if !before.trim().is_empty() {
                succeeds(
                    Command::new("sh")
                        .args(["-c", before])
                        .current_dir(dir.path()),
                );
            }
            let host = succeeds(Command::new("rustc").arg("-vV"))
                .lines()
                .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
                .expect("rustc's host");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
            let out = output(
                offline(&mut Command::new(cargo))
                    .args(["fetch", "--locked", "--offline", "--target", &host])
                    .current_dir(dir.path()),
            );
            assert!(
                out.status.success(),
                "the Dockerfile's dependency stage cannot read Cargo.toml (a target without \
                 its file there?):\n{}",
                text(&out)
            );
            replayed = true;
            break;
        }
    }
    assert!(
        replayed,
        "no `cargo build` in the Dockerfile's first stage: {stage:#?}"
    );
}

fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).expect("mkdir");
        for entry in std::fs::read_dir(from).expect("read_dir") {
            let entry = entry.expect("entry");
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }
}

// ---------------------------------------------------------------------------
// Compose.
// ---------------------------------------------------------------------------

#[test]
fn compose_file_passes_the_compose_spec_schema() {
    if !python_has("check_jsonschema") {
        return unavailable(
            "check-jsonschema is not installed (python3 -m pip install check-jsonschema==0.39.0)",
        );
    }
    let version = succeeds(Command::new("python3").args(["-m", "check_jsonschema", "--version"]));
    eprintln!("{}", version.trim());
    succeeds(
        offline(&mut Command::new("python3"))
            .args([
                "-m",
                "check_jsonschema",
                "--builtin-schema",
                "vendor.compose-spec",
            ])
            .arg(deploy().join("compose.yaml")),
    );
}

/// `docker compose` when the plugin works, else Compose v1 (Debian's
/// `docker-compose`); None when neither runs.
fn compose_cli() -> Option<Vec<&'static str>> {
    let works = |args: &[&str]| {
        Command::new(args[0])
            .args(&args[1..])
            .arg("version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    [vec!["docker", "compose"], vec!["docker-compose"]]
        .into_iter()
        .find(|cli| works(cli))
}

#[test]
fn compose_config_accepts_the_file_and_refuses_to_run_without_the_secrets() {
    let Some(cli) = compose_cli() else {
        return unavailable(
            "neither `docker compose` nor `docker-compose` runs \
             (apt-get install --no-install-recommends docker-compose)",
        );
    };
    let file = deploy().join("compose.yaml");
    let run = |without: Option<&str>| {
        let mut command = Command::new(cli[0]);
        offline(&mut command)
            .args(&cli[1..])
            .arg("-f")
            .arg(&file)
            .args(["config", "--quiet"])
            .current_dir(root())
            .env("SESSIONGATE_SECRET", TEST_SECRET)
            .env("SESSIONGATE_ADMIN_TOKEN", TEST_TOKEN);
        if let Some(var) = without {
            command.env_remove(var);
        }
        output(&mut command)
    };
    let out = run(None);
    assert!(
        out.status.success(),
        "{} config failed:\n{}",
        cli.join(" "),
        text(&out)
    );
    for var in ["SESSIONGATE_SECRET", "SESSIONGATE_ADMIN_TOKEN"] {
        let out = run(Some(var));
        assert!(
            !out.status.success() && text(&out).contains(var),
            "without {var}, {} config must refuse, naming it (${{{var}:?...}}):\n{}",
            cli.join(" "),
            text(&out)
        );
    }
}

#[test]
fn compose_proxies_are_probed_on_readyz_and_mount_the_shared_config() {
    let compose = compose();
    let services = compose["services"].as_object().expect("services");
    let proxies = compose_proxies(&compose);
    let replicas: u64 = proxies
        .values()
        .map(|s| {
            s.pointer("/deploy/replicas")
                .and_then(Value::as_u64)
                .unwrap_or(1)
        })
        .sum();
    assert_eq!(replicas, 3, "three proxies: {:?}", proxies.keys());
    let (public_port, admin_port) = config_ports();
    let image = image();
    let config = config();
    let redis_host = host_port(str_at(&config, "/store/redis/url", "config")).0;
    let (app_host, app_port) = host_port(str_at(&config, "/upstream/url", "config"));

    for (name, proxy) in &proxies {
        // Built from the repository's Dockerfile.
        let context = deploy().join(str_at(proxy, "/build/context", name));
        let dockerfile = proxy
            .pointer("/build/dockerfile")
            .and_then(Value::as_str)
            .unwrap_or("Dockerfile");
        assert!(
            context.join(dockerfile).is_file() && context.join("Cargo.toml").is_file(),
            "{name}: build context {} is not the repository",
            context.display()
        );

        // Readiness: the image's own binary asks the admin listener's /readyz.
        let test = words(&proxy["healthcheck"]["test"]);
        assert_eq!(
            test.first().map(String::as_str),
            Some("CMD"),
            "{name}: {test:?}"
        );
        assert_eq!(
            test[1], image.program,
            "{name}: the image's binary probes itself"
        );
        assert_eq!(test[2], "healthcheck", "{name}: {test:?}");
        let url = flag_value(&test, "--url").unwrap_or_else(|| panic!("{name}: no --url"));
        let (host, port) = host_port(url);
        assert!(
            host == "127.0.0.1" || host == "localhost",
            "{name}: probe {url} on the container's loopback"
        );
        assert_eq!(
            port, admin_port,
            "{name}: probe {url} at admin.listen's port"
        );
        assert_eq!(url_path(url), "/readyz", "{name}: readiness is /readyz");
        // Liveness is the process itself: Compose restarts a proxy that exits.
        let restart = proxy["restart"].as_str().unwrap_or("no");
        assert!(
            ["always", "unless-stopped", "on-failure"].contains(&restart),
            "{name}: restart: {restart}"
        );

        // The shared configuration, where the image's command reads it.
        let mounts = proxy["volumes"].as_array().expect("volumes");
        let mount = mounts
            .iter()
            .find(|m| m["target"] == image.config.as_str())
            .unwrap_or_else(|| panic!("{name}: nothing mounted at {}", image.config));
        let source = deploy().join(str_at(mount, "/source", name));
        assert_eq!(
            source.canonicalize().expect("the mounted config exists"),
            config_path().canonicalize().unwrap(),
            "{name}: mounts deploy/several/config.yaml"
        );
        assert_eq!(mount["read_only"], true, "{name}: config mounted read-only");

        // Secrets from the environment, refused when unset.
        let env = compose_environment(proxy);
        for var in ["SESSIONGATE_SECRET", "SESSIONGATE_ADMIN_TOKEN"] {
            let value = env
                .get(var)
                .unwrap_or_else(|| panic!("{name}: {var} not passed"));
            assert!(
                value.starts_with(&format!("${{{var}:?")) && value.ends_with('}'),
                "{name}: {var}: {value:?}, not ${{{var}:?message}}"
            );
        }

        // Started after Redis and the application are healthy.
        for needed in [&redis_host, &app_host] {
            assert_eq!(
                proxy
                    .pointer(&format!("/depends_on/{needed}/condition"))
                    .and_then(Value::as_str),
                Some("service_healthy"),
                "{name}: depends_on {needed}: service_healthy"
            );
        }
        assert_eq!(proxy["read_only"], true, "{name}: read_only");
        // The proxies share one host: a CPU limit each, which `workers: auto`
        // follows, so their worker threads do not crowd the same cores.
        let cpus = match &proxy["cpus"] {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        };
        assert!(
            cpus.is_some_and(|c| c >= 1.0),
            "{name}: a CPU limit of at least one core, got {:?}",
            proxy["cpus"]
        );
        assert!(
            words(&proxy["cap_drop"]).iter().any(|c| c == "ALL"),
            "{name}: cap_drop ALL"
        );
        // Published, if at all, on loopback only: the admin API.
        for port in words(&proxy["ports"]) {
            assert!(
                port.starts_with("127.0.0.1:"),
                "{name}: port {port} published beyond loopback"
            );
        }
    }

    // The services the configuration names exist, healthy-checked.
    let redis = services
        .get(&redis_host)
        .unwrap_or_else(|| panic!("no service {redis_host:?}"));
    assert!(
        redis["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("redis:7")),
        "redis: {}",
        redis["image"]
    );
    let app = services
        .get(&app_host)
        .unwrap_or_else(|| panic!("no service {app_host:?}"));
    for (name, s) in [(&redis_host, redis), (&app_host, app)] {
        assert!(
            s["healthcheck"]["test"].is_array(),
            "{name}: no healthcheck"
        );
        assert!(s.get("ports").is_none(), "{name}: must not be published");
        for network in words(&s["networks"]) {
            assert_eq!(
                compose["networks"][&network]["internal"], true,
                "{name}: on network {network}, which is not internal"
            );
        }
    }
    let app_command = words(&app["command"]);
    assert_eq!(
        flag_value(&app_command, "--port"),
        Some(app_port.to_string().as_str()),
        "the app listens where upstream.url points"
    );
    assert_eq!(flag_value(&app_command, "--bind"), Some("0.0.0.0"));
    assert!(
        app["volumes"].as_array().into_iter().flatten().any(|m| {
            m["source"]
                .as_str()
                .is_some_and(|s| deploy().join(s).ends_with("examples/demo/app.py"))
                && deploy().join(m["source"].as_str().unwrap()).is_file()
        }),
        "the app mounts examples/demo/app.py"
    );

    // The load balancer sends to every proxy, at the configuration's port.
    let lb: Vec<_> = services
        .iter()
        .filter(|(_, s)| s["image"].as_str().is_some_and(|i| i.starts_with("nginx")))
        .collect();
    for (name, lb) in lb {
        let mount = lb["volumes"].as_array().expect("volumes")[0].clone();
        let conf = read(&deploy().join(str_at(&mount, "/source", name)));
        // The `server` lines of the upstream block (not the `server {` block).
        let servers: BTreeSet<String> = conf
            .lines()
            .map(str::trim)
            .skip_while(|l| !l.starts_with("upstream "))
            .take_while(|l| *l != "}")
            .filter_map(|l| l.strip_prefix("server "))
            .map(|l| l.split_whitespace().next().unwrap_or_default().to_owned())
            .collect();
        let expected: BTreeSet<String> = proxies
            .keys()
            .map(|p| format!("{p}:{public_port}"))
            .collect();
        assert_eq!(
            servers, expected,
            "{name}: the upstream servers of its nginx.conf"
        );
        for proxy in proxies.keys() {
            assert!(
                lb.pointer(&format!("/depends_on/{proxy}/condition"))
                    .and_then(Value::as_str)
                    == Some("service_healthy"),
                "{name}: starts after {proxy} is ready"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Kubernetes.
// ---------------------------------------------------------------------------

#[test]
fn kubernetes_manifest_validates_strictly_against_pinned_versions() {
    if !python_has("kubernetes_validate") {
        return unavailable(
            "kubernetes-validate is not installed \
             (python3 -m pip install kubernetes-validate==1.37.0)",
        );
    }
    let version =
        succeeds(Command::new("python3").args(["-m", "kubernetes_validate", "--version"]));
    eprintln!("kubernetes-validate {}", version.trim());
    for version in KUBERNETES_VERSIONS {
        let out = succeeds(
            offline(&mut Command::new("python3"))
                .args(["-m", "kubernetes_validate", "--strict", "-k", version])
                .arg(deploy().join("kubernetes.yaml")),
        );
        assert!(
            !out.contains("ERROR") && !out.contains("WARN"),
            "Kubernetes {version}:\n{out}"
        );
    }
}

#[test]
fn kubernetes_proxies_probe_readyz_and_healthz_and_run_locked_down() {
    let docs = kubernetes();
    let (public_port, admin_port) = config_ports();
    let image = image();
    let proxies = kubernetes_proxies(&docs);
    assert_eq!(proxies.len(), 1, "one Deployment of sessiongate");
    let deployment = proxies[0];
    assert_eq!(deployment["spec"]["replicas"], 3, "three replicas");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let volumes = deployment
        .pointer("/spec/template/spec/volumes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();

    for container in containers(deployment) {
        let name = container["name"].as_str().unwrap_or("?");
        for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
            let get = &container[probe]["httpGet"];
            assert_eq!(get["path"], path, "{name}: {probe} path");
            assert_eq!(
                container_port(container, &get["port"]),
                admin_port,
                "{name}: {probe} at admin.listen's port"
            );
        }
        assert_eq!(
            container_port(container, &Value::from("http")),
            public_port,
            "{name}: the http port is listen's"
        );

        // The secrets only from a Secret.
        let env = container["env"].as_array().expect("env");
        for var in ["SESSIONGATE_SECRET", "SESSIONGATE_ADMIN_TOKEN"] {
            let entry = env
                .iter()
                .find(|e| e["name"] == var)
                .unwrap_or_else(|| panic!("{name}: {var} not set"));
            assert!(
                entry.get("value").is_none(),
                "{name}: {var} has a literal value"
            );
            assert!(
                entry.pointer("/valueFrom/secretKeyRef/name").is_some(),
                "{name}: {var} is not from a Secret"
            );
        }

        // Locked down, as the image's user.
        for (key, want) in [
            ("runAsNonRoot", Value::Bool(true)),
            ("readOnlyRootFilesystem", Value::Bool(true)),
            ("allowPrivilegeEscalation", Value::Bool(false)),
        ] {
            assert_eq!(
                security(deployment, container, key),
                Some(&want),
                "{name}: {key}"
            );
        }
        assert_eq!(
            security(deployment, container, "runAsUser").and_then(Value::as_u64),
            Some(image.uid),
            "{name}: runAsUser is the Dockerfile's USER"
        );
        if let Some(gid) = image.gid {
            assert_eq!(
                security(deployment, container, "runAsGroup").and_then(Value::as_u64),
                Some(gid),
                "{name}: runAsGroup is the Dockerfile's group"
            );
        }
        assert!(
            words(&container["securityContext"]["capabilities"]["drop"])
                .iter()
                .any(|c| c == "ALL"),
            "{name}: capabilities.drop ALL"
        );
        for side in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                assert!(
                    !container["resources"][side][resource].is_null(),
                    "{name}: resources.{side}.{resource}"
                );
            }
        }

        // The ConfigMap mounted where the image reads its configuration, holding
        // deploy/several/config.yaml unchanged.
        let (dir, file) = image.config.rsplit_once('/').expect("a config path");
        let mount = container["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| {
                m["mountPath"] == dir
                    || (m["mountPath"] == image.config.as_str() && m["subPath"] == file)
            })
            .unwrap_or_else(|| panic!("{name}: nothing mounted at {dir}"));
        let volume = volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .expect("the mounted volume");
        let map = named(
            &docs,
            "ConfigMap",
            str_at(volume, "/configMap/name", "volume"),
        );
        assert_eq!(
            map["data"][file].as_str(),
            Some(read(&config_path()).as_str()),
            "the ConfigMap's {file} is deploy/several/config.yaml, unchanged"
        );
    }

    // The Service for the public port selects these pods.
    let service = kind(&docs, "Service")
        .into_iter()
        .find(|s| {
            s["spec"]["selector"]
                .as_object()
                .is_some_and(|sel| sel.iter().all(|(k, v)| &pod_labels[k] == v))
        })
        .expect("a Service selecting the sessiongate pods");
    let container = containers(deployment)[0];
    let ports = service["spec"]["ports"].as_array().expect("ports");
    assert!(
        ports
            .iter()
            .any(|p| container_port(container, &p["targetPort"]) == public_port),
        "the Service targets the public port {public_port}"
    );
    assert!(
        ports
            .iter()
            .all(|p| container_port(container, &p["targetPort"]) != admin_port),
        "the Service does not expose the admin port"
    );

    // The names the configuration uses are Services with those ports.
    let config = config();
    for url in [
        str_at(&config, "/store/redis/url", "config"),
        str_at(&config, "/upstream/url", "config"),
    ] {
        let (host, port) = host_port(url);
        let service = named(&docs, "Service", &host);
        assert!(
            service["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["port"] == port),
            "Service {host} has no port {port} ({url})"
        );
    }

    // Every pod of the file runs locked down.
    for deployment in kind(&docs, "Deployment") {
        for container in containers(deployment) {
            let name = container["name"].as_str().unwrap_or("?");
            assert_eq!(
                security(deployment, container, "runAsNonRoot"),
                Some(&Value::Bool(true)),
                "{name}: runAsNonRoot"
            );
            assert_eq!(
                security(deployment, container, "readOnlyRootFilesystem"),
                Some(&Value::Bool(true)),
                "{name}: readOnlyRootFilesystem"
            );
            assert!(
                container["readinessProbe"].is_object(),
                "{name}: readinessProbe"
            );
            assert!(
                container["livenessProbe"].is_object(),
                "{name}: livenessProbe"
            );
        }
    }

    // Compose and Kubernetes start Redis alike.
    let redis = named(&docs, "Deployment", "redis");
    let compose = compose();
    assert_eq!(
        words(&containers(redis)[0]["args"]),
        words(&compose["services"]["redis"]["command"]),
        "Redis's arguments differ between compose.yaml and kubernetes.yaml"
    );
}

// ---------------------------------------------------------------------------
// No literal secret.
// ---------------------------------------------------------------------------

/// `${NAME}`, `${NAME:?message}` (and Compose's other forms): a reference.
fn is_reference(value: &str) -> bool {
    let Some(inner) = value.strip_prefix("${").and_then(|v| v.strip_suffix('}')) else {
        return false;
    };
    let name_end = inner
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(inner.len());
    let (name, rest) = inner.split_at(name_end);
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && (rest.is_empty() || [":?", "?", ":-", "-"].iter().any(|p| rest.starts_with(p)))
}

fn secret_named(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "secret",
        "token",
        "password",
        "passwd",
        "apikey",
        "api_key",
        "credential",
    ]
    .iter()
    .any(|w| key.contains(w))
        || key == "keys"
        || key == "key"
}

/// Every place in `v` (a parsed file) where a secret is written literally.
fn literal_secrets(v: &Value, at: &str, found: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            // A Kubernetes env entry {name: ..._SECRET, value: literal}.
            if let (Some(name), Some(value)) =
                (map.get("name").and_then(Value::as_str), map.get("value"))
            {
                if secret_named(name) && !value.as_str().is_some_and(is_reference) {
                    found.push(format!("{at}: {name} has a literal value"));
                }
            }
            for (key, value) in map {
                let here = format!("{at}/{key}");
                if key == "secretKeyRef" {
                    continue; // names a Secret and a key in it, not a secret
                }
                if secret_named(key) {
                    let mut strings = Vec::new();
                    all_strings(value, &mut strings);
                    for s in strings {
                        if !is_reference(&s) {
                            found.push(format!("{here}: {s:?} is not a ${{VAR}} reference"));
                        }
                    }
                } else {
                    literal_secrets(value, &here, found);
                }
            }
        }
        Value::Array(list) => {
            for (i, item) in list.iter().enumerate() {
                literal_secrets(item, &format!("{at}/{i}"), found);
            }
        }
        _ => {}
    }
}

fn all_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(list) => list.iter().for_each(|i| all_strings(i, out)),
        Value::Object(map) => map.values().for_each(|i| all_strings(i, out)),
        _ => {}
    }
}

/// What looks like a secret in a file's text, comments included: a private
/// key, a URL with a literal password, a literal bearer token, or a long
/// random-looking word (`sessiongate gen-secret` prints 43 characters).
fn secret_looking_text(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    if text.contains("-----BEGIN") {
        found.push("a PEM block".to_owned());
    }
    for (at, _) in text.match_indices("://") {
        let authority: String = text[at + 3..]
            .chars()
            .take_while(|c| !c.is_whitespace() && !matches!(c, '/' | '"' | '\'' | '`'))
            .collect();
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            if let Some((_, password)) = userinfo.split_once(':') {
                if !password.starts_with('$') {
                    found.push(format!("a URL with a literal password: {authority}"));
                }
            }
        }
    }
    for (at, _) in text.match_indices("Bearer ") {
        let credential = text[at + 7..].split_whitespace().next().unwrap_or_default();
        if !credential.starts_with('$') && !credential.starts_with('<') {
            found.push(format!("a literal bearer token: Bearer {credential}"));
        }
    }
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-')) {
        if word.len() >= 32
            && word.chars().any(|c| c.is_ascii_digit())
            && word.chars().any(|c| c.is_ascii_alphabetic())
        {
            found.push(format!("a long random-looking word: {word}"));
        }
    }
    found
}

fn deployment_files() -> Vec<PathBuf> {
    let mut files = vec![
        deploy().join("compose.yaml"),
        deploy().join("kubernetes.yaml"),
    ];
    let mut several: Vec<PathBuf> = std::fs::read_dir(deploy().join("several"))
        .expect("deploy/several")
        .map(|e| e.expect("entry").path())
        .collect();
    several.sort();
    files.extend(several);
    files
}

#[test]
fn no_deployment_file_holds_a_literal_secret() {
    let mut found = Vec::new();
    for path in deployment_files() {
        let name = path
            .strip_prefix(root())
            .unwrap_or(&path)
            .display()
            .to_string();
        let text = read(&path);
        found.extend(
            secret_looking_text(&text)
                .into_iter()
                .map(|f| format!("{name}: {f}")),
        );
        let is_yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
        if !is_yaml {
            continue;
        }
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        for (i, doc) in docs.iter().enumerate() {
            literal_secrets(doc, &format!("{name}#{i}"), &mut found);
            if doc["kind"] == "Secret"
                && (doc.get("data").is_some() || doc.get("stringData").is_some())
            {
                found.push(format!("{name}#{i}: a Secret with its values"));
            }
            // A configuration embedded in a ConfigMap is checked as a file.
            if doc["kind"] == "ConfigMap" {
                for (key, value) in doc["data"].as_object().into_iter().flatten() {
                    if let Some(inner) = value
                        .as_str()
                        .and_then(|t| serde_saphyr::from_str::<Value>(t).ok())
                    {
                        literal_secrets(&inner, &format!("{name}#{i}/data/{key}"), &mut found);
                    }
                }
            }
        }
    }
    assert!(found.is_empty(), "literal secrets:\n{}", found.join("\n"));
}

#[test]
fn the_secret_checks_catch_literals() {
    // The checks above would pass on anything if they caught nothing.
    let config: Value = serde_saphyr::from_str(
        "session:\n  secrets: [\"${SESSIONGATE_SECRET}\", \"hunter2\"]\nadmin:\n  token: abc\n\
         store:\n  redis:\n    url: redis://:${REDIS_PASSWORD}@redis:6379\n",
    )
    .unwrap();
    let mut found = Vec::new();
    literal_secrets(&config, "t", &mut found);
    assert_eq!(found.len(), 2, "{found:?}");
    let env: Value = serde_saphyr::from_str(
        "env:\n  - {name: SESSIONGATE_ADMIN_TOKEN, value: literal}\n  - name: SESSIONGATE_SECRET\n    \
         valueFrom: {secretKeyRef: {name: sessiongate, key: SESSIONGATE_SECRET}}\n\
         environment:\n  SESSIONGATE_SECRET: \"${SESSIONGATE_SECRET:?set it}\"\n  SESSIONGATE_ADMIN_TOKEN: x\n",
    )
    .unwrap();
    let mut found = Vec::new();
    literal_secrets(&env, "t", &mut found);
    assert_eq!(found.len(), 2, "{found:?}");
    for bad in [
        "url: redis://:s3cret@redis:6379",
        "curl -H 'Authorization: Bearer abcdef'",
        "secret: Xk9_2mQpL4vR7tY1wE3uI5oP8aS6dF0gH-jKzXcVbNm",
        "-----BEGIN PRIVATE KEY-----",
    ] {
        assert_eq!(secret_looking_text(bad).len(), 1, "{bad}");
    }
    for good in [
        "url: redis://:${REDIS_PASSWORD}@redis:6379",
        "-H \"Authorization: Bearer $SESSIONGATE_ADMIN_TOKEN\"",
        "app.kubernetes.io/name: redis-from-sessiongate-only",
    ] {
        assert!(secret_looking_text(good).is_empty(), "{good}");
    }
    assert!(is_reference("${SESSIONGATE_SECRET}"));
    assert!(is_reference(
        "${SESSIONGATE_SECRET:?set it (sessiongate gen-secret)}"
    ));
    assert!(!is_reference("${SESSIONGATE_SECRET}x"));
    assert!(!is_reference("prefix${SESSIONGATE_SECRET}"));
}

// ---------------------------------------------------------------------------
// The topology, run for real on 127.0.0.1.
// ---------------------------------------------------------------------------

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `text` with `from` replaced by `to`, failing when `from` is not in it (the
/// file changed under the test).
fn replaced(text: &str, from: &str, to: &str, what: &str) -> String {
    assert!(text.contains(from), "{what} no longer holds {from:?}");
    text.replace(from, to)
}

/// An HTTP answer.
struct Answer {
    status: u16,
    set_cookie: Option<String>,
    body: String,
}

impl Answer {
    fn visits(&self) -> Option<u32> {
        let at = self.body.find("id=\"visits\">")? + "id=\"visits\">".len();
        self.body[at..].split('<').next()?.parse().ok()
    }

    fn user(&self) -> Option<&str> {
        let at = self.body.find("id=\"user\">")? + "id=\"user\">".len();
        self.body[at..].split('<').next()
    }
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body: String = self.body.chars().take(300).collect();
        write!(
            f,
            "{} (set-cookie {:?}) {body}",
            self.status, self.set_cookie
        )
    }
}

struct Http {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Http {
    fn new() -> Http {
        Http {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .timeout(PATIENCE)
                .build()
                .expect("client"),
        }
    }

    /// One request; `cookie` is `name=value`, `form` a urlencoded body.
    fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        cookie: Option<&str>,
        token: Option<&str>,
        form: Option<&[(&str, &str)]>,
    ) -> Answer {
        let mut request = self.client.request(method.clone(), url);
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some(form) = form {
            let body = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(form)
                .finish();
            request = request
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body);
        }
        self.runtime.block_on(async {
            let response = request
                .send()
                .await
                .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
            let status = response.status().as_u16();
            let set_cookie = response
                .headers()
                .get_all("set-cookie")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find(|v| v.starts_with("sessiongate="))
                .map(|v| v.split(';').next().unwrap_or_default().to_owned());
            let body = response.text().await.unwrap_or_default();
            Answer {
                status,
                set_cookie,
                body,
            }
        })
    }

    fn get(&self, url: &str, cookie: Option<&str>) -> Answer {
        self.send(reqwest::Method::GET, url, cookie, None, None)
    }
}

/// One sessiongate of the topology, on its own loopback ports.
struct Proxy {
    process: Process,
    public: u16,
    admin: u16,
}

impl Proxy {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.public)
    }

    fn admin(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin)
    }

    /// Access log lines for `GET path` so far.
    fn served(&self, path: &str) -> usize {
        let needle = format!("\"method\":\"GET\",\"path\":\"{path}\"");
        self.process
            .log()
            .lines()
            .filter(|l| l.contains("sessiongate::access") && l.contains(&needle))
            .count()
    }
}

/// Waits until `done` holds, at most [`PATIENCE`].
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Redis, the demo application and three proxies with the shared configuration,
/// as deploy/compose.yaml runs them, on 127.0.0.1: a session made through one
/// proxy is seen through the others, a user logged out on one proxy's admin
/// listener is logged out on all, and (with nginx) the front load balancer
/// alternates one visitor's requests between the proxies.
#[test]
fn three_proxies_share_sessions_through_one_redis() {
    let started = Instant::now();
    let Some(redis_server) = on_path("redis-server") else {
        return unavailable("redis-server is not installed (apt-get install redis-server)");
    };
    if !python_has("http.server") {
        return unavailable("python3 is needed for examples/demo/app.py");
    }
    let compose = compose();
    let dir = tempfile::tempdir().expect("a temporary directory");

    // Redis, with the Compose file's arguments (so Redis 7 accepts them), on a
    // loopback port and with its files in the temporary directory.
    let redis_command = words(&compose["services"]["redis"]["command"]);
    assert_eq!(redis_command[0], "redis-server");
    let redis_port = free_port();
    let _redis = Process::start(
        "redis-server",
        Command::new(redis_server)
            .args(&redis_command[1..])
            .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(dir.path())
            .args(["--daemonize", "no"]),
        // Redis 7.0 ends its "Ready to accept connections" line there, and a
        // marker needs something after it: this line, then a connection.
        "Running mode=",
    );
    eventually("redis-server accepts connections", || {
        std::net::TcpStream::connect(("127.0.0.1", redis_port)).is_ok()
    });

    // The demo application, as the Compose file starts it, on a free port.
    let app_command = words(&compose["services"]["app"]["command"]);
    assert!(app_command[1].ends_with("/app.py"), "{app_command:?}");
    let app = Process::start(
        "demo app",
        Command::new("python3")
            .arg(root().join("examples/demo/app.py"))
            .args(["--bind", "127.0.0.1", "--port", "0"])
            .args([
                "--name",
                flag_value(&app_command, "--name").unwrap_or("app"),
            ]),
        "demo app listening on http://",
    );
    let app_address = app.address().to_owned();

    // Three proxies: the shared configuration with its addresses moved.
    let shared = read(&config_path());
    let healthcheck = words(&compose_proxies(&compose)[PROXIES[0]]["healthcheck"]["test"]);
    let healthcheck_url = flag_value(&healthcheck, "--url").expect("--url").to_owned();
    let proxies: Vec<Proxy> = PROXIES
        .iter()
        .map(|&name| {
            let (public, admin) = (free_port(), free_port());
            let mut text = replaced(
                &shared,
                "listen: 0.0.0.0:8080",
                &format!("listen: 127.0.0.1:{public}"),
                "config.yaml",
            );
            text = replaced(
                &text,
                "listen: 0.0.0.0:9091",
                &format!("listen: 127.0.0.1:{admin}"),
                "config.yaml",
            );
            text = replaced(
                &text,
                "url: redis://redis:6379",
                &format!("url: redis://127.0.0.1:{redis_port}"),
                "config.yaml",
            );
            text = replaced(
                &text,
                "url: http://app:3000",
                &format!("url: http://{app_address}"),
                "config.yaml",
            );
            let path = dir.path().join(format!("{name}.yaml"));
            std::fs::write(&path, text).expect("write a config");
            let process = Process::try_start_each(
                name,
                sessiongate()
                    .arg("--config")
                    .arg(&path)
                    .env("SESSIONGATE_SECRET", TEST_SECRET)
                    .env("SESSIONGATE_ADMIN_TOKEN", TEST_TOKEN),
                &[
                    &format!("admin listening on http://127.0.0.1:{admin}\""),
                    &format!("listening on http://127.0.0.1:{public}\""),
                ],
                Stop::Term(Duration::from_secs(10)),
            )
            .unwrap_or_else(|e| panic!("{e}"));
            Proxy {
                process,
                public,
                admin,
            }
        })
        .collect();

    // Ready as Compose asks: the healthcheck command of compose.yaml.
    for proxy in &proxies {
        let url = healthcheck_url.replace(":9091/", &format!(":{}/", proxy.admin));
        eventually(&format!("`sessiongate healthcheck --url {url}`"), || {
            sessiongate()
                .args(["healthcheck", "--url", &url])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
    }
    let http = Http::new();
    for proxy in &proxies {
        assert_eq!(
            http.get(&proxy.admin("/healthz"), None).status,
            200,
            "liveness"
        );
        assert_eq!(
            http.get(&proxy.admin("/readyz"), None).status,
            200,
            "readiness"
        );
    }
    let [one, two, three] = &proxies[..] else {
        unreachable!()
    };

    // A visitor arrives on proxy 1 and logs in there.
    let first = http.get(&one.url("/"), None);
    assert_eq!((first.status, first.visits()), (200, Some(1)), "{first:?}");
    let anonymous = first
        .set_cookie
        .clone()
        .expect("a new visitor gets a cookie");
    let login = http.send(
        reqwest::Method::POST,
        &one.url("/login"),
        Some(&anonymous),
        None,
        Some(&[("username", "alice")]),
    );
    assert_eq!(login.status, 303, "{login:?}");
    let cookie = login
        .set_cookie
        .clone()
        .expect("the login regenerates the cookie");
    assert_ne!(cookie, anonymous);

    // Proxies 2 and 3 know the session, and write to it.
    for (proxy, visits) in [(two, 2), (three, 3)] {
        let page = http.get(&proxy.url("/"), Some(&cookie));
        assert_eq!(page.status, 200, "{page:?}");
        assert_eq!(
            page.user(),
            Some("alice"),
            "logged in on another proxy: {page:?}"
        );
        assert_eq!(
            page.visits(),
            Some(visits),
            "the counter moves on: {page:?}"
        );
        assert_eq!(page.set_cookie, None, "a returning visitor: {page:?}");
    }

    // Any proxy's admin API lists the user's session; only with the token.
    let users = two.admin("/users/alice/sessions");
    assert_eq!(
        http.get(&users, None).status,
        401,
        "the session API needs the token"
    );
    let listed = http.send(reqwest::Method::GET, &users, None, Some(TEST_TOKEN), None);
    assert_eq!(listed.status, 200, "{listed:?}");
    let listed: Value = serde_json::from_str(&listed.body).expect("JSON");
    assert_eq!(
        listed["sessions"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );

    // Logged out everywhere from proxy 3's admin listener...
    let destroyed = http.send(
        reqwest::Method::DELETE,
        &three.admin("/users/alice/sessions"),
        None,
        Some(TEST_TOKEN),
        None,
    );
    assert_eq!(destroyed.status, 200, "{destroyed:?}");
    let destroyed: Value = serde_json::from_str(&destroyed.body).expect("JSON");
    assert_eq!(destroyed["destroyed"], 1, "{destroyed}");

    // ... so proxy 1 no longer knows the cookie: a new, anonymous session.
    let after = http.get(&one.url("/"), Some(&cookie));
    assert_eq!(after.status, 200, "{after:?}");
    assert_eq!(after.user(), None, "still logged in on proxy 1: {after:?}");
    assert_eq!(after.visits(), Some(1), "{after:?}");
    assert!(
        after.set_cookie.is_some(),
        "a new session, a new cookie: {after:?}"
    );
    let listed = http.send(reqwest::Method::GET, &users, None, Some(TEST_TOKEN), None);
    let listed: Value = serde_json::from_str(&listed.body).expect("JSON");
    assert_eq!(listed["sessions"], serde_json::json!([]), "{listed}");

    // The front load balancer, where nginx is installed: round robin, and the
    // session follows the visitor from proxy to proxy.
    match on_path("nginx")
        .or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.is_file()))
    {
        None => eprintln!("(nginx is not installed: deploy/several/nginx.conf not run)"),
        Some(nginx) => through_nginx(&nginx, dir.path(), &proxies, &http),
    }

    // Each proxy stops cleanly.
    for proxy in proxies {
        drop(proxy.process);
    }
    eprintln!("the topology ran in {:?}", started.elapsed());
}

fn through_nginx(nginx: &Path, dir: &Path, proxies: &[Proxy], http: &Http) {
    let (public_port, _) = config_ports();
    let mut conf = read(&deploy().join("several/nginx.conf"));
    for (name, proxy) in PROXIES.iter().zip(proxies) {
        conf = replaced(
            &conf,
            &format!("server {name}:{public_port} "),
            &format!("server 127.0.0.1:{} ", proxy.public),
            "nginx.conf",
        );
    }
    let port = free_port();
    conf = replaced(
        &conf,
        "listen 8080;",
        &format!("listen 127.0.0.1:{port};"),
        "nginx.conf",
    );
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(prefix.join("logs")).expect("mkdir");
    std::fs::write(prefix.join("default.conf"), conf).expect("write");
    let temp = |name: &str| prefix.join(name).display().to_string();
    std::fs::write(
        prefix.join("nginx.conf"),
        format!(
            "daemon off;\nworker_processes 1;\npid {pid};\nerror_log stderr notice;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {body};\n  proxy_temp_path {proxy};\n  \
             fastcgi_temp_path {fastcgi};\n  uwsgi_temp_path {uwsgi};\n  scgi_temp_path {scgi};\n  \
             include {conf};\n}}\n",
            pid = temp("nginx.pid"),
            body = temp("body"),
            proxy = temp("proxy"),
            fastcgi = temp("fastcgi"),
            uwsgi = temp("uwsgi"),
            scgi = temp("scgi"),
            conf = temp("default.conf"),
        ),
    )
    .expect("write");
    // Workers run as `nobody` when nginx starts as root.
    let _ = Command::new("chmod")
        .args(["-R", "a+rwX"])
        .arg(dir)
        .status();
    let main_conf = prefix.join("nginx.conf");
    succeeds(
        Command::new(nginx)
            .args(["-t", "-e", "stderr", "-p"])
            .arg(&prefix)
            .arg("-c")
            .arg(&main_conf),
    );
    let _nginx = Process::try_start_each(
        "nginx",
        Command::new(nginx)
            .args(["-e", "stderr", "-p"])
            .arg(&prefix)
            .arg("-c")
            .arg(&main_conf),
        &["start worker process"],
        Stop::Term(Duration::from_secs(5)),
    )
    .unwrap_or_else(|e| panic!("{e}"));

    let before: Vec<usize> = proxies.iter().map(|p| p.served("/")).collect();
    let url = format!("http://127.0.0.1:{port}/");
    let first = http.get(&url, None);
    assert_eq!((first.status, first.visits()), (200, Some(1)), "{first:?}");
    let cookie = first.set_cookie.clone().expect("a cookie through nginx");
    for visits in 2..=6 {
        let page = http.get(&url, Some(&cookie));
        assert_eq!(
            page.visits(),
            Some(visits),
            "one session through nginx: {page:?}"
        );
        assert_eq!(page.set_cookie, None, "{page:?}");
    }
    // Six requests, round robin: two on each proxy.
    eventually(
        "each proxy's access log shows two of the six requests",
        || {
            proxies
                .iter()
                .zip(&before)
                .all(|(p, before)| p.served("/") == before + 2)
        },
    );
}
