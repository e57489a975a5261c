//! What the engine calls for each attempt: any `FnMut() -> Fut`, or a front's own operation
//! that gives its input away on the last attempt it can make.

use std::future::Future;

/// One attempt after another of a call's work.
///
/// Every `FnMut() -> Fut` is one, and ignores what `attempt` is told. The tower
/// `PipelineLayer`'s own sends its request itself, not a copy, when no retry could follow
/// (or the request cannot be copied), and says so through `repeatable`.
pub(crate) trait Operation {
    type Attempt: Future;

    /// Starts an attempt. `retry_possible` says whether a failure of it could still be
    /// retried (the schedule and the budget allow one); it reads the budget, so it is asked
    /// only by an operation that needs the answer.
    fn attempt(&mut self, retry_possible: impl FnOnce() -> bool) -> Self::Attempt;

    /// Whether another attempt can be made after those started: false once the operation
    /// has given away what every attempt needs. The engine then ends the call with the last
    /// attempt's result, as when its attempts run out.
    fn repeatable(&self) -> bool {
        true
    }

    /// The refusal an attempt's `output` is, when a policy below the pipeline refused the
    /// attempt (a tower layer under a `PipelineLayer`: a full bulkhead, an open breaker, a
    /// deadline below). The engine then treats it as its own breaker's refusal: recorded as
    /// `Ignored` by its breaker, teaching its admission stages nothing, not shown to the
    /// classifier, and retried after the refusal's `retry_after` (unless it can never pass);
    /// a call it ends counts as rejected.
    fn refused(output: &<Self::Attempt as Future>::Output) -> Option<crate::Rejected> {
        let _ = output;
        None
    }
}

impl<F, Fut> Operation for F
where
    F: FnMut() -> Fut,
    Fut: Future,
{
    type Attempt = Fut;

    #[inline(always)]
    fn attempt(&mut self, _: impl FnOnce() -> bool) -> Fut {
        self()
    }
}
