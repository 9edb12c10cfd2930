//! Exact accounting: what the statistics say the program holds, per tier,
//! against what this test allocated; and 10,000 threads started and ended
//! with no growth after the first thousand. One test, so that no other test
//! allocates while it counts; what the test harness's own thread allocates
//! meanwhile is counted by the binary's global allocator ([`Counted`]) and
//! added in. It ends by running itself again with rseq denied by seccomp
//! and with the glibc tunable.

mod common;

use common::Rng;
use ktl_alloc::{FrontEnd, PerCpuAlloc, Stats};
use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicI64, Ordering};

/// The allocator under test. The test's own objects go to it directly.
static GLOBAL: PerCpuAlloc = PerCpuAlloc::new();

/// The binary's global allocator: [`GLOBAL`], with a count of the small
/// objects that threads other than the measuring one allocate and free
/// while a [`Measure`] is open.
///
/// Caught: on a loaded machine the test failed one run in three with
/// `small_in_use` 944 bytes above the count after every object was freed
/// (on 15b7d2b and later). The 944 bytes were four allocations (148, 608,
/// 48 and 96 bytes) made by the test harness's main thread while this test
/// counted: the statistics were right, the test's assumption that nothing
/// else allocates was not.
struct Counted;

/// The thread id of the measuring thread; 0 while no measurement is open.
static MEASURER: AtomicI64 = AtomicI64::new(0);
/// Class-rounded bytes of small objects other threads allocated (minus
/// those they freed) during the open measurement.
static OTHERS: AtomicI64 = AtomicI64::new(0);
/// Large allocations and frees by other threads during it (the checks then
/// cannot be exact, and say so).
static OTHERS_LARGE: AtomicI64 = AtomicI64::new(0);

fn tid() -> i64 {
    // SAFETY: gettid has no preconditions.
    i64::from(unsafe { libc::gettid() })
}

/// Counts an allocation (`sign` 1) or a free (-1) of another thread.
fn count_other(l: Layout, sign: i64) {
    let m = MEASURER.load(Ordering::Relaxed);
    if m == 0 || m == tid() {
        return;
    }
    let size = l.size().max(l.align());
    if size <= 1 << 20 && l.align() <= 4096 {
        OTHERS.fetch_add(sign * class_size(size) as i64, Ordering::Relaxed);
    } else {
        OTHERS_LARGE.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards every call to `GLOBAL` unchanged; the counting touches
// only atomics and never allocates.
unsafe impl GlobalAlloc for Counted {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, forwarded.
        let p = unsafe { GLOBAL.alloc(l) };
        if !p.is_null() {
            count_other(l, 1);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        count_other(l, -1);
        // SAFETY: the caller's contract, forwarded.
        unsafe { GLOBAL.dealloc(p, l) };
    }
}

#[global_allocator]
static COUNTED: Counted = Counted;

/// An open measurement: other threads' small objects are counted until it
/// is dropped.
struct Measure;

impl Measure {
    fn open() -> Measure {
        OTHERS.store(0, Ordering::Relaxed);
        OTHERS_LARGE.store(0, Ordering::Relaxed);
        MEASURER.store(tid(), Ordering::Relaxed);
        Measure
    }

    /// Bytes the other threads' small objects added to `small_in_use`.
    fn others(&self) -> i64 {
        assert_eq!(
            OTHERS_LARGE.load(Ordering::Relaxed),
            0,
            "another thread allocated a large object while the test counted"
        );
        OTHERS.load(Ordering::Relaxed)
    }
}

impl Drop for Measure {
    fn drop(&mut self) {
        MEASURER.store(0, Ordering::Relaxed);
    }
}

/// `a - b` of two byte counts, signed.
fn diff(a: u64, b: u64) -> i64 {
    a as i64 - b as i64
}

/// The class size the allocator rounds `size` (alignment 8) up to, as its
/// docs state: 8, 16 to 128 by 16, then four classes per doubling to
/// 1 MiB.
fn class_size(size: usize) -> usize {
    if size <= 8 {
        return 8;
    }
    if size <= 128 {
        return size.div_ceil(16) * 16;
    }
    let k = usize::BITS - 1 - (size - 1).leading_zeros();
    let step = 1usize << (k - 2);
    size.div_ceil(step) * step
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn in_use() -> Stats {
    ktl_alloc::stats()
}

#[test]
fn the_statistics_count_exactly() {
    let _ = vec![0u8; 1];
    let fe = common::check_front_end();
    exact_small_and_large();
    release_returns_the_caches();
    ten_thousand_threads_do_not_grow_the_heap(fe);
    common::rerun_all("the_statistics_count_exactly", 1);
}

fn exact_small_and_large() {
    let mut rng = Rng::new(11);
    // Front-end classes (to 32 KiB), and one in ten a medium class (to
    // 1 MiB).
    let layouts: Vec<Layout> = (0..5000)
        .map(|i| {
            let max = if i % 10 == 0 { 1 << 20 } else { 32 * 1024 };
            Layout::from_size_align(1 + rng.below(max) as usize, 8).unwrap()
        })
        .collect();
    let mut ptrs: Vec<*mut u8> = Vec::with_capacity(layouts.len());
    let want: u64 = layouts.iter().map(|l| class_size(l.size()) as u64).sum();
    let m = Measure::open();
    let before = in_use();
    for &l in &layouts {
        // SAFETY: nonzero sizes.
        let p = unsafe { GLOBAL.alloc(l) };
        assert!(!p.is_null());
        ptrs.push(p);
    }
    let during = in_use();
    assert_eq!(
        diff(during.small_in_use, before.small_in_use),
        want as i64 + m.others()
    );
    assert_eq!(during.large_in_use, before.large_in_use);
    for (&p, &l) in ptrs.iter().zip(&layouts) {
        // SAFETY: allocated above with `l`, freed once.
        unsafe { GLOBAL.dealloc(p, l) };
    }
    let after = in_use();
    assert_eq!(diff(after.small_in_use, before.small_in_use), m.others());
    assert_eq!(diff(after.in_use, before.in_use), m.others());
    drop(m);

    // Large objects (over 1 MiB, or aligned to more than a page) count at
    // their mapping's length.
    let big = [
        Layout::from_size_align((1 << 20) + 1, 8).unwrap(),
        Layout::from_size_align(3 << 20, 4096).unwrap(),
        Layout::from_size_align(40 * 1024 + 1, 64 * 1024).unwrap(),
    ];
    // Rounded up to an eighth of the power of two at or above the size
    // (whole pages at least): 1.25 MiB, 3 MiB and 48 KiB.
    let want: u64 = (1280 + 3072 + 48) * 1024;
    let m = Measure::open();
    let before = in_use();
    // SAFETY: nonzero sizes; each is freed once below with its layout.
    let ps: Vec<*mut u8> = big.iter().map(|&l| unsafe { GLOBAL.alloc(l) }).collect();
    for (p, l) in ps.iter().zip(&big) {
        assert_eq!(*p as usize % l.align(), 0);
    }
    assert_eq!(in_use().large_in_use - before.large_in_use, want);
    for (&p, &l) in ps.iter().zip(&big) {
        // SAFETY: as above.
        unsafe { GLOBAL.dealloc(p, l) };
    }
    assert_eq!(in_use().large_in_use, before.large_in_use);
    m.others();
}

fn release_returns_the_caches() {
    // Fill the caches, then release: no free object stays in a per-CPU or
    // per-thread cache, no free span stays resident, and what the program
    // holds is unchanged.
    let v: Vec<Vec<u8>> = (0..20_000).map(|i| vec![1u8; 16 + i % 4000]).collect();
    drop(v);
    let m = Measure::open();
    let before = in_use();
    assert!(before.cpu_cached + before.thread_cached > 0, "{before:#?}");
    ktl_alloc::release_free_memory();
    let after = in_use();
    assert_eq!(diff(after.in_use, before.in_use), m.others(), "{after:#?}");
    drop(m);
    assert_eq!(after.free_spans_resident, 0, "{after:#?}");
    assert_eq!(after.large_cached, 0, "{after:#?}");
    if let FrontEnd::PerCpu { .. } = after.front_end {
        if ktl::rseq::exclusive(ktl::rseq::Index::CpuId, 0).is_ok() {
            assert_eq!(after.cpu_cached, 0, "{after:#?}");
        }
    }
    assert!(after.returned_total > before.returned_total, "{after:#?}");
}

fn ten_thousand_threads_do_not_grow_the_heap(fe: FrontEnd) {
    // Each thread allocates, frees some on exit and hands the rest to the
    // next; after 1,000 threads the heap is warm, and 9,000 more must not
    // grow it: no more spans, address space, per-thread caches or resident
    // memory than a margin.
    let run = |n: usize, carry: &mut Vec<Vec<u8>>| {
        for i in 0..n {
            let mut mine = std::mem::take(carry);
            let h = std::thread::spawn(move || {
                let local: Vec<String> = (0..50).map(|k| format!("{i}-{k}")).collect();
                let keep: Vec<Vec<u8>> = (0..20).map(|k| vec![k as u8; 64 + 8 * k]).collect();
                mine.truncate(0);
                assert_eq!(local.len(), 50);
                keep
            });
            *carry = h.join().unwrap();
        }
    };
    let mut carry = Vec::new();
    run(1000, &mut carry);
    let warm = in_use();
    let rss_warm = resident_bytes();
    run(9000, &mut carry);
    let end = in_use();
    let rss_end = resident_bytes();
    assert!(end.spans <= warm.spans + 2, "{warm:#?}\n{end:#?}");
    assert_eq!(end.mapped, warm.mapped, "{warm:#?}\n{end:#?}");
    assert!(
        end.thread_caches <= warm.thread_caches.max(1),
        "{warm:#?}\n{end:#?}"
    );
    assert_eq!(end.in_use, warm.in_use, "{warm:#?}\n{end:#?}");
    assert!(
        rss_end <= rss_warm + (2 << 20),
        "resident {rss_warm} -> {rss_end}"
    );
    if let FrontEnd::PerThread(_) = fe {
        // Every thread used a per-thread cache; the blocks were reused.
        assert!(end.thread_caches <= 2, "{end:#?}");
    }
}
