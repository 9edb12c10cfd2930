//! The front end of threads that cannot run restartable sequences: a
//! per-thread cache of free objects per class, flushed to the central cache
//! when the thread exits.
//!
//! It serves every thread when rseq is unavailable (no system call, a
//! seccomp filter, valgrind, qemu-user), and single threads whose
//! registration failed or whose area was released. Its caches hold up to
//! two batches per class, so it misses (and locks a central class) about
//! once per batch of operations, like the per-CPU front end.
//!
//! The cache is attached on a thread's first such allocation, and arming
//! its exit hook may itself allocate (the C library or std record the
//! destructor): allocations of a thread while its cache is being attached,
//! or after it was flushed at exit, go straight to the central cache, one
//! object at a time.

use crate::central;
use crate::class::{self, FRONT};
use crate::lock::RawLock;
use crate::os;
use core::cell::{Cell, UnsafeCell};
use core::ptr;
use core::sync::atomic::{AtomicU32, Ordering};

/// The most objects a thread caches per class.
const SLOTS: usize = 128;

/// Objects of class `c` a thread's cache holds at most: two batches.
const fn cap(c: usize) -> usize {
    2 * class::batch(c)
}

const _: () = assert!(cap(0) <= SLOTS);

/// One thread's cache: `items[c][..len[c]]`.
struct Cache {
    len: [AtomicU32; FRONT],
    items: [[*mut u8; SLOTS]; FRONT],
    /// The next block on the pool's list (live or spare).
    next: *mut Cache,
    /// Whether a thread uses the block.
    live: bool,
}

/// The blocks: every one ever made, on one list (a thread's exit returns
/// its block for the next thread).
struct Pool {
    all: *mut Cache,
}

struct PoolCell(UnsafeCell<Pool>);
// SAFETY: reached only with `POOL_LOCK` held.
unsafe impl Sync for PoolCell {}

static POOL_LOCK: RawLock = RawLock::new();
static POOL: PoolCell = PoolCell(UnsafeCell::new(Pool {
    all: ptr::null_mut(),
}));

/// The thread's state.
const NONE: u8 = 0;
const ATTACHING: u8 = 1;
const ATTACHED: u8 = 2;
const GONE: u8 = 3;

thread_local! {
    static STATE: Cell<u8> = const { Cell::new(NONE) };
    static CACHE: Cell<*mut Cache> = const { Cell::new(ptr::null_mut()) };
    static EXIT: ExitHook = const { ExitHook };
}

/// Flushes the thread's cache when the thread exits.
struct ExitHook;

impl Drop for ExitHook {
    fn drop(&mut self) {
        let _ = STATE.try_with(|s| s.set(GONE));
        let Ok(cache) = CACHE.try_with(|c| c.replace(ptr::null_mut())) else {
            return;
        };
        if !cache.is_null() {
            // SAFETY: the block was this thread's, and is no more.
            unsafe { detach(cache) };
        }
    }
}

/// The calling thread's cache, attached now if it has none; null while it
/// is being attached, after the thread's exit hook ran, or when no block
/// can be mapped.
fn cache() -> *mut Cache {
    let state = STATE.try_with(|s| s.get()).unwrap_or(GONE);
    if state == ATTACHED {
        return CACHE.try_with(|c| c.get()).unwrap_or(ptr::null_mut());
    }
    if state != NONE {
        return ptr::null_mut();
    }
    attach()
}

#[cold]
fn attach() -> *mut Cache {
    if STATE.try_with(|s| s.set(ATTACHING)).is_err() {
        return ptr::null_mut();
    }
    let block = take_block();
    if block.is_null() {
        let _ = STATE.try_with(|s| s.set(NONE));
        return ptr::null_mut();
    }
    let _ = CACHE.try_with(|c| c.set(block));
    // Arms the exit hook; this may allocate, which `ATTACHING` sends to
    // the central cache.
    if EXIT.try_with(|_| ()).is_err() {
        let _ = CACHE.try_with(|c| c.set(ptr::null_mut()));
        // SAFETY: the block is this thread's and unused.
        unsafe { detach(block) };
        let _ = STATE.try_with(|s| s.set(GONE));
        return ptr::null_mut();
    }
    let _ = STATE.try_with(|s| s.set(ATTACHED));
    block
}

/// A spare block, or a new one.
fn take_block() -> *mut Cache {
    POOL_LOCK.lock();
    // SAFETY: `POOL_LOCK` is held; every block on the list is a live
    // mapping of a Cache.
    let spare = unsafe {
        let mut b = (*POOL.0.get()).all;
        while !b.is_null() && (*b).live {
            b = (*b).next;
        }
        if !b.is_null() {
            (*b).live = true;
        }
        b
    };
    POOL_LOCK.unlock();
    if !spare.is_null() {
        return spare;
    }
    let size = core::mem::size_of::<Cache>();
    let Some(p) = os::map(size, false) else {
        return ptr::null_mut();
    };
    let b = p.as_ptr().cast::<Cache>();
    // SAFETY: a fresh zeroed mapping is a valid empty Cache (zero lengths,
    // null items); `live` and `next` are set before it is listed.
    unsafe {
        (*b).live = true;
        POOL_LOCK.lock();
        (*b).next = (*POOL.0.get()).all;
        (*POOL.0.get()).all = b;
        POOL_LOCK.unlock();
    }
    b
}

/// Flushes a block's objects to the central cache and makes it spare.
///
/// # Safety
///
/// `b` is a live block no thread uses any more.
unsafe fn detach(b: *mut Cache) {
    for c in 0..FRONT {
        // SAFETY: the caller's contract: the block is ours alone.
        unsafe {
            let n = (*b).len[c].swap(0, Ordering::Relaxed) as usize;
            if n > 0 {
                let items = &(*b).items[c];
                central::give(c, &items[..n]);
            }
        }
    }
    POOL_LOCK.lock();
    // SAFETY: `POOL_LOCK` guards `live` of listed blocks.
    unsafe { (*b).live = false };
    POOL_LOCK.unlock();
}

/// An object of class `c` (null when the OS refuses memory).
pub(crate) fn alloc(c: usize) -> *mut u8 {
    let b = cache();
    if b.is_null() {
        let mut one = [ptr::null_mut()];
        central::fetch(c, &mut one);
        return one[0];
    }
    // SAFETY: `b` is the calling thread's own block; other threads only
    // read its lengths (statistics).
    unsafe {
        let n = (*b).len[c].load(Ordering::Relaxed) as usize;
        if n > 0 {
            (*b).len[c].store(n as u32 - 1, Ordering::Relaxed);
            return (*b).items[c][n - 1];
        }
        let want = class::batch(c);
        let items = &mut (*b).items[c];
        let got = central::fetch(c, &mut items[..want]);
        if got == 0 {
            return ptr::null_mut();
        }
        (*b).len[c].store(got as u32 - 1, Ordering::Relaxed);
        (*b).items[c][got - 1]
    }
}

/// Frees an object of class `c`.
///
/// # Safety
///
/// `p` is an object of class `c` that this allocator handed out, freed
/// once.
pub(crate) unsafe fn free(c: usize, p: *mut u8) {
    let b = cache();
    if b.is_null() {
        // SAFETY: the caller's contract.
        unsafe { central::give(c, &[p]) };
        return;
    }
    // SAFETY: as in `alloc`.
    unsafe {
        let mut n = (*b).len[c].load(Ordering::Relaxed) as usize;
        if n == cap(c) {
            let half = class::batch(c);
            let items = &(*b).items[c];
            central::give(c, &items[n - half..n]);
            n -= half;
        }
        (*b).items[c][n] = p;
        (*b).len[c].store(n as u32 + 1, Ordering::Relaxed);
    }
}

/// Objects of each class in the threads' caches, and the caches in use.
pub(crate) fn cached() -> ([usize; FRONT], usize) {
    POOL_LOCK.with(|| {
        let (mut n, mut live) = ([0; FRONT], 0);
        // SAFETY: `POOL_LOCK` is held; listed blocks stay mapped.
        unsafe {
            let mut b = (*POOL.0.get()).all;
            while !b.is_null() {
                if (*b).live {
                    for (c, n) in n.iter_mut().enumerate() {
                        *n += (*b).len[c].load(Ordering::Relaxed) as usize;
                    }
                    live += 1;
                }
                b = (*b).next;
            }
        }
        (n, live)
    })
}

/// The fork handlers' view.
pub(crate) fn lock() -> &'static RawLock {
    &POOL_LOCK
}
