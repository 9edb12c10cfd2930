//! The accessors, checked against the kernel's own answers while the thread is
//! pinned: in this process's default configuration, and again in a re-executed
//! copy of this test binary where ktl owns the areas.

use ktl::abi::SyscallStatus;
use ktl::{Features, Owner};
use ktl_testkit::affinity::{allowed_cpus, pin, try_pin};
use ktl_testkit::fork;

#[test]
fn cpu_id_is_the_pinned_cpu_on_every_allowed_cpu() {
    std::thread::spawn(|| {
        for cpu in allowed_cpus() {
            pin(cpu);
            for _ in 0..1000 {
                assert_eq!(ktl::cpu_id() as usize, cpu);
            }
            let (sys_cpu, sys_node) = ktl::cpu::getcpu_syscall().unwrap();
            assert_eq!(sys_cpu as usize, cpu);
            assert_eq!(ktl::node_id(), sys_node);
            if let Some((vcpu, vnode)) = ktl::cpu::getcpu_vdso() {
                assert_eq!((vcpu, vnode), (sys_cpu, sys_node));
            }
            if let Some((rcpu, rnode)) = ktl::cpu::rdpid() {
                assert_eq!((rcpu, rnode), (sys_cpu, sys_node));
            }
        }
    })
    .join()
    .unwrap();
}

#[test]
fn explicit_offset_accessor_reads_the_same_area() {
    std::thread::spawn(|| {
        let layout = ktl::layout();
        let Some(offset) = layout.offset else { return };
        let cpus = allowed_cpus();
        for &cpu in &cpus {
            pin(cpu);
            let _ = ktl::cpu_id(); // registers the thread when ktl owns the areas
            // SAFETY: the offset comes from `layout()`.
            let raw = unsafe { ktl::cpu::cpu_id_at(offset) };
            assert_eq!(raw as usize, cpu);
            if layout.features.contains(Features::NODE_ID) {
                // SAFETY: as above.
                assert_eq!(unsafe { ktl::cpu::node_id_at(offset) }, ktl::node_id());
            }
            if layout.features.contains(Features::MM_CID) {
                // SAFETY: as above.
                let cid = unsafe { ktl::cpu::mm_cid_at(offset) };
                assert!((cid as usize) < cpus.len(), "mm_cid {cid}");
            }
        }
    })
    .join()
    .unwrap();
}

#[test]
fn mm_cid_is_below_the_allowed_cpus() {
    let n = allowed_cpus().len();
    let bound = if ktl::layout().features.contains(Features::MM_CID) {
        n
    } else {
        4096
    };
    let handles: Vec<_> = (0..4 * n)
        .map(|_| std::thread::spawn(move || (0..10_000).all(|_| (ktl::mm_cid() as usize) < bound)))
        .collect();
    for h in handles {
        assert!(h.join().unwrap());
    }
}

/// Set in the re-executed copy: the owner it must see.
const EXPECT_OWNER: &str = "KTL_TEST_EXPECT_OWNER";

#[test]
fn every_test_passes_when_ktl_owns_the_area() {
    if std::env::var_os(EXPECT_OWNER).is_some() {
        return; // this is the copy
    }
    let syscall = ktl::layout().kernel.syscall;
    if syscall != SyscallStatus::Available {
        // ktl can own the areas only where the kernel has rseq. qemu-user
        // answers ENOSYS (and cannot re-execute a foreign binary without
        // binfmt_misc either).
        eprintln!(
            "SKIPPED every_test_passes_when_ktl_owns_the_area: \
             the rseq system call is {syscall}, so ktl cannot own the areas"
        );
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--test-threads=2"])
        .env("GLIBC_TUNABLES", "glibc.pthread.rseq=0")
        .env(EXPECT_OWNER, "ktl")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("test result: ok. 6 passed"), "{text}");
}

#[test]
fn layout_is_consistent() {
    let l = ktl::layout();
    if let Ok(owner) = std::env::var(EXPECT_OWNER) {
        assert_eq!(l.owner.to_string(), owner);
    }
    assert_eq!(l, ktl::layout(), "decided once");
    match l.owner {
        Owner::Libc => {
            let libc = l.libc.expect("libc symbols");
            assert_eq!(l.offset, Some(libc.offset));
            assert!(libc.size > 0);
            assert_eq!(
                l.active_size,
                ktl::area::libc_active_size(libc.size, l.kernel.feature_size)
            );
        }
        Owner::Ktl(_) => {
            assert_eq!(l.registered_len, l.kernel.feature_size.max(32));
            assert!(l.registered_len_confirmed);
        }
        Owner::Unavailable(_) => {
            assert_eq!(l.offset, None);
            assert_eq!(l.features, Features::empty());
        }
    }
    if l.offset.is_some() {
        assert!(l.features.contains(Features::CPU_ID));
        assert!(l.active_size <= l.kernel.feature_size);
    }
}

#[test]
fn fork_child_reads_valid_values() {
    let cpu = *allowed_cpus().last().unwrap();
    let _ = ktl::cpu_id();
    // The child makes system calls and reads memory only.
    fork::in_fork_child(|| {
        if try_pin(cpu).is_err() {
            return false;
        }
        let Ok((c, n)) = ktl::cpu::getcpu_syscall() else {
            return false;
        };
        ktl::cpu_id() == c && ktl::node_id() == n && c as usize == cpu
    });
}
