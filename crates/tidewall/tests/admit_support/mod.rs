//! The shared pieces of the `hostile_admission`, `hostile_admit_*`, `hostile_breaker_wait` and
//! `hostile_tower_stacks` tests: services to put under the layers, manual polling on a
//! `FakeClock`, rejection counters by policy name, callers and storms that give up at seeded
//! random points, a tripped breaker, and a whole stack spelled out in full.
//!
//! Every test file that includes it also declares `mod common;` and `mod support;`.
#![allow(dead_code, unreachable_pub)]

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use crate::common::ms;
use crate::support::{Gauge, Rng, Running, maybe_cancel, poll_limit};
use pin_project_lite::pin_project;
use tidewall::breaker::{CircuitBreaker, State};
use tidewall::bulkhead::Bulkhead;
use tidewall::classify::DefaultClassifier;
use tidewall::rt::{Clock, Runtime, Spawn, TaskHandle};
use tidewall::testing::{Clocked, FakeClock};
use tidewall::tower::{
    AdmitMode, AdmitService, BreakerService, TimeoutService, admit, breaker, timeout,
};
use tidewall::{Error, FutureExt as _};
use tower_service::Service;

// --- services under the layers ------------------------------------------------------------

/// The error of a failing call: odd durations fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boom(pub u64);

impl fmt::Display for Boom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "boom after {} ms", self.0)
    }
}

impl std::error::Error for Boom {}

/// The inner service: a call of `d` sleeps `d` ms on its clock while counted by `gauge`, then
/// succeeds (even `d`) or fails (odd `d`, `Error::Inner(Boom(d))`). Its error is already
/// Tidewall's `Error<Boom>`, so the layers above it add their refusals and timeouts to the same
/// type. Its future is a named type, so a whole stack's future can be spelled out.
#[derive(Clone)]
pub struct Work<R> {
    rt: R,
    pub gauge: Gauge,
    calls: Arc<AtomicUsize>,
    starts: Arc<std::sync::Mutex<Vec<Instant>>>,
}

impl<R: Clock> Work<R> {
    pub fn new(rt: &R) -> Self {
        Self {
            rt: rt.clone(),
            gauge: Gauge::default(),
            calls: Arc::default(),
            starts: Arc::default(),
        }
    }

    /// When each call reached the service, in order.
    pub fn starts(&self) -> Vec<Instant> {
        let mut starts = self.starts.lock().unwrap().clone();
        starts.sort_unstable();
        starts
    }

    pub fn calls(&self) -> usize {
        self.calls.load(SeqCst)
    }
}

pin_project! {
    /// One call of [`Work`].
    pub struct WorkFuture<R: Clock> {
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
    type Output = Result<u64, Error<Boom>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if this.sleep.poll(cx).is_pending() {
            return Poll::Pending;
        }
        this.running.take();
        let d = *this.d;
        Poll::Ready(if d % 2 == 1 {
            Err(Error::Inner(Boom(d)))
        } else {
            Ok(d)
        })
    }
}

impl<R: Clock> Service<u64> for Work<R> {
    type Response = u64;
    type Error = Error<Boom>;
    type Future = WorkFuture<R>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error<Boom>>> {
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

/// An instant service answering with the request itself (for the breaker tests): `Ok(n)` or
/// `Error::Inner(msg)`.
#[derive(Clone, Default)]
pub struct Answer {
    calls: Arc<AtomicUsize>,
}

impl Answer {
    pub fn calls(&self) -> usize {
        self.calls.load(SeqCst)
    }
}

pub type Reply = Result<u32, &'static str>;

impl Service<Reply> for Answer {
    type Response = u32;
    type Error = Error<&'static str>;
    type Future = std::future::Ready<Result<u32, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, reply: Reply) -> Self::Future {
        self.calls.fetch_add(1, SeqCst);
        std::future::ready(reply.map_err(Error::Inner))
    }
}

pub async fn ready_and_call<S: Service<Req>, Req>(
    svc: &mut S,
    req: Req,
) -> Result<S::Response, S::Error> {
    poll_fn(|cx| svc.poll_ready(cx)).await?;
    svc.call(req).await
}

pub fn bulkhead<R: Clock>(rt: &R, capacity: usize, max_wait: Option<Duration>) -> Bulkhead<R> {
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
pub struct Poller {
    wakes: Arc<Wakes>,
    waker: Waker,
}

impl Poller {
    pub fn new() -> Self {
        let wakes = Arc::new(Wakes::default());
        Self {
            waker: Waker::from(wakes.clone()),
            wakes,
        }
    }

    pub fn wakes(&self) -> usize {
        self.wakes.0.load(SeqCst)
    }

    pub fn ready<S: Service<Req>, Req>(&self, svc: &mut S) -> Poll<Result<(), S::Error>> {
        svc.poll_ready(&mut Context::from_waker(&self.waker))
    }

    pub fn poll<F: Future + ?Sized>(&self, fut: Pin<&mut F>) -> Poll<F::Output> {
        fut.poll(&mut Context::from_waker(&self.waker))
    }
}

/// Polls `step` while it wakes itself, else moves `clock` to its next timer, until `step` is
/// ready (`Some`) or nothing is left to happen before `until` (`None`). A step that keeps
/// waking itself without time moving is a busy loop: that fails the test.
pub fn settle<T>(
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
pub mod tally {
    use crate::common::tally::Counters;

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
pub async fn storm<R, S>(rt: &Clocked<R>, svc: &S, rng: &mut Rng, callers: usize)
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

/// A different seed for each mode's storm.
pub fn mode_seed(mode: AdmitMode) -> u64 {
    match mode {
        AdmitMode::Reject => 1,
        AdmitMode::WaitReady => 2,
        _ => 3,
    }
}

// --- a tripped breaker ---------------------------------------------------------------------

/// A breaker named `name` (the metrics tally filters by it), tripped by one failure: open for
/// 100 ms, then one half-open probe, with no bound on how long the probe may take.
pub fn tripped_breaker(clock: &FakeClock, name: &'static str) -> CircuitBreaker<FakeClock> {
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

// --- a whole stack spelled out -------------------------------------------------------------

/// A stack spelled out in full, with its response future named: no boxing, no `impl Trait`.
pub type AdmitStage<R> = AdmitService<Work<R>, Bulkhead<R>, R>;
pub type Guarded<R> = BreakerService<AdmitStage<R>, R>;
pub type Stack<R> = TimeoutService<Guarded<R>, R>;
pub type StackFuture<R> = timeout::ResponseFuture<
    breaker::ResponseFuture<admit::ResponseFuture<Work<R>, Bulkhead<R>, u64>, R, DefaultClassifier>,
    R,
>;
