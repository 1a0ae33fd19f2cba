//! `serve`, `migrate` and `check-config`.

use std::path::Path;

use anyhow::Context;
use portcullis::config::Config;
use portcullis::store;

use super::runtime;

/// `check-config`: the config already loaded and validated; say so.
pub fn check_config(config: &Config, path: &Path) -> anyhow::Result<()> {
    println!(
        "{}: valid ({} routes, {} upstreams)",
        path.display(),
        config.routes.len(),
        config.upstreams.len()
    );
    Ok(())
}

/// `migrate` (verbose) or the auto-migration before `serve` (quiet when nothing applies).
pub fn migrate(config: &Config, verbose: bool) -> anyhow::Result<()> {
    let url = config.database.url.clone();
    runtime()?.block_on(async move {
        if store::ensure_database(&url).await? {
            println!("created database");
        }
        let applied = store::migrate(&url).await?;
        if verbose && applied.is_empty() {
            println!("no pending migrations");
        }
        for name in applied {
            println!("applied {name}");
        }
        Ok::<_, anyhow::Error>(())
    })
}

/// `serve [--upgrade]`.
pub fn serve(config: Config, path: &Path, upgrade: bool) -> anyhow::Result<()> {
    if config.database.auto_migrate {
        // Migrations run on their own short-lived runtime, before Pingora owns the process.
        migrate(&config, false).context("auto-migration failed")?;
    }
    let server = portcullis::build_server(config, path, portcullis::StartMode { upgrade })?;
    tracing::info!("portcullis starting");
    // `run` (not `run_forever`, which exits the process) so main's log guard flushes.
    server.run(pingora::server::RunArgs::default());
    Ok(())
}
