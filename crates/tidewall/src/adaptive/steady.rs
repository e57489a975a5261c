//! The algorithm's [`Steady`] samples in one atomic word, so that a call its algorithm would
//! learn nothing from ends without taking the algorithm's lock.

use tidewall_core::adaptive::Steady;

use crate::sync::{AtomicU64, Ordering};

/// [`Steady`] packed into 64 bits, rounded towards fewer samples (a sample the word holds is
/// one the algorithm's answer holds; the other way round, the call only takes the lock):
/// the inflight bound in the high 32 bits, whether drops are steady in bit 31, and the RTT
/// bound in whole microseconds, rounded down, in the low 31 (all ones: no bound).
pub(super) struct SteadyWord(AtomicU64);

const DROPPED: u64 = 1 << 31;
const MICROS: u64 = DROPPED - 1;

impl SteadyWord {
    pub(super) fn new(steady: Steady) -> Self {
        Self(AtomicU64::new(pack(steady)))
    }

    /// Makes `steady` the answer in force. Under the algorithm's lock, right after the update
    /// (or the new algorithm) it describes. Inlined, so that an algorithm that never claims a
    /// steady sample stores a constant.
    #[inline]
    pub(super) fn publish(&self, steady: Steady) {
        self.0.store(pack(steady), Ordering::Release);
    }

    /// Whether a sample of `rtt_nanos` that found `inflight` in flight is steady for the
    /// answer in force.
    #[inline(always)]
    pub(super) fn holds(&self, rtt_nanos: u64, inflight: u32, dropped: bool) -> bool {
        holds(self.0.load(Ordering::Acquire), rtt_nanos, inflight, dropped)
    }
}

#[inline]
fn pack(steady: Steady) -> u64 {
    let micros = if steady.rtt_within >= Steady::ALL.rtt_within {
        MICROS
    } else {
        // Below the marker: a bound this long is rounded down to the longest one kept. In
        // u64 (`as_micros` divides a u128): this runs on every update.
        let within = steady.rtt_within;
        within
            .as_secs()
            .saturating_mul(1_000_000)
            .saturating_add(u64::from(within.subsec_micros()))
            .min(MICROS - 1)
    };
    let dropped = if steady.dropped { DROPPED } else { 0 };
    (u64::from(steady.below_inflight) << 32) | dropped | micros
}

#[inline(always)]
fn holds(word: u64, rtt_nanos: u64, inflight: u32, dropped: bool) -> bool {
    let below_inflight = word >> 32;
    let micros = word & MICROS;
    u64::from(inflight) < below_inflight
        && (word & DROPPED != 0 || !dropped)
        // `micros` is below 2^31: times 1000, far from overflowing.
        && (micros == MICROS || rtt_nanos <= micros * 1_000)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;
    use tidewall_core::adaptive::{Sample, Steady};

    use super::{holds, pack};

    fn steady() -> impl Strategy<Value = Steady> {
        let rtt = prop_oneof![
            Just(Duration::ZERO),
            Just(Duration::MAX),
            (0..=u64::MAX).prop_map(Duration::from_nanos),
            (0..=u64::MAX, 0..1_000_000_000u32).prop_map(|(s, n)| Duration::new(s, n)),
        ];
        (any::<u32>(), rtt, any::<bool>()).prop_map(|(below_inflight, rtt_within, dropped)| {
            Steady {
                below_inflight,
                rtt_within,
                dropped,
            }
        })
    }

    proptest! {
        /// Packing only ever loses samples: whatever the word holds, the answer holds.
        #[test]
        fn the_word_holds_only_what_the_answer_holds(
            steady in steady(),
            rtt in prop_oneof![0..=u64::MAX, 0..10_000_000u64],
            inflight in any::<u32>(),
            dropped in any::<bool>(),
        ) {
            if holds(pack(steady), rtt, inflight, dropped) {
                let sample = Sample { rtt: Duration::from_nanos(rtt), inflight, dropped, at: Duration::ZERO };
                prop_assert!(steady.holds(&sample), "{steady:?} {sample:?}");
            }
        }

        /// And it loses none whose bound it keeps exactly (whole microseconds, short of the
        /// marker, or no bound at all).
        #[test]
        fn a_bound_in_whole_microseconds_is_kept_exactly(
            below_inflight in any::<u32>(),
            micros in prop_oneof![0..(1u64 << 31) - 1, Just(u64::MAX)],
            dropped_ok in any::<bool>(),
            rtt in 0..=u64::MAX,
            inflight in any::<u32>(),
            dropped in any::<bool>(),
        ) {
            let rtt_within = if micros == u64::MAX { Duration::MAX } else { Duration::from_micros(micros) };
            let steady = Steady { below_inflight, rtt_within, dropped: dropped_ok };
            let sample = Sample { rtt: Duration::from_nanos(rtt), inflight, dropped, at: Duration::ZERO };
            prop_assert_eq!(holds(pack(steady), rtt, inflight, dropped), steady.holds(&sample));
        }
    }

    #[test]
    fn none_holds_nothing_and_all_everything() {
        assert!(!holds(pack(Steady::NONE), 0, 0, false));
        assert!(holds(pack(Steady::ALL), u64::MAX, u32::MAX - 1, true));
    }
}
