//! `ktl check`: verifies ktl on this machine, in this environment.
//!
//! Each check compares ktl's answers with the kernel's own (the `getcpu`
//! system call) under conditions that pin the answer down: a thread pinned to
//! one CPU, a thread created by C code, a `fork` child, and thousands of
//! threads that start and exit. The command exits non-zero when any check
//! fails. Run it under the configurations you care about (for example with
//! `GLIBC_TUNABLES=glibc.pthread.rseq=0`, or under a seccomp filter); the
//! test suite does exactly that.

use ktl::area;
use ktl::{Features, Owner};
use ktl_bench::os;
use serde::Serialize;
use std::time::Instant;

/// Options of `ktl check`.
#[derive(clap::Args, Debug, Clone)]
pub struct CheckArgs {
    /// Threads that start, read cpu_id() and exit in the churn check.
    #[arg(long, default_value_t = 10_000)]
    pub threads: usize,
    /// Churn threads alive at the same time.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Largest growth of the resident set tolerated over the churn, in KiB,
    /// measured from the end of a warm-up of one tenth of the threads.
    #[arg(long, default_value_t = 4096)]
    pub max_growth_kib: u64,
    /// Print the results as JSON (schema `ktl-check/1`).
    #[arg(long)]
    pub json: bool,
}

/// One check's result.
#[derive(Serialize, Debug)]
pub struct CheckResult {
    pub name: &'static str,
    pub pass: bool,
    pub detail: String,
}

/// The whole result, as serialized for `--json`.
#[derive(Serialize, Debug)]
pub struct CheckReport {
    /// Always `"ktl-check/1"`.
    pub schema: &'static str,
    /// The `ktl info` report of the main thread.
    pub info: crate::info::Report,
    pub checks: Vec<CheckResult>,
    pub pass: bool,
}

/// Runs `ktl check`.
pub fn run(args: &CheckArgs) -> Result<(), String> {
    if args.threads == 0 || args.batch == 0 {
        return Err("--threads and --batch must be at least 1".into());
    }
    let info = crate::info::gather();
    let cpus = os::allowed_cpus().map_err(|e| format!("cannot read the CPU affinity: {e}"))?;
    let checks = vec![
        check_pinned(&cpus, Spawner::Std),
        check_pinned(&cpus, Spawner::Pthread),
        check_node(&cpus),
        check_mm_cid(&cpus),
        check_fork(&cpus),
        check_churn(args),
    ];
    let pass = checks.iter().all(|c| c.pass);
    let report = CheckReport {
        schema: "ktl-check/1",
        info,
        checks,
        pass,
    };
    if args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| format!("cannot encode the results: {e}"))?;
        println!("{text}");
    } else {
        println!(
            "owner: {} ({})",
            report.info.owner.kind, report.info.owner.reason
        );
        for c in &report.checks {
            println!(
                "{} {:<14} {}",
                if c.pass { "ok  " } else { "FAIL" },
                c.name,
                c.detail
            );
        }
    }
    if pass {
        Ok(())
    } else {
        Err("some checks failed".into())
    }
}

/// How a check's thread is created.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Spawner {
    /// `std::thread::spawn`.
    Std,
    /// `pthread_create` called directly, as C code would.
    Pthread,
}

/// Runs `f` in a new thread created by `how`, and returns its result.
fn in_thread<T: Send + 'static>(
    how: Spawner,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    match how {
        Spawner::Std => std::thread::spawn(f)
            .join()
            .map_err(|_| "the thread panicked".to_string()),
        Spawner::Pthread => os::run_on_pthread(f),
    }
}

const READS_PER_CPU: usize = 1000;

/// cpu_id() equals the pinned CPU, on every allowed CPU.
fn check_pinned(cpus: &[usize], how: Spawner) -> CheckResult {
    let name = match how {
        Spawner::Std => "pinned_cpu",
        Spawner::Pthread => "pthread_cpu",
    };
    let list = cpus.to_vec();
    let r = in_thread(how, move || -> Result<usize, String> {
        let mut reads = 0;
        for &cpu in &list {
            os::pin_this_thread(cpu).map_err(|e| format!("cannot pin to CPU {cpu}: {e}"))?;
            for _ in 0..READS_PER_CPU {
                let got = ktl::cpu_id();
                if got as usize != cpu {
                    return Err(format!("pinned to CPU {cpu}, cpu_id() returned {got}"));
                }
                reads += 1;
            }
            let (sys_cpu, _) =
                ktl::cpu::getcpu_syscall().map_err(|e| format!("getcpu failed: {e}"))?;
            if sys_cpu as usize != cpu {
                return Err(format!("pinned to CPU {cpu}, but getcpu says {sys_cpu}"));
            }
        }
        Ok(reads)
    });
    let spawner = if how == Spawner::Std {
        "std thread"
    } else {
        "pthread_create thread"
    };
    match r.and_then(|x| x) {
        Ok(n) => CheckResult {
            name,
            pass: true,
            detail: format!(
                "{spawner}: cpu_id() matched the pinned CPU in {n} reads on CPUs {cpus:?}"
            ),
        },
        Err(e) => CheckResult {
            name,
            pass: false,
            detail: format!("{spawner}: {e}"),
        },
    }
}

/// The number of possible NUMA nodes (1 when sysfs does not say).
fn possible_nodes() -> usize {
    ktl::cpu::possible_nodes().map_or(1, |n| n as usize)
}

/// node_id() equals the kernel's node for each pinned CPU, and is a possible node.
fn check_node(cpus: &[usize]) -> CheckResult {
    let list = cpus.to_vec();
    let nodes = possible_nodes();
    let r = in_thread(Spawner::Std, move || -> Result<(), String> {
        for &cpu in &list {
            os::pin_this_thread(cpu).map_err(|e| format!("cannot pin to CPU {cpu}: {e}"))?;
            let got = ktl::node_id();
            let (_, node) =
                ktl::cpu::getcpu_syscall().map_err(|e| format!("getcpu failed: {e}"))?;
            if got != node {
                return Err(format!(
                    "CPU {cpu}: node_id() = {got}, getcpu says node {node}"
                ));
            }
            if got as usize >= nodes {
                return Err(format!(
                    "CPU {cpu}: node_id() = {got}, but only {nodes} nodes are possible"
                ));
            }
        }
        Ok(())
    });
    match r.and_then(|x| x) {
        Ok(()) => CheckResult {
            name: "node_id",
            pass: true,
            detail: format!("node_id() matched getcpu on CPUs {cpus:?} ({nodes} possible nodes)"),
        },
        Err(e) => CheckResult {
            name: "node_id",
            pass: false,
            detail: e,
        },
    }
}

/// mm_cid() stays below its bound in many concurrent threads.
fn check_mm_cid(cpus: &[usize]) -> CheckResult {
    let live = ktl::layout().features.contains(Features::MM_CID);
    let (bound, what) = if live {
        (cpus.len(), "allowed CPUs")
    } else {
        (
            ktl::cpu::possible_cpus().map_or(usize::MAX, |n| n as usize),
            "possible CPUs (mm_cid falls back to the CPU number)",
        )
    };
    let threads = (cpus.len() * 4).max(8);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                (0..10_000).map(|_| ktl::mm_cid()).max().unwrap_or(0)
            })
        })
        .collect();
    let mut max = 0;
    for h in handles {
        match h.join() {
            Ok(m) => max = max.max(m),
            Err(_) => {
                return CheckResult {
                    name: "mm_cid",
                    pass: false,
                    detail: "a thread panicked".into(),
                };
            }
        }
    }
    CheckResult {
        name: "mm_cid",
        pass: (max as usize) < bound,
        detail: format!(
            "largest mm_cid() in {threads} concurrent threads: {max}; bound: {bound} {what}"
        ),
    }
}

/// A fork child reads valid values, with its registration inherited.
fn check_fork(cpus: &[usize]) -> CheckResult {
    let cpu = cpus[cpus.len() - 1];
    let layout = ktl::layout();
    // Make sure the parent's thread is set up (registered, when ktl owns).
    let _ = ktl::cpu_id();
    let registered_before = area::stats().registered;
    let expect_inherited = layout.offset.is_some() && area::thread_area().is_some();
    let inherited = layout.offset.filter(|_| expect_inherited);
    // SAFETY: the child only makes system calls and reads memory; it takes
    // no lock another thread could hold.
    let exit = unsafe { os::run_in_fork_child(|| fork_child(cpu, inherited, registered_before)) };
    let code = match exit {
        Ok(code) => code.unwrap_or(-1),
        Err(detail) => {
            return CheckResult {
                name: "fork",
                pass: false,
                detail,
            };
        }
    };
    let detail = match code {
        0 => format!(
            "the child, pinned to CPU {cpu}, read matching cpu_id/node_id; registration inherited: {}",
            if expect_inherited {
                "yes"
            } else {
                "n/a (no area)"
            }
        ),
        1 => "the child could not pin itself".into(),
        2 => "the child's inherited area was not registered".into(),
        3 => "the child's cpu_id() differed from getcpu".into(),
        4 => "the child's node_id() differed from getcpu".into(),
        5 => "the child registered again instead of inheriting".into(),
        -1 => "the child died from a signal".into(),
        c => format!("the child exited with {c}"),
    };
    CheckResult {
        name: "fork",
        pass: code == 0,
        detail,
    }
}

/// The fork child's checks; returns its exit code.
fn fork_child(cpu: usize, inherited: Option<isize>, registered_before: u64) -> i32 {
    if os::pin_this_thread(cpu).is_err() {
        return 1;
    }
    if let Some(off) = inherited {
        // SAFETY: `off` comes from `layout()`; the child has the parent's TLS.
        let raw = unsafe { ktl::cpu::cpu_id_at(off) };
        if (raw as i32) < 0 {
            return 2;
        }
    }
    let Ok((sys_cpu, sys_node)) = ktl::cpu::getcpu_syscall() else {
        return 3;
    };
    if ktl::cpu_id() != sys_cpu {
        return 3;
    }
    if ktl::node_id() != sys_node {
        return 4;
    }
    if area::stats().registered != registered_before {
        return 5;
    }
    0
}

/// The resident set size in KiB.
fn rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * os::page_size() / 1024)
}

/// Many threads start, read cpu_id() and exit, with no crash, no growth, and
/// every registration undone.
fn check_churn(args: &CheckArgs) -> CheckResult {
    let start = Instant::now();
    let before = area::stats();
    let warmup = (args.threads / 10).max(1);
    let mut spawned = 0usize;
    let mut bad = 0usize;
    let mut rss_after_warmup = None;
    while spawned < args.threads {
        let n = args.batch.min(args.threads - spawned);
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let read = || (ktl::cpu_id() as usize) < os::CPU_SETSIZE;
                if (spawned + i) % 4 == 3 {
                    // A std thread that only hosts a pthread_create thread.
                    std::thread::spawn(move || in_thread(Spawner::Pthread, read))
                } else {
                    std::thread::spawn(move || Ok(read()))
                }
            })
            .collect();
        for h in handles {
            if !matches!(h.join(), Ok(Ok(true))) {
                bad += 1;
            }
        }
        spawned += n;
        if rss_after_warmup.is_none() && spawned >= warmup {
            rss_after_warmup = rss_kib();
        }
    }
    let after = area::stats();
    let rss_end = rss_kib();
    let growth = match (rss_after_warmup, rss_end) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let ktl_owned = matches!(ktl::layout().owner, Owner::Ktl(_));
    let new_regs = after.registered - before.registered;
    let new_unregs = after.unregistered - before.unregistered;
    let mut problems = Vec::new();
    if bad > 0 {
        problems.push(format!("{bad} threads failed"));
    }
    if let Some(g) = growth {
        if g > args.max_growth_kib {
            problems.push(format!(
                "resident set grew by {g} KiB (limit {} KiB)",
                args.max_growth_kib
            ));
        }
    }
    if ktl_owned && (new_regs != new_unregs || new_regs < args.threads as u64) {
        problems.push(format!(
            "{new_regs} registrations but {new_unregs} unregistrations for {} threads",
            args.threads
        ));
    }
    if after.unregister_failures != before.unregister_failures {
        problems.push("the kernel refused an unregistration".into());
    }
    let detail = format!(
        "{} threads ({} via pthread_create) in {:.1} s; RSS growth after warm-up: {}; ktl registrations/unregistrations: {new_regs}/{new_unregs}{}",
        args.threads,
        args.threads / 4,
        start.elapsed().as_secs_f64(),
        growth.map_or("unknown".to_string(), |g| format!("{g} KiB")),
        if problems.is_empty() {
            String::new()
        } else {
            format!("; {}", problems.join("; "))
        }
    );
    CheckResult {
        name: "thread_churn",
        pass: problems.is_empty(),
        detail,
    }
}
