//! The back end: spans of pages from the OS, and what goes back to it.
//!
//! Address space comes in *arenas* of [`ARENA`] bytes, mapped with
//! `MAP_NORESERVE` and aligned to their size, so that the arena and the span
//! of any object are its address rounded down. An arena is cut into spans of
//! [`SPAN`] bytes; its first span holds the metadata of all of them (one
//! [`Span`] each). A span serves one size class (see `central`) until it is
//! free again, when it goes on the page heap's list of free spans. The pages
//! of a span that stays free for an idle interval, or of free spans beyond
//! [`DIRTY_LIMIT`], are given back with `MADV_DONTNEED`: the span stays
//! mapped and is reused first-hand later, its pages zero.
//!
//! Every field of a [`Span`] is read and written under a lock: the page
//! heap's while the span is free, its class's central lock while it serves
//! the class.

use crate::lock::RawLock;
use crate::os;
use core::cell::UnsafeCell;
use core::ptr;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The span size: 256 KiB, a multiple of every page size Linux uses.
pub(crate) const SPAN_SHIFT: u32 = 18;
/// See [`SPAN_SHIFT`].
pub(crate) const SPAN: usize = 1 << SPAN_SHIFT;
/// The arena size: 64 MiB, 256 spans.
pub(crate) const ARENA: usize = 64 << 20;
const SPANS_PER_ARENA: usize = ARENA / SPAN;
/// Free spans kept resident before the oldest ones are given back.
pub(crate) const DIRTY_LIMIT: usize = 8 << 20;

/// One span's metadata, in its arena's first span.
#[repr(C)]
pub(crate) struct Span {
    /// The span's first byte.
    pub(crate) base: *mut u8,
    /// The class served, while it serves one.
    pub(crate) class: u32,
    /// Objects of the class that fit in the span.
    pub(crate) capacity: u32,
    /// Objects handed out of the span and not returned to it.
    pub(crate) live: u32,
    /// Objects never handed out: `bump..capacity`.
    pub(crate) bump: u32,
    /// Returned objects, linked through their first word.
    pub(crate) free: *mut u8,
    /// Links in the list the span is on (a class's partial spans, or the
    /// page heap's free spans).
    pub(crate) next: *mut Span,
    pub(crate) prev: *mut Span,
    /// Whether the span is on a class's list of spans with room.
    pub(crate) listed: bool,
    /// Whether the span's pages were given back and not touched since.
    released: bool,
    /// When it became free (milliseconds of the coarse clock).
    freed_at: u64,
}

const _: () = assert!(core::mem::size_of::<Span>() * SPANS_PER_ARENA <= SPAN);

/// A doubly linked list of spans.
pub(crate) struct SpanList {
    pub(crate) head: *mut Span,
    tail: *mut Span,
    pub(crate) len: usize,
}

impl SpanList {
    pub(crate) const fn new() -> Self {
        SpanList {
            head: ptr::null_mut(),
            tail: ptr::null_mut(),
            len: 0,
        }
    }

    /// Puts `s` at the head.
    ///
    /// # Safety
    ///
    /// `s` is a live span on no list, and the caller holds the lock of the
    /// list and of the span.
    pub(crate) unsafe fn push_front(&mut self, s: *mut Span) {
        // SAFETY: the caller's contract; the head, if any, is a live span
        // on this list.
        unsafe {
            (*s).prev = ptr::null_mut();
            (*s).next = self.head;
            if self.head.is_null() {
                self.tail = s;
            } else {
                (*self.head).prev = s;
            }
        }
        self.head = s;
        self.len += 1;
    }

    /// Takes `s` off the list.
    ///
    /// # Safety
    ///
    /// `s` is on this list, and the caller holds its lock.
    pub(crate) unsafe fn remove(&mut self, s: *mut Span) {
        // SAFETY: the caller's contract; the neighbours are on the list.
        unsafe {
            let (p, n) = ((*s).prev, (*s).next);
            if p.is_null() {
                self.head = n;
            } else {
                (*p).next = n;
            }
            if n.is_null() {
                self.tail = p;
            } else {
                (*n).prev = p;
            }
            (*s).next = ptr::null_mut();
            (*s).prev = ptr::null_mut();
        }
        self.len -= 1;
    }
}

/// The metadata of the span that holds `p`, an address inside an arena.
#[inline]
pub(crate) fn span_of(p: *mut u8) -> *mut Span {
    let arena = (p as usize) & !(ARENA - 1);
    let i = ((p as usize) - arena) >> SPAN_SHIFT;
    (arena as *mut Span).wrapping_add(i)
}

/// The page heap: arenas, and the free spans.
struct Heap {
    /// The arena being cut, and its next never-used span.
    arena: *mut u8,
    next: usize,
    /// Free spans whose pages are resident, the most recently freed first.
    dirty: SpanList,
    /// Free spans whose pages were given back.
    clean: SpanList,
}

struct HeapCell(UnsafeCell<Heap>);
// SAFETY: the heap is only reached with `LOCK` held.
unsafe impl Sync for HeapCell {}

static LOCK: RawLock = RawLock::new();
static HEAP: HeapCell = HeapCell(UnsafeCell::new(Heap {
    arena: ptr::null_mut(),
    next: SPANS_PER_ARENA,
    dirty: SpanList::new(),
    clean: SpanList::new(),
}));

/// Bytes of arenas mapped.
static MAPPED: AtomicUsize = AtomicUsize::new(0);
/// Bytes given back with `MADV_DONTNEED` and not reused since.
static RELEASED: AtomicUsize = AtomicUsize::new(0);
/// Bytes given back over the process's life.
static RELEASED_TOTAL: AtomicU64 = AtomicU64::new(0);

/// What the page heap holds, for [`Stats`](crate::Stats).
pub(crate) struct HeapStats {
    pub(crate) mapped: usize,
    pub(crate) free_resident: usize,
    pub(crate) released: usize,
    pub(crate) released_total: u64,
}

pub(crate) fn stats() -> HeapStats {
    let mapped = MAPPED.load(Ordering::Relaxed);
    let released = RELEASED.load(Ordering::Relaxed);
    // The dirty list's length is read under the lock.
    // SAFETY: `LOCK` is held while the heap is read.
    let dirty = LOCK.with(|| unsafe { (*HEAP.0.get()).dirty.len });
    HeapStats {
        mapped,
        free_resident: dirty * SPAN,
        released,
        released_total: RELEASED_TOTAL.load(Ordering::Relaxed),
    }
}

/// A free span for class `class` (objects of `size` bytes), or `None` when
/// the OS refuses memory. Its pages are zero if they were given back or are
/// fresh.
pub(crate) fn alloc_span(class: usize, size: usize) -> Option<*mut Span> {
    LOCK.lock();
    // SAFETY: `LOCK` is held.
    let s = unsafe { take_span(&mut *HEAP.0.get()) };
    LOCK.unlock();
    let s = s?;
    // SAFETY: the span is free and no list or class holds it: the caller
    // owns it until it lists it under the class's lock.
    unsafe {
        (*s).class = class as u32;
        (*s).capacity = (SPAN / size) as u32;
        (*s).live = 0;
        (*s).bump = 0;
        (*s).free = ptr::null_mut();
        (*s).listed = false;
    }
    Some(s)
}

/// # Safety
///
/// The caller holds `LOCK`, and `h` is the heap.
unsafe fn take_span(h: &mut Heap) -> Option<*mut Span> {
    if !h.dirty.head.is_null() {
        let s = h.dirty.head;
        // SAFETY: `s` is on the dirty list, under the lock.
        unsafe { h.dirty.remove(s) };
        return Some(s);
    }
    if !h.clean.head.is_null() {
        let s = h.clean.head;
        // SAFETY: as above.
        unsafe {
            h.clean.remove(s);
            (*s).released = false;
        }
        RELEASED.fetch_sub(SPAN, Ordering::Relaxed);
        return Some(s);
    }
    if h.next == SPANS_PER_ARENA {
        h.arena = map_arena()?;
        h.next = 1; // span 0 holds the metadata
    }
    let i = h.next;
    h.next += 1;
    let s = (h.arena as *mut Span).wrapping_add(i);
    // SAFETY: the metadata span of a fresh arena is mapped and unused at
    // slot `i`; the span itself is `arena + i * SPAN`.
    unsafe {
        s.write(Span {
            base: h.arena.add(i * SPAN),
            class: 0,
            capacity: 0,
            live: 0,
            bump: 0,
            free: ptr::null_mut(),
            next: ptr::null_mut(),
            prev: ptr::null_mut(),
            listed: false,
            released: false,
            freed_at: 0,
        })
    };
    Some(s)
}

/// Maps an arena aligned to its size: twice the size, then the unaligned
/// ends unmapped.
fn map_arena() -> Option<*mut u8> {
    let p = os::map(2 * ARENA, true)?.as_ptr();
    let start = (p as usize + ARENA - 1) & !(ARENA - 1);
    let head = start - p as usize;
    // SAFETY: both ends are parts of the mapping just made, outside the
    // aligned arena, and unused.
    unsafe {
        if head > 0 {
            os::unmap(p, head);
        }
        let tail = ARENA - head;
        if tail > 0 {
            os::unmap((start + ARENA) as *mut u8, tail);
        }
    }
    MAPPED.fetch_add(ARENA, Ordering::Relaxed);
    Some(start as *mut u8)
}

/// Takes back a span whose objects have all come back, and gives the pages
/// of the oldest free spans back to the OS beyond [`DIRTY_LIMIT`].
///
/// # Safety
///
/// `s` is a live span that no class list holds, with no object in use.
pub(crate) unsafe fn free_span(s: *mut Span) {
    let now = os::coarse_ms();
    LOCK.lock();
    // SAFETY: `LOCK` is held; the span is the caller's to give.
    unsafe {
        let h = &mut *HEAP.0.get();
        (*s).freed_at = now;
        h.dirty.push_front(s);
        // Bounded: a span whose release the kernel refused comes back.
        let mut tries = h.dirty.len;
        while h.dirty.len * SPAN > DIRTY_LIMIT && tries > 0 {
            tries -= 1;
            let old = h.dirty.tail;
            release_span(h, old);
        }
    }
    LOCK.unlock();
}

/// Gives the pages of free spans idle since before `before` back to the
/// OS (all of them when `before` is `u64::MAX`). Returns the bytes given.
pub(crate) fn release_idle(before: u64) -> usize {
    let mut n = 0;
    LOCK.lock();
    // SAFETY: `LOCK` is held. The dirty list is ordered by the time the
    // spans were freed, the oldest last.
    unsafe {
        let h = &mut *HEAP.0.get();
        while !h.dirty.tail.is_null() && (*h.dirty.tail).freed_at < before {
            let old = h.dirty.tail;
            release_span(h, old);
            n += SPAN;
        }
    }
    LOCK.unlock();
    n
}

/// # Safety
///
/// The caller holds `LOCK`; `s` is on the dirty list of `h`, the heap.
unsafe fn release_span(h: &mut Heap, s: *mut Span) {
    // SAFETY: the caller's contract: a free span's contents are dead.
    unsafe {
        h.dirty.remove(s);
        let given = os::release((*s).base, SPAN);
        if given {
            (*s).released = true;
            h.clean.push_front(s);
            RELEASED.fetch_add(SPAN, Ordering::Relaxed);
            RELEASED_TOTAL.fetch_add(SPAN as u64, Ordering::Relaxed);
        } else {
            // Refused: it stays resident, at the head (the newest end) so
            // the loops above move on.
            (*s).freed_at = u64::MAX;
            h.dirty.push_front(s);
        }
    }
}

/// The fork handlers' view: the page heap's lock.
pub(crate) fn lock() -> &'static RawLock {
    &LOCK
}
