//! The restartable-sequence operations: exact totals under contention for
//! every operation (counters, per-CPU lists, bounded buffers filled by a
//! second-word store or by a copy, with both commit orderings), aborts that
//! really happen (signals and preemption of two threads pinned to one CPU),
//! compare failures, both indexes, `fork`, and the sections the binary must
//! carry. The whole file runs again in a re-executed copy under a seccomp
//! filter that makes rseq fail with ENOSYS, where every operation takes the
//! locked fallback.

use ktl::rseq::{self, Failure, Index};
use ktl_testkit::affinity::{allowed_cpus, pin};
use ktl_testkit::{fork, signals, without_rseq};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

/// `n` operations on critical sections; a twentieth of that on the locked
/// fallback, which makes two system calls per operation (and runs under
/// emulators, where each is slow).
fn scaled(n: u64) -> u64 {
    if rseq::path() == rseq::Path::Locked {
        (n / 20).max(1)
    } else {
        n
    }
}

/// Slots for any CPU number or concurrency id this machine can produce.
const SLOTS: usize = 4096;

fn slots() -> Arc<Vec<AtomicI64>> {
    Arc::new((0..SLOTS).map(|_| AtomicI64::new(0)).collect())
}

fn total(slots: &[AtomicI64]) -> i64 {
    slots.iter().map(|s| s.load(Ordering::Relaxed)).sum()
}

/// Adds 1 to this thread's slot with `rseq::add`, `n` times; returns the
/// thread's abort count.
fn add_loop(slots: &[AtomicI64], index: Index, n: u64) -> u64 {
    for _ in 0..n {
        rseq::retry(index, |s| {
            let slot = &slots[s.value() as usize];
            // SAFETY: every write to the slots goes through rseq operations
            // indexed by `index`, and `value()` is below SLOTS.
            unsafe { rseq::add(s, slot.as_ptr(), 1) }
        })
        .expect("a live area")
        .expect("add never fails a compare");
    }
    rseq::aborts()
}

/// Whether the calling thread has a live area for `index`. Without one (an
/// emulator without rseq, a kernel without mm_cid) the test is skipped, and
/// says why.
fn has_area(test: &str, index: Index) -> bool {
    let live = rseq::start(index).is_some();
    if !live {
        let owner = ktl::layout().owner;
        eprintln!("SKIPPED {test}: no live rseq area for {index:?} (owner: {owner})");
    }
    live
}

extern "C" fn on_signal(_: libc::c_int) {}

/// Installs an empty SIGUSR1 handler.
fn install_handler() {
    signals::install(libc::SIGUSR1, on_signal);
}

/// Per iteration of [`copy_loop`]: the bytes each copy writes, enough to
/// make its section long (see the test below).
const COPIED: usize = 64;

/// `n` iterations of an add of 1 to this thread's slot and a copy of
/// [`COPIED`] bytes into its CPU's scratch, committed by incrementing its
/// CPU's count; returns the thread's abort count.
fn copy_loop(slots: &[AtomicI64], counts: &[AtomicI64], scratch: &[[u8; COPIED]], n: u64) -> u64 {
    let bytes = [0x5a_u8; COPIED];
    for _ in 0..n {
        add_loop(slots, Index::CpuId, 1);
        loop {
            let r = rseq::retry(Index::CpuId, |s| {
                let cpu = s.value() as usize;
                let count = &counts[cpu];
                let seen = count.load(Ordering::Relaxed);
                let dst = scratch[cpu].as_ptr().cast_mut();
                // SAFETY: the counts and the scratch bytes are written only
                // by this operation, indexed by CPU; `cpu` is below SLOTS.
                unsafe {
                    rseq::cmpeqv_trymemcpy_storev(
                        s,
                        count.as_ptr(),
                        seen,
                        dst,
                        &bytes,
                        seen + 1,
                        rseq::Commit::Relaxed,
                    )
                }
            })
            .expect("a live area");
            match r {
                Ok(()) => break,
                Err(Failure::CompareFailed) => continue,
                Err(e) => panic!("{e}"),
            }
        }
    }
    rseq::aborts()
}

/// Caught: after the sections lost their liveness test and gate address
/// for `cpu_id`, an add's section is three instructions, and on an AMD
/// Zen 5 an interrupt never landed inside it in 80 million adds with 1,600
/// signals (this test, with adds alone, failed for want of an abort). Each
/// iteration now also copies 64 bytes in a section, long enough to be
/// interrupted; the exact totals cover both operations.
#[test]
fn two_threads_on_one_cpu_abort_and_lose_nothing() {
    const TEST: &str = "two_threads_on_one_cpu_abort_and_lose_nothing";
    if !has_area(TEST, Index::CpuId) {
        return;
    }
    if rseq::path() != rseq::Path::CriticalSections {
        eprintln!("SKIPPED {TEST}: the locked fallback never aborts");
        return;
    }
    install_handler();
    let cpu = allowed_cpus()[0];
    let counts = slots();
    let slots = slots();
    let scratch: Arc<Vec<[u8; COPIED]>> = Arc::new(vec![[0; COPIED]; SLOTS]);
    // Each worker works in rounds until it has seen an abort (or a generous
    // cap), and reports how many iterations it made.
    const ROUND: u64 = 20_000;
    const MAX_ROUNDS: u64 = 200;
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (slots, counts, scratch) = (slots.clone(), counts.clone(), scratch.clone());
            std::thread::spawn(move || {
                pin(cpu);
                let mut done = 0;
                let mut aborts = 0;
                for _ in 0..MAX_ROUNDS {
                    aborts = copy_loop(&slots, &counts, &scratch, ROUND);
                    done += ROUND;
                    if aborts > 0 && done >= 10 * ROUND {
                        break;
                    }
                }
                (done, aborts)
            })
        })
        .collect();
    // Signal both workers until they finish: a signal delivered inside a
    // critical section aborts it, as does a preemption by the other worker.
    let (results, sent) =
        signals::signal_until_done(workers, libc::SIGUSR1, std::time::Duration::from_micros(20));
    let done: u64 = results.iter().map(|r| r.0).sum();
    let aborts: u64 = results.iter().map(|r| r.1).sum();
    assert_eq!(total(&slots), done as i64, "no add may be lost");
    assert_eq!(total(&counts), done as i64, "no copy may be lost");
    assert_eq!(
        (
            slots[cpu].load(Ordering::Relaxed),
            counts[cpu].load(Ordering::Relaxed)
        ),
        (done as i64, done as i64),
        "all on the pinned CPU's slots"
    );
    assert!(
        scratch[cpu].iter().all(|&b| b == 0x5a),
        "the committed copies landed"
    );
    assert!(
        aborts > 0,
        "{done} iterations and {sent} signals caused no abort"
    );
    eprintln!("{aborts} aborts in {done} iterations (an add and a copy each), {sent} signals");
}

#[test]
fn unpinned_threads_sum_exactly_with_both_indexes() {
    for index in [Index::CpuId, Index::MmCid] {
        if !has_area("unpinned_threads_sum_exactly_with_both_indexes", index) {
            continue;
        }
        let slots = slots();
        let n_ops: u64 = scaled(500_000);
        let threads = 4 * allowed_cpus().len();
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let slots = slots.clone();
                std::thread::spawn(move || add_loop(&slots, index, n_ops))
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(total(&slots), threads as i64 * n_ops as i64, "{index:?}");
        if index == Index::MmCid {
            let used = slots
                .iter()
                .rposition(|s| s.load(Ordering::Relaxed) != 0)
                .unwrap_or(0);
            assert!(used < allowed_cpus().len(), "mm_cid slot {used} used");
        }
    }
}

#[test]
fn compare_and_store_counts_exactly() {
    if !has_area("compare_and_store_counts_exactly", Index::CpuId) {
        return;
    }
    let slots = slots();
    let n_ops: u64 = scaled(200_000);
    let threads = 2 * allowed_cpus().len();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let slots = slots.clone();
            std::thread::spawn(move || {
                let mut failed_compares = 0u64;
                for _ in 0..n_ops {
                    loop {
                        let r = rseq::retry(Index::CpuId, |s| {
                            let slot = &slots[s.value() as usize];
                            let seen = slot.load(Ordering::Relaxed);
                            // SAFETY: as in `add_loop`.
                            unsafe { rseq::cmpeqv_storev(s, slot.as_ptr(), seen, seen + 1) }
                        })
                        .expect("a live area");
                        match r {
                            Ok(()) => break,
                            Err(Failure::CompareFailed) => failed_compares += 1,
                            Err(Failure::Aborted) => unreachable!("retry absorbs aborts"),
                            Err(e @ Failure::FenceFailed) => panic!("{e}"),
                        }
                    }
                }
                failed_compares
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(total(&slots), threads as i64 * n_ops as i64);
}

#[test]
fn a_failed_compare_stores_nothing() {
    if !has_area("a_failed_compare_stores_nothing", Index::CpuId) {
        return;
    }
    std::thread::spawn(|| {
        let cpu = allowed_cpus()[0];
        pin(cpu);
        let slots = slots();
        slots[cpu].store(41, Ordering::Relaxed);
        let r = rseq::retry(Index::CpuId, |s| {
            // SAFETY: only this thread writes the slots.
            unsafe { rseq::cmpeqv_storev(s, slots[s.value() as usize].as_ptr(), 40, 99) }
        });
        assert_eq!(r, Some(Err(Failure::CompareFailed)));
        assert_eq!(slots[cpu].load(Ordering::Relaxed), 41);
        let r = rseq::retry(Index::CpuId, |s| {
            // SAFETY: as above.
            unsafe { rseq::cmpeqv_storev(s, slots[s.value() as usize].as_ptr(), 41, 99) }
        });
        assert_eq!(r, Some(Ok(())));
        assert_eq!(slots[cpu].load(Ordering::Relaxed), 99);
    })
    .join()
    .unwrap();
}

#[test]
fn operations_work_in_a_fork_child() {
    if !has_area("operations_work_in_a_fork_child", Index::CpuId) {
        return;
    }
    let slots = slots();
    add_loop(&slots, Index::CpuId, 10);
    // The child only runs rseq operations and reads memory.
    fork::in_fork_child(|| {
        add_loop(&slots, Index::CpuId, 1000);
        total(&slots) == 1010
    });
    assert_eq!(total(&slots), 10, "the child's updates stay in the child");
}

/// The names of the sections of an ELF64 little-endian file, read from its
/// section header table: what `readelf -S` lists. Read here rather than by
/// running readelf, so the test runs wherever its binary does (a guest
/// of another architecture, a seccomp sandbox) with nothing else installed.
fn elf_section_names(file: &[u8]) -> Vec<String> {
    let u16_at = |at: usize| u16::from_le_bytes(file[at..at + 2].try_into().unwrap()) as usize;
    let u32_at = |at: usize| u32::from_le_bytes(file[at..at + 4].try_into().unwrap()) as usize;
    let u64_at = |at: usize| u64::from_le_bytes(file[at..at + 8].try_into().unwrap()) as usize;
    assert_eq!(
        &file[..6],
        b"\x7fELF\x02\x01",
        "not an ELF64 little-endian file"
    );
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28), u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    let header = |i: usize| shoff + i * shentsize;
    // sh_offset of the section-name string table.
    let strtab = u64_at(header(shstrndx) + 0x18);
    (0..shnum)
        .map(|i| {
            let name = &file[strtab + u32_at(header(i))..];
            let len = name.iter().position(|&b| b == 0).unwrap();
            String::from_utf8_lossy(&name[..len]).into_owned()
        })
        .collect()
}

#[test]
fn the_binary_carries_the_rseq_sections() {
    let exe = std::env::current_exe().unwrap();
    let names = elf_section_names(&std::fs::read(&exe).unwrap());
    assert!(
        names.iter().any(|n| n == ".text"),
        "no .text among {names:?}"
    );
    for section in [
        "__rseq_cs",
        "__rseq_cs_ptr_array",
        "__rseq_exit_point_array",
        "__rseq_failure",
    ] {
        assert!(
            names.iter().any(|n| n == section),
            "{section} missing from {}",
            exe.display()
        );
    }
}

/// Runs `f(thread_number)` on `threads` threads at once and collects the
/// results.
fn on_threads<T: Send + 'static>(
    threads: usize,
    f: impl Fn(usize) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let f = Arc::new(f);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let f = f.clone();
            std::thread::spawn(move || f(t))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// A list node. `next` is not the first field, so the pop's offset operand
/// is exercised with a non-zero offset.
#[repr(C)]
struct Node {
    id: usize,
    next: std::sync::atomic::AtomicPtr<Node>,
}

#[test]
fn list_pop_and_push_keep_every_node() {
    if !has_area("list_pop_and_push_keep_every_node", Index::CpuId) {
        return;
    }
    const NODES: usize = 1000;
    let rounds = scaled(50_000) as usize;
    let heads = slots(); // one list head per CPU, as pointer-sized words
    let nodes: &'static [Node] = Box::leak(
        (0..NODES)
            .map(|id| Node {
                id,
                next: std::sync::atomic::AtomicPtr::new(std::ptr::null_mut()),
            })
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    );
    // All nodes start on the first allowed CPU's list.
    let first = allowed_cpus()[0];
    for n in nodes {
        n.next.store(
            heads[first].load(Ordering::Relaxed) as *mut Node,
            Ordering::Relaxed,
        );
        heads[first].store(n as *const Node as i64, Ordering::Relaxed);
    }
    let next_offset = std::mem::offset_of!(Node, next) as isize;
    let threads = 2 * allowed_cpus().len();
    let h = heads.clone();
    let empty_pops: u64 = on_threads(threads, move |_| {
        let mut empty = 0u64;
        for _ in 0..rounds {
            // Pop from this CPU's list.
            let popped = rseq::retry(Index::CpuId, |s| {
                let head = h[s.value() as usize].as_ptr() as *mut *mut u8;
                // SAFETY: the heads are written only by rseq operations
                // indexed by CPU, and nodes are 'static.
                unsafe { rseq::cmpnev_storeoffp_load(s, head, std::ptr::null_mut(), next_offset) }
            })
            .unwrap();
            let node = match popped {
                Ok(p) => p as *const Node,
                Err(Failure::CompareFailed) => {
                    empty += 1;
                    continue;
                }
                Err(Failure::Aborted) => unreachable!(),
                Err(e @ Failure::FenceFailed) => panic!("{e}"),
            };
            // Push it onto the list of the CPU we run on now.
            loop {
                let r = rseq::retry(Index::CpuId, |s| {
                    let head = &h[s.value() as usize];
                    let old = head.load(Ordering::Relaxed);
                    // SAFETY: this thread owns the popped node.
                    unsafe { (*node).next.store(old as *mut Node, Ordering::Relaxed) };
                    // SAFETY: as above.
                    unsafe { rseq::cmpeqv_storev(s, head.as_ptr(), old, node as i64) }
                })
                .unwrap();
                if r.is_ok() {
                    break;
                }
            }
        }
        empty
    })
    .into_iter()
    .sum();
    // Walk every list: each node exactly once.
    let mut seen = vec![false; NODES];
    for head in heads.iter() {
        let mut p = head.load(Ordering::Relaxed) as *const Node;
        while !p.is_null() {
            // SAFETY: the lists hold 'static nodes and all threads are done.
            let n = unsafe { &*p };
            assert!(!seen[n.id], "node {} twice", n.id);
            seen[n.id] = true;
            p = n.next.load(Ordering::Relaxed);
        }
    }
    assert!(seen.iter().all(|&s| s), "a node was lost");
    eprintln!("{empty_pops} pops found their CPU's list empty");
}

#[test]
fn offset_deref_add_counts_exactly() {
    if !has_area("offset_deref_add_counts_exactly", Index::CpuId) {
        return;
    }
    let n_ops: u64 = scaled(200_000);
    // Per CPU: a pointer to a pair of counters; the add goes to the second.
    let counters = Arc::new(
        (0..2 * SLOTS)
            .map(|_| AtomicI64::new(0))
            .collect::<Vec<_>>(),
    );
    let ptrs: Arc<Vec<AtomicI64>> = Arc::new(
        (0..SLOTS)
            .map(|i| AtomicI64::new(counters[2 * i].as_ptr() as i64))
            .collect(),
    );
    let threads = 2 * allowed_cpus().len();
    let p = ptrs.clone();
    on_threads(threads, move |_| {
        for _ in 0..n_ops {
            rseq::retry(Index::CpuId, |s| {
                let ptr = p[s.value() as usize].as_ptr() as *mut *mut u8;
                // SAFETY: the counters are written only by rseq operations
                // indexed by CPU; the pointers stay valid (Arc kept below).
                unsafe { rseq::offset_deref_addv(s, ptr, 8, 1) }
            })
            .unwrap()
            .unwrap();
        }
    });
    let sum_second: i64 = counters
        .iter()
        .skip(1)
        .step_by(2)
        .map(|c| c.load(Ordering::Relaxed))
        .sum();
    let sum_first: i64 = counters
        .iter()
        .step_by(2)
        .map(|c| c.load(Ordering::Relaxed))
        .sum();
    assert_eq!((sum_first, sum_second), (0, threads as i64 * n_ops as i64));
}

#[test]
fn compare_two_words_then_store() {
    if !has_area("compare_two_words_then_store", Index::CpuId) {
        return;
    }
    std::thread::spawn(|| {
        let cpu = allowed_cpus()[0];
        pin(cpu);
        let v = slots();
        let v2 = AtomicI64::new(2);
        v[cpu].store(1, Ordering::Relaxed);
        let attempt = |e1: i64, e2: i64| {
            rseq::retry(Index::CpuId, |s| {
                // SAFETY: only this thread writes the slots.
                unsafe {
                    rseq::cmpeqv_cmpeqv_storev(
                        s,
                        v[s.value() as usize].as_ptr(),
                        e1,
                        v2.as_ptr(),
                        e2,
                        9,
                    )
                }
            })
            .unwrap()
        };
        assert_eq!(attempt(1, 3), Err(Failure::CompareFailed));
        assert_eq!(attempt(0, 2), Err(Failure::CompareFailed));
        assert_eq!(v[cpu].load(Ordering::Relaxed), 1);
        assert_eq!(attempt(1, 2), Ok(()));
        assert_eq!(v[cpu].load(Ordering::Relaxed), 9);
    })
    .join()
    .unwrap();
}

/// Per-CPU buffers for the buffer tests: a length word and the items.
struct Buffers {
    cap: usize,
    len: Vec<AtomicI64>,
    items: Vec<AtomicI64>,
}

impl Buffers {
    fn new(cap: usize) -> Arc<Buffers> {
        let cpus = allowed_cpus().iter().max().unwrap() + 1;
        Arc::new(Buffers {
            cap,
            len: (0..cpus).map(|_| AtomicI64::new(0)).collect(),
            items: (0..cpus * cap).map(|_| AtomicI64::new(-1)).collect(),
        })
    }

    /// Every item in every buffer, sorted.
    fn contents(&self) -> Vec<i64> {
        let mut all = Vec::new();
        for (cpu, len) in self.len.iter().enumerate() {
            let n = len.load(Ordering::Acquire) as usize;
            all.extend((0..n).map(|i| self.items[cpu * self.cap + i].load(Ordering::Relaxed)));
        }
        all.sort_unstable();
        all
    }
}

/// Pushes `threads x per_thread` distinct items with `push`, then checks that
/// the buffers hold exactly those items.
fn buffer_test(push: fn(&Buffers, rseq::Start, i64) -> Result<(), Failure>) {
    let per_thread = scaled(20_000) as i64;
    let threads = 2 * allowed_cpus().len();
    let buffers = Buffers::new(threads * per_thread as usize);
    let b = buffers.clone();
    on_threads(threads, move |t| {
        for i in 0..per_thread {
            let item = t as i64 * per_thread + i;
            loop {
                match rseq::retry(Index::CpuId, |s| push(&b, s, item)).unwrap() {
                    Ok(()) => break,
                    Err(Failure::CompareFailed) => continue,
                    Err(Failure::Aborted) => unreachable!(),
                    Err(e @ Failure::FenceFailed) => panic!("{e}"),
                }
            }
        }
    });
    let expected: Vec<i64> = (0..threads as i64 * per_thread).collect();
    assert_eq!(buffers.contents(), expected, "every item exactly once");
}

fn push_trystore(
    b: &Buffers,
    s: rseq::Start,
    item: i64,
    commit: rseq::Commit,
) -> Result<(), Failure> {
    let cpu = s.value() as usize;
    let len = &b.len[cpu];
    let seen = len.load(Ordering::Relaxed);
    let slot = &b.items[cpu * b.cap + seen as usize];
    // SAFETY: lengths and items are written only by rseq operations indexed
    // by CPU; `seen` is below the capacity (sized for every item).
    unsafe {
        rseq::cmpeqv_trystorev_storev(s, len.as_ptr(), seen, slot.as_ptr(), item, seen + 1, commit)
    }
}

fn push_memcpy(
    b: &Buffers,
    s: rseq::Start,
    item: i64,
    commit: rseq::Commit,
) -> Result<(), Failure> {
    let cpu = s.value() as usize;
    let len = &b.len[cpu];
    let seen = len.load(Ordering::Relaxed);
    let slot = &b.items[cpu * b.cap + seen as usize];
    let bytes = item.to_ne_bytes();
    // SAFETY: as in `push_trystore`; the slot holds 8 bytes.
    unsafe {
        rseq::cmpeqv_trymemcpy_storev(
            s,
            len.as_ptr(),
            seen,
            slot.as_ptr().cast(),
            &bytes,
            seen + 1,
            commit,
        )
    }
}

#[test]
fn buffer_push_with_trystore_loses_nothing() {
    if !has_area("buffer_push_with_trystore_loses_nothing", Index::CpuId) {
        return;
    }
    buffer_test(|b, s, item| push_trystore(b, s, item, rseq::Commit::Relaxed));
    buffer_test(|b, s, item| push_trystore(b, s, item, rseq::Commit::Release));
}

#[test]
fn buffer_push_with_memcpy_loses_nothing() {
    if !has_area("buffer_push_with_memcpy_loses_nothing", Index::CpuId) {
        return;
    }
    buffer_test(|b, s, item| push_memcpy(b, s, item, rseq::Commit::Relaxed));
    buffer_test(|b, s, item| push_memcpy(b, s, item, rseq::Commit::Release));
}

/// Slots shared with the signal handler below.
static HANDLER_SLOTS: std::sync::OnceLock<Arc<Vec<AtomicI64>>> = std::sync::OnceLock::new();
static HANDLER_ADDS: AtomicI64 = AtomicI64::new(0);

/// Set by the worker once it has made its first operation: a signal handler
/// must not make a thread's first call of ktl (see `signals::spawn_set_up`).
static HANDLER_WORKER_SET_UP: AtomicBool = AtomicBool::new(false);
/// Signals the handler saw before that.
static EARLY_SIGNALS: AtomicI64 = AtomicI64::new(0);

extern "C" fn add_in_handler(_: libc::c_int) {
    if !HANDLER_WORKER_SET_UP.load(Ordering::Relaxed) {
        EARLY_SIGNALS.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if let Some(slots) = HANDLER_SLOTS.get() {
        // The same operation as the interrupted thread's, from the handler:
        // the handler's section nests inside the interrupted one, which the
        // kernel aborts when the signal is delivered.
        let r = rseq::retry(Index::CpuId, |s| {
            // SAFETY: the slots are written only by rseq operations indexed
            // by CPU.
            unsafe { rseq::add(s, slots[s.value() as usize].as_ptr(), 1) }
        });
        if let Some(Ok(())) = r {
            HANDLER_ADDS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[test]
fn an_operation_in_a_signal_handler_that_interrupted_it() {
    if !has_area(
        "an_operation_in_a_signal_handler_that_interrupted_it",
        Index::CpuId,
    ) {
        return;
    }
    let slots = HANDLER_SLOTS.get_or_init(slots).clone();
    signals::install(libc::SIGUSR2, add_in_handler);
    // The locked fallback makes two system calls per operation (it blocks
    // signals while it holds the lock): fewer operations keep it quick.
    let n: u64 = if rseq::path() == rseq::Path::Locked {
        100_000
    } else {
        2_000_000
    };
    // The worker is set up (its first operation made) before the first
    // signal, as in rseq_add_current's handler test, where a handler that
    // made the thread's first call hung a guest run.
    let (s, first) = (slots.clone(), slots.clone());
    let worker = signals::spawn_set_up(
        move || {
            add_loop(&first, Index::CpuId, 1);
            HANDLER_WORKER_SET_UP.store(true, Ordering::Relaxed);
        },
        move || add_loop(&s, Index::CpuId, n - 1),
    );
    let (results, sent) = signals::signal_until_done(
        vec![worker],
        libc::SIGUSR2,
        std::time::Duration::from_micros(10),
    );
    let aborts = results[0];
    let in_handler = HANDLER_ADDS.load(Ordering::Relaxed);
    assert_eq!(
        EARLY_SIGNALS.load(Ordering::Relaxed),
        0,
        "signals reached the worker before its first operation"
    );
    assert!(in_handler > 0, "{sent} signals, no add in the handler");
    assert_eq!(
        total(&slots),
        n as i64 + in_handler,
        "no update lost between thread and handler"
    );
    eprintln!("{in_handler} adds in handlers, {aborts} aborts, {sent} signals");
}

#[test]
fn operations_in_a_thread_created_by_c() {
    if !has_area("operations_in_a_thread_created_by_c", Index::CpuId) {
        return;
    }
    static C_SLOTS: std::sync::OnceLock<Arc<Vec<AtomicI64>>> = std::sync::OnceLock::new();
    extern "C" fn body(_: *mut libc::c_void) -> *mut libc::c_void {
        if let Some(slots) = C_SLOTS.get() {
            add_loop(slots, Index::CpuId, 100_000);
        }
        std::ptr::null_mut()
    }
    let slots = C_SLOTS.get_or_init(slots).clone();
    let mut threads = Vec::new();
    for _ in 0..4 {
        // pthread_t is an integer in glibc and a pointer in musl: only
        // pthread_create writes it.
        let mut t = std::mem::MaybeUninit::<libc::pthread_t>::uninit();
        // SAFETY: `body` has the C signature and ignores its argument; `t`
        // is writable memory for one pthread_t.
        let r = unsafe {
            libc::pthread_create(t.as_mut_ptr(), std::ptr::null(), body, std::ptr::null_mut())
        };
        assert_eq!(r, 0);
        // SAFETY: pthread_create succeeded, so it wrote the thread's id.
        threads.push(unsafe { t.assume_init() });
    }
    for t in threads {
        // SAFETY: joins a thread created above.
        assert_eq!(unsafe { libc::pthread_join(t, std::ptr::null_mut()) }, 0);
    }
    assert_eq!(total(&slots), 400_000);
}

/// While any gate is closed, every section leaves its fast variant (which
/// checks only the process's count of closed gates) for the gated one, which
/// checks its own value's gate: this runs every operation there, with exact
/// results, while another thread holds `rseq::exclusive` for a value no CPU
/// of this machine has. Before the count existed there was one variant,
/// which the other tests run; now only this test reaches the gated ones.
#[test]
fn every_operation_commits_through_its_gated_section_while_another_value_is_held() {
    const TEST: &str =
        "every_operation_commits_through_its_gated_section_while_another_value_is_held";
    if !has_area(TEST, Index::CpuId) {
        return;
    }
    // A value no CPU here has (the slots cover every CPU number and id).
    let held = (SLOTS - 1) as u32;
    if ktl::cpu::possible_cpus().unwrap_or(1) > held {
        eprintln!("SKIPPED {TEST}: this machine has a CPU numbered {held}");
        return;
    }
    if rseq::path() != rseq::Path::Locked
        && ktl::rseq::fence::kind() != ktl::rseq::fence::FenceKind::Rseq
    {
        eprintln!("SKIPPED {TEST}: no rseq fence, so no exclusive access");
        return;
    }
    let (taken_tx, taken_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let guard = rseq::exclusive(Index::CpuId, held).expect("exclusive");
        taken_tx.send(()).unwrap();
        done_rx.recv().unwrap();
        drop(guard);
    });
    taken_rx.recv().unwrap();

    // add, for both indexes.
    let counts = slots();
    add_loop(&counts, Index::CpuId, 1000);
    let mut expected = 1000;
    if rseq::start(Index::MmCid).is_some() {
        add_loop(&counts, Index::MmCid, 1000);
        expected += 1000;
    }
    assert_eq!(total(&counts), expected);

    // cmpeqv_storev: a failed compare, then a counted store.
    let words = slots();
    for _ in 0..1000 {
        let r = rseq::retry(Index::CpuId, |s| {
            let w = &words[s.value() as usize];
            let seen = w.load(Ordering::Relaxed);
            // SAFETY: as in `add_loop`.
            unsafe { rseq::cmpeqv_storev(s, w.as_ptr(), seen, seen + 1) }
        });
        assert!(
            matches!(r, Some(Ok(()) | Err(Failure::CompareFailed))),
            "{r:?}"
        );
    }
    let r = rseq::retry(Index::CpuId, |s| {
        // SAFETY: as in `add_loop`.
        unsafe { rseq::cmpeqv_storev(s, words[s.value() as usize].as_ptr(), -1, 0) }
    });
    assert_eq!(r, Some(Err(Failure::CompareFailed)));
    assert!(total(&words) > 0 && total(&words) <= 1000);

    // cmpeqv_cmpeqv_storev: both compares, then the store.
    let pairs = slots();
    let second = AtomicI64::new(7);
    for expect2 in [8, 7] {
        let r = rseq::retry(Index::CpuId, |s| {
            let w = &pairs[s.value() as usize];
            // SAFETY: as in `add_loop`; `second` is only read.
            unsafe { rseq::cmpeqv_cmpeqv_storev(s, w.as_ptr(), 0, second.as_ptr(), expect2, 5) }
        });
        let want = if expect2 == 8 {
            Err(Failure::CompareFailed)
        } else {
            Ok(())
        };
        assert_eq!(r, Some(want));
    }
    assert_eq!(total(&pairs), 5);

    // offset_deref_addv: the add lands at the offset from the loaded pointer.
    let target = [AtomicI64::new(0), AtomicI64::new(0)];
    let pointers: Vec<AtomicI64> = (0..SLOTS)
        .map(|_| AtomicI64::new(target.as_ptr() as i64))
        .collect();
    for _ in 0..10 {
        rseq::retry(Index::CpuId, |s| {
            let p = pointers[s.value() as usize].as_ptr().cast::<*mut u8>();
            // SAFETY: the pointers are written by nobody; `target` outlives
            // the adds, which only this thread makes.
            unsafe { rseq::offset_deref_addv(s, p, 8, 3) }
        })
        .unwrap()
        .unwrap();
    }
    assert_eq!(
        (
            target[0].load(Ordering::Relaxed),
            target[1].load(Ordering::Relaxed)
        ),
        (0, 30)
    );

    // cmpnev_storeoffp_load: pop two nodes, then find the list empty, in a
    // thread that stays on one CPU, so on one list.
    std::thread::scope(|scope| {
        scope.spawn(|| {
            pin(allowed_cpus()[0]);
            let nodes = [AtomicI64::new(0), AtomicI64::new(0)];
            nodes[0].store(nodes[1].as_ptr() as i64, Ordering::Relaxed);
            let heads: Vec<AtomicI64> = (0..SLOTS)
                .map(|_| AtomicI64::new(nodes[0].as_ptr() as i64))
                .collect();
            let mut popped = Vec::new();
            loop {
                let r = rseq::retry(Index::CpuId, |s| {
                    let h = heads[s.value() as usize].as_ptr().cast::<*mut u8>();
                    // SAFETY: the heads are written only by this thread's
                    // operations; each node's next pointer is at offset 0.
                    unsafe { rseq::cmpnev_storeoffp_load(s, h, std::ptr::null_mut(), 0) }
                });
                match r {
                    Some(Ok(p)) => popped.push(p as usize),
                    Some(Err(Failure::CompareFailed)) => break,
                    other => panic!("{other:?}"),
                }
                assert!(popped.len() <= 2, "{popped:?}");
            }
            assert_eq!(
                popped,
                [nodes[0].as_ptr() as usize, nodes[1].as_ptr() as usize]
            );
        });
    });

    // cmpeqv_trystorev_storev and cmpeqv_trymemcpy_storev, both orderings,
    // from several threads.
    buffer_test(|b, s, item| push_trystore(b, s, item, rseq::Commit::Relaxed));
    buffer_test(|b, s, item| push_trystore(b, s, item, rseq::Commit::Release));
    buffer_test(|b, s, item| push_memcpy(b, s, item, rseq::Commit::Relaxed));
    buffer_test(|b, s, item| push_memcpy(b, s, item, rseq::Commit::Release));

    done_tx.send(()).unwrap();
    holder.join().unwrap();
}

#[test]
fn every_test_passes_on_the_locked_fallback() {
    without_rseq::rerun("every_test_passes_on_the_locked_fallback", 15);
}
