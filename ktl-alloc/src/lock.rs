//! [`RawLock`]: the allocator's lock, a futex mutex that never allocates,
//! can be built in a `static`, and can be released by the fork handlers
//! without a guard.
#![forbid(unsafe_code)]

use crate::os;
use core::sync::atomic::{AtomicU32, Ordering};

/// Unlocked.
const FREE: u32 = 0;
/// Locked, nobody waiting.
const HELD: u32 = 1;
/// Locked, and a thread may be sleeping on the futex.
const CONTENDED: u32 = 2;

/// A mutex in one word: 0 free, 1 held, 2 held with waiters (the classic
/// three-state futex lock). A short spin before sleeping, since the
/// allocator holds its locks for a few hundred nanoseconds at most.
pub(crate) struct RawLock {
    state: AtomicU32,
}

impl RawLock {
    /// A free lock.
    pub(crate) const fn new() -> Self {
        RawLock {
            state: AtomicU32::new(FREE),
        }
    }

    /// Takes the lock, waiting as long as it takes.
    #[inline]
    pub(crate) fn lock(&self) {
        if self
            .state
            .compare_exchange(FREE, HELD, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_slow();
        }
    }

    #[cold]
    fn lock_slow(&self) {
        for i in 0..100 {
            let s = self.state.load(Ordering::Relaxed);
            if s == FREE
                && self
                    .state
                    .compare_exchange(FREE, HELD, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return;
            }
            if s == CONTENDED {
                break;
            }
            if i < 90 {
                core::hint::spin_loop();
            } else {
                os::yield_now();
            }
        }
        while self.state.swap(CONTENDED, Ordering::Acquire) != FREE {
            os::futex_wait(&self.state, CONTENDED);
        }
    }

    /// Takes the lock if it is free.
    #[inline]
    pub(crate) fn try_lock(&self) -> bool {
        self.state
            .compare_exchange(FREE, HELD, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Releases the lock, which the caller holds (or held when it forked:
    /// the fork handlers release in the child what the parent's forking
    /// thread took).
    #[inline]
    pub(crate) fn unlock(&self) {
        if self.state.swap(FREE, Ordering::Release) == CONTENDED {
            os::futex_wake(&self.state);
        }
    }

    /// Runs `f` with the lock held.
    #[inline]
    pub(crate) fn with<R>(&self, f: impl FnOnce() -> R) -> R {
        self.lock();
        let r = f();
        self.unlock();
        r
    }
}
