//! Schema, migrations, CLI, config checking, readiness and shutdown.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::harness::*;

fn shipped_config() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml")).unwrap()
}

postgres_only! {
#[tokio::test]
async fn migrations_create_the_database_apply_and_rerun_as_a_no_op() {
    let name = format!("pt_m_{}_{}", std::process::id(), rand_suffix());
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, "").unwrap();
    let url = url_for(&name);
    let first = run_cli(&cfg, &["migrate"], "", &[("DATABASE_URL", &url)]);
    let out = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(out.contains("created database"), "{out}");
    assert!(
        out.contains("applied V1__users_and_refresh_tokens"),
        "{out}"
    );
    let second = run_cli(&cfg, &["migrate"], "", &[("DATABASE_URL", &url)]);
    let out = String::from_utf8_lossy(&second.stdout);
    assert!(second.status.success());
    assert!(out.contains("no pending migrations"), "{out}");
    let db = connect(&url).await;
    let tables: Vec<String> = db
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for t in ["refresh_tokens", "sessions", "users"] {
        assert!(tables.contains(&t.to_string()), "{tables:?}");
    }
    let role_type: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_type WHERE typname = 'user_role'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(role_type, 1);
    drop(db);
    admin_exec(&format!("DROP DATABASE {name} WITH (FORCE)")).await;
}
}

postgres_only! {
fn rand_suffix() -> u32 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}
}

#[tokio::test]
async fn the_canonical_email_is_unique_in_the_schema() {
    let db = Db::open(&fresh_db().await).await;
    let insert = "INSERT INTO users (id, email, email_canonical) VALUES ($1, $2, 'bob@x.io')";
    db.try_exec(
        insert,
        &[Arg::Uuid(Uuid::new_v4()), Arg::Text("bob@x.io".into())],
    )
    .await
    .unwrap();
    let err = db
        .try_exec(
            insert,
            &[Arg::Uuid(Uuid::new_v4()), Arg::Text("Bob@X.io".into())],
        )
        .await
        .unwrap_err();
    assert!(err.contains("email_canonical"), "{err}");
}

#[tokio::test]
async fn deleting_a_user_cascades_to_sessions_and_refresh_tokens_and_no_raw_token_is_stored() {
    let echo = Echo::start().await;
    let gw = Gateway::start(Options::new(echo.addr)).await;
    let pair = gw.user("cascade@example.com").await;
    let refresh = pair["refresh_token"].as_str().unwrap();
    let refreshed: serde_json::Value = gw
        .post("/auth/refresh", json!({ "refresh_token": refresh }))
        .await
        .json()
        .await
        .unwrap();
    let successor = refreshed["refresh_token"].as_str().unwrap();
    let db = Db::open(&gw.db_url).await;

    let rows = db
        .rows("SELECT token_hash, * FROM refresh_tokens", &[])
        .await;
    assert_eq!(rows.len(), 2);
    let hashes: Vec<Vec<u8>> = rows.iter().map(|r| r[0].bytes()).collect();
    for token in [refresh, successor] {
        assert!(hashes.contains(&Sha256::digest(token.as_bytes()).to_vec()));
        for value in rows.iter().flatten() {
            let stored = match value {
                Val::Text(t) => t.as_bytes().to_vec(),
                Val::Bytes(b) => b.clone(),
                _ => continue,
            };
            assert!(
                !stored.windows(token.len()).any(|w| w == token.as_bytes()),
                "raw refresh token stored: {value:?}"
            );
        }
    }

    db.exec("DELETE FROM users WHERE email = 'cascade@example.com'", &[])
        .await;
    for table in ["refresh_tokens", "sessions"] {
        let n = db
            .one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .int();
        assert_eq!(n, 0, "{table} rows left after deleting the user");
    }
}

#[test]
fn check_config_accepts_the_shipped_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, shipped_config()).unwrap();
    let out = run_cli(&cfg, &["check-config"], "", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));
}

#[test]
fn check_config_rejects_each_broken_config_naming_the_key() {
    let shipped = shipped_config();
    let cases: Vec<(&str, &str, &str)> = vec![
        ("threads = 2 ", "threads = 0 ", "server.threads"),
        ("threads = 2 ", "threadz = 2 ", "threadz"),
        ("threads = 2 ", "threads = \"two\" ", "server.threads"),
        (
            "access_ttl_secs = 900",
            "access_ttl_secs = -1",
            "tokens.access_ttl_secs",
        ),
        (
            "listen = \"127.0.0.1:8080\"",
            "listen = \"nowhere\"",
            "server.listen",
        ),
        (
            "addrs = [\"127.0.0.1:9000\"]",
            "addrs = [\"no-port\"]",
            "upstream[0].addrs",
        ),
        (
            "prefix = \"/public/\"\nupstream = \"api\"",
            "prefix = \"/public/\"\nupstream = \"ghost\"",
            "route[2].upstream",
        ),
        (
            "prefix = \"/public/\"",
            "prefix = \"/auth/public/\"",
            "route[2].prefix",
        ),
        (
            "prefix = \"/public/\"",
            "prefix = \"/api/\"",
            "route[2].prefix",
        ),
        (
            "algorithm = \"EdDSA\"",
            "algorithm = \"none\"",
            "tokens.algorithm",
        ),
        (
            "on_db_error = \"deny\"",
            "on_db_error = \"maybe\"",
            "revocation.on_db_error",
        ),
        (
            "cache_ttl_secs = 30",
            "cache_ttl_secs = 0",
            "revocation.cache_ttl_secs",
        ),
        (
            "roles = [\"admin\"]",
            "roles = [\"root\"]",
            "route[0].roles",
        ),
        (
            "url = \"sqlite://data/portcullis.db\"",
            "url = \"mysql://x/y\"",
            "database.url",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    for (from, to, key) in cases {
        assert!(shipped.contains(from), "{from}");
        std::fs::write(&cfg, shipped.replacen(from, to, 1)).unwrap();
        let out = run_cli(&cfg, &["check-config"], "", &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{to}: {err}");
        assert!(err.contains(key), "{to}: message should name {key}: {err}");
        assert!(
            err.contains("line "),
            "{to}: message should give the line: {err}"
        );
    }
}

#[test]
fn a_missing_config_file_is_a_clear_error() {
    let out = run_cli(
        Path::new("/nonexistent/config.toml"),
        &["check-config"],
        "",
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/config.toml"));
}

postgres_only! {
#[tokio::test]
async fn readyz_follows_the_database_without_a_restart() {
    let echo = Echo::start().await;
    let proxy = DbProxy::start().await;
    let db = fresh_db().await;
    let gw = Gateway::start_on(Options::new(echo.addr), proxy.url(&db)).await;
    let status = |path: &'static str| {
        let req = gw.http.get(gw.admin(path)).send();
        async move { req.await.map(|r| r.status().as_u16()).unwrap_or(0) }
    };
    let becomes = |want: u16| async move {
        eventually(Duration::from_secs(10), || async {
            status("/readyz").await == want
        })
        .await
        .is_some()
    };
    assert_eq!(status("/readyz").await, 200);
    assert_eq!(status("/healthz").await, 200);
    proxy.down();
    assert!(
        becomes(503).await,
        "readyz should answer 503 while the database is unreachable"
    );
    assert_eq!(
        status("/healthz").await,
        200,
        "healthz only says the process runs"
    );
    proxy.up();
    assert!(
        becomes(200).await,
        "readyz should recover once the database is back"
    );
}
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_and_exits_zero() {
    let echo = Echo::start().await;
    let mut gw = Gateway::start(Options::new(echo.addr)).await;
    let slow = gw.http.get(gw.url("/public/wait")).send();
    let slow = tokio::spawn(slow);
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.signal("TERM");
    let resp = slow.await.unwrap().expect("in-flight request finished");
    assert_eq!(resp.status(), 200);
    let code = gw.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(0), "log:\n{}", gw.log());
}

#[tokio::test]
async fn user_create_bootstraps_an_admin_and_rejects_duplicates() {
    let echo = Echo::start().await;
    let gw = Gateway::start(Options::new(echo.addr)).await;
    let pair = gw.admin_user("root@example.com").await;
    assert_eq!(pair["user"]["role"], "admin");
    let again = gw.cli(
        &[
            "user",
            "create",
            "--email",
            "ROOT@example.com",
            "--role",
            "admin",
            "--password-stdin",
        ],
        "another-password\n",
    );
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let short = gw.cli(
        &[
            "user",
            "create",
            "--email",
            "x@example.com",
            "--password-stdin",
        ],
        "short\n",
    );
    assert_eq!(short.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 8"));
    // The role is accepted in any case, and each account the CLI creates is in the audit trail.
    let ops = gw.cli(
        &[
            "user",
            "create",
            "--email",
            "ops@example.com",
            "--role",
            "Admin",
            "--password-stdin",
        ],
        "password-123\n",
    );
    assert!(
        ops.status.success(),
        "{}",
        String::from_utf8_lossy(&ops.stderr)
    );
    let rows = Db::open(&gw.db_url)
        .await
        .rows(
            "SELECT u.email, a.actor_id IS NULL, a.detail FROM audit_events a
             JOIN users u ON u.id = a.user_id WHERE a.event = 'register' ORDER BY a.id",
            &[],
        )
        .await;
    let rows: Vec<(String, bool, serde_json::Value)> = rows
        .iter()
        .map(|r| {
            let detail = serde_json::from_str(&r[2].text()).unwrap();
            (r[0].text(), r[1].bool(), detail)
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (
                "root@example.com".into(),
                true,
                serde_json::json!({"via": "cli", "role": "admin"})
            ),
            (
                "ops@example.com".into(),
                true,
                serde_json::json!({"via": "cli", "role": "admin"})
            ),
        ]
    );
}

#[tokio::test]
async fn keys_generate_adds_a_key_that_signs_after_sighup() {
    let echo = Echo::start().await;
    let gw = Gateway::start(Options::new(echo.addr)).await;
    let old = gw.user("keys@example.com").await;
    let old_kid = kid_of(old["access_token"].as_str().unwrap());
    let out = gw.cli(&["keys", "generate"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    gw.signal("HUP");
    let new_kid = eventually(Duration::from_secs(5), || async {
        let pair = gw.login("keys@example.com", "password-123").await;
        kid_of(pair["access_token"].as_str().unwrap()) != old_kid
    })
    .await;
    assert!(new_kid.is_some(), "new tokens should carry the new kid");
    let r = gw.get("/api/x", old["access_token"].as_str()).await;
    assert_eq!(r.status(), 200, "tokens of the old key still verify");
    let jwks: serde_json::Value = gw.get("/auth/jwks.json", None).await.json().await.unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn keys_generate_accepts_algorithm_names_as_documented_in_any_case() {
    let echo = Echo::start().await;
    let gw = Gateway::start(Options::new(echo.addr)).await;
    for alg in ["EdDSA", "eddsa", "ES256", "es256", "RS256"] {
        let out = gw.cli(&["keys", "generate", "--algorithm", alg], "");
        assert!(
            out.status.success(),
            "{alg}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout
                .to_ascii_lowercase()
                .contains(&alg.to_ascii_lowercase()),
            "{stdout}"
        );
    }
    let out = gw.cli(&["keys", "generate", "--algorithm", "HS512"], "");
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown algorithm is a usage error"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("EdDSA"));
}

/// The `kid` of a JWT's header.
pub fn kid_of(token: &str) -> String {
    use base64::Engine as _;
    let header = token.split('.').next().unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["kid"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_upgrade_under_continuous_load_fails_no_request() {
    let echo = Echo::start().await;
    let mut gw = Gateway::start(Options::new(echo.addr)).await;
    let load = Load::start(
        (0..4)
            .map(|n| gw.url(&format!("/public/load/{n}")))
            .collect(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let old_pid = gw.pid();
    let old_exit = tokio::task::block_in_place(|| gw.upgrade());
    assert_eq!(old_exit, Some(0), "the old process drains and exits 0");
    assert_ne!(gw.pid(), old_pid);
    // The new process serves alone for a while under the same load.
    let served_before = echo.count();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (ok, failed) = load.finish().await;
    assert!(
        failed.is_empty(),
        "{} failed requests: {failed:?}",
        failed.len()
    );
    assert!(ok > 50, "only {ok} requests were served");
    assert!(
        echo.count() > served_before,
        "the new process served nothing"
    );
    let r = gw.http.get(gw.admin("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the admin listener moved over too");
}

/// A config for `check-config`/`serve` whose `server.upgrade_sock` is `sock`.
fn config_with_upgrade_sock(dir: &Path, sock: &str) -> std::path::PathBuf {
    let opts = Options::new(std::net::SocketAddr::from(([127, 0, 0, 1], 9)));
    let text = config_text(
        &opts,
        free_port(),
        free_port(),
        "postgres://postgres@127.0.0.1:5432/unused",
        &dir.join("keys"),
    )
    .replace(
        "upgrade_sock = \"upgrade.sock\"",
        &format!("upgrade_sock = \"{sock}\""),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn an_upgrade_socket_in_a_directory_others_can_write_is_refused_by_check_config_and_serve() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    // Like /tmp: anyone may create the socket there first and receive the listeners.
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let sock = shared.join("upgrade.sock");
    let path = config_with_upgrade_sock(dir.path(), sock.to_str().unwrap());
    for verb in ["check-config", "serve"] {
        let out = run_cli(&path, &[verb], "", &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{verb}: {stderr}");
        assert!(stderr.contains("server.upgrade_sock"), "{verb}: {stderr}");
        assert!(
            stderr.contains("writable by group or others"),
            "{verb}: {stderr}"
        );
    }
    // Group-writable is refused too; owner-only passes, and a missing directory is created
    // owner-only by serve (check-config leaves it to serve).
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o770)).unwrap();
    assert_eq!(
        run_cli(&path, &["check-config"], "", &[]).status.code(),
        Some(1)
    );
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = run_cli(&path, &["check-config"], "", &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let missing = dir.path().join("run/upgrade.sock");
    let path = config_with_upgrade_sock(dir.path(), missing.to_str().unwrap());
    assert_eq!(
        run_cli(&path, &["check-config"], "", &[]).status.code(),
        Some(0)
    );
}

#[test]
fn the_default_upgrade_socket_lies_in_a_private_directory_beside_the_keys() {
    let text = "[[upstream]]\nname = \"a\"\naddrs = [\"127.0.0.1:1\"]\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    let config = portcullis::config::Config::load(&path).unwrap();
    let sock = Path::new(&config.server.upgrade_sock);
    assert!(
        !sock.starts_with("/tmp") && !sock.starts_with("/var/tmp") && sock.is_relative(),
        "{}",
        sock.display()
    );
    assert_eq!(
        sock.parent(),
        Path::new(&config.tokens.keys_dir)
            .parent()
            .map(|p| p.join("run"))
            .as_deref(),
        "not beside keys_dir"
    );
}

/// Run as root, as another user, the attacker of the upgrade socket: binds `sock` (as root,
/// so any directory works), drops to `nobody`, listens, and reports how many file descriptors
/// the gateway sent it.
const FOREIGN_LISTENER: &str = r#"
import array, os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1])
os.chmod(sys.argv[1], 0o777)
os.setgid(65534)
os.setuid(65534)
s.listen(1)
print("listening", flush=True)
s.settimeout(30)
try:
    c, _ = s.accept()
except socket.timeout:
    print("received 0 fds (no connection)", flush=True)
    sys.exit(0)
fds = array.array("i")
_, anc, _, _ = c.recvmsg(4096, socket.CMSG_LEN(64 * fds.itemsize))
n = sum(len(d) // fds.itemsize for (level, kind, d) in anc
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS)
print(f"received {n} fds", flush=True)
"#;

#[tokio::test]
async fn the_listening_sockets_are_never_handed_to_a_process_of_another_user() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: only root can start a listener as another user (CI runs as root)");
        return;
    }
    use std::io::BufRead as _;
    let echo = Echo::start().await;
    let gw = Gateway::start(Options::new(echo.addr)).await;
    let sock = gw.dir.path().join("upgrade.sock");
    let mut attacker = std::process::Command::new("python3")
        .args(["-c", FOREIGN_LISTENER, sock.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(attacker.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "listening");
    gw.signal("QUIT");
    let report = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let _ = attacker.wait();
        line
    })
    .await
    .unwrap();
    assert!(report.starts_with("received 0 fds"), "{report}");
    let log = gw.log();
    assert!(
        log.contains("Refusing the upgrade socket peer"),
        "no refusal logged: {log}"
    );
}

#[test]
fn check_config_warns_about_an_admin_listener_reachable_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_with_upgrade_sock(dir.path(), "upgrade.sock");
    let quiet = run_cli(&path, &["check-config"], "", &[]);
    assert_eq!(quiet.status.code(), Some(0));
    assert!(
        !String::from_utf8_lossy(&quiet.stderr).contains("warning"),
        "{}",
        String::from_utf8_lossy(&quiet.stderr)
    );
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("admin_listen = \"127.0.0.1:", "admin_listen = \"0.0.0.0:");
    std::fs::write(&path, text).unwrap();
    let out = run_cli(&path, &["check-config"], "", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a warning, not an error: {stderr}"
    );
    assert!(
        stderr.contains("warning: server.admin_listen 0.0.0.0:")
            && stderr.contains("no authentication"),
        "{stderr}"
    );
}
