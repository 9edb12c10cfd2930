//! `ktl info`: the KTLS report.
//!
//! The JSON form (`--json`) follows the schema `ktl-info/1`, documented in the
//! README. Fields are only ever added to a schema version; a change of meaning
//! gets a new version.

use ktl::abi::SyscallStatus;
use ktl::area::{KtlReason, SymbolLookup, Unavailable};
use ktl::cpu::Source;
use ktl::{Owner, area, cpu};
use serde::Serialize;

/// Options of `ktl info`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct InfoArgs {
    /// Print the report as JSON (schema `ktl-info/1`).
    #[arg(long)]
    pub json: bool,
}

/// The report, as serialized for `--json`.
#[derive(Serialize, Debug)]
pub struct Report {
    /// Always `"ktl-info/1"`.
    pub schema: &'static str,
    pub kernel: Kernel,
    pub libc: Libc,
    pub owner: OwnerReport,
    pub object: ObjectReport,
    pub area: Area,
    pub thread: Thread,
    /// Names of the fallbacks in use in the calling thread (empty when every
    /// accessor reads the area).
    pub fallbacks: Vec<String>,
    pub rseq: RseqReport,
    pub random: RandomReport,
    pub facts: FactsReport,
    pub registrations: Registrations,
    pub allocator: AllocatorReport,
}

#[derive(Serialize, Debug)]
pub struct Kernel {
    pub release: String,
    pub rseq_feature_size: u32,
    pub rseq_align: u32,
    /// Whether the two values above came from auxv (Linux 6.3+).
    pub from_auxv: bool,
    /// `"available"`, `"absent"` or `"blocked"`.
    pub syscall: &'static str,
    /// The errno of a blocked probe.
    pub syscall_errno: Option<i32>,
    /// The KTLS kernel prototype's features (`AT_KTLS_FEATURES`):
    /// `"group-layout"`, `"clone-rseq-ktls"`, `"facts"`; empty on other
    /// kernels.
    pub ktls_features: Vec<&'static str>,
    /// The same as bits: 1 group layout, 2 `CLONE_RSEQ_KTLS`, 4 facts.
    pub ktls_feature_bits: u32,
    /// Whether ktl recorded the thread group's layout in the kernel.
    pub ktls_layout_set: bool,
}

#[derive(Serialize, Debug)]
pub struct Libc {
    pub name: Option<&'static str>,
    pub version: Option<String>,
    /// Whether the C library exports `__rseq_offset` and `__rseq_size`.
    pub rseq_symbols: bool,
    /// `"dlsym"` or `"weak"`, when found.
    pub lookup: Option<&'static str>,
    pub rseq_offset: Option<isize>,
    pub rseq_size: Option<u32>,
    pub rseq_flags: Option<u32>,
}

#[derive(Serialize, Debug)]
pub struct OwnerReport {
    /// `"libc"`, `"ktl"` or `"unavailable"`.
    pub kind: String,
    /// Why this owner, in words.
    pub reason: String,
    /// The errno behind an `unavailable` owner, if any.
    pub errno: Option<i32>,
}

/// Whether the object that holds ktl stays mapped (`ktl::pin`).
#[derive(Serialize, Debug)]
pub struct ObjectReport {
    /// `"executable"`, `"static"`, `"never-unloaded"`, `"pinned"`,
    /// `"no-object"` or `"refused"`.
    pub pinning: &'static str,
    /// Whether it stays mapped whatever the program does.
    pub permanent: bool,
    /// The same in words.
    pub detail: String,
}

#[derive(Serialize, Debug)]
pub struct Area {
    pub offset: Option<isize>,
    pub registered_len: u32,
    pub registered_len_confirmed: bool,
    pub active_size: u32,
    pub align: u32,
    pub features: Vec<&'static str>,
    pub feature_bits: u32,
}

#[derive(Serialize, Debug)]
pub struct Thread {
    pub tid: i64,
    pub cpu_id: u32,
    pub node_id: u32,
    pub mm_cid: u32,
    /// Where each value came from: `"area"`, `"vdso_getcpu"`,
    /// `"getcpu_syscall"`, `"cpu_id"` (mm_cid only) or `"none"`.
    pub sources: Sources,
}

#[derive(Serialize, Debug)]
pub struct Sources {
    pub cpu_id: &'static str,
    pub node_id: &'static str,
    pub mm_cid: &'static str,
    /// The fallback `cpu_id` would use without the area.
    pub fallback: &'static str,
    /// Whether `cpu_id` reads the live area on its inline path (false: only
    /// on its out-of-line path, which is slower).
    pub cpu_id_inline: bool,
}

#[derive(Serialize, Debug)]
pub struct RseqReport {
    /// How the restartable-sequence operations run: `"critical_sections"`,
    /// or `"locked"` (the fallback: a lock per index value).
    pub operations: &'static str,
    /// How the operations run in a thread without an area: `"fenced"` (a
    /// lock per index value and an rseq fence), `"locked"`, or `"none"`
    /// (such a thread cannot run them: `rseq::start` returns `None`).
    pub without_area: &'static str,
    /// How `PerCpuCounter` adds in this thread: `"critical_sections"`
    /// (`rseq::add_current` on the CPU's slot) or `"shared_atomic"` (this
    /// thread has no live area, and `add_current` has no fallback).
    pub counters: &'static str,
    /// The membarrier fence: `"rseq"` (aborts sequences), `"expedited"` (a
    /// barrier only) or `"unavailable"`.
    pub fence: &'static str,
}

/// Whether `rseq::add_current`, and so `PerCpuCounter::add`, runs critical
/// sections in the calling thread: it does exactly where the thread has a
/// live area, and refuses the add otherwise.
fn counters_run_sections() -> bool {
    ktl::rseq::start(ktl::rseq::Index::CpuId)
        .is_some_and(|s| s.path() == ktl::rseq::Path::CriticalSections)
}

#[derive(Serialize, Debug)]
pub struct RandomReport {
    /// How `ktl::random` fills buffers: `"vdso"` (vDSO getrandom with
    /// per-thread state) or `"syscall"` (the getrandom system call).
    pub path: &'static str,
    /// Why the system call, in words (`null` on the vDSO path).
    pub fallback_reason: Option<String>,
    /// The size of one per-thread state in bytes (0 without the vDSO).
    pub state_size: usize,
    /// States mapped and states held by threads.
    pub states: usize,
    pub states_in_use: usize,
}

#[derive(Serialize, Debug)]
pub struct FactsReport {
    /// Where `ktl::facts` gets the thread's ids: `"vdso"` (the KTLS
    /// prototype's vDSO functions), `"field"` (the area's fields) or
    /// `"syscall"`.
    pub path: &'static str,
    /// Why the system calls, in words (`null` on the other paths).
    pub fallback_reason: Option<String>,
    /// The calling thread's ids, as `ktl::facts` returned them.
    pub tid: i32,
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    pub euid: u32,
    pub egid: u32,
}

#[derive(Serialize, Debug)]
pub struct Registrations {
    pub registered: u64,
    pub unregistered: u64,
    pub register_failures: u64,
    pub unregister_failures: u64,
}

/// The command's global allocator: ktl-alloc (the `alloc` feature) with
/// its front end and statistics, or the system allocator.
#[derive(Serialize, Debug)]
pub struct AllocatorReport {
    /// `"ktl-alloc"` or `"system"`.
    pub global: &'static str,
    /// ktl-alloc's front end, in words (`null` with the system allocator).
    pub front_end: Option<String>,
    /// Bytes the program holds, bytes of free objects in the per-CPU, the
    /// per-thread and the central caches, and bytes given back to the OS
    /// over the process's life (all `null` with the system allocator).
    pub in_use: Option<u64>,
    pub cpu_cached: Option<u64>,
    pub thread_cached: Option<u64>,
    pub central_cached: Option<u64>,
    pub returned_total: Option<u64>,
}

#[cfg(feature = "alloc")]
fn allocator_report() -> AllocatorReport {
    let s = ktl_alloc::stats();
    AllocatorReport {
        global: "ktl-alloc",
        front_end: Some(s.front_end.to_string()),
        in_use: Some(s.in_use),
        cpu_cached: Some(s.cpu_cached),
        thread_cached: Some(s.thread_cached),
        central_cached: Some(s.central_cached),
        returned_total: Some(s.returned_total),
    }
}

#[cfg(not(feature = "alloc"))]
fn allocator_report() -> AllocatorReport {
    AllocatorReport {
        global: "system",
        front_end: None,
        in_use: None,
        cpu_cached: None,
        thread_cached: None,
        central_cached: None,
        returned_total: None,
    }
}

fn source_name(s: Source) -> &'static str {
    match s {
        Source::Area => "area",
        Source::VdsoGetcpu => "vdso_getcpu",
        Source::GetcpuSyscall => "getcpu_syscall",
        Source::CpuId => "cpu_id",
        Source::Nothing => "none",
    }
}

/// The JSON name of an operations path (`None`: no path).
fn path_name(p: Option<ktl::rseq::Path>) -> &'static str {
    match p {
        Some(ktl::rseq::Path::CriticalSections) => "critical_sections",
        Some(ktl::rseq::Path::Fenced) => "fenced",
        Some(ktl::rseq::Path::Locked) => "locked",
        None => "none",
    }
}

fn kernel_release() -> String {
    ktl_bench::os::kernel_release().unwrap_or_else(|| "unknown".into())
}

/// Gathers the report for the calling thread.
pub fn gather() -> Report {
    let layout = ktl::layout();
    let k = layout.kernel;
    let (syscall, syscall_errno) = match k.syscall {
        SyscallStatus::Available => ("available", None),
        SyscallStatus::Absent => ("absent", None),
        SyscallStatus::Blocked(e) => ("blocked", Some(e)),
    };
    let (libc_name, libc_version) = match area::libc_version() {
        Some((n, v)) => (Some(n), Some(v)),
        // musl has no version query; the target names the library.
        None if cfg!(target_env = "musl") => (Some("musl"), None),
        None => (None, None),
    };
    let (kind, reason, errno) = match layout.owner {
        Owner::Libc => (
            "libc",
            "the C library registered the area of every thread".to_string(),
            None,
        ),
        Owner::Ktl(r) => ("ktl", r.to_string(), None),
        Owner::Unavailable(u) => {
            let errno = match u {
                Unavailable::NoSyscall => None,
                Unavailable::Blocked(e) | Unavailable::RegistrationFailed(e) => Some(e),
            };
            ("unavailable", u.to_string(), errno)
        }
    };
    // Read the values first: the first accessor call registers the thread
    // when ktl owns the areas.
    let (cpu_id, node_id, mm_cid) = (ktl::cpu_id(), ktl::node_id(), ktl::mm_cid());
    let s = cpu::sources();
    let mut fallbacks = Vec::new();
    for (name, src) in [
        ("cpu_id", s.cpu_id),
        ("node_id", s.node_id),
        ("mm_cid", s.mm_cid),
    ] {
        if src != Source::Area {
            fallbacks.push(format!("{name}: {src}"));
        }
    }
    if s.cpu_id == Source::Area && !s.cpu_id_inline {
        fallbacks.push(
            "cpu_id: the area, from the out-of-line path (the executable's .preinit_array \
             did not run)"
                .to_owned(),
        );
    }
    let st = area::stats();
    Report {
        schema: "ktl-info/1",
        kernel: Kernel {
            release: kernel_release(),
            rseq_feature_size: k.feature_size,
            rseq_align: k.align,
            from_auxv: k.from_auxv,
            syscall,
            syscall_errno,
            ktls_features: ktls_feature_names(ktl::ktls::features()),
            ktls_feature_bits: ktl::ktls::features().bits(),
            ktls_layout_set: ktl::ktls::layout_set(),
        },
        libc: Libc {
            name: libc_name,
            version: libc_version,
            rseq_symbols: layout.libc.is_some(),
            lookup: layout.libc.map(|l| match l.lookup {
                SymbolLookup::Dlsym => "dlsym",
                SymbolLookup::WeakSymbols => "weak",
            }),
            rseq_offset: layout.libc.map(|l| l.offset),
            rseq_size: layout.libc.map(|l| l.size),
            rseq_flags: layout.libc.map(|l| l.flags),
        },
        owner: OwnerReport {
            kind: kind.to_string(),
            reason,
            errno,
        },
        object: {
            use ktl::pin::Pinning;
            let p = ktl::pin::pinning();
            ObjectReport {
                pinning: match p {
                    Pinning::Executable => "executable",
                    Pinning::StaticallyLinked => "static",
                    Pinning::NeverUnloaded => "never-unloaded",
                    Pinning::Pinned => "pinned",
                    Pinning::NoObject => "no-object",
                    Pinning::Refused => "refused",
                },
                permanent: p.is_permanent(),
                detail: p.to_string(),
            }
        },
        area: Area {
            offset: layout.offset,
            registered_len: layout.registered_len,
            registered_len_confirmed: layout.registered_len_confirmed,
            active_size: layout.active_size,
            align: layout.align,
            features: layout.features.names().collect(),
            feature_bits: layout.features.bits(),
        },
        thread: Thread {
            tid: ktl_bench::os::thread_id(),
            cpu_id,
            node_id,
            mm_cid,
            sources: Sources {
                cpu_id: source_name(s.cpu_id),
                node_id: source_name(s.node_id),
                mm_cid: source_name(s.mm_cid),
                fallback: source_name(s.fallback),
                cpu_id_inline: s.cpu_id_inline,
            },
        },
        fallbacks,
        rseq: RseqReport {
            operations: path_name(Some(ktl::rseq::path())),
            without_area: path_name(ktl::rseq::without_area()),
            counters: if counters_run_sections() {
                "critical_sections"
            } else {
                "shared_atomic"
            },
            fence: match ktl::rseq::fence::kind() {
                ktl::rseq::fence::FenceKind::Rseq => "rseq",
                ktl::rseq::fence::FenceKind::Expedited => "expedited",
                ktl::rseq::fence::FenceKind::Unavailable => "unavailable",
            },
        },
        random: random_report(),
        facts: facts_report(),
        registrations: Registrations {
            registered: st.registered,
            unregistered: st.unregistered,
            register_failures: st.register_failures,
            unregister_failures: st.unregister_failures,
        },
        allocator: allocator_report(),
    }
}

/// The random section: draws 16 bytes first, so the calling thread holds a
/// state and the path reflects a real fill.
fn random_report() -> RandomReport {
    let mut probe = [0u8; 16];
    let drew = ktl::random::fill(&mut probe);
    let path = ktl::random::path();
    let stats = ktl::random::stats();
    RandomReport {
        path: match path {
            ktl::random::Path::Vdso => "vdso",
            _ => "syscall",
        },
        fallback_reason: match (path, drew) {
            (_, Err(e)) => Some(e.to_string()),
            (ktl::random::Path::Syscall(why), Ok(())) => Some(why.to_string()),
            _ => None,
        },
        state_size: stats.state_size,
        states: stats.states,
        states_in_use: stats.states_in_use,
    }
}

/// The facts section.
fn facts_report() -> FactsReport {
    let f = ktl::facts::thread_facts();
    let path = ktl::facts::path();
    FactsReport {
        path: match path {
            ktl::facts::Path::Vdso => "vdso",
            ktl::facts::Path::Field => "field",
            _ => "syscall",
        },
        fallback_reason: match path {
            ktl::facts::Path::Syscall(why) => Some(why.to_string()),
            _ => None,
        },
        tid: f.tid,
        pid: f.pid,
        uid: f.uid,
        gid: f.gid,
        euid: f.euid,
        egid: f.egid,
    }
}

/// The names of the KTLS prototype's features.
fn ktls_feature_names(f: ktl::ktls::KtlsFeatures) -> Vec<&'static str> {
    let mut names = Vec::new();
    if f.group_layout() {
        names.push("group-layout");
    }
    if f.clone_rseq_ktls() {
        names.push("clone-rseq-ktls");
    }
    if f.facts() {
        names.push("facts");
    }
    names
}

/// Runs `ktl info`.
pub fn run(args: &InfoArgs) -> Result<(), String> {
    let r = gather();
    if args.json {
        let text = serde_json::to_string_pretty(&r)
            .map_err(|e| format!("cannot encode the report: {e}"))?;
        println!("{text}");
        return Ok(());
    }
    print_text(&r);
    Ok(())
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn print_text(r: &Report) {
    let layout = ktl::layout();
    println!(
        "ktl {} — kernel thread-local storage",
        env!("CARGO_PKG_VERSION")
    );
    println!();
    println!("kernel");
    println!("  release              {}", r.kernel.release);
    println!(
        "  rseq feature size    {}{}",
        r.kernel.rseq_feature_size,
        if r.kernel.from_auxv {
            " (auxv)"
        } else {
            " (no auxv entry: pre-6.3 default)"
        }
    );
    println!("  rseq alignment       {}", r.kernel.rseq_align);
    println!("  rseq syscall         {}", layout.kernel.syscall);
    let ktls = ktl::ktls::features();
    if ktls.is_empty() {
        println!("  KTLS prototype       no (no AT_KTLS_FEATURES: an upstream kernel)");
    } else {
        println!(
            "  KTLS prototype       {ktls}{}",
            if r.kernel.ktls_layout_set {
                "; ktl set the group layout"
            } else {
                ""
            }
        );
    }
    println!("libc");
    println!(
        "  name, version        {} {}",
        r.libc.name.unwrap_or("unknown"),
        r.libc.version.as_deref().unwrap_or("(version unknown)")
    );
    if r.libc.rseq_symbols {
        println!(
            "  __rseq_offset        {} (found with {})",
            opt(r.libc.rseq_offset),
            r.libc.lookup.unwrap_or("-")
        );
        println!("  __rseq_size          {}", opt(r.libc.rseq_size));
        println!("  __rseq_flags         {}", opt(r.libc.rseq_flags));
    } else {
        println!("  __rseq_* symbols     not exported");
    }
    println!("owner                  {}", r.owner.kind);
    println!("  why                  {}", r.owner.reason);
    if let Owner::Ktl(KtlReason::LibcDisabled) = layout.owner {
        println!(
            "  note                 ktl registers each thread's area on first use and unregisters it at exit"
        );
    }
    println!("ktl's object           {}", r.object.detail);
    println!("area");
    println!("  offset from TP       {}", opt(r.area.offset));
    println!(
        "  registered length    {}{}",
        r.area.registered_len,
        if r.area.registered_len_confirmed || r.area.registered_len == 0 {
            ""
        } else {
            " (inferred, not confirmed)"
        }
    );
    println!("  active size          {}", r.area.active_size);
    println!("  live features        {}", layout.features);
    println!("this thread (tid {})", r.thread.tid);
    println!(
        "  cpu_id               {:<6} from {}{}",
        r.thread.cpu_id,
        r.thread.sources.cpu_id,
        if r.thread.sources.cpu_id_inline {
            ", inline"
        } else {
            ""
        }
    );
    println!(
        "  node_id              {:<6} from {}",
        r.thread.node_id, r.thread.sources.node_id
    );
    println!(
        "  mm_cid               {:<6} from {}",
        r.thread.mm_cid, r.thread.sources.mm_cid
    );
    println!("rseq operations        {}", ktl::rseq::path());
    match ktl::rseq::without_area() {
        Some(p) => println!("  without an area      {p}"),
        None => println!(
            "  without an area      none: a thread without an area cannot run them (needs the rseq fence)"
        ),
    }
    if r.rseq.counters == "critical_sections" {
        println!("  per-CPU counters     rseq::add_current, one section per add");
    } else {
        println!(
            "  per-CPU counters     one shared atomic (rseq::add_current needs this thread's area)"
        );
    }
    println!("membarrier fence       {}", ktl::rseq::fence::kind());
    println!("random                 {}", ktl::random::path());
    if r.random.state_size > 0 {
        println!(
            "  states               {} bytes each; {} mapped, {} in use",
            r.random.state_size, r.random.states, r.random.states_in_use
        );
    }
    if let Some(why) = r
        .random
        .fallback_reason
        .as_deref()
        .filter(|_| r.random.path == "vdso")
    {
        println!("  error                {why}");
    }
    println!("thread facts           {}", ktl::facts::path());
    println!(
        "  ids                  tid {}, pid {}, uid {}, gid {}, euid {}, egid {}",
        r.facts.tid, r.facts.pid, r.facts.uid, r.facts.gid, r.facts.euid, r.facts.egid
    );
    if r.fallbacks.is_empty() {
        println!(
            "fallbacks in use       none (without the area, cpu_id would use the {})",
            cpu::sources().fallback
        );
    } else {
        println!("fallbacks in use       {}", r.fallbacks.join("; "));
    }
    match &r.allocator.front_end {
        Some(fe) => {
            println!("allocator              ktl-alloc: {fe}");
            let kib = |b: Option<u64>| b.unwrap_or(0).div_ceil(1024);
            println!(
                "  KiB                  {} in use; cached {} per CPU, {} per thread, {} central; {} returned to the OS",
                kib(r.allocator.in_use),
                kib(r.allocator.cpu_cached),
                kib(r.allocator.thread_cached),
                kib(r.allocator.central_cached),
                kib(r.allocator.returned_total)
            );
        }
        None => println!(
            "allocator              the system allocator (build with --features alloc for ktl-alloc)"
        ),
    }
}
