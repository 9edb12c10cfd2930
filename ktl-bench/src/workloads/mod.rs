//! The workloads: the rows of every group, each written once and measured
//! both by `ktl bench` and by the criterion benches.
//!
//! - [`cpu`]: the per-thread accessors against the other ways to learn the
//!   CPU;
//! - [`rseq`]: per-CPU counters with restartable sequences against atomics;
//! - [`percpu`]: ktl's per-CPU structures against what programs use today,
//!   at 1, 2 and 8 threads on one shared structure;
//! - [`random`]: random bytes through `ktl::random`, the system call and
//!   the `getrandom` crate;
//! - [`peers`]: the scenarios of the kernel's rseq `param_test` written with
//!   ktl's API, next to librseq's `param_test_benchmark` (when a built
//!   librseq tree is given; its rows come from [`peers::rows`], not from
//!   [`rows`], and the criterion benches do not measure them).
//!
//! Every `rseq`, `percpu`, `random` and `peers` row checks its result after
//! its samples (see [`Row::finish`]).

pub mod cpu;
pub mod peers;
pub mod percpu;
pub mod random;
pub mod rseq;

use crate::harness::Row;

/// The groups of rows, in order.
pub const GROUPS: &[&str] = &[
    cpu::GROUP,
    rseq::GROUP,
    percpu::GROUP,
    random::GROUP,
    peers::GROUP,
];

/// Each group's baseline: the row the ratio column compares against. The
/// `percpu`, `random` and `peers` groups' rows each name their own (ktl's
/// structure with the same operation and thread count; ktl's fill of the
/// same size; librseq's run of the same scenario).
pub(crate) const BASELINES: &[(&str, &str)] = &[
    (cpu::GROUP, cpu::BASELINE),
    (rseq::GROUP, rseq::FETCH_ADD_1),
];

/// The rows of this version, in order: the `cpu` group, the `rseq` group,
/// the `percpu` group, then the `random` group. Rows that cannot run here
/// carry their reason. The rows run on the thread that builds them. (The
/// `peers` group's rows, which need a librseq tree, come from
/// [`peers::rows`], after these.)
pub fn rows() -> Vec<Row> {
    let mut rows = cpu::rows();
    rows.extend(rseq::rows());
    rows.extend(percpu::rows());
    rows.extend(random::rows());
    rows
}

/// Whether `filter` selects the row `name` of `group`. A filter that is a
/// group's name (ignoring case) selects that group; any other filter
/// selects the rows whose name or group contains it (ignoring case). No
/// filter selects every row.
pub fn selects(filter: Option<&str>, name: &str, group: &str) -> bool {
    filter.is_none_or(|f| {
        let f = f.to_lowercase();
        if GROUPS.iter().any(|g| g.to_lowercase() == f) {
            return group.to_lowercase() == f;
        }
        name.to_lowercase().contains(&f) || group.to_lowercase().contains(&f)
    })
}

impl Row {
    /// Whether `filter` selects this row (see [`selects`]).
    pub fn matches(&self, filter: Option<&str>) -> bool {
        selects(filter, &self.name, &self.group)
    }
}

/// The owner with its reason, for the text report and the reasons of the
/// rows that need an area.
pub(crate) fn owner_text(owner: &ktl::Owner) -> String {
    match owner {
        ktl::Owner::Libc => "libc (the C library registered the areas)".to_owned(),
        ktl::Owner::Ktl(reason) => format!("ktl ({reason})"),
        ktl::Owner::Unavailable(why) => format!("unavailable ({why})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::{Shape, UNROLL};
    use ktl::rseq::Index;
    use rseq::{CAS_1, FETCH_ADD_1, RSEQ_ADD_1, RSEQ_CURRENT_1, SHARED_ADD_2};

    #[test]
    fn rows_are_in_order_and_filterable() {
        let rows = rows();
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names[..16],
            [
                "ktl::cpu_id()",
                "raw %fs load (limit)",
                "ktl::node_id()",
                "ktl::mm_cid()",
                "glibc sched_getcpu",
                "vDSO getcpu",
                "getcpu syscall",
                "RDPID",
                "rseq add (1 thread)",
                "fetch_add uncontended (1 thread)",
                "rseq add (2 threads)",
                "shared AtomicU64 fetch_add (2 threads)",
                "rseq add_current (1 thread)",
                "rseq add_current (2 threads)",
                "rseq cmpeqv_storev (1 thread)",
                "compare_exchange uncontended (1 thread)",
            ]
        );
        assert!(rows[16..84].iter().all(|r| r.group == percpu::GROUP));
        assert!(rows[84..].iter().all(|r| r.group == random::GROUP));
        assert_eq!(rows.len(), 16 + 68 + 12);
        assert_eq!(rows[16].name, "counter: PerCpuCounter::add (1 thread)");
        assert_eq!(rows[51].name, "stack: Mutex<Vec> push+pop (8 threads)");
        assert_eq!(
            rows[83].name,
            "histogram: ktl PerCpuHistogram via metrics::Histogram (32 threads)"
        );
        let names = &names[..16];
        assert!(rows[0].matches(Some("CPU_ID")));
        assert!(!rows[0].matches(Some("rdpid")));
        assert!(rows[0].op.is_ok(), "ktl::cpu_id() always runs");
        let rseq: Vec<&str> = rows
            .iter()
            .filter(|r| r.matches(Some("rseq")))
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(rseq, names[8..], "--filter rseq selects the rseq group");
        assert!(rows[8..16].iter().all(|r| r.group == "rseq"));
        let cpu = rows.iter().filter(|r| r.matches(Some("cpu"))).count();
        assert_eq!(cpu, 8, "--filter cpu selects the cpu group, not percpu");
        let percpu = rows.iter().filter(|r| r.matches(Some("PerCpu"))).count();
        assert_eq!(percpu, 68, "--filter percpu selects the percpu group");
        // The counter kind's 12 rows and the metric kind's 16.
        let counters = rows.iter().filter(|r| r.matches(Some("counter"))).count();
        assert_eq!(counters, 28);
        let random: Vec<&str> = rows
            .iter()
            .filter(|r| r.matches(Some("Random")))
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(random.len(), 12, "--filter random selects the random group");
        assert_eq!(random[1], random::LIMIT_16);
        assert_eq!(random[2], random::SYSCALL_16);
        let small = rows.iter().filter(|r| r.matches(Some("16 B:"))).count();
        assert_eq!(small, 4, "16 B, not 4096 B");
        let quick: Vec<&str> = rows
            .iter()
            .filter(|r| r.quick)
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(
            quick.len(),
            16 + 2 + 2 + 8 + 2 + 8 + 6 + 3,
            "the quick run: 1-thread counters of ktl and thread_local, 1-thread pools of ktl \
             and ArrayQueue, 2-thread counters and pools, 1-thread stacks of ktl and \
             ArrayQueue, 2-thread metric counters and histograms, the 1-thread ones the \
             checks compare, 16-byte ktl, limit and syscall"
        );
        assert_eq!(
            quick[44..],
            [random[0], random::LIMIT_16, random::SYSCALL_16]
        );
        for r in &rows[8..] {
            assert_eq!(r.op.is_ok(), r.verify.is_some(), "{} counts", r.name);
        }
        // The atomic rows run everywhere.
        for name in [FETCH_ADD_1, SHARED_ADD_2, CAS_1] {
            assert!(
                rows.iter().any(|r| r.name == name && r.op.is_ok()),
                "{name}"
            );
        }
        if ktl::rseq::start(Index::CpuId).is_none() {
            assert!(
                rows.iter()
                    .any(|r| [RSEQ_ADD_1, RSEQ_CURRENT_1].contains(&r.name.as_str())
                        && r.op.is_err())
            );
        }
    }

    /// Runs every checked row a few times, in both shapes, and checks its
    /// counters or objects, like `ktl bench` does after the samples (once
    /// the row's loop and threads are gone).
    #[test]
    fn checked_rows_are_exact() {
        let rows = rows();
        let checked = rows
            .iter()
            .filter(|r| r.group != "cpu" && r.op.is_ok())
            .count();
        assert!(checked >= 3 + 36 + 9, "{checked}");
        for row in rows.into_iter().filter(|r| r.group != "cpu") {
            if row.op.is_err() {
                continue; // n/a here (no live rseq area)
            }
            let threads = row.threads;
            for iters in [0, 1, 1000] {
                for shape in [Shape::Call, Shape::Throughput] {
                    row.run(iters, shape);
                }
            }
            let verified = row.finish().unwrap().unwrap();
            let ops = u64::from(threads) * 1001 * (1 + UNROLL);
            assert!(
                verified.contains(&format!("{ops} operations")),
                "{verified}"
            );
        }
    }

    #[test]
    fn the_peers_group_is_selected_by_its_name_and_not_by_default_in_rows() {
        assert_eq!(GROUPS.last(), Some(&peers::GROUP));
        assert!(rows().iter().all(|r| r.group != peers::GROUP));
        let name = peers::Scenario::List.ktl_row();
        assert!(selects(Some("PEERS"), name, peers::GROUP));
        assert!(selects(Some("list"), name, peers::GROUP));
        assert!(selects(None, name, peers::GROUP));
        assert!(!selects(Some("peers"), "ktl::cpu_id()", cpu::GROUP));
        assert!(
            !selects(Some("rseq"), name, peers::GROUP),
            "rseq is a group"
        );
    }

    #[test]
    fn the_random_rows_come_by_size() {
        let by_size = random::rows_by_size();
        assert_eq!(
            by_size.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            random::SIZES
        );
        for (size, rows) in &by_size {
            for (label, row) in rows {
                assert!(
                    row.name.starts_with(&format!("{size} B: {label}")),
                    "{}",
                    row.name
                );
            }
        }
    }
}
