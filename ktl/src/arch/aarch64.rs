//! aarch64: the thread pointer is `tpidr_el0`.
//!
//! AArch64 has no data relocation for a thread-pointer offset, so the hot
//! table holds offsets *relative to ktl's own area*, and the own area's offset
//! comes from an initial-exec GOT load (`:gottprel:`), which the linker turns
//! into a constant in an executable. A zero delta means "the own area", so the
//! table is valid before any code has run.

use super::{SLOTS, Slot, ktl_symbol};
use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicIsize, Ordering};

global_asm!(
    concat!(
        ".section .tdata.",
        ktl_symbol!("block"),
        ",\"awT\",%progbits"
    ),
    ".p2align 6",
    concat!(".globl ", ktl_symbol!("block")),
    concat!(".hidden ", ktl_symbol!("block")),
    concat!(".type ", ktl_symbol!("block"), ",%object"),
    concat!(".size ", ktl_symbol!("block"), ", 160"),
    concat!(ktl_symbol!("block"), ":"),
    ".word 0, 0xffffffff",
    ".zero 120",
    ".word 0, 0xffffffff",
    ".zero 24",
    ".text",
);

const _: () =
    assert!(super::BLOCK_SIZE == 160 && super::DEAD_AREA == 128 && super::BLOCK_ALIGN == 64);

/// Offsets relative to the own area; 0 until the owner is decided.
static HOT_DELTA: [AtomicIsize; SLOTS] = [const { AtomicIsize::new(0) }; SLOTS];

/// The thread pointer: `tpidr_el0`.
#[inline(always)]
pub(crate) fn thread_pointer() -> usize {
    let tp: usize;
    // SAFETY: reading tpidr_el0 is always allowed at EL0 and has no side
    // effects.
    unsafe {
        asm!("mrs {}, tpidr_el0", out(reg) tp, options(nostack, nomem, preserves_flags));
    }
    tp
}

/// Loads the 32-bit value at `thread pointer + off + DISP`.
///
/// # Safety
/// `thread pointer + off + DISP` must be 4-byte aligned and readable memory
/// of the calling thread for the duration of the load.
#[inline(always)]
pub(crate) unsafe fn tp_load_u32<const DISP: usize>(off: isize) -> u32 {
    let off = off + DISP as isize;
    let v: u32;
    // SAFETY: the caller guarantees the address is valid; the asm only reads
    // it, and is not `pure` because the kernel changes the value.
    unsafe {
        asm!(
            "mrs {tp}, tpidr_el0",
            "ldr {v:w}, [{tp}, {off}]",
            tp = out(reg) _,
            off = in(reg) off,
            v = lateout(reg) v,
            options(nostack, preserves_flags, readonly),
        );
    }
    v
}

/// The offset of ktl's own area from the thread pointer.
#[inline(always)]
pub(crate) fn own_area_offset() -> isize {
    let off: isize;
    // SAFETY: an initial-exec TLS offset load from the GOT; it reads only the
    // GOT entry that the loader filled.
    unsafe {
        asm!(
            concat!("adrp {o}, :gottprel:", ktl_symbol!("block")),
            concat!("ldr {o}, [{o}, #:gottprel_lo12:", ktl_symbol!("block"), "]"),
            o = out(reg) off,
            options(nostack, preserves_flags, readonly),
        );
    }
    off
}

/// The offset of the dead area from the thread pointer.
#[inline(always)]
pub(crate) fn dead_area_offset() -> isize {
    own_area_offset() + super::DEAD_AREA as isize
}

/// The area offset the fast accessor of `slot` reads.
#[inline(always)]
pub(crate) fn hot_offset(slot: Slot) -> isize {
    own_area_offset() + HOT_DELTA[slot as usize].load(Ordering::Relaxed)
}

/// Points the fast accessor of `slot` at the area at `off`.
pub(crate) fn set_hot_offset(slot: Slot, off: isize) {
    HOT_DELTA[slot as usize].store(off - own_area_offset(), Ordering::Relaxed);
}

/// AArch64 has no RDPID.
pub(crate) fn has_rdpid() -> bool {
    false
}

/// Never called: [`has_rdpid`] is false.
///
/// # Safety
/// Never sound to call; present so that callers compile on every architecture.
pub(crate) unsafe fn rdpid() -> u64 {
    0
}
