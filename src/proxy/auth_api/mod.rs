//! Adapts HTTP to the `/auth` use-cases. The endpoints are a table (`table.rs`: method, path
//! pattern, access, body, handler); this runner matches a request against it, answers 404 and
//! 405, authenticates the caller, reads and checks the body, then calls the endpoint's handler
//! (`handlers.rs`) with a [`Call`] and turns its error, if any, into the response of docs/api.md, "Errors".

mod handlers;
pub mod table;
mod ui;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use pingora::proxy::Session;
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::respond::{self, ApiError};
use super::{Ctx, Shared};
use crate::access::{Denial, bearer};
use crate::auth::{AuthError, AuthService, ClientInfo};
use crate::model::{Role, User};
use crate::tokens::Claims;
use table::{Access, Body, ENDPOINTS, Feature, Found, Params};

/// Largest request body accepted on /auth.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub use crate::access::is_auth_path;

/// The OpenAPI 3.1 description of /auth, served as written (a test holds it to the table).
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

/// What a handler returns: the status it wrote, or the error the runner writes.
pub type Reply<'a> = Pin<Box<dyn Future<Output = Result<u16, ApiError>> + Send + 'a>>;

/// An endpoint's handler.
pub type Handler = for<'a> fn(Call<'a>) -> Reply<'a>;

/// One `/auth` request as its handler sees it: checked by the runner against its endpoint's
/// [`Access`] and [`Body`].
pub struct Call<'a> {
    shared: &'a Shared,
    session: &'a mut Session,
    ctx: &'a mut Ctx,
    params: Params,
    caller: Option<Arc<Claims>>,
    body: Vec<u8>,
    client: ClientInfo,
}

impl Call<'_> {
    fn auth(&self) -> &AuthService {
        &self.shared.auth
    }

    /// The authenticated caller (endpoints with `Bearer` or `Admin` access).
    fn caller(&self) -> Result<&Claims, ApiError> {
        self.caller
            .as_deref()
            .ok_or_else(|| ApiError::new(500, "internal", "internal error"))
    }

    /// The path's `{id}`.
    fn id(&self) -> Result<Uuid, ApiError> {
        self.params.id.ok_or_else(ApiError::not_found)
    }

    /// The path's `{name}`.
    fn name(&self) -> Result<&str, ApiError> {
        self.params.name.as_deref().ok_or_else(ApiError::not_found)
    }

    /// The JSON body, parsed into `T` (the runner read it and checked its type and size).
    fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        parse_json(&self.body)
    }

    /// The request's query parameters (first value of each name).
    fn query(&self) -> std::collections::HashMap<String, String> {
        query_pairs(self.session)
    }

    /// A JSON response with `Cache-Control: no-store` (tokens, users, sessions).
    async fn json_reply<T: Serialize>(&mut self, status: u16, body: &T) -> u16 {
        respond::json(self.session, status, body, true, &self.ctx.request_id).await
    }

    /// A JSON response that caches may keep (public keys).
    async fn json_cacheable<T: Serialize>(&mut self, body: &T) -> u16 {
        respond::json(self.session, 200, body, false, &self.ctx.request_id).await
    }

    /// `{"user": User}` with `status`.
    async fn user(&mut self, status: u16, user: &User) -> u16 {
        self.json_reply(status, &serde_json::json!({ "user": user }))
            .await
    }

    async fn raw_json(&mut self, body: &[u8]) -> u16 {
        respond::raw_json(self.session, body, &self.ctx.request_id).await
    }

    async fn empty(&mut self, status: u16) -> u16 {
        respond::empty(self.session, status, &self.ctx.request_id).await
    }

    async fn redirect(&mut self, location: &str) -> u16 {
        respond::redirect(self.session, location, &self.ctx.request_id).await
    }
}

/// Answers one /auth request; returns the status written.
pub async fn handle(shared: &Shared, session: &mut Session, ctx: &mut Ctx, path: &str) -> u16 {
    if super::forward_auth::is_forward_auth(path) {
        // Any method, answered for a proxy in front: not part of the JSON API.
        return super::forward_auth::handle(shared, session, ctx, path).await;
    }
    match run(shared, session, ctx, path).await {
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

/// The table's runner: endpoint, access, body, then the handler.
async fn run(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut Ctx,
    path: &str,
) -> Result<u16, ApiError> {
    let method = session.req_header().method.clone();
    let (browser, registration) = {
        let live = shared.live.load();
        let b = &live.config.browser;
        (b.enabled, b.enabled && b.registration)
    };
    let on = |f: Feature| match f {
        Feature::Core => true,
        Feature::Browser => browser,
        Feature::Registration => registration,
    };
    let (endpoint, params) = match table::find(ENDPOINTS, on, &method, path) {
        Found::Endpoint(endpoint, params) => (endpoint, params),
        Found::WrongMethod(allow) => return Err(ApiError::method_not_allowed(&allow)),
        Found::NotFound => return Err(ApiError::new(404, "not_found", "no such /auth endpoint")),
    };
    let caller = match endpoint.access {
        Access::Public => None,
        Access::Bearer => Some(authenticate(shared, session, ctx).await?),
        Access::Admin => {
            let caller = authenticate(shared, session, ctx).await?;
            if caller.role != Role::Admin {
                return Err(AuthError::Forbidden("this endpoint is for admins").into());
            }
            Some(caller)
        }
    };
    let body = match endpoint.body {
        Body::None => Vec::new(),
        Body::Json => read_body(session, shared, "application/json").await?,
        Body::Form => read_body(session, shared, "application/x-www-form-urlencoded").await?,
    };
    let client = super::client_info(session, ctx);
    (endpoint.handler)(Call {
        shared,
        session,
        ctx,
        params,
        caller,
        body,
        client,
    })
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
async fn authenticate(
    shared: &Shared,
    session: &Session,
    ctx: &mut Ctx,
) -> Result<Arc<Claims>, ApiError> {
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

/// Reads the body of media type `media`: 415 for another content type, 413 over 64 KiB, 408
/// for a body that sends nothing for `server.body_timeout_secs` (over HTTP/1.1 Pingora's read
/// timeout, set in `request_filter`, fires first; over HTTP/2, where Pingora has none, this
/// one does).
async fn read_body(
    session: &mut Session,
    shared: &Shared,
    media: &str,
) -> Result<Vec<u8>, ApiError> {
    let idle = std::time::Duration::from_secs(shared.live.load().config.server.body_timeout_secs);
    let headers = &session.req_header().headers;
    let typed = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case(media));
    if !typed {
        let what = if media == "application/json" {
            "JSON"
        } else {
            "a form"
        };
        return Err(ApiError::new(
            415,
            "unsupported_media_type",
            format!("the body must be {what} (Content-Type: {media})"),
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
    Ok(body)
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
    use super::handlers::{Credentials, PatchUser};
    use super::table::{Access, Body, ENDPOINTS};
    use super::*;

    #[test]
    fn the_openapi_document_describes_exactly_the_table() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().unwrap();
        // Every documented operation is an endpoint of the table, with the same access and
        // body; every endpoint is documented.
        let mut documented = 0;
        for (template, ops) in paths {
            for (method, op) in ops.as_object().unwrap() {
                let method = method.to_ascii_uppercase();
                if !["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"].contains(&method.as_str()) {
                    continue;
                }
                let want = if method == "HEAD" { "GET" } else { &method };
                let endpoint = ENDPOINTS
                    .iter()
                    .find(|e| e.path == template && e.method.as_str() == want)
                    .unwrap_or_else(|| panic!("{method} {template} is documented, not routed"));
                let secured = op
                    .get("security")
                    .is_some_and(|s| s.as_array().is_some_and(|a| !a.is_empty()));
                assert_eq!(
                    secured,
                    endpoint.access != Access::Public,
                    "{method} {template}: security"
                );
                let media: Vec<&str> = op["requestBody"]["content"]
                    .as_object()
                    .map(|c| c.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                let expected: &[&str] = match endpoint.body {
                    Body::None => &[],
                    Body::Json => &["application/json"],
                    Body::Form => &["application/x-www-form-urlencoded"],
                };
                assert_eq!(media, expected, "{method} {template}: request body");
                if method != "HEAD" {
                    documented += 1;
                }
            }
        }
        for e in ENDPOINTS {
            let op = paths
                .get(e.path)
                .and_then(|ops| ops.get(e.method.as_str().to_ascii_lowercase()));
            assert!(
                op.is_some(),
                "{} {} is routed, not documented",
                e.method,
                e.path
            );
            if e.method == http::Method::GET {
                assert!(
                    paths[e.path].get("head").is_some(),
                    "HEAD {} is routed, not documented",
                    e.path
                );
            }
        }
        assert_eq!(documented, ENDPOINTS.len());
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
    fn auth_paths_are_the_gateways_own() {
        assert!(is_auth_path("/auth/login") && is_auth_path("/.well-known/jwks.json"));
        assert!(!is_auth_path("/authx"));
    }
}
