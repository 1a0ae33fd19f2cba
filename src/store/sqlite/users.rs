//! Accounts on SQLite (see the PostgreSQL twin for the rules each query keeps).

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, Row, params};
use uuid::Uuid;

use super::{Sqlite, micros, time};
use crate::model::{AuditEvent, Role, User};
use crate::store::{AdminUpdate, AdminUpdateOutcome, StoreError, StoredUser};

/// The columns [`user_from_row`] reads, in order.
pub(super) const USER_COLUMNS: &str = "id, email, role, is_active, created_at";

/// Reads [`USER_COLUMNS`] starting at column `at`.
pub(super) fn user_at(row: &Row<'_>, at: usize) -> rusqlite::Result<User> {
    let role: String = row.get(at + 2)?;
    Ok(User {
        id: row.get(at)?,
        email: row.get(at + 1)?,
        role: Role::parse(&role).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                at + 2,
                rusqlite::types::Type::Text,
                format!("unknown role {role}").into(),
            )
        })?,
        is_active: row.get(at + 3)?,
        created_at: time(row.get(at + 4)?)?,
    })
}

pub(super) fn user_from_row(row: &Row<'_>) -> rusqlite::Result<User> {
    user_at(row, 0)
}

fn stored_user(row: &Row<'_>) -> rusqlite::Result<StoredUser> {
    Ok(StoredUser {
        user: user_from_row(row)?,
        hashed_password: row.get(5)?,
    })
}

/// Inserts a user inside a connection (also used by OIDC's first login).
pub(super) fn insert_user(
    c: &rusqlite::Connection,
    email: &str,
    canonical: &str,
    hashed_password: Option<&str>,
    role: Role,
) -> Result<User, StoreError> {
    let now = micros(Utc::now());
    Ok(c.query_row(
        &format!(
            "INSERT INTO users (id, email, email_canonical, hashed_password, role, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) RETURNING {USER_COLUMNS}"
        ),
        params![Uuid::now_v7(), email, canonical, hashed_password, role.as_str(), now],
        user_from_row,
    )?)
}

impl Sqlite {
    pub(in crate::store) async fn create_user(
        &self,
        email: &str,
        email_canonical: &str,
        hashed_password: Option<&str>,
        role: Role,
    ) -> Result<User, StoreError> {
        let (email, canonical) = (email.to_string(), email_canonical.to_string());
        let hash = hashed_password.map(str::to_string);
        self.write(move |c| insert_user(c, &email, &canonical, hash.as_deref(), role))
            .await
    }

    pub(in crate::store) async fn find_user_by_email(
        &self,
        email_canonical: &str,
    ) -> Result<Option<StoredUser>, StoreError> {
        let canonical = email_canonical.to_string();
        self.run(move |c| {
            Ok(c.query_row(
                &format!(
                    "SELECT {USER_COLUMNS}, hashed_password FROM users WHERE email_canonical = ?1"
                ),
                [canonical],
                stored_user,
            )
            .optional()?)
        })
        .await
    }

    pub(in crate::store) async fn find_user(
        &self,
        id: Uuid,
    ) -> Result<Option<StoredUser>, StoreError> {
        self.run(move |c| {
            Ok(c.query_row(
                &format!("SELECT {USER_COLUMNS}, hashed_password FROM users WHERE id = ?1"),
                [id],
                stored_user,
            )
            .optional()?)
        })
        .await
    }

    pub(in crate::store) async fn set_password_hash(
        &self,
        id: Uuid,
        hash: &str,
    ) -> Result<(), StoreError> {
        let hash = hash.to_string();
        self.write(move |c| {
            c.execute(
                "UPDATE users SET hashed_password = ?2, updated_at = ?3 WHERE id = ?1",
                params![id, hash, micros(Utc::now())],
            )?;
            Ok(())
        })
        .await
    }

    pub(in crate::store) async fn change_password(
        &self,
        id: Uuid,
        hash: &str,
        keep: Uuid,
        audit: &AuditEvent,
    ) -> Result<(), StoreError> {
        let hash = hash.to_string();
        let audit = audit.clone();
        let tx = self.begin().await?;
        let revoked = tx
            .run(move |c| {
                c.execute(
                    "UPDATE users SET hashed_password = ?2, updated_at = ?3 WHERE id = ?1",
                    params![id, hash, micros(Utc::now())],
                )?;
                let revoked = super::sessions::revoke_user_sessions(c, id, Some(keep))?;
                super::audit::insert(c, &audit)?;
                Ok(revoked)
            })
            .await?;
        tx.commit_revoking([revoked]).await
    }

    pub(in crate::store) async fn list_users(
        &self,
        limit: i64,
        after: Option<(DateTime<Utc>, Uuid)>,
    ) -> Result<Vec<User>, StoreError> {
        self.run(move |c| {
            let rows = match after {
                Some((at, id)) => {
                    let mut stmt = c.prepare(&format!(
                        "SELECT {USER_COLUMNS} FROM users
                         WHERE created_at > ?1 OR (created_at = ?1 AND id > ?2)
                         ORDER BY created_at, id LIMIT ?3"
                    ))?;
                    stmt.query_map(params![micros(at), id, limit], user_from_row)?
                        .collect::<rusqlite::Result<Vec<_>>>()?
                }
                None => {
                    let mut stmt = c.prepare(&format!(
                        "SELECT {USER_COLUMNS} FROM users ORDER BY created_at, id LIMIT ?1"
                    ))?;
                    stmt.query_map([limit], user_from_row)?
                        .collect::<rusqlite::Result<Vec<_>>>()?
                }
            };
            Ok(rows)
        })
        .await
    }

    pub(in crate::store) async fn admin_update_user(
        &self,
        id: Uuid,
        update: AdminUpdate,
        audit: impl FnOnce(&User, &User) -> Vec<AuditEvent> + Send,
    ) -> Result<AdminUpdateOutcome, StoreError> {
        // The write lock taken by BEGIN IMMEDIATE serializes this with every other writer,
        // so the last-admin guard cannot be passed by two racing demotions.
        let tx = self.begin().await?;
        let read = tx
            .run(move |c| {
                let admins: i64 = c.query_row(
                    "SELECT count(*) FROM users WHERE role = 'admin' AND is_active",
                    [],
                    |r| r.get(0),
                )?;
                let current = c
                    .query_row(
                        &format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"),
                        [id],
                        user_from_row,
                    )
                    .optional()?;
                Ok((admins, current))
            })
            .await?;
        let (admins, Some(current)) = read else {
            return Ok(AdminUpdateOutcome::NotFound);
        };
        let new_role = update.role.unwrap_or(current.role);
        let new_active = update.is_active.unwrap_or(current.is_active);
        let was_admin = current.role == Role::Admin && current.is_active;
        let stays_admin = new_role == Role::Admin && new_active;
        if was_admin && !stays_admin && admins <= 1 {
            return Ok(AdminUpdateOutcome::LastAdmin);
        }
        let revoke = new_role != current.role || new_active != current.is_active;
        let updated = tx
            .run(move |c| {
                Ok(c.query_row(
                    &format!(
                        "UPDATE users SET role = ?2, is_active = ?3, updated_at = ?4
                         WHERE id = ?1 RETURNING {USER_COLUMNS}"
                    ),
                    params![id, new_role.as_str(), new_active, micros(Utc::now())],
                    user_from_row,
                )?)
            })
            .await?;
        let events = audit(&current, &updated);
        let recorded = events.clone();
        let revoked = tx
            .run(move |c| {
                let revoked = if revoke {
                    Some(super::sessions::revoke_user_sessions(c, id, None)?)
                } else {
                    None
                };
                for e in &recorded {
                    super::audit::insert(c, e)?;
                }
                Ok(revoked)
            })
            .await?;
        tx.commit_revoking(revoked).await?;
        Ok(AdminUpdateOutcome::Updated(updated, events))
    }

    pub(in crate::store) async fn user_exists(&self, id: Uuid) -> Result<bool, StoreError> {
        self.run(move |c| {
            Ok(
                c.query_row("SELECT 1 FROM users WHERE id = ?1", [id], |_| Ok(()))
                    .optional()?
                    .is_some(),
            )
        })
        .await
    }

    pub(in crate::store) async fn login_failures(
        &self,
        email_canonical: &str,
    ) -> Result<i32, StoreError> {
        let canonical = email_canonical.to_string();
        self.run(move |c| {
            Ok(c.query_row(
                "SELECT failures FROM login_failures
                 WHERE email_canonical = ?1 AND window_start = ?2",
                params![canonical, minute_now()],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0))
        })
        .await
    }

    pub(in crate::store) async fn record_login_failure(
        &self,
        email_canonical: &str,
    ) -> Result<(), StoreError> {
        let canonical = email_canonical.to_string();
        self.write(move |c| {
            let minute = minute_now();
            c.execute(
                "INSERT INTO login_failures (email_canonical, window_start, failures)
                 VALUES (?1, ?2, 1)
                 ON CONFLICT (email_canonical, window_start)
                 DO UPDATE SET failures = failures + 1",
                params![canonical, minute],
            )?;
            c.execute(
                "DELETE FROM login_failures WHERE email_canonical = ?1 AND window_start < ?2",
                params![canonical, minute],
            )?;
            Ok(())
        })
        .await
    }
}

/// The start of the current minute, as stored.
fn minute_now() -> i64 {
    let us = micros(Utc::now());
    us - us.rem_euclid(60_000_000)
}
