//! The results of the allocator benchmark as data and as text: the samples,
//! the summary per workload, thread count and allocator, the ratios to
//! ktl, the targets, the text and Markdown tables and the JSON record.

use crate::harness::Stats;
use crate::json::Machine;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// The JSON schema of the record `--json` writes.
pub(crate) const SCHEMA: &str = "ktl-bench-alloc/1";

/// The allocators, in the order of the reports: ktl's first.
pub const ALLOCATORS: [&str; 4] = ["ktl", "glibc", "mimalloc", "jemalloc"];

/// ktl's allocator: the one the ratios are taken against.
pub const OURS: &str = "ktl";

/// One run of one allocator's program.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The workload.
    pub workload: String,
    /// Its threads.
    pub threads: usize,
    /// The allocator.
    pub allocator: String,
    /// The repetition, from 1.
    pub rep: u32,
    /// The wall time of the workload, measured inside the program.
    pub seconds: f64,
    /// The program's peak resident set, in KiB (`ru_maxrss`).
    pub max_rss_kib: u64,
    /// Objects the program checked and freed.
    pub objects: u64,
    /// The digest of their ids.
    pub digest: String,
}

/// The summary of one allocator at one workload and thread count.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// The workload.
    pub workload: String,
    /// Its threads.
    pub threads: usize,
    /// The allocator.
    pub allocator: String,
    /// Runs summarized.
    pub runs: usize,
    /// Median, fastest and slowest wall time, in seconds.
    pub median_s: f64,
    /// The fastest run.
    pub min_s: f64,
    /// The slowest run.
    pub max_s: f64,
    /// The median peak resident set, in KiB.
    pub median_rss_kib: f64,
    /// This allocator's median time over ktl's (above 1: ktl is faster);
    /// null for ktl and when ktl's is missing.
    pub time_vs_ktl: Option<f64>,
    /// This allocator's median peak RSS over ktl's (above 1: ktl's is
    /// smaller); null for ktl and when ktl's is missing.
    pub rss_vs_ktl: Option<f64>,
}

/// The quantity a target compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Median wall time.
    Time,
    /// Median peak resident set.
    Rss,
}

/// How a target's ratio must stand to its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Bound {
    /// Above it.
    #[serde(rename = ">")]
    Above,
    /// At least it.
    #[serde(rename = ">=")]
    AtLeast,
    /// At most it.
    #[serde(rename = "<=")]
    AtMost,
}

impl Bound {
    fn text(self) -> &'static str {
        match self {
            Bound::Above => ">",
            Bound::AtLeast => ">=",
            Bound::AtMost => "<=",
        }
    }

    fn holds(self, ratio: f64, limit: f64) -> bool {
        match self {
            Bound::Above => ratio > limit,
            Bound::AtLeast => ratio >= limit,
            Bound::AtMost => ratio <= limit,
        }
    }
}

/// Where a goal applies.
#[derive(Debug, Clone, Copy)]
enum Scope {
    /// At 2 threads and above, on every workload.
    Threaded,
    /// At 2 threads and above, on these workloads.
    ThreadedOn(&'static [&'static str]),
    /// At 1 thread, on every workload.
    OneThread,
    /// Everywhere.
    All,
}

impl Scope {
    fn applies(self, workload: &str, threads: usize) -> bool {
        match self {
            Scope::Threaded => threads >= 2,
            Scope::ThreadedOn(list) => threads >= 2 && list.contains(&workload),
            Scope::OneThread => threads == 1,
            Scope::All => true,
        }
    }
}

/// A goal of ktl's allocator: `numerator / denominator` of `metric`,
/// bounded by `limit`, wherever `scope` applies.
struct Goal {
    name: &'static str,
    scope: Scope,
    metric: Metric,
    numerator: &'static str,
    denominator: &'static str,
    bound: Bound,
    limit: f64,
}

/// ktl's goals.
const GOALS: &[Goal] = &[
    Goal {
        name: "faster than glibc at 2+ threads",
        scope: Scope::Threaded,
        metric: Metric::Time,
        numerator: "glibc",
        denominator: OURS,
        bound: Bound::Above,
        limit: 1.0,
    },
    Goal {
        name: "faster than jemalloc at 2+ threads",
        scope: Scope::Threaded,
        metric: Metric::Time,
        numerator: "jemalloc",
        denominator: OURS,
        bound: Bound::Above,
        limit: 1.0,
    },
    Goal {
        name: "as fast as mimalloc at 2+ threads",
        scope: Scope::ThreadedOn(&["xmalloc", "larson"]),
        metric: Metric::Time,
        numerator: "mimalloc",
        denominator: OURS,
        bound: Bound::AtLeast,
        limit: 1.0,
    },
    Goal {
        name: "within 1.1x of mimalloc at 1 thread",
        scope: Scope::OneThread,
        metric: Metric::Time,
        numerator: OURS,
        denominator: "mimalloc",
        bound: Bound::AtMost,
        limit: 1.1,
    },
    Goal {
        name: "peak RSS within 1.3x of mimalloc",
        scope: Scope::All,
        metric: Metric::Rss,
        numerator: OURS,
        denominator: "mimalloc",
        bound: Bound::AtMost,
        limit: 1.3,
    },
];

/// A goal evaluated at one workload and thread count.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Target {
    /// The goal.
    pub goal: String,
    /// The workload.
    pub workload: String,
    /// Its threads.
    pub threads: usize,
    /// The ratio, as `numerator/denominator` and the metric (e.g.
    /// `glibc/ktl time`).
    pub what: String,
    /// Its value; null when one of the allocators is missing.
    pub ratio: Option<f64>,
    /// How the ratio must stand to the limit.
    pub bound: Bound,
    /// The limit.
    pub limit: f64,
    /// Whether it holds; null when the ratio is missing.
    pub pass: Option<bool>,
}

/// The median of `values` (not empty) and the extremes, through the
/// harness's statistics.
fn stats(values: Vec<f64>) -> Stats {
    Stats::from_samples(values, 0)
}

/// The summaries of `samples`: one per workload, thread count and
/// allocator, in the order the (workload, threads) pairs first appear and
/// the allocators in [`ALLOCATORS`] order (then any other in order of
/// appearance), with the ratios to ktl.
pub fn summarize(samples: &[Sample]) -> Vec<Summary> {
    let mut cells: Vec<(&str, usize)> = Vec::new();
    let mut allocators: Vec<&str> = Vec::new();
    for s in samples {
        if !cells.contains(&(s.workload.as_str(), s.threads)) {
            cells.push((&s.workload, s.threads));
        }
        if !allocators.contains(&s.allocator.as_str()) {
            allocators.push(&s.allocator);
        }
    }
    allocators.sort_by_key(|a| ALLOCATORS.iter().position(|b| b == a).unwrap_or(usize::MAX));
    let mut out = Vec::new();
    for (workload, threads) in cells {
        let start = out.len();
        for &allocator in &allocators {
            let mine: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.workload == workload && s.threads == threads)
                .filter(|s| s.allocator == allocator)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let time = stats(mine.iter().map(|s| s.seconds).collect());
            let rss = stats(mine.iter().map(|s| s.max_rss_kib as f64).collect());
            out.push(Summary {
                workload: workload.to_owned(),
                threads,
                allocator: allocator.to_owned(),
                runs: mine.len(),
                median_s: time.median_ns,
                min_s: time.min_ns,
                max_s: time.max_ns,
                median_rss_kib: rss.median_ns,
                time_vs_ktl: None,
                rss_vs_ktl: None,
            });
        }
        let ours = out[start..]
            .iter()
            .find(|s| s.allocator == OURS)
            .map(|s| (s.median_s, s.median_rss_kib));
        if let Some((time, rss)) = ours {
            for s in out[start..].iter_mut().filter(|s| s.allocator != OURS) {
                s.time_vs_ktl = (time > 0.0).then(|| s.median_s / time);
                s.rss_vs_ktl = (rss > 0.0).then(|| s.median_rss_kib / rss);
            }
        }
    }
    out
}

/// The summary of `allocator` at `workload` and `threads`.
fn find<'a>(
    summaries: &'a [Summary],
    workload: &str,
    threads: usize,
    allocator: &str,
) -> Option<&'a Summary> {
    summaries
        .iter()
        .find(|s| s.workload == workload && s.threads == threads && s.allocator == allocator)
}

/// ktl's goals, evaluated on every workload and thread count of
/// `summaries` where they apply.
pub fn targets(summaries: &[Summary]) -> Vec<Target> {
    let mut cells: Vec<(&str, usize)> = Vec::new();
    for s in summaries {
        if !cells.contains(&(s.workload.as_str(), s.threads)) {
            cells.push((&s.workload, s.threads));
        }
    }
    let mut out = Vec::new();
    for goal in GOALS {
        for &(workload, threads) in &cells {
            if !goal.scope.applies(workload, threads) {
                continue;
            }
            let value = |allocator: &str| {
                find(summaries, workload, threads, allocator).map(|s| match goal.metric {
                    Metric::Time => s.median_s,
                    Metric::Rss => s.median_rss_kib,
                })
            };
            let ratio = match (value(goal.numerator), value(goal.denominator)) {
                (Some(n), Some(d)) if d > 0.0 => Some(n / d),
                _ => None,
            };
            let metric = match goal.metric {
                Metric::Time => "time",
                Metric::Rss => "peak RSS",
            };
            out.push(Target {
                goal: goal.name.to_owned(),
                workload: workload.to_owned(),
                threads,
                what: format!("{}/{} {metric}", goal.numerator, goal.denominator),
                ratio,
                bound: goal.bound,
                limit: goal.limit,
                pass: ratio.map(|r| goal.bound.holds(r, goal.limit)),
            });
        }
    }
    out
}

/// A ratio, for the tables.
fn ratio(r: f64) -> String {
    if r < 10.0 {
        format!("{r:.2}x")
    } else {
        format!("{r:.1}x")
    }
}

/// A time in seconds, for the tables.
fn seconds(s: f64) -> String {
    format!("{s:.4}")
}

/// A size in KiB, as MiB for the tables.
fn mib(kib: f64) -> String {
    format!("{:.1}", kib / 1024.0)
}

/// "1 thread" or "N threads".
fn threads_text(n: usize) -> String {
    if n == 1 {
        "1 thread".to_owned()
    } else {
        format!("{n} threads")
    }
}

/// The cells of one line of the tables.
fn cells(s: &Summary) -> [String; 9] {
    let vs = |r: Option<f64>| r.map_or_else(|| "-".to_owned(), ratio);
    [
        s.workload.clone(),
        s.threads.to_string(),
        s.allocator.clone(),
        seconds(s.median_s),
        seconds(s.min_s),
        seconds(s.max_s),
        mib(s.median_rss_kib),
        vs(s.time_vs_ktl),
        vs(s.rss_vs_ktl),
    ]
}

/// The headers of the tables.
const HEADERS: [&str; 9] = [
    "workload",
    "threads",
    "allocator",
    "median s",
    "min s",
    "max s",
    "peak RSS MiB",
    "X/ktl time",
    "X/ktl RSS",
];

/// What the ratio columns mean.
pub(crate) const RATIO_NOTE: &str = "X/ktl time, X/ktl RSS: the allocator's median over ktl's \
    (above 1.00x: ktl is faster, or its peak RSS smaller); peak RSS: the program's ru_maxrss";

/// The summaries as a text table, a blank line between workloads.
pub fn text_table(summaries: &[Summary]) -> String {
    let rows: Vec<[String; 9]> = summaries.iter().map(cells).collect();
    let mut widths = HEADERS.map(str::len);
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, row: &[&str]| {
        let mut text = String::new();
        for (i, (c, w)) in row.iter().zip(widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            // Names to the left, numbers to the right.
            if i == 0 || i == 2 {
                let _ = write!(text, "{c:<w$}");
            } else {
                let _ = write!(text, "{c:>w$}");
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(&mut out, &HEADERS);
    let mut last: Option<(&str, usize)> = None;
    for (row, s) in rows.iter().zip(summaries) {
        let cell = (s.workload.as_str(), s.threads);
        if last.is_some_and(|l| l.0 != cell.0) {
            out.push('\n');
        }
        let mut shown: Vec<&str> = row.iter().map(String::as_str).collect();
        if last == Some(cell) {
            // The workload and threads once per group of allocators.
            shown[0] = "";
            shown[1] = "";
        }
        line(&mut out, &shown);
        last = Some(cell);
    }
    out
}

/// One target as a line: `PASS` or `MISS` (or `SKIP` without a ratio),
/// the goal, where, and the ratio against its limit.
fn target_line(t: &Target) -> String {
    let verdict = match t.pass {
        Some(true) => "PASS",
        Some(false) => "MISS",
        None => "SKIP",
    };
    let value = t.ratio.map_or_else(
        || "not measured".to_owned(),
        |r| format!("{} {}", t.what, ratio(r)),
    );
    format!(
        "{verdict}  ktl {}: {}, {}: {value} (target {} {})",
        t.goal,
        t.workload,
        threads_text(t.threads),
        t.bound.text(),
        ratio(t.limit)
    )
}

/// The targets as lines, and a count of those met.
pub fn target_lines(targets: &[Target]) -> String {
    let mut out = String::new();
    for t in targets {
        let _ = writeln!(out, "{}", target_line(t));
    }
    let met = targets.iter().filter(|t| t.pass == Some(true)).count();
    let missed = targets.iter().filter(|t| t.pass == Some(false)).count();
    let _ = writeln!(
        out,
        "targets: {met} of {} met, {missed} missed{}",
        targets.len(),
        if missed > 0 {
            " (a MISS is reported, not an error: timings on a busy machine are noisy)"
        } else {
            ""
        }
    );
    out
}

/// What the reports say about the run besides the numbers.
#[derive(Debug, Serialize)]
pub struct Header {
    /// The machine.
    pub(crate) machine: Machine,
    /// glibc's version, when the C library is glibc.
    pub glibc: Option<String>,
    /// The date of the run (UTC), `YYYY-MM-DD`.
    pub date: String,
    /// The commit the benchmark was built from.
    pub commit: String,
    /// The settings of the run.
    pub settings: Settings,
    /// ktl's front end, as its program reported it.
    pub ktl_front_end: Option<String>,
}

/// The settings of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// The workloads.
    pub workloads: Vec<String>,
    /// The thread counts.
    pub threads: Vec<usize>,
    /// Runs of each program per workload and thread count.
    pub reps: u32,
    /// The scale of the workloads.
    pub scale: f64,
    /// Whether it is the quick run.
    pub quick: bool,
}

impl Header {
    /// The machine in words: CPU, kernel, CPUs and glibc.
    pub(crate) fn machine_text(&self) -> String {
        let m = &self.machine;
        let count = |n: Option<usize>| n.map_or_else(|| "?".to_owned(), |n| n.to_string());
        format!(
            "{} ({}), Linux {}, {} logical CPUs ({} usable), glibc {}",
            m.cpu(),
            m.arch,
            m.kernel,
            count(m.logical_cpus),
            count(m.usable_cpus),
            self.glibc.as_deref().unwrap_or("unknown")
        )
    }

    /// The settings in words.
    fn settings_text(&self) -> String {
        let s = &self.settings;
        let threads: Vec<String> = s.threads.iter().map(usize::to_string).collect();
        format!(
            "workloads {}; threads {}; {} rep{} per allocator; scale {}{} (a fixed total of \
             work per run, divided among the threads)",
            s.workloads.join(", "),
            threads.join(","),
            s.reps,
            if s.reps == 1 { "" } else { "s" },
            s.scale,
            if s.quick { ", quick run" } else { "" }
        )
    }

    /// The lines above the text table.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "alloc-bench: ktl-alloc against glibc malloc, mimalloc and jemalloc"
        );
        let _ = writeln!(out, "machine:  {}", self.machine_text());
        let _ = writeln!(out, "date:     {}, commit {}", self.date, self.commit);
        let _ = writeln!(out, "run:      {}", self.settings_text());
        if let Some(front) = &self.ktl_front_end {
            let _ = writeln!(out, "ktl:      {front}");
        }
        out
    }
}

/// Text for a Markdown table cell: `|` escaped.
fn md(text: &str) -> String {
    text.replace('|', "\\|")
}

/// The report as Markdown: the header as a list, the table, the targets.
pub fn markdown(header: &Header, summaries: &[Summary], targets: &[Target]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "- machine: {}", md(&header.machine_text()));
    let _ = writeln!(out, "- date: {}, commit `{}`", header.date, header.commit);
    let _ = writeln!(out, "- run: {}", md(&header.settings_text()));
    if let Some(front) = &header.ktl_front_end {
        let _ = writeln!(out, "- ktl: {}", md(front));
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "| {} |", HEADERS.join(" | "));
    let _ = writeln!(
        out,
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for s in summaries {
        let mut row = cells(s);
        if s.allocator == OURS {
            row[2] = format!("**{}**", row[2]);
        }
        let row: Vec<String> = row.iter().map(|c| md(c)).collect();
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "{RATIO_NOTE}.");
    let _ = writeln!(out);
    for t in targets {
        let _ = writeln!(out, "- {}", md(&target_line(t)));
    }
    out
}

/// The JSON record of a run.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    /// Always `ktl-bench-alloc/1`.
    pub schema: &'static str,
    /// The machine, date, commit and settings.
    #[serde(flatten)]
    pub header: &'a Header,
    /// Every run.
    pub samples: &'a [Sample],
    /// The summaries.
    pub summary: &'a [Summary],
    /// The targets.
    pub targets: &'a [Target],
}

/// The date of `unix_secs` seconds after the epoch (UTC), `YYYY-MM-DD`.
pub fn date(unix_secs: u64) -> String {
    let mut days = unix_secs / 86_400;
    let mut year = 1970u64;
    let leap = |y: u64| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
    loop {
        let len = if leap(year) { 366 } else { 365 };
        if days < len {
            break;
        }
        days -= len;
        year += 1;
    }
    let mut month = 1;
    for len in [
        31,
        if leap(year) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ] {
        if days < len {
            break;
        }
        days -= len;
        month += 1;
    }
    format!("{year:04}-{month:02}-{:02}", days + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run of `allocator`: `seconds`, and `rss_mib` MiB of peak RSS.
    fn sample(
        workload: &str,
        threads: usize,
        allocator: &str,
        seconds: f64,
        rss_mib: u64,
    ) -> Sample {
        Sample {
            workload: workload.to_owned(),
            threads,
            allocator: allocator.to_owned(),
            rep: 1,
            seconds,
            max_rss_kib: rss_mib * 1024,
            objects: 10,
            digest: "0x0".to_owned(),
        }
    }

    /// Every allocator at `workload` and `threads`, three runs each around
    /// the times given (ktl, glibc, mimalloc, jemalloc) and RSS.
    fn cell(workload: &str, threads: usize, times: [f64; 4], rss: [u64; 4]) -> Vec<Sample> {
        let mut out = Vec::new();
        for rep in 0..3 {
            for ((a, t), r) in ALLOCATORS.iter().zip(times).zip(rss) {
                // Runs at 0.9x, 1x and 1.5x: the median is the middle one.
                let factor = [1.5, 1.0, 0.9][rep];
                out.push(sample(workload, threads, a, t * factor, r));
            }
        }
        out
    }

    #[test]
    fn ratios_and_targets_follow_the_medians() {
        let mut samples = cell("xmalloc", 1, [1.0, 2.0, 0.95, 1.5], [10, 12, 9, 11]);
        samples.extend(cell("xmalloc", 2, [1.0, 1.8, 1.2, 0.9], [10, 12, 7, 11]));
        samples.extend(cell("btree", 2, [1.0, 1.1, 0.8, 1.2], [10, 10, 10, 10]));
        let summaries = summarize(&samples);
        assert_eq!(summaries.len(), 12);
        let order: Vec<(&str, usize, &str)> = summaries
            .iter()
            .take(5)
            .map(|s| (s.workload.as_str(), s.threads, s.allocator.as_str()))
            .collect();
        assert_eq!(
            order,
            [
                ("xmalloc", 1, "ktl"),
                ("xmalloc", 1, "glibc"),
                ("xmalloc", 1, "mimalloc"),
                ("xmalloc", 1, "jemalloc"),
                ("xmalloc", 2, "ktl"),
            ]
        );
        let glibc = find(&summaries, "xmalloc", 2, "glibc").unwrap();
        assert_eq!((glibc.runs, glibc.median_s), (3, 1.8));
        assert!((glibc.min_s - 1.62).abs() < 1e-9 && (glibc.max_s - 2.7).abs() < 1e-9);
        assert!((glibc.time_vs_ktl.unwrap() - 1.8).abs() < 1e-9);
        assert!((glibc.rss_vs_ktl.unwrap() - 1.2).abs() < 1e-9);
        assert_eq!(
            find(&summaries, "xmalloc", 2, "ktl").unwrap().time_vs_ktl,
            None
        );

        let targets = targets(&summaries);
        let verdict = |goal: &str, workload: &str, threads: usize| {
            let t = targets
                .iter()
                .find(|t| t.goal.contains(goal) && t.workload == workload && t.threads == threads)
                .unwrap_or_else(|| panic!("no target {goal} {workload} {threads}"));
            t.pass
        };
        // 2 threads: glibc and mimalloc slower, jemalloc faster on xmalloc.
        assert_eq!(verdict("than glibc", "xmalloc", 2), Some(true));
        assert_eq!(verdict("than jemalloc", "xmalloc", 2), Some(false));
        assert_eq!(verdict("as fast as mimalloc", "xmalloc", 2), Some(true));
        // btree is not a mimalloc-speed workload; glibc is slower.
        assert!(
            !targets
                .iter()
                .any(|t| t.goal.contains("as fast") && t.workload == "btree")
        );
        assert_eq!(verdict("than glibc", "btree", 2), Some(true));
        // 1 thread: 1.0 / 0.95 = 1.05, within 1.1x.
        assert_eq!(verdict("within 1.1x", "xmalloc", 1), Some(true));
        assert!(
            !targets
                .iter()
                .any(|t| t.goal.contains("than glibc") && t.threads == 1)
        );
        // RSS: 10 / 9 passes, 10 / 7 = 1.43 misses.
        assert_eq!(verdict("peak RSS", "xmalloc", 1), Some(true));
        assert_eq!(verdict("peak RSS", "xmalloc", 2), Some(false));
        // 2 goals x 2 cells + 1 + 1 + 3 = 9.
        assert_eq!(targets.len(), 9);

        let lines = target_lines(&targets);
        assert!(
            lines.contains(
                "MISS  ktl faster than jemalloc at 2+ threads: xmalloc, 2 threads: \
                 jemalloc/ktl time 0.90x (target > 1.00x)"
            ),
            "{lines}"
        );
        assert!(lines.contains("PASS  ktl faster than glibc at 2+ threads: xmalloc, 2 threads"));
        assert!(lines.contains("targets: 7 of 9 met, 2 missed"), "{lines}");

        // Without mimalloc, its targets are skipped, not passed.
        let no_mimalloc: Vec<Sample> = samples
            .iter()
            .filter(|s| s.allocator != "mimalloc")
            .cloned()
            .collect();
        let skipped = targets_of(&no_mimalloc);
        assert!(
            skipped
                .iter()
                .any(|t| t.what.contains("mimalloc") && t.pass.is_none())
        );
        assert!(target_lines(&skipped).contains("SKIP  ktl within 1.1x of mimalloc"));
    }

    fn targets_of(samples: &[Sample]) -> Vec<Target> {
        targets(&summarize(samples))
    }

    #[test]
    fn the_tables_show_every_summary() {
        let mut samples = cell("larson", 1, [0.5, 1.0, 0.5, 0.75], [20, 30, 20, 40]);
        samples.extend(cell("larson", 8, [0.25, 1.25, 0.5, 0.5], [20, 30, 20, 40]));
        let summaries = summarize(&samples);
        let table = text_table(&summaries);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].starts_with("workload  threads  allocator  median s"),
            "{table}"
        );
        assert_eq!(lines.len(), 1 + 8, "{table}");
        assert!(
            lines[1].starts_with("larson") && lines[1].contains(" ktl "),
            "{table}"
        );
        // glibc at 8 threads: 1.25 / 0.25 = 5x the time, 1.5x the RSS.
        let glibc8 = lines[6];
        assert!(
            glibc8.contains("glibc") && glibc8.contains("1.2500"),
            "{table}"
        );
        assert!(
            glibc8.trim_end().ends_with("5.00x      1.50x"),
            "{glibc8:?}"
        );
        assert!(
            glibc8.starts_with("         "),
            "the cell is named once: {glibc8:?}"
        );
        assert!(lines[5].contains("  8  ktl"), "{table}");

        let header = Header {
            machine: Machine::probe(),
            glibc: Some("2.36".to_owned()),
            date: "2026-01-02".to_owned(),
            commit: "abc".to_owned(),
            settings: Settings {
                workloads: vec!["larson".to_owned()],
                threads: vec![1, 8],
                reps: 3,
                scale: 0.5,
                quick: false,
            },
            ktl_front_end: Some("per-CPU caches | by CPU".to_owned()),
        };
        let md = markdown(&header, &summaries, &targets(&summaries));
        assert!(
            md.contains("glibc 2.36") && md.contains("3 reps per allocator"),
            "{md}"
        );
        assert!(md.contains("per-CPU caches \\| by CPU"), "{md}");
        assert!(md.contains("| larson | 8 | **ktl** | 0.2500 |"), "{md}");
        assert!(
            md.contains("| larson | 8 | glibc | 1.2500 | 1.1250 | 1.8750 | 30.0 | 5.00x | 1.50x |"),
            "{md}"
        );
        assert!(md.contains("- PASS  ktl faster than glibc at 2+ threads: larson, 8 threads"));
        let text = header.text();
        assert!(text.contains("date:     2026-01-02, commit abc"), "{text}");

        let json = serde_json::to_value(Record {
            schema: SCHEMA,
            header: &header,
            samples: &samples,
            summary: &summaries,
            targets: &targets(&summaries),
        })
        .unwrap();
        assert_eq!(json["schema"], SCHEMA);
        assert_eq!(json["glibc"], "2.36");
        assert!(json["machine"]["cpu_model"].is_string());
        assert_eq!(json["samples"].as_array().unwrap().len(), 24);
        assert_eq!(json["summary"][1]["time_vs_ktl"], 2.0);
        assert_eq!(json["targets"][0]["bound"], ">");
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(951_782_400), "2000-02-29");
        assert_eq!(date(1_709_251_199), "2024-02-29");
        assert_eq!(date(1_735_689_600), "2025-01-01");
    }
}
