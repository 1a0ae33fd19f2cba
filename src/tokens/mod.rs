//! Access tokens: issued by `auth/`, verified by `access/`, so neither reaches into the other.
//! Verification pins the configured algorithm, requires a known `kid`, refuses keys offered in
//! the header, and checks iss/aud/exp/nbf/iat with an explicit leeway.

mod keys;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use jsonwebtoken::{Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub use keys::{KeyError, KeySet, generate_key};

use crate::config::{Algorithm, Tokens};
use crate::model::{Authentication, Role, User};

/// The claims of an access token (docs/api.md, "Access token").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// User id.
    pub sub: Uuid,
    /// Role at issue time.
    pub role: Role,
    /// Session (token family) id.
    pub sid: Uuid,
    /// Token id.
    pub jti: Uuid,
    /// Issued at (unix seconds).
    pub iat: i64,
    /// Not before (unix seconds).
    pub nbf: i64,
    /// Expiry (unix seconds).
    pub exp: i64,
    /// Email at issue time.
    pub email: String,
    /// Assurance level of the session's authentication, `aal1` or `aal2` (absent in tokens
    /// issued before it existed: `aal1`).
    #[serde(default = "aal1")]
    pub acr: String,
    /// Authentication methods (RFC 8176).
    #[serde(default)]
    pub amr: Vec<String>,
    /// When the user authenticated (unix seconds; 0 when the token predates the claim, which
    /// no freshness rule accepts).
    #[serde(default)]
    pub auth_time: i64,
}

fn aal1() -> String {
    "aal1".to_string()
}

/// Why a token was refused; the reason is for logs and metrics only — every variant is the
/// same 401 to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Not a JWT, bad encoding, wrong claim types.
    #[error("malformed token")]
    Malformed,
    /// `alg` other than the pinned one (including `none`).
    #[error("algorithm not allowed")]
    Algorithm,
    /// `typ` is not `at+jwt`.
    #[error("wrong token type")]
    Type,
    /// Missing or unknown `kid`.
    #[error("unknown key id")]
    UnknownKey,
    /// The header offers its own key (`jwk`, `jku`, `x5u`, `x5c`).
    #[error("embedded key refused")]
    EmbeddedKey,
    /// Signature does not verify.
    #[error("bad signature")]
    Signature,
    /// Wrong `iss` or `aud`.
    #[error("wrong issuer or audience")]
    Audience,
    /// `exp` passed (beyond leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` or `iat` in the future (beyond leeway).
    #[error("token not yet valid")]
    NotYetValid,
}

/// Issues and verifies access tokens with the current key set (swapped on SIGHUP).
pub struct TokenService {
    config: Tokens,
    keys: ArcSwap<KeySet>,
    validation: Validation,
    /// Verified tokens by SHA-256, so repeated requests skip signature work. Expiry is still
    /// checked on every use.
    verified: moka::sync::Cache<[u8; 32], Arc<Claims>>,
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenService")
            .field("keys", &self.keys.load())
            .finish_non_exhaustive()
    }
}

fn jwt_algorithm(alg: Algorithm) -> jsonwebtoken::Algorithm {
    match alg {
        Algorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
        Algorithm::ES256 => jsonwebtoken::Algorithm::ES256,
        Algorithm::RS256 => jsonwebtoken::Algorithm::RS256,
        Algorithm::HS256 => jsonwebtoken::Algorithm::HS256,
    }
}

/// Seconds since the epoch.
pub fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

impl TokenService {
    /// Loads keys (generating one into an empty `keys_dir`) and prepares validation.
    pub fn new(config: &Tokens) -> Result<TokenService, KeyError> {
        let keys = KeySet::load(config)?;
        let mut validation = Validation::new(jwt_algorithm(config.algorithm));
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);
        validation.leeway = config.leeway_secs;
        // Times are checked by `check_times` alone, at the instant the caller gives (the
        // system clock in production), on cache hits and misses alike; jsonwebtoken's own
        // checks would read the system clock and are no stricter.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        let verified = moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(Duration::from_secs(
                config.access_ttl_secs + config.leeway_secs,
            ))
            .build();
        Ok(TokenService {
            config: config.clone(),
            keys: ArcSwap::from_pointee(keys),
            validation,
            verified,
        })
    }

    /// Re-reads the keys directory (SIGHUP). On failure the old keys stay in force.
    pub fn reload(&self) -> Result<(), KeyError> {
        let keys = KeySet::load(&self.config)?;
        tracing::info!(signing_kid = keys.signing_kid, "signing keys reloaded");
        self.keys.store(Arc::new(keys));
        self.verified.invalidate_all();
        Ok(())
    }

    /// The JWKS document of the verification keys.
    pub fn jwks(&self) -> serde_json::Value {
        self.keys.load().jwks.clone()
    }

    /// Access token lifetime in seconds.
    pub fn access_ttl_secs(&self) -> u64 {
        self.config.access_ttl_secs
    }

    /// Signs an access token for `user` in session `sid`, authenticated as `auth` says.
    pub fn issue(
        &self,
        user: &User,
        sid: Uuid,
        auth: &Authentication,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let keys = self.keys.load();
        let now = now_secs();
        let claims = Claims {
            iss: self.config.issuer.clone(),
            aud: self.config.audience.clone(),
            sub: user.id,
            role: user.role,
            sid,
            jti: Uuid::new_v4(),
            iat: now,
            nbf: now,
            exp: now + self.config.access_ttl_secs as i64,
            email: user.email.clone(),
            acr: auth.acr().to_string(),
            amr: auth.methods.clone(),
            auth_time: auth.time.timestamp(),
        };
        let mut header = Header::new(jwt_algorithm(keys.algorithm));
        header.typ = Some("at+jwt".to_string());
        header.kid = Some(keys.signing_kid.clone());
        jsonwebtoken::encode(&header, &claims, &keys.signing_key)
    }

    /// Verifies a token. A cached verification skips the signature but never the time checks.
    pub fn verify(&self, token: &str) -> Result<Arc<Claims>, VerifyError> {
        self.verify_at(token, now_secs())
    }

    /// [`verify`](Self::verify) as if the time were `now` (unix seconds): `now` is what
    /// `exp`, `nbf` and `iat` are checked against, whether the token comes from the cache or
    /// not, so tests can move the clock.
    fn verify_at(&self, token: &str, now: i64) -> Result<Arc<Claims>, VerifyError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(claims) = self.verified.get(&digest) {
            self.check_times(&claims, now)?;
            return Ok(claims);
        }
        let claims = Arc::new(self.verify_uncached_at(token, now)?);
        self.verified.insert(digest, claims.clone());
        Ok(claims)
    }

    /// Full verification without the cache (benchmarks compare the two).
    pub fn verify_uncached(&self, token: &str) -> Result<Claims, VerifyError> {
        self.verify_uncached_at(token, now_secs())
    }

    fn verify_uncached_at(&self, token: &str, now: i64) -> Result<Claims, VerifyError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| VerifyError::Algorithm)?;
        let keys = self.keys.load();
        if header.alg != jwt_algorithm(keys.algorithm) {
            return Err(VerifyError::Algorithm);
        }
        if header.jwk.is_some()
            || header.jku.is_some()
            || header.x5u.is_some()
            || header.x5c.is_some()
        {
            return Err(VerifyError::EmbeddedKey);
        }
        match header.typ.as_deref() {
            Some(t)
                if t.eq_ignore_ascii_case("at+jwt")
                    || t.eq_ignore_ascii_case("application/at+jwt") => {}
            _ => return Err(VerifyError::Type),
        }
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| keys.verifiers.get(kid))
            .ok_or(VerifyError::UnknownKey)?;
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidSignature => VerifyError::Signature,
                K::ExpiredSignature => VerifyError::Expired,
                K::ImmatureSignature => VerifyError::NotYetValid,
                K::InvalidIssuer | K::InvalidAudience => VerifyError::Audience,
                K::InvalidAlgorithm | K::InvalidAlgorithmName => VerifyError::Algorithm,
                _ => VerifyError::Malformed,
            }
        })?;
        let claims = data.claims;
        if claims.iss != self.config.issuer || claims.aud != self.config.audience {
            return Err(VerifyError::Audience);
        }
        self.check_times(&claims, now)?;
        Ok(claims)
    }

    fn check_times(&self, claims: &Claims, now: i64) -> Result<(), VerifyError> {
        let leeway = self.config.leeway_secs as i64;
        if claims.exp + leeway <= now {
            return Err(VerifyError::Expired);
        }
        if claims.nbf - leeway > now || claims.iat - leeway > now {
            return Err(VerifyError::NotYetValid);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
