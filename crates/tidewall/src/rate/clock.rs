//! Where a limiter reads time: the CPU timestamp counter when its clock is real time (with
//! the default `quanta` feature, the counter governor reads), otherwise the clock itself, so
//! virtual and user clocks drive it in tests.

use std::time::Instant;

use crate::rt::Clock;
use crate::sync::nanos_since;

/// A limiter's (or a keyed table's) time source, as nanoseconds since it was built.
pub(crate) struct LimiterClock {
    origin: Instant,
    #[cfg(feature = "quanta")]
    tsc: Option<(quanta::Clock, u64)>,
}

impl LimiterClock {
    /// Decides once, at build, whether `clock` may be replaced by the counter.
    pub(crate) fn new<C: Clock>(clock: &C) -> Self {
        #[cfg(feature = "quanta")]
        let tsc = clock.is_real_time().then(|| {
            let counter = quanta::Clock::new();
            let origin = counter.raw();
            (counter, origin)
        });
        Self {
            origin: clock.now(),
            #[cfg(feature = "quanta")]
            tsc,
        }
    }

    /// Nanoseconds since the limiter was built.
    #[inline]
    pub(crate) fn nanos<C: Clock>(&self, clock: &C) -> u64 {
        #[cfg(feature = "quanta")]
        if let Some((counter, origin)) = &self.tsc {
            return counter.delta_as_nanos(*origin, counter.raw());
        }
        nanos_since(self.origin, clock.now())
    }
}

#[cfg(all(test, feature = "quanta", feature = "tokio", feature = "test-util"))]
mod tests {
    use super::LimiterClock;

    #[test]
    fn real_time_reads_the_counter_and_virtual_time_the_clock() {
        assert!(LimiterClock::new(&crate::rt::Tokio).tsc.is_some());
        assert!(
            LimiterClock::new(&crate::testing::FakeClock::new())
                .tsc
                .is_none()
        );
        let paused = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        paused.block_on(async {
            assert!(LimiterClock::new(&crate::rt::Tokio).tsc.is_none());
        });
    }
}
