//! The `portcullis` binary: CLI wiring only (API.md §1).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use portcullis::auth::{AuthError, create_account, password::Hasher};
use portcullis::config::{Algorithm, Config, ConfigError};
use portcullis::model::Role;
use portcullis::store::{self, Store};

// When the CLI moves into src/cli/, this becomes `pub mod audit;` in src/cli/mod.rs.
mod cli {
    pub mod audit;
}

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
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user (e.g. the first admin); the password is read from stdin.
    Create {
        /// Email address.
        #[arg(long)]
        email: String,
        /// Role of the new user.
        #[arg(long, value_parser = ["user", "admin"], default_value = "user")]
        role: String,
        /// Read the password from standard input (required: never pass it as an argument).
        #[arg(long, required = true)]
        password_stdin: bool,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Write a new signing key into tokens.keys_dir; it signs from the next start or SIGHUP.
    Generate {
        /// Key algorithm (default: tokens.algorithm); any case (`EdDSA`, `eddsa`).
        #[arg(long, value_enum, ignore_case = true)]
        algorithm: Option<Algorithm>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(ConfigError::Invalid(problems)) => {
            eprintln!("{}: invalid configuration:", cli.config.display());
            for p in &problems {
                eprintln!("  {p}");
            }
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // Held to the end of main: dropping it flushes the log lines still queued.
    let _log = portcullis::telemetry::init_logging(&config.log);
    let result = match cli.command {
        Command::CheckConfig => {
            println!(
                "{}: valid ({} routes, {} upstreams)",
                cli.config.display(),
                config.routes.len(),
                config.upstreams.len()
            );
            Ok(())
        }
        Command::Migrate => migrate(&config, true),
        Command::Serve { upgrade } => serve(config, &cli.config, upgrade),
        Command::User {
            command:
                UserCommand::Create {
                    email,
                    role,
                    password_stdin: _,
                },
        } => create_user(&config, &email, &role),
        Command::Keys {
            command: KeysCommand::Generate { algorithm },
        } => generate_key(&config, algorithm),
        Command::Audit { command } => cli::audit::run(&config, command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")
}

fn migrate(config: &Config, verbose: bool) -> anyhow::Result<()> {
    let url = config.database.url.clone();
    runtime()?.block_on(async move {
        if store::ensure_database(&url).await? {
            println!("created database");
        }
        let applied = store::migrate(&url).await?;
        if verbose && applied.is_empty() {
            println!("no pending migrations");
        }
        for name in applied {
            println!("applied {name}");
        }
        Ok::<_, anyhow::Error>(())
    })
}

fn serve(config: Config, path: &Path, upgrade: bool) -> anyhow::Result<()> {
    if config.database.auto_migrate {
        // Migrations run on their own short-lived runtime, before Pingora owns the process.
        migrate(&config, false).context("auto-migration failed")?;
    }
    let server = portcullis::build_server(config, path, portcullis::StartMode { upgrade })?;
    tracing::info!("portcullis starting");
    // `run` (not `run_forever`, which exits the process) so main's log guard flushes.
    server.run(pingora::server::RunArgs::default());
    Ok(())
}

fn create_user(config: &Config, email: &str, role: &str) -> anyhow::Result<()> {
    let mut password = String::new();
    std::io::stdin()
        .read_to_string(&mut password)
        .context("cannot read the password from stdin")?;
    let password = password
        .strip_suffix('\n')
        .map(|p| p.strip_suffix('\r').unwrap_or(p))
        .unwrap_or(&password)
        .to_string();
    let role = Role::parse(role).context("role must be user or admin")?;
    let store = Store::new(&config.database.url, 2)?;
    let hasher = Hasher::new(&config.passwords)?;
    let user = runtime()?.block_on(create_account(
        &store,
        &hasher,
        &config.passwords,
        email,
        password,
        role,
    ));
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

fn generate_key(config: &Config, algorithm: Option<Algorithm>) -> anyhow::Result<()> {
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
    cli::audit::key_rotated(config, &kid, algorithm.as_str());
    println!("a running gateway picks it up on SIGHUP");
    Ok(())
}
