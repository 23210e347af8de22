//! The verification examples of `examples/assertion/` (Python with PyJWT, PHP
//! with hash_hmac and ext-sodium, Node.js with jose), each run as a real
//! process behind the in-process proxy with `assertion` configured, for HS256
//! and for EdDSA, and attacked from outside:
//!
//! - through the proxy, a new session verifies with empty data; `/login`
//!   writes `user=alice` back with `X-Session-Set`, and the next token carries
//!   `sub` and `data`; the token's header and claims are what the contract says;
//! - sent straight to the application, a forged token (wrong key under the
//!   right `kid`, claims changed under the real signature, `alg: none`, the
//!   other algorithm) and forged session headers without a token are refused;
//! - a real token replayed on another path, query, method, `Host` or session,
//!   or after it expired, is refused (the same request within the TTL is
//!   accepted: the token binds the request, it is not single-use);
//! - a client's own assertion header never reaches the application;
//! - rotation: with `keys: [new, old]` an application holding both keys
//!   verifies, one holding only the old key refuses (and accepted the proxy's
//!   tokens while the old key signed).
//!
//! EdDSA keys come from `openssl genpkey`, as `examples/assertion/README.md`
//! tells operators. Without php, node with jose, python3 with PyJWT and
//! cryptography, or openssl the test says so and passes, unless `CI` is set or
//! `SESSIONGATE_THIRDPARTY_TEST=required`: then it fails.

#[path = "support/processes.rs"]
mod processes;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{KeyInit as _, Mac as _};
use http::{HeaderMap, Method};
use processes::Process;
use rcgen::SigningKey as _;
use serde_json::{json, Value};
use sha2::Digest as _;
use support::{config, expect_session_cookie, plain_client, Browser, Proxy};

const REQUIRED: &str = "SESSIONGATE_THIRDPARTY_TEST";
const HEADER: &str = "X-Session-Assertion";
/// The clock skew the applications are told to allow, so that an expired
/// token is refused after a short wait.
const LEEWAY_S: u64 = 1;
/// The TTL of the proxy whose token the test lets expire.
const SHORT_TTL_S: u64 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_hs256() {
    scenario(Lang::Python, Alg::Hs256).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_eddsa() {
    scenario(Lang::Python, Alg::EdDsa).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn php_hs256() {
    scenario(Lang::Php, Alg::Hs256).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn php_eddsa() {
    scenario(Lang::Php, Alg::EdDsa).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_hs256() {
    scenario(Lang::Node, Alg::Hs256).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_eddsa() {
    scenario(Lang::Node, Alg::EdDsa).await;
}

// ---------------------------------------------------------------------------
// The scenario.
// ---------------------------------------------------------------------------

async fn scenario(lang: Lang, alg: Alg) {
    let Some(program) = lang.find() else { return };
    if alg == Alg::EdDsa && processes::on_path("openssl").is_none() {
        unavailable("openssl is not on PATH: install Debian's openssl");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let new = Key::make(alg, "new", dir.path());
    let old = Key::make(alg, "old", dir.path());
    let both_file = write(
        dir.path(),
        "both.keys",
        &format!("{}{}", new.public, old.public),
    );
    let old_file = write(dir.path(), "old.keys", &old.public);

    let app = App::start(lang, &program, alg, &both_file);
    let old_app = App::start(lang, &program, alg, &old_file);
    // A proxy signing with the new key, the old one still listed: the
    // application holding both keys is behind it.
    let proxy = Proxy::start(proxy_config(&app, alg, &[&new, &old], "60s")).await;

    // Started first, checked last: a token that will have expired by then.
    let short = Proxy::start(proxy_config(&app, alg, &[&new], &format!("{SHORT_TTL_S}s"))).await;
    let early = Answer::of(Browser::new().get(&short.url("/soon")).await).await;
    early.expect_verified(&app, "a fresh token from the short-TTL proxy");

    // --- Through the proxy: a new session, then a login. ---
    let browser = Browser::new();
    let response = browser.get(&proxy.url("/page?x=1")).await;
    let cookie_id = expect_session_cookie(response.headers()).id().to_owned();
    let first = Answer::of(response).await;
    first.expect_verified(&app, "a new session through the proxy");
    assert_eq!(first.body["data"], json!({}), "{first}");
    assert_eq!(first.body["sub"], Value::Null, "{first}");
    let (header, claims) = decode(first.token());
    assert_eq!(header["alg"], alg.name(), "{header}");
    assert_eq!(header["typ"], "JWT", "{header}");
    assert_eq!(header["kid"], new.kid, "the first key signs: {header}");
    assert_eq!(claims["sid"], cookie_id.as_str(), "{claims}");
    assert_eq!(first.body["sid"], cookie_id.as_str(), "{first}");
    assert_eq!(claims["aud"], app.addr.as_str(), "{claims}");
    assert_eq!(claims["htm"], "GET", "{claims}");
    assert_eq!(claims["htu"], "/page?x=1", "{claims}");
    assert_eq!(claims["data"], json!({}), "{claims}");
    assert!(claims.get("sub").is_none(), "no user yet: {claims}");
    let iat = claims["iat"].as_u64().expect("iat is a number");
    let exp = claims["exp"].as_u64().expect("exp is a number");
    assert_eq!(exp - iat, 60, "{claims}");
    assert!(iat.abs_diff(unix_now()) <= 5, "iat is now: {claims}");

    let login = browser.get(&proxy.url("/login")).await;
    assert!(
        login.headers().get("x-session-set").is_none(),
        "the proxy consumes X-Session-Set: {:?}",
        login.headers()
    );
    Answer::of(login)
        .await
        .expect_verified(&app, "GET /login through the proxy");

    let account = Answer::of(browser.get(&proxy.url("/account")).await).await;
    account.expect_verified(&app, "the session after login");
    assert_eq!(account.body["sub"], "alice", "{account}");
    assert_eq!(account.body["data"], json!({"user": "alice"}), "{account}");
    let token = account.token().to_owned();
    let (_, claims) = decode(&token);
    assert_eq!(claims["sub"], "alice", "{claims}");
    assert_eq!(claims["sid"], cookie_id.as_str(), "{claims}");

    let posted = browser
        .request(Method::POST, &proxy.url("/account?edit=1"))
        .body("name=alice")
        .send()
        .await
        .expect("POST through the proxy");
    let posted = Answer::of(posted).await;
    posted.expect_verified(&app, "a POST through the proxy");
    let (_, claims) = decode(posted.token());
    assert_eq!(claims["htm"], "POST", "{claims}");
    assert_eq!(claims["htu"], "/account?edit=1", "{claims}");

    // The target is compared as sent, percent-encoding and all.
    let encoded = "/caf%C3%A9/a%20b?q=%2F&r=1";
    let answer = Answer::of(browser.get(&proxy.url(encoded)).await).await;
    answer.expect_verified(&app, "a percent-encoded target through the proxy");
    assert_eq!(decode(answer.token()).1["htu"], encoded);

    // --- A client's own assertion header never reaches the application. ---
    let smuggled = forge(
        &claims_of(&token),
        json!({"alg": "none", "typ": "JWT"}),
        |_| Vec::new(),
    );
    let through = browser
        .request(Method::GET, &proxy.url("/account"))
        .header(HEADER, &smuggled)
        .send()
        .await
        .expect("GET through the proxy");
    let through = Answer::of(through).await;
    through.expect_verified(&app, "a client's assertion header through the proxy");
    assert_ne!(through.token(), smuggled, "the client's token got through");
    assert_eq!(through.body["sub"], "alice", "{through}");

    // --- Straight to the application: the real token, replayed. ---
    let direct = Direct {
        app: &app,
        sid: &cookie_id,
    };
    direct
        .send(Method::GET, "/account", Some(&token), &[])
        .await
        .expect_verified(&app, "the same request again, within the TTL");
    for (why, method, target, extra) in [
        ("on another path", Method::GET, "/admin", &[][..]),
        ("with another query", Method::GET, "/account?x=1", &[][..]),
        ("with another method", Method::POST, "/account", &[][..]),
        (
            "with another Host",
            Method::GET,
            "/account",
            &[("host", "evil.example")][..],
        ),
        (
            "for another session",
            Method::GET,
            "/account",
            &[("x-session-id", OTHER_SID)][..],
        ),
    ] {
        direct
            .send(method, target, Some(&token), extra)
            .await
            .expect_refused(&format!("the token replayed {why}"));
    }
    let no_sid = direct
        .send_without_sid(Method::GET, "/account", Some(&token))
        .await;
    no_sid.expect_refused("the token without X-Session-Id");

    // --- Straight to the application: forgeries. ---
    let mut escalated = claims_of(&token);
    escalated["sub"] = json!("admin");
    escalated["data"] = json!({"user": "admin", "role": "admin"});
    let real_header = json!({"alg": alg.name(), "typ": "JWT", "kid": new.kid});
    let wrong = Key::make(alg, "wrong", dir.path());
    let forgeries = [
        (
            "signed with another key under the real kid",
            forge(&escalated, real_header.clone(), |input| wrong.sign(input)),
        ),
        (
            "with changed claims under the real signature",
            with_claims(&token, &escalated),
        ),
        (
            "with alg none",
            forge(
                &escalated,
                json!({"alg": "none", "typ": "JWT", "kid": new.kid}),
                |_| Vec::new(),
            ),
        ),
        (
            "of the other algorithm",
            other_alg_forgery(alg, &new, &escalated),
        ),
    ];
    for (why, forged) in &forgeries {
        let answer = direct
            .send(Method::GET, "/account", Some(forged), &[])
            .await;
        answer.expect_refused(&format!("a token {why}"));
        assert_eq!(answer.body["assertion"], forged.as_str(), "{answer}");
    }
    direct
        .send(
            Method::GET,
            "/account",
            None,
            &[("x-session-data", "user=admin&role=admin")],
        )
        .await
        .expect_refused("forged X-Session-Id and X-Session-Data without a token");

    // --- Rotation. ---
    // While the old key signed, the application holding only it verified.
    let before = Proxy::start(proxy_config(&old_app, alg, &[&old], "60s")).await;
    let answer = Answer::of(Browser::new().get(&before.url("/")).await).await;
    answer.expect_verified(&old_app, "the old key signing, the app holding it");
    assert_eq!(decode(answer.token()).0["kid"], old.kid);
    // Once the new key signs, it refuses; the app holding both keys verified
    // (above).
    let after = Proxy::start(proxy_config(&old_app, alg, &[&new, &old], "60s")).await;
    let answer = Answer::of(Browser::new().get(&after.url("/")).await).await;
    answer.expect_refused("the new key signing, the app holding only the old one");
    assert!(
        answer.error().contains("kid"),
        "refused for its kid: {answer}"
    );

    // --- Expiry: the short-TTL token, once past exp and the leeway. ---
    let early_token = early.token().to_owned();
    let exp = decode(&early_token).1["exp"]
        .as_u64()
        .expect("exp is a number");
    let until = UNIX_EPOCH + Duration::from_secs(exp + LEEWAY_S + 1);
    if let Ok(wait) = until.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    let early_sid = early.body["sid"].as_str().expect("sid").to_owned();
    Direct {
        app: &app,
        sid: &early_sid,
    }
    .send(Method::GET, "/soon", Some(&early_token), &[])
    .await
    .expect_refused("an expired token on its own request");

    for p in [proxy, short, before, after] {
        p.shutdown().await;
    }
    drop((app, old_app));
}

/// A session ID no proxy issued.
const OTHER_SID: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc";

fn proxy_config(app: &App, alg: Alg, keys: &[&Key], ttl: &str) -> support::ConfigYaml {
    let keys: Vec<String> = keys
        .iter()
        .map(|k| serde_json::to_string(&k.proxy).expect("JSON string"))
        .collect();
    config(&format!("http://{}", app.addr))
        .set("session.user_key", "user")
        .set("assertion.header", HEADER)
        .set("assertion.alg", alg.name())
        .set("assertion.keys", &format!("[{}]", keys.join(", ")))
        .set("assertion.ttl", ttl)
}

// ---------------------------------------------------------------------------
// Keys and tokens.
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Alg {
    Hs256,
    EdDsa,
}

impl Alg {
    fn name(self) -> &'static str {
        match self {
            Alg::Hs256 => "HS256",
            Alg::EdDsa => "EdDSA",
        }
    }
}

/// One key as the proxy and the applications are given it.
struct Key {
    /// What `assertion.keys` holds: the secret, or the PKCS#8 PEM private key.
    proxy: String,
    /// What the application's keys file holds: the secret and a newline, or
    /// the PEM public key.
    public: String,
    kid: String,
    signer: Signer,
}

enum Signer {
    Hmac(Vec<u8>),
    Ed25519(rcgen::KeyPair),
}

impl Key {
    /// A new key; EdDSA pairs are made with `openssl`, into `dir`.
    fn make(alg: Alg, name: &str, dir: &Path) -> Key {
        match alg {
            Alg::Hs256 => {
                let secret = format!("assertion-{name}-secret-{}", random_hex());
                Key {
                    kid: kid(secret.as_bytes()),
                    public: format!("{secret}\n"),
                    signer: Signer::Hmac(secret.clone().into_bytes()),
                    proxy: secret,
                }
            }
            Alg::EdDsa => {
                let private = dir.join(format!("{name}.pem"));
                let public = dir.join(format!("{name}.pub.pem"));
                run(Command::new("openssl")
                    .args(["genpkey", "-algorithm", "ed25519", "-out"])
                    .arg(&private));
                run(Command::new("openssl")
                    .args(["pkey", "-pubout", "-in"])
                    .arg(&private)
                    .arg("-out")
                    .arg(&public));
                let proxy = std::fs::read_to_string(&private).expect("private key");
                let pair = rcgen::KeyPair::from_pem(&proxy).expect("an Ed25519 PKCS#8 key");
                Key {
                    kid: kid(pair.public_key_raw()),
                    public: std::fs::read_to_string(&public).expect("public key"),
                    signer: Signer::Ed25519(pair),
                    proxy,
                }
            }
        }
    }

    fn sign(&self, input: &[u8]) -> Vec<u8> {
        match &self.signer {
            Signer::Hmac(secret) => hmac_sha256(secret, input),
            Signer::Ed25519(pair) => pair.sign(input).expect("Ed25519 signature"),
        }
    }
}

/// The `kid` of a key: the first 8 bytes of SHA-256, in hex.
fn kid(material: &[u8]) -> String {
    sha2::Sha256::digest(material)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn hmac_sha256(secret: &[u8], input: &[u8]) -> Vec<u8> {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC key");
    mac.update(input);
    mac.finalize().into_bytes().to_vec()
}

fn random_hex() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("random bytes");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A compact JWS of `claims` under `header`, signed by `sign`.
fn forge(claims: &Value, header: Value, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = URL_SAFE_NO_PAD.encode(sign(input.as_bytes()));
    format!("{input}.{signature}")
}

/// `token` with its claims replaced, its header and signature kept.
fn with_claims(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{}.{claims}.{}", parts[0], parts[2])
}

/// A token of the algorithm the application does not use, under the real
/// `kid`. Against EdDSA, the classic confusion: HS256 keyed with the public
/// key the application holds. Against HS256, EdDSA with a key of the forger's.
fn other_alg_forgery(alg: Alg, real: &Key, claims: &Value) -> String {
    match alg {
        Alg::EdDsa => forge(
            claims,
            json!({"alg": "HS256", "typ": "JWT", "kid": real.kid}),
            |input| hmac_sha256(real.public.as_bytes(), input),
        ),
        Alg::Hs256 => {
            let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("Ed25519 key");
            forge(
                claims,
                json!({"alg": "EdDSA", "typ": "JWT", "kid": real.kid}),
                |input| pair.sign(input).expect("Ed25519 signature"),
            )
        }
    }
}

/// The protected header and the claims of a compact JWS.
fn decode(token: &str) -> (Value, Value) {
    let part = |s: &str| -> Value {
        let bytes = URL_SAFE_NO_PAD
            .decode(s)
            .unwrap_or_else(|e| panic!("{s:?} is not base64url: {e}"));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{s:?} is not JSON: {e}"))
    };
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a compact JWS: {token:?}");
    (part(parts[0]), part(parts[1]))
}

fn claims_of(token: &str) -> Value {
    decode(token).1
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

// ---------------------------------------------------------------------------
// The applications.
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Lang {
    Python,
    Php,
    Node,
}

/// Where Debian's node-jose puts jose's ES module (the app's fallback).
const DEBIAN_JOSE: &str = "/usr/share/nodejs/jose/dist/node/esm/index.js";

impl Lang {
    /// The interpreter, when it and the libraries are there.
    fn find(self) -> Option<PathBuf> {
        match self {
            Lang::Python => {
                // A pyenv python3 first on PATH does not see Debian's
                // dist-packages: try it, then Debian's own.
                let candidates = processes::on_path("python3")
                    .into_iter()
                    .chain([PathBuf::from("/usr/bin/python3")]);
                for python in candidates {
                    let imports = Command::new(&python)
                        .args(["-c", "import jwt, cryptography"])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success());
                    if imports {
                        return Some(python);
                    }
                }
                unavailable(
                    "no python3 can import jwt and cryptography: install Debian's \
                     python3-jwt and python3-cryptography",
                );
                None
            }
            Lang::Php => {
                let Some(php) = processes::on_path("php") else {
                    unavailable("php is not on PATH: install Debian's php-cli");
                    return None;
                };
                let sodium = Command::new(&php)
                    .args([
                        "-r",
                        "exit(function_exists('sodium_crypto_sign_verify_detached') ? 0 : 1);",
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if !sodium {
                    unavailable("php has no sodium extension (Debian's php-cli has it built in)");
                    return None;
                }
                Some(php)
            }
            Lang::Node => {
                let Some(node) = processes::on_path("node") else {
                    unavailable("node is not on PATH: install Debian's nodejs");
                    return None;
                };
                let local = examples().join("node/node_modules/jose/package.json");
                if !Path::new(DEBIAN_JOSE).is_file() && !local.is_file() {
                    unavailable("jose is not installed: install Debian's node-jose");
                    return None;
                }
                Some(node)
            }
        }
    }
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/assertion")
}

/// One example application on a loopback port of its choosing.
struct App {
    process: Process,
    /// `127.0.0.1:PORT`: where it listens, and the `Host` it gets.
    addr: String,
}

impl App {
    fn start(lang: Lang, program: &Path, alg: Alg, keys_file: &Path) -> App {
        let dir = examples();
        let (name, mut command, ready) = match lang {
            Lang::Python => {
                let mut c = Command::new(program);
                c.arg(dir.join("python/app.py")).arg("0");
                ("python app.py", c, "listening on http://")
            }
            Lang::Php => {
                let mut c = Command::new(program);
                c.args(["-S", "127.0.0.1:0"]).arg(dir.join("php/app.php"));
                c.current_dir(dir.join("php"));
                ("php app.php", c, "Development Server (http://")
            }
            Lang::Node => {
                let mut c = Command::new(program);
                c.arg(dir.join("node/app.mjs")).arg("0");
                ("node app.mjs", c, "listening on http://")
            }
        };
        command
            .env("ASSERTION_ALG", alg.name())
            .env("ASSERTION_KEYS_FILE", keys_file)
            .env("ASSERTION_HEADER", HEADER)
            .env("ASSERTION_LEEWAY", LEEWAY_S.to_string())
            .env_remove("SESSION_ID_HEADER");
        let process = Process::start(name, &mut command, ready);
        let addr = process.address().to_owned();
        assert!(addr.starts_with("127.0.0.1:"), "{name} listens on {addr:?}");
        App { process, addr }
    }
}

/// Requests sent straight to an application, bypassing the proxy, with
/// `X-Session-Id: sid` as an attacker who learnt it would send.
struct Direct<'a> {
    app: &'a App,
    sid: &'a str,
}

impl Direct<'_> {
    async fn send(
        &self,
        method: Method,
        target: &str,
        token: Option<&str>,
        extra: &[(&str, &str)],
    ) -> Answer {
        let mut headers = HeaderMap::new();
        headers.insert("x-session-id", self.sid.parse().expect("header value"));
        self.request(method, target, token, extra, headers).await
    }

    async fn send_without_sid(&self, method: Method, target: &str, token: Option<&str>) -> Answer {
        self.request(method, target, token, &[], HeaderMap::new())
            .await
    }

    async fn request(
        &self,
        method: Method,
        target: &str,
        token: Option<&str>,
        extra: &[(&str, &str)],
        mut headers: HeaderMap,
    ) -> Answer {
        if let Some(token) = token {
            headers.insert(HEADER, token.parse().expect("header value"));
        }
        for (name, value) in extra {
            let name: http::HeaderName = name.parse().expect("header name");
            headers.insert(name, value.parse().expect("header value"));
        }
        let url = format!("http://{}{target}", self.app.addr);
        let response = plain_client()
            .request(method, &url)
            .headers(headers)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "request to the app failed: {e}\n{}",
                    self.app.process.log_tail(20)
                )
            });
        Answer::of(response).await
    }
}

/// An application's JSON answer.
struct Answer {
    status: u16,
    body: Value,
}

impl Answer {
    async fn of(response: reqwest::Response) -> Answer {
        let status = response.status().as_u16();
        let text = response.text().await.expect("response body");
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("the answer ({status}) is not JSON ({e}): {text:?}"));
        Answer { status, body }
    }

    fn token(&self) -> &str {
        self.body["assertion"]
            .as_str()
            .unwrap_or_else(|| panic!("no assertion in {self}"))
    }

    fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }

    fn expect_verified(&self, app: &App, what: &str) {
        assert!(
            self.status == 200 && self.body["verified"] == json!(true),
            "{what}: expected 200 verified, got {self}\n{}",
            app.process.log_tail(20)
        );
    }

    fn expect_refused(&self, what: &str) {
        assert!(
            self.status == 401 && self.body["verified"] == json!(false),
            "{what}: expected 401, got {self}"
        );
        assert!(!self.error().is_empty(), "{what}: no error given: {self}");
    }
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.body)
    }
}

// ---------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------

/// A program or library is missing: fails in CI, else skips the test.
fn unavailable(what: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{what} (CI is set: .ci/run installs it)");
    }
    processes::missing(REQUIRED, what);
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a keys file");
    path
}

fn run(command: &mut Command) {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
