//! The binary's logs as a collector reads them: `log.format: json` gives one
//! object per line; the access line has stable fields, the path without its
//! query, the request id the upstream saw, and a session tag that is never the
//! session id or the cookie.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};
use support::ops::*;
use support::*;

const ACCESS: &str = "sessiongate::access";

/// JSON logs at `info`, with the access log.
fn json_config(upstream_url: &str) -> ConfigYaml {
    config(upstream_url)
        .set("log.format", "json")
        .set("log.level", "info")
        .set("log.access", "true")
}

/// Every output line parsed; fails the test on a line that is not one JSON object.
fn parse_lines(lines: &[String]) -> Vec<Map<String, Value>> {
    lines
        .iter()
        .filter(|line| !line.is_empty())
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(object)) => object,
            Ok(other) => panic!("a log line is JSON but not an object: {other}"),
            Err(e) => panic!("a log line is not JSON ({e}): {line:?}"),
        })
        .collect()
}

fn access_lines(lines: &[Map<String, Value>]) -> Vec<&Map<String, Value>> {
    lines
        .iter()
        .filter(|l| l.get("target").and_then(Value::as_str) == Some(ACCESS))
        .collect()
}

/// The one access line for `path`.
fn access_for<'a>(lines: &'a [Map<String, Value>], path: &str) -> &'a Map<String, Value> {
    let found: Vec<_> = access_lines(lines)
        .into_iter()
        .filter(|l| l.get("path").and_then(Value::as_str) == Some(path))
        .collect();
    assert_eq!(found.len(), 1, "access lines for {path}: {found:?}");
    found[0]
}

fn text<'a>(line: &'a Map<String, Value>, field: &str) -> &'a str {
    line.get(field)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no text field {field}: {line:?}"))
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_object_per_line_with_stable_access_fields() {
    let upstream = Upstream::ok().await;
    let mut proxy = Binary::start(json_config(&upstream.url())).await;
    let alice = Browser::new();
    let bob = Browser::new();

    alice.get(&proxy.url("/first")).await;
    alice.get(&proxy.url("/second")).await;
    bob.get(&proxy.url("/third")).await;
    let output = proxy.stop().await;

    let lines = parse_lines(&output);
    for line in &lines {
        for field in ["timestamp", "level", "target"] {
            assert!(line.contains_key(field), "no {field}: {line:?}");
        }
    }
    assert!(
        lines.iter().any(|l| l
            .get("message")
            .and_then(Value::as_str)
            .is_some_and(|m| m.contains("listening on http://"))),
        "the ordinary log lines are not JSON objects too"
    );
    let access = access_lines(&lines);
    assert_eq!(access.len(), 3, "{access:?}");
    let expected: BTreeSet<&str> = [
        "method",
        "path",
        "status",
        "bytes",
        "duration_ms",
        "upstream_ms",
        "request_id",
        "session",
        "peer",
    ]
    .into();
    for line in &access {
        let keys: BTreeSet<&str> = line.keys().map(String::as_str).collect();
        let missing: Vec<_> = expected.difference(&keys).collect();
        assert!(
            missing.is_empty(),
            "access line lacks {missing:?}: {line:?}"
        );
        assert_eq!(text(line, "level"), "INFO");
        assert_eq!(text(line, "method"), "GET");
        assert_eq!(line["status"], 200);
        assert_eq!(line["bytes"], 2, "the body was `ok`");
        let duration = line["duration_ms"].as_f64().expect("duration_ms: a number");
        let upstream_ms = line["upstream_ms"].as_f64().expect("upstream_ms: a number");
        assert!(
            (0.0..10_000.0).contains(&upstream_ms) && upstream_ms <= duration,
            "upstream {upstream_ms} ms of {duration} ms"
        );
        // Milliseconds to the microsecond, as written: `50.181`, never
        // `50.180913000000004`.
        for field in ["duration_ms", "upstream_ms"] {
            let written = line[field].to_string();
            let decimals = written.split_once('.').map_or(0, |(_, d)| d.len());
            assert!(decimals <= 3, "{field} is written {written}");
        }
        assert!(!text(line, "request_id").is_empty());
        assert_eq!(text(line, "peer"), "127.0.0.1");
        let tag = text(line, "session");
        assert!(is_hex(tag, 16), "session tag {tag:?} is not 16 hex digits");
    }
    // Same field names on every line, and values that let an operator follow a
    // visitor: one tag per session.
    let key_sets: BTreeSet<Vec<&String>> = access.iter().map(|l| l.keys().collect()).collect();
    assert_eq!(
        key_sets.len(),
        1,
        "access lines differ in fields: {key_sets:?}"
    );
    let tag = |path: &str| text(access_for(&lines, path), "session").to_owned();
    assert_eq!(tag("/first"), tag("/second"));
    assert_ne!(tag("/first"), tag("/third"));
    let ids: BTreeSet<&str> = access.iter().map(|l| text(l, "request_id")).collect();
    assert_eq!(ids.len(), 3, "request ids are not unique");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_log_line_holds_a_session_id_or_a_cookie() {
    let upstream = Upstream::start(|seen| match seen.uri.path() {
        "/login" => Reply::ok().session_set("user=alice").session_regenerate(),
        "/logout" => Reply::ok().session_destroy(),
        _ => Reply::ok(),
    })
    .await;
    let mut proxy = Binary::start(json_config(&upstream.url())).await;
    let browser = Browser::new();
    let mut cookies = Vec::new();

    for path in ["/", "/login", "/account", "/logout", "/"] {
        let response = browser.get(&proxy.url(path)).await;
        cookies.extend(session_set_cookie(response.headers()));
    }
    // A tampered cookie, and an old one after its session was regenerated.
    let first = cookies[0].clone();
    let (id, tag) = first.value.split_once('.').unwrap();
    let flipped = if tag.starts_with('A') { 'B' } else { 'A' };
    let tampered = format!("{id}.{flipped}{}", &tag[1..]);
    get_with_cookie(&proxy.url("/tampered"), &format!("{COOKIE}={tampered}")).await;
    get_with_cookie(&proxy.url("/old"), &first.pair()).await;
    let output = proxy.stop().await;

    let mut secrets: BTreeSet<String> = upstream
        .requests()
        .iter()
        .filter_map(|seen| seen.session_id().map(str::to_owned))
        .collect();
    assert!(secrets.len() >= 4, "too few sessions to check: {secrets:?}");
    // (The logout's expired cookie has no value.)
    for (id, tag) in cookies.iter().filter_map(|c| c.value.split_once('.')) {
        secrets.extend([id.to_owned(), tag.to_owned()]);
    }
    secrets.insert(tampered);
    let lines = parse_lines(&output);
    assert_eq!(access_lines(&lines).len(), 7);
    for line in &output {
        for secret in &secrets {
            assert!(!line.contains(secret.as_str()), "{secret} logged: {line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_path_is_logged_without_its_query_string() {
    let upstream = Upstream::ok().await;
    let mut proxy = Binary::start(json_config(&upstream.url())).await;

    get_without_cookie(&proxy.url("/search?q=needle-in-query&token=hunter2")).await;
    let output = proxy.stop().await;

    assert_eq!(upstream.last().query("token").as_deref(), Some("hunter2"));
    let lines = parse_lines(&output);
    access_for(&lines, "/search");
    for line in &output {
        assert!(
            !line.contains("hunter2") && !line.contains("needle-in-query"),
            "the query string was logged: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_logged_request_id_is_the_one_the_upstream_saw() {
    let upstream = Upstream::ok().await;
    let mut proxy = Binary::start(json_config(&upstream.url())).await;
    let client = plain_client();

    for path in ["/a", "/b", "/c"] {
        get_without_cookie(&proxy.url(path)).await;
    }
    // A client that is not a trusted proxy cannot choose the id.
    client
        .get(proxy.url("/forged"))
        .header("x-request-id", "chosen-by-client")
        .send()
        .await
        .unwrap();
    let output = proxy.stop().await;

    let sent: BTreeMap<String, String> = upstream
        .requests()
        .iter()
        .map(|seen| {
            let id = seen
                .header("x-request-id")
                .unwrap_or_else(|| panic!("no X-Request-Id upstream: {:?}", seen.headers));
            (seen.uri.path().to_owned(), id.to_owned())
        })
        .collect();
    assert_ne!(sent["/forged"], "chosen-by-client");
    let lines = parse_lines(&output);
    for (path, id) in &sent {
        assert_eq!(text(access_for(&lines, path), "request_id"), id, "{path}");
    }
}

/// Behind a trusted load balancer, its request id is kept end to end: the
/// upstream and the access log show the same one.
#[tokio::test(flavor = "multi_thread")]
async fn a_trusted_proxys_request_id_is_kept_and_logged() {
    let upstream = Upstream::ok().await;
    let yaml = json_config(&upstream.url()).set("trusted_proxies", "[\"127.0.0.1/32\"]");
    let mut proxy = Binary::start(yaml).await;

    plain_client()
        .get(proxy.url("/behind-lb"))
        .header("x-request-id", "lb-7f3a9c")
        .send()
        .await
        .unwrap();
    let output = proxy.stop().await;

    assert_eq!(upstream.last().header("x-request-id"), Some("lb-7f3a9c"));
    let lines = parse_lines(&output);
    assert_eq!(
        text(access_for(&lines, "/behind-lb"), "request_id"),
        "lb-7f3a9c",
        "the access log names a request id the upstream never saw"
    );
}

/// A request the proxy answers itself is logged once as an error, with its cause
/// and the request id of its access line.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_request_is_logged_once_with_its_request_id() {
    let mut proxy = Binary::start(json_config(&format!("http://{}", refused_addr()))).await;

    let response = get_without_cookie(&proxy.url("/down")).await;
    assert_eq!(response.status(), 502);
    let output = proxy.stop().await;

    let lines = parse_lines(&output);
    let access = access_for(&lines, "/down");
    assert_eq!(access["status"], 502);
    let request_id = text(access, "request_id");
    let errors: Vec<_> = lines
        .iter()
        .filter(|l| l.get("target").and_then(Value::as_str) != Some(ACCESS))
        .filter(|l| l.get("request_id").and_then(Value::as_str) == Some(request_id))
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let error = errors[0];
    assert!(
        ["WARN", "ERROR"].contains(&text(error, "level")),
        "{error:?}"
    );
    let described = error
        .iter()
        .filter(|(k, _)| !["timestamp", "level", "target", "request_id"].contains(&k.as_str()))
        .map(|(_, v)| v.to_string())
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase();
    assert!(
        described.contains("refused"),
        "the error line does not give the cause: {error:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_upstream_is_named_in_the_failure_line() {
    let dead = refused_addr();
    let mut proxy = Binary::start(json_config(&format!("http://{dead}"))).await;

    let response = get_without_cookie(&proxy.url("/")).await;
    assert_eq!(response.status(), 502);
    let output = proxy.stop().await;

    let lines = parse_lines(&output);
    let failed: Vec<_> = lines
        .iter()
        .filter(|l| l.get("message").and_then(Value::as_str) == Some("request failed"))
        .collect();
    assert_eq!(failed.len(), 1, "{lines:?}");
    assert_eq!(text(failed[0], "upstream"), dead.to_string());
    assert_eq!(text(failed[0], "kind"), "upstream_refused");
}
