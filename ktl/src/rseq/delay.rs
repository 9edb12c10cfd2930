//! Delay injection for tests (cargo feature `delay-injection`).
//!
//! A busy loop just before each critical section widens the window in which
//! the thread can be preempted, migrated or signalled between reading its
//! index and entering the section, as the kernel's rseq stress test does. The
//! section then finds its index changed and aborts, so tests can make aborts
//! happen on purpose.

use core::sync::atomic::{AtomicU64, Ordering};

static BEFORE: AtomicU64 = AtomicU64::new(0);

/// Sets the number of busy-loop iterations run before each critical section
/// (0, the default, disables the delay).
pub fn set_before(iterations: u64) {
    BEFORE.store(iterations, Ordering::Relaxed);
}

/// The current delay before each critical section.
pub fn before_iterations() -> u64 {
    BEFORE.load(Ordering::Relaxed)
}

/// Runs the delay.
#[inline]
pub(crate) fn before() {
    let n = BEFORE.load(Ordering::Relaxed);
    for _ in 0..n {
        core::hint::spin_loop();
    }
}
