//! The `random` group's limit rows (`raw vDSO getrandom (limit)`), through
//! the crate's public API: placed right after ktl's row of each size, they
//! run and check every call where the vDSO has getrandom, and are n/a with
//! the reason where it has none (here: `KTL_VDSO=off`, in a copy of this
//! test binary).

use ktl_bench::Shape;
use ktl_bench::workloads::random::{KTL_16, LIMIT_16, SIZES, rows_by_size};
use ktl_testkit::child;

/// Set in the copy of this binary that runs one test as the child.
const CHILD_ENV: &str = "KTL_BENCH_RANDOM_LIMIT_CHILD";

#[test]
fn the_limit_rows_follow_ktl_and_run_where_the_vdso_has_getrandom() {
    let by_size = rows_by_size();
    assert_eq!(by_size.iter().map(|(n, _)| *n).collect::<Vec<_>>(), SIZES);
    let raw = ktl::vdso::getrandom_fn().is_some();
    for (size, rows) in by_size {
        let [(_, ktl), (label, limit), _, _] = rows;
        assert_eq!(label, "raw vDSO getrandom (limit)");
        assert_eq!(
            limit.name(),
            format!("{size} B: raw vDSO getrandom (limit)")
        );
        if size == 16 && ktl::random::path() == ktl::random::Path::Vdso {
            assert_eq!((ktl.name(), limit.name()), (KTL_16, LIMIT_16));
        }
        assert_eq!(
            limit.unavailable_reason().is_none(),
            raw,
            "{:?}",
            limit.unavailable_reason()
        );
        if !raw {
            eprintln!("no vDSO getrandom here: {:?}", limit.unavailable_reason());
            continue;
        }
        for iters in [1, 50] {
            limit.run(iters, Shape::Call).unwrap();
            limit.run(iters, Shape::Throughput).unwrap();
        }
        let ops = 51 * (1 + ktl_bench::UNROLL);
        let verified = limit.finish().unwrap().unwrap();
        assert!(
            verified.contains(&format!("{ops} operations, all succeeded")),
            "{verified}"
        );
    }
}

#[test]
fn with_the_vdso_turned_off_the_limit_rows_are_na() {
    const TEST: &str = "with_the_vdso_turned_off_the_limit_rows_are_na";
    if child::is_child(CHILD_ENV, TEST) {
        assert!(ktl::vdso::getrandom_fn().is_none());
        for (size, rows) in rows_by_size() {
            let [(_, ktl), (_, limit), _, _] = rows;
            assert_eq!(
                ktl.name(),
                format!("{size} B: ktl::random::fill (syscall fallback)")
            );
            assert_eq!(
                limit.unavailable_reason(),
                Some("no usable vDSO: the vDSO is turned off (KTL_VDSO=off)"),
                "{}",
                limit.name()
            );
            assert!(limit.finish().is_none());
        }
        return;
    }
    child::run(TEST, &[(CHILD_ENV, TEST), (ktl::vdso::DISABLE_ENV, "off")]);
}
