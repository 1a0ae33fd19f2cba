//! One certificate from its PEM files: the chain, the private key, and the SAN DNS names the
//! resolver matches SNI against. Everything that would make the TLS stack fail (or Pingora
//! panic) is checked here first: unreadable files, no PEM, a key that does not match, an
//! expired leaf.

use std::fmt;
use std::sync::Arc;

use rustls::Error as RusTlsError;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};

use crate::config::CertFiles;

/// Which file of a `{ cert, key }` pair a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// The certificate chain (`cert`).
    Cert,
    /// The private key (`key`).
    Key,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Cert => "cert",
            Field::Key => "key",
        })
    }
}

/// What is wrong with a certificate or key file.
#[derive(Debug, thiserror::Error)]
pub enum CertProblem {
    /// Missing, unreadable, a directory…
    #[error("cannot be read: {0}")]
    Unreadable(std::io::Error),
    /// Readable but holds no `CERTIFICATE` block.
    #[error("holds no PEM certificate")]
    NoCertificate,
    /// Readable but holds no private key block.
    #[error("holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey,
    /// Broken PEM framing or base64.
    #[error("is not valid PEM: {0}")]
    Pem(String),
    /// The leaf does not parse as X.509.
    #[error("is not a valid X.509 certificate: {0}")]
    BadCertificate(String),
    /// The leaf's `notAfter` has passed.
    #[error("holds a certificate that expired on {0}")]
    Expired(String),
    /// A key type or encoding the TLS stack cannot sign with.
    #[error("is not a usable private key: {0}")]
    BadKey(String),
    /// The key's public half is not the leaf's public key.
    #[error("does not match the certificate in {0}")]
    KeyMismatch(String),
}

/// A problem with one file of `server.tls.certs[index]`.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {path} {problem}", key = self.key())]
pub struct CertError {
    /// Position in `server.tls.certs`.
    pub index: usize,
    /// The file concerned.
    pub field: Field,
    /// Its path as configured.
    pub path: String,
    /// What is wrong.
    pub problem: CertProblem,
}

impl CertError {
    /// The config key this error is about, e.g. `server.tls.certs[0].key`.
    pub fn key(&self) -> String {
        format!("server.tls.certs[{}].{}", self.index, self.field)
    }

    /// The sentence after the key, for config problem reports.
    pub fn message(&self) -> String {
        format!("{} {}", self.path, self.problem)
    }
}

/// A certificate ready to serve.
#[derive(Debug)]
pub struct LoadedCert {
    /// Lower-case SAN DNS names (`*.example.com` kept as written).
    pub names: Vec<String>,
    /// Chain and signing key, as rustls serves them.
    pub key: Arc<CertifiedKey>,
    /// When the leaf expires (Unix seconds), for logs.
    pub not_after: i64,
}

/// The crypto provider the listener uses (Pingora installs `ring` as the process default);
/// keys must be loaded with the same one.
fn provider() -> Result<&'static Arc<CryptoProvider>, String> {
    // The provider Pingora installs for its listener (ring); whoever comes first installs it.
    let _ = CryptoProvider::install_default(rustls::crypto::ring::default_provider());
    CryptoProvider::get_default().ok_or_else(|| "no TLS crypto provider is installed".to_string())
}

/// Reads, parses and checks the pair at `server.tls.certs[index]`.
pub fn load(index: usize, files: &CertFiles) -> Result<LoadedCert, CertError> {
    let err = |field, problem| CertError {
        index,
        field,
        path: match field {
            Field::Cert => files.cert.clone(),
            Field::Key => files.key.clone(),
        },
        problem,
    };
    let cert_pem = read(&files.cert).map_err(|p| err(Field::Cert, p))?;
    let key_pem = read(&files.key).map_err(|p| err(Field::Key, p))?;
    from_pem(&cert_pem, &key_pem, &files.cert).map_err(|(field, p)| err(field, p))
}

/// Parses and checks a certificate chain and its key given as PEM (files, or the ACME
/// certificate kept in the database); `cert_name` names the chain in a mismatch message.
pub fn from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_name: &str,
) -> Result<LoadedCert, (Field, CertProblem)> {
    let chain = parse_chain(cert_pem).map_err(|p| (Field::Cert, p))?;
    let (names, not_after) = inspect_leaf(&chain).map_err(|p| (Field::Cert, p))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        (
            Field::Key,
            match e {
                pem::Error::NoItemsFound => CertProblem::NoKey,
                other => CertProblem::Pem(other.to_string()),
            },
        )
    })?;
    let provider = provider().map_err(|e| (Field::Key, CertProblem::BadKey(e)))?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        (
            Field::Key,
            match e {
                RusTlsError::InconsistentKeys(_) => CertProblem::KeyMismatch(cert_name.to_string()),
                other => CertProblem::BadKey(other.to_string()),
            },
        )
    })?;
    Ok(LoadedCert {
        names,
        key: Arc::new(certified),
        not_after,
    })
}

fn read(path: &str) -> Result<Vec<u8>, CertProblem> {
    std::fs::read(path).map_err(CertProblem::Unreadable)
}

fn parse_chain(pem_bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, CertProblem> {
    let chain = CertificateDer::pem_slice_iter(pem_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertProblem::Pem(e.to_string()))?;
    if chain.is_empty() {
        return Err(CertProblem::NoCertificate);
    }
    Ok(chain)
}

/// SAN DNS names and `notAfter` of the leaf; refuses an expired leaf.
fn inspect_leaf(chain: &[CertificateDer<'_>]) -> Result<(Vec<String>, i64), CertProblem> {
    let leaf = chain.first().ok_or(CertProblem::NoCertificate)?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| CertProblem::BadCertificate(e.to_string()))?;
    let validity = cert.validity();
    let not_after = validity.not_after.timestamp();
    let now = chrono::Utc::now().timestamp();
    if not_after < now {
        return Err(CertProblem::Expired(validity.not_after.to_string()));
    }
    if validity.not_before.timestamp() > now {
        tracing::warn!(not_before = %validity.not_before, "a TLS certificate is not valid yet");
    }
    let names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => {
                    Some(d.trim_end_matches('.').to_ascii_lowercase())
                }
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(CertProblem::BadCertificate(e.to_string())),
    };
    Ok((names, not_after))
}
