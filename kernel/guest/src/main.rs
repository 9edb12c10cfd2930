//! `ktl-guest`: the KTLS kernel prototype's tests and benchmark, run inside
//! the QEMU guest by `kernel/check`.
//!
//! With no argument it runs everything, in both owner modes: glibc owns the
//! areas (the default), and ktl owns them (`GLIBC_TUNABLES=
//! glibc.pthread.rseq=0`). Each mode runs in a process of its own, and the
//! checks that leave the process changed (a seccomp filter, no layout yet)
//! run in their own processes too. It prints one line per check and exits
//! non-zero if any failed.
//!
//! Raw threads (`ktl::ktls::spawn_raw`) run without a C-library thread, so
//! their entry functions here only read their area, run rseq operations,
//! touch atomics and make raw system calls.

use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ktl::abi;

mod facts;

use ktl::ktls::{self, GroupLayout, KtlsError, Registration};
use ktl_testkit::seccomp;

/// A check's result: a detail line, or why it failed.
type Check = Result<String, String>;

/// A named check.
type Named = (&'static str, fn() -> Check);

/// Values a raw thread reports to its parent.
#[repr(C)]
struct Shared {
    vals: [AtomicI64; 16],
    layout_offset: isize,
    layout_len: u32,
    layout_sig: u32,
    /// For the rseq workers: slots and the adds to make.
    slots: *const AtomicI64,
    nslots: usize,
    adds: i64,
    stop: AtomicBool,
}

impl Shared {
    fn new(layout: GroupLayout) -> Box<Shared> {
        Box::new(Shared {
            vals: std::array::from_fn(|_| AtomicI64::new(i64::MIN)),
            layout_offset: layout.offset,
            layout_len: layout.len,
            layout_sig: layout.sig,
            slots: std::ptr::null(),
            nslots: 0,
            adds: 0,
            stop: AtomicBool::new(false),
        })
    }

    fn layout(&self) -> GroupLayout {
        GroupLayout {
            offset: self.layout_offset,
            len: self.layout_len,
            sig: self.layout_sig,
        }
    }

    fn get(&self, i: usize) -> i64 {
        self.vals[i].load(Ordering::Acquire)
    }

    fn arg(&self) -> usize {
        std::ptr::from_ref(self).addr()
    }
}

/// The `Shared` behind a raw thread's argument.
///
/// # Safety
/// `arg` must come from [`Shared::arg`] of a `Shared` that outlives the
/// thread (the parent joins before dropping it).
unsafe fn shared<'a>(arg: usize) -> &'a Shared {
    // SAFETY: the caller's contract.
    unsafe { &*std::ptr::with_exposed_provenance::<Shared>(arg) }
}

/// Raw thread: reads its area's cpu_id, mm_cid and node_id first thing.
extern "C" fn read_area(arg: usize) -> i32 {
    // SAFETY: `arg` is a `Shared` the parent keeps until the join.
    let s = unsafe { shared(arg) };
    // SAFETY: the area at the layout's offset lies in this raw thread's TLS
    // block (spawn_raw checked it), readable for 32 bytes.
    let (cpu, cid, node) = unsafe {
        (
            ktl::cpu::cpu_id_at(s.layout_offset),
            ktl::cpu::mm_cid_at(s.layout_offset),
            ktl::cpu::node_id_at(s.layout_offset),
        )
    };
    s.vals[0].store(i64::from(cpu), Ordering::Release);
    s.vals[1].store(i64::from(cid), Ordering::Release);
    s.vals[2].store(i64::from(node), Ordering::Release);
    0
}

/// Raw thread: registers its own area with a raw rseq() (what
/// CLONE_RSEQ_KTLS saves), then reads it. `vals[3]` = the syscall's result,
/// `vals[4]` = the time stamp counter ticks the syscall took.
extern "C" fn register_then_read(arg: usize) -> i32 {
    // SAFETY: as in `read_area`.
    let s = unsafe { shared(arg) };
    let t0 = ticks();
    // SAFETY: a raw thread of this layout, not registered yet.
    let r = unsafe { ktls::register_raw_thread(s.layout()) };
    let t1 = ticks();
    s.vals[3].store(r as i64, Ordering::Release);
    s.vals[4].store(t1.wrapping_sub(t0) as i64, Ordering::Release);
    read_area(arg)
}

/// The time stamp counter (x86_64) or the virtual counter `cntvct_el0`
/// (aarch64): a clock that needs neither the C library nor a system call,
/// so raw threads can read it. Only ratios of ticks are used.
#[cfg(target_arch = "x86_64")]
fn ticks() -> u64 {
    // SAFETY: RDTSC has no preconditions; the guest CPU (`-cpu max`) has it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The time stamp counter (x86_64) or the virtual counter `cntvct_el0`
/// (aarch64): a clock that needs neither the C library nor a system call,
/// so raw threads can read it. Only ratios of ticks are used.
#[cfg(target_arch = "aarch64")]
fn ticks() -> u64 {
    let t: u64;
    // SAFETY: Linux lets user space read the virtual counter (CNTKCTL_EL1.
    // EL0VCTEN); the read has no side effects.
    unsafe { core::arch::asm!("isb", "mrs {}, cntvct_el0", out(reg) t, options(nostack)) };
    t
}

/// Raw thread, not registered: the rseq() error cases of the layout flag.
extern "C" fn layout_errors(arg: usize) -> i32 {
    // SAFETY: as in `read_area`.
    let s = unsafe { shared(arg) };
    let l = s.layout();
    let area = ktls::thread_pointer().wrapping_add_signed(l.offset);
    let flag = abi::RSEQ_FLAG_KTLS_LAYOUT;
    let other = area + 64;
    // SAFETY: every area passed lies in this thread's TLS block (or is the
    // kernel address, which the kernel refuses); a successful registration
    // is of this thread's own block, which outlives it.
    unsafe {
        s.vals[0].store(
            ktls::raw_rseq(area + 4, l.len, flag, l.sig) as i64,
            Ordering::Release,
        );
        s.vals[1].store(
            ktls::raw_rseq(area, 16, flag, l.sig) as i64,
            Ordering::Release,
        );
        s.vals[2].store(
            ktls::raw_rseq(0xffff_8000_0000_0000, l.len, flag, l.sig) as i64,
            Ordering::Release,
        );
        // Another offset than the group's: EBUSY, and left unregistered, so
        // a plain registration of that area then succeeds.
        s.vals[3].store(
            ktls::raw_rseq(other, l.len, flag, l.sig) as i64,
            Ordering::Release,
        );
        s.vals[4].store(
            ktls::raw_rseq(other, l.len, 0, l.sig) as i64,
            Ordering::Release,
        );
        s.vals[5].store(
            ktls::raw_rseq(other, l.len, abi::RSEQ_FLAG_UNREGISTER, l.sig) as i64,
            Ordering::Release,
        );
        // The group's own layout: registers this thread.
        s.vals[6].store(
            ktls::raw_rseq(area, l.len, flag, l.sig) as i64,
            Ordering::Release,
        );
        // And again: adopts the identical registration.
        s.vals[7].store(
            ktls::raw_rseq(area, l.len, flag, l.sig) as i64,
            Ordering::Release,
        );
    }
    0
}

/// Raw thread: `adds` rseq adds of 1 to the current CPU's slot, retrying
/// aborts. `vals[0]` = adds made, `vals[1]` = aborts, `vals[2]` = cpu_id seen
/// invalid (no area).
extern "C" fn rseq_worker(arg: usize) -> i32 {
    // SAFETY: as in `read_area`; `slots` points to `nslots` live slots.
    let s = unsafe { shared(arg) };
    let mut done = 0i64;
    let mut aborts = 0i64;
    let mut invalid = 0i64;
    // At least `adds`, and on until the parent has interrupted the workers
    // enough (it sets `stop`).
    while done < s.adds || !s.stop.load(Ordering::Relaxed) {
        let Some(start) = ktl::rseq::start(ktl::rseq::Index::CpuId) else {
            invalid += 1;
            break;
        };
        let cpu = start.value() as usize;
        if cpu >= s.nslots {
            invalid += 1;
            break;
        }
        // SAFETY: only rseq operations indexed by CPU write these slots (the
        // workers' adds), and `cpu` indexes one of them.
        let slot = unsafe { &*s.slots.add(cpu) };
        // SAFETY: the slot is a live, aligned AtomicI64 written only by rseq
        // operations started with the index they write under.
        match unsafe { ktl::rseq::add(start, slot.as_ptr(), 1) } {
            Ok(()) => done += 1,
            Err(_) => aborts += 1,
        }
    }
    s.vals[0].store(done, Ordering::Release);
    s.vals[1].store(aborts, Ordering::Release);
    s.vals[2].store(invalid, Ordering::Release);
    0
}

static SIGNALS: AtomicU64 = AtomicU64::new(0);

extern "C" fn count_signal(_: libc::c_int) {
    SIGNALS.fetch_add(1, Ordering::Relaxed);
}

fn nprocs() -> i64 {
    // SAFETY: sysconf only reads a configuration value.
    i64::from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) } as i32)
}

fn spawn(
    layout: GroupLayout,
    reg: Registration,
    entry: extern "C" fn(usize) -> i32,
    s: &Shared,
) -> Result<ktls::RawThread, String> {
    // SAFETY: every entry function in this file only reads its area, runs
    // rseq operations, touches atomics and makes raw system calls; `s`
    // outlives the thread (each caller joins before dropping it).
    unsafe { ktls::spawn_raw(layout, reg, entry, s.arg()) }.map_err(|e| format!("spawn_raw: {e}"))
}

/// The group layout of this process, set if needed.
fn layout() -> Result<GroupLayout, String> {
    // Decide the owner and, where ktl owns the areas, register this thread
    // (which records the layout on the prototype).
    let _ = ktl::cpu_id();
    let owner = ktl::layout().owner;
    if matches!(owner, ktl::Owner::Ktl(_)) && !ktls::layout_set() {
        return Err("ktl owns the areas but did not record the layout at registration".into());
    }
    ktls::set_group_layout().map_err(|e| format!("set_group_layout: {e}"))
}

fn check_features() -> Check {
    let f = ktls::features();
    if f.group_layout() && f.clone_rseq_ktls() {
        Ok(format!("AT_KTLS_FEATURES = {:#x} ({f})", f.bits()))
    } else {
        Err(format!(
            "AT_KTLS_FEATURES = {:#x}: not the prototype kernel",
            f.bits()
        ))
    }
}

fn check_layout() -> Check {
    let l = layout()?;
    let again = ktls::set_group_layout().map_err(|e| format!("the same layout again: {e}"))?;
    if again != l {
        return Err(format!("{again:?} != {l:?}"));
    }
    Ok(format!(
        "owner {}, offset {}, len {}, set twice",
        ktl::layout().owner,
        l.offset,
        l.len
    ))
}

/// errno of a libc::syscall result.
fn errno_of(ret: libc::c_long) -> i64 {
    if ret == -1 {
        -i64::from(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        ret
    }
}

fn check_errors() -> Check {
    let l = layout()?;
    let area = ktls::thread_pointer().wrapping_add_signed(l.offset);
    let flag = abi::RSEQ_FLAG_KTLS_LAYOUT;
    let mut failures = Vec::new();
    let mut expect = |what: &str, got: i64, want: i64| {
        if got != want {
            failures.push(format!("{what}: got {got}, want {want}"));
        }
    };
    // SAFETY: each call names this thread's live registration (or is
    // refused before the kernel registers anything).
    unsafe {
        expect(
            "KTLS_LAYOUT | UNREGISTER",
            ktls::raw_rseq(area, l.len, flag | abi::RSEQ_FLAG_UNREGISTER, l.sig) as i64,
            -i64::from(libc::EINVAL),
        );
        expect(
            "adopt with another signature",
            ktls::raw_rseq(area, l.len, flag, l.sig ^ 1) as i64,
            -i64::from(libc::EPERM),
        );
        expect(
            "adopt with another length",
            ktls::raw_rseq(area, l.len + 32, flag, l.sig) as i64,
            -i64::from(libc::EINVAL),
        );
    }
    // A raw thread without a registration: the registration checks.
    let s = Shared::new(l);
    spawn(l, Registration::None, layout_errors, &s)?.join();
    let einval = -i64::from(libc::EINVAL);
    expect("misaligned area", s.get(0), einval);
    expect("16-byte area", s.get(1), einval);
    expect("kernel address", s.get(2), -i64::from(libc::EFAULT));
    expect("another layout", s.get(3), -i64::from(libc::EBUSY));
    expect("plain registration after the EBUSY", s.get(4), 0);
    expect("unregistering it", s.get(5), 0);
    expect("the group's layout", s.get(6), 0);
    expect("the same again (adopted)", s.get(7), 0);
    // clone3 flag combinations that must fail before creating anything.
    for (what, flags) in [
        (
            "CLONE_RSEQ_KTLS without CLONE_THREAD",
            (libc::CLONE_VM | libc::CLONE_SETTLS) as u64 | abi::CLONE_RSEQ_KTLS,
        ),
        (
            "CLONE_RSEQ_KTLS without CLONE_SETTLS",
            (libc::CLONE_VM | libc::CLONE_SIGHAND | libc::CLONE_THREAD) as u64
                | abi::CLONE_RSEQ_KTLS,
        ),
    ] {
        expect(what, clone3_error(flags), einval);
    }
    if failures.is_empty() {
        Ok("rseq: EINVAL x3, EFAULT, EBUSY (left unregistered), EPERM; clone3: EINVAL x2".into())
    } else {
        Err(failures.join("; "))
    }
}

/// clone3 with `flags` that the kernel must refuse: its result (a negative
/// errno). A stack and TLS are given, so a wrongly accepted call makes a
/// thread that at worst crashes the test.
fn clone3_error(flags: u64) -> i64 {
    let mut stack = vec![0u8; 64 * 1024];
    let mut tls = vec![0usize; 512];
    let tls_ptr = tls.as_mut_ptr().addr() as u64;
    let mut args = [0u64; 11];
    args[0] = flags;
    args[5] = stack.as_mut_ptr().addr() as u64;
    args[6] = stack.len() as u64;
    args[7] = tls_ptr;
    // SAFETY: a valid clone_args of 88 bytes; the kernel refuses these flags
    // (which is what is tested) before creating anything.
    let r = unsafe { libc::syscall(libc::SYS_clone3, args.as_ptr(), size_of_val(&args)) };
    errno_of(r)
}

fn check_first_instruction() -> Check {
    let l = layout()?;
    let n = nprocs();
    let registered = Shared::new(l);
    spawn(l, Registration::Kernel, read_area, &registered)?.join();
    let unregistered = Shared::new(l);
    spawn(l, Registration::None, read_area, &unregistered)?.join();
    let (cpu, cid) = (registered.get(0), registered.get(1));
    if !(0..n).contains(&cpu) || !(0..n).contains(&cid) {
        return Err(format!(
            "CLONE_RSEQ_KTLS thread read cpu_id {cpu}, mm_cid {cid} (CPUs: {n})"
        ));
    }
    let unset = i64::from(abi::RSEQ_CPU_ID_UNINITIALIZED);
    if unregistered.get(0) != unset {
        return Err(format!(
            "a thread without the flag read cpu_id {} (expected the -1 left by spawn_raw)",
            unregistered.get(0)
        ));
    }
    Ok(format!(
        "with the flag: cpu_id {cpu}, mm_cid {cid}, node_id {} at the first read; without: -1",
        registered.get(2)
    ))
}

fn check_threads() -> Check {
    let l = layout()?;
    let n = nprocs();
    let mut ok = 0;
    for _ in 0..20 {
        let shared: Vec<Box<Shared>> = (0..50).map(|_| Shared::new(l)).collect();
        let threads = shared
            .iter()
            .map(|s| spawn(l, Registration::Kernel, read_area, s))
            .collect::<Result<Vec<_>, _>>()?;
        for t in threads {
            t.join();
        }
        ok += shared.iter().filter(|s| (0..n).contains(&s.get(0))).count();
    }
    if ok == 1000 {
        Ok(
            "1000 threads created with CLONE_RSEQ_KTLS, each read a valid cpu_id, all exited"
                .into(),
        )
    } else {
        Err(format!("{ok} of 1000 threads read a valid cpu_id"))
    }
}

fn check_signals_and_fences() -> Check {
    let l = layout()?;
    let possible = ktl::cpu::possible_cpus().unwrap_or(1024);
    let slots: Vec<AtomicI64> = (0..possible).map(|_| AtomicI64::new(0)).collect();
    const ADDS: i64 = 200_000;
    // SAFETY: installs a handler that only increments an atomic.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = count_signal as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()) != 0 {
            return Err("sigaction failed".into());
        }
    }
    let workers: Vec<Box<Shared>> = (0..3)
        .map(|_| {
            let mut s = Shared::new(l);
            s.slots = slots.as_ptr();
            s.nslots = slots.len();
            s.adds = ADDS;
            s
        })
        .collect();
    let threads = workers
        .iter()
        .map(|s| spawn(l, Registration::Kernel, rseq_worker, s))
        .collect::<Result<Vec<_>, _>>()?;
    let tids: Vec<i32> = threads.iter().map(|t| t.tid()).collect();
    let fence = ktl::rseq::fence::kind();
    let mut fences = 0u64;
    let mut rounds = 0u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    // Interrupt the running workers: at least 200 rounds of a signal to each
    // and a fence, and until every worker made its adds.
    while (rounds < 200 || workers.iter().any(|w| w.get(0) == i64::MIN))
        && Instant::now() < deadline
    {
        rounds += 1;
        if rounds == 200 {
            for w in &workers {
                w.stop.store(true, Ordering::Relaxed);
            }
        }
        for &tid in &tids {
            // SAFETY: tgkill to a thread of this process; a thread that
            // already exited gives ESRCH, which is fine.
            unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, libc::SIGUSR1) };
        }
        if ktl::rseq::fence::fence_all().is_ok() {
            fences += 1;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    for w in &workers {
        w.stop.store(true, Ordering::Relaxed);
    }
    for t in threads {
        t.join();
    }
    let total: i64 = slots.iter().map(|s| s.load(Ordering::Relaxed)).sum();
    let done: i64 = workers.iter().map(|w| w.get(0)).sum();
    let aborts: i64 = workers.iter().map(|w| w.get(1)).sum();
    let invalid: i64 = workers.iter().map(|w| w.get(2)).sum();
    let signals = SIGNALS.load(Ordering::Relaxed);
    let detail = format!(
        "3 threads, {done} adds (at least {ADDS} each): total {total}, {aborts} aborts, {signals} signals handled, {fences} fences ({fence})"
    );
    if invalid != 0 {
        return Err(format!("{detail}; {invalid} threads saw no area"));
    }
    if done < 3 * ADDS || total != done {
        return Err(format!("{detail}; lost or extra updates (done {done})"));
    }
    if aborts == 0 || signals == 0 {
        return Err(format!(
            "{detail}; no abort or no signal: the interruptions did not happen"
        ));
    }
    Ok(detail)
}

fn check_fork_keeps_layout() -> Check {
    let l = layout()?;
    // SAFETY: the child only spawns and joins a raw thread and exits with
    // _exit; the parent waits for it.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err("fork failed".into());
    }
    if pid == 0 {
        let s = Shared::new(l);
        let code = match spawn(l, Registration::Kernel, read_area, &s) {
            Ok(t) => {
                t.join();
                i32::from(!(0..nprocs()).contains(&s.get(0)))
            }
            Err(_) => 2,
        };
        // SAFETY: ends the child.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for our child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok("a fork child creates CLONE_RSEQ_KTLS threads with the inherited layout".into())
    } else {
        Err(format!("fork child status {status:#x}"))
    }
}

/// In a fresh process (exec cleared any layout) where nothing set one:
/// clone3(CLONE_RSEQ_KTLS) fails with EINVAL.
fn check_no_layout() -> Check {
    let made_up = GroupLayout {
        offset: 256,
        len: abi::ORIG_RSEQ_SIZE,
        sig: abi::RSEQ_SIG,
    };
    let s = Shared::new(made_up);
    match spawn(made_up, Registration::Kernel, read_area, &s) {
        Err(e) if e.contains(&KtlsError::Kernel(ktl::Errno(libc::EINVAL)).to_string()) => {
            Ok("clone3(CLONE_RSEQ_KTLS) without a group layout: EINVAL".into())
        }
        Err(e) => Err(format!("expected EINVAL, got {e}")),
        Ok(t) => {
            t.join();
            Err("clone3(CLONE_RSEQ_KTLS) without a group layout succeeded".into())
        }
    }
}

/// Under a seccomp filter that kills a thread on rseq(): a thread that
/// registers itself dies, and a CLONE_RSEQ_KTLS thread, which makes no
/// rseq() call, has its area from the first read.
fn check_seccomp() -> Check {
    let l = layout()?;
    let prog = seccomp::deny_syscall_program(libc::SYS_rseq, seccomp::SECCOMP_RET_KILL_THREAD);
    // SAFETY: a valid program, alive for the call; it applies to this
    // thread and the threads it creates.
    unsafe { seccomp::install(&prog, false) }.map_err(|e| format!("seccomp: {e}"))?;
    let control = Shared::new(l);
    spawn(l, Registration::None, register_then_read, &control)?.join();
    if control.get(3) != i64::MIN || control.get(0) != i64::MIN {
        return Err(format!(
            "the filter did not kill a thread calling rseq() (result {}, cpu {})",
            control.get(3),
            control.get(0)
        ));
    }
    let s = Shared::new(l);
    spawn(l, Registration::Kernel, read_area, &s)?.join();
    let cpu = s.get(0);
    if !(0..nprocs()).contains(&cpu) {
        return Err(format!(
            "CLONE_RSEQ_KTLS thread under the filter read cpu_id {cpu}"
        ));
    }
    Ok(format!(
        "a thread calling rseq() was killed; a CLONE_RSEQ_KTLS thread read cpu_id {cpu} with no rseq() call"
    ))
}

fn run(name: &str, check: fn() -> Check) -> bool {
    let t = Instant::now();
    let r = check();
    let ms = t.elapsed().as_millis();
    match &r {
        Ok(d) => println!("ok   {name} ({ms} ms): {d}"),
        Err(e) => println!("FAIL {name} ({ms} ms): {e}"),
    }
    r.is_ok()
}

/// The checks of one process (`ktl-guest check`).
fn checks() -> bool {
    let list: [Named; 7] = [
        ("features", check_features),
        ("layout", check_layout),
        ("errors", check_errors),
        ("first-instruction", check_first_instruction),
        ("threads", check_threads),
        ("signals-and-fences", check_signals_and_fences),
        ("fork", check_fork_keeps_layout),
    ];
    run_all(&list)
}

/// Runs every check of `list`, even after a failure; true if all passed.
fn run_all(list: &[Named]) -> bool {
    list.iter()
        .fold(true, |ok, &(name, check)| run(name, check) && ok)
}

/// Benchmark: create+join of raw threads with CLONE_RSEQ_KTLS, against
/// create+join of threads that register with rseq() themselves. Both in time
/// stamp counter ticks, with the registration syscall's own ticks, timed in
/// the threads that make it: the share of create+join that the flag saves.
fn bench() -> bool {
    let l = match layout() {
        Ok(l) => l,
        Err(e) => {
            println!("FAIL bench: {e}");
            return false;
        }
    };
    const N: u32 = 200;
    // One round: the mean ticks of a create+join, and of the rseq() calls.
    let round = |reg: Registration| -> Result<(f64, f64), String> {
        let mut in_thread = 0u64;
        let t = ticks();
        for _ in 0..N {
            let s = Shared::new(l);
            let entry = match reg {
                Registration::Kernel => read_area,
                Registration::None => register_then_read,
            };
            spawn(l, reg, entry, &s)?.join();
            if !(0..nprocs()).contains(&s.get(0)) {
                return Err(format!("a thread read cpu_id {}", s.get(0)));
            }
            if reg == Registration::None {
                if s.get(3) != 0 {
                    return Err(format!("rseq() in a thread returned {}", s.get(3)));
                }
                in_thread += s.get(4) as u64;
            }
        }
        let n = f64::from(N);
        Ok((ticks().wrapping_sub(t) as f64 / n, in_thread as f64 / n))
    };
    let mut kernel = Vec::new();
    let mut syscall = Vec::new();
    let mut rseq_calls = Vec::new();
    for _ in 0..7 {
        match (round(Registration::Kernel), round(Registration::None)) {
            (Ok((k, _)), Ok((s, r))) => {
                kernel.push(k);
                syscall.push(s);
                rseq_calls.push(r);
            }
            (Err(e), _) | (_, Err(e)) => {
                println!("FAIL bench: {e}");
                return false;
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (k, s, r) = (
        median(&mut kernel),
        median(&mut syscall),
        median(&mut rseq_calls),
    );
    println!(
        "ok   bench: create+join, median of 7 rounds of {N} (owner {}): plain + rseq() / CLONE_RSEQ_KTLS = {:.3}x; \
         the rseq() call is {:.2}% of a plain create+join ({:.0} of {:.0} ticks; CLONE_RSEQ_KTLS {:.0})",
        ktl::layout().owner,
        s / k,
        100.0 * r / s,
        r,
        s,
        k,
    );
    true
}

/// Runs `ktl-guest <cmd>` in a new process with `env`; true if it passed.
fn child(cmd: &str, env: &[(&str, &str)]) -> bool {
    let mut c = Command::new("/proc/self/exe");
    c.arg(cmd);
    for (k, v) in env {
        c.env(k, v);
    }
    match c.status() {
        Ok(s) if s.success() => true,
        Ok(s) => {
            println!("FAIL {cmd}: exit status {s}");
            false
        }
        Err(e) => {
            println!("FAIL {cmd}: cannot start: {e}");
            false
        }
    }
}

fn main() -> ExitCode {
    let cmd = std::env::args().nth(1).unwrap_or_default();
    let ok = match cmd.as_str() {
        "check" => checks(),
        "no-layout" => run("no-layout", check_no_layout),
        "seccomp" => run("seccomp", check_seccomp),
        "bench" => bench(),
        "facts" => facts::checks(),
        "facts-exec" => facts::exec_check(),
        "facts-bench" => facts::bench(),
        "" | "all" => {
            let mut ok = true;
            let all = [
                "no-layout",
                "check",
                "seccomp",
                "facts",
                "bench",
                "facts-bench",
            ];
            let off = ("GLIBC_TUNABLES", "glibc.pthread.rseq=0");
            for (mode, env, subs) in [
                ("glibc owns the areas", vec![], &all[..]),
                ("ktl owns the areas", vec![off], &all[..]),
                (
                    "ktl owns the areas, KTL_VDSO=off (thread facts from the fields)",
                    vec![off, ("KTL_VDSO", "off")],
                    &["facts"][..],
                ),
            ] {
                println!("== {mode}");
                for sub in subs {
                    ok &= child(sub, &env);
                }
            }
            ok
        }
        other => {
            eprintln!(
                "usage: ktl-guest [all|check|no-layout|seccomp|facts|bench|facts-bench] (got {other:?})"
            );
            false
        }
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
