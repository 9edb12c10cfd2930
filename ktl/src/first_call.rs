//! The per-thread first-call marker.
//!
//! ktl sets things up lazily, in the first calls: the owner decision, a
//! thread's registration, the vDSO parse, the random states, the fence's
//! registration, the thread facts' path. Each takes the calling thread's
//! marker first; a signal handler that interrupts one of them on the same
//! thread finds the marker held and sets nothing up (the reasons are in
//! [`crate::area`](crate::area#first-calls-and-signal-handlers)). Every
//! module that sets something up uses this one, so it depends on nothing.

use core::cell::Cell;
use core::marker::PhantomData;
use core::sync::atomic::{Ordering, compiler_fence};

/// The calling thread's first-call marker: held while ktl sets something up
/// lazily on this thread (see
/// [`crate::area`](crate::area#first-calls-and-signal-handlers)).
///
/// [`begin`](Self::begin) returns `None` when the marker is already held:
/// the caller is then either a signal handler that interrupted a first call
/// on this thread, and must set nothing up, or code that runs inside a first
/// call, which the marker already covers. The code paths that set things up
/// take the marker once, at their start, and what they call inside does not
/// ask again.
pub(crate) struct FirstCall {
    /// The marker belongs to the thread that holds it.
    _thread: PhantomData<*const ()>,
}

thread_local! {
    /// Whether the calling thread holds its [`FirstCall`] marker. It has no
    /// destructor, so reading it arms nothing: a signal handler may, at any
    /// time.
    static IN_FIRST_CALL: Cell<bool> = const { Cell::new(false) };
}

impl FirstCall {
    /// Takes the calling thread's marker, or `None` if it is held.
    ///
    /// A handler that runs between the test and the set takes and gives back
    /// the marker itself, before the interrupted call resumes, so each holder
    /// sees the marker free when it begins and leaves it free when it ends.
    pub(crate) fn begin() -> Option<FirstCall> {
        IN_FIRST_CALL
            .try_with(|held| {
                if held.get() {
                    return None;
                }
                held.set(true);
                // A signal handler runs on this thread between any two
                // instructions: the marker must be set before the setup.
                compiler_fence(Ordering::SeqCst);
                Some(FirstCall {
                    _thread: PhantomData,
                })
            })
            .ok()
            .flatten()
    }
}

impl Drop for FirstCall {
    fn drop(&mut self) {
        compiler_fence(Ordering::SeqCst);
        let _ = IN_FIRST_CALL.try_with(|held| held.set(false));
    }
}
