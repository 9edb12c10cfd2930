//! The vDSO: finding it, looking up its symbols, and calling its `getcpu`
//! and `getrandom`.
//!
//! The kernel maps a small ELF shared object, the vDSO, into every process
//! and passes its address in the auxiliary vector (`AT_SYSINFO_EHDR`). Its
//! functions, such as `getcpu` and `clock_gettime`, run in user space without
//! entering the kernel.
//!
//! [`Vdso::get`] finds and parses the process's vDSO once; [`getcpu`] calls
//! the vDSO's `getcpu` through a cached function pointer, and
//! [`getrandom_fn`] gives the vDSO's `getrandom` (Linux 6.11 on), which
//! [`crate::random`] calls with per-thread state. The ELF parsing itself is
//! safe code working on a byte slice ([`Image`]), so it can be tested and
//! fuzzed on any bytes through [`Vdso::parse`].
//!
//! Setting the environment variable `KTL_VDSO=off` before the first use
//! makes ktl ignore the vDSO ([`VdsoError::Disabled`]): every vDSO call then
//! takes its system-call fallback. It exists to test those fallbacks and to
//! rule the vDSO out when debugging.
//!
//! The first lookup of a symbol parses the vDSO (and reads the environment,
//! which allocates). A signal handler that interrupts one of ktl's first
//! calls on its thread gets `None` from the lookup functions when the symbol
//! was never looked up, without caching it, so that the accessors take their
//! system call instead of waiting for the parse they interrupted; see
//! [`crate::area`].

mod elf;
#[cfg(test)]
mod test_util;

pub use elf::Image;

use crate::sys;
use core::ffi::{c_int, c_void};
use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// The vDSO symbol version of the current architecture: `"LINUX_2.6"` on
/// x86_64, `"LINUX_2.6.39"` on aarch64.
#[cfg(target_arch = "x86_64")]
pub const VERSION: &str = "LINUX_2.6";
/// The vDSO symbol version of the current architecture: `"LINUX_2.6"` on
/// x86_64, `"LINUX_2.6.39"` on aarch64.
#[cfg(target_arch = "aarch64")]
pub const VERSION: &str = "LINUX_2.6.39";

/// The vDSO's `getcpu` symbol name on this architecture: `"__vdso_getcpu"`
/// on x86_64, `"__kernel_getcpu"` on aarch64 (where only recent kernels, if
/// any, provide it; [`getcpu_fn`] then returns `None`).
#[cfg(target_arch = "x86_64")]
pub const GETCPU: &str = "__vdso_getcpu";
/// The vDSO's `getcpu` symbol name on this architecture: `"__vdso_getcpu"`
/// on x86_64, `"__kernel_getcpu"` on aarch64 (where only recent kernels, if
/// any, provide it; [`getcpu_fn`] then returns `None`).
#[cfg(target_arch = "aarch64")]
pub const GETCPU: &str = "__kernel_getcpu";

/// The vDSO's `getrandom` symbol name on this architecture:
/// `"__vdso_getrandom"` on x86_64 (Linux 6.11 on), `"__kernel_getrandom"` on
/// aarch64 (Linux 6.14 on).
#[cfg(target_arch = "x86_64")]
pub const GETRANDOM: &str = "__vdso_getrandom";
/// The vDSO's `getrandom` symbol name on this architecture:
/// `"__vdso_getrandom"` on x86_64 (Linux 6.11 on), `"__kernel_getrandom"` on
/// aarch64 (Linux 6.14 on).
#[cfg(target_arch = "aarch64")]
pub const GETRANDOM: &str = "__kernel_getrandom";

/// The symbol version of the KTLS prototype's vDSO functions ([`KtlsFn`]),
/// which only the patched kernel in this repository's `kernel/` (x86_64 and
/// aarch64) exports.
pub const KTLS_VERSION: &str = "LINUX_KTLS_0.1";

/// The KTLS prototype's vDSO functions: each answers one question from the
/// thread facts in the caller's rseq area, whose location it takes as an
/// argument, and makes the system call itself when the area holds no valid
/// facts. They return the value or a negative errno and never write
/// `errno`. A bad location (null, misaligned, unmapped, a kernel address)
/// never crashes: the kernel resumes a faulting load at the fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KtlsFn {
    /// `gettid()`.
    Gettid,
    /// `getpid()`.
    Getpid,
    /// `getuid()`.
    Getuid,
    /// `getgid()`.
    Getgid,
    /// `geteuid()`.
    Geteuid,
    /// `getegid()`.
    Getegid,
    /// The CPU number (the area's `cpu_id`, else what vDSO getcpu reads).
    Getcpu,
}

impl KtlsFn {
    /// Every function, in declaration order.
    pub const ALL: [KtlsFn; 7] = [
        KtlsFn::Gettid,
        KtlsFn::Getpid,
        KtlsFn::Getuid,
        KtlsFn::Getgid,
        KtlsFn::Geteuid,
        KtlsFn::Getegid,
        KtlsFn::Getcpu,
    ];

    /// The symbol of the form that takes the area's address,
    /// `long f(const void *ktls)`: `__vdso_ktls_NAME` on x86_64,
    /// `__kernel_ktls_NAME` on aarch64 (each architecture's prefix for its
    /// vDSO functions).
    pub fn symbol(self) -> &'static str {
        self.symbols().0
    }

    /// The symbol of the form that takes the area's offset from the thread
    /// pointer, `long f(unsigned long ktls_offset)`: [`symbol`](Self::symbol)
    /// and `_fs` on x86_64 (the FS base, read with `%fs`-relative loads),
    /// and `_tp` on aarch64 (`tpidr_el0`).
    pub fn offset_symbol(self) -> &'static str {
        self.symbols().1
    }

    /// Both symbols of this function on this architecture.
    #[cfg(target_arch = "x86_64")]
    fn symbols(self) -> (&'static str, &'static str) {
        match self {
            KtlsFn::Gettid => ("__vdso_ktls_gettid", "__vdso_ktls_gettid_fs"),
            KtlsFn::Getpid => ("__vdso_ktls_getpid", "__vdso_ktls_getpid_fs"),
            KtlsFn::Getuid => ("__vdso_ktls_getuid", "__vdso_ktls_getuid_fs"),
            KtlsFn::Getgid => ("__vdso_ktls_getgid", "__vdso_ktls_getgid_fs"),
            KtlsFn::Geteuid => ("__vdso_ktls_geteuid", "__vdso_ktls_geteuid_fs"),
            KtlsFn::Getegid => ("__vdso_ktls_getegid", "__vdso_ktls_getegid_fs"),
            KtlsFn::Getcpu => ("__vdso_ktls_getcpu", "__vdso_ktls_getcpu_fs"),
        }
    }

    /// Both symbols of this function on this architecture.
    #[cfg(target_arch = "aarch64")]
    fn symbols(self) -> (&'static str, &'static str) {
        match self {
            KtlsFn::Gettid => ("__kernel_ktls_gettid", "__kernel_ktls_gettid_tp"),
            KtlsFn::Getpid => ("__kernel_ktls_getpid", "__kernel_ktls_getpid_tp"),
            KtlsFn::Getuid => ("__kernel_ktls_getuid", "__kernel_ktls_getuid_tp"),
            KtlsFn::Getgid => ("__kernel_ktls_getgid", "__kernel_ktls_getgid_tp"),
            KtlsFn::Geteuid => ("__kernel_ktls_geteuid", "__kernel_ktls_geteuid_tp"),
            KtlsFn::Getegid => ("__kernel_ktls_getegid", "__kernel_ktls_getegid_tp"),
            KtlsFn::Getcpu => ("__kernel_ktls_getcpu", "__kernel_ktls_getcpu_tp"),
        }
    }
}

/// Signature of the KTLS vDSO functions that take the area's address:
/// `long f(const void *ktls)` (see [`KtlsFn`]).
pub type KtlsPtrFn = unsafe extern "C" fn(*const c_void) -> core::ffi::c_long;

/// Signature of the KTLS vDSO functions that take the area's offset from
/// the thread pointer (the FS base on x86_64, `tpidr_el0` on aarch64):
/// `long f(unsigned long ktls_offset)` (see [`KtlsFn`]).
pub type KtlsOffsetFn = unsafe extern "C" fn(usize) -> core::ffi::c_long;

/// The environment variable that turns the vDSO off for ktl when it is
/// `off` (read once, at the first vDSO lookup).
pub const DISABLE_ENV: &str = "KTL_VDSO";

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("ktl::vdso knows the vDSO symbols of x86_64 and aarch64 only");

/// Signature of vDSO getcpu: `int getcpu(unsigned *cpu, unsigned *node,
/// void *unused)`. It stores the current CPU and NUMA node through the
/// non-null pointers and returns 0 on success.
pub type GetcpuFn = unsafe extern "C" fn(*mut u32, *mut u32, *mut c_void) -> c_int;

/// Signature of vDSO getrandom (`vgetrandom(2)`-style, Linux 6.11):
/// `ssize_t getrandom(void *buf, size_t len, unsigned int flags,
/// void *opaque_state, size_t opaque_len)`.
///
/// It fills `buf` with `len` random bytes using the caller's per-thread
/// `opaque_state` and returns the number of bytes written or a negative
/// errno; it never sets `errno`. Called with a null `buf`, `len` 0, `flags`
/// 0 and `opaque_len == usize::MAX`, it instead writes the state's size and
/// mmap parameters to `opaque_state` ([`GetrandomParams`]).
pub type GetrandomFn = unsafe extern "C" fn(*mut c_void, usize, u32, *mut c_void, usize) -> isize;

/// What vDSO getrandom reports about its per-thread state
/// (`struct vgetrandom_opaque_params` in the kernel's UAPI).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct GetrandomParams {
    /// The size of one opaque state, in bytes.
    pub size_of_opaque_state: u32,
    /// The `prot` argument for `mmap(2)` of the states.
    pub mmap_prot: u32,
    /// The `flags` argument for `mmap(2)` of the states (`MAP_DROPPABLE |
    /// MAP_ANONYMOUS`: the pages may be dropped under memory pressure, and
    /// are wiped in a `fork` child).
    pub mmap_flags: u32,
    /// Reserved; zero.
    pub reserved: [u32; 13],
}

// The kernel writes exactly 64 bytes (4 + 4 + 4 + 13 * 4).
const _: () = assert!(size_of::<GetrandomParams>() == 64);

/// The smallest page size of the supported architectures. The vDSO mapping
/// starts on a page boundary and is at least one page long, so its first
/// `MIN_PAGE_SIZE` bytes are always readable.
const MIN_PAGE_SIZE: usize = 4096;

/// The largest vDSO image accepted. Real ones are a few pages.
const MAX_IMAGE_LEN: usize = 1 << 20;

/// The size of the ELF64 header.
const EHDR_SIZE: usize = 64;

/// Errors from parsing a vDSO image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum VdsoError {
    /// The auxiliary vector has no `AT_SYSINFO_EHDR`: the process has no vDSO.
    NotPresent,
    /// The image is shorter than its headers say.
    Truncated,
    /// The image does not start with the ELF magic bytes.
    BadMagic,
    /// The image is not a 64-bit ELF file.
    NotElf64,
    /// The image is not little-endian.
    NotLittleEndian,
    /// The image is not a shared object (`ET_DYN`).
    NotSharedObject,
    /// The program header table is malformed (wrong entry size, offsets that
    /// overflow, or not in the first page of the mapping).
    BadProgramHeaders,
    /// There is no `PT_LOAD` segment.
    NoLoadSegment,
    /// The image is larger than 1 MiB.
    TooLarge,
    /// There is no `PT_DYNAMIC` segment.
    NoDynamic,
    /// The dynamic section is outside the image or has no `DT_NULL` end.
    BadDynamic,
    /// The dynamic section lacks `DT_SYMTAB` or `DT_STRTAB`.
    NoSymbolTable,
    /// The dynamic section has neither `DT_HASH` nor `DT_GNU_HASH`.
    NoHashTable,
    /// The hash table is outside the image or inconsistent.
    BadHashTable,
    /// The symbol table is outside the image or has the wrong entry size.
    BadSymbolTable,
    /// The string table is outside the image.
    BadStringTable,
    /// The symbol version tables are outside the image.
    BadVersionTable,
    /// ktl ignores the vDSO: the environment variable `KTL_VDSO` is `off`.
    Disabled,
}

impl fmt::Display for VdsoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VdsoError::NotPresent => "the process has no vDSO (no AT_SYSINFO_EHDR)",
            VdsoError::Truncated => "the vDSO image is shorter than its headers say",
            VdsoError::BadMagic => "the vDSO image is not an ELF file (bad magic)",
            VdsoError::NotElf64 => "the vDSO image is not a 64-bit ELF file",
            VdsoError::NotLittleEndian => "the vDSO image is not little-endian",
            VdsoError::NotSharedObject => "the vDSO image is not a shared object (ET_DYN)",
            VdsoError::BadProgramHeaders => "the vDSO program header table is malformed",
            VdsoError::NoLoadSegment => "the vDSO image has no PT_LOAD segment",
            VdsoError::TooLarge => "the vDSO image is larger than 1 MiB",
            VdsoError::NoDynamic => "the vDSO image has no PT_DYNAMIC segment",
            VdsoError::BadDynamic => "the vDSO dynamic section is out of bounds or unterminated",
            VdsoError::NoSymbolTable => "the vDSO dynamic section lacks DT_SYMTAB or DT_STRTAB",
            VdsoError::NoHashTable => {
                "the vDSO dynamic section has neither DT_HASH nor DT_GNU_HASH"
            }
            VdsoError::BadHashTable => "the vDSO hash table is out of bounds or inconsistent",
            VdsoError::BadSymbolTable => "the vDSO symbol table is out of bounds or malformed",
            VdsoError::BadStringTable => "the vDSO string table is out of bounds",
            VdsoError::BadVersionTable => "the vDSO symbol version tables are out of bounds",
            VdsoError::Disabled => "the vDSO is turned off (KTL_VDSO=off)",
        })
    }
}

impl std::error::Error for VdsoError {}

/// A parsed vDSO image.
///
/// The process's vDSO ([`Vdso::get`]) lives for the whole process, so this
/// holds the image as a `'static` slice and only offsets into it.
#[derive(Debug)]
pub struct Vdso {
    image: Image<'static>,
}

impl Vdso {
    /// The process's vDSO, parsed once (cached in a [`OnceLock`]), or why it
    /// is unavailable.
    ///
    /// Async-signal-safe once the vDSO has been parsed. Before, it parses,
    /// which a signal handler must not do: one that calls this while its own
    /// thread is parsing waits for ever. The lookup functions
    /// ([`getcpu_fn`] and the others) never do that.
    pub fn get() -> Result<&'static Vdso, VdsoError> {
        let vdso = match VDSO.get() {
            Some(vdso) => vdso,
            None => parse_once(),
        };
        vdso.as_ref().map_err(|&error| error)
    }

    /// Parses an image held in memory (for tests and fuzzing). The result
    /// can only look up symbol offsets within `image`
    /// ([`Image::symbol_offset`]); nothing in it can be called.
    pub fn parse(image: &[u8]) -> Result<Image<'_>, VdsoError> {
        Image::parse(image)
    }

    /// The address of the function `name` at `version` in the process's
    /// vDSO, or `None` if there is no such symbol.
    pub fn symbol(&self, name: &str, version: &str) -> Option<usize> {
        let offset = self.image.symbol_offset(name, version)?;
        self.base().checked_add(offset)
    }

    /// The base address of the image in memory (`AT_SYSINFO_EHDR`).
    pub fn base(&self) -> usize {
        self.image.bytes().as_ptr().addr()
    }
}

/// The process's vDSO, once parsed.
static VDSO: OnceLock<Result<Vdso, VdsoError>> = OnceLock::new();

#[cold]
#[inline(never)]
fn parse_once() -> &'static Result<Vdso, VdsoError> {
    // Marked as a first call (unless the caller's first call is), so that a
    // signal handler that interrupts the parse and calls an accessor takes
    // the accessor's system call instead.
    let _first = crate::first_call::FirstCall::begin();
    VDSO.get_or_init(find)
}

/// A slice of `len` bytes of the vDSO mapping at `base`.
///
/// # Safety
///
/// `base..base + len` must be inside the vDSO mapping, which is readable and
/// never written or unmapped while the process runs.
unsafe fn vdso_bytes(base: usize, len: usize) -> &'static [u8] {
    let ptr = core::ptr::with_exposed_provenance::<u8>(base);
    // SAFETY: the caller guarantees that these `len` bytes are readable and
    // unchanging for the rest of the process (hence `'static`). `u8` needs
    // no alignment, and a range inside one mapping is never longer than
    // `isize::MAX` bytes.
    unsafe { core::slice::from_raw_parts(ptr, len) }
}

/// Finds and parses the process's vDSO.
fn find() -> Result<Vdso, VdsoError> {
    if std::env::var_os(DISABLE_ENV).is_some_and(|v| v == "off") {
        return Err(VdsoError::Disabled);
    }
    let base = sys::auxv::getauxval(sys::auxv::AT_SYSINFO_EHDR).ok_or(VdsoError::NotPresent)?;
    let base = usize::try_from(base).map_err(|_| VdsoError::NotPresent)?;

    // The mapping's length is not in the auxiliary vector: it follows from
    // the ELF headers. Read the ELF header, then the program header table,
    // both inside the first page, then the whole image they describe.

    // SAFETY: the kernel maps the vDSO before the process starts, at `base`
    // (page aligned), readable, at least one page long, and never changes or
    // unmaps it; `EHDR_SIZE` is less than `MIN_PAGE_SIZE`, so these bytes are
    // in the first page.
    let ehdr = unsafe { vdso_bytes(base, EHDR_SIZE) };
    let headers_len = elf::headers_len(ehdr)?;
    if headers_len > MIN_PAGE_SIZE {
        return Err(VdsoError::BadProgramHeaders);
    }
    // SAFETY: as above: `headers_len` was just checked to be at most
    // `MIN_PAGE_SIZE`, so these bytes are in the first page.
    let headers = unsafe { vdso_bytes(base, headers_len) };
    let len = elf::image_len(headers)?;
    if len > MAX_IMAGE_LEN {
        return Err(VdsoError::TooLarge);
    }
    // SAFETY: the kernel maps the whole vDSO image file, rounded up to whole
    // pages, at `base`, and it stays mapped, readable and unchanged for the
    // life of the process. `len` is the end of the ELF header, the program
    // header table or a `PT_LOAD` segment's file bytes, whichever is last,
    // as the kernel's own image describes them; all of those are inside the
    // image file.
    let image = unsafe { vdso_bytes(base, len) };
    Ok(Vdso {
        image: Image::parse(image)?,
    })
}

/// A cached symbol address before the first lookup.
const NOT_LOOKED_UP: usize = 0;
/// A cached symbol address when the vDSO or the symbol is missing.
const ABSENT: usize = 1;

/// The address of the vDSO getcpu, [`NOT_LOOKED_UP`] or [`ABSENT`].
static GETCPU_ADDR: AtomicUsize = AtomicUsize::new(NOT_LOOKED_UP);
/// The address of the vDSO getrandom, [`NOT_LOOKED_UP`] or [`ABSENT`].
static GETRANDOM_ADDR: AtomicUsize = AtomicUsize::new(NOT_LOOKED_UP);

/// The addresses of the KTLS functions ([`KtlsFn::ALL`] order), address
/// form then offset form.
static KTLS_ADDRS: [[AtomicUsize; 2]; 7] =
    [const { [const { AtomicUsize::new(NOT_LOOKED_UP) }; 2] }; 7];

/// The address of `name` in the process's vDSO, looked up once and cached
/// in `cache`; `None` if the vDSO or the symbol is missing, and, uncached,
/// in a signal handler that interrupts one of ktl's first calls on its
/// thread before the symbol was ever looked up.
#[inline]
fn cached_symbol(cache: &AtomicUsize, name: &str) -> Option<*const c_void> {
    cached_versioned(cache, name, VERSION)
}

/// [`cached_symbol`] at another version than [`VERSION`].
#[inline]
fn cached_versioned(cache: &AtomicUsize, name: &str, version: &str) -> Option<*const c_void> {
    // Relaxed is enough: the cached value is all that is shared. The code it
    // points to was mapped before the process started.
    let addr = match cache.load(Ordering::Relaxed) {
        NOT_LOOKED_UP => first_lookup(cache, name, version)?,
        addr => addr,
    };
    present(addr)
}

/// The first lookup, which may parse the vDSO: marked as a first call, and
/// `None` (not cached) in a signal handler that interrupted one.
#[cold]
#[inline(never)]
fn first_lookup(cache: &AtomicUsize, name: &str, version: &str) -> Option<usize> {
    let _first = crate::first_call::FirstCall::begin()?;
    Some(lookup_into(cache, name, version))
}

/// [`cached_versioned`] for code that runs inside one of ktl's first calls,
/// which holds the thread's marker already: looks the symbol up if needed.
fn cached_in_first_call(cache: &AtomicUsize, name: &str, version: &str) -> Option<*const c_void> {
    let addr = match cache.load(Ordering::Relaxed) {
        NOT_LOOKED_UP => lookup_into(cache, name, version),
        addr => addr,
    };
    present(addr)
}

/// Looks `name` up and caches the answer in `cache`.
fn lookup_into(cache: &AtomicUsize, name: &str, version: &str) -> usize {
    let addr = lookup(name, version);
    cache.store(addr, Ordering::Relaxed);
    addr
}

/// The pointer a cached address stands for.
fn present(addr: usize) -> Option<*const c_void> {
    (addr != ABSENT).then(|| core::ptr::with_exposed_provenance::<c_void>(addr))
}

/// Looks `name` up at `version`: its address, or [`ABSENT`].
#[cold]
#[inline(never)]
fn lookup(name: &str, version: &str) -> usize {
    match Vdso::get().ok().and_then(|vdso| vdso.symbol(name, version)) {
        // The image starts at a nonzero page boundary, so a symbol address
        // is never one of the two markers; check anyway.
        Some(addr) if addr > ABSENT => addr,
        _ => ABSENT,
    }
}

/// The vDSO getcpu function, looked up once and cached.
///
/// `None` if the process has no vDSO or the vDSO has no [`GETCPU`] at
/// [`VERSION`], and (not cached) in a signal handler that interrupts one of
/// ktl's first calls on its thread before the first lookup.
#[inline]
pub fn getcpu_fn() -> Option<GetcpuFn> {
    let ptr = cached_symbol(&GETCPU_ADDR, GETCPU)?;
    // SAFETY: `ptr` is the address of the vDSO's getcpu function, whose C
    // signature `GetcpuFn` declares, in an executable mapping that lasts as
    // long as the process. Function and data pointers have the same size and
    // representation on the supported targets.
    Some(unsafe { core::mem::transmute::<*const c_void, GetcpuFn>(ptr) })
}

/// [`getcpu_fn`] inside one of ktl's first calls (the owner decision, which
/// looks it up so that the accessors' fallback never has to), which holds
/// the thread's marker.
pub(crate) fn getcpu_fn_in_first_call() -> Option<GetcpuFn> {
    let ptr = cached_in_first_call(&GETCPU_ADDR, GETCPU, VERSION)?;
    // SAFETY: as in `getcpu_fn`.
    Some(unsafe { core::mem::transmute::<*const c_void, GetcpuFn>(ptr) })
}

/// The vDSO getrandom function, looked up once and cached.
///
/// `None` if the process has no vDSO or the vDSO has no [`GETRANDOM`] at
/// [`VERSION`] (kernels before 6.11 on x86_64, before 6.14 on aarch64), and
/// as [`getcpu_fn`] says in a signal handler. [`crate::random`] is the safe
/// interface over it.
#[inline]
pub fn getrandom_fn() -> Option<GetrandomFn> {
    let ptr = cached_symbol(&GETRANDOM_ADDR, GETRANDOM)?;
    // SAFETY: as in `getcpu_fn`, for the vDSO's getrandom, whose C signature
    // `GetrandomFn` declares.
    Some(unsafe { core::mem::transmute::<*const c_void, GetrandomFn>(ptr) })
}

/// [`getrandom_fn`] inside one of ktl's first calls (the set-up of
/// [`crate::random`]), which holds the thread's marker.
pub(crate) fn getrandom_fn_in_first_call() -> Option<GetrandomFn> {
    let ptr = cached_in_first_call(&GETRANDOM_ADDR, GETRANDOM, VERSION)?;
    // SAFETY: as in `getrandom_fn`.
    Some(unsafe { core::mem::transmute::<*const c_void, GetrandomFn>(ptr) })
}

/// The KTLS vDSO function `f` that takes the area's address, looked up once
/// and cached; `None` without the prototype's vDSO (any upstream kernel, or
/// `KTL_VDSO=off`), and as [`getcpu_fn`] says in a signal handler.
#[inline]
pub fn ktls_fn(f: KtlsFn) -> Option<KtlsPtrFn> {
    let ptr = cached_versioned(&KTLS_ADDRS[f as usize][0], f.symbol(), KTLS_VERSION)?;
    // SAFETY: as in `getcpu_fn`, for a KTLS function of the address form,
    // whose C signature `KtlsPtrFn` declares.
    Some(unsafe { core::mem::transmute::<*const c_void, KtlsPtrFn>(ptr) })
}

/// [`ktls_fn`] inside one of ktl's first calls (the set-up of
/// [`crate::facts`]), which holds the thread's marker.
pub(crate) fn ktls_fn_in_first_call(f: KtlsFn) -> Option<KtlsPtrFn> {
    let ptr = cached_in_first_call(&KTLS_ADDRS[f as usize][0], f.symbol(), KTLS_VERSION)?;
    // SAFETY: as in `ktls_fn`.
    Some(unsafe { core::mem::transmute::<*const c_void, KtlsPtrFn>(ptr) })
}

/// The KTLS vDSO function `f` that takes the area's offset from the thread
/// pointer ([`KtlsFn::offset_symbol`]), looked up once and cached; `None` as
/// for [`ktls_fn`].
#[inline]
pub fn ktls_offset_fn(f: KtlsFn) -> Option<KtlsOffsetFn> {
    let ptr = cached_versioned(&KTLS_ADDRS[f as usize][1], f.offset_symbol(), KTLS_VERSION)?;
    // SAFETY: as in `getcpu_fn`, for a KTLS function of the offset form,
    // whose C signature `KtlsOffsetFn` declares.
    Some(unsafe { core::mem::transmute::<*const c_void, KtlsOffsetFn>(ptr) })
}

/// [`ktls_offset_fn`] inside one of ktl's first calls (the set-up of
/// [`crate::facts`]), which holds the thread's marker.
pub(crate) fn ktls_offset_fn_in_first_call(f: KtlsFn) -> Option<KtlsOffsetFn> {
    let ptr = cached_in_first_call(&KTLS_ADDRS[f as usize][1], f.offset_symbol(), KTLS_VERSION)?;
    // SAFETY: as in `ktls_offset_fn`.
    Some(unsafe { core::mem::transmute::<*const c_void, KtlsOffsetFn>(ptr) })
}

/// Asks vDSO getrandom for the size and mmap parameters of its per-thread
/// state: `Err(errno)` if the call fails.
pub fn getrandom_params(getrandom: GetrandomFn) -> Result<GetrandomParams, crate::Errno> {
    let mut params = GetrandomParams::default();
    // SAFETY: `getrandom` is the vDSO getrandom (see `getrandom_fn`). With a
    // null buffer, length 0, flags 0 and `opaque_len == usize::MAX` it only
    // writes one `struct vgetrandom_opaque_params` (64 bytes, the layout of
    // `GetrandomParams`) to the state pointer, which points to a live local.
    let ret = unsafe {
        getrandom(
            core::ptr::null_mut(),
            0,
            0,
            (&raw mut params).cast::<c_void>(),
            usize::MAX,
        )
    };
    match ret {
        0 => Ok(params),
        r if r < 0 => Err(crate::Errno(i32::try_from(-r).unwrap_or(sys::EINVAL))),
        _ => Err(crate::Errno(sys::EINVAL)),
    }
}

/// Calls vDSO getcpu: `Some((cpu, node))` on success, `None` if the vDSO or
/// the symbol is missing or the call fails (and as [`getcpu_fn`] says in a
/// signal handler).
///
/// After the first call this is one load of a cached function pointer and
/// one indirect call.
#[inline]
pub fn getcpu() -> Option<(u32, u32)> {
    let getcpu = getcpu_fn()?;
    let mut cpu = 0;
    let mut node = 0;
    // SAFETY: `getcpu` is the vDSO getcpu (see `getcpu_fn`). It writes one
    // `u32` through each of the first two pointers, which point to live
    // locals, and ignores the third (the old `getcpu_cache`), which may be
    // null.
    let ret = unsafe { getcpu(&mut cpu, &mut node, core::ptr::null_mut()) };
    (ret == 0).then_some((cpu, node))
}

#[cfg(test)]
mod tests {
    use super::test_util::XorShift;
    use super::*;

    #[cfg(target_arch = "x86_64")]
    const CLOCK_GETTIME: &str = "__vdso_clock_gettime";
    #[cfg(target_arch = "aarch64")]
    const CLOCK_GETTIME: &str = "__kernel_clock_gettime";

    /// Why this process may run without a vDSO, or `None` when it must
    /// have one.
    ///
    /// Every kernel ktl supports maps a vDSO, so a missing one fails the
    /// tests, except in an emulator without the rseq system call either:
    /// qemu-user before 8.1 maps no vDSO for aarch64 guests (no
    /// `AT_SYSINFO_EHDR`) and answers rseq with `ENOSYS`. Wherever the kernel
    /// has rseq, nothing is skipped.
    fn no_vdso_reason(error: VdsoError) -> Option<String> {
        let syscall = crate::layout().kernel.syscall;
        if error != VdsoError::NotPresent || syscall == crate::abi::SyscallStatus::Available {
            return None;
        }
        Some(format!(
            "{error}, and the rseq system call is {syscall}: \
             an emulator such as qemu-user (before 8.1 for aarch64 guests)"
        ))
    }

    /// The process's vDSO, or `None` after printing why `test` is skipped
    /// (only where [`no_vdso_reason`] allows it).
    fn vdso(test: &str) -> Option<&'static Vdso> {
        match Vdso::get() {
            Ok(vdso) => Some(vdso),
            Err(error) => {
                let why = no_vdso_reason(error)
                    .unwrap_or_else(|| panic!("this machine has a vDSO: {error:?}"));
                eprintln!("SKIPPED {test}: {why}");
                None
            }
        }
    }

    /// A copy of the process's vDSO image, or `None` as [`vdso`] says.
    fn image_copy(test: &str) -> Option<Vec<u8>> {
        vdso(test).map(|vdso| vdso.image.bytes().to_vec())
    }

    #[test]
    fn get_finds_the_vdso() {
        let Some(vdso) = vdso("get_finds_the_vdso") else {
            return;
        };
        let base = sys::auxv::getauxval(sys::auxv::AT_SYSINFO_EHDR).unwrap() as usize;
        assert_eq!(vdso.base(), base);
        assert_eq!(base % MIN_PAGE_SIZE, 0);
        let len = vdso.image.bytes().len();
        assert!(len > EHDR_SIZE && len <= MAX_IMAGE_LEN, "{len}");
        // Cached: the same object every time.
        assert!(core::ptr::eq(vdso, Vdso::get().unwrap()));
    }

    #[test]
    fn finds_known_symbols() {
        let Some(vdso) = vdso("finds_known_symbols") else {
            return;
        };
        let end = vdso.base() + vdso.image.bytes().len();
        for name in [GETCPU, CLOCK_GETTIME] {
            if cfg!(target_arch = "aarch64") && name == GETCPU {
                continue;
            }
            let addr = vdso.symbol(name, VERSION).expect(name);
            assert!(addr > vdso.base() && addr < end, "{name}: {addr:#x}");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn weak_aliases_match() {
        let Some(vdso) = vdso("weak_aliases_match") else {
            return;
        };
        let getcpu = vdso.symbol("__vdso_getcpu", "LINUX_2.6").unwrap();
        assert_eq!(vdso.symbol("getcpu", "LINUX_2.6"), Some(getcpu));
        let clock_gettime = vdso.symbol("__vdso_clock_gettime", "LINUX_2.6").unwrap();
        assert_eq!(
            vdso.symbol("clock_gettime", "LINUX_2.6"),
            Some(clock_gettime)
        );
        assert_ne!(getcpu, clock_gettime);
    }

    #[test]
    fn wrong_version_is_not_found() {
        let Some(vdso) = vdso("wrong_version_is_not_found") else {
            return;
        };
        assert_eq!(vdso.symbol(CLOCK_GETTIME, "LINUX_9.9"), None);
        assert_eq!(vdso.symbol(CLOCK_GETTIME, ""), None);
        assert_eq!(
            vdso.symbol(CLOCK_GETTIME, &VERSION[..VERSION.len() - 1]),
            None
        );
        // The version definitions themselves are absolute object symbols.
        assert_eq!(vdso.symbol(VERSION, VERSION), None);
    }

    #[test]
    fn unknown_name_is_not_found() {
        let Some(vdso) = vdso("unknown_name_is_not_found") else {
            return;
        };
        assert_eq!(vdso.symbol("__vdso_no_such_function", VERSION), None);
        assert_eq!(vdso.symbol("", VERSION), None);
        assert_eq!(vdso.symbol(&CLOCK_GETTIME[1..], VERSION), None);
        assert_eq!(vdso.symbol(&format!("{CLOCK_GETTIME}\0"), VERSION), None);
    }

    #[test]
    fn vdso_clock_gettime_agrees_with_libc() {
        /// `struct timespec` on the 64-bit targets ktl supports.
        #[repr(C)]
        struct Timespec {
            tv_sec: i64,
            tv_nsec: i64,
        }
        type ClockGettimeFn = unsafe extern "C" fn(i32, *mut Timespec) -> c_int;
        let Some(vdso) = vdso("vdso_clock_gettime_agrees_with_libc") else {
            return;
        };
        let addr = vdso.symbol(CLOCK_GETTIME, VERSION).unwrap();
        let ptr = core::ptr::with_exposed_provenance::<c_void>(addr);
        // SAFETY: the vDSO clock_gettime has this C signature.
        let clock_gettime = unsafe { core::mem::transmute::<*const c_void, ClockGettimeFn>(ptr) };
        let libc_now = || sys::time::clock_gettime(sys::time::CLOCK_MONOTONIC).unwrap();
        let before = libc_now();
        let mut ts = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid clock id and a pointer to a live timespec.
        let ret = unsafe { clock_gettime(sys::time::CLOCK_MONOTONIC, &mut ts) };
        assert_eq!(ret, 0);
        let during = (ts.tv_sec, ts.tv_nsec);
        let after = libc_now();
        assert!(
            before <= during && during <= after,
            "{before:?} {during:?} {after:?}"
        );
    }

    #[test]
    fn getcpu_fn_is_the_cached_symbol() {
        let expected = match Vdso::get() {
            Ok(vdso) => vdso.symbol(GETCPU, VERSION),
            Err(error) => {
                // Not skipped: without a vDSO there must be no vDSO getcpu.
                let why = no_vdso_reason(error)
                    .unwrap_or_else(|| panic!("this machine has a vDSO: {error:?}"));
                eprintln!("getcpu_fn_is_the_cached_symbol: no vDSO ({why}); expecting none");
                None
            }
        };
        if cfg!(target_arch = "x86_64") {
            assert!(expected.is_some());
        }
        let found = getcpu_fn().map(|f| f as usize);
        assert_eq!(found, expected);
        assert_eq!(getcpu_fn().map(|f| f as usize), expected);
        assert_eq!(getcpu().is_some(), expected.is_some());
    }

    /// The CPUs this thread may run on.
    fn allowed_cpus() -> Vec<usize> {
        sys::sched::allowed_cpus().unwrap()
    }

    /// Pins the calling thread to `cpu`.
    fn pin(cpu: usize) {
        let ret = sys::sched::pin_to(cpu);
        assert_eq!(ret, Ok(()), "pinning to cpu {cpu}");
    }

    fn getcpu_syscall() -> (u32, u32) {
        sys::sched::getcpu().unwrap()
    }

    #[test]
    fn getcpu_matches_syscall_on_every_cpu() {
        if cfg!(target_arch = "x86_64") {
            assert!(getcpu_fn().is_some(), "x86_64 has vDSO getcpu");
        } else if getcpu_fn().is_none() {
            eprintln!(
                "SKIPPED getcpu_matches_syscall_on_every_cpu: no vDSO getcpu \
                 (arm64 kernels do not provide one)"
            );
            return;
        }
        // A thread of its own, so the pinning ends with it.
        std::thread::spawn(|| {
            let cpus = allowed_cpus();
            assert!(!cpus.is_empty());
            for cpu in cpus {
                pin(cpu);
                let syscall = getcpu_syscall();
                assert_eq!(syscall.0 as usize, cpu);
                assert_eq!(getcpu(), Some(syscall), "cpu {cpu}");
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn parse_a_copy_of_the_image() {
        let Some(vdso) = vdso("parse_a_copy_of_the_image") else {
            return;
        };
        let copy = vdso.image.bytes().to_vec();
        let image = Vdso::parse(&copy).unwrap();
        assert_eq!(image.symbol_count(), vdso.image.symbol_count());
        assert!(image.is_versioned());
        let offset = image.symbol_offset(CLOCK_GETTIME, VERSION).unwrap();
        assert_eq!(
            Some(vdso.base() + offset),
            vdso.symbol(CLOCK_GETTIME, VERSION)
        );

        // Trailing bytes change nothing.
        let mut longer = copy.clone();
        longer.resize(copy.len() + 4096, 0xa5);
        let image = Vdso::parse(&longer).unwrap();
        assert_eq!(image.symbol_offset(CLOCK_GETTIME, VERSION), Some(offset));
    }

    #[test]
    fn renamed_version_is_found_by_its_new_name() {
        let Some(mut copy) = image_copy("renamed_version_is_found_by_its_new_name") else {
            return;
        };
        let name = VERSION.as_bytes();
        let mut renamed = 0;
        for at in 0..copy.len() - name.len() {
            // Only whole strings: the name with a NUL after it.
            if copy[at..].starts_with(name) && copy[at + name.len()] == 0 {
                *copy[at..at + name.len()].last_mut().unwrap() = b'X';
                renamed += 1;
            }
        }
        assert!(renamed >= 1);
        let mut new_name = VERSION.to_string();
        new_name.pop();
        new_name.push('X');
        let image = Vdso::parse(&copy).unwrap();
        let vdso = Vdso::get().unwrap();
        let real = vdso.symbol(CLOCK_GETTIME, VERSION).unwrap() - vdso.base();
        assert_eq!(image.symbol_offset(CLOCK_GETTIME, VERSION), None);
        assert_eq!(image.symbol_offset(CLOCK_GETTIME, &new_name), Some(real));
    }

    #[test]
    fn empty_image() {
        assert_eq!(Vdso::parse(&[]).unwrap_err(), VdsoError::Truncated);
    }

    #[test]
    fn every_prefix_is_truncated() {
        let Some(copy) = image_copy("every_prefix_is_truncated") else {
            return;
        };
        let lengths = (0..copy.len())
            .step_by(64)
            .chain((1..64).map(|d| copy.len() - d));
        for len in lengths {
            assert_eq!(
                Vdso::parse(&copy[..len]).unwrap_err(),
                VdsoError::Truncated,
                "len {len}"
            );
        }
    }

    #[test]
    fn header_corruptions() {
        let Some(copy) = image_copy("header_corruptions") else {
            return;
        };
        let with = |off: usize, bytes: &[u8]| {
            let mut changed = copy.clone();
            changed[off..off + bytes.len()].copy_from_slice(bytes);
            Vdso::parse(&changed).map(|_| ())
        };
        assert_eq!(with(1, b"X"), Err(VdsoError::BadMagic));
        assert_eq!(with(4, &[1]), Err(VdsoError::NotElf64));
        assert_eq!(with(5, &[2]), Err(VdsoError::NotLittleEndian));
        assert_eq!(
            with(16, &2u16.to_le_bytes()),
            Err(VdsoError::NotSharedObject)
        );
        // e_phnum, e_phentsize, e_phoff.
        assert_eq!(with(56, &u16::MAX.to_le_bytes()), Err(VdsoError::Truncated));
        assert_eq!(with(56, &0u16.to_le_bytes()), Err(VdsoError::NoLoadSegment));
        assert_eq!(
            with(54, &64u16.to_le_bytes()),
            Err(VdsoError::BadProgramHeaders)
        );
        assert_eq!(
            with(32, &u64::MAX.to_le_bytes()),
            Err(VdsoError::BadProgramHeaders)
        );
        assert_eq!(
            with(32, &(1u64 << 32).to_le_bytes()),
            Err(VdsoError::Truncated)
        );
    }

    #[test]
    fn dynamic_corruptions() {
        let Some(copy) = image_copy("dynamic_corruptions") else {
            return;
        };
        let headers = &copy[..elf::headers_len(&copy).unwrap()];
        assert_eq!(elf::image_len(headers), Ok(copy.len()));
        let phoff = u64::from_le_bytes(copy[32..40].try_into().unwrap()) as usize;
        let phnum = u16::from_le_bytes(copy[56..58].try_into().unwrap()) as usize;
        let dynamic = (0..phnum)
            .map(|i| phoff + 56 * i)
            .find(|&at| copy[at..at + 4] == 2u32.to_le_bytes())
            .expect("PT_DYNAMIC");
        let dyn_offset = u64::from_le_bytes(copy[dynamic + 8..dynamic + 16].try_into().unwrap());
        let dyn_size = u64::from_le_bytes(copy[dynamic + 32..dynamic + 40].try_into().unwrap());

        let with = |changes: &[(usize, u64)]| {
            let mut changed = copy.clone();
            for &(off, value) in changes {
                changed[off..off + 8].copy_from_slice(&value.to_le_bytes());
            }
            Vdso::parse(&changed).map(|_| ())
        };
        // p_filesz or p_offset of PT_DYNAMIC out of bounds.
        assert_eq!(
            with(&[(dynamic + 32, u64::MAX)]),
            Err(VdsoError::BadDynamic)
        );
        assert_eq!(with(&[(dynamic + 32, 1 << 40)]), Err(VdsoError::BadDynamic));
        assert_eq!(with(&[(dynamic + 8, u64::MAX)]), Err(VdsoError::BadDynamic));
        // The PT_DYNAMIC turned into a PT_NULL.
        let mut changed = copy.clone();
        changed[dynamic..dynamic + 4].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(Vdso::parse(&changed).unwrap_err(), VdsoError::NoDynamic);

        // Each dynamic entry's value set to huge numbers, in turn.
        let entries = (dyn_offset..dyn_offset + dyn_size).step_by(16);
        let mut failures = 0;
        for entry in entries {
            let entry = entry as usize;
            let tag = u64::from_le_bytes(copy[entry..entry + 8].try_into().unwrap());
            let expected = match tag {
                5 | 10 => Err(VdsoError::BadStringTable),
                6 | 11 => Err(VdsoError::BadSymbolTable),
                4 | 0x6fff_fef5 => Err(VdsoError::BadHashTable),
                0x6fff_fff0 | 0x6fff_fffc => Err(VdsoError::BadVersionTable),
                _ => continue,
            };
            for value in [u64::MAX, 1 << 32, copy.len() as u64 * 2] {
                let result = with(&[(entry + 8, value)]);
                // DT_GNU_HASH is unused when DT_HASH is present.
                if tag == 0x6fff_fef5 && result.is_ok() {
                    continue;
                }
                assert_eq!(result, expected, "tag {tag:#x} = {value:#x}");
                failures += 1;
            }
        }
        assert!(failures >= 15, "{failures}");
    }

    #[test]
    fn random_corruption() {
        let Some(good) = image_copy("random_corruption") else {
            return;
        };
        let mut rng = XorShift::new(0x0123_4567_89ab_cdef);
        let mut parsed = 0;
        for round in 0..4_000 {
            let mut bytes = good.clone();
            let count = 1 + round % 8;
            if round % 2 == 0 {
                // The tables are near the start of the image.
                let window = bytes.len().min(4096);
                rng.corrupt(&mut bytes[..window], count);
            } else {
                rng.corrupt(&mut bytes, count);
            }
            // Sometimes truncated too.
            let len = if round % 5 == 0 {
                rng.below(bytes.len() + 1)
            } else {
                bytes.len()
            };
            let bytes = &bytes[..len];
            if let Ok(image) = Vdso::parse(bytes) {
                parsed += 1;
                for name in [GETCPU, CLOCK_GETTIME, "getcpu"] {
                    if let Some(offset) = image.symbol_offset(name, VERSION) {
                        assert!(offset < bytes.len());
                    }
                }
            }
        }
        assert!(parsed > 100, "{parsed}");
    }

    #[test]
    fn errors_display() {
        let all = [
            VdsoError::NotPresent,
            VdsoError::Truncated,
            VdsoError::BadMagic,
            VdsoError::NotElf64,
            VdsoError::NotLittleEndian,
            VdsoError::NotSharedObject,
            VdsoError::BadProgramHeaders,
            VdsoError::NoLoadSegment,
            VdsoError::TooLarge,
            VdsoError::NoDynamic,
            VdsoError::BadDynamic,
            VdsoError::NoSymbolTable,
            VdsoError::NoHashTable,
            VdsoError::BadHashTable,
            VdsoError::BadSymbolTable,
            VdsoError::BadStringTable,
            VdsoError::BadVersionTable,
        ];
        let texts: std::collections::HashSet<String> = all.iter().map(|e| e.to_string()).collect();
        assert_eq!(texts.len(), all.len());
        assert!(texts.iter().all(|t| t.starts_with("the ")));
        let boxed: Box<dyn std::error::Error> = Box::new(VdsoError::TooLarge);
        assert_eq!(boxed.to_string(), "the vDSO image is larger than 1 MiB");
    }
}
