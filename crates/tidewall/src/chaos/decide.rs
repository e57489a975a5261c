//! The engine: rates kept as integers, validated once, and the pure decision for call `n`.

use std::time::Duration;

use tidewall_core::rng::SplitMix64;

use crate::ConfigError;

/// Parts per million: the unit every rate is kept in.
pub(super) const PPM: u32 = 1_000_000;

/// The settings in force, as kept: what the builder and the setters validate, and what each
/// decision reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Rates {
    pub(super) enabled: bool,
    pub(super) latency_ppm: u32,
    pub(super) latency_nanos: u64,
    pub(super) error_ppm: u32,
    pub(super) hang_ppm: u32,
    pub(super) alter_ppm: u32,
}

/// 20 bits hold a rate: 10^6 < 2^20.
const FIELD: u32 = 20;
const MASK: u64 = (1 << FIELD) - 1;
const ENABLED: u64 = 1 << 63;

impl Rates {
    /// Whether a call can be given anything: enabled, with some rate above zero. A call
    /// through a handle that is not armed costs one load and draws no number.
    pub(super) fn armed(&self) -> bool {
        self.enabled && (self.latency_ppm | self.error_ppm | self.hang_ppm | self.alter_ppm) != 0
    }

    /// Refuses exclusive outcomes that sum past certainty. Checked on the integers kept, so
    /// `0.33 + 0.56 + 0.11` (1.0000000000000002 in `f64`) is exactly 1 and accepted.
    pub(super) fn check_sum(&self) -> Result<(), ConfigError> {
        // Each is at most 10^6 (validated), so the sum fits a u32.
        if self.error_ppm + self.hang_ppm + self.alter_ppm > PPM {
            return Err(ConfigError::Conflict {
                reason: "the error, hang and alter rates sum to more than 1 \
                         (they are exclusive outcomes of one call)",
            });
        }
        Ok(())
    }

    /// The three words a [`Tuning`](crate::sync::Tuning) publishes: the exclusive rates
    /// and the switch, the latency's rate, the latency's length.
    pub(super) fn words(&self) -> [u64; 3] {
        let exclusive = u64::from(self.error_ppm)
            | u64::from(self.hang_ppm) << FIELD
            | u64::from(self.alter_ppm) << (2 * FIELD)
            | if self.enabled { ENABLED } else { 0 };
        [exclusive, u64::from(self.latency_ppm), self.latency_nanos]
    }

    /// The settings [`words`](Self::words) published.
    pub(super) fn from_words([exclusive, latency_ppm, latency_nanos]: [u64; 3]) -> Self {
        // Every field was at most 10^6 when packed, so each fits its u32.
        let field = |shift: u32| u32::try_from((exclusive >> shift) & MASK).unwrap_or(PPM);
        Self {
            enabled: exclusive & ENABLED != 0,
            latency_ppm: u32::try_from(latency_ppm).unwrap_or(PPM),
            latency_nanos,
            error_ppm: field(0),
            hang_ppm: field(FIELD),
            alter_ppm: field(2 * FIELD),
        }
    }

    /// What call number `n` gets under these settings, from a stream keyed by `key` (the
    /// seed, hashed): see [`Chaos`](super::Chaos) for the exact rule.
    pub(super) fn decide(&self, key: u64, n: u64) -> Injection {
        if !self.armed() {
            return Injection::NONE;
        }
        let (exclusive, latency) = draws(key, n);
        let fault = if exclusive < self.error_ppm {
            Some(Fault::Error)
        } else if exclusive < self.error_ppm + self.hang_ppm {
            Some(Fault::Hang)
        } else if exclusive < self.error_ppm + self.hang_ppm + self.alter_ppm {
            Some(Fault::Alter)
        } else {
            None
        };
        let latency =
            (latency < self.latency_ppm).then(|| Duration::from_nanos(self.latency_nanos));
        Injection { latency, fault }
    }
}

/// The stream key of `seed`: its first SplitMix64 output, so that nearby seeds (0, 1, 2)
/// start far apart in the sequence rather than one step from each other.
pub(super) fn key_of(seed: u64) -> u64 {
    SplitMix64::new(seed).next_u64()
}

/// The two uniform draws in `0..10^6` for call `n`: outputs `2n + 1` and `2n + 2` of
/// SplitMix64 started at `key` (its state after `2n` steps is `key + 2n·γ`, so no call waits
/// for another's draws and every call has its own pair).
fn draws(key: u64, n: u64) -> (u32, u32) {
    const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut rng = SplitMix64::new(key.wrapping_add(n.wrapping_mul(GAMMA.wrapping_mul(2))));
    let mut draw = || {
        // `below_or_equal(10^6 - 1)` is in range, so the conversion never fails.
        u32::try_from(rng.below_or_equal(u64::from(PPM - 1))).unwrap_or(0)
    };
    let exclusive = draw();
    (exclusive, draw())
}

/// `rate` as kept: 0, or a rate in [0.000001, 1] rounded to the nearest part per million.
///
/// Rates below one part per million (other than 0) are refused rather than rounded to 0 or
/// raised to 10^-6: either would silently inject at a rate other than the one asked for.
pub(super) fn rate_ppm(field: &'static str, rate: f64) -> Result<u32, ConfigError> {
    if !rate.is_finite() {
        return Err(ConfigError::NotFinite { field });
    }
    if !(rate == 0.0 || (1e-6..=1.0).contains(&rate)) {
        return Err(ConfigError::OutOfRange {
            field,
            value: rate,
            allowed: "0, or in [0.000001, 1] (kept in parts per million)",
        });
    }
    // In {0} ∪ [1, 10^6] once scaled, so the conversion is exact to the part per million.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let ppm = (rate * f64::from(PPM) + 0.5) as u32;
    Ok(ppm)
}

/// A latency as kept: nanoseconds, with a rate above zero needing a length above zero.
pub(super) fn latency_nanos(ppm: u32, latency: Duration) -> Result<u64, ConfigError> {
    if ppm > 0 && latency.is_zero() {
        return Err(ConfigError::Zero { field: "latency" });
    }
    u64::try_from(latency.as_nanos())
        .map_err(|_| ConfigError::DurationOverflow { field: "latency" })
}

/// A rate as the settings report it: the parts per million kept, as a fraction.
pub(super) fn rate_of(ppm: u32) -> f64 {
    f64::from(ppm) / f64::from(PPM)
}

/// What one call is given: an optional delay before it, and an optional fault.
///
/// Latency is drawn independently of the fault, so a call may get both: a delay and then an
/// error (a slow failure), a delay and then a hang, or a delay and then an altered outcome.
///
/// ```
/// use std::time::Duration;
/// use tidewall::chaos::{Chaos, Fault};
///
/// let chaos = Chaos::builder().seed(7).error(1.0).latency(1.0, Duration::from_millis(5)).build()?;
/// let injection = chaos.decide_nth(0);
/// assert_eq!(injection.fault, Some(Fault::Error));
/// assert_eq!(injection.latency, Some(Duration::from_millis(5)));
/// assert!(!injection.is_none());
/// # Ok::<(), tidewall::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct Injection {
    /// How long the call is held before it goes on (or fails, or hangs).
    pub latency: Option<Duration>,
    /// The fault the call gets after its latency, if any.
    pub fault: Option<Fault>,
}

impl Injection {
    /// Nothing: the call runs as it would without chaos.
    pub const NONE: Self = Self {
        latency: None,
        fault: None,
    };

    /// Whether nothing is injected.
    ///
    /// ```
    /// use tidewall::chaos::Injection;
    ///
    /// assert!(Injection::NONE.is_none());
    /// ```
    pub const fn is_none(&self) -> bool {
        self.latency.is_none() && self.fault.is_none()
    }
}

/// The exclusive outcomes a call can be given (at most one per call).
///
/// ```
/// use tidewall::chaos::Fault;
///
/// assert_eq!(Fault::Alter.as_str(), "alter");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Fault {
    /// The call fails with [`InjectedFault::Error`](super::InjectedFault::Error) without
    /// running the operation.
    Error,
    /// The call never completes (until it is dropped: a deadline or a timeout); the operation
    /// is not run.
    Hang,
    /// The operation runs; if it succeeds, its value is dropped and the call fails with
    /// [`InjectedFault::Altered`](super::InjectedFault::Altered). Its own errors pass through.
    Alter,
}

impl Fault {
    /// A stable name, as the `fault` label of the injection counter: `error`, `hang`, `alter`.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Hang => "hang",
            Self::Alter => "alter",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_at_the_extremes() {
        for rates in [
            Rates {
                enabled: true,
                latency_ppm: 0,
                latency_nanos: 0,
                error_ppm: 0,
                hang_ppm: 0,
                alter_ppm: 0,
            },
            Rates {
                enabled: false,
                latency_ppm: PPM,
                latency_nanos: u64::MAX,
                error_ppm: PPM,
                hang_ppm: 0,
                alter_ppm: 0,
            },
            Rates {
                enabled: true,
                latency_ppm: 1,
                latency_nanos: 1,
                error_ppm: 333_333,
                hang_ppm: 333_333,
                alter_ppm: 333_334,
            },
        ] {
            assert_eq!(Rates::from_words(rates.words()), rates);
        }
    }

    #[test]
    fn rates_round_to_the_nearest_part_per_million() {
        assert_eq!(rate_ppm("r", 0.0), Ok(0));
        assert_eq!(rate_ppm("r", -0.0), Ok(0));
        assert_eq!(rate_ppm("r", 1e-6), Ok(1));
        assert_eq!(rate_ppm("r", 0.000_001_4), Ok(1));
        assert_eq!(rate_ppm("r", 0.000_001_6), Ok(2));
        assert_eq!(rate_ppm("r", 0.1), Ok(100_000));
        assert_eq!(rate_ppm("r", 1.0), Ok(PPM));
        assert!(rate_ppm("r", 9e-7).is_err());
        assert!(rate_ppm("r", 1.000_000_1).is_err());
    }

    #[test]
    fn the_draws_are_uniform_enough_over_the_whole_range() {
        // Every tenth of the range gets its share of 100_000 draws, within 5 % of it.
        let mut tenths = [0u32; 10];
        for n in 0..50_000 {
            let (a, b) = draws(key_of(3), n);
            tenths[usize::try_from(a / 100_000).unwrap()] += 1;
            tenths[usize::try_from(b / 100_000).unwrap()] += 1;
        }
        for count in tenths {
            assert!((9_500..=10_500).contains(&count), "{tenths:?}");
        }
    }
}
