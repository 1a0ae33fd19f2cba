//! Embedded migrations (refinery): `migrations/V<n>__<name>.sql`, applied in order and
//! recorded in `refinery_schema_history`; re-running is a no-op.

use super::StoreError;
use super::tls::{self, Target};

mod embedded {
    refinery::embed_migrations!("migrations/postgres");
}

/// Serializes concurrent migrators (several instances starting at once).
const MIGRATION_LOCK_KEY: i64 = 0x706f_7274_6375_6c6c; // "portcull"

/// Opens one connection outside the pool (migrations, `db copy`).
pub(in crate::store) async fn connect_url(url: &str) -> Result<tokio_postgres::Client, StoreError> {
    connect(&tls::target(url)?).await
}

async fn connect(target: &Target) -> Result<tokio_postgres::Client, StoreError> {
    let (client, connection) = target.config.connect(target.tls.clone()).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "migration connection closed");
        }
    });
    Ok(client)
}

/// Creates the database named in `url` when it does not exist yet.
pub async fn ensure_database(url: &str) -> Result<bool, StoreError> {
    let target = tls::target(url)?;
    let name = target
        .config
        .get_dbname()
        .ok_or_else(|| StoreError::BadUrl("the URL names no database".into()))?
        .to_string();
    match connect(&target).await {
        Ok(_) => return Ok(false),
        Err(StoreError::Db(msg)) if msg.starts_with("3D000") => {}
        Err(e) => return Err(e),
    }
    let mut admin = target.clone();
    admin.config.dbname("postgres");
    let client = connect(&admin).await?;
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    match client
        .batch_execute(&format!("CREATE DATABASE {quoted}"))
        .await
    {
        Ok(()) => Ok(true),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// Applies pending migrations and returns the names of those applied now.
pub async fn migrate(url: &str) -> Result<Vec<String>, StoreError> {
    let mut client = connect(&tls::target(url)?).await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    let result = embedded::migrations::runner()
        .set_grouped(false)
        .run_async(&mut client)
        .await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    let report = result.map_err(|e| StoreError::Db(format!("migration failed: {e}")))?;
    Ok(report
        .applied_migrations()
        .iter()
        .map(|m| format!("V{}__{}", m.version(), m.name()))
        .collect())
}
