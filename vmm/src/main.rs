//! The `kumo-vmm` binary: parses its configuration and runs one micro-VM.

fn main() {
    eprintln!("kumo-vmm: not built yet");
    std::process::exit(1);
}
