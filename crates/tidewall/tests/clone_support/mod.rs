//! The request of the `hostile_*_clone_requests` suites (`CloneRequest` through the
//! retrying and hedging tower layers): one that knows its lineage and counts every value of
//! it alive.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering::SeqCst};

/// A request that knows its lineage: generation 0 is the caller's own, `n > 0` the copy made
/// at its copier's `n`th ask. Every value alive is counted in `live`; `Clone` (for `ByClone`
/// and hedges) keeps the generation and counts in `clones`. `asks` and `attempts` are per
/// request, shared by its copies.
#[derive(Debug)]
pub struct Tagged {
    pub id: u32,
    pub generation: u32,
    pub live: Arc<AtomicI64>,
    pub clones: Arc<AtomicU32>,
    pub asks: Arc<AtomicU32>,
    pub attempts: Arc<AtomicU32>,
}

impl Tagged {
    pub fn new(id: u32, live: &Arc<AtomicI64>) -> Self {
        live.fetch_add(1, SeqCst);
        Self {
            id,
            generation: 0,
            live: Arc::clone(live),
            clones: Arc::new(AtomicU32::new(0)),
            asks: Arc::new(AtomicU32::new(0)),
            attempts: Arc::new(AtomicU32::new(0)),
        }
    }

    pub fn copy(&self, generation: u32) -> Self {
        self.live.fetch_add(1, SeqCst);
        Self {
            id: self.id,
            generation,
            live: Arc::clone(&self.live),
            clones: Arc::clone(&self.clones),
            asks: Arc::clone(&self.asks),
            attempts: Arc::clone(&self.attempts),
        }
    }
}

impl Clone for Tagged {
    fn clone(&self) -> Self {
        self.clones.fetch_add(1, SeqCst);
        self.copy(self.generation)
    }
}

impl Drop for Tagged {
    fn drop(&mut self) {
        self.live.fetch_sub(1, SeqCst);
    }
}
