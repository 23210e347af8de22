//! The `sessiongate` command: run the proxy, check a config, make a secret.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sessiongate::config::Config;
use sessiongate::server::Server;

#[derive(Parser)]
#[command(
    name = "sessiongate",
    version,
    about = "A reverse proxy that gives an unchanged web application secure server-side sessions"
)]
struct Cli {
    /// The configuration file.
    #[arg(long, short, global = true, default_value = "config.yaml")]
    config: PathBuf,
    /// Use an ephemeral random secret when none is configured (sessions do not
    /// survive a restart). For local development only.
    #[arg(long)]
    dev: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration and print it with defaults filled in (secrets redacted).
    Check,
    /// Print a new random secret for `session.secrets`.
    GenSecret,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::GenSecret) => {
            let secret = sessiongate::cookie::random_secret();
            println!("{}", String::from_utf8_lossy(&secret));
            ExitCode::SUCCESS
        }
        Some(Command::Check) => match Config::load(&cli.config, cli.dev) {
            Ok(config) => {
                print!("{}", config.to_redacted_yaml());
                eprintln!("{}: ok", cli.config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {:#}", anyhow::Error::from(e));
                ExitCode::FAILURE
            }
        },
        None => match run(&cli) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let config = Config::load(&cli.config, cli.dev)?;
    sessiongate::logging::init(&config.log);
    if config.dev_secret {
        tracing::warn!(
            "--dev: using an ephemeral random secret; sessions end when the process stops"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let server = Server::bind(config).await?;
        server.run(shutdown_signal()).await?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
