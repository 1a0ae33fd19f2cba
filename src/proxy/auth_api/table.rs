//! The `/auth` endpoints as data: method, path pattern, who may call, what body it takes, and
//! the handler. Adding an endpoint is one handler in `handlers.rs` and one line here; the
//! runner (`mod.rs`) does the matching, the 404/405, the bearer and admin checks and the body
//! reading for every endpoint alike, and a test holds this table and `docs/openapi.json`
//! together.

use http::Method;
use uuid::Uuid;

use super::Handler;
use super::handlers as h;
use super::ui;

/// Who may call an endpoint; checked before the body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone.
    Public,
    /// A valid access token (`Authorization: Bearer`), its session not revoked.
    Bearer,
    /// A valid access token of an admin.
    Admin,
}

/// The request body an endpoint takes; read (and its content type checked) before the
/// handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// None (anything sent is left unread).
    None,
    /// `application/json`, at most 64 KiB, a JSON object.
    Json,
    /// `application/x-www-form-urlencoded`, at most 64 KiB (HTML forms).
    Form,
}

/// A part of the API that configuration switches on; its endpoints do not exist (404)
/// while it is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// Always there.
    Core,
    /// `[browser] enabled`.
    Browser,
    /// `[browser] enabled` and `registration`.
    Registration,
}

/// One endpoint. A `GET` endpoint answers `HEAD` too.
pub struct Endpoint {
    /// The method it answers.
    pub method: Method,
    /// The path pattern, written as in `docs/openapi.json`: `{id}` is a UUID segment,
    /// `{name}` any one segment.
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
    /// The body it takes.
    pub body: Body,
    /// What answers it.
    pub handler: Handler,
    /// What must be switched on for it to exist.
    pub feature: Feature,
}

const fn ep(
    method: Method,
    path: &'static str,
    access: Access,
    body: Body,
    handler: Handler,
    feature: Feature,
) -> Endpoint {
    Endpoint {
        method,
        path,
        access,
        body,
        handler,
        feature,
    }
}

use Access::{Admin, Bearer, Public};
use Feature::{Browser, Core, Registration};

/// Every `/auth` endpoint (and `/.well-known/jwks.json`), one per line.
#[rustfmt::skip]
pub static ENDPOINTS: &[Endpoint] = &[
    ep(Method::POST,   "/auth/register",                  Public, Body::Json, h::register,              Core),
    ep(Method::POST,   "/auth/login",                     Public, Body::Json, h::login,                 Core),
    ep(Method::POST,   "/auth/refresh",                   Public, Body::Json, h::refresh,               Core),
    ep(Method::POST,   "/auth/logout",                    Public, Body::Json, h::logout,                Core),
    ep(Method::POST,   "/auth/logout-all",                Bearer, Body::None, h::logout_all,            Core),
    ep(Method::GET,    "/auth/me",                        Bearer, Body::None, h::me,                    Core),
    ep(Method::GET,    "/auth/sessions",                  Bearer, Body::None, h::sessions,              Core),
    ep(Method::DELETE, "/auth/sessions/{id}",             Bearer, Body::None, h::delete_session,        Core),
    ep(Method::POST,   "/auth/password",                  Bearer, Body::Json, h::password,              Core),
    ep(Method::GET,    "/auth/jwks.json",                 Public, Body::None, h::jwks,                  Core),
    ep(Method::GET,    "/.well-known/jwks.json",          Public, Body::None, h::jwks,                  Core),
    ep(Method::GET,    "/auth/openapi.json",              Public, Body::None, h::openapi,               Core),
    ep(Method::GET,    "/auth/admin/users",               Admin,  Body::None, h::admin_users,           Core),
    ep(Method::PATCH,  "/auth/admin/users/{id}",          Admin,  Body::Json, h::admin_update_user,     Core),
    ep(Method::DELETE, "/auth/admin/users/{id}/sessions", Admin,  Body::None, h::admin_revoke_sessions, Core),
    ep(Method::GET,    "/auth/admin/audit",               Admin,  Body::None, h::admin_audit,           Core),
    ep(Method::GET,    "/auth/oidc/{name}/login",         Public, Body::None, h::oidc_login,            Core),
    ep(Method::GET,    "/auth/oidc/{name}/callback",      Public, Body::None, h::oidc_callback,         Core),
    ep(Method::POST,   "/auth/oidc/exchange",             Public, Body::Json, h::oidc_exchange,         Core),
    ep(Method::GET,    "/auth/ui/login",                  Public, Body::None, ui::login_page,           Browser),
    ep(Method::POST,   "/auth/ui/login",                  Public, Body::Form, ui::login_submit,         Browser),
    ep(Method::POST,   "/auth/ui/logout",                 Public, Body::Form, ui::logout,               Browser),
    ep(Method::GET,    "/auth/ui/register",               Public, Body::None, ui::register_page,        Registration),
    ep(Method::POST,   "/auth/ui/register",               Public, Body::Form, ui::register_submit,      Registration),
];

/// The values a path pattern captured.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Params {
    /// `{id}`.
    pub id: Option<Uuid>,
    /// `{name}`.
    pub name: Option<String>,
}

/// Matches `path` against `pattern`; the captured values when it fits.
pub fn capture(pattern: &str, path: &str) -> Option<Params> {
    let mut params = Params::default();
    let mut want = pattern.split('/');
    let mut got = path.split('/');
    loop {
        match (want.next(), got.next()) {
            (None, None) => return Some(params),
            (Some("{id}"), Some(seg)) => params.id = Some(Uuid::parse_str(seg).ok()?),
            (Some("{name}"), Some(seg)) if !seg.is_empty() => params.name = Some(seg.to_string()),
            (Some(w), Some(seg)) if w == seg => {}
            _ => return None,
        }
    }
}

/// What the table says about a request: the endpoint for its method, or the methods its path
/// allows (405), or nothing (404).
pub enum Found<'t> {
    /// The endpoint and the values its pattern captured.
    Endpoint(&'t Endpoint, Params),
    /// The path exists; these methods are allowed (the `Allow` header).
    WrongMethod(String),
    /// No endpoint has this path.
    NotFound,
}

/// Looks `method` and `path` up in the endpoints of `table` whose feature is `on`.
pub fn find<'t>(
    table: &'t [Endpoint],
    on: impl Fn(Feature) -> bool,
    method: &Method,
    path: &str,
) -> Found<'t> {
    let mut allowed: Vec<&str> = Vec::new();
    for endpoint in table.iter().filter(|e| on(e.feature)) {
        let Some(params) = capture(endpoint.path, path) else {
            continue;
        };
        let answers = endpoint.method == *method
            || (endpoint.method == Method::GET && *method == Method::HEAD);
        if answers {
            return Found::Endpoint(endpoint, params);
        }
        allowed.push(endpoint.method.as_str());
        if endpoint.method == Method::GET {
            allowed.push("HEAD");
        }
    }
    if allowed.is_empty() {
        Found::NotFound
    } else {
        Found::WrongMethod(allowed.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "7f1c7c1e-8c44-4e59-9a53-0b1a5f1d2e3f";

    #[test]
    fn patterns_capture_uuids_and_names_and_nothing_else() {
        let p = capture("/auth/sessions/{id}", &format!("/auth/sessions/{ID}")).unwrap();
        assert_eq!(p.id, Uuid::parse_str(ID).ok());
        assert!(capture("/auth/sessions/{id}", "/auth/sessions/not-a-uuid").is_none());
        assert!(capture("/auth/sessions/{id}", "/auth/sessions").is_none());
        assert!(capture("/auth/sessions/{id}", &format!("/auth/sessions/{ID}/x")).is_none());
        let p = capture("/auth/oidc/{name}/login", "/auth/oidc/corp/login").unwrap();
        assert_eq!(p.name.as_deref(), Some("corp"));
        assert!(capture("/auth/oidc/{name}/login", "/auth/oidc//login").is_none());
        assert!(capture("/auth/login", "/auth/login/").is_none());
    }

    #[test]
    fn the_table_answers_the_method_or_says_which_are_allowed() {
        let found = |m: Method, p: &str| match find(ENDPOINTS, |f| f == Feature::Core, &m, p) {
            Found::Endpoint(e, _) => format!("{} {}", e.method, e.path),
            Found::WrongMethod(allow) => format!("405 {allow}"),
            Found::NotFound => "404".to_string(),
        };
        assert_eq!(found(Method::POST, "/auth/login"), "POST /auth/login");
        assert_eq!(found(Method::GET, "/auth/login"), "405 POST");
        assert_eq!(found(Method::HEAD, "/auth/me"), "GET /auth/me");
        assert_eq!(found(Method::POST, "/auth/me"), "405 GET, HEAD");
        assert_eq!(
            found(Method::DELETE, &format!("/auth/admin/users/{ID}/sessions")),
            "DELETE /auth/admin/users/{id}/sessions"
        );
        assert_eq!(found(Method::GET, "/auth/nope"), "404");
        assert_eq!(found(Method::DELETE, "/auth/sessions/not-a-uuid"), "404");
        // A feature that is off: its endpoints do not exist.
        assert_eq!(found(Method::GET, "/auth/ui/login"), "404");
        let all =
            |m: Method, p: &str| matches!(find(ENDPOINTS, |_| true, &m, p), Found::Endpoint(..));
        assert!(all(Method::GET, "/auth/ui/login") && all(Method::POST, "/auth/ui/register"));
    }

    #[test]
    fn no_two_endpoints_share_a_method_and_path() {
        for (i, a) in ENDPOINTS.iter().enumerate() {
            for b in &ENDPOINTS[i + 1..] {
                assert!(
                    !(a.method == b.method && a.path == b.path),
                    "{} {} twice",
                    a.method,
                    a.path
                );
            }
        }
    }
}
