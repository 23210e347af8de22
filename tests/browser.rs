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
