//! A per-CPU global allocator for Rust, on restartable sequences.
//!
//! ```
//! #[global_allocator]
//! static GLOBAL: ktl_alloc::PerCpuAlloc = ktl_alloc::PerCpuAlloc::new();
//!
//! let v: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
//! assert_eq!(v[999], "999");
//! println!("{}", ktl_alloc::front_end());
//! ```
//!
//! Objects up to 1 MiB are rounded up to one of 61 size classes. Those up
//! to 32 KiB (41 classes) are served by three tiers, TCMalloc's design:
//!
//! - **per-CPU caches**: for each CPU (each concurrency id, where the
//!   kernel has `mm_cid`) and class, a stack of free objects that one
//!   restartable sequence pops and one pushes: no lock, no atomic
//!   read-modify-write, no shared cache line on the fast path.
//!   [`GlobalAlloc::dealloc`](core::alloc::GlobalAlloc::dealloc) receives
//!   the [`Layout`](core::alloc::Layout), so a free knows its class without
//!   looking the address up.
//! - **a central cache per class**, behind a lock, that the per-CPU caches
//!   refill from and overflow to in batches of tens of objects;
//! - **spans** of 256 KiB cut from 64 MiB arenas mapped from the OS, and
//!   given back to it (`madvise(MADV_DONTNEED)`) when they stay free.
//!
//! The 20 medium classes (above 32 KiB, to 1 MiB) skip the per-CPU tier:
//! they come from the central cache one object at a time, out of runs of
//! 1 to 16 spans that hold at least four objects each, so a freed one
//! comes back with its pages resident. Larger objects, and objects aligned
//! to more than a page, get a mapping of their own; `realloc` of one moves
//! its pages with `mremap(2)`.
//!
//! ```text
//!   alloc/dealloc ──► per-CPU cache (rseq pop/push)   CPU 0 │ CPU 1 │ ...
//!                         │ batch refill / overflow
//!                         ▼
//!                     central cache per class (lock): transfer array, spans
//!                         │ span, or a run of spans (medium classes)
//!                         ▼
//!                     page heap: arenas (mmap), free spans, madvise back
//! ```
//!
//! ## Every environment
//!
//! The first allocation decides the front end, through [`ktl::layout`]:
//! the per-CPU caches where threads run restartable sequences (the C
//! library's areas, or ktl's own), and otherwise (no rseq system call, a
//! seccomp filter, valgrind, qemu-user) a per-thread cache of the same
//! shape, which [`front_end`] reports with the reason. A single thread that
//! cannot run restartable sequences (its registration failed) uses a
//! per-thread cache while the others stay per-CPU. The allocations ktl
//! makes while it decides or registers a thread go to the central cache,
//! so the allocator never recurses into itself; the fork handlers leave a
//! child that can allocate; allocation failure returns null.
//!
//! ## Statistics
//!
//! [`stats`] reads every tier's counts: bytes in use, cached per CPU,
//! in the central caches, free in spans, and given back to the OS. They are
//! exact once the threads that allocate are quiescent.
//! [`release_free_memory`] empties every cache and gives every free page
//! back.
//!
//! ## The tiers
//!
//! The module docs of each tier are in the source; `docs/guide/alloc.md`
//! in the repository has the picture, the bounds, when to pick this
//! allocator and when not, and the numbers.
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(not(target_os = "linux"))]
compile_error!("ktl-alloc is Linux-only: it is built on the rseq area");

// The middle tier's classes, behind their locks: raw objects and span metadata.
#[allow(unsafe_code)]
mod central;
mod class;
// The per-CPU slabs: restartable sequences on the regions' raw memory.
#[allow(unsafe_code)]
mod cpu;
// The fork handlers: `extern "C"` functions for `pthread_atfork`.
#[allow(unsafe_code)]
mod fork;
// The front-end decision and dispatch: forwards the callers' contracts.
#[allow(unsafe_code)]
mod front;
// Large objects: mappings of their own.
#[allow(unsafe_code)]
mod large;
mod lock;
mod maint;
// The one home of the system calls.
#[allow(unsafe_code)]
mod os;
// The page heap: arenas, span metadata.
#[allow(unsafe_code)]
mod pages;
mod stats;
// `GlobalAlloc`: the callers' contracts, forwarded to the tiers.
#[allow(unsafe_code)]
mod global;
// The per-thread fallback caches: raw blocks.
#[allow(unsafe_code)]
mod thread;

// The crate's README and its guide page run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(doctest)]
#[doc = include_str!("../../docs/guide/alloc.md")]
struct GuideDoctests;

pub use front::{FrontEnd, Why};
pub use global::PerCpuAlloc;
pub use stats::{CpuCache, CpuCaches, Stats, per_cpu_caches, stats};

/// The front end live in this process (see [`FrontEnd`]).
pub fn front_end() -> FrontEnd {
    front::front_end()
}

/// Empties every per-CPU and central cache and gives the pages of every
/// free span and cached large mapping back to the OS.
///
/// The allocator does this on its own, a cache at a time, for caches that
/// sit idle for about a second while the program allocates; call this after
/// a phase that freed much memory, before one that will not allocate for
/// long. A per-CPU cache whose exclusive access the kernel cannot give
/// (before Linux 5.10, no rseq fence) is left as it is.
pub fn release_free_memory() {
    maint::release();
}
