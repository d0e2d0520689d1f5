//! `kumo`: the local EC2's command-line interface; `kumo serve` will be the daemon.
//!
//! Each subcommand lives in its own module under `src/cli/`.

mod cli;
mod compute;
mod images;
mod paths;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

fn main() -> Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kumo_net=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = cli::Cli::parse();
    cli::run(args)
}
