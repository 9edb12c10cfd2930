//! Signal handlers, and signalling workers until they finish.

/// Installs `handler` for `sig`, with `SA_RESTART` and an empty mask.
pub fn install(sig: libc::c_int, handler: extern "C" fn(libc::c_int)) {
    // SAFETY: a zeroed sigaction with a valid handler and an empty mask.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(sig, &sa, std::ptr::null_mut()), 0);
    }
}

/// The C library's `pthread_t` of `thread`, for `pthread_kill`. std hands
/// it out as an integer (`RawPthread`, a `c_ulong`): glibc's `pthread_t` is
/// that integer; musl's is a pointer, which std converted to the integer and
/// which this converts back. Nothing but the C library uses the value.
pub fn pthread_of<T>(thread: &std::thread::JoinHandle<T>) -> libc::pthread_t {
    use std::os::unix::thread::JoinHandleExt;
    thread.as_pthread_t() as libc::pthread_t
}

/// Sends `sig` to each of `workers` every `period` (and no more often than
/// every millisecond where no thread has an rseq area: an emulator, which
/// denser signals can livelock) until all of them have finished, then joins
/// them. Returns their results and the number of signals sent. The workers
/// are joined only after the signalling stops, so no signal can reach a
/// thread that is gone.
///
/// The period doubles after each second of signalling, up to
/// 2 ms: where a signal takes longer to deliver and handle than
/// `period` (a whole machine emulated under TCG), a worker whose section the
/// signals abort again and again would otherwise never finish (the likely
/// cause of a `rseq_add_current` run that hung for 300 s in the KTLS guest,
/// where ktl owned the areas).
pub fn signal_until_done<T>(
    workers: Vec<std::thread::JoinHandle<T>>,
    sig: libc::c_int,
    period: std::time::Duration,
) -> (Vec<T>, u64) {
    let mut period = self::period(period);
    let mut sent = 0u64;
    let mut next_backoff = std::time::Instant::now() + BACKOFF_EVERY;
    while !workers.iter().all(|w| w.is_finished()) {
        if period < MAX_PERIOD && std::time::Instant::now() >= next_backoff {
            period = (period * 2).min(MAX_PERIOD);
            next_backoff += BACKOFF_EVERY;
        }
        for w in &workers {
            // SAFETY: the thread has not been joined (that happens below),
            // so its pthread_t is valid; a finished thread's is too until
            // it is joined.
            unsafe { libc::pthread_kill(pthread_of(w), sig) };
            sent += 1;
        }
        std::thread::sleep(period);
    }
    let results = workers.into_iter().map(|w| w.join().unwrap()).collect();
    (results, sent)
}

/// Spawns a worker for [`signal_until_done`]: a thread that runs `setup`,
/// then `work`, and returns only once `setup` has returned, so that no signal
/// sent to the thread afterwards lands before `setup` is done.
///
/// `setup` makes the thread's first calls of ktl (the owner decision, the
/// registration of its area where ktl owns the areas, a random state), which
/// allocate: a signal handler must not make them (see `ktl::area`), since
/// one that interrupts the thread inside `malloc` and allocates in turn
/// deadlocks. A worker spawned plainly can be signalled from its very first
/// instruction, while the signal handler of a test that calls ktl would make
/// those first calls itself.
pub fn spawn_set_up<S, W, T>(setup: S, work: W) -> std::thread::JoinHandle<T>
where
    S: FnOnce() + Send + 'static,
    W: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (ready, set_up) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        setup();
        // The receiver waits below, until this is sent.
        let _ = ready.send(());
        work()
    });
    // An error means the thread ended (setup panicked): the join reports it.
    let _ = set_up.recv();
    worker
}

/// How long [`signal_until_done`] signals at one period before doubling it.
const BACKOFF_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The longest period [`signal_until_done`] backs off to.
const MAX_PERIOD: std::time::Duration = std::time::Duration::from_millis(2);

/// The time between signals for [`signal_until_done`]: `native`, or at
/// least 1 ms where no thread has an rseq area, which in practice means an
/// emulator. qemu-user (7.2) can livelock a thread that a signal reaches
/// every few microseconds: the thread stops in the middle of its
/// `rt_sigprocmask` and never returns (seen with `qemu-aarch64 -strace`).
fn period(native: std::time::Duration) -> std::time::Duration {
    if ktl::rseq::path() == ktl::rseq::Path::Locked {
        native.max(std::time::Duration::from_millis(1))
    } else {
        native
    }
}
