//! The per-CPU structures under load: exact totals over ten million
//! counter updates and ten million histogram observations (fewer on the
//! locked fallback), snapshots taken while writers run, and pools and stacks whose threads are moved from CPU
//! to CPU while they run, with every object accounted for at the end.

use ktl::percpu::{PerCpuCounter, PerCpuCounterU64, PerCpuHistogram, PerCpuStack, PoolBuilder};
use ktl::rseq::Index;
use ktl_testkit::affinity::{allowed_cpus, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// `n` operations with critical sections; a fiftieth of that on the locked
/// fallback, where every operation makes two system calls (and runs under
/// emulators, where each is slow).
fn scaled(n: u64) -> u64 {
    if ktl::rseq::path() == ktl::rseq::Path::Locked {
        (n / 50).max(10)
    } else {
        n
    }
}

/// Moves the calling thread to the next allowed CPU every `every` calls.
struct Mover {
    cpus: Vec<usize>,
    at: usize,
    calls: u64,
    every: u64,
}

impl Mover {
    fn new(start: usize, every: u64) -> Self {
        Mover {
            cpus: allowed_cpus(),
            at: start,
            calls: 0,
            every,
        }
    }

    fn step(&mut self) {
        self.calls += 1;
        if self.calls.is_multiple_of(self.every) {
            self.at = (self.at + 1) % self.cpus.len();
            pin(self.cpus[self.at]);
        }
    }
}

#[test]
fn ten_million_counter_updates_sum_exactly() {
    const THREADS: u64 = 8;
    let per_thread = scaled(1_250_000);
    for index in [Index::CpuId, Index::MmCid] {
        let signed = PerCpuCounter::with_index(index);
        let unsigned = PerCpuCounterU64::with_index(index);
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let (signed, unsigned) = (&signed, &unsigned);
                s.spawn(move || {
                    let mut mover = Mover::new(t as usize, 100_000);
                    for i in 0..per_thread {
                        signed.add(3);
                        signed.sub(2);
                        unsigned.add(i);
                        mover.step();
                    }
                });
            }
        });
        assert_eq!(signed.sum() as u64, THREADS * per_thread, "{index:?}");
        let sum_of_i: u64 = (0..per_thread).sum();
        assert_eq!(unsigned.sum(), THREADS * sum_of_i, "{index:?}");
    }
}

/// The value of observation `i` of the histogram tests: multiples of 1/4
/// from 0 to 15/4, so that every partial sum is exact in an `f64` and the
/// totals can be compared with `==`.
fn observation(i: u64) -> f64 {
    (i % 16) as f64 * 0.25
}

/// The bucket bounds of the histogram tests: 1/2, 1, 2 and 3 (then +Inf).
const BOUNDS: [f64; 4] = [0.5, 1.0, 2.0, 3.0];

/// How many of `n` observations (`observation(0..n)`) land in each bucket
/// of [`BOUNDS`], and their sum.
fn expected(n: u64) -> ([u64; 5], f64) {
    let mut buckets = [0u64; 5];
    let mut sum = 0.0;
    for i in 0..n {
        let v = observation(i);
        buckets[BOUNDS.iter().position(|&b| v <= b).unwrap_or(4)] += 1;
        sum += v;
    }
    (buckets, sum)
}

#[test]
fn ten_million_histogram_observations_count_exactly() {
    const THREADS: u64 = 8;
    let per_thread = scaled(1_250_000);
    let (one, one_sum) = expected(per_thread);
    for index in [Index::CpuId, Index::MmCid] {
        let h = PerCpuHistogram::with_index(BOUNDS, index).unwrap();
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            // A reader takes snapshots while the writers run: each one is
            // consistent (the count is the buckets' sum), and no bucket, nor
            // the sum of these non-negative values, goes down or past its
            // final value.
            let reader = s.spawn(|| {
                let mut last = h.snapshot();
                let mut taken = 0u64;
                while !done.load(Ordering::Acquire) {
                    let now = h.snapshot();
                    assert_eq!(now.count(), now.buckets().iter().sum::<u64>());
                    for (b, (&was, &is)) in last.buckets().iter().zip(now.buckets()).enumerate() {
                        assert!(was <= is, "bucket {b} went down: {was} -> {is}");
                        assert!(is <= THREADS * one[b], "bucket {b} past its total: {is}");
                    }
                    assert!(now.sum() >= last.sum(), "{} -> {}", last.sum(), now.sum());
                    assert!(now.sum() <= THREADS as f64 * one_sum);
                    last = now;
                    taken += 1;
                }
                taken
            });
            let writers: Vec<_> = (0..THREADS)
                .map(|t| {
                    let h = &h;
                    s.spawn(move || {
                        let mut mover = Mover::new(t as usize, 100_000);
                        for i in 0..per_thread {
                            h.observe(observation(i));
                            mover.step();
                        }
                    })
                })
                .collect();
            for w in writers {
                w.join().unwrap();
            }
            done.store(true, Ordering::Release);
            assert!(reader.join().unwrap() > 0);
        });
        let s = h.snapshot();
        let want: Vec<u64> = one.iter().map(|&c| c * THREADS).collect();
        assert_eq!(s.buckets(), want, "{index:?}");
        assert_eq!(s.count(), THREADS * per_thread, "{index:?}");
        assert_eq!(s.sum(), THREADS as f64 * one_sum, "{index:?}");
    }
}

#[test]
fn pool_objects_survive_migrations_mid_operation() {
    for index in [Index::CpuId, Index::MmCid] {
        let mut pool = PoolBuilder::new()
            .index(index)
            .cache(16)
            .build(|| (AtomicBool::new(false), AtomicU64::new(0)));
        let gets = AtomicU64::new(0);
        std::thread::scope(|s| {
            for t in 0..6 {
                let (pool, gets) = (&pool, &gets);
                s.spawn(move || {
                    let mut mover = Mover::new(t, 1_000);
                    let mut held = Vec::new();
                    for i in 0..scaled(100_000) {
                        let o = pool.get();
                        assert!(!o.0.swap(true, Ordering::Relaxed), "an object out twice");
                        o.1.fetch_add(1, Ordering::Relaxed);
                        held.push(o);
                        // Return in bursts, after a move now and then, so
                        // objects go back to another CPU's cache than the
                        // one they came from.
                        if held.len() as u64 > (i * 7 + t as u64) % 40 {
                            mover.step();
                            for o in held.drain(..) {
                                o.0.store(false, Ordering::Relaxed);
                            }
                        }
                    }
                    for o in held.drain(..) {
                        o.0.store(false, Ordering::Relaxed);
                    }
                    gets.fetch_add(scaled(100_000), Ordering::Relaxed);
                });
            }
        });
        let created = pool.created() as usize;
        let (caches, overflow) = pool.available();
        assert_eq!(
            caches.iter().sum::<usize>() + overflow,
            created,
            "{index:?}"
        );
        let objects = pool.drain();
        assert_eq!(objects.len(), created);
        let uses: u64 = objects.iter().map(|o| o.1.load(Ordering::Relaxed)).sum();
        assert_eq!(
            uses,
            gets.load(Ordering::Relaxed),
            "{index:?}: every get counted once"
        );
        assert!(objects.iter().all(|o| !o.0.load(Ordering::Relaxed)));
    }
}

#[test]
fn stack_values_survive_migrations_mid_operation() {
    for index in [Index::CpuId, Index::MmCid] {
        let stack = PerCpuStack::with_index(index);
        let popped = AtomicU64::new(0);
        let popped_sum = AtomicU64::new(0);
        std::thread::scope(|s| {
            for t in 0..6u64 {
                let (stack, popped, popped_sum) = (&stack, &popped, &popped_sum);
                s.spawn(move || {
                    let mut mover = Mover::new(t as usize, 500);
                    for i in 0..scaled(50_000) {
                        stack.push(t * 1_000_000 + i);
                        if i % 2 == 0 {
                            if let Some(v) = stack.pop_any() {
                                popped.fetch_add(1, Ordering::Relaxed);
                                popped_sum.fetch_add(v, Ordering::Relaxed);
                            }
                        }
                        mover.step();
                    }
                });
            }
        });
        let mut stack = stack;
        let rest = stack.drain();
        let n = scaled(50_000);
        let all_sum: u64 = (0..6u64)
            .map(|t| (0..n).map(|i| t * 1_000_000 + i).sum::<u64>())
            .sum();
        assert_eq!(
            popped.load(Ordering::Relaxed) + rest.len() as u64,
            6 * n,
            "{index:?}"
        );
        assert_eq!(
            popped_sum.load(Ordering::Relaxed) + rest.iter().sum::<u64>(),
            all_sum,
            "{index:?}: every value once"
        );
    }
}
