//! A seccomp filter installed after start-up blocks rseq for the threads
//! created afterwards, the way some sandboxes and emulators behave. The first
//! thread keeps its area; the later ones must fall back and still be right.
//!
//! Their restartable-sequence operations take the fenced fallback, on the
//! same counters as the first thread's critical sections.
//!
//! The scenario runs in a fresh process (this test binary re-executed), so
//! the filter and the owner decision do not leak into other tests.
//!
//! Only the ktl-owned case can be tested: when glibc owns the areas and a new
//! thread's registration fails, glibc itself aborts the process ("Fatal glibc
//! error: rseq registration failed") before any of the thread's code runs.

use ktl_testkit::affinity::{allowed_cpus, pin};
use ktl_testkit::{child, seccomp};

use ktl::abi::SyscallStatus;
use ktl::cpu::Source;

const CHILD_ENV: &str = "KTL_LATER_THREADS_CHILD";

/// The child's body: the first thread uses ktl, then the filter goes in for
/// every thread, then new threads must fall back correctly.
fn child(expect_owner: &str) {
    assert_eq!(ktl::layout().owner.to_string(), expect_owner);
    assert_eq!(
        ktl::cpu::sources().cpu_id,
        Source::Area,
        "the first thread has its area"
    );
    assert!(ktl::cpu::sources().cpu_id_inline);
    let program = seccomp::deny_rseq_program(libc::EPERM);
    // SAFETY: a valid program that outlives the call.
    unsafe { seccomp::install(&program, true) }.expect("install the seccomp filter");
    let failures_before = ktl::area::stats().register_failures;
    // The fallback of a thread without an area: vDSO getcpu, which every
    // x86_64 kernel has, else the getcpu system call (arm64 kernels have no
    // vDSO getcpu).
    let fallback = if cfg!(target_arch = "x86_64") || ktl::cpu::getcpu_vdso().is_some() {
        Source::VdsoGetcpu
    } else {
        Source::GetcpuSyscall
    };
    for cpu in allowed_cpus() {
        std::thread::spawn(move || {
            pin(cpu);
            assert_eq!(ktl::cpu_id() as usize, cpu, "fallback cpu_id on CPU {cpu}");
            let (_, node) = ktl::cpu::getcpu_syscall().unwrap();
            assert_eq!(ktl::node_id(), node);
            let s = ktl::cpu::sources();
            assert_eq!(s.cpu_id, fallback, "a later thread has no area: {s:?}");
            assert!(!s.cpu_id_inline, "{s:?}");
            assert_eq!(s.mm_cid, Source::CpuId);
        })
        .join()
        .expect("later thread");
    }
    // The main thread still has its area.
    assert_eq!(ktl::cpu::sources().cpu_id, Source::Area);
    operations_on_both_paths();
    assert!(
        ktl::area::stats().register_failures > failures_before,
        "the refused registrations are counted"
    );
}

/// Restartable-sequence operations from the main thread (critical
/// sections) and from later threads (no area: the fenced fallback) on the
/// same per-CPU counters at the same time, with an exact total.
fn operations_on_both_paths() {
    use ktl::rseq::{self, Index, Path};
    use std::sync::atomic::{AtomicI64, Ordering};
    if rseq::without_area() != Some(Path::Fenced) {
        eprintln!(
            "SKIPPED operations_on_both_paths: threads without an area take {:?} \
             (the membarrier rseq fence is {})",
            rseq::without_area(),
            rseq::fence::kind()
        );
        return;
    }
    let slots: Vec<AtomicI64> = (0..4096).map(|_| AtomicI64::new(0)).collect();
    let add = |n: u64, want: Path| {
        for _ in 0..n {
            rseq::retry(Index::CpuId, |s| {
                assert_eq!(s.path(), want);
                // SAFETY: the slots are written only by rseq operations
                // indexed by CPU, and CPU numbers are below 4096 here.
                unsafe { rseq::add(s, slots[s.value() as usize].as_ptr(), 1) }
            })
            .expect("every thread can run operations")
            .expect("add never fails a compare");
        }
    };
    const FENCED: u64 = 2_000;
    const SECTIONS: u64 = 200_000;
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| add(FENCED, Path::Fenced));
        }
        add(SECTIONS, Path::CriticalSections);
    });
    let total: i64 = slots.iter().map(|s| s.load(Ordering::Relaxed)).sum();
    assert_eq!(total as u64, SECTIONS + 2 * FENCED, "no lost update");
}

/// Caught: once the process had registered for the rseq fence, a thread
/// whose sandbox then refused `membarrier` (and `rseq`) took the fenced
/// path with a fence that always failed, and the failure came back as an
/// abort, so `rseq::retry`, `PerCpuStack::push` and `pop`, and `Pool::get`
/// spun forever. Failed on e5be285: the new thread did not finish in 10
/// seconds. Now the failure reaches `retry`'s caller, and the structures
/// use their shared stores, exactly.
fn child_fence_refused() {
    use ktl::percpu::{PerCpuCounter, PerCpuStack, Pool};
    use ktl::rseq::fence::{self, FenceError, FenceKind};
    use ktl::rseq::{self, Failure, Index, Path};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};
    assert_eq!(ktl::layout().owner.to_string(), "ktl");
    if fence::kind() != FenceKind::Rseq {
        eprintln!(
            "SKIPPED child_fence_refused: the fence is {}, so no thread takes the fenced path",
            fence::kind()
        );
        return;
    }
    let stack = Arc::new(PerCpuStack::new());
    stack.push(0u64);
    let pool = Arc::new(Pool::new(|| 0u64));
    drop(pool.get());
    let counter = Arc::new(PerCpuCounter::new());
    counter.add(1);
    let (tx, rx) = std::sync::mpsc::channel();
    let (s, p, c) = (stack.clone(), pool.clone(), counter.clone());
    std::thread::spawn(move || {
        // This thread only: its registration and its fences are refused.
        for nr in [libc::SYS_rseq, libc::SYS_membarrier] {
            let program =
                seccomp::deny_syscall_program(nr, seccomp::SECCOMP_RET_ERRNO | libc::EPERM as u32);
            // SAFETY: a valid program that outlives the call.
            unsafe { seccomp::install(&program, false) }.expect("install the seccomp filter");
        }
        let slots: Vec<AtomicI64> = (0..4096).map(|_| AtomicI64::new(0)).collect();
        let added = rseq::retry(Index::CpuId, |st| {
            assert_eq!(st.path(), Path::Fenced);
            // SAFETY: the slots are written only by rseq operations indexed
            // by CPU, and CPU numbers are below 4096 here.
            unsafe { rseq::add(st, slots[st.value() as usize].as_ptr(), 1) }
        });
        let stored: i64 = slots.iter().map(|a| a.load(Ordering::Relaxed)).sum();
        let held = rseq::exclusive(Index::CpuId, 0).map(drop);
        let fenced = fence::fence_all();
        for i in 1..=100u64 {
            s.push(i);
        }
        let mut popped = Vec::new();
        while let Some(v) = s.pop() {
            popped.push(v);
        }
        for _ in 0..10 {
            drop(p.get());
        }
        for _ in 0..1000 {
            c.add(1);
        }
        // Give the structures back before reporting, so that the main
        // thread holds the only reference once it has the report.
        drop((s, p, c));
        tx.send((added, stored, held, fenced, popped)).unwrap();
    });
    let (added, stored, held, fenced, mut popped) = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the sandboxed thread finished");
    let refused = FenceError::Failed(libc::EPERM);
    assert_eq!(added, Some(Err(Failure::FenceFailed)));
    assert_eq!(stored, 0, "the failed operation stored nothing");
    assert_eq!(held, Err(refused));
    assert_eq!(fenced, Err(refused), "the thread's fence says why");
    popped.sort_unstable();
    assert_eq!(
        popped,
        (1..=100).collect::<Vec<_>>(),
        "the shared store kept every value"
    );
    assert_eq!(counter.sum(), 1001);
    // The first value is still on the main thread's CPU list.
    let mut stack = Arc::try_unwrap(stack).unwrap_or_else(|_| panic!("the stack is shared"));
    assert_eq!(stack.drain(), vec![0]);
}

/// Runs the scenario only when re-executed by one of the tests below.
#[test]
fn child_entry() {
    if let Ok(owner) = std::env::var(CHILD_ENV) {
        child(&owner);
    }
}

/// Runs [`child_fence_refused`] only when re-executed by the test below.
#[test]
fn child_fence_refused_entry() {
    if std::env::var(CHILD_ENV).is_ok() {
        child_fence_refused();
    }
}

/// Whether ktl can own the areas here, so that a filter has a registration
/// to refuse; says why not. Without rseq (qemu-user answers ENOSYS) it
/// never owns them.
fn ktl_can_own(test: &str) -> bool {
    let syscall = ktl::layout().kernel.syscall;
    if syscall != SyscallStatus::Available {
        eprintln!("SKIPPED {test}: the rseq system call is {syscall}, so ktl cannot own the areas");
        return false;
    }
    true
}

#[test]
fn ktl_owned_later_threads_fall_back() {
    if ktl_can_own("ktl_owned_later_threads_fall_back") {
        child::run(
            "child_entry",
            &[
                (CHILD_ENV, "ktl"),
                ("GLIBC_TUNABLES", "glibc.pthread.rseq=0"),
            ],
        );
    }
}

#[test]
fn a_thread_whose_fence_is_refused_falls_back() {
    if ktl_can_own("a_thread_whose_fence_is_refused_falls_back") {
        child::run(
            "child_fence_refused_entry",
            &[
                (CHILD_ENV, "ktl"),
                ("GLIBC_TUNABLES", "glibc.pthread.rseq=0"),
            ],
        );
    }
}
