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

use crate::arch::ktl_symbol;
use core::sync::atomic::{AtomicU64, Ordering};

// The inside delay's iteration count. It is read by name from inside the
// critical sections (see `arch`), where no operand can carry it, so it is
// defined here in assembly, hidden, and declared to Rust below.
core::arch::global_asm!(
    concat!(
        ".section .data.",
        ktl_symbol!("delay_inside"),
        ",\"aw\",%progbits"
    ),
    ".p2align 3",
    concat!(".globl ", ktl_symbol!("delay_inside")),
    concat!(".hidden ", ktl_symbol!("delay_inside")),
    concat!(ktl_symbol!("delay_inside"), ":"),
    ".quad 0",
    ".text",
);

unsafe extern "C" {
    /// The inside delay's iteration count (defined above).
    #[link_name = ktl_symbol!("delay_inside")]
    safe static INSIDE: AtomicU64;
}

/// Sets the number of busy-loop iterations run inside each critical section,
/// right after its index check (0, the default, disables the delay).
pub fn set_inside(iterations: u64) {
    INSIDE.store(iterations, Ordering::Relaxed);
}

/// The current delay inside each critical section.
pub fn inside_iterations() -> u64 {
    INSIDE.load(Ordering::Relaxed)
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
