//! Test harness: a migrated template database per run and a fresh copy per test (a
//! PostgreSQL database or a SQLite file, by the binary's `STORE`), an echo upstream that
//! records what reached it, and the real `portcullis` binary on free ports.

// Each binary (SQLite, PostgreSQL) uses part of the harness.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_postgres::NoTls;

/// The server the tests use; `DATABASE_URL` overrides it.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// `url` with its database name replaced.
pub fn url_for(db: &str) -> String {
    let base = admin_url();
    let (head, _) = base
        .rsplit_once('/')
        .expect("DATABASE_URL has a database name");
    format!("{head}/{db}")
}

fn template_name() -> String {
    format!("pt_tmpl_{}", std::process::id())
}

/// A connection to the server's admin database. Unreachable: the whole PostgreSQL binary is
/// skipped (see [`skip_without_postgres`]).
async fn admin_client() -> tokio_postgres::Client {
    match tokio_postgres::connect(&admin_url(), NoTls).await {
        Ok((client, conn)) => {
            tokio::spawn(conn);
            client
        }
        Err(e) => skip_without_postgres(&e.to_string()),
    }
}

/// PostgreSQL is not reachable: says how many tests of this binary did not run, and why,
/// and ends the binary with success — on a machine without PostgreSQL, `cargo test` passes on
/// the SQLite binary. Written past the test's output capture, so it always shows.
pub fn skip_without_postgres(why: &str) -> ! {
    use std::io::Write;
    // CI sets this: there, a PostgreSQL that does not answer is a failure, not a skip.
    if std::env::var_os("PORTCULLIS_REQUIRE_POSTGRES").is_some() {
        panic!(
            "PostgreSQL is required (PORTCULLIS_REQUIRE_POSTGRES) but not reachable at {}: {why}",
            admin_url()
        );
    }
    let listed = Command::new(std::env::current_exe().unwrap())
        .args(["--list", "--format", "terse"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.ends_with(": test"))
                .count()
        })
        .unwrap_or(0);
    let mut err = std::io::stderr();
    let _ = writeln!(
        err,
        "\nPostgreSQL is not reachable at {} ({why}):\n  {listed} PostgreSQL tests did not run; the \
         SQLite suite runs them on the embedded store.\n  To run them too, start PostgreSQL (pg_ctlcluster \
         --skip-systemctl-redirect $(ls /etc/postgresql) main start) or set DATABASE_URL.\n",
        admin_url()
    );
    let _ = err.flush();
    std::process::exit(0)
}

/// Runs SQL against the server's admin database.
pub async fn admin_exec(sql: &str) {
    admin_client()
        .await
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Connects to one test database.
pub async fn connect(db_url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(db_url, NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
}

/// Path of the built binary.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_portcullis")
}

/// Creates (once per run) the template database, migrated by the real `portcullis migrate`,
/// after dropping templates and test databases left by earlier runs.
fn ensure_template() -> &'static str {
    static TEMPLATE: OnceLock<String> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let name = template_name();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                drop_stale_databases().await;
                admin_exec(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
            });
            let dir = tempfile::tempdir().unwrap();
            let cfg = dir.path().join("config.toml");
            std::fs::write(&cfg, "").unwrap();
            let out = Command::new(bin())
                .args(["--config", cfg.to_str().unwrap(), "migrate"])
                .env("DATABASE_URL", url_for(&name))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "portcullis migrate failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            name
        })
        .join()
        .unwrap()
    })
}

async fn drop_stale_databases() {
    let client = admin_client().await;
    let rows = client
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'pt\\_%'",
            &[],
        )
        .await
        .unwrap();
    for row in rows {
        let name: String = row.get(0);
        let pid: Option<u32> = name.split('_').nth(2).and_then(|p| p.parse().ok());
        let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            let _ = client
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await;
        }
    }
}

/// Which store a test binary runs its tests on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The embedded store: a file per test.
    Sqlite,
    /// A database per test on the shared PostgreSQL server.
    Postgres,
}

/// Whether this binary runs on SQLite.
pub fn on_sqlite() -> bool {
    crate::STORE == Kind::Sqlite
}

/// A fresh database copied from the migrated template; returns its URL.
pub async fn fresh_db() -> String {
    match crate::STORE {
        Kind::Sqlite => fresh_sqlite(),
        Kind::Postgres => fresh_pg().await,
    }
}

/// A fresh PostgreSQL database copied from the migrated template; returns its URL.
pub async fn fresh_pg() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let template = ensure_template();
    let name = format!(
        "pt_t_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    admin_exec(&format!("CREATE DATABASE {name} TEMPLATE {template}")).await;
    url_for(&name)
}

/// This run's directory of SQLite files (stale ones of dead runs are removed first).
pub fn sqlite_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = std::env::temp_dir();
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                let pid = name
                    .strip_prefix("portcullis-it-")
                    .and_then(|p| p.parse::<u32>().ok());
                if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = tmp.join(format!("portcullis-it-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

/// A fresh SQLite file copied from a template migrated (once per run) by the real
/// `portcullis migrate`; returns its URL.
pub fn fresh_sqlite() -> String {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    static N: AtomicUsize = AtomicUsize::new(0);
    let template = TEMPLATE.get_or_init(|| {
        let path = sqlite_dir().join("template.db");
        let cfg = sqlite_dir().join("empty.toml");
        std::fs::write(&cfg, "").unwrap();
        let out = Command::new(bin())
            .args(["--config", cfg.to_str().unwrap(), "migrate"])
            .env("DATABASE_URL", format!("sqlite://{}", path.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "portcullis migrate failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        path
    });
    let path = sqlite_dir().join(format!("t_{}.db", N.fetch_add(1, Ordering::SeqCst)));
    std::fs::copy(template, &path).unwrap();
    format!("sqlite://{}", path.display())
}

/// The URL of a database that does not exist yet (`serve` creates it): a new PostgreSQL
/// database name, or a file in a directory not made yet.
pub fn absent_db_url() -> String {
    let name = format!(
        "pt_x_{}_{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    match crate::STORE {
        Kind::Postgres => url_for(&name),
        Kind::Sqlite => format!("sqlite://{}/{name}/portcullis.db", sqlite_dir().display()),
    }
}

/// The URL of a PostgreSQL database that does not exist yet.
pub fn absent_pg_url() -> String {
    url_for(&format!(
        "pt_x_{}_{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ))
}

/// Drops a database made by a test outside the template's copies.
pub async fn drop_db(url: &str) {
    match url.strip_prefix("sqlite://") {
        Some(path) => {
            let _ = std::fs::remove_dir_all(Path::new(path).parent().unwrap());
        }
        None => {
            let name = url.rsplit('/').next().unwrap();
            admin_exec(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
        }
    }
}

/// The file of a `sqlite://` URL.
pub fn sqlite_path(url: &str) -> PathBuf {
    PathBuf::from(url.strip_prefix("sqlite://").expect("a sqlite:// url"))
}

/// One value read by [`Db`], the same whichever store it came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Null,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

impl Val {
    pub fn int(&self) -> i64 {
        match self {
            Val::Int(i) => *i,
            other => panic!("not an integer: {other:?}"),
        }
    }
    pub fn bool(&self) -> bool {
        self.int() != 0
    }
    pub fn text(&self) -> String {
        match self {
            Val::Text(t) => t.clone(),
            other => panic!("not text: {other:?}"),
        }
    }
    pub fn opt_text(&self) -> Option<String> {
        match self {
            Val::Null => None,
            other => Some(other.text()),
        }
    }
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Val::Bytes(b) => b.clone(),
            other => panic!("not bytes: {other:?}"),
        }
    }
    pub fn is_null(&self) -> bool {
        *self == Val::Null
    }
}

/// A parameter for [`Db`]: uuids are `uuid` on PostgreSQL and 16-byte blobs on SQLite.
#[derive(Debug, Clone)]
pub enum Arg {
    Uuid(uuid::Uuid),
    Bytes(Vec<u8>),
    Text(String),
    Int(i64),
}

/// Direct access to a test's database, for what the API does not show (hashes at rest, row
/// counts, a revocation behind the gateway's back). SQL is written once where both stores
/// agree; `$1…` parameters work on both. Booleans come back as integers.
pub enum Db {
    Pg(tokio_postgres::Client),
    Sqlite(PathBuf),
}

impl Db {
    pub async fn open(url: &str) -> Db {
        if url.starts_with("sqlite://") {
            Db::Sqlite(sqlite_path(url))
        } else {
            Db::Pg(connect(url).await)
        }
    }

    /// Every row of a query.
    pub async fn rows(&self, sql: &str, args: &[Arg]) -> Vec<Vec<Val>> {
        match self {
            Db::Pg(c) => {
                let params = pg_params(args);
                let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                    .iter()
                    .map(|p| p.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
                    .collect();
                let rows = c
                    .query(sql, &refs)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                rows.iter().map(pg_row).collect()
            }
            Db::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path).unwrap();
                conn.busy_timeout(Duration::from_secs(10)).unwrap();
                let mut stmt = conn.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
                let n = stmt.column_count();
                let params = sqlite_params(args);
                stmt.query_map(rusqlite::params_from_iter(params), |r| {
                    Ok((0..n)
                        .map(|i| match r.get_ref(i).unwrap() {
                            rusqlite::types::ValueRef::Null => Val::Null,
                            rusqlite::types::ValueRef::Integer(i) => Val::Int(i),
                            rusqlite::types::ValueRef::Real(f) => Val::Int(f as i64),
                            rusqlite::types::ValueRef::Text(t) => {
                                Val::Text(String::from_utf8_lossy(t).to_string())
                            }
                            rusqlite::types::ValueRef::Blob(b) => Val::Bytes(b.to_vec()),
                        })
                        .collect())
                })
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .collect::<Result<_, _>>()
                .unwrap()
            }
        }
    }

    /// The single value of a one-row, one-column query.
    pub async fn one(&self, sql: &str, args: &[Arg]) -> Val {
        let rows = self.rows(sql, args).await;
        assert_eq!(rows.len(), 1, "{sql}: expected one row, got {}", rows.len());
        rows[0][0].clone()
    }

    /// Runs a statement; the database's message when it refuses it.
    pub async fn try_exec(&self, sql: &str, args: &[Arg]) -> Result<(), String> {
        match self {
            Db::Pg(c) => {
                let params = pg_params(args);
                let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                    .iter()
                    .map(|p| p.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
                    .collect();
                c.execute(sql, &refs)
                    .await
                    .map(drop)
                    .map_err(|e| e.as_db_error().map_or(e.to_string(), |d| d.to_string()))
            }
            Db::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path).unwrap();
                conn.execute(sql, rusqlite::params_from_iter(sqlite_params(args)))
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Runs a statement; returns the rows it changed.
    pub async fn exec(&self, sql: &str, args: &[Arg]) -> u64 {
        match self {
            Db::Pg(_) => {
                // Through `rows`' parameter handling: the statement's rows, counted.
                let counted = format!("WITH x AS ({sql} RETURNING 1) SELECT count(*) FROM x");
                self.one(&counted, args).await.int() as u64
            }
            Db::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path).unwrap();
                conn.busy_timeout(Duration::from_secs(10)).unwrap();
                conn.execute_batch("PRAGMA foreign_keys = ON").unwrap();
                let params = sqlite_params(args);
                conn.execute(sql, rusqlite::params_from_iter(params))
                    .unwrap_or_else(|e| panic!("{sql}: {e}")) as u64
            }
        }
    }

    /// The current time as each store writes it (`now()`, or microseconds on SQLite).
    pub fn now(&self) -> &'static str {
        match self {
            Db::Pg(_) => "now()",
            Db::Sqlite(_) => "CAST(unixepoch('subsec') * 1000000 AS INTEGER)",
        }
    }
}

fn pg_params(args: &[Arg]) -> Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> {
    args.iter()
        .map(|a| -> Box<dyn tokio_postgres::types::ToSql + Sync + Send> {
            match a {
                Arg::Uuid(u) => Box::new(*u),
                Arg::Bytes(b) => Box::new(b.clone()),
                Arg::Text(t) => Box::new(t.clone()),
                Arg::Int(i) => Box::new(*i),
            }
        })
        .collect()
}

fn sqlite_params(args: &[Arg]) -> Vec<rusqlite::types::Value> {
    args.iter()
        .map(|a| match a {
            Arg::Uuid(u) => rusqlite::types::Value::Blob(u.as_bytes().to_vec()),
            Arg::Bytes(b) => rusqlite::types::Value::Blob(b.clone()),
            Arg::Text(t) => rusqlite::types::Value::Text(t.clone()),
            Arg::Int(i) => rusqlite::types::Value::Integer(*i),
        })
        .collect()
}

fn pg_row(r: &tokio_postgres::Row) -> Vec<Val> {
    use tokio_postgres::types::Type;
    (0..r.len())
        .map(|i| {
            let ty = r.columns()[i].type_().clone();
            let v = if ty == Type::INT8 {
                r.get::<_, Option<i64>>(i).map(Val::Int)
            } else if ty == Type::INT4 {
                r.get::<_, Option<i32>>(i).map(|v| Val::Int(v.into()))
            } else if ty == Type::INT2 {
                r.get::<_, Option<i16>>(i).map(|v| Val::Int(v.into()))
            } else if ty == Type::BOOL {
                r.get::<_, Option<bool>>(i).map(|v| Val::Int(v.into()))
            } else if ty == Type::BYTEA {
                r.get::<_, Option<Vec<u8>>>(i).map(Val::Bytes)
            } else if ty == Type::UUID {
                r.get::<_, Option<uuid::Uuid>>(i)
                    .map(|u| Val::Bytes(u.as_bytes().to_vec()))
            } else if ty == Type::TIMESTAMPTZ {
                r.get::<_, Option<chrono::DateTime<chrono::Utc>>>(i)
                    .map(|t| Val::Int(t.timestamp_micros()))
            } else if ty == Type::INET {
                r.get::<_, Option<std::net::IpAddr>>(i)
                    .map(|ip| Val::Text(ip.to_string()))
            } else if ty == Type::JSONB || ty == Type::JSON {
                r.get::<_, Option<serde_json::Value>>(i)
                    .map(|j| Val::Text(j.to_string()))
            } else {
                r.get::<_, Option<String>>(i).map(Val::Text)
            };
            v.unwrap_or(Val::Null)
        })
        .collect()
}

/// A request the echo upstream received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Seen {
    /// All values of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// An HTTP upstream on 127.0.0.1 that records every request. `…/slow…` waits 3 s (past the
/// test read timeout), `…/wait…` 700 ms;
/// everything else answers 200 with a small JSON body.
/// The `Set-Cookie` the echo upstream answers on a path containing `/set-cookie`: a secret
/// the gateway's log must never show.
pub const ECHO_SET_COOKIE: &str = "echo_session=upstream-set-cookie-secret-5b1e; HttpOnly";

#[derive(Clone)]
pub struct Echo {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Echo {
    pub async fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let record = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                let record = record.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let record = record.clone();
                        async move {
                            let path = req
                                .uri()
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default();
                            let seen = Seen {
                                method: req.method().to_string(),
                                path: path.clone(),
                                headers: req
                                    .headers()
                                    .iter()
                                    .map(|(k, v)| {
                                        (
                                            k.to_string(),
                                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                        )
                                    })
                                    .collect(),
                            };
                            let _ = req.into_body().collect().await;
                            if path != "/healthz" {
                                record.lock().unwrap().push(seen);
                            }
                            if path.contains("/slow") {
                                tokio::time::sleep(Duration::from_secs(3)).await;
                            } else if path.contains("/wait") {
                                tokio::time::sleep(Duration::from_millis(700)).await;
                            }
                            let mut response = Response::new(Full::new(Bytes::from(
                                serde_json::json!({ "upstream": "echo", "path": path }).to_string(),
                            )));
                            if path.contains("/set-cookie") {
                                response.headers_mut().insert(
                                    "set-cookie",
                                    hyper::header::HeaderValue::from_static(ECHO_SET_COOKIE),
                                );
                            }
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Echo { addr, seen }
    }

    /// Everything received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Number of requests received.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The last request received.
    pub fn last(&self) -> Seen {
        self.seen()
            .last()
            .cloned()
            .expect("the upstream received nothing")
    }
}

/// The ports `free_port` hands out: `(first, count)`, below the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`), so that no outgoing connection — to PostgreSQL,
/// to an upstream — can be given one between the check and the gateway's own bind. Above the
/// range when it leaves too little room below.
fn port_pool() -> (u16, u16) {
    const FLOOR: u32 = 10_000;
    const MIN_POOL: u32 = 2_000;
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .unwrap_or_else(|_| "32768 60999".to_string());
    let mut bounds = text
        .split_whitespace()
        .filter_map(|n| n.parse::<u32>().ok());
    let (low, high) = (
        bounds.next().unwrap_or(32768),
        bounds.next().unwrap_or(60999),
    );
    if low >= FLOOR + MIN_POOL {
        (FLOOR as u16, (low - FLOOR) as u16)
    } else if high + MIN_POOL <= 65535 {
        ((high + 1) as u16, (65535 - high) as u16)
    } else {
        panic!("no room outside the ephemeral port range {low}-{high} for test ports")
    }
}

/// A TCP port on 127.0.0.1 for a process that binds its own (the gateway binary): never
/// handed out twice by this process (one counter walks the pool once, from an offset derived
/// from the pid so concurrent test processes start far apart), outside the ephemeral range,
/// and free when handed out (checked by binding it). In-process servers bind port 0 and keep
/// their listener instead.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static POOL: OnceLock<(u16, u16)> = OnceLock::new();
    let (first, count) = *POOL.get_or_init(port_pool);
    let offset = std::process::id().wrapping_mul(7919) % u32::from(count);
    loop {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        assert!(
            n < u32::from(count),
            "the test process used up its {count} ports"
        );
        let port = first + ((offset + n) % u32::from(count)) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// How to start a gateway.
pub struct Options {
    /// Upstream address for the `api` upstream.
    pub upstream: String,
    /// Extra TOML appended to the generated config (routes, limits…).
    pub extra: String,
    /// Replaces the default `[rate_limit]` table.
    pub rate_limit: String,
    /// `[tokens]` table body.
    pub tokens: String,
    /// `[revocation]` table body.
    pub revocation: String,
    /// Default routes (`/api/admin/`, `/api/`, `/public/`, `/opt/`).
    pub default_routes: bool,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Extra keys for the `[server]` table (e.g. `trusted_proxies`).
    pub server: String,
    /// The plain listener's port, when the test must know it before the start.
    pub port: Option<u16>,
    /// A database URL to use instead of a fresh copy of the template on the shared server:
    /// a [`PrivatePg`]'s, for tests that stop or starve the database (the gateway's
    /// `auto_migrate` creates and migrates it).
    pub database: Option<String>,
    /// `database.pool_size`.
    pub pool_size: usize,
    /// Extra keys for the `[database]` table (e.g. `acquire_timeout_ms`).
    pub database_extra: String,
}

impl Options {
    pub fn new(upstream: SocketAddr) -> Options {
        Options {
            upstream: upstream.to_string(),
            extra: String::new(),
            rate_limit: "login_per_minute_per_ip = 1000\nlogin_per_minute_per_account = 1000\nregister_per_minute_per_ip = 1000\n".into(),
            tokens: String::new(),
            revocation: "cache_ttl_secs = 30\n".into(),
            default_routes: true,
            env: Vec::new(),
            server: String::new(),
            port: None,
            database: None,
            pool_size: 8,
            database_extra: String::new(),
        }
    }
}

/// A running `portcullis serve` on free ports.
pub struct Gateway {
    child: Option<Child>,
    pub port: u16,
    pub admin_port: u16,
    pub db_url: String,
    pub dir: tempfile::TempDir,
    /// The keys directory (its private keys sign the gateway's tokens).
    pub keys_dir: PathBuf,
    pub config_path: PathBuf,
    pub http: reqwest::Client,
    /// Extra environment, kept for `restart`.
    env: Vec<(String, String)>,
}

/// Starts `portcullis serve` with `config`, run in `dir`, appending to `dir/gateway.log`.
fn spawn_serve(dir: &Path, config: &Path, env: &[(String, String)]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("gateway.log"))
        .unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(["--config", config.to_str().unwrap(), "serve"])
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "info")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("start portcullis")
}

/// The config file a test gateway runs with.
pub fn config_text(
    opts: &Options,
    port: u16,
    admin_port: u16,
    db_url: &str,
    keys_dir: &Path,
) -> String {
    let routes = if opts.default_routes {
        r#"
[[route]]
prefix = "/api/admin/"
upstream = "api"
roles = ["admin"]

[[route]]
prefix = "/api/"
upstream = "api"

[[route]]
prefix = "/public/"
upstream = "api"
auth = "none"

[[route]]
prefix = "/opt/"
upstream = "api"
auth = "optional"
"#
    } else {
        ""
    };
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin_port}"
threads = 2
shutdown_grace_secs = 1
upgrade_sock = "upgrade.sock"
{server}

[database]
url = "{db_url}"
pool_size = {pool_size}
{database_extra}

[tokens]
keys_dir = "{keys}"
{tokens}

[passwords]
argon2_memory_kib = 256
argon2_iterations = 1

[revocation]
{revocation}

[rate_limit]
{rate_limit}

[[upstream]]
name = "api"
addrs = ["{upstream}"]
connect_timeout_ms = 500
read_timeout_ms = 1000
{routes}
{extra}
"#,
        keys = keys_dir.display(),
        server = opts.server,
        tokens = opts.tokens,
        revocation = opts.revocation,
        rate_limit = opts.rate_limit,
        upstream = opts.upstream,
        extra = opts.extra,
        pool_size = opts.pool_size,
        database_extra = opts.database_extra,
    )
}

impl Gateway {
    /// Starts a gateway on a fresh database, or on `opts.database` when set.
    pub async fn start(opts: Options) -> Gateway {
        let db = match &opts.database {
            Some(url) => url.clone(),
            None => fresh_db().await,
        };
        Gateway::start_on(opts, db).await
    }

    /// Starts a gateway on an existing database (several instances share one).
    pub async fn start_on(opts: Options, db_url: String) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        Gateway::start_with_keys(opts, db_url, dir, keys).await
    }

    /// Starts a gateway with a given keys directory (instances sharing keys).
    pub async fn start_with_keys(
        opts: Options,
        db_url: String,
        dir: tempfile::TempDir,
        keys: PathBuf,
    ) -> Gateway {
        let port = opts.port.unwrap_or_else(free_port);
        let admin_port = free_port();
        let config_path = dir.path().join("config.toml");
        std::fs::write(
            &config_path,
            config_text(&opts, port, admin_port, &db_url, &keys),
        )
        .unwrap();
        let child = spawn_serve(dir.path(), &config_path, &opts.env);
        let mut gw = Gateway {
            child: Some(child),
            env: opts.env,
            port,
            admin_port,
            db_url,
            dir,
            keys_dir: keys,
            config_path,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        };
        gw.wait_ready().await;
        gw
    }

    /// The gateway's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    /// Polls `/readyz` until it answers 200. A gateway that exited (say its port was taken
    /// by another process after the check) fails here, rather than letting a stranger answer.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!(
                    "gateway exited ({status}) before it was ready; log:\n{}",
                    self.log()
                );
            }
            // The admin and proxy listeners belong to different Pingora services, bound on
            // their own runtimes: /readyz answering does not mean the proxy port accepts yet.
            if let Ok(r) = self.http.get(self.admin("/readyz")).send().await
                && r.status() == 200
                && tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                    .await
                    .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("gateway not ready after 30 s; log:\n{}", self.log());
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn admin(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Kills the process with SIGKILL (a crash: nothing drains, connections are cut) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Starts the process again on the same config and ports (after `kill`) and waits until it
    /// is ready.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a running gateway");
        self.child = Some(spawn_serve(self.dir.path(), &self.config_path, &self.env));
        self.wait_ready().await;
    }

    /// Sends a signal by name (`HUP`, `TERM`).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Replaces the running process the way an operator upgrades the binary: a new process
    /// started with `serve --upgrade` takes over the listening sockets, the old one gets SIGQUIT,
    /// hands them over and drains. Returns the old process's exit code.
    pub fn upgrade(&mut self) -> Option<i32> {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("gateway.log"))
            .unwrap();
        let new = Command::new(bin())
            .args([
                "--config",
                self.config_path.to_str().unwrap(),
                "serve",
                "--upgrade",
            ])
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "info")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the new portcullis");
        // The new process listens on the upgrade socket before the old one may hand over.
        let sock = self.dir.path().join("upgrade.sock");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sock.exists() {
            assert!(
                Instant::now() < deadline,
                "no upgrade socket; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.signal("QUIT");
        let code = self.wait_exit(Duration::from_secs(30));
        self.child = Some(new);
        code
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut().unwrap();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Presents the refresh token of `pair` (a token pair as /auth/login answers it).
    pub async fn refresh(&self, pair: &Value) -> reqwest::Response {
        let body = serde_json::json!({ "refresh_token": pair["refresh_token"] });
        self.post("/auth/refresh", body).await
    }

    /// POSTs JSON to the gateway.
    pub async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// GET with an optional bearer token.
    pub async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = self.http.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap()
    }

    /// POSTs `{email, password}` to `path`, checks the status and returns the body.
    async fn credentials(&self, path: &str, email: &str, password: &str, status: u16) -> Value {
        let body = serde_json::json!({"email": email, "password": password});
        let r = self.post(path, body).await;
        assert_eq!(r.status(), status, "{path} {email}");
        r.json().await.unwrap()
    }

    /// Registers an account and checks the 201.
    pub async fn register(&self, email: &str, password: &str) -> Value {
        self.credentials("/auth/register", email, password, 201)
            .await
    }

    /// Logs in and returns the TokenPair.
    pub async fn login(&self, email: &str, password: &str) -> Value {
        self.credentials("/auth/login", email, password, 200).await
    }

    /// Registers and logs in a fresh user; returns the TokenPair.
    pub async fn user(&self, email: &str) -> Value {
        self.register(email, "password-123").await;
        self.login(email, "password-123").await
    }

    /// Creates an admin with the real CLI and logs in.
    pub async fn admin_user(&self, email: &str) -> Value {
        let out = self.cli(
            &[
                "user",
                "create",
                "--email",
                email,
                "--role",
                "admin",
                "--password-stdin",
            ],
            "admin-password\n",
        );
        assert!(
            out.status.success(),
            "user create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.login(email, "admin-password").await
    }

    /// Runs a CLI subcommand against this gateway's config, feeding `stdin`.
    pub fn cli(&self, args: &[&str], stdin: &str) -> std::process::Output {
        run_cli(&self.config_path, args, stdin, &[])
    }

    /// The gateway's metrics as `series -> value`.
    pub async fn metrics(&self) -> HashMap<String, f64> {
        let text = self
            .http
            .get(self.admin("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| l.rsplit_once(' '))
            .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
            .collect()
    }

    /// Waits until no client connection is open on the proxy listeners. The readiness probe
    /// opened one; the gateway counts it toward `server.max_connections` until it has seen
    /// it close, which a loaded machine can delay past the test's first connections.
    pub async fn wait_no_connections(&self) {
        let idle = eventually(Duration::from_secs(5), || async {
            self.metrics()
                .await
                .get("portcullis_client_connections_open")
                == Some(&0.0)
        })
        .await;
        assert!(
            idle.is_some(),
            "a client connection is still counted as open"
        );
    }
}

/// Signs tokens with a gateway's own Ed25519 key, read from its keys directory, so that a
/// forged token is wrong only where a test makes it wrong and never in its signature.
pub struct Signer {
    pub kid: String,
    key: aws_lc_rs::signature::Ed25519KeyPair,
}

impl Signer {
    /// The signing key of `gw` (whose keys directory must hold exactly one key).
    pub fn of(gw: &Gateway) -> Signer {
        let files: Vec<_> = std::fs::read_dir(&gw.keys_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "pem"))
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        let kid = files[0].file_stem().unwrap().to_str().unwrap().to_string();
        let pem = pem::parse(std::fs::read(&files[0]).unwrap()).unwrap();
        let key = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(pem.contents()).unwrap();
        Signer { kid, key }
    }

    /// The header the gateway itself puts on its access tokens.
    pub fn header(&self) -> Value {
        serde_json::json!({"alg": "EdDSA", "typ": "at+jwt", "kid": self.kid})
    }

    /// `header.claims.signature`, base64url without padding.
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        use base64::Engine as _;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = self.key.sign(input.as_bytes());
        format!("{input}.{}", B64.encode(sig.as_ref()))
    }
}

/// The header fields through which a token can offer its own verification key (docs/api.md, "Access token":
/// `jwk`, `jku`, `x5u`, and `x5c`), as `(what, field, value)`. The `jwk` offered is the first
/// key of `jwks` (the gateway's own public key), so what gets a token refused can only be that
/// it offers a key, never which key.
pub fn embedded_key_offers(jwks: &Value) -> Vec<(&'static str, &'static str, Value)> {
    assert!(jwks["keys"][0].is_object(), "no key in {jwks}");
    vec![
        ("embedded jwk", "jwk", jwks["keys"][0].clone()),
        ("jku", "jku", Value::from("https://evil.example/jwks.json")),
        ("x5u", "x5u", Value::from("https://evil.example/cert.pem")),
        (
            "x5c",
            "x5c",
            serde_json::json!(["MIIBLjCB4aADAgECAhQ7x5cEvilCertificateChainAAAAAAAAAA=="]),
        ),
    ]
}

/// Runs the CLI with a config file, feeding `stdin`.
pub fn run_cli(
    config: &Path,
    args: &[&str],
    stdin: &str,
    env: &[(&str, &str)],
) -> std::process::Output {
    use std::io::Write;
    let mut cmd = Command::new(bin());
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env_remove("DATABASE_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some(dir) = config.parent().filter(|d| d.exists()) {
        cmd.current_dir(dir);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `check` every 20 ms until it holds or `timeout` passes; returns the time it took.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Sends raw bytes to `port` and returns the raw response (for framing tests).
pub async fn raw_request(port: u16, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// A TCP forwarder in front of PostgreSQL that a test can take down and bring back, to
/// simulate the database becoming unreachable without touching the shared server.
pub struct DbProxy {
    pub port: u16,
    up: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl DbProxy {
    /// Forwards 127.0.0.1:<port> to the PostgreSQL of `admin_url()`.
    pub async fn start() -> DbProxy {
        let target = {
            let url = admin_url();
            let after_at = url
                .rsplit_once('@')
                .map(|(_, h)| h.to_string())
                .unwrap_or(url);
            after_at.split('/').next().unwrap().to_string()
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (up2, conns2) = (up.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    break;
                };
                if !up2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns2.lock().unwrap().push(task.abort_handle());
            }
        });
        DbProxy { port, up, conns }
    }

    /// URL of database `db` through this proxy.
    pub fn url(&self, db_url: &str) -> String {
        let db = db_url.rsplit_once('/').unwrap().1;
        let base = admin_url();
        let (scheme_user, _) = base.rsplit_once('@').unwrap();
        format!("{scheme_user}@127.0.0.1:{}/{db}", self.port)
    }

    /// Cuts every connection and refuses new ones.
    pub fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// Refuses new connections but keeps the open ones relaying (a database at its
    /// connection limit, as far as a new client can tell).
    pub fn refuse_new(&self) {
        self.up.store(false, Ordering::SeqCst);
    }

    /// Accepts connections again.
    pub fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// Two gateways on one fresh database and one keys directory (tokens of one verify on the
/// other); the returned directory holds the keys.
pub async fn two_gateways(opts: impl Fn() -> Options) -> (Gateway, Gateway, tempfile::TempDir) {
    let keys = tempfile::tempdir().unwrap();
    let db = fresh_db().await;
    let mut gateways = Vec::new();
    for db in [db.clone(), db] {
        gateways.push(
            Gateway::start_with_keys(
                opts(),
                db,
                tempfile::tempdir().unwrap(),
                keys.path().to_path_buf(),
            )
            .await,
        );
    }
    let b = gateways.pop().unwrap();
    let a = gateways.pop().unwrap();
    (a, b, keys)
}

/// The newest installed PostgreSQL's `bin/` (Debian layout), or `PG_BIN`.
fn pg_bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return PathBuf::from(dir);
    }
    let Ok(installed) = std::fs::read_dir("/usr/lib/postgresql") else {
        skip_without_postgres("no server binaries in /usr/lib/postgresql; PG_BIN names them")
    };
    let mut versions: Vec<u32> = installed
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort_unstable();
    let v = versions
        .last()
        .expect("a version under /usr/lib/postgresql");
    PathBuf::from(format!("/usr/lib/postgresql/{v}/bin"))
}

/// PostgreSQL refuses to run as root: as root, its tools run as the `postgres` OS user.
fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A command running the PostgreSQL tool `tool` as a user PostgreSQL accepts.
fn pg_command(tool: &str) -> Command {
    let path = pg_bin_dir().join(tool);
    if running_as_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(path);
        cmd
    } else {
        Command::new(path)
    }
}

/// Runs `cmd` and fails the test with its output when it fails.
fn run_ok(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes `path` (recursively) belong to the user PostgreSQL runs as.
fn give_to_postgres(path: &Path) {
    if running_as_root() {
        run_ok(
            Command::new("chown").args(["-R", "postgres:"]).arg(path),
            "chown",
        );
    }
}

/// An initdb'd data directory (trust auth, superuser `postgres`), made once and kept under the
/// target directory, so that each private instance costs a copy rather than an initdb.
fn pg_template_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let bin = pg_bin_dir();
        let version = bin
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let target =
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("pg-template-{version}"));
        if target.join("PG_VERSION").exists() {
            return target;
        }
        let work = tempfile::tempdir().unwrap();
        give_to_postgres(work.path());
        let data = work.path().join("data");
        run_ok(
            pg_command("initdb").arg("-D").arg(&data).args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ]),
            "initdb",
        );
        // Copied in under a private name, then renamed: concurrent test processes never see a
        // half-written template (the loser of the rename drops its copy).
        let staging = target.with_extension(format!("tmp{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        run_ok(
            Command::new("cp").arg("-a").arg(&data).arg(&staging),
            "copy the PostgreSQL template",
        );
        if std::fs::rename(&staging, &target).is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        assert!(
            target.join("PG_VERSION").exists(),
            "no template at {target:?}"
        );
        target
    })
}

/// A PostgreSQL server of the test's own — data directory, port and unix-socket directory in a
/// temp dir — that the test may stop, crash and restart without disturbing the shared server
/// other tests use. Stopped (immediately) and deleted on drop.
pub struct PrivatePg {
    /// TCP port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
}

impl PrivatePg {
    /// Copies the template data directory, configures it for speed over durability (nothing
    /// here must survive a machine crash; a process crash keeps every commit, since WAL is
    /// still written synchronously to the OS) and starts it.
    pub fn start() -> PrivatePg {
        PrivatePg::start_with_tls(None)
    }

    /// [`PrivatePg::start`], and with `Some((cert_pem, key_pem))` TLS on and only TLS
    /// accepted over TCP (`hostssl` lines only): a managed PostgreSQL's setup.
    pub fn start_with_tls(tls: Option<(&str, &str)>) -> PrivatePg {
        let template = pg_template_dir();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        run_ok(
            Command::new("cp").arg("-a").arg(template).arg(&data),
            "copy the PostgreSQL template",
        );
        let sock = dir.path().join("sock");
        std::fs::create_dir(&sock).unwrap();
        let port = free_port();
        use std::io::Write as _;
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        write!(
            conf,
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\nfull_page_writes = off\nshared_buffers = 16MB\nmax_connections = 60\n\
             log_min_messages = warning\n",
            sock.display()
        )
        .unwrap();
        if let Some((cert, key)) = tls {
            std::fs::write(data.join("server.crt"), cert).unwrap();
            std::fs::write(data.join("server.key"), key).unwrap();
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(
                data.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .unwrap();
            write!(
                conf,
                "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"
            )
            .unwrap();
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
            )
            .unwrap();
        }
        drop(conf);
        give_to_postgres(dir.path());
        let pg = PrivatePg { port, dir };
        pg.up();
        pg
    }

    fn pg_ctl(&self, args: &[&str]) -> Command {
        let mut cmd = pg_command("pg_ctl");
        cmd.arg("-D").arg(self.dir.path().join("data")).args(args);
        cmd
    }

    /// Starts the server (after `crash`/`stop`), waiting until it accepts connections.
    pub fn up(&self) {
        run_ok(
            self.pg_ctl(&["-w", "-t", "60", "-l"])
                .arg(self.dir.path().join("postgres.log"))
                .arg("start"),
            "pg_ctl start",
        );
    }

    /// Kills the server the way a crash does (`-m immediate`): connections cut, no checkpoint;
    /// the next start runs crash recovery.
    pub fn crash(&self) {
        run_ok(
            &mut self.pg_ctl(&["-w", "-m", "immediate", "stop"]),
            "pg_ctl stop -m immediate",
        );
    }

    /// Stops the server the way an operator does (`-m fast`): sessions terminated, a clean
    /// shutdown checkpoint.
    pub fn stop(&self) {
        run_ok(
            &mut self.pg_ctl(&["-w", "-m", "fast", "stop"]),
            "pg_ctl stop -m fast",
        );
    }

    /// URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs SQL in the `postgres` database.
    pub async fn exec(&self, sql: &str) {
        connect(&self.url("postgres"))
            .await
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// The server's log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = self
            .pg_ctl(&["-w", "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Clients sending GETs in a loop until [`Load::finish`]: what a restart or upgrade must not
/// disturb. Each of `urls` gets its own client and connection.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<(u32, Vec<String>)>>,
}

impl Load {
    /// Starts one looping client per URL; anything but a 200 is a failure.
    pub fn start(urls: Vec<String>) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let workers = urls
            .into_iter()
            .map(|url| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    let (mut ok, mut failed) = (0u32, Vec::new());
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        match client.get(&url).send().await {
                            Ok(r) if r.status() == 200 => ok += 1,
                            Ok(r) => failed.push(format!("status {}", r.status())),
                            Err(e) => failed.push(format!("{e:?}")),
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();
        Load { stop, workers }
    }

    /// Stops the clients; returns the requests served and the failures.
    pub async fn finish(self) -> (u32, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut ok, mut failed) = (0, Vec::new());
        for w in self.workers {
            let (o, f) = w.await.unwrap();
            ok += o;
            failed.extend(f);
        }
        (ok, failed)
    }
}
