//! 10,000 threads that each draw random bytes and exit leak no vDSO state:
//! every state goes back to the free list when its thread exits, and the
//! states mapped stay bounded by the threads alive at once.
//!
//! The only test of its binary, so no other test holds states while it
//! counts them.

use ktl::random::{self, Path};

/// Threads alive at once.
const BATCH: usize = 100;

#[test]
fn ten_thousand_threads_leak_no_state() {
    // This thread keeps one state for the whole test.
    let mut b = [0u8; 16];
    random::fill(&mut b).unwrap();
    let vdso = random::path() == Path::Vdso;
    // Without the vDSO path there are no states to leak; still run the
    // threads (fewer: the fallback is all that runs, under emulators too).
    let threads = if vdso { 10_000 } else { 1_000 };
    let mut seen = std::collections::HashSet::new();
    for _ in 0..threads / BATCH {
        let handles: Vec<_> = (0..BATCH)
            .map(|_| {
                std::thread::spawn(|| {
                    let mut b = [0u8; 16];
                    random::fill(&mut b).unwrap();
                    (b, random::thread_fills())
                })
            })
            .collect();
        for h in handles {
            let (bytes, fills) = h.join().unwrap();
            assert!(seen.insert(bytes), "two threads drew the same 16 bytes");
            if vdso {
                assert_eq!((fills.vdso, fills.syscall), (1, 0), "{fills:?}");
            }
        }
    }
    assert_eq!(seen.len(), threads);
    let s = random::stats();
    if !vdso {
        assert_eq!(s.states, 0, "{s:?}");
        return;
    }
    // Every exited thread returned its state: only this thread holds one.
    assert_eq!(s.states_in_use, 1, "{s:?}");
    // At most BATCH + 1 states were ever held at once, so the pages mapped
    // hold at most that many plus the rest of the last page.
    let per_page = s.states / s.pages;
    assert!(
        s.states < BATCH + 1 + per_page,
        "{} states mapped for at most {} alive at once: {s:?}",
        s.states,
        BATCH + 1
    );
}
