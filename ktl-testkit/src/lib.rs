//! Test helpers shared by ktl's integration tests, ktl-cli's tests and the
//! kernel prototype's guest program.
//!
//! - [`seccomp`]: filters that make a system call fail, installed for one
//!   thread or the whole process;
//! - [`affinity`]: the CPUs a process may use, and pinning a thread to one;
//! - [`signals`]: signal handlers, and signalling workers until they finish;
//! - [`fork`]: a check run in a `fork` child;
//! - [`child`]: one test, or all of them, run again in a copy of its
//!   binary, with the environment it needs;
//! - [`storm`]: paced signal storms aimed at one thread, and processes that
//!   must finish in time;
//! - [`without_rseq`]: a test binary's tests run again in a copy of it that
//!   a seccomp filter denies rseq;
//! - [`exclusive`]: `rseq::exclusive` against running critical sections.
//!
//! The helpers fail the calling test (they panic) when something they need
//! does not work, unless they say otherwise.

pub mod affinity;
pub mod child;
pub mod exclusive;
pub mod fork;
pub mod seccomp;
pub mod signals;
pub mod storm;
pub mod without_rseq;
