//! A tiny seedable pseudo-random generator for jitter.
//!
//! Jitter needs speed and independence between callers, not cryptographic strength. SplitMix64
//! passes BigCrush, has a full 2^64 period, needs one `u64` of state and one multiply-xorshift
//! round per number, and every seed (including 0) is valid.

/// SplitMix64: a fast, seedable generator. The same seed always yields the same sequence.
///
/// ```
/// use tidewall_core::rng::SplitMix64;
///
/// let mut a = SplitMix64::new(7);
/// let mut b = SplitMix64::new(7);
/// assert_eq!(a.next_u64(), b.next_u64());
/// assert!(a.below_or_equal(10) <= 10);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose sequence is fully determined by `seed`.
    pub const fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniformly distributed value in `0..=max` (Lemire's multiply-high reduction; the bias is
    /// below 2^-64 per value, far below anything jitter can observe).
    pub fn below_or_equal(&mut self, max: u64) -> u64 {
        let Some(span) = max.checked_add(1) else {
            return self.next_u64();
        };
        let wide = u128::from(self.next_u64()) * u128::from(span);
        // The high half of a 64x64 product is always < span, so it fits in u64.
        u64::try_from(wide >> 64).unwrap_or(max)
    }

    /// A uniformly distributed value in `low..=high` (`high` is raised to `low` if smaller).
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        let high = high.max(low);
        low + self.below_or_equal(high - low)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_draws_stay_in_range_including_the_extremes() {
        let mut rng = SplitMix64::new(1);
        for max in [0, 1, 2, 1000, u64::MAX - 1, u64::MAX] {
            for _ in 0..1000 {
                assert!(rng.below_or_equal(max) <= max);
            }
        }
        assert_eq!(rng.between(5, 5), 5);
        assert_eq!(rng.between(9, 3), 9);
    }

    #[test]
    fn draws_cover_the_whole_small_range() {
        let mut rng = SplitMix64::new(99);
        let mut seen = [false; 4];
        for _ in 0..200 {
            seen[usize::try_from(rng.below_or_equal(3)).unwrap()] = true;
        }
        assert_eq!(seen, [true; 4]);
    }
}
