//! The thread crews of the multi-thread rows.
//!
//! A row of N threads runs the loop in N threads at once: the benchmarking
//! thread and N - 1 helper threads that the row spawns once and drives
//! sample by sample (a [`Crew`]). The helpers block between samples; at the
//! start of a sample the threads meet in a short spin, the benchmarking
//! thread reads the clock and releases the helpers, all run the sample's
//! iteration count, and the clock is read again once all have finished.

use crate::harness::{OpCount, Row, Shape, TimedLoop, counted, counts_match, verified};
use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The work of one thread in a sample of a multi-thread row: runs `iters`
/// iterations of the row's loop in `shape` (untimed; the sample's clock is
/// read around all the threads).
pub(crate) type Work = Arc<dyn Fn(u64, Shape) + Send + Sync>;

/// Where the threads of a multi-thread row meet. `ready` and `done` count
/// the helpers that reached the step, summed over the samples (after sample
/// `n` of a crew of `k` helpers, both are `n * k`); `go` holds the number of
/// the last sample whose clock runs.
#[derive(Default)]
struct Rendezvous {
    /// Helpers that have the sample's orders and wait for `go`.
    ready: AtomicU64,
    /// The clock is running: start.
    go: AtomicU64,
    /// Helpers that have finished the sample's loop.
    done: AtomicU64,
}

/// Spins (yielding now and then) until `cond`, or until `give_up` says the
/// other thread is gone; returns whether `cond` was met.
fn spin_until(cond: impl Fn() -> bool, give_up: impl Fn() -> bool) -> bool {
    let mut spins = 0u32;
    while !cond() {
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(1024) {
            if give_up() {
                return cond();
            }
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
    true
}

/// The helper threads of a multi-thread row: spawned once, blocked between
/// samples, and run alongside the benchmarking thread in every sample. A
/// crew of 0 helpers times the benchmarking thread alone.
struct Crew {
    /// The orders of each sample, one channel per helper: iterations, shape
    /// and sample number. Dropping the senders stops the threads.
    orders: Vec<mpsc::Sender<(u64, Shape, u64)>>,
    meet: Arc<Rendezvous>,
    threads: Vec<JoinHandle<()>>,
    /// The number of the last sample.
    sample: Cell<u64>,
    /// Set when a helper was gone during a sample.
    lost: Rc<Cell<bool>>,
}

impl Crew {
    /// Spawns `helpers` threads, each of which runs `setup` first; the error
    /// says why a thread could not start or `setup` failed (the threads
    /// already started are then stopped).
    fn spawn(
        helpers: usize,
        work: &Work,
        setup: fn() -> Result<(), String>,
    ) -> Result<Crew, String> {
        let mut crew = Crew {
            orders: Vec::with_capacity(helpers),
            meet: Arc::new(Rendezvous::default()),
            threads: Vec::with_capacity(helpers),
            sample: Cell::new(0),
            lost: Rc::new(Cell::new(false)),
        };
        for _ in 0..helpers {
            let (orders, inbox) = mpsc::channel::<(u64, Shape, u64)>();
            let (setup_tx, setup_rx) = mpsc::channel();
            let m = Arc::clone(&crew.meet);
            let work = Arc::clone(work);
            let thread = std::thread::Builder::new()
                .name("ktl-bench-helper".to_owned())
                .spawn(move || {
                    let ready = setup();
                    let ok = ready.is_ok();
                    let _ = setup_tx.send(ready);
                    if !ok {
                        return;
                    }
                    while let Ok((iters, shape, n)) = inbox.recv() {
                        m.ready.fetch_add(1, Ordering::AcqRel);
                        spin_until(|| m.go.load(Ordering::Acquire) == n, || false);
                        work(iters, shape);
                        m.done.fetch_add(1, Ordering::AcqRel);
                    }
                })
                .map_err(|e| format!("cannot start a helper thread: {e}"))?;
            crew.orders.push(orders);
            crew.threads.push(thread);
            match setup_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => return Err(reason),
                Err(_) => return Err("a helper thread stopped while starting".to_owned()),
            }
        }
        Ok(crew)
    }

    /// One sample: every thread runs `work(iters, shape)`. Returns the wall
    /// time from the release of the helpers until all have finished.
    fn sample(&self, work: &Work, iters: u64, shape: Shape) -> Duration {
        let n = self.sample.get() + 1;
        self.sample.set(n);
        let arrivals = n.saturating_mul(self.orders.len() as u64);
        let gone = || self.threads.iter().any(JoinHandle::is_finished);
        let sent = self
            .orders
            .iter()
            .all(|o| o.send((iters, shape, n)).is_ok());
        if !sent || !spin_until(|| self.meet.ready.load(Ordering::Acquire) >= arrivals, gone) {
            self.lost.set(true);
            return Duration::ZERO;
        }
        let start = Instant::now();
        self.meet.go.store(n, Ordering::Release);
        work(iters, shape);
        let finished = spin_until(|| self.meet.done.load(Ordering::Acquire) >= arrivals, gone);
        let elapsed = start.elapsed();
        if !finished {
            self.lost.set(true);
        }
        elapsed
    }
}

impl Drop for Crew {
    fn drop(&mut self) {
        self.orders.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A row of `threads` threads (the benchmarking thread and `threads - 1`
/// helpers) that each run `work` in every sample, with `check` run after
/// the samples (see [`verified`]).
pub(crate) fn crew_row(
    name: &str,
    group: &str,
    threads: u32,
    work: Work,
    setup: fn() -> Result<(), String>,
    check: impl FnOnce(u64) -> Result<String, String> + 'static,
) -> Row {
    let helpers = threads.max(1) as usize - 1;
    match Crew::spawn(helpers, &work, setup) {
        Ok(crew) => {
            let count = OpCount::default();
            let lost = Rc::clone(&crew.lost);
            let run: TimedLoop = Box::new(move |iters, shape| crew.sample(&work, iters, shape));
            let mut row = Row::timed(
                name,
                group,
                counted(run, u64::from(threads.max(1)), Rc::clone(&count)),
                Some(verified(name, count, Some(lost), check)),
            );
            row.threads = threads.max(1);
            row
        }
        Err(reason) => {
            let mut row = Row::unavailable(name, group, reason);
            row.threads = threads.max(1);
            row
        }
    }
}

/// A 2-thread counting row: `work` in this thread and in a helper thread,
/// checked against `total` after the samples.
pub(crate) fn two_thread_row(
    name: &str,
    group: &str,
    work: Work,
    setup: fn() -> Result<(), String>,
    total: impl FnOnce() -> i128 + 'static,
) -> Row {
    crew_row(name, group, 2, work, setup, move |ops| {
        counts_match(total(), ops)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicI64;

    #[test]
    fn two_thread_rows_measure_both_threads() {
        let slots: Arc<[AtomicI64]> = (0..4).map(|_| AtomicI64::new(0)).collect();
        let theirs = Arc::clone(&slots);
        let work: Work = Arc::new(move |iters, _| {
            for _ in 0..iters {
                theirs[0].fetch_add(1, Ordering::Relaxed);
            }
        });
        let total = Arc::clone(&slots);
        let row = two_thread_row(
            "pair",
            "g",
            work,
            || Ok(()),
            move || i128::from(total[0].load(Ordering::Relaxed)),
        );
        assert_eq!(row.threads, 2);
        for _ in 0..20 {
            row.run(100, Shape::Call).unwrap();
        }
        assert_eq!(slots[0].load(Ordering::Relaxed), 4000);
        assert!(row.finish().unwrap().is_ok());
        let failing = two_thread_row("x", "g", Arc::new(|_, _| {}), || Err("nope".into()), || 0);
        assert_eq!(failing.unavailable_reason(), Some("nope"));
    }
}
