//! RAII permits: an admitted call ends by recording an outcome, or by being dropped.

use super::shared::{Shared, Ticket};
use crate::rt::Clock;
use crate::sync::Arc;

/// How a call through the breaker ended, as the breaker should count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Counts as a success (and closes a half-open breaker once enough probes succeed).
    Success,
    /// Counts as a failure.
    Failure,
    /// Not counted at all (e.g. a client error that says nothing about the service's health).
    /// An ignored probe gives its half-open slot back.
    Ignored,
}

/// Permission for one call, borrowed from a [`CircuitBreaker`](super::CircuitBreaker).
///
/// Record how the call went with [`success`](Self::success), [`failure`](Self::failure) or
/// [`record`](Self::record). Dropping the permit instead (cancellation, a panic, an early
/// return) records nothing, and a half-open probe gives its slot back for another caller.
#[must_use = "a permit records nothing until you call success(), failure() or record()"]
#[derive(Debug)]
pub struct Permit<'a, R: Clock> {
    pub(super) shared: &'a Shared<R>,
    pub(super) ticket: Option<Ticket>,
}

/// Like [`Permit`], but owning a handle to the breaker, for futures that must be `'static`.
#[must_use = "a permit records nothing until you call success(), failure() or record()"]
#[derive(Debug)]
pub struct OwnedPermit<R: Clock> {
    pub(super) shared: Arc<Shared<R>>,
    pub(super) ticket: Option<Ticket>,
}

macro_rules! permit_methods {
    () => {
        /// Records the outcome and releases the permit.
        pub fn record(self, outcome: Outcome) {
            self.record_hinted(outcome, None);
        }

        /// Records the outcome with the wait the call's result asked for (a server's
        /// `Retry-After`) and releases the permit: a failure that opens the breaker keeps it
        /// open at least that long, capped by
        /// [`max_open_hint`](super::CircuitBreakerBuilder::max_open_hint).
        pub fn record_hinted(mut self, outcome: Outcome, hint: Option<std::time::Duration>) {
            if let Some(ticket) = self.ticket.take() {
                self.shared.finish(ticket, outcome, hint);
            }
        }

        /// Records a success.
        pub fn success(self) {
            self.record(Outcome::Success);
        }

        /// Records a failure.
        pub fn failure(self) {
            self.record(Outcome::Failure);
        }

        /// Whether this permit is a half-open probe.
        pub fn is_probe(&self) -> bool {
            self.ticket.is_some_and(|t| t.probe)
        }
    };
}

impl<R: Clock> Permit<'_, R> {
    permit_methods!();
}

impl<R: Clock> OwnedPermit<R> {
    permit_methods!();

    /// Times the call from now instead of from its admission, for a stack that takes the
    /// permit before its own waits (a queue, a rate limit): the call's duration, which the
    /// slow-call rule judges, is the dependency's alone.
    #[cfg(any(feature = "http", feature = "tower"))]
    pub(crate) fn start_now(&mut self) {
        if let Some(ticket) = &mut self.ticket {
            self.shared.restart(ticket);
        }
    }
}

fn release<R: Clock>(shared: &Shared<R>, ticket: Option<Ticket>) {
    if let Some(ticket) = ticket.filter(|t| t.probe) {
        shared.return_probe(ticket.generation);
    }
}

impl<R: Clock> Drop for Permit<'_, R> {
    fn drop(&mut self) {
        release(self.shared, self.ticket.take());
    }
}

impl<R: Clock> Drop for OwnedPermit<R> {
    fn drop(&mut self) {
        release(&self.shared, self.ticket.take());
    }
}
