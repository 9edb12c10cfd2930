//! A model of the gate protocol, checked with loom over every interleaving.
//!
//! The model covers the parts that do not depend on the kernel: the gate
//! that every critical section checks, the fallback that closes it, and the
//! rebalancing of a per-CPU list by a thread on another CPU (`rseq::exclusive`
//! and the pool's steal). The kernel's part is abstracted by what it
//! guarantees:
//!
//! - A CPU runs one section at a time, and a section has no visible effect
//!   before its commit. An aborted section is therefore the same as one that
//!   never started, and a CPU is modelled as one thread that runs its
//!   sections while holding that CPU's `running` lock.
//! - The membarrier rseq fence on a CPU returns once no section that was
//!   running there can still commit, with a full barrier on both sides: in
//!   the model, taking and releasing the CPU's `running` lock.
//!
//! The shared data are loom `UnsafeCell`s, so loom reports any access of the
//! fallback that is not ordered with the sections' accesses as a data race,
//! and the final checks find lost updates. Run with:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p ktl --release --test rseq_locked_loom_gate
//! ```
#![cfg(loom)]

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicU32, Ordering};
use loom::sync::{Arc, Mutex};
use loom::thread;

/// One CPU's data and the gate of its index value.
struct Cpu<T> {
    /// 0: open; 1: closed by a fallback or a thief.
    gate: AtomicU32,
    /// The process's count of closed gates, shared by every CPU.
    closed: Arc<AtomicU32>,
    /// Held while a section runs on this CPU (the CPU runs one at a time).
    running: Mutex<()>,
    /// Taken by the holders of the gate, one at a time.
    holders: Mutex<()>,
    data: UnsafeCell<T>,
}

impl<T> Cpu<T> {
    fn new(data: T, closed: &Arc<AtomicU32>) -> Self {
        Cpu {
            gate: AtomicU32::new(0),
            closed: closed.clone(),
            running: Mutex::new(()),
            holders: Mutex::new(()),
            data: UnsafeCell::new(data),
        }
    }

    /// A critical section on this CPU, as the operations run it: the fast
    /// variant checks only the count of closed gates, inside the section,
    /// and commits while it is 0; otherwise it leaves, and the gated
    /// variant, a section of its own, checks this CPU's gate. Returns `None`
    /// (an abort) while the gate is closed; the caller retries.
    fn section<R>(&self, work: impl FnOnce(&mut T) -> R) -> Option<R> {
        {
            let _on_cpu = self.running.lock().unwrap();
            if self.closed.load(Ordering::Acquire) == 0 {
                return Some(self.data.with_mut(|d| work(unsafe { &mut *d })));
            }
        }
        let _on_cpu = self.running.lock().unwrap();
        if self.gate.load(Ordering::Acquire) != 0 {
            return None;
        }
        Some(self.data.with_mut(|d| work(unsafe { &mut *d })))
    }

    /// The fallback of a thread without an area, or a thief on another CPU:
    /// close the gate and count it, fence the CPU, work, open the gate and
    /// take it from the count.
    ///
    /// The real gate is a spinlock (a compare-and-swap loop); here the
    /// holders queue on `holders` and then close the gate, which gives the
    /// same exclusion among holders without a spin loop for loom to unroll.
    fn exclusive<R>(&self, work: impl FnOnce(&mut T) -> R) -> R {
        let _holder = self.holders.lock().unwrap();
        self.gate.store(1, Ordering::Relaxed);
        self.closed.fetch_add(1, Ordering::Relaxed);
        // The fence: no section that read the count 0 or the gate open can
        // still commit, and every later section reads both closed.
        drop(self.running.lock().unwrap());
        let r = self.data.with_mut(|d| work(unsafe { &mut *d }));
        self.gate.store(0, Ordering::Release);
        self.closed.fetch_sub(1, Ordering::Release);
        r
    }
}

/// Checks `f` over its interleavings, with at most 2 preemptions per
/// execution: the gates and retries spin, which an unbounded search cannot
/// finish, and races need only a few preemptions to show.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(2);
    builder.max_branches = 10_000;
    builder.check(f);
}

/// Runs a section until it commits.
fn section_retry<T, R>(cpu: &Cpu<T>, mut work: impl FnMut(&mut T) -> R) -> R {
    loop {
        if let Some(r) = cpu.section(&mut work) {
            return r;
        }
        thread::yield_now();
    }
}

#[test]
fn a_fallback_add_and_section_adds_lose_nothing() {
    model(|| {
        let cpu = Arc::new(Cpu::new(0u64, &Arc::new(AtomicU32::new(0))));
        let on_cpu = {
            let cpu = cpu.clone();
            thread::spawn(move || {
                section_retry(&cpu, |v| *v += 1);
            })
        };
        let fallback = {
            let cpu = cpu.clone();
            thread::spawn(move || cpu.exclusive(|v| *v += 10))
        };
        on_cpu.join().unwrap();
        fallback.join().unwrap();
        let total = cpu.exclusive(|v| *v);
        assert_eq!(total, 11);
    });
}

#[test]
fn two_fallbacks_and_a_section_exclude_each_other() {
    model(|| {
        let cpu = Arc::new(Cpu::new(0u64, &Arc::new(AtomicU32::new(0))));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let cpu = cpu.clone();
                thread::spawn(move || cpu.exclusive(|v| *v += 10))
            })
            .collect();
        section_retry(&cpu, |v| *v += 1);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(cpu.exclusive(|v| *v), 21);
    });
}

#[test]
fn stealing_half_a_list_loses_and_duplicates_nothing() {
    model(|| {
        // CPU 0's list starts with objects 0..3; its thread pops one and
        // pushes it back while a thief on CPU 1 steals half and puts
        // it on CPU 1's list (a section there).
        let closed = Arc::new(AtomicU32::new(0));
        let cpus = Arc::new([
            Cpu::new(vec![0u32, 1, 2], &closed),
            Cpu::new(Vec::new(), &closed),
        ]);
        let owner = {
            let cpus = cpus.clone();
            thread::spawn(move || {
                if let Some(o) = section_retry(&cpus[0], |l| l.pop()) {
                    section_retry(&cpus[0], |l| l.push(o));
                }
            })
        };
        let thief = {
            let cpus = cpus.clone();
            thread::spawn(move || {
                let taken = cpus[0].exclusive(|l| {
                    let half = l.len().div_ceil(2);
                    l.split_off(l.len() - half)
                });
                // An aborted section never runs its work, so the batch is
                // taken once, by the section that commits.
                let mut batch = Some(taken);
                section_retry(&cpus[1], |l| l.extend(batch.take().unwrap_or_default()));
            })
        };
        owner.join().unwrap();
        thief.join().unwrap();
        let mut all = cpus[0].exclusive(|l| l.clone());
        all.extend(cpus[1].exclusive(|l| l.clone()));
        all.sort_unstable();
        assert_eq!(all, [0, 1, 2]);
    });
}
