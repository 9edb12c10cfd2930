//! The vDSO parser on real vDSO images: the fuzzing seeds committed under
//! `fuzz/seeds/vdso_image/` (see `fuzz/README.md` for where they come from).
//!
//! Each image must parse and have the symbols its platform has, at the
//! offsets `readelf` shows. Mutations of each image (truncations, byte
//! flips over the metadata, endless hash and version chains) must give an
//! error or sane answers, and never panic or hang.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use ktl::vdso::{Image, Vdso, VdsoError};

/// The x86_64 vDSO of Linux 6.18: its ELF file as the kernel maps it.
const X86_64: &[u8] = include_bytes!("../fuzz/seeds/vdso_image/x86_64-linux-6.18.so");
/// The vDSO that qemu-user 10.0 maps into aarch64 guests, relocated to the
/// address it had there.
const AARCH64: &[u8] = include_bytes!("../fuzz/seeds/vdso_image/aarch64-qemu-user-10.0.so");
/// An input the fuzzer found: the x86_64 image mutated so that its `PT_LOAD`
/// segment is empty, followed by bytes in which a symbol's value lands.
const SYMBOL_IN_TRAILING_BYTES: &[u8] =
    include_bytes!("../fuzz/regressions/vdso_image/symbol-in-trailing-bytes");

/// Symbols looked up in every image, real or mutated.
const NAMES: &[&str] = &[
    "__vdso_getcpu",
    "__vdso_clock_gettime",
    "__vdso_getrandom",
    "__kernel_clock_gettime",
    "__kernel_getrandom",
    "__kernel_rt_sigreturn",
];
const VERSIONS: &[&str] = &["LINUX_2.6", "LINUX_2.6.39"];

// ELF64 layout.
const PHDR_SIZE: usize = 56;
const DYN_SIZE: usize = 16;
const SYM_SIZE: usize = 24;
const VERDEF_SIZE: usize = 20;
const VERDAUX_SIZE: usize = 8;
const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const DT_HASH: u64 = 4;
const DT_GNU_HASH: u64 = 0x6fff_fef5;
const DT_VERDEF: u64 = 0x6fff_fffc;
/// A tag in the OS-specific range that the parser ignores.
const DT_IGNORED: u64 = 0x6000_0000;

fn u16_at(bytes: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(bytes[off..off + 2].try_into().unwrap())
}

fn u32_at(bytes: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap())
}

fn u64_at(bytes: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(bytes[off..off + 8].try_into().unwrap())
}

fn put_u32(bytes: &mut [u8], off: usize, value: u32) {
    bytes[off..off + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(bytes: &mut [u8], off: usize, value: u64) {
    bytes[off..off + 8].copy_from_slice(&value.to_le_bytes());
}

/// The layout of a well-formed image, read here independently of the
/// parser.
struct Layout {
    /// `p_offset` and `p_vaddr` of the first `PT_LOAD` segment.
    load_offset: u64,
    load_vaddr: u64,
    /// The end of the furthest `PT_LOAD` segment in the file.
    load_end: usize,
    /// File offset and size of the dynamic section.
    dynamic: usize,
    dynamic_size: usize,
}

impl Layout {
    fn of(image: &[u8]) -> Layout {
        let phoff = u64_at(image, 32) as usize;
        let phnum = usize::from(u16_at(image, 56));
        let mut load = None;
        let mut load_end = 0;
        let mut dynamic = None;
        for index in 0..phnum {
            let phdr = phoff + index * PHDR_SIZE;
            let (offset, vaddr, filesz) = (
                u64_at(image, phdr + 8),
                u64_at(image, phdr + 16),
                u64_at(image, phdr + 32),
            );
            match u32_at(image, phdr) {
                PT_LOAD => {
                    load.get_or_insert((offset, vaddr));
                    load_end = load_end.max((offset + filesz) as usize);
                }
                PT_DYNAMIC => {
                    dynamic.get_or_insert((offset as usize, filesz as usize));
                }
                _ => {}
            }
        }
        let (load_offset, load_vaddr) = load.expect("a PT_LOAD segment");
        let (dynamic, dynamic_size) = dynamic.expect("a PT_DYNAMIC segment");
        Layout {
            load_offset,
            load_vaddr,
            load_end,
            dynamic,
            dynamic_size,
        }
    }

    /// The file offset of the dynamic entry `tag`'s tag word.
    fn dynamic_entry(&self, image: &[u8], tag: u64) -> Option<usize> {
        (self.dynamic..self.dynamic + self.dynamic_size)
            .step_by(DYN_SIZE)
            .find(|&off| u64_at(image, off) == tag)
    }

    /// The file offset that the dynamic entry `tag` points to.
    fn dynamic_target(&self, image: &[u8], tag: u64) -> usize {
        let entry = self.dynamic_entry(image, tag).expect("dynamic entry");
        (u64_at(image, entry + 8) - self.load_vaddr + self.load_offset) as usize
    }

    /// Points the dynamic entry `tag` at file offset `off`.
    fn set_dynamic_target(&self, image: &mut [u8], tag: u64, off: usize) {
        let entry = self.dynamic_entry(image, tag).expect("dynamic entry");
        put_u64(
            image,
            entry + 8,
            off as u64 - self.load_offset + self.load_vaddr,
        );
    }

    /// The end of the version definitions: the last of the tables the
    /// parser reads, in both images. What follows (code, unwind tables,
    /// section headers) is free for the tests to overwrite.
    fn metadata_end(&self, image: &[u8]) -> usize {
        let mut def = self.dynamic_target(image, DT_VERDEF);
        while u32_at(image, def + 16) != 0 {
            def += u32_at(image, def + 16) as usize;
        }
        // The last definition and its one auxiliary entry.
        let end = (def + VERDEF_SIZE + VERDAUX_SIZE).max(self.dynamic + self.dynamic_size);
        end.next_multiple_of(8)
    }
}

/// Every lookup of [`NAMES`] at [`VERSIONS`], checking that each offset
/// is inside the image.
fn lookups(image: &Image<'_>) -> Vec<Option<usize>> {
    let len = image.bytes().len();
    let mut found = Vec::new();
    for name in NAMES {
        for version in VERSIONS {
            let offset = image.symbol_offset(name, version);
            if let Some(offset) = offset {
                assert!(offset < len, "{name}@{version} at {offset} of {len}");
            }
            found.push(offset);
        }
    }
    found
}

/// Parses `bytes` and, if that succeeds, looks every symbol up: the
/// parser's answer, checked for sanity.
fn parse_and_look_up(bytes: &[u8]) -> Result<Vec<Option<usize>>, VdsoError> {
    let image = Vdso::parse(bytes)?;
    let len = image.bytes().len();
    assert_eq!(image.bytes(), &bytes[..len], "the image starts the input");
    assert!(image.symbol_count() * SYM_SIZE <= len);
    Ok(lookups(&image))
}

/// Runs `f` on a thread of its own and fails if it takes longer than a
/// generous bound: the parser must never hang.
fn within_time<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (send, receive) = mpsc::channel();
    std::thread::spawn(move || send.send(f()));
    receive
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|error| panic!("{what}: no answer within 60 s ({error})"))
}

#[test]
fn x86_64_image() {
    let image = Vdso::parse(X86_64).unwrap();
    assert!(image.is_versioned());
    assert_eq!(image.symbol_count(), 14);
    let at = |name| image.symbol_offset(name, "LINUX_2.6");
    // The offsets `readelf --dyn-syms` shows (the image is linked at 0).
    assert_eq!(at("__vdso_getcpu"), Some(0xf00));
    assert_eq!(at("__vdso_clock_gettime"), Some(0xaf0));
    assert_eq!(at("__vdso_getrandom"), Some(0xf40));
    assert_eq!(at("__vdso_gettimeofday"), Some(0x810));
    assert_eq!(at("__vdso_time"), Some(0xac0));
    assert_eq!(at("__vdso_clock_getres"), Some(0xe80));
    // The weak aliases, at the same addresses.
    assert_eq!(at("getcpu"), Some(0xf00));
    assert_eq!(at("clock_gettime"), Some(0xaf0));
    // The version's own symbol is an absolute object, not a function.
    assert_eq!(at("LINUX_2.6"), None);
    assert_eq!(at("__kernel_clock_gettime"), None);
    // Another version, or the base definition's name, does not match.
    assert_eq!(image.symbol_offset("__vdso_getcpu", "LINUX_2.6.39"), None);
    assert_eq!(
        image.symbol_offset("__vdso_getcpu", "linux-vdso.so.1"),
        None
    );
    assert_eq!(image.symbol_offset("__vdso_getcpu", "LINUX_2."), None);
    // The vDSO's `getcpu` is what ktl calls on x86_64.
    #[cfg(target_arch = "x86_64")]
    assert_eq!(
        image.symbol_offset(ktl::vdso::GETCPU, ktl::vdso::VERSION),
        Some(0xf00)
    );
}

#[test]
fn aarch64_image() {
    let image = Vdso::parse(AARCH64).unwrap();
    assert!(image.is_versioned());
    assert_eq!(image.symbol_count(), 6);
    // qemu-user relocated the image to 0x55d57000: offsets are addresses
    // less that.
    let layout = Layout::of(AARCH64);
    assert_eq!(layout.load_vaddr, 0x55d5_7000);
    let at = |name| image.symbol_offset(name, "LINUX_2.6.39");
    assert_eq!(at("__kernel_clock_gettime"), Some(0x4c8));
    assert_eq!(at("__kernel_gettimeofday"), Some(0x4b8));
    assert_eq!(at("__kernel_clock_getres"), Some(0x4d8));
    assert_eq!(at("__kernel_rt_sigreturn"), Some(0x4ec));
    // qemu's vDSO has neither getcpu nor getrandom.
    assert_eq!(at("__kernel_getcpu"), None);
    assert_eq!(at("__kernel_getrandom"), None);
    assert_eq!(at("LINUX_2.6.39"), None);
    assert_eq!(
        image.symbol_offset("__kernel_clock_gettime", "LINUX_2.6"),
        None
    );
    // The version ktl looks up on aarch64.
    #[cfg(target_arch = "aarch64")]
    assert_eq!(
        image.symbol_offset("__kernel_clock_gettime", ktl::vdso::VERSION),
        Some(0x4c8)
    );
}

/// Every file in the seed directory is a real image that parses, so the
/// fuzzer starts from valid inputs. `KTL_VDSO_SEEDS` names another copy of
/// the directory (the kernel prototype's guest has no checkout).
#[test]
fn every_seed_parses() {
    let dir = std::env::var_os("KTL_VDSO_SEEDS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/vdso_image"),
        std::path::PathBuf::from,
    );
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let image = Vdso::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
        assert!(image.is_versioned(), "{}", path.display());
        assert!(
            lookups(&image).iter().any(Option::is_some),
            "{}: none of the usual symbols",
            path.display()
        );
        seen += 1;
    }
    assert!(seen >= 2, "{seen} seeds in {}", dir.display());
}

/// The images, for the mutation tests.
fn images() -> [(&'static str, &'static [u8]); 2] {
    [("x86_64", X86_64), ("aarch64", AARCH64)]
}

/// Any prefix that cuts into a `PT_LOAD` segment is `Truncated`; a longer
/// one gives the same answers as the whole image. At run time the image is
/// read up to the end of its `PT_LOAD` segments, so that prefix is what ktl
/// parses.
#[test]
fn truncations() {
    for (arch, bytes) in images() {
        let layout = Layout::of(bytes);
        let whole = parse_and_look_up(bytes).unwrap();
        let lengths = (0..bytes.len())
            .step_by(64)
            .chain([layout.load_end - 1, layout.load_end]);
        for len in lengths {
            let prefix = &bytes[..len];
            if len < layout.load_end {
                assert_eq!(
                    Vdso::parse(prefix).unwrap_err(),
                    VdsoError::Truncated,
                    "{arch}: {len} bytes"
                );
            } else {
                assert_eq!(parse_and_look_up(prefix).unwrap(), whole, "{arch}: {len}");
            }
        }
    }
}

/// Single-byte changes anywhere in the metadata (headers, dynamic section,
/// hash, symbol, string and version tables) give an error or sane answers.
#[test]
fn byte_flips_over_the_metadata() {
    for (arch, bytes) in images() {
        let layout = Layout::of(bytes);
        let end = layout.metadata_end(bytes);
        let (parsed, failed) = within_time(arch, move || {
            let mut copy = bytes.to_vec();
            let (mut parsed, mut failed) = (0, 0);
            for off in 0..end {
                for change in [0x01, 0x80, 0xff, bytes[off]] {
                    copy[off] ^= change;
                    match parse_and_look_up(&copy) {
                        Ok(_) => parsed += 1,
                        Err(_) => failed += 1,
                    }
                    copy[off] = bytes[off];
                }
            }
            (parsed, failed)
        });
        // Both outcomes occur: flips in padding and names parse, flips in
        // the headers and table addresses do not.
        assert!(parsed > 2 * end, "{arch}: {parsed} parsed");
        assert!(failed > 200, "{arch}: {failed} failed");

        let flip = |off: usize, change: u8| {
            let mut copy = bytes.to_vec();
            copy[off] ^= change;
            Vdso::parse(&copy).map(|_| ())
        };
        assert_eq!(flip(0, 0xff), Err(VdsoError::BadMagic), "{arch}");
        assert_eq!(flip(4, 0x03), Err(VdsoError::NotElf64), "{arch}");
        assert_eq!(flip(5, 0x03), Err(VdsoError::NotLittleEndian), "{arch}");
        assert_eq!(flip(16, 0x01), Err(VdsoError::NotSharedObject), "{arch}");
        assert_eq!(flip(54, 0x01), Err(VdsoError::BadProgramHeaders), "{arch}");
        assert_eq!(flip(57, 0x10), Err(VdsoError::Truncated), "{arch}");
    }
}

/// Turns the `DT_HASH` entry into one the parser ignores, so that the
/// symbol table is sized by `DT_GNU_HASH`.
fn without_sysv_hash(bytes: &[u8]) -> Vec<u8> {
    let layout = Layout::of(bytes);
    let mut copy = bytes.to_vec();
    let entry = layout.dynamic_entry(&copy, DT_HASH).expect("DT_HASH");
    put_u64(&mut copy, entry, DT_IGNORED);
    copy
}

/// Hash chains that never end: the `DT_GNU_HASH` chain walk (which sizes
/// the symbol table) stops at the end of the image, and the `DT_HASH`
/// chains, which are never walked, may loop.
#[test]
fn endless_hash_chains() {
    for (arch, bytes) in images() {
        let layout = Layout::of(bytes);
        let whole = parse_and_look_up(bytes).unwrap();
        let symbols = Vdso::parse(bytes).unwrap().symbol_count();

        // DT_GNU_HASH alone sizes the table as DT_HASH does, also when the
        // table is moved past the other metadata.
        let gnu_only = without_sysv_hash(bytes);
        assert_eq!(parse_and_look_up(&gnu_only).unwrap(), whole, "{arch}");
        let gnu = layout.dynamic_target(bytes, DT_GNU_HASH);
        let (nbuckets, symoffset, bloom) = (
            u32_at(bytes, gnu) as usize,
            u32_at(bytes, gnu + 4) as usize,
            u32_at(bytes, gnu + 8) as usize,
        );
        let chains = 16 + 8 * bloom + 4 * nbuckets;
        let table_len = chains + 4 * (symbols - symoffset);
        let moved = layout.metadata_end(bytes);
        let mut relocated = gnu_only.clone();
        relocated.copy_within(gnu..gnu + table_len, moved);
        layout.set_dynamic_target(&mut relocated, DT_GNU_HASH, moved);
        assert_eq!(parse_and_look_up(&relocated).unwrap(), whole, "{arch}");

        // No chain entry has its end bit, up to the end of the image.
        let mut endless = relocated;
        for off in (moved + chains..endless.len() - 3).step_by(4) {
            put_u32(&mut endless, off, 0x5555_5554);
        }
        let result = within_time(arch, move || Vdso::parse(&endless).map(|_| ()));
        assert_eq!(result, Err(VdsoError::BadHashTable), "{arch}");

        // Every DT_HASH bucket and chain entry points at symbol 1, whose
        // chain entry points at itself. Lookups scan the symbol table, so
        // they still find every symbol.
        let hash = layout.dynamic_target(bytes, DT_HASH);
        let (nbucket, nchain) = (
            u32_at(bytes, hash) as usize,
            u32_at(bytes, hash + 4) as usize,
        );
        assert_eq!(nchain, symbols, "{arch}");
        let mut looped = bytes.to_vec();
        for index in 0..nbucket + nchain {
            put_u32(&mut looped, hash + 8 + 4 * index, 1);
        }
        let answers = within_time(arch, move || parse_and_look_up(&looped));
        assert_eq!(answers.unwrap(), whole, "{arch}");
    }
}

/// Version definitions whose `vd_next` links never end (`vd_next` only
/// moves forward, so a chain cannot loop, but it can be as long as the
/// image): the walk stops at the end of the image or after as many
/// definitions as the image can hold.
#[test]
fn endless_version_chain() {
    for (arch, bytes) in images() {
        let layout = Layout::of(bytes);
        let whole = parse_and_look_up(bytes).unwrap();
        let verdef = layout.dynamic_target(bytes, DT_VERDEF);
        let verdef_end = layout
            .metadata_end(bytes)
            .min(verdef + 2 * (VERDEF_SIZE + VERDAUX_SIZE));

        // The definitions moved past the other metadata still work.
        let moved = layout.metadata_end(bytes);
        let mut relocated = bytes.to_vec();
        relocated.copy_within(verdef..verdef_end, moved);
        layout.set_dynamic_target(&mut relocated, DT_VERDEF, moved);
        assert_eq!(parse_and_look_up(&relocated).unwrap(), whole, "{arch}");

        // Overlapping definitions every 4 bytes up to the end of the
        // image: vd_aux = vd_next = 4.
        let mut endless = relocated.clone();
        for off in (moved..endless.len() - 3).step_by(4) {
            put_u32(&mut endless, off, 4);
        }
        let result = within_time(arch, move || Vdso::parse(&endless).map(|_| ()));
        assert_eq!(result, Err(VdsoError::BadVersionTable), "{arch}");

        // The last definition links to one past the end of the image.
        let mut past_end = bytes.to_vec();
        let last = verdef + u32_at(bytes, verdef + 16) as usize;
        assert_eq!(u32_at(bytes, last + 16), 0, "{arch}: two definitions");
        put_u32(&mut past_end, last + 16, (bytes.len() - last) as u32);
        assert_eq!(
            Vdso::parse(&past_end).map(|_| ()),
            Err(VdsoError::BadVersionTable),
            "{arch}"
        );
    }
}

/// Parses `bytes` alone and followed by more bytes: the answers must be the
/// same, names with no symbol (`""`) included.
fn same_with_trailing_bytes(bytes: &[u8]) -> Result<Vec<Option<usize>>, VdsoError> {
    let mut longer = bytes.to_vec();
    longer.extend_from_slice(&[0; 32]);
    longer.extend_from_slice(&[0xff; 32]);
    let (short, long) = (Vdso::parse(bytes), Vdso::parse(&longer));
    let answers = |image: &Image<'_>| {
        let mut found = lookups(image);
        found.extend(
            VERSIONS
                .iter()
                .map(|version| image.symbol_offset("", version)),
        );
        found
    };
    match (short, long) {
        (Ok(short), Ok(long)) => {
            assert_eq!(short.bytes(), long.bytes());
            assert_eq!(short.symbol_count(), long.symbol_count());
            assert_eq!(answers(&short), answers(&long));
            Ok(answers(&short))
        }
        (Err(short), long) => {
            assert_eq!(Err(short), long.map(|_| ()));
            Err(short)
        }
        (short, long) => panic!("{short:?} vs {long:?}"),
    }
}

/// Regression: the parser used to look for symbols in the whole slice, so
/// bytes after the image could change an answer (the fuzz target's
/// trailing-bytes check found it). The image ends with its last `PT_LOAD`
/// segment; here that segment is empty, so the dynamic section lies past
/// the end.
#[test]
fn regression_symbol_in_trailing_bytes() {
    assert_eq!(
        same_with_trailing_bytes(SYMBOL_IN_TRAILING_BYTES),
        Err(VdsoError::BadDynamic)
    );
    for (arch, bytes) in images() {
        assert!(same_with_trailing_bytes(bytes).is_ok(), "{arch}");
    }
}

/// The x86_64 image with its `PT_LOAD` segment shortened to end at 0x800:
/// the tables still fit, but `__vdso_gettimeofday` (0x810) and the later
/// functions are past the end, even though the bytes are there.
#[test]
fn symbols_past_a_shortened_load_segment() {
    let layout = Layout::of(X86_64);
    let mut bytes = X86_64.to_vec();
    let phoff = u64_at(X86_64, 32) as usize;
    assert_eq!(u32_at(X86_64, phoff), PT_LOAD);
    put_u64(&mut bytes, phoff + 32, 0x800);
    assert!(layout.metadata_end(X86_64) < 0x800);

    let image = Vdso::parse(&bytes).unwrap();
    assert_eq!(image.bytes().len(), 0x800);
    assert_eq!(
        image.symbol_offset("__vdso_gettimeofday", "LINUX_2.6"),
        None
    );
    assert_eq!(image.symbol_offset("__vdso_getcpu", "LINUX_2.6"), None);
    assert_eq!(image.symbol_count(), 14);
    assert_eq!(
        same_with_trailing_bytes(&bytes).unwrap(),
        same_with_trailing_bytes(&bytes[..0x800]).unwrap()
    );
}
