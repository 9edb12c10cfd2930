//! The `rseq(2)` system call.

use super::Errno;
use core::ffi::{c_int, c_void};

/// The `rseq` system call number, for the raw call of a thread without the
/// C library.
pub(crate) const SYS_RSEQ: usize = libc::SYS_rseq as usize;

/// `rseq(NULL, 0, 0, 0)`: the probe. `Err(EINVAL)` means rseq is present.
#[inline]
pub(crate) fn probe() -> Result<(), Errno> {
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
    if ret == 0 { Ok(()) } else { Err(Errno::last()) }
}

/// `rseq(area, len, flags, sig)`.
///
/// # Safety
/// With `flags == 0` (or the KTLS prototype's layout flag), `area` must
/// point to `len` bytes that stay valid, are not reused, and hold no
/// kernel-owned value written by user space, until the calling thread
/// unregisters them or exits. With `RSEQ_FLAG_UNREGISTER`, the arguments
/// must be those of the live registration.
#[inline]
pub(crate) unsafe fn call(area: *mut u8, len: u32, flags: i32, sig: u32) -> Result<(), Errno> {
    // SAFETY: forwarded to the caller's contract above.
    let ret = unsafe { libc::syscall(libc::SYS_rseq, area, len, flags as c_int, sig) };
    if ret == 0 { Ok(()) } else { Err(Errno::last()) }
}
