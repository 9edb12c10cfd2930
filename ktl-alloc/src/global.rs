//! [`PerCpuAlloc`] and its [`GlobalAlloc`] implementation: the layout's
//! class picks the tier.

use crate::{central, class, front, large, os};
use core::alloc::{GlobalAlloc, Layout};
use core::ptr;

/// The allocator: a zero-sized handle on the process's one heap.
///
/// Every `PerCpuAlloc` shares the same caches, so it is meant for one
/// `#[global_allocator]` static (see the [crate docs](crate)). It can also
/// be called directly through [`GlobalAlloc`], for example in a test that
/// keeps the system allocator global.
#[derive(Debug, Clone, Copy)]
pub struct PerCpuAlloc(());

impl PerCpuAlloc {
    /// The allocator, for a `#[global_allocator]` static.
    pub const fn new() -> Self {
        PerCpuAlloc(())
    }
}

impl Default for PerCpuAlloc {
    fn default() -> Self {
        Self::new()
    }
}

/// An object of class `c`: from the front end, or the central cache for
/// a medium class.
#[inline(always)]
fn alloc_class(c: usize) -> *mut u8 {
    if c < class::FRONT {
        front::alloc(c)
    } else {
        central::alloc_medium(c)
    }
}

/// Allocates for `layout`; null when the OS refuses memory.
#[inline(always)]
fn alloc_for(layout: Layout) -> *mut u8 {
    match class::of(layout) {
        Some(c) => alloc_class(c),
        None => large::alloc(layout, false),
    }
}

/// # Safety
///
/// `ptr` was allocated by this allocator with `layout`, and is freed once.
#[inline(always)]
unsafe fn free_for(ptr: *mut u8, layout: Layout) {
    match class::of(layout) {
        // SAFETY: the caller's contract: the same layout gives the same
        // class the object was allocated from.
        Some(c) if c < class::FRONT => unsafe { front::free(c, ptr) },
        // SAFETY: as above.
        Some(c) => unsafe { central::free_medium(c, ptr) },
        // SAFETY: as above: a layout without a class was mapped alone.
        None => unsafe { large::free(ptr, layout) },
    }
}

// SAFETY: every object handed out is a block of at least `layout.size()`
// bytes aligned to `layout.align()` (a class whose size is a multiple of
// the alignment, inside a span aligned far beyond it, or a mapping aligned
// to it), owned by the caller until it is freed: no tier hands an object
// out twice (the per-CPU pops commit by restartable sequence, the other
// tiers move objects under their locks).
unsafe impl GlobalAlloc for PerCpuAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        alloc_for(layout)
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract (`GlobalAlloc::dealloc`).
        unsafe { free_for(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match class::of(layout) {
            Some(c) => {
                let p = alloc_class(c);
                if !p.is_null() {
                    // SAFETY: a fresh object of at least `layout.size()`
                    // bytes.
                    unsafe { ptr::write_bytes(p, 0, layout.size()) };
                }
                p
            }
            // Fresh mappings are zero; cached ones are cleared.
            None => large::alloc(layout, true),
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract (`GlobalAlloc::realloc`): a nonzero
        // size that does not overflow `isize` when rounded to the align.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let (old_c, new_c) = (class::of(layout), class::of(new));
        match (old_c, new_c) {
            // The object's class holds the new size: in place.
            (Some(a), Some(b)) if a == b => return ptr,
            (None, None) if layout.align() <= os::page_size() => {
                // SAFETY: the caller's contract: a large object of
                // `layout`, mapped alone with at most page alignment.
                return unsafe { large::realloc(ptr, layout, new_size) };
            }
            _ => {}
        }
        let q = alloc_for(new);
        if !q.is_null() {
            // SAFETY: both blocks are live and distinct, each at least
            // the copied length.
            unsafe {
                ptr::copy_nonoverlapping(ptr, q, layout.size().min(new_size));
                free_for(ptr, layout);
            }
        }
        q
    }
}
