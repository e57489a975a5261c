//! Where a limiter reads time: the runtime's clock (virtual in tests), or, opt-in with the
//! `quanta` feature, the CPU timestamp counter.

use std::time::Instant;

use crate::rt::Runtime;
use crate::sync::nanos_since;

/// The limiter's time source, as nanoseconds since the limiter was built.
pub(super) struct LimiterClock {
    origin: Instant,
    #[cfg(feature = "quanta")]
    tsc: Option<(quanta::Clock, u64)>,
}

impl LimiterClock {
    pub(super) fn new<R: Runtime>(rt: &R, tsc: bool) -> Self {
        #[cfg(feature = "quanta")]
        let tsc = tsc.then(|| {
            let clock = quanta::Clock::new();
            let origin = clock.raw();
            (clock, origin)
        });
        #[cfg(not(feature = "quanta"))]
        let _ = tsc;
        Self {
            origin: rt.now(),
            #[cfg(feature = "quanta")]
            tsc,
        }
    }

    /// Nanoseconds since the limiter was built.
    pub(super) fn nanos<R: Runtime>(&self, rt: &R) -> u64 {
        #[cfg(feature = "quanta")]
        if let Some((clock, origin)) = &self.tsc {
            return clock.delta_as_nanos(*origin, clock.raw());
        }
        nanos_since(self.origin, rt.now())
    }
}
