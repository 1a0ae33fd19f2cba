//! The sign-in, sign-up and sign-out pages (`[browser]`): HTML forms that end in the two
//! session cookies, with the rules of `/auth/login` and `/auth/register` (same rate limits,
//! one generic error) and the cross-site checks of cookie-authenticated writes. 404 while
//! `[browser]` is off.

use serde::Deserialize;

use super::{Call, Reply};
use crate::access::browser::{self as cookies_of, CookieNames};
use crate::auth::{AuthError, RefreshResult, TokenPair};
use crate::proxy::browser::{cleared_cookies, session_cookies};
use crate::proxy::pages::{self, Form};
use crate::proxy::respond::{self, ApiError};

#[derive(Deserialize)]
struct SignIn {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    rd: Option<String>,
}

#[derive(Deserialize)]
struct SignOut {}

/// The one message of a failed sign-in, whatever failed (no account oracle).
const WRONG: &str = "Wrong email or password.";

impl Call<'_> {
    /// The cookie names, or 404 while `[browser]` is off.
    pub(super) fn cookie_names(&self) -> Result<CookieNames, ApiError> {
        self.shared
            .live
            .load()
            .cookies
            .clone()
            .ok_or_else(ApiError::not_found)
    }

    /// `rd` made safe (this site or an allowed host; `/` otherwise).
    pub(super) fn rd(&self, rd: Option<&str>) -> String {
        let live = self.shared.live.load();
        let host = self
            .session
            .req_header()
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| {
                self.session
                    .req_header()
                    .uri
                    .authority()
                    .map(|a| a.as_str())
            });
        cookies_of::safe_redirect(rd, host, &live.config.browser.allowed_redirect_hosts)
    }

    /// Whether this form post comes from this site (Fetch Metadata and `Origin`, §9).
    pub(super) fn same_origin(&self) -> bool {
        let req = self.session.req_header();
        let tls = self
            .session
            .digest()
            .is_some_and(|d| d.ssl_digest.is_some());
        let own = self
            .shared
            .forwarding
            .external_origin(self.ctx.peer_ip, req, tls);
        let live = self.shared.live.load();
        cookies_of::same_origin_write(&req.headers, &own, &live.config.browser.trusted_origins)
    }

    /// The form page with `status`.
    pub(super) async fn form(
        &mut self,
        status: u16,
        error: Option<&str>,
        email: &str,
        rd: &str,
        register: bool,
    ) -> u16 {
        let live = self.shared.live.load();
        let browser = &live.config.browser;
        let providers: Vec<String> = live.config.oidc.iter().map(|p| p.name.clone()).collect();
        let title = if register {
            "Create an account"
        } else {
            browser.title.as_str()
        };
        let html = pages::login(&Form {
            title,
            error,
            email,
            rd,
            providers: &providers,
            register,
            other_form: browser.registration,
        });
        drop(live);
        respond::page(self.session, status, html, &[], &self.ctx.request_id).await
    }

    /// Signed in: both cookies, then 303 to `rd`.
    pub(super) async fn signed_in(
        &mut self,
        names: &CookieNames,
        pair: &TokenPair,
        rd: &str,
    ) -> u16 {
        self.ctx.user_id = Some(pair.user.id);
        let cookies = session_cookies(names, pair);
        let extra = [
            ("Set-Cookie", cookies[0].as_str()),
            ("Set-Cookie", cookies[1].as_str()),
        ];
        respond::redirect_with(self.session, 303, rd, &extra, &self.ctx.request_id).await
    }

    /// A refusal as a page: 403 cross-site, 429 with `Retry-After`, 503 and the like.
    pub(super) async fn page_for(&mut self, err: AuthError) -> Result<u16, ApiError> {
        let rid = self.ctx.request_id.clone();
        match err {
            AuthError::RateLimited(secs) => {
                self.shared.metrics.auth_event("rate_limited");
                self.ctx.deny_reason = Some("rate_limited");
                let secs = secs.max(1);
                let retry = secs.to_string();
                let html = pages::rate_limited(secs);
                Ok(respond::page(self.session, 429, html, &[("Retry-After", &retry)], &rid).await)
            }
            AuthError::Unavailable => {
                let html = pages::message(
                    "Temporarily unavailable",
                    "Signing in is not possible right now. Please try again in a moment.",
                );
                Ok(respond::page(self.session, 503, html, &[("Retry-After", "5")], &rid).await)
            }
            other => Err(other.into()),
        }
    }

    /// A refusal shown as a page to a person (a provider login gone wrong): its status and
    /// its sentence, never a stack of JSON.
    pub(super) async fn error_page(&mut self, err: &ApiError) -> u16 {
        let title = match err.status {
            409 => "Account exists",
            502..=504 => "Sign-in provider unavailable",
            _ => "Sign-in failed",
        };
        let html = pages::message(title, &err.message);
        respond::page(self.session, err.status, html, &[], &self.ctx.request_id).await
    }

    pub(super) async fn cross_site(&mut self) -> u16 {
        self.ctx.deny_reason = Some("cross_site");
        let html = pages::message("Request refused", "This form was sent from another site.");
        respond::page(self.session, 403, html, &[], &self.ctx.request_id).await
    }
}

/// `GET /auth/ui/login`: the form; a refresh cookie that still works signs in at once.
pub(super) fn login_page(mut c: Call<'_>) -> Reply<'_> {
    Box::pin(async move {
        let names = c.cookie_names()?;
        let rd = c.rd(c.query().get("rd").map(String::as_str));
        let refresh =
            cookies_of::cookie(&c.session.req_header().headers, &names.refresh).map(str::to_owned);
        if let Some(rt) = refresh {
            match c.auth().refresh(&rt, &c.client).await {
                Ok(RefreshResult::Ok(pair)) => {
                    c.shared.metrics.auth_event("refresh");
                    return Ok(c.signed_in(&names, &pair, &rd).await);
                }
                Ok(RefreshResult::ReuseDetected) => {
                    c.shared.metrics.auth_event("refresh_reuse_detected")
                }
                Ok(RefreshResult::Invalid) => {}
                Err(e) => return c.page_for(e).await,
            }
        }
        Ok(c.form(200, None, "", &rd, false).await)
    })
}

/// `POST /auth/ui/login`: email and password as `/auth/login` checks them.
pub(super) fn login_submit(mut c: Call<'_>) -> Reply<'_> {
    Box::pin(async move {
        let names = c.cookie_names()?;
        if !c.same_origin() {
            return Ok(c.cross_site().await);
        }
        let form: SignIn = c.form_body()?;
        let rd = c.rd(form.rd.as_deref());
        match c.auth().login(&form.email, form.password, &c.client).await {
            Ok(pair) => {
                c.shared.metrics.auth_event("login_ok");
                Ok(c.signed_in(&names, &pair, &rd).await)
            }
            Err(AuthError::InvalidCredentials | AuthError::InvalidRequest(_)) => {
                c.shared.metrics.auth_event("login_failed");
                c.ctx.deny_reason = Some("invalid_credentials");
                Ok(c.form(401, Some(WRONG), &form.email, &rd, false).await)
            }
            Err(AuthError::AccountDisabled) => {
                c.shared.metrics.auth_event("login_failed");
                c.ctx.deny_reason = Some("account_disabled");
                Ok(c.form(
                    403,
                    Some("This account is disabled."),
                    &form.email,
                    &rd,
                    false,
                )
                .await)
            }
            Err(e) => c.page_for(e).await,
        }
    })
}

/// `POST /auth/ui/logout`: revokes the session, clears both cookies, back to the sign-in page.
pub(super) fn logout(mut c: Call<'_>) -> Reply<'_> {
    Box::pin(async move {
        let names = c.cookie_names()?;
        if !c.same_origin() {
            return Ok(c.cross_site().await);
        }
        let _: SignOut = c.form_body()?;
        if let Some(rt) =
            cookies_of::cookie(&c.session.req_header().headers, &names.refresh).map(str::to_owned)
        {
            c.auth().logout(&rt, &c.client).await?;
            c.shared.metrics.auth_event("logout");
        }
        let cleared = cleared_cookies(&names);
        let extra = [
            ("Set-Cookie", cleared[0].as_str()),
            ("Set-Cookie", cleared[1].as_str()),
        ];
        Ok(
            respond::redirect_with(c.session, 303, "/auth/ui/login", &extra, &c.ctx.request_id)
                .await,
        )
    })
}

/// `GET /auth/ui/register` (with `registration = true`).
pub(super) fn register_page(mut c: Call<'_>) -> Reply<'_> {
    Box::pin(async move {
        c.registration()?;
        let rd = c.rd(c.query().get("rd").map(String::as_str));
        Ok(c.form(200, None, "", &rd, true).await)
    })
}

/// `POST /auth/ui/register`: `/auth/register`, then signed in.
pub(super) fn register_submit(mut c: Call<'_>) -> Reply<'_> {
    Box::pin(async move {
        let names = c.registration()?;
        if !c.same_origin() {
            return Ok(c.cross_site().await);
        }
        let form: SignIn = c.form_body()?;
        let rd = c.rd(form.rd.as_deref());
        match c
            .auth()
            .register(&form.email, form.password.clone(), &c.client)
            .await
        {
            Ok(user) => {
                c.ctx.user_id = Some(user.id);
                c.shared.metrics.auth_event("register");
            }
            Err(AuthError::InvalidRequest(why)) => {
                return Ok(c.form(400, Some(&why), &form.email, &rd, true).await);
            }
            Err(AuthError::EmailTaken) => {
                let msg = "An account with this email already exists.";
                return Ok(c.form(409, Some(msg), &form.email, &rd, true).await);
            }
            Err(e) => return c.page_for(e).await,
        }
        match c.auth().login(&form.email, form.password, &c.client).await {
            Ok(pair) => {
                c.shared.metrics.auth_event("login_ok");
                Ok(c.signed_in(&names, &pair, &rd).await)
            }
            Err(e) => c.page_for(e).await,
        }
    })
}

impl Call<'_> {
    /// The cookie names, or 404 unless `[browser]` is on with `registration = true`.
    fn registration(&self) -> Result<CookieNames, ApiError> {
        let names = self.cookie_names()?;
        if self.shared.live.load().config.browser.registration {
            Ok(names)
        } else {
            Err(ApiError::not_found())
        }
    }

    /// The form body (read by the runner), parsed.
    fn form_body<T: serde::de::DeserializeOwned>(&self) -> Result<T, ApiError> {
        serde_urlencoded::from_bytes(&self.body)
            .map_err(|e| ApiError::bad_request(format!("invalid form: {e}")))
    }
}
