//! The proxy path (docs/api.md, "The proxy path"): default deny, bearer checks, identity headers,
//! path normalization, framing, revocation across instances, database outages, upstream
//! failures, live reload, metrics and health checks. Every rejection also checks that the
//! upstream never saw the request.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::harness::*;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const REALM: &str = "Bearer realm=\"portcullis\"";
const INVALID_TOKEN: &str = "Bearer error=\"invalid_token\"";
const INSUFFICIENT_SCOPE: &str = "Bearer error=\"insufficient_scope\"";

fn access(pair: &Value) -> &str {
    pair["access_token"].as_str().expect("access_token")
}

fn refresh(pair: &Value) -> &str {
    pair["refresh_token"].as_str().expect("refresh_token")
}

/// The JSON of one part (0 header, 1 claims) of a JWT.
fn jwt_part(token: &str, n: usize) -> Value {
    let part = token.split('.').nth(n).expect("JWT part");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

/// A status, headers and body, from reqwest or from a raw exchange.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    async fn from(r: reqwest::Response) -> Reply {
        let status = r.status().as_u16();
        let headers = r
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
            .collect();
        Reply {
            status,
            headers,
            body: r.text().await.unwrap(),
        }
    }

    /// Parses a raw HTTP/1.1 response as returned by `raw_request`.
    fn parse(raw: &str) -> Reply {
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP response, got {raw:?}"));
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Reply {
            status,
            headers,
            body: body.to_string(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `error` code of a JSON error body.
    fn error(&self) -> String {
        let v: Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {:?}", self.body));
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error body without a message: {}",
            self.body
        );
        v["error"].as_str().unwrap_or_default().to_string()
    }
}

/// Sends a raw `GET target` with `Host` and `Connection: close` plus `headers`.
async fn raw_get(port: u16, target: &[u8], headers: &[&str]) -> Reply {
    let mut req = b"GET ".to_vec();
    req.extend_from_slice(target);
    req.extend_from_slice(b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for h in headers {
        req.extend_from_slice(h.as_bytes());
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    Reply::parse(&raw_request(port, &req).await)
}

/// GET through the gateway, optionally with a bearer token.
async fn get(gw: &Gateway, path: &str, token: Option<&str>) -> Reply {
    Reply::from(gw.get(path, token).await).await
}

/// Asserts a rejection: status, error code, and that the upstream saw nothing new.
#[track_caller]
fn assert_rejected(r: &Reply, status: u16, code: &str, echo: &Echo, before: usize, what: &str) {
    assert_eq!(r.status, status, "{what}: {r:?}");
    assert_eq!(r.error(), code, "{what}: {r:?}");
    assert_eq!(
        echo.count(),
        before,
        "{what}: the request reached the upstream"
    );
}

/// Scrapes until `ready` holds or 5 s pass: request counters are written in the logging phase,
/// just after the response went out.
async fn metrics_when(
    gw: &Gateway,
    ready: impl Fn(&HashMap<String, f64>) -> bool,
) -> HashMap<String, f64> {
    let mut m = gw.metrics().await;
    for _ in 0..250 {
        if ready(&m) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        m = gw.metrics().await;
    }
    m
}

/// Metric value (0 when the series does not exist yet).
fn metric(m: &HashMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------------
// Default deny, bearer checks, roles
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_path_that_matches_no_route_is_404_and_never_forwarded() {
    let echo = Echo::start().await;
    let gw = Gateway::start(Options::new(echo.addr)).await;
    let pair = gw.user("deny@example.com").await;
    // (`/public`, `/PUBLIC/x` and `/Api/admin/x` match since §4.4 v2: see
    // `paths_backends_read_differently_never_reach_a_stricter_area`.)
    for path in ["/", "/other/x", "/publicx", "/apix", "/api-admin/x"] {
        for token in [None, Some(access(&pair))] {
            let r = get(&gw, path, token).await;
            assert_rejected(&r, 404, "not_found", &echo, 0, path);
            assert!(
                r.header("content-type")
                    .is_some_and(|c| c.starts_with("application/json")),
                "{path}: {r:?}"
            );
        }
    }
}

#[tokio::test]
async fn routes_honour_their_methods_their_host_without_port_and_strip_prefix() {
    let echo = Echo::start().await;
    let mut opts = Options::new(echo.addr);
    opts.extra = r#"
[[route]]
prefix = "/ro/"
upstream = "api"
auth = "none"
methods = ["GET"]

[[route]]
prefix = "/vhost/"
upstream = "api"
auth = "none"
host = "Api.Example.com"

[[route]]
prefix = "/svc/"
upstream = "api"
auth = "none"
strip_prefix = true
"#
    .into();
    let gw = Gateway::start(opts).await;
    assert_eq!(get(&gw, "/ro/x", None).await.status, 200);
    let r = Reply::from(gw.http.post(gw.url("/ro/x")).send().await.unwrap()).await;
    assert_rejected(&r, 404, "not_found", &echo, 1, "POST on a GET-only route");

    let r = raw_get(gw.port, b"/vhost/x", &[]).await;
    assert_rejected(&r, 404, "not_found", &echo, 1, "/vhost/ with another host");
    let req = b"GET /vhost/x HTTP/1.1\r\nHost: API.example.COM:8443\r\nConnection: close\r\n\r\n";
    let r = Reply::parse(&raw_request(gw.port, req).await);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(echo.last().path, "/vhost/x");

    assert_eq!(get(&gw, "/svc/a/b?q=1", None).await.status, 200);
    assert_eq!(echo.last().path, "/a/b?q=1");
    assert_eq!(get(&gw, "/svc/", None).await.status, 200);
    assert_eq!(echo.last().path, "/");
}

#[tokio::test]
async fn a_required_route_without_a_token_is_401_with_the_realm_challenge() {
    let echo = Echo::start().await;
    let gw = Gateway::start(Options::new(echo.addr)).await;
    for path in ["/api/x", "/api/admin/x"] {
        let r = get(&gw, path, None).await;
        assert_rejected(&r, 401, "unauthorized", &echo, 0, path);
        assert_eq!(r.header("www-authenticate"), Some(REALM), "{path}");
    }
    let r = Reply::from(
        gw.http
            .get(gw.url("/api/x"))
            .header("Authorization", "Basic dXNlcjpwYXNzd29yZA==")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_rejected(&r, 401, "unauthorized", &echo, 0, "Basic credentials");
    assert_eq!(r.header("www-authenticate"), Some(REALM));
}

#[tokio::test]
async fn garbage_tampered_unsigned_and_foreign_tokens_are_401_invalid_token() {
    let echo = Echo::start().await;
    let gw = Gateway::start(Options::new(echo.addr)).await;
    let pair = gw.user("tamper@example.com").await;
    let good = access(&pair).to_string();
    assert_eq!(get(&gw, "/api/x", Some(&good)).await.status, 200);

    let parts: Vec<&str> = good.split('.').collect();
    let mut sig: Vec<u8> = parts[2].bytes().collect();
    sig[10] = if sig[10] == b'A' { b'B' } else { b'A' };
    let tampered_signature = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        String::from_utf8(sig).unwrap()
    );

    let mut claims = jwt_part(&good, 1);
    claims["role"] = json!("admin");
    let tampered_claims = format!("{}.{}.{}", parts[0], b64(&claims), parts[2]);

    let mut unsigned = vec![];
    for alg in ["none", "None", "NONE"] {
        let mut header = jwt_part(&good, 0);
        header["alg"] = json!(alg);
        unsigned.push(format!("{}.{}.", b64(&header), parts[1]));
    }
    // Keys offered in the header, on tokens signed with the gateway's real key: the control,
    // the same header and claims without the offer and signed the same way, is accepted, so
    // the offer is the only thing wrong with the others.
    let signer = Signer::of(&gw);
    let mut resigned = jwt_part(&good, 1);
    resigned["jti"] = json!(uuid::Uuid::new_v4().to_string());
    let control = signer.sign(&signer.header(), &resigned);
    for path in ["/api/x", "/opt/x"] {
        assert_eq!(
            get(&gw, path, Some(&control)).await.status,
            200,
            "control on {path}"
        );
    }
    let before = echo.count();
    let jwks: Value = gw.get("/auth/jwks.json", None).await.json().await.unwrap();
    let mut offered_keys = Vec::new();
    for (what, field, offer) in embedded_key_offers(&jwks) {
        let mut header = signer.header();
        header[field] = offer;
        offered_keys.push((what, signer.sign(&header, &resigned)));
    }

    // A token signed by another gateway (its own keys directory), valid in every other way.
    let other_echo = Echo::start().await;
    let other = Gateway::start(Options::new(other_echo.addr)).await;
    let foreign_pair = other.user("foreign@example.com").await;
    let foreign = access(&foreign_pair).to_string();
    assert_eq!(get(&other, "/api/x", Some(&foreign)).await.status, 200);

    let mut cases: Vec<(&str, String)> = vec![
        ("garbage", "garbage".to_string()),
        ("three dots of garbage", "a.b.c".to_string()),
        ("tampered signature", tampered_signature),
        ("tampered claims", tampered_claims),
        ("signature stripped", format!("{}.{}.", parts[0], parts[1])),
        ("another gateway's key", foreign),
    ];
    cases.extend(offered_keys);
    for (n, t) in unsigned.into_iter().enumerate() {
        cases.push((["alg none", "alg None", "alg NONE"][n], t));
    }
    for (what, token) in &cases {
        for path in ["/api/x", "/api/admin/x", "/opt/x"] {
            let r = get(&gw, path, Some(token)).await;
            assert_rejected(
                &r,
                401,
                "invalid_token",
                &echo,
                before,
                &format!("{what} on {path}"),
            );
            assert_eq!(r.header("www-authenticate"), Some(INVALID_TOKEN), "{what}");
        }
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test]
async fn an_expired_token_is_401_invalid_token_even_when_its_verification_is_cached() {
    let echo = Echo::start().await;
    let mut opts = Options::new(echo.addr);
    // Access tokens live 900 s, so the verified-token cache keeps an entry for 901 s: far past
    // the short `exp` given below. Only the expiry check made on the cache hit can refuse it.
    opts.tokens = "leeway_secs = 1\n".into();
    let gw = Gateway::start(opts).await;
    let pair = gw.user("expiry@example.com").await;
    let signer = Signer::of(&gw);
    let now = unix_now() as i64;
    let mut claims = jwt_part(access(&pair), 1);
    claims["jti"] = json!(uuid::Uuid::new_v4().to_string());
    claims["iat"] = json!(now);
    claims["nbf"] = json!(now);
    claims["exp"] = json!(now + 2);
    let token = signer.sign(&signer.header(), &claims);
    // Accepted, and so cached.
    assert_eq!(get(&gw, "/api/x", Some(&token)).await.status, 200);
    let refused_from = (now + 2 + 1) as f64;
    tokio::time::sleep(Duration::from_secs_f64(
        (refused_from - unix_now()).max(0.0) + 0.2,
    ))
    .await;
    let before = echo.count();
    let r = get(&gw, "/api/x", Some(&token)).await;
    assert_rejected(&r, 401, "invalid_token", &echo, before, "expired token");
    assert_eq!(r.header("www-authenticate"), Some(INVALID_TOKEN));
}

#[tokio::test]
async fn a_user_on_an_admin_route_is_403_insufficient_scope_and_an_admin_passes() {
    let echo = Echo::start().await;
    let gw = Gateway::start(Options::new(echo.addr)).await;
    let user = gw.user("plain@example.com").await;
    let admin = gw.admin_user("boss@example.com").await;
    let r = get(&gw, "/api/admin/x", Some(access(&user))).await;
    assert_rejected(&r, 403, "forbidden", &echo, 0, "user on /api/admin/");
    assert_eq!(r.header("www-authenticate"), Some(INSUFFICIENT_SCOPE));

    let r = get(&gw, "/api/admin/x", Some(access(&admin))).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(echo.last().path, "/api/admin/x");
    assert_eq!(echo.last().header("x-auth-role"), vec!["admin"]);
    assert_eq!(get(&gw, "/api/x", Some(access(&user))).await.status, 200);
}

#[tokio::test]
async fn two_authorization_headers_are_400_and_never_forwarded() {
    let echo = Echo::start().await;
    let gw = Gateway::start(Options::new(echo.addr)).await;
    let pair = gw.user("twice@example.com").await;
    let token = access(&pair);
    for path in ["/api/x", "/opt/x", "/public/x"] {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.append("authorization", format!("Bearer {token}").parse().unwrap());
        headers.append("authorization", format!("Bearer {token}").parse().unwrap());
        let r = Reply::from(
            gw.http
                .get(gw.url(path))
                .headers(headers)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_rejected(&r, 400, "invalid_request", &echo, 0, path);
    }
}

#[tokio::test]
async fn the_bearer_scheme_is_matched_case_insensitively() {
    let echo = Echo::start().await;
    let gw = Gateway::start(Options::new(echo.addr)).await;
    let pair = gw.user("scheme@example.com").await;
    for scheme in ["bearer", "BEARER", "bEaReR"] {
        let r = Reply::from(
            gw.http
                .get(gw.url("/api/x"))
                .header("Authorization", format!("{scheme} {}", access(&pair)))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 200, "{scheme}: {r:?}");
        assert_eq!(
            echo.last().header("x-auth-user-id"),
            vec![pair["user"]["id"].as_str().unwrap()]
        );
    }
}

#[tokio::test]
async fn an_optional_route_forwards_anonymous_callers_without_identity_and_refuses_bad_tokens() {
    let echo = Echo::start().await;
    let gw = Gateway::start(Options::new(echo.addr)).await;
    let r = Reply::parse(
        &raw_request(
            gw.port,
            b"GET /opt/x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nX-Auth-User-Id: spoof\r\nX-Auth-Role: admin\r\n\r\n",
        )
        .await,
    );
    assert_eq!(r.status, 200, "{r:?}");
    let seen = echo.last();
    assert_eq!(seen.path, "/opt/x");
    assert!(
        !seen
            .headers
            .iter()
            .any(|(k, _)| k.to_ascii_lowercase().starts_with("x-auth-")),
        "anonymous request carried identity: {seen:?}"
    );

    let before = echo.count();
    let r = get(&gw, "/opt/x", Some("not-a-token")).await;
    assert_rejected(
        &r,
        401,
        "invalid_token",
        &echo,
        before,
        "bad token on /opt/",
    );
    assert_eq!(r.header("www-authenticate"), Some(INVALID_TOKEN));

    let pair = gw.user("optional@example.com").await;
    let r = get(&gw, "/opt/x", Some(access(&pair))).await;
    assert_eq!(r.status, 200);
    let seen = echo.last();
    assert_eq!(
        seen.header("x-auth-user-id"),
        vec![pair["user"]["id"].as_str().unwrap()]
    );
    assert_eq!(seen.header("x-auth-role"), vec!["user"]);
}

// ---------------------------------------------------------------------------------------------
// What the upstream receives
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_upstream_receives_the_callers_identity_and_never_client_sent_identity_headers() {
    let echo = Echo::start().await;
    let gw = Gateway::start(Options::new(echo.addr)).await;
    let pair = gw.user("Identity@Example.com").await;
    let token = access(&pair);
    let claims = jwt_part(token, 1);
    let spoofed = [
        "X-Auth-User-Id: 00000000-0000-0000-0000-000000000000",
        "x-auth-role: admin",
        "X_Auth_User_Id: spoofed-underscore",
        "x_auth_role: admin",
        "X-Auth-Email: root@example.com",
        "X-AUTH-SESSION-ID: spoofed",
        "X-Auth-Anything: spoofed",
        "X_Auth_Whatever: spoofed",
    ];
    let authz = format!("Authorization: Bearer {token}");

    let mut headers: Vec<&str> = spoofed.to_vec();
    headers.push(&authz);
    let r = raw_get(gw.port, b"/api/who", &headers).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = echo.last();
    assert_eq!(seen.path, "/api/who");
    assert_eq!(
        seen.header("x-auth-user-id"),
        vec![pair["user"]["id"].as_str().unwrap()]
    );
    assert_eq!(seen.header("x-auth-role"), vec!["user"]);
    assert_eq!(
        seen.header("x-auth-session-id"),
        vec![claims["sid"].as_str().unwrap()]
    );
    assert_eq!(seen.header("x-auth-email"), vec!["Identity@Example.com"]);
    let auth_headers: Vec<&String> = seen
        .headers
        .iter()
        .map(|(k, _)| k)
        .filter(|k| {
            let k = k.to_ascii_lowercase().replace('_', "-");
            k.starts_with("x-auth-")
        })
        .collect();
    assert_eq!(
        auth_headers.len(),
        4,
        "only our four identity headers: {seen:?}"
    );

    // Public route: every client-sent identity header is gone, none is added.
    let r = raw_get(gw.port, b"/public/who", &headers).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = echo.last();
    assert_eq!(seen.path, "/public/who");
    assert!(
        !seen.headers.iter().any(|(k, _)| k
            .to_ascii_lowercase()
            .replace('_', "-")
            .starts_with("x-auth-")),
        "identity header reached a public upstream: {seen:?}"
    );
}

#[tokio::test]
async fn configured_identity_header_names_are_stripped_from_clients_and_set_for_callers() {
    let echo = Echo::start().await;
    let mut opts = Options::new(echo.addr);
    opts.extra = "[identity_headers]\nuser_id = \"X-User\"\nrole = \"X-Role\"\n\
                  session_id = \"Gw-Session\"\nemail = \"X-Mail\"\n"
        .into();
    let gw = Gateway::start(opts).await;
    let pair = gw.user("custom@example.com").await;
    let authz = format!("Authorization: Bearer {}", access(&pair));
    let spoofed = [
        "X-User: spoofed",
        "x_user: spoofed",
        "X-ROLE: admin",
        "gw_session: spoofed",
        "X-Mail: root@example.com",
        "X-Auth-User-Id: spoofed",
    ];
    let r = raw_get(gw.port, b"/public/c", &spoofed).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = echo.last();
    for name in [
        "x-user",
        "x_user",
        "x-role",
        "gw_session",
        "gw-session",
        "x-mail",
        "x-auth-user-id",
    ] {
        assert!(
            seen.header(name).is_empty(),
            "{name} reached a public upstream: {seen:?}"
        );
    }
    let mut headers = spoofed.to_vec();
    headers.push(&authz);
    let r = raw_get(gw.port, b"/api/c", &headers).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = echo.last();
    assert_eq!(
        seen.header("x-user"),
        vec![pair["user"]["id"].as_str().unwrap()]
    );
    assert_eq!(seen.header("x-role"), vec!["user"]);
    assert_eq!(
        seen.header("gw-session"),
        vec![jwt_part(access(&pair), 1)["sid"].as_str().unwrap()]
    );
    assert_eq!(seen.header("x-mail"), vec!["custom@example.com"]);
    for name in ["x_user", "gw_session", "x-auth-user-id"] {
        assert!(
            seen.header(name).is_empty(),
            "{name} reached the upstream: {seen:?}"
        );
    }
}

#[tokio::test]
async fn x_request_id_is_generated_or_kept_and_returned_to_the_client() {
    let echo = Echo::start().await;
    let gw = Gateway::start(Options::new(echo.addr)).await;
    let r = get(&gw, "/public/rid", None).await;
    assert_eq!(r.status, 200);
    let sent = echo.last().header("x-request-id");
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(uuid::Uuid::parse_str(&sent[0]).is_ok(), "{sent:?}");
    assert_eq!(r.header("x-request-id"), Some(sent[0].as_str()));

    let r = Reply::from(
        gw.http
            .get(gw.url("/public/rid"))
            .header("X-Request-Id", "client-chosen-42")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(echo.last().header("x-request-id"), vec!["client-chosen-42"]);
    assert_eq!(r.header("x-request-id"), Some("client-chosen-42"));

    // Rejections carry one too.
    let r = get(&gw, "/nowhere", None).await;
    assert!(r.header("x-request-id").is_some_and(|v| !v.is_empty()));
}

#[tokio::test]
async fn x_forwarded_for_is_replaced_by_the_peer_address_when_the_peer_is_not_trusted() {
    let echo = Echo::start().await;
    let gw = Gateway::start(Options::new(echo.addr)).await;
    let r = raw_get(
        gw.port,
        b"/public/xff",
        &["X-Forwarded-For: 203.0.113.7", "X-Forwarded-For: 10.0.0.1"],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(echo.last().header("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(get(&gw, "/public/xff", None).await.status, 200);
    assert_eq!(echo.last().header("x-forwarded-for"), vec!["127.0.0.1"]);
}

#[tokio::test]
async fn authorization_is_forwarded_only_to_routes_with_forward_token() {
    let echo = Echo::start().await;
    let mut opts = Options::new(echo.addr);
    opts.extra = "[[route]]\nprefix = \"/fwd/\"\nupstream = \"api\"\nforward_token = true\n".into();
    let gw = Gateway::start(opts).await;
    let pair = gw.user("forward@example.com").await;
    let token = access(&pair);
    for path in ["/api/x", "/opt/x", "/public/x"] {
        assert_eq!(get(&gw, path, Some(token)).await.status, 200, "{path}");
        assert!(
            echo.last().header("authorization").is_empty(),
            "{path}: Authorization forwarded"
        );
    }
    assert_eq!(get(&gw, "/fwd/x", Some(token)).await.status, 200);
    let seen = echo.last();
    assert_eq!(
        seen.header("authorization"),
        vec![format!("Bearer {token}")]
    );
    assert_eq!(
        seen.header("x-auth-user-id"),
        vec![pair["user"]["id"].as_str().unwrap()]
    );
}

#[tokio::test]
async fn headers_named_in_connection_never_remove_the_identity_headers() {
    let echo = Echo::start().await;
    let gw = Gateway::start(Options::new(echo.addr)).await;
    let pair = gw.user("hop@example.com").await;
    let authz = format!("Authorization: Bearer {}", access(&pair));
    let r = raw_get(
        gw.port,
        b"/api/hop",
        &[
            "Connection: X-Auth-User-Id, X-Auth-Role, x-auth-session-id, X_Auth_Email, X-Request-Id",
            "X-Request-Id: hop-by-hop-42",
            &authz,
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    let seen = echo.last();
    assert_eq!(
        seen.header("x-auth-user-id"),
        vec![pair["user"]["id"].as_str().unwrap()]
    );
    assert_eq!(seen.header("x-auth-role"), vec!["user"]);
    assert_eq!(seen.header("x-auth-session-id").len(), 1);
    assert_eq!(seen.header("x-auth-email"), vec!["hop@example.com"]);
    assert_eq!(seen.header("x-request-id"), vec!["hop-by-hop-42"]);
    assert_eq!(seen.header("x-forwarded-for"), vec!["127.0.0.1"]);

    // Nominating X-Forwarded-For is refused outright by Pingora; it must never reach the
    // upstream without the address we set.
    let before = echo.count();
    let r = raw_get(
        gw.port,
        b"/api/hop",
        &["Connection: X-Forwarded-For", &authz],
    )
    .await;
    if r.status == 200 {
        assert_eq!(echo.last().header("x-forwarded-for"), vec!["127.0.0.1"]);
    } else {
        assert_rejected(
            &r,
            400,
            "invalid_request",
            &echo,
            before,
            "Connection: X-Forwarded-For",
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Path normalization (§4.4)
// ---------------------------------------------------------------------------------------------

/// Targets that normalize onto `/api/admin/x` (admin route).
const ONTO_ADMIN: &[&[u8]] = &[
    b"/public/../api/admin/x",
    b"//api/admin/x",
    b"/public//../api/admin/x",
    b"/public/%2e%2e/api/admin/x",
    b"/public/%2E%2E/api/admin/x",
    b"/public/.%2e/api/admin/x",
    b"/public/./../api/admin/x",
    b"/opt/../api/admin/x",
    b"/%61pi/admin/x",
    b"/api/%61dmin/x",
    b"/api/admin/./x",
];

/// Targets that cannot be normalized safely: 400.
const UNSAFE: &[&[u8]] = &[
    b"/api%2Fadmin",
    b"/api%2fadmin/x",
    b"/public/..%2Fapi/admin/x",
    b"/public/..%2fapi",
    b"/public%2F..%2Fapi/admin/x",
    b"/public\\..\\api\\admin\\x",
    b"/public/..\\api/admin/x",
    b"/public/%5c../api/admin/x",
    b"/public/%5C..%5Capi",
    b"/public/%00",
    b"/public/x%00/../../api/admin/x",
    b"/public/x%0a",
    b"/public/x%0D%0A",
    b"/public/x%7f",
    b"/..;/api/admin/x",
    b"/public/..;/api/admin/x",
    b"/public/..;x/api/admin/x",
    b"/public/.;/api/admin/x",
    b"/public/..%3B/api/admin/x",
    b"/public/..%3b/api/admin/x",
    b"/public/%2e%2e%3b/api/admin/x",
    b"/public/.%3B/api/admin/x",
    b"/..",
    b"/../api/x",
    b"/public/../../api/admin/x",
    b"/%2e%2e/public/x",
    b"/public/%zz",
    b"/public/%2",
    b"/public/%",
];

#[tokio::test]
async fn path_bypass_attempts_are_refused_or_authorized_on_the_normalized_path() {
    let echo = Echo::start().await;
    let gw = Gateway::start(Options::new(echo.addr)).await;
    let user = gw.user("bypass@example.com").await;
    let authz = format!("Authorization: Bearer {}", access(&user));
    for target in ONTO_ADMIN {
        let what = String::from_utf8_lossy(target);
        let r = raw_get(gw.port, target, &[]).await;
        assert_rejected(&r, 401, "unauthorized", &echo, 0, &what);
        let r = raw_get(gw.port, target, &[&authz]).await;
        assert_rejected(&r, 403, "forbidden", &echo, 0, &format!("{what} as a user"));
    }
    for target in UNSAFE {
        let what = String::from_utf8_lossy(target);
        for headers in [vec![], vec![authz.as_str()]] {
            let r = raw_get(gw.port, target, &headers).await;
            assert_eq!(r.status, 400, "{what}: {r:?}");
            assert_eq!(echo.count(), 0, "{what}: reached the upstream");
        }
    }
    // Absolute-form: the path inside the URL is what gets normalized and authorized.
    let r = raw_get(gw.port, b"http://127.0.0.1/public/../api/admin/x", &[]).await;
    assert_rejected(&r, 401, "unauthorized", &echo, 0, "absolute-form");
    // A public path that climbs into /api/ needs the token /api/ needs.
    let r = raw_get(gw.port, b"/public/%2e%2e/api/x", &[]).await;
    assert_rejected(&r, 401, "unauthorized", &echo, 0, "/public/%2e%2e/api/x");
    let r = raw_get(gw.port, b"/public/%2e%2e/api/x", &[&authz]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(echo.last().path, "/api/x");
}

/// Targets that common backends read further than the gateway normalizes (§4.4 v2): each
/// would reach the admin area (or /api/ for an anonymous caller) behind a looser rule.
const READ_FURTHER_BY_BACKENDS: &[&[u8]] = &[
    b"/api/admin;/secret",
    b"/api;/admin/secret",
    b"/api/admin%3B/secret",
    b"/public;/../api/admin/x",
    b"/api/%2561dmin/x",
    b"/public/%252e%252e/api/x",
    b"/public/%252E%252E/api/admin/x",
    b"/public/%C0%AE%C0%AE/api/admin/x",
    b"/public/%E0%80%AE%E0%80%AE/api/x",
];

#[tokio::test]
async fn paths_backends_read_differently_never_reach_a_stricter_area() {
    let echo = Echo::start().await;
    let gw = Gateway::start(Options::new(echo.addr)).await;
    let user = gw.user("differential@example.com").await;
    let authz = format!("Authorization: Bearer {}", access(&user));
    for target in READ_FURTHER_BY_BACKENDS {
        let what = String::from_utf8_lossy(target);
        for headers in [vec![], vec![authz.as_str()]] {
            let r = raw_get(gw.port, target, &headers).await;
            assert_rejected(&r, 400, "invalid_request", &echo, 0, &what);
        }
    }
    // Case and a missing trailing slash get the admin route's rules.
    for target in [&b"/api/ADMIN/secret"[..], b"/API/Admin/x", b"/api/admin"] {
        let what = String::from_utf8_lossy(target);
        let r = raw_get(gw.port, target, &[]).await;
        assert_rejected(&r, 401, "unauthorized", &echo, 0, &what);
        let r = raw_get(gw.port, target, &[&authz]).await;
        assert_rejected(&r, 403, "forbidden", &echo, 0, &format!("{what} as a user"));
    }
    // An anonymous caller cannot reach /api/ through the public route's case variants either.
    let r = raw_get(gw.port, b"/API/x", &[]).await;
    assert_rejected(&r, 401, "unauthorized", &echo, 0, "/API/x");
    // The path is forwarded as sent: case kept.
    let r = raw_get(gw.port, b"/API/x", &[&authz]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(echo.last().path, "/API/x");
}

#[tokio::test]
async fn path_parameters_pass_only_when_the_operator_allows_them() {
    let echo = Echo::start().await;
    let gw = Gateway::start(Options {
        server: "allow_path_parameters = true\n".into(),
        ..Options::new(echo.addr)
    })
    .await;
    let user = gw.user("params@example.com").await;
    let authz = format!("Authorization: Bearer {}", access(&user));
    let r = raw_get(gw.port, b"/api/x;v=1", &[&authz]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(echo.last().path, "/api/x;v=1");
    // Dot segments with parameters stay refused.
    let r = raw_get(gw.port, b"/public/..;/api/admin/x", &[&authz]).await;
    assert_rejected(&r, 400, "invalid_request", &echo, 1, "..;");
}

#[tokio::test]
async fn the_upstream_receives_exactly_the_normalized_path() {
    let echo = Echo::start().await;
    let gw = Gateway::start(Options::new(echo.addr)).await;
    let cases: &[(&[u8], &str)] = &[
        (b"/public/a/./b//c", "/public/a/b/c"),
        (b"/public/a/b/../c", "/public/a/c"),
        (b"/public//x///y/", "/public/x/y/"),
        (b"/public/%7euser/%41%2D", "/public/~user/A-"),
        (b"/public/a%20b/%c3%a9", "/public/a%20b/%C3%A9"),
        (
            b"/public/x/../y?q=%2F..&r=/../z",
            "/public/y?q=%2F..&r=/../z",
        ),
        (b"/x/../public/z", "/public/z"),
        (b"/public/x/.", "/public/x/"),
    ];
    for (target, expected) in cases {
        let what = String::from_utf8_lossy(target);
        let r = raw_get(gw.port, target, &[]).await;
        assert_eq!(r.status, 200, "{what}: {r:?}");
        assert_eq!(echo.last().path, *expected, "{what}");
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP framing (§4.2 item 8)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn ambiguous_framing_is_400_and_never_forwarded() {
    let echo = Echo::start().await;
    let gw = Gateway::start(Options::new(echo.addr)).await;
    let cases: &[(&str, &[u8])] = &[
        (
            "Content-Length and Transfer-Encoding",
            b"POST /public/f HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
        ),
        (
            "Transfer-Encoding and Content-Length",
            b"POST /public/f HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\nConnection: close\r\n\r\n0\r\n\r\n",
        ),
        (
            "duplicate equal Content-Length",
            b"POST /public/f HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
        ),
        (
            "duplicate different Content-Length",
            b"POST /public/f HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\nContent-Length: 4\r\nConnection: close\r\n\r\nhiya",
        ),
        (
            "comma-joined Content-Length",
            b"POST /public/f HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2, 2\r\nConnection: close\r\n\r\nhi",
        ),
        (
            "missing Host",
            b"GET /public/f HTTP/1.1\r\nConnection: close\r\n\r\n",
        ),
        (
            "duplicate Host",
            b"GET /public/f HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
        ),
        (
            "duplicate identical Host",
            b"GET /public/f HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        ),
    ];
    for (what, req) in cases {
        let raw = raw_request(gw.port, req).await;
        let r = Reply::parse(&raw);
        assert_eq!(r.status, 400, "{what}: {raw}");
        assert_eq!(echo.count(), 0, "{what}: reached the upstream");
    }
    // The same requests, well framed, are forwarded.
    let ok = raw_request(
        gw.port,
        b"POST /public/f HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    )
    .await;
    assert_eq!(Reply::parse(&ok).status, 200, "{ok}");
    assert_eq!(echo.count(), 1);
    assert_eq!(echo.last().method, "POST");
}

#[tokio::test]
async fn a_transfer_coding_other_than_chunked_is_501_and_never_forwarded() {
    let echo = Echo::start().await;
    let gw = Gateway::start(Options::new(echo.addr)).await;
    for te in ["gzip, chunked", "chunked, chunked", "br, chunked"] {
        let req = format!(
            "POST /public/te HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: {te}\r\nConnection: close\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
        );
        let raw = raw_request(gw.port, req.as_bytes()).await;
        let r = Reply::parse(&raw);
        assert_eq!(r.status, 501, "{te}: {raw}");
        assert!(raw.contains("\"not_implemented\""), "{te}: {raw}");
    }
    assert_eq!(
        echo.count(),
        0,
        "a request with other codings reached the upstream"
    );
    let ok = raw_request(
        gw.port,
        b"POST /public/te HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(Reply::parse(&ok).status, 200, "{ok}");
}

#[tokio::test]
async fn an_invalid_request_line_is_a_json_400_from_the_gateway_never_repaired_and_forwarded() {
    let echo = Echo::start().await;
    let gw = Gateway::start(Options::new(echo.addr)).await;
    for line in [
        "GET /public/a b HTTP/1.1",
        "GET /public/a%20b c HTTP/1.1",
        "GET /public/x HTTP/1.1 extra",
    ] {
        let req = format!("{line}\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        let raw = raw_request(gw.port, req.as_bytes()).await;
        assert!(raw.starts_with("HTTP/1.1 400 "), "{line}: {raw}");
        let lower = raw.to_ascii_lowercase();
        assert!(!lower.contains("server: pingora"), "{line}: {raw}");
        assert!(
            lower.contains("content-type: application/json"),
            "{line}: {raw}"
        );
        assert!(
            raw.contains("\"error\":\"invalid_request\""),
            "{line}: {raw}"
        );
    }
    assert_eq!(
        echo.count(),
        0,
        "a repaired request line reached the upstream"
    );
    assert!(!gw.log().contains("ERROR"), "{}", gw.log());
}

#[tokio::test]
async fn the_body_of_a_rejected_request_is_never_read_as_another_request() {
    let echo = Echo::start().await;
    let gw = Gateway::start(Options::new(echo.addr)).await;
    let inner = b"GET /public/smuggled HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    for (status, first) in [
        ("401", "POST /api/x HTTP/1.1"),
        ("404", "POST /nowhere HTTP/1.1"),
        ("400", "POST /public/%2e%2e/%2e%2e/x HTTP/1.1"),
    ] {
        let what = first;
        let mut req = format!(
            "{first}\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n",
            inner.len()
        )
        .into_bytes();
        req.extend_from_slice(inner);
        req.extend_from_slice(
            b"GET /public/after HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        );
        let raw = raw_request(gw.port, &req).await;
        assert!(
            !echo.seen().iter().any(|s| s.path == "/public/smuggled"),
            "{what}: a request body was proxied as a request: {raw}"
        );
        assert!(!raw.contains("smuggled"), "{what}: {raw}");
        assert!(
            raw.starts_with(&format!("HTTP/1.1 {status} ")),
            "{what}: {raw}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Revocation (§4.2 item 3, 7)
// ---------------------------------------------------------------------------------------------

postgres_only! {
/// Two gateways on one database and one keys directory.
async fn two_instances(echo: &Echo, revocation: &str) -> (Gateway, Gateway, tempfile::TempDir) {
    two_gateways(|| {
        let mut opts = Options::new(echo.addr);
        opts.revocation = revocation.into();
        opts
    })
    .await
}
}

/// Polls until `gw` refuses `token` on /api/ with 401; returns how long that took.
async fn until_refused(gw: &Gateway, token: &str, timeout: Duration) -> Option<Duration> {
    eventually(timeout, || async {
        gw.get("/api/r", Some(token)).await.status() == 401
    })
    .await
}

postgres_only! {
#[tokio::test]
async fn a_logout_through_one_instance_is_enforced_by_another_within_one_second() {
    let echo = Echo::start().await;
    let (a, b, _keys) = two_instances(&echo, "cache_ttl_secs = 30\n").await;
    let pair = a.user("everywhere@example.com").await;
    let token = access(&pair);
    // Warm B's cache (the second request is a hit).
    assert_eq!(get(&b, "/api/r", Some(token)).await.status, 200);
    assert_eq!(get(&b, "/api/r", Some(token)).await.status, 200);
    assert!(
        metric(
            &b.metrics().await,
            "portcullis_revocation_cache_total{result=\"hit\"}"
        ) >= 1.0
    );

    let r = a
        .post("/auth/logout", json!({ "refresh_token": refresh(&pair) }))
        .await;
    assert_eq!(r.status(), 204);
    let took = until_refused(&b, token, Duration::from_secs(5))
        .await
        .expect("B never refused the revoked session");
    assert!(
        took < Duration::from_secs(1),
        "B refused only after {took:?}"
    );
    let before = echo.count();
    let r = get(&b, "/api/r", Some(token)).await;
    assert_rejected(&r, 401, "invalid_token", &echo, before, "revoked on B");
    assert_eq!(r.header("www-authenticate"), Some(INVALID_TOKEN));
    let r = get(&a, "/api/r", Some(token)).await;
    assert_rejected(&r, 401, "invalid_token", &echo, before, "revoked on A");
}
}

postgres_only! {
#[tokio::test]
async fn logout_all_through_one_instance_is_enforced_by_another_within_one_second() {
    let echo = Echo::start().await;
    let (a, b, _keys) = two_instances(&echo, "cache_ttl_secs = 30\n").await;
    a.user("all@example.com").await;
    let second = a.login("all@example.com", "password-123").await;
    let first = b.login("all@example.com", "password-123").await;
    for t in [access(&first), access(&second)] {
        assert_eq!(get(&b, "/api/r", Some(t)).await.status, 200);
    }
    let r = a
        .http
        .post(a.url("/auth/logout-all"))
        .bearer_auth(access(&second))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    for t in [access(&first), access(&second)] {
        let took = until_refused(&b, t, Duration::from_secs(5))
            .await
            .expect("B never refused a session revoked by logout-all");
        assert!(
            took < Duration::from_secs(1),
            "B refused only after {took:?}"
        );
    }
}
}

postgres_only! {
#[tokio::test]
async fn deactivation_and_role_change_through_one_instance_are_enforced_by_another_within_one_second()
 {
    let echo = Echo::start().await;
    let (a, b, _keys) = two_instances(&echo, "cache_ttl_secs = 30\n").await;
    let admin = a.admin_user("chief@example.com").await;
    let demoted = a.user("promoted@example.com").await;
    let disabled = a.user("disabled@example.com").await;
    for t in [access(&demoted), access(&disabled)] {
        assert_eq!(get(&b, "/api/r", Some(t)).await.status, 200);
        assert_eq!(get(&b, "/api/r", Some(t)).await.status, 200);
    }
    let patch = |pair: &Value, body: Value| {
        let url = a.url(&format!(
            "/auth/admin/users/{}",
            pair["user"]["id"].as_str().unwrap()
        ));
        a.http
            .patch(url)
            .bearer_auth(access(&admin))
            .json(&body)
            .send()
    };
    let r = patch(&demoted, json!({"role": "admin"})).await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let took = until_refused(&b, access(&demoted), Duration::from_secs(5))
        .await
        .expect("a token issued before a role change still works on B");
    assert!(
        took < Duration::from_secs(1),
        "role change enforced only after {took:?}"
    );

    let r = patch(&disabled, json!({"is_active": false})).await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let took = until_refused(&b, access(&disabled), Duration::from_secs(5))
        .await
        .expect("a deactivated user's token still works on B");
    assert!(
        took < Duration::from_secs(1),
        "deactivation enforced only after {took:?}"
    );
    let before = echo.count();
    for t in [access(&demoted), access(&disabled)] {
        let r = get(&b, "/api/r", Some(t)).await;
        assert_rejected(&r, 401, "invalid_token", &echo, before, "revoked user");
    }
}
}

postgres_only! {
/// `pg_terminate_backend` on this database's LISTEN connection; returns how many were killed.
async fn kill_listener(db_url: &str) -> i64 {
    let db = connect(db_url).await;
    db.query_one(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND query ILIKE 'LISTEN%' AND pid <> pg_backend_pid()",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}
}

postgres_only! {
async fn listeners(db_url: &str) -> i64 {
    let db = connect(db_url).await;
    db.query_one(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND query ILIKE 'LISTEN%' AND pid <> pg_backend_pid()",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}
}

postgres_only! {
/// The instance that takes a logout stops trusting the session before it answers, without
/// waiting for its own NOTIFY to come back: here its LISTEN connection is killed and cannot
/// come back (the database refuses new connections; the pool's one connection stays open),
/// the cache TTL is an hour, and still the very next request with the token is refused.
#[tokio::test]
async fn the_instance_that_revokes_enforces_it_at_once_without_its_own_notification() {
    let echo = Echo::start().await;
    let proxy = DbProxy::start().await;
    let db = fresh_db().await;
    let mut opts = Options::new(echo.addr);
    opts.pool_size = 1;
    opts.revocation = "cache_ttl_secs = 3600\n".into();
    let gw = Gateway::start_on(opts, proxy.url(&db)).await;
    let one = gw.user("one@example.com").await;
    gw.user("all@example.com").await;
    let all = gw.login("all@example.com", "password-123").await;
    for pair in [&one, &all] {
        assert_eq!(get(&gw, "/api/r", Some(access(pair))).await.status, 200);
    }

    proxy.refuse_new();
    assert_eq!(kill_listener(&db).await, 1);
    let gone = eventually(Duration::from_secs(5), || async {
        gw.log().contains("revocation LISTEN connection failed")
    })
    .await;
    assert!(gone.is_some(), "LISTEN came back; log:\n{}", gw.log());

    let r = gw
        .post("/auth/logout", json!({ "refresh_token": refresh(&one) }))
        .await;
    assert_eq!(r.status(), 204);
    let before = echo.count();
    assert_eq!(get(&gw, "/api/r", Some(access(&one))).await.status, 401);
    let r = gw
        .http
        .post(gw.url("/auth/logout-all"))
        .bearer_auth(access(&all))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(get(&gw, "/api/r", Some(access(&all))).await.status, 401);
    assert_eq!(echo.count(), before, "a revoked token reached the upstream");
    assert_eq!(listeners(&db).await, 0, "LISTEN came back during the test");
}
}

postgres_only! {
#[tokio::test]
async fn revocation_survives_a_killed_listen_connection_and_propagates_again_after_reconnect() {
    let echo = Echo::start().await;
    // An hour of cache: nothing here can become visible through the TTL, only through the
    // LISTEN connection (its notifications, and the cache clear when it comes back).
    let (a, b, _keys) = two_instances(&echo, "cache_ttl_secs = 3600\n").await;
    let both_listening = || async {
        eventually(Duration::from_secs(10), || async {
            listeners(&b.db_url).await == 2
        })
        .await
        .is_some()
    };
    assert!(
        both_listening().await,
        "both instances should hold a LISTEN connection"
    );

    // A revocation that sends no notification at all stays invisible to B's cache …
    let pair = a.user("listen@example.com").await;
    let token = access(&pair);
    assert_eq!(get(&b, "/api/r", Some(token)).await.status, 200);
    let db = connect(&b.db_url).await;
    let sid = uuid::Uuid::parse_str(jwt_part(token, 1)["sid"].as_str().unwrap()).unwrap();
    let n = db
        .execute(
            "UPDATE sessions SET revoked_at = now() WHERE id = $1",
            &[&sid],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        get(&b, "/api/r", Some(token)).await.status,
        200,
        "B should still answer from its cache: nothing told it of the revocation"
    );
    // … until the LISTEN connection is killed: on reconnect B forgets what it may have missed.
    assert_eq!(kill_listener(&b.db_url).await, 2);
    assert!(
        until_refused(&b, token, Duration::from_secs(5))
            .await
            .is_some(),
        "a revocation missed while LISTEN was down was never enforced after the reconnect; log:\n{}",
        b.log()
    );

    // A revocation made right after the kill, while B may still be reconnecting, is enforced.
    assert!(both_listening().await, "LISTEN did not come back");
    let pair = a.login("listen@example.com", "password-123").await;
    let token = access(&pair);
    assert_eq!(get(&b, "/api/r", Some(token)).await.status, 200);
    assert_eq!(kill_listener(&b.db_url).await, 2);
    let r = a
        .post("/auth/logout", json!({ "refresh_token": refresh(&pair) }))
        .await;
    assert_eq!(r.status(), 204);
    assert!(
        until_refused(&b, token, Duration::from_secs(5))
            .await
            .is_some(),
        "a logout during the reconnect was never enforced by B; log:\n{}",
        b.log()
    );

    // Both listeners come back, and a fresh revocation propagates fast again.
    assert!(
        both_listening().await,
        "the LISTEN connections were not re-established; log:\n{}",
        b.log()
    );
    let pair = a.login("listen@example.com", "password-123").await;
    let token = access(&pair);
    assert_eq!(get(&b, "/api/r", Some(token)).await.status, 200);
    assert_eq!(get(&b, "/api/r", Some(token)).await.status, 200);
    let r = a
        .post("/auth/logout", json!({ "refresh_token": refresh(&pair) }))
        .await;
    assert_eq!(r.status(), 204);
    let took = until_refused(&b, token, Duration::from_secs(3))
        .await
        .expect("never refused after reconnect");
    assert!(
        took < Duration::from_secs(1),
        "after reconnect B refused only after {took:?}"
    );
}
}

#[tokio::test]
async fn a_revocation_whose_notification_is_lost_is_enforced_within_the_cache_ttl() {
    let echo = Echo::start().await;
    let mut opts = Options::new(echo.addr);
    opts.revocation = "cache_ttl_secs = 2\n".into();
    let gw = Gateway::start(opts).await;
    let pair = gw.user("lost@example.com").await;
    let token = access(&pair);
    assert_eq!(get(&gw, "/api/r", Some(token)).await.status, 200);
    // Revoke behind the gateway's back: no NOTIFY at all.
    let db = Db::open(&gw.db_url).await;
    let sid = uuid::Uuid::parse_str(jwt_part(token, 1)["sid"].as_str().unwrap()).unwrap();
    let revoke = format!(
        "UPDATE sessions SET revoked_at = {} WHERE id = $1",
        db.now()
    );
    let n = db.exec(&revoke, &[Arg::Uuid(sid)]).await;
    assert_eq!(n, 1);
    assert!(
        until_refused(&gw, token, Duration::from_secs(3))
            .await
            .is_some(),
        "a silent revocation outlived cache_ttl_secs"
    );
}

postgres_only! {
#[tokio::test]
async fn with_the_database_down_unknown_status_is_503_cached_status_is_served_and_it_recovers() {
    let echo = Echo::start().await;
    let proxy = DbProxy::start().await;
    let db = fresh_db().await;
    let gw = Gateway::start_on(Options::new(echo.addr), proxy.url(&db)).await;
    let cached = gw.user("cached@example.com").await;
    let unknown = gw.user("unknown@example.com").await;
    assert_eq!(get(&gw, "/api/r", Some(access(&cached))).await.status, 200);

    proxy.down();
    let before = echo.count();
    let r = get(&gw, "/api/r", Some(access(&unknown))).await;
    assert_rejected(
        &r,
        503,
        "unavailable",
        &echo,
        before,
        "uncached status, database down",
    );
    assert!(
        r.header("retry-after")
            .is_some_and(|v| v.parse::<u64>().is_ok()),
        "{r:?}"
    );
    let r = get(&gw, "/opt/r", Some(access(&unknown))).await;
    assert_rejected(
        &r,
        503,
        "unavailable",
        &echo,
        before,
        "optional route, database down",
    );

    // Still down: the cached status answers (hit), also after the LISTEN connection died.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hits = metric(
        &gw.metrics().await,
        "portcullis_revocation_cache_total{result=\"hit\"}",
    );
    let r = get(&gw, "/api/r", Some(access(&cached))).await;
    assert_eq!(
        r.status, 200,
        "a cached status should be answered from cache: {r:?}"
    );
    assert_eq!(echo.count(), before + 1);
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "portcullis_revocation_cache_total{result=\"hit\"}"),
        hits + 1.0
    );
    assert!(metric(&m, "portcullis_access_denied_total{reason=\"unavailable\"}") >= 2.0);
    // Public routes need no database.
    assert_eq!(get(&gw, "/public/r", None).await.status, 200);

    proxy.up();
    assert!(
        eventually(Duration::from_secs(10), || async {
            gw.get("/api/r", Some(access(&unknown))).await.status() == 200
        })
        .await
        .is_some(),
        "no recovery after the database came back; log:\n{}",
        gw.log()
    );
    assert_eq!(
        echo.last().header("x-auth-user-id"),
        vec![unknown["user"]["id"].as_str().unwrap()]
    );
}
}

postgres_only! {
#[tokio::test]
async fn the_auth_api_answers_503_while_the_database_is_down() {
    let echo = Echo::start().await;
    let proxy = DbProxy::start().await;
    let db = fresh_db().await;
    let gw = Gateway::start_on(Options::new(echo.addr), proxy.url(&db)).await;
    let pair = gw.user("authdown@example.com").await;
    proxy.down();
    for (path, body) in [
        (
            "/auth/login",
            json!({"email": "authdown@example.com", "password": "password-123"}),
        ),
        ("/auth/refresh", json!({"refresh_token": refresh(&pair)})),
    ] {
        let r = Reply::from(gw.post(path, body).await).await;
        assert_eq!(r.status, 503, "{path}: {r:?}");
        assert_eq!(r.error(), "unavailable", "{path}");
        assert!(r.header("retry-after").is_some(), "{path}: {r:?}");
    }
    assert_eq!(echo.count(), 0);
}
}

postgres_only! {
#[tokio::test]
async fn on_db_error_allow_forwards_when_the_status_cannot_be_checked() {
    let echo = Echo::start().await;
    let proxy = DbProxy::start().await;
    let db = fresh_db().await;
    let mut opts = Options::new(echo.addr);
    opts.revocation = "cache_ttl_secs = 30\non_db_error = \"allow\"\n".into();
    let gw = Gateway::start_on(opts, proxy.url(&db)).await;
    let pair = gw.user("allow@example.com").await;
    proxy.down();
    let r = get(&gw, "/api/r", Some(access(&pair))).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(echo.count(), 1);
    assert_eq!(
        echo.last().header("x-auth-user-id"),
        vec![pair["user"]["id"].as_str().unwrap()]
    );
    // Signature checks still apply.
    let r = get(&gw, "/api/r", Some("garbage")).await;
    assert_rejected(&r, 401, "invalid_token", &echo, 1, "garbage with allow");
    // The log is written by a background writer: give it a moment.
    let logged = eventually(Duration::from_secs(5), || {
        let seen = gw.log().contains("on_db_error = allow");
        async move { seen }
    })
    .await;
    assert!(logged.is_some(), "the allow should be logged");
}
}

// ---------------------------------------------------------------------------------------------
// Upstream failures (§4.2 item 6) and health checks
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_refused_upstream_is_502_a_slow_one_504_and_the_gateway_keeps_serving() {
    let echo = Echo::start().await;
    let mut opts = Options::new(echo.addr);
    opts.extra = format!(
        "[[upstream]]\nname = \"dead\"\naddrs = [\"127.0.0.1:{}\"]\n\n\
         [[route]]\nprefix = \"/dead/\"\nupstream = \"dead\"\nauth = \"none\"\n",
        free_port()
    );
    let gw = Gateway::start(opts).await;
    let r = get(&gw, "/dead/x", None).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.error(), "bad_gateway");
    assert_eq!(get(&gw, "/public/after-502", None).await.status, 200);

    let r = get(&gw, "/public/slow", None).await;
    assert_eq!(r.status, 504, "{r:?}");
    assert_eq!(r.error(), "gateway_timeout");
    let r = get(&gw, "/public/after-504", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(echo.last().path, "/public/after-504");
    let m = metrics_when(&gw, |m| {
        metric(
            m,
            "portcullis_requests_total{route=\"/public/\",status=\"504\"}",
        ) >= 1.0
    })
    .await;
    assert_eq!(
        metric(
            &m,
            "portcullis_requests_total{route=\"/dead/\",status=\"502\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "portcullis_requests_total{route=\"/public/\",status=\"504\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn health_checks_take_a_dead_address_out_of_the_rotation() {
    let echo = Echo::start().await;
    let mut opts = Options::new(echo.addr);
    opts.extra = format!(
        "[[upstream]]\nname = \"pair\"\naddrs = [\"{}\", \"127.0.0.1:{}\"]\n\
         health_check_path = \"/healthz\"\nhealth_check_interval_secs = 1\n\n\
         [[route]]\nprefix = \"/hc/\"\nupstream = \"pair\"\nauth = \"none\"\n\n\
         [[upstream]]\nname = \"gone\"\naddrs = [\"127.0.0.1:{}\"]\n\
         health_check_path = \"/healthz\"\nhealth_check_interval_secs = 1\n\n\
         [[route]]\nprefix = \"/gone/\"\nupstream = \"gone\"\nauth = \"none\"\n",
        echo.addr,
        free_port(),
        free_port()
    );
    let gw = Gateway::start(opts).await;
    // Once the first check has run, twenty requests in a row all reach the live address.
    let settled = eventually(Duration::from_secs(10), || async {
        for _ in 0..4 {
            if gw.get("/hc/probe", None).await.status() != 200 {
                return false;
            }
        }
        true
    })
    .await;
    assert!(
        settled.is_some(),
        "the dead address stayed in rotation; log:\n{}",
        gw.log()
    );
    for n in 0..20 {
        let r = get(&gw, &format!("/hc/{n}"), None).await;
        assert_eq!(r.status, 200, "request {n}: {r:?}");
    }
    assert_eq!(echo.last().path, "/hc/19");
    // No healthy address at all: 502 with the JSON body.
    let r = get(&gw, "/gone/x", None).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.error(), "bad_gateway");
    assert_eq!(echo.last().path, "/hc/19");
}

// ---------------------------------------------------------------------------------------------
// Live reload (§2)
// ---------------------------------------------------------------------------------------------

fn rewrite_config(gw: &Gateway, echo: &Echo, extra: &str) {
    let mut opts = Options::new(echo.addr);
    opts.extra = extra.into();
    let text = config_text(
        &opts,
        gw.port,
        gw.admin_port,
        &gw.db_url,
        &gw.dir.path().join("keys"),
    );
    std::fs::write(&gw.config_path, text).unwrap();
}

#[tokio::test]
async fn routes_reload_on_sighup_and_on_file_change_and_an_invalid_file_keeps_the_old_routes() {
    let echo = Echo::start().await;
    let gw = Gateway::start(Options::new(echo.addr)).await;
    let r = get(&gw, "/new/x", None).await;
    assert_rejected(&r, 404, "not_found", &echo, 0, "/new/ before reload");

    // SIGHUP.
    rewrite_config(
        &gw,
        &echo,
        "[[route]]\nprefix = \"/new/\"\nupstream = \"api\"\nauth = \"none\"\n",
    );
    gw.signal("HUP");
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.get("/new/x", None).await.status() == 200
        })
        .await
        .is_some(),
        "the new route was not served after SIGHUP; log:\n{}",
        gw.log()
    );
    assert_eq!(echo.last().path, "/new/x");

    // Invalid: a route naming a missing upstream. The old table (with /new/) keeps serving.
    rewrite_config(
        &gw,
        &echo,
        "[[route]]\nprefix = \"/new/\"\nupstream = \"api\"\nauth = \"none\"\n\n\
         [[route]]\nprefix = \"/ghost/\"\nupstream = \"ghost\"\nauth = \"none\"\n",
    );
    gw.signal("HUP");
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.log().contains("config reload rejected")
        })
        .await
        .is_some(),
        "the rejected reload was not logged:\n{}",
        gw.log()
    );
    let log = gw.log();
    assert!(
        log.contains("ghost"),
        "the log should name the problem:\n{log}"
    );
    let before = echo.count();
    let r = get(&gw, "/ghost/x", None).await;
    assert_rejected(
        &r,
        404,
        "not_found",
        &echo,
        before,
        "/ghost/ from a rejected file",
    );
    assert_eq!(get(&gw, "/new/y", None).await.status, 200);
    assert_eq!(get(&gw, "/public/y", None).await.status, 200);

    // A file change alone (no signal) is picked up.
    rewrite_config(
        &gw,
        &echo,
        "[[route]]\nprefix = \"/polled/\"\nupstream = \"api\"\nauth = \"none\"\n",
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.get("/polled/x", None).await.status() == 200
        })
        .await
        .is_some(),
        "a changed file was not picked up without SIGHUP; log:\n{}",
        gw.log()
    );
    let before = echo.count();
    let r = get(&gw, "/new/x", None).await;
    assert_rejected(
        &r,
        404,
        "not_found",
        &echo,
        before,
        "/new/ after it was removed",
    );
}

// ---------------------------------------------------------------------------------------------
// Metrics (§5)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn metrics_count_requests_upstream_time_denials_cache_lookups_and_pool_connections() {
    let echo = Echo::start().await;
    let gw = Gateway::start(Options::new(echo.addr)).await;
    let pair = gw.user("metrics@example.com").await;
    let token = access(&pair);
    let m0 = gw.metrics().await;

    assert_eq!(get(&gw, "/public/m", None).await.status, 200);
    assert_eq!(get(&gw, "/api/m", Some(token)).await.status, 200);
    assert_eq!(get(&gw, "/api/m", Some(token)).await.status, 200);
    assert_eq!(get(&gw, "/api/m", None).await.status, 401);
    assert_eq!(get(&gw, "/api/m", Some("junk")).await.status, 401);
    assert_eq!(get(&gw, "/api/admin/m", Some(token)).await.status, 403);
    assert_eq!(get(&gw, "/nowhere", None).await.status, 404);
    let r = gw
        .post("/auth/logout", json!({ "refresh_token": refresh(&pair) }))
        .await;
    assert_eq!(r.status(), 204);
    until_refused(&gw, token, Duration::from_secs(5))
        .await
        .expect("logout enforced");

    let expected_requests = [
        (
            "portcullis_requests_total{route=\"/public/\",status=\"200\"}",
            1.0,
        ),
        (
            "portcullis_requests_total{route=\"/api/\",status=\"200\"}",
            2.0,
        ),
        (
            "portcullis_requests_total{route=\"/api/\",status=\"401\"}",
            3.0,
        ),
        (
            "portcullis_requests_total{route=\"/api/admin/\",status=\"403\"}",
            1.0,
        ),
        (
            "portcullis_requests_total{route=\"none\",status=\"404\"}",
            1.0,
        ),
        (
            "portcullis_requests_total{route=\"/auth\",status=\"204\"}",
            1.0,
        ),
    ];
    let m = metrics_when(&gw, |m| {
        expected_requests
            .iter()
            .all(|(series, n)| metric(m, series) - metric(&m0, series) >= *n)
    })
    .await;
    let delta = |series: &str| metric(&m, series) - metric(&m0, series);
    assert_eq!(
        delta("portcullis_requests_total{route=\"/public/\",status=\"200\"}"),
        1.0
    );
    assert!(delta("portcullis_requests_total{route=\"/api/\",status=\"200\"}") >= 2.0);
    assert!(delta("portcullis_requests_total{route=\"/api/\",status=\"401\"}") >= 3.0);
    assert_eq!(
        delta("portcullis_requests_total{route=\"/api/admin/\",status=\"403\"}"),
        1.0
    );
    assert_eq!(
        delta("portcullis_requests_total{route=\"none\",status=\"404\"}"),
        1.0
    );
    assert!(delta("portcullis_requests_total{route=\"/auth\",status=\"204\"}") >= 1.0);
    assert!(delta("portcullis_upstream_duration_seconds_count{upstream=\"api\"}") >= 3.0);
    assert!(delta("portcullis_upstream_duration_seconds_sum{upstream=\"api\"}") > 0.0);
    assert_eq!(
        delta("portcullis_access_denied_total{reason=\"missing_token\"}"),
        1.0
    );
    assert_eq!(
        delta("portcullis_access_denied_total{reason=\"invalid_token\"}"),
        1.0
    );
    assert_eq!(
        delta("portcullis_access_denied_total{reason=\"insufficient_role\"}"),
        1.0
    );
    assert!(delta("portcullis_access_denied_total{reason=\"revoked\"}") >= 1.0);
    assert!(delta("portcullis_revocation_cache_total{result=\"miss\"}") >= 1.0);
    assert!(delta("portcullis_revocation_cache_total{result=\"hit\"}") >= 1.0);
    let pool = metric(&m, "portcullis_db_pool_connections{state=\"idle\"}")
        + metric(&m, "portcullis_db_pool_connections{state=\"in_use\"}");
    assert!(pool >= 1.0, "pool gauges: {m:?}");
    assert!(m.contains_key("portcullis_db_pool_connections{state=\"in_use\"}"));
}

/// The revocation-cache gauge counts the sessions looked up on the proxy path and falls back
/// to zero once their entries outlive `cache_ttl_secs`: it shows the cache fill and expire.
#[tokio::test]
async fn the_revocation_cache_gauge_counts_cached_sessions_and_drops_expired_ones() {
    let echo = Echo::start().await;
    let mut opts = Options::new(echo.addr);
    opts.revocation = "cache_ttl_secs = 2\n".into();
    let gw = Gateway::start(opts).await;
    let gauge = "portcullis_revocation_cache_entries";
    assert_eq!(gw.metrics().await.get(gauge), Some(&0.0));

    let first = gw.user("gauge-1@example.com").await;
    let second = gw.user("gauge-2@example.com").await;
    for pair in [&first, &second] {
        assert_eq!(get(&gw, "/api/g", Some(access(pair))).await.status, 200);
        assert_eq!(get(&gw, "/api/g", Some(access(pair))).await.status, 200);
    }
    // Two sessions looked up (twice each): two entries, not four.
    assert_eq!(gw.metrics().await.get(gauge), Some(&2.0));

    let expired = eventually(Duration::from_secs(10), || async {
        gw.metrics().await.get(gauge) == Some(&0.0)
    })
    .await;
    assert!(
        expired.is_some(),
        "entries outlived cache_ttl_secs: {:?}",
        gw.metrics().await.get(gauge)
    );
}

#[tokio::test]
async fn a_trusted_proxy_extends_x_forwarded_for_and_names_the_client_for_sessions() {
    let echo = Echo::start().await;
    let mut opts = Options::new(echo.addr);
    opts.server = "trusted_proxies = [\"127.0.0.0/8\"]".into();
    let gw = Gateway::start(opts).await;
    let pair = gw.user("behind-proxy@example.com").await;

    let r = gw
        .http
        .get(gw.url("/public/x"))
        .header("X-Forwarded-For", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        echo.last().header("x-forwarded-for"),
        vec!["203.0.113.9, 127.0.0.1".to_string()],
        "the trusted peer is appended to the client's chain"
    );

    // The client address behind the trusted proxy is what the session records.
    let login = gw
        .http
        .post(gw.url("/auth/login"))
        .header("X-Forwarded-For", "198.51.100.23")
        .json(&json!({"email": "behind-proxy@example.com", "password": "password-123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let sessions: Value = gw
        .get("/auth/sessions", Some(access(&pair)))
        .await
        .json()
        .await
        .unwrap();
    let ips: Vec<&str> = sessions["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["ip"].as_str())
        .collect();
    assert!(ips.contains(&"198.51.100.23"), "{ips:?}");
}

#[tokio::test]
async fn an_oversized_request_head_is_431_and_never_forwarded() {
    let echo = Echo::start().await;
    let gw = Gateway::start(Options::new(echo.addr)).await;
    let big = format!("X-Big: {}", "x".repeat(64 * 1024));
    let r = raw_get(gw.port, b"/public/x", &[&big]).await;
    assert_rejected(
        &r,
        431,
        "request_header_fields_too_large",
        &echo,
        0,
        "64 KiB header",
    );
    // Many small headers count together.
    let many: Vec<String> = (0..40)
        .map(|i| format!("X-H{i}: {}", "y".repeat(500)))
        .collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let r = raw_get(gw.port, b"/public/x", &refs).await;
    assert_rejected(
        &r,
        431,
        "request_header_fields_too_large",
        &echo,
        0,
        "40 × 500 B",
    );
    // Under the default 16 KiB: forwarded.
    let fine = format!("X-Fine: {}", "z".repeat(8 * 1024));
    let r = raw_get(gw.port, b"/public/x", &[&fine]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(echo.count(), 1);
}

#[tokio::test]
async fn the_head_size_limit_is_configurable() {
    let echo = Echo::start().await;
    let gw = Gateway::start(Options {
        server: "max_header_bytes = 2048\n".into(),
        ..Options::new(echo.addr)
    })
    .await;
    let h = format!("X-Mid: {}", "m".repeat(4096));
    let r = raw_get(gw.port, b"/public/x", &[&h]).await;
    assert_rejected(
        &r,
        431,
        "request_header_fields_too_large",
        &echo,
        0,
        "4 KiB over 2 KiB",
    );
}
