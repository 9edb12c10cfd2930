//! `alloc-workload <workload> <threads> [--scale F]`: one workload of the
//! allocator benchmark, run once under the global allocator this build
//! chose by the features of ktl-bench, as one JSON line on stdout (see
//! `ktl_bench::alloc`). With several allocator features, the first of ktl,
//! mimalloc and jemalloc is the global allocator.

use ktl_bench::alloc::child::{self, Args};

#[cfg(feature = "alloc-ktl")]
#[global_allocator]
static GLOBAL: ktl_alloc::PerCpuAlloc = ktl_alloc::PerCpuAlloc::new();

#[cfg(all(feature = "alloc-mimalloc", not(feature = "alloc-ktl")))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(all(
    feature = "alloc-jemalloc",
    not(any(feature = "alloc-ktl", feature = "alloc-mimalloc"))
))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The allocator of this build.
const ALLOCATOR: &str = if cfg!(feature = "alloc-ktl") {
    "ktl"
} else if cfg!(feature = "alloc-mimalloc") {
    "mimalloc"
} else if cfg!(feature = "alloc-jemalloc") {
    "jemalloc"
} else {
    "glibc"
};

/// ktl's front end, in the ktl build.
fn front_end() -> Option<String> {
    #[cfg(feature = "alloc-ktl")]
    {
        Some(ktl_alloc::front_end().to_string())
    }
    #[cfg(not(feature = "alloc-ktl"))]
    {
        None
    }
}

fn main() {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{}", child::USAGE);
            return;
        }
        Err(e) => {
            eprintln!("alloc-workload: {e}\n{}", child::USAGE);
            std::process::exit(2);
        }
    };
    match child::run(ALLOCATOR, &args, front_end) {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("alloc-workload ({ALLOCATOR}): {e}");
            std::process::exit(1);
        }
    }
}
