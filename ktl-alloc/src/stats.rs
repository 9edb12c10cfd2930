//! [`Stats`]: what every tier holds, read from the tiers' own counts.
#![forbid(unsafe_code)]

use crate::class::{self, COUNT, FRONT};
use crate::front::{self, FrontEnd};
use crate::{central, large, maint, pages, thread};

/// One per-CPU cache (one index value's region).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuCache {
    /// The index value: a CPU number, or a concurrency id.
    pub value: u32,
    /// Bytes of free objects in the cache.
    pub cached: u64,
    /// Times an idle round (or [`release_free_memory`](crate::release_free_memory))
    /// emptied it.
    pub drains: u64,
}

/// The allocator's statistics (see [`stats`]); reading them allocates
/// nothing. [`per_cpu_caches`] lists the per-CPU caches one by one.
///
/// Sizes are in bytes, small objects counted at their class's size and
/// large ones at their mapping's length. The counts are read tier by tier
/// while other threads may allocate, so they are exact only when those
/// threads are quiescent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// The front end live.
    pub front_end: FrontEnd,
    /// Bytes the program holds: [`small_in_use`](Self::small_in_use) plus
    /// [`large_in_use`](Self::large_in_use).
    pub in_use: u64,
    /// Bytes of objects served from spans (up to 1 MiB) the program holds.
    pub small_in_use: u64,
    /// Bytes of large objects' mappings the program holds.
    pub large_in_use: u64,
    /// Bytes of free objects in all per-CPU caches.
    pub cpu_cached: u64,
    /// Bytes of free objects in per-thread caches.
    pub thread_cached: u64,
    /// Per-thread caches in use.
    pub thread_caches: u64,
    /// Bytes of free objects in the central caches: their transfer arrays
    /// and the returned objects on their spans.
    pub central_cached: u64,
    /// Spans (256 KiB each) serving a size class, counted one by one in
    /// the runs of several that the medium classes (above 32 KiB) use.
    pub spans: u64,
    /// Bytes of free spans whose pages are resident.
    pub free_spans_resident: u64,
    /// Bytes of freed large mappings kept for reuse.
    pub large_cached: u64,
    /// Bytes of address space mapped for spans (arenas, mostly untouched).
    pub mapped: u64,
    /// Bytes of free spans not resident (given back to the OS, or never
    /// touched) and not reused since.
    pub returned: u64,
    /// Bytes given back to the OS over the process's life.
    pub returned_total: u64,
    /// Idle rounds run.
    pub idle_rounds: u64,
}

/// Reads the allocator's statistics.
///
/// ```
/// let v = vec![0u8; 100];
/// let s = ktl_alloc::stats();
/// // Nothing is counted unless ktl-alloc is the allocator that served it.
/// println!("{} bytes in use, {} cached per CPU", s.in_use, s.cpu_cached);
/// # drop(v);
/// ```
pub fn stats() -> Stats {
    let regions = front::regions();
    let mut small = 0u64;
    let mut central_cached = 0u64;
    let mut thread_cached = 0u64;
    let mut spans = 0u64;
    let (in_threads, live) = thread::cached();
    for c in 0..COUNT {
        let size = class::size(c) as u64;
        let (out, transfer, span_free, n_spans) = central::counts(c);
        // The medium classes have no front-end caches.
        let (in_cpu, in_thread) = if c < FRONT {
            let in_thread = in_threads.get(c).copied().unwrap_or(0);
            (regions.map_or(0, |r| r.cached_objects(c)), in_thread)
        } else {
            (0, 0)
        };
        let held = out as u64;
        let cached = (transfer + in_cpu + in_thread) as u64;
        small += held.saturating_sub(cached) * size;
        central_cached += (transfer + span_free) as u64 * size;
        thread_cached += in_thread as u64 * size;
        spans += n_spans as u64;
    }
    let cpu_cached = per_cpu_caches().map(|c| c.cached).sum();
    let heap = pages::stats();
    let (large_in_use, large_cached) = large::bytes();
    Stats {
        front_end: front::front_end(),
        in_use: small + large_in_use as u64,
        small_in_use: small,
        large_in_use: large_in_use as u64,
        cpu_cached,
        thread_cached,
        thread_caches: live as u64,
        central_cached,
        spans,
        free_spans_resident: heap.free_resident as u64,
        large_cached: large_cached as u64,
        mapped: heap.mapped as u64,
        returned: heap.released as u64,
        returned_total: heap.released_total,
        idle_rounds: maint::rounds(),
    }
}

/// The per-CPU caches, one per index value (none while the per-thread
/// caches serve every thread).
///
/// ```
/// for c in ktl_alloc::per_cpu_caches() {
///     println!("cache {}: {} bytes, drained {} times", c.value, c.cached, c.drains);
/// }
/// ```
pub fn per_cpu_caches() -> CpuCaches {
    CpuCaches { next: 0 }
}

/// The iterator of [`per_cpu_caches`].
#[derive(Debug, Clone)]
pub struct CpuCaches {
    next: usize,
}

impl Iterator for CpuCaches {
    type Item = CpuCache;

    fn next(&mut self) -> Option<CpuCache> {
        let r = front::regions()?;
        if self.next >= r.count() {
            return None;
        }
        let v = self.next;
        self.next += 1;
        let (cached, drains) = r.cached(v);
        Some(CpuCache {
            value: v as u32,
            cached,
            drains,
        })
    }
}
