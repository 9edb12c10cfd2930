//! Who owns the KTLS area, and the per-thread registration lifecycle.
//!
//! A process has exactly one owner of its rseq areas, decided once, the first
//! time any thread asks ktl for anything:
//!
//! - [`Owner::Libc`]: the C library (glibc 2.35 or later) registered an area
//!   for every thread. ktl finds it through `__rseq_offset`, `__rseq_size` and
//!   `__rseq_flags`: with `dlsym` in a dynamically linked program, and with
//!   weak symbol references in a statically linked one, where `dlsym` cannot
//!   see them.
//! - [`Owner::Ktl`]: the C library did not register (the tunable
//!   `glibc.pthread.rseq=0`, a libc without rseq support, or glibc before
//!   2.35). ktl then registers its own area in each thread, the first time that
//!   thread touches ktl, and unregisters it from a thread-local destructor,
//!   before the thread's TLS is freed.
//! - [`Owner::Unavailable`]: the kernel has no rseq, a filter blocks it, or the
//!   registration failed. Every accessor still works, through the fallbacks
//!   described in [`crate::cpu`].
//!
//! ktl never writes a field that the kernel owns, in any mode: its own area
//! gets its initial values from the thread-local initialization image, before
//! the kernel knows about it, and is only read afterwards.
//!
//! # First calls and signal handlers
//!
//! The first calls set things up lazily: the owner decision (which also
//! looks vDSO `getcpu` up), a thread's registration (and the thread-local
//! destructor that undoes it, whose arming allocates), the random states.
//! While one of them runs, its thread carries a marker. A signal handler
//! that interrupts it and calls ktl on the same thread finds the marker and
//! sets nothing up: [`thread_area`] returns `None`, so the accessors answer
//! from the `getcpu` system call and `random` from the `getrandom` system
//! call, and [`release_current_thread`] still releases the thread. Waiting
//! for the set-up it interrupted would never end, since that set-up resumes
//! only when the handler returns. The registration tolerates a handler that
//! registers or releases the thread's area between the steps of the
//! interrupted call.
//!
//! A handler must not make a first call itself, unless it interrupts one of
//! those first calls on its own thread: setting up allocates and takes
//! locks, which the code it interrupted may hold. [`layout`] cannot answer before the owner
//! is decided: called from a handler that interrupts the decision on its own
//! thread, it would wait for ever. Once the owner is decided, it is one load
//! and async-signal-safe.

use crate::abi::{self, Features, KernelSupport, SyscallStatus};
use crate::arch::{self, HotOffset};
use crate::first_call::FirstCall;
use crate::sys::{self, Errno};
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering, compiler_fence};
use std::sync::OnceLock;

/// The owner of the process's rseq areas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// The C library registered every thread's area; ktl only reads it.
    Libc,
    /// ktl registers an area for each thread that uses it.
    Ktl(KtlReason),
    /// No thread has a usable area; ktl uses its fallbacks.
    Unavailable(Unavailable),
}

/// Why ktl, not the C library, owns the areas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KtlReason {
    /// The C library has rseq support but did not register
    /// (`__rseq_size` is 0): the tunable `glibc.pthread.rseq=0`, or its own
    /// registration failed at start-up.
    LibcDisabled,
    /// The C library exports no `__rseq_*` symbols: musl, or glibc before 2.35.
    LibcWithoutRseq,
}

/// Why no area is usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// The kernel has no rseq system call (`ENOSYS`): a kernel before 4.18,
    /// qemu-user, valgrind, gVisor, or a filter that imitates them.
    NoSyscall,
    /// A filter (in practice seccomp) blocks the system call; holds the errno
    /// of the probe (0 if the probe unexpectedly succeeded).
    Blocked(i32),
    /// The system call exists but registering ktl's area failed with this
    /// errno, typically because another library already registered a
    /// different area for the thread (`EINVAL` or `EBUSY`).
    RegistrationFailed(i32),
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Libc => f.write_str("libc"),
            Owner::Ktl(_) => f.write_str("ktl"),
            Owner::Unavailable(_) => f.write_str("unavailable"),
        }
    }
}

impl fmt::Display for KtlReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KtlReason::LibcDisabled => {
                "the C library supports rseq but did not register (__rseq_size is 0; \
                 for example GLIBC_TUNABLES=glibc.pthread.rseq=0)"
            }
            KtlReason::LibcWithoutRseq => {
                "the C library has no rseq support (no __rseq_offset/__rseq_size symbols)"
            }
        })
    }
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Unavailable::NoSyscall => f.write_str("the kernel has no rseq system call (ENOSYS)"),
            Unavailable::Blocked(0) => {
                f.write_str("rseq(NULL, 0, 0, 0) unexpectedly succeeded; treating rseq as blocked")
            }
            Unavailable::Blocked(errno) => write!(
                f,
                "a filter blocks the rseq system call ({})",
                sys::errno_name(errno)
            ),
            Unavailable::RegistrationFailed(errno) => write!(
                f,
                "registering ktl's area failed ({}); another library may own this thread's area",
                sys::errno_name(errno)
            ),
        }
    }
}

impl std::error::Error for Unavailable {}

/// How ktl found the C library's `__rseq_*` symbols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SymbolLookup {
    /// `dlsym(RTLD_DEFAULT, ...)`, in a dynamically linked program.
    Dlsym,
    /// Weak references resolved by the static linker, in a statically linked
    /// program.
    WeakSymbols,
}

/// What the C library exports about its rseq registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LibcRseq {
    /// `__rseq_offset`: the area's offset from the thread pointer.
    pub offset: isize,
    /// `__rseq_size` as exported (its meaning changed between glibc versions;
    /// see [`libc_active_size`]).
    pub size: u32,
    /// `__rseq_flags`.
    pub flags: u32,
    /// How ktl found the symbols.
    pub lookup: SymbolLookup,
}

/// The process's KTLS layout: what [`layout`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Who owns the areas.
    pub owner: Owner,
    /// Offset of the area from the thread pointer, the same in every thread;
    /// `None` when the areas are unavailable.
    pub offset: Option<isize>,
    /// The length the areas are registered with (0 when unavailable).
    pub registered_len: u32,
    /// Whether `registered_len` was confirmed by the kernel. ktl owns its
    /// registrations, so it knows; for the C library's, ktl confirms the length
    /// with a registration attempt that the kernel refuses with `EBUSY` only
    /// when area, length and signature all match.
    pub registered_len_confirmed: bool,
    /// The active feature size: how many bytes of the area the kernel keeps
    /// up to date for this registration.
    pub active_size: u32,
    /// The alignment the kernel requires of areas longer than 32 bytes.
    pub align: u32,
    /// The fields the kernel keeps up to date.
    pub features: Features,
    /// What the kernel offers.
    pub kernel: KernelSupport,
    /// What the C library exports, if it has rseq support.
    pub libc: Option<LibcRseq>,
}

/// Registration counters of the process (ktl-owned registrations only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Threads whose area ktl registered.
    pub registered: u64,
    /// Threads whose area ktl unregistered: at thread exit, or with
    /// [`release_current_thread`].
    pub unregistered: u64,
    /// Registration attempts the kernel refused.
    pub register_failures: u64,
    /// Unregistrations the kernel refused (always 0 unless something else
    /// tampered with the registration).
    pub unregister_failures: u64,
}

static REGISTERED: AtomicU64 = AtomicU64::new(0);
static UNREGISTERED: AtomicU64 = AtomicU64::new(0);
static REGISTER_FAILURES: AtomicU64 = AtomicU64::new(0);
static UNREGISTER_FAILURES: AtomicU64 = AtomicU64::new(0);

/// The registration counters: with [`Owner::Ktl`], `registered -
/// unregistered` is the number of live threads whose area ktl registered and
/// did not release.
pub fn stats() -> Stats {
    Stats {
        registered: REGISTERED.load(Ordering::Relaxed),
        unregistered: UNREGISTERED.load(Ordering::Relaxed),
        register_failures: REGISTER_FAILURES.load(Ordering::Relaxed),
        unregister_failures: UNREGISTER_FAILURES.load(Ordering::Relaxed),
    }
}

/// The active size of the C library's registration, from `__rseq_size` and
/// the kernel's feature size.
///
/// `__rseq_size` changed meaning over glibc's history: 32 in 2.35 to 2.39, 20
/// in 2.40 (and in some distributions' backports), and the real feature size
/// from 2.41 on. The rule that works for all of them: 0 means the library did
/// not register; 20 or 32 means a 32-byte registration, of which the kernel
/// keeps `min(32, feature size)` bytes up to date; any other value is exact.
pub fn libc_active_size(rseq_size: u32, kernel_feature_size: u32) -> u32 {
    match rseq_size {
        0 => 0,
        20 | 32 => kernel_feature_size.min(abi::ORIG_RSEQ_SIZE),
        n => n,
    }
}

/// The length ktl registers its own area with: `max(32, feature size)`, so a
/// kernel that has them gives the optimized mode and the newer fields. When
/// that does not fit ktl's reserved block (or its alignment), the 32-byte
/// original ABI, which every kernel accepts.
pub fn ktl_registration_len(kernel: &KernelSupport) -> u32 {
    let want = kernel.feature_size.max(abi::ORIG_RSEQ_SIZE);
    if want as usize <= arch::OWN_AREA_CAPACITY && kernel.align as usize <= arch::BLOCK_ALIGN {
        want
    } else {
        abi::ORIG_RSEQ_SIZE
    }
}

/// The fields the kernel keeps up to date in an area of `active` bytes. The
/// KTLS prototype (6.12 with the thread facts) advertises a feature size of
/// 64 but leaves bytes 28 to 35, where upstream put `slice_ctrl` in 7.0,
/// alone.
fn live_features(active: u32) -> Features {
    let f = Features::for_size(active);
    if abi::ktls_features().facts() {
        f.without(Features::SLICE_CTRL)
    } else {
        f
    }
}

/// The process's layout. The first call decides the owner (and, when ktl
/// owns the areas, registers the calling thread's); later calls return the
/// cached answer.
///
/// Once decided, this is one load and async-signal-safe. Before, it
/// decides, which a signal handler must not do: one that calls `layout`
/// while its own thread is deciding waits for ever (see the
/// [module docs](self#first-calls-and-signal-handlers)).
pub fn layout() -> Layout {
    match DECISION.get() {
        Some(d) => d.layout,
        None => layout_first(),
    }
}

#[cold]
#[inline(never)]
fn layout_first() -> Layout {
    // Marked, so that a signal handler that interrupts the decision and
    // calls an accessor takes the accessor's system call instead.
    let _first = FirstCall::begin();
    decision().layout
}

/// The decided state: the layout plus what the hot paths need.
struct Decision {
    layout: Layout,
}

static DECISION: OnceLock<Decision> = OnceLock::new();

/// The decision, made now if it has not been. Callers hold the thread's
/// [`FirstCall`] marker when it was free, so that a signal handler that
/// interrupts the decision never waits for it.
fn decision() -> &'static Decision {
    DECISION.get_or_init(|| {
        // Before any critical section can leave a descriptor of this object
        // in a live area: see `crate::pin`.
        crate::pin::ensure();
        let d = decide();
        // A thread that reads a hot offset before this store reads its own,
        // unregistered area and comes here, where it waits for the decision.
        publish_hot_offsets(&d.layout);
        d
    })
}

fn decide() -> Decision {
    // Look vDSO getcpu up now, so that the accessors' fallback never has to:
    // the first lookup parses the vDSO, which a signal handler must not do.
    let _ = crate::vdso::getcpu_fn_in_first_call();
    let kernel = KernelSupport::probe();
    let libc = libc_rseq();
    let base = Layout {
        owner: Owner::Unavailable(Unavailable::NoSyscall),
        offset: None,
        registered_len: 0,
        registered_len_confirmed: false,
        active_size: 0,
        align: kernel.align,
        features: Features::empty(),
        kernel,
        libc,
    };

    if let Some(l) = libc.filter(libc_registered) {
        // The C library registered (at least the main thread). Even when a
        // filter now blocks the probe, its areas are live where registration
        // succeeded; threads where it failed see a negative cpu_id and take
        // the fallback.
        let active = libc_active_size(l.size, kernel.feature_size);
        let (len, confirmed) = confirm_libc_len(l.offset, l.size, kernel.feature_size);
        return Decision {
            layout: Layout {
                owner: Owner::Libc,
                offset: Some(l.offset),
                registered_len: len,
                registered_len_confirmed: confirmed,
                active_size: active,
                features: live_features(active),
                ..base
            },
        };
    }

    let owner_reason = if libc.is_some() {
        KtlReason::LibcDisabled
    } else {
        KtlReason::LibcWithoutRseq
    };
    match kernel.syscall {
        SyscallStatus::Absent => {
            return Decision {
                layout: Layout {
                    owner: Owner::Unavailable(Unavailable::NoSyscall),
                    ..base
                },
            };
        }
        SyscallStatus::Blocked(errno) => {
            return Decision {
                layout: Layout {
                    owner: Owner::Unavailable(Unavailable::Blocked(errno)),
                    ..base
                },
            };
        }
        SyscallStatus::Available => {}
    }

    let len = ktl_registration_len(&kernel);
    let active = kernel.feature_size.min(len);
    // Register the deciding thread now: if that fails, nothing will work in
    // the other threads either (another library owns the areas, or a filter
    // refuses registrations), and the owner is Unavailable.
    match register_with(len) {
        // `None`: the deciding thread is past its TLS destructors and can no
        // longer register; the other threads still can.
        Ok(()) | Err(None) => Decision {
            layout: Layout {
                owner: Owner::Ktl(owner_reason),
                offset: Some(arch::own_area_offset()),
                registered_len: len,
                registered_len_confirmed: true,
                active_size: active,
                features: live_features(active),
                ..base
            },
        },
        Err(Some(errno)) => Decision {
            layout: Layout {
                owner: Owner::Unavailable(Unavailable::RegistrationFailed(errno)),
                ..base
            },
        },
    }
}

/// Points each fast accessor at the area it must read for `layout`.
fn publish_hot_offsets(layout: &Layout) {
    let dead = arch::dead_area_offset();
    let area = layout.offset.unwrap_or(dead);
    let pick = |f: Features| {
        if layout.features.contains(f) {
            area
        } else {
            dead
        }
    };
    arch::set_hot_offset(HotOffset::Node, pick(Features::NODE_ID));
    arch::set_hot_offset(HotOffset::Cid, pick(Features::MM_CID));
    arch::set_hot_offset(HotOffset::Cpu, pick(Features::CPU_ID));
}

/// The calling thread's live area, as an offset from the thread pointer, or
/// `None` when this thread has none (ktl then uses its fallbacks).
///
/// With [`Owner::Ktl`] this registers the calling thread's area on first use.
/// This is the slow path behind every accessor; it costs a few loads once the
/// thread is set up.
///
/// In a signal handler that interrupts one of ktl's first calls on its
/// thread, before that call has decided the owner or registered the
/// thread, it returns `None` and sets nothing up (see the
/// [module docs](self#first-calls-and-signal-handlers)).
pub fn thread_area() -> Option<isize> {
    let Some(d) = DECISION.get() else {
        return thread_area_first();
    };
    let off = d.layout.offset?;
    if let Owner::Ktl(_) = d.layout.owner {
        match registration_state() {
            REGISTERED_STATE => {}
            NOT_ATTEMPTED => return thread_area_first(),
            _ => return None,
        }
    }
    live_area(off)
}

/// [`thread_area`] when the owner is not decided or the thread not
/// registered yet: decides and registers, marked as a first call.
#[cold]
#[inline(never)]
fn thread_area_first() -> Option<isize> {
    // `None`: a signal handler that interrupted a first call on this thread.
    let _first = FirstCall::begin()?;
    let d = decision();
    let off = d.layout.offset?;
    if let Owner::Ktl(_) = d.layout.owner {
        if register_with(d.layout.registered_len).is_err() {
            return None;
        }
    }
    live_area(off)
}

/// `off` if the calling thread's area there is registered.
fn live_area(off: isize) -> Option<isize> {
    // SAFETY: `off` is the area's offset from the thread pointer in every
    // thread: glibc's static TLS offset, or ktl's own block; both are mapped
    // for the life of the thread.
    let cpu = unsafe { arch::tp_load_u32::<{ abi::OFFSET_CPU_ID }>(off) };
    ((cpu as i32) >= 0).then_some(off)
}

/// Whether ktl's own area is registered in the calling thread: the kernel
/// writes its `cpu_id` before the registration returns to user space, and
/// resets it to -1 when it is unregistered. Nothing registers that block but
/// ktl, so a live one is ktl's registration.
fn own_area_live() -> bool {
    live_area(arch::own_area_offset()).is_some()
}

/// Address of the calling thread's area at `off`.
pub(crate) fn area_ptr(off: isize) -> *mut u8 {
    (arch::thread_pointer() as isize).wrapping_add(off) as *mut u8
}

/// Confirms the length of the C library's registration, in the calling thread,
/// and returns `(length, confirmed)`.
///
/// Registering again with the identical area, length and signature fails with
/// `EBUSY` and changes nothing; any other length fails with `EINVAL`. The
/// attempt is made only when the thread's area is registered (its `cpu_id` is
/// not negative), so it can never create a registration.
fn confirm_libc_len(offset: isize, rseq_size: u32, feature_size: u32) -> (u32, bool) {
    let guess = rseq_size.max(abi::ORIG_RSEQ_SIZE);
    // SAFETY: `offset` is the C library's area in this thread's static TLS.
    let cpu = unsafe { arch::tp_load_u32::<{ abi::OFFSET_CPU_ID }>(offset) };
    if (cpu as i32) < 0 {
        return (guess, false);
    }
    let mut candidates = [
        guess,
        abi::ORIG_RSEQ_SIZE,
        feature_size.max(abi::ORIG_RSEQ_SIZE),
    ];
    candidates.sort_unstable();
    let mut prev = 0;
    for len in candidates {
        if len == prev {
            continue;
        }
        prev = len;
        // SAFETY: the thread already has a registration (cpu_id >= 0), and
        // the kernel refuses every registration while one is live: with EBUSY
        // for identical arguments, EINVAL or EPERM otherwise. Nothing is
        // registered or written.
        match unsafe { sys::rseq::call(area_ptr(offset), len, 0, abi::RSEQ_SIG) } {
            Err(Errno(sys::EBUSY)) => return (len, true),
            Err(_) => continue,
            Ok(()) => {
                // Impossible while a registration is live; undo it at once so
                // ktl never owns an area it did not decide to own.
                // SAFETY: the registration just made has exactly these
                // arguments.
                let _ = unsafe {
                    sys::rseq::call(
                        area_ptr(offset),
                        len,
                        abi::RSEQ_FLAG_UNREGISTER,
                        abi::RSEQ_SIG,
                    )
                };
                return (guess, false);
            }
        }
    }
    (guess, false)
}

/// Per-thread registration state of ktl's own area.
///
/// It has no destructor, so reading or changing it arms nothing, and a
/// signal handler may do both. Only its own thread changes it; the state is
/// atomic so that a change is one instruction, which a signal handler sees
/// either before or after. Every change is a `compare_exchange` or `swap`
/// that claims it: a handler that interrupts the claim between the read and
/// the write made its own change first, and the claim fails and reads again.
struct ThreadRegistration {
    /// [`NOT_ATTEMPTED`], [`REGISTERING`], [`REGISTERED_STATE`], [`FAILED`]
    /// or [`RELEASED`].
    state: AtomicU8,
    /// The registered length, for the unregistration: set before the
    /// registration is made.
    len: AtomicU32,
}

/// No registration yet.
const NOT_ATTEMPTED: u8 = 0;
/// Registered, and unregistered by the thread-local destructor at exit.
const REGISTERED_STATE: u8 = 1;
/// The kernel refused the registration, or the thread's TLS destructors ran:
/// never registered again.
const FAILED: u8 = 2;
/// Released with [`release_current_thread`]: never registered again.
const RELEASED: u8 = 3;
/// The calling code is registering: a signal handler that finds this state
/// interrupted the registration.
const REGISTERING: u8 = 4;

thread_local! {
    static REGISTRATION: ThreadRegistration = const {
        ThreadRegistration { state: AtomicU8::new(NOT_ATTEMPTED), len: AtomicU32::new(0) }
    };
    /// Armed before the thread's registration: its destructor unregisters.
    static UNREGISTER_AT_EXIT: UnregisterAtExit = const { UnregisterAtExit };
}

/// The thread-local destructor that unregisters the thread's area.
struct UnregisterAtExit;

impl Drop for UnregisterAtExit {
    fn drop(&mut self) {
        // Runs from the thread's TLS destructors, before its static TLS (which
        // holds the area) is freed or reused. The swap claims the
        // registration: a signal handler that releases the area meanwhile
        // finds nothing left to release, and the thread never registers again.
        let _ = REGISTRATION.try_with(|r| {
            if r.state.swap(FAILED, Ordering::Relaxed) == REGISTERED_STATE {
                count_unregistration(unregister(r));
            }
        });
    }
}

/// The calling thread's registration state.
fn registration_state() -> u8 {
    REGISTRATION
        .try_with(|r| r.state.load(Ordering::Relaxed))
        .unwrap_or(FAILED)
}

/// Unregisters the calling thread's area, with exactly the registered length
/// and signature.
fn unregister(r: &ThreadRegistration) -> Result<(), i32> {
    // SAFETY: ktl's own area of this thread, with the length and signature
    // it was registered with. If it is not registered (any more), the kernel
    // refuses with EINVAL and changes nothing.
    unsafe {
        sys::rseq::call(
            area_ptr(arch::own_area_offset()),
            r.len.load(Ordering::Relaxed),
            abi::RSEQ_FLAG_UNREGISTER,
            abi::RSEQ_SIG,
        )
    }
    .map_err(|e| e.0)
}

fn count_unregistration(result: Result<(), i32>) {
    match result {
        Ok(()) => UNREGISTERED.fetch_add(1, Ordering::Relaxed),
        Err(_) => UNREGISTER_FAILURES.fetch_add(1, Ordering::Relaxed),
    };
}

/// Why [`release_current_thread`] did not release the calling thread's area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseError {
    /// The C library owns the areas ([`Owner::Libc`]); ktl never unregisters
    /// an area it did not register.
    OwnedByLibc,
    /// The kernel refused the unregistration; the area stays registered.
    Kernel(Errno),
}

impl fmt::Display for ReleaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReleaseError::OwnedByLibc => f.write_str(
                "the C library owns this thread's rseq area; ktl only unregisters areas it registered",
            ),
            ReleaseError::Kernel(e) => write!(f, "the kernel refused to unregister the area: {e}"),
        }
    }
}

impl std::error::Error for ReleaseError {}

/// Unregisters ktl's rseq area of the calling thread, and never registers
/// one for it again.
///
/// Afterwards the thread runs every API on its fallbacks: the accessors
/// read the CPU through the vDSO or a system call, and restartable-sequence
/// operations take [`Path::Fenced`](crate::rseq::Path::Fenced) (or
/// `rseq::start` returns `None` where that path is unavailable). Other
/// threads are unaffected. Use it to hand the thread's one rseq
/// registration to other code that registers its own area, or to run the
/// fallbacks next to the fast path in tests (`ktl stress --rseq-off-every`).
///
/// It is safe at any point, even from a signal handler, once the owner is
/// decided, and in a signal handler that interrupts a first call on its own
/// thread: a critical section that this thread had started is aborted by
/// the signal that interrupted it, and one started afterwards on the
/// released area finds `cpu_id` at -1 (the kernel resets it on
/// unregistration) and aborts. A handler that interrupts the thread's
/// registration releases the area that registration makes, whether it has
/// returned yet or not. (Before the owner is decided, and outside such a
/// handler, it decides the owner, which a signal handler must not do.)
///
/// Returns `Ok` when the thread has no ktl registration to release (the
/// owner is [`Owner::Unavailable`], the registration had failed, or it was
/// already released). In a handler that interrupts a first call on its own
/// thread before the owner is decided, it cannot know the owner: it
/// releases the thread, which then never registers, and returns `Ok` even
/// if the C library turns out to own the areas.
///
/// # Errors
///
/// [`ReleaseError::OwnedByLibc`] when the C library owns the areas, and
/// [`ReleaseError::Kernel`] when the kernel refuses (not expected: the
/// arguments are those of the registration).
///
/// See `rseq(2)`, `RSEQ_FLAG_UNREGISTER`.
pub fn release_current_thread() -> Result<(), ReleaseError> {
    let owner = match DECISION.get() {
        Some(d) => d.layout.owner,
        None => match FirstCall::begin() {
            Some(_first) => decision().layout.owner,
            // A signal handler that interrupted a first call on this
            // thread, before the owner was decided.
            None => return release_registration(),
        },
    };
    match owner {
        Owner::Libc => Err(ReleaseError::OwnedByLibc),
        Owner::Unavailable(_) => Ok(()),
        Owner::Ktl(_) => release_registration(),
    }
}

/// Releases the calling thread's registration: unregisters it if it is
/// live, and makes sure the thread never registers.
fn release_registration() -> Result<(), ReleaseError> {
    REGISTRATION
        .try_with(release_in)
        // Past the thread's TLS destructors: nothing is registered.
        .unwrap_or(Ok(()))
}

fn release_in(r: &ThreadRegistration) -> Result<(), ReleaseError> {
    loop {
        let now = r.state.load(Ordering::Relaxed);
        let live = match now {
            REGISTERED_STATE => true,
            // This is a signal handler that interrupted the thread's
            // registration: the area is live if the registration returned.
            // The interrupted call then finds the thread released, and
            // undoes a registration that returns after this.
            REGISTERING => own_area_live(),
            NOT_ATTEMPTED => false,
            // Failed, released, or past the thread's TLS destructors.
            _ => return Ok(()),
        };
        if r.state
            .compare_exchange(now, RELEASED, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            // A handler changed the state between the load and the claim.
            continue;
        }
        if !live {
            return Ok(());
        }
        return match unregister(r) {
            Ok(()) => {
                UNREGISTERED.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                // Still registered, as it was.
                r.state.store(now, Ordering::Relaxed);
                Err(ReleaseError::Kernel(Errno(e)))
            }
        };
    }
}

/// Registers ktl's area for the calling thread, once: `Ok` when the thread
/// has a live ktl registration (made now, or already), `Err(Some(errno))`
/// when the kernel refuses, `Err(None)` when the thread may no longer
/// register (an earlier attempt failed, its TLS is torn down, or a signal
/// handler released it).
///
/// The caller holds the thread's [`FirstCall`] marker, so a signal handler
/// that interrupts this never registers. A handler that ran just before the
/// marker was taken may have registered the thread already, and one that
/// interrupts this may release it.
fn register_with(len: u32) -> Result<(), Option<i32>> {
    REGISTRATION
        .try_with(|r| register_in(r, len))
        .unwrap_or(Err(None))
}

fn register_in(r: &ThreadRegistration, len: u32) -> Result<(), Option<i32>> {
    if let Err(now) = r.state.compare_exchange(
        NOT_ATTEMPTED,
        REGISTERING,
        Ordering::Relaxed,
        Ordering::Relaxed,
    ) {
        return if now == REGISTERED_STATE {
            Ok(())
        } else {
            Err(None)
        };
    }
    r.len.store(len, Ordering::Relaxed);
    // Arm the destructor that unregisters the area at thread exit. Past the
    // thread's TLS destructors it can no longer be armed: then the thread
    // never registers.
    if UNREGISTER_AT_EXIT.try_with(|_| ()).is_err() {
        settle(r, FAILED);
        return Err(None);
    }
    // The state and length are stored before the registration, which a
    // signal handler may see the moment it returns.
    compiler_fence(Ordering::SeqCst);
    let result = register_own_area(len);
    compiler_fence(Ordering::SeqCst);
    if let Err(e) = result {
        // EBUSY with a live area: the area is registered already, with
        // exactly this length and signature (any other registration gets
        // EINVAL or EPERM), and ktl's own area is nobody else's: keep it.
        if e != sys::EBUSY || !own_area_live() {
            REGISTER_FAILURES.fetch_add(1, Ordering::Relaxed);
            settle(r, FAILED);
            return Err(Some(e));
        }
    }
    REGISTERED.fetch_add(1, Ordering::Relaxed);
    if r.state
        .compare_exchange(
            REGISTERING,
            REGISTERED_STATE,
            Ordering::Relaxed,
            Ordering::Relaxed,
        )
        .is_ok()
    {
        return Ok(());
    }
    // A signal handler released the thread meanwhile. It unregistered the
    // area if the registration had returned; otherwise undo it here.
    if own_area_live() {
        let undone = unregister(r);
        let kept = undone.is_err();
        count_unregistration(undone);
        if kept {
            // Still registered: the thread's exit unregisters it.
            r.state.store(REGISTERED_STATE, Ordering::Relaxed);
            return Ok(());
        }
    }
    Err(None)
}

/// Ends a registration attempt in `to`, unless a signal handler released
/// the thread meanwhile (it stays released).
fn settle(r: &ThreadRegistration, to: u8) {
    let _ = r
        .state
        .compare_exchange(REGISTERING, to, Ordering::Relaxed, Ordering::Relaxed);
}

/// The registration system call for ktl's own area of the calling thread.
fn register_own_area(len: u32) -> Result<(), i32> {
    let ptr = area_ptr(arch::own_area_offset());
    // SAFETY: the area is ktl's own thread-local block: `len` bytes (at most
    // OWN_AREA_CAPACITY) at an address aligned to BLOCK_ALIGN (64, at least
    // the kernel's alignment, checked by `ktl_registration_len`). It stays
    // mapped and unused by anything else until the destructor
    // `UNREGISTER_AT_EXIT`, which the caller armed, unregisters it. User
    // space never writes its kernel-owned fields.
    //
    // On the KTLS kernel prototype, the registration also records the
    // thread group's layout (every thread's area is at the same offset), so
    // that clone3(CLONE_RSEQ_KTLS) can register new threads. If the kernel
    // refuses that (another layout is set), register plainly.
    let result = if abi::ktls_features().group_layout() {
        // SAFETY: as above; the flag changes only what the kernel records.
        match unsafe { sys::rseq::call(ptr, len, abi::RSEQ_FLAG_KTLS_LAYOUT, abi::RSEQ_SIG) } {
            Ok(()) => {
                note_group_layout_set();
                Ok(())
            }
            // SAFETY: as above.
            Err(_) => unsafe { sys::rseq::call(ptr, len, 0, abi::RSEQ_SIG) },
        }
    } else {
        // SAFETY: as above.
        unsafe { sys::rseq::call(ptr, len, 0, abi::RSEQ_SIG) }
    };
    result.map_err(|e| e.0)
}

/// Whether ktl recorded the thread group's layout in the kernel (the KTLS
/// prototype's `RSEQ_FLAG_KTLS_LAYOUT`) in this process.
static GROUP_LAYOUT_SET: AtomicBool = AtomicBool::new(false);

/// Notes that ktl recorded the thread group's layout: when it registers
/// its own areas with the layout flag, and `ktls::set_group_layout`.
pub(crate) fn note_group_layout_set() {
    GROUP_LAYOUT_SET.store(true, Ordering::Relaxed);
}

/// Whether ktl recorded the thread group's layout in this process (see
/// [`note_group_layout_set`]).
pub(crate) fn group_layout_set() -> bool {
    GROUP_LAYOUT_SET.load(Ordering::Relaxed)
}

/// Whether the C library registered its areas (at least the main thread's),
/// which makes it the owner.
fn libc_registered(libc: &LibcRseq) -> bool {
    libc.size > 0
}

/// The offset of the C library's area when the C library registered one,
/// and so owns the areas: what the decision will find, read before it is
/// made. It touches no state of ktl, and its only calls (`dlsym`, in a
/// dynamically linked program) work before `main`, where it runs (the
/// initializer of `arch::cpu_id_load`, on x86_64).
#[cfg_attr(
    any(feature = "shared-object", target_arch = "aarch64"),
    allow(dead_code)
)]
pub(crate) fn libc_owned_offset() -> Option<isize> {
    libc_rseq().filter(libc_registered).map(|l| l.offset)
}

/// Finds the C library's `__rseq_*` symbols.
#[cfg(not(target_feature = "crt-static"))]
fn libc_rseq() -> Option<LibcRseq> {
    let lookup = |name: &core::ffi::CStr| sys::dl::dlsym_default(name).map(|p| p.as_ptr());
    let offset = lookup(c"__rseq_offset")?;
    let size = lookup(c"__rseq_size")?;
    let flags = lookup(c"__rseq_flags");
    // SAFETY: glibc defines these symbols as `const ptrdiff_t __rseq_offset`,
    // `const unsigned int __rseq_size` and `const unsigned int __rseq_flags`,
    // set before any user code runs and never changed afterwards.
    unsafe {
        Some(read_libc_symbols(
            offset.cast_const().cast(),
            size.cast_const().cast(),
            flags.map(|p| p.cast_const().cast()),
            SymbolLookup::Dlsym,
        ))
    }
}

/// Finds the C library's `__rseq_*` symbols in a statically linked program.
#[cfg(target_feature = "crt-static")]
fn libc_rseq() -> Option<LibcRseq> {
    let [offset, size, flags] = arch::libc_weak_rseq_symbols();
    if offset.is_null() || size.is_null() {
        return None;
    }
    let flags = (!flags.is_null()).then_some(flags.cast());
    // SAFETY: the static linker resolved these weak references to glibc's
    // definitions (see `read_libc_symbols`); null means absent, handled above.
    unsafe {
        Some(read_libc_symbols(
            offset.cast(),
            size.cast(),
            flags,
            SymbolLookup::WeakSymbols,
        ))
    }
}

/// Reads the three symbols.
///
/// # Safety
/// Each pointer must point to the C library's symbol of that name.
unsafe fn read_libc_symbols(
    offset: *const isize,
    size: *const u32,
    flags: Option<*const u32>,
    lookup: SymbolLookup,
) -> LibcRseq {
    // SAFETY: the caller passes pointers to the live, initialized symbols.
    unsafe {
        LibcRseq {
            offset: offset.read(),
            size: size.read(),
            flags: flags.map_or(0, |p| p.read()),
            lookup,
        }
    }
}

/// The C library's name and version, such as `("glibc", "2.36")`, when ktl
/// can tell.
pub fn libc_version() -> Option<(&'static str, String)> {
    #[cfg(target_env = "gnu")]
    {
        let v = sys::glibc_version();
        Some(("glibc", v.to_string_lossy().into_owned()))
    }
    #[cfg(not(target_env = "gnu"))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libc_size_rule() {
        assert_eq!(libc_active_size(0, 28), 0);
        assert_eq!(libc_active_size(32, 20), 20);
        assert_eq!(libc_active_size(32, 28), 28);
        assert_eq!(libc_active_size(20, 28), 28);
        assert_eq!(libc_active_size(20, 33), 32);
        assert_eq!(libc_active_size(28, 28), 28);
        assert_eq!(libc_active_size(33, 33), 33);
    }

    #[test]
    fn registration_len_rule() {
        let k = |feature_size, align| KernelSupport {
            feature_size,
            align,
            from_auxv: true,
            syscall: SyscallStatus::Available,
        };
        assert_eq!(ktl_registration_len(&k(20, 32)), 32);
        assert_eq!(ktl_registration_len(&k(28, 32)), 32);
        assert_eq!(ktl_registration_len(&k(33, 64)), 33);
        assert_eq!(ktl_registration_len(&k(100, 64)), 100);
        // Larger than the reserved block, or a stricter alignment: 32 bytes.
        assert_eq!(ktl_registration_len(&k(200, 64)), 32);
        assert_eq!(ktl_registration_len(&k(40, 128)), 32);
    }

    #[test]
    fn messages_name_the_errno() {
        assert!(
            Unavailable::Blocked(sys::EPERM)
                .to_string()
                .contains("EPERM")
        );
        assert!(
            Unavailable::RegistrationFailed(sys::EINVAL)
                .to_string()
                .contains("EINVAL")
        );
        assert!(Unavailable::NoSyscall.to_string().contains("ENOSYS"));
    }
}
