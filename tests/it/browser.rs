//! Browsers (docs/api.md, "Browser pages"): the sign-in page, the two session cookies on the proxy path, the
//! redirect of navigations (never of API calls), the renewal of an expired access cookie on
//! the request itself with theft detection, cross-site write refusal, sign-out, and the
//! gateway's cookies never reaching the upstream. Against the real binary and echo upstream.

use std::time::Duration;

use crate::harness::*;

const PREFIX: &str = "__Host-portcullis";
const PASSWORD: &str = "password-123";

/// A gateway with `[browser]` on; `tokens` is the `[tokens]` table body.
async fn browser_gateway(tokens: &str) -> (Echo, Gateway) {
    let echo = Echo::start().await;
    let mut opts = Options::new(echo.addr);
    opts.tokens = tokens.into();
    opts.extra =
        "\n[browser]\nenabled = true\nallowed_redirect_hosts = [\"app.example.com\"]\n".into();
    let gw = Gateway::start(opts).await;
    (echo, gw)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The `name=value` of each `Set-Cookie`, by cookie name, and the raw headers.
fn set_cookies(r: &reqwest::Response) -> Vec<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

/// The value a `Set-Cookie` list gives cookie `name`.
fn cookie_value(set: &[String], name: &str) -> Option<String> {
    set.iter().find_map(|c| {
        let first = c.split(';').next()?;
        let (n, v) = first.split_once('=')?;
        (n == name).then(|| v.to_string())
    })
}

/// A `Cookie` header carrying both session cookies from `set` (and `more`).
fn cookie_header(set: &[String], more: &str) -> String {
    let at = cookie_value(set, &format!("{PREFIX}-at")).unwrap();
    let rt = cookie_value(set, &format!("{PREFIX}-rt")).unwrap();
    format!("{more}{PREFIX}-at={at}; {PREFIX}-rt={rt}")
}

/// Signs in through the page; the `Set-Cookie` values of the answer.
async fn sign_in(gw: &Gateway, email: &str, rd: &str) -> Vec<String> {
    let r = client()
        .post(gw.url("/auth/ui/login"))
        .form(&[("email", email), ("password", PASSWORD), ("rd", rd)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "{:?}", r.text().await);
    set_cookies(&r)
}

#[tokio::test]
async fn a_navigation_without_a_session_goes_to_sign_in_and_an_api_call_gets_401() {
    let (echo, gw) = browser_gateway("").await;
    let c = client();
    for (what, headers) in [
        ("fetch metadata", vec![("sec-fetch-mode", "navigate")]),
        (
            "old browser",
            vec![("accept", "text/html,application/xhtml+xml,*/*;q=0.8")],
        ),
    ] {
        let mut req = c.get(gw.url("/api/reports?month=5"));
        for (k, v) in &headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 302, "{what}");
        assert_eq!(
            r.headers()["location"],
            "/auth/ui/login?rd=%2Fapi%2Freports%3Fmonta%3D5".replace("monta", "month"),
            "{what}"
        );
    }
    // fetch/XHR, a POST navigation and a request without any browser sign: the §4.2 401.
    for (method, headers) in [
        (
            "GET",
            vec![("sec-fetch-mode", "cors"), ("accept", "text/html")],
        ),
        ("POST", vec![("sec-fetch-mode", "navigate")]),
        ("GET", vec![("accept", "application/json")]),
    ] {
        let mut req = c.request(method.parse().unwrap(), gw.url("/api/x"));
        for (k, v) in &headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{method} {headers:?}");
        assert_eq!(
            r.headers()["www-authenticate"],
            "Bearer realm=\"portcullis\""
        );
    }
    assert_eq!(echo.count(), 0, "a refused request reached the upstream");
}

#[tokio::test]
async fn the_sign_in_page_sets_both_cookies_and_they_open_protected_routes() {
    let (echo, gw) = browser_gateway("").await;
    gw.register("page@x.io", PASSWORD).await;
    let page = client()
        .get(gw.url("/auth/ui/login?rd=/api/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("<label for=\"email\">") && html.contains("name=\"password\""));
    assert!(html.contains("value=\"/api/x\""), "rd kept in the form");
    assert!(!html.contains("<script"), "no script on the page");

    let set = sign_in(&gw, "page@x.io", "/api/x").await;
    assert_eq!(set.len(), 2, "{set:?}");
    for c in &set {
        assert!(c.starts_with(&format!("{PREFIX}-")), "{c}");
        for attr in ["Path=/", "Secure", "HttpOnly", "SameSite=Lax", "Max-Age="] {
            assert!(c.contains(attr), "{c} lacks {attr}");
        }
        assert!(!c.to_ascii_lowercase().contains("domain="), "{c}");
    }
    // The access cookie counts as a bearer token; other cookies go upstream, ours never do.
    let r = client()
        .get(gw.url("/api/x"))
        .header("cookie", cookie_header(&set, "theme=dark; "))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = echo.last();
    assert_eq!(seen.header("x-auth-email"), vec!["page@x.io"]);
    assert_eq!(seen.header("cookie"), vec!["theme=dark"]);
    // Only ours: the header is dropped.
    let r = client()
        .get(gw.url("/public/x"))
        .header("cookie", cookie_header(&set, ""))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(echo.last().header("cookie").is_empty());
    // An Authorization header wins over the cookie.
    let r = client()
        .get(gw.url("/api/x"))
        .header("cookie", cookie_header(&set, ""))
        .header("authorization", "Bearer not.a.jwt")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn a_wrong_password_shows_the_form_again_and_rd_never_leaves_the_site() {
    let (_echo, gw) = browser_gateway("").await;
    gw.register("rd@x.io", PASSWORD).await;
    for (email, password) in [("rd@x.io", "wrong-password"), ("nobody@x.io", PASSWORD)] {
        let r = client()
            .post(gw.url("/auth/ui/login"))
            .form(&[("email", email), ("password", password), ("rd", "/api/x")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.headers().get("set-cookie").is_none());
        let html = r.text().await.unwrap();
        assert!(html.contains("Wrong email or password."), "{html}");
        assert!(html.contains("aria-invalid=\"true\""));
    }
    for (rd, expected) in [
        ("https://evil.example/", "/"),
        ("//evil.example/x", "/"),
        ("javascript:alert(1)", "/"),
        (
            "https://app.example.com/home",
            "https://app.example.com/home",
        ),
        ("/api/x?a=1", "/api/x?a=1"),
    ] {
        let r = client()
            .post(gw.url("/auth/ui/login"))
            .form(&[("email", "rd@x.io"), ("password", PASSWORD), ("rd", rd)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303, "{rd}");
        assert_eq!(r.headers()["location"], expected, "{rd}");
    }
    // A form posted from another site is refused before any password check.
    let r = client()
        .post(gw.url("/auth/ui/login"))
        .header("origin", "https://evil.example")
        .form(&[("email", "rd@x.io"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("set-cookie").is_none());
}

#[tokio::test]
async fn an_expired_access_cookie_is_renewed_on_the_request_and_concurrent_renewals_all_succeed() {
    let (echo, gw) =
        browser_gateway("access_ttl_secs = 1\nleeway_secs = 0\nrefresh_reuse_grace_secs = 10\n")
            .await;
    gw.register("renew@x.io", PASSWORD).await;
    let set = sign_in(&gw, "renew@x.io", "/").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // Five requests at once with the expired access cookie and the same refresh cookie.
    let header = cookie_header(&set, "");
    let mut tasks = Vec::new();
    for i in 0..5 {
        let url = gw.url(&format!("/api/renew/{i}"));
        let header = header.clone();
        tasks.push(tokio::spawn(async move {
            client()
                .get(url)
                .header("cookie", header)
                .send()
                .await
                .unwrap()
        }));
    }
    let mut renewed = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status(), 200, "a concurrent renewal failed");
        let s = set_cookies(&r);
        assert_eq!(s.len(), 2, "{s:?}");
        renewed.push(cookie_value(&s, &format!("{PREFIX}-rt")).unwrap());
    }
    renewed.dedup();
    assert_eq!(
        renewed.len(),
        1,
        "one successor refresh token, whoever asked"
    );
    assert!(echo.count() >= 5);
    assert_eq!(echo.last().header("x-auth-email"), vec!["renew@x.io"]);
}

#[tokio::test]
async fn a_stolen_refresh_cookie_used_twice_revokes_the_session_for_both_browsers() {
    let (_echo, gw) =
        browser_gateway("access_ttl_secs = 1\nleeway_secs = 0\nrefresh_reuse_grace_secs = 0\n")
            .await;
    gw.register("theft@x.io", PASSWORD).await;
    let set = sign_in(&gw, "theft@x.io", "/").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // The victim's browser renews first…
    let r = client()
        .get(gw.url("/api/x"))
        .header("cookie", cookie_header(&set, ""))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let victim = set_cookies(&r);
    // …then the thief presents the same (now spent) refresh cookie: reuse, the family goes.
    let r = client()
        .get(gw.url("/api/x"))
        .header("cookie", cookie_header(&set, ""))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let cleared = set_cookies(&r);
    assert!(
        cleared.iter().all(|c| c.contains("Max-Age=0")) && cleared.len() == 2,
        "{cleared:?}"
    );
    // The victim's fresh cookies stop working too (navigations go to sign in).
    let r = client()
        .get(gw.url("/api/x"))
        .header("cookie", cookie_header(&victim, ""))
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/auth/ui/login")
    );
}

#[tokio::test]
async fn cookie_authenticated_writes_from_another_site_are_refused() {
    let (echo, gw) = browser_gateway("").await;
    gw.register("csrf@x.io", PASSWORD).await;
    let set = sign_in(&gw, "csrf@x.io", "/").await;
    let own = format!("http://127.0.0.1:{}", gw.port);
    let post = |headers: Vec<(&'static str, String)>| {
        let mut req = client()
            .post(gw.url("/api/transfer"))
            .header("cookie", cookie_header(&set, ""))
            .body("amount=1");
        for (k, v) in headers {
            req = req.header(k, v);
        }
        req.send()
    };
    let before = echo.count();
    for headers in [
        vec![("sec-fetch-site", "cross-site".to_string())],
        vec![("sec-fetch-site", "same-site".to_string())],
        vec![("origin", "https://evil.example".to_string())],
        vec![("origin", "null".to_string())],
    ] {
        let r = post(headers.clone()).await.unwrap();
        assert_eq!(r.status(), 403, "{headers:?}");
    }
    assert_eq!(
        echo.count(),
        before,
        "a cross-site write reached the upstream"
    );
    for headers in [
        vec![],
        vec![
            ("origin", own.clone()),
            ("sec-fetch-site", "same-origin".to_string()),
        ],
    ] {
        let r = post(headers.clone()).await.unwrap();
        assert_eq!(r.status(), 200, "{headers:?}");
    }
    // A bearer token is not a cookie: no forgery check applies.
    let pair = gw.login("csrf@x.io", PASSWORD).await;
    let r = client()
        .post(gw.url("/api/transfer"))
        .bearer_auth(pair["access_token"].as_str().unwrap())
        .header("origin", "https://elsewhere.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn sign_out_revokes_the_session_and_clears_the_cookies() {
    let (_echo, gw) = browser_gateway("").await;
    gw.register("out@x.io", PASSWORD).await;
    let set = sign_in(&gw, "out@x.io", "/").await;
    let r = client()
        .post(gw.url("/auth/ui/logout"))
        .header("cookie", cookie_header(&set, ""))
        .form(&[("x", "")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/auth/ui/login");
    let cleared = set_cookies(&r);
    assert_eq!(cleared.len(), 2);
    assert!(cleared.iter().all(|c| c.contains("Max-Age=0")));
    // The old access cookie is revoked at once.
    let r = client()
        .get(gw.url("/api/x"))
        .header("cookie", cookie_header(&set, ""))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // GET never signs out.
    let r = client()
        .get(gw.url("/auth/ui/logout"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
}

#[tokio::test]
async fn a_tampered_or_oversized_cookie_is_no_credential_and_a_role_refusal_is_a_page() {
    let (echo, gw) = browser_gateway("").await;
    gw.register("role@x.io", PASSWORD).await;
    let set = sign_in(&gw, "role@x.io", "/").await;
    let at = cookie_value(&set, &format!("{PREFIX}-at")).unwrap();
    let tampered = format!("{PREFIX}-at={}x", &at[..at.len() - 1]);
    let r = client()
        .get(gw.url("/api/x"))
        .header("cookie", &tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .get(gw.url("/api/x"))
        .header("cookie", &tampered)
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let cleared = set_cookies(&r);
    assert!(
        cleared
            .iter()
            .any(|c| c.starts_with(&format!("{PREFIX}-at=;"))),
        "{cleared:?}"
    );
    let big = format!("{PREFIX}-at={}", "a".repeat(5000));
    let r = client()
        .get(gw.url("/api/x"))
        .header("cookie", big)
        .send()
        .await
        .unwrap();
    assert!(matches!(r.status().as_u16(), 401 | 431), "{}", r.status());
    // Signed in as a user, opening the admin area: a page naming the account.
    let r = client()
        .get(gw.url("/api/admin/x"))
        .header("cookie", cookie_header(&set, ""))
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = r.text().await.unwrap();
    assert!(
        html.contains("role@x.io") && html.contains("/auth/ui/logout"),
        "{html}"
    );
    assert_eq!(echo.count(), 0);
}

#[tokio::test]
async fn the_pages_do_not_exist_while_browser_is_off() {
    let echo = Echo::start().await;
    let gw = Gateway::start(Options::new(echo.addr)).await;
    let r = client().get(gw.url("/auth/ui/login")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = client()
        .get(gw.url("/api/x"))
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "no redirect without [browser]");
}

// ---------------------------------------------------------------------------------------------
// Forward-auth (a proxy in front asks)
// ---------------------------------------------------------------------------------------------

/// Asks `endpoint` about `method uri` the way nginx/Caddy/Traefik do.
async fn ask(
    gw: &Gateway,
    endpoint: &str,
    method: &str,
    uri: &str,
    extra: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = client()
        .get(gw.url(endpoint))
        .header("x-forwarded-method", method)
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "app.example.com")
        .header("x-forwarded-uri", uri);
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn forward_auth_decides_with_the_route_table_and_answers_only_200_401_or_403() {
    let (echo, gw) = browser_gateway("").await;
    let user = gw.user("fa@x.io").await;
    let bearer = format!("Bearer {}", user["access_token"].as_str().unwrap());
    let auth = [("authorization", bearer.as_str())];
    // Allowed: 200 with the identity headers the upstream would get.
    let r = ask(&gw, "/auth/verify", "GET", "/api/orders?x=1", &auth).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-auth-email"], "fa@x.io");
    assert_eq!(r.headers()["x-auth-role"], "user");
    // Public route, no token: 200 without identity.
    let r = ask(&gw, "/auth/verify", "GET", "/public/x", &[]).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-auth-user-id").is_none());
    // No token: 401 with the challenge, never a redirect from /auth/verify.
    let nav = [("sec-fetch-mode", "navigate")];
    let r = ask(&gw, "/auth/verify", "GET", "/api/x", &nav).await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer realm=\"portcullis\""
    );
    // Wrong role, no route, a refused path: 403.
    for uri in ["/api/admin/x", "/nowhere", "/api/%2e%2e/%2e%2e/etc"] {
        let r = ask(&gw, "/auth/verify", "GET", uri, &auth).await;
        assert_eq!(r.status(), 403, "{uri}");
    }
    // Envoy's form: the original path after /auth/verify, the method as sent.
    let r = client()
        .post(gw.url("/auth/verify/api/orders"))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-auth-email"], "fa@x.io");
    // /auth/forward-auth sends a navigation to sign in, back to the original absolute URL.
    let r = ask(&gw, "/auth/forward-auth", "GET", "/api/x?y=2", &nav).await;
    assert_eq!(r.status(), 302);
    assert_eq!(
        r.headers()["location"],
        "/auth/ui/login?rd=https%3A%2F%2Fapp.example.com%2Fapi%2Fx%3Fy%3D2"
    );
    let r = ask(&gw, "/auth/forward-auth", "POST", "/api/x", &[]).await;
    assert_eq!(r.status(), 401, "an API call is never redirected");
    // The session cookie counts as on the proxy path.
    gw.register("facookie@x.io", PASSWORD).await;
    let set = sign_in(&gw, "facookie@x.io", "/").await;
    let cookie = cookie_header(&set, "");
    let r = ask(
        &gw,
        "/auth/forward-auth",
        "GET",
        "/api/x",
        &[("cookie", &cookie)],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-auth-email"], "facookie@x.io");
    assert_eq!(echo.count(), 0, "forward-auth never proxies");
}

#[tokio::test]
async fn forward_auth_refuses_a_peer_that_is_not_a_trusted_proxy() {
    let echo = Echo::start().await;
    let mut opts = Options::new(echo.addr);
    opts.extra = "\n[forward_auth]\ntrusted_proxies = [\"10.0.0.0/8\"]\n".into();
    let gw = Gateway::start(opts).await;
    let r = ask(&gw, "/auth/verify", "GET", "/public/x", &[]).await;
    assert_eq!(r.status(), 403);
    let r = ask(&gw, "/auth/forward-auth", "GET", "/public/x", &[]).await;
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn the_sign_up_page_registers_and_signs_in_with_the_rules_of_register() {
    let echo = Echo::start().await;
    let mut opts = Options::new(echo.addr);
    opts.extra = "\n[browser]\nenabled = true\nregistration = true\n".into();
    let gw = Gateway::start(opts).await;
    let page = client()
        .get(gw.url("/auth/ui/register?rd=/api/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("Create account"));
    // Too short a password: the form again, nothing created.
    let r = client()
        .post(gw.url("/auth/ui/register"))
        .form(&[
            ("email", "new@x.io"),
            ("password", "short"),
            ("rd", "/api/x"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = client()
        .post(gw.url("/auth/ui/register"))
        .form(&[
            ("email", "new@x.io"),
            ("password", PASSWORD),
            ("rd", "/api/x"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/api/x");
    let set = set_cookies(&r);
    let r = client()
        .get(gw.url("/api/x"))
        .header("cookie", cookie_header(&set, ""))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(echo.last().header("x-auth-email"), vec!["new@x.io"]);
    // The same email again: 409, the form again.
    let r = client()
        .post(gw.url("/auth/ui/register"))
        .form(&[("email", "NEW@x.io"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    // Without registration = true the page does not exist.
    let (_e, plain) = browser_gateway("").await;
    let r = client()
        .get(plain.url("/auth/ui/register"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
