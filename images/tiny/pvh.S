/*
 * PVH entry for tiny guests, so QEMU (-M microvm -kernel X.elf) and pyvmm's
 * ELF loader can boot the same guest.  PVH starts here in 32-bit protected
 * mode, paging off, EBX = struct hvm_start_info; we build long mode
 * ourselves (identity map of the first 4 GiB with 2 MiB pages) and call
 * main() with a NULL zero page: runtime.c then reads the command line from
 * hvm_start_info.
 */
    .section .note.Xen, "a", @note
    .balign 4
    .long 4                     /* namesz */
    .long 4                     /* descsz */
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long pvh_start32

    .text
    .code32
    .globl pvh_start32
pvh_start32:
    cli
    movl %ebx, pvh_start_info
    lgdt pvh_gdt_desc
    movl $pvh_pml4, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x20, %eax             /* PAE */
    movl %eax, %cr4
    movl $0xC0000080, %ecx      /* EFER */
    rdmsr
    orl $0x100, %eax            /* LME */
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax       /* PG | PE */
    movl %eax, %cr0
    ljmp $0x08, $pvh_start64

    .code64
pvh_start64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    lea stack_top(%rip), %rsp
    xor %edi, %edi              /* main(NULL): no zero page on this path */
    call main
1:  hlt
    jmp 1b

    .section .rodata
    .balign 8
pvh_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF    /* 0x08: 64-bit code */
    .quad 0x00CF92000000FFFF    /* 0x10: data */
pvh_gdt_desc:
    .word pvh_gdt_desc - pvh_gdt - 1
    .long pvh_gdt

    .section .data
    .balign 4096
    .globl pvh_pml4
pvh_pml4:
    .quad pvh_pdpt + 0x3
    .fill 511, 8, 0
pvh_pdpt:
    .quad pvh_pd + 0x0003
    .quad pvh_pd + 0x1003
    .quad pvh_pd + 0x2003
    .quad pvh_pd + 0x3003
    .fill 508, 8, 0
pvh_pd:
    .set page, 0
    .rept 2048
    .quad (page << 21) | 0x83   /* present, writable, 2 MiB */
    .set page, page + 1
    .endr
