//! The calling thread's ids: thread id, process id, and the real and
//! effective user and group ids.
//!
//! On the KTLS kernel prototype (`kernel/` in this repository) the kernel
//! writes these *thread facts* into every registered rseq area long enough
//! to hold them (64 bytes), and rewrites them before the thread returns to
//! user space after a change: a new registration, `fork`, a credential
//! change in that thread. Its vDSO exports functions that read them, given
//! the area's address, so user space need not know where they are. ktl
//! answers from the fastest source the process has, decided once
//! ([`path`]):
//!
//! 1. [`Path::Vdso`]: the prototype's vDSO functions ([`vdso::ktls_fn`]),
//!    passed the calling thread's area;
//! 2. [`Path::Field`]: the fields themselves, read at their known offsets,
//!    when the kernel writes them but the vDSO functions are missing (for
//!    example with `KTL_VDSO=off`);
//! 3. [`Path::Syscall`]: `gettid(2)`, `getuid(2)` and the rest, on every
//!    other kernel, and when the area is too short: a C library that
//!    registers 32 bytes (glibc before 2.41) leaves no room for the facts.
//!
//! The accessors' inline path checks ktl's own area and calls the path's
//! function with its offset (the vDSO functions' `_fs` form): two tests and
//! an indirect call on top of the vDSO function's own work. Where the C
//! library owns the areas, they answer from their out-of-line path instead
//! (the system call, or the vDSO function on a C library that registers
//! areas long enough for the facts).
//!
//! Whatever the path, each value is what the system call returns to the
//! calling thread at that moment. Where ktl owns the areas, a thread's first
//! call registers its area. A thread whose area is not live (released, its
//! registration refused, or a `vfork` child, for which the kernel hides its
//! parent's facts) gets the system call on every path.
//!
//! The values are a cache of what the kernel would answer, in the process's
//! own memory: use them as the system calls' answers, never as a security
//! boundary against the process itself.
//!
//! The accessors are async-signal-safe in a thread that has called one of
//! them before (the first call decides the path and registers the thread's
//! area where ktl owns them). A signal handler that interrupts one of ktl's
//! first calls on its own thread gets the system calls' answers and sets
//! nothing up (see
//! [`crate::area`](crate::area#first-calls-and-signal-handlers)); [`path`]
//! must not be called there before the path is decided.
//!
//! # Example
//!
//! ```
//! let me = ktl::facts::thread_facts();
//! assert_eq!(me.pid, std::process::id() as i32);
//! assert_eq!(ktl::facts::uid(), me.uid);
//! println!("thread {} of process {}, via {}", me.tid, me.pid, ktl::facts::path());
//! ```

use core::ffi::{c_long, c_void};
use core::fmt;
use core::sync::atomic::{AtomicPtr, Ordering};
use std::sync::OnceLock;

use crate::abi;
use crate::arch;
use crate::area::{self, Owner};
use crate::first_call::FirstCall;
use crate::sys::ids::{self, Gid, Pid, Uid};
use crate::vdso::{self, KtlsFn};

/// The calling thread's ids, as [`thread_facts`] returns them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ThreadFacts {
    /// The thread id (`gettid(2)`).
    pub tid: Pid,
    /// The process id (`getpid(2)`).
    pub pid: Pid,
    /// The real user id (`getuid(2)`).
    pub uid: Uid,
    /// The real group id (`getgid(2)`).
    pub gid: Gid,
    /// The effective user id (`geteuid(2)`).
    pub euid: Uid,
    /// The effective group id (`getegid(2)`).
    pub egid: Gid,
}

/// Why [`path`] is [`Path::Syscall`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fallback {
    /// The kernel does not publish thread facts (any kernel but the
    /// prototype).
    NoKernelSupport,
    /// The process has no rseq areas.
    NoArea,
    /// The areas are registered with fewer bytes than the facts need (the
    /// length they are registered with).
    ShortRegistration(u32),
}

impl fmt::Display for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fallback::NoKernelSupport => {
                f.write_str("the kernel does not publish thread facts: no KTLS prototype")
            }
            Fallback::NoArea => f.write_str("the process has no rseq areas"),
            Fallback::ShortRegistration(len) => write!(
                f,
                "the areas are registered with {len} bytes; the facts need {}",
                abi::KTLS_FACTS_END
            ),
        }
    }
}

/// Where [`thread_facts`] and the single accessors get their answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Path {
    /// The KTLS prototype's vDSO functions, given the thread's area.
    Vdso,
    /// The fields of the thread's area, read directly.
    Field,
    /// The system calls, and why.
    Syscall(Fallback),
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Vdso => write!(f, "vdso (the KTLS vDSO functions, {})", vdso::KTLS_VERSION),
            Path::Field => f.write_str("field (the area's thread facts, read directly)"),
            Path::Syscall(why) => write!(f, "syscall ({why})"),
        }
    }
}

/// What the first call decided: the path, the areas' offset and the vDSO
/// functions ([`Fact`] order).
struct State {
    path: Path,
    offset: isize,
    vdso: [Option<vdso::KtlsPtrFn>; 6],
}

static STATE: OnceLock<State> = OnceLock::new();

/// The decided state; `None` in a signal handler that interrupted one of
/// ktl's first calls on its thread before the path was decided (the caller
/// then makes the system call).
#[inline]
fn state() -> Option<&'static State> {
    match STATE.get() {
        Some(st) => Some(st),
        None => state_first(),
    }
}

#[cold]
#[inline(never)]
fn state_first() -> Option<&'static State> {
    let _first = FirstCall::begin()?;
    Some(STATE.get_or_init(decide))
}

/// The path this process takes, decided at the first call.
pub fn path() -> Path {
    match STATE.get() {
        Some(st) => st.path,
        None => {
            let _first = FirstCall::begin();
            STATE.get_or_init(decide).path
        }
    }
}

/// Decides the path. Runs inside a first call, which holds the thread's
/// marker.
#[cold]
fn decide() -> State {
    let syscall = |why| State {
        path: Path::Syscall(why),
        offset: 0,
        vdso: [None; 6],
    };
    if !abi::ktls_features().facts() {
        return syscall(Fallback::NoKernelSupport);
    }
    let layout = area::layout();
    let offset = match (layout.offset, layout.owner) {
        (_, Owner::Unavailable(_)) | (None, _) => return syscall(Fallback::NoArea),
        (Some(off), _) => off,
    };
    if layout.registered_len < abi::KTLS_FACTS_END {
        return syscall(Fallback::ShortRegistration(layout.registered_len));
    }
    let vdso = Fact::ALL.map(|f| vdso::ktls_fn_in_first_call(f.vdso_fn()));
    let path = if vdso.iter().all(Option::is_some) {
        Path::Vdso
    } else {
        Path::Field
    };
    if offset == arch::own_area_offset() {
        // The fast path reads this area: point it at the path's functions,
        // the vDSO's of the offset form where it has them all.
        let by_offset = Fact::ALL.map(|f| vdso::ktls_offset_fn_in_first_call(f.vdso_fn()));
        let use_vdso = path == Path::Vdso && by_offset.iter().all(Option::is_some);
        for ((slot, f), field) in FAST_FNS.iter().zip(by_offset).zip(FIELD_FNS) {
            let f = f.filter(|_| use_vdso).unwrap_or(field);
            slot.store(f as *mut (), Ordering::Relaxed);
        }
    }
    State { path, offset, vdso }
}

/// Defines, for each fact, the slow path and the field's read in the form
/// of a KTLS vDSO function, and [`FAST_FNS`], which starts on the slow paths.
macro_rules! fast_fns {
    ($($fact:ident: $slow:ident, $field:ident;)*) => {
        $(
            /// [`get_slow`] for this fact, as a vDSO function.
            extern "C" fn $slow(_offset: usize) -> c_long {
                c_long::from(get_slow(Fact::$fact))
            }

            /// The field of this fact in ktl's own area, which holds valid
            /// facts (the caller checked the magic), as a vDSO function.
            extern "C" fn $field(_offset: usize) -> c_long {
                c_long::from(field(arch::own_area_offset(), Fact::$fact))
            }
        )*

        /// The field readers, in [`Fact`] order.
        const FIELD_FNS: [vdso::KtlsOffsetFn; 6] = [$($field),*];

        /// The function that [`get`] calls for each fact ([`Fact`] order),
        /// given the offset of ktl's own area once its magic says the facts
        /// are valid: the slow path (the first call, the system calls) until
        /// [`decide`] points them at the vDSO's functions of the offset form
        /// or at [`FIELD_FNS`]. Every value it ever holds is a
        /// [`vdso::KtlsOffsetFn`] that answers for any thread, so a stale
        /// load is still right: relaxed loads and stores are enough.
        static FAST_FNS: [AtomicPtr<()>; 6] = [$(AtomicPtr::new($slow as *mut ())),*];
    };
}

fast_fns! {
    Tid: slow_tid, field_tid;
    Pid: slow_pid, field_pid;
    Uid: slow_uid, field_uid;
    Gid: slow_gid, field_gid;
    Euid: slow_euid, field_euid;
    Egid: slow_egid, field_egid;
}

/// One of the ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fact {
    Tid,
    Pid,
    Uid,
    Gid,
    Euid,
    Egid,
}

impl Fact {
    const ALL: [Fact; 6] = [
        Fact::Tid,
        Fact::Pid,
        Fact::Uid,
        Fact::Gid,
        Fact::Euid,
        Fact::Egid,
    ];

    fn vdso_fn(self) -> KtlsFn {
        match self {
            Fact::Tid => KtlsFn::Gettid,
            Fact::Pid => KtlsFn::Getpid,
            Fact::Uid => KtlsFn::Getuid,
            Fact::Gid => KtlsFn::Getgid,
            Fact::Euid => KtlsFn::Geteuid,
            Fact::Egid => KtlsFn::Getegid,
        }
    }

    /// The system call's answer.
    fn syscall(self) -> u32 {
        match self {
            Fact::Tid => ids::gettid(),
            Fact::Pid => ids::getpid(),
            Fact::Uid => ids::getuid(),
            Fact::Gid => ids::getgid(),
            Fact::Euid => ids::geteuid(),
            Fact::Egid => ids::getegid(),
        }
    }
}

/// Whether the calling thread's area at `off` holds valid facts.
fn magic_ok(off: isize) -> bool {
    // SAFETY: `off` is the offset from the thread pointer of an area that
    // lies, in every thread, in a block of at least `KTLS_FACTS_END` bytes,
    // mapped for the life of the thread, registered or not: ktl's own block
    // (see `get`), or the areas of the decided state, which `decide` takes
    // only when the registrations are that long. The kernel writes the facts
    // only while this thread is out of user space.
    let magic = unsafe { arch::tp_load_u32::<{ abi::OFFSET_KTLS_MAGIC }>(off) };
    magic == abi::KTLS_FACTS_MAGIC
}

/// Reads one fact from the calling thread's area at `off`.
fn field(off: isize, fact: Fact) -> u32 {
    // SAFETY: as in `magic_ok`: every offset lies in the same block.
    unsafe {
        match fact {
            Fact::Tid => arch::tp_load_u32::<{ abi::OFFSET_KTLS_TID }>(off),
            Fact::Pid => arch::tp_load_u32::<{ abi::OFFSET_KTLS_PID }>(off),
            Fact::Uid => arch::tp_load_u32::<{ abi::OFFSET_KTLS_UID }>(off),
            Fact::Gid => arch::tp_load_u32::<{ abi::OFFSET_KTLS_GID }>(off),
            Fact::Euid => arch::tp_load_u32::<{ abi::OFFSET_KTLS_EUID }>(off),
            Fact::Egid => arch::tp_load_u32::<{ abi::OFFSET_KTLS_EGID }>(off),
        }
    }
}

/// The areas' offset when the calling thread's area holds valid facts:
/// one load once the thread is set up. The first call in a thread whose
/// area ktl owns registers it. `None` sends the caller to the system call:
/// the path is [`Path::Syscall`], the thread has no live area (released, or
/// its registration failed), or its facts are hidden (a `vfork` child).
#[inline]
fn live(st: &State) -> Option<isize> {
    if matches!(st.path, Path::Syscall(_)) {
        return None;
    }
    if magic_ok(st.offset) {
        return Some(st.offset);
    }
    live_slow(st.offset)
}

#[cold]
fn live_slow(off: isize) -> Option<isize> {
    // Registers the thread's area where ktl owns them; the kernel writes the
    // facts before this system call returns.
    area::thread_area()?;
    magic_ok(off).then_some(off)
}

/// Reads `fact` on the decided path, given the calling thread's live area
/// (see [`live`]), or from the system call without one.
fn read(st: &State, off: Option<isize>, fact: Fact) -> u32 {
    let Some(off) = off else {
        return fact.syscall();
    };
    match st.vdso[fact as usize] {
        Some(f) if st.path == Path::Vdso => {
            let ptr = area::area_ptr(off).cast_const().cast::<c_void>();
            // SAFETY: a KTLS vDSO function (see `vdso::ktls_fn`) only reads
            // the location it is given, through loads the kernel resumes at
            // its fallback if they fault, or makes a system call without
            // arguments; here it is the calling thread's own area.
            let r = unsafe { f(ptr) };
            u32::try_from(r).unwrap_or_else(|_| fact.syscall())
        }
        _ => field(off, fact),
    }
}

/// One fact. Inline, it is what the raw call is plus two tests: the load
/// and compare of the area's magic (a thread whose area does not hold valid
/// facts yet, or at all, goes to [`get_slow`], which registers it where ktl
/// owns the areas), and the check that the answer is an id. The function
/// comes from [`FAST_FNS`]: the vDSO's once decided, else the slow path or
/// the field's read, so no test of the decided state is needed. The area is
/// ktl's own, whose offset is a link-time constant on x86_64 executables:
/// the facts are there whenever ktl owns the areas, and [`decide`] points
/// the functions away from the slow path only then. (The C library's area
/// is not read here: where it is registered with 32 bytes, the magic's
/// bytes lie past it, maybe past the end of its mapping.)
#[inline(always)]
fn get(fact: Fact) -> u32 {
    let off = arch::own_area_offset();
    if magic_ok(off) {
        let f = FAST_FNS[fact as usize].load(Ordering::Relaxed);
        // SAFETY: every value of `FAST_FNS` is a `KtlsOffsetFn` cast to a
        // pointer (see its docs): one of this module's functions, or the
        // vDSO's, which stays mapped for the life of the process.
        let f = unsafe { core::mem::transmute::<*mut (), vdso::KtlsOffsetFn>(f) };
        // SAFETY: a KTLS vDSO function of the offset form only reads the
        // area at that offset from the thread pointer, through loads the kernel
        // resumes at its fallback if they fault, or makes a system call
        // without arguments; here it is the calling thread's own area. This
        // module's functions ignore the argument.
        let r = unsafe { f(off as usize) };
        if let Ok(v) = u32::try_from(r) {
            return v;
        }
    }
    get_slow(fact)
}

/// The rest of [`get`]: the first call, a thread whose area is not live yet
/// (registered here where ktl owns the areas) or at all, the system calls.
#[cold]
#[inline(never)]
fn get_slow(fact: Fact) -> u32 {
    match state() {
        Some(st) => read(st, live(st), fact),
        None => fact.syscall(),
    }
}

/// All six ids of the calling thread, with one check of the area for the
/// six.
pub fn thread_facts() -> ThreadFacts {
    let Some(st) = state() else {
        return syscall_facts();
    };
    let off = live(st);
    let read = |f: Fact| read(st, off, f);
    ThreadFacts {
        tid: read(Fact::Tid) as Pid,
        pid: read(Fact::Pid) as Pid,
        uid: read(Fact::Uid),
        gid: read(Fact::Gid),
        euid: read(Fact::Euid),
        egid: read(Fact::Egid),
    }
}

/// The same six ids from the system calls, whatever [`path`] is: the
/// baseline that the other paths must equal.
pub fn syscall_facts() -> ThreadFacts {
    ThreadFacts {
        tid: Fact::Tid.syscall() as Pid,
        pid: Fact::Pid.syscall() as Pid,
        uid: Fact::Uid.syscall(),
        gid: Fact::Gid.syscall(),
        euid: Fact::Euid.syscall(),
        egid: Fact::Egid.syscall(),
    }
}

/// The calling thread's id, as `gettid(2)` returns it.
#[inline]
pub fn tid() -> Pid {
    get(Fact::Tid) as Pid
}

/// The process id, as `getpid(2)` returns it.
#[inline]
pub fn pid() -> Pid {
    get(Fact::Pid) as Pid
}

/// The calling thread's real user id, as `getuid(2)` returns it.
#[inline]
pub fn uid() -> Uid {
    get(Fact::Uid)
}

/// The calling thread's real group id, as `getgid(2)` returns it.
#[inline]
pub fn gid() -> Gid {
    get(Fact::Gid)
}

/// The calling thread's effective user id, as `geteuid(2)` returns it.
#[inline]
pub fn euid() -> Uid {
    get(Fact::Euid)
}

/// The calling thread's effective group id, as `getegid(2)` returns it.
#[inline]
pub fn egid() -> Gid {
    get(Fact::Egid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_equal_the_system_calls() {
        assert_eq!(thread_facts(), syscall_facts());
        let me = syscall_facts();
        assert_eq!(
            (tid(), pid(), uid(), gid(), euid(), egid()),
            (me.tid, me.pid, me.uid, me.gid, me.euid, me.egid)
        );
        assert_eq!(me.pid, std::process::id() as Pid);
        assert_eq!((me.uid, me.tid), ids::libc_uid_tid());
    }

    #[test]
    fn each_thread_gets_its_own_tid() {
        let main = thread_facts();
        let (other, expected) = std::thread::spawn(|| (thread_facts(), syscall_facts()))
            .join()
            .unwrap();
        assert_eq!(other, expected);
        assert_ne!(main.tid, other.tid);
        assert_eq!(main.pid, other.pid);
    }

    #[test]
    fn path_is_consistent_with_the_kernel() {
        let p = path();
        if !abi::ktls_features().facts() {
            assert_eq!(p, Path::Syscall(Fallback::NoKernelSupport));
        }
        // The text names the path.
        let text = p.to_string();
        let word = match p {
            Path::Vdso => "vdso",
            Path::Field => "field",
            Path::Syscall(_) => "syscall",
        };
        assert!(text.starts_with(word), "{text}");
    }
}
