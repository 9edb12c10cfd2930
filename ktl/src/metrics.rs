//! ktl's per-CPU counter and histogram behind the
//! [`metrics`](https://docs.rs/metrics/0.24) facade (cargo feature
//! `metrics`).
//!
//! - [`PerCpuCounterU64`] implements [`CounterFn`], so
//!   `metrics::Counter::from_arc(Arc::new(PerCpuCounterU64::new()))` is a
//!   `metrics` counter whose increments are one restartable sequence each;
//! - [`PerCpuHistogram`] implements [`HistogramFn`];
//! - [`PerCpuRecorder`] is a [`Recorder`] that makes every `counter!` and
//!   `histogram!` of a program per-CPU (gauges are one atomic each, as in
//!   `metrics` itself), and its [`PerCpuHandle`] renders what it holds in
//!   the Prometheus text format: the exporter path.
//!
//! ```
//! use ktl::metrics::PerCpuRecorder;
//!
//! let recorder = PerCpuRecorder::new();
//! let handle = recorder.handle();
//! metrics::with_local_recorder(&recorder, || {
//!     // Resolve the handles once, outside the hot loop.
//!     let requests = metrics::counter!("requests", "route" => "/");
//!     let latency = metrics::histogram!("latency_seconds");
//!     std::thread::scope(|s| {
//!         for _ in 0..4 {
//!             s.spawn(|| {
//!                 for i in 0..100 {
//!                     requests.increment(1);
//!                     latency.record(0.004 * f64::from(i % 3));
//!                 }
//!             });
//!         }
//!     });
//! });
//! let text = handle.render();
//! assert!(text.contains("requests{route=\"/\"} 400\n"));
//! assert!(text.contains("latency_seconds_count 400\n"));
//! ```
//!
//! **What `absolute` means for a per-CPU counter.** `metrics` defines
//! `absolute(v)` as "set the counter to at least `v`", for callers that
//! mirror a counter kept elsewhere. A per-CPU counter has no single word
//! to store `v` in: `absolute(v)` sums the CPUs and, when the sum is below
//! `v`, adds the difference. The sum it reads may miss increments that
//! race with it, so the counter may end above `v` (never below it, once
//! the call returns). Calls of `absolute` are serialised by one process-wide
//! lock, so that two of them do not both add the same difference; it is
//! meant for occasional synchronisation, not for hot paths.
//!
//! `counter!` and `histogram!` look the key up in the recorder each time
//! they run (a read lock and a hash): keep the handles they return, as the
//! example does, where the loop is hot.

use crate::percpu::{BucketError, PerCpuCounterU64, PerCpuHistogram};
use ::metrics::{
    Counter, CounterFn, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

/// Serialises `absolute` calls (see the [module docs](self)).
static ABSOLUTE: Mutex<()> = Mutex::new(());

impl CounterFn for PerCpuCounterU64 {
    #[inline]
    fn increment(&self, value: u64) {
        self.add(value);
    }

    /// Sets the counter to at least `value`: adds the difference when the
    /// sum is below it (see the [module docs](self) for what that means
    /// while other threads count).
    fn absolute(&self, value: u64) {
        let _serial = ABSOLUTE.lock().unwrap_or_else(PoisonError::into_inner);
        let now = self.sum();
        if value > now {
            self.add(value - now);
        }
    }
}

impl HistogramFn for PerCpuHistogram {
    #[inline]
    fn record(&self, value: f64) {
        self.observe(value);
    }
}

/// What a recorder holds under one key.
#[derive(Default)]
struct Metrics {
    counters: HashMap<Key, Arc<PerCpuCounterU64>>,
    gauges: HashMap<Key, Arc<AtomicU64>>,
    histograms: HashMap<Key, Arc<PerCpuHistogram>>,
    /// Descriptions by metric name: `# HELP` lines.
    help: HashMap<String, String>,
}

struct Inner {
    metrics: RwLock<Metrics>,
    bounds: Mutex<Bounds>,
}

/// The bounds of new histograms: by name, else the default.
#[derive(Debug)]
struct Bounds {
    default: Vec<f64>,
    by_name: HashMap<String, Vec<f64>>,
}

/// A [`Recorder`] whose counters are [`PerCpuCounterU64`] and whose
/// histograms are [`PerCpuHistogram`] (gauges: an `AtomicU64` holding the
/// bits of an `f64`, as `metrics` implements them). Install it with
/// `metrics::set_global_recorder`, or use it for a scope with
/// `metrics::with_local_recorder`; [`handle`](Self::handle) renders it.
///
/// Histograms get [`PerCpuHistogram::DEFAULT_BOUNDS`] unless
/// [`with_buckets`](Self::with_buckets) or
/// [`with_buckets_for`](Self::with_buckets_for) say otherwise.
pub struct PerCpuRecorder {
    inner: Arc<Inner>,
}

impl Default for PerCpuRecorder {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for PerCpuRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerCpuRecorder")
            .field("bounds", &*self.bounds())
            .finish_non_exhaustive()
    }
}

impl PerCpuRecorder {
    /// A recorder with no metrics, whose histograms get the default bounds.
    pub fn new() -> Self {
        PerCpuRecorder {
            inner: Arc::new(Inner {
                metrics: RwLock::new(Metrics::default()),
                bounds: Mutex::new(Bounds {
                    default: PerCpuHistogram::DEFAULT_BOUNDS.to_vec(),
                    by_name: HashMap::new(),
                }),
            }),
        }
    }

    /// The bounds of every histogram not named in
    /// [`with_buckets_for`](Self::with_buckets_for) and registered from now
    /// on (finite, strictly ascending; `+Inf` is added).
    pub fn with_buckets(self, bounds: &[f64]) -> Result<Self, BucketError> {
        crate::percpu::check_bounds(bounds)?;
        self.bounds().default = bounds.to_vec();
        Ok(self)
    }

    /// The bounds of the histograms named `name` registered from now on.
    pub fn with_buckets_for(self, name: &str, bounds: &[f64]) -> Result<Self, BucketError> {
        crate::percpu::check_bounds(bounds)?;
        self.bounds()
            .by_name
            .insert(name.to_owned(), bounds.to_vec());
        Ok(self)
    }

    fn bounds(&self) -> std::sync::MutexGuard<'_, Bounds> {
        self.inner
            .bounds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A handle that renders the recorder's metrics; it stays valid after
    /// the recorder is installed.
    pub fn handle(&self) -> PerCpuHandle {
        PerCpuHandle {
            inner: Arc::clone(&self.inner),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Metrics> {
        self.inner
            .metrics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Metrics> {
        self.inner
            .metrics
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn describe(&self, key: KeyName, description: SharedString) {
        self.write()
            .help
            .insert(key.as_str().to_owned(), description.into_owned());
    }
}

impl Recorder for PerCpuRecorder {
    fn describe_counter(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.describe(key, description);
    }

    fn describe_gauge(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.describe(key, description);
    }

    fn describe_histogram(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.describe(key, description);
    }

    fn register_counter(&self, key: &Key, _metadata: &Metadata<'_>) -> Counter {
        if let Some(c) = self.read().counters.get(key) {
            return Counter::from_arc(Arc::clone(c));
        }
        let c = self
            .write()
            .counters
            .entry(key.clone())
            .or_insert_with(|| Arc::new(PerCpuCounterU64::new()))
            .clone();
        Counter::from_arc(c)
    }

    fn register_gauge(&self, key: &Key, _metadata: &Metadata<'_>) -> Gauge {
        if let Some(g) = self.read().gauges.get(key) {
            return Gauge::from_arc(Arc::clone(g));
        }
        let g = self
            .write()
            .gauges
            .entry(key.clone())
            .or_insert_with(|| Arc::new(AtomicU64::new(0.0f64.to_bits())))
            .clone();
        Gauge::from_arc(g)
    }

    fn register_histogram(&self, key: &Key, _metadata: &Metadata<'_>) -> Histogram {
        if let Some(h) = self.read().histograms.get(key) {
            return Histogram::from_arc(Arc::clone(h));
        }
        let bounds = {
            let b = self.bounds();
            b.by_name.get(key.name()).unwrap_or(&b.default).clone()
        };
        let h = self
            .write()
            .histograms
            .entry(key.clone())
            .or_insert_with(|| {
                // The bounds were checked when they were configured.
                let h = PerCpuHistogram::new(bounds.iter().copied());
                Arc::new(h.unwrap_or_else(|_| PerCpuHistogram::with_default_bounds()))
            })
            .clone();
        Histogram::from_arc(h)
    }
}

/// Renders a [`PerCpuRecorder`]'s metrics; cheap to clone.
#[derive(Clone)]
pub struct PerCpuHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PerCpuHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerCpuHandle").finish_non_exhaustive()
    }
}

impl PerCpuHandle {
    /// The metrics in the Prometheus text exposition format (version
    /// 0.0.4): for each name, sorted, its `# HELP` line when it was
    /// described, its `# TYPE` line, then one sample per label set (sorted
    /// too); histograms as cumulative `_bucket` samples with `le` labels,
    /// then `_sum` and `_count`. Counters and histograms are summed over
    /// the CPUs (exact once writers are quiescent).
    pub fn render(&self) -> String {
        let m = self
            .inner
            .metrics
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let mut out = String::new();
        let mut names: Vec<(&str, &'static str)> = Vec::new();
        names.extend(m.counters.keys().map(|k| (k.name(), "counter")));
        names.extend(m.gauges.keys().map(|k| (k.name(), "gauge")));
        names.extend(m.histograms.keys().map(|k| (k.name(), "histogram")));
        names.sort_unstable();
        names.dedup();
        for (name, kind) in names {
            let metric = sanitize(name);
            if let Some(help) = m.help.get(name) {
                let _ = writeln!(out, "# HELP {metric} {}", escape_help(help));
            }
            let _ = writeln!(out, "# TYPE {metric} {kind}");
            match kind {
                "counter" => {
                    for (labels, c) in sorted(&m.counters, name) {
                        let _ = writeln!(out, "{metric}{} {}", label_set(&labels, None), c.sum());
                    }
                }
                "gauge" => {
                    for (labels, g) in sorted(&m.gauges, name) {
                        let v = f64::from_bits(g.load(std::sync::atomic::Ordering::Relaxed));
                        let _ = writeln!(out, "{metric}{} {}", label_set(&labels, None), number(v));
                    }
                }
                _ => {
                    for (labels, h) in sorted(&m.histograms, name) {
                        let s = h.snapshot();
                        for (bound, n) in s.cumulative() {
                            let le = number(bound);
                            let _ = writeln!(
                                out,
                                "{metric}_bucket{} {n}",
                                label_set(&labels, Some(&le))
                            );
                        }
                        let set = label_set(&labels, None);
                        let _ = writeln!(out, "{metric}_sum{set} {}", number(s.sum()));
                        let _ = writeln!(out, "{metric}_count{set} {}", s.count());
                    }
                }
            }
        }
        out
    }
}

/// The metrics of `name` in `map`, with their labels, sorted by labels.
fn sorted<'a, T>(map: &'a HashMap<Key, Arc<T>>, name: &str) -> Vec<(Vec<(String, String)>, &'a T)> {
    let mut v: Vec<_> = map
        .iter()
        .filter(|(k, _)| k.name() == name)
        .map(|(k, m)| {
            let labels: Vec<(String, String)> = k
                .labels()
                .map(|l| (sanitize(l.key()), l.value().to_owned()))
                .collect();
            (labels, &**m)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// `{k="v",...}` (with `le` last when given), or nothing without labels.
fn label_set(labels: &[(String, String)], le: Option<&str>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_value(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// A metric or label name with every character outside `[a-zA-Z0-9_:]`
/// replaced by `_`, and a leading digit prefixed with `_`.
fn sanitize(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

/// A label value with `\`, `"` and newlines escaped.
fn escape_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A `# HELP` text with `\` and newlines escaped.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A sample value or bound: `+Inf`, `-Inf`, `NaN`, or the shortest decimal
/// that reads back as the same `f64`.
fn number(v: f64) -> String {
    if v == f64::INFINITY {
        "+Inf".to_owned()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else if v.is_nan() {
        "NaN".to_owned()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_labels_and_numbers_are_rendered_safely() {
        assert_eq!(sanitize("http.requests-total"), "http_requests_total");
        assert_eq!(sanitize("9lives"), "_9lives");
        assert_eq!(escape_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(3.0), "3");
        assert_eq!(label_set(&[], None), "");
        assert_eq!(
            label_set(&[("a".into(), "x".into())], Some("+Inf")),
            "{a=\"x\",le=\"+Inf\"}"
        );
    }

    #[test]
    fn absolute_sets_at_least() {
        let c = PerCpuCounterU64::new();
        c.increment(5);
        c.absolute(3);
        assert_eq!(c.sum(), 5);
        c.absolute(12);
        assert_eq!(c.sum(), 12);
    }

    #[test]
    fn the_recorder_renders_every_kind() {
        let r = PerCpuRecorder::new()
            .with_buckets_for("size", &[1.0, 10.0])
            .unwrap();
        let h = r.handle();
        ::metrics::with_local_recorder(&r, || {
            ::metrics::describe_counter!("hits", "Cache hits");
            ::metrics::counter!("hits", "cache" => "b").increment(2);
            ::metrics::counter!("hits", "cache" => "a").increment(3);
            ::metrics::gauge!("depth").set(1.5);
            ::metrics::histogram!("size").record(4.0);
            ::metrics::histogram!("size").record(40.0);
        });
        let want = "\
# HELP hits Cache hits
# TYPE hits counter
hits{cache=\"a\"} 3
hits{cache=\"b\"} 2
# TYPE depth gauge
depth 1.5
# TYPE size histogram
size_bucket{le=\"1\"} 0
size_bucket{le=\"10\"} 1
size_bucket{le=\"+Inf\"} 2
size_sum 44
size_count 2
";
        // Sorted by name: depth, hits, size.
        let text = h.render();
        let order: Vec<_> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        assert_eq!(
            order,
            [
                "# TYPE depth gauge",
                "# TYPE hits counter",
                "# TYPE size histogram"
            ]
        );
        for line in want.lines() {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
        assert!(
            PerCpuRecorder::new().with_buckets(&[2.0, 1.0]).is_err(),
            "descending bounds are refused"
        );
    }
}
