//! Kernel thread-local storage (KTLS) for Rust.
//!
//! Linux shares a small per-thread memory area with user space: the rseq area.
//! The kernel keeps facts about the thread in it (the current CPU, the NUMA
//! node, a compact concurrency id), and uses it to run restartable sequences.
//! ktl is the runtime half of the KTLS design: it finds out who owns the area
//! in this process, registers one where nobody did, and gives fast, safe
//! accessors that work on every kernel from 4.18 on, in every C library
//! configuration and sandbox, with observable fallbacks.
//!
//! ```
//! let layout = ktl::layout();
//! println!("owner: {}, offset: {:?}", layout.owner, layout.offset);
//! let cpu = ktl::cpu_id();      // one thread-pointer-relative load
//! let node = ktl::node_id();
//! let cid = ktl::mm_cid();
//! # let _ = (cpu, node, cid);
//! ```
//!
//! The modules:
//! - [`abi`]: the kernel ABI (`struct rseq`, `struct rseq_cs`, constants) and
//!   what the running kernel supports;
//! - [`area`]: the owner of the areas and the per-thread registration;
//! - [`cpu`]: the accessors and their fallbacks;
//! - [`facts`]: the thread's ids (tid, pid, uid, gid, euid, egid), from the
//!   KTLS prototype's vDSO functions or area where the kernel has them;
//! - [`rseq`]: restartable sequences (per-CPU operations), their fallbacks
//!   and fences;
//! - [`percpu`]: per-CPU data structures built on them;
//! - [`pin`]: the object that holds ktl, made permanent when ktl first runs,
//!   so that `dlclose` never unmaps the descriptors its critical sections left;
//! - [`ktls`]: the KTLS kernel prototype (`kernel/`): the thread group's
//!   layout and `clone3(CLONE_RSEQ_KTLS)`;
//! - [`random`]: cryptographically secure random bytes through vDSO
//!   `getrandom` with per-thread state;
//! - [`vdso`]: the vDSO parser, vDSO `getcpu` and `getrandom`, and the KTLS
//!   prototype's functions.
//!
//! ## Where ktl must not be called
//!
//! - **In a `vfork` child**, or any child that shares its parent's memory
//!   and thread pointer until it calls `execve`. The kernel does not
//!   register an area for such a child, but the child reads its parent's
//!   area through the parent's thread pointer, and finds a live `cpu_id`
//!   there: a critical section would look protected and not be, and a
//!   first call would change the parent's state. Call only `execve` or
//!   `_exit` there, as POSIX requires of a `vfork` child.
//! - **In a raw thread** ([`ktls::spawn_raw`]), anything but the short list
//!   in that function's contract: such a thread has no thread-local storage
//!   and no `errno`.
//!
//! ## Where the `unsafe` code is
//!
//! The crate denies `unsafe_code`; the modules that need it opt in, each
//! for a stated reason. At the bottom, `sys` holds every call into the C
//! library (each system call behind a typed wrapper) and `arch` the
//! assembly (thread-pointer loads, the critical sections, raw system
//! calls); above them, unsafe code remains only where it is the point:
//! the kernel-shared area, the per-CPU structures' raw memory, the vDSO's
//! functions and the raw threads.
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
// docs.rs (nightly, `--cfg docsrs`) labels the items of optional features.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

#[cfg(not(target_os = "linux"))]
compile_error!("ktl is Linux-only: the rseq area is a Linux kernel ABI");

pub mod abi;
// Assembly: thread-pointer loads, the thread-local block, critical sections, raw syscalls.
#[allow(unsafe_code)]
mod arch;
// Registers and reads the kernel-shared area; reads the C library's `__rseq_*` symbols.
#[allow(unsafe_code)]
pub mod area;
// The accessors' loads from the kernel-shared area, and the unsafe `_at` accessors.
#[allow(unsafe_code)]
pub mod cpu;
// Reads the thread facts in the kernel-shared area; calls the prototype's vDSO functions.
#[allow(unsafe_code)]
pub mod facts;
mod first_call;
// Raw threads: their own stack and TLS block, clone3 and raw rseq calls, unsafe by contract.
#[allow(unsafe_code)]
pub mod ktls;
// The metrics facade's traits and a Recorder, on the per-CPU counter and histogram.
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
// The per-CPU structures' raw memory, written by restartable sequences.
#[allow(unsafe_code)]
pub mod percpu;
pub mod pin;
// prometheus-client's encoding traits on the per-CPU counter and histogram.
#[cfg(feature = "prometheus-client")]
#[cfg_attr(docsrs, doc(cfg(feature = "prometheus-client")))]
pub mod prometheus;
// Calls vDSO getrandom on per-thread states in its own mappings; registers fork handlers.
#[allow(unsafe_code)]
pub mod random;
// Restartable sequences: unsafe operations on the caller's memory, and their fallbacks'.
#[allow(unsafe_code)]
pub mod rseq;
// System calls: every call into the C library, behind typed wrappers.
#[allow(unsafe_code)]
mod sys;
// Reads the vDSO image in memory and calls its functions through pointers looked up in it.
#[allow(unsafe_code)]
pub mod vdso;

// The README's Rust examples run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

// The same for the crate's own README and the pages of the guide.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct CrateReadmeDoctests;

#[cfg(doctest)]
#[doc = include_str!("../../docs/guide/accessors.md")]
struct GuideAccessorsDoctests;

#[cfg(doctest)]
#[doc = include_str!("../../docs/guide/rseq.md")]
struct GuideRseqDoctests;

#[cfg(doctest)]
#[doc = include_str!("../../docs/guide/percpu.md")]
struct GuidePercpuDoctests;

#[cfg(doctest)]
#[doc = include_str!("../../docs/guide/random.md")]
struct GuideRandomDoctests;

#[cfg(doctest)]
#[doc = include_str!("../../docs/guide/prototype.md")]
struct GuidePrototypeDoctests;

pub use abi::Features;
pub use area::{Layout, Owner, layout};
pub use cpu::{cpu_id, mm_cid, node_id};
pub use facts::{ThreadFacts, thread_facts};
pub use sys::Errno;

/// The `getrandom` crate, for [`getrandom_backend!`]'s expansion.
#[cfg(feature = "getrandom")]
#[doc(hidden)]
pub use getrandom as __getrandom;
