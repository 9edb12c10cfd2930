//! The charts of `--plot`: a tiny run writes the bar chart and the
//! thread-scaling chart as well-formed SVG (and its JSON report carries the
//! scaling points), and a path that cannot be written is a clear error
//! before anything is measured. No measured value is asserted.

use ktl_bench::Options;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// What a run left: its result, its report and its messages.
struct Output {
    result: Result<(), String>,
    stdout: String,
    stderr: String,
}

/// Runs the benchmark with the options of `ktl bench --samples 1
/// --sample-ms 1 --filter FILTER --plot PLOT` (and `--json`).
fn ktl_bench(filter: &str, plot: &Path, json: bool) -> Output {
    let options = Options {
        samples: Some(1),
        sample_ms: Some(1),
        filter: Some(filter.to_owned()),
        json,
        plot: Some(plot.to_owned()),
        ..Options::default()
    };
    let (mut out, mut log) = (Vec::new(), Vec::new());
    let result = ktl_bench::run_to(&options, &mut out, &mut log);
    Output {
        result,
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&log).into_owned(),
    }
}

/// A fresh directory for one test, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("ktl-plot-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Checks that `text` is a well-formed XML document whose root is `<svg>`:
/// every tag closed in order, and every `&` an entity.
fn assert_well_formed_svg(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("read the chart");
    let mut open: Vec<&str> = Vec::new();
    let mut roots = 0;
    let mut rest = text.as_str();
    let entities = |s: &str| {
        s.match_indices('&').all(|(i, _)| {
            let tail = &s[i..];
            ["&lt;", "&gt;", "&amp;", "&quot;", "&apos;", "&#"]
                .iter()
                .any(|e| tail.starts_with(e))
        })
    };
    while let Some(start) = rest.find('<') {
        assert!(entities(&rest[..start]), "a bare & in {path:?}");
        let end = rest[start..].find('>').expect("an unclosed tag") + start;
        let tag = &rest[start + 1..end];
        if tag.starts_with('?') || tag.starts_with('!') {
            // declaration or comment
        } else if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(
                open.pop(),
                Some(name.trim()),
                "mismatched </{name}> in {path:?}"
            );
        } else {
            let name = tag
                .split_whitespace()
                .next()
                .unwrap_or("")
                .trim_end_matches('/');
            assert!(!name.is_empty(), "an empty tag in {path:?}");
            if open.is_empty() {
                assert_eq!(name, "svg", "the root of {path:?}");
                roots += 1;
            }
            assert!(entities(tag), "a bare & in a tag of {path:?}");
            if !tag.ends_with('/') {
                open.push(name);
            }
        }
        rest = &rest[end + 1..];
    }
    assert!(open.is_empty(), "unclosed tags {open:?} in {path:?}");
    assert_eq!(roots, 1, "one <svg> root in {path:?}");
    text
}

#[test]
fn a_tiny_run_writes_both_charts() {
    let dir = TempDir::new("tiny");
    let bars = dir.0.join("chart.svg");
    let scaling = dir.0.join("chart-scaling.svg");
    // "counter: ", not "counter": the metric kind's labels name Counters too.
    let out = ktl_bench("counter: ", &bars, true);
    let (stdout, stderr) = (&out.stdout, &out.stderr);
    assert!(
        out.result.is_ok(),
        "ktl bench failed: {:?}\n{stdout}\n{stderr}",
        out.result
    );
    assert!(stderr.contains("wrote the bar chart"), "{stderr}");
    assert!(
        stderr.contains("wrote the thread-scaling chart"),
        "{stderr}"
    );

    let svg = assert_well_formed_svg(&bars);
    assert!(svg.contains("counter: PerCpuCounter::add (2 threads)"));
    assert!(svg.contains("counter: Mutex&lt;u64&gt; add (8 threads)"));
    let svg = assert_well_formed_svg(&scaling);
    for line in [
        "PerCpuCounter::add",
        "shared AtomicU64 fetch_add",
        "Mutex&lt;u64&gt; add",
    ] {
        assert!(svg.contains(line), "{line} in the scaling chart");
    }

    // The JSON report carries the points the scaling chart draws.
    let report: Value = serde_json::from_str(stdout).expect("JSON on stdout");
    assert_eq!(report["schema"], "ktl-bench/1");
    let points = report["scaling"].as_array().expect("scaling");
    assert_eq!(
        points.len(),
        4 * 5,
        "4 counters at 1, 2, 4, 8 and 32 threads"
    );
    let threads: Vec<u64> = points[..5]
        .iter()
        .map(|p| p["threads"].as_u64().unwrap())
        .collect();
    assert_eq!(threads, [1, 2, 4, 8, 32]);
    assert!(points.iter().all(|p| p["structure"] == "counter"));
    let rows = report["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 12);
    assert!(rows.iter().all(|r| r["group"] == "percpu"));
}

#[test]
fn an_unwritable_path_is_a_clear_error_before_the_run() {
    let dir = TempDir::new("unwritable");
    let missing = dir.0.join("no-such-dir").join("chart.svg");
    for (path, why) in [
        (missing.as_path(), "is not a directory"),
        (dir.0.as_path(), "is a directory"),
    ] {
        let out = ktl_bench("counter: Mutex", path, false);
        let err = out.result.expect_err("an unwritable chart");
        assert!(err.contains("cannot write the chart to"), "{err}");
        assert!(err.contains(why), "{err}");
        assert!(out.stdout.is_empty(), "nothing was measured");
        assert!(out.stderr.is_empty(), "{}", out.stderr);
    }
    assert!(!missing.exists());
}
