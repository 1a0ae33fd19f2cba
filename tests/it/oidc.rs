//! OIDC login against an in-process identity provider (discovery, JWKS, token endpoint with
//! PKCE check) that signs real ES256 ID tokens.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use crate::harness::*;

/// Who logs in at the provider.
#[derive(Clone)]
struct Identity {
    sub: String,
    email: String,
    email_verified: bool,
}

struct Grant {
    identity: Identity,
    nonce: String,
    challenge: String,
}

/// How the provider's ID tokens go wrong: each is one defect in an otherwise valid token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// An honest provider.
    None,
    /// `nonce` is not the one the gateway sent.
    WrongNonce,
    /// `aud` names another client.
    WrongAudience,
    /// `iss` is not the provider's issuer.
    WrongIssuer,
    /// `exp` passed half an hour ago.
    Expired,
    /// Signed by a key the provider does not publish, under the published key's `kid`.
    UnpublishedKey,
}

/// The provider's signing keys: the newest signs, all are published; plus one never published.
struct IdpKeys {
    dir: tempfile::TempDir,
    signer: jsonwebtoken::EncodingKey,
    kid: String,
    jwks: Value,
    unpublished: jsonwebtoken::EncodingKey,
    _unpublished_dir: tempfile::TempDir,
}

impl IdpKeys {
    fn new() -> IdpKeys {
        let dir = tempfile::tempdir().unwrap();
        let (signer, kid, jwks) = Self::add_key(&dir);
        let unpublished_dir = tempfile::tempdir().unwrap();
        let (unpublished, _, _) = Self::add_key(&unpublished_dir);
        IdpKeys {
            dir,
            signer,
            kid,
            jwks,
            unpublished,
            _unpublished_dir: unpublished_dir,
        }
    }

    /// Writes a new ES256 key; returns it as the signer plus the JWKS of every key.
    fn add_key(dir: &tempfile::TempDir) -> (jsonwebtoken::EncodingKey, String, Value) {
        let (kid, path) =
            portcullis::tokens::generate_key(dir.path(), portcullis::config::Algorithm::ES256)
                .unwrap();
        let signer = jsonwebtoken::EncodingKey::from_ec_pem(&std::fs::read(path).unwrap()).unwrap();
        let jwks = portcullis::tokens::TokenService::new(&portcullis::config::Tokens {
            algorithm: portcullis::config::Algorithm::ES256,
            keys_dir: dir.path().display().to_string(),
            ..Default::default()
        })
        .unwrap()
        .jwks();
        (signer, kid, jwks)
    }

    fn rotate(&mut self) {
        (self.signer, self.kid, self.jwks) = Self::add_key(&self.dir);
    }
}

/// A minimal OpenID provider.
struct Idp {
    issuer: String,
    grants: Arc<Mutex<HashMap<String, Grant>>>,
    keys: Arc<Mutex<IdpKeys>>,
    fault: Arc<Mutex<Fault>>,
}

impl Idp {
    async fn start() -> Idp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let keys = Arc::new(Mutex::new(IdpKeys::new()));
        let grants: Arc<Mutex<HashMap<String, Grant>>> = Arc::default();
        let fault = Arc::new(Mutex::new(Fault::None));
        let state = (issuer.clone(), grants.clone(), keys.clone(), fault.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (issuer, grants, keys, fault) = state.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let (status, value) = match path.as_str() {
                                "/.well-known/openid-configuration" => (
                                    200,
                                    json!({
                                        "issuer": issuer,
                                        "authorization_endpoint": format!("{issuer}/authorize"),
                                        "token_endpoint": format!("{issuer}/token"),
                                        "jwks_uri": format!("{issuer}/jwks"),
                                        "response_types_supported": ["code"],
                                        "subject_types_supported": ["public"],
                                        "id_token_signing_alg_values_supported": ["ES256"],
                                    }),
                                ),
                                "/jwks" => (200, keys.lock().unwrap().jwks.clone()),
                                "/token" => {
                                    let fault = *fault.lock().unwrap();
                                    token(&issuer, &grants, &keys.lock().unwrap(), fault, &body)
                                }
                                _ => (404, json!({"error": "not_found"})),
                            };
                            let mut resp = Response::new(Full::new(Bytes::from(value.to_string())));
                            *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            resp.headers_mut()
                                .insert("content-type", "application/json".parse().unwrap());
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Idp {
            issuer,
            grants,
            keys,
            fault,
        }
    }

    /// Makes every ID token from now on wrong in the way `fault` says.
    fn misbehave(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }

    /// What the provider's login page would do: remember the request, hand out a code.
    fn authorize(&self, location: &str, identity: Identity) -> (String, String) {
        let query = location.split_once('?').unwrap().1;
        let params: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        assert_eq!(params["response_type"], "code");
        assert_eq!(params["code_challenge_method"], "S256");
        let code = format!("code-{}", params["state"]);
        self.grants.lock().unwrap().insert(
            code.clone(),
            Grant {
                identity,
                nonce: params["nonce"].clone(),
                challenge: params["code_challenge"].clone(),
            },
        );
        (code, params["state"].clone())
    }
}

fn token(
    issuer: &str,
    grants: &Mutex<HashMap<String, Grant>>,
    keys: &IdpKeys,
    fault: Fault,
    body: &[u8],
) -> (u16, Value) {
    let form: HashMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
    let Some(grant) = form
        .get("code")
        .and_then(|c| grants.lock().unwrap().remove(c))
    else {
        return (400, json!({"error": "invalid_grant"}));
    };
    let verifier = form.get("code_verifier").cloned().unwrap_or_default();
    if B64.encode(Sha256::digest(verifier.as_bytes())) != grant.challenge {
        return (
            400,
            json!({"error": "invalid_grant", "error_description": "PKCE"}),
        );
    }
    let now = chrono::Utc::now().timestamp();
    let mut claims = json!({
        "iss": issuer, "sub": grant.identity.sub, "aud": "portcullis",
        "exp": now + 300, "iat": now, "nonce": grant.nonce,
        "email": grant.identity.email, "email_verified": grant.identity.email_verified,
    });
    let mut signer = &keys.signer;
    match fault {
        Fault::None => {}
        Fault::WrongNonce => claims["nonce"] = json!(format!("not-{}", grant.nonce)),
        Fault::WrongAudience => claims["aud"] = json!("another-client"),
        Fault::WrongIssuer => claims["iss"] = json!(format!("{issuer}/elsewhere")),
        Fault::Expired => {
            claims["iat"] = json!(now - 3600);
            claims["exp"] = json!(now - 1800);
        }
        Fault::UnpublishedKey => signer = &keys.unpublished,
    }
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(keys.kid.clone());
    let id_token = jsonwebtoken::encode(&header, &claims, signer).unwrap();
    (
        200,
        json!({"access_token": "idp-access", "token_type": "Bearer", "expires_in": 300, "id_token": id_token}),
    )
}

async fn gateway(idp: &Idp) -> (Gateway, Echo) {
    let echo = Echo::start().await;
    let mut opts = Options::new(echo.addr);
    opts.extra = format!(
        r#"
[[oidc]]
name = "test"
issuer = "{}"
client_id = "portcullis"
client_secret_env = "PT_OIDC_SECRET"
redirect_uri = "http://127.0.0.1/auth/oidc/test/callback"
allowed_redirects = ["https://app.example.com/"]
"#,
        idp.issuer
    );
    opts.env.push(("PT_OIDC_SECRET".into(), "s3cret".into()));
    (Gateway::start(opts).await, echo)
}

/// Runs the browser's part up to the callback; returns the callback's response.
async fn login_through(gw: &Gateway, idp: &Idp, identity: Identity) -> reqwest::Response {
    let start = gw
        .get(
            "/auth/oidc/test/login?redirect_to=https%3A%2F%2Fapp.example.com%2Fdone",
            None,
        )
        .await;
    assert_eq!(start.status(), 302);
    let location = start.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.starts_with(&format!("{}/authorize?", idp.issuer)),
        "{location}"
    );
    let (code, state) = idp.authorize(&location, identity);
    gw.get(
        &format!("/auth/oidc/test/callback?code={code}&state={state}"),
        None,
    )
    .await
}

fn query_param(location: &str, name: &str) -> Option<String> {
    let query = location.split_once('?')?.1;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

async fn user_count(gw: &Gateway) -> i64 {
    rows(gw, "users").await
}

async fn rows(gw: &Gateway, table: &str) -> i64 {
    Db::open(&gw.db_url)
        .await
        .one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .int()
}

/// The audit trail, oldest first: (event, detail).
async fn audit(gw: &Gateway) -> Vec<(String, Value)> {
    Db::open(&gw.db_url)
        .await
        .rows("SELECT event, detail FROM audit_events ORDER BY id", &[])
        .await
        .iter()
        .map(|r| (r[0].text(), serde_json::from_str(&r[1].text()).unwrap()))
        .collect()
}

#[tokio::test]
async fn a_provider_login_creates_an_account_and_a_single_use_login_code() {
    let idp = Idp::start().await;
    let (gw, _echo) = gateway(&idp).await;
    let who = Identity {
        sub: "sub-1".into(),
        email: "Olga@Example.com".into(),
        email_verified: true,
    };
    let callback = login_through(&gw, &idp, who.clone()).await;
    assert_eq!(callback.status(), 302);
    let location = callback.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.starts_with("https://app.example.com/done?login_code="),
        "{location}"
    );
    let code = query_param(&location, "login_code").unwrap();

    let pair = gw
        .post("/auth/oidc/exchange", json!({ "login_code": code }))
        .await;
    assert_eq!(pair.status(), 200);
    assert_eq!(pair.headers()["cache-control"], "no-store");
    let pair: Value = pair.json().await.unwrap();
    assert_eq!(pair["user"]["email"], "Olga@Example.com");
    assert_eq!(pair["user"]["role"], "user");
    let me = gw.get("/auth/me", pair["access_token"].as_str()).await;
    assert_eq!(me.status(), 200);

    let again = gw
        .post("/auth/oidc/exchange", json!({ "login_code": code }))
        .await;
    assert_eq!(again.status(), 401);
    assert_eq!(
        again.json::<Value>().await.unwrap()["error"],
        "invalid_token"
    );

    // The same subject logs in again: same account, no duplicate.
    let second = login_through(&gw, &idp, who).await;
    assert_eq!(second.status(), 302);
    assert_eq!(user_count(&gw).await, 1);
    // Linking is one event; each session opened through the provider is a login.
    assert_eq!(
        audit(&gw).await,
        vec![
            (
                "oidc_linked".into(),
                json!({"provider": "test", "account_created": true})
            ),
            ("login_ok".into(), json!({"method": "oidc"})),
        ]
    );
    // An OIDC account has no password: password login fails like any wrong password.
    let r = gw
        .post(
            "/auth/login",
            json!({"email": "olga@example.com", "password": "anything-at-all"}),
        )
        .await;
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn a_verified_email_links_the_existing_account_and_an_unverified_one_is_refused() {
    let idp = Idp::start().await;
    let (gw, _echo) = gateway(&idp).await;
    let local = gw.user("pat@example.com").await;
    let pat_id = local["user"]["id"].clone();

    let unverified = Identity {
        sub: "sub-x".into(),
        email: "PAT@example.com".into(),
        email_verified: false,
    };
    let refused = login_through(&gw, &idp, unverified).await;
    assert_eq!(refused.status(), 302);
    let location = refused.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(
        query_param(&location, "error").as_deref(),
        Some("email_taken")
    );
    assert_eq!(query_param(&location, "login_code"), None);
    let links = rows(&gw, "oidc_identities").await;
    assert_eq!(links, 0, "nothing is linked for an unverified email");
    assert_eq!(user_count(&gw).await, 1, "nothing is created");

    let verified = Identity {
        sub: "sub-y".into(),
        email: "pat@EXAMPLE.com".into(),
        email_verified: true,
    };
    let linked = login_through(&gw, &idp, verified).await;
    let code = query_param(linked.headers()["location"].to_str().unwrap(), "login_code").unwrap();
    let pair: Value = gw
        .post("/auth/oidc/exchange", json!({ "login_code": code }))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(pair["user"]["id"], pat_id);
    let linked: Vec<_> = audit(&gw)
        .await
        .into_iter()
        .filter(|(e, _)| e == "oidc_linked")
        .collect();
    assert_eq!(
        linked,
        vec![(
            "oidc_linked".into(),
            json!({"provider": "test", "account_created": false})
        )]
    );
}

#[tokio::test]
async fn a_deactivated_account_is_neither_logged_in_nor_linked() {
    let idp = Idp::start().await;
    let (gw, _echo) = gateway(&idp).await;
    let local = gw.user("dana@example.com").await;
    let id = local["user"]["id"].as_str().unwrap().to_string();
    Db::open(&gw.db_url)
        .await
        .exec(
            "UPDATE users SET is_active = false WHERE id = $1",
            &[Arg::Uuid(id.parse().unwrap())],
        )
        .await;
    let who = Identity {
        sub: "sub-d".into(),
        email: "dana@example.com".into(),
        email_verified: true,
    };
    let refused = login_through(&gw, &idp, who).await;
    assert_eq!(refused.status(), 403);
    assert_eq!(
        refused.json::<Value>().await.unwrap()["error"],
        "account_disabled"
    );
    assert_eq!(rows(&gw, "oidc_identities").await, 0);
    assert_eq!(rows(&gw, "oidc_login_codes").await, 0);
    assert!(
        audit(&gw).await.iter().all(|(e, _)| e != "oidc_linked"),
        "no link, no event"
    );
}

#[tokio::test]
async fn bad_redirects_states_and_codes_are_refused_without_side_effects() {
    let idp = Idp::start().await;
    let (gw, _echo) = gateway(&idp).await;
    let r = gw
        .get(
            "/auth/oidc/test/login?redirect_to=https%3A%2F%2Fevil.example.net%2F",
            None,
        )
        .await;
    assert_eq!(r.status(), 400);
    assert!(r.headers().get("location").is_none());
    let r = gw.get("/auth/oidc/test/login", None).await;
    assert_eq!(r.status(), 400);
    let r = gw
        .get(
            "/auth/oidc/nope/login?redirect_to=https%3A%2F%2Fapp.example.com%2F",
            None,
        )
        .await;
    assert_eq!(r.status(), 404);

    let r = gw
        .get("/auth/oidc/test/callback?code=x&state=never-issued", None)
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_request");

    // A state is single use.
    let start = gw
        .get(
            "/auth/oidc/test/login?redirect_to=https%3A%2F%2Fapp.example.com%2F",
            None,
        )
        .await;
    let location = start.headers()["location"].to_str().unwrap().to_string();
    let who = Identity {
        sub: "s".into(),
        email: "s@example.com".into(),
        email_verified: true,
    };
    let (code, state) = idp.authorize(&location, who.clone());
    let ok = gw
        .get(
            &format!("/auth/oidc/test/callback?code={code}&state={state}"),
            None,
        )
        .await;
    assert_eq!(ok.status(), 302);
    let replay = gw
        .get(
            &format!("/auth/oidc/test/callback?code={code}&state={state}"),
            None,
        )
        .await;
    assert_eq!(replay.status(), 400);

    // The provider refuses the code (already used): nothing is created.
    let start = gw
        .get(
            "/auth/oidc/test/login?redirect_to=https%3A%2F%2Fapp.example.com%2F",
            None,
        )
        .await;
    let state = query_param(start.headers()["location"].to_str().unwrap(), "state").unwrap();
    let before = user_count(&gw).await;
    let bad = gw
        .get(
            &format!("/auth/oidc/test/callback?code=forged&state={state}"),
            None,
        )
        .await;
    assert_eq!(bad.status(), 502);
    assert_eq!(bad.json::<Value>().await.unwrap()["error"], "bad_gateway");
    assert_eq!(user_count(&gw).await, before);

    let r = gw
        .post("/auth/oidc/exchange", json!({ "login_code": "unknown" }))
        .await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_token");
}

#[tokio::test]
async fn a_provider_key_rotation_is_picked_up_without_a_restart() {
    let idp = Idp::start().await;
    let (gw, _echo) = gateway(&idp).await;
    let who = Identity {
        sub: "rot".into(),
        email: "rot@example.com".into(),
        email_verified: true,
    };
    let first = login_through(&gw, &idp, who.clone()).await;
    assert!(query_param(first.headers()["location"].to_str().unwrap(), "login_code").is_some());
    // The provider now signs with a key the gateway's cached discovery has never seen.
    idp.keys.lock().unwrap().rotate();
    let second = login_through(&gw, &idp, who).await;
    assert_eq!(second.status(), 302);
    let location = second.headers()["location"].to_str().unwrap().to_string();
    assert!(query_param(&location, "login_code").is_some(), "{location}");
}

#[tokio::test]
async fn id_tokens_with_a_wrong_nonce_audience_issuer_expiry_or_key_are_refused_without_side_effects()
 {
    let idp = Idp::start().await;
    let (gw, _echo) = gateway(&idp).await;
    let who = Identity {
        sub: "sub-bad".into(),
        email: "bad@example.com".into(),
        email_verified: true,
    };
    for fault in [
        Fault::WrongNonce,
        Fault::WrongAudience,
        Fault::WrongIssuer,
        Fault::Expired,
        Fault::UnpublishedKey,
    ] {
        idp.misbehave(fault);
        let r = login_through(&gw, &idp, who.clone()).await;
        assert_eq!(r.status(), 401, "{fault:?}");
        assert!(r.headers().get("location").is_none(), "{fault:?}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "invalid_token", "{fault:?}: {body}");
        for table in ["users", "oidc_identities", "oidc_login_codes", "sessions"] {
            assert_eq!(rows(&gw, table).await, 0, "{fault:?} left a row in {table}");
        }
    }
    // Control: the same login with the provider honest again succeeds, so each refusal above
    // was the fault's doing.
    idp.misbehave(Fault::None);
    let r = login_through(&gw, &idp, who).await;
    assert_eq!(r.status(), 302);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(query_param(&location, "login_code").is_some(), "{location}");
    assert_eq!(user_count(&gw).await, 1);
    assert_eq!(rows(&gw, "oidc_login_codes").await, 1);
}

#[tokio::test]
async fn the_sign_in_pages_provider_button_ends_in_the_session_cookies() {
    let idp = Idp::start().await;
    let echo = Echo::start().await;
    let mut opts = Options::new(echo.addr);
    opts.extra = format!(
        r#"
[browser]
enabled = true

[[oidc]]
name = "test"
issuer = "{}"
client_id = "portcullis"
client_secret_env = "PT_OIDC_SECRET"
redirect_uri = "http://127.0.0.1/auth/oidc/test/callback"
allowed_redirects = ["https://app.example.com/"]
"#,
        idp.issuer
    );
    opts.env.push(("PT_OIDC_SECRET".into(), "s3cret".into()));
    let gw = Gateway::start(opts).await;
    // The sign-in page offers the provider, coming back to where the person was going.
    let page = gw.get("/auth/ui/login?rd=%2Fapi%2Freports", None).await;
    let html = page.text().await.unwrap();
    assert!(
        html.contains("href=\"/auth/oidc/test/login?rd=%2Fapi%2Freports\""),
        "{html}"
    );
    let start = gw
        .get("/auth/oidc/test/login?rd=%2Fapi%2Freports", None)
        .await;
    assert_eq!(start.status(), 302);
    let location = start.headers()["location"].to_str().unwrap().to_string();
    let who = Identity {
        sub: "browser-sub".into(),
        email: "browser@example.com".into(),
        email_verified: true,
    };
    let (code, state) = idp.authorize(&location, who);
    let back = gw
        .http
        .get(gw.url(&format!(
            "/auth/oidc/test/callback?code={code}&state={state}"
        )))
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .unwrap();
    assert_eq!(back.status(), 303);
    assert_eq!(back.headers()["location"], "/api/reports");
    let cookies: Vec<String> = back
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
        .collect();
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    let r = gw
        .http
        .get(gw.url("/api/reports"))
        .header("cookie", cookies.join("; "))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        echo.last().header("x-auth-email"),
        vec!["browser@example.com"]
    );
    // An rd to another site is made safe, as on the sign-in form.
    let start = gw
        .get(
            "/auth/oidc/test/login?rd=https%3A%2F%2Fevil.example%2F",
            None,
        )
        .await;
    let location = start.headers()["location"].to_str().unwrap().to_string();
    let (code, state) = idp.authorize(
        &location,
        Identity {
            sub: "browser-sub".into(),
            email: "browser@example.com".into(),
            email_verified: true,
        },
    );
    let back = gw
        .get(
            &format!("/auth/oidc/test/callback?code={code}&state={state}"),
            None,
        )
        .await;
    assert_eq!(back.status(), 303);
    assert_eq!(back.headers()["location"], "/");
}

#[tokio::test]
async fn a_provider_that_is_down_gives_the_sign_in_page_an_error_page() {
    let echo = Echo::start().await;
    let mut opts = Options::new(echo.addr);
    opts.extra = format!(
        r#"
[browser]
enabled = true

[[oidc]]
name = "down"
issuer = "http://127.0.0.1:{}"
client_id = "portcullis"
client_secret_env = "PT_OIDC_SECRET"
redirect_uri = "http://127.0.0.1/auth/oidc/down/callback"
allowed_redirects = ["https://app.example.com/"]
"#,
        free_port()
    );
    opts.env.push(("PT_OIDC_SECRET".into(), "s3cret".into()));
    let gw = Gateway::start(opts).await;
    let r = gw.get("/auth/oidc/down/login?rd=%2F", None).await;
    assert_eq!(r.status(), 502);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = r.text().await.unwrap();
    assert!(html.contains("Back to sign in"), "{html}");
    // The sign-in page itself still works.
    assert_eq!(gw.get("/auth/ui/login", None).await.status(), 200);
}
