//! Per-CPU counters: an add is one restartable sequence on the current
//! CPU's slot, with no atomic instruction and no shared cache line.

use super::PerCpu;
use crate::arch::Exit;
use crate::rseq::{self, Index};
use core::sync::atomic::{AtomicI64, Ordering};
use crossbeam_utils::CachePadded;

/// The distance between two slots, in bytes.
const STRIDE: usize = size_of::<CachePadded<AtomicI64>>();

/// A signed counter with one slot per CPU.
///
/// [`add`](Self::add) and [`sub`](Self::sub) update the slot of the CPU the
/// thread runs on with one restartable sequence (`rseq::add_current`): a few plain
/// instructions, no `lock` prefix, and no cache line shared with other CPUs.
/// [`sum`](Self::sum) adds the slots up.
///
/// `sum` is exact once the writers are quiescent: every `add` that
/// happened before the call (for example in threads that were joined) is
/// counted. While writers run, it is approximate: each slot is read once,
/// so it may miss updates that race with it, and it is not a snapshot of
/// one instant. Arithmetic wraps on overflow, in the slots and in the sum.
///
/// Threads without a live rseq area still count exactly, through one
/// shared atomic.
///
/// ```
/// use ktl::percpu::PerCpuCounter;
/// use std::sync::Arc;
///
/// let requests = Arc::new(PerCpuCounter::new());
/// let workers: Vec<_> = (0..4)
///     .map(|_| {
///         let requests = Arc::clone(&requests);
///         std::thread::spawn(move || {
///             for _ in 0..1000 {
///                 requests.add(1);
///             }
///             requests.sub(10);
///         })
///     })
///     .collect();
/// for w in workers {
///     w.join().unwrap();
/// }
/// assert_eq!(requests.sum(), 4 * 990);
/// ```
pub struct PerCpuCounter {
    /// `add_current`'s operands, as `PerCpu::raw_slots` gives them: the
    /// slots' address (with the value's offset in its padding) and count,
    /// and the index.
    base: *mut u8,
    len: usize,
    index: Index,
    slots: PerCpu<AtomicI64>,
    /// Updates of threads that cannot run rseq operations, and of index
    /// values without a slot. Boxed, as the slots are: the counter itself
    /// then holds no `UnsafeCell`, so a `&PerCpuCounter` argument tells the
    /// compiler that nothing writes the fields above while it is borrowed,
    /// and a loop of adds keeps them in registers instead of loading them
    /// again after every section (which may write memory).
    shared: Box<CachePadded<AtomicI64>>,
}

// SAFETY: `base` points into `slots`, which the counter owns; the slots and
// the shared word are atomics, written only as `add` and `reset` describe.
unsafe impl Send for PerCpuCounter {}
// SAFETY: as above: shared access writes only through `add_current` and
// the shared atomic.
unsafe impl Sync for PerCpuCounter {}

impl PerCpuCounter {
    /// A counter at 0, with slots indexed by CPU.
    pub fn new() -> Self {
        Self::with_index(Index::CpuId)
    }

    /// A counter at 0, with slots indexed by `index`. [`Index::MmCid`]
    /// keeps the updates of a process's threads on the first few slots
    /// even when it runs on a few of many CPUs; on a kernel without
    /// `mm_cid`, the counter is indexed by CPU instead.
    pub fn with_index(index: Index) -> Self {
        let slots = PerCpu::new(index);
        let (base, _, len) = slots.raw_slots();
        PerCpuCounter {
            base,
            len,
            index: slots.index(),
            slots,
            shared: Box::new(CachePadded::new(AtomicI64::new(0))),
        }
    }

    /// The index the slots are chosen by.
    pub fn index(&self) -> Index {
        self.index
    }

    /// Adds `n` (wrapping on overflow).
    ///
    /// One critical section reads the CPU number and adds to its slot
    /// ([`rseq::add_current`]). Inline is only that first attempt: a retry
    /// after an abort, and the shared atomic of a thread without a live
    /// area, run out of line, in a call that ends this one (a tail call), so
    /// the inline path saves no register.
    #[inline]
    pub fn add(&self, n: i64) {
        // SAFETY: slot `i`'s AtomicI64 is at `base + i * STRIDE` for every
        // `i < len` (`raw_slots`, taken when the slots were made; the boxed
        // slots never move), live, aligned and valid for i64 reads and
        // writes for as long as `self`. The slots are private to this counter:
        // while it is shared, only `add_current`'s halves with the counter's
        // one index write them (`sum` only loads them), and `reset` writes
        // them only through `&mut self`, when no add can run.
        let first = unsafe { rseq::add_current_first(self.index, self.base, STRIDE, self.len, n) };
        if let Err(exit) = first {
            self.add_after(exit, n);
        }
    }

    /// What follows a first attempt that did not commit: retries, or the
    /// update of a thread that cannot run an operation on a slot.
    #[cold]
    #[inline(never)]
    fn add_after(&self, exit: Exit, n: i64) {
        // SAFETY: as in `add`.
        if !unsafe { rseq::add_current_after(exit, self.index, self.base, STRIDE, self.len, n) } {
            self.shared.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Subtracts `n` (wrapping on overflow).
    #[inline]
    pub fn sub(&self, n: i64) {
        self.add(n.wrapping_neg());
    }

    /// The sum of the slots: exact when no thread is updating the counter,
    /// approximate while threads are (see the [type docs](Self)).
    pub fn sum(&self) -> i64 {
        self.slots
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .fold(self.shared.load(Ordering::Relaxed), i64::wrapping_add)
    }

    /// Sets the counter back to 0.
    pub fn reset(&mut self) {
        self.slots.iter_mut().for_each(|s| *s.get_mut() = 0);
        *(**self.shared).get_mut() = 0;
    }

    /// The bytes the counter's slots take (one padded slot per possible
    /// CPU, see [`PerCpu::footprint`]).
    pub fn footprint(&self) -> usize {
        self.slots.footprint()
    }
}

impl Default for PerCpuCounter {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for PerCpuCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerCpuCounter")
            .field("index", &self.index())
            .field("sum", &self.sum())
            .finish()
    }
}

/// An unsigned counter with one slot per CPU: [`PerCpuCounter`] with `u64`
/// arithmetic, wrapping on overflow (so a `sub` below 0 wraps around, and
/// the sum is right again once the matching `add`s are in).
///
/// ```
/// use ktl::percpu::PerCpuCounterU64;
///
/// let bytes = PerCpuCounterU64::new();
/// bytes.add(4096);
/// bytes.sub(96);
/// assert_eq!(bytes.sum(), 4000);
/// ```
#[derive(Default)]
pub struct PerCpuCounterU64(PerCpuCounter);

impl PerCpuCounterU64 {
    /// A counter at 0, with slots indexed by CPU.
    pub fn new() -> Self {
        Self::with_index(Index::CpuId)
    }

    /// A counter at 0, with slots indexed by `index` (see
    /// [`PerCpuCounter::with_index`]).
    pub fn with_index(index: Index) -> Self {
        PerCpuCounterU64(PerCpuCounter::with_index(index))
    }

    /// The index the slots are chosen by.
    pub fn index(&self) -> Index {
        self.0.index()
    }

    /// Adds `n` (wrapping).
    #[inline]
    pub fn add(&self, n: u64) {
        // Two's complement: adding the same bits as i64 wraps identically.
        self.0.add(n as i64);
    }

    /// Subtracts `n` (wrapping).
    #[inline]
    pub fn sub(&self, n: u64) {
        self.0.add((n as i64).wrapping_neg());
    }

    /// The sum of the slots, modulo 2^64 (see [`PerCpuCounter::sum`]).
    pub fn sum(&self) -> u64 {
        self.0.sum() as u64
    }

    /// Sets the counter back to 0.
    pub fn reset(&mut self) {
        self.0.reset();
    }

    /// The bytes the counter's slots take.
    pub fn footprint(&self) -> usize {
        self.0.footprint()
    }
}

impl std::fmt::Debug for PerCpuCounterU64 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerCpuCounterU64")
            .field("index", &self.index())
            .field("sum", &self.sum())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_exactly_from_many_threads_with_both_indexes() {
        for index in [Index::CpuId, Index::MmCid] {
            let c = PerCpuCounter::with_index(index);
            std::thread::scope(|s| {
                for t in 0..8i64 {
                    let c = &c;
                    s.spawn(move || {
                        for i in 0..20_000 {
                            c.add(t + i % 3);
                        }
                        c.sub(t);
                    });
                }
            });
            // Per thread: 20_000 t + (0+1+2 per 3 adds: 6666 * 3 + 0 + 1) - t.
            let per_pattern: i64 = (0..20_000).map(|i| i % 3).sum();
            let want: i64 = (0..8).map(|t| 20_000 * t + per_pattern - t).sum();
            assert_eq!(c.sum(), want, "{index:?}");
        }
    }

    #[test]
    fn unsigned_wraps_and_comes_back() {
        let mut c = PerCpuCounterU64::new();
        c.sub(5);
        assert_eq!(c.sum(), u64::MAX - 4);
        c.add(7);
        assert_eq!(c.sum(), 2);
        c.add(u64::MAX);
        assert_eq!(c.sum(), 1);
        c.reset();
        assert_eq!(c.sum(), 0);
    }

    #[test]
    fn signed_extremes_wrap() {
        let c = PerCpuCounter::new();
        c.add(i64::MAX);
        c.add(1);
        assert_eq!(c.sum(), i64::MIN);
        c.sub(i64::MIN);
        assert_eq!(c.sum(), 0);
    }

    #[test]
    fn footprint_is_possible_cpus_times_a_padded_slot() {
        let c = PerCpuCounter::new();
        let n = crate::cpu::possible_cpus().unwrap() as usize;
        assert_eq!(
            c.footprint(),
            n * std::mem::size_of::<CachePadded<AtomicI64>>()
        );
    }
}
