//! The pool layer: [`RawMemPool`], untyped items over the ranges. An
//! allocation takes the lowest free item (mapping a new range when every
//! range is full) and, in robust mode, checks its poison; a free checks the
//! pointer and the bitmap before it touches memory, then poisons; destroy
//! checks the freed items and reports leaks.

use super::MemPoolError;
use super::config::Config;
use super::range::{State, check_poison, fill, zero};
use core::fmt;
use core::ptr::NonNull;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// A per-CPU memory pool of untyped items: every item has one instance per
/// CPU, `stride` bytes apart.
///
/// Items are pointers to their CPU 0 instance;
/// [`instance`](Self::instance) gives the others. [`alloc_raw`](Self::alloc_raw)
/// is safe (an item that is never freed only leaks);
/// [`free_raw`](Self::free_raw) is `unsafe`, because the caller promises that
/// nothing uses the item afterwards. See the [module docs](super) for the
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
    pub(super) config: Config,
    state: Mutex<State>,
}

impl RawMemPool {
    pub(super) fn with_config(config: Config, map_first: bool) -> Result<Self, MemPoolError> {
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
                let checked = unsafe { check_poison(item, config, poison) };
                if checked.is_err() {
                    st.quarantined.insert(item.as_ptr().addr());
                    return checked.map(|()| (item, fresh));
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
                    unsafe { check_poison(item, &config, poison) }?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::percpu::mempool::DEFAULT_POISON;
    use crate::percpu::mempool::tests::small;

    fn read_u64(p: NonNull<u8>, offset: usize) -> u64 {
        // SAFETY: the tests read inside items of live pools, 8-aligned.
        unsafe { p.as_ptr().add(offset).cast::<u64>().read() }
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
}
