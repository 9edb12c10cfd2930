//! The report as text: the table of the rows (median, minimum and maximum
//! time per call, spread, ratio to the row's baseline), the notes and
//! exactness checks under it, the promised comparisons and the thread
//! scaling; and the same table as Markdown, from a saved record.

use crate::checks::Bound;
use crate::harness::{Outcome, Shape, UNROLL};
use crate::json::{Machine, Record, Report, RowReport, SCHEMA, ScalingPoint};
use crate::workloads::{BASELINES, peers, percpu, random};
use std::fmt::Write as _;
use std::time::Duration;

/// A time in nanoseconds, for the table.
fn ns(v: f64) -> String {
    if v < 100.0 {
        format!("{v:.2}")
    } else if v < 10_000.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// A ratio, for the table.
fn ratio(r: f64) -> String {
    if r < 10.0 {
        format!("{r:.2}x")
    } else if r < 100.0 {
        format!("{r:.1}x")
    } else {
        format!("{r:.0}x")
    }
}

/// One line of the table: a row and what its cells show.
struct Line<'a> {
    name: &'a str,
    group: &'a str,
    /// Median, minimum and maximum (ns) and spread (%), or why the row did
    /// not run.
    numbers: Result<[f64; 4], &'a str>,
    /// The median over its baseline's, when both ran.
    ratio: Option<f64>,
}

/// The table's lines for `rows`, in order: each row's ratio is taken
/// against the row its `baseline` names, when that ran (with a median above
/// zero).
fn lines(rows: &[RowReport]) -> Vec<Line<'_>> {
    let median = |name: &str| {
        rows.iter()
            .find(|r| r.name == name)
            .and_then(|r| r.median_ns)
            .filter(|&m| m > 0.0)
    };
    rows.iter()
        .map(|r| {
            let numbers = match (r.median_ns, r.min_ns, r.max_ns, r.spread_pct) {
                (Some(median), Some(min), Some(max), Some(spread)) => {
                    Ok([median, min, max, spread])
                }
                _ => Err(r.reason.as_deref().unwrap_or("not measured")),
            };
            let ratio = match (&numbers, r.baseline.as_deref().and_then(median)) {
                (Ok([m, ..]), Some(b)) => Some(m / b),
                _ => None,
            };
            Line {
                name: &r.name,
                group: &r.group,
                numbers,
                ratio,
            }
        })
        .collect()
}

/// Whether the table shows its groups: when it has rows of more than one.
fn shows_groups(lines: &[Line<'_>]) -> bool {
    let mut groups: Vec<&str> = lines.iter().map(|l| l.group).collect();
    groups.dedup();
    groups.len() > 1
}

/// The table of the text report.
fn text_table(lines: &[Line<'_>]) -> String {
    let mut out = String::new();
    let width = lines
        .iter()
        .map(|l| l.name.len())
        .chain([3])
        .max()
        .unwrap_or(3);
    let _ = writeln!(
        out,
        "{:<width$}  {:>10}  {:>10}  {:>10}  {:>9}  {:>8}",
        "row", "median ns", "min ns", "max ns", "spread %", "ratio"
    );
    let show_groups = shows_groups(lines);
    let mut last_group: Option<&str> = None;
    for l in lines {
        if show_groups && last_group != Some(l.group) {
            let _ = writeln!(out, "[{}]", l.group);
            last_group = Some(l.group);
        }
        match l.numbers {
            Ok([median, min, max, spread]) => {
                let r = l.ratio.map_or_else(|| "-".to_owned(), ratio);
                let _ = writeln!(
                    out,
                    "{:<width$}  {:>10}  {:>10}  {:>10}  {:>9.1}  {:>8}",
                    l.name,
                    ns(median),
                    ns(min),
                    ns(max),
                    spread,
                    r
                );
            }
            Err(reason) => {
                let _ = writeln!(out, "{:<width$}  {:>10}  ({reason})", l.name, "n/a");
            }
        }
    }
    out
}

/// Text for a Markdown table cell: `|` escaped.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// The table as Markdown: the rows' names as code (they hold `<` and `>`),
/// each group's name in bold on a line of its own when there are several.
fn markdown_table(lines: &[Line<'_>]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| row | median ns | min ns | max ns | spread % | ratio |"
    );
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: |");
    let show_groups = shows_groups(lines);
    let mut last_group: Option<&str> = None;
    for l in lines {
        if show_groups && last_group != Some(l.group) {
            let _ = writeln!(out, "| **[{}]** | | | | | |", cell(l.group));
            last_group = Some(l.group);
        }
        let name = cell(l.name);
        match l.numbers {
            Ok([median, min, max, spread]) => {
                let r = l.ratio.map_or_else(|| "-".to_owned(), ratio);
                let _ = writeln!(
                    out,
                    "| `{name}` | {} | {} | {} | {spread:.1} | {r} |",
                    ns(median),
                    ns(min),
                    ns(max),
                );
            }
            Err(reason) => {
                let _ = writeln!(out, "| `{name}` | n/a ({}) | | | | |", cell(reason));
            }
        }
    }
    out
}

/// A CPU count, or `?`.
fn count(n: Option<usize>) -> String {
    n.map_or_else(|| "?".to_owned(), |n| n.to_string())
}

/// A saved `ktl bench --json` record (its text) as the Markdown table the
/// documentation shows: the machine and the commit as a list, a blank line,
/// then the table of the text report.
pub(crate) fn render_record(json: &str) -> Result<String, String> {
    let record: Record =
        serde_json::from_str(json).map_err(|e| format!("not a ktl bench record: {e}"))?;
    if record.schema != SCHEMA {
        return Err(format!(
            "not a ktl bench record: the schema is {:?}, not {SCHEMA:?}",
            record.schema
        ));
    }
    let m = &record.machine;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "- machine: {} ({}), Linux {}, {} logical CPUs ({} usable)",
        cell(&m.cpu()),
        m.arch,
        cell(&m.kernel),
        count(m.logical_cpus),
        count(m.usable_cpus)
    );
    let _ = writeln!(
        out,
        "- commit: `{}`",
        record.commit.as_deref().unwrap_or("unknown")
    );
    let _ = writeln!(out);
    out.push_str(&markdown_table(&lines(&record.rows)));
    Ok(out)
}

/// The text report: machine, owner, table, the notes under it (`notes`
/// after the report's own) and checks.
#[allow(clippy::too_many_arguments)] // what the report shows, each from its own source
pub(crate) fn render_text(
    report: &Report,
    outcomes: &[Outcome],
    owner: &str,
    shape: Shape,
    samples: u32,
    target: Duration,
    left_out: usize,
    notes: &[String],
) -> String {
    let mut out = String::new();
    let m: &Machine = &report.machine;
    let sources = ktl::cpu::sources();
    let _ = writeln!(
        out,
        "ktl bench: {samples} samples of ~{} ms per row, loop shape {}",
        target.as_millis(),
        match shape {
            Shape::Call => "`call` (one call per iteration, results summed)".to_string(),
            Shape::Throughput => format!("`throughput` ({UNROLL} unrolled calls per iteration)"),
        }
    );
    let _ = writeln!(out, "machine: {} ({})", m.cpu(), m.arch);
    let _ = writeln!(
        out,
        "         Linux {}, {} logical CPUs ({} usable)",
        m.kernel,
        count(m.logical_cpus),
        count(m.usable_cpus)
    );
    let _ = writeln!(out, "owner:   {owner}");
    let _ = writeln!(
        out,
        "reads:   cpu_id: {}, node_id: {}, mm_cid: {}",
        sources.cpu_id, sources.node_id, sources.mm_cid
    );
    let _ = writeln!(out);

    out.push_str(&text_table(&lines(&report.rows)));
    // Each group's baseline row, when it ran.
    let baselines: Vec<(&str, &str)> = BASELINES
        .iter()
        .copied()
        .filter(|&(group, name)| {
            outcomes
                .iter()
                .find(|o| o.group == group && o.name == name)
                .and_then(Outcome::median)
                .is_some_and(|b| b > 0.0)
        })
        .collect();
    let mut bases: Vec<String> = baselines
        .iter()
        .map(|(group, name)| format!("{name} in [{group}]"))
        .collect();
    // The groups whose rows each name their own baseline, and what it is.
    let own_baselines: Vec<(&str, &str)> = [
        (
            percpu::GROUP,
            "ktl's structure with the same operation and threads",
        ),
        (random::GROUP, random::BASELINE_TEXT),
        (
            peers::GROUP,
            "librseq's param_test_benchmark of the same scenario",
        ),
    ]
    .into_iter()
    .filter(|&(g, _)| {
        outcomes
            .iter()
            .any(|o| o.group == g && o.baseline.is_some())
    })
    .collect();
    for (group, text) in &own_baselines {
        bases.push(format!("{text} in [{group}]"));
    }
    match (baselines.as_slice(), own_baselines.as_slice()) {
        ([], []) => {}
        ([(_, name)], []) => {
            let _ = writeln!(out, "ratio: median / median of {name}");
        }
        ([], [(_, text)]) => {
            let _ = writeln!(out, "ratio: median / median of {text}");
        }
        _ => {
            let _ = writeln!(
                out,
                "ratio: median / median of the group's baseline: {}",
                bases.join(", ")
            );
        }
    }
    if let Some(note) = random::note(outcomes) {
        let _ = writeln!(out, "{note}");
    }
    for note in notes {
        let _ = writeln!(out, "{note}");
    }
    if outcomes.iter().any(|o| o.threads > 1 && o.result.is_ok()) {
        let _ = writeln!(
            out,
            "rows of N threads: the wall time of a sample / the operations of one thread \
             (all N threads run the same count)"
        );
    }
    let verified: Vec<&Result<String, String>> = outcomes
        .iter()
        .filter_map(|o| o.verified.as_ref())
        .collect();
    if !verified.is_empty() {
        let exact = verified.iter().filter(|v| v.is_ok()).count();
        let checked = |group: &str| {
            outcomes
                .iter()
                .any(|o| o.group == group && o.verified.is_some())
        };
        let (objects, fills, peer_runs) = (
            checked(percpu::GROUP),
            checked(random::GROUP),
            checked(peers::GROUP),
        );
        if objects || fills || peer_runs {
            let mut what = Vec::new();
            if objects
                || outcomes
                    .iter()
                    .any(|o| o.group == "rseq" && o.verified.is_some())
            {
                what.push("counters sum to the operations performed");
            }
            if objects {
                what.push(
                    "pools and stacks hold every object made, whose uses sum to the operations \
                     performed",
                );
            }
            if fills {
                what.push("every random fill succeeded, ktl's through the path its row names");
            }
            if peer_runs {
                what.push(
                    "every peers run of ktl left its data exact (counters sum to threads x reps; \
                     lists and buffers hold every item once), every run of librseq exited 0",
                );
            }
            let _ = writeln!(
                out,
                "exactness: {exact} of {} checked rows are exact ({})",
                verified.len(),
                what.join("; ")
            );
        } else {
            let _ = writeln!(
                out,
                "exactness: the counters of {exact} of {} counting rows sum to the operations performed",
                verified.len()
            );
        }
        for failure in verified.iter().filter_map(|v| v.as_ref().err()) {
            let _ = writeln!(out, "  MISMATCH {failure}");
        }
    }
    if left_out > 0 {
        let _ = writeln!(
            out,
            "quick run: {left_out} selected rows left out (of the [{}] group it runs the 2-thread \
             counter and pool rows and the 1-thread rows a promise compares, of the [{}] group the \
             16-byte ktl, limit and syscall rows, none of \
             the [{}] group); `ktl bench` runs them all",
            percpu::GROUP,
            random::GROUP,
            peers::GROUP
        );
    }

    let _ = writeln!(out);
    let _ = writeln!(out, "checks (medians of this run):");
    for c in &report.checks {
        let op = match c.bound {
            Bound::Max => "<=",
            Bound::Min => ">=",
            Bound::Exact => "=",
        };
        let verdict = match (c.ratio, c.pass, &c.detail) {
            (Some(_), Some(pass), Some(detail)) => {
                format!("{} ({detail})", if pass { "pass" } else { "FAIL" })
            }
            (Some(r), Some(pass), None) => format!(
                "{} (ratio {}, limit {op} {})",
                if pass { "pass" } else { "FAIL" },
                ratio(r),
                ratio(c.limit)
            ),
            _ => format!(
                "skipped ({})",
                c.reason.as_deref().unwrap_or("not computed")
            ),
        };
        let _ = writeln!(out, "  {}: {verdict}", c.name);
    }
    if !report.scaling.is_empty() {
        let _ = writeln!(out);
        out.push_str(&render_scaling(&report.scaling));
    }
    out
}

/// The thread-scaling measurement as a table: one line per implementation,
/// one column per thread count (medians, ns per operation per thread).
fn render_scaling(points: &[ScalingPoint]) -> String {
    let mut out = String::new();
    let mut threads: Vec<u32> = points.iter().map(|p| p.threads).collect();
    threads.sort_unstable();
    threads.dedup();
    let mut lines: Vec<(&str, &str)> = points
        .iter()
        .map(|p| (p.structure, p.implementation))
        .collect();
    lines.dedup();
    let width = lines
        .iter()
        .map(|(s, i)| s.len() + 2 + i.len())
        .chain([14])
        .max()
        .unwrap_or(14);
    let _ = writeln!(
        out,
        "thread scaling (median ns per operation per thread; wall time of a sample / the \
         operations of one thread):"
    );
    let _ = write!(out, "{:<width$}", "implementation");
    for t in &threads {
        let _ = write!(out, "  {:>9}", format!("{t} thr"));
    }
    let _ = writeln!(out);
    for (structure, implementation) in lines {
        let _ = write!(out, "{:<width$}", format!("{structure}: {implementation}"));
        for t in &threads {
            let cell = points
                .iter()
                .find(|p| {
                    p.structure == structure
                        && p.implementation == implementation
                        && p.threads == *t
                })
                .and_then(|p| p.median_ns)
                .map_or_else(|| "n/a".to_owned(), ns);
            let _ = write!(out, "  {cell:>9}");
        }
        let _ = writeln!(out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::RANDOM_CHECK;
    use crate::harness::outcome;
    use crate::json::Machine;
    use crate::workloads::cpu::{BASELINE, RAW_LOAD};
    use crate::workloads::percpu::{PERCPU_ADD_2, PERCPU_SHARED_ADD_2};

    fn text(outcomes: &[Outcome], left_out: usize) -> String {
        let report = Report::new(
            Machine::probe(),
            &ktl::layout().owner,
            Shape::Call,
            outcomes,
            Vec::new(),
        );
        render_text(
            &report,
            outcomes,
            "o",
            Shape::Call,
            1,
            Duration::from_millis(1),
            left_out,
            &[],
        )
    }

    fn line(text: &str, name: &str) -> String {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .to_owned()
    }

    #[test]
    fn percpu_ratios_compare_with_ktl_at_the_same_threads() {
        let row = |name: &str, median: f64, base: &str| Outcome {
            group: percpu::GROUP.to_owned(),
            threads: 2,
            baseline: Some(base.to_owned()),
            ..outcome(name, Some(median))
        };
        let outcomes = [
            row(PERCPU_ADD_2, 2.0, PERCPU_ADD_2),
            row(PERCPU_SHARED_ADD_2, 30.0, PERCPU_ADD_2),
        ];
        let text = text(&outcomes, 3);
        assert!(line(&text, PERCPU_ADD_2).ends_with("1.00x"), "{text}");
        assert!(
            line(&text, PERCPU_SHARED_ADD_2).ends_with("15.0x"),
            "{text}"
        );
        assert!(
            text.contains("ratio: median / median of ktl's structure"),
            "{text}"
        );
        assert!(text.contains("wall time of a sample / the operations of one thread"));
        assert!(text.contains("quick run: 3 selected rows left out"));
    }

    #[test]
    fn random_ratios_compare_with_ktl_of_the_same_size() {
        let row = |name: &str, median: f64, base: &str| Outcome {
            group: random::GROUP.to_owned(),
            baseline: Some(base.to_owned()),
            verified: Some(Ok("checked".to_owned())),
            ..outcome(name, Some(median))
        };
        let ktl_256 = "256 B: ktl::random::fill (vDSO)";
        let outcomes = [
            row(random::KTL_16, 20.0, random::KTL_16),
            row(random::LIMIT_16, 19.0, random::KTL_16),
            row(random::SYSCALL_16, 300.0, random::KTL_16),
            row(ktl_256, 100.0, ktl_256),
            row("256 B: getrandom(2) syscall", 450.0, ktl_256),
        ];
        let text = text(&outcomes, 0);
        assert!(line(&text, random::KTL_16).ends_with("1.00x"), "{text}");
        assert!(line(&text, random::LIMIT_16).ends_with("0.95x"), "{text}");
        assert!(line(&text, random::SYSCALL_16).ends_with("15.0x"), "{text}");
        assert!(
            line(&text, "256 B: getrandom(2)").ends_with("4.50x"),
            "{text}"
        );
        assert!(
            text.contains("ratio: median / median of ktl::random::fill of the same size"),
            "{text}"
        );
        assert!(
            text.contains("random: ktl::random::fill uses the "),
            "{text}"
        );
        assert!(
            text.contains("5 of 5 checked rows are exact (every random fill succeeded"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "  {}: pass (ratio 1.05x, limit <= 1.10x)",
                RANDOM_CHECK.name
            )),
            "{text}"
        );
    }

    #[test]
    fn a_record_renders_as_the_table_of_the_text_report() {
        let mut outcomes = vec![
            outcome(BASELINE, Some(2.0)),
            outcome(RAW_LOAD, None),
            outcome("ktl::mm_cid()", Some(1.0)),
        ];
        outcomes.push(Outcome {
            group: percpu::GROUP.to_owned(),
            threads: 2,
            baseline: Some(PERCPU_ADD_2.to_owned()),
            ..outcome(PERCPU_ADD_2, Some(300.0))
        });
        let report = Report::new(
            Machine::probe(),
            &ktl::layout().owner,
            Shape::Call,
            &outcomes,
            Vec::new(),
        );
        let json = serde_json::to_string_pretty(&report).unwrap();
        let md = render_record(&json).unwrap();
        let mut md_lines = md.lines();
        let machine = md_lines.next().unwrap();
        assert!(machine.starts_with("- machine: "), "{md}");
        assert!(machine.contains(" logical CPUs ("), "{md}");
        assert_eq!(
            md_lines.next(),
            Some(format!("- commit: `{}`", crate::json::COMMIT).as_str())
        );
        assert_eq!(md_lines.next(), Some(""));
        let table: Vec<&str> = md_lines.collect();
        assert_eq!(
            table,
            [
                "| row | median ns | min ns | max ns | spread % | ratio |",
                "| --- | ---: | ---: | ---: | ---: | ---: |",
                "| **[cpu]** | | | | | |",
                "| `ktl::cpu_id()` | 2.00 | 2.00 | 2.00 | 0.0 | 1.00x |",
                "| `raw %fs load (limit)` | n/a (absent) | | | | |",
                "| `ktl::mm_cid()` | 1.00 | 1.00 | 1.00 | 0.0 | 0.50x |",
                "| **[percpu]** | | | | | |",
                "| `counter: PerCpuCounter::add (2 threads)` | 300.0 | 300.0 | 300.0 | 0.0 | 1.00x |",
            ]
        );
        // The text report shows the same numbers and ratios.
        let text = text(&outcomes, 0);
        assert!(line(&text, "ktl::mm_cid()").ends_with("0.50x"), "{text}");

        assert!(
            render_record("{}")
                .unwrap_err()
                .contains("not a ktl bench record")
        );
        let other = json.replace("ktl-bench/1", "ktl-info/1");
        assert!(render_record(&other).unwrap_err().contains("the schema is"));
    }
}
