//! Running under a supervisor: `serve --daemon` (the starting process exits 0 only once the
//! daemon serves), `server.pid_file`, the systemd unit's reload sequence (SIGQUIT to the old
//! daemon, then `serve --upgrade --daemon`) under load, and the unit in deploy/ checked by
//! `systemd-analyze verify`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

/// A gateway config in its own directory, started as a daemon; kills what it started.
struct Daemon {
    dir: tempfile::TempDir,
    config: PathBuf,
    port: u16,
    admin_port: u16,
    /// Every daemon pid seen, killed on drop if still alive.
    pids: Vec<i32>,
}

impl Daemon {
    async fn new(opts: Options) -> Daemon {
        Daemon::on(opts, &fresh_db().await)
    }

    /// With a given database URL (one that is never reached, for the failures).
    fn on(opts: Options, db: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let (port, admin_port) = (free_port(), free_port());
        let config = dir.path().join("config.toml");
        let text = config_text(&opts, port, admin_port, db, &dir.path().join("keys"));
        std::fs::write(&config, text).unwrap();
        Daemon {
            dir,
            config,
            port,
            admin_port,
            pids: Vec::new(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.path().join("portcullis.pid")
    }

    /// The pid the pid file names.
    fn pid(&mut self) -> i32 {
        let text = std::fs::read_to_string(self.pid_file())
            .unwrap_or_else(|e| panic!("no pid file ({e}); log:\n{}", self.log()));
        let pid: i32 = text.trim().parse().unwrap();
        if !self.pids.contains(&pid) {
            self.pids.push(pid);
        }
        pid
    }

    /// Runs `portcullis serve --daemon [extra]` to completion (the daemon stays behind) and
    /// returns the starting process's exit code and its output, as systemd would see them.
    fn start(&self, extra: &[&str]) -> (Option<i32>, String) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("gateway.log"))
            .unwrap();
        // Output through a file: a pipe would stay open in the daemon, which keeps stderr.
        let out_path = self.dir.path().join("start.out");
        let out = std::fs::File::create(&out_path).unwrap();
        let status = Command::new(bin())
            .args([
                "--config",
                self.config.to_str().unwrap(),
                "serve",
                "--daemon",
            ])
            .args(extra)
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "info")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(out)
            .status()
            .unwrap();
        (status.code(), std::fs::read_to_string(out_path).unwrap())
    }
}

impl Drop for Daemon {
    /// Kills the daemons of this config still running (a failed test leaves them behind). Only
    /// a pid whose command line names this config: pids are reused quickly (pid_max is often
    /// 32768 and threads draw from it too), and another test's gateway must not be hit.
    fn drop(&mut self) {
        let config = self.config.to_string_lossy().into_owned();
        for pid in &self.pids {
            let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&config));
            if ours {
                signal(*pid, "KILL");
            }
        }
    }
}

fn signal(pid: i32, sig: &str) {
    let _ = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Whether `pid` still runs (a zombie waiting for a reaper that is not us counts as gone).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_string())
        })
        .is_some_and(|rest| !rest.starts_with('Z'))
}

fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_serves_once_started_and_hands_over_to_serve_upgrade_daemon_with_no_failed_request()
 {
    let echo = Echo::start().await;
    let mut opts = Options::new(echo.addr);
    opts.server.push_str("pid_file = \"portcullis.pid\"\n");
    let mut d = Daemon::new(opts).await;
    let (code, out) = tokio::task::block_in_place(|| d.start(&[]));
    assert_eq!(code, Some(0), "{out}\nlog:\n{}", d.log());
    let old = d.pid();
    assert!(alive(old), "the daemon runs after its starter exited");

    // Started means serving: no polling, the first request is answered.
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", d.port);
    let r = http
        .get(format!("{base}/public/first"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .get(format!("http://127.0.0.1:{}/readyz", d.admin_port))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The whole gateway runs in the daemon: accounts (DB pool), tokens, the proxy.
    let creds = serde_json::json!({"email": "daemon@example.com", "password": "password-123"});
    let r = http
        .post(format!("{base}/auth/register"))
        .json(&creds)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // Continuous load across the reload.
    let load = Load::start((0..4).map(|n| format!("{base}/public/load/{n}")).collect());
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The unit's ExecReload, in its order: SIGQUIT to $MAINPID, then the new daemon.
    signal(old, "QUIT");
    let (code, out) = tokio::task::block_in_place(|| d.start(&["--upgrade"]));
    assert_eq!(code, Some(0), "{out}\nlog:\n{}", d.log());
    let new = d.pid();
    assert_ne!(new, old, "the pid file names the new daemon");
    assert!(
        tokio::task::block_in_place(|| wait_gone(old, Duration::from_secs(30))),
        "the old daemon did not exit; log:\n{}",
        d.log()
    );
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
        "the new daemon served nothing"
    );
    assert_eq!(
        std::fs::read_to_string(d.pid_file()).unwrap().trim(),
        new.to_string(),
        "the old daemon left the new one's pid file alone"
    );

    // SIGTERM: the daemon drains, exits, and removes its pid file.
    signal(new, "TERM");
    assert!(tokio::task::block_in_place(|| wait_gone(
        new,
        Duration::from_secs(30)
    )));
    assert!(!d.pid_file().exists(), "the pid file outlived its daemon");
}

#[tokio::test]
async fn serve_daemon_needs_a_pid_file_and_reports_a_daemon_that_fails_to_start() {
    let echo = Echo::start().await;
    // Nothing listens on port 1: the database is unreachable.
    let unreachable = "postgres://postgres@127.0.0.1:1/portcullis";
    let d = Daemon::on(Options::new(echo.addr), unreachable);
    let (code, out) = d.start(&[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("server.pid_file"), "{out}");

    // A daemon that cannot reach its database exits; its starter says so with exit 1.
    let mut opts = Options::new(echo.addr);
    opts.server.push_str("pid_file = \"portcullis.pid\"\n");
    let d = Daemon::on(opts, unreachable);
    let (code, out) = d.start(&[]);
    assert_eq!(code, Some(1), "{out}\nlog:\n{}", d.log());
    // The daemon's own error and its starter's verdict, both on the starter's stderr.
    assert!(out.contains("auto-migration failed"), "{out}");
    assert!(out.contains("failed before it was ready"), "{out}");
    assert!(
        !d.pid_file().exists(),
        "a daemon that never served wrote a pid file"
    );
}

/// The unit shipped in deploy/, checked the way systemd reads it.
#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    // Installed by .ci/run (Debian's systemd package): a missing tool is a failure, never a
    // pass that verified nothing.
    let version = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .expect("systemd-analyze (apt-get install systemd) verifies deploy/portcullis.service");
    assert!(version.status.success());
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/portcullis.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    // verify resolves ExecStart= binaries: point the unit at the one under test.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("portcullis.service");
    std::fs::write(&copy, text.replace("/usr/local/bin/portcullis", bin())).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    // verify exits 0 on some warnings; ours must have none about this unit.
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("portcullis.service"))
        .collect();
    assert!(about_unit.is_empty(), "{stderr}");
    // The reload checks the new binary and config first (a failure leaves the old daemon
    // serving), then the listener hand-over, in the order Pingora documents.
    let reloads: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("ExecReload="))
        .collect();
    assert_eq!(
        reloads,
        vec![
            "/usr/local/bin/portcullis --config /etc/portcullis/config.toml check-config",
            "/bin/kill -QUIT $MAINPID",
            "/usr/local/bin/portcullis --config /etc/portcullis/config.toml serve --upgrade --daemon"
        ]
    );
    // Hardening beyond the defaults: a system-call allow-list, other processes invisible, no
    // core dump holding keys and secrets.
    for line in [
        "SystemCallFilter=@system-service",
        "ProtectProc=invisible",
        "LimitCORE=0",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line}");
    }
}
