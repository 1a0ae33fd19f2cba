//! The use-cases behind `/auth`: plain Rust over the store and the token service, no HTTP.
//! The proxy's `auth_api` adapts requests to these calls and their errors to responses.

pub mod audit;
pub mod email;
pub mod limits;
pub mod oidc;
pub mod operator;
pub mod password;
mod service;

pub use service::*;

use crate::store::StoreError;

/// Every way an auth use-case can fail; each maps to one API error code.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// 400 `invalid_request`.
    #[error("{0}")]
    InvalidRequest(String),
    /// 401 `invalid_credentials`.
    #[error("invalid email or password")]
    InvalidCredentials,
    /// 401 `invalid_token`.
    #[error("the token is invalid, expired or revoked")]
    InvalidToken,
    /// 403 `account_disabled`.
    #[error("this account is disabled")]
    AccountDisabled,
    /// 403 `forbidden`.
    #[error("{0}")]
    Forbidden(&'static str),
    /// 404 `not_found`.
    #[error("{0}")]
    NotFound(&'static str),
    /// 409 `email_taken`.
    #[error("an account with this email already exists")]
    EmailTaken,
    /// 409 `conflict`.
    #[error("{0}")]
    Conflict(&'static str),
    /// 429 `rate_limited`, with the seconds to wait.
    #[error("too many attempts; retry later")]
    RateLimited(u64),
    /// 503 `unavailable` (database down).
    #[error("the service is temporarily unavailable")]
    Unavailable,
    /// 500 `internal` (logged, never detailed to the client).
    #[error("internal error")]
    Internal(String),
}

impl From<StoreError> for AuthError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(msg) => {
                tracing::warn!(error = %msg, "database unavailable");
                AuthError::Unavailable
            }
            other => AuthError::Internal(other.to_string()),
        }
    }
}

impl From<password::HashError> for AuthError {
    fn from(e: password::HashError) -> Self {
        AuthError::Internal(e.to_string())
    }
}
