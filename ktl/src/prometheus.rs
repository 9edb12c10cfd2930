//! ktl's per-CPU counter and histogram in a
//! [`prometheus-client`](https://docs.rs/prometheus-client/0.26) registry
//! (cargo feature `prometheus-client`).
//!
//! [`PerCpuCounterU64`] and [`PerCpuHistogram`] implement the crate's
//! [`EncodeMetric`] and [`TypedMetric`], so they register in a
//! [`Registry`](prometheus_client::registry::Registry) and encode to the
//! same OpenMetrics text as the crate's own
//! [`Counter`](prometheus_client::metrics::counter::Counter) and
//! [`Histogram`](prometheus_client::metrics::histogram::Histogram) with the
//! same observations. A registry owns what it is given, and those types are
//! handles that clone into it; [`Counter`] and [`Histogram`] here are the
//! same (an `Arc` of the per-CPU structure), with the crate's method names,
//! so that switching is a change of `use` lines. They work in
//! [`Family`](prometheus_client::metrics::family::Family) too.
//!
//! ```
//! use ktl::prometheus::{Counter, Histogram};
//! use prometheus_client::encoding::text::encode;
//! use prometheus_client::registry::Registry;
//!
//! let requests = Counter::default();
//! let latency = Histogram::new([0.001, 0.01, 0.1]).unwrap();
//! let mut registry = Registry::default();
//! registry.register("requests", "Requests served", requests.clone());
//! registry.register("latency_seconds", "Time to serve a request", latency.clone());
//!
//! std::thread::scope(|s| {
//!     for _ in 0..4 {
//!         s.spawn(|| {
//!             for i in 0..100 {
//!                 requests.inc();
//!                 latency.observe(0.004 * f64::from(i % 3));
//!             }
//!         });
//!     }
//! });
//! let mut text = String::new();
//! encode(&mut text, &registry).unwrap();
//! assert!(text.contains("requests_total 400\n"));
//! assert!(text.contains("latency_seconds_bucket{le=\"0.001\"} 136\n"));
//! assert!(text.contains("latency_seconds_bucket{le=\"0.01\"} 400\n"));
//! ```
//!
//! A snapshot of a histogram that writers are updating is taken bucket by
//! bucket (see [`PerCpuHistogram::snapshot`]); the crate's own histogram
//! takes a lock for it instead, which is what makes its `observe` a shared
//! lock.

use crate::percpu::{BucketError, PerCpuCounterU64, PerCpuHistogram};
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};
use std::sync::Arc;

impl EncodeMetric for PerCpuCounterU64 {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.sum(), None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

impl TypedMetric for PerCpuCounterU64 {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for PerCpuHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let s = self.snapshot();
        // The crate's encoders take each bucket's own count with its upper
        // bound, `+Inf` last, and accumulate them.
        let buckets: Vec<(f64, u64)> = s
            .bounds()
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(s.buckets().iter().copied())
            .collect();
        encoder.encode_histogram::<NoLabelSet>(s.sum(), s.count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl TypedMetric for PerCpuHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

/// A per-CPU counter handle for a registry: clones share one
/// [`PerCpuCounterU64`], as clones of the crate's `Counter` share one
/// atomic.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<PerCpuCounterU64>);

impl Counter {
    /// Adds one; returns nothing (the crate's `inc` returns the value
    /// before, which a per-CPU counter only has by summing every CPU: use
    /// [`get`](Self::get) for that).
    #[inline]
    pub fn inc(&self) {
        self.0.add(1);
    }

    /// Adds `v`.
    #[inline]
    pub fn inc_by(&self, v: u64) {
        self.0.add(v);
    }

    /// The value: the sum over the CPUs, exact once writers are quiescent.
    pub fn get(&self) -> u64 {
        self.0.sum()
    }

    /// The per-CPU counter behind the handle.
    pub fn inner(&self) -> &PerCpuCounterU64 {
        &self.0
    }
}

impl EncodeMetric for Counter {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

impl TypedMetric for Counter {
    const TYPE: MetricType = MetricType::Counter;
}

/// A per-CPU histogram handle for a registry: clones share one
/// [`PerCpuHistogram`].
#[derive(Debug, Clone)]
pub struct Histogram(Arc<PerCpuHistogram>);

impl Histogram {
    /// A histogram with these upper bounds, as the crate's
    /// `Histogram::new(buckets)` (for example with its `exponential_buckets`
    /// or `linear_buckets`). Unlike the crate's, which drops non-finite
    /// bounds, it refuses bounds that are not finite and strictly
    /// ascending.
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Result<Self, BucketError> {
        Ok(Histogram(Arc::new(PerCpuHistogram::new(bounds)?)))
    }

    /// Counts `v` in its bucket and adds it to the sum: one critical
    /// section on the current CPU's bucket.
    #[inline]
    pub fn observe(&self, v: f64) {
        self.0.observe(v);
    }

    /// The per-CPU histogram behind the handle.
    pub fn inner(&self) -> &PerCpuHistogram {
        &self.0
    }
}

impl From<PerCpuHistogram> for Histogram {
    fn from(h: PerCpuHistogram) -> Self {
        Histogram(Arc::new(h))
    }
}

impl EncodeMetric for Histogram {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}
