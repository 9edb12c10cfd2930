//! The workloads of the allocator benchmark, under the system allocator:
//! at a small scale, with 1 and 3 threads, each returns exactly the check
//! value it must (the objects of its plan, and the digest of their ids),
//! the same on every run, and the workloads whose objects do not depend on
//! the thread count return the same value at both.

use ktl_bench::alloc::workloads::{self, Checked, Plan, Workload, mix};

/// The scale of the tests: a few milliseconds of work each.
const SCALE: f64 = 0.01;

/// The check value of the ids `0..objects`, summed here independently of
/// the library's `expected`.
fn of_ids(objects: u64) -> Checked {
    Checked {
        objects,
        digest: (0..objects).fold(0u64, |d, id| d.wrapping_add(mix(id))),
    }
}

#[test]
fn every_workload_returns_its_check_value() {
    for workload in Workload::ALL {
        let mut at = Vec::new();
        for threads in [1, 3] {
            let plan = Plan::new(workload, threads, SCALE).unwrap();
            // The objects of each plan, from the constants of the workloads.
            let t = threads as u64;
            let objects = match workload {
                Workload::Xmalloc => 30_000,
                Workload::Larson => t * workloads::LARSON_SLOTS as u64 + 25_000,
                Workload::CacheScratch => t + 2_000,
                Workload::AllocTest => t * workloads::ALLOC_TEST_WINDOW as u64 + 15_000,
                Workload::Btree => 6_000,
            };
            assert_eq!(plan.objects(), objects, "{workload} at {threads} threads");
            let want = of_ids(objects);
            assert_eq!(workloads::expected(&plan), want);
            let got = workloads::run(workload, threads, SCALE)
                .unwrap_or_else(|e| panic!("{workload} at {threads} threads: {e}"));
            assert_eq!(got, want, "{workload} at {threads} threads");
            let (again, _) = workloads::run_verified(workload, threads, SCALE).unwrap();
            assert_eq!(again, got, "{workload} at {threads} threads: a second run");
            at.push(got);
        }
        if matches!(workload, Workload::Xmalloc | Workload::Btree) {
            assert_eq!(
                at[0], at[1],
                "{workload}: the same objects at 1 and 3 threads"
            );
        } else {
            assert_ne!(at[0], at[1], "{workload}: more threads, more live objects");
        }
    }
}

#[test]
fn bad_arguments_are_errors_not_panics() {
    let err = workloads::run(Workload::Btree, 0, 1.0).unwrap_err();
    assert!(err.contains("thread count"), "{err}");
    let err = workloads::run_verified(Workload::Larson, 1, -0.5).unwrap_err();
    assert!(err.contains("scale"), "{err}");
}
