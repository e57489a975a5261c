//! The bookkeeping both scope variants share: counts, unread reports, the failure policy.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::report::{ChildId, ChildReport, FailurePolicy, ScopeReport};
use crate::rt::Panic;
use crate::task::{Ending, Exit, Reason};

pub(super) struct Ledger<T, E> {
    reports: VecDeque<ChildReport<T, E>>,
    policy: FailurePolicy,
    keep_ok: bool,
    cancelled_at: Option<Instant>,
    /// The fail-fast reason, kept here too: the owner may see the last child end before the
    /// failing child's task has cancelled the token.
    fail_reason: Option<Reason>,
    first_failure: Option<ChildId>,
    pub(super) spawned: u64,
    succeeded: u64,
    failed: u64,
    panicked: u64,
    aborted: u64,
}

impl<T, E> Ledger<T, E> {
    pub(super) fn new(policy: FailurePolicy, keep_ok: bool) -> Self {
        Self {
            reports: VecDeque::new(),
            policy,
            keep_ok,
            cancelled_at: None,
            fail_reason: None,
            first_failure: None,
            spawned: 0,
            succeeded: 0,
            failed: 0,
            panicked: 0,
            aborted: 0,
        }
    }

    /// Remembers the first time the scope was seen cancelled; returns it.
    pub(super) fn note_cancel(&mut self, now: Instant) -> Instant {
        *self.cancelled_at.get_or_insert(now)
    }

    /// Records a child's end. Returns the reason to cancel the scope with when this is the
    /// failure that a fail-fast scope stops on, and the exit itself when it is not kept (an
    /// `Ok` under `discard_ok`), for the caller to drop once the scope's lock is released: a
    /// value's `Drop` may call back into the scope. `now` is read only when a time is needed
    /// (an ending after a cancellation, or the cancellation itself): a child that simply
    /// finishes costs no clock read.
    pub(super) fn record(
        &mut self,
        id: ChildId,
        exit: Exit<T, E, Panic>,
        now: impl FnOnce() -> Instant,
        already_cancelled: bool,
    ) -> (Option<Reason>, Option<Exit<T, E, Panic>>) {
        let fail_fast = self.policy == FailurePolicy::FailFast
            && !already_cancelled
            && self.cancelled_at.is_none()
            && exit.is_failure();
        let aborted = matches!(exit, Exit::Aborted);
        let now = (already_cancelled || aborted || fail_fast).then(now);
        // A child that ended before it could see the token cancelled finished on its own,
        // even if a failing sibling got to the ledger first.
        let ending = match now {
            // Lost by its runtime before any stop: not a cancellation of the scope, which
            // would stamp its time and bar a later fail-fast.
            Some(_) if aborted && !already_cancelled && self.cancelled_at.is_none() => {
                Ending::Aborted {
                    took: Duration::ZERO,
                }
            }
            Some(now) if aborted => Ending::Aborted {
                took: now.saturating_duration_since(self.note_cancel(now)),
            },
            Some(now) if already_cancelled => Ending::Stopped {
                took: now.saturating_duration_since(self.note_cancel(now)),
            },
            _ => Ending::Finished,
        };
        let reason = fail_fast.then(|| match &exit {
            Exit::Panicked(panic) => Reason::new(format!(
                "{id} panicked: {}",
                panic.message().unwrap_or("<non-string payload>")
            )),
            _ => Reason::new(format!("{id} returned an error")),
        });
        if let (Some(now), Some(_)) = (now, &reason) {
            self.note_cancel(now);
            self.fail_reason.clone_from(&reason);
            self.first_failure = Some(id);
        }
        match exit {
            Exit::Ok(_) => self.succeeded += 1,
            Exit::Err(_) => self.failed += 1,
            Exit::Panicked(_) => self.panicked += 1,
            Exit::Aborted => self.aborted += 1,
        }
        if self.keep_ok || !matches!(exit, Exit::Ok(_)) {
            self.reports.push_back(ChildReport { id, exit, ending });
            return (reason, None);
        }
        (reason, Some(exit))
    }

    /// The reason a fail-fast failure cancels the scope with, once one has.
    pub(super) fn fail_reason(&self) -> Option<&Reason> {
        self.fail_reason.as_ref()
    }

    pub(super) fn has_reports(&self) -> bool {
        !self.reports.is_empty()
    }

    pub(super) fn take_next(&mut self) -> Option<ChildReport<T, E>> {
        self.reports.pop_front()
    }

    /// `token_reason` is the token's: the first cancel wins, a fail-fast one in flight next.
    pub(super) fn into_report(self, token_reason: Option<Reason>) -> ScopeReport<T, E> {
        let cancel_reason = token_reason.or(self.fail_reason);
        ScopeReport {
            children: self.reports.into(),
            spawned: self.spawned,
            succeeded: self.succeeded,
            failed: self.failed,
            panicked: self.panicked,
            aborted: self.aborted,
            cancel_reason,
            first_failure: self.first_failure,
        }
    }
}
