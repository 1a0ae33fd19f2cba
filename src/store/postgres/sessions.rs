//! Sessions (token families) and refresh tokens: creation, rotation with reuse detection,
//! revocation (always with a NOTIFY in the same transaction), and the revocation status.

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use super::{Postgres, notify};
use crate::model::{AuditEvent, Authentication, Role, SessionInfo, SessionStatus};
use crate::store::{NewSession, RefreshOutcome, RevocationEvent, StoreError, Successor};

impl Postgres {
    /// Opens a session with its first refresh token; returns the session id.
    pub(in crate::store) async fn create_session(
        &self,
        new: NewSession<'_>,
    ) -> Result<Uuid, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let sid = Uuid::new_v4();
        let ip = new.ip.map(|ip| ip.to_string());
        tx.execute(
            "INSERT INTO sessions (id, user_id, secret, expires_at, user_agent, ip, auth_time, amr)
             VALUES ($1, $2, $3, $4, $5, $6::text::inet, $7, $8)",
            &[
                &sid,
                &new.user_id,
                &new.secret,
                &new.expires_at,
                &new.user_agent,
                &ip,
                &new.auth.time,
                &new.auth.methods_text(),
            ],
        )
        .await?;
        tx.execute(
            "INSERT INTO refresh_tokens (id, token_hash, token_family, user_id, expires_at)
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &Uuid::now_v7(),
                &new.token_hash,
                &sid,
                &new.user_id,
                &new.expires_at,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(sid)
    }

    /// Rotates the refresh token whose hash is `token_hash`. The token row is locked, so
    /// concurrent presentations are serialized: the first rotates, the others fall in the
    /// grace window and get the same successor (`derive` is deterministic per session).
    /// A detected reuse is recorded as `on_reuse(user, session)` in the revoking transaction.
    pub(in crate::store) async fn refresh(
        &self,
        token_hash: &[u8],
        grace_secs: u64,
        derive: impl Fn(&[u8]) -> Successor,
        on_reuse: impl Fn(Uuid, Uuid) -> AuditEvent,
    ) -> Result<RefreshOutcome, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let Some(row) = tx
            .query_opt(
                "SELECT rt.id AS token_id, rt.token_family, rt.used_at, rt.replaced_by,
                        rt.revoked_at IS NOT NULL AS token_revoked, rt.expires_at AS token_expires,
                        s.secret, s.revoked_at IS NOT NULL AS session_revoked,
                        s.expires_at AS session_expires, s.auth_time, s.amr, now() AS now,
                        u.id, u.email, u.role::text AS role, u.is_active, u.created_at
                 FROM refresh_tokens rt
                 JOIN sessions s ON s.id = rt.token_family
                 JOIN users u ON u.id = rt.user_id
                 WHERE rt.token_hash = $1
                 FOR UPDATE OF rt",
                &[&token_hash],
            )
            .await?
        else {
            return Ok(RefreshOutcome::Invalid);
        };
        let now: DateTime<Utc> = row.try_get("now")?;
        let token_expires: DateTime<Utc> = row.try_get("token_expires")?;
        let session_expires: DateTime<Utc> = row.try_get("session_expires")?;
        let user = super::users::user_from_row(&row)?;
        let amr: String = row.try_get("amr")?;
        let auth = Authentication::from_stored(row.try_get("auth_time")?, &amr);
        if row.try_get::<_, bool>("token_revoked")?
            || row.try_get::<_, bool>("session_revoked")?
            || token_expires <= now
            || session_expires <= now
            || !user.is_active
        {
            return Ok(RefreshOutcome::Invalid);
        }
        let token_id: Uuid = row.try_get("token_id")?;
        let sid: Uuid = row.try_get("token_family")?;
        let secret: Vec<u8> = row.try_get("secret")?;
        let used_at: Option<DateTime<Utc>> = row.try_get("used_at")?;
        let successor = derive(&secret);
        match used_at {
            None => {
                let next_id = Uuid::now_v7();
                tx.execute(
                    "INSERT INTO refresh_tokens (id, token_hash, token_family, user_id, expires_at)
                     VALUES ($1, $2, $3, $4, $5)",
                    &[&next_id, &successor.hash, &sid, &user.id, &session_expires],
                )
                .await?;
                tx.execute(
                    "UPDATE refresh_tokens SET used_at = $2, replaced_by = $3 WHERE id = $1",
                    &[&token_id, &now, &next_id],
                )
                .await?;
            }
            Some(used)
                if grace_secs > 0
                    && now - used <= Duration::seconds(grace_secs.min(i64::MAX as u64) as i64) =>
            {
                // Benign race (two tabs): hand out the same successor, never a second one —
                // and only while that successor is still the live token. Once it has been
                // spent, the parent is an old token being walked forward: theft.
                let successor_row = tx
                    .query_opt(
                        "SELECT used_at IS NULL AS live FROM refresh_tokens
                         WHERE token_hash = $1 AND revoked_at IS NULL
                         FOR UPDATE",
                        &[&successor.hash],
                    )
                    .await?;
                match successor_row {
                    None => return Ok(RefreshOutcome::Invalid),
                    Some(row) if !row.try_get::<_, bool>("live")? => {
                        let revoked = revoke_session(&tx, sid).await?;
                        let event = on_reuse(user.id, sid);
                        super::audit::insert_in(&tx, &event).await?;
                        self.commit_revoking(tx, [revoked]).await?;
                        return Ok(RefreshOutcome::Reused(Box::new(event)));
                    }
                    Some(_) => {}
                }
            }
            Some(_) => {
                let revoked = revoke_session(&tx, sid).await?;
                let event = on_reuse(user.id, sid);
                super::audit::insert_in(&tx, &event).await?;
                self.commit_revoking(tx, [revoked]).await?;
                return Ok(RefreshOutcome::Reused(Box::new(event)));
            }
        }
        tx.execute(
            "UPDATE sessions SET last_used_at = $2 WHERE id = $1",
            &[&sid, &now],
        )
        .await?;
        tx.commit().await?;
        Ok(RefreshOutcome::Rotated {
            user,
            session_id: sid,
            successor: successor.token,
            expires_at: session_expires,
            auth,
        })
    }

    /// Revokes the session a refresh token belongs to (logout), recording
    /// `audit(user, session)` in the same transaction; unknown tokens are ignored (`None`).
    pub(in crate::store) async fn revoke_session_of_token(
        &self,
        token_hash: &[u8],
        audit: impl Fn(Uuid, Uuid) -> AuditEvent,
    ) -> Result<Option<AuditEvent>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                "SELECT token_family, user_id FROM refresh_tokens WHERE token_hash = $1",
                &[&token_hash],
            )
            .await?;
        let mut known = None;
        let mut revoked = None;
        if let Some(row) = row {
            let sid: Uuid = row.try_get(0)?;
            revoked = Some(revoke_session(&tx, sid).await?);
            let event = audit(row.try_get(1)?, sid);
            super::audit::insert_in(&tx, &event).await?;
            known = Some(event);
        }
        self.commit_revoking(tx, revoked).await?;
        Ok(known)
    }

    /// Revokes one live session of `user_id` and records `audit` in the same transaction;
    /// `false` (and nothing recorded) when it has no such live session.
    pub(in crate::store) async fn revoke_user_session(
        &self,
        user_id: Uuid,
        sid: Uuid,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let owned = tx
            .query_opt(
                "SELECT 1 FROM sessions WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL
                 FOR UPDATE",
                &[&sid, &user_id],
            )
            .await?
            .is_some();
        let mut revoked = None;
        if owned {
            revoked = Some(revoke_session(&tx, sid).await?);
            super::audit::insert_in(&tx, audit).await?;
        }
        self.commit_revoking(tx, revoked).await?;
        Ok(owned)
    }

    /// Revokes a live session whoever owns it (operator action), announces it and records
    /// `audit(owner)` in the same transaction; `false` when there is no such live session.
    pub(in crate::store) async fn revoke_session_by_id(
        &self,
        sid: Uuid,
        audit: impl FnOnce(Uuid) -> AuditEvent + Send,
    ) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let live = tx
            .query_opt(
                "SELECT user_id FROM sessions WHERE id = $1 AND revoked_at IS NULL FOR UPDATE",
                &[&sid],
            )
            .await?;
        let revoked = match live {
            Some(row) => {
                let revoked = revoke_session(&tx, sid).await?;
                super::audit::insert_in(&tx, &audit(row.try_get(0)?)).await?;
                Some(revoked)
            }
            None => None,
        };
        let live = revoked.is_some();
        self.commit_revoking(tx, revoked).await?;
        Ok(live)
    }

    /// Revokes every session of a user (logout-all, admin action) and records `audit` in the
    /// same transaction.
    pub(in crate::store) async fn revoke_all_sessions(
        &self,
        user_id: Uuid,
        audit: &AuditEvent,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let revoked = revoke_user_sessions(&tx, user_id, None).await?;
        super::audit::insert_in(&tx, audit).await?;
        self.commit_revoking(tx, [revoked]).await
    }

    /// Live sessions of a user, newest first.
    pub(in crate::store) async fn list_sessions(
        &self,
        user_id: Uuid,
    ) -> Result<Vec<SessionInfo>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, created_at, last_used_at, user_agent, host(ip) AS ip FROM sessions
                 WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > now()
                 ORDER BY created_at DESC",
                &[&user_id],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(SessionInfo {
                    id: r.try_get("id")?,
                    created_at: r.try_get("created_at")?,
                    last_used_at: r.try_get("last_used_at")?,
                    user_agent: r.try_get("user_agent")?,
                    ip: r.try_get("ip")?,
                })
            })
            .collect()
    }

    /// The revocation status of a session: two primary-key lookups in one round trip.
    pub(in crate::store) async fn session_status(
        &self,
        sid: Uuid,
    ) -> Result<Option<SessionStatus>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT s.user_id, (s.revoked_at IS NOT NULL OR s.expires_at <= now()) AS revoked,
                        u.is_active, u.role::text AS role
                 FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id = $1",
            )
            .await?;
        let row = client.query_opt(&stmt, &[&sid]).await?;
        row.map(|r| {
            let role: String = r.try_get("role")?;
            Ok(SessionStatus {
                user_id: r.try_get("user_id")?,
                revoked: r.try_get("revoked")?,
                user_active: r.try_get("is_active")?,
                role: Role::parse(&role).ok_or_else(|| StoreError::Db(format!("role {role}")))?,
            })
        })
        .transpose()
    }
}

/// Revokes one session and all its refresh tokens, and announces it; returns the
/// announcement for [`Store::commit_revoking`].
async fn revoke_session(
    tx: &deadpool_postgres::Transaction<'_>,
    sid: Uuid,
) -> Result<RevocationEvent, StoreError> {
    tx.execute(
        "UPDATE sessions SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
        &[&sid],
    )
    .await?;
    tx.execute(
        "UPDATE refresh_tokens SET revoked_at = now() WHERE token_family = $1 AND revoked_at IS NULL",
        &[&sid],
    )
    .await?;
    notify(tx, RevocationEvent::Session(sid)).await
}

/// Revokes every session of a user except `keep`, and announces it; returns the
/// announcement for [`Store::commit_revoking`].
pub(super) async fn revoke_user_sessions(
    tx: &deadpool_postgres::Transaction<'_>,
    user_id: Uuid,
    keep: Option<Uuid>,
) -> Result<RevocationEvent, StoreError> {
    tx.execute(
        "UPDATE sessions SET revoked_at = now()
         WHERE user_id = $1 AND revoked_at IS NULL AND id IS DISTINCT FROM $2",
        &[&user_id, &keep],
    )
    .await?;
    tx.execute(
        "UPDATE refresh_tokens SET revoked_at = now()
         WHERE user_id = $1 AND revoked_at IS NULL AND token_family IS DISTINCT FROM $2",
        &[&user_id, &keep],
    )
    .await?;
    notify(tx, RevocationEvent::User(user_id)).await
}
