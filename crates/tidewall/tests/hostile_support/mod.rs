//! What the `hostile_breaker_*` tests share: their durations, a breaker builder on a fresh
//! virtual clock, the state changes it reports, and the documented trip rules as exact
//! integer arithmetic, for the reference models written from the docs.
#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidewall::breaker::{CircuitBreaker, CircuitBreakerBuilder, Counts, State, TripReason};
use tidewall::testing::FakeClock;

pub const SEC: Duration = Duration::from_secs(1);
pub const HOUR: Duration = Duration::from_secs(3_600);
pub const DAY: Duration = Duration::from_secs(86_400);
/// Rates are compared in whole parts per million.
pub const PPM: u64 = 1_000_000;

pub type Fb = CircuitBreaker<FakeClock>;

/// A builder on a fresh virtual clock.
pub fn on_fake() -> (FakeClock, CircuitBreakerBuilder<FakeClock>) {
    let clock = FakeClock::new();
    let builder = CircuitBreaker::builder().runtime(clock.clone());
    (clock, builder)
}

/// Every state change as `(from, to, reason, generation)`.
pub type Changes = Arc<Mutex<Vec<(State, State, Option<TripReason>, u32)>>>;

pub fn watch_changes<R>(builder: CircuitBreakerBuilder<R>) -> (CircuitBreakerBuilder<R>, Changes) {
    let changes: Changes = Arc::default();
    let seen = Arc::clone(&changes);
    let builder = builder.on_state_change(move |c| {
        seen.lock()
            .unwrap()
            .push((c.from, c.to, c.reason, c.generation));
    });
    (builder, changes)
}

/// The reason of the last state change, if it had one.
pub fn last_reason(changes: &Changes) -> Option<TripReason> {
    changes.lock().unwrap().last().and_then(|c| c.2)
}

/// `rate` in whole parts per million.
// A rate is between 0 and 1: its parts per million fit a u64 and are never negative.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
pub fn ppm(rate: f64) -> u64 {
    (rate * PPM as f64).round() as u64
}

/// The documented rules a breaker trips by: a rate counts once the window holds `minimum`
/// calls and trips at or above its threshold (in parts per million); a run of
/// `consecutive` failures trips regardless.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    pub minimum: u64,
    pub failure_ppm: Option<u64>,
    pub slow_ppm: Option<u64>,
    pub consecutive: Option<u32>,
}

impl Rules {
    /// The reasons a window holding `held`, after a run of `run` failures, trips for.
    pub fn trips(&self, held: Counts, run: u32) -> Vec<TripReason> {
        let (calls, failures, slow) = (
            u64::from(held.calls),
            u64::from(held.failures),
            u64::from(held.slow),
        );
        let mut reasons = Vec::new();
        if calls >= self.minimum {
            if self
                .failure_ppm
                .is_some_and(|p| failures * PPM >= p * calls)
            {
                reasons.push(TripReason::FailureRate);
            }
            if self.slow_ppm.is_some_and(|p| slow * PPM >= p * calls) {
                reasons.push(TripReason::SlowCallRate);
            }
        }
        if self.consecutive.is_some_and(|n| run >= n) {
            reasons.push(TripReason::ConsecutiveFailures);
        }
        reasons
    }
}

/// Checks that the breaker tripped for one of the reasons the model gives, and tallies the
/// trip by its reason: failure rate, slow-call rate, a run of failures.
pub fn tally_trip(trips: &mut [usize; 3], reason: TripReason, model: &[TripReason], at: &str) {
    assert!(
        model.contains(&reason),
        "{at}: tripped for {reason:?}, the model for {model:?}"
    );
    trips[match reason {
        TripReason::FailureRate => 0,
        TripReason::SlowCallRate => 1,
        _ => 2,
    }] += 1;
}
