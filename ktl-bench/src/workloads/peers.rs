//! The `peers` group: ktl's restartable sequences next to librseq, the
//! reference C library, on the scenarios of the kernel's rseq `param_test`.
//!
//! librseq's `tests/param_test_benchmark` runs those scenarios without their
//! checks' overhead. For each of increment, spinlock, list, buffer and
//! memcpy, at 2 threads, the group has two rows:
//!
//! - `<scenario>: ktl::rseq (2 threads)`: the same work written with ktl's
//!   public API ([`ktl::rseq::retry`] around the operation the scenario
//!   uses), on the same data, timed from the spawn of its 2 threads to their
//!   join;
//! - `<scenario>: librseq param_test_benchmark (2 threads)`: the whole
//!   process `param_test_benchmark -T <x> -t 2 -r <reps>` of a built librseq
//!   tree, timed from its spawn to its exit (so its start, its setup and its
//!   own final check are part of it).
//!
//! Both sides run the same number of repetitions per thread, and the time of
//! a row is the wall time of a run divided by those repetitions: the time of
//! one repetition in one thread while the other thread runs the same. The
//! two rows of a scenario are sampled in turn (ktl, librseq, ktl, librseq,
//! ...), so a slow phase of the machine hits both; each ktl row's ratio is
//! taken against the librseq row of its scenario, and a promise per scenario
//! holds ktl to at most 1.0x librseq (see `checks`).
//!
//! The repetitions come from librseq: once per scenario, before the samples,
//! a run of 0 repetitions measures the process's fixed cost (the faster of
//! two), then runs of 4096, 8192, ... repetitions go on until the
//! repetitions take a tenth of the sample time; the count is then scaled so
//! that a whole run of librseq lasts about the sample time (`--sample-ms`),
//! and at least a quarter of it is repetitions. ktl's row takes the same
//! count.
//!
//! What each thread does per repetition, on each side (the index is the CPU
//! number, `cpu_id_start`: param_test's default; the `mm_cid` builds are
//! other programs; the threads are not pinned; every operation is retried
//! after an abort):
//!
//! | scenario | per repetition | retried also |
//! |---|---|---|
//! | increment | [`rseq::add`] of 1 to the CPU's counter | - |
//! | spinlock | [`rseq::cmpeqv_storev`] of the CPU's lock from 0 to 1, an acquire fence, a plain increment of the count beside it, a release store of 0 | on a failed compare (the lock is held) |
//! | list | pop the CPU's list with [`rseq::cmpnev_storeoffp_load`] (nothing to do when it is empty); push the node back onto the list of the CPU the thread is then on with [`rseq::cmpeqv_storev`] of the head, the node's `next` set to the head read | the push, on a failed compare |
//! | buffer | pop the top pointer of the CPU's buffer with [`rseq::cmpeqv_cmpeqv_storev`] (the count, and the pointer under it, unchanged; nothing when empty); push it back with [`rseq::cmpeqv_trystorev_storev`] (the pointer past the count, then the count, relaxed) | both, on a failed compare |
//! | memcpy | copy the top 16-byte item out of the CPU's buffer with [`rseq::cmpeqv_trymemcpy_storev`] (the count decremented, relaxed; nothing when empty); copy it back in with the same operation (count incremented, relaxed) | both, on a failed compare |
//!
//! The data, as param_test lays it out: one instance per possible CPU, 64
//! KiB apart, from ktl's per-CPU memory pool
//! ([`ktl::percpu::mempool::MemPool`], with the stride and CPU count of
//! librseq's pool), zeroed, then filled as param_test fills it: the counter
//! (increment), the lock and its count side by side (spinlock), the list's
//! head with 100 nodes per CPU (`data` 1 to 100, each node allocated on its
//! own, `next` after `data`), the buffer's count and a pointer array with
//! room for every CPU's 100 items, the first 100 holding items allocated on
//! their own (`data` 1 to 100), and the memcpy buffer's count and an array
//! with room for every CPU's 100 16-byte items, the first 100 holding
//! `(j, j + 1)` for `j` from 1 to 100. The arrays are zeroed memory that the
//! allocator need not touch until it is written, as param_test's `malloc`.
//!
//! The ktl side is set up before its threads start and checked after they
//! are joined, outside the timed part, in every run: the counters must sum
//! to threads x repetitions and every lock be free; every node must be on
//! one list once; every item in one buffer once (memcpy: intact, and each
//! of the 100 values as many times as there are CPUs). A failed check fails
//! `ktl bench` after the report, like the other groups' exactness checks;
//! so does a librseq run that does not exit with 0 (param_test checks its
//! own sums and aborts when they are wrong).
//!
//! librseq is found through `ktl bench --librseq DIR` or the environment
//! variable `KTL_LIBRSEQ=DIR` ([`ENV`]): a built librseq tree, whose
//! program is `DIR/tests/param_test_benchmark` ([`Librseq::locate`]). When
//! that file is libtool's wrapper script (a shared build), the rows run the
//! binary it would run, `DIR/tests/.libs/param_test_benchmark`, with
//! `DIR/src/.libs` first on `LD_LIBRARY_PATH`, as the wrapper does: the
//! shell's start is then not timed. Without librseq, every row of the group
//! is "n/a" with the way to get it ([`NOT_GIVEN`]), and the promises are not
//! computed. The group is not part of `--quick`.
//!
//! The criterion benches do not measure this group: its librseq rows time
//! whole processes, which criterion's per-iteration model does not fit.

use crate::harness::{Calibrate, OpCount, Outcome, Row, TimedLoop, counted, verified};
use ktl::percpu::mempool::{MemPool, PerCpuItem, Slots};
use ktl::rseq::{self, Commit, Failure, Index, Start, WordStack};
use std::cell::{Cell, OnceCell, RefCell};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::ptr::{self, NonNull};
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, AtomicPtr, AtomicU64, Ordering, fence};
use std::time::{Duration, Instant};

/// The group's name.
pub const GROUP: &str = "peers";

/// The environment variable that names a built librseq tree, when
/// `--librseq` does not.
pub const ENV: &str = "KTL_LIBRSEQ";

/// The threads of every row (param_test's `-t`).
pub const THREADS: u32 = 2;

/// The items of each CPU's list or buffer at the start (param_test's 100).
pub const ITEMS_PER_CPU: usize = 100;

/// The program of a built librseq tree, relative to the tree.
pub const PROGRAM: &str = "tests/param_test_benchmark";

/// What libtool's wrapper script runs, relative to the tree.
const LIBTOOL_PROGRAM: &str = "tests/.libs/param_test_benchmark";

/// The tree's shared library, which that program needs.
const LIBTOOL_LIBRARY: &str = "src/.libs";

/// The reason of the rows when no librseq tree is given: how to get one.
pub const NOT_GIVEN: &str = "librseq not given: build librseq (./bootstrap && \
     ./configure --disable-numa && make in its tree), then pass --librseq DIR or set \
     KTL_LIBRSEQ=DIR";

/// The build commands, for the errors about a tree that is not built.
const BUILD: &str = "./bootstrap && ./configure --disable-numa && make";

/// A scenario of param_test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// A per-CPU counter incremented with [`rseq::add`].
    Increment,
    /// A per-CPU lock taken with [`rseq::cmpeqv_storev`], guarding a count.
    Spinlock,
    /// Per-CPU lists: pop with [`rseq::cmpnev_storeoffp_load`], push with
    /// [`rseq::cmpeqv_storev`].
    List,
    /// Per-CPU buffers of pointers: pop with [`rseq::cmpeqv_cmpeqv_storev`],
    /// push with [`rseq::cmpeqv_trystorev_storev`].
    Buffer,
    /// Per-CPU buffers of 16-byte items, copied out and in with
    /// [`rseq::cmpeqv_trymemcpy_storev`].
    Memcpy,
}

impl Scenario {
    /// The scenarios, in the order of the rows.
    pub const ALL: [Scenario; 5] = [
        Scenario::Increment,
        Scenario::Spinlock,
        Scenario::List,
        Scenario::Buffer,
        Scenario::Memcpy,
    ];

    /// The scenario's name, as in the rows' names.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Increment => "increment",
            Scenario::Spinlock => "spinlock",
            Scenario::List => "list",
            Scenario::Buffer => "buffer",
            Scenario::Memcpy => "memcpy",
        }
    }

    /// The scenario's letter for `param_test_benchmark -T`.
    pub fn flag(self) -> &'static str {
        match self {
            Scenario::Increment => "i",
            Scenario::Spinlock => "s",
            Scenario::List => "l",
            Scenario::Buffer => "b",
            Scenario::Memcpy => "m",
        }
    }

    /// The name of ktl's row.
    pub fn ktl_row(self) -> &'static str {
        match self {
            Scenario::Increment => "increment: ktl::rseq (2 threads)",
            Scenario::Spinlock => "spinlock: ktl::rseq (2 threads)",
            Scenario::List => "list: ktl::rseq (2 threads)",
            Scenario::Buffer => "buffer: ktl::rseq (2 threads)",
            Scenario::Memcpy => "memcpy: ktl::rseq (2 threads)",
        }
    }

    /// The name of ktl's second row, where the scenario has one: the same
    /// work through the operations that take a [`Start`] ([`rseq::start`],
    /// then a section that compares the index), where its first row uses
    /// the operations that read the index inside their section.
    pub fn ktl_start_row(self) -> Option<&'static str> {
        match self {
            Scenario::Increment => Some("increment (rseq::add in retry): ktl::rseq (2 threads)"),
            Scenario::Spinlock => {
                Some("spinlock (rseq::cmpeqv_storev in retry): ktl::rseq (2 threads)")
            }
            Scenario::List => Some(
                "list (rseq::cmpnev_storeoffp_load, cmpeqv_storev in retry): ktl::rseq (2 threads)",
            ),
            Scenario::Buffer => Some(
                "buffer (rseq::cmpeqv_cmpeqv_storev, cmpeqv_trystorev_storev in retry): ktl::rseq \
                 (2 threads)",
            ),
            Scenario::Memcpy => None,
        }
    }

    /// The name of librseq's row.
    pub fn librseq_row(self) -> &'static str {
        match self {
            Scenario::Increment => "increment: librseq param_test_benchmark (2 threads)",
            Scenario::Spinlock => "spinlock: librseq param_test_benchmark (2 threads)",
            Scenario::List => "list: librseq param_test_benchmark (2 threads)",
            Scenario::Buffer => "buffer: librseq param_test_benchmark (2 threads)",
            Scenario::Memcpy => "memcpy: librseq param_test_benchmark (2 threads)",
        }
    }

    /// The promise that compares the two rows.
    pub fn check_name(self) -> &'static str {
        match self {
            Scenario::Increment => {
                "ktl increment with 2 threads costs at most 1.0x librseq's param_test_benchmark"
            }
            Scenario::Spinlock => {
                "ktl spinlock with 2 threads costs at most 1.0x librseq's param_test_benchmark"
            }
            Scenario::List => {
                "ktl list with 2 threads costs at most 1.0x librseq's param_test_benchmark"
            }
            Scenario::Buffer => {
                "ktl buffer with 2 threads costs at most 1.0x librseq's param_test_benchmark"
            }
            Scenario::Memcpy => {
                "ktl memcpy with 2 threads costs at most 1.0x librseq's param_test_benchmark"
            }
        }
    }

    /// What the check after each of ktl's runs holds the data to.
    fn exactness(self) -> &'static str {
        match self {
            Scenario::Increment => "the counters sum to threads x reps",
            Scenario::Spinlock => "the counts sum to threads x reps, every lock is free",
            Scenario::List => "every node is on one list, once",
            Scenario::Buffer => "every item is in one buffer, once",
            Scenario::Memcpy => "every item is in one buffer, once and intact",
        }
    }
}

/// The names of the group's rows, in order (whether or not they can run).
pub fn row_names() -> impl Iterator<Item = &'static str> {
    Scenario::ALL.into_iter().flat_map(|s| {
        [Some(s.ktl_row()), s.ktl_start_row(), Some(s.librseq_row())]
            .into_iter()
            .flatten()
    })
}

/// Where a librseq tree was named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// `--librseq DIR`.
    Option,
    /// `KTL_LIBRSEQ=DIR`.
    Env,
}

/// A built librseq tree: the program the `peers` rows run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Librseq {
    /// The tree, as given.
    dir: PathBuf,
    /// The program run: `DIR/tests/param_test_benchmark`, or the binary
    /// that it, libtool's wrapper script, would run.
    program: PathBuf,
    /// When the wrapper is bypassed: the tree's library directory, put
    /// first on `LD_LIBRARY_PATH`.
    library_path: Option<PathBuf>,
}

impl Librseq {
    /// The librseq tree that `option` (`--librseq DIR`) names, or else the
    /// environment's `env` (the value of `KTL_LIBRSEQ`; empty means unset);
    /// `None` when neither names one. Fails with what is wrong with the
    /// tree: no such directory, no `tests/param_test_benchmark` in it (not
    /// built), or one that is not an executable file.
    pub fn locate(option: Option<&Path>, env: Option<&OsStr>) -> Result<Option<Librseq>, String> {
        match (option, env.filter(|e| !e.is_empty())) {
            (Some(dir), _) => Librseq::at(dir, Source::Option).map(Some),
            (None, Some(dir)) => Librseq::at(Path::new(dir), Source::Env).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// The tree at `dir`, checked; errors name `source`.
    fn at(dir: &Path, source: Source) -> Result<Librseq, String> {
        let named = match source {
            Source::Option => format!("--librseq {}", dir.display()),
            Source::Env => format!("{ENV}={}", dir.display()),
        };
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(format!("{named}: not a directory (a built librseq tree)")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(format!(
                    "{named}: no such directory (give a built librseq tree)"
                ));
            }
            Err(e) => return Err(format!("{named}: cannot read it: {e}")),
        }
        let program = dir.join(PROGRAM);
        executable(&program).map_err(|why| match why {
            Missing::NotFound => format!(
                "{named}: {} does not exist: build librseq in that tree first ({BUILD})",
                program.display()
            ),
            Missing::Other(why) => format!("{named}: {}: {why}", program.display()),
        })?;
        // libtool's wrapper script (a shared build) is a shell script that
        // runs the real binary with the tree's library on the path: run that
        // binary the same way, so the shell's start is not timed.
        let script = starts_with(&program, b"#!");
        let real = dir.join(LIBTOOL_PROGRAM);
        if script && executable(&real).is_ok() {
            let lib = dir.join(LIBTOOL_LIBRARY);
            return Ok(Librseq {
                dir: dir.to_owned(),
                program: real,
                library_path: lib.is_dir().then_some(lib),
            });
        }
        Ok(Librseq {
            dir: dir.to_owned(),
            program,
            library_path: None,
        })
    }

    /// The tree, as given.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The program the rows run.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The library directory put first on `LD_LIBRARY_PATH`, when the tree's
    /// wrapper script is bypassed.
    pub fn library_path(&self) -> Option<&Path> {
        self.library_path.as_deref()
    }

    /// Runs `param_test_benchmark -T <scenario> -t 2 -r <reps>` and returns
    /// the time from its spawn to its exit, or why it failed (it could not
    /// start, or it did not exit with 0; its stderr is quoted).
    pub fn run(&self, scenario: Scenario, reps: u64) -> Result<Duration, String> {
        let (threads, r) = (THREADS.to_string(), reps.to_string());
        let mut command = Command::new(&self.program);
        command
            .args(["-T", scenario.flag(), "-t", &threads, "-r", &r])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(lib) = &self.library_path {
            let mut paths = OsString::from(lib);
            if let Some(old) = std::env::var_os("LD_LIBRARY_PATH").filter(|p| !p.is_empty()) {
                paths.push(":");
                paths.push(old);
            }
            command.env("LD_LIBRARY_PATH", paths);
        }
        let what = format!(
            "{} -T {} -t {threads} -r {r}",
            self.program.display(),
            scenario.flag()
        );
        let start = Instant::now();
        let out = command
            .output()
            .map_err(|e| format!("cannot run {what}: {e}"))?;
        let elapsed = start.elapsed();
        if out.status.success() {
            return Ok(elapsed);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stderr = stderr.trim();
        let tail: String = {
            let chars: Vec<char> = stderr.chars().collect();
            chars[chars.len().saturating_sub(400)..].iter().collect()
        };
        Err(if tail.is_empty() {
            format!("{what} failed ({})", out.status)
        } else {
            format!("{what} failed ({}): {tail}", out.status)
        })
    }

    /// The repetitions that make one run of `scenario` last about
    /// `target`: the fixed cost of a run (0 repetitions, the faster of
    /// two), then runs of 4096, 8192, ... repetitions until they take a
    /// tenth of `target` beyond it (that run repeated, the faster kept),
    /// scaled to `target` less the fixed cost, and at least a quarter of
    /// `target`.
    fn calibrate(&self, scenario: Scenario, target: Duration) -> Result<u64, String> {
        const FIRST: u64 = 1 << 12;
        const MAX: u64 = 1 << 36;
        let fixed = self.run(scenario, 0)?.min(self.run(scenario, 0)?);
        let probe = (target / 10).max(Duration::from_micros(100));
        let mut reps = FIRST;
        loop {
            let elapsed = self.run(scenario, reps)?;
            let mut work = elapsed.saturating_sub(fixed);
            if work >= probe {
                // A second run confirms the work: one slow run may be noise.
                work = work.min(self.run(scenario, reps)?.saturating_sub(fixed));
            }
            if work >= probe {
                let per_rep = work.as_secs_f64() / reps as f64;
                let want = target.saturating_sub(fixed).max(target / 4);
                let reps = (want.as_secs_f64() / per_rep).round();
                return Ok((reps as u64).clamp(1, MAX));
            }
            if reps >= MAX {
                return Err(format!(
                    "{} -T {} ran {reps} reps in {elapsed:?}, no longer than 0 reps ({fixed:?}): \
                     it does not seem to run them",
                    self.program.display(),
                    scenario.flag()
                ));
            }
            reps *= 2;
        }
    }
}

/// Whether the file at `path` starts with `magic` (false when it cannot be
/// read).
fn starts_with(path: &Path, magic: &[u8]) -> bool {
    use std::io::Read;
    let mut head = vec![0; magic.len()];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| head == magic)
}

/// Why a file is not a program to run.
enum Missing {
    /// It does not exist.
    NotFound,
    /// What else is wrong.
    Other(String),
}

/// Whether `path` is an executable file (some execute bit set).
fn executable(path: &Path) -> Result<(), Missing> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Missing::NotFound),
        Err(e) => Err(Missing::Other(format!("cannot read it: {e}"))),
        Ok(m) if !m.is_file() => Err(Missing::Other("not a file".to_owned())),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => Err(Missing::Other(format!(
            "not executable (mode {:o})",
            m.permissions().mode() & 0o7777
        ))),
        Ok(_) => Ok(()),
    }
}

/// The group's rows: for each scenario, ktl's row then librseq's, both of
/// 2 threads, not in the quick run, ktl's compared with librseq's. Without
/// `librseq`, or without an rseq start in this thread, every row is "n/a"
/// with the reason.
pub fn rows(librseq: Option<&Librseq>) -> Vec<Row> {
    let ready: Result<Rc<Librseq>, String> = match librseq {
        None => Err(NOT_GIVEN.to_owned()),
        Some(l) => match rseq::start(Index::CpuId) {
            Some(_) => Ok(Rc::new(l.clone())),
            None => Err(format!(
                "no rseq operation can run in this thread (owner: {})",
                super::owner_text(&ktl::layout().owner)
            )),
        },
    };
    let mut rows = Vec::new();
    for scenario in Scenario::ALL {
        let rows_of = match &ready {
            Ok(lib) => {
                // One calibration for the scenario's rows, made by the first
                // to ask.
                let reps: Rc<OnceCell<Result<u64, String>>> = Rc::default();
                let mut these = vec![ktl_row(scenario, calibration(lib, &reps, scenario))];
                if let Some(name) = scenario.ktl_start_row() {
                    these.push(ktl_row_of(
                        name,
                        scenario,
                        calibration(lib, &reps, scenario),
                        move |reps| run_ktl_start(scenario, reps),
                    ));
                }
                these.push(librseq_row(
                    scenario,
                    lib,
                    calibration(lib, &reps, scenario),
                ));
                these
            }
            Err(reason) => {
                let mut these =
                    vec![Row::unavailable(scenario.ktl_row(), GROUP, reason.clone()).ours()];
                if let Some(name) = scenario.ktl_start_row() {
                    these.push(Row::unavailable(name, GROUP, reason.clone()).ours());
                }
                these.push(Row::unavailable(
                    scenario.librseq_row(),
                    GROUP,
                    reason.clone(),
                ));
                these
            }
        };
        for mut row in rows_of {
            row.threads = THREADS;
            rows.push(
                row.in_quick_run(false)
                    .compared_to(scenario.librseq_row().to_owned()),
            );
        }
    }
    rows
}

/// The calibration of a scenario's rows: librseq's repetitions for the
/// sample time (computed once, in `reps`), as iterations of the shape.
fn calibration(
    lib: &Rc<Librseq>,
    reps: &Rc<OnceCell<Result<u64, String>>>,
    scenario: Scenario,
) -> Calibrate {
    let (lib, reps) = (Rc::clone(lib), Rc::clone(reps));
    Box::new(move |target, shape| {
        let reps = reps
            .get_or_init(|| lib.calibrate(scenario, target))
            .clone()?;
        Ok(reps.div_ceil(shape.calls_per_iter()).max(1))
    })
}

/// The failures of a row's runs, and how many runs there were.
#[derive(Default)]
struct Runs {
    runs: Cell<u64>,
    failures: RefCell<Vec<String>>,
}

impl Runs {
    /// Counts a run, and keeps its failure.
    fn record(&self, run: Result<Duration, String>) -> Duration {
        self.runs.set(self.runs.get() + 1);
        run.unwrap_or_else(|e| {
            self.failures.borrow_mut().push(e);
            Duration::ZERO
        })
    }

    /// What the runs verified (`done`, given the runs), or the failures.
    fn outcome(&self, done: impl FnOnce(u64) -> String) -> Result<String, String> {
        let runs = self.runs.get();
        let failures = self.failures.borrow();
        match failures.first() {
            None => Ok(done(runs)),
            Some(first) => Err(format!(
                "{} of {runs} runs failed; the first: {first}",
                failures.len()
            )),
        }
    }
}

/// ktl's row of `scenario`: each sample is one [`run_ktl`] of the
/// sample's repetitions (iterations x calls per iteration of the shape).
fn ktl_row(scenario: Scenario, calibrate: Calibrate) -> Row {
    ktl_row_of(scenario.ktl_row(), scenario, calibrate, move |reps| {
        run_ktl(scenario, reps)
    })
}

/// A ktl row named `name` of `scenario`, whose runs are `run`.
fn ktl_row_of(
    name: &'static str,
    scenario: Scenario,
    calibrate: Calibrate,
    run: impl Fn(u64) -> Result<Duration, String> + 'static,
) -> Row {
    let runs = Rc::new(Runs::default());
    let mine = Rc::clone(&runs);
    let run: TimedLoop = Box::new(move |iters, shape| {
        let reps = iters.saturating_mul(shape.calls_per_iter());
        mine.record(run(reps))
    });
    let count = OpCount::default();
    let check = move |ops: u64| {
        runs.outcome(|n| {
            format!(
                "{ops} operations in {n} runs, each exact ({})",
                scenario.exactness()
            )
        })
    };
    Row::timed(
        name,
        GROUP,
        counted(run, u64::from(THREADS), Rc::clone(&count)),
        Some(verified(name, count, None, check)),
    )
    .ours()
    .calibrated_by(calibrate)
}

/// librseq's row of `scenario`: each sample is one run of
/// `param_test_benchmark` with the sample's repetitions.
fn librseq_row(scenario: Scenario, lib: &Rc<Librseq>, calibrate: Calibrate) -> Row {
    let name = scenario.librseq_row();
    let runs = Rc::new(Runs::default());
    let (mine, lib) = (Rc::clone(&runs), Rc::clone(lib));
    let run: TimedLoop = Box::new(move |iters, shape| {
        let reps = iters.saturating_mul(shape.calls_per_iter());
        mine.record(lib.run(scenario, reps))
    });
    let count = OpCount::default();
    let check = move |ops: u64| {
        runs.outcome(|n| {
            format!("{ops} operations in {n} runs, each exited 0 (param_test checks its own sums)")
        })
    };
    Row::timed(
        name,
        GROUP,
        counted(run, u64::from(THREADS), Rc::clone(&count)),
        Some(verified(name, count, None, check)),
    )
    .calibrated_by(calibrate)
}

/// The line under the table about the group's rows, when one of them was
/// measured.
pub(crate) fn note(librseq: Option<&Librseq>, outcomes: &[Outcome]) -> Option<String> {
    let lib = librseq?;
    let measured = outcomes
        .iter()
        .any(|o| o.group == GROUP && o.result.is_ok());
    if !measured {
        return None;
    }
    let bypass = match lib.library_path() {
        Some(path) => format!(
            " (the tree's libtool wrapper bypassed, with {} on LD_LIBRARY_PATH)",
            path.display()
        ),
        None => String::new(),
    };
    Some(format!(
        "peers: time per rep of one thread; ktl's rows time their {THREADS} threads from spawn to \
         join, librseq's rows the whole process {}{bypass} from spawn to exit; both run the reps \
         calibrated on librseq (iterations per sample)",
        lib.program().display()
    ))
}

/// One CPU's lock and the count it guards (param_test's spinlock data).
#[repr(C)]
#[derive(Default)]
struct Locked {
    lock: AtomicI64,
    count: AtomicI64,
}

/// A list node (param_test's): its value, then the next node.
#[repr(C)]
struct Node {
    data: i64,
    next: AtomicPtr<Node>,
}

/// The offset of a node's `next`, for [`rseq::cmpnev_storeoffp_load`].
const NEXT: isize = std::mem::offset_of!(Node, next) as isize;

/// One CPU's list: its head.
#[repr(C)]
struct ListHead {
    head: AtomicPtr<Node>,
}

/// An item of the buffer (param_test's: a value allocated on its own).
#[repr(C)]
struct Item {
    data: i64,
}

/// One CPU's buffer: the count of items, and room for every item of every
/// CPU (its length is param_test's `buflen`). Its first three words are a
/// [`WordStack`] (the count as its length, then the array's length and
/// address), for the stack operations of buffer's first row; the second
/// row works on the count and the array directly.
#[repr(C)]
struct Buffer {
    offset: AtomicI64,
    cap: usize,
    items: *mut usize,
    array: Box<[AtomicPtr<Item>]>,
}

const _: () = assert!(
    std::mem::offset_of!(Buffer, offset) == std::mem::offset_of!(WordStack, len)
        && std::mem::offset_of!(Buffer, cap) == std::mem::offset_of!(WordStack, cap)
        && std::mem::offset_of!(Buffer, items) == std::mem::offset_of!(WordStack, items)
        && size_of::<AtomicI64>() == size_of::<usize>()
        && size_of::<AtomicPtr<Item>>() == size_of::<usize>()
);

// SAFETY: `items` is the address of `array`, which the buffer owns; the
// words behind it are written only under the operations' contracts (see
// the repetitions), as the array's atomics are.
unsafe impl Send for Buffer {}
// SAFETY: as above.
unsafe impl Sync for Buffer {}

/// An item of the memcpy buffer, as stored (param_test's: a value and the
/// value plus one).
#[repr(C)]
struct Stored {
    data1: AtomicI64,
    data2: AtomicU64,
}

/// The bytes of an item of the memcpy buffer, as a thread holds it.
type Copied = [u8; size_of::<Stored>()];

/// One CPU's memcpy buffer: the count of items, and room for every item of
/// every CPU.
struct CopyBuffer {
    offset: AtomicI64,
    array: Box<[Stored]>,
}

/// Types for which all-zero bytes are a value.
///
/// # Safety
///
/// All-zero bytes must be a valid value of the type.
unsafe trait Zeroable: Sized {}

// SAFETY: all-zero bytes are the null pointer.
unsafe impl<T> Zeroable for AtomicPtr<T> {}

// SAFETY: all-zero bytes are two zero integers.
unsafe impl Zeroable for Stored {}

/// `n` zeroed values, in memory that the allocator need not touch until it
/// is written (as param_test's `malloc` of its arrays).
fn zeroed<T: Zeroable>(n: usize) -> Result<Box<[T]>, String> {
    let layout = std::alloc::Layout::array::<T>(n)
        .map_err(|_| format!("cannot allocate an array of {n} items: too large"))?;
    if layout.size() == 0 {
        return Ok(Box::default());
    }
    // SAFETY: the layout's size is not zero.
    let memory = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<T>();
    if memory.is_null() {
        return Err(format!(
            "cannot allocate an array of {n} items: out of memory"
        ));
    }
    // SAFETY: `memory` is a zeroed allocation of the global allocator with
    // the layout of `[T; n]`, which all-zero bytes make `n` valid values
    // (`Zeroable`'s contract); the box owns it from here.
    Ok(unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(memory, n)) })
}

/// One zeroed array of `n` values per CPU of `pool`, for its items'
/// initializers to take.
fn arrays<T: Zeroable, U>(pool: &MemPool<U>, n: usize) -> Result<Vec<Box<[T]>>, String> {
    (0..pool.cpus()).map(|_| zeroed(n)).collect()
}

/// Objects allocated one by one (param_test allocates each node and item
/// on its own), freed together when this is dropped. The threads that use
/// them are joined before.
struct Boxed<T>(Vec<NonNull<T>>);

impl<T> Default for Boxed<T> {
    fn default() -> Self {
        Boxed(Vec::new())
    }
}

impl<T> Boxed<T> {
    /// A new object holding `value`.
    fn make(&mut self, value: T) -> NonNull<T> {
        let p = NonNull::from(Box::leak(Box::new(value)));
        self.0.push(p);
        p
    }

    /// The objects' addresses, each with its place in the order made.
    fn places(&self) -> HashMap<usize, usize> {
        self.0
            .iter()
            .enumerate()
            .map(|(i, p)| (p.as_ptr().addr(), i))
            .collect()
    }
}

impl<T> Drop for Boxed<T> {
    fn drop(&mut self) {
        for p in self.0.drain(..) {
            // SAFETY: made by `Box::leak` in `make`, freed once, here; the
            // per-CPU data that points to it is not used any more (its
            // threads are joined, its checks done).
            drop(unsafe { Box::from_raw(p.as_ptr()) });
        }
    }
}

/// A pool of one `T` per possible CPU, 64 KiB apart (librseq's layout).
fn pool<T>() -> Result<MemPool<T>, String> {
    MemPool::new().map_err(|e| format!("cannot make the per-CPU pool: {e}"))
}

/// The error of an allocation from the pool.
fn alloc_error(e: ktl::percpu::mempool::MemPoolError) -> String {
    format!("cannot allocate from the per-CPU pool: {e}")
}

/// The element of `array` at `i`, if `i` is an index of it.
fn at<T>(array: &[T], i: i64) -> Option<&T> {
    // A negative `i` becomes 2^63 or more, past every slice: one bound
    // check covers both ends.
    array.get(i as usize)
}

/// Why a repetition could not do its work: the operation, and what it got
/// instead of its result. Small and `Copy`, so that the repetitions' loops
/// carry a word, not a `String`, for the error they never meet.
#[derive(Debug, Clone, Copy)]
struct Broken {
    what: &'static str,
    got: Got,
}

/// What an operation got instead of its result.
#[derive(Debug, Clone, Copy)]
enum Got {
    /// No rseq start in this thread.
    NoStart,
    /// The operation failed.
    Failure(Failure),
    /// The CPU's data is not what the scenario left there.
    BadData,
    /// A buffer was full, which its room for every item rules out.
    Full,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = self.what;
        match self.got {
            Got::NoStart => write!(f, "{what}: no rseq start in this thread"),
            Got::Failure(e) => write!(f, "{what}: {e}"),
            Got::BadData => write!(
                f,
                "{what}: the CPU's data is not what the scenario left there (an index value \
                 past the pool, or a count past its array)"
            ),
            Got::Full => write!(
                f,
                "{what}: a buffer was full, which its room for every item rules out"
            ),
        }
    }
}

/// The [`Broken`] of `what`, which got `got` instead of its result.
#[cold]
fn failed<T>(what: &'static str, got: Option<Result<T, Failure>>) -> Broken {
    let got = match got {
        None => Got::NoStart,
        Some(Err(e)) => Got::Failure(e),
        Some(Ok(_)) => Got::BadData,
    };
    Broken { what, got }
}

/// Runs `op` as param_test's loops do: restarts it after an abort (through
/// [`rseq::retry`]) and after a failed compare, until it commits or finds
/// nothing to do (both in its `Ok(Some(_))`). `Ok(None)` from `op`: the
/// CPU's data is broken, an error.
#[inline(always)]
fn until_done<T>(
    what: &'static str,
    mut op: impl FnMut(Start) -> Result<Option<T>, Failure>,
) -> Result<T, Broken> {
    loop {
        // A closure that calls `op`, not `&mut op`: the compiler inlines
        // `op` into it, where it kept `&mut op`'s call out of line (and with
        // it every operation's section for both indexes).
        #[allow(clippy::redundant_closure)]
        match rseq::retry(Index::CpuId, |s| op(s)) {
            Some(Ok(Some(v))) => return Ok(v),
            Some(Err(Failure::CompareFailed)) => {}
            other => return Err(failed(what, other)),
        }
    }
}

/// One repetition of increment: adds 1 to the current CPU's counter with
/// [`rseq::add_current`], which reads the CPU number inside its section and
/// so needs no start and no compare.
#[inline(always)]
fn increment_rep(counts: Slots<'_, AtomicI64>) -> Result<(), Broken> {
    // SAFETY: the counters are written only by `add_current` indexed by CPU
    // (this row's threads; the other increment row uses its own pool), at
    // `base + cpu * stride` for every cpu below `cpus`: live, aligned i64s of
    // the pool, which outlives the threads.
    let done = unsafe {
        rseq::add_current(
            Index::CpuId,
            counts.as_ptr().cast(),
            counts.stride(),
            counts.cpus(),
            1,
        )
    };
    if done {
        Ok(())
    } else {
        Err(Broken {
            what: "increment: add_current",
            got: Got::NoStart,
        })
    }
}

/// One repetition of increment with [`rseq::add`] in [`rseq::retry`]: adds 1
/// to the current CPU's counter.
#[inline(always)]
fn increment_start_rep(counts: Slots<'_, AtomicI64>) -> Result<(), Broken> {
    let done = rseq::retry(Index::CpuId, |s| match counts.slot(s) {
        // SAFETY: the counters are written only by this rseq operation,
        // started with the index value of the counter it writes (`slot`
        // picks the instance of `s`); each is a live, aligned i64 of the
        // pool, which outlives the threads.
        Some(c) => unsafe { rseq::add(s, c.as_ptr(), 1) }.map(|()| true),
        None => Ok(false),
    });
    match done {
        Some(Ok(true)) => Ok(()),
        other => Err(failed("increment: add", other)),
    }
}

/// One repetition of spinlock: takes the current CPU's lock with
/// [`rseq::cmpeqv_storev_current`] (retried while it is held), increments
/// the count beside it, releases the lock.
#[inline(always)]
fn spinlock_rep(data: Slots<'_, Locked>) -> Result<(), Broken> {
    let base = data.as_ptr().cast::<u8>();
    let mine = loop {
        // SAFETY: a lock goes from 0 to 1 only through this operation,
        // indexed by CPU (this row's threads; the other spinlock row uses
        // its own pool), on the lock of the CPU it runs on; the only other
        // write is the holder's release store of 0 below, made while the
        // lock is 1, when the operation's compare fails. The locks are live,
        // aligned i64s of the pool at `base + cpu * stride`, `cpus` of them.
        match unsafe {
            rseq::cmpeqv_storev_current(Index::CpuId, base, data.stride(), data.cpus(), 0, 1)
        } {
            // SAFETY: the word is the `lock` of one CPU's `Locked` (the
            // operation stores only below `cpus`), the first field of that
            // `repr(C)` instance, which the pool keeps alive.
            Some(Ok(word)) => break unsafe { &*word.cast::<Locked>() },
            Some(Err(Failure::CompareFailed)) => core::hint::spin_loop(),
            other => return Err(failed("spinlock: cmpeqv_storev_current", other)),
        }
    };
    // As in `spinlock_start_rep`.
    fence(Ordering::Acquire);
    mine.count
        .store(mine.count.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    mine.lock.store(0, Ordering::Release);
    Ok(())
}

/// One repetition of spinlock through [`rseq::cmpeqv_storev`]: takes the
/// current CPU's lock, increments the count beside it, releases the lock.
#[inline(always)]
fn spinlock_start_rep(data: Slots<'_, Locked>) -> Result<(), Broken> {
    let mine = until_done("spinlock: cmpeqv_storev", |s| match data.slot(s) {
        // SAFETY: a lock goes from 0 to 1 only through this rseq operation,
        // started with the index value of the lock it writes; the only other
        // write is the holder's release store of 0 below, made while the
        // lock is 1, when no section can commit a write to it. The lock is
        // a live, aligned i64 of the pool.
        Some(d) => unsafe { rseq::cmpeqv_storev(s, d.lock.as_ptr(), 0, 1) }.map(|()| Some(d)),
        None => Ok(None),
    })?;
    // The commit read the holder's release store of 0 under a control
    // dependency: acquire, as param_test's `rseq_smp_acquire__after_ctrl_dep`.
    fence(Ordering::Acquire);
    // A plain increment: the lock guards it, even if this thread has left
    // the lock's CPU since.
    mine.count
        .store(mine.count.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    mine.lock.store(0, Ordering::Release);
    Ok(())
}

/// One repetition of list: pops a node off the current CPU's list with
/// [`rseq::pop_current`], then pushes it onto the list of the CPU the thread
/// is then on with [`rseq::push_current`] (which reads the head inside its
/// section, so it has no compare to fail).
#[inline(always)]
fn list_rep(heads: Slots<'_, ListHead>) -> Result<(), Broken> {
    let (base, stride, cpus) = (heads.as_ptr().cast::<u8>(), heads.stride(), heads.cpus());
    // SAFETY: the heads are written only by these two operations, indexed
    // by CPU (this row's threads; the other list row uses its own pool), at
    // `base + cpu * stride` for every cpu below `cpus`: live, aligned
    // pointers of the pool; every node on a list is a live `Node` (owned by
    // the run until the threads are joined), whose `next` is at `NEXT`.
    let node = match unsafe { rseq::pop_current(Index::CpuId, base, stride, cpus, NEXT) } {
        Some(Ok(p)) => p,
        // The list is empty: nothing to push back.
        Some(Err(Failure::CompareFailed)) => return Ok(()),
        other => return Err(failed("list: pop_current", other)),
    };
    // SAFETY: as for the pop; the pop took the node off every list.
    if unsafe { rseq::push_current(Index::CpuId, base, stride, cpus, node, NEXT) } {
        Ok(())
    } else {
        Err(failed("list: push_current", None::<Result<(), Failure>>))
    }
}

/// One repetition of list through [`rseq::cmpnev_storeoffp_load`] and
/// [`rseq::cmpeqv_storev`]: pops a node off the current CPU's list, then
/// pushes it onto the list of the CPU the thread is then on.
#[inline(always)]
fn list_start_rep(heads: Slots<'_, ListHead>) -> Result<(), Broken> {
    let popped = rseq::retry(Index::CpuId, |s| match heads.slot(s) {
        // SAFETY: the heads are written only by the rseq operations of this
        // function, each started with the index value of the head it writes;
        // every node on a list is a live `Node` (owned by the run until the
        // threads are joined), whose `next` is a pointer at offset `NEXT`.
        Some(h) => {
            unsafe { rseq::cmpnev_storeoffp_load(s, h.head.as_ptr().cast(), ptr::null_mut(), NEXT) }
                .map(Some)
        }
        None => Ok(None),
    });
    let node = match popped {
        Some(Ok(Some(p))) => p.cast::<Node>(),
        // The list is empty: nothing to push back.
        Some(Err(Failure::CompareFailed)) => return Ok(()),
        other => return Err(failed("list: cmpnev_storeoffp_load", other)),
    };
    until_done("list: cmpeqv_storev", |s| {
        let Some(h) = heads.slot(s) else {
            return Ok(None);
        };
        let expect = h.head.load(Ordering::Relaxed);
        // SAFETY: the pop took the node off every list: it is this thread's
        // until the push commits, and live (see the pop).
        unsafe { &(*node).next }.store(expect, Ordering::Relaxed);
        // SAFETY: as for the pop.
        unsafe {
            rseq::cmpeqv_storev(
                s,
                h.head.as_ptr().cast(),
                expect.expose_provenance() as i64,
                node.expose_provenance() as i64,
            )
        }
        .map(|()| Some(()))
    })
}

/// One repetition of buffer: pops the top pointer of the current CPU's
/// buffer with [`rseq::stack_pop_current`], then pushes it onto the buffer
/// of the CPU the thread is then on with [`rseq::stack_push_current`]
/// (relaxed).
#[inline(always)]
fn buffer_rep(bufs: Slots<'_, Buffer>) -> Result<(), Broken> {
    let (base, stride, cpus) = (bufs.as_ptr().cast::<u8>(), bufs.stride(), bufs.cpus());
    // SAFETY: each buffer's first three words are a WordStack over its own
    // array (see `Buffer`), at `base + cpu * stride` for every cpu below
    // `cpus`, live while the threads run; the counts and the arrays are
    // written only by these two operations, indexed by CPU (this row's
    // threads; the other buffer row uses its own pool).
    let item = match unsafe { rseq::stack_pop_current(Index::CpuId, base, stride, cpus) } {
        Some(Ok(word)) => word,
        // Empty: nothing to push back.
        Some(Err(Failure::CompareFailed)) => return Ok(()),
        other => return Err(failed("buffer: stack_pop_current", other)),
    };
    // SAFETY: as for the pop.
    match unsafe {
        rseq::stack_push_current(Index::CpuId, base, stride, cpus, item, Commit::Relaxed)
    } {
        Some(Ok(())) => Ok(()),
        Some(Err(Failure::CompareFailed)) => Err(Broken {
            what: "buffer: stack_push_current",
            got: Got::Full,
        }),
        other => Err(failed("buffer: stack_push_current", other)),
    }
}

/// One repetition of buffer through [`rseq::cmpeqv_cmpeqv_storev`] and
/// [`rseq::cmpeqv_trystorev_storev`]: pops the top pointer of the current
/// CPU's buffer, then pushes it onto the buffer of the CPU the thread is
/// then on.
#[inline(always)]
fn buffer_start_rep(bufs: Slots<'_, Buffer>) -> Result<(), Broken> {
    let popped = until_done("buffer: cmpeqv_cmpeqv_storev", |s| {
        let Some(b) = bufs.slot(s) else {
            return Ok(None);
        };
        let offset = b.offset.load(Ordering::Relaxed);
        if offset == 0 {
            return Ok(Some(None));
        }
        let Some(top) = at(&b.array, offset - 1) else {
            return Ok(None);
        };
        let item = top.load(Ordering::Relaxed);
        // SAFETY: the counts and the arrays' pointers are written only by
        // the rseq operations of this function, each started with the index
        // value of the buffer it writes; `top` is a live, aligned pointer of
        // that buffer's array, which outlives the threads.
        unsafe {
            rseq::cmpeqv_cmpeqv_storev(
                s,
                b.offset.as_ptr(),
                offset,
                top.as_ptr().cast(),
                item.expose_provenance() as i64,
                offset - 1,
            )
        }
        .map(|()| Some(Some(item)))
    })?;
    let Some(item) = popped else {
        return Ok(());
    };
    let pushed = until_done("buffer: cmpeqv_trystorev_storev", |s| {
        let Some(b) = bufs.slot(s) else {
            return Ok(None);
        };
        let offset = b.offset.load(Ordering::Relaxed);
        let Some(next) = at(&b.array, offset) else {
            // Full (never: every buffer has room for every item), or broken.
            return Ok((usize::try_from(offset) == Ok(b.array.len())).then_some(false));
        };
        // SAFETY: as for the pop; `next` is the free pointer past the count,
        // which matters only once the count commits.
        unsafe {
            rseq::cmpeqv_trystorev_storev(
                s,
                b.offset.as_ptr(),
                offset,
                next.as_ptr().cast(),
                item.expose_provenance() as i64,
                offset + 1,
                Commit::Relaxed,
            )
        }
        .map(|()| Some(true))
    })?;
    if pushed {
        Ok(())
    } else {
        Err(Broken {
            what: "buffer: cmpeqv_trystorev_storev",
            got: Got::Full,
        })
    }
}

/// One repetition of memcpy: copies the top item out of the current CPU's
/// buffer, then copies it into the buffer of the CPU the thread is then on.
#[inline(always)]
fn memcpy_rep(bufs: Slots<'_, CopyBuffer>) -> Result<(), Broken> {
    let mut item: Copied = [0; size_of::<Stored>()];
    let dst = item.as_mut_ptr();
    let popped = until_done("memcpy: cmpeqv_trymemcpy_storev (out)", |s| {
        let Some(b) = bufs.slot(s) else {
            return Ok(None);
        };
        let offset = b.offset.load(Ordering::Relaxed);
        if offset == 0 {
            return Ok(Some(false));
        }
        let Some(top) = at(&b.array, offset - 1) else {
            return Ok(None);
        };
        // SAFETY: the bytes of the live item `top`. The items are written
        // only inside the rseq operations of this function, each started
        // with the index value of the buffer it writes, and the section reads
        // these bytes only once it has checked that the thread still runs
        // with this buffer's value and that its count is unchanged: no other
        // section writes them then.
        let src = unsafe {
            std::slice::from_raw_parts(ptr::from_ref(top).cast::<u8>(), size_of::<Stored>())
        };
        // SAFETY: the counts are written only by the rseq operations of this
        // function, as above; `dst` is this thread's `item`, of the bytes
        // copied.
        unsafe {
            rseq::cmpeqv_trymemcpy_storev(
                s,
                b.offset.as_ptr(),
                offset,
                dst,
                src,
                offset - 1,
                Commit::Relaxed,
            )
        }
        .map(|()| Some(true))
    })?;
    if !popped {
        return Ok(());
    }
    let pushed = until_done("memcpy: cmpeqv_trymemcpy_storev (in)", |s| {
        let Some(b) = bufs.slot(s) else {
            return Ok(None);
        };
        let offset = b.offset.load(Ordering::Relaxed);
        let Some(next) = at(&b.array, offset) else {
            // Full (never: every buffer has room for every item), or broken.
            return Ok((usize::try_from(offset) == Ok(b.array.len())).then_some(false));
        };
        // The free item past the count, whose bytes are atomics: written
        // through a pointer to the whole item.
        let next = ptr::from_ref(next).cast_mut().cast::<u8>();
        // SAFETY: as for the copy out; `next` is the free item past the
        // count, which matters only once the count commits.
        unsafe {
            rseq::cmpeqv_trymemcpy_storev(
                s,
                b.offset.as_ptr(),
                offset,
                next,
                &item,
                offset + 1,
                Commit::Relaxed,
            )
        }
        .map(|()| Some(true))
    })?;
    if pushed {
        Ok(())
    } else {
        Err(Broken {
            what: "memcpy: cmpeqv_trymemcpy_storev (in)",
            got: Got::Full,
        })
    }
}

/// Runs `rep` `reps` times in each of [`THREADS`] threads on `slots`, and
/// returns the time from the first spawn to the last join, or the first
/// thread's error. Each thread works on its own copy of `slots`, which it
/// keeps in registers.
fn timed<'a, T: Sync>(
    slots: Slots<'a, T>,
    reps: u64,
    rep: impl Fn(Slots<'a, T>) -> Result<(), Broken> + Sync,
) -> Result<Duration, String> {
    let rep = &rep;
    let start = Instant::now();
    let ends: Vec<Result<(), String>> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                std::thread::Builder::new().spawn_scoped(scope, move || {
                    for _ in 0..reps {
                        rep(slots).map_err(|e| e.to_string())?;
                    }
                    Ok(())
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| match t {
                Ok(t) => t
                    .join()
                    .unwrap_or_else(|_| Err("a thread panicked".to_owned())),
                Err(e) => Err(format!("cannot start a thread: {e}")),
            })
            .collect()
    });
    let elapsed = start.elapsed();
    ends.into_iter().collect::<Result<Vec<()>, String>>()?;
    Ok(elapsed)
}

/// Whether counters that sum to `sum` hold `expected`.
fn sums_to(what: &str, sum: i128, expected: u64) -> Result<(), String> {
    if sum == i128::from(expected) {
        Ok(())
    } else {
        Err(format!("{what} sum to {sum}, not {expected}"))
    }
}

/// Increment's check: the counters sum to `expected`.
fn increment_check(counts: &PerCpuItem<'_, AtomicI64>, expected: u64) -> Result<(), String> {
    let sum = counts
        .iter()
        .map(|c| i128::from(c.load(Ordering::Relaxed)))
        .sum();
    sums_to("increment: the counters", sum, expected)
}

/// Spinlock's check: the counts sum to `expected`, and every lock is free.
fn spinlock_check(data: &PerCpuItem<'_, Locked>, expected: u64) -> Result<(), String> {
    let sum = data
        .iter()
        .map(|d| i128::from(d.count.load(Ordering::Relaxed)))
        .sum();
    sums_to("spinlock: the counts", sum, expected)?;
    let held = data
        .iter()
        .filter(|d| d.lock.load(Ordering::Relaxed) != 0)
        .count();
    if held > 0 {
        return Err(format!("spinlock: {held} locks are still held"));
    }
    Ok(())
}

/// The lists as param_test makes them: on each CPU, nodes of `data` 1 to
/// 100, each pushed onto the list (the head is the last, 100).
fn list_setup<'p>(
    pool: &'p MemPool<ListHead>,
    nodes: &mut Boxed<Node>,
) -> Result<PerCpuItem<'p, ListHead>, String> {
    pool.alloc_with(|_| {
        let mut head = ptr::null_mut();
        for data in 1..=ITEMS_PER_CPU as i64 {
            let next = AtomicPtr::new(head);
            head = nodes.make(Node { data, next }).as_ptr();
        }
        ListHead {
            head: AtomicPtr::new(head),
        }
    })
    .map_err(alloc_error)
}

/// List's check: every node of `nodes` is on one list, once, and nothing
/// else is.
fn list_check(heads: &PerCpuItem<'_, ListHead>, nodes: &Boxed<Node>) -> Result<(), String> {
    let places = nodes.places();
    let mut seen = vec![0u32; nodes.0.len()];
    let mut sum = 0i64;
    for (cpu, h) in heads.iter().enumerate() {
        let mut p = h.head.load(Ordering::Acquire);
        while !p.is_null() {
            let Some(&i) = places.get(&p.addr()) else {
                return Err(format!("list: CPU {cpu}'s list holds {p:p}, no node"));
            };
            seen[i] += 1;
            if seen[i] > 1 {
                return Err(format!(
                    "list: a node is on the lists twice (CPU {cpu}'s list, or a cycle)"
                ));
            }
            // SAFETY: the node made at place `i`, live until `nodes` is
            // dropped; the threads are joined.
            let node = unsafe { nodes.0[i].as_ref() };
            sum += node.data;
            p = node.next.load(Ordering::Relaxed);
        }
    }
    let lost = seen.iter().filter(|&&n| n == 0).count();
    if lost > 0 {
        return Err(format!(
            "list: {lost} of {} nodes are on no list",
            nodes.0.len()
        ));
    }
    let lists = heads.cpus() as i64;
    let expected = lists * (ITEMS_PER_CPU as i64 * (ITEMS_PER_CPU as i64 + 1) / 2);
    if sum != expected {
        return Err(format!(
            "list: the nodes' data sum to {sum}, not {expected}"
        ));
    }
    Ok(())
}

/// The buffers as param_test makes them: on each CPU, room for every CPU's
/// items, the first 100 holding items of `data` 1 to 100.
fn buffer_setup<'p>(
    pool: &'p MemPool<Buffer>,
    items: &mut Boxed<Item>,
) -> Result<PerCpuItem<'p, Buffer>, String> {
    let mut arrays = arrays::<AtomicPtr<Item>, _>(pool, pool.cpus() * ITEMS_PER_CPU)?;
    pool.alloc_with(|_| {
        let array = arrays.pop().unwrap_or_default();
        for (data, slot) in (1..).zip(array.iter().take(ITEMS_PER_CPU)) {
            slot.store(items.make(Item { data }).as_ptr(), Ordering::Relaxed);
        }
        Buffer {
            offset: AtomicI64::new(ITEMS_PER_CPU as i64),
            cap: array.len(),
            items: array.as_ptr().cast_mut().cast(),
            array,
        }
    })
    .map_err(alloc_error)
}

/// Buffer's check: every item of `items` is in one buffer, once, and
/// nothing else is.
fn buffer_check(bufs: &PerCpuItem<'_, Buffer>, items: &Boxed<Item>) -> Result<(), String> {
    let places = items.places();
    let mut seen = vec![0u32; items.0.len()];
    for (cpu, b) in bufs.iter().enumerate() {
        let offset = b.offset.load(Ordering::Acquire);
        let Some(n) = usize::try_from(offset).ok().filter(|&n| n <= b.array.len()) else {
            return Err(format!("buffer: CPU {cpu}'s count is {offset}"));
        };
        for p in &b.array[..n] {
            let p = p.load(Ordering::Relaxed);
            let Some(&i) = places.get(&p.addr()) else {
                return Err(format!("buffer: CPU {cpu}'s buffer holds {p:p}, no item"));
            };
            seen[i] += 1;
        }
    }
    let lost = seen.iter().filter(|&&n| n == 0).count();
    let twice = seen.iter().filter(|&&n| n > 1).count();
    if lost + twice > 0 {
        return Err(format!(
            "buffer: of {} items, {lost} are in no buffer, {twice} in more than one place",
            items.0.len()
        ));
    }
    Ok(())
}

/// The memcpy buffers as param_test makes them: on each CPU, room for
/// every CPU's items, the first 100 holding `(j, j + 1)` for `j` from 1 to
/// 100.
fn memcpy_setup(pool: &MemPool<CopyBuffer>) -> Result<PerCpuItem<'_, CopyBuffer>, String> {
    let mut arrays = arrays::<Stored, _>(pool, pool.cpus() * ITEMS_PER_CPU)?;
    pool.alloc_with(|_| {
        let array = arrays.pop().unwrap_or_default();
        for (j, item) in (1..).zip(array.iter().take(ITEMS_PER_CPU)) {
            item.data1.store(j, Ordering::Relaxed);
            item.data2.store(j as u64 + 1, Ordering::Relaxed);
        }
        CopyBuffer {
            offset: AtomicI64::new(ITEMS_PER_CPU as i64),
            array,
        }
    })
    .map_err(alloc_error)
}

/// Memcpy's check: the buffers hold what they started with, each item
/// intact: `(j, j + 1)` for each `j` from 1 to 100, once per CPU.
fn memcpy_check(bufs: &PerCpuItem<'_, CopyBuffer>) -> Result<(), String> {
    let mut seen = vec![0usize; ITEMS_PER_CPU];
    for (cpu, b) in bufs.iter().enumerate() {
        let offset = b.offset.load(Ordering::Acquire);
        let Some(n) = usize::try_from(offset).ok().filter(|&n| n <= b.array.len()) else {
            return Err(format!("memcpy: CPU {cpu}'s count is {offset}"));
        };
        for item in &b.array[..n] {
            let (d1, d2) = (
                item.data1.load(Ordering::Relaxed),
                item.data2.load(Ordering::Relaxed),
            );
            let place = usize::try_from(d1)
                .ok()
                .filter(|&j| (1..=ITEMS_PER_CPU).contains(&j) && d2 == j as u64 + 1);
            let Some(j) = place else {
                return Err(format!(
                    "memcpy: CPU {cpu}'s buffer holds ({d1}, {d2}), not an item made"
                ));
            };
            seen[j - 1] += 1;
        }
    }
    let cpus = bufs.cpus();
    let wrong = seen.iter().filter(|&&n| n != cpus).count();
    if wrong > 0 {
        return Err(format!(
            "memcpy: {wrong} of the {ITEMS_PER_CPU} items are not there once per CPU ({cpus})"
        ));
    }
    Ok(())
}

/// Runs ktl's side of `scenario` once, as one run of param_test: sets up
/// the per-CPU data, runs `reps` repetitions in each of [`THREADS`] threads
/// (spawned and joined), then checks the data exactly. Returns the time
/// from the threads' spawn to their join, or what went wrong (a failed
/// check among it).
pub fn run_ktl(scenario: Scenario, reps: u64) -> Result<Duration, String> {
    run_ktl_way(scenario, reps, false)
}

/// Runs `scenario` as [`run_ktl`] does, through the operations that take a
/// [`Start`] where [`run_ktl`] uses those that read the index inside their
/// section (the scenarios with a [`Scenario::ktl_start_row`]; the others
/// run as in [`run_ktl`]).
pub fn run_ktl_start(scenario: Scenario, reps: u64) -> Result<Duration, String> {
    run_ktl_way(scenario, reps, true)
}

/// [`run_ktl`], or with `start` [`run_ktl_start`]. Each way is a call of
/// [`timed`] with its own repetition function, so that each is inlined into
/// its threads' loop.
fn run_ktl_way(scenario: Scenario, reps: u64, start: bool) -> Result<Duration, String> {
    let expected = u64::from(THREADS).saturating_mul(reps);
    match scenario {
        Scenario::Increment => {
            let pool = pool::<AtomicI64>()?;
            let counts = pool.alloc().map_err(alloc_error)?;
            let elapsed = if start {
                timed(counts.slots(), reps, increment_start_rep)
            } else {
                timed(counts.slots(), reps, increment_rep)
            }?;
            increment_check(&counts, expected)?;
            Ok(elapsed)
        }
        Scenario::Spinlock => {
            let pool = pool::<Locked>()?;
            let data = pool.alloc().map_err(alloc_error)?;
            let elapsed = if start {
                timed(data.slots(), reps, spinlock_start_rep)
            } else {
                timed(data.slots(), reps, spinlock_rep)
            }?;
            spinlock_check(&data, expected)?;
            Ok(elapsed)
        }
        Scenario::List => {
            let mut nodes = Boxed::default();
            let pool = pool::<ListHead>()?;
            let heads = list_setup(&pool, &mut nodes)?;
            let elapsed = if start {
                timed(heads.slots(), reps, list_start_rep)
            } else {
                timed(heads.slots(), reps, list_rep)
            }?;
            list_check(&heads, &nodes)?;
            Ok(elapsed)
        }
        Scenario::Buffer => {
            let mut items = Boxed::default();
            let pool = pool::<Buffer>()?;
            let bufs = buffer_setup(&pool, &mut items)?;
            let elapsed = if start {
                timed(bufs.slots(), reps, buffer_start_rep)
            } else {
                timed(bufs.slots(), reps, buffer_rep)
            }?;
            buffer_check(&bufs, &items)?;
            Ok(elapsed)
        }
        Scenario::Memcpy => {
            let pool = pool::<CopyBuffer>()?;
            let bufs = memcpy_setup(&pool)?;
            let elapsed = timed(bufs.slots(), reps, memcpy_rep)?;
            memcpy_check(&bufs)?;
            Ok(elapsed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::{Shape, run_rows};

    /// A fresh, empty directory for one test.
    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ktl-bench-peers-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Writes `text` to `dir/rel` with `mode`, making the directories.
    fn file(dir: &Path, rel: &str, text: &str, mode: u32) -> PathBuf {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    /// Whether this thread can run rseq operations (on a fallback or not).
    fn rseq_here() -> bool {
        rseq::start(Index::CpuId).is_some()
    }

    #[test]
    fn locate_takes_the_option_then_the_environment_and_says_what_is_wrong() {
        assert_eq!(Librseq::locate(None, None), Ok(None));
        assert_eq!(Librseq::locate(None, Some(OsStr::new(""))), Ok(None));

        let root = scratch("locate");
        let missing = root.join("missing");
        let m = missing.display();
        assert_eq!(
            Librseq::locate(Some(&missing), None).unwrap_err(),
            format!("--librseq {m}: no such directory (give a built librseq tree)")
        );
        assert_eq!(
            Librseq::locate(None, Some(missing.as_os_str())).unwrap_err(),
            format!("KTL_LIBRSEQ={m}: no such directory (give a built librseq tree)")
        );
        let plain = file(&root, "plain", "", 0o644);
        let err = Librseq::locate(Some(&plain), None).unwrap_err();
        assert!(
            err.ends_with(": not a directory (a built librseq tree)"),
            "{err}"
        );

        // A tree that is not built.
        let unbuilt = root.join("unbuilt");
        std::fs::create_dir_all(&unbuilt).unwrap();
        let err = Librseq::locate(Some(&unbuilt), None).unwrap_err();
        assert!(
            err.contains("tests/param_test_benchmark does not exist"),
            "{err}"
        );
        assert!(
            err.contains(&format!("build librseq in that tree first ({BUILD})")),
            "{err}"
        );

        // A program that cannot run.
        let unrunnable = root.join("unrunnable");
        file(&unrunnable, PROGRAM, "", 0o644);
        let err = Librseq::locate(Some(&unrunnable), None).unwrap_err();
        assert!(
            err.ends_with("param_test_benchmark: not executable (mode 644)"),
            "{err}"
        );
        let dir_program = root.join("dir-program");
        std::fs::create_dir_all(dir_program.join(PROGRAM)).unwrap();
        let err = Librseq::locate(Some(&dir_program), None).unwrap_err();
        assert!(err.ends_with(": not a file"), "{err}");

        // A static build: the program itself runs. The option wins over the
        // environment.
        let built = root.join("static");
        let program = file(&built, PROGRAM, "\x7fELF", 0o755);
        let lib = Librseq::locate(Some(&built), Some(missing.as_os_str()))
            .unwrap()
            .unwrap();
        assert_eq!(
            (lib.dir(), lib.program()),
            (built.as_path(), program.as_path())
        );
        assert_eq!(lib.library_path(), None);
        let from_env = Librseq::locate(None, Some(built.as_os_str())).unwrap();
        assert_eq!(from_env, Some(lib));

        // A shared build: libtool's wrapper script is bypassed.
        let shared = root.join("shared");
        file(&shared, PROGRAM, "#! /bin/bash\n# libtool wrapper\n", 0o755);
        let real = file(&shared, LIBTOOL_PROGRAM, "\x7fELF", 0o755);
        std::fs::create_dir_all(shared.join(LIBTOOL_LIBRARY)).unwrap();
        let lib = Librseq::locate(Some(&shared), None).unwrap().unwrap();
        assert_eq!(lib.program(), real);
        assert_eq!(
            lib.library_path(),
            Some(shared.join(LIBTOOL_LIBRARY).as_path())
        );
        // A script with no binary behind it runs as it is.
        let script = root.join("script");
        let program = file(&script, PROGRAM, "#!/bin/sh\nexit 0\n", 0o755);
        let lib = Librseq::locate(Some(&script), None).unwrap().unwrap();
        assert_eq!(
            (lib.program(), lib.library_path()),
            (program.as_path(), None)
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn without_librseq_every_row_is_na_with_the_way_to_get_it() {
        let rows = rows(None);
        let names: Vec<&str> = rows.iter().map(|r| r.name()).collect();
        assert_eq!(names, row_names().collect::<Vec<_>>());
        assert_eq!(names.len(), 14);
        // Per scenario: ktl's row, its second row through the operations
        // that take a start (increment, spinlock, list), librseq's row.
        let mut i = 0;
        for scenario in Scenario::ALL {
            let second = scenario.ktl_start_row();
            let expected: Vec<(&str, bool)> = [
                Some((scenario.ktl_row(), true)),
                second.map(|n| (n, true)),
                Some((scenario.librseq_row(), false)),
            ]
            .into_iter()
            .flatten()
            .collect();
            for (name, ours) in expected {
                let row = &rows[i];
                i += 1;
                assert_eq!((row.name(), row.ours), (name, ours));
                assert!(row.name.starts_with(scenario.name()));
                let reason = row.unavailable_reason().unwrap();
                assert_eq!(reason, NOT_GIVEN);
                assert!(
                    reason.contains("./configure --disable-numa")
                        && reason.contains("--librseq DIR")
                );
                assert_eq!((row.group(), row.threads()), (GROUP, THREADS));
                assert!(!row.quick, "{}: not in the quick run", row.name);
                assert_eq!(row.baseline.as_deref(), Some(scenario.librseq_row()));
            }
        }
        assert_eq!(names[6], "list: ktl::rseq (2 threads)");
        assert_eq!(
            Scenario::ALL.map(Scenario::flag),
            ["i", "s", "l", "b", "m"],
            "param_test's -T letters"
        );
    }

    #[test]
    fn a_failing_librseq_makes_its_scenarios_na_and_quotes_it() {
        let root = scratch("failing");
        file(
            &root,
            PROGRAM,
            "#!/bin/sh\necho \"cannot run: $*\" >&2\nexit 3\n",
            0o755,
        );
        let lib = Librseq::locate(Some(&root), None).unwrap().unwrap();
        let err = lib.run(Scenario::List, 5).unwrap_err();
        assert!(
            err.contains("-T l -t 2 -r 5 failed (exit status: 3)"),
            "{err}"
        );
        assert!(err.ends_with("cannot run: -T l -t 2 -r 5"), "{err}");
        if rseq_here() {
            let outcomes = run_rows(
                rows(Some(&lib)),
                Shape::Call,
                2,
                Duration::from_millis(1),
                true,
                "test",
            );
            assert_eq!(outcomes.len(), 14);
            for o in &outcomes {
                let reason = o.result.as_ref().unwrap_err();
                assert!(
                    reason.contains("failed (exit status: 3)"),
                    "{}: {reason}",
                    o.name
                );
                assert!(reason.contains(" -r 0 "), "the fixed cost's run: {reason}");
                assert!(o.verified.is_none(), "{}: nothing ran", o.name);
            }
        }
        // One that exits at once, whatever it is asked: no count fits it.
        // The target is long, so that the work it looks for (a tenth of
        // it) is longer than a loaded machine's delays to start a program.
        let idle = root.join("idle");
        file(&idle, PROGRAM, "#!/bin/sh\nexit 0\n", 0o755);
        let lib = Librseq::locate(Some(&idle), None).unwrap().unwrap();
        let err = lib
            .calibrate(Scenario::Increment, Duration::from_secs(2))
            .unwrap_err();
        assert!(err.contains("does not seem to run them"), "{err}");
        // One that exits at once but is slow once, on its first run with
        // reps, as a loaded machine makes any run: one slow run is noise,
        // not work. (Calibration took the slow run's time as the work when
        // the run to confirm it measured no more than the fixed cost, so an
        // idle program passed for one that runs its reps: this test failed
        // on a loaded machine, where the idle program's runs are slow at
        // random.)
        let once = root.join("once");
        let count = root.join("runs");
        file(
            &once,
            PROGRAM,
            &format!(
                "#!/bin/sh\nn=$(cat {0} 2>/dev/null || echo 0)\nn=$((n + 1))\necho $n > {0}\n\
                 [ $n -eq 3 ] && sleep 0.5\nexit 0\n",
                count.display()
            ),
            0o755,
        );
        let lib = Librseq::locate(Some(&once), None).unwrap().unwrap();
        let err = lib
            .calibrate(Scenario::Increment, Duration::from_secs(2))
            .unwrap_err();
        assert!(err.contains("does not seem to run them"), "{err}");
        let runs: u32 = std::fs::read_to_string(&count)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(runs > 3, "the slow run was run: {runs}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_checks_catch_wrong_counts_and_lost_or_broken_items() {
        if !rseq_here() {
            return;
        }
        let p = pool::<AtomicI64>().unwrap();
        let counts = p.alloc().unwrap();
        for _ in 0..5 {
            increment_rep(counts.slots()).unwrap();
            increment_start_rep(counts.slots()).unwrap();
        }
        increment_check(&counts, 10).unwrap();
        counts.cpu(0).unwrap().fetch_add(1, Ordering::Relaxed);
        let err = increment_check(&counts, 10).unwrap_err();
        assert_eq!(err, "increment: the counters sum to 11, not 10");

        let p = pool::<Locked>().unwrap();
        let data = p.alloc().unwrap();
        for _ in 0..5 {
            spinlock_rep(data.slots()).unwrap();
            spinlock_start_rep(data.slots()).unwrap();
        }
        spinlock_check(&data, 10).unwrap();
        assert!(
            spinlock_check(&data, 9)
                .unwrap_err()
                .contains("sum to 10, not 9")
        );
        data.cpu(0).unwrap().lock.store(1, Ordering::Relaxed);
        let err = spinlock_check(&data, 10).unwrap_err();
        assert_eq!(err, "spinlock: 1 locks are still held");

        let mut nodes = Boxed::default();
        let p = pool::<ListHead>().unwrap();
        let heads = list_setup(&p, &mut nodes).unwrap();
        assert_eq!(nodes.0.len(), p.cpus() * ITEMS_PER_CPU);
        for _ in 0..500 {
            list_rep(heads.slots()).unwrap();
            list_start_rep(heads.slots()).unwrap();
        }
        list_check(&heads, &nodes).unwrap();
        // Unlink the first node of a list: lost.
        let head = &heads
            .iter()
            .find(|h| !h.head.load(Ordering::Relaxed).is_null())
            .unwrap()
            .head;
        let first = head.load(Ordering::Relaxed);
        // SAFETY: a node of `nodes`; no other thread runs.
        let second = unsafe { &*first }.next.load(Ordering::Relaxed);
        head.store(second, Ordering::Relaxed);
        let err = list_check(&heads, &nodes).unwrap_err();
        assert_eq!(
            err,
            format!("list: 1 of {} nodes are on no list", nodes.0.len())
        );
        // Put it back as a cycle: seen twice.
        // SAFETY: as above.
        unsafe { &*first }.next.store(first, Ordering::Relaxed);
        head.store(first, Ordering::Relaxed);
        let err = list_check(&heads, &nodes).unwrap_err();
        assert!(err.contains("twice"), "{err}");
        // SAFETY: as above.
        unsafe { &*first }.next.store(second, Ordering::Relaxed);
        list_check(&heads, &nodes).unwrap();

        let mut items = Boxed::default();
        let p = pool::<Buffer>().unwrap();
        let bufs = buffer_setup(&p, &mut items).unwrap();
        for _ in 0..500 {
            buffer_rep(bufs.slots()).unwrap();
            buffer_start_rep(bufs.slots()).unwrap();
        }
        buffer_check(&bufs, &items).unwrap();
        // The fullest buffer (every CPU's starts with 100 items).
        let fullest = |bufs: &PerCpuItem<'_, Buffer>| {
            (0..bufs.cpus())
                .max_by_key(|&c| bufs.cpu(c).unwrap().offset.load(Ordering::Relaxed))
                .unwrap()
        };
        let cpu = fullest(&bufs);
        let b = bufs.cpu(cpu).unwrap();
        let n = b.offset.load(Ordering::Relaxed);
        assert!(n >= 2, "{n}");
        b.offset.store(n - 1, Ordering::Relaxed);
        let err = buffer_check(&bufs, &items).unwrap_err();
        assert!(
            err.ends_with("1 are in no buffer, 0 in more than one place"),
            "{err}"
        );
        b.offset.store(n, Ordering::Relaxed);
        let (x, y) = (
            b.array[0].load(Ordering::Relaxed),
            b.array[1].load(Ordering::Relaxed),
        );
        b.array[0].store(y, Ordering::Relaxed);
        let err = buffer_check(&bufs, &items).unwrap_err();
        assert!(
            err.ends_with("1 are in no buffer, 1 in more than one place"),
            "{err}"
        );
        b.array[0].store(x, Ordering::Relaxed);
        b.offset.store(-1, Ordering::Relaxed);
        assert_eq!(
            buffer_check(&bufs, &items).unwrap_err(),
            format!("buffer: CPU {cpu}'s count is -1")
        );
        b.offset.store(n, Ordering::Relaxed);
        buffer_check(&bufs, &items).unwrap();

        let p = pool::<CopyBuffer>().unwrap();
        let bufs = memcpy_setup(&p).unwrap();
        for _ in 0..1000 {
            memcpy_rep(bufs.slots()).unwrap();
        }
        memcpy_check(&bufs).unwrap();
        let cpu = (0..bufs.cpus())
            .max_by_key(|&c| bufs.cpu(c).unwrap().offset.load(Ordering::Relaxed))
            .unwrap();
        let b = bufs.cpu(cpu).unwrap();
        let n = b.offset.load(Ordering::Relaxed);
        assert!(n > 0, "{n}");
        let top = &b.array[0];
        let d2 = top.data2.load(Ordering::Relaxed);
        top.data2.store(d2 + 1, Ordering::Relaxed);
        let err = memcpy_check(&bufs).unwrap_err();
        assert!(err.ends_with(", not an item made"), "{err}");
        top.data2.store(d2, Ordering::Relaxed);
        b.offset.store(n - 1, Ordering::Relaxed);
        let err = memcpy_check(&bufs).unwrap_err();
        assert!(err.contains("items are not there once per CPU"), "{err}");
    }

    #[test]
    fn the_ktl_rows_count_and_check_every_run() {
        if !rseq_here() {
            return;
        }
        let lib = Rc::new(Librseq {
            dir: PathBuf::from("/unused"),
            program: PathBuf::from("/unused/tests/param_test_benchmark"),
            library_path: None,
        });
        let cell: Rc<OnceCell<Result<u64, String>>> = Rc::default();
        // A calibration already made: 250 reps, in both shapes.
        let _ = cell.set(Ok(250));
        let cal = calibration(&lib, &cell, Scenario::Buffer);
        assert_eq!(cal(Duration::from_millis(1), Shape::Call), Ok(250));
        assert_eq!(cal(Duration::from_millis(1), Shape::Throughput), Ok(32));
        let row = ktl_row(Scenario::Buffer, cal);
        for iters in [1, 100] {
            for shape in [Shape::Call, Shape::Throughput] {
                assert!(row.run(iters, shape).is_some());
            }
        }
        let ops = 2 * (1 + 100) * (1 + 8);
        let verified = row.finish().unwrap().unwrap();
        assert_eq!(
            verified,
            format!(
                "buffer: ktl::rseq (2 threads): {ops} operations in 4 runs, each exact \
                 (every item is in one buffer, once)"
            )
        );
        let runs = Runs::default();
        runs.record(Ok(Duration::ZERO));
        runs.record(Err("broken".to_owned()));
        assert_eq!(
            runs.outcome(|n| format!("{n}")).unwrap_err(),
            "1 of 2 runs failed; the first: broken"
        );
    }
}
