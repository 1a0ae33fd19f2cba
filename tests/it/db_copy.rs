//! `portcullis db copy`: a single instance on SQLite moves to PostgreSQL (and back) with every
//! persistent table, its tokens still valid; a non-empty target or a row the target refuses
//! writes nothing.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;

/// Runs `portcullis db copy` (no config needed: both ends are on the command line).
fn db_copy(from: &str, to: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "").unwrap();
    Command::new(bin())
        .args(["--config", config.to_str().unwrap(), "db", "copy"])
        .args(["--from", from, "--to", to])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap()
}

/// Rows per copied table, by the store-neutral reader.
async fn counts(url: &str) -> Vec<(String, i64)> {
    let db = Db::open(url).await;
    let mut out = Vec::new();
    for table in [
        "users",
        "sessions",
        "refresh_tokens",
        "oidc_identities",
        "audit_events",
        "acme_accounts",
    ] {
        let n = db
            .one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .int();
        out.push((table.to_string(), n));
    }
    out
}

#[tokio::test]
async fn a_sqlite_instance_moves_to_postgresql_and_back_with_its_tokens_still_valid() {
    let echo = Echo::start().await;
    let sqlite = fresh_sqlite();
    let mut gw = Gateway::start_on(Options::new(echo.addr), sqlite.clone()).await;
    let admin = gw.admin_user("root@x.io").await;
    let pair = gw.user("mover@x.io").await;
    // A rotation (a refresh-token chain with replaced_by) and a revoked session.
    let rotated: Value = gw.refresh(&pair).await.json().await.unwrap();
    let gone = gw.login("mover@x.io", "password-123").await;
    let r = gw
        .post(
            "/auth/logout",
            json!({ "refresh_token": gone["refresh_token"] }),
        )
        .await;
    assert_eq!(r.status(), 204);
    gw.signal("TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(20)), Some(0));
    gw.kill();

    let pg = absent_pg_url();
    let out = db_copy(&sqlite, &pg);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("users: 2 rows"), "{stdout}");
    assert!(stdout.contains("row counts verified"), "{stdout}");
    assert_eq!(counts(&sqlite).await, counts(&pg).await);

    // The same keys directory on PostgreSQL: every token issued before the move still works.
    let dir = tempfile::tempdir().unwrap();
    let moved = Gateway::start_with_keys(
        Options::new(echo.addr),
        pg.clone(),
        dir,
        gw.keys_dir.clone(),
    )
    .await;
    let access = rotated["access_token"].as_str().unwrap();
    assert_eq!(moved.get("/api/x", Some(access)).await.status(), 200);
    let gone_access = gone["access_token"].as_str().unwrap();
    assert_eq!(moved.get("/api/x", Some(gone_access)).await.status(), 401);
    let next = moved.refresh(&rotated).await;
    assert_eq!(next.status(), 200);
    // The spent parent is recognised as spent (its replaced_by link came along): theft.
    let replay = moved.refresh(&pair).await;
    assert_eq!(replay.status(), 401);
    moved.login("mover@x.io", "password-123").await;
    let users = moved
        .get(
            "/auth/admin/users",
            Some(admin["access_token"].as_str().unwrap()),
        )
        .await;
    assert_eq!(users.status(), 200);
    // New audit rows continue the copied ids.
    let audit = Db::open(&pg)
        .await
        .one(
            "SELECT count(DISTINCT id) = count(*) FROM audit_events",
            &[],
        )
        .await;
    assert!(audit.bool());

    // And back into a new file: the same rows.
    let back = format!("sqlite://{}/back/portcullis.db", sqlite_dir().display());
    drop(moved);
    let out = db_copy(&pg, &back);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(counts(&pg).await, counts(&back).await);
    drop_db(&pg).await;
}

#[tokio::test]
async fn a_non_empty_target_or_a_refused_row_writes_nothing() {
    let echo = Echo::start().await;
    let sqlite = fresh_sqlite();
    let mut gw = Gateway::start_on(Options::new(echo.addr), sqlite.clone()).await;
    gw.user("a@x.io").await;
    gw.user("b@x.io").await;
    gw.signal("TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(20)), Some(0));

    // A target that already holds an account: refused, untouched.
    let taken = fresh_pg().await;
    let db = Db::open(&taken).await;
    db.exec(
        "INSERT INTO users (id, email, email_canonical) VALUES ($1, 'x@x.io', 'x@x.io')",
        &[Arg::Uuid(uuid::Uuid::new_v4())],
    )
    .await;
    let out = db_copy(&sqlite, &taken);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not empty") && err.contains("users"), "{err}");
    assert_eq!(db.one("SELECT count(*) FROM users", &[]).await.int(), 1);

    // A row PostgreSQL refuses halfway through (an address that is not one): nothing at all
    // is written, not even the rows before it.
    Db::open(&sqlite)
        .await
        .exec("UPDATE sessions SET ip = 'not-an-address'", &[])
        .await;
    let target = fresh_pg().await;
    let out = db_copy(&sqlite, &target);
    assert_eq!(out.status.code(), Some(1));
    let target_db = Db::open(&target).await;
    for table in ["users", "sessions", "audit_events"] {
        let n = target_db
            .one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .int();
        assert_eq!(n, 0, "{table} written by a failed copy");
    }

    // The same database twice, and a missing source: clear errors.
    let out = db_copy(&sqlite, &sqlite);
    assert_eq!(out.status.code(), Some(1));
    let out = db_copy("sqlite:///nonexistent/portcullis.db", &absent_pg_url());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}
