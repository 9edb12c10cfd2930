//! Clocks, for tests: `clock_gettime(3)`.

use super::Errno;

/// `CLOCK_MONOTONIC`.
pub(crate) const CLOCK_MONOTONIC: i32 = libc::CLOCK_MONOTONIC;

/// The C library's `clock_gettime(clock)`: `(seconds, nanoseconds)`.
pub(crate) fn clock_gettime(clock: i32) -> Result<(i64, i64), Errno> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through the pointer, which
    // points to a live local.
    let ret = unsafe { libc::clock_gettime(clock, &mut ts) };
    if ret == 0 {
        Ok((ts.tv_sec, ts.tv_nsec))
    } else {
        Err(Errno::last())
    }
}
