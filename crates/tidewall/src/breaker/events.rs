//! Breaker states and state-change events.

use std::fmt;

pub use tidewall_core::breaker::TripReason;

/// Where a breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum State {
    /// Calls pass; outcomes are recorded.
    Closed = 0,
    /// Calls are rejected until the break ends.
    Open = 1,
    /// A bounded number of probe calls pass; the rest are rejected.
    HalfOpen = 2,
    /// Opened by hand: every call is rejected until [`reset`](super::CircuitBreaker::reset).
    ForcedOpen = 3,
    /// Closed by hand: every call passes and nothing trips it until `reset`.
    ForcedClosed = 4,
}

impl State {
    /// Every state, in declaration order (e.g. for a one-hot gauge per state).
    ///
    /// ```
    /// use tidewall::breaker::State;
    ///
    /// let labels: Vec<&str> = State::ALL.iter().map(|s| s.as_str()).collect();
    /// assert_eq!(labels, ["closed", "open", "half_open", "forced_open", "forced_closed"]);
    /// ```
    pub const ALL: [Self; 5] = [
        Self::Closed,
        Self::Open,
        Self::HalfOpen,
        Self::ForcedOpen,
        Self::ForcedClosed,
    ];

    /// A short lowercase name, for logs and metric labels: `closed`, `open`, `half_open`,
    /// `forced_open`, `forced_closed`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
            Self::ForcedOpen => "forced_open",
            Self::ForcedClosed => "forced_closed",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One transition, handed to the [`on_state_change`](super::CircuitBreakerBuilder::on_state_change)
/// callback and, with the `tracing` / `metrics` features, emitted as an event and a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateChange<'a> {
    /// The breaker's name.
    pub name: &'a str,
    /// The state before.
    pub from: State,
    /// The state after.
    pub to: State,
    /// Why it opened, for transitions to [`State::Open`].
    pub reason: Option<TripReason>,
    /// The state's generation: one more on every transition. Listeners run after the
    /// transition lock is released, so two transitions in quick succession can be delivered
    /// out of order; order them by generation (wrapping).
    pub generation: u32,
}

pub(super) type Listener = std::sync::Arc<dyn Fn(&StateChange<'_>) + Send + Sync>;

/// Calls the state-change listener, if there is one.
pub(super) fn emit(listener: Option<&Listener>, change: &StateChange<'_>) {
    if let Some(listener) = listener {
        listener(change);
    }
}
