//! Log-linear latency buckets for a streaming quantile estimate.
//!
//! A value maps to one of [`BUCKETS`] buckets: exact below 8, then eight buckets per power of
//! two, so any estimate is within 12.5 % above the true value. The async side keeps one atomic
//! counter per bucket; this module is the index math and the quantile walk.
//!
//! ```
//! use tidewall_core::quantile::{bucket_of, bucket_upper, quantile};
//!
//! let mut counts = [0u64; tidewall_core::quantile::BUCKETS];
//! for v in 1..=100u64 {
//!     counts[bucket_of(v * 1_000)] += 1;
//! }
//! let p90 = quantile(|i| counts[i], 100, 0.9).unwrap();
//! assert!((90_000..=90_000 * 9 / 8).contains(&p90), "{p90}");
//! assert!(bucket_upper(bucket_of(12_345)) >= 12_345);
//! ```

const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;

/// Number of buckets covering all of `u64`.
pub const BUCKETS: usize = 8 + (64 - SUB_BITS as usize) * 8;

/// The bucket of `value`.
// Bucket indices are below 496, so the casts to usize are lossless.
#[allow(clippy::cast_possible_truncation)]
pub const fn bucket_of(value: u64) -> usize {
    if value < SUB {
        return value as usize;
    }
    let octave = 63 - value.leading_zeros();
    let sub = (value >> (octave - SUB_BITS)) & (SUB - 1);
    (SUB + (octave - SUB_BITS) as u64 * SUB + sub) as usize
}

/// The largest value that lands in bucket `index` (saturating for out-of-range indices).
#[allow(clippy::cast_possible_truncation)]
pub const fn bucket_upper(index: usize) -> u64 {
    if index < SUB as usize {
        return index as u64;
    }
    if index >= BUCKETS {
        return u64::MAX;
    }
    let rest = (index - SUB as usize) as u64;
    let shift = rest / SUB;
    let lower = (SUB + rest % SUB) << shift;
    lower + ((1 << shift) - 1)
}

/// `ceil(q × total)` in `1..=total`, exactly: `total as f64` would round above 2^53, and
/// `q = 1.0` could then miss the largest value. `q` is `m × 2^e` with a 53-bit `m` and
/// `e <= -52` (as `q <= 1`), so `m × total` fits in a `u128`.
fn rank(q: f64, total: u64) -> u64 {
    let bits = q.to_bits();
    let biased = (bits >> 52) & 0x7ff;
    let fraction = bits & ((1 << 52) - 1);
    let (mantissa, shift) = if biased == 0 {
        (fraction, 1074) // subnormal (or zero)
    } else {
        (fraction | (1 << 52), 1075 - biased)
    };
    let product = u128::from(mantissa) * u128::from(total);
    let ceil = if shift >= 128 {
        u128::from(product > 0)
    } else {
        let floor = product >> shift;
        floor + u128::from(floor << shift != product)
    };
    u64::try_from(ceil).unwrap_or(u64::MAX).clamp(1, total)
}

/// The `q`-quantile (0 ..= 1) of `total` recorded values whose per-bucket counts `count(i)`
/// returns, as the upper bound of the bucket holding it; `None` without values or with a `q`
/// outside [0, 1].
pub fn quantile(count: impl Fn(usize) -> u64, total: u64, q: f64) -> Option<u64> {
    if total == 0 || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let rank = rank(q, total);
    let mut seen: u64 = 0;
    for index in 0..BUCKETS {
        // Counts read from live atomics may add up past `total`, even past u64::MAX.
        seen = seen.saturating_add(count(index));
        if seen >= rank {
            return Some(bucket_upper(index));
        }
    }
    Some(u64::MAX)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn covers_the_whole_range() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(7), 7);
        assert_eq!(bucket_of(8), 8);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket_upper(BUCKETS - 1), u64::MAX);
        assert_eq!(quantile(|_| 0, 0, 0.5), None);
        assert_eq!(quantile(|_| 1, 1, 1.5), None);
    }

    #[test]
    fn counts_that_add_up_past_u64_max_do_not_overflow() {
        // Two buckets of u64::MAX / 2 fall one short of the rank; the third overflows a sum.
        assert_eq!(
            quantile(|_| u64::MAX / 2, u64::MAX, 1.0),
            Some(bucket_upper(2))
        );
    }

    #[test]
    fn the_maximum_of_more_than_2_to_the_53_values_is_found() {
        let counts = |i| match i {
            0 => 1 << 53,
            5 => 1,
            _ => 0,
        };
        assert_eq!(quantile(counts, (1 << 53) + 1, 1.0), Some(5));
    }

    proptest! {
        /// The rank is `ceil(q × total)` exactly, checked in exact rational arithmetic:
        /// `q = m / 2^k` with `m < 2^53` (every f64 in [0, 1] is one).
        #[test]
        fn the_rank_is_exact(total in 1u64.., m in 0u64..=(1 << 53), k in 53u32..=200) {
            let q = (m as f64) / 2f64.powi(k as i32);
            prop_assume!(q <= 1.0);
            let product = u128::from(m) * u128::from(total);
            let ceil = if k >= 128 {
                u128::from(product > 0)
            } else {
                product.div_ceil(1 << k)
            };
            let want = u64::try_from(ceil).unwrap().clamp(1, total);
            prop_assert_eq!(rank(q, total), want);
        }

        #[test]
        fn a_value_is_within_its_bucket_and_the_bucket_is_tight(v in any::<u64>()) {
            let i = bucket_of(v);
            prop_assert!(v <= bucket_upper(i));
            if i > 0 {
                prop_assert!(v > bucket_upper(i - 1));
            }
            // Upper bound overestimates by at most 1/8.
            prop_assert!(bucket_upper(i) - v <= v / 8);
        }
    }
}
