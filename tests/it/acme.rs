//! Automatic certificates (docs/api.md, "TLS and HTTP/2") against a real ACME CA: Debian's `pebble`, with
//! `pebble-challtestsrv` as its DNS so every name resolves to 127.0.0.1. The CA validates the
//! HTTP-01 challenge by fetching it from a gateway's plain listener; the certificate and the
//! challenge answers go through PostgreSQL, so an instance that never talked to the CA answers
//! the challenge and serves the certificate. A CA that is down leaves the placeholder serving.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};

use crate::harness::*;

const NAME: &str = "gw.test";

/// A child process killed when the test ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running pebble CA.
struct Pebble {
    _processes: (Killed, Killed),
    _dir: tempfile::TempDir,
    /// The ACME directory URL.
    directory: String,
    /// PEM of the CA that signed pebble's own HTTPS certificate (for `acme.ca_cert`).
    https_ca_path: String,
    https_ca_pem: String,
    management: String,
}

impl Pebble {
    /// Starts pebble; its HTTP-01 validations connect to `http_port` on 127.0.0.1.
    async fn start(http_port: u16) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        // pebble's own HTTPS certificate, from a throwaway CA the gateway is told to trust.
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        leaf.subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        let key = KeyPair::generate().unwrap();
        let cert = leaf.signed_by(&key, &ca).unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        };
        let cert_path = write("pebble.pem", &cert.pem());
        let key_path = write("pebble.key", &key.serialize_pem());
        let https_ca_path = write("ca.pem", &ca.pem());

        let (acme_port, mgmt_port, dns_port, chall_mgmt, tls_port) = (
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
        );
        let config = serde_json::json!({ "pebble": {
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
            "certificate": cert_path,
            "privateKey": key_path,
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false
        }});
        let config_path = write("pebble.json", &config.to_string());
        let log = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();
        let dns = Command::new("pebble-challtestsrv")
            .args([
                "-dns01",
                &format!("127.0.0.1:{dns_port}"),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                &format!("127.0.0.1:{chall_mgmt}"),
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
            ])
            .stdout(log("dns.log"))
            .stderr(log("dns.err"))
            .spawn()
            .expect("pebble-challtestsrv (apt-get install pebble)");
        let ca_process = Command::new("pebble")
            .args([
                "-config",
                &config_path,
                "-dnsserver",
                &format!("127.0.0.1:{dns_port}"),
            ])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdin(Stdio::null())
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .expect("pebble (apt-get install pebble)");
        let pebble = Pebble {
            _processes: (Killed(dns), Killed(ca_process)),
            directory: format!("https://127.0.0.1:{acme_port}/dir"),
            https_ca_path,
            https_ca_pem: ca.pem(),
            management: format!("https://127.0.0.1:{mgmt_port}"),
            _dir: dir,
        };
        let client = pebble.client();
        let up = eventually(Duration::from_secs(20), || async {
            client.get(&pebble.directory).send().await.is_ok()
        })
        .await;
        assert!(up.is_some(), "pebble did not come up");
        pebble
    }

    /// A client trusting pebble's HTTPS certificate.
    fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.https_ca_pem.as_bytes()).unwrap(),
            )
            .build()
            .unwrap()
    }

    /// The root that signs the certificates this CA issues.
    async fn issuing_root(&self) -> String {
        self.client()
            .get(format!("{}/roots/0", self.management))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// The `[server.tls]` + `[acme]` tables for a gateway whose TLS listener is `tls_port`.
fn acme_tables(tls_port: u16, directory: &str, ca_cert: &str) -> String {
    format!(
        "\n[server.tls]\nlisten = \"127.0.0.1:{tls_port}\"\ncerts = []\n\n\
         [acme]\nenabled = true\ndirectory_url = \"{directory}\"\ncontact = [\"mailto:ops@gw.test\"]\n\
         domains = [\"{NAME}\"]\nca_cert = \"{ca_cert}\"\n"
    )
}

/// A gateway with ACME; returns it and its TLS address.
async fn start_gateway(
    upstream: SocketAddr,
    db: String,
    keys: &Path,
    port: Option<u16>,
    directory: &str,
    ca_cert: &str,
) -> (Gateway, SocketAddr) {
    let tls_port = free_port();
    let mut opts = Options::new(upstream);
    opts.port = port;
    opts.extra = acme_tables(tls_port, directory, ca_cert);
    let gw =
        Gateway::start_with_keys(opts, db, tempfile::tempdir().unwrap(), keys.to_path_buf()).await;
    (gw, SocketAddr::from(([127, 0, 0, 1], tls_port)))
}

/// The leaf certificate (DER) a TLS listener serves for `NAME`, if a client trusting only
/// `root_pem` accepts it, together with the status of `GET /public/x`.
async fn served_by_ca(tls: SocketAddr, root_pem: &str) -> Option<(Vec<u8>, u16)> {
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(root_pem.as_bytes()).ok()?)
        .resolve(NAME, tls)
        .tls_info(true)
        .timeout(Duration::from_secs(5))
        .build()
        .ok()?;
    let r = client
        .get(format!("https://{NAME}:{}/public/x", tls.port()))
        .send()
        .await
        .ok()?;
    let der = r
        .extensions()
        .get::<reqwest::tls::TlsInfo>()?
        .peer_certificate()?
        .to_vec();
    Some((der, r.status().as_u16()))
}

/// One instance (the embedded store's case): it orders, answers pebble's validation itself,
/// keeps the keys sealed in its store, and after a crash serves the stored certificate again
/// without a new order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_instance_gets_a_certificate_from_a_real_acme_ca_and_serves_it_after_a_crash() {
    let echo = Echo::start().await;
    let db = fresh_db().await;
    let keys = tempfile::tempdir().unwrap();
    let port = free_port();
    let pebble = Pebble::start(port).await;
    let (mut gw, tls) = start_gateway(
        echo.addr,
        db.clone(),
        keys.path(),
        Some(port),
        &pebble.directory,
        &pebble.https_ca_path,
    )
    .await;
    let root = pebble.issuing_root().await;
    let issued = eventually(Duration::from_secs(60), || async {
        served_by_ca(tls, &root).await.is_some()
    })
    .await;
    assert!(
        issued.is_some(),
        "no certificate issued; log:\n{}",
        gw.log()
    );
    let (cert, status) = served_by_ca(tls, &root).await.unwrap();
    assert_eq!(status, 200);
    let stored = Db::open(&db).await;
    let key_pem = stored
        .one("SELECT key_pem FROM acme_certificates", &[])
        .await
        .text();
    assert!(
        key_pem.starts_with("pcs1:") && !key_pem.contains("PRIVATE KEY"),
        "{key_pem}"
    );
    let orders = gw.log().matches("certificate issued").count();
    gw.kill();
    gw.restart().await;
    let served = eventually(Duration::from_secs(20), || async {
        served_by_ca(tls, &root).await.map(|(der, _)| der) == Some(cert.clone())
    })
    .await;
    assert!(
        served.is_some(),
        "the stored certificate is not served; log:\n{}",
        gw.log()
    );
    assert_eq!(
        gw.log().matches("certificate issued").count(),
        orders,
        "a certificate in the store was ordered again"
    );
}

postgres_only! {
#[tokio::test]
async fn a_certificate_from_a_real_acme_ca_is_shared_by_every_instance_and_renewed() {
    let echo = Echo::start().await;
    let db = fresh_db().await;
    let keys = tempfile::tempdir().unwrap();
    // Instance B: its own CA is down, so it can never order; the CA validates against B.
    let b_port = free_port();
    let pebble = Pebble::start(b_port).await;
    let dead = format!("https://127.0.0.1:{}/dir", free_port());
    let (b, b_tls) = start_gateway(
        echo.addr,
        db.clone(),
        keys.path(),
        Some(b_port),
        &dead,
        &pebble.https_ca_path,
    )
    .await;
    let root = pebble.issuing_root().await;
    // Before any issue: B serves the self-signed placeholder (not trusted by the CA's root)
    // and keeps serving plain HTTP.
    assert!(served_by_ca(b_tls, &root).await.is_none());
    assert_eq!(b.get("/public/x", None).await.status(), 200);

    // Instance A orders from pebble; pebble fetches the challenge from B, which answers it
    // from the database.
    let (a, a_tls) = start_gateway(
        echo.addr,
        db.clone(),
        keys.path(),
        None,
        &pebble.directory,
        &pebble.https_ca_path,
    )
    .await;
    let issued = eventually(Duration::from_secs(60), || async {
        served_by_ca(a_tls, &root).await.is_some()
    })
    .await;
    assert!(
        issued.is_some(),
        "A never served an issued certificate; log:\n{}",
        a.log()
    );
    let (a_cert, status) = served_by_ca(a_tls, &root).await.unwrap();
    assert_eq!(
        status, 200,
        "HTTPS through the issued certificate reaches the upstream"
    );
    // The keys in the database are sealed (AES-256-GCM under the data key ring in keys/),
    // never plaintext.
    let stored = connect(&db).await;
    let key_pem: String = stored
        .query_one("SELECT key_pem FROM acme_certificates", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        key_pem.starts_with("pcs1:") && !key_pem.contains("PRIVATE KEY"),
        "{key_pem}"
    );
    let account: String = stored
        .query_one("SELECT credentials::text FROM acme_accounts", &[])
        .await
        .unwrap()
        .get(0);
    assert!(account.starts_with("\"pcs1:"), "{account}");
    assert!(
        !account.contains("key_pkcs8") && !account.contains("PRIVATE"),
        "{account}"
    );

    // B picks the same certificate up from the database.
    let shared = eventually(Duration::from_secs(20), || async {
        served_by_ca(b_tls, &root).await.map(|(der, _)| der) == Some(a_cert.clone())
    })
    .await;
    assert!(
        shared.is_some(),
        "B never served A's certificate; log:\n{}",
        b.log()
    );
    assert!(
        b.log().contains("ACME certificate check failed"),
        "B's unreachable CA is logged"
    );

    // Renewal: the stored certificate is due; A orders a new one, and both serve it.
    let admin = connect(&db).await;
    admin
        .execute(
            "UPDATE acme_certificates SET not_after = now() + interval '1 day'",
            &[],
        )
        .await
        .unwrap();
    let renewed = eventually(Duration::from_secs(60), || async {
        served_by_ca(a_tls, &root)
            .await
            .is_some_and(|(der, _)| der != a_cert)
    })
    .await;
    assert!(renewed.is_some(), "no renewal; log:\n{}", a.log());
    let (new_cert, _) = served_by_ca(a_tls, &root).await.unwrap();
    let both = eventually(Duration::from_secs(20), || async {
        served_by_ca(b_tls, &root).await.map(|(der, _)| der) == Some(new_cert.clone())
    })
    .await;
    assert!(both.is_some(), "B never served the renewed certificate");
    let stored: i64 = admin
        .query_one("SELECT count(*) FROM acme_certificates", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 1, "one certificate for the set of names");
}
}

postgres_only! {
#[tokio::test]
async fn an_unknown_challenge_token_is_404_from_the_challenge_handler_and_never_forwarded() {
    let echo = Echo::start().await;
    let db = fresh_db().await;
    let proxy = DbProxy::start().await;
    let keys = tempfile::tempdir().unwrap();
    let dead = format!("https://127.0.0.1:{}/dir", free_port());
    let tls_port = free_port();
    let mut opts = Options::new(echo.addr);
    // A public route over /.well-known/: a 404 here can only be the challenge handler's, not
    // "no route".
    opts.extra = format!(
        "{}\n[[route]]\nprefix = \"/.well-known/\"\nupstream = \"api\"\nauth = \"none\"\n",
        acme_tables(tls_port, &dead, "")
    );
    let gw = Gateway::start_with_keys(
        opts,
        proxy.url(&db),
        tempfile::tempdir().unwrap(),
        keys.path().to_path_buf(),
    )
    .await;
    let r = gw
        .get("/.well-known/acme-challenge/no-such-token", None)
        .await;
    assert_eq!(r.status(), 404);
    // Counted in the logging phase, which may run just after the answer left.
    let series = "portcullis_requests_total{route=\"/.well-known/acme-challenge/\",status=\"404\"}";
    let counted = eventually(Duration::from_secs(2), || async {
        gw.metrics().await.get(series) == Some(&1.0)
    })
    .await;
    assert!(
        counted.is_some(),
        "the 404 did not come from the challenge handler: {:?}",
        gw.metrics().await.get(series)
    );
    // With the database down, a token-shaped name needs the database (503), while a name
    // that cannot be an ACME token is refused without asking it.
    proxy.down();
    let r = gw
        .get("/.well-known/acme-challenge/Token-shaped_but_unknown", None)
        .await;
    assert_eq!(r.status(), 503);
    let r = gw
        .get("/.well-known/acme-challenge/not.a~token", None)
        .await;
    assert_eq!(r.status(), 404);
    let long = "a".repeat(300);
    let r = gw
        .get(&format!("/.well-known/acme-challenge/{long}"), None)
        .await;
    assert_eq!(r.status(), 404);
    assert_eq!(echo.count(), 0);
}
}

/// The ring file of a gateway's keys directory.
fn ring_file(keys: &std::path::Path) -> std::path::PathBuf {
    keys.join("secrets.key")
}

#[tokio::test]
async fn secrets_rotate_reseals_every_stored_secret_and_refuses_one_no_key_opens() {
    use base64::Engine as _;
    let echo = Echo::start().await;
    let gw = Gateway::start(Options::new(echo.addr)).await;
    let ring = ring_file(&gw.keys_dir);
    let first = std::fs::read_to_string(&ring).expect("serve generated the key ring");
    assert!(
        gw.log().contains("generated the secrets key ring"),
        "{}",
        gw.log()
    );
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&ring).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Plaintext rows, as a version before sealing wrote them.
    let db = Db::open(&gw.db_url).await;
    let account = r#"{"id":"acct","key_pkcs8":"c2VjcmV0"}"#;
    let key = "-----BEGIN PRIVATE KEY-----\nplain\n-----END PRIVATE KEY-----";
    let in_30_days = (chrono::Utc::now() + chrono::Duration::days(30)).timestamp_micros();
    if on_sqlite() {
        db.exec(
            "INSERT INTO acme_accounts (directory_url, credentials, created_at)
             VALUES ('https://ca.test/dir', $1, 0)",
            &[Arg::Text(account.into())],
        )
        .await;
        db.exec(
            "INSERT INTO acme_certificates (domains, cert_pem, key_pem, not_after, updated_at)
             VALUES ('gw.test', 'CERT', $1, $2, 0)",
            &[Arg::Text(key.into()), Arg::Int(in_30_days)],
        )
        .await;
    } else {
        db.exec(
            "INSERT INTO acme_accounts (directory_url, credentials)
             VALUES ('https://ca.test/dir', $1::text::jsonb)",
            &[Arg::Text(account.into())],
        )
        .await;
        db.exec(
            "INSERT INTO acme_certificates (domains, cert_pem, key_pem, not_after)
             VALUES ('gw.test', 'CERT', $1, now() + interval '30 days')",
            &[Arg::Text(key.into())],
        )
        .await;
    }
    let rotate = || gw.cli(&["secrets", "rotate"], "");
    let out = rotate();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("sealed 2 stored secrets"));
    // The account column is jsonb on PostgreSQL (a sealed value is a JSON string there).
    let sealed = |db: Db| async move {
        let key = db
            .one("SELECT key_pem FROM acme_certificates", &[])
            .await
            .text();
        let acct = db
            .one("SELECT credentials FROM acme_accounts", &[])
            .await
            .text()
            .trim_matches('"')
            .to_string();
        (key, acct)
    };
    let (key1, acct1) = sealed(Db::open(&gw.db_url).await).await;
    assert!(
        key1.starts_with("pcs1:") && !key1.contains("plain"),
        "{key1}"
    );
    assert!(
        acct1.starts_with("pcs1:") && !acct1.contains("c2VjcmV0"),
        "{acct1}"
    );

    // A new first key: rotate seals under it; the old key can then go.
    let new_key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
    std::fs::write(&ring, format!("{new_key}\n{first}")).unwrap();
    let out = rotate();
    assert!(String::from_utf8_lossy(&out.stdout).contains("sealed 2 stored secrets"));
    let (key2, _) = sealed(Db::open(&gw.db_url).await).await;
    assert_ne!(
        key1.split(':').nth(1),
        key2.split(':').nth(1),
        "not under the new key"
    );
    std::fs::write(&ring, format!("{new_key}\n")).unwrap();
    let out = rotate();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("sealed 0 stored secrets under key"));

    // A secret sealed under a key no longer in the ring: an error naming it, nothing written.
    std::fs::write(
        &ring,
        format!(
            "{}\n",
            base64::engine::general_purpose::STANDARD.encode([7u8; 32])
        ),
    )
    .unwrap();
    let out = rotate();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no key of the secrets key ring opens"),
        "{stderr}"
    );
    let (key3, _) = sealed(Db::open(&gw.db_url).await).await;
    assert_eq!(key3, key2, "a failed rotation wrote something");
}
