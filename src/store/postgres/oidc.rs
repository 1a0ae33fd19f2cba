//! OIDC login state: pending authorization requests, provider identities, one-time login codes.

use uuid::Uuid;

use super::{Postgres, users::user_from_row};
use crate::model::{Role, User};
use crate::store::{OidcLink, OidcState, StoreError};

impl Postgres {
    /// Records a pending authorization request (and drops expired ones).
    pub(in crate::store) async fn save_oidc_state(
        &self,
        state_hash: &[u8],
        state: &OidcState,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM oidc_states WHERE created_at < now() - interval '10 minutes'",
                &[],
            )
            .await?;
        client
            .execute(
                "INSERT INTO oidc_states
                   (state_hash, provider, nonce, pkce_verifier, redirect_to, for_browser)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &state_hash,
                    &state.provider,
                    &state.nonce,
                    &state.pkce_verifier,
                    &state.redirect_to,
                    &state.for_browser,
                ],
            )
            .await?;
        Ok(())
    }

    /// Consumes a pending request: `None` when unknown, used, expired (10 min) or for another
    /// provider. Deleting it makes it single use even across instances.
    pub(in crate::store) async fn take_oidc_state(
        &self,
        state_hash: &[u8],
        provider: &str,
    ) -> Result<Option<OidcState>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "DELETE FROM oidc_states WHERE state_hash = $1
                 RETURNING provider, nonce, pkce_verifier, redirect_to, for_browser,
                           created_at > now() - interval '10 minutes' AS fresh",
                &[&state_hash],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let state = OidcState {
            provider: row.try_get("provider")?,
            nonce: row.try_get("nonce")?,
            pkce_verifier: row.try_get("pkce_verifier")?,
            redirect_to: row.try_get("redirect_to")?,
            for_browser: row.try_get("for_browser")?,
        };
        let fresh: bool = row.try_get("fresh")?;
        Ok((fresh && state.provider == provider).then_some(state))
    }

    /// Resolves a verified provider identity to an account: by (provider, subject); else linked
    /// to the account with the same canonical email when the provider verified it; else a new
    /// password-less account — unless the email is taken, in which case nothing changes.
    pub(in crate::store) async fn link_oidc_identity(
        &self,
        provider: &str,
        subject: &str,
        email: Option<(&str, &str)>,
        email_verified: bool,
    ) -> Result<Option<OidcLink>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let known = tx
            .query_opt(
                "SELECT u.id, u.email, u.role::text AS role, u.is_active, u.created_at
                 FROM oidc_identities i JOIN users u ON u.id = i.user_id
                 WHERE i.provider = $1 AND i.subject = $2",
                &[&provider, &subject],
            )
            .await?;
        if let Some(row) = known {
            return Ok(Some(OidcLink::User(user_from_row(&row)?)));
        }
        let Some((email, canonical)) = email else {
            return Ok(None);
        };
        let existing = tx
            .query_opt(
                "SELECT id, email, role::text AS role, is_active, created_at FROM users
                 WHERE email_canonical = $1 FOR UPDATE",
                &[&canonical],
            )
            .await?;
        let (user, created) = match existing {
            Some(row) if email_verified => {
                let user = user_from_row(&row)?;
                if !user.is_active {
                    // A deactivated account is not linked: the caller refuses the login, and
                    // reactivation must not find an identity an attacker attached meanwhile.
                    return Ok(Some(OidcLink::User(user)));
                }
                (user, false)
            }
            Some(_) => return Ok(Some(OidcLink::EmailTaken)),
            None => {
                let row = tx
                    .query_one(
                        "INSERT INTO users (id, email, email_canonical, hashed_password, role)
                         VALUES ($1, $2, $3, NULL, $4::text::user_role)
                         RETURNING id, email, role::text AS role, is_active, created_at",
                        &[&Uuid::now_v7(), &email, &canonical, &Role::User.as_str()],
                    )
                    .await?;
                (user_from_row(&row)?, true)
            }
        };
        tx.execute(
            "INSERT INTO oidc_identities (provider, subject, user_id) VALUES ($1, $2, $3)",
            &[&provider, &subject, &user.id],
        )
        .await?;
        tx.commit().await?;
        Ok(Some(OidcLink::Linked { user, created }))
    }

    /// Stores a one-time login code (hash) valid for `ttl_secs`.
    pub(in crate::store) async fn save_login_code(
        &self,
        code_hash: &[u8],
        user_id: Uuid,
        ttl_secs: i64,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO oidc_login_codes (code_hash, user_id, expires_at)
                 VALUES ($1, $2, now() + make_interval(secs => $3::bigint::double precision))",
                &[&code_hash, &user_id, &ttl_secs],
            )
            .await?;
        Ok(())
    }

    /// Consumes a login code: the user when it exists and has not expired (single use).
    pub(in crate::store) async fn take_login_code(
        &self,
        code_hash: &[u8],
    ) -> Result<Option<User>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "WITH code AS (
                     DELETE FROM oidc_login_codes WHERE code_hash = $1 RETURNING user_id, expires_at
                 )
                 SELECT u.id, u.email, u.role::text AS role, u.is_active, u.created_at
                 FROM code JOIN users u ON u.id = code.user_id
                 WHERE code.expires_at > now()",
                &[&code_hash],
            )
            .await?;
        row.map(|r| user_from_row(&r)).transpose()
    }
}
