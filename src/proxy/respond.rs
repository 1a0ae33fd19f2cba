//! The one place where rejections become HTTP responses: every error body is
//! `{"error": code, "message": sentence}` with the status and headers of docs/api.md, "Errors".

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde::Serialize;

use crate::access::{Denial, PathError};
use crate::auth::AuthError;
use crate::auth::oidc::OidcError;

/// An error response about to be written.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human sentence.
    pub message: String,
    /// Extra headers (`WWW-Authenticate`, `Retry-After`, `Allow`).
    pub headers: Vec<(&'static str, String)>,
}

/// `WWW-Authenticate` for a request without credentials.
pub const REALM: &str = "Bearer realm=\"portcullis\"";
/// `WWW-Authenticate` for a bad token.
pub const INVALID_TOKEN: &str = "Bearer error=\"invalid_token\"";
/// `WWW-Authenticate` for a missing role.
pub const INSUFFICIENT_SCOPE: &str = "Bearer error=\"insufficient_scope\"";
/// Seconds clients are asked to wait on 503.
const RETRY_AFTER_UNAVAILABLE: &str = "5";

impl ApiError {
    /// An error without extra headers.
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// 400 `invalid_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request", message)
    }

    /// 404 `not_found`.
    pub fn not_found() -> Self {
        Self::new(404, "not_found", "no route matches this request")
    }

    /// 408 `request_timeout`: the client stopped sending its body for `body_timeout_secs`.
    pub fn request_timeout() -> Self {
        Self::new(
            408,
            "request_timeout",
            "the request body stopped arriving (server.body_timeout_secs)",
        )
    }

    /// 503 `unavailable` with `Retry-After`.
    pub fn unavailable() -> Self {
        Self::new(
            503,
            "unavailable",
            "the service is temporarily unavailable; retry shortly",
        )
        .with("Retry-After", RETRY_AFTER_UNAVAILABLE)
    }

    /// 405 with the allowed methods.
    pub fn method_not_allowed(allow: &str) -> Self {
        Self::new(
            405,
            "method_not_allowed",
            format!("this endpoint allows {allow}"),
        )
        .with("Allow", allow)
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let message = e.to_string();
        match e {
            AuthError::InvalidRequest(_) => Self::new(400, "invalid_request", message),
            AuthError::InvalidCredentials => Self::new(401, "invalid_credentials", message),
            AuthError::InvalidToken => {
                Self::new(401, "invalid_token", message).with("WWW-Authenticate", INVALID_TOKEN)
            }
            AuthError::AccountDisabled => Self::new(403, "account_disabled", message),
            AuthError::Forbidden(_) => Self::new(403, "forbidden", message),
            AuthError::NotFound(_) => Self::new(404, "not_found", message),
            AuthError::EmailTaken => Self::new(409, "email_taken", message),
            AuthError::Conflict(_) => Self::new(409, "conflict", message),
            AuthError::RateLimited(secs) => {
                Self::new(429, "rate_limited", message).with("Retry-After", secs.max(1).to_string())
            }
            AuthError::Unavailable => Self::unavailable(),
            AuthError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                Self::new(500, "internal", "internal error")
            }
        }
    }
}

impl From<Denial> for ApiError {
    fn from(d: Denial) -> Self {
        match d {
            Denial::MissingToken => {
                Self::new(d.status(), "unauthorized", "a bearer token is required")
                    .with("WWW-Authenticate", REALM)
            }
            Denial::InvalidToken(_) | Denial::Revoked => Self::new(
                d.status(),
                "invalid_token",
                "the access token is invalid, expired or revoked",
            )
            .with("WWW-Authenticate", INVALID_TOKEN),
            Denial::InsufficientRole => Self::new(
                d.status(),
                "forbidden",
                "your role does not allow this request",
            )
            .with("WWW-Authenticate", INSUFFICIENT_SCOPE),
            Denial::StepUp { acr, max_age } => {
                let (message, mut challenge) = if acr {
                    (
                        "this route needs a sign-in with a second factor",
                        String::from(
                            "Bearer error=\"insufficient_user_authentication\", error_description=\"A second factor is required\", acr_values=\"aal2\"",
                        ),
                    )
                } else {
                    (
                        "this route needs a more recent sign-in",
                        String::from(
                            "Bearer error=\"insufficient_user_authentication\", error_description=\"A more recent sign-in is required\"",
                        ),
                    )
                };
                if let Some(max) = max_age {
                    challenge.push_str(&format!(", max_age={max}"));
                }
                Self::new(d.status(), "insufficient_user_authentication", message)
                    .with("WWW-Authenticate", challenge)
            }
            Denial::Unavailable => Self::unavailable(),
            Denial::AmbiguousAuthorization => {
                Self::bad_request("the request has more than one Authorization header")
            }
        }
    }
}

impl From<OidcError> for ApiError {
    fn from(e: OidcError) -> Self {
        let message = e.to_string();
        match e {
            OidcError::UnknownProvider(_) => Self::new(404, "not_found", message),
            OidcError::BadRedirect | OidcError::BadState => {
                Self::new(400, "invalid_request", message)
            }
            OidcError::Provider(detail) => {
                tracing::warn!(error = %detail, "OIDC provider failure");
                Self::new(
                    502,
                    "bad_gateway",
                    "the identity provider failed; try again",
                )
            }
            OidcError::InvalidIdToken(detail) => {
                tracing::warn!(error = %detail, "OIDC ID token rejected");
                Self::new(
                    401,
                    "invalid_token",
                    "the identity provider's answer could not be verified",
                )
            }
            OidcError::Auth(e) => e.into(),
        }
    }
}

impl From<PathError> for ApiError {
    fn from(e: PathError) -> Self {
        Self::bad_request(e.to_string())
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
}

/// Writes `err` as the response. Returns the status written, for logging.
pub async fn error(session: &mut Session, err: &ApiError, request_id: &str) -> u16 {
    let body = serde_json::to_vec(&ErrorBody {
        error: err.code,
        message: &err.message,
    })
    .unwrap_or_default();
    let headers: Vec<(&str, &str)> = err.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    write(session, err.status, body, &headers, false, request_id).await;
    err.status
}

/// Writes a JSON body with `status`. `no_store` adds `Cache-Control: no-store`.
pub async fn json<T: Serialize>(
    session: &mut Session,
    status: u16,
    value: &T,
    no_store: bool,
    request_id: &str,
) -> u16 {
    match serde_json::to_vec(value) {
        Ok(body) => {
            write(session, status, body, &[], no_store, request_id).await;
            status
        }
        Err(e) => {
            tracing::error!(error = %e, "response serialization failed");
            error(
                session,
                &ApiError::new(500, "internal", "internal error"),
                request_id,
            )
            .await
        }
    }
}

/// Writes a 302 to `location` (never cached).
pub async fn redirect(session: &mut Session, location: &str, request_id: &str) -> u16 {
    write(
        session,
        302,
        Vec::new(),
        &[("Location", location)],
        true,
        request_id,
    )
    .await;
    302
}

/// Writes a redirect (`status` 302 or 303) to `location` with `extra` headers (the session
/// cookies a sign-in sets or clears); never cached.
pub async fn redirect_with(
    session: &mut Session,
    status: u16,
    location: &str,
    extra: &[(&str, &str)],
    request_id: &str,
) -> u16 {
    let mut headers = vec![("Location", location)];
    headers.extend_from_slice(extra);
    write(session, status, Vec::new(), &headers, true, request_id).await;
    status
}

/// Writes an HTML page (`super::pages`) with its security headers and `extra` ones; never
/// cached.
pub async fn page(
    session: &mut Session,
    status: u16,
    html: String,
    extra: &[(&str, &str)],
    request_id: &str,
) -> u16 {
    let mut headers: Vec<(&str, &str)> = super::pages::PAGE_HEADERS.to_vec();
    headers.push(("Content-Security-Policy", super::pages::CSP.as_str()));
    headers.extend_from_slice(extra);
    write(
        session,
        status,
        html.into_bytes(),
        &headers,
        true,
        request_id,
    )
    .await;
    status
}

/// Writes a 308 to `location` (the plain listener's https redirect; method and body kept).
pub async fn permanent_redirect(session: &mut Session, location: &str, request_id: &str) -> u16 {
    write(
        session,
        308,
        Vec::new(),
        &[("Location", location)],
        false,
        request_id,
    )
    .await;
    308
}

/// Writes a 200 JSON document that is already serialized (the OpenAPI description).
pub async fn raw_json(session: &mut Session, body: &[u8], request_id: &str) -> u16 {
    write(session, 200, body.to_vec(), &[], false, request_id).await;
    200
}

/// Writes a 200 `text/plain` body (an ACME HTTP-01 challenge answer).
pub async fn text(session: &mut Session, body: String, request_id: &str) -> u16 {
    write(
        session,
        200,
        body.into_bytes(),
        &[("Content-Type", "text/plain")],
        false,
        request_id,
    )
    .await;
    200
}

/// Writes an empty response with `status` and `extra` headers (forward-auth's 200 carrying
/// the identity headers).
pub async fn with_headers(
    session: &mut Session,
    status: u16,
    extra: &[(&str, &str)],
    request_id: &str,
) -> u16 {
    write(session, status, Vec::new(), extra, true, request_id).await;
    status
}

/// Writes an empty response (204).
pub async fn empty(session: &mut Session, status: u16, request_id: &str) -> u16 {
    write(session, status, Vec::new(), &[], true, request_id).await;
    status
}

/// The 400 for a request whose head Pingora could not parse (an invalid request line, a
/// malformed header): written before any phase runs, so built whole here, in the same JSON
/// shape as every other error, closing the connection.
pub fn malformed_request() -> Option<(ResponseHeader, Bytes)> {
    let err = ApiError::bad_request("the request head is malformed");
    let body = serde_json::to_vec(&ErrorBody {
        error: err.code,
        message: &err.message,
    })
    .ok()?;
    let mut resp = ResponseHeader::build(err.status, Some(4)).ok()?;
    resp.insert_header("Content-Type", "application/json")
        .ok()?;
    resp.insert_header("Content-Length", body.len().to_string())
        .ok()?;
    resp.insert_header("Connection", "close").ok()?;
    resp.insert_header(
        "X-Request-Id",
        super::forward::RequestId::generate().header(),
    )
    .ok()?;
    Some((resp, Bytes::from(body)))
}

async fn write(
    session: &mut Session,
    status: u16,
    body: Vec<u8>,
    headers: &[(&str, &str)],
    no_store: bool,
    request_id: &str,
) {
    if session.is_process_shutting_down() {
        // Draining: the client must not reuse this connection (see `response_filter`).
        session.set_keepalive(None);
    }
    let result: pingora::Result<()> = async {
        let mut resp = ResponseHeader::build(status, Some(6))?;
        let typed = headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-type"));
        if !body.is_empty() && !typed {
            resp.insert_header("Content-Type", "application/json")?;
        }
        resp.insert_header("Content-Length", body.len().to_string())?;
        if no_store {
            resp.insert_header("Cache-Control", "no-store")?;
            resp.insert_header("Pragma", "no-cache")?;
        }
        resp.insert_header("X-Request-Id", request_id)?;
        for (name, value) in headers {
            resp.append_header(name.to_string(), value.to_string())?;
        }
        // A HEAD answer carries the length but no body (HTTP/2 resets a stream that sends one).
        let empty = body.is_empty() || session.req_header().method == http::Method::HEAD;
        session.write_response_header(Box::new(resp), empty).await?;
        if !empty {
            session
                .write_response_body(Some(Bytes::from(body)), true)
                .await?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "could not write response (client gone?)");
    }
}
