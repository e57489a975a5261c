//! The generic cell rate algorithm (GCRA): the math behind every Tidewall rate limiter.
//!
//! A limit is `count` cells per `period` with a `burst`. The whole state of one limit is a
//! single `u64`, the *theoretical arrival time* (TAT) in nanoseconds on the caller's clock, so
//! the async limiter can keep it in one atomic and the Redis limiter in one key.
//!
//! **Burst, in one sentence:** a limiter that has been idle for at least `burst` emission
//! intervals admits `burst` cells at once, and from then on one cell per emission interval
//! (`period / count`), so over any span `d` starting from rest it admits at most
//! `burst + floor(d / interval)` cells.
//!
//! A TAT at or before `now` means "fully rested", exactly like a key never seen: a keyed limiter
//! may forget such a key and nobody can tell the difference.
//!
//! **The end of time:** the TAT cannot pass `u64::MAX` nanoseconds (584 years after the
//! clock's origin). Within `burst` intervals of it a limit admits fewer cells, in the last
//! interval none at all, fresh or not: [`decide`](Gcra::decide) then answers
//! [`Denied::Wait`] with a wait that no later call can end, and
//! [`available`](Gcra::available) counts only what fits.
//!
//! ```
//! use core::time::Duration;
//! use tidewall_core::gcra::{Gcra, Denied};
//!
//! // 10 per second, bursts of 3.
//! let gcra = Gcra::new(10, Duration::from_secs(1), 3)?;
//! let mut tat = 0;
//! for _ in 0..3 {
//!     tat = gcra.decide(tat, 0, 1).unwrap();
//! }
//! // The fourth cell at t = 0 must wait one interval (100 ms).
//! assert_eq!(gcra.decide(tat, 0, 1), Err(Denied::Wait { nanos: 100_000_000 }));
//! # Ok::<(), tidewall_core::ConfigError>(())
//! ```

mod interval;

use core::time::Duration;

pub(crate) use interval::{Names, split};
pub use interval::{Resolution, emission_interval};

use crate::ConfigError;

/// One rate limit: an emission interval and a burst, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    interval: u64,
    burst: u32,
    /// `burst * interval`: how far ahead of `now` the TAT may run.
    horizon: u64,
}

/// Why a request for cells was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Denied {
    /// Not now; the same request is admitted after waiting this long (if nobody else takes
    /// the capacity first), except at the [end of time](crate::gcra), where no wait helps.
    Wait {
        /// Nanoseconds to wait.
        nanos: u64,
    },
    /// More cells than the burst: this request can never be admitted.
    InsufficientCapacity {
        /// The limiter's burst.
        burst: u32,
    },
}

impl Gcra {
    /// `count` cells per `period`, admitting bursts of up to `burst` cells.
    ///
    /// The emission interval is `period / count` rounded down to whole nanoseconds, which
    /// must not make the limit more than 0.1 % faster than asked ([`emission_interval`]):
    /// 700,000,000 per second (1.43 ns, which 1 ns would make 43 % faster) is refused.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for a zero `count`, `period` or `burst`;
    /// [`ConfigError::OutOfRange`] (field `count`) when `period / count` is below one
    /// nanosecond or more than 0.1 % above a whole number of them;
    /// [`ConfigError::DurationOverflow`] when `period`, two intervals or `(burst + 1) ×
    /// interval` does not fit in `u64` nanoseconds.
    pub fn new(count: u32, period: Duration, burst: u32) -> Result<Self, ConfigError> {
        let interval = emission_interval(count, period, Resolution::Nanos)?;
        if burst == 0 {
            return Err(ConfigError::Zero { field: "burst" });
        }
        // The state reaches `now + horizon + interval` (a full burst and the cell after it):
        // that must fit in u64 nanoseconds, or a saturated state would misstate the wait.
        if interval.checked_mul(2).is_none() {
            return Err(ConfigError::DurationOverflow { field: "period" });
        }
        let horizon = interval
            .checked_mul(u64::from(burst))
            .and_then(|horizon| horizon.checked_add(interval).map(|_| horizon))
            .ok_or(ConfigError::DurationOverflow { field: "burst" })?;
        Ok(Self {
            interval,
            burst,
            horizon,
        })
    }

    /// The emission interval in nanoseconds.
    pub const fn interval_nanos(&self) -> u64 {
        self.interval
    }

    /// The burst: cells admitted at once from rest.
    pub const fn burst(&self) -> u32 {
        self.burst
    }

    /// The limit as two words (interval, burst), to keep it where it can be replaced while
    /// it is read (a limiter reconfigured live); [`from_words`](Self::from_words) reads them
    /// back.
    ///
    /// ```
    /// use core::time::Duration;
    /// use tidewall_core::gcra::Gcra;
    ///
    /// let gcra = Gcra::new(10, Duration::from_secs(1), 5)?;
    /// assert_eq!(Gcra::from_words(gcra.to_words()), gcra);
    /// # Ok::<(), tidewall_core::ConfigError>(())
    /// ```
    pub const fn to_words(&self) -> [u64; 2] {
        [self.interval, self.burst as u64]
    }

    /// The limit [`to_words`](Self::to_words) gave. Total: words that no validated limit has
    /// are brought into range (an interval of at least 1 ns, a burst of 1 ..= `u32::MAX`,
    /// the horizon saturated) rather than refused, so reading them never fails.
    #[inline]
    pub fn from_words(words: [u64; 2]) -> Self {
        let interval = words[0].max(1);
        let burst = u32::try_from(words[1]).unwrap_or(u32::MAX).max(1);
        Self {
            interval,
            burst,
            horizon: interval.saturating_mul(u64::from(burst)),
        }
    }

    /// Decides whether `cells` may pass at `now`, given the stored `tat`.
    ///
    /// Returns the new TAT to store on success. Pure: the caller stores it (with a
    /// compare-and-swap when the state is shared).
    ///
    /// # Errors
    ///
    /// [`Denied::Wait`] with the exact wait, or [`Denied::InsufficientCapacity`] when
    /// `cells > burst` (`cells == 0` always passes and returns `tat` itself). A
    /// request whose new state would pass `u64::MAX` nanoseconds is refused with the wait
    /// it would need (at least 1 ns; `u64::MAX` when that does not fit): the state cannot
    /// hold it.
    #[inline]
    pub fn decide(&self, tat: u64, now: u64, cells: u32) -> Result<u64, Denied> {
        if cells > self.burst {
            return Err(Denied::InsufficientCapacity { burst: self.burst });
        }
        if cells == 0 {
            return Ok(tat);
        }
        // Within `horizon` for a validated limit; a limit read back from words no validated
        // limit has may have a saturated horizon, and then the product may not fit.
        let new_tat = self
            .interval
            .checked_mul(u64::from(cells))
            .and_then(|increment| tat.max(now).checked_add(increment));
        let Some(new_tat) = new_tat else {
            // The state would pass u64::MAX nanoseconds (584 years after the limiter's
            // origin) and cannot be stored: refuse. Saturating would store u64::MAX, which
            // then looks paid off at any age past 584 years less the horizon and would admit
            // everything from there on.
            let increment = u128::from(self.interval) * u128::from(cells);
            let allowed_at =
                (u128::from(tat.max(now)) + increment).saturating_sub(u128::from(self.horizon));
            let wait = allowed_at.saturating_sub(u128::from(now)).max(1);
            return Err(Denied::Wait {
                nanos: u64::try_from(wait).unwrap_or(u64::MAX),
            });
        };
        let allowed_at = new_tat.saturating_sub(self.horizon);
        if allowed_at <= now {
            Ok(new_tat)
        } else {
            Err(Denied::Wait {
                nanos: allowed_at - now,
            })
        }
    }

    /// How many cells one request could take at `now` from the stored `tat`: the burst
    /// when rested (fewer at the [end of time](crate::gcra)), fewer while earlier cells are
    /// being paid off (for a gauge of the
    /// capacity left; a decision may still find less if others take it first).
    ///
    /// ```
    /// use core::time::Duration;
    /// use tidewall_core::gcra::Gcra;
    ///
    /// let gcra = Gcra::new(10, Duration::from_secs(1), 5)?; // 100 ms a cell
    /// assert_eq!(gcra.available(0, 0), 5);
    /// let tat = gcra.decide(0, 0, 3).expect("3 of the 5 fit"); // taken at once
    /// assert_eq!(gcra.available(tat, 0), 2);
    /// assert_eq!(gcra.available(tat, 100_000_000), 3, "one paid off 100 ms later");
    /// # Ok::<(), tidewall_core::ConfigError>(())
    /// ```
    pub fn available(&self, tat: u64, now: u64) -> u32 {
        // At the end of time, only the cells whose state still fits in a u64 (see `decide`).
        let fits = (u64::MAX - tat.max(now)) / self.interval;
        let fits = u32::try_from(fits).unwrap_or(u32::MAX);
        if tat <= now {
            return self.burst.min(fits);
        }
        // A request of n cells passes when tat + n × interval - horizon <= now.
        let room = (u128::from(now) + u128::from(self.horizon)).saturating_sub(u128::from(tat));
        let cells = room / u128::from(self.interval);
        u32::try_from(cells)
            .unwrap_or(u32::MAX)
            .min(self.burst)
            .min(fits)
    }

    /// Whether a state is fully rested at `now`, i.e. indistinguishable from a fresh one.
    pub const fn is_rested(tat: u64, now: u64) -> bool {
        tat <= now
    }

    /// The most cells a limiter starting from rest admits during `elapsed` nanoseconds
    /// (inclusive of both ends): `burst + floor(elapsed / interval)`, saturating at
    /// `u64::MAX`.
    ///
    /// ```
    /// use core::time::Duration;
    /// use tidewall_core::gcra::Gcra;
    ///
    /// let gcra = Gcra::new(10, Duration::from_secs(1), 5)?; // 100 ms a cell
    /// assert_eq!(gcra.max_admitted(1_000_000_000), 15);
    /// let fastest = Gcra::new(1, Duration::from_nanos(1), u32::MAX)?;
    /// assert_eq!(fastest.max_admitted(u64::MAX), u64::MAX);
    /// # Ok::<(), tidewall_core::ConfigError>(())
    /// ```
    pub const fn max_admitted(&self, elapsed: u64) -> u64 {
        (self.burst as u64).saturating_add(elapsed / self.interval)
    }
}

#[cfg(test)]
mod tests;
