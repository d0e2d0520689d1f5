/*
 * A PVH guest that prints one line and then idles for ever with interrupts enabled (`sti; hlt`):
 * used by the memory benchmark to compare kumo-vmm's and QEMU's own memory on the same guest.
 */
    .section .note.Xen, "a", @note
    .balign 4
    .long 4, 4, 18       /* name size, descriptor size, XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long pvh_start

    .code32
    .text
    .globl pvh_start
pvh_start:
    cli
    mov $msg, %esi
    mov $0x3f8, %dx
1:  lodsb
    test %al, %al
    jz 2f
    out %al, %dx
    jmp 1b
2:  sti
    hlt
    jmp 2b

    .section .rodata
msg: .asciz "pvh idle: ready\n"
