//! The /auth API of docs/api.md ("/auth endpoints", "Tokens") against the real binary: every endpoint with its
//! success and each listed error (status, `error` code, required headers), refresh rotation and
//! theft detection, revocation reaching access tokens, admin actions, rate limits and metrics.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::harness::*;

const PASSWORD: &str = "password-123";
const ADMIN_PASSWORD: &str = "admin-password";

/// A response read to the end.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: HeaderMap,
    text: String,
}

impl Reply {
    async fn of(r: reqwest::Response) -> Reply {
        Reply {
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            text: r.text().await.unwrap(),
        }
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// Asserts the status and returns the JSON body.
    fn expect(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "body: {}", self.text);
        self.json()
    }

    /// Asserts an error response: status, JSON content type, and exactly
    /// `{"error": code, "message": non-empty sentence}`.
    fn expect_error(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "body: {}", self.text);
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{}",
            self.text
        );
        let body = self.json();
        let obj = body.as_object().expect("error body is an object");
        let keys: HashSet<&str> = obj.keys().map(String::as_str).collect();
        assert_eq!(keys, HashSet::from(["error", "message"]), "{body}");
        assert_eq!(body["error"], code, "{body}");
        let message = body["message"].as_str().unwrap().to_string();
        assert!(!message.is_empty(), "{body}");
        message
    }

    /// Asserts a 204 with an empty body.
    fn expect_no_content(&self) {
        assert_eq!(self.status, 204, "body: {}", self.text);
        assert!(self.text.is_empty(), "{}", self.text);
    }
}

/// Any request, with an optional bearer token and JSON body.
async fn call(
    gw: &Gateway,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let mut req = gw.http.request(method, gw.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    Reply::of(req.send().await.unwrap()).await
}

async fn post(gw: &Gateway, path: &str, body: Value) -> Reply {
    Reply::of(gw.post(path, body).await).await
}

async fn get(gw: &Gateway, path: &str, token: Option<&str>) -> Reply {
    Reply::of(gw.get(path, token).await).await
}

/// POSTs raw bytes with a given content type.
async fn post_raw(gw: &Gateway, path: &str, content_type: Option<&str>, body: Vec<u8>) -> Reply {
    let mut req = gw.http.post(gw.url(path)).body(body);
    if let Some(ct) = content_type {
        req = req.header(CONTENT_TYPE, ct);
    }
    Reply::of(req.send().await.unwrap()).await
}

fn s(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
}

fn access(pair: &Value) -> &str {
    s(&pair["access_token"])
}

fn refresh_token(pair: &Value) -> &str {
    s(&pair["refresh_token"])
}

/// The claims of a JWT, decoded without verification.
fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap()
}

fn sid_of(pair: &Value) -> Uuid {
    Uuid::parse_str(s(&claims_of(access(pair))["sid"])).unwrap()
}

/// Asserts the public `User` shape: exactly these fields, never a hash.
fn assert_user_shape(user: &Value) {
    let keys: HashSet<&str> = user
        .as_object()
        .expect("user is an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        HashSet::from(["id", "email", "role", "is_active", "created_at"]),
        "{user}"
    );
    Uuid::parse_str(s(&user["id"])).expect("id is a uuid");
    assert!(user["is_active"].is_boolean());
    assert!(["user", "admin"].contains(&s(&user["role"])), "{user}");
    chrono::DateTime::parse_from_rfc3339(s(&user["created_at"])).expect("created_at is RFC 3339");
}

/// Asserts the `TokenPair` shape of docs/api.md, "Objects".
fn assert_token_pair(pair: &Value) {
    let keys: HashSet<&str> = pair
        .as_object()
        .expect("token pair is an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        HashSet::from([
            "access_token",
            "token_type",
            "expires_in",
            "refresh_token",
            "refresh_expires_in",
            "user"
        ]),
        "{pair}"
    );
    assert_eq!(pair["token_type"], "Bearer");
    assert_eq!(access(pair).split('.').count(), 3, "a JWT");
    assert!(pair["expires_in"].as_u64().is_some_and(|n| n > 0), "{pair}");
    assert!(pair["refresh_expires_in"].as_u64().is_some(), "{pair}");
    let refresh = B64
        .decode(refresh_token(pair))
        .expect("the refresh token is base64url");
    assert!(refresh.len() >= 32, "at least 256 bits");
    assert_user_shape(&pair["user"]);
}

/// Asserts a response body reveals no password hash and none of `secrets`.
fn assert_no_secrets(text: &str, secrets: &[&str]) {
    for needle in ["hashed_password", "$argon2", "token_hash", "secret"]
        .iter()
        .chain(secrets)
    {
        assert!(!text.contains(needle), "{needle:?} leaked in {text}");
    }
}

/// Token responses must not be cached.
fn assert_no_store(reply: &Reply) {
    assert_eq!(reply.header("cache-control"), Some("no-store"), "{reply:?}");
}

/// 401 from a bearer endpoint without credentials.
fn assert_missing_bearer(reply: &Reply) {
    reply.expect_error(401, "unauthorized");
    assert_eq!(
        reply.header("www-authenticate"),
        Some("Bearer realm=\"portcullis\""),
        "{reply:?}"
    );
}

/// 401 from a bearer endpoint for a bad or revoked token.
fn assert_invalid_bearer(reply: &Reply) {
    reply.expect_error(401, "invalid_token");
    assert_eq!(
        reply.header("www-authenticate"),
        Some("Bearer error=\"invalid_token\""),
        "{reply:?}"
    );
}

/// The access token stops working on /auth/me and on a proxied route (within the 1 s that
/// docs/api.md, "Authentication and authorization" allows for the revocation to propagate), and nothing reaches the upstream.
async fn assert_token_dead(gw: &Gateway, echo: &Echo, token: &str) {
    let died = eventually(Duration::from_secs(3), || async {
        get(gw, "/auth/me", Some(token)).await.status == 401
    })
    .await;
    assert!(died.is_some(), "the access token should stop working");
    assert_invalid_bearer(&get(gw, "/auth/me", Some(token)).await);
    let before = echo.count();
    assert_invalid_bearer(&get(gw, "/api/profile", Some(token)).await);
    assert_eq!(echo.count(), before, "a revoked token reached the upstream");
}

/// The access token works on /auth/me and on a proxied route.
async fn assert_token_alive(gw: &Gateway, token: &str) {
    get(gw, "/auth/me", Some(token)).await.expect(200);
    get(gw, "/api/profile", Some(token)).await.expect(200);
}

async fn refresh(gw: &Gateway, token: &str) -> Reply {
    post(gw, "/auth/refresh", json!({ "refresh_token": token })).await
}

async fn login_reply(gw: &Gateway, email: &str, password: &str) -> Reply {
    post(
        gw,
        "/auth/login",
        json!({ "email": email, "password": password }),
    )
    .await
}

async fn register_reply(gw: &Gateway, email: &str, password: &str) -> Reply {
    post(
        gw,
        "/auth/register",
        json!({ "email": email, "password": password }),
    )
    .await
}

async fn patch_user(gw: &Gateway, token: &str, id: &str, body: Value) -> Reply {
    call(
        gw,
        Method::PATCH,
        &format!("/auth/admin/users/{id}"),
        Some(token),
        Some(body),
    )
    .await
}

/// Value of `portcullis_auth_events_total{event}` (0 when absent).
async fn auth_event(gw: &Gateway, event: &str) -> f64 {
    gw.metrics()
        .await
        .get(&format!(
            "portcullis_auth_events_total{{event=\"{event}\"}}"
        ))
        .copied()
        .unwrap_or(0.0)
}

/// The rate limits count per wall-clock minute: start a burst of attempts far enough from a
/// minute boundary that it cannot straddle two windows.
async fn clear_of_minute_boundary() {
    let into = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        % 60.0;
    if into > 50.0 {
        tokio::time::sleep(Duration::from_secs_f64(60.0 - into + 0.2)).await;
    }
}

async fn setup() -> (Echo, Gateway) {
    let echo = Echo::start().await;
    let gw = Gateway::start(Options::new(echo.addr)).await;
    (echo, gw)
}

async fn setup_with(configure: impl FnOnce(&mut Options)) -> (Echo, Gateway) {
    let echo = Echo::start().await;
    let mut opts = Options::new(echo.addr);
    configure(&mut opts);
    let gw = Gateway::start(opts).await;
    (echo, gw)
}

async fn user_count(gw: &Gateway) -> i64 {
    Db::open(&gw.db_url)
        .await
        .one("SELECT count(*) FROM users", &[])
        .await
        .int()
}

// ---------------------------------------------------------------------------------------------
// register

#[tokio::test]
async fn register_returns_201_with_the_public_user_and_never_a_hash() {
    let (_echo, gw) = setup().await;
    let reply = register_reply(&gw, "  Alice@Example.com ", PASSWORD).await;
    let body = reply.expect(201);
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["user"], "{body}");
    let user = &body["user"];
    assert_user_shape(user);
    assert_eq!(
        user["email"], "Alice@Example.com",
        "stored as given, trimmed"
    );
    assert_eq!(user["role"], "user");
    assert_eq!(user["is_active"], true);
    assert_no_secrets(&reply.text, &[PASSWORD]);

    let db = Db::open(&gw.db_url).await;
    let row = db
        .rows(
            "SELECT id, hashed_password FROM users WHERE email_canonical = 'alice@example.com'",
            &[],
        )
        .await
        .remove(0);
    let id = Uuid::from_slice(&row[0].bytes()).unwrap();
    assert_eq!(id.to_string(), s(&user["id"]));
    let hash = row[1].text();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
}

#[tokio::test]
async fn register_rejects_an_email_taken_in_another_case_with_409_email_taken() {
    let (_echo, gw) = setup().await;
    gw.register("bob@x.io", PASSWORD).await;
    register_reply(&gw, "Bob@X.io", "another-password")
        .await
        .expect_error(409, "email_taken");
    register_reply(&gw, "bob@x.io", PASSWORD)
        .await
        .expect_error(409, "email_taken");
    // NFKC: fullwidth letters fold to the same account.
    register_reply(&gw, "ＢＯＢ@x.io", PASSWORD)
        .await
        .expect_error(409, "email_taken");
    assert_eq!(user_count(&gw).await, 1);
    // The original password still logs in: nothing was overwritten.
    gw.login("BOB@x.io", PASSWORD).await;
}

#[tokio::test]
async fn register_rejects_bad_emails_with_400_and_creates_nothing() {
    let (_echo, gw) = setup().await;
    let too_long = format!("{}@x.io", "a".repeat(250));
    for bad in [
        "",
        "   ",
        "nobody",
        "a@b@c.io",
        "@x.io",
        "bob@",
        "bo b@x.io",
        "bob@x\u{0}.io",
        "tab\t@x.io",
        too_long.as_str(),
    ] {
        let message = register_reply(&gw, bad, PASSWORD)
            .await
            .expect_error(400, "invalid_request");
        assert!(message.contains("email"), "{bad:?}: {message}");
    }
    assert_eq!(user_count(&gw).await, 0);
    // Non-ASCII letters are fine.
    gw.register("jürgen@exämple.de", PASSWORD).await;
}

#[tokio::test]
async fn register_bounds_passwords_in_characters_below_and_bytes_above() {
    let (_echo, gw) = setup().await;
    // min_length = 8 characters.
    let message = register_reply(&gw, "short@x.io", "1234567")
        .await
        .expect_error(400, "invalid_request");
    assert!(message.contains("password"), "{message}");
    // 7 characters are too short even though they are 14 bytes.
    register_reply(&gw, "short@x.io", &"é".repeat(7))
        .await
        .expect_error(400, "invalid_request");
    // 8 two-byte characters are enough.
    gw.register("eight@x.io", &"é".repeat(8)).await;
    gw.login("eight@x.io", &"é".repeat(8)).await;

    // max_length = 1024 bytes.
    let max = "p".repeat(1024);
    gw.register("max@x.io", &max).await;
    gw.login("max@x.io", &max).await;
    let message = register_reply(&gw, "long@x.io", &"p".repeat(1025))
        .await
        .expect_error(400, "invalid_request");
    assert!(message.contains("password"), "{message}");
    // 513 characters but 1026 bytes: too long.
    register_reply(&gw, "long@x.io", &"é".repeat(513))
        .await
        .expect_error(400, "invalid_request");
    // A 60 KiB password is refused as invalid, not hashed and not a 413.
    register_reply(&gw, "long@x.io", &"p".repeat(60 * 1024))
        .await
        .expect_error(400, "invalid_request");
    assert_eq!(user_count(&gw).await, 2);
}

#[tokio::test]
async fn register_allows_nul_bytes_in_passwords_and_uses_all_of_them() {
    let (_echo, gw) = setup().await;
    let password = "pass\0word\0with-nuls";
    gw.register("nul@x.io", password).await;
    gw.login("nul@x.io", password).await;
    // Nothing is cut at the first NUL.
    login_reply(&gw, "nul@x.io", "pass")
        .await
        .expect_error(401, "invalid_credentials");
    login_reply(&gw, "nul@x.io", "pass\0word")
        .await
        .expect_error(401, "invalid_credentials");
}

// ---------------------------------------------------------------------------------------------
// HTTP adaptation shared by every endpoint: 415, 413, 400, 404, 405

#[tokio::test]
async fn auth_endpoints_answer_415_for_bodies_that_are_not_json() {
    let (_echo, gw) = setup().await;
    let body = br#"{"email":"ct@x.io","password":"password-123"}"#.to_vec();
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/jsonx"),
        None,
    ] {
        for path in [
            "/auth/register",
            "/auth/login",
            "/auth/refresh",
            "/auth/logout",
        ] {
            post_raw(&gw, path, ct, body.clone())
                .await
                .expect_error(415, "unsupported_media_type");
        }
    }
    assert_eq!(user_count(&gw).await, 0);
    // Parameters and case do not matter.
    post_raw(
        &gw,
        "/auth/register",
        Some("Application/JSON; charset=utf-8"),
        body,
    )
    .await
    .expect(201);
}

#[tokio::test]
async fn auth_bodies_over_64_kib_are_413_payload_too_large() {
    let (_echo, gw) = setup().await;
    let big = json!({ "email": "big@x.io", "password": "p".repeat(64 * 1024) }).to_string();
    assert!(big.len() > 64 * 1024);
    for path in ["/auth/register", "/auth/login", "/auth/refresh"] {
        post_raw(
            &gw,
            path,
            Some("application/json"),
            big.clone().into_bytes(),
        )
        .await
        .expect_error(413, "payload_too_large");
    }
    // Without a Content-Length (chunked), the limit holds while reading.
    let chunk = "p".repeat(16 * 1024);
    let mut raw = format!(
        "POST /auth/register HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{{\"email\":\"big@x.io\",\"password\":\"\r\n",
        "{\"email\":\"big@x.io\",\"password\":\"".len()
    );
    for _ in 0..5 {
        raw.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    raw.push_str("2\r\n\"}\r\n0\r\n\r\n");
    let response = raw_request(gw.port, raw.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("payload_too_large"), "{response}");
    // A body just under the limit is read and judged on its content.
    let fits = json!({ "email": "fits@x.io", "password": "p".repeat(60 * 1024) }).to_string();
    assert!(fits.len() < 64 * 1024);
    post_raw(
        &gw,
        "/auth/register",
        Some("application/json"),
        fits.into_bytes(),
    )
    .await
    .expect_error(400, "invalid_request");
    assert_eq!(user_count(&gw).await, 0);
}

#[tokio::test]
async fn malformed_json_and_wrongly_typed_fields_are_400_naming_the_field() {
    let (_echo, gw) = setup().await;
    let pair = gw.user("typed@x.io").await;
    let token = access(&pair);
    for path in [
        "/auth/register",
        "/auth/login",
        "/auth/refresh",
        "/auth/logout",
    ] {
        for raw in [
            &b"{not json"[..],
            b"",
            b"[]",
            b"null",
            // An array is not an object, even when its elements would fill the fields.
            br#"["typed@x.io","password-123"]"#,
            br#"["array@x.io","password-123"]"#,
            br#"{"email":"a@x.io","password":"password-123"} trailing"#,
        ] {
            post_raw(&gw, path, Some("application/json"), raw.to_vec())
                .await
                .expect_error(400, "invalid_request");
        }
    }
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "/auth/register",
            json!({"email": 5, "password": PASSWORD}),
            "email",
        ),
        (
            "/auth/register",
            json!({"email": "x@x.io", "password": ["a"]}),
            "password",
        ),
        ("/auth/register", json!({"email": "x@x.io"}), "password"),
        (
            "/auth/login",
            json!({"email": "typed@x.io", "password": 12345678}),
            "password",
        ),
        (
            "/auth/refresh",
            json!({"refresh_token": 7}),
            "refresh_token",
        ),
        ("/auth/refresh", json!({}), "refresh_token"),
        (
            "/auth/logout",
            json!({"refresh_token": null}),
            "refresh_token",
        ),
    ];
    for (path, body, field) in cases {
        let message = post(&gw, path, body.clone())
            .await
            .expect_error(400, "invalid_request");
        assert!(message.contains(field), "{path} {body}: {message}");
    }
    let message = call(
        &gw,
        Method::POST,
        "/auth/password",
        Some(token),
        Some(json!({"current_password": PASSWORD, "new_password": false})),
    )
    .await
    .expect_error(400, "invalid_request");
    assert!(message.contains("new_password"), "{message}");
    assert_eq!(user_count(&gw).await, 1);
}

#[tokio::test]
async fn unknown_auth_paths_are_404_json_and_wrong_methods_are_405_with_allow() {
    let (_echo, gw) = setup().await;
    let pair = gw.user("paths@x.io").await;
    let token = access(&pair);
    for path in [
        "/auth/nope",
        "/auth",
        "/auth/",
        "/auth/login/extra",
        "/auth/sessions/not-a-uuid",
        "/auth/admin/users/not-a-uuid",
    ] {
        get(&gw, path, Some(token))
            .await
            .expect_error(404, "not_found");
    }
    let id = Uuid::new_v4();
    let cases: Vec<(Method, String, &str)> = vec![
        (Method::GET, "/auth/register".into(), "POST"),
        (Method::GET, "/auth/login".into(), "POST"),
        (Method::PUT, "/auth/refresh".into(), "POST"),
        (Method::GET, "/auth/logout".into(), "POST"),
        (Method::GET, "/auth/logout-all".into(), "POST"),
        (Method::GET, "/auth/password".into(), "POST"),
        (Method::POST, "/auth/me".into(), "GET"),
        (Method::DELETE, "/auth/sessions".into(), "GET"),
        (Method::GET, format!("/auth/sessions/{id}"), "DELETE"),
        (Method::POST, "/auth/jwks.json".into(), "GET"),
        (Method::DELETE, "/.well-known/jwks.json".into(), "GET"),
        (Method::POST, "/auth/admin/users".into(), "GET"),
        (Method::GET, format!("/auth/admin/users/{id}"), "PATCH"),
        (
            Method::GET,
            format!("/auth/admin/users/{id}/sessions"),
            "DELETE",
        ),
    ];
    for (method, path, allowed) in cases {
        let reply = call(&gw, method.clone(), &path, Some(token), None).await;
        reply.expect_error(405, "method_not_allowed");
        let allow = reply
            .header("allow")
            .unwrap_or_else(|| panic!("{method} {path}: no Allow header"));
        assert!(
            allow.split(',').any(|m| m.trim() == allowed),
            "{method} {path}: Allow: {allow}"
        );
        assert!(
            !allow.split(',').any(|m| m.trim() == method.as_str()),
            "{method} {path}: Allow: {allow}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// login

#[tokio::test]
async fn login_returns_an_exact_token_pair_that_is_not_cached() {
    let (_echo, gw) = setup().await;
    let registered = gw.register("login@x.io", PASSWORD).await;
    let reply = login_reply(&gw, "LOGIN@X.IO", PASSWORD).await;
    let pair = reply.expect(200);
    assert_no_store(&reply);
    assert_token_pair(&pair);
    assert_eq!(pair["user"], registered["user"]);
    assert_eq!(pair["expires_in"], 900);
    let refresh_in = pair["refresh_expires_in"].as_u64().unwrap();
    assert!(
        (2_592_000 - 5..=2_592_000).contains(&refresh_in),
        "{refresh_in}"
    );
    assert_no_secrets(&reply.text, &[PASSWORD]);
    // The refresh token is stored only as its SHA-256.
    let db = Db::open(&gw.db_url).await;
    let n = db
        .one(
            "SELECT count(*) FROM refresh_tokens WHERE token_hash = $1",
            &[Arg::Bytes(
                Sha256::digest(refresh_token(&pair).as_bytes()).to_vec(),
            )],
        )
        .await
        .int();
    assert_eq!(n, 1);
    assert_token_alive(&gw, access(&pair)).await;
}

#[tokio::test]
async fn login_failures_for_an_unknown_email_and_a_wrong_password_are_identical() {
    let (_echo, gw) = setup().await;
    gw.register("known@x.io", PASSWORD).await;
    let unknown = login_reply(&gw, "unknown@x.io", PASSWORD).await;
    let wrong = login_reply(&gw, "known@x.io", "wrong-password").await;
    let too_long = login_reply(&gw, "known@x.io", &"p".repeat(2000)).await;
    unknown.expect_error(401, "invalid_credentials");
    for other in [&wrong, &too_long] {
        other.expect_error(401, "invalid_credentials");
        assert_eq!(other.text, unknown.text, "bodies must be identical");
        assert_eq!(other.header("content-type"), unknown.header("content-type"));
        assert_eq!(
            other.header("www-authenticate"),
            unknown.header("www-authenticate")
        );
    }
}

/// The login use-case in this process, on a fresh database, so the test can count what the
/// password hasher does. No timings: the same work is proved by counting it, and its cost by
/// the dummy hash's parameters (`auth::password` unit tests: the dummy is argon2id with exactly
/// the configured m/t/p, and argon2 verifies with the parameters of the hash it is given).
#[tokio::test]
async fn login_for_an_unknown_email_runs_the_same_argon2_verification_as_a_wrong_password() {
    use portcullis::auth::password::Hasher;
    use portcullis::auth::{AuthError, AuthService, ClientInfo};

    let db = fresh_db().await;
    let keys = tempfile::tempdir().unwrap();
    let mut config = portcullis::config::Config::default();
    config.database.url = db.clone();
    config.tokens.keys_dir = keys.path().display().to_string();
    config.passwords.argon2_memory_kib = 256;
    config.passwords.argon2_iterations = 1;
    let store = portcullis::store::Store::new(&db, 2).unwrap();
    let tokens =
        std::sync::Arc::new(portcullis::tokens::TokenService::new(&config.tokens).unwrap());
    let hasher = Hasher::new(&config.passwords).unwrap();
    let auth = AuthService::new(&config, store, tokens, hasher.clone()).unwrap();
    let client = ClientInfo::default();
    auth.register("known@x.io", PASSWORD.into(), &client)
        .await
        .unwrap();

    let too_long = "x".repeat(config.passwords.max_length + 1);
    for (what, email, password) in [
        ("wrong password", "known@x.io", "wrong-password"),
        ("unknown email", "nobody@x.io", "wrong-password"),
        ("unknown email, a real password", "nobody@x.io", PASSWORD),
        ("password over max_length", "known@x.io", too_long.as_str()),
    ] {
        let before = hasher.verifications();
        let result = auth.login(email, password.to_string(), &client).await;
        assert!(
            matches!(result, Err(AuthError::InvalidCredentials)),
            "{what}: {result:?}"
        );
        assert_eq!(
            hasher.verifications(),
            before + 1,
            "{what}: one argon2 verification"
        );
    }
    let before = hasher.verifications();
    auth.login("known@x.io", PASSWORD.into(), &client)
        .await
        .unwrap();
    assert_eq!(hasher.verifications(), before + 1, "right password");
}

#[tokio::test]
async fn a_disabled_account_is_revealed_only_to_the_right_password() {
    let (_echo, gw) = setup().await;
    let admin = gw.admin_user("root@x.io").await;
    let pair = gw.user("disabled@x.io").await;
    patch_user(
        &gw,
        access(&admin),
        s(&pair["user"]["id"]),
        json!({"is_active": false}),
    )
    .await
    .expect(200);
    login_reply(&gw, "disabled@x.io", PASSWORD)
        .await
        .expect_error(403, "account_disabled");
    let wrong = login_reply(&gw, "disabled@x.io", "wrong-password").await;
    wrong.expect_error(401, "invalid_credentials");
    let unknown = login_reply(&gw, "nobody@x.io", "wrong-password").await;
    assert_eq!(wrong.text, unknown.text);
}

// ---------------------------------------------------------------------------------------------
// refresh (§4.3)

#[tokio::test]
async fn refresh_rotates_the_token_and_spends_the_old_one() {
    let (_echo, gw) = setup().await;
    let first = gw.user("rotate@x.io").await;
    let reply = refresh(&gw, refresh_token(&first)).await;
    let second = reply.expect(200);
    assert_no_store(&reply);
    assert_token_pair(&second);
    assert_ne!(refresh_token(&second), refresh_token(&first));
    assert_ne!(access(&second), access(&first));
    assert_eq!(second["user"], first["user"]);
    assert_eq!(sid_of(&second), sid_of(&first), "same session");
    assert!(
        second["refresh_expires_in"].as_u64() <= first["refresh_expires_in"].as_u64(),
        "rotation does not extend the session"
    );
    assert_no_secrets(&reply.text, &[PASSWORD]);
    assert_token_alive(&gw, access(&second)).await;

    // The old token is spent: within the grace window it only ever yields the same successor.
    let again = refresh(&gw, refresh_token(&first)).await.expect(200);
    assert_eq!(refresh_token(&again), refresh_token(&second));
    // The successor rotates on.
    let third = refresh(&gw, refresh_token(&second)).await.expect(200);
    assert_ne!(refresh_token(&third), refresh_token(&second));
    assert_ne!(refresh_token(&third), refresh_token(&first));

    let db = Db::open(&gw.db_url).await;
    let live = db
        .one(
            "SELECT count(*) FROM refresh_tokens
             WHERE token_family = $1 AND used_at IS NULL AND revoked_at IS NULL",
            &[Arg::Uuid(sid_of(&first))],
        )
        .await
        .int();
    assert_eq!(live, 1, "exactly one live refresh token per session");
}

#[tokio::test]
async fn concurrent_refreshes_of_one_token_all_get_the_same_single_successor() {
    let (_echo, gw) = setup().await;
    let pair = gw.user("race@x.io").await;
    let token = refresh_token(&pair).to_string();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let req = gw
                .http
                .post(gw.url("/auth/refresh"))
                .json(&json!({ "refresh_token": token }));
            tokio::spawn(async move { Reply::of(req.send().await.unwrap()).await })
        })
        .collect();
    let mut successors = HashSet::new();
    for task in tasks {
        let pair = task.await.unwrap().expect(200);
        successors.insert(refresh_token(&pair).to_string());
    }
    assert_eq!(successors.len(), 1, "{successors:?}");
    let successor = successors.into_iter().next().unwrap();
    assert_ne!(successor, token);

    let db = Db::open(&gw.db_url).await;
    let sid = sid_of(&pair);
    let live: Vec<Vec<u8>> = db
        .rows(
            "SELECT token_hash FROM refresh_tokens
             WHERE token_family = $1 AND used_at IS NULL AND revoked_at IS NULL",
            &[Arg::Uuid(sid)],
        )
        .await
        .iter()
        .map(|r| r[0].bytes())
        .collect();
    assert_eq!(live, vec![Sha256::digest(successor.as_bytes()).to_vec()]);
    let total = db
        .one(
            "SELECT count(*) FROM refresh_tokens WHERE token_family = $1",
            &[Arg::Uuid(sid)],
        )
        .await
        .int();
    assert_eq!(total, 2, "the parent and one successor");
    // The session is intact and the successor rotates on.
    refresh(&gw, &successor).await.expect(200);
}

#[tokio::test]
async fn refresh_token_replay_after_the_grace_window_revokes_the_whole_session() {
    let (echo, gw) = setup_with(|o| o.tokens = "refresh_reuse_grace_secs = 1\n".into()).await;
    let stolen = gw.user("theft@x.io").await;
    let other_session = gw.login("theft@x.io", PASSWORD).await;
    let rotated = refresh(&gw, refresh_token(&stolen)).await.expect(200);
    // Inside the grace window a replay is a benign race: the same successor.
    let racing = refresh(&gw, refresh_token(&stolen)).await.expect(200);
    assert_eq!(refresh_token(&racing), refresh_token(&rotated));
    assert_token_alive(&gw, access(&rotated)).await;
    let reuse_before = auth_event(&gw, "refresh_reuse_detected").await;

    tokio::time::sleep(Duration::from_millis(1300)).await;
    let replay = refresh(&gw, refresh_token(&stolen)).await;
    replay.expect_error(401, "invalid_token");
    assert_eq!(
        auth_event(&gw, "refresh_reuse_detected").await,
        reuse_before + 1.0
    );

    // Every refresh token of the family is dead, the successor included...
    refresh(&gw, refresh_token(&rotated))
        .await
        .expect_error(401, "invalid_token");
    refresh(&gw, refresh_token(&stolen))
        .await
        .expect_error(401, "invalid_token");
    // ...and every access token of it, on /auth and on the proxy path.
    for pair in [&stolen, &rotated, &racing] {
        assert_token_dead(&gw, &echo, access(pair)).await;
    }
    let db = Db::open(&gw.db_url).await;
    let sid = sid_of(&stolen);
    let revoked = db
        .one(
            "SELECT revoked_at IS NOT NULL FROM sessions WHERE id = $1",
            &[Arg::Uuid(sid)],
        )
        .await
        .bool();
    assert!(revoked);
    let live = db
        .one(
            "SELECT count(*) FROM refresh_tokens WHERE token_family = $1 AND revoked_at IS NULL",
            &[Arg::Uuid(sid)],
        )
        .await
        .int();
    assert_eq!(live, 0);
    // Only that session: the user's other session lives on.
    assert_token_alive(&gw, access(&other_session)).await;
    refresh(&gw, refresh_token(&other_session))
        .await
        .expect(200);
}

#[tokio::test]
async fn no_password_hash_token_or_secret_reaches_the_log_at_debug_level() {
    no_secret_reaches_the_log_at("debug").await;
}

#[tokio::test]
async fn no_password_hash_token_or_secret_reaches_the_log_even_at_trace_level() {
    no_secret_reaches_the_log_at("trace").await;
}

/// The whole flow at `level` (`log.level`, as an operator sets it), then every secret it
/// produced looked for in the log: passwords, hashes, tokens, a client's cookie, an upstream's
/// `Set-Cookie`, a forwarded `Authorization` and query strings of failed proxy attempts.
async fn no_secret_reaches_the_log_at(level: &str) {
    let down = crate::harness::free_port();
    let (_echo, gw) = setup_with(|o| {
        // log.level decides only when RUST_LOG is unset (the harness sets it).
        o.env.push(("RUST_LOG".into(), level.into()));
        o.extra = format!(
            r#"
[[upstream]]
name = "down"
addrs = ["127.0.0.1:{down}"]
connect_timeout_ms = 300

[[route]]
prefix = "/fwd/"
upstream = "api"
forward_token = true

[[route]]
prefix = "/down/"
upstream = "down"
auth = "none"
"#
        );
    })
    .await;
    let email = "logged@x.io";
    let new_password = "another-password-456";
    let first = gw.user(email).await;
    let second = refresh(&gw, refresh_token(&first)).await.expect(200);
    get(&gw, "/auth/me", Some(access(&second)))
        .await
        .expect(200);
    let proxied = gw
        .http
        .get(gw.url("/api/x"))
        .bearer_auth(access(&second))
        .send()
        .await
        .unwrap();
    assert_eq!(proxied.status(), 200);
    // A forwarded token, a client's cookie and an upstream's Set-Cookie on the proxy path; a
    // query string on a 504 (the echo's /slow outlasts read_timeout_ms) and on a 502.
    let cookie = "app_session=client-cookie-secret-9d2c";
    let forwarded = gw
        .http
        .get(gw.url("/fwd/set-cookie?access=query-secret-on-200"))
        .bearer_auth(access(&second))
        .header("Cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(forwarded.status(), 200);
    assert_eq!(
        forwarded.headers()["set-cookie"],
        crate::harness::ECHO_SET_COOKIE
    );
    let slow = gw
        .http
        .get(gw.url("/api/slow?token=query-secret-on-504"))
        .bearer_auth(access(&second))
        .send()
        .await
        .unwrap();
    assert_eq!(slow.status(), 504);
    let refused = gw
        .http
        .post(gw.url("/down/x?token=query-secret-on-502"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 502);
    call(
        &gw,
        Method::POST,
        "/auth/password",
        Some(access(&second)),
        Some(json!({"current_password": PASSWORD, "new_password": new_password})),
    )
    .await
    .expect_no_content();
    let third = gw.login(email, new_password).await;
    post(
        &gw,
        "/auth/logout",
        json!({"refresh_token": refresh_token(&third)}),
    )
    .await
    .expect_no_content();

    // Every secret the flow produced, in each form a log line could print it.
    let db = Db::open(&gw.db_url).await;
    let mut secrets: Vec<String> = vec![
        PASSWORD.into(),
        new_password.into(),
        "client-cookie-secret-9d2c".into(),
        "upstream-set-cookie-secret-5b1e".into(),
        "query-secret-on-200".into(),
        "query-secret-on-504".into(),
        "query-secret-on-502".into(),
    ];
    for pair in [&first, &second, &third] {
        secrets.push(access(pair).into());
        secrets.push(refresh_token(pair).into());
    }
    let hash = db
        .one(
            "SELECT hashed_password FROM users WHERE email = $1",
            &[Arg::Text(email.to_string())],
        )
        .await
        .text();
    secrets.push(hash.clone());
    // The salt and digest parts on their own, too.
    secrets.extend(hash.rsplit('$').take(2).map(String::from));
    let mut blobs: Vec<Vec<u8>> = Vec::new();
    for row in db.rows("SELECT secret FROM sessions", &[]).await {
        blobs.push(row[0].bytes());
    }
    for row in db.rows("SELECT token_hash FROM refresh_tokens", &[]).await {
        blobs.push(row[0].bytes());
    }
    assert!(blobs.len() >= 5, "sessions and refresh tokens were stored");
    for blob in &blobs {
        secrets.push(hex::encode(blob));
        secrets.push(B64.encode(blob));
        secrets.push(format!("{blob:?}"));
        // tokio-postgres prints bytea parameters as a byte list.
        secrets.push(
            format!("{:?}", &blob[..8])
                .trim_end_matches(']')
                .to_string(),
        );
    }
    drop(db);
    let log = gw.log();
    assert!(log.contains("DEBUG"), "the gateway logged verbosely: {log}");
    // The failed proxy attempts were logged (by the request's normalized path).
    assert!(log.contains("/api/slow"), "no line for the 504: {log}");
    for secret in &secrets {
        let leak = log.lines().find(|l| l.contains(secret.as_str()));
        assert!(leak.is_none(), "a secret reached the log: {leak:?}");
    }
}

#[tokio::test]
async fn a_spent_token_cannot_be_walked_forward_to_the_live_one_inside_the_grace_window() {
    // A long grace: every presentation below happens inside it.
    let (echo, gw) = setup_with(|o| o.tokens = "refresh_reuse_grace_secs = 600\n".into()).await;
    for old_is_parent in [true, false] {
        let email = format!("walk-{old_is_parent}@x.io");
        let r0 = gw.user(&email).await;
        let r1 = refresh(&gw, refresh_token(&r0)).await.expect(200);
        let r2 = refresh(&gw, refresh_token(&r1)).await.expect(200);
        assert_token_alive(&gw, access(&r2)).await;
        // R0's successor R1 is spent; R1's successor R2 is live but R1 itself is two steps
        // from R0. Either old token presented again is reuse, not a race.
        let old = if old_is_parent { &r0 } else { &r1 };
        let reuse_before = auth_event(&gw, "refresh_reuse_detected").await;
        let walked = refresh(&gw, refresh_token(old)).await;
        if old_is_parent {
            walked.expect_error(401, "invalid_token");
            assert_eq!(
                auth_event(&gw, "refresh_reuse_detected").await,
                reuse_before + 1.0
            );
            // The family is revoked: the live token and its access token die with it.
            refresh(&gw, refresh_token(&r2))
                .await
                .expect_error(401, "invalid_token");
            assert_token_dead(&gw, &echo, access(&r2)).await;
        } else {
            // R1's successor R2 is still live: a benign race, the same R2 again.
            let again = walked.expect(200);
            assert_eq!(refresh_token(&again), refresh_token(&r2));
            // Once R2 is spent, R1 is reuse too.
            let r3 = refresh(&gw, refresh_token(&r2)).await.expect(200);
            refresh(&gw, refresh_token(&r1))
                .await
                .expect_error(401, "invalid_token");
            refresh(&gw, refresh_token(&r3))
                .await
                .expect_error(401, "invalid_token");
            assert_token_dead(&gw, &echo, access(&r3)).await;
        }
    }
}

#[tokio::test]
async fn with_a_zero_grace_any_second_use_of_a_refresh_token_is_theft() {
    let (echo, gw) = setup_with(|o| o.tokens = "refresh_reuse_grace_secs = 0\n".into()).await;
    let first = gw.user("nograce@x.io").await;
    let second = refresh(&gw, refresh_token(&first)).await.expect(200);
    refresh(&gw, refresh_token(&first))
        .await
        .expect_error(401, "invalid_token");
    refresh(&gw, refresh_token(&second))
        .await
        .expect_error(401, "invalid_token");
    assert_token_dead(&gw, &echo, access(&second)).await;
}

#[tokio::test]
async fn refresh_tokens_expire_absolutely_from_login_even_after_rotation() {
    let (_echo, gw) =
        setup_with(|o| o.tokens = "refresh_ttl_secs = 2\naccess_ttl_secs = 1\n".into()).await;
    gw.register("ttl@x.io", PASSWORD).await;
    let start = Instant::now();
    let first = gw.login("ttl@x.io", PASSWORD).await;
    assert_eq!(first["expires_in"], 1);
    assert!(first["refresh_expires_in"].as_u64().unwrap() <= 2);
    let mut current = first;
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let next = refresh(&gw, refresh_token(&current)).await.expect(200);
        assert!(next["refresh_expires_in"].as_u64().unwrap() <= 1);
        current = next;
    }
    // Past the absolute end, counted from login: the latest successor is refused too.
    let left = Duration::from_millis(2300).saturating_sub(start.elapsed());
    tokio::time::sleep(left).await;
    refresh(&gw, refresh_token(&current))
        .await
        .expect_error(401, "invalid_token");
}

#[tokio::test]
async fn unknown_refresh_tokens_are_401_invalid_token() {
    let (_echo, gw) = setup().await;
    gw.user("unknown-refresh@x.io").await;
    let random = B64.encode(rand_bytes());
    for token in [random.as_str(), "", "not a token", &"x".repeat(4000)] {
        refresh(&gw, token).await.expect_error(401, "invalid_token");
    }
}

fn rand_bytes() -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&Sha256::digest(Uuid::new_v4().as_bytes()));
    out
}

// ---------------------------------------------------------------------------------------------
// logout, logout-all

#[tokio::test]
async fn logout_revokes_that_session_and_its_access_token() {
    let (echo, gw) = setup().await;
    let pair = gw.user("logout@x.io").await;
    let other = gw.login("logout@x.io", PASSWORD).await;
    let before = auth_event(&gw, "logout").await;
    post(
        &gw,
        "/auth/logout",
        json!({ "refresh_token": refresh_token(&pair) }),
    )
    .await
    .expect_no_content();
    assert_eq!(auth_event(&gw, "logout").await, before + 1.0);
    refresh(&gw, refresh_token(&pair))
        .await
        .expect_error(401, "invalid_token");
    assert_token_dead(&gw, &echo, access(&pair)).await;
    assert_token_alive(&gw, access(&other)).await;
    refresh(&gw, refresh_token(&other)).await.expect(200);
}

#[tokio::test]
async fn logout_answers_204_for_unknown_and_already_revoked_tokens_and_400_without_one() {
    let (_echo, gw) = setup().await;
    let pair = gw.user("logout-twice@x.io").await;
    let body = json!({ "refresh_token": refresh_token(&pair) });
    post(&gw, "/auth/logout", body.clone())
        .await
        .expect_no_content();
    post(&gw, "/auth/logout", body).await.expect_no_content();
    post(
        &gw,
        "/auth/logout",
        json!({ "refresh_token": B64.encode(rand_bytes()) }),
    )
    .await
    .expect_no_content();
    post(&gw, "/auth/logout", json!({ "refresh_token": "" }))
        .await
        .expect_no_content();
    let message = post(&gw, "/auth/logout", json!({}))
        .await
        .expect_error(400, "invalid_request");
    assert!(message.contains("refresh_token"), "{message}");
}

#[tokio::test]
async fn logout_all_revokes_every_session_of_the_caller_only() {
    let (echo, gw) = setup().await;
    let a = gw.user("all@x.io").await;
    let b = gw.login("all@x.io", PASSWORD).await;
    let bystander = gw.user("bystander@x.io").await;
    call(
        &gw,
        Method::POST,
        "/auth/logout-all",
        Some(access(&a)),
        None,
    )
    .await
    .expect_no_content();
    for pair in [&a, &b] {
        assert_token_dead(&gw, &echo, access(pair)).await;
        refresh(&gw, refresh_token(pair))
            .await
            .expect_error(401, "invalid_token");
    }
    assert_token_alive(&gw, access(&bystander)).await;
    // Logging in again opens a working session.
    let again = gw.login("all@x.io", PASSWORD).await;
    assert_token_alive(&gw, access(&again)).await;
}

#[tokio::test]
async fn bearer_endpoints_answer_401_with_www_authenticate_without_a_valid_token() {
    let (_echo, gw) = setup().await;
    let pair = gw.user("bearer@x.io").await;
    // Change the first character of the signature (its last one may only carry padding bits,
    // and may already be the replacement).
    let token = access(&pair);
    let sig_start = token.rfind('.').unwrap() + 1;
    let replacement = if token[sig_start..].starts_with('A') {
        "B"
    } else {
        "A"
    };
    let forged = format!(
        "{}{replacement}{}",
        &token[..sig_start],
        &token[sig_start + 1..]
    );
    assert_ne!(forged, token);
    let id = Uuid::new_v4();
    let endpoints: Vec<(Method, String, Option<Value>)> = vec![
        (Method::POST, "/auth/logout-all".into(), None),
        (Method::GET, "/auth/me".into(), None),
        (Method::GET, "/auth/sessions".into(), None),
        (
            Method::DELETE,
            format!("/auth/sessions/{}", sid_of(&pair)),
            None,
        ),
        (
            Method::POST,
            "/auth/password".into(),
            Some(json!({"current_password": PASSWORD, "new_password": "new-password-1"})),
        ),
        (Method::GET, "/auth/admin/users".into(), None),
        (
            Method::PATCH,
            format!("/auth/admin/users/{id}"),
            Some(json!({"role": "admin"})),
        ),
        (
            Method::DELETE,
            format!("/auth/admin/users/{id}/sessions"),
            None,
        ),
    ];
    for (method, path, body) in endpoints {
        assert_missing_bearer(&call(&gw, method.clone(), &path, None, body.clone()).await);
        // A non-Bearer scheme is no credential either.
        let reply = Reply::of(
            gw.http
                .request(method.clone(), gw.url(&path))
                .header("Authorization", "Basic dXNlcjpwYXNz")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_missing_bearer(&reply);
        for bad in [forged.as_str(), "not-a-jwt", refresh_token(&pair)] {
            assert_invalid_bearer(&call(&gw, method.clone(), &path, Some(bad), body.clone()).await);
        }
    }
    // Nothing above changed anything.
    assert_token_alive(&gw, access(&pair)).await;
    gw.login("bearer@x.io", PASSWORD).await;
}

// ---------------------------------------------------------------------------------------------
// me, sessions

#[tokio::test]
async fn me_returns_the_callers_user() {
    let (_echo, gw) = setup().await;
    let pair = gw.user("me@x.io").await;
    let reply = get(&gw, "/auth/me", Some(access(&pair))).await;
    let body = reply.expect(200);
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["user"]);
    assert_eq!(body["user"], pair["user"]);
    assert_no_secrets(&reply.text, &[PASSWORD, refresh_token(&pair)]);
    // The scheme is case-insensitive.
    let reply = Reply::of(
        gw.http
            .get(gw.url("/auth/me"))
            .header("Authorization", format!("bEaReR {}", access(&pair)))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.expect(200)["user"], pair["user"]);
}

#[tokio::test]
async fn sessions_lists_live_sessions_with_exactly_one_current() {
    let (_echo, gw) = setup().await;
    gw.register("sessions@x.io", PASSWORD).await;
    let login_as = |agent: &'static str| {
        let req = gw
            .http
            .post(gw.url("/auth/login"))
            .header("User-Agent", agent)
            // Not a trusted proxy: a client-sent X-Forwarded-For is not the session's IP.
            .header("X-Forwarded-For", "203.0.113.7")
            .json(&json!({"email": "sessions@x.io", "password": PASSWORD}));
        async move { Reply::of(req.send().await.unwrap()).await.expect(200) }
    };
    let phone = login_as("phone/1.0").await;
    let laptop = login_as("laptop/2.0").await;
    let revoked = login_as("gone/3.0").await;
    post(
        &gw,
        "/auth/logout",
        json!({"refresh_token": refresh_token(&revoked)}),
    )
    .await
    .expect_no_content();

    let reply = get(&gw, "/auth/sessions", Some(access(&phone))).await;
    let body = reply.expect(200);
    assert_no_secrets(
        &reply.text,
        &[refresh_token(&phone), refresh_token(&laptop)],
    );
    let sessions = body["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "revoked sessions are not listed: {body}");
    for session in sessions {
        let keys: HashSet<&str> = session
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            HashSet::from([
                "id",
                "created_at",
                "last_used_at",
                "user_agent",
                "ip",
                "current"
            ]),
            "{session}"
        );
        chrono::DateTime::parse_from_rfc3339(s(&session["created_at"])).unwrap();
        chrono::DateTime::parse_from_rfc3339(s(&session["last_used_at"])).unwrap();
        assert_eq!(session["ip"], "127.0.0.1");
    }
    let current: Vec<&Value> = sessions.iter().filter(|s| s["current"] == true).collect();
    assert_eq!(current.len(), 1, "{body}");
    assert_eq!(s(&current[0]["id"]), sid_of(&phone).to_string());
    assert_eq!(current[0]["user_agent"], "phone/1.0");
    let other = sessions.iter().find(|s| s["current"] == false).unwrap();
    assert_eq!(s(&other["id"]), sid_of(&laptop).to_string());
    assert_eq!(other["user_agent"], "laptop/2.0");

    // From the other device, the other one is current.
    let body = get(&gw, "/auth/sessions", Some(access(&laptop)))
        .await
        .expect(200);
    let current: Vec<String> = body["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["current"] == true)
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(current, vec![sid_of(&laptop).to_string()]);
}

#[tokio::test]
async fn deleting_a_session_revokes_it_and_foreign_or_unknown_ids_are_404() {
    let (echo, gw) = setup().await;
    let mine = gw.user("owner@x.io").await;
    let second = gw.login("owner@x.io", PASSWORD).await;
    let stranger = gw.user("stranger@x.io").await;

    call(
        &gw,
        Method::DELETE,
        &format!("/auth/sessions/{}", sid_of(&second)),
        Some(access(&mine)),
        None,
    )
    .await
    .expect_no_content();
    assert_token_dead(&gw, &echo, access(&second)).await;
    refresh(&gw, refresh_token(&second))
        .await
        .expect_error(401, "invalid_token");
    assert_token_alive(&gw, access(&mine)).await;
    let listed = get(&gw, "/auth/sessions", Some(access(&mine)))
        .await
        .expect(200);
    assert_eq!(listed["sessions"].as_array().unwrap().len(), 1);

    for sid in [sid_of(&stranger), Uuid::new_v4(), sid_of(&second)] {
        call(
            &gw,
            Method::DELETE,
            &format!("/auth/sessions/{sid}"),
            Some(access(&mine)),
            None,
        )
        .await
        .expect_error(404, "not_found");
    }
    // The stranger's session was not touched.
    assert_token_alive(&gw, access(&stranger)).await;
    refresh(&gw, refresh_token(&stranger)).await.expect(200);

    // Deleting one's own current session is allowed and ends it.
    call(
        &gw,
        Method::DELETE,
        &format!("/auth/sessions/{}", sid_of(&mine)),
        Some(access(&mine)),
        None,
    )
    .await
    .expect_no_content();
    assert_token_dead(&gw, &echo, access(&mine)).await;
}

// ---------------------------------------------------------------------------------------------
// password change

async fn change_password(gw: &Gateway, token: &str, current: &str, new: &str) -> Reply {
    call(
        gw,
        Method::POST,
        "/auth/password",
        Some(token),
        Some(json!({"current_password": current, "new_password": new})),
    )
    .await
}

#[tokio::test]
async fn password_change_revokes_other_sessions_but_keeps_the_current_one() {
    let (echo, gw) = setup().await;
    let current = gw.user("change@x.io").await;
    let other = gw.login("change@x.io", PASSWORD).await;
    let bystander = gw.user("bystander@x.io").await;
    change_password(&gw, access(&current), PASSWORD, "brand-new-password")
        .await
        .expect_no_content();

    assert_token_dead(&gw, &echo, access(&other)).await;
    refresh(&gw, refresh_token(&other))
        .await
        .expect_error(401, "invalid_token");
    // Checked after the other session is seen dead, so the revocation has been applied.
    assert_token_alive(&gw, access(&current)).await;
    let rotated = refresh(&gw, refresh_token(&current)).await.expect(200);
    assert_token_alive(&gw, access(&rotated)).await;
    assert_token_alive(&gw, access(&bystander)).await;

    gw.login("change@x.io", "brand-new-password").await;
    login_reply(&gw, "change@x.io", PASSWORD)
        .await
        .expect_error(401, "invalid_credentials");
}

#[tokio::test]
async fn password_change_refuses_a_wrong_current_password_and_out_of_bounds_new_ones() {
    let (_echo, gw) = setup().await;
    let pair = gw.user("refuse@x.io").await;
    let other = gw.login("refuse@x.io", PASSWORD).await;
    let token = access(&pair);
    change_password(&gw, token, "wrong-password", "brand-new-password")
        .await
        .expect_error(401, "invalid_credentials");
    let message = change_password(&gw, token, PASSWORD, "short")
        .await
        .expect_error(400, "invalid_request");
    assert!(message.contains("new_password"), "{message}");
    change_password(&gw, token, PASSWORD, &"p".repeat(1025))
        .await
        .expect_error(400, "invalid_request");
    call(
        &gw,
        Method::POST,
        "/auth/password",
        Some(token),
        Some(json!({"new_password": "brand-new-password"})),
    )
    .await
    .expect_error(400, "invalid_request");
    // Nothing changed: the old password works and no session was revoked.
    gw.login("refuse@x.io", PASSWORD).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    get(&gw, "/auth/me", Some(access(&other))).await.expect(200);
    refresh(&gw, refresh_token(&other)).await.expect(200);
}

// ---------------------------------------------------------------------------------------------
// JWKS and the access token (§4.1)

#[derive(serde::Serialize, serde::Deserialize)]
struct GatewayClaims {
    role: String,
    sid: String,
    email: String,
}

#[tokio::test]
async fn jwks_is_served_at_both_paths_and_lets_an_independent_consumer_verify_tokens() {
    use jwt_simple::prelude::*;

    let (_echo, gw) = setup().await;
    let pair = gw.user("Consumer@X.io").await;
    let token = access(&pair);

    let reply = get(&gw, "/auth/jwks.json", None).await;
    let jwks = reply.expect(200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(
        get(&gw, "/.well-known/jwks.json", None).await.expect(200),
        jwks
    );
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{jwks}");
    let jwk = &keys[0];
    assert_eq!(jwk["kty"], "OKP");
    assert_eq!(jwk["crv"], "Ed25519");
    assert!(
        jwk.get("d").is_none(),
        "private key material in JWKS: {jwk}"
    );
    let kid = s(&jwk["kid"]).to_string();
    let x = B64.decode(s(&jwk["x"])).unwrap();

    let meta = Token::decode_metadata(token).unwrap();
    assert_eq!(meta.algorithm(), "EdDSA");
    assert_eq!(meta.signature_type(), Some("at+jwt"));
    assert_eq!(meta.key_id(), Some(kid.as_str()));

    let key = Ed25519PublicKey::from_bytes(&x).unwrap().with_key_id(&kid);
    let options = VerificationOptions {
        allowed_issuers: Some(HashSet::from(["portcullis".to_string()])),
        allowed_audiences: Some(HashSet::from(["portcullis".to_string()])),
        required_signature_type: Some("at+jwt".to_string()),
        required_key_id: Some(kid.clone()),
        time_tolerance: Some(jwt_simple::prelude::Duration::from_secs(30)),
        ..Default::default()
    };
    let claims = key
        .verify_token::<GatewayClaims>(token, Some(options.clone()))
        .expect("an independent consumer verifies the access token");
    assert_eq!(claims.issuer.as_deref(), Some("portcullis"));
    assert!(
        claims
            .audiences
            .as_ref()
            .unwrap()
            .contains(&HashSet::from(["portcullis".to_string()]))
    );
    assert_eq!(claims.subject.as_deref(), Some(s(&pair["user"]["id"])));
    assert_eq!(claims.custom.role, "user");
    assert_eq!(claims.custom.email, "Consumer@X.io");
    assert!(claims.jwt_id.is_some());
    let (iat, exp) = (claims.issued_at.unwrap(), claims.expires_at.unwrap());
    assert_eq!((exp - iat).as_secs(), 900);
    assert!(claims.invalid_before.is_some(), "nbf");
    // `sid` is the session listed as current.
    let listed = get(&gw, "/auth/sessions", Some(token)).await.expect(200);
    assert_eq!(
        listed["sessions"][0]["id"].as_str(),
        Some(claims.custom.sid.as_str())
    );

    // The consumer really checks the signature.
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    let mut payload = claims_of(token);
    payload["role"] = json!("admin");
    parts[1] = B64.encode(payload.to_string());
    let tampered = parts.join(".");
    assert!(
        key.verify_token::<GatewayClaims>(&tampered, Some(options))
            .is_err()
    );
    // And so does the gateway.
    assert_invalid_bearer(&get(&gw, "/auth/me", Some(&tampered)).await);
}

/// A change to a token's claims.
type ClaimEdit = Box<dyn Fn(&mut Value)>;

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn validly_signed_tokens_are_still_checked_for_issuer_audience_times_type_kid_and_session() {
    use hmac::Mac as _;

    let (echo, gw) = setup().await;
    let pair = gw.user("claims@x.io").await;
    let other = gw.user("other@x.io").await;
    let signer = Signer::of(&gw);
    let jwks = get(&gw, "/auth/jwks.json", None).await.expect(200);
    assert_eq!(jwks["keys"][0]["kid"], signer.kid.as_str());
    let claims = claims_of(access(&pair));
    let now = unix_now();
    let fresh = |f: &dyn Fn(&mut Value)| {
        let mut c = claims.clone();
        c["jti"] = json!(Uuid::new_v4().to_string());
        c["iat"] = json!(now);
        c["nbf"] = json!(now);
        c["exp"] = json!(now + 300);
        f(&mut c);
        c
    };

    // The signer is right: an untouched re-signed token and tokens inside the leeway (30 s)
    // are accepted.
    let accepted = [
        signer.sign(&signer.header(), &fresh(&|_| {})),
        signer.sign(
            &signer.header(),
            &fresh(&|c| {
                c["iat"] = json!(now - 400);
                c["nbf"] = json!(now - 400);
                c["exp"] = json!(now - 10);
            }),
        ),
        signer.sign(
            &signer.header(),
            &fresh(&|c| {
                c["iat"] = json!(now + 10);
                c["nbf"] = json!(now + 10);
            }),
        ),
    ];
    for token in &accepted {
        assert_token_alive(&gw, token).await;
    }

    let mut rejected: Vec<(&str, String)> = Vec::new();
    let h = signer.header();
    let mut claim_cases: Vec<(&str, ClaimEdit)> = vec![
        ("wrong iss", Box::new(|c| c["iss"] = json!("someone-else"))),
        ("wrong aud", Box::new(|c| c["aud"] = json!("another-api"))),
        (
            "expired beyond the leeway",
            Box::new(move |c| {
                c["iat"] = json!(now - 400);
                c["nbf"] = json!(now - 400);
                c["exp"] = json!(now - 60);
            }),
        ),
        (
            "nbf beyond the leeway",
            Box::new(move |c| c["nbf"] = json!(now + 120)),
        ),
        (
            "iat beyond the leeway",
            Box::new(move |c| c["iat"] = json!(now + 120)),
        ),
        (
            "no exp",
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
        ),
        (
            "no iss",
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("iss");
            }),
        ),
        (
            "unknown session",
            Box::new(|c| c["sid"] = json!(Uuid::new_v4().to_string())),
        ),
        (
            "someone else's session",
            Box::new(|c| c["sub"] = json!(Uuid::new_v4().to_string())),
        ),
        (
            "role not the user's",
            Box::new(|c| c["role"] = json!("admin")),
        ),
    ];
    let other_sid = sid_of(&other).to_string();
    claim_cases.push((
        "another user's sid",
        Box::new(move |c| c["sid"] = json!(other_sid.clone())),
    ));
    for (what, f) in &claim_cases {
        rejected.push((what, signer.sign(&h, &fresh(&**f))));
    }
    let valid = fresh(&|_| {});
    let mut header_cases: Vec<(&str, Value)> = Vec::new();
    let mut jwt_typ = h.clone();
    jwt_typ["typ"] = json!("JWT");
    header_cases.push(("typ JWT", jwt_typ));
    let mut no_typ = h.clone();
    no_typ.as_object_mut().unwrap().remove("typ");
    header_cases.push(("no typ", no_typ));
    let mut unknown_kid = h.clone();
    unknown_kid["kid"] = json!("20200101T000000Z-eddsa-unknown");
    header_cases.push(("unknown kid", unknown_kid));
    let mut no_kid = h.clone();
    no_kid.as_object_mut().unwrap().remove("kid");
    header_cases.push(("no kid", no_kid));
    // Keys offered by the token itself. `accepted[0]` above is this same header without the
    // offered key, signed the same way: the offer alone is what gets these refused.
    for (what, field, offer) in embedded_key_offers(&jwks) {
        let mut offered = h.clone();
        offered[field] = offer;
        header_cases.push((what, offered));
    }
    for (what, header) in &header_cases {
        rejected.push((what, signer.sign(header, &valid)));
    }
    // Algorithm confusion: HS256 keyed with the public key the JWKS publishes.
    let public = B64.decode(s(&jwks["keys"][0]["x"])).unwrap();
    let mut hs = h.clone();
    hs["alg"] = json!("HS256");
    let input = format!(
        "{}.{}",
        B64.encode(hs.to_string()),
        B64.encode(valid.to_string())
    );
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&public).unwrap();
    mac.update(input.as_bytes());
    rejected.push((
        "HS256 keyed with the public key",
        format!("{input}.{}", B64.encode(mac.finalize().into_bytes())),
    ));

    let before = echo.count();
    for (what, token) in &rejected {
        let reply = get(&gw, "/auth/me", Some(token)).await;
        assert_eq!(reply.status, 401, "{what}: {}", reply.text);
        assert_invalid_bearer(&reply);
        let reply = get(&gw, "/api/x", Some(token)).await;
        assert_eq!(
            reply.status, 401,
            "{what} on the proxy path: {}",
            reply.text
        );
    }
    assert_eq!(
        echo.count(),
        before,
        "a rejected token reached the upstream"
    );
}

#[tokio::test]
async fn with_hs256_the_jwks_is_empty_and_tokens_still_carry_a_kid() {
    use jwt_simple::prelude::*;

    let secret = "an-hs256-secret-of-at-least-32-bytes!";
    let (_echo, gw) = setup_with(|o| {
        o.tokens = "algorithm = \"HS256\"\nhs256_secret_env = \"PT_TEST_HS256\"\n".into();
        o.env.push(("PT_TEST_HS256".into(), secret.into()));
    })
    .await;
    let pair = gw.user("hs@x.io").await;
    for path in ["/auth/jwks.json", "/.well-known/jwks.json"] {
        assert_eq!(get(&gw, path, None).await.expect(200), json!({"keys": []}));
    }
    let token = access(&pair);
    let meta = Token::decode_metadata(token).unwrap();
    assert_eq!(meta.algorithm(), "HS256");
    assert_eq!(meta.signature_type(), Some("at+jwt"));
    assert!(meta.key_id().is_some_and(|k| !k.is_empty()));
    let key = HS256Key::from_bytes(secret.as_bytes());
    let claims = key
        .verify_token::<GatewayClaims>(
            token,
            Some(VerificationOptions {
                required_signature_type: Some("at+jwt".into()),
                ..Default::default()
            }),
        )
        .expect("the secret's raw UTF-8 bytes are the HMAC key");
    assert_eq!(claims.custom.email, "hs@x.io");
    assert_token_alive(&gw, token).await;
}

// ---------------------------------------------------------------------------------------------
// admin

#[tokio::test]
async fn admins_page_through_all_users_with_limit_and_cursor() {
    let (_echo, gw) = setup().await;
    let admin = gw.admin_user("root@x.io").await;
    let token = access(&admin);
    let mut expected = HashSet::from([s(&admin["user"]["id"]).to_string()]);
    for i in 0..5 {
        let body = gw.register(&format!("page{i}@x.io"), PASSWORD).await;
        expected.insert(s(&body["user"]["id"]).to_string());
    }

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let path = match &cursor {
            Some(c) => format!("/auth/admin/users?limit=2&cursor={c}"),
            None => "/auth/admin/users?limit=2".to_string(),
        };
        let reply = get(&gw, &path, Some(token)).await;
        let page = reply.expect(200);
        assert_no_secrets(&reply.text, &[PASSWORD, ADMIN_PASSWORD]);
        let keys: HashSet<&str> = page
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, HashSet::from(["users", "next_cursor"]));
        let users = page["users"].as_array().unwrap();
        assert!(users.len() <= 2, "{page}");
        for u in users {
            assert_user_shape(u);
            seen.push(s(&u["id"]).to_string());
        }
        match &page["next_cursor"] {
            Value::Null => {
                cursor = None;
                break;
            }
            c => cursor = Some(s(c).to_string()),
        }
    }
    assert!(cursor.is_none(), "the last page has next_cursor null");
    assert_eq!(seen.len(), 6, "{seen:?}");
    let unique: HashSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique, expected, "every user exactly once");

    // Without a limit everything fits in one page.
    let all = get(&gw, "/auth/admin/users", Some(token)).await.expect(200);
    assert_eq!(all["users"].as_array().unwrap().len(), 6);
    assert_eq!(all["next_cursor"], Value::Null);
    let ids: Vec<String> = all["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| s(&u["id"]).to_string())
        .collect();
    assert_eq!(ids, seen, "pages follow the same order");
}

#[tokio::test]
async fn the_admin_user_list_rejects_bad_limits_and_cursors_and_non_admins() {
    let (_echo, gw) = setup().await;
    let admin = gw.admin_user("root@x.io").await;
    let user = gw.user("plain@x.io").await;
    for query in [
        "limit=0",
        "limit=-1",
        "limit=abc",
        "limit=1.5",
        "limit=100000",
        "cursor=!!!",
        "cursor=bm9wZQ",
        "limit=2&cursor=%00",
    ] {
        get(
            &gw,
            &format!("/auth/admin/users?{query}"),
            Some(access(&admin)),
        )
        .await
        .expect_error(400, "invalid_request");
    }
    get(&gw, "/auth/admin/users", Some(access(&user)))
        .await
        .expect_error(403, "forbidden");
    get(&gw, "/auth/admin/users?limit=abc", Some(access(&user)))
        .await
        .expect_error(403, "forbidden");
    assert_missing_bearer(&get(&gw, "/auth/admin/users", None).await);
}

#[tokio::test]
async fn admin_patch_changes_role_and_active_flag_and_revokes_the_users_sessions() {
    let (echo, gw) = setup().await;
    let admin = gw.admin_user("root@x.io").await;
    let admin_token = access(&admin);
    let pair = gw.user("target@x.io").await;
    let id = s(&pair["user"]["id"]).to_string();

    // A no-op change revokes nothing.
    let body = patch_user(&gw, admin_token, &id, json!({"is_active": true}))
        .await
        .expect(200);
    assert_eq!(body["user"], pair["user"]);
    patch_user(&gw, admin_token, &id, json!({}))
        .await
        .expect(200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_token_alive(&gw, access(&pair)).await;

    // Promotion: the user's tokens of the old role die.
    let reply = patch_user(&gw, admin_token, &id, json!({"role": "admin"})).await;
    let body = reply.expect(200);
    assert_user_shape(&body["user"]);
    assert_eq!(body["user"]["role"], "admin");
    assert_eq!(body["user"]["id"], id.as_str());
    assert_no_secrets(&reply.text, &[]);
    assert_token_dead(&gw, &echo, access(&pair)).await;
    refresh(&gw, refresh_token(&pair))
        .await
        .expect_error(401, "invalid_token");
    let promoted = gw.login("target@x.io", PASSWORD).await;
    assert_eq!(promoted["user"]["role"], "admin");
    get(&gw, "/api/admin/panel", Some(access(&promoted)))
        .await
        .expect(200);

    // Deactivation: sessions die and login is refused.
    let body = patch_user(
        &gw,
        admin_token,
        &id,
        json!({"is_active": false, "role": "user"}),
    )
    .await
    .expect(200);
    assert_eq!(body["user"]["is_active"], false);
    assert_eq!(body["user"]["role"], "user");
    assert_token_dead(&gw, &echo, access(&promoted)).await;
    login_reply(&gw, "target@x.io", PASSWORD)
        .await
        .expect_error(403, "account_disabled");

    // Reactivation lets them back in.
    patch_user(&gw, admin_token, &id, json!({"is_active": true}))
        .await
        .expect(200);
    let back = gw.login("target@x.io", PASSWORD).await;
    assert_token_alive(&gw, access(&back)).await;
    // The admin's own session was never affected.
    assert_token_alive(&gw, admin_token).await;
}

#[tokio::test]
async fn admin_patch_answers_404_400_403_and_401() {
    let (_echo, gw) = setup().await;
    let admin = gw.admin_user("root@x.io").await;
    let pair = gw.user("victim@x.io").await;
    let id = s(&pair["user"]["id"]).to_string();
    patch_user(
        &gw,
        access(&admin),
        &Uuid::new_v4().to_string(),
        json!({"role": "admin"}),
    )
    .await
    .expect_error(404, "not_found");
    for (body, field) in [
        (json!({"role": "root"}), "role"),
        (json!({"role": "Admin"}), "role"),
        (json!({"is_active": "yes"}), "is_active"),
        (json!({"role": "admin", "email": "x@x.io"}), "email"),
        (json!(["admin"]), ""),
    ] {
        let message = patch_user(&gw, access(&admin), &id, body.clone())
            .await
            .expect_error(400, "invalid_request");
        assert!(message.contains(field), "{body}: {message}");
    }
    let reply = Reply::of(
        gw.http
            .patch(gw.url(&format!("/auth/admin/users/{id}")))
            .bearer_auth(access(&admin))
            .header(CONTENT_TYPE, "text/plain")
            .body(r#"{"role":"admin"}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    reply.expect_error(415, "unsupported_media_type");
    // A user may not promote themselves.
    patch_user(&gw, access(&pair), &id, json!({"role": "admin"}))
        .await
        .expect_error(403, "forbidden");
    assert_missing_bearer(
        &call(
            &gw,
            Method::PATCH,
            &format!("/auth/admin/users/{id}"),
            None,
            Some(json!({"role": "admin"})),
        )
        .await,
    );
    // Still a plain, working user.
    let me = get(&gw, "/auth/me", Some(access(&pair))).await.expect(200);
    assert_eq!(me["user"]["role"], "user");
}

#[tokio::test]
async fn the_last_active_admin_cannot_be_demoted_or_deactivated() {
    let (_echo, gw) = setup().await;
    let root = gw.admin_user("root@x.io").await;
    let root_id = s(&root["user"]["id"]).to_string();
    for body in [
        json!({"role": "user"}),
        json!({"is_active": false}),
        json!({"role": "user", "is_active": false}),
    ] {
        patch_user(&gw, access(&root), &root_id, body)
            .await
            .expect_error(409, "conflict");
    }
    assert_token_alive(&gw, access(&root)).await;

    // With a second active admin, the first may step down.
    let deputy = gw.admin_user("deputy@x.io").await;
    let deputy_id = s(&deputy["user"]["id"]).to_string();
    // An inactive admin does not count as the one left.
    patch_user(&gw, access(&root), &deputy_id, json!({"is_active": false}))
        .await
        .expect(200);
    patch_user(&gw, access(&root), &root_id, json!({"role": "user"}))
        .await
        .expect_error(409, "conflict");
    patch_user(&gw, access(&root), &deputy_id, json!({"is_active": true}))
        .await
        .expect(200);
    let deputy = gw.login("deputy@x.io", ADMIN_PASSWORD).await;
    let body = patch_user(&gw, access(&root), &root_id, json!({"role": "user"}))
        .await
        .expect(200);
    assert_eq!(body["user"]["role"], "user");
    // Now the deputy is the last one.
    patch_user(&gw, access(&deputy), &deputy_id, json!({"role": "user"}))
        .await
        .expect_error(409, "conflict");
}

#[tokio::test]
async fn admins_revoke_all_sessions_of_a_user() {
    let (echo, gw) = setup().await;
    let admin = gw.admin_user("root@x.io").await;
    let a = gw.user("revokee@x.io").await;
    let b = gw.login("revokee@x.io", PASSWORD).await;
    let bystander = gw.user("bystander@x.io").await;
    let id = s(&a["user"]["id"]).to_string();
    let path = format!("/auth/admin/users/{id}/sessions");

    call(&gw, Method::DELETE, &path, Some(access(&bystander)), None)
        .await
        .expect_error(403, "forbidden");
    assert_missing_bearer(&call(&gw, Method::DELETE, &path, None, None).await);
    call(
        &gw,
        Method::DELETE,
        &format!("/auth/admin/users/{}/sessions", Uuid::new_v4()),
        Some(access(&admin)),
        None,
    )
    .await
    .expect_error(404, "not_found");
    assert_token_alive(&gw, access(&a)).await;

    call(&gw, Method::DELETE, &path, Some(access(&admin)), None)
        .await
        .expect_no_content();
    for pair in [&a, &b] {
        assert_token_dead(&gw, &echo, access(pair)).await;
        refresh(&gw, refresh_token(pair))
            .await
            .expect_error(401, "invalid_token");
    }
    assert_token_alive(&gw, access(&bystander)).await;
    assert_token_alive(&gw, access(&admin)).await;
    // The account itself is fine: a new login works.
    gw.login("revokee@x.io", PASSWORD).await;
}

// ---------------------------------------------------------------------------------------------
// rate limits

fn assert_rate_limited(reply: &Reply) -> u64 {
    reply.expect_error(429, "rate_limited");
    let retry = reply
        .header("retry-after")
        .expect("429 carries Retry-After");
    let secs: u64 = retry
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After must be integer seconds: {retry:?}"));
    assert!((1..=60).contains(&secs), "Retry-After {secs}");
    secs
}

#[tokio::test]
async fn login_is_rate_limited_per_ip_with_retry_after() {
    let (_echo, gw) = setup_with(|o| {
        o.rate_limit = "login_per_minute_per_ip = 3\nlogin_per_minute_per_account = 1000\n\
                        register_per_minute_per_ip = 1000\n"
            .into()
    })
    .await;
    gw.register("ip@x.io", PASSWORD).await;
    gw.register("ip2@x.io", PASSWORD).await;
    clear_of_minute_boundary().await;
    let before = auth_event(&gw, "rate_limited").await;
    gw.login("ip@x.io", PASSWORD).await;
    login_reply(&gw, "ip@x.io", "wrong-password")
        .await
        .expect_error(401, "invalid_credentials");
    gw.login("ip2@x.io", PASSWORD).await;
    // The fourth attempt from this address, whatever the account or password.
    assert_rate_limited(&login_reply(&gw, "ip2@x.io", PASSWORD).await);
    assert_rate_limited(&login_reply(&gw, "nobody@x.io", PASSWORD).await);
    // A client-sent X-Forwarded-For (no trusted proxies) does not make a new address.
    let spoofed = Reply::of(
        gw.http
            .post(gw.url("/auth/login"))
            .header("X-Forwarded-For", "198.51.100.23")
            .json(&json!({"email": "ip2@x.io", "password": PASSWORD}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_rate_limited(&spoofed);
    assert_eq!(auth_event(&gw, "rate_limited").await, before + 3.0);
    // Other endpoints are not affected.
    gw.register("ip3@x.io", PASSWORD).await;
}

#[tokio::test]
async fn login_is_rate_limited_per_account_after_failed_attempts() {
    let (_echo, gw) = setup_with(|o| {
        o.rate_limit = "login_per_minute_per_ip = 1000\nlogin_per_minute_per_account = 2\n\
                        register_per_minute_per_ip = 1000\n"
            .into()
    })
    .await;
    gw.register("target@x.io", PASSWORD).await;
    gw.register("other@x.io", PASSWORD).await;
    clear_of_minute_boundary().await;
    for _ in 0..2 {
        login_reply(&gw, "target@x.io", "wrong-password")
            .await
            .expect_error(401, "invalid_credentials");
    }
    // Even the right password is refused now, under any spelling of the email.
    assert_rate_limited(&login_reply(&gw, "target@x.io", PASSWORD).await);
    assert_rate_limited(&login_reply(&gw, "TARGET@x.io", PASSWORD).await);
    // Another account from the same address is fine.
    gw.login("other@x.io", PASSWORD).await;
}

#[tokio::test]
async fn register_is_rate_limited_per_ip() {
    let (_echo, gw) = setup_with(|o| {
        o.rate_limit = "login_per_minute_per_ip = 1000\nlogin_per_minute_per_account = 1000\n\
                        register_per_minute_per_ip = 2\n"
            .into()
    })
    .await;
    clear_of_minute_boundary().await;
    gw.register("r1@x.io", PASSWORD).await;
    register_reply(&gw, "bad-email", PASSWORD)
        .await
        .expect_error(400, "invalid_request");
    assert_rate_limited(&register_reply(&gw, "r2@x.io", PASSWORD).await);
    assert_eq!(user_count(&gw).await, 1);
    // Logging in is a separate limit.
    gw.login("r1@x.io", PASSWORD).await;
}

/// The one slow test: waits out a `Retry-After` (at most 60 s) to see the limits reset.
#[tokio::test]
async fn rate_limits_reset_once_retry_after_has_passed() {
    let (_echo, gw) = setup_with(|o| {
        o.rate_limit = "login_per_minute_per_ip = 3\nlogin_per_minute_per_account = 1\n\
                        register_per_minute_per_ip = 1000\n"
            .into()
    })
    .await;
    gw.register("a@x.io", PASSWORD).await;
    gw.register("b@x.io", PASSWORD).await;
    clear_of_minute_boundary().await;
    login_reply(&gw, "a@x.io", "wrong-password")
        .await
        .expect_error(401, "invalid_credentials");
    // Account limit (also the second attempt from this address).
    let account_wait = assert_rate_limited(&login_reply(&gw, "a@x.io", PASSWORD).await);
    gw.login("b@x.io", PASSWORD).await;
    // Address limit.
    let ip_wait = assert_rate_limited(&login_reply(&gw, "b@x.io", PASSWORD).await);
    let wait = account_wait.max(ip_wait);
    tokio::time::sleep(Duration::from_secs(wait) + Duration::from_millis(300)).await;
    gw.login("a@x.io", PASSWORD).await;
    gw.login("b@x.io", PASSWORD).await;
}

// ---------------------------------------------------------------------------------------------
// metrics

#[tokio::test]
async fn auth_events_are_counted_in_metrics() {
    let (_echo, gw) = setup_with(|o| {
        o.tokens = "refresh_reuse_grace_secs = 0\n".into();
        o.rate_limit = "login_per_minute_per_ip = 1000\nlogin_per_minute_per_account = 2\n\
                        register_per_minute_per_ip = 1000\n"
            .into();
    })
    .await;
    let events = [
        "register",
        "login_ok",
        "login_failed",
        "refresh",
        "refresh_reuse_detected",
        "logout",
        "rate_limited",
    ];
    let metrics = gw.metrics().await;
    for event in events {
        let key = format!("portcullis_auth_events_total{{event=\"{event}\"}}");
        assert_eq!(
            metrics.get(&key),
            Some(&0.0),
            "{key} is exported from the start"
        );
    }

    gw.register("metrics@x.io", PASSWORD).await;
    let pair = gw.login("metrics@x.io", PASSWORD).await;
    refresh(&gw, refresh_token(&pair)).await.expect(200);
    refresh(&gw, refresh_token(&pair))
        .await
        .expect_error(401, "invalid_token");
    let other = gw.login("metrics@x.io", PASSWORD).await;
    post(
        &gw,
        "/auth/logout",
        json!({"refresh_token": refresh_token(&other)}),
    )
    .await
    .expect_no_content();
    clear_of_minute_boundary().await;
    for _ in 0..2 {
        login_reply(&gw, "metrics@x.io", "wrong-password")
            .await
            .expect_error(401, "invalid_credentials");
    }
    assert_rate_limited(&login_reply(&gw, "metrics@x.io", PASSWORD).await);

    let expected = [
        ("register", 1.0),
        ("login_ok", 2.0),
        ("login_failed", 2.0),
        ("refresh", 1.0),
        ("refresh_reuse_detected", 1.0),
        ("logout", 1.0),
        ("rate_limited", 1.0),
    ];
    for (event, n) in expected {
        assert_eq!(auth_event(&gw, event).await, n, "{event}");
    }
}

#[tokio::test]
async fn the_openapi_description_is_served_as_json() {
    let (_echo, gw) = setup().await;
    let reply = get(&gw, "/auth/openapi.json", None).await;
    let doc = reply.expect(200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/auth/login"]["post"].is_object());
}
