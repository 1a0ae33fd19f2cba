//! Integration tests on PostgreSQL: a fresh database per test (copied from a migrated
//! template), a real HTTP upstream, the real `portcullis` binary. Without a reachable server
//! the binary says how many tests it did not run and exits 0 (the SQLite binary still runs).

/// The store every test in this binary runs on.
pub const STORE: harness::Kind = harness::Kind::Postgres;

/// Tests that need PostgreSQL (several instances, TLS, a server to crash).
#[allow(unused_macros)]
macro_rules! postgres_only {
    ($($item:item)*) => { $($item)* };
}

/// Tests of the embedded store itself: not in this binary.
#[allow(unused_macros)]
macro_rules! sqlite_only {
    ($($item:item)*) => {};
}

mod harness;

mod foundation;
mod front_proxies;

mod acme;
mod auth;
mod browser;
mod chromium;
mod database_tls;
mod db_copy;
mod deploy;
mod faults;
mod limits;
mod logs;
mod oidc;
mod operators;
mod proxy;
mod step_up;
mod store;
mod tls;
mod upstream_faults;
mod websocket;
