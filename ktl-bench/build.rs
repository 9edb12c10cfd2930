//! Records the git commit the crate is built from in `KTL_BENCH_COMMIT`, for
//! the `commit` field of the JSON report: the commit's hash, with `-dirty`
//! when tracked files have changes, or `unknown` when git or the repository
//! is absent. The script runs again when `HEAD`, the branch it points to or
//! the index changes (best effort: an edit of a file alone does not make it
//! run again).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The output of `git -C dir args`, trimmed, when git ran and succeeded.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    Some(text.trim().to_owned())
}

fn main() {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    println!("cargo:rerun-if-changed=build.rs");
    let commit = match git(&dir, &["rev-parse", "HEAD"]) {
        Some(hash) if !hash.is_empty() => {
            // `--no-optional-locks`: reading the status must not rewrite the
            // index, which would make this script run again next time.
            let status = git(
                &dir,
                &[
                    "--no-optional-locks",
                    "status",
                    "--porcelain",
                    "--untracked-files=no",
                ],
            );
            match status {
                Some(s) if !s.is_empty() => format!("{hash}-dirty"),
                _ => hash,
            }
        }
        _ => "unknown".to_owned(),
    };
    // Run again when HEAD moves: HEAD itself, the ref it points to (loose or
    // packed) and the index. Only existing files: cargo runs a script with a
    // missing one every time.
    let mut watched = vec![
        "HEAD".to_owned(),
        "packed-refs".to_owned(),
        "index".to_owned(),
    ];
    if let Some(head) = git(&dir, &["symbolic-ref", "-q", "HEAD"]) {
        watched.push(head);
    }
    for name in watched {
        // Relative to `dir` unless absolute.
        if let Some(path) = git(&dir, &["rev-parse", "--git-path", &name]) {
            let path = dir.join(path);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    println!("cargo:rustc-env=KTL_BENCH_COMMIT={commit}");
}
