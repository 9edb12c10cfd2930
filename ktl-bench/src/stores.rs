//! The objects of the `percpu` group and the stores that hold them:
//! crossbeam's `ArrayQueue` and `SegQueue`, a `Mutex<Vec>`, and ktl's
//! `PerCpuStack`, behind one trait, with their accounting ([`Shelf`]), and
//! ktl's `Pool` filled the same way.
//!
//! The objects are 64-byte arrays on the heap (`Box<[u64; 8]>`); each
//! structure starts with [`OBJECTS`] of them, put in from each CPU in turn
//! ([`on_each_cpu`]). An operation uses the object it holds (adds 1 to its
//! first word, its use count), so after the samples the structure must hold
//! every object it made, and their uses must sum to the operations
//! performed. A structure that comes up empty makes a new object, which is
//! counted; one that refuses an object (full) drops it, and the check then
//! fails.

use crate::os::{self, CpuSet};
use crossbeam_queue::{ArrayQueue, SegQueue};
use ktl::percpu::{PerCpuStack, Pool};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// The objects each pool and stack starts with.
pub(crate) const OBJECTS: usize = 256;

/// A pooled object: 64 bytes on the heap. Word 0 counts its uses.
pub(crate) type Obj = Box<[u64; 8]>;

/// A new, unused object.
pub(crate) fn new_obj() -> Obj {
    Box::new([0; 8])
}

/// Uses `o`: adds 1 to its use count, and returns it.
#[inline(always)]
pub(crate) fn use_obj(o: &mut [u64; 8]) -> u64 {
    o[0] = o[0].wrapping_add(1);
    o[0]
}

/// Whether `objects`, all that a structure held at the end, are the `made`
/// objects it made, used `ops` times in all.
pub(crate) fn objects_match(objects: Vec<Obj>, made: u64, ops: u64) -> Result<String, String> {
    let held = objects.len() as u64;
    let uses = objects.iter().fold(0u64, |n, o| n.wrapping_add(o[0]));
    if held == made && uses == ops {
        Ok(format!(
            "{ops} operations, all {made} objects made are held, their uses sum to {uses}"
        ))
    } else {
        Err(format!(
            "{held} of the {made} objects made are held after {ops} operations, their uses \
             sum to {uses}"
        ))
    }
}

/// Runs `f(share)` on each CPU this thread may use, pinned to it, where the
/// shares split [`OBJECTS`] evenly; then gives the thread back the CPUs it
/// had. Where the thread cannot be pinned, runs `f(OBJECTS)` once, where it
/// is.
///
/// This is how the structures are filled: a per-CPU structure filled from
/// one CPU would hold every object on that CPU's list, and a thread on
/// another CPU would find its own list empty and take objects from the
/// first CPU's (a system call per take, with `rseq::exclusive`) until the
/// objects have spread, which is a start-up cost, not the cost of the
/// operation. The other structures hold the same objects either way.
pub(crate) fn on_each_cpu(mut f: impl FnMut(usize)) {
    let Ok(original) = CpuSet::of_this_thread() else {
        f(OBJECTS);
        return;
    };
    let cpus = original.cpus();
    let n = cpus.len().max(1);
    let mut left = OBJECTS;
    for (k, &cpu) in cpus.iter().enumerate() {
        let share = OBJECTS / n + usize::from(k < OBJECTS % n);
        if os::pin_this_thread(cpu).is_ok() {
            f(share);
            left -= share;
        }
    }
    let _ = original.apply_to_this_thread();
    if left > 0 {
        f(left);
    }
}

/// A ktl [`Pool`] that has made [`OBJECTS`] objects, all back in it,
/// returned from each CPU in turn (see [`on_each_cpu`]).
pub(crate) fn filled_pool() -> Pool<Obj> {
    let pool = Pool::new(new_obj);
    let mut out: Vec<_> = (0..OBJECTS).map(|_| pool.get()).collect();
    on_each_cpu(|share| out.truncate(out.len().saturating_sub(share)));
    drop(out);
    pool
}

/// A structure that holds objects: the alternatives, and `PerCpuStack`.
pub(crate) trait Store: Send + Sync + Sized + 'static {
    /// An empty store with room for [`OBJECTS`] and more.
    fn empty() -> Self;
    /// Takes an object, if there is one.
    fn take(&self) -> Option<Obj>;
    /// Puts `o` in, or gives it back when the store is full.
    fn put(&self, o: Obj) -> Result<(), Obj>;
    /// Every object left, with exclusive access.
    fn into_objects(self) -> Vec<Obj>;
}

impl Store for ArrayQueue<Obj> {
    fn empty() -> Self {
        ArrayQueue::new(2 * OBJECTS)
    }
    #[inline(always)]
    fn take(&self) -> Option<Obj> {
        self.pop()
    }
    #[inline(always)]
    fn put(&self, o: Obj) -> Result<(), Obj> {
        self.push(o)
    }
    fn into_objects(self) -> Vec<Obj> {
        std::iter::from_fn(|| self.pop()).collect()
    }
}

impl Store for SegQueue<Obj> {
    fn empty() -> Self {
        SegQueue::new()
    }
    #[inline(always)]
    fn take(&self) -> Option<Obj> {
        self.pop()
    }
    #[inline(always)]
    fn put(&self, o: Obj) -> Result<(), Obj> {
        self.push(o);
        Ok(())
    }
    fn into_objects(self) -> Vec<Obj> {
        std::iter::from_fn(|| self.pop()).collect()
    }
}

impl Store for Mutex<Vec<Obj>> {
    fn empty() -> Self {
        Mutex::new(Vec::with_capacity(2 * OBJECTS))
    }
    #[inline(always)]
    fn take(&self) -> Option<Obj> {
        self.lock().unwrap_or_else(PoisonError::into_inner).pop()
    }
    #[inline(always)]
    fn put(&self, o: Obj) -> Result<(), Obj> {
        self.lock().unwrap_or_else(PoisonError::into_inner).push(o);
        Ok(())
    }
    fn into_objects(self) -> Vec<Obj> {
        self.into_inner().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Store for PerCpuStack<Obj> {
    fn empty() -> Self {
        PerCpuStack::new()
    }
    /// The current CPU's stack, else another CPU's (when the thread moved
    /// between its push and its pop).
    #[inline(always)]
    fn take(&self) -> Option<Obj> {
        self.pop().or_else(|| self.pop_any())
    }
    #[inline(always)]
    fn put(&self, o: Obj) -> Result<(), Obj> {
        self.push(o);
        Ok(())
    }
    fn into_objects(mut self) -> Vec<Obj> {
        self.drain()
    }
}

/// A store with its accounting: the objects it made and refused.
pub(crate) struct Shelf<S> {
    pub(crate) store: S,
    /// Objects made: the first [`OBJECTS`], then one each time the store
    /// came up empty.
    made: AtomicU64,
    /// Objects the store refused (full), which are dropped.
    refused: AtomicU64,
}

impl<S: Store> Shelf<S> {
    /// A store holding [`OBJECTS`] new objects, put in from each CPU in
    /// turn (see [`on_each_cpu`]).
    pub(crate) fn filled() -> Self {
        let shelf = Shelf {
            store: S::empty(),
            made: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        };
        on_each_cpu(|share| {
            for _ in 0..share {
                let o = shelf.make();
                shelf.put(o);
            }
        });
        shelf
    }

    /// A new object, counted.
    #[cold]
    pub(crate) fn make(&self) -> Obj {
        self.made.fetch_add(1, Ordering::Relaxed);
        new_obj()
    }

    /// Puts `o` back, or counts and drops it if the store is full.
    #[inline(always)]
    pub(crate) fn put(&self, o: Obj) {
        if let Err(o) = self.store.put(o) {
            self.refuse(o);
        }
    }

    #[cold]
    fn refuse(&self, o: Obj) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        drop(o);
    }

    /// The check after the samples: every object made is held, and their
    /// uses sum to `ops`.
    pub(crate) fn check(self, ops: u64) -> Result<String, String> {
        let made = self.made.into_inner();
        let refused = self.refused.into_inner();
        let verdict = objects_match(self.store.into_objects(), made, ops);
        match (verdict, refused) {
            (v, 0) => v,
            (Ok(m) | Err(m), n) => Err(format!("{m}; {n} objects were refused (full)")),
        }
    }
}
