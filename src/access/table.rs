//! The route table as operators see it: each compiled route in match order, the routes that
//! can never match or that expose stricter ones, and one request explained. Shared by
//! `portcullis routes` and the admin listener; every answer comes from [`Routes`] and
//! [`decide`] themselves, never from a second matcher.

use std::sync::Arc;

use http::Method;
use serde::Serialize;

use super::decision::{Decision, Offline, Request, decide};
use super::normalize::PathPolicy;
use super::routes::{RouteEntry, Routes};
use crate::config::AuthMode;
use crate::model::Role;

/// One route as listed (`GET /routes`, `portcullis routes list`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RouteView {
    /// Position in match order, from 1.
    pub position: usize,
    /// Path prefix.
    pub prefix: String,
    /// Host the route is limited to (`null` = any).
    pub host: Option<String>,
    /// Methods matched (empty = all).
    pub methods: Vec<String>,
    /// `none`, `optional` or `required`.
    pub auth: &'static str,
    /// Roles allowed (empty = any signed-in user).
    pub roles: Vec<&'static str>,
    /// Upstream name.
    pub upstream: String,
    /// The prefix is removed before forwarding.
    pub strip_prefix: bool,
    /// The client's Authorization header is forwarded.
    pub forward_token: bool,
    /// The prefix matches byte for byte instead of ignoring ASCII case.
    pub case_sensitive: bool,
    /// A second factor (`acr` `aal2`) is required.
    pub mfa: bool,
    /// The caller's sign-in may be at most this old (seconds).
    pub max_auth_age_secs: Option<u64>,
}

fn auth_name(auth: AuthMode) -> &'static str {
    match auth {
        AuthMode::None => "none",
        AuthMode::Optional => "optional",
        AuthMode::Required => "required",
    }
}

impl RouteView {
    /// The view of `entry` at `position` (from 1).
    pub fn new(position: usize, entry: &RouteEntry) -> RouteView {
        RouteView {
            position,
            prefix: entry.prefix.clone(),
            host: entry.host.clone(),
            methods: entry.methods.iter().map(|m| m.to_string()).collect(),
            auth: auth_name(entry.auth),
            roles: entry.roles.iter().map(|r| r.as_str()).collect(),
            upstream: entry.upstream.clone(),
            strip_prefix: entry.strip_prefix,
            forward_token: entry.forward_token,
            case_sensitive: entry.case_sensitive,
            mfa: entry.mfa,
            max_auth_age_secs: entry.max_auth_age_secs,
        }
    }
}

/// Every route in match order.
pub fn list(routes: &Routes) -> Vec<RouteView> {
    routes
        .iter()
        .enumerate()
        .map(|(i, e)| RouteView::new(i + 1, e))
        .collect()
}

/// Whether `a` matches every path `b` matches (prefix equal, case permitting).
fn same_prefix_covers(a: &RouteEntry, b: &RouteEntry) -> bool {
    if a.case_sensitive {
        b.case_sensitive && a.prefix == b.prefix
    } else {
        a.prefix.eq_ignore_ascii_case(&b.prefix)
    }
}

/// Whether `a`'s host and method rules admit every request `b`'s do.
fn rules_cover(a: &RouteEntry, b: &RouteEntry) -> bool {
    let host = a.host.is_none() || a.host == b.host;
    let methods = a.methods.is_empty()
        || (!b.methods.is_empty() && b.methods.iter().all(|m| a.methods.contains(m)));
    host && methods
}

/// Whether some request satisfies the host and method rules of both.
fn rules_overlap(a: &RouteEntry, b: &RouteEntry) -> bool {
    let host = a.host.is_none() || b.host.is_none() || a.host == b.host;
    let methods = a.methods.is_empty()
        || b.methods.is_empty()
        || a.methods.iter().any(|m| b.methods.contains(m));
    host && methods
}

fn describe(e: &RouteEntry) -> String {
    let mut s = e.prefix.clone();
    if let Some(h) = &e.host {
        s.push_str(&format!(" (host {h})"));
    }
    if !e.methods.is_empty() {
        let m: Vec<String> = e.methods.iter().map(|m| m.to_string()).collect();
        s.push_str(&format!(" [{}]", m.join(",")));
    }
    s
}

/// The roles a route lets through (every role when it has no role list or needs no token).
fn allowed_roles(e: &RouteEntry) -> Vec<Role> {
    [Role::User, Role::Admin]
        .into_iter()
        .filter(|r| e.auth == AuthMode::None || e.allows(*r))
        .collect()
}

/// Whether `strict` refuses a caller `loose` lets through: it requires a token where `loose`
/// does not, or it admits fewer roles.
fn stricter(strict: &RouteEntry, loose: &RouteEntry) -> Option<String> {
    if strict.auth == AuthMode::Required && loose.auth != AuthMode::Required {
        return Some(format!(
            "auth = \"required\" where {} has auth = \"{}\"",
            loose.prefix,
            auth_name(loose.auth)
        ));
    }
    if strict.auth != AuthMode::None {
        let strict_roles = allowed_roles(strict);
        let missing: Vec<&str> = allowed_roles(loose)
            .into_iter()
            .filter(|r| !strict_roles.contains(r))
            .map(|r| r.as_str())
            .collect();
        if !missing.is_empty() {
            let roles: Vec<&str> = strict.roles.iter().map(|r| r.as_str()).collect();
            return Some(format!(
                "roles [{}] where {} also lets role {} through",
                roles.join(", "),
                loose.prefix,
                missing.join(", ")
            ));
        }
    }
    None
}

/// Problems with the table, one sentence each: routes that can never match, routes whose host
/// and method rules overlap (which one wins is decided by the match order), and `strip_prefix`
/// routes that reach another route's upstream paths under looser rules (docs/api.md, "Path normalization").
pub fn warnings(routes: &Routes) -> Vec<String> {
    let entries: Vec<&Arc<RouteEntry>> = routes.iter().collect();
    let mut out = Vec::new();
    for (j, later) in entries.iter().enumerate() {
        let earlier = entries[..j]
            .iter()
            .enumerate()
            .filter(|(_, e)| same_prefix_covers(e, later) || same_prefix_covers(later, e));
        let mut shadowed = false;
        for (i, e) in earlier {
            if same_prefix_covers(e, later) && rules_cover(e, later) {
                out.push(format!(
                    "route #{} {} can never match: route #{} {} matches every request it would",
                    j + 1,
                    describe(later),
                    i + 1,
                    describe(e)
                ));
                shadowed = true;
                break;
            }
        }
        if shadowed {
            continue;
        }
        for (i, e) in entries[..j].iter().enumerate() {
            // A later route that admits everything an earlier one does is its fallback (a
            // deliberate refinement); only rules neither of which contains the other are named.
            if (same_prefix_covers(e, later) || same_prefix_covers(later, e))
                && rules_overlap(e, later)
                && !rules_cover(later, e)
            {
                out.push(format!(
                    "route #{} {} overlaps route #{} {}: requests both match go to route #{}",
                    j + 1,
                    describe(later),
                    i + 1,
                    describe(e),
                    i + 1
                ));
            }
        }
    }
    for strip in entries.iter().filter(|e| e.strip_prefix) {
        // Routes under the strip route's own prefix guard its path space (they are how an
        // exposure is closed), not another part of the upstream.
        let under_strip = |e: &RouteEntry| {
            e.prefix.len() >= strip.prefix.len()
                && e.prefix.as_bytes()[..strip.prefix.len()]
                    .eq_ignore_ascii_case(strip.prefix.as_bytes())
        };
        for other in entries
            .iter()
            .filter(|e| e.upstream == strip.upstream && !under_strip(e))
        {
            let Some(why) = stricter(other, strip) else {
                continue;
            };
            // The path that reaches `other`'s upstream path through the strip route; warn only
            // when the real matcher does send it to the strip route.
            let exposed = format!(
                "{}{}",
                strip.prefix.trim_end_matches('/'),
                other.prefix.trim_end_matches('/')
            );
            let method = other.methods.first().cloned().unwrap_or(Method::GET);
            let probe = format!("{exposed}/x");
            let reaches = routes
                .find(strip.host.as_deref(), &method, &probe)
                .is_some_and(|found| Arc::ptr_eq(found, strip));
            if reaches {
                out.push(format!(
                    "route {} strips its prefix onto upstream \"{}\", which also serves {} with stricter rules ({why}): {exposed}/… reaches {} under the rules of {}",
                    strip.prefix,
                    strip.upstream,
                    other.prefix,
                    other.prefix,
                    strip.prefix
                ));
            }
        }
    }
    out
}

/// Who `explain` pretends the caller is.
#[derive(Debug, Clone, Copy)]
pub enum Caller<'a> {
    /// No Authorization header.
    Anonymous,
    /// A valid token with this role (never checked against the database).
    Role(Role),
    /// This token, verified with the configured keys (not checked for revocation).
    Token(&'a str, &'a crate::tokens::TokenService),
}

/// One request explained (`routes explain`, `GET /routes/explain`).
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// Method as decided on (upper-case).
    pub method: String,
    /// The path as sent (query removed).
    pub path: String,
    /// Host used for matching.
    pub host: Option<String>,
    /// The normalized path (`null` when refused).
    pub normalized_path: Option<String>,
    /// Why normalization refused the path.
    pub path_error: Option<String>,
    /// The route that matched.
    pub route: Option<RouteView>,
    /// Its upstream.
    pub upstream: Option<String>,
    /// What the upstream receives (after `strip_prefix`).
    pub upstream_path: Option<String>,
    /// `forward`, `auth_api`, or the status and reason, e.g. `401 missing_token`.
    pub decision: String,
    /// HTTP status of a refusal (`null` when forwarded or left to the /auth API).
    pub status: Option<u16>,
    /// Stable reason label: `forward`, `no_route`, `bad_path`, `missing_token`…
    pub reason: &'static str,
    /// A sentence for people.
    pub detail: String,
    /// Role (and user, for a verified token) the decision used.
    pub identity: Option<super::decision::OfflineIdentity>,
    /// What an offline explanation cannot know.
    pub note: Option<String>,
}

/// Why `explain` could not even form a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    /// Not an HTTP method.
    #[error("{0:?} is not an HTTP method")]
    Method(String),
}

/// Explains `method url` the way the proxy decides it. `url` is a path (`/api/x?q`) or an
/// absolute URL whose host is used unless `host` is given.
pub async fn explain(
    routes: &Routes,
    policy: PathPolicy,
    method: &str,
    url: &str,
    host: Option<&str>,
    caller: Caller<'_>,
) -> Result<Explanation, ExplainError> {
    let method_name = method.trim().to_ascii_uppercase();
    let method = Method::from_bytes(method_name.as_bytes())
        .map_err(|_| ExplainError::Method(method.to_string()))?;
    let mut out = Explanation {
        method: method_name,
        path: url.to_string(),
        host: host.map(str::to_string),
        normalized_path: None,
        path_error: None,
        route: None,
        upstream: None,
        upstream_path: None,
        decision: String::new(),
        status: None,
        reason: "",
        detail: String::new(),
        identity: None,
        note: None,
    };
    // The same parser Pingora's request line goes through.
    let uri = match url.parse::<http::Uri>() {
        Ok(u) => u,
        Err(e) => {
            out.decision = "400 bad_path".into();
            out.status = Some(400);
            out.reason = "bad_path";
            out.path_error = Some(format!("the URL cannot be parsed: {e}"));
            out.detail = "the request line is refused before any routing".into();
            return Ok(out);
        }
    };
    out.path = uri.path().to_string();
    if out.host.is_none() {
        out.host = uri.authority().map(|a| a.as_str().to_string());
    }
    let (offline, bearer) = match caller {
        Caller::Anonymous => (Offline::Role(Role::User), None),
        Caller::Role(r) => (Offline::Role(r), Some("(a valid token)")),
        Caller::Token(t, tokens) => {
            out.note = Some(
                "the token's signature, issuer, audience and times were checked with the configured keys; whether its session was revoked cannot be checked offline"
                    .into(),
            );
            (Offline::Tokens(tokens), Some(t))
        }
    };
    let request = Request {
        method: &method,
        path: uri.path(),
        host: out.host.as_deref(),
        bearer: Ok(bearer),
    };
    let decision = decide(routes, policy, request, &offline).await;
    out.normalized_path = decision.path().map(str::to_string);
    out.status = decision.status();
    out.reason = decision.reason();
    out.decision = match out.status {
        Some(s) => format!("{s} {}", out.reason),
        None => out.reason.to_string(),
    };
    if let Some(route) = decision.route() {
        let position = routes
            .iter()
            .position(|e| Arc::ptr_eq(e, route))
            .map_or(0, |p| p + 1);
        out.route = Some(RouteView::new(position, route));
        out.upstream = Some(route.upstream.clone());
        if let Some(path) = decision.path() {
            out.upstream_path = Some(route.upstream_path(path).into_owned());
        }
    }
    out.detail = match &decision {
        Decision::BadPath(e) => {
            out.path_error = Some(e.to_string());
            format!("refused before routing: {e}")
        }
        Decision::Auth { .. } => "served by the gateway's own /auth API".into(),
        Decision::NoRoute { .. } => "no route matches this method, host and path".into(),
        Decision::Deny { denial, route, .. } => match denial {
            super::Denial::MissingToken => {
                format!("route {} requires a bearer token", route.prefix)
            }
            super::Denial::InvalidToken(e) => format!("the token is refused: {e}"),
            super::Denial::InsufficientRole => {
                let roles: Vec<&str> = route.roles.iter().map(|r| r.as_str()).collect();
                format!("route {} allows roles [{}]", route.prefix, roles.join(", "))
            }
            super::Denial::StepUp { acr, max_age } => {
                let mut rules = Vec::new();
                if *acr {
                    rules.push("a second factor (acr aal2)".to_string());
                }
                if let Some(max) = max_age {
                    rules.push(format!("a sign-in at most {max} s old"));
                }
                format!("route {} needs {}", route.prefix, rules.join(" and "))
            }
            other => format!("refused: {}", other.reason()),
        },
        Decision::Forward {
            identity, route, ..
        } => {
            out.identity = identity.clone();
            match identity {
                Some(id) => format!(
                    "forwarded to upstream \"{}\" with the identity of role {}",
                    route.upstream,
                    id.role.as_str()
                ),
                None => format!(
                    "forwarded to upstream \"{}\" without identity (auth = \"{}\")",
                    route.upstream,
                    auth_name(route.auth)
                ),
            }
        }
    };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Route;

    fn route(prefix: &str, auth: AuthMode, roles: &[&str]) -> Route {
        Route {
            prefix: prefix.into(),
            upstream: "api".into(),
            auth,
            roles: roles.iter().map(|r| r.to_string()).collect(),
            methods: vec![],
            host: None,
            strip_prefix: false,
            forward_token: false,
            case_sensitive: false,
            websocket_idle_timeout_secs: 300,
            mfa: false,
            max_auth_age_secs: None,
        }
    }

    #[test]
    fn a_route_covered_by_an_earlier_one_is_reported_as_never_matching() {
        let mut get_only = route("/API/", AuthMode::None, &[]);
        get_only.methods = vec!["GET".into()];
        let routes = Routes::new(&[
            route("/api/", AuthMode::Required, &[]),
            get_only,
            route("/api/", AuthMode::None, &[]),
        ]);
        let w = warnings(&routes);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("#3 /api/ can never match"), "{w:?}");
    }

    #[test]
    fn a_narrower_host_or_method_is_not_shadowed_but_overlaps_are_named() {
        let mut by_host = route("/x/", AuthMode::None, &[]);
        by_host.host = Some("a.example".into());
        let mut by_method = route("/x/", AuthMode::Required, &[]);
        by_method.methods = vec!["POST".into()];
        let routes = Routes::new(&[by_method, by_host, route("/x/", AuthMode::Required, &[])]);
        let w = warnings(&routes);
        assert!(w.iter().all(|w| !w.contains("never match")), "{w:?}");
        assert!(
            w.iter()
                .any(|w| w.contains("#2 /x/ [POST] overlaps route #1 /x/ (host a.example)")),
            "{w:?}"
        );
    }

    #[test]
    fn a_strip_route_onto_a_stricter_upstream_path_is_an_exposure() {
        let mut stat = route("/static/", AuthMode::None, &[]);
        stat.strip_prefix = true;
        let routes = Routes::new(&[
            route("/api/admin/", AuthMode::Required, &["admin"]),
            route("/api/", AuthMode::Required, &[]),
            stat.clone(),
        ]);
        let w = warnings(&routes);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w.iter().any(|w| w.contains("/static/api/admin/…")), "{w:?}");
        // Closed by a stricter route on the exposed path itself: no warning for it.
        let routes = Routes::new(&[
            route("/api/admin/", AuthMode::Required, &["admin"]),
            route("/static/api/admin/", AuthMode::Required, &["admin"]),
            stat,
        ]);
        let w = warnings(&routes);
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn stricter_means_a_token_or_fewer_roles() {
        let e = |auth, roles: &[&str]| {
            Routes::new(&[route("/p/", auth, roles)])
                .iter()
                .next()
                .unwrap()
                .as_ref()
                .clone()
        };
        let open = e(AuthMode::None, &[]);
        let any_user = e(AuthMode::Required, &[]);
        let admin = e(AuthMode::Required, &["admin"]);
        assert!(stricter(&any_user, &open).is_some());
        assert!(stricter(&admin, &any_user).is_some());
        assert!(stricter(&any_user, &admin).is_none());
        assert!(stricter(&open, &any_user).is_none());
        assert!(stricter(&e(AuthMode::Optional, &["admin"]), &open).is_some());
    }

    #[test]
    fn explain_reports_path_route_and_decision() {
        let routes = Routes::new(&[route("/api/admin/", AuthMode::Required, &["admin"])]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let run = |m: &str, u: &str, c: Caller<'static>| {
            rt.block_on(explain(&routes, PathPolicy::default(), m, u, None, c))
        };
        let e = run(
            "get",
            "http://h.example/api/x/../admin/a?q=1",
            Caller::Role(Role::User),
        )
        .unwrap();
        assert_eq!(e.normalized_path.as_deref(), Some("/api/admin/a"));
        assert_eq!(e.host.as_deref(), Some("h.example"));
        assert_eq!(e.decision, "403 insufficient_scope");
        assert_eq!(e.upstream.as_deref(), Some("api"));
        let e = run("GET", "/api/%2fadmin", Caller::Anonymous).unwrap();
        assert_eq!(e.decision, "400 bad_path");
        assert!(e.path_error.is_some());
        let e = run("GET", "/api/admin/", Caller::Anonymous).unwrap();
        assert_eq!(e.decision, "401 missing_token");
        assert!(run("G E T", "/", Caller::Anonymous).is_err());
    }
}
