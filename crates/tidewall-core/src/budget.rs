//! Retry budget: retries may add at most a fixed share of the traffic, plus a floor.
//!
//! Every call *deposits* `ratio` of a retry; every retry *withdraws* one whole retry; the
//! balance of the last `window` (plus `min_per_second × window` retries) decides. All of it is
//! integer arithmetic in parts per million, so a 10 % budget over 100 calls grants exactly 10
//! retries, never 11 (tower's `TpsBudget` converted the percentage to an integer withdrawal
//! amount and over-granted for fractional percentages: tower issue #857).
//!
//! ```
//! use core::time::Duration;
//! use tidewall_core::budget::RetryBudgetPolicy;
//!
//! let budget = RetryBudgetPolicy::builder().ratio(0.1).min_per_second(0).build()?;
//! // 100 calls deposited, 9 retries already taken: one more is allowed, then no more.
//! assert!(budget.allows(100, 9));
//! assert!(!budget.allows(100, 10));
//! # Ok::<(), tidewall_core::ConfigError>(())
//! ```

use core::time::Duration;

use crate::breaker::MAX_BUCKETS;
use crate::gcra::{Names, Resolution, split};
use crate::{ConfigError, error::nanos_of};

const PPM: u64 = 1_000_000;

/// The most retries a window's floor may hold: whole retries in `u64` parts per million.
const MAX_FLOOR_RETRIES: u64 = u64::MAX / PPM;
const NANOS_PER_SEC: u128 = 1_000_000_000;

/// A validated retry-budget policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBudgetPolicy {
    ratio_ppm: u64,
    floor_ppm: u64,
    window: Duration,
    buckets: u32,
}

/// Builder for [`RetryBudgetPolicy`]: ratio 0.2, 10 retries per second of floor, a 10 s
/// window in 10 buckets (the defaults of Finagle and tower).
#[derive(Debug, Clone, Copy)]
pub struct RetryBudgetBuilder {
    ratio: f64,
    min_per_second: u32,
    window: Duration,
    buckets: u32,
}

impl RetryBudgetPolicy {
    /// Starts a budget with the defaults.
    pub fn builder() -> RetryBudgetBuilder {
        RetryBudgetBuilder {
            ratio: 0.2,
            min_per_second: 10,
            window: Duration::from_secs(10),
            buckets: 10,
        }
    }

    /// Whether one more retry fits, given the window's `deposits` (calls) and `withdrawals`
    /// (retries already granted).
    pub fn allows(&self, deposits: u64, withdrawals: u64) -> bool {
        let credit = u128::from(self.floor_ppm) + u128::from(deposits) * u128::from(self.ratio_ppm);
        credit >= (u128::from(withdrawals) + 1) * u128::from(PPM)
    }

    /// How many more retries fit, given the window's `deposits` and `withdrawals`: the
    /// largest `n` for which [`allows`](Self::allows) holds after `n - 1` more withdrawals
    /// (zero when none does; `u64::MAX` when more fit), for a gauge of the budget's balance.
    ///
    /// ```
    /// use tidewall_core::budget::RetryBudgetPolicy;
    ///
    /// let budget = RetryBudgetPolicy::builder().ratio(0.1).min_per_second(0).build()?;
    /// assert_eq!(budget.balance(100, 7), 3);
    /// assert_eq!(budget.balance(100, 12), 0, "overdrawn by a shrunken ratio: none left");
    /// # Ok::<(), tidewall_core::ConfigError>(())
    /// ```
    pub fn balance(&self, deposits: u64, withdrawals: u64) -> u64 {
        let credit = u128::from(self.floor_ppm) + u128::from(deposits) * u128::from(self.ratio_ppm);
        let whole = credit / u128::from(PPM);
        u64::try_from(whole.saturating_sub(u128::from(withdrawals))).unwrap_or(u64::MAX)
    }

    /// The window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Buckets in the window.
    pub fn buckets(&self) -> u32 {
        self.buckets
    }

    /// Retries granted per call, in parts per million.
    pub fn ratio_ppm(&self) -> u64 {
        self.ratio_ppm
    }
}

impl RetryBudgetBuilder {
    /// Retries allowed per call, e.g. `0.1` for 10 %: zero, or from 0.000001 to 1000. It is
    /// kept in whole parts per million (rounded to the nearest), so a ratio under one part
    /// per million is refused rather than silently made zero.
    #[must_use]
    pub fn ratio(mut self, ratio: f64) -> Self {
        self.ratio = ratio;
        self
    }

    /// Retries allowed per second whatever the traffic (so a quiet service can still retry).
    #[must_use]
    pub fn min_per_second(mut self, n: u32) -> Self {
        self.min_per_second = n;
        self
    }

    /// How long a deposit counts (default 10 s), in whole buckets: a deposit counts until
    /// `window` after the start of its bucket (`window / buckets` long), so for between
    /// `window − window / buckets` and `window` after it was made.
    #[must_use]
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Buckets the window slides by (default 10, at most [`MAX_BUCKETS`]: each is an atomic
    /// allocated up front). Each lasts `window / buckets` rounded down to whole nanoseconds,
    /// which must keep the window within 0.1 % of `window`.
    #[must_use]
    pub fn buckets(mut self, buckets: u32) -> Self {
        self.buckets = buckets;
        self
    }

    /// Validates.
    ///
    /// # Errors
    ///
    /// A NaN, negative, larger-than-1000 or nonzero-but-under-0.000001 ratio, a zero window
    /// or bucket count, more than [`MAX_BUCKETS`] buckets, a window shorter than one
    /// nanosecond per bucket or not within 0.1 % of a whole number of nanoseconds per
    /// bucket, or one that overflows; `OutOfRange` on `min_per_second` when the floor's
    /// retries a window (`min_per_second × window`) pass 18,446,744,073,709 (they are kept in
    /// `u64` parts per million).
    pub fn build(self) -> Result<RetryBudgetPolicy, ConfigError> {
        if !self.ratio.is_finite() {
            return Err(ConfigError::NotFinite { field: "ratio" });
        }
        if !(self.ratio == 0.0 || (1e-6..=1000.0).contains(&self.ratio)) {
            return Err(ConfigError::OutOfRange {
                field: "ratio",
                value: self.ratio,
                allowed: "0, or in [0.000001, 1000] (kept in parts per million)",
            });
        }
        if self.buckets == 0 {
            return Err(ConfigError::Zero { field: "buckets" });
        }
        if self.buckets > MAX_BUCKETS {
            return Err(ConfigError::OutOfRange {
                field: "buckets",
                value: f64::from(self.buckets),
                allowed: "<= 1024",
            });
        }
        let window = nanos_of("window", self.window)?;
        if window == 0 {
            return Err(ConfigError::Zero { field: "window" });
        }
        if window < u64::from(self.buckets) {
            return Err(ConfigError::OutOfRange {
                field: "window",
                value: self.window.as_secs_f64(),
                allowed: "at least one nanosecond per bucket",
            });
        }
        let names = Names {
            count: "buckets",
            period: "window",
            allowed: "such that window / buckets is within 0.1 % above a whole number of ns",
        };
        split(self.buckets, self.window, Resolution::Nanos, &names)?;
        // In {0} ∪ [1, 1e9] after the range check, so the conversion is exact to the ppm.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let ratio_ppm = (self.ratio * 1e6 + 0.5) as u64;
        let floor =
            u128::from(self.min_per_second) * u128::from(window) * u128::from(PPM) / NANOS_PER_SEC;
        // The floor is kept in u64 parts per million of a retry: at most 18,446,744,073,709
        // retries a window. The rate is what is too high for the window, not the window.
        let floor_ppm = u64::try_from(floor)
            .ok()
            .filter(|&floor| floor <= MAX_FLOOR_RETRIES * PPM)
            .ok_or(ConfigError::OutOfRange {
                field: "min_per_second",
                value: f64::from(self.min_per_second),
                allowed: "such that min_per_second × window is at most 18,446,744,073,709 retries",
            })?;
        Ok(RetryBudgetPolicy {
            ratio_ppm,
            floor_ppm,
            window: self.window,
            buckets: self.buckets,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn fractional_percentages_are_exact() {
        // tower #857: TpsBudget truncates 1/ratio, so 0.4 grants 0.5 per call and 0.7 grants 1.
        for (ratio, calls, expected) in [
            (0.3, 10, 3),
            (0.4, 10, 4),
            (0.7, 10, 7),
            (0.9, 100, 90),
            (0.1, 100, 10),
            (0.2, 10, 2),
            (0.25, 7, 1),
            (0.333, 1000, 333),
            (1.5, 4, 6),
        ] {
            let b = RetryBudgetPolicy::builder()
                .ratio(ratio)
                .min_per_second(0)
                .build()
                .unwrap();
            let granted = (0..).take_while(|&w| b.allows(calls, w)).count();
            assert_eq!(granted, expected, "ratio {ratio} over {calls} calls");
        }
    }

    #[test]
    fn the_floor_grants_retries_without_traffic() {
        let b = RetryBudgetPolicy::builder()
            .ratio(0.0)
            .min_per_second(3)
            .window(Duration::from_secs(10))
            .build()
            .unwrap();
        assert!(b.allows(0, 29));
        assert!(!b.allows(0, 30));
    }

    #[test]
    fn rejects_bad_input() {
        let b = RetryBudgetPolicy::builder;
        assert!(matches!(
            b().ratio(f64::NAN).build(),
            Err(ConfigError::NotFinite { .. })
        ));
        assert!(matches!(
            b().ratio(-0.1).build(),
            Err(ConfigError::OutOfRange { .. })
        ));
        assert_eq!(
            b().buckets(0).build(),
            Err(ConfigError::Zero { field: "buckets" })
        );
        assert_eq!(
            b().window(Duration::ZERO).build(),
            Err(ConfigError::Zero { field: "window" })
        );
        assert!(matches!(
            b().buckets(10).window(Duration::from_nanos(9)).build(),
            Err(ConfigError::OutOfRange {
                field: "window",
                ..
            })
        ));
        assert_eq!(
            b().window(Duration::MAX).build(),
            Err(ConfigError::DurationOverflow { field: "window" })
        );
        // A window that fits, with a floor whose retries a window do not: the rate is named.
        let year = Duration::from_secs(365 * 24 * 3600);
        assert!(matches!(
            b().window(year).min_per_second(u32::MAX).build(),
            Err(ConfigError::OutOfRange {
                field: "min_per_second",
                ..
            })
        ));
        assert!(b().window(year).min_per_second(500_000).build().is_ok());
        // The documented bound is whole retries: 18,446,744,073,709.55 of them is past it.
        let longest = Duration::from_nanos(u64::MAX);
        assert!(matches!(
            b().window(longest).min_per_second(1000).build(),
            Err(ConfigError::OutOfRange {
                field: "min_per_second",
                ..
            })
        ));
        assert!(b().window(longest).min_per_second(999).build().is_ok());
    }

    #[test]
    fn buckets_are_bounded_like_the_breakers() {
        let b = RetryBudgetPolicy::builder;
        assert_eq!(
            b().buckets(MAX_BUCKETS).build().map(|p| p.buckets()),
            Ok(1024)
        );
        // u32::MAX buckets used to build, and the budget then allocated that many atomics.
        for buckets in [MAX_BUCKETS + 1, u32::MAX] {
            assert!(matches!(
                b().buckets(buckets).build(),
                Err(ConfigError::OutOfRange {
                    field: "buckets",
                    ..
                })
            ));
        }
    }

    #[test]
    fn bucket_lengths_and_ratios_are_faithful_or_refused() {
        let b = RetryBudgetPolicy::builder;
        // 1024 ns in 1000 buckets would be 1000 buckets of 1 ns: a window 2.3 % short.
        assert!(matches!(
            b().window(Duration::from_nanos(1_024))
                .buckets(1_000)
                .build(),
            Err(ConfigError::OutOfRange {
                field: "buckets",
                ..
            })
        ));
        // 10 s in 3 buckets is 3.333… s each: 1 ns short of the window, within 0.1 %.
        assert!(
            b().window(Duration::from_secs(10))
                .buckets(3)
                .build()
                .is_ok()
        );
        // A ratio under one part per million used to round to zero retries.
        assert!(matches!(
            b().ratio(4e-7).build(),
            Err(ConfigError::OutOfRange { field: "ratio", .. })
        ));
        assert_eq!(b().ratio(1e-6).build().map(|p| p.ratio_ppm()), Ok(1));
        assert_eq!(b().ratio(0.0).build().map(|p| p.ratio_ppm()), Ok(0));
    }

    proptest! {
        /// Granted retries never exceed floor + ratio × calls, and reach it to within one.
        #[test]
        fn grants_are_floor_of_the_exact_credit(ratio_permille in 0u32..2000, calls in 0u64..10_000, floor in 0u32..5) {
            let ratio = f64::from(ratio_permille) / 1000.0;
            let b = RetryBudgetPolicy::builder().ratio(ratio).min_per_second(floor).window(Duration::from_secs(1)).build().unwrap();
            let exact = (u64::from(floor) * 1000 + calls * u64::from(ratio_permille)) / 1000;
            prop_assert!(b.allows(calls, exact.saturating_sub(1)) || exact == 0);
            prop_assert!(!b.allows(calls, exact));
        }

        /// The balance is the number of withdrawals `allows` still grants, over every count
        /// up to the type's limit.
        #[test]
        fn balance_counts_exactly_what_allows_grants(
            ratio_permille in 0u32..1_000_000,
            floor in prop_oneof![Just(0u32), Just(u32::MAX), any::<u32>()],
            deposits in prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()],
            withdrawals in prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()],
        ) {
            let ratio = f64::from(ratio_permille) / 1000.0;
            let Ok(b) = RetryBudgetPolicy::builder().ratio(ratio).min_per_second(floor).build() else {
                return Ok(()); // refused policies count nothing
            };
            let balance = b.balance(deposits, withdrawals);
            if balance == 0 {
                prop_assert!(!b.allows(deposits, withdrawals));
            } else {
                // The last granted withdrawal; past u64::MAX nobody can withdraw anyway.
                if let Some(last) = withdrawals.checked_add(balance - 1) {
                    prop_assert!(b.allows(deposits, last));
                }
                if balance < u64::MAX {
                    prop_assert!(withdrawals.checked_add(balance).is_none_or(|w| !b.allows(deposits, w)));
                }
            }
        }
    }
}
