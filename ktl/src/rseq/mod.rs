//! Restartable sequences: per-CPU updates with plain loads and stores.
//!
//! A restartable sequence is a short critical section that the kernel aborts
//! when the thread is preempted, migrated or signalled before its final store
//! (the commit). Code that only ever touches CPU `n`'s data from a sequence
//! that checks it still runs on CPU `n` therefore needs no lock and no atomic
//! instruction.
//!
//! An operation has two steps:
//!
//! 1. [`start`] reads the current index, the CPU number (`cpu_id_start`) or
//!    the concurrency id (`mm_cid`), as chosen with [`Index`]. The caller uses
//!    it to pick its per-CPU slot.
//! 2. The operation runs as one critical section that first checks the index
//!    is unchanged, then works on the slot and commits. It reports success, a
//!    failed compare ([`Failure::CompareFailed`]), or an abort
//!    ([`Failure::Aborted`]: the index changed or the kernel interrupted the
//!    section); after an abort the caller starts again. [`retry`] runs that
//!    loop.
//!
//! [`add_current`] and the other `_current` operations do both steps in one
//! section: the section reads the index itself, after it has published its
//! descriptor, and works on that index's slot of an array of per-CPU slots,
//! so nothing has to be compared and no [`Start`] passes between the steps.
//! They are the cheapest per-CPU operations, at the price of having no
//! fallback (below): a thread without a live area gets `None` (or `false`)
//! and works elsewhere.
//!
//! ## The fallback
//!
//! A thread without a live area still runs every operation but the
//! `_current` ones: [`start`] returns a fallback `Start`, and the operation takes a lock per index
//! value (its *gate*) instead of running a critical section, with the same
//! results (it never aborts). Two cases, named by [`Path`]:
//!
//! - [`Path::Locked`]: no thread of the process can have an area (the owner
//!   is [`Unavailable`](crate::Owner::Unavailable): no rseq system call, a
//!   filter, an emulator). The gate alone gives the exclusion.
//! - [`Path::Fenced`]: this thread has no area but others run critical
//!   sections (its registration failed, or it was released with
//!   [`area::release_current_thread`]).
//!   Every critical section checks its index value's gate inside the
//!   section, and the fallback runs a membarrier rseq fence after closing
//!   the gate, so the fast path and the fallback can work on the same data
//!   at the same time. It costs a system call per operation, and needs the
//!   rseq fence (Linux 5.10+); without it such a thread gets `None`.
//!
//! [`path`] says which path the process takes, [`without_area`] which one a
//! thread without an area takes, [`Start::path`] which one an operation
//! takes, and `ktl info` reports the first two.
//!
//! The operations are `unsafe`: their callers promise that a slot is only
//! ever modified by operations indexed by the slot's number, so that the
//! section's plain load and store cannot race. The safe per-CPU data
//! structures build on that promise.
//!
//! The operations, each one critical section on x86_64 and aarch64:
//!
//! | operation | does |
//! |---|---|
//! | [`cmpeqv_storev`] | store if a word matches |
//! | [`add`] | add to a word |
//! | [`add_current`] | add to the current CPU's word of an array ([`start`] and [`add`] in one section, without a fallback) |
//! | [`cmpnev_storeoffp_load`] | pop from a per-CPU list |
//! | [`offset_deref_addv`] | load a pointer, add at an offset from it |
//! | [`cmpeqv_cmpeqv_storev`] | compare two words, then store |
//! | [`cmpeqv_trystorev_storev`] | compare, store a second word, commit (relaxed or release) |
//! | [`cmpeqv_trymemcpy_storev`] | compare, copy a small buffer, commit (relaxed or release) |
//! | [`cmpeqv_storev_current`] | store if the current CPU's word of an array matches ([`start`] and [`cmpeqv_storev`] in one section, without a fallback) |
//! | [`pop_current`], [`push_current`] | pop from, push on the current CPU's list of an array (one section each, without a fallback) |
//! | [`stack_pop_current`], [`stack_push_current`] | pop from, push on the current CPU's [`WordStack`] of an array (one section each, without a fallback) |

use crate::abi::{Features, OFFSET_CPU_ID, OFFSET_CPU_ID_START, OFFSET_MM_CID};
use crate::arch::{self, Exit, HotOffset, Leave};
use crate::area;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

/// The per-thread number that indexes per-CPU data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Index {
    /// The CPU the thread runs on (`cpu_id_start`, checked against `cpu_id`).
    /// Below the number of possible CPUs.
    CpuId,
    /// The compact concurrency id (`mm_cid`, Linux 6.3+). Below the number
    /// of CPUs the process may use, so arrays indexed by it can be smaller.
    MmCid,
}

/// Why an operation did not commit.
///
/// After [`Failure::Aborted`], start again, as [`retry`] does.
/// [`Failure::FenceFailed`] comes from the [fenced fallback](self#the-fallback)
/// when its fence failed: [`retry`] returns it, and [`fence::fence_all`] in
/// the same thread returns the fence's error.
///
pub use crate::arch::Failure;

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Aborted => f.write_str("the restartable sequence was aborted"),
            Failure::CompareFailed => f.write_str("the compare failed; nothing was stored"),
            Failure::FenceFailed => {
                f.write_str("the fenced fallback's membarrier fence failed; nothing was stored")
            }
        }
    }
}

impl std::error::Error for Failure {}

/// The start of an operation: the index value read, and the area it was
/// read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    index: Index,
    value: u32,
    area: isize,
}

impl Start {
    /// The index value: the CPU number or the concurrency id.
    #[inline]
    pub fn value(self) -> u32 {
        self.value
    }

    /// Which index this is.
    #[inline]
    pub fn index(self) -> Index {
        self.index
    }

    /// The fallbacks' view of this start.
    fn key(self) -> locked::Key {
        locked::Key {
            index: self.index,
            value: self.value,
            fenced: path() != Path::Locked,
        }
    }

    /// Whether this is a fallback start: its area is the dead area, which is
    /// never registered, so every section run with it leaves before its work
    /// (see [`fallback_start`]).
    #[inline(always)]
    fn is_fallback(self) -> bool {
        self.area == arch::dead_area_offset()
    }

    /// How operations with this start run.
    #[inline]
    pub fn path(self) -> Path {
        if !self.is_fallback() {
            Path::CriticalSections
        } else if path() == Path::Locked {
            Path::Locked
        } else {
            Path::Fenced
        }
    }
}

/// Reads the current index for an operation.
///
/// In a thread without a live area, returns a fallback start, with which
/// the operations take a lock (see [the fallback](self#the-fallback)).
/// Returns `None` when no fallback can exclude the other threads' critical
/// sections ([`without_area`] is `None`), and for [`Index::MmCid`] when the
/// kernel lacks `mm_cid`.
///
/// Once the thread is set up this is the accessors' fast path: a load of the
/// area's offset, a thread-pointer-relative load of `cpu_id`, one branch
/// (and, for `mm_cid`, one more load).
#[inline]
pub fn start(index: Index) -> Option<Start> {
    let which = match index {
        Index::CpuId => HotOffset::Cpu,
        Index::MmCid => HotOffset::Cid,
    };
    let area = arch::hot_offset(which);
    // SAFETY: a hot offset always designates an area of the calling thread's
    // static TLS (see `arch`); the mm_cid offset designates a live area only
    // where the kernel provides mm_cid, and the dead area otherwise.
    let cpu = unsafe { arch::tp_load_u32::<OFFSET_CPU_ID>(area) };
    if (cpu as i32) < 0 {
        // The slow path answers with a pair of scalars, which come back in
        // registers; the `Start` is built here, in the caller's registers.
        let (area, value) = start_slow(index);
        return (area != NO_START).then_some(Start { index, value, area });
    }
    let value = match index {
        // While the area is registered, cpu_id equals cpu_id_start.
        Index::CpuId => cpu,
        // SAFETY: as above; the area is live.
        Index::MmCid => unsafe { arch::tp_load_u32::<OFFSET_MM_CID>(area) },
    };
    Some(Start { index, value, area })
}

/// The slow path of [`start`]: decides the owner and registers the thread
/// if needed. Returns the start's `(area, value)`, or `area` [`NO_START`]
/// where `start` returns `None`.
#[cold]
#[inline(never)]
fn start_slow(index: Index) -> (isize, u32) {
    let Some(area) = area::thread_area() else {
        return fallback_start(index);
    };
    let value = match index {
        // SAFETY: `thread_area` returns this thread's live area.
        Index::CpuId => unsafe { arch::tp_load_u32::<OFFSET_CPU_ID_START>(area) },
        Index::MmCid => {
            if !area::layout().features.contains(Features::MM_CID) {
                return (NO_START, 0);
            }
            // SAFETY: as above.
            unsafe { arch::tp_load_u32::<OFFSET_MM_CID>(area) }
        }
    };
    (area, value)
}

/// [`start_slow`]'s `area` when there is no start: never a thread-pointer
/// offset of an area.
const NO_START: isize = isize::MIN;

/// How operations run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Path {
    /// As restartable sequences, in a thread with a live area.
    CriticalSections,
    /// In a thread without a live area while other threads run critical
    /// sections: each operation closes its index value's gate, then runs a
    /// membarrier rseq fence so that no section races with it (a system
    /// call per operation; see [the fallback](self#the-fallback)).
    Fenced,
    /// Nothing in the process has an rseq area, so every operation takes a
    /// lock (its index value's gate) instead.
    Locked,
}

impl core::fmt::Display for Path {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Path::CriticalSections => "restartable sequences",
            Path::Fenced => "a lock per index value and an rseq fence",
            Path::Locked => "a lock per index value (rseq unavailable)",
        })
    }
}

/// How operations run in this process, decided with the owner:
/// [`Path::CriticalSections`] when threads can have an area (a thread
/// without one then takes [`without_area`]), [`Path::Locked`] when none can.
pub fn path() -> Path {
    match area::layout().owner {
        crate::Owner::Unavailable(_) => Path::Locked,
        _ => Path::CriticalSections,
    }
}

/// How operations run in a thread that has no live area: [`Path::Locked`]
/// when no thread has one, [`Path::Fenced`] when other threads may and the
/// membarrier rseq fence is available, and `None` when it is not (such a
/// thread then gets `None` from [`start`]).
pub fn without_area() -> Option<Path> {
    match path() {
        Path::CriticalSections => (fence::kind() == fence::FenceKind::Rseq).then_some(Path::Fenced),
        other => Some(other),
    }
}

/// The start of an operation in a thread without a live area, on the path
/// that [`without_area`] names. The index value comes from the accessors'
/// fallbacks; for `mm_cid` that is the CPU number, below the possible CPUs.
///
/// Its area is the dead area, whose `cpu_id` is always -1: the fast path
/// has no test for a fallback start. The operation runs its section, which
/// leaves at its first tests (the index compare, or for `mm_cid` the
/// liveness test) having written only the dead area's `rseq_cs`, and its
/// out-of-line exit finds the fallback start there and takes the lock.
fn fallback_start(index: Index) -> (isize, u32) {
    match without_area() {
        None => return (NO_START, 0),
        Some(Path::Locked) => {}
        Some(_) => {
            if index == Index::MmCid && !area::layout().features.contains(Features::MM_CID) {
                return (NO_START, 0);
            }
        }
    }
    let area = arch::dead_area_offset();
    let value = match index {
        Index::CpuId => crate::cpu_id(),
        Index::MmCid => crate::mm_cid(),
    };
    (area, value)
}

/// Runs the architecture's operation `$op` for `$start`'s index, in its
/// fast variant (`gated` false) or its gated one (true). The index field and
/// the variant are constants of the block, so an operation inlined with a
/// known index (as [`retry`] gives it) is one section; the fast variant needs
/// no gate address, the gated one (out of line) computes the value's.
macro_rules! section {
    ($start:expr, $gated:literal, $op:ident $(, $flag:expr)? ; $($arg:expr),* $(,)?) => {{
        let s: Start = $start;
        let gate = if $gated { locked::gate(s.value) } else { core::ptr::null() };
        match s.index {
            Index::CpuId => arch::$op::<OFFSET_CPU_ID, $gated $(, $flag)?>(
                s.area, s.value, gate, $($arg),*
            ),
            Index::MmCid => arch::$op::<OFFSET_MM_CID, $gated $(, $flag)?>(
                s.area, s.value, gate, $($arg),*
            ),
        }
    }};
}

/// Runs an operation: its fast section inline; a failed compare returned
/// as it is; any other way out to `off_path`, a function of the operation
/// made here, out of line: for a fallback start it runs `$fallback` (the
/// operation under its gate's lock, given the start's key as `$key`), when
/// a gate was closed `$gated` (the operation's gated section), and after an
/// abort it returns [`Failure::Aborted`].
///
/// `off_path` takes the start's fields and the operands `$arg` one by one,
/// in registers: a `Start` or a closure passed whole goes through memory,
/// and the inlined fast path would store it on the stack before every
/// section.
macro_rules! operation {
    (
        $start:ident, ($($arg:ident: $ty:ty),*) -> $t:ty;
        fast: $fast:expr;
        fallback($key:ident): $fallback:expr;
        gated: $gated:expr $(;)?
    ) => {{
        #[inline(always)]
        #[allow(clippy::too_many_arguments)] // the start's fields and the operands, in registers
        unsafe fn off_path(
            index: Index,
            value: u32,
            area: isize,
            leave: Leave,
            $($arg: $ty),*
        ) -> Result<$t, Failure> {
            let $start = Start { index, value, area };
            if $start.is_fallback() {
                let $key = $start.key();
                return $fallback;
            }
            match leave {
                Leave::Gated => ($gated).map_err(|leave| match leave {
                    Leave::CompareFailed => Failure::CompareFailed,
                    _ => Failure::Aborted,
                }),
                Leave::CompareFailed => Err(Failure::CompareFailed),
                Leave::Aborted => Err(Failure::Aborted),
            }
        }
        /// `off_path` after an abort (or on a fallback start).
        ///
        /// # Safety
        ///
        /// The operation's contract.
        #[cold]
        #[inline(never)]
        #[allow(clippy::too_many_arguments)] // the start's fields and the operands, in registers
        unsafe fn aborted(index: Index, value: u32, area: isize, $($arg: $ty),*) -> Result<$t, Failure> {
            // SAFETY: forwarded to the caller's contract.
            unsafe { off_path(index, value, area, Leave::Aborted, $($arg),*) }
        }
        /// `off_path` when a gate was closed.
        ///
        /// # Safety
        ///
        /// The operation's contract.
        #[cold]
        #[inline(never)]
        #[allow(clippy::too_many_arguments)] // the start's fields and the operands, in registers
        unsafe fn gated(index: Index, value: u32, area: isize, $($arg: $ty),*) -> Result<$t, Failure> {
            // SAFETY: forwarded to the caller's contract.
            unsafe { off_path(index, value, area, Leave::Gated, $($arg),*) }
        }
        delay_before();
        // Each way out calls a function of its own, with no `Leave` to pass:
        // a value chosen by the way out would be set before every section
        // (the exits of an `asm!` block cannot take instructions of their
        // own).
        match $fast {
            Ok(v) => Ok(v),
            Err(Leave::CompareFailed) => Err(Failure::CompareFailed),
            // SAFETY: the operation's own contract, which its caller keeps.
            Err(Leave::Aborted) => unsafe {
                aborted($start.index, $start.value, $start.area, $($arg),*)
            },
            // SAFETY: as above.
            Err(Leave::Gated) => unsafe {
                gated($start.index, $start.value, $start.area, $($arg),*)
            },
        }
    }};
}

/// The section of an operation with a [`Commit`] operand, in the variant
/// `$gated`: its `RELEASE` constant chosen from `$commit`.
macro_rules! committing_section {
    ($start:expr, $gated:literal, $op:ident, $commit:expr; $($arg:expr),* $(,)?) => {
        match $commit {
            Commit::Relaxed => section!($start, $gated, $op, false; $($arg),*),
            Commit::Release => section!($start, $gated, $op, true; $($arg),*),
        }
    };
}

/// The memory ordering of an operation's commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Commit {
    /// A plain store.
    Relaxed,
    /// A store-release: the speculative stores before it are visible to any
    /// thread that reads the committed value with acquire ordering.
    Release,
}

/// Adds `count` to `*v`, in one critical section committed only if the
/// thread still runs with `start`'s index.
///
/// # Safety
///
/// - `start` must come from [`start`] in the calling thread;
/// - `v` must be valid for reads and writes of an `i64` and 8-byte aligned;
/// - every write to `*v` while other threads may access it must be made by
///   an operation of this module started with the same index value, so that
///   only one thread at a time (the one running with that index) can be
///   inside a section that writes it; or with atomic accesses by a thread
///   that holds [`exclusive`] for that index value.
#[inline]
pub unsafe fn add(start: Start, v: *mut i64, count: i64) -> Result<(), Failure> {
    operation!(start, (v: *mut i64, count: i64) -> ();
        // SAFETY: forwarded to the caller's contract; `start.area` is an area
        // of this thread (its registered area, or the dead area of a
        // fallback start, on which the section leaves before its work).
        fast: unsafe { section!(start, false, rseq_add; v, count) };
        // SAFETY: the caller's contract.
        fallback(key): unsafe { locked::add(key, v, count) };
        // SAFETY: as for the fast section.
        gated: unsafe { section!(start, true, rseq_add; v, count) };
    )
}

/// Adds `count` to the current CPU's (or concurrency id's) word in an array
/// of per-CPU words, in one critical section that reads the index itself:
/// the word at byte `value * stride` from `base`, where `value` is the index
/// value the section runs with. Retries after aborts (counted in
/// [`aborts`]).
///
/// This is [`start`] and [`add`] in one section. The section reads the index
/// after it has published its descriptor, so a migration, a preemption or a
/// signal between that read and the commit aborts it: it needs no compare
/// with a value read before. It is the cheapest way to count per CPU, and
/// what [`PerCpuCounter`](crate::percpu::PerCpuCounter) uses.
///
/// It has no fallback, and its section no gate check, which is what keeps
/// it cheaper than [`add`]: returns `false`, having added nothing, when the
/// thread has no live area (see [`path`] and [`without_area`]), or when the
/// index value is not below `len`. The caller then counts elsewhere, for
/// example in one shared atomic, as `PerCpuCounter` does.
///
/// # Safety
///
/// For every index value `i` below `len`:
/// - `i * stride` must not overflow an `isize`, and `base + i * stride` must
///   be valid for reads and writes of an `i64` and 8-byte aligned;
/// - while other threads may access that word, it must only be written by
///   `add_current` with the same `index` (which writes word `i` only while
///   running with index value `i`). Not by the other operations, whose
///   fallbacks write with atomics, nor under [`exclusive`], which this
///   section does not check; other threads may read it with atomic loads.
///
/// ```
/// use ktl::rseq::{self, Index};
/// use std::sync::atomic::{AtomicI64, Ordering};
///
/// // One word per possible CPU, each on its own pair of cache lines.
/// #[repr(align(128))]
/// struct Slot(AtomicI64);
/// let n = ktl::cpu::possible_cpus().unwrap_or(1) as usize;
/// let slots: Vec<Slot> = (0..n).map(|_| Slot(AtomicI64::new(0))).collect();
/// let shared = AtomicI64::new(0);
/// let base = slots[0].0.as_ptr().cast::<u8>();
/// for _ in 0..10 {
///     // SAFETY: word `i` is at `base + i * size_of::<Slot>()` for `i < n`,
///     // and only `add_current` indexed by CPU writes the words.
///     if !unsafe { rseq::add_current(Index::CpuId, base, size_of::<Slot>(), n, 3) } {
///         // No live area in this thread: count in one shared atomic.
///         shared.fetch_add(3, Ordering::Relaxed);
///     }
/// }
/// let per_cpu: i64 = slots.iter().map(|s| s.0.load(Ordering::Relaxed)).sum();
/// assert_eq!(per_cpu + shared.load(Ordering::Relaxed), 30);
/// ```
#[inline]
pub unsafe fn add_current(
    index: Index,
    base: *mut u8,
    stride: usize,
    len: usize,
    count: i64,
) -> bool {
    // SAFETY: the caller's contract, which the halves share.
    match unsafe { add_current_first(index, base, stride, len, count) } {
        Ok(()) => true,
        // SAFETY: as above.
        Err(exit) => unsafe { add_current_after(exit, index, base, stride, len, count) },
    }
}

current_operation_halves! {
    /// [`add_current`]'s first attempt, inline: `Ok` when it committed; on
    /// `Err`, the caller hands the exit to [`add_current_after`], out of
    /// line. For callers whose fallback is out of line too
    /// (`PerCpuCounter::add`), so that the inline path is the section and a
    /// tail call, with no register saved around a call.
    ///
    /// # Safety
    ///
    /// As for [`add_current`].
    first: add_current_first;
    /// What [`add_current`] does after a first attempt that left with
    /// `exit` ([`add_current_first`]): `true` once an attempt commits,
    /// `false`, having changed nothing, when the thread has no live area or
    /// the index value is not below `len`.
    ///
    /// # Safety
    ///
    /// As for [`add_current`].
    after: add_current_after;
    add_current_once, add_current_slow, rseq_add_current;
    base: *mut u8, stride: usize, len: usize, count: i64;
    capped: len
}

current_operation_halves! {
    /// Adds one to the count of the current CPU's (or concurrency id's)
    /// record in an array of per-CPU records, and `v` to its sum, in one
    /// critical section: the record at byte `value * stride` from `rec`,
    /// where `value` is the index value the section runs with. What
    /// [`PerCpuHistogram`](crate::percpu::PerCpuHistogram) observes with.
    ///
    /// A record is three words, [`CountSum`]: a count, and two `f64` sums of
    /// which the one at the count's parity holds the sum. The section writes
    /// the new sum into the other one, then commits by adding one to the
    /// count (a store-release on aarch64; on x86_64 every store is one).
    ///
    /// This is the first attempt, inline, as [`add_current_first`] is: `Ok`
    /// when it committed; on `Err`, the caller hands the exit to
    /// [`count_sum_current_after`], out of line.
    ///
    /// # Safety
    ///
    /// For every index value `i` below `len`, `rec + i * stride` must be a
    /// live [`CountSum`] (and `i * stride` not overflow an `isize`) that only
    /// `count_sum_current_first` and `_after` with the same `index` write
    /// while other threads may access it; other threads may read it with
    /// [`CountSum::load`].
    first: count_sum_current_first;
    /// What follows a first attempt of [`count_sum_current_first`] that left
    /// with `exit`: retries after aborts (counted in [`aborts`]); `true` once
    /// an attempt commits, `false`, having changed nothing, when the thread
    /// has no live area or the index value is not below `len`, as
    /// [`add_current`] does.
    ///
    /// # Safety
    ///
    /// As for [`count_sum_current_first`].
    after: count_sum_current_after;
    count_sum_current_once, count_sum_current_slow, rseq_count_sum_current;
    rec: *mut u8, stride: usize, len: usize, v: f64;
    capped: len
}

/// A record of [`count_sum_current_first`]: a count and a sum, updated together
/// by one critical section.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct CountSum {
    /// The observations counted.
    count: core::sync::atomic::AtomicU64,
    /// The sum's bits (`f64::to_bits`) at `sums[count & 1]`; the other is
    /// the next section's scratch.
    sums: [core::sync::atomic::AtomicU64; 2],
}

const _: () = assert!(
    core::mem::offset_of!(CountSum, count) == 0
        && core::mem::offset_of!(CountSum, sums) == 8
        && size_of::<CountSum>() == 24
);

impl CountSum {
    /// The count and the sum. Exact once the writers are quiescent. While
    /// one runs, the pair is consistent when the count reads the same
    /// before and after the sum (the load is retried a few times for
    /// that); otherwise the sum may already include observations the
    /// count does not.
    pub(crate) fn load(&self) -> (u64, f64) {
        use core::sync::atomic::{Ordering, fence};
        let mut tries = 0;
        loop {
            let n = self.count.load(Ordering::Acquire);
            let sum = f64::from_bits(self.sums[(n & 1) as usize].load(Ordering::Relaxed));
            fence(Ordering::Acquire);
            tries += 1;
            if self.count.load(Ordering::Relaxed) == n || tries == 4 {
                return (n, sum);
            }
        }
    }

    /// Sets the count and the sum to zero.
    pub(crate) fn reset(&mut self) {
        *self.count.get_mut() = 0;
        self.sums.iter_mut().for_each(|s| *s.get_mut() = 0);
    }
}

/// Defines the two halves of a `_current` operation (one that reads the
/// index inside its section, like [`add_current`]): `$once`, one attempt of
/// the section `arch::$op` for an index, inline; and `$slow`, out of line,
/// what follows an attempt that left without committing or failing its
/// compare: it counts an abort, registers the thread's area if it has none
/// yet (the first operation of a thread, with
/// [`Owner::Ktl`](crate::Owner::Ktl)), and tries again until the section
/// does not abort. `$slow` gives `Err(Exit::Other)` when the thread has no
/// live area or the index value has no slot, never `Err(Exit::Aborted)`.
///
/// [`current_operation!`] joins the halves. A caller that has a fallback of
/// its own takes them apart ([`current_operation_halves!`], as
/// [`add_current_first`] and [`add_current_after`] do), so that its inline
/// path ends in a tail call of its out-of-line one and saves no register.
macro_rules! current_operation_fns {
    ($once:ident, $slow:ident, $op:ident $(, $flag:expr)? => $t:ty;
        $($arg:ident: $ty:ty),* $(,)?) => {
        /// One attempt.
        ///
        /// # Safety
        ///
        /// The operation's contract.
        #[inline(always)]
        unsafe fn $once(index: Index, $($arg: $ty),*) -> Result<$t, Exit> {
            delay_before();
            // SAFETY: a hot offset designates an area of this thread's static
            // TLS; the slots' validity below `len` is the caller's contract.
            unsafe {
                match index {
                    Index::CpuId => arch::$op::<OFFSET_CPU_ID $(, $flag)?>(
                        arch::hot_offset(HotOffset::Cpu),
                        $($arg),*
                    ),
                    Index::MmCid => arch::$op::<OFFSET_MM_CID $(, $flag)?>(
                        arch::hot_offset(HotOffset::Cid),
                        $($arg),*
                    ),
                }
            }
        }
        /// After an attempt left without committing.
        ///
        /// # Safety
        ///
        /// The operation's contract.
        #[cold]
        #[inline(never)]
        #[allow(clippy::too_many_arguments)] // the operands, in registers
        unsafe fn $slow(exit: Exit, index: Index, $($arg: $ty),*) -> Result<$t, Exit> {
            match exit {
                Exit::Aborted => count_abort(),
                Exit::Other => {
                    if area::thread_area().is_none() {
                        return Err(Exit::Other);
                    }
                }
                Exit::CompareFailed => return Err(exit),
            }
            loop {
                // SAFETY: forwarded to the caller's contract.
                match unsafe { $once(index, $($arg),*) } {
                    Err(Exit::Aborted) => count_abort(),
                    other => return other,
                }
            }
        }
    };
}

/// Runs a `_current` operation: the section `arch::$op` for `$index`,
/// inline, with the operands `$arg`; a commit or a failed compare returned
/// as they are; any other exit to the out-of-line half that
/// [`current_operation_fns!`] describes.
macro_rules! current_operation {
    ($index:expr, $op:ident $(, $flag:expr)?; $($arg:ident: $ty:ty = $val:expr),* $(,)?) => {
        current_operation!($index, $op $(, $flag)? => (); $($arg: $ty = $val),*)
    };
    ($index:expr, $op:ident $(, $flag:expr)? => $t:ty; $($arg:ident: $ty:ty = $val:expr),* $(,)?) => {{
        current_operation_fns!(once, slow, $op $(, $flag)? => $t; $($arg: $ty),*);
        let index: Index = $index;
        $(let $arg: $ty = $val;)*
        // SAFETY: forwarded to the caller's contract.
        match unsafe { once(index, $($arg),*) } {
            Ok(v) => Ok(v),
            Err(Exit::CompareFailed) => Err(Exit::CompareFailed),
            // SAFETY: forwarded to the caller's contract.
            Err(exit) => unsafe { slow(exit, index, $($arg),*) },
        }
    }};
}
use current_operation_fns;

/// Defines a `_current` operation as two crate-internal functions, for a
/// caller with a fallback of its own: `$first`, the first attempt, inline
/// (`Ok` once it committed), and `$after`, which takes its exit, out of
/// line (`true` once an attempt committed, `false` when the thread has no
/// live area or the index value no slot). Both cap the operand named after
/// `capped:` (the arrays' length) at [`INDEX_LIMIT`], as the operations'
/// public forms do.
macro_rules! current_operation_halves {
    (
        $(#[$first_doc:meta])* first: $first:ident;
        $(#[$after_doc:meta])* after: $after:ident;
        $once:ident, $slow:ident, $op:ident;
        $($arg:ident: $ty:ty),*;
        capped: $len:ident
    ) => {
        current_operation_fns!($once, $slow, $op => (); $($arg: $ty),*);

        $(#[$first_doc])*
        #[inline(always)]
        pub(crate) unsafe fn $first(index: Index, $($arg: $ty),*) -> Result<(), Exit> {
            let $len = $len.min(INDEX_LIMIT);
            // SAFETY: the caller's contract, for the capped length too.
            unsafe { $once(index, $($arg),*) }
        }

        $(#[$after_doc])*
        #[inline(always)]
        pub(crate) unsafe fn $after(exit: Exit, index: Index, $($arg: $ty),*) -> bool {
            let $len = $len.min(INDEX_LIMIT);
            // SAFETY: the caller's contract, for the capped length too.
            unsafe { $slow(exit, index, $($arg),*) }.is_ok()
        }
    };
}
use current_operation_halves;

/// Above every index value: the `_current` operations cap their arrays'
/// length here. The sections zero-extend the index field, so an
/// unregistered area's -1 (or -2) reads as 0xFFFF_FFFF and fails the bound
/// check whatever length the caller gave. (A sign-extending load would do
/// the same inside the section, but it lengthens the load-multiply-add
/// chain, which made each add measurably slower.)
const INDEX_LIMIT: usize = 1 << 31;

/// Stores `newv` into the current CPU's (or concurrency id's) word of an
/// array of per-CPU words if it equals `expect`, in one critical section
/// that reads the index itself, as [`add_current`] does: the word at byte
/// `value * stride` from `base`. Retries after aborts (counted in
/// [`aborts`]).
///
/// Returns `Some(Ok(word))`, the address of the word it stored (`base +
/// value * stride`, for the index value it ran with);
/// `Some(Err(Failure::CompareFailed))` when the word differed (nothing
/// stored); `None`, having stored nothing, when the thread has no live area
/// or the index value is not below `len` (no fallback: the caller works
/// elsewhere, as with [`add_current`]).
///
/// Taking a per-CPU lock is its use: compare 0, store 1, and the address
/// says whose lock the thread holds, wherever it runs next. The address
/// comes back in a register: the section has no exit labels, it reports
/// how it left in a second register instead, so that nothing goes through
/// memory on the way to the work the lock guards.
///
/// # Safety
///
/// For every index value `i` below `len`:
/// - `i * stride` must not overflow an `isize`, and `base + i * stride` must
///   be valid for reads and writes of an `i64` and 8-byte aligned;
/// - while other threads may access that word, it must only be written by
///   this operation with the same `index` (which writes word `i` only while
///   running with index value `i`), or with an atomic store while the
///   operation cannot commit a write to it (the holder of a lock taken with
///   it releasing it: the compare fails while it is held). Not by the other
///   operations, nor under [`exclusive`], which these sections do not check.
///
/// ```
/// use ktl::rseq::{self, Index};
/// use std::sync::atomic::{AtomicI64, Ordering};
///
/// // One lock and the count it guards per possible CPU.
/// #[repr(C, align(128))]
/// #[derive(Default)]
/// struct Locked {
///     lock: AtomicI64,
///     count: AtomicI64,
/// }
/// let n = ktl::cpu::possible_cpus().unwrap_or(1) as usize;
/// let data: Vec<Locked> = (0..n).map(|_| Locked::default()).collect();
/// let base = data[0].lock.as_ptr().cast::<u8>();
/// let taken = loop {
///     // SAFETY: the locks are written only by this operation and by their
///     // holder's release below.
///     match unsafe { rseq::cmpeqv_storev_current(Index::CpuId, base, size_of::<Locked>(), n, 0, 1) } {
///         Some(Ok(word)) => break Some(word),
///         Some(Err(_)) => std::hint::spin_loop(), // held by another thread
///         None => break None,                      // no live area here
///     }
/// };
/// if let Some(word) = taken {
///     // SAFETY: the word is the `lock` of one of `data`'s elements.
///     let mine = unsafe { &*word.cast::<Locked>() };
///     std::sync::atomic::fence(Ordering::Acquire);
///     mine.count.fetch_add(1, Ordering::Relaxed);
///     mine.lock.store(0, Ordering::Release);
/// }
/// ```
#[inline]
pub unsafe fn cmpeqv_storev_current(
    index: Index,
    base: *mut u8,
    stride: usize,
    len: usize,
    expect: i64,
    newv: i64,
) -> Option<Result<*mut i64, Failure>> {
    // The operation's sections run under the caller's contract.
    let done = current_operation!(index, rseq_cmpeqv_storev_current => *mut i64;
        base: *mut u8 = base, stride: usize = stride, len: usize = len.min(INDEX_LIMIT),
        expect: i64 = expect, newv: i64 = newv);
    match done {
        Ok(word) => Some(Ok(word)),
        Err(Exit::CompareFailed) => Some(Err(Failure::CompareFailed)),
        Err(_) => None,
    }
}

/// Pops from the current CPU's (or concurrency id's) list of an array of
/// per-CPU lists, in one critical section that reads the index itself, as
/// [`add_current`] does: the list whose head is the pointer at byte
/// `value * stride` from `base`; the pointer at byte `next_offset` of each
/// node is its next. Retries after aborts (counted in [`aborts`]).
///
/// Returns `Some(Ok(node))`, the node taken off; `Some(Err(Failure::CompareFailed))`
/// when the list is empty (its head null); `None`, having done nothing, when
/// the thread has no live area or the index value is not below `len` (no
/// fallback, as with [`add_current`]).
///
/// # Safety
///
/// The contract of [`push_current`], which pushes on the same lists.
#[inline]
pub unsafe fn pop_current(
    index: Index,
    base: *mut u8,
    stride: usize,
    len: usize,
    next_offset: isize,
) -> Option<Result<*mut u8, Failure>> {
    let mut popped: *mut u8 = core::ptr::null_mut();
    let load = &raw mut popped;
    // The operation's sections run under the caller's contract; `load` points to a local.
    let done = current_operation!(index, rseq_pop_current;
        base: *mut u8 = base, stride: usize = stride, len: usize = len.min(INDEX_LIMIT),
        next_offset: isize = next_offset, load: *mut *mut u8 = load);
    match done {
        Ok(()) => Some(Ok(popped)),
        Err(Exit::CompareFailed) => Some(Err(Failure::CompareFailed)),
        Err(_) => None,
    }
}

/// Pushes `node` on the current CPU's (or concurrency id's) list of an array
/// of per-CPU lists, in one critical section that reads the index itself, as
/// [`add_current`] does: the section reads the list's head, stores it at
/// byte `next_offset` of `node`, and commits the head to `node`. There is no
/// compare to fail (the head is read inside the section, where
/// [`cmpeqv_storev`] compares a head read before): returns `false`, having
/// pushed nothing, only when the thread has no live area or the index value
/// is not below `len`. Retries after aborts (counted in [`aborts`]).
///
/// # Safety
///
/// For every index value `i` below `len`:
/// - `i * stride` must not overflow an `isize`, and `base + i * stride` must
///   be valid for reads and writes of a pointer and aligned for it;
/// - while other threads may access that head, it must only be written by
///   [`push_current`] and [`pop_current`] with the same `index` (which write
///   head `i` only while running with index value `i`); not by the other
///   operations, nor under [`exclusive`], which these sections do not check;
/// - every node on the lists must stay valid for a pointer-sized read at
///   `next_offset` while it is on a list; `node` must be valid for a
///   pointer-sized write at `next_offset`, and not on any list: the section
///   writes its next pointer on every attempt.
///
/// ```
/// use ktl::rseq::{self, Index};
///
/// #[repr(C)]
/// struct Node {
///     next: *mut Node,
///     value: u64,
/// }
/// // One list head per possible CPU, each on its own pair of cache lines.
/// #[repr(align(128))]
/// struct Head(*mut Node);
/// let n = ktl::cpu::possible_cpus().unwrap_or(1) as usize;
/// let mut heads: Vec<Head> = (0..n).map(|_| Head(std::ptr::null_mut())).collect();
/// let base = heads.as_mut_ptr().cast::<u8>();
/// let node = Box::into_raw(Box::new(Node { next: std::ptr::null_mut(), value: 7 }));
/// // SAFETY: the heads are written only by push_current and pop_current
/// // indexed by CPU; `node` is on no list, and its next pointer is at 0.
/// if unsafe { rseq::push_current(Index::CpuId, base, size_of::<Head>(), n, node.cast(), 0) } {
///     // SAFETY: as above; the nodes on the lists are live.
///     let popped = match unsafe { rseq::pop_current(Index::CpuId, base, size_of::<Head>(), n, 0) } {
///         Some(Ok(p)) => p,
///         // The thread moved to another CPU since the push: the node is
///         // still on the list of the CPU it was pushed on.
///         _ => {
///             let h = heads.iter_mut().find(|h| !h.0.is_null()).unwrap();
///             std::mem::replace(&mut h.0, std::ptr::null_mut()).cast()
///         }
///     };
///     assert_eq!(popped, node.cast());
/// }
/// // SAFETY: the node is on no list any more.
/// assert_eq!(unsafe { Box::from_raw(node) }.value, 7);
/// ```
#[inline]
pub unsafe fn push_current(
    index: Index,
    base: *mut u8,
    stride: usize,
    len: usize,
    node: *mut u8,
    next_offset: isize,
) -> bool {
    // The operation's sections run under the caller's contract.
    let done = current_operation!(index, rseq_push_current;
        base: *mut u8 = base, stride: usize = stride, len: usize = len.min(INDEX_LIMIT),
        node: *mut u8 = node, next_offset: isize = next_offset);
    done.is_ok()
}

/// One CPU's stack of words, for [`stack_push_current`] and
/// [`stack_pop_current`]: `len` words used of the `cap` at `items` (the
/// layout of param_test's per-CPU buffer). Put one in each slot of an array
/// of per-CPU slots.
///
/// The sections read and write `len` with plain loads and stores; other
/// threads may read it with atomic loads. `cap` and `items` are read by the
/// sections and must not change while operations may run.
#[repr(C)]
#[derive(Debug)]
pub struct WordStack {
    /// The number of words on the stack, at most `cap`.
    pub len: core::sync::atomic::AtomicUsize,
    /// How many words `items` has room for.
    pub cap: usize,
    /// The words: the stack is `items[..len]`, its top `items[len - 1]`.
    pub items: *mut usize,
}

const _: () = assert!(
    core::mem::offset_of!(WordStack, len) == 0
        && core::mem::offset_of!(WordStack, cap) == 8
        && core::mem::offset_of!(WordStack, items) == 16
);

// SAFETY: a WordStack's words are reached only through the `_current`
// operations, whose contract says who may write them; the pointer itself
// is plain data.
unsafe impl Send for WordStack {}
// SAFETY: as above.
unsafe impl Sync for WordStack {}

/// Pushes `word` on the current CPU's (or concurrency id's) stack of an
/// array of per-CPU [`WordStack`]s, in one critical section that reads the
/// index itself, as [`add_current`] does: the stack at byte `value * stride`
/// from `base`. The section stores the word past the length and commits the
/// length plus one, with the ordering `commit` ([`Commit::Release`] makes the
/// word, and what the caller wrote before, visible to a thread that reads
/// the length with acquire ordering). Retries after aborts (counted in
/// [`aborts`]).
///
/// Returns `Some(Ok(()))` once pushed; `Some(Err(Failure::CompareFailed))`
/// when the stack is full (nothing stored); `None`, having stored nothing,
/// when the thread has no live area or the index value is not below `len`
/// (no fallback, as with [`add_current`]).
///
/// # Safety
///
/// For every index value `i` below `len`:
/// - `i * stride` must not overflow an `isize`, and `base + i * stride` must
///   be a valid, aligned [`WordStack`] whose `items` are valid for reads and
///   writes of `cap` words;
/// - while other threads may access a stack, its `len` and words must only be
///   written by [`stack_push_current`] and [`stack_pop_current`] with the same
///   `index` (which write stack `i` only while running with index value
///   `i`); not by the other operations, nor under [`exclusive`], which these
///   sections do not check.
///
/// ```
/// use ktl::rseq::{self, Commit, Index, WordStack};
/// use std::sync::atomic::{AtomicUsize, Ordering};
///
/// // One stack of 8 words per possible CPU, each on its own pair of lines.
/// #[repr(align(128))]
/// struct Slot(WordStack);
/// let n = ktl::cpu::possible_cpus().unwrap_or(1) as usize;
/// let mut words = vec![0usize; n * 8];
/// let slots: Vec<Slot> = words
///     .chunks_mut(8)
///     .map(|w| Slot(WordStack { len: AtomicUsize::new(0), cap: 8, items: w.as_mut_ptr() }))
///     .collect();
/// let (base, stride) = (slots.as_ptr().cast_mut().cast::<u8>(), size_of::<Slot>());
/// // SAFETY: the stacks are valid, and only these two operations, indexed
/// // by CPU, write them.
/// if unsafe { rseq::stack_push_current(Index::CpuId, base, stride, n, 42, Commit::Relaxed) }
///     == Some(Ok(()))
/// {
///     // SAFETY: as above. The thread may have moved since the push.
///     let popped = unsafe { rseq::stack_pop_current(Index::CpuId, base, stride, n) };
///     let on_stacks: usize = slots.iter().map(|s| s.0.len.load(Ordering::Relaxed)).sum();
///     assert_eq!((popped == Some(Ok(42))) as usize + on_stacks, 1);
/// }
/// ```
#[inline]
pub unsafe fn stack_push_current(
    index: Index,
    base: *mut u8,
    stride: usize,
    len: usize,
    word: usize,
    commit: Commit,
) -> Option<Result<(), Failure>> {
    let len = len.min(INDEX_LIMIT);
    // The operation's sections run under the caller's contract.
    let done = match commit {
        Commit::Relaxed => current_operation!(index, rseq_stack_push_current, false;
            base: *mut u8 = base, stride: usize = stride, len: usize = len, word: usize = word),
        Commit::Release => current_operation!(index, rseq_stack_push_current, true;
            base: *mut u8 = base, stride: usize = stride, len: usize = len, word: usize = word),
    };
    match done {
        Ok(()) => Some(Ok(())),
        Err(Exit::CompareFailed) => Some(Err(Failure::CompareFailed)),
        Err(_) => None,
    }
}

/// Pops the top word of the current CPU's (or concurrency id's) stack of an
/// array of per-CPU [`WordStack`]s, in one critical section that reads the
/// index itself, as [`add_current`] does. Retries after aborts (counted in
/// [`aborts`]).
///
/// Returns `Some(Ok(word))`; `Some(Err(Failure::CompareFailed))` when the
/// stack is empty; `None`, having done nothing, when the thread has no live
/// area or the index value is not below `len` (no fallback).
///
/// # Safety
///
/// The contract of [`stack_push_current`].
#[inline]
pub unsafe fn stack_pop_current(
    index: Index,
    base: *mut u8,
    stride: usize,
    len: usize,
) -> Option<Result<usize, Failure>> {
    let mut word = 0usize;
    let load = &raw mut word;
    // The operation's sections run under the caller's contract; `load`
    // points to a local.
    let done = current_operation!(index, rseq_stack_pop_current;
        base: *mut u8 = base, stride: usize = stride, len: usize = len.min(INDEX_LIMIT),
        load: *mut usize = load);
    match done {
        Ok(()) => Some(Ok(word)),
        Err(Exit::CompareFailed) => Some(Err(Failure::CompareFailed)),
        Err(_) => None,
    }
}

/// Stores `newv` into `*v` if `*v == expect`, in one critical section.
///
/// # Safety
///
/// The same contract as [`add`].
#[inline]
pub unsafe fn cmpeqv_storev(
    start: Start,
    v: *mut i64,
    expect: i64,
    newv: i64,
) -> Result<(), Failure> {
    operation!(start, (v: *mut i64, expect: i64, newv: i64) -> ();
        // SAFETY: as in `add`.
        fast: unsafe { section!(start, false, rseq_cmpeqv_storev; v, expect, newv) };
        // SAFETY: the caller's contract.
        fallback(key): unsafe { locked::cmpeqv_storev(key, v, expect, newv) };
        // SAFETY: as for the fast section.
        gated: unsafe { section!(start, true, rseq_cmpeqv_storev; v, expect, newv) };
    )
}

/// Pops from a per-CPU list whose head is `*head`: if the head is not
/// `expectnot` (usually null, the empty list), returns it and makes the
/// pointer stored at byte `next_offset` of it the new head.
///
/// Fails with [`Failure::CompareFailed`] when the head equals `expectnot`.
///
/// # Safety
///
/// The contract of [`add`] for `*head`; in addition, every node reachable
/// from `*head` must stay valid for a pointer-sized read at `next_offset`
/// while it is on the list.
#[inline]
pub unsafe fn cmpnev_storeoffp_load(
    start: Start,
    head: *mut *mut u8,
    expectnot: *mut u8,
    next_offset: isize,
) -> Result<*mut u8, Failure> {
    let mut popped: *mut u8 = core::ptr::null_mut();
    let load = &raw mut popped;
    let done = operation!(
        start, (head: *mut *mut u8, expectnot: *mut u8, next_offset: isize, load: *mut *mut u8) -> ();
        // SAFETY: as in `add`; `load` points to a local the section may write.
        fast: unsafe {
            section!(start, false, rseq_cmpnev_storeoffp_load; head, expectnot, next_offset, load)
        };
        // SAFETY: the caller's contract; `load` is the caller's local.
        fallback(key): unsafe {
            locked::cmpnev_storeoffp_load(key, head, expectnot, next_offset).map(|p| *load = p)
        };
        // SAFETY: as for the fast section.
        gated: unsafe {
            section!(start, true, rseq_cmpnev_storeoffp_load; head, expectnot, next_offset, load)
        };
    );
    done.map(|()| popped)
}

/// Loads the pointer `*ptr` and adds `inc` to the `i64` at byte offset
/// `offset` from it, in one critical section (the add is the commit).
///
/// # Safety
///
/// The contract of [`add`] for `*ptr` and for the `i64` at `*ptr + offset`.
#[inline]
pub unsafe fn offset_deref_addv(
    start: Start,
    ptr: *mut *mut u8,
    offset: isize,
    inc: i64,
) -> Result<(), Failure> {
    operation!(start, (ptr: *mut *mut u8, offset: isize, inc: i64) -> ();
        // SAFETY: as in `add`.
        fast: unsafe { section!(start, false, rseq_offset_deref_addv; ptr, offset, inc) };
        // SAFETY: the caller's contract.
        fallback(key): unsafe { locked::offset_deref_addv(key, ptr, offset, inc) };
        // SAFETY: as for the fast section.
        gated: unsafe { section!(start, true, rseq_offset_deref_addv; ptr, offset, inc) };
    )
}

/// Stores `newv` into `*v` if `*v == expect` and `*v2 == expect2`.
///
/// # Safety
///
/// The contract of [`add`] for `*v`; `v2` must be valid for an aligned `i64`
/// read (other threads may write it only with atomic stores).
#[inline]
pub unsafe fn cmpeqv_cmpeqv_storev(
    start: Start,
    v: *mut i64,
    expect: i64,
    v2: *const i64,
    expect2: i64,
    newv: i64,
) -> Result<(), Failure> {
    operation!(
        start, (v: *mut i64, expect: i64, v2: *const i64, expect2: i64, newv: i64) -> ();
        // SAFETY: as in `add`.
        fast: unsafe {
            section!(start, false, rseq_cmpeqv_cmpeqv_storev; v, expect, v2, expect2, newv)
        };
        // SAFETY: the caller's contract.
        fallback(key): unsafe { locked::cmpeqv_cmpeqv_storev(key, v, expect, v2, expect2, newv) };
        // SAFETY: as for the fast section.
        gated: unsafe {
            section!(start, true, rseq_cmpeqv_cmpeqv_storev; v, expect, v2, expect2, newv)
        };
    )
}

/// If `*v == expect`, stores `newv2` into `*v2`, then commits `*v = newv`
/// with the ordering `commit`.
///
/// The store to `*v2` is speculative: it may happen even when the section
/// then aborts, so `*v2` must be a location that only matters once `*v`
/// says so (for example the slot past the end of a per-CPU buffer whose
/// length is `*v`).
///
/// # Safety
///
/// The contract of [`add`] for `*v` and `*v2`.
#[inline]
pub unsafe fn cmpeqv_trystorev_storev(
    start: Start,
    v: *mut i64,
    expect: i64,
    v2: *mut i64,
    newv2: i64,
    newv: i64,
    commit: Commit,
) -> Result<(), Failure> {
    operation!(
        start,
        (v: *mut i64, expect: i64, v2: *mut i64, newv2: i64, newv: i64, commit: Commit) -> ();
        // SAFETY: as in `add`.
        fast: unsafe {
            committing_section!(start, false, rseq_cmpeqv_trystorev_storev, commit;
                v, expect, v2, newv2, newv)
        };
        // SAFETY: the caller's contract.
        fallback(key): unsafe {
            locked::cmpeqv_trystorev_storev(key, v, expect, v2, newv2, newv, commit)
        };
        // SAFETY: as for the fast section.
        gated: unsafe {
            committing_section!(start, true, rseq_cmpeqv_trystorev_storev, commit;
                v, expect, v2, newv2, newv)
        };
    )
}

/// If `*v == expect`, copies `src` to `dst` (speculative stores, as in
/// [`cmpeqv_trystorev_storev`]), then commits `*v = newv` with the ordering
/// `commit`.
///
/// The copy runs inside the critical section and restarts on every abort:
/// keep it small (a few cache lines).
///
/// # Safety
///
/// The contract of [`add`] for `*v` and for the `src.len()` bytes at `dst`.
#[inline]
pub unsafe fn cmpeqv_trymemcpy_storev(
    start: Start,
    v: *mut i64,
    expect: i64,
    dst: *mut u8,
    src: &[u8],
    newv: i64,
    commit: Commit,
) -> Result<(), Failure> {
    let (src, len) = (src.as_ptr(), src.len());
    operation!(
        start,
        (v: *mut i64, expect: i64, dst: *mut u8, src: *const u8, len: usize, newv: i64,
            commit: Commit) -> ();
        // SAFETY: as in `add`; `src` is a live slice of `len` bytes.
        fast: unsafe {
            committing_section!(start, false, rseq_cmpeqv_trymemcpy_storev, commit;
                v, expect, dst, src, len, newv)
        };
        // SAFETY: the caller's contract; `src` and `len` are the caller's
        // live slice.
        fallback(key): unsafe {
            let src = core::slice::from_raw_parts(src, len);
            locked::cmpeqv_trymemcpy_storev(key, v, expect, dst, src, newv, commit)
        };
        // SAFETY: as for the fast section.
        gated: unsafe {
            committing_section!(start, true, rseq_cmpeqv_trymemcpy_storev, commit;
                v, expect, dst, src, len, newv)
        };
    )
}

/// Takes exclusive access to the data of index value `value`, from any
/// thread and any CPU: while the returned guard lives, no operation started
/// with `value` for `index` commits, in any thread, so the holder may read
/// and write that value's per-CPU data with atomic accesses (to drain,
/// rebalance or snapshot another CPU's slot). Dropping the guard gives the
/// access back; the next operations see what the holder wrote.
///
/// This closes the value's gate and, where threads run critical sections,
/// fences the value's CPU (every CPU for [`Index::MmCid`]) with the
/// membarrier rseq fence: a system call, so use it for occasional work.
/// Signals are blocked in the calling thread while the guard lives, so a
/// signal handler cannot run into the held value; the guard cannot be sent
/// to another thread.
///
/// A thread may hold several guards at once, for any values, and drop them
/// in any order: signals stay blocked until it drops the last one. In a
/// thread without a live area, operations with a held value run (the gate
/// is the thread's own); in a thread with one, an operation with a held
/// value, or one that shares its gate (values equal modulo 4096), aborts
/// for as long as the guard lives, so [`retry`] would never return: do not
/// run one there.
///
/// # Errors
///
/// [`FenceError::Unsupported`](fence::FenceError::Unsupported) where threads
/// run critical sections but the kernel lacks the rseq fence (before Linux
/// 5.10), and the fence's error if the system call fails.
///
/// ```
/// use ktl::rseq::{self, Index};
/// use std::sync::atomic::{AtomicI64, Ordering};
///
/// let slots: Vec<AtomicI64> = (0..4096).map(|_| AtomicI64::new(0)).collect();
/// rseq::retry(Index::CpuId, |s| {
///     // SAFETY: only rseq operations indexed by CPU write the slots, or a
///     // holder of `rseq::exclusive` for the slot's value.
///     unsafe { rseq::add(s, slots[s.value() as usize].as_ptr(), 5) }
/// });
/// // Drain every slot.
/// let mut drained = 0;
/// for cpu in 0..ktl::cpu::possible_cpus().unwrap() {
///     match rseq::exclusive(Index::CpuId, cpu) {
///         Ok(_held) => drained += slots[cpu as usize].swap(0, Ordering::Relaxed),
///         Err(e) => panic!("{e}"),
///     }
/// }
/// assert_eq!(drained, 5);
/// ```
pub fn exclusive(index: Index, value: u32) -> Result<locked::Exclusive, fence::FenceError> {
    let fenced = path() != Path::Locked;
    if fenced && fence::kind() != fence::FenceKind::Rseq {
        return Err(fence::FenceError::Unsupported);
    }
    locked::Exclusive::take(locked::Key {
        index,
        value,
        fenced,
    })
}

thread_local! {
    // An atomic, not a Cell: a signal handler running an operation may count
    // an abort while the interrupted code is counting one.
    static ABORTS: AtomicU64 = const { AtomicU64::new(0) };
}

/// Runs an operation until it does not abort.
///
/// `op` gets a fresh [`Start`] on every attempt. Returns `None` when
/// [`start`] does (no way to run operations in this thread); otherwise the first
/// result that is not [`Failure::Aborted`]. Aborts are counted per thread
/// ([`aborts`]).
///
/// ```
/// use ktl::rseq::{self, Index};
/// let mut slots = vec![0i64; 4096];
/// let base = slots.as_mut_ptr();
/// let done = rseq::retry(Index::CpuId, |s| {
///     // SAFETY: only rseq operations indexed by CPU write these slots,
///     // and `s.value()` is below the 4096 slots.
///     unsafe { rseq::add(s, base.add(s.value() as usize), 1) }
/// });
/// if let Some(result) = done {
///     result.unwrap();
///     assert_eq!(slots.iter().sum::<i64>(), 1);
/// }
/// ```
#[inline]
pub fn retry<T>(
    index: Index,
    mut op: impl FnMut(Start) -> Result<T, Failure>,
) -> Option<Result<T, Failure>> {
    loop {
        let s = start(index)?;
        match op(s) {
            Err(Failure::Aborted) => count_abort(),
            other => return Some(other),
        }
    }
}

/// Counts an abort for [`aborts`]; out of line, off the fast path.
#[cold]
#[inline(never)]
fn count_abort() {
    let _ = ABORTS.try_with(|a| a.fetch_add(1, Ordering::Relaxed));
}

/// How many aborts [`retry`] has seen in the calling thread.
pub fn aborts() -> u64 {
    ABORTS.try_with(|a| a.load(Ordering::Relaxed)).unwrap_or(0)
}

#[cfg(feature = "delay-injection")]
pub mod delay;
pub mod fence;
mod locked;

pub use locked::Exclusive;

#[cfg(feature = "delay-injection")]
use delay::before as delay_before;

#[cfg(not(feature = "delay-injection"))]
#[inline(always)]
fn delay_before() {}
