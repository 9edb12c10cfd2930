//! `ktl stress`: many threads hammer per-CPU data with every restartable
//! sequence operation, then the results are checked exactly.
//!
//! Modelled on the kernel's `tools/testing/selftests/rseq/param_test.c`.
//! Each scenario runs `--threads` threads of `--reps` operations each, on
//! slots indexed by the CPU number or by `mm_cid` (`--index`), one slot per
//! possible CPU, each on its own 128-byte line:
//!
//! | scenario | operation | exact check |
//! |---|---|---|
//! | `increment` | `add(+1)` on one set of slots, `add_current(+1)` on another (a shared word where it has no area) | each set sums to threads x reps; the shared word holds exactly the adds of the workers without an area |
//! | `spinlock` | lock with `cmpeqv_storev(0 -> 1)`, plain increment, release store of 0 | the counters sum to threads x reps |
//! | `list` | pop with `cmpnev_storeoffp_load`, push with `cmpeqv_storev` | every node on exactly one list, once |
//! | `buffer` | pop with `cmpeqv_cmpeqv_storev`, push with `cmpeqv_trystorev_storev` (release) | every item exactly once |
//! | `memcpy` | 16-byte items copied out and in with `cmpeqv_trymemcpy_storev` | every item exactly once and intact |
//! | `membarrier` | `offset_deref_addv(+1)` through a per-slot pointer that a manager swaps and fences | both arrays sum to threads x reps; a swapped-out array never changes after its fence |
//!
//! `--yield-every` and `--sleep-every` (1 ms) add preemptions and aborts.
//! `--signal-every N` makes every worker send SIGUSR1 to another worker of
//! its scenario every N operations: the next one in a ring of the
//! scenario's threads that is still running its operations. The signal
//! arrives asynchronously, wherever the target is: when it is on a CPU,
//! possibly inside a critical section, which the signal then aborts. (A
//! thread that signalled itself would take the signal on the return of
//! `pthread_kill`, outside any section.) The handler is empty and installed
//! with `SA_RESTART`.
//!
//! With the cargo feature `delay-injection`, `--delay-inside N` and
//! `--delay-before N` make every critical section busy-loop N iterations
//! right after its index check, and just before it is entered (see
//! `ktl::rseq::delay`). They widen the windows in which a preemption,
//! migration or signal aborts a section. Without the feature, a non-zero
//! value is an error.
//!
//! `--rseq-off-every M` turns rseq off in every Mth worker
//! (`ktl::area::release_current_thread`), which then runs every operation
//! on the fenced fallback, on the same data as the others' critical
//! sections. ktl must own the areas for that; where the C library owns
//! them, the command replaces itself with a copy run under
//! `GLIBC_TUNABLES=glibc.pthread.rseq=0`. The `membarrier` manager then
//! swaps under `rseq::exclusive` (the gate and the fence), as it does on
//! the locked path: a fence alone stops critical sections, not fallbacks.
//!
//! An operation of `list`, `buffer` and `memcpy` that finds its CPU's
//! structure empty is counted in `empty` and still counts as an op.
//!
//! The JSON form (`--json`) follows the schema `ktl-stress/1`:
//!
//! ```text
//! {"schema": "ktl-stress/1",
//!  "index": "cpu" | "mm-cid", "path": "<rseq::path()>", "fence": "<fence::kind()>",
//!  "threads", "reps", "yield_every", "sleep_every", "signal_every",
//!  "delay_inside", "delay_before", "rseq_off_every", "slots",
//!  "scenarios": [{"name", "status": "ok" | "FAIL" | "skipped" | "n/a",
//!                 "ops", "expected_ops", "aborts", "empty", "signals",
//!                 "rseq_off_threads", "elapsed_ms", "detail"}],
//!  "pass"}
//! ```
//!
//! `ops` is the number of operations completed (threads x reps when every
//! thread finished), `aborts` the sum of each thread's `ktl::rseq::aborts()`
//! at its end, `signals` the number of SIGUSR1 sent from one worker to
//! another. `delay_inside` and `delay_before` are the delays in effect
//! (iterations; always 0 without the feature). `pass` is false when any
//! scenario is `FAIL`; the command then exits non-zero.

mod buffer;
mod increment;
mod list;
mod membarrier;
mod memcpy;
mod spinlock;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ktl::rseq::fence;
use ktl::rseq::{self, Failure, Index};
use ktl_bench::os;
use serde::Serialize;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The scenarios, in the order `all` runs them.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Increment,
    Spinlock,
    List,
    Buffer,
    Memcpy,
    Membarrier,
    All,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Increment => "increment",
            Scenario::Spinlock => "spinlock",
            Scenario::List => "list",
            Scenario::Buffer => "buffer",
            Scenario::Memcpy => "memcpy",
            Scenario::Membarrier => "membarrier",
            Scenario::All => "all",
        }
    }
}

/// The index of the per-CPU slots.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexArg {
    /// The CPU number (`cpu_id`).
    Cpu,
    /// The concurrency id (`mm_cid`, Linux 6.3+).
    MmCid,
}

/// Options of `ktl stress`.
#[derive(clap::Args, Debug, Clone)]
pub struct StressArgs {
    /// Which scenario to run.
    #[arg(long, value_enum, default_value_t = Scenario::All)]
    pub scenario: Scenario,
    /// Threads per scenario.
    #[arg(long, default_value_t = 200)]
    pub threads: usize,
    /// Operations per thread.
    #[arg(long, default_value_t = 10_000)]
    pub reps: u64,
    /// The index of the per-CPU slots.
    #[arg(long, value_enum, default_value_t = IndexArg::Cpu)]
    pub index: IndexArg,
    /// Yield the CPU every N operations (0: never).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub yield_every: u64,
    /// Sleep 1 ms every N operations (0: never).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub sleep_every: u64,
    /// Send SIGUSR1 to another worker (the next running one in a ring of the
    /// scenario's threads) every N operations, so that it lands
    /// asynchronously, possibly inside a critical section (0: never).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub signal_every: u64,
    /// Busy-loop N iterations inside every critical section, right after
    /// its index check (0: off). Needs a build with the cargo feature
    /// `delay-injection`.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub delay_inside: u64,
    /// Busy-loop N iterations just before every critical section, after the
    /// index is read (0: off). Needs a build with the cargo feature
    /// `delay-injection`.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub delay_before: u64,
    /// Turn rseq off in every Mth worker (`ktl::area::release_current_thread`):
    /// it runs every operation on the fenced fallback, next to the other
    /// workers' critical sections on the same data (0: never). ktl must own
    /// the areas for that; where the C library owns them, `ktl stress` runs
    /// itself again with `GLIBC_TUNABLES=glibc.pthread.rseq=0`.
    #[arg(long, default_value_t = 0, value_name = "M")]
    pub rseq_off_every: usize,
    /// Print the results as JSON (schema `ktl-stress/1`), without a progress
    /// bar.
    #[arg(long)]
    pub json: bool,
}

/// One scenario's result.
#[derive(Serialize, Debug)]
pub struct ScenarioResult {
    pub name: &'static str,
    /// `ok`, `FAIL`, `skipped` (the scenario cannot run here) or `n/a` (the
    /// index is not available).
    pub status: &'static str,
    pub ops: u64,
    pub expected_ops: u64,
    pub aborts: u64,
    pub empty: u64,
    /// SIGUSR1 sent from one worker to another.
    pub signals: u64,
    /// Workers that ran with rseq turned off (`--rseq-off-every`).
    pub rseq_off_threads: u64,
    pub elapsed_ms: f64,
    pub detail: String,
}

/// The whole result, as serialized for `--json`.
#[derive(Serialize, Debug)]
pub struct StressReport {
    /// Always `"ktl-stress/1"`.
    pub schema: &'static str,
    pub index: &'static str,
    pub path: String,
    pub fence: String,
    pub threads: usize,
    pub reps: u64,
    pub yield_every: u64,
    pub sleep_every: u64,
    pub signal_every: u64,
    /// Busy-loop iterations inside every critical section.
    pub delay_inside: u64,
    /// Busy-loop iterations before every critical section.
    pub delay_before: u64,
    /// Every Mth worker ran with rseq turned off (0: none).
    pub rseq_off_every: usize,
    pub slots: usize,
    pub scenarios: Vec<ScenarioResult>,
    pub pass: bool,
}

/// A value alone on a 128-byte line (two 64-byte lines: adjacent-line
/// prefetchers pair them).
#[repr(C, align(128))]
struct Line<T>(T);

fn lines(n: usize) -> Box<[Line<AtomicI64>]> {
    (0..n).map(|_| Line(AtomicI64::new(0))).collect()
}

fn sum(lines: &[Line<AtomicI64>]) -> i64 {
    lines.iter().map(|l| l.0.load(Ordering::Acquire)).sum()
}

/// What every scenario needs.
struct Config {
    index: Index,
    threads: usize,
    reps: u64,
    yield_every: u64,
    sleep_every: u64,
    signal_every: u64,
    /// Every Mth worker turns rseq off (0: none).
    rseq_off_every: usize,
    json: bool,
    /// Slots: one per possible CPU.
    slots: usize,
    /// The slot numbers the threads can see: the allowed CPUs, or for
    /// mm_cid the first `allowed CPUs` ids.
    reachable: Vec<usize>,
}

impl Config {
    fn expected(&self) -> u64 {
        self.threads as u64 * self.reps
    }

    /// The slot of `start`, checked against the slot count.
    fn slot(&self, start: rseq::Start) -> usize {
        let v = start.value() as usize;
        assert!(
            v < self.slots,
            "index value {v} is not below the {} slots",
            self.slots
        );
        v
    }
}

/// Unwraps `retry`'s `None`: the thread has no live area.
fn live<T>(r: Option<Result<T, Failure>>) -> Result<Result<T, Failure>, String> {
    r.ok_or_else(|| "a worker thread has no live rseq area".to_string())
}

/// Installs an empty SA_RESTART handler for SIGUSR1, once.
fn install_handler() -> Result<(), String> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        os::install_empty_handler(os::SIGUSR1)
            .map_err(|e| format!("cannot install the SIGUSR1 handler: {e}"))
    })
    .clone()
}

/// Operations between two updates of the shared progress counter.
const PROGRESS_EVERY: u64 = 10_000;

/// What a worker thread gets from `run_threads`.
struct Ctx<'a> {
    /// Operations completed by all the workers of the scenario.
    progress: &'a AtomicU64,
    /// Every worker's `pthread_t`, published by the worker itself when it
    /// starts, and reset to 0 when it has finished its body (0: not
    /// running). Stored as an integer: glibc's `pthread_t` is one, musl's
    /// is a pointer (never null), and the value goes back to `pthread_kill`
    /// unchanged.
    peers: &'a [AtomicU64],
    /// This worker's place in `peers`.
    me: usize,
}

/// One worker's totals.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    /// Operations that found their structure empty.
    empty: u64,
    /// The thread's `ktl::rseq::aborts()` at its end.
    aborts: u64,
    /// SIGUSR1 sent to another worker.
    signals: u64,
    /// 1 if the worker ran with rseq turned off.
    rseq_off: u64,
}

/// Sends SIGUSR1 to the next other worker in the ring of the scenario's
/// workers that is running its body: workers that have not started yet or
/// have finished (their `peers` entry is 0) are skipped. Returns whether a
/// signal was sent: not when no other worker is running, nor when the
/// target exited meanwhile on a C library whose `pthread_kill` reports that
/// with `ESRCH`.
fn signal_next(ctx: &Ctx) -> Result<bool, String> {
    let n = ctx.peers.len();
    let Some(thread) = (1..n)
        .map(|k| ctx.peers[(ctx.me + k) % n].load(Ordering::Acquire))
        .find(|&t| t != 0)
    else {
        return Ok(false);
    };
    // SAFETY: `thread` is the `pthread_t` of a worker of this scenario,
    // published by that worker when it started (`run_threads`); it may have
    // finished since. pthread_kill is valid on a thread until it is joined
    // (or, detached, until it exits). The workers are scoped threads whose
    // handles are joined, or on a panic dropped (detached), only after every
    // worker has finished its body (`Workers`). This code runs inside a
    // worker's body, so the target has not been joined or detached yet. The
    // SIGUSR1 handler is installed before any worker starts.
    unsafe { os::signal_thread(thread, os::SIGUSR1) }.map_err(|e| format!("pthread_kill: {e}"))
}

/// Whether worker `me` is one of every `--rseq-off-every` workers.
fn rseq_off(cfg: &Config, me: usize) -> bool {
    cfg.rseq_off_every > 0 && (me + 1).is_multiple_of(cfg.rseq_off_every)
}

/// Turns rseq off in the calling worker if it is one of every
/// `--rseq-off-every`, and checks that its operations then take the fenced
/// fallback. Returns whether it did.
fn turn_rseq_off(cfg: &Config, me: usize) -> Result<bool, String> {
    if !rseq_off(cfg, me) {
        return Ok(false);
    }
    ktl::area::release_current_thread().map_err(|e| format!("cannot turn rseq off: {e}"))?;
    match rseq::start(cfg.index).map(rseq::Start::path) {
        Some(rseq::Path::Fenced) => Ok(true),
        other => Err(format!(
            "a worker with rseq turned off takes {other:?}, not the fenced fallback"
        )),
    }
}

/// Runs one worker thread's `reps` operations with the pacing options.
/// `op` returns `Ok(false)` when it found its structure empty.
fn worker(
    cfg: &Config,
    ctx: &Ctx,
    mut op: impl FnMut() -> Result<bool, String>,
) -> Result<Tally, String> {
    let mut tally = Tally::default();
    let mut pending = 0;
    for i in 1..=cfg.reps {
        if !op()? {
            tally.empty += 1;
        }
        if cfg.yield_every > 0 && i % cfg.yield_every == 0 {
            std::thread::yield_now();
        }
        if cfg.sleep_every > 0 && i % cfg.sleep_every == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        if cfg.signal_every > 0 && i % cfg.signal_every == 0 && signal_next(ctx)? {
            tally.signals += 1;
        }
        pending += 1;
        if pending == PROGRESS_EVERY {
            ctx.progress.fetch_add(pending, Ordering::Relaxed);
            pending = 0;
        }
    }
    ctx.progress.fetch_add(pending, Ordering::Relaxed);
    tally.aborts = rseq::aborts();
    Ok(tally)
}

/// The totals of one scenario's threads.
struct Run<M> {
    ops: u64,
    tally: Tally,
    elapsed: Duration,
    errors: Vec<String>,
    manager: Option<M>,
}

/// The handles of a scenario's workers. Dropping it (on a panic in the
/// spawning thread) first waits until every worker has finished its body:
/// a dropped handle detaches its thread, whose `pthread_t` is freed when it
/// exits, and a worker still running may be about to signal it.
struct Workers<'scope, T>(Vec<std::thread::ScopedJoinHandle<'scope, T>>);

impl<T> Workers<'_, T> {
    fn finished(&self) -> bool {
        self.0.iter().all(|h| h.is_finished())
    }
}

impl<T> Drop for Workers<'_, T> {
    fn drop(&mut self) {
        while !self.finished() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Runs `body(ctx)` on `cfg.threads` threads (and `manager` on one more,
/// told to stop when the workers are done), with a progress bar.
fn run_threads<M: Send>(
    cfg: &Config,
    name: &str,
    body: impl Fn(&Ctx) -> Result<Tally, String> + Sync,
    manager: Option<&(dyn Fn(&AtomicBool) -> M + Sync)>,
) -> Run<M> {
    let progress = AtomicU64::new(0);
    let peers: Box<[AtomicU64]> = (0..cfg.threads).map(|_| AtomicU64::new(0)).collect();
    let stop = AtomicBool::new(false);
    // When the last worker finished, in nanoseconds from `begin`.
    let last_end = AtomicU64::new(0);
    let bar = progress_bar(cfg, name);
    let begin = Instant::now();
    let body = |me: usize| {
        peers[me].store(os::this_thread(), Ordering::Release);
        let ctx = Ctx {
            progress: &progress,
            peers: &peers,
            me,
        };
        let r = turn_rseq_off(cfg, me).and_then(|off| {
            body(&ctx).map(|t| Tally {
                rseq_off: u64::from(off),
                ..t
            })
        });
        // Finished: the others stop signalling this thread (a signal sent
        // after its body, between their load and this store, is harmless).
        peers[me].store(0, Ordering::Release);
        last_end.fetch_max(begin.elapsed().as_nanos() as u64, Ordering::Relaxed);
        r
    };
    let mut run = std::thread::scope(|scope| {
        let body = &body;
        let mut workers = Workers(Vec::with_capacity(cfg.threads));
        let mut errors = Vec::new();
        for me in 0..cfg.threads {
            match std::thread::Builder::new()
                .name(format!("stress-{name}"))
                .spawn_scoped(scope, move || body(me))
            {
                Ok(h) => workers.0.push(h),
                Err(e) => {
                    errors.push(format!("cannot start a thread: {e}"));
                    break;
                }
            }
        }
        let mgr = manager.map(|m| {
            let stop = &stop;
            scope.spawn(move || m(stop))
        });
        // No handle is joined before every worker has finished its body:
        // until then, workers may signal any other worker (`signal_next`).
        while !workers.finished() {
            bar.set_position(progress.load(Ordering::Relaxed));
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        let mut tally = Tally::default();
        for h in std::mem::take(&mut workers.0) {
            match h.join() {
                Ok(Ok(t)) => {
                    tally.empty += t.empty;
                    tally.aborts += t.aborts;
                    tally.signals += t.signals;
                    tally.rseq_off += t.rseq_off;
                }
                Ok(Err(e)) => errors.push(e),
                Err(p) => errors.push(panic_text(&p)),
            }
        }
        let manager = match mgr.map(|m| m.join()) {
            None => None,
            Some(Ok(m)) => Some(m),
            Some(Err(p)) => {
                errors.push(panic_text(&p));
                None
            }
        };
        Run {
            ops: 0,
            tally,
            elapsed: Duration::ZERO,
            errors,
            manager,
        }
    });
    run.elapsed = Duration::from_nanos(last_end.load(Ordering::Relaxed));
    run.ops = progress.load(Ordering::Relaxed);
    bar.finish_and_clear();
    errors_dedup(&mut run.errors);
    run
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    let text = p
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| p.downcast_ref::<&str>().copied())
        .unwrap_or("a panic");
    format!("a worker panicked: {text}")
}

fn errors_dedup(errors: &mut Vec<String>) {
    errors.sort();
    errors.dedup();
}

/// The progress bar: on stderr, hidden with `--json` or when stderr is not
/// a terminal.
fn progress_bar(cfg: &Config, name: &str) -> ProgressBar {
    if cfg.json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(cfg.expected()), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "stress {msg:<10} {bar:30.cyan/blue} {pos:>9}/{len:9} ops {elapsed}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(name.to_string());
    bar
}

/// Builds a scenario's result from a run and the scenario's own checks.
fn result<M>(cfg: &Config, name: &'static str, run: &Run<M>, check: Vec<String>) -> ScenarioResult {
    let mut problems = run.errors.clone();
    if run.ops != cfg.expected() {
        problems.push(format!("{} ops of {} completed", run.ops, cfg.expected()));
    }
    problems.extend(check);
    let ok = problems.is_empty();
    ScenarioResult {
        name,
        status: if ok { "ok" } else { "FAIL" },
        ops: run.ops,
        expected_ops: cfg.expected(),
        aborts: run.tally.aborts,
        empty: run.tally.empty,
        signals: run.tally.signals,
        rseq_off_threads: run.tally.rseq_off,
        elapsed_ms: run.elapsed.as_secs_f64() * 1e3,
        detail: if ok {
            String::new()
        } else {
            problems.join("; ")
        },
    }
}

fn not_run(
    cfg: &Config,
    name: &'static str,
    status: &'static str,
    detail: String,
) -> ScenarioResult {
    ScenarioResult {
        name,
        status,
        ops: 0,
        expected_ops: cfg.expected(),
        aborts: 0,
        empty: 0,
        signals: 0,
        rseq_off_threads: 0,
        elapsed_ms: 0.0,
        detail,
    }
}

fn exact(what: &str, got: i64, want: u64) -> Vec<String> {
    if got == want as i64 {
        Vec::new()
    } else {
        vec![format!("{what} is {got}, expected {want}")]
    }
}

/// List nodes (and buffer items) per reachable slot.
const ITEMS_PER_SLOT: usize = 100;

/// Sets the injected delays, and returns the ones in effect (inside,
/// before).
#[cfg(feature = "delay-injection")]
fn set_delays(inside: u64, before: u64) -> Result<(u64, u64), String> {
    rseq::delay::set_inside(inside);
    rseq::delay::set_before(before);
    Ok((
        rseq::delay::inside_iterations(),
        rseq::delay::before_iterations(),
    ))
}

/// Without delay injection, only zero delays are possible.
#[cfg(not(feature = "delay-injection"))]
fn set_delays(inside: u64, before: u64) -> Result<(u64, u64), String> {
    if inside != 0 || before != 0 {
        return Err(
            "--delay-inside and --delay-before need delay injection, and this ktl was built \
             without the delay-injection feature; rebuild it with \
             `cargo build --release -p ktl-cli --features delay-injection`"
                .into(),
        );
    }
    Ok((0, 0))
}

/// The environment variable that marks a `ktl stress` run again by itself
/// with the C library's registration turned off.
const RERUN: &str = "KTL_STRESS_RERUN";

/// Checks that workers can turn rseq off: ktl must own the areas, and the
/// fenced fallback must be available. Where the C library owns the areas,
/// replaces this process with the same command under
/// `glibc.pthread.rseq=0` (and returns only if that fails).
fn check_rseq_off() -> Result<(), String> {
    match ktl::layout().owner {
        ktl::Owner::Ktl(_) => {}
        ktl::Owner::Libc if std::env::var_os(RERUN).is_none() => return rerun_with_ktl_owner(),
        owner => {
            return Err(format!(
                "--rseq-off-every needs ktl to own the rseq areas, and the owner is {owner}"
            ));
        }
    }
    if rseq::without_area() != Some(rseq::Path::Fenced) {
        return Err(format!(
            "--rseq-off-every needs the membarrier rseq fence (Linux 5.10+), so that workers \
             without rseq can share data with the others; the fence here is {}",
            fence::kind()
        ));
    }
    Ok(())
}

/// Replaces this process with the same command, with the C library's rseq
/// registration turned off, so that ktl owns the areas.
fn rerun_with_ktl_owner() -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot find this executable to run it again: {e}"))?;
    let tunables = match std::env::var("GLIBC_TUNABLES") {
        Ok(t) if !t.is_empty() => format!("{t}:glibc.pthread.rseq=0"),
        _ => "glibc.pthread.rseq=0".to_string(),
    };
    eprintln!(
        "ktl stress: the C library owns the rseq areas; running again with \
         GLIBC_TUNABLES={tunables} so that ktl owns them and can turn rseq off per worker"
    );
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("GLIBC_TUNABLES", tunables)
        .env(RERUN, "1")
        .exec();
    Err(format!("cannot run this executable again: {err}"))
}

/// Runs `ktl stress`.
pub fn run(args: &StressArgs) -> Result<(), String> {
    if args.reps == 0 {
        return Err("--reps must be at least 1".into());
    }
    if args.threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    let (delay_inside, delay_before) = set_delays(args.delay_inside, args.delay_before)?;
    if args.rseq_off_every > 0 {
        check_rseq_off()?;
    }
    if rseq::start(Index::CpuId).is_none() {
        return Err(format!(
            "rseq is unavailable in this thread (owner: {}): ktl stress needs a live rseq area",
            ktl::layout().owner
        ));
    }
    let allowed = os::allowed_cpus().map_err(|e| format!("cannot read the CPU affinity: {e}"))?;
    let possible = ktl::cpu::possible_cpus()
        .map(|n| n as usize)
        .unwrap_or(os::CPU_SETSIZE);
    let slots = possible.max(allowed.iter().max().map_or(1, |m| m + 1));
    let (index, index_name) = match args.index {
        IndexArg::Cpu => (Index::CpuId, "cpu"),
        IndexArg::MmCid => (Index::MmCid, "mm-cid"),
    };
    let reachable = match index {
        Index::CpuId => allowed.clone(),
        Index::MmCid => (0..allowed.len().min(slots)).collect(),
    };
    let cfg = Config {
        index,
        threads: args.threads,
        reps: args.reps,
        yield_every: args.yield_every,
        sleep_every: args.sleep_every,
        signal_every: args.signal_every,
        rseq_off_every: args.rseq_off_every,
        json: args.json,
        slots,
        reachable,
    };
    let scenarios: Vec<Scenario> = match args.scenario {
        Scenario::All => vec![
            Scenario::Increment,
            Scenario::Spinlock,
            Scenario::List,
            Scenario::Buffer,
            Scenario::Memcpy,
            Scenario::Membarrier,
        ],
        one => vec![one],
    };
    if cfg.signal_every > 0 {
        install_handler()?;
    }
    let index_live = rseq::start(index).is_some();
    let mut results = Vec::new();
    for sc in scenarios {
        if !index_live {
            results.push(not_run(
                &cfg,
                sc.name(),
                "n/a",
                "the kernel does not provide mm_cid (Linux 6.3+), or this thread has no live area for it".into(),
            ));
            continue;
        }
        let r = match sc {
            Scenario::Increment => increment::increment(&cfg),
            Scenario::Spinlock => spinlock::spinlock(&cfg),
            Scenario::List => list::list(&cfg),
            Scenario::Buffer => buffer::buffer(&cfg),
            Scenario::Memcpy => memcpy::memcpy(&cfg),
            Scenario::Membarrier => membarrier::membarrier(&cfg),
            Scenario::All => unreachable!("expanded above"),
        };
        if !args.json {
            print_line(&r);
        }
        results.push(r);
    }
    let pass = results.iter().all(|r| r.status != "FAIL");
    let report = StressReport {
        schema: "ktl-stress/1",
        index: index_name,
        path: rseq::path().to_string(),
        fence: fence::kind().to_string(),
        threads: cfg.threads,
        reps: cfg.reps,
        yield_every: cfg.yield_every,
        sleep_every: cfg.sleep_every,
        signal_every: cfg.signal_every,
        delay_inside,
        delay_before,
        rseq_off_every: cfg.rseq_off_every,
        slots: cfg.slots,
        scenarios: results,
        pass,
    };
    if args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| format!("cannot encode the results: {e}"))?;
        println!("{text}");
    } else {
        for r in report.scenarios.iter().filter(|r| r.status == "n/a") {
            print_line(r);
        }
        println!(
            "{} threads x {} reps, index {}, {}, {} slots, \
             yield/sleep/signal every {}/{}/{}, delay {} inside/{} before, \
             rseq off in every {} workers",
            report.threads,
            report.reps,
            report.index,
            report.path,
            report.slots,
            report.yield_every,
            report.sleep_every,
            report.signal_every,
            report.delay_inside,
            report.delay_before,
            report.rseq_off_every,
        );
    }
    if pass {
        Ok(())
    } else {
        let failed: Vec<&str> = report
            .scenarios
            .iter()
            .filter(|r| r.status == "FAIL")
            .map(|r| r.name)
            .collect();
        Err(format!("stress failed: {}", failed.join(", ")))
    }
}

fn print_line(r: &ScenarioResult) {
    println!(
        "{:<7} {:<10} {:>10} ops {:>9} aborts {:>8} empty {:>8} signals {:>9.1} ms  {}",
        r.status, r.name, r.ops, r.aborts, r.empty, r.signals, r.elapsed_ms, r.detail
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_128_bytes_apart() {
        let l = lines(3);
        assert_eq!(std::mem::size_of::<Line<AtomicI64>>(), 128);
        assert_eq!(l[0].0.as_ptr() as usize % 128, 0);
    }
}
