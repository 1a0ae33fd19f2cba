//! The embedded store itself: one instance per file, durability across a crash, concurrent
//! writers, the file's place and its migrations. Everything else runs on it through the
//! shared suite.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::harness::*;

/// A `serve` on `gw`'s file from another directory and other ports (so the lock, not a busy
/// port, is what stops it), run to its exit.
fn another_serve(gw: &Gateway, echo: &Echo) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let opts = Options::new(echo.addr);
    std::fs::write(
        &config,
        config_text(&opts, free_port(), free_port(), &gw.db_url, &gw.keys_dir),
    )
    .unwrap();
    Command::new(bin())
        .args(["--config", config.to_str().unwrap(), "serve"])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[tokio::test]
async fn a_second_serve_on_the_same_file_refuses_to_start_and_names_postgresql() {
    let echo = Echo::start().await;
    let gw = Gateway::start(Options::new(echo.addr)).await;
    let second = another_serve(&gw, &echo);
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("more than one instance needs PostgreSQL"),
        "{err}"
    );
    assert!(
        err.contains(&gw.pid().to_string()),
        "names the holder: {err}"
    );
    // The first one serves on, untouched.
    assert_eq!(gw.get("/public/x", None).await.status(), 200);
    // CLI verbs work beside it.
    let out = gw.cli(&["user", "list"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_kill_9_right_after_the_answer_loses_no_write() {
    let echo = Echo::start().await;
    let mut gw = Gateway::start(Options::new(echo.addr)).await;
    let pair = gw.user("durable@x.io").await;
    // A rotation answered, then the process killed at once: the rotation must have stuck.
    let rotated: serde_json::Value = gw.refresh(&pair).await.json().await.unwrap();
    let r = gw
        .post(
            "/auth/register",
            json!({ "email": "last@x.io", "password": "password-123" }),
        )
        .await;
    assert_eq!(r.status(), 201);
    gw.kill();
    gw.restart().await;

    // The last registration is there, the rotated token is the live one, the spent one is
    // spent (a replay after the grace window is theft, so it is refused).
    gw.login("last@x.io", "password-123").await;
    assert_eq!(
        gw.get("/api/x", Some(rotated["access_token"].as_str().unwrap()))
            .await
            .status(),
        200,
        "the access token issued before the crash"
    );
    let again = gw.refresh(&rotated).await;
    assert_eq!(again.status(), 200);
    let db = Db::open(&gw.db_url).await;
    let users = db.one("SELECT count(*) FROM users", &[]).await.int();
    assert_eq!(users, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_logins_and_refreshes_wait_for_the_lock_instead_of_failing() {
    let echo = Echo::start().await;
    let gw = Gateway::start(Options::new(echo.addr)).await;
    let mut pairs = Vec::new();
    for i in 0..8 {
        pairs.push(gw.user(&format!("busy{i}@x.io")).await);
    }
    // 8 accounts × (a login and two refresh chains): 24 writers at once, each a transaction.
    let mut tasks = Vec::new();
    for (i, pair) in pairs.iter().enumerate() {
        let http = gw.http.clone();
        let (login_url, refresh_url) = (gw.url("/auth/login"), gw.url("/auth/refresh"));
        let email = format!("busy{i}@x.io");
        let refresh = pair["refresh_token"].as_str().unwrap().to_string();
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            let login = http
                .post(&login_url)
                .json(&json!({ "email": email, "password": "password-123" }))
                .send()
                .await
                .unwrap();
            statuses.push(login.status().as_u16());
            let mut token = refresh;
            for _ in 0..2 {
                let r = http
                    .post(&refresh_url)
                    .json(&json!({ "refresh_token": token }))
                    .send()
                    .await
                    .unwrap();
                statuses.push(r.status().as_u16());
                let body: serde_json::Value = r.json().await.unwrap();
                token = body["refresh_token"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
            }
            statuses
        }));
    }
    for t in tasks {
        let statuses = t.await.unwrap();
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    }
    let log = gw.log();
    assert!(!log.contains("locked"), "{log}");
    assert!(!log.contains(" 503 "), "{log}");
}

#[test]
fn a_relative_file_is_found_from_the_config_files_directory() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[database]\nurl = \"sqlite://state/gateway.db\"\n").unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let migrate = || {
        Command::new(bin())
            .args(["--config", config.to_str().unwrap(), "migrate"])
            .current_dir(elsewhere.path())
            .env_remove("DATABASE_URL")
            .output()
            .unwrap()
    };
    let first = migrate();
    let out = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(out.contains("created database"), "{out}");
    for name in [
        "V1__users_and_refresh_tokens",
        "V2__oidc",
        "V3__audit",
        "V4__acme",
        "V5__oidc_browser",
    ] {
        assert!(out.contains(&format!("applied {name}")), "{out}");
    }
    assert!(dir.path().join("state/gateway.db").exists());
    assert!(!elsewhere.path().join("state").exists());
    let second = migrate();
    assert!(second.status.success());
    assert!(String::from_utf8_lossy(&second.stdout).contains("no pending migrations"));
}

#[tokio::test]
async fn the_file_is_in_wal_mode_and_the_lock_file_names_the_serving_process() {
    let echo = Echo::start().await;
    let gw = Gateway::start(Options::new(echo.addr)).await;
    let path = sqlite_path(&gw.db_url);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let lock = std::fs::read_to_string(format!("{}.lock", path.display())).unwrap();
    assert_eq!(lock.trim(), gw.pid().to_string());
    // A new gateway after this one exits takes the file (the lock dies with the process).
    let mut gw = gw;
    gw.signal("TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(20)), Some(0));
    gw.kill(); // reaps the exited process
    gw.restart().await;
    assert_eq!(gw.get("/public/x", None).await.status(), 200);
}

#[tokio::test]
async fn serve_upgrade_takes_the_file_over_from_the_instance_it_replaces() {
    let echo = Echo::start().await;
    let mut gw = Gateway::start(Options::new(echo.addr)).await;
    let pair = gw.user("upgrade@x.io").await;
    let old = gw.pid();
    // The new process starts while the old one still holds the lock, then takes it.
    assert_eq!(gw.upgrade(), Some(0));
    let new = gw.pid();
    assert_ne!(new, old);
    let lock = format!("{}.lock", sqlite_path(&gw.db_url).display());
    let took = eventually(Duration::from_secs(5), || async {
        std::fs::read_to_string(&lock).is_ok_and(|pid| pid.trim() == new.to_string())
    })
    .await;
    assert!(
        took.is_some(),
        "the new process never held the lock; log:\n{}",
        gw.log()
    );
    // It serves the same data (on a new connection: the old process closed its own), and a
    // further serve is refused in its name.
    let token = pair["access_token"].as_str().unwrap();
    let r = reqwest::Client::new()
        .get(gw.url("/api/x"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let third = another_serve(&gw, &echo);
    assert_eq!(third.status.code(), Some(1));
    let err = String::from_utf8_lossy(&third.stderr);
    assert!(err.contains(&format!("pid {new}")), "{err}");
}
