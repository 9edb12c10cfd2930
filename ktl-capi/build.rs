//! Link arguments of libktl.so, the crate's `cdylib`: its soname, and
//! `-z nodelete`, because the library must never be unmapped once loaded
//! (threads' rseq areas may live in its thread-local block; see README.md).

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libktl.so.0");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    println!("cargo:rerun-if-changed=build.rs");
}
