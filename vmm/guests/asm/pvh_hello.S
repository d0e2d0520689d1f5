/*
 * A PVH guest in GNU as: entered in 32-bit protected mode (paging off) at the address in its
 * XEN_ELFNOTE_PHYS32_ENTRY note, %ebx = hvm_start_info. It writes a line to COM1 first thing
 * (the boot-latency benchmark measures the time to that first byte), checks the start info
 * (magic, a memory map of at least 3 entries), then ends: a write to port 0xf4 (QEMU's
 * isa-debug-exit; nothing in kumo-vmm) and an i8042 reset (kumo-vmm exits 0).
 *
 * Build: as --64 -o pvh_hello.o pvh_hello.S && ld -m elf_x86_64 -T pvh.ld -o pvh_hello pvh_hello.o
 */
    .section .note.Xen, "a", @note
    .balign 4
    .long 4              /* name size */
    .long 4              /* descriptor size */
    .long 18             /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long pvh_start

    .code32
    .text
    .globl pvh_start
pvh_start:
    cli
    mov $0x3f8, %dx
    mov $'K', %al
    out %al, %dx          /* first byte, as early as possible */
    mov $stack_top, %esp  /* PVH gives no stack */
    mov $msg_hello, %esi
    call puts
    cmpl $0x336ec578, (%ebx)
    jne bad_magic
    mov $msg_magic_ok, %esi
    call puts
    cmpl $3, 48(%ebx)     /* hvm_start_info.memmap_entries */
    jb bad_memmap
    mov $msg_memmap_ok, %esi
    call puts
    jmp done
bad_magic:
    mov $msg_bad_magic, %esi
    call puts
    jmp done
bad_memmap:
    mov $msg_bad_memmap, %esi
    call puts
done:
    mov $0xf4, %dx
    xor %al, %al
    out %al, %dx          /* QEMU isa-debug-exit */
    mov $0x64, %dx
    mov $0xfe, %al
    out %al, %dx          /* i8042 reset */
1:  hlt
    jmp 1b

/* puts: %esi = NUL-terminated string. */
puts:
    mov $0x3f8, %dx
2:  lodsb
    test %al, %al
    jz 3f
    out %al, %dx
    jmp 2b
3:  ret

    .data
    .balign 16
stack:          .fill 256, 1, 0
stack_top:
    .section .rodata
msg_hello:      .asciz "umo pvh guest\n"
msg_magic_ok:   .asciz "pvh: start_info magic ok\n"
msg_memmap_ok:  .asciz "pvh: memory map ok\n"
msg_bad_magic:  .asciz "pvh: BAD start_info magic\n"
msg_bad_memmap: .asciz "pvh: BAD memory map\n"
