//! The verbs of the `portcullis` binary, one file per verb group. Each calls the library
//! code the server runs (`access::` for routes, `auth::` use-cases for users and sessions);
//! none holds SQL or a rule of its own.

pub mod audit;
pub mod daemon;
pub mod db;
pub mod keys;
pub mod routes;
pub mod secrets;
pub mod serve;
pub mod sessions;
pub mod user;

use anyhow::Context;
use portcullis::auth::AuthError;
use portcullis::config::Config;
use portcullis::store::Store;

/// The small runtime the verbs run on (the server builds its own under Pingora): one for the
/// process, never dropped, so a store a verb drops after its last call still finds the runtime
/// its pooled connections close on (see [`enter_runtime`]).
pub fn runtime() -> anyhow::Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")?;
    Ok(RUNTIME.get_or_init(|| rt))
}

/// Makes the verbs' runtime current for the rest of `main` (not for `serve`: Pingora starts
/// runtimes of its own on this thread).
pub fn enter_runtime() -> anyhow::Result<tokio::runtime::EnterGuard<'static>> {
    Ok(runtime()?.enter())
}

/// A store for one verb: two connections are plenty.
pub fn store(config: &Config) -> anyhow::Result<Store> {
    Ok(Store::new(&config.database.url, 2)?)
}

/// An auth use-case error as one operator sentence.
pub fn auth_error(e: AuthError) -> anyhow::Error {
    match e {
        AuthError::Unavailable => anyhow::anyhow!("the database is unreachable"),
        AuthError::Conflict(m) if m.contains("no active admin") => anyhow::anyhow!(
            "refused: this is the last active admin; promote or activate another admin first"
        ),
        other => anyhow::anyhow!("{other}"),
    }
}
