//! Forward-auth: a proxy in front (nginx `auth_request`, Envoy `ext_authz`, Caddy
//! `forward_auth`, Traefik `ForwardAuth`) asks whether the request it holds may pass. The
//! original request is read from `X-Forwarded-*` / `X-Original-*` (or, for Envoy, from the
//! path after `/auth/verify`), believed only from `[forward_auth] trusted_proxies`, and
//! decided by `access::decide` — the route table and rules of the proxy path, nothing else.
//! Answers: 200 with the identity headers, 401 with `WWW-Authenticate`, 403 for everything
//! else (nginx turns any other status into a 500). `/auth/forward-auth` sends a browser
//! navigation without a usable credential to the sign-in page; `/auth/verify` never
//! redirects. Neither rotates a refresh token: a proxy in front may drop a `Set-Cookie`.

use pingora::proxy::Session;

use super::respond::{self, ApiError};
use super::{Ctx, Shared, browser};
use crate::access::browser as cookies_of;
use crate::access::{self, Denial};

/// The endpoints' path prefix (Envoy appends the original path).
pub const VERIFY: &str = "/auth/verify";
/// Caddy's and Traefik's endpoint.
pub const FORWARD_AUTH: &str = "/auth/forward-auth";

/// Whether `path` is a forward-auth endpoint.
pub fn is_forward_auth(path: &str) -> bool {
    path == VERIFY || path.starts_with("/auth/verify/") || path == FORWARD_AUTH
}

/// Answers one forward-auth question; returns the status written.
pub async fn handle(shared: &Shared, session: &mut Session, ctx: &mut Ctx, path: &str) -> u16 {
    let live = shared.live.load();
    let trusted = ctx.peer_ip.is_some_and(|ip| {
        live.config
            .forward_auth
            .trusted_proxies
            .iter()
            .any(|n| n.contains(&ip))
    });
    if !trusted {
        ctx.deny_reason = Some("untrusted_proxy");
        let err = ApiError::new(
            403,
            "forbidden",
            "only a proxy in forward_auth.trusted_proxies may ask",
        );
        return respond::error(session, &err, &ctx.request_id).await;
    }
    let req = session.req_header();
    let header = |names: &[&str]| {
        names.iter().find_map(|n| {
            req.headers
                .get(*n)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        })
    };
    let envoy_path = path.strip_prefix(VERIFY).filter(|p| p.starts_with('/'));
    let method_text = header(&["x-forwarded-method", "x-original-method"])
        .map(str::to_owned)
        .unwrap_or_else(|| req.method.as_str().to_owned());
    let uri_text = header(&["x-forwarded-uri", "x-original-uri"])
        .map(str::to_owned)
        .or_else(|| {
            envoy_path.map(|p| match req.uri.query() {
                Some(q) => format!("{p}?{q}"),
                None => p.to_owned(),
            })
        });
    let host = header(&["x-forwarded-host"])
        .or_else(|| header(&["host"]))
        .map(str::to_owned);
    let proto = header(&["x-forwarded-proto"]).unwrap_or("http").to_owned();
    let (Ok(method), Some(uri)) = (http::Method::from_bytes(method_text.as_bytes()), uri_text)
    else {
        let err = ApiError::new(403, "forbidden", "the original method or URI is missing");
        ctx.deny_reason = Some("bad_original_request");
        return respond::error(session, &err, &ctx.request_id).await;
    };
    let original_path = uri.split(['?', '#']).next().unwrap_or_default().to_owned();
    let navigation = cookies_of::is_navigation(&method, &req.headers);
    let request = access::Request {
        method: &method,
        path: &original_path,
        host: host.as_deref(),
        bearer: cookies_of::credential(&req.headers, live.cookies.as_ref()).bearer,
    };
    let decision =
        access::decide(&live.routes, live.path_policy, request, &shared.authorizer).await;
    let rid = ctx.request_id.clone();
    match decision {
        access::Decision::Forward { identity, .. } => {
            let mut headers: Vec<(String, String)> = Vec::new();
            if let Some(auth) = identity {
                ctx.user_id = Some(auth.claims.sub);
                for (name, value) in shared.forwarding.identity(&auth.claims) {
                    headers.push((name.as_str().to_owned(), value));
                }
            }
            let extra: Vec<(&str, &str)> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            respond::with_headers(session, 200, &extra, &rid).await
        }
        access::Decision::Deny { denial, .. } => {
            ctx.deny_reason = Some(denial.reason());
            shared.metrics.denied(denial.reason());
            let sign_in = path == FORWARD_AUTH
                && navigation
                && live.cookies.is_some()
                && matches!(
                    denial,
                    Denial::MissingToken
                        | Denial::InvalidToken(_)
                        | Denial::Revoked
                        | Denial::StepUp { .. }
                );
            if sign_in {
                let rd = format!("{proto}://{}{uri}", host.as_deref().unwrap_or_default());
                let location = browser::login_location(&rd);
                return respond::redirect_with(session, 302, &location, &[], &rid).await;
            }
            let err = match denial {
                Denial::Unavailable | Denial::AmbiguousAuthorization => {
                    // Only 2xx/401/403 are safe to give nginx.
                    ApiError::new(403, "forbidden", ApiError::from(denial).message)
                }
                other => ApiError::from(other),
            };
            respond::error(session, &err, &rid).await
        }
        access::Decision::NoRoute { .. } | access::Decision::Auth { .. } => {
            ctx.deny_reason = Some("no_route");
            let err = ApiError::new(403, "forbidden", "no route allows this request");
            respond::error(session, &err, &rid).await
        }
        access::Decision::BadPath(e) => {
            ctx.deny_reason = Some("bad_path");
            let err = ApiError::new(403, "forbidden", e.to_string());
            respond::error(session, &err, &rid).await
        }
    }
}
