//! WebSocket passthrough (docs/api.md, "WebSocket"): the handshake is authorized like any request, identity
//! headers are added and spoofed ones stripped, frames flow both ways, refused upgrades never
//! reach the upstream, idle tunnels close, and a revoked session loses its open tunnels on
//! every instance within a second. The same holds for wss through the TLS listener.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::harness::*;
use crate::tls::{Pki, TlsGateway};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;
/// The headers of one handshake, as the upstream received them.
type Headers = Vec<(String, String)>;

/// A WebSocket echo upstream that records each handshake's headers.
#[derive(Clone)]
struct WsEcho {
    addr: SocketAddr,
    handshakes: Arc<Mutex<Vec<Headers>>>,
}

impl WsEcho {
    async fn start() -> WsEcho {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes: Arc<Mutex<Vec<Headers>>> = Arc::default();
        let record = handshakes.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    // The error type is tungstenite's, not ours.
                    #[allow(clippy::result_large_err)]
                    let callback = |req: &Request, resp: Response| {
                        let headers = req
                            .headers()
                            .iter()
                            .map(|(k, v)| {
                                (
                                    k.as_str().to_string(),
                                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                )
                            })
                            .collect();
                        record.lock().unwrap().push(headers);
                        Ok(resp)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await
                    else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        WsEcho { addr, handshakes }
    }

    fn count(&self) -> usize {
        self.handshakes.lock().unwrap().len()
    }

    fn last(&self) -> Headers {
        self.handshakes.lock().unwrap().last().cloned().unwrap()
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

fn access(pair: &Value) -> &str {
    pair["access_token"].as_str().unwrap()
}

/// Opens a WebSocket through the gateway; `Err(status)` when the handshake is refused.
async fn connect(
    port: u16,
    path: &str,
    token: Option<&str>,
    extra: &[(&'static str, &str)],
) -> Result<Client, u16> {
    let mut req = format!("ws://127.0.0.1:{port}{path}")
        .into_client_request()
        .unwrap();
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    for (k, v) in extra {
        req.headers_mut().insert(*k, v.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, resp)) => {
            assert_eq!(resp.status(), 101);
            Ok(ws)
        }
        Err(WsError::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("handshake failed: {e}"),
    }
}

/// Sends `msg` and expects it back.
async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, msg: Message) {
    ws.send(msg.clone()).await.unwrap();
    let back = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("no echo within 5 s")
        .expect("tunnel closed")
        .unwrap();
    assert_eq!(back, msg);
}

/// Waits until the tunnel is closed from the gateway's side; returns how long that took.
async fn closed_within<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    limit: Duration,
) -> Option<Duration> {
    let start = std::time::Instant::now();
    let outcome = tokio::time::timeout(limit, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    outcome.ok().map(|_| start.elapsed())
}

#[tokio::test]
async fn a_websocket_is_authorized_carries_identity_and_relays_frames_both_ways() {
    let upstream = WsEcho::start().await;
    let gw = Gateway::start(Options::new(upstream.addr)).await;
    let pair = gw.user("ws@example.com").await;
    let mut ws = connect(
        gw.port,
        "/api/socket",
        Some(access(&pair)),
        &[
            ("x-auth-user-id", "spoofed"),
            ("x_auth_role", "admin"),
            ("x-auth-anything", "spoofed"),
        ],
    )
    .await
    .expect("upgrade accepted");
    round_trip(&mut ws, Message::text("hello")).await;
    // A large frame, both ways.
    let big: Vec<u8> = (0..1_048_576u32).map(|i| (i % 251) as u8).collect();
    round_trip(&mut ws, Message::binary(big)).await;
    round_trip(&mut ws, Message::text("after the big one")).await;
    ws.close(None).await.unwrap();

    let seen = upstream.last();
    let user_id = pair["user"]["id"].as_str().unwrap();
    assert_eq!(header(&seen, "x-auth-user-id"), vec![user_id]);
    assert_eq!(header(&seen, "x-auth-role"), vec!["user"]);
    assert!(header(&seen, "x_auth_role").is_empty());
    assert!(header(&seen, "x-auth-anything").is_empty());
    assert!(header(&seen, "authorization").is_empty());
    assert_eq!(header(&seen, "upgrade"), vec!["websocket"]);
    assert_eq!(header(&seen, "x-request-id").len(), 1);
}

#[tokio::test]
async fn an_offer_of_websocket_and_h2c_reaches_the_upstream_as_exactly_websocket() {
    let upstream = WsEcho::start().await;
    let gw = Gateway::start(Options::new(upstream.addr)).await;
    let pair = gw.user("wsh2c@example.com").await;
    let mut ws = connect(
        gw.port,
        "/api/socket",
        Some(access(&pair)),
        &[
            ("upgrade", "websocket, h2c"),
            ("connection", "Upgrade, HTTP2-Settings"),
            ("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
        ],
    )
    .await
    .expect("upgrade accepted");
    round_trip(&mut ws, Message::text("hello")).await;
    let seen = upstream.last();
    assert_eq!(header(&seen, "upgrade"), vec!["websocket"]);
    assert_eq!(header(&seen, "connection"), vec!["upgrade"]);
    assert!(header(&seen, "http2-settings").is_empty());
}

#[tokio::test]
async fn refused_upgrades_never_reach_the_upstream() {
    let upstream = WsEcho::start().await;
    let gw = Gateway::start(Options::new(upstream.addr)).await;
    let pair = gw.user("wsdeny@example.com").await;
    assert_eq!(
        connect(gw.port, "/api/socket", None, &[]).await.err(),
        Some(401)
    );
    assert_eq!(
        connect(gw.port, "/api/socket", Some("not.a.jwt"), &[])
            .await
            .err(),
        Some(401)
    );
    assert_eq!(
        connect(gw.port, "/api/admin/socket", Some(access(&pair)), &[])
            .await
            .err(),
        Some(403)
    );
    assert_eq!(
        connect(gw.port, "/nowhere", Some(access(&pair)), &[])
            .await
            .err(),
        Some(404)
    );
    assert_eq!(
        upstream.count(),
        0,
        "a refused upgrade reached the upstream"
    );
}

#[tokio::test]
async fn an_idle_tunnel_is_closed_after_the_routes_idle_timeout() {
    let upstream = WsEcho::start().await;
    let mut opts = Options::new(upstream.addr);
    opts.default_routes = false;
    opts.extra = "[[route]]\nprefix = \"/ws/\"\nupstream = \"api\"\nauth = \"none\"\n\
                  websocket_idle_timeout_secs = 1\n"
        .into();
    let gw = Gateway::start(opts).await;
    let mut ws = connect(gw.port, "/ws/idle", None, &[]).await.unwrap();
    // Traffic keeps it open past the timeout...
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        round_trip(&mut ws, Message::text("ping")).await;
    }
    // ...silence closes it.
    assert!(
        closed_within(&mut ws, Duration::from_secs(10))
            .await
            .is_some(),
        "the idle tunnel stayed open"
    );
}

postgres_only! {
#[tokio::test]
async fn a_revoked_session_loses_its_open_tunnels_on_every_instance_within_a_second() {
    let upstream = WsEcho::start().await;
    let (a, b, _keys) = two_gateways(|| Options::new(upstream.addr)).await;
    let pair = a.user("wsrevoke@example.com").await;
    let other = a.login("wsrevoke@example.com", "password-123").await;

    let mut on_a = connect(a.port, "/api/a", Some(access(&pair)), &[])
        .await
        .unwrap();
    let mut on_b = connect(b.port, "/api/b", Some(access(&pair)), &[])
        .await
        .unwrap();
    let mut other_session = connect(b.port, "/api/c", Some(access(&other)), &[])
        .await
        .unwrap();
    round_trip(&mut on_a, Message::text("a")).await;
    round_trip(&mut on_b, Message::text("b")).await;

    // Logout through instance A revokes the session: both tunnels close.
    let reply = a
        .http
        .post(a.url("/auth/logout"))
        .json(&json!({"refresh_token": pair["refresh_token"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 204);
    for (name, ws) in [("instance A", &mut on_a), ("instance B", &mut on_b)] {
        let took = closed_within(ws, Duration::from_secs(1)).await;
        assert!(took.is_some(), "{name}: the tunnel stayed open past 1 s");
    }
    // The user's other session keeps its tunnel.
    round_trip(&mut other_session, Message::text("still here")).await;

    // Deactivating the user (a user-wide event) closes the rest.
    let admin = a.admin_user("wsadmin@example.com").await;
    let reply = a
        .http
        .patch(a.url(&format!(
            "/auth/admin/users/{}",
            other["user"]["id"].as_str().unwrap()
        )))
        .bearer_auth(access(&admin))
        .json(&json!({"is_active": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    assert!(
        closed_within(&mut other_session, Duration::from_secs(1))
            .await
            .is_some(),
        "a deactivated user's tunnel stayed open past 1 s"
    );
}
}

/// Opens a wss WebSocket to the TLS listener of `tgw`, as `a.test`, trusting only the test CA
/// and offering only HTTP/1.1 by ALPN (a WebSocket handshake is an HTTP/1.1 upgrade).
async fn connect_wss(
    tgw: &TlsGateway,
    path: &str,
    token: &str,
) -> WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>> {
    use rustls_pki_types::pem::PemObject as _;
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(tgw.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(("127.0.0.1", tgw.tls_port))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("a.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the gateway");
    let mut req = format!("wss://a.test:{}{path}", tgw.tls_port)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req.headers_mut()
        .insert("x-auth-role", "admin".parse().unwrap());
    let (ws, resp) = tokio_tungstenite::client_async(req, tls)
        .await
        .expect("wss handshake");
    assert_eq!(resp.status(), 101);
    ws
}

#[tokio::test]
async fn a_wss_tunnel_through_the_tls_listener_relays_carries_identity_and_closes_on_revocation() {
    let upstream = WsEcho::start().await;
    let pki = Pki::new();
    let a = pki.leaf(&["a.test"]);
    let mut opts = Options::new(upstream.addr);
    let tgw = TlsGateway::start_with(&mut opts, &pki, &[("a", &a)], "http2 = true").await;
    let pair = tgw.gw.user("wss@example.com").await;
    let other = tgw.gw.login("wss@example.com", "password-123").await;

    let mut ws = connect_wss(&tgw, "/api/secure-socket", access(&pair)).await;
    let mut other_ws = connect_wss(&tgw, "/api/other-socket", access(&other)).await;
    round_trip(&mut ws, Message::text("over tls")).await;
    let big: Vec<u8> = (0..262_144u32).map(|i| (i % 253) as u8).collect();
    round_trip(&mut ws, Message::binary(big)).await;
    round_trip(&mut other_ws, Message::text("other")).await;

    let seen = upstream.last();
    assert_eq!(upstream.count(), 2);
    let first = upstream.handshakes.lock().unwrap()[0].clone();
    let user_id = pair["user"]["id"].as_str().unwrap();
    assert_eq!(header(&first, "x-auth-user-id"), vec![user_id]);
    assert_eq!(
        header(&first, "x-auth-role"),
        vec!["user"],
        "spoofed role replaced"
    );
    let claims: Value = {
        use base64::Engine as _;
        let payload = access(&pair).split('.').nth(1).unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    };
    assert_eq!(
        header(&first, "x-auth-session-id"),
        vec![claims["sid"].as_str().unwrap()]
    );
    assert_eq!(header(&first, "x-forwarded-proto"), vec!["https"]);
    assert!(header(&first, "authorization").is_empty());
    assert_eq!(header(&seen, "upgrade"), vec!["websocket"]);

    // Logout revokes the session: its wss tunnel closes within a second, the other stays.
    let reply = tgw
        .gw
        .http
        .post(tgw.gw.url("/auth/logout"))
        .json(&json!({"refresh_token": pair["refresh_token"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 204);
    assert!(
        closed_within(&mut ws, Duration::from_secs(1))
            .await
            .is_some(),
        "the revoked session's wss tunnel stayed open past 1 s"
    );
    round_trip(&mut other_ws, Message::text("still here")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_while_open_tunnels_keep_relaying_then_exits_zero() {
    let upstream = WsEcho::start().await;
    let echo = Echo::start().await;
    let mut opts = Options::new(upstream.addr);
    // A second upstream for plain HTTP (its `/wait` answers after 700 ms).
    opts.extra = format!(
        "[[upstream]]\nname = \"http\"\naddrs = [\"{}\"]\nread_timeout_ms = 5000\n\
         [[route]]\nprefix = \"/drain/\"\nupstream = \"http\"\nauth = \"none\"\n",
        echo.addr
    );
    let mut gw = Gateway::start(opts).await;
    let pair = gw.user("drain@example.com").await;
    let mut ws = connect(gw.port, "/api/socket", Some(access(&pair)), &[])
        .await
        .unwrap();
    round_trip(&mut ws, Message::text("before")).await;
    let in_flight = tokio::spawn(gw.http.get(gw.url("/drain/wait")).send());
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.signal("TERM");
    // During the drain: the in-flight request completes and the tunnel still relays.
    let done = in_flight
        .await
        .unwrap()
        .expect("in-flight request finished");
    assert_eq!(done.status(), 200);
    round_trip(&mut ws, Message::text("while draining")).await;
    let code = tokio::task::block_in_place(|| gw.wait_exit(Duration::from_secs(30)));
    assert_eq!(code, Some(0), "log:\n{}", gw.log());
    assert!(
        closed_within(&mut ws, Duration::from_secs(5))
            .await
            .is_some(),
        "the tunnel ends with the process"
    );
}

/// The race a tunnel's registration closes: the session is revoked (and the notification
/// handled, finding no tunnel) after the handshake was authorized but before its tunnel was
/// registered. Driven in-process on the real store, since over the wire the window is a few
/// microseconds wide.
#[tokio::test]
async fn a_tunnel_whose_session_was_revoked_after_authorization_is_not_opened() {
    use portcullis::access::{Authorizer, RevocationCache};
    use portcullis::config::{OnDbError, Tokens};
    use portcullis::store::{NewSession, RevocationEvent, Store};
    use portcullis::tokens::TokenService;

    let db = fresh_db().await;
    let store = Store::new(&db, 2).unwrap();
    let user = store
        .create_user(
            "race@x.io",
            "race@x.io",
            None,
            portcullis::model::Role::User,
        )
        .await
        .unwrap();
    let sid = store
        .create_session(NewSession {
            user_id: user.id,
            secret: &[7; 32],
            token_hash: &[9; 32],
            expires_at: chrono::Utc::now() + chrono::Duration::hours(1),
            user_agent: None,
            ip: None,
            auth: &portcullis::model::Authentication::password(),
        })
        .await
        .unwrap();
    let keys = tempfile::tempdir().unwrap();
    let tokens = Arc::new(
        TokenService::new(&Tokens {
            keys_dir: keys.path().join("keys").display().to_string(),
            ..Tokens::default()
        })
        .unwrap(),
    );
    let cache = Arc::new(RevocationCache::new(store, 100, Duration::from_secs(30)));
    let authorizer = Authorizer::new(tokens.clone(), cache, OnDbError::Deny);
    let token = tokens
        .issue(&user, sid, &portcullis::model::Authentication::password())
        .unwrap();

    // Authorized (the status is now cached as live)…
    let claims = authorizer.authenticate(&token).await.unwrap().claims;
    // …then revoked, and the notification handled while no tunnel is registered.
    let direct = crate::harness::Db::open(&db).await;
    let revoke = format!(
        "UPDATE sessions SET revoked_at = {} WHERE id = $1",
        direct.now()
    );
    direct
        .exec(&revoke, &[crate::harness::Arg::Uuid(sid)])
        .await;
    authorizer
        .apply_revocation(RevocationEvent::Session(sid))
        .await;
    let opened = authorizer.open_tunnel(claims, Box::new(|| {})).await;
    assert!(opened.is_err(), "a revoked session opened a tunnel");
    assert_eq!(
        authorizer.tunnels().len(),
        0,
        "the refused tunnel stays registered"
    );
}
