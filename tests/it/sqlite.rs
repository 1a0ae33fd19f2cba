//! Integration tests on the embedded SQLite store: a real HTTP upstream, the real `portcullis`
//! binary, a database file per test. Needs no database server.

/// The store every test in this binary runs on.
pub const STORE: harness::Kind = harness::Kind::Sqlite;

/// Tests that need PostgreSQL (several instances, TLS, a server to crash): not in this binary.
#[allow(unused_macros)]
macro_rules! postgres_only {
    ($($item:item)*) => {};
}

/// Tests of the embedded store itself.
#[allow(unused_macros)]
macro_rules! sqlite_only {
    ($($item:item)*) => { $($item)* };
}

mod harness;

mod foundation;
mod front_proxies;

mod acme;
mod auth;
mod browser;
mod chromium;
mod deploy;
mod embedded;
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
