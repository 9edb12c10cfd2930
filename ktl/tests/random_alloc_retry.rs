//! A refused state mapping is not forever: once a thread gets a state again,
//! `ktl::random::path()` says the vDSO again, and the thread that was
//! refused takes a state as soon as one is free.
//!
//! Runs in a fresh process (this test binary re-executed), so that no state
//! has been mapped before the refusal.

use ktl_testkit::{seccomp, storm};

use std::sync::mpsc;
use std::time::Duration;

use ktl::random::{self, Fallback, Path};

/// Set in the re-executed copy: which test it runs.
const CHILD_ENV: &str = "KTL_RANDOM_ALLOC_RETRY_CHILD";

fn draw() -> [u8; 32] {
    let mut b = [0u8; 32];
    random::fill(&mut b).expect("random::fill");
    assert_ne!(b, [0u8; 32]);
    b
}

/// The errno a refused mapping reports: the filter's EPERM, which musl's
/// mmap reports as ENOMEM for an anonymous mapping.
fn refused() -> i32 {
    if cfg!(target_env = "musl") {
        libc::ENOMEM
    } else {
        libc::EPERM
    }
}

fn child() {
    if ktl::vdso::getrandom_fn().is_none() {
        eprintln!(
            "no vDSO getrandom here ({}): nothing to refuse",
            random::path()
        );
        return;
    }
    assert_eq!(random::stats().states, 0, "a fresh process");
    let (refused_tx, refused_rx) = mpsc::channel();
    let (retry_tx, retry_rx) = mpsc::channel::<()>();
    let sandboxed = std::thread::spawn(move || {
        let program = seccomp::deny_droppable_mmap_program();
        // SAFETY: a valid program, alive for the call; this thread only.
        unsafe { seccomp::install(&program, false) }.expect("seccomp");
        draw();
        let fills = random::thread_fills();
        assert_eq!((fills.vdso, fills.syscall), (0, 1), "{fills:?}");
        assert_eq!(
            random::path(),
            Path::Syscall(Fallback::StateAlloc(ktl::Errno(refused())))
        );
        refused_tx.send(()).unwrap();
        retry_rx.recv().unwrap();
        // Another thread mapped a page of states and exited: free states
        // need no mapping, so this thread takes one.
        draw();
        let fills = random::thread_fills();
        assert_eq!((fills.vdso, fills.syscall), (1, 1), "{fills:?}");
    });
    refused_rx.recv().unwrap();
    std::thread::spawn(|| {
        draw();
        let fills = random::thread_fills();
        assert_eq!((fills.vdso, fills.syscall), (1, 0), "{fills:?}");
        assert_eq!(random::path(), Path::Vdso, "after a state was mapped");
    })
    .join()
    .expect("a thread that maps a page of states");
    assert_eq!(random::path(), Path::Vdso);
    retry_tx.send(()).unwrap();
    sandboxed.join().expect("the sandboxed thread");
    let s = random::stats();
    assert!(s.alloc_failures >= 1, "{s:?}");
    assert_eq!(
        s.states_in_use, 0,
        "both threads gave their states back: {s:?}"
    );
}

/// Caught: one refused state mapping made `random::path()` report the
/// system call for good, and the refused thread never got a state. Failed
/// on e5be285: `left: Syscall(StateAlloc(Errno(1)))`, `right: Vdso`.
#[test]
fn a_refused_state_mapping_is_not_forever() {
    const TEST: &str = "a_refused_state_mapping_is_not_forever";
    if std::env::var(CHILD_ENV).is_ok_and(|v| v == TEST) {
        child();
    } else if storm::native_kernel(TEST) {
        storm::run_self(TEST, CHILD_ENV, &[], Duration::from_secs(60));
    }
}
