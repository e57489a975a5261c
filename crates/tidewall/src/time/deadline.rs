//! One instant shared by every layer of an operation.

use std::time::{Duration, Instant};

use crate::rt::{Clock, instant_after};

/// The instant by which a whole operation must finish, or no limit.
///
/// `Deadline` is `Copy`: hand it to every layer. [`Deadline::min`] combines two (the earlier
/// wins), so a layer can tighten a deadline but never extend its caller's.
///
/// ```
/// use std::time::{Duration, Instant};
/// use tidewall::Deadline;
///
/// let now = Instant::now();
/// let d = Deadline::at(now + Duration::from_secs(2));
/// assert_eq!(d.remaining(now), Some(Duration::from_secs(2)));
/// assert!(!d.is_expired(now));
/// assert!(d.is_expired(now + Duration::from_secs(2)));
/// assert_eq!(Deadline::none().remaining(now), None);
/// assert_eq!(d.min(Deadline::none()), d);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Deadline {
    at: Option<Instant>,
}

impl Deadline {
    /// No deadline: waits are unbounded.
    pub const fn none() -> Self {
        Self { at: None }
    }

    /// A deadline at `instant`.
    pub const fn at(instant: Instant) -> Self {
        Self { at: Some(instant) }
    }

    /// `budget` from now on `rt`'s clock; a `budget` the clock cannot add to now (such as
    /// `Duration::MAX`) is about thirty years instead of an overflow
    /// ([`instant_after`](crate::rt::instant_after)).
    pub fn after<R: Clock>(rt: &R, budget: Duration) -> Self {
        Self::at(instant_after(rt.now(), budget))
    }

    /// The instant, if there is one.
    pub fn instant(&self) -> Option<Instant> {
        self.at
    }

    /// Time left at `now` (zero once passed), or `None` without a deadline.
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        self.at.map(|at| at.saturating_duration_since(now))
    }

    /// Whether the deadline has been reached at `now`.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.at.is_some_and(|at| now >= at)
    }

    /// Whether more than `needed` is left before the deadline, starting at `now` (an exact
    /// fit is not enough: the deadline is past once it is reached). Always true without one.
    pub fn allows(&self, now: Instant, needed: Duration) -> bool {
        self.remaining(now).is_none_or(|left| left > needed)
    }

    /// The earlier of two deadlines (no deadline is the latest).
    #[must_use]
    pub fn min(self, other: Self) -> Self {
        match (self.at, other.at) {
            (Some(a), Some(b)) => Self::at(a.min(b)),
            (Some(_), None) => self,
            (None, _) => other,
        }
    }
}

impl From<Instant> for Deadline {
    fn from(at: Instant) -> Self {
        Self::at(at)
    }
}
