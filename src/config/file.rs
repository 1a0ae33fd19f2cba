//! The file format. Every key has the default documented in the README's configuration reference; unknown keys are
//! errors so a typo never silently falls back to a default.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The whole validated configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listeners and process settings.
    pub server: Server,
    /// PostgreSQL connection.
    pub database: Database,
    /// Access/refresh token settings.
    pub tokens: Tokens,
    /// Password hashing policy.
    pub passwords: Passwords,
    /// Revocation cache behaviour.
    pub revocation: Revocation,
    /// Abuse limits on /auth.
    pub rate_limit: RateLimit,
    /// Names of the identity headers added for upstreams.
    pub identity_headers: IdentityHeaders,
    /// Upstream pools, referenced by routes.
    #[serde(rename = "upstream")]
    pub upstreams: Vec<Upstream>,
    /// Route table; a request matching none is answered 404.
    #[serde(rename = "route")]
    pub routes: Vec<Route>,
    /// External OpenID Connect providers.
    #[serde(rename = "oidc")]
    pub oidc: Vec<Oidc>,
    /// Log format, level and access log.
    pub log: Log,
    /// Audit trail retention.
    pub audit: Audit,
    /// Automatic certificates for the TLS listener.
    pub acme: Acme,
    /// Sign-in page and cookie sessions for browsers.
    pub browser: Browser,
    /// `/auth/verify` and `/auth/forward-auth` for a proxy in front.
    pub forward_auth: ForwardAuth,
    /// The data key ring sealing secrets stored in the database.
    pub secrets: Secrets,
}

/// `[secrets]`: where the data key ring is (one base64 32-byte key per line; the first seals,
/// every one opens). Neither set: `<keys_dir>/secrets.key`, generated on first start.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Secrets {
    /// The key ring file (mode 0600); empty = `<keys_dir>/secrets.key`.
    pub key_file: String,
    /// The name of an environment variable holding the ring instead (wins over `key_file`).
    pub key_env: String,
}

/// `[browser]`: a sign-in page and cookie sessions, so pages people open in a browser can sit
/// behind the gateway; absent or `enabled = false`, only bearer tokens count.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Browser {
    /// Whether the cookies, the redirect to sign in and the pages are on.
    pub enabled: bool,
    /// The cookies are `<prefix>-at` (access JWT) and `<prefix>-rt` (refresh token). The
    /// default `__Host-` prefix makes browsers insist on Secure, `Path=/` and no Domain.
    pub cookie_prefix: String,
    /// Hosts besides the request's own that a sign-in's `rd` may send the browser to.
    pub allowed_redirect_hosts: Vec<String>,
    /// Origins (`scheme://host[:port]`) besides the request's own whose cookie-authenticated
    /// writes are accepted.
    pub trusted_origins: Vec<String>,
    /// A sign-up page beside the sign-in page.
    pub registration: bool,
    /// The sign-in page's heading and title.
    pub title: String,
}

impl Default for Browser {
    fn default() -> Self {
        Browser {
            enabled: false,
            cookie_prefix: "__Host-portcullis".into(),
            allowed_redirect_hosts: Vec::new(),
            trusted_origins: Vec::new(),
            registration: false,
            title: "Sign in".into(),
        }
    }
}

/// `[forward_auth]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardAuth {
    /// Peers allowed to say, in `X-Forwarded-*` / `X-Original-*`, what the original request
    /// was; anyone else asking is refused (403).
    #[serde(deserialize_with = "cidrs")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for ForwardAuth {
    fn default() -> Self {
        ForwardAuth {
            trusted_proxies: ["127.0.0.1/32", "::1/128"]
                .iter()
                .filter_map(|c| c.parse().ok())
                .collect(),
        }
    }
}

/// `[acme]`: certificates from an ACME CA (RFC 8555), shared by every instance through
/// PostgreSQL.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Acme {
    /// Off unless asked for.
    pub enabled: bool,
    /// The CA's directory.
    pub directory_url: String,
    /// Account contacts (`mailto:` URLs).
    pub contact: Vec<String>,
    /// One certificate for these names.
    pub domains: Vec<String>,
    /// Challenge type; `http-01` is answered on `server.listen`.
    pub challenge: String,
    /// Extra root (PEM file) trusted for `directory_url`; empty = the system roots.
    pub ca_cert: String,
    /// Renew when the certificate has fewer days left than this.
    pub renew_before_days: u64,
}

impl Default for Acme {
    fn default() -> Self {
        Acme {
            enabled: false,
            directory_url: "https://acme-v02.api.letsencrypt.org/directory".into(),
            contact: Vec::new(),
            domains: Vec::new(),
            challenge: "http-01".into(),
            ca_cert: String::new(),
            renew_before_days: 30,
        }
    }
}

/// `[server]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// Proxy and /auth listener.
    pub listen: SocketAddr,
    /// /metrics, /healthz, /readyz listener (never proxied).
    pub admin_listen: SocketAddr,
    /// Worker threads of the proxy service.
    pub threads: usize,
    /// Let idle worker threads steal queued tasks from busy ones. Off, each connection's work
    /// stays on the thread that accepted it: ~8 % more requests/s at saturation here, but a
    /// ~15-20 % worse p99 (README, Benchmarks), so on by default.
    pub work_stealing: bool,
    /// CIDRs (or single addresses) whose `X-Forwarded-For` is believed.
    #[serde(deserialize_with = "cidrs")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// How long SIGTERM lets in-flight requests run before exiting.
    pub shutdown_grace_secs: u64,
    /// Let `;` path parameters through (refused by default: Java backends strip them).
    pub allow_path_parameters: bool,
    /// Unix socket through which `serve --upgrade` takes over the listening sockets of the
    /// running instance; old and new process must agree on it. Its directory must be private
    /// (whoever listens there receives the listening sockets): the default lies beside the
    /// default `keys_dir`, never in a shared directory such as /tmp.
    pub upgrade_sock: String,
    /// File the serving process writes its pid to (replacing an older one) and removes on exit
    /// if it still holds its pid: how a supervisor (systemd's `PIDFile=`) finds the daemon of
    /// `serve --daemon`, which needs it. Absent = no pid file.
    pub pid_file: Option<String>,
    /// Largest request head (target plus every header name and value) accepted; larger → 431.
    pub max_header_bytes: usize,
    /// Longest a client may take to send a whole request head, from the connection's start
    /// (first request) or from the first byte of the next one (keep-alive): a slowloris
    /// client trickling its head is cut off after this many seconds.
    pub header_timeout_secs: u64,
    /// Longest a client may leave a request body without sending anything (between two
    /// reads, like nginx `client_body_timeout`); then `408 request_timeout`.
    pub body_timeout_secs: u64,
    /// How long an idle HTTP/1.1 keep-alive connection (or an idle HTTP/2 connection) is
    /// kept waiting for its next request; Pingora alone would keep it forever.
    pub keepalive_timeout_secs: u64,
    /// Most client connections open at once on the proxy listeners (plain and TLS
    /// together); a connection over it is closed at once. `0` = no limit.
    pub max_connections: usize,
    /// Most client connections open at once from one client address (the TCP peer, so a
    /// load balancer in front counts as one client); `0` = no limit.
    pub max_connections_per_ip: usize,
    /// `[server.tls]`: a TLS listener beside the plain one; absent = no TLS.
    pub tls: Option<Tls>,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            threads: 2,
            work_stealing: true,
            trusted_proxies: Vec::new(),
            shutdown_grace_secs: 5,
            allow_path_parameters: false,
            upgrade_sock: "run/upgrade.sock".into(),
            pid_file: None,
            max_header_bytes: 16384,
            header_timeout_secs: 10,
            body_timeout_secs: 30,
            keepalive_timeout_secs: 60,
            max_connections: 10_000,
            max_connections_per_ip: 0,
            tls: None,
        }
    }
}

/// Lowest TLS version the TLS listener accepts.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3 (default: every client still in use).
    #[default]
    #[serde(rename = "1.2")]
    V1_2,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    V1_3,
}

/// `[server.tls]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// TLS listener; `server.listen` stays plain HTTP.
    pub listen: SocketAddr,
    /// Certificates chosen by SNI; the first is the default for unknown or absent SNI.
    pub certs: Vec<CertFiles>,
    /// Lowest protocol version accepted.
    pub min_version: TlsVersion,
    /// Offer HTTP/2 by ALPN (HTTP/1.1 is always offered).
    pub http2: bool,
    /// `server.listen` answers 308 to the https URL (except ACME HTTP-01 challenges).
    pub redirect_http: bool,
    /// `> 0`: `Strict-Transport-Security: max-age=N` on every TLS response.
    pub hsts_max_age_secs: u64,
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            certs: Vec::new(),
            min_version: TlsVersion::V1_2,
            http2: true,
            redirect_http: false,
            hsts_max_age_secs: 0,
        }
    }
}

/// One certificate: PEM files, relative to the working directory.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct CertFiles {
    /// Certificate chain, leaf first.
    pub cert: String,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
}

/// CIDRs, where a bare address means just that address (`/32` or `/128`).
fn cidrs<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    Vec::<String>::deserialize(de)?
        .iter()
        .map(|s| {
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a CIDR or IP address")))
        })
        .collect()
}

/// `[database]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Database {
    /// libpq-style URL; `DATABASE_URL` overrides it.
    pub url: String,
    /// Maximum pooled connections per instance.
    pub pool_size: usize,
    /// How long a request waits for a pooled connection before it fails as "database
    /// unavailable" (503): bounds the queue when every connection is busy, so clients get a
    /// prompt answer with `Retry-After` instead of hanging.
    pub acquire_timeout_ms: u64,
    /// How long one query may run before PostgreSQL cancels it (0: no limit): a query stuck
    /// behind a lock fails as "database unavailable" (503) and frees its pooled connection
    /// instead of holding it, and the requests queued behind it, indefinitely.
    pub statement_timeout_ms: u64,
    /// Create the database and apply migrations on `serve`.
    pub auto_migrate: bool,
}

impl Default for Database {
    fn default() -> Self {
        Database {
            url: "sqlite://data/portcullis.db".to_string(),
            pool_size: 16,
            acquire_timeout_ms: 5000,
            statement_timeout_ms: 10_000,
            auto_migrate: true,
        }
    }
}

/// JWT signing algorithms the gateway can be pinned to.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Algorithm {
    /// Ed25519 (default): small keys, fast verification.
    #[value(name = "EdDSA")]
    EdDSA,
    /// ECDSA P-256 with SHA-256.
    #[value(name = "ES256")]
    ES256,
    /// RSA PKCS#1 v1.5 with SHA-256.
    #[value(name = "RS256")]
    RS256,
    /// HMAC-SHA256 with a shared secret from the environment.
    #[value(name = "HS256")]
    HS256,
}

impl Algorithm {
    /// The JOSE `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::EdDSA => "EdDSA",
            Algorithm::ES256 => "ES256",
            Algorithm::RS256 => "RS256",
            Algorithm::HS256 => "HS256",
        }
    }
}

/// `[tokens]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Tokens {
    /// `iss` claim written and required.
    pub issuer: String,
    /// `aud` claim written and required.
    pub audience: String,
    /// The only algorithm accepted.
    pub algorithm: Algorithm,
    /// Directory of asymmetric signing keys (relative to the working directory).
    pub keys_dir: String,
    /// Env var holding the HS256 secret (only for HS256).
    pub hs256_secret_env: Option<String>,
    /// Access token lifetime.
    pub access_ttl_secs: u64,
    /// Absolute refresh lifetime from login.
    pub refresh_ttl_secs: u64,
    /// Window in which a spent refresh token returns the same successor.
    pub refresh_reuse_grace_secs: u64,
    /// Clock skew tolerated on exp/nbf/iat.
    pub leeway_secs: u64,
}

impl Default for Tokens {
    fn default() -> Self {
        Tokens {
            issuer: "portcullis".to_string(),
            audience: "portcullis".to_string(),
            algorithm: Algorithm::EdDSA,
            keys_dir: "keys".to_string(),
            hs256_secret_env: None,
            access_ttl_secs: 900,
            refresh_ttl_secs: 2_592_000,
            refresh_reuse_grace_secs: 10,
            leeway_secs: 30,
        }
    }
}

/// `[passwords]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Passwords {
    /// argon2id memory cost.
    pub argon2_memory_kib: u32,
    /// argon2id time cost.
    pub argon2_iterations: u32,
    /// argon2id lanes.
    pub argon2_parallelism: u32,
    /// Hashes running at once; 0 = number of CPU cores.
    pub max_concurrent_hashes: usize,
    /// Minimum length in characters.
    pub min_length: usize,
    /// Maximum length in bytes.
    pub max_length: usize,
}

impl Default for Passwords {
    fn default() -> Self {
        Passwords {
            argon2_memory_kib: 19456,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            max_concurrent_hashes: 0,
            min_length: 8,
            max_length: 1024,
        }
    }
}

/// What the proxy does when a revocation status is unknown because the database is down.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnDbError {
    /// Answer 503 (fail closed, default).
    Deny,
    /// Forward anyway (explicit, logged opt-in).
    Allow,
}

/// `[revocation]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Revocation {
    /// Upper bound on staleness if a notification is lost.
    pub cache_ttl_secs: u64,
    /// Entries kept.
    pub cache_capacity: u64,
    /// Behaviour when the status cannot be looked up.
    pub on_db_error: OnDbError,
}

impl Default for Revocation {
    fn default() -> Self {
        Revocation {
            cache_ttl_secs: 30,
            cache_capacity: 100_000,
            on_db_error: OnDbError::Deny,
        }
    }
}

/// `[rate_limit]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimit {
    /// Login attempts per client IP per minute.
    pub login_per_minute_per_ip: u32,
    /// Failed logins per account per minute (shared by all instances).
    pub login_per_minute_per_account: u32,
    /// Registrations per client IP per minute.
    pub register_per_minute_per_ip: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            login_per_minute_per_ip: 20,
            login_per_minute_per_account: 10,
            register_per_minute_per_ip: 10,
        }
    }
}

/// `[identity_headers]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityHeaders {
    /// Carries the user id.
    pub user_id: String,
    /// Carries the role.
    pub role: String,
    /// Carries the session id.
    pub session_id: String,
    /// Carries the email.
    pub email: String,
}

impl Default for IdentityHeaders {
    fn default() -> Self {
        IdentityHeaders {
            user_id: "X-Auth-User-Id".to_string(),
            role: "X-Auth-Role".to_string(),
            session_id: "X-Auth-Session-Id".to_string(),
            email: "X-Auth-Email".to_string(),
        }
    }
}

impl IdentityHeaders {
    /// All four names, for stripping.
    pub fn names(&self) -> [&str; 4] {
        [&self.user_id, &self.role, &self.session_id, &self.email]
    }
}

/// `[[upstream]]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Name routes refer to.
    pub name: String,
    /// `host:port` addresses, used round-robin.
    pub addrs: Vec<String>,
    /// Optional active HTTP health check path.
    #[serde(default)]
    pub health_check_path: Option<String>,
    /// Interval of the health check.
    #[serde(default = "default_health_interval")]
    pub health_check_interval_secs: u64,
    /// TCP connect timeout.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// Per-read timeout on the upstream response.
    #[serde(default = "default_read_timeout")]
    pub read_timeout_ms: u64,
}

fn default_health_interval() -> u64 {
    5
}
fn default_connect_timeout() -> u64 {
    1000
}
fn default_read_timeout() -> u64 {
    30_000
}

/// Whether a route needs a signed-in caller.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Public: forwarded without identity (client identity headers still stripped).
    None,
    /// Identity added when a valid token is present; a bad token is still 401.
    Optional,
    /// A valid token is needed (default).
    #[default]
    Required,
}

/// `[[route]]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Path prefix, matched on the normalized path ignoring ASCII case.
    pub prefix: String,
    /// Match the prefix exactly, case included.
    #[serde(default)]
    pub case_sensitive: bool,
    /// Upstream name.
    pub upstream: String,
    /// Authentication requirement.
    #[serde(default)]
    pub auth: AuthMode,
    /// Roles allowed; empty = any signed-in user.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Methods this route matches; empty = all.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Host this route matches (port ignored, case-insensitive).
    #[serde(default)]
    pub host: Option<String>,
    /// Remove the prefix before forwarding.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Keep the client's Authorization header for the upstream.
    #[serde(default)]
    pub forward_token: bool,
    /// A WebSocket tunnel on this route closes after this long without traffic.
    #[serde(default = "default_websocket_idle_timeout_secs")]
    pub websocket_idle_timeout_secs: u64,
    /// Only tokens of a session authenticated with a second factor (`acr` `aal2`) pass.
    #[serde(default)]
    pub mfa: bool,
    /// Only tokens whose authentication (`auth_time`) is at most this old pass.
    #[serde(default)]
    pub max_auth_age_secs: Option<u64>,
}

fn default_websocket_idle_timeout_secs() -> u64 {
    300
}

/// `[[oidc]]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Oidc {
    /// Appears in the URLs.
    pub name: String,
    /// Provider issuer (discovery base).
    pub issuer: String,
    /// Client id at the provider.
    pub client_id: String,
    /// Env var holding the client secret.
    pub client_secret_env: String,
    /// Scopes requested.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// Our callback URL registered at the provider.
    pub redirect_uri: String,
    /// Prefixes `redirect_to` may start with.
    #[serde(default)]
    pub allowed_redirects: Vec<String>,
}

fn default_scopes() -> Vec<String> {
    vec!["openid".into(), "email".into(), "profile".into()]
}

/// `log.format`: `text` for people at a terminal, `json` for log shippers.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (coloured only on a terminal).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// Line format.
    pub format: LogFormat,
    /// Default filter when `RUST_LOG` is unset (an `EnvFilter` directive).
    pub level: String,
    /// One line per proxied or /auth request.
    pub access_log: bool,
    /// Fraction of 2xx/3xx access lines kept (errors are always kept), to bound log volume.
    pub access_log_sample: f64,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            format: LogFormat::Text,
            level: "info".into(),
            access_log: true,
            access_log_sample: 1.0,
        }
    }
}

/// `[audit]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Audit {
    /// Events older than this many days are deleted (hourly and at start).
    pub retention_days: u32,
}

impl Default for Audit {
    fn default() -> Self {
        Audit {
            retention_days: 365,
        }
    }
}
