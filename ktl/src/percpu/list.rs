//! The intrusive per-CPU list under [`PerCpuStack`](super::PerCpuStack) and
//! [`Pool`](super::Pool): one head pointer per CPU, nodes pushed and popped
//! by restartable sequences, stolen from other CPUs under
//! [`rseq::exclusive`].
//!
//! ## Why there is no ABA hazard
//!
//! A lock-free stack that pops with compare-and-swap reads the head `A`,
//! reads `A.next == B`, then swaps the head from `A` to `B`. Between the
//! read and the swap, other threads may pop `A` and `B` and push `A` back:
//! the swap still sees `A` and installs `B`, a node that is no longer on the
//! list (the ABA problem). Here the pop (`rseq::cmpnev_storeoffp_load`)
//! reads the head, reads `next` and stores the new head in one critical
//! section on the list's own CPU. Only code running on that CPU with that
//! index value commits to the head, and if any other thread runs on the CPU
//! before the section commits, the section was preempted and aborts. So no
//! other change to the list can fall between the reads and the store. The
//! fallbacks keep that exclusion: a thread without an area takes the index
//! value's gate and fences its CPU, and a thief holds [`rseq::exclusive`].
//! A push compares the head it linked (`node.next`) with the current head in
//! its section, so it needs no more than equality: a head that changed and
//! came back is still the right `next`.

use super::PerCpu;
use crate::rseq::{self, Failure, Index};
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// A list node: the link first, then the value.
#[repr(C)]
pub(crate) struct Node<T> {
    pub(crate) next: AtomicPtr<Node<T>>,
    /// With [`Heads::push_counted`]: the number of nodes from this one to
    /// the end of its list when it was pushed, a hint of the list's length.
    pub(crate) depth: AtomicUsize,
    pub(crate) value: T,
}

impl<T> Node<T> {
    /// A new unlinked node, as a raw pointer that the caller owns.
    pub(crate) fn alloc(value: T) -> *mut Node<T> {
        Box::into_raw(Box::new(Node {
            next: AtomicPtr::new(ptr::null_mut()),
            depth: AtomicUsize::new(0),
            value,
        }))
    }
}

/// Why a list operation could not run on the current CPU's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoSlot {
    /// The thread cannot run rseq operations, or its index value has no
    /// slot: the caller uses its shared fallback.
    Unavailable,
}

/// One list head per CPU. Owns no nodes itself: the structures built on it
/// free what is left in their `Drop`.
pub(crate) struct Heads<T> {
    heads: PerCpu<AtomicPtr<Node<T>>>,
}

// SAFETY: the heads are pointers to nodes whose values the structures on top
// hand between threads; they require `T: Send` for that (see their impls).
unsafe impl<T: Send> Send for Heads<T> {}
// SAFETY: shared access only moves nodes between threads through the rseq
// operations and `exclusive`, which exclude each other per index value.
unsafe impl<T: Send> Sync for Heads<T> {}

impl<T> Heads<T> {
    pub(crate) fn new(index: Index) -> Self {
        Heads {
            heads: PerCpu::new(index),
        }
    }

    pub(crate) fn index(&self) -> Index {
        self.heads.index()
    }

    pub(crate) fn len(&self) -> usize {
        self.heads.len()
    }

    /// Pushes `node` onto the list of the CPU the thread runs on.
    ///
    /// # Safety
    /// `node` must be a valid, exclusively owned node from [`Node::alloc`];
    /// on `Ok` the list owns it.
    pub(crate) unsafe fn push(&self, node: *mut Node<T>) -> Result<(), NoSlot> {
        // SAFETY: forwarded to the caller.
        unsafe { self.push_with(node, false) }.map(drop)
    }

    /// [`push`](Self::push), also recording in the node the list's length
    /// with it, which it returns. The length is a hint: it is read from the
    /// old head before the section, and a head that was popped and pushed
    /// back at another depth in between goes unnoticed.
    ///
    /// # Safety
    /// As for [`push`](Self::push), and every node ever on these lists must
    /// stay allocated for as long as the lists exist (a node that was the
    /// head may be read after another thread popped it).
    pub(crate) unsafe fn push_counted(&self, node: *mut Node<T>) -> Result<usize, NoSlot> {
        // SAFETY: forwarded to the caller.
        unsafe { self.push_with(node, true) }
    }

    /// # Safety
    /// As for [`push_counted`](Self::push_counted) when `counted`, else as
    /// for [`push`](Self::push).
    #[inline]
    unsafe fn push_with(&self, node: *mut Node<T>, counted: bool) -> Result<usize, NoSlot> {
        // One attempt inline, the rest out of line (as in `pop`).
        if let Some(s) = rseq::start(self.index()) {
            // SAFETY: forwarded to the caller.
            if let Ok(Some(depth)) = unsafe { self.push_once(s, node, counted) } {
                return Ok(depth);
            }
        }
        // SAFETY: forwarded to the caller.
        unsafe { self.push_slow(node, counted) }
    }

    /// # Safety
    /// As for [`push_with`](Self::push_with).
    #[cold]
    #[inline(never)]
    unsafe fn push_slow(&self, node: *mut Node<T>, counted: bool) -> Result<usize, NoSlot> {
        loop {
            // SAFETY: forwarded to the caller.
            let r = rseq::retry(self.index(), |s| unsafe {
                self.push_once(s, node, counted)
            });
            match r {
                Some(Ok(Some(depth))) => return Ok(depth),
                Some(Err(Failure::CompareFailed)) => continue,
                _ => return Err(NoSlot::Unavailable),
            }
        }
    }

    /// One push attempt with `s`: the depth recorded on success (0 when not
    /// `counted`), `Ok(None)` when `s` has no slot.
    ///
    /// # Safety
    /// As for [`push_with`](Self::push_with).
    #[inline(always)]
    unsafe fn push_once(
        &self,
        s: rseq::Start,
        node: *mut Node<T>,
        counted: bool,
    ) -> Result<Option<usize>, Failure> {
        let Some(head) = self.heads.slot(s) else {
            return Ok(None);
        };
        let old = head.load(Ordering::Relaxed);
        let mut depth = 0;
        if counted {
            depth = 1 + if old.is_null() {
                0
            } else {
                // SAFETY: the caller keeps every node that was on the lists
                // allocated; `depth` is atomic because the node may be
                // pushed again meanwhile.
                unsafe { (*old).depth.load(Ordering::Relaxed) }
            };
            // SAFETY: the caller owns `node` until the push commits.
            unsafe { (*node).depth.store(depth, Ordering::Relaxed) };
        }
        // SAFETY: the caller owns `node` until the push commits.
        unsafe { (*node).next.store(old, Ordering::Relaxed) };
        // SAFETY: the heads are written only by rseq operations started with
        // the head's index value (this one and `pop`) and by holders of
        // `rseq::exclusive` for it (`steal`, with atomics); the head is a
        // live, aligned pointer-sized word.
        unsafe { rseq::cmpeqv_storev(s, head.as_ptr().cast(), old as i64, node as i64) }
            .map(|()| Some(depth))
    }

    #[inline]
    pub(crate) fn pop(&self) -> Result<Option<*mut Node<T>>, NoSlot> {
        // One attempt inline; a retry after an abort, or a thread without
        // an area, goes out of line (see `PerCpuCounter::add`).
        if let Some(s) = rseq::start(self.index()).filter(|&s| self.heads.slot(s).is_some()) {
            match self.pop_with(s) {
                Ok(node) => return Ok(node),
                Err(Failure::CompareFailed) => return Ok(None),
                // An abort, or a fallback whose fence failed: the slow path
                // retries the first and reports the second.
                Err(Failure::Aborted | Failure::FenceFailed) => {}
            }
        }
        self.pop_slow()
    }

    /// One pop attempt with `s`: `Ok(None)` when `s` has no slot (the
    /// callers tell that from an empty list).
    #[inline(always)]
    fn pop_with(&self, s: rseq::Start) -> Result<Option<*mut Node<T>>, Failure> {
        let next = core::mem::offset_of!(Node<T>, next) as isize;
        let Some(head) = self.heads.slot(s) else {
            return Ok(None);
        };
        // SAFETY: as in `push`; every node on a list is live (nodes are
        // freed only after they are popped), so `next` can be read.
        unsafe { rseq::cmpnev_storeoffp_load(s, head.as_ptr().cast(), ptr::null_mut(), next) }
            .map(|p| Some(p.cast::<Node<T>>()))
    }

    #[cold]
    #[inline(never)]
    fn pop_slow(&self) -> Result<Option<*mut Node<T>>, NoSlot> {
        match rseq::retry(self.index(), |s| self.pop_with(s)) {
            Some(Ok(Some(node))) => Ok(Some(node)),
            Some(Err(Failure::CompareFailed)) => Ok(None),
            _ => Err(NoSlot::Unavailable),
        }
    }

    /// Takes up to `max` nodes from the list of index value `value`, from
    /// any thread, under [`rseq::exclusive`], linked as a chain (the last
    /// one's `next` is null). Returns the chain's head and length.
    pub(crate) fn steal(&self, value: u32, max: usize) -> (*mut Node<T>, usize) {
        let Some(head) = self.heads.get(value as usize) else {
            return (ptr::null_mut(), 0);
        };
        // Skip empty lists without a system call. The load may be stale;
        // that only makes the steal miss nodes or find none.
        if head.load(Ordering::Relaxed).is_null() || max == 0 {
            return (ptr::null_mut(), 0);
        }
        let Ok(_held) = rseq::exclusive(self.index(), value) else {
            return (ptr::null_mut(), 0);
        };
        // No operation with `value` commits while `_held` lives.
        let first = head.load(Ordering::Acquire);
        let mut last = first;
        let mut n = 0;
        while !last.is_null() {
            n += 1;
            // SAFETY: `last` is on the list, so it is live.
            let next = unsafe { (*last).next.load(Ordering::Relaxed) };
            if n == max || next.is_null() {
                // SAFETY: as above; the chain now ends here.
                unsafe { (*last).next.store(ptr::null_mut(), Ordering::Relaxed) };
                head.store(next, Ordering::Release);
                break;
            }
            last = next;
        }
        (first, n)
    }

    /// Takes every node of every list, with exclusive access (`&mut`).
    pub(crate) fn take_all(&mut self) -> Vec<*mut Node<T>> {
        let mut all = Vec::new();
        for head in self.heads.iter_mut() {
            let mut p = core::mem::replace(head.get_mut(), ptr::null_mut());
            while !p.is_null() {
                all.push(p);
                // SAFETY: `p` is on the list, and nothing else can access it.
                p = unsafe { *(*p).next.get_mut() };
            }
        }
        all
    }

    /// The number of nodes on each list. Exact only while no thread uses
    /// the lists (it walks them without excluding the operations), so it
    /// takes `&mut self`.
    pub(crate) fn counts(&mut self) -> Vec<usize> {
        self.heads
            .iter_mut()
            .map(|head| {
                let mut n = 0;
                let mut p = *head.get_mut();
                while !p.is_null() {
                    n += 1;
                    // SAFETY: as in `take_all`.
                    p = unsafe { *(*p).next.get_mut() };
                }
                n
            })
            .collect()
    }
}
