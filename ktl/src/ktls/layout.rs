//! The thread group's layout: `rseq(area, len, RSEQ_FLAG_KTLS_LAYOUT, sig)`.

use super::{KtlsError, features};
use crate::area::{self, Owner};
use crate::{Errno, abi, sys};

/// The thread group's KTLS layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLayout {
    /// The area's offset from the thread pointer.
    pub offset: isize,
    /// The registered length.
    pub len: u32,
    /// The registered signature.
    pub sig: u32,
}

/// `rseq(area, len, RSEQ_FLAG_KTLS_LAYOUT, sig)`: `Ok` or the errno.
///
/// # Safety
///
/// The contract of a registration: `area` must point to `len` bytes that
/// stay valid and are not reused until the calling thread unregisters them
/// or exits, holding no kernel-owned value written by user space.
pub unsafe fn rseq_ktls_layout(area: *mut u8, len: u32, sig: u32) -> Result<(), Errno> {
    // SAFETY: forwarded to the caller's contract.
    unsafe { sys::rseq::call(area, len, abi::RSEQ_FLAG_KTLS_LAYOUT, sig) }
}

/// Records the process's layout in the kernel: the calling thread's live
/// area, its offset from the thread pointer and its registered length.
///
/// The kernel adopts the thread's registration (the C library's or ktl's),
/// so nothing is registered twice. When ktl owns the areas this already
/// happened at the thread's first use; calling it again is harmless.
///
/// # Errors
///
/// [`KtlsError::NotSupported`] without the feature, [`KtlsError::NoArea`]
/// when the process has no areas, and [`KtlsError::Kernel`] when the kernel
/// refuses (`EBUSY`: another layout is set).
pub fn set_group_layout() -> Result<GroupLayout, KtlsError> {
    if !features().group_layout() {
        return Err(KtlsError::NotSupported);
    }
    let layout = crate::layout();
    let offset = match (layout.owner, layout.offset) {
        (Owner::Libc | Owner::Ktl(_), Some(offset)) => offset,
        _ => return Err(KtlsError::NoArea),
    };
    // Make sure this thread's area is registered (for ktl's own, the first
    // access registers it).
    if area::thread_area().is_none() {
        return Err(KtlsError::NoArea);
    }
    let len = layout.registered_len;
    let area = area::area_ptr(offset);
    // SAFETY: `area` is this thread's live registered area, with its
    // registered length and the signature it was registered with, so the
    // kernel only adopts the registration and records the layout.
    unsafe { rseq_ktls_layout(area, len, abi::RSEQ_SIG) }.map_err(KtlsError::Kernel)?;
    let gl = GroupLayout {
        offset,
        len,
        sig: abi::RSEQ_SIG,
    };
    area::note_group_layout_set();
    Ok(gl)
}

/// Whether ktl recorded the group's layout in this process (by
/// [`set_group_layout`], or by registering its own areas with the flag).
pub fn layout_set() -> bool {
    area::group_layout_set()
}
