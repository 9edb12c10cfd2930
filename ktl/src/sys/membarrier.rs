//! The `membarrier(2)` system call.

use super::{Errno, syscall_result};
use core::ffi::{c_int, c_uint};

/// `membarrier(cmd, flags, cpu_id)`: the call's non-negative result.
#[inline]
pub(crate) fn membarrier(cmd: c_int, flags: c_uint, cpu_id: c_int) -> Result<c_int, Errno> {
    // SAFETY: membarrier reads and writes no memory of ours; its three
    // arguments are plain integers that the kernel validates.
    let ret = unsafe { libc::syscall(libc::SYS_membarrier, cmd, flags, cpu_id) };
    syscall_result(ret).map(|r| r as c_int)
}
