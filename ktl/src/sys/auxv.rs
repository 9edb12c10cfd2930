//! The auxiliary vector: `getauxval(3)`.

/// `AT_PHDR`: the address of the executable's program headers.
#[cfg(not(any(target_feature = "crt-static", target_env = "musl")))]
pub(crate) const AT_PHDR: u64 = libc::AT_PHDR;
/// `AT_SYSINFO_EHDR`: the address of the vDSO's ELF header.
pub(crate) const AT_SYSINFO_EHDR: u64 = libc::AT_SYSINFO_EHDR;

/// `getauxval(3)`: `None` when the entry is absent.
#[inline]
pub(crate) fn getauxval(tag: u64) -> Option<u64> {
    // glibc's getauxval reports a missing entry as 0 with errno ENOENT, but an
    // entry may be 0 too; the entries ktl reads are never 0 when present.
    // SAFETY: getauxval only reads the process's auxiliary vector, which the
    // C library saved at start-up; it has no preconditions.
    let v = unsafe { libc::getauxval(tag as libc::c_ulong) };
    (v != 0).then_some(v as u64)
}
