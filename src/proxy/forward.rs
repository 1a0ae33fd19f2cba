//! What crosses to the upstream: framing checks, the request id, the client address, and the
//! header rewrite (client identity headers stripped, ours added, `Authorization` dropped unless
//! the route forwards it).

use std::net::IpAddr;

use http::{HeaderName, HeaderValue};
use ipnet::IpNet;
use pingora::Result;
use pingora::http::RequestHeader;

use super::respond::ApiError;
use crate::config::Config;
use crate::tokens::Claims;

/// Header names fixed at start.
#[derive(Debug, Clone)]
pub struct Forwarding {
    user_id: HeaderName,
    role: HeaderName,
    session_id: HeaderName,
    email: HeaderName,
    /// Identity header names, lower-case with `_` as `-`.
    strip: Vec<String>,
    trusted_proxies: Vec<IpNet>,
}

/// Lower-case with `_` read as `-`: how names are compared for stripping.
fn canonical_name(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

/// Whether `name`, read lower-case with `_` as `-`, starts with the canonical `prefix`.
fn canonical_starts_with(name: &[u8], prefix: &[u8]) -> bool {
    name.len() >= prefix.len()
        && name.iter().zip(prefix).all(|(n, p)| {
            let n = n.to_ascii_lowercase();
            (if n == b'_' { b'-' } else { n }) == *p
        })
}

fn header_name(name: &str, fallback: &'static str) -> HeaderName {
    HeaderName::from_bytes(name.as_bytes()).unwrap_or(HeaderName::from_static(fallback))
}

impl Forwarding {
    /// From `[identity_headers]` and `server.trusted_proxies`.
    pub fn new(config: &Config) -> Forwarding {
        let ih = &config.identity_headers;
        Forwarding {
            user_id: header_name(&ih.user_id, "x-auth-user-id"),
            role: header_name(&ih.role, "x-auth-role"),
            session_id: header_name(&ih.session_id, "x-auth-session-id"),
            email: header_name(&ih.email, "x-auth-email"),
            strip: ih.names().iter().map(|n| canonical_name(n)).collect(),
            trusted_proxies: config.server.trusted_proxies.clone(),
        }
    }

    /// Whether a client-sent header must never reach the upstream. Compares in place (ASCII
    /// case folded, `_` read as `-`): it runs for every header of every request.
    pub fn is_identity_header(&self, name: &str) -> bool {
        let name = name.as_bytes();
        canonical_starts_with(name, b"x-auth-")
            || self
                .strip
                .iter()
                .any(|s| s.len() == name.len() && canonical_starts_with(name, s.as_bytes()))
    }

    /// The identity headers for `claims` (names from `[identity_headers]`), as the upstream
    /// gets them; forward-auth answers with the same.
    pub fn identity(&self, c: &Claims) -> [(HeaderName, String); 4] {
        [
            (self.user_id.clone(), c.sub.to_string()),
            (self.role.clone(), c.role.as_str().to_string()),
            (self.session_id.clone(), c.sid.to_string()),
            (self.email.clone(), c.email.clone()),
        ]
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// The client address: the peer, or — when the peer is a trusted proxy — the rightmost
    /// untrusted address of `X-Forwarded-For`.
    pub fn client_ip(&self, peer: Option<IpAddr>, req: &RequestHeader) -> Option<IpAddr> {
        let peer = peer?;
        if !self.trusted(peer) {
            return Some(peer);
        }
        let mut client = peer;
        let chain: Vec<IpAddr> = req
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        for ip in chain.into_iter().rev() {
            client = ip;
            if !self.trusted(ip) {
                break;
            }
        }
        Some(client)
    }

    /// The origin (`scheme://host[:port]`) the client used: the scheme from TLS, the host from
    /// `Host` (or HTTP/2's `:authority`), unless a trusted proxy in front said otherwise in
    /// `X-Forwarded-Proto` / `X-Forwarded-Host`. What a cookie-authenticated write's `Origin`
    /// must be.
    pub fn external_origin(&self, peer: Option<IpAddr>, req: &RequestHeader, tls: bool) -> String {
        let trusted = peer.is_some_and(|p| self.trusted(p));
        let forwarded = |name: &str| {
            trusted
                .then(|| req.headers.get(name).and_then(|v| v.to_str().ok()))
                .flatten()
                .and_then(|v| v.split(',').next())
                .map(str::trim)
        };
        let scheme = forwarded("x-forwarded-proto").unwrap_or(if tls { "https" } else { "http" });
        let host = forwarded("x-forwarded-host")
            .or_else(|| {
                req.headers
                    .get(http::header::HOST)
                    .and_then(|v| v.to_str().ok())
            })
            .or_else(|| req.uri.authority().map(|a| a.as_str()))
            .unwrap_or_default();
        crate::access::browser::origin_of(scheme, host)
    }

    /// Rewrites the upstream request headers. `tls` says whether the client reached the TLS
    /// listener: the upstream learns the scheme from `X-Forwarded-Proto`, since the gateway
    /// speaks plain HTTP to it.
    pub fn rewrite(
        &self,
        req: &mut RequestHeader,
        identity: Option<&Claims>,
        request_id: &RequestId,
        peer: Option<IpAddr>,
        forward_token: bool,
        tls: bool,
    ) -> Result<()> {
        // Headers named in Connection are hop-by-hop; honour that, but never for a header we
        // set ourselves — and never let it remove identity headers.
        let connection_tokens: Vec<String> = connection_tokens(req).collect();
        // A WebSocket handshake reaches the upstream with exactly `Upgrade: websocket`
        // (hop-by-hop, but the upstream must see it to switch protocols); any other protocol
        // offered beside it (h2c, …) and `HTTP2-Settings` are dropped.
        let websocket = is_websocket(req);
        let remove: Vec<HeaderName> = req
            .headers
            .keys()
            .filter(|name| {
                let n = name.as_str();
                self.is_identity_header(n)
                    || (n == "authorization" && !forward_token)
                    || (n == "upgrade" && !websocket)
                    || (connection_tokens.iter().any(|t| t == n)
                        && !protected(n)
                        && !(websocket && n == "upgrade"))
                    || n == "connection"
                    || n == "http2-settings"
                    || n == "keep-alive"
                    || n == "proxy-connection"
                    || n == "x-request-id"
            })
            .cloned()
            .collect();
        for name in remove {
            req.remove_header(&name);
        }
        if websocket {
            req.insert_header("Connection", "upgrade")?;
            req.insert_header("Upgrade", "websocket")?;
        }
        if let Some(c) = identity {
            req.insert_header(self.user_id.clone(), c.sub.to_string())?;
            req.insert_header(self.role.clone(), c.role.as_str())?;
            req.insert_header(self.session_id.clone(), c.sid.to_string())?;
            req.insert_header(self.email.clone(), c.email.as_str())?;
        }
        req.insert_header("X-Request-Id", request_id.header())?;
        if let Some(peer) = peer {
            let existing: Vec<String> = req
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok().map(str::to_string))
                .collect();
            let value = if self.trusted(peer) && !existing.is_empty() {
                format!("{}, {peer}", existing.join(", "))
            } else {
                peer.to_string()
            };
            req.insert_header("X-Forwarded-For", value)?;
        }
        self.forwarded_scheme_and_host(req, peer, tls)
    }

    /// `X-Forwarded-Proto` and `X-Forwarded-Host`: what a trusted proxy in front says is kept
    /// (it saw the client; the gateway only saw the proxy); anyone else's is replaced by what
    /// the gateway saw, so that an upstream building URLs from them cannot be steered by a
    /// client. Without a peer address (never on TCP) the gateway's own view is used.
    fn forwarded_scheme_and_host(
        &self,
        req: &mut RequestHeader,
        peer: Option<IpAddr>,
        tls: bool,
    ) -> Result<()> {
        let keep = peer.is_some_and(|p| self.trusted(p));
        if !(keep && req.headers.contains_key("x-forwarded-proto")) {
            req.insert_header("X-Forwarded-Proto", if tls { "https" } else { "http" })?;
        }
        if !(keep && req.headers.contains_key("x-forwarded-host")) {
            // HTTP/2 carries the host in `:authority`; `check_framing` made sure one is there.
            let host = req.headers.get(http::header::HOST).cloned().or_else(|| {
                req.uri
                    .authority()
                    .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
            });
            match host {
                Some(host) => req.insert_header("X-Forwarded-Host", host)?,
                None => {
                    req.remove_header("x-forwarded-host");
                }
            }
        }
        Ok(())
    }
}

/// The comma-separated tokens of every `Connection` header, lower-cased.
fn connection_tokens(req: &RequestHeader) -> impl Iterator<Item = String> + '_ {
    req.headers
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
}

/// Whether the request is a WebSocket handshake (HTTP/1.1, `Connection: upgrade`,
/// `Upgrade: websocket`): the only upgrade the gateway relays.
pub fn is_websocket(req: &RequestHeader) -> bool {
    req.version == http::Version::HTTP_11
        && req.headers.get("upgrade").is_some_and(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
            })
        })
        && connection_tokens(req).any(|t| t == "upgrade")
}

/// Headers a client's `Connection` header may not remove.
fn protected(name: &str) -> bool {
    matches!(
        name,
        "host"
            | "content-length"
            | "transfer-encoding"
            | "x-forwarded-for"
            | "x-forwarded-proto"
            | "x-forwarded-host"
            | "x-request-id"
    )
}

/// How often the framing-relevant header names occur.
#[derive(Debug, Default, PartialEq, Eq)]
struct FramingCounts {
    content_length: usize,
    transfer_encoding: usize,
    host: usize,
}

impl FramingCounts {
    fn count(&mut self, name: &[u8]) {
        if name.eq_ignore_ascii_case(b"content-length") {
            self.content_length += 1;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.transfer_encoding += 1;
        } else if name.eq_ignore_ascii_case(b"host") {
            self.host += 1;
        }
    }

    /// From the header block as the client sent it (request line first).
    fn from_raw(head: &[u8]) -> FramingCounts {
        let mut counts = FramingCounts::default();
        for line in head.split(|b| *b == b'\n').skip(1) {
            if let Some(colon) = line.iter().position(|b| *b == b':') {
                counts.count(line[..colon].trim_ascii());
            }
        }
        counts
    }

    fn from_parsed(req: &RequestHeader) -> FramingCounts {
        let mut counts = FramingCounts::default();
        for name in req.headers.keys() {
            for _ in req.headers.get_all(name) {
                counts.count(name.as_str().as_bytes());
            }
        }
        counts
    }
}

/// HTTP framing rules of docs/api.md, "HTTP framing". `raw_head` is the header block as received
/// (HTTP/1): Pingora drops `Content-Length` when `Transfer-Encoding` is also present before any
/// filter runs, so only the raw bytes still show that the request was ambiguous.
pub fn check_framing(
    req: &RequestHeader,
    raw_head: Option<&[u8]>,
) -> std::result::Result<(), ApiError> {
    // Only a request that declares a body can have had a header dropped by the parser; the
    // rest (most GETs) is judged on the parsed headers without rescanning the raw bytes.
    let declares_body =
        req.headers.contains_key("transfer-encoding") || req.headers.contains_key("content-length");
    let counts = match raw_head {
        Some(head) if declares_body => FramingCounts::from_raw(head),
        _ => FramingCounts::from_parsed(req),
    };
    if counts.content_length > 1 {
        return Err(ApiError::bad_request(
            "the request has more than one Content-Length",
        ));
    }
    if counts.content_length == 1 && counts.transfer_encoding > 0 {
        return Err(ApiError::bad_request(
            "the request has both Content-Length and Transfer-Encoding",
        ));
    }
    if counts.transfer_encoding > 0 && !only_chunked(req) {
        // RFC 9112 §6.1: a coding the server does not understand is 501; `chunked` twice (or
        // not last) is not a framing the gateway will guess at. Either way nothing is
        // forwarded: re-framing the body would silently drop the other codings.
        return Err(ApiError::new(
            501,
            "not_implemented",
            "only \"Transfer-Encoding: chunked\" is supported",
        ));
    }
    match counts.host {
        // HTTP/2 carries the host in `:authority`.
        0 if req.version == http::Version::HTTP_2 && req.uri.authority().is_some() => {}
        0 => return Err(ApiError::bad_request("the request has no Host header")),
        1 => {}
        _ => {
            return Err(ApiError::bad_request(
                "the request has more than one Host header",
            ));
        }
    }
    // Pingora's rule: a hop-by-hop claim on these would let a client strip routing or
    // client-address information from what the upstream sees.
    if connection_tokens(req).any(|t| t == "host" || t == "x-forwarded-for") {
        return Err(ApiError::bad_request(
            "the Connection header may not name Host or X-Forwarded-For",
        ));
    }
    Ok(())
}

/// Whether every `Transfer-Encoding` header together names exactly one coding, `chunked`,
/// and nothing else, not even an empty list element.
fn only_chunked(req: &RequestHeader) -> bool {
    let mut codings = req
        .headers
        .get_all("transfer-encoding")
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        // An empty element (`chunked, `) counts: Pingora would not frame that as chunked.
        .map(<[u8]>::trim_ascii);
    matches!(
        (codings.next(), codings.next()),
        (Some(c), None) if c.eq_ignore_ascii_case(b"chunked")
    )
}

/// Size of the request head as the limit counts it: every header name and value, plus the
/// `: ` and CRLF each line costs on the wire, plus the target. The same for HTTP/1 and HTTP/2.
pub fn head_bytes(req: &RequestHeader) -> usize {
    let target = req.uri.path_and_query().map_or(0, |p| p.as_str().len());
    req.headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + target
}

/// A request's `X-Request-Id`: the client's value when it is a sane token (shared with the
/// request head, not copied), else a fresh UUID formatted without a temporary `String`. The
/// upstream request and the response get clones of the same header value.
#[derive(Debug, Clone)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The client's id when sane, else a fresh one.
    pub fn of(req: &RequestHeader) -> RequestId {
        match req.headers.get("x-request-id") {
            Some(v)
                if !v.is_empty()
                    && v.len() <= 128
                    && v.as_bytes().iter().all(u8::is_ascii_graphic) =>
            {
                RequestId(v.clone())
            }
            _ => RequestId::generate(),
        }
    }

    /// A fresh random id.
    pub fn generate() -> RequestId {
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
        // Hex digits and hyphens: always a valid value.
        RequestId(HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static("-")))
    }

    /// The header value, for the upstream request and the response.
    pub fn header(&self) -> HeaderValue {
        self.0.clone()
    }
}

impl Default for RequestId {
    /// Empty until the request head has been read.
    fn default() -> RequestId {
        RequestId(HeaderValue::from_static(""))
    }
}

impl std::ops::Deref for RequestId {
    type Target = str;

    fn deref(&self) -> &str {
        // Only visible ASCII gets in (checked above, or a UUID).
        self.0.to_str().unwrap_or_default()
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rid() -> RequestId {
        RequestId(HeaderValue::from_static("rid"))
    }

    #[test]
    fn request_ids_keep_a_sane_client_value_and_replace_the_rest() {
        let with = |v: &str| {
            let mut req = RequestHeader::build("GET", b"/", None).unwrap();
            req.insert_header("X-Request-Id", v).unwrap();
            RequestId::of(&req).to_string()
        };
        assert_eq!(with("abc-123"), "abc-123");
        for bad in ["", "has space", &"x".repeat(129)] {
            let id = with(bad);
            assert_ne!(id, bad);
            assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
        }
        let none = RequestId::of(&RequestHeader::build("GET", b"/", None).unwrap());
        assert_eq!(none.header().to_str().unwrap(), &*none);
        assert_ne!(
            RequestId::generate().to_string(),
            RequestId::generate().to_string()
        );
    }

    fn forwarding(trusted: &[&str]) -> Forwarding {
        let mut config = Config::default();
        config.server.trusted_proxies = trusted.iter().map(|s| s.parse().unwrap()).collect();
        Forwarding::new(&config)
    }

    #[test]
    fn framing_is_judged_on_the_headers_as_sent() {
        // What the parser kept of a request with a body: one Content-Length.
        let mut req = RequestHeader::build("POST", b"/", None).unwrap();
        req.insert_header("Content-Length", "1").unwrap();
        let check = |head: &[u8]| check_framing(&req, Some(head)).map_err(|e| e.message);
        assert!(check(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n").is_ok());
        for bad in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 1\r\nCONTENT-LENGTH: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nhost : b\r\n\r\n",
        ] {
            assert!(check(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        // A request without a body is judged on the parsed headers alone.
        let mut get = RequestHeader::build("GET", b"/", None).unwrap();
        assert!(check_framing(&get, Some(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")).is_err());
        get.insert_header("Host", "a").unwrap();
        assert!(check_framing(&get, Some(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")).is_ok());
        get.append_header("Host", "b").unwrap();
        assert!(check_framing(&get, None).is_err());
    }

    #[test]
    fn the_head_size_counts_names_values_and_the_target() {
        let mut req = RequestHeader::build("GET", b"/abc?d", None).unwrap();
        assert_eq!(head_bytes(&req), 6);
        req.insert_header("Host", "a").unwrap();
        req.append_header("X-Big", "x".repeat(100)).unwrap();
        assert_eq!(head_bytes(&req), 6 + (4 + 1 + 4) + (5 + 100 + 4));
    }

    #[test]
    fn a_connection_header_naming_host_or_forwarded_for_is_refused() {
        for value in ["Host", "close, X-Forwarded-For", "x-forwarded-for"] {
            let mut req = RequestHeader::build("GET", b"/", None).unwrap();
            req.insert_header("Host", "a").unwrap();
            req.insert_header("Connection", value).unwrap();
            assert!(check_framing(&req, None).is_err(), "{value}");
        }
    }

    #[test]
    fn a_transfer_coding_other_than_one_chunked_is_not_implemented() {
        for (values, ok) in [
            (&["chunked"][..], true),
            (&["Chunked "], true),
            (&["gzip, chunked"], false),
            (&["chunked, chunked"], false),
            (&["gzip", "chunked"], false),
            (&["chunked", "chunked"], false),
            (&["identity"], false),
            (&["chunked, "], false),
            (&[", chunked"], false),
        ] {
            let mut req = RequestHeader::build("POST", b"/", None).unwrap();
            req.insert_header("Host", "a").unwrap();
            for v in values {
                req.append_header("Transfer-Encoding", *v).unwrap();
            }
            let checked = check_framing(&req, None);
            assert_eq!(checked.is_ok(), ok, "{values:?}");
            if let Err(e) = checked {
                assert_eq!((e.status, e.code), (501, "not_implemented"), "{values:?}");
            }
        }
    }

    #[test]
    fn a_websocket_handshake_keeps_its_upgrade_and_other_upgrades_are_dropped() {
        let f = forwarding(&[]);
        let mut ws = RequestHeader::build("GET", b"/", None).unwrap();
        ws.insert_header("Connection", "keep-alive, Upgrade")
            .unwrap();
        ws.insert_header("Upgrade", "WebSocket").unwrap();
        ws.insert_header("Sec-WebSocket-Key", "k").unwrap();
        assert!(is_websocket(&ws));
        f.rewrite(&mut ws, None, &rid(), None, false, false)
            .unwrap();
        assert_eq!(ws.headers["upgrade"], "websocket");
        assert_eq!(ws.headers["connection"], "upgrade");
        assert_eq!(ws.headers["sec-websocket-key"], "k");

        let mut h2c = RequestHeader::build("GET", b"/", None).unwrap();
        h2c.insert_header("Connection", "Upgrade, HTTP2-Settings")
            .unwrap();
        h2c.insert_header("Upgrade", "h2c").unwrap();
        assert!(!is_websocket(&h2c));
        f.rewrite(&mut h2c, None, &rid(), None, false, false)
            .unwrap();
        assert!(!h2c.headers.contains_key("upgrade"));
        assert!(!h2c.headers.contains_key("connection"));

        // Upgrade without Connection: upgrade is not a handshake either.
        let mut bare = RequestHeader::build("GET", b"/", None).unwrap();
        bare.insert_header("Upgrade", "websocket").unwrap();
        assert!(!is_websocket(&bare));
    }

    #[test]
    fn identity_headers_match_in_any_case_and_with_underscores() {
        let f = forwarding(&[]);
        for n in [
            "X-Auth-User-Id",
            "x_auth_user_id",
            "X_AUTH_ROLE",
            "x-auth-anything",
        ] {
            assert!(f.is_identity_header(n), "{n}");
        }
        assert!(!f.is_identity_header("x-authority"));
        assert!(!f.is_identity_header("authorization"));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let f = forwarding(&["10.0.0.0/8"]);
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("X-Forwarded-For", "203.0.113.9, 10.1.1.1")
            .unwrap();
        let trusted_peer: IpAddr = "10.0.0.2".parse().unwrap();
        let stranger: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(
            f.client_ip(Some(trusted_peer), &req),
            Some("203.0.113.9".parse().unwrap())
        );
        assert_eq!(f.client_ip(Some(stranger), &req), Some(stranger));

        let mut up = req.clone();
        f.rewrite(&mut up, None, &rid(), Some(stranger), false, false)
            .unwrap();
        assert_eq!(up.headers["x-forwarded-for"], "198.51.100.7");
        let mut up = req.clone();
        f.rewrite(&mut up, None, &rid(), Some(trusted_peer), false, false)
            .unwrap();
        assert_eq!(
            up.headers["x-forwarded-for"],
            "203.0.113.9, 10.1.1.1, 10.0.0.2"
        );
    }

    #[test]
    fn forwarded_proto_and_host_are_ours_unless_a_trusted_proxy_sent_them() {
        let f = forwarding(&["10.0.0.0/8"]);
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("Host", "app.example").unwrap();
        req.insert_header("X-Forwarded-Proto", "https").unwrap();
        req.insert_header("X-Forwarded-Host", "evil.example")
            .unwrap();
        let stranger: IpAddr = "198.51.100.7".parse().unwrap();
        let proxy: IpAddr = "10.0.0.2".parse().unwrap();
        for (peer, tls, proto, host) in [
            (stranger, false, "http", "app.example"),
            (stranger, true, "https", "app.example"),
            (proxy, false, "https", "evil.example"),
        ] {
            let mut up = req.clone();
            f.rewrite(&mut up, None, &rid(), Some(peer), false, tls)
                .unwrap();
            assert_eq!(up.headers["x-forwarded-proto"], proto, "{peer} {tls}");
            assert_eq!(up.headers["x-forwarded-host"], host, "{peer} {tls}");
        }
        // A trusted proxy that sent neither: the gateway's view.
        let mut bare = RequestHeader::build("GET", b"/", None).unwrap();
        bare.insert_header("Host", "app.example").unwrap();
        f.rewrite(&mut bare, None, &rid(), Some(proxy), false, true)
            .unwrap();
        assert_eq!(bare.headers["x-forwarded-proto"], "https");
        assert_eq!(bare.headers["x-forwarded-host"], "app.example");
    }

    #[test]
    fn connection_cannot_drop_identity_and_authorization_is_dropped() {
        let f = forwarding(&[]);
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("Connection", "X-Auth-User-Id, x-keep-me, close")
            .unwrap();
        req.insert_header("X-Keep-Me", "1").unwrap();
        req.insert_header("X_Auth_User_Id", "spoofed").unwrap();
        req.insert_header("Authorization", "Bearer t").unwrap();
        let claims = Claims {
            iss: "i".into(),
            aud: "a".into(),
            sub: uuid::Uuid::new_v4(),
            role: crate::model::Role::User,
            sid: uuid::Uuid::new_v4(),
            jti: uuid::Uuid::new_v4(),
            iat: 0,
            nbf: 0,
            exp: 0,
            email: "e@x.io".into(),
            acr: "aal1".into(),
            amr: vec!["pwd".into()],
            auth_time: 0,
        };
        f.rewrite(&mut req, Some(&claims), &rid(), None, false, false)
            .unwrap();
        assert_eq!(
            req.headers["x-auth-user-id"],
            claims.sub.to_string().as_str()
        );
        assert_eq!(req.headers.get_all("x-auth-user-id").iter().count(), 1);
        assert!(!req.headers.contains_key("x_auth_user_id"));
        assert!(!req.headers.contains_key("authorization"));
        assert!(
            !req.headers.contains_key("x-keep-me"),
            "hop-by-hop header named in Connection"
        );
        assert!(!req.headers.contains_key("connection"));
        assert_eq!(req.headers["x-request-id"], "rid");
    }
}
