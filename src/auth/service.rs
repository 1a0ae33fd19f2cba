//! Register, login, refresh rotation, logout, sessions, password change and admin actions.

use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::audit;
use super::limits::{IpLimiter, Kind, seconds_to_next_minute};
use super::oidc::{OidcError, OidcService};
use super::password::Hasher;
use super::{AuthError, email};
use crate::config::{Config, Passwords, RateLimit};
use crate::model::{AuditKind, AuditRecord, Authentication, Role, SessionInfo, User};
use crate::store::{
    AdminUpdate, AuditQuery, NewSession, RefreshOutcome, Store, StoreError, Successor,
};
use crate::tokens::{Claims, TokenService, now_secs};

/// Who is calling, as far as the limits and the session list care.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    /// Client address (X-Forwarded-For honoured only from trusted proxies).
    pub ip: Option<IpAddr>,
    /// User-Agent header.
    pub user_agent: Option<String>,
    /// The request's `X-Request-Id`, for the audit trail.
    pub request_id: Option<String>,
}

/// The body of a successful login or refresh (docs/api.md, "Objects": `TokenPair`).
#[derive(Debug, Clone, Serialize)]
pub struct TokenPair {
    /// Signed JWT.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Opaque refresh token.
    pub refresh_token: String,
    /// Seconds until the session's absolute end.
    pub refresh_expires_in: u64,
    /// The account.
    pub user: User,
}

/// One entry of `GET /auth/sessions`.
#[derive(Debug, Clone, Serialize)]
pub struct SessionView {
    /// Session id.
    pub id: Uuid,
    /// Login time.
    pub created_at: DateTime<Utc>,
    /// Last refresh.
    pub last_used_at: DateTime<Utc>,
    /// User-Agent at login.
    pub user_agent: Option<String>,
    /// IP at login.
    pub ip: Option<String>,
    /// This is the caller's own session.
    pub current: bool,
}

/// One page of the admin user list.
#[derive(Debug, Clone, Serialize)]
pub struct UserPage {
    /// Users in (created_at, id) order.
    pub users: Vec<User>,
    /// Opaque cursor for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// One page of the audit trail, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct AuditPage {
    /// Events, newest first.
    pub events: Vec<AuditRecord>,
    /// Opaque cursor for the next (older) page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// The raw query parameters of `GET /auth/admin/audit`, validated by the use-case.
#[derive(Debug, Clone, Default)]
pub struct AuditParams<'a> {
    /// A user id or an email.
    pub user: Option<&'a str>,
    /// An event name.
    pub event: Option<&'a str>,
    /// RFC 3339 time: only events at or after it.
    pub since: Option<&'a str>,
    /// The previous page's `next_cursor`.
    pub cursor: Option<&'a str>,
    /// Page size, 1 to 200 (default 50).
    pub limit: Option<&'a str>,
}

/// The auth use-cases, shared by all proxy workers.
pub struct AuthService {
    store: Store,
    tokens: Arc<TokenService>,
    hasher: Hasher,
    passwords: Passwords,
    limits: RateLimit,
    refresh_ttl_secs: u64,
    grace_secs: u64,
    ip_limiter: IpLimiter,
    oidc: OidcService,
}

impl std::fmt::Debug for AuthService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthService").finish_non_exhaustive()
    }
}

/// SHA-256 of a refresh token's UTF-8 bytes: the only form stored.
pub fn refresh_token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// The successor of `parent`: HMAC-SHA256 under the session's secret. Deterministic, so
/// concurrent refreshes agree on it; unguessable without the secret and the parent.
fn successor_of(secret: &[u8], parent: &str) -> Successor {
    let token = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(parent.as_bytes());
            B64.encode(mac.finalize().into_bytes())
        }
        // HMAC accepts any key length; unreachable, but never hand out a predictable token.
        Err(_) => B64.encode(rand::random::<[u8; 32]>()),
    };
    Successor {
        hash: refresh_token_hash(&token),
        token,
    }
}

impl AuthService {
    /// Wires the use-cases to their dependencies.
    pub fn new(
        config: &Config,
        store: Store,
        tokens: Arc<TokenService>,
        hasher: Hasher,
    ) -> Result<Self, OidcError> {
        Ok(AuthService {
            oidc: OidcService::new(&config.oidc, store.clone())?,
            store,
            tokens,
            hasher,
            passwords: config.passwords.clone(),
            limits: config.rate_limit.clone(),
            refresh_ttl_secs: config.tokens.refresh_ttl_secs,
            grace_secs: config.tokens.refresh_reuse_grace_secs,
            ip_limiter: IpLimiter::default(),
        })
    }

    /// The OIDC login flows.
    pub fn oidc(&self) -> &OidcService {
        &self.oidc
    }

    /// Redeems a one-time OIDC login code and opens a session.
    pub async fn oidc_exchange(
        &self,
        login_code: &str,
        client: &ClientInfo,
    ) -> Result<TokenPair, AuthError> {
        let user = self.oidc.redeem(login_code).await?;
        self.oidc_session(user, client).await
    }

    /// Opens a session for `user`, who just signed in at a provider (the login code's
    /// exchange, or the sign-in page's provider button).
    pub async fn oidc_session(
        &self,
        user: User,
        client: &ClientInfo,
    ) -> Result<TokenPair, AuthError> {
        let user_id = user.id;
        let pair = self
            .open_session(user, client, Authentication::federated())
            .await?;
        let me = Some(user_id);
        self.audit(
            AuditKind::LoginOk,
            me,
            me,
            client,
            json!({"method": "oidc"}),
        )
        .await;
        Ok(pair)
    }

    /// The token service (JWKS, verification of Bearer callers).
    pub fn tokens(&self) -> &Arc<TokenService> {
        &self.tokens
    }

    fn limit_ip(&self, kind: Kind, client: &ClientInfo, per_minute: u32) -> Result<(), AuthError> {
        match client.ip {
            Some(ip) => self
                .ip_limiter
                .check(kind, ip, per_minute, now_secs())
                .map_err(AuthError::RateLimited),
            None => Ok(()),
        }
    }

    /// Creates an account with the `user` role.
    pub async fn register(
        &self,
        raw_email: &str,
        password: String,
        client: &ClientInfo,
    ) -> Result<User, AuthError> {
        self.limit_ip(
            Kind::Register,
            client,
            self.limits.register_per_minute_per_ip,
        )?;
        let user = self.create_user(raw_email, password, Role::User).await?;
        self.audit(
            AuditKind::Register,
            Some(user.id),
            Some(user.id),
            client,
            json!({}),
        )
        .await;
        Ok(user)
    }

    async fn audit(
        &self,
        kind: AuditKind,
        user_id: Option<Uuid>,
        actor_id: Option<Uuid>,
        client: &ClientInfo,
        detail: serde_json::Value,
    ) {
        audit::record(
            &self.store,
            audit::event(kind, user_id, actor_id, client, detail),
        )
        .await;
    }

    /// Creates an account with any role.
    pub async fn create_user(
        &self,
        raw_email: &str,
        password: String,
        role: Role,
    ) -> Result<User, AuthError> {
        create_account(
            &self.store,
            &self.hasher,
            &self.passwords,
            raw_email,
            password,
            role,
        )
        .await
    }

    /// Checks credentials and opens a session. Unknown email and wrong password give the same
    /// error after the same argon2 work; a disabled account is only revealed to a caller who
    /// knows its password.
    pub async fn login(
        &self,
        raw_email: &str,
        password: String,
        client: &ClientInfo,
    ) -> Result<TokenPair, AuthError> {
        self.limit_ip(Kind::Login, client, self.limits.login_per_minute_per_ip)?;
        let canonical = email::canonical(raw_email);
        let per_account = self.limits.login_per_minute_per_account;
        let failures = if per_account > 0 {
            self.store.login_failures(&canonical).await?
        } else {
            0
        };
        if per_account > 0 && failures >= per_account as i32 {
            return Err(AuthError::RateLimited(seconds_to_next_minute(now_secs())));
        }
        let stored = if password.len() > self.passwords.max_length {
            None
        } else {
            self.store.find_user_by_email(&canonical).await?
        };
        let hash = stored.as_ref().and_then(|s| s.hashed_password.clone());
        let verified = self.hasher.verify(password.clone(), hash).await?;
        let known = stored.as_ref().map(|s| s.user.id);
        let Some(stored) = stored.filter(|_| verified.ok) else {
            self.store.record_login_failure(&canonical).await?;
            let reason = json!({"reason": "invalid_credentials"});
            self.audit(AuditKind::LoginFailed, known, None, client, reason)
                .await;
            if per_account > 0 && failures + 1 == per_account as i32 {
                self.audit(AuditKind::Lockout, known, None, client, json!({}))
                    .await;
            }
            return Err(AuthError::InvalidCredentials);
        };
        if !stored.user.is_active {
            let reason = json!({"reason": "account_disabled"});
            self.audit(AuditKind::LoginFailed, known, None, client, reason)
                .await;
            return Err(AuthError::AccountDisabled);
        }
        if verified.needs_rehash {
            match self.hasher.hash(password).await {
                Ok(new_hash) => {
                    self.store
                        .set_password_hash(stored.user.id, &new_hash)
                        .await?
                }
                Err(e) => tracing::warn!(error = %e, "re-hash failed; keeping the old hash"),
            }
        }
        let user_id = stored.user.id;
        let pair = self
            .open_session(stored.user, client, Authentication::password())
            .await?;
        self.audit(
            AuditKind::LoginOk,
            Some(user_id),
            Some(user_id),
            client,
            json!({"method": "password"}),
        )
        .await;
        Ok(pair)
    }

    /// Opens a new session (token family) for a user who just authenticated as `auth` says.
    pub async fn open_session(
        &self,
        user: User,
        client: &ClientInfo,
        auth: Authentication,
    ) -> Result<TokenPair, AuthError> {
        let refresh_token = B64.encode(rand::random::<[u8; 32]>());
        let secret: [u8; 32] = rand::random();
        let expires_at = Utc::now() + chrono::Duration::seconds(self.refresh_ttl_secs as i64);
        let sid = self
            .store
            .create_session(NewSession {
                user_id: user.id,
                secret: &secret,
                token_hash: &refresh_token_hash(&refresh_token),
                expires_at,
                user_agent: client.user_agent.as_deref(),
                ip: client.ip,
                auth: &auth,
            })
            .await?;
        self.pair(user, sid, refresh_token, expires_at, &auth)
    }

    fn pair(
        &self,
        user: User,
        sid: Uuid,
        refresh_token: String,
        expires_at: DateTime<Utc>,
        auth: &Authentication,
    ) -> Result<TokenPair, AuthError> {
        let access_token = self
            .tokens
            .issue(&user, sid, auth)
            .map_err(|e| AuthError::Internal(format!("signing failed: {e}")))?;
        Ok(TokenPair {
            access_token,
            token_type: "Bearer",
            expires_in: self.tokens.access_ttl_secs(),
            refresh_token,
            refresh_expires_in: (expires_at - Utc::now()).num_seconds().max(0) as u64,
            user,
        })
    }

    /// Rotates a refresh token (docs/api.md, "Refresh tokens and rotation"); reuse detection stays visible for metrics.
    pub async fn refresh(
        &self,
        refresh_token: &str,
        client: &ClientInfo,
    ) -> Result<RefreshResult, AuthError> {
        let outcome = self
            .store
            .refresh(
                &refresh_token_hash(refresh_token),
                self.grace_secs,
                |secret| successor_of(secret, refresh_token),
                |user_id, sid| {
                    let detail = json!({"session_id": sid});
                    let kind = AuditKind::RefreshReuseDetected;
                    audit::event(kind, Some(user_id), None, client, detail)
                },
            )
            .await?;
        Ok(match outcome {
            RefreshOutcome::Rotated {
                user,
                session_id,
                successor,
                expires_at,
                auth,
            } => RefreshResult::Ok(Box::new(
                self.pair(user, session_id, successor, expires_at, &auth)?,
            )),
            RefreshOutcome::Invalid => RefreshResult::Invalid,
            RefreshOutcome::Reused(event) => {
                audit::log(&event);
                RefreshResult::ReuseDetected
            }
        })
    }

    /// Revokes the session of a refresh token; unknown tokens are fine (no oracle).
    pub async fn logout(&self, refresh_token: &str, client: &ClientInfo) -> Result<(), AuthError> {
        let event = |user_id: Uuid, sid: Uuid| {
            let detail = json!({"session_id": sid});
            let user = Some(user_id);
            audit::event(AuditKind::Logout, user, user, client, detail)
        };
        let recorded = self
            .store
            .revoke_session_of_token(&refresh_token_hash(refresh_token), event)
            .await?;
        if let Some(event) = recorded {
            audit::log(&event);
        }
        Ok(())
    }

    /// Revokes every session of the caller.
    pub async fn logout_all(&self, caller: &Claims, client: &ClientInfo) -> Result<(), AuthError> {
        let me = Some(caller.sub);
        let event = audit::event(AuditKind::LogoutAll, me, me, client, json!({}));
        self.store.revoke_all_sessions(caller.sub, &event).await?;
        audit::log(&event);
        Ok(())
    }

    /// The caller's account.
    pub async fn me(&self, caller: &Claims) -> Result<User, AuthError> {
        self.store
            .find_user(caller.sub)
            .await?
            .map(|s| s.user)
            .ok_or(AuthError::InvalidToken)
    }

    /// The caller's live sessions.
    pub async fn sessions(&self, caller: &Claims) -> Result<Vec<SessionView>, AuthError> {
        Ok(self
            .store
            .list_sessions(caller.sub)
            .await?
            .into_iter()
            .map(|s: SessionInfo| SessionView {
                current: s.id == caller.sid,
                id: s.id,
                created_at: s.created_at,
                last_used_at: s.last_used_at,
                user_agent: s.user_agent,
                ip: s.ip,
            })
            .collect())
    }

    /// Revokes one of the caller's sessions.
    pub async fn delete_session(
        &self,
        caller: &Claims,
        sid: Uuid,
        client: &ClientInfo,
    ) -> Result<(), AuthError> {
        let me = Some(caller.sub);
        let detail = json!({"session_id": sid});
        let event = audit::event(AuditKind::SessionRevoked, me, me, client, detail);
        if self
            .store
            .revoke_user_session(caller.sub, sid, &event)
            .await?
        {
            audit::log(&event);
            Ok(())
        } else {
            Err(AuthError::NotFound("no such session"))
        }
    }

    /// Changes the caller's password and revokes their other sessions.
    pub async fn change_password(
        &self,
        caller: &Claims,
        current: String,
        new: String,
        client: &ClientInfo,
    ) -> Result<(), AuthError> {
        check_password_bounds(&self.passwords, &new, "new_password")?;
        let stored = self
            .store
            .find_user(caller.sub)
            .await?
            .ok_or(AuthError::InvalidToken)?;
        let current_ok = current.len() <= self.passwords.max_length
            && self
                .hasher
                .verify(current, stored.hashed_password.clone())
                .await?
                .ok;
        if !current_ok {
            return Err(AuthError::InvalidCredentials);
        }
        let hash = self.hasher.hash(new).await?;
        let me = Some(caller.sub);
        let event = audit::event(AuditKind::PasswordChanged, me, me, client, json!({}));
        self.store
            .change_password(caller.sub, &hash, caller.sid, &event)
            .await?;
        audit::log(&event);
        Ok(())
    }

    fn require_admin(caller: &Claims) -> Result<(), AuthError> {
        if caller.role == Role::Admin {
            Ok(())
        } else {
            Err(AuthError::Forbidden("this endpoint is for admins"))
        }
    }

    /// One page of users; `cursor` is the opaque `next_cursor` of the previous page.
    pub async fn admin_list_users(
        &self,
        caller: &Claims,
        limit: Option<&str>,
        cursor: Option<&str>,
    ) -> Result<UserPage, AuthError> {
        Self::require_admin(caller)?;
        let limit = match limit {
            None => 50,
            Some(s) => s
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=200).contains(n))
                .ok_or_else(|| {
                    AuthError::InvalidRequest("limit must be an integer from 1 to 200".into())
                })?,
        };
        let after = cursor.map(decode_cursor).transpose()?;
        let mut users = self.store.list_users(limit + 1, after).await?;
        let next_cursor = if users.len() as i64 > limit {
            users.truncate(limit as usize);
            users.last().map(encode_cursor)
        } else {
            None
        };
        Ok(UserPage { users, next_cursor })
    }

    /// Changes a user's role or active flag (revoking their sessions when either changes).
    pub async fn admin_update_user(
        &self,
        caller: &Claims,
        id: Uuid,
        update: AdminUpdate,
        client: &ClientInfo,
    ) -> Result<User, AuthError> {
        Self::require_admin(caller)?;
        super::operator::update_user(&self.store, id, update, Some(caller.sub), client).await
    }

    /// Revokes every session of a user.
    pub async fn admin_revoke_sessions(
        &self,
        caller: &Claims,
        id: Uuid,
        client: &ClientInfo,
    ) -> Result<(), AuthError> {
        Self::require_admin(caller)?;
        super::operator::revoke_all_sessions(&self.store, id, Some(caller.sub), client).await
    }

    /// One page of the audit trail (admins only), newest first.
    pub async fn admin_audit(
        &self,
        caller: &Claims,
        params: &AuditParams<'_>,
    ) -> Result<AuditPage, AuthError> {
        Self::require_admin(caller)?;
        let (query, limit) = audit_query(params)?;
        let mut events = self.store.list_audit(&query).await?;
        let next_cursor = if events.len() as i64 > limit {
            events.truncate(limit as usize);
            events.last().map(|e| B64.encode(e.id.to_string()))
        } else {
            None
        };
        Ok(AuditPage {
            events,
            next_cursor,
        })
    }
}

/// The audit events an admin update produced.
pub(super) fn admin_changes(before: &User, after: &User) -> Vec<(AuditKind, serde_json::Value)> {
    let mut out = Vec::new();
    if before.role != after.role {
        out.push((
            AuditKind::RoleChanged,
            json!({"from": before.role.as_str(), "to": after.role.as_str()}),
        ));
    }
    if before.is_active != after.is_active {
        let kind = if after.is_active {
            AuditKind::Activated
        } else {
            AuditKind::Deactivated
        };
        out.push((kind, json!({})));
    }
    out
}

/// Validates the audit page parameters: 400 for anything malformed. Returns the query (asking
/// for one row more than the page, to know whether another page follows) and the page size.
pub fn audit_query(p: &AuditParams<'_>) -> Result<(AuditQuery, i64), AuthError> {
    let bad = |m: &str| AuthError::InvalidRequest(m.to_string());
    let limit = match p.limit {
        None => 50,
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=200).contains(n))
            .ok_or_else(|| bad("limit must be an integer from 1 to 200"))?,
    };
    let mut query = AuditQuery {
        limit: limit + 1,
        ..AuditQuery::default()
    };
    if let Some(user) = p.user {
        match Uuid::parse_str(user) {
            Ok(id) => query.user_id = Some(id),
            Err(_) if user.contains('@') => query.email_canonical = Some(email::canonical(user)),
            Err(_) => return Err(bad("user must be a user id or an email")),
        }
    }
    if let Some(event) = p.event {
        let kind =
            AuditKind::parse(event).ok_or_else(|| bad("event is not an audit event name"))?;
        query.event = Some(kind.as_str().to_string());
    }
    if let Some(since) = p.since {
        let at = DateTime::parse_from_rfc3339(since)
            .map_err(|_| bad("since must be an RFC 3339 time"))?;
        query.since = Some(at.with_timezone(&Utc));
    }
    if let Some(cursor) = p.cursor {
        let id = B64
            .decode(cursor)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or_else(|| bad("cursor is not valid"))?;
        query.before_id = Some(id);
    }
    Ok((query, limit))
}

#[cfg(test)]
mod audit_tests {
    use super::*;

    #[test]
    fn audit_parameters_are_validated() {
        let ok = |p: AuditParams<'_>| audit_query(&p);
        let (q, limit) = ok(AuditParams::default()).unwrap();
        assert_eq!((limit, q.limit), (50, 51));
        let (q, _) = ok(AuditParams {
            user: Some("A@Example.com"),
            event: Some("login_ok"),
            since: Some("2026-01-01T00:00:00Z"),
            cursor: Some(&B64.encode("42")),
            limit: Some("5"),
        })
        .unwrap();
        assert_eq!(q.email_canonical.as_deref(), Some("a@example.com"));
        assert_eq!(q.event.as_deref(), Some("login_ok"));
        assert_eq!(q.before_id, Some(42));
        assert_eq!(q.limit, 6);
        for bad in [
            AuditParams {
                limit: Some("0"),
                ..Default::default()
            },
            AuditParams {
                limit: Some("x"),
                ..Default::default()
            },
            AuditParams {
                event: Some("nope"),
                ..Default::default()
            },
            AuditParams {
                since: Some("yesterday"),
                ..Default::default()
            },
            AuditParams {
                cursor: Some("!!"),
                ..Default::default()
            },
            AuditParams {
                user: Some("bob"),
                ..Default::default()
            },
        ] {
            assert!(
                matches!(audit_query(&bad), Err(AuthError::InvalidRequest(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn admin_changes_name_each_change() {
        let user = User {
            id: Uuid::nil(),
            email: "a@b.c".into(),
            role: Role::User,
            is_active: true,
            created_at: Utc::now(),
        };
        let mut after = user.clone();
        after.role = Role::Admin;
        after.is_active = false;
        let kinds: Vec<AuditKind> = admin_changes(&user, &after)
            .into_iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(kinds, vec![AuditKind::RoleChanged, AuditKind::Deactivated]);
        assert!(admin_changes(&user, &user).is_empty());
        let kinds: Vec<AuditKind> = admin_changes(&after, &{
            let mut a = after.clone();
            a.is_active = true;
            a
        })
        .into_iter()
        .map(|c| c.0)
        .collect();
        assert_eq!(kinds, vec![AuditKind::Activated]);
    }
}

/// Length rules, checked before any hashing: characters for the minimum, bytes for the maximum
/// (NUL bytes allowed).
pub fn check_password_bounds(
    passwords: &Passwords,
    password: &str,
    field: &str,
) -> Result<(), AuthError> {
    if password.chars().count() < passwords.min_length {
        return Err(AuthError::InvalidRequest(format!(
            "{field} must be at least {} characters",
            passwords.min_length
        )));
    }
    if password.len() > passwords.max_length {
        return Err(AuthError::InvalidRequest(format!(
            "{field} must be at most {} bytes",
            passwords.max_length
        )));
    }
    Ok(())
}

/// Validates and creates an account; shared by `/auth/register` and `portcullis user create`.
pub async fn create_account(
    store: &Store,
    hasher: &Hasher,
    passwords: &Passwords,
    raw_email: &str,
    password: String,
    role: Role,
) -> Result<User, AuthError> {
    let (email, canonical) =
        email::parse(raw_email).map_err(|m| AuthError::InvalidRequest(m.to_string()))?;
    check_password_bounds(passwords, &password, "password")?;
    let hash = hasher.hash(password).await?;
    match store
        .create_user(&email, &canonical, Some(&hash), role)
        .await
    {
        Ok(user) => Ok(user),
        Err(StoreError::Unique(_)) => Err(AuthError::EmailTaken),
        Err(e) => Err(e.into()),
    }
}

/// A refresh attempt's result, keeping reuse detection visible for metrics.
#[derive(Debug)]
pub enum RefreshResult {
    /// Rotated (or the same successor within the grace window).
    Ok(Box<TokenPair>),
    /// Unknown, expired or revoked.
    Invalid,
    /// Replay after the grace window: the session was revoked.
    ReuseDetected,
}

fn encode_cursor(user: &User) -> String {
    B64.encode(format!("{}|{}", user.created_at.to_rfc3339(), user.id))
}

fn decode_cursor(cursor: &str) -> Result<(DateTime<Utc>, Uuid), AuthError> {
    let bad = || AuthError::InvalidRequest("cursor is not valid".into());
    let text = String::from_utf8(B64.decode(cursor).map_err(|_| bad())?).map_err(|_| bad())?;
    let (at, id) = text.split_once('|').ok_or_else(bad)?;
    Ok((
        DateTime::parse_from_rfc3339(at)
            .map_err(|_| bad())?
            .with_timezone(&Utc),
        Uuid::parse_str(id).map_err(|_| bad())?,
    ))
}
