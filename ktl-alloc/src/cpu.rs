//! The front end: one cache of free objects per CPU (or per concurrency
//! id) and size class, popped and pushed by one restartable sequence each.
//!
//! ## The slabs
//!
//! Index value `v` (a CPU number, or an `mm_cid`) owns one *region*: a
//! page-aligned block with a [`Slab`] header per class, then the item
//! arrays of all classes. A slab is TCMalloc's per-CPU slab in two words:
//! `len` free objects at `items[..len]`, room for `cap` (at most the
//! class's [`class::max_cached`], which sizes the array). Regions are mapped
//! zeroed with `MAP_NORESERVE`: every slab starts empty with no room, and a
//! CPU that never allocates never touches its region's pages.
//!
//! - **pop**: read `len = n` and `p = items[n - 1]`, then one section on
//!   `v` that compares both and commits `len = n - 1`
//!   ([`rseq::cmpeqv_cmpeqv_storev`]). Comparing the item as well as the
//!   length makes the pop immune to ABA: if both still hold, `p` is on the
//!   slab at the top, whatever happened in between.
//! - **push**: read `len = n` below `cap`, then one section that compares
//!   `len`, stores `items[n] = p` and commits `len = n + 1`
//!   ([`rseq::cmpeqv_trystorev_storev`]).
//!
//! Only sections running with index value `v` write region `v`'s words,
//! one at a time on its CPU, so there is no lock and no atomic
//! read-modify-write; the holder of [`rseq::exclusive`] for `v` is the one
//! exception (draining, below), which these sections respect: an
//! operation on a held value aborts until the holder lets go.
//!
//! ## Misses, capacity, idle caches
//!
//! An empty slab refills with a batch from the central cache; a full one
//! first grows (by a batch, while the region's capacity stays under
//! [`CPU_LIMIT`]) and otherwise sends a batch back. So a slab's capacity
//! follows its misses. Every [`IDLE_MS`], the thread that misses next
//! drains the regions that had no miss since the last round, under
//! [`rseq::exclusive`] (the membarrier rseq fence), back to the central
//! cache, with their capacity reset.

use crate::class::{self, FRONT};
use crate::{central, maint, os};
use core::ptr;
use core::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use ktl::rseq::{self, Commit, Index, Path, Start};

/// What one CPU's slabs may hold, in bytes of capacity (beyond one batch
/// per class, which every slab may have).
pub(crate) const CPU_LIMIT: usize = 2 << 20;

/// How long a region must miss nothing to be drained.
pub(crate) const IDLE_MS: u64 = 1000;

/// One class's cache on one CPU: `items[..len]`, room for `cap`.
#[repr(C)]
pub(crate) struct Slab {
    len: AtomicI64,
    cap: AtomicI64,
}

/// The header of one index value's region: its slabs, then its counters.
#[repr(C)]
struct Header {
    slabs: [Slab; FRONT],
    /// Capacity in bytes, summed over the slabs beyond their first batch.
    cap_bytes: AtomicUsize,
    /// Misses (refills and overflows), and their count at the last idle
    /// round.
    misses: AtomicU64,
    seen: AtomicU64,
    /// Times the region was drained.
    drains: AtomicU64,
}

/// Where class `c`'s items start in a region, in words from its item area.
const ITEM_OFFSETS: [usize; FRONT + 1] = item_offsets();

const fn item_offsets() -> [usize; FRONT + 1] {
    let mut o = [0; FRONT + 1];
    let mut c = 0;
    while c < FRONT {
        o[c + 1] = o[c] + class::max_cached(c);
        c += 1;
    }
    o
}

/// The item area's offset in a region, after the header, on its own line.
const ITEMS_AT: usize = (core::mem::size_of::<Header>() + 127) & !127;

/// The regions, once mapped: base, stride, count, and the index.
pub(crate) struct Regions {
    base: *mut u8,
    stride: usize,
    count: usize,
    index: Index,
}

// SAFETY: the regions are reached only through the rseq operations and
// `exclusive`, whose contract is kept below; the fields are constants.
unsafe impl Sync for Regions {}
// SAFETY: as above.
unsafe impl Send for Regions {}

impl Regions {
    /// Maps `count` regions for `index`, or `None` when the OS refuses.
    pub(crate) fn map(index: Index, count: usize) -> Option<Regions> {
        let page = os::page_size();
        let bytes = ITEMS_AT + ITEM_OFFSETS[FRONT] * 8;
        let stride = (bytes + page - 1) & !(page - 1);
        let base = os::map(stride.checked_mul(count)?, true)?.as_ptr();
        Some(Regions {
            base,
            stride,
            count,
            index,
        })
    }

    /// The index the regions are indexed by.
    pub(crate) fn index(&self) -> Index {
        self.index
    }

    /// How many index values have a region.
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    #[inline(always)]
    fn header(&self, v: usize) -> &Header {
        // SAFETY: `v < count` (the callers check), so the region is inside
        // the mapping; zeroed memory is a valid Header (all atomics).
        unsafe { &*self.base.add(v * self.stride).cast::<Header>() }
    }

    /// The address of item `i` of class `c` in region `v`.
    #[inline(always)]
    fn item(&self, v: usize, c: usize, i: usize) -> *mut i64 {
        // SAFETY: `v < count` and `i < max_cached(c)`: inside the region.
        unsafe {
            self.base
                .add(v * self.stride + ITEMS_AT + (ITEM_OFFSETS[c] + i) * 8)
                .cast()
        }
    }

    /// A start for an operation on this thread's region, if the thread runs
    /// restartable sequences (not a fallback start) with a value that has a
    /// region.
    #[inline(always)]
    fn start(&self) -> Option<(Start, usize)> {
        let s = rseq::start(self.index)?;
        let v = s.value() as usize;
        (s.path() == Path::CriticalSections && v < self.count).then_some((s, v))
    }

    /// One pop attempt from the current CPU's slab of class `c`: the object,
    /// or `Err(true)` when the slab is empty, or `Err(false)` when the
    /// attempt failed (an abort, a concurrent change, no start).
    #[inline(always)]
    fn try_pop(&self, c: usize) -> Result<*mut u8, bool> {
        let Some((s, v)) = self.start() else {
            return Err(false);
        };
        let slab = &self.header(v).slabs[c];
        let n = slab.len.load(Ordering::Relaxed);
        if n <= 0 {
            return Err(true);
        }
        let item = self.item(v, c, n as usize - 1);
        // SAFETY: `item` is a live word of the region (n <= max_cached);
        // read atomically, as a section may write it from another thread.
        let p = unsafe { (*item.cast::<AtomicI64>()).load(Ordering::Relaxed) };
        // SAFETY: `len` and the items of region `v` are written only by
        // sections started with value `v` (this pop and `try_push`) and by a
        // holder of `rseq::exclusive` for `v` (`drain`); both words are live
        // and aligned.
        match unsafe { rseq::cmpeqv_cmpeqv_storev(s, slab.len.as_ptr(), n, item, p, n - 1) } {
            Ok(()) => Ok(p as *mut u8),
            Err(_) => Err(false),
        }
    }

    /// One push attempt: `Ok` once pushed, `Err(true)` when the slab is full,
    /// `Err(false)` when the attempt failed.
    #[inline(always)]
    fn try_push(&self, c: usize, p: *mut u8) -> Result<(), bool> {
        let Some((s, v)) = self.start() else {
            return Err(false);
        };
        let slab = &self.header(v).slabs[c];
        let n = slab.len.load(Ordering::Relaxed);
        let cap = slab.cap.load(Ordering::Relaxed);
        if n >= cap || n as usize >= class::max_cached(c) {
            return Err(true);
        }
        let item = self.item(v, c, n as usize);
        // SAFETY: as in `try_pop`; `item` is below max_cached.
        match unsafe {
            rseq::cmpeqv_trystorev_storev(
                s,
                slab.len.as_ptr(),
                n,
                item,
                p as i64,
                n + 1,
                Commit::Relaxed,
            )
        } {
            Ok(()) => Ok(()),
            Err(_) => Err(false),
        }
    }

    /// An object of class `c` from the current CPU's cache, refilled from
    /// the central cache when empty; null when the thread cannot run
    /// restartable sequences (the caller takes another front end) or the
    /// OS refuses memory.
    #[inline(always)]
    pub(crate) fn alloc(&self, c: usize) -> Result<*mut u8, NoCpu> {
        match self.try_pop(c) {
            Ok(p) => Ok(p),
            Err(_) => self.alloc_slow(c),
        }
    }

    #[cold]
    #[inline(never)]
    fn alloc_slow(&self, c: usize) -> Result<*mut u8, NoCpu> {
        loop {
            match self.try_pop(c) {
                Ok(p) => return Ok(p),
                Err(true) => return Ok(self.refill(c)),
                Err(false) => {
                    if self.start().is_none() {
                        return Err(NoCpu);
                    }
                }
            }
        }
    }

    /// Refills the current CPU's empty slab of class `c` with a batch, and
    /// returns one of its objects (null when the OS refuses memory).
    fn refill(&self, c: usize) -> *mut u8 {
        self.grow(c);
        maint::tick();
        let mut buf = [ptr::null_mut(); 64];
        let want = class::batch(c);
        let got = central::fetch(c, &mut buf[..want]);
        if got == 0 {
            return ptr::null_mut();
        }
        spread(class::size(c), &mut buf[..got]);
        let mut i = 1;
        while i < got {
            match self.try_push(c, buf[i]) {
                Ok(()) => i += 1,
                Err(true) => break,
                Err(false) => {
                    if self.start().is_none() {
                        break;
                    }
                }
            }
        }
        if i < got {
            // SAFETY: free objects of class `c` from the central cache.
            unsafe { central::give(c, &buf[i..got]) };
        }
        buf[0]
    }

    /// Counts a miss on the current CPU's region, and grows its slab of
    /// class `c` by a batch if the slab is below its maximum and the region
    /// below [`CPU_LIMIT`] (a slab's first batch is always allowed).
    /// Returns whether it grew.
    fn grow(&self, c: usize) -> bool {
        let Some((s, v)) = self.start() else {
            return false;
        };
        let h = self.header(v);
        h.misses.fetch_add(1, Ordering::Relaxed);
        let slab = &h.slabs[c];
        let cap = slab.cap.load(Ordering::Relaxed);
        let max = class::max_cached(c) as i64;
        if cap >= max {
            return false;
        }
        let b = class::batch(c) as i64;
        let new = (cap + b).min(max);
        let bytes = if cap == 0 {
            0
        } else {
            (new - cap) as usize * class::size(c)
        };
        if bytes > 0 && h.cap_bytes.load(Ordering::Relaxed) + bytes > CPU_LIMIT {
            return false;
        }
        // SAFETY: `cap` of region `v` is written only by sections started
        // with `v` (this one) and by the holder of `exclusive` for `v`.
        let grown = unsafe { rseq::cmpeqv_storev(s, slab.cap.as_ptr(), cap, new) }.is_ok();
        if grown && bytes > 0 {
            h.cap_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        grown
    }

    /// Puts a freed object of class `c` in the current CPU's cache, sending
    /// a batch to the central cache when it is full. `Err` when the thread
    /// cannot run restartable sequences (the object is not taken).
    #[inline(always)]
    pub(crate) fn free(&self, c: usize, p: *mut u8) -> Result<(), NoCpu> {
        match self.try_push(c, p) {
            Ok(()) => Ok(()),
            Err(_) => self.free_slow(c, p),
        }
    }

    #[cold]
    #[inline(never)]
    fn free_slow(&self, c: usize, p: *mut u8) -> Result<(), NoCpu> {
        let mut overflowed = false;
        loop {
            match self.try_push(c, p) {
                Ok(()) => return Ok(()),
                Err(true) if !overflowed => {
                    overflowed = true;
                    if !self.grow(c) {
                        self.overflow(c);
                    }
                    maint::tick();
                }
                Err(true) => {
                    // Full again at once (other threads on this CPU): the
                    // object goes to the central cache itself.
                    // SAFETY: `p` is a freed object of class `c`.
                    unsafe { central::give(c, &[p]) };
                    return Ok(());
                }
                Err(false) => {
                    if self.start().is_none() {
                        return Err(NoCpu);
                    }
                }
            }
        }
    }

    /// Sends a batch from the current CPU's slab of class `c` to the
    /// central cache.
    fn overflow(&self, c: usize) {
        let mut buf = [ptr::null_mut(); 64];
        let want = class::batch(c);
        let mut got = 0;
        while got < want {
            match self.try_pop(c) {
                Ok(q) => {
                    buf[got] = q;
                    got += 1;
                }
                Err(true) => break,
                Err(false) => {
                    if self.start().is_none() {
                        break;
                    }
                }
            }
        }
        if got > 0 {
            // SAFETY: free objects of class `c` popped from a slab.
            unsafe { central::give(c, &buf[..got]) };
        }
    }

    /// Drains the regions that missed nothing since the last call (all of
    /// them when `all`), back to the central cache, with their capacity
    /// reset. Returns how many were drained; regions whose exclusive access
    /// is refused (a kernel without the rseq fence) are left as they are.
    pub(crate) fn drain_idle(&self, all: bool) -> usize {
        let mut drained = 0;
        for v in 0..self.count {
            let h = self.header(v);
            let m = h.misses.load(Ordering::Relaxed);
            let idle = m == h.seen.swap(m, Ordering::Relaxed);
            if (idle || all) && self.holds_anything(v) && self.drain(v) {
                drained += 1;
            }
        }
        drained
    }

    /// Whether region `v` has any capacity (a drained region has none).
    fn holds_anything(&self, v: usize) -> bool {
        let h = self.header(v);
        h.slabs.iter().any(|s| s.cap.load(Ordering::Relaxed) != 0)
    }

    /// Empties region `v` under exclusive access.
    fn drain(&self, v: usize) -> bool {
        let Ok(_held) = rseq::exclusive(self.index, v as u32) else {
            return false;
        };
        let h = self.header(v);
        for c in 0..FRONT {
            let slab = &h.slabs[c];
            let n = slab
                .len
                .load(Ordering::Relaxed)
                .clamp(0, class::max_cached(c) as i64) as usize;
            let mut buf = [ptr::null_mut(); 64];
            let mut i = 0;
            while i < n {
                let k = (n - i).min(64);
                for (j, b) in buf[..k].iter_mut().enumerate() {
                    // SAFETY: below `len`, a live item of the region; no
                    // section of value `v` commits while `_held` lives.
                    *b = unsafe {
                        (*self.item(v, c, i + j).cast::<AtomicI64>()).load(Ordering::Relaxed)
                    } as *mut u8;
                }
                // SAFETY: free objects of class `c` taken off the slab.
                unsafe { central::give(c, &buf[..k]) };
                i += k;
            }
            slab.len.store(0, Ordering::Relaxed);
            slab.cap.store(0, Ordering::Relaxed);
        }
        h.cap_bytes.store(0, Ordering::Relaxed);
        h.drains.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Bytes of free objects cached in region `v`, and its drains.
    pub(crate) fn cached(&self, v: usize) -> (u64, u64) {
        let h = self.header(v);
        let mut bytes = 0u64;
        for c in 0..FRONT {
            let n = h.slabs[c].len.load(Ordering::Relaxed).max(0) as u64;
            bytes += n * class::size(c) as u64;
        }
        (bytes, h.drains.load(Ordering::Relaxed))
    }

    /// Objects of class `c` cached over all regions.
    pub(crate) fn cached_objects(&self, c: usize) -> usize {
        (0..self.count)
            .map(|v| self.header(v).slabs[c].len.load(Ordering::Relaxed).max(0) as usize)
            .sum()
    }
}

/// The thread cannot run restartable sequences now: the caller uses the
/// per-thread front end.
#[derive(Debug)]
pub(crate) struct NoCpu;

/// The cache line size that [`spread`] keeps the objects of consecutive
/// pops apart by.
const LINE: usize = 64;

/// Orders a refill's batch, `objs[0]` the object the refill returns and
/// the rest pushed in order (so `objs[last]` is popped next), such that the
/// objects a CPU takes one after the other lie on different cache lines,
/// starting away from the batch's ends.
///
/// The objects a fresh span gives are neighbours, and a CPU reuses its top
/// object for as long as its thread frees before it allocates again. When
/// a thread migrates between an allocation and its free, the object goes to
/// the other CPU's slab, and this CPU goes on with the object below its
/// old top. In address order, that one shared a line with the object now
/// used on the other CPU, and both CPUs would write the line for the rest
/// of the run (passive false sharing, which `cache-scratch` measures; runs
/// that met it took twice as long). In this order the next object is at
/// least a line past it, and the batch's end objects, the neighbours of
/// other batches, come late.
fn spread(size: usize, objs: &mut [*mut u8]) {
    // Objects `step` apart never share a line: the gap between them is
    // `(step - 1) * size >= LINE - 1` bytes. A size that is a multiple of
    // the line (spans are page-aligned) keeps every object on lines of its
    // own.
    if size.is_multiple_of(LINE) {
        return;
    }
    let step = 1 + (LINE - 1).div_ceil(size);
    let n = objs.len();
    if n <= 2 || n > 64 {
        return;
    }
    let mut copy = [ptr::null_mut(); 64];
    copy[..n].copy_from_slice(objs);
    // The `k`-th object taken is `objs[0]`, then `objs[n - 1]`, `objs[n - 2]`...
    let mut k = 0;
    for r in (step / 2..step).chain(0..step / 2) {
        for &p in copy[..n].iter().skip(r).step_by(step) {
            objs[if k == 0 { 0 } else { n - k }] = p;
            k += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{LINE, spread};
    use crate::class;

    /// The order `spread` gives, as indices of a batch in address order:
    /// the `k`-th entry is the `k`-th object the CPU takes.
    fn taken(size: usize, n: usize) -> Vec<usize> {
        let mut objs: Vec<*mut u8> = (0..n).map(|i| (0x10_0000 + i * size) as *mut u8).collect();
        spread(size, &mut objs);
        let index = |p: *mut u8| (p as usize - 0x10_0000) / size;
        let mut order = vec![index(objs[0])];
        order.extend(objs[1..].iter().rev().map(|&p| index(p)));
        order
    }

    /// The cache lines of object `i` of `size` bytes in a line-aligned span.
    fn lines(size: usize, i: usize) -> (usize, usize) {
        (i * size / LINE, ((i + 1) * size - 1) / LINE)
    }

    /// Caught the first order, the batch in address order: after a thread
    /// moved its object to another CPU's slab, the next object taken here
    /// shared a cache line with it.
    #[test]
    fn objects_taken_one_after_the_other_share_no_line() {
        for c in 0..class::FRONT {
            let size = class::size(c);
            for n in [3, 7, class::batch(c).min(64)] {
                let order = taken(size, n);
                let mut sorted = order.clone();
                sorted.sort_unstable();
                assert_eq!(
                    sorted,
                    (0..n).collect::<Vec<_>>(),
                    "size {size}, {n} objects"
                );
                if size.is_multiple_of(LINE) {
                    continue;
                }
                let step = 1 + (LINE - 1).div_ceil(size);
                if n < 2 * step {
                    continue;
                }
                assert!(order[0] != 0 && order[0] != n - 1, "size {size}: {order:?}");
                for w in order.windows(2) {
                    let (a, b) = (lines(size, w[0]), lines(size, w[1]));
                    assert!(
                        a.1 < b.0 || b.1 < a.0,
                        "size {size}, {n} objects: {order:?}"
                    );
                }
            }
        }
    }
}
