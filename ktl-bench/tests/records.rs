//! The benchmark records in the documentation stay true to their files:
//! in every `docs/**/*.md` of the repository, the lines between
//!
//! ```text
//! <!-- record: records/NAME.json -->
//! <!-- end record -->
//! ```
//!
//! must be the rendering of that saved `ktl bench --json` record (the path
//! is relative to `docs/`), as `ktl bench --render docs/records/NAME.json`
//! prints it. A file with no such block passes.

use std::path::{Path, PathBuf};

/// The line that opens a block: the record's path between these.
const OPEN: (&str, &str) = ("<!-- record: ", " -->");

/// The line that closes a block.
const CLOSE: &str = "<!-- end record -->";

/// A block of a Markdown file: where it opens, the record it names, and
/// the lines it holds.
#[derive(Debug, PartialEq)]
struct Block {
    line: usize,
    record: String,
    lines: Vec<String>,
}

/// The record blocks of `text`, or what is wrong with their markers.
fn blocks(text: &str) -> Result<Vec<Block>, String> {
    let mut found = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let record = line
            .strip_prefix(OPEN.0)
            .and_then(|rest| rest.strip_suffix(OPEN.1));
        match (record, line == CLOSE, open.as_mut()) {
            (Some(_), _, Some(b)) => {
                return Err(format!(
                    "line {n}: a record block opens inside the one of line {}",
                    b.line
                ));
            }
            (Some(record), _, None) => {
                open = Some(Block {
                    line: n,
                    record: record.trim().to_owned(),
                    lines: Vec::new(),
                });
            }
            (None, true, Some(_)) => found.extend(open.take()),
            (None, true, None) => return Err(format!("line {n}: {CLOSE} without a block")),
            (None, false, Some(b)) => b.lines.push(line.to_owned()),
            (None, false, None) => {}
        }
    }
    match open {
        Some(b) => Err(format!("line {}: the record block is not closed", b.line)),
        None => Ok(found),
    }
}

/// The Markdown files below `dir`, recursively, in a stable order.
fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            markdown_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "md") {
            out.push(path);
        }
    }
}

/// What is wrong with the blocks of the Markdown file `file`, whose records
/// are under `docs`.
fn problems(file: &Path, docs: &Path) -> Vec<String> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => return vec![format!("{}: cannot read it: {e}", file.display())],
    };
    let blocks = match blocks(&text) {
        Ok(b) => b,
        Err(e) => return vec![format!("{}: {e}", file.display())],
    };
    let mut problems = Vec::new();
    for b in blocks {
        let at = format!("{}:{}", file.display(), b.line);
        let path = docs.join(&b.record);
        let rendered = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
            .and_then(|json| ktl_bench::render_record(&json));
        match rendered {
            Err(e) => problems.push(format!("{at}: {e}")),
            Ok(r) => {
                let want: Vec<&str> = r.lines().collect();
                if want != b.lines {
                    problems.push(format!(
                        "{at}: the block is not the rendering of {}; it should read:\n{}",
                        b.record,
                        want.join("\n")
                    ));
                }
            }
        }
    }
    problems
}

#[test]
fn every_record_block_is_its_record_rendered() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    let mut files = Vec::new();
    markdown_files(&docs, &mut files);
    let problems: Vec<String> = files.iter().flat_map(|f| problems(f, &docs)).collect();
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

#[test]
fn blocks_are_found_and_bad_markers_reported() {
    let text = "intro\n<!-- record: records/a.json -->\n| x |\n\n<!-- end record -->\n\
                between\n<!-- record: records/b.json -->\n<!-- end record -->\n";
    assert_eq!(
        blocks(text).unwrap(),
        [
            Block {
                line: 2,
                record: "records/a.json".to_owned(),
                lines: vec!["| x |".to_owned(), String::new()],
            },
            Block {
                line: 7,
                record: "records/b.json".to_owned(),
                lines: Vec::new(),
            },
        ]
    );
    assert_eq!(blocks("no block here\n").unwrap(), []);
    let open = blocks("<!-- record: records/a.json -->\n| x |\n").unwrap_err();
    assert!(open.contains("not closed"), "{open}");
    let stray = blocks("<!-- end record -->\n").unwrap_err();
    assert!(stray.contains("without a block"), "{stray}");
    let nested =
        blocks("<!-- record: records/a.json -->\n<!-- record: records/b.json -->\n").unwrap_err();
    assert!(nested.contains("opens inside"), "{nested}");
}

/// A block that is not its record's rendering is reported, with the lines
/// it should have; one that is passes.
#[test]
fn a_stale_block_fails() {
    let dir = std::env::temp_dir().join(format!("ktl-records-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("records")).unwrap();
    let record = r#"{"schema": "ktl-bench/1",
        "machine": {"cpu_model": "Some CPU", "kernel": "6.1", "arch": "x86_64",
                    "logical_cpus": 2, "usable_cpus": 2},
        "commit": "abc",
        "rows": [{"name": "ktl::cpu_id()", "group": "cpu", "threads": 1,
                  "available": true, "reason": null, "median_ns": 1.0,
                  "min_ns": 1.0, "max_ns": 1.0, "spread_pct": 0.0, "samples": 1,
                  "iters_per_sample": 1, "baseline": "ktl::cpu_id()"}]}"#;
    std::fs::write(dir.join("records/r.json"), record).unwrap();
    let rendered = ktl_bench::render_record(record).unwrap();
    let page = dir.join("page.md");
    let good =
        format!("# Numbers\n<!-- record: records/r.json -->\n{rendered}<!-- end record -->\n");
    std::fs::write(&page, &good).unwrap();
    assert_eq!(problems(&page, &dir), Vec::<String>::new());
    std::fs::write(&page, good.replace("| 1.00 |", "| 0.90 |")).unwrap();
    let found = problems(&page, &dir);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("is not the rendering of records/r.json"));
    assert!(
        found[0].contains("`ktl::cpu_id()` | 1.00 |"),
        "{}",
        found[0]
    );
    std::fs::write(
        &page,
        "<!-- record: records/none.json -->\n<!-- end record -->\n",
    )
    .unwrap();
    assert!(problems(&page, &dir)[0].contains("cannot read"));
    let _ = std::fs::remove_dir_all(&dir);
}
