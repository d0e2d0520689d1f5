//! The guest's own GDT and IDT, a stub per vector, and Rust handlers for vectors >= 32.

use core::sync::atomic::{AtomicUsize, Ordering};

/// The registers the common stub saved, then what the CPU pushed.
#[repr(C)]
#[derive(Debug)]
pub struct InterruptFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// Code segment selector of the runtime's GDT (64-bit).
pub const KERNEL_CS: u16 = 0x08;
/// Data segment selector of the runtime's GDT.
pub const KERNEL_DS: u16 = 0x10;

#[repr(C, align(16))]
struct Gdt([u64; 3]);

static GDT: Gdt = Gdt([
    0,
    0x00af_9b00_0000_ffff, // 0x08: 64-bit code, present, DPL 0
    0x00cf_9300_0000_ffff, // 0x10: data, present, writable
]);

#[repr(C, align(16))]
struct Idt([u64; 512]);

static mut IDT: Idt = Idt([0; 512]);

#[repr(C, packed)]
struct Pointer {
    limit: u16,
    base: u64,
}

static HANDLERS: [AtomicUsize; 256] = [const { AtomicUsize::new(0) }; 256];

unsafe extern "C" {
    static __isr_stubs: u8;
}

core::arch::global_asm!(
    r#"
    .text
    .balign 16
    .global __isr_stubs
__isr_stubs:
    .set vec, 0
    .rept 256
    .balign 16
    .if (vec == 8) || (vec >= 10 && vec <= 14) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    .else
    pushq $0
    .endif
    pushq $vec
    jmp __isr_common
    .set vec, vec + 1
    .endr

    .balign 16
__isr_common:
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %rbp
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, %rdi
    cld
    call __interrupt_dispatch
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rbp
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rbx
    pop %rax
    add $16, %rsp
    iretq
    "#,
    options(att_syntax)
);

/// Loads the runtime's GDT and IDT on this CPU (segments reloaded, interrupts still off).
pub fn load_tables() {
    let gdtr = Pointer {
        limit: (core::mem::size_of::<Gdt>() - 1) as u16,
        base: &GDT as *const Gdt as u64,
    };
    let idtr = Pointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: &raw const IDT as u64,
    };
    // SAFETY: both tables are statics that live forever; the far return reloads CS with a
    // valid 64-bit code selector of the new GDT.
    unsafe {
        core::arch::asm!(
            "lgdt [{gdtr}]",
            "lidt [{idtr}]",
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ds, {ds:x}",
            "mov es, {ds:x}",
            "mov ss, {ds:x}",
            "mov fs, {ds:x}",
            "mov gs, {ds:x}",
            gdtr = in(reg) &gdtr,
            idtr = in(reg) &idtr,
            cs = in(reg) KERNEL_CS as u64,
            ds = in(reg) KERNEL_DS as u64,
            tmp = out(reg) _,
        );
    }
}

/// Fills the IDT and loads the tables on the boot CPU.
pub(crate) fn init_bsp() {
    // SAFETY: __isr_stubs is the start of 256 16-byte stubs defined above.
    let stubs = unsafe { &__isr_stubs as *const u8 as u64 };
    for v in 0..256u64 {
        let addr = stubs + 16 * v;
        let low = (addr & 0xffff)
            | ((KERNEL_CS as u64) << 16)
            | (0x8e << 40) // present, DPL 0, 64-bit interrupt gate
            | ((addr >> 16) & 0xffff) << 48;
        let high = addr >> 32;
        // SAFETY: single-threaded at this point (only the BSP runs); index in bounds.
        unsafe {
            (*(&raw mut IDT)).0[2 * v as usize] = low;
            (*(&raw mut IDT)).0[2 * v as usize + 1] = high;
        }
    }
    load_tables();
}

/// Installs `handler` for `vector` (32-255). It runs with interrupts off; the runtime sends
/// the local APIC EOI after it returns.
pub fn set_handler(vector: u8, handler: fn(u8)) {
    assert!(vector >= 32, "vectors below 32 are CPU exceptions");
    HANDLERS[vector as usize].store(handler as usize, Ordering::SeqCst);
}

/// Enables interrupts on this CPU.
pub fn enable() {
    // SAFETY: sti only changes IF.
    unsafe { core::arch::asm!("sti", options(nomem, nostack)) }
}

/// Disables interrupts on this CPU.
pub fn disable() {
    // SAFETY: cli only changes IF.
    unsafe { core::arch::asm!("cli", options(nomem, nostack)) }
}

/// `sti; hlt`: sleeps until an interrupt has been handled (returns with interrupts enabled).
pub fn wait() {
    // SAFETY: sti; hlt atomically enables interrupts and halts until one arrives.
    unsafe { core::arch::asm!("sti; hlt", options(nomem, nostack)) }
}

#[unsafe(no_mangle)]
extern "C" fn __interrupt_dispatch(frame: &mut InterruptFrame) {
    let vector = frame.vector as u8;
    if vector < 32 {
        crate::serial::force_unlock();
        crate::println!(
            "GUEST EXCEPTION vector={} error={:#x} rip={:#x} cr2={:#x}",
            vector,
            frame.error_code,
            frame.rip,
            read_cr2()
        );
        crate::power::reset();
    }
    if vector == crate::apic::SPURIOUS_VECTOR {
        return;
    }
    let h = HANDLERS[vector as usize].load(Ordering::SeqCst);
    if h == 0 {
        crate::println!("GUEST unexpected interrupt vector={}", vector);
    } else {
        // SAFETY: only `set_handler` stores into HANDLERS, always a `fn(u8)`.
        let f: fn(u8) = unsafe { core::mem::transmute::<usize, fn(u8)>(h) };
        f(vector);
    }
    crate::apic::eoi();
}

fn read_cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { core::arch::asm!("mov {}, cr2", out(reg) v, options(nomem, nostack)) };
    v
}
