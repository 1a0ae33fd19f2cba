//! Login through external OpenID Connect providers (docs/api.md, "OIDC login"): authorization code flow with
//! PKCE S256, `state` and `nonce`; ID tokens verified by the `openidconnect` crate against the
//! provider's JWKS. States and one-time login codes live in PostgreSQL, hashed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet,
    EndpointSet, IssuerUrl, Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope,
    TokenResponse,
};
use sha2::{Digest, Sha256};

use super::{AuthError, ClientInfo, audit, email};
use crate::config::Oidc;
use crate::model::AuditKind;
use crate::model::User;
use crate::store::{OidcLink, OidcState, Store};

/// A client built from discovery metadata: authorization endpoint known, token endpoint
/// and userinfo as the provider advertised them.
type ProviderClient = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// Lifetime of the one-time login code handed to the browser.
const LOGIN_CODE_TTL_SECS: i64 = 60;

/// Why an OIDC step failed; each is a clear error for the browser, never a token.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// No provider of that name (404).
    #[error("no identity provider named {0:?}")]
    UnknownProvider(String),
    /// `redirect_to` missing or not under `allowed_redirects` (400).
    #[error("redirect_to must start with one of the provider's allowed_redirects")]
    BadRedirect,
    /// The callback's state is unknown, used, expired or for another provider (400).
    #[error("the login request is unknown, already used or expired; start again")]
    BadState,
    /// The provider answered with an error or could not be reached (502).
    #[error("the identity provider failed: {0}")]
    Provider(String),
    /// The ID token did not verify (401).
    #[error("the identity provider's ID token is invalid: {0}")]
    InvalidIdToken(String),
    /// Auth-level failure (store down, disabled account…).
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// Where the browser goes after the callback.
#[derive(Debug, Clone)]
pub struct CallbackRedirect {
    /// Full URL for the `Location` header.
    pub location: String,
    /// Whether it carries a login code (false: it carries `error=…`).
    pub success: bool,
    /// A login started from the sign-in page: the account to open a cookie session for
    /// (`None` when it failed), instead of a login code in `location`.
    pub browser: Option<Option<User>>,
}

/// Where a provider login ends.
#[derive(Debug, Clone, Copy)]
pub enum Return<'a> {
    /// An API client: `redirect_to` (checked against `allowed_redirects`) with a one-time
    /// login code to exchange.
    LoginCode(Option<&'a str>),
    /// The sign-in page: the session cookies and a 303 to `rd` (already made safe by the
    /// caller, under the `[browser]` rules).
    Browser(&'a str),
}

/// The configured providers plus what the flow needs.
pub struct OidcService {
    providers: HashMap<String, Oidc>,
    store: Store,
    http: openidconnect::reqwest::Client,
    metadata: moka::future::Cache<String, Arc<CoreProviderMetadata>>,
}

impl std::fmt::Debug for OidcService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcService")
            .field("providers", &self.providers.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn sha256(s: &str) -> Vec<u8> {
    Sha256::digest(s.as_bytes()).to_vec()
}

fn random_token() -> String {
    B64.encode(rand::random::<[u8; 32]>())
}

/// `url` with `params` appended to its query.
fn with_query(url: &str, params: &[(&str, &str)]) -> String {
    let mut out = url.to_string();
    let mut sep = if url.contains('?') { '&' } else { '?' };
    for (k, v) in params {
        out.push(sep);
        out.push_str(&form_urlencoded::byte_serialize(k.as_bytes()).collect::<String>());
        out.push('=');
        out.push_str(&form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>());
        sep = '&';
    }
    out
}

impl OidcService {
    /// Builds the service for the configured providers (no network until first use).
    pub fn new(providers: &[Oidc], store: Store) -> Result<OidcService, OidcError> {
        let http = openidconnect::reqwest::Client::builder()
            // Following redirects would open the gateway to SSRF through the provider.
            .redirect(openidconnect::reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| OidcError::Provider(e.to_string()))?;
        Ok(OidcService {
            providers: providers
                .iter()
                .map(|p| (p.name.clone(), p.clone()))
                .collect(),
            store,
            http,
            metadata: moka::future::Cache::builder()
                .time_to_live(Duration::from_secs(3600))
                .build(),
        })
    }

    fn provider(&self, name: &str) -> Result<&Oidc, OidcError> {
        self.providers
            .get(name)
            .ok_or_else(|| OidcError::UnknownProvider(name.to_string()))
    }

    async fn client(&self, provider: &Oidc) -> Result<ProviderClient, OidcError> {
        let issuer = IssuerUrl::new(provider.issuer.clone())
            .map_err(|e| OidcError::Provider(format!("bad issuer URL: {e}")))?;
        let http = self.http.clone();
        let metadata = self
            .metadata
            .try_get_with(provider.name.clone(), async move {
                CoreProviderMetadata::discover_async(issuer, &http)
                    .await
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| OidcError::Provider(format!("discovery failed: {e}")))?;
        let secret = std::env::var(&provider.client_secret_env)
            .ok()
            .map(ClientSecret::new);
        let redirect = RedirectUrl::new(provider.redirect_uri.clone())
            .map_err(|e| OidcError::Provider(format!("bad redirect_uri: {e}")))?;
        let client = CoreClient::from_provider_metadata(
            (*metadata).clone(),
            ClientId::new(provider.client_id.clone()),
            secret,
        )
        .set_redirect_uri(redirect);
        Ok(client)
    }

    /// Starts a login: records state, nonce and PKCE verifier, returns the provider URL.
    pub async fn login_url(&self, name: &str, back: Return<'_>) -> Result<String, OidcError> {
        let provider = self.provider(name)?;
        let (redirect_to, for_browser) = match back {
            Return::LoginCode(redirect_to) => {
                let checked = redirect_to
                    .filter(|r| {
                        provider
                            .allowed_redirects
                            .iter()
                            .any(|a| r.starts_with(a.as_str()))
                    })
                    .ok_or(OidcError::BadRedirect)?;
                (checked, false)
            }
            Return::Browser(rd) => (rd, true),
        };
        let client = self.client(provider).await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let state = random_token();
        let nonce = random_token();
        let mut request = client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            {
                let state = state.clone();
                move || CsrfToken::new(state)
            },
            {
                let nonce = nonce.clone();
                move || Nonce::new(nonce)
            },
        );
        for scope in provider.scopes.iter().filter(|s| *s != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, _, _) = request.set_pkce_challenge(challenge).url();
        self.store
            .save_oidc_state(
                &sha256(&state),
                &OidcState {
                    provider: name.to_string(),
                    nonce,
                    pkce_verifier: verifier.secret().clone(),
                    redirect_to: redirect_to.to_string(),
                    for_browser,
                },
            )
            .await
            .map_err(AuthError::from)?;
        Ok(url.to_string())
    }

    /// Finishes a login: checks the state, exchanges the code, verifies the ID token, finds or
    /// links or creates the account, and returns the browser's next stop.
    pub async fn callback(
        &self,
        name: &str,
        code: Option<&str>,
        state: Option<&str>,
        provider_error: Option<&str>,
        client_info: &ClientInfo,
    ) -> Result<CallbackRedirect, OidcError> {
        let provider = self.provider(name)?;
        let pending = match state {
            Some(s) => self
                .store
                .take_oidc_state(&sha256(s), name)
                .await
                .map_err(AuthError::from)?,
            None => None,
        };
        let pending = pending.ok_or(OidcError::BadState)?;
        if let Some(err) = provider_error {
            return Err(OidcError::Provider(format!(
                "the provider returned {err:?}"
            )));
        }
        let code = code.ok_or_else(|| OidcError::Provider("no code in the callback".into()))?;
        let client = self.client(provider).await?;
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| OidcError::Provider(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.pkce_verifier.clone()))
            .request_async(&self.http)
            .await
            .map_err(|e| OidcError::Provider(format!("code exchange failed: {e}")))?;
        let id_token = response
            .id_token()
            .ok_or_else(|| OidcError::InvalidIdToken("no id_token in the token response".into()))?;
        let nonce = Nonce::new(pending.nonce.clone());
        let claims = match id_token.claims(&client.id_token_verifier(), &nonce) {
            Ok(claims) => claims,
            Err(first) => {
                // The provider may have rotated its keys since discovery was cached: fetch the
                // metadata (and JWKS) again and verify once more before refusing.
                tracing::info!(error = %first, provider = name, "ID token did not verify; refreshing provider keys");
                self.metadata.invalidate(&provider.name).await;
                let fresh = self.client(provider).await?;
                id_token
                    .claims(&fresh.id_token_verifier(), &nonce)
                    .map_err(|e| OidcError::InvalidIdToken(e.to_string()))?
            }
        };
        let subject = claims.subject().as_str().to_string();
        let email = match claims.email() {
            Some(e) => Some(email::parse(e.as_str()).map_err(|m| {
                OidcError::InvalidIdToken(format!("the provider's email is not usable: {m}"))
            })?),
            None => None,
        };
        let verified = claims.email_verified().unwrap_or(false);
        let link = self
            .store
            .link_oidc_identity(
                name,
                &subject,
                email.as_ref().map(|(e, c)| (e.as_str(), c.as_str())),
                verified,
            )
            .await
            .map_err(AuthError::from)?;
        let user = match link {
            Some(OidcLink::User(user)) => user,
            Some(OidcLink::Linked { user, created }) => {
                let me = Some(user.id);
                let detail = serde_json::json!({"provider": name, "account_created": created});
                let event = audit::event(AuditKind::OidcLinked, me, me, client_info, detail);
                audit::record(&self.store, event).await;
                user
            }
            Some(OidcLink::EmailTaken) => {
                return Ok(CallbackRedirect {
                    location: with_query(&pending.redirect_to, &[("error", "email_taken")]),
                    success: false,
                    browser: pending.for_browser.then_some(None),
                });
            }
            None => {
                return Err(OidcError::InvalidIdToken(
                    "the provider gave no email for an unknown account".into(),
                ));
            }
        };
        if !user.is_active {
            return Err(AuthError::AccountDisabled.into());
        }
        if pending.for_browser {
            return Ok(CallbackRedirect {
                location: pending.redirect_to,
                success: true,
                browser: Some(Some(user)),
            });
        }
        let login_code = random_token();
        self.store
            .save_login_code(&sha256(&login_code), user.id, LOGIN_CODE_TTL_SECS)
            .await
            .map_err(AuthError::from)?;
        Ok(CallbackRedirect {
            location: with_query(&pending.redirect_to, &[("login_code", &login_code)]),
            success: true,
            browser: None,
        })
    }

    /// Redeems a one-time login code for its (active) user.
    pub async fn redeem(&self, login_code: &str) -> Result<User, AuthError> {
        let user = self
            .store
            .take_login_code(&sha256(login_code))
            .await?
            .ok_or(AuthError::InvalidToken)?;
        if !user.is_active {
            return Err(AuthError::AccountDisabled);
        }
        Ok(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_appended_and_encoded() {
        assert_eq!(
            with_query("https://app/x", &[("login_code", "a b")]),
            "https://app/x?login_code=a+b"
        );
        assert_eq!(
            with_query("https://app/x?y=1", &[("error", "email_taken")]),
            "https://app/x?y=1&error=email_taken"
        );
    }
}
