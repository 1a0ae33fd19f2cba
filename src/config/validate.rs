//! Semantic rules serde cannot express, each reported with the key and line it concerns.

use std::collections::HashSet;

use toml::de::{DeTable, DeValue};

use super::{AuthMode, Browser, Config, Problem, line_of_offset};

/// Roles a route may require (the `user_role` enum of the schema).
const ROLES: [&str; 2] = ["user", "admin"];
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
];

/// Segment of a key path: a table key or an array index.
pub(super) enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// Finds the line of a key path in the source so validation errors point at the file.
pub(super) struct Locator<'t> {
    text: &'t str,
    root: Option<toml::Spanned<DeTable<'t>>>,
}

impl<'t> Locator<'t> {
    pub(super) fn new(text: &'t str) -> Self {
        Locator {
            text,
            root: DeTable::parse(text).ok(),
        }
    }

    /// Dotted path of the key an offset belongs to: the key (or array item) anywhere in the
    /// file that starts last before the offset, so a table written out of order (`[server.tls]`
    /// after `[[route]]`) is still named right. Serde errors carry a span but not always the
    /// key's name.
    pub(super) fn key_at(&self, offset: usize) -> Option<String> {
        type Best = Option<(usize, String)>;
        fn consider(
            start: usize,
            path: String,
            value: &DeValue<'_>,
            offset: usize,
            best: &mut Best,
        ) {
            if let DeValue::Table(t) = value {
                walk(t, offset, &path, best);
            }
            if start <= offset && best.as_ref().is_none_or(|b| start > b.0) {
                *best = Some((start, path));
            }
        }
        fn walk(table: &DeTable<'_>, offset: usize, prefix: &str, best: &mut Best) {
            for (key, value) in table.iter() {
                let path = if prefix.is_empty() {
                    key.get_ref().to_string()
                } else {
                    format!("{prefix}.{}", key.get_ref())
                };
                if let DeValue::Array(items) = value.get_ref() {
                    for (i, item) in items.iter().enumerate() {
                        let item_path = format!("{path}[{i}]");
                        consider(item.span().start, item_path, item.get_ref(), offset, best);
                    }
                }
                consider(key.span().start, path, value.get_ref(), offset, best);
            }
        }
        let mut best = None;
        walk(self.root.as_ref()?.get_ref(), offset, "", &mut best);
        best.map(|(_, path)| path)
    }

    /// Line of the deepest part of `path` present in the file.
    pub(super) fn line(&self, path: &[Seg<'_>]) -> Option<usize> {
        let root = self.root.as_ref()?;
        let mut table: Option<&DeTable<'_>> = Some(root.get_ref());
        let mut value: Option<&DeValue<'_>> = None;
        let mut best: Option<usize> = None;
        for seg in path {
            let next = match (seg, table, value) {
                (Seg::Key(k), Some(t), _) => t
                    .iter()
                    .find(|(key, _)| key.get_ref().as_ref() == *k)
                    .map(|(key, v)| (key.span().start, v)),
                (Seg::Index(i), _, Some(DeValue::Array(a))) => {
                    a.get(*i).map(|v| (v.span().start, v))
                }
                _ => None,
            };
            let Some((offset, v)) = next else { break };
            best = Some(offset);
            value = Some(v.get_ref());
            table = v.get_ref().as_table();
        }
        best.map(|o| line_of_offset(self.text, o))
    }
}

/// Line of a dotted key path such as `server.tls.certs[0].key`, for problems found outside
/// this module (certificate files).
pub(super) fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let mut segs = Vec::new();
    for part in key.split('.') {
        let mut rest = part;
        let name_end = rest.find('[').unwrap_or(rest.len());
        segs.push(Seg::Key(&rest[..name_end]));
        rest = &rest[name_end..];
        while let Some(inner) = rest.strip_prefix('[') {
            let close = inner.find(']')?;
            segs.push(Seg::Index(inner[..close].parse().ok()?));
            rest = &inner[close + 1..];
        }
    }
    Locator::new(text).line(&segs)
}

struct Report<'t> {
    locator: Locator<'t>,
    problems: Vec<Problem>,
}

impl Report<'_> {
    fn add(&mut self, path: &[Seg<'_>], message: impl Into<String>) {
        let key = path
            .iter()
            .map(|s| match s {
                Seg::Key(k) => format!(".{k}"),
                Seg::Index(i) => format!("[{i}]"),
            })
            .collect::<String>()
            .trim_start_matches('.')
            .to_string();
        self.problems.push(Problem {
            line: self.locator.line(path),
            key,
            message: message.into(),
        });
    }

    fn at_least(&mut self, table: &str, key: &str, value: u64, min: u64) {
        if value < min {
            self.add(
                &[Seg::Key(table), Seg::Key(key)],
                format!("must be at least {min} (got {value})"),
            );
        }
    }
}

/// Every rule violation in `config`; empty when the config is valid.
pub(super) fn validate(config: &Config, text: &str) -> Vec<Problem> {
    let mut r = Report {
        locator: Locator::new(text),
        problems: Vec::new(),
    };
    let s = &config.server;
    r.at_least("server", "threads", s.threads as u64, 1);
    r.at_least(
        "server",
        "max_header_bytes",
        s.max_header_bytes as u64,
        1024,
    );
    r.at_least("server", "header_timeout_secs", s.header_timeout_secs, 1);
    r.at_least("server", "body_timeout_secs", s.body_timeout_secs, 1);
    r.at_least(
        "server",
        "keepalive_timeout_secs",
        s.keepalive_timeout_secs,
        1,
    );
    if s.listen == s.admin_listen {
        r.add(
            &[Seg::Key("server"), Seg::Key("admin_listen")],
            "must differ from server.listen",
        );
    }

    if let Some(tls) = &s.tls {
        validate_tls(&mut r, s, tls, config.acme.enabled);
    }
    validate_acme(&mut r, config);

    validate_browser(&mut r, &config.browser);

    let db = &config.database;
    let sqlite_path = db.url.strip_prefix("sqlite://");
    if sqlite_path.is_some_and(|p| p.is_empty() || p.contains('?')) {
        r.add(
            &[Seg::Key("database"), Seg::Key("url")],
            "sqlite:// needs a file path and takes no options (sqlite://data/portcullis.db)",
        );
    } else if sqlite_path.is_none()
        && !(db.url.starts_with("postgres://") || db.url.starts_with("postgresql://"))
    {
        r.add(
            &[Seg::Key("database"), Seg::Key("url")],
            "must be a sqlite://PATH, postgres:// or postgresql:// URL",
        );
    }
    r.at_least("database", "pool_size", db.pool_size as u64, 1);
    r.at_least("database", "acquire_timeout_ms", db.acquire_timeout_ms, 1);

    let t = &config.tokens;
    for (key, v) in [("issuer", &t.issuer), ("audience", &t.audience)] {
        if v.trim().is_empty() {
            r.add(&[Seg::Key("tokens"), Seg::Key(key)], "must not be empty");
        }
    }
    r.at_least("tokens", "access_ttl_secs", t.access_ttl_secs, 1);
    r.at_least("tokens", "refresh_ttl_secs", t.refresh_ttl_secs, 1);
    if t.refresh_ttl_secs < t.access_ttl_secs {
        r.add(
            &[Seg::Key("tokens"), Seg::Key("refresh_ttl_secs")],
            "must not be shorter than tokens.access_ttl_secs",
        );
    }
    match (t.algorithm, &t.hs256_secret_env) {
        (super::Algorithm::HS256, None) => r.add(
            &[Seg::Key("tokens"), Seg::Key("algorithm")],
            "HS256 needs tokens.hs256_secret_env naming the env var that holds the secret",
        ),
        (a, Some(_)) if a != super::Algorithm::HS256 => r.add(
            &[Seg::Key("tokens"), Seg::Key("hs256_secret_env")],
            "is only used with algorithm = \"HS256\"",
        ),
        _ => {}
    }
    if t.keys_dir.trim().is_empty() {
        r.add(
            &[Seg::Key("tokens"), Seg::Key("keys_dir")],
            "must not be empty",
        );
    }

    validate_log_and_audit(&mut r, config);

    let p = &config.passwords;
    r.at_least(
        "passwords",
        "argon2_iterations",
        p.argon2_iterations.into(),
        1,
    );
    r.at_least(
        "passwords",
        "argon2_parallelism",
        p.argon2_parallelism.into(),
        1,
    );
    r.at_least(
        "passwords",
        "argon2_memory_kib",
        p.argon2_memory_kib.into(),
        8 * u64::from(p.argon2_parallelism.max(1)),
    );
    r.at_least("passwords", "min_length", p.min_length as u64, 1);
    if p.max_length < p.min_length {
        r.add(
            &[Seg::Key("passwords"), Seg::Key("max_length")],
            "must not be smaller than passwords.min_length",
        );
    }
    if p.max_length > 4096 {
        r.add(
            &[Seg::Key("passwords"), Seg::Key("max_length")],
            "must be at most 4096 bytes",
        );
    }

    let rv = &config.revocation;
    r.at_least("revocation", "cache_ttl_secs", rv.cache_ttl_secs, 1);
    r.at_least("revocation", "cache_capacity", rv.cache_capacity, 1);

    let ih = &config.identity_headers;
    let mut seen_headers = HashSet::new();
    for (key, name) in [
        ("user_id", &ih.user_id),
        ("role", &ih.role),
        ("session_id", &ih.session_id),
        ("email", &ih.email),
    ] {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            r.add(
                &[Seg::Key("identity_headers"), Seg::Key(key)],
                format!("{name:?} is not a valid header name"),
            );
        } else if !seen_headers.insert(name.to_ascii_lowercase()) {
            r.add(
                &[Seg::Key("identity_headers"), Seg::Key(key)],
                format!("{name:?} is used for two identity headers"),
            );
        }
    }

    let mut names = HashSet::new();
    for (i, u) in config.upstreams.iter().enumerate() {
        let at = |k| [Seg::Key("upstream"), Seg::Index(i), Seg::Key(k)];
        if u.name.trim().is_empty() {
            r.add(&at("name"), "must not be empty");
        } else if !names.insert(u.name.as_str()) {
            r.add(
                &at("name"),
                format!("upstream {:?} is defined twice", u.name),
            );
        }
        if u.addrs.is_empty() {
            r.add(&at("addrs"), "needs at least one address");
        }
        for a in &u.addrs {
            if !valid_host_port(a) {
                r.add(&at("addrs"), format!("{a:?} is not a host:port address"));
            }
        }
        if let Some(path) = &u.health_check_path
            && !path.starts_with('/')
        {
            r.add(&at("health_check_path"), "must start with '/'");
        }
        if u.health_check_interval_secs == 0 {
            r.add(&at("health_check_interval_secs"), "must be at least 1");
        }
        if u.connect_timeout_ms == 0 {
            r.add(&at("connect_timeout_ms"), "must be at least 1");
        }
        if u.read_timeout_ms == 0 {
            r.add(&at("read_timeout_ms"), "must be at least 1");
        }
    }

    let mut routes = HashSet::new();
    for (i, route) in config.routes.iter().enumerate() {
        let at = |k| [Seg::Key("route"), Seg::Index(i), Seg::Key(k)];
        let prefix = route.prefix.as_str();
        if !prefix.starts_with('/') {
            r.add(&at("prefix"), "must start with '/'");
        } else if prefix.eq_ignore_ascii_case("/auth")
            || prefix.to_ascii_lowercase().starts_with("/auth/")
        {
            r.add(
                &at("prefix"),
                "no route may live under /auth/ (the gateway serves it itself)",
            );
        } else if prefix.contains("//")
            || prefix
                .split('/')
                .any(|seg| seg == "." || seg == ".." || seg.contains('%') || seg.contains('\\'))
        {
            r.add(
                &at("prefix"),
                "must be a normalized path (no '//', '.', '..', '%' or '\\')",
            );
        }
        if route.websocket_idle_timeout_secs == 0 {
            r.add(&at("websocket_idle_timeout_secs"), "must be at least 1");
        }
        if route.max_auth_age_secs == Some(0) {
            r.add(&at("max_auth_age_secs"), "must be at least 1");
        }
        if route.auth != AuthMode::Required && (route.mfa || route.max_auth_age_secs.is_some()) {
            let key = if route.mfa {
                "mfa"
            } else {
                "max_auth_age_secs"
            };
            r.add(
                &at(key),
                "needs auth = \"required\" (a step-up rule applies to a signed-in caller)",
            );
        }
        if !names.contains(route.upstream.as_str()) {
            r.add(
                &at("upstream"),
                format!("names upstream {:?}, which is not defined", route.upstream),
            );
        }
        for role in &route.roles {
            if !ROLES.contains(&role.as_str()) {
                r.add(
                    &at("roles"),
                    format!("unknown role {role:?} (roles are: user, admin)"),
                );
            }
        }
        if route.auth == AuthMode::None && !route.roles.is_empty() {
            r.add(
                &at("roles"),
                "has no effect on a route with auth = \"none\"",
            );
        }
        for m in &route.methods {
            if !METHODS.contains(&m.as_str()) {
                r.add(
                    &at("methods"),
                    format!("unknown method {m:?} (use upper case, e.g. \"GET\")"),
                );
            }
        }
        if let Some(host) = &route.host
            && (host.is_empty() || host.contains(['/', ' ']))
        {
            r.add(&at("host"), format!("{host:?} is not a host name"));
        }
        let mut methods = route.methods.clone();
        methods.sort();
        let host = route.host.as_ref().map(|h| h.to_ascii_lowercase());
        if !routes.insert((prefix.to_string(), host, methods)) {
            r.add(
                &at("prefix"),
                format!(
                    "duplicate route {prefix:?} (same prefix, host and methods as an earlier route)"
                ),
            );
        }
    }

    let mut providers = HashSet::new();
    for (i, o) in config.oidc.iter().enumerate() {
        let at = |k| [Seg::Key("oidc"), Seg::Index(i), Seg::Key(k)];
        if o.name.is_empty()
            || !o
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            r.add(&at("name"), "must be letters, digits, '-' or '_'");
        } else if !providers.insert(o.name.as_str()) {
            r.add(
                &at("name"),
                format!("provider {:?} is defined twice", o.name),
            );
        }
        if !secure_or_loopback(&o.issuer) {
            r.add(
                &at("issuer"),
                "must be an https:// URL (http only for loopback hosts)",
            );
        }
        if !(o.redirect_uri.starts_with("https://") || o.redirect_uri.starts_with("http://")) {
            r.add(&at("redirect_uri"), "must be an absolute http(s) URL");
        }
        if !o.scopes.iter().any(|s| s == "openid") {
            r.add(&at("scopes"), "must include \"openid\"");
        }
    }
    r.problems
}

/// `[server.tls]` rules that need no file access (the files are checked by `tls::check`).
fn validate_tls(r: &mut Report<'_>, server: &super::Server, tls: &super::Tls, acme: bool) {
    let at = |k| [Seg::Key("server"), Seg::Key("tls"), Seg::Key(k)];
    for (other, name) in [
        (server.listen, "server.listen"),
        (server.admin_listen, "server.admin_listen"),
    ] {
        if same_port(tls.listen, other) {
            r.add(&at("listen"), format!("must not share a port with {name}"));
        }
    }
    if tls.certs.is_empty() && !acme {
        r.add(
            &at("certs"),
            "needs at least one { cert = \"…pem\", key = \"…key\" } (the first is the default), \
             or [acme] enabled = true",
        );
    }
    for (i, c) in tls.certs.iter().enumerate() {
        for (field, path) in [("cert", &c.cert), ("key", &c.key)] {
            if path.trim().is_empty() {
                r.add(
                    &[
                        Seg::Key("server"),
                        Seg::Key("tls"),
                        Seg::Key("certs"),
                        Seg::Index(i),
                        Seg::Key(field),
                    ],
                    "must name a PEM file",
                );
            }
        }
    }
}

/// `[acme]` rules (only when enabled; the CA itself is only reached by `serve`).
fn validate_acme(r: &mut Report<'_>, config: &Config) {
    let acme = &config.acme;
    if !acme.enabled {
        return;
    }
    let at = |k| [Seg::Key("acme"), Seg::Key(k)];
    if config.server.tls.is_none() {
        r.add(
            &at("enabled"),
            "needs a [server.tls] listener to serve the certificate on",
        );
    }
    if !(acme.directory_url.starts_with("https://") || acme.directory_url.starts_with("http://")) {
        r.add(&at("directory_url"), "must be an http(s) URL");
    }
    if acme.domains.is_empty() {
        r.add(&at("domains"), "needs at least one domain name");
    }
    for d in &acme.domains {
        let ok = !d.is_empty()
            && d.len() <= 253
            && !d.starts_with('.')
            && d.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '*'));
        if !ok {
            r.add(&at("domains"), format!("{d:?} is not a DNS name"));
        }
    }
    if acme.challenge != "http-01" {
        r.add(
            &at("challenge"),
            format!(
                "{:?} is not supported (supported: \"http-01\")",
                acme.challenge
            ),
        );
    }
    for c in &acme.contact {
        if !c.starts_with("mailto:") {
            r.add(&at("contact"), format!("{c:?} must be a mailto: URL"));
        }
    }
    if acme.renew_before_days == 0 || acme.renew_before_days > 60 {
        r.add(&at("renew_before_days"), "must be between 1 and 60");
    }
}

/// Two listen addresses that cannot both be bound: same port on the same or a wildcard address.
fn same_port(a: std::net::SocketAddr, b: std::net::SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// `host:port` with a non-empty host and a numeric port.
/// `[log]` and `[audit]`.
fn validate_log_and_audit(r: &mut Report<'_>, config: &Config) {
    let sample = config.log.access_log_sample;
    if !(0.0..=1.0).contains(&sample) {
        r.add(
            &[Seg::Key("log"), Seg::Key("access_log_sample")],
            "must be between 0.0 and 1.0",
        );
    }
    if tracing_level_ok(&config.log.level).is_err() {
        r.add(
            &[Seg::Key("log"), Seg::Key("level")],
            "must be a level (error, warn, info, debug, trace) or RUST_LOG-style directives",
        );
    }
    r.at_least(
        "audit",
        "retention_days",
        config.audit.retention_days.into(),
        1,
    );
}

/// Whether `level` looks like `RUST_LOG` directives (`info`, `portcullis=debug,warn`): each
/// directive is a level, a target, or `target=level`. Kept free of tracing (config imports
/// nothing of ours or of the logging stack).
fn tracing_level_ok(level: &str) -> Result<(), ()> {
    const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];
    let target_ok = |t: &str| {
        !t.is_empty()
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-'))
    };
    let directive_ok = |d: &str| match d.trim().split_once('=') {
        Some((t, l)) => target_ok(t) && LEVELS.contains(&l.to_ascii_lowercase().as_str()),
        None => target_ok(d.trim()),
    };
    if level.split(',').all(directive_ok) {
        Ok(())
    } else {
        Err(())
    }
}

fn valid_host_port(addr: &str) -> bool {
    if addr.parse::<std::net::SocketAddr>().is_ok() {
        return true;
    }
    match addr.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && port.parse::<u16>().is_ok_and(|p| p > 0)
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        }
        None => false,
    }
}

fn secure_or_loopback(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', '?']).next().unwrap_or_default();
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    host == "localhost" || host == "[::1]" || host.starts_with("127.")
}

/// `[browser]`: names the cookies can carry, origins and hosts in the shape they are compared.
fn validate_browser(r: &mut Report, b: &Browser) {
    let key = |k: &'static str| [Seg::Key("browser"), Seg::Key(k)];
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
    };
    if !token(&b.cookie_prefix) {
        r.add(
            &key("cookie_prefix"),
            "must be a cookie name (letters, digits and !#$%&'*+-.^_`|~)",
        );
    }
    for origin in &b.trusted_origins {
        let ok = origin.split_once("://").is_some_and(|(scheme, rest)| {
            matches!(scheme, "http" | "https") && !rest.is_empty() && !rest.contains('/')
        });
        if !ok {
            r.add(
                &key("trusted_origins"),
                format!("{origin:?} is not an origin (scheme://host[:port], no path)"),
            );
        }
    }
    for host in &b.allowed_redirect_hosts {
        if host.is_empty() || host.contains(['/', ':', ' ']) {
            r.add(
                &key("allowed_redirect_hosts"),
                format!("{host:?} is not a host name"),
            );
        }
    }
    if b.title.trim().is_empty() {
        r.add(&key("title"), "must not be empty");
    }
}
