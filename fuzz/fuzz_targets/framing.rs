//! Raw request framing: request heads built from the headers that decide framing and
//! forwarding (`Content-Length`, `Transfer-Encoding`, `Host`, `Connection`, `X-Forwarded-For`,
//! identity headers, `Upgrade`), in any case and order, with arbitrary values, parsed with
//! httparse as Pingora does. Whatever `check_framing` accepts has one body length, one host and
//! a `Connection` that names neither `Host` nor `X-Forwarded-For`; after the upstream rewrite no
//! client identity header, hop-by-hop header or client `X-Request-Id` survives, and
//! `X-Forwarded-For` and `X-Forwarded-Proto` are the gateway's (the peer is untrusted).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use pingora_http::RequestHeader;
use portcullis::config::Config;
use portcullis::proxy::forward::{Forwarding, RequestId, check_framing};

#[derive(Arbitrary, Debug)]
enum Name {
    ContentLength,
    TransferEncoding,
    Host,
    Connection,
    XForwardedFor,
    XAuthUserId,
    XAuthRole,
    Upgrade,
    KeepAlive,
    XRequestId,
    Other(String),
}

impl Name {
    fn text(&self) -> &str {
        match self {
            Name::ContentLength => "content-length",
            Name::TransferEncoding => "transfer-encoding",
            Name::Host => "host",
            Name::Connection => "connection",
            Name::XForwardedFor => "x-forwarded-for",
            Name::XAuthUserId => "x-auth-user-id",
            Name::XAuthRole => "x-auth-role",
            Name::Upgrade => "upgrade",
            Name::KeepAlive => "keep-alive",
            Name::XRequestId => "x-request-id",
            Name::Other(s) => s,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Head {
    target: String,
    /// Name, case pattern (bit i upper-cases letter i), value.
    headers: Vec<(Name, u32, Vec<u8>)>,
}

fn cased(name: &str, pattern: u32) -> String {
    name.chars()
        .enumerate()
        .map(|(i, c)| {
            if pattern >> (i % 32) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

fuzz_target!(|head: Head| {
    let mut raw = format!("GET {} HTTP/1.1\r\n", head.target).into_bytes();
    for (name, pattern, value) in &head.headers {
        raw.extend_from_slice(cased(name.text(), *pattern).as_bytes());
        raw.extend_from_slice(b": ");
        raw.extend_from_slice(value);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"\r\n");
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut slots);
    // Pingora hands `check_framing` the head as it parsed it, up to its blank line.
    let Ok(httparse::Status::Complete(head_len)) = parsed.parse(&raw) else {
        return;
    };
    let head_bytes = &raw[..head_len];
    let (Some(method), Some(path)) = (parsed.method, parsed.path) else {
        return;
    };
    let Ok(mut req) = RequestHeader::build(method, path.as_bytes(), Some(parsed.headers.len()))
    else {
        return;
    };
    for h in parsed.headers.iter() {
        if req.append_header(h.name.to_string(), h.value).is_err() {
            return;
        }
    }
    let count = |n: &str| {
        parsed
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(n))
            .count()
    };
    if check_framing(&req, Some(head_bytes)).is_ok() {
        assert!(count("content-length") <= 1, "{raw:?}");
        assert!(
            count("content-length") == 0 || count("transfer-encoding") == 0,
            "{raw:?}"
        );
        assert_eq!(count("host"), 1, "{raw:?}");
        let named = req
            .headers
            .get_all("connection")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .collect::<Vec<_>>();
        assert!(
            !named.iter().any(|t| t == "host" || t == "x-forwarded-for"),
            "{raw:?}"
        );
    } else {
        return;
    }

    let forwarding = Forwarding::new(&Config::default());
    let peer = "192.0.2.1".parse().unwrap();
    let websocket = portcullis::proxy::forward::is_websocket(&req);
    if forwarding
        .rewrite(&mut req, None, &RequestId::generate(), Some(peer), false, false)
        .is_err()
    {
        return;
    }
    for gone in ["x-auth-user-id", "x-auth-role", "keep-alive", "authorization"] {
        assert!(!req.headers.contains_key(gone), "{gone} survived: {raw:?}");
    }
    assert!(websocket || !req.headers.contains_key("upgrade"), "{raw:?}");
    let ids: Vec<_> = req.headers.get_all("x-request-id").iter().collect();
    assert_eq!(ids.len(), 1, "{raw:?}");
    let xff: Vec<_> = req.headers.get_all("x-forwarded-for").iter().collect();
    assert_eq!(xff.len(), 1, "{raw:?}");
    assert_eq!(xff[0].as_bytes(), b"192.0.2.1", "{raw:?}");
    let proto: Vec<_> = req.headers.get_all("x-forwarded-proto").iter().collect();
    assert_eq!(proto.len(), 1, "{raw:?}");
    assert_eq!(proto[0].as_bytes(), b"http", "{raw:?}");
});
