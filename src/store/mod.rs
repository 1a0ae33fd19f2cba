//! Everything that talks to PostgreSQL: the pool, migrations, users, sessions and refresh
//! tokens, and the LISTEN connection. No other module touches tokio-postgres or deadpool.

mod acme;
mod audit;
mod listener;
mod migrate;
mod oidc;
mod sessions;
pub mod tls;
mod users;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};

pub use acme::{Resealed, StoredCert};
pub use audit::AuditQuery;
pub use listener::{RevocationEvent, listen_for_revocations};
pub use migrate::{ensure_database, migrate};
pub use oidc::{OidcLink, OidcState};
pub use sessions::{NewSession, RefreshOutcome, Successor};
pub use users::{AdminUpdate, AdminUpdateOutcome, StoredUser};

/// Log targets of the database driver. At debug it logs every statement's parameters —
/// password hashes, session secrets, refresh-token hashes — so the log setup caps these at
/// INFO whatever `RUST_LOG` asks for (`telemetry::may_log`).
pub const DRIVER_LOG_TARGETS: &[&str] = &["tokio_postgres", "postgres_protocol"];

/// The notification channel every revocation is announced on.
pub const REVOCATION_CHANNEL: &str = "portcullis_revocation";

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached (callers answer 503, never 401).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A unique constraint was violated; carries the constraint name.
    #[error("unique constraint {0} violated")]
    Unique(String),
    /// The database URL is not valid.
    #[error("invalid database url: {0}")]
    BadUrl(String),
    /// Any other database error.
    #[error("database error: {0}")]
    Db(String),
    /// A stored secret could not be sealed or opened (no key ring, or no key opens it).
    #[error("stored secret: {0}")]
    Secret(String),
}

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

/// Handle to the database; cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    url: String,
    /// What this instance does with a revocation it committed itself (shared by clones).
    local_revocations: Arc<OnceLock<LocalRevocations>>,
    /// The data key ring sealing stored secrets (ACME keys), when loaded.
    secrets: Arc<OnceLock<crate::secrets::Secrets>>,
}

/// Applies a revocation this instance just committed to its own caches, awaited before the
/// request that made it is answered: its NOTIFY reaches every instance within milliseconds,
/// but "milliseconds" is long enough for the same client's next request to this instance to
/// be served from the stale cache entry.
pub type LocalRevocations =
    Arc<dyn Fn(RevocationEvent) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// Pool gauge values for /metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolUsage {
    /// Connections open and idle.
    pub idle: usize,
    /// Connections checked out.
    pub in_use: usize,
}

impl Store {
    /// How long `new` lets a caller wait for a pooled connection (`database.acquire_timeout_ms`
    /// overrides it for the gateway).
    pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

    /// How long one statement may run before PostgreSQL cancels it
    /// (`database.statement_timeout_ms` overrides it for the gateway).
    pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

    /// Builds the pool without connecting, with the default timeouts (for the CLI, which never
    /// queues behind itself).
    pub fn new(url: &str, pool_size: usize) -> Result<Store, StoreError> {
        Store::with_timeouts(
            url,
            pool_size,
            Self::DEFAULT_ACQUIRE_TIMEOUT,
            Self::DEFAULT_STATEMENT_TIMEOUT,
        )
    }

    /// Builds the pool without connecting: connections are opened lazily on the runtime that
    /// first uses them (Pingora owns its runtimes). A caller that finds every connection busy
    /// waits at most `acquire_timeout`, then gets `Unavailable` (answered 503 with
    /// `Retry-After`), so a saturated or stuck pool queues requests to a bound, not forever.
    /// Every pooled connection runs with `statement_timeout` (zero: none), so a query stuck
    /// behind a lock or a sick plan gives its connection back as `Unavailable` instead of
    /// holding it until the database is fixed.
    pub fn with_timeouts(
        url: &str,
        pool_size: usize,
        acquire_timeout: Duration,
        statement_timeout: Duration,
    ) -> Result<Store, StoreError> {
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
        Ok(Store {
            pool,
            url: url.to_string(),
            local_revocations: Arc::default(),
            secrets: Arc::default(),
        })
    }

    /// Gives the store the data key ring for the secrets it keeps; the first call wins.
    pub fn use_secrets(&self, secrets: crate::secrets::Secrets) {
        let _ = self.secrets.set(secrets);
    }

    /// The key ring now (`Secret` error without one: such a value can be neither sealed nor
    /// opened).
    fn ring(&self) -> Result<Arc<crate::secrets::KeyRing>, StoreError> {
        self.secrets
            .get()
            .map(|s| s.ring())
            .ok_or_else(|| StoreError::Secret("no secrets key ring is loaded".into()))
    }

    /// Sets what a revocation committed through this store (and its clones) does locally;
    /// the first call wins (one gateway, one cache).
    pub fn on_local_revocation(&self, apply: LocalRevocations) {
        let _ = self.local_revocations.set(apply);
    }

    /// Commits a transaction that revoked sessions, then applies `revoked` locally.
    async fn commit_revoking(
        &self,
        tx: deadpool_postgres::Transaction<'_>,
        revoked: impl IntoIterator<Item = RevocationEvent>,
    ) -> Result<(), StoreError> {
        tx.commit().await?;
        if let Some(apply) = self.local_revocations.get() {
            for event in revoked {
                apply(event).await;
            }
        }
        Ok(())
    }

    /// The URL this store connects to (for the LISTEN connection).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Round trip to the database, for /readyz.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// Current pool usage.
    pub fn pool_usage(&self) -> PoolUsage {
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
