//! A plugin built on ktl (the `cdylib` in `tests/dlclose-plugin`), unloaded
//! with `dlclose` while threads that ran its critical sections are blocked.
//!
//! A critical section leaves the thread's `rseq_cs` field pointing at its
//! descriptor, in the object that holds the section; the kernel clears it
//! only lazily, on the thread's next return to user space after a preemption,
//! when it reads the descriptor and finds the thread outside the section. If
//! the object is unmapped in between, that read faults and the kernel kills
//! the process with SIGSEGV. ktl therefore makes its object permanent when it
//! first runs (`ktl::pin`), and the plugin must stay mapped after `dlclose`.
//!
//! The scenario runs in a child process (this binary, re-executed), so that
//! a SIGSEGV is the child's signal: once with the C library owning the areas
//! (the default) and once with ktl owning them (`glibc.pthread.rseq=0`).
//!
//! What it caught, checked against commit e5be285 (before ktl pinned its
//! object): with the C library as owner, the child died of SIGSEGV when the
//! workers woke up after the `dlclose`. With ktl as owner, the first
//! `dlclose` did not unmap the plugin (glibc defers it while a thread has a
//! pending thread-local destructor in the object, and ktl's registration arms
//! one), but a second `dlopen`/`dlclose`, after the workers had exited, did.

use ktl::abi::SyscallStatus;
use std::ffi::{CStr, CString, OsStr, c_void};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// Set in the re-executed copy: the plugin's path.
const PLUGIN: &str = "KTL_TEST_DLCLOSE_PLUGIN";
const TEST: &str = "a_dlclosed_plugin_leaves_no_dangling_rseq_cs";
/// Each worker runs the sections, then blocks. One is enough when nothing
/// preempts it in the short window between its last section and its block
/// (a preemption there lets the kernel clear `rseq_cs` while the plugin is
/// still mapped); several make the failure certain on a loaded machine.
const WORKERS: usize = 4;
const SECTIONS: u32 = 1000;

type AddFn = extern "C" fn(u32) -> u32;
type OwnerFn = extern "C" fn() -> u32;

#[test]
fn a_dlclosed_plugin_leaves_no_dangling_rseq_cs() {
    if let Some(lib) = std::env::var_os(PLUGIN) {
        child(&lib);
        return;
    }
    let syscall = ktl::layout().kernel.syscall;
    if syscall != SyscallStatus::Available {
        // No rseq (qemu-user answers ENOSYS): no thread has an area for the
        // kernel to read, and the plugin would be built for the host anyway.
        eprintln!("SKIPPED {TEST}: the rseq system call is {syscall}");
        return;
    }
    if cfg!(target_feature = "crt-static") {
        // musl's default: a static binary has no dynamic loader, and its
        // dlopen fails ("Dynamic loading not supported").
        eprintln!("SKIPPED {TEST}: a statically linked binary cannot dlopen the plugin");
        return;
    }
    let lib = build_plugin();
    // The default run's owner is the one this process has, when nothing
    // configures it.
    let default_owner = std::env::var_os("GLIBC_TUNABLES")
        .is_none()
        .then(|| ktl::layout().owner.to_string());
    for (tunables, owner) in [
        (None, default_owner),
        (Some("glibc.pthread.rseq=0"), Some("ktl".to_owned())),
    ] {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", TEST, "--nocapture", "--test-threads=1"])
            .env(PLUGIN, &lib)
            .env_remove("GLIBC_TUNABLES");
        if let Some(t) = tunables {
            cmd.env("GLIBC_TUNABLES", t);
        }
        let out = cmd.output().expect("run the child");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            out.status.signal(),
            None,
            "GLIBC_TUNABLES={tunables:?}: the child was killed by signal {:?} (11 is SIGSEGV: \
             the kernel read an rseq_cs descriptor in the unloaded plugin):\n{text}",
            out.status.signal()
        );
        assert!(
            out.status.success(),
            "GLIBC_TUNABLES={tunables:?}: the child failed:\n{text}"
        );
        let summary = text
            .lines()
            .find_map(|l| l.split_once("dlclose child: ").map(|(_, s)| s))
            .unwrap_or_else(|| panic!("the child printed no summary:\n{text}"));
        eprintln!("GLIBC_TUNABLES={tunables:?}: {summary}");
        if let Some(owner) = owner {
            assert!(
                summary.starts_with(&format!("owner {owner};")),
                "GLIBC_TUNABLES={tunables:?}: expected owner {owner}:\n{text}"
            );
        }
    }
}

/// Builds the plugin, in a target directory of its own, and returns its
/// canonical path.
fn build_plugin() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dlclose-plugin");
    let status = Command::new(env!("CARGO"))
        .current_dir(root)
        .args(["build", "--quiet", "-p", "ktl-dlclose-plugin"])
        .env("CARGO_TARGET_DIR", &target_dir)
        .status()
        .expect("run cargo");
    assert!(status.success(), "building the plugin failed");
    let lib = target_dir.join("debug").join("libktl_dlclose_plugin.so");
    lib.canonicalize()
        .unwrap_or_else(|e| panic!("{}: {e}", lib.display()))
}

/// The re-executed copy: loads the plugin, runs its sections in worker
/// threads, unloads it while they are blocked, then wakes them.
///
/// Nothing here calls this binary's own copy of ktl: with ktl as owner, its
/// registration would take the threads' one rseq registration from the
/// plugin's.
fn child(lib: &OsStr) {
    // The old code's SIGSEGV is expected there; no core file for it.
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads the struct, which is valid for the call.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };

    let path = CString::new(lib.as_bytes()).unwrap();
    let handle = dlopen(&path);
    // SAFETY: the plugin defines these symbols as functions of these types.
    let (add, owner) = unsafe {
        (
            std::mem::transmute::<*mut c_void, AddFn>(dlsym(handle, c"ktl_dlclose_plugin_add")),
            std::mem::transmute::<*mut c_void, OwnerFn>(dlsym(handle, c"ktl_dlclose_plugin_owner")),
        )
    };

    let ready = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            // A channel per worker, so that no worker ever waits for a lock
            // that another one holds: a block that ends before the
            // `dlclose` would let the kernel clear `rseq_cs` in time.
            let (wake, woken) = mpsc::channel::<()>();
            let ready = Arc::clone(&ready);
            let worker = thread::spawn(move || {
                let committed = add(SECTIONS);
                let owner = owner();
                // No system call between the last section and the block.
                ready.fetch_add(1, Ordering::SeqCst);
                // Block, in this program's code, until the plugin has been
                // closed: being scheduled out makes the kernel process the
                // thread's rseq area (and so read `rseq_cs`) when it returns
                // to user space.
                woken.recv().unwrap();
                // And once more after the `dlclose` for certain, in case the
                // wake-up came before the worker had blocked.
                thread::sleep(Duration::from_millis(2));
                (committed, owner)
            });
            (wake, worker)
        })
        .collect();
    // Wait without waking the workers: a wake-up of this thread from a
    // worker could preempt that worker on its way to its block.
    while ready.load(Ordering::SeqCst) < WORKERS {
        thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: the handle comes from dlopen and is closed once; no thread
    // runs the plugin's code any more (the workers have returned from it).
    let closed = unsafe { libc::dlclose(handle) };
    assert_eq!(closed, 0, "dlclose: {}", dlerror());
    let after_dlclose = mapped(lib, add as *const c_void);
    for (wake, _) in &workers {
        wake.send(()).unwrap();
    }
    let results: Vec<(u32, u32)> = workers
        .into_iter()
        .map(|(_, w)| w.join().unwrap())
        .collect();

    // A second open and close, after the workers (and their thread-local
    // destructors) are gone: this one unloads the plugin unless it is
    // permanent.
    // SAFETY: as above.
    let closed = unsafe { libc::dlclose(dlopen(&path)) };
    assert_eq!(closed, 0, "dlclose: {}", dlerror());
    let after_second = mapped(lib, add as *const c_void);

    let owner = match results[0].1 {
        1 => "libc",
        2 => "ktl",
        _ => "unavailable",
    };
    println!(
        "dlclose child: owner {owner}; sections committed per worker: {:?}; \
         mapped after dlclose: {after_dlclose:?}, after a second dlopen/dlclose: {after_second:?}",
        results.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    for (committed, o) in &results {
        assert_eq!(
            *committed, SECTIONS,
            "every section must run as a restartable sequence (owner {owner})"
        );
        assert_eq!(*o, results[0].1);
    }
    assert_eq!(after_dlclose, (true, true), "the plugin was unloaded");
    assert_eq!(after_second, (true, true), "the plugin was unloaded");
}

fn dlopen(path: &CStr) -> *mut c_void {
    // SAFETY: `path` is NUL-terminated; loading the plugin runs no code of
    // its own but the Rust runtime's initializers.
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    assert!(!handle.is_null(), "dlopen: {}", dlerror());
    handle
}

fn dlsym(handle: *mut c_void, name: &CStr) -> *mut c_void {
    // SAFETY: `handle` is a live handle from dlopen, `name` NUL-terminated.
    let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
    assert!(!p.is_null(), "dlsym({name:?}): {}", dlerror());
    p
}

fn dlerror() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated message of the
    // calling thread, valid until its next dl* call.
    let msg = unsafe { libc::dlerror() };
    if msg.is_null() {
        return "no error".to_owned();
    }
    // SAFETY: as above.
    unsafe { CStr::from_ptr(msg) }
        .to_string_lossy()
        .into_owned()
}

/// Whether the plugin at `lib`, which holds `addr`, is still mapped:
/// (`/proc/self/maps` names it, `dladdr` finds an object at `addr`).
fn mapped(lib: &OsStr, addr: *const c_void) -> (bool, bool) {
    let maps = std::fs::read("/proc/self/maps").expect("read /proc/self/maps");
    let in_maps = maps
        .split(|&b| b == b'\n')
        .any(|line| line.ends_with(lib.as_bytes()));
    let mut info = libc::Dl_info {
        dli_fname: std::ptr::null(),
        dli_fbase: std::ptr::null_mut(),
        dli_sname: std::ptr::null(),
        dli_saddr: std::ptr::null_mut(),
    };
    // SAFETY: dladdr only looks `addr` up in the loader's tables (it does not
    // dereference it) and writes `info`.
    let found = unsafe { libc::dladdr(addr, &mut info) } != 0;
    (in_maps, found)
}
