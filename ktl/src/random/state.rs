//! The per-thread states of vDSO getrandom: allocated in whole pages, handed
//! to threads, and returned to a free list when a thread exits.
//!
//! The vDSO tells the size of one state and how to map the memory
//! (`MAP_DROPPABLE | MAP_ANONYMOUS`, read and write). A state must never
//! straddle a page: the kernel may drop (zero) a droppable page at any time,
//! and the vDSO refuses a state that crosses a page boundary. So each page
//! holds `page_size / stride` states, where the stride is the state size
//! rounded up to a cache line (two threads' states never share one).
//!
//! A thread that is refused a state (the mapping of a new page fails) uses
//! the system call, and tries again, taking only a free state, once the free
//! list has grown since the refusal: [`generation`] counts its growths.
//!
//! After `fork`, the child has only the forking thread. Its copy of the
//! registry still counts the states of the parent's other threads as in use,
//! so a `pthread_atfork` child handler returns them to the free list. Their
//! contents need no care: the kernel wipes droppable mappings in the child,
//! so every state there starts from zero and the vDSO reseeds it, and the
//! child never repeats the parent's output.

use core::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::cell::RefCell;
use std::sync::{Mutex, MutexGuard, Once, PoisonError};

use crate::first_call::FirstCall;
use crate::sys::{self, Errno};

/// The geometry of the states, from the vDSO's parameters.
#[derive(Debug, Clone, Copy)]
pub(super) struct Geometry {
    /// The size of one state, as the vDSO reported it (its `opaque_len`).
    pub state_size: usize,
    /// The distance between two states in a page.
    pub stride: usize,
    /// States per page.
    pub per_page: usize,
    /// The page size.
    pub page: usize,
    /// `mmap` protection.
    pub prot: i32,
    /// `mmap` flags.
    pub flags: i32,
}

/// The cache line size the states are spaced by.
const CACHE_LINE: usize = 64;

impl Geometry {
    /// The geometry for states of `state_size` bytes in pages of `page`
    /// bytes, or `None` if a state does not fit in a page.
    pub(super) fn new(state_size: usize, page: usize, prot: i32, flags: i32) -> Option<Self> {
        if state_size == 0 || page == 0 || state_size > page {
            return None;
        }
        let stride = state_size.checked_next_multiple_of(CACHE_LINE)?.min(page);
        // A stride of a whole page still holds one state.
        let per_page = page / stride;
        Some(Geometry {
            state_size,
            stride,
            per_page,
            page,
            prot,
            flags,
        })
    }
}

/// The states of the process: every page mapped, and the free states.
struct Registry {
    /// The base address of every page of states, in mapping order.
    pages: Vec<usize>,
    /// Free states (addresses).
    free: Vec<usize>,
    /// States handed to threads and not yet returned.
    in_use: usize,
    /// Failed `mmap`s of a new page.
    alloc_failures: u64,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    pages: Vec::new(),
    free: Vec::new(),
    in_use: 0,
    alloc_failures: 0,
});

/// The registry, whatever a panicking holder left (nothing here panics while
/// holding it, and its invariants hold between statements).
///
/// Its holders hold the thread's [`FirstCall`] marker too, so that a signal
/// handler that interrupts them never waits for the lock: its fills take the
/// system call.
fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How many times the free list has grown (states given back, pages
/// mapped, a `fork` child's states freed). Changed under the registry lock.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// The errno of the most recent attempt to give a thread a state, if it
/// failed, else 0. Changed under the registry lock, so it follows the order
/// of the attempts.
static LAST_ERRNO: AtomicI32 = AtomicI32::new(0);

/// [`GENERATION`] now.
pub(super) fn generation() -> u64 {
    GENERATION.load(Ordering::Relaxed)
}

/// The errno of the most recent attempt to give a thread a state, if it
/// failed.
pub(super) fn last_failure() -> Option<Errno> {
    match LAST_ERRNO.load(Ordering::Relaxed) {
        0 => None,
        e => Some(Errno(e)),
    }
}

fn grew() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// Counts of the registry, for [`super::Stats`].
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Counts {
    pub pages: usize,
    pub states: usize,
    pub in_use: usize,
    pub alloc_failures: u64,
}

pub(super) fn counts(geometry: &Geometry) -> Counts {
    let r = registry();
    Counts {
        pages: r.pages.len(),
        states: r.pages.len() * geometry.per_page,
        in_use: r.in_use,
        alloc_failures: r.alloc_failures,
    }
}

/// Takes a free state, mapping a new page of them if there is none and
/// `may_map`. The caller holds the thread's [`FirstCall`] marker. `Err`
/// with the [`generation`] of the refusal if there is none.
pub(super) fn acquire(geometry: &Geometry, may_map: bool) -> Result<*mut u8, u64> {
    register_fork_handlers();
    let mut r = registry();
    if r.free.is_empty() {
        if !may_map {
            return Err(generation());
        }
        let base = match map_page(geometry) {
            Ok(base) => base,
            Err(e) => {
                r.alloc_failures += 1;
                LAST_ERRNO.store(e.0, Ordering::Relaxed);
                return Err(generation());
            }
        };
        r.pages.push(base);
        // Pushed in reverse, so the page's first state is taken first.
        r.free.extend(
            (0..geometry.per_page)
                .rev()
                .map(|i| base + i * geometry.stride),
        );
        grew();
    }
    let Some(state) = r.free.pop() else {
        // `per_page` is at least 1, so the page just mapped added one.
        return Err(generation());
    };
    r.in_use += 1;
    LAST_ERRNO.store(0, Ordering::Relaxed);
    Ok(core::ptr::with_exposed_provenance_mut(state))
}

/// Returns a state taken with [`acquire`] to the free list.
pub(super) fn release(state: *mut u8) {
    let _first = FirstCall::begin();
    let mut r = registry();
    r.free.push(state.expose_provenance());
    r.in_use = r.in_use.saturating_sub(1);
    grew();
}

/// Maps one page of states with the vDSO's protection and flags.
fn map_page(geometry: &Geometry) -> Result<usize, Errno> {
    // An anonymous mapping at an address of the kernel's choosing, which
    // touches no existing memory. The pages are never unmapped: freed states
    // go back to the free list, because another thread may still hold a
    // state of the same page.
    let p = sys::memory::map_anonymous(geometry.page, geometry.prot, geometry.flags)?;
    Ok(p.as_ptr().expose_provenance())
}

/// What the forking thread holds across a `fork`.
type ForkGuard = (MutexGuard<'static, Registry>, Option<FirstCall>);

thread_local! {
    /// The registry lock held across a `fork` by the forking thread, from
    /// the prepare handler to the parent or child handler, with the thread's
    /// first-call marker (see [`registry`]).
    static FORK_GUARD: RefCell<Option<ForkGuard>> = const { RefCell::new(None) };
}

/// Registers the `pthread_atfork` handlers, once.
fn register_fork_handlers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: the handlers are `extern "C"` functions that live for the
        // whole process; each only takes or gives back the registry and the
        // thread's first-call marker, and the child's runs in a child whose
        // only thread is the one that held the registry across the fork. A
        // registration failure (ENOMEM) leaves a child with states counted
        // in use that nothing will return: a leak in that child, never a
        // state shared by two threads.
        let _ = unsafe { sys::fork::at_fork(Some(prepare), Some(parent), Some(child)) };
    });
}

/// Before `fork`: hold the registry, so the child gets a consistent copy.
extern "C" fn prepare() {
    let first = FirstCall::begin();
    let guard = registry();
    let _ = FORK_GUARD.try_with(|g| *g.borrow_mut() = Some((guard, first)));
}

/// In the parent after `fork`: release the registry.
extern "C" fn parent() {
    let _ = FORK_GUARD.try_with(|g| g.borrow_mut().take());
}

/// In the child after `fork`: only the forking thread exists, so every state
/// but its own is free. Then release the registry.
extern "C" fn child() {
    let own = super::current_state().map(|s| s.expose_provenance());
    let _ = FORK_GUARD.try_with(|g| {
        // The lock, then the marker, are given back when `held` drops.
        if let Some(mut held) = g.borrow_mut().take() {
            let r = &mut held.0;
            let Some(geometry) = super::geometry() else {
                return;
            };
            let pages = core::mem::take(&mut r.pages);
            r.free.clear();
            for &base in &pages {
                r.free.extend(
                    (0..geometry.per_page)
                        .rev()
                        .map(|i| base + i * geometry.stride)
                        .filter(|&s| Some(s) != own),
                );
            }
            r.pages = pages;
            r.in_use = usize::from(own.is_some());
            grew();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_never_straddles_a_page() {
        for size in [1, 63, 64, 65, 200, 256, 300, 2048, 2049, 4096] {
            let g = Geometry::new(size, 4096, 0, 0).expect("fits in a page");
            assert!(g.per_page >= 1, "size {size}");
            assert_eq!(g.stride % CACHE_LINE, 0, "size {size}: stride {}", g.stride);
            assert!(g.stride >= size);
            // The last state of a page ends inside it.
            assert!((g.per_page - 1) * g.stride + size <= 4096, "size {size}");
        }
        assert!(Geometry::new(4097, 4096, 0, 0).is_none());
        assert!(Geometry::new(0, 4096, 0, 0).is_none());
    }
}
