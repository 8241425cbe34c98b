/*
 * Entry points of a tiny pyvmm test guest, at the start of the bzImage's
 * protected-mode payload (loaded at 1 MiB).  Offset 0 is the 32-bit entry,
 * which pyvmm never uses: it halts.  Offset 0x200 is the 64-bit entry of the
 * boot protocol: long mode, identity paging, RSI = zero page.
 */
    .section .head, "ax"
    .code32
    .globl startup_32
startup_32:
    cli
1:  hlt
    jmp 1b

    .org 0x200
    .code64
    .globl startup_64
startup_64:
    cli
    lea stack_top(%rip), %rsp
    mov %rsi, %rdi              /* main(struct boot_params *zero_page) */
    call main
2:  hlt
    jmp 2b

    .section .bss
    .balign 16
stack:
    .skip 16384
    .globl stack_top
stack_top:
