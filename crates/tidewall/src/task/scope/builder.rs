//! The one builder both scope variants are made from.

use std::time::Duration;

use super::local::LocalScope;
use super::report::FailurePolicy;
use super::tasks::Scope;
use crate::ConfigError;
use crate::rt::{DefaultRuntime, Runtime};
use crate::task::CancellationToken;

/// Configures a [`Scope`] or a [`LocalScope`]; see [`Scope::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct ScopeBuilder<R = DefaultRuntime> {
    pub(super) rt: R,
    pub(super) limit: Option<usize>,
    pub(super) policy: FailurePolicy,
    pub(super) grace: Duration,
    pub(super) keep_ok: bool,
    pub(super) parent: Option<CancellationToken>,
}

/// How long a cancelled scope's children get to stop on their own before they are aborted,
/// unless [`ScopeBuilder::grace`] says otherwise.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

impl ScopeBuilder {
    pub(super) fn new() -> Self {
        Self {
            rt: DefaultRuntime::default(),
            limit: None,
            policy: FailurePolicy::FailFast,
            grace: DEFAULT_GRACE,
            keep_ok: true,
            parent: None,
        }
    }
}

impl<R> ScopeBuilder<R> {
    /// Runs the children on (and times the grace period with) `rt`.
    pub fn runtime<R2: Runtime>(self, rt: R2) -> ScopeBuilder<R2> {
        ScopeBuilder {
            rt,
            limit: self.limit,
            policy: self.policy,
            grace: self.grace,
            keep_ok: self.keep_ok,
            parent: self.parent,
        }
    }

    /// At most `max_running` children at once: `spawn` waits for a free slot and `try_spawn`
    /// hands the future back. Unlimited by default.
    ///
    /// Not FIFO: when a child ends, every spawn waiting for a slot is woken, and the first
    /// polled takes it. A child that awaits `spawn` on its own scope holds a slot while it
    /// waits for one: with every slot held by such children, none ever frees (a deadlock
    /// that only cancelling the scope ends); use `try_spawn` there.
    pub fn limit(mut self, max_running: usize) -> Self {
        self.limit = Some(max_running);
        self
    }

    /// Fail-fast (the default) or collect-all.
    pub fn policy(mut self, policy: FailurePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// How long children get, once the scope is cancelled, to stop on their own before a
    /// join aborts them ([`DEFAULT_GRACE`] by default; zero aborts at once).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Drops each `Ok` result as it arrives (it is still counted), so a long-lived scope whose
    /// owner never reads results holds nothing for its finished children. Failures are kept
    /// until read (under `CollectAll`, a long-lived scope's owner should take them with
    /// `next`; fail-fast scopes stop at the first).
    ///
    /// A value is dropped on the thread of the child that made it, after the child's end is
    /// recorded. If its `Drop` panics, the child still counts as succeeded and whoever waits
    /// on the scope (`join`, `next`, a `spawn` waiting for a slot) is still woken; the panic
    /// goes on to the child's task, as any panic of a task does on its runtime (for a
    /// `LocalScope`, to the owner polling it).
    pub fn discard_ok(mut self) -> Self {
        self.keep_ok = false;
        self
    }

    /// Makes the scope's token a child of `parent`: cancelling `parent` cancels the scope.
    pub fn parent(mut self, parent: &CancellationToken) -> Self {
        self.parent = Some(parent.clone());
        self
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.limit == Some(0) {
            return Err(ConfigError::Zero { field: "limit" });
        }
        if u64::try_from(self.grace.as_nanos()).is_err() {
            return Err(ConfigError::DurationOverflow { field: "grace" });
        }
        Ok(())
    }

    pub(super) fn token(&self) -> CancellationToken {
        self.parent
            .as_ref()
            .map_or_else(CancellationToken::new, CancellationToken::child)
    }
}

impl<R: Runtime> ScopeBuilder<R> {
    /// A scope whose children are tasks on the runtime (`Send` futures, run in parallel).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for a zero limit, [`ConfigError::DurationOverflow`] for a grace
    /// period beyond `u64::MAX` nanoseconds.
    pub fn build<T, E>(self) -> Result<Scope<T, E, R>, ConfigError>
    where
        T: Send + 'static,
        E: Send + 'static,
    {
        self.validate()?;
        Ok(Scope::from_builder(self))
    }

    /// A scope for `!Send` futures, driven by whoever awaits it (see [`LocalScope`]).
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build).
    pub fn build_local<T: 'static, E: 'static>(self) -> Result<LocalScope<T, E, R>, ConfigError> {
        self.validate()?;
        Ok(LocalScope::from_builder(self))
    }
}
