//! `routes list | explain`: the proxy's own route table and decision (`access::table`,
//! `access::decide`), read offline from the config.

use anyhow::{Context, bail};
use clap::{ArgGroup, Subcommand};
use portcullis::access::table::{self, Caller, Explanation, RouteView};
use portcullis::access::{PathPolicy, Routes};
use portcullis::config::{Algorithm, Config};
use portcullis::model::Role;
use portcullis::tokens::TokenService;

use super::runtime;
use super::user::parse_role;

/// Route verbs.
#[derive(Subcommand)]
pub enum RoutesCommand {
    /// The effective route table in match order, then a warning per route that can never
    /// match, overlaps another, or exposes a stricter route through strip_prefix.
    List,
    /// How the gateway decides one request: normalized path, route, upstream, decision.
    #[command(group(ArgGroup::new("caller").args(["token", "role", "anonymous"])))]
    Explain {
        /// Request method, any case (GET, post…).
        method: String,
        /// Path (`/api/x?q=1`) or absolute URL (its host is used unless --host).
        url: String,
        /// Host header to match host-specific routes.
        #[arg(long)]
        host: Option<String>,
        /// A real access token, verified with the keys in tokens.keys_dir (revocation cannot
        /// be checked offline). `-` reads it from stdin, so a live token stays out of argv
        /// (`ps`, shell history).
        #[arg(long)]
        token: Option<String>,
        /// Stand for a valid token with this role (user or admin).
        #[arg(long, value_parser = parse_role)]
        role: Option<Role>,
        /// No token (the default).
        #[arg(long)]
        anonymous: bool,
    },
}

/// Runs a routes verb.
pub fn run(config: &Config, command: RoutesCommand) -> anyhow::Result<()> {
    let routes = Routes::new(&config.routes);
    match command {
        RoutesCommand::List => {
            print!("{}", render_table(&table::list(&routes)));
            for w in table::warnings(&routes) {
                println!("warning: {w}");
            }
            Ok(())
        }
        RoutesCommand::Explain {
            method,
            url,
            host,
            token,
            role,
            anonymous: _,
        } => {
            let policy = PathPolicy {
                allow_path_parameters: config.server.allow_path_parameters,
            };
            let token = match token.as_deref() {
                Some("-") => Some(token_from_stdin()?),
                _ => token,
            };
            let tokens = match &token {
                Some(_) => Some(token_service(config)?),
                None => None,
            };
            let caller = match (&token, &tokens, role) {
                (Some(t), Some(ts), _) => Caller::Token(t, ts),
                (_, _, Some(r)) => Caller::Role(r),
                _ => Caller::Anonymous,
            };
            let e = runtime()?
                .block_on(table::explain(
                    &routes,
                    policy,
                    &method,
                    &url,
                    host.as_deref(),
                    caller,
                ))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            print!("{}", render_explanation(&e, caller));
            Ok(())
        }
    }
}

/// `--token -`: the token is the first line of stdin.
fn token_from_stdin() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("cannot read the token from stdin")?;
    let token = line.trim();
    if token.is_empty() {
        bail!("--token -: no token on stdin");
    }
    Ok(token.to_string())
}

/// The token service over the configured keys, without creating one when the directory is
/// empty (an offline check must write nothing).
fn token_service(config: &Config) -> anyhow::Result<TokenService> {
    if config.tokens.algorithm != Algorithm::HS256 {
        let dir = std::path::Path::new(&config.tokens.keys_dir);
        let has_keys = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read tokens.keys_dir {}", dir.display()))?
            .filter_map(Result::ok)
            .any(|e| e.path().extension().is_some_and(|x| x == "pem"));
        if !has_keys {
            bail!(
                "tokens.keys_dir {} holds no key: no token can be verified",
                dir.display()
            );
        }
    }
    TokenService::new(&config.tokens).context("cannot load the signing keys")
}

fn flags(r: &RouteView) -> String {
    let mut f = Vec::new();
    if r.strip_prefix {
        f.push("strip_prefix".to_string());
    }
    if r.forward_token {
        f.push("forward_token".to_string());
    }
    if r.case_sensitive {
        f.push("case_sensitive".to_string());
    }
    if r.mfa {
        f.push("mfa".to_string());
    }
    if let Some(max) = r.max_auth_age_secs {
        f.push(format!("max_auth_age_secs={max}"));
    }
    if f.is_empty() {
        "-".into()
    } else {
        f.join(",")
    }
}

fn or_any(list: &[impl AsRef<str>]) -> String {
    if list.is_empty() {
        "*".into()
    } else {
        list.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(",")
    }
}

/// The table as aligned text, one route a line in match order.
fn render_table(routes: &[RouteView]) -> String {
    let header = [
        "#", "PREFIX", "HOST", "METHODS", "AUTH", "ROLES", "UPSTREAM", "FLAGS",
    ];
    let rows: Vec<[String; 8]> = routes
        .iter()
        .map(|r| {
            [
                r.position.to_string(),
                r.prefix.clone(),
                r.host.clone().unwrap_or_else(|| "*".into()),
                or_any(&r.methods),
                r.auth.to_string(),
                if r.roles.is_empty() {
                    "-".into()
                } else {
                    r.roles.join(",")
                },
                r.upstream.clone(),
                flags(r),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut push = |cells: Vec<&str>| {
        let line: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    };
    push(header.to_vec());
    for row in &rows {
        push(row.iter().map(String::as_str).collect());
    }
    if rows.is_empty() {
        out.push_str("(no routes: every request outside /auth is 404)\n");
    }
    out
}

fn render_explanation(e: &Explanation, caller: Caller<'_>) -> String {
    let mut out = String::new();
    let who = match caller {
        Caller::Anonymous => "anonymous (no token)".to_string(),
        Caller::Role(r) => format!("a valid token with role {}", r.as_str()),
        Caller::Token(..) => "the given token".to_string(),
    };
    out.push_str(&format!("request:     {} {}\n", e.method, e.path));
    out.push_str(&format!(
        "host:        {}\n",
        e.host.as_deref().unwrap_or("(none)")
    ));
    out.push_str(&format!("caller:      {who}\n"));
    match (&e.normalized_path, &e.path_error) {
        (Some(p), _) => out.push_str(&format!("normalized:  {p}\n")),
        (None, Some(err)) => out.push_str(&format!("normalized:  refused ({err})\n")),
        (None, None) => {}
    }
    match &e.route {
        Some(r) => {
            let roles = if r.roles.is_empty() {
                "any".to_string()
            } else {
                r.roles.join(",")
            };
            out.push_str(&format!(
                "route:       #{} {} (host {}, methods {}, auth {}, roles {}, flags {})\n",
                r.position,
                r.prefix,
                r.host.as_deref().unwrap_or("*"),
                or_any(&r.methods),
                r.auth,
                roles,
                flags(r)
            ));
        }
        None if e.normalized_path.is_some() && e.reason != "auth_api" => {
            out.push_str("route:       none\n")
        }
        None => {}
    }
    if let (Some(u), Some(p)) = (&e.upstream, &e.upstream_path) {
        out.push_str(&format!("upstream:    {u} (receives {p})\n"));
    }
    if let Some(id) = &e.identity {
        let mut s = format!("role {}", id.role.as_str());
        if let Some(email) = &id.email {
            s.push_str(&format!(", {email}"));
        }
        if let Some(uid) = id.user_id {
            s.push_str(&format!(" ({uid})"));
        }
        out.push_str(&format!("identity:    {s}\n"));
    }
    out.push_str(&format!("decision:    {}\n", e.decision));
    out.push_str(&format!("reason:      {}\n", e.detail));
    if let Some(note) = &e.note {
        out.push_str(&format!("note:        {note}\n"));
    }
    out
}
