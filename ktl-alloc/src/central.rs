//! The middle tier: one central cache per size class, behind one lock per
//! class. The front ends (`cpu`, `thread`) take objects from it and give
//! them back in batches of [`class::batch`] objects.
//!
//! Each class has a *transfer cache*, an array of free objects that a batch
//! is copied in and out of (objects freed on one CPU and allocated on
//! another pass through it without touching their memory). It holds up to
//! 256 batches (512 KiB of objects at most), so that a program whose
//! working set of one class cycles through the central cache (build a
//! map of 10,000 entries, drop it, build the next) finds its objects there:
//! taking them off the spans' lists instead is a chain of dependent cache
//! misses, one per object. Its array is mapped on the class's first
//! overflow and its pages given back when an idle round empties it. Below
//! it are the
//! class's runs of spans with room (one span, or several for the medium
//! classes: [`class::run_spans`]): their returned objects on a list through
//! each object's first word, and the never-used rest carved on demand, so
//! pages are touched only when their objects are first handed out. A run
//! whose objects have all come back goes to the page heap (`pages`). The
//! medium classes have no front end: [`alloc_medium`] and [`free_medium`]
//! move their objects one at a time.
//!
//! Lock order: a class's lock, then the page heap's. Nothing here runs a
//! restartable sequence or allocates.

use crate::class::{self, COUNT};
use crate::lock::RawLock;
use crate::maint;
use crate::os;
use crate::pages::{self, Span, SpanList};
use core::cell::UnsafeCell;
use core::ptr;
use crossbeam_utils::CachePadded;

/// The transfer cache's room for class `c`: 256 batches, at most
/// 512 KiB worth, at least one batch.
const fn transfer_cap(c: usize) -> usize {
    let b = class::batch(c);
    let by_bytes = 512 * 1024 / class::SIZES[c] as usize;
    let n = if 256 * b < by_bytes {
        256 * b
    } else {
        by_bytes
    };
    if n < b { b } else { n }
}

/// The bytes of class `c`'s transfer array, whole pages.
fn transfer_bytes(c: usize) -> usize {
    let page = os::page_size();
    (transfer_cap(c) * size_of::<*mut u8>()).div_ceil(page) * page
}

struct Class {
    /// The transfer array: [`transfer_cap`] slots, mapped on first use;
    /// null before, and while the OS refuses the mapping.
    transfer: *mut *mut u8,
    len: usize,
    /// Spans with room: returned objects or a never-used tail.
    partial: SpanList,
    /// Objects handed out of the class's spans and not returned to them
    /// (in the transfer cache, in front-end caches, or in use).
    out: usize,
    /// Returned objects on the spans' lists.
    span_free: usize,
    /// Spans serving the class.
    spans: usize,
    /// Fetches and gives, and their count at the last idle round.
    traffic: u64,
    seen: u64,
}

struct Central {
    lock: RawLock,
    class: UnsafeCell<Class>,
}

// SAFETY: `class` is only reached with `lock` held.
unsafe impl Sync for Central {}

#[allow(clippy::declare_interior_mutable_const)] // each element is its own
const EMPTY: CachePadded<Central> = CachePadded::new(Central {
    lock: RawLock::new(),
    class: UnsafeCell::new(Class {
        transfer: ptr::null_mut(),
        len: 0,
        partial: SpanList::new(),
        out: 0,
        span_free: 0,
        spans: 0,
        traffic: 0,
        seen: 0,
    }),
});

static CENTRAL: [CachePadded<Central>; COUNT] = [EMPTY; COUNT];

/// Runs `f` on class `c`'s state with its lock held.
#[inline]
fn with<R>(c: usize, f: impl FnOnce(&mut Class) -> R) -> R {
    let central = &CENTRAL[c];
    central.lock.lock();
    // SAFETY: the lock is held, so this is the only reference.
    let r = f(unsafe { &mut *central.class.get() });
    central.lock.unlock();
    r
}

/// An object of a medium class (no front end caches those), one at a time;
/// null when the OS refuses memory.
pub(crate) fn alloc_medium(c: usize) -> *mut u8 {
    maint::tick();
    let mut one = [ptr::null_mut()];
    fetch(c, &mut one);
    one[0]
}

/// Frees an object of a medium class.
///
/// # Safety
///
/// `p` is an object of class `c` from this allocator, freed once.
pub(crate) unsafe fn free_medium(c: usize, p: *mut u8) {
    // SAFETY: the caller's contract.
    unsafe { give(c, &[p]) };
    maint::tick();
}

/// Fills `out` with free objects of class `c` (fewer when the OS refuses
/// memory); returns how many.
pub(crate) fn fetch(c: usize, out: &mut [*mut u8]) -> usize {
    with(c, |k| {
        k.traffic += 1;
        let want = out.len();
        let from_transfer = want.min(k.len);
        let start = k.len - from_transfer;
        // SAFETY: `len > 0` only once the array is mapped, and its slots
        // `..len` hold objects; `out` is the caller's, not in the array.
        unsafe { ptr::copy_nonoverlapping(k.transfer.add(start), out.as_mut_ptr(), from_transfer) };
        k.len = start;
        let mut got = from_transfer;
        while got < want {
            let n = from_spans(c, k, &mut out[got..]);
            if n == 0 {
                break;
            }
            got += n;
        }
        got
    })
}

/// Takes objects from the class's spans, mapping a new span when none has
/// room; 0 when the OS refuses.
fn from_spans(c: usize, k: &mut Class, out: &mut [*mut u8]) -> usize {
    let size = class::size(c);
    let mut s = k.partial.head;
    if s.is_null() {
        let Some(fresh) = pages::alloc_span(c) else {
            return 0;
        };
        s = fresh;
        k.spans += class::run_spans(c);
        // SAFETY: the new span is on no list; the class lock is held.
        unsafe {
            k.partial.push_front(s);
            (*s).listed = true;
        }
    }
    let mut got = 0;
    // SAFETY: `s` serves class `c` and is on its list; the class lock is
    // held. Objects on its free list are returned objects of the span,
    // whose first word links them; `bump..capacity` are never-used objects
    // inside the span.
    unsafe {
        while got < out.len() && !(*s).free.is_null() {
            let p = (*s).free;
            (*s).free = p.cast::<*mut u8>().read();
            out[got] = p;
            got += 1;
        }
        k.span_free -= got;
        while got < out.len() && (*s).bump < (*s).capacity {
            out[got] = (*s).base.add((*s).bump as usize * size);
            (*s).bump += 1;
            got += 1;
        }
        (*s).live += got as u32;
        if (*s).free.is_null() && (*s).bump == (*s).capacity {
            k.partial.remove(s);
            (*s).listed = false;
        }
    }
    k.out += got;
    got
}

/// Takes back free objects of class `c`.
///
/// # Safety
///
/// Every object is a free object of class `c` that this allocator handed
/// out, given back once.
pub(crate) unsafe fn give(c: usize, objs: &[*mut u8]) {
    with(c, |k| {
        k.traffic += 1;
        if k.transfer.is_null() {
            // The class's first overflow: map its array. When the OS
            // refuses, the objects go to their spans, and the next give
            // tries again.
            if let Some(a) = os::map(transfer_bytes(c), true) {
                k.transfer = a.as_ptr().cast();
            }
        }
        if !k.transfer.is_null() && k.len + objs.len() <= transfer_cap(c) {
            // SAFETY: the array has `transfer_cap(c)` slots and
            // `len + objs.len()` fit; `objs` is the caller's, not in it.
            unsafe { ptr::copy_nonoverlapping(objs.as_ptr(), k.transfer.add(k.len), objs.len()) };
            k.len += objs.len();
            return;
        }
        for &p in objs {
            // SAFETY: the caller's contract: `p` is a free object of the
            // class, so it is inside one of the class's spans.
            unsafe { to_span(c, k, p) };
        }
    })
}

/// Returns one object to its span.
///
/// # Safety
///
/// `p` is a free object of class `c`; the class lock is held (`k`).
unsafe fn to_span(c: usize, k: &mut Class, p: *mut u8) {
    // SAFETY: `p` lies in a run of the class; the class lock is held.
    let s: *mut Span = unsafe { pages::run_of(p) };
    // SAFETY: `s` is the metadata of that run; the class lock guards it.
    // The object is free, so its first word may hold the link.
    unsafe {
        p.cast::<*mut u8>().write((*s).free);
        (*s).free = p;
        (*s).live -= 1;
        k.out -= 1;
        k.span_free += 1;
        if (*s).live == 0 {
            if (*s).listed {
                k.partial.remove(s);
            }
            // Its returned objects are dropped with it.
            let mut n = 0usize;
            let mut q = (*s).free;
            while !q.is_null() {
                n += 1;
                q = q.cast::<*mut u8>().read();
            }
            k.span_free -= n;
            k.spans -= class::run_spans(c);
            pages::free_span(s);
        } else if !(*s).listed {
            k.partial.push_front(s);
            (*s).listed = true;
        }
    }
}

/// Moves class `c`'s transfer cache down to its spans, so that spans whose
/// objects were all cached there go back to the page heap.
pub(crate) fn flush(c: usize) {
    with(c, |k| {
        if k.len == 0 {
            return;
        }
        while k.len > 0 {
            k.len -= 1;
            // SAFETY: slots `..len` of the mapped array hold free objects
            // of the class.
            unsafe { to_span(c, k, k.transfer.add(k.len).read()) };
        }
        // SAFETY: the array is the class's own mapping, page aligned and
        // whole pages long, and holds nothing now (`len == 0`): its pages
        // may read back as zero.
        unsafe { os::release(k.transfer.cast(), transfer_bytes(c)) };
    })
}

/// Whether class `c` had no fetch or give since the last call.
pub(crate) fn idle(c: usize) -> bool {
    with(c, |k| {
        let idle = k.traffic == k.seen;
        k.seen = k.traffic;
        idle && k.len > 0
    })
}

/// Class `c`'s counts: objects out of its spans, in its transfer cache, on
/// its spans' lists, and its spans.
pub(crate) fn counts(c: usize) -> (usize, usize, usize, usize) {
    with(c, |k| (k.out, k.len, k.span_free, k.spans))
}

/// The fork handlers' view: every class's lock, in order.
pub(crate) fn locks() -> impl Iterator<Item = &'static RawLock> {
    CENTRAL.iter().map(|c| &c.lock)
}
