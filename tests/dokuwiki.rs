//! DokuWiki, an unchanged PHP application with a login, a PHP session and a
//! login cookie of its own, used through the `sessiongate` binary by headless
//! Chromium the way a person uses it: open the start page, log in, write a
//! page, upload a file in the media manager and fetch it back, log out.
//!
//! DokuWiki comes from Debian's `dokuwiki` package (the code under
//! /usr/share/dokuwiki) and runs on `php -S`, set up per test in a temporary
//! directory with a configuration written here, so the installer is never
//! needed and nothing reaches the network. A small router in front of
//! DokuWiki's own records what each request brought to the application.
//!
//! After every step: each request the browser sent (DevTools' network log,
//! redirect hops included) went to sessiongate's origin; the browser holds
//! sessiongate's cookie, the same since the first page (DokuWiki never asks
//! to regenerate or destroy the session), beside DokuWiki's own cookies. At
//! the end: DokuWiki never saw sessiongate's cookie, and got one session ID
//! on every request that carried cookies.
//!
//! Four ways: plain HTTP and HTTPS, each with `upstream.preserve_host` off
//! (the default: DokuWiki builds its redirects from the upstream's own
//! address, and `upstream.rewrite_redirects` must bring the browser back) and
//! on. Over HTTPS DokuWiki takes the scheme from `X-Forwarded-Proto`.
//!
//! Without Chromium, chromedriver, php or DokuWiki the tests say so and pass,
//! unless `SESSIONGATE_THIRDPARTY_TEST=required` (set by `.ci/run`).

#[path = "support/processes.rs"]
mod processes;
#[path = "support/webdriver.rs"]
mod webdriver;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use fantoccini::elements::Element;
use fantoccini::Locator;
use processes::{Process, STEP};
use serde_json::Value;
use webdriver::{Browser, Sent, Session};

const SESSIONGATE: &str = env!("CARGO_BIN_EXE_sessiongate");
const REQUIRED: &str = "SESSIONGATE_THIRDPARTY_TEST";
const DOKUWIKI: &str = "/usr/share/dokuwiki";
const USER: &str = "alice";
const PASSWORD: &str = "correct horse battery staple";
/// The page the test writes, and what it writes there.
const PAGE: &str = "through_sessiongate";
const PAGE_TEXT: &str = "Written in Chromium, saved by DokuWiki behind sessiongate.";
/// The file the test uploads (DokuWiki's default mime.conf allows png).
const UPLOAD: &str = "sessiongate-upload.png";
/// The whole scenario, once everything has started.
const SCENARIO: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dokuwiki_over_http_with_the_upstream_host() {
    use_dokuwiki(Listener::Http, PreserveHost(false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dokuwiki_over_http_with_the_client_host() {
    use_dokuwiki(Listener::Http, PreserveHost(true)).await;
}

/// The default configuration over TLS. DokuWiki trusts `X-Forwarded-Proto`
/// and builds `https://` URLs on the upstream's own authority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dokuwiki_over_https_with_the_upstream_host() {
    use_dokuwiki(Listener::Https, PreserveHost(false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dokuwiki_over_https_with_the_client_host() {
    use_dokuwiki(Listener::Https, PreserveHost(true)).await;
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Listener {
    Http,
    Https,
}

/// `upstream.preserve_host`.
#[derive(Clone, Copy, Debug)]
struct PreserveHost(bool);

/// One run: the processes, then the scenario, then what the application saw.
async fn use_dokuwiki(listener: Listener, preserve_host: PreserveHost) {
    let Some(tools) = Tools::find() else {
        return;
    };
    // Several Chromiums at once on two cores make every step slow; one at a time.
    let _turn = TURN.lock().await;
    let started = Instant::now();
    let work = tempfile::tempdir().expect("temporary directory");
    let wiki = Wiki::install(work.path(), &tools.php);
    let app = wiki.serve(&tools.php);
    let mut chromium_args = vec!["--window-size=1280,1024".to_owned()];
    if listener == Listener::Https {
        chromium_args.push(webdriver::gen_cert(SESSIONGATE, &work.path().join("certs")));
    }
    let proxy = start_sessiongate(work.path(), app.address(), listener, preserve_host);
    let scheme = match listener {
        Listener::Http => "http",
        Listener::Https => "https",
    };
    let browser = tools.browser.start(work.path(), &chromium_args).await;
    let mut visit = Visit {
        session: &browser,
        origin: format!("{scheme}://{}", proxy.address()),
        app: app.address().to_owned(),
        cookie: match listener {
            Listener::Http => "sessiongate",
            Listener::Https => "__Host-sessiongate",
        },
        secure: listener == Listener::Https,
        upload: work.path().join(UPLOAD),
        first_cookie: None,
        steps: String::new(),
    };
    let flow = tokio::time::timeout(SCENARIO, visit.scenario()).await;
    if !matches!(flow, Ok(Ok(()))) {
        visit.requests_since_last_step().await;
    }
    let page = browser
        .client
        .execute(
            "return document.body ? document.body.innerText : ''",
            vec![],
        )
        .await
        .ok()
        .and_then(|text| text.as_str().map(str::to_owned))
        .unwrap_or_default();
    let url = browser.client.current_url().await.map(String::from);
    let steps = std::mem::take(&mut visit.steps);
    let cookie = visit.first_cookie.take();
    let driver = browser.driver.log();
    browser.close().await;
    let context = || {
        format!(
            "--- steps ---\n{steps}--- page at {url:?} ---\n{page}\n--- sessiongate ---\n{}\n\
             --- php ---\n{}\n--- what DokuWiki got ---\n{}\n{driver}",
            proxy.log(),
            app.log(),
            std::fs::read_to_string(wiki.requests_log()).unwrap_or_default(),
        )
    };
    let run = format!("{listener:?}, preserve_host {}", preserve_host.0);
    match flow {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{run}: {e:#}\n{}", context()),
        Err(_) => panic!("{run}: the scenario took over {SCENARIO:?}\n{}", context()),
    }
    let cookie = cookie.expect("the scenario records the session cookie");
    let host = if preserve_host.0 {
        proxy.address()
    } else {
        app.address()
    };
    let seen = wiki.requests();
    let cookieless = match seen
        .as_deref()
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .and_then(|seen| what_dokuwiki_got(seen, &cookie, scheme, host))
    {
        Ok(cookieless) => cookieless,
        Err(e) => panic!("{run}: {e:#}\n{}", context()),
    };
    let seen = seen.map(|s| s.len()).unwrap_or_default();
    eprintln!(
        "{run}: passed in {:.1?}; {seen} requests reached DokuWiki, {cookieless} of them \
         without cookies (new sessions)\n{steps}",
        started.elapsed(),
    );
}

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The browser's side of one run.
struct Visit<'a> {
    session: &'a Session,
    /// `scheme://host:port` of sessiongate's listener.
    origin: String,
    /// DokuWiki's own `host:port`, which the browser must never see.
    app: String,
    /// sessiongate's cookie name on this listener.
    cookie: &'static str,
    /// Whether the cookies are expected to be `Secure`.
    secure: bool,
    upload: PathBuf,
    /// sessiongate's cookie value after the first page.
    first_cookie: Option<String>,
    /// A line per step, and every redirect, for the report.
    steps: String,
}

impl Visit<'_> {
    async fn scenario(&mut self) -> anyhow::Result<()> {
        let session = self.session;
        let c = &session.client;
        let origin = self.origin.clone();

        // 1. The start page: sessiongate's cookie and DokuWiki's PHP session.
        c.goto(&format!("{origin}/")).await?;
        self.wait(Locator::Css("#dokuwiki__usertools li.action.login a"))
            .await?;
        let jar = self.step("start page").await?;
        ensure!(
            jar.has("DokuWiki"),
            "no DokuWiki session cookie: {}",
            jar.names()
        );

        // 2. Log in with DokuWiki's own form.
        c.find(Locator::Css("#dokuwiki__usertools li.action.login a"))
            .await?
            .click()
            .await?;
        self.wait(Locator::Css("#dw__login input[name=u]"))
            .await?
            .send_keys(USER)
            .await?;
        c.find(Locator::Css("#dw__login input[name=p]"))
            .await?
            .send_keys(PASSWORD)
            .await?;
        c.find(Locator::Css("#dw__login button[type=submit]"))
            .await?
            .click()
            .await?;
        let user = self
            .wait(Locator::Css("#dokuwiki__usertools li.user"))
            .await?
            .text()
            .await?;
        ensure!(user.contains(USER), "not logged in: {user:?}");
        let jar = self.step("log in").await?;
        ensure!(
            jar.has("DokuWiki") && jar.has_dokuwiki_login(),
            "DokuWiki's session or login cookie is missing after login: {}",
            jar.names()
        );

        // 3. Write a page (a security token tied to DokuWiki's PHP session
        // guards the save), see it, reload it.
        c.goto(&format!("{origin}/doku.php?id={PAGE}&do=edit"))
            .await?;
        self.wait(Locator::Css("#wiki__text"))
            .await?
            .send_keys(PAGE_TEXT)
            .await?;
        c.find(Locator::Css("#edbtn__save")).await?.click().await?;
        let shown = format!("//div[contains(@class, 'page')]//p[contains(., '{PAGE_TEXT}')]");
        self.wait(Locator::XPath(&shown)).await?;
        self.step("edit and save").await?;
        c.refresh().await?;
        self.wait(Locator::XPath(&shown)).await?;
        ensure!(
            !c.current_url().await?.as_str().contains("do=edit"),
            "still in the editor after saving"
        );
        self.step("reload the page").await?;

        // 4. Upload a file in the media manager, see it listed, fetch it back.
        c.find(Locator::Css("#dokuwiki__sitetools li.action.media a"))
            .await?
            .click()
            .await?;
        let png = png();
        std::fs::write(&self.upload, &png)?;
        c.find(Locator::XPath(
            "//*[@id='mediamanager__page']//ul[contains(@class, 'tabs')]//a[contains(., 'Upload')]",
        ))
        .await?
        .click()
        .await?;
        self.wait(Locator::Css("#mediamanager__uploader input[type=file]"))
            .await?
            .send_keys(&self.upload.display().to_string())
            .await?;
        self.wait(Locator::Css(".qq-upload-name-input")).await?;
        c.find(Locator::Css("#mediamanager__upload_button"))
            .await?
            .click()
            .await?;
        let done = self
            .wait(Locator::Css(".qq-upload-success, .qq-upload-fail"))
            .await?;
        ensure!(
            done.attr("class")
                .await?
                .unwrap_or_default()
                .contains("success"),
            "the upload failed: {}",
            done.text().await?
        );
        self.step("upload").await?;
        c.goto(&format!("{origin}/doku.php?id={PAGE}&do=media&ns="))
            .await?;
        self.wait(Locator::XPath(&format!(
            "//*[@id='mediamanager__page']//a[contains(., '{UPLOAD}')]"
        )))
        .await?;
        self.step("media list").await?;
        // fetch.php answers media with `Content-Security-Policy: default-src
        // 'none'`, so the bytes are read from the wiki page, then the file is
        // opened as a user would.
        let media = format!("{origin}/lib/exe/fetch.php?media={UPLOAD}");
        let fetched = c
            .execute(
                "return fetch(arguments[0]).then(r => r.arrayBuffer())\
                 .then(b => Array.from(new Uint8Array(b)))",
                vec![Value::String(media.clone())],
            )
            .await?;
        let fetched: Vec<u8> = serde_json::from_value(fetched)?;
        ensure!(
            fetched == png,
            "fetched {} bytes, uploaded {}",
            fetched.len(),
            png.len()
        );
        c.goto(&media).await?;
        let size = c
            .execute(
                "const i = document.images[0]; return i ? [i.naturalWidth, i.naturalHeight] : []",
                vec![],
            )
            .await?;
        ensure!(
            size == serde_json::json!([16, 16]),
            "the image shown is {size}"
        );
        self.step("fetch the file").await?;

        // 5. Log out of DokuWiki. DokuWiki does not tell sessiongate, so
        // sessiongate's session goes on; DokuWiki's login cookie goes.
        c.goto(&format!("{origin}/doku.php?id={PAGE}")).await?;
        self.wait(Locator::Css("#dokuwiki__usertools li.action.logout a"))
            .await?
            .click()
            .await?;
        self.wait(Locator::Css("#dokuwiki__usertools li.action.login a"))
            .await?;
        ensure!(
            c.find(Locator::Css("#dokuwiki__usertools li.user"))
                .await
                .is_err(),
            "still logged in after logout"
        );
        let jar = self.step("log out").await?;
        ensure!(
            !jar.has_dokuwiki_login(),
            "DokuWiki's login cookie survived logout: {}",
            jar.names()
        );
        Ok(())
    }

    /// Waits (at most [`STEP`]) for an element; fails at once when the browser
    /// has left sessiongate's origin, since the element would then come from
    /// somewhere else or never.
    async fn wait(&self, what: Locator<'_>) -> anyhow::Result<Element> {
        let c = &self.session.client;
        let deadline = Instant::now() + STEP;
        loop {
            let url = c.current_url().await?;
            ensure!(
                url.as_str().starts_with(&format!("{}/", self.origin)),
                "the browser left {} for {url} while waiting for {what:?}",
                self.origin
            );
            match c.find(what).await {
                Ok(found) => return Ok(found),
                Err(e) if e.is_no_such_element() => {}
                Err(e) => return Err(e.into()),
            }
            ensure!(Instant::now() < deadline, "no {what:?} after {STEP:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Writes the redirects among `sent` to the report; fails on the first
    /// request that did not go to sessiongate's origin.
    fn check_requests(&mut self, name: &str, sent: &[Sent]) -> anyhow::Result<()> {
        for s in sent {
            if let Some(r) = &s.redirect {
                let _ = writeln!(
                    self.steps,
                    "  {} {} answered {}, Location: {}",
                    r.method_before, r.url_before, r.status, r.location
                );
            }
        }
        for s in sent {
            if !(s.url.starts_with("http:") || s.url.starts_with("https:")) {
                continue; // data: and the like never reach the network
            }
            if !s.url.starts_with(&format!("{}/", self.origin)) {
                let how = match &s.redirect {
                    Some(r) => format!(
                        "following the {} that answered {} {} with Location: {}",
                        r.status, r.method_before, r.url_before, r.location
                    ),
                    None => "not a redirect".to_owned(),
                };
                bail!(
                    "{name}: the browser requested {} {} ({how}); everything should go to {} \
                     and nothing to DokuWiki's own {}",
                    s.method,
                    s.url,
                    self.origin,
                    self.app
                );
            }
        }
        Ok(())
    }

    /// After a failure: the requests since the last step, into the report.
    async fn requests_since_last_step(&mut self) {
        match self.session.requests().await {
            Ok(sent) => {
                let _ = writeln!(self.steps, "(failed here) {} more requests", sent.len());
                if let Err(e) = self.check_requests("after the last step", &sent) {
                    let _ = writeln!(self.steps, "  {e:#}");
                }
            }
            Err(e) => {
                let _ = writeln!(self.steps, "(failed here; no request log: {e:#})");
            }
        }
    }

    /// After a step: every request went to sessiongate's origin; the browser
    /// holds sessiongate's cookie, the same one since the first page, and
    /// DokuWiki's cookies, `Secure` over HTTPS.
    async fn step(&mut self, name: &str) -> anyhow::Result<Jar> {
        let session = self.session;
        let c = &session.client;
        let url = c.current_url().await?;
        let sent = session.requests().await?;
        let _ = writeln!(self.steps, "{name}: at {url}, {} requests", sent.len());
        self.check_requests(name, &sent)?;
        ensure!(
            url.as_str().starts_with(&format!("{}/", self.origin)),
            "{name}: the browser is at {url}, not on {}",
            self.origin
        );
        let jar = Jar(c.get_all_cookies().await?);
        let _ = writeln!(self.steps, "  cookies:{}", jar.names());
        let ours = jar
            .get(self.cookie)
            .with_context(|| format!("{name}: no {} cookie: {}", self.cookie, jar.names()))?;
        match &self.first_cookie {
            None => self.first_cookie = Some(ours.value().to_owned()),
            Some(first) => ensure!(
                first == ours.value(),
                "{name}: sessiongate's cookie changed, though DokuWiki never asked to \
                 regenerate or destroy the session"
            ),
        }
        for cookie in &jar.0 {
            ensure!(
                cookie.secure().unwrap_or(false) == self.secure,
                "{name}: cookie {} Secure is {:?}, expected {}",
                cookie.name(),
                cookie.secure(),
                self.secure
            );
        }
        Ok(jar)
    }
}

/// The browser's cookies.
struct Jar(Vec<cookie::Cookie<'static>>);

impl Jar {
    fn get(&self, name: &str) -> Option<&cookie::Cookie<'static>> {
        self.0.iter().find(|c| c.name() == name)
    }

    fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// DokuWiki's login cookie: `DW` and an MD5 of its base path.
    fn has_dokuwiki_login(&self) -> bool {
        self.0.iter().any(|c| c.name().starts_with("DW"))
    }

    /// The names, each after a space.
    fn names(&self) -> String {
        self.0.iter().map(|c| format!(" {}", c.name())).collect()
    }
}

/// What the application received: every request through sessiongate (none
/// of the browser's went around it), never with sessiongate's cookie, the
/// scheme and `Host` as configured, and each with the browser's one session,
/// created once. Returns how many other sessions were made: one per page for
/// the web app manifest, which Chromium fetches without cookies.
fn what_dokuwiki_got(
    seen: &[Value],
    cookie_value: &str,
    scheme: &str,
    host: &str,
) -> anyhow::Result<usize> {
    let id = cookie_value.split('.').next().unwrap_or_default();
    let mut created = 0;
    let mut cookieless = 0;
    let mut hosts = BTreeSet::new();
    for request in seen {
        let line = || format!("{} {}", request["method"], request["uri"]);
        let header = |name: &str| request["headers"][name].as_str();
        ensure!(
            !header("HTTP_COOKIE")
                .unwrap_or_default()
                .contains("sessiongate="),
            "{}: sessiongate's cookie reached DokuWiki",
            line()
        );
        ensure!(
            header("HTTP_X_FORWARDED_PROTO") == Some(scheme),
            "{}: X-Forwarded-Proto {:?}",
            line(),
            header("HTTP_X_FORWARDED_PROTO")
        );
        hosts.insert(header("HTTP_HOST").unwrap_or_default().to_owned());
        let new = header("HTTP_X_SESSION_NEW") == Some("true");
        if header("HTTP_X_SESSION_ID") == Some(id) {
            created += usize::from(new);
            continue;
        }
        // The manifest is fetched with credentials "omit": no cookie, so a new
        // session that the browser never stores.
        ensure!(
            new && header("HTTP_COOKIE").is_none()
                && header("HTTP_SEC_FETCH_DEST") == Some("manifest"),
            "{}: X-Session-Id {:?} (new: {new}), the browser's cookie names {id:?}",
            line(),
            header("HTTP_X_SESSION_ID")
        );
        cookieless += 1;
    }
    ensure!(!seen.is_empty(), "no request reached DokuWiki");
    ensure!(
        created == 1,
        "the browser's session was created {created} times"
    );
    ensure!(
        hosts.len() == 1 && hosts.contains(host),
        "DokuWiki got Host {hosts:?}, expected {host}"
    );
    Ok(cookieless)
}

// ---------------------------------------------------------------------------
// The pieces.
// ---------------------------------------------------------------------------

/// The programs from outside the crate.
struct Tools {
    browser: Browser,
    php: PathBuf,
}

impl Tools {
    fn find() -> Option<Tools> {
        let browser = Browser::find(REQUIRED)?;
        let Some(php) = processes::on_path("php") else {
            processes::missing(REQUIRED, "php is not on PATH: install Debian's php-cli");
            return None;
        };
        if !Path::new(DOKUWIKI).join("doku.php").is_file() {
            processes::missing(
                REQUIRED,
                "no DokuWiki in /usr/share/dokuwiki: install dokuwiki",
            );
            return None;
        }
        Some(Tools { browser, php })
    }
}

/// A DokuWiki of its own: a copy of the packaged code with its configuration
/// and data in the test's directory.
struct Wiki {
    dir: PathBuf,
}

/// In front of DokuWiki's own `php -S` router (index.php): records each
/// request's method, URI and `HTTP_*` variables, and the status and headers
/// DokuWiki answered, one JSON line each.
const RECORDING_ROUTER: &str = r#"<?php
$record = ['method' => $_SERVER['REQUEST_METHOD'], 'uri' => $_SERVER['REQUEST_URI'], 'headers' => []];
foreach ($_SERVER as $name => $value) {
    if (strncmp($name, 'HTTP_', 5) === 0) $record['headers'][$name] = $value;
}
register_shutdown_function(function () use ($record) {
    $record['status'] = http_response_code();
    $record['response'] = headers_list();
    file_put_contents(__DIR__ . '/requests.jsonl', json_encode($record, JSON_UNESCAPED_SLASHES) . "\n", FILE_APPEND | LOCK_EX);
});
return require $_SERVER['DOCUMENT_ROOT'] . '/index.php';
"#;

impl Wiki {
    /// Copies the code (symlinks into /etc and /var/lib followed), writes
    /// conf/ and an empty data/, and removes Debian's preload.php (which points
    /// at /etc/dokuwiki) and install.php (which must not be needed).
    fn install(work: &Path, php: &Path) -> Wiki {
        let dir = work.to_path_buf();
        let code = dir.join("dokuwiki");
        copy_tree(Path::new(DOKUWIKI), &code).expect("copy /usr/share/dokuwiki");
        std::fs::remove_file(code.join("inc/preload.php")).expect("remove Debian's preload.php");
        std::fs::remove_file(code.join("install.php")).expect("remove install.php");

        // The defaults (dokuwiki.php, mime.conf, …) from Debian's /etc/dokuwiki;
        // the ACL, users and local settings are this test's.
        let conf = code.join("conf");
        std::fs::create_dir_all(&conf).expect("mkdir conf");
        for entry in std::fs::read_dir("/etc/dokuwiki").expect("read /etc/dokuwiki") {
            let path = entry.expect("a directory entry").path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let ours = ["local.php", "acl.auth.php", "users.auth.php"];
            if path.is_file() && !ours.contains(&name.as_ref()) {
                std::fs::copy(&path, conf.join(&*name))
                    .unwrap_or_else(|e| panic!("copy {}: {e}", path.display()));
            }
        }
        let data = dir.join("data");
        for sub in [
            "pages",
            "attic",
            "media",
            "media_attic",
            "media_meta",
            "meta",
            "cache",
            "index",
            "locks",
            "tmp",
            "log",
        ] {
            std::fs::create_dir_all(data.join(sub)).expect("mkdir data");
        }
        std::fs::write(
            data.join("pages/start.txt"),
            "====== Welcome ======\nA wiki behind sessiongate.\n",
        )
        .expect("write the start page");
        let local = format!(
            "<?php\n\
             $conf['title'] = 'sessiongate test wiki';\n\
             $conf['lang'] = 'en';\n\
             $conf['savedir'] = '{}';\n\
             $conf['useacl'] = 1;\n\
             $conf['authtype'] = 'authplain';\n\
             $conf['superuser'] = '@admin';\n\
             $conf['disableactions'] = 'register';\n\
             // Nothing leaves the machine: no update check, no reverse DNS.\n\
             $conf['updatecheck'] = 0;\n\
             $conf['dnslookups'] = 0;\n\
             $conf['fetchsize'] = 0;\n",
            data.display()
        );
        std::fs::write(conf.join("local.php"), local).expect("write local.php");
        std::fs::write(
            conf.join("acl.auth.php"),
            "# <?php exit()?>\n*\t@ALL\t1\n*\t@user\t8\n",
        )
        .expect("write acl.auth.php");
        let hash = Command::new(php)
            .args([
                "-r",
                "echo password_hash($argv[1], PASSWORD_DEFAULT);",
                PASSWORD,
            ])
            .output()
            .expect("run php");
        assert!(hash.status.success(), "password_hash: {hash:?}");
        std::fs::write(
            conf.join("users.auth.php"),
            format!(
                "# <?php exit()?>\n{USER}:{}:Alice Example:alice@example.org:user\n",
                String::from_utf8_lossy(&hash.stdout).trim()
            ),
        )
        .expect("write users.auth.php");
        std::fs::write(dir.join("router.php"), RECORDING_ROUTER).expect("write router.php");
        Wiki { dir }
    }

    /// `php -S` on a free port; network functions disabled, so that DokuWiki
    /// cannot reach out even if a setting were missed.
    fn serve(&self, php: &Path) -> Process {
        // The port is free when asked for, and almost always still free when
        // php binds it; if not, php exits at once and another port is tried.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let started = Process::try_start(
                "php",
                Command::new(php)
                    .args([
                        "-d",
                        "disable_functions=fsockopen,pfsockopen,stream_socket_client,\
                         gethostbyaddr,curl_init,mail",
                        "-S",
                        &format!("127.0.0.1:{port}"),
                        "-t",
                    ])
                    .arg(self.dir.join("dokuwiki"))
                    .arg(self.dir.join("router.php"))
                    .current_dir(&self.dir),
                "Development Server (http://",
            );
            match started {
                Ok(php) => return php,
                Err(e) if attempts < 3 => eprintln!("{e}; trying another port"),
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn requests_log(&self) -> PathBuf {
        self.dir.join("requests.jsonl")
    }

    /// What the recording router wrote.
    fn requests(&self) -> anyhow::Result<Vec<Value>> {
        let log = std::fs::read_to_string(self.requests_log()).context("requests.jsonl")?;
        log.lines()
            .map(|line| serde_json::from_str(line).with_context(|| format!("a record: {line}")))
            .collect()
    }
}

/// Copies `from` to `to`, following symbolic links.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let path = entry?.path();
        let target = to.join(path.file_name().unwrap_or_default());
        if std::fs::metadata(&path)?.is_dir() {
            copy_tree(&path, &target)?;
        } else {
            std::fs::copy(&path, &target)?;
        }
    }
    Ok(())
}

/// Writes a config with one listener, a secret from `gen-secret` in the
/// environment and, for HTTPS, the certificate `gen-cert` wrote, and starts the
/// binary; its `address` is the listener's.
fn start_sessiongate(
    work: &Path,
    app: &str,
    listener: Listener,
    preserve_host: PreserveHost,
) -> Process {
    let listeners = match listener {
        Listener::Http => "listen: 127.0.0.1:0\n".to_owned(),
        Listener::Https => {
            let certs = work.join("certs");
            format!(
                "listen: null\ntls:\n  listen: 127.0.0.1:0\n  cert: {:?}\n  key: {:?}\n",
                certs.join("dev-cert.pem"),
                certs.join("dev-key.pem"),
            )
        }
    };
    let yaml = format!(
        "{listeners}\
         upstream:\n  url: http://{app}\n  preserve_host: {}\n\
         session:\n  secrets: [\"${{SESSIONGATE_SECRET}}\"]\n\
         admin:\n  listen: null\n\
         log:\n  level: info\n  access: true\n",
        preserve_host.0
    );
    let config = work.join("config.yaml");
    std::fs::write(&config, yaml).expect("write config.yaml");
    Process::start(
        "sessiongate",
        Command::new(SESSIONGATE)
            .arg("--config")
            .arg(&config)
            .env("SESSIONGATE_SECRET", webdriver::gen_secret(SESSIONGATE))
            .env_remove("RUST_LOG"),
        match listener {
            Listener::Http => "listening on http://",
            Listener::Https => "listening on https://",
        },
    )
}

/// A 16×16 RGB PNG of its own (stored, uncompressed deflate), so the bytes
/// fetched back can only be the ones uploaded.
fn png() -> Vec<u8> {
    const SIDE: u32 = 16;
    let mut raw = Vec::new();
    for y in 0..SIDE {
        raw.push(0); // filter: none
        for x in 0..SIDE {
            raw.extend_from_slice(&[(x * 16) as u8, (y * 16) as u8, 0x5a]);
        }
    }
    let mut zlib = vec![0x78, 0x01, 0x01];
    let len = raw.len() as u16;
    zlib.extend_from_slice(&len.to_le_bytes());
    zlib.extend_from_slice(&(!len).to_le_bytes());
    zlib.extend_from_slice(&raw);
    let (mut a, mut b) = (1u32, 0u32);
    for byte in &raw {
        a = (a + u32::from(*byte)) % 65521;
        b = (b + a) % 65521;
    }
    zlib.extend_from_slice(&((b << 16) | a).to_be_bytes());

    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8; 4], data: &[u8]| {
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(kind);
        crc.update(data);
        png.extend_from_slice(kind);
        png.extend_from_slice(data);
        png.extend_from_slice(&crc.finalize().to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&SIDE.to_be_bytes());
    ihdr.extend_from_slice(&SIDE.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &zlib);
    chunk(b"IEND", &[]);
    png
}
