//! `rseq::add_current`, the add that reads the index inside its section:
//! exact totals with both indexes, aborts that really happen (two threads
//! pinned to one CPU and signalled), an add in a signal handler that
//! interrupted one, a `fork` child, index values past the array, and
//! `PerCpuCounter`, which is built on it. The whole file runs again in a
//! re-executed copy under a seccomp filter that makes rseq fail with ENOSYS:
//! there `add_current` has no area, returns `false` and writes nothing, and
//! the tests' shared words take every add.

use ktl::percpu::PerCpuCounter;
use ktl::rseq::{self, Index};
use ktl_testkit::affinity::{allowed_cpus, pin};
use ktl_testkit::{fork, signals, without_rseq};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

/// One word per possible CPU, each on its own pair of cache lines.
#[repr(C, align(128))]
#[derive(Default)]
struct Word(AtomicI64);

/// Per-CPU words, and the shared word that takes the adds `add_current`
/// refuses (a thread without an area).
struct Counter {
    words: Vec<Word>,
    shared: AtomicI64,
}

impl Counter {
    fn new() -> Arc<Counter> {
        let n = ktl::cpu::possible_cpus().expect("possible CPUs") as usize;
        Arc::new(Counter {
            words: (0..n).map(|_| Word::default()).collect(),
            shared: AtomicI64::new(0),
        })
    }

    /// One add; `true` when it went to a per-CPU word.
    fn add(&self, index: Index, count: i64) -> bool {
        let base = self.words[0].0.as_ptr().cast::<u8>();
        // SAFETY: word `i` is the aligned AtomicI64 at `base + i *
        // size_of::<Word>()` for every `i` below `words.len()` (`Word` is
        // `repr(C)`), alive as long as `self`; only this function writes the
        // words, and every test uses one index per counter.
        let done =
            unsafe { rseq::add_current(index, base, size_of::<Word>(), self.words.len(), count) };
        if !done {
            self.shared.fetch_add(count, Ordering::Relaxed);
        }
        done
    }

    fn per_cpu(&self) -> i64 {
        self.words.iter().map(|w| w.0.load(Ordering::Relaxed)).sum()
    }

    fn total(&self) -> i64 {
        self.per_cpu() + self.shared.load(Ordering::Relaxed)
    }
}

/// Whether this process runs critical sections for `index`; says so when
/// not.
fn sections(test: &str, index: Index) -> bool {
    let live = rseq::start(index).is_some_and(|s| s.path() == rseq::Path::CriticalSections);
    if !live {
        eprintln!(
            "{test}: no critical sections for {index:?} here ({}); add_current must refuse every add",
            rseq::path()
        );
    }
    live
}

/// `n` adds of 1; returns how many went to a per-CPU word.
fn add_loop(c: &Counter, index: Index, n: u64) -> u64 {
    (0..n).filter(|_| c.add(index, 1)).count() as u64
}

#[test]
fn unpinned_threads_sum_exactly_with_both_indexes() {
    for index in [Index::CpuId, Index::MmCid] {
        let live = sections("unpinned_threads_sum_exactly_with_both_indexes", index);
        let c = Counter::new();
        let n: u64 = 1_000_000;
        let threads = 4 * allowed_cpus().len();
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || add_loop(&c, index, n))
            })
            .collect();
        let per_cpu: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        let want = threads as u64 * n;
        assert_eq!(c.total(), want as i64, "{index:?}: no lost update");
        assert_eq!(c.per_cpu(), per_cpu as i64, "{index:?}");
        if live {
            assert_eq!(per_cpu, want, "{index:?}: every add on a per-CPU word");
        } else {
            assert_eq!(per_cpu, 0, "{index:?}: no word written without an area");
        }
        if live && index == Index::MmCid {
            let used = c
                .words
                .iter()
                .rposition(|w| w.0.load(Ordering::Relaxed) != 0);
            assert!(
                used.unwrap_or(0) < allowed_cpus().len(),
                "mm_cid word {used:?} used"
            );
        }
    }
}

extern "C" fn on_signal(_: libc::c_int) {}

#[test]
fn two_threads_on_one_cpu_abort_and_lose_nothing() {
    const TEST: &str = "two_threads_on_one_cpu_abort_and_lose_nothing";
    let live = sections(TEST, Index::CpuId);
    signals::install(libc::SIGUSR1, on_signal);
    let cpu = allowed_cpus()[0];
    let c = Counter::new();
    // Each worker adds in rounds until it has seen an abort (or a time
    // cap). A section of a few instructions is rarely where a preemption
    // or a signal lands: on an Intel Xeon (family 6 model 207) one run in
    // five saw no abort in 80,000,000 adds and about 3,800 signals (half a
    // second) under the earlier cap of 200 rounds; 20 s makes that chance
    // negligible, and a run that aborts early stops early.
    const ROUND: u64 = 200_000;
    const CAP: std::time::Duration = std::time::Duration::from_secs(20);
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let c = c.clone();
            std::thread::spawn(move || {
                pin(cpu);
                let started = std::time::Instant::now();
                let mut added = 0;
                loop {
                    add_loop(&c, Index::CpuId, ROUND);
                    added += ROUND;
                    if !live
                        || (rseq::aborts() > 0 && added >= 10 * ROUND)
                        || started.elapsed() > CAP
                    {
                        break;
                    }
                }
                (added, rseq::aborts())
            })
        })
        .collect();
    let (results, sent) =
        signals::signal_until_done(workers, libc::SIGUSR1, std::time::Duration::from_micros(20));
    let added: u64 = results.iter().map(|r| r.0).sum();
    let aborts: u64 = results.iter().map(|r| r.1).sum();
    assert_eq!(c.total(), added as i64, "no update may be lost");
    if live {
        assert_eq!(
            c.words[cpu].0.load(Ordering::Relaxed),
            added as i64,
            "all on the pinned CPU's word"
        );
        assert!(
            aborts > 0,
            "{added} adds and {sent} signals caused no abort"
        );
    }
    eprintln!("{aborts} aborts in {added} adds, {sent} signals");
}

/// The counter shared with the signal handler below.
static HANDLER_COUNTER: std::sync::OnceLock<Arc<Counter>> = std::sync::OnceLock::new();
static HANDLER_ADDS: AtomicI64 = AtomicI64::new(0);

/// Set by the worker once it has made its first add: a signal handler must
/// not make a thread's first call of ktl (it allocates where ktl owns the
/// areas, and one that interrupts the thread inside `malloc` deadlocks).
static HANDLER_WORKER_SET_UP: AtomicBool = AtomicBool::new(false);
/// Signals the handler saw before that.
static EARLY_SIGNALS: AtomicI64 = AtomicI64::new(0);

extern "C" fn add_in_handler(_: libc::c_int) {
    if !HANDLER_WORKER_SET_UP.load(Ordering::Relaxed) {
        EARLY_SIGNALS.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if let Some(c) = HANDLER_COUNTER.get() {
        // The same operation as the interrupted thread's: the kernel aborts
        // the interrupted section when it delivers the signal, so the
        // handler's section runs alone on the word.
        c.add(Index::CpuId, 1);
        HANDLER_ADDS.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn an_add_in_a_signal_handler_that_interrupted_one() {
    sections(
        "an_add_in_a_signal_handler_that_interrupted_one",
        Index::CpuId,
    );
    let c = HANDLER_COUNTER.get_or_init(Counter::new).clone();
    signals::install(libc::SIGUSR2, add_in_handler);
    let n: u64 = 5_000_000;
    // The worker is set up (its first add made) before the first signal.
    // (Signalled from its start, in the KTLS guest with ktl owning the areas
    // under a loaded host, the handler made the thread's first call, whose
    // allocation interrupted the thread's own: the run hung for 300 s. The
    // check of EARLY_SIGNALS below failed then too.)
    let worker = {
        let c = c.clone();
        let first = c.clone();
        signals::spawn_set_up(
            move || {
                first.add(Index::CpuId, 1);
                HANDLER_WORKER_SET_UP.store(true, Ordering::Relaxed);
            },
            move || {
                add_loop(&c, Index::CpuId, n - 1);
                rseq::aborts()
            },
        )
    };
    let (results, sent) = signals::signal_until_done(
        vec![worker],
        libc::SIGUSR2,
        std::time::Duration::from_micros(10),
    );
    let aborts = results[0];
    let in_handler = HANDLER_ADDS.load(Ordering::Relaxed);
    assert_eq!(
        EARLY_SIGNALS.load(Ordering::Relaxed),
        0,
        "signals reached the worker before its first add"
    );
    assert!(in_handler > 0, "{sent} signals, no add in the handler");
    assert_eq!(
        c.total(),
        n as i64 + in_handler,
        "no update lost between thread and handler"
    );
    eprintln!("{in_handler} adds in handlers, {aborts} aborts, {sent} signals");
}

#[test]
fn adds_work_in_a_fork_child() {
    let live = sections("adds_work_in_a_fork_child", Index::CpuId);
    let c = Counter::new();
    add_loop(&c, Index::CpuId, 10);
    // The child only adds and reads memory.
    fork::in_fork_child(|| {
        let per_cpu = add_loop(&c, Index::CpuId, 1000);
        c.total() == 1010 && (per_cpu == 1000) == live
    });
    assert_eq!(c.total(), 10, "the child's updates stay in the child");
}

#[test]
fn index_values_past_the_words_add_nothing() {
    let live = sections("index_values_past_the_words_add_nothing", Index::CpuId);
    let cpu = *allowed_cpus().last().unwrap();
    let c = Counter::new();
    std::thread::scope(|s| {
        s.spawn(|| {
            pin(cpu);
            let base = c.words[0].0.as_ptr().cast::<u8>();
            // SAFETY: the words below each `len` are valid, and only
            // `add_current` indexed by CPU writes them (here and below).
            let none = unsafe { rseq::add_current(Index::CpuId, base, size_of::<Word>(), 0, 1) };
            assert!(!none, "no word at all");
            // SAFETY: as above.
            let short = unsafe { rseq::add_current(Index::CpuId, base, size_of::<Word>(), cpu, 1) };
            assert!(!short, "CPU {cpu} is past {cpu} words");
            // SAFETY: as above.
            let fits =
                unsafe { rseq::add_current(Index::CpuId, base, size_of::<Word>(), cpu + 1, 5) };
            assert_eq!(fits, live, "CPU {cpu} has a word among {} words", cpu + 1);
        });
    });
    let want = if live { 5 } else { 0 };
    assert_eq!(c.words[cpu].0.load(Ordering::Relaxed), want);
    assert_eq!(c.per_cpu(), want, "nothing written past the words");
}

#[test]
fn per_cpu_counter_counts_exactly() {
    sections("per_cpu_counter_counts_exactly", Index::CpuId);
    for index in [Index::CpuId, Index::MmCid] {
        let c = Arc::new(PerCpuCounter::with_index(index));
        let threads = 3 * allowed_cpus().len();
        let n = 300_000;
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for i in 0..n {
                        if i % 3 == 2 {
                            c.sub(1);
                        } else {
                            c.add(2);
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        // Per thread: 200,000 adds of 2 and 100,000 subtractions of 1.
        assert_eq!(c.sum(), threads as i64 * 300_000, "{index:?}");
    }
}

#[test]
fn every_test_passes_without_rseq() {
    without_rseq::rerun("every_test_passes_without_rseq", 7);
}
