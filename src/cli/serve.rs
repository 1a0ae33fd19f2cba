//! `serve`, `migrate` and `check-config`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use portcullis::config::Config;
use portcullis::store;

use super::daemon::{self, Ready};
use super::runtime;

/// `check-config`: the config already loaded and validated; say so.
pub fn check_config(config: &Config, path: &Path) -> anyhow::Result<()> {
    for warning in config.warnings() {
        eprintln!("warning: {warning}");
    }
    println!(
        "{}: valid ({} routes, {} upstreams)",
        path.display(),
        config.routes.len(),
        config.upstreams.len()
    );
    Ok(())
}

/// `migrate` (`verbose`: prints each step for the operator at the terminal) or the
/// auto-migration before `serve` (the steps are log lines, so that under `format = "json"`
/// every line `serve` writes is JSON).
pub fn migrate(config: &Config, verbose: bool) -> anyhow::Result<()> {
    let url = config.database.url.clone();
    runtime()?.block_on(async move {
        if store::ensure_database(&url).await? {
            if verbose {
                println!("created database");
            } else {
                tracing::info!("created the database named in database.url");
            }
        }
        let applied = store::migrate(&url).await?;
        if verbose && applied.is_empty() {
            println!("no pending migrations");
        }
        for name in applied {
            if verbose {
                println!("applied {name}");
            } else {
                tracing::info!(migration = %name, "applied migration");
            }
        }
        Ok::<_, anyhow::Error>(())
    })
}

/// `serve [--upgrade] [--daemon]`. `ready` is set in a daemon: it is told once the listeners
/// accept, so the process that started the daemon can exit 0. It is taken only once the server
/// is built: on an error before that it stays with the caller, which prints the error and only
/// then drops it, so the starting process exits after the daemon's error reached stderr.
pub fn serve(
    config: Config,
    path: &Path,
    upgrade: bool,
    ready: &mut Option<Ready>,
) -> anyhow::Result<()> {
    if config.database.auto_migrate {
        // Migrations run on their own short-lived runtime, before Pingora owns the process.
        migrate(&config, false).context("auto-migration failed")?;
    }
    daemon::prepare_upgrade_dir(&config.server.upgrade_sock)?;
    let pid_file = config.server.pid_file.clone().map(PathBuf::from);
    let mut listeners = vec![config.server.listen, config.server.admin_listen];
    listeners.extend(config.server.tls.as_ref().map(|tls| tls.listen));
    let mut server = portcullis::build_server(config, path, portcullis::StartMode { upgrade })?;
    if let Some(pid_file) = &pid_file {
        daemon::write_pid_file(pid_file)?;
    }
    if let Some(ready) = ready.take() {
        let ready = Mutex::new(Some(ready));
        server.add_service(portcullis::proxy::services::task(
            "daemon readiness",
            move || {
                let ready = ready.lock().ok().and_then(|mut r| r.take());
                let listeners = listeners.clone();
                async move {
                    if let Some(ready) = ready {
                        daemon::notify_when_listening(listeners, ready).await;
                    }
                }
            },
        ));
    }
    tracing::info!("portcullis starting");
    // `run` (not `run_forever`, which exits the process) so main's log guard flushes.
    server.run(pingora::server::RunArgs::default());
    if let Some(pid_file) = &pid_file {
        daemon::remove_pid_file(pid_file);
    }
    Ok(())
}
