//! The per-CPU memory pool in a real process: exact accounting of items
//! allocated and freed by many threads (every instance distinct and at
//! `base + cpu × stride`, per-CPU patterns read back, freed items reused),
//! the robust mode catching injected double frees and corruption, leaks
//! reported on destroy, typed errors for bad builder input and failed
//! mappings, a `fork` child working on its own copy, and restartable
//! sequences adding to the current CPU's instance with exact sums.

use ktl::Errno;
use ktl::percpu::mempool::{
    DEFAULT_POISON, MemPool, MemPoolBuilder, MemPoolError, PerCpuItem, page_size,
};
use ktl::rseq::{self, Index};
use ktl_testkit::affinity::{allowed_cpus, pin};
use std::collections::HashSet;
use std::ptr::NonNull;
use std::sync::Barrier;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// `n` operations on critical sections; a twentieth of that on the locked
/// fallback, which makes system calls per operation (and runs under
/// emulators, where each is slow).
fn scaled(n: u64) -> u64 {
    if rseq::path() == rseq::Path::Locked {
        (n / 20).max(1)
    } else {
        n
    }
}

/// Whether the calling thread can run operations with `index`; says why
/// not when it cannot (a kernel without `mm_cid`, no fallback).
fn can_run(test: &str, index: Index) -> bool {
    let ok = rseq::start(index).is_some();
    if !ok {
        let owner = ktl::layout().owner;
        eprintln!("SKIPPED {test}: no rseq operations for {index:?} (owner: {owner})");
    }
    ok
}

fn addr<T>(p: *const T) -> usize {
    p.addr()
}

#[test]
fn exact_accounting_across_threads_then_reuse() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 100;
    let pool: MemPool<AtomicU64> = MemPoolBuilder::new().robust(true).build().unwrap();
    let (cpus, stride) = (pool.cpus(), pool.stride());
    let possible = ktl::cpu::possible_cpus().unwrap() as usize;
    assert_eq!(cpus, possible);
    let ranges = pool.raw().ranges();

    // Allocate in parallel; each thread writes its items' per-CPU pattern
    // once every thread holds its items.
    let start = Barrier::new(THREADS);
    let mut items: Vec<(u64, PerCpuItem<'_, AtomicU64>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (pool, start) = (&pool, &start);
                s.spawn(move || {
                    let mine: Vec<_> = (0..PER_THREAD)
                        .map(|i| {
                            let tag = ((t * PER_THREAD + i) as u64) << 32;
                            (tag, pool.alloc().unwrap())
                        })
                        .collect();
                    start.wait();
                    for (tag, item) in &mine {
                        for (cpu, v) in item.iter().enumerate() {
                            assert_eq!(v.load(Ordering::Relaxed), 0, "initialized to default");
                            v.store(tag | cpu as u64, Ordering::Relaxed);
                        }
                    }
                    mine
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let n = THREADS * PER_THREAD;
    assert_eq!(items.len(), n);
    assert_eq!(pool.allocated(), n);

    // Every item distinct, every instance at base + cpu × stride, every
    // instance of every item distinct, and the patterns read back.
    let bases: HashSet<usize> = items.iter().map(|(_, it)| addr(it.as_ptr())).collect();
    assert_eq!(bases.len(), n);
    let mut instances = HashSet::new();
    for (tag, item) in &items {
        assert_eq!((item.cpus(), item.stride()), (cpus, stride));
        let base = addr(item.as_ptr());
        for cpu in 0..cpus {
            let inst = item.cpu(cpu).unwrap();
            assert_eq!(addr(inst), base + cpu * stride);
            assert_eq!(
                item.ptr(cpu).map(|p| addr(p.as_ptr())),
                Some(base + cpu * stride)
            );
            assert_eq!(inst.load(Ordering::Relaxed), tag | cpu as u64);
            assert!(instances.insert(addr(inst)), "instance shared");
        }
        assert!(item.cpu(cpus).is_none());
    }
    assert_eq!(instances.len(), n * cpus);

    // Free everything from several threads.
    std::thread::scope(|s| {
        let mut rest = std::mem::take(&mut items);
        while !rest.is_empty() {
            let chunk: Vec<_> = rest.drain(..rest.len().min(PER_THREAD)).collect();
            s.spawn(move || drop(chunk));
        }
    });
    assert_eq!(pool.allocated(), 0);

    // The same items come back (lowest first), without a new range.
    let again: Vec<_> = (0..n).map(|_| pool.alloc().unwrap()).collect();
    let reused: HashSet<usize> = again.iter().map(|it| addr(it.as_ptr())).collect();
    assert_eq!(reused, bases);
    assert_eq!(pool.raw().ranges(), ranges);
    assert!(
        again
            .iter()
            .all(|it| it.iter().all(|v| v.load(Ordering::Relaxed) == 0)),
        "reallocated items are initialized again"
    );
    drop((again, items));
    pool.destroy().unwrap();
}

#[test]
fn robust_mode_catches_an_injected_double_free() {
    let pool = MemPoolBuilder::new()
        .item_size(40)
        .robust(true)
        .build_raw()
        .unwrap();
    let a = pool.alloc_raw().unwrap();
    let b = pool.alloc_raw().unwrap();
    // SAFETY: `a` is ours and unused; the second free is the injected error,
    // which the pool rejects without touching memory.
    unsafe {
        pool.free_raw(a).unwrap();
        assert_eq!(
            pool.free_raw(a),
            Err(MemPoolError::DoubleFree {
                addr: addr(a.as_ptr())
            })
        );
    }
    assert_eq!(pool.allocated(), 1);
    // The rejected free changed nothing: `a` is reused, `b` still allocated.
    assert_eq!(pool.alloc_raw().unwrap(), a);
    // SAFETY: both ours.
    unsafe {
        pool.free_raw(a).unwrap();
        pool.free_raw(b).unwrap();
    }
    pool.destroy().unwrap();
}

#[test]
fn robust_mode_catches_injected_corruption_on_the_next_alloc() {
    // Raw items.
    let pool = MemPoolBuilder::new()
        .item_size(24)
        .robust(true)
        .build_raw()
        .unwrap();
    let last = pool.cpus() - 1;
    let p = pool.alloc_raw().unwrap();
    // SAFETY: ours, unused from now on.
    unsafe { pool.free_raw(p) }.unwrap();
    let inst = pool.instance(p, last).unwrap();
    // SAFETY: the injected use after free: a write into mapped pool memory
    // that nothing else uses.
    unsafe { inst.as_ptr().add(16).cast::<u64>().write(0x0bad) };
    assert_eq!(
        pool.alloc_raw(),
        Err(MemPoolError::Corrupted {
            addr: addr(p.as_ptr()),
            cpu: last,
            offset: 16,
            found: 0x0bad,
            expected: DEFAULT_POISON,
        })
    );
    let q = pool.alloc_raw().unwrap();
    assert_ne!(q, p, "the corrupted item is quarantined");
    assert_eq!(pool.quarantined(), 1);
    // SAFETY: ours.
    unsafe { pool.free_raw(q) }.unwrap();
    pool.destroy().unwrap();

    // Typed items: the handle's drop poisons; a write through a pointer kept
    // past it is caught.
    let pool: MemPool<[u64; 4]> = MemPoolBuilder::new().robust(true).build().unwrap();
    let item = pool.alloc_with(|cpu| [cpu as u64; 4]).unwrap();
    let stale = item.ptr(0).unwrap();
    drop(item);
    // SAFETY: the injected use after free, as above.
    unsafe { stale.as_ptr().cast::<u64>().add(3).write(1) };
    assert_eq!(
        pool.alloc().map(|_| ()),
        Err(MemPoolError::Corrupted {
            addr: addr(stale.as_ptr()),
            cpu: 0,
            offset: 24,
            found: 1,
            expected: DEFAULT_POISON,
        })
    );
    let fine = pool.alloc().unwrap();
    assert!(fine.iter().all(|v| *v == [0; 4]));
    drop(fine);
    pool.destroy().unwrap();
}

#[test]
fn robust_mode_catches_injected_corruption_on_destroy() {
    let pool = MemPoolBuilder::new()
        .item_size(8)
        .robust(true)
        .poison(0xfeed_f00d)
        .build_raw()
        .unwrap();
    let items: Vec<_> = (0..5).map(|_| pool.alloc_raw().unwrap()).collect();
    for &p in &items {
        // SAFETY: ours.
        unsafe { pool.free_raw(p) }.unwrap();
    }
    // SAFETY: the injected use after free of the fourth item, on CPU 0.
    unsafe { items[3].as_ptr().cast::<u64>().write(0) };
    assert_eq!(
        pool.destroy(),
        Err(MemPoolError::Corrupted {
            addr: addr(items[3].as_ptr()),
            cpu: 0,
            offset: 0,
            found: 0,
            expected: 0xfeed_f00d,
        })
    );
}

#[test]
fn destroy_reports_leaks() {
    for robust in [false, true] {
        let pool: MemPool<AtomicU64> = MemPoolBuilder::new().robust(robust).build().unwrap();
        let kept = pool.alloc().unwrap();
        std::mem::forget(pool.alloc().unwrap());
        std::mem::forget(pool.alloc().unwrap());
        drop(kept);
        assert_eq!(pool.allocated(), 2);
        assert_eq!(pool.destroy(), Err(MemPoolError::Leaked { items: 2 }));

        let raw = MemPoolBuilder::new()
            .item_size(16)
            .robust(robust)
            .build_raw()
            .unwrap();
        let items: Vec<_> = (0..4).map(|_| raw.alloc_raw().unwrap()).collect();
        // SAFETY: ours.
        unsafe { raw.free_raw(items[1]) }.unwrap();
        let err = raw.destroy().unwrap_err();
        assert_eq!(err, MemPoolError::Leaked { items: 3 });
        assert!(err.to_string().contains("3 items"), "{err}");
    }
    // Dropping a pool with leaked items does not panic.
    let pool: MemPool<u64> = MemPool::new().unwrap();
    std::mem::forget(pool.alloc().unwrap());
    drop(pool);
}

#[test]
fn bad_builder_input_and_failed_mappings_are_typed_errors() {
    let page = page_size();
    let cases = [
        (MemPoolBuilder::new(), MemPoolError::ZeroItemSize),
        (
            MemPoolBuilder::new().item_size(8).align(12),
            MemPoolError::BadAlignment { align: 12 },
        ),
        (
            MemPoolBuilder::new().item_size(8).align(page * 4),
            MemPoolError::AlignmentTooLarge {
                align: page * 4,
                page_size: page,
            },
        ),
        (
            MemPoolBuilder::new().item_size(8).stride(page + page / 2),
            MemPoolError::BadStride {
                stride: page + page / 2,
                page_size: page,
            },
        ),
        (
            MemPoolBuilder::new().item_size(8).stride(0),
            MemPoolError::BadStride {
                stride: 0,
                page_size: page,
            },
        ),
        (
            MemPoolBuilder::new().item_size(page * 2).stride(page),
            MemPoolError::ItemTooLarge {
                item_size: page * 2,
                stride: page,
            },
        ),
        (
            MemPoolBuilder::new().item_size(8).cpus(0),
            MemPoolError::NoCpus,
        ),
        (
            MemPoolBuilder::new().item_size(8).max_ranges(0),
            MemPoolError::NoRanges,
        ),
    ];
    for (builder, want) in cases {
        let got = builder.build_raw().unwrap_err();
        assert_eq!(got, want, "{builder:?}");
        assert!(!got.to_string().is_empty());
    }
    // A range larger than any address space: the mapping fails with ENOMEM.
    let err = MemPoolBuilder::new()
        .item_size(8)
        .stride(1 << 46)
        .cpus(1 << 16)
        .build_raw()
        .unwrap_err();
    assert_eq!(
        err,
        MemPoolError::Map {
            len: 1 << 62,
            errno: Errno(libc::ENOMEM),
        }
    );
    assert!(err.to_string().contains("ENOMEM"), "{err}");
    // And a typed pool reports the same for a type larger than the stride.
    assert_eq!(
        MemPoolBuilder::new()
            .stride(page)
            .build::<[u8; 1 << 20]>()
            .unwrap_err(),
        MemPoolError::ItemTooLarge {
            item_size: 1 << 20,
            stride: page,
        }
    );
}

/// What the fork child checks; `Err(code)` names the failed check.
fn in_fork_child(pool: &MemPool<AtomicU64>, item: &PerCpuItem<'_, AtomicU64>) -> Result<(), i32> {
    let check = |ok: bool, code: i32| if ok { Ok(()) } else { Err(code) };
    // The child's copy holds the parent's values.
    for (cpu, v) in item.iter().enumerate() {
        check(v.load(Ordering::Relaxed) == 100 + cpu as u64, 10)?;
        v.store(7, Ordering::Relaxed);
    }
    check(pool.allocated() == 1, 11)?;
    // The child allocates from its copy of the pool's state: the next item
    // is the one after the parent's.
    let next = item.as_ptr().addr() + pool.raw().item_size();
    let fresh: Vec<_> = (0..10)
        .map(|_| pool.alloc())
        .collect::<Result<_, _>>()
        .map_err(|_| 12)?;
    check(fresh[0].as_ptr().addr() == next, 13)?;
    for (i, it) in fresh.iter().enumerate() {
        for (cpu, v) in it.iter().enumerate() {
            check(v.load(Ordering::Relaxed) == 0, 14)?;
            v.store((i * 1000 + cpu) as u64, Ordering::Relaxed);
        }
    }
    for (i, it) in fresh.iter().enumerate() {
        for (cpu, v) in it.iter().enumerate() {
            check(v.load(Ordering::Relaxed) == (i * 1000 + cpu) as u64, 15)?;
        }
    }
    drop(fresh);
    check(pool.allocated() == 1, 16)?;
    // Raw frees and their checks work in the child too.
    let p = pool.raw().alloc_raw().map_err(|_| 17)?;
    // SAFETY: ours; the second free is rejected untouched.
    unsafe {
        pool.raw().free_raw(p).map_err(|_| 18)?;
        check(
            pool.raw().free_raw(p)
                == Err(MemPoolError::DoubleFree {
                    addr: p.as_ptr().addr(),
                }),
            19,
        )?;
    }
    check(item.iter().all(|v| v.load(Ordering::Relaxed) == 7), 20)
}

#[test]
fn a_fork_child_gets_a_private_copy() {
    let pool: MemPool<AtomicU64> = MemPoolBuilder::new().robust(true).build().unwrap();
    let item = pool
        .alloc_with(|cpu| AtomicU64::new(100 + cpu as u64))
        .unwrap();
    // SAFETY: the child works on its copy of the pool (whose lock no other
    // thread holds) and leaves with _exit, never returning into the harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| in_fork_child(&pool, &item)))
                .unwrap_or(Err(2));
        // SAFETY: leaves the child at once.
        unsafe { libc::_exit(code.err().unwrap_or(0)) };
    }
    let mut status = 0;
    // SAFETY: waits for the child above.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status:#x} (exit code {})",
        libc::WEXITSTATUS(status)
    );
    // The child's writes, allocations and frees stayed in the child.
    for (cpu, v) in item.iter().enumerate() {
        assert_eq!(v.load(Ordering::Relaxed), 100 + cpu as u64);
    }
    assert_eq!(pool.allocated(), 1);
    let next = pool.alloc().unwrap();
    assert_eq!(
        next.as_ptr().addr(),
        item.as_ptr().addr() + pool.raw().item_size()
    );
    assert!(next.iter().all(|v| v.load(Ordering::Relaxed) == 0));
    drop((item, next));
    pool.destroy().unwrap();
}

/// Adds `by` to the instance of `item` at `base + index value × stride`,
/// `n` times, with `rseq::add`.
fn add_loop(item: &PerCpuItem<'_, AtomicI64>, index: Index, n: u64, by: i64) {
    let (base, stride, cpus) = (item.as_ptr().cast::<u8>(), item.stride(), item.cpus());
    for _ in 0..n {
        rseq::retry(index, |s| {
            let v = s.value() as usize;
            assert!(v < cpus, "index value {v} has no instance");
            let p = base.wrapping_add(v * stride).cast::<i64>();
            assert_eq!(p, item.slot(s).unwrap().as_ptr());
            // SAFETY: the instances of the items of these tests are written
            // only by rseq operations started with their index value, and
            // `p` is the live instance of `s.value()`.
            unsafe { rseq::add(s, p, by) }
        })
        .expect("the thread can run operations")
        .expect("add never fails a compare");
    }
}

#[test]
fn rseq_add_on_the_current_cpu_instance_sums_exactly() {
    for index in [Index::CpuId, Index::MmCid] {
        if !can_run("rseq_add_on_the_current_cpu_instance_sums_exactly", index) {
            continue;
        }
        let pool: MemPool<AtomicI64> = MemPool::new().unwrap();
        let a = pool.alloc().unwrap();
        let b = pool.alloc().unwrap();
        let n = scaled(20_000);
        std::thread::scope(|s| {
            for t in 0..8 {
                let (a, b) = (&a, &b);
                s.spawn(move || {
                    add_loop(a, index, n, 1);
                    add_loop(b, index, n, t);
                });
            }
        });
        let sum = |it: &PerCpuItem<'_, AtomicI64>| -> i64 {
            it.iter().map(|v| v.load(Ordering::Relaxed)).sum()
        };
        let n = n as i64;
        assert_eq!(sum(&a), 8 * n, "{index:?}");
        assert_eq!(sum(&b), (0..8).map(|t| t * n).sum::<i64>(), "{index:?}");
        drop((a, b));
        pool.destroy().unwrap();
    }
}

#[test]
fn pinned_threads_add_to_their_own_cpu_instance() {
    if !can_run("pinned_threads_add_to_their_own_cpu_instance", Index::CpuId) {
        return;
    }
    let cpus = allowed_cpus();
    let pool: MemPool<AtomicI64> = MemPool::new().unwrap();
    let item = pool.alloc().unwrap();
    let n = scaled(10_000);
    let threads = (2 * cpus.len()).min(16);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (item, cpu) = (&item, cpus[t % cpus.len()]);
            s.spawn(move || {
                pin(cpu);
                add_loop(item, Index::CpuId, n, 1);
            });
        }
    });
    for (cpu, v) in item.iter().enumerate() {
        let pinned = (0..threads).filter(|t| cpus[t % cpus.len()] == cpu).count() as i64;
        assert_eq!(v.load(Ordering::Relaxed), pinned * n as i64, "CPU {cpu}");
    }
}

#[test]
fn pool_sets_serve_many_sizes_from_many_threads() {
    let set = MemPoolBuilder::new().robust(true).build_set(4096).unwrap();
    assert_eq!(set.class_sizes().count(), 10);
    std::thread::scope(|s| {
        for t in 0..4usize {
            let set = &set;
            s.spawn(move || {
                for round in 0..20 {
                    let blocks: Vec<_> = [1usize, 7, 8, 9, 100, 1000, 4096]
                        .iter()
                        .map(|&size| (size, set.alloc(size).unwrap()))
                        .collect();
                    for (size, block) in &blocks {
                        assert_eq!(block.capacity(), size.next_power_of_two().max(8));
                        let last = block.bytes(block.cpus() - 1).unwrap();
                        assert!(last.iter().all(|b| b.load(Ordering::Relaxed) == 0));
                        last[size - 1].store((t * 20 + round) as u8, Ordering::Relaxed);
                    }
                    for (size, block) in &blocks {
                        let last = block.bytes(block.cpus() - 1).unwrap();
                        assert_eq!(
                            last[size - 1].load(Ordering::Relaxed),
                            (t * 20 + round) as u8
                        );
                    }
                }
            });
        }
    });
    assert_eq!(set.allocated(), 0);
    let raw = set.alloc_raw(33).unwrap();
    assert_eq!(set.pool(64).map(|p| p.contains(raw)), Some(true));
    let mut local = 0u8;
    // SAFETY: the foreign pointer is rejected untouched; `raw` is ours.
    unsafe {
        assert!(matches!(
            set.free_raw(NonNull::from(&mut local)),
            Err(MemPoolError::NotAnItem { .. })
        ));
        set.free_raw(raw).unwrap();
    }
    set.destroy().unwrap();
}
