//! The object stores that the per-CPU benchmarks compare: crossbeam's
//! `ArrayQueue` and `SegQueue`, a `Mutex<Vec>`, and ktl's `PerCpuStack`,
//! behind one trait. Shared by `ktl bench` (ktl-cli) and the criterion
//! bench `benches/percpu.rs`, which both include this file as a module;
//! the including module defines `Obj`, `OBJECTS`, `new_obj` and
//! `on_each_cpu`.

use super::{OBJECTS, Obj, new_obj, on_each_cpu};
use crossbeam_queue::{ArrayQueue, SegQueue};
use ktl::percpu::PerCpuStack;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

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
    pub(crate) made: AtomicU64,
    /// Objects the store refused (full), which are dropped.
    pub(crate) refused: AtomicU64,
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
}
