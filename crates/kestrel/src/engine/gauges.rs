//! [`EngineGauges`]: what the engine thread publishes after each step for observers (the server's
//! `/metrics`): sequences running and waiting, KV blocks in use, steps taken. Atomics, so readers
//! never block the engine.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::engine::Engine;
use crate::backend::Backend;

#[derive(Debug, Default)]
pub struct EngineGauges {
    running: AtomicUsize,
    waiting: AtomicUsize,
    kv_blocks_used: AtomicUsize,
    kv_blocks_total: AtomicUsize,
    steps: AtomicU64,
}

/// One reading of the gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gauges {
    pub running: usize,
    pub waiting: usize,
    pub kv_blocks_used: usize,
    pub kv_blocks_total: usize,
    pub steps: u64,
}

impl EngineGauges {
    pub(crate) fn publish<B: Backend>(&self, e: &Engine<B>) {
        let (running, waiting) = e.num_running_waiting();
        let total = e.num_blocks();
        self.running.store(running, Ordering::Relaxed);
        self.waiting.store(waiting, Ordering::Relaxed);
        self.kv_blocks_used
            .store(total - e.num_free_blocks(), Ordering::Relaxed);
        self.kv_blocks_total.store(total, Ordering::Relaxed);
        self.steps.store(e.stats().steps, Ordering::Relaxed);
    }

    pub fn read(&self) -> Gauges {
        Gauges {
            running: self.running.load(Ordering::Relaxed),
            waiting: self.waiting.load(Ordering::Relaxed),
            kv_blocks_used: self.kv_blocks_used.load(Ordering::Relaxed),
            kv_blocks_total: self.kv_blocks_total.load(Ordering::Relaxed),
            steps: self.steps.load(Ordering::Relaxed),
        }
    }
}
