//! Upstream faults (issue #11 3d): an upstream that resets mid-body, truncates a chunked body
//! or answers with broken framing. The client gets a 502 or a cut connection — never a body
//! presented as complete that is not — and the gateway serves the next request. The upstream
//! is a few lines of raw TCP so that it can misbehave exactly.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::harness::{Echo, Gateway, Options};
use crate::limits::{CLOSED_WITHIN, connect, read_until_closed, route_to};

/// An upstream that answers each request by its path with a scripted fault (raw bytes), then
/// ends the connection: `reset…` with an RST (`reset-early` before any byte), everything
/// else with a FIN.
async fn faulty_upstream() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let path = head.split(' ').nth(1).unwrap_or("").to_string();
                let reply: &[u8] = if path.ends_with("/reset-early") {
                    b""
                } else if path.ends_with("/reset") {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"
                } else if path.ends_with("/truncated-chunked") {
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
                } else if path.ends_with("/two-lengths") {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello!!"
                } else if path.ends_with("/garbage") {
                    b"HTTX/9.9 banana\r\nwhat: ever\r\n\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nfine-body"
                };
                let _ = s.write_all(reply).await;
                let _ = s.flush().await;
                if path.contains("/reset") {
                    // Give the gateway the partial body first, then abort: an RST.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                }
                drop(s);
            });
        }
    });
    addr
}

/// Whether a raw response is presented as complete: its framing (Content-Length, or a
/// chunked body's last chunk) is satisfied by the bytes the client got.
fn complete(raw: &[u8]) -> bool {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let body = &raw[end + 4..];
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return body.len() >= len;
    }
    if head.contains("transfer-encoding: chunked") {
        return body.ends_with(b"0\r\n\r\n");
    }
    // Close-delimited: the client cannot tell; count it as presented complete.
    true
}

#[tokio::test]
async fn upstream_faults_end_in_502_or_a_cut_never_a_truncated_200_and_the_gateway_serves_on() {
    let echo = Echo::start().await;
    let addr = faulty_upstream().await;
    let gw = Gateway::start(Options {
        extra: route_to("faulty", addr, 2_000),
        ..Options::new(echo.addr)
    })
    .await;
    for fault in [
        "reset-early",
        "reset",
        "truncated-chunked",
        "two-lengths",
        "garbage",
    ] {
        let req = format!("GET /faulty/{fault} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n");
        let mut s = connect(&gw).await;
        s.write_all(req.as_bytes()).await.unwrap();
        let raw = read_until_closed(&mut s, CLOSED_WITHIN)
            .await
            .unwrap_or_else(|| panic!("{fault}: the gateway never ended the response"));
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status_502 = text.starts_with("HTTP/1.1 502");
        if status_502 {
            assert!(text.contains("\"bad_gateway\""), "{fault}: {text}");
        } else {
            assert!(
                text.is_empty() || text.starts_with("HTTP/1.1 200"),
                "{fault}: {text}"
            );
            assert!(!complete(&raw), "{fault}: presented as complete: {text}");
        }
        // Only this response's bytes: never the scripted reply of another path.
        assert!(!text.contains("fine-body"), "{fault}: {text}");
        // The next request, on the same faulty upstream and on another one, is served.
        let r = gw.get("/faulty/ok", None).await;
        assert_eq!(r.status(), 200, "{fault}");
        assert_eq!(r.text().await.unwrap(), "fine-body", "{fault}");
        let r = gw.get("/public/next", None).await;
        assert_eq!(r.status(), 200, "{fault}");
        eprintln!(
            "{fault}: {}",
            text.lines().next().unwrap_or("(cut, no bytes)")
        );
    }
}
