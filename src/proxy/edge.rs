//! What depends on the listener a request came in on (docs/api.md, "TLS and HTTP/2"): the TLS listener's Pingora
//! settings and its look at the first bytes (plain HTTP refused readably, the TLS 1.3
//! minimum), `Strict-Transport-Security` on every TLS response, and the 308 that sends plain
//! HTTP to https when `redirect_http` is on. The decisions themselves are in `tls/`.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::http::ResponseHeader;
use pingora::listeners::PreTlsProcess;
use pingora::listeners::tls::TlsSettings;
use pingora::modules::http::{HttpModule, HttpModuleBuilder, HttpModules, Module};
use pingora::protocols::ALPN;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::proxy::Session;
use pingora::{Error, ErrorType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Ctx, forward, respond};
use crate::access::normalize;
use crate::config::Config;
use crate::tls::hello::{self, Start};
use crate::tls::{CertResolver, redirect};

/// The TLS listener's settings: our SNI resolver, h2 offered by ALPN when `http2`, TLS 1.2
/// left out of the protocol versions when `tls13_only` (through our pingora-core patch).
pub fn tls_settings(
    resolver: Arc<CertResolver>,
    http2: bool,
    tls13_only: bool,
) -> pingora::Result<TlsSettings> {
    // Empty paths: the resolver supplies every certificate, so Pingora never reads a file
    // (and never panics on one).
    let mut settings = TlsSettings::intermediate("", "")?;
    settings.set_cert_resolver(resolver);
    settings.set_tls13_only(tls13_only);
    settings.set_alpn(if http2 { ALPN::H2H1 } else { ALPN::H1 });
    Ok(settings)
}

/// The TLS port's look at a connection's first bytes, before rustls sees them.
pub fn first_bytes() -> Arc<dyn PreTlsProcess> {
    Arc::new(FirstBytes)
}

struct FirstBytes;

/// What a plain-HTTP client on the TLS port reads.
const PLAIN_HTTP_REFUSAL: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n\
Content-Length: 50\r\nConnection: close\r\n\r\nThis port speaks HTTPS: use an https:// URL here.\n";

fn refused(why: &'static str) -> Box<Error> {
    Error::explain(ErrorType::HandshakeError, why)
}

#[async_trait]
impl PreTlsProcess for FirstBytes {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        // The handshake deadline (header_timeout_secs) bounds this too.
        let mut head = [0u8; hello::RECORD_HEADER_LEN];
        stream
            .read_exact(&mut head)
            .await
            .map_err(|_| refused("the client closed before a TLS record"))?;
        if hello::classify(&head) == Start::PlainHttp {
            let _ = stream.write_all(PLAIN_HTTP_REFUSAL).await;
            let _ = stream.flush().await;
            return Err(refused("plain HTTP sent to the TLS port"));
        }
        stream.rewind(&head);
        Ok(())
    }
}

/// Listener-dependent rules, fixed at start from `[server.tls]`.
#[derive(Debug, Clone, Default)]
pub struct Edge {
    /// `Strict-Transport-Security` value for TLS responses.
    hsts: Option<String>,
    /// The TLS port plain-HTTP requests are redirected to.
    redirect_to_port: Option<u16>,
}

impl Edge {
    /// From `[server.tls]` (nothing to do without it).
    pub fn new(config: &Config) -> Edge {
        let Some(tls) = &config.server.tls else {
            return Edge::default();
        };
        Edge {
            hsts: (tls.hsts_max_age_secs > 0).then(|| format!("max-age={}", tls.hsts_max_age_secs)),
            redirect_to_port: tls.redirect_http.then_some(tls.listen.port()),
        }
    }

    /// The downstream modules of the proxy service: Pingora's default (compression, off) and,
    /// when HSTS is on, the module that stamps it on every response of a TLS request.
    pub fn init_downstream_modules(&self, modules: &mut HttpModules) {
        // No response compression module (Pingora adds a disabled one by default, built for
        // every request): the gateway never compresses.
        if let Some(value) = &self.hsts {
            modules.add_module(Box::new(HstsBuilder {
                value: value.clone(),
            }));
        }
    }

    /// First step of `request_filter`: arms HSTS for a TLS request, or answers a plain one
    /// with the https redirect. Returns whether a response was written.
    pub(super) async fn answered(&self, session: &mut Session, ctx: &mut Ctx) -> bool {
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        if tls {
            if let Some(hsts) = session.downstream_modules_ctx.get_mut::<Hsts>() {
                hsts.armed = true;
            }
            return false;
        }
        let Some(port) = self.redirect_to_port else {
            return false;
        };
        let req = session.req_header();
        if normalize(req.uri.path()).is_ok_and(|p| redirect::is_acme_challenge(&p)) {
            return false;
        }
        let authority = req.uri.authority().map(|a| a.as_str()).or_else(|| {
            req.headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        });
        let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let location = redirect::https_location(authority, port, target);
        ctx.request_id = forward::RequestId::of(req);
        ctx.status = match location {
            Some(location) => {
                respond::permanent_redirect(session, &location, &ctx.request_id).await
            }
            None => {
                let err = respond::ApiError::bad_request(
                    "a valid Host header is needed to redirect to https",
                );
                respond::error(session, &err, &ctx.request_id).await
            }
        };
        true
    }
}

struct HstsBuilder {
    value: String,
}

impl HttpModuleBuilder for HstsBuilder {
    fn init(&self) -> Module {
        Box::new(Hsts {
            value: self.value.clone(),
            armed: false,
        })
    }
}

/// Per request: adds `Strict-Transport-Security` to the response once armed (TLS only), so
/// proxied, /auth and error responses all carry it without each writer knowing.
struct Hsts {
    value: String,
    armed: bool,
}

#[async_trait]
impl HttpModule for Hsts {
    async fn response_header_filter(
        &mut self,
        resp: &mut ResponseHeader,
        _end_of_stream: bool,
    ) -> pingora::Result<()> {
        if self.armed {
            resp.insert_header("Strict-Transport-Security", self.value.as_str())?;
        }
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}
