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
