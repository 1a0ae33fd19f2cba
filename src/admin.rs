//! The admin listener: `/healthz`, `/readyz`, `/metrics`, and the live route table
//! (`/routes`, `/routes/explain`). Never proxied, never under /auth.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::access::{self, table::Caller};
use crate::model::Role;
use crate::proxy::Shared;

/// Serves the admin endpoints from the shared state.
pub struct AdminApp {
    shared: Arc<Shared>,
}

impl AdminApp {
    /// An admin app over the gateway's shared state.
    pub fn new(shared: Arc<Shared>) -> AdminApp {
        AdminApp { shared }
    }
}

fn bad_request(message: &str) -> Response<Vec<u8>> {
    let body = serde_json::json!({"error": "invalid_request", "message": message});
    reply(400, "application/json", body.to_string())
}

impl AdminApp {
    /// `GET /routes/explain?method=&url=[&host=][&role=]`: the live table's decision for one
    /// request; `role` stands for a valid token with that role, no role = anonymous.
    async fn explain(&self, query: &str) -> Response<Vec<u8>> {
        let mut method = None;
        let mut url = None;
        let mut host = None;
        let mut role = None;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "method" => method = Some(v.into_owned()),
                "url" => url = Some(v.into_owned()),
                "host" => host = Some(v.into_owned()).filter(|h| !h.is_empty()),
                "role" => role = Some(v.into_owned()).filter(|r| !r.is_empty()),
                _ => {}
            }
        }
        let (Some(method), Some(url)) = (method, url) else {
            return bad_request("method and url are required");
        };
        let caller = match role.as_deref() {
            None => Caller::Anonymous,
            Some(r) => match Role::parse(&r.to_ascii_lowercase()) {
                Some(role) => Caller::Role(role),
                None => return bad_request("role must be user or admin"),
            },
        };
        let live = self.shared.live.load_full();
        match access::table::explain(
            &live.routes,
            live.path_policy,
            &method,
            &url,
            host.as_deref(),
            caller,
        )
        .await
        {
            Ok(e) => match serde_json::to_string(&e) {
                Ok(body) => reply(200, "application/json", body),
                Err(_) => reply(500, "application/json", r#"{"error":"internal"}"#),
            },
            Err(e) => bad_request(&e.to_string()),
        }
    }
}

fn reply(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Response<Vec<u8>> {
    let body = body.into();
    let mut resp = Response::new(body);
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    let len = resp.body().len();
    resp.headers_mut()
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    resp
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        let get = session.req_header().method == http::Method::GET
            || session.req_header().method == http::Method::HEAD;
        if !get
            && matches!(
                path.as_str(),
                "/healthz" | "/readyz" | "/metrics" | "/routes" | "/routes/explain"
            )
        {
            let mut r = reply(
                405,
                "application/json",
                r#"{"error":"method_not_allowed","message":"use GET"}"#,
            );
            r.headers_mut().insert(
                http::header::ALLOW,
                http::HeaderValue::from_static("GET, HEAD"),
            );
            return r;
        }
        match path.as_str() {
            "/healthz" => reply(200, "application/json", r#"{"status":"ok"}"#),
            "/readyz" => {
                let ping =
                    tokio::time::timeout(Duration::from_secs(2), self.shared.store.ping()).await;
                match ping {
                    Ok(Ok(())) => reply(200, "application/json", r#"{"status":"ready"}"#),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "not ready: database unreachable");
                        reply(
                            503,
                            "application/json",
                            r#"{"error":"unavailable","message":"the database is unreachable"}"#,
                        )
                    }
                    Err(_) => reply(
                        503,
                        "application/json",
                        r#"{"error":"unavailable","message":"the database did not answer in time"}"#,
                    ),
                }
            }
            "/metrics" => {
                let usage = self.shared.store.pool_usage();
                let m = &self.shared.metrics;
                m.db_pool
                    .with_label_values(&["idle"])
                    .set(usage.idle as i64);
                m.db_pool
                    .with_label_values(&["in_use"])
                    .set(usage.in_use as i64);
                let entries = self.shared.authorizer.revocations().entries().await;
                m.revocation_cache_entries
                    .set(i64::try_from(entries).unwrap_or(i64::MAX));
                reply(200, "text/plain; version=0.0.4", m.render())
            }
            "/routes" => {
                let live = self.shared.live.load();
                let body = serde_json::json!({
                    "routes": access::table::list(&live.routes),
                    "warnings": access::table::warnings(&live.routes),
                });
                reply(200, "application/json", body.to_string())
            }
            "/routes/explain" => {
                let query = session.req_header().uri.query().unwrap_or("").to_string();
                self.explain(&query).await
            }
            _ => reply(
                404,
                "application/json",
                r#"{"error":"not_found","message":"admin endpoints are /healthz, /readyz, /metrics, /routes and /routes/explain"}"#,
            ),
        }
    }
}
