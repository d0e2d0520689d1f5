//! Command-line parsing and dispatch for `kumo`.

mod images;
mod run;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// kumo: a local EC2 built on KVM.
#[derive(Debug, Parser)]
#[command(name = "kumo", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print kumo's data directory ($KUMO_HOME, by default ~/.local/share/kumo).
    Home,
    /// Build, list, locate and register guest images (AMIs and kernels).
    Images(images::ImagesArgs),
    /// Launch one instance in the foreground, show its console and what its user-data did,
    /// then terminate it (EC2's RunInstances without the daemon).
    Run(run::RunArgs),
    /// Internal: the namespace backend's launcher (started by `kumo run`).
    #[command(name = "__namespace-init", hide = true)]
    NamespaceInit(crate::compute::backend::ns_init::NamespaceInitArgs),
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Home => {
            println!("{}", crate::paths::kumo_home().display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Images(args) => images::run(args).map(|()| ExitCode::SUCCESS),
        Command::Run(args) => run::run(args),
        Command::NamespaceInit(args) => crate::compute::backend::ns_init::main(args),
    }
}
