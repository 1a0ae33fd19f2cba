//! `db copy`: moves every persistent table from one store to another — how a single
//! instance on the embedded SQLite store moves to PostgreSQL when it needs a second one.

use clap::Subcommand;
use portcullis::store;

use super::runtime;

/// Database verbs.
#[derive(Subcommand)]
pub enum DbCommand {
    /// Copy every persistent table (users, sessions, audit, ACME…; not rate-limit counters)
    /// into an empty database, which is created and migrated first. Row counts are checked
    /// before the one commit: on any failure nothing is written. Stop the source's gateway
    /// first; tokens issued before the move keep working with the same keys directory.
    Copy {
        /// Source: sqlite://PATH or postgres://…
        #[arg(long)]
        from: String,
        /// Target: sqlite://PATH or postgres://… (must hold no data)
        #[arg(long)]
        to: String,
    },
}

/// Runs a db verb.
pub fn run(command: DbCommand) -> anyhow::Result<()> {
    match command {
        DbCommand::Copy { from, to } => {
            let (from, to) = (from_cwd(&from), from_cwd(&to));
            let report = runtime()?.block_on(store::copy_database(&from, &to))?;
            let mut total = 0;
            for (table, rows) in &report.tables {
                println!("{table}: {rows} rows");
                total += rows;
            }
            println!("copied {total} rows; row counts verified");
            Ok(())
        }
    }
}

/// A relative `sqlite://PATH` typed on the command line is relative to the working directory.
fn from_cwd(url: &str) -> String {
    match url.strip_prefix("sqlite://") {
        Some(p) if !p.is_empty() && !std::path::Path::new(p).is_absolute() => {
            match std::path::absolute(p) {
                Ok(abs) => format!("sqlite://{}", abs.display()),
                Err(_) => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
