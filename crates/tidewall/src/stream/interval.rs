//! An interval stream with an explicit missed-tick behaviour and optional jitter.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use futures_core::Stream;
use pin_project_lite::pin_project;
use tidewall_core::rng::SplitMix64;

use crate::ConfigError;
use crate::rt::{Clock, instant_after};
use crate::time::positive_duration;

/// What an [`Interval`] does with a late tick: one the consumer asked for after its time,
/// or whose wake-up came late (a stalled executor). `Burst` and `Skip` keep the schedule
/// until the lateness reaches one period (a tick is missed); `Delay` also acts on less.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MissedTicks {
    /// Deliver every missed tick at once, then continue on the original schedule
    /// (`start + k × period`): the count of ticks is exact, the spacing is not.
    Burst,
    /// Deliver one tick now and restart the schedule from it (the next tick is one period
    /// after this delivery): the count drifts. Any lateness of the consumer restarts it
    /// (tokio's `MissedTickBehavior::Delay` does so past 5 ms); a wake-up the consumer was
    /// already waiting for, made late by less than a period (timer resolution, a busy
    /// executor), does not, so a consumer that is never late keeps the schedule. A consumer
    /// counts as waiting from a poll that found the tick not yet due: one that dropped that
    /// `next()` (a `select!` whose other branch won) and asks again less than a period after
    /// the tick keeps the schedule too, as the interval cannot tell it from a late wake-up.
    Delay,
    /// Deliver one tick now (the earliest missed point) and drop the other missed ones; the
    /// next tick is the first point of the original schedule after the late one was
    /// delivered, however long the stall (the default: no bursts, no drift).
    #[default]
    Skip,
}

pin_project! {
    /// Ticks every `period`: each item is the tick's scheduled instant. See
    /// [`interval_on`](super::interval_on).
    ///
    /// The first tick is one period after the interval was created (by
    /// [`interval_on`](super::interval_on)), then one per period on that schedule; a late
    /// tick is handled as its [`MissedTicks`] says, for a stall of any length. Jitter, if
    /// set, delays each wake-up by a random amount up to the jitter (seeded, reproducible),
    /// without moving the schedule; a consumer that asked for a tick in time gets it at its
    /// jittered wake-up, however often its task is polled before then (by other streams
    /// merged or selected with this one).
    /// Never ends; stop it by dropping it (or with `take_until` on a cancellation).
    ///
    /// **Cancel safety:** dropping a `next()` future loses no tick: the tick it waited for is
    /// the next one delivered.
    ///
    /// ```
    /// use std::time::Duration;
    /// use futures_util::StreamExt;
    /// use tidewall::rt::{Clock, Tokio};
    /// use tidewall::stream::{MissedTicks, interval_on};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tidewall::ConfigError> {
    /// let start = Tokio.now();
    /// let mut ticks = std::pin::pin!(interval_on(&Tokio, Duration::from_secs(1), MissedTicks::Skip)?);
    /// assert_eq!(ticks.next().await, Some(start + Duration::from_secs(1)));
    /// // The consumer stalls for 90 days: one late tick at once (the one due at 2 s), then the
    /// // schedule resumes at its first point after the stall.
    /// tokio::time::sleep(Duration::from_secs(90 * 86_400)).await;
    /// assert_eq!(ticks.next().await, Some(start + Duration::from_secs(2)));
    /// assert_eq!(ticks.next().await, Some(start + Duration::from_secs(90 * 86_400 + 2)));
    /// # Ok(()) }
    /// ```
    #[must_use = "streams do nothing unless polled"]
    pub struct Interval<R: Clock> {
        rt: R,
        period: Duration,
        missed: MissedTicks,
        next: Instant,
        jitter_nanos: u64,
        // The jitter drawn for the pending wake-up: our own delay, never the consumer's
        // lateness.
        jittered: Duration,
        // When the last tick was delivered: a consumer that asks for the next one at once is
        // not late, even when a jittered wake-up took it past that tick's time.
        delivered: Instant,
        rng: SplitMix64,
        #[pin]
        sleep: Option<R::Sleep>,
    }
}

impl<R: Clock> Interval<R> {
    pub(super) fn new(rt: R, period: Duration, missed: MissedTicks) -> Result<Self, ConfigError> {
        positive_duration("period", period)?;
        let created = rt.now();
        Ok(Self {
            rt,
            period,
            missed,
            next: instant_after(created, period),
            jitter_nanos: 0,
            jittered: Duration::ZERO,
            delivered: created,
            rng: SplitMix64::new(0),
            sleep: None,
        })
    }

    /// The same interval with its schedule restarted from now: the first tick is one period
    /// from now. For owners that build the interval (to validate it) before they start it.
    pub(crate) fn restarted(mut self) -> Self {
        self.delivered = self.rt.now();
        self.next = instant_after(self.delivered, self.period);
        self.sleep = None;
        self
    }

    /// Delays each wake-up by up to `jitter` (seeded by `seed`), so many intervals started
    /// together do not fire together. The delay is never taken for lateness: a consumer on
    /// time gets every tick on the schedule, in every [`MissedTicks`] mode, whatever the
    /// jitter. Polls before the jittered wake-up (another stream woke the task) do not cut it
    /// short.
    ///
    /// # Errors
    ///
    /// [`ConfigError::DurationOverflow`] for a jitter beyond `u64` nanoseconds.
    pub fn jitter(mut self, jitter: Duration, seed: u64) -> Result<Self, ConfigError> {
        self.jitter_nanos = u64::try_from(jitter.as_nanos())
            .map_err(|_| ConfigError::DurationOverflow { field: "jitter" })?;
        self.rng = SplitMix64::new(seed);
        Ok(self)
    }
}

impl<R: Clock> Stream for Interval<R> {
    type Item = Instant;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Instant>> {
        let mut this = self.project();
        if this.sleep.is_none() && this.rt.now() < *this.next {
            *this.jittered = Duration::from_nanos(this.rng.below_or_equal(*this.jitter_nanos));
            this.sleep.set(Some(
                this.rt
                    .sleep_until(instant_after(*this.next, *this.jittered)),
            ));
        }
        // Asked for in time: the tick is due at its jittered wake-up, even when a poll comes
        // between the tick and it (another stream woke the task).
        if let Some(sleep) = this.sleep.as_mut().as_pin_mut() {
            ready!(sleep.poll(cx));
        }
        let slept = this.sleep.is_some();
        this.sleep.set(None);
        let tick = *this.next;
        // When the consumer took the tick, less what this interval delayed itself: only the
        // consumer's (or the executor's) lateness counts as missing ticks. After a sleep, that
        // is the time past the jittered wake-up; a tick already due when asked for is late by
        // the time since it (or since the last delivery, if a jittered wake-up came later).
        let now = this.rt.now();
        let lateness = if slept {
            now.saturating_duration_since(instant_after(tick, *this.jittered))
        } else {
            now.saturating_duration_since(tick.max(*this.delivered))
        };
        let taken = instant_after(tick, lateness);
        *this.jittered = Duration::ZERO;
        *this.delivered = now;
        *this.next = match this.missed {
            MissedTicks::Burst => instant_after(tick, *this.period),
            // The consumer asked in time: a wake-up less than a period late is the timer's or
            // the executor's, and moving the schedule for it would drift on every tick.
            MissedTicks::Delay if slept && lateness < *this.period => {
                instant_after(tick, *this.period)
            }
            MissedTicks::Delay => instant_after(taken, *this.period),
            MissedTicks::Skip => first_point_after(tick, taken, *this.period),
        };
        Poll::Ready(Some(tick))
    }
}

/// The first point of the schedule `tick + k × period` (k ≥ 1) strictly after `now`.
///
/// Computed from the remainder of the stall, never from a count of missed periods: the
/// distance to the next point is at most one period, whatever the stall (a count would have
/// to hold 2^32 and more periods after a long enough stall at a short period).
fn first_point_after(tick: Instant, now: Instant, period: Duration) -> Instant {
    let next = instant_after(tick, period);
    if next > now {
        return next;
    }
    // `period` is non-zero and fits in u64 nanoseconds (checked at construction); the stall is
    // a `Duration`, whose nanoseconds fit in u128 for any stall.
    let period_nanos = period.as_nanos();
    let into_period = now.duration_since(tick).as_nanos() % period_nanos;
    let until_next = u64::try_from(period_nanos - into_period).unwrap_or(u64::MAX);
    instant_after(now, Duration::from_nanos(until_next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_nanos(nanos: u128) -> Duration {
        Duration::new(
            u64::try_from(nanos / 1_000_000_000).unwrap(),
            u32::try_from(nanos % 1_000_000_000).unwrap(),
        )
    }

    /// A count of skipped periods in a `u32` saturated after 2^32 periods and put the next
    /// point days in the past; the next point must be within one period after `now`, on the
    /// schedule, for any stall.
    #[test]
    fn the_next_point_is_within_one_period_after_any_stall() {
        let tick = Instant::now();
        let stalls = [
            0u128,
            1,
            2,
            3,
            1_000,
            u128::from(u32::MAX) - 1,
            u128::from(u32::MAX),
            1 << 32,
            (1 << 32) + 1,
            (1 << 33) + 7,
            1 << 40,
        ];
        for period in [
            Duration::from_nanos(1),
            Duration::from_millis(1),
            Duration::from_millis(250),
        ] {
            for periods in stalls {
                for extra in [Duration::ZERO, Duration::from_nanos(1), period / 2] {
                    let behind = from_nanos(period.as_nanos() * periods + extra.as_nanos());
                    let Some(now) = tick.checked_add(behind) else {
                        continue;
                    };
                    let next = first_point_after(tick, now, period);
                    let case = format!("period {period:?}, stall of {periods} periods + {extra:?}");
                    assert!(next > now, "{case}");
                    assert!(next - now <= period, "{case}");
                    assert_eq!((next - tick).as_nanos() % period.as_nanos(), 0, "{case}");
                }
            }
        }
    }
}
