//! The PostgreSQL store: a deadpool of tokio-postgres connections, revocations announced with
//! NOTIFY in the transaction that makes them, and one LISTEN connection per instance.

mod acme;
mod audit;
mod listener;
mod migrate;
mod oidc;
mod sessions;
pub mod tls;
mod users;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};

pub use listener::listen_for_revocations;
pub(super) use migrate::connect_url as connect;
pub use migrate::{ensure_database, migrate};

use super::{PoolUsage, RevocationEvent, Shared, StoreError};

/// The notification channel every revocation is announced on.
pub const REVOCATION_CHANNEL: &str = "portcullis_revocation";

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        if let Some(db) = e.as_db_error() {
            if *db.code() == tokio_postgres::error::SqlState::UNIQUE_VIOLATION {
                return StoreError::Unique(db.constraint().unwrap_or_default().to_string());
            }
            let code = db.code().code();
            // Class 08 (connection), 53 (resources), 57 (operator intervention: shutdown).
            if code.starts_with("08") || code.starts_with("53") || code.starts_with("57") {
                return StoreError::Unavailable(db.message().to_string());
            }
            return StoreError::Db(format!("{}: {}", code, db.message()));
        }
        StoreError::Unavailable(e.to_string())
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

/// The PostgreSQL backend; cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct Postgres {
    pool: Pool,
    shared: Arc<Shared>,
}

impl Postgres {
    /// Builds the pool without connecting (see [`super::Store::with_timeouts`]). Every pooled
    /// connection runs with `statement_timeout` (zero: none), so a query stuck behind a lock
    /// or a sick plan gives its connection back as `Unavailable` instead of holding it until
    /// the database is fixed.
    pub(super) fn new(
        url: &str,
        pool_size: usize,
        acquire_timeout: Duration,
        statement_timeout: Duration,
        shared: Arc<Shared>,
    ) -> Result<Postgres, StoreError> {
        let target = tls::target(url)?;
        let mut pg = target.config;
        if !statement_timeout.is_zero() {
            let ours = format!("-c statement_timeout={}", statement_timeout.as_millis());
            let options = match pg.get_options() {
                Some(theirs) if !theirs.is_empty() => format!("{theirs} {ours}"),
                _ => ours,
            };
            pg.options(&options);
        }
        let manager = Manager::from_config(
            pg,
            target.tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .runtime(Runtime::Tokio1)
            .timeouts(Timeouts {
                wait: Some(acquire_timeout),
                create: Some(Duration::from_secs(2)),
                recycle: Some(Duration::from_secs(2)),
            })
            .build()
            .map_err(|e| StoreError::BadUrl(e.to_string()))?;
        Ok(Postgres { pool, shared })
    }

    /// Commits a transaction that revoked sessions, then applies `revoked` locally.
    async fn commit_revoking(
        &self,
        tx: deadpool_postgres::Transaction<'_>,
        revoked: impl IntoIterator<Item = RevocationEvent>,
    ) -> Result<(), StoreError> {
        tx.commit().await?;
        self.shared.committed(revoked).await;
        Ok(())
    }

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }

    pub(super) fn pool_usage(&self) -> PoolUsage {
        let status = self.pool.status();
        let idle = status.available;
        PoolUsage {
            idle,
            in_use: status.size.saturating_sub(idle),
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        Ok(self.pool.get().await?)
    }
}

/// Announces a revocation inside the transaction that made it, so listeners never see a
/// notification for an uncommitted change.
async fn notify(
    tx: &deadpool_postgres::Transaction<'_>,
    event: RevocationEvent,
) -> Result<RevocationEvent, StoreError> {
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&REVOCATION_CHANNEL, &event.to_payload()],
    )
    .await?;
    Ok(event)
}
