//! argon2id hashing on a bounded pool of its own: `max_concurrent_hashes` threads (rayon) at a
//! lower CPU priority, so a login storm queues here and yields the CPU to proxying instead of
//! stalling Pingora's workers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};

use crate::config::Passwords;

/// Hashing failed for a reason that is not the caller's (bad parameters, pool shut down).
#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

/// Result of checking a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The password matches.
    pub ok: bool,
    /// The stored hash uses other parameters than the configured ones: re-hash it.
    pub needs_rehash: bool,
}

/// The configured argon2id policy plus the pool that bounds concurrent hashing.
#[derive(Clone)]
pub struct Hasher {
    params: Params,
    pool: Arc<rayon::ThreadPool>,
    /// Hash of a random password, verified for unknown accounts so they cost the same time.
    dummy: Arc<str>,
    /// argon2 verifications run, shared by clones.
    verifications: Arc<AtomicU64>,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hasher")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl Hasher {
    /// Builds the policy from `[passwords]`; computes the dummy hash once.
    pub fn new(cfg: &Passwords) -> Result<Hasher, HashError> {
        let params = Params::new(
            cfg.argon2_memory_kib,
            cfg.argon2_iterations,
            cfg.argon2_parallelism,
            None,
        )
        .map_err(|e| HashError(e.to_string()))?;
        let threads = match cfg.max_concurrent_hashes {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("argon2-{i}"))
            .start_handler(|_| lower_thread_priority())
            .build()
            .map_err(|e| HashError(e.to_string()))?;
        let dummy_password: [u8; 16] = rand::random();
        let dummy = argon(&params)
            .hash_password(&dummy_password)
            .map_err(|e| HashError(e.to_string()))?
            .to_string();
        Ok(Hasher {
            params,
            pool: Arc::new(pool),
            dummy: dummy.into(),
            verifications: Arc::default(),
        })
    }

    /// How many argon2 verifications this hasher (and its clones) has run: one per
    /// [`verify`](Self::verify), whether against a stored hash or the dummy.
    pub fn verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }

    /// Hashes a password (PHC string) on the bounded pool.
    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        let params = self.params.clone();
        self.run(move || {
            argon(&params)
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| HashError(e.to_string()))
        })
        .await?
    }

    /// Checks a password against a stored hash; `None` (unknown account or no password) is
    /// checked against the dummy hash so the time taken does not reveal which case it was.
    pub async fn verify(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<Verified, HashError> {
        let params = self.params.clone();
        let known = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.dummy.to_string());
        let verifications = self.verifications.clone();
        self.run(move || {
            let Ok(parsed) = PasswordHash::new(&hash) else {
                return Verified {
                    ok: false,
                    needs_rehash: false,
                };
            };
            // The same work for the dummy as for a real hash; only a real one can match.
            let matches = argon(&params)
                .verify_password(password.as_bytes(), &parsed)
                .is_ok();
            verifications.fetch_add(1, Ordering::Relaxed);
            let ok = known && matches;
            let needs_rehash = ok
                && (parsed.algorithm.as_str() != "argon2id"
                    || Params::try_from(&parsed).map_or(true, |p| {
                        p.m_cost() != params.m_cost()
                            || p.t_cost() != params.t_cost()
                            || p.p_cost() != params.p_cost()
                    }));
            Verified { ok, needs_rehash }
        })
        .await
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.pool.spawn(move || {
            let _ = tx.send(work());
        });
        rx.await
            .map_err(|_| HashError("the hashing pool dropped the job".into()))
    }
}

/// Nice 10 for the calling thread: hashing gets the CPU proxying leaves over (on Linux the
/// priority is per thread). Failure only costs the preference, so it is logged and ignored.
fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority with who = 0 changes only the calling thread's nice value.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
        if rc != 0 {
            tracing::debug!("could not lower the hashing thread's priority");
        }
    }
}

fn argon(params: &Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Passwords {
        Passwords {
            argon2_memory_kib: 64,
            argon2_iterations: 1,
            ..Passwords::default()
        }
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() {
        let h = Hasher::new(&small()).unwrap();
        let hash = h.hash("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=64,t=1,p=1$"));
        let good = h
            .verify("correct horse".into(), Some(hash.clone()))
            .await
            .unwrap();
        assert_eq!(
            good,
            Verified {
                ok: true,
                needs_rehash: false
            }
        );
        let bad = h.verify("wrong".into(), Some(hash)).await.unwrap();
        assert!(!bad.ok);
        assert!(!h.verify("correct horse".into(), None).await.unwrap().ok);
    }

    /// The argon2 parameters of a PHC string: (algorithm, version, m, t, p).
    fn phc_params(phc: &str) -> (String, Option<u32>, u32, u32, u32) {
        let parsed = PasswordHash::new(phc).unwrap();
        let p = Params::try_from(&parsed).unwrap();
        (
            parsed.algorithm.as_str().to_string(),
            parsed.version,
            p.m_cost(),
            p.t_cost(),
            p.p_cost(),
        )
    }

    #[test]
    fn the_dummy_hash_is_argon2id_with_exactly_the_configured_parameters() {
        for (m, t, p) in [(64, 1, 1), (256, 3, 2), (19456, 2, 1)] {
            let cfg = Passwords {
                argon2_memory_kib: m,
                argon2_iterations: t,
                argon2_parallelism: p,
                ..Passwords::default()
            };
            let h = Hasher::new(&cfg).unwrap();
            assert_eq!(
                phc_params(&h.dummy),
                ("argon2id".to_string(), Some(19), m, t, p),
                "{}",
                h.dummy
            );
        }
    }

    #[tokio::test]
    async fn an_unknown_account_runs_one_argon2_verification_like_a_wrong_password() {
        let h = Hasher::new(&small()).unwrap();
        let hash = h.hash("correct horse".into()).await.unwrap();
        assert_eq!(phc_params(&hash), phc_params(&h.dummy));
        assert_eq!(h.verifications(), 0, "hashing is not verifying");
        let wrong = h.verify("wrong".into(), Some(hash)).await.unwrap();
        assert!(!wrong.ok);
        assert_eq!(h.verifications(), 1);
        let clone = h.clone();
        for password in ["wrong", "correct horse", ""] {
            let unknown = clone.verify(password.into(), None).await.unwrap();
            assert!(!unknown.ok, "the dummy matched {password:?}");
        }
        assert_eq!(h.verifications(), 4, "one verification per unknown account");
    }

    #[tokio::test]
    async fn the_defaults_are_the_owasp_baseline_and_old_hashes_get_rehashed() {
        let defaults = Hasher::new(&Passwords::default()).unwrap();
        let hash = defaults.hash("pw-with-defaults".into()).await.unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        let small = Hasher::new(&small()).unwrap();
        let v = small
            .verify("pw-with-defaults".into(), Some(hash))
            .await
            .unwrap();
        assert_eq!(
            v,
            Verified {
                ok: true,
                needs_rehash: true
            }
        );
    }
}
