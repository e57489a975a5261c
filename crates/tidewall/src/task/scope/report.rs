//! What a scope tells its owner: how each child ended, and the scope as a whole.

use std::fmt;

use crate::rt::Panic;
use crate::task::{Ending, Exit, Reason};

/// Identifies a child within its scope: the order in which it was spawned, from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChildId(pub(crate) u64);

impl ChildId {
    /// The spawn order, from 0.
    pub fn index(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ChildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "child #{}", self.0)
    }
}

/// One child's end: how its future ended, and how (and how fast) it stopped.
///
/// [`Ending`] times run from the cancellation as the scope saw it: exact for
/// [`Scope::cancel`], `shutdown`, `join_within` and a fail-fast failure; for a cancellation
/// that reached the scope through its parent token (or its own token, cancelled directly),
/// from the moment the scope first noticed it (a join watching, or a child ending).
///
/// [`Scope::cancel`]: super::Scope::cancel
#[derive(Debug)]
#[non_exhaustive]
pub struct ChildReport<T, E> {
    /// Which child.
    pub id: ChildId,
    /// What it returned (`Ok`, `Err`), its panic with the payload, or [`Exit::Aborted`]:
    /// it ignored the scope's cancellation past the grace period and was aborted (dropped),
    /// or its task was dropped unfinished (its runtime shut down).
    ///
    /// A panic in the child's `Drop` right after it returned is its panic: it reads
    /// `Panicked` with that payload, and what it returned is dropped. A child that was
    /// aborted (or whose task was dropped unfinished) reads `Aborted` even if its `Drop`
    /// panics.
    pub exit: Exit<T, E, Panic>,
    /// Whether it ended on its own ([`Ending::Finished`]), after the scope was cancelled,
    /// within the grace period ([`Ending::Stopped`]), or by abort ([`Ending::Aborted`]).
    pub ending: Ending,
}

/// What to do when a child fails (returns `Err` or panics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// The first failure cancels the scope with a reason naming the child: siblings see the
    /// token cancelled, new spawns are refused, and a join aborts stragglers after the grace
    /// period.
    #[default]
    FailFast,
    /// Failures are recorded; the siblings go on.
    CollectAll,
}

/// Everything a closed scope knows: the children whose reports were not taken through
/// `next`, and counts over the scope's whole life.
#[derive(Debug)]
#[non_exhaustive]
pub struct ScopeReport<T, E> {
    /// Reports not yet taken with `next`, in the order the children ended.
    pub children: Vec<ChildReport<T, E>>,
    /// Children spawned over the scope's life.
    pub spawned: u64,
    /// Children that returned `Ok` (including reports dropped by `discard_ok`).
    pub succeeded: u64,
    /// Children that returned `Err`.
    pub failed: u64,
    /// Children that panicked (also in their `Drop` after they returned).
    pub panicked: u64,
    /// Children aborted after the grace period, or lost by their runtime (it shut down).
    pub aborted: u64,
    /// Why the scope was cancelled, if it was: a fail-fast failure or the owner's reason.
    pub cancel_reason: Option<Reason>,
    /// The child whose failure failed the scope fast, if one did.
    pub first_failure: Option<ChildId>,
}

impl<T, E> ScopeReport<T, E> {
    /// Every spawned child is in exactly one count: `spawned = succeeded + failed + panicked
    /// + aborted`, once the scope is closed.
    pub fn is_balanced(&self) -> bool {
        self.spawned == self.succeeded + self.failed + self.panicked + self.aborted
    }
}

/// Why a spawn did not happen: the future comes back, unpolled.
#[non_exhaustive]
pub enum SpawnError<F> {
    /// The scope is at its limit (only from `try_spawn`).
    Full(F),
    /// The scope is closed or cancelled (joined, shut down, or failed fast).
    Closed(F),
}

impl<F> SpawnError<F> {
    /// The future, handed back.
    pub fn into_future(self) -> F {
        match self {
            Self::Full(future) | Self::Closed(future) => future,
        }
    }
}

impl<F> fmt::Debug for SpawnError<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Full(_) => "Full(..)",
            Self::Closed(_) => "Closed(..)",
        })
    }
}

impl<F> fmt::Display for SpawnError<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Full(_) => "the scope is at its limit of running children",
            Self::Closed(_) => "the scope is closed or cancelled",
        })
    }
}

impl<F> std::error::Error for SpawnError<F> {}
