//! Event listeners: a closure a builder's `on_event` gives a policy, called with each thing it
//! does. Not behind a feature: a policy without a listener pays one branch per event.

use std::time::Duration;

use crate::Rejected;
use crate::breaker::StateChange;

/// Something a policy did, handed to the listener set with the builder's `on_event`
/// ([`CircuitBreakerBuilder`](crate::breaker::CircuitBreakerBuilder::on_event),
/// [`BulkheadBuilder`](crate::bulkhead::BulkheadBuilder::on_event),
/// [`RateLimiterBuilder`](crate::rate::RateLimiterBuilder::on_event),
/// [`AdaptiveLimiterBuilder`](crate::adaptive::AdaptiveLimiterBuilder::on_event),
/// [`PipelineBuilder`](crate::pipeline::PipelineBuilder::on_event),
/// [`HedgeBuilder`](crate::hedge::HedgeBuilder::on_event), and, feature `http`,
/// `ClientPoliciesBuilder::on_event`).
///
/// Listeners run on the caller's thread, in the call, after the policy's state has changed:
/// keep them short (count, log, send on a channel) and never call the same policy from one.
///
/// A listener that panics unwinds into the call it was told of, as a panic of the caller's own
/// code would, and the policy loses nothing to it: a bulkhead's (or adaptive limiter's) slot
/// granted to a queued caller is given back, and a breaker permit whose outcome listener
/// panics records nothing and gives a half-open probe's slot back, as any permit unwound by a
/// panic does. A retry budget is the exception: a retry (or hedge) is drawn from it before
/// the listener hears [`RetryScheduled`](EventKind::RetryScheduled)
/// ([`HedgeLaunched`](EventKind::HedgeLaunched)), so one whose listener panics stays drawn,
/// though it never runs. A listener told while its thread is already unwinding (a call or a
/// guard dropped by another panic, such as an HTTP request whose send panicked, heard as
/// [`Cancelled`](EventKind::Cancelled)) is heard too, but its own panic is dropped there: a
/// second panic would abort the process. So an HTTP request whose listener panics on, say,
/// its `RetryScheduled` is then heard once more, ending as `Cancelled`: the panic drops the
/// request on its way out of the call.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use tidewall::breaker::CircuitBreaker;
/// use tidewall::telemetry::{Event, EventKind};
///
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let log = Arc::clone(&seen);
/// let breaker = CircuitBreaker::builder()
///     .name("payments")
///     .consecutive_failures(1)
///     .on_event(move |event: &Event<'_>| log.lock().unwrap().push(format!("{}: {:?}", event.name, event.kind)))
///     .build()?;
/// breaker.try_acquire().unwrap().failure();
/// assert!(breaker.try_acquire().is_err());
///
/// let seen = seen.lock().unwrap();
/// assert_eq!(seen[0], "payments: Failed");
/// assert!(seen[1].starts_with("payments: StateChanged"));
/// assert!(seen[2].starts_with("payments: Rejected(CircuitOpen"));
/// # Ok::<(), tidewall::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Event<'a> {
    /// The policy's kind, as the metrics' `policy` label: `breaker`, `bulkhead`, `adaptive`,
    /// `rate`, `pipeline`, `hedge` or `http_client`; a keyed breaker's, bulkhead's or adaptive
    /// limiter's own refusals (a full table) come as `keyed_breaker`, `keyed_bulkhead` or
    /// `keyed_adaptive` (the labels of the tables' gauges), and its keys' events as the
    /// policy's; a keyed rate limiter's refusals all come as `keyed_rate`, a key's and a full
    /// table's alike (both are `RateLimited`).
    pub policy: &'static str,
    /// The policy's name.
    pub name: &'a str,
    /// The key the event is of:
    /// - an event of one key's breaker in a keyed table that labels its keys
    ///   ([`key_label`](crate::breaker::KeyedCircuitBreakerBuilder::key_label)): an HTTP
    ///   client's per-host breakers carry their authority (`https://api.example:443`), so a
    ///   listener knows which host tripped;
    /// - an HTTP client's events of a request (policy `http_client`): the request's authority,
    ///   so a listener can count requests, refusals and retries per host.
    ///
    /// `None` for every other event.
    pub key: Option<&'a str>,
    /// What happened.
    pub kind: EventKind<'a>,
}

/// What happened, in an [`Event`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum EventKind<'a> {
    /// A call ended well: a breaker's permit recorded a success, or a pipeline call's (an
    /// HTTP client request's, a hedged call's) final result was judged one by its classifier.
    Succeeded,
    /// A call failed (as above).
    Failed,
    /// A call ended with an outcome that says nothing of the service (as above).
    Ignored,
    /// A pipeline call's (an HTTP client request's) last attempt timed out.
    TimedOut,
    /// A pipeline call (an HTTP client request) was dropped before it ended (after its first poll: a call never
    /// polled never started).
    Cancelled,
    /// A caller was refused, finally (a wait that ends admitted is not a refusal). A
    /// pipeline that retries past an open breaker makes the breaker refuse each attempt it
    /// refuses.
    Rejected(&'a Rejected),
    /// A breaker changed state.
    StateChanged(&'a StateChange<'a>),
    /// A pipeline (an HTTP client) will retry after `delay` (jitter, cap and hints applied).
    RetryScheduled {
        /// The attempt that failed (1 for the first).
        attempt: u32,
        /// The sleep before the next attempt.
        delay: Duration,
    },
    /// A pipeline (an HTTP client) would have retried, or a hedge launched another attempt, but its budget
    /// was spent.
    BudgetExhausted,
    /// A hedge launched another copy of the call.
    HedgeLaunched {
        /// Which hedge: 1 for the first (the primary attempt is not one).
        hedge: u32,
    },
    /// A bulkhead admitted a caller that had waited in its queue this long.
    Waited(Duration),
}

/// A listener, shared by clones of its policy (and the keys of a keyed table).
#[derive(Clone)]
pub(crate) struct Listener(std::sync::Arc<dyn Fn(&Event<'_>) + Send + Sync>);

impl Listener {
    // A std Arc even under loom: loom's Arc cannot hold an unsized closure.
    pub(crate) fn new(listener: impl Fn(&Event<'_>) + Send + Sync + 'static) -> Self {
        Self(std::sync::Arc::new(listener))
    }

    /// Tells the listener what `policy` named `name` did. Out of line: the policies' call
    /// paths stay as small as they are without listeners, which keeps the compiler inlining
    /// them as it did (a breaker's closed path lost 2 ns to a changed inlining when this
    /// call was inline).
    #[inline(never)]
    pub(crate) fn tell(
        &self,
        policy: &'static str,
        name: &str,
        key: Option<&str>,
        kind: EventKind<'_>,
    ) {
        let event = Event {
            policy,
            name,
            key,
            kind,
        };
        if std::thread::panicking() {
            // Told by a drop during another panic's unwinding: a panic here would abort.
            let told = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.0)(&event)));
            drop(told);
        } else {
            (self.0)(&event);
        }
    }

    /// Passes on an event told to another listener.
    #[cfg(feature = "serde")]
    pub(crate) fn forward(&self, event: &Event<'_>) {
        (self.0)(event);
    }
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Listener")
    }
}

/// Tells a listener (`tell`) about something the caller has taken and no guard holds yet: if
/// the listener panics, `give_back` runs as it unwinds, so the policy loses nothing to it.
pub(crate) fn tell_or_give_back(tell: impl FnOnce(), give_back: impl FnOnce()) {
    struct OnUnwind<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for OnUnwind<F> {
        fn drop(&mut self) {
            if let Some(give_back) = self.0.take() {
                give_back();
            }
        }
    }
    let mut unwinding = OnUnwind(Some(give_back));
    tell();
    unwinding.0 = None;
}

/// Steps that each may call listeners (policies taking new settings, say), run so that a
/// listener that panics in one does not stop the others: the first panic is kept, to be
/// raised again once every step has run.
#[derive(Default)]
pub(crate) struct ListenerPanics {
    first: Option<Box<dyn std::any::Any + Send>>,
}

impl ListenerPanics {
    /// Runs `step`: its result, or `None` if it panicked.
    pub(crate) fn run<T>(&mut self, step: impl FnOnce() -> T) -> Option<T> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(step)) {
            Ok(done) => Some(done),
            Err(panic) => {
                self.first.get_or_insert(panic);
                None
            }
        }
    }

    /// If a step panicked: runs `first` (what must happen before the panic goes on), then
    /// raises the first panic again.
    pub(crate) fn resume(self, first: impl FnOnce()) {
        if let Some(panic) = self.first {
            first();
            std::panic::resume_unwind(panic);
        }
    }
}
