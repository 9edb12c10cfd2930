//! `memcpy`: 16-byte items copied out of and into the per-slot buffers with
//! `cmpeqv_trymemcpy_storev`. Every item is there exactly once, and intact.

use super::buffer::{Buffers, every_id_once};
use super::{Config, ScenarioResult, live, result, run_threads, worker};
use ktl::rseq::{self, Commit};
use std::sync::atomic::Ordering;

/// The second word of a memcpy item: detects torn copies.
const CHECK: i64 = 0x5a5a_1234_c3c3_9876;

pub(super) fn memcpy(cfg: &Config) -> ScenarioResult {
    let (b, count) = Buffers::new(cfg, 2, |id| [id as i64, id as i64 ^ CHECK]);
    let run = run_threads::<()>(
        cfg,
        "memcpy",
        |ctx| {
            worker(cfg, ctx, || {
                // Copy out: in the section, the top item into a local
                // buffer, then commit the length decrement (param_test).
                let mut out = [0u8; 16];
                let popped = loop {
                    let r = live(rseq::retry(cfg.index, |s| {
                        let slot = cfg.slot(s);
                        let len = &b.len[slot].0;
                        let seen = len.load(Ordering::Acquire);
                        if seen <= 0 {
                            return Ok(false);
                        }
                        let top = b.item(slot, seen as usize - 1);
                        // SAFETY: the 16 bytes of the top item; items are
                        // written only by rseq operations with `cfg.index`
                        // on the slot of their index value, so none writes
                        // them while this section runs with that value.
                        let src =
                            unsafe { std::slice::from_raw_parts(top.as_ptr() as *const u8, 16) };
                        // SAFETY: the length is written only by rseq
                        // operations as above; `out` is this thread's.
                        unsafe {
                            rseq::cmpeqv_trymemcpy_storev(
                                s,
                                len.as_ptr(),
                                seen,
                                out.as_mut_ptr(),
                                src,
                                seen - 1,
                                Commit::Relaxed,
                            )
                        }
                        .map(|()| true)
                    }))?;
                    match r {
                        Ok(p) => break p,
                        Err(_) => continue,
                    }
                };
                if !popped {
                    return Ok(false);
                }
                // Copy in: the item past the length, committed with release.
                loop {
                    let r = live(rseq::retry(cfg.index, |s| {
                        let slot = cfg.slot(s);
                        let len = &b.len[slot].0;
                        let seen = len.load(Ordering::Relaxed);
                        assert!(
                            (seen as usize) < b.cap,
                            "a buffer is full, which its capacity rules out"
                        );
                        let dst = b.item(slot, seen as usize).as_ptr() as *mut u8;
                        // SAFETY: as for the copy out; `dst` is the free
                        // 16-byte item past the length.
                        unsafe {
                            rseq::cmpeqv_trymemcpy_storev(
                                s,
                                len.as_ptr(),
                                seen,
                                dst,
                                &out,
                                seen + 1,
                                Commit::Release,
                            )
                        }
                    }))?;
                    if r.is_ok() {
                        return Ok(true);
                    }
                }
            })
        },
        None,
    );
    let ids = b.contents().into_iter().map(|w| {
        if w[1] == w[0] ^ CHECK {
            usize::try_from(w[0]).ok()
        } else {
            None
        }
    });
    let check = every_id_once(ids, count);
    result(cfg, "memcpy", &run, check)
}
