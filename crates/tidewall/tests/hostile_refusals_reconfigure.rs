#![cfg(all(
    feature = "tokio",
    feature = "smol",
    feature = "async-std",
    feature = "test-util",
    feature = "tower"
))]
//! Hostile black-box tests, written from the public docs alone, of the contracts changed
//! together: a refusal or readiness timeout in the tower waiting modes (`AdmitMode::WaitReady`,
//! `BreakerLayer::wait_in_ready`, `TimeoutLayer`) is never a `poll_ready` error but the next
//! call's; `CircuitBreaker::reconfigure`, `state_and_generation`, `force_open_if` and
//! `reset_if` under idle gaps, races and many transitions; keyed tables whose listeners call
//! back into the same table (with a hang detector); and the keyed breaker's idle rule.
//!
//! Every test quotes the doc sentence it checks. Time is virtual (`FakeClock`, `Clocked`),
//! randomness seeded (`SplitMix64`); the only real waits are the hang detector's.

mod admit_support;
mod common;
mod support;

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier, Mutex, OnceLock, mpsc};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use admit_support::{Poller, settle};
use common::ms;
use tidewall::adaptive::{AdaptiveLimiter, Aimd, KeyedAdaptiveLimiter};
use tidewall::breaker::{
    CircuitBreaker, CircuitBreakerBuilder, KeyedCircuitBreaker, Reconfigured, State, StateChange,
    TripReason, Window,
};
use tidewall::bulkhead::{Bulkhead, KeyedBulkhead};
use tidewall::rate::RateLimiter;
use tidewall::rt::{Clock, Runtime, Spawn, TaskHandle};
use tidewall::telemetry::{Event, EventKind};
use tidewall::testing::{Clocked, FakeClock};
use tidewall::tower::{AdmitLayer, AdmitMode, BreakerLayer, RetryLayer, TimeoutLayer};
use tidewall::{Backoff, Deadline, Error, FutureExt as _, Jitter, Rejected};
use tidewall_core::rng::SplitMix64;
use tower::ServiceExt;
use tower_layer::Layer;
use tower_service::Service;

const HOUR: Duration = Duration::from_secs(3_600);
const YEAR: Duration = Duration::from_secs(365 * 86_400);
const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);

// === setup: a backend, manual polling, seeded draws ========================================

/// The backend's own error.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Down(u64);

impl std::fmt::Display for Down {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "request {} failed", self.0)
    }
}

impl std::error::Error for Down {}

/// One request: its id, how long the backend takes, and whether it fails.
#[derive(Debug, Clone, Copy)]
struct Req {
    id: u64,
    ms: u64,
    fail: bool,
}

fn req(id: u64, ms: u64) -> Req {
    Req {
        id,
        ms,
        fail: false,
    }
}

/// The service under the layers: sleeps `ms` on its clock, then answers `Ok(id)` or
/// `Err(Error::Inner(Down(id)))`. It records every id it was called with.
#[derive(Clone)]
struct Backend<R> {
    rt: R,
    called: Arc<Mutex<Vec<u64>>>,
    running: Arc<AtomicUsize>,
}

impl<R: Clock> Backend<R> {
    fn new(rt: &R) -> Self {
        Self {
            rt: rt.clone(),
            called: Arc::default(),
            running: Arc::default(),
        }
    }

    fn calls(&self) -> usize {
        self.called.lock().unwrap().len()
    }

    fn called(&self) -> Vec<u64> {
        self.called.lock().unwrap().clone()
    }
}

struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

struct BackendCall<R: Clock> {
    sleep: Pin<Box<R::Sleep>>,
    req: Req,
    _running: Running,
}

impl<R: Clock> Future for BackendCall<R> {
    type Output = Result<u64, Error<Down>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        Poll::Ready(if self.req.fail {
            Err(Error::Inner(Down(self.req.id)))
        } else {
            Ok(self.req.id)
        })
    }
}

impl<R: Clock> Service<Req> for Backend<R> {
    type Response = u64;
    type Error = Error<Down>;
    type Future = BackendCall<R>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error<Down>>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> BackendCall<R> {
        self.called.lock().unwrap().push(req.id);
        self.running.fetch_add(1, SeqCst);
        BackendCall {
            sleep: Box::pin(self.rt.sleep(ms(req.ms))),
            req,
            _running: Running(self.running.clone()),
        }
    }
}

/// `poll_ready` as a future.
fn ready<S: Service<Req>>(svc: &mut S) -> impl Future<Output = Result<(), S::Error>> + '_ {
    std::future::poll_fn(move |cx| svc.poll_ready(cx))
}

/// Compiles only if `S`'s error is `E`: the stack's own error type, one level deep.
fn error_type_is<E, S: Service<Req, Error = E>>(_: &S) {}

struct Rng(SplitMix64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(SplitMix64::new(seed))
    }
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0.below_or_equal(n - 1)
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
    /// Uniform in `0..n`, as an index.
    fn index(&mut self, n: usize) -> usize {
        usize::try_from(self.below(n as u64)).unwrap()
    }
}

/// Counts the `Rejected` events a policy tells its listener.
fn refusal_counter() -> (
    Arc<AtomicUsize>,
    impl Fn(&Event<'_>) + Send + Sync + 'static,
) {
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    (count, move |event: &Event<'_>| {
        if let EventKind::Rejected(_) = event.kind {
            counted.fetch_add(1, SeqCst);
        }
    })
}

fn is_refusal<T>(out: &Result<T, Error<Down>>) -> bool {
    matches!(out, Err(Error::Rejected(_)))
}

/// Waits for `svc` to be ready; it must be ready within an hour and never with an error.
fn ready_ok<S: Service<Req>>(clock: &FakeClock, poller: &Poller, svc: &mut S)
where
    S::Error: std::fmt::Debug,
{
    let out = settle(clock, poller, clock.now() + HOUR, |cx| svc.poll_ready(cx));
    match out {
        Some(Ok(())) => {}
        Some(Err(e)) => panic!("poll_ready failed: {e:?} (a refusal is never a poll_ready error)"),
        None => panic!("never ready within an hour"),
    }
}

/// Calls `svc` (ready or not) and drives the call to its end. A refusal must come at once,
/// with the backend not called.
fn call_to_end<S>(
    clock: &FakeClock,
    poller: &Poller,
    backend: &Backend<FakeClock>,
    svc: &mut S,
    r: Req,
) -> Result<u64, Error<Down>>
where
    S: Service<Req, Response = u64, Error = Error<Down>>,
{
    drive_call(clock, poller, backend, svc, r, true)
}

/// As [`call_to_end`]; a refusal must come at once only if `at_once` (a retry above waits
/// between attempts).
fn drive_call<S>(
    clock: &FakeClock,
    poller: &Poller,
    backend: &Backend<FakeClock>,
    svc: &mut S,
    r: Req,
    at_once: bool,
) -> Result<u64, Error<Down>>
where
    S: Service<Req, Response = u64, Error = Error<Down>>,
{
    let before = backend.calls();
    let at = clock.now();
    let mut fut = pin!(svc.call(r));
    let out = settle(clock, poller, clock.now() + HOUR, |cx| {
        fut.as_mut().poll(cx)
    })
    .unwrap_or_else(|| panic!("{r:?}: the call never ended"));
    if is_refusal(&out) {
        assert_eq!(
            backend.calls(),
            before,
            "{r:?} was refused ({out:?}) yet the backend was called"
        );
        if at_once {
            assert_eq!(clock.now(), at, "{r:?}: a refusal fails the call at once");
        }
    }
    out
}

// === 1. tower waiting modes: a refusal is the next call's error ============================

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cause {
    FullQueue,
    StageMaxWait,
    LayerMaxWait,
}

impl Cause {
    const ALL: [Self; 3] = [Self::FullQueue, Self::StageMaxWait, Self::LayerMaxWait];

    /// How long `poll_ready` waits before the refusal.
    fn waits(self) -> Duration {
        match self {
            Self::FullQueue => Duration::ZERO,
            _ => ms(50),
        }
    }

    fn refusal(self) -> Rejected {
        match self {
            Self::LayerMaxWait => Rejected::DeadlineExceeded,
            _ => Rejected::BulkheadFull,
        }
    }
}

/// A one-slot bulkhead whose waits are refused for `cause`, and a `WaitReady` layer over it.
struct Refusing {
    clock: FakeClock,
    bulkhead: Bulkhead<FakeClock>,
    backend: Backend<FakeClock>,
    refusals: Arc<AtomicUsize>,
    layer: AdmitLayer<Bulkhead<FakeClock>, FakeClock>,
}

fn refusing(cause: Cause) -> Refusing {
    let clock = FakeClock::new();
    let (refusals, listener) = refusal_counter();
    let builder = Bulkhead::builder(1)
        .runtime(clock.clone())
        .on_event(listener);
    let builder = match cause {
        Cause::FullQueue => builder.max_queue(0),
        Cause::StageMaxWait => builder.max_queue(4).max_wait(ms(50)),
        Cause::LayerMaxWait => builder.max_queue(4).max_wait(None),
    };
    let bulkhead = builder.build().unwrap();
    let mut layer = AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitReady).runtime(clock.clone());
    if cause == Cause::LayerMaxWait {
        layer = layer.max_wait(ms(50));
    }
    Refusing {
        backend: Backend::new(&clock),
        clock,
        bulkhead,
        refusals,
        layer,
    }
}

// Docs (AdmitMode::WaitReady): "A wait the stage refuses (its `max_wait`, the layer's, a full
// queue) is never a `poll_ready` error ...: as `tower::load_shed` does, `poll_ready` then
// reports ready and the next call fails at once with the refusal, without calling the inner
// service." (AdmitLayer::max_wait): "a stage that cannot admit in time refuses with
// `Rejected::DeadlineExceeded`".
#[test]
fn wait_ready_refusals_of_every_cause_are_ready_then_the_next_calls_error_and_the_service_lives_on()
{
    for cause in Cause::ALL {
        let s = refusing(cause);
        let poller = Poller::new();
        let mut svc = s.layer.layer(s.backend.clone());
        error_type_is::<Error<Down>, _>(&svc);
        let held = s.bulkhead.try_acquire().unwrap();
        let start = s.clock.now();
        let ready = settle(&s.clock, &poller, start + HOUR, |cx| svc.poll_ready(cx));
        assert!(matches!(ready, Some(Ok(()))), "{cause:?}: {ready:?}");
        assert_eq!(s.clock.now() - start, cause.waits(), "{cause:?}");
        assert_eq!(
            s.bulkhead.queued(),
            0,
            "{cause:?}: the refused wait left the queue"
        );
        assert_eq!(s.refusals.load(SeqCst), 1, "{cause:?}: one refusal told");
        assert_eq!(s.bulkhead.rejected(), 1, "{cause:?}: one refusal counted");

        let at = s.clock.now();
        let out = poller.poll(pin!(svc.call(req(1, 5))));
        assert_eq!(
            out,
            Poll::Ready(Err(Error::Rejected(cause.refusal()))),
            "{cause:?}"
        );
        assert_eq!(s.clock.now(), at);
        assert_eq!(
            s.backend.calls(),
            0,
            "{cause:?}: the inner service not called"
        );
        assert_eq!(s.refusals.load(SeqCst), 1, "{cause:?}: not counted again");
        assert_eq!(s.bulkhead.rejected(), 1, "{cause:?}: not counted again");

        // The service lives on: a freed slot is taken in poll_ready and the call runs.
        drop(held);
        assert_eq!(poller.ready(&mut svc), Poll::Ready(Ok(())), "{cause:?}");
        assert_eq!(
            s.bulkhead.available(),
            0,
            "{cause:?}: the slot taken in poll_ready"
        );
        let out = call_to_end(&s.clock, &poller, &s.backend, &mut svc, req(2, 5));
        assert_eq!(out, Ok(2), "{cause:?}");
        assert_eq!(s.bulkhead.available(), 1, "{cause:?}");
        assert_eq!(s.clock.pending_timers(), 0, "{cause:?}");
    }
}

// Docs (AdmitMode::WaitReady): "A call made without a ready `poll_ready` (a breach of tower's
// contract) is not waited for: it is refused with the stage's own reason if the stage cannot
// admit it at once."
#[test]
fn a_second_call_after_one_ready_gets_the_stages_answer_now_not_the_old_refusal() {
    let s = refusing(Cause::LayerMaxWait);
    let poller = Poller::new();
    let mut svc = s.layer.layer(s.backend.clone());
    let held = s.bulkhead.try_acquire().unwrap();
    ready_ok(&s.clock, &poller, &mut svc);
    let first = call_to_end(&s.clock, &poller, &s.backend, &mut svc, req(1, 5));
    assert_eq!(first, Err(Error::Rejected(Rejected::DeadlineExceeded)));

    // Still full, no ready: refused at once with the bulkhead's own reason, nothing queued.
    let at = s.clock.now();
    let second = poller.poll(pin!(svc.call(req(2, 5))));
    assert_eq!(
        second,
        Poll::Ready(Err(Error::Rejected(Rejected::BulkheadFull)))
    );
    assert_eq!(s.clock.now(), at);
    assert_eq!((s.bulkhead.queued(), s.clock.pending_timers()), (0, 0));
    assert_eq!(s.refusals.load(SeqCst), 2, "each refusal counted once");

    // A free slot: the call without ready is admitted at once, and runs.
    drop(held);
    let third = call_to_end(&s.clock, &poller, &s.backend, &mut svc, req(3, 5));
    assert_eq!(third, Ok(3));
    assert_eq!(s.backend.called(), [3]);
    assert_eq!(s.bulkhead.available(), 1);
    assert_eq!(s.refusals.load(SeqCst), 2);
}

// Docs (AdmitService): "A clone shares the stage and starts with nothing admitted."
// (AdmitMode::WaitReady): "`poll_ready` then reports ready and the next call fails at once
// with the refusal, without calling the inner service."
#[test]
fn a_clone_of_a_service_holding_a_refusal_or_a_slot_starts_with_nothing_admitted() {
    let s = refusing(Cause::FullQueue);
    let poller = Poller::new();
    let mut svc = s.layer.clone().layer(s.backend.clone());
    let held = s.bulkhead.try_acquire().unwrap();
    assert_eq!(
        poller.ready(&mut svc),
        Poll::Ready(Ok(())),
        "refused: ready"
    );
    let mut clone = svc.clone();
    drop(held);
    assert_eq!(poller.ready(&mut clone), Poll::Ready(Ok(())));
    assert_eq!(s.bulkhead.available(), 0, "the clone was admitted for real");
    // The original still fails its next call with its own refusal.
    let out = poller.poll(pin!(svc.call(req(1, 5))));
    assert_eq!(
        out,
        Poll::Ready(Err(Error::Rejected(Rejected::BulkheadFull)))
    );
    assert_eq!(s.backend.calls(), 0);
    assert_eq!(
        call_to_end(&s.clock, &poller, &s.backend, &mut clone, req(2, 5)),
        Ok(2)
    );
    assert_eq!(s.bulkhead.available(), 1);

    // A clone of a service holding a slot holds nothing: with the one slot taken it is refused.
    assert_eq!(poller.ready(&mut svc), Poll::Ready(Ok(())));
    assert_eq!(s.bulkhead.available(), 0);
    let mut second = svc.clone();
    assert_eq!(poller.ready(&mut second), Poll::Ready(Ok(())));
    let out = poller.poll(pin!(second.call(req(3, 5))));
    assert_eq!(
        out,
        Poll::Ready(Err(Error::Rejected(Rejected::BulkheadFull)))
    );
    assert_eq!(
        s.refusals.load(SeqCst),
        2,
        "two refusals, each counted once"
    );
    // The slot goes back with the service holding it, and the clone lives on.
    drop(svc);
    assert_eq!(
        s.bulkhead.available(),
        1,
        "a dropped service gives its slot back"
    );
    assert_eq!(poller.ready(&mut second), Poll::Ready(Ok(())));
    assert_eq!(
        call_to_end(&s.clock, &poller, &s.backend, &mut second, req(4, 5)),
        Ok(4)
    );
    drop((clone, second));
    assert_eq!(s.bulkhead.available(), 1);
    assert_eq!(s.backend.called(), [2, 4]);
}

// Docs (AdmitLayer::max_wait): "a stage that cannot admit in time refuses with
// `Rejected::DeadlineExceeded`, at once when the wait is known to end later (a rate
// limiter's)". (AdmitMode::WaitReady) "`poll_ready` then reports ready and the next call fails
// at once with the refusal ... A call made without a ready `poll_ready` ... is refused with
// the stage's own reason if the stage cannot admit it at once."
#[test]
fn a_rate_limit_wait_known_to_end_too_late_is_ready_at_once_and_takes_no_cell() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let (refusals, listener) = refusal_counter();
    let limiter = RateLimiter::builder(1, Duration::from_secs(1))
        .burst(1)
        .jitter(Duration::ZERO)
        .runtime(clock.clone())
        .on_event(listener)
        .build()
        .unwrap();
    let backend = Backend::new(&clock);
    let mut svc = AdmitLayer::new(limiter, AdmitMode::WaitReady)
        .runtime(clock.clone())
        .max_wait(ms(300))
        .layer(backend.clone());
    let first = clock.now();
    assert_eq!(poller.ready(&mut svc), Poll::Ready(Ok(())));
    assert_eq!(
        call_to_end(&clock, &poller, &backend, &mut svc, req(1, 5)),
        Ok(1)
    );
    let start = clock.now();
    assert_eq!(
        poller.ready(&mut svc),
        Poll::Ready(Ok(())),
        "the next cell is 1 s away"
    );
    assert_eq!(refusals.load(SeqCst), 1);
    assert_eq!(
        call_to_end(&clock, &poller, &backend, &mut svc, req(2, 5)),
        Err(Error::Rejected(Rejected::DeadlineExceeded))
    );
    let again = call_to_end(&clock, &poller, &backend, &mut svc, req(3, 5));
    assert!(
        matches!(
            again,
            Err(Error::Rejected(Rejected::RateLimited { retry_after }))
                if retry_after <= Duration::from_secs(1) && retry_after > ms(300)
        ),
        "the limiter's own reason: {again:?}"
    );
    assert_eq!(refusals.load(SeqCst), 2, "each refusal counted once");
    assert_eq!(clock.now(), start, "no refusal waited");
    // The refusals took no cell: 800 ms on, the next cell is under 300 ms away, waited for.
    clock.advance(ms(800));
    ready_ok(&clock, &poller, &mut svc);
    assert_eq!(
        clock.now() - first,
        Duration::from_secs(1),
        "one cell a second"
    );
    assert_eq!(
        call_to_end(&clock, &poller, &backend, &mut svc, req(4, 5)),
        Ok(4)
    );
    assert_eq!(backend.called(), [1, 4]);
    assert_eq!(clock.pending_timers(), 0);
}

// Docs (AdmitMode::WaitReady, BreakerLayer::wait_in_ready, TimeoutLayer): a refusal or a
// readiness timeout "is never a `poll_ready` error ...: `poll_ready` reports ready and the
// next call fails at once with the refusal, the inner service not called". (wait_in_ready)
// "**Cancel safety:** a caller that stops polling holds nothing but, once admitted, the permit
// (a half-open probe slot), given back when the service is dropped or called." (admit
// ResponseFuture) "dropping it drops the pending admission (leaving a bulkhead's queue) or
// the guard (freeing the slot); nothing is held afterwards." (breaker ResponseFuture)
// "dropping it before the call ends records nothing and gives a half-open probe slot back."
// (BreakerService) "A clone shares the breaker and starts holding no permit."
#[test]
fn a_three_layer_waiting_stack_under_seeded_cancellation_leaks_nothing_and_never_errs_in_ready() {
    // Ends seen over all seeds: answered, failed, refused by each layer, timed out.
    let mut seen = [0usize; 5];
    for seed in 0..8u64 {
        let clock = FakeClock::new();
        let poller = Poller::new();
        let (breaker_refusals, listener) = refusal_counter();
        let breaker = CircuitBreaker::builder()
            .runtime(clock.clone())
            .window(Window::Count { calls: 10 })
            .no_failure_rate()
            .consecutive_failures(2)
            .break_duration(ms(250))
            .half_open_probes(2)
            .max_half_open_wait(None)
            .on_event(listener)
            .build()
            .unwrap();
        let bulkhead = Bulkhead::builder(2)
            .max_queue(8)
            .max_wait(None)
            .runtime(clock.clone())
            .build()
            .unwrap();
        let backend = Backend::new(&clock);
        let stack = tower::ServiceBuilder::new()
            .layer(TimeoutLayer::new(ms(200)).runtime(clock.clone()))
            .layer(BreakerLayer::new(breaker.clone()).wait_in_ready(ms(300)))
            .layer(
                AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitReady)
                    .runtime(clock.clone())
                    .max_wait(ms(100)),
            )
            .service(backend.clone());
        error_type_is::<Error<Down>, _>(&stack);
        let mut pool = vec![stack.clone(), stack.clone(), stack];
        let mut rng = Rng::new(0x5eed_0400 + seed);
        let mut id = 0;
        let mut open_seen = 0;
        let mut next = |rng: &mut Rng| {
            id += 1;
            Req {
                id,
                ms: 1 + rng.below(60),
                fail: rng.chance(3),
            }
        };
        for _ in 0..500 {
            let k = rng.index(3);
            let mut outs = Vec::new();
            match rng.below(9) {
                0 | 1 => {
                    ready_ok(&clock, &poller, &mut pool[k]);
                    let r = next(&mut rng);
                    outs.push(call_to_end(&clock, &poller, &backend, &mut pool[k], r));
                }
                2 => {
                    // poll_ready abandoned after a few polls and a little time
                    for _ in 0..rng.below(3) {
                        if let Poll::Ready(out) = poller.ready(&mut pool[k]) {
                            assert!(out.is_ok(), "{out:?}");
                        }
                        clock.advance(ms(rng.below(80)));
                    }
                }
                3 => {
                    // a call after an abandoned poll_ready
                    if let Poll::Ready(out) = poller.ready(&mut pool[k]) {
                        assert!(out.is_ok(), "{out:?}");
                    }
                    let r = next(&mut rng);
                    outs.push(call_to_end(&clock, &poller, &backend, &mut pool[k], r));
                }
                4 => {
                    // two calls after one ready
                    ready_ok(&clock, &poller, &mut pool[k]);
                    let (a, b) = (next(&mut rng), next(&mut rng));
                    outs.push(call_to_end(&clock, &poller, &backend, &mut pool[k], a));
                    outs.push(call_to_end(&clock, &poller, &backend, &mut pool[k], b));
                }
                5 => {
                    // the response future dropped after a few polls
                    ready_ok(&clock, &poller, &mut pool[k]);
                    let r = next(&mut rng);
                    let mut fut = Box::pin(pool[k].call(r));
                    for _ in 0..rng.below(4) {
                        if poller.poll(fut.as_mut()).is_ready() {
                            break;
                        }
                        clock.advance(ms(rng.below(40)));
                    }
                    drop(fut);
                }
                6 => {
                    // `ServiceExt::ready` dropped midway
                    let polls = rng.below(3);
                    let mut ready = pin!(ServiceExt::<Req>::ready(&mut pool[k]));
                    for _ in 0..polls {
                        if let Poll::Ready(out) = poller.poll(ready.as_mut()) {
                            assert!(out.is_ok(), "ready failed");
                            break;
                        }
                        clock.advance(ms(rng.below(80)));
                    }
                }
                7 => {
                    // a clone of whatever the service holds (a refusal, a permit, a wait)
                    let clone = pool[k].clone();
                    let j = if rng.chance(2) { k } else { (k + 1) % 3 };
                    pool[j] = clone;
                }
                _ => {
                    let r = next(&mut rng);
                    let before = backend.calls();
                    let mut fut = pin!(pool[k].clone().oneshot(r));
                    let out = settle(&clock, &poller, clock.now() + HOUR, |cx| {
                        fut.as_mut().poll(cx)
                    })
                    .expect("a oneshot ends");
                    if is_refusal(&out) {
                        assert_eq!(backend.calls(), before, "{r:?}: refused yet called");
                    }
                    outs.push(out);
                }
            }
            for out in &outs {
                assert!(
                    matches!(
                        out,
                        Ok(_) | Err(Error::Inner(_) | Error::Rejected(_) | Error::TimedOut)
                    ),
                    "{out:?}"
                );
                if matches!(out, Err(Error::Rejected(Rejected::CircuitOpen { .. }))) {
                    open_seen += 1;
                }
                seen[match out {
                    Ok(_) => 0,
                    Err(Error::Inner(_)) => 1,
                    Err(Error::Rejected(Rejected::CircuitOpen { .. })) => 2,
                    Err(Error::Rejected(_)) => 3,
                    _ => 4,
                }] += 1;
            }
            if rng.chance(4) {
                clock.advance(ms(rng.below(300)));
            }
        }
        drop(pool);
        assert_eq!(
            (
                bulkhead.available(),
                bulkhead.queued(),
                bulkhead.in_flight()
            ),
            (2, 0, 0),
            "seed {seed}: every slot back, nobody queued"
        );
        assert_eq!(backend.running.load(SeqCst), 0);
        assert_eq!(
            clock.pending_timers(),
            0,
            "seed {seed}: no timer left behind"
        );
        assert!(
            breaker_refusals.load(SeqCst) >= open_seen,
            "seed {seed}: every CircuitOpen a caller saw was counted"
        );
        clock.advance(HOUR);
        let permit = breaker
            .try_acquire()
            .unwrap_or_else(|e| panic!("seed {seed}: a leaked probe slot keeps it shut: {e:?}"));
        permit.success();
    }
    assert!(
        seen.iter().all(|n| *n > 0),
        "every kind of end met: {seen:?}"
    );
}

/// A breaker tripped by one failure, open for `brk`, with one probe and no bound on it.
fn tripped(
    clock: &FakeClock,
    brk: Duration,
    listener: impl Fn(&Event<'_>) + Send + Sync + 'static,
) -> CircuitBreaker<FakeClock> {
    let breaker = CircuitBreaker::builder()
        .runtime(clock.clone())
        .window(Window::Count { calls: 10 })
        .consecutive_failures(1)
        .break_duration(brk)
        .half_open_probes(1)
        .max_half_open_wait(None)
        .on_event(listener)
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Open);
    breaker
}

// Docs (BreakerLayer::wait_in_ready): "A wait longer than `max_wait` ... gives up with the
// breaker's `Rejected::CircuitOpen`, at once when the breaker's hint already ends past it;
// the rejection is counted once, then. Giving up is never a `poll_ready` error ...:
// `poll_ready` reports ready and the next call fails at once with the refusal, the inner
// service not called."
#[test]
fn a_breaker_wait_that_gives_up_is_counted_once_however_often_ready_is_asked() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let (refusals, listener) = refusal_counter();
    let breaker = tripped(&clock, Duration::from_secs(10), listener);
    let backend = Backend::new(&clock);
    let mut svc = BreakerLayer::new(breaker.clone())
        .wait_in_ready(Duration::from_secs(1))
        .layer(backend.clone());
    error_type_is::<Error<Down>, _>(&svc);
    assert_eq!(
        poller.ready(&mut svc),
        Poll::Ready(Ok(())),
        "gave up at once"
    );
    assert_eq!(refusals.load(SeqCst), 1);
    // tower lets a caller ask again before calling: the same readiness, not a second refusal.
    assert_eq!(poller.ready(&mut svc), Poll::Ready(Ok(())));
    assert_eq!(poller.ready(&mut svc), Poll::Ready(Ok(())));
    assert_eq!(refusals.load(SeqCst), 1, "the rejection is counted once");
    let out = call_to_end(&clock, &poller, &backend, &mut svc, req(1, 5));
    match out {
        Err(Error::Rejected(Rejected::CircuitOpen { retry_after })) => assert!(
            retry_after > Duration::from_secs(1) && retry_after <= Duration::from_secs(10),
            "{retry_after:?}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(refusals.load(SeqCst), 1);
    // Usable after the refusal: once the break ends it waits for and holds the probe.
    clock.advance(Duration::from_secs(10));
    assert_eq!(poller.ready(&mut svc), Poll::Ready(Ok(())));
    assert_eq!(breaker.state(), State::HalfOpen);
    assert_eq!(
        call_to_end(&clock, &poller, &backend, &mut svc, req(2, 5)),
        Ok(2)
    );
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(refusals.load(SeqCst), 1);
}

// Docs (BreakerLayer::wait_in_ready): "While the breaker refuses, `poll_ready` waits: it
// sleeps for the breaker's `retry_after` and asks again ... A wait longer than `max_wait` ...
// gives up with the breaker's `Rejected::CircuitOpen` ...; the rejection is counted once,
// then." Here the breaker keeps refusing (the one probe is held elsewhere) for the whole wait.
#[test]
fn a_long_breaker_wait_that_gives_up_counts_one_refusal_and_leaves_the_probe_alone() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let (refusals, listener) = refusal_counter();
    let breaker = tripped(&clock, ms(100), listener);
    clock.advance(ms(100));
    let other = breaker.try_acquire().expect("the probe");
    assert!(other.is_probe());
    let backend = Backend::new(&clock);
    let mut svc = BreakerLayer::new(breaker.clone())
        .wait_in_ready(Duration::from_secs(1))
        .layer(backend.clone());
    let start = clock.now();
    assert!(matches!(
        settle(&clock, &poller, start + HOUR, |cx| svc.poll_ready(cx)),
        Some(Ok(()))
    ));
    assert!(
        clock.now() - start <= Duration::from_secs(1),
        "gave up within max_wait"
    );
    assert_eq!(refusals.load(SeqCst), 1, "one refusal for the whole wait");
    let out = call_to_end(&clock, &poller, &backend, &mut svc, req(1, 5));
    assert!(
        matches!(out, Err(Error::Rejected(Rejected::CircuitOpen { .. }))),
        "{out:?}"
    );
    assert_eq!(refusals.load(SeqCst), 1);
    // The probe elsewhere ends without an outcome: its slot goes back, and this service,
    // still usable, takes it.
    drop(other);
    assert_eq!(poller.ready(&mut svc), Poll::Ready(Ok(())));
    assert_eq!(
        call_to_end(&clock, &poller, &backend, &mut svc, req(2, 5)),
        Ok(2)
    );
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(backend.called(), [2]);
}

// Docs (TimeoutLayer): "The clock starts when `poll_ready` first has to wait for a request
// ...; if readiness takes too long, the request times out ...: `poll_ready` reports ready
// ... and the next call fails at once, the inner service not called. Otherwise the call gets
// only what is left."
#[test]
fn after_a_readiness_timeout_the_next_request_gets_a_fresh_budget_of_its_own() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let bulkhead = Bulkhead::builder(1)
        .max_queue(4)
        .max_wait(None)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let backend = Backend::new(&clock);
    let mut svc = tower::ServiceBuilder::new()
        .layer(TimeoutLayer::new(ms(100)).runtime(clock.clone()))
        .layer(AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitReady).runtime(clock.clone()))
        .service(backend.clone());
    let held = bulkhead.try_acquire().unwrap();
    let start = clock.now();
    assert!(matches!(
        settle(&clock, &poller, start + HOUR, |cx| svc.poll_ready(cx)),
        Some(Ok(()))
    ));
    assert_eq!(clock.now() - start, ms(100));
    let out = poller.poll(pin!(svc.call(req(1, 5))));
    assert_eq!(out, Poll::Ready(Err(Error::TimedOut)));
    assert_eq!(backend.calls(), 0);

    // The next request waits 60 ms for readiness, then has 40 ms for a 30 ms call.
    assert!(poller.ready(&mut svc).is_pending());
    clock.advance(ms(60));
    assert!(poller.ready(&mut svc).is_pending());
    drop(held);
    ready_ok(&clock, &poller, &mut svc);
    assert_eq!(clock.now() - start, ms(160));
    assert_eq!(
        call_to_end(&clock, &poller, &backend, &mut svc, req(2, 30)),
        Ok(2),
        "a budget of its own, started when its own poll_ready had to wait"
    );

    // And once more, with a call longer than what is left: cut at the budget's end.
    let held = bulkhead.try_acquire().unwrap();
    let third = clock.now();
    assert!(poller.ready(&mut svc).is_pending());
    clock.advance(ms(60));
    drop(held);
    ready_ok(&clock, &poller, &mut svc);
    assert_eq!(
        call_to_end(&clock, &poller, &backend, &mut svc, req(3, 50)),
        Err(Error::TimedOut)
    );
    assert_eq!(clock.now() - third, ms(100));
    drop(svc);
    assert_eq!((bulkhead.available(), bulkhead.queued()), (1, 0));
    assert_eq!(clock.pending_timers(), 0);
}

// Docs (TimeoutLayer): readiness that takes too long makes "the next call fail at once, the
// inner service not called". (BreakerLayer::wait_in_ready) "**Cancel safety:** a caller that
// stops polling holds nothing but, once admitted, the permit (a half-open probe slot), given
// back when the service is dropped or called."
#[test]
fn a_timeout_over_a_breaker_wait_holds_no_probe_it_was_not_given_and_gives_back_the_one_it_was() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let (_, listener) = refusal_counter();
    let breaker = tripped(&clock, ms(100), listener);
    let backend = Backend::new(&clock);
    let mut svc = tower::ServiceBuilder::new()
        .layer(TimeoutLayer::new(ms(50)).runtime(clock.clone()))
        .layer(BreakerLayer::new(breaker.clone()).wait_in_ready(None))
        .service(backend.clone());
    ready_ok(&clock, &poller, &mut svc);
    let out = poller.poll(pin!(svc.call(req(1, 5))));
    assert_eq!(out, Poll::Ready(Err(Error::TimedOut)));
    // The break ends while the service sits unpolled: the probe is anyone's.
    clock.advance(ms(60));
    let probe = breaker.try_acquire().expect("the service holds no probe");
    drop(probe);
    // Admitted in poll_ready, the probe is held by the service ...
    ready_ok(&clock, &poller, &mut svc);
    assert_eq!(breaker.state(), State::HalfOpen);
    assert!(
        breaker.try_acquire().is_err(),
        "the service holds the probe"
    );
    // ... and given back when a clone is what goes on and the original is dropped.
    let mut clone = svc.clone();
    drop(svc);
    let probe = breaker
        .try_acquire()
        .expect("given back with the dropped service");
    drop(probe);
    ready_ok(&clock, &poller, &mut clone);
    assert_eq!(
        call_to_end(&clock, &poller, &backend, &mut clone, req(2, 5)),
        Ok(2)
    );
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(backend.called(), [2]);
}

// Docs (PolicyError): "[`RetryLayer`] and [`HedgeLayer`] never add an error of their own and
// take any error type. ... a breaker ... record[s] a refusal from below as `Ignored`, nothing
// in a window". (BreakerLayer) "A refusal from a layer below ... is recorded as `Ignored`
// (nothing in the window) and is not shown to the classifier".
// (AdmitMode::WaitReady) "`poll_ready` then reports ready and the next call fails at once
// with the refusal, without calling the inner service."
#[test]
fn a_retry_above_waiting_layers_gets_each_refusal_as_a_call_error_and_leaks_nothing() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let (breaker_refusals, listener) = refusal_counter();
    let breaker = CircuitBreaker::builder()
        .runtime(clock.clone())
        .window(Window::Count { calls: 10 })
        .consecutive_failures(1)
        .on_event(listener)
        .build()
        .unwrap();
    let (bulkhead_refusals, listener) = refusal_counter();
    let bulkhead = Bulkhead::builder(1)
        .max_queue(4)
        .max_wait(None)
        .runtime(clock.clone())
        .on_event(listener)
        .build()
        .unwrap();
    let backend = Backend::new(&clock);
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    let backoff = Backoff::constant(ms(10))
        .jitter(Jitter::None)
        .max_attempts(3)
        .build()
        .unwrap();
    let mut svc = tower::ServiceBuilder::new()
        .layer(RetryLayer::new(backoff).runtime(clock.clone()))
        .map_request(move |r: Req| {
            counted.fetch_add(1, SeqCst);
            r
        })
        .layer(BreakerLayer::new(breaker.clone()).wait_in_ready(ms(50)))
        .layer(
            AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitReady)
                .runtime(clock.clone())
                .max_wait(ms(20)),
        )
        .service(backend.clone());
    error_type_is::<Error<Down>, _>(&svc);
    let held = bulkhead.try_acquire().unwrap();
    ready_ok(&clock, &poller, &mut svc);
    let out = drive_call(&clock, &poller, &backend, &mut svc, req(1, 5), false);
    assert_eq!(out, Err(Error::Rejected(Rejected::DeadlineExceeded)));
    let n = attempts.load(SeqCst);
    assert!((1..=3).contains(&n), "{n} attempts");
    assert_eq!(backend.calls(), 0, "the inner service never called");
    assert_eq!(
        bulkhead_refusals.load(SeqCst),
        n,
        "each attempt's refusal counted once"
    );
    assert_eq!(
        breaker.counts().calls,
        0,
        "refusals from below record nothing"
    );
    assert_eq!(
        (breaker.state(), breaker_refusals.load(SeqCst)),
        (State::Closed, 0)
    );
    // Usable after: the slot freed, the next request runs.
    drop(held);
    ready_ok(&clock, &poller, &mut svc);
    assert_eq!(
        call_to_end(&clock, &poller, &backend, &mut svc, req(2, 5)),
        Ok(2)
    );
    drop(svc);
    assert_eq!((bulkhead.available(), bulkhead.queued()), (1, 0));
    assert_eq!(clock.pending_timers(), 0);
}

// Docs (AdmitMode::WaitReady): "Load balancers and buffers see a full stage as a service that
// is not ready. A wait the stage refuses ... is never a `poll_ready` error ...: `poll_ready`
// then reports ready and the next call fails at once with the refusal, without calling the
// inner service."
#[test]
fn steer_over_waiting_services_routes_past_one_holding_a_refusal_and_both_live_on() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let full = Bulkhead::builder(1)
        .reject_when_full()
        .runtime(clock.clone())
        .build()
        .unwrap();
    let free = Bulkhead::builder(1)
        .reject_when_full()
        .runtime(clock.clone())
        .build()
        .unwrap();
    let backend = Backend::new(&clock);
    let services = [&full, &free].map(|b| {
        AdmitLayer::new(b.clone(), AdmitMode::WaitReady)
            .runtime(clock.clone())
            .layer(backend.clone())
    });
    let mut steer = tower::steer::Steer::new(services, |r: &Req, _: &[_]| (r.id % 2) as usize);
    let held = full.try_acquire().unwrap();
    let ready = poller.poll(pin!(ServiceExt::<Req>::ready(&mut steer)));
    assert!(
        matches!(ready, Poll::Ready(Ok(_))),
        "one refusing, one admitted: ready"
    );
    // Odd ids go to the free bulkhead, even ids to the full one.
    assert_eq!(
        call_to_end(&clock, &poller, &backend, &mut steer, req(1, 5)),
        Ok(1)
    );
    assert!(matches!(
        poller.poll(pin!(ServiceExt::<Req>::ready(&mut steer))),
        Poll::Ready(Ok(_))
    ));
    let out = call_to_end(&clock, &poller, &backend, &mut steer, req(2, 5));
    assert_eq!(out, Err(Error::Rejected(Rejected::BulkheadFull)));
    assert_eq!(backend.called(), [1]);
    drop(held);
    assert!(matches!(
        poller.poll(pin!(ServiceExt::<Req>::ready(&mut steer))),
        Poll::Ready(Ok(_))
    ));
    assert_eq!(
        call_to_end(&clock, &poller, &backend, &mut steer, req(4, 5)),
        Ok(4)
    );
    drop(steer);
    assert_eq!((full.available(), free.available()), (1, 1));
}

/// `callers` tasks through clones of `svc`, staggered, each giving up at a seeded point (the
/// ready future dropped, the response future dropped, two calls after one ready, a clone
/// called in place of the service it was cloned from, a oneshot), a seeded fifth of them
/// aborted. Returns the ids of calls that ended refused.
async fn storm<R, S>(rt: &Clocked<R>, svc: &S, seed: u64, callers: u64) -> Vec<u64>
where
    R: Runtime,
    S: Service<Req, Response = u64, Error = Error<Down>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let mut rng = Rng::new(seed);
    let start = rt.now();
    let mut tasks = Vec::new();
    for n in 0..callers {
        let (mut svc, clock, draw) = (svc.clone(), rt.clone(), rng.next());
        let delay = Duration::from_micros(rng.below(60_000));
        let abort = rng
            .chance(5)
            .then(|| Duration::from_micros(rng.below(120_000)));
        let handle = rt.spawn(async move {
            clock.sleep(delay).await;
            let r = |i: u64| Req {
                id: n * 10 + i,
                ms: 1 + draw % 40,
                fail: (draw >> 7) % 4 == 0,
            };
            let mut ends = Vec::new();
            match (draw >> 12) % 6 {
                0 => {
                    let out = ready(&mut svc)
                        .timeout_on(&clock, Duration::from_micros(draw % 150_000))
                        .await;
                    assert!(!matches!(out, Ok(Err(_))), "a poll_ready error");
                    if (draw >> 20) % 2 == 0 {
                        ends.push((r(0), svc.call(r(0)).await));
                    }
                }
                1 => {
                    assert!(ready(&mut svc).await.is_ok(), "a poll_ready error");
                    let call = svc.call(r(0));
                    let out = call
                        .timeout_on(&clock, Duration::from_micros(draw % 80_000))
                        .await;
                    if let Ok(out) = out {
                        ends.push((r(0), out));
                    }
                }
                2 => {
                    assert!(ready(&mut svc).await.is_ok(), "a poll_ready error");
                    let (a, b) = (svc.call(r(0)), svc.call(r(1)));
                    ends.push((r(0), a.await));
                    ends.push((r(1), b.await));
                }
                3 => {
                    assert!(ready(&mut svc).await.is_ok(), "a poll_ready error");
                    let mut clone = svc.clone();
                    drop(svc);
                    if (draw >> 20) % 2 == 0 {
                        assert!(ready(&mut clone).await.is_ok(), "a poll_ready error");
                    }
                    ends.push((r(0), clone.call(r(0)).await));
                }
                4 => ends.push((r(0), svc.oneshot(r(0)).await)),
                _ => {
                    assert!(ready(&mut svc).await.is_ok(), "a poll_ready error");
                    ends.push((r(0), svc.call(r(0)).await));
                }
            }
            ends.into_iter()
                .filter(|(_, out)| is_refusal(out))
                .map(|(r, _)| r.id)
                .collect::<Vec<_>>()
        });
        tasks.push((handle, abort));
    }
    let mut aborts: Vec<(Duration, usize)> = tasks
        .iter()
        .enumerate()
        .filter_map(|(i, (_, abort))| abort.map(|at| (at, i)))
        .collect();
    aborts.sort_unstable();
    for (at, i) in aborts {
        rt.sleep_until(start + at).await;
        tasks[i].0.abort();
    }
    let mut refused = Vec::new();
    for (handle, abort) in tasks {
        match handle.await {
            Ok(ids) => refused.extend(ids),
            Err(e) => assert!(abort.is_some() && e.is_cancelled(), "{e:?}"),
        }
    }
    refused
}

struct StormParts<R: Runtime> {
    breaker: CircuitBreaker<Clocked<R>>,
    bulkhead: Bulkhead<Clocked<R>>,
    backend: Backend<Clocked<R>>,
}

fn storm_parts<R: Runtime>(rt: &Clocked<R>) -> StormParts<R> {
    StormParts {
        breaker: CircuitBreaker::builder()
            .runtime(rt.clone())
            .window(Window::Count { calls: 10 })
            .no_failure_rate()
            .consecutive_failures(3)
            .break_duration(ms(100))
            .half_open_probes(2)
            .max_half_open_wait(None)
            .build()
            .unwrap(),
        bulkhead: Bulkhead::builder(3)
            .max_queue(16)
            .max_wait(None)
            .runtime(rt.clone())
            .build()
            .unwrap(),
        backend: Backend::new(rt),
    }
}

async fn after_the_storm<R: Runtime>(rt: &Clocked<R>, parts: &StormParts<R>) {
    assert_eq!(
        (
            parts.bulkhead.available(),
            parts.bulkhead.queued(),
            parts.bulkhead.in_flight()
        ),
        (3, 0, 0),
        "every slot back, nobody queued"
    );
    assert_eq!(parts.backend.running.load(SeqCst), 0);
    assert_eq!(rt.clock().pending_timers(), 0, "no timer left behind");
    rt.sleep(HOUR).await;
    let permit = parts
        .breaker
        .try_acquire()
        .unwrap_or_else(|e| panic!("a leaked probe slot keeps the breaker shut: {e:?}"));
    permit.success();
}

async fn three_layer_storm<R: Runtime>(rt: Clocked<R>) {
    let parts = storm_parts(&rt);
    let svc = tower::ServiceBuilder::new()
        .layer(TimeoutLayer::new(ms(120)).runtime(rt.clone()))
        .layer(BreakerLayer::new(parts.breaker.clone()).wait_in_ready(ms(150)))
        .layer(
            AdmitLayer::new(parts.bulkhead.clone(), AdmitMode::WaitReady)
                .runtime(rt.clone())
                .max_wait(ms(60)),
        )
        .service(parts.backend.clone());
    error_type_is::<Error<Down>, _>(&svc);
    let refused = storm(&rt, &svc, 0x5707_0001, 60).await;
    drop(svc);
    let called = parts.backend.called();
    let both: Vec<_> = refused.iter().filter(|id| called.contains(id)).collect();
    assert!(both.is_empty(), "refused yet called: {both:?}");
    after_the_storm(&rt, &parts).await;
}

// Docs (AdmitMode::WaitReady, BreakerLayer::wait_in_ready, TimeoutLayer): a refusal in
// `poll_ready` is never its error: "`poll_ready` reports ready and the next call fails at
// once with the refusal, the inner service not called"; the response futures' "**Cancel
// safety:** ... nothing is held afterwards".
#[test]
fn a_three_layer_waiting_stack_under_a_seeded_storm_leaks_nothing_on_every_runtime() {
    on_every_runtime!(three_layer_storm);
}

async fn retried_storm<R: Runtime>(rt: Clocked<R>) {
    let parts = storm_parts(&rt);
    let backoff = Backoff::constant(ms(5))
        .jitter(Jitter::None)
        .max_attempts(2)
        .build()
        .unwrap();
    let svc = tower::ServiceBuilder::new()
        .layer(RetryLayer::new(backoff).runtime(rt.clone()))
        .layer(TimeoutLayer::new(ms(120)).runtime(rt.clone()))
        .layer(BreakerLayer::new(parts.breaker.clone()).wait_in_ready(ms(150)))
        .layer(
            AdmitLayer::new(parts.bulkhead.clone(), AdmitMode::WaitReady)
                .runtime(rt.clone())
                .max_wait(ms(60)),
        )
        .service(parts.backend.clone());
    error_type_is::<Error<Down>, _>(&svc);
    storm(&rt, &svc, 0x5707_0002, 60).await;
    drop(svc);
    after_the_storm(&rt, &parts).await;
}

// Docs (PolicyError): "[`RetryLayer`] ... never add[s] an error of [its] own"; the waiting
// layers' refusals are the next call's error, and (response futures) "**Cancel safety:** ...
// nothing is held afterwards".
#[test]
fn a_retry_over_the_waiting_stack_under_a_seeded_storm_leaks_nothing_on_every_runtime() {
    on_every_runtime!(retried_storm);
}

// === 2. breaker: reconfigure, state_and_generation, force_open_if, reset_if ================

type Change = (u32, State, State, Option<TripReason>);
type Changes = Arc<Mutex<Vec<Change>>>;

/// A breaker of `settings` on `clock`, with every state change it tells kept.
fn watched(
    clock: &FakeClock,
    settings: CircuitBreakerBuilder,
) -> (CircuitBreaker<FakeClock>, Changes) {
    let changes: Changes = Arc::default();
    let heard = changes.clone();
    let breaker = settings
        .runtime(clock.clone())
        .on_state_change(move |c: &StateChange<'_>| {
            heard
                .lock()
                .unwrap()
                .push((c.generation, c.from, c.to, c.reason));
        })
        .build()
        .unwrap();
    (breaker, changes)
}

fn taken(changes: &Changes) -> Vec<Change> {
    std::mem::take(&mut *changes.lock().unwrap())
}

/// The `retry_after` of the breaker's refusal now.
fn open_hint<R: Clock + std::fmt::Debug>(breaker: &CircuitBreaker<R>) -> Duration {
    match breaker.try_acquire() {
        Err(Rejected::CircuitOpen { retry_after }) => retry_after,
        other => panic!("expected CircuitOpen, got {other:?}"),
    }
}

fn runs(n: u32) -> CircuitBreakerBuilder {
    CircuitBreaker::builder()
        .window(Window::Count { calls: 20 })
        .no_failure_rate()
        .consecutive_failures(n)
        .break_duration(Duration::from_secs(7))
}

// Docs (CircuitBreaker::reconfigure): "A window of the same shape is kept, with the state,
// the calls in it and the run of failures. The new thresholds judge them at once (a closed
// breaker whose window they trip opens now, with its state-change event)". (mod docs)
// "**Any age**: a breaker behaves the same an hour, a month or a century after it was built,
// and after any idle gap"; "a trip reads it once, so the break always starts when the breaker
// opens."
#[test]
fn a_run_of_failures_a_century_old_trips_at_once_under_a_lowered_threshold_with_a_fresh_break() {
    let clock = FakeClock::new();
    let (breaker, changes) = watched(&clock, runs(5));
    for _ in 0..3 {
        breaker.try_acquire().unwrap().failure();
    }
    let (state, g0) = breaker.state_and_generation();
    assert_eq!(state, State::Closed);
    clock.advance(CENTURY);
    assert_eq!(breaker.reconfigure(runs(4)), Ok(Reconfigured::Kept));
    assert_eq!(
        breaker.state(),
        State::Closed,
        "three in a row are not four"
    );
    assert!(taken(&changes).is_empty());
    assert_eq!(breaker.reconfigure(runs(3)), Ok(Reconfigured::Kept));
    assert_eq!(
        breaker.state(),
        State::Open,
        "three in a row are three: opens now"
    );
    assert_eq!(
        taken(&changes),
        [(
            g0.wrapping_add(1),
            State::Closed,
            State::Open,
            Some(TripReason::ConsecutiveFailures)
        )]
    );
    assert_eq!(breaker.state_and_generation().1, g0.wrapping_add(1));
    assert_eq!(
        open_hint(&breaker),
        Duration::from_secs(7),
        "the break starts when the reconfiguration opened it, not a century ago"
    );
}

// Docs (CircuitBreaker::reconfigure): "The new thresholds judge them at once". (mod docs)
// "**Any age**: ... after any idle gap: a time window's stale buckets never count again".
#[test]
fn a_lowered_minimum_never_judges_a_time_windows_stale_buckets_after_an_idle_gap() {
    let settings = |min: u32| {
        CircuitBreaker::builder()
            .window(Window::Time {
                span: Duration::from_secs(10),
                buckets: 10,
            })
            .failure_rate(0.5)
            .minimum_calls(min)
    };
    for gap in [Duration::from_secs(11), HOUR, YEAR, CENTURY] {
        let clock = FakeClock::new();
        let (breaker, changes) = watched(&clock, settings(10));
        for _ in 0..6 {
            breaker.try_acquire().unwrap().failure();
        }
        clock.advance(gap);
        assert_eq!(breaker.reconfigure(settings(2)), Ok(Reconfigured::Kept));
        assert_eq!(
            breaker.state(),
            State::Closed,
            "{gap:?}: stale failures judged"
        );
        assert_eq!(breaker.counts().calls, 0, "{gap:?}");
        assert!(taken(&changes).is_empty(), "{gap:?}");
        // The control: fresh failures under the same move trip at once.
        assert_eq!(breaker.reconfigure(settings(10)), Ok(Reconfigured::Kept));
        for _ in 0..3 {
            breaker.try_acquire().unwrap().failure();
        }
        assert_eq!(breaker.state(), State::Closed);
        assert_eq!(breaker.reconfigure(settings(3)), Ok(Reconfigured::Kept));
        assert_eq!(
            breaker.state(),
            State::Open,
            "{gap:?}: fresh failures judged at once"
        );
    }
}

fn probes(n: u32) -> CircuitBreakerBuilder {
    CircuitBreaker::builder()
        .window(Window::Count { calls: 10 })
        .no_failure_rate()
        .consecutive_failures(1)
        .break_duration(Duration::from_secs(1))
        .half_open_probes(n)
        .max_half_open_wait(None)
}

/// A breaker of `probes(n)`, tripped and past its break (half-open once asked).
fn past_its_break(clock: &FakeClock, n: u32) -> (CircuitBreaker<FakeClock>, Changes) {
    let (breaker, changes) = watched(clock, probes(n));
    breaker.try_acquire().unwrap().failure();
    clock.advance(YEAR);
    (breaker, changes)
}

// Docs (CircuitBreaker::reconfigure): "a half-open breaker whose probes have all succeeded
// under a lowered `half_open_probes` closes"; (mod docs) "**Generations**: ... an outcome from
// an earlier state never moves the current one."
#[test]
fn a_half_open_breaker_whose_probes_all_succeeded_closes_when_probes_are_lowered() {
    let clock = FakeClock::new();
    let (breaker, changes) = past_its_break(&clock, 3);
    let (a, b) = (
        breaker.try_acquire().unwrap(),
        breaker.try_acquire().unwrap(),
    );
    assert!(a.is_probe() && b.is_probe());
    a.success();
    b.success();
    assert_eq!(breaker.state(), State::HalfOpen, "two of three");
    let g = breaker.state_and_generation().1;
    taken(&changes);
    assert_eq!(breaker.reconfigure(probes(2)), Ok(Reconfigured::Kept));
    assert_eq!(breaker.state(), State::Closed, "two of two succeeded");
    assert_eq!(
        taken(&changes),
        [(g.wrapping_add(1), State::HalfOpen, State::Closed, None)]
    );

    // Lowered while a third probe is still out: two successes are enough under two; the
    // third probe's late failure is an outcome of the half-open state, which is gone.
    let (breaker, _) = past_its_break(&clock, 3);
    let (a, b, c) = (
        breaker.try_acquire().unwrap(),
        breaker.try_acquire().unwrap(),
        breaker.try_acquire().unwrap(),
    );
    a.success();
    b.success();
    assert_eq!(breaker.reconfigure(probes(2)), Ok(Reconfigured::Kept));
    let after = breaker.state();
    c.failure();
    if after == State::Closed {
        assert_eq!(
            breaker.state(),
            State::Closed,
            "an earlier state's outcome moved it"
        );
    } else {
        assert_eq!(after, State::HalfOpen);
        assert_eq!(breaker.state(), State::Open, "one failure reopens it");
    }
}

// Docs (mod docs): "it turns *half-open* and admits exactly `half_open_probes` probe calls:
// that many successes close it". (CircuitBreaker::reconfigure) "a half-open breaker whose
// probes have all succeeded under a lowered `half_open_probes` closes" — not one whose
// successes fall short of the new count.
#[test]
fn a_half_open_breaker_short_of_the_lowered_count_stays_half_open_and_admits_the_difference() {
    let clock = FakeClock::new();
    let (breaker, _) = past_its_break(&clock, 3);
    breaker.try_acquire().unwrap().success();
    assert_eq!(breaker.reconfigure(probes(2)), Ok(Reconfigured::Kept));
    assert_eq!(breaker.state(), State::HalfOpen, "one success of two");
    let second = breaker.try_acquire().expect("one more probe under two");
    assert!(second.is_probe());
    assert!(breaker.try_acquire().is_err(), "exactly two probes in all");
    second.success();
    assert_eq!(breaker.state(), State::Closed);
}

// Docs (mod docs): "`max_half_open_wait` reopens a breaker whose probes hang (measured from
// the first probe in flight), so it can never stay stuck half-open". (reconfigure) "Applies
// the policy of `settings` (thresholds, window, break, probes, waits, hint cap) to this
// breaker in place". (BreakerPolicyBuilder::max_half_open_wait) "`None`: wait forever for
// them, which a hung probe turns into a stuck breaker".
#[test]
fn a_probe_hung_for_a_year_is_cut_once_a_reconfigure_bounds_the_half_open_wait() {
    let clock = FakeClock::new();
    let (breaker, changes) = past_its_break(&clock, 1);
    let hung = breaker.try_acquire().expect("the probe");
    clock.advance(YEAR);
    assert!(breaker.try_acquire().is_err(), "stuck, as `None` says");
    assert_eq!(
        breaker.reconfigure(probes(1).max_half_open_wait(Some(Duration::from_secs(1)))),
        Ok(Reconfigured::Kept)
    );
    taken(&changes);
    clock.advance(Duration::from_secs(1));
    let _ = breaker.try_acquire();
    clock.advance(Duration::from_secs(1));
    let probe = breaker
        .try_acquire()
        .expect("a bounded half-open wait never leaves it stuck: a new probe");
    assert!(probe.is_probe());
    assert!(
        taken(&changes)
            .iter()
            .any(|c| c.3 == Some(TripReason::HalfOpenTimeout)),
        "reopened for the hung probe"
    );
    probe.success();
    assert_eq!(breaker.state(), State::Closed);
    hung.failure();
    assert_eq!(
        breaker.state(),
        State::Closed,
        "the hung probe's late failure moves nothing"
    );
}

fn backoff_from(initial: Duration) -> CircuitBreakerBuilder {
    let schedule = Backoff::exponential(initial)
        .jitter(Jitter::None)
        .max_delay(HOUR)
        .max_attempts(30)
        .build()
        .unwrap();
    probes(1).break_backoff(schedule)
}

/// The probe of a breaker past its break, failed: the next trip's break, as hinted.
fn fail_the_probe(breaker: &CircuitBreaker<FakeClock>) -> Duration {
    let probe = breaker.try_acquire().expect("the probe");
    assert!(probe.is_probe());
    probe.failure();
    open_hint(breaker)
}

// Docs (CircuitBreaker::reconfigure): "an open breaker stays open until its break ends. A new
// break schedule starts from its first break; the same schedule goes on from where the trips
// in a row had taken it, so applying unchanged settings changes nothing." (mod docs)
// "repeated trips cost one backoff step each however many came before".
#[test]
fn an_unchanged_break_schedule_goes_on_and_a_new_one_starts_from_its_first_break() {
    let clock = FakeClock::new();
    let (breaker, changes) = watched(&clock, backoff_from(Duration::from_secs(1)));
    breaker.try_acquire().unwrap().failure();
    assert_eq!(open_hint(&breaker), Duration::from_secs(1));
    clock.advance(YEAR);
    assert_eq!(fail_the_probe(&breaker), Duration::from_secs(2));
    clock.advance(YEAR);
    assert_eq!(fail_the_probe(&breaker), Duration::from_secs(4));

    // The same schedule again: nothing changes, the next trip is the fourth step.
    let before = breaker.state_and_generation();
    taken(&changes);
    assert_eq!(
        breaker.reconfigure(backoff_from(Duration::from_secs(1))),
        Ok(Reconfigured::Kept)
    );
    assert_eq!(breaker.state_and_generation(), before, "changes nothing");
    assert!(taken(&changes).is_empty());
    assert_eq!(open_hint(&breaker), Duration::from_secs(4));
    clock.advance(Duration::from_secs(4));
    assert_eq!(fail_the_probe(&breaker), Duration::from_secs(8), "goes on");

    // A new schedule: the open breaker keeps its break, the next trip is the new first.
    assert_eq!(
        breaker.reconfigure(backoff_from(Duration::from_secs(3))),
        Ok(Reconfigured::Kept)
    );
    assert_eq!(
        open_hint(&breaker),
        Duration::from_secs(8),
        "stays open until its break ends"
    );
    clock.advance(Duration::from_secs(8) - Duration::from_nanos(1));
    assert!(breaker.try_acquire().is_err(), "a nanosecond early");
    clock.advance(Duration::from_nanos(1));
    assert_eq!(
        fail_the_probe(&breaker),
        Duration::from_secs(3),
        "the new first break"
    );
    clock.advance(CENTURY);
    assert_eq!(
        fail_the_probe(&breaker),
        Duration::from_secs(6),
        "then its second"
    );
    clock.advance(Duration::from_secs(6));
    breaker.try_acquire().unwrap().success();
    assert_eq!(breaker.state(), State::Closed);
    breaker.try_acquire().unwrap().failure();
    assert_eq!(
        open_hint(&breaker),
        Duration::from_secs(3),
        "after a close it starts over"
    );
}

fn slow_rule(window: Window, slow: bool) -> CircuitBreakerBuilder {
    let settings = CircuitBreaker::builder()
        .window(window)
        .failure_rate(0.5)
        .minimum_calls(1);
    if slow {
        settings.slow_call_rate(0.5, ms(100))
    } else {
        settings
    }
}

/// A call admitted with no slow-call rule, then the rule added while it runs an hour: it must
/// not be judged slow; one admitted under the rule and as slow is.
fn admitted_before_the_slow_rule(window: Window) {
    let clock = FakeClock::new();
    let (breaker, _) = watched(&clock, slow_rule(window, false));
    let old = breaker.try_acquire().unwrap();
    clock.advance(HOUR);
    assert_eq!(
        breaker.reconfigure(slow_rule(window, true)),
        Ok(Reconfigured::Kept),
        "{window:?}"
    );
    old.success();
    let counts = breaker.counts();
    assert_eq!(
        (counts.calls, counts.slow),
        (1, 0),
        "{window:?}: judged slow"
    );
    assert_eq!(breaker.state(), State::Closed, "{window:?}");
    // A call admitted under the rule is judged: 1 slow of 2 is the threshold.
    let timed = breaker.try_acquire().unwrap();
    clock.advance(ms(200));
    timed.success();
    assert_eq!(breaker.counts().slow, 1, "{window:?}");
    assert_eq!(breaker.state(), State::Open, "{window:?}");
}

// Docs (CircuitBreaker::reconfigure): "Calls admitted before a slow-call rule was added are
// not judged slow (their start was not timed)."
#[test]
fn calls_admitted_before_a_slow_call_rule_was_added_are_not_judged_slow() {
    admitted_before_the_slow_rule(Window::Count { calls: 10 });
}

// Docs (CircuitBreaker::reconfigure): "Calls admitted before a slow-call rule was added are
// not judged slow (their start was not timed)." The same under a time window, whose calls'
// starts were read for the window anyway (a finding of this round: they were judged; a call's
// start is now timed only under a slow-call rule).
#[test]
fn calls_admitted_before_a_slow_call_rule_was_added_to_a_time_window_are_not_judged_slow() {
    admitted_before_the_slow_rule(Window::Time {
        span: Duration::from_secs(4 * 3_600),
        buckets: 4,
    });
}

// Docs (CircuitBreaker::reconfigure): "A window of another shape (length or kind) cannot hold
// the old calls: the breaker is `reset`, with its state-change event (`Reconfigured::Reset`).
// Calls in flight keep their permits either way; after a reset their outcomes are ignored, as
// after any reset." (state_and_generation) "The generation is one more on every transition".
#[test]
fn another_window_shape_resets_once_and_the_calls_in_flight_move_nothing() {
    for (from, to) in [
        (Window::Count { calls: 10 }, Window::Count { calls: 11 }),
        (
            Window::Count { calls: 10 },
            Window::Time {
                span: Duration::from_secs(10),
                buckets: 10,
            },
        ),
        (
            Window::Time {
                span: Duration::from_secs(10),
                buckets: 10,
            },
            Window::Time {
                span: Duration::from_secs(10),
                buckets: 5,
            },
        ),
    ] {
        let shaped = |w: Window| {
            CircuitBreaker::builder()
                .window(w)
                .failure_rate(0.5)
                .minimum_calls(2)
                .consecutive_failures(2)
        };
        let clock = FakeClock::new();
        let (breaker, changes) = watched(&clock, shaped(from));
        breaker.try_acquire().unwrap().failure();
        let in_flight: Vec<_> = (0..3).map(|_| breaker.try_acquire().unwrap()).collect();
        let (_, g) = breaker.state_and_generation();
        assert_eq!(
            breaker.reconfigure(shaped(to)),
            Ok(Reconfigured::Reset),
            "{to:?}"
        );
        assert_eq!(
            taken(&changes),
            [(g.wrapping_add(1), State::Closed, State::Closed, None)],
            "{to:?}: one state-change event"
        );
        assert_eq!(
            breaker.state_and_generation(),
            (State::Closed, g.wrapping_add(1))
        );
        for permit in in_flight {
            permit.failure();
        }
        assert_eq!(
            breaker.counts().calls,
            0,
            "{to:?}: outcomes after a reset ignored"
        );
        assert_eq!(breaker.state(), State::Closed, "{to:?}");
        assert_eq!(breaker.policy().window(), to);
    }
}

// Docs (CircuitBreaker::reconfigure): "the same schedule goes on ..., so applying unchanged
// settings changes nothing." (State::ForcedClosed) "Closed by hand: every call passes and
// nothing trips it until `reset`." (State::ForcedOpen) "Opened by hand: every call is
// rejected until `reset`."
#[test]
fn unchanged_settings_change_nothing_in_any_state_and_no_reconfigure_undoes_a_force() {
    let clock = FakeClock::new();
    let settings = || probes(2).consecutive_failures(3);
    let (breaker, changes) = watched(&clock, settings());
    let check = |what: &str| {
        let before = (breaker.state_and_generation(), breaker.counts());
        taken(&changes);
        assert_eq!(
            breaker.reconfigure(settings()),
            Ok(Reconfigured::Kept),
            "{what}"
        );
        assert_eq!(
            (breaker.state_and_generation(), breaker.counts()),
            before,
            "{what}"
        );
        assert!(taken(&changes).is_empty(), "{what}: an event");
    };
    breaker.try_acquire().unwrap().failure();
    breaker.try_acquire().unwrap().failure();
    check("closed with a run of two");
    breaker.try_acquire().unwrap().failure();
    check("open");
    clock.advance(HOUR);
    let probe = breaker.try_acquire().unwrap();
    check("half-open with a probe out");
    probe.success();
    assert_eq!(
        breaker.state(),
        State::HalfOpen,
        "the probe's outcome still counts"
    );
    breaker.try_acquire().unwrap().success();
    assert_eq!(breaker.state(), State::Closed);

    // Forced closed with a run of failures: no threshold trips it, however low.
    breaker.force_closed();
    for _ in 0..5 {
        breaker.try_acquire().unwrap().failure();
    }
    check("forced closed");
    assert_eq!(
        breaker.reconfigure(probes(1).consecutive_failures(1)),
        Ok(Reconfigured::Kept)
    );
    assert_eq!(
        breaker.state(),
        State::ForcedClosed,
        "a reconfigure tripped a forced close"
    );
    assert!(breaker.try_acquire().is_ok());
    // Forced open with lowered probes: stays forced open.
    breaker.force_open();
    check("forced open");
    assert_eq!(breaker.reconfigure(probes(1)), Ok(Reconfigured::Kept));
    clock.advance(CENTURY);
    assert_eq!(
        breaker.state(),
        State::ForcedOpen,
        "a reconfigure undid a forced open"
    );
    assert!(breaker.try_acquire().is_err());
}

/// Checks that `events` (state changes since `(state, generation)` was read) are one per
/// generation, in a chain, and end in `now`.
fn assert_chain(what: &str, from: (State, u32), mut events: Vec<Change>, now: (State, u32)) {
    events.sort_by_key(|e| e.0.wrapping_sub(from.1));
    assert_eq!(
        u32::try_from(events.len()).unwrap(),
        now.1.wrapping_sub(from.1),
        "{what}: one state-change event per generation: {events:?}"
    );
    let mut prev = from;
    for e in &events {
        assert_eq!(
            e.0,
            prev.1.wrapping_add(1),
            "{what}: generations in a row: {events:?}"
        );
        assert_eq!(
            e.1, prev.0,
            "{what}: each change starts where the one before ended"
        );
        prev = (e.2, e.0);
    }
    if !events.is_empty() {
        assert_eq!(prev, now, "{what}: the last change is the state now");
    }
}

// Docs (StateChange::generation): "The state's generation: one more on every transition.
// Listeners run after the transition lock is released, so two transitions in quick succession
// can be delivered out of order; order them by generation (wrapping)." (reconfigure) "Calls
// in flight keep their permits either way".
#[test]
fn reconfigures_racing_permits_in_flight_leave_one_event_per_generation_in_a_chain() {
    let a = || {
        CircuitBreaker::builder()
            .window(Window::Count { calls: 50 })
            .failure_rate(0.5)
            .minimum_calls(10)
            .consecutive_failures(3)
            .break_duration(ms(100))
            .half_open_probes(2)
            .max_half_open_wait(Some(Duration::from_secs(1)))
    };
    let b = || {
        a().failure_rate(0.3)
            .consecutive_failures(5)
            .half_open_probes(1)
            .break_duration(ms(50))
    };
    let c = || a().window(Window::Count { calls: 60 });
    for seed in 0..3u64 {
        let clock = FakeClock::new();
        let (breaker, changes) = watched(&clock, a());
        let start = breaker.state_and_generation();
        let barrier = Barrier::new(5);
        let resets = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for w in 0..4u64 {
                let (breaker, clock, barrier) = (&breaker, &clock, &barrier);
                scope.spawn(move || {
                    let mut rng = Rng::new(seed * 100 + w);
                    barrier.wait();
                    let mut held = Vec::new();
                    for _ in 0..3_000 {
                        if let Ok(p) = breaker.try_acquire() {
                            held.push(p);
                        }
                        if held.len() > 4 || rng.chance(2) {
                            let i = rng.index(held.len().max(1));
                            if i < held.len() {
                                let p = held.swap_remove(i);
                                match rng.below(3) {
                                    0 => p.success(),
                                    1 => p.failure(),
                                    _ => drop(p),
                                }
                            }
                        }
                        if rng.chance(40) {
                            clock.advance(ms(rng.below(150)));
                        }
                    }
                    for p in held {
                        p.failure();
                    }
                });
            }
            let (breaker, barrier, resets) = (&breaker, &barrier, &resets);
            scope.spawn(move || {
                let mut rng = Rng::new(seed);
                barrier.wait();
                for _ in 0..400 {
                    let how = match rng.below(10) {
                        0 => breaker.reconfigure(c()),
                        1..=4 => breaker.reconfigure(b()),
                        _ => breaker.reconfigure(a()),
                    };
                    if how.unwrap() == Reconfigured::Reset {
                        resets.fetch_add(1, SeqCst);
                    }
                    std::thread::yield_now();
                }
            });
        });
        let now = breaker.state_and_generation();
        let events = taken(&changes);
        assert!(
            resets.load(SeqCst) > 0,
            "seed {seed}: some reconfigures changed the shape"
        );
        assert!(
            events.len() > 10,
            "seed {seed}: a busy breaker: {}",
            events.len()
        );
        assert_chain(&format!("seed {seed}"), start, events, now);
    }
}

// Docs (state_and_generation): code "can later undo its change only if nothing changed the
// breaker since, with `force_open_if` and `reset_if`". (force_open_if) "the generation the
// force made, or `None`, with nothing done, when the breaker has changed since." (mod docs)
// "**Generations**: every transition bumps a generation the permit carries; an outcome from
// an earlier state never moves the current one."
#[test]
fn force_open_if_racing_a_trip_makes_exactly_one_transition() {
    let clock = FakeClock::new();
    let (breaker, changes) = watched(&clock, probes(1));
    let mut outcomes = [0; 2];
    for round in 0..400 {
        breaker.reset();
        taken(&changes);
        let (state, seen) = breaker.state_and_generation();
        assert_eq!(state, State::Closed);
        let permit = breaker.try_acquire().unwrap();
        let barrier = Barrier::new(2);
        let forced = std::thread::scope(|scope| {
            let forcer = scope.spawn(|| {
                barrier.wait();
                breaker.force_open_if(seen)
            });
            barrier.wait();
            permit.failure();
            forcer.join().unwrap()
        });
        let now = breaker.state_and_generation();
        assert_eq!(
            now.1,
            seen.wrapping_add(1),
            "round {round}: exactly one transition"
        );
        match forced {
            Some(made) => {
                assert_eq!((now.0, made), (State::ForcedOpen, now.1), "round {round}");
                outcomes[0] += 1;
            }
            None => {
                assert_eq!(now.0, State::Open, "round {round}: the trip won");
                outcomes[1] += 1;
            }
        }
        assert_chain(
            &format!("round {round}"),
            (state, seen),
            taken(&changes),
            now,
        );
        assert!(
            !breaker.reset_if(seen),
            "round {round}: a stale generation undoes nothing"
        );
        assert_eq!(breaker.state_and_generation(), now);
    }
    assert!(outcomes[0] + outcomes[1] == 400);
}

// Docs (force_open_if): "`force_open`, only if the breaker is still in `generation` ...: the
// generation the force made, or `None`, with nothing done, when the breaker has changed
// since." (reset_if) "whether it reset; `false`, with nothing done, when the breaker has
// changed since."
#[test]
fn of_many_racing_force_open_if_and_reset_if_on_one_generation_exactly_one_wins() {
    let clock = FakeClock::new();
    let (breaker, changes) = watched(&clock, probes(1));
    for round in 0..60 {
        let (state, seen) = breaker.state_and_generation();
        let barrier = Barrier::new(8);
        let forced: Vec<Option<u32>> = std::thread::scope(|scope| {
            let racers: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        breaker.force_open_if(seen)
                    })
                })
                .collect();
            racers.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let won: Vec<u32> = forced.into_iter().flatten().collect();
        assert_eq!(won, [seen.wrapping_add(1)], "round {round}");
        assert_eq!(
            breaker.state_and_generation(),
            (State::ForcedOpen, seen.wrapping_add(1))
        );
        let ours = won[0];
        let reset: Vec<bool> = std::thread::scope(|scope| {
            let racers: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        breaker.reset_if(ours)
                    })
                })
                .collect();
            racers.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(
            reset.iter().filter(|r| **r).count(),
            1,
            "round {round}: {reset:?}"
        );
        let now = breaker.state_and_generation();
        assert_eq!(now, (State::Closed, seen.wrapping_add(2)), "round {round}");
        assert_chain(
            &format!("round {round}"),
            (state, seen),
            taken(&changes),
            now,
        );
    }
}

// Docs (state_and_generation): "The generation is one more on every transition, by hand or
// not (wrapping; a `StateChange` carries the one it made)". (force_open_if) "the generation the
// force made". (reconfigure) "applying unchanged settings changes nothing".
#[test]
fn generations_count_every_transition_once_over_thousands_of_moves_and_idle_years() {
    let settings = || probes(2).consecutive_failures(2);
    let clock = FakeClock::new();
    let (breaker, changes) = watched(&clock, settings());
    let mut rng = Rng::new(0x6e6e);
    let mut at = breaker.state_and_generation();
    let mut stale: Vec<u32> = Vec::new();
    for step in 0..6_000 {
        let what = rng.below(11);
        match what {
            0 => breaker.force_open(),
            1 => breaker.force_closed(),
            2 => breaker.reset(),
            3 => {
                let g = breaker.state_and_generation().1;
                assert_eq!(
                    breaker.force_open_if(g),
                    Some(g.wrapping_add(1)),
                    "step {step}"
                );
            }
            4 => {
                if !stale.is_empty() {
                    let old = stale[rng.index(stale.len())];
                    assert_eq!(breaker.force_open_if(old), None, "step {step}: stale {old}");
                    assert!(!breaker.reset_if(old), "step {step}: stale {old}");
                }
            }
            5 => {
                let g = breaker.state_and_generation().1;
                assert!(breaker.reset_if(g), "step {step}");
            }
            6 | 7 => {
                if let Ok(p) = breaker.try_acquire() {
                    if rng.chance(2) {
                        p.failure();
                    } else {
                        p.success();
                    }
                }
            }
            8 => clock.advance(match rng.below(4) {
                0 => ms(rng.below(3_000)),
                1 => HOUR,
                2 => YEAR,
                _ => Duration::from_secs(1),
            }),
            9 => assert_eq!(breaker.reconfigure(settings()), Ok(Reconfigured::Kept)),
            _ => {
                let _ = breaker.try_acquire();
            }
        }
        let now = breaker.state_and_generation();
        assert_chain(
            &format!("step {step} (move {what})"),
            at,
            taken(&changes),
            now,
        );
        if now.1 != at.1 {
            stale.push(at.1);
        }
        at = now;
    }
    assert!(stale.len() > 1_000, "{} transitions", stale.len());
}

// Docs (state_and_generation): "The state with its generation, read in one step. The
// generation is one more on every transition, by hand or not" — so one generation shows one
// state, and `force_open_if` with a generation read while open does nothing once the
// breaker has moved on.
#[test]
fn one_generation_never_shows_two_states_across_a_break_and_idle_years() {
    for gap in [Duration::from_secs(1), HOUR, CENTURY] {
        let clock = FakeClock::new();
        let (breaker, changes) = watched(&clock, probes(1));
        breaker.try_acquire().unwrap().failure();
        let open = breaker.state_and_generation();
        assert_eq!(open.0, State::Open);
        taken(&changes);
        clock.advance(gap);
        let later = breaker.state_and_generation();
        if later.0 != open.0 {
            assert_ne!(
                later.1, open.1,
                "{gap:?}: {} and {} under one generation",
                open.0, later.0
            );
        }
        assert_chain(&format!("{gap:?}"), open, taken(&changes), later);
        // The probe's admission is a transition of its own if the read did not make one.
        let probe = breaker.try_acquire().expect("past the break");
        let probing = breaker.state_and_generation();
        assert_eq!(probing.0, State::HalfOpen);
        assert_chain(&format!("{gap:?}: probe"), later, taken(&changes), probing);
        assert_eq!(
            breaker.force_open_if(open.1),
            None,
            "{gap:?}: the breaker moved on"
        );
        probe.success();
        assert_eq!(breaker.state(), State::Closed);
    }
}

// === 3. keyed tables whose listeners call back into the same table ========================

type Progress = Arc<Mutex<&'static str>>;

fn step(progress: &Progress, at: &'static str) {
    *progress.lock().unwrap() = at;
}

/// Runs `scenario` on its own thread and fails if it has not finished within 60 s (a listener
/// calling back into its table deadlocked), naming the last step it reached. A bound on a
/// hang only, generous since the scenarios run in a debug build on a loaded machine.
fn without_hanging(what: &str, scenario: impl FnOnce(&Progress) + Send + 'static) {
    let progress: Progress = Arc::new(Mutex::new("start"));
    let reached = progress.clone();
    let (done, finished) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        scenario(&reached);
        let _ = done.send(());
    });
    match finished.recv_timeout(Duration::from_secs(60)) {
        Ok(()) => handle.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Timeout) => panic!(
            "{what}: no end after 60 s at step {:?}: a listener calling back into its table hangs",
            *progress.lock().unwrap()
        ),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = handle.join() {
                std::panic::resume_unwind(panic);
            }
        }
    }
}

thread_local! {
    static INSIDE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` unless this thread is already inside a listener's call back (a refusal told from
/// inside one would otherwise recurse without end).
fn reenter(f: impl FnOnce()) {
    if INSIDE.with(|inside| inside.replace(true)) {
        return;
    }
    f();
    INSIDE.with(|inside| inside.set(false));
}

/// What a keyed breaker's listener was told (key, new state) and read back from its table.
type Heard = Arc<Mutex<Vec<(u32, State, Option<State>)>>>;

fn keyed_settings(run: u32, window: u32) -> CircuitBreakerBuilder {
    CircuitBreaker::builder()
        .window(Window::Count { calls: window })
        .no_failure_rate()
        .consecutive_failures(run)
        .break_duration(ms(100))
        .half_open_probes(1)
        .max_half_open_wait(None)
}

// Docs (StateChange::generation): "Listeners run after the transition lock is released".
// (KeyedCircuitBreaker, its table's lock) "Runs `use_it` on `key`'s breaker (made if new) under
// the table's lock ... Nothing that may tell a listener runs here." (on_state_change) "Called
// on every state change of any key's breaker, with the key, on the thread that caused it".
// (KeyedCircuitBreaker::reconfigure) "one of another shape is reset, with its state-change
// event".
#[test]
fn keyed_breaker_listeners_may_call_back_into_their_own_table() {
    without_hanging("keyed breaker", |progress| {
        let clock = FakeClock::new();
        let table: Arc<OnceLock<KeyedCircuitBreaker<u32, FakeClock>>> = Arc::default();
        let heard: Heard = Arc::default();
        let told = Arc::new(AtomicUsize::new(0));
        let (on_change, on_event) = (table.clone(), table.clone());
        let (heard_in, told_in) = (heard.clone(), told.clone());
        let keyed = keyed_settings(1, 10)
            .runtime(clock.clone())
            .on_event(move |_: &Event<'_>| {
                told_in.fetch_add(1, SeqCst);
                let Some(t) = on_event.get() else { return };
                reenter(|| {
                    for k in [1, 2, 3] {
                        let _ = (t.state(&k), t.counts(&k));
                        drop(t.get(&k));
                    }
                    let _ = t.try_acquire(&7).map(drop);
                    t.retain_in_use();
                    let _ = t.policy();
                });
            })
            .keyed::<u32>()
            .max_keys(100)
            .on_state_change(move |key: &u32, change: &StateChange<'_>| {
                let Some(t) = on_change.get() else { return };
                reenter(|| {
                    heard_in
                        .lock()
                        .unwrap()
                        .push((*key, change.to, t.state(key)));
                    let _ = t.counts(key);
                    drop(t.get(key));
                    let _ = t.try_acquire(&(key + 100)).map(drop);
                    t.retain_in_use();
                });
            })
            .build()
            .unwrap();
        assert!(table.set(keyed.clone()).is_ok());

        step(progress, "a trip");
        keyed.try_acquire(&1).unwrap().failure();
        step(progress, "a refusal");
        assert!(keyed.try_acquire(&1).is_err());
        step(progress, "a probe");
        clock.advance(ms(100));
        keyed.try_acquire(&1).unwrap().success();
        step(progress, "forced by hand through a handle");
        keyed.try_acquire(&2).unwrap().success();
        let handle = keyed.get(&2).unwrap();
        handle.force_open();
        handle.reset();
        drop(handle);
        step(progress, "a reconfigure that keeps the shape");
        assert_eq!(keyed.reconfigure(keyed_settings(3, 10)), Ok(0));
        keyed.try_acquire(&3).unwrap().failure();
        keyed.try_acquire(&3).unwrap().failure();
        step(progress, "a reconfigure whose thresholds trip a key");
        assert_eq!(keyed.reconfigure(keyed_settings(2, 10)), Ok(0));
        assert_eq!(keyed.state(&3), Some(State::Open));
        step(progress, "a reconfigure that resets every key");
        let reset = keyed.reconfigure(keyed_settings(2, 11)).unwrap();
        assert!(reset >= 1, "{reset}");
        step(progress, "checks");
        let heard = heard.lock().unwrap().clone();
        assert!(heard.len() >= 7, "{heard:?}");
        for (key, to, read) in &heard {
            assert_eq!(
                *read,
                Some(*to),
                "key {key}: the listener reads the state it is told of: {heard:?}"
            );
        }
        assert!(told.load(SeqCst) > 0);
    });
}

// Docs (KeyedCircuitBreaker): "a new key meeting a table ... full of keys it may not forget is
// refused with `Rejected::KeysFull`"; (Event::policy) "a keyed table's own refusals (a full
// table) come as `keyed_breaker` ..."; its table's lock: "Nothing that may tell a listener runs
// here."
#[test]
fn a_keyed_breaker_listener_told_of_a_full_table_may_call_back_into_it() {
    without_hanging("keyed breaker, full table", |progress| {
        let clock = FakeClock::new();
        let table: Arc<OnceLock<KeyedCircuitBreaker<u32, FakeClock>>> = Arc::default();
        let full = Arc::new(AtomicUsize::new(0));
        let (t, full_in) = (table.clone(), full.clone());
        let keyed = keyed_settings(1, 10)
            .runtime(clock.clone())
            .on_event(move |event: &Event<'_>| {
                if let EventKind::Rejected(Rejected::KeysFull { .. }) = event.kind {
                    full_in.fetch_add(1, SeqCst);
                }
                let Some(t) = t.get() else { return };
                reenter(|| {
                    let _ = (t.state(&1), t.counts(&1));
                    drop(t.get(&1));
                    assert!(matches!(t.try_acquire(&2), Err(Rejected::KeysFull { .. })));
                    assert_eq!(t.retain_in_use(), 0, "an open key is never forgotten");
                    let _ = t.reconfigure(keyed_settings(1, 10));
                });
            })
            .keyed::<u32>()
            .max_keys(1)
            .build()
            .unwrap();
        assert!(table.set(keyed.clone()).is_ok());
        keyed.try_acquire(&1).unwrap().failure();
        step(progress, "a new key meets a full table");
        assert!(matches!(
            keyed.try_acquire(&2),
            Err(Rejected::KeysFull { .. })
        ));
        assert!(full.load(SeqCst) >= 1, "the full table was told");
        step(progress, "the open key refuses");
        assert!(keyed.try_acquire(&1).is_err());
    });
}

/// Polls a future once with a waker that does nothing.
fn poll_once<F: Future + ?Sized>(fut: Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(Waker::noop()))
}

// Docs (BulkheadBuilder::on_event): "Calls `listener` with everything the bulkhead does: each
// refusal with its reason, and each wait that ended admitted with its length. On the caller's
// thread, in the call". (telemetry::Event) "Listeners run on the caller's thread, in the call,
// after the policy's state has changed: keep them short ... and never call the same policy
// from one" — so the listener here calls its table for the other keys only. (KeyedBulkhead) "a new key meeting a table ... full of busy keys is
// refused with `Rejected::KeysFull`". (KeyedBulkhead::reconfigure) "growing hands the new
// permits to queued callers first" (as `Bulkhead::reconfigure`).
#[test]
fn keyed_bulkhead_listeners_may_call_back_into_their_own_table() {
    without_hanging("keyed bulkhead", |progress| {
        let clock = FakeClock::new();
        let table: Arc<OnceLock<KeyedBulkhead<u32, FakeClock>>> = Arc::default();
        let told = Arc::new(AtomicUsize::new(0));
        let (t, told_in) = (table.clone(), told.clone());
        let keyed = Bulkhead::builder(1)
            .max_queue(2)
            .max_wait(ms(50))
            .runtime(clock.clone())
            .on_event(move |_: &Event<'_>| {
                told_in.fetch_add(1, SeqCst);
                let Some(t) = t.get() else { return };
                // Key 1 makes the events: "never call the same policy from one".
                reenter(|| {
                    for k in [2, 3] {
                        let _ = t.in_flight(&k);
                        drop(t.get(&k));
                    }
                    let _ = t.try_acquire(&9).map(drop);
                    t.retain_in_use();
                });
            })
            .keyed()
            .max_keys(2)
            .build::<u32>()
            .unwrap();
        assert!(table.set(keyed.clone()).is_ok());

        step(progress, "a full key refuses");
        let held = keyed.try_acquire(&1).unwrap();
        assert_eq!(keyed.try_acquire(&1).unwrap_err(), Rejected::BulkheadFull);
        step(progress, "a wait that runs out");
        let mut waiter = Box::pin(keyed.acquire_before(&1, Deadline::none()));
        assert!(poll_once(waiter.as_mut()).is_pending());
        clock.advance(ms(50));
        assert!(matches!(poll_once(waiter.as_mut()), Poll::Ready(Err(_))));
        step(progress, "a wait that ends admitted");
        let mut waiter = Box::pin(keyed.acquire_before(&1, Deadline::none()));
        assert!(poll_once(waiter.as_mut()).is_pending());
        clock.advance(ms(10));
        drop(held);
        let Poll::Ready(Ok(held)) = poll_once(waiter.as_mut()) else {
            panic!("the freed slot goes to the waiter")
        };
        step(progress, "a full table");
        let other = keyed.try_acquire(&2).unwrap();
        assert!(matches!(
            keyed.try_acquire(&3),
            Err(Rejected::KeysFull { retry_after: None })
        ));
        step(progress, "a grown key admits its waiter");
        let mut waiter = Box::pin(keyed.acquire_before(&1, Deadline::none()));
        assert!(poll_once(waiter.as_mut()).is_pending());
        clock.advance(ms(10));
        keyed
            .reconfigure(Bulkhead::builder(2).max_queue(2).max_wait(ms(50)))
            .unwrap();
        let Poll::Ready(Ok(second)) = poll_once(waiter.as_mut()) else {
            panic!("growing hands the new slot to the waiter")
        };
        assert_eq!(keyed.in_flight(&1), 2);
        drop((held, second, other));
        assert_eq!((keyed.in_flight(&1), keyed.in_flight(&2)), (0, 0));
        assert!(told.load(SeqCst) >= 4, "{}", told.load(SeqCst));
    });
}

// Docs (AdaptiveLimiterBuilder::on_event): "Tells `listener` of its refusals and waits, as a
// bulkhead's `on_event` does." (telemetry::Event) "... never call the same policy from one" —
// so the listener calls its table for the other keys only. (KeyedAdaptiveLimiter) "Its keys' refusals and waits are
// reported as an `AdaptiveLimiter`'s of its name (a bulkhead's); a full table's refusals as a
// keyed bulkhead's".
#[test]
fn keyed_adaptive_listeners_may_call_back_into_their_own_table() {
    without_hanging("keyed adaptive limiter", |progress| {
        let clock = FakeClock::new();
        let table: Arc<OnceLock<KeyedAdaptiveLimiter<u32, Aimd, FakeClock>>> = Arc::default();
        let told = Arc::new(AtomicUsize::new(0));
        let (t, told_in) = (table.clone(), told.clone());
        let aimd = Aimd::builder()
            .min_limit(1)
            .initial_limit(1)
            .build()
            .unwrap();
        let keyed = AdaptiveLimiter::builder(aimd)
            .max_queue(2)
            .max_wait(ms(50))
            .runtime(clock.clone())
            .on_event(move |_: &Event<'_>| {
                told_in.fetch_add(1, SeqCst);
                let Some(t) = t.get() else { return };
                // Key 1 makes the events: "never call the same policy from one".
                reenter(|| {
                    for k in [2, 3] {
                        let _ = (t.limit(&k), t.in_flight(&k));
                    }
                    drop(t.get(&2));
                    let _ = t.try_acquire(&9).map(drop);
                    t.retain_in_use();
                });
            })
            .keyed()
            .max_keys(2)
            .build::<u32>()
            .unwrap();
        assert!(table.set(keyed.clone()).is_ok());

        step(progress, "a full key refuses");
        let held = keyed.try_acquire(&1).unwrap();
        assert_eq!(keyed.try_acquire(&1).unwrap_err(), Rejected::BulkheadFull);
        step(progress, "a wait that runs out");
        let mut waiter = Box::pin(keyed.acquire_before(&1, Deadline::none()));
        assert!(poll_once(waiter.as_mut()).is_pending());
        clock.advance(ms(50));
        assert!(matches!(poll_once(waiter.as_mut()), Poll::Ready(Err(_))));
        step(progress, "a wait that ends admitted");
        let mut waiter = Box::pin(keyed.acquire_before(&1, Deadline::none()));
        assert!(poll_once(waiter.as_mut()).is_pending());
        clock.advance(ms(10));
        held.success();
        let Poll::Ready(Ok(held)) = poll_once(waiter.as_mut()) else {
            panic!("the freed slot goes to the waiter")
        };
        step(progress, "a full table");
        let other = keyed.try_acquire(&2).unwrap();
        assert!(matches!(
            keyed.try_acquire(&3),
            Err(Rejected::KeysFull { retry_after: None })
        ));
        drop((held, other));
        assert_eq!((keyed.in_flight(&1), keyed.in_flight(&2)), (0, 0));
        assert!(told.load(SeqCst) >= 4, "{}", told.load(SeqCst));
    });
}

// === 4. the keyed breaker's idle rule ======================================================

const TTL: Duration = Duration::from_secs(60);

/// A keyed breaker that never trips on its own (a failure stays in the window of a closed
/// breaker), with an idle TTL of a minute.
fn idle_table(clock: &FakeClock, max_keys: usize) -> KeyedCircuitBreaker<&'static str, FakeClock> {
    CircuitBreaker::builder()
        .runtime(clock.clone())
        .window(Window::Count { calls: 100 })
        .failure_rate(0.5)
        .minimum_calls(100)
        .keyed()
        .max_keys(max_keys)
        .idle_ttl(TTL)
        .build()
        .unwrap()
}

// Docs (KeyedCircuitBreaker): "A key is forgotten ... only when nothing depends on it: its
// breaker is closed, no permit or handle from `get` is out, and either its window is empty or
// it has not been used for `idle_ttl` (used: a call asked for, or a call of its ended in
// failure, however long ago it began)." (retain_in_use) "Forgets every key that may go now".
#[test]
fn a_long_call_that_ends_in_failure_keeps_its_key_for_idle_ttl_from_the_failure() {
    for long in [HOUR, YEAR, CENTURY] {
        let clock = FakeClock::new();
        let table = idle_table(&clock, 100);
        let permit = table.try_acquire(&"a").unwrap();
        clock.advance(long);
        assert_eq!(table.retain_in_use(), 0, "{long:?}: a permit is out");
        permit.failure();
        assert_eq!(table.state(&"a"), Some(State::Closed));
        clock.advance(TTL - ms(1));
        assert_eq!(
            table.retain_in_use(),
            0,
            "{long:?}: used by its failure a moment ago, however long ago it began"
        );
        assert_eq!(table.counts(&"a").map(|c| c.failures), Some(1));
        clock.advance(ms(1));
        assert_eq!(
            table.retain_in_use(),
            1,
            "{long:?}: idle for the TTL since the failure"
        );
        assert_eq!(table.state(&"a"), None);
    }
}

// Docs (KeyedCircuitBreaker): "used: a call asked for, or a call of its ended in failure" — a
// long call ending in success is not a use at its end, and reading a key is no use at all.
#[test]
fn neither_a_late_success_nor_reading_the_key_counts_as_using_it() {
    let clock = FakeClock::new();
    let table = idle_table(&clock, 100);
    table.try_acquire(&"a").unwrap().failure();
    let asked = clock.now();
    let permit = table.try_acquire(&"a").unwrap();
    clock.advance(HOUR);
    permit.success();
    assert_eq!(table.counts(&"a").map(|c| c.calls), Some(2));
    assert_eq!(
        table.retain_in_use(),
        1,
        "last used when the call was asked for, an hour ago"
    );
    assert_eq!(table.state(&"a"), None);

    // A fresh failure, then only reads for longer than the TTL.
    table.try_acquire(&"a").unwrap().failure();
    let failed = clock.now();
    while clock.now() - failed < TTL {
        clock.advance(Duration::from_secs(10));
        assert_eq!(table.state(&"a"), Some(State::Closed));
        assert!(table.counts(&"a").is_some());
        drop(table.get(&"a"));
        if clock.now() - failed < TTL {
            assert_eq!(table.retain_in_use(), 0);
        }
    }
    assert_eq!(table.retain_in_use(), 1, "reads are not uses");
    assert!(asked < failed);
}

// Docs (KeyedCircuitBreaker): "a new key meeting a table ... full of keys it may not forget is
// refused with `Rejected::KeysFull`, whose `retry_after` says when the first of them goes idle";
// (Rejected::KeysFull::retry_after) "A lower bound: a key used in the meantime is kept
// longer." (max_keys) "one shard up to 511 keys".
#[test]
fn a_full_tables_retry_after_counts_from_the_failure_of_a_long_call_not_its_start() {
    let clock = FakeClock::new();
    let table = idle_table(&clock, 1);
    let permit = table.try_acquire(&"a").unwrap();
    assert!(matches!(
        table.try_acquire(&"b"),
        Err(Rejected::KeysFull { retry_after: None })
    ));
    clock.advance(2 * HOUR);
    permit.failure();
    clock.advance(Duration::from_secs(10));
    assert_eq!(
        table.try_acquire(&"b").map(drop),
        Err(Rejected::KeysFull {
            retry_after: Some(Duration::from_secs(50))
        }),
        "idle a minute after the failure"
    );
    clock.advance(Duration::from_secs(50));
    let b = table
        .try_acquire(&"b")
        .expect("\"a\" went idle: forgotten for \"b\"");
    assert_eq!(table.state(&"a"), None);
    b.failure();
    assert_eq!(
        table.try_acquire(&"c").map(drop),
        Err(Rejected::KeysFull {
            retry_after: Some(TTL)
        })
    );
    // (reconfigure) "one of another shape is reset": an empty window "may go at once".
    let reset = table
        .reconfigure(
            CircuitBreaker::builder()
                .window(Window::Count { calls: 101 })
                .failure_rate(0.5)
                .minimum_calls(100),
        )
        .unwrap();
    assert_eq!(reset, 1);
    assert!(
        table.try_acquire(&"c").is_ok(),
        "a reset key's empty window goes at once"
    );
    assert_eq!(table.state(&"b"), None);
}
