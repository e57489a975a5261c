//! The one closing procedure both scope variants follow: wait, cancel, grace, abort.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::rt::{Runtime, instant_after};
use crate::task::{CancellationToken, Reason};

/// What a scope variant provides to be closed.
pub(super) trait Closing {
    /// Resolves once no child is running (and closes the scope to new spawns then).
    fn all_ended(&mut self) -> impl Future<Output = ()> + '_;
    /// Records the cancellation instant if none is known yet; returns the known one.
    fn note_cancel(&self, now: Instant) -> Instant;
    /// Cancels the scope's token (noting the instant first).
    fn cancel_now(&self, reason: Reason);
    /// Aborts every child still running; `all_ended` then resolves once they are gone.
    fn abort_all(&mut self);
}

/// How a close proceeds.
pub(super) struct Plan {
    /// The grace period once cancelled.
    pub(super) grace: Duration,
    /// The grace starts no earlier than this (a shutdown's own call), even if the scope was
    /// cancelled before.
    pub(super) grace_from: Option<Instant>,
    /// Cancel with this reason if children still run at this instant (`join_within`).
    pub(super) cancel_at: Option<(Instant, Reason)>,
}

pub(super) async fn close<C: Closing, R: Runtime>(
    scope: &mut C,
    rt: &R,
    token: &CancellationToken,
    plan: Plan,
) {
    let cancel_at = plan.cancel_at.as_ref().map(|(at, _)| *at);
    let cancelled_or_due = async {
        match cancel_at {
            Some(at) => {
                super::first_wins(token.cancelled(), rt.sleep_until(at)).await;
            }
            None => drop(token.cancelled().await),
        }
    };
    if super::first_wins(scope.all_ended(), cancelled_or_due).await {
        return;
    }
    if let (false, Some((_, reason))) = (token.is_cancelled(), plan.cancel_at) {
        scope.cancel_now(reason);
    }
    let cancelled_at = scope.note_cancel(rt.now());
    let grace_from = plan
        .grace_from
        .map_or(cancelled_at, |from| from.max(cancelled_at));
    let deadline = instant_after(grace_from, plan.grace);
    if !super::first_wins(scope.all_ended(), rt.sleep_until(deadline)).await {
        scope.abort_all();
        scope.all_ended().await;
    }
}
