//! Per-CPU data: one slot per CPU (or per concurrency id), each on its own
//! cache line, updated through restartable sequences.
//!
//! [`PerCpu<T>`] is the storage: an array of padded `T`, sized by the
//! *possible* CPUs (`/sys/devices/system/cpu/possible`), never by the online
//! ones or a guessed maximum, so every CPU number the kernel can report,
//! including CPUs hot-plugged later, has a slot. With [`Index::MmCid`] the
//! same count bounds the concurrency ids, which are below the number of CPUs
//! the process may use; only the first few slots are then touched.
//!
//! The structures built on it hide the restartable sequences behind safe
//! methods:
//!
//! - [`PerCpuCounter`] and [`PerCpuCounterU64`]: add, sub and sum.
//! - [`PerCpuHistogram`]: fixed buckets; an observation is one section on
//!   the current CPU's bucket (its count and its share of the sum).
//! - [`PerCpuStack`]: push and pop on the current CPU's list, a free list
//!   with no ABA hazard.
//! - [`Pool`]: reusable objects cached per CPU, with a global overflow and
//!   rebalancing between CPUs.
//! - [`mempool`]: a per-CPU memory pool: each allocation is one instance per
//!   CPU at a fixed stride, with typed items, size-class sets and a robust
//!   mode.
//!
//! Every structure works in every thread: a thread without a live rseq area
//! uses the operations' fallback (see [`rseq`](crate::rseq#the-fallback)),
//! and a thread that cannot run operations at all (no area, and no rseq
//! fence to exclude the others) uses a shared atomic instead.

mod counter;
mod histogram;
mod list;
pub mod mempool;
mod pool;
mod stack;

pub use counter::{PerCpuCounter, PerCpuCounterU64};
#[cfg(feature = "metrics")]
pub(crate) use histogram::check as check_bounds;
pub use histogram::{BucketError, HistogramSnapshot, PerCpuHistogram};
pub use pool::{DEFAULT_CACHE, Pool, PoolBuilder, Pooled};
pub use stack::PerCpuStack;

use crate::rseq::{Index, Start};
use crossbeam_utils::CachePadded;

/// One `T` per possible CPU (or per concurrency id), each alone on its
/// cache line.
///
/// `PerCpu` hands out shared references to the slots; writes to the slot of
/// the current CPU go through the [`rseq`](crate::rseq) operations, which
/// is what the structures of this module do. Its memory footprint is
/// [`len`](Self::len) × `size_of::<CachePadded<T>>()`
/// ([`footprint`](Self::footprint)).
///
/// ```
/// use ktl::percpu::PerCpu;
/// use ktl::rseq::Index;
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// let hits: PerCpu<AtomicU64> = PerCpu::new(Index::CpuId);
/// assert_eq!(hits.len() as u32, ktl::cpu::possible_cpus().unwrap());
/// if let Some(slot) = hits.current() {
///     slot.fetch_add(1, Ordering::Relaxed);
/// }
/// let total: u64 = hits.iter().map(|h| h.load(Ordering::Relaxed)).sum();
/// assert_eq!(total, 1);
/// ```
pub struct PerCpu<T> {
    slots: Box<[CachePadded<T>]>,
    index: Index,
}

/// The number of slots for `index`: the possible CPUs, or when that list
/// cannot be read, the CPUs the system was configured with (at least 1).
/// Index values at or past it have no slot; the structures send those
/// operations to their shared fallback.
pub fn slot_count(index: Index) -> usize {
    // Both indexes are below the possible CPUs.
    let _ = index;
    match crate::cpu::possible_cpus() {
        Some(n) => n.max(1) as usize,
        None => crate::sys::sched::configured_cpus().unwrap_or(1).max(1),
    }
}

/// `index`, or [`Index::CpuId`] when it is [`Index::MmCid`] and the kernel
/// does not provide `mm_cid` (Linux before 6.3), so that structures keep
/// their per-CPU fast path there.
pub(crate) fn usable(index: Index) -> Index {
    match index {
        Index::MmCid if !crate::layout().features.contains(crate::Features::MM_CID) => {
            if crate::rseq::path() == crate::rseq::Path::Locked {
                // The locked fallback takes mm_cid values from the CPU anyway.
                Index::MmCid
            } else {
                Index::CpuId
            }
        }
        other => other,
    }
}

impl<T> PerCpu<T> {
    /// A slot per possible CPU, each `T::default()`.
    ///
    /// With [`Index::MmCid`] on a kernel without `mm_cid`, the structure is
    /// indexed by CPU instead ([`index`](Self::index) says which).
    pub fn new(index: Index) -> Self
    where
        T: Default,
    {
        Self::with(index, |_| T::default())
    }

    /// A slot per possible CPU, slot `i` holding `init(i)`.
    pub fn with(index: Index, init: impl FnMut(usize) -> T) -> Self {
        let mut init = init;
        let index = usable(index);
        let slots = (0..slot_count(index))
            .map(|i| CachePadded::new(init(i)))
            .collect();
        PerCpu { slots, index }
    }

    /// The index the slots are chosen by.
    pub fn index(&self) -> Index {
        self.index
    }

    /// The number of slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are no slots (never: there is at least one).
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The bytes the slots take: [`len`](Self::len) ×
    /// `size_of::<CachePadded<T>>()`.
    pub fn footprint(&self) -> usize {
        std::mem::size_of_val(&*self.slots)
    }

    /// The slots as the `_current` operations address them: the address of
    /// slot 0's value, the stride between slots, and the number of slots.
    /// Slot `i`'s value is at `base + i * stride` for every `i < len`, since
    /// each value sits at the same offset in its `CachePadded`.
    ///
    /// `base` is derived from the array's own pointer, so that it may
    /// address every slot: a pointer derived from a reference to slot 0
    /// would be valid for slot 0 alone. (There is always a slot 0; without
    /// one, `base` would be the array's dangling pointer and `len` 0, which
    /// no operation addresses.)
    #[inline(always)]
    pub(crate) fn raw_slots(&self) -> (*mut u8, usize, usize) {
        let array = self.slots.as_ptr();
        // Where a value sits in its `CachePadded`, measured on slot 0.
        let offset = self.slots.first().map_or(0, |first| {
            core::ptr::from_ref::<T>(first) as usize - core::ptr::from_ref(first) as usize
        });
        let base = array.cast::<u8>().wrapping_add(offset).cast_mut();
        (base, size_of::<CachePadded<T>>(), self.slots.len())
    }

    /// Slot `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<&T> {
        self.slots.get(i).map(|s| &**s)
    }

    /// The slot of `start`'s index value: the one an operation started with
    /// `start` may update.
    #[inline]
    pub fn slot(&self, start: Start) -> Option<&T> {
        self.get(start.value() as usize)
    }

    /// The slot of the calling thread's current CPU (or concurrency id).
    ///
    /// Only a hint: the thread may move right after. Updates that must stay
    /// on one CPU's slot go through an rseq operation started with the same
    /// index value (see [`slot`](Self::slot)).
    pub fn current(&self) -> Option<&T> {
        let value = match self.index {
            Index::CpuId => crate::cpu_id(),
            Index::MmCid => crate::mm_cid(),
        };
        self.get(value as usize)
    }

    /// Every slot, in index order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &T> {
        self.slots.iter().map(|s| &**s)
    }

    /// Every slot, mutably: no operation can run while this borrow lives.
    pub fn iter_mut(&mut self) -> impl ExactSizeIterator<Item = &mut T> {
        self.slots.iter_mut().map(|s| &mut **s)
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for PerCpu<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerCpu")
            .field("index", &self.index)
            .field("slots", &self.slots)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn send_sync<T: Send + Sync>() {}

    #[test]
    fn the_structures_are_send_and_sync() {
        send_sync::<PerCpu<AtomicU64>>();
        send_sync::<PerCpuCounter>();
        send_sync::<PerCpuCounterU64>();
        // Values that are Send but not Sync may still be shared through them.
        send_sync::<PerCpuStack<std::cell::Cell<u8>>>();
        send_sync::<Pool<std::cell::Cell<u8>>>();
        send_sync::<Pooled<'static, Vec<u8>>>();
    }

    #[test]
    fn sized_by_the_possible_cpus_with_padded_slots() {
        let p: PerCpu<u8> = PerCpu::new(Index::CpuId);
        let possible = crate::cpu::possible_cpus().expect("possible CPUs") as usize;
        assert_eq!(p.len(), possible);
        let padded = std::mem::size_of::<CachePadded<u8>>();
        assert!(padded >= 64, "{padded}");
        assert_eq!(p.footprint(), possible * padded);
        let a = p.get(0).unwrap() as *const u8 as usize;
        if let Some(b) = p.get(1) {
            assert_eq!(b as *const u8 as usize - a, padded);
        }
    }

    #[test]
    fn with_initializes_each_slot_from_its_number() {
        let p = PerCpu::with(Index::CpuId, |i| i * 10);
        assert!(p.iter().enumerate().all(|(i, &v)| v == i * 10));
        let mut p = p;
        p.iter_mut().for_each(|v| *v += 1);
        assert_eq!(p.get(0), Some(&1));
        assert_eq!(p.get(p.len()), None);
    }

    #[test]
    fn current_is_the_slot_of_the_cpu() {
        let p: PerCpu<AtomicU64> = PerCpu::new(Index::CpuId);
        let before = crate::cpu_id() as usize;
        let slot = p.current().unwrap();
        let after = crate::cpu_id() as usize;
        let at = p.iter().position(|s| std::ptr::eq(s, slot)).unwrap();
        // The thread may migrate between the reads, but not twice.
        assert!(at == before || at == after, "{at} {before} {after}");
        slot.fetch_add(1, Ordering::Relaxed);
        assert_eq!(p.iter().map(|v| v.load(Ordering::Relaxed)).sum::<u64>(), 1);
    }
}
