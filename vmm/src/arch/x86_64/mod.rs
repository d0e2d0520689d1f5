//! x86_64: the guest-physical layout and the pure functions that build what a guest sees at
//! entry (boot params and e820, MP table, CPUID, MSRs, LAPIC, registers, GDT, page tables).
//! Nothing here talks to KVM; `vstate` applies these values.

pub mod boot_params;
pub mod cpuid;
pub mod lapic;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;
