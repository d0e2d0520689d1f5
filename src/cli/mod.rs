//! Command-line parsing and dispatch for `kumo`.

mod images;

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
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Home => {
            println!("{}", crate::paths::kumo_home().display());
            Ok(())
        }
        Command::Images(args) => images::run(args),
    }
}
