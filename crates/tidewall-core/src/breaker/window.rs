//! Packed-counter arithmetic for lock-free sliding windows.
//!
//! Both window kinds keep their state in `u64` words so the async side can update them with a
//! single atomic operation:
//!
//! * **count window**: a ring of one-byte [`slot codes`](slot_code) plus one *totals* word
//!   (three 21-bit fields: calls, failures, slow). Recording swaps a slot and adds
//!   [`totals_delta`] (new slot minus old slot) to the totals in one `fetch_add`; the packed
//!   arithmetic is exact because every field of the true result stays within its 21 bits.
//! * **time window** (and the retry budget): a ring of [`Bucket`] words, each a 16-bit epoch
//!   stamp (bucket number modulo 2¹⁶) and three counters. A bucket whose epoch is not the one
//!   its slot should hold now is stale and counts as empty; a word whose counters are all zero
//!   is empty whatever its stamp.
//!
//! A 16-bit stamp tells epochs apart only within 2¹⁵ buckets of each other. The ring that
//! holds the words keeps every non-empty word that close to the present: at least once every
//! [`SWEEP_EVERY`] buckets (and before the first use after a longer gap) it sweeps, emptying
//! each word that [`Bucket::survives_sweep`] rejects. Between sweeps every non-empty word is
//! less than `SWEEP_EVERY + MAX_BUCKETS` buckets old, so comparing stamps is exact after any
//! age and any idle gap.
//!
//! ```
//! use tidewall_core::breaker::window::{slot_code, totals_delta, unpack_totals};
//!
//! let mut totals = 0u64;
//! totals = totals.wrapping_add(totals_delta(slot_code(true, false), 0)); // a failure
//! totals = totals.wrapping_add(totals_delta(slot_code(false, true), 0)); // a slow success
//! // The first slot is overwritten by a fast success.
//! totals = totals.wrapping_add(totals_delta(slot_code(false, false), slot_code(true, false)));
//! let counts = unpack_totals(totals);
//! assert_eq!((counts.calls, counts.failures, counts.slow), (2, 0, 1));
//! ```

use super::{Counts, MAX_BUCKETS};

/// How many buckets may pass between two sweeps of a stamped ring (see the module docs).
pub const SWEEP_EVERY: u64 = 1 << 14;

// A stamp tells two epochs apart while they are less than 2^15 buckets apart: the oldest word
// a ring may hold between sweeps must be younger than that, with room for clock skew between
// concurrent callers.
const _: () = assert!(SWEEP_EVERY + MAX_BUCKETS as u64 <= (1 << 15) - (1 << 12));

/// The counters of a bucket word (everything below the 16-bit stamp).
const COUNTERS: u64 = (1 << 48) - 1;

const FIELD_BITS: u32 = 21;
const FIELD_MASK: u64 = (1 << FIELD_BITS) - 1;

/// The one-byte record of a call in a count window (`0` is an empty slot).
pub const fn slot_code(failed: bool, slow: bool) -> u8 {
    1 + failed as u8 + 2 * slow as u8
}

/// The packed totals contribution of one slot code.
const fn code_totals(code: u8) -> u64 {
    if code == 0 {
        return 0;
    }
    let failed = ((code - 1) & 1) as u64;
    let slow = ((code - 1) >> 1) as u64;
    1 | failed << FIELD_BITS | slow << (2 * FIELD_BITS)
}

/// What to add (wrapping) to the totals word when a slot changes from `old` to `new`.
pub const fn totals_delta(new: u8, old: u8) -> u64 {
    code_totals(new).wrapping_sub(code_totals(old))
}

/// Reads a totals word.
pub const fn unpack_totals(word: u64) -> Counts {
    // Each field is masked to 21 bits, so the casts are lossless.
    #[allow(clippy::cast_possible_truncation)]
    Counts {
        calls: (word & FIELD_MASK) as u32,
        failures: ((word >> FIELD_BITS) & FIELD_MASK) as u32,
        slow: ((word >> (2 * FIELD_BITS)) & FIELD_MASK) as u32,
    }
}

/// The layout of a bucket word: a 16-bit epoch on top, then three counters whose widths add
/// up to 48 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    widths: [u32; 3],
}

impl Bucket {
    /// Circuit-breaker buckets: calls, failures and slow calls, 16 bits each.
    pub const BREAKER: Self = Self {
        widths: [16, 16, 16],
    };
    /// Retry-budget buckets: deposits and withdrawals, 24 bits each.
    pub const BUDGET: Self = Self {
        widths: [24, 24, 0],
    };

    const fn shift(&self, field: usize) -> u32 {
        let mut shift = 0;
        let mut i = 0;
        while i < field {
            shift += self.widths[i];
            i += 1;
        }
        shift
    }

    /// The epoch stamped on a bucket word.
    pub const fn epoch(word: u64) -> u16 {
        (word >> 48) as u16
    }

    /// Counter `field` (0, 1 or 2) of a bucket word.
    pub const fn field(&self, word: u64, field: usize) -> u64 {
        let width = self.widths[field];
        if width == 0 {
            return 0;
        }
        (word >> self.shift(field)) & ((1 << width) - 1)
    }

    /// The word after adding `add` to the counters of the bucket for `epoch` (a bucket
    /// stamped with an older epoch starts from zero). `None` if a counter would overflow; the
    /// caller decides whether that means "make room" (a sampled window:
    /// [`add_or_halve`](Self::add_or_halve)) or "deny" (a budget).
    ///
    /// A bucket already stamped with a *newer* epoch is left alone (`None`): a writer whose
    /// clock reading is a little behind a bucket boundary must not wipe the new bucket. An
    /// empty word (all counters zero) is never newer: it holds nothing to wipe.
    pub const fn add(&self, word: u64, epoch: u16, add: [u64; 3]) -> Option<u64> {
        let stamp = Self::epoch(word);
        let empty = word & COUNTERS == 0;
        // Stamps compare modulo 2^16: a stamp up to half the range ahead counts as newer
        // (exact while the ring keeps its words within 2^15 buckets, see the module docs).
        #[allow(clippy::cast_possible_wrap)]
        if !empty && stamp != epoch && (stamp.wrapping_sub(epoch) as i16) > 0 {
            return None;
        }
        let base = if stamp == epoch && !empty { word } else { 0 };
        let mut out = (epoch as u64) << 48;
        let mut i = 0;
        while i < 3 {
            let width = self.widths[i];
            // An `add` past u64 is past every width: refused, never wrapped.
            let Some(value) = self.field(base, i).checked_add(add[i]) else {
                return None;
            };
            if width == 0 {
                if add[i] != 0 {
                    return None;
                }
            } else if value >= 1 << width {
                return None;
            } else {
                out |= value << self.shift(i);
            }
            i += 1;
        }
        Some(out)
    }

    /// The word after adding `add` to the bucket for `epoch`, as [`add`](Self::add), but a
    /// bucket that a counter would overflow first halves every counter (rounding down), as
    /// often as it takes to make room: a sampled window keeps counting at any rate, each halving giving the calls
    /// before it half their weight, so the rates follow the latest calls. Halving keeps each
    /// counter at most the first (failures never exceed calls). `None` only for a bucket
    /// stamped with a newer epoch, or for an `add` that overflows an empty bucket.
    ///
    /// ```
    /// use tidewall_core::breaker::window::Bucket;
    ///
    /// let b = Bucket::BREAKER;
    /// // 65,535 calls, 1,001 of them failures: the bucket is full.
    /// let full = b.add(0, 7, [65_535, 1_001, 0]).unwrap();
    /// assert_eq!(b.add(full, 7, [1, 1, 0]), None);
    /// // Halved (32,767 and 500), then the failure is counted.
    /// let next = b.add_or_halve(full, 7, [1, 1, 0]).unwrap();
    /// assert_eq!([b.field(next, 0), b.field(next, 1)], [32_768, 501]);
    /// ```
    pub const fn add_or_halve(&self, word: u64, epoch: u16, add: [u64; 3]) -> Option<u64> {
        let mut word = word;
        loop {
            if let Some(next) = self.add(word, epoch, add) {
                return Some(next);
            }
            if Self::epoch(word) != epoch || word & COUNTERS == 0 {
                // A newer bucket (an older one would have started afresh), or an `add` too
                // big for any bucket: halving makes no room.
                return None;
            }
            // At most one round per counter bit: each halves the counters, and an empty
            // bucket ends it.
            word = self.halved(word);
        }
    }

    /// `word` with every counter halved, rounding down, and its stamp kept.
    const fn halved(&self, word: u64) -> u64 {
        let mut out = word & !COUNTERS;
        let mut i = 0;
        while i < 3 {
            out |= (self.field(word, i) / 2) << self.shift(i);
            i += 1;
        }
        out
    }

    /// The bucket number a stamp stands for: of the epochs with that stamp, the one nearest
    /// `reference` (within 2¹⁵ buckets of it).
    pub const fn unstamp(stamp: u16, reference: u64) -> u64 {
        // The truncation is the stamp arithmetic: offsets are taken modulo 2^16.
        #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
        let offset = stamp.wrapping_sub(reference as u16) as i16;
        reference.saturating_add_signed(offset as i64)
    }

    /// Whether a sweep at bucket number `current` keeps `word` in slot `slot` of a ring of
    /// `slots` buckets: `false` when the word is empty, or holds an epoch older than the one
    /// its slot stands for at `current` (it would count as stale, and left alone its stamp
    /// would come round again after 2¹⁶ buckets). `reference` is the bucket number of the
    /// previous sweep; every word written since is within 2¹⁵ buckets of it, which is what
    /// makes the stamp exact (see the module docs). A word *ahead* of `current` (written by a
    /// caller whose clock is a little ahead) is kept. A slot outside the ring (or a ring of
    /// no slots) keeps nothing.
    ///
    /// ```
    /// use tidewall_core::breaker::window::Bucket;
    ///
    /// let b = Bucket::BREAKER;
    /// // A call recorded in bucket 70_000 (slot 0 of 10), swept at 70_005: still live.
    /// let word = b.add(0, 70_000u64 as u16, [1, 1, 0]).unwrap();
    /// assert!(Bucket::survives_sweep(word, 0, 10, 65_536, 70_005));
    /// // Swept 65,536 buckets later its stamp matches again, but it is long stale.
    /// assert!(!Bucket::survives_sweep(word, 0, 10, 70_005, 70_000 + 65_536));
    /// ```
    pub const fn survives_sweep(
        word: u64,
        slot: u64,
        slots: u64,
        reference: u64,
        current: u64,
    ) -> bool {
        if word & COUNTERS == 0 {
            return false;
        }
        let written = Self::unstamp(Self::epoch(word), reference);
        let Some(behind) = behind(slot, slots, current) else {
            return false;
        };
        match current.checked_sub(behind) {
            Some(expected) => written >= expected,
            None => true,
        }
    }

    /// The counters of bucket word `word` in slot `slot` of a ring of `slots` buckets, as seen
    /// at bucket number `current`: zero when the word holds any epoch but the one that slot
    /// stands for now (within the last `slots` buckets), and for a slot outside the ring (or a
    /// ring of no slots).
    pub const fn live(&self, word: u64, slot: u64, slots: u64, current: u64) -> [u64; 3] {
        // The epoch this slot stands for: the latest e <= current with e % slots == slot.
        let Some(behind) = behind(slot, slots, current) else {
            return [0; 3];
        };
        let Some(expected) = current.checked_sub(behind) else {
            return [0; 3];
        };
        // Stamps are epochs modulo 2^16.
        #[allow(clippy::cast_possible_truncation)]
        let stamp = expected as u16;
        if Self::epoch(word) != stamp {
            return [0; 3];
        }
        [
            self.field(word, 0),
            self.field(word, 1),
            self.field(word, 2),
        ]
    }
}

/// How many buckets before `current` slot `slot` of a ring of `slots` last stood for (`0`:
/// it stands for `current`); `None` for a slot outside the ring, or a ring of no slots, whose
/// words hold nothing live. Computed without overflow for any ring size.
const fn behind(slot: u64, slots: u64, current: u64) -> Option<u64> {
    if slot >= slots {
        return None;
    }
    let now = current % slots;
    Some(if now >= slot {
        now - slot
    } else {
        now + (slots - slot)
    })
}
