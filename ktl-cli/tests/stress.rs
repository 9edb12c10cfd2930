//! `ktl stress` in a real process: every scenario with both indexes under
//! signals and yields, signals sent from worker to worker, injected delays
//! (with the cargo feature `delay-injection`; without it, their rejection),
//! the full thread count for `increment`, and the rejection of `--reps 0`.

use ktl_testkit::seccomp;
use serde_json::Value;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

fn ktl(args: &[&str]) -> Output {
    ktl_with(args, |_| {})
}

fn ktl_with(args: &[&str], configure: impl FnOnce(&mut Command)) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ktl"));
    cmd.arg("stress").args(args).env_remove("GLIBC_TUNABLES");
    configure(&mut cmd);
    cmd.output().expect("run ktl stress")
}

/// Runs `ktl stress --json` with `args`, checks that it succeeded and that
/// every scenario is ok with `threads x reps` ops, and returns the report.
/// A scenario may be `skipped` (membarrier without the rseq fence) or `n/a`
/// (mm-cid on a kernel without it) only with a reason, which is printed.
fn stress(args: &[&str], threads: u64, reps: u64, scenarios: &[&str]) -> Value {
    stress_with(args, threads, reps, scenarios, |_| {})
}

fn stress_with(
    args: &[&str],
    threads: u64,
    reps: u64,
    scenarios: &[&str],
    configure: impl FnOnce(&mut Command),
) -> Value {
    let (t, r) = (threads.to_string(), reps.to_string());
    let mut all = vec!["--json", "--threads", &t, "--reps", &r];
    all.extend_from_slice(args);
    let out = ktl_with(&all, configure);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(out.status.success(), "ktl stress {all:?} failed:\n{stdout}");
    assert_eq!(report["schema"], "ktl-stress/1");
    assert_eq!(report["pass"], true, "{report:#}");
    let list = report["scenarios"].as_array().expect("scenarios");
    let names: Vec<&str> = list.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, scenarios, "{report:#}");
    for s in list {
        match s["status"].as_str().unwrap() {
            "ok" => {
                assert_eq!(s["ops"], threads * reps, "{s:#}");
                assert_eq!(s["expected_ops"], threads * reps, "{s:#}");
                assert!(s["aborts"].is_u64() && s["empty"].is_u64(), "{s:#}");
                assert!(s["signals"].is_u64(), "{s:#}");
            }
            "skipped" | "n/a" => {
                assert!(!s["detail"].as_str().unwrap().is_empty(), "{s:#}");
                eprintln!("SKIPPED {}: {}", s["name"], s["detail"]);
            }
            other => panic!("status {other}: {s:#}"),
        }
    }
    report
}

const ALL: [&str; 6] = [
    "increment",
    "spinlock",
    "list",
    "buffer",
    "memcpy",
    "membarrier",
];

#[test]
fn every_scenario_with_cpu_index_under_signals_and_yields() {
    let r = stress(
        &[
            "--index",
            "cpu",
            "--signal-every",
            "100",
            "--yield-every",
            "50",
        ],
        16,
        2000,
        &ALL,
    );
    assert_eq!(r["index"], "cpu");
}

#[test]
fn every_scenario_with_mm_cid_index_under_signals_and_yields() {
    let r = stress(
        &[
            "--index",
            "mm-cid",
            "--signal-every",
            "100",
            "--yield-every",
            "50",
        ],
        16,
        2000,
        &ALL,
    );
    assert_eq!(r["index"], "mm-cid");
}

#[test]
fn every_scenario_with_sleeps() {
    stress(&["--sleep-every", "500"], 8, 1000, &ALL);
}

#[test]
fn increment_with_the_default_200_threads() {
    let r = stress(&["--scenario", "increment"], 200, 10_000, &["increment"]);
    assert_eq!(r["threads"], 200);
}

#[test]
fn zero_reps_is_a_clear_error() {
    let out = ktl(&["--reps", "0"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--reps must be at least 1"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn every_scenario_on_the_locked_fallback() {
    let program = seccomp::deny_rseq_program(libc::ENOSYS);
    let r = stress_with(&["--signal-every", "100"], 8, 500, &ALL, |cmd| {
        // SAFETY: the closure runs in the child between fork and exec; it
        // only makes system calls on memory prepared before the fork.
        unsafe {
            cmd.pre_exec(move || seccomp::install(&program, false));
        }
    });
    assert_eq!(
        r["path"], "a lock per index value (rseq unavailable)",
        "{r:#}"
    );
    // The manager swaps under rseq::exclusive, which the locked path has.
    let membarrier = &r["scenarios"][5];
    assert_eq!(membarrier["status"], "ok", "{r:#}");
    assert!(
        membarrier["detail"].as_str().unwrap().contains("exclusive"),
        "{r:#}"
    );
}

#[test]
fn rseq_off_in_every_third_worker_runs_next_to_the_sections() {
    for index in ["cpu", "mm-cid"] {
        // Where glibc owns the areas, ktl stress runs itself again with
        // glibc's registration off; the JSON is the re-run's.
        let r = stress(
            &[
                "--index",
                index,
                "--rseq-off-every",
                "3",
                "--signal-every",
                "100",
            ],
            12,
            1000,
            &ALL,
        );
        assert_eq!(r["rseq_off_every"], 3);
        for s in ran(&r) {
            assert_eq!(s["rseq_off_threads"], 4, "{s:#}");
        }
        assert_eq!(ran(&r).len(), 6, "every scenario ran: {r:#}");
    }
}

#[test]
fn rseq_off_needs_rseq() {
    let program = seccomp::deny_rseq_program(libc::ENOSYS);
    let out = ktl_with(&["--rseq-off-every", "2", "--reps", "10"], |cmd| {
        // SAFETY: as in `every_scenario_on_the_locked_fallback`.
        unsafe {
            cmd.pre_exec(move || seccomp::install(&program, false));
        }
    });
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--rseq-off-every needs ktl to own"),
        "{stderr}"
    );
}

/// The scenarios that ran (status `ok`).
fn ran(report: &Value) -> Vec<&Value> {
    report["scenarios"]
        .as_array()
        .expect("scenarios")
        .iter()
        .filter(|s| s["status"] == "ok")
        .collect()
}

#[test]
fn signals_go_from_worker_to_worker() {
    let (threads, reps, every) = (16, 3000, 10);
    let r = stress(
        &["--signal-every", &every.to_string(), "--yield-every", "100"],
        threads,
        reps,
        &ALL,
    );
    assert_eq!(r["signal_every"], every);
    let ran = ran(&r);
    assert!(!ran.is_empty(), "{r:#}");
    // Each worker makes reps / every attempts; an attempt sends nothing only
    // when no other worker is running its operations (or, on C libraries
    // that report it, when the target has exited meanwhile).
    let most = threads * (reps / every);
    for s in &ran {
        let sent = s["signals"].as_u64().unwrap();
        assert!(sent <= most, "{sent} signals, at most {most}: {s:#}");
    }
    let sent: u64 = ran.iter().map(|s| s["signals"].as_u64().unwrap()).sum();
    assert!(sent > 0, "no worker signalled another: {r:#}");
}

#[test]
fn no_signals_without_signal_every() {
    let r = stress(&["--scenario", "increment"], 4, 1000, &["increment"]);
    assert_eq!(r["scenarios"][0]["signals"], 0, "{r:#}");
    assert_eq!(
        (r["delay_inside"].clone(), r["delay_before"].clone()),
        (0.into(), 0.into())
    );
}

#[cfg(feature = "delay-injection")]
#[test]
fn injected_delays_and_signals_cause_aborts_and_lose_nothing() {
    let (threads, reps) = (16, 300);
    let r = stress(
        &[
            "--delay-inside",
            "3000",
            "--delay-before",
            "300",
            "--signal-every",
            "20",
        ],
        threads,
        reps,
        &ALL,
    );
    assert_eq!(r["delay_inside"], 3000, "{r:#}");
    assert_eq!(r["delay_before"], 300, "{r:#}");
    if r["path"] != "restartable sequences" {
        eprintln!(
            "SKIPPED the abort count: no critical sections here ({})",
            r["path"]
        );
        return;
    }
    let aborts: u64 = ran(&r).iter().map(|s| s["aborts"].as_u64().unwrap()).sum();
    assert!(aborts > 0, "the delays and signals caused no abort: {r:#}");
}

#[cfg(not(feature = "delay-injection"))]
#[test]
fn delays_without_the_feature_are_a_clear_error() {
    for option in ["--delay-inside", "--delay-before"] {
        let out = ktl(&["--scenario", "increment", "--reps", "10", option, "1000"]);
        assert!(!out.status.success(), "{option} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("built without the delay-injection feature")
                && stderr.contains("--features delay-injection"),
            "{option}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{option} ran");
    }
    // Zero is the default, and fine.
    stress(
        &["--scenario", "increment", "--delay-inside", "0"],
        2,
        10,
        &["increment"],
    );
}
