//! The retry driver's notification hook (classification, and the hints a result carries,
//! live in [`crate::classify`]). Closures implement it; the unit type is the default, so an
//! unconfigured `Retry` carries no closure at all.

use std::time::Duration;

/// What a failed attempt produced.
#[derive(Debug)]
#[non_exhaustive]
pub enum Outcome<'a, T, E> {
    /// An error judged a retryable failure.
    Error(&'a E),
    /// An `Ok` value judged a retryable failure.
    Value(&'a T),
    /// The attempt hit the per-attempt timeout.
    TimedOut,
}

/// Passed to the [`Notify`] hook before each backoff sleep.
#[derive(Debug)]
#[non_exhaustive]
pub struct RetryEvent<'a, T, E> {
    /// The attempt that just failed (1 for the first call).
    pub attempt: u32,
    /// What it produced.
    pub outcome: Outcome<'a, T, E>,
    /// The sleep before the next attempt (after jitter, cap and hints).
    pub delay: Duration,
    /// The hint the failed result carried, if any (before capping): read by the
    /// [classifier](crate::classify::Classify::retry_after).
    pub hint: Option<Duration>,
}

/// Observes retries (logging, metrics). A closure observes the retries scheduled; implement
/// the trait on a type to see the retries the budget refused too.
///
/// ```
/// use tidewall::retry::{Notify, RetryEvent};
///
/// #[derive(Default)]
/// struct Tally {
///     retries: u32,
///     refused: u32,
/// }
///
/// impl<T, E> Notify<T, E> for Tally {
///     fn notify(&mut self, _: &RetryEvent<'_, T, E>) {
///         self.retries += 1;
///     }
///     fn budget_spent(&mut self, _attempt: u32) {
///         self.refused += 1;
///     }
/// }
/// # let _ = Tally::default();
/// ```
pub trait Notify<T, E> {
    /// Called once per retry, before the backoff sleep.
    fn notify(&mut self, event: &RetryEvent<'_, T, E>);

    /// Called when the [retry budget](crate::retry::Retry::budget) refused the retry that
    /// would have followed `attempt` (1 for the first call): the failure is then the
    /// answer. Does nothing unless implemented.
    fn budget_spent(&mut self, attempt: u32) {
        let _ = attempt;
    }
}

impl<T, E, F: FnMut(&RetryEvent<'_, T, E>)> Notify<T, E> for F {
    fn notify(&mut self, event: &RetryEvent<'_, T, E>) {
        self(event);
    }
}

/// The default: no notification.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoNotify;

impl<T, E> Notify<T, E> for NoNotify {
    fn notify(&mut self, _: &RetryEvent<'_, T, E>) {}
}
