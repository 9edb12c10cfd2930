//! A per-CPU memory pool: one allocation gives one instance of an object per
//! possible CPU, all at a fixed distance (the *stride*) from each other.
//!
//! The model is the memory pool of the C library librseq (CPU-local storage):
//! where thread-local storage gives every thread its own copy of a variable,
//! this pool gives every CPU its own copy of an allocated object, and
//! restartable sequences ([`rseq`](crate::rseq)) update the copy of the CPU
//! they run on without atomic instructions.
//!
//! ## Layout
//!
//! The pool reserves memory in *ranges*, each one private anonymous mapping
//! of `stride × cpus` bytes. The first `stride` bytes belong to CPU 0, the
//! next `stride` bytes to CPU 1, and so on; every CPU's part is cut into the
//! same `stride / item_size` items:
//!
//! ```text
//!            ┌──────────── stride ────────────┐
//! range:     │ item 0 │ item 1 │ … │ item n-1 │▒│  CPU 0
//!            │ item 0 │ item 1 │ … │ item n-1 │▒│  CPU 1
//!            │   …                            │ │  …
//!            │ item 0 │ item 1 │ … │ item n-1 │▒│  CPU cpus-1
//! ```
//!
//! An allocated item is known by the address of its CPU 0 instance (its
//! *base*), and the instance of CPU `c` is at `base + c × stride`: one
//! multiply-add, no table, the same stride for every item of the pool. The
//! number of CPUs is the number of *possible* CPUs by default
//! ([`slot_count`](super::slot_count)), so every CPU number and every
//! concurrency id the kernel reports has an instance.
//!
//! Item sizes are rounded up to the alignment, a power of two of at least 8
//! bytes and at most the page size. The stride is 64 KiB by default (the page
//! size where pages are larger) and must be a multiple of the page size, so
//! that every CPU's part starts on a page of its own. The mapping reserves
//! address space only: the kernel provides a page on the first touch, so the
//! instances of CPUs that never touch an item cost no memory unless something
//! writes them (typed allocation initializes every instance, and poisoning
//! writes every instance).
//!
//! ## Allocation metadata: a bitmap, not a free list
//!
//! The pool keeps no free list inside freed items: all its bookkeeping is out
//! of line, behind a mutex, so a write into a freed item can never corrupt
//! the allocator, and a freed item can be poisoned entirely, on every CPU.
//! Each range has
//!
//! - a bitmap with one bit per item (set: allocated), which makes a free of an
//!   item that is not allocated (a double free) a detected error in every
//!   mode, and counts what is still allocated when the pool is destroyed;
//! - a high-water mark: the number of items at the start of the range that
//!   were ever handed out.
//!
//! An allocation takes the lowest clear bit of the first range that has one,
//! and maps a new range when every range is full (up to
//! [`max_ranges`](MemPoolBuilder::max_ranges)). Because the lowest free item
//! always goes first, the items ever handed out are exactly those below the
//! high-water mark: an item at the mark is fresh from the kernel, zero on
//! every CPU, and needs neither zeroing nor a poison check. The cost is one
//! bit per item (1 KiB per range for 8-byte items in 64 KiB strides) and a
//! scan of the bitmap words on allocation, which is not the hot path: using
//! the instances is.
//!
//! ## Robust mode
//!
//! [`MemPoolBuilder::robust`] turns on the checks that cost time:
//!
//! - every freed item is filled with a poison pattern
//!   ([`MemPoolBuilder::poison`], [`DEFAULT_POISON`] by default) on every CPU;
//! - when a freed item is allocated again, every word of every CPU's instance
//!   is checked against the pattern. A mismatch fails that allocation with
//!   [`MemPoolError::Corrupted`], which names the item, the CPU, the byte
//!   offset and the word found; the item is then quarantined (never handed
//!   out again, not counted as a leak) and the next allocation takes another;
//! - [`destroy`](RawMemPool::destroy) checks every freed item the same way
//!   before it reports leaks.
//!
//! Double frees and leaks are detected in every mode (the bitmap is always
//! there); a pool that is not robust can still poison freed items, to
//! anonymize them, with [`poison`](MemPoolBuilder::poison), without the
//! checks.
//!
//! ## Two layers
//!
//! - [`MemPool<T>`] and [`PerCpuItem<T>`]: a typed pool whose
//!   [`alloc`](MemPool::alloc) initializes every CPU's instance and returns a
//!   handle that borrows the pool and frees the item (dropping every instance)
//!   when dropped. [`MemPoolSet`] serves several sizes from size classes.
//! - [`RawMemPool`]: untyped items as pointers,
//!   [`alloc_raw`](RawMemPool::alloc_raw) and the `unsafe`
//!   [`free_raw`](RawMemPool::free_raw), for code that manages item lifetimes
//!   itself (and for tests that inject errors).
//!
//! ## With restartable sequences
//!
//! An item's instances are per-CPU slots like those of
//! [`PerCpu`](super::PerCpu): an operation started with index value `v`
//! updates the instance at `base + v × stride`
//! ([`PerCpuItem::slot`] or [`PerCpuItem::slot_ptr`]), under the contract of
//! the [`rseq`](crate::rseq) operations: every write to an instance that
//! other threads may access goes through operations indexed by its CPU (or
//! through atomics while holding [`rseq::exclusive`](crate::rseq::exclusive)).
//! Types with interior mutability (`AtomicI64` and the like) let the
//! operations write while the handle hands out shared references.
//!
//! ## Threads, and why safe code cannot cause undefined behaviour
//!
//! A pool's metadata sits behind a [`Mutex`](std::sync::Mutex); every pool type is `Send` and
//! `Sync`. A [`PerCpuItem<T>`] owns its `T` instances like a `Box<[T]>`
//! does: it is `Send` when `T` is, and `Sync` when `T` is. Safe code cannot
//! reach freed or foreign memory:
//!
//! - a handle borrows its pool, so the pool (and its mappings) outlives it,
//!   and [`destroy`](MemPool::destroy) takes the pool by value;
//! - only the handle frees its item, once, in `Drop`, after dropping the
//!   instances; forgetting a handle leaks the item, which
//!   [`destroy`](MemPool::destroy) reports;
//! - instances are read through `&T` and written through `&mut T` (which
//!   needs the handle exclusively) or through `T`'s own interior mutability;
//!   the raw pointers ([`as_ptr`](PerCpuItem::as_ptr)) are `unsafe` to use;
//! - the allocator never trusts item memory: its bitmap, counts and range
//!   table are out of line, so even a buggy `unsafe` write into a freed item
//!   is reported (robust mode), never followed;
//! - a free of a pointer that is not an allocated item returns an error
//!   before touching any memory.
//!
//! ## `fork`
//!
//! The ranges are private mappings, so a child process gets a copy-on-write
//! copy of every range, of the bitmaps and of the counts. Items allocated
//! before the fork are allocated in both processes, at the same addresses,
//! with the same contents; from then on, each process's writes, allocations
//! and frees are its own, and neither sees the other's. The pool's mutex is
//! copied as it was: fork only while no other thread is allocating or freeing
//! in the same pool (as with any lock), or the child's first allocation from
//! it waits forever. The child inherits its rseq registration, so the
//! operations work on its copy at once.
//!
//! ## Pool sets
//!
//! [`MemPoolSet`] holds one pool per size class, powers of two from 8 bytes
//! up to a limit, all with the same stride and CPU count.
//! [`alloc`](MemPoolSet::alloc) takes the smallest class that fits the size,
//! and a larger one when that class has reached its range limit. Class pools
//! map their first range on first use.
//!
//! ```
//! use ktl::percpu::mempool::MemPoolSet;
//! use std::sync::atomic::Ordering;
//!
//! let set = MemPoolSet::new(1024).unwrap();
//! let name = set.alloc(24).unwrap();
//! assert_eq!(name.capacity(), 32);
//! assert_eq!(name.len(), 24);
//! let last = name.bytes(name.cpus() - 1).unwrap();
//! assert!(last.iter().all(|b| b.load(Ordering::Relaxed) == 0));
//! last[3].store(b'k', Ordering::Relaxed);
//! assert_eq!(name.bytes(0).unwrap()[3].load(Ordering::Relaxed), 0);
//! ```
//!
//! ## The code, layer by layer
//!
//! From the bottom up:
//!
//! - `config` and `error`: the constants ([`DEFAULT_STRIDE`],
//!   [`DEFAULT_POISON`], [`MIN_ALIGN`], [`MIN_CLASS`]), [`page_size`], the
//!   validated shape of a pool that every layer reads, [`MemPoolBuilder`],
//!   which checks every value and builds the three kinds of pool, and
//!   [`MemPoolError`].
//! - `range`, the mapping layer: a range (one mapping of `stride × cpus`
//!   bytes, its bitmap and its high-water mark), the state of a pool behind
//!   its mutex (the ranges, the lookup by address, the counts, the
//!   quarantine), and the writes and checks of every CPU's instance of an
//!   item (poison, zero, poison check).
//! - `raw`, the pool layer: [`RawMemPool`], which allocates and frees
//!   untyped items over the ranges, runs the robust mode's checks and reports
//!   what [`destroy`](RawMemPool::destroy) finds.
//! - The typed front ends, over raw pools: `typed`, [`MemPool<T>`] and
//!   [`PerCpuItem<T>`] (with the typed allocation of a raw pool, which
//!   initializes every instance and cleans up when an initializer panics);
//!   `set`, [`MemPoolSet`] (one raw pool per size class) and
//!   [`PerCpuBlock`].

mod config;
mod error;
mod range;
mod raw;
mod set;
mod typed;

pub use config::{DEFAULT_POISON, DEFAULT_STRIDE, MIN_ALIGN, MIN_CLASS, MemPoolBuilder, page_size};
pub use error::MemPoolError;
pub use raw::RawMemPool;
pub use set::{MemPoolSet, PerCpuBlock};
pub use typed::{MemPool, PerCpuItem, Slots};

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A small raw pool: 3 CPUs, one page per CPU.
    pub(super) fn small(item_size: usize) -> MemPoolBuilder {
        MemPoolBuilder::new()
            .item_size(item_size)
            .cpus(3)
            .stride(page_size())
    }

    #[test]
    fn the_pool_types_are_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<RawMemPool>();
        send_sync::<MemPool<std::cell::Cell<u8>>>();
        send_sync::<MemPoolSet>();
        send_sync::<PerCpuBlock<'static>>();
        send_sync::<PerCpuItem<'static, AtomicUsize>>();
        send::<PerCpuItem<'static, std::cell::Cell<u8>>>();
    }
}
