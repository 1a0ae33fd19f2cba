//! `portcullis audit tail`, and the `key_rotated` event of `keys generate`.

use anyhow::{Context, bail};
use clap::Subcommand;

use portcullis::auth::{ClientInfo, audit, email};
use portcullis::config::Config;
use portcullis::model::AuditKind;
use portcullis::store::{AuditQuery, Store};

/// `portcullis audit …`
#[derive(Subcommand)]
pub enum AuditCommand {
    /// Print the latest audit events, newest first, one JSON object a line.
    Tail {
        /// Only events about this account.
        #[arg(long)]
        email: Option<String>,
        /// Only this event (e.g. login_failed).
        #[arg(long)]
        event: Option<String>,
        /// How many events (1 to 10000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        limit: i64,
    },
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")
}

/// Runs an `audit` subcommand.
pub fn run(config: &Config, command: AuditCommand) -> anyhow::Result<()> {
    let AuditCommand::Tail {
        email: raw_email,
        event,
        limit,
    } = command;
    let event = match event {
        Some(e) => match AuditKind::parse(&e) {
            Some(kind) => Some(kind.as_str().to_string()),
            None => bail!(
                "unknown event {e}; one of: {}",
                AuditKind::ALL.map(AuditKind::as_str).join(", ")
            ),
        },
        None => None,
    };
    let store = Store::new(&config.database.url, 1)?;
    let canonical = raw_email.as_deref().map(email::canonical);
    let events = runtime()?.block_on(async {
        if let Some(c) = &canonical
            && store.find_user_by_email(c).await?.is_none()
        {
            bail!(
                "no user with email {}",
                raw_email.as_deref().unwrap_or_default()
            );
        }
        let query = AuditQuery {
            email_canonical: canonical.clone(),
            event,
            limit,
            ..AuditQuery::default()
        };
        Ok(store.list_audit(&query).await?)
    })?;
    for e in events {
        println!("{}", serde_json::to_string(&e)?);
    }
    Ok(())
}

/// Records `key_rotated` for a key `keys generate` wrote; a database that cannot be reached
/// is a warning (the key is written either way).
pub fn key_rotated(config: &Config, kid: &str, algorithm: &str) {
    let result = runtime().map(|rt| {
        rt.block_on(async {
            let store = Store::new(&config.database.url, 1)?;
            let detail = serde_json::json!({"kid": kid, "algorithm": algorithm});
            let event = audit::event(
                AuditKind::KeyRotated,
                None,
                None,
                &ClientInfo::default(),
                detail,
            );
            audit::record(&store, event).await;
            Ok::<_, anyhow::Error>(())
        })
    });
    if let Err(e) | Ok(Err(e)) = result {
        tracing::warn!(error = %e, "key_rotated not recorded in the audit trail");
    }
}
