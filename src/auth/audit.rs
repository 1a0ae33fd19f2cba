//! Audit events: built by the use-cases, logged (target `audit`) and stored.
//!
//! Where the use-case changes state in a transaction of its own (logout, logout-all, session
//! revocation, refresh reuse, password change, admin updates), the event is inserted in that
//! transaction: the change and its record commit together. Elsewhere (register, logins,
//! lockout, OIDC, key generation) the write is best-effort after the fact: a failed insert is a
//! warning, never a failed request — refusing a login because the audit table is unreachable
//! would be worse than a gap in the trail, and the log line is written either way.

use std::net::IpAddr;

use uuid::Uuid;

use super::ClientInfo;
use crate::model::{AuditEvent, AuditKind};
use crate::store::Store;

/// An event about `user_id` done by `actor_id` from `client`.
pub fn event(
    kind: AuditKind,
    user_id: Option<Uuid>,
    actor_id: Option<Uuid>,
    client: &ClientInfo,
    detail: serde_json::Value,
) -> AuditEvent {
    AuditEvent {
        kind,
        user_id,
        actor_id,
        client_ip: client.ip,
        user_agent: client.user_agent.clone(),
        request_id: client.request_id.clone(),
        detail,
    }
}

/// Logs the event (target `audit`) and stores it; a storage failure is a warning only.
pub async fn record(store: &Store, event: AuditEvent) {
    log(&event);
    if let Err(e) = store.record_audit(&event).await {
        tracing::warn!(error = %e, event = event.kind.as_str(), "audit event not stored");
    }
}

/// Writes the event's log line (target `audit`); for events stored in the transaction of
/// their change, called once that transaction has committed.
pub fn log(e: &AuditEvent) {
    tracing::info!(
        target: "audit",
        event = e.kind.as_str(),
        user_id = e.user_id.map(display),
        actor_id = e.actor_id.map(display),
        client_ip = e.client_ip.map(|ip: IpAddr| display(ip)),
        user_agent = e.user_agent.as_deref(),
        request_id = e.request_id.as_deref(),
        detail = %e.detail,
        "audit"
    );
}

/// How often old events are swept.
pub const RETENTION_SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Deletes events older than `retention_days()` now and then every hour, forever. The days
/// are read on each sweep so a reloaded `audit.retention_days` applies without a restart.
pub async fn run_retention(store: Store, retention_days: impl Fn() -> u32) {
    loop {
        let days = retention_days();
        let cutoff = chrono::Utc::now() - chrono::Duration::days(days.into());
        match store.delete_audit_before(cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                deleted = n,
                retention_days = days,
                "old audit events deleted"
            ),
            Err(e) => tracing::warn!(error = %e, "audit retention sweep failed"),
        }
        tokio::time::sleep(RETENTION_SWEEP_EVERY).await;
    }
}
