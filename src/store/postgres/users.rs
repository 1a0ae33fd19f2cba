//! Accounts: creation, lookup, password hashes, the admin list and admin changes.

use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use uuid::Uuid;

use super::Postgres;
use crate::model::{AuditEvent, Role, User};
use crate::store::{AdminUpdate, AdminUpdateOutcome, StoreError, StoredUser};

const USER_COLUMNS: &str = "id, email, role::text AS role, is_active, created_at";

pub(super) fn user_from_row(row: &Row) -> Result<User, StoreError> {
    let role: String = row.try_get("role")?;
    Ok(User {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
        role: Role::parse(&role).ok_or_else(|| StoreError::Db(format!("unknown role {role}")))?,
        is_active: row.try_get("is_active")?,
        created_at: row.try_get("created_at")?,
    })
}

impl Postgres {
    /// Inserts a user; `StoreError::Unique("users_email_canonical_key")` when the canonical
    /// email is taken.
    pub(in crate::store) async fn create_user(
        &self,
        email: &str,
        email_canonical: &str,
        hashed_password: Option<&str>,
        role: Role,
    ) -> Result<User, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                &format!(
                    "INSERT INTO users (id, email, email_canonical, hashed_password, role)
                     VALUES ($1, $2, $3, $4, $5::text::user_role) RETURNING {USER_COLUMNS}"
                ),
                &[
                    &Uuid::now_v7(),
                    &email,
                    &email_canonical,
                    &hashed_password,
                    &role.as_str(),
                ],
            )
            .await?;
        user_from_row(&row)
    }

    /// Looks a user up by canonical email, with the password hash.
    pub(in crate::store) async fn find_user_by_email(
        &self,
        email_canonical: &str,
    ) -> Result<Option<StoredUser>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT {USER_COLUMNS}, hashed_password FROM users WHERE email_canonical = $1"
                ),
                &[&email_canonical],
            )
            .await?;
        row.map(|r| {
            Ok(StoredUser {
                user: user_from_row(&r)?,
                hashed_password: r.try_get("hashed_password")?,
            })
        })
        .transpose()
    }

    /// Looks a user up by id, with the password hash.
    pub(in crate::store) async fn find_user(
        &self,
        id: Uuid,
    ) -> Result<Option<StoredUser>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT {USER_COLUMNS}, hashed_password FROM users WHERE id = $1"),
                &[&id],
            )
            .await?;
        row.map(|r| {
            Ok(StoredUser {
                user: user_from_row(&r)?,
                hashed_password: r.try_get("hashed_password")?,
            })
        })
        .transpose()
    }

    /// Replaces a password hash (re-hash on login after a parameter change).
    pub(in crate::store) async fn set_password_hash(
        &self,
        id: Uuid,
        hash: &str,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE users SET hashed_password = $2, updated_at = now() WHERE id = $1",
                &[&id, &hash],
            )
            .await?;
        Ok(())
    }

    /// Changes the password, revokes every session but `keep` and records `audit`, in one
    /// transaction.
    pub(in crate::store) async fn change_password(
        &self,
        id: Uuid,
        hash: &str,
        keep: Uuid,
        audit: &AuditEvent,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "UPDATE users SET hashed_password = $2, updated_at = now() WHERE id = $1",
            &[&id, &hash],
        )
        .await?;
        let revoked = super::sessions::revoke_user_sessions(&tx, id, Some(keep)).await?;
        super::audit::insert_in(&tx, audit).await?;
        self.commit_revoking(tx, [revoked]).await
    }

    /// One page of users ordered by (created_at, id), starting after `after`.
    pub(in crate::store) async fn list_users(
        &self,
        limit: i64,
        after: Option<(DateTime<Utc>, Uuid)>,
    ) -> Result<Vec<User>, StoreError> {
        let client = self.client().await?;
        let rows = match after {
            Some((at, id)) => {
                client
                    .query(
                        &format!(
                            "SELECT {USER_COLUMNS} FROM users WHERE (created_at, id) > ($1, $2)
                             ORDER BY created_at, id LIMIT $3"
                        ),
                        &[&at, &id, &limit],
                    )
                    .await?
            }
            None => {
                client
                    .query(
                        &format!(
                            "SELECT {USER_COLUMNS} FROM users ORDER BY created_at, id LIMIT $1"
                        ),
                        &[&limit],
                    )
                    .await?
            }
        };
        rows.iter().map(user_from_row).collect()
    }

    /// Applies an admin change. A role change or deactivation revokes all the user's sessions
    /// (and notifies); demoting or deactivating the last active admin is refused. Active admins
    /// are locked first so two concurrent demotions cannot both pass the guard.
    ///
    /// `audit` names the events of the change from the row before and after; they are
    /// recorded in the same transaction and returned with the user.
    pub(in crate::store) async fn admin_update_user(
        &self,
        id: Uuid,
        update: AdminUpdate,
        audit: impl FnOnce(&User, &User) -> Vec<AuditEvent> + Send,
    ) -> Result<AdminUpdateOutcome, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let admins: Vec<Uuid> = tx
            .query(
                "SELECT id FROM users WHERE role = 'admin' AND is_active ORDER BY id FOR UPDATE",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        let Some(row) = tx
            .query_opt(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1 FOR UPDATE"),
                &[&id],
            )
            .await?
        else {
            return Ok(AdminUpdateOutcome::NotFound);
        };
        let current = user_from_row(&row)?;
        let new_role = update.role.unwrap_or(current.role);
        let new_active = update.is_active.unwrap_or(current.is_active);
        let stays_admin = new_role == Role::Admin && new_active;
        if admins.contains(&id) && !stays_admin && admins.len() <= 1 {
            return Ok(AdminUpdateOutcome::LastAdmin);
        }
        let row = tx
            .query_one(
                &format!(
                    "UPDATE users SET role = $2::text::user_role, is_active = $3, updated_at = now()
                     WHERE id = $1 RETURNING {USER_COLUMNS}"
                ),
                &[&id, &new_role.as_str(), &new_active],
            )
            .await?;
        let updated = user_from_row(&row)?;
        let mut revoked = None;
        if new_role != current.role || new_active != current.is_active {
            revoked = Some(super::sessions::revoke_user_sessions(&tx, id, None).await?);
        }
        let events = audit(&current, &updated);
        for e in &events {
            super::audit::insert_in(&tx, e).await?;
        }
        self.commit_revoking(tx, revoked).await?;
        Ok(AdminUpdateOutcome::Updated(updated, events))
    }

    /// Whether a user exists (for 404s on admin endpoints).
    pub(in crate::store) async fn user_exists(&self, id: Uuid) -> Result<bool, StoreError> {
        let client = self.client().await?;
        Ok(client
            .query_opt("SELECT 1 FROM users WHERE id = $1", &[&id])
            .await?
            .is_some())
    }

    /// Failed logins for the account in the current minute, across all instances.
    pub(in crate::store) async fn login_failures(
        &self,
        email_canonical: &str,
    ) -> Result<i32, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT failures FROM login_failures
                 WHERE email_canonical = $1 AND window_start = date_trunc('minute', now())",
                &[&email_canonical],
            )
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?.unwrap_or(0))
    }

    /// Counts one failed login for the account in the current minute and drops old windows.
    pub(in crate::store) async fn record_login_failure(
        &self,
        email_canonical: &str,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO login_failures (email_canonical, window_start, failures)
                 VALUES ($1, date_trunc('minute', now()), 1)
                 ON CONFLICT (email_canonical, window_start)
                 DO UPDATE SET failures = login_failures.failures + 1",
                &[&email_canonical],
            )
            .await?;
        client
            .execute(
                "DELETE FROM login_failures
                 WHERE email_canonical = $1 AND window_start < date_trunc('minute', now())",
                &[&email_canonical],
            )
            .await?;
        Ok(())
    }
}
