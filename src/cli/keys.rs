//! `keys generate`.

use std::path::Path;

use clap::Subcommand;
use portcullis::config::{Algorithm, Config};

/// Signing-key verbs.
#[derive(Subcommand)]
pub enum KeysCommand {
    /// Write a new signing key into tokens.keys_dir; it signs from the next start or SIGHUP.
    Generate {
        /// Key algorithm (default: tokens.algorithm); any case (`EdDSA`, `eddsa`).
        #[arg(long, value_enum, ignore_case = true)]
        algorithm: Option<Algorithm>,
    },
}

/// Runs a keys verb.
pub fn run(config: &Config, command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Generate { algorithm } => generate(config, algorithm),
    }
}

fn generate(config: &Config, algorithm: Option<Algorithm>) -> anyhow::Result<()> {
    let algorithm = algorithm.unwrap_or(config.tokens.algorithm);
    let (kid, path) =
        portcullis::tokens::generate_key(Path::new(&config.tokens.keys_dir), algorithm)?;
    println!(
        "wrote {} key {kid} to {}",
        algorithm.as_str(),
        path.display()
    );
    if algorithm != config.tokens.algorithm {
        println!(
            "note: tokens.algorithm is {}; this key is only used after switching to {}",
            config.tokens.algorithm.as_str(),
            algorithm.as_str()
        );
    }
    super::audit::key_rotated(config, &kid, algorithm.as_str());
    println!("a running gateway picks it up on SIGHUP");
    Ok(())
}
