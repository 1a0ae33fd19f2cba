//! ACME state on SQLite: the account, pending challenges, the certificate, the ordering
//! lease. Keys are sealed under the data key ring as on PostgreSQL.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

use super::{Sqlite, micros, time};
use crate::store::{Resealed, StoreError, StoredCert};

impl Sqlite {
    pub(in crate::store) async fn acme_account(
        &self,
        directory_url: &str,
    ) -> Result<Option<String>, StoreError> {
        let url = directory_url.to_string();
        let stored: Option<String> = self
            .run(move |c| {
                Ok(c.query_row(
                    "SELECT credentials FROM acme_accounts WHERE directory_url = ?1",
                    [url],
                    |r| r.get(0),
                )
                .optional()?)
            })
            .await?;
        stored
            .map(|s| self.shared.open_secret(s, "the ACME account key"))
            .transpose()
    }

    pub(in crate::store) async fn save_acme_account(
        &self,
        directory_url: &str,
        credentials: &str,
    ) -> Result<(), StoreError> {
        let sealed = self.shared.seal_secret(credentials)?;
        let url = directory_url.to_string();
        self.write(move |c| {
            c.execute(
                "INSERT INTO acme_accounts (directory_url, credentials, created_at)
                 VALUES (?1, ?2, ?3) ON CONFLICT (directory_url) DO NOTHING",
                params![url, sealed, micros(Utc::now())],
            )?;
            Ok(())
        })
        .await
    }

    pub(in crate::store) async fn put_acme_challenge(
        &self,
        token: &str,
        key_authorization: &str,
        ttl_secs: i64,
    ) -> Result<(), StoreError> {
        let (token, key) = (token.to_string(), key_authorization.to_string());
        self.write(move |c| {
            let expires = micros(Utc::now()).saturating_add(ttl_secs.saturating_mul(1_000_000));
            c.execute(
                "INSERT INTO acme_challenges (token, key_authorization, expires_at)
                 VALUES (?1, ?2, ?3)
                 ON CONFLICT (token) DO UPDATE
                 SET key_authorization = excluded.key_authorization,
                     expires_at = excluded.expires_at",
                params![token, key, expires],
            )?;
            Ok(())
        })
        .await
    }

    pub(in crate::store) async fn acme_challenge(
        &self,
        token: &str,
    ) -> Result<Option<String>, StoreError> {
        let token = token.to_string();
        self.run(move |c| {
            Ok(c.query_row(
                "SELECT key_authorization FROM acme_challenges
                 WHERE token = ?1 AND expires_at > ?2",
                params![token, micros(Utc::now())],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }

    pub(in crate::store) async fn clear_acme_challenges(
        &self,
        tokens: &[String],
    ) -> Result<(), StoreError> {
        let tokens = tokens.to_vec();
        let tx = self.begin().await?;
        tx.run(move |c| {
            let mut stmt = c.prepare_cached("DELETE FROM acme_challenges WHERE token = ?1")?;
            for t in &tokens {
                stmt.execute([t])?;
            }
            c.execute(
                "DELETE FROM acme_challenges WHERE expires_at <= ?1",
                [micros(Utc::now())],
            )?;
            Ok(())
        })
        .await?;
        tx.commit().await
    }

    pub(in crate::store) async fn acme_certificate(
        &self,
        domains: &str,
    ) -> Result<Option<StoredCert>, StoreError> {
        let domains = domains.to_string();
        let row: Option<(String, String, i64)> = self
            .run(move |c| {
                Ok(c.query_row(
                    "SELECT cert_pem, key_pem, not_after FROM acme_certificates WHERE domains = ?1",
                    [domains],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?)
            })
            .await?;
        row.map(|(cert_pem, key, not_after)| {
            Ok(StoredCert {
                cert_pem,
                key_pem: self.shared.open_secret(key, "the ACME certificate key")?,
                not_after: time(not_after)?,
            })
        })
        .transpose()
    }

    pub(in crate::store) async fn acme_certificate_marker(
        &self,
        domains: &str,
    ) -> Result<Option<(DateTime<Utc>, DateTime<Utc>)>, StoreError> {
        let domains = domains.to_string();
        let row: Option<(i64, i64)> = self
            .run(move |c| {
                Ok(c.query_row(
                    "SELECT updated_at, not_after FROM acme_certificates WHERE domains = ?1",
                    [domains],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?)
            })
            .await?;
        row.map(|(updated, not_after)| Ok((time(updated)?, time(not_after)?)))
            .transpose()
    }

    pub(in crate::store) async fn reseal_secrets(&self) -> Result<Resealed, StoreError> {
        // No key ring, no rotation: fail before taking the write lock.
        self.shared.ring()?;
        let tx = self.begin().await?;
        let (accounts, certs) = tx
            .run(|c| {
                let accounts = c
                    .prepare("SELECT directory_url, credentials FROM acme_accounts")?
                    .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let certs = c
                    .prepare("SELECT domains, key_pem FROM acme_certificates")?
                    .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok((accounts, certs))
            })
            .await?;
        let mut done = Resealed::default();
        let mut new_accounts = Vec::new();
        for (url, stored) in accounts {
            let what = format!("the ACME account of {url}");
            if let Some(sealed) = self.shared.reseal(stored, &what, &mut done)? {
                new_accounts.push((url, sealed));
            }
        }
        let mut new_keys = Vec::new();
        for (domains, stored) in certs {
            let what = format!("the certificate key of {domains}");
            if let Some(sealed) = self.shared.reseal(stored, &what, &mut done)? {
                new_keys.push((domains, sealed));
            }
        }
        tx.run(move |c| {
            for (url, sealed) in &new_accounts {
                c.execute(
                    "UPDATE acme_accounts SET credentials = ?2 WHERE directory_url = ?1",
                    params![url, sealed],
                )?;
            }
            // updated_at is left alone: the certificate did not change, only its envelope.
            for (domains, sealed) in &new_keys {
                c.execute(
                    "UPDATE acme_certificates SET key_pem = ?2 WHERE domains = ?1",
                    params![domains, sealed],
                )?;
            }
            Ok(())
        })
        .await?;
        tx.commit().await?;
        Ok(done)
    }

    pub(in crate::store) async fn save_acme_certificate(
        &self,
        domains: &str,
        cert: &StoredCert,
    ) -> Result<(), StoreError> {
        let sealed = self.shared.seal_secret(&cert.key_pem)?;
        let (domains, pem, not_after) = (
            domains.to_string(),
            cert.cert_pem.clone(),
            micros(cert.not_after),
        );
        self.write(move |c| {
            c.execute(
                "INSERT INTO acme_certificates (domains, cert_pem, key_pem, not_after, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (domains) DO UPDATE SET cert_pem = excluded.cert_pem,
                   key_pem = excluded.key_pem, not_after = excluded.not_after,
                   updated_at = excluded.updated_at",
                params![domains, pem, sealed, not_after, micros(Utc::now())],
            )?;
            Ok(())
        })
        .await
    }

    pub(in crate::store) async fn take_acme_lease(
        &self,
        domains: &str,
        secs: i64,
    ) -> Result<bool, StoreError> {
        let domains = domains.to_string();
        self.write(move |c| {
            let now = micros(Utc::now());
            let until = now.saturating_add(secs.saturating_mul(1_000_000));
            Ok(c.query_row(
                "INSERT INTO acme_leases (domains, locked_until) VALUES (?1, ?2)
                 ON CONFLICT (domains) DO UPDATE SET locked_until = excluded.locked_until
                 WHERE acme_leases.locked_until < ?3
                 RETURNING 1",
                params![domains, until, now],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
        })
        .await
    }

    pub(in crate::store) async fn release_acme_lease(
        &self,
        domains: &str,
    ) -> Result<(), StoreError> {
        let domains = domains.to_string();
        self.write(move |c| {
            c.execute(
                "UPDATE acme_leases SET locked_until = ?2 WHERE domains = ?1",
                params![domains, micros(Utc::now())],
            )?;
            Ok(())
        })
        .await
    }
}
