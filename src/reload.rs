//! Live reload: SIGHUP or a change of the config file builds new routes and upstream pools and
//! swaps them in atomically; SIGHUP also reloads the signing keys. SIGHUP or a change of a
//! certificate file (or of `server.tls.certs`) reloads the TLS certificates for new
//! handshakes. An invalid file is logged and the old config, keys or certificates keep
//! serving; settings that only apply at start are reported.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{CertFiles, Config};
use crate::proxy::{Live, Shared};
use crate::tls::{self, CertResolver};
use crate::tokens::TokenService;

/// Watches the config file and SIGHUP.
pub struct Reloader {
    path: PathBuf,
    shared: Arc<Shared>,
    tokens: Arc<TokenService>,
    certs: Option<Arc<CertResolver>>,
    secrets: Option<crate::secrets::Secrets>,
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
            certs: None,
            secrets: None,
        }
    }

    /// Also reloads the data key ring on SIGHUP (a new first key for `secrets rotate`).
    pub fn with_secrets(mut self, secrets: crate::secrets::Secrets) -> Reloader {
        self.secrets = Some(secrets);
        self
    }

    /// Also reloads the TLS listener's certificates (when there is one).
    pub fn with_certificates(mut self, certs: Option<Arc<CertResolver>>) -> Reloader {
        self.certs = certs;
        self
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
        let mut last_certs = self.cert_state();
        loop {
            let by_signal = tokio::select! {
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => None } } => true,
                () = tokio::time::sleep(Duration::from_secs(1)) => false,
            };
            let now = fingerprint(&self.path);
            let file_changed = now.is_some() && now != last;
            if by_signal {
                tracing::info!("SIGHUP: reloading config, keys and certificates");
                if let Err(e) = self.tokens.reload() {
                    tracing::error!(error = %e, "key reload failed; keeping the old keys");
                }
                if let Some(secrets) = &self.secrets {
                    match secrets.reload() {
                        Ok(()) => tracing::info!(
                            sealing_key = %secrets.ring().current_id(),
                            "secrets key ring reloaded"
                        ),
                        Err(e) => {
                            tracing::error!(error = %e, "secrets key ring reload failed; keeping the old ring")
                        }
                    }
                }
            } else if file_changed {
                tracing::info!(path = %self.path.display(), "config file changed: reloading");
            }
            if by_signal || file_changed {
                last = now;
                self.reload_config();
            }
            // After the config: a reload may have named other certificate files.
            let certs = self.cert_state();
            if by_signal || certs != last_certs {
                if let Some((files, _)) = &certs {
                    self.reload_certificates(files);
                }
                last_certs = certs;
            }
        }
    }

    /// The certificate files to serve (from the live config, else the ones loaded) and a
    /// fingerprint of their contents; `None` without a TLS listener.
    fn cert_state(&self) -> Option<(Vec<CertFiles>, u64)> {
        let resolver = self.certs.as_ref()?;
        let files = match &self.shared.live.load().config.server.tls {
            Some(tls) => tls.certs.clone(),
            None => resolver.current().files().to_vec(),
        };
        let print = tls::fingerprint(&files);
        Some((files, print))
    }

    /// Loads `files` and swaps them in for new handshakes; returns whether they were applied.
    /// Open connections keep the certificate they were opened with either way.
    pub fn reload_certificates(&self, files: &[CertFiles]) -> bool {
        let Some(resolver) = &self.certs else {
            return false;
        };
        match resolver.reload(files) {
            Ok(()) => {
                for (names, not_after) in resolver.current().summary() {
                    tracing::info!(?names, not_after, "TLS certificate reloaded");
                }
                true
            }
            Err(e) => {
                tracing::error!(problem = %e, "certificate reload rejected; the old certificates keep serving");
                false
            }
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
    // Certificate files reload live; the rest of [server] (listeners included) does not.
    let without_certs = |s: &crate::config::Server| {
        let mut s = s.clone();
        if let Some(tls) = s.tls.as_mut() {
            tls.certs.clear();
        }
        s
    };
    if without_certs(&old.server) != without_certs(&new.server) {
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
