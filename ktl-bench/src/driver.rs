//! One run of the benchmark: the options, the selection of the rows, the
//! measurement, the report (text or JSON), the thread scaling and the
//! charts of `--plot`.

use crate::harness::{Row, Shape, run_rows};
use crate::json::{Machine, Report};
use crate::plot;
use crate::report::render_text;
use crate::scaling::run_scaling;
use crate::workloads::peers::{self, Librseq};
use crate::workloads::{self, GROUPS, owner_text, percpu, selects};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// Defaults of a full run.
const DEFAULT_SAMPLES: u32 = 15;
const DEFAULT_SAMPLE_MS: u64 = 20;

/// Defaults of the quick run (`--quick`, and `ktl` with no subcommand).
const QUICK_SAMPLES: u32 = 7;
const QUICK_SAMPLE_MS: u64 = 5;

/// Upper bounds on the options, to catch typos that would run for hours.
const MAX_SAMPLES: u32 = 10_000;
const MAX_SAMPLE_MS: u64 = 60_000;

/// The options of a run (those of `ktl bench`).
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Timed samples per row (default: 15, or 7 with `quick`).
    pub samples: Option<u32>,
    /// Target duration of one sample, in milliseconds (default: 20, or 5
    /// with `quick`).
    pub sample_ms: Option<u64>,
    /// The short run: fewer, shorter samples, of the `percpu` group only
    /// the 2-thread rows but the stacks' and the 1-thread rows a promise
    /// compares, of the `random` group only the 16-byte ktl, limit and
    /// syscall rows, and no row of the `peers` group.
    pub quick: bool,
    /// Only the rows of this group, or else the rows whose name or group
    /// contains this text, ignoring case (see [`crate::workloads::selects`]).
    pub filter: Option<String>,
    /// The report as JSON (schema `ktl-bench/1`), without a progress bar.
    pub json: bool,
    /// The loop shape.
    pub shape: Shape,
    /// Draw the charts: the rows as bars into this file, and the thread
    /// scaling (measured after the rows) into the same name with `-scaling`
    /// added.
    pub plot: Option<PathBuf>,
    /// A built librseq tree, for the `peers` group (its
    /// `tests/param_test_benchmark`); `None`: the one the environment
    /// variable `KTL_LIBRSEQ` names, if any. A tree given here is checked
    /// before anything is measured, one from the environment only when the
    /// run includes the `peers` group; without either, that group's rows are
    /// "n/a" (see [`crate::workloads::peers`]).
    pub librseq: Option<PathBuf>,
}

impl Options {
    /// The short run that `ktl` with no subcommand does after the report.
    pub fn quick() -> Options {
        Options {
            quick: true,
            ..Options::default()
        }
    }

    /// The effective sample count and sample duration, checked.
    fn settings(&self) -> Result<(u32, Duration), String> {
        let (default_samples, default_ms) = if self.quick {
            (QUICK_SAMPLES, QUICK_SAMPLE_MS)
        } else {
            (DEFAULT_SAMPLES, DEFAULT_SAMPLE_MS)
        };
        let samples = self.samples.unwrap_or(default_samples);
        let ms = self.sample_ms.unwrap_or(default_ms);
        if !(1..=MAX_SAMPLES).contains(&samples) {
            return Err(format!(
                "--samples must be between 1 and {MAX_SAMPLES} (got {samples})"
            ));
        }
        if !(1..=MAX_SAMPLE_MS).contains(&ms) {
            return Err(format!(
                "--sample-ms must be between 1 and {MAX_SAMPLE_MS} (got {ms})"
            ));
        }
        Ok((samples, Duration::from_millis(ms)))
    }
}

/// Runs the benchmark as `ktl bench` does: the report to stdout, the
/// charts' messages to stderr. See [`run_to`].
pub fn run(options: &Options) -> Result<(), String> {
    run_to(options, &mut std::io::stdout(), &mut std::io::stderr())
}

/// Runs the rows that match the filter, then writes the table (or JSON) to
/// `out`; with `plot`, measures the thread scaling too, writes the charts
/// and says so on `log`. Failed comparisons are reported, not returned as
/// errors; a row whose check fails (counters that do not sum to the
/// operations, a structure that lost objects, a run of librseq that
/// failed) is an error, returned after the report, and so is a chart that
/// cannot be written or a librseq tree that is not built (both checked
/// before anything is measured). The `peers` group's librseq tree comes from
/// `options.librseq`, or else from the environment variable `KTL_LIBRSEQ`.
pub fn run_to(options: &Options, out: &mut dyn Write, log: &mut dyn Write) -> Result<(), String> {
    run_in(options, std::env::var_os(peers::ENV).as_deref(), out, log)
}

/// [`run_to`], with `env` as the value of `KTL_LIBRSEQ`.
fn run_in(
    options: &Options,
    env: Option<&std::ffi::OsStr>,
    out: &mut dyn Write,
    log: &mut dyn Write,
) -> Result<(), String> {
    let (samples, target) = options.settings()?;
    // Before anything is measured: a chart that cannot be written fails now,
    // not after the run.
    let charts = options.plot.as_deref().map(plot::Charts::new).transpose()?;
    let filter = options.filter.as_deref();
    let librseq = librseq(options, env)?;
    let mut all = workloads::rows();
    all.extend(peers::rows(librseq.as_ref()));
    let names: Vec<String> = all.iter().map(|r| r.name.clone()).collect();
    let selected: Vec<Row> = all.into_iter().filter(|r| r.matches(filter)).collect();
    if selected.is_empty() {
        return Err(format!(
            "no row matches --filter {:?}; the groups are {}, and the rows are: {}",
            filter.unwrap_or_default(),
            GROUPS.join(", "),
            names.join(", ")
        ));
    }
    let (selected, left_out): (Vec<Row>, Vec<Row>) = if options.quick {
        selected.into_iter().partition(|r| r.quick)
    } else {
        (selected, Vec::new())
    };
    if selected.is_empty() {
        return Err(format!(
            "no row of the quick run matches --filter {:?}; without --quick, {} rows do",
            filter.unwrap_or_default(),
            left_out.len()
        ));
    }
    let left_out = left_out.len();

    let owner = ktl::layout().owner;
    let machine = Machine::probe();
    let outcomes = run_rows(
        selected,
        options.shape,
        samples,
        target,
        options.json,
        "calibrating, then interleaved samples of every row",
    );
    let mut failures: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.verified.as_ref()?.as_ref().err().cloned())
        .collect();
    let scaling = match charts {
        Some(_) => {
            let (points, scaling_failures) =
                run_scaling(filter, options.shape, samples, target, options.json);
            failures.extend(scaling_failures);
            points
        }
        None => Vec::new(),
    };
    let report = Report::new(machine, &owner, options.shape, &outcomes, scaling);
    let notes: Vec<String> = peers::note(librseq.as_ref(), &outcomes)
        .into_iter()
        .collect();

    let text = if options.json {
        let mut text = serde_json::to_string_pretty(&report)
            .map_err(|e| format!("cannot serialize the results: {e}"))?;
        text.push('\n');
        text
    } else {
        render_text(
            &report,
            &outcomes,
            &owner_text(&owner),
            options.shape,
            samples,
            target,
            left_out,
            &notes,
        )
    };
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write the results: {e}"))?;
    let written = match &charts {
        Some(charts) => draw_charts(charts, &report, &outcomes, samples, target, log),
        None => Ok(()),
    };
    if !failures.is_empty() {
        return Err(format!(
            "counters, objects or runs do not match the operations performed: {}",
            failures.join("; ")
        ));
    }
    written
}

/// The librseq tree of the `peers` group: `options.librseq`, checked
/// whatever the run (it was given on purpose), or else `env` (the value of
/// `KTL_LIBRSEQ`), checked only when the run includes the group (so that a
/// stale variable does not stop a run without it); `None` when neither
/// names one, or when only `env` does and the run leaves the group out.
fn librseq(options: &Options, env: Option<&std::ffi::OsStr>) -> Result<Option<Librseq>, String> {
    let filter = options.filter.as_deref();
    let included =
        !options.quick && peers::row_names().any(|name| selects(filter, name, peers::GROUP));
    match (&options.librseq, included) {
        (Some(dir), _) => Librseq::locate(Some(dir), None),
        (None, true) => Librseq::locate(None, env),
        (None, false) => Ok(None),
    }
}

/// Draws the charts of `--plot`: the rows of the run as bars, and the
/// thread scaling (when it was measured), then writes them and says so on
/// `log`.
fn draw_charts(
    charts: &plot::Charts,
    report: &Report,
    outcomes: &[crate::harness::Outcome],
    samples: u32,
    target: Duration,
    log: &mut dyn Write,
) -> Result<(), String> {
    let m = &report.machine;
    let cpus = m
        .usable_cpus
        .map_or_else(|| "?".to_owned(), |n| n.to_string());
    let machine = format!(
        "{}, Linux {}, {cpus} usable CPUs; {samples} samples of ~{} ms, loop shape {}",
        m.cpu(),
        m.kernel,
        target.as_millis(),
        match report.shape {
            Shape::Call => "call",
            Shape::Throughput => "throughput",
        }
    );
    let bars: Vec<plot::Bar> = outcomes
        .iter()
        .filter_map(|o| {
            let s = o.result.as_ref().ok()?;
            Some(plot::Bar {
                label: o.name.clone(),
                group: o.group.clone(),
                block: o.baseline.clone().unwrap_or_else(|| o.group.clone()),
                median_ns: s.median_ns,
                min_ns: s.min_ns,
                max_ns: s.max_ns,
                ours: o.ours,
            })
        })
        .collect();
    let mut series: Vec<plot::Series> = Vec::new();
    for p in &report.scaling {
        let Some(median) = p.median_ns else { continue };
        let name = p.implementation.to_owned();
        match series
            .iter_mut()
            .find(|s| s.panel == p.structure && s.name == name)
        {
            Some(s) => s.points.push((p.threads, median)),
            None => series.push(plot::Series {
                panel: p.structure.to_owned(),
                name,
                ours: p.ours,
                points: vec![(p.threads, median)],
            }),
        }
    }
    let panels: Vec<(String, String)> = percpu::SCALED
        .iter()
        .map(|k| (k.name().to_owned(), k.operation().to_owned()))
        .collect();
    let written = charts.write(&bars, &series, &panels, m.usable_cpus, &machine)?;
    for (what, path) in written {
        let _ = writeln!(log, "ktl bench: wrote the {what} to {}", path.display());
    }
    if series.is_empty() {
        let _ = writeln!(
            log,
            "ktl bench: no thread-scaling chart: the filter selects no counter or pool of the {} group",
            percpu::GROUP
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `options`, returning the error and what was written.
    fn run_quietly(options: &Options) -> (Result<(), String>, Vec<u8>) {
        let (mut out, mut log) = (Vec::new(), Vec::new());
        let r = run_to(options, &mut out, &mut log);
        (r, out)
    }

    #[test]
    fn bad_settings_are_errors() {
        let zero_samples = Options {
            samples: Some(0),
            ..Options::default()
        };
        assert!(zero_samples.settings().unwrap_err().contains("--samples"));
        let zero_ms = Options {
            sample_ms: Some(0),
            ..Options::default()
        };
        assert!(zero_ms.settings().unwrap_err().contains("--sample-ms"));
        assert_eq!(
            Options::quick().settings(),
            Ok((QUICK_SAMPLES, Duration::from_millis(QUICK_SAMPLE_MS)))
        );
        let (r, out) = run_quietly(&zero_samples);
        assert!(r.is_err() && out.is_empty());
    }

    #[test]
    fn unknown_filter_is_an_error() {
        let options = Options {
            filter: Some("no such row".to_owned()),
            ..Options::quick()
        };
        let (r, out) = run_quietly(&options);
        assert!(r.unwrap_err().contains("no row matches"));
        assert!(out.is_empty());
    }

    #[test]
    fn a_librseq_tree_is_checked_before_anything_runs() {
        let missing = std::ffi::OsStr::new("/no/such/librseq");
        let options = Options {
            librseq: Some(PathBuf::from(missing)),
            filter: Some("cpu_id".to_owned()),
            ..Options::quick()
        };
        let (mut out, mut log) = (Vec::new(), Vec::new());
        let err = run_in(&options, None, &mut out, &mut log).unwrap_err();
        assert_eq!(
            err,
            "--librseq /no/such/librseq: no such directory (give a built librseq tree)"
        );
        assert!(out.is_empty());
        // The environment's tree only when the run includes the group.
        let bad_env = Some(missing);
        assert_eq!(librseq(&Options::quick(), bad_env), Ok(None));
        let cpu = Options {
            filter: Some("cpu".to_owned()),
            ..Options::default()
        };
        assert_eq!(librseq(&cpu, bad_env), Ok(None));
        for filter in [None, Some("peers"), Some("list:"), Some("librseq")] {
            let options = Options {
                filter: filter.map(str::to_owned),
                ..Options::default()
            };
            let err = librseq(&options, bad_env).unwrap_err();
            assert!(err.starts_with("KTL_LIBRSEQ=/no/such/librseq: "), "{err}");
            assert_eq!(librseq(&options, None), Ok(None));
        }
    }

    #[test]
    fn without_librseq_the_peers_rows_are_na_and_nothing_fails() {
        let options = Options {
            filter: Some("peers".to_owned()),
            samples: Some(1),
            sample_ms: Some(1),
            ..Options::default()
        };
        let (mut out, mut log) = (Vec::new(), Vec::new());
        run_in(&options, None, &mut out, &mut log).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches(peers::NOT_GIVEN).count(), 14 + 5, "{text}");
        assert!(text.contains(&format!(
            "  {}: skipped (list: ktl::rseq (2 threads) is n/a: librseq not given",
            peers::Scenario::List.check_name()
        )));
        let json = Options {
            json: true,
            ..options
        };
        let mut out = Vec::new();
        run_in(&json, None, &mut out, &mut log).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let rows = v["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 14);
        for row in rows {
            assert_eq!(row["group"], peers::GROUP);
            assert_eq!(
                (row["available"].as_bool(), row["threads"].as_u64()),
                (Some(false), Some(2))
            );
            assert_eq!(row["reason"], peers::NOT_GIVEN);
        }
        assert_eq!(
            rows[0]["baseline"],
            peers::Scenario::Increment.librseq_row()
        );
        let checks = v["checks"].as_array().unwrap();
        assert_eq!(checks.len(), 24 + 5);
        assert!(
            checks[24..]
                .iter()
                .all(|c| c["pass"].is_null() && c["reason"].is_string())
        );
        // The quick run leaves the group out.
        let quick = Options {
            filter: Some("peers".to_owned()),
            ..Options::quick()
        };
        let err = run_in(&quick, None, &mut Vec::new(), &mut log).unwrap_err();
        assert!(err.contains("no row of the quick run"), "{err}");
    }

    #[test]
    fn a_filter_outside_the_quick_run_is_an_error() {
        let options = Options {
            filter: Some("segqueue push+pop".to_owned()),
            ..Options::quick()
        };
        let err = run_quietly(&options).0.unwrap_err();
        assert!(err.contains("no row of the quick run"), "{err}");
    }
}
