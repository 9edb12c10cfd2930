//! Keeping the object that holds ktl mapped for the life of the process.
//!
//! A critical section of [`crate::rseq`] stores the address of its
//! descriptor (`struct rseq_cs`, in the object that holds the section's
//! code) into the thread's rseq area, and leaves it there: the kernel clears
//! the field only lazily, on the thread's next return to user space after a
//! preemption, a migration or a signal, and it reads the descriptor to
//! decide. If ktl is linked into a shared object (a plugin, a Rust
//! `cdylib`) that the program unloads with `dlclose`, that read faults, and
//! the kernel kills the process with SIGSEGV. With [`Owner::Ktl`], the
//! threads' areas live in that object's thread-local block, too.
//!
//! So the first time ktl decides the owner of the areas, before any of its
//! critical sections can run, it finds the object that holds its own code
//! with `dladdr` and, unless that is the executable, makes it permanent
//! with `dlopen(name, RTLD_NOLOAD | RTLD_NODELETE)`: from then on no
//! `dlclose` unmaps it, and the loader's reference is never given back.
//! Statically linked programs and musl, whose `dlclose` never unloads an
//! object, need nothing. [`pinning`] says which case applies.
//!
//! A limit: the descriptors of ktl's `#[inline]` operations are emitted by
//! the crate that calls them, so they are in the object that holds ktl only
//! when both are linked into the same object (always, except with Rust
//! `dylib` crates).
//!
//! [`Owner::Ktl`]: crate::Owner::Ktl

use core::fmt;
use std::sync::OnceLock;

/// Whether the object that holds ktl stays mapped until the process exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pinning {
    /// ktl is part of the executable, which is never unloaded.
    Executable,
    /// A statically linked program: nothing is ever unloaded.
    StaticallyLinked,
    /// ktl is in a shared object, and the C library never unloads one
    /// (musl's `dlclose` does nothing).
    NeverUnloaded,
    /// ktl is in a shared object, which it made permanent
    /// (`RTLD_NODELETE`): `dlclose` no longer unmaps it.
    Pinned,
    /// Not pinned: `dladdr` found no loaded object that holds ktl's code.
    /// Unloading that code would crash the threads that ran its sections.
    NoObject,
    /// Not pinned: the loader refused `dlopen(name, RTLD_NOLOAD |
    /// RTLD_NODELETE)` for the object that `dladdr` named. Unloading the
    /// object would crash the threads that ran its sections.
    Refused,
}

impl Pinning {
    /// Whether the object that holds ktl stays mapped whatever the program
    /// does: every variant but [`NoObject`](Self::NoObject) and
    /// [`Refused`](Self::Refused).
    pub fn is_permanent(self) -> bool {
        !matches!(self, Pinning::NoObject | Pinning::Refused)
    }
}

impl fmt::Display for Pinning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Pinning::Executable => "in the executable (never unloaded)",
            Pinning::StaticallyLinked => "in a statically linked program (never unloaded)",
            Pinning::NeverUnloaded => "in a shared object, which the C library never unloads",
            Pinning::Pinned => "in a shared object, made permanent (RTLD_NODELETE)",
            Pinning::NoObject => {
                "NOT pinned: dladdr found no object holding ktl; unloading it would crash \
                 the threads that ran its critical sections"
            }
            Pinning::Refused => {
                "NOT pinned: dlopen(RTLD_NOLOAD | RTLD_NODELETE) failed; unloading the \
                 object would crash the threads that ran its critical sections"
            }
        })
    }
}

static PINNING: OnceLock<Pinning> = OnceLock::new();

/// Whether the object that holds ktl stays mapped. The first call (or
/// ktl's owner decision, whichever comes first) pins it; later calls return
/// the cached answer.
pub fn pinning() -> Pinning {
    *PINNING.get_or_init(pin)
}

/// Pins ktl's object, once per process: called by the owner decision.
pub(crate) fn ensure() {
    pinning();
}

#[cfg(target_feature = "crt-static")]
fn pin() -> Pinning {
    Pinning::StaticallyLinked
}

#[cfg(all(not(target_feature = "crt-static"), target_env = "musl"))]
fn pin() -> Pinning {
    Pinning::NeverUnloaded
}

/// The handle of the pinning `dlopen`: never closed.
#[cfg(not(any(target_feature = "crt-static", target_env = "musl")))]
static HANDLE: core::sync::atomic::AtomicPtr<core::ffi::c_void> =
    core::sync::atomic::AtomicPtr::new(core::ptr::null_mut());

#[cfg(not(any(target_feature = "crt-static", target_env = "musl")))]
fn pin() -> Pinning {
    use crate::sys::dl;
    // The object that holds ktl's own code and statics.
    let Some(own) = dl::ktl_object() else {
        return Pinning::NoObject;
    };
    // The executable is the object that holds its program headers.
    if dl::executable_object().is_some_and(|m| m.base() == own.base()) {
        return Pinning::Executable;
    }
    match dl::dlopen_nodelete(&own) {
        Some(handle) => {
            HANDLE.store(handle.as_ptr(), core::sync::atomic::Ordering::Relaxed);
            Pinning::Pinned
        }
        None => Pinning::Refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_binary_holds_ktl_in_its_executable() {
        let expected = if cfg!(target_feature = "crt-static") {
            Pinning::StaticallyLinked
        } else if cfg!(target_env = "musl") {
            Pinning::NeverUnloaded
        } else {
            Pinning::Executable
        };
        assert_eq!(pinning(), expected);
        assert!(pinning().is_permanent());
        crate::layout();
        assert_eq!(pinning(), expected, "decided once");
    }

    #[test]
    fn the_failures_say_so() {
        for p in [Pinning::NoObject, Pinning::Refused] {
            assert!(!p.is_permanent());
            assert!(p.to_string().starts_with("NOT pinned"));
        }
    }
}
