//! `clone3(2)` for raw threads: `struct clone_args` and the flags of a
//! thread.
//!
//! The call itself is assembly in `arch` (`clone3_thread`): the child runs
//! on its new stack before any C-library code could.

/// `struct clone_args` (the first published version, 64 bytes, plus
/// `set_tid`/`set_tid_size`/`cgroup`, 88 bytes).
#[repr(C)]
#[derive(Default)]
pub(crate) struct CloneArgs {
    /// `CLONE_*` flags.
    pub(crate) flags: u64,
    /// Where to store the pidfd (`CLONE_PIDFD`).
    pub(crate) pidfd: u64,
    /// Where the child's tid is stored and cleared (`CLONE_CHILD_SETTID`,
    /// `CLONE_CHILD_CLEARTID`).
    pub(crate) child_tid: u64,
    /// Where the parent's copy of the child's tid is stored
    /// (`CLONE_PARENT_SETTID`).
    pub(crate) parent_tid: u64,
    /// The signal sent to the parent when the child exits.
    pub(crate) exit_signal: u64,
    /// The lowest address of the child's stack.
    pub(crate) stack: u64,
    /// The size of the child's stack.
    pub(crate) stack_size: u64,
    /// The child's thread pointer (`CLONE_SETTLS`).
    pub(crate) tls: u64,
    /// The tids to give the child in each pid namespace.
    pub(crate) set_tid: u64,
    /// The number of entries of `set_tid`.
    pub(crate) set_tid_size: u64,
    /// The cgroup to place the child in (`CLONE_INTO_CGROUP`).
    pub(crate) cgroup: u64,
}

/// The flags of a thread of this process with its own thread pointer, whose
/// tid word is set at creation and cleared (with a futex wake) at its exit:
/// `CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD |
/// CLONE_SYSVSEM | CLONE_SETTLS | CLONE_PARENT_SETTID |
/// CLONE_CHILD_CLEARTID`.
pub(crate) const THREAD_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM
    | libc::CLONE_SETTLS
    | libc::CLONE_PARENT_SETTID
    | libc::CLONE_CHILD_CLEARTID) as u64;
