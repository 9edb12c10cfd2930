//! Fuzzes the vDSO ELF parser ([`ktl::vdso::Vdso::parse`]) on arbitrary
//! bytes.
//!
//! The parser must never panic, loop forever or read outside the slice
//! (slice indexing would panic, so a panic-free run is also a bounds-checked
//! one). On top of that, this target checks what the parser's API promises:
//!
//! - parsing is deterministic: the same bytes give the same result, and an
//!   image answers the same query the same way every time;
//! - the image ([`Image::bytes`]) is the start of the slice that was parsed;
//! - the dynamic symbol table ([`Image::symbol_count`] entries of 24 bytes)
//!   fits in the image;
//! - an offset from [`Image::symbol_offset`] is less than the image length;
//! - a name or version containing a NUL never matches (the string table is
//!   NUL-terminated);
//! - without symbol versioning ([`Image::is_versioned`] false), the version
//!   is ignored: names alone match;
//! - trailing bytes are ignored: the image alone, and the input followed by
//!   more bytes, parse to the same image with the same answers.

#![no_main]

use ktl::vdso::{Image, Vdso};
use libfuzzer_sys::fuzz_target;

/// The size of an `Elf64_Sym`.
const SYM_SIZE: usize = 24;

/// Symbol names of real vDSOs (x86_64, aarch64) and a few near misses.
const NAMES: &[&str] = &[
    "__vdso_getcpu",
    "__vdso_clock_gettime",
    "__vdso_clock_getres",
    "__vdso_gettimeofday",
    "__vdso_time",
    "__vdso_getrandom",
    "__kernel_getcpu",
    "__kernel_clock_gettime",
    "__kernel_clock_getres",
    "__kernel_gettimeofday",
    "__kernel_getrandom",
    "__kernel_rt_sigreturn",
    "getcpu",
    "__vdso_getcp",
    "",
];

/// Version names of real vDSOs, the name of the base definition, and near
/// misses.
const VERSIONS: &[&str] = &[
    "LINUX_2.6",
    "LINUX_2.6.39",
    "linux-vdso.so.1",
    "LINUX_2.",
    "",
];

/// At most this many names are taken from the input itself.
const INPUT_NAMES: usize = 8;

/// The bytes appended to check that trailing bytes change nothing: zeroes
/// (which would end an unterminated string) and then ones.
const TAIL: [u8; 64] = {
    let mut tail = [0; 64];
    let mut i = 32;
    while i < tail.len() {
        tail[i] = 0xff;
        i += 1;
    }
    tail
};

fuzz_target!(|data: &[u8]| {
    let first = Vdso::parse(data);
    let second = Vdso::parse(data);
    let (image, again) = match (first, second) {
        (Ok(image), Ok(again)) => (image, again),
        (Err(a), Err(b)) => {
            assert_eq!(a, b, "two parses of the same bytes fail differently");
            return;
        }
        (a, b) => panic!("two parses of the same bytes differ: {a:?}, then {b:?}"),
    };

    let bytes = image.bytes();
    assert!(
        data.get(..bytes.len())
            .is_some_and(|start| core::ptr::eq(bytes, start)),
        "bytes() is not the start of the parsed slice"
    );
    let table = image.symbol_count().checked_mul(SYM_SIZE);
    assert!(
        table.is_some_and(|size| size <= bytes.len()),
        "{} symbols cannot fit in {} bytes",
        image.symbol_count(),
        bytes.len()
    );

    let from_input = input_names(data);
    let names: Vec<&str> = NAMES
        .iter()
        .copied()
        .chain(from_input.iter().copied())
        .collect();
    let versions: Vec<&str> = VERSIONS
        .iter()
        .copied()
        .chain(from_input.iter().copied())
        .collect();
    let answers = answers(&image, &names, &versions);

    // Determinism: a second parse, and a second round of queries.
    assert_eq!(image.symbol_count(), again.symbol_count());
    assert_eq!(image.is_versioned(), again.is_versioned());
    assert_eq!(answers, self::answers(&again, &names, &versions));
    assert_eq!(answers, self::answers(&image, &names, &versions));

    // Trailing bytes are ignored: the image alone, and the input with more
    // bytes after it, give the same image and answers.
    let mut longer = data.to_vec();
    longer.extend_from_slice(&TAIL);
    for (what, input) in [("the image alone", bytes), ("a longer input", &longer[..])] {
        let other =
            Vdso::parse(input).unwrap_or_else(|error| panic!("{what} does not parse: {error:?}"));
        assert_eq!(other.bytes(), bytes, "{what}: another image");
        assert_eq!(image.symbol_count(), other.symbol_count(), "{what}");
        assert_eq!(image.is_versioned(), other.is_versioned(), "{what}");
        assert_eq!(
            answers,
            self::answers(&other, &names, &versions),
            "{what}: other answers"
        );
    }
});

/// `symbol_offset` for every name and version, checking each answer.
fn answers(image: &Image<'_>, names: &[&str], versions: &[&str]) -> Vec<Option<usize>> {
    let len = image.bytes().len();
    let mut answers = Vec::with_capacity(names.len() * versions.len());
    for &name in names {
        let mut unversioned = None;
        for &version in versions {
            let offset = image.symbol_offset(name, version);
            if let Some(offset) = offset {
                assert!(offset < len, "{name}@{version}: offset {offset} >= {len}");
            }
            if !image.is_versioned() {
                // Names alone match: every version gives the same answer.
                let first = *unversioned.get_or_insert(offset);
                assert_eq!(offset, first, "{name}@{version} in an unversioned image");
            }
            answers.push(offset);
        }
        // A NUL cannot be inside a string of the table.
        let with_nul = format!("{name}\0");
        assert_eq!(image.symbol_offset(&with_nul, versions[0]), None);
        if image.is_versioned() {
            assert_eq!(image.symbol_offset(name, "LINUX_2.6\0"), None);
        }
    }
    answers
}

/// Up to [`INPUT_NAMES`] strings of the input that look like symbol or
/// version names: runs of 2 to 64 name characters between NULs. In a real
/// image these come from the string table.
fn input_names(data: &[u8]) -> Vec<&str> {
    data.split(|&byte| byte == 0)
        .filter(|run| {
            (2..=64).contains(&run.len())
                && run
                    .iter()
                    .all(|&byte| byte.is_ascii_alphanumeric() || b"_.-@".contains(&byte))
        })
        .filter_map(|run| core::str::from_utf8(run).ok())
        .take(INPUT_NAMES)
        .collect()
}
