//! Upstream pools: Pingora's round-robin load balancer over `addrs`, with optional active HTTP
//! health checks run by one background task over whatever pools the current config has.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use pingora::http::RequestHeader;
use pingora::lb::health_check::HttpHealthCheck;
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, LoadBalancer};
use pingora::upstreams::peer::HttpPeer;
use prometheus::Histogram;

use crate::config::Upstream;

/// Why a pool could not be built.
#[derive(Debug, thiserror::Error)]
#[error("upstream {name}: {reason}")]
pub struct UpstreamError {
    name: String,
    reason: String,
}

/// One `[[upstream]]`: addresses, timeouts, health state.
pub struct UpstreamPool {
    /// Name routes refer to.
    pub name: String,
    lb: LoadBalancer<RoundRobin>,
    connect_timeout: Duration,
    read_timeout: Duration,
    health_interval: Option<Duration>,
    last_check_ms: AtomicI64,
    /// This pool's `upstream_duration` series, resolved on first use.
    pub latency: OnceLock<Histogram>,
}

impl std::fmt::Debug for UpstreamPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamPool")
            .field("name", &self.name)
            .finish()
    }
}

impl UpstreamPool {
    /// Resolves the addresses and sets up the health check.
    pub fn new(cfg: &Upstream) -> Result<UpstreamPool, UpstreamError> {
        let mut lb =
            LoadBalancer::<RoundRobin>::try_from_iter(cfg.addrs.iter().map(String::as_str))
                .map_err(|e| UpstreamError {
                    name: cfg.name.clone(),
                    reason: format!("cannot resolve addresses: {e}"),
                })?;
        let health_interval = match &cfg.health_check_path {
            Some(path) => {
                let mut hc = HttpHealthCheck::new("localhost", false);
                hc.req = RequestHeader::build("GET", path.as_bytes(), None).map_err(|e| {
                    UpstreamError {
                        name: cfg.name.clone(),
                        reason: format!("bad health_check_path: {e}"),
                    }
                })?;
                let _ = hc.req.insert_header("Host", "localhost");
                hc.peer_template.options.connection_timeout =
                    Some(Duration::from_millis(cfg.connect_timeout_ms));
                hc.peer_template.options.read_timeout = Some(Duration::from_secs(2));
                lb.set_health_check(Box::new(hc));
                Some(Duration::from_secs(cfg.health_check_interval_secs))
            }
            None => None,
        };
        lb.health_check_frequency = health_interval;
        Ok(UpstreamPool {
            name: cfg.name.clone(),
            lb,
            connect_timeout: Duration::from_millis(cfg.connect_timeout_ms),
            read_timeout: Duration::from_millis(cfg.read_timeout_ms),
            health_interval,
            last_check_ms: AtomicI64::new(0),
            latency: OnceLock::new(),
        })
    }

    /// Next healthy address as a peer with this pool's timeouts; `None` when none is healthy.
    pub fn peer(&self) -> Option<HttpPeer> {
        let backend: Backend = self.lb.select(b"", 256)?;
        let mut peer = HttpPeer::new(backend.addr, false, String::new());
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.read_timeout = Some(self.read_timeout);
        peer.options.write_timeout = Some(self.read_timeout);
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        Some(peer)
    }

    /// Runs the health check if it is due.
    pub async fn check_health_if_due(&self, now_ms: i64) {
        let Some(interval) = self.health_interval else {
            return;
        };
        let last = self.last_check_ms.load(Ordering::Relaxed);
        if now_ms - last < interval.as_millis() as i64 {
            return;
        }
        self.last_check_ms.store(now_ms, Ordering::Relaxed);
        self.lb.backends().run_health_check(true).await;
    }
}

/// Builds every pool of a config.
pub fn build_pools(
    upstreams: &[Upstream],
) -> Result<HashMap<String, Arc<UpstreamPool>>, UpstreamError> {
    upstreams
        .iter()
        .map(|u| Ok((u.name.clone(), Arc::new(UpstreamPool::new(u)?))))
        .collect()
}

/// Runs due health checks of the current pools forever (pools change on reload).
pub async fn run_health_checks(shared: Arc<super::Shared>) {
    loop {
        let live = shared.live.load_full();
        let now_ms = chrono::Utc::now().timestamp_millis();
        for pool in live.upstreams.values() {
            pool.check_health_if_due(now_ms).await;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
