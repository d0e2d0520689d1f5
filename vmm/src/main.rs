//! The `kumo-vmm` binary: parses its configuration, builds the micro-VM and runs it until the
//! guest ends; the exit status and the one-line reason on stderr are documented in the
//! library's top doc.

use clap::Parser;
use kumo_vmm::builder::build_microvm;
use kumo_vmm::config::Args;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KUMO_VMM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();

    let config = match Args::parse().into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kumo-vmm: {e}");
            std::process::exit(2);
        }
    };
    let vmm = match build_microvm(&config) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("kumo-vmm: {e}");
            std::process::exit(1);
        }
    };
    let use_seccomp = std::env::var_os("KUMO_VMM_NO_SECCOMP").is_none();
    let reason = vmm.run(use_seccomp);
    let code = reason.exit_code();
    eprintln!("kumo-vmm: {}", reason.describe());
    // vCPU threads may still be inside KVM_RUN: end the process without joining them.
    std::process::exit(code);
}
