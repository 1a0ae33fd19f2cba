//! Slow clients and connection limits (`server.header_timeout_secs`, `body_timeout_secs`,
//! `keepalive_timeout_secs`, `max_connections`), against the real binary
//! over raw sockets. Timeouts are configured short; the assertions are about what the client
//! sees (a closed connection, a 408), with generous bounds, never about speed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::{Echo, Gateway, Options, eventually};

/// Bound for "the gateway closed the connection": far above every configured timeout here.
pub(crate) const CLOSED_WITHIN: Duration = Duration::from_secs(5);

pub(crate) async fn connect(gw: &Gateway) -> TcpStream {
    TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap()
}

/// Reads until the peer closes (or errors); `None` if it is still open after `within`.
pub(crate) async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut seen = Vec::new();
    let read_all = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(within, read_all).await.ok()?;
    Some(seen)
}

/// One response off a keep-alive connection: the head and a `Content-Length` body.
async fn read_response(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(CLOSED_WITHIN, stream.read(&mut buf))
            .await
            .expect("a response")
            .unwrap();
        assert!(n > 0, "closed before a response: {data:?}");
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .expect("a Content-Length");
    let mut body = data[head_end..].to_vec();
    while body.len() < len {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed inside the body");
        body.extend_from_slice(&buf[..n]);
    }
    (head, body)
}

async fn metric(gw: &Gateway, limit: &str) -> f64 {
    gw.metrics()
        .await
        .get(&format!(
            "portcullis_client_limits_total{{limit=\"{limit}\"}}"
        ))
        .copied()
        .unwrap_or(0.0)
}

const GET: &[u8] = b"GET /public/x HTTP/1.1\r\nHost: app\r\n\r\n";

fn server(extra: &str, echo: &Echo) -> Options {
    Options {
        server: extra.into(),
        ..Options::new(echo.addr)
    }
}

// --- request head (slowloris) -------------------------------------------------------------

#[tokio::test]
async fn a_request_head_trickled_one_byte_at_a_time_is_cut_off_after_header_timeout() {
    let echo = Echo::start().await;
    let gw = Gateway::start(server("header_timeout_secs = 1\n", &echo)).await;
    let stream = connect(&gw).await;
    let (mut rd, mut wr) = stream.into_split();
    // One byte every 200 ms: each read makes progress, so only a total deadline stops it.
    let trickle = tokio::spawn(async move {
        for b in GET.iter().take(GET.len() - 2) {
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut seen = Vec::new();
    let closed = tokio::time::timeout(CLOSED_WITHIN, rd.read_to_end(&mut seen)).await;
    assert!(closed.is_ok(), "a trickling client is still connected");
    assert!(seen.is_empty(), "{}", String::from_utf8_lossy(&seen));
    trickle.abort();
    assert_eq!(echo.count(), 0);
    assert!(metric(&gw, "header_timeout").await >= 1.0);
    // Not an error of the gateway: nothing at ERROR for it.
    assert!(!gw.log().contains("ERROR"), "{}", gw.log());
    // The gateway still serves everyone else.
    let r = gw.get("/public/after", None).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_header_timeout() {
    let echo = Echo::start().await;
    let gw = Gateway::start(server("header_timeout_secs = 1\n", &echo)).await;
    let mut stream = connect(&gw).await;
    let seen = read_until_closed(&mut stream, CLOSED_WITHIN).await;
    assert_eq!(seen.as_deref(), Some(&b""[..]), "still open or answered");
    assert!(metric(&gw, "header_timeout").await >= 1.0);
}

#[tokio::test]
async fn a_half_head_on_a_keep_alive_connection_is_cut_off_but_idling_is_not() {
    let echo = Echo::start().await;
    let gw = Gateway::start(server(
        "header_timeout_secs = 1\nkeepalive_timeout_secs = 30\n",
        &echo,
    ))
    .await;
    let mut stream = connect(&gw).await;
    stream.write_all(GET).await.unwrap();
    let (head, _) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Idle longer than the head deadline: waiting between requests is not a slow head.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stream.write_all(GET).await.unwrap();
    let (head, _) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The next head stops half-way: timed from its first byte, then cut.
    stream
        .write_all(b"GET /public/y HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let seen = read_until_closed(&mut stream, CLOSED_WITHIN).await;
    assert_eq!(seen.as_deref(), Some(&b""[..]), "still open or answered");
    assert_eq!(echo.count(), 2);
    assert!(metric(&gw, "header_timeout").await >= 1.0);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_keepalive_timeout() {
    let echo = Echo::start().await;
    let gw = Gateway::start(server("keepalive_timeout_secs = 1\n", &echo)).await;
    let mut stream = connect(&gw).await;
    stream.write_all(GET).await.unwrap();
    let (head, _) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let seen = read_until_closed(&mut stream, CLOSED_WITHIN).await;
    assert_eq!(seen.as_deref(), Some(&b""[..]), "idle connection kept open");
    assert!(metric(&gw, "keepalive_timeout").await >= 1.0);
}

// --- request body ---------------------------------------------------------------------------

/// Sends a head announcing 100 bytes and 10 of them, then nothing; returns what comes back.
async fn stalled_body(gw: &Gateway, path: &str) -> Option<Vec<u8>> {
    let mut stream = connect(gw).await;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: app\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n{{\"email\":"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    read_until_closed(&mut stream, CLOSED_WITHIN).await
}

fn assert_408(seen: Option<Vec<u8>>, what: &str) {
    let seen = seen.unwrap_or_else(|| panic!("{what}: connection still open"));
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 408"), "{what}: {text}");
    assert!(text.contains("\"request_timeout\""), "{what}: {text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{what}: {text}"
    );
}

#[tokio::test]
async fn a_stalled_auth_body_is_408_request_timeout() {
    let echo = Echo::start().await;
    let gw = Gateway::start(server("body_timeout_secs = 1\n", &echo)).await;
    assert_408(stalled_body(&gw, "/auth/login").await, "/auth/login");
    assert!(metric(&gw, "body_timeout").await >= 1.0);
    // The client's doing, not an error of the gateway.
    assert!(!gw.log().contains("ERROR"), "{}", gw.log());
}

/// An upstream that reads a request and records, per connection, the bytes it got and
/// whether the gateway closed the connection; it never answers.
#[derive(Clone, Default)]
struct Sink {
    conns: Arc<Mutex<Vec<(usize, bool)>>>,
}

impl Sink {
    async fn start() -> (Sink, std::net::SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sink = Sink::default();
        let conns = sink.conns.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let conns = conns.clone();
                tokio::spawn(async move {
                    let i = {
                        let mut c = conns.lock().unwrap();
                        c.push((0, false));
                        c.len() - 1
                    };
                    let mut buf = [0u8; 4096];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => conns.lock().unwrap()[i].0 += n,
                        }
                    }
                    conns.lock().unwrap()[i].1 = true;
                });
            }
        });
        (sink, addr)
    }
}

pub(crate) fn route_to(name: &str, addr: std::net::SocketAddr, read_timeout_ms: u64) -> String {
    format!(
        r#"
[[upstream]]
name = "{name}"
addrs = ["{addr}"]
connect_timeout_ms = 500
read_timeout_ms = {read_timeout_ms}

[[route]]
prefix = "/{name}/"
upstream = "{name}"
auth = "none"
"#
    )
}

#[tokio::test]
async fn a_stalled_proxied_body_is_408_and_the_upstream_connection_is_closed() {
    let echo = Echo::start().await;
    let (sink, addr) = Sink::start().await;
    let gw = Gateway::start(Options {
        server: "body_timeout_secs = 1\n".into(),
        extra: route_to("sink", addr, 30_000),
        ..Options::new(echo.addr)
    })
    .await;
    assert_408(stalled_body(&gw, "/sink/upload").await, "/sink/upload");
    // The upstream got the head and the 10 bytes, then its connection was closed: it is not
    // left holding half a request.
    let closed = eventually(CLOSED_WITHIN, || {
        let c = sink.conns.lock().unwrap().clone();
        async move { c.len() == 1 && c[0].1 && c[0].0 > 0 }
    })
    .await;
    assert!(
        closed.is_some(),
        "upstream connections: {:?}",
        sink.conns.lock().unwrap()
    );
    assert!(metric(&gw, "body_timeout").await >= 1.0);
    assert!(!gw.log().contains("ERROR"), "{}", gw.log());
}

#[tokio::test]
async fn a_slow_but_steady_upload_succeeds() {
    let echo = Echo::start().await;
    let gw = Gateway::start(server(
        "body_timeout_secs = 1\nheader_timeout_secs = 1\n",
        &echo,
    ))
    .await;
    let mut stream = connect(&gw).await;
    let chunks = 6;
    let chunk = vec![b'a'; 100];
    let head = format!(
        "POST /public/upload HTTP/1.1\r\nHost: app\r\nContent-Length: {}\r\n\r\n",
        chunks * chunk.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // 6 × 400 ms: longer in total than either timeout, never silent for as long as one.
    for _ in 0..chunks {
        tokio::time::sleep(Duration::from_millis(400)).await;
        stream.write_all(&chunk).await.unwrap();
    }
    let (head, _) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(echo.last().path, "/public/upload");
    assert_eq!(metric(&gw, "body_timeout").await, 0.0);
}

// --- max_connections ------------------------------------------------------------------------

#[tokio::test]
async fn over_max_connections_a_new_connection_is_closed_and_the_held_ones_are_served() {
    let echo = Echo::start().await;
    let gw = Gateway::start(server("max_connections = 2\n", &echo)).await;
    gw.wait_no_connections().await;
    let mut held = vec![connect(&gw).await, connect(&gw).await];
    // Both are served (keep-alive: they stay open and counted).
    for s in &mut held {
        s.write_all(GET).await.unwrap();
        let (head, _) = read_response(s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    let mut third = connect(&gw).await;
    let _ = third.write_all(GET).await;
    let seen = read_until_closed(&mut third, CLOSED_WITHIN).await;
    assert_eq!(
        seen.as_deref(),
        Some(&b""[..]),
        "the third connection was served"
    );
    assert!(metric(&gw, "max_connections").await >= 1.0);
    assert_eq!(
        gw.metrics().await.get("portcullis_client_connections_open"),
        Some(&2.0),
        "the refused one holds no slot"
    );
    // The held ones keep working.
    held[0].write_all(GET).await.unwrap();
    let (head, _) = read_response(&mut held[0]).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // One closes: a new connection is accepted again.
    drop(held.pop());
    let served = eventually(CLOSED_WITHIN, || async {
        let mut s = connect(&gw).await;
        if s.write_all(GET).await.is_err() {
            return false;
        }
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await.is_ok() && &buf == b"HTTP/1.1 200"
    })
    .await;
    assert!(served.is_some(), "no connection accepted after one closed");
}

#[tokio::test]
async fn over_max_connections_per_ip_that_clients_next_connection_is_closed_and_others_are_served()
{
    let echo = Echo::start().await;
    let gw = Gateway::start(server("max_connections_per_ip = 2\n", &echo)).await;
    gw.wait_no_connections().await;
    let mut held = vec![connect(&gw).await, connect(&gw).await];
    for s in &mut held {
        s.write_all(GET).await.unwrap();
        let (head, _) = read_response(s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    let mut third = connect(&gw).await;
    let _ = third.write_all(GET).await;
    let seen = read_until_closed(&mut third, CLOSED_WITHIN).await;
    assert_eq!(
        seen.as_deref(),
        Some(&b""[..]),
        "a third connection was served"
    );
    assert_eq!(metric(&gw, "max_connections_per_ip").await, 1.0);
    assert_eq!(metric(&gw, "max_connections").await, 0.0);

    // Another client address (all of 127/8 is loopback) is not limited by this one.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = socket
        .connect(format!("127.0.0.1:{}", gw.port).parse().unwrap())
        .await
        .unwrap();
    other.write_all(GET).await.unwrap();
    let (head, _) = read_response(&mut other).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // One of the first client's connections closes: it may open one again.
    drop(held.pop());
    let served = eventually(CLOSED_WITHIN, || async {
        let mut s = connect(&gw).await;
        if s.write_all(GET).await.is_err() {
            return false;
        }
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await.is_ok() && &buf == b"HTTP/1.1 200"
    })
    .await;
    assert!(served.is_some(), "no connection accepted after one closed");
}
