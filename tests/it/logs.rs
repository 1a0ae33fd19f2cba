//! Logs and audit (the README's "Logs and audit", docs/operations.md "Logging"): the JSON access line, sampling, colour, disconnects below
//! ERROR, the audit trail (table, log, admin endpoint, `audit tail`) and no secret anywhere.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;

const JSON_LOG: &str = "\n[log]\nformat = \"json\"\n";

fn access_token(pair: &Value) -> &str {
    pair["access_token"].as_str().unwrap()
}

fn refresh_token(pair: &Value) -> &str {
    pair["refresh_token"].as_str().unwrap()
}

/// Every JSON line of the log with this `target`.
fn lines(log: &str, target: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == target)
        .collect()
}

/// Waits until the access line of `request_id` is in the log and returns it.
async fn access_line(gw: &Gateway, request_id: &str) -> Value {
    let mut found = None;
    eventually(Duration::from_secs(5), || {
        found = lines(&gw.log(), "access")
            .into_iter()
            .find(|v| v["request_id"] == request_id);
        let ok = found.is_some();
        async move { ok }
    })
    .await;
    found.unwrap_or_else(|| panic!("no access line for {request_id}:\n{}", gw.log()))
}

fn request_id(r: &reqwest::Response) -> String {
    r.headers()["x-request-id"].to_str().unwrap().to_string()
}

async fn json_gateway(extra: &str) -> (Echo, Gateway) {
    let echo = Echo::start().await;
    let mut opts = Options::new(echo.addr);
    opts.extra = format!("{JSON_LOG}{extra}");
    let gw = Gateway::start(opts).await;
    (echo, gw)
}

#[tokio::test]
async fn json_access_lines_carry_the_documented_fields() {
    let (echo, gw) = json_gateway("").await;
    let pair = gw.user("alice@x.io").await;
    let uid = pair["user"]["id"].as_str().unwrap().to_string();

    let ok = gw.get("/api/./items", Some(access_token(&pair))).await;
    assert_eq!(ok.status(), 200);
    let line = access_line(&gw, &request_id(&ok)).await;
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/api/items", "normalized");
    assert_eq!(line["route"], "/api/");
    assert_eq!(line["status"], 200);
    assert_eq!(line["client_ip"], "127.0.0.1");
    assert_eq!(line["user_id"], uid.as_str());
    assert_eq!(line["upstream"], echo.addr.to_string());
    assert!(line["upstream_ms"].as_f64().unwrap() >= 0.0);
    assert!(line["total_ms"].as_f64().unwrap() >= line["upstream_ms"].as_f64().unwrap());
    assert!(line["bytes_out"].as_u64().unwrap() > 0);
    assert_eq!(line["bytes_in"], 0);
    assert!(line["deny_reason"].is_null());

    let denied = gw.get("/api/items", None).await;
    assert_eq!(denied.status(), 401);
    let line = access_line(&gw, &request_id(&denied)).await;
    assert_eq!(line["status"], 401);
    assert_eq!(line["deny_reason"], "missing_token");
    assert!(line["upstream"].is_null() && line["user_id"].is_null());

    let body = json!({"email": "alice@x.io", "password": "password-123"});
    let login = gw.post("/auth/login", body.clone()).await;
    assert_eq!(login.status(), 200);
    let line = access_line(&gw, &request_id(&login)).await;
    assert_eq!(line["route"], "/auth");
    assert_eq!(line["path"], "/auth/login");
    assert_eq!(line["user_id"], uid.as_str());
    assert_eq!(line["bytes_in"], body.to_string().len());
    assert!(line["upstream"].is_null());

    let log = gw.log();
    assert!(!log.contains('\u{1b}'), "ANSI escapes in a file log");
    for l in log.lines().filter(|l| !l.trim().is_empty()) {
        assert!(serde_json::from_str::<Value>(l).is_ok(), "not JSON: {l}");
    }
}

#[tokio::test]
async fn text_logs_to_a_file_have_no_colour() {
    let echo = Echo::start().await;
    let gw = Gateway::start(Options::new(echo.addr)).await;
    let r = gw.get("/api/x", None).await;
    assert_eq!(r.status(), 401);
    let rid = request_id(&r);
    eventually(Duration::from_secs(5), || {
        let ok = gw.log().contains(&rid);
        async move { ok }
    })
    .await
    .expect("access line");
    let log = gw.log();
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escapes in a file log:\n{log}"
    );
    assert!(log.contains("deny_reason=missing_token"), "{log}");
}

#[tokio::test]
async fn sampling_zero_drops_successes_but_keeps_errors() {
    let (_echo, gw) = json_gateway("access_log_sample = 0.0\n").await;
    let ok = gw.get("/public/a", None).await;
    assert_eq!(ok.status(), 200);
    let ok_id = request_id(&ok);
    let missing = gw.get("/nowhere", None).await;
    assert_eq!(missing.status(), 404);
    let line = access_line(&gw, &request_id(&missing)).await;
    assert_eq!(line["route"], "none");
    // One writer, in order: the 404's line is there, so the 200's would be too.
    assert!(
        !gw.log().contains(&ok_id),
        "a sampled-out 200 was logged:\n{}",
        gw.log()
    );
}

#[tokio::test]
async fn access_log_false_writes_no_access_line() {
    let (_echo, gw) = json_gateway("access_log = false\n").await;
    let r = gw.get("/api/x", None).await;
    assert_eq!(r.status(), 401);
    gw.register("late@x.io", "password-123").await;
    // The audit line comes after the request: once it is there, an access line would be too.
    eventually(Duration::from_secs(5), || {
        let ok = !lines(&gw.log(), "audit").is_empty();
        async move { ok }
    })
    .await
    .expect("audit line");
    assert!(lines(&gw.log(), "access").is_empty(), "{}", gw.log());
}

#[tokio::test]
async fn a_client_that_leaves_is_not_an_error() {
    use tokio::io::AsyncWriteExt as _;
    let (_echo, gw) = json_gateway("").await;
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
            .await
            .unwrap();
        s.write_all(b"GET /public/wait HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(s);
    }
    let counted = eventually(Duration::from_secs(5), || async {
        gw.metrics()
            .await
            .get("portcullis_connection_errors_total{kind=\"client_disconnect\"}")
            .is_some_and(|n| *n >= 1.0)
    })
    .await;
    let log = gw.log();
    assert!(counted.is_some(), "no disconnect counted:\n{log}");
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"level\":\"ERROR\""))
        .collect();
    assert!(errors.is_empty(), "logged at ERROR: {errors:?}");
}

/// A client that sends a User-Agent, so the trail can be checked for it.
fn agent_client() -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent("audit-test/1.0")
        .build()
        .unwrap()
}

async fn send(
    gw: &Gateway,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> reqwest::Response {
    let mut req = agent_client().request(method, gw.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.unwrap()
}

async fn post(gw: &Gateway, path: &str, token: Option<&str>, body: Value) -> reqwest::Response {
    send(gw, reqwest::Method::POST, path, token, Some(body)).await
}

async fn login(gw: &Gateway, email: &str, password: &str) -> Value {
    let r = post(
        gw,
        "/auth/login",
        None,
        json!({"email": email, "password": password}),
    )
    .await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn the_audit_trail_records_a_whole_flow_without_secrets() {
    let (_echo, gw) = json_gateway("").await;
    let admin = gw.admin_user("root@x.io").await;
    let admin_id = admin["user"]["id"].as_str().unwrap().to_string();
    let (email, pw, pw2) = ("bob@x.io", "bob-password-1", "bob-password-2");
    let mut secrets: Vec<String> = vec![
        pw.into(),
        pw2.into(),
        "wrong-password-9".into(),
        "admin-password".into(),
        refresh_token(&admin).into(),
        access_token(&admin).into(),
    ];

    let r = post(
        &gw,
        "/auth/register",
        None,
        json!({"email": email, "password": pw}),
    )
    .await;
    assert_eq!(r.status(), 201);
    let register_rid = request_id(&r);
    let r = post(
        &gw,
        "/auth/login",
        None,
        json!({"email": email, "password": "wrong-password-9"}),
    )
    .await;
    assert_eq!(r.status(), 401);

    // Refresh reuse: A → B → C, then A again (its successor is spent: theft).
    let a = login(&gw, email, pw).await;
    let uid = a["user"]["id"].as_str().unwrap().to_string();
    let b: Value = post(
        &gw,
        "/auth/refresh",
        None,
        json!({"refresh_token": refresh_token(&a)}),
    )
    .await
    .json()
    .await
    .unwrap();
    let c: Value = post(
        &gw,
        "/auth/refresh",
        None,
        json!({"refresh_token": refresh_token(&b)}),
    )
    .await
    .json()
    .await
    .unwrap();
    let r = post(
        &gw,
        "/auth/refresh",
        None,
        json!({"refresh_token": refresh_token(&a)}),
    )
    .await;
    assert_eq!(r.status(), 401);
    for p in [&a, &b, &c] {
        secrets.push(refresh_token(p).into());
        secrets.push(access_token(p).into());
    }

    let d = login(&gw, email, pw).await;
    let r = post(
        &gw,
        "/auth/logout",
        None,
        json!({"refresh_token": refresh_token(&d)}),
    )
    .await;
    assert_eq!(r.status(), 204);
    let e = login(&gw, email, pw).await;
    let r = post(&gw, "/auth/logout-all", Some(access_token(&e)), json!({})).await;
    assert_eq!(r.status(), 204);
    let f = login(&gw, email, pw).await;
    let g = login(&gw, email, pw).await;
    let sessions: Value = send(
        &gw,
        reqwest::Method::GET,
        "/auth/sessions",
        Some(access_token(&f)),
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    let other = sessions["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["current"] == false)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = send(
        &gw,
        reqwest::Method::DELETE,
        &format!("/auth/sessions/{other}"),
        Some(access_token(&f)),
        None,
    )
    .await;
    assert_eq!(r.status(), 204);
    let r = post(
        &gw,
        "/auth/password",
        Some(access_token(&f)),
        json!({"current_password": pw, "new_password": pw2}),
    )
    .await;
    assert_eq!(r.status(), 204);
    for p in [&d, &e, &f, &g] {
        secrets.push(refresh_token(p).into());
        secrets.push(access_token(p).into());
    }

    let admin_token = access_token(&admin);
    for patch in [
        json!({"role": "admin"}),
        json!({"role": "user"}),
        json!({"is_active": false}),
        json!({"is_active": true}),
    ] {
        let r = send(
            &gw,
            reqwest::Method::PATCH,
            &format!("/auth/admin/users/{uid}"),
            Some(admin_token),
            Some(patch),
        )
        .await;
        assert_eq!(r.status(), 200);
    }
    let r = send(
        &gw,
        reqwest::Method::DELETE,
        &format!("/auth/admin/users/{uid}/sessions"),
        Some(admin_token),
        None,
    )
    .await;
    assert_eq!(r.status(), 204);

    let db = Db::open(&gw.db_url).await;
    let rows = db
        .rows(
            "SELECT event, user_id, actor_id, client_ip, user_agent, request_id
             FROM audit_events ORDER BY id",
            &[],
        )
        .await;
    let id = |v: &Val| match v {
        Val::Null => None,
        v => Some(uuid::Uuid::from_slice(&v.bytes()).unwrap().to_string()),
    };
    type Row = (
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let rows: Vec<Row> = rows
        .iter()
        .map(|r| {
            (
                r[0].text(),
                id(&r[1]),
                id(&r[2]),
                r[3].opt_text(),
                r[4].opt_text(),
                r[5].opt_text(),
            )
        })
        .collect();
    let events: Vec<&str> = rows
        .iter()
        .filter(|r| r.1.as_deref() == Some(uid.as_str()))
        .map(|r| r.0.as_str())
        .collect();
    assert_eq!(
        events,
        vec![
            "register",
            "login_failed",
            "login_ok",
            "refresh_reuse_detected",
            "login_ok",
            "logout",
            "login_ok",
            "logout_all",
            "login_ok",
            "login_ok",
            "session_revoked",
            "password_changed",
            "role_changed",
            "role_changed",
            "deactivated",
            "activated",
            "session_revoked",
        ]
    );
    for (event, user, actor, ip, ua, rid) in &rows {
        if user.as_deref() != Some(uid.as_str()) {
            continue;
        }
        assert_eq!(ip.as_deref(), Some("127.0.0.1"), "{event}");
        assert_eq!(ua.as_deref(), Some("audit-test/1.0"), "{event}");
        assert!(rid.as_deref().is_some_and(|r| !r.is_empty()), "{event}");
        let expected_actor = match event.as_str() {
            "login_failed" | "refresh_reuse_detected" => None,
            "role_changed" | "deactivated" | "activated" => Some(admin_id.as_str()),
            "session_revoked" if actor.as_deref() == Some(admin_id.as_str()) => {
                Some(admin_id.as_str())
            }
            _ => Some(uid.as_str()),
        };
        assert_eq!(actor.as_deref(), expected_actor, "{event}");
    }
    assert_eq!(
        (rows[0].0.as_str(), rows[0].2.as_deref()),
        ("register", None),
        "the admin's creation by the CLI comes first, with no actor"
    );
    assert_eq!(rows[1].0, "login_ok", "then the admin's login");
    let register = rows
        .iter()
        .find(|r| r.0 == "register" && r.1.as_deref() == Some(uid.as_str()))
        .unwrap();
    assert_eq!(register.5.as_deref(), Some(register_rid.as_str()));

    // The same events as log lines (target "audit") — those the gateway recorded; the CLI's
    // (no request id) are in the CLI's own log.
    let logged = eventually(Duration::from_secs(5), || {
        let n = lines(&gw.log(), "audit").len();
        let want = rows.iter().filter(|r| r.5.is_some()).count();
        async move { n >= want }
    })
    .await;
    assert!(logged.is_some(), "audit lines missing:\n{}", gw.log());
    let line = lines(&gw.log(), "audit")
        .into_iter()
        .find(|l| l["event"] == "role_changed")
        .unwrap();
    assert_eq!(line["user_id"], uid.as_str());
    assert_eq!(line["actor_id"], admin_id.as_str());
    assert_eq!(line["client_ip"], "127.0.0.1");
    assert_eq!(line["user_agent"], "audit-test/1.0");

    // No password, hash or token in the table or the log.
    for row in db.rows("SELECT hashed_password FROM users", &[]).await {
        secrets.extend(row[0].opt_text());
    }
    let table: Vec<String> = db
        .rows("SELECT * FROM audit_events", &[])
        .await
        .iter()
        .map(|r| format!("{r:?}"))
        .collect();
    let table = table.join("\n");
    let log = gw.log();
    for secret in &secrets {
        assert!(!table.contains(secret.as_str()), "a secret in audit_events");
        assert!(!log.contains(secret.as_str()), "a secret in the log");
    }
}

#[tokio::test]
async fn the_admin_audit_endpoint_pages_filters_and_refuses_users() {
    let (_echo, gw) = json_gateway("").await;
    let admin = gw.admin_user("root@x.io").await;
    let token = access_token(&admin).to_string();
    let user = gw.user("carol@x.io").await;
    let uid = user["user"]["id"].as_str().unwrap().to_string();
    for _ in 0..3 {
        let body = json!({"email": "carol@x.io", "password": "wrong-password"});
        assert_eq!(gw.post("/auth/login", body).await.status(), 401);
    }

    // Every page, newest first, no duplicates.
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/auth/admin/audit?limit=2&cursor={c}"),
            None => "/auth/admin/audit?limit=2".to_string(),
        };
        let r = gw.get(&path, Some(&token)).await;
        assert_eq!(r.status(), 200);
        let page: Value = r.json().await.unwrap();
        let events = page["events"].as_array().unwrap();
        assert!(events.len() <= 2);
        ids.extend(events.iter().map(|e| e["id"].as_i64().unwrap()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    // admin created (CLI) and login, register, login, 3 failures.
    assert_eq!(ids.len(), 7, "{ids:?}");
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");

    let page: Value = gw
        .get("/auth/admin/audit?event=login_failed", Some(&token))
        .await
        .json()
        .await
        .unwrap();
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|e| e["event"] == "login_failed"));
    assert!(events.iter().all(|e| e["user_id"] == uid.as_str()));

    for user_filter in [uid.as_str(), "CAROL@x.io"] {
        let page: Value = gw
            .get(
                &format!("/auth/admin/audit?user={user_filter}"),
                Some(&token),
            )
            .await
            .json()
            .await
            .unwrap();
        let events = page["events"].as_array().unwrap();
        assert_eq!(events.len(), 5, "{user_filter}");
        assert_eq!(events[0]["event"], "login_failed");
        assert_eq!(events[4]["event"], "register");
    }
    let page: Value = gw
        .get("/auth/admin/audit?since=2999-01-01T00:00:00Z", Some(&token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["events"], json!([]));
    assert!(page["next_cursor"].is_null());

    for bad in [
        "limit=0",
        "limit=201",
        "event=nope",
        "since=yesterday",
        "cursor=%21%21",
        "user=nobody",
    ] {
        let r = gw
            .get(&format!("/auth/admin/audit?{bad}"), Some(&token))
            .await;
        assert_eq!(r.status(), 400, "{bad}");
    }
    let r = gw.get("/auth/admin/audit", Some(access_token(&user))).await;
    assert_eq!(r.status(), 403);
    let r = gw.get("/auth/admin/audit", None).await;
    assert_eq!(r.status(), 401);

    // The CLI: newest first, one JSON object a line, filtered.
    let out = gw.cli(
        &["audit", "tail", "--email", "carol@x.io", "--limit", "2"],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tail: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(tail.len(), 2);
    assert!(tail.iter().all(|e| e["user_id"] == uid.as_str()));
    assert!(tail[0]["id"].as_i64() > tail[1]["id"].as_i64());
    let out = gw.cli(&["audit", "tail", "--event", "register"], "");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    // carol's registration, then the admin's creation by the CLI.
    let registered: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(registered.len(), 2, "{text}");
    assert_eq!(registered[0]["user_id"], uid.as_str());
    assert_eq!(registered[1]["detail"]["via"], "cli");
    assert!(
        !gw.cli(&["audit", "tail", "--event", "nope"], "")
            .status
            .success()
    );

    // keys generate records key_rotated.
    let out = gw.cli(&["keys", "generate"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = gw.cli(&["audit", "tail", "--event", "key_rotated"], "");
    let text = String::from_utf8(out.stdout).unwrap();
    let rotated: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert!(rotated["detail"]["kid"].is_string());
    let ids: HashSet<i64> = ids.into_iter().collect();
    assert!(!ids.contains(&rotated["id"].as_i64().unwrap()));

    // The operator verbs record their changes too, with no actor.
    let out = gw.cli(
        &[
            "user",
            "set-role",
            "--email",
            "carol@x.io",
            "--role",
            "admin",
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = gw.cli(&["sessions", "revoke", "--email", "carol@x.io"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = gw.cli(
        &["audit", "tail", "--email", "carol@x.io", "--limit", "2"],
        "",
    );
    let tail: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(tail[0]["event"], "session_revoked");
    assert_eq!(tail[1]["event"], "role_changed");
    assert_eq!(tail[1]["detail"], json!({"from": "user", "to": "admin"}));
    assert!(
        tail.iter()
            .all(|e| e["actor_id"].is_null() && e["user_id"] == uid.as_str())
    );
}

#[tokio::test]
async fn reaching_the_account_limit_records_one_lockout() {
    let echo = Echo::start().await;
    let mut opts = Options::new(echo.addr);
    opts.rate_limit = "login_per_minute_per_ip = 1000\nlogin_per_minute_per_account = 2\n\
                       register_per_minute_per_ip = 1000\n"
        .into();
    let gw = Gateway::start(opts).await;
    let user = gw.register("dave@x.io", "password-123").await;
    let uid = user["user"]["id"].as_str().unwrap().to_string();
    for status in [401, 401, 429, 429] {
        let body = json!({"email": "dave@x.io", "password": "wrong-password"});
        assert_eq!(gw.post("/auth/login", body).await.status(), status);
    }
    let db = Db::open(&gw.db_url).await;
    let events: Vec<String> = db
        .rows(
            "SELECT event FROM audit_events WHERE user_id = $1 ORDER BY id",
            &[Arg::Uuid(uid.parse().unwrap())],
        )
        .await
        .iter()
        .map(|r| r[0].text())
        .collect();
    assert_eq!(
        events,
        vec!["register", "login_failed", "login_failed", "lockout"]
    );
}

#[tokio::test]
async fn under_json_every_line_serve_writes_is_json_from_creating_the_database_on() {
    let echo = Echo::start().await;
    let mut opts = Options::new(echo.addr);
    opts.extra = JSON_LOG.into();
    // A database that does not exist yet: serve creates and migrates it, and says so.
    let url = absent_db_url();
    opts.database = Some(url.clone());
    let mut gw = Gateway::start(opts).await;
    let r = gw.get("/public/x", None).await;
    assert_eq!(r.status(), 200);
    gw.signal("TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(20)), Some(0));
    let log = gw.log();
    let mut lines = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\n{log}"));
        assert!(v.is_object(), "{line}");
        lines += 1;
    }
    assert!(log.contains("created the database"), "{log}");
    assert!(log.contains("applied migration"), "{log}");
    assert!(lines > 5, "{log}");
    drop_db(&url).await;
}

#[tokio::test]
async fn under_json_serve_reports_a_failed_start_as_a_json_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = Options::new(std::net::SocketAddr::from(([127, 0, 0, 1], 9)));
    opts.extra = JSON_LOG.into();
    let dead = format!("postgres://postgres@127.0.0.1:{}/nothing", free_port());
    let text = config_text(
        &opts,
        free_port(),
        free_port(),
        &dead,
        &dir.path().join("keys"),
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    let out = run_cli(&path, &["serve"], "", &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let all: Vec<&str> = stderr
        .lines()
        .chain(stdout.lines())
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(!all.is_empty());
    for line in &all {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        assert!(v.is_object());
    }
    assert!(
        stderr.contains("serve stopped") && stderr.contains("auto-migration failed"),
        "{stderr}"
    );
}
