//! The `random` group: random bytes from [`ktl::random::fill`]
//! (vDSO getrandom with a per-thread state) against the `getrandom(2)`
//! system call ([`ktl::random::syscall_fill`]) and the `getrandom` crate as
//! programs use it today (`getrandom::fill`, whose default Linux backend
//! calls the C library's `getrandom`, which is the system call before glibc
//! 2.41), for requests of 16, 256 and 4096 bytes. Next to ktl's row of
//! each size, the limit it is held to: the vDSO's `getrandom` called
//! directly with a state the row owns (`raw vDSO getrandom (limit)`), the
//! fastest any program can get its bytes.
//!
//! Every call fills a fresh buffer on the stack and adds its first 8 bytes
//! to the loop's accumulator, so the bytes are used. Each row counts the
//! calls that fail; after the samples, none may have failed, and every call
//! of ktl's row must have taken the path its name gives (the vDSO, or the
//! system call when `ktl::random` falls back to it): a mismatch is reported
//! like a counter that does not sum. The limit row checks each call's
//! return value: a call that fails or writes fewer bytes than asked counts
//! as a failed fill.
//!
//! Each row's ratio is taken against ktl's row of the same size.

use crate::harness::{OpCount, Outcome, Row, TimedLoop, counted, run_shape, verified};
use crate::os;
use ktl::random::{Path, ThreadFills};
use ktl::vdso::{GetrandomFn, VdsoError};
use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::fmt::{Display, Write as _};
use std::rc::Rc;

/// The group's name.
pub const GROUP: &str = "random";

/// The request sizes, in bytes.
pub const SIZES: [usize; 3] = [16, 256, 4096];

/// ktl's 16-byte row on the vDSO path, which the promise compares.
pub const KTL_16: &str = "16 B: ktl::random::fill (vDSO)";
/// The system call's 16-byte row.
pub const SYSCALL_16: &str = "16 B: getrandom(2) syscall";
/// The 16-byte limit row (the vDSO's `getrandom` called directly), which
/// the promise compares ktl's 16-byte row with.
pub const LIMIT_16: &str = "16 B: raw vDSO getrandom (limit)";

/// What the ratio column of the group compares against, in words.
pub(crate) const BASELINE_TEXT: &str = "ktl::random::fill of the same size";

/// A source of random bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// `ktl::random::fill`.
    Ktl,
    /// The vDSO's `getrandom` called directly with the row's own state: the
    /// limit.
    Limit,
    /// `ktl::random::syscall_fill`: the `getrandom(2)` system call.
    Syscall,
    /// `getrandom::fill`: the crate, with its default backend.
    Crate,
}

/// The path of ktl's rows: the vDSO, or the system call it falls back to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KtlPath {
    Vdso,
    Fallback,
}

impl Source {
    /// The implementation, in words: the row's name without the size (and,
    /// for the crate, without the C library it calls); `path` is ktl's.
    fn label(self, path: KtlPath) -> &'static str {
        match (self, path) {
            (Source::Ktl, KtlPath::Vdso) => "ktl::random::fill (vDSO)",
            (Source::Ktl, KtlPath::Fallback) => "ktl::random::fill (syscall fallback)",
            (Source::Limit, _) => "raw vDSO getrandom (limit)",
            (Source::Syscall, _) => "getrandom(2) syscall",
            (Source::Crate, _) => "getrandom crate",
        }
    }
}

/// The name of the row of `source` at `size` bytes; `path` is ktl's.
fn row_name(source: Source, size: usize, path: KtlPath) -> String {
    let label = source.label(path);
    match source {
        Source::Crate => format!("{size} B: {label} ({})", libc_name()),
        Source::Ktl | Source::Limit | Source::Syscall => format!("{size} B: {label}"),
    }
}

/// The name of ktl's row of `size` bytes on the syscall fallback.
pub(crate) fn fallback_name(size: usize) -> String {
    row_name(Source::Ktl, size, KtlPath::Fallback)
}

/// The C library that the `getrandom` crate calls: glibc and its version, or
/// "libc".
fn libc_name() -> String {
    match os::glibc_version() {
        Some(version) => format!("glibc {version}"),
        None => "libc".to_owned(),
    }
}

/// The path ktl's rows take in this thread: one fill is made first (it
/// gives this thread its state, so that no state is mapped while a row is
/// timed), and its path is the rows' path. `Err` when even the system call
/// fails.
fn ktl_path() -> Result<KtlPath, String> {
    let before = ktl::random::thread_fills();
    ktl::random::fill(&mut [0u8; 16]).map_err(|e| e.to_string())?;
    let after = ktl::random::thread_fills();
    let vdso = after.vdso > before.vdso && ktl::random::path() == Path::Vdso;
    Ok(if vdso {
        KtlPath::Vdso
    } else {
        KtlPath::Fallback
    })
}

/// The group's rows: for each size, ktl's, the limit, the system call's and
/// the crate's. The quick run measures the 16-byte rows of ktl, the limit
/// (which the promise compares) and the system call.
pub fn rows() -> Vec<Row> {
    rows_by_size()
        .into_iter()
        .flat_map(|(_, rows)| rows.map(|(_, row)| row))
        .collect()
}

/// The group's rows by request size, in the order of [`rows`]: for each of
/// [`SIZES`], the size and its four rows, each with its implementation in
/// words (the row's name without the size, and without the C library that
/// the crate calls).
pub fn rows_by_size() -> Vec<(usize, [(&'static str, Row); 4])> {
    let path = ktl_path();
    vec![
        (16, rows_of::<16>(&path)),
        (256, rows_of::<256>(&path)),
        (4096, rows_of::<4096>(&path)),
    ]
}

/// The four rows of `N`-byte requests, with their labels.
fn rows_of<const N: usize>(path: &Result<KtlPath, String>) -> [(&'static str, Row); 4] {
    let ktl_path = *path.as_ref().unwrap_or(&KtlPath::Fallback);
    let baseline = row_name(Source::Ktl, N, ktl_path);
    let ktl = match path {
        Ok(p) => fill_row::<N, _, _>(&baseline, ktl::random::fill, Some(*p)),
        Err(reason) => Row::unavailable(&baseline, GROUP, reason.clone()),
    };
    let limit = limit_row::<N>(&row_name(Source::Limit, N, ktl_path));
    let syscall = row_name(Source::Syscall, N, ktl_path);
    let syscall = match ktl::random::syscall_fill(&mut [0u8; 16]) {
        Ok(()) => fill_row::<N, _, _>(&syscall, ktl::random::syscall_fill, None),
        Err(e) => Row::unavailable(&syscall, GROUP, e.to_string()),
    };
    let krate = row_name(Source::Crate, N, ktl_path);
    let krate = match getrandom::fill(&mut [0u8; 16]) {
        Ok(()) => fill_row::<N, _, _>(&krate, getrandom::fill, None),
        Err(e) => Row::unavailable(&krate, GROUP, format!("getrandom::fill failed: {e}")),
    };
    [
        (
            Source::Ktl.label(ktl_path),
            ktl.ours().in_quick_run(N == 16),
        ),
        (Source::Limit.label(ktl_path), limit.in_quick_run(N == 16)),
        (
            Source::Syscall.label(ktl_path),
            syscall.in_quick_run(N == 16),
        ),
        (Source::Crate.label(ktl_path), krate.in_quick_run(false)),
    ]
    .map(|(label, row)| (label, row.compared_to(baseline.clone())))
}

/// The failed calls of a row.
#[derive(Default)]
struct Failures {
    count: Cell<u64>,
    /// The first failure's error.
    first: RefCell<Option<String>>,
}

impl Failures {
    #[cold]
    #[inline(never)]
    fn note(&self, e: &dyn Display) {
        self.count.set(self.count.get().saturating_add(1));
        let mut first = self.first.borrow_mut();
        if first.is_none() {
            *first = Some(e.to_string());
        }
    }
}

/// One call: fills a fresh `N`-byte buffer with `fill` and returns its first
/// 8 bytes as a number (0 when the call fails, which `failures` counts).
#[inline(always)]
fn draw<const N: usize, E: Display>(
    fill: &impl Fn(&mut [u8]) -> Result<(), E>,
    failures: &Failures,
) -> u64 {
    let mut buf = [0u8; N];
    match fill(&mut buf) {
        Ok(()) => buf.first_chunk::<8>().map_or(0, |b| u64::from_ne_bytes(*b)),
        Err(e) => {
            failures.note(&e);
            0
        }
    }
}

/// A row of `N`-byte requests to `fill`, checked after its samples: no call
/// failed, and (for ktl's rows, `path`) every call took that path.
fn fill_row<const N: usize, F, E>(name: &str, fill: F, path: Option<KtlPath>) -> Row
where
    F: Fn(&mut [u8]) -> Result<(), E> + 'static,
    E: Display,
{
    let failures = Rc::new(Failures::default());
    // The calling thread's fills by path, summed over the row's runs.
    let taken = Rc::new(Cell::new(ThreadFills::default()));
    let (f, t) = (Rc::clone(&failures), Rc::clone(&taken));
    let run: TimedLoop = Box::new(move |iters, shape| {
        let before = ktl::random::thread_fills();
        let elapsed = run_shape(&|| draw::<N, E>(&fill, &f), iters, shape);
        let after = ktl::random::thread_fills();
        let mut sum = t.get();
        sum.vdso = sum.vdso.wrapping_add(after.vdso.wrapping_sub(before.vdso));
        sum.syscall = sum
            .syscall
            .wrapping_add(after.syscall.wrapping_sub(before.syscall));
        t.set(sum);
        elapsed
    });
    let count = OpCount::default();
    let check = move |ops: u64| {
        let failed = failures.count.get();
        if failed > 0 {
            let first = failures.first.borrow().clone().unwrap_or_default();
            return Err(format!("{failed} of {ops} operations failed ({first})"));
        }
        let (via, path) = match path {
            None => return Ok(format!("{ops} operations, all succeeded")),
            Some(KtlPath::Vdso) => (taken.get().vdso, "the vDSO"),
            Some(KtlPath::Fallback) => (taken.get().syscall, "the system call"),
        };
        if via == ops {
            Ok(format!(
                "{ops} operations, all succeeded, all through {path}"
            ))
        } else {
            Err(format!(
                "{via} of {ops} operations went through {path}, the path the row's name gives"
            ))
        }
    };
    Row::timed(
        name,
        GROUP,
        counted(run, 1, Rc::clone(&count)),
        Some(verified(name, count, None, check)),
    )
}

/// The vDSO's `getrandom` with a state of its own: what the limit rows
/// call. The state is one, at the start of a mapping of whole pages made
/// with the protection and flags the vDSO asks for (so it does not straddle
/// a page), used by the row that owns it alone, on the thread that built
/// the row (rows are not sent to other threads), and unmapped with it.
struct RawVdso {
    getrandom: GetrandomFn,
    state: os::Mapping,
    /// The state's size, as the vDSO reported it.
    state_size: usize,
}

/// Why a raw vDSO call did not write the bytes asked for.
#[derive(Debug)]
enum RawFailure {
    /// It returned this negative errno.
    Errno(isize),
    /// It wrote `written` of `asked` bytes.
    Short { written: usize, asked: usize },
}

impl Display for RawFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            RawFailure::Errno(ret) => {
                let errno = i32::try_from(ret.unsigned_abs()).unwrap_or(i32::MAX);
                let err = std::io::Error::from_raw_os_error(errno);
                write!(f, "{} returned {ret}: {err}", ktl::vdso::GETRANDOM)
            }
            RawFailure::Short { written, asked } => {
                write!(
                    f,
                    "{} wrote {written} of {asked} bytes",
                    ktl::vdso::GETRANDOM
                )
            }
        }
    }
}

impl RawVdso {
    /// The vDSO's `getrandom` and a state mapped for it, or why there is
    /// none (the row is then n/a with that reason).
    fn new() -> Result<RawVdso, String> {
        let Some(getrandom) = ktl::vdso::getrandom_fn() else {
            return Err(no_getrandom_reason(ktl::vdso::Vdso::get().err()));
        };
        let params = ktl::vdso::getrandom_params(getrandom)
            .map_err(|e| format!("the vDSO refused the state query: {e}"))?;
        let state_size = params.size_of_opaque_state as usize;
        let page = usize::try_from(os::page_size()).unwrap_or(0);
        if state_size == 0 || state_size > page {
            return Err(format!(
                "the vDSO's state ({state_size} bytes) does not fit in a page of {page} bytes"
            ));
        }
        let state = os::Mapping::anonymous(page, params.mmap_prot as i32, params.mmap_flags as i32)
            .map_err(|e| format!("mapping the state failed: {e}"))?;
        Ok(RawVdso {
            getrandom,
            state,
            state_size,
        })
    }

    /// One call that fills `buf`: `Err` when it fails or writes less.
    #[inline(always)]
    fn fill(&self, buf: &mut [u8]) -> Result<(), RawFailure> {
        // SAFETY: `getrandom` is the vDSO's (`ktl::vdso::getrandom_fn`), or
        // in the tests a function of its signature that writes at most
        // `len` bytes. It writes at most `buf.len()` bytes to `buf`, which
        // is valid for writes of that many. The state is `state_size` bytes
        // at the start of a page-aligned mapping of at least one page, made
        // with the vDSO's protection and flags; only this `RawVdso` uses it,
        // and never from two calls at once (`&self` on one thread: a row is
        // not `Send`, and no signal handler calls it). Flags 0 ask for the
        // default generator.
        let ret = unsafe {
            (self.getrandom)(
                buf.as_mut_ptr().cast::<c_void>(),
                buf.len(),
                0,
                self.state.as_ptr().cast::<c_void>(),
                self.state_size,
            )
        };
        match usize::try_from(ret) {
            Ok(n) if n == buf.len() => Ok(()),
            Ok(written) => Err(RawFailure::Short {
                written,
                asked: buf.len(),
            }),
            Err(_) => Err(RawFailure::Errno(ret)),
        }
    }
}

/// Why there is no raw vDSO getrandom: the vDSO's error (`vdso`, when the
/// process has no usable vDSO), else the vDSO lacks the function.
fn no_getrandom_reason(vdso: Option<VdsoError>) -> String {
    match vdso {
        Some(e) => format!("no usable vDSO: {e}"),
        None => format!(
            "the vDSO has no {} (Linux before {})",
            ktl::vdso::GETRANDOM,
            if cfg!(target_arch = "aarch64") {
                "6.14"
            } else {
                "6.11"
            }
        ),
    }
}

/// The limit row of `N`-byte requests: the vDSO's `getrandom` called
/// directly, once per request, with the row's own state; a call that fails
/// or writes less than `N` bytes fails the row's check. n/a without vDSO
/// getrandom.
fn limit_row<const N: usize>(name: &str) -> Row {
    match RawVdso::new() {
        Ok(raw) => raw_row::<N>(name, raw),
        Err(reason) => Row::unavailable(name, GROUP, reason),
    }
}

/// The row of `N`-byte requests to `raw`, checked like the other rows.
fn raw_row<const N: usize>(name: &str, raw: RawVdso) -> Row {
    fill_row::<N, _, _>(name, move |buf: &mut [u8]| raw.fill(buf), None)
}

/// The line under the table that says which path ktl's rows took, and the
/// crate's, when a row of the group ran.
pub(crate) fn note(outcomes: &[Outcome]) -> Option<String> {
    if !outcomes.iter().any(|o| o.group == GROUP) {
        return None;
    }
    let mut note = format!("random: ktl::random::fill uses the {}", ktl::random::path());
    let crate_rows = SIZES.map(|n| row_name(Source::Crate, n, KtlPath::Vdso));
    if outcomes.iter().any(|o| crate_rows.contains(&o.name)) {
        let _ = write!(
            note,
            "; the getrandom crate calls the C library's getrandom ({}), the system call \
             before glibc 2.41",
            libc_name()
        );
    }
    Some(note)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::{Shape, UNROLL};

    #[test]
    fn rows_are_named_by_size_and_path() {
        let rows = rows();
        assert_eq!(rows.len(), 12);
        let vdso = ktl::random::path() == Path::Vdso;
        let ktl_16 = if vdso {
            KTL_16.to_owned()
        } else {
            row_name(Source::Ktl, 16, KtlPath::Fallback)
        };
        assert_eq!(rows[0].name, ktl_16);
        assert_eq!(rows[1].name, LIMIT_16);
        assert_eq!(rows[2].name, SYSCALL_16);
        assert!(rows[3].name.starts_with("16 B: getrandom crate ("));
        assert_eq!(rows[9].name, "4096 B: raw vDSO getrandom (limit)");
        assert!(rows[11].name.starts_with("4096 B: getrandom crate ("));
        let raw = ktl::vdso::getrandom_fn().is_some();
        for (i, size) in SIZES.into_iter().enumerate() {
            let four = &rows[4 * i..4 * i + 4];
            for r in four {
                assert_eq!(r.group, GROUP);
                assert!(r.name.starts_with(&format!("{size} B: ")), "{}", r.name);
                assert_eq!(r.op.is_ok(), r.verify.is_some(), "{} is checked", r.name);
                assert_eq!(r.baseline.as_deref(), Some(four[0].name.as_str()));
                assert_eq!(r.quick, size == 16 && !r.name.contains("crate"));
            }
            assert!(four[0].op.is_ok() && four[2].op.is_ok() && four[3].op.is_ok());
            assert_eq!(four[1].op.is_ok(), raw, "{}", four[1].name);
            assert!(four[1].name.ends_with(" B: raw vDSO getrandom (limit)"));
            assert!(four[0].ours && four[1..].iter().all(|r| !r.ours));
            assert_eq!(four[0].name.ends_with("(vDSO)"), vdso);
        }
        let mut names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 12);
    }

    #[test]
    fn a_failed_call_fails_the_check() {
        let fail = |_: &mut [u8]| Err::<(), _>("refused");
        let row = fill_row::<16, _, _>("r", fail, None);
        let op = row.op.unwrap();
        op(10, Shape::Call);
        drop(op);
        let err = row.verify.unwrap()().unwrap_err();
        assert!(
            err.contains("10 of 10 operations failed (refused)"),
            "{err}"
        );
    }

    #[test]
    fn a_call_on_another_path_fails_the_check() {
        // The row says the system call, but `fill` takes the vDSO when the
        // kernel has it (and the other way round).
        let other = match ktl_path().unwrap() {
            KtlPath::Vdso => KtlPath::Fallback,
            KtlPath::Fallback => KtlPath::Vdso,
        };
        let row = fill_row::<16, _, _>("r", ktl::random::fill, Some(other));
        let op = row.op.unwrap();
        op(5, Shape::Throughput);
        drop(op);
        let err = row.verify.unwrap()().unwrap_err();
        assert!(
            err.contains(&format!("0 of {} operations", 5 * UNROLL)),
            "{err}"
        );
    }

    #[test]
    fn without_vdso_getrandom_the_limit_row_says_why() {
        assert_eq!(
            no_getrandom_reason(Some(VdsoError::Disabled)),
            "no usable vDSO: the vDSO is turned off (KTL_VDSO=off)"
        );
        let reason = no_getrandom_reason(None);
        assert!(
            reason.starts_with(&format!(
                "the vDSO has no {} (Linux before 6.1",
                ktl::vdso::GETRANDOM
            )),
            "{reason}"
        );
        if ktl::vdso::getrandom_fn().is_none() {
            let row = limit_row::<16>(LIMIT_16);
            let expected = no_getrandom_reason(ktl::vdso::Vdso::get().err());
            assert_eq!(row.unavailable_reason(), Some(expected.as_str()));
        }
    }

    /// The raw vDSO's `getrandom`, or `None` (printed) where there is none.
    fn raw_vdso() -> Option<RawVdso> {
        match RawVdso::new() {
            Ok(raw) => Some(raw),
            Err(reason) => {
                eprintln!("no raw vDSO getrandom here ({reason}): nothing to run");
                None
            }
        }
    }

    #[test]
    fn the_limit_row_writes_the_bytes_asked_for() {
        let Some(raw) = raw_vdso() else { return };
        // Every size, straight from a zeroed buffer: all the bytes written
        // (a zero 16-byte window has probability 2^-128), and two calls
        // differ.
        for len in [1, 16, 256, 4096] {
            let (mut a, mut b) = (vec![0u8; len], vec![0u8; len]);
            raw.fill(&mut a).unwrap();
            raw.fill(&mut b).unwrap();
            if len >= 16 {
                assert!(a.chunks(16).all(|w| w.iter().any(|&x| x != 0)), "{len}");
                assert_ne!(a, b, "{len}");
            }
        }
        // The rows' loops: every call made and checked, in both shapes.
        let rows = [
            raw_row::<16>("16", raw),
            limit_row::<256>("256"),
            limit_row::<4096>("4096"),
        ];
        for row in rows {
            let op = row.op.unwrap();
            for iters in [0, 1, 100] {
                op(iters, Shape::Call);
                op(iters, Shape::Throughput);
            }
            drop(op);
            let ops = 101 * (1 + UNROLL);
            let verified = row.verify.unwrap()().unwrap();
            assert!(
                verified.contains(&format!("{ops} operations, all succeeded")),
                "{verified}"
            );
        }
    }

    /// A stand-in for the vDSO's `getrandom` that writes half the bytes.
    unsafe extern "C" fn half(
        buf: *mut c_void,
        len: usize,
        _flags: u32,
        _state: *mut c_void,
        _state_len: usize,
    ) -> isize {
        // SAFETY: the caller's `buf` is valid for `len` bytes of writes.
        unsafe { core::ptr::write_bytes(buf.cast::<u8>(), 0xa5, len / 2) };
        (len / 2) as isize
    }

    /// A stand-in for the vDSO's `getrandom` that fails with `EFAULT` (14).
    unsafe extern "C" fn efault(
        _buf: *mut c_void,
        _len: usize,
        _flags: u32,
        _state: *mut c_void,
        _state_len: usize,
    ) -> isize {
        -14
    }

    #[test]
    fn a_short_or_failed_raw_call_fails_the_check() {
        if raw_vdso().is_none() {
            return;
        }
        // A real state, called through a stand-in.
        let with = |getrandom: GetrandomFn| RawVdso {
            getrandom,
            ..RawVdso::new().unwrap()
        };
        for (f, text) in [
            (half as GetrandomFn, "wrote 8 of 16 bytes"),
            (efault as GetrandomFn, "returned -14"),
        ] {
            let row = raw_row::<16>("r", with(f));
            let op = row.op.unwrap();
            op(3, Shape::Call);
            drop(op);
            let err = row.verify.unwrap()().unwrap_err();
            assert!(err.contains("3 of 3 operations failed ("), "{err}");
            assert!(err.contains(text), "{err}");
        }
    }

    #[test]
    fn the_bytes_are_used() {
        let failures = Failures::default();
        let a = draw::<16, _>(&ktl::random::fill, &failures);
        let b = draw::<16, _>(&ktl::random::fill, &failures);
        // Two equal 64-bit draws: probability 2^-64.
        assert_ne!(a, b);
        assert_eq!(failures.count.get(), 0);
    }
}
