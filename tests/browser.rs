//! A real browser through the HTTPS listener: headless Chromium, driven over
//! WebDriver by Debian's chromedriver, logs in and out of a legacy application
//! (tests/browser/legacy_app.py) that knows nothing of cookies.
//!
//! Everything runs as an operator would run it: the `sessiongate` binary, a
//! certificate from `sessiongate gen-cert`, a secret from `sessiongate gen-secret`
//! in the environment, a config file. Chromium trusts exactly that certificate's
//! key (`--ignore-certificate-errors-spki-list`), nothing wider.
//!
//! Without Chromium the test says so and passes, unless
//! `SESSIONGATE_BROWSER_TEST=required` (set by `.ci/run`), where it fails.

#[path = "support/processes.rs"]
mod processes;
#[path = "support/webdriver.rs"]
mod webdriver;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use fantoccini::{Client, ClientBuilder, Locator};
use processes::{Process, STEP};
use serde_json::json;
use webdriver::Browser;

const SESSIONGATE: &str = env!("CARGO_BIN_EXE_sessiongate");
const REQUIRED: &str = "SESSIONGATE_BROWSER_TEST";
/// The cookie name over HTTPS with the defaults (`secure: auto`, `host_prefix: true`).
const HOST_COOKIE: &str = "__Host-sessiongate";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_keeps_the_host_cookie_across_login_pages_and_logout() {
    let Some(browser) = Browser::find(REQUIRED) else {
        return;
    };
    let work = tempfile::tempdir().expect("temporary directory");

    let app = Process::start(
        "legacy app",
        Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/legacy_app.py"))
            .args(["--port", "0"]),
        "legacy app listening on http://",
    );
    let spki_pin = webdriver::gen_cert(SESSIONGATE, &work.path().join("certs"));
    let proxy = start_sessiongate(work.path(), app.address());
    let proxy_url = format!("https://{}", proxy.address());
    let driver = Process::start(
        "chromedriver",
        Command::new(&browser.chromedriver).args([
            "--port=0".to_owned(),
            format!(
                "--log-path={}",
                work.path().join("chromedriver.log").display()
            ),
        ]),
        "ChromeDriver was started successfully on port ",
    );

    let capabilities = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": browser.chromium,
            "args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                format!("--user-data-dir={}", work.path().join("profile").display()),
                // Trust sessiongate's self-signed certificate, and only it.
                spki_pin,
            ],
        },
    });
    let serde_json::Value::Object(capabilities) = capabilities else {
        unreachable!("a JSON object");
    };
    let client = tokio::time::timeout(
        STEP,
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", driver.address())),
    )
    .await
    .expect("chromedriver did not start a session in time")
    .unwrap_or_else(|e| panic!("chromedriver refused the session: {e}\n{}", driver.log()));

    let flow =
        tokio::time::timeout(Duration::from_secs(120), login_flow(&client, &proxy_url)).await;
    let page = client.source().await.unwrap_or_default();
    let _ = client.close().await;
    match flow {
        Ok(Ok(ids)) => {
            // Info-level logs, access log included, never carry a session id.
            let log = proxy.log();
            for id in ids {
                assert!(
                    !log.contains(&id),
                    "a session id is in the proxy's log:\n{log}"
                );
            }
        }
        Ok(Err(e)) => panic!(
            "{e:#}\n--- page ---\n{page}\n--- sessiongate ---\n{}\n--- app ---\n{}",
            proxy.log(),
            app.log()
        ),
        Err(_) => panic!("the login flow took over 120s\n--- page ---\n{page}"),
    }
}

/// Visit, log in, see the user on a second page, log out; check the cookie jar and
/// what the application saw at each step. Returns every session id it saw.
async fn login_flow(client: &Client, base: &str) -> anyhow::Result<Vec<String>> {
    // 1. First visit: a session, its cookie Secure, HttpOnly, __Host- prefixed.
    client.goto(&format!("{base}/")).await?;
    wait_for(client, "#login").await?;
    let first = session_cookie(client)
        .await?
        .context("no session cookie after the first visit")?;
    ensure!(first.secure() == Some(true), "cookie not Secure: {first:?}");
    ensure!(
        first.http_only() == Some(true),
        "cookie not HttpOnly: {first:?}"
    );
    ensure!(first.path() == Some("/"), "cookie path: {first:?}");
    ensure!(
        text(client, "#session").await? == cookie_id(&first),
        "the app saw another session id than the browser's cookie names"
    );
    ensure!(
        !text(client, "#cookies").await?.contains("sessiongate"),
        "the proxy's cookie reached the application"
    );

    // 2. Log in: the form posts, the app regenerates the session, the browser follows
    // the redirect home carrying the new cookie.
    client
        .find(Locator::Css("#username"))
        .await?
        .send_keys("alice")
        .await?;
    client.find(Locator::Css("#submit")).await?.click().await?;
    ensure!(
        text_of(&wait_for(client, "#user").await?).await? == "alice",
        "not signed in after login"
    );
    let logged_in = session_cookie(client)
        .await?
        .context("no session cookie after login")?;
    ensure!(
        cookie_id(&logged_in) != cookie_id(&first),
        "login did not change the session id"
    );
    ensure!(text(client, "#session").await? == cookie_id(&logged_in));

    // 3. A second page, reached by a link: same cookie, still signed in.
    client.find(Locator::Css("#account")).await?.click().await?;
    let user = wait_for(client, "#user").await?;
    ensure!(client.current_url().await?.path() == "/account");
    ensure!(
        text_of(&user).await? == "alice",
        "the account page lost the user"
    );
    let kept = session_cookie(client)
        .await?
        .context("the session cookie was lost on the second page")?;
    ensure!(
        kept.value() == logged_in.value(),
        "the cookie changed between pages"
    );
    ensure!(text(client, "#session").await? == cookie_id(&logged_in));

    // 4. Log out: the proxy expires the cookie; the browser drops it.
    client.find(Locator::Css("#logout")).await?.click().await?;
    wait_for(client, "#signed-out").await?;
    if let Some(left) = session_cookie(client).await? {
        bail!("logout left the session cookie in the browser: {left:?}");
    }

    // 5. Back on the account page: nobody signed in, a brand-new session.
    client.goto(&format!("{base}/account")).await?;
    wait_for(client, "#anonymous").await?;
    let fresh = session_cookie(client)
        .await?
        .context("no new session after logout")?;
    ensure!(
        cookie_id(&fresh) != cookie_id(&logged_in) && cookie_id(&fresh) != cookie_id(&first),
        "an old session id came back after logout"
    );
    Ok(vec![
        cookie_id(&first),
        cookie_id(&logged_in),
        cookie_id(&fresh),
    ])
}

/// The proxy's cookie, if the browser holds it; fails if it holds the proxy's cookie
/// under the plain (non-`__Host-`) name.
async fn session_cookie(client: &Client) -> anyhow::Result<Option<cookie::Cookie<'static>>> {
    let cookies = client.get_all_cookies().await?;
    ensure!(
        cookies.iter().all(|c| c.name() != "sessiongate"),
        "the browser holds a cookie without the __Host- prefix: {cookies:?}"
    );
    Ok(cookies.into_iter().find(|c| c.name() == HOST_COOKIE))
}

/// The session id part of `<id>.<tag>`.
fn cookie_id(c: &cookie::Cookie<'_>) -> String {
    c.value().split('.').next().unwrap_or_default().to_owned()
}

async fn wait_for(client: &Client, css: &str) -> anyhow::Result<fantoccini::elements::Element> {
    client
        .wait()
        .at_most(STEP)
        .for_element(Locator::Css(css))
        .await
        .with_context(|| format!("no {css} on the page"))
}

async fn text(client: &Client, css: &str) -> anyhow::Result<String> {
    text_of(&client.find(Locator::Css(css)).await?).await
}

async fn text_of(element: &fantoccini::elements::Element) -> anyhow::Result<String> {
    Ok(element.text().await?.trim().to_owned())
}

// ---------------------------------------------------------------------------
// The pieces, started as an operator would.
// ---------------------------------------------------------------------------

/// Writes a config with only an HTTPS listener, with the certificate `gen-cert`
/// wrote under `work/certs` and a secret from `gen-secret` in the environment, and
/// starts the binary; its `address` is the HTTPS listener's.
fn start_sessiongate(work: &Path, app: &str) -> Process {
    let certs = work.join("certs");
    let config = work.join("config.yaml");
    let yaml = format!(
        "listen: null\n\
         tls:\n  listen: 127.0.0.1:0\n  cert: {:?}\n  key: {:?}\n\
         upstream:\n  url: http://{app}\n\
         session:\n  secrets: [\"${{SESSIONGATE_SECRET}}\"]\n\
         admin:\n  listen: 127.0.0.1:0\n\
         log:\n  level: info\n  access: true\n",
        certs.join("dev-cert.pem"),
        certs.join("dev-key.pem"),
    );
    std::fs::write(&config, yaml).expect("write config.yaml");
    Process::start(
        "sessiongate",
        Command::new(SESSIONGATE)
            .arg("--config")
            .arg(&config)
            .env("SESSIONGATE_SECRET", webdriver::gen_secret(SESSIONGATE))
            .env_remove("RUST_LOG"),
        "listening on https://",
    )
}

// ---------------------------------------------------------------------------
// The worked example of examples/multi: two instances of the demo application
// behind one proxy, /admin/ gated to role=admin, cross-site protection on.
// ---------------------------------------------------------------------------

/// Chromium asks for /admin/, is sent to the login page, logs in as an
/// administrator and lands on /admin/; a form on another origin that posts to
/// the site is refused, while the site's own form posts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_logs_in_through_the_gate_and_a_cross_site_post_is_refused() {
    let Some(browser) = Browser::find(REQUIRED) else {
        return;
    };
    let work = tempfile::tempdir().expect("temporary directory");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let apps: Vec<Process> = ["one", "two"]
        .iter()
        .map(|name| {
            Process::start(
                "demo app",
                Command::new("python3")
                    .arg(root.join("examples/demo/app.py"))
                    .args(["--port", "0", "--name", name]),
                "demo app listening on http://",
            )
        })
        .collect();
    // The example's own config, pointed at these ports.
    let example = std::fs::read_to_string(root.join("examples/multi/config.yaml"))
        .expect("examples/multi/config.yaml");
    let config = example
        .replace(
            "http://127.0.0.1:3001",
            &format!("http://{}", apps[0].address()),
        )
        .replace(
            "http://127.0.0.1:3002",
            &format!("http://{}", apps[1].address()),
        )
        .replace("listen: 127.0.0.1:8080", "listen: 127.0.0.1:0")
        .replace("listen: 127.0.0.1:9091", "listen: 127.0.0.1:0");
    let path = work.path().join("config.yaml");
    std::fs::write(&path, config).expect("write config.yaml");
    let proxy = Process::start(
        "sessiongate",
        Command::new(SESSIONGATE)
            .arg("--config")
            .arg(&path)
            .env("SESSIONGATE_SECRET", webdriver::gen_secret(SESSIONGATE))
            .env_remove("RUST_LOG"),
        "listening on http://",
    );
    let site = format!("http://{}", proxy.address());
    // Another origin (127.0.0.2 is loopback too, and another site than
    // 127.0.0.1) serving a page whose form posts to the site by itself.
    let attacker_dir = work.path().join("attacker");
    std::fs::create_dir_all(&attacker_dir).unwrap();
    std::fs::write(
        attacker_dir.join("index.html"),
        format!(
            "<!doctype html><form id=f method=post action=\"{site}/note\">\
             <input name=note value=pwned></form><script>f.submit()</script>"
        ),
    )
    .unwrap();
    let attacker = Process::start(
        "attacker site",
        Command::new("python3").arg("-c").arg(format!(
            "import functools, http.server\n\
             h = functools.partial(http.server.SimpleHTTPRequestHandler, directory={:?})\n\
             s = http.server.HTTPServer(('127.0.0.2', 0), h)\n\
             print('attacker listening on http://127.0.0.2:%d' % s.server_address[1], flush=True)\n\
             s.serve_forever()\n",
            attacker_dir.display().to_string()
        )),
        "attacker listening on http://",
    );
    let session = browser
        .start(
            work.path(),
            &[
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE 127.0.0.2"
                    .to_owned(),
            ],
        )
        .await;
    let attacker_url = format!("http://{}/", attacker.address());
    let flow = tokio::time::timeout(
        Duration::from_secs(120),
        gate_flow(&session.client, &site, &attacker_url),
    )
    .await;
    let page = session.client.source().await.unwrap_or_default();
    session.close().await;
    match flow {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!(
            "{e:#}\n--- page ---\n{page}\n--- sessiongate ---\n{}\n--- apps ---\n{}\n{}",
            proxy.log(),
            apps[0].log(),
            apps[1].log()
        ),
        Err(_) => panic!("the gate flow took over 120s\n--- page ---\n{page}"),
    }
}

async fn gate_flow(client: &Client, site: &str, attacker: &str) -> anyhow::Result<()> {
    // 1. The gated page sends the browser to the login page, with where it was going.
    client.goto(&format!("{site}/admin/")).await?;
    wait_for(client, "#login").await?;
    let url = client.current_url().await?;
    ensure!(url.path() == "/login", "not on the login page: {url}");
    ensure!(
        url.query() == Some("next=/admin/"),
        "the login page lost where the browser was going: {url}"
    );
    // 2. Log in as an administrator: the application's redirect to `next` lands on /admin/.
    client
        .find(Locator::Css("input[name=username]"))
        .await?
        .send_keys("root")
        .await?;
    client
        .find(Locator::Css("input[name=role]"))
        .await?
        .click()
        .await?;
    client
        .find(Locator::Css("#login button"))
        .await?
        .click()
        .await?;
    let admin = text_of(&wait_for(client, "#admin").await?).await?;
    ensure!(
        admin.contains("root"),
        "the admin page does not name the user: {admin}"
    );
    let url = client.current_url().await?;
    ensure!(url.path() == "/admin/", "not sent back to /admin/: {url}");
    let server = text(client, "#server").await?;
    // 3. The session stays on its instance.
    for _ in 0..5 {
        client.goto(&format!("{site}/")).await?;
        let again = text_of(&wait_for(client, "#server").await?).await?;
        ensure!(
            again == server,
            "the session moved from {server} to {again}"
        );
    }
    // 4. Another site's form posting to this one is refused before the application.
    client.goto(attacker).await?;
    let mut refused = String::new();
    for _ in 0..50 {
        refused = client
            .find(Locator::Css("body"))
            .await?
            .text()
            .await
            .unwrap_or_default();
        if refused.contains("403") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        refused.contains("403 Forbidden: cross-site request refused"),
        "the cross-site form post was not refused: {refused:?}"
    );
    // 5. The site's own form posts, and the note is in the session.
    client.goto(&format!("{site}/")).await?;
    client
        .find(Locator::Css("#note-form input[name=note]"))
        .await?
        .send_keys("mine")
        .await?;
    client
        .find(Locator::Css("#note-form button"))
        .await?
        .click()
        .await?;
    // The page before the click has `#visits` too: wait for the note itself.
    let mut source = String::new();
    for _ in 0..50 {
        source = client.source().await?;
        if source.contains("<code>mine</code>") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        source.contains("<code>mine</code>"),
        "the same-site form post did not land"
    );
    ensure!(
        !source.contains("pwned"),
        "the cross-site post reached the session"
    );
    Ok(())
}
