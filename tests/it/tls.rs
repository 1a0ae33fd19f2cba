//! TLS termination (docs/api.md, "TLS and HTTP/2"): certificates chosen by SNI, HTTP/2 by ALPN under the same
//! rules as HTTP/1.1, a TLS 1.3 minimum, the https redirect, HSTS, certificate checks in
//! `check-config`, and certificate reload without closing open connections. Certificates are
//! made per test with rcgen: a test CA and leaf certificates it signs.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, date_time_ymd};
use serde_json::{Value, json};

use crate::harness::*;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A test CA that signs leaf certificates.
pub(crate) struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate and its key, as PEM, plus the DER the server presents.
#[derive(Clone)]
pub(crate) struct Leaf {
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
    der: Vec<u8>,
}

impl Pki {
    pub(crate) fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "portcullis test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Pki { ca }
    }

    pub(crate) fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    fn leaf_with(&self, names: &[&str], expired: bool) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        if expired {
            params.not_before = date_time_ymd(2001, 1, 1);
            params.not_after = date_time_ymd(2002, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    pub(crate) fn leaf(&self, names: &[&str]) -> Leaf {
        self.leaf_with(names, false)
    }
}

/// Writes `leaf` as `certs/<name>.pem` and `certs/<name>.key` under `dir`.
fn write_leaf(dir: &Path, name: &str, leaf: &Leaf) {
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(certs.join(format!("{name}.key")), &leaf.key_pem).unwrap();
    std::fs::write(certs.join(format!("{name}.pem")), &leaf.cert_pem).unwrap();
}

/// `[server.tls]` naming `certs/<name>.pem|key` for each name, plus `more` keys.
fn tls_table(tls_port: u16, names: &[&str], more: &str) -> String {
    let certs: Vec<String> = names
        .iter()
        .map(|n| format!("{{ cert = \"certs/{n}.pem\", key = \"certs/{n}.key\" }}"))
        .collect();
    format!(
        "\n[server.tls]\nlisten = \"127.0.0.1:{tls_port}\"\ncerts = [{}]\n{more}\n",
        certs.join(", ")
    )
}

/// A gateway whose TLS listener serves `leaves` (the first is the default).
pub(crate) struct TlsGateway {
    pub(crate) gw: Gateway,
    pub(crate) tls_port: u16,
    pub(crate) ca_pem: String,
}

impl TlsGateway {
    async fn start(echo: &Echo, pki: &Pki, leaves: &[(&str, &Leaf)], more: &str) -> TlsGateway {
        let mut opts = Options::new(echo.addr);
        Self::start_with(&mut opts, pki, leaves, more).await
    }

    pub(crate) async fn start_with(
        opts: &mut Options,
        pki: &Pki,
        leaves: &[(&str, &Leaf)],
        more: &str,
    ) -> TlsGateway {
        let dir = tempfile::tempdir().unwrap();
        for (name, leaf) in leaves {
            write_leaf(dir.path(), name, leaf);
        }
        let tls_port = free_port();
        let names: Vec<&str> = leaves.iter().map(|(n, _)| *n).collect();
        opts.extra.push_str(&tls_table(tls_port, &names, more));
        let keys = dir.path().join("keys");
        let opts = std::mem::replace(opts, Options::new(SocketAddr::from(([127, 0, 0, 1], 1))));
        let gw = Gateway::start_with_keys(opts, fresh_db().await, dir, keys).await;
        // The harness waited for the plain listener; the TLS one is bound beside it.
        let accepting = eventually(Duration::from_secs(30), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", tls_port))
                .await
                .is_ok()
        })
        .await;
        assert!(
            accepting.is_some(),
            "TLS listener not accepting; log:\n{}",
            gw.log()
        );
        TlsGateway {
            gw,
            tls_port,
            ca_pem: pki.ca_pem(),
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.tls_port))
    }

    /// A client trusting the test CA; `a.test`, `b.test` and `unknown.test` resolve to the TLS
    /// listener.
    fn client_builder(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap())
            .resolve("a.test", self.addr())
            .resolve("b.test", self.addr())
            .resolve("x.wild.test", self.addr())
            .resolve("unknown.test", self.addr())
            .tls_info(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
    }

    fn client(&self) -> reqwest::Client {
        self.client_builder().build().unwrap()
    }

    /// A client that checks nothing about the certificate, to see which one is served.
    fn any_cert_client(&self) -> reqwest::Client {
        self.client_builder()
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap()
    }

    fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.tls_port)
    }

    /// The certificate a fresh connection to `host` is served.
    async fn served_cert(&self, host: &str) -> Vec<u8> {
        let r = self
            .any_cert_client()
            .get(self.url(host, "/public/cert"))
            .send()
            .await
            .unwrap();
        peer_cert(&r)
    }
}

fn peer_cert(r: &reqwest::Response) -> Vec<u8> {
    r.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .expect("TLS info with the peer certificate")
        .to_vec()
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

/// Registers and logs in over `client` at `base`; returns the TokenPair.
async fn user_over(client: &reqwest::Client, base: &str, email: &str) -> Value {
    let creds = json!({"email": email, "password": "password-123"});
    let r = client
        .post(format!("{base}/auth/register"))
        .json(&creds)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = client
        .post(format!("{base}/auth/login"))
        .json(&creds)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn access(pair: &Value) -> &str {
    pair["access_token"].as_str().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Serving
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_https_request_to_a_protected_route_reaches_the_upstream_with_the_callers_identity() {
    let echo = Echo::start().await;
    let pki = Pki::new();
    let a = pki.leaf(&["a.test"]);
    let tgw = TlsGateway::start(&echo, &pki, &[("a", &a)], "http2 = false").await;
    let client = tgw.client();
    let base = tgw.url("a.test", "");
    let pair = user_over(&client, &base, "tls@example.com").await;

    let r = client
        .get(tgw.url("a.test", "/api/who?x=1"))
        .bearer_auth(access(&pair))
        .header("X-Auth-User-Id", "spoofed")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(peer_cert(&r), a.der);
    let seen = echo.last();
    assert_eq!(seen.path, "/api/who?x=1");
    assert_eq!(
        seen.header("x-auth-user-id"),
        vec![pair["user"]["id"].as_str().unwrap()]
    );
    assert_eq!(seen.header("x-auth-role"), vec!["user"]);
    assert!(seen.header("authorization").is_empty());

    // The plain listener keeps serving plain HTTP beside it.
    let r = tgw.gw.get("/api/who", Some(access(&pair))).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn sni_picks_the_certificate_whose_names_match_and_unknown_or_absent_sni_gets_the_first() {
    let echo = Echo::start().await;
    let pki = Pki::new();
    let a = pki.leaf(&["a.test"]);
    let b = pki.leaf(&["b.test", "other.test"]);
    let wild = pki.leaf(&["*.wild.test"]);
    let tgw = TlsGateway::start(&echo, &pki, &[("a", &a), ("b", &b), ("w", &wild)], "").await;

    assert_eq!(tgw.served_cert("a.test").await, a.der);
    assert_eq!(tgw.served_cert("b.test").await, b.der);
    assert_eq!(tgw.served_cert("x.wild.test").await, wild.der);
    assert_eq!(tgw.served_cert("unknown.test").await, a.der, "unknown SNI");
    // An IP address sends no SNI at all.
    assert_eq!(tgw.served_cert("127.0.0.1").await, a.der, "absent SNI");

    // And a verifying client accepts each name with the certificate it gets.
    let client = tgw.client();
    for host in ["a.test", "b.test", "x.wild.test"] {
        let r = client.get(tgw.url(host, "/public/x")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{host}");
    }
    assert!(
        client
            .get(tgw.url("unknown.test", "/public/x"))
            .send()
            .await
            .is_err(),
        "the default certificate does not name unknown.test"
    );
}

#[tokio::test]
async fn http2_is_negotiated_and_follows_the_same_rules_as_http1() {
    let echo = Echo::start().await;
    let pki = Pki::new();
    let a = pki.leaf(&["a.test"]);
    let mut opts = Options::new(echo.addr);
    opts.extra.push_str(
        "\n[[route]]\nprefix = \"/hosted/\"\nupstream = \"api\"\nauth = \"none\"\nhost = \"a.test\"\n",
    );
    let tgw = TlsGateway::start_with(&mut opts, &pki, &[("a", &a)], "http2 = true").await;
    let client = tgw.client();
    let base = tgw.url("a.test", "");
    let pair = user_over(&client, &base, "h2@example.com").await;
    let token = access(&pair);

    // No token: 401, never forwarded.
    let before = echo.count();
    let r = client
        .get(tgw.url("a.test", "/api/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 401);
    assert_eq!(
        header(&r, "www-authenticate").as_deref(),
        Some("Bearer realm=\"portcullis\"")
    );
    // Wrong role: 403.
    let r = client
        .get(tgw.url("a.test", "/api/admin/x"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 403);
    // Path rules (§4.4) as over HTTP/1.1: prefixes ignore case, ';' parameters are refused.
    let r = client
        .get(tgw.url("a.test", "/API/Admin/x"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = client
        .get(tgw.url("a.test", "/api/admin;/x"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = client
        .get(tgw.url("a.test", "/nowhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // HEAD of a gateway-written answer: the status and length, no body (HTTP/2 would reset).
    let r = client
        .head(tgw.url("a.test", "/nowhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 404);
    assert_eq!(r.text().await.unwrap(), "");
    assert_eq!(
        echo.count(),
        before,
        "a refused request reached the upstream"
    );
    let r = client
        .head(tgw.url("a.test", "/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Signed in: forwarded with our identity, spoofed identity headers stripped.
    let r = client
        .get(tgw.url("a.test", "/api/who"))
        .bearer_auth(token)
        .header("x-auth-user-id", "spoofed")
        .header("x_auth_user_id", "spoofed-underscore")
        .header("x-auth-role", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let seen = echo.last();
    assert_eq!(seen.path, "/api/who");
    assert_eq!(
        seen.header("x-auth-user-id"),
        vec![pair["user"]["id"].as_str().unwrap()]
    );
    assert_eq!(seen.header("x-auth-role"), vec!["user"]);
    assert!(
        seen.header("x_auth_user_id").is_empty(),
        "underscore spoof reached the upstream: {seen:?}"
    );

    // A route bound to a host matches the HTTP/2 :authority.
    let r = client
        .get(tgw.url("a.test", "/hosted/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(echo.last().path, "/hosted/x");
    assert_eq!(
        echo.last().header("host"),
        vec![format!("a.test:{}", tgw.tls_port)]
    );
}

#[tokio::test]
async fn http2_off_offers_only_http1_by_alpn() {
    let echo = Echo::start().await;
    let pki = Pki::new();
    let a = pki.leaf(&["a.test"]);
    let tgw = TlsGateway::start(&echo, &pki, &[("a", &a)], "http2 = false").await;
    let r = tgw
        .client()
        .get(tgw.url("a.test", "/public/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
}

#[tokio::test]
async fn min_version_1_3_refuses_a_tls_1_2_client_and_1_2_accepts_it() {
    let echo = Echo::start().await;
    let pki = Pki::new();
    let a = pki.leaf(&["a.test"]);
    let strict = TlsGateway::start(&echo, &pki, &[("a", &a)], "min_version = \"1.3\"").await;
    let tls12 = strict
        .client_builder()
        .max_tls_version(reqwest::tls::Version::TLS_1_2)
        .build()
        .unwrap();
    let refused = tls12.get(strict.url("a.test", "/public/x")).send().await;
    assert!(
        refused.is_err(),
        "a TLS 1.2 client got through: {refused:?}"
    );
    let r = strict
        .client()
        .get(strict.url("a.test", "/public/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a TLS 1.3 client is served");

    // A TLS 1.2-only ClientHello split over two records (legal, RFC 5246 §6.2.1) is refused
    // too: the minimum is rustls's own decision, not a look at the first record.
    let refusal = tokio::task::spawn_blocking({
        let addr = strict.addr();
        move || fragmented_tls12_hello_answer(addr)
    })
    .await
    .unwrap();
    assert_ne!(
        refusal.first(),
        Some(&0x16),
        "a fragmented TLS 1.2 ClientHello got a ServerHello"
    );

    let lenient = TlsGateway::start(&echo, &pki, &[("a", &a)], "").await;
    let answer = tokio::task::spawn_blocking({
        let addr = lenient.addr();
        move || fragmented_tls12_hello_answer(addr)
    })
    .await
    .unwrap();
    assert_eq!(
        answer.first(),
        Some(&0x16),
        "min_version 1.2 answers a fragmented ClientHello with a ServerHello"
    );
    let tls12 = lenient
        .client_builder()
        .max_tls_version(reqwest::tls::Version::TLS_1_2)
        .build()
        .unwrap();
    let r = tls12
        .get(lenient.url("a.test", "/public/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "min_version 1.2 serves TLS 1.2");
}

#[tokio::test]
async fn plain_http_sent_to_the_tls_port_is_refused_and_the_gateway_keeps_serving() {
    let echo = Echo::start().await;
    let pki = Pki::new();
    let a = pki.leaf(&["a.test"]);
    let tgw = TlsGateway::start(&echo, &pki, &[("a", &a)], "").await;
    let before = echo.count();
    for _ in 0..3 {
        let raw = tokio::time::timeout(
            Duration::from_secs(5),
            raw_request(
                tgw.tls_port,
                b"GET /public/x HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
            ),
        )
        .await
        .expect("the TLS port closes a plain-HTTP connection instead of hanging");
        assert!(raw.starts_with("HTTP/1.1 400 "), "{raw:?}");
        assert!(raw.contains("This port speaks HTTPS"), "{raw:?}");
        assert!(
            raw.to_ascii_lowercase().contains("connection: close"),
            "{raw:?}"
        );
    }
    assert_eq!(echo.count(), before);
    let r = tgw
        .client()
        .get(tgw.url("a.test", "/public/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(tgw.gw.get("/public/x", None).await.status(), 200);
    // Counted, and logged below ERROR: a scanner cannot flood the log with probes.
    let failed = tgw
        .gw
        .metrics()
        .await
        .get("portcullis_tls_handshake_errors_total")
        .copied();
    // Three probes (and the harness's readiness check, a bare connect).
    assert!(failed.is_some_and(|n| n >= 3.0), "{failed:?}");
    let log = tgw.gw.log();
    assert!(!log.contains("ERROR"), "{log}");
}

// ---------------------------------------------------------------------------------------------
// Redirect and HSTS
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn redirect_http_answers_308_to_the_https_url_except_for_acme_challenges() {
    let echo = Echo::start().await;
    let pki = Pki::new();
    let a = pki.leaf(&["a.test"]);
    let tgw = TlsGateway::start(&echo, &pki, &[("a", &a)], "redirect_http = true").await;
    let before = echo.count();

    let r = tgw
        .gw
        .http
        .get(tgw.gw.url("/api/x/y?a=1&b=%20"))
        .header("Host", format!("Api.Example.com:{}", tgw.gw.port))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(
        header(&r, "location").unwrap(),
        format!("https://api.example.com:{}/api/x/y?a=1&b=%20", tgw.tls_port)
    );
    assert!(header(&r, "strict-transport-security").is_none());
    // POST too (308 keeps the method), and a public route as well: nothing is served in clear.
    let r = tgw
        .gw
        .http
        .post(tgw.gw.url("/public/form"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(
        header(&r, "location").unwrap(),
        format!("https://127.0.0.1:{}/public/form", tgw.tls_port)
    );
    // /auth too.
    let r = tgw.gw.post("/auth/login", json!({})).await;
    assert_eq!(r.status(), 308);
    assert_eq!(
        echo.count(),
        before,
        "a redirected request reached the upstream"
    );

    // ACME HTTP-01 challenges continue as usual (no route here: 404, not 308).
    let r = tgw.gw.get("/.well-known/acme-challenge/x", None).await;
    assert_eq!(r.status(), 404);
    // ...but a path that only looks like one after normalization is still redirected.
    let r = tgw
        .gw
        .get("/.well-known/acme-challenge/../../api/x", None)
        .await;
    assert_eq!(r.status(), 308);

    // The TLS listener serves as usual.
    let r = tgw
        .client()
        .get(tgw.url("a.test", "/public/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn hsts_is_sent_on_every_tls_response_and_never_on_plain_http() {
    let echo = Echo::start().await;
    let pki = Pki::new();
    let a = pki.leaf(&["a.test"]);
    let tgw = TlsGateway::start(&echo, &pki, &[("a", &a)], "hsts_max_age_secs = 31536000").await;
    let client = tgw.client();
    let hsts = Some("max-age=31536000".to_string());
    for (path, status) in [
        ("/public/x", 200),
        ("/api/x", 401),
        ("/nowhere", 404),
        ("/auth/jwks.json", 200),
        ("/auth/me", 401),
        ("/.well-known/jwks.json", 200),
    ] {
        let r = client.get(tgw.url("a.test", path)).send().await.unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), status, "{path}");
        assert_eq!(
            header(&r, "strict-transport-security"),
            hsts,
            "{path} over h2"
        );
    }
    // HTTP/1.1 over TLS too, including /auth answers and upstream failures.
    let h1 = tgw.client_builder().http1_only().build().unwrap();
    let r = h1
        .post(tgw.url("a.test", "/auth/login"))
        .json(&json!({"email": "nobody@example.com", "password": "password-123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(r.status(), 401);
    assert_eq!(header(&r, "strict-transport-security"), hsts);
    let r = h1
        .get(tgw.url("a.test", "/public/slow"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(header(&r, "strict-transport-security"), hsts);

    // Never on plain HTTP.
    for path in [
        "/public/x",
        "/api/x",
        "/nowhere",
        "/auth/jwks.json",
        "/auth/me",
    ] {
        let r = tgw.gw.get(path, None).await;
        assert!(
            header(&r, "strict-transport-security").is_none(),
            "HSTS on plain HTTP at {path}"
        );
    }
}

/// `X-Forwarded-Proto` says which listener the client used (`https` on TLS, over HTTP/1.1 and
/// HTTP/2, `http` on the plain one) and `X-Forwarded-Host` the host it asked for; a client's
/// own values are replaced, a trusted proxy's are kept.
#[tokio::test]
async fn the_upstream_learns_the_scheme_and_host_and_only_a_trusted_proxy_may_say_otherwise() {
    for trusted in [false, true] {
        let echo = Echo::start().await;
        let pki = Pki::new();
        let a = pki.leaf(&["a.test"]);
        let mut opts = Options::new(echo.addr);
        if trusted {
            opts.server.push_str("trusted_proxies = [\"127.0.0.1\"]\n");
        }
        let tgw = TlsGateway::start_with(&mut opts, &pki, &[("a", &a)], "http2 = true").await;
        let h2 = tgw.client();
        let h1 = tgw.client_builder().http1_only().build().unwrap();
        let plain = reqwest::Client::new();
        let tls_host = format!("a.test:{}", tgw.tls_port);
        let plain_host = format!("127.0.0.1:{}", tgw.gw.port);
        let cases = [
            (
                &h1,
                tgw.url("a.test", "/public/s"),
                reqwest::Version::HTTP_11,
                "https",
                &tls_host,
            ),
            (
                &h2,
                tgw.url("a.test", "/public/s"),
                reqwest::Version::HTTP_2,
                "https",
                &tls_host,
            ),
            (
                &plain,
                tgw.gw.url("/public/s"),
                reqwest::Version::HTTP_11,
                "http",
                &plain_host,
            ),
        ];
        for (client, url, version, proto, host) in cases {
            let what = format!("{url} {version:?} trusted={trusted}");
            let r = client.get(&url).send().await.unwrap();
            assert_eq!((r.status().as_u16(), r.version()), (200, version), "{what}");
            let seen = echo.last();
            assert_eq!(seen.header("x-forwarded-proto"), vec![proto], "{what}");
            assert_eq!(
                seen.header("x-forwarded-host"),
                vec![host.clone()],
                "{what}"
            );

            let r = client
                .get(&url)
                .header("X-Forwarded-Proto", "gopher")
                .header("X-Forwarded-Host", "evil.example")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{what}");
            let seen = echo.last();
            let (proto, host) = if trusted {
                ("gopher", "evil.example")
            } else {
                (proto, host.as_str())
            };
            assert_eq!(seen.header("x-forwarded-proto"), vec![proto], "{what}");
            assert_eq!(seen.header("x-forwarded-host"), vec![host], "{what}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// check-config
// ---------------------------------------------------------------------------------------------

/// Runs `check-config` on a config whose TLS table names `certs/<name>.*` under a fresh dir
/// holding `files`; returns (exit code, stderr).
fn check_config(files: &[(&str, &str)], names: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("certs")).unwrap();
    for (path, content) in files {
        std::fs::write(dir.path().join(path), content).unwrap();
    }
    let mut opts = Options::new(SocketAddr::from(([127, 0, 0, 1], 9)));
    opts.extra = tls_table(free_port(), names, "");
    let config = config_text(
        &opts,
        free_port(),
        free_port(),
        "postgres://postgres@127.0.0.1:5432/unused",
        &dir.path().join("keys"),
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let out = run_cli(&path, &["check-config"], "", &[]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn check_config_accepts_valid_certificates() {
    let pki = Pki::new();
    let a = pki.leaf(&["a.test"]);
    let (code, err) = check_config(
        &[("certs/a.pem", &a.cert_pem), ("certs/a.key", &a.key_pem)],
        &["a"],
    );
    assert_eq!(code, Some(0), "{err}");
}

#[tokio::test]
async fn check_config_names_the_key_that_does_not_match_its_certificate() {
    let pki = Pki::new();
    let a = pki.leaf(&["a.test"]);
    let b = pki.leaf(&["b.test"]);
    let (code, err) = check_config(
        &[("certs/a.pem", &a.cert_pem), ("certs/a.key", &b.key_pem)],
        &["a"],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("server.tls.certs[0].key"), "{err}");
    assert!(err.contains("does not match"), "{err}");
    assert!(err.contains("line "), "located in the file: {err}");
}

#[tokio::test]
async fn check_config_names_an_expired_certificate() {
    let pki = Pki::new();
    let good = pki.leaf(&["a.test"]);
    let old = pki.leaf_with(&["b.test"], true);
    let (code, err) = check_config(
        &[
            ("certs/a.pem", &good.cert_pem),
            ("certs/a.key", &good.key_pem),
            ("certs/b.pem", &old.cert_pem),
            ("certs/b.key", &old.key_pem),
        ],
        &["a", "b"],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("server.tls.certs[1].cert"), "{err}");
    assert!(err.contains("expired"), "{err}");
    assert!(!err.contains("certs[0]"), "{err}");
}

#[tokio::test]
async fn check_config_names_missing_and_non_pem_files() {
    let pki = Pki::new();
    let a = pki.leaf(&["a.test"]);
    let (code, err) = check_config(&[("certs/a.key", &a.key_pem)], &["a"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("server.tls.certs[0].cert"), "{err}");
    assert!(err.contains("certs/a.pem cannot be read"), "{err}");

    let (code, err) = check_config(&[("certs/a.pem", &a.cert_pem)], &["a"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("server.tls.certs[0].key"), "{err}");

    let (code, err) = check_config(
        &[
            ("certs/a.pem", "not a certificate"),
            ("certs/a.key", &a.key_pem),
        ],
        &["a"],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("server.tls.certs[0].cert"), "{err}");
    assert!(err.contains("no PEM certificate"), "{err}");
}

#[tokio::test]
async fn serve_refuses_to_start_with_a_bad_certificate() {
    let pki = Pki::new();
    let a = pki.leaf(&["a.test"]);
    let b = pki.leaf(&["b.test"]);
    let dir = tempfile::tempdir().unwrap();
    write_leaf(
        dir.path(),
        "a",
        &Leaf {
            key_pem: b.key_pem.clone(),
            ..a.clone()
        },
    );
    let mut opts = Options::new(SocketAddr::from(([127, 0, 0, 1], 9)));
    opts.extra = tls_table(free_port(), &["a"], "");
    let config = config_text(
        &opts,
        free_port(),
        free_port(),
        &fresh_db().await,
        &dir.path().join("keys"),
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let out = run_cli(&path, &["serve"], "", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("server.tls.certs[0].key"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Reload
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn certificates_reload_on_sighup_and_file_change_without_closing_open_connections() {
    let echo = Echo::start().await;
    let pki = Pki::new();
    let first = pki.leaf(&["a.test"]);
    let tgw = TlsGateway::start(&echo, &pki, &[("a", &first)], "").await;
    let dir = tgw.gw.dir.path().to_path_buf();

    // A connection opened before the reload (HTTP/2: every request shares it).
    let open = tgw.client();
    let r = open
        .get(tgw.url("a.test", "/public/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(peer_cert(&r), first.der);

    // 1. Replace the files and send SIGHUP: new connections get the new certificate.
    let second = pki.leaf(&["a.test"]);
    write_leaf(&dir, "a", &second);
    tgw.gw.signal("HUP");
    let switched = eventually(Duration::from_secs(5), || async {
        tgw.served_cert("a.test").await == second.der
    })
    .await;
    assert!(
        switched.is_some(),
        "new certificate not served; log:\n{}",
        tgw.gw.log()
    );
    // ...while the connection opened before keeps working, still on the old certificate.
    let r = open
        .get(tgw.url("a.test", "/public/2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(peer_cert(&r), first.der, "the open connection was replaced");
    // A fresh verifying client accepts the new certificate.
    let r = tgw
        .client()
        .get(tgw.url("a.test", "/public/3"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // 2. A bad replacement (key of another certificate, then garbage) keeps the old one.
    let other = pki.leaf(&["a.test"]);
    std::fs::write(dir.join("certs/a.key"), &other.key_pem).unwrap();
    tgw.gw.signal("HUP");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(tgw.served_cert("a.test").await, second.der);
    std::fs::write(dir.join("certs/a.pem"), "garbage").unwrap();
    tgw.gw.signal("HUP");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(tgw.served_cert("a.test").await, second.der);
    assert!(
        tgw.gw.log().contains("certificate reload rejected"),
        "{}",
        tgw.gw.log()
    );

    // 3. A good file written in place is picked up without a signal.
    let third = pki.leaf(&["a.test"]);
    write_leaf(&dir, "a", &third);
    let switched = eventually(Duration::from_secs(5), || async {
        tgw.served_cert("a.test").await == third.der
    })
    .await;
    assert!(
        switched.is_some(),
        "file change not picked up; log:\n{}",
        tgw.gw.log()
    );
    let r = open
        .get(tgw.url("a.test", "/public/4"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(peer_cert(&r), first.der);
}

// ---------------------------------------------------------------------------------------------
// Connection limits on the TLS listener (tests/it/limits.rs has the plain-HTTP side)
// ---------------------------------------------------------------------------------------------

/// A blocking HTTP/1.1-over-TLS connection to `tls`'s listener (SNI `a.test`, no ALPN), made
/// with rustls directly so that a test can send exactly the bytes it wants.
fn raw_tls(tls: &TlsGateway) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    raw_tls_offering(tls, &[])
}

/// [`raw_tls`] offering `alpn` (e.g. `h2`).
fn raw_tls_offering(
    tls: &TlsGateway,
    alpn: &[&[u8]],
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    let ca = pem::parse(tls.ca_pem.as_bytes()).unwrap();
    roots
        .add(rustls_pki_types::CertificateDer::from(
            ca.contents().to_vec(),
        ))
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut config = config;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = rustls_pki_types::ServerName::try_from("a.test").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let sock = std::net::TcpStream::connect(tls.addr()).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, sock);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).unwrap();
    }
    stream
}

/// Reads until the server closes; `Err` when it is still open after the socket's 5 s read
/// timeout.
fn read_to_close(stream: &mut impl std::io::Read) -> Result<Vec<u8>, std::io::Error> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(seen),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(e);
            }
            // Closed without close_notify, or reset: closed.
            Err(_) => return Ok(seen),
        }
    }
}

#[tokio::test]
async fn the_tls_listener_cuts_a_slow_head_and_shares_max_connections_with_the_plain_one() {
    use std::io::Write;
    let echo = Echo::start().await;
    let pki = Pki::new();
    let a = pki.leaf(&["a.test"]);
    let mut opts = Options::new(echo.addr);
    opts.server = "header_timeout_secs = 1\nmax_connections = 1\n".into();
    let tls = TlsGateway::start_with(&mut opts, &pki, &[("a", &a)], "").await;
    tls.gw.wait_no_connections().await;
    let tls = std::sync::Arc::new(tls);

    // Half a head over TLS: cut after the head deadline, with no answer.
    let t = tls.clone();
    let seen = tokio::task::spawn_blocking(move || {
        let mut s = raw_tls(&t);
        s.write_all(b"GET /public/x HTTP/1.1\r\nHost: a.test\r\n")
            .unwrap();
        s.flush().unwrap();
        read_to_close(&mut s)
    })
    .await
    .unwrap();
    assert_eq!(
        seen.expect("a slow TLS client is still connected"),
        b"",
        "answered"
    );
    let cut = tls.gw.metrics().await;
    assert_eq!(
        cut.get("portcullis_client_limits_total{limit=\"header_timeout\"}"),
        Some(&1.0),
        "the slow TLS head was closed for another reason"
    );

    // One TLS connection, served and kept alive, holds the only place: a plain connection
    // is closed at once. When the TLS one closes, plain connections are served again.
    let t = tls.clone();
    let (held_tx, held_rx) = tokio::sync::oneshot::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = tokio::task::spawn_blocking(move || {
        let mut s = raw_tls(&t);
        s.write_all(b"GET /public/held HTTP/1.1\r\nHost: a.test\r\n\r\n")
            .unwrap();
        s.flush().unwrap();
        let mut buf = [0u8; 12];
        std::io::Read::read_exact(&mut s, &mut buf).unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        held_tx.send(()).unwrap();
        release_rx.recv().unwrap();
    });
    held_rx.await.unwrap();
    let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", tls.gw.port))
        .await
        .unwrap();
    let _ = tokio::io::AsyncWriteExt::write_all(
        &mut plain,
        b"GET /public/plain HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut plain, &mut buf),
    )
    .await
    .expect("a plain connection over max_connections is still open");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "a plain connection got past max_connections: {:?}",
        read.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
    );
    release_tx.send(()).unwrap();
    holder.await.unwrap();
    let served = eventually(Duration::from_secs(5), || async {
        raw_request(
            tls.gw.port,
            b"GET /public/plain HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await
        .starts_with("HTTP/1.1 200")
    })
    .await;
    assert!(
        served.is_some(),
        "no plain connection served after the TLS one closed"
    );
}

/// `portcullis_client_limits_total{limit}` of `gw`.
async fn limit_count(gw: &Gateway, limit: &str) -> f64 {
    gw.metrics()
        .await
        .get(&format!(
            "portcullis_client_limits_total{{limit=\"{limit}\"}}"
        ))
        .copied()
        .unwrap_or(0.0)
}

#[tokio::test]
async fn an_http2_connection_that_never_sends_its_preface_is_closed_after_header_timeout() {
    let echo = Echo::start().await;
    let pki = Pki::new();
    let a = pki.leaf(&["a.test"]);
    let mut opts = Options::new(echo.addr);
    opts.server = "header_timeout_secs = 1\nkeepalive_timeout_secs = 60\n".into();
    let tls = TlsGateway::start_with(&mut opts, &pki, &[("a", &a)], "http2 = true").await;
    tls.gw.wait_no_connections().await;
    let tls = std::sync::Arc::new(tls);

    // TLS completes with h2 by ALPN, then the client is silent: without a deadline on the
    // preface this connection (and nine more) would hold max_connections forever.
    let t = tls.clone();
    let closed = tokio::task::spawn_blocking(move || {
        let mut s = raw_tls_offering(&t, &[b"h2"]);
        assert_eq!(s.conn.alpn_protocol(), Some(&b"h2"[..]));
        read_to_close(&mut s).is_ok()
    })
    .await
    .unwrap();
    assert!(closed, "a silent h2 connection is still open after 5 s");
    assert_eq!(limit_count(&tls.gw, "header_timeout").await, 1.0);

    // An h2 client whose opening arrived is governed by the idle timeout, not the head one:
    // still open after twice header_timeout, and serving.
    let client = tls
        .client_builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = client
        .get(tls.url("a.test", "/public/one"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(limit_count(&tls.gw, "header_timeout").await, 1.0);
    assert_eq!(
        tls.gw
            .metrics()
            .await
            .get("portcullis_client_connections_open"),
        Some(&1.0),
        "the h2 connection that sent its preface was closed"
    );
    let r = client
        .get(tls.url("a.test", "/public/two"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let log = tls.gw.log();
    assert!(!log.contains("ERROR"), "{log}");
}

#[tokio::test]
async fn a_stalled_tls_handshake_holds_a_slot_until_header_timeout_cuts_it_quietly() {
    let echo = Echo::start().await;
    let pki = Pki::new();
    let a = pki.leaf(&["a.test"]);
    let mut opts = Options::new(echo.addr);
    opts.server = "header_timeout_secs = 2\nmax_connections = 1\n".into();
    let tls = TlsGateway::start_with(&mut opts, &pki, &[("a", &a)], "").await;
    tls.gw.wait_no_connections().await;

    // A TCP connection to the TLS port that never starts its handshake counts at once.
    let mut stalled = tokio::net::TcpStream::connect(tls.addr()).await.unwrap();
    let counted = eventually(Duration::from_secs(5), || async {
        tls.gw
            .metrics()
            .await
            .get("portcullis_client_connections_open")
            == Some(&1.0)
    })
    .await;
    assert!(counted.is_some(), "a handshake in progress is not counted");
    // So it holds the only slot: a plain connection is closed unanswered.
    let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", tls.gw.port))
        .await
        .unwrap();
    let _ = tokio::io::AsyncWriteExt::write_all(
        &mut plain,
        b"GET /public/plain HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut plain, &mut buf),
    )
    .await
    .expect("a connection over max_connections is still open");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "a connection got past max_connections during a handshake"
    );
    // The handshake deadline (header_timeout_secs, not Pingora's 60 s) closes the stall.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(
        Duration::from_secs(8),
        tokio::io::AsyncReadExt::read_to_end(&mut stalled, &mut rest),
    )
    .await;
    assert!(closed.is_ok(), "a stalled handshake is still open");
    assert_eq!(limit_count(&tls.gw, "handshake_timeout").await, 1.0);
    let served = eventually(Duration::from_secs(5), || async {
        raw_request(
            tls.gw.port,
            b"GET /public/plain HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await
        .starts_with("HTTP/1.1 200")
    })
    .await;
    assert!(served.is_some(), "the slot was not given back");
    let log = tls.gw.log();
    assert!(!log.contains("ERROR"), "{log}");
}

/// Sends a TLS 1.2-only ClientHello to `addr` split over two handshake records and returns
/// the first bytes of the answer (0x16: a handshake record, i.e. a ServerHello; 0x15: an
/// alert; empty: closed).
fn fragmented_tls12_hello_answer(addr: SocketAddr) -> Vec<u8> {
    use std::io::{Read, Write};
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("a.test").unwrap();
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    assert_eq!(hello[0], 0x16, "a handshake record");
    // Like OpenSSL capped at 1.2, list a TLS 1.3 suite anyway (TLS_AES_128_GCM_SHA256): only
    // `supported_versions` tells that this client cannot speak 1.3.
    let mut msg = hello[5..].to_vec();
    let sid_len = usize::from(msg[4 + 2 + 32]);
    let suites_at = 4 + 2 + 32 + 1 + sid_len;
    let suites_len = u16::from_be_bytes([msg[suites_at], msg[suites_at + 1]]) + 2;
    msg[suites_at..suites_at + 2].copy_from_slice(&suites_len.to_be_bytes());
    msg.splice(suites_at + 2..suites_at + 2, [0x13, 0x01]);
    let body_len = (msg.len() - 4) as u32;
    msg[1..4].copy_from_slice(&body_len.to_be_bytes()[1..]);
    let payload = &msg[..];
    let (first, second) = payload.split_at(payload.len() / 2);
    let mut wire = Vec::new();
    for part in [first, second] {
        wire.extend([0x16, hello[1], hello[2]]);
        wire.extend((part.len() as u16).to_be_bytes());
        wire.extend(part);
    }
    let mut sock = std::net::TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.write_all(&wire).unwrap();
    let mut buf = [0u8; 16];
    match sock.read(&mut buf) {
        Ok(n) => buf[..n].to_vec(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test]
async fn an_http2_stream_the_client_cancels_is_counted_as_499_not_as_an_error() {
    let echo = Echo::start().await;
    let pki = Pki::new();
    let a = pki.leaf(&["a.test"]);
    let mut opts = Options::new(echo.addr);
    let tls = TlsGateway::start_with(&mut opts, &pki, &[("a", &a)], "http2 = true").await;
    let client = tls
        .client_builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    // Warm the connection, then cancel a request the upstream is still working on (the echo
    // answers /wait after 700 ms): the client resets the stream.
    let r = client
        .get(tls.url("a.test", "/public/one"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let pending = tokio::spawn({
        let client = client.clone();
        let url = tls.url("a.test", "/public/wait");
        async move { client.get(url).send().await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    pending.abort();
    let counted = eventually(Duration::from_secs(5), || async {
        tls.gw
            .metrics()
            .await
            .get("portcullis_requests_total{route=\"/public/\",status=\"499\"}")
            == Some(&1.0)
    })
    .await;
    let metrics = tls.gw.metrics().await;
    assert!(
        counted.is_some(),
        "no 499: {}; {:?}",
        tls.gw.log(),
        metrics
            .iter()
            .filter(|(k, _)| k.starts_with("portcullis_requests_total"))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        metrics.get("portcullis_requests_total{route=\"/public/\",status=\"400\"}"),
        None,
        "a cancelled stream was counted as the client's error"
    );
    let log = tls.gw.log();
    assert!(!log.contains("ERROR"), "{log}");
    assert!(log.contains("status=499"), "{log}");
}
