//! The Pingora side: the `ProxyHttp` implementation whose phases stay thin and delegate to
//! `access/` (the decision), `auth_api` (the /auth endpoints) and `respond` (every error).

pub mod auth_api;
pub mod browser;
pub mod edge;
pub mod forward;
pub mod forward_auth;
pub mod limits;
pub mod pages;
pub mod respond;
pub mod services;
mod tunnel;
pub mod upstream;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::access::browser::{self as cookies_of, CookieNames};
use crate::access::{self, Authorizer, Denial, PathPolicy, RouteEntry, Routes, TunnelGuard};
use crate::auth::AuthService;
use crate::config::Config;
use crate::store::Store;
use crate::telemetry::{Metrics, StatusCounters, access as access_log};
use crate::tokens::Claims;
use respond::ApiError;
use upstream::{UpstreamError, UpstreamPool, build_pools};

/// Where the CA fetches HTTP-01 answers (any instance answers from the database).
const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// What can change on reload: the route table and the upstream pools, built together from
/// one config and swapped atomically.
#[derive(Debug)]
pub struct Live {
    /// The config these were built from.
    pub config: Arc<Config>,
    /// Compiled routes.
    pub routes: Routes,
    /// Pools by name.
    pub upstreams: HashMap<String, Arc<UpstreamPool>>,
    /// Path rules beyond the strict default.
    pub path_policy: PathPolicy,
    /// The session cookies' names when `[browser]` is enabled.
    pub cookies: Option<CookieNames>,
}

impl Live {
    /// Builds routes and pools from a validated config.
    pub fn build(config: Arc<Config>) -> std::result::Result<Live, UpstreamError> {
        Ok(Live {
            routes: Routes::new(&config.routes),
            upstreams: build_pools(&config.upstreams)?,
            path_policy: PathPolicy {
                allow_path_parameters: config.server.allow_path_parameters,
            },
            cookies: config
                .browser
                .enabled
                .then(|| CookieNames::new(&config.browser.cookie_prefix)),
            config,
        })
    }
}

/// State shared by every request on every worker.
pub struct Shared {
    /// Reloadable routes and upstreams.
    pub live: ArcSwap<Live>,
    /// The /auth use-cases.
    pub auth: AuthService,
    /// Token + revocation checks.
    pub authorizer: Authorizer,
    /// Metrics registry.
    pub metrics: Metrics,
    /// Database handle (readiness, pool gauges).
    pub store: Store,
    /// Fixed at start: identity header names (lower-case, `_` as `-`) and trusted proxies.
    pub forwarding: forward::Forwarding,
    /// Fixed at start: HSTS and the https redirect (`[server.tls]`).
    pub edge: edge::Edge,
    /// Request counters of the [`Pseudo`] labels, by `Pseudo as usize`.
    pseudo_requests: [StatusCounters; 3],
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    /// Wires the shared state; identity header names and trusted proxies come from `config`.
    pub fn new(
        config: &Config,
        live: Live,
        auth: AuthService,
        authorizer: Authorizer,
        metrics: Metrics,
        store: Store,
    ) -> Shared {
        Shared {
            live: ArcSwap::from_pointee(live),
            auth,
            authorizer,
            pseudo_requests: Pseudo::ALL.map(|p| metrics.status_counters(p.label())),
            metrics,
            store,
            forwarding: forward::Forwarding::new(config),
            edge: edge::Edge::new(config),
        }
    }
}

/// What a request answered by the gateway itself (no route) is counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pseudo {
    /// No route matched, or the request was refused before routing.
    None,
    /// The gateway's own `/auth`.
    Auth,
    /// An ACME HTTP-01 challenge.
    Acme,
}

impl Pseudo {
    const ALL: [Pseudo; 3] = [Pseudo::None, Pseudo::Auth, Pseudo::Acme];

    fn label(self) -> &'static str {
        match self {
            Pseudo::None => "none",
            Pseudo::Auth => "/auth",
            Pseudo::Acme => ACME_CHALLENGE_PREFIX,
        }
    }
}

/// Per-request state carried between phases.
#[derive(Debug)]
pub struct Ctx {
    started: Instant,
    /// `X-Request-Id` (the client's or a fresh one).
    pub request_id: forward::RequestId,
    /// Metrics and log label when no route matched (else the route's prefix is the label).
    pseudo: Pseudo,
    /// The normalized path, once the decision has it (for the access log).
    path: Option<String>,
    route: Option<Arc<RouteEntry>>,
    pool: Option<Arc<UpstreamPool>>,
    identity: Option<Arc<Claims>>,
    /// The client address used for limits and `X-Forwarded-For` decisions.
    pub client_ip: Option<IpAddr>,
    peer_ip: Option<IpAddr>,
    upstream_uri: Option<http::Uri>,
    upstream_started: Option<Instant>,
    status: u16,
    /// A WebSocket handshake on an authorized route.
    websocket: bool,
    /// Registration of an open WebSocket tunnel, dropped with the request.
    tunnel: Option<TunnelGuard>,
    /// The caller's credential came from the access cookie (or a refresh of it): writes are
    /// checked against cross-site forgery.
    cookie_auth: bool,
    /// `Set-Cookie` values for the response (a refreshed or cleared browser session).
    set_cookies: Vec<String>,
    /// A refusal decided after the upstream connection was made (a WebSocket whose session
    /// was revoked meanwhile): `fail_to_proxy` answers it instead of an upstream error.
    late_denial: Option<access::Denial>,
    /// For the access log: why the gateway refused (`missing_token`, `no_route`…).
    pub deny_reason: Option<&'static str>,
    /// For the access log: the user an /auth request acted for, when known.
    pub user_id: Option<uuid::Uuid>,
    /// For the access log: the upstream address tried.
    upstream_addr: Option<std::net::SocketAddr>,
}

/// The `ProxyHttp` implementation.
pub struct Gateway {
    shared: Arc<Shared>,
}

impl Gateway {
    /// A gateway over shared state.
    pub fn new(shared: Arc<Shared>) -> Gateway {
        Gateway { shared }
    }
}

/// What `request_filter` decided.
enum Decision {
    /// Continue to the upstream.
    Forward,
    /// Answer with this error, nothing forwarded.
    Reject(ApiError),
    /// A response (an /auth answer) was already written.
    Responded,
}

impl Gateway {
    /// Answers an ACME HTTP-01 challenge from the database (any instance can), before any
    /// route could claim the path; `None` when this is not one.
    async fn acme_challenge(&self, session: &mut Session, ctx: &mut Ctx) -> Option<Decision> {
        let shared = &*self.shared;
        let policy = {
            let live = shared.live.load();
            if !live.config.acme.enabled
                || !session
                    .req_header()
                    .uri
                    .path()
                    .starts_with(ACME_CHALLENGE_PREFIX)
            {
                return None;
            }
            live.path_policy
        };
        let path = match access::normalize_with(session.req_header().uri.path(), policy) {
            Ok(p) => p,
            Err(e) => return Some(Decision::Reject(e.into())),
        };
        let token = path.strip_prefix(ACME_CHALLENGE_PREFIX)?;
        ctx.pseudo = Pseudo::Acme;
        if !is_acme_token(token) {
            // Not something a CA could ask for: no database query for arbitrary input.
            return Some(Decision::Reject(ApiError::not_found()));
        }
        Some(match shared.store.acme_challenge(token).await {
            Ok(Some(answer)) => {
                ctx.status = respond::text(session, answer, &ctx.request_id).await;
                Decision::Responded
            }
            Ok(None) => Decision::Reject(ApiError::not_found()),
            Err(_) => Decision::Reject(ApiError::unavailable()),
        })
    }

    /// Rotates the browser's refresh cookie as `/auth/refresh` does. `Ok(None)` when it no
    /// longer works (unknown, expired, revoked, or reused: the family is then revoked).
    async fn refresh_cookie_session(
        &self,
        session: &Session,
        ctx: &Ctx,
        refresh_token: &str,
    ) -> Result<Option<crate::auth::TokenPair>, ApiError> {
        let client = client_info(session, ctx);
        let metrics = &self.shared.metrics;
        match self.shared.auth.refresh(refresh_token, &client).await {
            Ok(crate::auth::RefreshResult::Ok(pair)) => {
                metrics.auth_event("refresh");
                Ok(Some(*pair))
            }
            Ok(crate::auth::RefreshResult::ReuseDetected) => {
                metrics.auth_event("refresh_reuse_detected");
                Ok(None)
            }
            Ok(crate::auth::RefreshResult::Invalid) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// A browser navigation refused on a protected route: without a usable credential, to
    /// the sign-in page (coming back here afterwards); signed in but not allowed, a page that
    /// says who is signed in, with a way out.
    async fn send_to_sign_in(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        denial: Denial,
    ) -> Decision {
        let cookies = std::mem::take(&mut ctx.set_cookies);
        let extra: Vec<(&str, &str)> = cookies.iter().map(|c| ("Set-Cookie", c.as_str())).collect();
        if is_no_credential(denial) {
            let rd = session
                .req_header()
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string();
            let location = browser::login_location(&rd);
            ctx.status =
                respond::redirect_with(session, 302, &location, &extra, &ctx.request_id).await;
            return Decision::Responded;
        }
        if denial == Denial::InsufficientRole {
            let email = self.cookie_email(session).unwrap_or_default();
            let html = pages::forbidden(&email);
            ctx.status = respond::page(session, 403, html, &extra, &ctx.request_id).await;
            return Decision::Responded;
        }
        Decision::Reject(denial.into())
    }

    /// The email in the browser's access cookie (already verified by the decision).
    fn cookie_email(&self, session: &Session) -> Option<String> {
        let live = self.shared.live.load();
        let names = live.cookies.as_ref()?;
        let token = cookies_of::cookie(&session.req_header().headers, &names.access)?;
        let claims = self.shared.auth.tokens().verify(token).ok()?;
        Some(claims.email.clone())
    }

    async fn decide(&self, session: &mut Session, ctx: &mut Ctx) -> Decision {
        let shared = &*self.shared;
        let raw_head = session
            .as_downstream()
            .as_http1()
            .map(|h1| h1.get_headers_raw_bytes());
        if let Err(e) = forward::check_framing(session.req_header(), raw_head.as_deref()) {
            return Decision::Reject(e);
        }
        let max_head = shared.live.load().config.server.max_header_bytes;
        if forward::head_bytes(session.req_header()) > max_head {
            return Decision::Reject(ApiError::new(
                431,
                "request_header_fields_too_large",
                "the request headers are too large",
            ));
        }
        ctx.request_id = forward::RequestId::of(session.req_header());
        ctx.peer_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        ctx.client_ip = shared
            .forwarding
            .client_ip(ctx.peer_ip, session.req_header());
        if let Some(decision) = self.acme_challenge(session, ctx).await {
            return decision;
        }
        // The pure decision is `access::decide`, the same function `routes explain` runs.
        let live = shared.live.load();
        let req = session.req_header();
        let host = host_of(req);
        let credential = cookies_of::credential(&req.headers, live.cookies.as_ref());
        // A browser's cookies count only when no Authorization header is there (it wins).
        let browser = live.cookies.as_ref().filter(|_| credential.cookies_apply);
        let browser_request = browser.is_some();
        let refresh_cookie = browser
            .and_then(|n| cookies_of::cookie(&req.headers, &n.refresh))
            .map(str::to_owned);
        ctx.cookie_auth = credential.from_cookie;
        let request = access::Request {
            method: &req.method,
            path: req.uri.path(),
            host,
            bearer: credential.bearer,
        };
        let mut decision =
            access::decide(&live.routes, live.path_policy, request, &shared.authorizer).await;
        if let (Some(names), access::Decision::Deny { denial, .. }) = (browser, &decision)
            && is_no_credential(*denial)
            && (ctx.cookie_auth || refresh_cookie.is_some())
        {
            // The access cookie is missing, expired or revoked: a refresh cookie that still
            // works renews the session on this very request; otherwise the cookies are
            // cleared and the request counts as carrying no credential.
            let renewed = match &refresh_cookie {
                Some(rt) => self.refresh_cookie_session(session, ctx, rt).await,
                None => Ok(None),
            };
            let pair = match renewed {
                Ok(Some(pair)) => {
                    ctx.set_cookies = browser::session_cookies(names, &pair).to_vec();
                    ctx.cookie_auth = true;
                    Some(pair)
                }
                Ok(None) => {
                    ctx.set_cookies = browser::cleared_cookies(names).to_vec();
                    ctx.cookie_auth = false;
                    None
                }
                Err(err) => return Decision::Reject(err),
            };
            // Decided again: as the renewed session, or as a request without a credential.
            let req = session.req_header();
            let request = access::Request {
                method: &req.method,
                path: req.uri.path(),
                host: host_of(req),
                bearer: Ok(pair.as_ref().map(|p| p.access_token.as_str())),
            };
            decision =
                access::decide(&live.routes, live.path_policy, request, &shared.authorizer).await;
        }
        let (path, route) = match decision {
            access::Decision::BadPath(e) => return Decision::Reject(e.into()),
            access::Decision::Auth { path } => {
                drop(live);
                ctx.pseudo = Pseudo::Auth;
                ctx.status = auth_api::handle(shared, session, ctx, &path).await;
                return Decision::Responded;
            }
            access::Decision::NoRoute { .. } => {
                return Decision::Reject(ApiError::not_found());
            }
            access::Decision::Deny {
                route,
                denial,
                path,
                ..
            } => {
                ctx.path = Some(path);
                ctx.deny_reason = Some(denial.reason());
                ctx.route = Some(route);
                shared.metrics.denied(denial.reason());
                // Sent to sign in: a navigation that carried no Authorization header (cookies
                // or nothing); a role refusal only for a cookie session.
                let req = session.req_header();
                let to_page = if is_no_credential(denial) {
                    browser_request
                } else {
                    denial == Denial::InsufficientRole && ctx.cookie_auth
                };
                if to_page && cookies_of::is_navigation(&req.method, &req.headers) {
                    return self.send_to_sign_in(session, ctx, denial).await;
                }
                let mut err = ApiError::from(denial);
                for cookie in ctx.set_cookies.drain(..) {
                    err = err.with("Set-Cookie", cookie);
                }
                return Decision::Reject(err);
            }
            access::Decision::Forward {
                path,
                route,
                identity,
            } => {
                if let Some(auth) = identity {
                    if let Some(lookup) = auth.lookup {
                        let hit = lookup == crate::access::Lookup::Hit;
                        shared.metrics.revocation_lookup(hit);
                    }
                    ctx.identity = Some(auth.claims);
                }
                ctx.route = Some(route.clone());
                (path, route)
            }
        };
        if ctx.cookie_auth && ctx.identity.is_some() {
            let req = session.req_header();
            if !cookies_of::is_safe(&req.method) {
                let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
                let own = shared.forwarding.external_origin(ctx.peer_ip, req, tls);
                let trusted = &live.config.browser.trusted_origins;
                if !cookies_of::same_origin_write(&req.headers, &own, trusted) {
                    ctx.deny_reason = Some("cross_site");
                    return Decision::Reject(ApiError::new(
                        403,
                        "forbidden",
                        "a cookie-authenticated write from another site is refused",
                    ));
                }
            }
        }
        let req = session.req_header();
        ctx.pool = live.upstreams.get(&route.upstream).cloned();
        ctx.websocket = forward::is_websocket(req);
        let upstream_path = route.upstream_path(&path);
        // Most requests arrive normalized and in origin form: forward the target untouched.
        let untouched = req.uri.scheme().is_none()
            && req.uri.authority().is_none()
            && req.uri.path() == upstream_path;
        if !untouched {
            let path_and_query = match req.uri.query() {
                Some(q) => format!("{upstream_path}?{q}"),
                None => upstream_path.into_owned(),
            };
            match http::Uri::builder().path_and_query(path_and_query).build() {
                Ok(uri) => ctx.upstream_uri = Some(uri),
                Err(_) => {
                    return Decision::Reject(ApiError::bad_request(
                        "the request target is invalid",
                    ));
                }
            }
        }
        ctx.path = Some(path);
        Decision::Forward
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            started: Instant::now(),
            request_id: forward::RequestId::default(),
            pseudo: Pseudo::None,
            path: None,
            route: None,
            pool: None,
            identity: None,
            client_ip: None,
            peer_ip: None,
            upstream_uri: None,
            upstream_started: None,
            status: 0,
            websocket: false,
            tunnel: None,
            late_denial: None,
            cookie_auth: false,
            set_cookies: Vec::new(),
            deny_reason: None,
            user_id: None,
            upstream_addr: None,
        }
    }

    fn init_downstream_modules(&self, modules: &mut HttpModules) {
        self.shared.edge.init_downstream_modules(modules);
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // The head is in: its deadline is over, the body's idle timeout starts (Pingora's
        // downstream read timeout applies between two body reads, proxied and /auth alike).
        limits::head_done(session);
        let body_timeout = self.shared.live.load().config.server.body_timeout_secs;
        session.set_read_timeout(Some(std::time::Duration::from_secs(body_timeout)));
        if self.shared.edge.answered(session, ctx).await {
            return Ok(true);
        }
        match self.decide(session, ctx).await {
            Decision::Forward => Ok(false),
            Decision::Responded => Ok(true),
            Decision::Reject(err) => {
                if ctx.request_id.is_empty() {
                    ctx.request_id = forward::RequestId::generate();
                }
                if matches!(err.status, 400 | 431) {
                    session.set_keepalive(None);
                }
                ctx.deny_reason.get_or_insert(err.code);
                ctx.status = respond::error(session, &err, &ctx.request_id).await;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let mut peer = ctx.pool.as_ref().and_then(|p| p.peer()).ok_or_else(|| {
            Error::explain(ErrorType::HTTPStatus(502), "no healthy upstream address")
        })?;
        if ctx.websocket
            && let Some(route) = &ctx.route
        {
            // A tunnel is idle when neither side has sent anything for this long.
            let idle = route.websocket_idle_timeout;
            peer.options.read_timeout = Some(idle);
            session.set_read_timeout(Some(idle));
        }
        ctx.upstream_started = Some(Instant::now());
        ctx.upstream_addr = peer._address.as_inet().copied();
        Ok(Box::new(peer))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if ctx.websocket
            && let Some(claims) = &ctx.identity
        {
            // The tunnel closes when its session is revoked: shutting the upstream socket
            // down ends Pingora's relay loop, which then closes the client connection.
            match tunnel::closer(fd) {
                Ok(close) => {
                    let opened = self
                        .shared
                        .authorizer
                        .open_tunnel(claims.clone(), close)
                        .await;
                    match opened {
                        Ok(guard) => ctx.tunnel = Some(guard),
                        Err(denial) => {
                            // Revoked since the authorization: the handshake never reaches
                            // the upstream; the client gets the refusal it would get now.
                            ctx.late_denial = Some(denial);
                            return Err(Error::explain(
                                ErrorType::ConnectProxyFailure,
                                "the session was revoked before its WebSocket tunnel opened",
                            ));
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch a WebSocket tunnel for revocation")
                }
            }
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let forward_token = ctx.route.as_ref().is_some_and(|r| r.forward_token);
        if let Some(uri) = ctx.upstream_uri.take() {
            upstream_request.set_uri(uri);
        }
        if ctx.websocket {
            // Pingora keeps `Upgrade` only when it is exactly `websocket`: an offer such as
            // `websocket, h2c` arrives here without it and would go upstream as a plain GET.
            // The handshake was authorized as a WebSocket, so it goes up as exactly that.
            upstream_request.insert_header("Upgrade", "websocket")?;
            upstream_request.insert_header("Connection", "upgrade")?;
        }
        if let Some(names) = &self.shared.live.load().cookies {
            // The gateway's cookies never reach the upstream; its own cookies do.
            match cookies_of::without_ours(&upstream_request.headers, names) {
                Some(rest) => upstream_request.insert_header("Cookie", rest)?,
                None => {
                    upstream_request.remove_header("cookie");
                }
            }
        }
        self.shared.forwarding.rewrite(
            upstream_request,
            ctx.identity.as_deref(),
            &ctx.request_id,
            ctx.peer_ip,
            forward_token,
            tls,
        )
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if session.is_process_shutting_down() {
            // Draining (SIGTERM or an upgrade): tell the client not to reuse this connection,
            // or its next request races the close.
            session.set_keepalive(None);
        }
        upstream_response.insert_header("X-Request-Id", ctx.request_id.header())?;
        for cookie in ctx.set_cookies.drain(..) {
            upstream_response.append_header("Set-Cookie", cookie)?;
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        use ErrorType::*;
        let err = match e.etype() {
            _ if let Some(denial) = ctx.late_denial => {
                ctx.deny_reason = Some(denial.reason());
                Some(ApiError::from(denial))
            }
            // The client's body stopped arriving (server.body_timeout_secs), not the upstream.
            ReadTimedout if e.esource() == &ErrorSource::Downstream => {
                self.shared
                    .metrics
                    .client_limits
                    .with_label_values(&["body_timeout"])
                    .inc();
                tracing::debug!(request_id = %ctx.request_id, "request body timed out");
                Some(ApiError::request_timeout())
            }
            HTTPStatus(502) => Some(ApiError::new(
                502,
                "bad_gateway",
                "the upstream is unavailable",
            )),
            HTTPStatus(code) if *code >= 400 && *code < 500 => {
                Some(ApiError::bad_request("the request is malformed"))
            }
            ConnectTimedout | ReadTimedout | WriteTimedout => Some(ApiError::new(
                504,
                "gateway_timeout",
                "the upstream did not answer in time",
            )),
            _ => match e.esource() {
                ErrorSource::Upstream => Some(ApiError::new(
                    502,
                    "bad_gateway",
                    "the upstream refused or dropped the connection",
                )),
                ErrorSource::Downstream => match e.etype() {
                    ReadError | WriteError | ConnectionClosed => None,
                    _ => Some(ApiError::bad_request("the request is malformed")),
                },
                _ => Some(ApiError::new(500, "internal", "internal error")),
            },
        };
        if let Some(kind) = network_failure(e) {
            self.shared
                .metrics
                .connection_errors
                .with_label_values(&[kind])
                .inc();
            if kind == "client_disconnect" {
                tracing::debug!(request_id = %ctx.request_id, error = %e, "client went away");
            } else {
                tracing::info!(request_id = %ctx.request_id, error = %e, "upstream connection failed");
            }
        }
        // A response already under way (the upstream failed inside its body) cannot become an
        // error response: anything written now would be appended to the upstream's body and
        // the body then ended properly, so a truncated body would be presented as complete.
        // Write nothing; the connection is closed without the end of the body (HTTP/1.1: no
        // last chunk, short of its Content-Length; HTTP/2: the stream is reset).
        let started = session.response_written().map(|r| r.status.as_u16());
        let err = if started.is_some() { None } else { err };
        let code = match err {
            Some(err) => {
                ctx.deny_reason.get_or_insert(err.code);
                if ctx.request_id.is_empty() {
                    ctx.request_id = forward::RequestId::generate();
                }
                // The connection is not reused after a failed proxy attempt (below); say so,
                // or a keep-alive client sends its next request into a closing socket.
                session.set_keepalive(None);
                respond::error(session, &err, &ctx.request_id).await
            }
            // Nothing could be written: the client left (nginx's 499), or a response was
            // already under way and is cut short (its status stands).
            None => started.unwrap_or(CLIENT_CLOSED_REQUEST),
        };
        ctx.status = code;
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    fn malformed_request_response(&self) -> Option<(ResponseHeader, bytes::Bytes)> {
        respond::malformed_request()
    }

    fn request_summary(&self, session: &Session, ctx: &Ctx) -> String {
        // What Pingora's own error lines name the request by: the method and the normalized
        // path, never the query string (it carries tokens), plus the request id to find the
        // access-log line.
        let req = session.req_header();
        let path = match &ctx.path {
            Some(p) => p.clone(),
            None => {
                crate::access::normalize_with(req.uri.path(), self.shared.live.load().path_policy)
                    .unwrap_or_else(|_| "(unparsable path)".to_string())
            }
        };
        format!("{} {path}, request_id: {}", req.method, ctx.request_id)
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &Ctx, e: &Error) -> bool {
        // Logged in fail_to_proxy at debug/info with a counter: not the gateway's fault; a
        // late refusal is a refusal, not an error.
        // The same for a client's stalled body (408, counted as `body_timeout`).
        let stalled_body =
            *e.etype() == ErrorType::ReadTimedout && *e.esource() == ErrorSource::Downstream;
        network_failure(e).is_some() || ctx.late_denial.is_some() || stalled_body
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        limits::await_next(session);
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(ctx.status);
        let metrics = &self.shared.metrics;
        let label = match &ctx.route {
            Some(route) => {
                route
                    .requests
                    .get_or_init(|| metrics.status_counters(&route.prefix))
                    .inc(status);
                route.prefix.as_str()
            }
            None => {
                self.shared.pseudo_requests[ctx.pseudo as usize].inc(status);
                ctx.pseudo.label()
            }
        };
        let upstream_secs = ctx.upstream_started.map(|s| s.elapsed().as_secs_f64());
        if let (Some(secs), Some(pool)) = (upstream_secs, ctx.pool.as_ref()) {
            pool.latency
                .get_or_init(|| metrics.upstream_histogram(&pool.name))
                .observe(secs);
        }
        let live = self.shared.live.load();
        let log = &live.config.log;
        if !access_log::keep(log.access_log, log.access_log_sample, status) {
            return;
        }
        let req = session.req_header();
        let raw = req.uri.path();
        let normalized = match ctx.path.take() {
            Some(p) => Some(p),
            None => crate::access::normalize_with(raw, live.path_policy).ok(),
        };
        access_log::write(&access_log::Record {
            request_id: &ctx.request_id,
            client_ip: ctx.client_ip.or(ctx.peer_ip).or_else(|| {
                session
                    .client_addr()
                    .and_then(|a| a.as_inet())
                    .map(|a| a.ip())
            }),
            method: req.method.as_str(),
            path: normalized.as_deref().unwrap_or(raw),
            route: label,
            status,
            bytes_in: session.body_bytes_read() as u64,
            bytes_out: session.body_bytes_sent() as u64,
            upstream: ctx.upstream_addr,
            upstream_ms: upstream_secs.map(|s| s * 1000.0),
            total_ms: ctx.started.elapsed().as_secs_f64() * 1000.0,
            user_id: ctx.identity.as_ref().map(|c| c.sub).or(ctx.user_id),
            deny_reason: ctx.deny_reason,
        });
    }
}

/// The `Host` header, or HTTP/2's `:authority`.
fn host_of(req: &pingora::http::RequestHeader) -> Option<&str> {
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

/// Who is asking, for the audit trail and the rate limits of /auth use-cases.
pub(crate) fn client_info(session: &Session, ctx: &Ctx) -> crate::auth::ClientInfo {
    crate::auth::ClientInfo {
        ip: ctx.client_ip,
        user_agent: session
            .req_header()
            .headers
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(512).collect()),
        request_id: Some(ctx.request_id.to_string()),
    }
}

/// Whether a refusal means "sign in (again)": no usable credential, or a session without the
/// second factor or the recent sign-in the route needs (a browser is then sent to sign in).
fn is_no_credential(denial: Denial) -> bool {
    matches!(
        denial,
        Denial::MissingToken | Denial::InvalidToken(_) | Denial::Revoked | Denial::StepUp { .. }
    )
}

/// Whether `token` can be an ACME HTTP-01 token: base64url characters only (RFC 8555 §8.3),
/// of a sane length (CAs send 43; at least 128 bits of entropy is 22).
fn is_acme_token(token: &str) -> bool {
    (1..=128).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The status logged and counted for a request the client abandoned before its response
/// (nginx's convention; never sent).
const CLIENT_CLOSED_REQUEST: u16 = 499;

/// `client_disconnect` or `upstream_reset` when a proxy failure is the network's doing (the
/// client left, or the upstream dropped the connection), not an error of the gateway.
fn network_failure(e: &Error) -> Option<&'static str> {
    use ErrorType::*;
    let dropped = matches!(e.etype(), ReadError | WriteError | ConnectionClosed);
    match e.esource() {
        ErrorSource::Downstream if dropped => Some("client_disconnect"),
        ErrorSource::Upstream if dropped => Some("upstream_reset"),
        _ => None,
    }
}
