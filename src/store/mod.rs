//! Everything that keeps state: users, sessions and refresh tokens, OIDC, audit, ACME. One
//! interface ([`Store`]), two backends: PostgreSQL (`postgres/`: several instances, LISTEN/NOTIFY,
//! TLS, failover) and an embedded SQLite file (`sqlite/`: one instance, nothing to set up).
//! No other module touches SQL, tokio-postgres, deadpool or rusqlite.

mod copy;
pub mod postgres;
pub mod sqlite;
mod types;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

pub use copy::{CopyReport, copy_database};
pub use postgres::tls;
pub use types::{
    AdminUpdate, AdminUpdateOutcome, AuditQuery, NewSession, OidcLink, OidcState, RefreshOutcome,
    Resealed, RevocationEvent, StoredCert, StoredUser, Successor,
};

use crate::model::{AuditEvent, AuditRecord, Role, SessionInfo, SessionStatus, User};
use crate::secrets::KeyRing;

/// Log targets of the database drivers. At debug they log every statement's parameters —
/// password hashes, session secrets, refresh-token hashes — so the log setup caps these at
/// INFO whatever `RUST_LOG` asks for (`telemetry::may_log`).
pub const DRIVER_LOG_TARGETS: &[&str] = &["tokio_postgres", "postgres_protocol", "rusqlite"];

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

/// Which backend a `database.url` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// `postgres://…` or `postgresql://…`, as given.
    Postgres(String),
    /// `sqlite://PATH`: the database file (already resolved against the config's directory).
    Sqlite(std::path::PathBuf),
}

impl Location {
    /// Reads a URL; a relative SQLite path stays relative (the config loader resolves it).
    pub fn parse(url: &str) -> Result<Location, StoreError> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            let path = path.split('?').next().unwrap_or_default();
            if path.is_empty() {
                return Err(StoreError::BadUrl(
                    "sqlite:// needs a file path (sqlite://data/portcullis.db)".into(),
                ));
            }
            return Ok(Location::Sqlite(path.into()));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Location::Postgres(url.to_string()));
        }
        Err(StoreError::BadUrl(
            "expected postgres://… or sqlite://PATH".into(),
        ))
    }
}

/// Applies a revocation this instance just committed to its own caches, awaited before the
/// request that made it is answered: the announcement reaches every instance within
/// milliseconds, but "milliseconds" is long enough for the same client's next request to
/// this instance to be served from the stale cache entry.
pub type LocalRevocations =
    Arc<dyn Fn(RevocationEvent) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// What both backends share: the local revocation hook and the data key ring.
#[derive(Default)]
pub(crate) struct Shared {
    local_revocations: OnceLock<LocalRevocations>,
    secrets: OnceLock<crate::secrets::Secrets>,
}

impl Shared {
    /// Applies revocations a backend has just committed.
    async fn committed(&self, revoked: impl IntoIterator<Item = RevocationEvent>) {
        if let Some(apply) = self.local_revocations.get() {
            for event in revoked {
                apply(event).await;
            }
        }
    }

    /// The key ring now (`Secret` error without one: such a value can be neither sealed nor
    /// opened).
    fn ring(&self) -> Result<Arc<KeyRing>, StoreError> {
        self.secrets
            .get()
            .map(|s| s.ring())
            .ok_or_else(|| StoreError::Secret("no secrets key ring is loaded".into()))
    }

    /// Opens a stored secret; a value stored before sealing existed is returned as it is.
    fn open_secret(&self, stored: String, what: &str) -> Result<String, StoreError> {
        if !KeyRing::is_sealed(&stored) {
            return Ok(stored);
        }
        let plain = self
            .ring()?
            .open(&stored)
            .map_err(|e| StoreError::Secret(format!("{what}: {e}")))?;
        String::from_utf8(plain).map_err(|_| StoreError::Secret(format!("{what}: not text")))
    }

    /// A stored secret re-sealed under the ring's current key (`secrets rotate`): `None` when
    /// it already is; counted in `done` either way. A value no key opens is an error naming
    /// `what`.
    fn reseal(
        &self,
        stored: String,
        what: &str,
        done: &mut Resealed,
    ) -> Result<Option<String>, StoreError> {
        if self.ring()?.is_current(&stored) {
            done.current += 1;
            return Ok(None);
        }
        let plain = self.open_secret(stored, what)?;
        let sealed = self.seal_secret(&plain)?;
        done.resealed += 1;
        Ok(Some(sealed))
    }

    /// Seals a secret under the ring's current key.
    fn seal_secret(&self, plain: &str) -> Result<String, StoreError> {
        self.ring()?
            .seal(plain.as_bytes())
            .map_err(|e| StoreError::Secret(e.to_string()))
    }
}

/// Handle to the database; cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    url: String,
    shared: Arc<Shared>,
}

#[derive(Clone)]
enum Backend {
    Postgres(postgres::Postgres),
    Sqlite(sqlite::Sqlite),
}

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

    /// How long one statement may run before the database gives up on it
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
    /// `Retry-After`). A statement may run at most `statement_timeout` (zero: no bound): on
    /// PostgreSQL the server cancels it, on SQLite it is how long a writer waits for the lock.
    pub fn with_timeouts(
        url: &str,
        pool_size: usize,
        acquire_timeout: Duration,
        statement_timeout: Duration,
    ) -> Result<Store, StoreError> {
        let shared = Arc::new(Shared::default());
        let backend = match Location::parse(url)? {
            Location::Postgres(url) => Backend::Postgres(postgres::Postgres::new(
                &url,
                pool_size,
                acquire_timeout,
                statement_timeout,
                shared.clone(),
            )?),
            Location::Sqlite(path) => Backend::Sqlite(sqlite::Sqlite::new(
                &path,
                pool_size,
                acquire_timeout,
                statement_timeout,
                shared.clone(),
            )?),
        };
        Ok(Store {
            backend,
            url: url.to_string(),
            shared,
        })
    }

    /// Gives the store the data key ring for the secrets it keeps; the first call wins.
    pub fn use_secrets(&self, secrets: crate::secrets::Secrets) {
        let _ = self.shared.secrets.set(secrets);
    }

    /// Sets what a revocation committed through this store (and its clones) does locally;
    /// the first call wins (one gateway, one cache).
    pub fn on_local_revocation(&self, apply: LocalRevocations) {
        let _ = self.shared.local_revocations.set(apply);
    }

    /// The URL this store connects to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Makes this process the database's one gateway when the store is the embedded one (see
    /// `sqlite::Sqlite::claim_instance`); PostgreSQL serves any number of instances.
    pub fn claim_instance(&self, upgrade: bool) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Postgres(_) => Ok(()),
            Backend::Sqlite(b) => b.claim_instance(upgrade),
        }
    }

    /// Current pool usage.
    pub fn pool_usage(&self) -> PoolUsage {
        match &self.backend {
            Backend::Postgres(b) => b.pool_usage(),
            Backend::Sqlite(b) => b.pool_usage(),
        }
    }

    /// Delivers every revocation committed by any process on this database to `on_event`,
    /// forever: PostgreSQL's LISTEN connection, or the SQLite file's revocation log. Each
    /// (re)start of the feed delivers `All` first, since what happened before it is unknown.
    pub async fn watch_revocations<F>(&self, on_event: F)
    where
        F: Fn(RevocationEvent) + Send + Sync,
    {
        match &self.backend {
            Backend::Postgres(_) => {
                postgres::listen_for_revocations(self.url.clone(), on_event).await
            }
            Backend::Sqlite(b) => b.watch_revocations(on_event).await,
        }
    }
}

/// Declares the store's operations once: each becomes a method of [`Store`] that runs it on
/// the backend in use. Both backends must implement every one (the compiler checks it).
macro_rules! interface {
    ($( $(#[$meta:meta])* async fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty; )*) => {
        impl Store {
            $(
                $(#[$meta])*
                pub async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    match &self.backend {
                        Backend::Postgres(b) => b.$name($($arg),*).await,
                        Backend::Sqlite(b) => b.$name($($arg),*).await,
                    }
                }
            )*
        }
    };
}

interface! {
    /// Round trip to the database, for /readyz.
    async fn ping(&self) -> Result<(), StoreError>;

    // Accounts.

    /// Inserts a user; `StoreError::Unique("users_email_canonical_key")` when the canonical
    /// email is taken.
    async fn create_user(
        &self,
        email: &str,
        email_canonical: &str,
        hashed_password: Option<&str>,
        role: Role,
    ) -> Result<User, StoreError>;
    /// Looks a user up by canonical email, with the password hash.
    async fn find_user_by_email(&self, email_canonical: &str) -> Result<Option<StoredUser>, StoreError>;
    /// Looks a user up by id, with the password hash.
    async fn find_user(&self, id: Uuid) -> Result<Option<StoredUser>, StoreError>;
    /// Replaces a password hash (re-hash on login after a parameter change).
    async fn set_password_hash(&self, id: Uuid, hash: &str) -> Result<(), StoreError>;
    /// Changes the password, revokes every session but `keep` and records `audit`, in one
    /// transaction.
    async fn change_password(&self, id: Uuid, hash: &str, keep: Uuid, audit: &AuditEvent) -> Result<(), StoreError>;
    /// One page of users ordered by (created_at, id), starting after `after`.
    async fn list_users(&self, limit: i64, after: Option<(DateTime<Utc>, Uuid)>) -> Result<Vec<User>, StoreError>;
    /// Applies an admin change. A role change or deactivation revokes all the user's sessions
    /// (and announces it); demoting or deactivating the last active admin is refused, also
    /// when two such changes race. `audit` names the events of the change from the row before
    /// and after; they are recorded in the same transaction and returned with the user.
    async fn admin_update_user(
        &self,
        id: Uuid,
        update: AdminUpdate,
        audit: impl FnOnce(&User, &User) -> Vec<AuditEvent> + Send,
    ) -> Result<AdminUpdateOutcome, StoreError>;
    /// Whether a user exists (for 404s on admin endpoints).
    async fn user_exists(&self, id: Uuid) -> Result<bool, StoreError>;
    /// Failed logins for the account in the current minute, across all instances.
    async fn login_failures(&self, email_canonical: &str) -> Result<i32, StoreError>;
    /// Counts one failed login for the account in the current minute and drops old windows.
    async fn record_login_failure(&self, email_canonical: &str) -> Result<(), StoreError>;

    // Sessions (token families) and refresh tokens.

    /// Opens a session with its first refresh token; returns the session id.
    async fn create_session(&self, new: NewSession<'_>) -> Result<Uuid, StoreError>;
    /// Rotates the refresh token whose hash is `token_hash`. Concurrent presentations are
    /// serialized: the first rotates, the others fall in the grace window and get the same
    /// successor (`derive` is deterministic per session). A detected reuse revokes the
    /// session and is recorded as `on_reuse(user, session)` in the revoking transaction.
    async fn refresh(
        &self,
        token_hash: &[u8],
        grace_secs: u64,
        derive: impl Fn(&[u8]) -> Successor + Send,
        on_reuse: impl Fn(Uuid, Uuid) -> AuditEvent + Send,
    ) -> Result<RefreshOutcome, StoreError>;
    /// Revokes the session a refresh token belongs to (logout), recording
    /// `audit(user, session)` in the same transaction; unknown tokens are ignored (`None`).
    async fn revoke_session_of_token(
        &self,
        token_hash: &[u8],
        audit: impl Fn(Uuid, Uuid) -> AuditEvent + Send,
    ) -> Result<Option<AuditEvent>, StoreError>;
    /// Revokes one live session of `user_id` and records `audit` in the same transaction;
    /// `false` (and nothing recorded) when it has no such live session.
    async fn revoke_user_session(&self, user_id: Uuid, sid: Uuid, audit: &AuditEvent) -> Result<bool, StoreError>;
    /// Revokes a live session whoever owns it (operator action), announces it and records
    /// `audit(owner)` in the same transaction; `false` when there is no such live session.
    async fn revoke_session_by_id(
        &self,
        sid: Uuid,
        audit: impl FnOnce(Uuid) -> AuditEvent + Send,
    ) -> Result<bool, StoreError>;
    /// Revokes every session of a user (logout-all, admin action) and records `audit` in the
    /// same transaction.
    async fn revoke_all_sessions(&self, user_id: Uuid, audit: &AuditEvent) -> Result<(), StoreError>;
    /// Live sessions of a user, newest first.
    async fn list_sessions(&self, user_id: Uuid) -> Result<Vec<SessionInfo>, StoreError>;
    /// The revocation status of a session: one indexed lookup (the proxy's cache miss).
    async fn session_status(&self, sid: Uuid) -> Result<Option<SessionStatus>, StoreError>;

    // OIDC login.

    /// Stores a pending authorization request (and drops those older than 10 minutes).
    async fn save_oidc_state(&self, state_hash: &[u8], state: &OidcState) -> Result<(), StoreError>;
    /// Takes (deletes) a pending request; `None` when unknown, expired or for another
    /// provider.
    async fn take_oidc_state(&self, state_hash: &[u8], provider: &str) -> Result<Option<OidcState>, StoreError>;
    /// Finds or links the account of a provider identity; `None` when it is unknown and the
    /// provider gave no email to link or create it by.
    async fn link_oidc_identity(
        &self,
        provider: &str,
        subject: &str,
        email: Option<(&str, &str)>,
        email_verified: bool,
    ) -> Result<Option<OidcLink>, StoreError>;
    /// Stores a one-time login code (hashed) for `user_id`, valid `ttl_secs`.
    async fn save_login_code(&self, code_hash: &[u8], user_id: Uuid, ttl_secs: i64) -> Result<(), StoreError>;
    /// Takes (deletes) a login code; the user when it was valid.
    async fn take_login_code(&self, code_hash: &[u8]) -> Result<Option<User>, StoreError>;

    // Audit trail.

    /// Records one audit event on its own.
    async fn record_audit(&self, e: &AuditEvent) -> Result<(), StoreError>;
    /// Events matching `q`, newest first.
    async fn list_audit(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError>;
    /// Deletes events older than `cutoff` (retention); returns how many.
    async fn delete_audit_before(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError>;

    // ACME.

    /// The stored account credentials for a CA directory, opened.
    async fn acme_account(&self, directory_url: &str) -> Result<Option<String>, StoreError>;
    /// Stores account credentials, sealed; the first writer wins.
    async fn save_acme_account(&self, directory_url: &str, credentials: &str) -> Result<(), StoreError>;
    /// Stores an HTTP-01 challenge answer any instance can serve.
    async fn put_acme_challenge(&self, token: &str, key_authorization: &str, ttl_secs: i64) -> Result<(), StoreError>;
    /// The answer to a live challenge.
    async fn acme_challenge(&self, token: &str) -> Result<Option<String>, StoreError>;
    /// Drops the given challenges and every expired one.
    async fn clear_acme_challenges(&self, tokens: &[String]) -> Result<(), StoreError>;
    /// The stored certificate for a name set, its key opened.
    async fn acme_certificate(&self, domains: &str) -> Result<Option<StoredCert>, StoreError>;
    /// `(updated_at, not_after)` of the stored certificate: polled cheaply, the key is opened
    /// only when it changes.
    async fn acme_certificate_marker(&self, domains: &str) -> Result<Option<(DateTime<Utc>, DateTime<Utc>)>, StoreError>;
    /// Re-seals every stored secret under the ring's current key, in one transaction: nothing
    /// is written if one value does not open.
    async fn reseal_secrets(&self) -> Result<Resealed, StoreError>;
    /// Stores (replaces) the certificate for a name set, its key sealed.
    async fn save_acme_certificate(&self, domains: &str, cert: &StoredCert) -> Result<(), StoreError>;
    /// Takes the ordering lease for a name set for `secs`; `false` while another holds it.
    async fn take_acme_lease(&self, domains: &str, secs: i64) -> Result<bool, StoreError>;
    /// Gives the lease back.
    async fn release_acme_lease(&self, domains: &str) -> Result<(), StoreError>;
}

/// Creates the database named in `url` when it does not exist yet (a SQLite file and its
/// directory); `true` when it did not.
pub async fn ensure_database(url: &str) -> Result<bool, StoreError> {
    match Location::parse(url)? {
        Location::Postgres(url) => postgres::ensure_database(&url).await,
        Location::Sqlite(path) => sqlite::ensure_database(&path),
    }
}

/// Applies pending migrations and returns the names of those applied now.
pub async fn migrate(url: &str) -> Result<Vec<String>, StoreError> {
    match Location::parse(url)? {
        Location::Postgres(url) => postgres::migrate(&url).await,
        Location::Sqlite(path) => sqlite::migrate(&path).await,
    }
}
