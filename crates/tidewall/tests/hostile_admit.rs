//! Hostile black-box tests of admission, written from the rustdoc alone: the `Admission`
//! contract (owned guards, quiet `try_admit`, `admit(Wait::No | Wait::Until)`), the tower
//! `AdmitLayer` in its three modes, `BreakerLayer::wait_in_ready`, the named response futures
//! of the timeout, breaker and admit layers, and a whole stack composed with
//! `tower::ServiceBuilder`. Waits, services and response futures are dropped at seeded random
//! points; capacity must come back, every refusal must be counted exactly once, and every
//! deadline must hold to the virtual nanosecond.

mod common;
mod support;

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use pin_project_lite::pin_project;
use support::{Gauge, Rng, Running, assert_conserved, maybe_cancel, ms, poll_limit};
use tidewall::admission::{Admission, Wait};
use tidewall::breaker::{CircuitBreaker, State};
use tidewall::bulkhead::Bulkhead;
use tidewall::classify::DefaultClassifier;
use tidewall::rate::RateLimiter;
use tidewall::rt::{Clock, Runtime, Spawn, TaskHandle};
use tidewall::testing::{Clocked, FakeClock};
use tidewall::tower::{
    AdmitLayer, AdmitMode, AdmitService, BreakerLayer, BreakerService, RetryLayer, RetryService,
    TimeoutLayer, TimeoutService, admit, breaker, timeout,
};
use tidewall::{Backoff, Deadline, Error, FutureExt as _, Jitter, Rejected};
use tower::ServiceExt as _;
use tower_layer::Layer;
use tower_service::Service;

const HOUR: Duration = Duration::from_secs(3_600);

// --- services under the layers ------------------------------------------------------------

/// The error of a failing call: odd durations fail.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Boom(u64);

impl fmt::Display for Boom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "boom after {} ms", self.0)
    }
}

impl std::error::Error for Boom {}

/// The inner service: a call of `d` sleeps `d` ms on its clock while counted by `gauge`, then
/// succeeds (even `d`) or fails (odd `d`). Its future is a named type, so a whole stack's
/// future can be spelled out.
#[derive(Clone)]
struct Work<R> {
    rt: R,
    gauge: Gauge,
    calls: Arc<AtomicUsize>,
    starts: Arc<std::sync::Mutex<Vec<Instant>>>,
}

impl<R: Clock> Work<R> {
    fn new(rt: &R) -> Self {
        Self {
            rt: rt.clone(),
            gauge: Gauge::default(),
            calls: Arc::default(),
            starts: Arc::default(),
        }
    }

    /// When each call reached the service, in order.
    fn starts(&self) -> Vec<Instant> {
        let mut starts = self.starts.lock().unwrap().clone();
        starts.sort_unstable();
        starts
    }

    fn calls(&self) -> usize {
        self.calls.load(SeqCst)
    }
}

pin_project! {
    /// One call of [`Work`].
    struct WorkFuture<R: Clock> {
        #[pin]
        sleep: R::Sleep,
        running: Option<Running>,
        d: u64,
    }
}

impl<R: Clock> fmt::Debug for WorkFuture<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkFuture").field("d", &self.d).finish()
    }
}

impl<R: Clock> Future for WorkFuture<R> {
    type Output = Result<u64, Boom>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if this.sleep.poll(cx).is_pending() {
            return Poll::Pending;
        }
        this.running.take();
        let d = *this.d;
        Poll::Ready(if d % 2 == 1 { Err(Boom(d)) } else { Ok(d) })
    }
}

impl<R: Clock> Service<u64> for Work<R> {
    type Response = u64;
    type Error = Boom;
    type Future = WorkFuture<R>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Boom>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, d: u64) -> WorkFuture<R> {
        self.calls.fetch_add(1, SeqCst);
        self.starts.lock().unwrap().push(self.rt.now());
        WorkFuture {
            sleep: self.rt.sleep(ms(d)),
            running: Some(self.gauge.enter()),
            d,
        }
    }
}

/// An instant service answering with the request itself (for the breaker tests).
#[derive(Clone, Default)]
struct Answer {
    calls: Arc<AtomicUsize>,
}

impl Answer {
    fn calls(&self) -> usize {
        self.calls.load(SeqCst)
    }
}

type Reply = Result<u32, &'static str>;

impl Service<Reply> for Answer {
    type Response = u32;
    type Error = &'static str;
    type Future = std::future::Ready<Reply>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), &'static str>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, reply: Reply) -> Self::Future {
        self.calls.fetch_add(1, SeqCst);
        std::future::ready(reply)
    }
}

async fn ready_and_call<S: Service<Req>, Req>(
    svc: &mut S,
    req: Req,
) -> Result<S::Response, S::Error> {
    poll_fn(|cx| svc.poll_ready(cx)).await?;
    svc.call(req).await
}

fn backoff(attempts: u32, delay: Duration) -> Backoff {
    Backoff::constant(delay)
        .jitter(Jitter::None)
        .max_attempts(attempts)
        .build()
        .unwrap()
}

fn bulkhead<R: Clock>(rt: &R, capacity: usize, max_wait: Option<Duration>) -> Bulkhead<R> {
    Bulkhead::builder(capacity)
        .max_queue(512)
        .max_wait(max_wait)
        .runtime(rt.clone())
        .build()
        .unwrap()
}

// --- manual polling on a FakeClock --------------------------------------------------------

/// Counts wake-ups.
#[derive(Default)]
struct Wakes(AtomicUsize);

impl Wake for Wakes {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, SeqCst);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, SeqCst);
    }
}

/// Polls by hand with a waker that counts its wake-ups.
struct Poller {
    wakes: Arc<Wakes>,
    waker: Waker,
}

impl Poller {
    fn new() -> Self {
        let wakes = Arc::new(Wakes::default());
        Self {
            waker: Waker::from(wakes.clone()),
            wakes,
        }
    }

    fn wakes(&self) -> usize {
        self.wakes.0.load(SeqCst)
    }

    fn ready<S: Service<Req>, Req>(&self, svc: &mut S) -> Poll<Result<(), S::Error>> {
        svc.poll_ready(&mut Context::from_waker(&self.waker))
    }

    fn poll<F: Future>(&self, fut: Pin<&mut F>) -> Poll<F::Output> {
        fut.poll(&mut Context::from_waker(&self.waker))
    }
}

/// Polls `step` while it wakes itself, else moves `clock` to its next timer, until `step` is
/// ready (`Some`) or nothing is left to happen before `until` (`None`). A step that keeps
/// waking itself without time moving is a busy loop: that fails the test.
fn settle<T>(
    clock: &FakeClock,
    poller: &Poller,
    until: Instant,
    mut step: impl FnMut(&mut Context<'_>) -> Poll<T>,
) -> Option<T> {
    let mut spins = 0;
    for _ in 0..100_000 {
        let before = poller.wakes();
        if let Poll::Ready(out) = step(&mut Context::from_waker(&poller.waker)) {
            return Some(out);
        }
        if poller.wakes() != before {
            spins += 1;
            assert!(
                spins < 1_000,
                "pending and waking itself 1000 times at one instant: a busy loop"
            );
            continue;
        }
        match clock.next_timer() {
            Some(t) if t <= until => {
                clock.advance_to(t);
                spins = 0;
            }
            _ => return None,
        }
    }
    panic!("no end after 100,000 steps");
}

// --- metrics: rejection counters by policy name -------------------------------------------

#[cfg(feature = "metrics")]
mod tally {
    use super::common::tally::Counters;

    /// Installs the recorder (once per process): call before building the policy.
    pub(crate) fn install() {
        Counters::installed();
    }

    /// The rejections counted for the policy named `name`.
    pub(crate) fn rejections(name: &str) -> u64 {
        Counters::installed().total("tidewall_rejections_total", &[&format!("name={name}")])
    }
}

// --- random cancellation ------------------------------------------------------------------

/// One caller through a clone of the service, giving up at a point chosen by `draw`: while
/// waiting in `poll_ready` (then dropping the service, or keeping it and trying again), after
/// readiness without calling, with the response future dropped unpolled, at a random await
/// point, or with the service dropped while its call runs.
async fn caller<R: Clock, S: Service<u64>>(rt: R, mut svc: S, draw: u64) {
    let d = (draw >> 24) % 12;
    match (draw >> 4) % 7 {
        0 => {
            let _ = poll_limit(poll_fn(|cx| svc.poll_ready(cx)), (draw >> 8) % 4).await;
        }
        1 => {
            let first = poll_fn(|cx| svc.poll_ready(cx))
                .timeout_on(&rt, Duration::from_micros(draw % 20_000))
                .await;
            if matches!(first, Ok(Err(_))) {
                return;
            }
            if poll_fn(|cx| svc.poll_ready(cx)).await.is_ok() {
                let _ = svc.call(d).await;
            }
        }
        2 => {
            let _ = poll_fn(|cx| svc.poll_ready(cx)).await;
        }
        3 => {
            if poll_fn(|cx| svc.poll_ready(cx)).await.is_ok() {
                drop(svc.call(d));
            }
        }
        4 => {
            if poll_fn(|cx| svc.poll_ready(cx)).await.is_ok() {
                let _ = maybe_cancel(&rt, draw, svc.call(d)).await;
            }
        }
        5 => {
            if poll_fn(|cx| svc.poll_ready(cx)).await.is_ok() {
                let call = svc.call(d);
                drop(svc);
                let _ = maybe_cancel(&rt, draw >> 3, call).await;
            }
        }
        _ => {
            if poll_fn(|cx| svc.poll_ready(cx)).await.is_ok() {
                let _ = svc.call(d).await;
            }
        }
    }
}

/// `callers` tasks through clones of `svc`, staggered, each giving up at a seeded point, a
/// seeded fifth of them aborted at a seeded moment; returns once every task is gone.
async fn storm<R, S>(rt: &Clocked<R>, svc: &S, rng: &mut Rng, callers: usize)
where
    R: Runtime,
    S: Service<u64> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
{
    let start = rt.now();
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let (svc, clock, draw) = (svc.clone(), rt.clone(), rng.next());
        let delay = Duration::from_micros(rng.below(30_000));
        let abort = rng
            .chance(5)
            .then(|| Duration::from_micros(rng.below(60_000)));
        let handle = rt.spawn(async move {
            clock.sleep(delay).await;
            caller(clock, svc, draw).await;
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
    for (handle, abort) in tasks {
        if let Err(e) = handle.await {
            assert!(
                abort.is_some() && e.is_cancelled(),
                "unexpected join error {e:?}"
            );
        }
    }
}

// === the Admission contract ===============================================================

// Docs (`Admission`): "Implemented by RateLimiter, Bulkhead and `()` (admits everything)".
#[test]
fn the_unit_stage_admits_everything_at_once_whatever_the_wait() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    assert_eq!(Admission::try_admit(&()), Some(()));
    for wait in [
        Wait::No,
        Wait::Until(Deadline::none()),
        Wait::Until(Deadline::at(clock.now())),
    ] {
        let admit = pin!(Admission::admit(&(), wait));
        assert_eq!(poller.poll(admit), Poll::Ready(Ok(())), "{wait:?}");
    }
}

// Docs (`Admission`): "Guards and futures own what they need ('static)"; `Guard: Send +
// 'static`, `Admit: ... + Send + 'static`. Docs (tower): response futures are named types.
#[test]
fn guards_admit_futures_and_tower_futures_are_send_and_static() {
    fn send_static<T: Send + 'static>() {}
    send_static::<<Bulkhead<FakeClock> as Admission>::Guard>();
    send_static::<<Bulkhead<FakeClock> as Admission>::Admit>();
    send_static::<<RateLimiter<FakeClock> as Admission>::Guard>();
    send_static::<<RateLimiter<FakeClock> as Admission>::Admit>();
    send_static::<<() as Admission>::Admit>();
    send_static::<admit::ResponseFuture<Work<FakeClock>, Bulkhead<FakeClock>, u64>>();
    send_static::<admit::ResponseFuture<Work<FakeClock>, RateLimiter<FakeClock>, u64>>();
    send_static::<breaker::ResponseFuture<WorkFuture<FakeClock>, FakeClock, DefaultClassifier>>();
    send_static::<timeout::ResponseFuture<WorkFuture<FakeClock>, FakeClock>>();
    send_static::<AdmitService<Work<FakeClock>, Bulkhead<FakeClock>, FakeClock>>();
    // Docs (tower): services are `Sync`, "which axum requires".
    fn sync<T: Sync>() {}
    sync::<AdmitService<Work<FakeClock>, Bulkhead<FakeClock>, FakeClock>>();
    sync::<AdmitService<Work<FakeClock>, RateLimiter<FakeClock>, FakeClock>>();
    sync::<Stack<FakeClock>>();
    sync::<RetryService<Stack<FakeClock>, FakeClock>>();
}

// Docs (`try_admit`): "Admits now if it can, without waiting and without counting a refusal as
// a rejection (the caller goes on to admit, which counts)." (`Wait::No`): "a stage that cannot
// admit now refuses with its own reason and hint (Rejected::BulkheadFull ...)".
#[test]
fn a_full_bulkhead_refuses_try_admit_quietly_and_admit_without_waiting_counts_one_rejection_each() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let bulkhead = bulkhead(&clock, 2, None);
    let a = bulkhead.try_admit().expect("a free slot");
    let b = bulkhead.try_admit().expect("a second free slot");
    assert_eq!(bulkhead.available(), 0);
    for _ in 0..5 {
        assert!(bulkhead.try_admit().is_none());
    }
    assert_eq!(bulkhead.rejected(), 0, "a quiet refusal counts nothing");
    for i in 1..=3 {
        let admit = pin!(bulkhead.admit(Wait::No));
        let out = poller.poll(admit);
        assert!(
            matches!(out, Poll::Ready(Err(Rejected::BulkheadFull))),
            "refused at once with the stage's reason: {out:?}"
        );
        assert_eq!(bulkhead.rejected(), i, "one rejection per refused admit");
        assert_eq!(bulkhead.queued(), 0, "Wait::No never queues");
    }
    assert_eq!(clock.pending_timers(), 0);
    drop((a, b));
    assert_conserved(&bulkhead);
}

// Docs (`Wait::Until`): "Until the stage admits, its own limits refuse (a bulkhead's max_wait
// or queue), or deadline would pass (Rejected::DeadlineExceeded ...). Deadline::none() waits as
// long as the stage allows." (`Bulkhead::rejected`): "full, waited too long, or past their
// deadline".
#[test]
fn a_bulkhead_admit_until_a_deadline_ends_exactly_there_and_its_own_limits_refuse_first() {
    let clock = FakeClock::new();
    let poller = Poller::new();

    // The deadline comes first: DeadlineExceeded exactly at it, counted once.
    let unbounded = bulkhead(&clock, 1, None);
    let held = unbounded.try_admit().unwrap();
    let start = clock.now();
    let mut admit = pin!(unbounded.admit(Wait::Until(Deadline::after(&clock, ms(50)))));
    assert!(poller.poll(admit.as_mut()).is_pending());
    assert_eq!(unbounded.queued(), 1);
    let out = settle(&clock, &poller, start + HOUR, |cx| admit.as_mut().poll(cx));
    assert!(
        matches!(out, Some(Err(Rejected::DeadlineExceeded))),
        "{out:?}"
    );
    assert_eq!(clock.now() - start, ms(50));
    assert_eq!(unbounded.rejected(), 1);
    assert_eq!(unbounded.queued(), 0);

    // The bulkhead's own max_wait comes first: its own reason, at its own limit.
    let bounded = bulkhead(&clock, 1, Some(ms(20)));
    let held2 = bounded.try_admit().unwrap();
    let start = clock.now();
    let mut admit = pin!(bounded.admit(Wait::Until(Deadline::after(&clock, ms(50)))));
    let out = settle(&clock, &poller, start + HOUR, |cx| admit.as_mut().poll(cx));
    assert!(matches!(out, Some(Err(Rejected::BulkheadFull))), "{out:?}");
    assert_eq!(clock.now() - start, ms(20));
    assert_eq!(bounded.rejected(), 1);

    // Deadline::none(): waits hours, then gets the slot the moment it is freed.
    let start = clock.now();
    let mut admit = pin!(unbounded.admit(Wait::Until(Deadline::none())));
    assert!(poller.poll(admit.as_mut()).is_pending());
    clock.advance(2 * HOUR);
    assert!(poller.poll(admit.as_mut()).is_pending());
    drop(held);
    let out = poller.poll(admit.as_mut());
    assert!(matches!(out, Poll::Ready(Ok(_))), "{out:?}");
    assert_eq!(clock.now() - start, 2 * HOUR);
    assert_eq!(unbounded.rejected(), 1, "an admitted wait counts nothing");
    drop(out);
    drop(held2);
    assert_conserved(&unbounded);
    assert_conserved(&bounded);
}

// Docs (`Wait::Until`): "Until the stage admits, ... or deadline would pass". A stage with a
// free slot admits at once: there is nothing to wait for, so nothing can pass the deadline.
#[test]
fn a_bulkhead_with_a_free_slot_admits_even_under_a_deadline_that_is_already_due() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let bulkhead = bulkhead(&clock, 1, None);
    let admit = pin!(bulkhead.admit(Wait::Until(Deadline::at(clock.now()))));
    let out = poller.poll(admit);
    assert!(matches!(out, Poll::Ready(Ok(_))), "{out:?}");
    assert_eq!(bulkhead.rejected(), 0);
    drop(out);
    assert_conserved(&bulkhead);
}

// Docs (`Admission::admit`): "Cancel safety: dropping the future releases whatever it was
// waiting for or held; nothing is taken from the stage." Docs (bulkhead): "a waiter dropped
// while queued leaves the queue; a permit granted to it at that instant is passed on."
#[test]
fn a_bulkhead_admit_dropped_while_queued_or_after_its_grant_passes_the_slot_on() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let bulkhead = bulkhead(&clock, 1, Some(Duration::from_secs(5)));
    let held = bulkhead.try_admit().unwrap();
    let mut first = Box::pin(bulkhead.admit(Wait::Until(Deadline::none())));
    let mut second = Box::pin(bulkhead.admit(Wait::Until(Deadline::after(&clock, HOUR))));
    assert!(poller.poll(first.as_mut()).is_pending());
    assert!(poller.poll(second.as_mut()).is_pending());
    assert_eq!(bulkhead.queued(), 2);
    // The slot is handed to `first`, which is dropped before it is polled again.
    drop(held);
    drop(first);
    let out = poller.poll(second.as_mut());
    assert!(
        matches!(out, Poll::Ready(Ok(_))),
        "the granted slot passed on: {out:?}"
    );
    assert_eq!(bulkhead.available(), 0);
    drop(out);
    drop(second);
    // Dropped while queued, never granted.
    let held = bulkhead.try_admit().unwrap();
    let mut waiting = Box::pin(bulkhead.admit(Wait::Until(Deadline::after(&clock, ms(100)))));
    assert!(poller.poll(waiting.as_mut()).is_pending());
    drop(waiting);
    assert_eq!(bulkhead.queued(), 0);
    assert_eq!(clock.pending_timers(), 0, "the dropped wait left no timer");
    assert_eq!(
        bulkhead.rejected(),
        0,
        "a cancelled wait is not a rejection"
    );
    drop(held);
    assert_conserved(&bulkhead);
}

// Docs (`Wait::No`): "refuses with its own reason and hint (... Rejected::RateLimited with
// retry_after)". (`RateLimiter::check`): "Rejected::RateLimited with the exact retry_after."
#[test]
fn a_rate_limiter_refuses_admit_without_waiting_with_the_exact_retry_after() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let limiter = RateLimiter::builder(10, Duration::from_secs(1))
        .burst(1)
        .jitter(Duration::ZERO)
        .runtime(clock.clone())
        .build()
        .unwrap();
    assert_eq!(limiter.try_admit(), Some(()));
    assert_eq!(limiter.try_admit(), None);
    let out = poller.poll(pin!(limiter.admit(Wait::No)));
    assert_eq!(
        out,
        Poll::Ready(Err(Rejected::RateLimited {
            retry_after: ms(100)
        }))
    );
    clock.advance(ms(30));
    let out = poller.poll(pin!(limiter.admit(Wait::No)));
    assert_eq!(
        out,
        Poll::Ready(Err(Rejected::RateLimited {
            retry_after: ms(70)
        }))
    );
    clock.advance(ms(70));
    assert_eq!(
        poller.poll(pin!(limiter.admit(Wait::No))),
        Poll::Ready(Ok(()))
    );
}

// Docs (`Wait::Until`): "Rejected::DeadlineExceeded, returned as soon as the wait is known to
// end past it".
#[test]
fn a_rate_limiter_admit_fails_at_once_past_its_deadline_and_otherwise_waits_exactly() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let limiter = RateLimiter::builder(10, Duration::from_secs(1))
        .burst(1)
        .jitter(Duration::ZERO)
        .runtime(clock.clone())
        .build()
        .unwrap();
    assert_eq!(limiter.try_admit(), Some(()));
    let start = clock.now();
    let out = poller.poll(pin!(
        limiter.admit(Wait::Until(Deadline::after(&clock, ms(50))))
    ));
    assert_eq!(out, Poll::Ready(Err(Rejected::DeadlineExceeded)));
    assert_eq!(clock.pending_timers(), 0);
    let mut admit = pin!(limiter.admit(Wait::Until(Deadline::after(&clock, ms(150)))));
    let out = settle(&clock, &poller, start + HOUR, |cx| admit.as_mut().poll(cx));
    assert_eq!(out, Some(Ok(())));
    assert_eq!(
        clock.now() - start,
        ms(100),
        "the next cell, without jitter"
    );
}

// Docs (`UntilReady`): "Cancel safety: GCRA reserves nothing while waiting; dropping it loses
// nothing and takes no capacity."
#[test]
fn dropping_pending_rate_limiter_admits_takes_no_capacity() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let limiter = RateLimiter::builder(10, Duration::from_secs(1))
        .burst(2)
        .jitter(Duration::ZERO)
        .runtime(clock.clone())
        .build()
        .unwrap();
    assert!(limiter.try_admit().is_some() && limiter.try_admit().is_some());
    for _ in 0..3 {
        let mut admit = Box::pin(limiter.admit(Wait::Until(Deadline::none())));
        assert!(poller.poll(admit.as_mut()).is_pending());
    }
    assert_eq!(clock.pending_timers(), 0, "dropped waits left no timer");
    clock.advance(ms(100));
    assert!(
        limiter.try_admit().is_some(),
        "the next cell is still there"
    );
    assert!(limiter.try_admit().is_none());
    clock.advance(ms(300));
    assert!(limiter.try_admit().is_some() && limiter.try_admit().is_some());
    assert!(limiter.try_admit().is_none());
}

// Docs (`Admission::admit`): "Cancel safety: dropping the future releases whatever it was
// waiting for or held; nothing is taken from the stage." Guards "released on drop".
async fn bulkhead_admissions_under_random_cancellation<R: Runtime>(rt: Clocked<R>) {
    let bulkhead = bulkhead(&rt, 3, Some(ms(40)));
    let gauge = Gauge::default();
    let mut rng = Rng(0xAD_0155);
    let mut handles = Vec::new();
    for _ in 0..150 {
        let (bh, clock, gauge, draw) = (bulkhead.clone(), rt.clone(), gauge.clone(), rng.next());
        handles.push(rt.spawn(async move {
            clock.sleep(Duration::from_micros(draw % 25_000)).await;
            let wait = match (draw >> 8) % 4 {
                0 => Wait::No,
                1 => Wait::Until(Deadline::none()),
                2 => Wait::Until(Deadline::at(clock.now())),
                _ => Wait::Until(Deadline::after(&clock, ms((draw >> 12) % 50))),
            };
            let held = if draw % 5 == 0 {
                bh.try_admit()
            } else {
                maybe_cancel(&clock, draw >> 16, bh.admit(wait))
                    .await
                    .and_then(Result::ok)
            };
            if let Some(guard) = held {
                let running = gauge.enter();
                let hold = clock.sleep(ms((draw >> 20) % 12));
                let _ = maybe_cancel(&clock, draw >> 24, hold).await;
                // Counted out before the slot is given back.
                drop(running);
                drop(guard);
            }
        }));
    }
    for handle in handles {
        handle.await.unwrap();
    }
    assert_eq!(gauge.now(), 0);
    assert!(gauge.most() <= 3, "{} held at once of 3", gauge.most());
    assert!(bulkhead.rejected() <= 150);
    assert_conserved(&bulkhead);
}

#[test]
fn bulkhead_admissions_dropped_at_random_points_conserve_every_slot_on_every_runtime() {
    on_every_runtime!(bulkhead_admissions_under_random_cancellation);
}

#[cfg(feature = "metrics")]
// Docs (`try_admit`): "without counting a refusal as a rejection (the caller goes on to admit,
// which counts)"; (`RateLimiter`): "Counts a caller finally refused (waits count only then,
// not per denial)".
#[test]
fn a_rate_limiter_counts_only_callers_finally_refused() {
    tally::install();
    let clock = FakeClock::new();
    let poller = Poller::new();
    let name = "hostile-admit-limiter";
    let limiter = RateLimiter::builder(10, Duration::from_secs(1))
        .burst(1)
        .jitter(Duration::ZERO)
        .name(name)
        .runtime(clock.clone())
        .build()
        .unwrap();
    assert!(limiter.try_admit().is_some());
    for _ in 0..3 {
        assert!(limiter.try_admit().is_none());
    }
    assert_eq!(tally::rejections(name), 0, "quiet refusals");
    let _ = poller.poll(pin!(limiter.admit(Wait::No)));
    assert_eq!(tally::rejections(name), 1, "refused without waiting");
    // A wait that ends admitted counts nothing, however many denials it saw.
    let mut waiting = pin!(limiter.admit(Wait::Until(Deadline::none())));
    let out = settle(&clock, &poller, clock.now() + HOUR, |cx| {
        waiting.as_mut().poll(cx)
    });
    assert_eq!(out, Some(Ok(())));
    assert_eq!(tally::rejections(name), 1, "an admitted wait");
    let out = poller.poll(pin!(
        limiter.admit(Wait::Until(Deadline::after(&clock, ms(10))))
    ));
    assert_eq!(out, Poll::Ready(Err(Rejected::DeadlineExceeded)));
    assert_eq!(tally::rejections(name), 2, "refused under a deadline");
    // Through the layer: once per refused call.
    let mut svc = AdmitLayer::new(limiter.clone(), AdmitMode::WaitCall)
        .runtime(clock.clone())
        .max_wait(ms(10))
        .layer(Answer::default());
    let out = poller.poll(pin!(svc.call(Ok(1))));
    assert_eq!(
        out,
        Poll::Ready(Err(Error::Rejected(Rejected::DeadlineExceeded)))
    );
    assert_eq!(tally::rejections(name), 3);
    let mut shed = AdmitLayer::new(limiter, AdmitMode::Reject)
        .runtime(clock.clone())
        .layer(Answer::default());
    assert_eq!(poller.ready(&mut shed), Poll::Ready(Ok(())));
    let out = poller.poll(pin!(shed.call(Ok(1))));
    assert!(
        matches!(
            out,
            Poll::Ready(Err(Error::Rejected(Rejected::RateLimited { .. })))
        ),
        "{out:?}"
    );
    assert_eq!(tally::rejections(name), 4);
}

// === AdmitLayer ============================================================================

// Docs (`AdmitMode::Reject`): "the response future fails at once with the stage's own
// rejection (Rejected::BulkheadFull ...), and poll_ready stays ready". (`max_wait`): "No effect
// in AdmitMode::Reject." (`try_admit`): the fast path counts nothing; admit counts.
async fn reject_mode_on_a_full_bulkhead<R: Runtime>(rt: Clocked<R>) {
    let bulkhead = bulkhead(&rt, 1, None);
    let work = Work::new(&rt);
    let mut svc = AdmitLayer::new(bulkhead.clone(), AdmitMode::Reject)
        .runtime(rt.clone())
        .max_wait(Duration::from_secs(10))
        .layer(work.clone());
    let held = bulkhead.try_acquire_owned().unwrap();
    let start = rt.now();
    for i in 1..=4 {
        assert_eq!(
            poll_fn(|cx| svc.poll_ready(cx)).await,
            Ok(()),
            "ready while full"
        );
        assert_eq!(
            svc.call(2).await,
            Err(Error::Rejected(Rejected::BulkheadFull))
        );
        assert_eq!(
            bulkhead.rejected(),
            i,
            "exactly one rejection per refused call"
        );
    }
    assert_eq!(
        svc.call(2).await,
        Err(Error::Rejected(Rejected::BulkheadFull)),
        "without poll_ready too"
    );
    assert_eq!(bulkhead.rejected(), 5);
    assert_eq!(rt.now(), start, "shed at once: max_wait has no effect");
    assert_eq!(
        work.calls(),
        0,
        "the inner service never saw a refused call"
    );
    assert_eq!(bulkhead.queued(), 0);
    drop(held);
    assert_eq!(ready_and_call(&mut svc, 4).await, Ok(4));
    assert_eq!(bulkhead.rejected(), 5);
    drop(svc);
    assert_conserved(&bulkhead);
}

#[test]
fn reject_mode_refuses_a_full_bulkhead_with_bulkhead_full_counted_once_per_call_on_every_runtime() {
    on_every_runtime!(reject_mode_on_a_full_bulkhead);
}

// Docs (`AdmitMode::Reject`): "Rejected::RateLimited with its retry_after".
async fn reject_mode_on_a_spent_limiter<R: Runtime>(rt: Clocked<R>) {
    let limiter = RateLimiter::builder(10, Duration::from_secs(1))
        .burst(2)
        .jitter(Duration::ZERO)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let mut svc = AdmitLayer::new(limiter, AdmitMode::Reject)
        .runtime(rt.clone())
        .layer(Work::new(&rt));
    assert_eq!(ready_and_call(&mut svc, 0).await, Ok(0));
    assert_eq!(ready_and_call(&mut svc, 0).await, Ok(0));
    assert_eq!(
        ready_and_call(&mut svc, 0).await,
        Err(Error::Rejected(Rejected::RateLimited {
            retry_after: ms(100)
        }))
    );
    rt.sleep(ms(40)).await;
    assert_eq!(
        ready_and_call(&mut svc, 0).await,
        Err(Error::Rejected(Rejected::RateLimited {
            retry_after: ms(60)
        }))
    );
    rt.sleep(ms(60)).await;
    assert_eq!(ready_and_call(&mut svc, 0).await, Ok(0));
}

#[test]
fn reject_mode_refuses_a_spent_limiter_with_its_exact_retry_after_on_every_runtime() {
    on_every_runtime!(reject_mode_on_a_spent_limiter);
}

// Docs (`max_wait`): "a stage that cannot admit in time refuses with
// Rejected::DeadlineExceeded"; (`Wait::Until`): the stage's own limits refuse with their
// reason; (`AdmitMode::WaitCall`): "poll_ready is the inner service's ... The inner service is
// called only once admitted."
async fn wait_call_deadlines<R: Runtime>(rt: Clocked<R>) {
    // The layer's bound comes first.
    let unbounded = bulkhead(&rt, 1, None);
    let work = Work::new(&rt);
    let mut svc = AdmitLayer::new(unbounded.clone(), AdmitMode::WaitCall)
        .runtime(rt.clone())
        .max_wait(ms(50))
        .layer(work.clone());
    let held = unbounded.try_acquire_owned().unwrap();
    let start = rt.now();
    assert_eq!(poll_fn(|cx| svc.poll_ready(cx)).await, Ok(()));
    assert_eq!(rt.now(), start, "poll_ready is the inner service's");
    assert_eq!(
        svc.call(0).await,
        Err(Error::Rejected(Rejected::DeadlineExceeded))
    );
    assert_eq!(rt.now() - start, ms(50));
    assert_eq!(unbounded.rejected(), 1);
    assert_eq!(unbounded.queued(), 0);

    // The bulkhead's own max_wait comes first.
    let bounded = bulkhead(&rt, 1, Some(ms(20)));
    let mut own = AdmitLayer::new(bounded.clone(), AdmitMode::WaitCall)
        .runtime(rt.clone())
        .max_wait(ms(50))
        .layer(work.clone());
    let held2 = bounded.try_acquire_owned().unwrap();
    let start = rt.now();
    assert_eq!(
        own.call(0).await,
        Err(Error::Rejected(Rejected::BulkheadFull))
    );
    assert_eq!(rt.now() - start, ms(20));
    assert_eq!(bounded.rejected(), 1);

    // A full queue refuses at once.
    let tight = Bulkhead::builder(1)
        .max_queue(1)
        .max_wait(None)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let mut queued = AdmitLayer::new(tight.clone(), AdmitMode::WaitCall)
        .runtime(rt.clone())
        .max_wait(ms(50))
        .layer(work.clone());
    let held3 = tight.try_acquire_owned().unwrap();
    let mut first = pin!(queued.call(0));
    assert!(futures_util::poll!(first.as_mut()).is_pending());
    assert_eq!(tight.queued(), 1);
    let start = rt.now();
    assert_eq!(
        queued.call(0).await,
        Err(Error::Rejected(Rejected::BulkheadFull))
    );
    assert_eq!(rt.now(), start, "a full queue refuses at once");
    assert_eq!(tight.rejected(), 1);
    drop(held3);
    assert_eq!(first.await, Ok(0));
    assert_eq!(
        work.calls(),
        1,
        "only the admitted call reached the service"
    );
    drop((held, held2, svc, own, queued));
    assert_conserved(&unbounded);
    assert_conserved(&bounded);
    assert_conserved(&tight);
}

#[test]
fn wait_call_gives_deadline_exceeded_at_max_wait_and_the_stages_own_reason_at_its_limits_on_every_runtime()
 {
    on_every_runtime!(wait_call_deadlines);
}

// Docs (`max_wait`): "refuses with Rejected::DeadlineExceeded, at once when the wait is known
// to end later (a rate limiter's)".
async fn wait_call_on_a_limiter<R: Runtime>(rt: Clocked<R>) {
    let limiter = RateLimiter::builder(1, Duration::from_secs(1))
        .burst(1)
        .jitter(Duration::ZERO)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let work = Work::new(&rt);
    let mut short = AdmitLayer::new(limiter.clone(), AdmitMode::WaitCall)
        .runtime(rt.clone())
        .max_wait(ms(100))
        .layer(work.clone());
    let mut long = AdmitLayer::new(limiter, AdmitMode::WaitCall)
        .runtime(rt.clone())
        .max_wait(Duration::from_secs(2))
        .layer(work.clone());
    let start = rt.now();
    assert_eq!(ready_and_call(&mut short, 0).await, Ok(0));
    assert_eq!(
        ready_and_call(&mut short, 0).await,
        Err(Error::Rejected(Rejected::DeadlineExceeded))
    );
    assert_eq!(rt.now(), start, "known to end later: refused at once");
    assert_eq!(ready_and_call(&mut long, 0).await, Ok(0));
    assert_eq!(rt.now() - start, Duration::from_secs(1));
    assert_eq!(work.calls(), 2);
}

#[test]
fn wait_call_refuses_a_limiter_wait_past_max_wait_at_once_on_every_runtime() {
    on_every_runtime!(wait_call_on_a_limiter);
}

// Docs (`AdmitMode::WaitReady`): "the service is not ready until the stage admits";
// (`max_wait`): "Bounds each wait (in poll_ready or in the call)".
async fn wait_ready_deadlines<R: Runtime>(rt: Clocked<R>) {
    let unbounded = bulkhead(&rt, 1, None);
    let work = Work::new(&rt);
    let mut svc = AdmitLayer::new(unbounded.clone(), AdmitMode::WaitReady)
        .runtime(rt.clone())
        .max_wait(ms(50))
        .layer(work.clone());
    let held = unbounded.try_acquire_owned().unwrap();
    let start = rt.now();
    assert_eq!(
        poll_fn(|cx| svc.poll_ready(cx)).await,
        Err(Error::Rejected(Rejected::DeadlineExceeded))
    );
    assert_eq!(rt.now() - start, ms(50));
    assert_eq!(unbounded.rejected(), 1);
    assert_eq!(unbounded.queued(), 0);

    let bounded = bulkhead(&rt, 1, Some(ms(20)));
    let mut own = AdmitLayer::new(bounded.clone(), AdmitMode::WaitReady)
        .runtime(rt.clone())
        .max_wait(ms(50))
        .layer(work.clone());
    let mut plain = AdmitLayer::new(bounded.clone(), AdmitMode::WaitReady)
        .runtime(rt.clone())
        .layer(work.clone());
    let held2 = bounded.try_acquire_owned().unwrap();
    for (svc, rejected) in [(&mut own, 1), (&mut plain, 2)] {
        let start = rt.now();
        assert_eq!(
            poll_fn(|cx| svc.poll_ready(cx)).await,
            Err(Error::Rejected(Rejected::BulkheadFull))
        );
        assert_eq!(rt.now() - start, ms(20));
        assert_eq!(bounded.rejected(), rejected);
    }
    assert_eq!(work.calls(), 0);
    drop((held, held2, svc, own, plain));
    assert_conserved(&unbounded);
    assert_conserved(&bounded);
}

#[test]
fn wait_ready_fails_poll_ready_at_max_wait_or_the_stages_own_limit_counted_once_on_every_runtime() {
    on_every_runtime!(wait_ready_deadlines);
}

// Docs (`max_wait`): "a stage that cannot admit in time refuses ... at once when the wait is
// known to end later"; (admission module): "take the synchronous fast path when it admits".
async fn zero_max_wait<R: Runtime>(rt: Clocked<R>) {
    for mode in [AdmitMode::WaitReady, AdmitMode::WaitCall] {
        let bulkhead = bulkhead(&rt, 1, None);
        let mut svc = AdmitLayer::new(bulkhead.clone(), mode)
            .runtime(rt.clone())
            .max_wait(Duration::ZERO)
            .layer(Work::new(&rt));
        let start = rt.now();
        assert_eq!(
            ready_and_call(&mut svc, 0).await,
            Ok(0),
            "{mode:?}: a free slot admits"
        );
        let held = bulkhead.try_acquire_owned().unwrap();
        assert_eq!(
            ready_and_call(&mut svc, 0).await,
            Err(Error::Rejected(Rejected::DeadlineExceeded)),
            "{mode:?}"
        );
        assert_eq!(rt.now(), start, "{mode:?}: no time to wait");
        assert_eq!(bulkhead.rejected(), 1, "{mode:?}");
        assert_eq!(bulkhead.queued(), 0, "{mode:?}");
        drop((held, svc));
        assert_conserved(&bulkhead);

        let limiter = RateLimiter::builder(10, Duration::from_secs(1))
            .burst(1)
            .jitter(Duration::ZERO)
            .runtime(rt.clone())
            .build()
            .unwrap();
        let mut svc = AdmitLayer::new(limiter, mode)
            .runtime(rt.clone())
            .max_wait(Duration::ZERO)
            .layer(Work::new(&rt));
        assert_eq!(ready_and_call(&mut svc, 0).await, Ok(0), "{mode:?}");
        assert_eq!(
            ready_and_call(&mut svc, 0).await,
            Err(Error::Rejected(Rejected::DeadlineExceeded)),
            "{mode:?}"
        );
        assert_eq!(rt.now(), start);
    }
}

#[test]
fn a_max_wait_of_zero_admits_a_free_stage_and_refuses_a_full_one_at_once_on_every_runtime() {
    on_every_runtime!(zero_max_wait);
}

// Docs (`max_wait`): bounds each wait; (`rt::instant_after`): a duration too large for the
// clock saturates "instead of panicking".
async fn max_wait_of_duration_max<R: Runtime>(rt: Clocked<R>) {
    for mode in [AdmitMode::WaitReady, AdmitMode::WaitCall] {
        let bulkhead = bulkhead(&rt, 1, None);
        let mut svc = AdmitLayer::new(bulkhead.clone(), mode)
            .runtime(rt.clone())
            .max_wait(Duration::MAX)
            .layer(Work::new(&rt));
        let held = bulkhead.try_acquire_owned().unwrap();
        let clock = rt.clone();
        let release = rt.spawn(async move {
            clock.sleep(2 * HOUR).await;
            drop(held);
        });
        let start = rt.now();
        assert_eq!(ready_and_call(&mut svc, 0).await, Ok(0), "{mode:?}");
        assert_eq!(
            rt.now() - start,
            2 * HOUR,
            "{mode:?}: admitted at the release"
        );
        release.await.unwrap();
        assert_eq!(bulkhead.rejected(), 0, "{mode:?}");
        drop(svc);
        assert_conserved(&bulkhead);

        let limiter = RateLimiter::builder(1, Duration::from_secs(1))
            .burst(1)
            .jitter(Duration::ZERO)
            .runtime(rt.clone())
            .build()
            .unwrap();
        let mut svc = AdmitLayer::new(limiter, mode)
            .runtime(rt.clone())
            .max_wait(Duration::MAX)
            .layer(Work::new(&rt));
        let start = rt.now();
        assert_eq!(ready_and_call(&mut svc, 0).await, Ok(0));
        assert_eq!(ready_and_call(&mut svc, 0).await, Ok(0));
        assert_eq!(rt.now() - start, Duration::from_secs(1), "{mode:?}");
    }
}

#[test]
fn a_max_wait_of_duration_max_waits_as_long_as_needed_without_overflowing_on_every_runtime() {
    on_every_runtime!(max_wait_of_duration_max);
}

// Docs (`AdmitService`): "A clone shares the stage and starts with nothing admitted."
// (`WaitReady`): "the guard taken there (a bulkhead slot) is held until the call's response
// future completes".
async fn clones_share_the_stage<R: Runtime>(rt: Clocked<R>) {
    let bulkhead = bulkhead(&rt, 1, None);
    let mut a = AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitReady)
        .runtime(rt.clone())
        .layer(Work::new(&rt));
    poll_fn(|cx| a.poll_ready(cx)).await.unwrap();
    assert_eq!(bulkhead.available(), 0);
    let mut b = a.clone();
    {
        let mut ready_b = pin!(poll_fn(|cx| b.poll_ready(cx)));
        assert!(
            futures_util::poll!(ready_b.as_mut()).is_pending(),
            "the clone holds nothing: it waits for the slot"
        );
        assert_eq!(bulkhead.queued(), 1);
        assert_eq!(a.call(4).await, Ok(4));
        assert_eq!(ready_b.await, Ok(()), "the slot went to the clone");
    }
    assert_eq!(bulkhead.available(), 0, "the clone holds it now");
    let c = b.clone();
    assert_eq!(bulkhead.available(), 0, "cloning takes nothing");
    drop(b);
    assert_eq!(
        bulkhead.available(),
        1,
        "dropping the service released its slot"
    );
    drop((a, c));
    assert_conserved(&bulkhead);

    // WaitCall clones: the second call waits for the first one's slot.
    let work = Work::new(&rt);
    let mut x = AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitCall)
        .runtime(rt.clone())
        .layer(work.clone());
    let mut y = x.clone();
    let start = rt.now();
    let first = x.call(30);
    let second = y.call(20);
    let (r1, r2) = futures_util::future::join(first, second).await;
    assert_eq!((r1, r2), (Ok(30), Ok(20)));
    assert_eq!(rt.now() - start, ms(50), "one after the other");
    assert_eq!(work.gauge.most(), 1);
    drop((x, y));
    assert_conserved(&bulkhead);
}

#[test]
fn clones_of_an_admit_service_share_one_stage_and_start_with_nothing_admitted_on_every_runtime() {
    on_every_runtime!(clones_share_the_stage);
}

// Docs (`AdmitService::into_inner`): "The inner service; a guard admitted in poll_ready is
// released." (`get_ref`, `get_mut`, `admission`).
async fn into_inner_releases<R: Runtime>(rt: Clocked<R>) {
    let bulkhead = bulkhead(&rt, 2, None);
    let work = Work::new(&rt);
    let mut svc = AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitReady)
        .runtime(rt.clone())
        .layer(work.clone());
    poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    assert_eq!(svc.admission().available(), 1);
    assert_eq!(svc.get_ref().calls(), 0);
    assert_eq!(
        svc.get_mut().call(2).await,
        Ok(2),
        "the inner service itself"
    );
    assert_eq!(
        bulkhead.available(),
        1,
        "the slot is still held by the service"
    );
    let mut inner = svc.into_inner();
    assert_eq!(bulkhead.available(), 2, "into_inner released the slot");
    assert_eq!(inner.call(0).await, Ok(0));
    assert_eq!(work.calls(), 2);
    assert_conserved(&bulkhead);
}

#[test]
fn into_inner_releases_the_slot_taken_in_poll_ready_on_every_runtime() {
    on_every_runtime!(into_inner_releases);
}

// Docs (`AdmitLayer`): "Admits each call through an Admission stage before the inner service
// sees it". A call made without poll_ready must not slip past the stage.
async fn call_without_poll_ready<R: Runtime>(rt: Clocked<R>) {
    for mode in [AdmitMode::Reject, AdmitMode::WaitReady, AdmitMode::WaitCall] {
        let bulkhead = bulkhead(&rt, 2, None);
        let work = Work::new(&rt);
        let svc = AdmitLayer::new(bulkhead.clone(), mode)
            .runtime(rt.clone())
            .layer(work.clone());
        let mut handles = Vec::new();
        for i in 0..6u64 {
            let mut svc = svc.clone();
            handles.push(rt.spawn(async move { svc.call(10 + 2 * i).await }));
        }
        let mut oks = 0;
        for handle in handles {
            match handle.await.unwrap() {
                Ok(_) => oks += 1,
                Err(Error::Rejected(Rejected::BulkheadFull)) => {}
                Err(e) => panic!("{mode:?}: {e:?}"),
            }
        }
        assert!(
            work.gauge.most() <= 2,
            "{mode:?}: {} calls ran at once through a bulkhead of 2",
            work.gauge.most()
        );
        if mode == AdmitMode::WaitCall {
            assert_eq!(oks, 6, "every call waits for its turn");
        }
        drop(svc);
        assert_conserved(&bulkhead);
    }
}

#[test]
fn a_call_without_poll_ready_never_slips_past_the_stage_in_any_mode_on_every_runtime() {
    on_every_runtime!(call_without_poll_ready);
}

// Docs (admit `ResponseFuture`): "Cancel safety: dropping it drops the pending admission
// (leaving a bulkhead's queue) or the guard (freeing the slot); nothing is held afterwards."
// (`AdmitService`): keeps "the stage's guard and pending wait between poll_ready and call".
async fn admit_mode_storm<R: Runtime>(rt: Clocked<R>, mode: AdmitMode, seed: u64) {
    let mut rng = Rng(seed);
    for bound in [
        None,
        Some(Duration::ZERO),
        Some(ms(25)),
        Some(Duration::MAX),
    ] {
        let bulkhead = bulkhead(&rt, 3, Some(ms(40)));
        let work = Work::new(&rt);
        let layer = AdmitLayer::new(bulkhead.clone(), mode).runtime(rt.clone());
        let layer = match bound {
            Some(bound) => layer.max_wait(bound),
            None => layer,
        };
        let svc = layer.layer(work.clone());
        storm(&rt, &svc, &mut rng, 80).await;
        drop(svc);
        assert_eq!(work.gauge.now(), 0, "{mode:?} {bound:?}");
        assert!(
            work.gauge.most() <= 3,
            "{mode:?} {bound:?}: {} at once through a bulkhead of 3",
            work.gauge.most()
        );
        assert_conserved(&bulkhead);
    }
}

#[test]
fn reject_mode_conserves_capacity_when_services_and_futures_drop_at_random_on_every_runtime() {
    on_every_runtime!(|rt| admit_mode_storm(rt, AdmitMode::Reject, 0x5EED_0001));
}

#[test]
fn wait_ready_mode_conserves_capacity_when_waits_services_and_futures_drop_at_random_on_every_runtime()
 {
    on_every_runtime!(|rt| admit_mode_storm(rt, AdmitMode::WaitReady, 0x5EED_0002));
}

#[test]
fn wait_call_mode_conserves_capacity_when_services_and_futures_drop_at_random_on_every_runtime() {
    on_every_runtime!(|rt| admit_mode_storm(rt, AdmitMode::WaitCall, 0x5EED_0003));
}

// Docs (admit `ResponseFuture` and `AdmitService`), checked step by step on a FakeClock: a
// service waiting in poll_ready that is dropped leaves the queue and its timer; one dropped
// after its slot was granted but before it was polled again passes the slot on.
#[test]
fn a_wait_ready_service_dropped_while_queued_or_granted_but_unpolled_leaks_nothing() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let bulkhead = Bulkhead::builder(1)
        .max_queue(4)
        .max_wait(None)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let work = Work::new(&clock);
    let layer = AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitReady)
        .runtime(clock.clone())
        .max_wait(Duration::from_secs(1));

    let held = bulkhead.try_acquire_owned().unwrap();
    let mut a = layer.layer(work.clone());
    let mut b = layer.layer(work.clone());
    assert!(poller.ready(&mut a).is_pending());
    assert!(poller.ready(&mut b).is_pending());
    assert_eq!(bulkhead.queued(), 2);
    drop(a);
    assert_eq!(bulkhead.queued(), 1, "a dropped waiter leaves the queue");
    drop(held); // granted to b, which is not polled
    drop(b);
    assert_eq!(bulkhead.available(), 1, "b's granted slot came back");
    assert_eq!(bulkhead.queued(), 0);
    assert_eq!(clock.pending_timers(), 0, "no timer outlives its service");
    assert_eq!(bulkhead.rejected(), 0);

    // Granted to a dropped waiter: passed to the next one.
    let held = bulkhead.try_acquire_owned().unwrap();
    let mut a = layer.layer(work.clone());
    let mut b = layer.layer(work.clone());
    assert!(poller.ready(&mut a).is_pending());
    assert!(poller.ready(&mut b).is_pending());
    drop(held);
    drop(a);
    assert_eq!(poller.ready(&mut b), Poll::Ready(Ok(())));
    assert_eq!(bulkhead.available(), 0);
    // Ready, then idle for hours, then called: the slot is held throughout, released after.
    clock.advance(5 * HOUR);
    let mut call = pin!(b.call(2));
    let out = settle(&clock, &poller, clock.now() + HOUR, |cx| {
        call.as_mut().poll(cx)
    });
    assert_eq!(out, Some(Ok(2)));
    assert_eq!(bulkhead.available(), 1);
    drop(b);
    assert_eq!(work.gauge.now(), 0);
    assert_conserved(&bulkhead);
}

#[test]
fn a_wait_call_response_future_dropped_while_queued_granted_or_running_leaks_nothing() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let bulkhead = Bulkhead::builder(1)
        .max_queue(4)
        .max_wait(None)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let work = Work::new(&clock);
    let mut svc = AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitCall)
        .runtime(clock.clone())
        .max_wait(Duration::from_secs(1))
        .layer(work.clone());

    // Queued, dropped.
    let held = bulkhead.try_acquire_owned().unwrap();
    let mut call = Box::pin(svc.call(10));
    assert!(poller.poll(call.as_mut()).is_pending());
    assert_eq!(bulkhead.queued(), 1);
    drop(call);
    assert_eq!(bulkhead.queued(), 0);
    assert_eq!(clock.pending_timers(), 0);
    assert_eq!(work.calls(), 0);
    assert_eq!(
        bulkhead.rejected(),
        0,
        "a dropped call is not a refused one"
    );

    // Granted while unpolled, dropped.
    let mut call = Box::pin(svc.call(10));
    assert!(poller.poll(call.as_mut()).is_pending());
    drop(held);
    drop(call);
    assert_eq!(bulkhead.available(), 1);
    assert_eq!(work.calls(), 0);

    // Admitted and running, dropped.
    let mut call = Box::pin(svc.call(10));
    assert!(poller.poll(call.as_mut()).is_pending());
    assert_eq!(work.gauge.now(), 1);
    assert_eq!(bulkhead.available(), 0);
    drop(call);
    assert_eq!(work.gauge.now(), 0);
    assert_eq!(bulkhead.available(), 1);
    assert_eq!(clock.pending_timers(), 0);
    drop(svc);
    assert_conserved(&bulkhead);
}

// Docs (`AdmitLayer`): "Clones of the layer, and of the services it makes, share the stage".
// Any age: hours of idle time between calls change nothing.
async fn idle_gaps<R: Runtime>(rt: Clocked<R>) {
    let limiter = RateLimiter::builder(10, Duration::from_secs(1))
        .burst(2)
        .jitter(Duration::ZERO)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let bulkhead = bulkhead(&rt, 1, None);
    let work = Work::new(&rt);
    let mut shed = AdmitLayer::new(limiter, AdmitMode::Reject)
        .runtime(rt.clone())
        .layer(work.clone());
    let mut bounded = AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitCall)
        .runtime(rt.clone())
        .max_wait(ms(50))
        .layer(work.clone());
    let mut backpressure = AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitReady)
        .runtime(rt.clone())
        .max_wait(ms(50))
        .layer(work.clone());
    for round in 1..=3 {
        rt.sleep(3 * HOUR).await;
        assert_eq!(ready_and_call(&mut shed, 0).await, Ok(0), "round {round}");
        assert_eq!(ready_and_call(&mut shed, 0).await, Ok(0), "round {round}");
        assert_eq!(
            ready_and_call(&mut shed, 0).await,
            Err(Error::Rejected(Rejected::RateLimited {
                retry_after: ms(100)
            })),
            "round {round}: a burst of 2, no more"
        );
        let held = bulkhead.try_acquire_owned().unwrap();
        let start = rt.now();
        assert_eq!(
            ready_and_call(&mut bounded, 0).await,
            Err(Error::Rejected(Rejected::DeadlineExceeded)),
            "round {round}"
        );
        assert_eq!(rt.now() - start, ms(50), "round {round}");
        drop(held);
        poll_fn(|cx| backpressure.poll_ready(cx)).await.unwrap();
        rt.sleep(HOUR).await;
        assert_eq!(backpressure.call(2).await, Ok(2), "round {round}");
        assert_eq!(bulkhead.available(), 1, "round {round}");
    }
    assert_eq!(bulkhead.rejected(), 3);
    drop((bounded, backpressure));
    assert_conserved(&bulkhead);
}

#[test]
fn hours_of_idle_time_between_calls_change_nothing_in_any_admit_mode_on_every_runtime() {
    on_every_runtime!(idle_gaps);
}

// === BreakerLayer::wait_in_ready ==========================================================

fn tripped_breaker(clock: &FakeClock, name: &'static str) -> CircuitBreaker<FakeClock> {
    let breaker = CircuitBreaker::builder()
        .name(name)
        .consecutive_failures(1)
        .break_duration(ms(100))
        .half_open_probes(1)
        .max_half_open_wait(None)
        .runtime(clock.clone())
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Open);
    breaker
}

// Docs (`wait_in_ready`): "While the breaker refuses, poll_ready waits: it sleeps for the
// breaker's retry_after and asks again, and holds the permit it gets until the call."
#[test]
fn a_caller_waiting_in_poll_ready_while_open_is_admitted_when_the_breaker_half_opens() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let breaker = tripped_breaker(&clock, "hostile-admit-b1");
    let answer = Answer::default();
    let mut svc = BreakerLayer::new(breaker.clone())
        .wait_in_ready(None)
        .layer(answer.clone());
    clock.advance(ms(10));
    let start = clock.now();
    assert!(poller.ready(&mut svc).is_pending());
    let out = settle(&clock, &poller, start + HOUR, |cx| svc.poll_ready(cx));
    assert_eq!(out, Some(Ok(())));
    assert_eq!(
        clock.now() - start,
        ms(90),
        "admitted the moment the break ended"
    );
    assert_eq!(breaker.state(), State::HalfOpen);
    assert!(
        breaker.try_acquire().is_err(),
        "the waiter holds the only probe"
    );
    assert_eq!(answer.calls(), 0);
    assert_eq!(poller.poll(pin!(svc.call(Ok(1)))), Poll::Ready(Ok(1)));
    assert_eq!(breaker.state(), State::Closed, "the probe succeeded");
    assert_eq!(clock.pending_timers(), 0);
}

// Docs (`wait_in_ready`): "A wait longer than max_wait fails poll_ready with the breaker's
// Rejected::CircuitOpen, at once when the breaker's hint already ends past it".
#[test]
fn a_caller_with_a_short_max_wait_gets_circuit_open_at_once() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let breaker = tripped_breaker(&clock, "hostile-admit-b2");
    let answer = Answer::default();
    clock.advance(ms(10));
    for max_wait in [ms(50), Duration::ZERO] {
        let mut svc = BreakerLayer::new(breaker.clone())
            .wait_in_ready(max_wait)
            .layer(answer.clone());
        let out = poller.ready(&mut svc);
        match out {
            Poll::Ready(Err(Error::Rejected(Rejected::CircuitOpen { retry_after }))) => {
                assert!(
                    retry_after > max_wait && retry_after <= ms(90),
                    "{max_wait:?}: the breaker's own hint: {retry_after:?}"
                );
            }
            other => panic!("{max_wait:?}: {other:?}"),
        }
        assert_eq!(clock.pending_timers(), 0, "{max_wait:?}: no timer left");
    }
    assert_eq!(answer.calls(), 0);
    // A closed breaker is ready at once, even with a max_wait of zero.
    breaker.reset();
    let mut svc = BreakerLayer::new(breaker.clone())
        .wait_in_ready(Duration::ZERO)
        .layer(answer.clone());
    assert_eq!(poller.ready(&mut svc), Poll::Ready(Ok(())));
}

// Docs (`wait_in_ready`): `max_wait` "(None: no bound)"; (`rt::Clock::sleep`): "A duration too
// large to add to the clock sleeps forever ... instead of overflowing".
#[test]
fn a_caller_with_a_max_wait_of_duration_max_waits_out_the_break_without_overflowing() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let breaker = tripped_breaker(&clock, "hostile-admit-b7");
    let mut svc = BreakerLayer::new(breaker.clone())
        .wait_in_ready(Duration::MAX)
        .layer(Answer::default());
    let start = clock.now();
    let out = settle(&clock, &poller, start + HOUR, |cx| svc.poll_ready(cx));
    assert_eq!(out, Some(Ok(())));
    assert_eq!(clock.now() - start, ms(100));
    assert_eq!(poller.poll(pin!(svc.call(Ok(3)))), Poll::Ready(Ok(3)));
    assert_eq!(breaker.state(), State::Closed);
}

// Docs (`wait_in_ready`): a wait longer than max_wait gives up with CircuitOpen, never later.
// Here the only probe is taken by someone else when the break ends.
#[test]
fn a_caller_whose_wait_outlasts_max_wait_gives_up_with_circuit_open_no_later_than_max_wait() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let breaker = tripped_breaker(&clock, "hostile-admit-b3");
    let start = clock.now();
    let mut svc = BreakerLayer::new(breaker.clone())
        .wait_in_ready(ms(150))
        .layer(Answer::default());
    assert!(
        poller.ready(&mut svc).is_pending(),
        "the break fits max_wait"
    );
    clock.advance(ms(100));
    let probe = breaker.try_acquire().unwrap();
    assert!(probe.is_probe());
    let out = settle(&clock, &poller, start + HOUR, |cx| svc.poll_ready(cx));
    assert!(
        matches!(
            out,
            Some(Err(Error::Rejected(Rejected::CircuitOpen { .. })))
        ),
        "{out:?}"
    );
    assert!(
        clock.now() - start <= ms(150),
        "gave up {:?} after the start, past max_wait",
        clock.now() - start
    );
    drop(probe);
    assert_eq!(breaker.state(), State::HalfOpen);
}

// Docs (`BreakerService::into_inner`): "a permit taken in poll_ready is given back unrecorded";
// (`wait_in_ready`): the permit, "a half-open probe slot, given back when the service is
// dropped or called"; (`BreakerService`): "A clone ... starts holding no permit."
#[test]
fn a_permit_held_from_poll_ready_records_nothing_and_frees_the_probe_when_the_service_goes() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let breaker = tripped_breaker(&clock, "hostile-admit-b4");
    clock.advance(ms(100));
    let layer = BreakerLayer::new(breaker.clone()).wait_in_ready(None);
    let answer = Answer::default();

    // Dropped.
    let mut svc = layer.layer(answer.clone());
    assert_eq!(poller.ready(&mut svc), Poll::Ready(Ok(())));
    let counts = breaker.counts();
    assert!(
        breaker.try_acquire().is_err(),
        "the service holds the probe"
    );
    drop(svc);
    assert_eq!(breaker.counts(), counts, "nothing recorded");
    assert_eq!(breaker.state(), State::HalfOpen);
    let probe = breaker
        .try_acquire()
        .expect("dropping the service gave the probe back");
    assert!(probe.is_probe());
    drop(probe);

    // into_inner.
    let mut svc = layer.layer(answer.clone());
    assert_eq!(poller.ready(&mut svc), Poll::Ready(Ok(())));
    let _inner = svc.into_inner();
    assert_eq!(breaker.counts(), counts);
    drop(
        breaker
            .try_acquire()
            .expect("into_inner gave the probe back"),
    );

    // A response future dropped unpolled.
    let mut svc = layer.layer(answer.clone());
    assert_eq!(poller.ready(&mut svc), Poll::Ready(Ok(())));
    drop(svc.call(Ok(1)));
    assert_eq!(breaker.counts(), counts);
    drop(
        breaker
            .try_acquire()
            .expect("a dropped response future gave the probe back"),
    );

    // A clone holds nothing: it waits, and gets the probe when its original goes.
    let mut original = layer.layer(answer.clone());
    assert_eq!(poller.ready(&mut original), Poll::Ready(Ok(())));
    let mut clone = original.clone();
    assert!(
        poller.ready(&mut clone).is_pending(),
        "the clone has no permit of its own"
    );
    drop(original);
    let out = settle(&clock, &poller, clock.now() + HOUR, |cx| {
        clone.poll_ready(cx)
    });
    assert_eq!(out, Some(Ok(())), "the clone got the freed probe");
    assert_eq!(breaker.counts(), counts);
    assert_eq!(poller.poll(pin!(clone.call(Ok(2)))), Poll::Ready(Ok(2)));
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(answer.calls(), 2, "the dropped call and the last one");
}

// Docs (`wait_in_ready`): "Cancel safety: a caller that stops polling holds nothing but, once
// admitted, the permit".
#[test]
fn a_caller_that_stops_polling_before_admission_holds_nothing() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let breaker = tripped_breaker(&clock, "hostile-admit-b5");
    let layer = BreakerLayer::new(breaker.clone()).wait_in_ready(None);
    let mut idle = layer.layer(Answer::default());
    assert!(poller.ready(&mut idle).is_pending());
    clock.advance(ms(100)); // `idle` is woken but never polled again
    let mut other = layer.layer(Answer::default());
    assert_eq!(
        poller.ready(&mut other),
        Poll::Ready(Ok(())),
        "the probe is free"
    );
    assert_eq!(poller.poll(pin!(other.call(Ok(1)))), Poll::Ready(Ok(1)));
    assert_eq!(breaker.state(), State::Closed);
    // A waiter dropped mid-sleep leaves no timer behind.
    breaker.try_acquire().unwrap().failure();
    let mut dropped = layer.layer(Answer::default());
    assert!(poller.ready(&mut dropped).is_pending());
    drop((dropped, idle));
    assert_eq!(clock.pending_timers(), 0);
}

// Docs (breaker): "Exact probes: ... however many callers race, exactly the configured number
// get through." (`wait_in_ready`): callers are held "until the breaker admits".
#[test]
fn many_callers_waiting_in_poll_ready_get_exactly_the_probes_then_all_get_through() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let breaker = tripped_breaker(&clock, "hostile-admit-b6");
    let answer = Answer::default();
    let layer = BreakerLayer::new(breaker.clone()).wait_in_ready(None);
    let mut waiters: Vec<_> = (0..5).map(|_| layer.layer(answer.clone())).collect();
    for w in &mut waiters {
        assert!(poller.ready(w).is_pending());
    }
    clock.advance(ms(100));
    let admitted: Vec<usize> = waiters
        .iter_mut()
        .enumerate()
        .filter_map(|(i, w)| poller.ready(w).is_ready().then_some(i))
        .collect();
    assert_eq!(admitted.len(), 1, "one probe, one caller: {admitted:?}");
    let first = admitted[0];
    assert_eq!(
        poller.poll(pin!(waiters[first].call(Ok(0)))),
        Poll::Ready(Ok(0))
    );
    assert_eq!(breaker.state(), State::Closed);
    let closed_at = clock.now();
    for (i, w) in waiters.iter_mut().enumerate() {
        if i == first {
            continue;
        }
        let out = settle(&clock, &poller, closed_at + HOUR, |cx| w.poll_ready(cx));
        assert_eq!(out, Some(Ok(())), "waiter {i} got through");
        assert_eq!(poller.poll(pin!(w.call(Ok(1)))), Poll::Ready(Ok(1)));
    }
    assert_eq!(answer.calls(), 5);
    assert_eq!(breaker.state(), State::Closed);
}

// Docs (breaker): "Any age: a breaker behaves the same an hour, a month or a century after it
// was built, and after any idle gap".
#[test]
fn a_breaker_waiter_after_hours_of_idle_time_is_admitted_at_once() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let breaker = tripped_breaker(&clock, "hostile-admit-b8");
    let layer = BreakerLayer::new(breaker.clone()).wait_in_ready(ms(50));
    // Polled while open (the hint fits no wait of 50 ms), then hours of silence.
    let mut early = BreakerLayer::new(breaker.clone())
        .wait_in_ready(None)
        .layer(Answer::default());
    assert!(poller.ready(&mut early).is_pending());
    clock.advance(5 * HOUR);
    assert_eq!(
        poller.ready(&mut early),
        Poll::Ready(Ok(())),
        "long past the break"
    );
    drop(early);
    let mut late = layer.layer(Answer::default());
    assert_eq!(poller.ready(&mut late), Poll::Ready(Ok(())));
    // Ready, then idle for hours, then called: the outcome still counts.
    clock.advance(5 * HOUR);
    assert_eq!(poller.poll(pin!(late.call(Ok(1)))), Poll::Ready(Ok(1)));
    assert_eq!(breaker.state(), State::Closed);
    for round in 0..3 {
        clock.advance(7 * HOUR);
        breaker.try_acquire().unwrap().failure();
        let mut svc = layer.layer(Answer::default());
        let out = poller.ready(&mut svc);
        assert!(
            matches!(
                out,
                Poll::Ready(Err(Error::Rejected(Rejected::CircuitOpen { .. })))
            ),
            "round {round}: a fresh break of 100 ms exceeds 50 ms: {out:?}"
        );
        clock.advance(ms(100));
        assert_eq!(poller.ready(&mut svc), Poll::Ready(Ok(())), "round {round}");
        assert_eq!(poller.poll(pin!(svc.call(Ok(2)))), Poll::Ready(Ok(2)));
    }
}

#[cfg(feature = "metrics")]
// Docs (`wait_in_ready`): "fails poll_ready with the breaker's Rejected::CircuitOpen ...; the
// rejection is counted once, then." A caller that waits and is admitted was never refused.
#[test]
fn a_breaker_waiter_is_counted_once_when_it_gives_up_and_never_when_admitted() {
    tally::install();
    let clock = FakeClock::new();
    let poller = Poller::new();

    // Gives up at once.
    let name = "hostile-admit-m1";
    let breaker = tripped_breaker(&clock, name);
    let mut svc = BreakerLayer::new(breaker.clone())
        .wait_in_ready(ms(10))
        .layer(Answer::default());
    assert!(poller.ready(&mut svc).is_ready());
    assert_eq!(tally::rejections(name), 1);

    // Gives up after waiting through refusals (the probe taken by someone else).
    let name = "hostile-admit-m2";
    let breaker = tripped_breaker(&clock, name);
    let start = clock.now();
    let mut svc = BreakerLayer::new(breaker.clone())
        .wait_in_ready(ms(150))
        .layer(Answer::default());
    assert!(poller.ready(&mut svc).is_pending());
    clock.advance(ms(100));
    let probe = breaker.try_acquire().unwrap();
    let out = settle(&clock, &poller, start + HOUR, |cx| svc.poll_ready(cx));
    assert!(matches!(out, Some(Err(_))), "{out:?}");
    assert_eq!(tally::rejections(name), 1, "counted once when it gave up");
    drop(probe);

    // Waits through refusals, then admitted: nothing counted.
    let name = "hostile-admit-m3";
    let breaker = tripped_breaker(&clock, name);
    let start = clock.now();
    let mut svc = BreakerLayer::new(breaker.clone())
        .wait_in_ready(None)
        .layer(Answer::default());
    assert!(poller.ready(&mut svc).is_pending());
    clock.advance(ms(100));
    let probe = breaker.try_acquire().unwrap();
    assert!(poller.ready(&mut svc).is_pending(), "the probe is taken");
    clock.advance(ms(20));
    drop(probe);
    let out = settle(&clock, &poller, start + HOUR, |cx| svc.poll_ready(cx));
    assert_eq!(out, Some(Ok(())));
    assert_eq!(
        tally::rejections(name),
        0,
        "an admitted waiter was never refused"
    );
}

// === TimeoutLayer ==========================================================================

// Docs (timeout `ResponseFuture`): "the inner call, or Error::TimedOut when the budget runs out
// first. Cancel safety: dropping it drops the inner call and the timer."
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
// call — by timeout ... if readiness takes too long, poll_ready fails with Error::TimedOut, and
// the call gets only what is left." Over a WaitReady admission: the slot is released at the end.
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

    // Readiness never comes: TimedOut at 100 ms, and the abandoned wait leaves with the service.
    let held = bulkhead.try_acquire_owned().unwrap();
    let mut svc = stack();
    let start = clock.now();
    let out = settle(&clock, &poller, start + HOUR, |cx| svc.poll_ready(cx));
    assert_eq!(out, Some(Err(Error::TimedOut)));
    assert_eq!(clock.now() - start, ms(100));
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
    let mut rng = Rng(0x57AC_4ADD);
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
    for _ in 0..3 {
        let r = match svc.ready().await {
            Ok(ready) => ready.call(4).await,
            Err(e) => Err(e),
        };
        trail.push(breaker.state());
        assert_eq!(r, Ok(4), "breaker states {trail:?}");
    }
    assert_eq!(breaker.state(), State::Closed, "breaker states {trail:?}");
    drop(svc);
    assert_conserved(&bulkhead);
}

#[test]
fn a_service_builder_stack_conserves_capacity_and_closes_again_after_random_cancellation_on_every_runtime()
 {
    on_every_runtime!(service_builder_stack_storm);
}

/// A stack spelled out in full, with its response future named: no boxing, no `impl Trait`.
type AdmitStage<R> = AdmitService<Work<R>, Bulkhead<R>, R>;
type Guarded<R> = BreakerService<AdmitStage<R>, R>;
type Stack<R> = TimeoutService<Guarded<R>, R>;
type StackFuture<R> = timeout::ResponseFuture<
    breaker::ResponseFuture<admit::ResponseFuture<Work<R>, Bulkhead<R>, u64>, R, DefaultClassifier>,
    R,
>;

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

// === a stage kept elsewhere ================================================================

/// What a [`Remote`] stage saw: every wait it was asked with, the guards it granted and the
/// guards given back.
#[derive(Default)]
struct RemoteState {
    waits: std::sync::Mutex<Vec<Wait>>,
    granted: AtomicUsize,
    released: AtomicUsize,
    /// Refuse every admission with `Rejected::BackendUnavailable` (after the round trip).
    refuse: std::sync::atomic::AtomicBool,
}

impl RemoteState {
    fn outstanding(&self) -> usize {
        self.granted.load(SeqCst) - self.released.load(SeqCst)
    }
}

/// A stage that decides after a round trip, as a distributed limiter does: `try_admit` can
/// never decide, `admit` answers after `round_trip`.
#[derive(Clone)]
struct Remote<R> {
    rt: R,
    round_trip: Duration,
    state: Arc<RemoteState>,
}

impl<R: Clock> Remote<R> {
    fn new(rt: &R, round_trip: Duration) -> Self {
        Self {
            rt: rt.clone(),
            round_trip,
            state: Arc::default(),
        }
    }
}

/// A guard of [`Remote`]: counted back on drop.
struct Ticket(Arc<RemoteState>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.released.fetch_add(1, SeqCst);
    }
}

pin_project! {
    /// The round trip of [`Remote::admit`].
    struct RoundTrip<R: Clock> {
        #[pin]
        sleep: R::Sleep,
        state: Arc<RemoteState>,
    }
}

impl<R: Clock> Future for RoundTrip<R> {
    type Output = Result<Ticket, Rejected>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if this.sleep.poll(cx).is_pending() {
            return Poll::Pending;
        }
        if this.state.refuse.load(SeqCst) {
            return Poll::Ready(Err(Rejected::BackendUnavailable));
        }
        this.state.granted.fetch_add(1, SeqCst);
        Poll::Ready(Ok(Ticket(this.state.clone())))
    }
}

impl<R: Clock> Admission for Remote<R> {
    type Guard = Ticket;
    type Admit = RoundTrip<R>;

    fn try_admit(&self) -> Option<Ticket> {
        None
    }

    fn admit(&self, wait: Wait) -> RoundTrip<R> {
        self.state.waits.lock().unwrap().push(wait);
        RoundTrip {
            sleep: self.rt.sleep(self.round_trip),
            state: self.state.clone(),
        }
    }
}

// Docs (admission): "decide through admit, either at once (Wait::No: refused with the stage's
// own reason and hint) or waiting up to a deadline (Wait::Until)"; (`Wait::No`): "A stage that
// decides remotely still makes its round trip." (`AdmitLayer::new`): "a wait lasts as long as
// the stage allows ... unless bounded with max_wait".
async fn remote_stage_modes<R: Runtime>(rt: Clocked<R>) {
    let trip = ms(5);
    for (mode, bound) in [
        (AdmitMode::Reject, None),
        (AdmitMode::Reject, Some(ms(50))),
        (AdmitMode::WaitReady, None),
        (AdmitMode::WaitReady, Some(ms(50))),
        (AdmitMode::WaitCall, None),
        (AdmitMode::WaitCall, Some(ms(50))),
    ] {
        let remote = Remote::new(&rt, trip);
        let work = Work::new(&rt);
        let layer = AdmitLayer::new(remote.clone(), mode).runtime(rt.clone());
        let layer = match bound {
            Some(bound) => layer.max_wait(bound),
            None => layer,
        };
        let mut svc = layer.layer(work.clone());
        let start = rt.now();
        assert_eq!(
            ready_and_call(&mut svc, 10).await,
            Ok(10),
            "{mode:?} {bound:?}"
        );
        assert_eq!(
            rt.now() - start,
            trip + ms(10),
            "{mode:?} {bound:?}: the round trip, then the call"
        );
        let waits = remote.state.waits.lock().unwrap().clone();
        let expected = match (mode, bound) {
            (AdmitMode::Reject, _) => Wait::No,
            (_, None) => Wait::Until(Deadline::none()),
            (_, Some(bound)) => Wait::Until(Deadline::at(start + bound)),
        };
        assert_eq!(waits, vec![expected], "{mode:?} {bound:?}");
        assert_eq!(remote.state.outstanding(), 0, "{mode:?} {bound:?}");

        // The stage's own refusal, with its own reason, in every mode.
        remote.state.refuse.store(true, SeqCst);
        let refused = ready_and_call(&mut svc, 10).await;
        assert_eq!(
            refused,
            Err(Error::Rejected(Rejected::BackendUnavailable)),
            "{mode:?} {bound:?}"
        );
        assert_eq!(
            work.calls(),
            1,
            "{mode:?} {bound:?}: a refused call never ran"
        );
    }
}

#[test]
fn a_remote_stage_is_asked_with_the_wait_each_mode_allows_and_makes_its_round_trip_on_every_runtime()
 {
    on_every_runtime!(remote_stage_modes);
}

// Docs (`Admission::Guard`): "Held for the whole call and released on drop"; (`AdmitLayer`):
// "The stage's guard ... is held until the response future completes, or is dropped with it";
// (admit `ResponseFuture`): "nothing is held afterwards".
async fn remote_guards_under_random_cancellation<R: Runtime>(rt: Clocked<R>, mode: AdmitMode) {
    let remote = Remote::new(&rt, ms(3));
    let work = Work::new(&rt);
    let svc = AdmitLayer::new(remote.clone(), mode)
        .runtime(rt.clone())
        .max_wait(ms(20))
        .layer(work.clone());
    let mut rng = Rng(0x7_1C4E7 ^ mode_seed(mode));
    storm(&rt, &svc, &mut rng, 120).await;
    drop(svc);
    assert!(work.calls() > 10, "{mode:?}: the storm made calls");
    assert_eq!(
        remote.state.outstanding(),
        0,
        "{mode:?}: {} guards granted, {} given back",
        remote.state.granted.load(SeqCst),
        remote.state.released.load(SeqCst)
    );
}

fn mode_seed(mode: AdmitMode) -> u64 {
    match mode {
        AdmitMode::Reject => 1,
        AdmitMode::WaitReady => 2,
        _ => 3,
    }
}

#[test]
fn every_guard_of_a_remote_stage_is_given_back_exactly_once_under_random_cancellation_on_every_runtime()
 {
    for mode in [AdmitMode::Reject, AdmitMode::WaitReady, AdmitMode::WaitCall] {
        on_every_runtime!(|rt| remote_guards_under_random_cancellation(rt, mode));
    }
}

// Docs (`AdmitLayer`): "The stage's guard (a bulkhead slot) is held until the response future
// completes". Checked on a FakeClock at every step of one call, in every mode.
#[test]
fn a_guard_is_held_exactly_while_the_call_runs_and_given_back_once_in_every_mode() {
    for mode in [AdmitMode::Reject, AdmitMode::WaitReady, AdmitMode::WaitCall] {
        let clock = FakeClock::new();
        let poller = Poller::new();
        let remote = Remote::new(&clock, ms(5));
        let work = Work::new(&clock);
        let mut svc = AdmitLayer::new(remote.clone(), mode)
            .runtime(clock.clone())
            .layer(work.clone());
        let out = settle(&clock, &poller, clock.now() + HOUR, |cx| svc.poll_ready(cx));
        assert_eq!(out, Some(Ok(())), "{mode:?}");
        let mut call = pin!(svc.call(20));
        assert!(poller.poll(call.as_mut()).is_pending(), "{mode:?}");
        let mut steps = 0;
        loop {
            if work.gauge.now() == 1 {
                assert_eq!(
                    remote.state.outstanding(),
                    1,
                    "{mode:?}: the guard is held while the call runs"
                );
            }
            if clock.next_timer().is_none() {
                break;
            }
            assert!(clock.advance_to_next_timer());
            steps += 1;
            if let Poll::Ready(out) = poller.poll(call.as_mut()) {
                assert_eq!(out, Ok(20), "{mode:?}");
                break;
            }
            assert!(steps < 100);
        }
        assert_eq!(
            remote.state.outstanding(),
            0,
            "{mode:?}: given back when the call completed"
        );
        assert_eq!(remote.state.granted.load(SeqCst), 1, "{mode:?}");
    }
}

// === repeated polls ========================================================================

// Docs (`AdmitMode::WaitReady`, `max_wait`): one wait per request, bounded by max_wait. Polling
// again while waiting must neither queue the service twice nor restart its deadline.
#[test]
fn repeated_polls_of_a_waiting_admit_service_queue_it_once_and_keep_its_first_deadline() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let bulkhead = bulkhead(&clock, 1, None);
    let work = Work::new(&clock);
    let held = bulkhead.try_acquire_owned().unwrap();

    let mut svc = AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitReady)
        .runtime(clock.clone())
        .max_wait(ms(50))
        .layer(work.clone());
    let start = clock.now();
    assert!(poller.ready(&mut svc).is_pending());
    let timers = clock.pending_timers();
    for step in 0..4 {
        clock.advance(ms(10));
        for _ in 0..10 {
            assert!(poller.ready(&mut svc).is_pending(), "step {step}");
        }
        assert_eq!(bulkhead.queued(), 1, "step {step}: queued once");
        assert_eq!(clock.pending_timers(), timers, "step {step}: no new timers");
    }
    let out = settle(&clock, &poller, start + HOUR, |cx| svc.poll_ready(cx));
    assert_eq!(out, Some(Err(Error::Rejected(Rejected::DeadlineExceeded))));
    assert_eq!(
        clock.now() - start,
        ms(50),
        "the deadline of the first poll"
    );
    assert_eq!(bulkhead.rejected(), 1, "one refusal, counted once");

    let mut svc = AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitCall)
        .runtime(clock.clone())
        .max_wait(ms(50))
        .layer(work.clone());
    let start = clock.now();
    let mut call = pin!(svc.call(2));
    assert!(poller.poll(call.as_mut()).is_pending());
    for step in 0..4 {
        clock.advance(ms(10));
        for _ in 0..10 {
            assert!(poller.poll(call.as_mut()).is_pending(), "step {step}");
        }
        assert_eq!(bulkhead.queued(), 1, "step {step}");
    }
    let out = settle(&clock, &poller, start + HOUR, |cx| call.as_mut().poll(cx));
    assert_eq!(out, Some(Err(Error::Rejected(Rejected::DeadlineExceeded))));
    assert_eq!(clock.now() - start, ms(50));
    assert_eq!(bulkhead.rejected(), 2);
    drop(held);
    assert_eq!(work.calls(), 0);
    assert_conserved(&bulkhead);
}

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
    assert_eq!(poller.ready(&mut svc), Poll::Ready(Err(Error::TimedOut)));
    assert_eq!(clock.now() - start, ms(100));
    drop((svc, held));
    assert_conserved(&bulkhead);
}

// Docs (`TimeoutLayer`): "The clock starts when poll_ready first has to wait for a request (or
// at the call, if the service was ready at once); ... the call gets only what is left."
#[test]
fn a_call_made_after_its_budget_ran_out_between_readiness_and_call_times_out_at_once() {
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
        let mut call = pin!(svc.call(10));
        let out = settle(&clock, &poller, start + HOUR, |cx| call.as_mut().poll(cx));
        assert_eq!(out, Some(Err(Error::TimedOut)));
        assert_eq!(clock.now(), start, "nothing was left of the budget");
    }
    assert_eq!(bulkhead.available(), 1);
    drop(svc);
    assert_conserved(&bulkhead);
}

// === breaker generations and forced states ===================================================

// Docs (breaker): "Generations: every transition bumps a generation the permit carries; an
// outcome from an earlier state never moves the current one." (`wait_in_ready`): the permit
// is held "until the call".
#[test]
fn a_permit_held_from_poll_ready_across_a_trip_does_not_move_the_new_state() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(1)
        .break_duration(ms(100))
        .half_open_probes(1)
        .max_half_open_wait(None)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let answer = Answer::default();
    let mut svc = BreakerLayer::new(breaker.clone())
        .wait_in_ready(None)
        .layer(answer.clone());
    assert_eq!(poller.ready(&mut svc), Poll::Ready(Ok(())), "closed");
    // Someone else trips the breaker while our permit waits for its call.
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Open);
    clock.advance(ms(40));
    let out = poller.poll(pin!(svc.call(Ok(1))));
    assert!(out.is_ready(), "{out:?}");
    assert_eq!(
        breaker.state(),
        State::Open,
        "a success from the closed generation does not close an open breaker"
    );
    let mut svc2 = BreakerLayer::new(breaker.clone())
        .wait_in_ready(None)
        .layer(answer.clone());
    let start = clock.now();
    let out = settle(&clock, &poller, start + HOUR, |cx| svc2.poll_ready(cx));
    assert_eq!(out, Some(Ok(())));
    assert_eq!(
        clock.now() - start,
        ms(60),
        "the break was not restarted or shortened"
    );
}

// Docs (`wait_in_ready`): "A wait longer than max_wait (None: no bound) fails poll_ready with
// the breaker's Rejected::CircuitOpen"; (`force_open`): "it stays open until reset". A waiter
// on a forced-open breaker must sleep (never spin) and honour its max_wait.
#[test]
fn a_waiter_on_a_forced_open_breaker_sleeps_and_honours_its_max_wait() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(1)
        .break_duration(ms(100))
        .runtime(clock.clone())
        .build()
        .unwrap();
    breaker.force_open();
    let mut bounded = BreakerLayer::new(breaker.clone())
        .wait_in_ready(ms(500))
        .layer(Answer::default());
    let start = clock.now();
    let out = settle(&clock, &poller, start + HOUR, |cx| bounded.poll_ready(cx));
    assert!(
        matches!(
            out,
            Some(Err(Error::Rejected(Rejected::CircuitOpen { .. })))
        ),
        "{out:?}"
    );
    assert!(clock.now() - start <= ms(500), "{:?}", clock.now() - start);

    let mut unbounded = BreakerLayer::new(breaker.clone())
        .wait_in_ready(None)
        .layer(Answer::default());
    // Ten minutes of a forced-open breaker: still waiting, never spinning (settle checks).
    let start = clock.now();
    let out = settle(&clock, &poller, start + ms(600_000), |cx| {
        unbounded.poll_ready(cx)
    });
    assert!(out.is_none(), "{out:?}");
    assert!(clock.pending_timers() >= 1, "the waiter sleeps on a timer");
    // Reset: the breaker admits again, and the waiter gets through.
    breaker.reset();
    let reset_at = clock.now();
    let out = settle(&clock, &poller, reset_at + HOUR, |cx| {
        unbounded.poll_ready(cx)
    });
    assert_eq!(out, Some(Ok(())), "admitted after the reset");
    drop(unbounded);
    assert_eq!(clock.pending_timers(), 0);
}

// === boundaries ===========================================================================

// Docs (`max_wait`): "refuses ... at once when the wait is known to end later (a rate
// limiter's)": a wait that ends exactly at max_wait is not later.
async fn max_wait_boundary_on_a_limiter<R: Runtime>(rt: Clocked<R>) {
    let one_ns = Duration::from_nanos(1);
    for mode in [AdmitMode::WaitReady, AdmitMode::WaitCall] {
        let limiter = RateLimiter::builder(10, Duration::from_secs(1))
            .burst(1)
            .jitter(Duration::ZERO)
            .runtime(rt.clone())
            .build()
            .unwrap();
        let mut exact = AdmitLayer::new(limiter.clone(), mode)
            .runtime(rt.clone())
            .max_wait(ms(100))
            .layer(Work::new(&rt));
        let mut short = AdmitLayer::new(limiter, mode)
            .runtime(rt.clone())
            .max_wait(ms(100) - one_ns)
            .layer(Work::new(&rt));
        let start = rt.now();
        assert_eq!(ready_and_call(&mut exact, 0).await, Ok(0), "{mode:?}");
        assert_eq!(
            ready_and_call(&mut short, 0).await,
            Err(Error::Rejected(Rejected::DeadlineExceeded)),
            "{mode:?}: 1 ns short"
        );
        assert_eq!(rt.now(), start, "{mode:?}");
        assert_eq!(
            ready_and_call(&mut exact, 0).await,
            Ok(0),
            "{mode:?}: a wait ending exactly at max_wait does not end later"
        );
        assert_eq!(rt.now() - start, ms(100), "{mode:?}");
    }
}

#[test]
fn a_limiter_wait_that_ends_exactly_at_max_wait_is_admitted_and_one_nanosecond_more_is_not_on_every_runtime()
 {
    on_every_runtime!(max_wait_boundary_on_a_limiter);
}

// Docs (`wait_in_ready`): "A wait longer than max_wait ... fails ..., at once when the
// breaker's hint already ends past it": a hint ending exactly at max_wait does not.
#[test]
fn a_breaker_hint_ending_exactly_at_max_wait_is_waited_out_and_one_nanosecond_more_is_not() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let breaker = tripped_breaker(&clock, "hostile-admit-boundary");
    let mut short = BreakerLayer::new(breaker.clone())
        .wait_in_ready(ms(100) - Duration::from_nanos(1))
        .layer(Answer::default());
    assert!(
        matches!(
            poller.ready(&mut short),
            Poll::Ready(Err(Error::Rejected(Rejected::CircuitOpen { .. })))
        ),
        "1 ns short of the break"
    );
    let mut exact = BreakerLayer::new(breaker.clone())
        .wait_in_ready(ms(100))
        .layer(Answer::default());
    let start = clock.now();
    let out = settle(&clock, &poller, start + HOUR, |cx| exact.poll_ready(cx));
    assert_eq!(out, Some(Ok(())));
    assert_eq!(clock.now() - start, ms(100));
}

// === FIFO, inner readiness, errors behind BoxError, Debug ==================================

// Docs (bulkhead): "Fairness: FIFO among waiters." Services waiting in poll_ready and calls
// waiting in their response futures share one queue.
#[test]
fn services_and_calls_waiting_on_one_bulkhead_are_admitted_first_in_first_out() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let bulkhead = bulkhead(&clock, 1, None);
    let work = Work::new(&clock);
    let ready_layer =
        AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitReady).runtime(clock.clone());
    let mut call_svc = AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitCall)
        .runtime(clock.clone())
        .layer(work.clone());
    let held = bulkhead.try_acquire_owned().unwrap();
    let mut a = ready_layer.layer(work.clone());
    assert!(poller.ready(&mut a).is_pending());
    let mut b = Box::pin(call_svc.call(0));
    assert!(poller.poll(b.as_mut()).is_pending());
    let mut c = ready_layer.layer(work.clone());
    assert!(poller.ready(&mut c).is_pending());
    assert_eq!(bulkhead.queued(), 3);
    drop(held);
    // Polled in the wrong order on purpose: only the first in line gets the slot.
    assert!(poller.ready(&mut c).is_pending(), "c is third");
    assert!(poller.poll(b.as_mut()).is_pending(), "b is second");
    assert_eq!(poller.ready(&mut a), Poll::Ready(Ok(())), "a is first");
    drop(a); // ready, never called: the slot moves on
    assert!(poller.ready(&mut c).is_pending(), "c is still behind b");
    assert_eq!(poller.poll(b.as_mut()), Poll::Ready(Ok(0)), "b is next");
    drop(b);
    assert_eq!(poller.ready(&mut c), Poll::Ready(Ok(())), "then c");
    drop(c);
    assert_conserved(&bulkhead);
}

/// A service whose `poll_ready` fails: its readiness error must reach the caller, and
/// whatever an outer layer admitted for it must come back.
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
            .layer(Broken);
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
        .layer(Broken);
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

// Docs (tower): "Behind BoxError ..., find the cause with cause: cause::<Rejected>(&*err),
// cause::<Elapsed>(&*err)." Through three layers of `Error`.
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
    let err: BoxError = Box::new(out.unwrap().unwrap_err());
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

// === the limiter and the breaker under random cancellation ================================

// Docs (`RateLimiter`): "count per period, bursts of burst"; (tower): "the rate limiter (GCRA,
// shared by clones, no window-edge double bursts)". Calls reach the service at once when
// admitted (Reject, WaitCall), so over any span no more than `burst + span / interval` of them
// may start, whatever is cancelled.
async fn limiter_storm<R: Runtime>(rt: Clocked<R>, mode: AdmitMode) {
    let limiter = RateLimiter::builder(1_000, Duration::from_secs(1))
        .burst(4)
        .seed(0x11A1)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let work = Work::new(&rt);
    let svc = AdmitLayer::new(limiter, mode)
        .runtime(rt.clone())
        .max_wait(ms(30))
        .layer(work.clone());
    let mut rng = Rng(0x6C_4A ^ mode_seed(mode));
    storm(&rt, &svc, &mut rng, 200).await;
    let starts = work.starts();
    assert!(starts.len() > 20, "{mode:?}: {} calls", starts.len());
    let interval = ms(1);
    for (i, first) in starts.iter().enumerate() {
        for (j, last) in starts.iter().enumerate().skip(i) {
            let span = *last - *first;
            let allowed = 4 + span.as_nanos() / interval.as_nanos();
            let started = u128::try_from(j - i + 1).unwrap();
            assert!(
                started <= allowed,
                "{mode:?}: {started} calls started within {span:?}, at most {allowed} allowed"
            );
        }
    }
}

#[test]
fn a_rate_limited_admit_layer_never_exceeds_its_rate_under_random_cancellation_on_every_runtime() {
    for mode in [AdmitMode::Reject, AdmitMode::WaitCall] {
        on_every_runtime!(|rt| limiter_storm(rt, mode));
    }
}

// Docs (breaker): "a permit dropped, cancelled or unwound by a panic records nothing and a
// probe gives its slot back"; "Exact probes"; (`wait_in_ready`): "a caller that stops polling
// holds nothing but, once admitted, the permit ... given back when the service is dropped or
// called". After callers waiting in poll_ready are cancelled at random, no probe slot leaks.
async fn breaker_wait_storm<R: Runtime>(rt: Clocked<R>) {
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(2)
        .break_duration(ms(10))
        .half_open_probes(2)
        .max_half_open_wait(None)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let work = Work::new(&rt);
    let svc = BreakerLayer::new(breaker.clone())
        .wait_in_ready(ms(35))
        .layer(work.clone());
    let mut rng = Rng(0xB4EA_C3E5);
    storm(&rt, &svc, &mut rng, 200).await;
    drop(svc);
    assert!(work.calls() > 10, "{} calls", work.calls());
    // Trip it by hand, wait out the break: exactly two probes must be free.
    breaker.reset();
    breaker.try_acquire().unwrap().failure();
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Open);
    rt.sleep(ms(10)).await;
    let probes: Vec<_> = (0..2)
        .map(|i| {
            breaker
                .try_acquire()
                .unwrap_or_else(|e| panic!("probe {i}: {e}"))
        })
        .collect();
    assert!(breaker.try_acquire().is_err(), "a third probe");
    for p in probes {
        p.success();
    }
    assert_eq!(breaker.state(), State::Closed);
}

#[test]
fn callers_waiting_on_a_breaker_cancelled_at_random_leak_no_probe_on_every_runtime() {
    on_every_runtime!(breaker_wait_storm);
}

// Docs (breaker): "max_half_open_wait reopens a breaker whose probes hang (measured from the
// first probe in flight), so it can never stay stuck half-open". A probe taken in poll_ready
// by a service that never calls is such a hanging probe: the callers waiting behind it must
// get through.
#[test]
fn a_probe_held_from_poll_ready_by_an_idle_service_cannot_keep_other_waiters_out_forever() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(1)
        .break_duration(ms(100))
        .half_open_probes(1)
        .max_half_open_wait(Some(Duration::from_secs(1)))
        .runtime(clock.clone())
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().failure();
    clock.advance(ms(100));
    let layer = BreakerLayer::new(breaker.clone()).wait_in_ready(None);
    let mut idle = layer.layer(Answer::default());
    assert_eq!(poller.ready(&mut idle), Poll::Ready(Ok(())), "the probe");
    let mut waiter = layer.layer(Answer::default());
    let start = clock.now();
    let out = settle(&clock, &poller, start + HOUR, |cx| waiter.poll_ready(cx));
    assert_eq!(out, Some(Ok(())), "the waiter got through");
    assert!(
        clock.now() - start <= Duration::from_secs(10),
        "after {:?}",
        clock.now() - start
    );
    assert_eq!(poller.poll(pin!(waiter.call(Ok(1)))), Poll::Ready(Ok(1)));
    assert_eq!(breaker.state(), State::Closed);
    // The idle service's stale probe, called at last, moves nothing.
    assert!(poller.poll(pin!(idle.call(Err("late")))).is_ready());
    assert_eq!(
        breaker.state(),
        State::Closed,
        "a stale outcome moved the breaker"
    );
}

// Docs (`AdmitMode::Reject`): the response future fails at once with the stage's rejection
// (the decision is the call's); (`WaitCall`): "poll_ready is the inner service's". Only
// WaitReady takes a guard in poll_ready: a shedding or call-waiting service that is merely
// ready holds no slot.
async fn readiness_takes_nothing_outside_wait_ready<R: Runtime>(rt: Clocked<R>) {
    for mode in [AdmitMode::Reject, AdmitMode::WaitCall] {
        let bulkhead = bulkhead(&rt, 1, None);
        let work = Work::new(&rt);
        let layer = AdmitLayer::new(bulkhead.clone(), mode).runtime(rt.clone());
        let mut idle = layer.layer(work.clone());
        poll_fn(|cx| idle.poll_ready(cx)).await.unwrap();
        assert_eq!(
            bulkhead.available(),
            1,
            "{mode:?}: a ready service holds no slot"
        );
        let mut busy = layer.layer(work.clone());
        assert_eq!(ready_and_call(&mut busy, 2).await, Ok(2), "{mode:?}");
        assert_eq!(ready_and_call(&mut idle, 2).await, Ok(2), "{mode:?}");
        drop((idle, busy));
        assert_conserved(&bulkhead);
    }
}

#[test]
fn only_wait_ready_takes_a_guard_in_poll_ready_on_every_runtime() {
    on_every_runtime!(readiness_takes_nothing_outside_wait_ready);
}

// Docs (`max_wait`): "Bounds each wait"; (`wait_in_ready`): "A wait longer than max_wait".
// Each new wait gets the whole bound again, however much of it the previous one used.
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
        let start = rt.now();
        assert_eq!(
            poll_fn(|cx| svc.poll_ready(cx)).await,
            Err(Error::Rejected(Rejected::DeadlineExceeded))
        );
        assert_eq!(rt.now() - start, ms(50), "round {round}");
        let start = rt.now();
        assert_eq!(
            poll_fn(|cx| svc.poll_ready(cx)).await,
            Err(Error::Rejected(Rejected::DeadlineExceeded))
        );
        assert_eq!(rt.now() - start, ms(50), "round {round}: a fresh wait");
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
