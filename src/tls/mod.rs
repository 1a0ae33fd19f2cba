//! TLS termination, minus the sockets: certificate files loaded and checked (`certs`), the
//! SNI certificate choice and its live reload (`resolver`), the look at a connection's first
//! bytes (`hello`), and where plain HTTP is redirected (`redirect`). The Pingora listener is wired in `lib.rs` and `proxy/edge.rs`; the types here
//! are rustls's (the one version Pingora also uses), so no Pingora type is needed here.

pub mod acme;
pub mod certs;
pub mod hello;
pub mod redirect;
pub mod resolver;

use std::path::Path;

pub use certs::{CertError, CertProblem, Field};
pub use resolver::{CertResolver, CertStore};

use crate::config::{CertFiles, Config, Problem};

/// Why certificates could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file is unusable.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// `server.tls.certs` is empty.
    #[error("server.tls.certs: no certificate configured")]
    NoCertificates,
}

/// Every certificate-file problem of `config` (empty without `[server.tls]`), each located at
/// its key in the file at `path` — what `check-config` and `serve` refuse to start with.
pub fn check(config: &Config, path: &Path) -> Vec<Problem> {
    let Some(tls) = &config.server.tls else {
        return Vec::new();
    };
    tls.certs
        .iter()
        .enumerate()
        .filter_map(|(i, files)| certs::load(i, files).err())
        .map(|e| Problem::located(path, e.key(), e.message()))
        .collect()
}

/// A fingerprint of the contents of every file in `files` (a missing file counts as empty),
/// so the reloader notices a replaced certificate without relying on mtimes.
pub fn fingerprint(files: &[CertFiles]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for f in files {
        for p in [&f.cert, &f.key] {
            std::fs::read(p).unwrap_or_default().hash(&mut h);
        }
    }
    h.finish()
}
