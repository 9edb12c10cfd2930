//! First calls interrupted by signal handlers that call ktl themselves.
//!
//! A process's first call decides the owner of the areas, parses the vDSO
//! and maps the random states; a thread's first call registers its area
//! where ktl owns them. A signal handler that interrupts one of those and
//! calls ktl on the same thread must neither wait for the initialization it
//! interrupted (a deadlock) nor break its bookkeeping.
//!
//! Each trial makes a first call under a storm of signals (a POSIX timer
//! aimed at the calling thread, re-armed by each handler at the densest pace
//! that still leaves the thread time to progress: a few microseconds on bare
//! metal, more in virtual machines) whose handler makes the same call, and
//! counts the signals that landed inside the first call.
//! The first calls of a process run in fresh processes: a copy of this test
//! binary forks one per trial and kills it if it has not finished within
//! seconds, which fails the test. The first calls of threads run in many new
//! threads of one process where ktl owns the areas
//! (`GLIBC_TUNABLES=glibc.pthread.rseq=0`), and a thread that does not finish
//! in time fails the test too.

use ktl_testkit::{seccomp, signals, storm};

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use ktl::Owner;
use ktl::cpu::Source;
use storm::{Storm, Trial};

/// Set in the re-executed copy of this binary: which test it runs.
const CHILD_ENV: &str = "KTL_FIRST_CALL_CHILD";
/// Makes ktl, not glibc, own the areas.
const KTL_OWNS: (&str, &str) = ("GLIBC_TUNABLES", "glibc.pthread.rseq=0");
/// The storm's signal (no other code in these processes uses it).
const SIG: libc::c_int = libc::SIGUSR1;
/// A trial, or a thread's first call, that takes longer has deadlocked.
const HANG: Duration = Duration::from_secs(5);
/// The longest a re-executed copy may run.
const CHILD_LIMIT: Duration = Duration::from_secs(120);
/// First calls that must have had signals land inside them.
const WANT_HIT: u64 = 150;
/// Trials of a process's first call: signals land inside most of them, all
/// over the call, so that the narrowest windows are hit too.
const PROCESS_TRIALS: u64 = 600;
/// New threads: signals land inside the first call of one in ten to thirty.
const THREADS: u64 = 4000;
/// Where a trial is slow (an emulator), fewer trials do once `WANT_HIT` of
/// them were interrupted and this much time has passed.
const BUDGET: Duration = Duration::from_secs(3);

/// Whether to run another trial, after `done` of which `hit` were
/// interrupted; `want` is the usual number of trials.
fn more(done: u64, hit: u64, want: u64, started: Instant) -> bool {
    if hit < WANT_HIT {
        return done < 10 * want;
    }
    done < want && started.elapsed() < BUDGET
}

/// The time between the end of a handler and the next signal, in
/// nanoseconds: calibrated for the machine ([`storm::calibrate`]).
static PACE: AtomicU64 = AtomicU64::new(10_000);

fn pace() -> Duration {
    Duration::from_nanos(PACE.load(SeqCst))
}

/// Installs `handler` for the storm's signal and calibrates the pace.
fn prepare(handler: extern "C" fn(libc::c_int)) {
    CPUS.store(possible_cpus(), SeqCst);
    signals::install(SIG, handler);
    let pace = storm::calibrate(SIG);
    PACE.store(pace.as_nanos() as u64, SeqCst);
    eprintln!("storm pace {pace:?}");
}

fn is_child(test: &str) -> bool {
    std::env::var(CHILD_ENV).is_ok_and(|v| v == test)
}

/// The test body of `test`: in the copy, `body`; here, the copy with `env`.
fn run(test: &str, env: &[(&str, &str)], body: impl FnOnce()) {
    if is_child(test) {
        body();
    } else if storm::native_kernel(test) {
        storm::run_self(test, CHILD_ENV, env, CHILD_LIMIT);
    }
}

/// One past the highest possible CPU number (4096 if unknown): no CPU
/// number an accessor returns reaches it.
fn possible_cpus() -> u32 {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|list| {
            let last = list.trim().rsplit([',', '-']).next()?;
            last.parse::<u32>().ok().map(|n| n + 1)
        })
        .unwrap_or(4096)
}

/// The bound of CPU numbers, set before any trial.
static CPUS: AtomicU32 = AtomicU32::new(4096);

// The first calls of a process.

/// A process's first ktl call, which its signal handler repeats (`Layout`
/// is repeated as `cpu_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    CpuId = 1,
    Layout = 2,
    Fill = 3,
    Fence = 4,
}

/// The call in progress in the trial process (0: none), for its handler.
static IN_CALL: AtomicU8 = AtomicU8::new(0);
/// Signals that landed inside the call.
static LANDED: AtomicU64 = AtomicU64::new(0);
/// Handler calls that gave a wrong answer.
static BAD: AtomicU64 = AtomicU64::new(0);

extern "C" fn repeat_the_call(_: libc::c_int) {
    storm::keeping_errno(|| {
        let call = IN_CALL.load(SeqCst);
        if call == 0 {
            storm::rearm();
            return;
        }
        LANDED.fetch_add(1, SeqCst);
        let ok = if call == Call::Fill as u8 {
            let mut b = [0u8; 16];
            ktl::random::fill(&mut b).is_ok() && b != [0u8; 16]
        } else if call == Call::Fence as u8 {
            // Any answer, without waiting: Unavailable while the
            // interrupted call decides.
            let _ = ktl::rseq::fence::kind();
            true
        } else {
            ktl::cpu_id() < CPUS.load(SeqCst)
        };
        if !ok {
            BAD.fetch_add(1, SeqCst);
        }
        storm::rearm();
    });
}

/// One trial, in a fresh process that has not called ktl: `call` as its
/// first call, under a storm whose first signal comes after `first`.
/// Records the signals that landed inside the call in `shared`.
fn trial(
    call: Call,
    deny_rseq: Option<&[libc::sock_filter]>,
    first: Duration,
    shared: &storm::Shared,
) -> i32 {
    if let Some(program) = deny_rseq {
        // SAFETY: a valid program, alive for the call; this process only.
        unsafe { seccomp::install(program, false) }.expect("seccomp");
    }
    let storm = Storm::start(SIG, first, pace());
    IN_CALL.store(call as u8, SeqCst);
    let ok = match call {
        Call::CpuId => ktl::cpu_id() < CPUS.load(SeqCst),
        Call::Layout => ktl::layout().active_size <= 4096,
        Call::Fill => {
            let mut b = [0u8; 32];
            ktl::random::fill(&mut b).is_ok() && b != [0u8; 32]
        }
        Call::Fence => {
            // What an uninterrupted decision gives here: the handlers'
            // answers were not cached in its place.
            ktl::rseq::fence::kind() == fence_kind_from_the_kernel()
        }
    };
    IN_CALL.store(0, SeqCst);
    drop(storm);
    shared.counts[0].store(LANDED.load(SeqCst), SeqCst);
    assert!(ok, "the first call's answer");
    assert_eq!(BAD.load(SeqCst), 0, "wrong answers in the handler");
    check_what_the_first_call_set_up(call, deny_rseq.is_some());
    0
}

/// The fence kind that the kernel's `MEMBARRIER_CMD_QUERY` answer implies
/// (registration, which ktl also makes, is not expected to fail here).
fn fence_kind_from_the_kernel() -> ktl::rseq::fence::FenceKind {
    use ktl::rseq::fence::FenceKind;
    // SAFETY: MEMBARRIER_CMD_QUERY takes plain integers and reads no memory.
    let cmds = unsafe { libc::syscall(libc::SYS_membarrier, 0, 0, 0) };
    let has = |bits: libc::c_long| cmds >= 0 && cmds & bits == bits;
    if has((1 << 7) | (1 << 8)) {
        FenceKind::Rseq
    } else if has((1 << 3) | (1 << 4)) {
        FenceKind::Expedited
    } else {
        FenceKind::Unavailable
    }
}

/// What the interrupted first call set up must be what an uninterrupted
/// one sets up: no handler may have cached a fallback in its place.
fn check_what_the_first_call_set_up(call: Call, rseq_denied: bool) {
    let layout = ktl::layout();
    let sources = ktl::cpu::sources();
    match layout.owner {
        Owner::Libc => assert_eq!(sources.cpu_id, Source::Area, "{sources:?}"),
        Owner::Ktl(_) => {
            // The deciding thread registered its area, once.
            let s = ktl::area::stats();
            assert_eq!((s.registered, s.register_failures), (1, 0), "{s:?}");
            assert_eq!(sources.cpu_id, Source::Area, "{sources:?}");
        }
        Owner::Unavailable(why) => {
            assert!(rseq_denied, "{why}");
            if cfg!(target_arch = "x86_64") {
                assert!(ktl::cpu::getcpu_vdso().is_some(), "x86_64 has vDSO getcpu");
            }
            let want = if ktl::cpu::getcpu_vdso().is_some() {
                Source::VdsoGetcpu
            } else {
                Source::GetcpuSyscall
            };
            assert_eq!(sources.cpu_id, want, "{sources:?}");
        }
    }
    if rseq_denied {
        assert!(
            matches!(layout.owner, Owner::Unavailable(_)),
            "{:?}",
            layout.owner
        );
    }
    if call == Call::Fill && ktl::vdso::getrandom_fn().is_some() {
        assert_eq!(ktl::random::path(), ktl::random::Path::Vdso);
        let fills = ktl::random::thread_fills();
        assert!(fills.vdso >= 1, "the first fill took the vDSO: {fills:?}");
    }
}

/// Forks trials of `calls` (in turn), as many as [`more`] says; each must
/// finish within `HANG`, and signals must have landed inside the first call
/// of `WANT_HIT` of them.
fn process_trials(test: &str, calls: &[Call], deny_rseq: bool) {
    let shared = storm::shared_page();
    prepare(repeat_the_call);
    let program = deny_rseq.then(|| seccomp::deny_rseq_program(libc::ENOSYS));
    let started = Instant::now();
    let (mut trials, mut hit, mut landed) = (0u64, 0u64, 0u64);
    while more(trials, hit, PROCESS_TRIALS, started) {
        let call = calls[trials as usize % calls.len()];
        // The first signal at another moment in each trial, so that the
        // signals land all over the first call.
        let first = pace() * (trials % 32) as u32 / 8;
        shared.counts[0].store(0, SeqCst);
        let outcome = storm::fork_trial(HANG, || trial(call, program.as_deref(), first, shared));
        assert_eq!(
            outcome,
            Trial::Exited(0),
            "trial {trials} ({call:?}, first signal after {first:?}; {hit} earlier trials \
             had signals inside the first call). Hung: a handler that interrupted the \
             first call deadlocked"
        );
        let n = shared.counts[0].load(SeqCst);
        landed += n;
        hit += u64::from(n > 0);
        trials += 1;
    }
    eprintln!(
        "{test}: {trials} trials in {:?}; signals landed inside the first call in {hit} \
         of them ({landed} signals)",
        started.elapsed()
    );
    assert!(hit >= WANT_HIT, "too few first calls were interrupted");
}

/// Caught: a handler that interrupted the owner decision (a `OnceLock`) and
/// called `cpu_id` waited for the decision on its own thread for ever.
/// Failed on e5be285: trial 1 hung and was killed after 5 s.
#[test]
fn first_cpu_id_or_layout_of_a_process_interrupted_by_cpu_id() {
    const TEST: &str = "first_cpu_id_or_layout_of_a_process_interrupted_by_cpu_id";
    run(TEST, &[], || {
        process_trials(TEST, &[Call::CpuId, Call::Layout], false);
    });
}

/// Caught: the same deadlock where ktl owns the areas. Failed on e5be285:
/// trial 3 hung.
#[test]
fn first_cpu_id_or_layout_where_ktl_owns_the_areas_interrupted_by_cpu_id() {
    const TEST: &str = "first_cpu_id_or_layout_where_ktl_owns_the_areas_interrupted_by_cpu_id";
    run(TEST, &[KTL_OWNS], || {
        process_trials(TEST, &[Call::CpuId, Call::Layout], false);
    });
}

/// Caught: a handler that interrupted the first vDSO lookup (its own
/// `OnceLock`) and called `cpu_id` waited for it for ever. Failed on
/// e5be285: trial 1 hung; with only the vDSO part of the fix left out, it
/// still hangs.
#[test]
fn first_cpu_id_on_the_vdso_fallback_interrupted_by_cpu_id() {
    const TEST: &str = "first_cpu_id_on_the_vdso_fallback_interrupted_by_cpu_id";
    // No rseq at all: glibc does not register, and the trial's filter makes
    // the system call fail with ENOSYS, so cpu_id sets up vDSO getcpu.
    run(TEST, &[KTL_OWNS], || {
        process_trials(TEST, &[Call::CpuId], true);
    });
}

/// Caught: a handler that interrupted the fence's first decision (a
/// `OnceLock`) and asked for the fence kind waited for it for ever. Failed
/// on e5be285: trial 33 hung.
#[test]
fn first_fence_kind_of_a_process_interrupted_by_fence_kind() {
    const TEST: &str = "first_fence_kind_of_a_process_interrupted_by_fence_kind";
    run(TEST, &[], || {
        process_trials(TEST, &[Call::Fence], false);
    });
}

/// Caught: `random::fill` initialized its `OnceLock` before it marked the
/// thread busy, so a handler's fill inside the first fill waited for it for
/// ever. Failed on e5be285: trial 9 hung.
#[test]
fn first_fill_of_a_process_interrupted_by_fills() {
    const TEST: &str = "first_fill_of_a_process_interrupted_by_fills";
    run(TEST, &[], || {
        process_trials(TEST, &[Call::Fill], false);
    });
}

// The first calls of threads, where ktl registers each thread's area.

thread_local! {
    /// Set while this thread's first call runs.
    static IN_FIRST: Cell<bool> = const { Cell::new(false) };
    /// Signals that landed inside it.
    static THREAD_LANDED: Cell<u64> = const { Cell::new(0) };
    /// 1 once the handler released this thread's area, 2 if that failed.
    static RELEASED: Cell<u8> = const { Cell::new(0) };
}

/// Whether the handler releases the thread's area (once) instead of
/// calling `cpu_id`.
static RELEASE_IN_HANDLER: AtomicBool = AtomicBool::new(false);

extern "C" fn in_a_thread(_: libc::c_int) {
    storm::keeping_errno(|| {
        if !IN_FIRST.with(Cell::get) {
            storm::rearm();
            return;
        }
        THREAD_LANDED.with(|c| c.set(c.get() + 1));
        if RELEASE_IN_HANDLER.load(SeqCst) && RELEASED.with(Cell::get) == 0 {
            let released = ktl::area::release_current_thread().is_ok();
            RELEASED.with(|c| c.set(if released { 1 } else { 2 }));
        } else if ktl::cpu_id() >= CPUS.load(SeqCst) {
            BAD.fetch_add(1, SeqCst);
        }
        storm::rearm();
    });
}

/// The body of new thread `i`: its first call under a storm, then its own
/// view of its registration. Returns the signals that landed inside the
/// call, whether the handler released the area, and what was wrong.
fn first_call_of_a_thread(i: u64, offset: isize) -> (u64, bool, Result<(), String>) {
    let first = pace() * (i % 32) as u32 / 16;
    let storm = Storm::start(SIG, first, pace());
    IN_FIRST.with(|c| c.set(true));
    let cpu = ktl::cpu_id();
    IN_FIRST.with(|c| c.set(false));
    drop(storm);
    let landed = THREAD_LANDED.with(Cell::get);
    let released = RELEASED.with(Cell::get);
    let live = ktl::area::thread_area().is_some();
    // SAFETY: `offset` is the areas' offset from `ktl::layout()`.
    let raw = unsafe { ktl::cpu::cpu_id_at(offset) } as i32;
    let source = ktl::cpu::sources().cpu_id;
    let view = format!(
        "thread {i} ({landed} signals inside its first call, first after {first:?}): \
         cpu_id {cpu}, thread_area live {live}, raw cpu_id {raw}, source {source:?}"
    );
    let verdict = match released {
        0 if cpu < CPUS.load(SeqCst) && live && raw >= 0 && source == Source::Area => Ok(()),
        0 => Err(format!("not registered and live: {view}")),
        1 if !live && raw < 0 && source != Source::Area => {
            match ktl::area::release_current_thread() {
                Ok(()) => Ok(()),
                Err(e) => Err(format!("released again: {e}: {view}")),
            }
        }
        1 => Err(format!("released in the handler, yet: {view}")),
        _ => Err(format!("the handler's release failed: {view}")),
    };
    (landed, released == 1, verdict)
}

/// Runs new threads, a few at a time, as many as [`more`] says; each must
/// finish its first call within `HANG`, and signals must have landed inside
/// the first call of `WANT_HIT` of them. Then checks the registration
/// counts.
fn thread_trials(test: &str, release: bool) {
    RELEASE_IN_HANDLER.store(release, SeqCst);
    prepare(in_a_thread);
    // This thread decides, outside any storm.
    let layout = ktl::layout();
    assert_eq!(layout.owner.to_string(), "ktl", "{:?}", layout.owner);
    let offset = layout.offset.expect("the areas' offset");
    let before = ktl::area::stats();
    let started = Instant::now();
    let (mut threads, mut hit, mut landed, mut released) = (0u64, 0u64, 0u64, 0u64);
    const BATCH: u64 = 4;
    while more(threads, hit, THREADS, started) {
        let workers: Vec<_> = (threads..threads + BATCH)
            .map(|i| {
                (
                    i,
                    std::thread::spawn(move || first_call_of_a_thread(i, offset)),
                )
            })
            .collect();
        for (i, w) in workers {
            let deadline = Instant::now() + HANG;
            while !w.is_finished() {
                if Instant::now() > deadline {
                    eprintln!(
                        "{test}: thread {i} hung in its first call: a handler that \
                         interrupted it deadlocked"
                    );
                    // SAFETY: ends the process at once; the parent reports it.
                    unsafe { libc::_exit(70) };
                }
                std::thread::sleep(Duration::from_micros(100));
            }
            let (n, was_released, verdict) = w.join().expect("the thread");
            if let Err(e) = verdict {
                panic!("{e}");
            }
            landed += n;
            hit += u64::from(n > 0);
            released += u64::from(was_released);
        }
        threads += BATCH;
    }
    assert_eq!(BAD.load(SeqCst), 0, "wrong answers in the handler");
    let s = ktl::area::stats();
    eprintln!(
        "{test}: {threads} threads in {:?}; signals landed inside the first call of {hit} \
         ({landed} signals); {released} released by the handler; {s:?}",
        started.elapsed()
    );
    assert_eq!(s.register_failures, before.register_failures, "{s:?}");
    assert_eq!(s.unregister_failures, before.unregister_failures, "{s:?}");
    let registered = s.registered - before.registered;
    let unregistered = s.unregistered - before.unregistered;
    // Every thread has exited: each registration made was undone.
    assert_eq!(registered, unregistered, "{s:?}");
    if !release {
        assert_eq!(registered, threads, "one registration per thread: {s:?}");
    }
    assert!(hit >= WANT_HIT, "too few first calls were interrupted");
}

/// Caught: a handler that registered the thread's area first made the
/// interrupted registration get `EBUSY` and record `FAILED` while the area
/// was live, so neither release nor thread exit unregistered it. Failed on
/// e5be285: a thread's area was registered but ktl said it was not (or the
/// vDSO `OnceLock` hung).
#[test]
fn first_registration_of_new_threads_interrupted_by_cpu_id() {
    const TEST: &str = "first_registration_of_new_threads_interrupted_by_cpu_id";
    run(TEST, &[KTL_OWNS], || thread_trials(TEST, false));
}

/// Caught: a handler that released the area while the thread was
/// registering it left the registration live and recorded. Failed on
/// e5be285: "released in the handler, yet: thread_area live true", or a
/// hang.
#[test]
fn release_from_a_handler_during_a_first_registration() {
    const TEST: &str = "release_from_a_handler_during_a_first_registration";
    run(TEST, &[KTL_OWNS], || thread_trials(TEST, true));
}
