//! Operators (the README's "Command line"): `routes list | explain` against the real proxy, the admin
//! listener's `/routes` endpoints, and the user and session verbs of the CLI.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::Value;

use crate::harness::*;

/// Routes beyond the harness defaults: a case-variant of `/api/` (shadowed), a strip route
/// onto the same upstream as `/api/admin/` (an exposure), a host route and a method route.
const EXTRA_ROUTES: &str = r#"
[[route]]
prefix = "/API/"
upstream = "api"
auth = "none"

[[route]]
prefix = "/static/"
upstream = "api"
auth = "none"
strip_prefix = true

[[route]]
prefix = "/h/"
upstream = "api"
host = "internal.example"
roles = ["admin"]

[[route]]
prefix = "/h/"
upstream = "api"
auth = "none"

[[route]]
prefix = "/w/"
upstream = "api"
methods = ["POST"]
auth = "none"
"#;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap()
}

/// A config file for CLI-only checks (nothing listens, nothing connects).
fn offline_config(extra: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = Options::new("127.0.0.1:9".parse().unwrap());
    opts.extra = extra.to_string();
    let cfg = dir.path().join("config.toml");
    let text = config_text(
        &opts,
        18080,
        19090,
        "postgres://postgres@127.0.0.1:5432/unused",
        &dir.path().join("keys"),
    );
    std::fs::write(&cfg, text).unwrap();
    (dir, cfg)
}

#[test]
fn routes_list_prints_the_table_in_match_order_with_its_warnings() {
    let (_dir, cfg) = offline_config(EXTRA_ROUTES);
    let out = run_cli(&cfg, &["routes", "list"], "", &[]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    let header = text.lines().next().unwrap();
    for col in [
        "PREFIX", "HOST", "METHODS", "AUTH", "ROLES", "UPSTREAM", "FLAGS",
    ] {
        assert!(header.contains(col), "{header}");
    }
    let at = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("{needle}: {text}"))
    };
    // Longest prefix first; at one prefix the host route before the fallback.
    assert!(at("/api/admin/") < at(" /api/ "), "{text}");
    let line_of = |pred: &dyn Fn(&str) -> bool| text.lines().position(pred).unwrap();
    assert!(
        line_of(&|l| l.contains("/h/") && l.contains("internal.example"))
            < line_of(&|l| l.contains("/h/") && !l.contains("internal.example")),
        "{text}"
    );
    assert!(text.contains("strip_prefix"), "{text}");
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("/API/") && w.contains("can never match")),
        "{text}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("/static/") && w.contains("/static/api/admin/…")),
        "{text}"
    );
    // The host route and its fallback are a refinement, not an overlap worth a warning.
    assert!(!warnings.iter().any(|w| w.contains("overlaps")), "{text}");

    std::fs::write(&cfg, "[[route]]\nprefix = \"nope\"\nupstream = \"x\"\n").unwrap();
    let bad = run_cli(&cfg, &["routes", "list"], "", &[]);
    assert_eq!(bad.status.code(), Some(1), "{}", stdout(&bad));
    assert!(stderr(&bad).contains("prefix"), "{}", stderr(&bad));
}

#[test]
fn routes_explain_shows_each_step_and_refuses_bad_usage() {
    let (_dir, cfg) = offline_config("");
    let explain = |args: &[&str]| {
        let mut all = vec!["routes", "explain"];
        all.extend_from_slice(args);
        run_cli(&cfg, &all, "", &[])
    };
    let out = explain(&["get", "/API/admin/x/../users?q=1", "--role", "user"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(text.contains("normalized:  /API/admin/users"), "{text}");
    assert!(text.contains("route:       #1 /api/admin/"), "{text}");
    assert!(text.contains("upstream:    api"), "{text}");
    assert!(
        text.contains("decision:    403 insufficient_scope"),
        "{text}"
    );
    let text = stdout(&explain(&["GET", "/api/admin/x", "--role", "ADMIN"]));
    assert!(text.contains("decision:    forward"), "{text}");
    let text = stdout(&explain(&["GET", "/api/x", "--anonymous"]));
    assert!(text.contains("decision:    401 missing_token"), "{text}");
    let text = stdout(&explain(&["GET", "/api/%2e%2e/%2e%2e/x"]));
    assert!(text.contains("decision:    400 bad_path"), "{text}");
    assert!(
        text.contains("refused (the path climbs above the root)"),
        "{text}"
    );
    let text = stdout(&explain(&["GET", "/elsewhere"]));
    assert!(text.contains("decision:    404 no_route"), "{text}");
    let out = explain(&["GET", "/api/x", "--token", "not.a.jwt"]);
    let text = stdout(&out);
    // An empty keys_dir: nothing can be verified, and nothing is written.
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(stderr(&out).contains("keys_dir"), "{}", stderr(&out));
    for bad in [
        vec!["GET", "/api/x", "--role", "root"],
        vec!["GET", "/api/x", "--role", "user", "--anonymous"],
        vec!["G T", "/api/x"],
        vec!["GET"],
    ] {
        let out = explain(&bad);
        assert_eq!(out.status.code(), Some(1), "{bad:?}: {}", stdout(&out));
    }
}

/// What the proxy answered: status and the error code of the body (or the upstream's path).
fn answer(raw: &str) -> (u16, String) {
    let status: u16 = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {raw:?}"));
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or("");
    let json: Value = serde_json::from_str(body.trim()).unwrap_or(Value::Null);
    let detail = json["error"]
        .as_str()
        .or(json["path"].as_str())
        .unwrap_or("")
        .to_string();
    (status, detail)
}

fn line_after<'a>(text: &'a str, label: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(label))
        .map(str::trim)
}

/// Every case is asked of `routes explain`, of the admin listener's `/routes/explain` and of
/// the running proxy; they must agree on the decision, the status and, when forwarded, on the
/// path the upstream receives.
#[tokio::test]
async fn routes_explain_agrees_with_the_real_proxy() {
    let echo = Echo::start().await;
    let mut opts = Options::new(echo.addr);
    opts.extra = EXTRA_ROUTES.into();
    let gw = Gateway::start(opts).await;
    let admin = gw.admin_user("root@ops.example").await;
    let user = gw.user("bob@ops.example").await;
    let admin_token = admin["access_token"].as_str().unwrap().to_string();
    let user_token = user["access_token"].as_str().unwrap().to_string();
    // (method, target, host, caller) — caller: "" anonymous, "user"/"admin" a real token of
    // that role (also asked as --role), "bad" a token the keys do not verify.
    let cases: &[(&str, &str, &str, &str)] = &[
        ("GET", "/api/x", "", ""),
        ("GET", "/api/x", "", "user"),
        ("GET", "/api/x", "", "bad"),
        ("GET", "/api/admin/x", "", "user"),
        ("GET", "/api/admin/x", "", "admin"),
        ("GET", "/API/ADMIN/x", "", "user"),
        ("GET", "/api/admin", "", "user"),
        ("GET", "/api/x/../admin/y", "", "user"),
        ("GET", "/api/%61dmin/y", "", "user"),
        ("GET", "/api/admin;/y", "", "admin"),
        ("GET", "/api/%252e/y", "", "admin"),
        ("GET", "/api/..%2fadmin", "", "admin"),
        ("GET", "/api/../../x", "", "admin"),
        ("GET", "/public/a", "", ""),
        ("GET", "/public/a", "", "bad"),
        ("GET", "/opt/a", "", ""),
        ("GET", "/opt/a", "", "bad"),
        ("GET", "/opt/a", "", "user"),
        ("GET", "/static/api/admin/secret", "", ""),
        ("GET", "/static", "", ""),
        ("GET", "/h/a", "internal.example", "user"),
        ("GET", "/h/a", "internal.example:8080", "admin"),
        ("GET", "/h/a", "other.example", ""),
        ("POST", "/w/a", "", ""),
        ("GET", "/w/a", "", ""),
        ("GET", "/nowhere", "", "admin"),
        ("DELETE", "/api/x", "", "user"),
    ];
    let mut checked = 0;
    for (method, target, host, caller) in cases {
        let token = match *caller {
            "user" => Some(user_token.as_str()),
            "admin" => Some(admin_token.as_str()),
            "bad" => Some("eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2ln"),
            _ => None,
        };
        let mut cli_args = vec!["routes", "explain", method, target];
        if !host.is_empty() {
            cli_args.extend(["--host", host]);
        }
        // Each variant: the arguments and what stdin carries.
        let mut variants = vec![(cli_args.clone(), "")];
        match token {
            Some(t) => {
                let mut with_token = cli_args.clone();
                with_token.extend(["--token", t]);
                // The same token read from stdin (`--token -`), out of argv.
                let mut from_stdin = cli_args.clone();
                from_stdin.extend(["--token", "-"]);
                variants = vec![(with_token, ""), (from_stdin, t)];
                if *caller != "bad" {
                    let mut with_role = cli_args.clone();
                    with_role.extend(["--role", caller]);
                    variants.push((with_role, ""));
                }
            }
            None => variants[0].0.push("--anonymous"),
        }
        let host_header = if host.is_empty() {
            format!("127.0.0.1:{}", gw.port)
        } else {
            host.to_string()
        };
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let raw = raw_request(
            gw.port,
            format!(
                "{method} {target} HTTP/1.1\r\nHost: {host_header}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        let (status, detail) = answer(&raw);
        for (args, stdin) in variants {
            let out = gw.cli(&args, stdin);
            let text = stdout(&out);
            assert!(out.status.success(), "{args:?}: {text}{}", stderr(&out));
            let decision = line_after(&text, "decision:").unwrap();
            let case = format!("{args:?}\n{text}\nproxy: {raw}");
            if !args.contains(&"--token") {
                // The running instance's admin listener explains it the same way.
                let role = if args.contains(&"--role") {
                    *caller
                } else {
                    ""
                };
                let live: Value = gw
                    .http
                    .get(gw.admin("/routes/explain"))
                    .query(&[
                        ("method", *method),
                        ("url", *target),
                        ("host", *host),
                        ("role", role),
                    ])
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                assert_eq!(live["decision"], decision, "{case}\nadmin: {live}");
            }
            if decision == "forward" {
                assert_eq!(status, 200, "{case}");
                let receives = line_after(&text, "upstream:")
                    .and_then(|u| u.split("(receives ").nth(1))
                    .map(|p| p.trim_end_matches(')'))
                    .unwrap();
                assert_eq!(detail, receives, "{case}");
            } else {
                let (code, reason) = decision.split_once(' ').unwrap();
                assert_eq!(code, status.to_string(), "{case}");
                let body_code = match reason {
                    "missing_token" => "unauthorized",
                    "invalid_token" => "invalid_token",
                    "insufficient_scope" => "forbidden",
                    "no_route" => "not_found",
                    "bad_path" => "invalid_request",
                    other => panic!("unexpected reason {other}: {case}"),
                };
                assert_eq!(detail, body_code, "{case}");
            }
            if token.is_some() && args.contains(&"--token") {
                assert!(text.contains("cannot be checked offline"), "{text}");
            }
            checked += 1;
        }
    }
    assert!(checked > cases.len(), "{checked}");
}

#[tokio::test]
async fn the_admin_listener_serves_the_live_route_table_and_explains() {
    let echo = Echo::start().await;
    let mut opts = Options::new(echo.addr);
    opts.extra = EXTRA_ROUTES.into();
    let gw = Gateway::start(opts).await;
    let get = |q: String| {
        let http = gw.http.clone();
        let url = gw.admin(&q);
        async move {
            let r = http.get(url).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let (status, table) = get("/routes".into()).await;
    assert_eq!(status, 200, "{table}");
    let routes = table["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 9, "{table}");
    assert_eq!(routes[0]["prefix"], "/api/admin/");
    assert_eq!(routes[0]["position"], 1);
    assert_eq!(routes[0]["roles"], serde_json::json!(["admin"]));
    let stat = routes.iter().find(|r| r["prefix"] == "/static/").unwrap();
    assert_eq!(stat["strip_prefix"], true);
    assert_eq!(stat["auth"], "none");
    let warnings = table["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("/static/api/admin/")),
        "{table}"
    );

    let (status, e) = get("/routes/explain?method=get&url=/api/admin/x&role=user".into()).await;
    assert_eq!(status, 200, "{e}");
    assert_eq!(e["decision"], "403 insufficient_scope");
    assert_eq!(e["status"], 403);
    assert_eq!(e["route"]["prefix"], "/api/admin/");
    assert_eq!(e["upstream"], "api");
    let (_, e) = get("/routes/explain?method=GET&url=%2Fapi%2Fx".into()).await;
    assert_eq!(e["decision"], "401 missing_token", "{e}");
    let (_, e) = get("/routes/explain?method=GET&url=/static/a&role=admin".into()).await;
    assert_eq!(e["decision"], "forward", "{e}");
    assert_eq!(e["upstream_path"], "/a", "{e}");
    let (_, e) =
        get("/routes/explain?method=GET&url=/h/a&host=internal.example&role=user".into()).await;
    assert_eq!(e["decision"], "403 insufficient_scope", "{e}");
    let (_, e) = get("/routes/explain?method=GET&url=/api/%25252e".into()).await;
    assert_eq!(e["decision"], "400 bad_path", "{e}");
    assert_eq!(e["normalized_path"], Value::Null, "{e}");
    for bad in [
        "/routes/explain?url=/api/x",
        "/routes/explain?method=GET&url=/x&role=root",
    ] {
        let (status, body) = get(bad.into()).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"], "invalid_request");
    }
    let r = gw.http.post(gw.admin("/routes")).send().await.unwrap();
    assert_eq!(r.status(), 405);
}

#[tokio::test]
async fn user_verbs_follow_the_admin_rules_and_keep_the_last_admin() {
    let echo = Echo::start().await;
    let gw = Gateway::start(Options::new(echo.addr)).await;
    gw.admin_user("root@ops.example").await;
    gw.user("Bob@Ops.example").await;

    let out = gw.cli(&["user", "list"], "");
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    let root = text
        .lines()
        .find(|l| l.contains("root@ops.example"))
        .unwrap();
    assert!(root.contains("admin") && root.contains("active"), "{text}");
    let bob = text
        .lines()
        .find(|l| l.contains("Bob@Ops.example"))
        .unwrap();
    assert!(bob.contains("user"), "{text}");
    assert!(text.contains("2 users"), "{text}");

    // The only active admin can be neither demoted nor deactivated.
    for args in [
        &[
            "user",
            "set-role",
            "--email",
            "root@ops.example",
            "--role",
            "user",
        ][..],
        &["user", "deactivate", "--email", "root@ops.example"][..],
    ] {
        let out = gw.cli(args, "");
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stdout(&out));
        assert!(
            stderr(&out).contains("last active admin"),
            "{}",
            stderr(&out)
        );
    }
    let login = gw
        .post(
            "/auth/login",
            serde_json::json!({"email": "root@ops.example", "password": "admin-password"}),
        )
        .await;
    assert_eq!(
        login.status(),
        200,
        "the refused change left the admin as it was"
    );

    // Deactivate and reactivate a user; the email matches as logins match it.
    let out = gw.cli(&["user", "deactivate", "--email", "bob@ops.EXAMPLE"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let refused = gw
        .post(
            "/auth/login",
            serde_json::json!({"email": "bob@ops.example", "password": "password-123"}),
        )
        .await;
    assert_eq!(refused.status(), 403);
    assert!(stdout(&gw.cli(&["user", "list"], "")).contains("inactive"));
    let out = gw.cli(&["user", "activate", "--email", "bob@ops.example"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    gw.login("bob@ops.example", "password-123").await;

    // With a second admin, the first may step down; the role is taken as printed, any case.
    let out = gw.cli(
        &[
            "user",
            "set-role",
            "--email",
            "bob@ops.example",
            "--role",
            "Admin",
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("is now admin"), "{}", stdout(&out));
    let out = gw.cli(
        &[
            "user",
            "set-role",
            "--email",
            "root@ops.example",
            "--role",
            "user",
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));

    for (args, message) in [
        (
            &["user", "deactivate", "--email", "nobody@ops.example"][..],
            "no user has this email",
        ),
        (
            &[
                "user",
                "set-role",
                "--email",
                "bob@ops.example",
                "--role",
                "root",
            ][..],
            "not a role",
        ),
        (&["user", "activate", "--email", "not-an-email"][..], "@"),
    ] {
        let out = gw.cli(args, "");
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
    }
}

#[tokio::test]
async fn sessions_revoke_reaches_a_running_gateway_within_a_second() {
    let echo = Echo::start().await;
    let gw = Gateway::start(Options::new(echo.addr)).await;
    let first = gw.user("carol@ops.example").await;
    let second = gw.login("carol@ops.example", "password-123").await;
    let t1 = first["access_token"].as_str().unwrap().to_string();
    let t2 = second["access_token"].as_str().unwrap().to_string();
    let sid1 = claims_of(&t1)["sid"].as_str().unwrap().to_string();

    let out = gw.cli(&["sessions", "list", "--email", "carol@ops.example"], "");
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(text.contains(&sid1), "{text}");
    assert!(text.contains("2 live sessions"), "{text}");

    // Both tokens work and their status is cached (30 s): only the notification can end them.
    for t in [&t1, &t2] {
        assert_eq!(gw.get("/api/x", Some(t)).await.status(), 200);
    }
    let out = gw.cli(&["sessions", "revoke", "--session", &sid1], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let took = eventually(Duration::from_secs(1), || async {
        gw.get("/api/x", Some(&t1)).await.status() == 401
    })
    .await;
    assert!(took.is_some(), "the revoked session still works after 1 s");
    assert_eq!(gw.get("/api/x", Some(&t2)).await.status(), 200);

    let out = gw.cli(&["sessions", "revoke", "--session", &sid1], "");
    assert_eq!(out.status.code(), Some(1), "already revoked");
    assert!(stderr(&out).contains("no live session"), "{}", stderr(&out));

    let out = gw.cli(&["sessions", "revoke", "--email", "carol@ops.example"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("revoked 1 sessions"),
        "{}",
        stdout(&out)
    );
    let took = eventually(Duration::from_secs(1), || async {
        gw.get("/api/x", Some(&t2)).await.status() == 401
    })
    .await;
    assert!(took.is_some(), "the user's sessions still work after 1 s");
    let text = stdout(&gw.cli(&["sessions", "list", "--email", "carol@ops.example"], ""));
    assert!(text.contains("0 live sessions"), "{text}");

    for args in [
        &["sessions", "revoke"][..],
        &[
            "sessions",
            "revoke",
            "--email",
            "carol@ops.example",
            "--session",
            &sid1,
        ][..],
        &["sessions", "revoke", "--session", "not-a-uuid"][..],
        &["sessions", "list", "--email", "nobody@ops.example"][..],
    ] {
        assert_eq!(gw.cli(args, "").status.code(), Some(1), "{args:?}");
    }
}
