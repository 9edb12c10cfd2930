//! The operations that read the index inside their section, besides
//! `add_current` (tested on its own): `cmpeqv_storev_current` as a per-CPU
//! lock, `pop_current` and `push_current` as per-CPU lists,
//! `stack_push_current` and `stack_pop_current` as per-CPU stacks of words.
//! Exact counts, every node and word once, full and empty stacks, with both indexes, more threads than CPUs, aborts that
//! really happen (two threads pinned to one CPU and signalled), and index
//! values past the slots. The whole file runs again in a re-executed copy
//! under a seccomp filter that makes rseq fail with ENOSYS: there every
//! operation has no area, returns `None` (or `false`) and writes nothing,
//! and the tests' own fallbacks (a mutex, a shared list) take the work.

use ktl::rseq::{self, Commit, Failure, Index, WordStack};
use ktl_testkit::affinity::{allowed_cpus, pin};
use ktl_testkit::{signals, without_rseq};
use std::sync::atomic::{AtomicI64, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Whether this process runs critical sections for `index`; says so when
/// not.
fn sections(test: &str, index: Index) -> bool {
    let live = rseq::start(index).is_some_and(|s| s.path() == rseq::Path::CriticalSections);
    if !live {
        eprintln!(
            "{test}: no critical sections for {index:?} here ({}); the operations must refuse",
            rseq::path()
        );
    }
    live
}

fn possible() -> usize {
    ktl::cpu::possible_cpus().expect("possible CPUs") as usize
}

/// One CPU's lock and the count it guards, on its own pair of cache lines.
#[repr(C, align(128))]
#[derive(Default)]
struct Locked {
    lock: AtomicI64,
    count: AtomicI64,
}

/// Per-CPU locks, and a mutex for the threads that have no area.
struct Locks {
    slots: Vec<Locked>,
    fallback: Mutex<i64>,
}

impl Locks {
    fn new() -> Arc<Locks> {
        Arc::new(Locks {
            slots: (0..possible()).map(|_| Locked::default()).collect(),
            fallback: Mutex::new(0),
        })
    }

    /// Takes the current CPU's lock, counts, releases. Returns whether it
    /// took a per-CPU lock, and the failed compares it saw.
    fn count(&self, index: Index) -> (bool, u64) {
        let base = self.slots[0].lock.as_ptr().cast::<u8>();
        let mut held = 0;
        loop {
            // SAFETY: lock `i` is the aligned AtomicI64 at `base + i *
            // size_of::<Locked>()` for every `i` below `slots.len()`; the
            // locks are written only by this operation (one index per
            // `Locks`) and by their holder's release store below, made while
            // the lock is 1, when the operation's compare fails.
            let r = unsafe {
                rseq::cmpeqv_storev_current(
                    index,
                    base,
                    size_of::<Locked>(),
                    self.slots.len(),
                    0,
                    1,
                )
            };
            match r {
                Some(Ok(word)) => {
                    std::sync::atomic::fence(Ordering::Acquire);
                    let i = self
                        .slots
                        .iter()
                        .position(|s| s.lock.as_ptr() == word)
                        .expect("the word is one of the locks");
                    let mine = &self.slots[i];
                    assert_eq!(mine.lock.load(Ordering::Relaxed), 1, "lock {i} is held");
                    // A plain increment: the lock guards it.
                    let n = mine.count.load(Ordering::Relaxed);
                    mine.count.store(n + 1, Ordering::Relaxed);
                    mine.lock.store(0, Ordering::Release);
                    return (true, held);
                }
                Some(Err(Failure::CompareFailed)) => {
                    held += 1;
                    std::hint::spin_loop();
                }
                Some(Err(e)) => panic!("{e}"),
                None => {
                    *self.fallback.lock().unwrap() += 1;
                    return (false, held);
                }
            }
        }
    }

    fn total(&self) -> i64 {
        let per_cpu: i64 = self
            .slots
            .iter()
            .map(|s| s.count.load(Ordering::Relaxed))
            .sum();
        per_cpu + *self.fallback.lock().unwrap()
    }

    fn all_free(&self) -> bool {
        self.slots
            .iter()
            .all(|s| s.lock.load(Ordering::Relaxed) == 0)
    }
}

#[test]
fn a_per_cpu_lock_counts_exactly_with_both_indexes() {
    const TEST: &str = "a_per_cpu_lock_counts_exactly_with_both_indexes";
    for index in [Index::CpuId, Index::MmCid] {
        let live = sections(TEST, index);
        let locks = Locks::new();
        let n = 200_000u64;
        let threads = 3 * allowed_cpus().len();
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let locks = locks.clone();
                std::thread::spawn(move || {
                    (0..n).map(|_| u64::from(locks.count(index).0)).sum::<u64>()
                })
            })
            .collect();
        let per_cpu: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        let want = threads as u64 * n;
        assert_eq!(locks.total(), want as i64, "{index:?}: no lost count");
        assert!(locks.all_free(), "{index:?}: every lock released");
        let expected = if live { want } else { 0 };
        assert_eq!(per_cpu, expected, "{index:?}: per-CPU locks taken");
    }
}

/// A list node: the next pointer first, then its number.
#[repr(C)]
struct Node {
    next: AtomicPtr<Node>,
    id: usize,
}

/// One CPU's list head, on its own pair of cache lines.
#[repr(C, align(128))]
#[derive(Default)]
struct Head(AtomicPtr<Node>);

/// Per-CPU lists, a shared list for the threads that have no area, and the
/// nodes (owned here, freed with it).
struct Lists {
    heads: Vec<Head>,
    fallback: Mutex<Vec<*mut Node>>,
    nodes: Vec<*mut Node>,
}

// SAFETY: the raw node pointers are owned by `Lists` and moved between
// threads only through the lists' operations and the mutex.
unsafe impl Send for Lists {}
// SAFETY: as above.
unsafe impl Sync for Lists {}

impl Lists {
    /// `per_slot` nodes on each slot's list (on the shared list without an
    /// area).
    fn new(per_slot: usize) -> Arc<Lists> {
        let heads: Vec<Head> = (0..possible()).map(|_| Head::default()).collect();
        let mut nodes = Vec::new();
        for head in &heads {
            for _ in 0..per_slot {
                let node = Box::into_raw(Box::new(Node {
                    next: AtomicPtr::new(head.0.load(Ordering::Relaxed)),
                    id: nodes.len(),
                }));
                head.0.store(node, Ordering::Relaxed);
                nodes.push(node);
            }
        }
        Arc::new(Lists {
            heads,
            fallback: Mutex::new(Vec::new()),
            nodes,
        })
    }

    fn base(&self) -> *mut u8 {
        self.heads[0].0.as_ptr().cast()
    }

    /// Pops a node off the current CPU's list (the shared one without an
    /// area); `None` when that list is empty.
    fn pop(&self, index: Index) -> Option<*mut Node> {
        // SAFETY: head `i` is the aligned pointer at `base + i *
        // size_of::<Head>()` for every `i` below `heads.len()`; the heads are
        // written only by pop_current and push_current with one index per
        // `Lists`; every node on a list is a live `Node` of `nodes`, whose
        // next pointer is at offset 0.
        let r = unsafe {
            rseq::pop_current(index, self.base(), size_of::<Head>(), self.heads.len(), 0)
        };
        match r {
            Some(Ok(p)) => Some(p.cast()),
            Some(Err(Failure::CompareFailed)) => None,
            Some(Err(e)) => panic!("{e}"),
            None => self.fallback.lock().unwrap().pop(),
        }
    }

    /// Pushes `node` on the current CPU's list (the shared one without an
    /// area).
    fn push(&self, index: Index, node: *mut Node) {
        // SAFETY: as in `pop`; `node` was popped by this thread, so it is on
        // no list.
        let done = unsafe {
            rseq::push_current(
                index,
                self.base(),
                size_of::<Head>(),
                self.heads.len(),
                node.cast(),
                0,
            )
        };
        if !done {
            self.fallback.lock().unwrap().push(node);
        }
    }

    /// How many times each node is on a list, by id.
    fn seen(&self) -> Vec<usize> {
        let mut seen = vec![0; self.nodes.len()];
        for head in &self.heads {
            let mut p = head.0.load(Ordering::Relaxed);
            let mut steps = 0;
            while !p.is_null() {
                steps += 1;
                assert!(steps <= self.nodes.len(), "a cycle in a list");
                // SAFETY: a live node of `nodes`; no other thread runs.
                let node = unsafe { &*p };
                seen[node.id] += 1;
                p = node.next.load(Ordering::Relaxed);
            }
        }
        for &p in self.fallback.lock().unwrap().iter() {
            // SAFETY: as above.
            seen[unsafe { &*p }.id] += 1;
        }
        seen
    }
}

impl Drop for Lists {
    fn drop(&mut self) {
        for &p in &self.nodes {
            // SAFETY: made by `Box::into_raw` in `new`, freed once, here.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

#[test]
fn pop_and_push_keep_every_node_once_with_both_indexes() {
    const TEST: &str = "pop_and_push_keep_every_node_once_with_both_indexes";
    for index in [Index::CpuId, Index::MmCid] {
        let live = sections(TEST, index);
        let lists = Lists::new(50);
        if !live {
            // Without an area, nothing may be popped off the per-CPU lists.
            assert_eq!(lists.pop(index), None, "{index:?}");
            let mut all = lists.fallback.lock().unwrap();
            all.extend(lists.nodes.iter().copied());
            for head in &lists.heads {
                head.0.store(std::ptr::null_mut(), Ordering::Relaxed);
            }
        }
        let n = 200_000u64;
        let threads = 3 * allowed_cpus().len();
        let moved = Arc::new(AtomicU64::new(0));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (lists, moved) = (lists.clone(), moved.clone());
                std::thread::spawn(move || {
                    for _ in 0..n {
                        if let Some(node) = lists.pop(index) {
                            lists.push(index, node);
                            moved.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let seen = lists.seen();
        assert!(
            seen.iter().all(|&s| s == 1),
            "{index:?}: {} nodes lost, {} on two lists",
            seen.iter().filter(|&&s| s == 0).count(),
            seen.iter().filter(|&&s| s > 1).count()
        );
        assert!(
            moved.load(Ordering::Relaxed) > 0,
            "{index:?}: nothing moved"
        );
    }
}

/// One CPU's stack of words, on its own pair of cache lines.
#[repr(C, align(128))]
struct Slot(WordStack);

/// Per-CPU stacks of words (the ids of the words made), a shared stack for
/// the threads that have no area, and the words' memory.
struct Stacks {
    slots: Vec<Slot>,
    fallback: Mutex<Vec<usize>>,
    _words: Vec<usize>,
    made: usize,
}

impl Stacks {
    /// `per_slot` words on each stack, each with room for every word made,
    /// or `cap` words when given.
    fn new(per_slot: usize, cap: Option<usize>) -> Arc<Stacks> {
        let cpus = possible();
        let made = per_slot * cpus;
        let cap = cap.unwrap_or(made);
        let mut words = vec![usize::MAX; cpus * cap];
        let slots = words
            .chunks_mut(cap)
            .enumerate()
            .map(|(c, w)| {
                for (j, word) in w.iter_mut().take(per_slot).enumerate() {
                    *word = c * per_slot + j;
                }
                Slot(WordStack {
                    len: AtomicUsize::new(per_slot),
                    cap,
                    items: w.as_mut_ptr(),
                })
            })
            .collect();
        Arc::new(Stacks {
            slots,
            fallback: Mutex::new(Vec::new()),
            _words: words,
            made,
        })
    }

    fn base(&self) -> *mut u8 {
        self.slots.as_ptr().cast_mut().cast()
    }

    /// Pops a word off the current CPU's stack (the shared one without an
    /// area); `None` when it is empty.
    fn pop(&self, index: Index) -> Option<usize> {
        // SAFETY: stack `i` is the aligned WordStack at `base + i *
        // size_of::<Slot>()` for every `i` below `slots.len()`, its words
        // valid for `cap`; only these two operations, one index per
        // `Stacks`, write the stacks.
        let r = unsafe {
            rseq::stack_pop_current(index, self.base(), size_of::<Slot>(), self.slots.len())
        };
        match r {
            Some(Ok(w)) => Some(w),
            Some(Err(Failure::CompareFailed)) => None,
            Some(Err(e)) => panic!("{e}"),
            None => self.fallback.lock().unwrap().pop(),
        }
    }

    /// Pushes `word` on the current CPU's stack (the shared one without an
    /// area); `false` when that stack is full.
    fn push(&self, index: Index, word: usize, commit: Commit) -> bool {
        // SAFETY: as in `pop`.
        let r = unsafe {
            rseq::stack_push_current(
                index,
                self.base(),
                size_of::<Slot>(),
                self.slots.len(),
                word,
                commit,
            )
        };
        match r {
            Some(Ok(())) => true,
            Some(Err(Failure::CompareFailed)) => false,
            Some(Err(e)) => panic!("{e}"),
            None => {
                self.fallback.lock().unwrap().push(word);
                true
            }
        }
    }

    /// How many times each word is on a stack.
    fn seen(&self) -> Vec<usize> {
        let mut seen = vec![0; self.made];
        for slot in &self.slots {
            let stack = &slot.0;
            let n = stack.len.load(Ordering::Acquire);
            assert!(n <= stack.cap, "a length past the capacity");
            for j in 0..n {
                // SAFETY: below the length, inside the stack's words; no
                // other thread runs.
                let w = unsafe { *stack.items.add(j) };
                seen[w] += 1;
            }
        }
        for &w in self.fallback.lock().unwrap().iter() {
            seen[w] += 1;
        }
        seen
    }
}

#[test]
fn word_stacks_keep_every_word_once_with_both_indexes() {
    const TEST: &str = "word_stacks_keep_every_word_once_with_both_indexes";
    for index in [Index::CpuId, Index::MmCid] {
        let live = sections(TEST, index);
        let stacks = Stacks::new(50, None);
        if !live {
            assert_eq!(
                stacks.pop(index),
                None,
                "{index:?}: nothing popped without an area"
            );
            let mut all = stacks.fallback.lock().unwrap();
            for slot in &stacks.slots {
                let n = slot.0.len.swap(0, Ordering::Relaxed);
                // SAFETY: below the length; no other thread runs yet.
                all.extend((0..n).map(|j| unsafe { *slot.0.items.add(j) }));
            }
        }
        let n = 200_000u64;
        let threads = 3 * allowed_cpus().len();
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let stacks = stacks.clone();
                std::thread::spawn(move || {
                    let commit = if t % 2 == 0 {
                        Commit::Relaxed
                    } else {
                        Commit::Release
                    };
                    let mut moved = 0u64;
                    for _ in 0..n {
                        if let Some(w) = stacks.pop(index) {
                            assert!(stacks.push(index, w, commit), "room for every word");
                            moved += 1;
                        }
                    }
                    moved
                })
            })
            .collect();
        let moved: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        let seen = stacks.seen();
        assert!(
            seen.iter().all(|&s| s == 1),
            "{index:?}: {} words lost, {} twice",
            seen.iter().filter(|&&s| s == 0).count(),
            seen.iter().filter(|&&s| s > 1).count()
        );
        assert!(moved > 0, "{index:?}: nothing moved");
    }
}

#[test]
fn a_full_stack_takes_nothing_and_an_empty_one_gives_nothing() {
    let live = sections(
        "a_full_stack_takes_nothing_and_an_empty_one_gives_nothing",
        Index::CpuId,
    );
    if !live {
        return;
    }
    let stacks = Stacks::new(0, Some(2));
    std::thread::scope(|s| {
        s.spawn(|| {
            let cpu = allowed_cpus()[0];
            pin(cpu);
            assert_eq!(stacks.pop(Index::CpuId), None, "empty");
            assert!(stacks.push(Index::CpuId, 0, Commit::Relaxed));
            assert!(stacks.push(Index::CpuId, 1, Commit::Release));
            assert!(!stacks.push(Index::CpuId, 0, Commit::Relaxed), "full at 2");
            assert_eq!(stacks.slots[cpu].0.len.load(Ordering::Relaxed), 2);
            assert_eq!(stacks.pop(Index::CpuId), Some(1));
            assert_eq!(stacks.pop(Index::CpuId), Some(0));
            assert_eq!(stacks.pop(Index::CpuId), None, "empty again");
        });
    });
}

extern "C" fn on_signal(_: libc::c_int) {}

#[test]
fn two_threads_on_one_cpu_abort_and_lose_nothing() {
    const TEST: &str = "two_threads_on_one_cpu_abort_and_lose_nothing";
    let live = sections(TEST, Index::CpuId);
    signals::install(libc::SIGUSR1, on_signal);
    let cpu = allowed_cpus()[0];
    let (locks, lists, stacks) = (Locks::new(), Lists::new(50), Stacks::new(50, None));
    const ROUND: u64 = 100_000;
    const MAX_ROUNDS: u64 = if cfg!(debug_assertions) { 50 } else { 200 };
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (locks, lists, stacks) = (locks.clone(), lists.clone(), stacks.clone());
            std::thread::spawn(move || {
                pin(cpu);
                let mut done = 0;
                for _ in 0..MAX_ROUNDS {
                    for _ in 0..ROUND {
                        locks.count(Index::CpuId);
                        if let Some(node) = lists.pop(Index::CpuId) {
                            lists.push(Index::CpuId, node);
                        }
                        if let Some(w) = stacks.pop(Index::CpuId) {
                            assert!(stacks.push(Index::CpuId, w, Commit::Relaxed));
                        }
                    }
                    done += ROUND;
                    if !live || (rseq::aborts() > 0 && done >= 10 * ROUND) {
                        break;
                    }
                }
                (done, rseq::aborts())
            })
        })
        .collect();
    let (results, sent) =
        signals::signal_until_done(workers, libc::SIGUSR1, std::time::Duration::from_micros(20));
    let done: u64 = results.iter().map(|r| r.0).sum();
    let aborts: u64 = results.iter().map(|r| r.1).sum();
    assert_eq!(locks.total(), done as i64, "no lost count");
    assert!(locks.all_free(), "every lock released");
    assert!(lists.seen().iter().all(|&s| s == 1), "every node once");
    assert!(stacks.seen().iter().all(|&s| s == 1), "every word once");
    if live {
        assert_eq!(
            locks.slots[cpu].count.load(Ordering::Relaxed),
            done as i64,
            "all on the pinned CPU's lock"
        );
        assert!(
            aborts > 0,
            "{done} rounds and {sent} signals caused no abort"
        );
    }
    eprintln!("{aborts} aborts in {done} rounds, {sent} signals");
}

#[test]
fn index_values_past_the_slots_do_nothing() {
    let live = sections("index_values_past_the_slots_do_nothing", Index::CpuId);
    let cpu = *allowed_cpus().last().unwrap();
    let (locks, lists) = (Locks::new(), Lists::new(1));
    std::thread::scope(|s| {
        s.spawn(|| {
            pin(cpu);
            let lock_base = locks.slots[0].lock.as_ptr().cast::<u8>();
            for len in [0, cpu] {
                // SAFETY: the slots below `len` are valid; only these
                // operations write them (see `Locks` and `Lists`).
                let r = unsafe {
                    rseq::cmpeqv_storev_current(
                        Index::CpuId,
                        lock_base,
                        size_of::<Locked>(),
                        len,
                        0,
                        1,
                    )
                };
                assert_eq!(r, None, "CPU {cpu} past {len} locks");
                // SAFETY: as above.
                let r = unsafe {
                    rseq::pop_current(Index::CpuId, lists.base(), size_of::<Head>(), len, 0)
                };
                assert_eq!(r, None, "CPU {cpu} past {len} lists");
                let node = lists.nodes[0];
                // SAFETY: as above; the node's next pointer may be written.
                let pushed = unsafe {
                    rseq::push_current(
                        Index::CpuId,
                        lists.base(),
                        size_of::<Head>(),
                        len,
                        node.cast(),
                        0,
                    )
                };
                assert!(!pushed, "CPU {cpu} past {len} lists");
            }
            // SAFETY: as above.
            let r = unsafe {
                rseq::cmpeqv_storev_current(
                    Index::CpuId,
                    lock_base,
                    size_of::<Locked>(),
                    cpu + 1,
                    0,
                    1,
                )
            };
            assert_eq!(r, live.then_some(Ok(locks.slots[cpu].lock.as_ptr())));
        });
    });
    let held: Vec<usize> = (0..locks.slots.len())
        .filter(|&i| locks.slots[i].lock.load(Ordering::Relaxed) != 0)
        .collect();
    assert_eq!(held, if live { vec![cpu] } else { vec![] });
    assert!(lists.seen().iter().all(|&s| s == 1), "the lists unchanged");
}

#[test]
fn every_test_passes_without_rseq() {
    without_rseq::rerun("every_test_passes_without_rseq", 7);
}
