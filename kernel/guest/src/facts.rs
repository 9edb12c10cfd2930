//! The KTLS thread facts (kernel patches 0004 and 0005): the ids the kernel
//! writes into the area, the vDSO functions that read them, and
//! `ktl::facts` on top. Every value is compared with the system call's
//! answer in the same thread.
//!
//! `ktl-guest facts` runs the checks; `ktl-guest facts-bench` the
//! benchmark. `ktl-guest facts-exec` is the program that the exec check
//! starts.

use std::ffi::{CString, c_void};
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use ktl::abi;
use ktl::facts::{Fallback, Path, ThreadFacts};
use ktl::ktls::{self, Registration};
use ktl::vdso::{self, KtlsFn};

use crate::{Check, Named, Shared, layout, nprocs, run, run_all, shared, spawn};

/// The environment variable through which the exec check tells
/// `facts-exec` the real and effective uid it must see.
const EXPECT_ENV: &str = "KTL_GUEST_EXPECT_UIDS";
/// And the `ktl::facts` path it must take: the parent's.
const EXPECT_PATH_ENV: &str = "KTL_GUEST_EXPECT_PATH";

/// A raw system call without arguments (gettid, getuid...).
fn sys(nr: libc::c_long) -> i64 {
    // SAFETY: the callers pass id queries, which take no arguments, touch
    // no memory and cannot fail.
    unsafe { libc::syscall(nr) }
}

/// The system calls' answers, in the calling thread.
fn syscalls() -> [i64; 6] {
    [
        sys(libc::SYS_gettid),
        sys(libc::SYS_getpid),
        sys(libc::SYS_getuid),
        sys(libc::SYS_getgid),
        sys(libc::SYS_geteuid),
        sys(libc::SYS_getegid),
    ]
}

fn as_array(f: ThreadFacts) -> [i64; 6] {
    [
        i64::from(f.tid),
        i64::from(f.pid),
        i64::from(f.uid),
        i64::from(f.gid),
        i64::from(f.euid),
        i64::from(f.egid),
    ]
}

const NAMES: [&str; 6] = ["tid", "pid", "uid", "gid", "euid", "egid"];
/// The vDSO functions of the six ids, in `NAMES` order (`KtlsFn::ALL`
/// without getcpu).
const FNS: &[KtlsFn] = KtlsFn::ALL.split_at(6).0;
const FIELDS: [usize; 6] = [
    abi::OFFSET_KTLS_TID,
    abi::OFFSET_KTLS_PID,
    abi::OFFSET_KTLS_UID,
    abi::OFFSET_KTLS_GID,
    abi::OFFSET_KTLS_EUID,
    abi::OFFSET_KTLS_EGID,
];

/// Compares six ids (`NAMES` order) with the system calls' answers, naming
/// the first that differs and who gave it.
fn same(who: &str, got: [i64; 6], want: [i64; 6]) -> Result<(), String> {
    for ((name, g), w) in NAMES.iter().zip(got).zip(want) {
        if g != w {
            return Err(format!("{who} says {name} = {g}, the system call {w}"));
        }
    }
    Ok(())
}

/// The six vDSO functions' answers for `arg`, through `call`.
fn vdso_answers(arg: usize, call: fn(KtlsFn, usize) -> i64) -> [i64; 6] {
    std::array::from_fn(|i| call(FNS[i], arg))
}

/// The calling thread's area address, if the process has areas.
fn own_area() -> Option<usize> {
    let off = ktl::layout().offset?;
    Some(ktls::thread_pointer().wrapping_add_signed(off))
}

/// The u32 at `area + at`.
///
/// # Safety
/// `area + at` must be readable: the calling thread's area, registered with
/// at least [`abi::KTLS_FACTS_END`] bytes.
unsafe fn load(area: usize, at: usize) -> u32 {
    // SAFETY: the caller's contract. The kernel writes the field only while
    // this thread is out of user space; a volatile load keeps the compiler
    // from caching it across a system call.
    unsafe { std::ptr::with_exposed_provenance::<u32>(area + at).read_volatile() }
}

/// Whether this process's areas are registered long enough for the facts.
fn area_covers_facts() -> bool {
    ktl::layout().registered_len >= abi::KTLS_FACTS_END
}

/// Every way of asking, in the calling thread, compared with the system
/// calls: `ktl::facts` (all at once and one by one), the vDSO functions
/// given the thread's area (address and thread-pointer-offset forms), and the fields
/// read directly when the area covers them. Returns the system calls'
/// answers.
fn all_ways(who: &str) -> Result<[i64; 6], String> {
    // Register the thread first where ktl owns the areas, so the fast paths
    // are live.
    let _ = ktl::cpu_id();
    let want = syscalls();
    let mut got: Vec<(String, [i64; 6])> = vec![
        ("ktl::thread_facts".into(), as_array(ktl::thread_facts())),
        (
            "ktl::facts accessors".into(),
            [
                i64::from(ktl::facts::tid()),
                i64::from(ktl::facts::pid()),
                i64::from(ktl::facts::uid()),
                i64::from(ktl::facts::gid()),
                i64::from(ktl::facts::euid()),
                i64::from(ktl::facts::egid()),
            ],
        ),
    ];
    if let (Some(area), Some(off)) = (own_area(), ktl::layout().offset) {
        if vdso::ktls_fn(KtlsFn::Getuid).is_some() {
            got.push(("vDSO (address)".into(), vdso_answers(area, call_ptr)));
            got.push(("vDSO (offset)".into(), vdso_answers(off as usize, call_off)));
        }
        // The fields, where the kernel writes them and this thread's area
        // is live (not released).
        if ktls::features().facts() && area_covers_facts() && ktl::area::thread_area().is_some() {
            // SAFETY: the calling thread's own area, registered with at
            // least KTLS_FACTS_END bytes.
            let magic = unsafe { load(area, abi::OFFSET_KTLS_MAGIC) };
            if magic != abi::KTLS_FACTS_MAGIC {
                return Err(format!("{who}: the area's ktls_magic is {magic:#x}"));
            }
            // SAFETY: as above.
            let fields = FIELDS.map(|at| i64::from(unsafe { load(area, at) }));
            got.push(("the area's fields".into(), fields));
        }
    }
    for (how, vals) in got {
        same(&format!("{who}: {how}"), vals, want)?;
    }
    Ok(want)
}

/// Calls the address form of `f` with `area`.
fn call_ptr(f: KtlsFn, area: usize) -> i64 {
    let Some(func) = vdso::ktls_fn(f) else {
        return i64::MIN;
    };
    // SAFETY: a KTLS vDSO function reads its argument only through loads
    // whose faults the kernel resumes at the system call fallback, so any
    // value is sound to pass.
    unsafe { func(std::ptr::with_exposed_provenance::<c_void>(area)) }
}

/// Calls the offset form (from the thread pointer) of `f` with `off`.
fn call_off(f: KtlsFn, off: usize) -> i64 {
    let Some(func) = vdso::ktls_offset_fn(f) else {
        return i64::MIN;
    };
    // SAFETY: as in `call_ptr`, for loads relative to the thread pointer.
    unsafe { func(off) }
}

/// What [`ktl::facts::path`] must be in this process.
fn expected_path() -> Path {
    let l = ktl::layout();
    if !ktls::features().facts() {
        Path::Syscall(Fallback::NoKernelSupport)
    } else if l.registered_len < abi::KTLS_FACTS_END {
        Path::Syscall(Fallback::ShortRegistration(l.registered_len))
    } else if std::env::var(vdso::DISABLE_ENV).is_ok_and(|v| v == "off") {
        Path::Field
    } else {
        Path::Vdso
    }
}

fn check_path() -> Check {
    let _ = ktl::cpu_id();
    let (got, want) = (ktl::facts::path(), expected_path());
    if !ktls::features().facts() {
        return Err("the kernel does not advertise RSEQ_KTLS_FEATURE_FACTS".into());
    }
    if got != want {
        return Err(format!("path {got}, expected {want}"));
    }
    let l = ktl::layout();
    Ok(format!(
        "owner {}, registered {} bytes: {got}",
        l.owner, l.registered_len
    ))
}

fn check_threads() -> Check {
    let main = all_ways("main thread")?;
    let handles: Vec<_> = (0..4)
        .map(|i| std::thread::spawn(move || all_ways(&format!("thread {i}"))))
        .collect();
    let mut tids = vec![main[0]];
    for h in handles {
        let v = h.join().map_err(|_| "a thread panicked".to_string())??;
        tids.push(v[0]);
    }
    tids.sort_unstable();
    tids.dedup();
    if tids.len() != 5 {
        return Err(format!("threads share tids: {tids:?}"));
    }
    Ok("the main thread and 4 threads: every way equals the system calls".into())
}

type Job = Box<dyn FnOnce() + Send>;

/// A thread that runs jobs on request, so a check can act in it and ask it
/// about its ids in between.
struct Worker {
    tx: Option<mpsc::Sender<Job>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    fn new() -> Worker {
        let (tx, rx) = mpsc::channel::<Job>();
        let handle = std::thread::spawn(move || {
            for job in rx {
                job();
            }
        });
        Worker {
            tx: Some(tx),
            handle: Some(handle),
        }
    }

    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (rtx, rrx) = mpsc::channel();
        let job: Job = Box::new(move || {
            let _ = rtx.send(f());
        });
        self.tx
            .as_ref()
            .expect("live worker")
            .send(job)
            .expect("worker alive");
        rrx.recv().expect("worker answered")
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The uid, gid, euid and egid of `all_ways` in the calling thread.
fn creds(who: &'static str) -> Result<[i64; 4], String> {
    all_ways(who).map(|v| [v[2], v[3], v[4], v[5]])
}

/// A raw setresuid or setresgid: changes the calling thread only.
fn raw_setres(nr: libc::c_long, r: u32, e: u32, s: u32) -> Result<(), String> {
    // SAFETY: setresuid/setresgid take three ids and touch no memory.
    let ret = unsafe { libc::syscall(nr, r, e, s) };
    if ret == 0 {
        Ok(())
    } else {
        Err(format!("raw syscall {nr} failed: {ret}"))
    }
}

fn expect(who: &str, got: [i64; 4], want: [i64; 4]) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!(
            "{who}: uid, gid, euid, egid {got:?}, expected {want:?}"
        ))
    }
}

fn check_setresuid() -> Check {
    if sys(libc::SYS_geteuid) != 0 {
        return Err("needs root".into());
    }
    let a = Worker::new();
    let b = Worker::new();
    let root = [0, 0, 0, 0];
    expect("A before", a.run(|| creds("A"))?, root)?;
    // The raw system calls change the calling thread only (the kernel's
    // credentials are per thread).
    a.run(|| raw_setres(libc::SYS_setresgid, 100, 101, 0))?;
    a.run(|| raw_setres(libc::SYS_setresuid, 1000, 1001, 0))?;
    expect(
        "A after its raw setresuid",
        a.run(|| creds("A"))?,
        [1000, 100, 1001, 101],
    )?;
    expect("B after A's raw setresuid", b.run(|| creds("B"))?, root)?;
    expect("main after A's raw setresuid", creds("main")?, root)?;
    // Back: the saved ids are 0.
    a.run(|| raw_setres(libc::SYS_setresuid, 0, 0, 0))?;
    a.run(|| raw_setres(libc::SYS_setresgid, 0, 0, 0))?;
    expect("A restored", a.run(|| creds("A"))?, root)?;
    // glibc's wrappers change every thread of the process (each thread
    // makes the system call itself, from a signal handler).
    // SAFETY: plain libc calls with ids.
    let r = unsafe { (libc::setresgid(200, 201, 0), libc::setresuid(2000, 2001, 0)) };
    if r != (0, 0) {
        return Err(format!("libc setresgid/setresuid: {r:?}"));
    }
    let all = [2000, 200, 2001, 201];
    expect("main after libc setresuid", creds("main")?, all)?;
    expect("A after libc setresuid", a.run(|| creds("A"))?, all)?;
    expect("B after libc setresuid", b.run(|| creds("B"))?, all)?;
    // SAFETY: as above.
    let r = unsafe { (libc::setresuid(0, 0, 0), libc::setresgid(0, 0, 0)) };
    if r != (0, 0) {
        return Err(format!("restoring root: {r:?}"));
    }
    expect("main restored", creds("main")?, root)?;
    expect("B restored", b.run(|| creds("B"))?, root)?;
    Ok("raw setresuid/setresgid in one thread: that thread's values change, the others' do not; glibc's setresuid/setresgid: every thread's change".into())
}

/// Waits for `pid` and turns its status into a result.
fn wait_ok(pid: libc::pid_t, what: &str) -> Result<(), String> {
    let mut status = 0;
    // SAFETY: waits for our child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else {
        Err(format!("{what}: status {status:#x}"))
    }
}

fn check_fork() -> Check {
    let parent = all_ways("parent")?;
    // SAFETY: the child only compares its ids and exits with _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err("fork failed".into());
    }
    if pid == 0 {
        let code = match all_ways("fork child") {
            Ok(v) if v[1] != parent[1] && v[0] == v[1] => 0,
            Ok(v) => {
                println!(
                    "     fork child: pid {} tid {}, parent pid {}",
                    v[1], v[0], parent[1]
                );
                1
            }
            Err(e) => {
                println!("     {e}");
                1
            }
        };
        // SAFETY: ends the child.
        unsafe { libc::_exit(code) };
    }
    wait_ok(pid, "fork child")?;
    Ok("a fork child sees its own pid and tid".into())
}

fn check_exec() -> Check {
    // SAFETY: the child changes its ids and execs (or exits with _exit).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err("fork failed".into());
    }
    if pid == 0 {
        let code = (|| -> Result<(), String> {
            // Real and effective ids equal: a set-id exec (AT_SECURE) would
            // make glibc ignore GLIBC_TUNABLES, and change the owner.
            raw_setres(libc::SYS_setresuid, 3000, 3000, 0)?;
            let exe = CString::new("/proc/self/exe").unwrap();
            let args = [
                CString::new("ktl-guest").unwrap(),
                CString::new("facts-exec").unwrap(),
            ];
            let mut env: Vec<CString> = std::env::vars()
                .filter(|(k, _)| k != EXPECT_ENV && k != EXPECT_PATH_ENV)
                .map(|(k, v)| CString::new(format!("{k}={v}")).unwrap())
                .collect();
            env.push(CString::new(format!("{EXPECT_ENV}=3000,3000")).unwrap());
            env.push(CString::new(format!("{EXPECT_PATH_ENV}={}", ktl::facts::path())).unwrap());
            let argv: Vec<_> = args
                .iter()
                .map(|a| a.as_ptr())
                .chain([std::ptr::null()])
                .collect();
            let envp: Vec<_> = env
                .iter()
                .map(|a| a.as_ptr())
                .chain([std::ptr::null()])
                .collect();
            // SAFETY: null-terminated arrays of C strings that outlive the call.
            unsafe { libc::execve(exe.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
            Err("execve failed".into())
        })();
        if let Err(e) = code {
            println!("     {e}");
        }
        // SAFETY: ends the child.
        unsafe { libc::_exit(1) };
    }
    wait_ok(pid, "exec'ed child")?;
    Ok("after setresuid and exec: the new program's values equal the system calls (uid 3000), on the parent's path".into())
}

/// `ktl-guest facts-exec`: the program the exec check starts.
fn after_exec() -> Check {
    let v = all_ways("after exec")?;
    let want = std::env::var(EXPECT_ENV).map_err(|_| format!("{EXPECT_ENV} is not set"))?;
    let got = format!("{},{}", v[2], v[4]);
    if got != want {
        return Err(format!("uid,euid {got}, expected {want}"));
    }
    let path = ktl::facts::path().to_string();
    let parent = std::env::var(EXPECT_PATH_ENV).unwrap_or_default();
    if path != parent {
        return Err(format!("path {path} after exec, the parent's {parent}"));
    }
    Ok(format!("uid,euid {got}: {}", ktl::facts::path()))
}

/// Raw thread, never registered: calls the vDSO functions with its own
/// area. `vals[0..6]` the vDSO's answers, `vals[6..12]` the system calls'.
extern "C" fn unregistered_thread(arg: usize) -> i32 {
    // SAFETY: `arg` is a `Shared` the parent keeps until the join.
    let s = unsafe { shared(arg) };
    let area = ktls::thread_pointer().wrapping_add_signed(s.layout_offset);
    let answers = vdso_answers(area, call_ptr).into_iter().chain(syscalls());
    for (slot, v) in s.vals.iter().zip(answers) {
        slot.store(v, Ordering::Release);
    }
    0
}

fn check_unregistered() -> Check {
    let have_vdso = vdso::ktls_fn(KtlsFn::Getuid).is_some();
    let mut done = Vec::new();
    // A thread that never registered its area.
    if have_vdso {
        let l = layout()?;
        let s = Shared::new(l);
        spawn(l, Registration::None, unregistered_thread, &s)?.join();
        same(
            "unregistered raw thread: the vDSO",
            std::array::from_fn(|i| s.get(i)),
            std::array::from_fn(|i| s.get(6 + i)),
        )?;
        done.push("a raw thread that never registered");
    }
    // A thread that released its registration, where ktl owns the areas.
    if matches!(ktl::layout().owner, ktl::Owner::Ktl(_)) {
        std::thread::spawn(|| -> Result<(), String> {
            let _ = ktl::cpu_id();
            let area = own_area().ok_or("no area")?;
            ktl::area::release_current_thread().map_err(|e| format!("release: {e}"))?;
            if area_covers_facts() {
                // SAFETY: the thread's own area in ktl's static TLS block,
                // still mapped (only unregistered).
                let magic = unsafe { load(area, abi::OFFSET_KTLS_MAGIC) };
                if magic != 0 {
                    return Err(format!("ktls_magic {magic:#x} after unregistration"));
                }
            }
            all_ways("released thread").map(|_| ())
        })
        .join()
        .map_err(|_| "the released thread panicked".to_string())??;
        done.push("a thread that released its registration");
    }
    if !have_vdso {
        return Ok(format!(
            "{} (the KTLS vDSO functions are off)",
            done.join(", ")
        ));
    }
    // Bad locations: each call must return the system call's answer.
    // SAFETY: maps one inaccessible page, and one to unmap at once.
    let (none_page, gone_page) = unsafe {
        let map = |prot| {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            ) as usize
        };
        let gone = map(libc::PROT_READ);
        libc::munmap(std::ptr::with_exposed_provenance_mut(gone), 4096);
        (map(libc::PROT_NONE), gone)
    };
    let zeroed = vec![0u64; 32];
    let zeroed_area = (zeroed.as_ptr() as usize + 63) & !63;
    let own = own_area().unwrap_or(0);
    let bad: [(&str, usize); 8] = [
        ("NULL", 0),
        ("a misaligned pointer", own + 4),
        ("a PROT_NONE page", none_page),
        ("an unmapped page", gone_page),
        ("a kernel address", 0xffff_ffff_8100_0000),
        ("a non-canonical address", 0x8000_0000_0000_0000),
        ("zeroed memory", zeroed_area),
        ("the last bytes of the address space", usize::MAX - 31),
    ];
    let want = syscalls();
    for (what, ptr) in bad {
        same(
            &format!("{what}: the vDSO"),
            vdso_answers(ptr, call_ptr),
            want,
        )?;
        let cpu = call_ptr(KtlsFn::Getcpu, ptr);
        if !(0..nprocs()).contains(&cpu) {
            return Err(format!("{what}: the vDSO's getcpu says {cpu}"));
        }
    }
    for off in [0, 1 << 62, usize::MAX - 35, 0x8000_0000_0000_0000] {
        same(
            &format!("offset {off:#x}: the vDSO"),
            vdso_answers(off, call_off),
            want,
        )?;
    }
    done.push("8 bad locations and 4 bad offsets");
    Ok(done.join(", "))
}

static VFORK_MAGIC: AtomicU32 = AtomicU32::new(u32::MAX);
static VFORK_PID: AtomicI64 = AtomicI64::new(i64::MIN);
static VFORK_SYSCALL_PID: AtomicI64 = AtomicI64::new(i64::MIN);

/// The vfork child: runs on its parent's thread pointer, so "its" area is
/// the parent's. Reads the magic and asks the vDSO for its pid.
extern "C" fn vfork_child(arg: *mut c_void) -> libc::c_int {
    let area = arg as usize;
    // SAFETY: the parent's area, registered with at least KTLS_FACTS_END
    // bytes (checked before the clone); the parent is suspended until this
    // child exits.
    VFORK_MAGIC.store(
        unsafe { load(area, abi::OFFSET_KTLS_MAGIC) },
        Ordering::Relaxed,
    );
    VFORK_PID.store(call_ptr(KtlsFn::Getpid, area), Ordering::Relaxed);
    VFORK_SYSCALL_PID.store(sys(libc::SYS_getpid), Ordering::Relaxed);
    0
}

fn check_vfork() -> Check {
    let Some(area) = own_area().filter(|_| area_covers_facts()) else {
        return Ok("skipped: the areas do not cover the facts".into());
    };
    if vdso::ktls_fn(KtlsFn::Getpid).is_none() {
        return Ok("skipped: the KTLS vDSO functions are off".into());
    }
    let _ = all_ways("before vfork")?;
    let mut stack = vec![0u8; 64 * 1024];
    let top = (stack.as_mut_ptr() as usize + stack.len()) & !15;
    // SAFETY: the child runs `vfork_child` on its own stack, which outlives
    // it (the parent is suspended until the child exits), and only reads
    // memory, makes system calls and stores to atomics.
    let pid = unsafe {
        libc::clone(
            vfork_child,
            std::ptr::with_exposed_provenance_mut(top),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            std::ptr::with_exposed_provenance_mut(area),
        )
    };
    if pid < 0 {
        return Err("clone(CLONE_VM | CLONE_VFORK) failed".into());
    }
    wait_ok(pid, "vfork child")?;
    let (magic, vdso_pid, sys_pid) = (
        VFORK_MAGIC.load(Ordering::Relaxed),
        VFORK_PID.load(Ordering::Relaxed),
        VFORK_SYSCALL_PID.load(Ordering::Relaxed),
    );
    if magic != 0 {
        return Err(format!("the vfork child saw ktls_magic {magic:#x}"));
    }
    if vdso_pid != i64::from(pid) || sys_pid != i64::from(pid) {
        return Err(format!(
            "the vfork child's pid: vDSO {vdso_pid}, system call {sys_pid}, clone returned {pid}"
        ));
    }
    let _ = all_ways("the parent after vfork")?;
    Ok(format!(
        "the vfork child found the parent's facts hidden and got its own pid {pid}; the parent's are back"
    ))
}

/// `ktl-guest facts`.
pub(crate) fn checks() -> bool {
    let list: [Named; 7] = [
        ("facts-path", check_path),
        ("facts-threads", check_threads),
        ("facts-setresuid", check_setresuid),
        ("facts-fork", check_fork),
        ("facts-exec", check_exec),
        ("facts-unregistered", check_unregistered),
        ("facts-vfork", check_vfork),
    ];
    run_all(&list)
}

/// `ktl-guest facts-exec`.
pub(crate) fn exec_check() -> bool {
    run("facts-after-exec", after_exec)
}

/// Nanoseconds per call of `n` calls of `f`, its results summed. Generic, so
/// each way's loop has the call inline, not behind a pointer.
fn time_calls(n: u32, mut f: impl FnMut() -> i64) -> f64 {
    let t = Instant::now();
    let mut sum = 0i64;
    for _ in 0..n {
        sum = sum.wrapping_add(std::hint::black_box(f()));
    }
    std::hint::black_box(sum);
    t.elapsed().as_nanos() as f64 / f64::from(n)
}

/// Rounds of `facts-bench`: each round times every way once, in turn, so a
/// slow stretch of the emulator falls on all the ways alike.
const ROUNDS: usize = 9;

/// A way of asking, as a timed loop: `n` calls, the nanoseconds per call.
type Way = Box<dyn Fn(u32) -> f64>;

/// Nanoseconds per call of each way: the median of [`ROUNDS`] rounds of `n`
/// calls, the ways interleaved within each round.
fn per_call(n: u32, ways: &[(&'static str, Way)]) -> Vec<(&'static str, f64)> {
    let mut times = vec![Vec::with_capacity(ROUNDS); ways.len()];
    for _ in 0..ROUNDS {
        for (t, (_, way)) in times.iter_mut().zip(ways) {
            t.push(way(n));
        }
    }
    ways.iter()
        .zip(times)
        .map(|((name, _), mut t)| {
            t.sort_by(f64::total_cmp);
            (*name, t[ROUNDS / 2])
        })
        .collect()
}

/// The name of the raw vDSO row that the promise compares against.
const RAW_ADDRESS: &str = "vDSO (address)";
/// The name of ktl's row.
const KTL_ROW: &str = "ktl::facts::uid";

/// `ktl-guest facts-bench`: getuid four ways, as ratios to the system call.
pub(crate) fn bench() -> bool {
    let _ = ktl::cpu_id();
    let (Some(area), Some(off)) = (own_area(), ktl::layout().offset) else {
        println!("FAIL facts-bench: the process has no areas");
        return false;
    };
    let covered = area_covers_facts();
    const N: u32 = 20_000;
    let mut ways: Vec<(&'static str, Way)> = vec![(
        "syscall",
        Box::new(|n| time_calls(n, || sys(libc::SYS_getuid))),
    )];
    // The raw calls: the function looked up before the loop, the argument
    // through `black_box` so that each call computes it.
    if let (Some(by_ptr), Some(by_off)) = (
        vdso::ktls_fn(KtlsFn::Getuid),
        vdso::ktls_offset_fn(KtlsFn::Getuid),
    ) {
        let area = std::ptr::with_exposed_provenance::<c_void>(area);
        ways.push((
            RAW_ADDRESS,
            // SAFETY: as in `call_ptr`.
            Box::new(move |n| time_calls(n, || unsafe { by_ptr(std::hint::black_box(area)) })),
        ));
        ways.push((
            "vDSO (offset)",
            // SAFETY: as in `call_off`.
            Box::new(move |n| {
                time_calls(n, || unsafe { by_off(std::hint::black_box(off as usize)) })
            }),
        ));
    }
    if covered {
        ways.push((
            "field",
            // SAFETY: the calling thread's area, registered with at least
            // KTLS_FACTS_END bytes.
            Box::new(move |n| {
                time_calls(n, || i64::from(unsafe { load(area, abi::OFFSET_KTLS_UID) }))
            }),
        ));
    }
    ways.push((
        KTL_ROW,
        Box::new(|n| time_calls(n, || i64::from(ktl::facts::uid()))),
    ));
    let rows = per_call(N, &ways);
    let syscall = rows[0].1;
    let ns = |name: &str| rows.iter().find(|r| r.0 == name).map(|r| r.1);
    let (limit, ktl_ns) = (ns(RAW_ADDRESS), ns(KTL_ROW).unwrap_or(f64::NAN));
    let table: Vec<String> = rows
        .iter()
        .map(|(name, ns)| format!("{name} {ns:.1} ns ({:.1}x)", syscall / ns))
        .collect();
    println!(
        "ok   facts-bench: getuid, median of {ROUNDS} interleaved rounds of {N} (owner {}, areas of {} bytes, ktl path {}): {}",
        ktl::layout().owner,
        ktl::layout().registered_len,
        ktl::facts::path(),
        table.join("; ")
    );
    // A benchmark's promise, reported and never failed: the guest shares a
    // noisy machine, under emulation.
    if let Some(raw) = limit {
        let ratio = ktl_ns / raw;
        let verdict = if ratio <= FACTS_LIMIT { "pass" } else { "FAIL" };
        println!(
            "ok   facts-bench: ktl::facts::uid costs {ratio:.2}x the raw vDSO call (address form); promise: at most {FACTS_LIMIT}x: {verdict}"
        );
    }
    true
}

/// The promise `facts-bench` reports: `ktl::facts::uid()` at most this many
/// times the raw vDSO call.
const FACTS_LIMIT: f64 = 1.2;
