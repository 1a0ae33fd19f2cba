//! Live reload: SIGHUP or a change of the config file builds new routes and upstream pools and
//! swaps them in atomically; SIGHUP also reloads the signing keys. An invalid file is logged
//! and the old config keeps serving; settings that only apply at start are reported.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::proxy::{Live, Shared};
use crate::tokens::TokenService;

/// Watches the config file and SIGHUP.
pub struct Reloader {
    path: PathBuf,
    shared: Arc<Shared>,
    tokens: Arc<TokenService>,
}

/// A cheap fingerprint of the file: content hash (mtime alone misses same-second edits).
fn fingerprint(path: &PathBuf) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let bytes = std::fs::read(path).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    Some(h.finish())
}

impl Reloader {
    /// A reloader for the config at `path`.
    pub fn new(path: PathBuf, shared: Arc<Shared>, tokens: Arc<TokenService>) -> Reloader {
        Reloader {
            path,
            shared,
            tokens,
        }
    }

    /// Runs forever.
    pub async fn run(self) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; only file changes reload");
                None
            }
        };
        let mut last = fingerprint(&self.path);
        loop {
            let by_signal = tokio::select! {
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => None } } => true,
                () = tokio::time::sleep(Duration::from_secs(1)) => false,
            };
            let now = fingerprint(&self.path);
            if by_signal {
                tracing::info!("SIGHUP: reloading config and keys");
                if let Err(e) = self.tokens.reload() {
                    tracing::error!(error = %e, "key reload failed; keeping the old keys");
                }
            } else if now == last || now.is_none() {
                continue;
            } else {
                tracing::info!(path = %self.path.display(), "config file changed: reloading");
            }
            last = now;
            self.reload_config();
        }
    }

    /// Loads, validates and swaps in the config; returns whether it was applied.
    pub fn reload_config(&self) -> bool {
        let config = match Config::load(&self.path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(problems = %e, "config reload rejected; the old config keeps serving");
                return false;
            }
        };
        let old = self.shared.live.load_full();
        for key in restart_only_changes(&old.config, &config) {
            tracing::warn!(
                key,
                "changed in the config file but only applies after a restart"
            );
        }
        match Live::build(Arc::new(config)) {
            Ok(live) => {
                tracing::info!(
                    routes = live.routes.len(),
                    upstreams = live.upstreams.len(),
                    "config reloaded"
                );
                self.shared.live.store(Arc::new(live));
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "config reload rejected; the old config keeps serving");
                false
            }
        }
    }
}

/// Tables that are read once at start.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.server != new.server {
        changed.push("server");
    }
    if old.database != new.database {
        changed.push("database");
    }
    if old.tokens != new.tokens {
        changed.push("tokens");
    }
    if old.passwords != new.passwords {
        changed.push("passwords");
    }
    if old.revocation != new.revocation {
        changed.push("revocation");
    }
    if old.rate_limit != new.rate_limit {
        changed.push("rate_limit");
    }
    if old.identity_headers != new.identity_headers {
        changed.push("identity_headers");
    }
    if old.oidc != new.oidc {
        changed.push("oidc");
    }
    // log.access_log, log.access_log_sample and [audit] are read live.
    if old.log.format != new.log.format {
        changed.push("log.format");
    }
    if old.log.level != new.log.level {
        changed.push("log.level");
    }
    changed
}
