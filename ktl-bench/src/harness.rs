//! The harness: a [`Row`] is a named operation in a group, or the reason it
//! cannot run on this machine; its timed loop runs in one of two loop shapes
//! ([`Shape`]), counts the operations it performs, and a check after the
//! samples verifies the row's result. The measurement calibrates an
//! iteration count per row (or takes the row's own, see [`Calibrate`]),
//! warms every row up, then takes interleaved rounds of samples (one sample
//! of every row per round).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use std::cell::Cell;
use std::hint::black_box;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Calls of the operation per timed iteration in the throughput shape.
pub const UNROLL: u64 = 8;

/// How a sample's loop calls the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// One call per iteration, its result added to an accumulator.
    #[default]
    Call,
    /// 8 unrolled calls per iteration, results summed.
    Throughput,
}

impl Shape {
    /// Calls per loop iteration.
    pub fn calls_per_iter(self) -> u64 {
        match self {
            Shape::Call => 1,
            Shape::Throughput => UNROLL,
        }
    }
}

/// A timed loop: runs `iters` iterations of the unrolled body and returns the
/// elapsed time.
pub(crate) type TimedLoop = Box<dyn Fn(u64, Shape) -> Duration>;

/// A row's check after its samples (and after its threads have stopped):
/// what was verified, or what went wrong.
pub(crate) type Verify = Box<dyn FnOnce() -> Result<String, String>>;

/// A row's own choice of its iteration count, in place of the harness's
/// calibration: the iterations that make one sample last about the target
/// (the first argument) in the shape given, or why the row cannot run (it
/// is then "n/a" with that reason, and neither warmed up nor sampled).
pub(crate) type Calibrate = Box<dyn Fn(Duration, Shape) -> Result<u64, String>>;

/// One line of the benchmark: a named operation, or why it cannot run here.
pub struct Row {
    /// The name shown in the table and in JSON.
    pub(crate) name: String,
    /// The group of related rows (for example `"cpu"`).
    pub(crate) group: String,
    /// The timed loop, or the reason the row is not available.
    pub(crate) op: Result<TimedLoop, String>,
    /// Run after the row's samples, once its loop and threads are gone
    /// (counting rows: the counters sum to the operations performed; object
    /// rows: the structure holds every object); an error is a correctness
    /// failure.
    pub(crate) verify: Option<Verify>,
    /// Threads that run the loop at once (each its own `iters` iterations).
    pub(crate) threads: u32,
    /// Whether the row measures ktl's own code (charts draw it apart).
    pub(crate) ours: bool,
    /// Whether the quick run (`--quick`) measures it.
    pub(crate) quick: bool,
    /// The row the ratio column compares against; `None`: the group's
    /// baseline.
    pub(crate) baseline: Option<String>,
    /// The row's own calibration; `None`: the harness calibrates it.
    pub(crate) calibrate: Option<Calibrate>,
}

impl Row {
    /// A row measuring `op`. The results of its calls are summed with
    /// `wrapping_add`, so any integer type that widens to `u64` will do.
    pub fn new<T, F>(name: &str, group: &str, op: F) -> Row
    where
        T: Into<u64>,
        F: Fn() -> T + 'static,
    {
        Row::timed(
            name,
            group,
            Box::new(move |iters, shape| run_shape(&op, iters, shape)),
            None,
        )
    }

    /// A row with its own timed loop, and a check to run after its samples.
    pub(crate) fn timed(name: &str, group: &str, op: TimedLoop, verify: Option<Verify>) -> Row {
        Row {
            name: name.to_owned(),
            group: group.to_owned(),
            op: Ok(op),
            verify,
            threads: 1,
            ours: false,
            quick: true,
            baseline: None,
            calibrate: None,
        }
    }

    /// A row that cannot run on this machine, listed as "n/a" with `reason`.
    pub fn unavailable(name: &str, group: &str, reason: impl Into<String>) -> Row {
        Row {
            name: name.to_owned(),
            group: group.to_owned(),
            op: Err(reason.into()),
            verify: None,
            threads: 1,
            ours: false,
            quick: true,
            baseline: None,
            calibrate: None,
        }
    }

    /// The row, marked as measuring ktl's own code.
    pub(crate) fn ours(mut self) -> Row {
        self.ours = true;
        self
    }

    /// The row, measured by the quick run or not.
    pub(crate) fn in_quick_run(mut self, quick: bool) -> Row {
        self.quick = quick;
        self
    }

    /// The row, with its ratio taken against the row named `baseline`.
    pub(crate) fn compared_to(mut self, baseline: String) -> Row {
        self.baseline = Some(baseline);
        self
    }

    /// The row, with its iteration count chosen by `calibrate` instead of
    /// the harness's calibration.
    pub(crate) fn calibrated_by(mut self, calibrate: Calibrate) -> Row {
        self.calibrate = Some(calibrate);
        self
    }

    /// The row's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The row's group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The threads that run the row's loop at once.
    pub fn threads(&self) -> u32 {
        self.threads
    }

    /// Why the row cannot run here, or `None` when it can.
    pub fn unavailable_reason(&self) -> Option<&str> {
        self.op.as_ref().err().map(String::as_str)
    }

    /// Runs `iters` iterations of the row's loop in `shape` (in each of its
    /// threads) and returns the time they took, or `None` when the row
    /// cannot run here. For a row of N threads, the time is the wall time
    /// from the release of the threads until all have finished.
    pub fn run(&self, iters: u64, shape: Shape) -> Option<Duration> {
        self.op.as_ref().ok().map(|op| op(iters, shape))
    }

    /// Ends the row: stops its threads, then runs its check, which verifies
    /// every run of the row so far. Returns what the check verified, or the
    /// correctness failure; `None` when the row has no check (or cannot
    /// run here).
    pub fn finish(self) -> Option<Result<String, String>> {
        match self.op {
            Ok(op) => {
                // Stops the row's helper threads, so the check sees the
                // final state and may take the structure back.
                drop(op);
                self.verify.map(|v| v())
            }
            Err(_) => None,
        }
    }
}

/// Runs `iters` iterations of `op` in the loop of `shape` and returns the
/// elapsed time.
#[inline(always)]
pub(crate) fn run_shape<T: Into<u64>>(op: &impl Fn() -> T, iters: u64, shape: Shape) -> Duration {
    match shape {
        Shape::Call => call_loop(op, iters),
        Shape::Throughput => timed_loop(op, iters),
    }
}

/// Runs `iters` iterations of one call of `op`, adding each result into an
/// accumulator that goes through `black_box` at the end, and returns the
/// elapsed time.
///
/// The loop is not unrolled, so its own cost (an add, a decrement and a
/// branch) is part of every row, as in any per-call benchmark. It stores
/// nothing per call: a store per call would let the processor's memory
/// disambiguation stall some rows and not others, depending on where the
/// stack happens to sit.
#[inline(always)]
pub(crate) fn call_loop<T: Into<u64>>(op: &impl Fn() -> T, iters: u64) -> Duration {
    let mut acc = 0u64;
    let start = Instant::now();
    for _ in 0..iters {
        acc = acc.wrapping_add(op().into());
    }
    let elapsed = start.elapsed();
    black_box(acc);
    elapsed
}

/// Runs `iters` iterations of 8 calls of `op` and returns the elapsed time.
///
/// Generic, so `op` is inlined into the loop: the only dynamic call is the
/// one into this function, once per sample.
#[inline(always)]
pub(crate) fn timed_loop<T: Into<u64>>(op: &impl Fn() -> T, iters: u64) -> Duration {
    let mut acc = 0u64;
    let start = Instant::now();
    for _ in 0..iters {
        // Summed as a tree, so that only the last add depends on the
        // previous iteration. A chain of 8 adds into `acc` cost a cycle per
        // call wherever the compiler could not reorder it, that is whenever
        // the operation has a branch (as every accessor of ktl has), while
        // the raw load's adds were reordered: the shape measured the adds.
        let (a, b, c, d) = (op().into(), op().into(), op().into(), op().into());
        let (e, f, g, h) = (op().into(), op().into(), op().into(), op().into());
        let left = a.wrapping_add(b).wrapping_add(c.wrapping_add(d));
        let right = e.wrapping_add(f).wrapping_add(g.wrapping_add(h));
        acc = acc.wrapping_add(left.wrapping_add(right));
    }
    let elapsed = start.elapsed();
    black_box(acc);
    elapsed
}

/// The operations a row's loops have performed, counted outside the timed
/// part.
pub(crate) type OpCount = Rc<Cell<u64>>;

/// Wraps a row's timed loop so that every run adds the operations it performs
/// (`threads` threads running `iters` iterations of the shape's calls) to
/// `count`.
pub(crate) fn counted(op: TimedLoop, threads: u64, count: OpCount) -> TimedLoop {
    Box::new(move |iters, shape| {
        let elapsed = op(iters, shape);
        let ops = iters
            .saturating_mul(shape.calls_per_iter())
            .saturating_mul(threads);
        count.set(count.get().saturating_add(ops));
        elapsed
    })
}

/// The check of a row, run after its samples: `check` gets the operations
/// performed and says what it verified, or what is wrong; either is prefixed
/// with the row's name. It fails without calling `check` if one of the row's
/// other threads stopped early (`lost`).
pub(crate) fn verified(
    name: &str,
    count: OpCount,
    lost: Option<Rc<Cell<bool>>>,
    check: impl FnOnce(u64) -> Result<String, String> + 'static,
) -> Verify {
    let name = name.to_owned();
    Box::new(move || {
        if lost.as_ref().is_some_and(|l| l.get()) {
            return Err(format!(
                "{name}: another thread of the row stopped before the samples finished"
            ));
        }
        check(count.get())
            .map(|m| format!("{name}: {m}"))
            .map_err(|m| format!("{name}: {m}"))
    })
}

/// Whether counters that sum to `sum` account for `ops` operations.
pub(crate) fn counts_match(sum: i128, ops: u64) -> Result<String, String> {
    if sum == i128::from(ops) {
        Ok(format!("{ops} operations, counters sum to {sum}"))
    } else {
        Err(format!("the counters sum to {sum} after {ops} operations"))
    }
}

/// The check of a counting row: the counters (read by `total`) sum to the
/// operations performed, and the row's other threads (if any) stayed up.
pub(crate) fn exactness(
    name: &str,
    count: OpCount,
    lost: Option<Rc<Cell<bool>>>,
    total: impl FnOnce() -> i128 + 'static,
) -> Verify {
    verified(name, count, lost, move |ops| counts_match(total(), ops))
}

/// A 1-thread counting row, checked against `total` after the samples.
pub(crate) fn one_thread_row(
    name: &str,
    group: &str,
    run: TimedLoop,
    total: impl FnOnce() -> i128 + 'static,
) -> Row {
    let count = OpCount::default();
    Row::timed(
        name,
        group,
        counted(run, 1, Rc::clone(&count)),
        Some(exactness(name, count, None, total)),
    )
}

/// The statistics of one measured row, in nanoseconds per call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Stats {
    /// The median over the samples.
    pub(crate) median_ns: f64,
    /// The fastest sample.
    pub(crate) min_ns: f64,
    /// The slowest sample.
    pub(crate) max_ns: f64,
    /// `(max - min) / median`, in percent.
    pub(crate) spread_pct: f64,
    /// Timed samples taken.
    pub(crate) samples: u32,
    /// Loop iterations per sample (one call each in the `call` shape, 8 in
    /// the `throughput` shape).
    pub(crate) iters_per_sample: u64,
}

impl Stats {
    /// The statistics of per-call times `ns` (not empty).
    pub(crate) fn from_samples(mut ns: Vec<f64>, iters_per_sample: u64) -> Stats {
        ns.sort_by(f64::total_cmp);
        let n = ns.len();
        let median = if n == 0 {
            0.0
        } else if n % 2 == 1 {
            ns[n / 2]
        } else {
            (ns[n / 2 - 1] + ns[n / 2]) / 2.0
        };
        let min = ns.first().copied().unwrap_or(0.0);
        let max = ns.last().copied().unwrap_or(0.0);
        let spread_pct = if median > 0.0 {
            (max - min) / median * 100.0
        } else {
            0.0
        };
        Stats {
            median_ns: median,
            min_ns: min,
            max_ns: max,
            spread_pct,
            samples: n as u32,
            iters_per_sample,
        }
    }
}

/// A row after the run: its statistics, or the reason it did not run.
pub(crate) struct Outcome {
    pub(crate) name: String,
    pub(crate) group: String,
    pub(crate) result: Result<Stats, String>,
    /// The row's check after its samples, if it has one and ran: what was
    /// verified, or the correctness failure.
    pub(crate) verified: Option<Result<String, String>>,
    /// Threads that ran the loop at once.
    pub(crate) threads: u32,
    /// Whether the row measures ktl's own code.
    pub(crate) ours: bool,
    /// The row the ratio compares against, when not the group's baseline.
    pub(crate) baseline: Option<String>,
}

impl Outcome {
    /// The median time per call, when the row ran.
    pub(crate) fn median(&self) -> Option<f64> {
        self.result.as_ref().ok().map(|s| s.median_ns)
    }
}

/// The iteration count that makes one sample of `op` last about `target`.
///
/// Doubles the count until a run lasts a tenth of the target (long enough for
/// `Instant` to resolve well), then scales it. A run that reaches the tenth
/// is repeated and the faster of the two counts: a first run can carry a
/// one-time cost (a registration with the kernel, page faults, a structure
/// moving its objects to the threads' CPUs) that would otherwise make the
/// count far too small. These runs are also the start of the warm-up.
fn calibrate(op: &dyn Fn(u64) -> Duration, target: Duration) -> u64 {
    const MAX_ITERS: u64 = 1 << 40;
    let probe_target = target / 10;
    let mut iters = 1u64;
    loop {
        let mut elapsed = op(iters);
        if elapsed >= probe_target && iters < MAX_ITERS {
            elapsed = elapsed.min(op(iters));
        }
        if elapsed >= probe_target || iters >= MAX_ITERS {
            let per_iter = elapsed.as_secs_f64() / iters as f64;
            if per_iter <= 0.0 {
                return MAX_ITERS;
            }
            let want = (target.as_secs_f64() / per_iter).round();
            return (want as u64).clamp(1, MAX_ITERS);
        }
        iters *= 2;
    }
}

/// One operation for [`measure_all`]: its timed run (iterations in, time
/// out), and its own calibration, if it has one (see [`Calibrate`]).
pub(crate) struct Timed<'a> {
    pub(crate) run: &'a dyn Fn(u64) -> Duration,
    pub(crate) calibrate: Option<&'a dyn Fn(Duration) -> Result<u64, String>>,
}

/// Measures several operations side by side: calibrates each (which also
/// warms it up), runs one untimed warm-up sample of each, then takes
/// `samples` rounds, each round one timed sample of every operation in turn,
/// ticking `bar` once per sample. An operation with its own calibration
/// takes the count that gives, or, when that fails, is not measured: its
/// result is the calibration's error.
///
/// Interleaving the rounds spreads the machine's slow phases (frequency
/// changes, a noisy neighbour) over every row alike, so ratios between rows
/// of one run stay meaningful even when absolute times wander.
pub(crate) fn measure_all(
    ops: &[Timed<'_>],
    calls_per_iter: u64,
    samples: u32,
    target: Duration,
    bar: &ProgressBar,
) -> Vec<Result<Stats, String>> {
    let iters: Vec<Result<u64, String>> = ops
        .iter()
        .map(|op| match op.calibrate {
            Some(own) => own(target),
            None => Ok(calibrate(op.run, target)),
        })
        .collect();
    for (op, n) in ops.iter().zip(&iters) {
        match n {
            Ok(n) => {
                black_box((op.run)(*n)); // warm-up
            }
            // Not measured: its samples' ticks now.
            Err(_) => bar.inc(u64::from(samples)),
        }
    }
    let mut ns: Vec<Vec<f64>> = vec![Vec::with_capacity(samples as usize); ops.len()];
    for _ in 0..samples {
        for (i, (op, n)) in ops.iter().zip(&iters).enumerate() {
            let Ok(n) = *n else { continue };
            let elapsed = (op.run)(n);
            bar.inc(1);
            ns[i].push(elapsed.as_nanos() as f64 / (n * calls_per_iter) as f64);
        }
    }
    ns.into_iter()
        .zip(iters)
        .map(|(v, n)| n.map(|n| Stats::from_samples(v, n)))
        .collect()
}

/// The progress bar: on stderr, hidden when stderr is not a terminal (and
/// always with `--json`).
fn progress_bar(total: u64, json: bool) -> ProgressBar {
    if json {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("bench {bar:30.cyan/blue} {pos:>3}/{len:3} {wide_msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Runs the selected rows side by side (see [`measure_all`]) and returns
/// their outcomes, in order; `what` is the progress bar's message. Each
/// row's check runs after its loop, and with it the row's threads, is gone.
pub(crate) fn run_rows(
    rows: Vec<Row>,
    shape: Shape,
    samples: u32,
    target: Duration,
    json: bool,
    what: &str,
) -> Vec<Outcome> {
    type Run<'r> = Box<dyn Fn(u64) -> Duration + 'r>;
    type Own<'r> = Box<dyn Fn(Duration) -> Result<u64, String> + 'r>;
    let timed: Vec<(Run<'_>, Option<Own<'_>>)> = rows
        .iter()
        .filter_map(|r| {
            let op = r.op.as_ref().ok()?;
            let run: Run<'_> = Box::new(move |iters| op(iters, shape));
            let own = r
                .calibrate
                .as_ref()
                .map(|c| Box::new(move |target| c(target, shape)) as Own<'_>);
            Some((run, own))
        })
        .collect();
    let ops: Vec<Timed<'_>> = timed
        .iter()
        .map(|(run, own)| Timed {
            run: run.as_ref(),
            calibrate: own.as_deref(),
        })
        .collect();
    let bar = progress_bar(ops.len() as u64 * u64::from(samples), json);
    bar.set_message(what.to_owned());
    let mut stats = measure_all(&ops, shape.calls_per_iter(), samples, target, &bar).into_iter();
    bar.finish_and_clear();
    drop(ops);
    drop(timed);
    rows.into_iter()
        .map(|row| {
            let (name, group, threads, ours, baseline) = (
                row.name.clone(),
                row.group.clone(),
                row.threads,
                row.ours,
                row.baseline.clone(),
            );
            let result = match &row.op {
                Ok(_) => stats
                    .next()
                    .unwrap_or_else(|| Err("not measured".to_owned())),
                Err(reason) => Err(reason.clone()),
            };
            // Stops the row's threads, then runs its check (not for a row
            // that its own calibration left unmeasured: it ran nothing).
            let verified = if result.is_ok() {
                row.finish()
            } else {
                drop(row);
                None
            };
            Outcome {
                result,
                verified,
                name,
                group,
                threads,
                ours,
                baseline,
            }
        })
        .collect()
}

/// An outcome of the `cpu` group for the tests: measured at `median`, or
/// "absent".
#[cfg(test)]
pub(crate) fn outcome(name: &str, median: Option<f64>) -> Outcome {
    Outcome {
        name: name.to_owned(),
        group: "cpu".to_owned(),
        result: median
            .map(|m| Stats::from_samples(vec![m], 1))
            .ok_or_else(|| "absent".to_owned()),
        verified: None,
        threads: 1,
        ours: false,
        baseline: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_odd_and_even_counts() {
        let s = Stats::from_samples(vec![3.0, 1.0, 2.0], 10);
        assert_eq!((s.median_ns, s.min_ns, s.max_ns), (2.0, 1.0, 3.0));
        assert!((s.spread_pct - 100.0).abs() < 1e-9);
        assert_eq!((s.samples, s.iters_per_sample), (3, 10));
        let s = Stats::from_samples(vec![4.0, 1.0, 2.0, 3.0], 1);
        assert_eq!(s.median_ns, 2.5);
    }

    #[test]
    fn exactness_reports_mismatches() {
        let count = OpCount::default();
        let run = counted(Box::new(|_, _| Duration::ZERO), 2, Rc::clone(&count));
        run(5, Shape::Throughput);
        assert_eq!(count.get(), 2 * 5 * UNROLL);
        let good = exactness("r", Rc::clone(&count), None, || 80);
        assert!(good().is_ok());
        let bad = exactness("r", Rc::clone(&count), None, || 79);
        assert!(bad().unwrap_err().contains("sum to 79 after 80 operations"));
        let lost = Rc::new(Cell::new(true));
        let gone = exactness("r", count, Some(lost), || 80);
        assert!(gone().unwrap_err().contains("another thread"));
    }

    #[test]
    fn a_row_s_own_calibration_sets_its_count_or_makes_it_na() {
        let seen = Rc::new(Cell::new(0u64));
        let mine = Rc::clone(&seen);
        let fixed = Row::timed(
            "fixed",
            "g",
            Box::new(move |iters, _| {
                mine.set(iters);
                Duration::from_nanos(iters)
            }),
            None,
        )
        .calibrated_by(Box::new(|_, shape| Ok(7 * shape.calls_per_iter())));
        let checked = Rc::new(Cell::new(false));
        let check = Rc::clone(&checked);
        let refused = Row::timed(
            "refused",
            "g",
            Box::new(|_, _| panic!("a row whose calibration failed runs nothing")),
            Some(Box::new(move || {
                check.set(true);
                Ok("ran".to_owned())
            })),
        )
        .calibrated_by(Box::new(|_, _| Err("no peer here".to_owned())));
        let outcomes = run_rows(
            vec![fixed, refused],
            Shape::Throughput,
            3,
            Duration::from_millis(1),
            true,
            "test",
        );
        let s = outcomes[0].result.as_ref().unwrap();
        assert_eq!((s.iters_per_sample, s.samples), (56, 3));
        assert_eq!(seen.get(), 56);
        assert_eq!(s.median_ns, 1.0 / UNROLL as f64);
        assert_eq!(outcomes[1].result.as_ref().unwrap_err(), "no peer here");
        assert!(outcomes[1].verified.is_none() && !checked.get());
    }

    #[test]
    fn measuring_a_row_gives_positive_times() {
        let row = Row::new("t", "g", ktl::cpu_id);
        let op = row.op.as_ref().unwrap();
        let timed = |iters| op(iters, Shape::Call);
        let s = measure_all(
            &[Timed {
                run: &timed,
                calibrate: None,
            }],
            1,
            3,
            Duration::from_millis(1),
            &ProgressBar::hidden(),
        )
        .remove(0)
        .unwrap();
        assert_eq!(s.samples, 3);
        assert!(s.iters_per_sample >= 1);
        assert!(s.min_ns <= s.median_ns && s.median_ns <= s.max_ns);
    }
}
