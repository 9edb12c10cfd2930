//! Memory mappings: `mmap(2)`, `munmap(2)` and the page size.

use super::{ENOMEM, Errno};
use core::ffi::c_int;
use core::ptr::NonNull;

/// `PROT_READ`.
pub(crate) const PROT_READ: c_int = libc::PROT_READ;
/// `PROT_WRITE`.
pub(crate) const PROT_WRITE: c_int = libc::PROT_WRITE;
/// `MAP_PRIVATE`.
pub(crate) const MAP_PRIVATE: c_int = libc::MAP_PRIVATE;
/// `MAP_ANONYMOUS`.
pub(crate) const MAP_ANONYMOUS: c_int = libc::MAP_ANONYMOUS;
/// `MAP_STACK`.
pub(crate) const MAP_STACK: c_int = libc::MAP_STACK;

/// The system's page size, `sysconf(_SC_PAGESIZE)`; `None` when it cannot
/// be read.
#[inline]
pub(crate) fn page_size() -> Option<usize> {
    // SAFETY: sysconf only reads a configuration value.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok()
}

/// `mmap(NULL, len, prot, flags, -1, 0)`: a new anonymous mapping of `len`
/// bytes at an address the kernel chooses. `flags` must not hold
/// `MAP_FIXED` (refused with `EINVAL`), so the mapping replaces nothing.
///
/// A null address, which the kernel never returns without `MAP_FIXED`, is
/// reported as `ENOMEM`.
#[inline]
pub(crate) fn map_anonymous(len: usize, prot: c_int, flags: c_int) -> Result<NonNull<u8>, Errno> {
    if flags & libc::MAP_FIXED != 0 {
        return Err(Errno(super::EINVAL));
    }
    // SAFETY: without MAP_FIXED and with a null hint, the kernel picks an
    // address where nothing is mapped: the call touches no existing memory.
    let p = unsafe { libc::mmap(core::ptr::null_mut(), len, prot, flags, -1, 0) };
    if p == libc::MAP_FAILED {
        return Err(Errno::last());
    }
    NonNull::new(p.cast::<u8>()).ok_or(Errno(ENOMEM))
}

/// `munmap(addr, len)`.
///
/// # Safety
///
/// `addr..addr + len` must be (part of) mappings that the caller owns, and
/// nothing may use that memory afterwards.
#[inline]
pub(crate) unsafe fn munmap(addr: NonNull<u8>, len: usize) -> Result<(), Errno> {
    // SAFETY: the caller's contract.
    let ret = unsafe { libc::munmap(addr.as_ptr().cast(), len) };
    if ret == 0 { Ok(()) } else { Err(Errno::last()) }
}
