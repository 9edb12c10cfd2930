//! A per-CPU stack: push and pop on the current CPU's list with one
//! restartable sequence each.

use super::list::{Heads, Node};
use crate::rseq::Index;
use core::mem::MaybeUninit;
use std::sync::Mutex;

/// A stack per CPU (or per concurrency id).
///
/// [`push`](Self::push) and [`pop`](Self::pop) work on the list of the CPU
/// the thread runs on, each with one restartable sequence: no lock, no
/// atomic instruction, no cache line shared with other CPUs. That makes it a
/// good free list: values pushed on a CPU are popped there again, while they
/// are still in its caches. [`pop_any`](Self::pop_any) looks at the other
/// CPUs too when the current one is empty, taking their values under
/// [`rseq::exclusive`](crate::rseq::exclusive) (a system call).
///
/// The order is last in, first out per CPU; across CPUs there is none. A
/// thread that cannot run rseq operations at all pushes and pops on one
/// shared, locked list instead.
///
/// # Why there is no ABA hazard
///
/// A lock-free stack that pops with compare-and-swap reads the head `A`,
/// reads `A.next == B`, then swaps the head from `A` to `B`. In between,
/// other threads may pop `A` and `B` and push `A` back: the swap still sees
/// `A` and installs `B`, which is no longer on the stack. Here a pop reads
/// the head, reads its successor and stores the new head in one critical
/// section on the list's own CPU. Only a section running on that CPU
/// commits to that list, and a section that another thread interleaved with
/// was preempted, so it aborts instead of committing; threads without an
/// area and thieves on other CPUs exclude the sections with the index
/// value's gate and a fence. A push only compares the head it linked with
/// the current head, so a head that changed and came back is still the
/// right successor.
///
/// A pop keeps the node it emptied on a second per-CPU list, of spare
/// nodes, and a push takes its node from there (one more restartable
/// sequence each), so pushes and pops allocate nothing once the stack has
/// held as many values as it will hold at once. The spare nodes are freed
/// with the stack.
///
/// Like a `Mutex<Vec<T>>`, it is `Send` and `Sync` when `T` is `Send`: values
/// move between threads through it. Values that must stay on their thread
/// cannot go in a shared stack:
///
/// ```compile_fail
/// fn shared<T: Sync>(_: &T) {}
/// shared(&ktl::percpu::PerCpuStack::<std::rc::Rc<u8>>::new());
/// ```
///
/// ```
/// use ktl::percpu::PerCpuStack;
///
/// let free = PerCpuStack::new();
/// free.push(1);
/// free.push(2);
/// // Both went to this CPU's stack, unless the thread moved in between.
/// let mut got = vec![free.pop_any().unwrap(), free.pop_any().unwrap()];
/// got.sort();
/// assert_eq!(got, [1, 2]);
/// assert_eq!(free.pop_any(), None);
/// ```
pub struct PerCpuStack<T> {
    /// The values' lists: every node's value is initialized.
    heads: Heads<MaybeUninit<T>>,
    /// The spare nodes' lists: no node's value is initialized.
    spare: Heads<MaybeUninit<T>>,
    /// The stack of threads that cannot run operations.
    shared: Mutex<Vec<T>>,
}

impl<T> PerCpuStack<T> {
    /// An empty stack per CPU.
    pub fn new() -> Self {
        Self::with_index(Index::CpuId)
    }

    /// An empty stack per value of `index` (with [`Index::MmCid`] on a
    /// kernel without it, per CPU).
    pub fn with_index(index: Index) -> Self {
        PerCpuStack {
            heads: Heads::new(index),
            spare: Heads::new(index),
            shared: Mutex::new(Vec::new()),
        }
    }

    /// The index the lists are chosen by.
    pub fn index(&self) -> Index {
        self.heads.index()
    }

    /// Pushes `value` onto the current CPU's stack.
    pub fn push(&self, value: T) {
        let node = match self.spare.pop() {
            Ok(Some(node)) => node,
            _ => Node::alloc(MaybeUninit::uninit()),
        };
        // SAFETY: the node is this thread's (taken off the spare list, which
        // unlinked it, or fresh from `Node::alloc`); its value is not
        // initialized, so nothing is overwritten that needs a drop.
        unsafe { (*node).value = MaybeUninit::new(value) };
        // SAFETY: an exclusively owned node from `Node::alloc`, whose value
        // is initialized, as the values' lists need.
        if unsafe { self.heads.push(node) }.is_err() {
            // SAFETY: the push did not take the node, so it is still ours,
            // with its value initialized just above.
            let node = unsafe { Box::from_raw(node) };
            // SAFETY: as above; the box is freed without dropping the value
            // (a `MaybeUninit`), which moves out here.
            self.shared_push(unsafe { node.value.assume_init_read() });
        }
    }

    /// Takes the value out of `node`, a node this thread unlinked from the
    /// values' lists, and keeps the node as a spare (or frees it, in a thread
    /// that cannot run operations).
    ///
    /// # Safety
    /// `node` must come from `Node::alloc`, be owned by the caller, and hold
    /// an initialized value.
    unsafe fn take(&self, node: *mut Node<MaybeUninit<T>>) -> T {
        // SAFETY: the caller's contract: the value is initialized, and read
        // once; the node then holds no value.
        let value = unsafe { (*node).value.assume_init_read() };
        // SAFETY: the node is owned here and its value is no longer
        // initialized, as the spare lists need.
        if unsafe { self.spare.push(node) }.is_err() {
            // SAFETY: the push did not take it; freeing it drops no value.
            drop(unsafe { Box::from_raw(node) });
        }
        value
    }

    #[cold]
    fn shared_push(&self, value: T) {
        self.shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(value);
    }

    #[cold]
    fn shared_pop(&self) -> Option<T> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    /// Pops the value last pushed on the current CPU's stack, or `None`
    /// when it is empty (other CPUs may still hold values; see
    /// [`pop_any`](Self::pop_any)).
    pub fn pop(&self) -> Option<T> {
        match self.heads.pop() {
            Ok(node) => node.map(|p| {
                // SAFETY: the pop unlinked `p`, so this thread owns it; it
                // came from `Node::alloc` and holds a value (values' list).
                unsafe { self.take(p) }
            }),
            Err(_) => self.shared_pop(),
        }
    }

    /// Pops from the current CPU's stack, else takes a value from another
    /// CPU's stack (or the shared one), else returns `None`: the stack was
    /// empty when each list was looked at.
    pub fn pop_any(&self) -> Option<T> {
        if let Some(v) = self.pop() {
            return Some(v);
        }
        if let Some(v) = self.shared_pop() {
            return Some(v);
        }
        for value in 0..self.heads.len() as u32 {
            let (node, n) = self.heads.steal(value, 1);
            if n == 1 {
                // SAFETY: `steal` unlinked the node, so it is ours, with a
                // value (values' list).
                return Some(unsafe { self.take(node) });
            }
        }
        None
    }

    /// The number of values, with exclusive access.
    pub fn len(&mut self) -> usize {
        self.heads.counts().iter().sum::<usize>()
            + self
                .shared
                .get_mut()
                .map_or_else(|e| e.into_inner().len(), |v| v.len())
    }

    /// Whether there are no values, with exclusive access.
    pub fn is_empty(&mut self) -> bool {
        self.len() == 0
    }

    /// Takes every value out, CPU by CPU, with exclusive access.
    pub fn drain(&mut self) -> Vec<T> {
        let mut all: Vec<T> = self
            .heads
            .take_all()
            .into_iter()
            // SAFETY: `take_all` unlinked every node; each came from
            // `Node::alloc`, is now owned here and holds a value.
            .map(|p| unsafe { self.take_owned(p) })
            .collect();
        let shared = self.shared.get_mut().unwrap_or_else(|e| e.into_inner());
        all.append(shared);
        all
    }
}

impl<T> PerCpuStack<T> {
    /// Takes the value out of `node` and frees it.
    ///
    /// # Safety
    /// As for [`take`](Self::take).
    unsafe fn take_owned(&self, node: *mut Node<MaybeUninit<T>>) -> T {
        // SAFETY: the caller's contract.
        let node = unsafe { Box::from_raw(node) };
        // SAFETY: the value is initialized (the caller's contract) and moves
        // out once; the box is then freed without dropping it again.
        unsafe { node.value.assume_init_read() }
    }
}

impl<T> Default for PerCpuStack<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Drop for PerCpuStack<T> {
    fn drop(&mut self) {
        for p in self.heads.take_all() {
            // SAFETY: as in `drain`.
            drop(unsafe { self.take_owned(p) });
        }
        for p in self.spare.take_all() {
            // SAFETY: unlinked by `take_all`, from `Node::alloc`, and owned
            // here; a spare node holds no value, so nothing else is dropped.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

impl<T> std::fmt::Debug for PerCpuStack<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerCpuStack")
            .field("index", &self.index())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_value_comes_out_once_under_contention() {
        for index in [Index::CpuId, Index::MmCid] {
            let stack = PerCpuStack::with_index(index);
            let popped = Mutex::new(Vec::new());
            std::thread::scope(|s| {
                for t in 0..6usize {
                    let (stack, popped) = (&stack, &popped);
                    s.spawn(move || {
                        let mut mine = Vec::new();
                        for i in 0..5_000 {
                            stack.push(t * 1_000_000 + i);
                            if i % 3 == 0 {
                                mine.extend(stack.pop_any());
                            }
                        }
                        popped.lock().unwrap().extend(mine);
                    });
                }
            });
            let mut stack = stack;
            let mut all = popped.into_inner().unwrap();
            all.extend(stack.drain());
            assert_eq!(all.len(), 6 * 5_000, "{index:?}");
            let distinct: HashSet<_> = all.iter().collect();
            assert_eq!(distinct.len(), all.len(), "a value came out twice");
            assert!(stack.is_empty());
        }
    }

    /// Before spare nodes, each push allocated a node and each pop freed
    /// one: the spare lists were not there to count.
    #[test]
    fn popped_nodes_are_reused_and_their_number_stays_bounded() {
        // Every thread that can run the operations keeps spares: with live
        // critical sections and on the fenced and locked paths alike (under
        // qemu-user, which has no rseq, the locked path keeps them too).
        let operations = crate::rseq::start(Index::CpuId).is_some();
        let mut stack = PerCpuStack::new();
        stack.push(7u64);
        assert_eq!(stack.pop_any(), Some(7));
        let spares: usize = stack.spare.counts().iter().sum();
        assert_eq!(
            spares,
            usize::from(operations),
            "the emptied node kept as a spare"
        );
        for i in 0..10_000u64 {
            stack.push(i);
            assert_eq!(stack.pop_any(), Some(i));
        }
        let spares: usize = stack.spare.counts().iter().sum();
        // About one spare per CPU's list: a push takes the spare of the CPU
        // it runs on and a pop leaves one there; a thread that moves between
        // a push and its pop may leave one more (a few, here). A push that
        // took no spare would leave 10,001.
        assert!(spares <= stack.spare.len() + 16, "{spares} spare nodes");
        assert!(stack.is_empty());
    }

    #[test]
    fn drop_frees_what_is_left() {
        struct Tracked(Arc<AtomicUsize>);
        impl Drop for Tracked {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let dropped = Arc::new(AtomicUsize::new(0));
        let stack = PerCpuStack::new();
        for _ in 0..10 {
            stack.push(Tracked(dropped.clone()));
        }
        let mut stack = stack;
        assert_eq!(stack.len(), 10);
        drop(stack.pop_any());
        assert_eq!(dropped.load(Ordering::Relaxed), 1);
        drop(stack);
        assert_eq!(dropped.load(Ordering::Relaxed), 10);
    }
}
