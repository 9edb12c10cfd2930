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
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(not(target_os = "linux"))]
compile_error!("ktl is Linux-only: the rseq area is a Linux kernel ABI");

pub mod abi;
mod arch;
pub mod area;
pub mod cpu;
pub mod facts;
pub mod ktls;
pub mod percpu;
pub mod pin;
pub mod random;
pub mod rseq;
mod sys;
pub mod vdso;

// The README's Rust examples run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

pub use abi::Features;
pub use area::{Layout, Owner, layout};
pub use cpu::{cpu_id, mm_cid, node_id};
pub use facts::{ThreadFacts, thread_facts};
pub use sys::Errno;

/// The `getrandom` crate, for [`getrandom_backend!`]'s expansion.
#[cfg(feature = "getrandom")]
#[doc(hidden)]
pub use getrandom as __getrandom;
