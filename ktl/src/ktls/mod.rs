//! The KTLS kernel prototype: the thread group's layout and
//! `clone3(CLONE_RSEQ_KTLS)`.
//!
//! Upstream Linux registers each thread's rseq area only when the thread
//! asks, with one `rseq()` system call per thread. The prototype in this
//! repository's `kernel/` directory (a patch series on Linux 6.12) adds the
//! kernel half of the KTLS design:
//!
//! - `rseq(area, len, RSEQ_FLAG_KTLS_LAYOUT, sig)` registers the calling
//!   thread's area, or adopts its identical registration, and records the
//!   thread group's layout: the area's offset from the thread pointer, its
//!   length and its signature ([`set_group_layout`]);
//! - `clone3()` with `CLONE_RSEQ_KTLS` then registers a new thread's area at
//!   its `tls` plus that offset before the thread runs, so it needs no
//!   system call of its own ([`spawn_raw`]);
//! - the kernel writes the thread's ids into areas long enough to hold
//!   them, and the vDSO reads them ([`crate::facts`]);
//! - the auxiliary vector's `AT_KTLS_FEATURES` (`0x4b54`) says which of
//!   these the kernel has ([`features`]).
//!
//! On other kernels [`features`] is empty and the rest returns
//! [`KtlsError::NotSupported`]. When ktl owns the areas on the prototype,
//! it registers each thread with the layout flag, so the layout is set
//! without any call here. `ktl info` reports the features.
//!
//! This module is built on the core of ktl (the areas, the ABI, the
//! accessors) and nothing in the core uses it: the features are kernel
//! facts that the core reads itself ([`crate::abi::ktls_features`]), and
//! are re-exported here.

mod layout;
mod raw;
mod spawn;

pub use crate::abi::KtlsFeatures;
pub use layout::{GroupLayout, layout_set, rseq_ktls_layout, set_group_layout};
pub use raw::{raw_rseq, register_raw_thread, thread_pointer};
pub use spawn::{RawThread, Registration, spawn_raw};

use crate::Errno;
use core::fmt;

/// The running kernel's KTLS prototype features ([`crate::abi::ktls_features`]).
#[inline]
pub fn features() -> KtlsFeatures {
    crate::abi::ktls_features()
}

/// Errors of the prototype's calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KtlsError {
    /// The kernel lacks the feature (an upstream kernel).
    NotSupported,
    /// The process has no rseq areas (their owner is `Unavailable`).
    NoArea,
    /// The kernel refused: `EBUSY` for a different layout already set,
    /// `EINVAL` for a bad area or flags, `EFAULT` for an unmapped one.
    Kernel(Errno),
    /// The group's area does not fit in the raw thread's TLS block.
    LayoutTooFar(isize),
    /// Mapping the raw thread's stack and TLS block failed.
    Alloc(Errno),
}

impl fmt::Display for KtlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KtlsError::NotSupported => {
                f.write_str("the kernel has no KTLS prototype feature for this")
            }
            KtlsError::NoArea => f.write_str("the process has no rseq areas"),
            KtlsError::Kernel(e) => write!(f, "the kernel refused: {e}"),
            KtlsError::LayoutTooFar(off) => write!(
                f,
                "the area's offset from the thread pointer ({off}) is outside a raw thread's TLS block"
            ),
            KtlsError::Alloc(e) => write!(f, "mapping the thread's stack failed: {e}"),
        }
    }
}

impl std::error::Error for KtlsError {}
