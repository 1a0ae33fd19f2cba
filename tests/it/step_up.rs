//! How a session authenticated, in every access token (`acr`, `amr`, `auth_time`; kept by a
//! refresh), and the routes that ask for more (RFC 9470): `mfa = true` refuses an `aal1`
//! session, `max_auth_age_secs` a sign-in that is too old — with the step-up challenge for an
//! API client and the sign-in page for a browser navigation; nothing reaches the upstream.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::harness::*;

const PASSWORD: &str = "password-123";

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

const STEP_UP_ROUTES: &str = r#"
[[route]]
prefix = "/admin-area/"
upstream = "api"
mfa = true

[[route]]
prefix = "/fresh/"
upstream = "api"
max_auth_age_secs = 2

[[route]]
prefix = "/both/"
upstream = "api"
mfa = true
max_auth_age_secs = 60

[browser]
enabled = true
"#;

async fn gateway() -> (Echo, Gateway) {
    let echo = Echo::start().await;
    let mut opts = Options::new(echo.addr);
    opts.extra = STEP_UP_ROUTES.into();
    let gw = Gateway::start(opts).await;
    (echo, gw)
}

#[tokio::test]
async fn tokens_say_how_the_session_authenticated_and_a_refresh_keeps_it() {
    let (_echo, gw) = gateway().await;
    let before = chrono::Utc::now().timestamp();
    let pair = gw.user("claims@x.io").await;
    let claims = claims_of(pair["access_token"].as_str().unwrap());
    assert_eq!(claims["acr"], "aal1");
    assert_eq!(claims["amr"], json!(["pwd"]));
    let auth_time = claims["auth_time"].as_i64().unwrap();
    assert!(
        (before - 1..=chrono::Utc::now().timestamp()).contains(&auth_time),
        "{claims}"
    );
    // A refresh later is not a new authentication: the same auth_time.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let refreshed: Value = gw.refresh(&pair).await.json().await.unwrap();
    let again = claims_of(refreshed["access_token"].as_str().unwrap());
    assert_eq!(again["auth_time"], claims["auth_time"]);
    assert_eq!(again["acr"], "aal1");
    assert_eq!(again["amr"], json!(["pwd"]));
    assert!(again["iat"].as_i64() > claims["iat"].as_i64());
}

#[tokio::test]
async fn an_mfa_route_answers_the_step_up_challenge_to_a_password_session() {
    let (echo, gw) = gateway().await;
    let pair = gw.user("stepup@x.io").await;
    let token = pair["access_token"].as_str().unwrap();
    let r = gw.get("/admin-area/x", Some(token)).await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer error=\"insufficient_user_authentication\", error_description=\"A second factor \
         is required\", acr_values=\"aal2\""
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "insufficient_user_authentication");
    let r = gw.get("/both/x", Some(token)).await;
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.contains("acr_values=\"aal2\"") && challenge.ends_with(", max_age=60"),
        "{challenge}"
    );
    // The same token on an ordinary route: through.
    assert_eq!(gw.get("/api/x", Some(token)).await.status(), 200);
    assert_eq!(
        echo.count(),
        1,
        "only the ordinary route reached the upstream"
    );
    let metrics = gw.metrics().await;
    let denied = metrics
        .iter()
        .find(|(k, _)| k.contains("insufficient_user_authentication"))
        .map(|(_, v)| *v);
    assert_eq!(denied, Some(2.0), "{metrics:?}");
}

#[tokio::test]
async fn a_route_with_max_auth_age_needs_a_recent_sign_in_not_a_refresh() {
    let (echo, gw) = gateway().await;
    let pair = gw.user("fresh@x.io").await;
    let token = pair["access_token"].as_str().unwrap();
    assert_eq!(gw.get("/fresh/x", Some(token)).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let r = gw.get("/fresh/x", Some(token)).await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer error=\"insufficient_user_authentication\", error_description=\"A more recent \
         sign-in is required\", max_age=2"
    );
    // A refreshed token carries the old auth_time: still refused.
    let refreshed: Value = gw.refresh(&pair).await.json().await.unwrap();
    let r = gw.get("/fresh/x", refreshed["access_token"].as_str()).await;
    assert_eq!(r.status(), 401);
    // Signing in again: through.
    let again = gw.login("fresh@x.io", PASSWORD).await;
    let r = gw.get("/fresh/x", again["access_token"].as_str()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(echo.count(), 2);
}

#[tokio::test]
async fn a_browser_navigation_is_sent_to_sign_in_and_explain_names_the_rule() {
    let (echo, gw) = gateway().await;
    gw.register("nav@x.io", PASSWORD).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let signed_in = client
        .post(gw.url("/auth/ui/login"))
        .form(&[("email", "nav@x.io"), ("password", PASSWORD), ("rd", "/")])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303);
    let cookies: Vec<String> = signed_in
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
        .collect();
    let r = client
        .get(gw.url("/admin-area/page"))
        .header("cookie", cookies.join("; "))
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let location = r.headers()["location"].to_str().unwrap();
    assert!(
        location.starts_with("/auth/ui/login?rd=%2Fadmin-area%2Fpage"),
        "{location}"
    );
    assert_eq!(echo.count(), 0);

    let out = gw.cli(
        &[
            "routes",
            "explain",
            "GET",
            "/admin-area/x",
            "--role",
            "user",
        ],
        "",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("401 insufficient_user_authentication")
            && text.contains("a second factor (acr aal2)"),
        "{text}"
    );
}

#[test]
fn step_up_rules_need_a_required_route_and_a_positive_age() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    for (route, key) in [
        ("auth = \"none\"\nmfa = true", "mfa"),
        (
            "auth = \"optional\"\nmax_auth_age_secs = 5",
            "max_auth_age_secs",
        ),
        ("max_auth_age_secs = 0", "max_auth_age_secs"),
    ] {
        std::fs::write(
            &config,
            format!(
                "[[upstream]]\nname = \"api\"\naddrs = [\"127.0.0.1:9\"]\n\n[[route]]\nprefix = \
                 \"/x/\"\nupstream = \"api\"\n{route}\n"
            ),
        )
        .unwrap();
        let out = run_cli(&config, &["check-config"], "", &[]);
        assert_eq!(out.status.code(), Some(1), "{route}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("route[0].{key}")), "{route}: {err}");
    }
}
