//! Size classes: the object sizes the allocator serves from spans, and for
//! each the batch it moves between tiers and what one CPU may cache.
//!
//! 8, then every 16 bytes to 128, then four classes per doubling to
//! 1 MiB: at most 25% (and 12.5% on average) of an object is rounding.
//! The classes up to [`MAX_CACHED_SIZE`] (32 KiB) are *front-end* classes,
//! cached per CPU; the *medium* classes above it go to the central cache
//! directly (an object of 40 KiB or more costs far more to touch than a
//! lock), and each of their spans is a run of several (see [`run_spans`]),
//! so that their objects come back with their pages resident instead of
//! being mapped and faulted in one by one.
//! [`GlobalAlloc::dealloc`](core::alloc::GlobalAlloc::dealloc) receives the
//! `Layout`, so the class of a freed object is [`of`] that layout again: no
//! page map is read on free.
#![forbid(unsafe_code)]

use core::alloc::Layout;

/// The largest object served from spans; larger ones are mapped alone.
pub(crate) const MAX_SMALL: usize = 1 << 20;

/// The largest object of a front-end class.
pub(crate) const MAX_CACHED_SIZE: usize = 32 * 1024;

/// The number of classes.
pub(crate) const COUNT: usize = 9 + 4 * 13;

/// The number of front-end classes: `0..FRONT` are cached per CPU (and per
/// thread), `FRONT..COUNT` are medium.
pub(crate) const FRONT: usize = 9 + 4 * 8;

const _: () = assert!(SIZES[FRONT - 1] as usize == MAX_CACHED_SIZE);

/// The size of each class, ascending.
pub(crate) const SIZES: [u32; COUNT] = sizes();

const fn sizes() -> [u32; COUNT] {
    let mut s = [0u32; COUNT];
    s[0] = 8;
    let mut i = 1;
    while i <= 8 {
        s[i] = 16 * i as u32;
        i += 1;
    }
    // Four steps per doubling from 128: 160, 192, 224, 256, 320, ...
    let mut base = 128u32;
    while i < COUNT {
        let step = base / 4;
        let mut k = 1;
        while k <= 4 {
            s[i] = base + step * k;
            i += 1;
            k += 1;
        }
        base *= 2;
    }
    s
}

/// Class index of every size up to 1024, by `(size + 15) / 16` (the
/// sizes to 8 have their own test).
const SMALL_LOOKUP: [u8; 65] = small_lookup();

const fn small_lookup() -> [u8; 65] {
    let mut t = [0u8; 65];
    let mut q = 0;
    while q <= 64 {
        let size = (q * 16) as u32;
        let mut c = 0;
        while SIZES[c] < size {
            c += 1;
        }
        t[q] = c as u8;
        q += 1;
    }
    t
}

/// The class of an object of `size` bytes with alignment up to 16.
#[inline(always)]
fn of_size(size: usize) -> Option<usize> {
    if size <= 1024 {
        if size <= 8 {
            return Some(0);
        }
        return Some(SMALL_LOOKUP[(size + 15) >> 4] as usize);
    }
    if size > MAX_SMALL {
        return None;
    }
    // Four classes per doubling: above 2^k, step 2^(k-2).
    let k = usize::BITS - 1 - (size - 1).leading_zeros(); // 2^k < size <= 2^(k+1)
    let step = 1usize << (k - 2);
    let within = (size - (1 << k)).div_ceil(step); // 1..=4
    Some(9 + 4 * (k as usize - 7) + within - 1)
}

/// The class that serves `layout`, or `None` for objects mapped alone
/// (larger than [`MAX_SMALL`] after alignment, or aligned to more than a
/// page). A class serves an alignment when its size is a multiple of it:
/// objects sit at multiples of their size from a span's start, and spans
/// are aligned to far more than a page.
#[inline(always)]
pub(crate) fn of(layout: Layout) -> Option<usize> {
    if layout.align() <= 16 {
        // Every class from 16 bytes on is a multiple of 16; the 8-byte
        // class serves alignments up to 8.
        return of_size(layout.size().max(layout.align()));
    }
    of_aligned(layout)
}

#[cold]
fn of_aligned(layout: Layout) -> Option<usize> {
    if layout.align() > 4096 {
        return None;
    }
    let mut c = of_size(layout.size().max(layout.align()))?;
    while !(SIZES[c] as usize).is_multiple_of(layout.align()) {
        c += 1;
        if c == COUNT {
            return None;
        }
    }
    Some(c)
}

/// The size of class `c`.
#[inline(always)]
pub(crate) fn size(c: usize) -> usize {
    SIZES[c] as usize
}

/// How many 256 KiB spans make one span of class `c`: one up to 64 KiB,
/// then twice as many per doubling, so that a span holds at least four
/// objects (16 spans, 4 MiB, for the 1 MiB class). A power of two, which
/// the page heap's free lists are sorted by.
#[inline(always)]
pub(crate) const fn run_spans(c: usize) -> usize {
    RUNS[c] as usize
}

/// [`run_spans`] of every class.
const RUNS: [u8; COUNT] = {
    let mut t = [0u8; COUNT];
    let mut c = 0;
    while c < COUNT {
        let mut n = 1usize;
        while n * (256 << 10) < 4 * SIZES[c] as usize {
            n *= 2;
        }
        t[c] = n as u8;
        c += 1;
    }
    t
};

/// How many objects of class `c` move at once between a front-end cache
/// and the central cache: about 32 KiB worth, from 2 to 64 objects.
#[inline(always)]
pub(crate) const fn batch(c: usize) -> usize {
    BATCH[c] as usize
}

/// The most objects of class `c` one CPU's cache can hold: 256 KiB worth
/// (at least two batches; 16,384 objects of 16 bytes). The cache starts at
/// one batch and grows towards this as it misses, while the CPU's capacity
/// stays under `cpu::CPU_LIMIT` (see `cpu`). Room for a program's whole
/// working set of a class keeps the objects one thread frees on its CPU for
/// its next allocations there: taken back through the shared central cache,
/// they would be split between threads object by object, and each thread's
/// objects would share their lines with other threads'.
#[inline(always)]
pub(crate) const fn max_cached(c: usize) -> usize {
    MAX_CACHED[c] as usize
}

/// [`batch`] of every class, computed once: the fast paths read a table,
/// not a division.
const BATCH: [u32; COUNT] = {
    let mut t = [0u32; COUNT];
    let mut c = 0;
    while c < COUNT {
        let n = 32 * 1024 / SIZES[c];
        t[c] = if n < 2 {
            2
        } else if n > 64 {
            64
        } else {
            n
        };
        c += 1;
    }
    t
};

/// [`max_cached`] of every class.
const MAX_CACHED: [u32; COUNT] = {
    let mut t = [0u32; COUNT];
    let mut c = 0;
    while c < COUNT {
        let b = BATCH[c];
        let n = 256 * 1024 / SIZES[c];
        t[c] = if n < 2 * b { 2 * b } else { n };
        c += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_size_gets_the_smallest_class_that_fits() {
        for size in 0..=MAX_SMALL + 1 {
            let want = SIZES.iter().position(|&s| s as usize >= size.max(1));
            assert_eq!(of_size(size), want, "size {size}");
        }
    }

    #[test]
    fn aligned_layouts_get_a_class_whose_size_is_a_multiple() {
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096] {
            // Every seventh size through the front-end classes, then a
            // sample of the medium ones.
            let sizes = (1..=2 * MAX_CACHED_SIZE)
                .step_by(7)
                .chain((2 * MAX_CACHED_SIZE..=MAX_SMALL + 1).step_by(4093));
            for n in sizes {
                let l = Layout::from_size_align(n, align).unwrap();
                if let Some(c) = of(l) {
                    assert!(
                        size(c) >= n && size(c).is_multiple_of(align),
                        "{l:?} -> {}",
                        size(c)
                    );
                    // The smallest such class.
                    assert!(
                        !SIZES[..c]
                            .iter()
                            .any(|&s| s as usize >= n && (s as usize).is_multiple_of(align)),
                        "{l:?}"
                    );
                } else {
                    // Only when no class fits.
                    assert!(
                        !SIZES
                            .iter()
                            .any(|&s| s as usize >= n && (s as usize).is_multiple_of(align)),
                        "{l:?}"
                    );
                }
            }
        }
        assert_eq!(of(Layout::from_size_align(8, 8192).unwrap()), None);
    }

    #[test]
    fn the_table_is_ascending_with_bounded_rounding() {
        assert_eq!(SIZES[COUNT - 1] as usize, MAX_SMALL);
        assert_eq!(SIZES[FRONT - 1] as usize, MAX_CACHED_SIZE);
        for c in 0..COUNT {
            let run = run_spans(c) * (256 << 10);
            assert!(run_spans(c).is_power_of_two() && run_spans(c) <= 16);
            assert!(run >= 4 * size(c), "class {c}: {run} for {}", size(c));
            // No more than twice the spans four objects need.
            assert!(run_spans(c) == 1 || run < 8 * size(c), "class {c}");
        }
        for w in SIZES.windows(2) {
            assert!(w[0] < w[1]);
            assert!(w[1] as f64 / (w[0] as f64 + 1.0) <= 2.0);
            assert!(w[1] <= 128 || (w[1] - w[0]) * 4 <= w[0] + 1, "{w:?}");
        }
        for c in 0..COUNT {
            assert!(batch(c) >= 2 && max_cached(c) >= 2 * batch(c));
        }
    }
}
