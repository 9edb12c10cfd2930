//! The mapping layer: a range is one private anonymous mapping of
//! `stride × cpus` bytes with its allocation bitmap and high-water mark; the
//! state of a pool (behind its mutex) is its ranges, a lookup from address
//! to range, the count of allocated items and the quarantine; and three
//! functions write or check every CPU's instance of an item (poison, zero,
//! poison check).

use super::MemPoolError;
use super::config::Config;
use crate::sys::memory;
use core::ptr::NonNull;
use std::collections::{BTreeMap, BTreeSet};

/// One mapping of `stride × cpus` bytes and its allocation bitmap.
pub(super) struct Range {
    base: NonNull<u8>,
    len: usize,
    /// One bit per item, set while it is allocated (or quarantined).
    bits: Vec<u64>,
    /// The number of set bits.
    live: usize,
    /// The high-water mark: the items below it were handed out at least
    /// once; the others are untouched, zero on every CPU.
    pub(super) touched: usize,
}

// SAFETY: a range owns its mapping; the pool dereferences `base` only under
// its mutex (poisoning, checks) and the holders of items only within their
// items, so moving the owner to another thread is sound.
unsafe impl Send for Range {}

impl Range {
    fn map(config: &Config) -> Result<Range, MemPoolError> {
        let len = config.range_len();
        // A new private anonymous mapping at an address the kernel chooses:
        // it replaces nothing.
        let base = memory::map_anonymous(
            len,
            memory::PROT_READ | memory::PROT_WRITE,
            memory::MAP_PRIVATE | memory::MAP_ANONYMOUS,
        )
        .map_err(|errno| MemPoolError::Map { len, errno })?;
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
    pub(super) fn take_lowest(&mut self, per_range: usize) -> Option<(usize, bool)> {
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

    pub(super) fn is_set(&self, slot: usize) -> bool {
        self.bits
            .get(slot / 64)
            .is_some_and(|w| w & (1 << (slot % 64)) != 0)
    }

    pub(super) fn clear(&mut self, slot: usize) {
        if let Some(w) = self.bits.get_mut(slot / 64) {
            *w &= !(1 << (slot % 64));
            self.live -= 1;
        }
    }

    /// The CPU 0 instance of item `slot`.
    pub(super) fn item(&self, slot: usize, config: &Config) -> NonNull<u8> {
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
        let _ = unsafe { memory::munmap(self.base, self.len) };
    }
}

/// The mutable state of a pool, behind its mutex.
pub(super) struct State {
    pub(super) ranges: Vec<Range>,
    /// Range base address → index in `ranges`, to find the range of a
    /// pointer being freed.
    pub(super) by_base: BTreeMap<usize, usize>,
    /// Items handed out and not freed.
    pub(super) allocated: usize,
    /// Corrupted items taken out of use (their bits stay set).
    pub(super) quarantined: BTreeSet<usize>,
}

impl State {
    /// The range index and slot of the item whose CPU 0 instance is `addr`.
    pub(super) fn locate(&self, addr: usize, config: &Config) -> Option<(usize, usize)> {
        let (&base, &index) = self.by_base.range(..=addr).next_back()?;
        let offset = addr - base;
        if offset >= config.stride || !offset.is_multiple_of(config.item_size) {
            return None;
        }
        let slot = offset / config.item_size;
        (slot < config.items_per_range()).then_some((index, slot))
    }

    pub(super) fn add_range(&mut self, config: &Config) -> Result<usize, MemPoolError> {
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
pub(super) unsafe fn fill(item: NonNull<u8>, config: &Config, word: u64) {
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
pub(super) unsafe fn zero(item: NonNull<u8>, config: &Config) {
    for cpu in 0..config.cpus {
        // SAFETY: as in `fill`: the instance is inside the range and ours.
        unsafe {
            item.as_ptr()
                .add(cpu * config.stride)
                .write_bytes(0, config.item_size)
        };
    }
}

/// Checks that every word of `item`'s instances still holds `poison`; the
/// first one that does not is [`MemPoolError::Corrupted`].
///
/// # Safety
///
/// The contract of [`fill`] (reads only).
pub(super) unsafe fn check_poison(
    item: NonNull<u8>,
    config: &Config,
    poison: u64,
) -> Result<(), MemPoolError> {
    // SAFETY: the caller's contract.
    match unsafe { find_mismatch(item, config, poison) } {
        None => Ok(()),
        Some((cpu, offset, found)) => Err(MemPoolError::Corrupted {
            addr: item.as_ptr().addr(),
            cpu,
            offset,
            found,
            expected: poison,
        }),
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
