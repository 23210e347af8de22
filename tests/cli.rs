//! The built binary: `check`, `gen-secret`, `--version`, config errors, and
//! graceful shutdown on SIGTERM / SIGINT.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_sessiongate");

/// Runs the binary with `args` and a clean secret environment.
fn sessiongate(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("SESSIONGATE_SECRET")
        .output()
        .expect("run sessiongate")
}

/// A config file named `bad.yaml` (or `good.yaml`) in its own directory.
struct ConfigFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn config_file(name: &str, contents: &str) -> ConfigFile {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(name);
    std::fs::write(&path, contents).expect("write config");
    ConfigFile { _dir: dir, path }
}

/// `sessiongate check --config bad.yaml` with these contents.
fn check(contents: &str) -> Output {
    let file = config_file("bad.yaml", contents);
    sessiongate(&["check", "--config", file.path.to_str().unwrap()])
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Exit status 1, every fragment in stderr, and no secret anywhere.
fn assert_rejected(output: &Output, fragments: &[&str], secrets: &[&str]) {
    let stderr = text(&output.stderr);
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    for fragment in fragments {
        assert!(
            stderr.contains(fragment),
            "stderr does not mention {fragment:?}: {stderr}"
        );
    }
    for secret in secrets.iter().chain([&SECRET_A]) {
        assert!(
            !stderr.contains(secret) && !stdout.contains(secret),
            "the secret was printed: {stderr}{stdout}"
        );
    }
}

fn good_config() -> String {
    format!(
        "listen: 127.0.0.1:0\n\
         upstream:\n  url: http://127.0.0.1:3000\n\
         session:\n  secrets: [\"{SECRET_A}\"]\n\
         admin:\n  listen: 127.0.0.1:0\n"
    )
}

#[test]
fn check_accepts_a_good_config_and_prints_it_without_secrets() {
    let output = check(&good_config());

    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(
        stdout.contains("http://127.0.0.1:3000"),
        "the effective config was not printed: {stdout}"
    );
    assert!(!stdout.contains(SECRET_A), "check printed the secret");
    assert!(
        !text(&output.stderr).contains(SECRET_A),
        "check printed the secret"
    );
}

#[test]
fn unknown_key_names_file_line_column_and_key() {
    let output = check(&format!(
        "listen: 127.0.0.1:0\n\
         upstream:\n  url: http://127.0.0.1:3000\n\
         session:\n  cookie_nam: sid\n  secrets: [\"{SECRET_A}\"]\n"
    ));

    assert_rejected(&output, &["bad.yaml:5:3:", "session.cookie_nam"], &[]);
}

#[test]
fn bad_duration_names_file_line_column_and_key() {
    let output = check(&format!(
        "listen: 127.0.0.1:0\n\
         upstream:\n  url: http://127.0.0.1:3000\n\
         session:\n  secrets: [\"{SECRET_A}\"]\n  idle_timeout: 30x\n"
    ));

    assert_rejected(
        &output,
        &["bad.yaml:6:17:", "session.idle_timeout", "30x"],
        &[],
    );
}

#[test]
fn bad_address_names_file_line_column_and_key() {
    let output = check(&format!(
        "upstream:\n  url: http://127.0.0.1:3000\n\
         listen: not-an-address\n\
         session:\n  secrets: [\"{SECRET_A}\"]\n"
    ));

    assert_rejected(&output, &["bad.yaml:3:9:", "listen"], &[]);
}

#[test]
fn unset_variable_is_named_with_its_location() {
    let output = Command::new(BIN)
        .args(["check", "--config"])
        .arg(
            &config_file(
                "bad.yaml",
                &format!(
                    "listen: 127.0.0.1:0\n\
                     upstream:\n  url: ${{SG_TEST_UNSET_UPSTREAM}}\n\
                     session:\n  secrets: [\"{SECRET_A}\"]\n"
                ),
            )
            .path,
        )
        .env_remove("SG_TEST_UNSET_UPSTREAM")
        .output()
        .unwrap();

    assert_rejected(
        &output,
        &["bad.yaml:3:8:", "upstream.url", "SG_TEST_UNSET_UPSTREAM"],
        &[],
    );
}

#[test]
fn variables_are_substituted_from_the_environment() {
    let file = config_file(
        "good.yaml",
        "listen: 127.0.0.1:0\n\
         upstream:\n  url: ${SG_TEST_UPSTREAM}\n\
         session:\n  secrets: [\"${SG_TEST_SECRET}\"]\n\
         admin:\n  listen: 127.0.0.1:0\n",
    );

    let output = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&file.path)
        .env("SG_TEST_UPSTREAM", "http://127.0.0.1:4321")
        .env("SG_TEST_SECRET", SECRET_B)
        .output()
        .unwrap();

    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("http://127.0.0.1:4321"));
    assert!(!text(&output.stdout).contains(SECRET_B));
}

#[test]
fn empty_secrets_point_to_gen_secret() {
    let output = check(
        "listen: 127.0.0.1:0\n\
         upstream:\n  url: http://127.0.0.1:3000\n\
         session:\n  secrets: []\n",
    );

    assert_rejected(&output, &["bad.yaml", "sessiongate gen-secret"], &[]);
}

#[test]
fn missing_secrets_point_to_gen_secret() {
    let output = check(
        "listen: 127.0.0.1:0\n\
         upstream:\n  url: http://127.0.0.1:3000\n",
    );

    assert_rejected(&output, &["bad.yaml", "sessiongate gen-secret"], &[]);
}

#[test]
fn unset_secret_variable_is_named_and_points_to_gen_secret() {
    let file = config_file(
        "bad.yaml",
        "listen: 127.0.0.1:0\n\
         upstream:\n  url: http://127.0.0.1:3000\n\
         session:\n  secrets: [\"${SG_TEST_UNSET_SECRET}\"]\n",
    );

    let output = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&file.path)
        .env_remove("SG_TEST_UNSET_SECRET")
        .output()
        .unwrap();

    assert_rejected(
        &output,
        &["bad.yaml", "SG_TEST_UNSET_SECRET", "sessiongate gen-secret"],
        &[],
    );
}

#[test]
fn short_secret_is_rejected_without_being_printed() {
    let output = check(
        "listen: 127.0.0.1:0\n\
         upstream:\n  url: http://127.0.0.1:3000\n\
         session:\n  secrets: [\"only-twenty-two-bytes\"]\n",
    );

    assert_rejected(
        &output,
        &["bad.yaml:5:", "session.secrets"],
        &["only-twenty-two-bytes"],
    );
}

#[test]
fn gen_secret_prints_32_random_bytes_in_base64url() {
    let first = sessiongate(&["gen-secret"]);
    let second = sessiongate(&["gen-secret"]);

    assert_eq!(first.status.code(), Some(0));
    let secret = text(&first.stdout).trim().to_owned();
    assert!(
        is_base64url_32(&secret),
        "{secret:?} is not 43 base64url chars"
    );
    assert_ne!(
        secret,
        text(&second.stdout).trim(),
        "two secrets were equal"
    );
}

#[test]
fn version_prints_the_package_version() {
    let output = sessiongate(&["--version"]);

    assert_eq!(output.status.code(), Some(0));
    assert!(
        text(&output.stdout).contains(env!("CARGO_PKG_VERSION")),
        "{}",
        text(&output.stdout)
    );
}

#[test]
fn help_lists_the_subcommands() {
    let output = sessiongate(&["--help"]);

    assert_eq!(output.status.code(), Some(0));
    let help = text(&output.stdout);
    for word in ["check", "gen-secret", "--config", "--dev"] {
        assert!(
            help.contains(word),
            "--help does not mention {word}: {help}"
        );
    }
}

async fn assert_signal_drains_in_flight_requests(signal: &str) {
    let upstream = Upstream::start(|_| Reply::ok().after(Duration::from_secs(1))).await;
    let port = free_port();
    let yaml = config(&upstream.url())
        .set("listen", &format!("127.0.0.1:{port}"))
        .set("log.level", "info")
        .to_string();
    let mut proxy = ops::Binary::start(&yaml).await;
    let slow = tokio::spawn(
        plain_client()
            .get(format!("http://127.0.0.1:{port}/slow"))
            .send(),
    );
    upstream.wait_for_arrivals(1).await;

    proxy.signal(signal);

    let response = tokio::time::timeout(PATIENCE, slow)
        .await
        .expect("the in-flight request never finished")
        .unwrap()
        .expect("the in-flight request was dropped");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "ok");
    assert_eq!(proxy.exit_code().await, Some(0));
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_in_flight_requests_and_exits_zero() {
    assert_signal_drains_in_flight_requests("TERM").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_finishes_in_flight_requests_and_exits_zero() {
    assert_signal_drains_in_flight_requests("INT").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_mode_starts_without_a_secret_and_warns() {
    let upstream = Upstream::ok().await;
    let port = free_port();
    let yaml = config(&upstream.url())
        .set("listen", &format!("127.0.0.1:{port}"))
        .set("log.level", "info")
        .without("session.secrets")
        .to_string();

    let mut proxy = ops::Binary::start_with(&yaml, &["--dev"]).await;

    let response = get_without_cookie(&format!("http://127.0.0.1:{port}/")).await;
    assert_eq!(response.status(), 200);
    expect_session_cookie(response.headers());
    proxy.signal("TERM");
    assert_eq!(proxy.exit_code().await, Some(0));
    let output = proxy.all_output().await;
    assert!(
        output.iter().any(|line| {
            let line = line.to_lowercase();
            line.contains("warn") && line.contains("secret")
        }),
        "no warning about the ephemeral secret:\n{}",
        output.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn session_ids_never_appear_in_info_logs() {
    let upstream = Upstream::ok().await;
    let port = free_port();
    let yaml = config(&upstream.url())
        .set("listen", &format!("127.0.0.1:{port}"))
        .set("log.level", "info")
        .set("log.access", "true")
        .to_string();
    let mut proxy = ops::Binary::start(&yaml).await;

    let response = get_without_cookie(&format!("http://127.0.0.1:{port}/a?b=c")).await;
    let cookie = expect_session_cookie(response.headers());
    get_with_cookie(&format!("http://127.0.0.1:{port}/again"), &cookie.pair()).await;
    proxy.signal("TERM");
    assert_eq!(proxy.exit_code().await, Some(0));

    let output = proxy.all_output().await;
    assert!(
        output.iter().any(|line| line.contains("/again")),
        "no access log line for the request:\n{}",
        output.join("\n")
    );
    let (_, tag) = cookie.value.split_once('.').unwrap();
    for line in &output {
        assert!(!line.contains(cookie.id()), "session id logged: {line}");
        assert!(!line.contains(tag), "cookie logged: {line}");
    }
}

// ---------------------------------------------------------------------------
// In front of a real site (DESIGN.md §10): what a newcomer meets on day one.
// ---------------------------------------------------------------------------

#[test]
fn a_misspelled_log_level_is_refused_with_its_line() {
    let output = check(&format!("{}log:\n  level: infoo\n", good_config()));

    assert_rejected(&output, &["bad.yaml:9:", "log.level", "infoo"], &[]);
}

#[test]
fn check_accepts_dev_after_the_subcommand_as_the_error_suggests() {
    let file = config_file("dev.yaml", "listen: 127.0.0.1:0\n");
    let path = file.path.to_str().unwrap();

    let without = sessiongate(&["check", "--config", path]);
    assert_rejected(&without, &["--dev"], &[]);
    for args in [
        ["check", "--config", path, "--dev"],
        ["--dev", "check", "--config", path],
    ] {
        let output = sessiongate(&args);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&output.stderr)
        );
    }
}

/// `sessiongate check --config CONFIG` run from the directory `cwd`.
fn check_from(cwd: &std::path::Path, config: &std::path::Path) -> Output {
    Command::new(BIN)
        .current_dir(cwd)
        .env_remove("SESSIONGATE_SECRET")
        .args(["check", "--config"])
        .arg(config)
        .output()
        .expect("run sessiongate check")
}

#[test]
fn relative_certificate_paths_are_read_from_the_config_files_directory() {
    let dir = tempfile::tempdir().unwrap();
    let made = Command::new(BIN)
        .args(["gen-cert", "--dir"])
        .arg(dir.path().join("certs"))
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made.stderr));
    let config = dir.path().join("sessiongate.yaml");
    std::fs::write(
        &config,
        format!(
            "{}tls:\n  listen: 127.0.0.1:0\n  cert: certs/dev-cert.pem\n  key: certs/dev-key.pem\n",
            good_config()
        ),
    )
    .unwrap();
    let elsewhere = tempfile::tempdir().unwrap();

    // Run from another directory: the paths are the config file's, not the caller's.
    let output = check_from(elsewhere.path(), &config);

    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));

    // A file that is not there is named, with the key and its line.
    std::fs::remove_file(dir.path().join("certs/dev-key.pem")).unwrap();
    let output = check_from(elsewhere.path(), &config);
    assert_rejected(
        &output,
        &["sessiongate.yaml:11:", "tls.key", "dev-key.pem"],
        &[],
    );
}

#[test]
fn check_refuses_a_certificate_file_that_does_not_exist_or_is_no_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("notes.txt");
    std::fs::write(&not_pem, "just text\n").unwrap();
    for (cert, says) in [
        ("/nonexistent/cert.pem", "/nonexistent/cert.pem"),
        (not_pem.to_str().unwrap(), "no certificate"),
    ] {
        let output = check(&format!(
            "{}tls:\n  listen: 127.0.0.1:0\n  cert: {cert}\n  key: {cert}\n",
            good_config()
        ));
        assert_rejected(&output, &["tls.cert", says], &[]);
    }
}

#[test]
fn check_prints_the_redis_url_with_only_its_password_hidden() {
    let output = check(&format!(
        "{}store:\n  type: redis\n  redis:\n    url: redis://app:hunter2-secret@redis.internal:6380/2\n",
        good_config()
    ));
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(
        stdout.contains("redis://app:<redacted>@redis.internal:6380/2"),
        "{stdout}"
    );
    assert!(!stdout.contains("hunter2"), "{stdout}");

    let output = check(&good_config());
    assert!(
        text(&output.stdout).contains("redis://127.0.0.1:6379"),
        "the default Redis URL is shown as it is: {}",
        text(&output.stdout)
    );
}

/// [`sessiongate`] off the test's runtime, so that a proxy the test started keeps
/// serving while the command waits for it.
async fn sessiongate_beside(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sessiongate(&args)
    })
    .await
    .expect("the command's thread")
}

/// The binary running on `yaml`, and the same config in a file of its own for a
/// second command to read.
async fn running_with_its_config(yaml: &ConfigYaml) -> (support::ops::Binary, ConfigFile) {
    let proxy = support::ops::Binary::start(yaml).await;
    (proxy, config_file("running.yaml", &yaml.to_string()))
}

#[tokio::test(flavor = "multi_thread")]
async fn healthcheck_probes_the_admin_listener_of_the_config_it_is_given() {
    let upstream = Upstream::ok().await;
    let admin_port = free_port();
    let yaml = config(&upstream.url())
        .set("admin.listen", &format!("127.0.0.1:{admin_port}"))
        .set("log.level", "info");
    let (mut proxy, file) = running_with_its_config(&yaml).await;
    let path = file.path.to_str().unwrap();

    let healthy = sessiongate_beside(&["healthcheck", "-c", path]).await;
    assert_eq!(healthy.status.code(), Some(0), "{}", text(&healthy.stderr));

    proxy.stop().await;
    let unhealthy = sessiongate_beside(&["healthcheck", "-c", path]).await;
    assert_eq!(unhealthy.status.code(), Some(1));
    assert!(
        text(&unhealthy.stderr).contains(&format!("127.0.0.1:{admin_port}")),
        "the probed address is named: {}",
        text(&unhealthy.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_sessiongate_on_the_same_port_exits_naming_the_address() {
    let upstream = Upstream::ok().await;
    let port = free_port();
    let yaml = config(&upstream.url())
        .set("listen", &format!("127.0.0.1:{port}"))
        .set("admin.listen", "null")
        .set("log.level", "info");
    let (mut first, file) = running_with_its_config(&yaml).await;

    let second = sessiongate_beside(&["--config", file.path.to_str().unwrap()]).await;

    let stderr = text(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(stderr.contains("another sessiongate"), "{stderr}");
    let response = get_without_cookie(&first.url("/")).await;
    assert_eq!(response.status(), 200);
    first.stop().await;
}

/// The names of the process's threads that serve requests (`ps -L` shows
/// them as `sessiongate-wor`, the kernel keeping 15 bytes of a name).
fn worker_threads(pid: u32) -> usize {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the process's threads");
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("sessiongate-wor"))
        .count()
}

/// `workers` sets how many threads serve, all on one listener; `auto` (the
/// default) runs one per core the process may use.
#[tokio::test(flavor = "multi_thread")]
async fn workers_sets_how_many_threads_serve() {
    let upstream = Upstream::ok().await;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (value, n) in [("3", 3), ("1", 1), ("auto", cores)] {
        let yaml = config(&upstream.url())
            .set("workers", value)
            .set("log.level", "info");
        let mut proxy = support::ops::Binary::start(&yaml).await;
        let said = format!("{n} worker thread");
        assert!(
            proxy.output.iter().any(|l| l.contains(&said)),
            "{value}: no {said:?} in\n{}",
            proxy.output.join("\n")
        );
        // The threads start just after the listening line.
        let mut threads = worker_threads(proxy.pid());
        for _ in 0..100 {
            if threads >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            threads = worker_threads(proxy.pid());
        }
        assert_eq!(threads, n, "workers: {value}");
        // Every connection is served, whichever thread takes it, and a
        // visitor's session is known on each.
        let first = get_without_cookie(&proxy.url("/")).await;
        assert_eq!(first.status(), 200);
        let cookie = session_set_cookie(first.headers()).expect("a session cookie");
        let id = upstream.last().expect_session_id();
        for _ in 0..4 * n {
            let again = get_with_cookie(&proxy.url("/"), &cookie.pair()).await;
            assert_eq!(again.status(), 200);
            assert_eq!(upstream.last().expect_session_id(), id, "workers: {value}");
        }
        proxy.stop().await;
    }
}

#[test]
fn check_warns_about_a_snapshot_it_could_not_load_next_to_the_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sessions.snap"), "not a snapshot\n").unwrap();
    let config = dir.path().join("sessiongate.yaml");
    std::fs::write(
        &config,
        format!("{}store:\n  snapshot: sessions.snap\n", good_config()),
    )
    .unwrap();
    let elsewhere = tempfile::tempdir().unwrap();

    let output = check_from(elsewhere.path(), &config);

    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("warning: store.snapshot"), "{stderr}");
    assert!(
        stderr.contains(&dir.path().join("sessions.snap").display().to_string()),
        "the snapshot is the one beside the config file: {stderr}"
    );
    assert!(stderr.contains("not a sessiongate snapshot"), "{stderr}");

    // A snapshot directory that does not exist is an error with its key.
    std::fs::write(
        &config,
        format!(
            "{}store:\n  snapshot: missing/sessions.snap\n",
            good_config()
        ),
    )
    .unwrap();
    let output = sessiongate(&["check", "--config", config.to_str().unwrap()]);
    assert_rejected(&output, &["store.snapshot", "does not exist"], &[]);
}
