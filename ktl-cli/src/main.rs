//! `ktl`: the KTLS report, benchmarks and self-checks.
//!
//! With no subcommand it prints the report (`ktl info`) and then a short
//! benchmark (`ktl bench --quick`).

mod bench;
mod check;
mod info;
mod stress;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// With the `alloc` feature, the command allocates through ktl-alloc.
#[cfg(feature = "alloc")]
#[global_allocator]
static GLOBAL: ktl_alloc::PerCpuAlloc = ktl_alloc::PerCpuAlloc::new();

/// Kernel thread-local storage (the Linux rseq area): report, benchmark and check.
#[derive(Parser, Debug)]
#[command(name = "ktl", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Report the kernel's rseq support, who owns the area, its layout and the
    /// calling thread's live values.
    Info(info::InfoArgs),
    /// Measure the per-thread accessors against their alternatives.
    Bench(bench::BenchArgs),
    /// Verify ktl on this machine: pinned CPUs, nodes, mm_cid, thread churn and fork.
    Check(check::CheckArgs),
    /// Stress the restartable-sequence operations from many threads and check
    /// the results exactly (after the kernel's rseq param_test).
    Stress(stress::StressArgs),
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`ktl info | head`), as Unix tools do,
    // instead of panicking in println!.
    let _ = ktl_bench::os::default_disposition(ktl_bench::os::SIGPIPE);
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Info(args)) => info::run(&args),
        Some(Command::Bench(args)) => bench::run_cli(&args),
        Some(Command::Check(args)) => check::run(&args),
        Some(Command::Stress(args)) => stress::run(&args),
        None => info::run(&info::InfoArgs::default()).and_then(|()| {
            println!();
            ktl_bench::run(&ktl_bench::Options::quick())
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ktl: {e}");
            ExitCode::FAILURE
        }
    }
}
