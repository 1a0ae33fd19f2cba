//! One function per `/auth` endpoint: each takes the [`Call`] the runner prepared (caller
//! authenticated, body read, path values captured) and calls `auth/`. Errors are returned, not
//! written: the runner turns them into responses.

use serde::Deserialize;

use super::{Call, Reply};
use crate::auth::oidc::Return;
use crate::auth::{AuditParams, AuthError, RefreshResult};
use crate::model::Role;
use crate::proxy::respond::ApiError;
use crate::store::AdminUpdate;

#[derive(Deserialize)]
pub(super) struct Credentials {
    pub(super) email: String,
    pub(super) password: String,
}

#[derive(Deserialize)]
struct RefreshBody {
    refresh_token: String,
}

#[derive(Deserialize)]
struct PasswordBody {
    current_password: String,
    new_password: String,
}

#[derive(Deserialize)]
struct LoginCode {
    login_code: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PatchUser {
    #[serde(default)]
    role: Option<Role>,
    #[serde(default)]
    is_active: Option<bool>,
}

pub(super) fn register(mut c: Call<'_>) -> Reply<'_> {
    Box::pin(async move {
        let body: Credentials = c.json()?;
        let user = c
            .auth()
            .register(&body.email, body.password, &c.client)
            .await?;
        c.ctx.user_id = Some(user.id);
        c.shared.metrics.auth_event("register");
        Ok(c.user(201, &user).await)
    })
}

pub(super) fn login(mut c: Call<'_>) -> Reply<'_> {
    Box::pin(async move {
        let body: Credentials = c.json()?;
        match c.auth().login(&body.email, body.password, &c.client).await {
            Ok(pair) => {
                c.ctx.user_id = Some(pair.user.id);
                c.shared.metrics.auth_event("login_ok");
                Ok(c.json_reply(200, &pair).await)
            }
            Err(e) => {
                if matches!(
                    e,
                    AuthError::InvalidCredentials | AuthError::AccountDisabled
                ) {
                    c.shared.metrics.auth_event("login_failed");
                }
                Err(e.into())
            }
        }
    })
}

pub(super) fn refresh(mut c: Call<'_>) -> Reply<'_> {
    Box::pin(async move {
        let body: RefreshBody = c.json()?;
        match c.auth().refresh(&body.refresh_token, &c.client).await? {
            RefreshResult::Ok(pair) => {
                c.shared.metrics.auth_event("refresh");
                Ok(c.json_reply(200, &*pair).await)
            }
            RefreshResult::Invalid => Err(AuthError::InvalidToken.into()),
            RefreshResult::ReuseDetected => {
                c.shared.metrics.auth_event("refresh_reuse_detected");
                Err(AuthError::InvalidToken.into())
            }
        }
    })
}

pub(super) fn logout(mut c: Call<'_>) -> Reply<'_> {
    Box::pin(async move {
        let body: RefreshBody = c.json()?;
        c.auth().logout(&body.refresh_token, &c.client).await?;
        c.shared.metrics.auth_event("logout");
        Ok(c.empty(204).await)
    })
}

pub(super) fn logout_all(mut c: Call<'_>) -> Reply<'_> {
    Box::pin(async move {
        c.auth().logout_all(c.caller()?, &c.client).await?;
        c.shared.metrics.auth_event("logout");
        Ok(c.empty(204).await)
    })
}

pub(super) fn me(mut c: Call<'_>) -> Reply<'_> {
    Box::pin(async move {
        let user = c.auth().me(c.caller()?).await?;
        Ok(c.user(200, &user).await)
    })
}

pub(super) fn sessions(mut c: Call<'_>) -> Reply<'_> {
    Box::pin(async move {
        let sessions = c.auth().sessions(c.caller()?).await?;
        Ok(
            c.json_reply(200, &serde_json::json!({ "sessions": sessions }))
                .await,
        )
    })
}

pub(super) fn delete_session(mut c: Call<'_>) -> Reply<'_> {
    Box::pin(async move {
        let sid = c.id()?;
        c.auth().delete_session(c.caller()?, sid, &c.client).await?;
        Ok(c.empty(204).await)
    })
}

pub(super) fn password(mut c: Call<'_>) -> Reply<'_> {
    Box::pin(async move {
        let body: PasswordBody = c.json()?;
        c.auth()
            .change_password(
                c.caller()?,
                body.current_password,
                body.new_password,
                &c.client,
            )
            .await?;
        Ok(c.empty(204).await)
    })
}

pub(super) fn jwks(mut c: Call<'_>) -> Reply<'_> {
    Box::pin(async move {
        let jwks = c.auth().tokens().jwks();
        Ok(c.json_cacheable(&jwks).await)
    })
}

pub(super) fn openapi(mut c: Call<'_>) -> Reply<'_> {
    Box::pin(async move { Ok(c.raw_json(super::OPENAPI.as_bytes()).await) })
}

pub(super) fn admin_users(mut c: Call<'_>) -> Reply<'_> {
    Box::pin(async move {
        let query = c.query();
        let cursor = query.get("cursor").filter(|v| !v.is_empty());
        let page = c
            .auth()
            .admin_list_users(
                c.caller()?,
                query.get("limit").map(String::as_str),
                cursor.map(String::as_str),
            )
            .await?;
        Ok(c.json_reply(200, &page).await)
    })
}

pub(super) fn admin_audit(mut c: Call<'_>) -> Reply<'_> {
    Box::pin(async move {
        let query = c.query();
        let get = |k: &str| query.get(k).map(String::as_str).filter(|v| !v.is_empty());
        let params = AuditParams {
            user: get("user"),
            event: get("event"),
            since: get("since"),
            cursor: get("cursor"),
            limit: get("limit"),
        };
        let page = c.auth().admin_audit(c.caller()?, &params).await?;
        Ok(c.json_reply(200, &page).await)
    })
}

pub(super) fn admin_update_user(mut c: Call<'_>) -> Reply<'_> {
    Box::pin(async move {
        let body: PatchUser = c.json()?;
        let update = AdminUpdate {
            role: body.role,
            is_active: body.is_active,
        };
        let user = c
            .auth()
            .admin_update_user(c.caller()?, c.id()?, update, &c.client)
            .await?;
        Ok(c.user(200, &user).await)
    })
}

pub(super) fn admin_revoke_sessions(mut c: Call<'_>) -> Reply<'_> {
    Box::pin(async move {
        c.auth()
            .admin_revoke_sessions(c.caller()?, c.id()?, &c.client)
            .await?;
        Ok(c.empty(204).await)
    })
}

pub(super) fn oidc_login(mut c: Call<'_>) -> Reply<'_> {
    Box::pin(async move {
        let query = c.query();
        let browser = c.shared.live.load().cookies.is_some();
        match query
            .get("rd")
            .filter(|_| browser && !query.contains_key("redirect_to"))
        {
            // The sign-in page's provider button: ends in the session cookies.
            Some(rd) => {
                let rd = c.rd(Some(rd));
                let started = c
                    .auth()
                    .oidc()
                    .login_url(c.name()?, Return::Browser(&rd))
                    .await;
                match started {
                    Ok(url) => Ok(c.redirect(&url).await),
                    Err(e) => {
                        let err = ApiError::from(e);
                        Ok(c.error_page(&err).await)
                    }
                }
            }
            None => {
                let back = Return::LoginCode(query.get("redirect_to").map(String::as_str));
                let url = c.auth().oidc().login_url(c.name()?, back).await?;
                Ok(c.redirect(&url).await)
            }
        }
    })
}

pub(super) fn oidc_callback(mut c: Call<'_>) -> Reply<'_> {
    Box::pin(async move {
        let query = c.query();
        let get = |k: &str| query.get(k).map(String::as_str);
        let next = c
            .auth()
            .oidc()
            .callback(
                c.name()?,
                get("code"),
                get("state"),
                get("error"),
                &c.client,
            )
            .await;
        let person = c.shared.live.load().cookies.is_some() && {
            let req = c.session.req_header();
            crate::access::browser::is_navigation(&req.method, &req.headers)
        };
        let next = match next {
            Ok(next) => next,
            Err(e) if person => {
                let err = ApiError::from(e);
                return Ok(c.error_page(&err).await);
            }
            Err(e) => return Err(e.into()),
        };
        match next.browser {
            None => Ok(c.redirect(&next.location).await),
            Some(Some(user)) => {
                let names = c.cookie_names()?;
                let pair = c.auth().oidc_session(user, &c.client).await?;
                c.shared.metrics.auth_event("login_ok");
                Ok(c.signed_in(&names, &pair, &next.location).await)
            }
            Some(None) => {
                let err = ApiError::new(
                    409,
                    "email_taken",
                    "An account with this email already exists: sign in with its password.",
                );
                Ok(c.error_page(&err).await)
            }
        }
    })
}

pub(super) fn oidc_exchange(mut c: Call<'_>) -> Reply<'_> {
    Box::pin(async move {
        let body: LoginCode = c.json()?;
        let pair = c.auth().oidc_exchange(&body.login_code, &c.client).await?;
        c.shared.metrics.auth_event("login_ok");
        Ok(c.json_reply(200, &pair).await)
    })
}
