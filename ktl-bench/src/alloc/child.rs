//! The side of the `alloc-workload` program: its arguments, one run of a
//! workload, and the JSON line it prints, which the driver reads back.

use super::workloads::{self, Workload};
use serde::{Deserialize, Serialize};

/// The usage of `alloc-workload`.
pub const USAGE: &str = "usage: alloc-workload <workload> <threads> [--scale F]\n\
    workloads: xmalloc, larson, cache-scratch, alloc-test, btree\n\
    Runs the workload once under this build's global allocator and prints one JSON line.";

/// The arguments of `alloc-workload`.
#[derive(Debug, Clone, PartialEq)]
pub struct Args {
    /// The workload.
    pub workload: Workload,
    /// Its threads.
    pub threads: usize,
    /// Its scale (1 by default).
    pub scale: f64,
}

impl Args {
    /// Parses the arguments after the program's name: `<workload>
    /// <threads> [--scale F]`. `Ok(None)` for `--help`.
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Option<Args>, String> {
        let mut positional = Vec::new();
        let mut scale = 1.0;
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "-h" | "--help" => return Ok(None),
                "--scale" => {
                    let v = args
                        .next()
                        .ok_or_else(|| "--scale needs a value".to_owned())?;
                    scale = parse_scale(&v)?;
                }
                s if s.starts_with("--scale=") => scale = parse_scale(&s["--scale=".len()..])?,
                s if s.starts_with('-') && s.len() > 1 => {
                    return Err(format!("unknown option {s:?}"));
                }
                _ => positional.push(arg),
            }
        }
        let [workload, threads] = positional.as_slice() else {
            return Err(format!(
                "expected a workload and a thread count, got {} arguments",
                positional.len()
            ));
        };
        let workload = Workload::parse(workload)?;
        let threads = threads
            .parse::<usize>()
            .map_err(|_| format!("{threads:?} is not a thread count"))?;
        // The range checks of the workloads, before anything runs.
        workloads::Plan::new(workload, threads, scale)?;
        Ok(Some(Args {
            workload,
            threads,
            scale,
        }))
    }
}

/// A scale given on the command line.
pub(crate) fn parse_scale(v: &str) -> Result<f64, String> {
    let scale: f64 = v
        .parse()
        .map_err(|_| format!("{v:?} is not a scale (a number such as 0.5)"))?;
    if scale.is_finite() && scale > 0.0 && scale <= workloads::MAX_SCALE {
        Ok(scale)
    } else {
        Err(format!(
            "scale {v}: the scale must be above 0 and at most {}",
            workloads::MAX_SCALE
        ))
    }
}

/// The line `alloc-workload` prints: what ran, under which allocator, how
/// long it took and what it checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    /// The allocator of the build: `ktl`, `glibc`, `mimalloc` or
    /// `jemalloc`.
    pub allocator: String,
    /// The workload's name.
    pub workload: String,
    /// Its threads.
    pub threads: usize,
    /// Its scale.
    pub scale: f64,
    /// The wall time of the workload alone, in seconds.
    pub seconds: f64,
    /// Objects checked and freed.
    pub objects: u64,
    /// The digest of their ids, in hex (`0x` and 16 digits).
    pub digest: String,
    /// ktl's front end (`ktl_alloc::front_end()`), for the ktl build;
    /// null for the others.
    pub front_end: Option<String>,
}

/// The digest in the form of [`Line::digest`].
pub fn digest_text(digest: u64) -> String {
    format!("{digest:#018x}")
}

/// Runs the workload of `args` and returns the JSON line to print, or what
/// failed (the check value is compared with the expected one). `allocator`
/// names the build's allocator; `front_end` says ktl's front end, for the
/// ktl build, once the workload has run.
pub fn run(
    allocator: &str,
    args: &Args,
    front_end: impl FnOnce() -> Option<String>,
) -> Result<String, String> {
    let (checked, elapsed) = workloads::run_verified(args.workload, args.threads, args.scale)?;
    let line = Line {
        allocator: allocator.to_owned(),
        workload: args.workload.name().to_owned(),
        threads: args.threads,
        scale: args.scale,
        seconds: elapsed.as_secs_f64(),
        objects: checked.objects,
        digest: digest_text(checked.digest),
        front_end: front_end(),
    };
    serde_json::to_string(&line).map_err(|e| format!("cannot write the result: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Option<Args>, String> {
        Args::parse(list.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn arguments_parse_or_say_why_not() {
        let a = args(&["larson", "3", "--scale", "0.25"]).unwrap().unwrap();
        assert_eq!(
            (a.workload, a.threads, a.scale),
            (Workload::Larson, 3, 0.25)
        );
        let a = args(&["--scale=2", "btree", "1"]).unwrap().unwrap();
        assert_eq!((a.workload, a.scale), (Workload::Btree, 2.0));
        assert_eq!(args(&["--help"]), Ok(None));
        for (bad, says) in [
            (&["larson"][..], "expected a workload and a thread count"),
            (&["larson", "x"], "not a thread count"),
            (&["larson", "0"], "thread count must be"),
            (&["nope", "1"], "unknown workload"),
            (&["larson", "1", "--scale"], "needs a value"),
            (&["larson", "1", "--scale", "-1"], "above 0"),
            (&["larson", "1", "--fast"], "unknown option"),
        ] {
            let err = args(bad).unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }

    #[test]
    fn the_line_round_trips() {
        let a = args(&["xmalloc", "2", "--scale", "0.001"])
            .unwrap()
            .unwrap();
        let text = run("glibc", &a, || None).unwrap();
        let line: Line = serde_json::from_str(&text).unwrap();
        let plan = workloads::Plan::new(Workload::Xmalloc, 2, 0.001).unwrap();
        let want = workloads::expected(&plan);
        assert_eq!(line.allocator, "glibc");
        assert_eq!(
            (line.objects, line.digest),
            (want.objects, digest_text(want.digest))
        );
        assert!(line.seconds >= 0.0 && line.front_end.is_none());
    }
}
