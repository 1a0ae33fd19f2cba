//! Secrets at rest: what the gateway keeps in the database that would hand an attacker a
//! certificate or an account (ACME account and certificate keys, and later TOTP secrets) is
//! sealed with AES-256-GCM under a data key ring that never enters the database. The ring is
//! one base64 32-byte key per line (`[secrets] key_file`, default `<keys_dir>/secrets.key`, or
//! the env var named by `key_env`): the first key seals, every key opens, so a new key is put
//! first, every instance is sent SIGHUP, `portcullis secrets rotate` re-seals what is stored,
//! and the old line is dropped. A sealed value names its key by a short fingerprint; a value no
//! key opens is an error for that value, never taken as plaintext.
//!
//! Callers see only `seal`/`open`; the key material stays in this module.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine as _;
use sha2::Digest as _;

/// The prefix of a sealed value (format version 1).
const SEALED: &str = "pcs1:";

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Why a ring could not be loaded or a value not opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The key file or variable could not be read or holds something else than keys.
    #[error("secrets key ring {0}: {1}")]
    Ring(String, String),
    /// No key of the ring opens this value (a key dropped too early, or tampering).
    #[error("no key of the secrets key ring opens this value (key {0}); was it rotated away?")]
    UnknownKey(String),
    /// The value is damaged or was altered.
    #[error("a sealed value does not open: damaged or altered")]
    Corrupt,
}

/// One data key and its fingerprint.
struct DataKey {
    id: String,
    key: LessSafeKey,
}

/// The loaded ring: the first key seals, all open.
pub struct KeyRing {
    keys: Vec<DataKey>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("KeyRing").field("key_ids", &ids).finish()
    }
}

/// Where the ring comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file, created (mode 0600, one fresh key) when missing and `generate` is asked.
    File(PathBuf),
    /// An environment variable's value.
    Env(String),
}

impl KeyRing {
    /// Parses ring text: one base64 (standard or URL-safe) 32-byte key per line; blank lines
    /// and `#` comments ignored.
    pub fn parse(text: &str, origin: &str) -> Result<KeyRing, SecretsError> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(line)
                .or_else(|_| B64.decode(line.trim_end_matches('=')))
                .map_err(|_| {
                    SecretsError::Ring(origin.into(), format!("line {}: not base64", n + 1))
                })?;
            if bytes.len() != 32 {
                return Err(SecretsError::Ring(
                    origin.into(),
                    format!("line {}: a key is 32 bytes, this is {}", n + 1, bytes.len()),
                ));
            }
            let id = hex::encode(&sha2::Sha256::digest(&bytes)[..4]);
            let unbound = UnboundKey::new(&AES_256_GCM, &bytes)
                .map_err(|_| SecretsError::Ring(origin.into(), "unusable key".into()))?;
            keys.push(DataKey {
                id,
                key: LessSafeKey::new(unbound),
            });
        }
        if keys.is_empty() {
            return Err(SecretsError::Ring(origin.into(), "holds no key".into()));
        }
        Ok(KeyRing { keys })
    }

    /// Loads the ring from `source`; a missing file is created with one fresh key when
    /// `generate` (said in the log), else an error.
    pub fn load(source: &Source, generate: bool) -> Result<KeyRing, SecretsError> {
        match source {
            Source::Env(var) => {
                let text = std::env::var(var).map_err(|_| {
                    SecretsError::Ring(format!("${var}"), "the variable is not set".into())
                })?;
                KeyRing::parse(&text, &format!("${var}"))
            }
            Source::File(path) => {
                let origin = path.display().to_string();
                match std::fs::read_to_string(path) {
                    Ok(text) => {
                        refuse_shared(path, &origin)?;
                        KeyRing::parse(&text, &origin)
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && generate => {
                        let text = match generate_file(path) {
                            Ok(text) => {
                                tracing::info!(path = %origin, "generated the secrets key ring (one data key); share it with every instance, back it up with the signing keys");
                                text
                            }
                            // Another instance sharing the directory wrote it first: use it.
                            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                                std::fs::read_to_string(path).map_err(|e| {
                                    SecretsError::Ring(origin.clone(), e.to_string())
                                })?
                            }
                            Err(e) => return Err(SecretsError::Ring(origin, e.to_string())),
                        };
                        KeyRing::parse(&text, &origin)
                    }
                    Err(e) => Err(SecretsError::Ring(origin, e.to_string())),
                }
            }
        }
    }

    /// The fingerprint of the sealing (first) key.
    pub fn current_id(&self) -> &str {
        &self.keys[0].id
    }

    /// Seals `plain` under the first key: `pcs1:<key id>:<base64url(nonce | ciphertext | tag)>`,
    /// with a fresh random nonce; the key id is authenticated too.
    pub fn seal(&self, plain: &[u8]) -> Result<String, SecretsError> {
        let key = &self.keys[0];
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let mut out = plain.to_vec();
        key.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(key.id.as_bytes()),
                &mut out,
            )
            .map_err(|_| SecretsError::Corrupt)?;
        let mut blob = nonce_bytes.to_vec();
        blob.extend_from_slice(&out);
        Ok(format!("{SEALED}{}:{}", key.id, B64.encode(blob)))
    }

    /// Opens a value sealed by [`seal`](Self::seal) under any key of the ring.
    pub fn open(&self, sealed: &str) -> Result<Vec<u8>, SecretsError> {
        let rest = sealed.strip_prefix(SEALED).ok_or(SecretsError::Corrupt)?;
        let (id, data) = rest.split_once(':').ok_or(SecretsError::Corrupt)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| SecretsError::UnknownKey(id.to_string()))?;
        let blob = B64.decode(data).map_err(|_| SecretsError::Corrupt)?;
        if blob.len() < NONCE_LEN {
            return Err(SecretsError::Corrupt);
        }
        let (nonce, cipher) = blob.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretsError::Corrupt)?;
        let mut buf = cipher.to_vec();
        let plain = key
            .key
            .open_in_place(nonce, Aad::from(key.id.as_bytes()), &mut buf)
            .map_err(|_| SecretsError::Corrupt)?;
        Ok(plain.to_vec())
    }

    /// Whether a stored value is sealed (else it is plaintext written before sealing existed).
    pub fn is_sealed(value: &str) -> bool {
        value.starts_with(SEALED)
    }

    /// Whether `value` is sealed under the current key (nothing to rotate).
    pub fn is_current(&self, value: &str) -> bool {
        value
            .strip_prefix(SEALED)
            .and_then(|r| r.split_once(':'))
            .is_some_and(|(id, _)| id == self.current_id())
    }
}

/// A ring that SIGHUP can replace while the gateway runs.
#[derive(Debug, Clone)]
pub struct Secrets {
    source: Source,
    ring: Arc<ArcSwap<KeyRing>>,
}

impl Secrets {
    /// Loads the ring from `source` (generating a missing key file when `generate`).
    pub fn load(source: Source, generate: bool) -> Result<Secrets, SecretsError> {
        let ring = KeyRing::load(&source, generate)?;
        Ok(Secrets {
            source,
            ring: Arc::new(ArcSwap::from_pointee(ring)),
        })
    }

    /// Reads the ring again (SIGHUP); on an error the old ring stays and the error is returned.
    pub fn reload(&self) -> Result<(), SecretsError> {
        let ring = KeyRing::load(&self.source, false)?;
        self.ring.store(Arc::new(ring));
        Ok(())
    }

    /// The ring now.
    pub fn ring(&self) -> Arc<KeyRing> {
        self.ring.load_full()
    }
}

/// The ring's source from `[secrets]`: `key_env` when set, else `key_file`, else
/// `<keys_dir>/secrets.key`.
pub fn source(config: &crate::config::Config) -> Source {
    let s = &config.secrets;
    if !s.key_env.is_empty() {
        Source::Env(s.key_env.clone())
    } else if !s.key_file.is_empty() {
        Source::File(PathBuf::from(&s.key_file))
    } else {
        Source::File(Path::new(&config.tokens.keys_dir).join("secrets.key"))
    }
}

fn generate_file(path: &Path) -> std::io::Result<String> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let key: [u8; 32] = rand::random();
    let text = format!(
        "# portcullis data key ring: the first key seals, every key opens (see the README)\n{}\n",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    Ok(text)
}

/// A key file others may read or write is refused, like a signing key's.
fn refuse_shared(path: &Path, origin: &str) -> Result<(), SecretsError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path)
        .map_err(|e| SecretsError::Ring(origin.into(), e.to_string()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(SecretsError::Ring(
            origin.into(),
            format!(
                "readable or writable by group or others (mode {:o}); run chmod 600",
                mode & 0o777
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_line() -> String {
        base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
    }

    #[test]
    fn the_first_key_seals_every_key_opens_and_an_unknown_key_is_an_error() {
        let (old, new) = (key_line(), key_line());
        let before = KeyRing::parse(&old, "t").unwrap();
        let sealed = before.seal(b"-----BEGIN PRIVATE KEY-----").unwrap();
        assert!(sealed.starts_with("pcs1:") && !sealed.contains("BEGIN"));
        assert_ne!(
            before.seal(b"x").unwrap(),
            before.seal(b"x").unwrap(),
            "a fresh nonce each time"
        );
        let rotated = KeyRing::parse(&format!("{new}\n{old}\n"), "t").unwrap();
        assert_eq!(
            rotated.open(&sealed).unwrap(),
            b"-----BEGIN PRIVATE KEY-----"
        );
        assert!(!rotated.is_current(&sealed));
        assert!(rotated.is_current(&rotated.seal(b"y").unwrap()));
        let after = KeyRing::parse(&new, "t").unwrap();
        assert!(matches!(
            after.open(&sealed),
            Err(SecretsError::UnknownKey(_))
        ));
    }

    #[test]
    fn a_tampered_or_malformed_value_never_opens() {
        let ring = KeyRing::parse(&key_line(), "t").unwrap();
        let sealed = ring.seal(b"secret").unwrap();
        let mut bytes = sealed.clone().into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert!(matches!(ring.open(&tampered), Err(SecretsError::Corrupt)));
        for bad in ["", "pcs1:", "pcs1:abcd", "secret", "-----BEGIN"] {
            assert!(ring.open(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ring_text_must_hold_32_byte_base64_keys() {
        assert!(KeyRing::parse("", "t").is_err());
        assert!(KeyRing::parse("# only a comment\n", "t").is_err());
        assert!(KeyRing::parse("not base64!", "t").is_err());
        let short = base64::engine::general_purpose::STANDARD.encode([1u8; 16]);
        let err = KeyRing::parse(&short, "t").unwrap_err().to_string();
        assert!(err.contains("32 bytes"), "{err}");
        assert!(KeyRing::parse(&format!("# c\n\n{}\n", key_line()), "t").is_ok());
    }

    #[test]
    fn a_missing_key_file_is_generated_owner_only_and_a_shared_one_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/secrets.key");
        assert!(KeyRing::load(&Source::File(path.clone()), false).is_err());
        let ring = KeyRing::load(&Source::File(path.clone()), true).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = KeyRing::load(&Source::File(path.clone()), true).unwrap();
        assert_eq!(ring.current_id(), again.current_id(), "generated once");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(KeyRing::load(&Source::File(path), false).is_err());
    }
}
