//! The allocator's one home for system calls: anonymous mappings
//! (`mmap(2)`, `munmap(2)`, `mremap(2)`, `madvise(2)`), the futex of
//! [`RawLock`](crate::lock::RawLock) (`futex(2)`), the coarse clock, and
//! `pthread_atfork(3)`. None of them allocates.

use core::ptr::{self, NonNull};

/// The page size the allocator works with: 4 KiB on x86_64; on aarch64 the
/// kernel may use 4, 16 or 64 KiB pages, read once with `sysconf(3)`.
#[inline]
pub(crate) fn page_size() -> usize {
    use core::sync::atomic::{AtomicUsize, Ordering};
    static PAGE: AtomicUsize = AtomicUsize::new(0);
    let p = PAGE.load(Ordering::Relaxed);
    if p != 0 {
        return p;
    }
    // SAFETY: sysconf only reads a configuration value.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let p = usize::try_from(n)
        .ok()
        .filter(|n| n.is_power_of_two())
        .unwrap_or(4096);
    PAGE.store(p, Ordering::Relaxed);
    p
}

/// A new private anonymous read-write mapping of `len` bytes, or `None`
/// when the kernel refuses (`ENOMEM`, a limit, a filter). `reserve` maps
/// with `MAP_NORESERVE`: address space whose pages cost nothing until
/// touched, and no commit charge on overcommitting systems.
pub(crate) fn map(len: usize, reserve: bool) -> Option<NonNull<u8>> {
    let flags =
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | if reserve { libc::MAP_NORESERVE } else { 0 };
    // SAFETY: without MAP_FIXED and with a null hint the kernel picks an
    // address where nothing is mapped: the call touches no existing memory.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    NonNull::new(p.cast())
}

/// Unmaps `addr..addr + len`.
///
/// # Safety
///
/// The range must be (part of) mappings the allocator owns, page aligned,
/// and nothing may use that memory afterwards.
pub(crate) unsafe fn unmap(addr: *mut u8, len: usize) {
    // SAFETY: the caller's contract. A failure (only EINVAL for a bad
    // range, which the contract excludes) leaves the mapping in place: a
    // leak, never a use of freed memory.
    unsafe { libc::munmap(addr.cast(), len) };
}

/// Moves or resizes the mapping at `addr` (`old` bytes) to `new` bytes,
/// with `MREMAP_MAYMOVE`: the pages move with their page tables, nothing is
/// copied. `None` when the kernel refuses, the old mapping unchanged.
///
/// # Safety
///
/// `addr..addr + old` must be one whole mapping the allocator owns (page
/// aligned sizes); on success the old range must not be used any more.
pub(crate) unsafe fn remap(addr: *mut u8, old: usize, new: usize) -> Option<NonNull<u8>> {
    // SAFETY: the caller's contract; MREMAP_MAYMOVE without MREMAP_FIXED
    // never replaces another mapping.
    let p = unsafe { libc::mremap(addr.cast(), old, new, libc::MREMAP_MAYMOVE) };
    if p == libc::MAP_FAILED {
        return None;
    }
    NonNull::new(p.cast())
}

/// Gives the pages of `addr..addr + len` back to the OS
/// (`MADV_DONTNEED`): the range stays mapped and reads as zeros when next
/// touched, and the resident set shrinks at once. Returns whether the
/// kernel did it (a filter may refuse; the memory then stays resident).
///
/// # Safety
///
/// The range must be page aligned, inside mappings the allocator owns, and
/// hold nothing anyone still uses.
pub(crate) unsafe fn release(addr: *mut u8, len: usize) -> bool {
    // SAFETY: the caller's contract: the range's contents are dead.
    unsafe { libc::madvise(addr.cast(), len, libc::MADV_DONTNEED) == 0 }
}

/// Waits while `*word == expect` (`FUTEX_WAIT_PRIVATE`); returns on a wake,
/// a signal, or at once if the word differs.
pub(crate) fn futex_wait(word: &core::sync::atomic::AtomicU32, expect: u32) {
    // SAFETY: the futex word is a live, aligned u32 for the whole call; a
    // null timeout waits without limit.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expect,
            ptr::null::<libc::timespec>(),
        );
    }
}

/// Wakes one waiter of `word` (`FUTEX_WAKE_PRIVATE`).
pub(crate) fn futex_wake(word: &core::sync::atomic::AtomicU32) {
    // SAFETY: as for `futex_wait`; waking touches no memory.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            1,
        );
    }
}

/// Gives up the CPU (`sched_yield(2)`).
pub(crate) fn yield_now() {
    // SAFETY: no arguments, no memory.
    unsafe { libc::sched_yield() };
}

/// Milliseconds of `CLOCK_MONOTONIC_COARSE` (a vDSO read of the last tick,
/// a few nanoseconds): the clock of the idle checks, which need no more.
pub(crate) fn coarse_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live timespec for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}

/// Registers the fork handlers (`pthread_atfork(3)`): `prepare` in the
/// forking thread before the fork, `parent` and `child` after it in each
/// process. Returns whether the C library took them.
pub(crate) fn at_fork(
    prepare: unsafe extern "C" fn(),
    parent: unsafe extern "C" fn(),
    child: unsafe extern "C" fn(),
) -> bool {
    // SAFETY: the handlers are functions of this library, which stays
    // mapped for the life of the process (a global allocator is never
    // unloaded while it serves allocations).
    unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) == 0 }
}
