//! The `cpu` group: `ktl::cpu_id()` and the other accessors, the raw load
//! they are held to, and the other ways to learn the CPU (glibc, vDSO,
//! system call, RDPID).

use super::owner_text;
use crate::harness::Row;
use crate::os;
use ktl::cpu::Source;

/// The group's name.
pub const GROUP: &str = "cpu";

/// The group's baseline, the row the ratio column compares against.
pub const BASELINE: &str = "ktl::cpu_id()";

/// The name of the raw-load row, the limit `ktl::cpu_id()` is held to.
pub const RAW_LOAD: &str = "raw %fs load (limit)";

/// The name of the glibc row.
pub const GLIBC: &str = "glibc sched_getcpu";

/// The group's rows: ktl's accessors, the limit, then the alternatives.
/// The rows run on the thread that builds them.
pub fn rows() -> Vec<Row> {
    const G: &str = GROUP;
    // Decide the owner and register this thread's area (when ktl owns the
    // areas) before anything is timed.
    let layout = ktl::layout();
    let sources = ktl::cpu::sources();

    let mut rows = vec![Row::new(BASELINE, G, ktl::cpu_id).ours()];

    rows.push(match (layout.offset, sources.cpu_id) {
        (Some(offset), Source::Area) => Row::new(RAW_LOAD, G, move || {
            // SAFETY: `offset` comes from `ktl::layout()`, so it designates
            // the calling thread's area (live: `sources()` reads it), which
            // stays mapped for the life of the thread. The closure only runs
            // on the thread that built the rows.
            unsafe { ktl::cpu::cpu_id_at(offset) }
        }),
        (None, _) => Row::unavailable(
            RAW_LOAD,
            G,
            format!("no rseq area (owner: {})", owner_text(&layout.owner)),
        ),
        (Some(_), source) => Row::unavailable(
            RAW_LOAD,
            G,
            format!("this thread's area is not registered (cpu_id reads: {source})"),
        ),
    });

    rows.push(Row::new("ktl::node_id()", G, ktl::node_id).ours());
    rows.push(Row::new("ktl::mm_cid()", G, ktl::mm_cid).ours());

    rows.push(if os::sched_getcpu() >= 0 {
        Row::new(GLIBC, G, || os::sched_getcpu() as u32)
    } else {
        let err = std::io::Error::last_os_error();
        Row::unavailable(GLIBC, G, format!("sched_getcpu failed: {err}"))
    });

    rows.push(match ktl::cpu::getcpu_vdso() {
        Some(_) => Row::new("vDSO getcpu", G, || {
            ktl::cpu::getcpu_vdso().map_or(0, |(cpu, _)| cpu)
        }),
        None => Row::unavailable("vDSO getcpu", G, "the vDSO has no getcpu"),
    });

    rows.push(match ktl::cpu::getcpu_syscall() {
        Ok(_) => Row::new("getcpu syscall", G, || {
            ktl::cpu::getcpu_syscall().map_or(0, |(cpu, _)| cpu)
        }),
        Err(e) => Row::unavailable("getcpu syscall", G, format!("getcpu failed: {e}")),
    });

    rows.push(match ktl::cpu::rdpid() {
        Some(_) => Row::new("RDPID", G, || ktl::cpu::rdpid().map_or(0, |(cpu, _)| cpu)),
        None => Row::unavailable("RDPID", G, "this CPU has no RDPID instruction"),
    });

    rows
}
