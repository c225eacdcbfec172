//! The `wasmgate` command line.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// wasmgate: a WebAssembly edge runtime for IoT gateways.
#[derive(Debug, Parser)]
#[command(name = "wasmgate", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a gateway and its apps until interrupted (Ctrl-C or SIGTERM).
    Run {
        /// The gateway's config file.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Deploy an app's component again whenever its file changes.
        #[arg(long)]
        watch: bool,
    },
    /// Exchange the claim in the config's [provisioning] for this gateway's
    /// identity from `serve` (once; `run` asks by itself until it has one).
    Provision {
        /// The gateway's config file.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run a gateway for development: as `run`, but with the embedded MQTT
    /// broker on 127.0.0.1:18830 if the config has no [cloud].
    Dev {
        /// The gateway's config file.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Start a new app in PARENT/NAME: its source in LANG, its device model,
    /// the WIT it is built against, a gateway.toml for `wasmgate dev`, and a
    /// README with the one command that builds it and the one that runs it.
    New {
        /// The app's name, as gateway.toml takes it (1 to 64 characters from
        /// A-Z a-z 0-9 _ - .); also the directory's name.
        name: String,
        /// The language of its source.
        #[arg(long, value_enum)]
        lang: crate::scaffold::Language,
        /// The directory to make it in (made if missing); PARENT/NAME must
        /// not exist, or be an empty directory.
        #[arg(long, value_name = "PARENT", default_value = ".")]
        dir: PathBuf,
    },
    /// Speak the cloud protocol through a broker, as the operator does.
    Cloud(Box<CloudArgs>),
    /// Deploy a new version of an app to the running gateway (hot swap).
    Deploy {
        app: String,
        /// The component (.wasm).
        component: PathBuf,
        /// The device model (JSON); needed for a new app, else kept.
        #[arg(long, value_name = "FILE")]
        model: Option<PathBuf>,
        /// App config KEY=VALUE (replaces the app's config when given).
        #[arg(long = "config", value_name = "KEY=VALUE")]
        app_config: Vec<String>,
        #[command(flatten)]
        gateway: GatewayArg,
    },
    /// List the running gateway's apps, their versions and states.
    Apps {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        gateway: GatewayArg,
    },
    /// Show the last lines an app logged in the running gateway.
    Logs {
        app: String,
        /// How many lines (at most 1000 are kept per app).
        #[arg(long, short = 'n', default_value_t = 100)]
        lines: usize,
        #[command(flatten)]
        gateway: GatewayArg,
    },
    /// Go back to the app's previous version.
    Rollback {
        app: String,
        #[command(flatten)]
        gateway: GatewayArg,
    },
    /// Stop an app (it stays stopped across restarts).
    Stop {
        app: String,
        #[command(flatten)]
        gateway: GatewayArg,
    },
    /// Start a stopped app.
    Start {
        app: String,
        #[command(flatten)]
        gateway: GatewayArg,
    },
    /// Remove an app and its versions (its storage and files are kept).
    Remove {
        app: String,
        #[command(flatten)]
        gateway: GatewayArg,
    },
    /// Precompile a component for a gateway of this wasmgate version (which
    /// then loads it without compiling; a runtime-only build needs this).
    #[cfg(feature = "compiler")]
    Compile {
        component: PathBuf,
        /// The gateway's target triple (default: this machine's).
        #[arg(long)]
        target: Option<String>,
        /// Where to write the artifact (default: COMPONENT with .cwasm).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Run a simulated device to develop against, until Ctrl-C.
    Sim {
        #[command(subcommand)]
        device: SimDevice,
    },
    /// Make an ed25519 key pair for signed deployments: NAME.key (private)
    /// and NAME.pub (public, for gateway.toml's [deploy] trusted_keys).
    Keygen { name: PathBuf },
    /// Print the shell's completion script for wasmgate (bash: put it in
    /// /usr/share/bash-completion/completions/wasmgate).
    Completions { shell: clap_complete::Shell },
    /// Write the man pages: wasmgate.1 and one per subcommand
    /// (wasmgate-cloud-rollout-create.1, ...).
    Man {
        /// The directory to write them to (it must exist).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Show a gateway's apps and outbox, whether it is running or not.
    Status {
        /// The gateway's config file.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
}

/// How the operator reaches the broker.
#[derive(Debug, clap::Args)]
pub struct CloudArgs {
    /// The broker: mqtt://HOST[:PORT] or mqtts://HOST[:PORT].
    #[arg(
        long,
        env = "WASMGATE_BROKER",
        default_value = "mqtt://127.0.0.1:18830"
    )]
    pub broker: String,
    #[arg(long, env = "WASMGATE_USERNAME")]
    pub username: Option<String>,
    #[arg(long, env = "WASMGATE_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// PEM CA certificates to trust (mqtts).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// PEM client certificate, for mutual TLS.
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// PEM client key, for mutual TLS.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// How long to wait for the broker and for answers, in seconds.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    #[command(subcommand)]
    pub command: CloudCommand,
}

#[derive(Debug, Subcommand)]
pub enum CloudCommand {
    /// Print telemetry, alerts, twins and statuses as they arrive.
    Watch {
        /// Only this gateway.
        gateway: Option<String>,
    },
    /// List gateways (online or not), their apps and devices.
    Devices,
    /// Read or set a device's twin.
    Twin {
        #[command(subcommand)]
        command: TwinCommand,
    },
    /// Deploy a new version of an app to a gateway through the broker,
    /// signed with KEY, and wait for the outcome.
    Deploy {
        gateway: String,
        app: String,
        /// The component (.wasm).
        component: PathBuf,
        /// A private key to sign with (`wasmgate keygen` makes one); give it
        /// once per key when the gateway's `threshold` asks for more.
        #[arg(long, value_name = "FILE", required = true)]
        key: Vec<PathBuf>,
        /// The app's deployment number, higher than any before it
        /// (default: the time now in milliseconds, which only grows).
        #[arg(long)]
        version: Option<u64>,
        /// Sign it for the gateways whose labels match this selector
        /// (`site=plant-1,ring!=canary`) instead of for GATEWAY alone.
        #[arg(long, value_name = "SELECTOR")]
        selector: Option<String>,
        /// Hours until the signed manifest expires.
        #[arg(long, default_value_t = 24)]
        valid_hours: u64,
        /// The device model (JSON); needed for a new app, else kept.
        #[arg(long, value_name = "FILE")]
        model: Option<PathBuf>,
        /// App config KEY=VALUE (replaces the app's config when given).
        #[arg(long = "config", value_name = "KEY=VALUE")]
        app_config: Vec<String>,
        /// What the app may reach, as a TOML file shaped like
        /// `[app.grants]` (`modbus = [{ endpoint = "tcp://...", units = [1] }]`);
        /// signed with the rest, and refused by a gateway whose `[allow]`
        /// does not cover it. Without it the app keeps its grants.
        #[arg(long, value_name = "FILE")]
        grants: Option<PathBuf>,
        /// Chunk size in KiB.
        #[arg(long, default_value_t = 256)]
        chunk_kib: u64,
    },
    /// Replace the keys a gateway trusts for deployments: a rotation signed
    /// by the keys it trusts now (as many as its threshold), which it keeps
    /// until gateway.toml's own keys change.
    RotateKeys {
        gateway: String,
        /// A private key the gateway trusts now; once per key its
        /// threshold asks for.
        #[arg(long, value_name = "FILE", required = true)]
        key: Vec<PathBuf>,
        /// A public key (`.pub`, or its hex) to trust from now on; once per key.
        #[arg(long, value_name = "PUB", required = true)]
        trust: Vec<String>,
        /// How many of the new keys must sign a deployment.
        #[arg(long, default_value_t = 1)]
        threshold: usize,
        /// The key set's number, higher than any before it (default: the
        /// time now in milliseconds).
        #[arg(long)]
        version: Option<u64>,
        /// Hours until the signed rotation expires.
        #[arg(long, default_value_t = 24)]
        valid_hours: u64,
    },
    /// Send a file to a device (a download, seen from the gateway): in
    /// chunks with its sha256, through broker restarts; it lands in the
    /// device's app's directory as `downloads/NAME` (exit status 1 if the
    /// gateway refused it).
    Send {
        /// GATEWAY/DEVICE
        target: String,
        file: PathBuf,
        /// The name it gets on the gateway (default: the file's name).
        #[arg(long)]
        name: Option<String>,
        /// Chunk size in KiB.
        #[arg(long, default_value_t = 64)]
        chunk_kib: u64,
        /// At most this many KiB a second (0: as fast as it goes).
        #[arg(long, default_value_t = 0)]
        kib_per_s: u64,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        give_up_s: u64,
    },
    /// Receive a device's uploads into a directory, checking each one's
    /// sha256, through broker restarts (exit status 1 if one was corrupt).
    Receive {
        /// GATEWAY/DEVICE
        target: String,
        /// Where the files go.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Stop after this many uploads.
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        give_up_s: u64,
    },
    /// Invoke an action and print its result (exit status 1 on an error).
    Call {
        /// GATEWAY/DEVICE
        target: String,
        action: String,
        /// The argument: JSON (21.5, true, "text") or plain text.
        argument: Option<String>,
    },
    /// Run the server side: keep what the fleet sends in a database
    /// (SQLite, or PostgreSQL) and answer the HTTP API (docs/server.md).
    #[cfg(feature = "server")]
    Serve {
        /// sqlite://FILE (created if missing) or postgres://USER@HOST/DB.
        #[arg(long, env = "WASMGATE_DATABASE", default_value = crate::server::DEFAULT_DATABASE)]
        database: String,
        /// Where the API listens; beyond loopback it needs --tokens.
        #[arg(long, default_value = crate::server::DEFAULT_LISTEN)]
        listen: std::net::SocketAddr,
        /// `ROLE TOKEN` lines (reader or operator), the file its owner's alone.
        #[arg(long, value_name = "FILE")]
        tokens: Option<PathBuf>,
        /// Share the fleet's events with other `serve` instances of this
        /// group (MQTT shared subscriptions); each needs its own --client-id.
        #[arg(long, value_name = "GROUP")]
        share: Option<String>,
        /// The MQTT client id (its persistent session keeps what arrives
        /// while `serve` is down).
        #[arg(long, default_value = "wasmgate-serve")]
        client_id: String,
        /// The fleet CA's certificate (PEM): with it and its key, `serve`
        /// provisions gateways that hold a claim (docs/provisioning.md).
        #[arg(long, value_name = "FILE", requires = "fleet_ca_key")]
        fleet_ca: Option<PathBuf>,
        /// The fleet CA's private key (PEM, its owner's alone).
        #[arg(long, value_name = "FILE", requires = "fleet_ca")]
        fleet_ca_key: Option<PathBuf>,
    },
    /// Roll a signed version of an app out to a fleet in waves, through
    /// `serve`, which halts it and rolls it back when too many gateways
    /// fail (docs/server.md).
    #[cfg(feature = "server")]
    Rollout {
        /// `serve`'s address.
        #[arg(long, env = "WASMGATE_SERVE", default_value = "http://127.0.0.1:8640")]
        server: String,
        /// A file holding an operator token (its owner's alone), for a
        /// `serve` that asks for one.
        #[arg(long, env = "WASMGATE_TOKEN_FILE", value_name = "FILE")]
        token_file: Option<PathBuf>,
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// Provisioning by claim, through `serve`: claims and the allow-list
    /// (docs/provisioning.md).
    #[cfg(feature = "server")]
    Provisioning {
        /// `serve`'s address.
        #[arg(long, env = "WASMGATE_SERVE", default_value = "http://127.0.0.1:8640")]
        server: String,
        /// A file holding an operator token (its owner's alone), for a
        /// `serve` that asks for one.
        #[arg(long, env = "WASMGATE_TOKEN_FILE", value_name = "FILE")]
        token_file: Option<PathBuf>,
        #[command(subcommand)]
        command: ProvisioningCommand,
    },
}

#[cfg(feature = "server")]
#[derive(Debug, Subcommand)]
pub enum ProvisioningCommand {
    /// Claims, the allow-list, the identities issued and the latest requests.
    List,
    /// Accept a claim: a batch certificate's common name, or a claim
    /// token's broker user.
    Claim { name: String },
    /// Revoke a claim: requests made with it are refused from now on.
    Revoke { name: String },
    /// Release GATEWAY's id from the key it was issued for: the next
    /// request for it (a gateway whose data was wiped) is issued afresh.
    Release { gateway: String },
    /// Let the device with SERIAL become gateway ID (replaces its entry).
    Allow {
        serial: String,
        /// The gateway id it is issued.
        #[arg(long = "gateway", value_name = "ID")]
        gateway: String,
        /// A label it is issued, NAME=VALUE (repeat for more).
        #[arg(long = "label", value_name = "NAME=VALUE")]
        labels: Vec<String>,
        /// A rollout (to a label selector) whose version it starts with
        /// (repeat for more).
        #[arg(long = "deploy", value_name = "ROLLOUT")]
        deploy: Vec<String>,
    },
}

#[cfg(feature = "server")]
#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Sign APP's COMPONENT for the target and hand it to `serve` to roll
    /// out; prints the rollout's id.
    Create(Box<CreateRollout>),
    /// A rollout: its waves and each gateway's outcome.
    Status { id: String },
    /// Every rollout, newest first.
    List,
    /// Halt a rollout and roll back the gateways that took its version.
    Abort { id: String },
}

#[derive(Debug, Subcommand)]
pub enum TwinCommand {
    /// Print the device's reported attributes.
    Get {
        /// GATEWAY/DEVICE
        target: String,
    },
    /// Set desired attributes and print what the gateway accepted (exit
    /// status 1 if anything was rejected).
    Set {
        /// GATEWAY/DEVICE
        target: String,
        /// NAME=VALUE, the value as JSON or plain text.
        #[arg(required = true)]
        values: Vec<String>,
    },
}

/// Which running gateway an admin command talks to.
#[derive(Debug, clap::Args)]
pub struct GatewayArg {
    /// The gateway's config file (its data directory holds the admin socket).
    #[arg(long, short = 'g', value_name = "FILE", default_value = "gateway.toml")]
    pub gateway: PathBuf,
}

/// The devices `wasmgate sim` simulates.
#[derive(Debug, clap::Subcommand)]
pub enum SimDevice {
    /// A Modbus TCP room with a heater: input registers 0 (°C × 10) and 1
    /// (% rh × 10), coil 0 (heating).
    Modbus {
        /// Where it listens (loopback only).
        #[arg(long, default_value = "127.0.0.1:5020")]
        listen: std::net::SocketAddr,
        /// The room's temperature at start, °C.
        #[arg(long, default_value_t = 17.5)]
        start_temperature: f64,
    },
}

/// `wasmgate cloud rollout create`.
#[cfg(feature = "server")]
#[derive(Debug, clap::Args)]
pub struct CreateRollout {
    pub app: String,
    /// The component (.wasm).
    pub component: PathBuf,
    /// A private key to sign with; once per key the gateways' threshold asks for.
    #[arg(long, value_name = "FILE", required = true)]
    pub key: Vec<PathBuf>,
    /// The gateways whose labels match (`site=plant-1,ring!=canary`).
    #[arg(
        long,
        value_name = "SELECTOR",
        conflicts_with = "gateways",
        required_unless_present = "gateways"
    )]
    pub selector: Option<String>,
    /// These gateways, by id (comma-separated).
    #[arg(long, value_name = "ID,...", value_delimiter = ',')]
    pub gateways: Vec<String>,
    /// The waves: `PERCENT%[:MIN[:SOAK]]`, comma-separated; SOAK is how
    /// long each gateway must stay healthy after its swap (`30s`, `10m`).
    #[arg(long, default_value = "10%:1:60s,100%:0:60s")]
    pub waves: String,
    /// Halt and roll back once more than this percentage of the gateways
    /// reached so far failed.
    #[arg(long, default_value_t = 0.0)]
    pub max_failures: f64,
    /// New gateways offered per minute at most.
    #[arg(long)]
    pub rate: Option<u32>,
    /// A gateway offline in its wave: `wait` for it, or `fail:SECONDS`.
    #[arg(long, default_value = "wait")]
    pub offline: String,
    /// The app's deployment number (default: the time in milliseconds).
    #[arg(long)]
    pub version: Option<u64>,
    /// Hours until the signed manifests expire.
    #[arg(long, default_value_t = 24)]
    pub valid_hours: u64,
    /// The device model (JSON); needed for a new app, else kept.
    #[arg(long, value_name = "FILE")]
    pub model: Option<PathBuf>,
    /// App config KEY=VALUE (replaces the app's config when given).
    #[arg(long = "config", value_name = "KEY=VALUE")]
    pub app_config: Vec<String>,
    /// What the app may reach (a TOML file shaped like `[app.grants]`).
    #[arg(long, value_name = "FILE")]
    pub grants: Option<PathBuf>,
    /// Chunk size in KiB.
    #[arg(long, default_value_t = 256)]
    pub chunk_kib: u64,
}
