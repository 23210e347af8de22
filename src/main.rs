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
    #[arg(long, global = true)]
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
    /// Write a self-signed development certificate and key (never for production).
    GenCert {
        /// Directory for dev-cert.pem and dev-key.pem.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Names the certificate is valid for.
        #[arg(long = "name", default_values = ["localhost", "127.0.0.1", "::1"])]
        names: Vec<String>,
    },
    /// Exit 0 when the admin listener's /healthz (of the config's `admin.listen`), or
    /// the URL given, answers 200 (a container HEALTHCHECK without a shell).
    Healthcheck {
        /// Probe this URL instead of the config's admin listener.
        #[arg(long)]
        url: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::GenSecret) => {
            let secret = sessiongate::cookie::random_secret();
            println!("{}", String::from_utf8_lossy(&secret));
            ExitCode::SUCCESS
        }
        Some(Command::GenCert { dir, names }) => match sessiongate::devcert::write(&dir, &names) {
            Ok((cert, key)) => {
                println!(
                    "wrote {} and {} (self-signed, for development only)",
                    cert.display(),
                    key.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {:#}", anyhow::Error::from(e));
                ExitCode::FAILURE
            }
        },
        Some(Command::Healthcheck { url }) => {
            let url = match url {
                Some(url) => url,
                None => match health_url(&cli.config) {
                    Ok(url) => url,
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        return ExitCode::FAILURE;
                    }
                },
            };
            match sessiongate::devcert::healthcheck(&url) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("unhealthy: {url}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::Check) => match Config::load(&cli.config, cli.dev) {
            Ok(config) => {
                print!("{}", config.to_redacted_yaml());
                for warning in file_warnings(&config) {
                    eprintln!("warning: {warning}");
                }
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

/// What `check` says about files the proxy would start with but not use as they
/// are: a snapshot it cannot read is moved aside at start, and the store starts
/// empty.
fn file_warnings(config: &Config) -> Vec<String> {
    let mut warnings = Vec::new();
    if let Some(path) = &config.store.snapshot {
        if let Err(e) = sessiongate::session::snapshot::check_header(path) {
            warnings.push(format!(
                "store.snapshot: {}: {}; at start it is moved aside and the store starts empty",
                path.display(),
                sessiongate::chain::Chain(&e)
            ));
        }
    }
    warnings
}

/// The admin listener's `/healthz` from the config file. The secret plays no part in a
/// health probe, so a config whose secret variable is unset still names its listener.
fn health_url(path: &std::path::Path) -> anyhow::Result<String> {
    let config = Config::load(path, true)?;
    let Some(admin) = config.admin.listen else {
        anyhow::bail!(
            "{}: admin.listen is null, so there is no /healthz to probe; set it or pass --url",
            path.display()
        );
    };
    // A wildcard listener is probed on loopback.
    let ip = match admin.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    Ok(format!(
        "http://{}/healthz",
        std::net::SocketAddr::new(ip, admin.port())
    ))
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let config = Config::load(&cli.config, cli.dev)?;
    let levels = sessiongate::logging::init(&config.log);
    if config.dev_secret {
        tracing::warn!(
            "--dev: using an ephemeral random secret; sessions end when the process stops"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let path = cli.config.clone();
    let dev = cli.dev;
    runtime.block_on(async {
        // Listen for SIGHUP before the first "listening" line: a reload sent right
        // after start must not meet the default action (terminate).
        let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let shutdown = shutdown_signal()?;
        let server = Server::bind(config).await?;
        tokio::spawn(reload_on_sighup(hup, server.reloader(), path, dev, levels));
        server.run(shutdown).await?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Reloads the configuration and certificates on every SIGHUP; a bad file is
/// logged with its line and key, and the running configuration stays.
async fn reload_on_sighup(
    mut hup: tokio::signal::unix::Signal,
    reloader: sessiongate::server::Reloader,
    path: PathBuf,
    dev: bool,
    levels: sessiongate::logging::LevelHandle,
) {
    while hup.recv().await.is_some() {
        match reloader.reload(&path, dev) {
            Ok(settings) => {
                levels.set(&settings.config.log.level);
                tracing::info!(file = %path.display(), "configuration reloaded");
            }
            Err(e) => tracing::error!(
                "reload failed, the running configuration stays: {:#}",
                anyhow::Error::from(e)
            ),
        }
    }
}

/// Listens for SIGTERM and SIGINT from now on (so a signal sent right after start
/// still drains and saves); the future completes on either.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}
