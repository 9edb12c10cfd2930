//! What a raw thread calls without the C library: its thread pointer and
//! raw `rseq()` system calls.

use super::GroupLayout;
use crate::{arch, sys};

/// A raw `rseq(area, len, flags, sig)` system call, without the C library
/// (usable in a raw thread): 0 or a negative errno.
///
/// # Safety
///
/// The contract of `rseq(2)` for these arguments: a registration's area must
/// stay valid and unreused until the thread unregisters it or exits.
pub unsafe fn raw_rseq(area: usize, len: u32, flags: i32, sig: u32) -> isize {
    // SAFETY: forwarded to the caller's contract.
    unsafe {
        arch::syscall4(
            sys::rseq::SYS_RSEQ,
            area,
            len as usize,
            flags as u32 as usize,
            sig as usize,
        )
    }
}

/// The calling thread's thread pointer (the FS base on x86_64, `tpidr_el0`
/// on aarch64), for raw threads that compute their area's address.
pub fn thread_pointer() -> usize {
    arch::thread_pointer()
}

/// In a raw thread, registers its area (at `layout.offset` from its thread
/// pointer) with a raw `rseq()` system call, without the C library: the
/// registration that `CLONE_RSEQ_KTLS` saves. Returns 0 or a negative
/// errno.
///
/// # Safety
///
/// The calling thread must be a raw thread from
/// [`spawn_raw`](super::spawn_raw) with this `layout`, whose area is not
/// registered yet.
pub unsafe fn register_raw_thread(layout: GroupLayout) -> isize {
    let area = arch::thread_pointer().wrapping_add_signed(layout.offset);
    // SAFETY: the caller's contract: the area at that offset lies in the
    // calling raw thread's TLS block, which stays mapped until the thread
    // exits; the thread registers its own area once and never writes its
    // kernel-owned fields.
    unsafe { raw_rseq(area, layout.len, 0, layout.sig) }
}
