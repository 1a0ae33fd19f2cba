//! `user create | list | set-role | deactivate | activate`: the admin API's rules through the
//! `auth` use-cases.

use std::io::Read;

use anyhow::{Context, bail};
use clap::Subcommand;
use portcullis::auth::{AuthError, ClientInfo, audit, create_account, operator, password::Hasher};
use portcullis::config::Config;
use portcullis::model::{AuditKind, Role, User};

use super::{auth_error, runtime, store};

/// Parses a role as the docs print it (`user`, `admin`), any case.
pub fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(&s.trim().to_ascii_lowercase())
        .ok_or_else(|| format!("{s:?} is not a role (user or admin)"))
}

/// User verbs.
#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a user (e.g. the first admin); the password is read from stdin.
    Create {
        /// Email address.
        #[arg(long)]
        email: String,
        /// Role of the new user: user or admin.
        #[arg(long, value_parser = parse_role, default_value = "user")]
        role: Role,
        /// Read the password from standard input (required: never pass it as an argument).
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// List every user: id, email, role, active, created.
    List,
    /// Change a user's role (revokes their sessions); the last active admin stays admin.
    SetRole {
        /// Email address.
        #[arg(long)]
        email: String,
        /// New role: user or admin.
        #[arg(long, value_parser = parse_role)]
        role: Role,
    },
    /// Deactivate a user (revokes their sessions); the last active admin stays active.
    Deactivate {
        /// Email address.
        #[arg(long)]
        email: String,
    },
    /// Reactivate a user.
    Activate {
        /// Email address.
        #[arg(long)]
        email: String,
    },
}

/// Runs a user verb.
pub fn run(config: &Config, command: UserCommand) -> anyhow::Result<()> {
    match command {
        UserCommand::Create { email, role, .. } => create(config, &email, role),
        UserCommand::List => list(config),
        UserCommand::SetRole { email, role } => {
            let store = store(config)?;
            let user = runtime()?
                .block_on(operator::set_role(&store, &email, role))
                .map_err(auth_error)?;
            println!(
                "{} is now {} (sessions revoked)",
                user.email,
                user.role.as_str()
            );
            Ok(())
        }
        UserCommand::Deactivate { email } => set_active(config, &email, false),
        UserCommand::Activate { email } => set_active(config, &email, true),
    }
}

fn set_active(config: &Config, email: &str, active: bool) -> anyhow::Result<()> {
    let store = store(config)?;
    let user = runtime()?
        .block_on(operator::set_active(&store, email, active))
        .map_err(auth_error)?;
    if active {
        println!("{} is active", user.email);
    } else {
        println!("{} is deactivated (sessions revoked)", user.email);
    }
    Ok(())
}

fn line(u: &User) -> String {
    format!(
        "{}  {:<5}  {:<8}  {}  {}",
        u.id,
        u.role.as_str(),
        if u.is_active { "active" } else { "inactive" },
        u.created_at.format("%Y-%m-%dT%H:%M:%SZ"),
        u.email
    )
}

fn list(config: &Config) -> anyhow::Result<()> {
    let store = store(config)?;
    let users = runtime()?
        .block_on(operator::list_users(&store))
        .map_err(auth_error)?;
    println!("ID                                    ROLE   ACTIVE    CREATED               EMAIL");
    for u in &users {
        println!("{}", line(u));
    }
    println!("{} users", users.len());
    Ok(())
}

fn create(config: &Config, email: &str, role: Role) -> anyhow::Result<()> {
    let mut password = String::new();
    std::io::stdin()
        .read_to_string(&mut password)
        .context("cannot read the password from stdin")?;
    let password = password
        .strip_suffix('\n')
        .map(|p| p.strip_suffix('\r').unwrap_or(p))
        .unwrap_or(&password)
        .to_string();
    let store = store(config)?;
    let hasher = Hasher::new(&config.passwords)?;
    let user = runtime()?.block_on(async {
        let user =
            create_account(&store, &hasher, &config.passwords, email, password, role).await?;
        // An operator's account creation is a `register` with no actor (the CLI has no caller).
        let detail = serde_json::json!({"via": "cli", "role": role.as_str()});
        let event = audit::event(
            AuditKind::Register,
            Some(user.id),
            None,
            &ClientInfo::default(),
            detail,
        );
        audit::record(&store, event).await;
        Ok(user)
    });
    match user {
        Ok(user) => {
            println!(
                "created {} user {} ({})",
                user.role.as_str(),
                user.email,
                user.id
            );
            Ok(())
        }
        Err(AuthError::EmailTaken) => bail!("a user with email {email} already exists"),
        Err(AuthError::Unavailable) => bail!("the database is unreachable"),
        Err(e) => bail!("{e}"),
    }
}
