//! Raw threads: `clone3(CLONE_RSEQ_KTLS)`.

use super::{GroupLayout, KtlsError, features};
use crate::sys::clone3::{CloneArgs, THREAD_FLAGS};
use crate::sys::memory::{self, MAP_ANONYMOUS, MAP_PRIVATE, MAP_STACK, PROT_READ, PROT_WRITE};
use crate::{Errno, abi, arch, sys};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};

/// The size of a raw thread's stack.
const STACK_SIZE: usize = 64 * 1024;
/// The size of a raw thread's TLS block; the thread pointer is its middle.
const TLS_SIZE: usize = 8 * 1024;

/// How [`spawn_raw`] creates the thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// `CLONE_RSEQ_KTLS`: the kernel registers the area.
    Kernel,
    /// No registration: the thread's area is at the right place but
    /// unregistered (the thread may register it with
    /// [`register_raw_thread`](super::register_raw_thread)).
    None,
}

/// A thread made by [`spawn_raw`]; [`RawThread::join`] waits for it and
/// frees its stack.
#[derive(Debug)]
pub struct RawThread {
    /// The mapping: the TLS block, then the stack.
    base: NonNull<u8>,
    len: usize,
    /// The tid word: set by the kernel at creation, cleared (with a futex
    /// wake) when the thread exits.
    tid: Box<AtomicU32>,
    /// The thread's id.
    id: i32,
}

// SAFETY: the handle only owns a mapping and a tid word, which any thread
// may wait on and unmap after the thread exited.
unsafe impl Send for RawThread {}

impl RawThread {
    /// The thread's id (for `tgkill`).
    pub fn tid(&self) -> i32 {
        self.id
    }

    /// Waits until the thread has exited, then unmaps its stack and TLS.
    pub fn join(self) {
        // The work is in `Drop`, which also covers a handle dropped without
        // a join: the kernel writes the tid word and the thread uses the
        // mapping until it exits, so neither may be freed before.
        drop(self);
    }
}

impl Drop for RawThread {
    fn drop(&mut self) {
        loop {
            let t = self.tid.load(Ordering::Acquire);
            if t == 0 {
                break;
            }
            // Returns when the kernel clears the word and wakes us, or at
            // once if the word already changed.
            sys::futex::wait(&self.tid, t);
        }
        // SAFETY: the kernel cleared the tid word in the thread's exit, after
        // which the thread no longer runs user code on this stack or TLS;
        // the mapping is this handle's, unmapped only here.
        let _ = unsafe { memory::munmap(self.base, self.len) };
    }
}

/// Starts a raw thread with `clone3`: its own stack and thread pointer,
/// its rseq area at the group's offset from it, and, with
/// [`Registration::Kernel`], registered by the kernel (`CLONE_RSEQ_KTLS`).
///
/// The area is zeroed, with `cpu_id` and `mm_cid` set to -1 (unwritten),
/// so the thread can tell whether the kernel registered it before it ran.
/// `entry(arg)` runs on the new thread; its result is the thread's exit
/// status (not reported to the parent).
///
/// # Safety
///
/// `entry` runs without a C-library or Rust thread: it must not use
/// thread-local storage (`std::thread`, `println!`, panics and allocation
/// through them), `errno` (so no C-library call that may set it) or
/// C-library thread functions. Of ktl it may call exactly these:
///
/// - [`crate::cpu::cpu_id_at`], [`crate::cpu::node_id_at`] and
///   [`crate::cpu::mm_cid_at`] with `layout.offset`;
/// - [`register_raw_thread`](super::register_raw_thread),
///   [`raw_rseq`](super::raw_rseq) and
///   [`thread_pointer`](super::thread_pointer);
/// - while its area is registered (`cpu_id_at(layout.offset)` is not
///   negative: the kernel registered it with [`Registration::Kernel`], or
///   `register_raw_thread` returned 0), [`crate::rseq::start`] and the seven
///   operations that take its [`Start`](crate::rseq::Start), starting again
///   itself after `Err(Failure::Aborted)`.
///
/// Nothing else: [`crate::rseq::retry`], [`crate::rseq::add_current`],
/// [`crate::rseq::exclusive`], the fences, the per-CPU structures, the
/// accessors without `_at`, and a `start` on an unregistered area all reach
/// code that uses thread-local storage or `errno` (abort counts, the
/// thread's registration, the fallbacks' signal mask). The raw-thread test
/// runs exactly the list above.
///
/// # Errors
///
/// [`KtlsError::NotSupported`] without `CLONE_RSEQ_KTLS` (for
/// [`Registration::Kernel`]), [`KtlsError::LayoutTooFar`],
/// [`KtlsError::Alloc`], and [`KtlsError::Kernel`] from `clone3`.
pub unsafe fn spawn_raw(
    layout: GroupLayout,
    registration: Registration,
    entry: extern "C" fn(usize) -> i32,
    arg: usize,
) -> Result<RawThread, KtlsError> {
    if registration == Registration::Kernel && !features().clone_rseq_ktls() {
        return Err(KtlsError::NotSupported);
    }
    let half = (TLS_SIZE / 2) as isize;
    let len_i = layout.len as isize;
    if layout.offset < -half + 64 || layout.offset + len_i > half {
        return Err(KtlsError::LayoutTooFar(layout.offset));
    }
    let len = TLS_SIZE + STACK_SIZE;
    let mapping = memory::map_anonymous(
        len,
        PROT_READ | PROT_WRITE,
        MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK,
    )
    .map_err(KtlsError::Alloc)?;
    let base = mapping.as_ptr();
    // The thread pointer is the middle of the TLS block (page aligned, so
    // aligned for any area); the stack follows the block and grows down
    // from the end of the mapping.
    // SAFETY: both offsets are inside the mapping of `len` bytes.
    let tp = unsafe { base.add(TLS_SIZE / 2) };
    // SAFETY: as above; the area lies inside the TLS block (checked).
    let area = unsafe { tp.offset(layout.offset) };
    // SAFETY: `tp` and `area` point into the fresh, writable mapping; the
    // area is not registered (the thread does not exist yet).
    unsafe {
        // The TCB's self pointer, which `%fs:0` loads read on x86_64.
        if cfg!(target_arch = "x86_64") {
            tp.cast::<usize>().write(tp.addr());
        }
        area.add(abi::OFFSET_CPU_ID)
            .cast::<u32>()
            .write(abi::RSEQ_CPU_ID_UNINITIALIZED);
        area.add(abi::OFFSET_MM_CID)
            .cast::<u32>()
            .write(abi::RSEQ_CPU_ID_UNINITIALIZED);
    }
    let tid = Box::new(AtomicU32::new(0));
    let mut flags = THREAD_FLAGS;
    if registration == Registration::Kernel {
        flags |= abi::CLONE_RSEQ_KTLS;
    }
    let args = CloneArgs {
        flags,
        child_tid: tid.as_ptr().addr() as u64,
        parent_tid: tid.as_ptr().addr() as u64,
        // SAFETY: inside the mapping.
        stack: unsafe { base.add(TLS_SIZE) }.addr() as u64,
        stack_size: STACK_SIZE as u64,
        tls: tp.addr() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: `args` describes a thread with its own stack and thread
    // pointer inside a mapping that only `RawThread::join` unmaps, after the
    // thread exited; on x86_64 the TLS block's first word holds the thread pointer;
    // the caller guarantees what `entry` does.
    let ret = unsafe {
        arch::clone3_thread((&raw const args).cast(), size_of::<CloneArgs>(), entry, arg)
    };
    if ret < 0 {
        // SAFETY: no thread uses the mapping: clone3 failed.
        let _ = unsafe { memory::munmap(mapping, len) };
        return Err(KtlsError::Kernel(Errno((-ret) as i32)));
    }
    Ok(RawThread {
        base: mapping,
        len,
        tid,
        id: ret as i32,
    })
}
