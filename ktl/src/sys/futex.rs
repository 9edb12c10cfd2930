//! `futex(2)`: waiting for a word to change.

use core::sync::atomic::AtomicU32;

/// `futex(word, FUTEX_WAIT, expected, NULL)`: sleeps while `*word` holds
/// `expected`, until a `FUTEX_WAKE` on it (or a spurious wake-up, or a
/// signal); returns at once if it holds another value. The caller reads
/// the word again.
#[inline]
pub(crate) fn wait(word: &AtomicU32, expected: u32) {
    // SAFETY: FUTEX_WAIT on a live, aligned u32 with no timeout only reads
    // the word; it returns when the word is woken, or at once if the word
    // already changed.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            core::ptr::null::<libc::timespec>(),
        )
    };
}
