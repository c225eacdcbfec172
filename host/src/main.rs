//! The `wasmgate` binary: parse the command line, set up logging, run.

use anyhow::Context as _;
use clap::Parser as _;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use wasmgate::cli::{Cli, CloudArgs, CloudCommand, Command, TwinCommand};
use wasmgate::cloud::operator::{self, Session};
use wasmgate::config::{BrokerSettings, Config};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// RUST_LOG if set (default `info`). The embedded broker (rumqttd) logs
/// every connection, and some ordinary disconnects as errors; it is silent
/// unless RUST_LOG names it.
fn log_filter() -> EnvFilter {
    let spec = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty());
    let spec = spec.unwrap_or_else(|| "info".to_string());
    let quiet_broker = !spec.contains("rumqttd");
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|e| {
        eprintln!("warning: RUST_LOG={spec:?} is not a valid filter ({e}); using info");
        EnvFilter::new("info")
    });
    match "rumqttd=off".parse() {
        Ok(directive) if quiet_broker => filter.add_directive(directive),
        _ => filter,
    }
}

fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Command::Run { config } => serve(Config::load(&config)?).map(|()| true),
        Command::Dev { config } => {
            let mut config = Config::load(&config)?;
            if config.cloud.is_none() {
                config.cloud = Some(wasmgate::config::CloudConfig::embedded(&config.gateway_id));
            }
            serve(config).map(|()| true)
        }
        Command::Cloud(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(cloud(args))
        }
        Command::Status { config, json } => {
            let config = Config::load(&config)?;
            let status = wasmgate::status::read(&config)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.render());
            }
            Ok(true)
        }
    }
}

/// Run the gateway until Ctrl-C or SIGTERM.
fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("wasmgate")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(wait_for_signal(shutdown.clone()));
        wasmgate::gateway::run(config, shutdown).await
    })
}

/// `wasmgate cloud ...`; `Ok(false)` when the answer was an error.
async fn cloud(args: CloudArgs) -> anyhow::Result<bool> {
    let client_id = format!("wasmgate-cli-{:08x}", wasmgate::cloud::random_u64() as u32);
    let mut broker =
        BrokerSettings::from_url(&args.broker, &client_id).map_err(anyhow::Error::msg)?;
    broker.username = args.username;
    broker.password = args.password;
    broker.ca_file = args.ca;
    broker.cert_file = args.cert;
    broker.key_file = args.key;
    broker
        .check()
        .map_err(|e| anyhow::anyhow!("--broker/--ca/--cert/--key: {e}"))?;
    // Check the arguments before going to the network.
    match &args.command {
        CloudCommand::Twin {
            command: TwinCommand::Get { target } | TwinCommand::Set { target, .. },
        }
        | CloudCommand::Call { target, .. } => {
            operator::split_target(target)?;
        }
        CloudCommand::Watch { .. } | CloudCommand::Devices => {}
    }
    let mut session =
        Session::connect(&broker, std::time::Duration::from_secs(args.timeout)).await?;
    match args.command {
        CloudCommand::Watch { gateway } => operator::watch(&mut session, gateway.as_deref())
            .await
            .map(|()| true),
        CloudCommand::Devices => operator::devices(&mut session).await.map(|()| true),
        CloudCommand::Twin {
            command: TwinCommand::Get { target },
        } => {
            let (gateway, device) = operator::split_target(&target)?;
            operator::twin_get(&mut session, gateway, device)
                .await
                .map(|()| true)
        }
        CloudCommand::Twin {
            command: TwinCommand::Set { target, values },
        } => {
            let (gateway, device) = operator::split_target(&target)?;
            operator::twin_set(&mut session, gateway, device, &values).await
        }
        CloudCommand::Call {
            target,
            action,
            argument,
        } => {
            let (gateway, device) = operator::split_target(&target)?;
            operator::call(&mut session, gateway, device, &action, argument.as_deref()).await
        }
    }
}

/// Cancel `shutdown` on Ctrl-C or SIGTERM.
async fn wait_for_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::warn!("cannot listen for SIGTERM: {e}");
                    let _ = ctrl_c.await;
                    shutdown.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    shutdown.cancel();
}
