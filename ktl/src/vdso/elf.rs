//! A bounds-checked reader for the ELF64 image of the vDSO.
//!
//! This parser takes a plain byte slice and must cope with any bytes at all
//! (it is a fuzzing target), so it follows three rules:
//!
//! - every read goes through [`record`] or the `*_at` helpers, which return
//!   `None` instead of reading outside the slice;
//! - all offset arithmetic is checked (`checked_add`, `checked_mul`, ...);
//! - every loop runs at most a number of times derived from the slice length,
//!   or from a count that has been checked against the slice length.
//!
//! It contains no `unsafe` code.
//!
//! Only what a vDSO lookup needs is supported: a little-endian ELF64 shared
//! object with a `PT_LOAD` and a `PT_DYNAMIC` segment, a dynamic symbol table
//! sized by `DT_HASH` or `DT_GNU_HASH`, and optional symbol versioning
//! (`DT_VERSYM` + `DT_VERDEF`). Symbols are found by a linear scan of the
//! symbol table (the vDSO has a few dozen symbols and lookups are cached), so
//! the hash tables are used only to size the symbol table.

#![forbid(unsafe_code)]

use super::VdsoError;

// Sizes of the ELF64 structures read here.
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const DYN_SIZE: usize = 16;
const SYM_SIZE: usize = 24;
const VERSYM_SIZE: usize = 2;
const VERDEF_SIZE: usize = 20;
const VERDAUX_SIZE: usize = 8;

// e_ident.
const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;

// e_type.
const ET_DYN: u16 = 3;

// p_type.
const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;

// d_tag.
const DT_NULL: u64 = 0;
const DT_HASH: u64 = 4;
const DT_STRTAB: u64 = 5;
const DT_SYMTAB: u64 = 6;
const DT_STRSZ: u64 = 10;
const DT_SYMENT: u64 = 11;
const DT_GNU_HASH: u64 = 0x6fff_fef5;
const DT_VERSYM: u64 = 0x6fff_fff0;
const DT_VERDEF: u64 = 0x6fff_fffc;

// st_info.
const STT_NOTYPE: u8 = 0;
const STT_FUNC: u8 = 2;
const STB_GLOBAL: u8 = 1;
const STB_WEAK: u8 = 2;

// st_shndx of an undefined symbol.
const SHN_UNDEF: u16 = 0;

// The bit of a versym entry that marks a hidden version.
const VERSYM_HIDDEN: u16 = 0x8000;

/// `len` bytes at `off`, or `None` if they are not all inside `data`.
fn record(data: &[u8], off: usize, len: usize) -> Option<&[u8]> {
    data.get(off..)?.get(..len)
}

/// `N` bytes at `off`, or `None` if they are not all inside `data`.
fn array_at<const N: usize>(data: &[u8], off: usize) -> Option<[u8; N]> {
    data.get(off..)?.first_chunk::<N>().copied()
}

fn u8_at(data: &[u8], off: usize) -> Option<u8> {
    data.get(off).copied()
}

fn u16_at(data: &[u8], off: usize) -> Option<u16> {
    array_at(data, off).map(u16::from_le_bytes)
}

fn u32_at(data: &[u8], off: usize) -> Option<u32> {
    array_at(data, off).map(u32::from_le_bytes)
}

fn u64_at(data: &[u8], off: usize) -> Option<u64> {
    array_at(data, off).map(u64::from_le_bytes)
}

/// A 32-bit field read as a `usize` (count or offset).
fn usize32_at(data: &[u8], off: usize) -> Option<usize> {
    usize::try_from(u32_at(data, off)?).ok()
}

/// Offset of entry `index` in a table of `size`-byte entries at `base`.
fn entry(base: usize, index: usize, size: usize) -> Option<usize> {
    index.checked_mul(size)?.checked_add(base)
}

/// Whether a table of `count` entries of `size` bytes at `off` fits in `data`.
fn fits(data: &[u8], off: usize, count: usize, size: usize) -> bool {
    entry(off, count, size).is_some_and(|end| end <= data.len())
}

/// The program header fields used here.
#[derive(Clone, Copy, Debug)]
struct Segment {
    kind: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
}

impl Segment {
    /// The file offset just past the segment's bytes.
    fn file_end(&self) -> Result<usize, VdsoError> {
        self.offset
            .checked_add(self.filesz)
            .and_then(|end| usize::try_from(end).ok())
            .ok_or(VdsoError::BadProgramHeaders)
    }

    /// The file offset of virtual address `vaddr`, for the first `PT_LOAD`
    /// segment: `vaddr - p_vaddr + p_offset`. `None` on overflow; the caller
    /// checks the result against the image.
    fn file_offset(&self, vaddr: u64) -> Option<usize> {
        let off = vaddr.checked_sub(self.vaddr)?.checked_add(self.offset)?;
        usize::try_from(off).ok()
    }
}

/// The ELF header fields that locate the program header table.
struct Header {
    phoff: usize,
    phnum: usize,
}

impl Header {
    /// Checks the ELF header at the start of `data`.
    fn parse(data: &[u8]) -> Result<Self, VdsoError> {
        let ehdr = record(data, 0, EHDR_SIZE).ok_or(VdsoError::Truncated)?;
        if array_at::<4>(ehdr, 0) != Some(ELF_MAGIC) {
            return Err(VdsoError::BadMagic);
        }
        if u8_at(ehdr, 4) != Some(ELFCLASS64) {
            return Err(VdsoError::NotElf64);
        }
        if u8_at(ehdr, 5) != Some(ELFDATA2LSB) {
            return Err(VdsoError::NotLittleEndian);
        }
        if u16_at(ehdr, 16) != Some(ET_DYN) {
            return Err(VdsoError::NotSharedObject);
        }
        let phoff = u64_at(ehdr, 32).ok_or(VdsoError::Truncated)?;
        let phentsize = u16_at(ehdr, 54).ok_or(VdsoError::Truncated)?;
        let phnum = u16_at(ehdr, 56).ok_or(VdsoError::Truncated)?;
        if usize::from(phentsize) != PHDR_SIZE {
            return Err(VdsoError::BadProgramHeaders);
        }
        Ok(Header {
            phoff: usize::try_from(phoff).map_err(|_| VdsoError::BadProgramHeaders)?,
            phnum: usize::from(phnum),
        })
    }

    /// The offset just past the ELF header and the program header table.
    fn headers_end(&self) -> Result<usize, VdsoError> {
        entry(self.phoff, self.phnum, PHDR_SIZE)
            .map(|end| end.max(EHDR_SIZE))
            .ok_or(VdsoError::BadProgramHeaders)
    }

    /// Program header `index`; `Truncated` if it is not inside `data`.
    fn segment(&self, data: &[u8], index: usize) -> Result<Segment, VdsoError> {
        let read = || {
            let phdr = record(data, entry(self.phoff, index, PHDR_SIZE)?, PHDR_SIZE)?;
            Some(Segment {
                kind: u32_at(phdr, 0)?,
                offset: u64_at(phdr, 8)?,
                vaddr: u64_at(phdr, 16)?,
                filesz: u64_at(phdr, 32)?,
            })
        };
        read().ok_or(VdsoError::Truncated)
    }
}

/// The length of the ELF header plus the program header table, given the
/// first [`EHDR_SIZE`] bytes of an image.
pub(crate) fn headers_len(ehdr: &[u8]) -> Result<usize, VdsoError> {
    Header::parse(ehdr)?.headers_end()
}

/// The length of an image, given its first [`headers_len`] bytes: the end of
/// the furthest `PT_LOAD` segment in the file, or of the headers if further.
pub(crate) fn image_len(headers: &[u8]) -> Result<usize, VdsoError> {
    let header = Header::parse(headers)?;
    let mut end = header.headers_end()?;
    let mut has_load = false;
    for index in 0..header.phnum {
        let segment = header.segment(headers, index)?;
        if segment.kind == PT_LOAD {
            has_load = true;
            end = end.max(segment.file_end()?);
        }
    }
    if has_load {
        Ok(end)
    } else {
        Err(VdsoError::NoLoadSegment)
    }
}

/// The dynamic section entries used here (raw `d_val`s).
#[derive(Default)]
struct Dynamic {
    symtab: Option<u64>,
    strtab: Option<u64>,
    strsz: Option<u64>,
    syment: Option<u64>,
    hash: Option<u64>,
    gnu_hash: Option<u64>,
    versym: Option<u64>,
    verdef: Option<u64>,
}

impl Dynamic {
    /// Reads the dynamic section in `segment`, up to its `DT_NULL`.
    fn parse(data: &[u8], segment: &Segment) -> Result<Self, VdsoError> {
        let offset = usize::try_from(segment.offset).map_err(|_| VdsoError::BadDynamic)?;
        let len = usize::try_from(segment.filesz).map_err(|_| VdsoError::BadDynamic)?;
        let table = record(data, offset, len).ok_or(VdsoError::BadDynamic)?;
        let mut dynamic = Dynamic::default();
        for entry in table.chunks_exact(DYN_SIZE) {
            let (Some(tag), Some(val)) = (u64_at(entry, 0), u64_at(entry, 8)) else {
                return Err(VdsoError::BadDynamic);
            };
            let slot = match tag {
                DT_NULL => return Ok(dynamic),
                DT_SYMTAB => &mut dynamic.symtab,
                DT_STRTAB => &mut dynamic.strtab,
                DT_STRSZ => &mut dynamic.strsz,
                DT_SYMENT => &mut dynamic.syment,
                DT_HASH => &mut dynamic.hash,
                DT_GNU_HASH => &mut dynamic.gnu_hash,
                DT_VERSYM => &mut dynamic.versym,
                DT_VERDEF => &mut dynamic.verdef,
                _ => continue,
            };
            *slot = Some(val);
        }
        // No DT_NULL before the end of the segment.
        Err(VdsoError::BadDynamic)
    }
}

/// The number of symbols, from a `DT_HASH` table at `off`: its `nchain`.
fn sysv_hash_count(data: &[u8], off: usize) -> Option<usize> {
    let nbucket = usize32_at(data, off)?;
    let nchain = usize32_at(data, off.checked_add(4)?)?;
    // The buckets and chains follow the two-word header.
    let table = off.checked_add(8)?;
    fits(data, table, nbucket.checked_add(nchain)?, 4).then_some(nchain)
}

/// The number of symbols, from a `DT_GNU_HASH` table at `off`.
///
/// The table only covers symbols from `symoffset` on. The last symbol is the
/// end of the chain that starts at the highest bucket value: chain entries
/// have their low bit set at the end of a chain.
fn gnu_hash_count(data: &[u8], off: usize) -> Option<usize> {
    let nbuckets = usize32_at(data, off)?;
    let symoffset = usize32_at(data, off.checked_add(4)?)?;
    let bloom_size = usize32_at(data, off.checked_add(8)?)?;
    // Header (4 words), bloom filter (64-bit words on ELF64), buckets, chains.
    let buckets = entry(off.checked_add(16)?, bloom_size, 8)?;
    let chains = entry(buckets, nbuckets, 4)?;
    let bucket_words = data.get(buckets..chains)?;

    let mut last = 0;
    for word in bucket_words.chunks_exact(4) {
        last = last.max(usize32_at(word, 0)?);
    }
    if last == 0 {
        // Every bucket is empty: only the unhashed symbols exist.
        return Some(symoffset);
    }
    // A non-empty bucket holds a symbol index of at least `symoffset`.
    let mut chain_entry = entry(chains, last.checked_sub(symoffset)?, 4)?;
    // Each step reads a further 4 bytes of `data`, so this bound is never the
    // one that stops a well-formed table.
    for _ in 0..data.len() / 4 {
        if u32_at(data, chain_entry)? & 1 == 1 {
            return last.checked_add(1);
        }
        last = last.checked_add(1)?;
        chain_entry = chain_entry.checked_add(4)?;
    }
    None
}

/// One version definition (`Elf64_Verdef` and its first `Elf64_Verdaux`).
struct Verdef {
    /// `vd_ndx`, the index that versym entries refer to.
    ndx: u16,
    /// `vda_name` of the first auxiliary entry: the version's name.
    name: u32,
    /// The offset of the next definition, if any.
    next: Option<usize>,
}

impl Verdef {
    fn parse(data: &[u8], off: usize) -> Option<Self> {
        let def = record(data, off, VERDEF_SIZE)?;
        let aux = off.checked_add(usize32_at(def, 12)?)?;
        let aux = record(data, aux, VERDAUX_SIZE)?;
        let next = match usize32_at(def, 16)? {
            0 => None,
            delta => Some(off.checked_add(delta)?),
        };
        Some(Verdef {
            ndx: u16_at(def, 4)?,
            name: u32_at(aux, 0)?,
            next,
        })
    }
}

/// The most version definitions `data` can hold; bounds walks of the chain.
fn max_verdefs(data: &[u8]) -> usize {
    data.len() / VERDEF_SIZE
}

/// Whether the chain of version definitions at `off` lies inside `data` and
/// ends.
fn verdefs_ok(data: &[u8], mut off: usize) -> bool {
    for _ in 0..max_verdefs(data) {
        let Some(def) = Verdef::parse(data, off) else {
            return false;
        };
        match def.next {
            Some(next) => off = next,
            None => return true,
        }
    }
    false
}

/// Locations of the symbol versioning tables.
#[derive(Clone, Copy, Debug)]
struct Versions {
    /// `DT_VERSYM`: one `u16` per symbol.
    versym: usize,
    /// `DT_VERDEF`: the first version definition.
    verdef: usize,
}

/// A parsed ELF64 shared object image, such as the vDSO.
///
/// It borrows the image bytes and keeps only offsets into them.
/// [`Image::symbol_offset`] finds a symbol by name and version.
#[derive(Clone, Copy)]
pub struct Image<'a> {
    data: &'a [u8],
    /// The first `PT_LOAD` segment: maps symbol values to offsets.
    load: Segment,
    symtab: usize,
    nsyms: usize,
    /// The string table is `data[strtab..strtab_end]`.
    strtab: usize,
    strtab_end: usize,
    versions: Option<Versions>,
}

impl<'a> Image<'a> {
    /// Parses the ELF64 image at the start of `data`.
    ///
    /// The image runs to the end of the headers or of the furthest `PT_LOAD`
    /// segment's bytes in the file, whichever is further (the length that
    /// `image_len` gives). `data` must hold at least that much; trailing
    /// bytes are ignored: they are not part of [`Image::bytes`], and no table,
    /// string or symbol is looked for in them, so they never change an
    /// answer. Never panics, whatever the bytes.
    pub fn parse(data: &'a [u8]) -> Result<Self, VdsoError> {
        let header = Header::parse(data)?;
        let mut end = header.headers_end()?;
        if end > data.len() {
            return Err(VdsoError::Truncated);
        }
        let mut load = None;
        let mut dynamic = None;
        for index in 0..header.phnum {
            let segment = header.segment(data, index)?;
            match segment.kind {
                PT_LOAD => {
                    let file_end = segment.file_end()?;
                    if file_end > data.len() {
                        return Err(VdsoError::Truncated);
                    }
                    end = end.max(file_end);
                    load.get_or_insert(segment);
                }
                PT_DYNAMIC => {
                    dynamic.get_or_insert(segment);
                }
                _ => {}
            }
        }
        let load = load.ok_or(VdsoError::NoLoadSegment)?;
        // From here on, `data` is the image alone: every table and symbol
        // must be inside it.
        let data = data.get(..end).ok_or(VdsoError::Truncated)?;
        let dynamic = Dynamic::parse(data, &dynamic.ok_or(VdsoError::NoDynamic)?)?;

        // The dynamic entries hold virtual addresses; this finds the bytes.
        let offset = |vaddr: u64, error: VdsoError| {
            load.file_offset(vaddr)
                .filter(|&off| off <= data.len())
                .ok_or(error)
        };

        let (Some(symtab), Some(strtab)) = (dynamic.symtab, dynamic.strtab) else {
            return Err(VdsoError::NoSymbolTable);
        };
        let symtab = offset(symtab, VdsoError::BadSymbolTable)?;
        if dynamic.syment.is_some_and(|size| size != SYM_SIZE as u64) {
            return Err(VdsoError::BadSymbolTable);
        }

        let strtab = offset(strtab, VdsoError::BadStringTable)?;
        let strtab_end = match dynamic.strsz {
            None => data.len(),
            Some(size) => usize::try_from(size)
                .ok()
                .and_then(|size| strtab.checked_add(size))
                .filter(|&end| end <= data.len())
                .ok_or(VdsoError::BadStringTable)?,
        };

        let nsyms = if let Some(hash) = dynamic.hash {
            let hash = offset(hash, VdsoError::BadHashTable)?;
            sysv_hash_count(data, hash).ok_or(VdsoError::BadHashTable)?
        } else if let Some(gnu_hash) = dynamic.gnu_hash {
            let gnu_hash = offset(gnu_hash, VdsoError::BadHashTable)?;
            gnu_hash_count(data, gnu_hash).ok_or(VdsoError::BadHashTable)?
        } else {
            return Err(VdsoError::NoHashTable);
        };
        if !fits(data, symtab, nsyms, SYM_SIZE) {
            return Err(VdsoError::BadSymbolTable);
        }

        // Versioning needs both tables; with only one, names alone match.
        let versions = match (dynamic.versym, dynamic.verdef) {
            (Some(versym), Some(verdef)) => {
                let versym = offset(versym, VdsoError::BadVersionTable)?;
                let verdef = offset(verdef, VdsoError::BadVersionTable)?;
                if !fits(data, versym, nsyms, VERSYM_SIZE) || !verdefs_ok(data, verdef) {
                    return Err(VdsoError::BadVersionTable);
                }
                Some(Versions { versym, verdef })
            }
            _ => None,
        };

        Ok(Image {
            data,
            load,
            symtab,
            nsyms,
            strtab,
            strtab_end,
            versions,
        })
    }

    /// The image bytes: the start of the slice this was parsed from, up to
    /// the end of the image (see [`Image::parse`]).
    pub fn bytes(&self) -> &'a [u8] {
        self.data
    }

    /// The number of entries in the dynamic symbol table (including the
    /// null symbol at index 0).
    pub fn symbol_count(&self) -> usize {
        self.nsyms
    }

    /// Whether the image has symbol versioning (`DT_VERSYM` and `DT_VERDEF`).
    /// Without it, [`Image::symbol_offset`] matches names alone.
    pub fn is_versioned(&self) -> bool {
        self.versions.is_some()
    }

    /// The offset within the image of the function `name` at `version`.
    ///
    /// A symbol matches when its name is `name`, it is a function (or has no
    /// type), it is global or weak, it is defined, and its version, ignoring
    /// the hidden bit, is named `version`. The offset is always less than the
    /// image length. Returns the first match in symbol table order.
    pub fn symbol_offset(&self, name: &str, version: &str) -> Option<usize> {
        (0..self.nsyms).find_map(|index| self.match_symbol(index, name, version))
    }

    /// The offset of symbol `index` if it matches `name` and `version`.
    fn match_symbol(&self, index: usize, name: &str, version: &str) -> Option<usize> {
        let sym = record(self.data, entry(self.symtab, index, SYM_SIZE)?, SYM_SIZE)?;
        let st_name = u32_at(sym, 0)?;
        let st_info = u8_at(sym, 4)?;
        let st_shndx = u16_at(sym, 6)?;
        let st_value = u64_at(sym, 8)?;

        let (kind, binding) = (st_info & 0xf, st_info >> 4);
        if !matches!(kind, STT_FUNC | STT_NOTYPE)
            || !matches!(binding, STB_GLOBAL | STB_WEAK)
            || st_shndx == SHN_UNDEF
            || !self.string_is(st_name, name)
        {
            return None;
        }
        if let Some(versions) = self.versions {
            let versym = entry(versions.versym, index, VERSYM_SIZE)?;
            let ndx = u16_at(self.data, versym)? & !VERSYM_HIDDEN;
            if !self.version_is(versions, ndx, version) {
                return None;
            }
        }
        self.load
            .file_offset(st_value)
            .filter(|&off| off < self.data.len())
    }

    /// Whether the first definition of version index `ndx` is named
    /// `version`.
    fn version_is(&self, versions: Versions, ndx: u16, version: &str) -> bool {
        let mut off = versions.verdef;
        for _ in 0..max_verdefs(self.data) {
            let Some(def) = Verdef::parse(self.data, off) else {
                return false;
            };
            if def.ndx == ndx {
                return self.string_is(def.name, version);
            }
            match def.next {
                Some(next) => off = next,
                None => return false,
            }
        }
        false
    }

    /// Whether the NUL-terminated string at `off` in the string table is
    /// `expected`. The NUL must be inside the table. This reads only as many
    /// bytes as `expected` has, plus one.
    fn string_is(&self, off: u32, expected: &str) -> bool {
        let expected = expected.as_bytes();
        let rest = usize::try_from(off)
            .ok()
            .and_then(|off| self.data.get(self.strtab..self.strtab_end)?.get(off..));
        // A string in the table cannot contain a NUL.
        !expected.contains(&0)
            && rest
                .and_then(|rest| rest.strip_prefix(expected))
                .is_some_and(|tail| tail.first() == Some(&0))
    }
}

impl core::fmt::Debug for Image<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Image")
            .field("len", &self.data.len())
            .field("symbols", &self.nsyms)
            .field("versioned", &self.versions.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vdso::test_util::{Built, PHDR_COUNT, Spec, Sym, XorShift, build};

    // st_info values.
    const FUNC_GLOBAL: u8 = (STB_GLOBAL << 4) | STT_FUNC;
    const FUNC_WEAK: u8 = (STB_WEAK << 4) | STT_FUNC;
    const NOTYPE_GLOBAL: u8 = (STB_GLOBAL << 4) | STT_NOTYPE;
    const OBJECT_GLOBAL: u8 = (STB_GLOBAL << 4) | 1;
    const FUNC_LOCAL: u8 = STT_FUNC;

    fn sym(name: &'static str, info: u8, text: usize, version: u16) -> Sym {
        Sym {
            name,
            info,
            shndx: 7,
            text,
            version,
        }
    }

    /// A versioned image: versions "V1" (index 2) and "V2" (index 3).
    fn versioned() -> Built {
        build(&Spec {
            syms: vec![
                sym("func", FUNC_GLOBAL, 0, 2),
                sym("func", FUNC_GLOBAL, 8, 3),
                sym("hidden", FUNC_GLOBAL, 16, 0x8003),
                sym("weak", FUNC_WEAK, 24, 2),
                sym("notype", NOTYPE_GLOBAL, 32, 2),
                sym("object", OBJECT_GLOBAL, 40, 2),
                sym("local", FUNC_LOCAL, 48, 2),
                Sym {
                    shndx: 0,
                    ..sym("undef", FUNC_GLOBAL, 56, 2)
                },
                sym("base", FUNC_GLOBAL, 60, 1),
                // No definition has index 9.
                sym("orphan", FUNC_GLOBAL, 44, 9),
            ],
            versions: Some(vec!["V1", "V2"]),
            sysv_hash: true,
            gnu_hash: true,
        })
    }

    fn put_u16(bytes: &mut [u8], off: usize, value: u16) {
        bytes[off..off + 2].copy_from_slice(&value.to_le_bytes());
    }

    fn put_u32(bytes: &mut [u8], off: usize, value: u32) {
        bytes[off..off + 4].copy_from_slice(&value.to_le_bytes());
    }

    fn put_u64(bytes: &mut [u8], off: usize, value: u64) {
        bytes[off..off + 8].copy_from_slice(&value.to_le_bytes());
    }

    /// Sets the value of dynamic entry `tag`, which must be present.
    fn set_dynamic(built: &mut Built, tag: u64, value: u64) {
        let index = built
            .dynamic_tags
            .iter()
            .position(|&t| t == tag)
            .expect("tag present");
        put_u64(
            &mut built.bytes,
            built.dynamic + index * DYN_SIZE + 8,
            value,
        );
    }

    /// Changes dynamic entry `tag` to an ignored tag.
    fn remove_dynamic(built: &mut Built, tag: u64) {
        let index = built
            .dynamic_tags
            .iter()
            .position(|&t| t == tag)
            .expect("tag present");
        put_u64(
            &mut built.bytes,
            built.dynamic + index * DYN_SIZE,
            0x7000_0000,
        );
    }

    fn parse(bytes: &[u8]) -> Result<Image<'_>, VdsoError> {
        Image::parse(bytes)
    }

    #[test]
    fn versioned_lookup() {
        let built = versioned();
        let image = parse(&built.bytes).unwrap();
        let text = built.text;
        assert!(image.is_versioned());
        assert_eq!(image.symbol_count(), 11);
        assert_eq!(image.bytes().len(), built.bytes.len());

        assert_eq!(image.symbol_offset("func", "V1"), Some(text));
        assert_eq!(image.symbol_offset("func", "V2"), Some(text + 8));
        assert_eq!(image.symbol_offset("func", "V3"), None);
        assert_eq!(image.symbol_offset("func", ""), None);
        // The hidden bit is ignored.
        assert_eq!(image.symbol_offset("hidden", "V2"), Some(text + 16));
        assert_eq!(image.symbol_offset("hidden", "V1"), None);
        assert_eq!(image.symbol_offset("weak", "V1"), Some(text + 24));
        assert_eq!(image.symbol_offset("notype", "V1"), Some(text + 32));
        // Wrong type, binding, or undefined.
        assert_eq!(image.symbol_offset("object", "V1"), None);
        assert_eq!(image.symbol_offset("local", "V1"), None);
        assert_eq!(image.symbol_offset("undef", "V1"), None);
        // Version index 1 is the base definition, named after the object.
        assert_eq!(image.symbol_offset("base", "test.so"), Some(text + 60));
        assert_eq!(image.symbol_offset("base", "V1"), None);
        // A version index without a definition matches nothing.
        assert_eq!(image.symbol_offset("orphan", "V1"), None);
        assert_eq!(image.symbol_offset("orphan", "V2"), None);
        assert_eq!(image.symbol_offset("orphan", "test.so"), None);
        // Names must match exactly.
        assert_eq!(image.symbol_offset("fun", "V1"), None);
        assert_eq!(image.symbol_offset("funcs", "V1"), None);
        assert_eq!(image.symbol_offset("func\0", "V1"), None);
        assert_eq!(image.symbol_offset("", "V1"), None);
        assert_eq!(image.symbol_offset("func", "V1\0"), None);
    }

    #[test]
    fn unversioned_lookup() {
        let built = build(&Spec {
            syms: vec![
                sym("func", FUNC_GLOBAL, 4, 0),
                // An empty name: the string table has "func\0\0".
                sym("", FUNC_GLOBAL, 20, 0),
                sym("object", OBJECT_GLOBAL, 12, 0),
            ],
            versions: None,
            sysv_hash: true,
            gnu_hash: false,
        });
        let image = parse(&built.bytes).unwrap();
        assert!(!image.is_versioned());
        assert_eq!(image.symbol_count(), 4);
        assert_eq!(image.symbol_offset("func", "ANY"), Some(built.text + 4));
        assert_eq!(image.symbol_offset("func\0", "ANY"), None);
        assert_eq!(image.symbol_offset("", "ANY"), Some(built.text + 20));
        assert_eq!(image.symbol_offset("func", ""), Some(built.text + 4));
        assert_eq!(image.symbol_offset("object", "ANY"), None);
        assert_eq!(image.symbol_offset("other", "ANY"), None);
    }

    #[test]
    fn versym_without_verdef_matches_names() {
        let mut built = versioned();
        remove_dynamic(&mut built, DT_VERDEF);
        let image = parse(&built.bytes).unwrap();
        assert!(!image.is_versioned());
        // First match in table order.
        assert_eq!(image.symbol_offset("func", "V2"), Some(built.text));
        assert_eq!(image.symbol_offset("base", "V9"), Some(built.text + 60));
    }

    #[test]
    fn gnu_hash_only() {
        let mut spec = Spec {
            syms: vec![
                sym("a", FUNC_GLOBAL, 0, 2),
                sym("b", FUNC_GLOBAL, 8, 2),
                sym("c", FUNC_GLOBAL, 16, 2),
            ],
            versions: Some(vec!["V1"]),
            sysv_hash: false,
            gnu_hash: true,
        };
        let built = build(&spec);
        let image = parse(&built.bytes).unwrap();
        assert_eq!(image.symbol_count(), 4);
        assert_eq!(image.symbol_offset("c", "V1"), Some(built.text + 16));

        // No symbols at all: every bucket is empty, only the null symbol.
        spec.syms.clear();
        let built = build(&spec);
        let image = parse(&built.bytes).unwrap();
        assert_eq!(image.symbol_count(), 1);
        assert_eq!(image.symbol_offset("a", "V1"), None);
    }

    #[test]
    fn gnu_hash_agrees_with_sysv_hash() {
        let built = versioned();
        let both = parse(&built.bytes).unwrap().symbol_count();
        let mut gnu_only = built;
        remove_dynamic(&mut gnu_only, DT_HASH);
        assert_eq!(parse(&gnu_only.bytes).unwrap().symbol_count(), both);
    }

    #[test]
    fn no_hash_table() {
        let mut built = versioned();
        remove_dynamic(&mut built, DT_HASH);
        remove_dynamic(&mut built, DT_GNU_HASH);
        assert_eq!(parse(&built.bytes).unwrap_err(), VdsoError::NoHashTable);
    }

    #[test]
    fn header_errors() {
        let good = versioned().bytes;
        assert_eq!(parse(&[]).unwrap_err(), VdsoError::Truncated);
        assert_eq!(parse(&good[..63]).unwrap_err(), VdsoError::Truncated);
        // A header alone, without its program headers.
        assert_eq!(parse(&good[..64]).unwrap_err(), VdsoError::Truncated);

        let with = |off: usize, bytes: &[u8]| {
            let mut copy = good.clone();
            copy[off..off + bytes.len()].copy_from_slice(bytes);
            parse(&copy).map(|_| ())
        };
        assert_eq!(with(0, b"\x7fELG"), Err(VdsoError::BadMagic));
        assert_eq!(with(4, &[1]), Err(VdsoError::NotElf64));
        assert_eq!(with(5, &[2]), Err(VdsoError::NotLittleEndian));
        assert_eq!(
            with(16, &2u16.to_le_bytes()),
            Err(VdsoError::NotSharedObject)
        );
        assert_eq!(
            with(54, &32u16.to_le_bytes()),
            Err(VdsoError::BadProgramHeaders)
        );
        assert_eq!(
            with(56, &0xffffu16.to_le_bytes()),
            Err(VdsoError::Truncated)
        );
        assert_eq!(with(56, &0u16.to_le_bytes()), Err(VdsoError::NoLoadSegment));
        assert_eq!(
            with(32, &u64::MAX.to_le_bytes()),
            Err(VdsoError::BadProgramHeaders)
        );
        assert_eq!(
            with(32, &(1u64 << 40).to_le_bytes()),
            Err(VdsoError::Truncated)
        );
        // The PT_DYNAMIC header turned into a PT_NOTE.
        assert_eq!(
            with(64 + PHDR_SIZE, &4u32.to_le_bytes()),
            Err(VdsoError::NoDynamic)
        );
        // PT_LOAD past the end of the data, or overflowing.
        assert_eq!(
            with(64 + 32, &(1u64 << 20).to_le_bytes()),
            Err(VdsoError::Truncated)
        );
        assert_eq!(
            with(64 + 8, &u64::MAX.to_le_bytes()),
            Err(VdsoError::BadProgramHeaders)
        );
    }

    #[test]
    fn headers_and_image_len() {
        let good = versioned().bytes;
        assert_eq!(headers_len(&good[..64]), Ok(64 + PHDR_COUNT * PHDR_SIZE));
        assert_eq!(headers_len(&good[..63]), Err(VdsoError::Truncated));
        assert_eq!(
            image_len(&good[..64 + PHDR_COUNT * PHDR_SIZE]),
            Ok(good.len())
        );
        assert_eq!(
            image_len(&good[..64 + PHDR_SIZE]),
            Err(VdsoError::Truncated)
        );
        // Trailing bytes do not change the image length.
        let mut longer = good.clone();
        longer.extend_from_slice(&[0xff; 100]);
        assert_eq!(image_len(&longer), Ok(good.len()));
        assert!(parse(&longer).is_ok());
    }

    #[test]
    fn every_prefix_is_truncated() {
        let good = versioned().bytes;
        for len in 0..good.len() {
            assert_eq!(
                parse(&good[..len]).unwrap_err(),
                VdsoError::Truncated,
                "len {len}"
            );
        }
        assert!(parse(&good).is_ok());
    }

    #[test]
    fn dynamic_errors() {
        let built = versioned();
        let check = |change: &dyn Fn(&mut Built)| {
            let mut copy = Built {
                bytes: built.bytes.clone(),
                dynamic_tags: built.dynamic_tags.clone(),
                ..built
            };
            change(&mut copy);
            parse(&copy.bytes).map(|_| ())
        };
        let dynamic_phdr = 64 + PHDR_SIZE;
        let len = built.bytes.len() as u64;

        // The dynamic segment too big for the data, or overflowing.
        assert_eq!(
            check(&|b| put_u64(&mut b.bytes, dynamic_phdr + 32, len)),
            Err(VdsoError::BadDynamic)
        );
        assert_eq!(
            check(&|b| put_u64(&mut b.bytes, dynamic_phdr + 8, u64::MAX)),
            Err(VdsoError::BadDynamic)
        );
        // No DT_NULL inside the segment.
        assert_eq!(
            check(&|b| {
                let end = b.dynamic + b.dynamic_size;
                for off in (b.dynamic..end).step_by(DYN_SIZE) {
                    if u64_at(&b.bytes, off) == Some(DT_NULL) {
                        put_u64(&mut b.bytes, off, 0x7000_0000);
                    }
                }
            }),
            Err(VdsoError::BadDynamic)
        );
        // A segment too short for one entry has no DT_NULL either.
        assert_eq!(
            check(&|b| put_u64(&mut b.bytes, dynamic_phdr + 32, 15)),
            Err(VdsoError::BadDynamic)
        );
        assert_eq!(
            check(&|b| remove_dynamic(b, DT_SYMTAB)),
            Err(VdsoError::NoSymbolTable)
        );
        assert_eq!(
            check(&|b| remove_dynamic(b, DT_STRTAB)),
            Err(VdsoError::NoSymbolTable)
        );
        assert_eq!(
            check(&|b| set_dynamic(b, DT_SYMENT, 32)),
            Err(VdsoError::BadSymbolTable)
        );
        // Addresses below the load address, or past the image.
        assert_eq!(
            check(&|b| set_dynamic(b, DT_SYMTAB, 0)),
            Err(VdsoError::BadSymbolTable)
        );
        assert_eq!(
            check(&|b| set_dynamic(b, DT_SYMTAB, u64::MAX)),
            Err(VdsoError::BadSymbolTable)
        );
        // The symbol table runs past the end of the image.
        let last_symbol = b_vaddr(&built, built.bytes.len() - SYM_SIZE);
        assert_eq!(
            check(&|b| set_dynamic(b, DT_SYMTAB, last_symbol)),
            Err(VdsoError::BadSymbolTable)
        );
        assert_eq!(
            check(&|b| set_dynamic(b, DT_STRTAB, u64::MAX)),
            Err(VdsoError::BadStringTable)
        );
        assert_eq!(
            check(&|b| set_dynamic(b, DT_STRSZ, len)),
            Err(VdsoError::BadStringTable)
        );
        assert_eq!(
            check(&|b| set_dynamic(b, DT_STRSZ, u64::MAX)),
            Err(VdsoError::BadStringTable)
        );
        assert_eq!(
            check(&|b| set_dynamic(b, DT_HASH, u64::MAX)),
            Err(VdsoError::BadHashTable)
        );
        assert_eq!(
            check(&|b| set_dynamic(b, DT_VERSYM, u64::MAX)),
            Err(VdsoError::BadVersionTable)
        );
        assert_eq!(
            check(&|b| set_dynamic(b, DT_VERDEF, u64::MAX)),
            Err(VdsoError::BadVersionTable)
        );
        let last_versym = b_vaddr(&built, built.bytes.len() - 2);
        assert_eq!(
            check(&|b| set_dynamic(b, DT_VERSYM, last_versym)),
            Err(VdsoError::BadVersionTable)
        );
        // Without DT_STRSZ, the string table must still start in the image.
        let past_end = b_vaddr(&built, built.bytes.len() + 1);
        assert_eq!(
            check(&|b| {
                remove_dynamic(b, DT_STRSZ);
                set_dynamic(b, DT_STRTAB, past_end);
            }),
            Err(VdsoError::BadStringTable)
        );
    }

    #[test]
    fn first_load_segment_gives_the_bias() {
        let built = versioned();
        let load = 64;
        let note = 64 + 2 * PHDR_SIZE;
        let len = built.bytes.len() as u64;

        // The first PT_LOAD starting 16 bytes into the file: same mapping.
        let mut copy = built.bytes.clone();
        put_u64(&mut copy, load + 8, 16);
        put_u64(&mut copy, load + 16, built.load_vaddr + 16);
        put_u64(&mut copy, load + 32, len - 16);
        let image = parse(&copy).unwrap();
        assert_eq!(image.symbol_offset("func", "V2"), Some(built.text + 8));

        // A second PT_LOAD with another bias is not used.
        let mut copy = built.bytes.clone();
        put_u32(&mut copy, note, PT_LOAD);
        put_u64(&mut copy, note + 16, 0x1234_0000);
        put_u64(&mut copy, note + 32, len);
        let image = parse(&copy).unwrap();
        assert_eq!(image.symbol_offset("func", "V2"), Some(built.text + 8));

        // But it must be inside the data too, and counts for the length.
        put_u64(&mut copy, note + 32, len + 1);
        assert_eq!(parse(&copy).unwrap_err(), VdsoError::Truncated);
        assert_eq!(image_len(&copy), Ok(copy.len() + 1));
    }

    /// The virtual address of image offset `off`.
    fn b_vaddr(built: &Built, off: usize) -> u64 {
        built.load_vaddr + off as u64
    }

    #[test]
    fn missing_string_table_size_extends_to_end() {
        let mut built = versioned();
        remove_dynamic(&mut built, DT_STRSZ);
        let image = parse(&built.bytes).unwrap();
        assert_eq!(image.symbol_offset("func", "V2"), Some(built.text + 8));
    }

    #[test]
    fn unterminated_strings_do_not_match() {
        let mut built = versioned();
        // The string table ends in the middle of the last name.
        let size = built.strtab_size as u64;
        set_dynamic(&mut built, DT_STRSZ, size - 1);
        let image = parse(&built.bytes).unwrap();
        // Strings are added in order, the last one being the name of "V2".
        assert_eq!(image.symbol_offset("func", "V1"), Some(built.text));
        assert_eq!(image.symbol_offset("func", "V2"), None);
    }

    #[test]
    fn sysv_hash_errors() {
        let built = versioned();
        let hash = built.hash.unwrap();
        let with = |off: usize, value: u32| {
            let mut copy = built.bytes.clone();
            put_u32(&mut copy, off, value);
            parse(&copy).map(|image| image.symbol_count())
        };
        assert_eq!(with(hash, u32::MAX), Err(VdsoError::BadHashTable));
        assert_eq!(with(hash + 4, u32::MAX), Err(VdsoError::BadHashTable));
        assert_eq!(with(hash + 4, 0x4000_0000), Err(VdsoError::BadHashTable));
        // A count the hash table can hold but the symbol table cannot.
        let room = (built.bytes.len() - hash) / 4 - 2 - 1;
        assert_eq!(with(hash + 4, room as u32), Err(VdsoError::BadSymbolTable));
        // Fewer symbols than the table holds is consistent.
        assert_eq!(with(hash + 4, 2), Ok(2));
        assert_eq!(with(hash + 4, 0), Ok(0));
        // Chains are never walked, so cycles in them are harmless.
        let mut copy = built.bytes.clone();
        for index in 0..11 {
            // One bucket, then the chain: every entry points at itself.
            put_u32(&mut copy, hash + 12 + 4 * index, index as u32);
        }
        put_u32(&mut copy, hash + 8, 5);
        let image = parse(&copy).unwrap();
        assert_eq!(image.symbol_offset("weak", "V1"), Some(built.text + 24));
    }

    #[test]
    fn gnu_hash_errors() {
        let mut built = versioned();
        remove_dynamic(&mut built, DT_HASH);
        let gnu = built.gnu_hash.unwrap();
        // Header: nbuckets, symoffset, bloom_size, bloom_shift; one bloom
        // word; one bucket; then the chain.
        let bucket = gnu + 16 + 8;
        let chain = bucket + 4;
        let with = |changes: &[(usize, u32)]| {
            let mut copy = built.bytes.clone();
            for &(off, value) in changes {
                put_u32(&mut copy, off, value);
            }
            parse(&copy).map(|image| image.symbol_count())
        };
        assert_eq!(with(&[]), Ok(11));
        assert_eq!(with(&[(gnu, u32::MAX)]), Err(VdsoError::BadHashTable));
        assert_eq!(with(&[(gnu + 8, u32::MAX)]), Err(VdsoError::BadHashTable));
        assert_eq!(with(&[(gnu + 4, u32::MAX)]), Err(VdsoError::BadHashTable));
        // A bucket below symoffset, or far past the end.
        assert_eq!(with(&[(gnu + 4, 5)]), Err(VdsoError::BadHashTable));
        assert_eq!(with(&[(bucket, u32::MAX)]), Err(VdsoError::BadHashTable));
        assert_eq!(with(&[(bucket, 0x4000_0000)]), Err(VdsoError::BadHashTable));
        // An empty bucket: only the symbols below symoffset.
        assert_eq!(with(&[(bucket, 0)]), Ok(1));
        // The chain ends early.
        assert_eq!(with(&[(chain + 4 * 2, 1)]), Ok(4));
        // A chain that never ends runs off the end of the image.
        let mut copy = built.bytes.clone();
        for off in (chain..copy.len() - 3).step_by(4) {
            put_u32(&mut copy, off, 0x1234_5678);
        }
        assert_eq!(parse(&copy).unwrap_err(), VdsoError::BadHashTable);
    }

    #[test]
    fn verdef_errors() {
        let built = versioned();
        let verdef = built.verdef.unwrap();
        let with = |off: usize, value: u32| {
            let mut copy = built.bytes.clone();
            put_u32(&mut copy, off, value);
            parse(&copy).map(|image| image.symbol_offset("func", "V2"))
        };
        assert_eq!(with(verdef + 12, 20), Ok(Some(built.text + 8)));
        // vd_aux and vd_next out of the image.
        assert_eq!(with(verdef + 12, u32::MAX), Err(VdsoError::BadVersionTable));
        assert_eq!(with(verdef + 16, u32::MAX), Err(VdsoError::BadVersionTable));
        assert_eq!(
            with(verdef + 16, 0x10_0000),
            Err(VdsoError::BadVersionTable)
        );
        // The chain ends before "V2": its symbols are not found.
        assert_eq!(with(verdef + 16 + 28, 0), Ok(None));
        // Definitions every 4 bytes up to the end of the image: the walk
        // stops, at the end or at its bound.
        let mut copy = built.bytes.clone();
        for off in (verdef..copy.len() - 3).step_by(4) {
            put_u32(&mut copy, off, 4);
        }
        assert_eq!(parse(&copy).unwrap_err(), VdsoError::BadVersionTable);
        // A version name outside the string table.
        let mut copy = built.bytes.clone();
        put_u32(&mut copy, verdef + 2 * 28 + 20, u32::MAX);
        let image = parse(&copy).unwrap();
        assert_eq!(image.symbol_offset("func", "V2"), None);
        assert_eq!(image.symbol_offset("func", "V1"), Some(built.text));
    }

    #[test]
    fn symbol_values_outside_the_image() {
        let built = versioned();
        // Symbol 1 is "func"@V1; st_value is at offset 8.
        let value = built.symtab + SYM_SIZE + 8;
        let with = |vaddr: u64| {
            let mut copy = built.bytes.clone();
            put_u64(&mut copy, value, vaddr);
            Image::parse(&copy).unwrap().symbol_offset("func", "V1")
        };
        assert_eq!(with(built.load_vaddr), Some(0));
        let last = built.bytes.len() - 1;
        assert_eq!(with(b_vaddr(&built, last)), Some(last));
        assert_eq!(with(b_vaddr(&built, last + 1)), None);
        assert_eq!(with(built.load_vaddr - 1), None);
        assert_eq!(with(0), None);
        assert_eq!(with(u64::MAX), None);
    }

    #[test]
    fn trailing_bytes_are_not_part_of_the_image() {
        let built = versioned();
        let len = built.bytes.len();
        // "func"@V1 (symbol 1) just past the end of the image.
        let mut bytes = built.bytes.clone();
        put_u64(
            &mut bytes,
            built.symtab + SYM_SIZE + 8,
            b_vaddr(&built, len + 8),
        );
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0; 64]);
        for data in [&bytes, &longer] {
            let image = parse(data).unwrap();
            assert_eq!(image.bytes(), &bytes[..]);
            assert_eq!(image.symbol_offset("func", "V1"), None);
            assert_eq!(image.symbol_offset("func", "V2"), Some(built.text + 8));
        }

        // A PT_LOAD segment (the first program header) that ends where the
        // text starts ends the image there: the tables are still inside, the
        // symbols are not.
        let text = built.text;
        put_u64(&mut bytes, 64 + 32, text as u64);
        let image = parse(&bytes).unwrap();
        assert_eq!(image.bytes().len(), text);
        assert_eq!(image.symbol_offset("func", "V2"), None);
        assert_eq!(
            parse(&bytes[..text]).unwrap().symbol_count(),
            image.symbol_count()
        );
    }

    #[test]
    fn symbol_name_outside_string_table() {
        let mut built = versioned();
        put_u32(&mut built.bytes, built.symtab + SYM_SIZE, u32::MAX);
        put_u16(&mut built.bytes, built.symtab + 2 * SYM_SIZE + 6, 0);
        let image = parse(&built.bytes).unwrap();
        assert_eq!(image.symbol_offset("func", "V1"), None);
        assert_eq!(image.symbol_offset("func", "V2"), None);
        assert_eq!(image.symbol_offset("weak", "V1"), Some(built.text + 24));
    }

    #[test]
    fn random_corruption() {
        let good = versioned().bytes;
        let mut rng = XorShift::new(0x5eed_0001);
        let mut parsed = 0;
        for round in 0..20_000 {
            let mut bytes = good.clone();
            rng.corrupt(&mut bytes, 1 + round % 8);
            if let Ok(image) = Image::parse(&bytes) {
                parsed += 1;
                for (name, version) in [("func", "V1"), ("func", "V2"), ("weak", "V1")] {
                    if let Some(off) = image.symbol_offset(name, version) {
                        assert!(off < bytes.len());
                    }
                }
            }
        }
        // Most corruptions hit bytes that do not matter, so most still parse.
        assert!(parsed > 1000, "{parsed}");
    }

    #[test]
    fn random_bytes() {
        let good = versioned().bytes;
        let mut rng = XorShift::new(7);
        for _ in 0..2_000 {
            // A valid ELF header and program headers, then noise.
            let mut bytes = good.clone();
            for byte in &mut bytes[64 + PHDR_COUNT * PHDR_SIZE..] {
                *byte = rng.next() as u8;
            }
            if let Ok(image) = Image::parse(&bytes) {
                assert_eq!(image.symbol_offset("func", "V1"), None);
            }
        }
    }
}
