//! The tower layers: readiness timeouts, clone-on-retry-only, shared limits, shedding, and one
//! error type per stack (typed, boxed, or the user's own).

mod common;

use common::ms;

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tidewall::breaker::{CircuitBreaker, State};
use tidewall::bulkhead::Bulkhead;
use tidewall::classify::Verdict;
use tidewall::hedge::Hedge;
use tidewall::rate::RateLimiter;
use tidewall::rt::{Clock, Runtime, Spawn};
use tidewall::testing::Clocked;
use tidewall::time::Elapsed;
use tidewall::tower::{
    AdmitLayer, AdmitMode, BreakerLayer, HedgeLayer, PolicyError, RetryLayer, TimeoutLayer, cause,
};
use tidewall::{Backoff, Error, Jitter, Rejected};
use tower::ServiceExt as _;
use tower_layer::Layer;
use tower_service::Service;

/// A service built from a closure; ready after `ready_after` from its first `poll_ready`.
struct FnService<F, R: Runtime> {
    f: F,
    rt: R,
    ready_after: Duration,
    sleep: Option<Pin<Box<R::Sleep>>>,
}

impl<F: Clone, R: Runtime> Clone for FnService<F, R> {
    fn clone(&self) -> Self {
        Self {
            f: self.f.clone(),
            rt: self.rt.clone(),
            ready_after: self.ready_after,
            sleep: None,
        }
    }
}

fn service<F, R: Runtime>(rt: &R, f: F) -> FnService<F, R> {
    FnService {
        f,
        rt: rt.clone(),
        ready_after: Duration::ZERO,
        sleep: None,
    }
}

impl<F, Fut, Req, T, E, R> Service<Req> for FnService<F, R>
where
    F: FnMut(Req) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    R: Runtime,
{
    type Response = T;
    type Error = E;
    type Future = Fut;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        if self.ready_after.is_zero() {
            return Poll::Ready(Ok(()));
        }
        let (rt, after) = (&self.rt, self.ready_after);
        let sleep = self.sleep.get_or_insert_with(|| Box::pin(rt.sleep(after)));
        let ready = sleep.as_mut().poll(cx).is_ready();
        if ready {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    fn call(&mut self, req: Req) -> Fut {
        (self.f)(req)
    }
}

async fn ready_and_call<S: Service<Req>, Req>(
    service: &mut S,
    req: Req,
) -> Result<S::Response, S::Error> {
    poll_fn(|cx| service.poll_ready(cx)).await?;
    service.call(req).await
}

// Docs (`TimeoutLayer`): "if readiness takes too long, the request times out with
// PolicyError::timed_out (typed: Error::TimedOut): poll_ready reports ready (an error there
// would tell tower the service is broken for good) and the next call fails at once, the inner
// service not called. Otherwise the call gets only what is left."
async fn timeout_covers_readiness<R: Runtime>(rt: Clocked<R>) {
    let slow_ready = FnService {
        ready_after: ms(200),
        ..service(&rt, |()| async { Ok::<_, ()>(()) })
    };
    // The service's own error `()` becomes `Error::Inner(())`: the timeout adds `TimedOut`.
    let mut svc = TimeoutLayer::new(ms(100))
        .runtime(rt.clone())
        .layer(slow_ready.map_err(Error::Inner));
    let start = rt.now();
    assert_eq!(poll_fn(|cx| svc.poll_ready(cx)).await, Ok(()));
    assert_eq!(
        rt.now() - start,
        ms(100),
        "the readiness wait itself timed out"
    );
    assert_eq!(svc.call(()).await, Err(Error::TimedOut));
    assert_eq!(rt.now() - start, ms(100), "the call fails at once");

    // 60 ms of readiness leaves 40 ms for the call: a 50 ms call times out at 100 ms.
    let rt2 = rt.clone();
    let inner = FnService {
        ready_after: ms(60),
        ..service(&rt, move |()| {
            let rt = rt2.clone();
            async move {
                rt.sleep(ms(50)).await;
                Ok::<_, Error<()>>(())
            }
        })
    };
    let mut svc = TimeoutLayer::new(ms(100)).runtime(rt.clone()).layer(inner);
    let start = rt.now();
    assert_eq!(ready_and_call(&mut svc, ()).await, Err(Error::TimedOut));
    assert_eq!(rt.now() - start, ms(100));
}

#[test]
fn the_timeout_covers_poll_ready_on_every_runtime() {
    on_every_runtime!(timeout_covers_readiness);
}

// Docs (`TimeoutLayer`): "A wait that ended is charged to the next call, and the time the
// service then sits ready before that call comes is not." 60 ms of readiness, then a second
// ready: 40 ms are left for the call, counted from the call (audit s35: the idle second was
// charged too, so the request was sent and timed out at once).
async fn time_spent_ready_is_not_charged<R: Runtime>(rt: Clocked<R>) {
    for (call_takes, answered) in [(ms(30), true), (ms(50), false)] {
        let rt2 = rt.clone();
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let inner = FnService {
            ready_after: ms(60),
            ..service(&rt, move |()| {
                let rt = rt2.clone();
                counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    rt.sleep(call_takes).await;
                    Ok::<_, Error<()>>("answer")
                }
            })
        };
        let mut svc = TimeoutLayer::new(ms(100)).runtime(rt.clone()).layer(inner);
        poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
        rt.sleep(Duration::from_secs(1)).await;
        // A balancer or `Steer` readies it again before calling: ready at once.
        poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
        let called_at = rt.now();
        let result = svc.call(()).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        if answered {
            assert_eq!(result, Ok("answer"));
            assert_eq!(rt.now() - called_at, call_takes);
        } else {
            assert_eq!(result, Err(Error::TimedOut));
            assert_eq!(
                rt.now() - called_at,
                ms(40),
                "what readiness left of the budget"
            );
        }
    }
}

/// A service ready only inside the given windows of time since it was made (ends exclusive).
struct ReadyWithin<R: Runtime> {
    rt: R,
    origin: std::time::Instant,
    windows: Vec<(Duration, Duration)>,
    sleep: Option<Pin<Box<R::Sleep>>>,
}

impl<R: Runtime> Service<()> for ReadyWithin<R> {
    type Response = &'static str;
    type Error = Error<()>;
    type Future = Pin<Box<dyn Future<Output = Result<&'static str, Error<()>>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error<()>>> {
        loop {
            let now = self.rt.now() - self.origin;
            if self
                .windows
                .iter()
                .any(|&(from, to)| from <= now && now < to)
            {
                self.sleep = None;
                return Poll::Ready(Ok(()));
            }
            let Some(next) = self
                .windows
                .iter()
                .map(|&(from, _)| from)
                .find(|&from| from > now)
            else {
                return Poll::Pending;
            };
            let (rt, at) = (&self.rt, self.origin + next);
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(rt.sleep_until(at)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
        }
    }

    /// Answers after 80 ms.
    fn call(&mut self, (): ()) -> Self::Future {
        let answer = self.rt.sleep(ms(80));
        Box::pin(async move {
            answer.await;
            Ok("answer")
        })
    }
}

/// A wait that ended (40 ms) and was then followed by one that ran out (the next call fails
/// at once) leaves no charge behind: the call after that has its whole 100 ms, and its 80 ms
/// answer comes (review r21: the ended wait's 40 ms stayed charged to whatever call came
/// next, which then timed out at 60 ms).
async fn an_expired_wait_clears_the_charge_of_an_ended_one<R: Runtime>(rt: Clocked<R>) {
    let inner = ReadyWithin {
        rt: rt.clone(),
        origin: rt.now(),
        // Ready from 40 ms to 50 ms, then from 1 s on.
        windows: vec![(ms(40), ms(50)), (ms(1_000), Duration::MAX)],
        sleep: None,
    };
    let mut svc = TimeoutLayer::new(ms(100)).runtime(rt.clone()).layer(inner);
    let start = rt.now();
    poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    assert_eq!(rt.now() - start, ms(40));
    rt.sleep(ms(20)).await;
    // Not ready again until 1 s: the 100 ms budget runs out at 160 ms.
    poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    assert_eq!(
        svc.call(()).await,
        Err(Error::TimedOut),
        "that request failed at once"
    );
    rt.sleep(ms(1_000)).await;
    poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    let called = rt.now();
    assert_eq!(svc.call(()).await, Ok("answer"));
    assert_eq!(rt.now() - called, ms(80));
}

#[test]
fn time_spent_ready_is_not_charged_on_every_runtime() {
    on_every_runtime!(time_spent_ready_is_not_charged);
    on_every_runtime!(an_expired_wait_clears_the_charge_of_an_ended_one);
}

async fn timeout_budget_runs_from_the_call<R: Runtime>(rt: Clocked<R>) {
    let sleeper = rt.clone();
    let slow = service(&rt, move |()| {
        let rt = sleeper.clone();
        async move {
            rt.sleep(ms(500)).await;
            Ok::<_, Error<()>>("late")
        }
    });
    let mut svc = TimeoutLayer::new(ms(300)).runtime(rt.clone()).layer(slow);
    poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    // The response future is not polled for 400 ms: its budget ended 100 ms ago, so its
    // first poll times out at once (the timer is armed lazily, at the budget's end).
    let pending = svc.call(());
    rt.sleep(ms(400)).await;
    let polled_at = rt.now();
    assert!(matches!(pending.await, Err(Error::TimedOut)));
    assert_eq!(rt.now(), polled_at);
    // Polled at once, the same call times out exactly 300 ms after it was made.
    let start = rt.now();
    assert!(matches!(
        ready_and_call(&mut svc, ()).await,
        Err(Error::TimedOut)
    ));
    assert_eq!(rt.now() - start, ms(300));
}

#[test]
fn the_timeout_budget_runs_from_the_call_not_the_first_poll_on_every_runtime() {
    on_every_runtime!(timeout_budget_runs_from_the_call);
}

async fn timed_out_call_lets_go_at_once<R: Runtime>(rt: Clocked<R>) {
    let bulkhead = Bulkhead::builder(1).runtime(rt.clone()).build().unwrap();
    let sleeper = rt.clone();
    let slow = service(&rt, move |()| {
        let rt = sleeper.clone();
        async move {
            rt.sleep(ms(500)).await;
            Ok::<_, ()>(())
        }
    });
    let mut svc = tower::ServiceBuilder::new()
        .layer(TimeoutLayer::new(ms(100)).runtime(rt.clone()))
        .layer(AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitCall))
        .map_err(Error::Inner)
        .service(slow);
    poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    let mut pending = std::pin::pin!(svc.call(()));
    let result = poll_fn(|cx| pending.as_mut().poll(cx)).await;
    assert!(matches!(result, Err(Error::TimedOut)));
    // The response future is still alive, but the call it timed out is gone, slot and all.
    assert_eq!(bulkhead.available(), 1);
}

#[test]
fn a_timed_out_call_is_dropped_at_once_freeing_what_it_held_on_every_runtime() {
    on_every_runtime!(timed_out_call_lets_go_at_once);
}

/// A request that counts its clones.
struct Counted(Arc<AtomicUsize>);
impl Clone for Counted {
    fn clone(&self) -> Self {
        self.0.fetch_add(1, Ordering::SeqCst);
        Self(self.0.clone())
    }
}

async fn retry_clones_only_when_a_retry_can_follow<R: Runtime>(rt: Clocked<R>) {
    let backoff = |n| {
        Backoff::constant(ms(10))
            .jitter(Jitter::None)
            .max_attempts(n)
            .build()
            .unwrap()
    };
    for (attempts, failures, expected_clones, expected) in [
        (3, 2, 2, Ok(3)),
        (3, 5, 2, Err(3)),
        (1, 5, 0, Err(1)),
        (4, 0, 1, Ok(1)),
    ] {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let inner = service(&rt, move |_: Counted| {
            let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
            async move { if n > failures { Ok(n) } else { Err(n) } }
        });
        let mut svc = RetryLayer::new(backoff(attempts))
            .runtime(rt.clone())
            .layer(inner);
        let clones = Arc::new(AtomicUsize::new(0));
        assert_eq!(
            ready_and_call(&mut svc, Counted(clones.clone())).await,
            expected
        );
        // With max_attempts 4 and success at once, one clone was taken before the first attempt
        // (a retry was possible then) — and no more.
        assert_eq!(
            clones.load(Ordering::SeqCst),
            expected_clones,
            "{attempts} attempts, {failures} failures"
        );
    }
    // A cap on the total delay that not even the first pause fits leaves no retry possible,
    // whatever max_attempts says: the original goes out and nothing is cloned.
    let capped = Backoff::constant(ms(100))
        .jitter(Jitter::None)
        .max_attempts(3)
        .max_elapsed(ms(50))
        .build()
        .unwrap();
    let inner = service(&rt, |_: Counted| async { Err::<u32, u32>(1) });
    let mut svc = RetryLayer::new(capped).runtime(rt.clone()).layer(inner);
    let clones = Arc::new(AtomicUsize::new(0));
    assert_eq!(
        ready_and_call(&mut svc, Counted(clones.clone())).await,
        Err(1)
    );
    assert_eq!(clones.load(Ordering::SeqCst), 0);
}

#[test]
fn retry_clones_the_request_only_when_a_retry_can_follow_on_every_runtime() {
    on_every_runtime!(retry_clones_only_when_a_retry_can_follow);
}

async fn rate_limit_clones_share_one_limit<R: Runtime>(rt: Clocked<R>) {
    let limiter = RateLimiter::builder(10, ms(1_000))
        .burst(2)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let inner = service(&rt, |x: u32| async move { Ok::<_, Error<()>>(x) });
    let mut a = AdmitLayer::new(limiter.clone(), AdmitMode::Reject).layer(inner.clone());
    let mut b = a.clone();
    assert_eq!(ready_and_call(&mut a, 1).await, Ok(1));
    assert_eq!(ready_and_call(&mut b, 2).await, Ok(2));
    assert!(matches!(
        ready_and_call(&mut a, 3).await,
        Err(Error::Rejected(Rejected::RateLimited { .. }))
    ));
    // The waiting mode sleeps in poll_ready until the limiter admits: the next cell is
    // 100 ms away, plus the limiter's jitter (by default up to one interval, 100 ms).
    let mut waiting = AdmitLayer::new(limiter, AdmitMode::WaitReady).layer(inner);
    let start = rt.now();
    assert_eq!(ready_and_call(&mut waiting, 4).await, Ok(4));
    let waited = rt.now() - start;
    assert!(ms(100) <= waited && waited <= ms(200), "waited {waited:?}");
}

#[test]
fn rate_limit_clones_share_the_limit_on_every_runtime() {
    on_every_runtime!(rate_limit_clones_share_one_limit);
}

async fn bulkhead_and_breaker_shed_load<R: Runtime>(rt: Clocked<R>) {
    let bulkhead = Bulkhead::builder(1).runtime(rt.clone()).build().unwrap();
    let rt2 = rt.clone();
    let slow = service(&rt, move |()| {
        let rt = rt2.clone();
        async move {
            rt.sleep(ms(50)).await;
            Ok::<_, Error<()>>(())
        }
    });
    let mut first = AdmitLayer::new(bulkhead.clone(), AdmitMode::Reject).layer(slow.clone());
    let mut second = first.clone();
    let running = ready_and_call(&mut first, ());
    let mut running = Box::pin(running);
    assert!(futures_util::poll!(running.as_mut()).is_pending());
    assert_eq!(
        ready_and_call(&mut second, ()).await,
        Err(Error::Rejected(Rejected::BulkheadFull))
    );
    assert_eq!(running.await, Ok(()));
    assert_eq!(bulkhead.in_flight(), 0);

    let breaker = CircuitBreaker::builder()
        .runtime(rt.clone())
        .consecutive_failures(2)
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let failing = service(&rt, move |()| {
        seen.fetch_add(1, Ordering::SeqCst);
        async { Err::<(), _>(Error::Inner("down")) }
    });
    let mut svc = BreakerLayer::new(breaker).layer(failing);
    for _ in 0..5 {
        let _ = ready_and_call(&mut svc, ()).await;
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "open after 2 failures: 3 calls shed"
    );
}

#[test]
fn bulkhead_and_breaker_layers_shed_load_on_every_runtime() {
    on_every_runtime!(bulkhead_and_breaker_shed_load);
}

async fn hedge_layer_cuts_the_tail<R: Runtime>(rt: Clocked<R>) {
    let hedge = Hedge::builder()
        .delay(ms(20))
        .runtime(rt.clone())
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let (seen, rt2) = (calls.clone(), rt.clone());
    let inner = service(&rt, move |()| {
        let n = seen.fetch_add(1, Ordering::SeqCst);
        let rt = rt2.clone();
        async move {
            rt.sleep(if n == 0 { ms(500) } else { ms(5) }).await;
            Ok::<_, ()>(n)
        }
    });
    let mut svc = HedgeLayer::new(hedge).layer(inner);
    let start = rt.now();
    assert_eq!(ready_and_call(&mut svc, ()).await, Ok(1));
    assert_eq!(rt.now() - start, ms(25));
}

#[test]
fn hedge_layer_on_every_runtime() {
    on_every_runtime!(hedge_layer_cuts_the_tail);
}

async fn bulkhead_layer_waits_for_a_slot<R: Runtime>(rt: Clocked<R>) {
    let bulkhead = Bulkhead::builder(1)
        .max_wait(ms(100))
        .runtime(rt.clone())
        .build()
        .unwrap();
    let rt2 = rt.clone();
    let slow = service(&rt, move |()| {
        let rt = rt2.clone();
        async move {
            rt.sleep(ms(40)).await;
            Ok::<_, ()>(())
        }
    })
    .map_err(Error::Inner);
    let mut first = AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitReady).layer(slow.clone());
    let mut second = first.clone();
    let mut third = first.clone();
    let start = rt.now();
    let running = rt.spawn(async move { ready_and_call(&mut first, ()).await });
    while bulkhead.in_flight() == 0 {
        rt.sleep(ms(1)).await;
    }
    // The second caller waits in poll_ready for the first one's slot, then runs.
    assert_eq!(ready_and_call(&mut second, ()).await, Ok(()));
    assert_eq!(
        rt.now() - start,
        ms(80),
        "40 ms waiting for the slot, 40 ms running"
    );
    assert_eq!(running.await.unwrap(), Ok(()));
    // A wait longer than max_wait is refused, never as a poll_ready error (docs,
    // `AdmitMode::WaitReady`): "poll_ready then reports ready and the next call fails at once
    // with the refusal, without calling the inner service".
    let _held = bulkhead.try_acquire().unwrap();
    let start = rt.now();
    assert_eq!(poll_fn(|cx| third.poll_ready(cx)).await, Ok(()));
    assert_eq!(rt.now() - start, ms(100));
    assert_eq!(
        third.call(()).await,
        Err(Error::Rejected(Rejected::BulkheadFull))
    );
    assert_eq!(rt.now() - start, ms(100), "the call fails at once");
}

#[test]
fn bulkhead_layer_waits_on_every_runtime() {
    on_every_runtime!(bulkhead_layer_waits_for_a_slot);
}

async fn timeout_starts_when_readiness_waits<R: Runtime>(rt: Clocked<R>) {
    // Polled ready at once, called 500 ms later: the call still gets its whole 100 ms.
    let rt2 = rt.clone();
    let inner = service(&rt, move |()| {
        let rt = rt2.clone();
        async move {
            rt.sleep(ms(80)).await;
            Ok::<_, Error<()>>(())
        }
    });
    let mut svc = TimeoutLayer::new(ms(100)).runtime(rt.clone()).layer(inner);
    poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    rt.sleep(ms(500)).await;
    assert_eq!(svc.call(()).await, Ok(()));
}

#[test]
fn the_timeout_does_not_start_at_an_early_ready_on_every_runtime() {
    on_every_runtime!(timeout_starts_when_readiness_waits);
}

// Docs (`AdmitMode::WaitReady`, `BreakerLayer::wait_in_ready`, `TimeoutLayer`): a wait given up
// in poll_ready is never a poll_ready error, "which tower takes to mean the service is broken
// for good (a Buffer would fail every later request)": poll_ready reports ready and the next
// call fails at once, the inner service not called. Once the resource is free, the same
// service value serves again.
async fn refused_wait_leaves_the_service_usable<R: Runtime>(rt: Clocked<R>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let called = || calls.load(Ordering::SeqCst);

    // A bulkhead of one, refusing a wait past its max_wait of 50 ms.
    let bulkhead = Bulkhead::builder(1)
        .max_wait(ms(50))
        .runtime(rt.clone())
        .build()
        .unwrap();
    let mut admit = AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitReady)
        .layer(downstream(&rt, &calls).map_err(Error::Inner));
    let held = bulkhead.try_acquire().unwrap();
    let start = rt.now();
    assert_eq!(poll_fn(|cx| admit.poll_ready(cx)).await, Ok(()));
    assert_eq!(rt.now() - start, ms(50), "refused at max_wait");
    assert_eq!(
        admit.call(2).await,
        Err(Error::Rejected(Rejected::BulkheadFull))
    );
    assert_eq!(rt.now() - start, ms(50), "the call fails at once");
    assert_eq!(called(), 0, "the inner service was not called");
    drop(held);
    let start = rt.now();
    assert_eq!(poll_fn(|cx| admit.poll_ready(cx)).await, Ok(()));
    assert_eq!(rt.now(), start, "the freed slot is taken at once");
    assert_eq!(admit.call(2).await, Ok(2));
    assert_eq!(rt.now() - start, ms(2));
    assert_eq!(called(), 1);
    assert_eq!(bulkhead.available(), 1, "the slot came back");

    // A breaker open for 100 ms, with a max_wait of 50 ms: given up at once.
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(1)
        .break_duration(ms(100))
        .half_open_probes(1)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let mut guarded = BreakerLayer::new(breaker.clone())
        .wait_in_ready(ms(50))
        .layer(downstream(&rt, &calls).map_err(Error::Inner));
    breaker.try_acquire().unwrap().failure();
    let start = rt.now();
    assert_eq!(poll_fn(|cx| guarded.poll_ready(cx)).await, Ok(()));
    assert_eq!(rt.now(), start, "a break past max_wait: given up at once");
    let refused = guarded.call(2).await;
    assert!(
        matches!(
            refused,
            Err(Error::Rejected(Rejected::CircuitOpen { retry_after })) if retry_after > ms(50)
        ),
        "{refused:?}"
    );
    assert_eq!(rt.now(), start, "the call fails at once");
    assert_eq!(called(), 1, "the inner service was not called");
    // The break ends: the same service takes the probe, and its answer closes the breaker.
    rt.sleep(ms(100)).await;
    let start = rt.now();
    assert_eq!(poll_fn(|cx| guarded.poll_ready(cx)).await, Ok(()));
    assert_eq!(rt.now(), start, "the probe is taken at once");
    assert_eq!(guarded.call(2).await, Ok(2));
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(called(), 2);

    // An inner service ready 80 ms after its first poll, under a timeout of 50 ms.
    let (seen, rt2) = (calls.clone(), rt.clone());
    let slow_ready = FnService {
        ready_after: ms(80),
        ..service(&rt, move |d: u64| {
            seen.fetch_add(1, Ordering::SeqCst);
            let rt = rt2.clone();
            async move {
                rt.sleep(ms(d)).await;
                Ok::<_, Error<Down>>(d)
            }
        })
    };
    let mut timed = TimeoutLayer::new(ms(50))
        .runtime(rt.clone())
        .layer(slow_ready);
    let start = rt.now();
    assert_eq!(poll_fn(|cx| timed.poll_ready(cx)).await, Ok(()));
    assert_eq!(rt.now() - start, ms(50), "readiness timed out");
    assert_eq!(timed.call(2).await, Err(Error::TimedOut));
    assert_eq!(rt.now() - start, ms(50), "the call fails at once");
    assert_eq!(called(), 2, "the inner service was not called");
    // The inner service gets ready: the same service is ready at once and serves.
    rt.sleep(ms(30)).await;
    let start = rt.now();
    assert_eq!(poll_fn(|cx| timed.poll_ready(cx)).await, Ok(()));
    assert_eq!(rt.now(), start, "the inner service is ready");
    assert_eq!(timed.call(2).await, Ok(2));
    assert_eq!(rt.now() - start, ms(2));
    assert_eq!(called(), 3);
}

#[test]
fn a_refused_wait_leaves_the_service_usable_on_every_runtime() {
    on_every_runtime!(refused_wait_leaves_the_service_usable);
}

/// A breaker waiting in `poll_ready` times its call from the call, not from the permit it
/// took before the inner service's own wait (a bulkhead slot here): the slow-call rule judges
/// the dependency's time alone.
async fn a_wait_below_the_breaker_is_not_the_calls_slowness<R: Runtime>(rt: Clocked<R>) {
    let breaker = CircuitBreaker::builder()
        .slow_call_rate(0.5, ms(100))
        .minimum_calls(1)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let bulkhead = Bulkhead::builder(1)
        .max_wait(Duration::from_secs(10))
        .runtime(rt.clone())
        .build()
        .unwrap();
    let held = bulkhead.try_acquire_owned().unwrap();
    let mut svc = BreakerLayer::new(breaker.clone())
        .wait_in_ready(Some(Duration::from_secs(1)))
        .layer(
            AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitReady)
                .runtime(rt.clone())
                .layer(service(&rt, |()| async { Ok::<_, Error<()>>(()) })),
        );
    let (release, rt2) = (held, rt.clone());
    let freed = rt.spawn(async move {
        rt2.sleep(ms(300)).await;
        drop(release);
    });
    assert_eq!(ready_and_call(&mut svc, ()).await, Ok(()));
    let _ = freed.await;
    let counts = breaker.counts();
    assert_eq!(
        (counts.calls, counts.slow),
        (1, 0),
        "300 ms in the queue is not slowness"
    );
    assert_eq!(breaker.state(), State::Closed);
}

#[test]
fn a_wait_below_the_breaker_is_not_the_calls_slowness_on_every_runtime() {
    on_every_runtime!(a_wait_below_the_breaker_is_not_the_calls_slowness);
}

async fn hedge_layer_uses_its_readiness<R: Runtime>(rt: Clocked<R>) {
    // A rate limit of 3 at once in front of the service: three hedged requests that do not
    // need a hedge spend exactly three cells, so none of them waits.
    let limiter = RateLimiter::builder(1, ms(1_000))
        .burst(3)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let inner = AdmitLayer::new(limiter, AdmitMode::WaitReady)
        .layer(service(&rt, |()| async { Ok::<_, Error<()>>(()) }));
    let hedge = Hedge::builder()
        .delay(ms(50))
        .runtime(rt.clone())
        .build()
        .unwrap();
    let mut svc = HedgeLayer::new(hedge).layer(inner);
    let start = rt.now();
    for _ in 0..3 {
        assert_eq!(ready_and_call(&mut svc, ()).await, Ok(()));
    }
    assert_eq!(rt.now(), start, "no request waited for a cell");
}

#[test]
fn hedge_layer_spends_the_readiness_it_polled_on_every_runtime() {
    on_every_runtime!(hedge_layer_uses_its_readiness);
}

// === one error type per stack ==============================================================
//
// The layers that can refuse or time out return their inner service's error type, which must
// be a `PolicyError`: give the service that type once, beneath the stack, and every refusal,
// timeout and service error arrives at one level, however many layers deep.

/// The bare error of the service under the stacks: not a `PolicyError` by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Down(u64);

impl std::fmt::Display for Down {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "down after {} ms", self.0)
    }
}

impl std::error::Error for Down {}

/// The service under the stacks: a call of `d` takes `d` ms, then answers `d` (even `d`) or
/// fails with its bare `Down(d)` (odd `d`); `calls` counts the calls that reached it.
fn downstream<R: Runtime>(
    rt: &Clocked<R>,
    calls: &Arc<AtomicUsize>,
) -> impl Service<u64, Response = u64, Error = Down> + Clone {
    let (rt2, calls) = (rt.clone(), calls.clone());
    service(rt, move |d: u64| {
        calls.fetch_add(1, Ordering::SeqCst);
        let rt = rt2.clone();
        async move {
            rt.sleep(ms(d)).await;
            if d % 2 == 1 { Err(Down(d)) } else { Ok(d) }
        }
    })
}

/// Compiles only if `svc`'s error type is exactly `E`.
fn error_type_is<E, S: Service<u64, Error = E>>(_: &S) {}

/// What the stacks below are built on: a bulkhead of one, and a breaker that opens after two
/// failures in a row, for a second.
fn bulkhead_and_breaker<R: Runtime>(
    rt: &Clocked<R>,
) -> (Bulkhead<Clocked<R>>, CircuitBreaker<Clocked<R>>) {
    let bulkhead = Bulkhead::builder(1).runtime(rt.clone()).build().unwrap();
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(2)
        .break_duration(ms(1_000))
        .runtime(rt.clone())
        .build()
        .unwrap();
    (bulkhead, breaker)
}

fn two_attempts() -> Backoff {
    Backoff::constant(ms(10))
        .jitter(Jitter::None)
        .max_attempts(2)
        .build()
        .unwrap()
}

/// How one call through a Timeout(100 ms) → Retry(2 attempts) → Breaker → Admit(bulkhead,
/// Reject) stack ended, in each of the five ways it can.
struct Endings<E> {
    answered: Result<u64, E>,
    refused_by_the_bulkhead: Result<u64, E>,
    timed_out: Result<u64, E>,
    failed_downstream: Result<u64, E>,
    refused_by_the_open_breaker: Result<u64, E>,
}

/// Drives `svc` (the stack above, over `downstream`, its breaker judging only the service's own
/// errors as failures) through the five endings, checking when each ended and what reached the
/// service and the breaker; the caller checks what each returned.
async fn five_endings<R: Runtime, S: Service<u64, Response = u64>>(
    rt: &Clocked<R>,
    svc: &mut S,
    bulkhead: &Bulkhead<Clocked<R>>,
    breaker: &CircuitBreaker<Clocked<R>>,
    calls: &AtomicUsize,
) -> Endings<S::Error> {
    let answered = ready_and_call(svc, 2).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // A full bulkhead refuses both attempts; the breaker ignores the refusals.
    let held = bulkhead.try_acquire().unwrap();
    let refused_by_the_bulkhead = ready_and_call(svc, 2).await;
    drop(held);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "refused: the service is not called"
    );
    assert_eq!(breaker.state(), State::Closed);

    // A 200 ms call is cut at 100 ms; the dropped call records nothing in the breaker.
    let start = rt.now();
    let timed_out = ready_and_call(svc, 200).await;
    assert_eq!(rt.now() - start, ms(100));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(breaker.state(), State::Closed);

    // Two failing attempts (3 ms, 10 ms apart, 3 ms): the second opens the breaker.
    let start = rt.now();
    let failed_downstream = ready_and_call(svc, 3).await;
    assert_eq!(rt.now() - start, ms(16));
    assert_eq!(calls.load(Ordering::SeqCst), 4, "tried twice");
    assert_eq!(breaker.state(), State::Open);

    let refused_by_the_open_breaker = ready_and_call(svc, 2).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "shed: the service is not called"
    );
    assert_eq!(bulkhead.available(), 1, "every slot came back");

    Endings {
        answered,
        refused_by_the_bulkhead,
        timed_out,
        failed_downstream,
        refused_by_the_open_breaker,
    }
}

async fn four_layers_one_typed_error<R: Runtime>(rt: Clocked<R>) {
    let (bulkhead, breaker) = bulkhead_and_breaker(&rt);
    let calls = Arc::new(AtomicUsize::new(0));
    // The breaker judges the stack's one type: only the service's own errors count.
    let downstream_failures = |result: Result<&u64, &Error<Down>>| match result {
        Ok(_) => Verdict::Success,
        Err(Error::Inner(_)) => Verdict::RetryableFailure,
        Err(_) => Verdict::Ignored,
    };
    let mut svc = tower::ServiceBuilder::new()
        .layer(TimeoutLayer::new(ms(100)).runtime(rt.clone()))
        .layer(RetryLayer::new(two_attempts()).runtime(rt.clone()))
        .layer(BreakerLayer::new(breaker.clone()).classify(downstream_failures))
        .layer(AdmitLayer::new(bulkhead.clone(), AdmitMode::Reject).runtime(rt.clone()))
        .map_err(Error::Inner)
        .service(downstream(&rt, &calls));
    // Four layers, one level: `Error<Down>`, not `Error<Error<Error<Down>>>`.
    error_type_is::<Error<Down>, _>(&svc);

    let endings = five_endings(&rt, &mut svc, &bulkhead, &breaker, &calls).await;
    let _: &Result<u64, Error<Down>> = &endings.answered;
    assert_eq!(endings.answered, Ok(2));
    assert_eq!(
        endings.refused_by_the_bulkhead,
        Err(Error::Rejected(Rejected::BulkheadFull))
    );
    assert_eq!(endings.timed_out, Err(Error::TimedOut));
    assert_eq!(endings.failed_downstream, Err(Error::Inner(Down(3))));
    assert!(
        matches!(
            endings.refused_by_the_open_breaker,
            Err(Error::Rejected(Rejected::CircuitOpen { .. }))
        ),
        "{:?}",
        endings.refused_by_the_open_breaker
    );
}

#[test]
fn a_four_layer_stack_over_a_typed_service_has_one_error_level_on_every_runtime() {
    on_every_runtime!(four_layers_one_typed_error);
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn four_layers_one_box_error<R: Runtime>(rt: Clocked<R>) {
    let (bulkhead, breaker) = bulkhead_and_breaker(&rt);
    let calls = Arc::new(AtomicUsize::new(0));
    let downstream_failures = |result: Result<&u64, &BoxError>| match result {
        Ok(_) => Verdict::Success,
        Err(e) if cause::<Down>(&**e).is_some() => Verdict::RetryableFailure,
        Err(_) => Verdict::Ignored,
    };
    let mut svc = tower::ServiceBuilder::new()
        .layer(TimeoutLayer::new(ms(100)).runtime(rt.clone()))
        .layer(RetryLayer::new(two_attempts()).runtime(rt.clone()))
        .layer(BreakerLayer::new(breaker.clone()).classify(downstream_failures))
        .layer(AdmitLayer::new(bulkhead.clone(), AdmitMode::Reject).runtime(rt.clone()))
        .map_err(BoxError::from)
        .service(downstream(&rt, &calls));
    // The service's `BoxError` stays the stack's error type.
    error_type_is::<BoxError, _>(&svc);

    let endings = five_endings(&rt, &mut svc, &bulkhead, &breaker, &calls).await;
    assert_eq!(endings.answered.ok(), Some(2));
    // Each layer boxes its own error once: found by `cause`, and by a plain downcast.
    let err = endings.refused_by_the_bulkhead.unwrap_err();
    assert_eq!(
        cause::<Rejected>(&*err),
        Some(&Rejected::BulkheadFull),
        "{err}"
    );
    assert!(err.is::<Rejected>(), "{err}");
    let err = endings.timed_out.unwrap_err();
    assert!(cause::<Elapsed>(&*err).is_some(), "{err}");
    assert!(err.is::<Elapsed>(), "{err}");
    assert!(cause::<Rejected>(&*err).is_none(), "{err}");
    let err = endings.failed_downstream.unwrap_err();
    assert_eq!(cause::<Down>(&*err), Some(&Down(3)), "{err}");
    assert!(cause::<Rejected>(&*err).is_none(), "{err}");
    assert!(cause::<Elapsed>(&*err).is_none(), "{err}");
    let err = endings.refused_by_the_open_breaker.unwrap_err();
    assert!(
        matches!(cause::<Rejected>(&*err), Some(Rejected::CircuitOpen { .. })),
        "{err}"
    );
}

#[test]
fn a_four_layer_stack_over_a_box_error_service_keeps_box_error_and_its_causes_on_every_runtime() {
    on_every_runtime!(four_layers_one_box_error);
}

/// A user's own error type, made a `PolicyError` so Tidewall's layers can add to it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ApiError {
    Overloaded(Rejected),
    TooSlow,
    Downstream(Down),
}

impl PolicyError for ApiError {
    fn rejected(rejected: Rejected) -> Self {
        Self::Overloaded(rejected)
    }

    fn timed_out() -> Self {
        Self::TooSlow
    }
}

async fn four_layers_own_error<R: Runtime>(rt: Clocked<R>) {
    let (bulkhead, breaker) = bulkhead_and_breaker(&rt);
    let calls = Arc::new(AtomicUsize::new(0));
    let downstream_failures = |result: Result<&u64, &ApiError>| match result {
        Ok(_) => Verdict::Success,
        Err(ApiError::Downstream(_)) => Verdict::RetryableFailure,
        Err(ApiError::Overloaded(_) | ApiError::TooSlow) => Verdict::Ignored,
    };
    let mut svc = tower::ServiceBuilder::new()
        .layer(TimeoutLayer::new(ms(100)).runtime(rt.clone()))
        .layer(RetryLayer::new(two_attempts()).runtime(rt.clone()))
        .layer(BreakerLayer::new(breaker.clone()).classify(downstream_failures))
        .layer(AdmitLayer::new(bulkhead.clone(), AdmitMode::Reject).runtime(rt.clone()))
        .service(downstream(&rt, &calls).map_err(ApiError::Downstream));
    error_type_is::<ApiError, _>(&svc);

    let endings = five_endings(&rt, &mut svc, &bulkhead, &breaker, &calls).await;
    assert_eq!(endings.answered, Ok(2));
    assert_eq!(
        endings.refused_by_the_bulkhead,
        Err(ApiError::Overloaded(Rejected::BulkheadFull))
    );
    assert_eq!(endings.timed_out, Err(ApiError::TooSlow));
    assert_eq!(
        endings.failed_downstream,
        Err(ApiError::Downstream(Down(3)))
    );
    assert!(
        matches!(
            endings.refused_by_the_open_breaker,
            Err(ApiError::Overloaded(Rejected::CircuitOpen { .. }))
        ),
        "{:?}",
        endings.refused_by_the_open_breaker
    );
}

#[test]
fn a_users_own_policy_error_type_goes_through_a_four_layer_stack_on_every_runtime() {
    on_every_runtime!(four_layers_own_error);
}
