//! The breaker's state word: state, half-open probe counters and generation in one `u64`, so
//! every admission decision is one atomic load (closed) or one compare-and-swap (half-open).
//!
//! ```text
//! bits  0..3   state
//! bits  8..20  half-open probes admitted (slots taken)
//! bits 20..32  half-open probes that succeeded
//! bits 32..64  generation: +1 on every transition, so a permit from an earlier state is
//!              recognised and its outcome ignored
//! ```

use super::State;

const STATE_MASK: u64 = 0b111;
const ADMITTED_SHIFT: u32 = 8;
const SUCCEEDED_SHIFT: u32 = 20;
const COUNT_MASK: u64 = 0xFFF;
const GEN_SHIFT: u32 = 32;

/// One admitted probe, as an addend to the word.
pub(super) const ONE_ADMITTED: u64 = 1 << ADMITTED_SHIFT;
/// One successful probe, as an addend to the word.
pub(super) const ONE_SUCCEEDED: u64 = 1 << SUCCEEDED_SHIFT;

pub(super) const fn pack(state: State, generation: u32) -> u64 {
    (generation as u64) << GEN_SHIFT | state as u64
}

pub(super) fn state(word: u64) -> State {
    match word & STATE_MASK {
        0 => State::Closed,
        1 => State::Open,
        2 => State::HalfOpen,
        3 => State::ForcedOpen,
        _ => State::ForcedClosed,
    }
}

pub(super) const fn generation(word: u64) -> u32 {
    (word >> GEN_SHIFT) as u32
}

pub(super) const fn admitted(word: u64) -> u32 {
    ((word >> ADMITTED_SHIFT) & COUNT_MASK) as u32
}

pub(super) const fn succeeded(word: u64) -> u32 {
    ((word >> SUCCEEDED_SHIFT) & COUNT_MASK) as u32
}
