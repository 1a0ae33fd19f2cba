//! Logging setup, the access log and the Prometheus metrics of API.md §5.

pub mod access;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Targets whose verbose output carries secrets, and the most verbose level each may log at,
/// whatever `RUST_LOG` asks for: the database driver logs every statement's parameters at
/// debug (password hashes, session secrets, refresh-token hashes); Pingora logs whole request
/// headers (`Authorization` included) at trace.
const SECRET_BEARING_TARGETS: &[(&str, tracing::Level)] = &[
    ("tokio_postgres", tracing::Level::INFO),
    ("postgres_protocol", tracing::Level::INFO),
    ("pingora_core", tracing::Level::DEBUG),
    ("pingora_proxy", tracing::Level::DEBUG),
    ("pingora_http", tracing::Level::DEBUG),
];

/// Whether an event may be logged at all: drops the secret-bearing output at every level.
pub fn may_log(target: &str, level: &tracing::Level) -> bool {
    SECRET_BEARING_TARGETS.iter().all(|(t, cap)| {
        level <= cap
            || !(target == *t || target.strip_prefix(t).is_some_and(|r| r.starts_with("::")))
    })
}

/// Keeps the background log writer alive: dropping it flushes the lines still queued, so
/// `main` holds it until the process is about to exit.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    _worker: Option<tracing_appender::non_blocking::WorkerGuard>,
}

impl std::fmt::Debug for LogGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogGuard").finish_non_exhaustive()
    }
}

/// Installs the tracing subscriber: `RUST_LOG` filters when set, else `log.level`; text or
/// JSON lines on stderr through one background writer (also used by the access log), so a
/// slow disk or pipe never stalls a proxy thread. Colour only when stderr is a terminal.
/// Idempotent: a second call changes nothing and returns an inert guard.
///
/// The writer is lossy: when its queue (128 000 lines) is full, new lines are dropped rather
/// than blocking the request path; dropping is preferable to added latency for every client.
pub fn init_logging(log: &crate::config::Log) -> LogGuard {
    use std::io::IsTerminal as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{Layer as _, filter};
    let env = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The hint matters: without one the subscriber's maximum level is TRACE, so `log`'s
    // maximum is too, and every `trace!` in Pingora is formatted into a record and sent
    // through the log bridge only to be dropped (~15k instructions per proxied request).
    let hint = tracing_subscriber::Layer::<tracing_subscriber::Registry>::max_level_hint(&env)
        .unwrap_or(filter::LevelFilter::TRACE);
    let guard =
        filter::filter_fn(|meta| may_log(meta.target(), meta.level())).with_max_level_hint(hint);
    let (writer, worker) = tracing_appender::non_blocking(std::io::stderr());
    let layer = match log.format {
        crate::config::LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(writer.clone())
            .boxed(),
        crate::config::LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(writer.clone())
            .boxed(),
    };
    let installed = tracing_subscriber::registry()
        .with(layer.with_filter(env).with_filter(guard))
        .try_init()
        .is_ok();
    if !installed {
        return LogGuard { _worker: None };
    }
    access::install(writer, log.format);
    LogGuard {
        _worker: Some(worker),
    }
}

/// All metrics, registered in one registry served on /metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `portcullis_requests_total{route,status}`.
    pub requests: IntCounterVec,
    /// `portcullis_upstream_duration_seconds{upstream}`.
    pub upstream_duration: HistogramVec,
    /// `portcullis_auth_events_total{event}`.
    pub auth_events: IntCounterVec,
    /// `portcullis_access_denied_total{reason}`.
    pub access_denied: IntCounterVec,
    /// `portcullis_revocation_cache_total{result}`.
    pub revocation_cache: IntCounterVec,
    /// `portcullis_db_pool_connections{state}`.
    pub db_pool: IntGaugeVec,
    /// `portcullis_connection_errors_total{kind}`: client disconnects and upstream resets,
    /// logged below ERROR because they are the network's doing, not the gateway's.
    pub connection_errors: IntCounterVec,
    /// `portcullis_client_limits_total{limit}`: client connections cut or refused by a limit
    /// (`header_timeout`, `body_timeout`, `keepalive_timeout`, `max_connections`), so an
    /// operator sees slow or flooding clients without debug logs.
    pub client_limits: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "portcullis_requests_total",
                "Requests by route prefix and status",
            ),
            &["route", "status"],
        )?;
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "portcullis_upstream_duration_seconds",
                "Time from sending to the upstream to the end of its response",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            &["upstream"],
        )?;
        let auth_events = IntCounterVec::new(
            Opts::new("portcullis_auth_events_total", "Auth API events"),
            &["event"],
        )?;
        let access_denied = IntCounterVec::new(
            Opts::new(
                "portcullis_access_denied_total",
                "Proxy requests denied, by reason",
            ),
            &["reason"],
        )?;
        let revocation_cache = IntCounterVec::new(
            Opts::new(
                "portcullis_revocation_cache_total",
                "Revocation cache lookups",
            ),
            &["result"],
        )?;
        let db_pool = IntGaugeVec::new(
            Opts::new(
                "portcullis_db_pool_connections",
                "Database pool connections",
            ),
            &["state"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(upstream_duration.clone()))?;
        registry.register(Box::new(auth_events.clone()))?;
        registry.register(Box::new(access_denied.clone()))?;
        registry.register(Box::new(revocation_cache.clone()))?;
        registry.register(Box::new(db_pool.clone()))?;
        let connection_errors = IntCounterVec::new(
            Opts::new(
                "portcullis_connection_errors_total",
                "Requests cut short by the network, by kind",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(connection_errors.clone()))?;
        for kind in ["client_disconnect", "upstream_reset"] {
            connection_errors.with_label_values(&[kind]);
        }
        let client_limits = IntCounterVec::new(
            Opts::new(
                "portcullis_client_limits_total",
                "Client connections cut or refused by a limit, by limit",
            ),
            &["limit"],
        )?;
        registry.register(Box::new(client_limits.clone()))?;
        for limit in [
            "header_timeout",
            "body_timeout",
            "keepalive_timeout",
            "max_connections",
        ] {
            client_limits.with_label_values(&[limit]);
        }
        // Make the documented series visible from the first scrape.
        for event in [
            "login_ok",
            "login_failed",
            "refresh",
            "refresh_reuse_detected",
            "logout",
            "register",
            "rate_limited",
        ] {
            auth_events.with_label_values(&[event]);
        }
        for reason in [
            "missing_token",
            "invalid_token",
            "revoked",
            "insufficient_role",
            "unavailable",
        ] {
            access_denied.with_label_values(&[reason]);
        }
        for result in ["hit", "miss"] {
            revocation_cache.with_label_values(&[result]);
        }
        Ok(Metrics {
            registry,
            requests,
            upstream_duration,
            auth_events,
            access_denied,
            revocation_cache,
            db_pool,
            connection_errors,
            client_limits,
        })
    }

    /// Counts one auth event.
    pub fn auth_event(&self, event: &str) {
        self.auth_events.with_label_values(&[event]).inc();
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::may_log;
    use tracing::Level;

    #[test]
    fn the_database_drivers_parameter_logs_never_pass() {
        for target in [
            "tokio_postgres",
            "tokio_postgres::query",
            "postgres_protocol::x",
        ] {
            assert!(!may_log(target, &Level::DEBUG), "{target}");
            assert!(!may_log(target, &Level::TRACE), "{target}");
            assert!(may_log(target, &Level::WARN), "{target}");
        }
        assert!(may_log("tokio_postgresql", &Level::DEBUG));
        assert!(!may_log(
            "pingora_core::protocols::http::v1::server",
            &Level::TRACE
        ));
        assert!(may_log(
            "pingora_core::protocols::http::v1::server",
            &Level::DEBUG
        ));
        assert!(may_log("portcullis::auth", &Level::TRACE));
    }
}
