//! The typed front end: [`MemPool<T>`], a pool of `T`, and
//! [`PerCpuItem<T>`], the handle of an item (one `T` per CPU, dropped and
//! freed with the handle); and the typed allocation of a [`RawMemPool`],
//! which initializes every CPU's instance and cleans up when the initializer
//! panics, for these pools and for [`MemPoolSet`](super::MemPoolSet).

use super::{MemPoolBuilder, MemPoolError, RawMemPool};
use crate::rseq::Start;
use core::fmt;
use core::marker::PhantomData;
use core::ptr::NonNull;

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
    pub(super) raw: RawMemPool,
    pub(super) _t: PhantomData<fn() -> T>,
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
    base: NonNull<T>,
    /// The pool's stride and CPU count, kept here so that finding an
    /// instance reads this handle only (see [`slot`](Self::slot)).
    stride: usize,
    cpus: usize,
    pool: &'a RawMemPool,
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
        self.cpus
    }

    /// The distance between two CPUs' instances, in bytes.
    pub fn stride(&self) -> usize {
        self.stride
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
        if cpu >= self.cpus {
            return None;
        }
        // SAFETY: `cpu * stride` is inside the item's instances (cpu < cpus),
        // all in one mapping of the pool, so the offset neither overflows
        // nor leaves the allocation, and the result is not null.
        Some(unsafe { self.base.byte_add(cpu * self.stride) })
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

    /// The item's address arithmetic (its base, stride and CPU count) as a
    /// small `Copy` value, for a loop of restartable sequences: kept in a
    /// local, its three words stay in registers, where the handle's are
    /// read again after every section (a section may write memory, so the
    /// compiler cannot keep what it reads through a reference).
    ///
    /// ```
    /// use ktl::percpu::mempool::MemPool;
    /// use ktl::rseq::{self, Index};
    /// use std::sync::atomic::{AtomicI64, Ordering};
    ///
    /// let pool: MemPool<AtomicI64> = MemPool::new().unwrap();
    /// let hits = pool.alloc().unwrap();
    /// let slots = hits.slots();
    /// for _ in 0..100 {
    ///     rseq::retry(Index::CpuId, |s| {
    ///         let slot = slots.slot(s).expect("an instance per possible CPU");
    ///         // SAFETY: the instances of `hits` are only written by rseq
    ///         // operations indexed by their CPU.
    ///         unsafe { rseq::add(s, slot.as_ptr(), 1) }
    ///     });
    /// }
    /// let total: i64 = hits.iter().map(|h| h.load(Ordering::Relaxed)).sum();
    /// assert_eq!(total, if rseq::start(Index::CpuId).is_some() { 100 } else { 0 });
    /// ```
    #[inline]
    pub fn slots(&self) -> Slots<'_, T> {
        Slots {
            base: self.base,
            stride: self.stride,
            cpus: self.cpus,
            _item: PhantomData,
        }
    }

    /// The instance of the calling thread's current CPU: only a hint, the
    /// thread may move right after (see [`PerCpu::current`](crate::percpu::PerCpu::current)).
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

/// The instances of a [`PerCpuItem`], as its base, stride and CPU count:
/// see [`PerCpuItem::slots`]. It borrows the item, like `&T` for each CPU.
pub struct Slots<'a, T> {
    base: NonNull<T>,
    stride: usize,
    cpus: usize,
    _item: PhantomData<&'a T>,
}

impl<T> Clone for Slots<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Slots<'_, T> {}

// SAFETY: a `Slots` gives only `&T` (and raw pointers), like `&T`, so it may
// be sent and shared when `T: Sync`.
unsafe impl<T: Sync> Send for Slots<'_, T> {}
// SAFETY: as above.
unsafe impl<T: Sync> Sync for Slots<'_, T> {}

impl<'a, T> Slots<'a, T> {
    /// The number of instances.
    #[inline]
    pub fn cpus(self) -> usize {
        self.cpus
    }

    /// The distance between two CPUs' instances, in bytes.
    #[inline]
    pub fn stride(self) -> usize {
        self.stride
    }

    /// The CPU 0 instance: see [`PerCpuItem::as_ptr`].
    #[inline]
    pub fn as_ptr(self) -> *mut T {
        self.base.as_ptr()
    }

    /// The instance of CPU `cpu`, as a pointer, if `cpu` is below
    /// [`cpus`](Self::cpus).
    #[inline]
    pub fn ptr(self, cpu: usize) -> Option<NonNull<T>> {
        if cpu >= self.cpus {
            return None;
        }
        // SAFETY: as in `PerCpuItem::ptr`: an instance of the borrowed item.
        Some(unsafe { self.base.byte_add(cpu * self.stride) })
    }

    /// The instance of CPU `cpu`, if `cpu` is below [`cpus`](Self::cpus).
    #[inline]
    pub fn cpu(self, cpu: usize) -> Option<&'a T> {
        // SAFETY: an initialized instance of the item, which outlives `'a`;
        // mutation goes through T's interior mutability only while the item
        // is shared.
        self.ptr(cpu).map(|p| unsafe { p.as_ref() })
    }

    /// The instance of `start`'s index value: see [`PerCpuItem::slot`].
    #[inline]
    pub fn slot(self, start: Start) -> Option<&'a T> {
        self.cpu(start.value() as usize)
    }
}

impl<T> fmt::Debug for Slots<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slots")
            .field("base", &self.base)
            .field("stride", &self.stride)
            .field("cpus", &self.cpus)
            .finish()
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

impl RawMemPool {
    /// Allocates an item and initializes instance `c` with `init(c)`, as a
    /// handle that drops the instances and frees the item when dropped.
    pub(super) fn alloc_typed<T>(
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
            base: item.cast(),
            stride: self.config.stride,
            cpus: self.config.cpus,
            pool: self,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::percpu::mempool::page_size;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

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
}
