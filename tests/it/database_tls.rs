//! The database underneath (docs/operations.md, "A managed PostgreSQL over TLS"): TLS to a PostgreSQL that accepts only TLS, with
//! every `sslmode`, for the pool, the LISTEN connection and migrations alike; and a
//! multi-host URL whose first host is down, which lands on the one that answers.

use std::time::Duration;

use crate::harness::*;
use crate::tls::Pki;

/// A gateway on `url`, or why the database could not be reached (`migrate`'s output).
async fn try_gateway(echo: &Echo, url: &str) -> Result<Gateway, String> {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::new(echo.addr);
    let text = config_text(
        &opts,
        free_port(),
        free_port(),
        url,
        &dir.path().join("keys"),
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, &text).unwrap();
    // `migrate` first: it tells whether the database can be reached at all, and how not.
    let mut out = std::process::Command::new(bin())
        .args(["--config", path.to_str().unwrap(), "migrate"])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    if !out.status.success() {
        out.stdout.extend_from_slice(&out.stderr);
        return Err(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let mut o = Options::new(echo.addr);
    o.database = Some(url.to_string());
    Ok(Gateway::start(o).await)
}

#[tokio::test]
async fn every_sslmode_works_against_a_tls_only_postgres_and_plain_is_refused_clearly() {
    let pki = Pki::new();
    let leaf = pki.leaf(&["localhost"]);
    let pg = PrivatePg::start_with_tls(Some((&leaf.cert_pem, &leaf.key_pem)));
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pki.ca_pem()).unwrap();
    let ca = ca.display().to_string();
    let echo = Echo::start().await;
    let port = pg.port;

    // verify-full with the name the certificate carries: the whole gateway works over TLS,
    // revocation through the LISTEN connection included.
    let url = format!(
        "postgres://postgres@localhost:{port}/gw_full?sslmode=verify-full&sslrootcert={ca}"
    );
    let gw = try_gateway(&echo, &url)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", pg.log()));
    let pair = gw.user("tls@x.io").await;
    let token = pair["access_token"].as_str().unwrap();
    assert_eq!(gw.get("/api/x", Some(token)).await.status(), 200);
    let r = gw
        .http
        .post(gw.url("/auth/logout-all"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(gw.get("/api/x", Some(token)).await.status(), 401);
    // Asked over TLS too (the server takes nothing else): are the gateway's sessions encrypted?
    let admin = portcullis::store::tls::target(&format!(
        "postgres://postgres@127.0.0.1:{port}/postgres?sslmode=require"
    ))
    .unwrap();
    let (client, connection) = admin.config.connect(admin.tls).await.unwrap();
    tokio::spawn(connection);
    let ssl: Option<bool> = client
        .query_one(
            "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.datname = 'gw_full'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let ssl = ssl.unwrap_or(false);
    assert!(ssl, "the gateway's connections are not encrypted");
    drop(gw);

    // require (encrypted, certificate not checked) and verify-ca (chain only, the IP is not a
    // name the certificate has) both connect.
    for query in [
        "sslmode=require".to_string(),
        format!("sslmode=verify-ca&sslrootcert={ca}"),
    ] {
        let url = format!("postgres://postgres@127.0.0.1:{port}/gw_other?{query}");
        let gw = try_gateway(&echo, &url)
            .await
            .unwrap_or_else(|e| panic!("{query}: {e}"));
        assert_eq!(gw.get("/public/x", None).await.status(), 200);
    }

    // verify-full against a name the certificate does not carry: refused, and said to be TLS.
    let url = format!(
        "postgres://postgres@127.0.0.1:{port}/gw_name?sslmode=verify-full&sslrootcert={ca}"
    );
    let err = try_gateway(&echo, &url)
        .await
        .err()
        .expect("a wrong name was accepted");
    assert!(err.contains("TLS"), "{err}");
    // verify-full without the CA: the system's roots do not know the test CA.
    let url = format!("postgres://postgres@localhost:{port}/gw_noca?sslmode=verify-full");
    let err = try_gateway(&echo, &url)
        .await
        .err()
        .expect("an unknown CA was accepted");
    assert!(err.contains("TLS"), "{err}");
    // Plain TCP: the server refuses it, with its reason.
    let url = format!("postgres://postgres@127.0.0.1:{port}/gw_plain?sslmode=disable");
    let err = try_gateway(&echo, &url)
        .await
        .err()
        .expect("plain TCP was accepted");
    assert!(
        err.contains("no encryption") || err.contains("pg_hba"),
        "{err}"
    );
}

#[tokio::test]
async fn a_multi_host_url_lands_on_the_host_that_answers_for_pool_and_listen() {
    let pg = PrivatePg::start();
    let echo = Echo::start().await;
    let closed = free_port();
    let url = format!(
        "postgres://postgres@127.0.0.1:{closed},127.0.0.1:{}/gw_multi?target_session_attrs=read-write&connect_timeout=2",
        pg.port
    );
    let gw = try_gateway(&echo, &url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let pair = gw.user("multi@x.io").await;
    let token = pair["access_token"].as_str().unwrap();
    assert_eq!(gw.get("/api/x", Some(token)).await.status(), 200);
    // The LISTEN connection reached it too: a revocation written straight into the database
    // (as another instance would) is enforced within a second.
    let sid = {
        let claims = token.split('.').nth(1).unwrap();
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        v["sid"].as_str().unwrap().to_string()
    };
    connect(&pg.url("gw_multi"))
        .await
        .batch_execute(&format!(
            "UPDATE sessions SET revoked_at = now() WHERE id = '{sid}'; NOTIFY {}, 's:{sid}'",
            portcullis::store::postgres::REVOCATION_CHANNEL
        ))
        .await
        .unwrap();
    let revoked = eventually(Duration::from_secs(1), || async {
        gw.get("/api/x", Some(token)).await.status() == 401
    })
    .await;
    assert!(
        revoked.is_some(),
        "the LISTEN connection did not land on the live host"
    );
}
