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
