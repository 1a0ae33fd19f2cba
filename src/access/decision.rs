//! The pure part of the per-request decision — normalize, /auth or not, route, auth mode and
//! token presence, role — as one function. The proxy runs it with the real verifier (signature
//! and revocation); `portcullis routes explain` and the admin listener run it with an offline
//! one, so an explanation can never disagree with the proxy about anything but revocation.

use std::future::Future;
use std::sync::Arc;

use http::Method;

use super::normalize::{PathError, PathPolicy, normalize_with};
use super::routes::{RouteEntry, Routes};
use super::{Authenticated, Authorizer, Denial};
use crate::config::AuthMode;
use crate::model::Role;
use crate::tokens::TokenService;

/// Whether a normalized path is served by the gateway itself (the /auth API and the JWKS).
pub fn is_auth_path(path: &str) -> bool {
    path == "/auth" || path.starts_with("/auth/") || path == "/.well-known/jwks.json"
}

/// A request as the decision sees it.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// Request method.
    pub method: &'a Method,
    /// Path as received (percent-encoded, without the query).
    pub path: &'a str,
    /// `Host` header, port allowed.
    pub host: Option<&'a str>,
    /// The bearer token, or why the Authorization headers are unusable (see [`super::bearer`]).
    pub bearer: Result<Option<&'a str>, Denial>,
}

/// Turns a bearer token into an identity; the proxy checks signature and revocation, an
/// offline explanation only what it can.
pub trait Verifier {
    /// What a successful check yields.
    type Identity;
    /// Verifies `token`.
    fn authenticate(&self, token: &str) -> impl Future<Output = Result<Self::Identity, Denial>>;
    /// The role the identity holds now.
    fn role(identity: &Self::Identity) -> Role;
    /// Whether the identity's session has a second factor (`acr` `aal2`), and when it
    /// authenticated (unix seconds).
    fn assurance(identity: &Self::Identity) -> (bool, i64);
}

impl Verifier for Authorizer {
    type Identity = Authenticated;

    fn authenticate(&self, token: &str) -> impl Future<Output = Result<Authenticated, Denial>> {
        Authorizer::authenticate(self, token)
    }

    fn role(identity: &Authenticated) -> Role {
        identity.claims.role
    }

    fn assurance(identity: &Authenticated) -> (bool, i64) {
        (identity.claims.acr == "aal2", identity.claims.auth_time)
    }
}

/// What happens to a request.
#[derive(Debug, Clone)]
pub enum Decision<I> {
    /// 400: the path cannot be normalized safely; nothing is forwarded.
    BadPath(PathError),
    /// Served by the /auth API (its own rules apply).
    Auth {
        /// Normalized path.
        path: String,
    },
    /// 404: no route matches.
    NoRoute {
        /// Normalized path.
        path: String,
    },
    /// Refused on a matched route.
    Deny {
        /// Normalized path.
        path: String,
        /// The route that matched.
        route: Arc<RouteEntry>,
        /// Why.
        denial: Denial,
    },
    /// Forwarded to the route's upstream.
    Forward {
        /// Normalized path.
        path: String,
        /// The route that matched.
        route: Arc<RouteEntry>,
        /// The caller, when a token was presented and accepted.
        identity: Option<I>,
    },
}

/// The decision for `req` under `routes` and `policy`.
pub async fn decide<V: Verifier>(
    routes: &Routes,
    policy: PathPolicy,
    req: Request<'_>,
    verifier: &V,
) -> Decision<V::Identity> {
    let path = match normalize_with(req.path, policy) {
        Ok(p) => p,
        Err(e) => return Decision::BadPath(e),
    };
    if is_auth_path(&path) {
        return Decision::Auth { path };
    }
    let Some(route) = routes.find(req.host, req.method, &path) else {
        return Decision::NoRoute { path };
    };
    let route = route.clone();
    match authorize(&route, req.bearer, verifier).await {
        Ok(identity) => Decision::Forward {
            path,
            route,
            identity,
        },
        Err(denial) => Decision::Deny {
            path,
            route,
            denial,
        },
    }
}

/// The route's auth mode against the caller: `Ok(None)` = forwarded without identity.
pub async fn authorize<V: Verifier>(
    route: &RouteEntry,
    bearer: Result<Option<&str>, Denial>,
    verifier: &V,
) -> Result<Option<V::Identity>, Denial> {
    match (route.auth, bearer?) {
        (AuthMode::None, _) | (AuthMode::Optional, None) => Ok(None),
        (AuthMode::Required, None) => Err(Denial::MissingToken),
        (_, Some(token)) => {
            // Required, or optional with a token: the token must be valid and the role allowed.
            let identity = verifier.authenticate(token).await?;
            if !route.allows(V::role(&identity)) {
                return Err(Denial::InsufficientRole);
            }
            // Only a route with a step-up rule pays for the clock read.
            if route.mfa || route.max_auth_age_secs.is_some() {
                step_up(route, V::assurance(&identity), crate::tokens::now_secs())?;
            }
            Ok(Some(identity))
        }
    }
}

/// The route's step-up rules against a session's assurance `(aal2, auth_time)` at `now`
/// (unix seconds): a missing second factor or a sign-in older than `max_auth_age_secs` is
/// the RFC 9470 refusal, naming every rule of the route.
pub fn step_up(route: &RouteEntry, (aal2, auth_time): (bool, i64), now: i64) -> Result<(), Denial> {
    let stale = route
        .max_auth_age_secs
        .is_some_and(|max| now.saturating_sub(auth_time) > i64::try_from(max).unwrap_or(i64::MAX));
    if (route.mfa && !aal2) || stale {
        return Err(Denial::StepUp {
            acr: route.mfa,
            max_age: route.max_auth_age_secs,
        });
    }
    Ok(())
}

/// An offline caller: what `routes explain` and the admin listener can check without a
/// database (revocation is never checked offline).
#[derive(Debug, Clone, Copy)]
pub enum Offline<'a> {
    /// Stands for a valid token holding this role.
    Role(Role),
    /// Verifies real tokens with the configured keys.
    Tokens(&'a TokenService),
}

/// Who an offline check accepted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OfflineIdentity {
    /// Role claimed.
    pub role: Role,
    /// `sub` of a verified token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<uuid::Uuid>,
    /// `email` of a verified token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// `acr` of a verified token (`aal1` for `--role`).
    pub acr: String,
    /// `auth_time` of a verified token (now for `--role`).
    #[serde(skip)]
    pub auth_time: i64,
}

impl Verifier for Offline<'_> {
    type Identity = OfflineIdentity;

    async fn authenticate(&self, token: &str) -> Result<OfflineIdentity, Denial> {
        match self {
            Offline::Role(role) => Ok(OfflineIdentity {
                role: *role,
                user_id: None,
                email: None,
                acr: "aal1".into(),
                auth_time: crate::tokens::now_secs(),
            }),
            Offline::Tokens(tokens) => {
                let claims = tokens.verify(token).map_err(Denial::InvalidToken)?;
                Ok(OfflineIdentity {
                    role: claims.role,
                    user_id: Some(claims.sub),
                    email: Some(claims.email.clone()),
                    acr: claims.acr.clone(),
                    auth_time: claims.auth_time,
                })
            }
        }
    }

    fn role(identity: &OfflineIdentity) -> Role {
        identity.role
    }

    fn assurance(identity: &OfflineIdentity) -> (bool, i64) {
        (identity.acr == "aal2", identity.auth_time)
    }
}

impl<I> Decision<I> {
    /// The HTTP status the proxy answers with (`None` = forwarded, or left to the /auth API).
    pub fn status(&self) -> Option<u16> {
        match self {
            Decision::BadPath(_) => Some(400),
            Decision::NoRoute { .. } => Some(404),
            Decision::Deny { denial, .. } => Some(denial.status()),
            Decision::Auth { .. } | Decision::Forward { .. } => None,
        }
    }

    /// A short, stable label: `forward`, `auth_api`, `bad_path`, `no_route`, or the denial's.
    pub fn reason(&self) -> &'static str {
        match self {
            Decision::BadPath(_) => "bad_path",
            Decision::Auth { .. } => "auth_api",
            Decision::NoRoute { .. } => "no_route",
            Decision::Deny { denial, .. } => denial.explain_reason(),
            Decision::Forward { .. } => "forward",
        }
    }

    /// The normalized path, when normalization accepted the request.
    pub fn path(&self) -> Option<&str> {
        match self {
            Decision::BadPath(_) => None,
            Decision::Auth { path }
            | Decision::NoRoute { path }
            | Decision::Deny { path, .. }
            | Decision::Forward { path, .. } => Some(path),
        }
    }

    /// The matched route.
    pub fn route(&self) -> Option<&Arc<RouteEntry>> {
        match self {
            Decision::Deny { route, .. } | Decision::Forward { route, .. } => Some(route),
            _ => None,
        }
    }
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

    fn table() -> Routes {
        Routes::new(&[
            route("/api/admin/", AuthMode::Required, &["admin"]),
            route("/api/", AuthMode::Required, &[]),
            route("/public/", AuthMode::None, &[]),
            route("/opt/", AuthMode::Optional, &[]),
        ])
    }

    fn run(path: &str, bearer: Result<Option<&str>, Denial>, role: Role) -> (Option<u16>, String) {
        let routes = table();
        let req = Request {
            method: &Method::GET,
            path,
            host: None,
            bearer,
        };
        let d = block_on(decide(
            &routes,
            PathPolicy::default(),
            req,
            &Offline::Role(role),
        ));
        (d.status(), d.reason().to_string())
    }

    /// Drives a future that never waits (the offline verifier does not).
    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn each_step_of_the_decision_has_its_outcome() {
        let t = Ok(Some("t"));
        type Bearer = Result<Option<&'static str>, Denial>;
        let cases: &[(&str, Bearer, Role, Option<u16>, &str)] = &[
            ("/api/x", Ok(None), Role::User, Some(401), "missing_token"),
            ("/api/x", t, Role::User, None, "forward"),
            (
                "/api/admin/x",
                t,
                Role::User,
                Some(403),
                "insufficient_scope",
            ),
            ("/API/Admin", t, Role::User, Some(403), "insufficient_scope"),
            ("/api/admin/x", t, Role::Admin, None, "forward"),
            ("/public/x", Ok(None), Role::User, None, "forward"),
            ("/opt/x", Ok(None), Role::User, None, "forward"),
            ("/nowhere", t, Role::User, Some(404), "no_route"),
            (
                "/api/%2e%2e/%2e%2e/etc",
                t,
                Role::User,
                Some(400),
                "bad_path",
            ),
            ("/api/x;y", t, Role::User, Some(400), "bad_path"),
            ("/auth/login", Ok(None), Role::User, None, "auth_api"),
            (
                "/api/x",
                Err(Denial::AmbiguousAuthorization),
                Role::User,
                Some(400),
                "ambiguous_authorization",
            ),
        ];
        for (path, bearer, role, status, reason) in cases {
            assert_eq!(
                run(path, *bearer, *role),
                (*status, reason.to_string()),
                "{path}"
            );
        }
    }

    #[test]
    fn step_up_names_every_rule_of_the_route_and_ages_by_whole_seconds() {
        let mut r = route("/x/", AuthMode::Required, &[]);
        r.mfa = true;
        r.max_auth_age_secs = Some(60);
        let entry = Routes::new(&[r]).iter().next().unwrap().clone();
        let refused = Err(Denial::StepUp {
            acr: true,
            max_age: Some(60),
        });
        assert_eq!(step_up(&entry, (false, 1_000), 1_000), refused);
        assert_eq!(step_up(&entry, (true, 1_000), 1_060), Ok(()));
        assert_eq!(step_up(&entry, (true, 1_000), 1_061), refused);
        // A token from before auth_time existed (0) is never fresh; a far-future one is.
        assert_eq!(step_up(&entry, (true, 0), 1_000), refused);
        assert_eq!(step_up(&entry, (true, i64::MAX), i64::MIN), Ok(()));
        let plain = Routes::new(&[route("/y/", AuthMode::Required, &[])]);
        let plain = plain.iter().next().unwrap();
        assert_eq!(step_up(plain, (false, 0), i64::MAX), Ok(()));
    }

    #[test]
    fn the_auth_path_is_exact() {
        assert!(is_auth_path("/auth/login") && is_auth_path("/.well-known/jwks.json"));
        assert!(!is_auth_path("/authx"));
    }
}
