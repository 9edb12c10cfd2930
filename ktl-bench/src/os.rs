//! The operating-system calls of `ktl bench`, `ktl check` and `ktl stress`,
//! in one place: the CPUs a thread may use and pinning it to one, signal
//! dispositions and signals between threads, a thread made by
//! `pthread_create`, a `fork` child, an anonymous memory mapping (the state
//! of the raw vDSO getrandom rows), and a few facts (the page size, the
//! kernel release, the C library's version, the thread id).
//!
//! Every `libc` call of the command and of the benchmarks goes through this
//! module; each wrapper is safe to call unless it says otherwise, and
//! reports a failure as an [`io::Error`] (or a message) instead of a return
//! code.

use std::io;
use std::sync::{Arc, Mutex};

/// The size of a CPU set: every CPU number is below it.
pub const CPU_SETSIZE: usize = libc::CPU_SETSIZE as usize;

/// A signal number.
pub type Signal = libc::c_int;

/// `SIGUSR1`, the signal `ktl stress` sends from worker to worker.
pub const SIGUSR1: Signal = libc::SIGUSR1;

/// `SIGPIPE`, raised by a write to a closed pipe.
pub const SIGPIPE: Signal = libc::SIGPIPE;

/// A set of CPUs, as the kernel's affinity calls take it.
#[derive(Clone, Copy)]
pub struct CpuSet(libc::cpu_set_t);

impl CpuSet {
    /// The empty set.
    pub fn empty() -> CpuSet {
        // SAFETY: cpu_set_t is plain data; all-zero is an empty set.
        CpuSet(unsafe { std::mem::zeroed() })
    }

    /// The set of `cpu` alone; empty when `cpu` is not below
    /// [`CPU_SETSIZE`].
    pub fn single(cpu: usize) -> CpuSet {
        let mut set = CpuSet::empty();
        if cpu < CPU_SETSIZE {
            // SAFETY: `cpu` is below CPU_SETSIZE, so CPU_SET writes inside
            // the set.
            unsafe { libc::CPU_SET(cpu, &mut set.0) };
        }
        set
    }

    /// Whether `cpu` is in the set.
    pub fn contains(&self, cpu: usize) -> bool {
        // SAFETY: CPU_ISSET only reads the set, at an index below its size.
        cpu < CPU_SETSIZE && unsafe { libc::CPU_ISSET(cpu, &self.0) }
    }

    /// The CPUs of the set, in increasing order.
    pub fn cpus(&self) -> Vec<usize> {
        (0..CPU_SETSIZE).filter(|&c| self.contains(c)).collect()
    }

    /// The calling thread's CPU affinity.
    pub fn of_this_thread() -> io::Result<CpuSet> {
        let mut set = CpuSet::empty();
        // SAFETY: pid 0 is the calling thread; the kernel writes at most
        // size_of::<cpu_set_t>() bytes into `set`.
        let r = unsafe {
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set.0)
        };
        if r == 0 {
            Ok(set)
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Makes the set the calling thread's CPU affinity.
    pub fn apply_to_this_thread(&self) -> io::Result<()> {
        // SAFETY: pid 0 is the calling thread; `self.0` is a valid cpu_set_t
        // of the size given.
        let r =
            unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.0) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// The CPUs the calling thread may run on (the process's, for the main
/// thread), in increasing order.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    CpuSet::of_this_thread().map(|set| set.cpus())
}

/// Pins the calling thread to `cpu`.
pub fn pin_this_thread(cpu: usize) -> io::Result<()> {
    CpuSet::single(cpu).apply_to_this_thread()
}

/// glibc's `sched_getcpu`: the calling thread's CPU number, or -1 with
/// `errno` set.
#[inline(always)]
pub fn sched_getcpu() -> i32 {
    // SAFETY: `sched_getcpu` takes no arguments, touches no memory of ours
    // and may be called from any thread at any time.
    unsafe { libc::sched_getcpu() }
}

/// Restores the default disposition of `signal` (for [`SIGPIPE`]: the
/// process ends quietly on a write to a closed pipe, as Unix tools do).
pub fn default_disposition(signal: Signal) -> io::Result<()> {
    // SAFETY: setting a signal's disposition to SIG_DFL has no memory
    // preconditions; the kernel checks the signal number.
    let previous = unsafe { libc::signal(signal, libc::SIG_DFL) };
    if previous == libc::SIG_ERR {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The handler of [`install_empty_handler`]: does nothing.
extern "C" fn do_nothing(_: libc::c_int) {}

/// Installs a handler that does nothing for `signal`, with `SA_RESTART` (a
/// system call that the signal interrupts is restarted): the signal then
/// only interrupts the thread it is sent to, wherever it is.
pub fn install_empty_handler(signal: Signal) -> io::Result<()> {
    // SAFETY: a zeroed sigaction with a valid handler, an empty mask and
    // SA_RESTART; the handler does nothing, so it is async-signal-safe.
    let r = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = do_nothing as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(signal, &sa, std::ptr::null_mut())
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The calling thread's `pthread_t`, as an integer (never 0): glibc's
/// `pthread_t` is one, musl's is a pointer (never null), and the value goes
/// back to [`signal_thread`] unchanged.
pub fn this_thread() -> u64 {
    // SAFETY: pthread_self has no preconditions.
    let this = unsafe { libc::pthread_self() };
    this as u64
}

/// Sends `signal` to the thread `thread` (a value of [`this_thread`]).
/// Returns whether it was sent: not when the thread has exited, on a C
/// library whose `pthread_kill` reports that with `ESRCH`.
///
/// # Safety
///
/// `thread` is the value [`this_thread`] returned in a thread that has not
/// been joined yet, nor, detached, exited: only then is its `pthread_t`
/// valid.
pub unsafe fn signal_thread(thread: u64, signal: Signal) -> io::Result<bool> {
    // SAFETY: the caller guarantees that `thread` is a live pthread_t.
    let r = unsafe { libc::pthread_kill(thread as libc::pthread_t, signal) };
    match r {
        0 => Ok(true),
        libc::ESRCH => Ok(false),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// Runs `f` on a thread made with `pthread_create`, the way C code creates
/// threads, bypassing std's thread machinery, and returns its result.
pub fn run_on_pthread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    type Job = Box<dyn FnOnce() + Send>;
    extern "C" fn start(arg: *mut libc::c_void) -> *mut libc::c_void {
        // SAFETY: `arg` is the Box<Job> leaked by `run_on_pthread` for this
        // thread.
        let job: Box<Job> = unsafe { Box::from_raw(arg.cast()) };
        // A panic must not unwind into C; report it as a missing result.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        std::ptr::null_mut()
    }
    let slot = Arc::new(Mutex::new(None));
    let out = Arc::clone(&slot);
    let job: Job = Box::new(move || {
        let v = f();
        if let Ok(mut g) = out.lock() {
            *g = Some(v);
        }
    });
    let arg = Box::into_raw(Box::new(job));
    // pthread_t is an integer in glibc and a pointer in musl: pthread_create
    // writes it, and it is only ever handed back to the C library.
    let mut tid = std::mem::MaybeUninit::<libc::pthread_t>::uninit();
    // SAFETY: `start` has the required signature and takes ownership of `arg`;
    // `tid` is writable memory for one pthread_t.
    let r = unsafe { libc::pthread_create(tid.as_mut_ptr(), std::ptr::null(), start, arg.cast()) };
    if r != 0 {
        // SAFETY: the thread was not created, so `arg` is still ours.
        drop(unsafe { Box::from_raw(arg) });
        return Err(format!(
            "pthread_create failed: {}",
            io::Error::from_raw_os_error(r)
        ));
    }
    // SAFETY: pthread_create succeeded, so it wrote the new thread's id.
    let tid = unsafe { tid.assume_init() };
    // SAFETY: `tid` is a joinable thread created above.
    let r = unsafe { libc::pthread_join(tid, std::ptr::null_mut()) };
    if r != 0 {
        return Err(format!(
            "pthread_join failed: {}",
            io::Error::from_raw_os_error(r)
        ));
    }
    slot.lock()
        .ok()
        .and_then(|mut g| g.take())
        .ok_or_else(|| "the thread panicked".to_string())
}

/// Runs `child` in a `fork` child, which then ends with `_exit` and the
/// code `child` returned (without running the parent's exit handlers), and
/// waits for it. Returns the child's exit code, or `None` when a signal
/// ended it.
///
/// # Safety
///
/// The child is a copy of a process that may have other threads: `child`
/// may only do what is safe after `fork` in such a process (system calls,
/// reading memory; no lock that another thread could hold, so no
/// allocation, no locked standard stream).
pub unsafe fn run_in_fork_child(child: impl FnOnce() -> i32) -> Result<Option<i32>, String> {
    // SAFETY: the caller guarantees that the child only does what is safe
    // after fork; it leaves with _exit below.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork failed: {}", io::Error::last_os_error()));
    }
    if pid == 0 {
        let code = child();
        // SAFETY: _exit ends the child without running the parent's handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for the child created above; `status` is writable.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    if r != pid {
        return Err("waitpid failed".into());
    }
    Ok(libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)))
}

/// The size of a memory page, in bytes (0 if the system does not say).
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    page.max(0) as u64
}

/// An anonymous memory mapping of whole pages, at an address of the
/// kernel's choosing, unmapped on drop. Its memory is only reached through
/// the pointer [`Mapping::as_ptr`] gives (for example, by the vDSO's
/// `getrandom` as its state).
pub struct Mapping {
    addr: std::ptr::NonNull<u8>,
    len: usize,
}

impl Mapping {
    /// Maps `len` bytes (rounded up to whole pages by the kernel) with the
    /// `mmap` protection `prot` and flags `flags` (which must include
    /// `MAP_ANONYMOUS`; `MAP_FIXED` is refused). The mapping starts on a
    /// page boundary.
    pub fn anonymous(len: usize, prot: i32, flags: i32) -> io::Result<Mapping> {
        if len == 0 || flags & libc::MAP_FIXED != 0 || flags & libc::MAP_ANONYMOUS == 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: an anonymous mapping (no file descriptor) without
        // MAP_FIXED and with a null hint: the kernel picks an address where
        // nothing is mapped, so the call touches no existing memory.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, -1, 0) };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let addr = std::ptr::NonNull::new(p.cast::<u8>())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        Ok(Mapping { addr, len })
    }

    /// The first byte of the mapping (page-aligned).
    pub fn as_ptr(&self) -> *mut u8 {
        self.addr.as_ptr()
    }

    /// The length asked for, in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: a mapping has at least a byte).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `addr..addr + len` is the mapping made in `anonymous`,
        // owned by `self` alone, and nothing uses it after the drop (every
        // user borrows the mapping). A failure leaves it mapped: a leak,
        // nothing worse.
        unsafe { libc::munmap(self.addr.as_ptr().cast(), self.len) };
    }
}

/// The kernel release (`uname -r`), if `uname` answers.
pub fn kernel_release() -> Option<String> {
    // SAFETY: utsname is plain data; uname fills it or fails.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    // SAFETY: on success `release` is a NUL-terminated string inside `u`.
    let release = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) };
    Some(release.to_string_lossy().into_owned())
}

/// The calling thread's id (`gettid`).
pub fn thread_id() -> i64 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) }
}

/// glibc's version (`gnu_get_libc_version`), or `None` on another C
/// library.
pub fn glibc_version() -> Option<String> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `gnu_get_libc_version` takes no arguments and returns a
        // pointer to a static, NUL-terminated string.
        let version = unsafe { std::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) };
        Some(version.to_string_lossy().into_owned())
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_hold_what_is_put_in() {
        let one = CpuSet::single(3);
        assert_eq!(one.cpus(), [3]);
        assert!(one.contains(3) && !one.contains(2));
        assert!(CpuSet::single(CPU_SETSIZE).cpus().is_empty());
        assert!(!one.contains(CPU_SETSIZE));
    }

    #[test]
    fn a_thread_pins_itself_and_gets_its_cpus_back() {
        std::thread::spawn(|| {
            let original = CpuSet::of_this_thread().unwrap();
            let cpus = allowed_cpus().unwrap();
            assert_eq!(cpus, original.cpus());
            let last = *cpus.last().unwrap();
            pin_this_thread(last).unwrap();
            assert_eq!(allowed_cpus().unwrap(), [last]);
            original.apply_to_this_thread().unwrap();
            assert_eq!(allowed_cpus().unwrap(), cpus);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_pthread_and_a_fork_child_report_back() {
        let tid = thread_id();
        let other = run_on_pthread(thread_id).unwrap();
        assert_ne!(tid, other);
        assert_eq!(run_on_pthread(|| 7).unwrap(), 7);
        // SAFETY: the child only returns a constant.
        assert_eq!(unsafe { run_in_fork_child(|| 3) }, Ok(Some(3)));
        assert!(page_size() >= 4096);
        assert!(kernel_release().is_some_and(|r| !r.is_empty()));
    }

    #[test]
    fn a_mapping_is_page_aligned_writable_and_refuses_fixed() {
        let page = usize::try_from(page_size()).unwrap();
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        let m = Mapping::anonymous(page, prot, flags).unwrap();
        assert_eq!((m.as_ptr().addr() % page, m.len()), (0, page));
        assert!(!m.is_empty());
        // SAFETY: the mapping is `page` writable bytes, owned by `m`.
        let bytes = unsafe { std::slice::from_raw_parts_mut(m.as_ptr(), page) };
        assert!(bytes.iter().all(|&b| b == 0));
        bytes[page - 1] = 7;
        assert_eq!(bytes[page - 1], 7);
        drop(m);
        for (len, flags) in [
            (0, flags),
            (page, flags | libc::MAP_FIXED),
            (page, libc::MAP_PRIVATE),
        ] {
            let err = Mapping::anonymous(len, prot, flags).err().unwrap();
            assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
        }
    }
}
