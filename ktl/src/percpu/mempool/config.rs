//! The shape of a pool: the default stride and poison, the smallest
//! alignment and size class, the page size, the validated configuration
//! every layer reads, and [`MemPoolBuilder`], which checks each value and
//! builds raw pools, typed pools and pool sets.

use super::{MemPool, MemPoolError, MemPoolSet, RawMemPool};
use crate::rseq::Index;
use core::marker::PhantomData;

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
    crate::sys::memory::page_size()
        .filter(|n| n.is_power_of_two())
        .unwrap_or(4096)
}

/// The validated shape of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Config {
    pub(super) item_size: usize,
    pub(super) stride: usize,
    pub(super) cpus: usize,
    pub(super) robust: bool,
    /// The pattern freed items get, if any (always set for robust pools).
    pub(super) poison: Option<u64>,
    pub(super) max_ranges: Option<usize>,
}

impl Config {
    pub(super) fn items_per_range(&self) -> usize {
        self.stride / self.item_size
    }

    pub(super) fn range_len(&self) -> usize {
        // Checked when the configuration was built.
        self.stride * self.cpus
    }

    /// The alignment every item of the pool has: the largest power of two
    /// dividing the item size, at most the page size (ranges and strides are
    /// page-aligned).
    pub(super) fn item_align(&self) -> usize {
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
    /// destroy (see the [module docs](super#robust-mode)).
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
        let cpus = self
            .cpus
            .unwrap_or_else(|| crate::percpu::slot_count(Index::CpuId));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::percpu::mempool::tests::small;

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
        assert_eq!(p.cpus(), crate::percpu::slot_count(Index::CpuId));
        let t = MemPoolBuilder::new().align(64).build::<u8>().unwrap();
        assert_eq!(t.raw().item_size(), 64);
    }
}
