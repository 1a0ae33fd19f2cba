//! Embedded migrations for the SQLite file (`migrations/sqlite/`, refinery), named like their
//! PostgreSQL counterparts, and the file's creation.

use std::path::Path;

use super::configure;
use crate::store::StoreError;

mod embedded {
    refinery::embed_migrations!("migrations/sqlite");
}

/// Creates the database file and its directory when missing, in WAL mode; `true` when it did
/// not exist.
pub fn ensure_database(path: &Path) -> Result<bool, StoreError> {
    if path.exists() {
        return Ok(false);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
        })?;
    }
    let conn = rusqlite::Connection::open(path)?;
    configure(&conn, crate::store::Store::DEFAULT_STATEMENT_TIMEOUT)?;
    Ok(true)
}

/// Applies pending migrations in one transaction and returns the names of those applied now.
pub async fn migrate(path: &Path) -> Result<Vec<String>, StoreError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        ensure_database(&path)?;
        let mut conn = rusqlite::Connection::open(&path)?;
        configure(&conn, crate::store::Store::DEFAULT_STATEMENT_TIMEOUT)?;
        let report = embedded::migrations::runner()
            .set_grouped(true)
            .run(&mut conn)
            .map_err(|e| StoreError::Db(format!("migration failed: {e}")))?;
        Ok(report
            .applied_migrations()
            .iter()
            .map(|m| format!("V{}__{}", m.version(), m.name()))
            .collect())
    })
    .await
    .map_err(|e| StoreError::Db(format!("migration task: {e}")))?
}
