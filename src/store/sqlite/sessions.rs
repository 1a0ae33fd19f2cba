//! Sessions (token families) and refresh tokens on SQLite: rotation with reuse detection and
//! revocation, each revocation appended to the revocation log in its transaction.

use chrono::{Duration, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use super::{Sqlite, events, micros, time};
use crate::model::{AuditEvent, Authentication, Role, SessionInfo, SessionStatus, User};
use crate::store::{NewSession, RefreshOutcome, RevocationEvent, StoreError, Successor};

/// What the rotation reads about a presented token, its session and its owner.
struct Presented {
    token_id: Uuid,
    sid: Uuid,
    used_at: Option<i64>,
    token_revoked: bool,
    token_expires: i64,
    secret: Vec<u8>,
    session_revoked: bool,
    session_expires: i64,
    user: User,
    auth: Authentication,
}

impl Sqlite {
    pub(in crate::store) async fn create_session(
        &self,
        new: NewSession<'_>,
    ) -> Result<Uuid, StoreError> {
        let sid = Uuid::new_v4();
        let (user_id, secret, hash) = (new.user_id, new.secret.to_vec(), new.token_hash.to_vec());
        let expires = micros(new.expires_at);
        let user_agent = new.user_agent.map(str::to_string);
        let ip = new.ip.map(|ip| ip.to_string());
        let (auth_time, amr) = (micros(new.auth.time), new.auth.methods_text());
        let tx = self.begin().await?;
        tx.run(move |c| {
            let now = micros(Utc::now());
            c.execute(
                "INSERT INTO sessions (id, user_id, secret, created_at, last_used_at, expires_at,
                                       user_agent, ip, auth_time, amr)
                 VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    sid, user_id, secret, now, expires, user_agent, ip, auth_time, amr
                ],
            )?;
            c.execute(
                "INSERT INTO refresh_tokens
                   (id, token_hash, token_family, user_id, expires_at, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![Uuid::now_v7(), hash, sid, user_id, expires, now],
            )?;
            Ok(())
        })
        .await?;
        tx.commit().await?;
        Ok(sid)
    }

    pub(in crate::store) async fn refresh(
        &self,
        token_hash: &[u8],
        grace_secs: u64,
        derive: impl Fn(&[u8]) -> Successor + Send,
        on_reuse: impl Fn(Uuid, Uuid) -> AuditEvent + Send,
    ) -> Result<RefreshOutcome, StoreError> {
        // The write lock (BEGIN IMMEDIATE) serializes concurrent presentations as PostgreSQL's
        // row lock does: the first rotates, the others see `used_at` and take the grace path.
        let tx = self.begin().await?;
        let hash = token_hash.to_vec();
        let presented = tx
            .run(move |c| {
                Ok(c.query_row(
                    "SELECT rt.id, rt.token_family, rt.used_at, rt.revoked_at IS NOT NULL,
                            rt.expires_at, s.secret, s.revoked_at IS NOT NULL, s.expires_at,
                            u.id, u.email, u.role, u.is_active, u.created_at, s.auth_time, s.amr
                     FROM refresh_tokens rt
                     JOIN sessions s ON s.id = rt.token_family
                     JOIN users u ON u.id = rt.user_id
                     WHERE rt.token_hash = ?1",
                    [hash],
                    |r| {
                        Ok(Presented {
                            token_id: r.get(0)?,
                            sid: r.get(1)?,
                            used_at: r.get(2)?,
                            token_revoked: r.get(3)?,
                            token_expires: r.get(4)?,
                            secret: r.get(5)?,
                            session_revoked: r.get(6)?,
                            session_expires: r.get(7)?,
                            user: super::users::user_at(r, 8)?,
                            auth: Authentication::from_stored(
                                time(r.get(13)?)?,
                                &r.get::<_, String>(14)?,
                            ),
                        })
                    },
                )
                .optional()?)
            })
            .await?;
        let Some(p) = presented else {
            return Ok(RefreshOutcome::Invalid);
        };
        let now = Utc::now();
        let now_us = micros(now);
        if p.token_revoked
            || p.session_revoked
            || p.token_expires <= now_us
            || p.session_expires <= now_us
            || !p.user.is_active
        {
            return Ok(RefreshOutcome::Invalid);
        }
        let successor = derive(&p.secret);
        let (sid, user_id, token_id, session_expires) =
            (p.sid, p.user.id, p.token_id, p.session_expires);
        let grace = Duration::seconds(grace_secs.min(i64::MAX as u64 / 1_000_000) as i64);
        let reuse = match p.used_at {
            None => false,
            Some(used) if grace_secs > 0 && now - time(used)? <= grace => {
                // Benign race (two tabs): the same successor again, while it is still the live
                // token; once it has been spent, the parent is an old token walked forward.
                let next = successor.hash.clone();
                let live: Option<bool> = tx
                    .run(move |c| {
                        Ok(c.query_row(
                            "SELECT used_at IS NULL FROM refresh_tokens
                             WHERE token_hash = ?1 AND revoked_at IS NULL",
                            [next],
                            |r| r.get(0),
                        )
                        .optional()?)
                    })
                    .await?;
                match live {
                    None => return Ok(RefreshOutcome::Invalid),
                    Some(live) => !live,
                }
            }
            Some(_) => true,
        };
        if reuse {
            let event = on_reuse(user_id, sid);
            revoke_recorded(tx, sid, event.clone()).await?;
            return Ok(RefreshOutcome::Reused(Box::new(event)));
        }
        if p.used_at.is_none() {
            let next = successor.hash.clone();
            tx.run(move |c| {
                let next_id = Uuid::now_v7();
                c.execute(
                    "INSERT INTO refresh_tokens
                       (id, token_hash, token_family, user_id, expires_at, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![next_id, next, sid, user_id, session_expires, now_us],
                )?;
                c.execute(
                    "UPDATE refresh_tokens SET used_at = ?2, replaced_by = ?3 WHERE id = ?1",
                    params![token_id, now_us, next_id],
                )?;
                Ok(())
            })
            .await?;
        }
        tx.run(move |c| {
            c.execute(
                "UPDATE sessions SET last_used_at = ?2 WHERE id = ?1",
                params![sid, now_us],
            )?;
            Ok(())
        })
        .await?;
        tx.commit().await?;
        Ok(RefreshOutcome::Rotated {
            user: p.user,
            session_id: sid,
            successor: successor.token,
            expires_at: time(session_expires)?,
            auth: p.auth,
        })
    }

    pub(in crate::store) async fn revoke_session_of_token(
        &self,
        token_hash: &[u8],
        audit: impl Fn(Uuid, Uuid) -> AuditEvent + Send,
    ) -> Result<Option<AuditEvent>, StoreError> {
        let hash = token_hash.to_vec();
        let tx = self.begin().await?;
        let owner: Option<(Uuid, Uuid)> = tx
            .run(move |c| {
                Ok(c.query_row(
                    "SELECT token_family, user_id FROM refresh_tokens WHERE token_hash = ?1",
                    [hash],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?)
            })
            .await?;
        let Some((sid, user_id)) = owner else {
            return Ok(None);
        };
        let event = audit(user_id, sid);
        revoke_recorded(tx, sid, event.clone()).await?;
        Ok(Some(event))
    }

    pub(in crate::store) async fn revoke_user_session(
        &self,
        user_id: Uuid,
        sid: Uuid,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError> {
        let audit = audit.clone();
        let tx = self.begin().await?;
        let revoked = tx
            .run(move |c| {
                let owned = c
                    .query_row(
                        "SELECT 1 FROM sessions
                         WHERE id = ?1 AND user_id = ?2 AND revoked_at IS NULL",
                        params![sid, user_id],
                        |_| Ok(()),
                    )
                    .optional()?
                    .is_some();
                if !owned {
                    return Ok(None);
                }
                let revoked = revoke_session(c, sid)?;
                super::audit::insert(c, &audit)?;
                Ok(Some(revoked))
            })
            .await?;
        let owned = revoked.is_some();
        tx.commit_revoking(revoked).await?;
        Ok(owned)
    }

    pub(in crate::store) async fn revoke_session_by_id(
        &self,
        sid: Uuid,
        audit: impl FnOnce(Uuid) -> AuditEvent + Send,
    ) -> Result<bool, StoreError> {
        let tx = self.begin().await?;
        let owner: Option<Uuid> = tx
            .run(move |c| {
                Ok(c.query_row(
                    "SELECT user_id FROM sessions WHERE id = ?1 AND revoked_at IS NULL",
                    [sid],
                    |r| r.get(0),
                )
                .optional()?)
            })
            .await?;
        let Some(owner) = owner else {
            return Ok(false);
        };
        revoke_recorded(tx, sid, audit(owner)).await?;
        Ok(true)
    }

    pub(in crate::store) async fn revoke_all_sessions(
        &self,
        user_id: Uuid,
        audit: &AuditEvent,
    ) -> Result<(), StoreError> {
        let audit = audit.clone();
        let tx = self.begin().await?;
        let revoked = tx
            .run(move |c| {
                let revoked = revoke_user_sessions(c, user_id, None)?;
                super::audit::insert(c, &audit)?;
                Ok(revoked)
            })
            .await?;
        tx.commit_revoking([revoked]).await
    }

    pub(in crate::store) async fn list_sessions(
        &self,
        user_id: Uuid,
    ) -> Result<Vec<SessionInfo>, StoreError> {
        self.run(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, created_at, last_used_at, user_agent, ip FROM sessions
                 WHERE user_id = ?1 AND revoked_at IS NULL AND expires_at > ?2
                 ORDER BY created_at DESC",
            )?;
            let rows = stmt
                .query_map(params![user_id, micros(Utc::now())], |r| {
                    Ok(SessionInfo {
                        id: r.get(0)?,
                        created_at: time(r.get(1)?)?,
                        last_used_at: time(r.get(2)?)?,
                        user_agent: r.get(3)?,
                        ip: r.get(4)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    pub(in crate::store) async fn session_status(
        &self,
        sid: Uuid,
    ) -> Result<Option<SessionStatus>, StoreError> {
        self.run(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT s.user_id, (s.revoked_at IS NOT NULL OR s.expires_at <= ?2),
                        u.is_active, u.role
                 FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id = ?1",
            )?;
            let row = stmt
                .query_row(params![sid, micros(Utc::now())], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, String>(3)?))
                })
                .optional()?;
            row.map(|(user_id, revoked, user_active, role)| {
                Ok(SessionStatus {
                    user_id,
                    revoked,
                    user_active,
                    role: Role::parse(&role)
                        .ok_or_else(|| StoreError::Db(format!("role {role}")))?,
                })
            })
            .transpose()
        })
        .await
    }
}

/// Ends `tx` by revoking one session with its audit event, and applies the revocation locally.
async fn revoke_recorded(tx: super::Tx, sid: Uuid, event: AuditEvent) -> Result<(), StoreError> {
    let revoked = tx
        .run(move |c| {
            let revoked = revoke_session(c, sid)?;
            super::audit::insert(c, &event)?;
            Ok(revoked)
        })
        .await?;
    tx.commit_revoking([revoked]).await
}

/// Revokes one session and all its refresh tokens, and logs the revocation.
fn revoke_session(c: &Connection, sid: Uuid) -> Result<RevocationEvent, StoreError> {
    let now = micros(Utc::now());
    c.execute(
        "UPDATE sessions SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
        params![sid, now],
    )?;
    c.execute(
        "UPDATE refresh_tokens SET revoked_at = ?2 WHERE token_family = ?1 AND revoked_at IS NULL",
        params![sid, now],
    )?;
    events::announce(c, RevocationEvent::Session(sid))
}

/// Revokes every session of a user except `keep`, and logs the revocation.
pub(super) fn revoke_user_sessions(
    c: &Connection,
    user_id: Uuid,
    keep: Option<Uuid>,
) -> Result<RevocationEvent, StoreError> {
    let now = micros(Utc::now());
    c.execute(
        "UPDATE sessions SET revoked_at = ?3
         WHERE user_id = ?1 AND revoked_at IS NULL AND id IS NOT ?2",
        params![user_id, keep, now],
    )?;
    c.execute(
        "UPDATE refresh_tokens SET revoked_at = ?3
         WHERE user_id = ?1 AND revoked_at IS NULL AND token_family IS NOT ?2",
        params![user_id, keep, now],
    )?;
    events::announce(c, RevocationEvent::User(user_id))
}
