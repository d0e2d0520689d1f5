//! kumo-agent: the in-guest init and agent.

fn main() {
    eprintln!("kumo-agent: not built yet");
    std::process::exit(1);
}
