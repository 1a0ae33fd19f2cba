//! ACME state in PostgreSQL, so every instance answers a challenge and serves the same
//! certificate whichever instance ordered it.

use chrono::{DateTime, Utc};

use super::{Store, StoreError};

/// The certificate stored for a set of domains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCert {
    /// Leaf first, then the chain.
    pub cert_pem: String,
    /// The certificate's private key.
    pub key_pem: String,
    /// Expiry of the leaf.
    pub not_after: DateTime<Utc>,
}

impl Store {
    /// The account credentials (JSON) registered at `directory_url`, if any.
    pub async fn acme_account(&self, directory_url: &str) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT credentials::text FROM acme_accounts WHERE directory_url = $1",
                &[&directory_url],
            )
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// Records the account credentials; the first writer wins (two instances racing to
    /// register keep one account).
    pub async fn save_acme_account(
        &self,
        directory_url: &str,
        credentials: &str,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO acme_accounts (directory_url, credentials) VALUES ($1, $2::text::jsonb)
                 ON CONFLICT (directory_url) DO NOTHING",
                &[&directory_url, &credentials],
            )
            .await?;
        Ok(())
    }

    /// Publishes the answer to an HTTP-01 challenge for `ttl_secs`.
    pub async fn put_acme_challenge(
        &self,
        token: &str,
        key_authorization: &str,
        ttl_secs: i64,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO acme_challenges (token, key_authorization, expires_at)
                 VALUES ($1, $2, now() + make_interval(secs => $3::float8))
                 ON CONFLICT (token) DO UPDATE
                 SET key_authorization = EXCLUDED.key_authorization, expires_at = EXCLUDED.expires_at",
                &[&token, &key_authorization, &(ttl_secs as f64)],
            )
            .await?;
        Ok(())
    }

    /// The key authorization for a live challenge token.
    pub async fn acme_challenge(&self, token: &str) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT key_authorization FROM acme_challenges
                 WHERE token = $1 AND expires_at > now()",
                &[&token],
            )
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// Drops answered or expired challenges.
    pub async fn clear_acme_challenges(&self, tokens: &[String]) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM acme_challenges WHERE token = ANY($1) OR expires_at <= now()",
                &[&tokens],
            )
            .await?;
        Ok(())
    }

    /// The certificate stored for `domains`.
    pub async fn acme_certificate(&self, domains: &str) -> Result<Option<StoredCert>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT cert_pem, key_pem, not_after FROM acme_certificates WHERE domains = $1",
                &[&domains],
            )
            .await?;
        row.map(|r| {
            Ok(StoredCert {
                cert_pem: r.try_get(0)?,
                key_pem: r.try_get(1)?,
                not_after: r.try_get(2)?,
            })
        })
        .transpose()
    }

    /// Stores (or replaces) the certificate for `domains`.
    pub async fn save_acme_certificate(
        &self,
        domains: &str,
        cert: &StoredCert,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO acme_certificates (domains, cert_pem, key_pem, not_after)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (domains) DO UPDATE SET cert_pem = EXCLUDED.cert_pem,
                   key_pem = EXCLUDED.key_pem, not_after = EXCLUDED.not_after, updated_at = now()",
                &[&domains, &cert.cert_pem, &cert.key_pem, &cert.not_after],
            )
            .await?;
        Ok(())
    }

    /// Takes the ordering lease for `domains` for `secs`; `false` when another instance
    /// holds it. A crashed holder's lease simply runs out.
    pub async fn take_acme_lease(&self, domains: &str, secs: i64) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "INSERT INTO acme_leases (domains, locked_until)
                 VALUES ($1, now() + make_interval(secs => $2::float8))
                 ON CONFLICT (domains) DO UPDATE SET locked_until = EXCLUDED.locked_until
                 WHERE acme_leases.locked_until < now()
                 RETURNING 1",
                &[&domains, &(secs as f64)],
            )
            .await?;
        Ok(row.is_some())
    }

    /// Gives the ordering lease back.
    pub async fn release_acme_lease(&self, domains: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE acme_leases SET locked_until = now() WHERE domains = $1",
                &[&domains],
            )
            .await?;
        Ok(())
    }
}
