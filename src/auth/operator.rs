//! Operator use-cases behind `portcullis user …` and `portcullis sessions …`: the admin API's
//! rules (the last active admin stays, every revocation is announced to every instance) for a
//! caller who holds the database rather than an admin token.

use uuid::Uuid;

use serde_json::json;

use super::{AuthError, ClientInfo, audit, email};
use crate::model::{AuditKind, Role, SessionInfo, User};
use crate::store::{AdminUpdate, AdminUpdateOutcome, Store};

/// Applies an admin change to a user, refusing to leave no active admin, and records what
/// changed in the same transaction. Shared with the admin API
/// (`AuthService::admin_update_user`); the CLI has no `actor` and a default `client`.
pub async fn update_user(
    store: &Store,
    id: Uuid,
    update: AdminUpdate,
    actor: Option<Uuid>,
    client: &ClientInfo,
) -> Result<User, AuthError> {
    let events = |before: &User, after: &User| {
        super::service::admin_changes(before, after)
            .into_iter()
            .map(|(kind, detail)| audit::event(kind, Some(id), actor, client, detail))
            .collect()
    };
    match store.admin_update_user(id, update, events).await? {
        AdminUpdateOutcome::Updated(user, events) => {
            events.iter().for_each(audit::log);
            Ok(user)
        }
        AdminUpdateOutcome::NotFound => Err(AuthError::NotFound("no such user")),
        AdminUpdateOutcome::LastAdmin => Err(AuthError::Conflict(
            "this change would leave no active admin",
        )),
    }
}

/// Revokes every session of a user (announced to every instance) and records
/// `session_revoked` in the same transaction. Shared with the admin API.
pub async fn revoke_all_sessions(
    store: &Store,
    id: Uuid,
    actor: Option<Uuid>,
    client: &ClientInfo,
) -> Result<(), AuthError> {
    if !store.user_exists(id).await? {
        return Err(AuthError::NotFound("no such user"));
    }
    let detail = json!({"all": true});
    let event = audit::event(AuditKind::SessionRevoked, Some(id), actor, client, detail);
    store.revoke_all_sessions(id, &event).await?;
    audit::log(&event);
    Ok(())
}

/// The account with this email (matched as logins match it: NFKC, any case).
pub async fn user_by_email(store: &Store, raw_email: &str) -> Result<User, AuthError> {
    let (_, canonical) =
        email::parse(raw_email).map_err(|m| AuthError::InvalidRequest(m.to_string()))?;
    store
        .find_user_by_email(&canonical)
        .await?
        .map(|s| s.user)
        .ok_or(AuthError::NotFound("no user has this email"))
}

/// Every user, oldest first.
pub async fn list_users(store: &Store) -> Result<Vec<User>, AuthError> {
    const PAGE: i64 = 500;
    let mut all: Vec<User> = Vec::new();
    loop {
        let after = all.last().map(|u| (u.created_at, u.id));
        let page = store.list_users(PAGE, after).await?;
        let done = (page.len() as i64) < PAGE;
        all.extend(page);
        if done {
            return Ok(all);
        }
    }
}

/// Sets the role of the user with this email (their sessions are revoked when it changes).
pub async fn set_role(store: &Store, raw_email: &str, role: Role) -> Result<User, AuthError> {
    let user = user_by_email(store, raw_email).await?;
    let update = AdminUpdate {
        role: Some(role),
        is_active: None,
    };
    update_user(store, user.id, update, None, &ClientInfo::default()).await
}

/// Activates or deactivates the user with this email (deactivation revokes their sessions).
pub async fn set_active(store: &Store, raw_email: &str, active: bool) -> Result<User, AuthError> {
    let user = user_by_email(store, raw_email).await?;
    let update = AdminUpdate {
        role: None,
        is_active: Some(active),
    };
    update_user(store, user.id, update, None, &ClientInfo::default()).await
}

/// The live sessions of the user with this email, newest first.
pub async fn sessions(
    store: &Store,
    raw_email: &str,
) -> Result<(User, Vec<SessionInfo>), AuthError> {
    let user = user_by_email(store, raw_email).await?;
    let sessions = store.list_sessions(user.id).await?;
    Ok((user, sessions))
}

/// Revokes every session of the user with this email; returns how many were live.
pub async fn revoke_user(store: &Store, raw_email: &str) -> Result<(User, usize), AuthError> {
    let user = user_by_email(store, raw_email).await?;
    let live = store.list_sessions(user.id).await?.len();
    revoke_all_sessions(store, user.id, None, &ClientInfo::default()).await?;
    Ok((user, live))
}

/// Revokes one session by id, whoever owns it.
pub async fn revoke_session(store: &Store, sid: Uuid) -> Result<(), AuthError> {
    let client = ClientInfo::default();
    let detail = json!({"session_id": sid});
    let mut recorded = None;
    let event = |user_id: Uuid| {
        let e = audit::event(
            AuditKind::SessionRevoked,
            Some(user_id),
            None,
            &client,
            detail,
        );
        recorded = Some(e.clone());
        e
    };
    if store.revoke_session_by_id(sid, event).await? {
        if let Some(e) = &recorded {
            audit::log(e);
        }
        Ok(())
    } else {
        Err(AuthError::NotFound("no live session has this id"))
    }
}
