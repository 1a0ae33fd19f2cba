//! Choosing a certificate per handshake: SNI against each certificate's SAN names (exact, then
//! `*.` wildcard, case-insensitive), the first certificate for unknown or absent SNI. The set
//! lives behind an `ArcSwap`, so a reload changes what new handshakes get while open
//! connections keep the certificate they were opened with.

use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::TlsError;
use super::certs::{self, LoadedCert};
use crate::config::CertFiles;

/// The certificates of one load, in configured order.
#[derive(Debug)]
pub struct CertStore {
    certs: Vec<LoadedCert>,
    /// The files they came from (what a reload reads again).
    files: Vec<CertFiles>,
}

impl CertStore {
    /// Loads every pair; the first problem found fails the whole load. No files is valid only
    /// with ACME (`allow_empty`), which supplies the certificate.
    pub fn load(files: &[CertFiles], allow_empty: bool) -> Result<CertStore, TlsError> {
        if files.is_empty() && !allow_empty {
            return Err(TlsError::NoCertificates);
        }
        let certs = files
            .iter()
            .enumerate()
            .map(|(i, f)| certs::load(i, f))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CertStore {
            certs,
            files: files.to_vec(),
        })
    }

    /// The files this store was loaded from.
    pub fn files(&self) -> &[CertFiles] {
        &self.files
    }

    /// Index of the certificate for `sni`.
    pub fn choose(&self, sni: Option<&str>) -> usize {
        choose(self.certs.iter().map(|c| c.names.as_slice()), sni)
    }

    fn key(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        self.certs.get(self.choose(sni)).map(|c| c.key.clone())
    }

    /// SAN names and expiry of each certificate, for logs.
    pub fn summary(&self) -> Vec<(Vec<String>, i64)> {
        self.certs
            .iter()
            .map(|c| (c.names.clone(), c.not_after))
            .collect()
    }
}

/// Index of the certificate for `sni` among certificates given by their SAN names: an exact
/// name wins over a wildcard, an earlier certificate over a later one; no match → 0.
pub fn choose<'a>(names: impl Iterator<Item = &'a [String]> + Clone, sni: Option<&str>) -> usize {
    let Some(sni) = sni.map(|s| s.trim_end_matches('.').to_ascii_lowercase()) else {
        return 0;
    };
    let exact = names
        .clone()
        .position(|ns| ns.iter().any(|n| !n.starts_with("*.") && *n == sni));
    let wildcard = || {
        let (_, parent) = sni.split_once('.')?;
        names.clone().position(|ns| {
            ns.iter()
                .any(|n| n.strip_prefix("*.").is_some_and(|p| p == parent))
        })
    };
    exact.or_else(wildcard).unwrap_or(0)
}

/// Whether SAN `names` cover `sni`: exactly, or by a `*.` wildcard for one label.
pub fn covers(names: &[String], sni: &str) -> bool {
    let sni = sni.trim_end_matches('.').to_ascii_lowercase();
    let parent = sni.split_once('.').map(|(_, p)| p);
    names
        .iter()
        .any(|n| *n == sni || n.strip_prefix("*.").is_some_and(|p| parent == Some(p)))
}

/// The rustls certificate resolver of the TLS listener.
#[derive(Debug)]
pub struct CertResolver {
    store: ArcSwap<CertStore>,
    /// The ACME certificate (or its self-signed placeholder until the first is issued).
    acme: ArcSwapOption<LoadedCert>,
    acme_enabled: bool,
}

impl CertResolver {
    /// Loads the configured certificates. With `acme`, the file list may be empty: the ACME
    /// certificate is then the default.
    pub fn load(files: &[CertFiles], acme: bool) -> Result<CertResolver, TlsError> {
        Ok(CertResolver {
            store: ArcSwap::from_pointee(CertStore::load(files, acme)?),
            acme: ArcSwapOption::empty(),
            acme_enabled: acme,
        })
    }

    /// Serves `cert` for its names (and for every name when no file certificate is
    /// configured) from the next handshake on.
    pub fn set_acme(&self, cert: LoadedCert) {
        self.acme.store(Some(Arc::new(cert)));
    }

    /// The ACME certificate being served, if any.
    pub fn acme(&self) -> Option<Arc<LoadedCert>> {
        self.acme.load_full()
    }

    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let store = self.store.load();
        if let Some(acme) = self.acme.load().as_ref() {
            let matches = sni.is_some_and(|sni| covers(&acme.names, sni));
            if store.certs.is_empty() || matches {
                return Some(acme.key.clone());
            }
        }
        store.key(sni)
    }

    /// The current set.
    pub fn current(&self) -> Arc<CertStore> {
        self.store.load_full()
    }

    /// Loads `files` and swaps them in for new handshakes; on any problem the old set keeps
    /// serving and the error is returned.
    pub fn reload(&self, files: &[CertFiles]) -> Result<(), TlsError> {
        let store = CertStore::load(files, self.acme_enabled)?;
        self.store.store(Arc::new(store));
        Ok(())
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // The protocol versions (min_version) are the listener's rustls config's business.
        self.pick(hello.server_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&[&str]]) -> Vec<Vec<String>> {
        list.iter()
            .map(|ns| ns.iter().map(|n| n.to_string()).collect())
            .collect()
    }

    fn pick(list: &[Vec<String>], sni: Option<&str>) -> usize {
        choose(list.iter().map(Vec::as_slice), sni)
    }

    #[test]
    fn an_exact_name_is_chosen_ignoring_case_and_a_trailing_dot() {
        let list = names(&[&["a.test"], &["b.test", "c.test"]]);
        assert_eq!(pick(&list, Some("c.test")), 1);
        assert_eq!(pick(&list, Some("C.Test.")), 1);
        assert_eq!(pick(&list, Some("a.test")), 0);
    }

    #[test]
    fn unknown_or_absent_sni_gets_the_first_certificate() {
        let list = names(&[&["a.test"], &["b.test"]]);
        assert_eq!(pick(&list, Some("other.test")), 0);
        assert_eq!(pick(&list, None), 0);
    }

    #[test]
    fn a_wildcard_covers_exactly_one_label() {
        let list = names(&[&["a.test"], &["*.b.test"]]);
        assert_eq!(pick(&list, Some("x.b.test")), 1);
        assert_eq!(pick(&list, Some("X.B.TEST")), 1);
        assert_eq!(pick(&list, Some("b.test")), 0);
        assert_eq!(pick(&list, Some("y.x.b.test")), 0);
    }

    #[test]
    fn an_exact_name_wins_over_an_earlier_wildcard() {
        let list = names(&[&["*.b.test"], &["x.b.test"]]);
        assert_eq!(pick(&list, Some("x.b.test")), 1);
        assert_eq!(pick(&list, Some("y.b.test")), 0);
    }

    #[test]
    fn covers_matches_exact_names_and_one_label_wildcards() {
        let ns = vec!["gw.test".to_string(), "*.api.test".to_string()];
        assert!(covers(&ns, "GW.test."));
        assert!(covers(&ns, "x.api.test"));
        assert!(!covers(&ns, "api.test"));
        assert!(!covers(&ns, "y.x.api.test"));
        assert!(!covers(&ns, "other.test"));
    }
}
