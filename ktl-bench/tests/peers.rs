//! The `peers` group's ktl side, through the crate's public API: each
//! scenario of param_test, run briefly in 2 threads, leaves its per-CPU data
//! exactly as the scenario requires (the run checks it itself). librseq is
//! not needed: its side is not run here.

use ktl::rseq::Index;
use ktl_bench::workloads::peers::{Scenario, THREADS, row_names, rows, run_ktl};

#[test]
fn every_scenario_of_ktl_runs_and_is_exact() {
    if ktl::rseq::start(Index::CpuId).is_none() {
        eprintln!("no rseq operation can run here: nothing to check");
        return;
    }
    assert_eq!(THREADS, 2);
    for scenario in Scenario::ALL {
        for reps in [0, 1, 20_000] {
            let elapsed = run_ktl(scenario, reps)
                .unwrap_or_else(|e| panic!("{} with {reps} reps: {e}", scenario.name()));
            assert!(elapsed.as_nanos() > 0, "{}", scenario.name());
        }
    }
}

#[test]
fn without_librseq_the_rows_say_how_to_get_it() {
    let rows = rows(None);
    assert_eq!(
        rows.iter().map(|r| r.name()).collect::<Vec<_>>(),
        row_names().collect::<Vec<_>>()
    );
    for row in &rows {
        let reason = row.unavailable_reason().unwrap();
        assert!(reason.contains("--librseq DIR"), "{reason}");
        assert!(reason.contains("KTL_LIBRSEQ=DIR"), "{reason}");
    }
}
