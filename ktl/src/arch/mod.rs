//! Architecture back ends: the thread pointer, thread-pointer-relative loads,
//! and the thread-local block that holds ktl's own area.
//!
//! Every piece of architecture-specific `unsafe` code in ktl lives under this
//! module. Each back end provides the same small interface:
//!
//! - `thread_pointer()`: the value of the thread pointer (FS base on x86_64,
//!   `tpidr_el0` on aarch64);
//! - `tp_load_u32::<DISP>(off)`: one 32-bit load at `thread pointer + off + DISP`;
//! - `own_area_offset()` / `dead_area_offset()`: where ktl's own area and the
//!   never-registered "dead" area sit, relative to the thread pointer;
//! - `hot_offset(which)` / `set_hot_offset(which, off)`: the process-wide
//!   offsets that the fast accessors read, one per [`HotOffset`];
//! - `cpu_id_load()` / `cpu_offset()`: the `cpu_id` field that `cpu_id()`
//!   reads, and where it is. On x86_64 (without the feature `shared-object`)
//!   the area is designated by a word that the executable's `.preinit_array`
//!   sets before `main` (to the C library's area when the C library owns
//!   the areas, with `area::libc_owned_offset`) and that never changes
//!   afterwards, so that the compiler can keep it in a register; elsewhere
//!   by the hot table's `Cpu` entry;
//! - the restartable sequences' critical sections (`rseq_add` and the
//!   others), which leave through [`Leave`] (the operations on a start)
//!   or [`Exit`] (the `_current` operations);
//! - `syscall4` and `clone3_thread`: raw system calls without the C
//!   library, for threads that have none.
//!
//! It depends on nothing else in ktl but the constants of `abi` (the
//! offsets of the area's fields and the signature, which the assembly
//! needs) and, on x86_64, `area::libc_owned_offset` (for `cpu_id_load`'s
//! initializer); the modules above use it.
//!
//! ## ktl's thread-local block
//!
//! Each back end defines, in assembly, one thread-local block of
//! [`BLOCK_SIZE`] bytes aligned to [`BLOCK_ALIGN`]:
//!
//! | offset | size | what |
//! |---|---|---|
//! | 0 | [`OWN_AREA_CAPACITY`] | ktl's own `struct rseq`, registered only when ktl owns the area |
//! | [`DEAD_AREA`] | 32 | an area that is never registered, whose `cpu_id` stays -1 |
//!
//! Both areas start with `cpu_id` = -1 ([`crate::abi::RSEQ_CPU_ID_UNINITIALIZED`])
//! in the thread-local initialization image. The kernel writes the own area
//! only after ktl registers it, and nobody ever writes the dead area's
//! `cpu_id` (`rseq::add_current` may store a descriptor's address into the
//! `rseq_cs` field of an unregistered area, then leaves on its negative
//! `cpu_id`). That is what lets every fast accessor run with a single branch:
//! a negative `cpu_id` sends it to the slow path, whatever the reason.
//!
//! The block is defined in assembly, rather than with `thread_local!`, for two
//! reasons: its offset from the thread pointer must be a link-time constant
//! (it is part of the hot path before ktl has run any code), and its initial
//! image must hold the -1 values above.

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub(crate) use x86_64::*;

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "aarch64")]
pub(crate) use aarch64::*;

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("ktl supports x86_64 and aarch64 Linux");

/// Bytes reserved for ktl's own area. Registrations never exceed this length.
pub(crate) const OWN_AREA_CAPACITY: usize = 128;
/// Alignment of ktl's thread-local block, and so of its own area.
pub(crate) const BLOCK_ALIGN: usize = 64;
/// Offset of the dead area inside the block.
pub(crate) const DEAD_AREA: usize = OWN_AREA_CAPACITY;
/// Size of the block.
pub(crate) const BLOCK_SIZE: usize = DEAD_AREA + 32;

/// The process-wide offsets read by the fast accessors: the entries of the
/// hot-offset table.
///
/// Each holds the offset, from the thread pointer, of the area whose field the
/// accessor reads; the accessor gates on that area's `cpu_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub(crate) enum HotOffset {
    /// Area read by `cpu_id()`.
    Cpu = 0,
    /// Area read by `node_id()`.
    Node = 1,
    /// Area read by `mm_cid()`.
    Cid = 2,
}

/// The number of [`HotOffset`]s: the entries of the table.
pub(crate) const HOT_OFFSETS: usize = 3;

/// Why an operation did not commit: the critical sections' ways out
/// (`Leave`, `Exit`) become [`Aborted`](Self::Aborted) and
/// [`CompareFailed`](Self::CompareFailed); the fallbacks, which run no
/// section, give all three. Defined with the sections, and re-exported as
/// `rseq::Failure`.
///
/// It is one byte, and so is every operation's `Result<(), Failure>`: a
/// wider result measurably slows the loops the operations are inlined into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The kernel aborted the section (preemption, migration or a signal),
    /// or the index had already changed: start again.
    Aborted,
    /// The operation's compare did not match; nothing was stored.
    CompareFailed,
    /// The operation ran on the fenced fallback, and its membarrier fence
    /// failed, so it could not exclude the other threads' critical sections:
    /// nothing was stored. This is not an abort: the cause (for example a
    /// seccomp filter that refuses `membarrier` in this thread) usually
    /// lasts, so the caller should use its own fallback, as the per-CPU
    /// structures do (their shared stores).
    ///
    /// The variant carries no error value on purpose: a payload would make
    /// every operation's `Result` wider than a byte.
    FenceFailed,
}

/// How an operation's section left without committing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Leave {
    /// The kernel aborted it, or the index field did not hold the value
    /// (which includes an area that is not registered).
    Aborted,
    /// The operation's compare did not match; nothing was stored.
    CompareFailed,
    /// The fast variant found a gate closed somewhere in the process
    /// ([`gates_closed`] not 0): the caller runs the gated variant, which
    /// checks the gate of its own index value.
    Gated,
}

/// How a section of a `_current` operation (`rseq::add_current` and the
/// others that read the index inside the section) left without committing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// The kernel aborted it.
    Aborted,
    /// It wrote nothing: the index value has no slot, or the area is not
    /// registered.
    Other,
    /// The operation's compare did not match (or the list was empty); it
    /// wrote nothing but the caller's locals.
    CompareFailed,
}

/// Builds the symbol names of the assembly-defined items. They carry the
/// crate's major and minor version, so two semver-incompatible copies of ktl
/// in one program do not clash; each copy then owns its own block.
macro_rules! ktl_symbol {
    ($name:literal) => {
        concat!(
            "__ktl_",
            env!("CARGO_PKG_VERSION_MAJOR"),
            "_",
            env!("CARGO_PKG_VERSION_MINOR"),
            "_",
            $name
        )
    };
}
pub(crate) use ktl_symbol;

/// The tables of one restartable sequence, for an `asm!` template: its
/// descriptor (`struct rseq_cs`, label 3) in `__rseq_cs`, for a section that
/// starts at label 6, commits just before label 7 and aborts to label 8; and
/// a pointer to it (label 5) in `__rseq_cs_ptr_array`, retained against
/// `--gc-sections` for debuggers.
macro_rules! rseq_cs_tables {
    () => {
        concat!(
            ".pushsection __rseq_cs, \"aw\"\n",
            ".balign 32\n",
            "3:\n",
            ".long 0, 0\n",
            ".quad 6f, 7f - 6f, 8f\n",
            ".popsection\n",
            ".pushsection __rseq_cs_ptr_array, \"awR\"\n",
            "5:\n",
            ".quad 3b\n",
            ".popsection\n",
        )
    };
}
pub(crate) use rseq_cs_tables;

/// Records an exit of the section (other than the fall-through commit and
/// the abort) in `__rseq_exit_point_array`, as (start, exit) pairs for
/// checkpointing tools.
macro_rules! rseq_exit_point {
    ($exit:literal) => {
        concat!(
            ".pushsection __rseq_exit_point_array, \"awR\"\n",
            ".quad 6f, ",
            $exit,
            "\n",
            ".popsection\n",
        )
    };
}
pub(crate) use rseq_exit_point;

// The inside delay's iteration count (cargo feature `delay-injection`, see
// `rseq::delay`). It is read by name from inside the critical sections,
// where no operand can carry it, so it is defined here in assembly, hidden,
// and declared to Rust below.
#[cfg(feature = "delay-injection")]
core::arch::global_asm!(
    concat!(
        ".section .data.",
        ktl_symbol!("delay_inside"),
        ",\"aw\",%progbits"
    ),
    ".p2align 3",
    concat!(".globl ", ktl_symbol!("delay_inside")),
    concat!(".hidden ", ktl_symbol!("delay_inside")),
    concat!(ktl_symbol!("delay_inside"), ":"),
    ".quad 0",
    ".text",
);

#[cfg(feature = "delay-injection")]
unsafe extern "C" {
    /// The inside delay's iteration count (defined above).
    #[link_name = ktl_symbol!("delay_inside")]
    safe static DELAY_INSIDE: core::sync::atomic::AtomicU64;
}

/// Sets the number of busy-loop iterations each critical section runs right
/// after its index check.
#[cfg(feature = "delay-injection")]
pub(crate) fn set_delay_inside(iterations: u64) {
    DELAY_INSIDE.store(iterations, core::sync::atomic::Ordering::Relaxed);
}

/// The number of busy-loop iterations each critical section runs right
/// after its index check.
#[cfg(feature = "delay-injection")]
pub(crate) fn delay_inside() -> u64 {
    DELAY_INSIDE.load(core::sync::atomic::Ordering::Relaxed)
}

// The number of gates closed in the process (see `rseq::locked`): a word on
// a cache line of its own, which the fast variant of every critical section
// reads, by name, instead of its index value's gate. Defined in assembly,
// hidden, so that the sections can address it relative to the program
// counter in every kind of object.
core::arch::global_asm!(
    concat!(
        ".section .data.",
        ktl_symbol!("gates_closed"),
        ",\"aw\",%progbits"
    ),
    ".p2align 6",
    concat!(".globl ", ktl_symbol!("gates_closed")),
    concat!(".hidden ", ktl_symbol!("gates_closed")),
    concat!(ktl_symbol!("gates_closed"), ":"),
    ".long 0",
    ".zero 60",
    ".text",
);

unsafe extern "C" {
    /// The number of closed gates (defined above).
    #[link_name = ktl_symbol!("gates_closed")]
    safe static GATES_CLOSED: core::sync::atomic::AtomicU32;
}

/// The number of gates closed in the process. `rseq::locked` adds one when
/// a gate closes, before its fence, and takes it away once the gate has
/// opened; the fast variant of every critical section reads it inside the
/// section (an acquire load) and leaves for the gated variant while it is
/// not 0.
pub(crate) fn gates_closed() -> &'static core::sync::atomic::AtomicU32 {
    &GATES_CLOSED
}

// Weak references to the C library's rseq symbols, for statically linked
// programs, where dlsym cannot find them. The static linker resolves a weak
// reference to the definition when the C library has one, and to 0
// otherwise. The directives are the same on both architectures.
#[cfg(all(
    target_feature = "crt-static",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
core::arch::global_asm!(
    ".weak __rseq_offset",
    ".weak __rseq_size",
    ".weak __rseq_flags",
    concat!(
        ".section .data.rel.ro.",
        ktl_symbol!("libc_rseq"),
        ",\"aw\",%progbits"
    ),
    ".p2align 3",
    concat!(".globl ", ktl_symbol!("libc_rseq")),
    concat!(".hidden ", ktl_symbol!("libc_rseq")),
    concat!(ktl_symbol!("libc_rseq"), ":"),
    ".quad __rseq_offset",
    ".quad __rseq_size",
    ".quad __rseq_flags",
    ".text",
);

#[cfg(target_feature = "crt-static")]
unsafe extern "C" {
    /// The table defined above.
    #[link_name = ktl_symbol!("libc_rseq")]
    safe static LIBC_RSEQ: [*const u8; 3];
}

/// The addresses of `__rseq_offset`, `__rseq_size` and `__rseq_flags`, each
/// null when the C library does not define it.
#[cfg(target_feature = "crt-static")]
pub(crate) fn libc_weak_rseq_symbols() -> [*const u8; 3] {
    LIBC_RSEQ
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{OFFSET_CPU_ID, RSEQ_CPU_ID_UNINITIALIZED};

    #[test]
    fn block_is_per_thread_and_starts_unregistered() {
        let own = own_area_offset();
        let dead = dead_area_offset();
        assert_eq!(dead - own, DEAD_AREA as isize);
        assert_eq!(
            (thread_pointer() as isize).wrapping_add(own) % BLOCK_ALIGN as isize,
            0
        );
        // SAFETY: both offsets point into this thread's ktl block.
        let dead_cpu = unsafe { tp_load_u32::<OFFSET_CPU_ID>(dead) };
        assert_eq!(dead_cpu, RSEQ_CPU_ID_UNINITIALIZED);
        let tp_main = thread_pointer();
        let (tp_other, dead_other) = std::thread::spawn(move || {
            // SAFETY: as above, in the new thread.
            let v = unsafe { tp_load_u32::<OFFSET_CPU_ID>(dead) };
            (thread_pointer(), v)
        })
        .join()
        .unwrap();
        assert_ne!(tp_main, tp_other);
        assert_eq!(dead_other, RSEQ_CPU_ID_UNINITIALIZED);
    }

    /// What the kernel checks before it jumps to an abort handler: the
    /// 32-bit word before it, read in the data endianness, must be the
    /// registered signature. Read from every descriptor the linker kept.
    #[test]
    fn every_abort_handler_follows_the_registered_signature() {
        unsafe extern "C" {
            #[link_name = "__start___rseq_cs_ptr_array"]
            static START: [*const crate::abi::RseqCs; 0];
            #[link_name = "__stop___rseq_cs_ptr_array"]
            static STOP: [*const crate::abi::RseqCs; 0];
        }
        // The linker defines both symbols at the bounds of the section, an
        // array of pointers to descriptors.
        let start = (&raw const START).cast::<*const crate::abi::RseqCs>();
        let stop = (&raw const STOP).cast::<*const crate::abi::RseqCs>();
        // SAFETY: both bound one array (the section).
        let n = unsafe { stop.offset_from(start) };
        assert!(n > 0, "no descriptor in this binary");
        for i in 0..n as usize {
            // SAFETY: `i` is inside the array; each entry points to a
            // descriptor in `__rseq_cs`, and each descriptor's abort handler
            // follows 4 signature bytes in `__rseq_failure`, mapped
            // readable with the text.
            let word = unsafe {
                let cs = *start.add(i);
                let abort = (*cs).abort_ip as usize;
                core::ptr::read_unaligned((abort - 4) as *const u32)
            };
            assert_eq!(word, crate::abi::RSEQ_SIG, "descriptor {i}");
        }
    }

    #[test]
    fn tp_load_reads_the_thread_pointer_relative_address() {
        use core::sync::atomic::{AtomicU32, Ordering};
        let dead = dead_area_offset();
        let direct = |disp: isize| {
            let addr = (thread_pointer() as isize).wrapping_add(dead + disp);
            // SAFETY: the address is inside the dead area of this thread's
            // block, which nobody writes; an atomic load of it is sound.
            unsafe { AtomicU32::from_ptr(addr as *mut u32) }.load(Ordering::Relaxed)
        };
        // The dead area holds cpu_id_start = 0 and cpu_id = -1: the two loads
        // must tell the displacements apart, and agree with plain loads.
        // SAFETY: inside this thread's dead area.
        let start = unsafe { tp_load_u32::<0>(dead) };
        // SAFETY: as above.
        let cpu = unsafe { tp_load_u32::<OFFSET_CPU_ID>(dead) };
        // SAFETY: as above.
        let cpu_by_offset = unsafe { tp_load_u32::<0>(dead + OFFSET_CPU_ID as isize) };
        assert_eq!((start, cpu), (0, RSEQ_CPU_ID_UNINITIALIZED));
        assert_eq!(cpu_by_offset, cpu);
        assert_eq!((direct(0), direct(4)), (start, cpu));
    }
}
