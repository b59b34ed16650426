//! The `keygate` binary: parse flags, load config, run.
use clap::{Parser, Subcommand};
use keygate::config::{Config, Overrides};
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    let result = rt.block_on(async move {
        // Inside the runtime: the OTLP exporter's channel lives on it.
        let telemetry = keygate::telemetry::init(&config.log, &config.otlp_settings());
        let result = match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => {
                let listener = tokio::net::TcpListener::bind(config.listen)
                    .await
                    .map_err(|e| {
                        keygate::error::Error::invalid(
                            "listen",
                            format!("cannot bind {}: {e}", config.listen),
                        )
                    })?;
                keygate::run(config, listener).await
            }
            Command::Migrate => keygate::migrate(&config).await,
        };
        telemetry.shutdown();
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keygate: {e}");
            ExitCode::FAILURE
        }
    }
}
