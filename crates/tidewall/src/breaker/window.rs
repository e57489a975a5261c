//! Lock-free sliding windows over the packed counters of `tidewall_core::breaker::window`.

use tidewall_core::breaker::window::{Bucket, slot_code, totals_delta, unpack_totals};
use tidewall_core::breaker::{Counts, Window};

use crate::bucket_ring::BucketRing;
use crate::sync::{
    AtomicU8, AtomicU32, AtomicU64, AtomicUsize,
    Ordering::{Relaxed, SeqCst},
};

/// What one closed period counts: its window and its run of failures, stamped with the
/// generation that period began in. A transition to closed replaces the whole tally (it never
/// empties one in place), and a call records only into the tally of its own generation: an
/// outcome that passed its generation check just before a reset lands in the tally being
/// replaced, never in the fresh one.
pub(super) struct Tally {
    pub(super) generation: u32,
    pub(super) window: SlidingWindow,
    pub(super) consecutive: AtomicU32,
}

impl Tally {
    pub(super) fn new(shape: Window, generation: u32) -> Self {
        Self {
            generation,
            window: SlidingWindow::new(shape),
            consecutive: AtomicU32::new(0),
        }
    }

    /// The window's counts at `now`, for a reader that needs an answer now (not a verdict):
    /// while a writer is half done, a count window's slots read one by one.
    pub(super) fn counts(&self, now: u64) -> Counts {
        self.window
            .counts(now)
            .unwrap_or_else(|| self.window.summed())
    }
}

/// How many times a count window's reader looks again for its totals while a writer is
/// between its swap and its update.
const SETTLE_TRIES: u32 = 16;

pub(super) enum SlidingWindow {
    Count {
        slots: Box<[AtomicU8]>,
        cursor: AtomicUsize,
        totals: AtomicU64,
        /// Writers that began changing a slot, and those done updating `totals` after it:
        /// equal while no change is half made. Two writers of one slot (the cursor lapped
        /// the ring) can apply their deltas in the other order than their swaps, so `totals`
        /// between them is a sum no set of slots ever held: a reader trusts it only when no
        /// writer was between its swap and its update throughout the read.
        begun: AtomicU64,
        done: AtomicU64,
    },
    Time {
        ring: BucketRing,
        bucket_nanos: u64,
    },
}

impl SlidingWindow {
    pub(super) fn new(shape: Window) -> Self {
        match shape {
            Window::Count { calls } => Self::Count {
                slots: (0..calls).map(|_| AtomicU8::new(0)).collect(),
                cursor: AtomicUsize::new(0),
                totals: AtomicU64::new(0),
                begun: AtomicU64::new(0),
                done: AtomicU64::new(0),
            },
            Window::Time { span, buckets } => Self::Time {
                ring: BucketRing::new(Bucket::BREAKER, buckets),
                // Validated by the policy builder: fits in u64 and is at least 1.
                bucket_nanos: u64::try_from(span.as_nanos()).unwrap_or(u64::MAX)
                    / u64::from(buckets),
            },
        }
    }

    /// Records one call. Count windows: one `fetch_add` on the cursor, then, only when the
    /// slot's code changes, a swap and a `fetch_add` on the totals between the two marks a
    /// reader checks. Time windows: one CAS.
    ///
    /// Returns whether the counts may have changed: `false` only when a count window's slot
    /// already held the same outcome (a success over a success), which leaves every rate
    /// as it was, so the caller need not evaluate the thresholds again.
    pub(super) fn record(&self, failed: bool, slow: bool, now: u64) -> bool {
        match self {
            Self::Count {
                slots,
                cursor,
                totals,
                begun,
                done,
            } => {
                let index = cursor.fetch_add(1, Relaxed) % slots.len();
                let code = slot_code(failed, slow);
                // The common case rewrites a slot with the code it already holds (a success
                // over a success): skip the write. Racing writers to one slot are possible
                // only when the cursor laps the ring mid-call; once every change is applied
                // the totals are exactly the sum of the slots, because only a real change
                // moves them (while one is half made, readers wait: see `begun`).
                if slots[index].load(Relaxed) == code {
                    return false;
                }
                begun.fetch_add(1, SeqCst);
                let old = slots[index].swap(code, SeqCst);
                if old != code {
                    totals.fetch_add(totals_delta(code, old), SeqCst);
                }
                done.fetch_add(1, SeqCst);
                true
            }
            Self::Time { ring, bucket_nanos } => {
                // A full bucket (65,535 calls) halves its counts and counts on.
                ring.add_or_halve(now / bucket_nanos, [1, u64::from(failed), u64::from(slow)]);
                true
            }
        }
    }

    /// What a count window's slots hold, read one by one (each a call that really ended, so
    /// a plausible sum even while writers are half done; O(calls)). A time window answers
    /// [`counts`](Self::counts) always, so has no use for it.
    fn summed(&self) -> Counts {
        match self {
            Self::Count { slots, .. } => unpack_totals(slots.iter().fold(0, |sum, slot| {
                sum.wrapping_add(totals_delta(slot.load(SeqCst), 0))
            })),
            Self::Time { .. } => Counts::default(),
        }
    }

    /// The window's counts at `now`; `None` while concurrent updates leave the packed totals
    /// momentarily inconsistent (the caller simply does not evaluate then).
    pub(super) fn counts(&self, now: u64) -> Option<Counts> {
        match self {
            Self::Count {
                slots,
                totals,
                begun,
                done,
                ..
            } => {
                // Every writer counted in `done` before the read has applied its change, and
                // none began after it until `begun` is read again: then `totals` is a sum the
                // slots held. A writer still between its marks is waited for a little, as it
                // evaluates once done; past that, no verdict now.
                for _ in 0..SETTLE_TRIES {
                    let finished = done.load(SeqCst);
                    let sum = totals.load(SeqCst);
                    if begun.load(SeqCst) == finished {
                        let c = unpack_totals(sum);
                        let len = u32::try_from(slots.len()).unwrap_or(u32::MAX);
                        return (c.calls <= len && c.failures <= c.calls && c.slow <= c.calls)
                            .then_some(c);
                    }
                    crate::sync::spin();
                }
                None
            }
            Self::Time { ring, bucket_nanos } => {
                let sum = ring.totals(now / bucket_nanos, None);
                let field = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
                Some(Counts {
                    calls: field(sum[0]),
                    failures: field(sum[1]),
                    slow: field(sum[2]),
                })
            }
        }
    }
}
