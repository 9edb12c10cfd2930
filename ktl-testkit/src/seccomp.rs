//! Seccomp filters that make a system call fail.
//!
//! Used by the ktl and ktl-cli test suites and by the kernel prototype's
//! guest program.

/// `AUDIT_ARCH_*` of the architecture the tests run on.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// Allow the system call.
pub const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
/// Fail it with the errno in the low 16 bits.
pub const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
/// Kill the calling thread.
pub const SECCOMP_RET_KILL_THREAD: u32 = 0;

/// A BPF statement.
pub fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

/// A BPF conditional jump.
pub fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// A filter program: `body` for system calls of this architecture's ABI,
/// anything from another ABI allowed.
pub fn program(body: impl IntoIterator<Item = libc::sock_filter>) -> Vec<libc::sock_filter> {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    let mut p = vec![
        // Load seccomp_data.arch; allow anything from another ABI.
        stmt(BPF_LD | BPF_W | BPF_ABS, 4),
        jump(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH, 1, 0),
        stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    ];
    p.extend(body);
    p
}

/// A filter program: system call `nr` gets the seccomp action `ret`,
/// everything else is allowed.
pub fn deny_syscall_program(nr: libc::c_long, ret: u32) -> Vec<libc::sock_filter> {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    program([
        // Load seccomp_data.nr.
        stmt(BPF_LD | BPF_W | BPF_ABS, 0),
        jump(BPF_JMP | BPF_JEQ | BPF_K, nr as u32, 0, 1),
        stmt(BPF_RET | BPF_K, ret),
        stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    ])
}

/// A filter program: `rseq` fails with `errno`, everything else is allowed.
pub fn deny_rseq_program(errno: i32) -> Vec<libc::sock_filter> {
    deny_syscall_program(libc::SYS_rseq, SECCOMP_RET_ERRNO | (errno as u32 & 0xffff))
}

/// A seccomp program: `mmap` with `MAP_DROPPABLE` (0x08) in its flags fails
/// with EPERM; everything else is allowed.
pub fn deny_droppable_mmap_program() -> Vec<libc::sock_filter> {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_RET, BPF_W};
    const MAP_DROPPABLE: u32 = 0x08;
    // seccomp_data: nr at 0, arch at 4, args[i] at 16 + 8 i (the low word
    // first on these little-endian targets): the flags are args[3], at 40.
    program([
        stmt(BPF_LD | BPF_W | BPF_ABS, 0),
        jump(BPF_JMP | BPF_JEQ | BPF_K, libc::SYS_mmap as u32, 0, 3),
        stmt(BPF_LD | BPF_W | BPF_ABS, 40),
        jump(BPF_JMP | BPF_JSET | BPF_K, MAP_DROPPABLE, 0, 1),
        stmt(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | libc::EPERM as u32),
        stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    ])
}

/// Installs `program` for the calling thread (and, with `all_threads`, every
/// thread of the process). Only makes system calls, so it may run between
/// `fork` and `exec`.
///
/// # Safety
/// `program` must be a valid filter, alive for the call.
pub unsafe fn install(program: &[libc::sock_filter], all_threads: bool) -> std::io::Result<()> {
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr() as *mut _,
    };
    // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integers.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let flags: libc::c_ulong = if all_threads {
        1 /* SECCOMP_FILTER_FLAG_TSYNC */
    } else {
        0
    };
    // SAFETY: `prog` points to a valid program that outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            1, /* SECCOMP_SET_MODE_FILTER */
            flags,
            &prog as *const libc::sock_fprog,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
