//! kumo-testkit: what kumo's test suites share, and nothing else. It is a dev-dependency only;
//! no product crate may depend on it.
//!
//! It owns two things:
//!
//! - **Skipping honestly** ([`skip`]): a test that cannot run on this host (not root, a tool
//!   missing, no hardware virtualization) prints `SKIPPED: <test>: <reason>` on stderr, appends
//!   the same line to `$KUMO_SKIP_LOG` (TEAM.md's convention; `scripts/test` lists them at the
//!   end) and returns without failing, together with the checks that decide it ([`is_root`],
//!   [`have_tool`], [`missing_tool`], [`no_hardware_virtualization`]).
//! - **Cleaning up host resources** with Drop guards, so that nothing a test made is left behind
//!   even when it fails: network namespaces ([`Netns`]), network devices such as veth pairs and
//!   TAP devices ([`Netdev`]), child processes ([`ChildGuard`]) and AF_PACKET sockets bound to a
//!   netdev ([`PacketSocket`]); plus [`unique_name`] for the names of such global things and
//!   [`lines_of`] to read a child's output line by line.
//!
//! The product's own code for namespaces, veths and TAPs (kumo's compute backends, the VMM's TAP
//! device) stays product code; these are the test side's guards.

mod netdev;
mod netns;
mod packet;
mod process;
mod skip;

pub use netdev::Netdev;
pub use netns::Netns;
pub use packet::PacketSocket;
pub use process::{ChildGuard, lines_of};
pub use skip::{have_tool, is_root, missing_tool, no_hardware_virtualization, skip};

use std::io;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// A name unique to this test process (namespace and netdev names are global to the host):
/// `prefix`, the process id modulo 100 000, `x`, and a counter. Keep `prefix` short where the
/// name is a netdev's (at most 15 bytes).
pub fn unique_name(prefix: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id() % 100_000,
        SEQ.fetch_add(1, Ordering::SeqCst)
    )
}

/// Runs `args[0]` with the rest as arguments; an error says which command failed and its
/// stderr when it cannot start or exits unsuccessfully.
pub fn run(args: &[&str]) -> io::Result<Output> {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", args.join(" "))))?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(output)
}
