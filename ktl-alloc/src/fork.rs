//! `fork(2)` in a multithreaded process: the child has only the forking
//! thread, so a lock another thread held at the fork would stay held in it
//! forever. The prepare handler takes every lock of the allocator, in the
//! one order the allocator nests them (an idle round's, the classes', the
//! page heap's, the large cache's, the thread-cache pool's), so nothing is
//! half-changed when the process is copied; both processes then release
//! them. The per-CPU caches need nothing: a section that another thread
//! had not committed when the process was copied never commits in the
//! child, and what the child's one thread finds in any CPU's cache is free.
//!
//! The handlers are registered before the allocator's first call into ktl,
//! so they are among the first the C library holds: its prepare handlers
//! run in the reverse order of registration, so ours runs after those
//! registered later (by ktl, or by the program), which may allocate.

use crate::{central, large, maint, pages, thread};
use core::sync::atomic::{AtomicBool, Ordering};

static REGISTERED: AtomicBool = AtomicBool::new(false);

/// Registers the handlers, once.
pub(crate) fn register() {
    if !REGISTERED.swap(true, Ordering::AcqRel) {
        crate::os::at_fork(prepare, release, release);
    }
}

unsafe extern "C" fn prepare() {
    maint::lock().lock();
    for l in central::locks() {
        l.lock();
    }
    pages::lock().lock();
    large::lock().lock();
    thread::lock().lock();
}

unsafe extern "C" fn release() {
    thread::lock().unlock();
    large::lock().unlock();
    pages::lock().unlock();
    for l in central::locks() {
        l.unlock();
    }
    maint::lock().unlock();
}
