//! `sessions list | revoke`: revocation goes through the store function that NOTIFYs, so
//! every running instance drops the session at once.

use clap::{ArgGroup, Subcommand};
use portcullis::auth::operator;
use portcullis::config::Config;
use uuid::Uuid;

use super::{auth_error, runtime, store};

/// Session verbs.
#[derive(Subcommand)]
pub enum SessionsCommand {
    /// List a user's live sessions, newest first.
    List {
        /// Email address.
        #[arg(long)]
        email: String,
    },
    /// Revoke every session of a user, or one session by id; every instance refuses their
    /// tokens from then on.
    #[command(group(ArgGroup::new("which").required(true).args(["email", "session"])))]
    Revoke {
        /// Revoke every session of this user.
        #[arg(long)]
        email: Option<String>,
        /// Revoke this session (the JWT `sid`).
        #[arg(long)]
        session: Option<Uuid>,
    },
}

/// Runs a sessions verb.
pub fn run(config: &Config, command: SessionsCommand) -> anyhow::Result<()> {
    let store = store(config)?;
    let rt = runtime()?;
    match command {
        SessionsCommand::List { email } => {
            let (user, sessions) = rt
                .block_on(operator::sessions(&store, &email))
                .map_err(auth_error)?;
            println!(
                "ID                                    CREATED               LAST USED             IP               USER AGENT"
            );
            for s in &sessions {
                println!(
                    "{}  {}  {}  {:<15}  {}",
                    s.id,
                    s.created_at.format("%Y-%m-%dT%H:%M:%SZ"),
                    s.last_used_at.format("%Y-%m-%dT%H:%M:%SZ"),
                    s.ip.as_deref().unwrap_or("-"),
                    s.user_agent.as_deref().unwrap_or("-")
                );
            }
            println!("{} live sessions of {}", sessions.len(), user.email);
        }
        SessionsCommand::Revoke {
            email: Some(email), ..
        } => {
            let (user, n) = rt
                .block_on(operator::revoke_user(&store, &email))
                .map_err(auth_error)?;
            println!("revoked {n} sessions of {}", user.email);
        }
        SessionsCommand::Revoke {
            session: Some(sid), ..
        } => {
            rt.block_on(operator::revoke_session(&store, sid))
                .map_err(auth_error)?;
            println!("revoked session {sid}");
        }
        SessionsCommand::Revoke { .. } => anyhow::bail!("give --email or --session"),
    }
    Ok(())
}
