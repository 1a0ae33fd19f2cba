//! The `portcullis` binary: CLI wiring only (the README's "Command line"); the verbs live in `cli/`.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod cli;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cli::keys::KeysCommand;
use cli::routes::RoutesCommand;
use cli::sessions::SessionsCommand;
use cli::user::UserCommand;
use portcullis::config::{Config, ConfigError, Problem};

/// mimalloc: the proxy path is allocation-heavy (Pingora's per-request buffers) and glibc
/// malloc showed up at ~12% of a protected-route profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "portcullis", version, about = "Reverse-proxy auth gateway")]
struct Cli {
    /// Configuration file.
    #[arg(
        long,
        global = true,
        env = "PORTCULLIS_CONFIG",
        default_value = "config.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Migrate (when database.auto_migrate) and serve until SIGTERM/SIGINT.
    Serve {
        /// Take over the listening sockets of the running instance (binary upgrade or restart
        /// without dropping a connection); then send the old process SIGQUIT.
        #[arg(long)]
        upgrade: bool,
        /// Detach into the background once serving (needs server.pid_file); the starting
        /// process exits 0 when the daemon accepts on its listeners, 1 if it fails first.
        /// For systemd's Type=forking (deploy/portcullis.service).
        #[arg(long)]
        daemon: bool,
    },
    /// Apply pending migrations and print each one applied.
    Migrate,
    /// Validate the configuration and print every problem.
    CheckConfig,
    /// Manage users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// List or revoke sessions.
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// Show the route table or explain how a request is decided.
    Routes {
        #[command(subcommand)]
        command: RoutesCommand,
    },
    /// The data key ring sealing secrets stored in the database.
    Secrets {
        #[command(subcommand)]
        command: cli::secrets::SecretsCommand,
    },
    /// Manage signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Read the audit trail.
    Audit {
        #[command(subcommand)]
        command: cli::audit::AuditCommand,
    },
    /// Move the data between stores (SQLite to PostgreSQL and back).
    Db {
        #[command(subcommand)]
        command: cli::db::DbCommand,
    },
}

/// Whether the arguments name a verb of the README's "Command line" (`routes`, `sessions`, `audit`, `user`
/// other than `create`), whose usage errors exit 1; the v1 verbs keep clap's exit code 2.
fn v2_operator_verb(args: impl Iterator<Item = String>) -> bool {
    let mut words = Vec::new();
    let mut skip_value = false;
    for arg in args {
        if skip_value {
            skip_value = false;
        } else if arg == "--config" {
            skip_value = true;
        } else if !arg.starts_with('-') {
            words.push(arg);
            if words.len() == 2 {
                break;
            }
        }
    }
    match words.first().map(String::as_str) {
        Some("routes" | "sessions" | "audit") => true,
        Some("user") => words.get(1).is_none_or(|verb| verb != "create"),
        _ => false,
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if v2_operator_verb(std::env::args().skip(1)) && e.use_stderr() => {
            // the README's "Command line": the operator verbs exit 1 on bad usage, like on a bad config.
            let _ = e.print();
            return ExitCode::FAILURE;
        }
        Err(e) => e.exit(),
    };
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(ConfigError::Invalid(problems)) => return invalid(&cli.config, &problems),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if matches!(cli.command, Command::CheckConfig | Command::Serve { .. }) {
        // Certificate files are checked where they are used, not by every subcommand; before
        // a daemon detaches, so the problems reach the terminal.
        let mut problems = portcullis::tls::check(&config, &cli.config);
        problems.extend(cli::daemon::check_upgrade_sock(&config, &cli.config));
        if !problems.is_empty() {
            return invalid(&cli.config, &problems);
        }
    }
    // Before any thread exists (the log writer below is one): fork keeps only the caller.
    let mut ready = match cli.command {
        Command::Serve { daemon: true, .. } => {
            if config.server.pid_file.is_none() {
                eprintln!(
                    "{}: serve --daemon needs server.pid_file (how a supervisor finds the daemon)",
                    cli.config.display()
                );
                return ExitCode::FAILURE;
            }
            match cli::daemon::daemonize() {
                Ok(ready) => Some(ready),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::FAILURE;
                }
            }
        }
        _ => None,
    };
    // Held to the end of main: dropping it flushes the log lines still queued.
    let _log = portcullis::telemetry::init_logging(&config.log);
    let serving = matches!(cli.command, Command::Serve { .. });
    let json_log = config.log.format == portcullis::config::LogFormat::Json;
    // A verb's store closes its pooled SQLite connections on a runtime, whenever it is dropped.
    let _runtime = match (serving, cli::enter_runtime()) {
        (true, _) => None,
        (false, Ok(guard)) => Some(guard),
        (false, Err(e)) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::CheckConfig => cli::serve::check_config(&config, &cli.config),
        Command::Migrate => cli::serve::migrate(&config, true),
        Command::Serve { upgrade, .. } => {
            cli::serve::serve(config, &cli.config, upgrade, &mut ready)
        }
        Command::User { command } => cli::user::run(&config, command),
        Command::Sessions { command } => cli::sessions::run(&config, command),
        Command::Routes { command } => cli::routes::run(&config, command),
        Command::Keys { command } => cli::keys::run(&config, command),
        Command::Secrets { command } => cli::secrets::run(&config, command),
        Command::Audit { command } => cli::audit::run(&config, command),
        Command::Db { command } => cli::db::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if serving && json_log => {
            // A log pipeline reading `serve` gets this as a JSON line like every other.
            tracing::error!(error = %format!("{e:#}"), "serve stopped");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints every problem of an invalid configuration; exit 1.
fn invalid(path: &Path, problems: &[Problem]) -> ExitCode {
    eprintln!("{}: invalid configuration:", path.display());
    for p in problems {
        eprintln!("  {p}");
    }
    ExitCode::FAILURE
}
