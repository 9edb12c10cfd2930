//! x86_64: the thread pointer is the FS base, and `%fs:0` holds its own value.
//!
//! The hot table `HOT` is valid before any code has run, in one of two ways:
//!
//! - By default (ktl linked into an executable), it holds absolute offsets
//!   from the thread pointer, which the static linker fills with the own
//!   area's (`.quad block@tpoff`, local-exec TLS). The hot path is one load
//!   of the table and one `%fs`-relative load.
//! - With the cargo feature `shared-object` (ktl linked into a shared
//!   object, as in libktl.so), no linker accepts those relocations, so the
//!   table holds offsets *relative to ktl's own area*, 0 at first, and the
//!   own area's offset comes from an initial-exec GOT load (`mov
//!   block@GOTTPOFF(%rip), %reg`), as on aarch64. The loader fills the GOT
//!   entry and gives the object static TLS (`DF_STATIC_TLS`). The hot path
//!   gains one `add` (a `lea` once the static linker has relaxed it in an
//!   executable): about 1.5x the time of an accessor in a tight loop.

use super::{Exit, HOT_OFFSETS, HotOffset, Leave, ktl_symbol, rseq_cs_tables, rseq_exit_point};
use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicIsize, Ordering};

// The initial entries of the hot table: the own area, as an absolute offset
// or as a delta from it.
#[cfg(not(feature = "shared-object"))]
macro_rules! hot_init {
    () => {
        concat!(
            ".quad ",
            ktl_symbol!("block"),
            "@tpoff, ",
            ktl_symbol!("block"),
            "@tpoff, ",
            ktl_symbol!("block"),
            "@tpoff"
        )
    };
}
#[cfg(feature = "shared-object")]
macro_rules! hot_init {
    () => {
        ".quad 0, 0, 0"
    };
}

// ktl's thread-local block (see the module docs in `arch`), and the table of
// hot offsets, all designating the own area until the owner is decided.
global_asm!(
    concat!(
        ".section .tdata.",
        ktl_symbol!("block"),
        ",\"awT\",@progbits"
    ),
    ".p2align 6",
    concat!(".globl ", ktl_symbol!("block")),
    concat!(".hidden ", ktl_symbol!("block")),
    concat!(".type ", ktl_symbol!("block"), ",@object"),
    concat!(".size ", ktl_symbol!("block"), ", {size}"),
    concat!(ktl_symbol!("block"), ":"),
    // Own area: cpu_id_start = 0, cpu_id = -1, the rest 0 (128 bytes).
    ".long 0, 0xffffffff",
    ".zero 120",
    // Dead area: cpu_id_start = 0, cpu_id = -1, the rest 0 (32 bytes).
    ".long 0, 0xffffffff",
    ".zero 24",
    concat!(".section .data.", ktl_symbol!("hot"), ",\"aw\",@progbits"),
    ".p2align 6",
    concat!(".globl ", ktl_symbol!("hot")),
    concat!(".hidden ", ktl_symbol!("hot")),
    concat!(".type ", ktl_symbol!("hot"), ",@object"),
    concat!(".size ", ktl_symbol!("hot"), ", 24"),
    concat!(ktl_symbol!("hot"), ":"),
    // The hot offsets Cpu, Node and Cid.
    hot_init!(),
    ".text",
    size = const super::BLOCK_SIZE,
);

const _: () =
    assert!(super::BLOCK_SIZE == 160 && super::DEAD_AREA == 128 && super::BLOCK_ALIGN == 64);

// `init_cpu_delta`, run from the executable's `.preinit_array`.
#[cfg(not(feature = "shared-object"))]
global_asm!(
    ".section .preinit_array,\"aw\",@preinit_array",
    ".p2align 3",
    ".quad {init}",
    ".text",
    init = sym init_cpu_delta,
);

/// Where `cpu_id()` reads, relative to ktl's own area: 0 (the own area), or
/// the C library's area once [`init_cpu_delta`] has found that the C library
/// owns the areas. Written only by `init_cpu_delta`.
#[cfg(not(feature = "shared-object"))]
static mut CPU_DELTA: isize = 0;

/// Points `cpu_id()` at the C library's area when the C library registered
/// one (the rule by which the owner is decided, see [`crate::area`]), and
/// leaves it on the own area otherwise.
///
/// It runs from the executable's `.preinit_array`, which the loader (or, in
/// a static executable, the C library's start code) runs in the main thread
/// after relocation and before any initializer of a shared object or of the
/// executable: before any code that could start a thread. Where nothing runs
/// it (musl's start code, which skips `.preinit_array`, but musl has no
/// C-library area either), the delta stays 0, which is correct in every
/// case: when the C library owns the areas, `cpu_id()` then finds the own
/// area unregistered and answers from its slow path (`ktl::cpu::sources`
/// tells).
#[cfg(not(feature = "shared-object"))]
extern "C" fn init_cpu_delta() {
    if let Some(off) = crate::area::libc_owned_offset() {
        // SAFETY: nothing else runs yet (see above), so this write races
        // with no access; every later read happens after it, in the main
        // thread or in a thread started after it.
        unsafe { (&raw mut CPU_DELTA).write(off - own_area_offset()) };
    }
}

/// The `cpu_id` field of the area that `cpu_id()` reads: the C library's
/// area when the C library owns the areas, else ktl's own area. Negative
/// when that area is not live in the calling thread (not yet registered,
/// registration failed, no rseq), since the own area's `cpu_id` stays -1
/// until ktl registers it.
///
/// The delta is a plain load of a word that never changes once `main` can
/// run, so the compiler may keep it in a register across the calls of a
/// loop and across a call's cold path, which the `asm!` load of the hot
/// table (see [`hot_offset`]) does not allow; the own area's offset is a
/// link-time constant folded into the load's displacement.
#[cfg(not(feature = "shared-object"))]
#[inline(always)]
pub(crate) fn cpu_id_load() -> u32 {
    // SAFETY: the word is written only by `init_cpu_delta`, before `main` and
    // before any thread but the main one exists, so this read races with no
    // write.
    let delta = unsafe { (&raw const CPU_DELTA).read() };
    let v: u32;
    // SAFETY: `delta` designates, from the own area, an area of the calling
    // thread's static TLS (the own area, or the C library's), mapped for the
    // life of the thread; the asm only reads it. It is not `pure`, because
    // the kernel changes the value between calls.
    unsafe {
        asm!(
            concat!("mov {v:e}, dword ptr fs:[{d} + ", ktl_symbol!("block"), "@tpoff + {disp}]"),
            d = in(reg) delta,
            disp = const crate::abi::OFFSET_CPU_ID,
            v = lateout(reg) v,
            options(nostack, preserves_flags, readonly),
        );
    }
    v
}

/// The offset from the thread pointer of the area that `cpu_id()` reads.
#[cfg(not(feature = "shared-object"))]
pub(crate) fn cpu_offset() -> isize {
    // SAFETY: as in `cpu_id_load`.
    own_area_offset() + unsafe { (&raw const CPU_DELTA).read() }
}

/// The `cpu_id` field of the area that `cpu_id()` reads: the hot table's, as
/// for the other accessors (a shared object has no `.preinit_array`).
#[cfg(feature = "shared-object")]
#[inline(always)]
pub(crate) fn cpu_id_load() -> u32 {
    // SAFETY: a hot offset always designates an area of the calling thread's
    // static TLS (see `hot_offset`).
    unsafe { tp_load_u32::<{ crate::abi::OFFSET_CPU_ID }>(hot_offset(HotOffset::Cpu)) }
}

/// The offset from the thread pointer of the area that `cpu_id()` reads.
#[cfg(feature = "shared-object")]
pub(crate) fn cpu_offset() -> isize {
    hot_offset(HotOffset::Cpu)
}

unsafe extern "C" {
    /// The table defined above: `HOT_OFFSETS` offsets (absolute, or relative to
    /// the own area with the feature `shared-object`).
    #[link_name = ktl_symbol!("hot")]
    safe static HOT: [AtomicIsize; HOT_OFFSETS];
}

/// The thread pointer: the FS base.
#[inline(always)]
pub(crate) fn thread_pointer() -> usize {
    let tp: usize;
    // SAFETY: on x86_64 Linux, %fs:0 always holds the thread pointer itself
    // (the TCB's self pointer, required by the TLS ABI); the load has no side
    // effects.
    unsafe {
        asm!("mov {}, qword ptr fs:[0]", out(reg) tp, options(nostack, preserves_flags, readonly));
    }
    tp
}

/// Loads the 32-bit value at `thread pointer + off + DISP` with one
/// instruction, `mov %fs:DISP(off), %eax`.
///
/// This is a volatile-like load: the compiler may neither elide it nor merge
/// two of them, so a value the kernel changes between two calls is seen.
///
/// # Safety
/// `thread pointer + off + DISP` must be 4-byte aligned and readable memory
/// of the calling thread for the duration of the load.
#[inline(always)]
pub(crate) unsafe fn tp_load_u32<const DISP: usize>(off: isize) -> u32 {
    let v: u32;
    // SAFETY: the caller guarantees the address is valid; the asm only reads
    // it. It is not `pure`, because the kernel changes the value between
    // calls.
    unsafe {
        asm!(
            "mov {v:e}, dword ptr fs:[{off} + {disp}]",
            off = in(reg) off,
            disp = const DISP,
            v = lateout(reg) v,
            options(nostack, preserves_flags, readonly),
        );
    }
    v
}

/// The offset of ktl's own area from the thread pointer: a link-time
/// constant.
#[cfg(not(feature = "shared-object"))]
#[inline(always)]
pub(crate) fn own_area_offset() -> isize {
    let off: isize;
    // SAFETY: loads a link-time constant (a local-exec TLS offset) into a
    // register; no memory is touched.
    unsafe {
        asm!(
            concat!("mov {o}, offset ", ktl_symbol!("block"), "@tpoff"),
            o = out(reg) off,
            options(nostack, preserves_flags, nomem, pure),
        );
    }
    off
}

/// The offset of ktl's own area from the thread pointer (a constant: an
/// immediate in an executable, the loader's GOT entry in a shared object).
#[cfg(feature = "shared-object")]
#[inline(always)]
pub(crate) fn own_area_offset() -> isize {
    let off: isize;
    // SAFETY: an initial-exec TLS offset load from the GOT; it reads only the
    // GOT entry that the static linker or the loader filled, which never
    // changes afterwards, so the block is `pure`.
    unsafe {
        asm!(
            concat!("mov {o}, qword ptr [rip + ", ktl_symbol!("block"), "@GOTTPOFF]"),
            o = out(reg) off,
            options(nostack, preserves_flags, readonly, pure),
        );
    }
    off
}

/// The offset of the dead area from the thread pointer.
#[inline(always)]
pub(crate) fn dead_area_offset() -> isize {
    own_area_offset() + super::DEAD_AREA as isize
}

/// The area offset the fast accessor of `which` reads: one load of the table,
/// plus, with the feature `shared-object`, the own area's offset (added with
/// `add block@GOTTPOFF(%rip), %reg`, whose GOT operand the static linker
/// turns into an immediate in an executable).
///
/// The load is `pure`, which lets the compiler keep the offset in a register
/// across a loop instead of reloading it on every call. That is sound because
/// every delta the table ever holds designates an area of the calling thread's
/// static TLS (ktl's own area, its dead area, or the C library's area), so a
/// stale offset is still a valid offset: at worst it reads an area that is not
/// registered, whose negative `cpu_id` sends the accessor to its slow path,
/// which answers from the decided state.
#[inline(always)]
pub(crate) fn hot_offset(which: HotOffset) -> isize {
    match which {
        HotOffset::Cpu => hot_load::<{ HotOffset::Cpu as usize * 8 }>(),
        HotOffset::Node => hot_load::<{ HotOffset::Node as usize * 8 }>(),
        HotOffset::Cid => hot_load::<{ HotOffset::Cid as usize * 8 }>(),
    }
}

#[cfg(not(feature = "shared-object"))]
#[inline(always)]
fn hot_load<const BYTE_OFFSET: usize>() -> isize {
    let v: isize;
    // SAFETY: reads one aligned quadword of the HOT table (a single `mov`,
    // atomic on x86_64, like a relaxed atomic load), which lives for the whole
    // program. See `hot_offset` for why `pure` is sound.
    unsafe {
        asm!(
            "mov {v}, qword ptr [rip + {hot} + {disp}]",
            hot = sym HOT,
            disp = const BYTE_OFFSET,
            v = lateout(reg) v,
            options(nostack, preserves_flags, readonly, pure),
        );
    }
    v
}

#[cfg(feature = "shared-object")]
#[inline(always)]
fn hot_load<const BYTE_OFFSET: usize>() -> isize {
    let v: isize;
    // SAFETY: reads one aligned quadword of the HOT table (a single `mov`,
    // atomic on x86_64, like a relaxed atomic load), which lives for the whole
    // program, and the GOT entry that `own_area_offset` reads. See
    // `hot_offset` for why `pure` is sound.
    unsafe {
        asm!(
            "mov {v}, qword ptr [rip + {hot} + {disp}]",
            concat!("add {v}, qword ptr [rip + ", ktl_symbol!("block"), "@GOTTPOFF]"),
            hot = sym HOT,
            disp = const BYTE_OFFSET,
            v = lateout(reg) v,
            options(nostack, readonly, pure),
        );
    }
    v
}

/// Points the fast accessor of `which` at the area at `off`.
pub(crate) fn set_hot_offset(which: HotOffset, off: isize) {
    #[cfg(feature = "shared-object")]
    let off = off - own_area_offset();
    HOT[which as usize].store(off, Ordering::Relaxed);
}

/// Whether the CPU has the RDPID instruction (CPUID.(EAX=7,ECX=0):ECX bit 22).
pub(crate) fn has_rdpid() -> bool {
    // `__cpuid` is an unsafe function before Rust 1.94 and a safe one after,
    // so the block is unused on newer compilers.
    #[allow(unused_unsafe)]
    // SAFETY: CPUID is available on every x86_64 processor and has no side
    // effects.
    let (leaf0, leaf7) = unsafe {
        (
            core::arch::x86_64::__cpuid(0),
            core::arch::x86_64::__cpuid_count(7, 0),
        )
    };
    leaf0.eax >= 7 && leaf7.ecx & (1 << 22) != 0
}

/// Reads `IA32_TSC_AUX` with RDPID. Linux stores `(node << 12) | cpu` there.
///
/// # Safety
/// The CPU must have RDPID ([`has_rdpid`]).
#[inline(always)]
pub(crate) unsafe fn rdpid() -> u64 {
    let v: u64;
    // SAFETY: the caller checked that the instruction exists; it only reads a
    // register.
    unsafe {
        asm!("rdpid {}", out(reg) v, options(nostack, nomem, preserves_flags));
    }
    v
}

// Restartable sequences.
//
// Each operation is one `asm!` block that
// 1. emits its descriptor (`struct rseq_cs`) into `__rseq_cs`, a pointer to
//    it into `__rseq_cs_ptr_array`, and its non-abort exits into
//    `__rseq_exit_point_array` (both retained against `--gc-sections`, for
//    debuggers and checkpointing tools);
// 2. stores the descriptor's address into the area's `rseq_cs`, immediately
//    followed by the section (see `rseq_cs_enter`);
// 3. runs the critical section: compare the area's index field with the value
//    the caller read, check the gates, do the work, commit with one final
//    store (the section of `rseq_add_current` reads the index field instead,
//    and compares it with the length of the caller's array);
// 4. places the abort handler in `__rseq_failure`, preceded by the signature
//    encoded as `ud1 0x53053053(%rip),%edi`, so a stray jump to it traps.
//
// The index field's offset is a constant of the block (`FIELD`), and so is
// the choice between the two gate checks (`GATED`): an operation is inlined
// as the one block its index and variant need. Every input is an `in`
// operand that the section never changes, so a restart after an abort sees
// the same inputs; `%rax` (and the copy's `%r11`) are scratch registers,
// declared clobbered (an `asm!` with `label` operands may not have outputs,
// but may clobber registers). Aborts, failed compares and the fast variant's
// way to the gated one leave through `label` operands. No `pure`, `nomem`
// or `readonly`: the block writes memory and its effect depends on when it
// runs.

/// Stores the descriptor's address into the area's `rseq_cs` and enters the
/// section at label 6, whose first instruction compares the index field
/// (`{field}`) of the area at `{area}` with `{value}`, leaving for the abort
/// handler if they differ. The section must start right after the store:
/// with an instruction between them, a preemption there would find the IP
/// outside the section, the kernel would clear `rseq_cs`, and the section
/// would run unprotected.
macro_rules! rseq_cs_enter {
    () => {
        concat!(
            "lea rax, [rip + 3b]\n",
            "mov qword ptr fs:[{area} + 8], rax\n",
            "6:\n",
            "cmp dword ptr fs:[{area} + {field}], {value:e}\n",
            "jne 8f\n",
        )
    };
}

/// For `mm_cid`: leaves for the abort handler if `cpu_id` is negative, that
/// is if the area is no longer registered. Unregistering an area makes the
/// kernel write `cpu_id = -1` and `mm_cid = 0`, so a start taken with
/// `mm_cid` 0 before the area was released would pass the index compare and
/// commit unprotected. For `cpu_id` itself the compare already fails (no
/// start has the value -1), so its sections have no such test.
macro_rules! rseq_live_check {
    () => {
        "cmp dword ptr fs:[{area} + 4], 0\njl 8f\n"
    };
}

/// The fast variant's gate check: leaves through `{gated}` while any gate of
/// the process is closed ([`super::gates_closed`], read relative to the
/// program counter: on x86_64 a plain load is an acquire load).
macro_rules! rseq_closed_check {
    () => {
        "cmp dword ptr [rip + {closed}], 0\njne {gated}\n"
    };
}

/// The gated variant's check: aborts while the index value's own gate (at
/// `{gate}`) is closed, that is while a thread without an area, or a holder
/// of `rseq::exclusive`, works on the value's data (see `rseq::locked`).
macro_rules! rseq_gate_check {
    () => {
        "cmp dword ptr [{gate}], 0\njne 8f\n"
    };
}

/// With the `delay-injection` feature, a busy loop inside the section (see
/// `rseq::delay`), counting `%rax` down from the configured number of
/// iterations; without it, nothing.
#[cfg(feature = "delay-injection")]
macro_rules! rseq_delay_inside {
    () => {
        concat!(
            "mov rax, qword ptr [rip + ",
            ktl_symbol!("delay_inside"),
            "]\n",
            "22:\n",
            "test rax, rax\n",
            "jz 23f\n",
            "dec rax\n",
            "jmp 22b\n",
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

/// Opens `__rseq_failure` with the signature, encoded as the instruction
/// `ud1 0x53053053(%rip),%edi` so that a stray jump traps, followed by the
/// abort handler's label 8. The caller adds the rest of the handler and
/// closes the section.
macro_rules! rseq_abort_handler {
    () => {
        concat!(
            ".pushsection __rseq_failure, \"ax\"\n",
            ".byte 0x0f, 0xb9, 0x3d\n",
            ".long 0x53053053\n",
            "8:\n",
        )
    };
}

/// One block: the tables, the entry, `$check` (the liveness test or
/// nothing), `$gate` (one of the two gate checks), the delay, `$body` (the
/// work, ending with the commit) and the abort handler. `$exits` are the
/// exit-point directives; `$ops` the operands.
macro_rules! rseq_block {
    (
        check: [$($check:tt)*], gate: [$($gate:tt)*], exits: [$($exits:tt)*],
        body: [$($body:tt)*], ops: [$($ops:tt)*]
    ) => {
        asm!(
            rseq_cs_tables!(),
            $($exits)*
            rseq_cs_enter!(),
            $($check)*
            $($gate)*
            rseq_delay_inside!(),
            $($body)*
            "7:",
            rseq_abort_handler!(),
            "jmp {abort}",
            ".popsection",
            $($ops)*
            // The section does not touch the stack.
            options(nostack),
        )
    };
}

/// Expands an operation's section into its four blocks (index field
/// `$field` with or without the liveness test, the fast or the gated gate
/// check), of which the constants `$field` and `$gated` keep one.
///
/// The operands every block has: `{area}` (the area's offset from the thread
/// pointer), `{value}`, `{field}`, `%rax` clobbered, and the `{abort}` label,
/// which returns [`Leave::Aborted`]; the fast variant adds `{closed}` and the
/// `{gated}` label ([`Leave::Gated`]), the gated one `{gate}`.
macro_rules! rseq_op {
    (
        $field:ident, $gated:ident, $area:expr, $value:expr, $gate:expr;
        exits: [$($exits:tt)*], body: [$($body:tt)*], ops: [$($ops:tt)*]
    ) => {
        if $gated {
            if $field == crate::abi::OFFSET_CPU_ID {
                rseq_block!(
                    check: [], gate: [rseq_gate_check!(),], exits: [$($exits)*],
                    body: [$($body)*],
                    ops: [$($ops)* gate = in(reg) $gate, field = const $field,
                        area = in(reg) $area, value = in(reg) $value, out("rax") _,
                        abort = label { return Err(Leave::Aborted) },]
                )
            } else {
                rseq_block!(
                    check: [rseq_live_check!(),], gate: [rseq_gate_check!(),],
                    exits: [$($exits)*], body: [$($body)*],
                    ops: [$($ops)* gate = in(reg) $gate, field = const $field,
                        area = in(reg) $area, value = in(reg) $value, out("rax") _,
                        abort = label { return Err(Leave::Aborted) },]
                )
            }
        } else if $field == crate::abi::OFFSET_CPU_ID {
            rseq_block!(
                check: [], gate: [rseq_closed_check!(),],
                exits: [rseq_exit_point!("{gated}"), $($exits)*], body: [$($body)*],
                ops: [$($ops)* closed = sym super::GATES_CLOSED, field = const $field,
                    area = in(reg) $area, value = in(reg) $value, out("rax") _,
                    abort = label { return Err(Leave::Aborted) },
                    gated = label { return Err(Leave::Gated) },]
            )
        } else {
            rseq_block!(
                check: [rseq_live_check!(),], gate: [rseq_closed_check!(),],
                exits: [rseq_exit_point!("{gated}"), $($exits)*], body: [$($body)*],
                ops: [$($ops)* closed = sym super::GATES_CLOSED, field = const $field,
                    area = in(reg) $area, value = in(reg) $value, out("rax") _,
                    abort = label { return Err(Leave::Aborted) },
                    gated = label { return Err(Leave::Gated) },]
            )
        }
    };
}

const _: () = assert!(crate::abi::OFFSET_CPU_ID == 4 && crate::abi::OFFSET_RSEQ_CS == 8);

/// Adds `count` to `*v` in a critical section that commits only while the
/// index field at byte `FIELD` of the area at `area` still equals `value`.
///
/// `GATED` chooses the gate check: the fast variant (false) leaves with
/// [`Leave::Gated`] while any gate is closed, and ignores `gate`; the gated
/// variant aborts while the gate at `gate` (the value's) is closed.
///
/// # Safety
/// `area` must be the offset from the thread pointer of an rseq area of the
/// calling thread's static TLS (registered, or the dead area, on which the
/// section leaves before the work); for the gated variant `gate` must be
/// valid for reads of a `u32` and 4-byte aligned; `v` must be valid for
/// reads and writes of an `i64` and 8-byte aligned.
#[inline(always)]
pub(crate) unsafe fn rseq_add<const FIELD: usize, const GATED: bool>(
    area: isize,
    value: u32,
    gate: *const u32,
    v: *mut i64,
    count: i64,
) -> Result<(), Leave> {
    // SAFETY: the caller guarantees an area of this thread and a valid `v`;
    // the block follows the rseq ABI described above.
    unsafe {
        rseq_op!(FIELD, GATED, area, value, gate;
            exits: [],
            body: ["add qword ptr [{v}], {count}",],
            ops: [v = in(reg) v, count = in(reg) count,]
        );
    }
    Ok(())
}

/// The section of an operation that reads its index inside (the
/// `_current` operations), for an `asm!` template: the entry, the index
/// field's load into `%rax` (zero-extended), `$check` (an extra test of the
/// area's liveness, for `mm_cid`), the bound check against `{len}` (leaving
/// through `{other}`), `$body` (the work on the slot of the index, ending with
/// the commit), and the abort handler.
macro_rules! current_section {
    ($check:literal, $($body:expr),* $(,)?) => {
        concat!(
            rseq_cs_tables!(),
            rseq_exit_point!("{other}"),
            "lea rax, [rip + 3b]\n",
            "mov qword ptr fs:[rdi + 8], rax\n",
            "6:\n",
            rseq_delay_inside!(),
            "mov eax, dword ptr fs:[rdi + {field}]\n",
            $check,
            "cmp rax, {len}\n",
            "jae {other}\n",
            $($body, "\n",)*
            "7:\n",
            rseq_abort_handler!(),
            "jmp {abort}\n",
            ".popsection\n",
        )
    };
}

/// Expands a `_current` operation into its two blocks (with the liveness
/// test for `mm_cid`, without it for `cpu_id`), of which the constant
/// `$field` keeps one. The operands every block has: the area's offset in
/// `%rdi`, `{field}`, `{len}`, `%rax` clobbered, and the `{abort}` and
/// `{other}` labels.
macro_rules! current_op {
    ($field:ident, $area:expr, $len:expr; exits: [$($exits:tt)*], body: [$($body:tt)*], ops: [$($ops:tt)*]) => {
        if $field == crate::abi::OFFSET_CPU_ID {
            asm!(
                $($exits)*
                current_section!("", $($body)*),
                $($ops)*
                field = const $field,
                in("rdi") $area,
                len = in(reg) $len,
                out("rax") _,
                abort = label { return Err(Exit::Aborted) },
                other = label { return Err(Exit::Other) },
                // The sections do not touch the stack.
                options(nostack),
            )
        } else {
            asm!(
                $($exits)*
                current_section!("cmp dword ptr fs:[rdi + 4], 0\njl {other}\n", $($body)*),
                $($ops)*
                field = const $field,
                in("rdi") $area,
                len = in(reg) $len,
                out("rax") _,
                abort = label { return Err(Exit::Aborted) },
                other = label { return Err(Exit::Other) },
                // The sections do not touch the stack.
                options(nostack),
            )
        }
    };
}

/// Adds `count` to the `i64` at `base + i * stride`, where `i` is the index
/// field at byte `FIELD` of the area at `area`, read inside the section: a
/// migration or preemption after the read aborts the section, so the add
/// commits on the slot of the CPU (or concurrency id) it runs with, and there
/// is nothing to compare.
///
/// Leaves through `Err(Exit::Aborted)` on an abort, and through
/// `Err(Exit::Other)`, having written nothing but `rseq_cs`, when `i` is not
/// below `len`, which includes an area that is not registered (its
/// `cpu_id` is negative): the field is zero-extended, so a negative value is
/// 0xFFFF_FFFE or more, which the caller's `len` (capped at 2^31 by
/// `rseq`) never exceeds. For `mm_cid` (`FIELD` is not `cpu_id`'s offset)
/// the section also checks that `cpu_id` is not negative, since an
/// unregistered area's `mm_cid` is 0. The slot's address is only formed for
/// `i < len`. There is no gate check: the words of the `_current`
/// operations are never written by the fallbacks (see `rseq::add_current`).
///
/// A thread whose area is not registered stores the descriptor's address
/// into an area the kernel does not read, and leaves; if that area is
/// registered later, the kernel clears the stale `rseq_cs` on its first
/// return to user space.
///
/// # Safety
/// `area` must be an offset from the thread pointer designating an rseq area
/// of the calling thread's static TLS (one of the hot offsets); for every
/// `i < len`, `base + i * stride` must be valid for reads and writes of an
/// `i64` and 8-byte aligned, and `i * stride` must not overflow an `isize`.
#[inline(always)]
pub(crate) unsafe fn rseq_add_current<const FIELD: usize>(
    area: isize,
    base: *mut u8,
    stride: usize,
    len: usize,
    count: i64,
) -> Result<(), Exit> {
    // SAFETY: the caller guarantees an area of this thread's static TLS and
    // valid slots below `len`; the block follows the rseq ABI described
    // above, writes only the area's `rseq_cs` and, at the commit, the slot of
    // an index below `len`, and declares `%rax` clobbered.
    unsafe {
        current_op!(FIELD, area, len;
            exits: [],
            body: ["imul rax, {stride}", "add qword ptr [{base} + rax], {count}"],
            ops: [base = in(reg) base, stride = in(reg) stride, count = in(reg) count,]
        );
    }
    Ok(())
}

/// Adds one to the count of the record at `rec + i * stride` and `v` to its
/// sum, where `i` is the index field at byte `FIELD` of the area at `area`,
/// read inside the section (see [`rseq_add_current`] for the exits and the
/// bound). The record is three words: the count, then two `f64` sums, of
/// which the one at the count's parity is the live one. The section loads
/// the count and the live sum, stores the sum plus `v` into the other
/// slot, and commits by adding one to the count, which makes that slot
/// the live one. An abort before the commit leaves the count and the live
/// sum as they were (the other slot is scratch), so the retry starts from
/// the same state: the one section updates two words exactly once.
///
/// # Safety
/// As for [`rseq_add_current`], for records of 24 bytes at `rec + i *
/// stride`, 8-byte aligned.
#[inline(always)]
pub(crate) unsafe fn rseq_count_sum_current<const FIELD: usize>(
    area: isize,
    rec: *mut u8,
    stride: usize,
    len: usize,
    v: f64,
) -> Result<(), Exit> {
    // SAFETY: as in `rseq_add_current`; the block also writes the record's
    // scratch sum slot before the commit, and declares its scratch
    // registers clobbered.
    unsafe {
        current_op!(FIELD, area, len;
            exits: [],
            body: [
                "imul rax, {stride}",
                "lea {p}, [{rec} + rax]",
                "mov {t}, qword ptr [{p}]",
                "and {t}, 1",
                "movsd {x}, qword ptr [{p} + {t} * 8 + 8]",
                "addsd {x}, {v}",
                "xor {t}, 1",
                "movsd qword ptr [{p} + {t} * 8 + 8], {x}",
                // With delay injection, a delay between the scratch store
                // and the commit, so that tests abort the section there.
                rseq_delay_inside!(),
                "add qword ptr [{p}], 1",
            ],
            ops: [rec = in(reg) rec, stride = in(reg) stride, v = in(xmm_reg) v,
                p = out(reg) _, t = out(reg) _, x = out(xmm_reg) _,]
        );
    }
    Ok(())
}

/// The section of [`rseq_cmpeqv_storev_current`], for an `asm!` template:
/// a `_current` section (see [`current_section`]) without exit labels,
/// which reports how it left in `{status}` (0: committed, 1: aborted, 2:
/// no slot or no area, 3: compare failed) and leaves the word's address in
/// `%rax`. `$check` is the liveness test for `mm_cid`.
macro_rules! status_section {
    ($check:literal) => {
        concat!(
            rseq_cs_tables!(),
            rseq_exit_point!("20f"),
            rseq_exit_point!("21f"),
            "lea rax, [rip + 3b]\n",
            "mov qword ptr fs:[rdi + 8], rax\n",
            "6:\n",
            rseq_delay_inside!(),
            "mov eax, dword ptr fs:[rdi + {field}]\n",
            $check,
            "cmp rax, {len}\n",
            "jae 20f\n",
            "imul rax, {stride}\n",
            "add rax, {base}\n",
            "cmp qword ptr [rax], {expect}\n",
            "jne 21f\n",
            "mov qword ptr [rax], {newv}\n",
            "7:\n",
            "xor {status:e}, {status:e}\n",
            rseq_abort_handler!(),
            "mov {status:e}, 1\n",
            "jmp 9f\n",
            "20:\n",
            "mov {status:e}, 2\n",
            "jmp 9f\n",
            "21:\n",
            "mov {status:e}, 3\n",
            "jmp 9f\n",
            ".popsection\n",
            "9:\n",
        )
    };
}

/// Stores `newv` into the `i64` at `base + i * stride` if it equals
/// `expect`, where `i` is the index field read inside the section (see
/// [`rseq_add_current`]), and returns that word's address. Leaves through
/// `Err(Exit::CompareFailed)`, having stored nothing, when the word differs.
///
/// The block has outputs (the address and how it left), so no exit labels:
/// its exits set a status register and join at the end of the block.
///
/// # Safety
/// As for [`rseq_add_current`].
#[inline(always)]
pub(crate) unsafe fn rseq_cmpeqv_storev_current<const FIELD: usize>(
    area: isize,
    base: *mut u8,
    stride: usize,
    len: usize,
    expect: i64,
    newv: i64,
) -> Result<*mut i64, Exit> {
    let status: u32;
    let word: *mut i64;
    // The block, with `$check` (the liveness test for `mm_cid`).
    macro_rules! block {
        ($check:literal) => {
            asm!(
                status_section!($check),
                field = const FIELD,
                in("rdi") area,
                len = in(reg) len,
                base = in(reg) base,
                stride = in(reg) stride,
                expect = in(reg) expect,
                newv = in(reg) newv,
                status = out(reg) status,
                out("rax") word,
                options(nostack),
            )
        };
    }
    // SAFETY: as in `rseq_add_current`; the block writes only the area's
    // `rseq_cs` and, at the commit, the word of an index below `len`.
    unsafe {
        if FIELD == crate::abi::OFFSET_CPU_ID {
            block!("");
        } else {
            block!("cmp dword ptr fs:[rdi + 4], 0\njl 20f\n");
        }
    }
    match status {
        0 => Ok(word),
        1 => Err(Exit::Aborted),
        2 => Err(Exit::Other),
        _ => Err(Exit::CompareFailed),
    }
}

/// Pops the list whose head is the pointer at `base + i * stride`, where `i`
/// is the index field read inside the section: if the head is not null,
/// writes it to `*load` and commits the head to the pointer at byte
/// `next_offset` of it. Leaves through `Err(Exit::CompareFailed)` when the
/// list is empty. `%r11` holds the head.
///
/// # Safety
/// As for [`rseq_add_current`] (for pointers); `load` must be valid for a
/// pointer-sized write, and every node on the lists valid for a
/// pointer-sized read at `next_offset`.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // the operation's operands
pub(crate) unsafe fn rseq_pop_current<const FIELD: usize>(
    area: isize,
    base: *mut u8,
    stride: usize,
    len: usize,
    next_offset: isize,
    load: *mut *mut u8,
) -> Result<(), Exit> {
    // SAFETY: as in `rseq_add_current`; the block also writes `*load`, and
    // declares `%r11` clobbered.
    unsafe {
        current_op!(FIELD, area, len;
            exits: [rseq_exit_point!("{cmpfail}"),],
            body: [
                "imul rax, {stride}",
                "add rax, {base}",
                "mov r11, qword ptr [rax]",
                "test r11, r11",
                "jz {cmpfail}",
                "mov qword ptr [{load}], r11",
                "mov r11, qword ptr [r11 + {next}]",
                "mov qword ptr [rax], r11",
            ],
            ops: [base = in(reg) base, stride = in(reg) stride, next = in(reg) next_offset,
                load = in(reg) load, out("r11") _,
                cmpfail = label { return Err(Exit::CompareFailed) },]
        );
    }
    Ok(())
}

/// Pops the top word of the stack at `base + i * stride` (a
/// `rseq::WordStack`: its length at byte 0, its capacity at 8, its words'
/// address at 16), where `i` is the index field read inside the section:
/// if the length is not 0, writes the word under it to `*load` and commits
/// the length minus one. Leaves through `Err(Exit::CompareFailed)` when the
/// stack is empty. `%r11` holds the length, `%r10` the words, then the word.
///
/// # Safety
/// As for [`rseq_add_current`] (for the stacks); `load` must be valid for
/// a `usize` write, and each stack's words valid for reads below its
/// length.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // the operation's operands
pub(crate) unsafe fn rseq_stack_pop_current<const FIELD: usize>(
    area: isize,
    base: *mut u8,
    stride: usize,
    len: usize,
    load: *mut usize,
) -> Result<(), Exit> {
    // SAFETY: as in `rseq_add_current`; the block also writes `*load`, and
    // declares `%r10` and `%r11` clobbered.
    unsafe {
        current_op!(FIELD, area, len;
            exits: [rseq_exit_point!("{cmpfail}"),],
            body: [
                "imul rax, {stride}",
                "add rax, {base}",
                "mov r11, qword ptr [rax]",
                "test r11, r11",
                "jz {cmpfail}",
                "dec r11",
                "mov r10, qword ptr [rax + 16]",
                "mov r10, qword ptr [r10 + 8 * r11]",
                "mov qword ptr [{load}], r10",
                "mov qword ptr [rax], r11",
            ],
            ops: [base = in(reg) base, stride = in(reg) stride, load = in(reg) load,
                out("r10") _, out("r11") _,
                cmpfail = label { return Err(Exit::CompareFailed) },]
        );
    }
    Ok(())
}

/// Pushes `word` on the stack at `base + i * stride` (see
/// [`rseq_stack_pop_current`]), where `i` is the index field read inside the
/// section: if the length is below the capacity, stores `word` past it (a
/// speculative store to a word that only counts once the length does) and
/// commits the length plus one. Leaves through `Err(Exit::CompareFailed)`
/// when the stack is full. x86-64 stores are never reordered with older
/// stores, so `RELEASE` changes nothing here.
///
/// # Safety
/// As for [`rseq_add_current`] (for the stacks); each stack's words valid
/// for writes below its capacity.
#[inline(always)]
pub(crate) unsafe fn rseq_stack_push_current<const FIELD: usize, const RELEASE: bool>(
    area: isize,
    base: *mut u8,
    stride: usize,
    len: usize,
    word: usize,
) -> Result<(), Exit> {
    // SAFETY: as in `rseq_add_current`; the block also writes the word past
    // the stack's length, and declares `%r10` and `%r11` clobbered.
    unsafe {
        current_op!(FIELD, area, len;
            exits: [rseq_exit_point!("{cmpfail}"),],
            body: [
                "imul rax, {stride}",
                "add rax, {base}",
                "mov r11, qword ptr [rax]",
                "cmp r11, qword ptr [rax + 8]",
                "jae {cmpfail}",
                "mov r10, qword ptr [rax + 16]",
                "mov qword ptr [r10 + 8 * r11], {word}",
                "inc r11",
                "mov qword ptr [rax], r11",
            ],
            ops: [base = in(reg) base, stride = in(reg) stride, word = in(reg) word,
                out("r10") _, out("r11") _,
                cmpfail = label { return Err(Exit::CompareFailed) },]
        );
    }
    Ok(())
}

/// Pushes `node` on the list whose head is the pointer at `base + i *
/// stride`, where `i` is the index field read inside the section: stores
/// the head at byte `next_offset` of `node` (a speculative store to the
/// caller's node), then commits the head to `node`. Nothing to compare: the
/// head is read inside the section. `%r11` holds the head.
///
/// # Safety
/// As for [`rseq_add_current`] (for pointers); `node + next_offset` must be
/// valid for a pointer-sized write.
#[inline(always)]
pub(crate) unsafe fn rseq_push_current<const FIELD: usize>(
    area: isize,
    base: *mut u8,
    stride: usize,
    len: usize,
    node: *mut u8,
    next_offset: isize,
) -> Result<(), Exit> {
    // SAFETY: as in `rseq_add_current`; the block also writes the node's
    // next pointer, and declares `%r11` clobbered.
    unsafe {
        current_op!(FIELD, area, len;
            exits: [],
            body: [
                "imul rax, {stride}",
                "add rax, {base}",
                "mov r11, qword ptr [rax]",
                "mov qword ptr [{node} + {next}], r11",
                "mov qword ptr [rax], {node}",
            ],
            ops: [base = in(reg) base, stride = in(reg) stride, next = in(reg) next_offset,
                node = in(reg) node, out("r11") _,]
        );
    }
    Ok(())
}

/// Stores `newv` into `*v` if `*v == expect`, in a critical section that
/// commits only while the index field at byte `FIELD` still equals `value`.
///
/// # Safety
/// As for [`rseq_add`].
#[inline(always)]
pub(crate) unsafe fn rseq_cmpeqv_storev<const FIELD: usize, const GATED: bool>(
    area: isize,
    value: u32,
    gate: *const u32,
    v: *mut i64,
    expect: i64,
    newv: i64,
) -> Result<(), Leave> {
    // SAFETY: as in `rseq_add`.
    unsafe {
        rseq_op!(FIELD, GATED, area, value, gate;
            exits: [rseq_exit_point!("{cmpfail}"),],
            body: [
                "cmp qword ptr [{v}], {expect}",
                "jne {cmpfail}",
                "mov qword ptr [{v}], {newv}",
            ],
            ops: [v = in(reg) v, expect = in(reg) expect, newv = in(reg) newv,
                cmpfail = label { return Err(Leave::CompareFailed) },]
        );
    }
    Ok(())
}

/// Pops from a per-CPU list: if the head `*v` is not `expectnot`, writes it
/// to `*load` and commits `*v = *(head + voffp)`. `%rax` holds the head.
///
/// # Safety
/// As for [`rseq_add`]; `load` must be valid for a pointer-sized write, and
/// every node reachable from `*v` valid for a read at `voffp`.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // the operation's operands, as in the C ABI
pub(crate) unsafe fn rseq_cmpnev_storeoffp_load<const FIELD: usize, const GATED: bool>(
    area: isize,
    value: u32,
    gate: *const u32,
    v: *mut *mut u8,
    expectnot: *mut u8,
    voffp: isize,
    load: *mut *mut u8,
) -> Result<(), Leave> {
    // SAFETY: as in `rseq_add`.
    unsafe {
        rseq_op!(FIELD, GATED, area, value, gate;
            exits: [rseq_exit_point!("{cmpfail}"),],
            body: [
                "mov rax, qword ptr [{v}]",
                "cmp rax, {expectnot}",
                "je {cmpfail}",
                "mov qword ptr [{load}], rax",
                "mov rax, qword ptr [rax + {voffp}]",
                "mov qword ptr [{v}], rax",
            ],
            ops: [v = in(reg) v, expectnot = in(reg) expectnot, voffp = in(reg) voffp,
                load = in(reg) load,
                cmpfail = label { return Err(Leave::CompareFailed) },]
        );
    }
    Ok(())
}

/// Loads the pointer `*ptr` and adds `inc` to the `i64` at byte offset `off`
/// from it, committing with that add. `%rax` holds the pointer.
///
/// # Safety
/// As for [`rseq_add`]; `*ptr + off` must be valid for an aligned `i64`
/// read and write.
#[inline(always)]
pub(crate) unsafe fn rseq_offset_deref_addv<const FIELD: usize, const GATED: bool>(
    area: isize,
    value: u32,
    gate: *const u32,
    ptr: *mut *mut u8,
    off: isize,
    inc: i64,
) -> Result<(), Leave> {
    // SAFETY: as in `rseq_add`.
    unsafe {
        rseq_op!(FIELD, GATED, area, value, gate;
            exits: [],
            body: [
                "mov rax, qword ptr [{ptr}]",
                "add qword ptr [rax + {off}], {inc}",
            ],
            ops: [ptr = in(reg) ptr, off = in(reg) off, inc = in(reg) inc,]
        );
    }
    Ok(())
}

/// Stores `newv` into `*v` if `*v == expect` and `*v2 == expect2`.
///
/// # Safety
/// As for [`rseq_add`]; `v2` must be valid for an aligned `i64` read.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // the operation's operands, as in the C ABI
pub(crate) unsafe fn rseq_cmpeqv_cmpeqv_storev<const FIELD: usize, const GATED: bool>(
    area: isize,
    value: u32,
    gate: *const u32,
    v: *mut i64,
    expect: i64,
    v2: *const i64,
    expect2: i64,
    newv: i64,
) -> Result<(), Leave> {
    // SAFETY: as in `rseq_add`.
    unsafe {
        rseq_op!(FIELD, GATED, area, value, gate;
            exits: [rseq_exit_point!("{cmpfail}"),],
            body: [
                "cmp qword ptr [{v}], {expect}",
                "jne {cmpfail}",
                "cmp qword ptr [{v2}], {expect2}",
                "jne {cmpfail}",
                "mov qword ptr [{v}], {newv}",
            ],
            ops: [v = in(reg) v, expect = in(reg) expect, v2 = in(reg) v2,
                expect2 = in(reg) expect2, newv = in(reg) newv,
                cmpfail = label { return Err(Leave::CompareFailed) },]
        );
    }
    Ok(())
}

/// If `*v == expect`, stores `newv2` into `*v2` (a speculative store, which
/// may happen even when the section then aborts) and commits `*v = newv`.
///
/// x86-64 stores are never reordered with older stores, so the release
/// variant is the same code as the relaxed one.
///
/// # Safety
/// As for [`rseq_add`]; `v2` must be valid for an aligned `i64` write.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // the operation's operands, as in the C ABI
pub(crate) unsafe fn rseq_cmpeqv_trystorev_storev<
    const FIELD: usize,
    const GATED: bool,
    const RELEASE: bool,
>(
    area: isize,
    value: u32,
    gate: *const u32,
    v: *mut i64,
    expect: i64,
    v2: *mut i64,
    newv2: i64,
    newv: i64,
) -> Result<(), Leave> {
    // SAFETY: as in `rseq_add`.
    unsafe {
        rseq_op!(FIELD, GATED, area, value, gate;
            exits: [rseq_exit_point!("{cmpfail}"),],
            body: [
                "cmp qword ptr [{v}], {expect}",
                "jne {cmpfail}",
                "mov qword ptr [{v2}], {newv2}",
                "mov qword ptr [{v}], {newv}",
            ],
            ops: [v = in(reg) v, expect = in(reg) expect, v2 = in(reg) v2,
                newv2 = in(reg) newv2, newv = in(reg) newv,
                cmpfail = label { return Err(Leave::CompareFailed) },]
        );
    }
    Ok(())
}

/// If `*v == expect`, copies `len` bytes from `src` to `dst` (speculative
/// stores) and commits `*v = newv`.
///
/// `%rax` and `%r11` (clobbered) hold the byte and the index of the copy.
/// The release variant is the same code on x86-64 (see
/// [`rseq_cmpeqv_trystorev_storev`]).
///
/// # Safety
/// As for [`rseq_add`]; `src` must be valid for `len` bytes of reads and
/// `dst` for `len` bytes of writes. Keep `len` small: the copy runs inside
/// the critical section, which restarts from the beginning on every abort.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // the operation's operands, as in the C ABI
pub(crate) unsafe fn rseq_cmpeqv_trymemcpy_storev<
    const FIELD: usize,
    const GATED: bool,
    const RELEASE: bool,
>(
    area: isize,
    value: u32,
    gate: *const u32,
    v: *mut i64,
    expect: i64,
    dst: *mut u8,
    src: *const u8,
    len: usize,
    newv: i64,
) -> Result<(), Leave> {
    // SAFETY: as in `rseq_add`; %r11 is declared clobbered.
    unsafe {
        rseq_op!(FIELD, GATED, area, value, gate;
            exits: [rseq_exit_point!("{cmpfail}"),],
            body: [
                "cmp qword ptr [{v}], {expect}",
                "jne {cmpfail}",
                "xor r11d, r11d",
                "test {len}, {len}",
                "jz 4f",
                "2:",
                "mov al, byte ptr [{src} + r11]",
                "mov byte ptr [{dst} + r11], al",
                "inc r11",
                "cmp r11, {len}",
                "jb 2b",
                "4:",
                "mov qword ptr [{v}], {newv}",
            ],
            ops: [v = in(reg) v, expect = in(reg) expect, dst = in(reg) dst,
                src = in(reg) src, len = in(reg) len, newv = in(reg) newv,
                out("r11") _,
                cmpfail = label { return Err(Leave::CompareFailed) },]
        );
    }
    Ok(())
}

/// A raw four-argument system call, without the C library: returns the
/// kernel's result (a negative errno on failure) and never touches `errno`,
/// so a thread without a C-library TCB may make it.
///
/// # Safety
///
/// The system call `nr` with these arguments must be sound to make: any
/// pointer among them must be valid for what the kernel does with it.
#[inline]
pub(crate) unsafe fn syscall4(nr: usize, a1: usize, a2: usize, a3: usize, a4: usize) -> isize {
    let ret: isize;
    // SAFETY: forwarded to the caller's contract. `syscall` clobbers %rcx
    // and %r11 and returns in %rax; the kernel preserves the other
    // registers.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") nr as isize => ret,
            in("rdi") a1,
            in("rsi") a2,
            in("rdx") a3,
            in("r10") a4,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// `clone3(args, size)` for a new thread that runs `entry(arg)` on the stack
/// and thread pointer given in `args`, then exits with `entry`'s result
/// (`exit(2)`, the thread only). Returns the child's tid in the parent, or
/// a negative errno.
///
/// # Safety
///
/// `args` must point to a valid `struct clone_args` of `size` bytes whose
/// flags create a thread (`CLONE_VM | CLONE_THREAD | CLONE_SIGHAND`) with
/// `CLONE_SETTLS`, a stack (`stack`, `stack_size`) and a thread pointer
/// (`tls`) that stay mapped and unused by anything else until the thread
/// has exited, and a `tls` whose first word holds its own value (the TCB
/// self pointer that %fs:0 loads read). `entry` runs on that thread with
/// that thread pointer and no C-library or Rust thread state: it must not
/// use thread-local storage, `errno`, the C library's thread functions, or
/// unwind.
pub(crate) unsafe fn clone3_thread(
    args: *const u8,
    size: usize,
    entry: extern "C" fn(usize) -> i32,
    arg: usize,
) -> isize {
    let ret: isize;
    // SAFETY: the caller's contract. In the parent, `clone3` returns the tid
    // (or -errno) in %rax and the block ends. In the child, which starts on
    // the new stack with a copy of the parent's registers (so %r12 and %r13
    // still hold `entry` and `arg`), the block aligns the stack, calls
    // `entry`, and makes `exit` with its result; it never returns into the
    // parent's frame.
    unsafe {
        asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "and rsp, -16",
            "mov rdi, r13",
            "call r12",
            "mov edi, eax",
            "mov eax, 60", // SYS_exit: this thread only
            "syscall",
            "ud2",
            "2:",
            inlateout("rax") 435isize => ret, // SYS_clone3
            in("rdi") args,
            in("rsi") size,
            in("r12") entry,
            in("r13") arg,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    ret
}
