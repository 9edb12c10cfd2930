//! ktl's per-CPU counter and histogram in a `prometheus-client` registry:
//! count requests and their latencies from several threads, and print the
//! OpenMetrics text.
//!
//! ```sh
//! cargo run -p ktl --features prometheus-client --example prometheus_client
//! ```

use ktl::prometheus::{Counter, Histogram};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Route {
    route: &'static str,
}

fn main() {
    let requests = Family::<Route, Counter>::default();
    // 250 ns, 500 ns, 1 us, ... 64 us.
    let latency = match Histogram::new(exponential_buckets(2.5e-7, 2.0, 9)) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("prometheus_client: {e}");
            std::process::exit(1);
        }
    };
    let mut registry = Registry::default();
    registry.register(
        "http_requests",
        "Requests served, by route",
        requests.clone(),
    );
    registry.register(
        "http_request_duration_seconds",
        "Time to serve a request",
        latency.clone(),
    );

    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..8 {
            let (requests, latency) = (&requests, &latency);
            s.spawn(move || {
                let route = Route {
                    route: if t % 2 == 0 { "/" } else { "/search" },
                };
                // The family's lookup is a lock and a hash: take the
                // counter once, then every increment is one restartable
                // sequence.
                let hits = requests.get_or_create(&route).clone();
                for i in 0..20_000u64 {
                    let start = Instant::now();
                    let mut x = i;
                    for _ in 0..(200 + i % 2000) {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    }
                    std::hint::black_box(x);
                    hits.inc();
                    latency.observe(start.elapsed().as_secs_f64());
                }
            });
        }
    });
    let took = started.elapsed();

    let mut text = String::new();
    if let Err(e) = encode(&mut text, &registry) {
        eprintln!("prometheus_client: encoding failed: {e}");
        std::process::exit(1);
    }
    print!("{text}");
    eprintln!(
        "prometheus_client: 160000 requests on 8 threads in {:.1} ms",
        took.as_secs_f64() * 1e3
    );
}
