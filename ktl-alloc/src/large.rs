//! Objects larger than the largest class (or aligned to more than a page):
//! each is a mapping of its own, rounded up to an eighth of a power of two
//! (whole pages at least). `realloc` of
//! one moves its pages with `mremap(2)` instead of copying them. Freed
//! mappings wait in a small cache for a request of the same length (a
//! vector that grows and is dropped in a loop asks for the same sizes),
//! up to [`CACHE_BYTES`], and are unmapped after an idle interval.

use crate::lock::RawLock;
use crate::os;
use core::alloc::Layout;
use core::cell::UnsafeCell;
use core::ptr;
use core::sync::atomic::{AtomicUsize, Ordering};

/// The most bytes of freed mappings kept for reuse.
const CACHE_BYTES: usize = 32 << 20;
/// The most freed mappings kept.
const CACHE_SLOTS: usize = 32;
/// Mappings larger than this are never kept.
const CACHE_MAX_ONE: usize = 8 << 20;

#[derive(Clone, Copy)]
struct Entry {
    addr: *mut u8,
    len: usize,
    freed_at: u64,
}

struct Cache {
    entries: [Entry; CACHE_SLOTS],
    n: usize,
    bytes: usize,
}

struct CacheCell(UnsafeCell<Cache>);
// SAFETY: reached only with `LOCK` held.
unsafe impl Sync for CacheCell {}

static LOCK: RawLock = RawLock::new();
static CACHE: CacheCell = CacheCell(UnsafeCell::new(Cache {
    entries: [Entry {
        addr: ptr::null_mut(),
        len: 0,
        freed_at: 0,
    }; CACHE_SLOTS],
    n: 0,
    bytes: 0,
}));

/// Bytes of live large objects' mappings.
static IN_USE: AtomicUsize = AtomicUsize::new(0);
/// Bytes of mappings in the cache.
static CACHED: AtomicUsize = AtomicUsize::new(0);

/// The mapping length of a large object of `size` bytes: rounded up to an
/// eighth of the power of two at or above it (and to whole pages), so that
/// the lengths a program asks for repeat and freed mappings in the cache
/// serve them. The rounding is address space; only the pages touched are
/// resident.
#[inline]
fn length(size: usize) -> Option<usize> {
    let page = os::page_size();
    let step = size.max(1).checked_next_power_of_two()?.max(8 * page) / 8;
    size.max(1).checked_add(step - 1).map(|n| n & !(step - 1))
}

/// Maps a large object; null when the OS refuses or the size overflows.
pub(crate) fn alloc(layout: Layout, zeroed: bool) -> *mut u8 {
    let Some(len) = length(layout.size()) else {
        return ptr::null_mut();
    };
    let page = os::page_size();
    if layout.align() <= page {
        if let Some(p) = take(len) {
            if zeroed {
                // SAFETY: the cached mapping is `len >= size` bytes, ours.
                unsafe { ptr::write_bytes(p, 0, layout.size()) };
            }
            IN_USE.fetch_add(len, Ordering::Relaxed);
            return p;
        }
        let Some(p) = os::map(len, false) else {
            return ptr::null_mut();
        };
        IN_USE.fetch_add(len, Ordering::Relaxed);
        return p.as_ptr();
    }
    // Aligned beyond a page: map the length plus the alignment, then
    // unmap the ends so that exactly `len` bytes remain at an aligned
    // address (which `free` unmaps with the same layout).
    let Some(total) = len.checked_add(layout.align()) else {
        return ptr::null_mut();
    };
    let Some(p) = os::map(total, false) else {
        return ptr::null_mut();
    };
    let p = p.as_ptr();
    let start = (p as usize + layout.align() - 1) & !(layout.align() - 1);
    let head = start - p as usize;
    let tail = total - head - len;
    // SAFETY: both ends belong to the mapping just made and are unused;
    // every length is a multiple of the page size.
    unsafe {
        if head > 0 {
            os::unmap(p, head);
        }
        if tail > 0 {
            os::unmap((start + len) as *mut u8, tail);
        }
    }
    IN_USE.fetch_add(len, Ordering::Relaxed);
    start as *mut u8
}

/// A cached mapping of exactly `len` bytes.
fn take(len: usize) -> Option<*mut u8> {
    if CACHED.load(Ordering::Relaxed) == 0 {
        return None;
    }
    LOCK.with(|| {
        // SAFETY: `LOCK` is held.
        let c = unsafe { &mut *CACHE.0.get() };
        let i = (0..c.n).rev().find(|&i| c.entries[i].len == len)?;
        let e = c.entries[i];
        c.n -= 1;
        c.entries[i] = c.entries[c.n];
        c.bytes -= len;
        CACHED.fetch_sub(len, Ordering::Relaxed);
        Some(e.addr)
    })
}

/// Frees a large object.
///
/// # Safety
///
/// `p` came from [`alloc`] (or [`realloc`]) with `layout`, and is freed
/// once.
pub(crate) unsafe fn free(p: *mut u8, layout: Layout) {
    let Some(len) = length(layout.size()) else {
        return;
    };
    IN_USE.fetch_sub(len, Ordering::Relaxed);
    if len <= CACHE_MAX_ONE {
        let now = os::coarse_ms();
        let kept = LOCK.with(|| {
            // SAFETY: `LOCK` is held.
            let c = unsafe { &mut *CACHE.0.get() };
            if c.n == CACHE_SLOTS || c.bytes + len > CACHE_BYTES {
                return false;
            }
            c.entries[c.n] = Entry {
                addr: p,
                len,
                freed_at: now,
            };
            c.n += 1;
            c.bytes += len;
            CACHED.fetch_add(len, Ordering::Relaxed);
            true
        });
        if kept {
            return;
        }
    }
    // SAFETY: the caller's contract: the whole mapping is ours and dead.
    unsafe { os::unmap(p, len) };
}

/// Resizes a large object to `new` bytes in place or by moving its pages;
/// null (the object unchanged) when the OS refuses.
///
/// # Safety
///
/// As for [`free`]; `layout.align()` is at most the page size.
pub(crate) unsafe fn realloc(p: *mut u8, layout: Layout, new: usize) -> *mut u8 {
    let (Some(old_len), Some(new_len)) = (length(layout.size()), length(new)) else {
        return ptr::null_mut();
    };
    if old_len == new_len {
        return p;
    }
    // SAFETY: the caller's contract: `p..p + old_len` is one whole mapping.
    let Some(q) = (unsafe { os::remap(p, old_len, new_len) }) else {
        return ptr::null_mut();
    };
    IN_USE.fetch_add(new_len, Ordering::Relaxed);
    IN_USE.fetch_sub(old_len, Ordering::Relaxed);
    q.as_ptr()
}

/// Unmaps the cached mappings freed before `before` (ms of the coarse
/// clock; `u64::MAX` for all); returns the bytes unmapped.
pub(crate) fn release_idle(before: u64) -> usize {
    let mut out = [(ptr::null_mut(), 0usize); CACHE_SLOTS];
    let mut k = 0;
    LOCK.with(|| {
        // SAFETY: `LOCK` is held.
        let c = unsafe { &mut *CACHE.0.get() };
        let mut i = 0;
        while i < c.n {
            if c.entries[i].freed_at < before {
                out[k] = (c.entries[i].addr, c.entries[i].len);
                k += 1;
                c.bytes -= c.entries[i].len;
                CACHED.fetch_sub(c.entries[i].len, Ordering::Relaxed);
                c.n -= 1;
                c.entries[i] = c.entries[c.n];
            } else {
                i += 1;
            }
        }
    });
    let mut bytes = 0;
    for &(addr, len) in &out[..k] {
        // SAFETY: a cached mapping is a whole mapping nobody uses.
        unsafe { os::unmap(addr, len) };
        bytes += len;
    }
    bytes
}

/// Bytes of live large objects, and of cached mappings.
pub(crate) fn bytes() -> (usize, usize) {
    (
        IN_USE.load(Ordering::Relaxed),
        CACHED.load(Ordering::Relaxed),
    )
}

/// The fork handlers' view.
pub(crate) fn lock() -> &'static RawLock {
    &LOCK
}
