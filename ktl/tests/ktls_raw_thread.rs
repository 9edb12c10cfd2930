//! A raw thread (`ktl::ktls::spawn_raw`) has no C-library thread and no
//! Rust thread-local storage. The ktl functions that `spawn_raw`'s contract
//! lists must work there, and only those are called: the `_at` accessors,
//! `register_raw_thread`, and `rseq::start` with the operations that take
//! its `Start` while the area is registered, retried by hand. The parent
//! signals the thread meanwhile, so some sections abort; the totals must
//! be exact.
//!
//! Registration `None` plus `register_raw_thread` needs only `clone3` and
//! rseq, so this runs on every kernel that has them, not only on the KTLS
//! prototype. `spawn_raw` is x86_64-only.

#![cfg(target_arch = "x86_64")]

use ktl::abi::SyscallStatus;
use ktl::ktls::{self, GroupLayout, Registration};
use ktl::rseq::{self, Failure, Index};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What the raw thread shares with its parent. Only atomics are written.
struct Shared {
    layout: GroupLayout,
    slots: Vec<AtomicI64>,
    /// Adds and compare-and-stores to make.
    ops: i64,
    /// 0 while running, then 1 on success or a negative failure code.
    status: AtomicI64,
    /// `register_raw_thread`'s result.
    registered: AtomicI64,
    /// The CPU read with `cpu_id_at` before the operations.
    cpu: AtomicI64,
    adds: AtomicI64,
    stores: AtomicI64,
    aborts: AtomicI64,
    /// Set by the parent once it has signalled enough.
    stop: AtomicBool,
}

/// The failure codes of [`worker`].
const NOT_REGISTERED: i64 = -1;
const NO_START: i64 = -2;
const NO_SLOT: i64 = -3;
const UNEXPECTED: i64 = -4;

static SIGNALS: AtomicU64 = AtomicU64::new(0);

extern "C" fn count_signal(_: libc::c_int) {
    SIGNALS.fetch_add(1, Ordering::Relaxed);
}

/// The raw thread: registers its area, then adds 1 to its CPU's slot with
/// `rseq::add` and with `rseq::cmpeqv_storev`, `ops` times each (and on
/// until the parent says stop), starting again after every abort.
extern "C" fn worker(arg: usize) -> i32 {
    // SAFETY: `arg` is the parent's `Shared`, which outlives the thread
    // (the parent joins before dropping it); only its atomics are written.
    let s = unsafe { &*(arg as *const Shared) };
    let code = run(s);
    s.status.store(code, Ordering::Release);
    0
}

fn run(s: &Shared) -> i64 {
    // SAFETY: this is a raw thread from `spawn_raw` with `s.layout`, whose
    // area is not registered yet.
    let r = unsafe { ktls::register_raw_thread(s.layout) };
    s.registered.store(r as i64, Ordering::Relaxed);
    if r != 0 {
        return NOT_REGISTERED;
    }
    // SAFETY: the area is at `layout.offset` from this thread's pointer,
    // inside its TLS block, 32 readable bytes aligned to 32.
    let cpu = unsafe { ktl::cpu::cpu_id_at(s.layout.offset) };
    s.cpu.store(i64::from(cpu as i32), Ordering::Relaxed);
    if (cpu as i32) < 0 {
        return NOT_REGISTERED;
    }
    let (mut adds, mut stores, mut aborts) = (0i64, 0i64, 0i64);
    while adds < s.ops || stores < s.ops || !s.stop.load(Ordering::Relaxed) {
        let Some(start) = rseq::start(Index::CpuId) else {
            return NO_START;
        };
        let Some(slot) = s.slots.get(start.value() as usize) else {
            return NO_SLOT;
        };
        let result = if adds <= stores {
            // SAFETY: the slots are written only by this thread's
            // operations, each started with the slot's CPU number.
            unsafe { rseq::add(start, slot.as_ptr(), 1) }.map(|()| adds += 1)
        } else {
            let seen = slot.load(Ordering::Relaxed);
            // SAFETY: as above.
            unsafe { rseq::cmpeqv_storev(start, slot.as_ptr(), seen, seen + 1) }
                .map(|()| stores += 1)
        };
        match result {
            Ok(()) => {}
            Err(Failure::Aborted) => aborts += 1,
            // Nothing else writes the slot, so a compare cannot fail, and
            // the area is live, so there is no fallback to fail.
            Err(_) => return UNEXPECTED,
        }
    }
    s.adds.store(adds, Ordering::Relaxed);
    s.stores.store(stores, Ordering::Relaxed);
    s.aborts.store(aborts, Ordering::Relaxed);
    1
}

#[test]
fn a_raw_thread_runs_what_its_contract_lists() {
    const TEST: &str = "a_raw_thread_runs_what_its_contract_lists";
    let layout = ktl::layout();
    let (Some(offset), SyscallStatus::Available) = (layout.offset, layout.kernel.syscall) else {
        eprintln!(
            "SKIPPED {TEST}: no rseq areas in this process ({})",
            layout.owner
        );
        return;
    };
    let gl = GroupLayout {
        offset,
        len: layout.registered_len,
        sig: ktl::abi::RSEQ_SIG,
    };
    let shared = Box::new(Shared {
        layout: gl,
        slots: (0..4096).map(|_| AtomicI64::new(0)).collect(),
        ops: 200_000,
        status: AtomicI64::new(0),
        registered: AtomicI64::new(i64::MIN),
        cpu: AtomicI64::new(i64::MIN),
        adds: AtomicI64::new(0),
        stores: AtomicI64::new(0),
        aborts: AtomicI64::new(0),
        stop: AtomicBool::new(false),
    });
    // SAFETY: a handler that only increments an atomic, which a raw thread
    // may run.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = count_signal as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = libc::SA_RESTART;
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
    // SAFETY: `worker` calls only what `spawn_raw`'s contract allows, and
    // `shared` outlives the thread: it is joined below before the box drops.
    let thread =
        unsafe { ktls::spawn_raw(gl, Registration::None, worker, &raw const *shared as usize) }
            .expect("spawn a raw thread");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sent = 0u64;
    while shared.status.load(Ordering::Acquire) == 0 && Instant::now() < deadline {
        if sent < 2_000 {
            // SAFETY: tgkill with this process's pid and the raw thread's
            // tid; the thread may have exited already, which is harmless.
            unsafe {
                libc::syscall(
                    libc::SYS_tgkill,
                    libc::getpid(),
                    thread.tid(),
                    libc::SIGUSR1,
                )
            };
            sent += 1;
            std::thread::sleep(Duration::from_micros(100));
        } else {
            shared.stop.store(true, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    let status = shared.status.load(Ordering::Acquire);
    assert_ne!(status, 0, "the raw thread did not finish in 60 s");
    thread.join();
    assert_eq!(
        status,
        1,
        "the raw thread failed: register_raw_thread {}, cpu_id_at {}",
        shared.registered.load(Ordering::Relaxed),
        shared.cpu.load(Ordering::Relaxed)
    );
    let adds = shared.adds.load(Ordering::Relaxed);
    let stores = shared.stores.load(Ordering::Relaxed);
    let total: i64 = shared.slots.iter().map(|s| s.load(Ordering::Relaxed)).sum();
    assert!(adds >= shared.ops && stores >= shared.ops);
    assert_eq!(total, adds + stores, "no lost update");
    eprintln!(
        "{TEST}: {adds} adds and {stores} compare-and-stores, {} aborts, {} signals received",
        shared.aborts.load(Ordering::Relaxed),
        SIGNALS.load(Ordering::Relaxed)
    );
}
