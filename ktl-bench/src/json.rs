//! The report as data: what `--json` prints (schema `ktl-bench/1`), and
//! what a saved record is read back as.

use crate::checks::{Check, checks};
use crate::harness::{Outcome, Shape};
use crate::workloads::BASELINES;
use serde::{Deserialize, Serialize};

/// The JSON schema name and version.
pub(crate) const SCHEMA: &str = "ktl-bench/1";

/// The git commit the benchmarks were built from, with `-dirty` when the
/// tree had changes, or `"unknown"` (written by the build script).
pub const COMMIT: &str = env!("KTL_BENCH_COMMIT");

/// The machine the numbers come from.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) struct Machine {
    /// `model name` from /proc/cpuinfo, or `"unknown"`.
    pub(crate) cpu_model: String,
    /// What tells CPUs of one model name apart (a cloud VM's "AMD EPYC"
    /// covers several generations): on x86 `family F model M stepping S`
    /// from /proc/cpuinfo, on Arm `implementer 0xI part 0xP`; null when
    /// /proc/cpuinfo does not say. Absent in the records made before it was
    /// added.
    #[serde(default)]
    pub(crate) cpu_signature: Option<String>,
    /// The kernel release (`uname -r`), or `"unknown"`.
    pub(crate) kernel: String,
    /// The target architecture.
    pub(crate) arch: String,
    /// Logical CPUs the system has (the `processor` entries of /proc/cpuinfo).
    pub(crate) logical_cpus: Option<usize>,
    /// CPUs this process may run on.
    pub(crate) usable_cpus: Option<usize>,
}

impl Machine {
    /// The CPU in words: the model name, and its signature where known.
    pub(crate) fn cpu(&self) -> String {
        match &self.cpu_signature {
            Some(sig) => format!("{}, {sig}", self.cpu_model),
            None => self.cpu_model.clone(),
        }
    }

    /// The machine this process runs on.
    pub(crate) fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |line: &str, key: &str| -> Option<String> {
            let (k, v) = line.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_owned())
        };
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| field(l, "model name"))
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "unknown".to_owned());
        let first = |key: &str| cpuinfo.lines().find_map(|l| field(l, key));
        let cpu_signature = match (first("cpu family"), first("model"), first("stepping")) {
            (Some(f), Some(m), Some(s)) => Some(format!("family {f} model {m} stepping {s}")),
            _ => match (first("CPU implementer"), first("CPU part")) {
                (Some(i), Some(p)) => Some(format!("implementer {i} part {p}")),
                _ => None,
            },
        };
        let logical = cpuinfo
            .lines()
            .filter(|l| field(l, "processor").is_some())
            .count();
        // The same string as uname(2)'s `release`, without a system call.
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown".to_owned());
        Machine {
            cpu_model,
            cpu_signature,
            kernel,
            arch: std::env::consts::ARCH.to_owned(),
            logical_cpus: (logical > 0).then_some(logical),
            usable_cpus: std::thread::available_parallelism().ok().map(|n| n.get()),
        }
    }
}

/// A row, as serialized.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) struct RowReport {
    pub(crate) name: String,
    pub(crate) group: String,
    /// Threads that ran the loop at once.
    pub(crate) threads: u32,
    pub(crate) available: bool,
    pub(crate) reason: Option<String>,
    pub(crate) median_ns: Option<f64>,
    pub(crate) min_ns: Option<f64>,
    pub(crate) max_ns: Option<f64>,
    pub(crate) spread_pct: Option<f64>,
    pub(crate) samples: Option<u32>,
    pub(crate) iters_per_sample: Option<u64>,
    /// The row the ratio column compares against (its group's baseline, or
    /// the row's own); null when there is none.
    #[serde(default)]
    pub(crate) baseline: Option<String>,
}

/// The whole result, as serialized for `--json`.
#[derive(Serialize, Debug)]
pub(crate) struct Report {
    /// Always [`SCHEMA`].
    pub(crate) schema: &'static str,
    pub(crate) machine: Machine,
    /// [`COMMIT`].
    pub(crate) commit: &'static str,
    /// `"libc"`, `"ktl"` or `"unavailable"`.
    pub(crate) owner: String,
    /// The loop shape: `"call"` or `"throughput"`.
    pub(crate) shape: Shape,
    pub(crate) rows: Vec<RowReport>,
    pub(crate) checks: Vec<Check>,
    /// The thread-scaling measurement of `--plot` (empty without it).
    pub(crate) scaling: Vec<ScalingPoint>,
}

/// A saved report, read back: what the Markdown table needs.
#[derive(Deserialize, Debug)]
pub(crate) struct Record {
    pub(crate) schema: String,
    pub(crate) machine: Machine,
    /// Absent in the records made before it was added.
    #[serde(default)]
    pub(crate) commit: Option<String>,
    pub(crate) rows: Vec<RowReport>,
}

/// One point of the thread-scaling measurement, as serialized.
#[derive(Serialize, Debug, Clone)]
pub(crate) struct ScalingPoint {
    /// `"counter"` or `"pool"`.
    pub(crate) structure: &'static str,
    /// The implementation, as in the row names (e.g. `"Pool get+put"`).
    pub(crate) implementation: &'static str,
    /// Whether it is ktl's.
    pub(crate) ours: bool,
    /// Threads on the one shared structure.
    pub(crate) threads: u32,
    /// Time per operation per thread (wall time of a sample / the
    /// operations of one thread): median, fastest and slowest sample. Null
    /// when the point could not be measured (`reason` says why).
    pub(crate) median_ns: Option<f64>,
    pub(crate) min_ns: Option<f64>,
    pub(crate) max_ns: Option<f64>,
    pub(crate) reason: Option<String>,
}

impl Report {
    /// The report of `outcomes`, measured on `machine` with `owner`
    /// owning the areas.
    pub(crate) fn new(
        machine: Machine,
        owner: &ktl::Owner,
        shape: Shape,
        outcomes: &[Outcome],
        scaling: Vec<ScalingPoint>,
    ) -> Report {
        let rows = outcomes
            .iter()
            .map(|o| {
                let stats = o.result.as_ref().ok();
                let group_baseline = || {
                    BASELINES
                        .iter()
                        .find(|(g, _)| *g == o.group)
                        .map(|(_, name)| (*name).to_owned())
                };
                RowReport {
                    name: o.name.clone(),
                    group: o.group.clone(),
                    threads: o.threads,
                    available: stats.is_some(),
                    reason: o.result.as_ref().err().cloned(),
                    median_ns: stats.map(|s| s.median_ns),
                    min_ns: stats.map(|s| s.min_ns),
                    max_ns: stats.map(|s| s.max_ns),
                    spread_pct: stats.map(|s| s.spread_pct),
                    samples: stats.map(|s| s.samples),
                    iters_per_sample: stats.map(|s| s.iters_per_sample),
                    baseline: o.baseline.clone().or_else(group_baseline),
                }
            })
            .collect();
        Report {
            schema: SCHEMA,
            machine,
            commit: COMMIT,
            owner: owner.to_string(),
            shape,
            rows,
            checks: checks(outcomes),
            scaling,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::outcome;
    use crate::workloads::cpu::{BASELINE, RAW_LOAD};

    #[test]
    fn json_has_the_schema_fields() {
        let outcomes = [outcome(BASELINE, Some(1.0)), outcome(RAW_LOAD, None)];
        let point = ScalingPoint {
            structure: "counter",
            implementation: "PerCpuCounter::add",
            ours: true,
            threads: 4,
            median_ns: Some(2.0),
            min_ns: Some(1.5),
            max_ns: Some(3.0),
            reason: None,
        };
        let report = Report::new(
            Machine::probe(),
            &ktl::layout().owner,
            Shape::Call,
            &outcomes,
            vec![point],
        );
        let v = serde_json::to_value(&report).unwrap();
        assert_eq!(v["schema"], "ktl-bench/1");
        for key in ["cpu_model", "cpu_signature", "kernel", "logical_cpus"] {
            assert!(v["machine"].get(key).is_some(), "machine.{key}");
        }
        assert_eq!(v["commit"], COMMIT);
        assert!(!COMMIT.is_empty());
        let row = &v["rows"][1];
        for key in [
            "name",
            "group",
            "threads",
            "available",
            "reason",
            "median_ns",
            "min_ns",
            "max_ns",
            "spread_pct",
            "samples",
            "iters_per_sample",
            "baseline",
        ] {
            assert!(row.get(key).is_some(), "rows[].{key}");
        }
        assert_eq!(row["available"], false);
        assert_eq!(row["baseline"], BASELINE, "the cpu group's baseline");
        for key in [
            "name", "ratio", "limit", "bound", "pass", "reason", "detail",
        ] {
            assert!(v["checks"][0].get(key).is_some(), "checks[].{key}");
        }
        let p = &v["scaling"][0];
        for key in [
            "structure",
            "implementation",
            "ours",
            "threads",
            "median_ns",
            "min_ns",
            "max_ns",
            "reason",
        ] {
            assert!(p.get(key).is_some(), "scaling[].{key}");
        }
        // The keys come in the order of the schema: the commit after the
        // machine.
        let text = serde_json::to_string(&report).unwrap();
        let at = |key: &str| text.find(&format!("\"{key}\":")).unwrap();
        assert!(at("schema") < at("machine") && at("machine") < at("commit"));
        assert!(at("commit") < at("owner"));
    }
}
