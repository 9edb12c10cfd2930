//! The CPUs: `getcpu(2)`, the configured CPUs, and (for tests) the
//! affinity mask.

use super::Errno;
use core::ffi::{c_long, c_void};

/// The `getcpu(2)` system call itself, not the vDSO or libc function:
/// `(cpu, node)`.
#[inline]
pub(crate) fn getcpu() -> Result<(u32, u32), Errno> {
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
        Err(Errno::last())
    }
}

/// The number of CPUs the system was configured with,
/// `sysconf(_SC_NPROCESSORS_CONF)`; `None` when it cannot be read.
#[inline]
pub(crate) fn configured_cpus() -> Option<usize> {
    // SAFETY: sysconf only reads system configuration.
    let conf = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
    usize::try_from(conf).ok()
}

/// The CPUs the calling thread may run on (`sched_getaffinity(2)`).
#[cfg(test)]
pub(crate) fn allowed_cpus() -> Result<Vec<usize>, Errno> {
    // SAFETY: cpu_set_t is plain data; all zeroes is an empty set.
    let mut set: libc::cpu_set_t = unsafe { core::mem::zeroed() };
    // SAFETY: `set` is a live cpu_set_t of the size passed.
    let ret = unsafe { libc::sched_getaffinity(0, size_of_val(&set), &mut set) };
    if ret != 0 {
        return Err(Errno::last());
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Pins the calling thread to `cpu` (`sched_setaffinity(2)`), which must be
/// below `CPU_SETSIZE`.
#[cfg(test)]
pub(crate) fn pin_to(cpu: usize) -> Result<(), Errno> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(Errno(super::EINVAL));
    }
    // SAFETY: cpu_set_t is plain data; all zeroes is an empty set.
    let mut set: libc::cpu_set_t = unsafe { core::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE (checked).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a live cpu_set_t of the size passed.
    let ret = unsafe { libc::sched_setaffinity(0, size_of_val(&set), &set) };
    if ret == 0 { Ok(()) } else { Err(Errno::last()) }
}
