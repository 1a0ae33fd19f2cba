//! `secrets rotate`: after a new first line was put in the data key ring and every instance
//! was sent SIGHUP, re-seal every stored secret under it; then the old line can go.

use clap::Subcommand;
use portcullis::config::Config;
use portcullis::secrets::{self, Secrets};

use super::{runtime, store};

/// Data key ring verbs.
#[derive(Subcommand)]
pub enum SecretsCommand {
    /// Re-seal every secret stored in the database under the key ring's first key (one
    /// transaction: a secret no key opens fails the run and nothing is written).
    Rotate,
}

/// Runs a secrets verb.
pub fn run(config: &Config, command: SecretsCommand) -> anyhow::Result<()> {
    match command {
        SecretsCommand::Rotate => {
            let ring = Secrets::load(secrets::source(config), false)?;
            let key = ring.ring().current_id().to_string();
            let store = store(config)?;
            store.use_secrets(ring);
            let done = runtime()?.block_on(store.reseal_secrets())?;
            println!(
                "sealed {} stored secrets under key {key} ({} already were)",
                done.resealed, done.current
            );
            println!(
                "once every instance has reloaded the ring (SIGHUP), older keys may be removed"
            );
            Ok(())
        }
    }
}
