//! The fallback of the operations: a lock per index value.
//!
//! When no thread of the process can have an rseq area (the owner is
//! [`Unavailable`](crate::Owner::Unavailable)), [`start`](super::start)
//! returns a fallback [`Start`](super::Start) and every operation runs here:
//! it takes the lock of its index value, does the same work with atomic
//! accesses, and releases the lock. Operations on one index value are then
//! mutually exclusive, which is the guarantee the critical sections give;
//! they never abort.
//!
//! The fallback is process-wide, decided with the owner: mixing it with
//! critical sections on the same data would not be sound, since a section
//! does not take the lock. A thread without an area in a process whose
//! owner is live gets `None` from `start` instead.
//!
//! Each operation blocks signals while it holds the lock, so a signal
//! handler may run operations too: it cannot interrupt the thread while the
//! thread holds a lock the handler would wait for.

use super::{Commit, Failure};
use core::sync::atomic::{AtomicBool, AtomicI64, AtomicPtr, Ordering};
use std::sync::OnceLock;

/// One lock on its own cache line pair, so neighbouring indexes do not share.
#[repr(align(128))]
struct Lock(AtomicBool);

/// The locks, one per possible CPU (4096 when the count is unknown); index
/// values beyond wrap around, which only costs some extra contention.
fn locks() -> &'static [Lock] {
    static LOCKS: OnceLock<Box<[Lock]>> = OnceLock::new();
    LOCKS.get_or_init(|| {
        let n = crate::cpu::possible_cpus().map_or(4096, |n| n.max(1) as usize);
        (0..n).map(|_| Lock(AtomicBool::new(false))).collect()
    })
}

/// Holds the lock of one index value, with signals blocked, until dropped.
struct Guard {
    lock: &'static AtomicBool,
    old_mask: libc::sigset_t,
}

impl Guard {
    fn acquire(value: u32) -> Guard {
        let locks = locks();
        let lock = &locks[value as usize % locks.len()].0;
        // SAFETY: sigset_t is plain data; sigfillset initializes it, and
        // pthread_sigmask only reads `all` and writes `old_mask`.
        let old_mask = unsafe {
            let mut all: libc::sigset_t = core::mem::zeroed();
            let mut old: libc::sigset_t = core::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
            old
        };
        let mut spins = 0u32;
        while lock
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            spins += 1;
            if spins.is_multiple_of(64) {
                std::thread::yield_now();
            } else {
                core::hint::spin_loop();
            }
        }
        Guard { lock, old_mask }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.lock.store(false, Ordering::Release);
        // SAFETY: restores the mask saved in `acquire`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old_mask, core::ptr::null_mut()) };
    }
}

/// An atomic view of a word the caller's contract makes valid and aligned.
///
/// # Safety
/// `p` must be valid for reads and writes of an `i64`, 8-byte aligned, and
/// accessed concurrently only atomically (the operations' contract).
unsafe fn word<'a>(p: *mut i64) -> &'a AtomicI64 {
    // SAFETY: forwarded to the caller's contract.
    unsafe { AtomicI64::from_ptr(p) }
}

/// [`super::add`] under the lock.
///
/// # Safety
/// The contract of [`super::add`].
pub(super) unsafe fn add(value: u32, v: *mut i64, count: i64) -> Result<(), Failure> {
    let _g = Guard::acquire(value);
    // SAFETY: the operation's contract.
    let w = unsafe { word(v) };
    w.store(
        w.load(Ordering::Relaxed).wrapping_add(count),
        Ordering::Relaxed,
    );
    Ok(())
}

/// [`super::cmpeqv_storev`] under the lock.
///
/// # Safety
/// The contract of [`super::cmpeqv_storev`].
pub(super) unsafe fn cmpeqv_storev(
    value: u32,
    v: *mut i64,
    expect: i64,
    newv: i64,
) -> Result<(), Failure> {
    let _g = Guard::acquire(value);
    // SAFETY: the operation's contract.
    let w = unsafe { word(v) };
    if w.load(Ordering::Relaxed) != expect {
        return Err(Failure::CompareFailed);
    }
    w.store(newv, Ordering::Relaxed);
    Ok(())
}

/// [`super::cmpnev_storeoffp_load`] under the lock.
///
/// # Safety
/// The contract of [`super::cmpnev_storeoffp_load`].
pub(super) unsafe fn cmpnev_storeoffp_load(
    value: u32,
    head: *mut *mut u8,
    expectnot: *mut u8,
    next_offset: isize,
) -> Result<*mut u8, Failure> {
    let _g = Guard::acquire(value);
    // SAFETY: the operation's contract: `head` is a valid, aligned pointer
    // slot, and a node on the list is valid for a pointer read at
    // `next_offset`.
    unsafe {
        let h = AtomicPtr::from_ptr(head);
        let node = h.load(Ordering::Relaxed);
        if node == expectnot {
            return Err(Failure::CompareFailed);
        }
        let next =
            AtomicPtr::from_ptr(node.offset(next_offset).cast::<*mut u8>()).load(Ordering::Relaxed);
        h.store(next, Ordering::Relaxed);
        Ok(node)
    }
}

/// [`super::offset_deref_addv`] under the lock.
///
/// # Safety
/// The contract of [`super::offset_deref_addv`].
pub(super) unsafe fn offset_deref_addv(
    value: u32,
    ptr: *mut *mut u8,
    offset: isize,
    inc: i64,
) -> Result<(), Failure> {
    let _g = Guard::acquire(value);
    // SAFETY: the operation's contract.
    unsafe {
        let base = AtomicPtr::from_ptr(ptr).load(Ordering::Relaxed);
        let w = word(base.offset(offset).cast::<i64>());
        w.store(
            w.load(Ordering::Relaxed).wrapping_add(inc),
            Ordering::Relaxed,
        );
    }
    Ok(())
}

/// [`super::cmpeqv_cmpeqv_storev`] under the lock.
///
/// # Safety
/// The contract of [`super::cmpeqv_cmpeqv_storev`].
pub(super) unsafe fn cmpeqv_cmpeqv_storev(
    value: u32,
    v: *mut i64,
    expect: i64,
    v2: *const i64,
    expect2: i64,
    newv: i64,
) -> Result<(), Failure> {
    let _g = Guard::acquire(value);
    // SAFETY: the operation's contract.
    unsafe {
        let w = word(v);
        if w.load(Ordering::Relaxed) != expect
            || word(v2.cast_mut()).load(Ordering::Relaxed) != expect2
        {
            return Err(Failure::CompareFailed);
        }
        w.store(newv, Ordering::Relaxed);
    }
    Ok(())
}

fn order(commit: Commit) -> Ordering {
    match commit {
        Commit::Relaxed => Ordering::Relaxed,
        Commit::Release => Ordering::Release,
    }
}

/// [`super::cmpeqv_trystorev_storev`] under the lock.
///
/// # Safety
/// The contract of [`super::cmpeqv_trystorev_storev`].
pub(super) unsafe fn cmpeqv_trystorev_storev(
    value: u32,
    v: *mut i64,
    expect: i64,
    v2: *mut i64,
    newv2: i64,
    newv: i64,
    commit: Commit,
) -> Result<(), Failure> {
    let _g = Guard::acquire(value);
    // SAFETY: the operation's contract.
    unsafe {
        let w = word(v);
        if w.load(Ordering::Relaxed) != expect {
            return Err(Failure::CompareFailed);
        }
        word(v2).store(newv2, Ordering::Relaxed);
        w.store(newv, order(commit));
    }
    Ok(())
}

/// [`super::cmpeqv_trymemcpy_storev`] under the lock.
///
/// # Safety
/// The contract of [`super::cmpeqv_trymemcpy_storev`].
pub(super) unsafe fn cmpeqv_trymemcpy_storev(
    value: u32,
    v: *mut i64,
    expect: i64,
    dst: *mut u8,
    src: &[u8],
    newv: i64,
    commit: Commit,
) -> Result<(), Failure> {
    let _g = Guard::acquire(value);
    // SAFETY: the operation's contract: `dst` is valid for `src.len()` bytes
    // of writes that nothing else accesses until the commit publishes them.
    unsafe {
        let w = word(v);
        if w.load(Ordering::Relaxed) != expect {
            return Err(Failure::CompareFailed);
        }
        core::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len());
        w.store(newv, order(commit));
    }
    Ok(())
}
