//! Validating builder for [`BreakerPolicy`].

use core::time::Duration;

use super::{BreakerPolicy, PPM, Window};
use crate::backoff::{Backoff, Jitter};
use crate::gcra::{Names, Resolution, split};
use crate::{ConfigError, error::nanos_of};

/// The largest count window: its totals are packed in 21-bit fields.
pub const MAX_COUNT_WINDOW: u32 = (1 << 20) - 1;
/// The most buckets a time window may have.
pub const MAX_BUCKETS: u32 = 1024;
/// The most half-open probes: probe counts are packed in 12-bit fields of the state word.
pub const MAX_HALF_OPEN_PROBES: u32 = 4095;
/// How long a breaker stays open when its builder is not told
/// ([`break_duration`](BreakerPolicyBuilder::break_duration)).
pub const DEFAULT_BREAK_DURATION: Duration = Duration::from_secs(5);

/// Builder for [`BreakerPolicy`]; every setter is checked in [`build`](Self::build).
#[derive(Debug, Clone)]
pub struct BreakerPolicyBuilder {
    failure_rate: Option<f64>,
    slow_rate: Option<f64>,
    slow_call: Duration,
    consecutive_failures: Option<u32>,
    minimum_calls: u32,
    window: Window,
    break_duration: Duration,
    break_backoff: Option<Backoff>,
    half_open_probes: u32,
    max_half_open_wait: Option<Duration>,
}

impl Default for BreakerPolicyBuilder {
    fn default() -> Self {
        Self {
            failure_rate: Some(0.5),
            slow_rate: None,
            slow_call: Duration::from_secs(1),
            consecutive_failures: None,
            minimum_calls: 10,
            window: Window::Count { calls: 100 },
            break_duration: DEFAULT_BREAK_DURATION,
            break_backoff: None,
            half_open_probes: 1,
            max_half_open_wait: Some(Duration::from_secs(60)),
        }
    }
}

impl BreakerPolicyBuilder {
    /// Trip when at least this share of the window's calls failed, in [0.000001, 1]; it is
    /// kept in whole parts per million (rounded to the nearest).
    #[must_use]
    pub fn failure_rate(mut self, rate: f64) -> Self {
        self.failure_rate = Some(rate);
        self
    }

    /// Do not trip on the failure rate (use slow calls or consecutive failures instead).
    #[must_use]
    pub fn no_failure_rate(mut self) -> Self {
        self.failure_rate = None;
        self
    }

    /// Trip when at least `rate` (in [0.000001, 1], kept in whole parts per million) of the
    /// window's calls took `threshold` or longer.
    #[must_use]
    pub fn slow_call_rate(mut self, rate: f64, threshold: Duration) -> Self {
        self.slow_rate = Some(rate);
        self.slow_call = threshold;
        self
    }

    /// Trip after `n` failures in a row, whatever the window says.
    #[must_use]
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.consecutive_failures = Some(n);
        self
    }

    /// Rates count only once the window holds this many calls (without consecutive
    /// failures, at most what the window can hold: its calls, or 65,535 per time bucket).
    /// A time bucket that fills halves its counts ([`Window::Time`]), so under load it holds
    /// 32,768 calls or more, but not always 65,535: to be sure to be reached, keep the
    /// minimum at most 32,768 per bucket.
    #[must_use]
    pub fn minimum_calls(mut self, n: u32) -> Self {
        self.minimum_calls = n;
        self
    }

    /// The sliding window. A time window's buckets last `span / buckets` rounded down to whole
    /// nanoseconds, which must keep the window within 0.1 % of `span`.
    #[must_use]
    pub fn window(mut self, window: Window) -> Self {
        self.window = window;
        self
    }

    /// Stay open this long after every trip.
    #[must_use]
    pub fn break_duration(mut self, duration: Duration) -> Self {
        self.break_duration = duration;
        self.break_backoff = None;
        self
    }

    /// Stay open longer on repeated trips: the k-th trip in a row (without a successful
    /// close in between) stays open for the k-th delay of `backoff`, jitter included. Past
    /// the schedule's end (its `max_attempts` or `max_elapsed`) every trip stays open for its
    /// last delay, and a schedule that gives none at all (`max_attempts(1)`, or a
    /// `max_elapsed` shorter than its first delay) holds at its `max_delay` from the first
    /// trip, as [`Backoff::next_delay_held`] does. A schedule that starts at zero (or is
    /// capped at zero) is refused at `build`, as a zero
    /// [`break_duration`](Self::break_duration) is.
    #[must_use]
    pub fn break_backoff(mut self, backoff: Backoff) -> Self {
        self.break_backoff = Some(backoff);
        self
    }

    /// Probes admitted while half-open; that many successes close the breaker, one failure
    /// reopens it.
    #[must_use]
    pub fn half_open_probes(mut self, n: u32) -> Self {
        self.half_open_probes = n;
        self
    }

    /// Reopen a half-open breaker whose probes have not all finished `wait` after the first of
    /// them started (default 60 s; `None`: wait forever for them, which a hung probe turns
    /// into a stuck breaker). A half-open breaker with no probe in flight (none taken yet, or
    /// every one given back) never times out, however long it stays idle.
    #[must_use]
    pub fn max_half_open_wait(mut self, wait: Option<Duration>) -> Self {
        self.max_half_open_wait = wait;
        self
    }

    /// Validates the configuration.
    ///
    /// # Errors
    ///
    /// Rates outside [0.000001, 1] or NaN, a zero or oversized window (more than
    /// [`MAX_COUNT_WINDOW`] calls or [`MAX_BUCKETS`] buckets), a time window whose span is
    /// not within 0.1 % of a whole number of nanoseconds per bucket, more than
    /// [`MAX_HALF_OPEN_PROBES`] or zero probes, a zero break duration or break schedule,
    /// durations that overflow, and a policy that can never trip ([`ConfigError::Conflict`]).
    pub fn build(self) -> Result<BreakerPolicy, ConfigError> {
        let failure_rate_ppm = self
            .failure_rate
            .map(|r| ratio_ppm("failure_rate", r))
            .transpose()?;
        let slow_rate_ppm = self
            .slow_rate
            .map(|r| ratio_ppm("slow_call_rate", r))
            .transpose()?;
        if slow_rate_ppm.is_some() && self.slow_call.is_zero() {
            return Err(ConfigError::Zero {
                field: "slow_call_threshold",
            });
        }
        nanos_of("slow_call_threshold", self.slow_call)?;
        if self.consecutive_failures == Some(0) {
            return Err(ConfigError::Zero {
                field: "consecutive_failures",
            });
        }
        if failure_rate_ppm.is_none()
            && slow_rate_ppm.is_none()
            && self.consecutive_failures.is_none()
        {
            return Err(ConfigError::Conflict {
                reason: "no trip condition: set a failure rate, a slow-call rate or consecutive failures",
            });
        }
        validate_window(self.window)?;
        if let Window::Count { calls } = self.window
            && self.minimum_calls > calls
            && self.consecutive_failures.is_none()
        {
            return Err(ConfigError::Conflict {
                reason: "minimum_calls exceeds the count window: the rates could never trip",
            });
        }
        if let Window::Time { buckets, .. } = self.window
            && u64::from(self.minimum_calls) > u64::from(buckets) * max_calls_per_bucket()
            && self.consecutive_failures.is_none()
        {
            return Err(ConfigError::Conflict {
                reason: "minimum_calls exceeds what the time window's buckets can count: the rates could never trip",
            });
        }
        if self.half_open_probes == 0 {
            return Err(ConfigError::Zero {
                field: "half_open_probes",
            });
        }
        if self.half_open_probes > MAX_HALF_OPEN_PROBES {
            return Err(ConfigError::OutOfRange {
                field: "half_open_probes",
                value: f64::from(self.half_open_probes),
                allowed: "<= 4095",
            });
        }
        if let Some(wait) = self.max_half_open_wait {
            if wait.is_zero() {
                return Err(ConfigError::Zero {
                    field: "max_half_open_wait",
                });
            }
            nanos_of("max_half_open_wait", wait)?;
        }
        let break_backoff = match self.break_backoff {
            // A break of zero is refused however it is written (jitter may still draw one
            // short: that is the jitter asked for).
            Some(backoff)
                if backoff.first_raw_delay().is_zero() || backoff.max_delay_cap().is_zero() =>
            {
                return Err(ConfigError::Zero {
                    field: "break_backoff",
                });
            }
            Some(backoff) => backoff,
            None => {
                if self.break_duration.is_zero() {
                    return Err(ConfigError::Zero {
                        field: "break_duration",
                    });
                }
                nanos_of("break_duration", self.break_duration)?;
                Backoff::constant(self.break_duration)
                    .jitter(Jitter::None)
                    .max_delay(self.break_duration)
                    .build()?
            }
        };
        Ok(BreakerPolicy {
            thresholds: super::Thresholds {
                failure_rate_ppm,
                slow_rate_ppm,
                slow_call: self.slow_call,
                consecutive_failures: self.consecutive_failures,
                minimum_calls: self.minimum_calls,
            },
            window: self.window,
            break_backoff,
            half_open_probes: self.half_open_probes,
            max_half_open_wait: self.max_half_open_wait,
        })
    }
}

/// The most calls one time-window bucket counts (its calls field, all ones).
fn max_calls_per_bucket() -> u64 {
    super::window::Bucket::BREAKER.field(u64::MAX, 0)
}

fn validate_window(window: Window) -> Result<(), ConfigError> {
    match window {
        Window::Count { calls: 0 } => Err(ConfigError::Zero {
            field: "window.calls",
        }),
        Window::Count { calls } if calls > MAX_COUNT_WINDOW => Err(ConfigError::OutOfRange {
            field: "window.calls",
            value: f64::from(calls),
            allowed: "<= 1048575",
        }),
        Window::Count { .. } => Ok(()),
        Window::Time { buckets: 0, .. } => Err(ConfigError::Zero {
            field: "window.buckets",
        }),
        Window::Time { buckets, .. } if buckets > MAX_BUCKETS => Err(ConfigError::OutOfRange {
            field: "window.buckets",
            value: f64::from(buckets),
            allowed: "<= 1024",
        }),
        Window::Time { span, buckets } => {
            let nanos = nanos_of("window.span", span)?;
            if nanos == 0 {
                return Err(ConfigError::Zero {
                    field: "window.span",
                });
            }
            if nanos < u64::from(buckets) {
                return Err(ConfigError::OutOfRange {
                    field: "window.span",
                    value: span.as_secs_f64(),
                    allowed: "at least one nanosecond per bucket",
                });
            }
            // Buckets last a whole number of nanoseconds: the window they add up to must be
            // the span asked for, to within 0.1 % (the rule every limiter's interval follows).
            let names = Names {
                count: "window.buckets",
                period: "window.span",
                allowed: "such that window.span / buckets is within 0.1 % above a whole number of ns",
            };
            split(buckets, span, Resolution::Nanos, &names).map(drop)
        }
    }
}

/// A ratio in [0.000001, 1] as parts per million, rounded to the nearest part.
///
/// Ratios below one part per million are refused rather than raised to it (a 1e-9 threshold
/// silently becoming 1e-6 would trip a thousand times later than asked).
pub(crate) fn ratio_ppm(field: &'static str, ratio: f64) -> Result<u32, ConfigError> {
    if !ratio.is_finite() {
        return Err(ConfigError::NotFinite { field });
    }
    if !(MIN_RATIO..=1.0).contains(&ratio) {
        return Err(ConfigError::OutOfRange {
            field,
            value: ratio,
            allowed: "in [0.000001, 1] (kept in parts per million)",
        });
    }
    // In range [1e-6, 1], so the product is in [1, 1e6] and the conversion is exact enough.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let ppm = (ratio * f64::from(PPM) + 0.5) as u32;
    Ok(ppm)
}

/// The smallest rate threshold: one part per million.
const MIN_RATIO: f64 = 1e-6;

#[cfg(test)]
mod tests {
    use core::time::Duration;

    use super::*;

    #[test]
    fn a_time_window_is_the_span_asked_for_or_refused() {
        let with = |span, buckets| {
            BreakerPolicyBuilder::default()
                .window(Window::Time { span, buckets })
                .build()
        };
        // 2047 ns in 1024 buckets would be buckets of 1 ns: a window of 1024 ns, half the span.
        assert!(matches!(
            with(Duration::from_nanos(2_047), 1024),
            Err(ConfigError::OutOfRange {
                field: "window.buckets",
                ..
            })
        ));
        // 1 s in 3 buckets loses 1 ns of 1 s: faithful.
        assert!(with(Duration::from_secs(1), 3).is_ok());
        assert!(with(Duration::from_nanos(u64::MAX), MAX_BUCKETS).is_ok());
    }

    #[test]
    fn a_minimum_no_time_window_can_count_is_a_conflict() {
        let window = Window::Time {
            span: Duration::from_secs(1),
            buckets: 2,
        };
        let with = |minimum| {
            BreakerPolicyBuilder::default()
                .window(window)
                .minimum_calls(minimum)
        };
        assert!(with(2 * 65_535).build().is_ok());
        for minimum in [2 * 65_535 + 1, u32::MAX] {
            assert!(matches!(
                with(minimum).build(),
                Err(ConfigError::Conflict { .. })
            ));
            // Consecutive failures can still trip it.
            assert!(with(minimum).consecutive_failures(3).build().is_ok());
        }
    }

    #[test]
    fn a_rate_under_one_part_per_million_is_refused_not_raised() {
        let b = BreakerPolicyBuilder::default;
        for rate in [1e-9, 4e-7, f64::MIN_POSITIVE] {
            assert!(matches!(
                b().failure_rate(rate).build(),
                Err(ConfigError::OutOfRange {
                    field: "failure_rate",
                    ..
                })
            ));
            assert!(matches!(
                b().slow_call_rate(rate, Duration::from_secs(1)).build(),
                Err(ConfigError::OutOfRange {
                    field: "slow_call_rate",
                    ..
                })
            ));
        }
        assert_eq!(ratio_ppm("r", 1e-6), Ok(1));
        assert_eq!(ratio_ppm("r", 1.0), Ok(1_000_000));
    }
}
