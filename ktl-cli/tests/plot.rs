//! `ktl bench --plot` in a real process: a tiny run writes the bar chart and
//! the thread-scaling chart as well-formed SVG (and its JSON report carries
//! the scaling points), and a path that cannot be written is a clear error
//! before anything is measured. No measured value is asserted.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ktl_bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ktl"))
        .arg("bench")
        .args(args)
        .env_remove("GLIBC_TUNABLES")
        .output()
        .expect("run ktl bench")
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
    let out = ktl_bench(&[
        "--filter",
        "counter",
        "--samples",
        "1",
        "--sample-ms",
        "1",
        "--json",
        "--plot",
        bars.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "ktl bench failed:\n{stdout}\n{stderr}"
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
    let report: Value = serde_json::from_str(&stdout).expect("JSON on stdout");
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
        let out = ktl_bench(&[
            "--filter",
            "counter: Mutex",
            "--samples",
            "1",
            "--sample-ms",
            "1",
            "--plot",
            path.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains("cannot write the chart to"), "{stderr}");
        assert!(stderr.contains(why), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(out.stdout.is_empty(), "nothing was measured");
    }
    assert!(!missing.exists());
}
