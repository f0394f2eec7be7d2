/* startup.c: the startup code of a graphc firmware for a Cortex-M4F (ARMv7E-M with the FPv4-SP
 * FPU), with newlib and its semihosting library (librdimon: printf goes to the debugger, or to
 * QEMU's terminal). Link with mps2_an386.ld and `-nostartfiles --specs=rdimon.specs`; see
 * README.md in this folder.
 *
 * At reset the core loads the stack pointer and the address of Reset_Handler from the vector
 * table at address 0. Reset_Handler then
 *   1. enables the FPU (full access for coprocessors CP10 and CP11 in CPACR): the model is
 *      compiled with -mfloat-abi=hard, so the first float instruction would fault without it;
 *   2. copies .data's initial values from flash to RAM, and zeroes .bss;
 *   3. opens the semihosting stdin/stdout/stderr (initialise_monitor_handles, librdimon);
 *   4. calls main and passes its status to exit(), which ends the program through semihosting
 *      (SYS_EXIT): QEMU exits with that status.
 * A fault (HardFault and the others) ends the program with status 3 the same way.
 * It is C99 (with GCC's section attribute and two inline-assembly barriers). */
#include <stdint.h>
#include <stdlib.h>

extern uint32_t _sidata[], _sdata[], _edata[], _sbss[], _ebss[], _estack[];   /* mps2_an386.ld */
extern void initialise_monitor_handles(void);                                  /* librdimon */
extern int main(int argc, char **argv);

void Reset_Handler(void);
void Fault_Handler(void);

/* The vector table: the initial stack pointer, then the handlers of the 15 system exceptions
   (reset, NMI, HardFault, MemManage, BusFault, UsageFault, 4 reserved, SVCall, DebugMonitor,
   reserved, PendSV, SysTick). A firmware using interrupts appends their handlers. */
__attribute__((section(".isr_vector"), used))
void (*const gc_vector_table[16])(void) = {
    (void (*)(void))(uintptr_t)_estack,
    Reset_Handler,
    Fault_Handler,  /* NMI */
    Fault_Handler,  /* HardFault */
    Fault_Handler,  /* MemManage */
    Fault_Handler,  /* BusFault */
    Fault_Handler,  /* UsageFault */
    0, 0, 0, 0,
    Fault_Handler,  /* SVCall */
    Fault_Handler,  /* DebugMonitor */
    0,
    Fault_Handler,  /* PendSV */
    Fault_Handler,  /* SysTick */
};

#define CPACR (*(volatile uint32_t *)0xE000ED88u)   /* Coprocessor Access Control Register */

void Reset_Handler(void)
{
    static char program[] = "firmware";
    static char *argv[] = { program, 0 };
    uint32_t *from = _sidata, *to = _sdata;

    CPACR |= 0xFu << 20;                              /* CP10, CP11: full access */
    __asm__ volatile ("dsb\n\tisb" ::: "memory");     /* in effect before the next instruction */

    while (to < _edata) {
        *to++ = *from++;
    }
    for (to = _sbss; to < _ebss; ++to) {
        *to = 0;
    }
    initialise_monitor_handles();
    exit(main(1, argv));
}

void Fault_Handler(void)
{
    _Exit(3);
}

/* newlib's exit() runs the .fini_array (none in a C program) through _fini, which crtn.o would
   provide; -nostartfiles leaves it out, so here it is, empty, with its partner _init. */
void _init(void);
void _fini(void);
void _init(void) {}
void _fini(void) {}
