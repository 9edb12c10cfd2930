//! Signal storms aimed at one thread, and processes that must finish in
//! time (a hang is a deadlock to report, not a test that never ends).

use std::cell::Cell;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

/// A POSIX timer that sends `sig` to the thread that started it, first after
/// `first`, then `period` after each handler has called [`rearm`], until it
/// is dropped or has sent [`MAX_SIGNALS`]. Pacing the signals from the end of
/// each handler leaves the thread `period` to make progress between two
/// signals, however long their delivery takes (a periodic timer faster than
/// the delivery would livelock it), and the cap ends the storm even if the
/// machine slows down so much that `period` is no longer enough.
pub struct Storm {
    id: libc::c_int,
}

thread_local! {
    /// The calling thread's storm timer, or -1.
    static TIMER: Cell<libc::c_int> = const { Cell::new(-1) };
    /// Its pace.
    static PACE: Cell<Duration> = const { Cell::new(Duration::ZERO) };
    /// When it stops, if it does before it is dropped.
    static UNTIL: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Signals it has sent.
    static SENT: Cell<u32> = const { Cell::new(0) };
}

/// The most signals one storm sends.
pub const MAX_SIGNALS: u32 = 5_000;

fn timespec(d: Duration) -> libc::timespec {
    // SAFETY: timespec is plain data, valid when zeroed (and it may have
    // padding fields on some targets).
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    ts.tv_sec = d.as_secs() as _;
    ts.tv_nsec = d.subsec_nanos() as _;
    ts
}

/// Arms timer `id` once, `after` from now. Only makes a system call.
fn arm(id: libc::c_int, after: Duration) -> bool {
    let spec = libc::itimerspec {
        it_interval: timespec(Duration::ZERO),
        it_value: timespec(after.max(Duration::from_nanos(1))),
    };
    // SAFETY: the kernel reads `spec` and writes nothing (the old value is
    // not asked for); a stale id fails with EINVAL.
    let r = unsafe {
        libc::syscall(
            libc::SYS_timer_settime,
            id,
            0,
            &spec as *const libc::itimerspec,
            std::ptr::null_mut::<libc::itimerspec>(),
        )
    };
    r == 0
}

impl Storm {
    /// Starts the storm. Only makes system calls.
    pub fn start(sig: libc::c_int, first: Duration, period: Duration) -> Storm {
        Storm::start_until(sig, first, period, None)
    }

    /// Starts a storm that ends at `until` at the latest.
    pub fn start_until(
        sig: libc::c_int,
        first: Duration,
        period: Duration,
        until: Option<Instant>,
    ) -> Storm {
        // SAFETY: sigevent is plain data, valid when zeroed.
        let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
        sev.sigev_notify = libc::SIGEV_THREAD_ID;
        sev.sigev_signo = sig;
        // SAFETY: gettid has no preconditions.
        sev.sigev_notify_thread_id = unsafe { libc::gettid() };
        let mut id: libc::c_int = 0;
        // SAFETY: the kernel reads the sigevent and writes the timer id,
        // both live locals.
        let r = unsafe {
            libc::syscall(
                libc::SYS_timer_create,
                libc::CLOCK_MONOTONIC,
                &sev as *const libc::sigevent,
                &mut id as *mut libc::c_int,
            )
        };
        assert_eq!(r, 0, "timer_create: {}", std::io::Error::last_os_error());
        PACE.with(|p| p.set(period));
        UNTIL.with(|u| u.set(until));
        SENT.with(|n| n.set(1));
        TIMER.with(|t| t.set(id));
        assert!(
            arm(id, first),
            "timer_settime: {}",
            std::io::Error::last_os_error()
        );
        Storm { id }
    }
}

/// Sends the calling thread's next storm signal `period` from now: a
/// handler's last call. Does nothing outside a storm.
pub fn rearm() {
    let id = TIMER.with(Cell::get);
    let sent = SENT.with(Cell::get);
    let over = sent >= MAX_SIGNALS
        || UNTIL
            .with(Cell::get)
            .is_some_and(|until| Instant::now() >= until);
    if id >= 0 && !over {
        SENT.with(|n| n.set(sent + 1));
        arm(id, PACE.with(Cell::get));
    }
}

impl Drop for Storm {
    fn drop(&mut self) {
        TIMER.with(|t| t.set(-1));
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
        // SAFETY: deletes the timer this value owns. A signal already sent
        // may still arrive: the handlers ignore signals outside the window
        // they watch.
        unsafe { libc::syscall(libc::SYS_timer_delete, self.id) };
    }
}

/// The shortest pace, of a few that double, at which a thread under a storm
/// of `sig` still runs at a twentieth of its speed or more: the densest
/// storm that never stops it. What a signal costs differs widely between
/// machines: a few microseconds on bare metal, tens in some virtual
/// machines, where a storm paced faster than that leaves the thread no time
/// at all. The handler for `sig` must call [`rearm`].
pub fn calibrate(sig: libc::c_int) -> Duration {
    let spin = |storm: Option<Duration>| {
        let start = Instant::now();
        let end = start + Duration::from_millis(5);
        // Ends on time even if the pace leaves the thread no time.
        let _storm = storm.map(|pace| Storm::start_until(sig, pace, pace, Some(end)));
        let mut work = 0u64;
        while Instant::now() < end {
            for _ in 0..100 {
                work = std::hint::black_box(work + 1);
            }
        }
        work
    };
    let free = spin(None).max(1);
    let mut pace = Duration::from_micros(2);
    while pace < Duration::from_millis(1) && spin(Some(pace)) * 20 < free {
        pace *= 2;
    }
    pace
}

/// Runs `f` with the calling thread's `errno` saved and restored, as a
/// signal handler must.
pub fn keeping_errno(f: impl FnOnce()) {
    // SAFETY: __errno_location returns the calling thread's errno, valid
    // for the life of the thread.
    let errno = unsafe { *libc::__errno_location() };
    f();
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Whether the rseq system call exists here (not under qemu-user, where
/// signal storms can also livelock the emulator).
pub fn native_kernel(test: &str) -> bool {
    // SAFETY: rseq(NULL, 0, 0, 0) only validates its arguments.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rseq,
            std::ptr::null_mut::<libc::c_void>(),
            0u32,
            0,
            0u32,
        )
    };
    let errno = std::io::Error::last_os_error().raw_os_error();
    if r == -1 && errno == Some(libc::EINVAL) {
        return true;
    }
    eprintln!("SKIPPED {test}: no rseq system call here (an emulator)");
    false
}

/// Counters shared between a process and the copies of it that
/// [`fork_trial`] makes: a page mapped `MAP_SHARED` before the forks.
#[repr(C)]
pub struct Shared {
    /// The counters, zero in a fresh page; what each means is the caller's.
    pub counts: [AtomicU64; 8],
}

/// A fresh [`Shared`] page (leaked: it lives as long as the process).
pub fn shared_page() -> &'static Shared {
    // SAFETY: a new anonymous shared mapping of one page; all zero bytes
    // are valid `AtomicU64`s, and the page is never unmapped.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED, "mmap");
        &*p.cast::<Shared>()
    }
}

/// How a forked trial ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Trial {
    /// It exited with this status.
    Exited(i32),
    /// It was killed by this signal.
    Signalled(i32),
    /// It was still running after the time limit, and was killed.
    Hung,
}

/// Runs `trial` in a forked copy of the calling process, which exits with
/// the status `trial` returns (101 if it panics), and waits at most `limit`
/// for it. The copy has only the calling thread; it must not rely on
/// anything the other threads were doing.
pub fn fork_trial(limit: Duration, trial: impl FnOnce() -> i32) -> Trial {
    // SAFETY: the child runs `trial` and exits with `_exit`, never returning
    // into the caller's frames; the parent only waits for it.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: plain integers; the copy dies with the process that waits
        // for it, even if that one is killed.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(trial)).unwrap_or(101);
        // SAFETY: ends the forked copy at once, without running the
        // parent's exit handlers a second time.
        unsafe { libc::_exit(code) };
    }
    let deadline = Instant::now() + limit;
    loop {
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is a live local.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return if libc::WIFEXITED(status) {
                Trial::Exited(libc::WEXITSTATUS(status))
            } else {
                Trial::Signalled(libc::WTERMSIG(status))
            };
        }
        assert_eq!(r, 0, "waitpid: {}", std::io::Error::last_os_error());
        if Instant::now() > deadline {
            // SAFETY: kills and reaps our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return Trial::Hung;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Runs the test `test` in a copy of this test binary, with `child_env` set
/// to `test` and the variables `env`, and requires it to pass within
/// `limit`; a copy still running then is killed, and the test fails.
pub fn run_self(test: &str, child_env: &str, env: &[(&str, &str)], limit: Duration) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(child_env, test)
        .env_remove("GLIBC_TUNABLES")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let text = format!("{}{}", out.join().unwrap(), err.join().unwrap());
    let Some(status) = status else {
        panic!("{test}: the child process hung (killed after {limit:?}):\n{text}");
    };
    assert!(status.success(), "{test}: {status}:\n{text}");
    assert!(text.contains("test result: ok. 1 passed"), "{text}");
    eprintln!("{test}: child passed in {:?}:\n{text}", started.elapsed());
}
