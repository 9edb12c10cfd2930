//! The KTLS kernel prototype: the thread group's layout and
//! `clone3(CLONE_RSEQ_KTLS)`.
//!
//! Upstream Linux registers each thread's rseq area only when the thread
//! asks, with one `rseq()` system call per thread. The prototype in this
//! repository's `kernel/` directory (a patch series on Linux 6.12) adds the
//! kernel half of the KTLS design:
//!
//! - `rseq(area, len, RSEQ_FLAG_KTLS_LAYOUT, sig)` registers the calling
//!   thread's area, or adopts its identical registration, and records the
//!   thread group's layout: the area's offset from the thread pointer, its
//!   length and its signature ([`set_group_layout`]);
//! - `clone3()` with `CLONE_RSEQ_KTLS` then registers a new thread's area at
//!   its `tls` plus that offset before the thread runs, so it needs no
//!   system call of its own ([`spawn_raw`]);
//! - the kernel writes the thread's ids into areas long enough to hold
//!   them, and the vDSO reads them ([`crate::facts`]);
//! - the auxiliary vector's `AT_KTLS_FEATURES` (`0x4b54`) says which of
//!   these the kernel has ([`features`]).
//!
//! On other kernels [`features`] is empty and the rest returns
//! [`KtlsError::NotSupported`]. When ktl owns the areas on the prototype,
//! it registers each thread with the layout flag, so the layout is set
//! without any call here. `ktl info` reports the features.

use core::fmt;
use core::sync::atomic::{AtomicU32, Ordering};

use crate::abi;
use crate::area::Owner;
use crate::{Errno, arch};

/// The prototype's features, from `AT_KTLS_FEATURES` (empty elsewhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Features(u32);

impl Features {
    /// `rseq()` takes `RSEQ_FLAG_KTLS_LAYOUT`.
    pub fn group_layout(self) -> bool {
        self.0 & abi::KTLS_FEATURE_GROUP_LAYOUT != 0
    }

    /// `clone3()` takes `CLONE_RSEQ_KTLS`.
    pub fn clone_rseq_ktls(self) -> bool {
        self.0 & abi::KTLS_FEATURE_CLONE != 0
    }

    /// The kernel writes the thread facts into areas that cover them (see
    /// [`crate::facts`]).
    pub fn facts(self) -> bool {
        self.0 & abi::KTLS_FEATURE_FACTS != 0
    }

    /// The raw bits.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// Whether the kernel is the prototype at all.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names = Vec::new();
        if self.group_layout() {
            names.push("group-layout");
        }
        if self.clone_rseq_ktls() {
            names.push("clone-rseq-ktls");
        }
        if self.facts() {
            names.push("facts");
        }
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join(", "))
        }
    }
}

/// The running kernel's KTLS prototype features.
pub fn features() -> Features {
    let bits = crate::sys::getauxval(abi::AT_KTLS_FEATURES).unwrap_or(0);
    Features(u32::try_from(bits).unwrap_or(0))
}

/// Errors of the prototype's calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KtlsError {
    /// The kernel lacks the feature (an upstream kernel, or another
    /// architecture than x86_64).
    NotSupported,
    /// The process has no rseq areas (their owner is `Unavailable`).
    NoArea,
    /// The kernel refused: `EBUSY` for a different layout already set,
    /// `EINVAL` for a bad area or flags, `EFAULT` for an unmapped one.
    Kernel(Errno),
    /// The group's area does not fit in the raw thread's TLS block.
    LayoutTooFar(isize),
    /// Mapping the raw thread's stack and TLS block failed.
    Alloc(Errno),
}

impl fmt::Display for KtlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KtlsError::NotSupported => {
                f.write_str("the kernel has no KTLS prototype feature for this")
            }
            KtlsError::NoArea => f.write_str("the process has no rseq areas"),
            KtlsError::Kernel(e) => write!(f, "the kernel refused: {e}"),
            KtlsError::LayoutTooFar(off) => write!(
                f,
                "the area's offset from the thread pointer ({off}) is outside a raw thread's TLS block"
            ),
            KtlsError::Alloc(e) => write!(f, "mapping the thread's stack failed: {e}"),
        }
    }
}

impl std::error::Error for KtlsError {}

/// The thread group's KTLS layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLayout {
    /// The area's offset from the thread pointer.
    pub offset: isize,
    /// The registered length.
    pub len: u32,
    /// The registered signature.
    pub sig: u32,
}

/// `rseq(area, len, RSEQ_FLAG_KTLS_LAYOUT, sig)`: `Ok` or the errno.
///
/// # Safety
///
/// The contract of a registration: `area` must point to `len` bytes that
/// stay valid and are not reused until the calling thread unregisters them
/// or exits, holding no kernel-owned value written by user space.
pub unsafe fn rseq_ktls_layout(area: *mut u8, len: u32, sig: u32) -> Result<(), Errno> {
    // SAFETY: forwarded to the caller's contract.
    unsafe { crate::sys::rseq(area, len, abi::RSEQ_FLAG_KTLS_LAYOUT, sig) }.map_err(Errno)
}

/// Records the process's layout in the kernel: the calling thread's live
/// area, its offset from the thread pointer and its registered length.
///
/// The kernel adopts the thread's registration (the C library's or ktl's),
/// so nothing is registered twice. When ktl owns the areas this already
/// happened at the thread's first use; calling it again is harmless.
///
/// # Errors
///
/// [`KtlsError::NotSupported`] without the feature, [`KtlsError::NoArea`]
/// when the process has no areas, and [`KtlsError::Kernel`] when the kernel
/// refuses (`EBUSY`: another layout is set).
pub fn set_group_layout() -> Result<GroupLayout, KtlsError> {
    if !features().group_layout() {
        return Err(KtlsError::NotSupported);
    }
    let layout = crate::layout();
    let offset = match (layout.owner, layout.offset) {
        (Owner::Libc | Owner::Ktl(_), Some(offset)) => offset,
        _ => return Err(KtlsError::NoArea),
    };
    // Make sure this thread's area is registered (for ktl's own, the first
    // access registers it).
    if crate::area::thread_area().is_none() {
        return Err(KtlsError::NoArea);
    }
    let len = layout.registered_len;
    let area = crate::area::area_ptr(offset);
    // SAFETY: `area` is this thread's live registered area, with its
    // registered length and the signature it was registered with, so the
    // kernel only adopts the registration and records the layout.
    unsafe { rseq_ktls_layout(area, len, abi::RSEQ_SIG) }.map_err(KtlsError::Kernel)?;
    let gl = GroupLayout {
        offset,
        len,
        sig: abi::RSEQ_SIG,
    };
    LAYOUT_SET.store(1, Ordering::Relaxed);
    Ok(gl)
}

/// 1 once ktl has recorded the group's layout in this process.
pub(crate) static LAYOUT_SET: AtomicU32 = AtomicU32::new(0);

/// Whether ktl recorded the group's layout in this process (by
/// [`set_group_layout`], or by registering its own areas with the flag).
pub fn layout_set() -> bool {
    LAYOUT_SET.load(Ordering::Relaxed) != 0
}

/// `struct clone_args` (the first published version, 64 bytes, plus
/// `set_tid`/`set_tid_size`/`cgroup`, 88 bytes).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

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
    /// [`register_raw_thread`]).
    None,
}

/// A thread made by [`spawn_raw`]; [`RawThread::join`] waits for it and
/// frees its stack.
#[derive(Debug)]
pub struct RawThread {
    /// The mapping: the TLS block, then the stack.
    base: *mut u8,
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
            // SAFETY: FUTEX_WAIT on a live, aligned u32 with no timeout; it
            // returns when the kernel clears the word and wakes us, or at
            // once if the word already changed.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    self.tid.as_ptr(),
                    libc::FUTEX_WAIT,
                    t,
                    core::ptr::null::<libc::timespec>(),
                )
            };
        }
        // SAFETY: the kernel cleared the tid word in the thread's exit, after
        // which the thread no longer runs user code on this stack or TLS.
        unsafe { libc::munmap(self.base.cast(), self.len) };
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
/// - [`register_raw_thread`], [`raw_rseq`] and [`thread_pointer`];
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
/// [`Registration::Kernel`]) or off x86_64, [`KtlsError::LayoutTooFar`],
/// [`KtlsError::Alloc`], and [`KtlsError::Kernel`] from `clone3`.
pub unsafe fn spawn_raw(
    layout: GroupLayout,
    registration: Registration,
    entry: extern "C" fn(usize) -> i32,
    arg: usize,
) -> Result<RawThread, KtlsError> {
    if !cfg!(target_arch = "x86_64")
        || (registration == Registration::Kernel && !features().clone_rseq_ktls())
    {
        return Err(KtlsError::NotSupported);
    }
    let half = (TLS_SIZE / 2) as isize;
    let len_i = layout.len as isize;
    if layout.offset < -half + 64 || layout.offset + len_i > half {
        return Err(KtlsError::LayoutTooFar(layout.offset));
    }
    let len = TLS_SIZE + STACK_SIZE;
    // SAFETY: a fresh anonymous mapping touches no existing memory.
    let base = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(KtlsError::Alloc(Errno(last_errno())));
    }
    let base = base.cast::<u8>();
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
        tp.cast::<usize>().write(tp.addr());
        area.add(abi::OFFSET_CPU_ID)
            .cast::<u32>()
            .write(abi::RSEQ_CPU_ID_UNINITIALIZED);
        area.add(abi::OFFSET_MM_CID)
            .cast::<u32>()
            .write(abi::RSEQ_CPU_ID_UNINITIALIZED);
    }
    let tid = Box::new(AtomicU32::new(0));
    let mut flags = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM
        | libc::CLONE_SETTLS
        | libc::CLONE_PARENT_SETTID
        | libc::CLONE_CHILD_CLEARTID) as u64;
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
    // thread exited; the TLS block's first word holds the thread pointer;
    // the caller guarantees what `entry` does.
    let ret = unsafe {
        arch::clone3_thread((&raw const args).cast(), size_of::<CloneArgs>(), entry, arg)
    };
    if ret < 0 {
        // SAFETY: no thread uses the mapping: clone3 failed.
        unsafe { libc::munmap(base.cast(), len) };
        return Err(KtlsError::Kernel(Errno((-ret) as i32)));
    }
    Ok(RawThread {
        base,
        len,
        tid,
        id: ret as i32,
    })
}

/// A raw `rseq(area, len, flags, sig)` system call, without the C library
/// (usable in a raw thread): 0 or a negative errno.
///
/// # Safety
///
/// The contract of `rseq(2)` for these arguments: a registration's area must
/// stay valid and unreused until the thread unregisters it or exits.
pub unsafe fn raw_rseq(area: usize, len: u32, flags: i32, sig: u32) -> isize {
    // SAFETY: forwarded to the caller's contract.
    unsafe {
        arch::syscall4(
            libc::SYS_rseq as usize,
            area,
            len as usize,
            flags as u32 as usize,
            sig as usize,
        )
    }
}

/// The calling thread's thread pointer (the FS base on x86_64), for raw
/// threads that compute their area's address.
pub fn thread_pointer() -> usize {
    arch::thread_pointer()
}

/// In a raw thread, registers its area (at `layout.offset` from its thread
/// pointer) with a raw `rseq()` system call, without the C library: the
/// registration that `CLONE_RSEQ_KTLS` saves. Returns 0 or a negative
/// errno.
///
/// # Safety
///
/// The calling thread must be a raw thread from [`spawn_raw`] with this
/// `layout`, whose area is not registered yet.
pub unsafe fn register_raw_thread(layout: GroupLayout) -> isize {
    let area = arch::thread_pointer().wrapping_add_signed(layout.offset);
    // SAFETY: the caller's contract: the area at that offset lies in the
    // calling raw thread's TLS block, which stays mapped until the thread
    // exits; the thread registers its own area once and never writes its
    // kernel-owned fields.
    unsafe { raw_rseq(area, layout.len, 0, layout.sig) }
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EINVAL)
}
