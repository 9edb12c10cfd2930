//! The kernel's rseq ABI: types, constants, layout checks and discovery.
//!
//! These are the definitions of `<linux/rseq.h>` and `<linux/auxvec.h>` that ktl
//! relies on, plus [`KernelSupport`], which tells what the running kernel offers,
//! and the KTLS prototype's additions with its features ([`KtlsFeatures`]).
//!
//! Every field that the kernel writes is an atomic in these types, so a shared
//! reference to a live area is sound even while the kernel updates it. Reads of
//! the calling thread's own area go through thread-pointer-relative loads in
//! `arch`, never through references.
//!
//! See rseq(2) and the kernel's `include/uapi/linux/rseq.h`.

use crate::sys;
use core::fmt;
use core::mem::{align_of, offset_of, size_of};
use core::sync::atomic::{AtomicU32, AtomicU64};

/// `struct rseq`: the per-thread area shared with the kernel (the KTLS area).
///
/// The original ABI is 32 bytes and 32-byte aligned; kernels from 6.3 on
/// advertise a larger *feature size* through [`AT_RSEQ_FEATURE_SIZE`] and may
/// require a larger alignment ([`AT_RSEQ_ALIGN`]). This type covers the first
/// 32 bytes, which hold every field defined up to Linux 7.0 except the
/// reserved byte at offset 32.
///
/// Only [`rseq_cs`](Self::rseq_cs) and the request byte of
/// [`slice_ctrl`](Self::slice_ctrl) may ever be written by user space. Since
/// 2026 a kernel kills a process that writes `cpu_id_start`, `cpu_id`,
/// `node_id` or `mm_cid` of an area registered with a length above 32.
#[repr(C, align(32))]
#[derive(Debug)]
pub struct Rseq {
    /// The CPU the thread runs on, always a valid CPU number once registered.
    /// Kernel-owned. Since Linux 4.18.
    pub cpu_id_start: AtomicU32,
    /// The CPU the thread runs on, or [`RSEQ_CPU_ID_UNINITIALIZED`] before
    /// registration, or [`RSEQ_CPU_ID_REGISTRATION_FAILED`] when a C library
    /// failed to register. Kernel-owned. Since Linux 4.18.
    pub cpu_id: AtomicU32,
    /// Address of the current [`RseqCs`] descriptor, or 0. Set by user space,
    /// cleared by the kernel. Since Linux 4.18.
    pub rseq_cs: AtomicU64,
    /// Historical per-thread flags; must stay 0. Since Linux 4.18.
    pub flags: AtomicU32,
    /// The NUMA node of the current CPU. Kernel-owned. Since Linux 6.3.
    pub node_id: AtomicU32,
    /// The compact per-process concurrency id, below the number of CPUs the
    /// process may use. Kernel-owned. Since Linux 6.3.
    pub mm_cid: AtomicU32,
    /// Time-slice extension control: byte 0 is the user's request, byte 1 the
    /// kernel's grant. Since Linux 7.0.
    pub slice_ctrl: AtomicU32,
}

/// `struct rseq_cs`: the descriptor of one restartable critical section.
///
/// It must be 32-byte aligned, and the 4 bytes just before `abort_ip` must hold
/// the signature registered with the area ([`RSEQ_SIG`]).
#[repr(C, align(32))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RseqCs {
    /// Structure version; must be 0.
    pub version: u32,
    /// Historical flags; must be 0.
    pub flags: u32,
    /// First instruction of the critical section.
    pub start_ip: u64,
    /// Length of the critical section in bytes, up to and excluding the
    /// instruction after the commit.
    pub post_commit_offset: u64,
    /// Where the kernel moves the instruction pointer on abort.
    pub abort_ip: u64,
}

// Layout guards: every offset, the size and the alignment of both structures.
const _: () = {
    assert!(offset_of!(Rseq, cpu_id_start) == 0);
    assert!(offset_of!(Rseq, cpu_id) == 4);
    assert!(offset_of!(Rseq, rseq_cs) == 8);
    assert!(offset_of!(Rseq, flags) == 16);
    assert!(offset_of!(Rseq, node_id) == 20);
    assert!(offset_of!(Rseq, mm_cid) == 24);
    assert!(offset_of!(Rseq, slice_ctrl) == 28);
    assert!(size_of::<Rseq>() == 32);
    assert!(align_of::<Rseq>() == 32);
    assert!(offset_of!(RseqCs, version) == 0);
    assert!(offset_of!(RseqCs, flags) == 4);
    assert!(offset_of!(RseqCs, start_ip) == 8);
    assert!(offset_of!(RseqCs, post_commit_offset) == 16);
    assert!(offset_of!(RseqCs, abort_ip) == 24);
    assert!(size_of::<RseqCs>() == 32);
    assert!(align_of::<RseqCs>() == 32);
    assert!(OFFSET_CPU_ID == offset_of!(Rseq, cpu_id));
    assert!(OFFSET_NODE_ID == offset_of!(Rseq, node_id));
    assert!(OFFSET_MM_CID == offset_of!(Rseq, mm_cid));
    assert!(OFFSET_SLICE_CTRL == offset_of!(Rseq, slice_ctrl));
};

/// Byte offset of `cpu_id_start` in [`Rseq`].
pub const OFFSET_CPU_ID_START: usize = 0;
/// Byte offset of `cpu_id` in [`Rseq`].
pub const OFFSET_CPU_ID: usize = 4;
/// Byte offset of `rseq_cs` in [`Rseq`].
pub const OFFSET_RSEQ_CS: usize = 8;
/// Byte offset of `node_id` in [`Rseq`].
pub const OFFSET_NODE_ID: usize = 20;
/// Byte offset of `mm_cid` in [`Rseq`].
pub const OFFSET_MM_CID: usize = 24;
/// Byte offset of `slice_ctrl` in [`Rseq`].
pub const OFFSET_SLICE_CTRL: usize = 28;

/// Size and alignment of the original ABI, which every rseq kernel accepts.
pub const ORIG_RSEQ_SIZE: u32 = 32;
/// Feature size of kernels that predate `AT_RSEQ_FEATURE_SIZE` (4.18 to 6.2):
/// the fields up to and including `flags`.
pub const LEGACY_FEATURE_SIZE: u32 = 20;
/// Alignment of kernels that predate `AT_RSEQ_ALIGN`.
pub const LEGACY_ALIGN: u32 = 32;
/// Feature size from which `node_id` is live.
pub const FEATURE_SIZE_NODE_ID: u32 = 24;
/// Feature size from which `mm_cid` is live.
pub const FEATURE_SIZE_MM_CID: u32 = 28;
/// Feature size from which the time-slice extension (`slice_ctrl`) is live.
pub const FEATURE_SIZE_SLICE_CTRL: u32 = 32;

/// auxv tag of the rseq feature size (Linux 6.3+).
pub const AT_RSEQ_FEATURE_SIZE: u64 = 27;
/// auxv tag of the required rseq area alignment (Linux 6.3+).
pub const AT_RSEQ_ALIGN: u64 = 28;

/// `rseq()` flag that unregisters the calling thread's area.
pub const RSEQ_FLAG_UNREGISTER: i32 = 1;

/// auxv tag of the KTLS prototype's feature bits (`kernel/` in this
/// repository; not an upstream tag).
pub const AT_KTLS_FEATURES: u64 = 0x4b54;
/// KTLS prototype: `rseq()` flag that registers (or adopts) the calling
/// thread's area and records the thread group's layout.
pub const RSEQ_FLAG_KTLS_LAYOUT: i32 = 1 << 24;
/// KTLS prototype: `clone3()` flag that makes the kernel register the new
/// thread's area at `tls` + the group's offset.
pub const CLONE_RSEQ_KTLS: u64 = 1 << 40;
/// `AT_KTLS_FEATURES` bit: `rseq()` takes [`RSEQ_FLAG_KTLS_LAYOUT`].
pub const KTLS_FEATURE_GROUP_LAYOUT: u32 = 1 << 0;
/// `AT_KTLS_FEATURES` bit: `clone3()` takes [`CLONE_RSEQ_KTLS`].
pub const KTLS_FEATURE_CLONE: u32 = 1 << 1;
/// `AT_KTLS_FEATURES` bit: the kernel writes the thread facts
/// ([`OFFSET_KTLS_MAGIC`] to the end of [`OFFSET_KTLS_EGID`]) into areas
/// registered with at least [`KTLS_FACTS_END`] bytes.
pub const KTLS_FEATURE_FACTS: u32 = 1 << 2;
/// KTLS prototype: offset of `ktls_magic` in the area, which holds
/// [`KTLS_FACTS_MAGIC`] while the thread facts are valid for the thread that
/// registered it. Offsets 28 to 35 stay free for upstream's fields.
pub const OFFSET_KTLS_MAGIC: usize = 36;
/// KTLS prototype: offset of `ktls_tid` (what `gettid()` returns).
pub const OFFSET_KTLS_TID: usize = 40;
/// KTLS prototype: offset of `ktls_pid` (`getpid()`).
pub const OFFSET_KTLS_PID: usize = 44;
/// KTLS prototype: offset of `ktls_uid` (`getuid()`).
pub const OFFSET_KTLS_UID: usize = 48;
/// KTLS prototype: offset of `ktls_gid` (`getgid()`).
pub const OFFSET_KTLS_GID: usize = 52;
/// KTLS prototype: offset of `ktls_euid` (`geteuid()`).
pub const OFFSET_KTLS_EUID: usize = 56;
/// KTLS prototype: offset of `ktls_egid` (`getegid()`).
pub const OFFSET_KTLS_EGID: usize = 60;
/// KTLS prototype: the registration length that covers the thread facts,
/// and the prototype's feature size.
pub const KTLS_FACTS_END: u32 = 64;
/// KTLS prototype: `ktls_magic` while the facts are valid ("KTLS" in memory
/// order).
pub const KTLS_FACTS_MAGIC: u32 = 0x534c_544b;

/// Value of `cpu_id` in an area the kernel has not yet written.
pub const RSEQ_CPU_ID_UNINITIALIZED: u32 = -1i32 as u32;
/// Value of `cpu_id` that C libraries store when their registration failed.
pub const RSEQ_CPU_ID_REGISTRATION_FAILED: u32 = -2i32 as u32;

/// The signature on x86 (both 32 and 64 bit). The instruction
/// `ud1 0x53053053(%rip),%edi` encodes it, so a stray jump to an abort handler
/// traps.
pub const RSEQ_SIG_X86: u32 = 0x5305_3053;
/// The signature instruction on aarch64: the encoding of `brk #0x45e0`, which
/// ktl places before every abort handler. The value to register is
/// [`aarch64_signature`] of it.
pub const RSEQ_SIG_AARCH64: u32 = 0xd428_bc00;

/// The signature to register on aarch64, for the given data endianness.
///
/// The kernel compares the 32-bit *data* word before the abort handler with
/// the registered signature. AArch64 instructions are little-endian in
/// memory on every system, but on `aarch64_be` data is big-endian, so there
/// the instruction [`RSEQ_SIG_AARCH64`] reads as `0x00bc28d4`, and that is
/// the value to register (the kernel's ABI calls it `RSEQ_SIG_DATA`, as
/// opposed to `RSEQ_SIG_CODE`).
pub const fn aarch64_signature(big_endian: bool) -> u32 {
    if big_endian {
        RSEQ_SIG_AARCH64.swap_bytes()
    } else {
        RSEQ_SIG_AARCH64
    }
}

/// The signature for the architecture ktl is compiled for.
#[cfg(target_arch = "x86_64")]
pub const RSEQ_SIG: u32 = RSEQ_SIG_X86;
/// The signature for the architecture ktl is compiled for: the word that the
/// signature instruction reads as in this target's data endianness.
#[cfg(target_arch = "aarch64")]
pub const RSEQ_SIG: u32 = aarch64_signature(cfg!(target_endian = "big"));

/// The `rseq` system call number on x86_64.
pub const SYS_RSEQ_X86_64: i64 = 334;
/// The `rseq` system call number on aarch64.
pub const SYS_RSEQ_AARCH64: i64 = 293;

/// What the `rseq(NULL, 0, 0, 0)` probe says about the system call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyscallStatus {
    /// The probe returned `EINVAL`: the kernel has rseq.
    Available,
    /// The probe returned `ENOSYS`: no rseq here (an old kernel, qemu-user,
    /// valgrind, gVisor, or a filter that imitates them).
    Absent,
    /// The probe returned `EPERM` or another unexpected answer: something (in
    /// practice a seccomp filter) blocks the call. Holds the errno, or 0 if
    /// the call unexpectedly succeeded.
    Blocked(i32),
}

impl fmt::Display for SyscallStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SyscallStatus::Available => f.write_str("available"),
            SyscallStatus::Absent => f.write_str("absent (ENOSYS)"),
            SyscallStatus::Blocked(0) => f.write_str("blocked (the probe unexpectedly succeeded)"),
            SyscallStatus::Blocked(errno) => {
                write!(f, "blocked ({})", sys::errno_name(errno))
            }
        }
    }
}

/// What the running kernel offers: the feature size and alignment from auxv,
/// and the state of the system call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSupport {
    /// The rseq feature size: `AT_RSEQ_FEATURE_SIZE`, or
    /// [`LEGACY_FEATURE_SIZE`] when auxv lacks it.
    pub feature_size: u32,
    /// The required alignment of areas longer than 32 bytes: `AT_RSEQ_ALIGN`,
    /// or [`LEGACY_ALIGN`] when auxv lacks it.
    pub align: u32,
    /// Whether the two values came from auxv (Linux 6.3 and later).
    pub from_auxv: bool,
    /// What the syscall probe said.
    pub syscall: SyscallStatus,
}

impl KernelSupport {
    /// Probes the running kernel: reads auxv and calls `rseq(NULL, 0, 0, 0)`.
    ///
    /// The probe never registers anything. It costs one system call; ktl calls
    /// it once per process and caches the answer in [`crate::layout`].
    pub fn probe() -> KernelSupport {
        let (feature_size, align, from_auxv) = match (
            sys::auxv::getauxval(AT_RSEQ_FEATURE_SIZE),
            sys::auxv::getauxval(AT_RSEQ_ALIGN),
        ) {
            (Some(size), Some(align)) if size > 0 && align > 0 => {
                (clamp_u32(size), clamp_u32(align), true)
            }
            _ => (LEGACY_FEATURE_SIZE, LEGACY_ALIGN, false),
        };
        KernelSupport {
            feature_size,
            align,
            from_auxv,
            syscall: classify_probe(sys::rseq::probe().map_err(|e| e.0)),
        }
    }
}

fn clamp_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// Maps the result of `rseq(NULL, 0, 0, 0)` to a [`SyscallStatus`]:
/// `EINVAL` means present, `ENOSYS` absent, and anything else blocked.
pub fn classify_probe(result: Result<(), i32>) -> SyscallStatus {
    match result {
        Err(sys::EINVAL) => SyscallStatus::Available,
        Err(sys::ENOSYS) => SyscallStatus::Absent,
        Err(errno) => SyscallStatus::Blocked(errno),
        Ok(()) => SyscallStatus::Blocked(0),
    }
}

/// The live fields of an area, as a small bit set.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Features(u32);

impl Features {
    /// `cpu_id` and `cpu_id_start` (every rseq kernel).
    pub const CPU_ID: Features = Features(1 << 0);
    /// `node_id` (Linux 6.3+).
    pub const NODE_ID: Features = Features(1 << 1);
    /// `mm_cid` (Linux 6.3+).
    pub const MM_CID: Features = Features(1 << 2);
    /// The time-slice extension, `slice_ctrl` (Linux 7.0+).
    pub const SLICE_CTRL: Features = Features(1 << 3);

    /// No feature.
    pub const fn empty() -> Features {
        Features(0)
    }

    /// The features an area of `active_size` bytes carries.
    pub const fn for_size(active_size: u32) -> Features {
        let mut bits = 0;
        if active_size >= LEGACY_FEATURE_SIZE {
            bits |= Features::CPU_ID.0;
        }
        if active_size >= FEATURE_SIZE_NODE_ID {
            bits |= Features::NODE_ID.0;
        }
        if active_size >= FEATURE_SIZE_MM_CID {
            bits |= Features::MM_CID.0;
        }
        if active_size > FEATURE_SIZE_SLICE_CTRL {
            bits |= Features::SLICE_CTRL.0;
        }
        Features(bits)
    }

    /// The features of `self` that are not in `other`.
    pub const fn without(self, other: Features) -> Features {
        Features(self.0 & !other.0)
    }

    /// Whether every feature in `other` is in `self`.
    pub const fn contains(self, other: Features) -> bool {
        self.0 & other.0 == other.0
    }

    /// The raw bits (stable: bit 0 cpu_id, 1 node_id, 2 mm_cid, 3 slice_ctrl).
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// The names of the features in the set, in bit order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        const NAMES: [(Features, &str); 4] = [
            (Features::CPU_ID, "cpu_id"),
            (Features::NODE_ID, "node_id"),
            (Features::MM_CID, "mm_cid"),
            (Features::SLICE_CTRL, "slice_ctrl"),
        ];
        NAMES
            .into_iter()
            .filter(move |(f, _)| self.contains(*f))
            .map(|(_, n)| n)
    }
}

impl core::ops::BitOr for Features {
    type Output = Features;
    fn bitor(self, rhs: Features) -> Features {
        Features(self.0 | rhs.0)
    }
}

impl fmt::Debug for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.names()).finish()
    }
}

impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for name in self.names() {
            if !first {
                f.write_str(", ")?;
            }
            f.write_str(name)?;
            first = false;
        }
        if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}

/// The KTLS prototype's features, from `AT_KTLS_FEATURES` (empty on every
/// other kernel); [`ktls_features`] reads them. [`crate::ktls`] uses them,
/// and re-exports this type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KtlsFeatures(u32);

impl KtlsFeatures {
    /// `rseq()` takes `RSEQ_FLAG_KTLS_LAYOUT`.
    pub fn group_layout(self) -> bool {
        self.0 & KTLS_FEATURE_GROUP_LAYOUT != 0
    }

    /// `clone3()` takes `CLONE_RSEQ_KTLS`.
    pub fn clone_rseq_ktls(self) -> bool {
        self.0 & KTLS_FEATURE_CLONE != 0
    }

    /// The kernel writes the thread facts into areas that cover them (see
    /// [`crate::facts`]).
    pub fn facts(self) -> bool {
        self.0 & KTLS_FEATURE_FACTS != 0
    }

    /// The raw bits.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// Whether the kernel is the prototype at all.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for KtlsFeatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names = Vec::new();
        if self.group_layout() {
            names.push("group-layout");
        }
        if self.clone_rseq_ktls() {
            names.push("clone-rseq-ktls");
        }
        if self.facts() {
            names.push("facts");
        }
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join(", "))
        }
    }
}

/// The running kernel's KTLS prototype features, from the auxiliary
/// vector's [`AT_KTLS_FEATURES`] (empty when it has none).
pub fn ktls_features() -> KtlsFeatures {
    let bits = sys::auxv::getauxval(AT_KTLS_FEATURES).unwrap_or(0);
    KtlsFeatures(u32::try_from(bits).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Caught: on `aarch64_be`, ktl registered the instruction's value
    /// (0xd428bc00) while the kernel reads the instruction's little-endian
    /// bytes as a big-endian word, so the first abort killed the process.
    /// Checked against e5be285, which had no big-endian value.
    #[test]
    fn aarch64_signature_is_the_word_the_kernel_reads() {
        let bytes = RSEQ_SIG_AARCH64.to_le_bytes();
        assert_eq!(aarch64_signature(false), u32::from_le_bytes(bytes));
        assert_eq!(aarch64_signature(true), u32::from_be_bytes(bytes));
        assert_eq!(aarch64_signature(true), 0x00bc_28d4);
    }

    #[test]
    fn probe_classification() {
        assert_eq!(classify_probe(Err(sys::EINVAL)), SyscallStatus::Available);
        assert_eq!(classify_probe(Err(sys::ENOSYS)), SyscallStatus::Absent);
        assert_eq!(
            classify_probe(Err(sys::EPERM)),
            SyscallStatus::Blocked(sys::EPERM)
        );
        assert_eq!(classify_probe(Ok(())), SyscallStatus::Blocked(0));
    }

    #[test]
    fn features_follow_the_size() {
        assert_eq!(Features::for_size(20), Features::CPU_ID);
        assert_eq!(Features::for_size(24), Features::CPU_ID | Features::NODE_ID);
        assert_eq!(
            Features::for_size(28),
            Features::CPU_ID | Features::NODE_ID | Features::MM_CID
        );
        assert_eq!(Features::for_size(32), Features::for_size(28));
        assert!(Features::for_size(33).contains(Features::SLICE_CTRL));
        assert_eq!(
            Features::for_size(64).without(Features::SLICE_CTRL),
            Features::for_size(28)
        );
        assert_eq!(Features::for_size(0), Features::empty());
        assert_eq!(
            Features::for_size(28).to_string(),
            "cpu_id, node_id, mm_cid"
        );
        assert_eq!(Features::empty().to_string(), "none");
    }

    #[test]
    fn probe_matches_this_kernel() {
        let k = KernelSupport::probe();
        // Every value must be self-consistent whatever the kernel.
        assert!(k.feature_size >= LEGACY_FEATURE_SIZE);
        assert!(k.align.is_power_of_two());
        if !k.from_auxv {
            assert_eq!(
                (k.feature_size, k.align),
                (LEGACY_FEATURE_SIZE, LEGACY_ALIGN)
            );
        }
    }
}
