//! The `getrandom(2)` system call.

use super::Errno;
use core::ffi::{c_long, c_void};
use core::mem::MaybeUninit;

/// The `getrandom(2)` system call itself, with flags 0 (not libc's
/// `getrandom`, which glibc 2.41 and later serve from the vDSO): the number
/// of bytes written to `buf`.
#[inline]
pub(crate) fn getrandom(buf: &mut [MaybeUninit<u8>]) -> Result<usize, Errno> {
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
    usize::try_from(ret).map_err(|_| Errno::last())
}
