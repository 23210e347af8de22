//! Headless Chromium under chromedriver for tests that use a real application
//! through the `sessiongate` binary: where the two are installed, the
//! WebDriver session, every request the browser made (from chromedriver's
//! DevTools performance log, redirect hops included), the SPKI pin that makes
//! Chromium trust exactly the certificate `sessiongate gen-cert` wrote, and a
//! secret from `sessiongate gen-secret`.
//!
//! Included with `#[path = "support/webdriver.rs"] mod webdriver;`, not through
//! `support/mod.rs`, so that a test binary that only drives a browser does not
//! build the in-process fixtures; the child processes come from
//! support/processes.rs, which must be included beside it as `mod processes;`.

// Every test binary that includes this module uses a different part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context as _};
use base64::Engine as _;
use bytes::Bytes;
use fantoccini::{Client, ClientBuilder};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use rcgen::PublicKeyData as _;
use serde_json::{json, Value};
use sha2::Digest as _;

use crate::processes::{missing, on_path, Process, STEP};

/// Where Chromium and chromedriver are installed.
pub struct Browser {
    pub chromium: PathBuf,
    pub chromedriver: PathBuf,
}

impl Browser {
    /// Both programs from `$PATH`, or `None` (see [`missing`]).
    pub fn find(env_var: &str) -> Option<Browser> {
        match (on_path("chromium"), on_path("chromedriver")) {
            (Some(chromium), Some(chromedriver)) => Some(Browser {
                chromium,
                chromedriver,
            }),
            _ => {
                missing(
                    env_var,
                    "chromium or chromedriver is not on PATH: install Debian's \
                     chromium and chromium-driver packages (`.ci/run` does)",
                );
                None
            }
        }
    }

    /// Starts chromedriver and a headless Chromium with its profile under
    /// `work`, DevTools network events recorded, no network but loopback, and
    /// `extra_args` (an SPKI pin, say).
    pub async fn start(&self, work: &Path, extra_args: &[String]) -> Session {
        // With --port=0 chromedriver picks a port itself and now and then
        // gives up on it ("IPv4 port not available"); another try gets another.
        let mut attempts = 0;
        let driver = loop {
            attempts += 1;
            match Process::try_start(
                "chromedriver",
                Command::new(&self.chromedriver).args([
                    "--port=0".to_owned(),
                    format!("--log-path={}", work.join("chromedriver.log").display()),
                ]),
                "ChromeDriver was started successfully on port ",
            ) {
                Ok(driver) => break driver,
                Err(e) if attempts < 3 => eprintln!("{e}; starting it again"),
                Err(e) => panic!("{e}"),
            }
        };
        let mut args = vec![
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            // No name resolves: the browser reaches nothing but loopback.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1".to_owned(),
            format!("--user-data-dir={}", work.join("profile").display()),
        ];
        args.extend_from_slice(extra_args);
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": self.chromium,
                "args": args,
                "perfLoggingPrefs": {"enableNetwork": true, "enablePage": false},
            },
            "goog:loggingPrefs": {"performance": "ALL"},
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object");
        };
        let client = tokio::time::timeout(
            STEP,
            ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities)
                .connect(&format!("http://127.0.0.1:{}", driver.address())),
        )
        .await
        .expect("chromedriver did not start a session in time")
        .unwrap_or_else(|e| panic!("chromedriver refused the session: {e}\n{}", driver.log()));
        let id = client
            .session_id()
            .await
            .ok()
            .flatten()
            .expect("a WebDriver session id");
        Session {
            client,
            log_url: format!("http://127.0.0.1:{}/session/{id}/se/log", driver.address()),
            driver,
        }
    }
}

/// A WebDriver session and the chromedriver that serves it.
pub struct Session {
    pub client: Client,
    /// chromedriver's log endpoint for this session (not in fantoccini's API).
    log_url: String,
    pub driver: Process,
}

/// One request the browser sent, as DevTools reported it.
#[derive(Clone, Debug)]
pub struct Sent {
    /// DevTools' request id, which the hops of one redirect chain share.
    pub id: String,
    pub method: String,
    pub url: String,
    /// When a redirect led here: the status and `Location` of the response to
    /// the request before, `method_before url_before`.
    pub redirect: Option<Redirect>,
}

#[derive(Clone, Debug)]
pub struct Redirect {
    /// `?` when the request before was reported in an earlier batch.
    pub method_before: String,
    pub url_before: String,
    pub status: u64,
    pub location: String,
}

impl Session {
    /// Every request the browser has sent since the last call (DevTools'
    /// `Network.requestWillBeSent`), each redirect hop its own entry.
    pub async fn requests(&self) -> anyhow::Result<Vec<Sent>> {
        let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(HttpConnector::new());
        let request = http::Request::post(&self.log_url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(br#"{"type":"performance"}"#)))?;
        let response = tokio::time::timeout(STEP, client.request(request))
            .await
            .context("chromedriver's log did not answer in time")??;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        ensure!(
            status.is_success(),
            "chromedriver's log: {status} {}",
            String::from_utf8_lossy(&body)
        );
        let body: Value = serde_json::from_slice(&body)?;
        let mut sent = Vec::new();
        for entry in body["value"].as_array().context("log entries")? {
            let message: Value =
                serde_json::from_str(entry["message"].as_str().context("a log message")?)?;
            let message = &message["message"];
            if message["method"] != "Network.requestWillBeSent" {
                continue;
            }
            let params = &message["params"];
            let id = params["requestId"].as_str().unwrap_or_default().to_owned();
            let redirect = params.get("redirectResponse").map(|r| Redirect {
                method_before: sent
                    .iter()
                    .rev()
                    .find(|s: &&Sent| s.id == id)
                    .map_or("?".to_owned(), |s| s.method.clone()),
                url_before: r["url"].as_str().unwrap_or_default().to_owned(),
                status: r["status"].as_u64().unwrap_or_default(),
                location: header(&r["headers"], "location").unwrap_or_default(),
            });
            sent.push(Sent {
                id,
                method: params["request"]["method"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                url: params["request"]["url"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                redirect,
            });
        }
        Ok(sent)
    }

    /// Ends the browser and chromedriver's session.
    pub async fn close(self) {
        let _ = tokio::time::timeout(STEP, self.client.close()).await;
    }
}

/// A header of a DevTools header object, whatever its case.
fn header(headers: &Value, name: &str) -> Option<String> {
    headers.as_object()?.iter().find_map(|(k, v)| {
        k.eq_ignore_ascii_case(name)
            .then(|| v.as_str().unwrap_or_default().to_owned())
    })
}

/// Makes a certificate with `sessiongate gen-cert` under `dir` and returns the
/// Chromium argument that trusts its key, and only it.
pub fn gen_cert(sessiongate: &str, dir: &Path) -> String {
    let made = Command::new(sessiongate)
        .args(["gen-cert", "--dir"])
        .arg(dir)
        .output()
        .expect("run sessiongate gen-cert");
    assert!(made.status.success(), "gen-cert failed: {made:?}");
    let pem = std::fs::read_to_string(dir.join("dev-key.pem")).expect("read the dev key");
    let key = rcgen::KeyPair::from_pem(&pem).expect("parse the dev key");
    let digest = sha2::Sha256::digest(key.subject_public_key_info());
    format!(
        "--ignore-certificate-errors-spki-list={}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// A fresh secret from `sessiongate gen-secret`.
pub fn gen_secret(sessiongate: &str) -> String {
    let secret = Command::new(sessiongate)
        .arg("gen-secret")
        .output()
        .expect("run sessiongate gen-secret");
    assert!(secret.status.success(), "gen-secret failed: {secret:?}");
    String::from_utf8(secret.stdout)
        .expect("secret is text")
        .trim()
        .to_owned()
}
