//! The driver of the allocator benchmark (`alloc-bench`): its options, the
//! runs of the four `alloc-workload` programs as child processes, and the
//! reports.

use super::chart;
use super::child::{self, Line};
use super::report::{
    self, ALLOCATORS, Header, RATIO_NOTE, Record, SCHEMA, Sample, Settings, Summary, Target,
};
use super::workloads::{self, Plan, Workload};
use crate::json::Machine;
use crate::os;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{self, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The usage of `alloc-bench`.
pub const USAGE: &str = "\
usage: alloc-bench --bins DIR [--threads 1,2,8,32] [--workloads W,...] [--reps 5]
                   [--scale F] [--json FILE] [--svg FILE] [--markdown FILE] [--quick]

Runs every workload at every thread count under ktl-alloc, glibc's malloc,
mimalloc and jemalloc: the programs DIR/alloc-workload-ktl, -glibc, -mimalloc
and -jemalloc (ktl-bench/alloc-run builds them). The repetitions are
interleaved: one run of each allocator, then the next round.

  --bins DIR        where the four alloc-workload programs are
  --threads LIST    thread counts, comma-separated (default 1,2,8,32)
  --workloads LIST  of xmalloc, larson, cache-scratch, alloc-test, btree
                    (default: all)
  --reps N          runs of each program per workload and threads (default 5)
  --scale F         multiplies the work of every workload (default 1)
  --json FILE       writes the record: every run, the summaries, the targets
  --svg FILE        writes the chart: time over ktl's, a panel per thread count
  --markdown FILE   writes the table and the targets as Markdown
  --quick           threads 1,2, one rep, scale 0.1 (what is given explicitly
                    still counts)";

/// Default thread counts.
const DEFAULT_THREADS: &[usize] = &[1, 2, 8, 32];
/// Default runs per program, workload and thread count.
const DEFAULT_REPS: u32 = 5;
/// The quick run's thread counts, runs and scale.
const QUICK: (&[usize], u32, f64) = (&[1, 2], 1, 0.1);
/// The most runs per cell (a typo guard).
const MAX_REPS: u32 = 1000;

/// The options of `alloc-bench`.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Where the `alloc-workload-<allocator>` programs are.
    pub bins: PathBuf,
    /// The thread counts, in order.
    pub threads: Vec<usize>,
    /// The workloads, in order.
    pub workloads: Vec<Workload>,
    /// Runs of each program per workload and thread count.
    pub reps: u32,
    /// The scale of the workloads.
    pub scale: f64,
    /// The JSON record's file.
    pub json: Option<PathBuf>,
    /// The chart's file.
    pub svg: Option<PathBuf>,
    /// The Markdown table's file.
    pub markdown: Option<PathBuf>,
    /// The quick run.
    pub quick: bool,
}

impl Options {
    /// Parses the arguments after the program's name; `Ok(None)` for
    /// `--help`.
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Option<Options>, String> {
        let mut bins = None;
        let (mut threads, mut workloads, mut reps, mut scale) = (None, None, None, None);
        let (mut json, mut svg, mut markdown, mut quick) = (None, None, None, false);
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
                _ => (arg.clone(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            match name.as_str() {
                "-h" | "--help" => return Ok(None),
                "--quick" => quick = true,
                "--bins" => bins = Some(PathBuf::from(value()?)),
                "--threads" => threads = Some(parse_threads(&value()?)?),
                "--workloads" => workloads = Some(parse_workloads(&value()?)?),
                "--reps" => reps = Some(parse_reps(&value()?)?),
                "--scale" => scale = Some(child::parse_scale(&value()?)?),
                "--json" => json = Some(PathBuf::from(value()?)),
                "--svg" => svg = Some(PathBuf::from(value()?)),
                "--markdown" => markdown = Some(PathBuf::from(value()?)),
                other => {
                    return Err(format!(
                        "unexpected argument {other:?} (see alloc-bench --help)"
                    ));
                }
            }
        }
        let bins = bins.ok_or_else(|| {
            "--bins DIR is missing: the directory of the alloc-workload programs".to_owned()
        })?;
        let (quick_threads, quick_reps, quick_scale) = QUICK;
        let options = Options {
            bins,
            threads: threads.unwrap_or_else(|| {
                if quick {
                    quick_threads
                } else {
                    DEFAULT_THREADS
                }
                .to_vec()
            }),
            workloads: workloads.unwrap_or_else(|| Workload::ALL.to_vec()),
            reps: reps.unwrap_or(if quick { quick_reps } else { DEFAULT_REPS }),
            scale: scale.unwrap_or(if quick { quick_scale } else { 1.0 }),
            json,
            svg,
            markdown,
            quick,
        };
        Ok(Some(options))
    }

    /// The program of `allocator`.
    fn program(&self, allocator: &str) -> PathBuf {
        self.bins.join(format!("alloc-workload-{allocator}"))
    }
}

/// A comma-separated list of thread counts, without repeats.
fn parse_threads(v: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in v.split(',').map(str::trim) {
        let n: usize = part
            .parse()
            .map_err(|_| format!("--threads: {part:?} is not a thread count"))?;
        if !(1..=workloads::MAX_THREADS).contains(&n) {
            return Err(format!(
                "--threads: {n} is not from 1 to {}",
                workloads::MAX_THREADS
            ));
        }
        if !out.contains(&n) {
            out.push(n);
        }
    }
    Ok(out)
}

/// A comma-separated list of workloads, without repeats.
fn parse_workloads(v: &str) -> Result<Vec<Workload>, String> {
    let mut out = Vec::new();
    for part in v.split(',').map(str::trim) {
        let w = Workload::parse(part).map_err(|e| format!("--workloads: {e}"))?;
        if !out.contains(&w) {
            out.push(w);
        }
    }
    Ok(out)
}

/// A count of runs.
fn parse_reps(v: &str) -> Result<u32, String> {
    match v.parse::<u32>() {
        Ok(n) if (1..=MAX_REPS).contains(&n) => Ok(n),
        _ => Err(format!("--reps: {v:?} is not a count from 1 to {MAX_REPS}")),
    }
}

/// Fails with a message unless a file can be written at `path` (`what`
/// names it); changes nothing.
fn check_writable(path: &Path, what: &str) -> Result<(), String> {
    crate::plot::check_writable_as(path, what)
}

/// Fails with a message naming every program of `options` that is missing
/// or not executable.
fn check_programs(options: &Options) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let missing: Vec<String> = ALLOCATORS
        .iter()
        .map(|a| options.program(a))
        .filter(|p| {
            !std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .map(|p| p.display().to_string())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "missing or not executable: {} (ktl-bench/alloc-run builds the four programs)",
            missing.join(", ")
        ))
    }
}

/// Waits for the child `pid` with `wait4`: its wait status and resource
/// usage.
fn wait4(pid: u32) -> io::Result<(libc::c_int, libc::rusage)> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from(ErrorKind::InvalidInput))?;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data, for which all-zero bytes are a value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is a child of this process that nothing else waits
        // for (its `Child` handle is never waited on), so it is reaped here
        // once; `status` and `usage` are writable and live for the call.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            return Ok((status, usage));
        }
        let e = io::Error::last_os_error();
        if e.kind() != ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// What one run of a program gave: its line, and its peak RSS in KiB.
struct Run {
    line: Line,
    max_rss_kib: u64,
}

/// Runs `program` on `workload` at `threads` and `scale`: its line and peak
/// RSS, or why it failed (it could not start, it exited non-zero or by a
/// signal, or it printed no line).
fn run_program(
    program: &Path,
    workload: Workload,
    threads: usize,
    scale: f64,
) -> Result<Run, String> {
    let name = program.file_name().map_or_else(
        || program.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let what = format!("{name} {workload} {threads}");
    let mut child = Command::new(program)
        .arg(workload.name())
        .arg(threads.to_string())
        .arg("--scale")
        .arg(scale.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    // stderr on a thread of its own, so that neither pipe fills up.
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = stderr {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    });
    let mut out = String::new();
    let read = stdout.map(|mut pipe| pipe.read_to_string(&mut out));
    let waited = wait4(child.id());
    let errors = errors.join().unwrap_or_default();
    let (status, usage) = waited.map_err(|e| format!("{what}: wait4 failed: {e}"))?;
    let said = match errors.trim() {
        "" => String::new(),
        text => format!(": {text}"),
    };
    if libc::WIFSIGNALED(status) {
        return Err(format!(
            "{what} was killed by signal {}{said}",
            libc::WTERMSIG(status)
        ));
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(format!(
            "{what} failed (exit code {}){said}",
            libc::WEXITSTATUS(status)
        ));
    }
    if let Some(Err(e)) = read {
        return Err(format!("{what}: cannot read its output: {e}"));
    }
    let text = out
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let line: Line = serde_json::from_str(text)
        .map_err(|e| format!("{what} printed {text:?}, not its JSON line: {e}"))?;
    Ok(Run {
        line,
        // Linux counts ru_maxrss in KiB.
        max_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
    })
}

/// Checks a program's line against what it was asked and what a correct
/// run gives.
fn check_line(
    line: &Line,
    allocator: &str,
    plan: &Plan,
    want: &workloads::Checked,
) -> Result<(), String> {
    let what = format!(
        "alloc-workload-{allocator} {} {}",
        plan.workload, plan.threads
    );
    if line.allocator != allocator {
        return Err(format!(
            "{what} reports the allocator {:?}: it was built with the wrong features",
            line.allocator
        ));
    }
    if line.workload != plan.workload.name() || line.threads != plan.threads {
        return Err(format!(
            "{what} reports a run of {} at {} threads",
            line.workload, line.threads
        ));
    }
    let digest = child::digest_text(want.digest);
    if line.objects != want.objects || line.digest != digest {
        return Err(format!(
            "{what}: check value {} objects, digest {}; expected {} objects, digest {digest}",
            line.objects, line.digest, want.objects
        ));
    }
    if !(line.seconds.is_finite() && line.seconds >= 0.0) {
        return Err(format!("{what} reports {} seconds", line.seconds));
    }
    Ok(())
}

/// The progress bar, on stderr (hidden when stderr is not a terminal).
fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("alloc {bar:30.cyan/blue} {pos:>3}/{len:3} {wide_msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// The results of the runs.
struct Results {
    samples: Vec<Sample>,
    ktl_front_end: Option<String>,
}

/// Runs every program for every workload and thread count of `options`,
/// the repetitions interleaved (each round starts one allocator later).
fn measure(options: &Options, bar: &ProgressBar) -> Result<Results, String> {
    let mut samples = Vec::new();
    let mut ktl_front_end = None;
    for &workload in &options.workloads {
        for &threads in &options.threads {
            let plan = Plan::new(workload, threads, options.scale)?;
            let want = workloads::expected(&plan);
            for rep in 1..=options.reps {
                for i in 0..ALLOCATORS.len() {
                    let allocator = ALLOCATORS[(i + rep as usize - 1) % ALLOCATORS.len()];
                    bar.set_message(format!(
                        "{workload} {threads} threads, {allocator} (rep {rep}/{})",
                        options.reps
                    ));
                    let run = run_program(
                        &options.program(allocator),
                        workload,
                        threads,
                        options.scale,
                    )?;
                    check_line(&run.line, allocator, &plan, &want)?;
                    if allocator == report::OURS && ktl_front_end.is_none() {
                        ktl_front_end = run.line.front_end.clone();
                    }
                    samples.push(Sample {
                        workload: workload.name().to_owned(),
                        threads,
                        allocator: allocator.to_owned(),
                        rep,
                        seconds: run.line.seconds,
                        max_rss_kib: run.max_rss_kib,
                        objects: run.line.objects,
                        digest: run.line.digest,
                    });
                    bar.inc(1);
                }
            }
        }
    }
    Ok(Results {
        samples,
        ktl_front_end,
    })
}

/// Writes `text` to `path`.
fn write_file(path: &Path, what: &str, text: &str) -> Result<(), String> {
    std::fs::write(path, text)
        .map_err(|e| format!("cannot write the {what} to {}: {e}", path.display()))
}

/// The text report: the header, the table, the note on the ratios and the
/// targets.
fn text_report(header: &Header, summaries: &[Summary], targets: &[Target]) -> String {
    let mut out = header.text();
    out.push('\n');
    out.push_str(&report::text_table(summaries));
    out.push('\n');
    out.push_str(RATIO_NOTE);
    out.push_str("\n\n");
    out.push_str(&report::target_lines(targets));
    out
}

/// Runs the benchmark of `options`, writes the text report to `out` and
/// the files asked for. Fails, with a message, on bad options, a missing
/// program, a file that cannot be written, a failed run or a wrong check
/// value; a missed target is reported, not an error.
pub fn run(options: &Options, out: &mut dyn Write) -> Result<(), String> {
    if options.threads.is_empty() || options.workloads.is_empty() {
        return Err("nothing to run: no thread count or no workload".to_owned());
    }
    for &t in &options.threads {
        Plan::new(Workload::Xmalloc, t, options.scale)?;
    }
    if !(1..=MAX_REPS).contains(&options.reps) {
        return Err(format!(
            "--reps {} is not from 1 to {MAX_REPS}",
            options.reps
        ));
    }
    check_programs(options)?;
    for (path, what) in [
        (&options.json, "record"),
        (&options.svg, "chart"),
        (&options.markdown, "Markdown table"),
    ] {
        if let Some(path) = path {
            check_writable(path, what)?;
        }
    }
    let runs = options.workloads.len() * options.threads.len() * ALLOCATORS.len();
    let bar = progress_bar((runs as u64) * u64::from(options.reps));
    let results = measure(options, &bar);
    bar.finish_and_clear();
    let results = results?;

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let header = Header {
        machine: Machine::probe(),
        glibc: os::glibc_version(),
        date: report::date(now),
        commit: crate::COMMIT.to_owned(),
        settings: Settings {
            workloads: options
                .workloads
                .iter()
                .map(|w| w.name().to_owned())
                .collect(),
            threads: options.threads.clone(),
            reps: options.reps,
            scale: options.scale,
            quick: options.quick,
        },
        ktl_front_end: results.ktl_front_end,
    };
    let summaries = report::summarize(&results.samples);
    let targets = report::targets(&summaries);
    let text = text_report(&header, &summaries, &targets);
    let mut written = String::new();
    if let Some(path) = &options.json {
        let record = Record {
            schema: SCHEMA,
            header: &header,
            samples: &results.samples,
            summary: &summaries,
            targets: &targets,
        };
        let json = serde_json::to_string_pretty(&record)
            .map_err(|e| format!("cannot write the record: {e}"))?;
        write_file(path, "record", &(json + "\n"))?;
        written.push_str(&format!("wrote the record to {}\n", path.display()));
    }
    if let Some(path) = &options.markdown {
        write_file(
            path,
            "Markdown table",
            &report::markdown(&header, &summaries, &targets),
        )?;
        written.push_str(&format!("wrote the Markdown table to {}\n", path.display()));
    }
    if let Some(path) = &options.svg {
        let subtitle = format!("{}; {}", header.machine_text(), header.date);
        let svg = chart::chart(
            &summaries,
            &header.settings.workloads,
            &options.threads,
            &subtitle,
        )?;
        write_file(path, "chart", &svg)?;
        written.push_str(&format!("wrote the chart to {}\n", path.display()));
    }
    out.write_all(text.as_bytes())
        .and_then(|()| out.write_all(written.as_bytes()))
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write the report: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(list: &[&str]) -> Result<Option<Options>, String> {
        Options::parse(list.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn options_parse_with_defaults_and_quick() {
        let o = parse(&["--bins", "b"]).unwrap().unwrap();
        assert_eq!(o.threads, DEFAULT_THREADS);
        assert_eq!((o.reps, o.scale, o.workloads.len()), (5, 1.0, 5));
        let q = parse(&["--quick", "--bins=b", "--reps", "2"])
            .unwrap()
            .unwrap();
        assert_eq!(
            (q.threads.as_slice(), q.reps, q.scale),
            (&[1, 2][..], 2, 0.1)
        );
        let o = parse(&[
            "--bins",
            "b",
            "--threads",
            "4,1,4",
            "--workloads",
            "btree,larson",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(o.threads, [4, 1]);
        assert_eq!(o.workloads, [Workload::Btree, Workload::Larson]);
        assert_eq!(parse(&["--help"]), Ok(None));
        for (bad, says) in [
            (&["--threads", "1"][..], "--bins DIR is missing"),
            (&["--bins"], "--bins needs a value"),
            (&["--bins", "b", "--threads", "0"], "not from 1"),
            (&["--bins", "b", "--threads", "1,x"], "not a thread count"),
            (
                &["--bins", "b", "--workloads", "larsen"],
                "unknown workload",
            ),
            (&["--bins", "b", "--reps", "0"], "--reps"),
            (&["--bins", "b", "--scale", "0"], "above 0"),
            (&["--bins", "b", "extra"], "unexpected argument"),
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }

    #[test]
    fn missing_programs_and_bad_lines_are_errors() {
        let options = parse(&["--bins", "/nonexistent-alloc-bins"])
            .unwrap()
            .unwrap();
        let err = run(&options, &mut Vec::new()).unwrap_err();
        assert!(
            err.contains("alloc-workload-ktl") && err.contains("alloc-run"),
            "{err}"
        );

        let plan = Plan::new(Workload::Btree, 2, 0.001).unwrap();
        let want = workloads::expected(&plan);
        let mut line = Line {
            allocator: "ktl".to_owned(),
            workload: "btree".to_owned(),
            threads: 2,
            scale: 0.001,
            seconds: 0.1,
            objects: want.objects,
            digest: child::digest_text(want.digest),
            front_end: None,
        };
        assert_eq!(check_line(&line, "ktl", &plan, &want), Ok(()));
        let err = check_line(&line, "mimalloc", &plan, &want).unwrap_err();
        assert!(err.contains("wrong features"), "{err}");
        line.objects += 1;
        let err = check_line(&line, "ktl", &plan, &want).unwrap_err();
        assert!(err.contains("check value"), "{err}");
    }

    #[test]
    fn a_child_that_fails_is_reported_with_its_message() {
        // `sh -c` as the program: the workload name is its script.
        let sh = Path::new("/bin/sh");
        let err = match run_program(sh, Workload::Larson, 1, 1.0) {
            Err(e) => e,
            Ok(_) => panic!("sh ran `larson` as a script"),
        };
        assert!(err.contains("sh larson 1 failed (exit code "), "{err}");
        // What the child said on stderr follows.
        let said = err.split_once("): ").map(|(_, said)| said);
        assert!(said.is_some_and(|s| s.contains("larson")), "{err}");
    }
}
