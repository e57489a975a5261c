//! Hostile black-box tests of tower stacks, written from the rustdoc alone: the timeout layer's
//! named response future and its one budget for readiness and call, stacks composed with
//! `tower::ServiceBuilder` under seeded random cancellation, a stack stored in a struct with
//! every type spelled out, and what every layer must do alike (one admission however often
//! `poll_ready` is called, inner readiness errors, causes behind a `BoxError`, `Debug`, a
//! whole `max_wait` for each new wait). The shared services, pollers and storms are in
//! `admit_support`.

mod admit_support;
mod common;
mod support;

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::{Context, Poll};
use std::time::Duration;

use admit_support::{
    Answer, Boom, Poller, Stack, StackFuture, Work, WorkFuture, bulkhead, settle, storm,
    tripped_breaker,
};
use common::ms;
use support::{HOUR, Rng, assert_conserved};
use tidewall::admission::Admission;
use tidewall::breaker::{CircuitBreaker, State};
use tidewall::bulkhead::Bulkhead;
use tidewall::rate::RateLimiter;
use tidewall::rt::{Clock, Runtime, Spawn};
use tidewall::testing::{Clocked, FakeClock};
use tidewall::tower::{
    AdmitLayer, AdmitMode, BreakerLayer, RetryLayer, RetryService, TimeoutLayer, timeout,
};
use tidewall::{Backoff, Error, Jitter, Rejected};
use tower::ServiceExt as _;
use tower_layer::Layer;
use tower_service::Service;

// --- a retry policy for the stacks ---------------------------------------------------------

fn backoff(attempts: u32, delay: Duration) -> Backoff {
    Backoff::constant(delay)
        .jitter(Jitter::None)
        .max_attempts(attempts)
        .build()
        .unwrap()
}

// === TimeoutLayer ==========================================================================

// Docs (timeout `ResponseFuture`): "the inner call, or PolicyError::timed_out when the budget
// runs out first. Cancel safety: dropping it drops the inner call and the timer." (Typed:
// `Error::TimedOut`.)
#[test]
fn a_timeout_response_future_is_named_and_dropping_it_drops_the_call_and_the_timer() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let work = Work::new(&clock);
    let mut svc = TimeoutLayer::new(ms(100))
        .runtime(clock.clone())
        .layer(work.clone());
    assert_eq!(poller.ready(&mut svc), Poll::Ready(Ok(())));
    let fut: timeout::ResponseFuture<WorkFuture<FakeClock>, FakeClock> = svc.call(40);
    let mut fut = Box::pin(fut);
    assert!(poller.poll(fut.as_mut()).is_pending());
    assert_eq!(work.gauge.now(), 1);
    assert!(clock.pending_timers() >= 1);
    drop(fut);
    assert_eq!(work.gauge.now(), 0, "the inner call was dropped");
    assert_eq!(clock.pending_timers(), 0, "and the timer");

    let start = clock.now();
    {
        let mut fut = pin!(svc.call(40));
        let out = settle(&clock, &poller, start + HOUR, |cx| fut.as_mut().poll(cx));
        assert_eq!(out, Some(Ok(40)));
        assert_eq!(clock.now() - start, ms(40));
    }
    assert_eq!(clock.pending_timers(), 0);

    let start = clock.now();
    {
        let mut fut = pin!(svc.call(200));
        let out = settle(&clock, &poller, start + HOUR, |cx| fut.as_mut().poll(cx));
        assert_eq!(out, Some(Err(Error::TimedOut)));
        assert_eq!(clock.now() - start, ms(100));
    }
    assert_eq!(work.gauge.now(), 0);
    assert_eq!(clock.pending_timers(), 0);
}

// Docs (`TimeoutLayer`): "Bounds each request — waiting for the service to be ready and the
// call — by timeout ... if readiness takes too long, the request times out with
// PolicyError::timed_out (typed: Error::TimedOut): poll_ready reports ready ... and the next
// call fails at once, the inner service not called. Otherwise the call gets only what is
// left." Over a WaitReady admission: the slot is released at the end.
#[test]
fn a_timeout_over_a_waiting_admission_bounds_readiness_and_call_with_one_budget() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let bulkhead = bulkhead(&clock, 1, None);
    let work = Work::new(&clock);
    let stack = || {
        TimeoutLayer::new(ms(100)).runtime(clock.clone()).layer(
            AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitReady)
                .runtime(clock.clone())
                .layer(work.clone()),
        )
    };

    // Readiness never comes: TimedOut at 100 ms (ready, then the call fails at once), and the
    // abandoned wait leaves with the service.
    let held = bulkhead.try_acquire_owned().unwrap();
    let mut svc = stack();
    let start = clock.now();
    let out = settle(&clock, &poller, start + HOUR, |cx| svc.poll_ready(cx));
    assert_eq!(out, Some(Ok(())), "ready: the timeout waits for the call");
    assert_eq!(clock.now() - start, ms(100));
    assert_eq!(
        poller.poll(pin!(svc.call(50))),
        Poll::Ready(Err(Error::TimedOut)),
        "the call fails at once"
    );
    assert_eq!(clock.now() - start, ms(100));
    assert_eq!(work.calls(), 0, "the inner service was not called");
    drop(svc);
    assert_eq!(bulkhead.queued(), 0);
    assert_eq!(clock.pending_timers(), 0);

    // Ready after 60 ms: a 50 ms call gets the 40 ms left.
    let mut svc = stack();
    let start = clock.now();
    assert!(poller.ready(&mut svc).is_pending());
    clock.advance(ms(60));
    drop(held);
    let out = settle(&clock, &poller, start + HOUR, |cx| svc.poll_ready(cx));
    assert_eq!(out, Some(Ok(())));
    assert_eq!(clock.now() - start, ms(60));
    {
        let mut call = pin!(svc.call(50));
        let out = settle(&clock, &poller, start + HOUR, |cx| call.as_mut().poll(cx));
        assert_eq!(out, Some(Err(Error::TimedOut)));
        assert_eq!(clock.now() - start, ms(100));
    }
    assert_eq!(bulkhead.available(), 1, "the timed-out call freed its slot");
    assert_eq!(work.gauge.now(), 0);
    drop(svc);
    assert_eq!(clock.pending_timers(), 0);
    assert_conserved(&bulkhead);
}

// Docs (`TimeoutLayer`): "The clock starts when poll_ready first has to wait for a request".
// Polling again while waiting does not restart it.
#[test]
fn repeated_polls_of_a_waiting_timeout_service_keep_the_first_start() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let bulkhead = bulkhead(&clock, 1, None);
    let held = bulkhead.try_acquire_owned().unwrap();
    let mut svc = TimeoutLayer::new(ms(100)).runtime(clock.clone()).layer(
        AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitReady)
            .runtime(clock.clone())
            .layer(Work::new(&clock)),
    );
    let start = clock.now();
    assert!(poller.ready(&mut svc).is_pending());
    for _ in 0..3 {
        clock.advance(ms(30));
        assert!(poller.ready(&mut svc).is_pending());
    }
    clock.advance(ms(10));
    assert_eq!(
        poller.ready(&mut svc),
        Poll::Ready(Ok(())),
        "ready: the timeout waits for the call"
    );
    assert_eq!(clock.now() - start, ms(100));
    assert_eq!(
        poller.poll(pin!(svc.call(2))),
        Poll::Ready(Err(Error::TimedOut)),
        "the call fails at once"
    );
    assert_eq!(clock.now() - start, ms(100));
    drop((svc, held));
    assert_conserved(&bulkhead);
}

// Docs (`TimeoutLayer`): "The clock starts when poll_ready first has to wait for a request (or
// at the call, if the service was ready at once). A wait that ended is charged to the next
// call, and the time the service then sits ready before that call comes is not. ... the call
// gets only what is left." 60 ms of readiness, an hour ready, then a 50 ms call: it has 40 ms,
// from the call. (Before audit s35 the idle hour was charged: the request was sent and timed
// out at once, which a balancer or `Steer` readying services early made common.)
#[test]
fn a_call_made_long_after_readiness_gets_what_readiness_left() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let bulkhead = bulkhead(&clock, 1, None);
    let work = Work::new(&clock);
    let held = bulkhead.try_acquire_owned().unwrap();
    let mut svc = TimeoutLayer::new(ms(100)).runtime(clock.clone()).layer(
        AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitReady)
            .runtime(clock.clone())
            .layer(work.clone()),
    );
    assert!(poller.ready(&mut svc).is_pending());
    clock.advance(ms(60));
    drop(held);
    assert_eq!(poller.ready(&mut svc), Poll::Ready(Ok(())));
    clock.advance(HOUR);
    let start = clock.now();
    {
        let mut call = pin!(svc.call(50));
        let out = settle(&clock, &poller, start + HOUR, |cx| call.as_mut().poll(cx));
        assert_eq!(out, Some(Err(Error::TimedOut)));
        assert_eq!(
            clock.now() - start,
            ms(40),
            "what readiness left, from the call"
        );
    }
    assert_eq!(work.calls(), 1, "the request was sent");
    assert_eq!(bulkhead.available(), 1);
    drop(svc);
    assert_conserved(&bulkhead);
}

// === whole stacks ==========================================================================

// AdmitLayer(WaitReady bulkhead) + BreakerLayer(wait_in_ready) + TimeoutLayer + RetryLayer,
// composed with tower::ServiceBuilder, under seeded random cancellation. Docs as above for
// each layer; afterwards every slot is free and the breaker closes again.
async fn service_builder_stack_storm<R: Runtime>(rt: Clocked<R>) {
    let bulkhead = bulkhead(&rt, 2, Some(ms(30)));
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(3)
        .break_duration(ms(15))
        .half_open_probes(2)
        .max_half_open_wait(None)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let work = Work::new(&rt);
    let svc = tower::ServiceBuilder::new()
        .layer(TimeoutLayer::new(ms(90)).runtime(rt.clone()))
        .layer(RetryLayer::new(backoff(3, ms(2))).runtime(rt.clone()))
        .layer(BreakerLayer::new(breaker.clone()).wait_in_ready(ms(40)))
        .layer(
            AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitReady)
                .runtime(rt.clone())
                .max_wait(ms(25)),
        )
        .service(work.clone());
    let mut rng = Rng::new(0x57AC_4ADD);
    storm(&rt, &svc, &mut rng, 150).await;
    assert_eq!(work.gauge.now(), 0);
    assert!(
        work.gauge.most() <= 2,
        "{} at once through a bulkhead of 2",
        work.gauge.most()
    );
    rt.sleep(Duration::from_secs(1)).await;
    let mut svc = svc;
    let mut trail = vec![breaker.state()];
    // Healthy calls from here on. The storm's failures may still sit in the count window:
    // the success that fills it to `minimum_calls` can trip the failure-rate rule (as the
    // breaker's docs say every outcome decides), and two probes then close it with an empty
    // window. So six calls: at most three to fill the window, two probes, one more closed.
    for _ in 0..6 {
        let r = match svc.ready().await {
            Ok(ready) => ready.call(4).await,
            Err(e) => Err(e),
        };
        trail.push(breaker.state());
        assert_eq!(r, Ok(4), "breaker states {trail:?}");
    }
    assert_eq!(breaker.state(), State::Closed, "breaker states {trail:?}");
    assert_eq!(
        trail[trail.len() - 2..],
        [State::Closed, State::Closed],
        "closed, and stays closed: {trail:?}"
    );
    drop(svc);
    assert_conserved(&bulkhead);
}

#[test]
fn a_service_builder_stack_conserves_capacity_and_closes_again_after_random_cancellation_on_every_runtime()
 {
    on_every_runtime!(service_builder_stack_storm);
}

/// A client that keeps its stack, a retrying copy of it, and the calls in flight, in fields.
struct Client<R: Clock> {
    stack: Stack<R>,
    retried: RetryService<Stack<R>, R>,
    in_flight: Vec<StackFuture<R>>,
}

impl<R: Clock> Client<R> {
    fn new(rt: &R, bulkhead: &Bulkhead<R>, breaker: &CircuitBreaker<R>, work: &Work<R>) -> Self {
        let admit = AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitReady)
            .runtime(rt.clone())
            .max_wait(ms(200))
            .layer(work.clone());
        let guarded = BreakerLayer::new(breaker.clone())
            .wait_in_ready(Duration::from_secs(2))
            .layer(admit);
        let stack: Stack<R> = TimeoutLayer::new(ms(500))
            .runtime(rt.clone())
            .layer(guarded);
        let retried = RetryLayer::new(backoff(3, ms(5)))
            .runtime(rt.clone())
            .layer(stack.clone());
        Self {
            stack,
            retried,
            in_flight: Vec::new(),
        }
    }
}

// Docs (tower module): "Response futures are named types (each middleware's module holds its
// ResponseFuture), so a stack can be stored without boxing."
async fn spelled_out_stack<R: Runtime>(rt: Clocked<R>) {
    fn send_static<T: Send + 'static>(_: &T) {}
    let bulkhead = bulkhead(&rt, 2, None);
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(2)
        .break_duration(ms(100))
        .half_open_probes(1)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let work = Work::new(&rt);
    let mut client = Client::new(&rt, &bulkhead, &breaker, &work);
    send_static(&client.stack);
    for round in 1..=3 {
        rt.sleep(3 * HOUR).await;
        for d in [20, 40] {
            poll_fn(|cx| client.stack.poll_ready(cx)).await.unwrap();
            let fut: StackFuture<Clocked<R>> = client.stack.call(d);
            send_static(&fut);
            client.in_flight.push(fut);
        }
        assert_eq!(bulkhead.available(), 0, "round {round}: two calls stored");
        let results = futures_util::future::join_all(client.in_flight.drain(..)).await;
        assert_eq!(results, vec![Ok(20), Ok(40)], "round {round}");
        assert_eq!(bulkhead.available(), 2, "round {round}");

        let ok = client.retried.ready().await.unwrap().call(6).await;
        assert_eq!(ok, Ok(6), "round {round}");
        // Failures trip the breaker through the retries.
        let failed = client.retried.ready().await.unwrap().call(3).await;
        assert!(failed.is_err(), "round {round}: {failed:?}");
        assert_eq!(breaker.state(), State::Open, "round {round}");
        // The next caller waits out the break in poll_ready and its probe closes the breaker.
        let start = rt.now();
        poll_fn(|cx| client.stack.poll_ready(cx)).await.unwrap();
        assert!(rt.now() - start <= ms(100), "round {round}");
        assert_eq!(client.stack.call(8).await, Ok(8), "round {round}");
        assert_eq!(breaker.state(), State::Closed, "round {round}");
    }
    drop(client);
    assert_eq!(work.gauge.now(), 0);
    assert_conserved(&bulkhead);
}

#[test]
fn a_stack_stored_in_a_struct_with_spelled_out_types_works_across_hours_of_idle_time_on_every_runtime()
 {
    on_every_runtime!(spelled_out_stack);
}

// Docs (tower): "Behind BoxError ..., find the cause with cause: cause::<Rejected>(&*err),
// cause::<Elapsed>(&*err)." Through three layers, each adding to the one typed `Error`.
#[test]
fn a_rejection_or_timeout_deep_in_a_stack_is_found_behind_a_box_error() {
    type BoxError = Box<dyn std::error::Error + Send + Sync>;
    let clock = FakeClock::new();
    let poller = Poller::new();
    let bulkhead = bulkhead(&clock, 1, None);
    let breaker = CircuitBreaker::builder()
        .runtime(clock.clone())
        .build()
        .unwrap();
    let work = Work::new(&clock);
    let mut client = Client::new(&clock, &bulkhead, &breaker, &work);
    let held = bulkhead.try_acquire_owned().unwrap();
    let start = clock.now();
    let out = settle(&clock, &poller, start + HOUR, |cx| {
        client.stack.poll_ready(cx)
    });
    // Docs (`AdmitMode::WaitReady`): "poll_ready then reports ready and the next call fails at
    // once with the refusal, without calling the inner service".
    assert_eq!(out, Some(Ok(())), "ready: the refusal waits for the call");
    let refused_at = clock.now();
    let out = poller.poll(pin!(client.stack.call(1)));
    assert_eq!(clock.now(), refused_at, "the call fails at once");
    assert_eq!(work.calls(), 0, "the inner service was not called");
    let Poll::Ready(Err(err)) = out else {
        panic!("the call should fail at once: {out:?}");
    };
    let err: BoxError = Box::new(err);
    assert_eq!(
        tidewall::tower::cause::<Rejected>(&*err),
        Some(&Rejected::DeadlineExceeded),
        "{err}"
    );
    drop(held);
    let mut client = Client::new(&clock, &bulkhead, &breaker, &work);
    let out = settle(&clock, &poller, clock.now() + HOUR, |cx| {
        client.stack.poll_ready(cx)
    });
    assert_eq!(out, Some(Ok(())));
    let mut call = Box::pin(client.stack.call(1_000));
    let out = settle(&clock, &poller, clock.now() + HOUR, |cx| {
        call.as_mut().poll(cx)
    });
    drop(call);
    let err: BoxError = Box::new(out.unwrap().unwrap_err());
    assert!(
        tidewall::tower::cause::<tidewall::time::Elapsed>(&*err).is_some(),
        "{err}"
    );
    let out = settle(&clock, &poller, clock.now() + HOUR, |cx| {
        client.stack.poll_ready(cx)
    });
    assert_eq!(out, Some(Ok(())));
    let mut call = pin!(client.stack.call(3));
    let out = settle(&clock, &poller, clock.now() + HOUR, |cx| {
        call.as_mut().poll(cx)
    });
    let err: BoxError = Box::new(out.unwrap().unwrap_err());
    assert_eq!(
        tidewall::tower::cause::<Boom>(&*err),
        Some(&Boom(3)),
        "{err}"
    );
}

// === every layer alike =====================================================================

// tower allows poll_ready to be called again after it returned ready: the service must still
// hold one admission, not one per poll. Docs (`WaitReady`): "the guard taken there ... is held
// until the call's response future completes"; (`wait_in_ready`): "holds the permit it gets
// until the call".
#[test]
fn a_service_polled_ready_repeatedly_holds_one_cell_one_slot_and_one_probe() {
    let clock = FakeClock::new();
    let poller = Poller::new();

    let limiter = RateLimiter::builder(10, Duration::from_secs(1))
        .burst(3)
        .jitter(Duration::ZERO)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let mut svc = AdmitLayer::new(limiter.clone(), AdmitMode::WaitReady)
        .runtime(clock.clone())
        .layer(Answer::default());
    for _ in 0..5 {
        assert_eq!(poller.ready(&mut svc), Poll::Ready(Ok(())));
    }
    assert_eq!(poller.poll(pin!(svc.call(Ok(1)))), Poll::Ready(Ok(1)));
    assert!(
        limiter.try_admit().is_some() && limiter.try_admit().is_some(),
        "five polls and one call spent one cell of three"
    );
    assert!(limiter.try_admit().is_none());

    let bulkhead = bulkhead(&clock, 2, None);
    let mut svc = AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitReady)
        .runtime(clock.clone())
        .layer(Answer::default());
    for _ in 0..5 {
        assert_eq!(poller.ready(&mut svc), Poll::Ready(Ok(())));
    }
    assert_eq!(bulkhead.available(), 1);
    drop(svc);
    assert_conserved(&bulkhead);

    let breaker = tripped_breaker(&clock, "hostile-admit-repeat");
    let breaker2 = CircuitBreaker::builder()
        .consecutive_failures(1)
        .break_duration(ms(100))
        .half_open_probes(2)
        .max_half_open_wait(None)
        .runtime(clock.clone())
        .build()
        .unwrap();
    breaker2.try_acquire().unwrap().failure();
    clock.advance(ms(100));
    let mut svc = BreakerLayer::new(breaker2.clone())
        .wait_in_ready(None)
        .layer(Answer::default());
    for _ in 0..5 {
        assert_eq!(poller.ready(&mut svc), Poll::Ready(Ok(())));
    }
    let second = breaker2
        .try_acquire()
        .expect("five polls took one probe of two");
    assert!(breaker2.try_acquire().is_err());
    drop(second);
    drop(svc);
    drop(breaker);
}

/// A service whose `poll_ready` fails: its readiness error must reach the caller, and
/// whatever an outer layer admitted for it must come back. Its error is a bare `Boom`: the
/// tests give it the stack's type with `.map_err(Error::Inner)`.
#[derive(Clone)]
struct Broken;

impl Service<u64> for Broken {
    type Response = u64;
    type Error = Boom;
    type Future = std::future::Ready<Result<u64, Boom>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Boom>> {
        Poll::Ready(Err(Boom(0)))
    }
    fn call(&mut self, d: u64) -> Self::Future {
        std::future::ready(Ok(d))
    }
}

// Docs (`AdmitService::into_inner`, bulkhead "Nothing leaks"), (`wait_in_ready`): the permit
// "given back when the service is dropped or called"; a readiness error is no call result.
#[test]
fn an_inner_readiness_error_reaches_the_caller_and_leaks_no_slot_or_probe() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    for mode in [AdmitMode::Reject, AdmitMode::WaitReady, AdmitMode::WaitCall] {
        let bulkhead = bulkhead(&clock, 1, None);
        let mut svc = AdmitLayer::new(bulkhead.clone(), mode)
            .runtime(clock.clone())
            .layer(Broken.map_err(Error::Inner));
        assert_eq!(
            poller.ready(&mut svc),
            Poll::Ready(Err(Error::Inner(Boom(0)))),
            "{mode:?}"
        );
        drop(svc);
        assert_conserved(&bulkhead);
    }
    let breaker = tripped_breaker(&clock, "hostile-admit-broken");
    clock.advance(ms(100));
    let counts = breaker.counts();
    let mut svc = BreakerLayer::new(breaker.clone())
        .wait_in_ready(None)
        .layer(Broken.map_err(Error::Inner));
    assert_eq!(
        poller.ready(&mut svc),
        Poll::Ready(Err(Error::Inner(Boom(0))))
    );
    drop(svc);
    assert_eq!(
        breaker.counts(),
        counts,
        "a readiness error records nothing"
    );
    assert_eq!(breaker.state(), State::HalfOpen);
    drop(breaker.try_acquire().expect("the probe came back"));
}

// Every public type here implements Debug; formatting must work in every state (idle,
// waiting, holding a guard) without blocking or panicking.
#[test]
fn services_and_response_futures_format_with_debug_in_every_state() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let bulkhead = bulkhead(&clock, 1, None);
    let breaker = tripped_breaker(&clock, "hostile-admit-debug");
    let layer = AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitReady).runtime(clock.clone());
    assert_eq!(layer.mode(), AdmitMode::WaitReady);
    assert_eq!(layer.admission().capacity(), 1);
    let mut a = layer.layer(Work::new(&clock));
    let mut b = layer.layer(Work::new(&clock));
    assert!(!format!("{layer:?} {a:?}").is_empty());
    assert_eq!(poller.ready(&mut a), Poll::Ready(Ok(())));
    assert!(poller.ready(&mut b).is_pending());
    assert!(!format!("{a:?} {b:?}").is_empty());
    let call = a.call(2);
    assert!(!format!("{call:?}").is_empty());
    drop(call);
    let blayer = BreakerLayer::new(breaker.clone()).wait_in_ready(None);
    let mut bsvc = blayer.layer(Answer::default());
    assert!(poller.ready(&mut bsvc).is_pending());
    assert!(!format!("{blayer:?} {bsvc:?}").is_empty());
    let bcall = bsvc.call(Ok(1));
    assert!(!format!("{bcall:?}").is_empty());
    drop(bcall);
    let mut tsvc = TimeoutLayer::new(ms(10))
        .runtime(clock.clone())
        .layer(Work::new(&clock));
    assert!(!format!("{tsvc:?}").is_empty());
    let tcall = tsvc.call(2);
    assert!(!format!("{tcall:?}").is_empty());
    drop((a, b, bsvc, tcall));
    assert_conserved(&bulkhead);
}

// Docs (`max_wait`): "Bounds each wait"; (`wait_in_ready`): "A wait longer than max_wait".
// Each new wait gets the whole bound again, however much of it the previous one used.
// (`AdmitMode::WaitReady`): a refused wait: "poll_ready then reports ready and the next call
// fails at once with the refusal, without calling the inner service"; that call ends it.
async fn each_wait_gets_the_whole_bound<R: Runtime>(rt: Clocked<R>) {
    let bulkhead = bulkhead(&rt, 1, None);
    let work = Work::new(&rt);
    let mut svc = AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitReady)
        .runtime(rt.clone())
        .max_wait(ms(50))
        .layer(work.clone());
    for round in 0..3 {
        // Slot freed after 40 of the 50 ms: admitted.
        let held = bulkhead.try_acquire_owned().unwrap();
        let clock = rt.clone();
        let release = rt.spawn(async move {
            clock.sleep(ms(40)).await;
            drop(held);
        });
        let start = rt.now();
        poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
        assert_eq!(rt.now() - start, ms(40), "round {round}");
        release.await.unwrap();
        assert_eq!(svc.call(0).await, Ok(0));
        // The next wait starts afresh: a slot freed after 45 ms is still in time.
        let held = bulkhead.try_acquire_owned().unwrap();
        let clock = rt.clone();
        let release = rt.spawn(async move {
            clock.sleep(ms(45)).await;
            drop(held);
        });
        let start = rt.now();
        poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
        assert_eq!(rt.now() - start, ms(45), "round {round}");
        release.await.unwrap();
        assert_eq!(svc.call(0).await, Ok(0));
        // A wait refused at its bound, then a new one: again the whole bound.
        let held = bulkhead.try_acquire_owned().unwrap();
        let calls = work.calls();
        let start = rt.now();
        assert_eq!(poll_fn(|cx| svc.poll_ready(cx)).await, Ok(()));
        assert_eq!(rt.now() - start, ms(50), "round {round}");
        assert_eq!(
            svc.call(0).await,
            Err(Error::Rejected(Rejected::DeadlineExceeded))
        );
        assert_eq!(
            rt.now() - start,
            ms(50),
            "round {round}: the call fails at once"
        );
        let start = rt.now();
        assert_eq!(poll_fn(|cx| svc.poll_ready(cx)).await, Ok(()));
        assert_eq!(rt.now() - start, ms(50), "round {round}: a fresh wait");
        assert_eq!(
            svc.call(0).await,
            Err(Error::Rejected(Rejected::DeadlineExceeded))
        );
        assert_eq!(
            rt.now() - start,
            ms(50),
            "round {round}: the call fails at once"
        );
        assert_eq!(
            work.calls(),
            calls,
            "round {round}: the inner service was not called"
        );
        drop(held);
    }
    assert_eq!(bulkhead.rejected(), 6);
    drop(svc);
    assert_conserved(&bulkhead);

    let breaker = CircuitBreaker::builder()
        .consecutive_failures(1)
        .break_duration(ms(40))
        .runtime(rt.clone())
        .build()
        .unwrap();
    let mut guarded = BreakerLayer::new(breaker.clone())
        .wait_in_ready(ms(50))
        .layer(work.clone());
    for round in 0..3 {
        breaker.try_acquire().unwrap().failure();
        let start = rt.now();
        poll_fn(|cx| guarded.poll_ready(cx)).await.unwrap();
        assert_eq!(rt.now() - start, ms(40), "round {round}");
        assert_eq!(guarded.call(0).await, Ok(0), "round {round}");
        assert_eq!(breaker.state(), State::Closed);
    }
}

#[test]
fn each_new_wait_gets_the_whole_max_wait_again_on_every_runtime() {
    on_every_runtime!(each_wait_gets_the_whole_bound);
}
