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
//! A pool's metadata sits behind a [`Mutex`]; every pool type is `Send` and
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

use crate::Errno;
use crate::rseq::{Index, Start};
use core::fmt;
use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::AtomicU8;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The default stride: 64 KiB (or the page size, where pages are larger).
pub const DEFAULT_STRIDE: usize = 64 * 1024;

/// The default poison pattern of robust pools, written over every word of a
/// freed item on every CPU.
pub const DEFAULT_POISON: u64 = 0x6b6b_6b6b_6b6b_6b6b;

/// The smallest item alignment (and so the smallest item size): 8 bytes.
pub const MIN_ALIGN: usize = 8;

/// The smallest size class of a [`MemPoolSet`]: 8 bytes.
pub const MIN_CLASS: usize = 8;

/// The system's page size (4096 when it cannot be read).
pub fn page_size() -> usize {
    // SAFETY: sysconf only reads system configuration.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n)
        .ok()
        .filter(|n| n.is_power_of_two())
        .unwrap_or(4096)
}

/// Why a pool could not be built, could not allocate, or found an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemPoolError {
    /// A raw pool was asked for items of 0 bytes.
    ZeroItemSize,
    /// The alignment is not a power of two.
    BadAlignment {
        /// The alignment asked for.
        align: usize,
    },
    /// The alignment is larger than a page: ranges are only page-aligned.
    AlignmentTooLarge {
        /// The alignment asked for (or the type's).
        align: usize,
        /// The page size.
        page_size: usize,
    },
    /// The stride is 0 or not a multiple of the page size.
    BadStride {
        /// The stride asked for.
        stride: usize,
        /// The page size.
        page_size: usize,
    },
    /// An item (after rounding to the alignment) is larger than the stride.
    ItemTooLarge {
        /// The item size, rounded up to the alignment (or the size asked
        /// for, when rounding overflows).
        item_size: usize,
        /// The stride.
        stride: usize,
    },
    /// A type does not fit a pool's items (its size or alignment is larger).
    DoesNotFit {
        /// The type's size.
        size: usize,
        /// The type's alignment.
        align: usize,
        /// The size of the pool's items.
        item_size: usize,
    },
    /// The pool was asked for 0 CPUs.
    NoCpus,
    /// The pool was limited to 0 ranges.
    NoRanges,
    /// A range, `stride × cpus` bytes, does not fit the address space.
    RangeTooLarge {
        /// The stride.
        stride: usize,
        /// The number of CPUs.
        cpus: usize,
    },
    /// Mapping a range failed (`ENOMEM`: not enough memory or address space).
    Map {
        /// The length of the mapping.
        len: usize,
        /// The error of `mmap`.
        errno: Errno,
    },
    /// The bitmap of a new range could not be allocated.
    OutOfMemory {
        /// The bytes asked for.
        bytes: usize,
    },
    /// Every item of every range is allocated and the pool may map no more
    /// ranges ([`MemPoolBuilder::max_ranges`]).
    Exhausted {
        /// The number of ranges the pool has.
        ranges: usize,
    },
    /// A pool set was asked for more bytes than its largest class holds.
    SizeTooLarge {
        /// The size asked for.
        size: usize,
        /// The largest class.
        max: usize,
    },
    /// A pointer given to `free_raw` is not the start of an item of this pool.
    NotAnItem {
        /// The pointer's address.
        addr: usize,
    },
    /// A pointer given to `free_raw` is an item that is not allocated: a
    /// double free (or a free of an item never handed out).
    DoubleFree {
        /// The item's address (its CPU 0 instance).
        addr: usize,
    },
    /// A freed item of a robust pool was written after it was freed: one of
    /// its words no longer holds the poison pattern.
    Corrupted {
        /// The item's address (its CPU 0 instance).
        addr: usize,
        /// The CPU whose instance was written.
        cpu: usize,
        /// The byte offset in the instance of the first wrong word.
        offset: usize,
        /// The word found there.
        found: u64,
        /// The poison pattern.
        expected: u64,
    },
    /// The pool was destroyed with items still allocated.
    Leaked {
        /// How many.
        items: usize,
    },
}

impl fmt::Display for MemPoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MemPoolError::ZeroItemSize => f.write_str("the item size is 0"),
            MemPoolError::BadAlignment { align } => {
                write!(f, "the alignment {align} is not a power of two")
            }
            MemPoolError::AlignmentTooLarge { align, page_size } => write!(
                f,
                "the alignment {align} is larger than the page size ({page_size})"
            ),
            MemPoolError::BadStride { stride, page_size } => write!(
                f,
                "the stride {stride} is not a positive multiple of the page size ({page_size})"
            ),
            MemPoolError::ItemTooLarge { item_size, stride } => write!(
                f,
                "an item of {item_size} bytes does not fit the stride of {stride} bytes"
            ),
            MemPoolError::DoesNotFit {
                size,
                align,
                item_size,
            } => write!(
                f,
                "a type of {size} bytes aligned to {align} does not fit items of {item_size} bytes"
            ),
            MemPoolError::NoCpus => f.write_str("the pool has no CPUs"),
            MemPoolError::NoRanges => f.write_str("the pool may map no ranges"),
            MemPoolError::RangeTooLarge { stride, cpus } => write!(
                f,
                "a range of {cpus} CPUs × {stride} bytes does not fit the address space"
            ),
            MemPoolError::Map { len, errno } => {
                write!(f, "mapping a range of {len} bytes failed: {errno}")
            }
            MemPoolError::OutOfMemory { bytes } => {
                write!(f, "allocating {bytes} bytes of pool metadata failed")
            }
            MemPoolError::Exhausted { ranges } => write!(
                f,
                "every item is allocated and the pool may map no more than {ranges} ranges"
            ),
            MemPoolError::SizeTooLarge { size, max } => write!(
                f,
                "{size} bytes is more than the largest size class ({max} bytes)"
            ),
            MemPoolError::NotAnItem { addr } => {
                write!(f, "{addr:#x} is not the start of an item of this pool")
            }
            MemPoolError::DoubleFree { addr } => {
                write!(f, "double free: the item at {addr:#x} is not allocated")
            }
            MemPoolError::Corrupted {
                addr,
                cpu,
                offset,
                found,
                expected,
            } => write!(
                f,
                "the freed item at {addr:#x} was written on CPU {cpu}: \
                 {found:#018x} at byte {offset}, expected the poison {expected:#018x}"
            ),
            MemPoolError::Leaked { items } => {
                write!(
                    f,
                    "the pool was destroyed with {items} items still allocated"
                )
            }
        }
    }
}

impl std::error::Error for MemPoolError {}

/// The validated shape of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Config {
    item_size: usize,
    stride: usize,
    cpus: usize,
    robust: bool,
    /// The pattern freed items get, if any (always set for robust pools).
    poison: Option<u64>,
    max_ranges: Option<usize>,
}

impl Config {
    fn items_per_range(&self) -> usize {
        self.stride / self.item_size
    }

    fn range_len(&self) -> usize {
        // Checked when the configuration was built.
        self.stride * self.cpus
    }

    /// The alignment every item of the pool has: the largest power of two
    /// dividing the item size, at most the page size (ranges and strides are
    /// page-aligned).
    fn item_align(&self) -> usize {
        (self.item_size & self.item_size.wrapping_neg()).min(page_size())
    }
}

/// Builds pools: item size and alignment, stride, CPU count, robust mode,
/// poison pattern and range limit, with a typed error for every bad value.
///
/// ```
/// use ktl::percpu::mempool::{MemPoolBuilder, MemPoolError};
///
/// let pool = MemPoolBuilder::new().item_size(24).robust(true).build_raw().unwrap();
/// assert_eq!(pool.item_size(), 24);
/// assert_eq!(
///     MemPoolBuilder::new().item_size(8).stride(1000).build_raw().unwrap_err(),
///     MemPoolError::BadStride { stride: 1000, page_size: ktl::percpu::mempool::page_size() },
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemPoolBuilder {
    item_size: usize,
    align: usize,
    stride: Option<usize>,
    cpus: Option<usize>,
    robust: bool,
    poison: Option<u64>,
    max_ranges: Option<usize>,
}

impl Default for MemPoolBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl MemPoolBuilder {
    /// The defaults: no item size (set one for [`build_raw`](Self::build_raw)),
    /// alignment 8, stride [`DEFAULT_STRIDE`], the possible CPUs, not robust,
    /// no poison, no range limit.
    pub fn new() -> Self {
        MemPoolBuilder {
            item_size: 0,
            align: MIN_ALIGN,
            stride: None,
            cpus: None,
            robust: false,
            poison: None,
            max_ranges: None,
        }
    }

    /// The size of a raw pool's items, rounded up to the alignment. Typed
    /// pools take the size of their type instead.
    #[must_use]
    pub fn item_size(mut self, bytes: usize) -> Self {
        self.item_size = bytes;
        self
    }

    /// The alignment of the items: a power of two, at most the page size.
    /// Values below 8 mean 8. Typed pools use the larger of this and their
    /// type's alignment.
    #[must_use]
    pub fn align(mut self, align: usize) -> Self {
        self.align = align;
        self
    }

    /// The distance in bytes between two CPUs' instances of an item: a
    /// multiple of the page size, at least the item size.
    #[must_use]
    pub fn stride(mut self, stride: usize) -> Self {
        self.stride = Some(stride);
        self
    }

    /// The number of CPUs (instances per item), instead of the possible CPUs.
    /// Index values at or past it have no instance.
    #[must_use]
    pub fn cpus(mut self, cpus: usize) -> Self {
        self.cpus = Some(cpus);
        self
    }

    /// Robust mode: poison freed items, check the poison on reuse and on
    /// destroy (see the [module docs](self#robust-mode)).
    #[must_use]
    pub fn robust(mut self, robust: bool) -> Self {
        self.robust = robust;
        self
    }

    /// The pattern written over every word of a freed item on every CPU. A
    /// pool that is not robust poisons freed items with it but never checks.
    #[must_use]
    pub fn poison(mut self, pattern: u64) -> Self {
        self.poison = Some(pattern);
        self
    }

    /// At most `ranges` ranges (at least 1); an allocation that needs more
    /// fails with [`MemPoolError::Exhausted`]. No limit by default.
    #[must_use]
    pub fn max_ranges(mut self, ranges: usize) -> Self {
        self.max_ranges = Some(ranges);
        self
    }

    /// The configuration for items of `size` bytes aligned to `align`.
    fn config(&self, size: usize, align: usize) -> Result<Config, MemPoolError> {
        if !align.is_power_of_two() {
            return Err(MemPoolError::BadAlignment { align });
        }
        let align = align.max(MIN_ALIGN);
        let page = page_size();
        if align > page {
            return Err(MemPoolError::AlignmentTooLarge {
                align,
                page_size: page,
            });
        }
        if size == 0 {
            return Err(MemPoolError::ZeroItemSize);
        }
        let stride = self.stride.unwrap_or(DEFAULT_STRIDE.max(page));
        if stride == 0 || !stride.is_multiple_of(page) {
            return Err(MemPoolError::BadStride {
                stride,
                page_size: page,
            });
        }
        let item_size = match size.checked_next_multiple_of(align) {
            Some(n) if n <= stride => n,
            Some(n) => {
                return Err(MemPoolError::ItemTooLarge {
                    item_size: n,
                    stride,
                });
            }
            None => {
                return Err(MemPoolError::ItemTooLarge {
                    item_size: size,
                    stride,
                });
            }
        };
        let cpus = self.cpus.unwrap_or_else(|| super::slot_count(Index::CpuId));
        if cpus == 0 {
            return Err(MemPoolError::NoCpus);
        }
        match stride.checked_mul(cpus) {
            Some(len) if len <= isize::MAX as usize => {}
            _ => return Err(MemPoolError::RangeTooLarge { stride, cpus }),
        }
        if self.max_ranges == Some(0) {
            return Err(MemPoolError::NoRanges);
        }
        let poison = match (self.poison, self.robust) {
            (Some(p), _) => Some(p),
            (None, true) => Some(DEFAULT_POISON),
            (None, false) => None,
        };
        Ok(Config {
            item_size,
            stride,
            cpus,
            robust: self.robust,
            poison,
            max_ranges: self.max_ranges,
        })
    }

    /// A raw pool of items of [`item_size`](Self::item_size) bytes, with
    /// its first range mapped.
    ///
    /// # Errors
    ///
    /// A configuration error ([`MemPoolError::ZeroItemSize`],
    /// [`BadAlignment`](MemPoolError::BadAlignment),
    /// [`AlignmentTooLarge`](MemPoolError::AlignmentTooLarge),
    /// [`BadStride`](MemPoolError::BadStride),
    /// [`ItemTooLarge`](MemPoolError::ItemTooLarge),
    /// [`NoCpus`](MemPoolError::NoCpus),
    /// [`NoRanges`](MemPoolError::NoRanges),
    /// [`RangeTooLarge`](MemPoolError::RangeTooLarge)), or the failure to map
    /// the first range ([`Map`](MemPoolError::Map),
    /// [`OutOfMemory`](MemPoolError::OutOfMemory)).
    pub fn build_raw(&self) -> Result<RawMemPool, MemPoolError> {
        RawMemPool::with_config(self.config(self.item_size, self.align)?, true)
    }

    /// A typed pool of `T`, with its first range mapped. The item size and
    /// alignment come from `T` (the configured alignment applies when it is
    /// larger; a zero-sized `T` takes 8 bytes).
    ///
    /// # Errors
    ///
    /// As [`build_raw`](Self::build_raw), except that a size of 0 is not an
    /// error.
    pub fn build<T>(&self) -> Result<MemPool<T>, MemPoolError> {
        let size = size_of::<T>().max(1);
        let align = align_of::<T>().max(self.align);
        let raw = RawMemPool::with_config(self.config(size, align)?, true)?;
        Ok(MemPool {
            raw,
            _t: PhantomData,
        })
    }

    /// A pool set with size classes from [`MIN_CLASS`] up to `max_size`
    /// rounded up to a power of two. Every class has this builder's stride,
    /// CPU count, robust mode, poison and range limit; its items are aligned
    /// to their size, up to the page size (the configured alignment and item
    /// size do not apply). No range is mapped until a class is used.
    ///
    /// # Errors
    ///
    /// The configuration errors of [`build_raw`](Self::build_raw); the
    /// largest class must fit the stride.
    pub fn build_set(&self, max_size: usize) -> Result<MemPoolSet, MemPoolError> {
        let stride = self.stride.unwrap_or(DEFAULT_STRIDE.max(page_size()));
        let Some(max) = max_size.max(MIN_CLASS).checked_next_power_of_two() else {
            return Err(MemPoolError::ItemTooLarge {
                item_size: max_size,
                stride,
            });
        };
        let page = page_size();
        let mut classes = Vec::new();
        let mut class = MIN_CLASS;
        while class <= max {
            let config = self.config(class, class.min(page))?;
            classes.push(RawMemPool::with_config(config, false)?);
            class *= 2;
        }
        Ok(MemPoolSet { classes, max })
    }
}

/// One mapping of `stride × cpus` bytes and its allocation bitmap.
struct Range {
    base: NonNull<u8>,
    len: usize,
    /// One bit per item, set while it is allocated (or quarantined).
    bits: Vec<u64>,
    /// The number of set bits.
    live: usize,
    /// The high-water mark: the items below it were handed out at least
    /// once; the others are untouched, zero on every CPU.
    touched: usize,
}

// SAFETY: a range owns its mapping; the pool dereferences `base` only under
// its mutex (poisoning, checks) and the holders of items only within their
// items, so moving the owner to another thread is sound.
unsafe impl Send for Range {}

impl Range {
    fn map(config: &Config) -> Result<Range, MemPoolError> {
        let len = config.range_len();
        // SAFETY: a new private anonymous mapping at an address the kernel
        // chooses: it replaces nothing, and `len` is positive.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            return Err(MemPoolError::Map {
                len,
                errno: Errno(errno),
            });
        }
        let Some(base) = NonNull::new(p.cast::<u8>()) else {
            // mmap never returns null without MAP_FIXED; treat it as failure.
            return Err(MemPoolError::Map {
                len,
                errno: Errno(libc::ENOMEM),
            });
        };
        // From here on, dropping the range unmaps it.
        let mut range = Range {
            base,
            len,
            bits: Vec::new(),
            live: 0,
            touched: 0,
        };
        let words = config.items_per_range().div_ceil(64);
        if range.bits.try_reserve_exact(words).is_err() {
            return Err(MemPoolError::OutOfMemory { bytes: words * 8 });
        }
        range.bits.resize(words, 0);
        Ok(range)
    }

    /// Marks the lowest free item allocated: `(slot, fresh)`, where fresh
    /// means never handed out before.
    fn take_lowest(&mut self, per_range: usize) -> Option<(usize, bool)> {
        if self.live >= per_range {
            return None;
        }
        let (w, word) = self
            .bits
            .iter_mut()
            .enumerate()
            .find(|(_, word)| **word != u64::MAX)?;
        let bit = word.trailing_ones() as usize;
        let slot = w * 64 + bit;
        if slot >= per_range {
            return None;
        }
        *word |= 1 << bit;
        self.live += 1;
        let fresh = slot >= self.touched;
        if fresh {
            // The lowest free item is never past the mark (module docs).
            self.touched = slot + 1;
        }
        Some((slot, fresh))
    }

    fn is_set(&self, slot: usize) -> bool {
        self.bits
            .get(slot / 64)
            .is_some_and(|w| w & (1 << (slot % 64)) != 0)
    }

    fn clear(&mut self, slot: usize) {
        if let Some(w) = self.bits.get_mut(slot / 64) {
            *w &= !(1 << (slot % 64));
            self.live -= 1;
        }
    }

    /// The CPU 0 instance of item `slot`.
    fn item(&self, slot: usize, config: &Config) -> NonNull<u8> {
        // wrapping_add keeps the range's provenance; the callers pass a slot
        // below `items_per_range`, so the address is inside the mapping.
        let p = self.base.as_ptr().wrapping_add(slot * config.item_size);
        NonNull::new(p).unwrap_or(self.base)
    }
}

impl Drop for Range {
    fn drop(&mut self) {
        // SAFETY: `base` and `len` are exactly the mapping made in `map`,
        // unmapped only here. No item outlives the pool: handles borrow it,
        // and raw pointers are valid only until the pool is dropped.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// The mutable state of a pool, behind its mutex.
struct State {
    ranges: Vec<Range>,
    /// Range base address → index in `ranges`, to find the range of a
    /// pointer being freed.
    by_base: BTreeMap<usize, usize>,
    /// Items handed out and not freed.
    allocated: usize,
    /// Corrupted items taken out of use (their bits stay set).
    quarantined: BTreeSet<usize>,
}

impl State {
    /// The range index and slot of the item whose CPU 0 instance is `addr`.
    fn locate(&self, addr: usize, config: &Config) -> Option<(usize, usize)> {
        let (&base, &index) = self.by_base.range(..=addr).next_back()?;
        let offset = addr - base;
        if offset >= config.stride || !offset.is_multiple_of(config.item_size) {
            return None;
        }
        let slot = offset / config.item_size;
        (slot < config.items_per_range()).then_some((index, slot))
    }

    fn add_range(&mut self, config: &Config) -> Result<usize, MemPoolError> {
        if let Some(max) = config.max_ranges {
            if self.ranges.len() >= max {
                return Err(MemPoolError::Exhausted {
                    ranges: self.ranges.len(),
                });
            }
        }
        if self.ranges.try_reserve(1).is_err() {
            return Err(MemPoolError::OutOfMemory {
                bytes: size_of::<Range>(),
            });
        }
        let range = Range::map(config)?;
        let index = self.ranges.len();
        self.by_base.insert(range.base.as_ptr().addr(), index);
        self.ranges.push(range);
        Ok(index)
    }
}

/// Writes `word` over every word of every CPU's instance of `item`.
///
/// # Safety
///
/// `item` must be the CPU 0 instance of an item of a mapped range of a pool
/// configured by `config`, and no one else may access any of its instances
/// during the call.
unsafe fn fill(item: NonNull<u8>, config: &Config, word: u64) {
    for cpu in 0..config.cpus {
        // SAFETY: cpu < cpus, so the instance lies inside the range; it is
        // 8-aligned (ranges are page-aligned, strides and item sizes are
        // multiples of 8).
        let p = unsafe { item.as_ptr().add(cpu * config.stride) }.cast::<u64>();
        for w in 0..config.item_size / 8 {
            // SAFETY: word `w` is inside the instance; the caller's contract
            // excludes other accesses.
            unsafe { p.add(w).write(word) };
        }
    }
}

/// Zeroes every CPU's instance of `item`.
///
/// # Safety
///
/// The contract of [`fill`].
unsafe fn zero(item: NonNull<u8>, config: &Config) {
    for cpu in 0..config.cpus {
        // SAFETY: as in `fill`: the instance is inside the range and ours.
        unsafe {
            item.as_ptr()
                .add(cpu * config.stride)
                .write_bytes(0, config.item_size)
        };
    }
}

/// The first word of `item`'s instances that is not `word`: `(cpu, byte
/// offset, found)`.
///
/// # Safety
///
/// The contract of [`fill`] (reads only).
unsafe fn find_mismatch(
    item: NonNull<u8>,
    config: &Config,
    word: u64,
) -> Option<(usize, usize, u64)> {
    for cpu in 0..config.cpus {
        // SAFETY: as in `fill`.
        let p = unsafe { item.as_ptr().add(cpu * config.stride) }.cast::<u64>();
        for w in 0..config.item_size / 8 {
            // SAFETY: as in `fill`; the memory is mapped, so it is
            // initialized (zero, poison, or what was written).
            let found = unsafe { p.add(w).read() };
            if found != word {
                return Some((cpu, w * 8, found));
            }
        }
    }
    None
}

/// A per-CPU memory pool of untyped items: every item has one instance per
/// CPU, `stride` bytes apart.
///
/// Items are pointers to their CPU 0 instance;
/// [`instance`](Self::instance) gives the others. [`alloc_raw`](Self::alloc_raw)
/// is safe (an item that is never freed only leaks);
/// [`free_raw`](Self::free_raw) is `unsafe`, because the caller promises that
/// nothing uses the item afterwards. See the [module docs](self) for the
/// layout and the robust mode.
///
/// ```
/// use ktl::percpu::mempool::{MemPoolBuilder, MemPoolError};
///
/// let pool = MemPoolBuilder::new().item_size(16).robust(true).build_raw().unwrap();
/// let item = pool.alloc_zeroed_raw().unwrap();
/// let last = pool.instance(item, pool.cpus() - 1).unwrap();
/// // SAFETY: the instance is 16 bytes of this live item, used by no one else.
/// unsafe { last.cast::<u64>().write(7) };
/// // SAFETY: nothing uses the item after this.
/// unsafe { pool.free_raw(item) }.unwrap();
/// // SAFETY: the same pointer again: the pool reports the double free.
/// let again = unsafe { pool.free_raw(item) };
/// assert!(matches!(again, Err(MemPoolError::DoubleFree { .. })));
/// pool.destroy().unwrap();
/// ```
pub struct RawMemPool {
    config: Config,
    state: Mutex<State>,
}

impl RawMemPool {
    fn with_config(config: Config, map_first: bool) -> Result<Self, MemPoolError> {
        let mut state = State {
            ranges: Vec::new(),
            by_base: BTreeMap::new(),
            allocated: 0,
            quarantined: BTreeSet::new(),
        };
        if map_first {
            state.add_range(&config)?;
        }
        Ok(RawMemPool {
            config,
            state: Mutex::new(state),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock; if some did, the state is
        // still consistent (every update is one step), so carry on.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The size of an item (of each of its instances), in bytes.
    pub fn item_size(&self) -> usize {
        self.config.item_size
    }

    /// The distance between two CPUs' instances of an item, in bytes.
    pub fn stride(&self) -> usize {
        self.config.stride
    }

    /// The number of CPUs: instances per item.
    pub fn cpus(&self) -> usize {
        self.config.cpus
    }

    /// Items per range: `stride / item_size`.
    pub fn items_per_range(&self) -> usize {
        self.config.items_per_range()
    }

    /// The bytes of one range: `stride × cpus`.
    pub fn range_len(&self) -> usize {
        self.config.range_len()
    }

    /// Whether the pool is robust.
    pub fn is_robust(&self) -> bool {
        self.config.robust
    }

    /// The poison pattern freed items get, if any.
    pub fn poison(&self) -> Option<u64> {
        self.config.poison
    }

    /// The number of ranges mapped.
    pub fn ranges(&self) -> usize {
        self.lock().ranges.len()
    }

    /// The number of items the mapped ranges hold.
    pub fn capacity(&self) -> usize {
        self.ranges() * self.items_per_range()
    }

    /// The number of items allocated and not freed.
    pub fn allocated(&self) -> usize {
        self.lock().allocated
    }

    /// The number of items found corrupted and taken out of use.
    pub fn quarantined(&self) -> usize {
        self.lock().quarantined.len()
    }

    /// Whether `item` is the start of an item slot of this pool (allocated
    /// or not).
    pub fn contains(&self, item: NonNull<u8>) -> bool {
        self.lock()
            .locate(item.as_ptr().addr(), &self.config)
            .is_some()
    }

    /// The instance of CPU `cpu` of the item whose CPU 0 instance is `item`:
    /// `item + cpu × stride`, or `None` when `cpu` is not below
    /// [`cpus`](Self::cpus). Pure arithmetic; `item` is not checked.
    pub fn instance(&self, item: NonNull<u8>, cpu: usize) -> Option<NonNull<u8>> {
        if cpu >= self.config.cpus {
            return None;
        }
        NonNull::new(item.as_ptr().wrapping_add(cpu * self.config.stride))
    }

    /// Takes an item: `(item, fresh)`.
    fn take(&self) -> Result<(NonNull<u8>, bool), MemPoolError> {
        let config = &self.config;
        let per_range = config.items_per_range();
        let mut st = self.lock();
        let found = st.ranges.iter_mut().find_map(|r| {
            r.take_lowest(per_range)
                .map(|(slot, fresh)| (r.item(slot, config), fresh))
        });
        let (item, fresh) = match found {
            Some(found) => found,
            None => {
                let index = st.add_range(config)?;
                let range = &mut st.ranges[index];
                match range.take_lowest(per_range) {
                    Some((slot, fresh)) => (range.item(slot, config), fresh),
                    // A new range has every item free.
                    None => return Err(MemPoolError::Exhausted { ranges: index + 1 }),
                }
            }
        };
        if config.robust && !fresh {
            if let Some(poison) = config.poison {
                // SAFETY: `item` is in a mapped range; its bit was clear, so
                // nobody may access it, and it is ours now, under the lock.
                if let Some((cpu, offset, found)) = unsafe { find_mismatch(item, config, poison) } {
                    st.quarantined.insert(item.as_ptr().addr());
                    return Err(MemPoolError::Corrupted {
                        addr: item.as_ptr().addr(),
                        cpu,
                        offset,
                        found,
                        expected: poison,
                    });
                }
            }
        }
        st.allocated += 1;
        Ok((item, fresh))
    }

    /// Allocates an item and returns its CPU 0 instance (see
    /// [`instance`](Self::instance) for the others).
    ///
    /// A fresh item is zero on every CPU; a reused one holds the poison
    /// pattern (when the pool poisons) or whatever it held when it was freed.
    ///
    /// # Errors
    ///
    /// [`MemPoolError::Exhausted`] at the range limit, [`Map`](MemPoolError::Map)
    /// or [`OutOfMemory`](MemPoolError::OutOfMemory) when a new range cannot
    /// be mapped, and in robust mode [`Corrupted`](MemPoolError::Corrupted)
    /// when the item taken was written after it was freed (it is then
    /// quarantined; the next allocation takes another).
    pub fn alloc_raw(&self) -> Result<NonNull<u8>, MemPoolError> {
        self.take().map(|(item, _)| item)
    }

    /// [`alloc_raw`](Self::alloc_raw), with every instance zeroed.
    ///
    /// # Errors
    ///
    /// Those of [`alloc_raw`](Self::alloc_raw).
    pub fn alloc_zeroed_raw(&self) -> Result<NonNull<u8>, MemPoolError> {
        let (item, fresh) = self.take()?;
        if !fresh {
            // SAFETY: the item was just allocated to us: nobody else uses it.
            unsafe { zero(item, &self.config) };
        }
        Ok(item)
    }

    /// Frees an item: poisons it on every CPU when the pool poisons, and
    /// makes it available again.
    ///
    /// A pointer that is not the start of an item of this pool, or an item
    /// that is not allocated, is reported without touching any memory. A
    /// double free is detected as long as the item was not allocated again in
    /// between (then it is someone else's item, which is what the contract
    /// below forbids).
    ///
    /// # Errors
    ///
    /// [`MemPoolError::NotAnItem`] and [`MemPoolError::DoubleFree`].
    ///
    /// # Safety
    ///
    /// If `item` is an allocated item of this pool, the caller must own it
    /// (it came from [`alloc_raw`](Self::alloc_raw) or
    /// [`alloc_zeroed_raw`](Self::alloc_zeroed_raw) and was not freed since,
    /// or it is the item of a handle that is being dropped), and nothing may
    /// access any of its instances after the call: no reference, no pointer
    /// use, no rseq operation, in any thread. Values stored in the instances
    /// are not dropped.
    pub unsafe fn free_raw(&self, item: NonNull<u8>) -> Result<(), MemPoolError> {
        let config = &self.config;
        let addr = item.as_ptr().addr();
        let mut st = self.lock();
        let (index, slot) = st
            .locate(addr, config)
            .ok_or(MemPoolError::NotAnItem { addr })?;
        if !st.ranges[index].is_set(slot) || st.quarantined.contains(&addr) {
            return Err(MemPoolError::DoubleFree { addr });
        }
        let range = &mut st.ranges[index];
        if let Some(poison) = config.poison {
            // SAFETY: the item is in this mapped range, and the caller gave
            // it up: nobody accesses it any more. The lock keeps it from being
            // allocated again during the fill.
            unsafe { fill(range.item(slot, config), config, poison) };
        }
        range.clear(slot);
        st.allocated -= 1;
        Ok(())
    }

    /// Destroys the pool, unmapping its ranges, and reports what it finds.
    ///
    /// The checks, in order: in robust mode, every freed item must still hold
    /// the poison on every CPU (else [`MemPoolError::Corrupted`] for the first
    /// one found); then no item may still be allocated (else
    /// [`MemPoolError::Leaked`] with the count; quarantined items do not
    /// count). The memory is unmapped whatever the result. Dropping a pool
    /// instead unmaps it without any check.
    ///
    /// # Errors
    ///
    /// [`MemPoolError::Corrupted`] and [`MemPoolError::Leaked`].
    pub fn destroy(self) -> Result<(), MemPoolError> {
        let config = self.config;
        let st = self
            .state
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        if let (true, Some(poison)) = (config.robust, config.poison) {
            for range in &st.ranges {
                for slot in (0..range.touched).filter(|&s| !range.is_set(s)) {
                    let item = range.item(slot, &config);
                    // SAFETY: a freed item of a mapped range: nobody may
                    // access it, and we own the whole pool now.
                    if let Some((cpu, offset, found)) =
                        unsafe { find_mismatch(item, &config, poison) }
                    {
                        return Err(MemPoolError::Corrupted {
                            addr: item.as_ptr().addr(),
                            cpu,
                            offset,
                            found,
                            expected: poison,
                        });
                    }
                }
            }
        }
        if st.allocated > 0 {
            return Err(MemPoolError::Leaked {
                items: st.allocated,
            });
        }
        Ok(())
    }

    /// Allocates an item and initializes instance `c` with `init(c)`, as a
    /// handle that drops the instances and frees the item when dropped.
    fn alloc_typed<T>(
        &self,
        mut init: impl FnMut(usize) -> T,
    ) -> Result<PerCpuItem<'_, T>, MemPoolError> {
        let (size, align) = (size_of::<T>(), align_of::<T>());
        if size > self.config.item_size || align > self.config.item_align() {
            return Err(MemPoolError::DoesNotFit {
                size,
                align,
                item_size: self.config.item_size,
            });
        }
        let item = self.alloc_raw()?;
        // Frees the item, and drops the instances written so far, if `init`
        // panics.
        let mut partial = Partial::<T> {
            pool: self,
            item,
            written: 0,
            _t: PhantomData,
        };
        for cpu in 0..self.config.cpus {
            let value = init(cpu);
            // SAFETY: cpu < cpus: the instance lies in the item's range; it is
            // aligned for T and large enough (checked above), and ours.
            unsafe {
                item.as_ptr()
                    .add(cpu * self.config.stride)
                    .cast::<T>()
                    .write(value)
            };
            partial.written += 1;
        }
        core::mem::forget(partial);
        Ok(PerCpuItem {
            pool: self,
            base: item.cast(),
            _owns: PhantomData,
        })
    }
}

/// An item being initialized: cleans up if the initializer panics.
struct Partial<'a, T> {
    pool: &'a RawMemPool,
    item: NonNull<u8>,
    written: usize,
    _t: PhantomData<T>,
}

impl<T> Drop for Partial<'_, T> {
    fn drop(&mut self) {
        for cpu in 0..self.written {
            // SAFETY: instances below `written` hold initialized values of T,
            // owned by this guard.
            unsafe {
                core::ptr::drop_in_place(
                    self.item
                        .as_ptr()
                        .add(cpu * self.pool.config.stride)
                        .cast::<T>(),
                )
            };
        }
        // SAFETY: the item was allocated for this guard and nothing else
        // refers to it.
        let _ = unsafe { self.pool.free_raw(self.item) };
    }
}

impl fmt::Debug for RawMemPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.lock();
        f.debug_struct("RawMemPool")
            .field("item_size", &self.config.item_size)
            .field("stride", &self.config.stride)
            .field("cpus", &self.config.cpus)
            .field("robust", &self.config.robust)
            .field("poison", &self.config.poison)
            .field("ranges", &st.ranges.len())
            .field("allocated", &st.allocated)
            .field("quarantined", &st.quarantined.len())
            .finish()
    }
}

/// A per-CPU memory pool of `T`: each allocated item is one `T` per CPU,
/// `stride` bytes apart, each on its own part of the range.
///
/// [`alloc`](Self::alloc) initializes every CPU's instance and returns a
/// [`PerCpuItem`], which borrows the pool and frees the item when dropped.
/// The instance of the CPU a restartable sequence runs on is
/// `as_ptr() + cpu × stride` ([`PerCpuItem::slot`]).
///
/// ```
/// use ktl::percpu::mempool::MemPool;
/// use ktl::rseq::{self, Index};
/// use std::sync::atomic::{AtomicI64, Ordering};
///
/// let pool: MemPool<AtomicI64> = MemPool::new().unwrap();
/// let hits = pool.alloc().unwrap();
/// let added: i64 = std::thread::scope(|s| {
///     let workers: Vec<_> = (0..4)
///         .map(|_| {
///             s.spawn(|| {
///                 let mut added = 0;
///                 for _ in 0..1000 {
///                     let done = rseq::retry(Index::CpuId, |st| {
///                         let slot = hits.slot(st).expect("an instance per possible CPU");
///                         // SAFETY: the instances of `hits` are only written
///                         // by rseq operations indexed by their CPU.
///                         unsafe { rseq::add(st, slot.as_ptr(), 1) }
///                     });
///                     added += i64::from(matches!(done, Some(Ok(()))));
///                 }
///                 added
///             })
///         })
///         .collect();
///     workers.into_iter().map(|w| w.join().unwrap()).sum()
/// });
/// let total: i64 = hits.iter().map(|h| h.load(Ordering::Relaxed)).sum();
/// assert_eq!(total, added);
/// drop(hits);
/// pool.destroy().unwrap();
/// ```
pub struct MemPool<T> {
    raw: RawMemPool,
    _t: PhantomData<fn() -> T>,
}

impl<T> MemPool<T> {
    /// A pool with the default stride, one instance per possible CPU, not
    /// robust ([`MemPoolBuilder::build`] for the options).
    ///
    /// # Errors
    ///
    /// [`MemPoolError::AlignmentTooLarge`] for a type aligned to more than a
    /// page, [`MemPoolError::ItemTooLarge`] for one larger than the stride,
    /// and the errors of mapping the first range.
    pub fn new() -> Result<Self, MemPoolError> {
        MemPoolBuilder::new().build()
    }

    /// Allocates an item, every instance `T::default()`.
    ///
    /// # Errors
    ///
    /// Those of [`RawMemPool::alloc_raw`].
    pub fn alloc(&self) -> Result<PerCpuItem<'_, T>, MemPoolError>
    where
        T: Default,
    {
        self.raw.alloc_typed(|_| T::default())
    }

    /// Allocates an item, the instance of CPU `c` being `init(c)`. If `init`
    /// panics, the instances made so far are dropped and the item is freed.
    ///
    /// # Errors
    ///
    /// Those of [`RawMemPool::alloc_raw`].
    pub fn alloc_with(
        &self,
        init: impl FnMut(usize) -> T,
    ) -> Result<PerCpuItem<'_, T>, MemPoolError> {
        self.raw.alloc_typed(init)
    }

    /// The untyped pool underneath, for its statistics and raw items.
    pub fn raw(&self) -> &RawMemPool {
        &self.raw
    }

    /// The distance between two CPUs' instances of an item, in bytes.
    pub fn stride(&self) -> usize {
        self.raw.stride()
    }

    /// The number of CPUs: instances per item.
    pub fn cpus(&self) -> usize {
        self.raw.cpus()
    }

    /// The number of items allocated and not freed.
    pub fn allocated(&self) -> usize {
        self.raw.allocated()
    }

    /// Destroys the pool: see [`RawMemPool::destroy`]. Items whose handles
    /// were forgotten are reported as leaked; their instances are not dropped.
    ///
    /// # Errors
    ///
    /// [`MemPoolError::Corrupted`] and [`MemPoolError::Leaked`].
    pub fn destroy(self) -> Result<(), MemPoolError> {
        self.raw.destroy()
    }
}

impl<T> fmt::Debug for MemPool<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("MemPool").field(&self.raw).finish()
    }
}

/// An allocated item of a pool: one `T` per CPU, `stride` bytes apart.
/// Dropping it drops every instance and frees the item.
///
/// Shared access gives `&T` per CPU ([`cpu`](Self::cpu),
/// [`slot`](Self::slot), [`iter`](Self::iter)); exclusive access gives
/// `&mut T`. For restartable sequences, [`slot`](Self::slot) is the instance
/// of an operation's index value, and [`as_ptr`](Self::as_ptr) with
/// [`stride`](Self::stride) give the raw address arithmetic.
pub struct PerCpuItem<'a, T> {
    pool: &'a RawMemPool,
    base: NonNull<T>,
    _owns: PhantomData<T>,
}

// SAFETY: the handle owns its instances like a Box<[T]>: sending it sends
// them (T: Send). The pool it borrows is Sync.
unsafe impl<T: Send> Send for PerCpuItem<'_, T> {}
// SAFETY: a shared handle gives only `&T` (and raw pointers, which are
// unsafe to use), so sharing it across threads needs T: Sync.
unsafe impl<T: Sync> Sync for PerCpuItem<'_, T> {}

impl<T> PerCpuItem<'_, T> {
    /// The number of instances (the pool's CPUs).
    pub fn cpus(&self) -> usize {
        self.pool.config.cpus
    }

    /// The distance between two CPUs' instances, in bytes.
    pub fn stride(&self) -> usize {
        self.pool.config.stride
    }

    /// The CPU 0 instance: the item's base. The instance of CPU `c` is
    /// `base.byte_add(c * stride)` for `c` below [`cpus`](Self::cpus).
    ///
    /// Writing through it (or the other instances) while the handle hands
    /// out references is sound only for the parts of `T` inside an
    /// `UnsafeCell` (atomics and the like), under the contract of the
    /// [`rseq`](crate::rseq) operations or with atomic accesses.
    pub fn as_ptr(&self) -> *mut T {
        self.base.as_ptr()
    }

    /// The instance of CPU `cpu`, as a pointer, if `cpu` is below
    /// [`cpus`](Self::cpus).
    pub fn ptr(&self, cpu: usize) -> Option<NonNull<T>> {
        if cpu >= self.cpus() {
            return None;
        }
        NonNull::new(self.base.as_ptr().wrapping_byte_add(cpu * self.stride()))
    }

    /// The instance of CPU `cpu`, if `cpu` is below [`cpus`](Self::cpus).
    pub fn cpu(&self, cpu: usize) -> Option<&T> {
        // SAFETY: an instance of this live item (the pool outlives the
        // handle), initialized when allocated; mutation goes through
        // `&mut self` or T's interior mutability.
        self.ptr(cpu).map(|p| unsafe { p.as_ref() })
    }

    /// The instance of CPU `cpu`, mutably.
    pub fn cpu_mut(&mut self, cpu: usize) -> Option<&mut T> {
        // SAFETY: as in `cpu`; `&mut self` excludes every other access
        // through the handle.
        self.ptr(cpu).map(|mut p| unsafe { p.as_mut() })
    }

    /// The instance of `start`'s index value: the one an rseq operation
    /// started with `start` may update.
    #[inline]
    pub fn slot(&self, start: Start) -> Option<&T> {
        self.cpu(start.value() as usize)
    }

    /// The instance of `start`'s index value, as a pointer:
    /// `as_ptr() + start.value() × stride`.
    #[inline]
    pub fn slot_ptr(&self, start: Start) -> Option<NonNull<T>> {
        self.ptr(start.value() as usize)
    }

    /// The instance of the calling thread's current CPU: only a hint, the
    /// thread may move right after (see [`PerCpu::current`](super::PerCpu::current)).
    pub fn current(&self) -> Option<&T> {
        self.cpu(crate::cpu_id() as usize)
    }

    /// Every instance, in CPU order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &T> {
        let (base, stride) = (self.base, self.stride());
        (0..self.cpus()).map(move |c| {
            // SAFETY: as in `cpu`: c < cpus, an initialized instance of this
            // live item, borrowed with `self`.
            unsafe { &*base.as_ptr().byte_add(c * stride) }
        })
    }

    /// Every instance, mutably, in CPU order.
    pub fn iter_mut(&mut self) -> impl ExactSizeIterator<Item = &mut T> {
        let (base, stride) = (self.base, self.stride());
        (0..self.cpus()).map(move |c| {
            // SAFETY: distinct instances of this live item (c < cpus), each
            // handed out once, borrowed with `&mut self`, which excludes any
            // other access through the handle.
            unsafe { &mut *base.as_ptr().byte_add(c * stride) }
        })
    }
}

impl<T> Drop for PerCpuItem<'_, T> {
    fn drop(&mut self) {
        if core::mem::needs_drop::<T>() {
            for cpu in 0..self.cpus() {
                // SAFETY: each instance holds an initialized T owned by this
                // handle, dropped once here.
                unsafe {
                    core::ptr::drop_in_place(self.base.as_ptr().byte_add(cpu * self.stride()))
                };
            }
        }
        // SAFETY: the item was allocated for this handle and is freed only
        // here; the handle's borrows have ended, and raw pointers taken
        // from it are not to be used past its life.
        let _ = unsafe { self.pool.free_raw(self.base.cast()) };
    }
}

impl<T: fmt::Debug> fmt::Debug for PerCpuItem<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerCpuItem")
            .field("base", &self.base)
            .field("stride", &self.stride())
            .field("instances", &self.iter().collect::<Vec<_>>())
            .finish()
    }
}

/// Per-CPU memory for several object sizes: one pool per size class, powers
/// of two from [`MIN_CLASS`] bytes up to a limit.
///
/// [`alloc`](Self::alloc) serves `size` bytes from the smallest class that
/// fits, or from a larger class when that one has reached its range limit.
/// Every class shares the set's stride and CPU count; a class pool maps its
/// first range when first used.
pub struct MemPoolSet {
    /// Class `i` holds items of `MIN_CLASS << i` bytes.
    classes: Vec<RawMemPool>,
    max: usize,
}

impl MemPoolSet {
    /// Classes from 8 bytes up to `max_size` (rounded up to a power of two),
    /// with the default stride and CPU count, not robust
    /// ([`MemPoolBuilder::build_set`] for the options).
    ///
    /// # Errors
    ///
    /// [`MemPoolError::ItemTooLarge`] when the largest class does not fit the
    /// stride.
    pub fn new(max_size: usize) -> Result<Self, MemPoolError> {
        MemPoolBuilder::new().build_set(max_size)
    }

    /// The class sizes, smallest first.
    pub fn class_sizes(&self) -> impl ExactSizeIterator<Item = usize> + '_ {
        self.classes.iter().map(RawMemPool::item_size)
    }

    /// The largest class.
    pub fn max_size(&self) -> usize {
        self.max
    }

    /// The smallest class that holds `size` bytes.
    pub fn class_of(&self, size: usize) -> Option<usize> {
        self.first_class(size).map(|i| MIN_CLASS << i)
    }

    /// The pool of the class of `class_size` bytes.
    pub fn pool(&self, class_size: usize) -> Option<&RawMemPool> {
        self.classes.iter().find(|p| p.item_size() == class_size)
    }

    /// The index of the smallest class that holds `size` bytes.
    fn first_class(&self, size: usize) -> Option<usize> {
        self.classes.iter().position(|p| p.item_size() >= size)
    }

    /// Runs `op` on the pools of the classes that hold `size` bytes,
    /// smallest first, until one does not report
    /// [`Exhausted`](MemPoolError::Exhausted).
    fn each_class<'s, R>(
        &'s self,
        size: usize,
        mut op: impl FnMut(&'s RawMemPool) -> Result<R, MemPoolError>,
    ) -> Result<R, MemPoolError> {
        let first = self.first_class(size).ok_or(MemPoolError::SizeTooLarge {
            size,
            max: self.max,
        })?;
        let mut last = MemPoolError::Exhausted { ranges: 0 };
        for pool in &self.classes[first..] {
            match op(pool) {
                Err(e @ MemPoolError::Exhausted { .. }) => last = e,
                other => return other,
            }
        }
        Err(last)
    }

    /// Allocates `size` bytes per CPU, zeroed on every CPU, as a handle that
    /// frees them when dropped.
    ///
    /// # Errors
    ///
    /// [`MemPoolError::SizeTooLarge`] past the largest class, and those of
    /// [`RawMemPool::alloc_raw`] (exhaustion only when every class that fits
    /// is exhausted).
    pub fn alloc(&self, size: usize) -> Result<PerCpuBlock<'_>, MemPoolError> {
        self.each_class(size, |pool| {
            pool.alloc_zeroed_raw().map(|base| PerCpuBlock {
                pool,
                base,
                len: size,
            })
        })
    }

    /// Allocates one `T` per CPU, each `T::default()`, from the smallest class
    /// that fits `T`'s size and alignment.
    ///
    /// # Errors
    ///
    /// [`MemPoolError::AlignmentTooLarge`] for a type aligned to more than a
    /// page, and those of [`alloc`](Self::alloc).
    pub fn alloc_item<T: Default>(&self) -> Result<PerCpuItem<'_, T>, MemPoolError> {
        self.alloc_item_with(|_| T::default())
    }

    /// Allocates one `T` per CPU, the instance of CPU `c` being `init(c)`.
    ///
    /// # Errors
    ///
    /// Those of [`alloc_item`](Self::alloc_item).
    pub fn alloc_item_with<T>(
        &self,
        mut init: impl FnMut(usize) -> T,
    ) -> Result<PerCpuItem<'_, T>, MemPoolError> {
        let page = page_size();
        if align_of::<T>() > page {
            return Err(MemPoolError::AlignmentTooLarge {
                align: align_of::<T>(),
                page_size: page,
            });
        }
        // Class items are aligned to their size (up to a page).
        let size = size_of::<T>().max(align_of::<T>());
        self.each_class(size, |pool| pool.alloc_typed(&mut init))
    }

    /// Allocates `size` bytes per CPU and returns the CPU 0 instance, as
    /// [`RawMemPool::alloc_raw`] does.
    ///
    /// # Errors
    ///
    /// Those of [`alloc`](Self::alloc).
    pub fn alloc_raw(&self, size: usize) -> Result<NonNull<u8>, MemPoolError> {
        self.each_class(size, RawMemPool::alloc_raw)
    }

    /// Frees an item of any class of the set.
    ///
    /// # Errors
    ///
    /// [`MemPoolError::NotAnItem`] when no class has such an item, and
    /// [`MemPoolError::DoubleFree`].
    ///
    /// # Safety
    ///
    /// The contract of [`RawMemPool::free_raw`].
    pub unsafe fn free_raw(&self, item: NonNull<u8>) -> Result<(), MemPoolError> {
        match self.classes.iter().find(|p| p.contains(item)) {
            // SAFETY: forwarded to the caller's contract.
            Some(pool) => unsafe { pool.free_raw(item) },
            None => Err(MemPoolError::NotAnItem {
                addr: item.as_ptr().addr(),
            }),
        }
    }

    /// The number of items allocated and not freed, over every class.
    pub fn allocated(&self) -> usize {
        self.classes.iter().map(RawMemPool::allocated).sum()
    }

    /// Destroys every class pool (see [`RawMemPool::destroy`]): the first
    /// corruption found, else the leaks of every class added up.
    ///
    /// # Errors
    ///
    /// [`MemPoolError::Corrupted`] and [`MemPoolError::Leaked`].
    pub fn destroy(self) -> Result<(), MemPoolError> {
        let mut leaked = 0;
        let mut first = None;
        for pool in self.classes {
            match pool.destroy() {
                Ok(()) => {}
                Err(MemPoolError::Leaked { items }) => leaked += items,
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        match first {
            Some(e) => Err(e),
            None if leaked > 0 => Err(MemPoolError::Leaked { items: leaked }),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for MemPoolSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemPoolSet")
            .field("classes", &self.classes)
            .finish()
    }
}

/// Bytes allocated from a [`MemPoolSet`]: `len` bytes per CPU (in an item of
/// [`capacity`](Self::capacity) bytes), `stride` bytes apart, zeroed when
/// allocated, freed when dropped.
///
/// The bytes are read and written through atomics ([`bytes`](Self::bytes)),
/// or through the raw pointers under the contract of the
/// [`rseq`](crate::rseq) operations.
pub struct PerCpuBlock<'a> {
    pool: &'a RawMemPool,
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the block holds plain bytes, reached through atomics or through
// unsafe raw pointers; the pool it borrows is Sync.
unsafe impl Send for PerCpuBlock<'_> {}
// SAFETY: as above: shared access is through `&[AtomicU8]` only.
unsafe impl Sync for PerCpuBlock<'_> {}

impl PerCpuBlock<'_> {
    /// The bytes asked for, per CPU.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether 0 bytes were asked for.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The size of the class item holding the bytes, per CPU.
    pub fn capacity(&self) -> usize {
        self.pool.item_size()
    }

    /// The number of instances (CPUs).
    pub fn cpus(&self) -> usize {
        self.pool.cpus()
    }

    /// The distance between two CPUs' instances, in bytes.
    pub fn stride(&self) -> usize {
        self.pool.stride()
    }

    /// The CPU 0 instance.
    pub fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// The instance of CPU `cpu`, if it is below [`cpus`](Self::cpus).
    pub fn ptr(&self, cpu: usize) -> Option<NonNull<u8>> {
        self.pool.instance(self.base, cpu)
    }

    /// The `len` bytes of CPU `cpu`, as atomics.
    pub fn bytes(&self, cpu: usize) -> Option<&[AtomicU8]> {
        // SAFETY: `len` bytes (at most the item size) of an instance of this
        // live, zero-initialized item; AtomicU8 has the size and alignment
        // of u8, and every shared access goes through it.
        self.ptr(cpu).map(|p| unsafe {
            core::slice::from_raw_parts(p.as_ptr().cast::<AtomicU8>(), self.len)
        })
    }
}

impl Drop for PerCpuBlock<'_> {
    fn drop(&mut self) {
        // SAFETY: the item was allocated for this block and is freed only
        // here; the block's borrows have ended.
        let _ = unsafe { self.pool.free_raw(self.base) };
    }
}

impl fmt::Debug for PerCpuBlock<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerCpuBlock")
            .field("base", &self.base)
            .field("len", &self.len)
            .field("capacity", &self.capacity())
            .field("stride", &self.stride())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A small raw pool: 3 CPUs, one page per CPU.
    fn small(item_size: usize) -> MemPoolBuilder {
        MemPoolBuilder::new()
            .item_size(item_size)
            .cpus(3)
            .stride(page_size())
    }

    fn read_u64(p: NonNull<u8>, offset: usize) -> u64 {
        // SAFETY: the tests read inside items of live pools, 8-aligned.
        unsafe { p.as_ptr().add(offset).cast::<u64>().read() }
    }

    #[test]
    fn builder_rejects_each_bad_input_with_its_error() {
        let page = page_size();
        let b = MemPoolBuilder::new;
        assert_eq!(b().build_raw().unwrap_err(), MemPoolError::ZeroItemSize);
        assert_eq!(
            b().item_size(8).align(24).build_raw().unwrap_err(),
            MemPoolError::BadAlignment { align: 24 }
        );
        assert_eq!(
            b().item_size(8).align(0).build_raw().unwrap_err(),
            MemPoolError::BadAlignment { align: 0 }
        );
        assert_eq!(
            b().item_size(8).align(page * 2).build_raw().unwrap_err(),
            MemPoolError::AlignmentTooLarge {
                align: page * 2,
                page_size: page
            }
        );
        for stride in [0, page / 2, page + 8] {
            assert_eq!(
                b().item_size(8).stride(stride).build_raw().unwrap_err(),
                MemPoolError::BadStride {
                    stride,
                    page_size: page
                }
            );
        }
        assert_eq!(
            b().item_size(page + 1)
                .stride(page)
                .build_raw()
                .unwrap_err(),
            MemPoolError::ItemTooLarge {
                item_size: page + 8,
                stride: page
            }
        );
        assert_eq!(
            b().item_size(usize::MAX).build_raw().unwrap_err(),
            MemPoolError::ItemTooLarge {
                item_size: usize::MAX,
                stride: DEFAULT_STRIDE.max(page)
            }
        );
        assert_eq!(
            b().item_size(8).cpus(0).build_raw().unwrap_err(),
            MemPoolError::NoCpus
        );
        assert_eq!(
            b().item_size(8).max_ranges(0).build_raw().unwrap_err(),
            MemPoolError::NoRanges
        );
        let huge = usize::MAX / page;
        assert_eq!(
            b().item_size(8)
                .stride(page)
                .cpus(huge)
                .build_raw()
                .unwrap_err(),
            MemPoolError::RangeTooLarge {
                stride: page,
                cpus: huge
            }
        );
        #[repr(align(65536))]
        struct Huge(#[allow(dead_code)] u8);
        if page < 65536 {
            assert_eq!(
                MemPool::<Huge>::new().unwrap_err(),
                MemPoolError::AlignmentTooLarge {
                    align: 65536,
                    page_size: page
                }
            );
        }
    }

    #[test]
    fn item_sizes_round_up_to_the_alignment() {
        let page = page_size();
        for (size, align, want) in [
            (1, 1, 8),
            (8, 8, 8),
            (9, 1, 16),
            (9, 16, 16),
            (24, 8, 24),
            (33, 32, 64),
        ] {
            let p = small(size).align(align).build_raw().unwrap();
            assert_eq!(p.item_size(), want, "{size} {align}");
            assert_eq!(p.items_per_range(), page / want);
            assert_eq!(p.range_len(), 3 * page);
            assert_eq!(p.ranges(), 1, "the first range is mapped at build");
        }
        let p = MemPoolBuilder::new().item_size(8).build_raw().unwrap();
        assert_eq!(p.stride(), DEFAULT_STRIDE.max(page));
        assert_eq!(p.cpus(), super::super::slot_count(Index::CpuId));
        let t = MemPoolBuilder::new().align(64).build::<u8>().unwrap();
        assert_eq!(t.raw().item_size(), 64);
    }

    #[test]
    fn items_fill_a_range_lowest_first_then_map_another() {
        let pool = small(24).build_raw().unwrap();
        let per = pool.items_per_range();
        let items: Vec<_> = (0..per + 1).map(|_| pool.alloc_raw().unwrap()).collect();
        assert_eq!(pool.ranges(), 2);
        assert_eq!(pool.capacity(), 2 * per);
        assert_eq!(pool.allocated(), per + 1);
        let base = items[0].as_ptr().addr();
        for (i, item) in items[..per].iter().enumerate() {
            assert_eq!(item.as_ptr().addr(), base + i * 24);
            for cpu in 0..3 {
                let inst = pool.instance(*item, cpu).unwrap();
                assert_eq!(inst.as_ptr().addr(), base + cpu * pool.stride() + i * 24);
            }
            assert_eq!(pool.instance(*item, 3), None);
        }
        let other = items[per].as_ptr().addr();
        assert!(other < base || other >= base + pool.range_len());
        // Free two in the middle: the lower one comes back first.
        // SAFETY: the items are ours and unused.
        unsafe {
            pool.free_raw(items[7]).unwrap();
            pool.free_raw(items[3]).unwrap();
        }
        assert_eq!(pool.alloc_raw().unwrap(), items[3]);
        assert_eq!(pool.alloc_raw().unwrap(), items[7]);
        let next = pool.alloc_raw().unwrap();
        assert_eq!(next.as_ptr().addr(), other + 24);
        for item in items.iter().chain([&next]) {
            // SAFETY: as above.
            unsafe { pool.free_raw(*item) }.unwrap();
        }
        assert_eq!(pool.allocated(), 0);
        pool.destroy().unwrap();
    }

    #[test]
    fn free_rejects_foreign_pointers_and_double_frees_in_every_mode() {
        for robust in [false, true] {
            let pool = small(16).robust(robust).build_raw().unwrap();
            let item = pool.alloc_raw().unwrap();
            let addr = item.as_ptr().addr();
            let mut local = 0u64;
            let foreign = NonNull::from(&mut local).cast::<u8>();
            let inside = NonNull::new(item.as_ptr().wrapping_add(8)).unwrap();
            let cpu1 = pool.instance(item, 1).unwrap();
            let never = NonNull::new(item.as_ptr().wrapping_add(16)).unwrap();
            // SAFETY: none of these frees touches memory in use: they are
            // rejected, or free our own item once.
            unsafe {
                let not = |p: NonNull<u8>| MemPoolError::NotAnItem {
                    addr: p.as_ptr().addr(),
                };
                assert_eq!(pool.free_raw(foreign), Err(not(foreign)));
                assert_eq!(pool.free_raw(inside), Err(not(inside)));
                assert_eq!(pool.free_raw(cpu1), Err(not(cpu1)));
                assert_eq!(
                    pool.free_raw(never),
                    Err(MemPoolError::DoubleFree { addr: addr + 16 })
                );
                assert_eq!(pool.free_raw(item), Ok(()));
                assert_eq!(pool.free_raw(item), Err(MemPoolError::DoubleFree { addr }));
            }
            assert_eq!(pool.allocated(), 0);
            pool.destroy().unwrap();
        }
    }

    #[test]
    fn robust_free_poisons_every_cpu_and_reuse_checks_it() {
        let pool = small(32).robust(true).build_raw().unwrap();
        assert_eq!(pool.poison(), Some(DEFAULT_POISON));
        let item = pool.alloc_raw().unwrap();
        for cpu in 0..3 {
            let inst = pool.instance(item, cpu).unwrap();
            for w in 0..4 {
                assert_eq!(read_u64(inst, w * 8), 0, "fresh items are zero");
                // SAFETY: the instance is ours.
                unsafe { inst.as_ptr().add(w * 8).cast::<u64>().write(cpu as u64 + 1) };
            }
        }
        // SAFETY: ours, unused from now on.
        unsafe { pool.free_raw(item) }.unwrap();
        for cpu in 0..3 {
            let inst = pool.instance(item, cpu).unwrap();
            for w in 0..4 {
                assert_eq!(read_u64(inst, w * 8), DEFAULT_POISON, "cpu {cpu} word {w}");
            }
        }
        // Untouched poison passes the check on reuse.
        assert_eq!(pool.alloc_raw().unwrap(), item);
        assert_eq!(pool.quarantined(), 0);
        // SAFETY: ours.
        unsafe { pool.free_raw(item) }.unwrap();
        pool.destroy().unwrap();
    }

    #[test]
    fn a_corrupted_item_is_reported_quarantined_and_skipped() {
        let pool = small(16).robust(true).poison(0x1234).build_raw().unwrap();
        let a = pool.alloc_raw().unwrap();
        let b = pool.alloc_raw().unwrap();
        // SAFETY: ours.
        unsafe { pool.free_raw(a) }.unwrap();
        let inst = pool.instance(a, 2).unwrap();
        // SAFETY: writes into a freed item: mapped memory nobody uses; this
        // is the use-after-free the robust mode detects.
        unsafe { inst.as_ptr().add(8).cast::<u64>().write(99) };
        assert_eq!(
            pool.alloc_raw(),
            Err(MemPoolError::Corrupted {
                addr: a.as_ptr().addr(),
                cpu: 2,
                offset: 8,
                found: 99,
                expected: 0x1234,
            })
        );
        assert_eq!(pool.quarantined(), 1);
        assert_eq!(pool.allocated(), 1);
        // The next allocation skips the quarantined item.
        let c = pool.alloc_raw().unwrap();
        assert_eq!(c.as_ptr().addr(), b.as_ptr().addr() + 16);
        // SAFETY: a quarantined item is not allocated; b and c are ours.
        unsafe {
            assert_eq!(
                pool.free_raw(a),
                Err(MemPoolError::DoubleFree {
                    addr: a.as_ptr().addr()
                })
            );
            pool.free_raw(b).unwrap();
            pool.free_raw(c).unwrap();
        }
        // Quarantined items are not leaks.
        pool.destroy().unwrap();
    }

    #[test]
    fn max_ranges_exhausts_then_a_free_makes_room() {
        let pool = small(2048).max_ranges(2).build_raw().unwrap();
        let per = pool.items_per_range();
        let items: Vec<_> = (0..2 * per).map(|_| pool.alloc_raw().unwrap()).collect();
        assert_eq!(pool.alloc_raw(), Err(MemPoolError::Exhausted { ranges: 2 }));
        // SAFETY: ours.
        unsafe { pool.free_raw(items[per]) }.unwrap();
        assert_eq!(pool.alloc_raw().unwrap(), items[per]);
        for item in items {
            // SAFETY: ours.
            unsafe { pool.free_raw(item) }.unwrap();
        }
        pool.destroy().unwrap();
    }

    #[test]
    fn zeroed_alloc_zeroes_a_reused_item_and_poison_anonymizes_without_checks() {
        let pool = small(16).poison(0xabcd).build_raw().unwrap();
        assert!(!pool.is_robust());
        let item = pool.alloc_raw().unwrap();
        // SAFETY: ours, then freed once.
        unsafe {
            pool.free_raw(item).unwrap();
        }
        assert_eq!(read_u64(pool.instance(item, 1).unwrap(), 8), 0xabcd);
        // SAFETY: a write after free; without robust mode nothing checks it.
        unsafe { item.as_ptr().cast::<u64>().write(5) };
        assert_eq!(pool.alloc_zeroed_raw().unwrap(), item);
        for cpu in 0..3 {
            let inst = pool.instance(item, cpu).unwrap();
            assert_eq!((read_u64(inst, 0), read_u64(inst, 8)), (0, 0), "cpu {cpu}");
        }
        // SAFETY: ours.
        unsafe { pool.free_raw(item) }.unwrap();
        pool.destroy().unwrap();
    }

    #[derive(Debug)]
    struct Counted {
        cpu: usize,
        drops: Arc<AtomicUsize>,
    }

    impl Drop for Counted {
        fn drop(&mut self) {
            self.drops.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn typed_items_initialize_and_drop_every_instance() {
        let pool = MemPoolBuilder::new()
            .cpus(5)
            .stride(page_size())
            .robust(true)
            .build::<Counted>()
            .unwrap();
        let drops = Arc::new(AtomicUsize::new(0));
        let mut item = pool
            .alloc_with(|cpu| Counted {
                cpu,
                drops: Arc::clone(&drops),
            })
            .unwrap();
        assert_eq!(item.cpus(), 5);
        assert_eq!(item.iter().len(), 5);
        assert!(item.iter().enumerate().all(|(i, c)| c.cpu == i));
        item.cpu_mut(4).unwrap().cpu = 40;
        item.iter_mut().for_each(|c| c.cpu += 1);
        assert_eq!(item.cpu(4).unwrap().cpu, 41);
        assert_eq!(item.cpu(0).unwrap().cpu, 1);
        assert!(item.cpu(5).is_none());
        for c in 0..5 {
            let p = item.ptr(c).unwrap().as_ptr().addr();
            assert_eq!(p, item.as_ptr().addr() + c * item.stride());
        }
        assert_eq!(pool.allocated(), 1);
        drop(item);
        assert_eq!(drops.load(Ordering::Relaxed), 5);
        assert_eq!(pool.allocated(), 0);
        pool.destroy().unwrap();
    }

    #[test]
    fn a_panicking_initializer_drops_what_it_made_and_frees_the_item() {
        let pool = MemPoolBuilder::new()
            .cpus(4)
            .stride(page_size())
            .build::<Counted>()
            .unwrap();
        let drops = Arc::new(AtomicUsize::new(0));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.alloc_with(|cpu| {
                assert!(cpu < 2, "initializer fails on CPU {cpu}");
                Counted {
                    cpu,
                    drops: Arc::clone(&drops),
                }
            })
            .map(drop)
        }));
        assert!(result.is_err());
        assert_eq!(drops.load(Ordering::Relaxed), 2);
        assert_eq!(pool.allocated(), 0);
        pool.destroy().unwrap();
    }

    #[test]
    fn zero_sized_and_over_aligned_types_work() {
        let pool: MemPool<()> = MemPoolBuilder::new().cpus(2).build().unwrap();
        assert_eq!(pool.raw().item_size(), 8);
        let a = pool.alloc().unwrap();
        let b = pool.alloc().unwrap();
        assert_ne!(a.as_ptr(), b.as_ptr());
        assert_eq!(a.iter().count(), 2);
        drop((a, b));
        pool.destroy().unwrap();

        #[derive(Default)]
        #[repr(align(256))]
        struct Line(u64);
        let pool: MemPool<Line> = MemPoolBuilder::new().cpus(2).build().unwrap();
        let items: Vec<_> = (0..3).map(|_| pool.alloc().unwrap()).collect();
        for item in &items {
            assert_eq!(item.as_ptr().addr() % 256, 0);
            assert_eq!(item.ptr(1).unwrap().as_ptr().addr() % 256, 0);
            assert_eq!(item.cpu(1).unwrap().0, 0);
        }
    }

    #[test]
    fn sets_pick_the_smallest_class_and_fall_through_when_one_is_exhausted() {
        let page = page_size();
        let set = MemPoolBuilder::new()
            .cpus(2)
            .stride(page)
            .max_ranges(1)
            .build_set(100)
            .unwrap();
        assert_eq!(set.max_size(), 128);
        assert_eq!(set.class_sizes().collect::<Vec<_>>(), [8, 16, 32, 64, 128]);
        assert_eq!(set.class_of(0), Some(8));
        assert_eq!(set.class_of(9), Some(16));
        assert_eq!(set.class_of(128), Some(128));
        assert_eq!(set.class_of(129), None);
        assert_eq!(
            set.alloc(129).unwrap_err(),
            MemPoolError::SizeTooLarge {
                size: 129,
                max: 128
            }
        );
        // No class maps a range before it is used.
        assert!(
            set.class_sizes()
                .all(|c| set.pool(c).unwrap().ranges() == 0)
        );
        let block = set.alloc(20).unwrap();
        assert_eq!((block.len(), block.capacity()), (20, 32));
        assert_eq!(set.pool(32).unwrap().ranges(), 1);
        // Fill the 64-byte class: the next 64-byte request goes to 128.
        let per = page / 64;
        let full: Vec<_> = (0..per).map(|_| set.alloc_raw(64).unwrap()).collect();
        assert!(full.iter().all(|p| set.pool(64).unwrap().contains(*p)));
        let spill = set.alloc(64).unwrap();
        assert_eq!(spill.capacity(), 128);
        // Typed items take the class of their size.
        let item = set.alloc_item::<[u64; 3]>().unwrap();
        assert!(
            set.pool(32)
                .unwrap()
                .contains(NonNull::new(item.as_ptr().cast()).unwrap())
        );
        assert_eq!(set.allocated(), per + 3);
        for p in &full {
            // SAFETY: ours.
            unsafe { set.free_raw(*p) }.unwrap();
        }
        let mut local = 0u8;
        // SAFETY: a foreign pointer is rejected untouched.
        let foreign = unsafe { set.free_raw(NonNull::from(&mut local)) };
        assert!(matches!(foreign, Err(MemPoolError::NotAnItem { .. })));
        drop((block, spill, item));
        assert_eq!(set.allocated(), 0);
        set.destroy().unwrap();
    }

    #[test]
    fn set_destroy_adds_up_the_leaks_of_every_class() {
        let set = MemPoolBuilder::new().cpus(2).build_set(64).unwrap();
        for size in [1, 8, 30, 60, 64] {
            std::mem::forget(set.alloc(size).unwrap());
        }
        assert_eq!(set.allocated(), 5);
        assert_eq!(set.destroy(), Err(MemPoolError::Leaked { items: 5 }));
        assert_eq!(
            MemPoolBuilder::new()
                .stride(page_size())
                .build_set(page_size() + 1)
                .unwrap_err(),
            MemPoolError::ItemTooLarge {
                item_size: page_size() * 2,
                stride: page_size()
            }
        );
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

    #[test]
    fn errors_say_what_went_wrong() {
        let cases = [
            (MemPoolError::ZeroItemSize, "item size is 0"),
            (MemPoolError::BadAlignment { align: 24 }, "24"),
            (
                MemPoolError::Map {
                    len: 4096,
                    errno: Errno(libc::ENOMEM),
                },
                "ENOMEM",
            ),
            (MemPoolError::DoubleFree { addr: 0x1000 }, "double free"),
            (
                MemPoolError::Corrupted {
                    addr: 0x1000,
                    cpu: 3,
                    offset: 16,
                    found: 1,
                    expected: 2,
                },
                "CPU 3",
            ),
            (MemPoolError::Leaked { items: 7 }, "7 items"),
        ];
        for (e, want) in cases {
            let text = e.to_string();
            assert!(text.contains(want), "{text:?} lacks {want:?}");
        }
    }
}
