//! Integration tests: real PostgreSQL, a real HTTP upstream, the real `portcullis` binary.
//! One test binary on purpose (each extra binary is another link step).

mod harness;

mod foundation;
mod front_proxies;

mod acme;
mod auth;
mod browser;
mod chromium;
mod database_tls;
mod deploy;
mod faults;
mod limits;
mod logs;
mod oidc;
mod operators;
mod proxy;
mod tls;
mod upstream_faults;
mod websocket;
