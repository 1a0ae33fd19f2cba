//! The audit trail on SQLite: inserts, the newest-first keyset query, the retention sweep.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};

use super::{Sqlite, micros, time};
use crate::model::{AuditEvent, AuditRecord};
use crate::store::{AuditQuery, StoreError};

/// Records an event inside the caller's transaction.
pub(super) fn insert(c: &Connection, e: &AuditEvent) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO audit_events
           (time, event, user_id, actor_id, client_ip, user_agent, request_id, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        micros(Utc::now()),
        e.kind.as_str(),
        e.user_id,
        e.actor_id,
        e.client_ip.map(|ip| ip.to_string()),
        e.user_agent,
        e.request_id,
        e.detail,
    ])?;
    Ok(())
}

impl Sqlite {
    pub(in crate::store) async fn record_audit(&self, e: &AuditEvent) -> Result<(), StoreError> {
        let e = e.clone();
        self.write(move |c| insert(c, &e)).await
    }

    pub(in crate::store) async fn list_audit(
        &self,
        q: &AuditQuery,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let q = q.clone();
        self.run(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT a.id, a.time, a.event, a.user_id, a.actor_id, a.client_ip, a.user_agent,
                        a.request_id, a.detail
                 FROM audit_events a
                 WHERE (?1 IS NULL OR a.user_id = ?1)
                   AND (?2 IS NULL
                        OR a.user_id = (SELECT id FROM users WHERE email_canonical = ?2))
                   AND (?3 IS NULL OR a.event = ?3)
                   AND (?4 IS NULL OR a.time >= ?4)
                   AND (?5 IS NULL OR a.id < ?5)
                 ORDER BY a.id DESC
                 LIMIT ?6",
            )?;
            let rows = stmt
                .query_map(
                    params![
                        q.user_id,
                        q.email_canonical,
                        q.event,
                        q.since.map(micros),
                        q.before_id,
                        q.limit
                    ],
                    |r| {
                        Ok(AuditRecord {
                            id: r.get(0)?,
                            time: time(r.get(1)?)?,
                            event: r.get(2)?,
                            user_id: r.get(3)?,
                            actor_id: r.get(4)?,
                            client_ip: r.get(5)?,
                            user_agent: r.get(6)?,
                            request_id: r.get(7)?,
                            detail: r.get(8)?,
                        })
                    },
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    pub(in crate::store) async fn delete_audit_before(
        &self,
        cutoff: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.write(move |c| {
            Ok(c.execute("DELETE FROM audit_events WHERE time < ?1", [micros(cutoff)])? as u64)
        })
        .await
    }
}
