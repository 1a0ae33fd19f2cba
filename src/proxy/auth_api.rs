//! Adapts HTTP to the `/auth` use-cases: routing by method and path, content-type and size
//! checks, typed JSON bodies, bearer authentication, and the responses of API.md §4.

use pingora::proxy::Session;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::respond::{self, ApiError};
use super::{Ctx, Shared};
use crate::access::{Denial, bearer};
use crate::auth::{AuditParams, AuthError, ClientInfo, RefreshResult};
use crate::model::{Role, User};
use crate::store::AdminUpdate;
use crate::tokens::Claims;

/// Largest request body accepted on /auth.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub use crate::access::is_auth_path;

#[derive(Deserialize)]
struct Credentials {
    email: String,
    password: String,
}

#[derive(Deserialize)]
struct RefreshBody {
    refresh_token: String,
}

#[derive(Deserialize)]
struct PasswordBody {
    current_password: String,
    new_password: String,
}

#[derive(Deserialize)]
struct LoginCode {
    login_code: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchUser {
    #[serde(default)]
    role: Option<Role>,
    #[serde(default)]
    is_active: Option<bool>,
}

/// The endpoints, by path shape.
enum Endpoint {
    Register,
    Login,
    Refresh,
    Logout,
    LogoutAll,
    Me,
    Sessions,
    Session(Uuid),
    Password,
    Jwks,
    AdminUsers,
    AdminUser(Uuid),
    AdminUserSessions(Uuid),
    AdminAudit,
    OidcLogin(String),
    OidcCallback(String),
    OidcExchange,
    OpenApi,
}

/// The OpenAPI 3.1 description of /auth, served as written (a test holds it to the router).
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

impl Endpoint {
    fn parse(path: &str) -> Option<Endpoint> {
        if path == "/.well-known/jwks.json" {
            return Some(Endpoint::Jwks);
        }
        let rest = path.strip_prefix("/auth/")?;
        let segs: Vec<&str> = rest.split('/').collect();
        let id = |s: &str| Uuid::parse_str(s).ok();
        Some(match segs.as_slice() {
            ["register"] => Endpoint::Register,
            ["login"] => Endpoint::Login,
            ["refresh"] => Endpoint::Refresh,
            ["logout"] => Endpoint::Logout,
            ["logout-all"] => Endpoint::LogoutAll,
            ["me"] => Endpoint::Me,
            ["sessions"] => Endpoint::Sessions,
            ["sessions", s] => Endpoint::Session(id(s)?),
            ["password"] => Endpoint::Password,
            ["jwks.json"] => Endpoint::Jwks,
            ["openapi.json"] => Endpoint::OpenApi,
            ["admin", "users"] => Endpoint::AdminUsers,
            ["admin", "audit"] => Endpoint::AdminAudit,
            ["admin", "users", s] => Endpoint::AdminUser(id(s)?),
            ["admin", "users", s, "sessions"] => Endpoint::AdminUserSessions(id(s)?),
            ["oidc", "exchange"] => Endpoint::OidcExchange,
            ["oidc", name, "login"] => Endpoint::OidcLogin(name.to_string()),
            ["oidc", name, "callback"] => Endpoint::OidcCallback(name.to_string()),
            _ => return None,
        })
    }

    fn allow(&self) -> &'static str {
        match self {
            Endpoint::Register
            | Endpoint::Login
            | Endpoint::Refresh
            | Endpoint::Logout
            | Endpoint::LogoutAll
            | Endpoint::Password
            | Endpoint::OidcExchange => "POST",
            Endpoint::OidcLogin(_) | Endpoint::OidcCallback(_) => "GET, HEAD",
            Endpoint::Me | Endpoint::Sessions | Endpoint::AdminUsers | Endpoint::AdminAudit => {
                "GET, HEAD"
            }
            Endpoint::Jwks | Endpoint::OpenApi => "GET, HEAD",
            Endpoint::Session(_) | Endpoint::AdminUserSessions(_) => "DELETE",
            Endpoint::AdminUser(_) => "PATCH",
        }
    }
}

/// Answers one /auth request; returns the status written.
pub async fn handle(shared: &Shared, session: &mut Session, ctx: &mut Ctx, path: &str) -> u16 {
    let result = dispatch(shared, session, ctx, path).await;
    match result {
        Ok(status) => status,
        Err(err) => {
            ctx.deny_reason = Some(err.code);
            if err.status == 408 {
                shared
                    .metrics
                    .client_limits
                    .with_label_values(&["body_timeout"])
                    .inc();
                tracing::debug!(request_id = %ctx.request_id, "/auth request body timed out");
            }
            if matches!(err.status, 408 | 413) {
                // The rest of the body is not read: the connection cannot be reused.
                session.set_keepalive(None);
            }
            if err.code == "rate_limited" {
                shared.metrics.auth_event("rate_limited");
            }
            respond::error(session, &err, &ctx.request_id).await
        }
    }
}

async fn dispatch(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut Ctx,
    path: &str,
) -> Result<u16, ApiError> {
    let endpoint = Endpoint::parse(path)
        .ok_or_else(|| ApiError::new(404, "not_found", "no such /auth endpoint"))?;
    let method = session.req_header().method.as_str().to_string();
    let allowed = endpoint.allow().split(", ").any(|m| m == method);
    if !allowed {
        return Err(ApiError::method_not_allowed(endpoint.allow()));
    }
    let auth = &shared.auth;
    let rid = ctx.request_id.clone();
    let client = ClientInfo {
        ip: ctx.client_ip,
        user_agent: session
            .req_header()
            .headers
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(512).collect()),
        request_id: Some(rid.to_string()),
    };
    match endpoint {
        Endpoint::Jwks => Ok(respond::json(session, 200, &auth.tokens().jwks(), false, &rid).await),
        Endpoint::OpenApi => Ok(respond::raw_json(session, OPENAPI.as_bytes(), &rid).await),
        Endpoint::Register => {
            let body: Credentials = read_json(session, shared).await?;
            let user = auth.register(&body.email, body.password, &client).await?;
            ctx.user_id = Some(user.id);
            shared.metrics.auth_event("register");
            Ok(user_response(session, 201, &user, &rid).await)
        }
        Endpoint::Login => {
            let body: Credentials = read_json(session, shared).await?;
            match auth.login(&body.email, body.password, &client).await {
                Ok(pair) => {
                    ctx.user_id = Some(pair.user.id);
                    shared.metrics.auth_event("login_ok");
                    Ok(respond::json(session, 200, &pair, true, &rid).await)
                }
                Err(e) => {
                    if matches!(
                        e,
                        AuthError::InvalidCredentials | AuthError::AccountDisabled
                    ) {
                        shared.metrics.auth_event("login_failed");
                    }
                    Err(e.into())
                }
            }
        }
        Endpoint::Refresh => {
            let body: RefreshBody = read_json(session, shared).await?;
            match auth.refresh(&body.refresh_token, &client).await? {
                RefreshResult::Ok(pair) => {
                    shared.metrics.auth_event("refresh");
                    Ok(respond::json(session, 200, &*pair, true, &rid).await)
                }
                RefreshResult::Invalid => Err(AuthError::InvalidToken.into()),
                RefreshResult::ReuseDetected => {
                    shared.metrics.auth_event("refresh_reuse_detected");
                    Err(AuthError::InvalidToken.into())
                }
            }
        }
        Endpoint::Logout => {
            let body: RefreshBody = read_json(session, shared).await?;
            auth.logout(&body.refresh_token, &client).await?;
            shared.metrics.auth_event("logout");
            Ok(respond::empty(session, 204, &rid).await)
        }
        Endpoint::LogoutAll => {
            let caller = caller(shared, session, ctx).await?;
            auth.logout_all(&caller, &client).await?;
            shared.metrics.auth_event("logout");
            Ok(respond::empty(session, 204, &rid).await)
        }
        Endpoint::Me => {
            let caller = caller(shared, session, ctx).await?;
            let user = auth.me(&caller).await?;
            Ok(user_response(session, 200, &user, &rid).await)
        }
        Endpoint::Sessions => {
            let caller = caller(shared, session, ctx).await?;
            let sessions = auth.sessions(&caller).await?;
            Ok(respond::json(
                session,
                200,
                &serde_json::json!({ "sessions": sessions }),
                true,
                &rid,
            )
            .await)
        }
        Endpoint::Session(sid) => {
            let caller = caller(shared, session, ctx).await?;
            auth.delete_session(&caller, sid, &client).await?;
            Ok(respond::empty(session, 204, &rid).await)
        }
        Endpoint::Password => {
            let caller = caller(shared, session, ctx).await?;
            let body: PasswordBody = read_json(session, shared).await?;
            auth.change_password(&caller, body.current_password, body.new_password, &client)
                .await?;
            Ok(respond::empty(session, 204, &rid).await)
        }
        Endpoint::AdminUsers => {
            let caller = caller(shared, session, ctx).await?;
            let query = query_pairs(session);
            let cursor = query.get("cursor").filter(|c| !c.is_empty());
            let page = auth
                .admin_list_users(
                    &caller,
                    query.get("limit").map(String::as_str),
                    cursor.map(String::as_str),
                )
                .await?;
            Ok(respond::json(session, 200, &page, true, &rid).await)
        }
        Endpoint::AdminAudit => {
            let caller = caller(shared, session, ctx).await?;
            let query = query_pairs(session);
            let get = |k: &str| query.get(k).map(String::as_str).filter(|v| !v.is_empty());
            let params = AuditParams {
                user: get("user"),
                event: get("event"),
                since: get("since"),
                cursor: get("cursor"),
                limit: get("limit"),
            };
            let page = auth.admin_audit(&caller, &params).await?;
            Ok(respond::json(session, 200, &page, true, &rid).await)
        }
        Endpoint::AdminUser(id) => {
            let caller = caller(shared, session, ctx).await?;
            if caller.role != Role::Admin {
                return Err(AuthError::Forbidden("this endpoint is for admins").into());
            }
            let body: PatchUser = read_json(session, shared).await?;
            let user = auth
                .admin_update_user(
                    &caller,
                    id,
                    AdminUpdate {
                        role: body.role,
                        is_active: body.is_active,
                    },
                    &client,
                )
                .await?;
            Ok(user_response(session, 200, &user, &rid).await)
        }
        Endpoint::OidcLogin(name) => {
            let query = query_pairs(session);
            let url = auth
                .oidc()
                .login_url(&name, query.get("redirect_to").map(String::as_str))
                .await?;
            Ok(respond::redirect(session, &url, &rid).await)
        }
        Endpoint::OidcCallback(name) => {
            let query = query_pairs(session);
            let get = |k: &str| query.get(k).map(String::as_str);
            let next = auth
                .oidc()
                .callback(&name, get("code"), get("state"), get("error"), &client)
                .await?;
            Ok(respond::redirect(session, &next.location, &rid).await)
        }
        Endpoint::OidcExchange => {
            let body: LoginCode = read_json(session, shared).await?;
            let pair = auth.oidc_exchange(&body.login_code, &client).await?;
            shared.metrics.auth_event("login_ok");
            Ok(respond::json(session, 200, &pair, true, &rid).await)
        }
        Endpoint::AdminUserSessions(id) => {
            let caller = caller(shared, session, ctx).await?;
            auth.admin_revoke_sessions(&caller, id, &client).await?;
            Ok(respond::empty(session, 204, &rid).await)
        }
    }
}

/// `{"user": User}` with `status`.
async fn user_response(session: &mut Session, status: u16, user: &User, rid: &str) -> u16 {
    respond::json(
        session,
        status,
        &serde_json::json!({ "user": user }),
        true,
        rid,
    )
    .await
}

/// The request's query parameters (first value of each name).
fn query_pairs(session: &Session) -> std::collections::HashMap<String, String> {
    let query = session.req_header().uri.query().unwrap_or_default();
    let mut out = std::collections::HashMap::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        out.entry(k.into_owned()).or_insert_with(|| v.into_owned());
    }
    out
}

/// Authenticates the Bearer caller of an /auth endpoint (full verification + revocation).
async fn caller(
    shared: &Shared,
    session: &Session,
    ctx: &mut Ctx,
) -> Result<std::sync::Arc<Claims>, ApiError> {
    let headers = &session.req_header().headers;
    let token = bearer(
        headers
            .get_all("authorization")
            .iter()
            .map(|v| v.as_bytes()),
    )?;
    let Some(token) = token else {
        return Err(Denial::MissingToken.into());
    };
    match shared.authorizer.authenticate(token).await {
        Ok(auth) => {
            ctx.user_id = Some(auth.claims.sub);
            Ok(auth.claims)
        }
        Err(denial) => Err(denial.into()),
    }
}

/// Reads and parses a JSON body: 415 for another content type, 413 over 64 KiB, 400 for
/// malformed JSON or a wrongly-typed field (named in the message), 408 for a body that sends
/// nothing for `server.body_timeout_secs` (over HTTP/1.1 Pingora's read timeout, set in
/// `request_filter`, fires first; over HTTP/2, where Pingora has none, this one does).
async fn read_json<T: DeserializeOwned>(
    session: &mut Session,
    shared: &Shared,
) -> Result<T, ApiError> {
    let idle = std::time::Duration::from_secs(shared.live.load().config.server.body_timeout_secs);
    let headers = &session.req_header().headers;
    let json = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ApiError::new(
            415,
            "unsupported_media_type",
            "the body must be JSON (Content-Type: application/json)",
        ));
    }
    let too_large = || {
        ApiError::new(
            413,
            "payload_too_large",
            format!("the body must be at most {MAX_BODY_BYTES} bytes"),
        )
    };
    let declared = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    loop {
        let chunk = tokio::time::timeout(idle, session.read_request_body())
            .await
            .map_err(|_| ApiError::request_timeout())?;
        match chunk {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY_BYTES {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) if e.etype() == &pingora::ErrorType::ReadTimedout => {
                return Err(ApiError::request_timeout());
            }
            Err(_) => return Err(ApiError::bad_request("the request body could not be read")),
        }
    }
    parse_json(&body)
}

/// Parses `body` into `T`, naming the offending field on error. Every /auth body is a JSON
/// object: serde would also fill a struct from an array (`["admin"]` as `{"role":"admin"}`).
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let first = body
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first.is_some_and(|b| *b != b'{') {
        return Err(ApiError::bad_request(
            "invalid JSON body: expected a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.classify() != serde_json::error::Category::Data || path == "." {
            ApiError::bad_request(format!("invalid JSON body: {inner}"))
        } else {
            ApiError::bad_request(format!("field `{path}`: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A concrete path for an OpenAPI path template.
    fn concrete(template: &str) -> String {
        template
            .replace("{id}", "0193b0d2-6f3a-7c1e-9a2b-3c4d5e6f7a8b")
            .replace("{name}", "example")
    }

    #[test]
    fn the_openapi_document_describes_exactly_the_router() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().unwrap();
        let mut documented = Vec::new();
        for (template, ops) in paths {
            let endpoint = Endpoint::parse(&concrete(template))
                .unwrap_or_else(|| panic!("{template} is documented but not routed"));
            let mut methods: Vec<String> = ops
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| ["get", "head", "post", "put", "patch", "delete"].contains(&k.as_str()))
                .map(|k| k.to_ascii_uppercase())
                .collect();
            methods.sort();
            let mut allowed: Vec<String> =
                endpoint.allow().split(", ").map(str::to_string).collect();
            allowed.sort();
            assert_eq!(methods, allowed, "{template}");
            documented.push(concrete(template));
        }
        // Every endpoint the router knows has a documented path.
        for path in [
            "/auth/register",
            "/auth/login",
            "/auth/refresh",
            "/auth/logout",
            "/auth/logout-all",
            "/auth/me",
            "/auth/sessions",
            "/auth/sessions/{id}",
            "/auth/password",
            "/auth/jwks.json",
            "/.well-known/jwks.json",
            "/auth/admin/users",
            "/auth/admin/users/{id}",
            "/auth/admin/users/{id}/sessions",
            "/auth/admin/audit",
            "/auth/oidc/{name}/login",
            "/auth/oidc/{name}/callback",
            "/auth/oidc/exchange",
            "/auth/openapi.json",
        ] {
            assert!(
                documented.contains(&concrete(path)),
                "{path} is routed but not documented"
            );
        }
    }

    #[test]
    fn json_errors_name_the_field() {
        let e = parse_json::<Credentials>(br#"{"email": 5, "password": "x"}"#)
            .err()
            .unwrap();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("`email`"), "{}", e.message);
        let e = parse_json::<Credentials>(br#"{"email": "a@b.c"}"#)
            .err()
            .unwrap();
        assert!(e.message.contains("password"), "{}", e.message);
        let e = parse_json::<Credentials>(b"{not json").err().unwrap();
        assert!(e.message.starts_with("invalid JSON body"), "{}", e.message);
        assert!(parse_json::<Credentials>(br#"{"email":"a","password":"b"} x"#).is_err());
        for not_an_object in [&br#"["admin"]"#[..], b" [\"admin\", true]", b"\"x\"", b"1"] {
            let e = parse_json::<PatchUser>(not_an_object).err().unwrap();
            assert_eq!(e.status, 400);
        }
        let e = parse_json::<PatchUser>(br#"{"role":"root"}"#)
            .err()
            .unwrap();
        assert!(e.message.contains("`role`"), "{}", e.message);
    }

    #[test]
    fn endpoints_parse_and_unknown_paths_do_not() {
        assert!(matches!(
            Endpoint::parse("/auth/login"),
            Some(Endpoint::Login)
        ));
        assert!(matches!(
            Endpoint::parse("/auth/admin/users/7f1c7c1e-8c44-4e59-9a53-0b1a5f1d2e3f/sessions"),
            Some(Endpoint::AdminUserSessions(_))
        ));
        assert!(Endpoint::parse("/auth/nope").is_none());
        assert!(Endpoint::parse("/auth/sessions/not-a-uuid").is_none());
        assert!(is_auth_path("/auth/login") && is_auth_path("/.well-known/jwks.json"));
        assert!(!is_auth_path("/authx"));
    }
}
