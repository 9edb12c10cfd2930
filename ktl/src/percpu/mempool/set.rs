//! The front end for several sizes: [`MemPoolSet`], one raw pool per size
//! class (powers of two from [`MIN_CLASS`] bytes up), and [`PerCpuBlock`],
//! the zeroed bytes it hands out, one instance per CPU.

use super::{MIN_CLASS, MemPoolBuilder, MemPoolError, PerCpuItem, RawMemPool, page_size};
use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::AtomicU8;

/// Per-CPU memory for several object sizes: one pool per size class, powers
/// of two from [`MIN_CLASS`] bytes up to a limit.
///
/// [`alloc`](Self::alloc) serves `size` bytes from the smallest class that
/// fits, or from a larger class when that one has reached its range limit.
/// Every class shares the set's stride and CPU count; a class pool maps its
/// first range when first used.
pub struct MemPoolSet {
    /// Class `i` holds items of `MIN_CLASS << i` bytes.
    pub(super) classes: Vec<RawMemPool>,
    pub(super) max: usize,
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
}
