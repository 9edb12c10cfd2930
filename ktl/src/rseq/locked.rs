//! The fallbacks of the operations: a gate (a lock) per index value.
//!
//! Every index value has a *gate*, a word that is 0 when open. A thread
//! without a live area runs each operation here instead of as a critical
//! section: it closes its index value's gate (taking it like a spinlock),
//! does the same work with atomic accesses, and opens the gate again.
//! Operations on one index value are then mutually exclusive, which is the
//! guarantee the critical sections give; they never abort. There are two
//! cases:
//!
//! - **Locked**: no thread of the process can have an area (the owner is
//!   [`Unavailable`](crate::Owner::Unavailable)). No critical section runs
//!   anywhere, so the gate alone excludes the other operations.
//! - **Fenced**: this thread has no area, but other threads run critical
//!   sections (this thread's registration failed, for example under a
//!   filter that allows rseq for the first thread only, or it was released
//!   with [`area::release_current_thread`](crate::area::release_current_thread)).
//!   Every critical section checks its index value's gate (in two steps,
//!   below) right after its index check, inside the section, and aborts
//!   while the gate is closed.
//!   After closing the gate, this thread runs the membarrier rseq fence on
//!   the CPU of the index value (on every CPU for `mm_cid`, whose values
//!   are not tied to a CPU). When the fence returns, every section that
//!   read the gate open has committed or aborted, and every later section
//!   reads it closed, so the operation runs alone. The section's gate load
//!   is an acquire load and the gate is opened with a release store, so the
//!   next section sees this operation's writes. This needs
//!   [`FenceKind::Rseq`](super::fence::FenceKind::Rseq); without it a
//!   thread without an area gets `None` from [`start`](super::start).
//!
//! The sections check the gates in two steps. The process counts its closed
//! gates in one word ([`arch::gates_closed`]), which a gate adds to when it
//! closes (before the fence) and takes from once it has opened (a release).
//! The fast variant of every section reads only that count, next to its
//! index check; while it is not 0 the section leaves, out of line, for the
//! gated variant, which checks its own value's gate as described above. So
//! a section pays for one load of a word that every thread shares read-only,
//! and sections of values whose gates are open go on committing, one call
//! out of line slower, while some gate is closed.
//!
//! The fenced case costs a system call per operation: it exists so that
//! every thread of a process can run the operations, not for speed.
//!
//! A closed gate holds its holder's thread number, and the holder may take
//! it again (two index values that share a gate, or an operation under its
//! own [`Exclusive`]); it opens when the holder's last guard of it is
//! dropped. Signals are blocked from a thread's first guard to its last, so
//! a signal handler may run operations too: it cannot interrupt the thread
//! while the thread holds a gate the handler would wait for. A `fork` child
//! starts with every gate open but those the forking thread held: the
//! others belonged to threads the child does not have.
//!
//! If the fence fails (a seccomp filter installed in this thread after the
//! process registered for it), the operation gives the gate back and fails
//! with [`Failure::FenceFailed`], which [`retry`](super::retry) returns: it is not
//! an abort, and retrying would only fail again.

use super::fence::{self, FenceError};
use super::{Commit, Failure, Index};
use crate::arch;
use crate::sys::fork;
use crate::sys::signals::{self, SignalMask};
use core::cell::Cell;
use core::sync::atomic::{AtomicI64, AtomicPtr, AtomicU32, AtomicUsize, Ordering};
use std::sync::Once;

/// The number of gates. Index values wrap around modulo this number, which
/// only makes values that share a gate wait for each other: a CPU number or
/// `mm_cid` of 4096 or more is rare.
const GATES: usize = 4096;

/// One gate, alone on its cache line.
#[repr(align(64))]
struct Gate {
    /// 0 when open; while closed, the holding thread's number
    /// ([`thread_number`]). The critical sections test it for 0.
    word: AtomicU32,
    /// How many more times the holder has taken the gate while holding it:
    /// index values that share a gate, or an operation of the thread that
    /// holds [`Exclusive`] for the value. Only the holder touches it.
    again: AtomicU32,
}

/// The gates, in zero-initialized memory: only the pages of the gates in
/// use are ever touched.
static GATE: [Gate; GATES] = [const {
    Gate {
        word: AtomicU32::new(0),
        again: AtomicU32::new(0),
    }
}; GATES];

/// The highest gate number ever closed, so that a `fork` child opens only
/// those it may find closed.
static HIGHEST: AtomicUsize = AtomicUsize::new(0);

/// The gate of index value `value`, for the critical sections: a valid,
/// aligned `u32` for the life of the process.
#[inline(always)]
pub(super) fn gate(value: u32) -> *const u32 {
    GATE[value as usize % GATES].word.as_ptr()
}

/// Opens every gate that may be closed, but those the forking thread holds;
/// runs in a `fork` child, where only the forking thread exists. A gate
/// another thread held belonged to a thread the child does not have; the
/// forking thread's own guards (an [`Exclusive`] it held across the fork)
/// still live in the child and open theirs when dropped.
extern "C" fn open_all_in_child() {
    let me = thread_number();
    let highest = HIGHEST.load(Ordering::Relaxed);
    let mut mine = 0;
    for g in &GATE[..=highest.min(GATES - 1)] {
        let word = g.word.load(Ordering::Relaxed);
        if word == me {
            mine += 1;
        } else if word != 0 {
            g.again.store(0, Ordering::Relaxed);
            g.word.store(0, Ordering::Relaxed);
        }
    }
    arch::gates_closed().store(mine, Ordering::Relaxed);
}

/// The next thread number to hand out.
static NEXT_NUMBER: AtomicU32 = AtomicU32::new(1);

thread_local! {
    /// This thread's number, 0 until it first takes a gate.
    static NUMBER: Cell<u32> = const { Cell::new(0) };
    /// How many guards this thread holds; signals are blocked while it is
    /// not 0.
    static BLOCKED: Cell<u32> = const { Cell::new(0) };
    /// The signal mask to restore when the last guard is dropped.
    static SAVED_MASK: Cell<SignalMask> = const { Cell::new(SignalMask::EMPTY) };
}

/// The calling thread's number for the gates: not 0, and distinct between
/// the threads of the process (numbers are not reused; they would repeat
/// only after 2^32 - 1 threads).
fn thread_number() -> u32 {
    NUMBER.with(|n| {
        if n.get() == 0 {
            let mut next = NEXT_NUMBER.fetch_add(1, Ordering::Relaxed);
            if next == 0 {
                next = NEXT_NUMBER.fetch_add(1, Ordering::Relaxed);
            }
            n.set(next);
        }
        n.get()
    })
}

/// Blocks every signal in the calling thread for the first guard it takes;
/// a nested guard finds them blocked already.
fn block_signals() {
    let depth = BLOCKED.with(Cell::get);
    if depth == 0 {
        let old = signals::block_all();
        // Signals are blocked from here on, so no handler of this thread
        // runs between these updates.
        SAVED_MASK.with(|m| m.set(old));
    }
    BLOCKED.with(|b| b.set(depth + 1));
}

/// Undoes one [`block_signals`]: the last one restores the mask the first
/// one saved, whatever order the guards are dropped in.
fn unblock_signals() {
    let depth = BLOCKED.with(Cell::get).saturating_sub(1);
    BLOCKED.with(|b| b.set(depth));
    if depth == 0 {
        // Restores the mask saved by the first `block_signals`.
        let old = SAVED_MASK.with(Cell::get);
        signals::set_mask(&old);
    }
}

/// What a fallback operation needs of its start: 8 bytes, passed in one
/// register, so that the inlined fast path never spills its `Start` to
/// pass it to the out-of-line fallbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Key {
    pub(super) index: Index,
    pub(super) value: u32,
    /// Whether other threads run critical sections, so closing the gate
    /// must be followed by the fence.
    pub(super) fenced: bool,
}

/// Holds the gate of one index value, with signals blocked, until dropped.
///
/// A thread may hold several guards, in any order: the gates are
/// re-entrant for their holder (two index values may share one), and
/// signals stay blocked until the thread's last guard is dropped.
struct Guard {
    gate: &'static Gate,
}

impl Guard {
    /// Closes `key`'s gate, or takes it again if this thread holds it, and
    /// for a fenced key runs the fence.
    ///
    /// Returns the fence's error, having given the gate back, if the fence
    /// fails: the process registered for the fence, so that happens only
    /// when something refuses the system call, such as a seccomp filter
    /// installed in this thread after the registration.
    fn acquire(key: Key) -> Result<Guard, FenceError> {
        static AT_FORK: Once = Once::new();
        AT_FORK.call_once(|| {
            // SAFETY: registers a child handler that only touches the gates
            // and this thread's number. If registration fails (ENOMEM), a
            // fork child may inherit a closed gate, as with any lock held
            // across fork.
            let _ = unsafe { fork::at_fork(None, None, Some(open_all_in_child)) };
        });
        let n = key.value as usize % GATES;
        HIGHEST.fetch_max(n, Ordering::Relaxed);
        let gate = &GATE[n];
        let me = thread_number();
        block_signals();
        // Only this thread stores its own number into a gate, and only it
        // opens a gate holding it, so the load cannot race with a change to
        // or from `me`.
        if gate.word.load(Ordering::Relaxed) == me {
            gate.again.fetch_add(1, Ordering::Relaxed);
        } else {
            let mut spins = 0u32;
            while gate
                .word
                .compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                spins += 1;
                if spins.is_multiple_of(64) {
                    std::thread::yield_now();
                } else {
                    core::hint::spin_loop();
                }
            }
            // Counted after the gate closed and before the fence: a section
            // that starts after the fence reads the count, leaves for the
            // gated variant and finds this gate closed.
            arch::gates_closed().fetch_add(1, Ordering::Relaxed);
        }
        let guard = Guard { gate };
        // A gate taken again is fenced again: the first holder fenced the
        // CPU of its own value, which may not be this one's.
        if key.fenced {
            match key.index {
                Index::CpuId => fence::fence_cpu(key.value).or_else(|_| fence::fence_all()),
                Index::MmCid => fence::fence_all(),
            }?;
        }
        Ok(guard)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Whichever of this thread's guards of the gate is dropped first,
        // the last one opens it.
        if self.gate.again.load(Ordering::Relaxed) > 0 {
            self.gate.again.fetch_sub(1, Ordering::Relaxed);
        } else {
            self.gate.word.store(0, Ordering::Release);
            // Released after the gate opened: a fast section that reads the
            // count 0 sees what the holder wrote, as a gated one that reads
            // the gate open does.
            arch::gates_closed().fetch_sub(1, Ordering::Release);
        }
        unblock_signals();
    }
}

/// Exclusive access to the data of one index value; see
/// [`exclusive`](super::exclusive).
pub struct Exclusive {
    _guard: Guard,
    index: Index,
    value: u32,
    /// The guard restores this thread's signal mask: it must be dropped
    /// in the thread that took it.
    _not_send: core::marker::PhantomData<*const ()>,
}

impl Exclusive {
    pub(super) fn take(key: Key) -> Result<Exclusive, FenceError> {
        Ok(Exclusive {
            _guard: Guard::acquire(key)?,
            index: key.index,
            value: key.value,
            _not_send: core::marker::PhantomData,
        })
    }

    /// The index whose value is held.
    pub fn index(&self) -> Index {
        self.index
    }

    /// The index value held.
    pub fn value(&self) -> u32 {
        self.value
    }
}

impl core::fmt::Debug for Exclusive {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Exclusive")
            .field("index", &self.index)
            .field("value", &self.value)
            .finish()
    }
}

/// An atomic view of a word the caller's contract makes valid and aligned.
///
/// # Safety
/// `p` must be valid for reads and writes of an `i64`, 8-byte aligned, and
/// accessed concurrently only atomically (the operations' contract).
unsafe fn word<'a>(p: *mut i64) -> &'a AtomicI64 {
    // SAFETY: forwarded to the caller's contract.
    unsafe { AtomicI64::from_ptr(p) }
}

/// [`super::add`] under the lock.
///
/// # Safety
/// The contract of [`super::add`].
#[cold]
#[inline(never)]
pub(super) unsafe fn add(key: Key, v: *mut i64, count: i64) -> Result<(), Failure> {
    let _g = Guard::acquire(key).map_err(|_| Failure::FenceFailed)?;
    // SAFETY: the operation's contract.
    let w = unsafe { word(v) };
    w.store(
        w.load(Ordering::Relaxed).wrapping_add(count),
        Ordering::Relaxed,
    );
    Ok(())
}

/// [`super::cmpeqv_storev`] under the lock.
///
/// # Safety
/// The contract of [`super::cmpeqv_storev`].
#[cold]
#[inline(never)]
pub(super) unsafe fn cmpeqv_storev(
    key: Key,
    v: *mut i64,
    expect: i64,
    newv: i64,
) -> Result<(), Failure> {
    let _g = Guard::acquire(key).map_err(|_| Failure::FenceFailed)?;
    // SAFETY: the operation's contract.
    let w = unsafe { word(v) };
    if w.load(Ordering::Relaxed) != expect {
        return Err(Failure::CompareFailed);
    }
    w.store(newv, Ordering::Relaxed);
    Ok(())
}

/// [`super::cmpnev_storeoffp_load`] under the lock.
///
/// # Safety
/// The contract of [`super::cmpnev_storeoffp_load`].
#[cold]
#[inline(never)]
pub(super) unsafe fn cmpnev_storeoffp_load(
    key: Key,
    head: *mut *mut u8,
    expectnot: *mut u8,
    next_offset: isize,
) -> Result<*mut u8, Failure> {
    let _g = Guard::acquire(key).map_err(|_| Failure::FenceFailed)?;
    // SAFETY: the operation's contract: `head` is a valid, aligned pointer
    // slot, and a node on the list is valid for a pointer read at
    // `next_offset`.
    unsafe {
        let h = AtomicPtr::from_ptr(head);
        let node = h.load(Ordering::Relaxed);
        if node == expectnot {
            return Err(Failure::CompareFailed);
        }
        let next =
            AtomicPtr::from_ptr(node.offset(next_offset).cast::<*mut u8>()).load(Ordering::Relaxed);
        h.store(next, Ordering::Relaxed);
        Ok(node)
    }
}

/// [`super::offset_deref_addv`] under the lock.
///
/// # Safety
/// The contract of [`super::offset_deref_addv`].
#[cold]
#[inline(never)]
pub(super) unsafe fn offset_deref_addv(
    key: Key,
    ptr: *mut *mut u8,
    offset: isize,
    inc: i64,
) -> Result<(), Failure> {
    let _g = Guard::acquire(key).map_err(|_| Failure::FenceFailed)?;
    // SAFETY: the operation's contract.
    unsafe {
        let base = AtomicPtr::from_ptr(ptr).load(Ordering::Relaxed);
        let w = word(base.offset(offset).cast::<i64>());
        w.store(
            w.load(Ordering::Relaxed).wrapping_add(inc),
            Ordering::Relaxed,
        );
    }
    Ok(())
}

/// [`super::cmpeqv_cmpeqv_storev`] under the lock.
///
/// # Safety
/// The contract of [`super::cmpeqv_cmpeqv_storev`].
#[cold]
#[inline(never)]
pub(super) unsafe fn cmpeqv_cmpeqv_storev(
    key: Key,
    v: *mut i64,
    expect: i64,
    v2: *const i64,
    expect2: i64,
    newv: i64,
) -> Result<(), Failure> {
    let _g = Guard::acquire(key).map_err(|_| Failure::FenceFailed)?;
    // SAFETY: the operation's contract.
    unsafe {
        let w = word(v);
        if w.load(Ordering::Relaxed) != expect
            || word(v2.cast_mut()).load(Ordering::Relaxed) != expect2
        {
            return Err(Failure::CompareFailed);
        }
        w.store(newv, Ordering::Relaxed);
    }
    Ok(())
}

fn order(commit: Commit) -> Ordering {
    match commit {
        Commit::Relaxed => Ordering::Relaxed,
        Commit::Release => Ordering::Release,
    }
}

/// [`super::cmpeqv_trystorev_storev`] under the lock.
///
/// # Safety
/// The contract of [`super::cmpeqv_trystorev_storev`].
#[cold]
#[inline(never)]
pub(super) unsafe fn cmpeqv_trystorev_storev(
    key: Key,
    v: *mut i64,
    expect: i64,
    v2: *mut i64,
    newv2: i64,
    newv: i64,
    commit: Commit,
) -> Result<(), Failure> {
    let _g = Guard::acquire(key).map_err(|_| Failure::FenceFailed)?;
    // SAFETY: the operation's contract.
    unsafe {
        let w = word(v);
        if w.load(Ordering::Relaxed) != expect {
            return Err(Failure::CompareFailed);
        }
        word(v2).store(newv2, Ordering::Relaxed);
        w.store(newv, order(commit));
    }
    Ok(())
}

/// [`super::cmpeqv_trymemcpy_storev`] under the lock.
///
/// # Safety
/// The contract of [`super::cmpeqv_trymemcpy_storev`].
#[cold]
#[inline(never)]
pub(super) unsafe fn cmpeqv_trymemcpy_storev(
    key: Key,
    v: *mut i64,
    expect: i64,
    dst: *mut u8,
    src: &[u8],
    newv: i64,
    commit: Commit,
) -> Result<(), Failure> {
    let _g = Guard::acquire(key).map_err(|_| Failure::FenceFailed)?;
    // SAFETY: the operation's contract: `dst` is valid for `src.len()` bytes
    // of writes that nothing else accesses until the commit publishes them.
    unsafe {
        let w = word(v);
        if w.load(Ordering::Relaxed) != expect {
            return Err(Failure::CompareFailed);
        }
        core::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len());
        w.store(newv, order(commit));
    }
    Ok(())
}
