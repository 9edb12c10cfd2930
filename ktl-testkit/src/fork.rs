//! A check run in a `fork` child.

/// Runs `child` in a `fork` child of this process, which leaves with
/// `_exit(0)` when `child` returns `true`, and `_exit(1)` when it returns
/// `false` or panics; fails the calling test unless the child exited with 0.
///
/// `child` runs in a copy of a multithreaded process that has only the
/// forking thread: it must not wait for a lock another thread may have held
/// at the fork. The tests use it for ktl calls, memory and system calls.
pub fn in_fork_child(child: impl FnOnce() -> bool) {
    // SAFETY: the child runs `child` (see above) and leaves with _exit,
    // without returning into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(child)).unwrap_or(false);
        // SAFETY: leaves the child at once.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waits for the child above.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status}"
    );
}
