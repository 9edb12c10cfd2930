//! `ktl bench`: the arguments; the benchmarks themselves, their report and
//! their charts are the `ktl-bench` crate's (see its documentation for what
//! each group measures and for the JSON schema `ktl-bench/1`).

use std::path::PathBuf;

/// How a sample's loop calls the operation.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One call per iteration, its result added to an accumulator.
    Call,
    /// 8 unrolled calls per iteration, results summed.
    Throughput,
}

impl From<Shape> for ktl_bench::Shape {
    fn from(shape: Shape) -> ktl_bench::Shape {
        match shape {
            Shape::Call => ktl_bench::Shape::Call,
            Shape::Throughput => ktl_bench::Shape::Throughput,
        }
    }
}

/// Options of `ktl bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Timed samples per row [default: 15, or 7 with --quick].
    #[arg(long, value_name = "N")]
    pub samples: Option<u32>,
    /// Target duration of one sample, in milliseconds [default: 20, or 5 with
    /// --quick].
    #[arg(long, value_name = "MS")]
    pub sample_ms: Option<u64>,
    /// The short run: fewer, shorter samples, of the percpu group only the
    /// 2-thread rows but the stacks' and the 1-thread rows a promise
    /// compares, of the random group only the 16-byte ktl, limit and syscall
    /// rows, and none of the peers group (a few seconds in all).
    #[arg(long)]
    pub quick: bool,
    /// Run only the rows of this group (cpu, rseq, percpu, random, peers), or
    /// else the rows whose name or group contains this text (ignoring case).
    #[arg(long, value_name = "SUBSTRING")]
    pub filter: Option<String>,
    /// Print the results as JSON (schema `ktl-bench/1`), without a progress
    /// bar.
    #[arg(long)]
    pub json: bool,
    /// The loop shape: `call` (one call per iteration, like criterion) or
    /// `throughput` (8 unrolled, independent calls per iteration).
    #[arg(long, value_enum, default_value_t = Shape::Call)]
    pub shape: Shape,
    /// Draw SVG charts: the rows of the run as bars into FILE, and the thread
    /// scaling of the counters and pools (1 to 32 threads, measured after
    /// the rows) into FILE with `-scaling` added to its name.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// A built librseq tree (its tests/param_test_benchmark) for the peers
    /// group: the kernel's param_test scenarios run by librseq next to the
    /// same work on ktl's API. Without it, the KTL_LIBRSEQ environment
    /// variable's; without either, the group's rows are n/a. Checked before
    /// anything is measured.
    #[arg(long, value_name = "DIR")]
    pub librseq: Option<PathBuf>,
    /// Measure nothing: print the saved `ktl bench --json` record FILE as a
    /// Markdown table (the machine and the commit above it), as the
    /// documentation shows it.
    #[arg(
        long,
        value_name = "FILE.json",
        conflicts_with_all = ["samples", "sample_ms", "quick", "filter", "json", "shape", "plot", "librseq"]
    )]
    pub render: Option<PathBuf>,
}

/// `ktl bench`: runs the benchmarks (see [`ktl_bench::run`]), or with
/// `--render`, prints a saved record as Markdown.
pub fn run_cli(args: &BenchArgs) -> Result<(), String> {
    if let Some(path) = &args.render {
        let json = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let table =
            ktl_bench::render_record(&json).map_err(|e| format!("{}: {e}", path.display()))?;
        print!("{table}");
        return Ok(());
    }
    ktl_bench::run(&ktl_bench::Options {
        samples: args.samples,
        sample_ms: args.sample_ms,
        quick: args.quick,
        filter: args.filter.clone(),
        json: args.json,
        shape: args.shape.into(),
        plot: args.plot.clone(),
        librseq: args.librseq.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    #[test]
    fn render_measures_nothing_else() {
        let ok = Cli::try_parse_from(["ktl", "--render", "r.json"]).unwrap();
        assert_eq!(ok.bench.render.as_deref(), Some("r.json".as_ref()));
        assert!(Cli::try_parse_from(["ktl", "--render", "r.json", "--json"]).is_err());
        let err = run_cli(&ok.bench).unwrap_err();
        assert!(err.starts_with("cannot read r.json: "), "{err}");
        assert!(Cli::try_parse_from(["ktl", "--render", "r.json", "--librseq", "d"]).is_err());
    }

    #[test]
    fn librseq_names_a_tree_that_is_checked_before_the_run() {
        let none = Cli::try_parse_from(["ktl"]).unwrap();
        assert_eq!(none.bench.librseq, None);
        let given = Cli::try_parse_from(["ktl", "--librseq", "/no/such/librseq"]).unwrap();
        assert_eq!(
            given.bench.librseq.as_deref(),
            Some("/no/such/librseq".as_ref())
        );
        assert!(Cli::try_parse_from(["ktl", "--librseq"]).is_err());
        // A tree that is not there fails before anything is measured.
        let err = run_cli(&given.bench).unwrap_err();
        assert_eq!(
            err,
            "--librseq /no/such/librseq: no such directory (give a built librseq tree)"
        );
    }
}
