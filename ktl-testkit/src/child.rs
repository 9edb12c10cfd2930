//! Test support: one test of a test binary (or all of them) run again in a
//! copy of it, with the environment it needs: a marker variable that tells
//! the copy it is the child, and what the test is about (for example
//! `KTL_VDSO=off` or `GLIBC_TUNABLES`, which a process reads once).

use std::process::Command;

/// Whether the variable `marker` holds `test`: whether this process is the
/// copy that [`run`] started for `test` with `(marker, test)` in its
/// environment.
pub fn is_child(marker: &str, test: &str) -> bool {
    std::env::var(marker).is_ok_and(|v| v == test)
}

/// Runs the test `test` alone in a copy of this binary, with the variables
/// `env` set (among them the marker the copy looks for), and fails the
/// calling test unless the copy ran it and it passed.
pub fn run(test: &str, env: &[(&str, &str)]) {
    let exe = std::env::current_exe().expect("the path of this test binary");
    let mut cmd = Command::new(exe);
    cmd.args([test, "--exact", "--nocapture", "--test-threads=1"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    expect_passed(cmd, 1);
}

/// Runs every test of this binary again in a copy of it, with the
/// variables `env` set and `(marker, "all")` added, and fails the calling
/// test unless all `passed` tests passed there. The calling test itself
/// must return at once in the copy: it sees [`is_child`]`(marker, "all")`.
pub fn run_all(marker: &str, env: &[(&str, &str)], passed: usize) {
    let exe = std::env::current_exe().expect("the path of this test binary");
    let mut cmd = Command::new(exe);
    cmd.args(["--test-threads=2"]).env(marker, "all");
    for (k, v) in env {
        cmd.env(k, v);
    }
    expect_passed(cmd, passed);
}

/// Runs `cmd`, a copy of this test binary, and fails the calling test
/// unless it succeeded with `passed` tests passed.
fn expect_passed(mut cmd: Command, passed: usize) {
    let out = cmd.output().expect("run a copy of this test binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the copy failed:\n{text}");
    assert!(
        text.contains(&format!("test result: ok. {passed} passed")),
        "the copy did not pass {passed} tests:\n{text}"
    );
}
