//! `libktl`: the C ABI of ktl.
//!
//! This crate builds `libktl.so` and `libktl.a` for programs and libraries
//! written in C or any language with a C foreign-function interface. The
//! header `include/ktl.h` is generated from this file by cbindgen (the
//! comments on the items below are the header's documentation), and a test
//! fails when the committed header is stale.
//!
//! Conventions of every function:
//!
//! - Errors are negative errno values (`-EINVAL`, ...). Nothing changes
//!   `errno`: it is saved and restored around the calls into ktl.
//! - A NULL pointer argument gives `-EINVAL`.
//! - No Rust panic crosses the boundary: a panic inside ktl, which would be a
//!   bug, is caught and gives `-EIO`.
//! - Every function may be called from any thread, including threads that C
//!   code creates with `pthread_create`; when ktl owns the rseq areas, the
//!   first call in a thread registers that thread's area.
//!
//! `libktl.so` is linked with `-z nodelete`: once loaded, it stays mapped
//! until the process exits, whatever `dlclose` is called. Threads' rseq areas
//! may live in its thread-local block, and the kernel writes into them until
//! each thread exits.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

use core::ffi::{c_int, c_void};
use core::mem::{MaybeUninit, align_of, size_of};
use core::ptr;
use ktl::percpu::{PerCpuCounter, PerCpuHistogram};
use ktl::rseq::Index;
use ktl::{Features, Owner};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// `ktl_layout.owner`: the C library (glibc 2.35 or later) registered every
/// thread's area; ktl only reads it.
pub const KTL_OWNER_LIBC: u32 = 1;
/// `ktl_layout.owner`: ktl registers an area in each thread, on that
/// thread's first call, and unregisters it when the thread exits.
pub const KTL_OWNER_KTL: u32 = 2;
/// `ktl_layout.owner`: no thread has a usable area; every function still
/// works, through fallbacks (vDSO `getcpu`, then the system call).
pub const KTL_OWNER_UNAVAILABLE: u32 = 3;

/// `ktl_layout.reason` with `KTL_OWNER_LIBC`: nothing to explain.
pub const KTL_REASON_NONE: u32 = 0;
/// `ktl_layout.reason` with `KTL_OWNER_KTL`: the C library supports rseq but
/// did not register (for example `GLIBC_TUNABLES=glibc.pthread.rseq=0`).
pub const KTL_REASON_LIBC_DISABLED: u32 = 1;
/// `ktl_layout.reason` with `KTL_OWNER_KTL`: the C library has no rseq
/// support (musl, glibc before 2.35).
pub const KTL_REASON_LIBC_WITHOUT_RSEQ: u32 = 2;
/// `ktl_layout.reason` with `KTL_OWNER_UNAVAILABLE`: the kernel has no rseq
/// system call (`error` is `ENOSYS`).
pub const KTL_REASON_NO_SYSCALL: u32 = 3;
/// `ktl_layout.reason` with `KTL_OWNER_UNAVAILABLE`: a filter (seccomp)
/// blocks the system call (`error` holds its errno, or 0 if the probe
/// unexpectedly succeeded).
pub const KTL_REASON_BLOCKED: u32 = 4;
/// `ktl_layout.reason` with `KTL_OWNER_UNAVAILABLE`: registering ktl's area
/// failed (`error` holds the errno); another library may own the areas.
pub const KTL_REASON_REGISTRATION_FAILED: u32 = 5;

/// `ktl_layout.features`: `cpu_id` and `cpu_id_start` are kept up to date.
pub const KTL_FEATURE_CPU_ID: u32 = 1 << 0;
/// `ktl_layout.features`: `node_id` is kept up to date (Linux 6.3+).
pub const KTL_FEATURE_NODE_ID: u32 = 1 << 1;
/// `ktl_layout.features`: `mm_cid` is kept up to date (Linux 6.3+).
pub const KTL_FEATURE_MM_CID: u32 = 1 << 2;
/// `ktl_layout.features`: the time-slice extension `slice_ctrl` (Linux 7.0+).
pub const KTL_FEATURE_SLICE_CTRL: u32 = 1 << 3;

/// `ktl_layout.ktls_features`: the KTLS kernel prototype's `rseq()` takes
/// `RSEQ_FLAG_KTLS_LAYOUT`.
pub const KTL_KTLS_GROUP_LAYOUT: u32 = 1 << 0;
/// `ktl_layout.ktls_features`: the KTLS kernel prototype's `clone3()` takes
/// `CLONE_RSEQ_KTLS`.
pub const KTL_KTLS_CLONE: u32 = 1 << 1;
/// `ktl_layout.ktls_features`: the KTLS kernel prototype writes the thread's
/// ids into areas registered with at least 64 bytes.
pub const KTL_KTLS_FACTS: u32 = 1 << 2;

/// `ktl_layout.flags`: the kernel confirmed `registered_len`.
pub const KTL_LAYOUT_LEN_CONFIRMED: u32 = 1 << 0;
/// `ktl_layout.flags`: the kernel's feature size and alignment came from
/// the auxiliary vector (Linux 6.3+), not from the legacy defaults.
pub const KTL_LAYOUT_KERNEL_AUXV: u32 = 1 << 1;
/// `ktl_layout.flags`: the C library exports `__rseq_offset` and
/// `__rseq_size`.
pub const KTL_LAYOUT_LIBC_RSEQ: u32 = 1 << 2;

/// The size of the first version of `struct ktl_layout`, the smallest `size`
/// that `ktl_layout()` accepts.
pub const KTL_LAYOUT_SIZE_V1: usize = 48;

/// Offset of the `cpu_id` field in the area (`struct rseq`).
pub const KTL_RSEQ_CPU_ID_OFFSET: usize = 4;
/// Offset of the `node_id` field in the area.
pub const KTL_RSEQ_NODE_ID_OFFSET: usize = 20;
/// Offset of the `mm_cid` field in the area.
pub const KTL_RSEQ_MM_CID_OFFSET: usize = 24;

/// `ktl_counter_create()` flag: index the counter's slots by the compact
/// concurrency id `mm_cid` instead of the CPU number (on a kernel without
/// `mm_cid`, the counter is indexed by CPU).
pub const KTL_COUNTER_MM_CID: u32 = 1 << 0;

/// `ktl_histogram_create()` flag: index the histogram's buckets by the
/// compact concurrency id `mm_cid` instead of the CPU number (on a kernel
/// without `mm_cid`, it is indexed by CPU).
pub const KTL_HISTOGRAM_MM_CID: u32 = 1 << 0;

/// The most bucket bounds `ktl_histogram_create()` takes.
pub const KTL_HISTOGRAM_MAX_BOUNDS: usize = 1024;

/// The process's KTLS layout, filled by `ktl_layout()`.
///
/// The owner is decided once per process, on the first call of any ktl
/// function, and never changes. Later versions of this library may append
/// fields: callers pass `sizeof(struct ktl_layout)` to `ktl_layout()`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KtlLayout {
    /// Who owns the areas: `KTL_OWNER_LIBC`, `KTL_OWNER_KTL` or
    /// `KTL_OWNER_UNAVAILABLE`.
    pub owner: u32,
    /// Why this owner: one of `KTL_REASON_*`.
    pub reason: u32,
    /// The errno behind `reason` for `KTL_OWNER_UNAVAILABLE` (positive, or
    /// 0); 0 otherwise.
    pub error: i32,
    /// The active size: how many bytes of the area the kernel keeps up to
    /// date (0 when the areas are unavailable). The same as `ktl_size()`.
    pub size: u32,
    /// The offset of the area from the thread pointer, the same in every
    /// thread: the same as `ktl_offset()`. When the areas are unavailable
    /// (`size` is 0), the offset of an area that is never registered, whose
    /// `cpu_id` always reads as -1.
    pub offset: isize,
    /// The length the areas are registered with (0 when unavailable).
    pub registered_len: u32,
    /// The alignment the kernel requires of areas longer than 32 bytes.
    pub align: u32,
    /// The fields the kernel keeps up to date: `KTL_FEATURE_*` bits.
    pub features: u32,
    /// The kernel's rseq feature size (`AT_RSEQ_FEATURE_SIZE`, or 20).
    pub kernel_feature_size: u32,
    /// The KTLS kernel prototype's features: `KTL_KTLS_*` bits (0 on other
    /// kernels).
    pub ktls_features: u32,
    /// `KTL_LAYOUT_*` bits.
    pub flags: u32,
}

const _: () = assert!(size_of::<KtlLayout>() == KTL_LAYOUT_SIZE_V1);
const _: () = assert!(
    KTL_FEATURE_CPU_ID == Features::CPU_ID.bits()
        && KTL_FEATURE_NODE_ID == Features::NODE_ID.bits()
        && KTL_FEATURE_MM_CID == Features::MM_CID.bits()
        && KTL_FEATURE_SLICE_CTRL == Features::SLICE_CTRL.bits()
);
const _: () = assert!(
    KTL_KTLS_GROUP_LAYOUT == ktl::abi::KTLS_FEATURE_GROUP_LAYOUT
        && KTL_KTLS_CLONE == ktl::abi::KTLS_FEATURE_CLONE
        && KTL_KTLS_FACTS == ktl::abi::KTLS_FEATURE_FACTS
);
const _: () = assert!(
    KTL_RSEQ_CPU_ID_OFFSET == ktl::abi::OFFSET_CPU_ID
        && KTL_RSEQ_NODE_ID_OFFSET == ktl::abi::OFFSET_NODE_ID
        && KTL_RSEQ_MM_CID_OFFSET == ktl::abi::OFFSET_MM_CID
);

/// A per-CPU counter (opaque): an add is one restartable sequence on the
/// current CPU's slot, with no atomic instruction and no shared cache line.
// A `*mut KtlCounter` points to a `CounterBox`; this type only names it for C.
pub struct KtlCounter {
    _opaque: [u8; 0],
}

/// What a counter pointer points to.
#[repr(C)]
struct CounterBox {
    /// `COUNTER_TAG` while the counter is alive, at offset 0; checked by
    /// every function, so that most pointers that are not counters give
    /// `-EINVAL`.
    tag: u64,
    counter: PerCpuCounter,
}

const COUNTER_TAG: u64 = u64::from_be_bytes(*b"ktl-cntr");

/// A per-CPU histogram (opaque): an observation is one restartable sequence
/// on the current CPU's bucket, which holds the bucket's count and its
/// share of the sum.
// A `*mut KtlHistogram` points to a `HistogramBox`.
pub struct KtlHistogram {
    _opaque: [u8; 0],
}

/// What a histogram pointer points to.
#[repr(C)]
struct HistogramBox {
    /// `HISTOGRAM_TAG` while the histogram is alive, at offset 0.
    tag: u64,
    histogram: PerCpuHistogram,
}

const HISTOGRAM_TAG: u64 = u64::from_be_bytes(*b"ktl-hist");
const _: () = assert!(KTL_HISTOGRAM_MAX_BOUNDS == PerCpuHistogram::MAX_BUCKETS);

/// The error of a caught panic: a bug in ktl, reported instead of unwinding
/// into C.
const PANIC_ERROR: c_int = -libc::EIO;

/// Runs `f`, turning a panic into `PANIC_ERROR`, and leaves the caller's
/// `errno` as it was: the C library calls inside ktl may set it (`getauxval`
/// sets `ENOENT` for a missing entry, a failed system call its error), and
/// this API reports errors only through return values.
fn guard(f: impl FnOnce() -> c_int) -> c_int {
    // SAFETY: `__errno_location` returns the calling thread's errno slot,
    // valid for the life of the thread.
    let errno = unsafe { libc::__errno_location() };
    // SAFETY: as above; reading an int.
    let saved = unsafe { errno.read() };
    let result = catch_unwind(AssertUnwindSafe(f)).unwrap_or(PANIC_ERROR);
    // SAFETY: as above; writing an int.
    unsafe { errno.write(saved) };
    result
}

/// An area that is never registered, in every thread: `cpu_id` is -1, as
/// ktl leaves its own areas before registration. Its offset is what
/// `ktl_offset()` gives when the areas are unavailable, so that a fast path
/// that reads `cpu_id` at that offset always falls back.
#[repr(C, align(64))]
struct DeadArea {
    cpu_id_start: u32,
    cpu_id: u32,
    rest: [u32; 6],
}

thread_local! {
    static DEAD_AREA: DeadArea = const {
        DeadArea { cpu_id_start: 0, cpu_id: u32::MAX, rest: [0; 6] }
    };
}

/// The offset of [`DEAD_AREA`] from the thread pointer.
///
/// The same in every thread: this library's thread-local block is static
/// TLS (ktl's block uses `@tpoff` relocations, so the whole module's block
/// is placed at a fixed offset from the thread pointer, even after `dlopen`).
fn dead_area_offset() -> isize {
    let tp = ktl::ktls::thread_pointer() as isize;
    DEAD_AREA.with(|area| {
        debug_assert_eq!(area.cpu_id_start, 0);
        debug_assert_eq!(area.cpu_id, u32::MAX);
        (ptr::from_ref(area) as isize).wrapping_sub(tp)
    })
}

/// The offset for `ktl_offset()`: the areas' offset, or the dead area's.
fn fast_path_offset(layout: &ktl::Layout) -> isize {
    layout.offset.unwrap_or_else(dead_area_offset)
}

fn to_c_layout(l: &ktl::Layout) -> KtlLayout {
    let (owner, reason, error) = match l.owner {
        Owner::Libc => (KTL_OWNER_LIBC, KTL_REASON_NONE, 0),
        Owner::Ktl(ktl::area::KtlReason::LibcDisabled) => {
            (KTL_OWNER_KTL, KTL_REASON_LIBC_DISABLED, 0)
        }
        Owner::Ktl(ktl::area::KtlReason::LibcWithoutRseq) => {
            (KTL_OWNER_KTL, KTL_REASON_LIBC_WITHOUT_RSEQ, 0)
        }
        Owner::Unavailable(ktl::area::Unavailable::NoSyscall) => {
            (KTL_OWNER_UNAVAILABLE, KTL_REASON_NO_SYSCALL, libc::ENOSYS)
        }
        Owner::Unavailable(ktl::area::Unavailable::Blocked(e)) => {
            (KTL_OWNER_UNAVAILABLE, KTL_REASON_BLOCKED, e)
        }
        Owner::Unavailable(ktl::area::Unavailable::RegistrationFailed(e)) => {
            (KTL_OWNER_UNAVAILABLE, KTL_REASON_REGISTRATION_FAILED, e)
        }
    };
    let mut flags = 0;
    if l.registered_len_confirmed {
        flags |= KTL_LAYOUT_LEN_CONFIRMED;
    }
    if l.kernel.from_auxv {
        flags |= KTL_LAYOUT_KERNEL_AUXV;
    }
    if l.libc.is_some() {
        flags |= KTL_LAYOUT_LIBC_RSEQ;
    }
    KtlLayout {
        owner,
        reason,
        error,
        size: l.active_size,
        offset: fast_path_offset(l),
        registered_len: l.registered_len,
        align: l.align,
        features: l.features.bits(),
        kernel_feature_size: l.kernel.feature_size,
        ktls_features: ktl::ktls::features().bits(),
        flags,
    }
}

/// Fills `*layout` with the process's KTLS layout.
///
/// `size` is `sizeof(struct ktl_layout)` as the caller knows it. The library
/// writes the fields it knows and sets any further bytes, up to `size`, to
/// zero, so that a program built against a newer header still works with
/// this library.
///
/// The first call in the process decides the owner of the areas (and, when
/// ktl owns them, registers the calling thread's).
///
/// Returns 0, or `-EINVAL` when `layout` is NULL or misaligned, or `size` is
/// smaller than `KTL_LAYOUT_SIZE_V1`.
///
/// # Safety
///
/// `layout` must be NULL, or point to `size` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ktl_layout(layout: *mut KtlLayout, size: usize) -> c_int {
    if layout.is_null()
        || !layout.is_aligned()
        || size < KTL_LAYOUT_SIZE_V1
        || size > isize::MAX as usize
    {
        return -libc::EINVAL;
    }
    guard(|| {
        let value = to_c_layout(&ktl::layout());
        // SAFETY: the caller gives `size` writable bytes at `layout`, which
        // is aligned and at least `KTL_LAYOUT_SIZE_V1` = `size_of` bytes
        // long; the tail beyond the struct is within those `size` bytes.
        unsafe {
            layout.write(value);
            let tail = layout.cast::<u8>().add(KTL_LAYOUT_SIZE_V1);
            ptr::write_bytes(tail, 0, size - KTL_LAYOUT_SIZE_V1);
        }
        0
    })
}

/// Stores in `*offset` the offset of the calling thread's rseq area from the
/// thread pointer. It is the same in every thread of the process, so it can
/// be read once and kept.
///
/// The offset is always safe for `ktl_cpu_id_fast()`: from any thread, 32
/// bytes at `offset` from the thread pointer are mapped, and a `cpu_id` that
/// reads negative there means "use `ktl_cpu_id()`". When the areas are
/// unavailable (`ktl_size()` is 0), the offset designates an area that is
/// never registered, whose `cpu_id` always reads as -1.
///
/// Offsets are often negative (on x86_64, static TLS lies below the thread
/// pointer), which is why the offset is returned through a pointer.
///
/// Returns 0, or `-EINVAL` when `offset` is NULL.
///
/// # Safety
///
/// `offset` must be NULL or point to a writable `ptrdiff_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ktl_offset(offset: *mut isize) -> c_int {
    if offset.is_null() || !offset.is_aligned() {
        return -libc::EINVAL;
    }
    guard(|| {
        let value = fast_path_offset(&ktl::layout());
        // SAFETY: the caller gives a writable, aligned `ptrdiff_t`.
        unsafe { offset.write(value) };
        0
    })
}

/// The active size of the rseq area: how many bytes of it the kernel keeps
/// up to date (20 on kernels before 6.3, 28 on 6.3 to 6.19, 32 or more
/// later), or 0 when the process has no usable areas.
///
/// Returns the size (never negative), or `-EIO` on an internal error.
#[unsafe(no_mangle)]
pub extern "C" fn ktl_size() -> c_int {
    guard(|| to_int(ktl::layout().active_size))
}

fn to_int(v: u32) -> c_int {
    c_int::try_from(v).unwrap_or(-libc::EOVERFLOW)
}

/// The CPU the calling thread runs on (it may be stale as soon as it is
/// returned, since the thread can migrate at any time).
///
/// Reads the thread's rseq area; without one, uses vDSO `getcpu`, then the
/// `getcpu` system call. When ktl owns the areas, the first call in a thread
/// registers its area.
///
/// Returns the CPU number (never negative), or `-EIO` on an internal error.
#[unsafe(no_mangle)]
pub extern "C" fn ktl_cpu_id() -> c_int {
    guard(|| to_int(ktl::cpu_id()))
}

/// The NUMA node of the CPU the calling thread runs on.
///
/// Returns the node number (never negative), or `-EIO` on an internal error.
#[unsafe(no_mangle)]
pub extern "C" fn ktl_node_id() -> c_int {
    guard(|| to_int(ktl::node_id()))
}

/// The calling thread's concurrency id (Linux 6.3+): a small number, below
/// the number of CPUs the process may use, that no two threads running at
/// the same moment share. Without `mm_cid` (`KTL_FEATURE_MM_CID` is not in
/// `ktl_layout.features`), the current CPU number stands in for it: still
/// unique among running threads, and below the number of possible CPUs.
///
/// Returns the id (never negative), or `-EIO` on an internal error.
#[unsafe(no_mangle)]
pub extern "C" fn ktl_mm_cid() -> c_int {
    guard(|| to_int(ktl::mm_cid()))
}

/// Creates a per-CPU counter at 0 and stores it in `*counter`.
///
/// `flags` is 0 (slots indexed by CPU) or `KTL_COUNTER_MM_CID`.
///
/// Returns 0, or `-EINVAL` (`counter` is NULL, or an unknown flag).
///
/// # Safety
///
/// `counter` must be NULL or point to a writable `struct ktl_counter *`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ktl_counter_create(counter: *mut *mut KtlCounter, flags: u32) -> c_int {
    if counter.is_null() || !counter.is_aligned() || flags & !KTL_COUNTER_MM_CID != 0 {
        return -libc::EINVAL;
    }
    guard(|| {
        let index = if flags & KTL_COUNTER_MM_CID != 0 {
            Index::MmCid
        } else {
            Index::CpuId
        };
        let boxed = Box::new(CounterBox {
            tag: COUNTER_TAG,
            counter: PerCpuCounter::with_index(index),
        });
        // SAFETY: the caller gives a writable, aligned pointer slot.
        unsafe { counter.write(Box::into_raw(boxed).cast::<KtlCounter>()) };
        0
    })
}

/// The live counter at `counter`, or `-EINVAL`.
///
/// # Safety
///
/// `counter` must be NULL, misaligned for a counter, or point to at least 8
/// readable bytes; for an `Ok` result, it must be a live counter from
/// `ktl_counter_create`.
unsafe fn counter_box<'a>(counter: *const KtlCounter) -> Result<&'a CounterBox, c_int> {
    let counter = counter.cast::<CounterBox>();
    if counter.is_null() || !counter.is_aligned() {
        return Err(-libc::EINVAL);
    }
    // SAFETY: the caller gives 8 readable bytes at `counter`, which is
    // aligned for a `CounterBox`, whose first field (`repr(C)`) is the tag.
    let tag = unsafe { counter.cast::<u64>().read_volatile() };
    if tag != COUNTER_TAG {
        return Err(-libc::EINVAL);
    }
    // SAFETY: the tag matches: this is a live counter (caller's contract).
    Ok(unsafe { &*counter })
}

/// Adds `n` (a negative `n` subtracts; arithmetic wraps) to the counter.
///
/// Safe to call from many threads at once on the same counter.
///
/// Returns 0, or `-EINVAL` when `counter` is NULL or not a live counter.
///
/// # Safety
///
/// `counter` must be NULL or a counter from `ktl_counter_create` that has
/// not been destroyed. ktl returns `-EINVAL` for a pointer that is not
/// aligned like a counter, or whose first 8 bytes do not hold a counter's
/// tag; such a pointer must still point to 8 readable bytes. A pointer to
/// freed memory is undefined behaviour.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ktl_counter_add(counter: *mut KtlCounter, n: i64) -> c_int {
    // SAFETY: forwarded to the caller's contract.
    match unsafe { counter_box(counter) } {
        Ok(c) => guard(|| {
            c.counter.add(n);
            0
        }),
        Err(e) => e,
    }
}

/// Stores in `*sum` the sum of the counter's slots: exact when no thread is
/// updating the counter (for example after joining the writers),
/// approximate while threads are.
///
/// Returns 0, or `-EINVAL` when `counter` or `sum` is NULL, or `counter` is
/// not a live counter.
///
/// # Safety
///
/// As for `ktl_counter_add`; `sum` must be NULL or point to a writable
/// `int64_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ktl_counter_sum(counter: *const KtlCounter, sum: *mut i64) -> c_int {
    if sum.is_null() || !sum.is_aligned() {
        return -libc::EINVAL;
    }
    // SAFETY: forwarded to the caller's contract.
    match unsafe { counter_box(counter) } {
        Ok(c) => guard(|| {
            let value = c.counter.sum();
            // SAFETY: the caller gives a writable, aligned `int64_t`.
            unsafe { sum.write(value) };
            0
        }),
        Err(e) => e,
    }
}

/// Destroys a counter and frees its memory. No other thread may use it
/// during or after the call.
///
/// Returns 0, or `-EINVAL` when `counter` is NULL or not a live counter.
///
/// # Safety
///
/// As for `ktl_counter_add`; the counter must not be used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ktl_counter_destroy(counter: *mut KtlCounter) -> c_int {
    // SAFETY: forwarded to the caller's contract.
    if let Err(e) = unsafe { counter_box(counter) } {
        return e;
    }
    guard(|| {
        // SAFETY: `counter` is a live counter, created by `Box::into_raw` in
        // `ktl_counter_create`, and no other thread uses it (caller's
        // contract). Clearing the tag first makes a second destroy of the
        // same pointer likely to be detected while the memory is not reused.
        unsafe {
            let counter = counter.cast::<CounterBox>();
            ptr::addr_of_mut!((*counter).tag).write_volatile(0);
            drop(Box::from_raw(counter));
        }
        0
    })
}

/// Creates a per-CPU histogram with `n_bounds` bucket upper bounds from
/// `bounds` (finite and strictly ascending; a last bucket, `+Inf`, is
/// added), all counts and the sum at 0, and stores it in `*histogram`. An
/// observation `v` counts in the first bucket whose bound is at least `v`
/// (NaN and values above every bound in the last).
///
/// `flags` is 0 (buckets indexed by CPU) or `KTL_HISTOGRAM_MM_CID`.
/// `bounds` may be NULL when `n_bounds` is 0.
///
/// Returns 0, or `-EINVAL`: `histogram` is NULL, `bounds` is NULL with
/// `n_bounds` above 0, a bound is NaN or infinite or not above the one
/// before, `n_bounds` is above `KTL_HISTOGRAM_MAX_BOUNDS`, or an unknown
/// flag. On an error `*histogram` is untouched.
///
/// # Safety
///
/// `histogram` must be NULL or point to a writable `struct ktl_histogram
/// *`; `bounds` must be NULL or point to `n_bounds` readable doubles.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ktl_histogram_create(
    histogram: *mut *mut KtlHistogram,
    bounds: *const f64,
    n_bounds: usize,
    flags: u32,
) -> c_int {
    if histogram.is_null()
        || !histogram.is_aligned()
        || flags & !KTL_HISTOGRAM_MM_CID != 0
        || n_bounds > KTL_HISTOGRAM_MAX_BOUNDS
        || (n_bounds > 0 && (bounds.is_null() || !bounds.is_aligned()))
    {
        return -libc::EINVAL;
    }
    guard(|| {
        let index = if flags & KTL_HISTOGRAM_MM_CID != 0 {
            Index::MmCid
        } else {
            Index::CpuId
        };
        let list: &[f64] = if n_bounds == 0 {
            &[]
        } else {
            // SAFETY: the caller gives `n_bounds` readable doubles at
            // `bounds`, which is non-null and aligned (checked above).
            unsafe { core::slice::from_raw_parts(bounds, n_bounds) }
        };
        let Ok(h) = PerCpuHistogram::with_index(list.iter().copied(), index) else {
            return -libc::EINVAL;
        };
        let boxed = Box::new(HistogramBox {
            tag: HISTOGRAM_TAG,
            histogram: h,
        });
        // SAFETY: the caller gives a writable, aligned pointer slot.
        unsafe { histogram.write(Box::into_raw(boxed).cast::<KtlHistogram>()) };
        0
    })
}

/// The live histogram at `histogram`, or `-EINVAL`.
///
/// # Safety
///
/// As for `counter_box`, for histograms.
unsafe fn histogram_box<'a>(histogram: *const KtlHistogram) -> Result<&'a HistogramBox, c_int> {
    let histogram = histogram.cast::<HistogramBox>();
    if histogram.is_null() || !histogram.is_aligned() {
        return Err(-libc::EINVAL);
    }
    // SAFETY: the caller gives 8 readable bytes at `histogram`, aligned for
    // a `HistogramBox`, whose first field (`repr(C)`) is the tag.
    let tag = unsafe { histogram.cast::<u64>().read_volatile() };
    if tag != HISTOGRAM_TAG {
        return Err(-libc::EINVAL);
    }
    // SAFETY: the tag matches: a live histogram (caller's contract).
    Ok(unsafe { &*histogram })
}

/// Counts `v` in its bucket and adds it to the sum.
///
/// Safe to call from many threads at once on the same histogram.
///
/// Returns 0, or `-EINVAL` when `histogram` is NULL or not a live
/// histogram.
///
/// # Safety
///
/// `histogram` must be NULL or a histogram from `ktl_histogram_create` that
/// has not been destroyed; as for `ktl_counter_add`, ktl returns `-EINVAL`
/// for a misaligned pointer or one without a histogram's tag, which must
/// still point to 8 readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ktl_histogram_observe(histogram: *mut KtlHistogram, v: f64) -> c_int {
    // SAFETY: forwarded to the caller's contract.
    match unsafe { histogram_box(histogram) } {
        Ok(h) => guard(|| {
            h.histogram.observe(v);
            0
        }),
        Err(e) => e,
    }
}

/// Stores the histogram's buckets, count and sum, added up over the CPUs:
/// exact when no thread is observing, and while threads are, every bucket
/// between its counts before and after the call.
///
/// `buckets` receives each bucket's own count (not cumulative), the `+Inf`
/// bucket last: `n_bounds + 1` values, where `n_bounds` is what the
/// histogram was created with. `buckets` may be NULL when `buckets_len` is
/// 0, and `count` and `sum` may be NULL, to leave them out.
///
/// Returns 0; `-EINVAL` when `histogram` is not a live histogram or
/// `buckets` is NULL with `buckets_len` above 0; `-ERANGE` when
/// `buckets_len` is neither 0 nor at least `n_bounds + 1` (nothing is
/// written then).
///
/// # Safety
///
/// As for `ktl_histogram_observe`; `buckets` must be NULL or point to
/// `buckets_len` writable `uint64_t`, `count` NULL or a writable
/// `uint64_t`, `sum` NULL or a writable `double`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ktl_histogram_snapshot(
    histogram: *const KtlHistogram,
    buckets: *mut u64,
    buckets_len: usize,
    count: *mut u64,
    sum: *mut f64,
) -> c_int {
    if (buckets_len > 0 && (buckets.is_null() || !buckets.is_aligned()))
        || !count.is_aligned()
        || !sum.is_aligned()
    {
        return -libc::EINVAL;
    }
    // SAFETY: forwarded to the caller's contract.
    let h = match unsafe { histogram_box(histogram) } {
        Ok(h) => h,
        Err(e) => return e,
    };
    guard(|| {
        let needed = h.histogram.bounds().len() + 1;
        if buckets_len != 0 && buckets_len < needed {
            return -libc::ERANGE;
        }
        let s = h.histogram.snapshot();
        if buckets_len != 0 {
            // SAFETY: the caller gives `buckets_len >= needed` writable,
            // aligned `uint64_t` at `buckets`.
            let out = unsafe { core::slice::from_raw_parts_mut(buckets, needed) };
            out.copy_from_slice(s.buckets());
        }
        if !count.is_null() {
            // SAFETY: the caller gives a writable, aligned `uint64_t`.
            unsafe { count.write(s.count()) };
        }
        if !sum.is_null() {
            // SAFETY: the caller gives a writable, aligned `double`.
            unsafe { sum.write(s.sum()) };
        }
        0
    })
}

/// Destroys a histogram and frees its memory. No other thread may use it
/// during or after the call.
///
/// Returns 0, or `-EINVAL` when `histogram` is NULL or not a live
/// histogram.
///
/// # Safety
///
/// As for `ktl_histogram_observe`; the histogram must not be used
/// afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ktl_histogram_destroy(histogram: *mut KtlHistogram) -> c_int {
    // SAFETY: forwarded to the caller's contract.
    if let Err(e) = unsafe { histogram_box(histogram) } {
        return e;
    }
    guard(|| {
        // SAFETY: a live histogram from `Box::into_raw` in
        // `ktl_histogram_create`, used by no other thread (caller's
        // contract); the tag is cleared first, as for counters.
        unsafe {
            let histogram = histogram.cast::<HistogramBox>();
            ptr::addr_of_mut!((*histogram).tag).write_volatile(0);
            drop(Box::from_raw(histogram));
        }
        0
    })
}

/// Fills `len` bytes at `buf` with cryptographically secure random bytes,
/// from vDSO `getrandom` with per-thread state where the kernel has it, and
/// from the `getrandom` system call otherwise.
///
/// Returns 0, `-EINVAL` when `buf` is NULL (even with `len` 0) or `len` is
/// larger than `PTRDIFF_MAX`, or the negative errno of the system call when
/// it was needed and failed. On an error the buffer may be partly written.
///
/// # Safety
///
/// `buf` must be NULL or point to `len` writable bytes (they need not be
/// initialised).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ktl_random(buf: *mut c_void, len: usize) -> c_int {
    if buf.is_null() || len > isize::MAX as usize {
        return -libc::EINVAL;
    }
    guard(|| {
        // SAFETY: the caller gives `len` writable bytes at `buf`, and
        // `MaybeUninit<u8>` accepts any contents, initialised or not.
        let dest = unsafe { core::slice::from_raw_parts_mut(buf.cast::<MaybeUninit<u8>>(), len) };
        match ktl::random::fill_uninit(dest) {
            Ok(_) => 0,
            Err(ktl::random::RandomError::Syscall(ktl::Errno(e))) if e > 0 => -e,
            Err(_) => -libc::EIO,
        }
    })
}

const _: () = assert!(align_of::<isize>() == align_of::<*mut c_void>());

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> KtlLayout {
        let mut l = MaybeUninit::<KtlLayout>::uninit();
        // SAFETY: `l` has room for the struct.
        assert_eq!(
            unsafe { ktl_layout(l.as_mut_ptr(), size_of::<KtlLayout>()) },
            0
        );
        // SAFETY: ktl_layout returned 0, so it wrote the struct.
        unsafe { l.assume_init() }
    }

    #[test]
    fn layout_matches_ktl() {
        let l = layout();
        let k = ktl::layout();
        assert_eq!(l.size, k.active_size);
        assert_eq!(l.features, k.features.bits());
        assert_eq!(l.registered_len, k.registered_len);
        if let Some(off) = k.offset {
            assert_eq!(l.offset, off);
        }
        let mut off = 0isize;
        // SAFETY: `off` is a writable isize.
        assert_eq!(unsafe { ktl_offset(&mut off) }, 0);
        assert_eq!(off, l.offset);
        assert_eq!(ktl_size(), l.size as c_int);
    }

    #[test]
    fn layout_size_handling() {
        // SAFETY: NULL is rejected before any access.
        assert_eq!(unsafe { ktl_layout(ptr::null_mut(), 48) }, -libc::EINVAL);
        let mut buf = [0xffu64; 16];
        let p = buf.as_mut_ptr().cast::<KtlLayout>();
        // SAFETY: `buf` has 128 writable bytes, aligned to 8.
        assert_eq!(unsafe { ktl_layout(p, 47) }, -libc::EINVAL);
        // SAFETY: as above.
        assert_eq!(unsafe { ktl_layout(p, 128) }, 0);
        assert!(buf[6..].iter().all(|&w| w == 0));
    }

    #[test]
    fn dead_area_offset_is_the_same_in_threads() {
        let here = dead_area_offset();
        let there = std::thread::spawn(dead_area_offset).join().unwrap();
        assert_eq!(here, there);
        // SAFETY: the dead area is 32 bytes of this thread's TLS at `here`.
        let cpu = unsafe { ktl::cpu::cpu_id_at(here) };
        assert_eq!(cpu, u32::MAX);
    }

    #[test]
    fn accessors_and_counter() {
        assert!(ktl_cpu_id() >= 0);
        assert!(ktl_node_id() >= 0);
        assert!(ktl_mm_cid() >= 0);
        let mut c = ptr::null_mut();
        // SAFETY: `c` is a writable pointer slot.
        assert_eq!(unsafe { ktl_counter_create(&mut c, 0) }, 0);
        // SAFETY: `c` is a live counter.
        assert_eq!(unsafe { ktl_counter_add(c, 5) }, 0);
        // SAFETY: as above.
        assert_eq!(unsafe { ktl_counter_add(c, -2) }, 0);
        let mut sum = 0;
        // SAFETY: as above; `sum` is writable.
        assert_eq!(unsafe { ktl_counter_sum(c, &mut sum) }, 0);
        assert_eq!(sum, 3);
        // SAFETY: as above; destroyed once.
        assert_eq!(unsafe { ktl_counter_destroy(c) }, 0);
        // SAFETY: NULL and unknown flags are rejected before any access.
        assert_eq!(unsafe { ktl_counter_create(&mut c, 2) }, -libc::EINVAL);
        // SAFETY: as above.
        assert_eq!(
            unsafe { ktl_counter_add(ptr::null_mut(), 1) },
            -libc::EINVAL
        );
    }

    #[test]
    fn random_fills() {
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        // SAFETY: both buffers are writable and 64 bytes long.
        assert_eq!(unsafe { ktl_random(a.as_mut_ptr().cast(), 64) }, 0);
        // SAFETY: as above.
        assert_eq!(unsafe { ktl_random(b.as_mut_ptr().cast(), 64) }, 0);
        assert_ne!(a, b);
        // SAFETY: NULL is rejected before any access.
        assert_eq!(unsafe { ktl_random(ptr::null_mut(), 0) }, -libc::EINVAL);
    }

    #[test]
    fn guard_catches_panics() {
        let quiet = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let r = guard(|| panic!("boom"));
        std::panic::set_hook(quiet);
        assert_eq!(r, PANIC_ERROR);
    }
}
