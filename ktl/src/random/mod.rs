//! Cryptographically secure random bytes through the vDSO, with explicit
//! per-thread state.
//!
//! Linux 6.11 added `getrandom` to the vDSO in the shape the KTLS design
//! asks for: the caller hands the function its per-thread state,
//! `getrandom(buf, len, flags, opaque_state, opaque_len)`, and the function
//! neither reads the thread pointer nor touches `errno`. The kernel keeps the
//! generator in that state fast (a ChaCha20 key and a batch of output, with
//! no system call) and safe (the key is erased as it is used, reseeded when
//! the kernel's generator moves on, and wiped in a `fork` child). The C
//! library is meant to allocate the states; glibc does so only from 2.41 on,
//! and Rust's `getrandom` crate not at all, so most Rust programs pay a
//! system call for every random number. This module does the C library's
//! part:
//!
//! - it asks the vDSO for the size of a state and how to map it, and maps
//!   states in whole pages so that none straddles a page;
//! - each thread takes a state at its first call and returns it to a free
//!   list when it exits (from its thread-local destructors, like ktl's own
//!   rseq registration);
//! - a call that interrupts another one on the same thread (from a signal
//!   handler) uses the `getrandom(2)` system call, so a state is never used
//!   by two calls at once;
//! - a `fork` child gets wiped states from the kernel, so it never repeats
//!   its parent's output, and the states of threads that do not exist in the
//!   child go back to its free list.
//!
//! Without the vDSO function (kernels before 6.11 on x86_64 and 6.14 on
//! aarch64, no vDSO, `KTL_VDSO=off`) or without memory for a state (a
//! sandbox that refuses the mapping), every call uses the `getrandom(2)`
//! system call. [`path`] says which path is live, and `ktl info` shows it.
//!
//! ```
//! let mut key = [0u8; 32];
//! ktl::random::fill(&mut key)?;
//! let nonce = ktl::random::u64()?;
//! println!("path: {}", ktl::random::path());
//! # let _ = nonce;
//! # Ok::<(), ktl::random::RandomError>(())
//! ```
//!
//! With the cargo feature `rand_core`, `KtlRng` is an RNG for the `rand`
//! ecosystem; with the feature `getrandom`, the macro
//! `ktl::getrandom_backend!()` makes the `getrandom` crate (and so `rand`,
//! `uuid` and the rest) use this module.

mod ecosystem;
mod state;

#[cfg(feature = "rand_core")]
pub use ecosystem::KtlRng;
#[cfg(feature = "getrandom")]
pub use ecosystem::getrandom_custom;

use core::cell::Cell;
use core::ffi::c_void;
use core::fmt;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicU64, Ordering, compiler_fence};
use std::sync::OnceLock;

use crate::Errno;
use crate::vdso::{self, GetrandomFn, VdsoError};
use state::Geometry;

/// Why random bytes come from the `getrandom(2)` system call instead of the
/// vDSO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fallback {
    /// The process's vDSO is missing, malformed or turned off.
    NoVdso(VdsoError),
    /// The vDSO has no `getrandom` (Linux before 6.11 on x86_64, 6.14 on
    /// aarch64).
    NoSymbol,
    /// The vDSO refused the query of its state parameters.
    Params(Errno),
    /// The vDSO's state does not fit in a page (never seen on Linux).
    StateTooLarge(usize),
    /// The states could not be mapped (for example, a seccomp filter refuses
    /// `mmap` with `MAP_DROPPABLE`).
    StateAlloc(Errno),
}

impl fmt::Display for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fallback::NoVdso(e) => write!(f, "no usable vDSO: {e}"),
            Fallback::NoSymbol => {
                write!(f, "the vDSO has no {} (Linux before 6.11)", vdso::GETRANDOM)
            }
            Fallback::Params(e) => write!(f, "the vDSO refused the state query: {e}"),
            Fallback::StateTooLarge(size) => {
                write!(f, "the vDSO's state ({size} bytes) does not fit in a page")
            }
            Fallback::StateAlloc(e) => write!(f, "mapping the per-thread states failed: {e}"),
        }
    }
}

/// Which path [`fill`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Path {
    /// vDSO getrandom with a per-thread state.
    Vdso,
    /// The `getrandom(2)` system call, and why.
    Syscall(Fallback),
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Vdso => write!(f, "vDSO {} with per-thread state", vdso::GETRANDOM),
            Path::Syscall(why) => write!(f, "getrandom(2) system call ({why})"),
        }
    }
}

/// The error of a random fill: even the `getrandom(2)` system call failed
/// (it does not exist before Linux 3.17, or a sandbox refuses it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RandomError {
    /// The `getrandom(2)` system call failed with this error.
    Syscall(Errno),
}

impl fmt::Display for RandomError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RandomError::Syscall(e) => write!(f, "the getrandom system call failed: {e}"),
        }
    }
}

impl std::error::Error for RandomError {}

/// The vDSO function and the geometry of its states, once found.
#[derive(Clone, Copy)]
struct Vgetrandom {
    getrandom: GetrandomFn,
    geometry: Geometry,
}

/// The vDSO path, looked up once: the function and its state geometry, or
/// why there is none.
fn vgetrandom() -> Result<&'static Vgetrandom, Fallback> {
    static VGETRANDOM: OnceLock<Result<Vgetrandom, Fallback>> = OnceLock::new();
    VGETRANDOM
        .get_or_init(find)
        .as_ref()
        .map_err(|&fallback| fallback)
}

/// Finds vDSO getrandom and the geometry of its states.
#[cold]
fn find() -> Result<Vgetrandom, Fallback> {
    vdso::Vdso::get().map_err(Fallback::NoVdso)?;
    let getrandom = vdso::getrandom_fn().ok_or(Fallback::NoSymbol)?;
    let params = vdso::getrandom_params(getrandom).map_err(Fallback::Params)?;
    let size = params.size_of_opaque_state as usize;
    // SAFETY: sysconf only reads a configuration value.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page = usize::try_from(page).unwrap_or(4096);
    let geometry = Geometry::new(
        size,
        page,
        params.mmap_prot as i32,
        params.mmap_flags as i32,
    )
    .ok_or(Fallback::StateTooLarge(size))?;
    Ok(Vgetrandom {
        getrandom,
        geometry,
    })
}

/// The state geometry, if the vDSO path was found.
fn geometry() -> Option<Geometry> {
    vgetrandom().ok().map(|v| v.geometry)
}

/// The errno of the last failed state mapping, or 0.
static ALLOC_ERRNO: core::sync::atomic::AtomicI32 = core::sync::atomic::AtomicI32::new(0);
/// Fills that used the system call, in all threads.
static SYSCALL_FILLS: AtomicU64 = AtomicU64::new(0);
/// Fills that interrupted a fill on the same thread (signal handlers).
static REENTRANT_FILLS: AtomicU64 = AtomicU64::new(0);

/// The path [`fill`] takes in this process.
///
/// [`Path::Vdso`] unless the vDSO function is missing, or the last attempt to
/// map states failed (then threads that already hold a state still use the
/// vDSO, and new ones use the system call).
pub fn path() -> Path {
    match vgetrandom() {
        Err(why) => Path::Syscall(why),
        Ok(_) => match ALLOC_ERRNO.load(Ordering::Relaxed) {
            0 => Path::Vdso,
            e => Path::Syscall(Fallback::StateAlloc(Errno(e))),
        },
    }
}

/// The calling thread's vDSO state and the flags that guard it.
struct Slot {
    /// The thread's state, or null before its first vDSO fill.
    state: Cell<*mut u8>,
    /// A fill is running on this thread (a signal handler that calls
    /// [`fill`] then sees it set).
    busy: Cell<bool>,
    /// Mapping a state failed for this thread: it uses the system call.
    no_state: Cell<bool>,
    /// Fills of this thread through the vDSO.
    vdso_fills: Cell<u64>,
    /// Fills of this thread through the system call.
    syscall_fills: Cell<u64>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Runs from the thread's TLS destructors. Later calls on this thread
        // find the slot gone and use the system call, so the state is free.
        let state = self.state.replace(core::ptr::null_mut());
        if !state.is_null() {
            state::release(state);
        }
    }
}

thread_local! {
    static SLOT: Slot = const {
        Slot {
            state: Cell::new(core::ptr::null_mut()),
            busy: Cell::new(false),
            no_state: Cell::new(false),
            vdso_fills: Cell::new(0),
            syscall_fills: Cell::new(0),
        }
    };
}

/// The calling thread's state, if it has one (for the `fork` child handler).
fn current_state() -> Option<*mut u8> {
    SLOT.try_with(|s| s.state.get())
        .ok()
        .filter(|s| !s.is_null())
}

/// Fills `dest` with cryptographically secure random bytes.
///
/// Uses vDSO getrandom with the calling thread's state when the kernel has
/// it, and the `getrandom(2)` system call otherwise (see [`path`]). The
/// bytes are those of the kernel's generator (`/dev/urandom` quality): the
/// call blocks only until that generator is first seeded, early in boot.
///
/// # Errors
///
/// Only when the system call is needed and fails: [`RandomError::Syscall`].
#[inline]
pub fn fill(dest: &mut [u8]) -> Result<(), RandomError> {
    // SAFETY: an initialised `[u8]` is a valid `[MaybeUninit<u8>]`, and
    // `fill_uninit` only writes initialised bytes to it.
    let dest = unsafe { &mut *(core::ptr::from_mut(dest) as *mut [MaybeUninit<u8>]) };
    fill_uninit(dest).map(|_| ())
}

/// Fills a possibly uninitialised buffer with random bytes and returns it
/// initialised; as [`fill`] otherwise.
///
/// # Errors
///
/// As for [`fill`]. On an error the buffer may be partly written.
#[inline]
pub fn fill_uninit(dest: &mut [MaybeUninit<u8>]) -> Result<&mut [u8], RandomError> {
    if !dest.is_empty() {
        let on_slot = SLOT.try_with(|slot| match vgetrandom() {
            Ok(v) => fill_on_slot(slot, v, dest),
            Err(_) => syscall_on_slot(slot, dest),
        });
        match on_slot {
            Ok(r) => r?,
            // The thread's TLS is being torn down.
            Err(_) => syscall_uninit(dest)?,
        }
    }
    // SAFETY: every byte of `dest` was written.
    Ok(unsafe { &mut *(core::ptr::from_mut(dest) as *mut [u8]) })
}

/// A random `u64`, from [`fill`].
///
/// # Errors
///
/// As for [`fill`].
#[inline]
pub fn u64() -> Result<u64, RandomError> {
    let mut b = [0u8; 8];
    fill(&mut b)?;
    Ok(u64::from_ne_bytes(b))
}

/// A random `u32`, from [`fill`].
///
/// # Errors
///
/// As for [`fill`].
#[inline]
pub fn u32() -> Result<u32, RandomError> {
    let mut b = [0u8; 4];
    fill(&mut b)?;
    Ok(u32::from_ne_bytes(b))
}

/// One fill on the calling thread's slot: through the vDSO with its state,
/// or through the system call if a fill is already running on this thread
/// or the thread has no state.
#[inline]
fn fill_on_slot(
    slot: &Slot,
    v: &Vgetrandom,
    dest: &mut [MaybeUninit<u8>],
) -> Result<(), RandomError> {
    if slot.busy.get() {
        REENTRANT_FILLS.fetch_add(1, Ordering::Relaxed);
        return syscall_on_slot(slot, dest);
    }
    slot.busy.set(true);
    // A signal handler runs on this thread between any two instructions: the
    // flag must be set before the state is used, and cleared after.
    compiler_fence(Ordering::SeqCst);
    let mut state = slot.state.get();
    if state.is_null() {
        state = take_state(slot, v);
    }
    let r = if state.is_null() {
        Err(())
    } else {
        vdso_fill(v, state, dest)
    };
    compiler_fence(Ordering::SeqCst);
    slot.busy.set(false);
    match r {
        Ok(()) => {
            slot.vdso_fills.set(slot.vdso_fills.get().wrapping_add(1));
            Ok(())
        }
        Err(()) => syscall_on_slot(slot, dest),
    }
}

/// Gives the thread a state, or records that it has none; null if none.
#[cold]
#[inline(never)]
fn take_state(slot: &Slot, v: &Vgetrandom) -> *mut u8 {
    if slot.no_state.get() {
        return core::ptr::null_mut();
    }
    match state::acquire(&v.geometry) {
        Ok(state) => {
            slot.state.set(state);
            state
        }
        Err(e) => {
            ALLOC_ERRNO.store(e.0, Ordering::Relaxed);
            slot.no_state.set(true);
            core::ptr::null_mut()
        }
    }
}

/// Fills `dest` through vDSO getrandom with `state`; `Err` when the vDSO
/// reports an error (the caller then uses the system call).
#[inline]
fn vdso_fill(v: &Vgetrandom, state: *mut u8, dest: &mut [MaybeUninit<u8>]) -> Result<(), ()> {
    let mut done = 0;
    while done < dest.len() {
        let rest = &mut dest[done..];
        // SAFETY: `v.getrandom` is the vDSO getrandom (`vdso::getrandom_fn`).
        // It writes at most `rest.len()` bytes to `rest`, which is valid for
        // writes of that many bytes (uninitialised bytes may be written).
        // `state` is this thread's own state: `v.geometry.state_size` bytes,
        // mapped as the vDSO asked, inside one page (`Geometry`), used by no
        // other thread, and by no other call on this thread (the slot's
        // `busy` flag). Flags 0 ask for the default generator.
        let ret = unsafe {
            (v.getrandom)(
                rest.as_mut_ptr().cast::<c_void>(),
                rest.len(),
                0,
                state.cast::<c_void>(),
                v.geometry.state_size,
            )
        };
        match usize::try_from(ret) {
            Ok(n) if n > 0 => done += n.min(rest.len()),
            _ if ret == -(libc::EINTR as isize) => continue,
            _ => return Err(()),
        }
    }
    Ok(())
}

/// The system call, counted for the thread and the process.
#[cold]
fn syscall_on_slot(slot: &Slot, dest: &mut [MaybeUninit<u8>]) -> Result<(), RandomError> {
    slot.syscall_fills
        .set(slot.syscall_fills.get().wrapping_add(1));
    syscall_uninit(dest)
}

/// Fills `dest` with the `getrandom(2)` system call alone, never the vDSO:
/// the baseline that [`fill`] is measured against, and its fallback.
///
/// # Errors
///
/// [`RandomError::Syscall`] when the system call fails (other than `EINTR`,
/// which is retried).
pub fn syscall_fill(dest: &mut [u8]) -> Result<(), RandomError> {
    // SAFETY: as in `fill`.
    let dest = unsafe { &mut *(core::ptr::from_mut(dest) as *mut [MaybeUninit<u8>]) };
    syscall_uninit(dest)
}

/// The `getrandom(2)` loop: partial reads continue, `EINTR` retries.
fn syscall_uninit(dest: &mut [MaybeUninit<u8>]) -> Result<(), RandomError> {
    SYSCALL_FILLS.fetch_add(1, Ordering::Relaxed);
    let mut done = 0;
    while done < dest.len() {
        let rest = &mut dest[done..];
        match crate::sys::getrandom(rest) {
            Ok(n) => done += n.min(rest.len()),
            Err(libc::EINTR) => continue,
            Err(e) => return Err(RandomError::Syscall(Errno(e))),
        }
    }
    Ok(())
}

/// Counts of the random module, for `ktl info` and leak checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// The size of one vDSO state, or 0 without the vDSO path.
    pub state_size: usize,
    /// Pages of states mapped (never unmapped: freed states are reused).
    pub pages: usize,
    /// States in those pages.
    pub states: usize,
    /// States held by threads; the rest are free.
    pub states_in_use: usize,
    /// Failed mappings of a page of states.
    pub alloc_failures: u64,
    /// Fills, in all threads, that used the system call.
    pub syscall_fills: u64,
    /// Fills that found another fill running on their thread (a signal
    /// handler) and used the system call.
    pub reentrant_fills: u64,
}

/// The module's counts now.
pub fn stats() -> Stats {
    let mut stats = Stats {
        syscall_fills: SYSCALL_FILLS.load(Ordering::Relaxed),
        reentrant_fills: REENTRANT_FILLS.load(Ordering::Relaxed),
        ..Stats::default()
    };
    if let Some(geometry) = geometry() {
        let c = state::counts(&geometry);
        stats.state_size = geometry.state_size;
        stats.pages = c.pages;
        stats.states = c.states;
        stats.states_in_use = c.in_use;
        stats.alloc_failures = c.alloc_failures;
    }
    stats
}

/// The calling thread's fills so far, by path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ThreadFills {
    /// Fills through the vDSO.
    pub vdso: u64,
    /// Fills through the system call (no vDSO path, no state, or reentrant).
    pub syscall: u64,
}

/// The calling thread's fills so far ([`fill`] calls with a nonempty buffer,
/// on the paths that count them per thread).
pub fn thread_fills() -> ThreadFills {
    SLOT.try_with(|s| ThreadFills {
        vdso: s.vdso_fills.get(),
        syscall: s.syscall_fills.get(),
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_differ_and_cover_the_buffer() {
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        fill(&mut a).unwrap();
        fill(&mut b).unwrap();
        assert_ne!(a, b);
        // 64 random bytes are all zero with probability 2^-512.
        assert_ne!(a, [0u8; 64]);
    }

    #[test]
    fn large_and_odd_lengths_are_filled() {
        for len in [1usize, 15, 16, 17, 255, 256, 4095, 4096, 65537, 1 << 20] {
            let mut buf = vec![0u8; len];
            fill(&mut buf).unwrap();
            // Each 16-byte window of random bytes is zero with probability
            // 2^-128: a window left unwritten is.
            for chunk in buf.chunks(16).filter(|c| c.len() == 16) {
                assert_ne!(chunk, [0u8; 16], "length {len}");
            }
        }
    }

    #[test]
    fn syscall_fill_differs() {
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        syscall_fill(&mut a).unwrap();
        syscall_fill(&mut b).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn empty_fill_is_ok() {
        fill(&mut []).unwrap();
    }

    #[test]
    fn path_matches_the_vdso() {
        let has_symbol = vdso::getrandom_fn().is_some();
        match path() {
            Path::Vdso => assert!(has_symbol),
            Path::Syscall(Fallback::NoSymbol | Fallback::NoVdso(_)) => assert!(!has_symbol),
            Path::Syscall(_) => {}
        }
    }
}
