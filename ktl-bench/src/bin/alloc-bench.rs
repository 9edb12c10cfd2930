//! `alloc-bench --bins DIR ...`: the driver of the allocator benchmark,
//! which runs the four builds of `alloc-workload` and reports (see
//! `ktl_bench::alloc::driver`).

use ktl_bench::alloc::driver::{self, Options};

fn main() {
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("{}", driver::USAGE);
            return;
        }
        Err(e) => {
            eprintln!("alloc-bench: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = driver::run(&options, &mut std::io::stdout().lock()) {
        eprintln!("alloc-bench: {e}");
        std::process::exit(1);
    }
}
