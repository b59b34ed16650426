//! The command line: flags, subcommands, and what each runs.
use crate::config::{Config, Overrides};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "keygate", version, about = "API-key authorization service")]
struct Cli {
    /// TOML config file (also KEYGATE_CONFIG).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// gRPC listen address (also KEYGATE_LISTEN).
    #[arg(long, global = true)]
    listen: Option<String>,
    /// sqlite://keygate.db or postgres://… (also KEYGATE_DATABASE_URL).
    #[arg(long, global = true)]
    database_url: Option<String>,
    /// Apply pending migrations on start (also KEYGATE_AUTO_MIGRATE).
    #[arg(long, global = true)]
    auto_migrate: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve gRPC (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Manage admin tokens (stored as hashes; each shown once when created).
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Load and validate the configuration (file, environment, flags), then exit: 0 when
    /// it is valid, 2 with the offending setting named when not.
    CheckConfig,
    /// Offline tools for API keys.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create an admin token and print it once on stdout.
    Create {
        /// `admin` (all KeyAdmin calls) or `viewer` (reads and usage only).
        #[arg(long, default_value = "admin")]
        role: String,
        /// Limit the token to one tenant; default: every tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// What the token is for (shown by `admin list`).
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List admin tokens: id, role, tenant (* = all), state, description.
    List,
    /// Revoke an admin token by id; every server stops accepting it within 5 s.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Tell a key's prefix and environment and whether its checksum holds, without any
    /// lookup. Pass `-` to read the key from stdin (keeps it out of shell history).
    Inspect { key: String },
}

/// What the `keygate` binary does: parse the flags, load the configuration, run the
/// command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Needs no configuration, database or runtime.
    if let Some(Command::Key {
        command: KeyCommand::Inspect { key },
    }) = &cli.command
    {
        return inspect(key);
    }
    let overrides = Overrides {
        listen: cli.listen,
        database_url: cli.database_url,
        auto_migrate: cli.auto_migrate.then_some(true),
    };
    let config = match Config::load(cli.config, overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("keygate: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keygate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Work still on the blocking pool (an argon2 verify whose caller is gone) must not hold
    // the process past the grace period: dropping a runtime waits for it,
    // `shutdown_timeout` does not. By then the server has drained (within the grace
    // period) and flushed what it buffered, so nothing left there is worth waiting for.
    let leftover = std::time::Duration::from_secs(config.shutdown_grace_secs)
        .min(std::time::Duration::from_millis(250));
    let result = rt.block_on(async move {
        // Inside the runtime: the OTLP exporter's channel lives on it.
        let telemetry = crate::telemetry::init(&config.log, &config.otlp);
        let result = match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => {
                let listener = tokio::net::TcpListener::bind(config.listen)
                    .await
                    .map_err(|e| {
                        crate::error::Error::invalid(
                            "listen",
                            format!("cannot bind {}: {e}", config.listen),
                        )
                    })?;
                crate::app::run(config, listener).await
            }
            Command::Migrate => crate::app::migrate(&config).await,
            Command::Admin { command } => admin(&config, command).await,
            Command::Key { .. } => Ok(()),
            Command::CheckConfig => {
                eprintln!("keygate: configuration OK");
                Ok(())
            }
        };
        telemetry.shutdown();
        result
    });
    rt.shutdown_timeout(leftover);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keygate: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn admin(config: &Config, command: AdminCommand) -> crate::error::Result<()> {
    match command {
        AdminCommand::Create {
            role,
            tenant,
            description,
        } => {
            let (record, token) =
                super::create_admin_token(config, &role, tenant, &description).await?;
            eprintln!(
                "keygate: created admin token {} (role {}, tenant {}); it is shown once, below",
                record.id,
                record.role.as_str(),
                record.tenant_id.as_deref().unwrap_or("*")
            );
            println!("{token}");
        }
        AdminCommand::List => {
            println!("id\trole\ttenant\tstate\tdescription");
            for line in super::list_admin_tokens(config).await? {
                println!("{line}");
            }
        }
        AdminCommand::Revoke { id } => {
            super::revoke_admin_token(config, &id).await?;
            eprintln!("keygate: revoked admin token {id}");
        }
    }
    Ok(())
}

fn inspect(key: &str) -> ExitCode {
    let key = if key == "-" {
        let mut line = String::new();
        if std::io::stdin().read_line(&mut line).is_err() {
            eprintln!("keygate: could not read a key from stdin");
            return ExitCode::from(2);
        }
        line
    } else {
        key.to_owned()
    };
    let report = super::inspect_key(&key);
    println!("{report}");
    if report["well_formed"] == true {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
