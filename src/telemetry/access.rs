//! The access log: one line per proxied or /auth request (target `access`), written straight
//! to the background writer `init_logging` set up. Not a tracing event: every field is always
//! present (`null` when not applicable), and a line dropped by sampling costs no formatting.

use std::cell::RefCell;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

use serde::Serialize;
use tracing_appender::non_blocking::NonBlocking;
use uuid::Uuid;

use crate::config::LogFormat;

static SINK: OnceLock<(NonBlocking, LogFormat)> = OnceLock::new();

/// Routes access lines to the logging writer, in the logging format.
pub(super) fn install(writer: NonBlocking, format: LogFormat) {
    let _ = SINK.set((writer, format));
}

/// Whether a line with this status is written: errors (and status 0, no response at all)
/// always; 2xx/3xx with probability `sample`. Decided before anything is formatted.
pub fn keep(enabled: bool, sample: f64, status: u16) -> bool {
    enabled
        && (!(100..400).contains(&status)
            || sample >= 1.0
            || (sample > 0.0 && rand::random::<f64>() < sample))
}

/// One request, as the access log records it.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    /// `X-Request-Id` sent back to the client.
    pub request_id: &'a str,
    /// Client address (after trusted-proxy `X-Forwarded-For` handling).
    pub client_ip: Option<IpAddr>,
    /// HTTP method.
    pub method: &'a str,
    /// Normalized path (the raw path when it could not be normalized); no query string,
    /// which may carry secrets (OIDC codes).
    pub path: &'a str,
    /// Matched route prefix, `/auth`, or `none`.
    pub route: &'a str,
    /// Status sent; 0 when the client left before any response.
    pub status: u16,
    /// Request body bytes read.
    pub bytes_in: u64,
    /// Response body bytes sent.
    pub bytes_out: u64,
    /// Upstream address tried, for proxied requests.
    pub upstream: Option<SocketAddr>,
    /// Time spent on the upstream, in milliseconds.
    pub upstream_ms: Option<f64>,
    /// Time from the request's arrival to the end of logging, in milliseconds.
    pub total_ms: f64,
    /// The authenticated user, when there is one.
    pub user_id: Option<Uuid>,
    /// Why the gateway refused, e.g. `missing_token`, `forbidden`, `no_route`.
    pub deny_reason: Option<&'a str>,
}

#[derive(Serialize)]
struct JsonLine<'a> {
    #[serde(serialize_with = "serialize_now")]
    timestamp: (),
    level: &'static str,
    target: &'static str,
    #[serde(flatten)]
    record: &'a Record<'a>,
}

thread_local! {
    static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The current time, RFC 3339 with microseconds, formatted straight into the output.
fn now() -> impl std::fmt::Display {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ")
}

fn serialize_now<S: serde::Serializer>(_: &(), s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&now())
}

/// `-` for a missing value, without formatting into a temporary string.
struct Opt<T>(Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for Opt<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// Milliseconds with three decimals, or `-`.
struct Ms(Option<f64>);

impl std::fmt::Display for Ms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(ms) => write!(f, "{ms:.3}"),
            None => f.write_str("-"),
        }
    }
}

/// Formats `record` as one line in the configured format.
pub fn format(record: &Record<'_>, format: LogFormat, out: &mut Vec<u8>) {
    match format {
        LogFormat::Json => {
            let line = JsonLine {
                timestamp: (),
                level: "INFO",
                target: "access",
                record,
            };
            if serde_json::to_writer(&mut *out, &line).is_err() {
                out.clear();
                return;
            }
        }
        LogFormat::Text => {
            let _ = write!(
                out,
                "{}  INFO access: request_id={} client_ip={} method={} path={:?} route={:?} \
                 status={} bytes_in={} bytes_out={} upstream={} upstream_ms={} total_ms={:.3} \
                 user_id={} deny_reason={}",
                now(),
                record.request_id,
                Opt(record.client_ip),
                record.method,
                record.path,
                record.route,
                record.status,
                record.bytes_in,
                record.bytes_out,
                Opt(record.upstream),
                Ms(record.upstream_ms),
                record.total_ms,
                Opt(record.user_id),
                record.deny_reason.unwrap_or("-"),
            );
        }
    }
    out.push(b'\n');
}

/// Queues one line on the background writer; never blocks on I/O. Before logging is set up
/// (embedded use, tests) the line goes to stderr directly.
pub fn write(record: &Record<'_>) {
    BUF.with(|buf| {
        let Ok(mut buf) = buf.try_borrow_mut() else {
            return;
        };
        buf.clear();
        match SINK.get() {
            Some((writer, fmt)) => {
                format(record, *fmt, &mut buf);
                let _ = writer.clone().write_all(&buf);
            }
            None => {
                format(record, LogFormat::Text, &mut buf);
                let _ = std::io::stderr().write_all(&buf);
            }
        }
        // A pathological line must not pin a large buffer to the thread forever.
        if buf.capacity() > 64 * 1024 {
            *buf = Vec::new();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record<'static> {
        Record {
            request_id: "r1",
            client_ip: Some("10.0.0.1".parse().unwrap()),
            method: "GET",
            path: "/api/x",
            route: "/api/",
            status: 401,
            bytes_in: 0,
            bytes_out: 10,
            upstream: None,
            upstream_ms: None,
            total_ms: 1.5,
            user_id: None,
            deny_reason: Some("missing_token"),
        }
    }

    #[test]
    fn json_lines_carry_every_field_with_nulls() {
        let mut out = Vec::new();
        format(&record(), LogFormat::Json, &mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["target"], "access");
        assert_eq!(v["deny_reason"], "missing_token");
        assert_eq!(v["client_ip"], "10.0.0.1");
        for key in [
            "request_id",
            "client_ip",
            "method",
            "path",
            "route",
            "status",
            "bytes_in",
            "bytes_out",
            "upstream",
            "upstream_ms",
            "total_ms",
            "user_id",
            "deny_reason",
        ] {
            assert!(v.get(key).is_some(), "{key} missing");
        }
        assert!(v["upstream"].is_null() && v["user_id"].is_null());
    }

    #[test]
    fn text_lines_quote_the_path_and_are_one_line() {
        let mut r = record();
        r.path = "/a\nb c";
        let mut out = Vec::new();
        format(&r, LogFormat::Text, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches('\n').count(), 1);
        assert!(text.contains(r#"path="/a\nb c""#), "{text}");
        assert!(text.contains("deny_reason=missing_token"));
    }

    #[test]
    fn sampling_keeps_errors_and_drops_successes_at_zero() {
        assert!(keep(true, 0.0, 500) && keep(true, 0.0, 404) && keep(true, 0.0, 0));
        assert!(!keep(true, 0.0, 200) && !keep(true, 0.0, 302));
        assert!(keep(true, 1.0, 200));
        assert!(!keep(false, 1.0, 500));
        let kept = (0..10_000).filter(|_| keep(true, 0.25, 200)).count();
        assert!((1_500..3_500).contains(&kept), "{kept}");
    }
}
