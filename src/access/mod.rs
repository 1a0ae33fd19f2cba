//! The per-request access decision, as plain Rust: path normalization, the route table, bearer
//! extraction, cached token verification, the revocation check and the role check.

pub mod browser;
pub mod decision;
pub mod normalize;
pub mod revocation;
pub mod routes;
pub mod table;
pub mod tunnels;

use std::sync::Arc;

pub use decision::{Decision, Offline, OfflineIdentity, Request, Verifier, decide, is_auth_path};
pub use normalize::{PathError, PathPolicy, normalize, normalize_with};
pub use revocation::{Lookup, RevocationCache};
pub use routes::{RouteEntry, Routes};
pub use tunnels::{Closer, TunnelGuard, Tunnels};

use crate::config::OnDbError;
use crate::store::RevocationEvent;
use crate::tokens::{Claims, TokenService, VerifyError};

/// Why a request was not let through; each maps to one response in `proxy::respond`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// 401 with `WWW-Authenticate: Bearer realm=…`.
    MissingToken,
    /// 401 `invalid_token` (signature, claims, expiry).
    InvalidToken(VerifyError),
    /// 401 `invalid_token`: the session, user or role no longer stands.
    Revoked,
    /// 403 `insufficient_scope`.
    InsufficientRole,
    /// 401 `insufficient_user_authentication` (RFC 9470): the route needs a second factor
    /// (`acr`) or a more recent sign-in (`max_age`) than the token's session has.
    StepUp {
        /// The route needs `aal2` (`acr_values="aal2"` in the challenge).
        acr: bool,
        /// The route's `max_auth_age_secs` (`max_age=N` in the challenge).
        max_age: Option<u64>,
    },
    /// 503: the revocation status is unknown and `on_db_error = "deny"`.
    Unavailable,
    /// 400: more than one Authorization header.
    AmbiguousAuthorization,
}

impl Denial {
    /// Label for `portcullis_access_denied_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            Denial::MissingToken => "missing_token",
            Denial::InvalidToken(_) => "invalid_token",
            Denial::Revoked => "revoked",
            Denial::InsufficientRole => "insufficient_role",
            Denial::StepUp { .. } => "insufficient_user_authentication",
            Denial::Unavailable => "unavailable",
            Denial::AmbiguousAuthorization => "bad_request",
        }
    }

    /// The HTTP status the proxy answers with (`proxy::respond` writes it).
    pub fn status(&self) -> u16 {
        match self {
            Denial::MissingToken
            | Denial::InvalidToken(_)
            | Denial::Revoked
            | Denial::StepUp { .. } => 401,
            Denial::InsufficientRole => 403,
            Denial::Unavailable => 503,
            Denial::AmbiguousAuthorization => 400,
        }
    }

    /// The reason `routes explain` prints, in the words of the `WWW-Authenticate` header
    /// (`insufficient_scope`) where the metric label differs.
    pub fn explain_reason(&self) -> &'static str {
        match self {
            Denial::InsufficientRole => "insufficient_scope",
            Denial::AmbiguousAuthorization => "ambiguous_authorization",
            other => other.reason(),
        }
    }
}

/// The bearer token of a request: `Ok(None)` when there is no Bearer credential.
/// `values` are all the request's `Authorization` header values.
pub fn bearer<'a>(mut values: impl Iterator<Item = &'a [u8]>) -> Result<Option<&'a str>, Denial> {
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Denial::AmbiguousAuthorization);
    }
    let Ok(text) = std::str::from_utf8(first) else {
        return Err(Denial::InvalidToken(VerifyError::Malformed));
    };
    let text = text.trim();
    match text.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            let token = token.trim();
            if token.is_empty() {
                Ok(None)
            } else {
                Ok(Some(token))
            }
        }
        _ if text.eq_ignore_ascii_case("bearer") => Ok(None),
        _ => Ok(None),
    }
}

/// Authenticates bearer tokens: verification, then the revocation status.
pub struct Authorizer {
    tokens: Arc<TokenService>,
    revocations: Arc<RevocationCache>,
    tunnels: Arc<Tunnels>,
    on_db_error: OnDbError,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer").finish_non_exhaustive()
    }
}

/// A successful authentication plus how the revocation check was answered.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The verified claims.
    pub claims: Arc<Claims>,
    /// Cache hit or miss (`None` when the status was unknown and `on_db_error = "allow"`).
    pub lookup: Option<Lookup>,
}

impl Authorizer {
    /// Builds the authorizer over the shared token service and revocation cache.
    pub fn new(
        tokens: Arc<TokenService>,
        revocations: Arc<RevocationCache>,
        on_db_error: OnDbError,
    ) -> Self {
        Authorizer {
            tokens,
            revocations,
            tunnels: Arc::default(),
            on_db_error,
        }
    }

    /// Open WebSocket tunnels, closed when their session is revoked.
    pub fn tunnels(&self) -> &Arc<Tunnels> {
        &self.tunnels
    }

    /// Applies a revocation notification: the cache forgets the affected statuses at once,
    /// then open tunnels whose session no longer stands are closed (a user event re-checks
    /// each of the user's tunnels through the cache, i.e. one query per session).
    pub async fn apply_revocation(&self, event: RevocationEvent) {
        // Finished before the tunnels are looked at: a tunnel registered from now on re-checks
        // its session against a cache that no longer trusts it (see `open_tunnel`).
        self.revocations.forget(event).await;
        if let RevocationEvent::Session(sid) = event {
            self.tunnels.close_session(sid);
            return;
        }
        for claims in self.tunnels.to_recheck(&event) {
            match self.check_status(claims.clone()).await {
                Err(Denial::Revoked) => {
                    let closed = self.tunnels.close_session(claims.sid);
                    tracing::info!(sid = %claims.sid, closed, "closed the WebSocket tunnels of a revoked session");
                }
                Err(d) => {
                    tracing::warn!(sid = %claims.sid, reason = d.reason(), "could not re-check a tunnel's session; left open")
                }
                Ok(_) => {}
            }
        }
    }

    /// Registers an open WebSocket tunnel of verified `claims`, then checks its session once
    /// more: a revocation that arrived between the request's authorization and this
    /// registration found no tunnel to close, so without this check the tunnel would outlive
    /// its session. `Err` (the tunnel is not kept) when the session no longer stands.
    pub async fn open_tunnel(
        &self,
        claims: Arc<Claims>,
        close: Closer,
    ) -> Result<TunnelGuard, Denial> {
        let guard = self.tunnels.register(claims.clone(), close);
        self.check_status(claims).await?;
        Ok(guard)
    }

    /// The shared revocation cache (for the LISTEN service).
    pub fn revocations(&self) -> &Arc<RevocationCache> {
        &self.revocations
    }

    /// Verifies `token` and checks that its session, user and role still stand. An invalid
    /// signature returns before any database work.
    pub async fn authenticate(&self, token: &str) -> Result<Authenticated, Denial> {
        let claims = self.tokens.verify(token).map_err(Denial::InvalidToken)?;
        self.check_status(claims).await
    }

    /// Whether the session, user and role of verified `claims` still stand.
    async fn check_status(&self, claims: Arc<Claims>) -> Result<Authenticated, Denial> {
        match self.revocations.status(claims.sid).await {
            Ok((Some(status), lookup)) => {
                if status.revoked
                    || !status.user_active
                    || status.user_id != claims.sub
                    || status.role != claims.role
                {
                    return Err(Denial::Revoked);
                }
                Ok(Authenticated {
                    claims,
                    lookup: Some(lookup),
                })
            }
            Ok((None, _)) => Err(Denial::Revoked),
            Err(e) => match self.on_db_error {
                OnDbError::Deny => {
                    tracing::warn!(error = %e, "revocation status unknown; denying (on_db_error = deny)");
                    Err(Denial::Unavailable)
                }
                OnDbError::Allow => {
                    tracing::warn!(error = %e, sid = %claims.sid, "revocation status unknown; allowing (on_db_error = allow)");
                    Ok(Authenticated {
                        claims,
                        lookup: None,
                    })
                }
            },
        }
    }

    /// The full decision for a protected or optional route: `Ok(None)` = anonymous caller on
    /// an optional route. The same rules as [`decide`], which the proxy runs.
    pub async fn authorize(
        &self,
        route: &RouteEntry,
        token: Option<&str>,
    ) -> Result<Option<Authenticated>, Denial> {
        decision::authorize(route, Ok(token), self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(values: &[&'static str]) -> Result<Option<&'static str>, Denial> {
        bearer(values.iter().map(|v| v.as_bytes()))
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_single() {
        assert_eq!(b(&["Bearer abc"]), Ok(Some("abc")));
        assert_eq!(b(&["bEaReR  abc "]), Ok(Some("abc")));
        assert_eq!(b(&[]), Ok(None));
        assert_eq!(b(&["Basic dXNlcjpwdw=="]), Ok(None));
        assert_eq!(b(&["Bearer"]), Ok(None));
        assert_eq!(
            b(&["Bearer a", "Bearer b"]),
            Err(Denial::AmbiguousAuthorization)
        );
    }
}
