//! An interval stream with an explicit missed-tick behaviour and optional jitter.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use futures_core::Stream;
use pin_project_lite::pin_project;
use tidewall_core::rng::SplitMix64;

use crate::ConfigError;
use crate::rt::{Runtime, instant_after};
use crate::time::positive_duration;

/// What an [`Interval`] does when the consumer (or the executor) was late by one or more
/// periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MissedTicks {
    /// Deliver every missed tick at once, then continue on the original schedule
    /// (`start + k × period`): the count of ticks is exact, the spacing is not.
    Burst,
    /// Deliver one tick now and restart the schedule from it: spacing is at least `period`,
    /// the count drifts.
    Delay,
    /// Deliver one tick now and drop the missed ones; the next tick is the next point of the
    /// original schedule (the default: no bursts, no drift).
    #[default]
    Skip,
}

pin_project! {
    /// Ticks every `period`: each item is the tick's scheduled instant. See
    /// [`interval_on`](super::interval_on).
    ///
    /// The first tick is one period after the start. Jitter, if set, delays each wake-up by a
    /// random amount up to the jitter (seeded, reproducible), without moving the schedule.
    /// Never ends; stop it by dropping it (or with `take_until` on a cancellation).
    #[must_use = "streams do nothing unless polled"]
    pub struct Interval<R: Runtime> {
        rt: R,
        period: Duration,
        missed: MissedTicks,
        next: Instant,
        jitter_nanos: u64,
        rng: SplitMix64,
        #[pin]
        sleep: Option<R::Sleep>,
    }
}

impl<R: Runtime> Interval<R> {
    pub(super) fn new(rt: R, period: Duration, missed: MissedTicks) -> Result<Self, ConfigError> {
        positive_duration("period", period)?;
        let next = instant_after(rt.now(), period);
        Ok(Self {
            rt,
            period,
            missed,
            next,
            jitter_nanos: 0,
            rng: SplitMix64::new(0),
            sleep: None,
        })
    }

    /// Delays each wake-up by up to `jitter` (seeded by `seed`), so many intervals started
    /// together do not fire together.
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

impl<R: Runtime> Stream for Interval<R> {
    type Item = Instant;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Instant>> {
        let mut this = self.project();
        let now = this.rt.now();
        if now < *this.next {
            if this.sleep.is_none() {
                let jitter = Duration::from_nanos(this.rng.below_or_equal(*this.jitter_nanos));
                this.sleep
                    .set(Some(this.rt.sleep_until(instant_after(*this.next, jitter))));
            }
            if let Some(sleep) = this.sleep.as_mut().as_pin_mut() {
                ready!(sleep.poll(cx));
            }
        }
        this.sleep.set(None);
        let tick = *this.next;
        let now = this.rt.now();
        *this.next = match this.missed {
            MissedTicks::Burst => instant_after(tick, *this.period),
            MissedTicks::Delay => instant_after(now.max(tick), *this.period),
            MissedTicks::Skip => {
                let mut next = instant_after(tick, *this.period);
                if next <= now {
                    // Jump to the first scheduled point after now, in one step.
                    let behind = now.duration_since(tick).as_nanos();
                    let periods = behind / this.period.as_nanos() + 1;
                    let skip = u32::try_from(periods).unwrap_or(u32::MAX);
                    next = instant_after(tick, this.period.saturating_mul(skip));
                }
                next
            }
        };
        Poll::Ready(Some(tick))
    }
}
