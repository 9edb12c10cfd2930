//! What the criterion benches share: the configuration, and the adapter
//! that measures the rows of `ktl bench` (the workloads of `ktl_bench`,
//! written once there) with criterion, then checks them.
//!
//! Each row's timed loop runs in criterion's `iter_custom` in the `call`
//! shape (one call per iteration, its result added to an accumulator); a
//! row of N threads runs its loop in N threads at once and is timed as in
//! `ktl bench` (the wall time of a sample). A row that cannot run here is
//! skipped with a note on stderr. After its group, every row is ended (its
//! threads stopped) and its check run: counters that do not sum to the
//! operations performed, a structure that lost objects or a failed fill
//! fails the run (exit code 1).

use criterion::{Criterion, Throughput};
use ktl_bench::{Row, Shape};
use std::time::Duration;

/// Modest times, so each file runs in about a minute or less.
pub fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

/// A row with the id criterion gives it.
pub trait Benchmark {
    /// The id and the row.
    fn id_and_row(self) -> (String, Row);
}

/// A row under its own name.
impl Benchmark for Row {
    fn id_and_row(self) -> (String, Row) {
        (self.name().to_owned(), self)
    }
}

/// A row under another id.
impl Benchmark for (&str, Row) {
    fn id_and_row(self) -> (String, Row) {
        (self.0.to_owned(), self.1)
    }
}

/// Measures `rows` in the criterion group `group`, each under its id (with
/// `throughput` per iteration, if given), then ends and checks every row;
/// exits with code 1 if a check fails.
pub fn bench_rows(
    c: &mut Criterion,
    group: &str,
    rows: impl IntoIterator<Item = impl Benchmark>,
    throughput: Option<Throughput>,
) {
    let rows: Vec<(String, Row)> = rows.into_iter().map(Benchmark::id_and_row).collect();
    let mut g = c.benchmark_group(group);
    if let Some(t) = throughput {
        g.throughput(t);
    }
    for (id, row) in &rows {
        if let Some(reason) = row.unavailable_reason() {
            eprintln!("{group}/{id}: skipped ({reason})");
            continue;
        }
        g.bench_function(id.as_str(), |b| {
            b.iter_custom(|iters| row.run(iters, Shape::Call).unwrap_or_default())
        });
    }
    g.finish();
    let failures: Vec<String> = rows
        .into_iter()
        .filter_map(|(_, row)| row.finish()?.err())
        .collect();
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("{group}/{f}");
        }
        std::process::exit(1);
    }
}
