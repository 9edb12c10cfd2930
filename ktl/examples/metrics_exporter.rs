//! Per-CPU counters and histograms for every `counter!` and `histogram!` of
//! a program: install ktl's recorder, count requests and their latencies
//! from several threads, and print the Prometheus text.
//!
//! ```sh
//! cargo run -p ktl --features metrics --example metrics_exporter
//! ```

use ktl::metrics::PerCpuRecorder;
use std::time::Instant;

fn serve(route: &'static str, work: u64) {
    // Handles are resolved once per call site and thread here; in a server
    // they would be kept in the handler's state.
    let requests = metrics::counter!("http_requests", "route" => route);
    let latency = metrics::histogram!("http_request_duration_seconds", "route" => route);
    for i in 0..work {
        let start = Instant::now();
        // The request's work: a little arithmetic.
        let mut x = i;
        for _ in 0..(200 + i % 2000) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        requests.increment(1);
        latency.record(start.elapsed().as_secs_f64());
    }
}

fn main() {
    // Buckets from 100 ns to 10 ms, for this example's short requests.
    let bounds = [1e-7, 1e-6, 2e-6, 5e-6, 1e-5, 1e-4, 1e-3, 1e-2];
    let recorder = match PerCpuRecorder::new().with_buckets(&bounds) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("metrics_exporter: {e}");
            std::process::exit(1);
        }
    };
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        eprintln!("metrics_exporter: a global recorder was installed already");
        std::process::exit(1);
    }
    metrics::describe_counter!("http_requests", "Requests served, by route");
    metrics::describe_histogram!(
        "http_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time to serve a request"
    );

    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..8 {
            let route = if t % 2 == 0 { "/" } else { "/search" };
            s.spawn(move || serve(route, 20_000));
        }
    });
    let took = started.elapsed();

    print!("{}", handle.render());
    eprintln!(
        "metrics_exporter: 160000 requests on 8 threads in {:.1} ms",
        took.as_secs_f64() * 1e3
    );
}
