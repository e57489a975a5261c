//! Per-call jitter seeds.

use std::hash::BuildHasher;

/// A seed that differs per call (from the standard library's per-instance random hasher
/// keys), so concurrent retries do not share a jitter sequence and retry in lockstep.
pub(crate) fn fresh_seed() -> u64 {
    std::hash::RandomState::new().hash_one(0u8)
}
