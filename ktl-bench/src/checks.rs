//! The comparisons the project promises, computed from the medians of one
//! run, and the footprint of `PerCpu<T>`, computed, not measured. A failed
//! comparison is reported, never turned into an error: machines are noisy.
//! The `peers` group's promises (ktl at most 1.0x librseq, per scenario)
//! are listed when the run includes that group.

use crate::harness::Outcome;
use crate::workloads::cpu::{BASELINE, GLIBC, RAW_LOAD};
use crate::workloads::peers::Scenario;
use crate::workloads::percpu::{
    ARRAY_QUEUE_1, ARRAY_QUEUE_2, ARRAY_QUEUE_STACK_1, PERCPU_ADD_1, PERCPU_ADD_2,
    PERCPU_SHARED_ADD_2, POOL_1, POOL_2, STACK_1, THREAD_LOCAL_ADD_1,
};
use crate::workloads::random::{KTL_16, LIMIT_16};
use crate::workloads::rseq::{FETCH_ADD_1, RSEQ_CURRENT_1, RSEQ_CURRENT_2, SHARED_ADD_2};
use crate::workloads::{peers, percpu, random};
use serde::Serialize;

/// Which side of the limit a check's ratio must stay on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Bound {
    /// The ratio must be at most the limit.
    Max,
    /// The ratio must be at least the limit.
    Min,
    /// The ratio must equal the limit (a quantity that is not measured but
    /// computed, such as a memory footprint).
    Exact,
}

/// A promised comparison: `median(numerator) / median(denominator)` against
/// `limit`.
pub(crate) struct CheckSpec {
    pub(crate) name: &'static str,
    numerator: &'static str,
    denominator: &'static str,
    bound: Bound,
    limit: f64,
}

/// The comparisons the project promises.
const CHECKS: &[CheckSpec] = &[
    CheckSpec {
        name: "ktl::cpu_id() costs at most 1.5x the raw load",
        numerator: BASELINE,
        denominator: RAW_LOAD,
        bound: Bound::Max,
        limit: 1.5,
    },
    CheckSpec {
        name: "ktl::cpu_id() is at least 4x faster than glibc sched_getcpu",
        numerator: GLIBC,
        denominator: BASELINE,
        bound: Bound::Min,
        limit: 4.0,
    },
    CheckSpec {
        name: "rseq add with 2 threads is at least 5x faster per op than a shared AtomicU64 fetch_add",
        numerator: SHARED_ADD_2,
        denominator: RSEQ_CURRENT_2,
        bound: Bound::Min,
        limit: 5.0,
    },
    CheckSpec {
        name: "a single-thread rseq add costs at most half an uncontended fetch_add",
        numerator: RSEQ_CURRENT_1,
        denominator: FETCH_ADD_1,
        bound: Bound::Max,
        limit: 0.5,
    },
    CheckSpec {
        name: "PerCpuCounter::add with 2 threads is at least 5x faster per op than a shared AtomicU64 fetch_add",
        numerator: PERCPU_SHARED_ADD_2,
        denominator: PERCPU_ADD_2,
        bound: Bound::Min,
        limit: 5.0,
    },
    CheckSpec {
        name: "PerCpuCounter::add in 1 thread costs at most a thread_local sharded counter",
        numerator: PERCPU_ADD_1,
        denominator: THREAD_LOCAL_ADD_1,
        bound: Bound::Max,
        limit: 1.0,
    },
    CheckSpec {
        name: "PerCpuCounter::add in 1 thread costs at most 1.15x a raw rseq add_current",
        numerator: PERCPU_ADD_1,
        denominator: RSEQ_CURRENT_1,
        bound: Bound::Max,
        limit: 1.15,
    },
    CheckSpec {
        name: "Pool get+put in 1 thread is at least 2x faster per op than ArrayQueue pop+push",
        numerator: ARRAY_QUEUE_1,
        denominator: POOL_1,
        bound: Bound::Min,
        limit: 2.0,
    },
    CheckSpec {
        name: "Pool get+put with 2 threads is at least 4x faster per op than ArrayQueue pop+push",
        numerator: ARRAY_QUEUE_2,
        denominator: POOL_2,
        bound: Bound::Min,
        limit: 4.0,
    },
    CheckSpec {
        name: "PerCpuStack push+pop in 1 thread costs at most ArrayQueue push+pop",
        numerator: STACK_1,
        denominator: ARRAY_QUEUE_STACK_1,
        bound: Bound::Max,
        limit: 1.0,
    },
];

/// The promises of the metric and histogram rows, for one pair of
/// implementations: ktl's at most the crate's own at 1 thread, and at least
/// 5x faster per operation at 2, 8 and 32 threads.
macro_rules! metric_checks {
    ($what:literal, $kind:literal, $ours:ident, $theirs:ident) => {
        [
            CheckSpec {
                name: concat!($what, " in 1 thread costs at most ", percpu::metric_label!($theirs)),
                numerator: concat!($kind, ": ", percpu::metric_label!($ours), " (1 thread)"),
                denominator: concat!($kind, ": ", percpu::metric_label!($theirs), " (1 thread)"),
                bound: Bound::Max,
                limit: 1.0,
            },
            metric_checks!(@faster $what, $kind, $ours, $theirs, "2"),
            metric_checks!(@faster $what, $kind, $ours, $theirs, "8"),
            metric_checks!(@faster $what, $kind, $ours, $theirs, "32"),
        ]
    };
    (@faster $what:literal, $kind:literal, $ours:ident, $theirs:ident, $t:literal) => {
        CheckSpec {
            name: concat!(
                $what, " with ", $t, " threads is at least 5x faster per op than ",
                percpu::metric_label!($theirs)
            ),
            numerator: concat!($kind, ": ", percpu::metric_label!($theirs), " (", $t, " threads)"),
            denominator: concat!($kind, ": ", percpu::metric_label!($ours), " (", $t, " threads)"),
            bound: Bound::Min,
            limit: 5.0,
        }
    };
}

/// The metric and histogram promises: ktl's counter through each crate's
/// interface against the crate's own counter, and ktl's histogram against
/// `prometheus-client`'s.
const METRIC_CHECKS: [[CheckSpec; 4]; 3] = [
    metric_checks!(
        "ktl's counter via metrics::Counter",
        "metric",
        counter_ktl,
        counter_atomic
    ),
    metric_checks!(
        "ktl::prometheus::Counter::inc",
        "metric",
        counter_ktl_prometheus,
        counter_prometheus
    ),
    metric_checks!(
        "PerCpuHistogram::observe",
        "histogram",
        histogram_ktl,
        histogram_prometheus
    ),
];

/// Every promise of a fixed pair of rows.
fn specs() -> impl Iterator<Item = &'static CheckSpec> {
    CHECKS.iter().chain(METRIC_CHECKS.iter().flatten())
}

/// The metric promises, after the others (so that those keep their
/// places in the report).
fn metric_specs() -> impl Iterator<Item = &'static CheckSpec> {
    METRIC_CHECKS.iter().flatten()
}

/// The promise of the `random` group: ktl's fill of a small request
/// against the limit, the vDSO's getrandom called directly with a state of
/// its own (skipped when ktl's rows ran on the system call, or the limit row
/// is n/a).
pub(crate) const RANDOM_CHECK: CheckSpec = CheckSpec {
    name: "ktl::random::fill of 16 bytes costs at most 1.1x the raw vDSO getrandom",
    numerator: KTL_16,
    denominator: LIMIT_16,
    bound: Bound::Max,
    limit: 1.1,
};

/// Whether a promise (of [`CHECKS`] or [`RANDOM_CHECK`]) compares the row
/// named `row`: such rows belong in the quick run, so that it can tell
/// whether its promises hold.
pub(crate) fn compares(row: &str) -> bool {
    specs()
        .chain([&RANDOM_CHECK])
        .any(|c| c.numerator == row || c.denominator == row)
}

/// The name of the footprint check, which is computed, not measured.
pub(crate) const FOOTPRINT_CHECK: &str =
    "PerCpu<T> takes possible CPUs x size_of::<CachePadded<T>>() bytes (PerCpu::footprint)";

/// A comparison's result, as serialized.
#[derive(Serialize, Debug)]
pub(crate) struct Check {
    pub(crate) name: &'static str,
    /// `median(numerator) / median(denominator)` (for the footprint: bytes
    /// taken / bytes expected); null when not computed.
    pub(crate) ratio: Option<f64>,
    pub(crate) limit: f64,
    pub(crate) bound: Bound,
    /// Null when the ratio could not be computed.
    pub(crate) pass: Option<bool>,
    /// Why the ratio could not be computed.
    pub(crate) reason: Option<String>,
    /// What was compared, in words (the footprint check); null otherwise.
    pub(crate) detail: Option<String>,
}

/// The promise of the `peers` group for `scenario`: ktl's run costs at
/// most librseq's `param_test_benchmark` of the same scenario.
pub(crate) fn peer_spec(scenario: Scenario) -> CheckSpec {
    CheckSpec {
        name: scenario.check_name(),
        numerator: scenario.ktl_row(),
        denominator: scenario.librseq_row(),
        bound: Bound::Max,
        limit: 1.0,
    }
}

/// Evaluates the checks from the medians of `outcomes`: the promises, then
/// the `peers` group's when the run includes a row of it (run or n/a).
pub(crate) fn checks(outcomes: &[Outcome]) -> Vec<Check> {
    let peers = outcomes.iter().any(|o| o.group == peers::GROUP);
    let peer_checks = Scenario::ALL
        .into_iter()
        .filter(|_| peers)
        .map(|s| evaluate(&peer_spec(s), outcomes));
    CHECKS
        .iter()
        .map(|spec| evaluate(spec, outcomes))
        .chain([random_check(outcomes), footprint_check(outcomes)])
        .chain(metric_specs().map(|spec| evaluate(spec, outcomes)))
        .chain(peer_checks)
        .collect()
}

/// Evaluates one comparison from the medians of `outcomes`.
fn evaluate(spec: &CheckSpec, outcomes: &[Outcome]) -> Check {
    let median = |name: &str| -> Result<f64, String> {
        match outcomes.iter().find(|o| o.name == name) {
            None => Err(format!("{name} was not run (--filter, or --quick)")),
            Some(o) => match &o.result {
                Err(reason) => Err(format!("{name} is n/a: {reason}")),
                Ok(s) if s.median_ns > 0.0 => Ok(s.median_ns),
                Ok(_) => Err(format!("{name} measured 0 ns")),
            },
        }
    };
    let ratio = median(spec.numerator).and_then(|n| median(spec.denominator).map(|d| n / d));
    let (ratio, reason) = match ratio {
        Ok(r) => (Some(r), None),
        Err(e) => (None, Some(e)),
    };
    let pass = ratio.map(|r| match spec.bound {
        Bound::Max => r <= spec.limit,
        Bound::Min => r >= spec.limit,
        Bound::Exact => r == spec.limit,
    });
    Check {
        name: spec.name,
        ratio,
        limit: spec.limit,
        bound: spec.bound,
        pass,
        reason,
        detail: None,
    }
}

/// The promise of the `random` group: skipped, with the reason, when ktl's
/// rows ran on the system call (no vDSO getrandom here), or when the limit
/// row is n/a (its reason, from [`evaluate`]).
fn random_check(outcomes: &[Outcome]) -> Check {
    let mut check = evaluate(&RANDOM_CHECK, outcomes);
    let fallback = random::fallback_name(16);
    if outcomes.iter().any(|o| o.name == fallback) {
        check.ratio = None;
        check.pass = None;
        check.reason = Some(format!(
            "ktl::random::fill ran on the syscall fallback: {}",
            ktl::random::path()
        ));
    }
    check
}

/// The footprint check, when a row of the `percpu` group ran: the bytes
/// that [`ktl::percpu::PerCpu`] takes for a few slot types, against the
/// possible CPUs times the padded slot.
fn footprint_check(outcomes: &[Outcome]) -> Check {
    let mut check = Check {
        name: FOOTPRINT_CHECK,
        ratio: None,
        limit: 1.0,
        bound: Bound::Exact,
        pass: None,
        reason: None,
        detail: None,
    };
    if !outcomes.iter().any(|o| o.group == percpu::GROUP) {
        check.reason = Some(format!("no {} row was run (--filter)", percpu::GROUP));
        return check;
    }
    match percpu::footprints() {
        Ok(f) => {
            check.ratio = Some(f.taken as f64 / f.expected.max(1) as f64);
            check.pass = Some(f.taken == f.expected && f.each_matches);
            check.detail = Some(f.detail);
        }
        Err(reason) => check.reason = Some(reason),
    }
    check
}

#[cfg(test)]
mod tests {
    /// The stack's promise, by name.
    const STACK_CHECK_NAME: &str =
        "PerCpuStack push+pop in 1 thread costs at most ArrayQueue push+pop";
    use super::*;
    use crate::harness::outcome;
    use crate::workloads::random::SYSCALL_16;

    #[test]
    fn checks_pass_fail_and_skip() {
        let outcomes = [
            outcome(BASELINE, Some(1.0)),
            outcome(RAW_LOAD, Some(0.5)),
            outcome(GLIBC, Some(10.0)),
        ];
        let c = checks(&outcomes);
        assert_eq!(c[0].ratio, Some(2.0));
        assert_eq!(c[0].pass, Some(false));
        assert_eq!(c[1].ratio, Some(10.0));
        assert_eq!(c[1].pass, Some(true));

        let outcomes = [
            outcome(RSEQ_CURRENT_1, Some(3.0)),
            outcome(FETCH_ADD_1, Some(2.5)),
            outcome(RSEQ_CURRENT_2, Some(3.0)),
            outcome(SHARED_ADD_2, Some(30.0)),
        ];
        let c = checks(&outcomes);
        // The fixed pairs (10), random, footprint, the metric pairs (12).
        assert_eq!(c.len(), 24);
        assert_eq!((c[2].ratio, c[2].bound), (Some(10.0), Bound::Min));
        assert_eq!(c[2].pass, Some(true));
        assert_eq!((c[3].ratio, c[3].bound), (Some(1.2), Bound::Max));
        assert_eq!(c[3].pass, Some(false));
        // No percpu or random row ran: their checks are skipped.
        assert!(c[4..].iter().all(|c| c.pass.is_none()));
        assert!(c[10].reason.as_deref().unwrap().contains("not run"));
        assert!(c[11].reason.as_deref().unwrap().contains("no percpu row"));
        assert!(
            c[12..]
                .iter()
                .all(|c| c.name.contains("metrics::Counter") || c.name.contains("prometheus"))
        );

        let percpu = |name: &str, median: f64| Outcome {
            group: percpu::GROUP.to_owned(),
            threads: 2,
            ..outcome(name, Some(median))
        };
        let outcomes = [
            percpu(PERCPU_ADD_2, 2.0),
            percpu(PERCPU_SHARED_ADD_2, 30.0),
            percpu(POOL_2, 10.0),
            percpu(ARRAY_QUEUE_2, 15.0),
            percpu(PERCPU_ADD_1, 1.0),
            percpu(THREAD_LOCAL_ADD_1, 0.8),
            outcome(RSEQ_CURRENT_1, Some(0.9)),
            percpu(POOL_1, 4.0),
            percpu(ARRAY_QUEUE_1, 10.0),
        ];
        let c = checks(&outcomes);
        assert_eq!((c[4].ratio, c[4].pass), (Some(15.0), Some(true)));
        // The counter in one thread: 1.25x the thread_local one (fails),
        // 1.11x the raw add (passes).
        assert_eq!((c[5].ratio, c[5].pass), (Some(1.25), Some(false)));
        assert_eq!(
            (c[6].bound, c[6].limit, c[6].pass),
            (Bound::Max, 1.15, Some(true))
        );
        assert!((c[6].ratio.unwrap() - 1.0 / 0.9).abs() < 1e-12);
        // The pool: 2.5x ArrayQueue in one thread (at least 2x: passes),
        // 1.5x in two (at least 4x: fails).
        assert_eq!(
            (c[7].ratio, c[7].bound, c[7].limit, c[7].pass),
            (Some(2.5), Bound::Min, 2.0, Some(true))
        );
        assert_eq!(
            (c[8].ratio, c[8].limit, c[8].pass),
            (Some(1.5), 4.0, Some(false))
        );
        assert_eq!((c[9].name, c[9].bound), (STACK_CHECK_NAME, Bound::Max));
        assert_eq!((c[9].ratio, c[9].pass), (None, None));
        assert_eq!((c[11].name, c[11].bound), (FOOTPRINT_CHECK, Bound::Exact));
        assert_eq!((c[11].ratio, c[11].pass), (Some(1.0), Some(true)));
        assert!(
            c[11]
                .detail
                .as_deref()
                .unwrap()
                .contains("PerCpu<AtomicU64>")
        );

        let random = |name: &str, median: f64| Outcome {
            group: random::GROUP.to_owned(),
            baseline: Some(KTL_16.to_owned()),
            ..outcome(name, Some(median))
        };
        // ktl's 16-byte median over the limit's, held to at most 1.1x.
        let outcomes = [
            random(KTL_16, 44.0),
            random(LIMIT_16, 40.0),
            random(SYSCALL_16, 300.0),
        ];
        let c = checks(&outcomes);
        assert_eq!(
            (c[10].name, c[10].bound, c[10].limit),
            (RANDOM_CHECK.name, Bound::Max, 1.1)
        );
        assert_eq!(
            RANDOM_CHECK.name,
            "ktl::random::fill of 16 bytes costs at most 1.1x the raw vDSO getrandom"
        );
        assert!((c[10].ratio.unwrap() - 1.1).abs() < 1e-12);
        assert_eq!(c[10].pass, Some(true));
        let outcomes = [random(KTL_16, 40.0), random(LIMIT_16, 40.0)];
        assert_eq!(checks(&outcomes)[10].ratio, Some(1.0));
        let outcomes = [random(KTL_16, 50.0), random(LIMIT_16, 40.0)];
        let c = checks(&outcomes);
        assert_eq!((c[10].ratio, c[10].pass), (Some(1.25), Some(false)));
        // The system call is no longer part of the promise.
        let outcomes = [random(KTL_16, 40.0), random(SYSCALL_16, 41.0)];
        let c = checks(&outcomes);
        assert_eq!(c[10].pass, None);
        assert!(c[10].reason.as_deref().unwrap().contains("not run"));
        // The limit row n/a: not computed, with its reason.
        let na = Outcome {
            result: Err("no usable vDSO: the vDSO is turned off (KTL_VDSO=off)".to_owned()),
            ..random(LIMIT_16, 0.0)
        };
        let c = checks(&[random(KTL_16, 40.0), na]);
        assert_eq!((c[10].ratio, c[10].pass), (None, None));
        let reason = c[10].reason.as_deref().unwrap();
        assert_eq!(
            reason,
            format!("{LIMIT_16} is n/a: no usable vDSO: the vDSO is turned off (KTL_VDSO=off)")
        );
        // ktl's row on the syscall fallback: skipped, not failed.
        let fallback = "16 B: ktl::random::fill (syscall fallback)";
        assert_eq!(random::fallback_name(16), fallback);
        let outcomes = [random(fallback, 300.0), random(LIMIT_16, 40.0)];
        let c = checks(&outcomes);
        assert_eq!((c[10].ratio, c[10].pass), (None, None));
        assert!(
            c[10]
                .reason
                .as_deref()
                .unwrap()
                .contains("ran on the syscall fallback"),
            "{:?}",
            c[10].reason
        );

        let outcomes = [outcome(BASELINE, Some(1.0)), outcome(RAW_LOAD, None)];
        let c = checks(&outcomes);
        assert_eq!(c[0].pass, None);
        assert!(c[0].reason.as_deref().unwrap().contains("n/a"));
        assert!(c[1].reason.as_deref().unwrap().contains("not run"));
    }

    #[test]
    fn peers_checks_compare_ktl_with_librseq_when_the_group_ran() {
        let peer = |name: &str, median: Option<f64>| Outcome {
            group: peers::GROUP.to_owned(),
            threads: 2,
            result: median
                .map(|m| crate::harness::Stats::from_samples(vec![m], 1))
                .ok_or_else(|| peers::NOT_GIVEN.to_owned()),
            ..outcome(name, None)
        };
        // No peers row in the run: no peers check.
        assert_eq!(checks(&[outcome(BASELINE, Some(1.0))]).len(), 24);
        // librseq absent: the rows are n/a, the checks not computed.
        let absent: Vec<Outcome> = Scenario::ALL
            .into_iter()
            .flat_map(|s| [peer(s.ktl_row(), None), peer(s.librseq_row(), None)])
            .collect();
        let c = checks(&absent);
        assert_eq!(c.len(), 24 + 5);
        for (check, s) in c[24..].iter().zip(Scenario::ALL) {
            assert_eq!(
                (check.name, check.bound, check.limit),
                (s.check_name(), Bound::Max, 1.0)
            );
            assert_eq!((check.ratio, check.pass), (None, None));
            let reason = check.reason.as_deref().unwrap();
            assert!(reason.contains("is n/a: librseq not given"), "{reason}");
            assert!(reason.contains("--librseq DIR"), "{reason}");
        }
        // Measured: pass at or under 1.0x, FAIL above.
        let outcomes = [
            peer(Scenario::Increment.ktl_row(), Some(1.0)),
            peer(Scenario::Increment.librseq_row(), Some(2.0)),
            peer(Scenario::List.ktl_row(), Some(3.0)),
            peer(Scenario::List.librseq_row(), Some(2.0)),
        ];
        let c = checks(&outcomes);
        assert_eq!((c[24].ratio, c[24].pass), (Some(0.5), Some(true)));
        assert_eq!((c[26].ratio, c[26].pass), (Some(1.5), Some(false)));
        assert!(c[25].reason.as_deref().unwrap().contains("not run"));
    }
}
