//! The operation front: one call, or a wrapper for a pipeline's attempts, and their future.

use std::future::Future;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::decide::Fault;
use super::{Chaos, InjectedFault};
use crate::rt::Clock;

impl<R: Clock> Chaos<R> {
    /// Calls `op` with this call's injection: see [`Call`] for what each fault does.
    ///
    /// `op` is called at once unless the call gets an error or a hang (then never); with
    /// latency, its future is first polled once the delay has passed, so an `async` block
    /// starts its work after the delay (code in the closure before the block runs at once).
    /// The delay runs from this call, not from the future's first poll: a `Call` awaited
    /// later waits less, and a call through two handles (chaos inside chaos) waits the longer
    /// of their delays, not their sum.
    ///
    /// **Cancel safety:** dropping the future drops the delay's timer and the operation's
    /// future, whatever it was doing; nothing else is held.
    ///
    /// ```
    /// use tidewall::chaos::{Chaos, InjectedFault};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tidewall::ConfigError> {
    /// let chaos = Chaos::builder().error(1.0).build()?;
    /// let mut ran = false;
    /// let result: Result<u32, InjectedFault> = chaos.call(|| { ran = true; async { Ok(1) } }).await;
    /// assert_eq!(result, Err(InjectedFault::Error));
    /// assert!(!ran, "an injected error does not run the operation");
    /// # Ok(()) }
    /// ```
    // Always, as `poll`: a call that is not inlined returns its future through memory, and
    // the caller reading it back stalls on store forwarding (measured: ~10 ns a call).
    #[inline(always)]
    pub fn call<F, Fut, T, E>(&self, op: F) -> Call<Fut, R>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: From<InjectedFault>,
    {
        // One call site for `op` and one out-of-line call for the whole fault: the least code
        // inlined into the caller's state machine (more made a pipeline too big to inline).
        let injected = if self.armed() { self.injected() } else { None };
        let runs = injected.as_ref().is_none_or(|injected| injected.runs_op());
        Call {
            injected: Slot(ManuallyDrop::new(injected)),
            op: if runs { Some(op()) } else { None },
        }
    }

    /// `op` as an operation for [`Pipeline::call`](crate::pipeline::Pipeline::call), each of
    /// its attempts a [`call`](Self::call) through this handle: the innermost stage, so the
    /// pipeline's attempt timeout, breaker, retry and deadline all see the injected faults.
    ///
    /// **Cancel safety:** as [`call`](Self::call), per attempt.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tidewall::chaos::{Chaos, InjectedFault};
    /// use tidewall::pipeline::Pipeline;
    /// use tidewall::{Backoff, Error};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let chaos = Chaos::builder().error(1.0).build()?;
    /// let pipeline = Pipeline::builder()
    ///     .retry(Backoff::constant(Duration::from_millis(10)).max_attempts(3).build()?)
    ///     .build()?;
    /// let mut calls = 0;
    /// let result = pipeline
    ///     .call(chaos.wrap(|| {
    ///         calls += 1;
    ///         async { Ok::<_, InjectedFault>("fresh") }
    ///     }))
    ///     .await;
    /// assert_eq!(result, Err(Error::Inner(InjectedFault::Error)));
    /// assert_eq!((calls, chaos.decided()), (0, 3), "three attempts, each failed before the op");
    /// # Ok(()) }
    /// ```
    #[inline]
    pub fn wrap<F, Fut, T, E>(&self, mut op: F) -> impl FnMut() -> Call<Fut, R>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: From<InjectedFault>,
    {
        move || self.call(&mut op)
    }

    /// The next call's fault, boxed (`None` for nothing): drawn, counted, and its timer
    /// started. Out of line: its pointer comes back in a register, and the calls given
    /// nothing do not carry its code.
    #[inline(never)]
    fn injected(&self) -> Option<Pin<Box<Injected<R::Sleep>>>> {
        let injection = self.draw();
        if injection.is_none() {
            return None;
        }
        // The timer first: the delay is measured from the call.
        let delay = injection
            .latency
            .map(|latency| self.shared.rt.sleep(latency));
        let then = match injection.fault {
            None => Then::Return,
            Some(Fault::Alter) => Then::Alter,
            Some(Fault::Error) => Then::Fail,
            Some(Fault::Hang) => Then::Hang,
        };
        Some(Box::pin(Injected { delay, then }))
    }
}

pin_project! {
    /// The future of one call through [`Chaos`] ([`Chaos::call`], [`Chaos::wrap`], the tower
    /// service): the operation's result, or its injected fault.
    ///
    /// * latency: the call waits on the runtime's clock, then goes on (to its result or its
    ///   fault);
    /// * error: `Err(E::from(InjectedFault::Error))`, the operation never called;
    /// * hang: never ready, the operation never called (it registers no waker: only a
    ///   deadline or timeout around it, which drops it, ends it);
    /// * alter: the operation's error as it is, or for its success
    ///   `Err(E::from(InjectedFault::Altered))` (the value is dropped).
    ///
    /// A call given nothing holds the operation's future and an empty pointer; a call given a
    /// fault keeps the fault (and its timer) in one allocation.
    ///
    /// **Cancel safety:** dropping it drops the delay's timer and the operation's future;
    /// nothing else is held.
    ///
    /// **Panics:** none of its own. The delay's timer is dropped where no unwind may pass (so
    /// that a call given nothing stays as cheap as it is): a runtime's timer that panicked
    /// while being dropped would abort the process.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tidewall::chaos::{Call, Chaos, InjectedFault};
    /// use tidewall::rt::Tokio;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tidewall::ConfigError> {
    /// let chaos = Chaos::builder().latency(1.0, Duration::from_millis(20)).error(1.0).build()?;
    /// let call: Call<_, Tokio> = chaos.call(|| async { Ok::<(), InjectedFault>(()) });
    /// let start = tokio::time::Instant::now();
    /// assert_eq!(call.await, Err(InjectedFault::Error));
    /// assert_eq!(start.elapsed(), Duration::from_millis(20), "a slow failure");
    /// # Ok(()) }
    /// ```
    #[must_use = "futures do nothing unless polled"]
    pub struct Call<Fut, R: Clock> {
        // Boxed: a timer is large (a tokio one is 112 bytes), and moving it with every call
        // given nothing cost more (measured) than an allocation for each call given a fault.
        // First, so it is dropped first: its test, then the operation's own drop.
        injected: Slot<R::Sleep>,
        // `None` for an error or a hang: the operation was never called.
        #[pin]
        op: Option<Fut>,
    }
}

/// A call's fault, if it has one. Dropping it is a test of the pointer here, and the fault's
/// own drop (its timer's) out of line: inlined, a timer's drop made a call's drop glue too
/// big to inline, and every call given nothing paid for calling it (measured: ~2 ns).
/// `ManuallyDrop`: the out-of-line drop empties it, so it needs no drop glue of its own.
struct Slot<Sleep>(ManuallyDrop<Option<Pin<Box<Injected<Sleep>>>>>);

impl<Sleep> Drop for Slot<Sleep> {
    #[inline(always)]
    fn drop(&mut self) {
        if self.0.is_some() {
            drop_injected(&mut self.0);
        }
    }
}

/// Drops the fault in `slot`, leaving it empty. `extern "C"`, so that it cannot unwind: a
/// call that could would give every call's drop glue a landing pad, a second copy of the
/// operation's drop, which made that glue too big to inline (measured: ~0.8 ns a call under
/// the tower layer). A runtime timer whose drop panicked would abort the process here.
#[cold]
#[inline(never)]
extern "C" fn drop_injected<Sleep>(slot: &mut ManuallyDrop<Option<Pin<Box<Injected<Sleep>>>>>) {
    drop(slot.take());
}

pin_project! {
    /// A call's fault: its delay, if any, then what it does.
    struct Injected<Sleep> {
        #[pin]
        delay: Option<Sleep>,
        then: Then,
    }
}

impl<Sleep> Injected<Sleep> {
    /// Whether the operation is called: not for an error or a hang.
    fn runs_op(&self) -> bool {
        matches!(self.then, Then::Return | Then::Alter)
    }
}

/// What a call given a fault does once its delay (if any) is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// The operation's result (the call was only delayed).
    Return,
    /// The operation's error, or [`InjectedFault::Altered`] for its success.
    Alter,
    /// [`InjectedFault::Error`]; the operation was never called.
    Fail,
    /// Nothing, ever; the operation was never called.
    Hang,
}

impl<Fut, R, T, E> Future for Call<Fut, R>
where
    Fut: Future<Output = Result<T, E>>,
    R: Clock,
    E: From<InjectedFault>,
{
    type Output = Result<T, E>;

    // Always: a poll that is not inlined hands its output back through memory, and reading it
    // back stalls on store forwarding (measured: several ns of a call given nothing). For the
    // same reason the fault's own steps are out of line but return only a byte: the one
    // result a call can produce is made here, in one place.
    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // Both faults leave through one call of `fault`: the less code, the likelier a
        // caller's state machine inlines this poll.
        let kind = 'fault: {
            let alter = match &mut *this.injected.0 {
                None => false,
                Some(injected) => match step(injected.as_mut(), cx) {
                    Step::Wait => return Poll::Pending,
                    Step::Fail => break 'fault InjectedFault::Error,
                    Step::Run => false,
                    Step::Alter => true,
                },
            };
            // `None` only for an error or a hang, which `step` ended above.
            let Some(op) = this.op.as_pin_mut() else {
                return Poll::Pending;
            };
            let result = ready!(op.poll(cx));
            if !(alter && result.is_ok()) {
                return Poll::Ready(result);
            }
            InjectedFault::Altered
        };
        Poll::Ready(Err(fault(kind)))
    }
}

/// `fault` as the caller's error: out of line, being rare (a box, for a boxed error type).
#[inline(never)]
#[cold]
fn fault<E: From<InjectedFault>>(fault: InjectedFault) -> E {
    E::from(fault)
}

/// What a call given a fault does on this poll.
enum Step {
    /// Still delayed, or hanging: pending.
    Wait,
    /// Fail with [`InjectedFault::Error`].
    Fail,
    /// Poll the operation.
    Run,
    /// Poll the operation, and alter its success.
    Alter,
}

/// The fault's part of a poll: waits out the delay, then says what the call does.
#[inline(never)]
#[cold]
fn step<Sleep: Future<Output = ()>>(
    injected: Pin<&mut Injected<Sleep>>,
    cx: &mut Context<'_>,
) -> Step {
    let mut injected = injected.project();
    if let Some(delay) = injected.delay.as_mut().as_pin_mut() {
        if delay.poll(cx).is_pending() {
            return Step::Wait;
        }
        injected.delay.set(None);
    }
    match injected.then {
        Then::Return => Step::Run,
        Then::Alter => Step::Alter,
        Then::Fail => Step::Fail,
        // No waker registered: nothing will ever wake it.
        Then::Hang => Step::Wait,
    }
}

impl<Fut, R: Clock> std::fmt::Debug for Call<Fut, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = f.debug_struct("Call");
        if let Some(injected) = &*self.injected.0 {
            out.field("delayed", &injected.delay.is_some());
            out.field("then", &injected.then);
        }
        out.finish_non_exhaustive()
    }
}
