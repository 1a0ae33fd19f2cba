//! The audit trail: inserts, the newest-first keyset query, and the retention sweep.

use chrono::{DateTime, Utc};
use tokio_postgres::Row;

use super::Postgres;
use crate::model::{AuditEvent, AuditRecord};
use crate::store::{AuditQuery, StoreError};

fn record_from_row(row: &Row) -> Result<AuditRecord, StoreError> {
    let ip: Option<std::net::IpAddr> = row.try_get("client_ip")?;
    Ok(AuditRecord {
        id: row.try_get("id")?,
        time: row.try_get("time")?,
        event: row.try_get("event")?,
        user_id: row.try_get("user_id")?,
        actor_id: row.try_get("actor_id")?,
        client_ip: ip.map(|i| i.to_string()),
        user_agent: row.try_get("user_agent")?,
        request_id: row.try_get("request_id")?,
        detail: row.try_get("detail")?,
    })
}

const INSERT: &str = "INSERT INTO audit_events
     (event, user_id, actor_id, client_ip, user_agent, request_id, detail)
 VALUES ($1, $2, $3, $4, $5, $6, $7)";

/// Records `e` inside the transaction of the change it describes: both or neither.
pub(super) async fn insert_in(
    tx: &deadpool_postgres::Transaction<'_>,
    e: &AuditEvent,
) -> Result<(), StoreError> {
    let kind = e.kind.as_str();
    tx.execute(
        INSERT,
        &[
            &kind,
            &e.user_id,
            &e.actor_id,
            &e.client_ip,
            &e.user_agent,
            &e.request_id,
            &e.detail,
        ],
    )
    .await?;
    Ok(())
}

impl Postgres {
    /// Records one event on its own (for actions without a transaction of their own).
    pub(in crate::store) async fn record_audit(&self, e: &AuditEvent) -> Result<(), StoreError> {
        let client = self.client().await?;
        let kind = e.kind.as_str();
        client
            .execute(
                INSERT,
                &[
                    &kind,
                    &e.user_id,
                    &e.actor_id,
                    &e.client_ip,
                    &e.user_agent,
                    &e.request_id,
                    &e.detail,
                ],
            )
            .await?;
        Ok(())
    }

    /// Events matching `q`, newest first (by id).
    pub(in crate::store) async fn list_audit(
        &self,
        q: &AuditQuery,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT a.id, a.time, a.event, a.user_id, a.actor_id, a.client_ip, a.user_agent,
                        a.request_id, a.detail
                 FROM audit_events a
                 WHERE ($1::uuid IS NULL OR a.user_id = $1)
                   AND ($2::text IS NULL
                        OR a.user_id = (SELECT id FROM users WHERE email_canonical = $2))
                   AND ($3::text IS NULL OR a.event = $3)
                   AND ($4::timestamptz IS NULL OR a.time >= $4)
                   AND ($5::bigint IS NULL OR a.id < $5)
                 ORDER BY a.id DESC
                 LIMIT $6",
                &[
                    &q.user_id,
                    &q.email_canonical,
                    &q.event,
                    &q.since,
                    &q.before_id,
                    &q.limit,
                ],
            )
            .await?;
        rows.iter().map(record_from_row).collect()
    }

    /// Deletes events recorded before `cutoff`; returns how many.
    pub(in crate::store) async fn delete_audit_before(
        &self,
        cutoff: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let client = self.client().await?;
        Ok(client
            .execute("DELETE FROM audit_events WHERE time < $1", &[&cutoff])
            .await?)
    }
}
