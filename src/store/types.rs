//! What the store hands out and takes in, the same for every backend.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::model::{AuditEvent, Authentication, Role, User};

/// A user together with the stored password hash (never leaves the auth layer).
#[derive(Debug, Clone)]
pub struct StoredUser {
    /// The public view.
    pub user: User,
    /// PHC string; `None` for accounts created through OIDC.
    pub hashed_password: Option<String>,
}

/// Changes an admin may make to a user.
#[derive(Debug, Clone, Copy, Default)]
pub struct AdminUpdate {
    /// New role.
    pub role: Option<Role>,
    /// New active flag.
    pub is_active: Option<bool>,
}

/// Result of an admin update.
#[derive(Debug, Clone)]
pub enum AdminUpdateOutcome {
    /// Applied; sessions were revoked if the role or active flag changed. Carries the audit
    /// events recorded with it.
    Updated(User, Vec<AuditEvent>),
    /// No such user.
    NotFound,
    /// Refused: no active admin would remain.
    LastAdmin,
}

/// Everything needed to open a session at login.
#[derive(Debug, Clone)]
pub struct NewSession<'a> {
    /// Owner.
    pub user_id: Uuid,
    /// Per-session HMAC key for successor derivation.
    pub secret: &'a [u8],
    /// SHA-256 of the first refresh token.
    pub token_hash: &'a [u8],
    /// Absolute end of the session.
    pub expires_at: DateTime<Utc>,
    /// User-Agent of the login request.
    pub user_agent: Option<&'a str>,
    /// Client IP of the login request.
    pub ip: Option<IpAddr>,
    /// How the user authenticated: every access token of the session carries it.
    pub auth: &'a Authentication,
}

/// A successor refresh token, derived by the caller from the session secret.
#[derive(Debug, Clone)]
pub struct Successor {
    /// The token handed to the client.
    pub token: String,
    /// Its SHA-256, the only form stored.
    pub hash: Vec<u8>,
}

/// What presenting a refresh token led to.
#[derive(Debug, Clone)]
pub enum RefreshOutcome {
    /// A successor is live: freshly rotated, or the same one again inside the grace window.
    Rotated {
        /// The owner.
        user: User,
        /// The session (token family).
        session_id: Uuid,
        /// The successor refresh token.
        successor: String,
        /// Absolute end of the session.
        expires_at: DateTime<Utc>,
        /// The session's authentication (kept: a refresh is not a new authentication).
        auth: Authentication,
    },
    /// Unknown, expired, revoked, or the owner is inactive.
    Invalid,
    /// A spent token was replayed after the grace window: the session is now revoked, and
    /// the audit event recorded with the revocation.
    Reused(Box<AuditEvent>),
}

/// A pending authorization request, consumed by the callback.
#[derive(Debug, Clone)]
pub struct OidcState {
    /// Provider name.
    pub provider: String,
    /// Nonce expected in the ID token.
    pub nonce: String,
    /// PKCE verifier for the code exchange.
    pub pkce_verifier: String,
    /// Where the browser goes afterwards.
    pub redirect_to: String,
    /// Started from the sign-in page: ends in the session cookies, not a login code.
    pub for_browser: bool,
}

/// How a provider login resolved to an account.
#[derive(Debug, Clone)]
pub enum OidcLink {
    /// Already linked to this identity (or inactive, so left unlinked).
    User(User),
    /// Linked by this login: to an existing account (`created == false`) or a new one. Only
    /// this outcome is an `oidc_linked` audit event; later logins through it are `login_ok`.
    Linked {
        /// The account now linked.
        user: User,
        /// Whether the account was created by this login.
        created: bool,
    },
    /// An account with this email exists and the provider did not verify the email.
    EmailTaken,
}

/// Filters of one audit page; every field is optional but `limit`.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only events about this user.
    pub user_id: Option<Uuid>,
    /// Only events about the user with this canonical email.
    pub email_canonical: Option<String>,
    /// Only this event name.
    pub event: Option<String>,
    /// Only events at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only events older than this id (the previous page's last).
    pub before_id: Option<i64>,
    /// Rows to return.
    pub limit: i64,
}

/// The certificate stored for a set of domains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCert {
    /// Leaf first, then the chain.
    pub cert_pem: String,
    /// The certificate's private key.
    pub key_pem: String,
    /// Expiry of the leaf.
    pub not_after: DateTime<Utc>,
}

/// What `secrets rotate` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resealed {
    /// Values sealed anew under the first key (older keys, or plaintext from before sealing).
    pub resealed: usize,
    /// Values already under the first key.
    pub current: usize,
}

/// What a notification (or the connection's state) tells the revocation cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationEvent {
    /// One session (token family) was revoked.
    Session(Uuid),
    /// Something about a user changed (deactivated, role changed, all sessions revoked).
    User(Uuid),
    /// Notifications may have been missed (new or re-established connection): forget all.
    All,
}

impl RevocationEvent {
    /// Wire form of the NOTIFY payload.
    pub fn to_payload(&self) -> String {
        match self {
            RevocationEvent::Session(id) => format!("s:{id}"),
            RevocationEvent::User(id) => format!("u:{id}"),
            RevocationEvent::All => "all".to_string(),
        }
    }

    /// Parses a payload; an unknown one is treated as "forget everything" (fail safe).
    pub fn from_payload(payload: &str) -> RevocationEvent {
        let parsed = match payload.split_once(':') {
            Some(("s", id)) => Uuid::parse_str(id).ok().map(RevocationEvent::Session),
            Some(("u", id)) => Uuid::parse_str(id).ok().map(RevocationEvent::User),
            _ => None,
        };
        parsed.unwrap_or(RevocationEvent::All)
    }
}
