//! The runtime shared by kumo's tiny test guests: `#![no_std]` code that runs in the 64-bit
//! mode kumo-vmm sets up for an ELF kernel without a PVH note (Linux's 64-bit boot protocol:
//! long mode, the first 4 GiB identity-mapped, `rsi` = the zero page).
//!
//! A guest binary (`src/bin/NAME.rs`) looks like:
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//! use guest::println;
//! guest::entry!(main);
//! fn main() {
//!     println!("hello");
//! }   // returning resets the machine through the i8042, so kumo-vmm exits 0
//! ```
//!
//! What the runtime gives a guest:
//! - [`serial`]: `print!`/`println!` to the 8250 at 0x3f8 (the VMM's console), SMP-safe.
//!   Print large numbers with [`serial::Dec`]: core's decimal formatting uses SSE, which
//!   kvm-pvm cannot run (guests are built without SSE, see `.cargo/config.toml`).
//! - [`boot`]: the zero page kumo-vmm filled: command line, e820 map, and
//!   [`boot::virtio_mmio_devices`] that parses the `virtio_mmio.device=` fragments.
//! - [`io`]: port I/O and volatile MMIO accessors.
//! - [`interrupts`]: its own GDT and an IDT with a stub per vector; [`interrupts::set_handler`]
//!   installs a `fn(vector)` for vectors >= 32, which runs with the LAPIC EOI sent after it.
//!   CPU exceptions print `GUEST EXCEPTION ...` and reset.
//! - [`apic`]: local APIC (enable, id, EOI, IPIs) and I/O APIC routing (`route(pin, vector)`).
//! - [`smp`]: the MP table reader and AP start-up (INIT-SIPI-SIPI through a real-mode trampoline).
//! - [`power`]: `reset()` (i8042 0xfe: kumo-vmm exits 0) and `halt_forever()` (`cli; hlt`).
//! - A panic prints `GUEST PANIC: ...` on the serial port and resets.
//!
//! Memory: the image is linked at 1 MiB (`link.ld`); statics live in `.bss`, identity-mapped,
//! so a static's address is its guest-physical address (handy for virtqueues: see [`dma`]).
#![no_std]

pub mod apic;
pub mod boot;
pub mod dma;
pub mod interrupts;
pub mod io;
pub mod mem;
pub mod power;
pub mod serial;
pub mod smp;
pub mod sync;

/// Defines the guest's entry point: `guest::entry!(main)` with `fn main()`.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn __guest_main() {
            let main: fn() = $main;
            main()
        }
    };
}

core::arch::global_asm!(
    r#"
    .section .text.start, "ax"
    .global _start
    .code64
_start:
    cli
    mov $__stack_top, %rsp
    mov %rsi, %r12
    /* SSE on: CR0.EM=0, CR0.MP=1, CR4.OSFXSR|OSXMMEXCPT (rustc emits SSE). */
    mov %cr0, %rax
    and $~(1 << 2), %rax
    or $(1 << 1), %rax
    mov %rax, %cr0
    mov %cr4, %rax
    or $(3 << 9), %rax
    mov %rax, %cr4
    /* Zero .bss. */
    mov $__bss_start, %rdi
    mov $__bss_end, %rcx
    sub %rdi, %rcx
    xor %eax, %eax
    cld
    rep stosb
    mov %r12, %rdi
    call __guest_start
1:  hlt
    jmp 1b
    "#,
    options(att_syntax)
);

unsafe extern "C" {
    fn __guest_main();
}

/// Called by `_start` with the zero page's address.
#[unsafe(no_mangle)]
extern "C" fn __guest_start(zero_page: u64) -> ! {
    boot::set_zero_page(zero_page);
    interrupts::init_bsp();
    apic::disable_legacy_pic();
    // SAFETY: `__guest_main` is defined by the binary through `entry!`, a plain `extern "C" fn()`.
    unsafe { __guest_main() };
    power::reset()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    serial::force_unlock();
    println!("GUEST PANIC: {}", info);
    power::reset()
}

/// The prebuilt `core` (compiled for unwinding) references this symbol; guests abort on
/// panic and never unwind, so it is never called.
#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() {}
