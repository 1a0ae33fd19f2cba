//! Signing keys: one PKCS#8 PEM file per key in `keys_dir`, named `<kid>.pem`. The kid starts
//! with a UTC timestamp, so the newest key (greatest kid) signs and every key of the pinned
//! algorithm verifies — rotation is "generate a key, SIGHUP".

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{DecodingKey, EncodingKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::config::{Algorithm, Tokens};

/// Why keys could not be loaded or generated.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Filesystem problem with the keys directory.
    #[error("{path}: {source}")]
    Io {
        /// File or directory concerned.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A key file could not be parsed.
    #[error("{path}: not a valid {alg} PKCS#8 key: {reason}")]
    BadKey {
        /// File concerned.
        path: String,
        /// Algorithm expected.
        alg: &'static str,
        /// Parser message.
        reason: String,
    },
    /// HS256 secret missing or too short.
    #[error("{0}")]
    Secret(String),
    /// No key to sign with.
    #[error("no {0} signing key in {1}")]
    NoKey(&'static str, String),
    /// Key generation failed inside the crypto library.
    #[error("key generation failed")]
    Generate,
    /// The keys directory or a key file is writable by group or others: another local user
    /// could plant a key the gateway would then trust.
    #[error("{0}: writable by group or others (mode {1:o}); run chmod go-w on it")]
    Insecure(String, u32),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// All keys in force: the signer and every verifier, plus the JWKS document.
pub struct KeySet {
    /// The pinned algorithm.
    pub algorithm: Algorithm,
    /// kid of the signing key.
    pub signing_kid: String,
    pub(super) signing_key: EncodingKey,
    pub(super) verifiers: HashMap<String, DecodingKey>,
    /// `{"keys":[...]}` of the public keys (empty for HS256).
    pub jwks: Value,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("algorithm", &self.algorithm)
            .field("signing_kid", &self.signing_kid)
            .field("verifiers", &self.verifiers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KeySet {
    /// Loads the keys for `cfg`. For asymmetric algorithms an empty directory gets a fresh key
    /// (logged), so a first start needs no setup.
    pub fn load(cfg: &Tokens) -> Result<KeySet, KeyError> {
        if cfg.algorithm == Algorithm::HS256 {
            return Self::hs256(cfg);
        }
        let dir = Path::new(&cfg.keys_dir);
        let mut files = key_files(dir, cfg.algorithm)?;
        if files.is_empty() {
            let (kid, path) = generate_key(dir, cfg.algorithm)?;
            tracing::info!(kid, path = %path.display(), "generated a signing key (keys_dir was empty)");
            files = key_files(dir, cfg.algorithm)?;
        }
        let mut verifiers = HashMap::new();
        let mut jwks = Vec::new();
        let mut signer = None;
        for (kid, path) in &files {
            let pem_text = std::fs::read(path).map_err(io_err(path))?;
            let (encoding, decoding, jwk) =
                parse_key(cfg.algorithm, kid, &pem_text).map_err(|reason| KeyError::BadKey {
                    path: path.display().to_string(),
                    alg: cfg.algorithm.as_str(),
                    reason,
                })?;
            verifiers.insert(kid.clone(), decoding);
            jwks.push(jwk);
            signer = Some((kid.clone(), encoding)); // files are sorted: the last is newest
        }
        let (signing_kid, signing_key) =
            signer.ok_or_else(|| KeyError::NoKey(cfg.algorithm.as_str(), cfg.keys_dir.clone()))?;
        Ok(KeySet {
            algorithm: cfg.algorithm,
            signing_kid,
            signing_key,
            verifiers,
            jwks: json!({ "keys": jwks }),
        })
    }

    fn hs256(cfg: &Tokens) -> Result<KeySet, KeyError> {
        let var = cfg.hs256_secret_env.clone().unwrap_or_default();
        let secret = std::env::var(&var)
            .map_err(|_| KeyError::Secret(format!("HS256 secret env var {var} is not set")))?;
        if secret.len() < 32 {
            return Err(KeyError::Secret(format!(
                "HS256 secret in {var} must be at least 32 bytes"
            )));
        }
        let digest = Sha256::digest(secret.as_bytes());
        let kid = format!("hs256-{}", hex::encode(&digest[..8]));
        let mut verifiers = HashMap::new();
        verifiers.insert(kid.clone(), DecodingKey::from_secret(secret.as_bytes()));
        Ok(KeySet {
            algorithm: Algorithm::HS256,
            signing_kid: kid,
            signing_key: EncodingKey::from_secret(secret.as_bytes()),
            verifiers,
            jwks: json!({ "keys": [] }),
        })
    }
}

/// `(kid, path)` of every key file of `alg`, oldest first. Files of other algorithms are
/// skipped: only the pinned algorithm may verify.
fn key_files(dir: &Path, alg: Algorithm) -> Result<Vec<(String, PathBuf)>, KeyError> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    refuse_shared_writes(dir)?;
    let marker = format!("-{}-", alg.as_str().to_ascii_lowercase());
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        let Some(kid) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".pem"))
        else {
            continue;
        };
        if kid.contains(&marker) {
            refuse_shared_writes(&path)?;
            files.push((kid.to_string(), path.clone()));
        } else {
            tracing::debug!(path = %path.display(), "skipping key of another algorithm");
        }
    }
    files.sort();
    Ok(files)
}

/// Refuses a key file or directory that someone other than its owner could write to.
fn refuse_shared_writes(path: &Path) -> Result<(), KeyError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path)
            .map_err(io_err(path))?
            .permissions()
            .mode();
        if mode & 0o022 != 0 {
            return Err(KeyError::Insecure(
                path.display().to_string(),
                mode & 0o7777,
            ));
        }
    }
    Ok(())
}

/// Creates the keys directory owner-only (0700), whatever the process umask.
fn create_keys_dir(dir: &Path) -> Result<(), KeyError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(io_err(dir))?;
    refuse_shared_writes(dir)
}

/// Writes a new key of `alg` into `dir` (created if missing) and returns its kid and path.
/// The file is written under a temporary name and renamed, so no half-written key is loaded.
pub fn generate_key(dir: &Path, alg: Algorithm) -> Result<(String, PathBuf), KeyError> {
    let der: Vec<u8> = match alg {
        Algorithm::EdDSA => Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
            .map_err(|_| KeyError::Generate)?
            .as_ref()
            .to_vec(),
        Algorithm::ES256 => EcdsaKeyPair::generate_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &aws_lc_rs::rand::SystemRandom::new(),
        )
        .map_err(|_| KeyError::Generate)?
        .as_ref()
        .to_vec(),
        Algorithm::RS256 => aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .map_err(|_| KeyError::Generate)?
            .as_der()
            .map_err(|_| KeyError::Generate)?
            .as_ref()
            .to_vec(),
        Algorithm::HS256 => {
            return Err(KeyError::Secret(
                "HS256 uses a shared secret from the environment; there is no key file to generate"
                    .into(),
            ));
        }
    };
    create_keys_dir(dir)?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.9fZ");
    let kid = format!(
        "{stamp}-{}-{}",
        alg.as_str().to_ascii_lowercase(),
        hex::encode(rand::random::<[u8; 4]>())
    );
    let path = dir.join(format!("{kid}.pem"));
    let tmp = dir.join(format!(".{kid}.pem.tmp"));
    let text = pem::encode(&pem::Pem::new("PRIVATE KEY", der));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp).map_err(io_err(&tmp))?;
    file.write_all(text.as_bytes()).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
    Ok((kid, path))
}

/// Signer, verifier and JWK of one PEM key.
fn parse_key(
    alg: Algorithm,
    kid: &str,
    pem_text: &[u8],
) -> Result<(EncodingKey, DecodingKey, Value), String> {
    let parsed = pem::parse(pem_text).map_err(|e| e.to_string())?;
    let der = parsed.contents();
    match alg {
        Algorithm::EdDSA => {
            let pair = Ed25519KeyPair::from_pkcs8(der).map_err(|e| e.to_string())?;
            let x = B64.encode(pair.public_key().as_ref());
            Ok((
                EncodingKey::from_ed_der(der),
                DecodingKey::from_ed_components(&x).map_err(|e| e.to_string())?,
                json!({"kty":"OKP","crv":"Ed25519","x":x,"kid":kid,"alg":"EdDSA","use":"sig"}),
            ))
        }
        Algorithm::ES256 => {
            let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
                .map_err(|e| e.to_string())?;
            let point = pair.public_key().as_ref();
            if point.len() != 65 {
                return Err("unexpected EC public key length".into());
            }
            let x = B64.encode(&point[1..33]);
            let y = B64.encode(&point[33..65]);
            Ok((
                EncodingKey::from_ec_der(der),
                DecodingKey::from_ec_components(&x, &y).map_err(|e| e.to_string())?,
                json!({"kty":"EC","crv":"P-256","x":x,"y":y,"kid":kid,"alg":"ES256","use":"sig"}),
            ))
        }
        Algorithm::RS256 => {
            let pair = aws_lc_rs::rsa::KeyPair::from_pkcs8(der).map_err(|e| e.to_string())?;
            let public = pair.public_key();
            let n = B64.encode(public.modulus().big_endian_without_leading_zero());
            let e = B64.encode(public.exponent().big_endian_without_leading_zero());
            Ok((
                EncodingKey::from_rsa_pem(pem_text).map_err(|e| e.to_string())?,
                DecodingKey::from_rsa_components(&n, &e).map_err(|e| e.to_string())?,
                json!({"kty":"RSA","n":n,"e":e,"kid":kid,"alg":"RS256","use":"sig"}),
            ))
        }
        Algorithm::HS256 => Err("HS256 has no key files".into()),
    }
}
