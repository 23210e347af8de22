//! Users, not just sessions, as an operator and an application see them through
//! the real proxy: the per-user index behind `GET` and `DELETE
//! /users/{value}/sessions`, `session.max_per_user`, `X-Session-Destroy-Others`
//! after a password change, `X-Session-Persist` (remember-me), the index
//! surviving a restart, and two proxies sharing it on one real Redis.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::ops::*;
use support::redis::RedisServer;
use support::*;

const TOKEN: &str = "admin-token-0123456789";

/// The application: `/login?user=NAME[&remember=0|1]` logs in,
/// `/login?...&regenerate=1` also regenerates, `/password` ends the user's other
/// sessions, `/logout` destroys the session.
async fn app() -> Upstream {
    Upstream::start(|seen| match seen.uri.path() {
        "/login" => {
            let mut reply =
                Reply::ok().session_set(&format!("user={}", seen.query("user").unwrap()));
            if let Some(remember) = seen.query("remember") {
                let value = if remember == "1" { "true" } else { "false" };
                reply = reply.header("X-Session-Persist", value);
            }
            if seen.query("regenerate").is_some() {
                reply = reply.session_regenerate();
            }
            reply
        }
        "/regenerate" => Reply::ok().session_regenerate(),
        "/password" => Reply::ok().header("X-Session-Destroy-Others", "true"),
        "/logout" => Reply::ok().session_destroy(),
        _ => Reply::ok(),
    })
    .await
}

fn users_config(upstream: &Upstream) -> ConfigYaml {
    config(&upstream.url())
        .set("session.user_key", "user")
        .set("admin.token", &format!("\"{TOKEN}\""))
}

/// A browser with cookies and a `User-Agent` of its own.
struct Visitor {
    client: reqwest::Client,
}

impl Visitor {
    fn new(agent: &str) -> Visitor {
        let client = reqwest::Client::builder()
            .cookie_store(true)
            .user_agent(agent)
            .build()
            .expect("client");
        Visitor { client }
    }

    async fn get(&self, url: &str) -> reqwest::Response {
        let response = self.client.get(url).send().await.expect("GET");
        assert_eq!(response.status(), 200, "GET {url}");
        response
    }
}

/// Logs `visitor` in as `user` through `proxy`; the session ID the upstream saw.
async fn login(proxy: &AdminProxy, upstream: &Upstream, visitor: &Visitor, user: &str) -> String {
    visitor
        .get(&proxy.url(&format!("/login?user={user}")))
        .await;
    upstream.last().expect_session_id()
}

/// The user the upstream sees on the visitor's next request, and its session.
async fn whoami(
    proxy: &AdminProxy,
    upstream: &Upstream,
    visitor: &Visitor,
) -> (Option<String>, String) {
    visitor.get(&proxy.url("/whoami")).await;
    let seen = upstream.last();
    (seen.data().get("user").cloned(), seen.expect_session_id())
}

async fn admin(method: reqwest::Method, url: &str) -> (u16, Value) {
    let response = plain_client()
        .request(method, url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("admin request");
    let status = response.status().as_u16();
    let body = response.text().await.expect("body");
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

/// `GET /users/{user}/sessions`: the IDs listed, and the whole answer.
async fn listed(proxy: &AdminProxy, user: &str) -> (Vec<String>, Value) {
    let (status, body) = admin(
        reqwest::Method::GET,
        &proxy.admin_url(&format!("/users/{user}/sessions")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"], Value::from(percent_decoded(user)));
    let mut ids: Vec<String> = body["sessions"]
        .as_array()
        .expect("a list of sessions")
        .iter()
        .map(|s| s["id"].as_str().expect("an id").to_owned())
        .collect();
    ids.sort();
    (ids, body)
}

fn percent_decoded(s: &str) -> String {
    s.replace("%20", " ")
        .replace("%C3%BC", "ü")
        .replace("%2F", "/")
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

#[tokio::test]
async fn a_users_sessions_are_listed_and_logged_out_everywhere() {
    let upstream = app().await;
    let proxy = AdminProxy::start(users_config(&upstream)).await;
    let (laptop, phone, other) = (
        Visitor::new("Laptop/1.0"),
        Visitor::new("Phone/2.0"),
        Visitor::new("Other/3.0"),
    );
    let a = login(&proxy, &upstream, &laptop, "alice").await;
    let b = login(&proxy, &upstream, &phone, "alice").await;
    let c = login(&proxy, &upstream, &other, "bob").await;
    // The application sees its own data only: where and with what the user
    // logged in stays with the proxy.
    // Seen a second later (the store keeps seconds): listed first.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let seen = {
        whoami(&proxy, &upstream, &laptop).await;
        upstream.last()
    };
    assert_eq!(
        seen.session_data(),
        Some("user=alice"),
        "{:?}",
        seen.headers
    );

    let (ids, body) = listed(&proxy, "alice").await;
    assert_eq!(ids, sorted(vec![a.clone(), b.clone()]));
    let sessions = body["sessions"].as_array().unwrap();
    let agents: Vec<&str> = sessions
        .iter()
        .map(|s| s["user_agent"].as_str().unwrap())
        .collect();
    assert!(
        agents.contains(&"Laptop/1.0") && agents.contains(&"Phone/2.0"),
        "{body}"
    );
    for s in sessions {
        assert_eq!(s["client_ip"], "127.0.0.1", "{body}");
        let (created, seen) = (
            s["created"].as_u64().unwrap(),
            s["last_seen"].as_u64().unwrap(),
        );
        assert!(created > 1_700_000_000 && seen >= created, "{body}");
    }
    // Most recently seen first: the laptop was just used.
    assert_eq!(sessions[0]["id"], Value::from(a.clone()), "{body}");
    assert_eq!(listed(&proxy, "bob").await.0, vec![c.clone()]);
    assert!(listed(&proxy, "nobody").await.0.is_empty());

    // Without the token: refused.
    let refused = plain_client()
        .get(proxy.admin_url("/users/alice/sessions"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    let (status, body) = admin(
        reqwest::Method::DELETE,
        &proxy.admin_url("/users/alice/sessions"),
    )
    .await;
    assert_eq!((status, &body), (200, &serde_json::json!({"destroyed": 2})));
    for visitor in [&laptop, &phone] {
        let (user, id) = whoami(&proxy, &upstream, visitor).await;
        assert_eq!(user, None, "logged out everywhere");
        assert!(id != a && id != b, "a new session, not the old one");
    }
    assert_eq!(
        whoami(&proxy, &upstream, &other).await,
        (Some("bob".into()), c)
    );
    assert!(listed(&proxy, "alice").await.0.is_empty());
    let (status, body) = admin(
        reqwest::Method::DELETE,
        &proxy.admin_url("/users/alice/sessions"),
    )
    .await;
    assert_eq!((status, body), (200, serde_json::json!({"destroyed": 0})));
}

#[tokio::test]
async fn user_values_are_percent_encoded_path_segments() {
    let upstream = app().await;
    let proxy = AdminProxy::start(users_config(&upstream)).await;
    let visitor = Visitor::new("V");
    let id = login(&proxy, &upstream, &visitor, "J%C3%BCrgen%20K").await;
    assert_eq!(
        whoami(&proxy, &upstream, &visitor).await.0.as_deref(),
        Some("Jürgen K")
    );
    assert_eq!(listed(&proxy, "J%C3%BCrgen%20K").await.0, vec![id]);
    let (status, _) = admin(
        reqwest::Method::GET,
        &proxy.admin_url("/users/%FF/sessions"),
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn without_a_user_key_the_user_endpoints_say_so() {
    let upstream = app().await;
    let proxy =
        AdminProxy::start(config(&upstream.url()).set("admin.token", &format!("\"{TOKEN}\"")))
            .await;
    let (status, body) = admin(
        reqwest::Method::GET,
        &proxy.admin_url("/users/alice/sessions"),
    )
    .await;
    assert_eq!(status, 404);
    assert!(
        body.as_str().unwrap().contains("session.user_key"),
        "{body}"
    );
}

#[tokio::test]
async fn max_per_user_logs_out_the_least_recently_used_session() {
    let upstream = app().await;
    let proxy = AdminProxy::start(users_config(&upstream).set("session.max_per_user", "2")).await;
    let (first, second, third) = (Visitor::new("1"), Visitor::new("2"), Visitor::new("3"));
    let a = login(&proxy, &upstream, &first, "carol").await;
    let b = login(&proxy, &upstream, &second, "carol").await;
    // The store keeps seconds: the first is used a second later than the second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    whoami(&proxy, &upstream, &first).await;
    let c = login(&proxy, &upstream, &third, "carol").await;
    assert_eq!(
        listed(&proxy, "carol").await.0,
        sorted(vec![a.clone(), c.clone()])
    );
    let (user, id) = whoami(&proxy, &upstream, &second).await;
    assert_eq!(user, None, "the least recently used session was logged out");
    assert_ne!(id, b);
    assert_eq!(
        whoami(&proxy, &upstream, &first).await,
        (Some("carol".into()), a)
    );
    assert_eq!(
        whoami(&proxy, &upstream, &third).await,
        (Some("carol".into()), c)
    );
}

#[tokio::test]
async fn destroy_others_after_a_password_change_keeps_only_this_session() {
    let upstream = app().await;
    let proxy = AdminProxy::start(users_config(&upstream)).await;
    let visitors: Vec<Visitor> = (0..3).map(|i| Visitor::new(&format!("V{i}"))).collect();
    let mut ids = Vec::new();
    for v in &visitors {
        ids.push(login(&proxy, &upstream, v, "dave").await);
    }
    let bystander = Visitor::new("B");
    let e = login(&proxy, &upstream, &bystander, "erin").await;
    let response = visitors[1].get(&proxy.url("/password")).await;
    assert!(
        response.headers().get("x-session-destroy-others").is_none(),
        "the write-back header never reaches the browser"
    );
    assert_eq!(listed(&proxy, "dave").await.0, vec![ids[1].clone()]);
    for i in [0, 2] {
        assert_eq!(
            whoami(&proxy, &upstream, &visitors[i]).await.0,
            None,
            "visitor {i}"
        );
    }
    assert_eq!(
        whoami(&proxy, &upstream, &visitors[1]).await,
        (Some("dave".into()), ids[1].clone())
    );
    assert_eq!(
        whoami(&proxy, &upstream, &bystander).await,
        (Some("erin".into()), e)
    );
}

/// The session cookie's `Max-Age` in a response, when it sets one.
fn cookie_of(response: &reqwest::Response) -> SetCookie {
    expect_session_cookie(response.headers())
}

#[tokio::test]
async fn persist_chooses_a_persistent_or_a_browser_session_cookie() {
    let upstream = app().await;
    let proxy =
        AdminProxy::start(users_config(&upstream).set("session.absolute_timeout", "2h")).await;
    // Not remembered: a browser-session cookie, kept so through a regeneration.
    let v = Visitor::new("V");
    v.get(&proxy.url("/")).await;
    let response = v.get(&proxy.url("/login?user=fay&remember=0")).await;
    let cookie = cookie_of(&response);
    assert_eq!(cookie.max_age(), None, "{}", cookie.raw);
    assert!(cookie.attr("expires").is_none(), "{}", cookie.raw);
    assert!(response.headers().get("x-session-persist").is_none());
    let response = v.get(&proxy.url("/regenerate")).await;
    assert_eq!(cookie_of(&response).max_age(), None, "after regenerating");
    assert_eq!(
        upstream.last().session_data(),
        Some("user=fay"),
        "the choice stays with the proxy"
    );
    // Remembered: persistent for what is left of the absolute timeout.
    let w = Visitor::new("W");
    let response = w
        .get(&proxy.url("/login?user=gus&remember=1&regenerate=1"))
        .await;
    let age = cookie_of(&response).max_age().expect("a persistent cookie");
    assert!((7190..=7200).contains(&age), "Max-Age {age}");
    let response = w.get(&proxy.url("/regenerate")).await;
    assert!(cookie_of(&response).max_age().is_some(), "still persistent");
    // Changed later: the same session's cookie is sent again, as chosen.
    let response = w.get(&proxy.url("/login?user=gus&remember=0")).await;
    assert_eq!(cookie_of(&response).max_age(), None);
    assert_eq!(
        whoami(&proxy, &upstream, &w).await.0.as_deref(),
        Some("gus")
    );
}

#[tokio::test]
async fn the_index_survives_a_restart_with_a_snapshot() {
    let upstream = app().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sessions.snapshot");
    let yaml = users_config(&upstream)
        .set("store.snapshot", &format!("\"{}\"", file.display()))
        .to_string();
    let proxy = AdminProxy::start(&yaml).await;
    let v = Visitor::new("Kept/1");
    let id = login(&proxy, &upstream, &v, "hal").await;
    proxy.shutdown().await;

    let proxy = AdminProxy::start(&yaml).await;
    let (ids, body) = listed(&proxy, "hal").await;
    assert_eq!(ids, vec![id.clone()]);
    assert_eq!(body["sessions"][0]["user_agent"], "Kept/1");
    assert_eq!(
        whoami(&proxy, &upstream, &v).await,
        (Some("hal".into()), id)
    );
    let (status, body) = admin(
        reqwest::Method::DELETE,
        &proxy.admin_url("/users/hal/sessions"),
    )
    .await;
    assert_eq!((status, body), (200, serde_json::json!({"destroyed": 1})));
    assert_eq!(whoami(&proxy, &upstream, &v).await.0, None);
}

#[tokio::test]
async fn two_proxies_on_one_redis_share_the_index() {
    let Some(redis) = RedisServer::start("two_proxies_on_one_redis_share_the_index").await else {
        return;
    };
    let upstream = app().await;
    let yaml = users_config(&upstream)
        .with_redis(&redis.url())
        .set("session.max_per_user", "3")
        .to_string();
    let (one, two) = (
        AdminProxy::start(&yaml).await,
        AdminProxy::start(&yaml).await,
    );
    let (v1, v2, v3) = (
        Visitor::new("One"),
        Visitor::new("Two"),
        Visitor::new("Three"),
    );
    let a = login(&one, &upstream, &v1, "ida").await;
    let b = login(&two, &upstream, &v2, "ida").await;
    let c = login(&two, &upstream, &v3, "ida").await;
    let all = sorted(vec![a.clone(), b.clone(), c.clone()]);
    assert_eq!(listed(&one, "ida").await.0, all);
    assert_eq!(listed(&two, "ida").await.0, all);
    // A fourth login on either proxy ends the least recently used (the first).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    whoami(&two, &upstream, &v2).await;
    whoami(&one, &upstream, &v3).await;
    let v4 = Visitor::new("Four");
    let d = login(&one, &upstream, &v4, "ida").await;
    assert_eq!(
        listed(&two, "ida").await.0,
        sorted(vec![b.clone(), c.clone(), d.clone()])
    );
    assert_eq!(
        whoami(&two, &upstream, &v1).await.0,
        None,
        "the limit's victim"
    );
    // A password change on one proxy logs out what the other serves.
    v2.get(&one.url("/password")).await;
    assert_eq!(listed(&two, "ida").await.0, vec![b.clone()]);
    assert_eq!(whoami(&two, &upstream, &v3).await.0, None);
    assert_eq!(whoami(&two, &upstream, &v2).await, (Some("ida".into()), b));
    let (status, body) = admin(
        reqwest::Method::DELETE,
        &two.admin_url("/users/ida/sessions"),
    )
    .await;
    assert_eq!((status, body), (200, serde_json::json!({"destroyed": 1})));
    assert_eq!(whoami(&one, &upstream, &v2).await.0, None);
    assert!(listed(&one, "ida").await.0.is_empty());
}

#[tokio::test]
async fn login_details_follow_the_login_not_every_write() {
    let upstream = app().await;
    let proxy = AdminProxy::start(users_config(&upstream)).await;
    let v = Visitor::new("First/1");
    login(&proxy, &upstream, &v, "jay").await;
    // Writing the same user again (many applications do it on every page)
    // keeps the details of the login.
    v.get(&proxy.url("/login?user=jay")).await;
    let (_, body) = listed(&proxy, "jay").await;
    assert_eq!(body["sessions"][0]["user_agent"], "First/1", "{body}");
    assert_eq!(body["sessions"][0]["client_ip"], "127.0.0.1", "{body}");
    // Switching to another user without logging out: the old login's details
    // are not shown as the new one's.
    v.get(&proxy.url("/login?user=kay")).await;
    assert!(listed(&proxy, "jay").await.0.is_empty());
    let (ids, body) = listed(&proxy, "kay").await;
    assert_eq!(ids.len(), 1, "{body}");
    assert_eq!(body["sessions"][0]["user_agent"], Value::Null, "{body}");
    assert_eq!(body["sessions"][0]["client_ip"], Value::Null, "{body}");
    // Another visitor logging in: its own details.
    let w = Visitor::new("Second/2");
    login(&proxy, &upstream, &w, "lee").await;
    let (_, body) = listed(&proxy, "lee").await;
    assert_eq!(body["sessions"][0]["user_agent"], "Second/2", "{body}");
}
