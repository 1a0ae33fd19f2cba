//! Raw argon2id rate on one thread with the gateway's default `[passwords]` parameters
//! (m = 19456 KiB, t = 2, p = 1): the ceiling for `POST /auth/login` on one core, used by the
//! load harness (`benches/load/run.sh`) as the reference for login throughput.
//!
//! `cargo bench --bench argon2_rate -- --seconds 10` hashes (and verifies) for that long on the
//! calling thread and prints one JSON object. Pin it with `taskset` to compare with a pinned
//! gateway. Run by `cargo test --benches` it does a single hash of each kind (a sanity check).

use std::time::{Duration, Instant};

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};
use portcullis::config::Passwords;

fn seconds_arg(args: &[String]) -> Option<f64> {
    let i = args.iter().position(|a| a == "--seconds")?;
    args.get(i + 1)?.parse().ok()
}

/// Runs `work` repeatedly for `budget` (at least once); returns (count, elapsed seconds).
fn rate(budget: Duration, mut work: impl FnMut()) -> (u64, f64) {
    let start = Instant::now();
    let mut n = 0u64;
    loop {
        work();
        n += 1;
        if start.elapsed() >= budget {
            break;
        }
    }
    (n, start.elapsed().as_secs_f64())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let benching = args.iter().any(|a| a == "--bench");
    let seconds = seconds_arg(&args).unwrap_or(if benching { 10.0 } else { 0.0 });
    let budget = Duration::from_secs_f64(seconds.max(0.0) / 2.0);

    let cfg = Passwords::default();
    let params = Params::new(
        cfg.argon2_memory_kib,
        cfg.argon2_iterations,
        cfg.argon2_parallelism,
        None,
    )
    .expect("argon2 parameters");
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let password = b"correct horse battery staple";

    let (hashes, hash_secs) = rate(budget, || {
        let hash = argon.hash_password(password).expect("hash");
        std::hint::black_box(hash);
    });
    let stored = argon.hash_password(password).expect("hash").to_string();
    let parsed = PasswordHash::new(&stored).expect("parse");
    let (verifies, verify_secs) = rate(budget, || {
        argon.verify_password(password, &parsed).expect("verify");
    });

    println!(
        "{{\"algorithm\":\"argon2id\",\"m_kib\":{},\"t\":{},\"p\":{},\"threads\":1,\
         \"hashes\":{hashes},\"hash_seconds\":{hash_secs:.3},\"hashes_per_sec\":{:.2},\
         \"verifies\":{verifies},\"verify_seconds\":{verify_secs:.3},\"verifies_per_sec\":{:.2}}}",
        cfg.argon2_memory_kib,
        cfg.argon2_iterations,
        cfg.argon2_parallelism,
        hashes as f64 / hash_secs,
        verifies as f64 / verify_secs,
    );
}
