//! The calling thread's signal mask: `pthread_sigmask(3)`.

/// A thread's signal mask (`sigset_t`).
#[derive(Clone, Copy)]
pub(crate) struct SignalMask(libc::sigset_t);

impl SignalMask {
    /// The empty set.
    // SAFETY: an all-zero sigset_t is a valid (empty) set.
    pub(crate) const EMPTY: SignalMask = SignalMask(unsafe { core::mem::zeroed() });
}

/// Blocks every signal in the calling thread, and returns the mask it had
/// before.
#[inline]
pub(crate) fn block_all() -> SignalMask {
    // SAFETY: sigset_t is plain data; sigfillset initializes `all`, and
    // pthread_sigmask only reads `all` and writes `old`. With SIG_BLOCK and
    // valid sets it cannot fail.
    unsafe {
        let mut all: libc::sigset_t = core::mem::zeroed();
        let mut old: libc::sigset_t = core::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        SignalMask(old)
    }
}

/// Sets the calling thread's signal mask to `mask` (one that
/// [`block_all`] returned).
#[inline]
pub(crate) fn set_mask(mask: &SignalMask) {
    // SAFETY: pthread_sigmask only reads the set, a valid sigset_t; the old
    // mask is not asked for.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &mask.0, core::ptr::null_mut()) };
}
