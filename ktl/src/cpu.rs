//! The current CPU, NUMA node and concurrency id, with fallbacks.
//!
//! [`cpu_id`], [`node_id`] and [`mm_cid`] read the calling thread's KTLS area.
//! On x86_64, once the thread is registered, each is one load of a
//! process-wide offset followed by `mov %fs:(offset), %eax` — a single
//! thread-pointer-relative load — and one predictable branch on the sign of
//! the `cpu_id` field. (`node_id` and `mm_cid` load `cpu_id` of the same area
//! first, to know that the area is live, then the field itself: two loads from
//! one cache line.)
//!
//! When the calling thread has no live area, the branch sends the call to a
//! cold path. That path decides the owner ([`crate::area`]) on the first call
//! in the process, registers the thread's area when ktl owns the areas, and
//! otherwise uses a fallback:
//!
//! | accessor | fallback, in order |
//! |---|---|
//! | `cpu_id` | vDSO `getcpu`, then the `getcpu` system call |
//! | `node_id` | vDSO `getcpu`, then the `getcpu` system call |
//! | `mm_cid` | the `cpu_id` of the area if the kernel lacks `mm_cid`, otherwise `cpu_id()` with its fallbacks |
//!
//! ## What `mm_cid` returns without an area
//!
//! The kernel has no other interface to the concurrency id, so there is no
//! real fallback. ktl returns the current CPU number instead. It keeps the two
//! properties code indexed by `mm_cid` relies on: threads that run at the same
//! moment get different values (they run on different CPUs), and the value is
//! below the number of *possible* CPUs. It loses the compactness: it is not
//! necessarily below the number of CPUs the process may use. Size arrays
//! indexed by `mm_cid` by the possible CPUs, or check
//! [`layout().features`](crate::Layout::features) for
//! [`Features::MM_CID`](crate::Features::MM_CID).
//!
//! If every source fails (a filter that blocks `getcpu` as well), the
//! accessors return 0, which is always a valid CPU, node and id.
//!
//! ## Signal handlers
//!
//! Once the calling thread has made an accessor call, the accessors are
//! async-signal-safe in it: the fast path only loads, and the cold path
//! reads the decided state, then calls vDSO `getcpu` (looked up with the
//! owner decision) or the system call. The first accessor call of a thread
//! may set things up (decide the owner, register the thread's area and arm
//! the destructor that unregisters it, which allocates): a signal handler
//! must not make it, except when it interrupts a first call of ktl on its
//! own thread. Such a handler sets nothing up and waits for nothing: its
//! accessors answer from the `getcpu` system call (see
//! [`crate::area`](crate::area#first-calls-and-signal-handlers)).

use crate::abi::{Features, OFFSET_CPU_ID, OFFSET_MM_CID, OFFSET_NODE_ID};
use crate::arch::{self, HotOffset};
use crate::{area, sys, vdso};
use core::fmt;
use core::sync::atomic::{AtomicU8, Ordering};

/// The CPU the calling thread runs on.
///
/// The answer may be stale as soon as it is returned, since the thread can
/// migrate at any time; restartable sequences exist to act on it safely.
///
/// ```
/// let cpu = ktl::cpu_id();
/// let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
/// # let _ = cpus;
/// assert!(cpu < 4096);
/// ```
#[inline]
pub fn cpu_id() -> u32 {
    let cpu = arch::cpu_id_load();
    if (cpu as i32) < 0 {
        return cpu_id_slow();
    }
    cpu
}

/// The fast path of [`node_id`] and [`mm_cid`]: the field at byte `FIELD`
/// of the area that the hot offset `which` designates, or `None` when that
/// area is not live in the calling thread (its `cpu_id` is negative).
///
/// One load of the hot offset, two thread-pointer-relative loads (`cpu_id`
/// and the field), and one branch. ([`cpu_id`] reads a word that is fixed
/// before `main` instead, which the compiler may keep in a register: see
/// `arch::cpu_id_load`. These two cannot: whether their field is live is
/// known only once the owner is decided.)
#[inline(always)]
fn hot_field<const FIELD: usize>(which: HotOffset) -> Option<u32> {
    let off = arch::hot_offset(which);
    // SAFETY: a hot offset always designates an area in the calling thread's
    // static TLS: the C library's area, ktl's own area, or ktl's dead area.
    // All are mapped for the life of the thread and 32-byte aligned.
    let cpu = unsafe { arch::tp_load_u32::<OFFSET_CPU_ID>(off) };
    if (cpu as i32) < 0 {
        return None;
    }
    // SAFETY: the same area; FIELD is one of its first 32 bytes.
    Some(unsafe { arch::tp_load_u32::<FIELD>(off) })
}

/// The NUMA node of the CPU the calling thread runs on.
///
/// ```
/// let node = ktl::node_id();
/// assert!(node < 1024);
/// ```
#[inline]
pub fn node_id() -> u32 {
    match hot_field::<OFFSET_NODE_ID>(HotOffset::Node) {
        Some(node) => node,
        None => node_id_slow(),
    }
}

/// The calling thread's concurrency id: a small per-process number, below the
/// number of CPUs the process may use, that no two threads running at the
/// same moment share (Linux 6.3+).
///
/// Without a live `mm_cid` this returns the current CPU; see the
/// [module docs](self#what-mm_cid-returns-without-an-area).
///
/// ```
/// let cid = ktl::mm_cid();
/// assert!(cid < 4096);
/// ```
#[inline]
pub fn mm_cid() -> u32 {
    match hot_field::<OFFSET_MM_CID>(HotOffset::Cid) {
        Some(cid) => cid,
        None => mm_cid_slow(),
    }
}

#[cold]
#[inline(never)]
fn cpu_id_slow() -> u32 {
    if let Some(off) = area::thread_area() {
        // SAFETY: `thread_area` returns the offset of this thread's live area.
        let cpu = unsafe { arch::tp_load_u32::<OFFSET_CPU_ID>(off) };
        if (cpu as i32) >= 0 {
            return cpu;
        }
    }
    fallback_getcpu().0
}

#[cold]
#[inline(never)]
fn node_id_slow() -> u32 {
    if let Some(off) = live_area_with(Features::NODE_ID) {
        // SAFETY: `live_area_with` returns this thread's live area.
        return unsafe { arch::tp_load_u32::<OFFSET_NODE_ID>(off) };
    }
    fallback_getcpu().1
}

#[cold]
#[inline(never)]
fn mm_cid_slow() -> u32 {
    if let Some(off) = live_area_with(Features::MM_CID) {
        // SAFETY: `live_area_with` returns this thread's live area.
        return unsafe { arch::tp_load_u32::<OFFSET_MM_CID>(off) };
    }
    cpu_id()
}

fn live_area_with(feature: Features) -> Option<isize> {
    let off = area::thread_area()?;
    area::layout().features.contains(feature).then_some(off)
}

/// `(cpu, node)` from the vDSO, else the system call, else `(0, 0)`.
fn fallback_getcpu() -> (u32, u32) {
    vdso::getcpu()
        .or_else(|| sys::sched::getcpu().ok())
        .unwrap_or((0, 0))
}

/// Where an accessor's answer comes from in the calling thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A load from the thread's KTLS area (the fast path).
    Area,
    /// The vDSO's `getcpu`.
    VdsoGetcpu,
    /// The `getcpu` system call.
    GetcpuSyscall,
    /// `mm_cid` only: the current CPU stands in for the concurrency id.
    CpuId,
    /// Nothing works; the accessor returns 0.
    Nothing,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Area => "rseq area",
            Source::VdsoGetcpu => "vDSO getcpu",
            Source::GetcpuSyscall => "getcpu system call",
            Source::CpuId => "current CPU (no mm_cid)",
            Source::Nothing => "none (returns 0)",
        })
    }
}

/// The sources of [`cpu_id`], [`node_id`] and [`mm_cid`] for the calling
/// thread: which path is live, and which fallbacks are in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sources {
    /// Where `cpu_id()` reads.
    pub cpu_id: Source,
    /// Where `node_id()` reads.
    pub node_id: Source,
    /// Where `mm_cid()` reads.
    pub mm_cid: Source,
    /// Where `cpu_id()` would read if the area were gone: the fallback chain's
    /// first working link.
    pub fallback: Source,
    /// Whether `cpu_id()` reads the live area on its inline path (one load,
    /// one branch). False when it reads the area, or its fallback, only
    /// from its out-of-line path: always without a live area, and with one
    /// when the word that designates the area for the inline path was not set
    /// before `main` (on x86_64, a start code that skips the executable's
    /// `.preinit_array` while the C library owns the areas).
    pub cpu_id_inline: bool,
}

/// Reports which path each accessor takes in the calling thread. Registers
/// the thread's area first when ktl owns the areas, as any accessor would.
pub fn sources() -> Sources {
    let fallback = if vdso::getcpu().is_some() {
        Source::VdsoGetcpu
    } else if sys::sched::getcpu().is_ok() {
        Source::GetcpuSyscall
    } else {
        Source::Nothing
    };
    let area = area::thread_area();
    let live = area.is_some();
    // A live area means the owner is decided.
    let has = |f: Features| live && area::layout().features.contains(f);
    Sources {
        cpu_id: if live { Source::Area } else { fallback },
        node_id: if has(Features::NODE_ID) {
            Source::Area
        } else {
            fallback
        },
        mm_cid: if has(Features::MM_CID) {
            Source::Area
        } else {
            Source::CpuId
        },
        fallback,
        cpu_id_inline: area.is_some_and(|off| off == arch::cpu_offset()),
    }
}

/// Reads `cpu_id` from the area at `area_offset` from the thread pointer: the
/// seed design's explicit form, `f(unsigned long ktls_offset)`.
///
/// This is one thread-pointer-relative load with no check at all. It returns
/// the raw field: the CPU number, or [`RSEQ_CPU_ID_UNINITIALIZED`] /
/// [`RSEQ_CPU_ID_REGISTRATION_FAILED`] in a thread whose area is not
/// registered.
///
/// ```
/// if let Some(offset) = ktl::layout().offset {
///     // SAFETY: the offset comes from `layout()`, so it designates this
///     // thread's area.
///     let raw = unsafe { ktl::cpu::cpu_id_at(offset) };
///     if (raw as i32) >= 0 {
///         assert!(raw < 4096);
///     }
/// }
/// ```
///
/// # Safety
///
/// `area_offset` must be the offset, from the calling thread's thread pointer,
/// of 32 readable bytes, aligned to 4 at least, that stay mapped during the
/// call. The offsets in [`crate::layout`] satisfy this in every thread of the
/// process. Any other value may read unmapped memory, or another object, and
/// is undefined behaviour.
///
/// [`RSEQ_CPU_ID_UNINITIALIZED`]: crate::abi::RSEQ_CPU_ID_UNINITIALIZED
/// [`RSEQ_CPU_ID_REGISTRATION_FAILED`]: crate::abi::RSEQ_CPU_ID_REGISTRATION_FAILED
#[inline(always)]
pub unsafe fn cpu_id_at(area_offset: isize) -> u32 {
    // SAFETY: forwarded to the caller's contract.
    unsafe { arch::tp_load_u32::<OFFSET_CPU_ID>(area_offset) }
}

/// Reads `node_id` from the area at `area_offset`; see [`cpu_id_at`].
///
/// The field is meaningful only while the area is registered (its `cpu_id` is
/// not negative) and the kernel has the feature ([`Features::NODE_ID`]).
///
/// # Safety
///
/// The same contract as [`cpu_id_at`].
#[inline(always)]
pub unsafe fn node_id_at(area_offset: isize) -> u32 {
    // SAFETY: forwarded to the caller's contract.
    unsafe { arch::tp_load_u32::<OFFSET_NODE_ID>(area_offset) }
}

/// Reads `mm_cid` from the area at `area_offset`; see [`cpu_id_at`].
///
/// The field is meaningful only while the area is registered and the kernel
/// has the feature ([`Features::MM_CID`]).
///
/// # Safety
///
/// The same contract as [`cpu_id_at`].
#[inline(always)]
pub unsafe fn mm_cid_at(area_offset: isize) -> u32 {
    // SAFETY: forwarded to the caller's contract.
    unsafe { arch::tp_load_u32::<OFFSET_MM_CID>(area_offset) }
}

/// `(cpu, node)` from the vDSO's `getcpu`, or `None` when the vDSO lacks it
/// (or in a signal handler that interrupts one of ktl's first calls on its
/// thread before the vDSO was ever looked at; see [`vdso::getcpu_fn`]).
#[inline]
pub fn getcpu_vdso() -> Option<(u32, u32)> {
    vdso::getcpu()
}

/// `(cpu, node)` from the `getcpu` system call (getcpu(2)).
pub fn getcpu_syscall() -> Result<(u32, u32), sys::Errno> {
    sys::sched::getcpu()
}

/// `(cpu, node)` from the RDPID instruction (x86_64 processors that have it;
/// Linux keeps `(node << 12) | cpu` in `IA32_TSC_AUX`), or `None`.
#[inline]
pub fn rdpid() -> Option<(u32, u32)> {
    static HAS: AtomicU8 = AtomicU8::new(0); // 0 unknown, 1 no, 2 yes
    let has = match HAS.load(Ordering::Relaxed) {
        0 => {
            let yes = arch::has_rdpid();
            HAS.store(if yes { 2 } else { 1 }, Ordering::Relaxed);
            yes
        }
        v => v == 2,
    };
    if !has {
        return None;
    }
    // SAFETY: the CPU has RDPID (checked above through CPUID).
    let aux = unsafe { arch::rdpid() };
    Some(((aux & 0xfff) as u32, ((aux >> 12) & 0xfffff) as u32))
}

/// The number of possible CPUs: one past the highest CPU number in
/// `/sys/devices/system/cpu/possible` (read once), or `None` when it cannot be
/// read. Every CPU number the kernel reports is below it, so it sizes arrays
/// indexed by [`cpu_id`] (and by [`mm_cid`], whose values are smaller).
///
/// ```
/// if let Some(n) = ktl::cpu::possible_cpus() {
///     assert!(ktl::cpu_id() < n);
/// }
/// ```
pub fn possible_cpus() -> Option<u32> {
    static POSSIBLE: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *POSSIBLE.get_or_init(|| {
        let list = std::fs::read_to_string("/sys/devices/system/cpu/possible").ok()?;
        parse_cpu_list_end(&list)
    })
}

/// The number of possible NUMA nodes: one past the highest node number in
/// `/sys/devices/system/node/possible` (read once), or `None` when it cannot
/// be read (kernels built without NUMA support have no such file; they have
/// one node, 0). Every value of [`node_id`] is below it.
pub fn possible_nodes() -> Option<u32> {
    static POSSIBLE: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *POSSIBLE.get_or_init(|| {
        let list = std::fs::read_to_string("/sys/devices/system/node/possible").ok()?;
        parse_cpu_list_end(&list)
    })
}

/// One past the highest CPU in a kernel CPU list such as `"0-3,8-11\n"`.
fn parse_cpu_list_end(list: &str) -> Option<u32> {
    let mut end = None;
    for range in list.trim().split(',') {
        let last = range.rsplit('-').next()?.trim().parse::<u32>().ok()?;
        end = end.max(Some(last.checked_add(1)?));
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cpu_id()` reads the live area on its inline path, in this thread
    /// and in a new one, and where the thread has no live area the inline
    /// path sees a negative `cpu_id`, so it never answers from a dead area.
    /// (CI runs this with glibc owning the areas, with ktl owning them, on
    /// musl and under qemu-user.)
    #[test]
    fn cpu_id_reads_the_live_area_inline() {
        let check = || {
            let _ = cpu_id();
            let s = sources();
            match area::thread_area() {
                Some(off) => {
                    assert_eq!(s.cpu_id, Source::Area);
                    assert_eq!(arch::cpu_offset(), off, "{s:?}");
                    assert!(s.cpu_id_inline, "{s:?}");
                }
                None => {
                    assert!(!s.cpu_id_inline, "{s:?}");
                    assert!((arch::cpu_id_load() as i32) < 0);
                }
            }
        };
        check();
        std::thread::spawn(check).join().unwrap();
    }

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list_end("0\n"), Some(1));
        assert_eq!(parse_cpu_list_end("0-1\n"), Some(2));
        assert_eq!(parse_cpu_list_end("0-3,8-11"), Some(12));
        assert_eq!(parse_cpu_list_end("0,5"), Some(6));
        assert_eq!(parse_cpu_list_end(""), None);
        assert_eq!(parse_cpu_list_end("x"), None);
    }
}
