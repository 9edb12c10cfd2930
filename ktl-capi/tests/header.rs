//! The committed header, `include/ktl.h`, must be what cbindgen generates
//! from `src/lib.rs` and `cbindgen.toml`. Regenerate it with
//! `KTL_BLESS=1 cargo test -p ktl-capi --test header`.

use std::path::Path;

fn generate() -> Vec<u8> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml"))
        .expect("ktl-capi/cbindgen.toml is readable and valid");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen generates the header");
    let mut out = Vec::new();
    bindings.write(&mut out);
    out
}

#[test]
fn committed_header_is_current() {
    let generated = generate();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("include/ktl.h");
    if std::env::var_os("KTL_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).expect("include/ktl.h is writable");
        return;
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "ktl-capi/include/ktl.h is stale: it differs from what cbindgen generates \
         from src/lib.rs. Regenerate it with \
         `KTL_BLESS=1 cargo test -p ktl-capi --test header` and commit it."
    );
}

#[test]
fn header_declares_the_api() {
    let text = String::from_utf8(generate()).expect("the header is UTF-8");
    for name in [
        "struct ktl_layout {",
        "struct ktl_counter;",
        "int ktl_layout(struct ktl_layout *layout, size_t size);",
        "int ktl_offset(ptrdiff_t *offset);",
        "int ktl_size(void);",
        "int ktl_cpu_id(void);",
        "int ktl_node_id(void);",
        "int ktl_mm_cid(void);",
        "int ktl_counter_create(struct ktl_counter **counter, uint32_t flags);",
        "int ktl_counter_add(struct ktl_counter *counter, int64_t n);",
        "int ktl_counter_sum(const struct ktl_counter *counter, int64_t *sum);",
        "int ktl_counter_destroy(struct ktl_counter *counter);",
        "int ktl_random(void *buf, size_t len);",
        "static inline int ktl_cpu_id_fast(ptrdiff_t offset)",
    ] {
        assert!(text.contains(name), "the header lacks `{name}`");
    }
}
