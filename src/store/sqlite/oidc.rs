//! OIDC login state on SQLite: pending authorization requests, provider identities,
//! one-time login codes.

use chrono::Utc;
use rusqlite::{OptionalExtension, params};
use uuid::Uuid;

use super::users::{USER_COLUMNS, insert_user, user_from_row};
use super::{Sqlite, micros};
use crate::model::{Role, User};
use crate::store::{OidcLink, OidcState, StoreError};

/// How long a pending authorization request lives.
const STATE_TTL_US: i64 = 10 * 60 * 1_000_000;

impl Sqlite {
    pub(in crate::store) async fn save_oidc_state(
        &self,
        state_hash: &[u8],
        state: &OidcState,
    ) -> Result<(), StoreError> {
        let (hash, s) = (state_hash.to_vec(), state.clone());
        self.write(move |c| {
            let now = micros(Utc::now());
            c.execute(
                "DELETE FROM oidc_states WHERE created_at < ?1",
                [now - STATE_TTL_US],
            )?;
            c.execute(
                "INSERT INTO oidc_states
                   (state_hash, provider, nonce, pkce_verifier, redirect_to, for_browser, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    hash,
                    s.provider,
                    s.nonce,
                    s.pkce_verifier,
                    s.redirect_to,
                    s.for_browser,
                    now
                ],
            )?;
            Ok(())
        })
        .await
    }

    pub(in crate::store) async fn take_oidc_state(
        &self,
        state_hash: &[u8],
        provider: &str,
    ) -> Result<Option<OidcState>, StoreError> {
        let hash = state_hash.to_vec();
        let row = self
            .write(move |c| {
                Ok(c.query_row(
                    "DELETE FROM oidc_states WHERE state_hash = ?1
                     RETURNING provider, nonce, pkce_verifier, redirect_to, for_browser, created_at",
                    [hash],
                    |r| {
                        Ok((
                            OidcState {
                                provider: r.get(0)?,
                                nonce: r.get(1)?,
                                pkce_verifier: r.get(2)?,
                                redirect_to: r.get(3)?,
                                for_browser: r.get(4)?,
                            },
                            r.get::<_, i64>(5)?,
                        ))
                    },
                )
                .optional()?)
            })
            .await?;
        let Some((state, created)) = row else {
            return Ok(None);
        };
        let fresh = created > micros(Utc::now()) - STATE_TTL_US;
        Ok((fresh && state.provider == provider).then_some(state))
    }

    pub(in crate::store) async fn link_oidc_identity(
        &self,
        provider: &str,
        subject: &str,
        email: Option<(&str, &str)>,
        email_verified: bool,
    ) -> Result<Option<OidcLink>, StoreError> {
        let (provider, subject) = (provider.to_string(), subject.to_string());
        let email = email.map(|(e, c)| (e.to_string(), c.to_string()));
        let tx = self.begin().await?;
        let link = tx
            .run(move |c| {
                let known = c
                    .query_row(
                        "SELECT u.id, u.email, u.role, u.is_active, u.created_at
                         FROM oidc_identities i JOIN users u ON u.id = i.user_id
                         WHERE i.provider = ?1 AND i.subject = ?2",
                        params![provider, subject],
                        user_from_row,
                    )
                    .optional()?;
                if let Some(user) = known {
                    return Ok(Some(OidcLink::User(user)));
                }
                let Some((email, canonical)) = email else {
                    return Ok(None);
                };
                let existing = c
                    .query_row(
                        &format!("SELECT {USER_COLUMNS} FROM users WHERE email_canonical = ?1"),
                        [&canonical],
                        user_from_row,
                    )
                    .optional()?;
                let (user, created) = match existing {
                    Some(user) if email_verified => {
                        if !user.is_active {
                            // Not linked: see the PostgreSQL twin.
                            return Ok(Some(OidcLink::User(user)));
                        }
                        (user, false)
                    }
                    Some(_) => return Ok(Some(OidcLink::EmailTaken)),
                    None => (insert_user(c, &email, &canonical, None, Role::User)?, true),
                };
                c.execute(
                    "INSERT INTO oidc_identities (provider, subject, user_id, created_at)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![provider, subject, user.id, micros(Utc::now())],
                )?;
                Ok(Some(OidcLink::Linked { user, created }))
            })
            .await?;
        // Nothing was written when nothing was linked; committing ends the read either way.
        tx.commit().await?;
        Ok(link)
    }

    pub(in crate::store) async fn save_login_code(
        &self,
        code_hash: &[u8],
        user_id: Uuid,
        ttl_secs: i64,
    ) -> Result<(), StoreError> {
        let hash = code_hash.to_vec();
        self.write(move |c| {
            let now = micros(Utc::now());
            c.execute(
                "INSERT INTO oidc_login_codes (code_hash, user_id, expires_at, created_at)
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    hash,
                    user_id,
                    now.saturating_add(ttl_secs.saturating_mul(1_000_000)),
                    now
                ],
            )?;
            Ok(())
        })
        .await
    }

    pub(in crate::store) async fn take_login_code(
        &self,
        code_hash: &[u8],
    ) -> Result<Option<User>, StoreError> {
        let hash = code_hash.to_vec();
        let tx = self.begin().await?;
        let user = tx
            .run(move |c| {
                let code: Option<(Uuid, i64)> = c
                    .query_row(
                        "DELETE FROM oidc_login_codes WHERE code_hash = ?1
                         RETURNING user_id, expires_at",
                        [hash],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                let Some((user_id, expires)) = code else {
                    return Ok(None);
                };
                if expires <= micros(Utc::now()) {
                    return Ok(None);
                }
                Ok(c.query_row(
                    &format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"),
                    [user_id],
                    user_from_row,
                )
                .optional()?)
            })
            .await?;
        tx.commit().await?;
        Ok(user)
    }
}
