/*
 * Application-processor start-up for the smp guest.  smp.c copies the bytes
 * between ap_trampoline and ap_trampoline_end to 0x8000 and sends
 * INIT-SIPI-SIPI with vector 0x08: each AP starts here in real mode at
 * 0x0800:0000, goes to protected mode with the trampoline's own GDT, then to
 * long mode on the page tables of pvh.S, and jumps to ap_entry64 (in place,
 * at its link address).
 */
#define TRAMPOLINE 0x8000
#define REL(x) ((x) - ap_trampoline + TRAMPOLINE)

    .section .rodata
    .globl ap_trampoline, ap_trampoline_end
    .code16
ap_trampoline:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    lgdtl REL(ap_gdt_desc)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x08, $REL(ap_protected)

    .code32
ap_protected:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %ss
    movl $pvh_pml4, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl $0xC0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000000, %eax
    movl %eax, %cr0
    ljmpl $0x18, $ap_entry64

    .balign 8
ap_gdt:
    .quad 0
    .quad 0x00CF9A000000FFFF    /* 0x08: 32-bit code */
    .quad 0x00CF92000000FFFF    /* 0x10: data */
    .quad 0x00AF9A000000FFFF    /* 0x18: 64-bit code */
ap_gdt_desc:
    .word ap_gdt_desc - ap_gdt - 1
    .long REL(ap_gdt)
ap_trampoline_end:

    .text
    .code64
ap_entry64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    /* A stack of our own: slot = atomic increment of ap_stack_next. */
    movl $1, %eax
    lock xaddl %eax, ap_stack_next(%rip)
    incl %eax
    shll $12, %eax
    lea ap_stacks(%rip), %rsp
    addq %rax, %rsp
    call ap_main
1:  hlt
    jmp 1b

    .section .bss
    .balign 4096
    .globl ap_stacks
ap_stacks:
    .skip 4096 * 17
    .section .data
    .globl ap_stack_next
ap_stack_next:
    .long 0
