//! Idle rounds: what gives memory back while the program runs. A thread
//! that misses in its front end calls [`tick`]; once per
//! [`cpu::IDLE_MS`](crate::cpu::IDLE_MS) one such thread runs a round:
//! it drains the per-CPU caches that missed nothing since the last round,
//! moves the transfer caches of classes nobody fetched from or gave to
//! down to their spans, gives the pages of spans free for a whole interval
//! back to the OS, and unmaps the large mappings cached as long.
//! [`release`] does all of it at once, for every cache.

use crate::class::COUNT;
use crate::cpu::IDLE_MS;
use crate::lock::RawLock;
use crate::{central, front, large, os, pages};
use core::sync::atomic::{AtomicU64, Ordering};

static LOCK: RawLock = RawLock::new();
static NEXT: AtomicU64 = AtomicU64::new(0);
static ROUNDS: AtomicU64 = AtomicU64::new(0);

/// Runs an idle round if one is due and no other thread runs one.
#[inline]
pub(crate) fn tick() {
    let now = os::coarse_ms();
    if now < NEXT.load(Ordering::Relaxed) {
        return;
    }
    tick_slow(now);
}

#[cold]
fn tick_slow(now: u64) {
    if !LOCK.try_lock() {
        return;
    }
    let first = NEXT.load(Ordering::Relaxed) == 0;
    NEXT.store(now + IDLE_MS, Ordering::Relaxed);
    if !first {
        round(false, now.saturating_sub(IDLE_MS));
        ROUNDS.fetch_add(1, Ordering::Relaxed);
    }
    LOCK.unlock();
}

/// One round; `all` empties every cache instead of the idle ones, and
/// gives back every free span freed before `before`.
fn round(all: bool, before: u64) {
    if let Some(r) = front::regions() {
        r.drain_idle(all);
    }
    for c in 0..COUNT {
        if all || central::idle(c) {
            central::flush(c);
        }
    }
    pages::release_idle(before);
    large::release_idle(before);
}

/// Empties the per-CPU caches and the transfer caches, and gives the pages
/// of every free span and every cached large mapping back to the OS.
pub(crate) fn release() {
    LOCK.lock();
    round(true, u64::MAX);
    LOCK.unlock();
}

/// Idle rounds run so far.
pub(crate) fn rounds() -> u64 {
    ROUNDS.load(Ordering::Relaxed)
}

/// The fork handlers' view.
pub(crate) fn lock() -> &'static RawLock {
    &LOCK
}
