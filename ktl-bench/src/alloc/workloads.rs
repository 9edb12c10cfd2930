//! The five workloads of the allocator benchmark, each written once, after
//! the classic allocator benchmarks (and one shaped like Rust programs).
//!
//! Every workload takes a thread count and a scale, does a fixed *total*
//! amount of work divided among its threads (so that the times of one
//! workload compare across thread counts: more threads, the same objects),
//! and returns a [`Checked`] value: how many objects it freed and a digest
//! of what it read back from them. Every object the workloads allocate
//! carries a number, its *id*; its size and contents follow from the id,
//! and before it is freed its contents are read back and checked. A
//! workload allocates and frees each id of `0..objects` exactly once, so its
//! check value is known in advance ([`expected`]): the count, and the
//! wrapping sum of [`mix`] over the ids. An allocator that hands out one
//! piece of memory twice, or loses an object, fails loudly: a content
//! mismatch, a count or a digest that is off.
//!
//! - [`Workload::Xmalloc`]: producers and consumers. Half the threads
//!   allocate objects of 8 to 512 bytes, write them and send them in
//!   batches of [`XMALLOC_BATCH`] through channels to the other half, which
//!   check and free them: every free is on another thread than its
//!   allocation. With one thread, that thread produces a batch and then
//!   consumes it, in turn.
//! - [`Workload::Larson`]: a server. Each thread holds [`LARSON_SLOTS`]
//!   live objects of 16 to 1024 bytes and replaces random ones (check and
//!   free the old, allocate and write a new one), in [`LARSON_ROUNDS`]
//!   rounds; after each round it hands its objects to the next thread and
//!   takes those of the previous one, so objects allocated by one thread are
//!   freed by another. The slots and the random state travel with the
//!   objects, so the work done does not depend on the schedule.
//! - [`Workload::CacheScratch`]: false sharing. The main thread allocates
//!   one small object per thread (8 to 64 bytes, likely on shared cache
//!   lines) and hands each to its thread, which frees it first; then every
//!   thread allocates a small object, increments each of its words
//!   [`SCRATCH_WRITES`] times, checks and frees it, over and over. An
//!   allocator that gives a thread memory on a line another thread writes
//!   makes the writes slow.
//! - [`Workload::AllocTest`]: mixed sizes. Each thread keeps a window of
//!   [`ALLOC_TEST_WINDOW`] live objects and replaces random ones; sizes
//!   are mostly small (94%: 8 to 512 bytes), some up to 64 KiB (5.5%,
//!   log-uniform) and rare ones up to 1 MiB (0.5%).
//! - [`Workload::Btree`]: the shape of Rust programs. Each thread builds
//!   `BTreeMap<String, Vec<u8>>` maps of up to [`BTREE_MAP_ENTRIES`]
//!   entries, keys formatted with `format!` and inserted in a random order,
//!   looks up a quarter of the keys, removes half the entries and drops the
//!   map, checking every value it reads.
//!
//! Objects of the first four workloads are raw allocations of their size
//! with an alignment of 8. Their first word holds the id (in its low 32
//! bits, with bits that follow from it in the high 32); the words after it
//! follow from the id and their offset: every word of the first 512
//! bytes, then one word per 4 KiB page, the last whole word and the bytes
//! of the tail (so a large object has every page touched, as a program
//! that uses its memory would).
//!
//! The amount of work at scale 1 ([`Plan`]) makes each workload take a few
//! tenths of a second with glibc's malloc at one thread on a current x86
//! server core; `scale` multiplies it. Random choices come from a small
//! per-thread (or, in `larson`, per-set-of-objects) xorshift generator with
//! fixed seeds, and the sizes from [`mix`] of the id: every run of a
//! workload with the same arguments does the same work.

use std::alloc::Layout;
use std::collections::BTreeMap;
use std::ops::Range;
use std::ptr::NonNull;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The most threads a workload runs.
pub const MAX_THREADS: usize = 1024;

/// The largest scale a workload accepts (a typo guard).
pub const MAX_SCALE: f64 = 1000.0;

/// The most objects a run allocates: their ids fit in 32 bits.
pub const MAX_OBJECTS: u64 = u32::MAX as u64;

/// Objects of `xmalloc` at scale 1, over all producers.
pub const XMALLOC_OBJECTS: u64 = 3_000_000;
/// Objects per batch a producer of `xmalloc` sends.
pub const XMALLOC_BATCH: usize = 256;
/// Batches a channel of `xmalloc` holds before its producers wait.
const XMALLOC_QUEUE: usize = 16;

/// Live objects per thread in `larson`.
pub const LARSON_SLOTS: usize = 1000;
/// Replacements of `larson` at scale 1, over all threads.
pub const LARSON_REPLACEMENTS: u64 = 2_500_000;
/// Rounds of `larson`: its threads pass their objects on between rounds.
pub const LARSON_ROUNDS: u64 = 20;

/// Objects of `cache-scratch` at scale 1, over all threads (besides the
/// one per thread that the main thread allocates).
pub const SCRATCH_OBJECTS: u64 = 200_000;
/// Increments of every word of a `cache-scratch` object before its free.
pub const SCRATCH_WRITES: u64 = 2_000;

/// Live objects per thread in `alloc-test`.
pub const ALLOC_TEST_WINDOW: usize = 1000;
/// Replacements of `alloc-test` at scale 1, over all threads.
pub const ALLOC_TEST_REPLACEMENTS: u64 = 1_500_000;

/// Entries of `btree` at scale 1, over all threads.
pub const BTREE_ENTRIES: u64 = 600_000;
/// Entries of one map of `btree`.
pub const BTREE_MAP_ENTRIES: u64 = 10_000;

/// A workload of the allocator benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Workload {
    /// Producers allocate, consumers free (see the module docs).
    Xmalloc,
    /// Live objects replaced at random, passed from thread to thread.
    Larson,
    /// Small objects written many times: false sharing.
    CacheScratch,
    /// Mixed sizes up to 1 MiB in a window of live objects.
    AllocTest,
    /// `BTreeMap<String, Vec<u8>>` built, searched and torn down.
    Btree,
}

impl Workload {
    /// Every workload, in the order of the reports.
    pub const ALL: [Workload; 5] = [
        Workload::Xmalloc,
        Workload::Larson,
        Workload::CacheScratch,
        Workload::AllocTest,
        Workload::Btree,
    ];

    /// The workload's name on the command line and in the reports.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Xmalloc => "xmalloc",
            Workload::Larson => "larson",
            Workload::CacheScratch => "cache-scratch",
            Workload::AllocTest => "alloc-test",
            Workload::Btree => "btree",
        }
    }

    /// The workload named `name`, or a message that lists the names.
    pub fn parse(name: &str) -> Result<Workload, String> {
        Workload::ALL
            .into_iter()
            .find(|w| w.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Workload::ALL.iter().map(|w| w.name()).collect();
                format!(
                    "unknown workload {name:?}: the workloads are {}",
                    names.join(", ")
                )
            })
    }
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The check value of a run: the objects freed after their contents were
/// checked, and the wrapping sum of [`mix`] of their ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Checked {
    /// Objects checked and freed.
    pub objects: u64,
    /// The wrapping sum of [`mix`] over their ids.
    pub digest: u64,
}

impl Checked {
    /// Counts one object of id `id`.
    fn add_id(&mut self, id: u64) {
        self.objects += 1;
        self.digest = self.digest.wrapping_add(mix(id));
    }

    /// Adds the counts of `other`.
    fn merge(&mut self, other: Checked) {
        self.objects += other.objects;
        self.digest = self.digest.wrapping_add(other.digest);
    }
}

impl std::fmt::Display for Checked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} objects, digest {:#018x}", self.objects, self.digest)
    }
}

/// The amount of work of a workload for a thread count and a scale: the
/// totals, which the threads divide among themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The workload.
    pub workload: Workload,
    /// Threads that run it.
    pub threads: usize,
    /// The total work: objects of `xmalloc` and `cache-scratch`,
    /// replacements of `larson` and `alloc-test`, entries of `btree`.
    pub work: u64,
}

impl Plan {
    /// The plan of `workload` at `threads` threads and `scale`, or why the
    /// arguments are refused (threads from 1 to [`MAX_THREADS`], a scale
    /// above 0 and at most [`MAX_SCALE`]).
    pub fn new(workload: Workload, threads: usize, scale: f64) -> Result<Plan, String> {
        if !(1..=MAX_THREADS).contains(&threads) {
            return Err(format!(
                "{threads} threads: the thread count must be from 1 to {MAX_THREADS}"
            ));
        }
        if !(scale.is_finite() && scale > 0.0 && scale <= MAX_SCALE) {
            return Err(format!(
                "scale {scale}: the scale must be above 0 and at most {MAX_SCALE}"
            ));
        }
        let base = match workload {
            Workload::Xmalloc => XMALLOC_OBJECTS,
            Workload::Larson => LARSON_REPLACEMENTS,
            Workload::CacheScratch => SCRATCH_OBJECTS,
            Workload::AllocTest => ALLOC_TEST_REPLACEMENTS,
            Workload::Btree => BTREE_ENTRIES,
        };
        let plan = Plan {
            workload,
            threads,
            work: (base as f64 * scale).round() as u64,
        };
        if plan.objects() > MAX_OBJECTS {
            return Err(format!(
                "scale {scale}: {} objects are more than the {MAX_OBJECTS} a run can number",
                plan.objects()
            ));
        }
        Ok(plan)
    }

    /// The objects the plan allocates and frees: its ids are `0..objects`.
    pub fn objects(&self) -> u64 {
        let t = self.threads as u64;
        match self.workload {
            Workload::Xmalloc | Workload::Btree => self.work,
            Workload::Larson => t * LARSON_SLOTS as u64 + self.work,
            Workload::CacheScratch => t + self.work,
            Workload::AllocTest => t * ALLOC_TEST_WINDOW as u64 + self.work,
        }
    }
}

/// The check value a correct run of `plan` returns, computed without
/// allocating.
pub fn expected(plan: &Plan) -> Checked {
    let mut c = Checked::default();
    for id in 0..plan.objects() {
        c.add_id(id);
    }
    c
}

/// Runs `workload` at `threads` threads and `scale`: returns its check
/// value, or the first failure (a content mismatch, an allocation that
/// failed, a thread that stopped). The check value is not compared with
/// [`expected`] here; [`run_verified`] does that.
pub fn run(workload: Workload, threads: usize, scale: f64) -> Result<Checked, String> {
    let plan = Plan::new(workload, threads, scale)?;
    run_plan(&plan)
}

/// Runs `workload` and checks its check value against [`expected`]:
/// returns the check value and the wall time of the run alone (not of the
/// check), or what failed.
pub fn run_verified(
    workload: Workload,
    threads: usize,
    scale: f64,
) -> Result<(Checked, Duration), String> {
    let plan = Plan::new(workload, threads, scale)?;
    let start = Instant::now();
    let got = run_plan(&plan)?;
    let elapsed = start.elapsed();
    let want = expected(&plan);
    if got != want {
        return Err(format!(
            "{workload} at {threads} threads: the check value is {got}, expected {want}"
        ));
    }
    Ok((got, elapsed))
}

/// Runs a plan.
fn run_plan(plan: &Plan) -> Result<Checked, String> {
    let (t, work) = (plan.threads, plan.work);
    let result = match plan.workload {
        Workload::Xmalloc => xmalloc(t, work),
        Workload::Larson => larson(t, work),
        Workload::CacheScratch => cache_scratch(t, work),
        Workload::AllocTest => alloc_test(t, work),
        Workload::Btree => btree(t, work),
    };
    result.map_err(|e| format!("{} at {t} threads: {e}", plan.workload))
}

/// A 64-bit mixing function (the splitmix64 finalizer): the digest term
/// of an id, and where the sizes and contents come from.
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A small xorshift generator (xorshift64*), one per thread or set of
/// objects, with a fixed seed.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    /// A generator for stream `stream` (any value).
    fn new(stream: u64) -> Rng {
        // Never zero: xorshift stays at zero once there.
        Rng(mix(stream ^ 0x5eed) | 1)
    }

    /// The next value.
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value below `n` (`n` above 0).
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }
}

/// Part `k` of `parts` of `0..total`: the parts are consecutive, cover the
/// range and differ in length by one at most.
fn share(total: u64, parts: usize, k: usize) -> Range<u64> {
    let at = |i: usize| (u128::from(total) * i as u128 / parts as u128) as u64;
    at(k)..at(k + 1)
}

/// A size from `lo` to `hi` bytes (inclusive), from `h`.
fn uniform(h: u64, lo: usize, hi: usize) -> usize {
    lo + (h % (hi - lo + 1) as u64) as usize
}

/// A size above `2^lo_bits` and at most `2^hi_bits`, log-uniform by
/// octave, from `h`.
fn log_uniform(h: u64, lo_bits: u32, hi_bits: u32) -> usize {
    let octave = lo_bits + (h % u64::from(hi_bits - lo_bits)) as u32;
    let base = 1usize << octave;
    base + 1 + ((h >> 8) % base as u64) as usize
}

/// The size of object `id` in `xmalloc`: 8 to 512 bytes.
fn xmalloc_size(id: u64) -> usize {
    uniform(mix(id ^ 0x1), 8, 512)
}

/// The size of object `id` in `larson`: 16 to 1024 bytes.
fn larson_size(id: u64) -> usize {
    uniform(mix(id ^ 0x2), 16, 1024)
}

/// The size of object `id` in `cache-scratch`: 8 to 64 bytes.
fn scratch_size(id: u64) -> usize {
    uniform(mix(id ^ 0x3), 8, 64)
}

/// The size of object `id` in `alloc-test`: 8 to 512 bytes (94%), 513
/// bytes to 64 KiB (5.5%), or 64 KiB to 1 MiB (0.5%).
fn alloc_test_size(id: u64) -> usize {
    let h = mix(id ^ 0x4);
    match h % 1000 {
        0..940 => uniform(h >> 10, 8, 512),
        940..995 => log_uniform(h >> 10, 9, 16),
        _ => log_uniform(h >> 10, 16, 20),
    }
}

/// The length of the value of entry `id` in `btree`: 8 to 64 bytes.
fn btree_value_len(id: u64) -> usize {
    uniform(mix(id ^ 0x5), 8, 64)
}

/// The first word of object `id` (below 2^32): the id in the low half,
/// and in the high half bits that follow from it, so that a changed first
/// word shows even in an object of 8 bytes.
fn head(id: u64) -> u64 {
    id | (mix(id ^ 0x4ead) & 0xffff_ffff_0000_0000)
}

/// The word at byte `offset` of object `id`.
fn pattern(id: u64, offset: usize) -> u64 {
    mix(id.rotate_left(17) ^ offset as u64)
}

/// The offsets of the words of an object of `size` bytes (at least 8) that
/// hold its contents, after the first: every word of the first 512 bytes,
/// then one at the start of each 4 KiB page, and the last whole word.
fn word_offsets(size: usize) -> impl Iterator<Item = usize> {
    let words = size / 8;
    let last = (words - 1) * 8;
    let dense = (8..512.min(words * 8)).step_by(8);
    let sparse = (4096..=last).step_by(4096);
    let tail = (last >= 512 && !last.is_multiple_of(4096)).then_some(last);
    dense.chain(sparse).chain(tail)
}

/// A raw allocation of the workloads: its size, with an alignment of 8,
/// from the global allocator; its contents follow from its id (see the
/// module docs). Freed when dropped; [`Block::free`] checks it first.
struct Block {
    ptr: NonNull<u8>,
    size: usize,
}

// SAFETY: a Block owns its allocation alone (nothing else points into it),
// and the global allocator may free memory on any thread: moving the owner
// to another thread is sound.
unsafe impl Send for Block {}

impl Block {
    /// The smallest object.
    const MIN: usize = 8;

    /// The layout of an object of `size` bytes.
    fn layout(size: usize) -> Result<Layout, String> {
        Layout::from_size_align(size, 8).map_err(|e| format!("no layout for {size} bytes: {e}"))
    }

    /// Allocates object `id` of `size` bytes (at least [`Block::MIN`]) and
    /// writes its contents.
    fn new(id: u64, size: usize) -> Result<Block, String> {
        if size < Block::MIN {
            return Err(format!("object {id}: {size} bytes is below the minimum"));
        }
        let layout = Block::layout(size)?;
        // SAFETY: the layout's size is at least 8, not zero.
        let raw = unsafe { std::alloc::alloc(layout) };
        let ptr =
            NonNull::new(raw).ok_or_else(|| format!("the allocation of {size} bytes failed"))?;
        let block = Block { ptr, size };
        block.write(0, head(id));
        for offset in word_offsets(size) {
            block.write(offset, pattern(id, offset));
        }
        for offset in size / 8 * 8..size {
            // SAFETY: `offset` is below `size`: inside the allocation.
            unsafe { ptr.as_ptr().add(offset).write(pattern(id, offset) as u8) };
        }
        Ok(block)
    }

    /// Writes the word at `offset` (a multiple of 8, at most `size - 8`).
    fn write(&self, offset: usize, value: u64) {
        debug_assert!(offset.is_multiple_of(8) && offset + 8 <= self.size);
        // SAFETY: `offset` is a multiple of 8 with 8 bytes after it inside
        // the allocation, whose start is 8-aligned: an aligned word we own.
        unsafe { self.ptr.as_ptr().add(offset).cast::<u64>().write(value) };
    }

    /// Reads the word at `offset` (a multiple of 8, at most `size - 8`).
    fn read(&self, offset: usize) -> u64 {
        debug_assert!(offset.is_multiple_of(8) && offset + 8 <= self.size);
        // SAFETY: as in `write`; every word read was written first (the
        // same offsets are written by `new`).
        unsafe { self.ptr.as_ptr().add(offset).cast::<u64>().read() }
    }

    /// The id of the object, once its contents are checked.
    fn check(&self) -> Result<u64, String> {
        let first = self.read(0);
        let id = first & 0xffff_ffff;
        if first != head(id) {
            return Err(format!(
                "an object of {} bytes at {:p}: its first word is {first:#x}, the head of no \
                 object (memory shared with another object?)",
                self.size, self.ptr
            ));
        }
        let mismatch = |offset: usize, got: u64, want: u64| {
            format!(
                "object {id} of {} bytes at {:p}: the contents at offset {offset} are {got:#x}, \
                 expected {want:#x} (memory shared with another object?)",
                self.size, self.ptr
            )
        };
        for offset in word_offsets(self.size) {
            let (got, want) = (self.read(offset), pattern(id, offset));
            if got != want {
                return Err(mismatch(offset, got, want));
            }
        }
        for offset in self.size / 8 * 8..self.size {
            // SAFETY: `offset` is inside the allocation, and `new` wrote it.
            let got = unsafe { self.ptr.as_ptr().add(offset).read() };
            let want = pattern(id, offset) as u8;
            if got != want {
                return Err(mismatch(offset, got.into(), want.into()));
            }
        }
        Ok(id)
    }

    /// Checks the object, counts it into `checked` and frees it.
    fn free(self, checked: &mut Checked) -> Result<(), String> {
        let id = self.check()?;
        checked.add_id(id);
        Ok(())
    }

    /// Increments every word after the first `writes` times, each through
    /// a volatile read and write (the stores happen, one at a time), then
    /// checks each ended `writes` above what it was and puts the contents
    /// back.
    fn scribble(&mut self, writes: u64) -> Result<(), String> {
        let words = self.size / 8;
        let base = self.ptr.as_ptr().cast::<u64>();
        for _ in 0..writes {
            for i in 1..words {
                // SAFETY: word `i` is below `size / 8`: an aligned word of
                // the allocation, which `&mut self` holds alone.
                unsafe {
                    let word = base.add(i);
                    word.write_volatile(word.read_volatile().wrapping_add(1));
                }
            }
        }
        let id = self.read(0) & 0xffff_ffff;
        for i in 1..words {
            let want = pattern(id, i * 8);
            let got = self.read(i * 8).wrapping_sub(writes);
            if got != want {
                return Err(format!(
                    "object {id}: word {i} is {got:#x} after the writes, expected {want:#x}"
                ));
            }
            self.write(i * 8, want);
        }
        Ok(())
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        // The layout was valid when the block was allocated.
        if let Ok(layout) = Block::layout(self.size) {
            // SAFETY: `ptr` was allocated by the global allocator with this
            // layout and is freed once, here.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) };
        }
    }
}

/// Runs `f(k)` for each thread `k` of `threads` (thread 0 included, each on
/// a thread of its own) and adds their check values; the first failure
/// wins.
fn each_thread<F>(threads: usize, f: F) -> Result<Checked, String>
where
    F: Fn(usize) -> Result<Checked, String> + Sync,
{
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|k| {
                let f = &f;
                std::thread::Builder::new()
                    .name(format!("worker-{k}"))
                    .spawn_scoped(s, move || f(k))
                    .map_err(|e| format!("cannot start a thread: {e}"))
            })
            .collect();
        join_all(handles)
    })
}

/// Joins the threads and adds their check values; the first failure wins.
fn join_all(
    handles: Vec<Result<std::thread::ScopedJoinHandle<'_, Result<Checked, String>>, String>>,
) -> Result<Checked, String> {
    let mut total = Checked::default();
    let mut first_error = None;
    for handle in handles {
        let result = handle.and_then(|h| {
            h.join()
                .unwrap_or_else(|_| Err("a thread panicked".to_owned()))
        });
        match result {
            Ok(c) => total.merge(c),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(total), Err)
}

/// One batch of `xmalloc`.
type Batch = Vec<Block>;

/// Produces the batch of the objects `ids`.
fn produce(ids: Range<u64>) -> Result<Batch, String> {
    let mut batch = Vec::with_capacity(XMALLOC_BATCH);
    for id in ids {
        batch.push(Block::new(id, xmalloc_size(id))?);
    }
    Ok(batch)
}

/// Checks and frees a batch.
fn consume(batch: Batch, checked: &mut Checked) -> Result<(), String> {
    for block in batch {
        block.free(checked)?;
    }
    Ok(())
}

/// The batches of the objects `ids`, in order.
fn batches(ids: Range<u64>) -> impl Iterator<Item = Range<u64>> {
    let end = ids.end;
    ids.step_by(XMALLOC_BATCH)
        .map(move |start| start..(start + XMALLOC_BATCH as u64).min(end))
}

/// `xmalloc`: `objects` objects from producers to consumers.
fn xmalloc(threads: usize, objects: u64) -> Result<Checked, String> {
    if threads == 1 {
        let mut checked = Checked::default();
        for ids in batches(0..objects) {
            consume(produce(ids)?, &mut checked)?;
        }
        return Ok(checked);
    }
    let producers = threads / 2;
    let consumers = threads - producers;
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..consumers)
        .map(|_| mpsc::sync_channel::<Batch>(XMALLOC_QUEUE))
        .unzip();
    std::thread::scope(|s| {
        let mut handles = Vec::with_capacity(threads);
        for p in 0..producers {
            let senders = senders.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("producer-{p}"))
                    .spawn_scoped(s, move || {
                        for (b, ids) in batches(share(objects, producers, p)).enumerate() {
                            let to = (p + b) % consumers;
                            senders[to]
                                .send(produce(ids)?)
                                .map_err(|_| format!("consumer {to} stopped"))?;
                        }
                        Ok(Checked::default())
                    })
                    .map_err(|e| format!("cannot start a thread: {e}")),
            );
        }
        // The consumers end when every producer has dropped its senders.
        drop(senders);
        for (c, receiver) in receivers.into_iter().enumerate() {
            handles.push(
                std::thread::Builder::new()
                    .name(format!("consumer-{c}"))
                    .spawn_scoped(s, move || {
                        let mut checked = Checked::default();
                        for batch in receiver {
                            consume(batch, &mut checked)?;
                        }
                        Ok(checked)
                    })
                    .map_err(|e| format!("cannot start a thread: {e}")),
            );
        }
        join_all(handles)
    })
}

/// The live objects of a `larson` thread, which pass from thread to thread
/// with the state that picks the slots and the ids still to allocate.
struct Larson {
    slots: Vec<Option<Block>>,
    rng: Rng,
    /// The ids of the replacements still to make.
    ids: Range<u64>,
    /// All the replacements of this set, for the rounds' shares.
    replacements: u64,
    /// Rounds done.
    round: u64,
}

impl Larson {
    /// Set `k` of `threads`: its slots filled, ready for the first round.
    fn new(k: usize, threads: usize, replacements: u64) -> Result<Larson, String> {
        let slots_n = LARSON_SLOTS as u64;
        let first = threads as u64 * slots_n;
        let mut slots = Vec::with_capacity(LARSON_SLOTS);
        for id in k as u64 * slots_n..(k as u64 + 1) * slots_n {
            slots.push(Some(Block::new(id, larson_size(id))?));
        }
        let mine = share(replacements, threads, k);
        Ok(Larson {
            slots,
            rng: Rng::new(k as u64),
            replacements: mine.end - mine.start,
            ids: first + mine.start..first + mine.end,
            round: 0,
        })
    }

    /// One round of replacements.
    fn round(&mut self, checked: &mut Checked) -> Result<(), String> {
        let n = share(
            self.replacements,
            LARSON_ROUNDS as usize,
            self.round as usize,
        );
        self.round += 1;
        for _ in n {
            let id = self
                .ids
                .next()
                .ok_or_else(|| "larson: no id left for a replacement".to_owned())?;
            let slot = self.rng.below(self.slots.len());
            if let Some(old) = self.slots[slot].take() {
                old.free(checked)?;
            }
            self.slots[slot] = Some(Block::new(id, larson_size(id))?);
        }
        Ok(())
    }

    /// Checks and frees every object left.
    fn finish(self, checked: &mut Checked) -> Result<(), String> {
        if !self.ids.is_empty() {
            return Err(format!(
                "larson: {} replacements not made",
                self.ids.end - self.ids.start
            ));
        }
        for block in self.slots.into_iter().flatten() {
            block.free(checked)?;
        }
        Ok(())
    }
}

/// `larson`: `replacements` replacements in sets of live objects that move
/// from thread to thread.
fn larson(threads: usize, replacements: u64) -> Result<Checked, String> {
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..threads).map(|_| mpsc::channel::<Larson>()).unzip();
    // Thread k sends to thread k + 1 and receives from thread k - 1.
    let mut next: Vec<_> = senders;
    next.rotate_left(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = next
            .into_iter()
            .zip(receivers)
            .enumerate()
            .map(|(k, (to_next, from_previous))| {
                std::thread::Builder::new()
                    .name(format!("larson-{k}"))
                    .spawn_scoped(s, move || {
                        let mut checked = Checked::default();
                        let mut set = Larson::new(k, threads, replacements)?;
                        for round in 1..=LARSON_ROUNDS {
                            set.round(&mut checked)?;
                            if round == LARSON_ROUNDS {
                                break;
                            }
                            to_next
                                .send(set)
                                .map_err(|_| "the next thread stopped".to_owned())?;
                            set = from_previous
                                .recv()
                                .map_err(|_| "the previous thread stopped".to_owned())?;
                        }
                        set.finish(&mut checked)?;
                        Ok(checked)
                    })
                    .map_err(|e| format!("cannot start a thread: {e}"))
            })
            .collect();
        join_all(handles)
    })
}

/// `cache-scratch`: `objects` small objects written many times, after the
/// one per thread that the main thread allocates.
fn cache_scratch(threads: usize, objects: u64) -> Result<Checked, String> {
    // Allocated together, so likely neighbours on shared cache lines.
    let mut first = Vec::with_capacity(threads);
    for id in 0..threads as u64 {
        first.push(Block::new(id, scratch_size(id))?);
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = first
            .into_iter()
            .enumerate()
            .map(|(k, given)| {
                std::thread::Builder::new()
                    .name(format!("scratch-{k}"))
                    .spawn_scoped(s, move || {
                        let mut checked = Checked::default();
                        given.free(&mut checked)?;
                        let ids = share(objects, threads, k);
                        let offset = threads as u64;
                        for id in ids.start + offset..ids.end + offset {
                            let mut block = Block::new(id, scratch_size(id))?;
                            block.scribble(SCRATCH_WRITES)?;
                            block.free(&mut checked)?;
                        }
                        Ok(checked)
                    })
                    .map_err(|e| format!("cannot start a thread: {e}"))
            })
            .collect();
        join_all(handles)
    })
}

/// `alloc-test`: `replacements` replacements of mixed sizes in a window of
/// live objects per thread.
fn alloc_test(threads: usize, replacements: u64) -> Result<Checked, String> {
    each_thread(threads, |k| {
        let mut checked = Checked::default();
        let window = ALLOC_TEST_WINDOW as u64;
        let mut slots = Vec::with_capacity(ALLOC_TEST_WINDOW);
        for id in k as u64 * window..(k as u64 + 1) * window {
            slots.push(Some(Block::new(id, alloc_test_size(id))?));
        }
        let mut rng = Rng::new(0x100 + k as u64);
        let ids = share(replacements, threads, k);
        let first = threads as u64 * window;
        for id in ids.start + first..ids.end + first {
            let slot = rng.below(slots.len());
            if let Some(old) = slots[slot].take() {
                old.free(&mut checked)?;
            }
            slots[slot] = Some(Block::new(id, alloc_test_size(id))?);
        }
        for block in slots.into_iter().flatten() {
            block.free(&mut checked)?;
        }
        Ok(checked)
    })
}

/// The key of entry `id` in `btree`.
fn btree_key(id: u64) -> String {
    format!("key-{id:012}")
}

/// The value of entry `id` in `btree`.
fn btree_value(id: u64) -> Vec<u8> {
    let len = btree_value_len(id);
    (0..len).map(|i| pattern(id, i) as u8).collect()
}

/// Checks the value of entry `id`.
fn btree_check(id: u64, value: &[u8]) -> Result<(), String> {
    let len = btree_value_len(id);
    let intact = value.len() == len
        && value
            .iter()
            .enumerate()
            .all(|(i, &b)| b == pattern(id, i) as u8);
    if intact {
        Ok(())
    } else {
        Err(format!(
            "entry {id}: its value ({} bytes, expected {len}) does not hold what was written",
            value.len()
        ))
    }
}

/// One map of `btree`: the entries `ids`, inserted in a random order; a
/// quarter looked up, the odd ones removed, the rest checked as the map
/// goes.
fn btree_map(ids: Range<u64>, rng: &mut Rng, checked: &mut Checked) -> Result<(), String> {
    let mut order: Vec<u64> = ids.clone().collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let mut map: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for &id in &order {
        if map.insert(btree_key(id), btree_value(id)).is_some() {
            return Err(format!("entry {id} was in the map already"));
        }
    }
    let len = ids.end - ids.start;
    if map.len() as u64 != len {
        return Err(format!("the map holds {} entries, not {len}", map.len()));
    }
    for id in ids.clone().filter(|id| id.is_multiple_of(4)) {
        let value = map
            .get(&btree_key(id))
            .ok_or_else(|| format!("entry {id} is missing"))?;
        btree_check(id, value)?;
    }
    for &id in order.iter().filter(|&&id| !id.is_multiple_of(2)) {
        let value = map
            .remove(&btree_key(id))
            .ok_or_else(|| format!("entry {id} is missing"))?;
        btree_check(id, &value)?;
        checked.add_id(id);
    }
    let mut expect = ids.filter(|id| id.is_multiple_of(2));
    for (key, value) in &map {
        let id = expect
            .next()
            .ok_or_else(|| format!("the map holds an extra entry {key:?}"))?;
        if *key != btree_key(id) {
            return Err(format!("the map holds {key:?} where entry {id} belongs"));
        }
        btree_check(id, value)?;
        checked.add_id(id);
    }
    if let Some(id) = expect.next() {
        return Err(format!("entry {id} is missing"));
    }
    Ok(())
}

/// `btree`: `entries` entries in maps of up to [`BTREE_MAP_ENTRIES`].
fn btree(threads: usize, entries: u64) -> Result<Checked, String> {
    each_thread(threads, |k| {
        let mut checked = Checked::default();
        let mut rng = Rng::new(0x200 + k as u64);
        let ids = share(entries, threads, k);
        let mut start = ids.start;
        while start < ids.end {
            let end = (start + BTREE_MAP_ENTRIES).min(ids.end);
            btree_map(start..end, &mut rng, &mut checked)?;
            start = end;
        }
        Ok(checked)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_the_range() {
        for (total, parts) in [(10, 3), (0, 4), (5, 8), (1_000_003, 7)] {
            let mut next = 0;
            for k in 0..parts {
                let r = share(total, parts, k);
                assert_eq!(r.start, next);
                assert!(r.end - r.start <= total / parts as u64 + 1);
                next = r.end;
            }
            assert_eq!(next, total);
        }
    }

    #[test]
    fn sizes_stay_in_their_ranges() {
        let (mut mid, mut large) = (0, 0);
        for id in 0..100_000 {
            assert!((8..=512).contains(&xmalloc_size(id)));
            assert!((16..=1024).contains(&larson_size(id)));
            assert!((8..=64).contains(&scratch_size(id)));
            let s = alloc_test_size(id);
            assert!((8..=1 << 20).contains(&s), "{s}");
            mid += usize::from((513..=65536).contains(&s));
            large += usize::from(s > 65536);
        }
        assert!((4000..7000).contains(&mid), "{mid}");
        assert!((300..700).contains(&large), "{large}");
    }

    #[test]
    fn offsets_are_inside_and_every_page_is_touched() {
        for size in [8, 9, 15, 16, 511, 512, 513, 4096, 4104, 65536, 100_001] {
            let offsets: Vec<usize> = word_offsets(size).collect();
            assert!(
                offsets
                    .iter()
                    .all(|&o| o.is_multiple_of(8) && o >= 8 && o + 8 <= size)
            );
            assert!(
                offsets.windows(2).all(|w| w[0] < w[1]),
                "{size}: {offsets:?}"
            );
            if size >= 16 {
                assert_eq!(offsets.last(), Some(&((size / 8 - 1) * 8)), "{size}");
            }
            for page in (0..size).step_by(4096) {
                assert!(page == 0 || offsets.contains(&page), "{size}: page {page}");
            }
        }
    }

    #[test]
    fn a_corrupted_block_fails_its_check() {
        for size in [8, 13, 100, 5000] {
            let block = Block::new(42, size).unwrap();
            assert_eq!(block.check(), Ok(42));
            // The last byte: a tail byte or a byte of the last word.
            // SAFETY: `size - 1` is inside the block, which this test owns.
            unsafe { *block.ptr.as_ptr().add(size - 1) ^= 1 };
            let err = block.check().unwrap_err();
            assert!(err.contains("object"), "{err}");
        }
        let mut block = Block::new(7, 64).unwrap();
        block.scribble(10).unwrap();
        assert_eq!(block.check(), Ok(7));
        let mut checked = Checked::default();
        block.free(&mut checked).unwrap();
        assert_eq!(checked.objects, 1);
        assert_eq!(checked.digest, mix(7));
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(Plan::new(Workload::Larson, 0, 1.0).is_err());
        assert!(Plan::new(Workload::Larson, MAX_THREADS + 1, 1.0).is_err());
        for scale in [0.0, -1.0, f64::NAN, f64::INFINITY, MAX_SCALE * 2.0] {
            let err = Plan::new(Workload::Larson, 1, scale).unwrap_err();
            assert!(err.contains("scale"), "{err}");
        }
        let err = Workload::parse("xmallocc").unwrap_err();
        assert!(err.contains("xmalloc, larson"), "{err}");
        for w in Workload::ALL {
            assert_eq!(Workload::parse(w.name()), Ok(w));
        }
    }
}
