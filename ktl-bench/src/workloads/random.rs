//! The `random` group: random bytes from [`ktl::random::fill`]
//! (vDSO getrandom with a per-thread state) against the `getrandom(2)`
//! system call ([`ktl::random::syscall_fill`]) and the `getrandom` crate as
//! programs use it today (`getrandom::fill`, whose default Linux backend
//! calls the C library's `getrandom`, which is the system call before glibc
//! 2.41), for requests of 16, 256 and 4096 bytes.
//!
//! Every call fills a fresh buffer on the stack and adds its first 8 bytes
//! to the loop's accumulator, so the bytes are used. Each row counts the
//! calls that fail; after the samples, none may have failed, and every call
//! of ktl's row must have taken the path its name gives (the vDSO, or the
//! system call when `ktl::random` falls back to it): a mismatch is reported
//! like a counter that does not sum.
//!
//! Each row's ratio is taken against ktl's row of the same size.

use crate::harness::{OpCount, Outcome, Row, TimedLoop, counted, run_shape, verified};
use crate::os;
use ktl::random::{Path, ThreadFills};
use std::cell::{Cell, RefCell};
use std::fmt::{Display, Write as _};
use std::rc::Rc;

/// The group's name.
pub const GROUP: &str = "random";

/// The request sizes, in bytes.
pub const SIZES: [usize; 3] = [16, 256, 4096];

/// ktl's 16-byte row on the vDSO path, which the promise compares.
pub const KTL_16: &str = "16 B: ktl::random::fill (vDSO)";
/// The system call's 16-byte row, which the promise compares.
pub const SYSCALL_16: &str = "16 B: getrandom(2) syscall";

/// What the ratio column of the group compares against, in words.
pub(crate) const BASELINE_TEXT: &str = "ktl::random::fill of the same size";

/// A source of random bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// `ktl::random::fill`.
    Ktl,
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
        Source::Ktl | Source::Syscall => format!("{size} B: {label}"),
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

/// The group's rows: for each size, ktl's, the system call's and the
/// crate's. The quick run measures ktl's and the system call's 16-byte rows,
/// which the promise compares.
pub fn rows() -> Vec<Row> {
    rows_by_size()
        .into_iter()
        .flat_map(|(_, rows)| rows.map(|(_, row)| row))
        .collect()
}

/// The group's rows by request size, in the order of [`rows`]: for each of
/// [`SIZES`], the size and its three rows, each with its implementation in
/// words (the row's name without the size, and without the C library that
/// the crate calls).
pub fn rows_by_size() -> Vec<(usize, [(&'static str, Row); 3])> {
    let path = ktl_path();
    vec![
        (16, rows_of::<16>(&path)),
        (256, rows_of::<256>(&path)),
        (4096, rows_of::<4096>(&path)),
    ]
}

/// The three rows of `N`-byte requests, with their labels.
fn rows_of<const N: usize>(path: &Result<KtlPath, String>) -> [(&'static str, Row); 3] {
    let ktl_path = *path.as_ref().unwrap_or(&KtlPath::Fallback);
    let baseline = row_name(Source::Ktl, N, ktl_path);
    let ktl = match path {
        Ok(p) => fill_row::<N, _, _>(&baseline, ktl::random::fill, Some(*p)),
        Err(reason) => Row::unavailable(&baseline, GROUP, reason.clone()),
    };
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
        assert_eq!(rows.len(), 9);
        let vdso = ktl::random::path() == Path::Vdso;
        let ktl_16 = if vdso {
            KTL_16.to_owned()
        } else {
            row_name(Source::Ktl, 16, KtlPath::Fallback)
        };
        assert_eq!(rows[0].name, ktl_16);
        assert_eq!(rows[1].name, SYSCALL_16);
        assert!(rows[2].name.starts_with("16 B: getrandom crate ("));
        assert!(rows[8].name.starts_with("4096 B: getrandom crate ("));
        for (i, size) in SIZES.into_iter().enumerate() {
            let three = &rows[3 * i..3 * i + 3];
            for r in three {
                assert_eq!(r.group, GROUP);
                assert!(r.name.starts_with(&format!("{size} B: ")), "{}", r.name);
                assert!(r.op.is_ok() && r.verify.is_some(), "{} runs", r.name);
                assert_eq!(r.baseline.as_deref(), Some(three[0].name.as_str()));
                assert_eq!(r.quick, size == 16 && !r.name.contains("crate"));
            }
            assert!(three[0].ours && !three[1].ours && !three[2].ours);
            assert_eq!(three[0].name.ends_with("(vDSO)"), vdso);
        }
        let mut names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 9);
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
    fn the_bytes_are_used() {
        let failures = Failures::default();
        let a = draw::<16, _>(&ktl::random::fill, &failures);
        let b = draw::<16, _>(&ktl::random::fill, &failures);
        // Two equal 64-bit draws: probability 2^-64.
        assert_ne!(a, b);
        assert_eq!(failures.count.get(), 0);
    }
}
