//! `buffer`: per-slot bounded buffers of items, pop with
//! `cmpeqv_cmpeqv_storev`, push with `cmpeqv_trystorev_storev` (release).
//! Every item is there exactly once. The buffers serve `memcpy` too.

use super::{
    Config, ITEMS_PER_SLOT, Line, ScenarioResult, lines, live, result, run_threads, worker,
};
use ktl::rseq::{self, Commit};
use std::sync::atomic::{AtomicI64, Ordering};

/// Per-slot bounded buffers: a length word per slot on its own line, and
/// `cap` items of `words` i64 each per slot.
pub(super) struct Buffers {
    pub(super) len: Box<[Line<AtomicI64>]>,
    items: Box<[AtomicI64]>,
    pub(super) cap: usize,
    words: usize,
}

impl Buffers {
    /// Buffers holding `ITEMS_PER_SLOT` items on each reachable slot. Each
    /// can hold every item, so a push never finds its buffer full (as in
    /// param_test).
    pub(super) fn new(
        cfg: &Config,
        words: usize,
        item: impl Fn(usize) -> [i64; 2],
    ) -> (Buffers, usize) {
        let count = ITEMS_PER_SLOT * cfg.reachable.len();
        let b = Buffers {
            len: lines(cfg.slots),
            items: (0..cfg.slots * count * words)
                .map(|_| AtomicI64::new(0))
                .collect(),
            cap: count,
            words,
        };
        for id in 0..count {
            let slot = cfg.reachable[id % cfg.reachable.len()];
            let len = b.len[slot].0.load(Ordering::Relaxed) as usize;
            let words_of = item(id);
            for (w, v) in b.item(slot, len).iter().zip(words_of) {
                w.store(v, Ordering::Relaxed);
            }
            b.len[slot].0.store(len as i64 + 1, Ordering::Relaxed);
        }
        (b, count)
    }

    pub(super) fn item(&self, slot: usize, i: usize) -> &[AtomicI64] {
        let at = (slot * self.cap + i) * self.words;
        &self.items[at..at + self.words]
    }

    /// Every item, as its words.
    pub(super) fn contents(&self) -> Vec<Vec<i64>> {
        let mut all = Vec::new();
        for slot in 0..self.len.len() {
            let n = self.len[slot].0.load(Ordering::Acquire) as usize;
            for i in 0..n.min(self.cap) {
                all.push(
                    self.item(slot, i)
                        .iter()
                        .map(|w| w.load(Ordering::Relaxed))
                        .collect(),
                );
            }
        }
        all
    }
}

/// Counts of the ids `0..count` in `ids`, as check messages.
pub(super) fn every_id_once(ids: impl Iterator<Item = Option<usize>>, count: usize) -> Vec<String> {
    let mut seen = vec![0u32; count];
    let mut bad = 0;
    for id in ids {
        match id {
            Some(i) if i < count => seen[i] += 1,
            _ => bad += 1,
        }
    }
    let lost = seen.iter().filter(|&&c| c == 0).count();
    let twice = seen.iter().filter(|&&c| c > 1).count();
    if lost + twice + bad > 0 {
        vec![format!(
            "{lost} items lost, {twice} seen twice, {bad} corrupt, of {count}"
        )]
    } else {
        Vec::new()
    }
}

pub(super) fn buffer(cfg: &Config) -> ScenarioResult {
    // Items are the ids plus one: never 0.
    let (b, count) = Buffers::new(cfg, 1, |id| [id as i64 + 1, 0]);
    let run = run_threads::<()>(
        cfg,
        "buffer",
        |ctx| {
            worker(cfg, ctx, || match pop_item(cfg, &b)? {
                Some(item) => push_item(cfg, &b, item).map(|()| true),
                None => Ok(false),
            })
        },
        None,
    );
    let ids = b
        .contents()
        .into_iter()
        .map(|w| usize::try_from(w[0] - 1).ok());
    let check = every_id_once(ids, count);
    result(cfg, "buffer", &run, check)
}

/// Pops the top item of the buffer of the slot the thread runs with, or
/// `None` when that buffer is empty.
///
/// The length decrement commits only if both the length and the top item
/// are unchanged (param_test's `cmpeqv_cmpeqv_storev`): comparing the length
/// alone would let a pop and a push by other threads, between the read of
/// the item and the section, hand out a stale item a second time.
fn pop_item(cfg: &Config, b: &Buffers) -> Result<Option<i64>, String> {
    loop {
        let r = live(rseq::retry(cfg.index, |s| {
            let slot = cfg.slot(s);
            let len = &b.len[slot].0;
            let seen = len.load(Ordering::Acquire);
            if seen <= 0 {
                return Ok(None);
            }
            let top = &b.item(slot, seen as usize - 1)[0];
            let item = top.load(Ordering::Relaxed);
            // SAFETY: lengths and items are written only by rseq operations
            // with `cfg.index` on the slot of their index value; `len` and
            // `top` are aligned i64s inside the buffers, which outlive the
            // threads.
            unsafe {
                rseq::cmpeqv_cmpeqv_storev(s, len.as_ptr(), seen, top.as_ptr(), item, seen - 1)
            }
            .map(|()| Some(item))
        }))?;
        if let Ok(item) = r {
            return Ok(item);
        }
    }
}

/// Pushes `item` onto the buffer of the slot the thread runs with.
fn push_item(cfg: &Config, b: &Buffers, item: i64) -> Result<(), String> {
    loop {
        let r = live(rseq::retry(cfg.index, |s| {
            let slot = cfg.slot(s);
            let len = &b.len[slot].0;
            let seen = len.load(Ordering::Relaxed);
            assert!(
                (seen as usize) < b.cap,
                "a buffer is full, which its capacity rules out"
            );
            let next = &b.item(slot, seen as usize)[0];
            // SAFETY: as in `pop_item`; `next` is the free item past the
            // length, which only matters once the length commits.
            unsafe {
                rseq::cmpeqv_trystorev_storev(
                    s,
                    len.as_ptr(),
                    seen,
                    next.as_ptr(),
                    item,
                    seen + 1,
                    Commit::Release,
                )
            }
        }))?;
        if r.is_ok() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_id_once_finds_losses_and_duplicates() {
        assert!(every_id_once([Some(0), Some(1)].into_iter(), 2).is_empty());
        assert_eq!(every_id_once([Some(0), Some(0)].into_iter(), 2).len(), 1);
        assert_eq!(every_id_once([Some(0), None].into_iter(), 2).len(), 1);
    }
}
