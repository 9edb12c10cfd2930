//! What the allocator's test binaries share: a small PRNG, objects that
//! carry a pattern to check, the expected front end, and the re-runs of a
//! whole binary in the other environments.
#![allow(dead_code)] // each binary uses part of it

use ktl_alloc::{FrontEnd, PerCpuAlloc, Why};
use std::alloc::{GlobalAlloc, Layout};

/// xorshift64*: enough randomness for sizes and choices.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A size: mostly small (to 512 bytes), some to 32 KiB (the classes cached
/// per CPU), a few of the medium classes (to 1 MiB) and of large objects
/// (to 3 MiB, mapped alone).
pub fn random_size(rng: &mut Rng) -> usize {
    match rng.below(100) {
        0..=79 => 1 + rng.below(512) as usize,
        80..=96 => 1 + rng.below(32 * 1024) as usize,
        97..=98 => 32 * 1024 + rng.below(1 << 20) as usize,
        _ => (1 << 20) + rng.below(2 << 20) as usize,
    }
}

/// A layout of a random size and alignment (to 64 KiB, beyond the page).
pub fn random_layout(rng: &mut Rng) -> Layout {
    let size = random_size(rng);
    let align = match rng.below(20) {
        0..=11 => 1usize << rng.below(4),
        12..=17 => 1usize << (4 + rng.below(5)),
        _ => 1usize << (9 + rng.below(8)),
    };
    Layout::from_size_align(size, align).unwrap()
}

/// An object allocated through [`PerCpuAlloc`] directly, filled with a
/// pattern derived from `seed`, checked and freed by [`Obj::check_free`].
pub struct Obj {
    ptr: *mut u8,
    layout: Layout,
    seed: u8,
}

// SAFETY: the object is owned memory; moving the owner between threads is
// what the cross-thread tests do.
unsafe impl Send for Obj {}

static A: PerCpuAlloc = PerCpuAlloc::new();

impl Obj {
    /// Allocates and fills; panics when the allocator returns null or a
    /// misaligned block.
    pub fn new(layout: Layout, seed: u8) -> Obj {
        // SAFETY: the layouts have a nonzero size.
        let ptr = unsafe { A.alloc(layout) };
        assert!(!ptr.is_null(), "null for {layout:?}");
        assert_eq!(
            ptr as usize % layout.align(),
            0,
            "misaligned for {layout:?}"
        );
        let o = Obj { ptr, layout, seed };
        o.fill();
        o
    }

    fn byte(&self, i: usize) -> u8 {
        (i as u8).wrapping_mul(31).wrapping_add(self.seed)
    }

    /// The bytes checked: every one of small objects, a sample of large
    /// ones (every 509th, and the last).
    fn positions(&self) -> impl Iterator<Item = usize> + use<> {
        let n = self.layout.size();
        let step = if n <= 4096 { 1 } else { 509 };
        (0..n).step_by(step).chain(std::iter::once(n - 1))
    }

    /// Writes every byte. The pattern repeats every 256 bytes, so it is
    /// copied a period at a time: byte by byte, the megabyte objects made
    /// the unoptimised test build spend minutes here.
    fn fill(&self) {
        let period: [u8; 256] = std::array::from_fn(|i| self.byte(i));
        let n = self.layout.size();
        for start in (0..n).step_by(256) {
            let len = (n - start).min(256);
            // SAFETY: `start + len <= size`, inside the live block, which
            // does not overlap the local `period`.
            unsafe { std::ptr::copy_nonoverlapping(period.as_ptr(), self.ptr.add(start), len) };
        }
    }

    /// Whether the contents are intact.
    pub fn intact(&self) -> bool {
        // SAFETY: as in `fill`.
        self.positions()
            .all(|i| unsafe { self.ptr.add(i).read() } == self.byte(i))
    }

    /// Resizes with `realloc` and checks that the common prefix survived;
    /// returns whether the block stayed in place.
    pub fn realloc(&mut self, new_size: usize) -> bool {
        let keep = self.layout.size().min(new_size);
        // SAFETY: `ptr` is live with `layout`; the new size is nonzero.
        let q = unsafe { A.realloc(self.ptr, self.layout, new_size) };
        assert!(!q.is_null(), "realloc to {new_size} from {:?}", self.layout);
        assert_eq!(q as usize % self.layout.align(), 0);
        let moved = q != self.ptr;
        self.ptr = q;
        let kept = Obj {
            ptr: q,
            layout: Layout::from_size_align(keep, self.layout.align()).unwrap(),
            seed: self.seed,
        };
        let intact = kept.intact();
        std::mem::forget(kept);
        self.layout = Layout::from_size_align(new_size, self.layout.align()).unwrap();
        assert!(intact, "realloc to {new_size} lost contents");
        self.fill();
        !moved
    }

    /// Checks the contents and frees; returns whether they were intact.
    pub fn check_free(self) -> bool {
        let ok = self.intact();
        // SAFETY: allocated by `A` with this layout, freed once (self is
        // consumed).
        unsafe { A.dealloc(self.ptr, self.layout) };
        std::mem::forget(self);
        ok
    }
}

impl Drop for Obj {
    fn drop(&mut self) {
        // SAFETY: as in `check_free`.
        unsafe { A.dealloc(self.ptr, self.layout) };
    }
}

/// The marker of the copies [`rerun_all`] starts.
pub const MARKER: &str = "KTL_ALLOC_TEST_COPY";

/// Whether this process is such a copy.
pub fn in_copy() -> bool {
    ktl_testkit::child::is_child(MARKER, "all")
}

/// Checks that the front end is the one ktl's decision calls for, and
/// returns it. Call after an allocation.
pub fn check_front_end() -> FrontEnd {
    let fe = ktl_alloc::front_end();
    let layout = ktl::layout();
    match layout.owner {
        ktl::Owner::Unavailable(u) => {
            assert_eq!(fe, FrontEnd::PerThread(Why::RseqUnavailable(u)));
        }
        _ => {
            let want = if layout.features.contains(ktl::Features::MM_CID) {
                ktl::rseq::Index::MmCid
            } else {
                ktl::rseq::Index::CpuId
            };
            assert_eq!(
                fe,
                FrontEnd::PerCpu {
                    index: want,
                    caches: ktl::cpu::possible_cpus().unwrap() as usize,
                }
            );
        }
    }
    // The copies' environments force the decision.
    if std::env::var("KTL_TEST_EXPECT_PATH").is_ok() {
        assert!(matches!(fe, FrontEnd::PerThread(_)), "{fe}");
    }
    if in_copy() && std::env::var("GLIBC_TUNABLES").is_ok() {
        assert!(
            matches!(layout.owner, ktl::Owner::Ktl(_)),
            "{}",
            layout.owner
        );
    }
    fe
}

/// The body of a test that runs all `passed` tests of the binary again
/// with rseq denied by seccomp, then again with the glibc tunable that
/// makes ktl own the areas.
pub fn rerun_all(test: &str, passed: usize) {
    if in_copy() {
        return;
    }
    // In the seccomp copy, this checks that rseq is unavailable there.
    ktl_testkit::without_rseq::rerun(test, passed);
    if std::env::var("KTL_TEST_EXPECT_PATH").is_ok() {
        return;
    }
    ktl_testkit::child::run_all(
        MARKER,
        &[("GLIBC_TUNABLES", "glibc.pthread.rseq=0")],
        passed,
    );
}
