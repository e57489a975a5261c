//! The one closing procedure both scope fronts follow: wait, cancel, grace, abort, report.

use std::future::poll_fn;
use std::task::Context;
use std::time::{Duration, Instant};

use super::engine::{Children, Core, State};
use super::lock::Lock;
use super::report::ScopeReport;
use crate::rt::{Clock as _, Runtime, instant_after};
use crate::task::Reason;

/// What a scope front adds to the [`Core`] to be closed.
pub(super) trait Front<T, E> {
    type Runtime: Runtime;
    type Children: Children;
    type Lock: Lock<Target = State<T, E, Self::Children>>;
    /// A second handle on the core, so the front can be driven while the core is read.
    type Shared: Clone;

    fn shared(&self) -> Self::Shared;
    fn core(shared: &Self::Shared) -> &Core<Self::Runtime, Self::Lock>;
    /// Polls the children the front runs itself (none when they are runtime tasks).
    fn drive(&mut self, cx: &mut Context<'_>);
    /// Aborts every child still running; they then end (or have ended) as aborted.
    fn abort_all(&mut self);
    /// The front has been closed: dropping it has nothing left to do.
    fn set_closed(&mut self);
}

/// Waits for every child; if the scope is (or becomes) cancelled, aborts those still running
/// after the grace period.
pub(super) async fn join<T, E, F: Front<T, E>>(front: F) -> ScopeReport<T, E> {
    let shared = front.shared();
    let grace = F::core(&shared).grace;
    finish(
        front,
        Plan {
            grace,
            grace_from: None,
            cancel_at: None,
        },
    )
    .await
}

/// As [`join`], but children still running after `limit` are cancelled with `reason`.
pub(super) async fn join_within<T, E, F: Front<T, E>>(
    front: F,
    limit: Duration,
    reason: impl Into<Reason>,
) -> ScopeReport<T, E> {
    let shared = front.shared();
    let core = F::core(&shared);
    let at = instant_after(core.rt.now(), limit);
    let plan = Plan {
        grace: core.grace,
        grace_from: None,
        cancel_at: Some((at, reason.into())),
    };
    finish(front, plan).await
}

/// Cancels with `reason`, then closes with `grace` counted from the cancel (its first poll).
pub(super) async fn shutdown<T, E, F: Front<T, E>>(
    front: F,
    reason: Reason,
    grace: Duration,
) -> ScopeReport<T, E> {
    let shared = front.shared();
    let core = F::core(&shared);
    core.cancel(reason);
    let grace_from = Some(core.rt.now());
    let plan = Plan {
        grace,
        grace_from,
        cancel_at: None,
    };
    finish(front, plan).await
}

/// How a close proceeds.
struct Plan {
    /// The grace period once cancelled.
    grace: Duration,
    /// The grace starts no earlier than this (a shutdown's own call), even if the scope was
    /// cancelled before.
    grace_from: Option<Instant>,
    /// Cancel with this reason if children still run at this instant (`join_within`).
    cancel_at: Option<(Instant, Reason)>,
}

async fn finish<T, E, F: Front<T, E>>(mut front: F, plan: Plan) -> ScopeReport<T, E> {
    let shared = front.shared();
    close(&mut front, F::core(&shared), plan).await;
    front.set_closed();
    F::core(&shared).take_report()
}

async fn close<T, E, F: Front<T, E>>(front: &mut F, core: &Core<F::Runtime, F::Lock>, plan: Plan) {
    let (rt, token) = (&core.rt, &core.token);
    let cancel_at = plan.cancel_at.as_ref().map(|(at, _)| *at);
    let cancelled_or_due = async {
        match cancel_at {
            Some(at) => {
                super::first_wins(token.cancelled(), rt.sleep_until(at)).await;
            }
            None => drop(token.cancelled().await),
        }
    };
    if super::first_wins(all_ended(front, core), cancelled_or_due).await {
        return;
    }
    if let (false, Some((_, reason))) = (token.is_cancelled(), plan.cancel_at) {
        core.cancel(reason);
    }
    let cancelled_at = core.note_cancel(rt.now());
    let grace_from = plan
        .grace_from
        .map_or(cancelled_at, |from| from.max(cancelled_at));
    let deadline = instant_after(grace_from, plan.grace);
    if !super::first_wins(all_ended(front, core), rt.sleep_until(deadline)).await {
        front.abort_all();
        all_ended(front, core).await;
    }
}

/// Resolves once no child is running, and closes the scope to new spawns then.
async fn all_ended<T, E, F: Front<T, E>>(front: &mut F, core: &Core<F::Runtime, F::Lock>) {
    poll_fn(|cx| {
        front.drive(cx);
        core.poll_all_ended(cx)
    })
    .await;
}
