//! Running a test binary's tests again in a copy of it that a seccomp
//! filter denies the rseq system call (ENOSYS), where ktl's owner is
//! `Unavailable` and every operation takes the locked fallback.

use crate::seccomp;
use ktl::rseq;

/// Set in the re-executed copy: the path it must see.
const EXPECT_PATH: &str = "KTL_TEST_EXPECT_PATH";

/// The body of a test named `test` that re-executes the binary under the
/// filter and requires all of its `passed` tests to pass there. In the copy
/// it only checks that the filter is in force; in a process that has no
/// rseq already (an emulator), where the copy could not even start, it says
/// so and returns: every other test has just run on the fallback.
pub fn rerun(test: &str, passed: usize) {
    if let Ok(path) = std::env::var(EXPECT_PATH) {
        assert_eq!(rseq::path().to_string(), path);
        return;
    }
    if rseq::path() == rseq::Path::Locked {
        eprintln!("SKIPPED {test}: this process uses the locked fallback already");
        return;
    }
    use std::os::unix::process::CommandExt;
    let program = seccomp::deny_rseq_program(libc::ENOSYS);
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--test-threads=2"])
        .env(EXPECT_PATH, rseq::Path::Locked.to_string())
        .env_remove("GLIBC_TUNABLES");
    // SAFETY: the closure runs between fork and exec and only makes system
    // calls on memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || seccomp::install(&program, false));
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("test result: ok. {passed} passed")),
        "{text}"
    );
}
