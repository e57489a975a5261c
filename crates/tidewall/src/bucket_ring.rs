//! A lock-free ring of stamped bucket words: the one engine under the breaker's time window
//! and the retry (and hedge) budget.
//!
//! Each word is a [`Bucket`]: a 16-bit epoch stamp and counters. Recording is one
//! compare-and-swap on the current epoch's word; summing reads every word and keeps those
//! whose stamp is the epoch their slot stands for now. A 16-bit stamp is only exact while
//! every non-empty word is less than 2¹⁵ buckets old, so the ring sweeps: the first caller
//! to see [`SWEEP_EVERY`] or more buckets pass since the last sweep (a busy ring, or one used
//! again after an idle gap of any length) empties every stale word under a small lock, and
//! everyone else only reads one atomic to know no sweep is due. That keeps state right after
//! any age and any gap, from zero to centuries, at no cost on the recording path.

use tidewall_core::breaker::window::{Bucket, SWEEP_EVERY};

use crate::sync::{AtomicU64, Mutex, Ordering::*, lock};

pub(crate) struct BucketRing {
    layout: Bucket,
    words: Box<[AtomicU64]>,
    /// The bucket number of the last sweep.
    swept: AtomicU64,
    /// Serializes sweeps (rare: at most once every `SWEEP_EVERY` buckets).
    sweeping: Mutex<()>,
}

impl BucketRing {
    /// A ring of `len` empty buckets (`len` is validated by the policy: 1 ..= `MAX_BUCKETS`).
    pub(crate) fn new(layout: Bucket, len: u32) -> Self {
        Self {
            layout,
            words: (0..len.max(1)).map(|_| AtomicU64::new(0)).collect(),
            swept: AtomicU64::new(0),
            sweeping: Mutex::new(()),
        }
    }

    /// The slot that bucket number `epoch` writes to.
    pub(crate) fn slot(&self, epoch: u64) -> usize {
        // The remainder is below the ring's length, so it fits back into usize.
        usize::try_from(epoch % self.words.len() as u64).unwrap_or(0)
    }

    /// Makes the stamps exact at `epoch`: sweeps if `SWEEP_EVERY` buckets have passed since
    /// the last sweep. Every method below calls it first.
    pub(crate) fn prepare(&self, epoch: u64) {
        if epoch.saturating_sub(self.swept.load(Acquire)) >= SWEEP_EVERY {
            self.sweep(epoch);
        }
    }

    #[cold]
    fn sweep(&self, epoch: u64) {
        let _sweeping = lock(&self.sweeping);
        let reference = self.swept.load(Acquire);
        if epoch.saturating_sub(reference) < SWEEP_EVERY {
            return;
        }
        let slots = self.words.len() as u64;
        for (slot, cell) in self.words.iter().enumerate() {
            let mut word = cell.load(Relaxed);
            // A concurrent writer may change the word under us: look again until the empty
            // word is in, or the word is one to keep.
            while !Bucket::survives_sweep(word, slot as u64, slots, reference, epoch) && word != 0 {
                match cell.compare_exchange_weak(word, 0, Relaxed, Relaxed) {
                    Ok(_) => break,
                    Err(seen) => word = seen,
                }
            }
        }
        self.swept.store(epoch, Release);
    }

    /// Adds `add` to the counters of bucket `epoch`; `false` if a counter is full (or the
    /// slot already holds a newer bucket). The retry budget's deposits: a full bucket stops
    /// counting.
    pub(crate) fn add(&self, epoch: u64, add: [u64; 3]) -> bool {
        self.update(epoch, |word| self.layout.add(word, stamp(epoch), add))
    }

    /// Adds `add` to the counters of bucket `epoch`, halving them first if one is full (see
    /// [`Bucket::add_or_halve`]); `false` only if the slot already holds a newer bucket. The
    /// breaker's window: it keeps counting at any rate.
    pub(crate) fn add_or_halve(&self, epoch: u64, add: [u64; 3]) -> bool {
        self.update(epoch, |word| {
            self.layout.add_or_halve(word, stamp(epoch), add)
        })
    }

    /// Replaces bucket `epoch`'s word with `next(word)` until it takes; `false` once `next`
    /// declines.
    #[inline]
    fn update(&self, epoch: u64, next: impl Fn(u64) -> Option<u64>) -> bool {
        self.prepare(epoch);
        let cell = &self.words[self.slot(epoch)];
        let mut word = cell.load(Relaxed);
        while let Some(next) = next(word) {
            match cell.compare_exchange_weak(word, next, Relaxed, Relaxed) {
                Ok(_) => return true,
                Err(seen) => word = seen,
            }
        }
        false
    }

    /// The counters of the buckets live at `epoch`, summed. `instead` replaces the word of
    /// one slot (a caller about to compare-and-swap it sums what it saw).
    pub(crate) fn totals(&self, epoch: u64, instead: Option<(usize, u64)>) -> [u64; 3] {
        self.prepare(epoch);
        let slots = self.words.len() as u64;
        let mut sum = [0u64; 3];
        for (slot, cell) in self.words.iter().enumerate() {
            let word = match instead {
                Some((i, word)) if i == slot => word,
                _ => cell.load(Relaxed),
            };
            let live = self.layout.live(word, slot as u64, slots, epoch);
            for (total, part) in sum.iter_mut().zip(live) {
                *total = total.saturating_add(part);
            }
        }
        sum
    }

    /// The word in `slot` now.
    pub(crate) fn load(&self, slot: usize) -> u64 {
        self.words[slot].load(Relaxed)
    }

    /// Replaces the word in `slot` if it is still `current`.
    pub(crate) fn replace(&self, slot: usize, current: u64, next: u64) -> bool {
        self.words[slot]
            .compare_exchange(current, next, Relaxed, Relaxed)
            .is_ok()
    }

    /// The layout of the words.
    pub(crate) fn layout(&self) -> Bucket {
        self.layout
    }
}

/// The 16-bit stamp of bucket number `epoch` (see [`Bucket`]).
pub(crate) fn stamp(epoch: u64) -> u16 {
    // Truncation is the stamp: epochs modulo 2^16, made exact by the sweeps.
    #[allow(clippy::cast_possible_truncation)]
    let stamp = epoch as u16;
    stamp
}

#[cfg(all(test, not(loom)))]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Gaps between calls, in buckets: ordinary ones, and the neighbourhoods of 2^15, 2^16
    /// and 2^17 buckets and their multiples, where 16-bit stamps alias; up to centuries.
    fn gap() -> impl Strategy<Value = u64> {
        prop_oneof![
            0..40u64,
            (1u64..=8, 15u32..=17, -40i64..=40)
                .prop_map(|(k, bits, d)| { (k << bits).saturating_add_signed(d) }),
            (1u64..=4096, -3i64..=3).prop_map(|(k, d)| (k << 16).saturating_add_signed(d)),
            0..(1u64 << 40),
        ]
    }

    /// What the ring should report: the sum of what was added to the last `len` buckets.
    fn model(events: &[(u64, u64)], now: u64, len: u64) -> u64 {
        events
            .iter()
            .filter(|(epoch, _)| *epoch <= now && now - epoch < len)
            .map(|(_, n)| n)
            .sum()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// After any sequence of gaps (a ring built long before its first use included),
        /// the totals are exactly the calls of the last `len` buckets, and every write lands.
        #[test]
        fn totals_are_exact_after_any_gaps(
            len in prop_oneof![Just(1u32), Just(10), Just(16), Just(1024), 1u32..64],
            start in prop_oneof![Just(0u64), gap()],
            steps in prop::collection::vec((gap(), 1u64..4), 1..40),
        ) {
            let ring = BucketRing::new(Bucket::BREAKER, len);
            let mut events = Vec::new();
            let mut now = start;
            for (gap, n) in steps {
                now = now.saturating_add(gap);
                prop_assert!(ring.add(now, [n, 0, 0]), "a write at bucket {} was refused", now);
                events.push((now, n));
                let [calls, _, _] = ring.totals(now, None);
                prop_assert_eq!(calls, model(&events, now, u64::from(len)), "at bucket {}", now);
            }
            // And read once more, after one more gap, without writing.
            let later = now.saturating_add(1 << 16);
            prop_assert_eq!(ring.totals(later, None)[0], model(&events, later, u64::from(len)));
        }
    }

    #[test]
    fn a_stale_bucket_does_not_come_back_after_2_pow_16_buckets() {
        let ring = BucketRing::new(Bucket::BREAKER, 16);
        ring.add(3, [9, 9, 0]);
        assert_eq!(ring.totals(3, None), [9, 9, 0]);
        // Exactly 2^16 buckets later the old stamp matches the slot's epoch again.
        assert_eq!(ring.totals(3 + (1 << 16), None), [0, 0, 0]);
        // Other slots kept busy meanwhile do not keep the stale one alive either.
        let ring = BucketRing::new(Bucket::BREAKER, 16);
        ring.add(3, [9, 9, 0]);
        for epoch in (4..(1 << 16) + 3).step_by(16) {
            ring.add(epoch, [1, 0, 0]);
        }
        assert_eq!(ring.totals((1 << 16) + 3, None)[1], 0);
    }

    #[test]
    fn a_full_bucket_halves_and_keeps_counting() {
        let ring = BucketRing::new(Bucket::BREAKER, 4);
        for _ in 0..65_535 {
            assert!(ring.add_or_halve(5, [1, 0, 0]));
        }
        assert_eq!(ring.totals(5, None), [65_535, 0, 0]);
        assert!(
            !ring.add(5, [1, 0, 0]),
            "plain `add` stops at a full bucket"
        );
        // The failures after it count: the first halves the bucket, and then they add up.
        for _ in 0..1_000 {
            assert!(ring.add_or_halve(5, [1, 1, 0]));
        }
        assert_eq!(ring.totals(5, None), [32_767 + 1_000, 1_000, 0]);
        // Buckets around it are untouched.
        ring.add_or_halve(6, [1, 0, 0]);
        assert_eq!(ring.totals(6, None), [32_767 + 1_001, 1_000, 0]);
    }

    #[test]
    fn a_ring_built_long_before_its_first_use_counts_its_first_writes() {
        for first in [
            1u64 << 15,
            (1 << 15) + 1,
            40_000,
            65_535,
            1 << 17,
            u64::MAX / 2,
        ] {
            let ring = BucketRing::new(Bucket::BUDGET, 10);
            assert!(ring.add(first, [1, 0, 0]), "bucket {first}");
            assert_eq!(ring.totals(first, None), [1, 0, 0], "bucket {first}");
        }
    }
}
