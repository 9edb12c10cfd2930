//! The per-CPU counter and histogram through the ecosystem's interfaces
//! (cargo features `metrics` and `prometheus-client`): their output equals
//! the crates' own for the same observations, and 10^7 increments and
//! observations from 8 threads count exactly through each.
//!
//! Run with `cargo test -p ktl --features metrics,prometheus-client --test
//! metrics_integrations`.
#![cfg(all(feature = "metrics", feature = "prometheus-client"))]

use ktl::metrics::PerCpuRecorder;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter as PcCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram as PcHistogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Observations for the golden tests: on and around the bounds, below the
/// first, above the last, negative, and NaN last. All are multiples of
/// 1/64, so every partial sum is exact and the sums agree whatever order
/// they are added in (ktl adds per bucket and per CPU).
const VALUES: [f64; 12] = [
    0.5, 1.0, 1.015625, 2.0, 3.5, 4.0, 7.75, 8.0, 8.5, 100.0, -2.0, 0.0,
];

fn encoded(registry: &Registry) -> String {
    let mut text = String::new();
    encode(&mut text, registry).expect("encoding to a String does not fail");
    text
}

#[test]
fn prometheus_client_encodes_ktl_types_as_its_own() {
    let bounds: Vec<f64> = exponential_buckets(1.0, 2.0, 4).collect(); // 1 2 4 8
    let mut theirs = Registry::default();
    let mut ours = Registry::default();

    let pc_counter = PcCounter::<u64>::default();
    let ktl_counter = ktl::prometheus::Counter::default();
    theirs.register("requests", "Requests served", pc_counter.clone());
    ours.register("requests", "Requests served", ktl_counter.clone());

    let pc_hist = PcHistogram::new(bounds.iter().copied());
    let ktl_hist = ktl::prometheus::Histogram::new(bounds.iter().copied()).unwrap();
    theirs.register("latency_seconds", "Latency", pc_hist.clone());
    ours.register("latency_seconds", "Latency", ktl_hist.clone());

    // The raw per-CPU types register too, by value.
    let raw = ktl::percpu::PerCpuCounterU64::new();
    raw.add(7);
    let pc_raw = PcCounter::<u64>::default();
    pc_raw.inc_by(7);
    theirs.register("raw", "A counter given by value", pc_raw);
    ours.register("raw", "A counter given by value", raw);

    // A family of labelled counters, in registries of their own: a family
    // keeps its label sets in a hash map, so two families list the same
    // sets in different orders, and only the sorted lines compare.
    type Labels = Vec<(String, String)>;
    let pc_family = Family::<Labels, PcCounter<u64>>::default();
    let ktl_family = Family::<Labels, ktl::prometheus::Counter>::default();
    let mut theirs_family = Registry::default();
    let mut ours_family = Registry::default();
    theirs_family.register("hits", "Hits by route", pc_family.clone());
    ours_family.register("hits", "Hits by route", ktl_family.clone());

    // Before any observation, then after each one.
    assert_eq!(encoded(&ours), encoded(&theirs));
    for (i, v) in VALUES.iter().copied().enumerate() {
        pc_counter.inc_by(i as u64);
        ktl_counter.inc_by(i as u64);
        pc_hist.observe(v);
        ktl_hist.observe(v);
        let route = vec![("route".to_owned(), format!("/{}", i % 3))];
        pc_family.get_or_create(&route).inc();
        ktl_family.get_or_create(&route).inc();
        assert_eq!(encoded(&ours), encoded(&theirs), "after {v}");
        let (a, b) = (encoded(&ours_family), encoded(&theirs_family));
        assert_eq!(sorted_lines(&a), sorted_lines(&b), "after {v}");
    }
    assert!(encoded(&ours_family).contains("hits_total{route=\"/0\"} 4\n"));
    // NaN: the crates put it in +Inf and their sums become NaN.
    pc_hist.observe(f64::NAN);
    ktl_hist.observe(f64::NAN);
    let text = encoded(&ours);
    assert_eq!(text, encoded(&theirs));
    assert!(text.contains("latency_seconds_sum NaN\n"), "{text}");
    assert!(
        text.contains("latency_seconds_bucket{le=\"+Inf\"} 13\n"),
        "{text}"
    );
}

fn sorted_lines(text: &str) -> Vec<&str> {
    let mut v: Vec<&str> = text.lines().collect();
    v.sort_unstable();
    v
}

/// The sample lines of a Prometheus text payload, sorted: the exporters
/// order metrics differently (by a hash map, or by name), and the format
/// gives the order no meaning.
fn samples(text: &str) -> Vec<&str> {
    let mut v: Vec<&str> = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    v.sort_unstable();
    v
}

/// The `# TYPE` and `# HELP` lines, sorted.
fn comments(text: &str) -> Vec<&str> {
    let mut v: Vec<&str> = text.lines().filter(|l| l.starts_with('#')).collect();
    v.sort_unstable();
    v
}

#[test]
fn metrics_recorder_renders_as_the_prometheus_exporter_does() {
    let bounds = [1.0, 2.0, 4.0, 8.0];
    let ours = PerCpuRecorder::new().with_buckets(&bounds).unwrap();
    let ours_handle = ours.handle();
    let theirs = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&bounds)
        .unwrap()
        .build_recorder();
    let theirs_handle = theirs.handle();
    let run = |r: &dyn metrics::Recorder| {
        metrics::with_local_recorder(r, || {
            metrics::describe_counter!("requests", "Requests served");
            metrics::describe_histogram!("latency_seconds", "Latency");
            for (i, v) in VALUES.iter().copied().enumerate() {
                metrics::counter!("requests", "route" => format!("/{}", i % 3)).increment(i as u64);
                metrics::histogram!("latency_seconds").record(v);
                metrics::gauge!("depth").set(v);
            }
            metrics::counter!("requests", "route" => "/0").absolute(1000);
        })
    };
    run(&ours);
    run(&theirs);
    let (a, b) = (ours_handle.render(), theirs_handle.render());
    assert_eq!(samples(&a), samples(&b), "ours:\n{a}\ntheirs:\n{b}");
    assert_eq!(comments(&a), comments(&b), "ours:\n{a}\ntheirs:\n{b}");
    assert!(a.contains("requests{route=\"/0\"} 1000\n"), "{a}");
}

#[test]
fn ten_million_updates_count_exactly_through_both_crates() {
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 1_250_000;
    // Values 0, 1/4, ..., 15/4: exact partial sums (see VALUES).
    let value = |i: u64| (i % 16) as f64 * 0.25;
    let bounds = [0.5, 1.0, 2.0];
    let (mut want_buckets, mut want_sum) = ([0u64; 4], 0.0);
    for i in 0..PER_THREAD {
        let v = value(i);
        want_buckets[bounds.iter().position(|&b| v <= b).unwrap_or(3)] += THREADS;
        want_sum += v * THREADS as f64;
    }
    let cumulative: Vec<u64> = want_buckets
        .iter()
        .scan(0, |acc, &c| {
            *acc += c;
            Some(*acc)
        })
        .collect();
    let total = THREADS * PER_THREAD;

    // metrics: handles from the recorder, used from 8 threads.
    let recorder = PerCpuRecorder::new().with_buckets(&bounds).unwrap();
    let handle = recorder.handle();
    let (counter, histogram) = metrics::with_local_recorder(&recorder, || {
        (metrics::counter!("ops"), metrics::histogram!("values"))
    });
    // prometheus-client: ktl's handles in a registry.
    let pc_counter = ktl::prometheus::Counter::default();
    let pc_hist = ktl::prometheus::Histogram::new(bounds).unwrap();
    let mut registry = Registry::default();
    registry.register("ops", "", pc_counter.clone());
    registry.register("values", "", pc_hist.clone());

    std::thread::scope(|s| {
        for _ in 0..THREADS {
            let (counter, histogram) = (counter.clone(), histogram.clone());
            let (pc_counter, pc_hist) = (&pc_counter, &pc_hist);
            s.spawn(move || {
                for i in 0..PER_THREAD {
                    counter.increment(1);
                    histogram.record(value(i));
                    pc_counter.inc();
                    pc_hist.observe(value(i));
                }
            });
        }
    });

    let text = handle.render();
    assert!(text.contains(&format!("\nops {total}\n")), "{text}");
    assert!(text.contains(&format!("values_count {total}\n")), "{text}");
    assert!(text.contains(&format!("values_sum {want_sum}\n")), "{text}");
    for (b, n) in ["0.5", "1", "2", "+Inf"].iter().zip(&cumulative) {
        assert!(
            text.contains(&format!("values_bucket{{le=\"{b}\"}} {n}\n")),
            "{text}"
        );
    }

    assert_eq!(pc_counter.get(), total);
    let s = pc_hist.inner().snapshot();
    assert_eq!(s.buckets(), want_buckets);
    assert_eq!(s.sum(), want_sum);
    let text = encoded(&registry);
    assert!(text.contains(&format!("ops_total {total}\n")), "{text}");
    assert!(text.contains(&format!("values_count {total}\n")), "{text}");
}
