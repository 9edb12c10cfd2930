//! [`MemPoolError`]: why a pool could not be built, could not allocate or
//! free, or what its checks found (a double free, a write to a freed item, a
//! leak).

use crate::Errno;
use core::fmt;

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
    /// ranges ([`MemPoolBuilder::max_ranges`](super::MemPoolBuilder::max_ranges)).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_what_went_wrong() {
        let cases = [
            (MemPoolError::ZeroItemSize, "item size is 0"),
            (MemPoolError::BadAlignment { align: 24 }, "24"),
            (
                MemPoolError::Map {
                    len: 4096,
                    errno: Errno(crate::sys::ENOMEM),
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
