//! Logging setup, the access log and the Prometheus metrics of docs/api.md, "Admin listener".

pub mod access;

use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::store::DRIVER_LOG_TARGETS;

/// `portcullis_requests_total` for one route label, each status's series resolved on its first
/// use and kept: counting a request is then one atomic add, without hashing the label values
/// or formatting the status as `with_label_values` does on every call.
#[derive(Clone)]
pub struct StatusCounters {
    vec: IntCounterVec,
    route: String,
    /// Statuses 100..=599, by `status - 100`.
    by_status: Box<[OnceLock<IntCounter>]>,
}

impl StatusCounters {
    fn new(vec: &IntCounterVec, route: &str) -> StatusCounters {
        StatusCounters {
            vec: vec.clone(),
            route: route.to_string(),
            by_status: (100..600).map(|_| OnceLock::new()).collect(),
        }
    }

    /// Counts one response with `status`.
    pub fn inc(&self, status: u16) {
        let series = || {
            self.vec
                .with_label_values(&[self.route.as_str(), itoa::Buffer::new().format(status)])
        };
        match usize::from(status)
            .checked_sub(100)
            .and_then(|i| self.by_status.get(i))
        {
            Some(slot) => slot.get_or_init(series).inc(),
            None => series().inc(),
        }
    }
}

impl std::fmt::Debug for StatusCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusCounters")
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

/// Pingora's targets: at trace they log whole request headers (`Authorization` included), at
/// debug the upstream request (`Cookie`, `Authorization` on `forward_token` routes) and the
/// upstream tasks (`Set-Cookie`, body bytes, WebSocket frames), so they are capped at INFO,
/// like the database driver's ([`DRIVER_LOG_TARGETS`]): no level an operator can choose below
/// trace carries a credential.
const PINGORA_LOG_TARGETS: &[&str] = &["pingora_core", "pingora_proxy", "pingora_http"];

/// Whether an event may be logged at all: drops the secret-bearing output at every level,
/// whatever `RUST_LOG` asks for.
pub fn may_log(target: &str, level: &tracing::Level) -> bool {
    let within = |targets: &[&str], cap: tracing::Level| {
        *level <= cap
            || !targets.iter().any(|t| {
                target == *t || target.strip_prefix(t).is_some_and(|r| r.starts_with("::"))
            })
    };
    within(DRIVER_LOG_TARGETS, tracing::Level::INFO)
        && within(PINGORA_LOG_TARGETS, tracing::Level::INFO)
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
    /// `portcullis_revocation_cache_entries`: sessions in the revocation cache, set at each
    /// scrape, so an operator (and the soak test) can see the cache fill and expire instead of
    /// guessing its memory from the hit/miss counters.
    pub revocation_cache_entries: IntGauge,
    /// `portcullis_connection_errors_total{kind}`: client disconnects and upstream resets,
    /// logged below ERROR because they are the network's doing, not the gateway's.
    pub connection_errors: IntCounterVec,
    /// `portcullis_client_limits_total{limit}`: client connections cut or refused by a limit
    /// (`header_timeout`, `body_timeout`, `keepalive_timeout`, `max_connections`,
    /// `max_connections_per_ip`, `handshake_timeout`), so an
    /// operator sees slow or flooding clients without debug logs.
    pub client_limits: IntCounterVec,
    /// `portcullis_tls_handshake_errors_total`: TLS handshakes that failed (scanners,
    /// plain-HTTP probes, aborted or incompatible clients), logged at debug only.
    pub tls_handshake_errors: IntCounter,
    /// `portcullis_client_connections_open`: client connections held now (both listeners),
    /// the number `server.max_connections` is compared with.
    pub open_connections: IntGauge,
    /// `access_denied` series of [`DENIAL_REASONS`], in that order.
    denials: [IntCounter; DENIAL_REASONS.len()],
    /// `revocation_cache` series `hit` and `miss`.
    revocation_results: [IntCounter; 2],
}

/// The documented `portcullis_access_denied_total` reasons, visible from the first scrape.
const DENIAL_REASONS: [&str; 5] = [
    "missing_token",
    "invalid_token",
    "revoked",
    "insufficient_role",
    "unavailable",
];

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
        let revocation_cache_entries = IntGauge::new(
            "portcullis_revocation_cache_entries",
            "Sessions in the revocation cache, sampled at each scrape",
        )?;
        registry.register(Box::new(revocation_cache_entries.clone()))?;
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
            "max_connections_per_ip",
            "handshake_timeout",
        ] {
            client_limits.with_label_values(&[limit]);
        }
        let tls_handshake_errors = IntCounter::new(
            "portcullis_tls_handshake_errors_total",
            "TLS handshakes that failed (probes, scanners, aborted or incompatible clients)",
        )?;
        registry.register(Box::new(tls_handshake_errors.clone()))?;
        let open_connections = IntGauge::new(
            "portcullis_client_connections_open",
            "Client connections open now, the number server.max_connections bounds",
        )?;
        registry.register(Box::new(open_connections.clone()))?;
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
        let denials = DENIAL_REASONS.map(|reason| access_denied.with_label_values(&[reason]));
        let revocation_results = ["hit", "miss"].map(|r| revocation_cache.with_label_values(&[r]));
        Ok(Metrics {
            denials,
            revocation_results,
            registry,
            requests,
            upstream_duration,
            auth_events,
            access_denied,
            revocation_cache,
            db_pool,
            revocation_cache_entries,
            connection_errors,
            client_limits,
            tls_handshake_errors,
            open_connections,
        })
    }

    /// Request counters of one route (or pseudo-route) label, for the request path to keep.
    pub fn status_counters(&self, route: &str) -> StatusCounters {
        StatusCounters::new(&self.requests, route)
    }

    /// The upstream-duration histogram of one pool, for the pool to keep.
    pub fn upstream_histogram(&self, upstream: &str) -> Histogram {
        self.upstream_duration.with_label_values(&[upstream])
    }

    /// Counts one revocation-cache lookup (handles resolved at start).
    pub fn revocation_lookup(&self, hit: bool) {
        let i = usize::from(!hit);
        self.revocation_results[i].inc();
    }

    /// Counts one denial by its reason (the documented reasons resolved at start).
    pub fn denied(&self, reason: &str) {
        match DENIAL_REASONS.iter().position(|r| *r == reason) {
            Some(i) => self.denials[i].inc(),
            None => self.access_denied.with_label_values(&[reason]).inc(),
        }
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
    use super::{Metrics, may_log};
    use tracing::Level;

    fn value(metrics: &Metrics, series: &str) -> Option<f64> {
        metrics.render().lines().find_map(|l| {
            let (name, v) = l.rsplit_once(' ')?;
            (name == series).then(|| v.parse().unwrap())
        })
    }

    #[test]
    fn kept_handles_count_into_the_same_series_as_label_lookups() {
        let m = Metrics::new().unwrap();
        let route = m.status_counters("/api/");
        route.inc(200);
        route.inc(200);
        route.inc(99); // outside 100..=599: counted through the label lookup
        m.status_counters("/api/").inc(200); // a reload's fresh handles, same series
        m.requests.with_label_values(&["/api/", "404"]).inc();
        let series =
            |s: &str| format!("portcullis_requests_total{{route=\"/api/\",status=\"{s}\"}}");
        assert_eq!(value(&m, &series("200")), Some(3.0));
        assert_eq!(value(&m, &series("99")), Some(1.0));
        assert_eq!(value(&m, &series("404")), Some(1.0));

        m.denied("revoked");
        m.denied("something_new");
        m.revocation_lookup(true);
        m.revocation_lookup(false);
        m.revocation_lookup(false);
        let denied = |r: &str| format!("portcullis_access_denied_total{{reason=\"{r}\"}}");
        assert_eq!(value(&m, &denied("revoked")), Some(1.0));
        assert_eq!(value(&m, &denied("something_new")), Some(1.0));
        assert_eq!(value(&m, &denied("missing_token")), Some(0.0));
        let cache = |r: &str| format!("portcullis_revocation_cache_total{{result=\"{r}\"}}");
        assert_eq!(value(&m, &cache("hit")), Some(1.0));
        assert_eq!(value(&m, &cache("miss")), Some(2.0));
    }

    #[test]
    fn the_revocation_cache_gauge_shows_from_the_first_scrape_and_takes_the_value_set() {
        let m = Metrics::new().unwrap();
        assert_eq!(value(&m, "portcullis_revocation_cache_entries"), Some(0.0));
        m.revocation_cache_entries.set(42);
        assert_eq!(value(&m, "portcullis_revocation_cache_entries"), Some(42.0));
        m.revocation_cache_entries.set(0);
        assert_eq!(value(&m, "portcullis_revocation_cache_entries"), Some(0.0));
    }

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
        for level in [Level::DEBUG, Level::TRACE] {
            for target in ["pingora_core::protocols::http::v1::server", "pingora_proxy"] {
                assert!(!may_log(target, &level), "{target} at {level}");
            }
        }
        assert!(may_log("pingora_proxy", &Level::INFO));
        assert!(may_log("pingora_core::services::listening", &Level::ERROR));
        assert!(may_log("portcullis::auth", &Level::TRACE));
    }
}
