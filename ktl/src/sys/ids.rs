//! The calling thread's ids, from the system calls themselves (never a
//! C-library cache): `gettid(2)`, `getpid(2)`, `getuid(2)`, `getgid(2)`,
//! `geteuid(2)` and `getegid(2)`.

/// A thread or process id (`pid_t`).
pub(crate) type Pid = libc::pid_t;
/// A user id (`uid_t`).
pub(crate) type Uid = libc::uid_t;
/// A group id (`gid_t`).
pub(crate) type Gid = libc::gid_t;

/// One of the id system calls, which take no argument, touch no memory of
/// the process and cannot fail: its result as the kernel's 32-bit value.
#[inline]
fn id_syscall(nr: libc::c_long) -> u32 {
    // SAFETY: `nr` is one of the id system calls of this module, which take
    // no arguments and touch no memory of the process.
    let r = unsafe { libc::syscall(nr) };
    r as u32
}

/// `gettid(2)`.
#[inline]
pub(crate) fn gettid() -> u32 {
    id_syscall(libc::SYS_gettid)
}

/// `getpid(2)`.
#[inline]
pub(crate) fn getpid() -> u32 {
    id_syscall(libc::SYS_getpid)
}

/// `getuid(2)`.
#[inline]
pub(crate) fn getuid() -> u32 {
    id_syscall(libc::SYS_getuid)
}

/// `getgid(2)`.
#[inline]
pub(crate) fn getgid() -> u32 {
    id_syscall(libc::SYS_getgid)
}

/// `geteuid(2)`.
#[inline]
pub(crate) fn geteuid() -> u32 {
    id_syscall(libc::SYS_geteuid)
}

/// `getegid(2)`.
#[inline]
pub(crate) fn getegid() -> u32 {
    id_syscall(libc::SYS_getegid)
}

/// The C library's `getuid()` and `gettid()`, for tests that compare the
/// system calls with them.
#[cfg(test)]
pub(crate) fn libc_uid_tid() -> (Uid, Pid) {
    // SAFETY: getuid and gettid take no arguments and cannot fail.
    unsafe { (libc::getuid(), libc::gettid()) }
}
