//! The fast path and the fenced fallback on the same data at the same time,
//! through the rseq operations and the per-CPU structures.
//!
//! Threads released with `ktl::area::release_current_thread` have no area,
//! so their operations close the index value's gate and fence; the other
//! threads run critical sections, which check the gate. The scenarios run in
//! a copy of this binary started with `glibc.pthread.rseq=0`, so that ktl
//! owns the areas and can release them (it never unregisters the C
//! library's). `add_current`, which has no fallback, refuses the released
//! threads' adds. The widest race window is the buffer copy: a section compares
//! the length, copies 64 bytes, then commits, and a fallback operation on
//! another CPU that slipped in between would be overwritten.

use ktl::abi::SyscallStatus;
use ktl::area::ReleaseError;
use ktl::rseq::{self, Commit, Failure, Index, Path};
use ktl_testkit::affinity::allowed_cpus;
use ktl_testkit::fork;
use std::process::Command;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

const CHILD_ENV: &str = "KTL_RSEQ_MIXED_CHILD";

/// Whether this process is the copy that runs the scenarios.
fn in_child() -> bool {
    std::env::var_os(CHILD_ENV).is_some()
}

/// Slots for every index value: CPU numbers and concurrency ids are below
/// the possible CPUs.
fn slot_count() -> usize {
    ktl::cpu::possible_cpus().expect("possible CPUs") as usize
}

/// Releases the calling thread's area when `release`, and checks the path
/// its operations then take.
fn enter(release: bool, index: Index) {
    if release {
        ktl::area::release_current_thread().expect("release the area");
    }
    let want = if release {
        Path::Fenced
    } else {
        Path::CriticalSections
    };
    assert_eq!(rseq::start(index).expect("a start").path(), want);
}

#[test]
fn child_release_moves_the_thread_to_the_fenced_path() {
    if !in_child() {
        return;
    }
    assert_eq!(ktl::layout().owner.to_string(), "ktl");
    let before = ktl::area::stats().unregistered;
    std::thread::spawn(|| {
        enter(false, Index::CpuId);
        assert_eq!(ktl::cpu::sources().cpu_id, ktl::cpu::Source::Area);
        enter(true, Index::CpuId);
        assert_ne!(ktl::cpu::sources().cpu_id, ktl::cpu::Source::Area);
        assert_eq!(rseq::start(Index::MmCid).unwrap().path(), Path::Fenced);
        // Releasing again is a no-op, and the thread never registers again.
        ktl::area::release_current_thread().unwrap();
        assert_eq!(rseq::start(Index::CpuId).unwrap().path(), Path::Fenced);
    })
    .join()
    .unwrap();
    // The release unregistered once; the thread's exit had nothing left.
    assert_eq!(ktl::area::stats().unregistered, before + 1);
    assert_eq!(
        rseq::start(Index::CpuId).unwrap().path(),
        Path::CriticalSections
    );
}

/// `threads` threads add 1 to their slot; every other one is released
/// first and does `fenced` operations, the others `sections`.
fn counters(index: Index, threads: usize, sections: u64, fenced: u64) {
    let slots: Vec<AtomicI64> = (0..slot_count()).map(|_| AtomicI64::new(0)).collect();
    let done = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (slots, done) = (&slots, &done);
            scope.spawn(move || {
                let release = t % 2 == 1;
                enter(release, index);
                let n = if release { fenced } else { sections };
                for _ in 0..n {
                    rseq::retry(index, |s| {
                        // SAFETY: the slots are written only by rseq
                        // operations with `index`; values are below the
                        // possible CPUs.
                        unsafe { rseq::add(s, slots[s.value() as usize].as_ptr(), 1) }
                    })
                    .unwrap()
                    .unwrap();
                }
                done.fetch_add(n, Ordering::Relaxed);
            });
        }
    });
    let total: i64 = slots.iter().map(|s| s.load(Ordering::Relaxed)).sum();
    assert_eq!(total as u64, done.load(Ordering::Relaxed), "no lost update");
    assert_eq!(
        total as u64,
        (threads as u64).div_ceil(2) * sections + (threads as u64 / 2) * fenced
    );
}

#[test]
fn child_counters_sum_exactly_with_both_paths() {
    if !in_child() {
        return;
    }
    counters(Index::CpuId, 8, 200_000, 2_000);
    counters(Index::MmCid, 8, 200_000, 2_000);
}

/// `add_current` has no fallback: in a released thread it refuses every add
/// and writes nothing, while the other threads' sections go on. The
/// `PerCpuCounter` built on it counts the released threads' adds in its
/// shared word, exactly.
#[test]
fn child_add_current_refuses_released_threads() {
    if !in_child() {
        return;
    }
    #[repr(C, align(128))]
    struct Word(AtomicI64);
    for index in [Index::CpuId, Index::MmCid] {
        let words: Vec<Word> = (0..slot_count()).map(|_| Word(AtomicI64::new(0))).collect();
        let counter = ktl::percpu::PerCpuCounter::with_index(index);
        const N: u64 = 100_000;
        let (refused, added) = (AtomicU64::new(0), AtomicU64::new(0));
        std::thread::scope(|scope| {
            for t in 0..8 {
                let (words, counter, refused, added) = (&words, &counter, &refused, &added);
                scope.spawn(move || {
                    let release = t % 2 == 1;
                    enter(release, index);
                    let base = words[0].0.as_ptr().cast::<u8>();
                    for _ in 0..N {
                        // SAFETY: word `i` is at `base + i * size_of::<Word>()`
                        // for every `i` below `words.len()`, and only this
                        // call, with `index`, writes the words.
                        let done = unsafe {
                            rseq::add_current(index, base, size_of::<Word>(), words.len(), 1)
                        };
                        assert_eq!(done, !release, "{index:?}: released {release}");
                        if done { added } else { refused }.fetch_add(1, Ordering::Relaxed);
                        counter.add(1);
                    }
                });
            }
        });
        let total: i64 = words.iter().map(|w| w.0.load(Ordering::Relaxed)).sum();
        assert_eq!(total as u64, added.load(Ordering::Relaxed), "{index:?}");
        assert_eq!(added.load(Ordering::Relaxed), 4 * N, "{index:?}");
        assert_eq!(refused.load(Ordering::Relaxed), 4 * N, "{index:?}");
        assert_eq!(counter.sum(), 8 * N as i64, "{index:?}: PerCpuCounter");
    }
}

/// A `PerCpuHistogram` observed by threads with and without an area: the
/// released threads' observations go to its shared buckets, the others' to
/// the sections, and the totals are exact.
#[test]
fn child_histogram_counts_exactly_with_both_paths() {
    if !in_child() {
        return;
    }
    for index in [Index::CpuId, Index::MmCid] {
        let h = ktl::percpu::PerCpuHistogram::with_index([1.0, 2.0], index).unwrap();
        const N: u64 = 100_000;
        std::thread::scope(|scope| {
            for t in 0..8u64 {
                let h = &h;
                scope.spawn(move || {
                    enter(t % 2 == 1, index);
                    for i in 0..N {
                        // 0.5, 1.5 or 2.5: one bucket each.
                        h.observe((i % 3) as f64 + 0.5);
                    }
                });
            }
        });
        let s = h.snapshot();
        let per = |k: u64| (0..N).filter(|i| i % 3 == k).count() as u64 * 8;
        assert_eq!(s.buckets(), [per(0), per(1), per(2)], "{index:?}");
        let sum = (0..N).map(|i| (i % 3) as f64 + 0.5).sum::<f64>() * 8.0;
        assert_eq!(s.sum(), sum, "{index:?}");
    }
}

/// Caught: the sections compared only the index field, and unregistering an
/// area makes the kernel write `cpu_id = -1` and `mm_cid = 0`, so a start
/// taken with `mm_cid` 0 before `release_current_thread` passed the compare
/// and committed with no kernel protection (in a pop, one node handed to two
/// threads). Failed on e5be285: `add` returned `Ok(())` and stored. Every
/// operation that takes a `Start` must abort and store nothing.
#[test]
fn child_a_start_taken_before_the_release_commits_nothing() {
    if !in_child() {
        return;
    }
    if !ktl::layout().features.contains(ktl::abi::Features::MM_CID) {
        eprintln!("SKIPPED child_a_start_taken_before_the_release_commits_nothing: no mm_cid");
        return;
    }
    // mm_cid 0 is the value the kernel leaves in a released area, and the
    // only thread of a process always has it: run in a fork child, whose
    // one thread keeps its registration.
    fork::in_fork_child(|| {
        released_start_commits_nothing();
        true
    });
}

/// The body of [`child_a_start_taken_before_the_release_commits_nothing`],
/// in a process of one thread.
fn released_start_commits_nothing() {
    // The kernel writes the child's mm_cid on its first return to user
    // space after a reschedule: wait for it.
    let start = (0..1000)
        .find_map(|_| {
            let s = rseq::start(Index::MmCid).expect("a start");
            if s.value() != 0 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            (s.value() == 0).then_some(s)
        })
        .expect("a start with mm_cid 0 in a process of one thread");
    assert_eq!(start.path(), Path::CriticalSections);
    ktl::area::release_current_thread().expect("release the area");

    let word = AtomicI64::new(0);
    let second = AtomicI64::new(0);
    let v = word.as_ptr();
    let v2 = second.as_ptr();
    // A one-node list for the pop, and a pointer for the deref-add.
    let mut node = [0usize; 2];
    let node_ptr = node.as_mut_ptr().cast::<u8>();
    let mut head: *mut u8 = node_ptr;
    let mut target = word.as_ptr().cast::<u8>();
    let mut dst = [0u8; 16];
    let src = [7u8; 16];
    // SAFETY: for each call, every location is a live local of this
    // thread, aligned, and written by nothing else.
    let results = unsafe {
        [
            ("add", rseq::add(start, v, 1)),
            ("cmpeqv_storev", rseq::cmpeqv_storev(start, v, 0, 5)),
            (
                "cmpnev_storeoffp_load",
                rseq::cmpnev_storeoffp_load(start, &mut head, core::ptr::null_mut(), 0).map(drop),
            ),
            (
                "offset_deref_addv",
                rseq::offset_deref_addv(start, &mut target, 0, 1),
            ),
            (
                "cmpeqv_cmpeqv_storev",
                rseq::cmpeqv_cmpeqv_storev(start, v, 0, v2, 0, 5),
            ),
            (
                "cmpeqv_trystorev_storev",
                rseq::cmpeqv_trystorev_storev(start, v, 0, v2, 9, 5, Commit::Relaxed),
            ),
            (
                "cmpeqv_trymemcpy_storev",
                rseq::cmpeqv_trymemcpy_storev(
                    start,
                    v,
                    0,
                    dst.as_mut_ptr(),
                    &src,
                    5,
                    Commit::Release,
                ),
            ),
        ]
    };
    for (name, result) in results {
        assert_eq!(result, Err(Failure::Aborted), "{name} with a released area");
    }
    assert_eq!(word.load(Ordering::Relaxed), 0, "nothing committed");
    assert_eq!(second.load(Ordering::Relaxed), 0, "no speculative store");
    assert_eq!(head, node_ptr, "nothing popped");
    assert_eq!(dst, [0; 16], "nothing copied");
    // A fresh start takes the fallback, which commits.
    let done = rseq::retry(Index::MmCid, |s| {
        assert_eq!(s.path(), Path::Fenced);
        // SAFETY: as above.
        unsafe { rseq::add(s, v, 1) }
    });
    assert_eq!(done, Some(Ok(())));
    assert_eq!(word.load(Ordering::Relaxed), 1);
}

/// Caught: `add_current` zero-extended the index field, so a released
/// area's `cpu_id` (-1) passed the bound check of an array longer than
/// 0xFFFF_FFFE words, and the add committed with no kernel protection.
/// Failed on e5be285: it returned `true`. With a stride of 0 every index
/// addresses the one word, so the call is sound whatever `len` is.
#[test]
fn child_add_current_refuses_a_released_area_whatever_the_length() {
    if !in_child() {
        return;
    }
    std::thread::spawn(|| {
        ktl::area::release_current_thread().expect("release the area");
        let word = AtomicI64::new(0);
        let base = word.as_ptr().cast::<u8>();
        for len in [0xFFFF_FFFF, 0x1_0000_0000, usize::MAX] {
            for index in [Index::CpuId, Index::MmCid] {
                // SAFETY: with stride 0, every index below `len` addresses
                // `word`, a live, aligned i64 written only by this call.
                let done = unsafe { rseq::add_current(index, base, 0, len, 1) };
                assert!(!done, "{index:?}, len {len:#x}: added with no area");
            }
        }
        assert_eq!(word.load(Ordering::Relaxed), 0);
    })
    .join()
    .unwrap();
}

/// Bytes per buffer item: wide enough that a section's copy takes a while.
const ITEM: usize = 64;

/// Per-slot stacks of `ITEM`-byte items, moved only by memcpy operations.
struct Buffers {
    cap: usize,
    len: Vec<AtomicI64>,
    items: Vec<AtomicU64>,
}

impl Buffers {
    const WORDS: usize = ITEM / 8;

    /// `per_slot` items on each slot that `index` values can reach; item
    /// `id` is the word `id` followed by its check words.
    fn new(per_slot: usize) -> (Buffers, usize) {
        let slots = slot_count();
        let reach = allowed_cpus().len().min(slots);
        let count = reach * per_slot;
        let b = Buffers {
            cap: count,
            len: (0..slots).map(|_| AtomicI64::new(0)).collect(),
            items: (0..slots * count * Self::WORDS)
                .map(|_| AtomicU64::new(0))
                .collect(),
        };
        for id in 0..count {
            let slot = id % reach;
            let at = b.len[slot].fetch_add(1, Ordering::Relaxed) as usize;
            for (w, v) in b.item(slot, at).iter().zip(Self::words(id as u64)) {
                w.store(v, Ordering::Relaxed);
            }
        }
        (b, count)
    }

    /// The id, then check words derived from it.
    fn words(id: u64) -> [u64; Buffers::WORDS] {
        core::array::from_fn(|i| match i {
            0 => id,
            _ => id.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(i as u32),
        })
    }

    fn item(&self, slot: usize, i: usize) -> &[AtomicU64] {
        let at = (slot * self.cap + i) * Self::WORDS;
        &self.items[at..at + Self::WORDS]
    }

    /// Pops the top item of the current slot into `out`: `false` if empty.
    fn pop(&self, index: Index, out: &mut [u8; ITEM]) -> bool {
        loop {
            let r = rseq::retry(index, |s| {
                let slot = s.value() as usize;
                let len = &self.len[slot];
                let seen = len.load(Ordering::Acquire);
                if seen == 0 {
                    return Ok(false);
                }
                let top = self.item(slot, seen as usize - 1);
                // SAFETY: the item's ITEM bytes; items and lengths are
                // written only by rseq operations with `index` on the slot
                // of their value.
                let src = unsafe { std::slice::from_raw_parts(top.as_ptr().cast::<u8>(), ITEM) };
                // SAFETY: as above; `out` is this thread's.
                unsafe {
                    rseq::cmpeqv_trymemcpy_storev(
                        s,
                        len.as_ptr(),
                        seen,
                        out.as_mut_ptr(),
                        src,
                        seen - 1,
                        Commit::Relaxed,
                    )
                }
                .map(|()| true)
            })
            .unwrap();
            match r {
                Ok(popped) => return popped,
                Err(Failure::CompareFailed) => continue,
                Err(Failure::Aborted) => unreachable!("retry absorbs aborts"),
                Err(e @ Failure::FenceFailed) => panic!("{e}"),
            }
        }
    }

    /// Pushes `item` onto the current slot.
    fn push(&self, index: Index, item: &[u8; ITEM]) {
        loop {
            let r = rseq::retry(index, |s| {
                let slot = s.value() as usize;
                let len = &self.len[slot];
                let seen = len.load(Ordering::Relaxed);
                assert!((seen as usize) < self.cap, "room for every item");
                let dst = self.item(slot, seen as usize).as_ptr() as *mut u8;
                // SAFETY: as in `pop`; `dst` is the free item past the length.
                unsafe {
                    rseq::cmpeqv_trymemcpy_storev(
                        s,
                        len.as_ptr(),
                        seen,
                        dst,
                        item,
                        seen + 1,
                        Commit::Release,
                    )
                }
            })
            .unwrap();
            if r.is_ok() {
                return;
            }
        }
    }

    /// Checks that every item is present once and intact.
    fn check(&self, count: usize) {
        let mut seen = vec![0u32; count];
        for slot in 0..self.len.len() {
            let n = self.len[slot].load(Ordering::Acquire) as usize;
            for i in 0..n {
                let words: Vec<u64> = self
                    .item(slot, i)
                    .iter()
                    .map(|w| w.load(Ordering::Relaxed))
                    .collect();
                let id = words[0] as usize;
                assert!(id < count, "a corrupt item: {words:x?}");
                assert_eq!(words, Buffers::words(id as u64), "item {id} torn");
                seen[id] += 1;
            }
        }
        let lost = seen.iter().filter(|&&c| c == 0).count();
        let twice = seen.iter().filter(|&&c| c > 1).count();
        assert_eq!((lost, twice), (0, 0), "items lost, items seen twice");
    }
}

#[test]
fn child_memcpy_buffers_keep_every_item_with_both_paths() {
    if !in_child() {
        return;
    }
    for index in [Index::CpuId, Index::MmCid] {
        let (b, count) = Buffers::new(32);
        std::thread::scope(|scope| {
            for t in 0..8 {
                let b = &b;
                scope.spawn(move || {
                    let release = t % 2 == 1;
                    enter(release, index);
                    let n = if release { 2_000 } else { 100_000 };
                    let mut item = [0u8; ITEM];
                    for _ in 0..n {
                        if b.pop(index, &mut item) {
                            b.push(index, &item);
                        }
                    }
                });
            }
        });
        b.check(count);
    }
}

/// The per-CPU structures with half of the threads released: counters sum
/// exactly, and every pool object is accounted for, never out twice.
#[test]
fn child_percpu_structures_with_both_paths() {
    if !in_child() {
        return;
    }
    use ktl::percpu::{PerCpuCounter, PerCpuStack, PoolBuilder};
    use std::sync::atomic::AtomicBool;
    for index in [Index::CpuId, Index::MmCid] {
        let counter = PerCpuCounter::with_index(index);
        let stack = PerCpuStack::with_index(index);
        let created = AtomicU64::new(0);
        let mut pool = PoolBuilder::new()
            .index(index)
            .cache(4)
            .build(|| AtomicBool::new(false));
        std::thread::scope(|scope| {
            for t in 0..8u64 {
                let (counter, stack, pool, created) = (&counter, &stack, &pool, &created);
                scope.spawn(move || {
                    let release = t % 2 == 1;
                    enter(release, index);
                    let n = if release { 500 } else { 50_000 };
                    let mut held = Vec::new();
                    for i in 0..n {
                        counter.add(2);
                        counter.sub(1);
                        stack.push(t << 32 | i);
                        let o = pool.get();
                        assert!(!o.swap(true, Ordering::Relaxed), "an object out twice");
                        held.push(o);
                        if held.len() > (i % 7) as usize {
                            for o in held.drain(..) {
                                o.store(false, Ordering::Relaxed);
                            }
                        }
                    }
                    for o in held.drain(..) {
                        o.store(false, Ordering::Relaxed);
                    }
                    created.fetch_add(n, Ordering::Relaxed);
                });
            }
        });
        let ops = created.load(Ordering::Relaxed);
        assert_eq!(counter.sum() as u64, ops, "{index:?}: counter");
        let mut stack = stack;
        let mut values = stack.drain();
        values.sort_unstable();
        values.dedup();
        assert_eq!(values.len() as u64, ops, "{index:?}: stack");
        let made = pool.created() as usize;
        let (caches, overflow) = pool.available();
        assert_eq!(
            caches.iter().sum::<usize>() + overflow,
            made,
            "{index:?}: pool"
        );
        assert!(pool.drain().iter().all(|o| !o.load(Ordering::Relaxed)));
    }
}

#[test]
fn the_scenarios_pass_in_a_process_owned_by_ktl() {
    if in_child() {
        return;
    }
    let syscall = ktl::layout().kernel.syscall;
    if syscall != SyscallStatus::Available {
        eprintln!(
            "SKIPPED the_scenarios_pass_in_a_process_owned_by_ktl: \
             the rseq system call is {syscall}, so ktl cannot own the areas"
        );
        return;
    }
    let fence = rseq::fence::kind();
    if fence != rseq::fence::FenceKind::Rseq {
        eprintln!(
            "SKIPPED the_scenarios_pass_in_a_process_owned_by_ktl: \
             the fenced fallback needs the membarrier rseq fence; here it is {fence}"
        );
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["child_", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .env("GLIBC_TUNABLES", "glibc.pthread.rseq=0")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the copy failed:\n{text}");
    assert!(text.contains("test result: ok. 8 passed"), "{text}");
}

#[test]
fn release_is_refused_when_the_c_library_owns_the_area() {
    if in_child() || ktl::layout().owner != ktl::Owner::Libc {
        eprintln!(
            "SKIPPED release_is_refused_when_the_c_library_owns_the_area: the owner is {}",
            ktl::layout().owner
        );
        return;
    }
    let err = ktl::area::release_current_thread().unwrap_err();
    assert_eq!(err, ReleaseError::OwnedByLibc);
    assert!(err.to_string().contains("C library"), "{err}");
    assert_eq!(
        rseq::start(Index::CpuId).unwrap().path(),
        Path::CriticalSections
    );
}
