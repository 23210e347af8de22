//! `deploy/openapi.yaml`, the admin API's description, kept true: it is valid
//! OpenAPI 3.1 (`openapi-spec-validator`) with every example valid against its
//! schema; it names the same operations as the table at the top of
//! `src/admin.rs`; and a live proxy answers every operation with a status,
//! headers and a body the spec documents (checked with Python's `jsonschema`
//! by `tests/openapi_check.py`), every documented status being exercised.
//!
//! The Python checks need `python3 -m pip install openapi-spec-validator
//! jsonschema PyYAML`; without them they are skipped, saying so, unless `CI`
//! is set, where they fail. The store-failure answers (`503`) need
//! `redis-server`, as the Redis tests do.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::redis::{start_proxy_with_admin, RedisServer};
use support::*;

const TOKEN: &str = "openapi-admin-token-0123456789";

/// Operations the spec documents ahead of the code, as `("GET", "/path/{x}")`.
/// While the proxy answers one with its catch-all `404 Not Found`, that is
/// reported and tolerated (in the live check and in the `src/admin.rs` table);
/// any other answer is checked like every operation's. Empty it once they land.
const PENDING: &[(&str, &str)] = &[];

/// The body of the admin listener's catch-all 404: no such route.
const NO_ROUTE: &str = "404 Not Found\n";

const ALICE: &str = "alice@example.com";
const ALICE_IN_PATH: &str = "alice%40example.com";
const BOB: &str = "bob";
const USER_AGENT: &str = "sessiongate-openapi-test/1";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn spec_path() -> PathBuf {
    root().join("deploy/openapi.yaml")
}

/// An operation: method and path template, as the spec writes them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Op {
    method: String,
    path: String,
}

impl Op {
    fn new(method: &str, path: &str) -> Op {
        Op {
            method: method.to_owned(),
            path: path.to_owned(),
        }
    }

    fn is_pending(&self) -> bool {
        PENDING
            .iter()
            .any(|&(m, p)| m == self.method && p == self.path)
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// What the spec says of one operation.
#[derive(Debug)]
struct Documented {
    /// Needs the bearer token.
    secured: bool,
    statuses: BTreeSet<u16>,
}

fn spec() -> Value {
    let text = std::fs::read_to_string(spec_path()).expect("read deploy/openapi.yaml");
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("deploy/openapi.yaml: {e}"))
}

/// Every operation in the spec, with its security and documented statuses.
fn documented(spec: &Value) -> BTreeMap<Op, Documented> {
    let requires_token = |security: &Value| {
        security
            .as_array()
            .is_some_and(|alternatives| alternatives.iter().all(|a| a.get("adminToken").is_some()))
            && security.as_array().is_some_and(|a| !a.is_empty())
    };
    let global = requires_token(&spec["security"]);
    let mut ops = BTreeMap::new();
    let paths = spec["paths"].as_object().expect("the spec has paths");
    for (path, item) in paths {
        for method in [
            "get", "put", "post", "delete", "options", "head", "patch", "trace",
        ] {
            let Some(op) = item.get(method) else { continue };
            let secured = op.get("security").map_or(global, requires_token);
            let statuses = op["responses"]
                .as_object()
                .unwrap_or_else(|| panic!("{method} {path} has no responses"))
                .keys()
                .map(|s| {
                    s.parse().unwrap_or_else(|_| {
                        panic!("{method} {path}: response {s:?} is not a status")
                    })
                })
                .collect();
            ops.insert(
                Op::new(&method.to_uppercase(), path),
                Documented { secured, statuses },
            );
        }
    }
    ops
}

/// Whether `CI` says this is a CI run (where nothing may be skipped).
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// True when `python3` can import the checks' modules; otherwise says why
/// `what` is skipped, or fails in CI.
fn python_checks_available(what: &str) -> bool {
    let found = Command::new("python3")
        .args([
            "-c",
            "import openapi_spec_validator, jsonschema, referencing, yaml",
        ])
        .output()
        .is_ok_and(|out| out.status.success());
    if !found {
        let why = format!(
            "{what}: python3 with openapi-spec-validator, jsonschema and PyYAML is needed \
             (python3 -m pip install openapi-spec-validator jsonschema PyYAML)"
        );
        if in_ci() {
            panic!("{why}, and CI is set");
        }
        eprintln!("SKIPPED {why}");
    }
    found
}

/// Runs `python3 args`, failing the test with its output unless it exits 0.
fn python(args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new("python3")
        .args(args)
        .current_dir(root())
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python3 {args:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    format!("{stdout}{stderr}")
}

// ---------------------------------------------------------------------------
// The spec on its own.
// ---------------------------------------------------------------------------

#[test]
fn the_spec_is_valid_openapi_3_1_with_valid_examples() {
    let spec = spec();
    let version = spec["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3.1."), "openapi: {version:?}, not 3.1");
    let ops = documented(&spec);
    assert!(!ops.is_empty(), "the spec has no operations");
    for (op, doc) in &ops {
        // The token's refusal is documented exactly where the token is asked.
        assert_eq!(
            doc.secured,
            doc.statuses.contains(&401),
            "{op}: secured is {}, but 401 documented is {}",
            doc.secured,
            doc.statuses.contains(&401)
        );
    }
    let open: BTreeSet<String> = ops
        .iter()
        .filter(|(_, d)| !d.secured)
        .map(|(op, _)| op.to_string())
        .collect();
    assert_eq!(
        open,
        BTreeSet::from(["GET /healthz".to_owned(), "GET /readyz".to_owned()]),
        "only the probes are open without the token"
    );

    if !python_checks_available("the_spec_is_valid_openapi_3_1_with_valid_examples") {
        return;
    }
    let spec_arg = spec_path();
    let out = python(&[
        "-m".as_ref(),
        "openapi_spec_validator".as_ref(),
        spec_arg.as_os_str(),
    ]);
    assert!(out.contains("OK"), "openapi_spec_validator said: {out}");
    let checker = root().join("tests/openapi_check.py");
    python(&[checker.as_os_str(), spec_arg.as_os_str()]);
}

/// The operations the table at the top of `src/admin.rs` lists: its first
/// column, `` `GET /sessions?key=K&value=V` ``, without the query.
fn admin_doc_table() -> BTreeSet<Op> {
    let source = std::fs::read_to_string(root().join("src/admin.rs")).expect("read src/admin.rs");
    let mut ops = BTreeSet::new();
    for line in source.lines().take_while(|l| l.starts_with("//!")) {
        let Some(cell) = line.strip_prefix("//! | `") else {
            continue;
        };
        let request = cell.split('`').next().unwrap_or_default();
        let Some((method, target)) = request.split_once(' ') else {
            continue;
        };
        let path = target.split('?').next().unwrap_or_default();
        ops.insert(Op::new(method, path));
    }
    ops
}

/// `/users/{user}/sessions` and `/users/{value}/sessions` name one path.
fn shape(op: &Op) -> (String, String) {
    let mut path = String::new();
    let mut in_param = false;
    for c in op.path.chars() {
        match c {
            '{' => {
                in_param = true;
                path.push_str("{}");
            }
            '}' => in_param = false,
            _ if !in_param => path.push(c),
            _ => {}
        }
    }
    (op.method.clone(), path)
}

#[test]
fn the_admin_doc_table_and_the_spec_list_the_same_operations() {
    let table = admin_doc_table();
    assert!(
        table.len() >= 5,
        "could not read the table at the top of src/admin.rs: {table:?}"
    );
    let spec_ops: BTreeSet<Op> = documented(&spec()).into_keys().collect();
    let table_shapes: BTreeSet<_> = table.iter().map(shape).collect();
    let spec_shapes: BTreeSet<_> = spec_ops.iter().map(shape).collect();

    let not_in_spec: Vec<String> = table
        .iter()
        .filter(|op| !spec_shapes.contains(&shape(op)))
        .map(Op::to_string)
        .collect();
    let mut not_in_table = Vec::new();
    for op in spec_ops
        .iter()
        .filter(|op| !table_shapes.contains(&shape(op)))
    {
        if op.is_pending() {
            eprintln!("PENDING: {op} is in the spec, not yet in the src/admin.rs table");
        } else {
            not_in_table.push(op.to_string());
        }
    }
    assert!(
        not_in_spec.is_empty() && not_in_table.is_empty(),
        "src/admin.rs's table and deploy/openapi.yaml disagree:\n  \
         in the table, not in the spec: {not_in_spec:?}\n  \
         in the spec, not in the table: {not_in_table:?}"
    );
}

// ---------------------------------------------------------------------------
// The spec against a live proxy.
// ---------------------------------------------------------------------------

/// One answer of the admin listener, as `tests/openapi_check.py` reads it.
#[derive(Clone, Debug, serde::Serialize)]
struct Observed {
    method: String,
    /// The path template of the operation called.
    path: String,
    /// What was requested: path and query.
    url: String,
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

impl Observed {
    fn op(&self) -> Op {
        Op::new(&self.method, &self.path)
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} {} -> {}: not JSON: {e}: {:?}",
                self.method, self.url, self.status, self.body
            )
        })
    }
}

#[derive(Clone, Copy, Debug)]
enum Auth {
    Token,
    Without,
    Wrong,
}

/// Calls the admin listeners and keeps every answer.
#[derive(Default)]
struct Calls {
    client: Option<reqwest::Client>,
    seen: Vec<Observed>,
    /// Operations answered with the catch-all 404 while pending.
    pending: BTreeSet<Op>,
    /// Answers whose status was not the one the call expected.
    failures: Vec<String>,
}

impl Calls {
    /// `method url` on the admin listener at `admin`, as operation `template`;
    /// the answer, or None when a pending operation is not implemented yet.
    async fn call(
        &mut self,
        admin: SocketAddr,
        method: &str,
        template: &str,
        url: &str,
        auth: Auth,
        expect: u16,
    ) -> Option<Observed> {
        let client = self.client.get_or_insert_with(plain_client).clone();
        let mut request = client.request(
            reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
            format!("http://{admin}{url}"),
        );
        match auth {
            Auth::Token => request = request.bearer_auth(TOKEN),
            Auth::Wrong => request = request.bearer_auth("not-the-admin-token"),
            Auth::Without => {}
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = response.status().as_u16();
        let mut headers = BTreeMap::new();
        for (name, value) in response.headers() {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            headers
                .entry(name.as_str().to_owned())
                .and_modify(|v: &mut String| {
                    v.push_str(", ");
                    v.push_str(&value);
                })
                .or_insert(value);
        }
        let body = response.text().await.expect("body");
        let seen = Observed {
            method: method.to_owned(),
            path: template.to_owned(),
            url: url.to_owned(),
            status,
            headers,
            body,
        };
        let op = seen.op();
        if op.is_pending() && status == 404 && seen.body == NO_ROUTE {
            if self.pending.insert(op.clone()) {
                eprintln!("PENDING: {op} answered 404 {NO_ROUTE:?}: not implemented yet");
            }
            return None;
        }
        if status != expect {
            self.failures.push(format!(
                "{method} {url} ({auth:?}): {status}, expected {expect}: {:?}",
                seen.body
            ));
        }
        self.seen.push(seen.clone());
        (status == expect).then_some(seen)
    }
}

/// An upstream that logs in `/login?user=NAME` by writing `user=NAME` to the session.
async fn app() -> Upstream {
    Upstream::start(|seen| match seen.uri.path() {
        "/login" => {
            let user = seen.query("user").expect("/login needs ?user=");
            let user: String = form_urlencoded::byte_serialize(user.as_bytes()).collect();
            Reply::ok().session_set(&format!("user={user}"))
        }
        _ => Reply::ok(),
    })
    .await
}

/// Logs a new browser in as `user` (with a User-Agent when given); answers the
/// session ID.
async fn login(proxy: &Proxy, upstream: &Upstream, user: &str, agent: Option<&str>) -> String {
    let browser = Browser::new();
    let user: String = form_urlencoded::byte_serialize(user.as_bytes()).collect();
    let mut request = browser.request(
        http::Method::GET,
        &proxy.url(&format!("/login?user={user}")),
    );
    if let Some(agent) = agent {
        request = request.header("user-agent", agent);
    }
    let response = request.send().await.expect("login");
    assert_eq!(response.status(), 200, "login through the proxy");
    upstream.last().expect_session_id()
}

/// The test config: the token, the per-user index, and an `app` group with
/// session affinity beside the `default` one, so that `GET /upstreams` shows
/// both kinds of group.
fn admin_config(upstream: &Upstream) -> ConfigYaml {
    config(&upstream.url())
        .set("admin.token", &format!("\"{TOKEN}\""))
        .set("session.user_key", "user")
        .set(
            "upstreams",
            &format!(
                "{{app: {{servers: [\"{}\"], affinity: session}}}}",
                upstream.url()
            ),
        )
        .set("routes", "[{match: {path: /}, upstream: app}]")
}

/// Every secured operation refuses a missing or wrong token with 401.
async fn refused_without_the_token(calls: &mut Calls, admin: SocketAddr, spec: &Value) {
    for (op, doc) in documented(spec) {
        if !doc.secured {
            continue;
        }
        // The token is checked before the route: any value of a parameter will do.
        let url = op
            .path
            .split('/')
            .map(|s| if s.starts_with('{') { "x" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        for auth in [Auth::Without, Auth::Wrong] {
            calls
                .call(admin, &op.method, &op.path, &url, auth, 401)
                .await;
        }
    }
}

/// The session API on the memory store: every success, 400, 401 and 404.
async fn memory_store(calls: &mut Calls, spec: &Value) {
    let upstream = app().await;
    let (proxy, admin) = start_proxy_with_admin(admin_config(&upstream)).await;

    calls
        .call(admin, "GET", "/healthz", "/healthz", Auth::Without, 200)
        .await;
    calls
        .call(admin, "GET", "/readyz", "/readyz", Auth::Without, 200)
        .await;
    calls
        .call(admin, "GET", "/metrics", "/metrics", Auth::Token, 200)
        .await;

    let alice1 = login(&proxy, &upstream, ALICE, Some(USER_AGENT)).await;
    let alice2 = login(&proxy, &upstream, ALICE, None).await;
    let _bob = login(&proxy, &upstream, BOB, None).await;

    // One session.
    let path = format!("/sessions/{alice1}");
    if let Some(seen) = calls
        .call(admin, "GET", "/sessions/{id}", &path, Auth::Token, 200)
        .await
    {
        let session = seen.json();
        assert_eq!(session["id"], alice1.as_str(), "{session}");
        assert_eq!(session["data"]["user"], ALICE, "{session}");
    }
    for id in [unknown_session_id(), "not-a-session-id".to_owned()] {
        let path = format!("/sessions/{id}");
        calls
            .call(admin, "GET", "/sessions/{id}", &path, Auth::Token, 404)
            .await;
    }

    // Find by key and value.
    let url = format!("/sessions?key=user&value={ALICE_IN_PATH}");
    if let Some(seen) = calls
        .call(admin, "GET", "/sessions", &url, Auth::Token, 200)
        .await
    {
        let listed = seen.json();
        let found: BTreeSet<&str> = listed["sessions"]
            .as_array()
            .expect("sessions")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            found,
            BTreeSet::from([alice1.as_str(), alice2.as_str()]),
            "{}",
            seen.body
        );
    }
    calls
        .call(admin, "GET", "/sessions", "/sessions", Auth::Token, 400)
        .await;
    calls
        .call(
            admin,
            "DELETE",
            "/sessions",
            "/sessions?key=user",
            Auth::Token,
            400,
        )
        .await;

    // The groups, one with affinity.
    if let Some(seen) = calls
        .call(admin, "GET", "/upstreams", "/upstreams", Auth::Token, 200)
        .await
    {
        let groups = seen.json()["groups"].clone();
        let app = groups
            .as_array()
            .and_then(|g| g.iter().find(|g| g["name"] == "app"))
            .unwrap_or_else(|| panic!("no group app: {groups}"));
        let pinned: u64 = app["servers"]
            .as_array()
            .expect("servers")
            .iter()
            .map(|s| s["sessions"].as_u64().unwrap_or(0))
            .sum();
        assert_eq!(pinned, 3, "three sessions logged in through app: {groups}");
    }

    // A user's sessions.
    let url = format!("/users/{ALICE_IN_PATH}/sessions");
    if let Some(seen) = calls
        .call(
            admin,
            "GET",
            "/users/{value}/sessions",
            &url,
            Auth::Token,
            200,
        )
        .await
    {
        let listed = seen.json();
        assert_eq!(listed["user"], ALICE, "the user, percent-decoded: {listed}");
        let sessions = listed["sessions"].as_array().expect("sessions");
        let ids: BTreeSet<&str> = sessions.iter().filter_map(|s| s["id"].as_str()).collect();
        assert_eq!(
            ids,
            BTreeSet::from([alice1.as_str(), alice2.as_str()]),
            "{listed}"
        );
        let seen_at: Vec<u64> = sessions
            .iter()
            .filter_map(|s| s["last_seen"].as_u64())
            .collect();
        assert!(
            seen_at.windows(2).all(|w| w[0] >= w[1]),
            "not sorted by last_seen, most recent first: {listed}"
        );
        let first = sessions.iter().find(|s| s["id"] == alice1.as_str());
        assert_eq!(
            first.map(|s| &s["user_agent"]),
            Some(&Value::from(USER_AGENT)),
            "{listed}"
        );
        assert_eq!(
            first.map(|s| &s["client_ip"]),
            Some(&Value::from("127.0.0.1")),
            "{listed}"
        );
    }
    calls
        .call(
            admin,
            "GET",
            "/users/{value}/sessions",
            "/users/nobody/sessions",
            Auth::Token,
            200,
        )
        .await;
    // Not one percent-encoded segment: malformed, or not UTF-8.
    for (method, url) in [
        ("GET", "/users/%ZZ/sessions"),
        ("DELETE", "/users/%FF/sessions"),
    ] {
        calls
            .call(
                admin,
                method,
                "/users/{value}/sessions",
                url,
                Auth::Token,
                400,
            )
            .await;
    }

    refused_without_the_token(calls, admin, spec).await;

    // Destroying.
    let path = format!("/sessions/{alice1}");
    calls
        .call(admin, "DELETE", "/sessions/{id}", &path, Auth::Token, 204)
        .await;
    calls
        .call(admin, "DELETE", "/sessions/{id}", &path, Auth::Token, 404)
        .await;
    let url = format!("/users/{ALICE_IN_PATH}/sessions");
    if let Some(seen) = calls
        .call(
            admin,
            "DELETE",
            "/users/{value}/sessions",
            &url,
            Auth::Token,
            200,
        )
        .await
    {
        assert_eq!(
            seen.json()["destroyed"],
            1,
            "alice's other session: {}",
            seen.body
        );
    }
    let url = format!("/sessions?key=user&value={BOB}");
    if let Some(seen) = calls
        .call(admin, "DELETE", "/sessions", &url, Auth::Token, 200)
        .await
    {
        assert_eq!(seen.json()["destroyed"], 1, "{}", seen.body);
    }
    calls
        .call(
            admin,
            "DELETE",
            "/users/{value}/sessions",
            "/users/nobody/sessions",
            Auth::Token,
            200,
        )
        .await;
}

/// Without `session.user_key` there is no per-user index: 404.
async fn without_user_key(calls: &mut Calls) {
    let upstream = app().await;
    let yaml = admin_config(&upstream).without("session.user_key");
    let (_proxy, admin) = start_proxy_with_admin(yaml).await;
    for method in ["GET", "DELETE"] {
        let seen = calls
            .call(
                admin,
                method,
                "/users/{value}/sessions",
                "/users/alice/sessions",
                Auth::Token,
                404,
            )
            .await;
        if let Some(seen) = seen {
            assert!(seen.body.contains("user_key"), "{seen:?}");
        }
    }
}

/// The readiness probe with no upstream to reach.
async fn upstream_unreachable(calls: &mut Calls) {
    let yaml =
        config(&format!("http://{}", refused_addr())).set("admin.token", &format!("\"{TOKEN}\""));
    let (_proxy, admin) = start_proxy_with_admin(yaml).await;
    if let Some(seen) = calls
        .call(admin, "GET", "/readyz", "/readyz", Auth::Without, 503)
        .await
    {
        assert!(seen.body.contains("upstream"), "{seen:?}");
    }
}

/// Redis down: every operation that needs the store answers 503. False when
/// Redis is not installed (and CI is not set): the test is skipped.
async fn store_down(calls: &mut Calls) -> bool {
    let test = "every_operation_answers_as_the_spec_documents";
    let Some(mut redis) = RedisServer::start(test).await else {
        return false;
    };
    let upstream = app().await;
    let yaml = admin_config(&upstream)
        .with_redis(&redis.url())
        .set("store.redis.timeout", "300ms");
    let (proxy, admin) = start_proxy_with_admin(yaml).await;
    let id = login(&proxy, &upstream, ALICE, None).await;
    redis.kill();

    calls
        .call(admin, "GET", "/healthz", "/healthz", Auth::Without, 200)
        .await;
    calls
        .call(admin, "GET", "/metrics", "/metrics", Auth::Token, 200)
        .await;
    if let Some(seen) = calls
        .call(admin, "GET", "/readyz", "/readyz", Auth::Without, 503)
        .await
    {
        assert!(seen.body.contains("store"), "{seen:?}");
    }
    let session = format!("/sessions/{id}");
    let by_key = format!("/sessions?key=user&value={ALICE_IN_PATH}");
    let user = format!("/users/{ALICE_IN_PATH}/sessions");
    for (method, template, url) in [
        ("GET", "/sessions/{id}", session.as_str()),
        ("DELETE", "/sessions/{id}", session.as_str()),
        ("GET", "/sessions", by_key.as_str()),
        ("DELETE", "/sessions", by_key.as_str()),
        ("GET", "/upstreams", "/upstreams"),
        ("GET", "/users/{value}/sessions", user.as_str()),
        ("DELETE", "/users/{value}/sessions", user.as_str()),
    ] {
        calls
            .call(admin, method, template, url, Auth::Token, 503)
            .await;
    }
    true
}

#[tokio::test]
async fn every_operation_answers_as_the_spec_documents() {
    let spec = spec();
    let ops = documented(&spec);
    let mut calls = Calls::default();

    memory_store(&mut calls, &spec).await;
    without_user_key(&mut calls).await;
    upstream_unreachable(&mut calls).await;
    let redis = store_down(&mut calls).await;

    assert!(
        calls.failures.is_empty(),
        "answers with another status than expected:\n  {}",
        calls.failures.join("\n  ")
    );

    // Every answer's status is documented for its operation...
    let mut exercised: BTreeMap<Op, BTreeSet<u16>> = BTreeMap::new();
    for seen in &calls.seen {
        let op = seen.op();
        let doc = ops
            .get(&op)
            .unwrap_or_else(|| panic!("the test called {op}, which the spec does not have"));
        assert!(
            doc.statuses.contains(&seen.status),
            "{op} answered {} ({:?}); the spec documents {:?}",
            seen.status,
            seen.body,
            doc.statuses
        );
        exercised.entry(op).or_default().insert(seen.status);
    }
    // ...every operation was checked, and every documented status seen: but
    // those of pending operations, and the store's 503s without Redis.
    let checked: BTreeSet<&Op> = exercised.keys().collect();
    assert!(!checked.is_empty(), "no operation was checked");
    let pending: BTreeSet<&Op> = calls.pending.iter().collect();
    let accounted: BTreeSet<&Op> = checked.union(&pending).copied().collect();
    assert_eq!(
        accounted,
        ops.keys().collect::<BTreeSet<_>>(),
        "the operations checked (or pending) are not the spec's"
    );
    let mut never_seen = Vec::new();
    for (op, doc) in &ops {
        for status in &doc.statuses {
            let seen = exercised.get(op).is_some_and(|s| s.contains(status));
            let excused =
                calls.pending.contains(op) || (!redis && *status == 503 && op.path != "/readyz");
            if !seen && !excused {
                never_seen.push(format!("{op} {status}"));
            }
        }
    }
    assert!(
        never_seen.is_empty(),
        "documented answers no call got (document only what the proxy answers): {never_seen:?}"
    );
    for op in &pending {
        eprintln!("PENDING: {op}: only its 401 was checked; the proxy does not implement it yet");
    }

    // The bodies and headers against the schemas.
    if !python_checks_available("every_operation_answers_as_the_spec_documents (schemas)") {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let observed = dir.path().join("observed.json");
    std::fs::write(
        &observed,
        serde_json::to_vec_pretty(&calls.seen).expect("observations as JSON"),
    )
    .expect("write the observations");
    let checker = root().join("tests/openapi_check.py");
    let spec_arg = spec_path();
    let out = python(&[
        checker.as_os_str(),
        spec_arg.as_os_str(),
        observed.as_os_str(),
    ]);
    let want = format!("{} answers checked, 0 problems", calls.seen.len());
    assert!(out.contains(&want), "the checker said: {out}");
    eprintln!("{}", out.trim());
}
