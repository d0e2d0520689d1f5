//! The MP table kumo-vmm writes (Intel MultiProcessor Specification 1.4), and starting the
//! other vCPUs the way an OS does: INIT, then two STARTUP IPIs to a real-mode trampoline that
//! climbs to long mode on the BSP's page tables.

use crate::apic;
use crate::io::{read8, read16, read32};
use core::sync::atomic::{AtomicUsize, Ordering};

/// At most this many CPUs are tracked (kumo-vmm allows 1-32 vCPUs).
pub const MAX_CPUS: usize = 32;

/// What the MP table says.
#[derive(Clone, Copy, Debug)]
pub struct MpTable {
    /// Guest-physical address of the floating pointer structure.
    pub floating_pointer: u64,
    /// Whether both checksums (floating pointer and configuration table) are right.
    pub checksums_ok: bool,
    /// The local APIC address the table gives.
    pub lapic_addr: u32,
    /// APIC ids of the enabled processors, in table order.
    pub cpus: [u8; MAX_CPUS],
    /// How many entries of `cpus` are valid.
    pub cpu_count: usize,
    /// APIC id of the processor flagged as the BSP.
    pub bsp_apic_id: u8,
    /// I/O APIC entries (id, address) seen; only the first is kept.
    pub ioapic: Option<(u8, u32)>,
    /// Number of I/O interrupt assignment entries.
    pub io_interrupts: usize,
    /// Number of local interrupt assignment entries.
    pub local_interrupts: usize,
}

fn checksum(addr: u64, len: u64) -> u8 {
    (0..len).fold(0u8, |s, i| s.wrapping_add(read8(addr + i)))
}

fn find_floating_pointer() -> Option<u64> {
    let ebda = (read16(0x40e) as u64) << 4;
    let mut areas = [(0x9fc00u64, 0x400u64), (0xf0000, 0x10000), (0, 0)];
    if ebda != 0 {
        areas[2] = (ebda, 0x400);
    }
    for (start, len) in areas {
        let mut a = start;
        while a + 16 <= start + len {
            if read32(a) == u32::from_le_bytes(*b"_MP_") {
                return Some(a);
            }
            a += 16;
        }
    }
    None
}

/// Finds and reads the MP table, or `None` if there is none.
pub fn mp_table() -> Option<MpTable> {
    let fp = find_floating_pointer()?;
    let fp_len = read8(fp + 8) as u64 * 16;
    let mut ok = checksum(fp, fp_len.max(16)) == 0;
    let cfg = read32(fp + 4) as u64;
    if cfg == 0 || read32(cfg) != u32::from_le_bytes(*b"PCMP") {
        return None;
    }
    let base_len = read16(cfg + 4) as u64;
    ok &= checksum(cfg, base_len) == 0;
    let count = read16(cfg + 34) as usize;
    let mut t = MpTable {
        floating_pointer: fp,
        checksums_ok: ok,
        lapic_addr: read32(cfg + 36),
        cpus: [0; MAX_CPUS],
        cpu_count: 0,
        bsp_apic_id: 0,
        ioapic: None,
        io_interrupts: 0,
        local_interrupts: 0,
    };
    let mut e = cfg + 44;
    for _ in 0..count {
        if e >= cfg + base_len {
            break;
        }
        match read8(e) {
            0 => {
                let (id, flags) = (read8(e + 1), read8(e + 3));
                if flags & 1 != 0 && t.cpu_count < MAX_CPUS {
                    t.cpus[t.cpu_count] = id;
                    t.cpu_count += 1;
                }
                if flags & 2 != 0 {
                    t.bsp_apic_id = id;
                }
                e += 20;
            }
            2 => {
                if t.ioapic.is_none() {
                    t.ioapic = Some((read8(e + 1), read32(e + 4)));
                }
                e += 8;
            }
            3 => {
                t.io_interrupts += 1;
                e += 8;
            }
            4 => {
                t.local_interrupts += 1;
                e += 8;
            }
            1 => e += 8,
            _ => break,
        }
    }
    Some(t)
}

/// Where the real-mode trampoline is copied (a STARTUP IPI vector of 0x10).
const TRAMPOLINE: u64 = 0x10000;
const AP_STACK_SIZE: usize = 16 * 1024;

#[repr(C, align(16))]
struct Stacks([[u8; AP_STACK_SIZE]; MAX_CPUS]);
static mut AP_STACKS: Stacks = Stacks([[0; AP_STACK_SIZE]; MAX_CPUS]);

static AP_MAIN: AtomicUsize = AtomicUsize::new(0);
static STARTED: AtomicUsize = AtomicUsize::new(0);
static NEXT_INDEX: AtomicUsize = AtomicUsize::new(1);

unsafe extern "C" {
    static __trampoline_start: u8;
    static __trampoline_end: u8;
    static __trampoline_cr3: u8;
    static __trampoline_stack: u8;
    static __trampoline_entry: u8;
}

core::arch::global_asm!(
    r#"
    .section .rodata.trampoline, "a"
    .balign 16
    .global __trampoline_start, __trampoline_end
    .global __trampoline_cr3, __trampoline_stack, __trampoline_entry
    .set TB, 0x10000
__trampoline_start:
    .code16
    cli
    cld
    mov %cs, %ax
    mov %ax, %ds
    lgdtl (__tr_gdtr - __trampoline_start)
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $0x08, $(TB + __tr_32 - __trampoline_start)
    .code32
__tr_32:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %cr4, %eax
    or $((1 << 5) | (3 << 9)), %eax
    mov %eax, %cr4
    mov (TB + __trampoline_cr3 - __trampoline_start), %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx
    rdmsr
    or $(1 << 8), %eax
    wrmsr
    mov %cr0, %eax
    and $~(1 << 2), %eax
    or $((1 << 31) | (1 << 1) | 1), %eax
    mov %eax, %cr0
    ljmpl $0x18, $(TB + __tr_64 - __trampoline_start)
    .code64
__tr_64:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov (TB + __trampoline_stack - __trampoline_start), %rsp
    mov (TB + __trampoline_entry - __trampoline_start), %rax
    jmp *%rax
    .balign 8
__tr_gdt:
    .quad 0
    .quad 0x00cf9b000000ffff
    .quad 0x00cf93000000ffff
    .quad 0x00af9b000000ffff
__tr_gdtr:
    .word 4 * 8 - 1
    .long TB + __tr_gdt - __trampoline_start
    .balign 8
__trampoline_cr3:
    .quad 0
__trampoline_stack:
    .quad 0
__trampoline_entry:
    .quad 0
__trampoline_end:
    .text
    "#,
    options(att_syntax)
);

extern "C" fn ap_entry() -> ! {
    crate::interrupts::load_tables();
    apic::enable_local();
    let index = NEXT_INDEX.fetch_add(1, Ordering::SeqCst);
    STARTED.fetch_add(1, Ordering::SeqCst);
    let main = AP_MAIN.load(Ordering::SeqCst);
    if main != 0 {
        // SAFETY: only `start_aps` stores into AP_MAIN, always a `fn(usize)`.
        let f: fn(usize) = unsafe { core::mem::transmute::<usize, fn(usize)>(main) };
        f(index);
    }
    crate::power::halt_forever()
}

fn sym(s: &u8) -> u64 {
    s as *const u8 as u64
}

/// Starts every enabled CPU in `table` other than this one; each runs `ap_main(index)` (index
/// 1, 2, ... in start order) and then halts. Returns how many started within the time allowed.
pub fn start_aps(table: &MpTable, ap_main: fn(usize)) -> usize {
    AP_MAIN.store(ap_main as usize, Ordering::SeqCst);
    // SAFETY: the trampoline symbols are defined in the asm above.
    let (start, end, cr3v, stackv, entryv) = unsafe {
        (
            sym(&__trampoline_start),
            sym(&__trampoline_end),
            sym(&__trampoline_cr3),
            sym(&__trampoline_stack),
            sym(&__trampoline_entry),
        )
    };
    let len = end - start;
    // SAFETY: 0x10000.. is free low RAM in kumo-vmm's layout; copying the trampoline there.
    unsafe { core::ptr::copy_nonoverlapping(start as *const u8, TRAMPOLINE as *mut u8, len as usize) };
    let cr3: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { core::arch::asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack)) };
    crate::io::write64(TRAMPOLINE + cr3v - start, cr3);
    crate::io::write64(TRAMPOLINE + entryv - start, ap_entry as *const () as u64);
    let me = apic::local_id();
    let mut started = 0;
    for (slot, &id) in table.cpus[..table.cpu_count].iter().enumerate() {
        if id as u32 == me {
            continue;
        }
        // SAFETY: each AP gets its own stack slot; only this loop hands them out.
        let stack_top = unsafe { (&raw mut AP_STACKS.0[slot]) as u64 + AP_STACK_SIZE as u64 };
        crate::io::write64(TRAMPOLINE + stackv - start, stack_top);
        crate::io::fence();
        let before = STARTED.load(Ordering::SeqCst);
        apic::send_ipi(id as u32, 0x4500); // INIT, assert
        crate::io::spin(100_000);
        for _ in 0..2 {
            apic::send_ipi(id as u32, 0x4600 | (TRAMPOLINE >> 12) as u32); // STARTUP
            crate::io::spin(10_000);
        }
        let mut waited = 0u64;
        while STARTED.load(Ordering::SeqCst) == before && waited < 200_000_000 {
            waited += 1;
            core::hint::spin_loop();
        }
        if STARTED.load(Ordering::SeqCst) != before {
            started += 1;
        }
    }
    started
}
