//! portcullis: a reverse-proxy auth gateway on Pingora.
//!
//! Requests flow `proxy` (Pingora phases) → `access` (route, token, revocation, role) → an
//! upstream, or `proxy::auth_api` → `auth` (use-cases) → `store` (PostgreSQL). `tokens` is
//! shared by `auth` (issues) and `access` (verifies). `config` imports nothing of ours.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![deny(clippy::await_holding_lock)]
#![warn(missing_docs)]

pub mod access;
pub mod admin;
pub mod auth;
pub mod config;
pub mod model;
pub mod proxy;
pub mod reload;
pub mod secrets;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod tokens;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pingora::server::Server;
use pingora::server::configuration::ServerConf;

use crate::access::{Authorizer, RevocationCache};
use crate::auth::AuthService;
use crate::auth::password::Hasher;
use crate::config::Config;
use crate::proxy::{Gateway, Live, Shared};
use crate::store::Store;
use crate::tokens::TokenService;

/// Why the server could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Database URL or pool settings.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// Signing keys.
    #[error("signing keys: {0}")]
    Keys(#[from] tokens::KeyError),
    /// Password policy.
    #[error(transparent)]
    Hash(#[from] auth::password::HashError),
    /// Upstream pools.
    #[error(transparent)]
    Upstream(#[from] proxy::upstream::UpstreamError),
    /// OIDC client setup.
    #[error("oidc: {0}")]
    Oidc(#[from] auth::oidc::OidcError),
    /// Metrics registry.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// ACME certificate manager.
    #[error(transparent)]
    Acme(#[from] tls::acme::AcmeError),
    /// TLS certificates.
    #[error("tls: {0}")]
    Tls(#[from] tls::TlsError),
    /// The TLS listener's settings.
    #[error("tls listener: {0}")]
    TlsListener(String),
    /// The data key ring.
    #[error(transparent)]
    Secrets(#[from] secrets::SecretsError),
}

fn pingora_conf(config: &Config) -> ServerConf {
    let port = config.server.listen.port();
    let tmp = std::env::temp_dir();
    ServerConf {
        threads: config.server.threads,
        // Per-instance paths: Pingora's defaults in /tmp collide between instances and tests.
        pid_file: tmp
            .join(format!("portcullis-{port}-{}.pid", std::process::id()))
            .display()
            .to_string(),
        upgrade_sock: config.server.upgrade_sock.clone(),
        grace_period_seconds: Some(config.server.shutdown_grace_secs),
        graceful_shutdown_timeout_seconds: Some(config.server.shutdown_grace_secs),
        work_stealing: config.server.work_stealing,
        ..ServerConf::default()
    }
}

/// How the process starts.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartMode {
    /// Take over the listening sockets of the running instance (through
    /// `server.upgrade_sock`) instead of binding them: a binary upgrade or restart that drops
    /// nothing. The old instance, sent SIGQUIT, hands them over and drains.
    pub upgrade: bool,
}

/// Builds the whole gateway — proxy listener, admin listener, revocation listener, health
/// checks, live reload — ready for `run_forever`. Used by `main`, the tests and the benches.
pub fn build_server(
    config: Config,
    config_path: &Path,
    mode: StartMode,
) -> Result<Server, BuildError> {
    let conf = pingora_conf(&config);
    let opt = pingora::server::configuration::Opt {
        upgrade: mode.upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let store = Store::with_timeouts(
        &config.database.url,
        config.database.pool_size,
        Duration::from_millis(config.database.acquire_timeout_ms),
        Duration::from_millis(config.database.statement_timeout_ms),
    )?;
    // One gateway per SQLite file (several need PostgreSQL); a no-op on PostgreSQL.
    store.claim_instance(mode.upgrade)?;
    // The data key ring (generated on the first start): stored secrets are sealed with it.
    let secrets = secrets::Secrets::load(secrets::source(&config), true)?;
    store.use_secrets(secrets.clone());
    let tokens = Arc::new(TokenService::new(&config.tokens)?);
    let hasher = Hasher::new(&config.passwords)?;
    let auth = AuthService::new(&config, store.clone(), tokens.clone(), hasher)?;
    let revocations = Arc::new(RevocationCache::new(
        store.clone(),
        config.revocation.cache_capacity,
        Duration::from_secs(config.revocation.cache_ttl_secs),
    ));
    // Weak: the cache holds the store, the store would otherwise hold the cache.
    let local = Arc::downgrade(&revocations);
    store.on_local_revocation(Arc::new(move |event| {
        let cache = local.upgrade();
        Box::pin(async move {
            if let Some(cache) = cache {
                cache.forget(event).await;
            }
        })
    }));
    let authorizer = Authorizer::new(
        tokens.clone(),
        revocations.clone(),
        config.revocation.on_db_error,
    );
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let metrics = telemetry::Metrics::new()?;
    let listen = config.server.listen.to_string();
    let admin_listen = config.server.admin_listen.to_string();
    let live = Live::build(Arc::new(config.clone()))?;
    let shared = Arc::new(Shared::new(
        &config,
        live,
        auth,
        authorizer,
        metrics,
        store.clone(),
    ));

    let mut app = pingora::proxy::http_proxy(&server.configuration, Gateway::new(shared.clone()));
    // Idle HTTP/2 connections close like idle HTTP/1.1 keep-alive ones (Pingora's default is
    // never); the HTTP/1.1 side is timed by `proxy::limits`.
    let mut options = pingora::apps::HttpServerOptions::default();
    options.h2_idle_timeout = Some(Duration::from_secs(config.server.keepalive_timeout_secs));
    app.server_options = Some(options);
    let limits = proxy::limits::Settings::new(&config.server);
    let mut proxy = pingora::services::listening::Service::new(
        "portcullis proxy".to_string(),
        proxy::limits::Limited::new(app, limits, &shared.metrics),
    );
    proxy.add_tcp(&listen);
    // The TLS listener is a second endpoint of the same service: same phases, same rules.
    let resolver = match &config.server.tls {
        Some(tls) => {
            let resolver = Arc::new(tls::CertResolver::load(&tls.certs, config.acme.enabled)?);
            for (names, not_after) in resolver.current().summary() {
                tracing::info!(?names, not_after, "TLS certificate loaded");
            }
            let tls13_only = tls.min_version == config::TlsVersion::V1_3;
            let settings = proxy::edge::tls_settings(resolver.clone(), tls.http2, tls13_only)
                .map_err(|e| BuildError::TlsListener(e.to_string()))?;
            proxy.add_tls_with_settings(&tls.listen.to_string(), None, settings);
            proxy
                .endpoints()
                .set_pre_tls_callback(proxy::edge::first_bytes());
            Some(resolver)
        }
        None => None,
    };
    server.add_service(proxy);

    let mut admin = pingora::services::listening::Service::new(
        "portcullis admin".to_string(),
        admin::AdminApp::new(shared.clone()),
    );
    admin.add_tcp(&admin_listen);
    server.add_service(admin);

    if config.acme.enabled
        && let Some(resolver) = &resolver
    {
        let manager = Arc::new(tls::acme::AcmeManager::new(
            config.acme.clone(),
            store.clone(),
            resolver.clone(),
        )?);
        server.add_service(proxy::services::task("acme", move || {
            let manager = manager.clone();
            async move { manager.run().await }
        }));
    }

    let listener_shared = shared.clone();
    let watched = store.clone();
    server.add_service(proxy::services::task("revocation listener", move || {
        let shared = listener_shared.clone();
        let store = watched.clone();
        async move {
            store
                .watch_revocations(move |event| {
                    let shared = shared.clone();
                    tokio::spawn(async move { shared.authorizer.apply_revocation(event).await });
                })
                .await
        }
    }));
    let health_shared = shared.clone();
    server.add_service(proxy::services::task("health checks", move || {
        proxy::upstream::run_health_checks(health_shared.clone())
    }));
    let audit_shared = shared.clone();
    server.add_service(proxy::services::task("audit retention", move || {
        let shared = audit_shared.clone();
        auth::audit::run_retention(shared.store.clone(), move || {
            shared.live.load().config.audit.retention_days
        })
    }));
    let path: PathBuf = config_path.to_path_buf();
    server.add_service(proxy::services::task("config reload", move || {
        reload::Reloader::new(path.clone(), shared.clone(), tokens.clone())
            .with_certificates(resolver.clone())
            .with_secrets(secrets.clone())
            .run()
    }));
    Ok(server)
}
