//! aarch64: the thread pointer is `tpidr_el0`.
//!
//! AArch64 has no data relocation for a thread-pointer offset, so the hot
//! table holds offsets *relative to ktl's own area*, and the own area's offset
//! comes from an initial-exec GOT load (`:gottprel:`), which the linker turns
//! into a constant in an executable. A zero delta means "the own area", so the
//! table is valid before any code has run.

use super::{Exit, Failure, HOT_OFFSETS, HotOffset, ktl_symbol, rseq_cs_tables, rseq_exit_point};
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
    concat!(".size ", ktl_symbol!("block"), ", {size}"),
    concat!(ktl_symbol!("block"), ":"),
    ".word 0, 0xffffffff",
    ".zero 120",
    ".word 0, 0xffffffff",
    ".zero 24",
    ".text",
    size = const super::BLOCK_SIZE,
);

const _: () =
    assert!(super::BLOCK_SIZE == 160 && super::DEAD_AREA == 128 && super::BLOCK_ALIGN == 64);

/// Offsets relative to the own area; 0 until the owner is decided.
static HOT_DELTA: [AtomicIsize; HOT_OFFSETS] = [const { AtomicIsize::new(0) }; HOT_OFFSETS];

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

/// The area offset the fast accessor of `which` reads.
#[inline(always)]
pub(crate) fn hot_offset(which: HotOffset) -> isize {
    own_area_offset() + HOT_DELTA[which as usize].load(Ordering::Relaxed)
}

/// Points the fast accessor of `which` at the area at `off`.
pub(crate) fn set_hot_offset(which: HotOffset, off: isize) {
    HOT_DELTA[which as usize].store(off - own_area_offset(), Ordering::Relaxed);
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

// Restartable sequences (see the x86_64 back end for the structure). AArch64
// has no memory-to-memory moves, so the section needs scratch registers;
// since an `asm!` with `label` operands may not have outputs, x10 and x11 are
// saved on the stack before the section and restored on every exit: after
// the commit, in the abort handler and on the compare-failure path. The
// stack depth is the same at every instruction of the section, so the abort
// handler always restores the right slot. The signature before the abort
// handler is `brk #0x45e0` (0xd428bc00), which traps if reached by mistake.
// The index field's offset and the gate's address are inputs in the fixed
// registers x12 and x13: the compiler must not place them in x10 or x11,
// which the template overwrites. The abort handler and the compare-failure
// exit live in `__rseq_failure`,
// which the linker may place more than the 1 MiB that a conditional branch
// reaches (`b.cond`, `cbz`) from the section in a large binary; so the
// section branches over an unconditional `b` (128 MiB) instead. In a text
// larger than that, the linker reaches the target through a veneer, which
// may clobber the intra-procedure-call registers x16 and x17: every block
// declares them clobbered (discarded outputs, which `label` operands allow),
// so the compiler keeps no input or live value in them.
// `rseq_add_current` declares x10 and x11 as clobbers too, instead of saving
// them, and its conditional branches go straight to the caller's labels in
// the same function.

/// Saves the scratch registers x10 and x11 on the stack, stores the
/// descriptor's address into the area's `rseq_cs` (the area's address is in
/// x0), and enters the section at label 6, whose first instructions compare
/// the index field with `value` (in w1), leaving for the abort handler if it
/// changed; then leave the same way if `cpu_id` is negative (the area is no
/// longer registered: see the x86_64 back end for why `mm_cid` needs this);
/// then if the index value's gate (at x13) is closed: a thread without an
/// area holds it (see `rseq::locked`). The gate is read with a load-acquire,
/// so the section sees what the gate's last holder wrote before it opened
/// the gate.
macro_rules! rseq_cs_enter {
    () => {
        concat!(
            "stp x10, x11, [sp, #-16]!\n",
            "adrp x10, 3b\n",
            "add x10, x10, :lo12:3b\n",
            "str x10, [x0, #8]\n",
            "6:\n",
            "ldr w10, [x0, x12]\n",
            "cmp w10, w1\n",
            "b.eq 26f\n",
            "b 8f\n",
            "26:\n",
            "ldr w10, [x0, #4]\n",
            "tbz w10, #31, 24f\n",
            "b 8f\n",
            "24:\n",
            "ldar w10, [x13]\n",
            "cbz w10, 27f\n",
            "b 8f\n",
            "27:\n",
            rseq_delay_inside!(),
        )
    };
}

/// With the `delay-injection` feature, a busy loop inside the section (see
/// `rseq::delay`), counting x11 down from the configured number of
/// iterations; without it, nothing.
#[cfg(feature = "delay-injection")]
macro_rules! rseq_delay_inside {
    () => {
        concat!(
            "adrp x11, ",
            ktl_symbol!("delay_inside"),
            "\n",
            "ldr x11, [x11, :lo12:",
            ktl_symbol!("delay_inside"),
            "]\n",
            "22:\n",
            "cbz x11, 23f\n",
            "sub x11, x11, #1\n",
            "b 22b\n",
            "23:\n",
        )
    };
}
#[cfg(not(feature = "delay-injection"))]
macro_rules! rseq_delay_inside {
    () => {
        ""
    };
}

/// Opens `__rseq_failure` with the signature (`brk #0x45e0`, which traps if
/// reached by mistake), followed by the abort handler's label 8. The caller
/// adds the handler and closes the section.
macro_rules! rseq_abort_entry {
    () => {
        concat!(
            ".pushsection __rseq_failure, \"ax\"\n",
            ".inst 0xd428bc00\n",
            "8:\n",
        )
    };
}

/// Ends the section at label 7 and restores x10 and x11; then, in
/// `__rseq_failure`, the signature (`brk #0x45e0`, which traps if reached by
/// mistake), the abort handler (label 8) and, with `cmpfail`, the
/// compare-failure exit (label 9), each restoring x10 and x11 first.
macro_rules! rseq_cs_leave {
    () => {
        concat!(
            "7:\n",
            "ldp x10, x11, [sp], #16\n",
            rseq_abort_entry!(),
            "ldp x10, x11, [sp], #16\n",
            "b {abort}\n",
            ".popsection\n",
        )
    };
    (cmpfail) => {
        concat!(
            "7:\n",
            "ldp x10, x11, [sp], #16\n",
            rseq_abort_entry!(),
            "ldp x10, x11, [sp], #16\n",
            "b {abort}\n",
            "9:\n",
            "ldp x10, x11, [sp], #16\n",
            "b {cmpfail}\n",
            ".popsection\n",
        )
    };
}

/// Adds `count` to `*v` while the index field at byte `field` of the area at
/// `area` still equals `value`.
///
/// # Safety
/// `area` must be the offset from the thread pointer of the calling thread's
/// registered rseq area; `gate` must be valid for reads of a `u32` and
/// 4-byte aligned; `v` must be valid for reads and writes of an `i64` and
/// 8-byte aligned. The block uses 16 bytes of stack.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // the operation's operands, as in the C ABI
pub(crate) unsafe fn rseq_add(
    area: isize,
    field: usize,
    value: u32,
    gate: *const u32,
    v: *mut i64,
    count: i64,
) -> Result<(), Failure> {
    let area = (thread_pointer() as isize).wrapping_add(area);
    // SAFETY: the caller guarantees a registered area and a valid `v`; the
    // block follows the rseq ABI and restores x10, x11 and sp on every exit.
    unsafe {
        asm!(
            rseq_cs_tables!(),
            rseq_cs_enter!(),
            "ldr x10, [x2]",
            "add x10, x10, x3",
            "str x10, [x2]",
            rseq_cs_leave!(),
            in("x12") field,
            in("x0") area,
            in("x13") gate,
            in("w1") value,
            in("x2") v,
            in("x3") count,
            out("x16") _,
            out("x17") _,
            abort = label { return Err(Failure::Aborted) },
        );
    }
    Ok(())
}

/// The section of [`rseq_add_current`], for an `asm!` template: `$check` is
/// an extra test of the area's liveness, placed after the index load.
macro_rules! add_current_section {
    ($check:literal) => {
        concat!(
            rseq_cs_tables!(),
            rseq_exit_point!("{other}"),
            "adrp x10, 3b\n",
            "add x10, x10, :lo12:3b\n",
            "str x10, [x0, #8]\n",
            "6:\n",
            rseq_delay_inside!(),
            "ldr w10, [x0, #{field}]\n",
            $check,
            "cmp x10, {len}\n",
            "b.hs {other}\n",
            "madd x10, x10, {stride}, {base}\n",
            "ldr x11, [x10]\n",
            "add x11, x11, {count}\n",
            "str x11, [x10]\n",
            "7:\n",
            rseq_abort_entry!(),
            "b {abort}\n",
            ".popsection\n",
        )
    };
}

/// Adds `count` to the `i64` at `base + i * stride`, where `i` is the index
/// field at byte `FIELD` of the area at `area`, read inside the section (see
/// the x86_64 back end for the exits and the bound). x10 and x11 are
/// clobbers, so nothing is saved on the stack.
///
/// # Safety
/// As for the x86_64 version.
#[inline(always)]
pub(crate) unsafe fn rseq_add_current<const FIELD: usize>(
    area: isize,
    base: *mut u8,
    stride: usize,
    len: usize,
    count: i64,
) -> Result<(), Exit> {
    let area = (thread_pointer() as isize).wrapping_add(area);
    // The block, with `$check` after the index load and `$extra` operands.
    macro_rules! section {
        ($check:literal; $($extra:tt)*) => {
            asm!(
                add_current_section!($check),
                $($extra)*
                field = const FIELD,
                in("x0") area,
                base = in(reg) base,
                stride = in(reg) stride,
                len = in(reg) len,
                count = in(reg) count,
                out("x10") _,
                out("x11") _,
                out("x16") _,
                out("x17") _,
                abort = label { return Err(Exit::Aborted) },
                other = label { return Err(Exit::Other) },
            )
        };
    }
    // SAFETY: the caller guarantees an area of this thread's static TLS and
    // valid slots below `len`; the block follows the rseq ABI, writes only
    // the area's `rseq_cs` and, at the commit, the slot of an index below
    // `len`, and declares x10 and x11 clobbered.
    unsafe {
        if FIELD == crate::abi::OFFSET_CPU_ID {
            section!("";);
        } else {
            section!(
                "ldr w11, [x0, #{cpu_id}]\ncmp w11, #0\nb.lt {other}\n";
                cpu_id = const crate::abi::OFFSET_CPU_ID,
            );
        }
    }
    Ok(())
}

/// Stores `newv` into `*v` if `*v == expect`, while the index field at byte
/// `FIELD` still equals `value`.
///
/// # Safety
/// As for [`rseq_add`].
#[inline(always)]
#[allow(clippy::too_many_arguments)] // the operation's operands, as in the C ABI
pub(crate) unsafe fn rseq_cmpeqv_storev(
    area: isize,
    field: usize,
    value: u32,
    gate: *const u32,
    v: *mut i64,
    expect: i64,
    newv: i64,
) -> Result<(), Failure> {
    let area = (thread_pointer() as isize).wrapping_add(area);
    // SAFETY: as in `rseq_add`.
    unsafe {
        asm!(
            rseq_cs_tables!(),
            rseq_exit_point!("9f"),
            rseq_cs_enter!(),
            "ldr x10, [x2]",
            "cmp x10, x3",
            "b.eq 28f",
            "b 9f",
            "28:",
            "str x4, [x2]",
            rseq_cs_leave!(cmpfail),
            in("x12") field,
            in("x0") area,
            in("x13") gate,
            in("w1") value,
            in("x2") v,
            in("x3") expect,
            in("x4") newv,
            out("x16") _,
            out("x17") _,
            abort = label { return Err(Failure::Aborted) },
            cmpfail = label { return Err(Failure::CompareFailed) },
        );
    }
    Ok(())
}

// The rest of the operation set follows the same scheme: x10 and x11 are the
// scratch registers, saved before the section and restored on every exit.

/// Pops from a per-CPU list (see the x86_64 back end).
///
/// # Safety
/// As for the x86_64 version.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // the operation's operands, as in the C ABI
pub(crate) unsafe fn rseq_cmpnev_storeoffp_load(
    area: isize,
    field: usize,
    value: u32,
    gate: *const u32,
    v: *mut *mut u8,
    expectnot: *mut u8,
    voffp: isize,
    load: *mut *mut u8,
) -> Result<(), Failure> {
    let area = (thread_pointer() as isize).wrapping_add(area);
    // SAFETY: as in `rseq_add`.
    unsafe {
        asm!(
            rseq_cs_tables!(),
            rseq_exit_point!("9f"),
            rseq_cs_enter!(),
            "ldr x10, [x2]",
            "cmp x10, x3",
            "b.ne 28f",
            "b 9f",
            "28:",
            "str x10, [x5]",
            "ldr x11, [x10, x4]",
            "str x11, [x2]",
            rseq_cs_leave!(cmpfail),
            in("x12") field,
            in("x0") area,
            in("x13") gate,
            in("w1") value,
            in("x2") v,
            in("x3") expectnot,
            in("x4") voffp,
            in("x5") load,
            out("x16") _,
            out("x17") _,
            abort = label { return Err(Failure::Aborted) },
            cmpfail = label { return Err(Failure::CompareFailed) },
        );
    }
    Ok(())
}

/// Loads `*ptr` and adds `inc` at byte offset `off` from it.
///
/// # Safety
/// As for the x86_64 version.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // the operation's operands, as in the C ABI
pub(crate) unsafe fn rseq_offset_deref_addv(
    area: isize,
    field: usize,
    value: u32,
    gate: *const u32,
    ptr: *mut *mut u8,
    off: isize,
    inc: i64,
) -> Result<(), Failure> {
    let area = (thread_pointer() as isize).wrapping_add(area);
    // SAFETY: as in `rseq_add`.
    unsafe {
        asm!(
            rseq_cs_tables!(),

            rseq_cs_enter!(),
            "ldr x10, [x2]",
            "add x10, x10, x3",
            "ldr x11, [x10]",
            "add x11, x11, x4",
            "str x11, [x10]",
            rseq_cs_leave!(),
            in("x12") field,
            in("x0") area,
            in("x13") gate,
            in("w1") value,
            in("x2") ptr,
            in("x3") off,
            in("x4") inc,
            out("x16") _,
            out("x17") _,
            abort = label { return Err(Failure::Aborted) },
        );
    }
    Ok(())
}

/// Stores `newv` into `*v` if `*v == expect` and `*v2 == expect2`.
///
/// # Safety
/// As for the x86_64 version.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // the operation's operands, as in the C ABI
pub(crate) unsafe fn rseq_cmpeqv_cmpeqv_storev(
    area: isize,
    field: usize,
    value: u32,
    gate: *const u32,
    v: *mut i64,
    expect: i64,
    v2: *const i64,
    expect2: i64,
    newv: i64,
) -> Result<(), Failure> {
    let area = (thread_pointer() as isize).wrapping_add(area);
    // SAFETY: as in `rseq_add`.
    unsafe {
        asm!(
            rseq_cs_tables!(),
            rseq_exit_point!("9f"),
            rseq_cs_enter!(),
            "ldr x10, [x2]",
            "cmp x10, x3",
            "b.eq 28f",
            "b 9f",
            "28:",
            "ldr x10, [x4]",
            "cmp x10, x5",
            "b.eq 28f",
            "b 9f",
            "28:",
            "str x6, [x2]",
            rseq_cs_leave!(cmpfail),
            in("x12") field,
            in("x0") area,
            in("x13") gate,
            in("w1") value,
            in("x2") v,
            in("x3") expect,
            in("x4") v2,
            in("x5") expect2,
            in("x6") newv,
            out("x16") _,
            out("x17") _,
            abort = label { return Err(Failure::Aborted) },
            cmpfail = label { return Err(Failure::CompareFailed) },
        );
    }
    Ok(())
}

/// If `*v == expect`, stores `newv2` into `*v2`, then commits `*v = newv`,
/// with `stlr` when `RELEASE`.
///
/// # Safety
/// As for the x86_64 version.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // the operation's operands, as in the C ABI
pub(crate) unsafe fn rseq_cmpeqv_trystorev_storev<const RELEASE: bool>(
    area: isize,
    field: usize,
    value: u32,
    gate: *const u32,
    v: *mut i64,
    expect: i64,
    v2: *mut i64,
    newv2: i64,
    newv: i64,
) -> Result<(), Failure> {
    let area = (thread_pointer() as isize).wrapping_add(area);
    // SAFETY: as in `rseq_add`.
    unsafe {
        asm!(
            rseq_cs_tables!(),
            rseq_exit_point!("9f"),
            rseq_cs_enter!(),
            "ldr x10, [x2]",
            "cmp x10, x3",
            "b.eq 28f",
            "b 9f",
            "28:",
            "str x5, [x4]",
            ".if {release}",
            "stlr x6, [x2]",
            ".else",
            "str x6, [x2]",
            ".endif",
            rseq_cs_leave!(cmpfail),
            in("x12") field,
            release = const RELEASE as u8,
            in("x0") area,
            in("x13") gate,
            in("w1") value,
            in("x2") v,
            in("x3") expect,
            in("x4") v2,
            in("x5") newv2,
            in("x6") newv,
            out("x16") _,
            out("x17") _,
            abort = label { return Err(Failure::Aborted) },
            cmpfail = label { return Err(Failure::CompareFailed) },
        );
    }
    Ok(())
}

/// If `*v == expect`, copies `len` bytes from `src` to `dst`, then commits
/// `*v = newv`, with `stlr` when `RELEASE`.
///
/// # Safety
/// As for the x86_64 version.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // the operation's operands, as in the C ABI
pub(crate) unsafe fn rseq_cmpeqv_trymemcpy_storev<const RELEASE: bool>(
    area: isize,
    field: usize,
    value: u32,
    gate: *const u32,
    v: *mut i64,
    expect: i64,
    dst: *mut u8,
    src: *const u8,
    len: usize,
    newv: i64,
) -> Result<(), Failure> {
    let area = (thread_pointer() as isize).wrapping_add(area);
    // SAFETY: as in `rseq_add`.
    unsafe {
        asm!(
            rseq_cs_tables!(),
            rseq_exit_point!("9f"),
            rseq_cs_enter!(),
            "ldr x10, [x2]",
            "cmp x10, x3",
            "b.eq 28f",
            "b 9f",
            "28:",
            "mov x10, #0",
            "2:",
            "cmp x10, x6",
            "b.hs 4f",
            "ldrb w11, [x5, x10]",
            "strb w11, [x4, x10]",
            "add x10, x10, #1",
            "b 2b",
            "4:",
            ".if {release}",
            "stlr x7, [x2]",
            ".else",
            "str x7, [x2]",
            ".endif",
            rseq_cs_leave!(cmpfail),
            in("x12") field,
            release = const RELEASE as u8,
            in("x0") area,
            in("x13") gate,
            in("w1") value,
            in("x2") v,
            in("x3") expect,
            in("x4") dst,
            in("x5") src,
            in("x6") len,
            in("x7") newv,
            out("x16") _,
            out("x17") _,
            abort = label { return Err(Failure::Aborted) },
            cmpfail = label { return Err(Failure::CompareFailed) },
        );
    }
    Ok(())
}

/// `ENOSYS` on aarch64 Linux (`asm-generic/errno.h`).
const ENOSYS: isize = 38;

/// The KTLS kernel prototype is x86_64-only: on aarch64 raw system calls
/// for it are not provided, and this returns `-ENOSYS`.
///
/// # Safety
///
/// None needed: it makes no call.
pub(crate) unsafe fn syscall4(_nr: usize, _a1: usize, _a2: usize, _a3: usize, _a4: usize) -> isize {
    -ENOSYS
}

/// The KTLS kernel prototype is x86_64-only: raw thread creation returns
/// `-ENOSYS` on aarch64.
///
/// # Safety
///
/// None needed: it creates nothing.
pub(crate) unsafe fn clone3_thread(
    _args: *const u8,
    _size: usize,
    _entry: extern "C" fn(usize) -> i32,
    _arg: usize,
) -> isize {
    -ENOSYS
}
