//! `ktl::random`: output that differs between calls, threads and a `fork`
//! parent and child; the system-call fallback under a seccomp filter and
//! with the vDSO turned off; reentrancy from a signal handler.
//!
//! The thread-churn leak check is in `random_threads.rs`, a test binary of
//! its own, so that no other test holds states while it counts them.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ktl::abi::SyscallStatus;
use ktl::random::{self, Fallback, Path};
use ktl::vdso::VdsoError;

use ktl_testkit::{child, seccomp, signals};

/// Set in the re-executed copy of this binary: which inner test to run.
const CHILD_ENV: &str = "KTL_RANDOM_TEST_CHILD";

/// 32 random bytes, or the test fails.
fn draw() -> [u8; 32] {
    let mut b = [0u8; 32];
    random::fill(&mut b).expect("random::fill");
    b
}

/// Whether this process can re-execute itself and install seccomp filters
/// (not under qemu-user, where the rseq system call is missing too).
fn can_reexec(test: &str) -> bool {
    let syscall = ktl::layout().kernel.syscall;
    if syscall != SyscallStatus::Available {
        eprintln!(
            "SKIPPED {test}: the rseq system call is {syscall} (an emulator): no re-execution"
        );
        return false;
    }
    true
}

#[test]
fn output_differs_between_calls() {
    let draws: HashSet<[u8; 32]> = (0..1000).map(|_| draw()).collect();
    assert_eq!(draws.len(), 1000, "a repeated 32-byte draw");
    assert!(!draws.contains(&[0u8; 32]));
}

#[test]
fn output_differs_between_threads() {
    let handles: Vec<_> = (0..16)
        .map(|_| std::thread::spawn(|| (0..10).map(|_| draw()).collect::<Vec<_>>()))
        .collect();
    let mut all = HashSet::new();
    for h in handles {
        for d in h.join().unwrap() {
            assert!(all.insert(d), "two draws were equal");
        }
    }
    assert_eq!(all.len(), 160);
}

#[test]
fn threads_use_the_live_path() {
    let path = random::path();
    let before = random::thread_fills();
    draw();
    let after = random::thread_fills();
    match path {
        Path::Vdso => assert_eq!(after.vdso, before.vdso + 1, "{after:?}"),
        _ => assert_eq!(after.syscall, before.syscall + 1, "{after:?}"),
    }
}

/// Reads exactly `buf.len()` bytes from `fd`.
fn read_exact(fd: i32, buf: &mut [u8]) {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: `buf[done..]` is valid for writes of its length.
        let n = unsafe { libc::read(fd, buf[done..].as_mut_ptr().cast(), buf.len() - done) };
        assert!(
            n > 0,
            "read from the child: {}",
            std::io::Error::last_os_error()
        );
        done += n as usize;
    }
}

/// Forks a child that draws 32 bytes, sends them through a pipe and exits;
/// returns them.
fn child_draw() -> [u8; 32] {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the child only draws (a vDSO call or a system call, on this
    // thread's own state), writes and exits with `_exit`; it runs no
    // destructors and takes no lock another thread could hold, except the
    // random module's registry, which `fork` hands over unlocked.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let mut b = [0u8; 32];
        let code = match random::fill(&mut b) {
            // SAFETY: `b` is valid for reads of 32 bytes.
            Ok(()) if unsafe { libc::write(fds[1], b.as_ptr().cast(), 32) } == 32 => 0,
            _ => 1,
        };
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut b = [0u8; 32];
    read_exact(fds[0], &mut b);
    let mut status = 0;
    // SAFETY: `pid` is our child; `status` is a live local.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    // SAFETY: closing our own descriptors.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    b
}

#[test]
fn fork_child_never_repeats_the_parent() {
    // Warm this thread's state, so the parent's next bytes come from a
    // state the child would copy if the kernel did not wipe it.
    draw();
    for _ in 0..20 {
        let child = child_draw();
        // The parent's next draw comes from the state the child started
        // with; a child that kept the parent's state would produce the same.
        let parent = draw();
        assert_ne!(child, parent, "the fork child repeated the parent's output");
        assert_ne!(child, [0u8; 32]);
    }
    // Two children of the same parent state differ too.
    let a = child_draw();
    let b = child_draw();
    assert_ne!(a, b, "two fork children drew the same bytes");
}

#[test]
fn fork_child_frees_other_threads_states() {
    // Other threads hold states in the parent; in the child only the forking
    // thread exists, so only its state may count as in use.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        draw();
        ready_tx.send(()).unwrap();
        done_rx.recv().unwrap();
    });
    ready_rx.recv().unwrap();
    draw();
    if random::path() != Path::Vdso {
        done_tx.send(()).unwrap();
        holder.join().unwrap();
        eprintln!(
            "SKIPPED fork_child_frees_other_threads_states: no vDSO path ({})",
            random::path()
        );
        return;
    }
    // SAFETY: as in `child_draw`: the child reads counters and exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let s = random::stats();
        // SAFETY: ends the child.
        unsafe { libc::_exit(if s.states_in_use == 1 { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: `pid` is our child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    done_tx.send(()).unwrap();
    holder.join().unwrap();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "in the fork child, states of threads that do not exist there were still in use"
    );
}

#[test]
fn vdso_turned_off_uses_the_syscall() {
    const TEST: &str = "vdso_turned_off_uses_the_syscall";
    if child::is_child(CHILD_ENV, TEST) {
        assert_eq!(
            random::path(),
            Path::Syscall(Fallback::NoVdso(VdsoError::Disabled))
        );
        let a = draw();
        let b = draw();
        assert_ne!(a, b);
        let fills = random::thread_fills();
        assert_eq!(fills.vdso, 0, "{fills:?}");
        assert_eq!(fills.syscall, 2, "{fills:?}");
        assert_eq!(random::stats().states, 0);
        return;
    }
    if can_reexec(TEST) {
        child::run(TEST, &[(CHILD_ENV, TEST), (ktl::vdso::DISABLE_ENV, "off")]);
    }
}

#[test]
fn seccomp_refusing_the_states_uses_the_syscall() {
    const TEST: &str = "seccomp_refusing_the_states_uses_the_syscall";
    if child::is_child(CHILD_ENV, TEST) {
        if !matches!(random::path(), Path::Vdso) {
            eprintln!(
                "no vDSO getrandom here ({}): nothing to refuse",
                random::path()
            );
            return;
        }
        // A fresh process: no state has been mapped, so the first fill of
        // this thread must map one, and the filter refuses it.
        assert_eq!(random::stats().states, 0);
        std::thread::spawn(|| {
            let program = seccomp::deny_droppable_mmap_program();
            // SAFETY: a valid program, alive for the call; this thread only.
            unsafe { seccomp::install(&program, false) }.expect("seccomp");
            let a = draw();
            let b = draw();
            assert_ne!(a, b);
            let fills = random::thread_fills();
            assert_eq!(fills.vdso, 0, "{fills:?}");
            assert_eq!(fills.syscall, 2, "{fills:?}");
            // The filter fails the mmap with EPERM; musl's mmap reports an
            // EPERM for an anonymous mapping without MAP_FIXED as ENOMEM.
            let refused = if cfg!(target_env = "musl") {
                libc::ENOMEM
            } else {
                libc::EPERM
            };
            assert_eq!(
                random::path(),
                Path::Syscall(Fallback::StateAlloc(ktl::Errno(refused)))
            );
            let s = random::stats();
            assert!(s.alloc_failures >= 1, "{s:?}");
            assert_eq!(s.states, 0, "{s:?}");
        })
        .join()
        .unwrap();
        return;
    }
    if can_reexec(TEST) {
        child::run(TEST, &[(CHILD_ENV, TEST)]);
    }
}

// Reentrancy: a signal handler that draws while the interrupted thread is
// inside a draw must take the system call, and both must succeed.

static HANDLER_FILLS: AtomicU64 = AtomicU64::new(0);
static HANDLER_FAILURES: AtomicU64 = AtomicU64::new(0);

extern "C" fn draw_in_handler(_: libc::c_int) {
    let mut b = [0u8; 16];
    match random::fill(&mut b) {
        Ok(()) if b != [0u8; 16] => HANDLER_FILLS.fetch_add(1, Ordering::Relaxed),
        _ => HANDLER_FAILURES.fetch_add(1, Ordering::Relaxed),
    };
}

#[test]
fn signal_handler_inside_a_fill_takes_the_syscall() {
    // A handler for SIGUSR2 (which no other test uses) that only calls
    // `random::fill` (a vDSO call or a system call, no lock, no allocation
    // once the thread has its state) and touches atomics.
    signals::install(libc::SIGUSR2, draw_in_handler);
    let before = random::stats().reentrant_fills;
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let worker = {
        let stop = stop.clone();
        // Take the state before the signals start: the first fill of a
        // thread allocates, which a signal handler must not do.
        signals::spawn_set_up(
            || {
                draw();
            },
            move || {
                let mut buf = vec![0u8; 64 * 1024];
                let mut fills = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    random::fill(&mut buf).expect("fill under signals");
                    for chunk in buf.chunks(16) {
                        assert_ne!(chunk, [0u8; 16], "an interrupted fill left bytes unwritten");
                    }
                    buf.fill(0);
                    fills += 1;
                }
                fills
            },
        )
    };
    // `worker` is a live thread of this process until it is joined.
    let tid = signals::pthread_of(&worker);
    // Only the vDSO path has a state to guard, so only there must a signal
    // be seen inside a fill: on the system-call path (no vDSO, as under
    // emulators) a nested fill is another system call, counted as reentrant
    // when it lands inside a fill.
    let vdso = random::path() == Path::Vdso;
    let deadline = Instant::now() + Duration::from_secs(if vdso { 30 } else { 2 });
    let mut sent = 0u64;
    while (!vdso || random::stats().reentrant_fills == before) && Instant::now() < deadline {
        // SAFETY: `tid` is the worker, which has not been joined yet.
        assert_eq!(unsafe { libc::pthread_kill(tid, libc::SIGUSR2) }, 0);
        sent += 1;
        std::thread::sleep(Duration::from_micros(200));
    }
    // A few more, so interrupted and uninterrupted fills mix.
    for _ in 0..100 {
        // SAFETY: as above.
        assert_eq!(unsafe { libc::pthread_kill(tid, libc::SIGUSR2) }, 0);
        sent += 1;
        std::thread::sleep(Duration::from_micros(100));
    }
    stop.store(true, Ordering::Relaxed);
    let fills = worker.join().unwrap();
    let reentrant = random::stats().reentrant_fills - before;
    assert_eq!(HANDLER_FAILURES.load(Ordering::Relaxed), 0);
    assert!(HANDLER_FILLS.load(Ordering::Relaxed) > 0);
    assert!(fills > 0);
    // Only the handler's fills can find a fill running on their thread.
    assert!(reentrant <= HANDLER_FILLS.load(Ordering::Relaxed));
    if vdso {
        assert!(
            reentrant > 0,
            "no signal landed inside a fill in {sent} signals and {fills} fills"
        );
    }
}
