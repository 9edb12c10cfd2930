//! The thread scaling of `--plot`: the counters and pools that the filter
//! selects, at 1, 2, 4, 8 and 32 threads on one shared structure, measured
//! after the rows, side by side like them, with the same settings and the
//! same checks.

use crate::harness::{Row, Shape, run_rows};
use crate::json::ScalingPoint;
use crate::workloads::percpu;
use std::time::Duration;

/// Measures the thread scaling of the counters and pools that `filter`
/// selects. Returns the points, and the failed checks.
pub(crate) fn run_scaling(
    filter: Option<&str>,
    shape: Shape,
    samples: u32,
    target: Duration,
    json: bool,
) -> (Vec<ScalingPoint>, Vec<String>) {
    let (rows, lines): (Vec<Row>, Vec<percpu::Line>) =
        percpu::scaling_rows(filter).into_iter().unzip();
    if rows.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let max = lines.iter().map(|l| l.threads).max().unwrap_or(1);
    let outcomes = run_rows(
        rows,
        shape,
        samples,
        target,
        json,
        &format!("thread scaling, 1 to {max} threads: calibrating, then interleaved samples"),
    );
    let failures = outcomes
        .iter()
        .filter_map(|o| o.verified.as_ref()?.as_ref().err().cloned())
        .collect();
    let points = outcomes
        .iter()
        .zip(lines)
        .map(|(o, line)| {
            let stats = o.result.as_ref().ok();
            ScalingPoint {
                structure: line.kind.name(),
                implementation: line.label,
                ours: line.ours,
                threads: line.threads,
                median_ns: stats.map(|s| s.median_ns),
                min_ns: stats.map(|s| s.min_ns),
                max_ns: stats.map(|s| s.max_ns),
                reason: o.result.as_ref().err().cloned(),
            }
        })
        .collect();
    (points, failures)
}
