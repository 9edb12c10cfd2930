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
//!   by two calls at once; so does a call that interrupts one of ktl's
//!   first calls on its thread (see [`crate::area`]), which sets nothing up;
//! - a `fork` child gets wiped states from the kernel, so it never repeats
//!   its parent's output, and the states of threads that do not exist in the
//!   child go back to its free list.
//!
//! Without the vDSO function (kernels before 6.11 on x86_64 and 6.14 on
//! aarch64, no vDSO, `KTL_VDSO=off`), every call uses the `getrandom(2)`
//! system call. So does a thread that got no state (a sandbox that refuses
//! the mapping), until a state comes free (another thread exits or maps a
//! page of them): it then takes that one. [`path`] says which path is live,
//! and `ktl info` shows it.
//!
//! [`fill`] is async-signal-safe in a thread that has made a fill before:
//! it calls the vDSO with the thread's state, or makes the system call. The
//! first fill of the process finds the vDSO function, and the first fill of
//! a thread gives it a state; both allocate and take locks, so a signal
//! handler must not make them, except when it interrupts a fill or another
//! of ktl's first calls on its own thread: then it makes the system call and
//! sets nothing up.
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

use crate::first_call::FirstCall;
use crate::sys::{self, Errno};
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

/// The vDSO path, once looked up.
static VGETRANDOM: OnceLock<Result<Vgetrandom, Fallback>> = OnceLock::new();

/// The vDSO path, looked up once: the function and its state geometry, or
/// why there is none.
fn vgetrandom() -> Result<&'static Vgetrandom, Fallback> {
    let v = match VGETRANDOM.get() {
        Some(v) => v,
        None => {
            // Marked as a first call (unless the caller's is), so that a
            // fill in a signal handler that interrupts this takes the system
            // call instead of waiting for it.
            let _first = FirstCall::begin();
            VGETRANDOM.get_or_init(find)
        }
    };
    v.as_ref().map_err(|&fallback| fallback)
}

/// Finds vDSO getrandom and the geometry of its states. Runs inside a first
/// call, which holds the thread's marker.
#[cold]
fn find() -> Result<Vgetrandom, Fallback> {
    vdso::Vdso::get().map_err(Fallback::NoVdso)?;
    let getrandom = vdso::getrandom_fn_in_first_call().ok_or(Fallback::NoSymbol)?;
    let params = vdso::getrandom_params(getrandom).map_err(Fallback::Params)?;
    let size = params.size_of_opaque_state as usize;
    let page = sys::memory::page_size().unwrap_or(4096);
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

/// Fills that used the system call, in all threads.
static SYSCALL_FILLS: AtomicU64 = AtomicU64::new(0);
/// Fills that interrupted a fill on the same thread (signal handlers).
static REENTRANT_FILLS: AtomicU64 = AtomicU64::new(0);

/// The path [`fill`] takes in this process.
///
/// [`Path::Vdso`] unless the vDSO function is missing, or the most recent
/// attempt to give a thread a state failed: then threads that hold a state
/// still use the vDSO, and threads without one use the system call until a
/// state comes free. The next thread that gets a state makes it
/// [`Path::Vdso`] again.
pub fn path() -> Path {
    match vgetrandom() {
        Err(why) => Path::Syscall(why),
        Ok(_) => match state::last_failure() {
            None => Path::Vdso,
            Some(e) => Path::Syscall(Fallback::StateAlloc(e)),
        },
    }
}

/// The calling thread's vDSO state and the flags that guard it.
///
/// It has no destructor, so a fill that reads it arms nothing (a signal
/// handler may); [`GiveBack`], armed when the thread takes a state, returns
/// the state at thread exit.
struct Slot {
    /// The thread's state, or null before its first vDSO fill.
    state: Cell<*mut u8>,
    /// A fill is running on this thread (a signal handler that calls
    /// [`fill`] then sees it set).
    busy: Cell<bool>,
    /// Taking a state failed for this thread: it uses the system call until
    /// [`state::generation`] moves on from `refused_at`.
    no_state: Cell<bool>,
    /// [`state::generation`] when taking a state failed.
    refused_at: Cell<u64>,
    /// The thread's TLS destructors ran: it never takes a state again.
    exited: Cell<bool>,
    /// Fills of this thread through the vDSO.
    vdso_fills: Cell<u64>,
    /// Fills of this thread through the system call.
    syscall_fills: Cell<u64>,
}

/// The thread-local destructor that returns the thread's state.
struct GiveBack;

impl Drop for GiveBack {
    fn drop(&mut self) {
        // Runs from the thread's TLS destructors. Later fills on this thread
        // find it exited, with no state, and use the system call; so does a
        // signal handler's fill that interrupts this.
        let _ = SLOT.try_with(|s| {
            s.exited.set(true);
            compiler_fence(Ordering::SeqCst);
            let state = s.state.replace(core::ptr::null_mut());
            if !state.is_null() {
                state::release(state);
            }
        });
    }
}

thread_local! {
    static SLOT: Slot = const {
        Slot {
            state: Cell::new(core::ptr::null_mut()),
            busy: Cell::new(false),
            no_state: Cell::new(false),
            refused_at: Cell::new(0),
            exited: Cell::new(false),
            vdso_fills: Cell::new(0),
            syscall_fills: Cell::new(0),
        }
    };
    /// Armed when the thread takes a state.
    static GIVE_BACK: GiveBack = const { GiveBack };
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
/// Async-signal-safe once the thread has made a fill; see the
/// [module docs](self).
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
        match SLOT.try_with(|slot| fill_on_slot(slot, dest)) {
            Ok(r) => r?,
            // Not expected: the slot has no destructor.
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
fn fill_on_slot(slot: &Slot, dest: &mut [MaybeUninit<u8>]) -> Result<(), RandomError> {
    if slot.busy.get() {
        REENTRANT_FILLS.fetch_add(1, Ordering::Relaxed);
        return syscall_on_slot(slot, dest);
    }
    slot.busy.set(true);
    // A signal handler runs on this thread between any two instructions: the
    // flag must be set before anything is set up or the state is used, and
    // cleared after.
    compiler_fence(Ordering::SeqCst);
    let state = slot.state.get();
    let r = match VGETRANDOM.get() {
        // A thread holds a state only once the vDSO path was found.
        Some(Ok(v)) if !state.is_null() => vdso_fill(v, state, dest),
        _ => first_fill(slot, dest),
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

/// A fill of a thread without a state: finds the vDSO path and gives the
/// thread a state, then fills through the vDSO; `Err` to use the system
/// call. Inside another of ktl's first calls on this thread (a signal
/// handler interrupted it), it sets nothing up and returns `Err`.
#[cold]
#[inline(never)]
fn first_fill(slot: &Slot, dest: &mut [MaybeUninit<u8>]) -> Result<(), ()> {
    let Some(_first) = FirstCall::begin() else {
        return Err(());
    };
    let v = vgetrandom().map_err(|_| ())?;
    let state = take_state(slot, v);
    if state.is_null() {
        return Err(());
    }
    vdso_fill(v, state, dest)
}

/// Gives the thread a state, or records that it has none; null if none.
///
/// A thread that was refused one tries again only once a state has come
/// free since, and then only takes a free one: it maps nothing.
fn take_state(slot: &Slot, v: &Vgetrandom) -> *mut u8 {
    if slot.exited.get() {
        return core::ptr::null_mut();
    }
    let retry = slot.no_state.get();
    if retry && state::generation() == slot.refused_at.get() {
        return core::ptr::null_mut();
    }
    // Arm the destructor that gives the state back at thread exit. Past the
    // thread's TLS destructors it can no longer be armed, and the thread
    // never takes a state.
    if GIVE_BACK.try_with(|_| ()).is_err() {
        slot.exited.set(true);
        return core::ptr::null_mut();
    }
    match state::acquire(&v.geometry, !retry) {
        Ok(state) => {
            slot.state.set(state);
            slot.no_state.set(false);
            state
        }
        Err(refused_at) => {
            slot.no_state.set(true);
            slot.refused_at.set(refused_at);
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
            _ if ret == -(sys::EINTR as isize) => continue,
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
        match sys::random::getrandom(rest) {
            Ok(n) => done += n.min(rest.len()),
            Err(Errno(sys::EINTR)) => continue,
            Err(e) => return Err(RandomError::Syscall(e)),
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
        // Marked while it holds the states' lock, so that a signal handler's
        // first fill on this thread takes the system call instead of that
        // lock.
        let _first = FirstCall::begin();
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
