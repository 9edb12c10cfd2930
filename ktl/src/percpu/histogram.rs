//! Per-CPU histograms: an observation is one restartable sequence on the
//! current CPU's bucket, which holds the bucket's count and its share of
//! the sum.

use super::{slot_count, usable};
use crate::arch::Exit;
use crate::rseq::{self, CountSum, Index};
use core::sync::atomic::{AtomicU64, Ordering};
use crossbeam_utils::CachePadded;
use std::alloc::{self, Layout};
use std::fmt;

/// The most bounds a histogram finds the bucket of a value among by
/// counting those below it, rather than by a binary search.
const LINEAR_BOUNDS: usize = 32;

/// Why a histogram's bucket bounds were refused.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum BucketError {
    /// A bound is NaN or infinite (the last bucket, `+Inf`, is always
    /// there and is not given).
    NotFinite {
        /// The bound's position in the list.
        position: usize,
    },
    /// A bound is not above the one before it.
    NotAscending {
        /// The position of the bound that is not above its predecessor.
        position: usize,
    },
    /// An exponential series whose start is not above 0 or whose factor is
    /// not above 1, or a linear one whose width is not above 0.
    BadSeries,
    /// More than [`PerCpuHistogram::MAX_BUCKETS`] bounds.
    TooMany {
        /// How many were given.
        count: usize,
    },
}

impl fmt::Display for BucketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BucketError::NotFinite { position } => {
                write!(f, "bucket bound {position} is not a finite number")
            }
            BucketError::NotAscending { position } => write!(
                f,
                "bucket bound {position} is not above the bound before it (bounds must ascend strictly)"
            ),
            BucketError::BadSeries => f.write_str(
                "a bucket series needs a start above 0 and a factor above 1 (exponential), \
                 or a width above 0 (linear)",
            ),
            BucketError::TooMany { count } => write!(
                f,
                "{count} bucket bounds, more than the {} a histogram may have",
                PerCpuHistogram::MAX_BUCKETS
            ),
        }
    }
}

impl std::error::Error for BucketError {}

/// A histogram with fixed bucket bounds and one set of buckets per CPU.
///
/// [`observe(v)`](Self::observe) counts `v` in the first bucket whose upper
/// bound is at least `v` (the last bucket, `+Inf`, takes the rest and NaN),
/// and adds `v` to the sum, with one restartable sequence on the current
/// CPU's copy of that bucket: no lock, no atomic read-modify-write, no cache
/// line shared with another CPU. Each bucket of each CPU keeps its count and
/// its share of the sum together, so that the one section updates both (see
/// the footprint below). [`snapshot`](Self::snapshot) adds the CPUs up.
///
/// The snapshot is exact once the writers are quiescent, like
/// [`PerCpuCounter::sum`](super::PerCpuCounter::sum). While writers run,
/// every bucket's count in it is at least the count before the snapshot
/// began and at most the count after it ended; the count is the sum of
/// the buckets, and the sum is, for non-negative observations, bounded the
/// same way.
///
/// Threads without a live rseq area still count exactly, through one
/// shared set of atomic buckets.
///
/// **Footprint**: one block per possible CPU (or per concurrency id bound,
/// with [`Index::MmCid`]), each `24 × (bounds + 1)` bytes rounded up to 128
/// so that no two CPUs share a cache line or its prefetched neighbour:
/// 384 bytes per CPU for the 11 bounds of
/// [`DEFAULT_BOUNDS`](Self::DEFAULT_BOUNDS), 24 KiB on a 64-CPU machine.
/// [`footprint`](Self::footprint) gives the figure.
///
/// ```
/// use ktl::percpu::PerCpuHistogram;
/// use std::sync::Arc;
///
/// // Latencies in seconds: 1 ms, 2 ms, 4 ms, ... 512 ms, then +Inf.
/// let latency = Arc::new(PerCpuHistogram::exponential(0.001, 2.0, 10).unwrap());
/// let workers: Vec<_> = (0..4)
///     .map(|_| {
///         let latency = Arc::clone(&latency);
///         std::thread::spawn(move || {
///             for i in 0..1000 {
///                 latency.observe(0.0005 * f64::from(i % 4));
///             }
///         })
///     })
///     .collect();
/// for w in workers {
///     w.join().unwrap();
/// }
/// let s = latency.snapshot();
/// assert_eq!(s.count(), 4000);
/// // 0 and 0.5 ms are at most 1 ms; 1 ms too; 1.5 ms is in the 2 ms bucket.
/// assert_eq!(s.buckets()[..2], [3000, 1000]);
/// assert!((s.sum() - 4.0 * 250.0 * 0.003).abs() < 1e-9);
/// ```
pub struct PerCpuHistogram {
    /// The upper bounds, ascending and finite; bucket `bounds.len()` is
    /// `+Inf`.
    bounds: Box<[f64]>,
    /// The records: CPU `i`'s bucket `b` is the [`CountSum`] at
    /// `blocks + i * stride + b * 24`.
    blocks: *mut u8,
    stride: usize,
    cpus: usize,
    index: Index,
    /// Observations of threads that cannot run the section, and of index
    /// values without a block. Boxed for the reason `PerCpuCounter` boxes
    /// its shared word.
    shared: Box<Shared>,
}

/// The atomic buckets of the threads without a live area.
struct Shared {
    counts: Box<[AtomicU64]>,
    /// The sum's bits.
    sum: CachePadded<AtomicU64>,
}

// SAFETY: `blocks` is an allocation the histogram owns; its records are
// written only by `rseq::count_sum_current_first` and `_after` (one section
// per observation, on the records of the index value it runs with) and by
// `reset` through `&mut self`, and read with `CountSum::load`. The shared
// buckets are atomics.
unsafe impl Send for PerCpuHistogram {}
// SAFETY: as above.
unsafe impl Sync for PerCpuHistogram {}

/// The alignment and granule of a CPU's block: two cache lines.
const BLOCK_ALIGN: usize = 128;

impl PerCpuHistogram {
    /// The most bounds a histogram may have.
    pub const MAX_BUCKETS: usize = 1024;

    /// Prometheus' default bounds, for latencies in seconds: 5 ms to 10 s.
    pub const DEFAULT_BOUNDS: [f64; 11] = [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];

    /// A histogram with these upper bounds (ascending, finite; `+Inf` is
    /// added), indexed by CPU.
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Result<Self, BucketError> {
        Self::with_index(bounds, Index::CpuId)
    }

    /// A histogram with these upper bounds, indexed by `index`. With
    /// [`Index::MmCid`] on a kernel without `mm_cid`, it is indexed by CPU
    /// instead ([`index`](Self::index) says which).
    pub fn with_index(
        bounds: impl IntoIterator<Item = f64>,
        index: Index,
    ) -> Result<Self, BucketError> {
        let bounds: Box<[f64]> = bounds.into_iter().collect();
        check(&bounds)?;
        let index = usable(index);
        let cpus = slot_count(index);
        let buckets = bounds.len() + 1;
        let stride = (buckets * size_of::<CountSum>()).div_ceil(BLOCK_ALIGN) * BLOCK_ALIGN;
        let layout = Self::layout(cpus, stride);
        // SAFETY: the layout's size is at least 128 (one block of one CPU).
        let blocks = unsafe { alloc::alloc_zeroed(layout) };
        if blocks.is_null() {
            alloc::handle_alloc_error(layout);
        }
        // All-zero bytes are valid records: count 0, both sums 0.0.
        Ok(PerCpuHistogram {
            bounds,
            blocks,
            stride,
            cpus,
            index,
            shared: Box::new(Shared {
                counts: (0..buckets).map(|_| AtomicU64::new(0)).collect(),
                sum: CachePadded::new(AtomicU64::new(0.0f64.to_bits())),
            }),
        })
    }

    /// [`DEFAULT_BOUNDS`](Self::DEFAULT_BOUNDS), indexed by CPU.
    pub fn with_default_bounds() -> Self {
        match Self::new(Self::DEFAULT_BOUNDS) {
            Ok(h) => h,
            Err(e) => unreachable!("the default bounds are valid: {e}"),
        }
    }

    /// `count` bounds from `start`, each `factor` times the one before
    /// (`start > 0`, `factor > 1`), as Prometheus' `exponential_buckets`.
    pub fn exponential(start: f64, factor: f64, count: usize) -> Result<Self, BucketError> {
        let valid = start > 0.0 && factor > 1.0; // false for NaN too
        if !valid {
            return Err(BucketError::BadSeries);
        }
        Self::new(std::iter::successors(Some(start), |b| Some(b * factor)).take(count))
    }

    /// `count` bounds from `start`, each `width` above the one before
    /// (`width > 0`), as Prometheus' `linear_buckets`.
    pub fn linear(start: f64, width: f64, count: usize) -> Result<Self, BucketError> {
        let valid = width > 0.0; // false for NaN too
        if !valid {
            return Err(BucketError::BadSeries);
        }
        Self::new((0..count).map(|i| start + width * i as f64))
    }

    fn layout(cpus: usize, stride: usize) -> Layout {
        match Layout::from_size_align(cpus * stride, BLOCK_ALIGN) {
            Ok(l) => l,
            // cpus is at most the kernel's CPU limit and stride at most
            // 1025 records: far below isize::MAX.
            Err(e) => unreachable!("a histogram's layout: {e}"),
        }
    }

    /// The upper bounds, without the last bucket's `+Inf`.
    pub fn bounds(&self) -> &[f64] {
        &self.bounds
    }

    /// The index the blocks are chosen by.
    pub fn index(&self) -> Index {
        self.index
    }

    /// The bucket `v` falls in: the first whose bound is at least `v`,
    /// else (above every bound, or NaN) the last.
    ///
    /// Up to [`LINEAR_BOUNDS`] bounds, it counts the bounds below `v`, with
    /// no branch on the data: a search branches on every comparison, and
    /// values that vary (latencies do) make those branches mispredict. Above
    /// that, the count's cost grows past a binary search's.
    #[inline]
    fn bucket(&self, v: f64) -> usize {
        if v.is_nan() {
            // NaN compares false with every bound: it goes past them all,
            // to `+Inf`, as Prometheus' clients put it.
            return self.bounds.len();
        }
        if self.bounds.len() <= LINEAR_BOUNDS {
            // The bounds are ascending: those below `v` are a prefix.
            self.bounds.iter().map(|&b| usize::from(b < v)).sum()
        } else {
            self.bounds.partition_point(|&b| b < v)
        }
    }

    /// Counts `v` in its bucket and adds it to the sum.
    ///
    /// One critical section on the current CPU's record of the bucket,
    /// which writes its count and its sum together (a `_current`
    /// operation internal to the crate). Inline is only that first attempt:
    /// a retry after an abort, and the shared atomic buckets of a thread
    /// without a live area, run out of line, in a tail call.
    #[inline]
    pub fn observe(&self, v: f64) {
        let b = self.bucket(v);
        // SAFETY: for every `i < cpus`, `rec + i * stride` is CPU `i`'s
        // record of bucket `b` (`b <= bounds.len()`, inside the block), a
        // live, 8-byte aligned CountSum in the allocation the histogram owns
        // for as long as `self`. Only the halves of `count_sum_current` with
        // the histogram's one index write the records while it is shared;
        // `snapshot` reads them with `CountSum::load`, and `reset` writes
        // them through `&mut self`.
        let first = unsafe {
            rseq::count_sum_current_first(self.index, self.rec(b), self.stride, self.cpus, v)
        };
        if let Err(exit) = first {
            self.observe_after(exit, b, v);
        }
    }

    /// The first CPU's record of bucket `b`, as the sections address it.
    #[inline(always)]
    fn rec(&self, b: usize) -> *mut u8 {
        self.blocks.wrapping_add(b * size_of::<CountSum>())
    }

    /// What follows a first attempt that did not commit: retries, or the
    /// observation of a thread that cannot run the section.
    #[cold]
    #[inline(never)]
    fn observe_after(&self, exit: Exit, b: usize, v: f64) {
        // SAFETY: as in `observe`.
        let done = unsafe {
            rseq::count_sum_current_after(exit, self.index, self.rec(b), self.stride, self.cpus, v)
        };
        if done {
            return;
        }
        let sum = &self.shared.sum;
        let mut cur = sum.load(Ordering::Relaxed);
        while let Err(seen) = sum.compare_exchange_weak(
            cur,
            (f64::from_bits(cur) + v).to_bits(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            cur = seen;
        }
        self.shared.counts[b].fetch_add(1, Ordering::Relaxed);
    }

    /// CPU `i`'s record of bucket `b`.
    fn record(&self, i: usize, b: usize) -> &CountSum {
        debug_assert!(i < self.cpus && b <= self.bounds.len());
        // SAFETY: `i < cpus` and `b <= bounds.len()`: the record lies inside
        // the allocation, aligned, and lives as long as `self`. Its words
        // are atomics; the sections' plain stores to them are the ABI's
        // single-writer updates, read here only with atomic loads.
        unsafe {
            &*self
                .blocks
                .add(i * self.stride + b * size_of::<CountSum>())
                .cast::<CountSum>()
        }
    }

    /// The buckets, count and sum, added up over the CPUs and the shared
    /// buckets: exact when no thread is observing, bounded while threads
    /// are (see the [type docs](Self)).
    pub fn snapshot(&self) -> HistogramSnapshot {
        let n = self.bounds.len() + 1;
        let mut buckets: Vec<u64> = self
            .shared
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let mut sum = f64::from_bits(self.shared.sum.load(Ordering::Relaxed));
        for i in 0..self.cpus {
            for (b, total) in buckets.iter_mut().enumerate().take(n) {
                let (c, s) = self.record(i, b).load();
                *total = total.wrapping_add(c);
                sum += s;
            }
        }
        HistogramSnapshot {
            bounds: self.bounds.to_vec(),
            count: buckets.iter().fold(0u64, |a, &c| a.wrapping_add(c)),
            buckets,
            sum,
        }
    }

    /// Sets every bucket and the sum back to 0.
    pub fn reset(&mut self) {
        for i in 0..self.cpus {
            for b in 0..=self.bounds.len() {
                // SAFETY: as in `record`; `&mut self` excludes every section
                // and every reader.
                unsafe {
                    (*self
                        .blocks
                        .add(i * self.stride + b * size_of::<CountSum>())
                        .cast::<CountSum>())
                    .reset()
                };
            }
        }
        self.shared.counts.iter_mut().for_each(|c| *c.get_mut() = 0);
        *self.shared.sum.get_mut() = 0.0f64.to_bits();
    }

    /// The bytes the per-CPU blocks take: one block of `24 × (bounds + 1)`
    /// bytes, rounded up to 128, per possible CPU.
    pub fn footprint(&self) -> usize {
        self.cpus * self.stride
    }
}

impl Drop for PerCpuHistogram {
    fn drop(&mut self) {
        // SAFETY: allocated in `with_index` with this layout; nothing uses it
        // after the histogram.
        unsafe { alloc::dealloc(self.blocks, Self::layout(self.cpus, self.stride)) };
    }
}

impl fmt::Debug for PerCpuHistogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerCpuHistogram")
            .field("index", &self.index)
            .field("bounds", &self.bounds)
            .field("snapshot", &self.snapshot())
            .finish()
    }
}

/// Refuses bounds that are not finite, not strictly ascending, or too many.
pub(crate) fn check(bounds: &[f64]) -> Result<(), BucketError> {
    if bounds.len() > PerCpuHistogram::MAX_BUCKETS {
        return Err(BucketError::TooMany {
            count: bounds.len(),
        });
    }
    for (position, &b) in bounds.iter().enumerate() {
        if !b.is_finite() {
            return Err(BucketError::NotFinite { position });
        }
        // Both finite here, so `<=` is the negation of `>`.
        if position > 0 && b <= bounds[position - 1] {
            return Err(BucketError::NotAscending { position });
        }
    }
    Ok(())
}

/// A histogram's buckets, count and sum at one time ([`PerCpuHistogram::snapshot`]).
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    bounds: Vec<f64>,
    buckets: Vec<u64>,
    count: u64,
    sum: f64,
}

impl HistogramSnapshot {
    /// The upper bounds, without the last bucket's `+Inf`.
    pub fn bounds(&self) -> &[f64] {
        &self.bounds
    }

    /// Each bucket's own count (not cumulative), the `+Inf` bucket last:
    /// one more than [`bounds`](Self::bounds).
    pub fn buckets(&self) -> &[u64] {
        &self.buckets
    }

    /// The buckets as Prometheus exposes them: each upper bound (`+Inf`
    /// last, as `f64::INFINITY`) with the count of observations at or
    /// below it.
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let upper = self
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY));
        upper.zip(self.buckets.iter()).scan(0u64, |acc, (b, &c)| {
            *acc = acc.wrapping_add(c);
            Some((b, *acc))
        })
    }

    /// The observations counted: the sum of the buckets.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The sum of the observations.
    pub fn sum(&self) -> f64 {
        self.sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked() {
        assert_eq!(
            PerCpuHistogram::new([1.0, f64::NAN]).unwrap_err(),
            BucketError::NotFinite { position: 1 }
        );
        assert_eq!(
            PerCpuHistogram::new([1.0, 2.0, 2.0]).unwrap_err(),
            BucketError::NotAscending { position: 2 }
        );
        assert_eq!(
            PerCpuHistogram::new([f64::INFINITY]).unwrap_err(),
            BucketError::NotFinite { position: 0 }
        );
        assert_eq!(
            PerCpuHistogram::exponential(0.0, 2.0, 3).unwrap_err(),
            BucketError::BadSeries
        );
        assert_eq!(
            PerCpuHistogram::exponential(1.0, 1.0, 3).unwrap_err(),
            BucketError::BadSeries
        );
        assert_eq!(
            PerCpuHistogram::linear(0.0, -1.0, 3).unwrap_err(),
            BucketError::BadSeries
        );
        let too_many = (0..=PerCpuHistogram::MAX_BUCKETS).map(|i| i as f64);
        assert_eq!(
            PerCpuHistogram::new(too_many).unwrap_err(),
            BucketError::TooMany {
                count: PerCpuHistogram::MAX_BUCKETS + 1
            }
        );
        assert!(
            BucketError::NotAscending { position: 2 }
                .to_string()
                .contains("bound 2")
        );
    }

    #[test]
    fn series_constructors() {
        let e = PerCpuHistogram::exponential(1.0, 2.0, 4).unwrap();
        assert_eq!(e.bounds(), [1.0, 2.0, 4.0, 8.0]);
        let l = PerCpuHistogram::linear(-1.0, 0.5, 3).unwrap();
        assert_eq!(l.bounds(), [-1.0, -0.5, 0.0]);
        let none = PerCpuHistogram::new([]).unwrap();
        none.observe(3.0);
        assert_eq!(none.snapshot().buckets(), [1]);
    }

    #[test]
    fn observations_land_in_their_buckets() {
        let mut h = PerCpuHistogram::new([1.0, 2.0, 5.0]).unwrap();
        for v in [0.5, 1.0, 1.5, 2.0, 4.0, 5.0, 6.0, f64::NAN, -3.0] {
            h.observe(v);
        }
        let s = h.snapshot();
        // <= 1: 0.5, 1.0, -3.0; <= 2: 1.5, 2.0; <= 5: 4.0, 5.0; +Inf: 6, NaN.
        assert_eq!(s.buckets(), [3, 2, 2, 2]);
        assert_eq!(s.count(), 9);
        assert!(s.sum().is_nan());
        let cum: Vec<_> = s.cumulative().collect();
        assert_eq!(cum, [(1.0, 3), (2.0, 5), (5.0, 7), (f64::INFINITY, 9)]);
        h.reset();
        let s = h.snapshot();
        assert_eq!(s.count(), 0);
        assert_eq!(s.sum(), 0.0);
        h.observe(1.25);
        h.observe(0.25);
        let s = h.snapshot();
        assert_eq!((s.count(), s.sum()), (2, 1.5));
    }

    /// The bucket search counts the bounds below a value up to
    /// `LINEAR_BOUNDS` bounds and searches above: both give the first
    /// bound at least the value, at every bound and between them.
    #[test]
    fn both_bucket_searches_agree_with_the_definition() {
        let sizes = [
            1,
            2,
            LINEAR_BOUNDS - 1,
            LINEAR_BOUNDS,
            LINEAR_BOUNDS + 1,
            100,
        ];
        for n in sizes {
            let bounds: Vec<f64> = (0..n).map(|i| (i as f64) * 1.5 - 7.0).collect();
            let h = PerCpuHistogram::new(bounds.iter().copied()).unwrap();
            let mut values = vec![f64::NEG_INFINITY, f64::INFINITY, f64::NAN, -0.0];
            for &b in &bounds {
                values.extend([b, b - 0.25, b + 0.25, b.next_down(), b.next_up()]);
            }
            for v in values {
                let want = bounds.iter().position(|&b| b >= v).unwrap_or(n);
                assert_eq!(h.bucket(v), want, "{n} bounds, value {v}");
            }
        }
    }

    #[test]
    fn footprint_is_a_block_per_cpu() {
        let h = PerCpuHistogram::with_default_bounds();
        // 12 records of 24 bytes: 288, rounded up to 384.
        assert_eq!(h.footprint(), slot_count(h.index()) * 384);
    }
}
