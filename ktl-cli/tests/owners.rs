//! Every owner path, each in a real process: `ktl check --json` under the
//! default configuration, the glibc tunable, seccomp filters that make rseq
//! fail with ENOSYS or EPERM, and a statically linked build.

use ktl_testkit::seccomp;
use serde_json::Value;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const TUNABLE: &str = "glibc.pthread.rseq=0";

/// Runs `ktl check --json` (10,000 churn threads) and returns its report;
/// fails the test if any check failed.
fn check(bin: &Path, configure: impl FnOnce(&mut Command)) -> Value {
    let mut cmd = Command::new(bin);
    cmd.args(["check", "--json", "--threads", "10000"])
        .env_remove("GLIBC_TUNABLES");
    configure(&mut cmd);
    let out = cmd.output().expect("run ktl check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "ktl check printed no JSON ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        out.status.success() && report["pass"] == true,
        "ktl check failed:\n{stdout}"
    );
    assert_eq!(
        report["checks"].as_array().map(|c| c.len()),
        Some(6),
        "{stdout}"
    );
    report
}

fn with_seccomp(cmd: &mut Command, errno: i32) {
    let program = seccomp::deny_rseq_program(errno);
    // SAFETY: the closure runs in the child between fork and exec; it only
    // makes system calls (prctl, seccomp) on memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || seccomp::install(&program, false));
    }
}

/// Fails unless `file` (where it is installed) calls `bin` static.
fn assert_static(bin: &Path) {
    let file = Command::new("file")
        .arg(bin)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    if let Ok(desc) = file {
        assert!(desc.contains("static"), "not a static binary: {desc}");
    }
}

fn ktl_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ktl"))
}

fn assert_glibc_owned(r: &Value, lookup: &str) {
    assert_eq!(r["info"]["owner"]["kind"], "libc", "{r:#}");
    assert_eq!(r["info"]["libc"]["lookup"], lookup);
    // The executable holds ktl; a static build is never unloaded either.
    let pinning = if lookup == "weak" {
        "static"
    } else {
        "executable"
    };
    assert_eq!(r["info"]["object"]["pinning"], pinning, "{r:#}");
    assert_eq!(r["info"]["object"]["permanent"], true);
    let offset = r["info"]["area"]["offset"].as_i64().expect("an offset");
    assert_eq!(
        Some(offset),
        r["info"]["libc"]["rseq_offset"].as_i64(),
        "offset must equal __rseq_offset"
    );
    assert_eq!(r["info"]["thread"]["sources"]["cpu_id"], "area");
    assert_eq!(r["info"]["rseq"]["operations"], "critical_sections");
    assert_eq!(r["info"]["rseq"]["counters"], "critical_sections");
    assert_without_area_is_fenced(r);
}

fn assert_ktl_owned(r: &Value) {
    assert_eq!(r["info"]["owner"]["kind"], "ktl", "{r:#}");
    let feature = r["info"]["kernel"]["rseq_feature_size"].as_u64().unwrap();
    assert_eq!(
        r["info"]["area"]["registered_len"].as_u64(),
        Some(feature.max(32))
    );
    assert_eq!(r["info"]["area"]["registered_len_confirmed"], true);
    assert_ne!(
        r["info"]["area"]["offset"],
        r["info"]["libc"]["rseq_offset"]
    );
    assert_eq!(r["info"]["thread"]["sources"]["cpu_id"], "area");
    assert_eq!(r["info"]["rseq"]["operations"], "critical_sections");
    assert_eq!(r["info"]["rseq"]["counters"], "critical_sections");
    assert_without_area_is_fenced(r);
    let regs = &r["info"]["registrations"];
    assert_eq!(regs["register_failures"], 0);
}

fn assert_unavailable(r: &Value, errno: Option<i32>, words: &str) {
    assert_eq!(r["info"]["owner"]["kind"], "unavailable", "{r:#}");
    assert_eq!(r["info"]["area"]["offset"], Value::Null);
    assert_eq!(r["info"]["owner"]["errno"].as_i64(), errno.map(i64::from));
    assert!(
        r["info"]["owner"]["reason"]
            .as_str()
            .unwrap()
            .contains(words),
        "{r:#}"
    );
    assert_ne!(r["info"]["thread"]["sources"]["cpu_id"], "area");
    assert_eq!(r["info"]["rseq"]["operations"], "locked");
    assert_eq!(r["info"]["rseq"]["without_area"], "locked");
    assert_eq!(r["info"]["rseq"]["counters"], "shared_atomic");
}

/// A thread without an area in a process whose other threads have one takes
/// the fenced fallback where the membarrier rseq fence exists.
fn assert_without_area_is_fenced(r: &Value) {
    let want = match r["info"]["rseq"]["fence"].as_str() {
        Some("rseq") => "fenced",
        _ => "none",
    };
    assert_eq!(r["info"]["rseq"]["without_area"], want, "{r:#}");
}

/// `libc.rseq_size` of a C library that registered no area: glibc's
/// `__rseq_size` is 0; musl has no such symbol.
fn no_libc_area() -> Value {
    if cfg!(target_env = "musl") {
        Value::Null
    } else {
        Value::from(0)
    }
}

#[test]
#[cfg(not(target_env = "musl"))]
fn default_glibc_owns_the_area() {
    let r = check(&ktl_bin(), |_| {});
    assert_glibc_owned(&r, "dlsym");
}

/// musl registers no rseq area, so ktl owns them with no configuration;
/// musl's binaries are statically linked by default.
#[test]
#[cfg(target_env = "musl")]
fn default_musl_leaves_the_area_to_ktl() {
    let bin = ktl_bin();
    assert_static(&bin);
    let r = check(&bin, |_| {});
    assert_eq!(r["info"]["libc"]["rseq_symbols"], false, "{r:#}");
    assert_eq!(r["info"]["libc"]["rseq_size"], no_libc_area());
    assert_ktl_owned(&r);
}

#[test]
fn tunable_hands_the_area_to_ktl() {
    let r = check(&ktl_bin(), |c| {
        c.env("GLIBC_TUNABLES", TUNABLE);
    });
    assert_eq!(r["info"]["libc"]["rseq_size"], no_libc_area());
    assert_ktl_owned(&r);
}

#[test]
fn seccomp_enosys_means_unavailable() {
    let r = check(&ktl_bin(), |c| with_seccomp(c, libc::ENOSYS));
    assert_eq!(r["info"]["kernel"]["syscall"], "absent");
    assert_unavailable(&r, None, "ENOSYS");
}

#[test]
fn seccomp_eperm_means_unavailable() {
    let r = check(&ktl_bin(), |c| with_seccomp(c, libc::EPERM));
    assert_eq!(r["info"]["kernel"]["syscall"], "blocked");
    assert_unavailable(&r, Some(libc::EPERM), "EPERM");
}

/// Builds the `ktl` binary with `-C target-feature=+crt-static` in its own
/// target directory, and returns its path.
fn build_static() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let target_dir = root.join("target").join("static");
    let triple = "x86_64-unknown-linux-gnu";
    let status = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args([
            "build", "--quiet", "-p", "ktl-cli", "--bin", "ktl", "--target", triple,
        ])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_TARGET_DIR", &target_dir)
        .status()
        .expect("run cargo");
    assert!(status.success(), "the static build failed");
    target_dir.join(triple).join("debug").join("ktl")
}

#[test]
#[cfg(target_arch = "x86_64")]
fn static_build_finds_glibc_and_owns_when_disabled() {
    let bin = build_static();
    assert_static(&bin);
    let r = check(&bin, |_| {});
    assert_glibc_owned(&r, "weak");
    let r = check(&bin, |c| {
        c.env("GLIBC_TUNABLES", TUNABLE);
    });
    assert_ktl_owned(&r);
    let r = check(&bin, |c| with_seccomp(c, libc::EPERM));
    assert_unavailable(&r, Some(libc::EPERM), "EPERM");
}
