//! Per-IP fixed-window limits (per instance, in memory, bounded by moka). Per-account login
//! limits live in PostgreSQL so they hold across instances (see `Store::login_failures`).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Which limit a counter belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Login attempts per IP.
    Login,
    /// Registrations per IP.
    Register,
}

/// Counts attempts per (kind, IP, minute).
pub struct IpLimiter {
    counters: moka::sync::Cache<(Kind, IpAddr, i64), Arc<AtomicU32>>,
}

impl std::fmt::Debug for IpLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpLimiter").finish_non_exhaustive()
    }
}

impl Default for IpLimiter {
    fn default() -> Self {
        IpLimiter {
            counters: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(Duration::from_secs(120))
                .build(),
        }
    }
}

/// Seconds until the current one-minute window ends (the `Retry-After` value).
pub fn seconds_to_next_minute(now_secs: i64) -> u64 {
    (60 - now_secs.rem_euclid(60)) as u64
}

impl IpLimiter {
    /// Counts one attempt; `Err(retry_after_secs)` when over `per_minute` (0 = no limit).
    pub fn check(&self, kind: Kind, ip: IpAddr, per_minute: u32, now_secs: i64) -> Result<(), u64> {
        if per_minute == 0 {
            return Ok(());
        }
        let window = now_secs.div_euclid(60);
        let counter = self
            .counters
            .get_with((kind, ip, window), || Arc::new(AtomicU32::new(0)));
        if counter.fetch_add(1, Ordering::Relaxed) >= per_minute {
            return Err(seconds_to_next_minute(now_secs));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_trips_after_n_attempts_and_resets_next_minute() {
        let l = IpLimiter::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t = 120 * 60 + 15;
        for _ in 0..3 {
            assert!(l.check(Kind::Login, ip, 3, t).is_ok());
        }
        assert_eq!(l.check(Kind::Login, ip, 3, t), Err(45));
        assert!(
            l.check(Kind::Register, ip, 3, t).is_ok(),
            "kinds are separate"
        );
        assert!(
            l.check(Kind::Login, "10.0.0.2".parse().unwrap(), 3, t)
                .is_ok()
        );
        assert!(l.check(Kind::Login, ip, 3, t + 45).is_ok(), "new window");
        assert!(l.check(Kind::Login, ip, 0, t).is_ok(), "0 disables");
    }
}
