//! The back end: spans of pages from the OS, and what goes back to it.
//!
//! Address space comes in *arenas* of [`ARENA`] bytes, mapped with
//! `MAP_NORESERVE` and aligned to their size, so that the arena and the span
//! of any object are its address rounded down. An arena is cut into spans of
//! [`SPAN`] bytes; its first span holds the metadata of all of them (one
//! [`Span`] each).
//!
//! A size class is served by *runs* of 1, 2, 4, 8 or 16 consecutive spans
//! ([`class::run_spans`]: one for the classes to 64 KiB, more for the
//! medium classes). A run's first span's metadata describes the run, and
//! every span of it points at that first one, so the run of any object is
//! one lookup away. A run serves its class (see `central`) until its
//! objects have all come back, when it goes on the page heap's free list of
//! its length. A request takes a free run of its length, else splits a
//! longer one (the rest goes back on the lists, in power-of-two pieces),
//! else cuts a fresh one from the arena; runs are not merged again, and
//! arenas are address space, so that costs address space only. The pages of
//! a run that stays free for an idle interval, or of the oldest free runs
//! beyond [`DIRTY_LIMIT`], are given back with `MADV_DONTNEED`: the run
//! stays mapped and is reused first-hand later, its pages zero.
//!
//! Every field of a [`Span`] is read and written under a lock: the page
//! heap's while the run is free, its class's central lock while it serves
//! the class.

use crate::class;
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
/// Free runs' bytes kept resident before the oldest runs are given back.
pub(crate) const DIRTY_LIMIT: usize = 8 << 20;
/// Run lengths: `1 << order` spans for order `0..ORDERS`.
const ORDERS: usize = 5;

const _: () = {
    let mut c = 0;
    while c < class::COUNT {
        assert!(class::run_spans(c) < 1 << ORDERS);
        c += 1;
    }
};

/// One span's metadata, in its arena's first span. The fields past `head`
/// are meaningful on a run's first span only, where they describe the run.
#[repr(C)]
pub(crate) struct Span {
    /// The first span of the run this span is part of (itself, for a run's
    /// first span).
    head: *mut Span,
    /// The run's first byte.
    pub(crate) base: *mut u8,
    /// The run's length in spans (a power of two).
    spans: u32,
    /// The class served, while it serves one.
    pub(crate) class: u32,
    /// Objects of the class that fit in the run.
    pub(crate) capacity: u32,
    /// Objects handed out of the run and not returned to it.
    pub(crate) live: u32,
    /// Objects never handed out: `bump..capacity`.
    pub(crate) bump: u32,
    /// Returned objects, linked through their first word.
    pub(crate) free: *mut u8,
    /// Links in the list the run is on (a class's runs with room, or one
    /// of the page heap's free lists).
    pub(crate) next: *mut Span,
    pub(crate) prev: *mut Span,
    /// Whether the run is on its class's list of runs with room.
    pub(crate) listed: bool,
    /// Whether the run's pages were given back (or never touched) and not
    /// touched since.
    released: bool,
    /// When it became free (milliseconds of the coarse clock).
    freed_at: u64,
}

const _: () = assert!(core::mem::size_of::<Span>() * SPANS_PER_ARENA <= SPAN);

/// A doubly linked list of spans.
pub(crate) struct SpanList {
    pub(crate) head: *mut Span,
    pub(crate) tail: *mut Span,
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

/// The run that holds `p`, an address inside an arena: its first span's
/// metadata.
///
/// # Safety
///
/// `p` is inside a run that serves a class, and the caller holds that
/// class's lock.
#[inline]
pub(crate) unsafe fn run_of(p: *mut u8) -> *mut Span {
    let arena = (p as usize) & !(ARENA - 1);
    let i = ((p as usize) - arena) >> SPAN_SHIFT;
    let s = (arena as *mut Span).wrapping_add(i);
    // SAFETY: the caller's contract: the span is part of a live run, whose
    // `head` was written when the run was formed, under the page heap's
    // lock, before the class's lock handed the run out.
    unsafe { (*s).head }
}

/// The page heap: arenas, and the free runs by length.
struct Heap {
    /// The arena being cut, and its next never-used span.
    arena: *mut u8,
    next: usize,
    /// Free runs whose pages are resident, the most recently freed first,
    /// by order.
    dirty: [SpanList; ORDERS],
    /// Free runs whose pages were given back or never touched, by order.
    clean: [SpanList; ORDERS],
    /// Bytes of the dirty runs.
    dirty_bytes: usize,
}

struct HeapCell(UnsafeCell<Heap>);
// SAFETY: the heap is only reached with `LOCK` held.
unsafe impl Sync for HeapCell {}

static LOCK: RawLock = RawLock::new();
static HEAP: HeapCell = HeapCell(UnsafeCell::new(Heap {
    arena: ptr::null_mut(),
    next: SPANS_PER_ARENA,
    dirty: [const { SpanList::new() }; ORDERS],
    clean: [const { SpanList::new() }; ORDERS],
    dirty_bytes: 0,
}));

/// Bytes of arenas mapped.
static MAPPED: AtomicUsize = AtomicUsize::new(0);
/// Bytes of free runs not resident: given back with `MADV_DONTNEED`, or
/// never touched (the end of an arena too short for a run), and not
/// reused since.
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
    // SAFETY: `LOCK` is held while the heap is read.
    let dirty = LOCK.with(|| unsafe { (*HEAP.0.get()).dirty_bytes });
    HeapStats {
        mapped,
        free_resident: dirty,
        released,
        released_total: RELEASED_TOTAL.load(Ordering::Relaxed),
    }
}

/// The order of a run of `spans` spans (a power of two).
#[inline]
fn order(spans: usize) -> usize {
    spans.trailing_zeros() as usize
}

/// A free run for class `class`, of [`class::run_spans`] spans, or `None`
/// when the OS refuses memory. Its pages are zero if they were given back
/// or are fresh.
pub(crate) fn alloc_span(class: usize) -> Option<*mut Span> {
    let spans = class::run_spans(class);
    let now = os::coarse_ms();
    LOCK.lock();
    // SAFETY: `LOCK` is held.
    let s = unsafe { take_run(&mut *HEAP.0.get(), order(spans), now) };
    LOCK.unlock();
    let s = s?;
    // SAFETY: the run is free and no list or class holds it: the caller
    // owns it until it lists it under the class's lock.
    unsafe {
        (*s).class = class as u32;
        (*s).capacity = (spans * SPAN / class::size(class)) as u32;
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
unsafe fn take_run(h: &mut Heap, want: usize, now: u64) -> Option<*mut Span> {
    // Resident runs first: of the length asked for, then longer ones
    // split; then runs whose pages are not resident.
    for resident in [true, false] {
        for o in want..ORDERS {
            let list = if resident {
                &mut h.dirty[o]
            } else {
                &mut h.clean[o]
            };
            let s = list.head;
            if s.is_null() {
                continue;
            }
            // SAFETY: `s` heads a free list, under the lock.
            unsafe { list.remove(s) };
            let bytes = SPAN << o;
            if resident {
                h.dirty_bytes -= bytes;
            } else {
                RELEASED.fetch_sub(bytes, Ordering::Relaxed);
            }
            // SAFETY: `s` is a free run of order `o` that nobody holds.
            unsafe { split(h, s, o, want, resident, now) };
            // SAFETY: as above; the run is now `1 << want` spans long.
            unsafe { (*s).released = false };
            return Some(s);
        }
    }
    // SAFETY: the caller's contract.
    unsafe { carve(h, 1 << want) }
}

/// Cuts the free run `s` of order `from` down to order `to`, and puts the
/// rest back on the heap's lists (dirty ones when `resident`), in pieces
/// of orders `to..from`.
///
/// # Safety
///
/// The caller holds `LOCK`; `s` is a free run of order `from` on no list.
unsafe fn split(h: &mut Heap, s: *mut Span, from: usize, to: usize, resident: bool, now: u64) {
    for o in to..from {
        let piece = s.wrapping_add(1 << o);
        // SAFETY: the spans `1 << o .. 2 << o` of the run are in its arena
        // and free with it; their metadata was written when the run was
        // cut.
        unsafe {
            form(piece, (*s).base.add(SPAN << o), 1 << o);
            (*piece).freed_at = now;
            (*piece).released = !resident;
            if resident {
                h.dirty[o].push_front(piece);
                h.dirty_bytes += SPAN << o;
            } else {
                h.clean[o].push_front(piece);
                RELEASED.fetch_add(SPAN << o, Ordering::Relaxed);
            }
        }
    }
    if from != to {
        // SAFETY: as above.
        unsafe { (*s).spans = 1 << to };
    }
}

/// Makes the `spans` spans whose metadata starts at `s` (and whose bytes
/// at `base`) one run, with nothing in it.
///
/// # Safety
///
/// The caller holds `LOCK`; the spans are free, in one arena, and nobody
/// else holds them.
unsafe fn form(s: *mut Span, base: *mut u8, spans: usize) {
    for i in 0..spans {
        // SAFETY: the caller's contract; the metadata slots are in the
        // arena's first span (mapped, zero or written before).
        unsafe {
            s.add(i).write(Span {
                head: s,
                base: base.add(i * SPAN),
                spans: 1,
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
    }
    // SAFETY: as above.
    unsafe { (*s).spans = spans as u32 };
}

/// A run of `spans` spans never used, cut from the current arena or a new
/// one (the current arena's end, when too short, goes on the clean lists).
///
/// # Safety
///
/// The caller holds `LOCK`, and `h` is the heap.
unsafe fn carve(h: &mut Heap, spans: usize) -> Option<*mut Span> {
    if h.next + spans > SPANS_PER_ARENA {
        let arena = map_arena()?;
        // The old arena's end: pieces of decreasing powers of two.
        while h.next < SPANS_PER_ARENA {
            let left = SPANS_PER_ARENA - h.next;
            let n = 1usize << (usize::BITS - 1 - left.leading_zeros());
            let s = (h.arena as *mut Span).wrapping_add(h.next);
            // SAFETY: spans `next..next + n` of the old arena were never
            // used; their pages were never touched.
            unsafe {
                form(s, h.arena.add(h.next * SPAN), n);
                (*s).released = true;
                h.clean[order(n)].push_front(s);
            }
            RELEASED.fetch_add(n * SPAN, Ordering::Relaxed);
            h.next += n;
        }
        h.arena = arena;
        h.next = 1; // span 0 holds the metadata
    }
    let i = h.next;
    h.next += spans;
    let s = (h.arena as *mut Span).wrapping_add(i);
    // SAFETY: spans `i..i + spans` of the current arena were never used.
    unsafe { form(s, h.arena.add(i * SPAN), spans) };
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

/// Takes back a run whose objects have all come back, and gives the pages
/// of the oldest free runs back to the OS beyond [`DIRTY_LIMIT`].
///
/// # Safety
///
/// `s` is a live run (its first span) that no class list holds, with no
/// object in use.
pub(crate) unsafe fn free_span(s: *mut Span) {
    let now = os::coarse_ms();
    LOCK.lock();
    // SAFETY: `LOCK` is held; the run is the caller's to give.
    unsafe {
        let h = &mut *HEAP.0.get();
        let o = order((*s).spans as usize);
        (*s).freed_at = now;
        h.dirty[o].push_front(s);
        h.dirty_bytes += SPAN << o;
        // Bounded: a run whose release the kernel refused comes back.
        let mut tries: usize = h.dirty.iter().map(|l| l.len).sum();
        while h.dirty_bytes > DIRTY_LIMIT && tries > 0 {
            tries -= 1;
            // The oldest: the tail of one of the lists.
            let oldest = (0..ORDERS)
                .filter(|&o| !h.dirty[o].tail.is_null())
                .min_by_key(|&o| (*h.dirty[o].tail).freed_at);
            let Some(o) = oldest else { break };
            let old = h.dirty[o].tail;
            release_run(h, old, o);
        }
    }
    LOCK.unlock();
}

/// Gives the pages of free runs idle since before `before` back to the
/// OS (all of them when `before` is `u64::MAX`). Returns the bytes given.
pub(crate) fn release_idle(before: u64) -> usize {
    let mut n = 0;
    LOCK.lock();
    // SAFETY: `LOCK` is held. Each dirty list is ordered by the time the
    // runs were freed, the oldest last.
    unsafe {
        let h = &mut *HEAP.0.get();
        for o in 0..ORDERS {
            let mut tries = h.dirty[o].len;
            while tries > 0 && !h.dirty[o].tail.is_null() && (*h.dirty[o].tail).freed_at < before {
                tries -= 1;
                let old = h.dirty[o].tail;
                if release_run(h, old, o) {
                    n += SPAN << o;
                }
            }
        }
    }
    LOCK.unlock();
    n
}

/// Gives the pages of `s` back; whether the kernel took them.
///
/// # Safety
///
/// The caller holds `LOCK`; `s` is on the dirty list of order `o` of `h`,
/// the heap.
unsafe fn release_run(h: &mut Heap, s: *mut Span, o: usize) -> bool {
    let bytes = SPAN << o;
    // SAFETY: the caller's contract: a free run's contents are dead.
    unsafe {
        h.dirty[o].remove(s);
        h.dirty_bytes -= bytes;
        let given = os::release((*s).base, bytes);
        if given {
            (*s).released = true;
            h.clean[o].push_front(s);
            RELEASED.fetch_add(bytes, Ordering::Relaxed);
            RELEASED_TOTAL.fetch_add(bytes as u64, Ordering::Relaxed);
        } else {
            // Refused: it stays resident, at the head (the newest end) so
            // the loops above move on.
            (*s).freed_at = u64::MAX;
            h.dirty[o].push_front(s);
            h.dirty_bytes += bytes;
        }
        given
    }
}

/// The fork handlers' view: the page heap's lock.
pub(crate) fn lock() -> &'static RawLock {
    &LOCK
}
