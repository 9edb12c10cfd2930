//! The `getrandom` crate's custom backend: with `ktl::getrandom_backend!()`
//! and `--cfg getrandom_backend="custom"`, every `getrandom::fill` goes
//! through `ktl::random`.
//!
//! Built only in that configuration (CI runs it with
//! `RUSTFLAGS='--cfg getrandom_backend="custom"' cargo test -p ktl
//! --features getrandom --test random_getrandom_backend`); otherwise empty.
#![cfg(all(feature = "getrandom", getrandom_backend = "custom"))]

use ktl::random::{self, Path};

ktl::getrandom_backend!();

#[test]
fn getrandom_crate_fills_through_ktl() {
    let before = random::thread_fills();
    let mut a = [0u8; 16];
    let mut b = [0u8; 16];
    getrandom::fill(&mut a).unwrap();
    getrandom::fill(&mut b).unwrap();
    assert_ne!(a, b);
    let x = getrandom::u64().unwrap();
    let y = getrandom::u64().unwrap();
    assert_ne!(x, y);
    let after = random::thread_fills();
    // Four fills, each counted on the path ktl took.
    let fills = (after.vdso - before.vdso) + (after.syscall - before.syscall);
    assert_eq!(fills, 4, "{before:?} -> {after:?}");
    if random::path() == Path::Vdso {
        assert_eq!(after.vdso - before.vdso, 4, "{before:?} -> {after:?}");
    }
}

#[test]
fn uninitialised_and_empty_buffers() {
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 300];
    let bytes = getrandom::fill_uninit(&mut buf).unwrap();
    assert_eq!(bytes.len(), 300);
    assert!(bytes.chunks(16).all(|c| c.iter().any(|&b| b != 0)));
    getrandom::fill(&mut []).unwrap();
}
