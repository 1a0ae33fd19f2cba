//! ACME state in PostgreSQL, so every instance answers a challenge and serves the same
//! certificate whichever instance ordered it.

use chrono::{DateTime, Utc};

use super::Postgres;
use crate::secrets::KeyRing;
use crate::store::{Resealed, StoreError, StoredCert};

/// The account column is `jsonb`: a sealed value is stored as a JSON string, legacy
/// plaintext as the credentials object itself.
fn unwrap_sealed_json(stored: String) -> String {
    match serde_json::from_str::<String>(&stored) {
        Ok(inner) if KeyRing::is_sealed(&inner) => inner,
        _ => stored,
    }
}

impl Postgres {
    /// The account credentials (JSON) registered at `directory_url`, if any.
    pub(in crate::store) async fn acme_account(
        &self,
        directory_url: &str,
    ) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT credentials::text FROM acme_accounts WHERE directory_url = $1",
                &[&directory_url],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let stored: String = row.try_get(0)?;
        Ok(Some(self.shared.open_secret(
            unwrap_sealed_json(stored),
            "the ACME account key",
        )?))
    }

    /// Records the account credentials; the first writer wins (two instances racing to
    /// register keep one account).
    pub(in crate::store) async fn save_acme_account(
        &self,
        directory_url: &str,
        credentials: &str,
    ) -> Result<(), StoreError> {
        let sealed = self.shared.seal_secret(credentials)?;
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO acme_accounts (directory_url, credentials) VALUES ($1, to_jsonb($2::text))
                 ON CONFLICT (directory_url) DO NOTHING",
                &[&directory_url, &sealed],
            )
            .await?;
        Ok(())
    }

    /// Publishes the answer to an HTTP-01 challenge for `ttl_secs`.
    pub(in crate::store) async fn put_acme_challenge(
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
    pub(in crate::store) async fn acme_challenge(
        &self,
        token: &str,
    ) -> Result<Option<String>, StoreError> {
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
    pub(in crate::store) async fn clear_acme_challenges(
        &self,
        tokens: &[String],
    ) -> Result<(), StoreError> {
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
    pub(in crate::store) async fn acme_certificate(
        &self,
        domains: &str,
    ) -> Result<Option<StoredCert>, StoreError> {
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
                key_pem: self
                    .shared
                    .open_secret(r.try_get(1)?, "the ACME certificate key")?,
                not_after: r.try_get(2)?,
            })
        })
        .transpose()
    }

    /// What changes when the stored certificate does (its write time) and its expiry: what
    /// instances poll, so the key itself is read (and opened) only when it changed.
    pub(in crate::store) async fn acme_certificate_marker(
        &self,
        domains: &str,
    ) -> Result<Option<(DateTime<Utc>, DateTime<Utc>)>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT updated_at, not_after FROM acme_certificates WHERE domains = $1",
                &[&domains],
            )
            .await?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
    }

    /// Seals every stored secret under the ring's first key (`portcullis secrets rotate`), in
    /// one transaction: a value no key opens fails the whole run and nothing is written.
    pub(in crate::store) async fn reseal_secrets(&self) -> Result<Resealed, StoreError> {
        // No key ring, no rotation: fail before locking anything.
        self.shared.ring()?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let mut done = Resealed::default();
        let accounts = tx
            .query(
                "SELECT directory_url, credentials::text FROM acme_accounts FOR UPDATE",
                &[],
            )
            .await?;
        for row in accounts {
            let url: String = row.try_get(0)?;
            let stored = unwrap_sealed_json(row.try_get(1)?);
            let what = format!("the ACME account of {url}");
            let Some(sealed) = self.shared.reseal(stored, &what, &mut done)? else {
                continue;
            };
            tx.execute(
                "UPDATE acme_accounts SET credentials = to_jsonb($2::text) WHERE directory_url = $1",
                &[&url, &sealed],
            )
            .await?;
        }
        let certs = tx
            .query(
                "SELECT domains, key_pem FROM acme_certificates FOR UPDATE",
                &[],
            )
            .await?;
        for row in certs {
            let domains: String = row.try_get(0)?;
            let stored: String = row.try_get(1)?;
            let what = format!("the certificate key of {domains}");
            let Some(sealed) = self.shared.reseal(stored, &what, &mut done)? else {
                continue;
            };
            // updated_at is left alone: the certificate did not change, only its envelope.
            tx.execute(
                "UPDATE acme_certificates SET key_pem = $2 WHERE domains = $1",
                &[&domains, &sealed],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(done)
    }

    /// Stores (or replaces) the certificate for `domains`.
    pub(in crate::store) async fn save_acme_certificate(
        &self,
        domains: &str,
        cert: &StoredCert,
    ) -> Result<(), StoreError> {
        let sealed = self.shared.seal_secret(&cert.key_pem)?;
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO acme_certificates (domains, cert_pem, key_pem, not_after)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (domains) DO UPDATE SET cert_pem = EXCLUDED.cert_pem,
                   key_pem = EXCLUDED.key_pem, not_after = EXCLUDED.not_after,
                   updated_at = clock_timestamp()",
                &[&domains, &cert.cert_pem, &sealed, &cert.not_after],
            )
            .await?;
        Ok(())
    }

    /// Takes the ordering lease for `domains` for `secs`; `false` when another instance
    /// holds it. A crashed holder's lease simply runs out.
    pub(in crate::store) async fn take_acme_lease(
        &self,
        domains: &str,
        secs: i64,
    ) -> Result<bool, StoreError> {
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
    pub(in crate::store) async fn release_acme_lease(
        &self,
        domains: &str,
    ) -> Result<(), StoreError> {
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
