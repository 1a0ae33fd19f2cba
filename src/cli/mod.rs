//! The verbs of the `portcullis` binary, one file per verb group. Each calls the library
//! code the server runs (`access::` for routes, `auth::` use-cases for users and sessions);
//! none holds SQL or a rule of its own.

pub mod audit;
pub mod daemon;
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

/// A small runtime for one verb (the server builds its own under Pingora).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")
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
