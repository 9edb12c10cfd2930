//! Test helpers: a tiny PRNG and a builder of small ELF64 images.

#![forbid(unsafe_code)]

/// xorshift64: a deterministic source of noise for corruption tests.
pub(crate) struct XorShift(u64);

impl XorShift {
    pub(crate) fn new(seed: u64) -> Self {
        XorShift(seed | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number below `bound`, which must not be 0.
    pub(crate) fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    /// Changes `count` random bytes of `bytes` to random values. Half the
    /// time the change is a single flipped bit, half a whole new byte.
    pub(crate) fn corrupt(&mut self, bytes: &mut [u8], count: usize) {
        for _ in 0..count {
            let at = self.below(bytes.len());
            let noise = self.next();
            if noise & 1 == 0 {
                bytes[at] ^= 1 << ((noise >> 1) % 8);
            } else {
                bytes[at] = (noise >> 8) as u8;
            }
        }
    }
}

/// A symbol for [`build`].
#[derive(Clone, Copy)]
pub(crate) struct Sym {
    pub(crate) name: &'static str,
    pub(crate) info: u8,
    pub(crate) shndx: u16,
    /// The symbol's offset from the start of the text area.
    pub(crate) text: usize,
    /// The raw versym entry (ignored without versions).
    pub(crate) version: u16,
}

/// What [`build`] puts in an image.
pub(crate) struct Spec {
    /// The symbols after the null symbol.
    pub(crate) syms: Vec<Sym>,
    /// Version names, with indexes 2, 3, ... (1 is the base, "test.so").
    pub(crate) versions: Option<Vec<&'static str>>,
    pub(crate) sysv_hash: bool,
    pub(crate) gnu_hash: bool,
}

/// A built image and where its parts are (image offsets).
pub(crate) struct Built {
    pub(crate) bytes: Vec<u8>,
    /// The virtual address of offset 0.
    pub(crate) load_vaddr: u64,
    pub(crate) dynamic: usize,
    pub(crate) dynamic_size: usize,
    /// The tags of the dynamic entries, in order, before the DT_NULLs.
    pub(crate) dynamic_tags: Vec<u64>,
    pub(crate) symtab: usize,
    pub(crate) strtab_size: usize,
    pub(crate) hash: Option<usize>,
    pub(crate) gnu_hash: Option<usize>,
    pub(crate) verdef: Option<usize>,
    pub(crate) text: usize,
}

const LOAD_VADDR: u64 = 0x7000_0000;
const PHDRS: usize = 64;
/// Program headers: PT_LOAD, PT_DYNAMIC, and a PT_NOTE for tests to change.
pub(crate) const PHDR_COUNT: usize = 3;
const DYNAMIC: usize = PHDRS + PHDR_COUNT * 56;
const DYNAMIC_ENTRIES: usize = 12;
const TEXT_SIZE: usize = 64;

fn put(bytes: &mut [u8], off: usize, value: &[u8]) {
    bytes[off..off + value.len()].copy_from_slice(value);
}

/// Appends `part` at the next 8-byte boundary; returns its offset.
fn append(bytes: &mut Vec<u8>, part: &[u8]) -> usize {
    bytes.resize(bytes.len().next_multiple_of(8), 0);
    let off = bytes.len();
    bytes.extend_from_slice(part);
    off
}

fn gnu_hash(name: &str) -> u32 {
    name.bytes().fold(5381u32, |h, b| {
        h.wrapping_mul(33).wrapping_add(u32::from(b))
    })
}

/// Builds a little-endian ELF64 shared object: ELF header, a PT_LOAD of the
/// whole file at [`LOAD_VADDR`], a PT_DYNAMIC, an empty PT_NOTE, then the string table, symbol
/// table, hash tables, version tables and a text area, in that order.
pub(crate) fn build(spec: &Spec) -> Built {
    let mut bytes = vec![0u8; DYNAMIC + DYNAMIC_ENTRIES * 16];
    let vaddr = |off: usize| LOAD_VADDR + off as u64;

    // Strings: symbol names, then the base name, then version names.
    let mut strings = vec![0u8];
    let mut add = |s: &str| {
        let off = strings.len() as u32;
        strings.extend_from_slice(s.as_bytes());
        strings.push(0);
        off
    };
    let names: Vec<u32> = spec.syms.iter().map(|s| add(s.name)).collect();
    let base_name = add("test.so");
    let version_names: Vec<u32> = spec
        .versions
        .iter()
        .flatten()
        .map(|&name| add(name))
        .collect();
    let strtab = append(&mut bytes, &strings);

    // The text area's offset is only known at the end; symbols are placed
    // relative to it, so leave their values for later.
    let mut symtab_bytes = vec![0u8; 24];
    for (sym, &name) in spec.syms.iter().zip(&names) {
        let mut entry = [0u8; 24];
        put(&mut entry, 0, &name.to_le_bytes());
        entry[4] = sym.info;
        put(&mut entry, 6, &sym.shndx.to_le_bytes());
        put(&mut entry, 16, &8u64.to_le_bytes());
        symtab_bytes.extend_from_slice(&entry);
    }
    let symtab = append(&mut bytes, &symtab_bytes);
    let nsyms = spec.syms.len() + 1;

    let hash = spec.sysv_hash.then(|| {
        // One bucket holding the last symbol, each chain entry the previous.
        let mut table = vec![1u32, nsyms as u32, nsyms as u32 - 1];
        table.extend((0..nsyms as u32).map(|i| i.saturating_sub(1)));
        let table: Vec<u8> = table.iter().flat_map(|w| w.to_le_bytes()).collect();
        append(&mut bytes, &table)
    });

    let gnu_hash = spec.gnu_hash.then(|| {
        // One bucket, symoffset 1, one all-ones bloom word.
        let bucket = if spec.syms.is_empty() { 0u32 } else { 1 };
        let mut table = Vec::new();
        for word in [1u32, 1, 1, 0] {
            table.extend_from_slice(&word.to_le_bytes());
        }
        table.extend_from_slice(&u64::MAX.to_le_bytes());
        table.extend_from_slice(&bucket.to_le_bytes());
        for (i, sym) in spec.syms.iter().enumerate() {
            let last = u32::from(i + 1 == spec.syms.len());
            table.extend_from_slice(&((gnu_hash(sym.name) & !1) | last).to_le_bytes());
        }
        append(&mut bytes, &table)
    });

    let (versym, verdef) = match &spec.versions {
        None => (None, None),
        Some(versions) => {
            let mut versym_bytes = vec![0u8; 2];
            for sym in &spec.syms {
                versym_bytes.extend_from_slice(&sym.version.to_le_bytes());
            }
            let versym = append(&mut bytes, &versym_bytes);
            // Each definition (20 bytes) is followed by its one aux (8).
            let mut defs = Vec::new();
            let all_names = std::iter::once(base_name).chain(version_names.iter().copied());
            let count = versions.len() + 1;
            for (i, name) in all_names.enumerate() {
                let flags: u16 = if i == 0 { 1 } else { 0 };
                let next: u32 = if i + 1 == count { 0 } else { 28 };
                defs.extend_from_slice(&1u16.to_le_bytes());
                defs.extend_from_slice(&flags.to_le_bytes());
                defs.extend_from_slice(&(i as u16 + 1).to_le_bytes());
                defs.extend_from_slice(&1u16.to_le_bytes());
                defs.extend_from_slice(&0u32.to_le_bytes());
                defs.extend_from_slice(&20u32.to_le_bytes());
                defs.extend_from_slice(&next.to_le_bytes());
                defs.extend_from_slice(&name.to_le_bytes());
                defs.extend_from_slice(&0u32.to_le_bytes());
            }
            let verdef = append(&mut bytes, &defs);
            (Some(versym), Some(verdef))
        }
    };

    let text = append(&mut bytes, &[0xcc; TEXT_SIZE]);
    for (i, sym) in spec.syms.iter().enumerate() {
        let value = vaddr(text + sym.text);
        put(&mut bytes, symtab + 24 * (i + 1) + 8, &value.to_le_bytes());
    }

    let mut dynamic = vec![
        (5, vaddr(strtab)),
        (10, strings.len() as u64),
        (6, vaddr(symtab)),
        (11, 24),
    ];
    dynamic.extend(hash.map(|off| (4, vaddr(off))));
    dynamic.extend(gnu_hash.map(|off| (0x6fff_fef5, vaddr(off))));
    dynamic.extend(versym.map(|off| (0x6fff_fff0, vaddr(off))));
    dynamic.extend(verdef.map(|off| (0x6fff_fffc, vaddr(off))));
    dynamic.extend(verdef.map(|_| {
        (
            0x6fff_fffd,
            spec.versions.iter().flatten().count() as u64 + 1,
        )
    }));
    assert!(dynamic.len() < DYNAMIC_ENTRIES);
    for (i, &(tag, value)) in dynamic.iter().enumerate() {
        put(&mut bytes, DYNAMIC + 16 * i, &u64::to_le_bytes(tag));
        put(&mut bytes, DYNAMIC + 16 * i + 8, &value.to_le_bytes());
    }

    let len = bytes.len() as u64;
    // ELF header.
    put(&mut bytes, 0, b"\x7fELF\x02\x01\x01");
    put(&mut bytes, 16, &3u16.to_le_bytes()); // ET_DYN
    put(&mut bytes, 18, &62u16.to_le_bytes()); // EM_X86_64
    put(&mut bytes, 20, &1u32.to_le_bytes());
    put(&mut bytes, 32, &(PHDRS as u64).to_le_bytes());
    put(&mut bytes, 52, &64u16.to_le_bytes());
    put(&mut bytes, 54, &56u16.to_le_bytes());
    put(&mut bytes, 56, &(PHDR_COUNT as u16).to_le_bytes());
    // Program headers: type, flags, offset, vaddr, paddr, filesz, memsz, align.
    let phdrs: [(u32, u32, u64, u64, u64); PHDR_COUNT] = [
        (1, 5, 0, LOAD_VADDR, len),
        (
            2,
            4,
            DYNAMIC as u64,
            vaddr(DYNAMIC),
            (DYNAMIC_ENTRIES * 16) as u64,
        ),
        (4, 4, 0, LOAD_VADDR, 0),
    ];
    for (i, (kind, flags, offset, vaddr, size)) in phdrs.into_iter().enumerate() {
        let at = PHDRS + 56 * i;
        put(&mut bytes, at, &kind.to_le_bytes());
        put(&mut bytes, at + 4, &flags.to_le_bytes());
        put(&mut bytes, at + 8, &offset.to_le_bytes());
        put(&mut bytes, at + 16, &vaddr.to_le_bytes());
        put(&mut bytes, at + 24, &vaddr.to_le_bytes());
        put(&mut bytes, at + 32, &size.to_le_bytes());
        put(&mut bytes, at + 40, &size.to_le_bytes());
        put(&mut bytes, at + 48, &8u64.to_le_bytes());
    }

    Built {
        bytes,
        load_vaddr: LOAD_VADDR,
        dynamic: DYNAMIC,
        dynamic_size: DYNAMIC_ENTRIES * 16,
        dynamic_tags: dynamic.iter().map(|&(tag, _)| tag).collect(),
        symtab,
        strtab_size: strings.len(),
        hash,
        gnu_hash,
        verdef,
        text,
    }
}
