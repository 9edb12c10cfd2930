//! `list`: per-slot lists, pop with `cmpnev_storeoffp_load`, push with
//! `cmpeqv_storev`. Every node is on exactly one list, once.

use super::{Config, ITEMS_PER_SLOT, ScenarioResult, lines, live, result, run_threads, worker};
use ktl::rseq;
use std::sync::atomic::{AtomicPtr, Ordering};

/// A list node; `next` is not the first field.
#[repr(C)]
struct Node {
    id: usize,
    next: AtomicPtr<Node>,
}

pub(super) fn list(cfg: &Config) -> ScenarioResult {
    let heads = lines(cfg.slots);
    let count = ITEMS_PER_SLOT * cfg.reachable.len();
    let nodes: Box<[Node]> = (0..count)
        .map(|id| Node {
            id,
            next: AtomicPtr::new(std::ptr::null_mut()),
        })
        .collect();
    for (i, n) in nodes.iter().enumerate() {
        let head = &heads[cfg.reachable[i % cfg.reachable.len()]].0;
        n.next
            .store(head.load(Ordering::Relaxed) as *mut Node, Ordering::Relaxed);
        head.store(n as *const Node as i64, Ordering::Relaxed);
    }
    let next_offset = std::mem::offset_of!(Node, next) as isize;
    let run = run_threads::<()>(
        cfg,
        "list",
        |ctx| {
            worker(cfg, ctx, || {
                let popped = live(rseq::retry(cfg.index, |s| {
                    let head = heads[cfg.slot(s)].0.as_ptr() as *mut *mut u8;
                    // SAFETY: the heads are written only by rseq operations
                    // with `cfg.index` on the slot of their index value; the
                    // nodes outlive the threads.
                    unsafe {
                        rseq::cmpnev_storeoffp_load(s, head, std::ptr::null_mut(), next_offset)
                    }
                }))?;
                let node = match popped {
                    Ok(p) => p as *const Node,
                    Err(_) => return Ok(false),
                };
                loop {
                    let r = live(rseq::retry(cfg.index, |s| {
                        let head = &heads[cfg.slot(s)].0;
                        let old = head.load(Ordering::Relaxed);
                        // SAFETY: this thread owns the popped node until the
                        // push commits.
                        unsafe { (*node).next.store(old as *mut Node, Ordering::Relaxed) };
                        // SAFETY: as for the pop.
                        unsafe { rseq::cmpeqv_storev(s, head.as_ptr(), old, node as i64) }
                    }))?;
                    if r.is_ok() {
                        return Ok(true);
                    }
                }
            })
        },
        None,
    );
    let mut seen = vec![0u32; count];
    let mut strays = 0;
    for head in heads.iter() {
        let mut p = head.0.load(Ordering::Acquire) as *const Node;
        while !p.is_null() && strays == 0 {
            if !nodes.as_ptr_range().contains(&p) {
                strays += 1;
                break;
            }
            // SAFETY: `p` points into `nodes`, and every thread is done.
            let n = unsafe { &*p };
            seen[n.id] += 1;
            if seen[n.id] > 1 {
                // A cycle or a duplicate: stop walking.
                break;
            }
            p = n.next.load(Ordering::Relaxed);
        }
    }
    let mut check = Vec::new();
    let lost = seen.iter().filter(|&&c| c == 0).count();
    let twice = seen.iter().filter(|&&c| c > 1).count();
    if lost + twice + strays > 0 {
        check.push(format!(
            "{lost} nodes lost, {twice} seen twice, {strays} stray pointers, of {count}"
        ));
    }
    result(cfg, "list", &run, check)
}
