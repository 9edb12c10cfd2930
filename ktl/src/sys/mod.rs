//! The system-call boundary: every call ktl makes into the C library, and
//! every system call it makes through it, behind a typed wrapper.
//!
//! Each wrapper returns `Err(Errno)` instead of leaving `errno` to the
//! caller, and names its man page. A wrapper whose call is sound whatever
//! its arguments has a safe signature; the others are `unsafe fn`s with a
//! `# Safety` section. Nothing here keeps state, and nothing here uses the
//! rest of ktl: this module is the bottom of the crate. The wrappers are
//! `#[inline]`, so a caller compiles to the call itself.
//!
//! The submodules, by concern:
//!
//! - [`auxv`]: `getauxval` and the tags ktl reads;
//! - [`clone3`]: `struct clone_args` and the flags of a raw thread (the
//!   system call itself is assembly in `arch`, usable without the C library);
//! - [`dl`]: the dynamic loader (`dlsym`, `dladdr`, `dlopen`);
//! - [`fork`]: fork handlers (`pthread_atfork`);
//! - [`futex`]: the wait for a raw thread's exit;
//! - [`ids`]: `gettid`, `getpid`, `getuid` and the other ids;
//! - [`membarrier`]: the `membarrier(2)` system call;
//! - [`memory`]: `mmap`, `munmap` and the page size;
//! - [`random`]: the `getrandom(2)` system call;
//! - [`rseq`]: the `rseq(2)` system call and its probe;
//! - [`sched`]: `getcpu(2)`, the configured CPUs, and (for tests) the
//!   affinity mask;
//! - [`signals`]: the calling thread's signal mask.

pub(crate) mod auxv;
pub(crate) mod clone3;
#[cfg(not(target_feature = "crt-static"))]
pub(crate) mod dl;
pub(crate) mod fork;
pub(crate) mod futex;
pub(crate) mod ids;
pub(crate) mod membarrier;
pub(crate) mod memory;
pub(crate) mod random;
pub(crate) mod rseq;
pub(crate) mod sched;
pub(crate) mod signals;
#[cfg(test)]
pub(crate) mod time;

/// `EPERM`: operation not permitted.
#[cfg(test)]
pub(crate) const EPERM: i32 = libc::EPERM;
/// `EINTR`: interrupted system call.
pub(crate) const EINTR: i32 = libc::EINTR;
/// `EBUSY`: device or resource busy.
pub(crate) const EBUSY: i32 = libc::EBUSY;
/// `EINVAL`: invalid argument.
pub(crate) const EINVAL: i32 = libc::EINVAL;
/// `ENOSYS`: function not implemented.
pub(crate) const ENOSYS: i32 = libc::ENOSYS;
/// `ENOMEM`: out of memory.
pub(crate) const ENOMEM: i32 = libc::ENOMEM;

/// An error number from a system call, with its symbolic name in `Display`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    /// The calling thread's `errno`, as the failed call just left it.
    #[inline]
    pub(crate) fn last() -> Errno {
        // `last_os_error` always carries the raw value it read.
        Errno(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

impl core::fmt::Display for Errno {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let text = std::io::Error::from_raw_os_error(self.0);
        write!(f, "{} ({})", errno_name(self.0), text.kind())
    }
}

impl std::error::Error for Errno {}

/// The symbolic name of an errno value, for messages (`"EPERM"`), or its
/// number when ktl does not know it.
pub(crate) fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EINVAL => "EINVAL",
        libc::ENOSYS => "ENOSYS",
        libc::EACCES => "EACCES",
        libc::ENOMEM => "ENOMEM",
        libc::EAGAIN => "EAGAIN",
        _ => return format!("errno {errno}"),
    };
    name.to_owned()
}

/// A system call's `long` result: `Ok` with it when it is not negative,
/// else `Err` with the `errno` the C library's `syscall` left.
#[inline]
fn syscall_result(ret: libc::c_long) -> Result<libc::c_long, Errno> {
    if ret >= 0 {
        Ok(ret)
    } else {
        Err(Errno::last())
    }
}

/// The C library's version string, such as `"2.36"`: glibc's
/// `gnu_get_libc_version(3)`.
#[cfg(target_env = "gnu")]
pub(crate) fn glibc_version() -> &'static core::ffi::CStr {
    // SAFETY: gnu_get_libc_version returns a pointer to a static
    // NUL-terminated string.
    unsafe { core::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) }
}
