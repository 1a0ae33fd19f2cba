//! The embedded store: one SQLite file (WAL, `synchronous = FULL`), a small pool of
//! connections driven on Tokio's blocking threads, and a revocation log that stands in for
//! LISTEN/NOTIFY between the gateway and CLI verbs on the same file. One gateway instance
//! per file: `serve` holds an exclusive lock beside it (more instances need PostgreSQL).

mod acme;
mod audit;
mod events;
mod migrate;
mod oidc;
mod sessions;
mod users;

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_sqlite::{Hook, HookError, Manager, Object, Pool, Runtime, Timeouts};
use rusqlite::{Connection, ErrorCode};

pub use migrate::{ensure_database, migrate};

use super::{PoolUsage, RevocationEvent, Shared, StoreError};

/// The SQLite backend; cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct Sqlite {
    pool: Pool,
    path: PathBuf,
    shared: Arc<Shared>,
    /// The single-instance lock, once `serve` holds it (kept open for the process's life).
    instance: Arc<OnceLock<std::fs::File>>,
    /// Writers of this process queue here, in order, before they take the file's write lock.
    /// SQLite's own busy handler makes a waiting writer sleep and poll (up to 100 ms a nap),
    /// which under concurrent refreshes turned a 5 ms p50 into a 780 ms p99; this queue hands
    /// the lock on at once. The busy timeout still covers other processes (CLI verbs).
    writers: Arc<tokio::sync::Mutex<()>>,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match &e {
            rusqlite::Error::SqliteFailure(code, msg) => match code.code {
                ErrorCode::ConstraintViolation
                    if code.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                        || code.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
                {
                    StoreError::Unique(constraint_name(msg.as_deref().unwrap_or_default()))
                }
                ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
                    StoreError::Unavailable("the database stayed locked by another writer".into())
                }
                ErrorCode::CannotOpen
                | ErrorCode::SystemIoFailure
                | ErrorCode::DiskFull
                | ErrorCode::PermissionDenied
                | ErrorCode::ReadOnly
                | ErrorCode::OutOfMemory => StoreError::Unavailable(e.to_string()),
                _ => StoreError::Db(e.to_string()),
            },
            _ => StoreError::Db(e.to_string()),
        }
    }
}

/// The PostgreSQL name of the unique constraint SQLite reports as `table.col[, table.col]`
/// (`users.email_canonical` → `users_email_canonical_key`), so callers match one name.
fn constraint_name(msg: &str) -> String {
    let cols = msg.rsplit(": ").next().unwrap_or_default();
    let mut parts = cols.split(", ").filter_map(|c| c.split_once('.'));
    match parts.next() {
        Some((table, col)) => {
            let rest: Vec<&str> = parts.map(|(_, c)| c).collect();
            let mut name = format!("{table}_{col}");
            for c in rest {
                name.push('_');
                name.push_str(c);
            }
            name + "_key"
        }
        None => msg.to_string(),
    }
}

impl From<deadpool_sqlite::PoolError> for StoreError {
    fn from(e: deadpool_sqlite::PoolError) -> Self {
        match e {
            deadpool_sqlite::PoolError::Backend(e) => e.into(),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

impl From<deadpool_sqlite::InteractError> for StoreError {
    fn from(e: deadpool_sqlite::InteractError) -> Self {
        StoreError::Db(format!("database call aborted: {e}"))
    }
}

/// A time as stored: microseconds since the Unix epoch (ordered, compared and indexed as
/// plain integers).
pub(crate) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// The inverse of [`micros`].
pub(crate) fn time(us: i64) -> rusqlite::Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(us).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Integer,
            "timestamp out of range".into(),
        )
    })
}

/// The settings every connection runs with. `busy_timeout` makes a writer wait for the
/// lock (concurrent logins, a CLI verb beside the gateway) instead of failing with
/// "database is locked"; `synchronous = FULL` makes a commit durable before it returns, so
/// an answered write survives a crash of the process or the machine.
fn configure(conn: &Connection, busy: Duration) -> rusqlite::Result<()> {
    conn.busy_timeout(busy)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;",
    )
}

impl Sqlite {
    /// Builds the pool without opening the file (see [`super::Store::with_timeouts`]);
    /// `statement_timeout` bounds how long a write waits for the file's lock (zero: 10 s).
    pub(super) fn new(
        path: &Path,
        pool_size: usize,
        acquire_timeout: Duration,
        statement_timeout: Duration,
        shared: Arc<Shared>,
    ) -> Result<Sqlite, StoreError> {
        let busy = if statement_timeout.is_zero() {
            super::Store::DEFAULT_STATEMENT_TIMEOUT
        } else {
            statement_timeout
        };
        let config = deadpool_sqlite::Config::new(path);
        let pool = Pool::builder(Manager::from_config(&config, Runtime::Tokio1))
            .max_size(pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .timeouts(Timeouts {
                wait: Some(acquire_timeout),
                create: Some(Duration::from_secs(2)),
                recycle: Some(Duration::from_secs(2)),
            })
            .post_create(Hook::async_fn(move |conn, _| {
                Box::pin(async move {
                    conn.interact(move |c| configure(c, busy))
                        .await
                        .map_err(|e| HookError::message(e.to_string()))?
                        .map_err(HookError::Backend)
                })
            }))
            .build()
            .map_err(|e| StoreError::BadUrl(e.to_string()))?;
        Ok(Sqlite {
            pool,
            path: path.to_path_buf(),
            shared,
            instance: Arc::default(),
            writers: Arc::default(),
        })
    }

    /// Runs `f` on a pooled connection, on a blocking thread.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.pool.get().await?;
        conn.interact(f).await?
    }

    /// Runs `f`, which writes, on a pooled connection once this process's earlier writers
    /// are done (see `writers`).
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let _turn = self.writers.lock().await;
        self.run(f).await
    }

    /// Starts a write transaction, in this process's writer queue: `BEGIN IMMEDIATE` takes
    /// the file's write lock now, so two writers never deadlock upgrading a read.
    async fn begin(&self) -> Result<Tx, StoreError> {
        let turn = self.writers.clone().lock_owned().await;
        let conn = self.pool.get().await?;
        conn.interact(|c| c.execute_batch("BEGIN IMMEDIATE"))
            .await??;
        Ok(Tx {
            conn: Some(conn),
            shared: self.shared.clone(),
            _turn: turn,
        })
    }

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        self.run(|c| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }

    pub(super) fn pool_usage(&self) -> PoolUsage {
        let status = self.pool.status();
        let idle = status.available;
        PoolUsage {
            idle,
            in_use: status.size.saturating_sub(idle),
        }
    }

    /// Makes this process the file's one gateway: an exclusive lock on `<file>.lock`, held
    /// until the process exits. Another `serve` on the same file is refused, naming the
    /// holder's pid. With `upgrade` (a binary upgrade taking the listeners over), the lock is
    /// taken over as soon as the old instance exits; meanwhile both share the file, which
    /// SQLite allows.
    pub(super) fn claim_instance(&self, upgrade: bool) -> Result<(), StoreError> {
        let lock_path = lock_path(&self.path);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot open {}: {e}", lock_path.display()))
            })?;
        match file.try_lock() {
            Ok(()) => {
                record_pid(&mut file);
                let _ = self.instance.set(file);
                Ok(())
            }
            Err(std::fs::TryLockError::WouldBlock) if upgrade => {
                let slot = self.instance.clone();
                std::thread::spawn(move || {
                    if file.lock().is_ok() {
                        record_pid(&mut file);
                        tracing::info!("took the database's instance lock over");
                        let _ = slot.set(file);
                    }
                });
                Ok(())
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let by = if holder.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {holder})")
                };
                Err(StoreError::Unavailable(format!(
                    "{} is in use by another `portcullis serve`{by}: one SQLite file serves one \
                     instance; more than one instance needs PostgreSQL (copy the data over with \
                     `portcullis db copy`)",
                    self.path.display()
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Unavailable(format!(
                "cannot lock {}: {e}",
                lock_path.display()
            ))),
        }
    }
}

/// The lock file beside the database (SQLite's own locks live on the database file and its
/// WAL; this one only says which process serves it).
fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Writes our pid into the lock file we hold, for the message a second instance prints.
fn record_pid(file: &mut std::fs::File) {
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = write!(file, "{}", std::process::id());
    let _ = file.flush();
}

/// A write transaction held across awaits, so a backend method reads, decides in plain Rust
/// (callbacks included) and writes, as on PostgreSQL. Dropped before `commit` (an error, a
/// cancelled request), its connection is discarded rather than pooled: closing it rolls the
/// transaction back and releases the lock.
struct Tx {
    conn: Option<Object>,
    shared: Arc<Shared>,
    /// This process's writer turn, held until the transaction ends.
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl Tx {
    /// Runs one step of the transaction.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.as_ref().ok_or_else(finished)?;
        conn.interact(f).await?
    }

    /// Commits.
    async fn commit(mut self) -> Result<(), StoreError> {
        let conn = self.conn.take().ok_or_else(finished)?;
        let result = conn.interact(|c| c.execute_batch("COMMIT")).await;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                let _ = Object::take(conn);
                Err(e.into())
            }
            Err(e) => {
                let _ = Object::take(conn);
                Err(e.into())
            }
        }
    }

    /// Commits a transaction that revoked sessions, then applies `revoked` locally.
    async fn commit_revoking(
        self,
        revoked: impl IntoIterator<Item = RevocationEvent>,
    ) -> Result<(), StoreError> {
        let shared = self.shared.clone();
        self.commit().await?;
        shared.committed(revoked).await;
        Ok(())
    }
}

/// A step run on a transaction after its commit (cannot happen: `commit` takes it by value).
fn finished() -> StoreError {
    StoreError::Db("the transaction is already finished".into())
}

impl Drop for Tx {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(Object::take(conn));
        }
    }
}
