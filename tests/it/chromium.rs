//! The sign-in flow in a real browser: headless Chromium driven through chromedriver's
//! WebDriver API (plain HTTP, no client crate). Opening a protected page leads to the sign-in
//! page and back after signing in; signing out sends the person back; a session revoked
//! elsewhere is bounced within a second. Needs Debian's `chromium` and `chromium-driver`
//! (installed by .ci/run); a missing browser fails the test, it never skips.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::*;

/// A chromedriver process and one browser session in it.
struct Chromium {
    driver: Child,
    base: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Chromium {
    async fn start() -> Chromium {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (apt-get install chromium chromium-driver)");
        let http = reqwest::Client::new();
        let status = format!("http://127.0.0.1:{port}/status");
        let ready = eventually(Duration::from_secs(20), || async {
            http.get(&status).send().await.is_ok()
        })
        .await;
        assert!(ready.is_some(), "chromedriver did not start");
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        }}});
        let created: Value = http
            .post(format!("http://127.0.0.1:{port}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {created}"));
        Chromium {
            driver,
            base: format!("http://127.0.0.1:{port}/session/{id}"),
            http,
            _profile: profile,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        v["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    async fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    async fn source(&self) -> String {
        self.call(reqwest::Method::GET, "/source", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    async fn element(&self, css: &str) -> String {
        let v = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let el = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{el}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let el = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{el}/click"),
            Some(json!({})),
        )
        .await;
    }

    /// Waits until the page's URL satisfies `want`.
    async fn wait_url(&self, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let url = self.url().await;
            if want(&url) || Instant::now() > deadline {
                return url;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The page source once it holds `text` (a form post's answer replaces the page a moment
    /// after the click), or as it is after 10 s.
    async fn wait_source(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let source = self.source().await;
            if source.contains(text) || Instant::now() > deadline {
                return source;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_in_lands_on_the_page_signs_out_and_a_revoked_session_is_bounced() {
    let echo = Echo::start().await;
    let mut opts = Options::new(echo.addr);
    opts.extra = "\n[browser]\nenabled = true\ntitle = \"Sign in to the test app\"\n".into();
    let gw = Gateway::start(opts).await;
    gw.register("chromium@x.io", "password-123").await;
    // localhost: Chromium keeps Secure cookies over plain http there only.
    let site = format!("http://localhost:{}", gw.port);
    let browser = Chromium::start().await;

    // A protected page without a session: the sign-in page, remembering where we were going.
    browser.open(&format!("{site}/api/dashboard")).await;
    let url = browser.wait_url(|u| u.contains("/auth/ui/login")).await;
    assert!(
        url.contains("/auth/ui/login?rd=%2Fapi%2Fdashboard"),
        "{url}"
    );
    assert!(browser.source().await.contains("Sign in to the test app"));

    // A wrong password: the form again, with the generic message.
    browser.type_into("#email", "chromium@x.io").await;
    browser.type_into("#password", "not-the-password").await;
    browser.click("button[type=submit]").await;
    let source = browser.wait_source("Wrong email or password.").await;
    assert!(source.contains("Wrong email or password."), "{source}");

    // The right one: back on the page, which the upstream served with the identity.
    browser.type_into("#password", "password-123").await;
    browser.click("button[type=submit]").await;
    let url = browser.wait_url(|u| u.ends_with("/api/dashboard")).await;
    assert!(url.ends_with("/api/dashboard"), "{url}");
    assert!(browser.source().await.contains("/api/dashboard"));
    assert_eq!(echo.last().header("x-auth-email"), vec!["chromium@x.io"]);
    assert!(
        echo.last().header("cookie").is_empty(),
        "our cookies reached the upstream"
    );

    // The admin area: a page saying who is signed in, with a sign-out button that works.
    browser.open(&format!("{site}/api/admin/users")).await;
    let source = browser.source().await;
    assert!(
        source.contains("chromium@x.io") && source.contains("Sign out"),
        "{source}"
    );
    browser.click("button[type=submit]").await;
    let url = browser.wait_url(|u| u.contains("/auth/ui/login")).await;
    assert!(url.contains("/auth/ui/login"), "{url}");
    browser.open(&format!("{site}/api/dashboard")).await;
    let url = browser.wait_url(|u| u.contains("/auth/ui/login")).await;
    assert!(
        url.contains("/auth/ui/login"),
        "signed out, yet the page opened: {url}"
    );

    // Signed in again, then every session revoked from elsewhere: bounced within a second.
    browser.type_into("#email", "chromium@x.io").await;
    browser.type_into("#password", "password-123").await;
    browser.click("button[type=submit]").await;
    let url = browser.wait_url(|u| u.ends_with("/api/dashboard")).await;
    assert!(url.ends_with("/api/dashboard"), "{url}");
    let api = gw.login("chromium@x.io", "password-123").await;
    let r = gw
        .http
        .post(gw.url("/auth/logout-all"))
        .bearer_auth(api["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    browser.open(&format!("{site}/api/dashboard")).await;
    let url = browser.wait_url(|u| u.contains("/auth/ui/login")).await;
    assert!(
        url.contains("/auth/ui/login"),
        "a revoked session still opened the page: {url}"
    );
}
