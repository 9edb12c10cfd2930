//! Fences: abort the restartable sequences running on other CPUs.
//!
//! A per-CPU structure sometimes needs to drain or inspect another CPU's
//! slot: read it, or move its contents elsewhere, while the threads running
//! on that CPU may be inside a critical section that writes it. The fence
//! makes that safe: after the caller has published its intent (for example,
//! stored a "draining" flag that the sections check), [`fence_cpu`] makes
//! sure that every critical section that was running on the CPU has either
//! committed already or will abort and start again, seeing the intent.
//!
//! The mechanism is `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, flags,
//! cpu_id)` (Linux 5.10+). It interrupts the target CPUs that run a thread of
//! this process with an inter-processor interrupt that executes a full memory
//! barrier and marks the running thread's restartable sequence as preempted:
//! when the thread returns to user space, a section it was in aborts. The
//! interrupt is synchronous, so when the call returns no section that was
//! running on a target CPU when the fence began can still commit, and the
//! caller's earlier stores are visible to the threads on those CPUs.
//! Threads that were not running cannot be inside a section at all: being
//! scheduled out aborts a section too.
//!
//! The process must register its intent once before it issues a fence (the
//! kernel answers `EPERM` otherwise). [`kind`] queries the kernel and
//! registers, once per process and thread-safely; [`fence_cpu`] and
//! [`fence_all`] call it first, so no fence is ever issued unregistered. The
//! registration belongs to the address space: `fork` children inherit it,
//! `execve` drops it (along with everything else ktl decided).
//!
//! ## Without the rseq command
//!
//! If the kernel lacks the rseq command but has
//! `MEMBARRIER_CMD_PRIVATE_EXPEDITED` (Linux 4.14+), [`kind`] is
//! [`FenceKind::Expedited`] and both fences issue that command instead. It
//! is a full memory barrier on every CPU running a thread of this process,
//! and nothing more: it does **not** abort critical sections, so a thread
//! may be between a section's load and its commit when the fence returns,
//! and commit afterwards. Callers that need abort semantics must check
//! [`kind`] and use their own fallback in that case (the per-CPU structures
//! of [`crate::rseq`] run a locked fallback). With neither command,
//! [`kind`] is [`FenceKind::Unavailable`] and the fences return
//! [`FenceError::Unsupported`].
//!
//! ```
//! use ktl::rseq::fence::{self, FenceKind};
//! match fence::kind() {
//!     FenceKind::Rseq => fence::fence_all().unwrap(),
//!     FenceKind::Expedited | FenceKind::Unavailable => {
//!         // No abort semantics: use a fallback instead.
//!     }
//! }
//! ```

#![forbid(unsafe_code)]

use crate::sys::{self, Errno};
use core::ffi::{c_int, c_uint};
use core::fmt;
use std::sync::OnceLock;

/// `MEMBARRIER_CMD_QUERY`: the bitmask of supported commands.
const CMD_QUERY: c_int = 0;
/// `MEMBARRIER_CMD_PRIVATE_EXPEDITED`.
const CMD_PRIVATE_EXPEDITED: c_int = 1 << 3;
/// `MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED`.
const CMD_REGISTER_PRIVATE_EXPEDITED: c_int = 1 << 4;
/// `MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ` (Linux 5.10+).
const CMD_PRIVATE_EXPEDITED_RSEQ: c_int = 1 << 7;
/// `MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ` (Linux 5.10+).
const CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ: c_int = 1 << 8;
/// `MEMBARRIER_CMD_FLAG_CPU`: target only the CPU in the third argument.
const FLAG_CPU: c_uint = 1;

/// The fence mechanism that is live in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FenceKind {
    /// `MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ`: the fences abort the
    /// critical sections running on the target CPUs, and are full memory
    /// barriers there.
    Rseq,
    /// `MEMBARRIER_CMD_PRIVATE_EXPEDITED` only: both fences are a full
    /// memory barrier on every CPU that runs a thread of this process. They
    /// do **not** abort critical sections; callers that need that must use
    /// their own fallback.
    Expedited,
    /// No fence: the kernel has neither command, `membarrier` is blocked,
    /// or registration failed. The fences return
    /// [`FenceError::Unsupported`].
    Unavailable,
}

impl fmt::Display for FenceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FenceKind::Rseq => "membarrier private expedited rseq",
            FenceKind::Expedited => "membarrier private expedited (no aborts)",
            FenceKind::Unavailable => "unavailable",
        })
    }
}

/// Why a fence was not issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FenceError {
    /// [`kind`] is [`FenceKind::Unavailable`]: there is no fence.
    Unsupported,
    /// The `membarrier` call failed with this errno. [`fence_cpu`] also
    /// reports `EINVAL` itself for a CPU number that is not a possible CPU,
    /// which the kernel would silently accept and ignore.
    Failed(i32),
}

impl fmt::Display for FenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FenceError::Unsupported => {
                f.write_str("no membarrier fence is available in this process")
            }
            FenceError::Failed(errno) => write!(f, "membarrier failed: {}", Errno(*errno)),
        }
    }
}

impl std::error::Error for FenceError {}

/// `membarrier(2)`: the call's non-negative result, or `Err(errno)`.
#[inline]
fn membarrier(cmd: c_int, flags: c_uint, cpu_id: c_int) -> Result<c_int, i32> {
    sys::membarrier::membarrier(cmd, flags, cpu_id).map_err(|e| e.0)
}

/// Queries the kernel and registers the best mechanism.
fn decide() -> FenceKind {
    let Ok(supported) = membarrier(CMD_QUERY, 0, 0) else {
        return FenceKind::Unavailable;
    };
    let has = |cmds: c_int| supported & cmds == cmds;
    if has(CMD_PRIVATE_EXPEDITED_RSEQ | CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ)
        && membarrier(CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ, 0, 0).is_ok()
    {
        return FenceKind::Rseq;
    }
    if has(CMD_PRIVATE_EXPEDITED | CMD_REGISTER_PRIVATE_EXPEDITED)
        && membarrier(CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0).is_ok()
    {
        return FenceKind::Expedited;
    }
    FenceKind::Unavailable
}

/// The live fence mechanism.
///
/// The first call in the process queries the kernel and registers the
/// process for the best command; the answer is cached (in a [`OnceLock`]),
/// so registration happens at most once, and concurrent first calls wait
/// for it. That first call is one of ktl's first calls (see
/// [`crate::area`]): a signal handler that interrupts it, or another first
/// call, on its own thread gets [`FenceKind::Unavailable`] until the answer
/// is known, without waiting and without caching that.
pub fn kind() -> FenceKind {
    match KIND.get() {
        Some(&kind) => kind,
        None => kind_first(),
    }
}

/// The fence mechanism, once decided.
static KIND: OnceLock<FenceKind> = OnceLock::new();

/// [`kind`] before the decision: makes it, marked as a first call.
#[cold]
#[inline(never)]
fn kind_first() -> FenceKind {
    match crate::first_call::FirstCall::begin() {
        Some(_first) => *KIND.get_or_init(decide),
        // A signal handler inside a first call of this thread, which may be
        // this very decision: waiting for it would never end.
        None => KIND.get().copied().unwrap_or(FenceKind::Unavailable),
    }
}

/// Aborts the critical sections running on CPU `cpu`.
///
/// With [`FenceKind::Rseq`], when this returns, every restartable sequence
/// of this process that was running on `cpu` has committed or will abort
/// before it can commit, and the caller's earlier stores are visible to the
/// thread running there. With [`FenceKind::Expedited`] this is
/// [`fence_all`]'s memory barrier on every CPU, which aborts nothing (see
/// the [module documentation](self)).
///
/// # Errors
///
/// - [`FenceError::Unsupported`] when [`kind`] is
///   [`FenceKind::Unavailable`];
/// - [`FenceError::Failed`]`(EINVAL)` when `cpu` is not a possible CPU
///   (checked against `/sys/devices/system/cpu/possible` when it is
///   readable, since the kernel accepts and ignores such numbers);
/// - [`FenceError::Failed`] with the kernel's errno when the call fails.
pub fn fence_cpu(cpu: u32) -> Result<(), FenceError> {
    let kind = kind();
    if kind == FenceKind::Unavailable {
        return Err(FenceError::Unsupported);
    }
    // Above i32::MAX the kernel would read a negative CPU: all CPUs.
    let Ok(cpu_id) = c_int::try_from(cpu) else {
        return Err(FenceError::Failed(sys::EINVAL));
    };
    if crate::cpu::possible_cpus().is_some_and(|n| cpu >= n) {
        return Err(FenceError::Failed(sys::EINVAL));
    }
    let result = match kind {
        FenceKind::Rseq => membarrier(CMD_PRIVATE_EXPEDITED_RSEQ, FLAG_CPU, cpu_id),
        _ => membarrier(CMD_PRIVATE_EXPEDITED, 0, 0),
    };
    result.map(drop).map_err(FenceError::Failed)
}

/// Aborts the critical sections running on every CPU that runs a thread of
/// this process.
///
/// With [`FenceKind::Rseq`], when this returns, every restartable sequence
/// of this process that was running anywhere has committed or will abort
/// before it can commit, and the caller's earlier stores are visible to all
/// threads of the process. With [`FenceKind::Expedited`] it is only the
/// memory barrier, which aborts nothing (see the
/// [module documentation](self)).
///
/// This is the fence for data indexed by [`Index::MmCid`](super::Index),
/// whose values are not tied to a CPU.
///
/// # Errors
///
/// [`FenceError::Unsupported`] when [`kind`] is [`FenceKind::Unavailable`];
/// [`FenceError::Failed`] with the kernel's errno when the call fails (for
/// example `ENOMEM`).
pub fn fence_all() -> Result<(), FenceError> {
    let result = match kind() {
        FenceKind::Rseq => membarrier(CMD_PRIVATE_EXPEDITED_RSEQ, 0, 0),
        FenceKind::Expedited => membarrier(CMD_PRIVATE_EXPEDITED, 0, 0),
        FenceKind::Unavailable => return Err(FenceError::Unsupported),
    };
    result.map(drop).map_err(FenceError::Failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_errno() {
        let text = FenceError::Failed(sys::EPERM).to_string();
        assert!(text.contains("EPERM"), "{text}");
    }
}
