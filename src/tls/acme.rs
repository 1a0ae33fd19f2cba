//! Automatic certificates (ACME, RFC 8555, HTTP-01). The account, the pending challenges and
//! the certificate live in PostgreSQL, so any instance can answer the CA's challenge request
//! and every instance serves the same certificate; a lease in the database lets one instance
//! at a time talk to the CA. Until the first certificate is issued the listener serves a
//! self-signed placeholder; a failed order or renewal is logged and retried with backoff while
//! the certificate already served keeps serving.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};

use super::certs::{self, LoadedCert};
use super::resolver::CertResolver;
use crate::config::Acme;
use crate::store::{Store, StoreError, StoredCert};

/// How often every instance looks for a new certificate in the database (and whether renewal
/// is due): a certificate ordered by one instance reaches the others within this.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// How long one instance may hold the ordering lease (a crashed holder's lease runs out).
const LEASE_SECS: i64 = 600;
/// How long a published challenge answer stays valid.
const CHALLENGE_TTL_SECS: i64 = 600;
/// Longest wait between retries after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// Why an ACME step failed (logged; the served certificate is kept).
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The CA refused or could not be reached.
    #[error("ACME: {0}")]
    Protocol(#[from] instant_acme::Error),
    /// The database could not be reached.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The CA offered no HTTP-01 challenge for a name.
    #[error("the CA offers no http-01 challenge for {0}")]
    NoHttp01(String),
    /// An authorization or the order ended in a state other than the one needed.
    #[error("the order is {0}")]
    Order(String),
    /// The issued certificate (or the placeholder) could not be used.
    #[error("certificate: {0}")]
    Certificate(String),
    /// `acme.ca_cert` could not be read.
    #[error("acme.ca_cert: {0}")]
    CaCert(String),
}

/// The certificate manager of one instance.
pub struct AcmeManager {
    config: Acme,
    /// Sorted, lower-case, comma-separated names: the database key of the certificate.
    key: String,
    store: Store,
    resolver: Arc<CertResolver>,
    /// The chain currently installed from the database (to skip re-parsing it every check).
    installed: Mutex<Option<String>>,
    /// The stored certificate's write time when it was last read: the change marker polled
    /// every check, so the (sealed) key is read and opened only when it changed.
    seen: Mutex<Option<chrono::DateTime<chrono::Utc>>>,
}

impl std::fmt::Debug for AcmeManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeManager")
            .field("domains", &self.key)
            .finish_non_exhaustive()
    }
}

/// The database key of a certificate for `domains`.
pub fn domains_key(domains: &[String]) -> String {
    let mut names: Vec<String> = domains.iter().map(|d| d.to_ascii_lowercase()).collect();
    names.sort();
    names.dedup();
    names.join(",")
}

/// A self-signed certificate for `domains`, served until the CA has issued the real one.
pub fn placeholder(domains: &[String]) -> Result<LoadedCert, AcmeError> {
    let key = rcgen::KeyPair::generate().map_err(|e| AcmeError::Certificate(e.to_string()))?;
    let params = rcgen::CertificateParams::new(domains.to_vec())
        .map_err(|e| AcmeError::Certificate(e.to_string()))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| AcmeError::Certificate(e.to_string()))?;
    certs::from_pem(
        cert.pem().as_bytes(),
        key.serialize_pem().as_bytes(),
        "the ACME placeholder",
    )
    .map_err(|(_, p)| AcmeError::Certificate(p.to_string()))
}

impl AcmeManager {
    /// A manager for `config` that installs into `resolver`; the placeholder is installed at
    /// once, so the listener has a certificate before the first check.
    pub fn new(
        config: Acme,
        store: Store,
        resolver: Arc<CertResolver>,
    ) -> Result<AcmeManager, AcmeError> {
        resolver.set_acme(placeholder(&config.domains)?);
        Ok(AcmeManager {
            key: domains_key(&config.domains),
            config,
            store,
            resolver,
            installed: Mutex::new(None),
            seen: Mutex::new(None),
        })
    }

    /// Checks, orders and renews until the process ends; failures back off exponentially.
    pub async fn run(&self) {
        let mut backoff = CHECK_EVERY;
        loop {
            match self.check().await {
                Ok(()) => backoff = CHECK_EVERY,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_secs = backoff.as_secs(), domains = %self.key,
                        "ACME certificate check failed; the current certificate keeps serving");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            }
            tokio::time::sleep(CHECK_EVERY).await;
        }
    }

    /// One round: install what the database holds; order when nothing valid is there or
    /// renewal is due and no other instance is ordering.
    pub async fn check(&self) -> Result<(), AcmeError> {
        let marker = self.store.acme_certificate_marker(&self.key).await?;
        if let Some((written, _)) = marker {
            let seen = *self
                .seen
                .lock()
                .map_err(|_| AcmeError::Certificate("poisoned lock".into()))?;
            if seen != Some(written) {
                // Changed (or never read): read it, open its key, check it, serve it.
                if let Some(cert) = self.store.acme_certificate(&self.key).await? {
                    self.install(&cert)?;
                }
                if let Ok(mut seen) = self.seen.lock() {
                    *seen = Some(written);
                }
            }
        }
        let renew_before = chrono::Duration::days(self.config.renew_before_days as i64);
        let due = marker.is_none_or(|(_, not_after)| not_after - chrono::Utc::now() < renew_before);
        if !due || !self.store.take_acme_lease(&self.key, LEASE_SECS).await? {
            return Ok(());
        }
        tracing::info!(domains = %self.key, renewal = marker.is_some(), "ordering a certificate");
        // The lease is given back only once the certificate is saved (or ordering failed):
        // released earlier, another instance would find no certificate and no lease, and
        // order a second one.
        let saved = match self.order().await {
            Ok(cert) => self
                .store
                .save_acme_certificate(&self.key, &cert)
                .await
                .map(|()| cert)
                .map_err(AcmeError::from),
            Err(e) => Err(e),
        };
        if let Err(e) = self.store.release_acme_lease(&self.key).await {
            tracing::warn!(error = %e, "could not release the ACME lease; it runs out by itself");
        }
        let cert = saved?;
        self.install(&cert)?;
        tracing::info!(domains = %self.key, not_after = %cert.not_after, "certificate issued");
        Ok(())
    }

    /// Serves `cert` unless it is the one already served.
    fn install(&self, cert: &StoredCert) -> Result<(), AcmeError> {
        let mut installed = self
            .installed
            .lock()
            .map_err(|_| AcmeError::Certificate("poisoned lock".into()))?;
        if installed.as_deref() == Some(cert.cert_pem.as_str()) {
            return Ok(());
        }
        let loaded = certs::from_pem(
            cert.cert_pem.as_bytes(),
            cert.key_pem.as_bytes(),
            "the ACME certificate",
        )
        .map_err(|(_, p)| AcmeError::Certificate(p.to_string()))?;
        // What the database holds is served only when it is what was asked for: every
        // configured name covered, and not expired (the key matching it was checked above).
        let uncovered: Vec<&String> = self
            .config
            .domains
            .iter()
            .filter(|d| !super::resolver::covers(&loaded.names, d))
            .collect();
        if !uncovered.is_empty() {
            return Err(AcmeError::Certificate(format!(
                "the stored certificate does not cover {uncovered:?}; not served"
            )));
        }
        if loaded.not_after <= chrono::Utc::now().timestamp() {
            return Err(AcmeError::Certificate(
                "the stored certificate has expired; not served".into(),
            ));
        }
        self.resolver.set_acme(loaded);
        *installed = Some(cert.cert_pem.clone());
        Ok(())
    }

    /// The account at the CA: the one stored for this directory, or a new one (stored).
    async fn account(&self) -> Result<Account, AcmeError> {
        let builder = || -> Result<_, AcmeError> {
            if self.config.ca_cert.is_empty() {
                Ok(Account::builder()?)
            } else {
                Account::builder_with_root(&self.config.ca_cert)
                    .map_err(|e| AcmeError::CaCert(e.to_string()))
            }
        };
        let url = &self.config.directory_url;
        if let Some(json) = self.store.acme_account(url).await? {
            let credentials: AccountCredentials = serde_json::from_str(&json)
                .map_err(|e| AcmeError::Certificate(format!("stored account: {e}")))?;
            return Ok(builder()?.from_credentials(credentials).await?);
        }
        let contact: Vec<&str> = self.config.contact.iter().map(String::as_str).collect();
        let (account, credentials) = builder()?
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                url.clone(),
                None,
            )
            .await?;
        let json = serde_json::to_string(&credentials)
            .map_err(|e| AcmeError::Certificate(e.to_string()))?;
        self.store.save_acme_account(url, &json).await?;
        Ok(account)
    }

    /// Orders a certificate: HTTP-01 answers published in the database, then finalize.
    async fn order(&self) -> Result<StoredCert, AcmeError> {
        let account = self.account().await?;
        let identifiers: Vec<Identifier> = self
            .config
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
        let mut tokens = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(AcmeError::Order(format!("authorization {other:?}"))),
            }
            let name = format!("{:?}", authz.identifier());
            let mut challenge = authz
                .challenge(ChallengeType::Http01)
                .ok_or(AcmeError::NoHttp01(name))?;
            let answer = challenge.key_authorization();
            self.store
                .put_acme_challenge(&challenge.token, answer.as_str(), CHALLENGE_TTL_SECS)
                .await?;
            tokens.push(challenge.token.clone());
            challenge.set_ready().await?;
        }
        let retries = RetryPolicy::new().timeout(Duration::from_secs(90));
        let status = order.poll_ready(&retries).await?;
        let result = async {
            if status != OrderStatus::Ready {
                return Err(AcmeError::Order(format!("{status:?}")));
            }
            let key_pem = order.finalize().await?;
            let cert_pem = order.poll_certificate(&retries).await?;
            let loaded = certs::from_pem(
                cert_pem.as_bytes(),
                key_pem.as_bytes(),
                "the new certificate",
            )
            .map_err(|(_, p)| AcmeError::Certificate(p.to_string()))?;
            let not_after = chrono::DateTime::from_timestamp(loaded.not_after, 0)
                .ok_or_else(|| AcmeError::Certificate("bad notAfter".into()))?;
            Ok(StoredCert {
                cert_pem,
                key_pem,
                not_after,
            })
        }
        .await;
        if let Err(e) = self.store.clear_acme_challenges(&tokens).await {
            tracing::debug!(error = %e, "could not clear answered ACME challenges");
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_domains_key_ignores_order_case_and_repeats() {
        let a = domains_key(&["B.test".into(), "a.test".into(), "b.test".into()]);
        assert_eq!(a, "a.test,b.test");
    }

    #[test]
    fn the_placeholder_covers_the_configured_names() {
        let cert = placeholder(&["gw.test".into(), "www.gw.test".into()]).unwrap();
        assert_eq!(cert.names, vec!["gw.test", "www.gw.test"]);
        assert!(cert.not_after > chrono::Utc::now().timestamp());
    }
}
