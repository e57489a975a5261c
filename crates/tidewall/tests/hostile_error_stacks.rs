//! Hostile black-box tests of "one error type per tower stack", written from the rustdoc of
//! `tidewall::tower` (`PolicyError`, `cause`, each layer) alone: stacks of every layer in many
//! orders and with a layer twice, typed (`Error<E>`), boxed (`BoxError`) and with a user's own
//! enum; the breaker's hint honoured by the retry layer; what the breaker's classifier is
//! shown; readiness errors; seeded storms of callers giving up, then months of idle time,
//! after which no bulkhead slot or breaker probe may be missing.

mod admit_support;
mod common;
mod support;

use std::fmt::Debug;
use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use admit_support::{Boom, Work, bulkhead, ready_and_call, storm};
use common::{ms, on_tokio_current_thread, on_tokio_multi_thread};
use support::{DAY, HOUR, Rng, assert_conserved, poll_limit};
use tidewall::breaker::{CircuitBreaker, State};
use tidewall::bulkhead::Bulkhead;
use tidewall::classify::Classify;
use tidewall::classify::Verdict;
use tidewall::hedge::Hedge;
use tidewall::rate::RateLimiter;
use tidewall::rt::Clock;
use tidewall::testing::Clocked;
use tidewall::time::Elapsed;
use tidewall::tower::{
    AdmitLayer, AdmitMode, BreakerLayer, HedgeLayer, PolicyError, RetryLayer, TimeoutLayer, cause,
};
use tidewall::{Backoff, Error, Jitter, Rejected, RetryAfter};
use tower::util::MapErr;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_layer::Layer;
use tower_service::Service;

type Rt = Clocked<tidewall::rt::Tokio>;
type Typed = Error<Boom>;

// `Error<E>` carries a hint only when `E: RetryAfter`; the service's own error has none.
impl RetryAfter for Boom {
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

/// A user's own error: a variant for each thing a policy can say.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ApiError {
    Refused(Rejected),
    Late,
    Down(u64),
}

impl PolicyError for ApiError {
    fn rejected(rejected: Rejected) -> Self {
        ApiError::Refused(rejected)
    }
    fn timed_out() -> Self {
        ApiError::Late
    }
}

impl RetryAfter for ApiError {
    fn retry_after(&self) -> Option<Duration> {
        Says::refusal(self)?.retry_after()
    }
}

/// How each of the three kinds of stack error says what happened, read back the documented
/// way (`Error`'s variants, `cause` behind a `BoxError`, the user's variants).
trait Says: PolicyError + Send + Debug + 'static {
    fn wrap(b: Boom) -> Self;
    fn refusal(&self) -> Option<Rejected>;
    fn is_timeout(&self) -> bool;
    fn own(&self) -> Option<u64>;
}

impl Says for Typed {
    fn wrap(b: Boom) -> Self {
        Error::Inner(b)
    }
    fn refusal(&self) -> Option<Rejected> {
        Error::rejection(self)
    }
    fn is_timeout(&self) -> bool {
        matches!(self, Error::TimedOut)
    }
    fn own(&self) -> Option<u64> {
        self.inner().map(|b| b.0)
    }
}

impl Says for BoxError {
    fn wrap(b: Boom) -> Self {
        b.into()
    }
    fn refusal(&self) -> Option<Rejected> {
        cause::<Rejected>(&**self).copied()
    }
    fn is_timeout(&self) -> bool {
        cause::<Elapsed>(&**self).is_some()
    }
    fn own(&self) -> Option<u64> {
        cause::<Boom>(&**self).map(|b| b.0)
    }
}

impl Says for ApiError {
    fn wrap(b: Boom) -> Self {
        ApiError::Down(b.0)
    }
    fn refusal(&self) -> Option<Rejected> {
        match self {
            ApiError::Refused(r) => Some(*r),
            _ => None,
        }
    }
    fn is_timeout(&self) -> bool {
        *self == ApiError::Late
    }
    fn own(&self) -> Option<u64> {
        match self {
            ApiError::Down(d) => Some(*d),
            _ => None,
        }
    }
}

/// Exactly one of the three things, and which.
fn what<E: Says>(e: &E) -> String {
    match (e.refusal(), e.is_timeout(), e.own()) {
        (Some(r), false, None) => format!("rejected {r:?}"),
        (None, true, None) => "timed out".into(),
        (None, false, Some(d)) => format!("own {d}"),
        _ => panic!("not exactly one thing: {e:?}"),
    }
}

fn constant(attempts: u32, delay: Duration) -> Backoff {
    Backoff::constant(delay)
        .jitter(Jitter::None)
        .max_attempts(attempts)
        .build()
        .unwrap()
}

fn breaker(rt: &Rt, failures: u32, break_for: Duration) -> CircuitBreaker<Rt> {
    CircuitBreaker::builder()
        .consecutive_failures(failures)
        .break_duration(break_for)
        .half_open_probes(1)
        .max_half_open_wait(None)
        .runtime(rt.clone())
        .build()
        .unwrap()
}

fn since(rt: &Rt, start: Instant) -> Duration {
    rt.now() - start
}

const INNER: fn(Boom) -> Typed = Error::Inner;

/// `Work` with its plain error, `Boom` (the shared `Work` already answers `Error<Boom>`): each
/// stack here gives the service its type itself, with its own `map_err`.
type PlainWork = MapErr<Work<Rt>, fn(Typed) -> Boom>;

fn plain(work: Work<Rt>) -> PlainWork {
    work.map_err(|e: Typed| e.into_inner().expect("Work fails only with its own error"))
}

fn timeout(rt: &Rt, d: Duration) -> TimeoutLayer<Rt> {
    TimeoutLayer::new(d).runtime(rt.clone())
}

fn retry(rt: &Rt, attempts: u32, delay: Duration) -> RetryLayer<Rt> {
    RetryLayer::new(constant(attempts, delay)).runtime(rt.clone())
}

fn admit(rt: &Rt, bulk: &Bulkhead<Rt>, mode: AdmitMode) -> AdmitLayer<Bulkhead<Rt>, Rt> {
    AdmitLayer::new(bulk.clone(), mode).runtime(rt.clone())
}

fn hedge(rt: &Rt, delay: Duration, max_hedges: u32) -> HedgeLayer<Rt> {
    let policy = Hedge::builder().delay(delay).max_hedges(max_hedges);
    HedgeLayer::new(policy.runtime(rt.clone()).build().unwrap())
}

/// Fails (at once, with `Boom(1)`) its first `fails` calls, then answers 5; `poll_ready` is
/// ready `ready_first` times, then fails with `Boom(99)`. Records when each call arrived.
#[derive(Clone)]
struct Flaky {
    rt: Rt,
    fails: usize,
    ready_first: usize,
    origin: Instant,
    starts: Arc<Mutex<Vec<Duration>>>,
    polls: Arc<AtomicUsize>,
}

impl Flaky {
    fn new(rt: &Rt, fails: usize) -> Self {
        let (origin, starts, polls) = (rt.now(), Arc::default(), Arc::default());
        let (rt, ready_first) = (rt.clone(), usize::MAX);
        Self {
            rt,
            fails,
            ready_first,
            origin,
            starts,
            polls,
        }
    }
    /// Ready `ready_first` times; every call fails.
    fn unready(rt: &Rt, ready_first: usize) -> Self {
        Self {
            ready_first,
            ..Self::new(rt, usize::MAX)
        }
    }
    fn starts(&self) -> Vec<Duration> {
        self.starts.lock().unwrap().clone()
    }
    fn polls(&self) -> usize {
        self.polls.load(SeqCst)
    }
    /// This service with its errors in the stack's type `E`.
    fn as_<E: Says>(&self) -> MapErr<Self, fn(Boom) -> E> {
        ServiceExt::map_err(self.clone(), E::wrap as fn(Boom) -> E)
    }
}

impl Service<u64> for Flaky {
    type Response = u64;
    type Error = Boom;
    type Future = std::future::Ready<Result<u64, Boom>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Boom>> {
        let ready = self.polls.fetch_add(1, SeqCst) < self.ready_first;
        Poll::Ready(if ready { Ok(()) } else { Err(Boom(99)) })
    }
    fn call(&mut self, _: u64) -> Self::Future {
        let mut starts = self.starts.lock().unwrap();
        starts.push(self.rt.now() - self.origin);
        std::future::ready(if starts.len() <= self.fails {
            Err(Boom(1))
        } else {
            Ok(5)
        })
    }
}

/// What every stack must show, whatever the order of its layers: the service's own error, a
/// timeout, a full bulkhead and an open breaker, each exactly as the one thing it is.
async fn one_level<E: Says, S: Service<u64, Response = u64, Error = E>>(
    rt: &Rt,
    svc: &mut S,
    (work, bulk, breaker): (&Work<Rt>, &Bulkhead<Rt>, &CircuitBreaker<Rt>),
    order: &str,
) {
    assert_eq!(ready_and_call(svc, 4).await.ok(), Some(4), "{order}");
    let own = ready_and_call(svc, 7).await.unwrap_err();
    assert_eq!(what(&own), "own 7", "{order}");
    let late = ready_and_call(svc, 5_000).await.unwrap_err();
    assert_eq!(what(&late), "timed out", "{order}");
    let held = bulk.try_acquire().unwrap();
    let full = ready_and_call(svc, 4).await.unwrap_err();
    assert_eq!(what(&full), "rejected BulkheadFull", "{order}");
    drop(held);
    breaker.force_open();
    let open = ready_and_call(svc, 4).await.unwrap_err();
    assert!(what(&open).starts_with("rejected CircuitOpen"), "{order}");
    breaker.reset();
    rt.sleep(ms(1)).await;
    assert_eq!(work.gauge.now(), 0, "{order}");
    assert_conserved(bulk);
}

/// Builds the stack `$layers` (outermost first) over `.map_err(E::wrap)` and `Work`, with
/// fresh policies, and runs [`one_level`] on it.
macro_rules! check_order {
    ($rt:expr, $e:ty, $name:expr, |$t:ident, $r:ident, $b:ident, $a:ident, $h:ident| $($layer:expr),+) => {{
        let rt: &Rt = $rt;
        let (bulk, breaker, work) = (bulkhead(rt, 1, Some(ms(20))), breaker(rt, 9_999, ms(9)), Work::new(rt));
        let $t = timeout(&rt, ms(1_000));
        let $r = retry(&rt, 2, ms(3))
            .when(|e: &$e| e.own().is_some_and(|d| d > 7));
        let $b = BreakerLayer::new(breaker.clone());
        let $a = admit(&rt, &bulk, AdmitMode::Reject);
        let $h = hedge(rt, ms(400), 1);
        let mut svc = ServiceBuilder::new()
            $(.layer($layer))+
            .map_err(<$e as Says>::wrap as fn(Boom) -> $e)
            .service(plain(work.clone()));
        one_level::<$e, _>(rt, &mut svc, (&work, &bulk, &breaker), $name).await;
    }};
}

#[test]
fn a_refusal_timeout_or_own_error_arrives_at_one_level_in_every_order_of_five_layers() {
    on_tokio_current_thread(|rt: Rt| async move {
        check_order!(&rt, Typed, "T R B A H", |t, r, b, a, h| t, r, b, a, h);
        check_order!(&rt, Typed, "H A B R T", |t, r, b, a, h| h, a, b, r, t);
        check_order!(&rt, Typed, "R H T B A", |t, r, b, a, h| r, h, t, b, a);
        check_order!(&rt, Typed, "A H R B T", |t, r, b, a, h| a, h, r, b, t);
        check_order!(&rt, Typed, "B R A T H", |t, r, b, a, h| b, r, a, t, h);
        check_order!(&rt, Typed, "H T R A B", |t, r, b, a, h| h, t, r, a, b);
        check_order!(&rt, Typed, "T B A", |t, _r, b, a, _h| t, b, a);
        check_order!(&rt, Typed, "T A B", |t, _r, b, a, _h| t, a, b);
        check_order!(&rt, Typed, "B T A", |t, _r, b, a, _h| b, t, a);
        check_order!(&rt, Typed, "B A T", |t, _r, b, a, _h| b, a, t);
        check_order!(&rt, Typed, "A T B", |t, _r, b, a, _h| a, t, b);
        check_order!(&rt, Typed, "A B T", |t, _r, b, a, _h| a, b, t);
        check_order!(&rt, BoxError, "T R B A H", |t, r, b, a, h| t, r, b, a, h);
        check_order!(&rt, BoxError, "H A B R T", |t, r, b, a, h| h, a, b, r, t);
        check_order!(&rt, BoxError, "A H R B T", |t, r, b, a, h| a, h, r, b, t);
        check_order!(&rt, ApiError, "T R B A H", |t, r, b, a, h| t, r, b, a, h);
        check_order!(&rt, ApiError, "H A B R T", |t, r, b, a, h| h, a, b, r, t);
        check_order!(&rt, ApiError, "B R A T H", |t, r, b, a, h| b, r, a, t, h);
    });
}

#[test]
fn the_same_layer_twice_keeps_one_level_and_the_tighter_bound_decides() {
    on_tokio_current_thread(|rt: Rt| async move {
        let (outer, inner) = (bulkhead(&rt, 4, None), bulkhead(&rt, 1, None));
        let (b1, b2) = (breaker(&rt, 9_999, ms(9)), breaker(&rt, 9_999, ms(9)));
        let work = Work::new(&rt);
        let mut svc = ServiceBuilder::new()
            .layer(timeout(&rt, ms(300)))
            .layer(BreakerLayer::new(b1.clone()))
            .layer(admit(&rt, &outer, AdmitMode::Reject))
            .layer(hedge(&rt, ms(500), 1))
            .layer(timeout(&rt, ms(100)))
            .layer(BreakerLayer::new(b2.clone()))
            .layer(admit(&rt, &inner, AdmitMode::Reject))
            .layer(hedge(&rt, ms(30), 1))
            .map_err(INNER)
            .service(plain(work.clone()));
        let start = rt.now();
        let late: Result<u64, Typed> = ready_and_call(&mut svc, 250).await;
        assert_eq!(late, Err(Error::TimedOut));
        // The inner timeout ends both inner attempts at 100 ms; the outer hedge then starts
        // at once and its own inner timeout ends it at 200 ms, before the outer 300 ms.
        assert_eq!(since(&rt, start), ms(200));
        // An answer at the timeout's last instant is kept.
        assert_eq!(ready_and_call(&mut svc, 100).await, Ok(100));
        let held = inner.try_acquire().unwrap();
        let full = ready_and_call(&mut svc, 2).await;
        assert_eq!(full, Err(Error::Rejected(Rejected::BulkheadFull)));
        drop(held);
        assert_eq!(ready_and_call(&mut svc, 2).await, Ok(2));
        drop(svc);
        assert_conserved(&outer);
        assert_conserved(&inner);
    });
}

/// Every place a layer refuses or times out (readiness, response future, at once or after a
/// bounded wait) makes it in the stack's own type `E`. A refusal or timeout while waiting in
/// `poll_ready` is never a `poll_ready` error (docs: "poll_ready reports ready and the next
/// call fails at once with the refusal"): it comes from the next call, the inner service not
/// called.
async fn refusals_everywhere<E: Says>(rt: &Rt) {
    let flaky = Flaky::new(rt, 0);
    let inner = flaky.as_::<E>();
    let bulk = bulkhead(rt, 1, None);
    let held = bulk.try_acquire().unwrap();
    let bounded = |mode| admit(rt, &bulk, mode).max_wait(ms(20));
    let mut ready = bounded(AdmitMode::WaitReady).layer(inner.clone());
    let start = rt.now();
    poll_fn(|cx| ready.poll_ready(cx)).await.unwrap();
    assert_eq!(since(rt, start), ms(20));
    let e = ready.call(0).await.unwrap_err();
    assert_eq!(what(&e), "rejected DeadlineExceeded");
    assert_eq!(since(rt, start), ms(20), "the call fails at once");
    let mut in_call = bounded(AdmitMode::WaitCall).layer(inner.clone());
    let e = ready_and_call(&mut in_call, 0).await.unwrap_err();
    assert_eq!(what(&e), "rejected DeadlineExceeded");
    assert_eq!(since(rt, start), ms(40));
    let timed = timeout(rt, ms(50));
    let waits = admit(rt, &bulk, AdmitMode::WaitReady);
    let mut timed = timed.layer(waits.layer(inner.clone()));
    poll_fn(|cx| timed.poll_ready(cx)).await.unwrap();
    assert_eq!(since(rt, start), ms(90));
    let e = timed.call(0).await.unwrap_err();
    assert_eq!((what(&e), since(rt, start)), ("timed out".into(), ms(90)));
    assert_eq!(flaky.starts(), [], "the inner service was not called");
    drop((held, ready, in_call, timed));
    assert_conserved(&bulk);

    let limiter = RateLimiter::builder(1, Duration::from_secs(1))
        .burst(1)
        .runtime(rt.clone());
    let limited = AdmitLayer::new(limiter.build().unwrap(), AdmitMode::WaitReady);
    let mut limited = limited
        .runtime(rt.clone())
        .max_wait(ms(100))
        .layer(inner.clone());
    assert!(ready_and_call(&mut limited, 0).await.is_ok());
    let start = rt.now();
    poll_fn(|cx| limited.poll_ready(cx)).await.unwrap();
    let e = limited.call(0).await.unwrap_err();
    assert_eq!(what(&e), "rejected DeadlineExceeded");
    assert_eq!(since(rt, start), ms(0), "a known-longer wait: at once");

    let tripped = breaker(rt, 1, ms(300));
    tripped.try_acquire().unwrap().failure();
    let mut waiting = BreakerLayer::new(tripped)
        .wait_in_ready(ms(100))
        .layer(inner.clone());
    poll_fn(|cx| waiting.poll_ready(cx)).await.unwrap();
    let e = waiting.call(0).await.unwrap_err();
    assert!(what(&e).starts_with("rejected CircuitOpen"), "{e:?}");
    assert_eq!(since(rt, start), ms(0), "a hint past max_wait: at once");
    assert_eq!(flaky.starts().len(), 1, "only the one admitted call");
}

#[test]
fn a_refusal_or_timeout_in_readiness_or_in_the_call_is_made_in_the_stacks_own_type() {
    on_tokio_current_thread(|rt: Rt| async move {
        refusals_everywhere::<Typed>(&rt).await;
        refusals_everywhere::<BoxError>(&rt).await;
        refusals_everywhere::<ApiError>(&rt).await;
    });
}

/// Retry (1 ms constant backoff) over a breaker tripped by one failure with a 200 ms break,
/// over a service that fails once, then answers; `deep` puts a timeout, an admission and a
/// hedge between them. With the deadline past the break the retry waits it out; before it,
/// the call returns at once.
async fn retry_over_breaker<E: Says, C>(
    rt: &Rt,
    retry: RetryLayer<Rt, C>,
    deadline: Duration,
    deep: bool,
) where
    C: Classify<u64, E> + Clone,
{
    let tripping = breaker(rt, 1, ms(200));
    let flaky = Flaky::new(rt, 1);
    let retry = retry.deadline(deadline);
    let bulk = bulkhead(rt, 1, None);
    let (out, shed_after) = if deep {
        let mut svc = ServiceBuilder::new()
            .layer(retry)
            .layer(timeout(rt, ms(900)))
            .layer(admit(rt, &bulk, AdmitMode::WaitCall))
            .layer(hedge(rt, ms(50), 1))
            .layer(BreakerLayer::new(tripping.clone()))
            .service(flaky.as_::<E>());
        // The hedge started when the primary failed is shed at once: the first attempt
        // already ends with the breaker's hint.
        (ready_and_call(&mut svc, 0).await, ms(0))
    } else {
        let mut svc = retry.layer(BreakerLayer::new(tripping.clone()).layer(flaky.as_::<E>()));
        (ready_and_call(&mut svc, 0).await, ms(1))
    };
    if deadline > ms(200) {
        assert_eq!(out.map_err(|e| what(&e)), Ok(5));
        assert_eq!(flaky.starts(), [ms(0), ms(200)], "when the break ended");
        assert_eq!(tripping.state(), State::Closed);
    } else {
        assert!(what(&out.unwrap_err()).starts_with("rejected CircuitOpen"));
        assert_eq!(flaky.starts(), [ms(0)]);
        assert_eq!(
            since(rt, flaky.origin),
            shed_after,
            "at once past the deadline"
        );
    }
    assert_conserved(&bulk);
}

#[test]
fn a_retry_honouring_hints_over_a_breaker_waits_out_the_break_or_returns_at_its_deadline() {
    on_tokio_current_thread(|rt: Rt| async move {
        let base = || retry(&rt, 10, ms(1));
        for (deep, deadline) in [false, true]
            .into_iter()
            .flat_map(|d| [(d, ms(1_000)), (d, ms(150))])
        {
            retry_over_breaker::<Typed, _>(&rt, base().honor_retry_after(), deadline, deep).await;
            retry_over_breaker::<ApiError, _>(&rt, base().honor_retry_after(), deadline, deep)
                .await;
            // Docs (RetryLayer::honor_retry_after): hints are read from "tower's `BoxError`
            // (the hint of a Rejected in its chain)".
            let boxed = base().honor_retry_after();
            retry_over_breaker::<BoxError, _>(&rt, boxed, deadline, deep).await;
        }
    });
}

// Docs (RetryLayer): "a call shed with Rejected::CircuitOpen is then retried no sooner than
// the breaker's retry_after, and returns at once when that is past the deadline";
// (max_retry_after): "a retry whose whole hint ends past the deadline is not made (the call
// ends at once)". A 120 s break, past the 90 s deadline, beyond the 60 s hint cap.
#[test]
fn a_break_longer_than_the_hint_cap_and_past_the_deadline_returns_at_once() {
    on_tokio_current_thread(|rt: Rt| async move {
        let flaky = Flaky::new(&rt, 1);
        let retry = retry(&rt, 10, ms(1)).honor_retry_after();
        let guarded = BreakerLayer::new(breaker(&rt, 1, Duration::from_secs(120)))
            .layer(flaky.as_::<Typed>());
        let mut svc = retry.deadline(Duration::from_secs(90)).layer(guarded);
        let out = ready_and_call(&mut svc, 0).await;
        assert!(what(&out.unwrap_err()).starts_with("rejected CircuitOpen"));
        assert_eq!(flaky.starts(), [ms(0)]);
        let took = since(&rt, flaky.origin);
        assert_eq!(took, ms(1), "120 s is past the 90 s deadline: at once");
    });
}

#[test]
fn the_breakers_classifier_is_shown_the_stacks_one_error_type() {
    on_tokio_current_thread(|rt: Rt| async move {
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = seen.clone();
        // Refusals and timeouts from below are the caller's business: not counted.
        let judge = move |r: Result<&u64, &Typed>| {
            log.lock().unwrap().push(format!("{r:?}"));
            match r {
                Ok(_) => Verdict::Success,
                Err(Error::Inner(_)) => Verdict::Failure,
                Err(_) => Verdict::Ignored,
            }
        };
        let (tripping, bulk) = (breaker(&rt, 1, ms(100)), bulkhead(&rt, 1, None));
        let mut svc = ServiceBuilder::new()
            .layer(BreakerLayer::new(tripping.clone()).classify(judge))
            .layer(timeout(&rt, ms(50)))
            .layer(admit(&rt, &bulk, AdmitMode::Reject))
            .map_err(INNER)
            .service(plain(Work::new(&rt)));
        assert_eq!(ready_and_call(&mut svc, 90).await, Err(Error::TimedOut));
        let held = bulk.try_acquire().unwrap();
        let full = ready_and_call(&mut svc, 2).await;
        assert_eq!(full, Err(Error::Rejected(Rejected::BulkheadFull)));
        drop(held);
        assert_eq!(
            tripping.state(),
            State::Closed,
            "ignored results trip nothing"
        );
        assert_eq!(ready_and_call(&mut svc, 2).await, Ok(2));
        assert_eq!(ready_and_call(&mut svc, 3).await, Err(INNER(Boom(3))));
        assert_eq!(tripping.state(), State::Open);
        // Docs (BreakerLayer): "A refusal from a layer below ... is recorded as `Ignored`
        // (nothing in the window) and is not shown to the classifier".
        let seen = seen.lock().unwrap().join(" ");
        let shown = "Err(TimedOut) Ok(2) Err(Inner(Boom(3)))";
        assert_eq!(seen, shown);
    });
}

#[test]
fn refusals_from_below_never_trip_a_breaker_with_the_default_classifier() {
    on_tokio_current_thread(|rt: Rt| async move {
        let (tripping, bulk) = (breaker(&rt, 1, ms(100)), bulkhead(&rt, 1, None));
        let limiter = RateLimiter::builder(1, Duration::from_secs(3600))
            .burst(1)
            .runtime(rt.clone())
            .build()
            .unwrap();
        let mut typed = ServiceBuilder::new()
            .layer(BreakerLayer::new(tripping.clone()))
            .layer(admit(&rt, &bulk, AdmitMode::Reject))
            .layer(AdmitLayer::new(limiter.clone(), AdmitMode::Reject).runtime(rt.clone()))
            .map_err(INNER)
            .service(plain(Work::new(&rt)));
        let held = bulk.try_acquire().unwrap();
        for _ in 0..5 {
            let full = ready_and_call(&mut typed, 2).await;
            assert_eq!(full, Err(Error::Rejected(Rejected::BulkheadFull)));
        }
        drop(held);
        assert_eq!(
            ready_and_call(&mut typed, 2).await,
            Ok(2),
            "the limiter's one cell"
        );
        for _ in 0..5 {
            let limited = ready_and_call(&mut typed, 2).await;
            assert!(matches!(
                limited,
                Err(Error::Rejected(Rejected::RateLimited { .. }))
            ));
        }
        assert_eq!(
            tripping.state(),
            State::Closed,
            "nine refusals from below, no failure"
        );

        // The same through BoxError: the refusal is found in the box.
        let (boxed_breaker, boxed_bulk) = (breaker(&rt, 1, ms(100)), bulkhead(&rt, 1, None));
        let mut boxed = ServiceBuilder::new()
            .layer(BreakerLayer::new(boxed_breaker.clone()))
            .layer(admit(&rt, &boxed_bulk, AdmitMode::Reject))
            .map_err(BoxError::from)
            .service(plain(Work::new(&rt)));
        let held = boxed_bulk.try_acquire().unwrap();
        assert!(ready_and_call(&mut boxed, 2).await.is_err());
        assert_eq!(boxed_breaker.state(), State::Closed);
        drop(held);
        // The service's own failure still counts, through either type.
        assert!(ready_and_call(&mut boxed, 3).await.is_err());
        assert_eq!(boxed_breaker.state(), State::Open);
    });
}

async fn readiness_error<S: Service<u64, Error = Typed>>(mut svc: S) -> Typed {
    poll_fn(|cx| svc.poll_ready(cx))
        .await
        .expect_err("ready over a broken service")
}

#[test]
fn a_readiness_error_passes_every_layer_and_stack_unchanged_and_unretried() {
    on_tokio_current_thread(|rt: Rt| async move {
        let (bulk, quiet) = (bulkhead(&rt, 2, None), breaker(&rt, 9_999, ms(9)));
        let broken = Flaky::unready(&rt, 0);
        let hedged = || hedge(&rt, ms(100), 1);
        let retrying = || retry(&rt, 5, ms(1));
        let expected: Typed = Error::Inner(Boom(99));
        for mode in [AdmitMode::Reject, AdmitMode::WaitReady, AdmitMode::WaitCall] {
            let svc = ServiceBuilder::new()
                .layer(timeout(&rt, ms(100)))
                .layer(retrying())
                .layer(BreakerLayer::new(quiet.clone()).wait_in_ready(ms(50)))
                .layer(admit(&rt, &bulk, mode))
                .layer(hedged())
                .service(broken.as_::<Typed>());
            let polls = broken.polls();
            assert_eq!(readiness_error(svc).await, expected, "{mode:?}");
            assert_eq!(broken.polls() - polls, 1, "{mode:?}: unretried");
            assert_conserved(&bulk);
        }
        assert_eq!(broken.starts().len(), 0, "nothing called a broken service");
        assert_eq!(quiet.counts().calls, 0, "a readiness error is not a call");

        // Ready for the first attempt, broken before the retry: returned at once.
        let once = Flaky::unready(&rt, 1);
        let guarded = BreakerLayer::new(quiet.clone()).layer(once.as_::<Typed>());
        let mut svc = retrying().layer(guarded);
        let start = rt.now();
        assert_eq!(ready_and_call(&mut svc, 0).await, Err(INNER(Boom(99))));
        assert_eq!((once.starts().len(), once.polls()), (1, 2));
        assert_eq!(since(&rt, start), ms(1), "one backoff sleep, then at once");

        // A half-open probe admitted in readiness is given back when the service is dropped.
        let tripped = breaker(&rt, 1, ms(100));
        tripped.try_acquire().unwrap().failure();
        rt.sleep(ms(100)).await;
        let waiting = BreakerLayer::new(tripped.clone()).wait_in_ready(None);
        let broken = waiting.layer(Flaky::unready(&rt, 0).as_::<Typed>());
        assert_eq!(readiness_error(broken).await, expected);
        assert_eq!(
            tripped.try_acquire().map(drop),
            Ok(()),
            "the probe came back"
        );
    });
}

#[test]
fn a_probe_waiting_for_admission_comes_back_whoever_gives_up() {
    on_tokio_current_thread(|rt: Rt| async move {
        for (timeout_outside, polled) in [(false, false), (false, true), (true, true)] {
            let tripped = breaker(&rt, 1, ms(100));
            tripped.try_acquire().unwrap().failure();
            rt.sleep(ms(100)).await;
            let bulk = bulkhead(&rt, 1, None);
            let held = bulk.try_acquire().unwrap();
            let guarded = ServiceBuilder::new()
                .layer(BreakerLayer::new(tripped.clone()))
                .layer(admit(&rt, &bulk, AdmitMode::WaitCall))
                .map_err(INNER)
                .service(plain(Work::new(&rt)));
            if timeout_outside {
                let mut svc = timeout(&rt, ms(50)).layer(guarded);
                assert_eq!(ready_and_call(&mut svc, 2).await, Err(Error::TimedOut));
            } else {
                let mut svc = guarded;
                poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
                if polled {
                    assert_eq!(poll_limit(svc.call(2), 0).await, None, "still waiting");
                } else {
                    drop(svc.call(2));
                }
            }
            assert_eq!(
                tripped.state(),
                State::HalfOpen,
                "a dropped probe records nothing"
            );
            assert_eq!(
                tripped.try_acquire().map(drop),
                Ok(()),
                "its slot came back"
            );
            assert_eq!(bulk.queued(), 0);
            drop(held);
            assert_conserved(&bulk);
        }
    });
}

/// The brief's full stack under a seeded storm of callers that give up, then idle gaps.
async fn storm_then_idle(rt: Rt, mode: AdmitMode, wait_in_ready: bool, seed: u64) {
    let (bulk, tripping) = (bulkhead(&rt, 2, Some(ms(30))), breaker(&rt, 1, ms(20)));
    let work = Work::new(&rt);
    let guard = BreakerLayer::new(tripping.clone());
    let guard = if wait_in_ready {
        guard.wait_in_ready(ms(40))
    } else {
        guard
    };
    let svc = ServiceBuilder::new()
        .layer(timeout(&rt, ms(60)))
        .layer(retry(&rt, 3, ms(2)).honor_retry_after().deadline(ms(50)))
        .layer(guard)
        .layer(admit(&rt, &bulk, mode).max_wait(ms(25)))
        .layer(hedge(&rt, ms(4), 2))
        .map_err(INNER)
        .service(plain(work.clone()));
    storm(&rt, &svc, &mut Rng::new(seed), 120).await;
    assert_eq!(work.gauge.now(), 0, "every call ended or was dropped");
    for gap in [ms(500), HOUR, 30 * DAY] {
        rt.sleep(gap).await;
        assert_conserved(&bulk);
        // Whatever state the storm left, the break is long over: a probe slot is free.
        let probe = tripping.try_acquire().map(drop);
        assert_eq!(probe, Ok(()), "after {gap:?}: {:?}", tripping.state());
        let fresh = ready_and_call(&mut svc.clone(), 2).await;
        assert_eq!(fresh, Ok(2), "after {gap:?}");
        assert_eq!(tripping.state(), State::Closed, "after {gap:?}");
    }
    drop(svc);
    assert_conserved(&bulk);
}

#[test]
fn callers_giving_up_at_seeded_points_leak_no_slot_or_probe_even_after_idle_months() {
    let modes = [AdmitMode::Reject, AdmitMode::WaitReady, AdmitMode::WaitCall];
    for (i, mode) in (0u64..).zip(modes) {
        for wait in [false, true] {
            let seed = 0xE77_0000 + i * 2 + u64::from(wait);
            on_tokio_current_thread(|rt: Rt| storm_then_idle(rt, mode, wait, seed));
            on_tokio_multi_thread(|rt: Rt| storm_then_idle(rt, mode, wait, seed ^ 0xFF));
        }
    }
}
