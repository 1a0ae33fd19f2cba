//! Plain domain types shared by the store, the auth use-cases and the proxy.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

/// A user's role (the `user_role` enum of the schema).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Ordinary signed-in user.
    User,
    /// May use the admin endpoints and admin routes.
    Admin,
}

impl Role {
    /// The name used in the database, tokens and route rules.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }

    /// Parses a role name; `None` for anything else.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "user" => Some(Role::User),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// The public view of an account: what API responses carry (never a hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    /// Stable id (the JWT `sub`).
    pub id: Uuid,
    /// Email as given at registration (trimmed).
    pub email: String,
    /// Current role.
    pub role: Role,
    /// Deactivated accounts cannot log in and their tokens stop working.
    pub is_active: bool,
    /// Registration time.
    pub created_at: DateTime<Utc>,
}

/// What the proxy needs to know to decide whether a token's session still stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStatus {
    /// Owner of the session.
    pub user_id: Uuid,
    /// The session (token family) was revoked or has expired.
    pub revoked: bool,
    /// The owner is active.
    pub user_active: bool,
    /// The owner's current role.
    pub role: Role,
}

/// One live session as listed by `GET /auth/sessions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The session (token family) id, the JWT `sid`.
    pub id: Uuid,
    /// Login time.
    pub created_at: DateTime<Utc>,
    /// Last refresh.
    pub last_used_at: DateTime<Utc>,
    /// User-Agent seen at login.
    pub user_agent: Option<String>,
    /// Client IP seen at login.
    pub ip: Option<String>,
}

/// What an audit event records (the README's "Logs and audit"). The names are stable: they are stored, logged
/// and accepted by the `event` filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    /// An account was created.
    Register,
    /// A password login succeeded.
    LoginOk,
    /// A password login failed (wrong password, unknown email, disabled account).
    LoginFailed,
    /// An account reached its failed-login limit.
    Lockout,
    /// A spent refresh token was replayed: its session was revoked.
    RefreshReuseDetected,
    /// A session ended by its refresh token.
    Logout,
    /// Every session of the caller ended.
    LogoutAll,
    /// A session (or all of a user's, by an admin) was revoked.
    SessionRevoked,
    /// A user changed their password.
    PasswordChanged,
    /// An admin changed a role.
    RoleChanged,
    /// An admin deactivated an account.
    Deactivated,
    /// An admin re-activated an account.
    Activated,
    /// A new signing key was generated.
    KeyRotated,
    /// An external identity signed in to (or created) an account.
    OidcLinked,
}

impl AuditKind {
    /// Every kind, for parsing and docs.
    pub const ALL: [AuditKind; 14] = [
        AuditKind::Register,
        AuditKind::LoginOk,
        AuditKind::LoginFailed,
        AuditKind::Lockout,
        AuditKind::RefreshReuseDetected,
        AuditKind::Logout,
        AuditKind::LogoutAll,
        AuditKind::SessionRevoked,
        AuditKind::PasswordChanged,
        AuditKind::RoleChanged,
        AuditKind::Deactivated,
        AuditKind::Activated,
        AuditKind::KeyRotated,
        AuditKind::OidcLinked,
    ];

    /// The stored and logged name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Register => "register",
            AuditKind::LoginOk => "login_ok",
            AuditKind::LoginFailed => "login_failed",
            AuditKind::Lockout => "lockout",
            AuditKind::RefreshReuseDetected => "refresh_reuse_detected",
            AuditKind::Logout => "logout",
            AuditKind::LogoutAll => "logout_all",
            AuditKind::SessionRevoked => "session_revoked",
            AuditKind::PasswordChanged => "password_changed",
            AuditKind::RoleChanged => "role_changed",
            AuditKind::Deactivated => "deactivated",
            AuditKind::Activated => "activated",
            AuditKind::KeyRotated => "key_rotated",
            AuditKind::OidcLinked => "oidc_linked",
        }
    }

    /// Parses a stored name; `None` for anything else.
    pub fn parse(s: &str) -> Option<AuditKind> {
        AuditKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// How the user of a session proved who they are: what every access token of the session
/// says in `auth_time`, `amr` and `acr`, and what a refresh keeps (it is not a new
/// authentication). Routes that need a second factor or a recent sign-in read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authentication {
    /// When the user authenticated (`auth_time`).
    pub time: DateTime<Utc>,
    /// The methods used, RFC 8176 values (`amr`): `pwd`, `otp`, `hwk`, `swk`, `user`, `mfa`.
    pub methods: Vec<String>,
}

impl Authentication {
    /// A password sign-in now.
    pub fn password() -> Authentication {
        Authentication {
            time: Utc::now(),
            methods: vec!["pwd".to_string()],
        }
    }

    /// A sign-in at an external identity provider now: how it authenticated the user is the
    /// provider's business, so no method is claimed (`amr` is empty, the level `aal1`).
    pub fn federated() -> Authentication {
        Authentication {
            time: Utc::now(),
            methods: Vec::new(),
        }
    }

    /// The assurance level (`acr`): `aal2` with two distinct factors (or `mfa`), else `aal1`.
    pub fn acr(&self) -> &'static str {
        let factors = self.methods.iter().filter(|m| *m != "mfa").count();
        if factors >= 2 || self.methods.iter().any(|m| m == "mfa") {
            "aal2"
        } else {
            "aal1"
        }
    }

    /// The methods as stored: space-separated.
    pub fn methods_text(&self) -> String {
        self.methods.join(" ")
    }

    /// Reads the stored form back.
    pub fn from_stored(time: DateTime<Utc>, methods: &str) -> Authentication {
        Authentication {
            time,
            methods: methods.split_whitespace().map(str::to_string).collect(),
        }
    }
}

/// One audit event to record. `detail` must never hold a secret (password, hash, token).
#[derive(Debug, Clone)]
pub struct AuditEvent {
    /// What happened.
    pub kind: AuditKind,
    /// The account it happened to.
    pub user_id: Option<Uuid>,
    /// Who did it (the user themself, an admin; none for the CLI or anonymous callers).
    pub actor_id: Option<Uuid>,
    /// Client address.
    pub client_ip: Option<std::net::IpAddr>,
    /// Client User-Agent.
    pub user_agent: Option<String>,
    /// The request's `X-Request-Id`.
    pub request_id: Option<String>,
    /// Small non-secret facts (`{"role":{"from":"user","to":"admin"}}`).
    pub detail: serde_json::Value,
}

/// One stored audit event, as the admin API and `audit tail` print it.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    /// Monotonic id (the pagination key).
    pub id: i64,
    /// When it was recorded.
    pub time: DateTime<Utc>,
    /// Event name.
    pub event: String,
    /// The account it happened to.
    pub user_id: Option<Uuid>,
    /// Who did it.
    pub actor_id: Option<Uuid>,
    /// Client address.
    pub client_ip: Option<String>,
    /// Client User-Agent.
    pub user_agent: Option<String>,
    /// The request's id.
    pub request_id: Option<String>,
    /// Small non-secret facts.
    pub detail: serde_json::Value,
}
