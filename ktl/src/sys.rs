//! Thin wrappers over the system calls and libc calls ktl makes.
//!
//! Each wrapper returns `Err(errno)` instead of touching `errno` for the caller,
//! and documents its man page. Nothing here keeps state.

use core::ffi::{c_int, c_long, c_void};

/// Reads the calling thread's `errno`.
fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// `getauxval(3)`: `None` when the entry is absent.
pub(crate) fn getauxval(tag: u64) -> Option<u64> {
    // glibc's getauxval reports a missing entry as 0 with errno ENOENT, but an
    // entry may be 0 too; the entries ktl reads are never 0 when present.
    // SAFETY: getauxval only reads the process's auxiliary vector.
    let v = unsafe { libc::getauxval(tag as libc::c_ulong) };
    (v != 0).then_some(v as u64)
}

/// `rseq(NULL, 0, 0, 0)`: the probe. `Err(EINVAL)` means rseq is present.
pub(crate) fn rseq_probe() -> Result<(), i32> {
    // SAFETY: with a null area and zero length the kernel reads and writes no
    // memory of ours; it only validates the arguments.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_rseq,
            core::ptr::null_mut::<c_void>(),
            0u32,
            0 as c_int,
            0u32,
        )
    };
    if ret == 0 { Ok(()) } else { Err(last_errno()) }
}

/// `rseq(area, len, flags, sig)`.
///
/// # Safety
/// With `flags == 0`, `area` must point to `len` bytes that stay valid, are
/// not reused, and hold no kernel-owned value written by user space, until
/// the calling thread unregisters them or exits. With
/// `RSEQ_FLAG_UNREGISTER`, the arguments must be those of the live
/// registration.
pub(crate) unsafe fn rseq(area: *mut u8, len: u32, flags: i32, sig: u32) -> Result<(), i32> {
    // SAFETY: forwarded to the caller's contract above.
    let ret = unsafe { libc::syscall(libc::SYS_rseq, area, len, flags as c_int, sig) };
    if ret == 0 { Ok(()) } else { Err(last_errno()) }
}

/// The `getcpu(2)` system call itself, not the vDSO or libc function:
/// `(cpu, node)`.
pub(crate) fn getcpu_syscall() -> Result<(u32, u32), i32> {
    let mut cpu = 0u32;
    let mut node = 0u32;
    // SAFETY: the kernel writes one u32 to each of the two valid pointers; the
    // third (the legacy cache) may be null.
    let ret: c_long = unsafe {
        libc::syscall(
            libc::SYS_getcpu,
            &mut cpu as *mut u32,
            &mut node as *mut u32,
            core::ptr::null_mut::<c_void>(),
        )
    };
    if ret == 0 {
        Ok((cpu, node))
    } else {
        Err(last_errno())
    }
}

/// The `getrandom(2)` system call itself, with flags 0 (not libc's
/// `getrandom`, which glibc 2.41 and later serve from the vDSO): the number
/// of bytes written to `buf`.
pub(crate) fn getrandom(buf: &mut [core::mem::MaybeUninit<u8>]) -> Result<usize, i32> {
    // SAFETY: the kernel writes at most `buf.len()` bytes to `buf`, which is
    // valid for writes of that many bytes (they may be uninitialised).
    let ret: c_long = unsafe {
        libc::syscall(
            libc::SYS_getrandom,
            buf.as_mut_ptr().cast::<c_void>(),
            buf.len(),
            0 as libc::c_uint,
        )
    };
    usize::try_from(ret).map_err(|_| last_errno())
}

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

/// An error number from a system call, with its symbolic name in `Display`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl core::fmt::Display for Errno {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let text = std::io::Error::from_raw_os_error(self.0);
        write!(f, "{} ({})", errno_name(self.0), text.kind())
    }
}

impl std::error::Error for Errno {}

/// A loaded object, as `dladdr(3)` describes it.
#[cfg(not(any(target_feature = "crt-static", target_env = "musl")))]
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoadedObject {
    /// `dli_fname`: the object's name as the dynamic loader knows it, a
    /// NUL-terminated string the loader owns, valid while the object stays
    /// loaded.
    pub(crate) name: *const core::ffi::c_char,
    /// `dli_fbase`: the address the object is mapped at.
    pub(crate) base: *mut c_void,
}

/// `dladdr(3)`: the loaded object whose mappings contain `addr`, or `None`
/// when none does.
#[cfg(not(any(target_feature = "crt-static", target_env = "musl")))]
pub(crate) fn dladdr(addr: *const c_void) -> Option<LoadedObject> {
    let mut info = libc::Dl_info {
        dli_fname: core::ptr::null(),
        dli_fbase: core::ptr::null_mut(),
        dli_sname: core::ptr::null(),
        dli_saddr: core::ptr::null_mut(),
    };
    // SAFETY: dladdr only looks `addr` up in the loader's tables (it never
    // dereferences it) and writes the `Dl_info`, valid for writes.
    let found = unsafe { libc::dladdr(addr, &mut info) };
    (found != 0 && !info.dli_fname.is_null()).then_some(LoadedObject {
        name: info.dli_fname,
        base: info.dli_fbase,
    })
}

/// `dlopen(name, RTLD_LAZY | RTLD_NOLOAD | RTLD_NODELETE)`: makes the
/// already loaded object `name` permanent, so that no `dlclose` ever unmaps
/// it, and loads nothing. Returns the handle, a reference that the caller
/// must never close, or `None` when the loader refused; its message is
/// consumed then, so that the application's next `dlerror` does not report
/// it.
///
/// # Safety
/// `name` must point to a NUL-terminated string, valid for the call.
#[cfg(not(any(target_feature = "crt-static", target_env = "musl")))]
pub(crate) unsafe fn dlopen_nodelete(
    name: *const core::ffi::c_char,
) -> Option<core::ptr::NonNull<c_void>> {
    // RTLD_LAZY only because glibc requires a binding mode: with
    // RTLD_NOLOAD, an object that is already loaded is not relocated again.
    let mode = libc::RTLD_LAZY | libc::RTLD_NOLOAD | libc::RTLD_NODELETE;
    // SAFETY: the caller passes a valid NUL-terminated name; with
    // RTLD_NOLOAD the loader maps and initializes nothing, it only finds the
    // loaded object and marks it.
    let handle = unsafe { libc::dlopen(name, mode) };
    let handle = core::ptr::NonNull::new(handle);
    if handle.is_none() {
        // SAFETY: dlerror only returns (and clears) the calling thread's
        // pending message.
        unsafe { libc::dlerror() };
    }
    handle
}
