//! What the `wasmgate` binaries do: parse the command line, set up logging,
//! run the command. It lives in the library so that the runtime-only binary
//! (`host/runtime-only`) is the same program without the compiler.

use anyhow::Context as _;
use clap::Parser as _;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, CloudArgs, CloudCommand, Command, TwinCommand};
use crate::cloud::operator::{self, Session};
use crate::config::{BrokerSettings, Config, ConfigError};
use crate::deploy::admin::{self, Request};
use std::path::Path;

/// The whole program: what `main` of a `wasmgate` binary calls.
pub fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    {
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        let format = tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr);
        tracing_subscriber::registry()
            .with(log_filter())
            .with(format)
            .with(crate::logbook::layer())
            .init();
    }
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// How many malloc arenas the gateway's threads share (see
/// [`limit_malloc_arenas`]).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_ARENAS: i32 = 8;

/// glibc's malloc gives threads that allocate at the same time arenas of
/// their own, up to eight per core, and the pages freed in each stay
/// resident: with ten apps idle, anonymous memory went from 16.3 MiB
/// uncapped to 12.3 MiB with two (BENCHMARKS.md, P6). Two was too few under
/// load, though: at 10,000 devices the link, the telemetry writer and the
/// apps took turns on two arenas' locks, 23,000 to 39,000 futex calls a
/// second; four cut those to 10,000 to 14,000 and the gateway's CPU by 6 to 9
/// points of a core, and eight cut them again, to 6,200 to 8,100, for 0.1
/// to 0.3 MiB more at rest (BENCHMARKS.md, S2 and P6). A `MALLOC_ARENA_MAX`
/// set in the environment is left as it is.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt sets a parameter of glibc's allocator, which it
        // reads under its own lock; it is called before any other thread of
        // ours exists, and touches no memory of ours.
        #[allow(unsafe_code)]
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
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
        Command::Run { config, watch } => serve(&config, watch).map(|()| true),
        Command::Provision { config } => provision(&config),
        Command::Dev { config } => {
            let mut config = Config::load(&config)?;
            if config.cloud.is_none() {
                config.cloud = Some(crate::config::CloudConfig::embedded(&config.gateway_id));
            }
            run_gateway(config, true).map(|()| true)
        }
        Command::New { name, lang, dir } => {
            let app = crate::scaffold::create(&name, lang, &dir)?;
            println!(
                "made {name}, an app in {}, in {}\nbuild and run it there (README.md says which tools the build needs):\n  cd {}\n  {}\n  {}",
                lang.title(),
                app.display(),
                app.display(),
                lang.build_command(),
                crate::scaffold::RUN_COMMAND
            );
            Ok(true)
        }
        Command::Deploy {
            app,
            component,
            model,
            app_config,
            gateway,
        } => {
            let (bytes, model, config) =
                deployment_parts(&component, model.as_deref(), &app_config)?;
            admin(
                &gateway.gateway,
                Request::Deploy {
                    app,
                    component: admin::encode(&bytes),
                    model,
                    config,
                },
            )
        }
        #[cfg(feature = "compiler")]
        Command::Compile {
            component,
            target,
            output,
        } => {
            let bytes = std::fs::read(&component)
                .with_context(|| format!("reading {}", component.display()))?;
            let artifact = crate::engine::precompile(&bytes, target.as_deref())?;
            let output = output.unwrap_or_else(|| component.with_extension("cwasm"));
            std::fs::write(&output, &artifact)
                .with_context(|| format!("writing {}", output.display()))?;
            println!(
                "{}: {} bytes, for {}",
                output.display(),
                artifact.len(),
                target.as_deref().unwrap_or("this machine")
            );
            Ok(true)
        }
        Command::Sim {
            device:
                crate::cli::SimDevice::Modbus {
                    listen,
                    start_temperature,
                },
        } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(async {
                let simulator = crate::sim::Simulator::bind(listen, start_temperature).await?;
                println!("Modbus simulator on tcp://{listen} (Ctrl-C to stop)");
                let stop = CancellationToken::new();
                let run = simulator.run(stop.clone());
                tokio::pin!(run);
                tokio::select! {
                    served = &mut run => served,
                    _ = tokio::signal::ctrl_c() => {
                        stop.cancel();
                        run.await
                    }
                }
            })?;
            Ok(true)
        }
        Command::Completions { shell } => {
            let mut command = <crate::cli::Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "wasmgate", &mut std::io::stdout());
            Ok(true)
        }
        Command::Man { out } => {
            let command = <crate::cli::Cli as clap::CommandFactory>::command();
            clap_mangen::generate_to(command, &out)
                .with_context(|| format!("writing the man pages to {}", out.display()))?;
            println!("man pages written to {}", out.display());
            Ok(true)
        }
        Command::Keygen { name } => {
            let (seed, public) = crate::deploy::signing::generate()?;
            let private = name.with_extension("key");
            let public_path = name.with_extension("pub");
            write_private(&private, &seed)?;
            std::fs::write(&public_path, format!("{public}\n"))
                .with_context(|| format!("writing {}", public_path.display()))?;
            println!("private key: {} (keep it secret)", private.display());
            println!("public key:  {} = {public}", public_path.display());
            println!(
                "trust it on a gateway with, in gateway.toml:\n[deploy]\ntrusted_keys = [\"{public}\"]"
            );
            Ok(true)
        }
        Command::Apps { json, gateway } => {
            let response = admin_response(&gateway.gateway, Request::Apps)?;
            let apps = response.apps.unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string_pretty(&apps)?);
            } else {
                print!("{}", render_apps(&apps));
            }
            Ok(true)
        }
        Command::Logs {
            app,
            lines,
            gateway,
        } => {
            let response = admin_response(&gateway.gateway, Request::Logs { app, lines })?;
            for line in response.lines.unwrap_or_default() {
                println!("{line}");
            }
            if let Some(error) = response.error {
                println!("error: {error}");
            }
            Ok(response.ok)
        }
        Command::Rollback { app, gateway } => admin(&gateway.gateway, Request::Rollback { app }),
        Command::Stop { app, gateway } => admin(&gateway.gateway, Request::Stop { app }),
        Command::Start { app, gateway } => admin(&gateway.gateway, Request::Start { app }),
        Command::Remove { app, gateway } => admin(&gateway.gateway, Request::Remove { app }),
        #[cfg(feature = "server")]
        Command::Cloud(args) if matches!(args.command, CloudCommand::Serve { .. }) => {
            cloud_serve(*args)
        }
        #[cfg(feature = "server")]
        Command::Cloud(args) if matches!(args.command, CloudCommand::Rollout { .. }) => {
            cloud_rollout(*args)
        }
        #[cfg(feature = "server")]
        Command::Cloud(args) if matches!(args.command, CloudCommand::Provisioning { .. }) => {
            cloud_provisioning(*args)
        }
        Command::Cloud(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(cloud(*args))
        }
        Command::Status { config: path, json } => {
            let config = Config::load(&path)?;
            let mut status = crate::status::read(&config)?;
            // A running gateway also tells its live numbers.
            if status.running_pid.is_some()
                && let Ok(response) = admin_response(&path, Request::Apps)
            {
                status.live = response.apps;
                status.link = response.link;
                status.live_outbox = response.outbox;
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.render());
                if let Some(link) = &status.link {
                    println!("\n{}", render_link(link));
                }
                if let Some(error) = status
                    .live_outbox
                    .as_ref()
                    .and_then(|o| o.write_error.as_ref())
                {
                    println!("\noutbox: the database takes no writes: {error}");
                }
                if let Some(live) = &status.live {
                    print!("\nlive:\n{}", render_apps(live));
                }
            }
            Ok(true)
        }
    }
}

/// A component, a model file and KEY=VALUE pairs, read and checked.
type Parts = (
    Vec<u8>,
    Option<serde_json::Value>,
    Option<Vec<(String, String)>>,
);

fn deployment_parts(
    component: &std::path::Path,
    model: Option<&std::path::Path>,
    pairs: &[String],
) -> anyhow::Result<Parts> {
    let bytes =
        std::fs::read(component).with_context(|| format!("reading {}", component.display()))?;
    let model = match model {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Some(
                serde_json::from_str(&text)
                    .with_context(|| format!("{} is not JSON", path.display()))?,
            )
        }
    };
    let config = if pairs.is_empty() {
        None
    } else {
        Some(
            pairs
                .iter()
                .map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .with_context(|| format!("--config {kv:?} is not KEY=VALUE"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?,
        )
    };
    Ok((bytes, model, config))
}

/// Write a file only its owner can read.
fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    writeln!(file, "{text}")?;
    Ok(())
}

/// Send a request to the running gateway of `config`; print its answer.
fn admin(config: &std::path::Path, request: Request) -> anyhow::Result<bool> {
    let response = admin_response(config, request)?;
    match (&response.message, &response.error) {
        (_, Some(error)) => println!("error: {error}"),
        (Some(message), None) => println!("{message}"),
        (None, None) => {}
    }
    Ok(response.ok)
}

fn admin_response(config: &std::path::Path, request: Request) -> anyhow::Result<admin::Response> {
    let config = Config::load(config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(admin::request(
        &admin::socket_path(&config.data_dir),
        &request,
    ))
}

fn render_link(link: &crate::report::LinkInfo) -> String {
    if !link.configured {
        return "cloud: none configured (running offline)".into();
    }
    let mut line = format!(
        "cloud: {}, {} message(s) sent ({} bytes), {} reconnect(s), {} downlink message(s) refused",
        if link.connected {
            "connected"
        } else {
            "not connected"
        },
        link.messages_sent,
        link.bytes_sent,
        link.reconnects,
        link.downlink_refused
    );
    if link.replies_dropped > 0 {
        line.push_str(&format!(", {} repl(ies) dropped", link.replies_dropped));
    }
    line.push_str(&format!(
        ", {} in flight, {} waiting",
        link.in_flight, link.waiting
    ));
    if let Some(error) = &link.last_error {
        line.push_str(&format!("\n  last error: {error}"));
    }
    line
}

fn render_apps(apps: &[crate::deploy::AppReport]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if apps.is_empty() {
        return "no apps\n".into();
    }
    for report in apps {
        let app = &report.app;
        let _ = writeln!(
            out,
            "{} (device {}): version {}, {}{}, {} restart(s)",
            app.name,
            app.device,
            app.version,
            app.state,
            app.error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default(),
            app.restarts
        );
        let _ = writeln!(
            out,
            "  {} events, {} traps, {} calls ({:.1} µs each on average), {:.1} MiB of memory",
            app.events,
            app.traps,
            app.calls,
            if app.calls > 0 {
                app.call_seconds * 1e6 / app.calls as f64
            } else {
                0.0
            },
            app.memory_bytes as f64 / (1 << 20) as f64,
        );
        if !app.capabilities.is_empty() {
            let _ = writeln!(out, "  {}", crate::report::figures_line(&app.capabilities));
        }
        for v in &report.versions {
            let _ = writeln!(
                out,
                "  v{:<4} {} {:<8} {}",
                v.version,
                &v.digest[..12.min(v.digest.len())],
                v.source,
                v.outcome
            );
        }
    }
    out
}

/// Run the gateway until Ctrl-C or SIGTERM.
/// `wasmgate run`: a gateway provisioned by claim first asks for its
/// identity, for as long as it takes.
fn serve(path: &Path, watch: bool) -> anyhow::Result<()> {
    let plan = match Config::load(path) {
        Ok(config) => return run_gateway(config, watch),
        Err(ConfigError::Unprovisioned { plan, .. }) => plan,
        Err(e) => return Err(e.into()),
    };
    until_signal("wasmgate", |shutdown| async move {
        if crate::cloud::provision::until_issued(&plan, &shutdown)
            .await?
            .is_none()
        {
            return Ok(());
        }
        crate::gateway::run(Config::load(path)?, shutdown, watch).await
    })
}

fn run_gateway(config: Config, watch: bool) -> anyhow::Result<()> {
    until_signal("wasmgate", |shutdown| {
        crate::gateway::run(config, shutdown, watch)
    })
}

/// `wasmgate provision`: one request; exit status 1 if it is refused.
fn provision(path: &Path) -> anyhow::Result<bool> {
    let plan = match Config::load(path) {
        Ok(config) => {
            println!("already provisioned as {}", config.gateway_id);
            return Ok(true);
        }
        Err(ConfigError::Unprovisioned { plan, .. }) => plan,
        Err(e) => return Err(e.into()),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match runtime.block_on(crate::cloud::provision::provision(&plan)) {
        Ok(identity) => {
            println!("provisioned as {}", identity.gateway);
            Ok(true)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(false)
        }
    }
}

/// Run a long-lived service on a multi-thread runtime until Ctrl-C or
/// SIGTERM cancels the token it is given.
fn until_signal<F>(
    thread_name: &str,
    service: impl FnOnce(CancellationToken) -> F,
) -> anyhow::Result<()>
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(thread_name)
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        // The signal waiter ends with the service: it is aborted (and
        // awaited) once the service returns, whether a signal came or not.
        let signals = tokio::spawn(wait_for_signal(shutdown.clone()));
        let result = service(shutdown).await;
        signals.abort();
        let _ = signals.await;
        result
    })
}

/// The broker as the operator's flags name it.
fn broker_settings(args: &CloudArgs, client_id: &str) -> anyhow::Result<BrokerSettings> {
    let mut broker =
        BrokerSettings::from_url(&args.broker, client_id).map_err(anyhow::Error::msg)?;
    broker.username = args.username.clone();
    broker.password = args.password.clone().map(secrecy::SecretString::from);
    broker.ca_file = args.ca.clone();
    broker.cert_file = args.cert.clone();
    broker.key_file = args.key.clone();
    broker
        .check()
        .map_err(|e| anyhow::anyhow!("--broker/--ca/--cert/--key: {e}"))?;
    Ok(broker)
}

/// `wasmgate cloud serve`: until SIGINT or SIGTERM.
#[cfg(feature = "server")]
fn cloud_serve(args: CloudArgs) -> anyhow::Result<bool> {
    let CloudCommand::Serve {
        database,
        listen,
        tokens,
        share,
        client_id,
        fleet_ca,
        fleet_ca_key,
    } = &args.command
    else {
        anyhow::bail!("not a serve command");
    };
    let options = crate::server::ServeOptions {
        broker: broker_settings(&args, client_id)?,
        database: database.clone(),
        listen: *listen,
        tokens: tokens.clone(),
        share: share.clone(),
        fleet_ca: fleet_ca.clone().zip(fleet_ca_key.clone()),
    };
    // `run` checks the options before anything starts.
    until_signal("wasmgate-serve", |shutdown| {
        crate::server::run(options, shutdown)
    })
    .map(|()| true)
}

/// What a signed deployment is for: the gateways a selector matches (checked
/// here), or `gateway` alone.
fn deploy_target(
    selector: Option<String>,
    gateway: &str,
) -> anyhow::Result<crate::wire::protocol::DeployTarget> {
    Ok(match selector {
        Some(selector) => {
            crate::wire::selector::Selector::parse(&selector).map_err(anyhow::Error::msg)?;
            crate::wire::protocol::DeployTarget::Selector(selector)
        }
        None => crate::wire::protocol::DeployTarget::Gateway(gateway.to_string()),
    })
}

/// How `cloud deploy` and `cloud rollout create` sign: the keys read, the
/// version (default: the time in milliseconds, so two deployments in one
/// second still grow) and the expiry `valid_hours` from now.
fn deploy_signing(
    key: &[std::path::PathBuf],
    version: Option<u64>,
    valid_hours: u64,
    target: crate::wire::protocol::DeployTarget,
) -> anyhow::Result<operator::DeploySigning> {
    let keys = key
        .iter()
        .map(|k| crate::deploy::signing::load_key(k))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let now_ns = crate::value::now_ns();
    Ok(operator::DeploySigning {
        keys,
        version: version.unwrap_or(now_ns / 1_000_000),
        target,
        expires: now_ns / 1_000_000_000 + valid_hours.clamp(1, 24 * 366) * 3600,
    })
}

/// `wasmgate cloud rollout ...`: through serve's API.
#[cfg(feature = "server")]
fn cloud_rollout(args: CloudArgs) -> anyhow::Result<bool> {
    use crate::cli::RolloutCommand;
    use crate::server::rollout::{Policy, parse_offline, parse_waves};
    let CloudCommand::Rollout {
        server,
        token_file,
        command,
    } = args.command
    else {
        anyhow::bail!("not a rollout command");
    };
    let client = crate::server::client::Client::new(&server, token_file.as_deref())?;
    match command {
        RolloutCommand::Create(create) => {
            let crate::cli::CreateRollout {
                app,
                component,
                key,
                selector,
                gateways,
                waves,
                max_failures,
                rate,
                offline,
                version,
                valid_hours,
                model,
                app_config,
                grants,
                chunk_kib,
            } = *create;
            // Everything is checked before anything is signed or sent.
            let policy = Policy {
                waves: parse_waves(&waves).map_err(anyhow::Error::msg)?,
                max_failures: max_failures / 100.0,
                rate_per_minute: rate,
                offline: parse_offline(&offline).map_err(anyhow::Error::msg)?,
            };
            policy
                .check()
                .map_err(|e| anyhow::anyhow!("--waves/--max-failures/--rate: {e}"))?;
            let (bytes, model, config) =
                deployment_parts(&component, model.as_deref(), &app_config)?;
            let grants = grants.as_deref().map(read_grants).transpose()?;
            let targets: Vec<(String, crate::wire::protocol::DeployTarget)> = match &selector {
                Some(s) => vec![("*".into(), deploy_target(Some(s.clone()), "")?)],
                None => gateways
                    .iter()
                    .map(|g| {
                        (
                            g.clone(),
                            crate::wire::protocol::DeployTarget::Gateway(g.clone()),
                        )
                    })
                    .collect(),
            };
            if targets.is_empty() {
                anyhow::bail!("give --selector, or --gateways with at least one id");
            }
            let mut signing = deploy_signing(&key, version, valid_hours, targets[0].1.clone())?;
            let mut manifests = serde_json::Map::new();
            let mut rollbacks = serde_json::Map::new();
            for (name, target) in targets {
                signing.target = target;
                let manifest = operator::signed_manifest(
                    &app,
                    &bytes,
                    model.clone(),
                    config.clone(),
                    grants.clone(),
                    &signing,
                    chunk_kib << 10,
                );
                let order = operator::signed_rollback(&app, &manifest.sha256, &signing);
                manifests.insert(name.clone(), serde_json::to_value(&manifest)?);
                rollbacks.insert(name, serde_json::to_value(&order)?);
            }
            use base64::Engine as _;
            let body = serde_json::json!({
                "app": app,
                "target": match selector {
                    Some(s) => serde_json::json!({"selector": s}),
                    None => serde_json::json!({"gateways": gateways}),
                },
                "manifests": manifests,
                "rollbacks": rollbacks,
                "component": base64::engine::general_purpose::STANDARD.encode(&bytes),
                "policy": policy,
            });
            let created = client.call("POST", "/rollouts", Some(&body))?;
            println!("{}", created["id"].as_str().unwrap_or("?"));
            eprintln!(
                "rollout {} of {app} to {} gateway(s) created",
                created["id"].as_str().unwrap_or("?"),
                created["gateways"].as_array().map_or(0, Vec::len)
            );
            Ok(true)
        }
        RolloutCommand::Status { id } => {
            let rollout = client.call("GET", &format!("/rollouts/{id}"), None)?;
            print_rollout(&rollout);
            Ok(true)
        }
        RolloutCommand::List => {
            let list = client.call("GET", "/rollouts", None)?;
            for r in list["rollouts"].as_array().into_iter().flatten() {
                println!(
                    "{}  {}  {}  wave {}  {}",
                    r["id"].as_str().unwrap_or("?"),
                    r["app"].as_str().unwrap_or("?"),
                    r["state"].as_str().unwrap_or("?"),
                    r["wave"].as_u64().map_or(0, |w| w + 1),
                    r["counts"]
                );
            }
            Ok(true)
        }
        RolloutCommand::Abort { id } => {
            client.call("POST", &format!("/rollouts/{id}/abort"), None)?;
            println!("rollout {id}: aborting (the gateways that took it are being rolled back)");
            Ok(true)
        }
    }
}

/// `wasmgate cloud provisioning ...`: through serve's API.
#[cfg(feature = "server")]
fn cloud_provisioning(args: CloudArgs) -> anyhow::Result<bool> {
    use crate::cli::ProvisioningCommand;
    let CloudCommand::Provisioning {
        server,
        token_file,
        command,
    } = args.command
    else {
        anyhow::bail!("not a provisioning command");
    };
    let client = crate::server::client::Client::new(&server, token_file.as_deref())?;
    match command {
        ProvisioningCommand::List => {
            let all = client.call("GET", "/provisioning", None)?;
            println!("{}", serde_json::to_string_pretty(&all)?);
        }
        ProvisioningCommand::Claim { name } => {
            let body = serde_json::json!({ "name": name });
            client.call("POST", "/provisioning/claims", Some(&body))?;
            println!("claim {name} accepted");
        }
        ProvisioningCommand::Revoke { name } => {
            client.call("POST", &format!("/provisioning/claims/{name}/revoke"), None)?;
            println!("claim {name} revoked");
        }
        ProvisioningCommand::Release { gateway } => {
            client.call(
                "POST",
                &format!("/provisioning/issued/{gateway}/release"),
                None,
            )?;
            println!("gateway {gateway} released: its next request is issued afresh");
        }
        ProvisioningCommand::Allow {
            serial,
            gateway,
            labels,
            deploy,
        } => {
            let labels = labels
                .iter()
                .map(|l| {
                    l.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .ok_or_else(|| anyhow::anyhow!("--label {l:?}: give NAME=VALUE"))
                })
                .collect::<anyhow::Result<std::collections::BTreeMap<_, _>>>()?;
            let body = serde_json::json!({
                "serial": serial, "gateway": gateway, "labels": labels, "deploy": deploy,
            });
            client.call("POST", "/provisioning/allow", Some(&body))?;
            println!("serial {serial} becomes gateway {gateway}");
        }
    }
    Ok(true)
}

#[cfg(feature = "server")]
fn print_rollout(r: &serde_json::Value) {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
    println!(
        "rollout {} of {}: {}{}",
        text(&r["id"]),
        text(&r["app"]),
        text(&r["state"]),
        r["reason"]
            .as_str()
            .map(|w| format!(" ({w})"))
            .unwrap_or_default()
    );
    for wave in r["waves"].as_array().into_iter().flatten() {
        println!(
            "  wave {}: {}% (reach {}), soak {} s: {}",
            wave["wave"].as_u64().map_or(0, |w| w + 1),
            wave["percent"],
            wave["reach"],
            wave["soak_s"],
            wave["counts"]
        );
    }
    for g in r["gateways"].as_array().into_iter().flatten() {
        println!(
            "  {}  {}  {}",
            text(&g["gateway"]),
            text(&g["state"]),
            text(&g["detail"])
        );
    }
}

/// `wasmgate cloud ...`; `Ok(false)` when the answer was an error.
async fn cloud(args: CloudArgs) -> anyhow::Result<bool> {
    let client_id = format!("wasmgate-cli-{:08x}", crate::value::random_u64() as u32);
    let broker = broker_settings(&args, &client_id)?;
    // Check the arguments before going to the network.
    match &args.command {
        CloudCommand::Twin {
            command: TwinCommand::Get { target } | TwinCommand::Set { target, .. },
        }
        | CloudCommand::Call { target, .. }
        | CloudCommand::Send { target, .. }
        | CloudCommand::Receive { target, .. } => {
            operator::split_target(target)?;
        }
        #[cfg(feature = "server")]
        CloudCommand::Serve { .. } => anyhow::bail!("serve runs on its own"),
        #[cfg(feature = "server")]
        CloudCommand::Rollout { .. } | CloudCommand::Provisioning { .. } => {
            anyhow::bail!("rollouts and provisioning go through serve")
        }
        CloudCommand::Watch { .. }
        | CloudCommand::Devices
        | CloudCommand::Deploy { .. }
        | CloudCommand::RotateKeys { .. } => {}
    }
    let mut session =
        Session::connect(&broker, std::time::Duration::from_secs(args.timeout)).await?;
    match args.command {
        #[cfg(feature = "server")]
        CloudCommand::Serve { .. } => anyhow::bail!("serve runs on its own"),
        #[cfg(feature = "server")]
        CloudCommand::Rollout { .. } | CloudCommand::Provisioning { .. } => {
            anyhow::bail!("rollouts and provisioning go through serve")
        }
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
        CloudCommand::Deploy {
            gateway,
            app,
            component,
            key,
            version,
            selector,
            valid_hours,
            model,
            app_config,
            grants,
            chunk_kib,
        } => {
            let (bytes, model, config) =
                deployment_parts(&component, model.as_deref(), &app_config)?;
            let grants = grants.as_deref().map(read_grants).transpose()?;
            let target = deploy_target(selector, &gateway)?;
            let signing = deploy_signing(&key, version, valid_hours, target)?;
            operator::deploy(
                &mut session,
                &gateway,
                &app,
                &bytes,
                model,
                config,
                grants,
                &signing,
                chunk_kib << 10,
            )
            .await
        }
        CloudCommand::RotateKeys {
            gateway,
            key,
            trust,
            threshold,
            version,
            valid_hours,
        } => {
            let keys = key
                .iter()
                .map(|k| crate::deploy::signing::load_key(k))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let trusted = trust
                .iter()
                .map(|t| {
                    // A .pub file, or the hex itself.
                    let text = match std::fs::read_to_string(t) {
                        Ok(text) => text,
                        Err(_) if t.len() == 64 => t.clone(),
                        Err(e) => anyhow::bail!("--trust {t}: {e}"),
                    };
                    Ok(crate::wire::protocol::RotatedKey {
                        public: text.trim().to_string(),
                        expires: None,
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let now = crate::value::now_ns() / 1_000_000_000;
            let rotation = crate::wire::protocol::KeyRotation {
                format: crate::wire::protocol::DEPLOY_FORMAT,
                id: format!("k-{:016x}", crate::value::random_u64()),
                // Milliseconds: two deployments in one second still grow.
                version: version.unwrap_or(crate::value::now_ns() / 1_000_000),
                target: crate::wire::protocol::DeployTarget::Gateway(gateway.clone()),
                expires: now + valid_hours.clamp(1, 24 * 366) * 3600,
                keys: trusted,
                threshold,
                signatures: Vec::new(),
            };
            operator::rotate_keys(&mut session, &gateway, rotation, &keys).await
        }
        CloudCommand::Call {
            target,
            action,
            argument,
        } => {
            let (gateway, device) = operator::split_target(&target)?;
            operator::call(&mut session, gateway, device, &action, argument.as_deref()).await
        }
        CloudCommand::Send {
            target,
            file,
            name,
            chunk_kib,
            kib_per_s,
            give_up_s,
        } => {
            let (gateway, device) = operator::split_target(&target)?;
            let name = match name {
                Some(name) => name,
                None => file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .ok_or_else(|| {
                        anyhow::anyhow!("{} has no file name: give --name", file.display())
                    })?,
            };
            crate::cloud::transfers::send(
                &mut session,
                gateway,
                device,
                &file,
                &crate::cloud::transfers::SendOptions {
                    name,
                    chunk_bytes: chunk_kib.clamp(1, 1024) << 10,
                    bytes_per_s: kib_per_s << 10,
                    give_up: std::time::Duration::from_secs(give_up_s),
                },
            )
            .await
        }
        CloudCommand::Receive {
            target,
            out,
            count,
            give_up_s,
        } => {
            let (gateway, device) = operator::split_target(&target)?;
            crate::cloud::transfers::receive(
                &mut session,
                gateway,
                device,
                &out,
                count,
                std::time::Duration::from_secs(give_up_s),
            )
            .await
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

/// A grants file (`--grants`): `[app.grants]`'s shape, checked here so a
/// mistake is named before anything is signed or sent.
fn read_grants(path: &std::path::Path) -> anyhow::Result<crate::grants::Grants> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the grants file {}", path.display()))?;
    let grants: crate::grants::Grants = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim_end()))?;
    grants
        .check(true)
        .map_err(|(field, message)| anyhow::anyhow!("{}: {field}: {message}", path.display()))?;
    Ok(grants)
}
