//! A per-CPU object pool: reusable objects cached per CPU, with a global
//! overflow and rebalancing between CPUs.

use super::list::{Heads, Node};
use crate::rseq::Index;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The default number of objects a CPU's cache holds before returns go to
/// the global overflow.
pub const DEFAULT_CACHE: usize = 64;

/// A node that is on no list, owned by the overflow.
struct Owned<T>(NonNull<Node<T>>);

// SAFETY: an `Owned` is the only handle to its node, which holds a `T`.
unsafe impl<T: Send> Send for Owned<T> {}

/// A pool of reusable objects, cached per CPU.
///
/// [`get`](Self::get) takes an object from the current CPU's cache and
/// [`Pooled`]'s drop puts it back on the cache of the CPU the thread then
/// runs on: one restartable sequence each, with no lock and no atomic
/// instruction. When a cache is empty, `get` refills it from the global
/// overflow, then by taking half of another CPU's cache (under
/// [`rseq::exclusive`](crate::rseq::exclusive), which fences that CPU), and
/// only then makes a new object. When a cache holds
/// [`cache`](PoolBuilder::cache) objects, returns go to the overflow.
///
/// The pool is `Send` and `Sync` when `T` is `Send`, and a [`Pooled`] is
/// `Send` when `T` is: an object may be returned from another thread. A
/// pool of objects that must stay on their thread cannot be shared:
///
/// ```compile_fail
/// fn shared<T: Sync>(_: &T) {}
/// shared(&ktl::percpu::Pool::new(|| std::rc::Rc::new(0u8)));
/// ```
///
/// No object is lost or handed out twice, even when threads migrate in the
/// middle of an operation: a cache's list changes only in critical sections
/// on its CPU, which abort when the thread moves, or under `exclusive`. The
/// objects keep their state between uses: reset them yourself if needed.
///
/// ```
/// use ktl::percpu::Pool;
///
/// let buffers = Pool::new(|| Vec::<u8>::with_capacity(4096));
/// {
///     let mut buf = buffers.get();
///     buf.clear();
///     buf.extend_from_slice(b"hello");
/// } // back in the pool
/// let buf = buffers.get(); // the same buffer, if the thread stayed on its CPU
/// assert_eq!(buf.capacity(), 4096);
/// assert_eq!(buffers.created(), 1);
/// ```
pub struct Pool<T> {
    heads: Heads<T>,
    overflow: Mutex<Vec<Owned<T>>>,
    create: Box<dyn Fn() -> T + Send + Sync>,
    cache: usize,
    created: AtomicU64,
    stolen: AtomicU64,
}

/// Options of a [`Pool`].
///
/// ```
/// use ktl::percpu::PoolBuilder;
/// use ktl::rseq::Index;
///
/// let pool = PoolBuilder::new().index(Index::MmCid).cache(16).build(|| [0u8; 256]);
/// assert_eq!(pool.get().len(), 256);
/// ```
#[derive(Debug, Clone)]
pub struct PoolBuilder {
    index: Index,
    cache: usize,
}

impl PoolBuilder {
    /// The default options: indexed by CPU, [`DEFAULT_CACHE`] objects per
    /// CPU.
    pub fn new() -> Self {
        PoolBuilder {
            index: Index::CpuId,
            cache: DEFAULT_CACHE,
        }
    }

    /// The slots are chosen by `index` (default: [`Index::CpuId`]).
    pub fn index(mut self, index: Index) -> Self {
        self.index = index;
        self
    }

    /// Objects a CPU's cache holds before returns go to the global overflow
    /// (default [`DEFAULT_CACHE`]; at least 1).
    pub fn cache(mut self, objects: usize) -> Self {
        self.cache = objects.max(1);
        self
    }

    /// The pool, making new objects with `create`.
    pub fn build<T>(self, create: impl Fn() -> T + Send + Sync + 'static) -> Pool<T> {
        Pool {
            heads: Heads::new(self.index),
            overflow: Mutex::new(Vec::new()),
            create: Box::new(create),
            cache: self.cache,
            created: AtomicU64::new(0),
            stolen: AtomicU64::new(0),
        }
    }
}

impl<T> Pool<T> {
    /// A pool with the default options, making new objects with `create`.
    pub fn new(create: impl Fn() -> T + Send + Sync + 'static) -> Self {
        PoolBuilder::new().build(create)
    }

    /// The index the caches are chosen by.
    pub fn index(&self) -> Index {
        self.heads.index()
    }

    /// Takes an object: from the current CPU's cache, else the overflow,
    /// else another CPU's cache, else a new one.
    #[inline]
    pub fn get(&self) -> Pooled<'_, T> {
        let node = match self.heads.pop() {
            Ok(Some(node)) => node,
            _ => self.refill(),
        };
        Pooled {
            pool: self,
            // SAFETY: pops, steals and `Node::alloc` never give null.
            node: unsafe { NonNull::new_unchecked(node) },
        }
    }

    /// The slow path of `get`: returns a node this thread owns, and moves a
    /// batch into the current CPU's cache on the way.
    #[cold]
    fn refill(&self) -> *mut Node<T> {
        let half = self.cache.div_ceil(2);
        let batch: Vec<Owned<T>> = {
            let mut overflow = self.overflow.lock().unwrap_or_else(|e| e.into_inner());
            let from = overflow.len().saturating_sub(half);
            overflow.drain(from..).collect()
        };
        if let Some((first, rest)) = batch.split_first() {
            for n in rest {
                self.put_node(n.0.as_ptr());
            }
            return first.0.as_ptr();
        }
        for value in 0..self.heads.len() as u32 {
            let (chain, n) = self.heads.steal(value, half);
            if n > 0 {
                self.stolen.fetch_add(n as u64, Ordering::Relaxed);
                // SAFETY: `steal` unlinked the chain, so this thread owns
                // every node on it; the last one's `next` is null.
                let mut rest = unsafe { (*chain).next.load(Ordering::Relaxed) };
                while !rest.is_null() {
                    // SAFETY: as above.
                    let next = unsafe { (*rest).next.load(Ordering::Relaxed) };
                    self.put_node(rest);
                    rest = next;
                }
                return chain;
            }
        }
        self.created.fetch_add(1, Ordering::Relaxed);
        Node::alloc((self.create)())
    }

    /// Puts a node this thread owns back: on the current CPU's cache, or
    /// the overflow when that cache is full or unreachable.
    #[inline]
    fn put_node(&self, node: *mut Node<T>) {
        // SAFETY: the caller owns `node`, from `Node::alloc`; nodes are
        // freed only when the pool is dropped, so every node stays
        // allocated as long as the lists.
        match unsafe { self.heads.push_counted(node) } {
            Ok(depth) if depth <= self.cache => {}
            Ok(_) => self.spill(),
            // SAFETY: the push failed, so the node is still ours.
            Err(_) => self.overflow_push(Owned(unsafe { NonNull::new_unchecked(node) })),
        }
    }

    /// The current CPU's cache went past its size: move half of it to the
    /// overflow.
    #[cold]
    fn spill(&self) {
        let mut moved = Vec::with_capacity(self.cache.div_ceil(2));
        for _ in 0..self.cache.div_ceil(2) {
            match self.heads.pop() {
                // SAFETY: popped nodes are owned by this thread.
                Ok(Some(node)) => moved.push(Owned(unsafe { NonNull::new_unchecked(node) })),
                _ => break,
            }
        }
        self.overflow
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .append(&mut moved);
    }

    #[cold]
    fn overflow_push(&self, node: Owned<T>) {
        self.overflow
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(node);
    }

    /// How many objects the pool has made.
    pub fn created(&self) -> u64 {
        self.created.load(Ordering::Relaxed)
    }

    /// How many objects were moved from one CPU's cache to another's.
    pub fn stolen(&self) -> u64 {
        self.stolen.load(Ordering::Relaxed)
    }

    /// The objects in the pool (not handed out): per CPU cache, and in the
    /// overflow. Needs exclusive access, so it is exact.
    pub fn available(&mut self) -> (Vec<usize>, usize) {
        let overflow = self
            .overflow
            .get_mut()
            .map_or_else(|e| e.into_inner().len(), |v| v.len());
        (self.heads.counts(), overflow)
    }

    /// Takes every object out of the pool (those handed out stay out), for
    /// inspection or to free them early.
    pub fn drain(&mut self) -> Vec<T> {
        let mut nodes: Vec<*mut Node<T>> = self.heads.take_all();
        let overflow = self.overflow.get_mut().unwrap_or_else(|e| e.into_inner());
        nodes.extend(overflow.drain(..).map(|o| o.0.as_ptr()));
        nodes
            .into_iter()
            // SAFETY: every node is unlinked and owned here, from
            // `Node::alloc`.
            .map(|p| unsafe { Box::from_raw(p) }.value)
            .collect()
    }
}

impl Default for PoolBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Drop for Pool<T> {
    fn drop(&mut self) {
        // Objects handed out borrow the pool, so none is out now.
        drop(self.drain());
    }
}

impl<T> std::fmt::Debug for Pool<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("index", &self.index())
            .field("cache", &self.cache)
            .field("created", &self.created())
            .finish_non_exhaustive()
    }
}

/// An object taken from a [`Pool`]; it goes back when dropped.
pub struct Pooled<'a, T> {
    pool: &'a Pool<T>,
    node: NonNull<Node<T>>,
}

// SAFETY: a `Pooled` owns its node's value exclusively, like a `Box<T>`.
unsafe impl<T: Send> Send for Pooled<'_, T> {}
// SAFETY: shared access to a `Pooled` only gives `&T`.
unsafe impl<T: Sync> Sync for Pooled<'_, T> {}

impl<T> core::ops::Deref for Pooled<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the node is live and off every list, so this `Pooled` is
        // the only access to its value.
        unsafe { &(*self.node.as_ptr()).value }
    }
}

impl<T> core::ops::DerefMut for Pooled<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` is unique.
        unsafe { &mut (*self.node.as_ptr()).value }
    }
}

impl<T> Drop for Pooled<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.pool.put_node(self.node.as_ptr());
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Pooled<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// An object that detects being handed out twice.
    struct Obj {
        id: u64,
        out: AtomicBool,
        uses: u64,
    }

    #[test]
    fn no_object_is_lost_or_handed_out_twice() {
        for index in [Index::CpuId, Index::MmCid] {
            let next = std::sync::Arc::new(AtomicU64::new(0));
            let ids = next.clone();
            let mut pool = PoolBuilder::new().index(index).cache(8).build(move || Obj {
                id: ids.fetch_add(1, Ordering::Relaxed),
                out: AtomicBool::new(false),
                uses: 0,
            });
            let uses = AtomicU64::new(0);
            std::thread::scope(|s| {
                for t in 0..6 {
                    let (pool, uses) = (&pool, &uses);
                    s.spawn(move || {
                        let mut held = Vec::new();
                        for i in 0..20_000u64 {
                            let mut o = pool.get();
                            assert!(!o.out.swap(true, Ordering::Relaxed), "handed out twice");
                            o.uses += 1;
                            uses.fetch_add(1, Ordering::Relaxed);
                            // Hold a few at a time, so caches fill, spill
                            // to the overflow and run dry.
                            held.push(o);
                            if held.len() > (i + t) as usize % 24 {
                                for o in held.drain(..) {
                                    o.out.store(false, Ordering::Relaxed);
                                }
                            }
                        }
                        for o in held.drain(..) {
                            o.out.store(false, Ordering::Relaxed);
                        }
                    });
                }
            });
            let created = pool.created();
            assert_eq!(created, next.load(Ordering::Relaxed));
            let (caches, overflow) = pool.available();
            assert_eq!(
                caches.iter().sum::<usize>() + overflow,
                created as usize,
                "{index:?}"
            );
            let objs = pool.drain();
            let mut seen: Vec<u64> = objs.iter().map(|o| o.id).collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..created).collect::<Vec<_>>(), "every object once");
            let total: u64 = objs.iter().map(|o| o.uses).sum();
            assert_eq!(total, uses.load(Ordering::Relaxed));
            assert_eq!(total, 6 * 20_000);
        }
    }

    #[test]
    fn a_returned_object_is_reused() {
        let pool = Pool::new(Vec::<u8>::new);
        for _ in 0..100 {
            let mut v = pool.get();
            v.push(1);
        }
        // One object: when the thread moved, the next get took it from the
        // other CPU's cache, where that is possible.
        if crate::rseq::exclusive(Index::CpuId, 0).is_ok() {
            assert_eq!(pool.created(), 1);
        } else {
            assert!(pool.created() <= u64::from(crate::cpu::possible_cpus().unwrap()));
        }
    }
}
