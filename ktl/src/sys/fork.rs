//! Fork handlers: `pthread_atfork(3)`.

use super::Errno;

/// `pthread_atfork(prepare, parent, child)`: `Err` with the error it
/// returns (`ENOMEM`).
///
/// # Safety
///
/// Each handler must be sound to run where the C library runs it: `prepare`
/// in the forking thread before `fork`, `parent` in it afterwards, and
/// `child` in the child, where the forking thread is the only thread and
/// any lock another thread held stays held.
#[inline]
pub(crate) unsafe fn at_fork(
    prepare: Option<extern "C" fn()>,
    parent: Option<extern "C" fn()>,
    child: Option<extern "C" fn()>,
) -> Result<(), Errno> {
    let handler = |f: Option<extern "C" fn()>| f.map(|f| f as unsafe extern "C" fn());
    // SAFETY: the handlers are `extern "C"` functions that live for the
    // whole process; what they do is the caller's contract.
    let ret = unsafe { libc::pthread_atfork(handler(prepare), handler(parent), handler(child)) };
    if ret == 0 { Ok(()) } else { Err(Errno(ret)) }
}
