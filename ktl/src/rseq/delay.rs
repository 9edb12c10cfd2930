//! Delay injection for tests (cargo feature `delay-injection`).
//!
//! Two busy loops, as in the kernel's rseq stress test, widen the race
//! windows so that tests can make aborts happen on purpose:
//!
//! - *before* each critical section, between reading the index and entering
//!   the section: a preemption, migration or signal there makes the section
//!   find its index changed;
//! - *inside* each critical section, right after its index check: a
//!   preemption, migration or signal there aborts the section.
//!
//! Both are off (0 iterations) by default. Without the feature, neither loop
//! exists in the code at all.

#![forbid(unsafe_code)]

use crate::arch;
use core::sync::atomic::{AtomicU64, Ordering};

/// Sets the number of busy-loop iterations run inside each critical section,
/// right after its index check (0, the default, disables the delay).
pub fn set_inside(iterations: u64) {
    arch::set_delay_inside(iterations);
}

/// The current delay inside each critical section.
pub fn inside_iterations() -> u64 {
    arch::delay_inside()
}

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
