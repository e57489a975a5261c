//! Hostile black-box tests of adaptive concurrency, written from the rustdoc alone: the pure
//! algorithms (`Aimd`, `Vegas`, `Gradient2`) at their documented numbers, their boundaries and
//! extreme configurations; the `AdaptiveLimiter` as users compose it (a pipeline's bulkhead with
//! retries, attempt timeouts, breakers, classifiers and caller deadlines; behind `AdmitLayer` in
//! every mode; its own permits and `Admission::finish`), with permits dropped at seeded random
//! points, limits that shrink under held slots and queued waiters, hours of idle virtual time,
//! and many tasks and threads on one limiter. Virtual time and seeded randomness throughout.
#![cfg(all(feature = "tokio", feature = "test-util", feature = "tower"))]

mod common;

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use common::ms;
use tidewall::adaptive::{AdaptiveLimiter, Aimd, Gradient2, LimitAlgorithm, Sample, Vegas};
use tidewall::admission::{Admission, Wait};
use tidewall::breaker::{CircuitBreaker, Outcome};
use tidewall::classify::Verdict;
use tidewall::pipeline::Pipeline;
use tidewall::rt::{Clock, Runtime, Spawn, Tokio};
use tidewall::telemetry::EventKind;
use tidewall::testing::{Clocked, FakeClock};
use tidewall::tower::{AdmitLayer, AdmitMode, BreakerLayer, TimeoutLayer};
use tidewall::{Backoff, ConfigError, Deadline, Error, FutureExt as _, Jitter, Rejected};
use tidewall_core::rng::SplitMix64;
use tower_layer::Layer;
use tower_service::Service;

// === shared pieces =========================================================================

const HOUR: Duration = Duration::from_secs(3_600);
const DAY: Duration = Duration::from_secs(86_400);
const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Seeded draws from the library's own generator: every run draws the same numbers.
struct Rng(SplitMix64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(SplitMix64::new(seed))
    }
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.0.below_or_equal(n - 1)
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        let n = u64::try_from(items.len()).unwrap();
        items[usize::try_from(self.below(n)).unwrap()]
    }
}

fn sample(rtt: Duration, inflight: u32) -> Sample {
    Sample {
        rtt,
        inflight,
        dropped: false,
        at: Duration::ZERO,
    }
}

fn dropped(rtt: Duration, inflight: u32) -> Sample {
    Sample {
        rtt,
        inflight,
        dropped: true,
        at: Duration::ZERO,
    }
}

/// AIMD within 1..=100: +1 per call that found half the limit in use, ×0.5 per drop, a drop
/// past 1 s.
fn aimd(initial: u32) -> Aimd {
    Aimd::builder()
        .min_limit(1)
        .initial_limit(initial)
        .max_limit(100)
        .backoff_ratio(0.5)
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap()
}

/// What a [`Recorder`] saw and what it will say next.
struct Script {
    samples: Vec<Sample>,
    limit: u32,
    plan: VecDeque<u32>,
}

/// A user's own algorithm: records every sample the limiter teaches it, and answers with the
/// limits it was scripted to give (the same limit when nothing is scripted).
#[derive(Clone)]
struct Recorder(Arc<Mutex<Script>>);

impl Recorder {
    fn new(limit: u32) -> Self {
        Self(Arc::new(Mutex::new(Script {
            samples: Vec::new(),
            limit,
            plan: VecDeque::new(),
        })))
    }
    /// The next update answers `limit`.
    fn then(&self, limit: u32) {
        self.0.lock().unwrap().plan.push_back(limit);
    }
    /// The samples, their end times left out (see `ends`).
    fn samples(&self) -> Vec<Sample> {
        let script = self.0.lock().unwrap();
        script
            .samples
            .iter()
            .map(|s| Sample {
                at: Duration::ZERO,
                ..*s
            })
            .collect()
    }
    /// When each sample's call ended, on the limiter's clock.
    fn ends(&self) -> Vec<Duration> {
        let script = self.0.lock().unwrap();
        script.samples.iter().map(|s| s.at).collect()
    }
}

impl LimitAlgorithm for Recorder {
    fn limit(&self) -> u32 {
        self.0.lock().unwrap().limit
    }
    fn update(&mut self, sample: &Sample) -> u32 {
        let mut script = self.0.lock().unwrap();
        script.samples.push(*sample);
        if let Some(next) = script.plan.pop_front() {
            script.limit = next;
        }
        script.limit
    }
    fn bounds(&self) -> (u32, u32) {
        (1, u32::MAX)
    }
}

/// A real algorithm, with the largest limit it ever gave (recorded before the limiter can
/// apply it) and the samples it was taught.
struct Tracked<A> {
    inner: A,
    most: Arc<AtomicU32>,
    samples: Arc<AtomicU64>,
    drops: Arc<AtomicU64>,
}

impl<A: LimitAlgorithm> Tracked<A> {
    fn new(inner: A) -> Self {
        let most = Arc::new(AtomicU32::new(inner.limit()));
        Self {
            inner,
            most,
            samples: Arc::default(),
            drops: Arc::default(),
        }
    }
}

impl<A: LimitAlgorithm> LimitAlgorithm for Tracked<A> {
    fn limit(&self) -> u32 {
        self.inner.limit()
    }
    fn update(&mut self, sample: &Sample) -> u32 {
        let limit = self.inner.update(sample);
        self.most.fetch_max(limit, SeqCst);
        self.samples.fetch_add(1, SeqCst);
        if sample.dropped {
            self.drops.fetch_add(1, SeqCst);
        }
        limit
    }
    fn bounds(&self) -> (u32, u32) {
        self.inner.bounds()
    }
}

fn poll_once<F: Future + ?Sized>(fut: Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(Waker::noop()))
}

/// Polls `fut` at most `polls` times; still pending then, drops it (a cancellation at an await
/// point the caller's generator chose).
struct PollLimit<F> {
    fut: Option<Pin<Box<F>>>,
    left: u64,
}

impl<F: Future> Future for PollLimit<F> {
    type Output = Option<F::Output>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(fut) = self.fut.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            self.fut = None;
            return Poll::Ready(Some(out));
        }
        if self.left == 0 {
            self.fut = None;
            return Poll::Ready(None);
        }
        self.left -= 1;
        Poll::Pending
    }
}

/// Runs `fut`, or drops it at a random point (after a random virtual time or a random number of
/// polls). `None` when it was dropped.
async fn maybe_cancel<R: Clock, F: Future>(rt: &R, draw: u64, fut: F) -> Option<F::Output> {
    match draw % 3 {
        0 => Some(fut.await),
        1 => fut.timeout_on(rt, ms(draw % 80)).await.ok(),
        _ => {
            PollLimit {
                fut: Some(Box::pin(fut)),
                left: (draw >> 8) % 5,
            }
            .await
        }
    }
}

async fn ready_and_call<S: Service<Req>, Req>(
    svc: &mut S,
    req: Req,
) -> Result<S::Response, S::Error> {
    poll_fn(|cx| svc.poll_ready(cx)).await?;
    svc.call(req).await
}

/// Fails the test if `f` panics (a builder or algorithm must answer, never panic).
fn no_panic<T>(what: &str, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| panic!("{what} panicked"))
}

/// Every limit an algorithm publishes is within its bounds and is what `limit()` says.
fn assert_update<A: LimitAlgorithm + ?Sized>(algo: &mut A, s: &Sample, what: &str) -> u32 {
    let (min, max) = algo.bounds();
    let out = no_panic(what, || algo.update(s));
    assert!(
        (min..=max).contains(&out),
        "{what}: limit {out} outside [{min}, {max}] after {s:?}"
    );
    assert_eq!(algo.limit(), out, "{what}: update's answer is the limit");
    out
}

// === the algorithms: documented numbers ====================================================

// Docs (module, Aimd, Vegas, Gradient2 examples); "re-exported from `tidewall::adaptive`".
#[test]
fn documented_examples_hold_through_the_tidewall_reexport() {
    fn is_core(a: tidewall_core::adaptive::Aimd) -> tidewall_core::adaptive::Aimd {
        a
    }
    // Module example.
    let mut aimd = is_core(
        Aimd::builder()
            .initial_limit(20)
            .min_limit(5)
            .build()
            .unwrap(),
    );
    let busy = sample(ms(10), 20);
    assert_eq!(aimd.update(&busy), 21);
    assert_eq!(
        aimd.update(&Sample {
            dropped: true,
            ..busy
        }),
        18
    );
    // Aimd example.
    let mut aimd = Aimd::builder()
        .initial_limit(30)
        .min_limit(10)
        .max_limit(100)
        .build()
        .unwrap();
    let ok = sample(ms(5), 30);
    assert_eq!(aimd.update(&ok), 31);
    assert_eq!(aimd.update(&Sample { inflight: 10, ..ok }), 31);
    assert_eq!(
        aimd.update(&Sample {
            rtt: Duration::from_secs(6),
            ..ok
        }),
        27
    );
    // Vegas example.
    let mut vegas = Vegas::builder()
        .initial_limit(10)
        .max_limit(20)
        .build()
        .unwrap();
    assert_eq!(vegas.update(&sample(ms(10), 1)), 10);
    assert_eq!(vegas.no_load_rtt(), Some(ms(10)));
    assert_eq!(vegas.update(&sample(ms(10), 11)), 16);
    assert_eq!(vegas.update(&sample(ms(50), 16)), 15);
    // Gradient2 example.
    let mut gradient = Gradient2::builder().build().unwrap();
    for _ in 0..5 {
        gradient.update(&sample(ms(10), 20));
    }
    assert_eq!(gradient.limit(), 24);
    assert_eq!(gradient.update(&sample(ms(20), 24)), 24);
    assert_eq!(gradient.update(&sample(ms(30), 24)), 23);
    // "the average is 14.3 ms now": (5 × 10 + 20 + 30) / 7.
    let long = gradient.long_rtt();
    assert!(
        long > Duration::from_micros(14_280) && long < Duration::from_micros(14_290),
        "{long:?}"
    );
}

// Docs: "Starts an AIMD limit: initial 20, within 20..=200"; "Starts a Vegas limit: initial 20,
// within 1..=1,000"; "Starts a Gradient2 limit: initial 20, within 20..=200".
#[test]
fn defaults_are_the_documented_netflix_ones() {
    let aimd = Aimd::builder().build().unwrap();
    assert_eq!((aimd.limit(), aimd.bounds()), (20, (20, 200)));
    let vegas = Vegas::builder().build().unwrap();
    assert_eq!((vegas.limit(), vegas.bounds()), (20, (1, 1_000)));
    assert_eq!(vegas.no_load_rtt(), None, "no sample has set it yet");
    let gradient = Gradient2::builder().build().unwrap();
    assert_eq!((gradient.limit(), gradient.bounds()), (20, (20, 200)));
    // Default timeout 5 s, backoff 0.9: 5 s is not slower than 5 s, 5 s + 1 ns is.
    let mut aimd = Aimd::builder().initial_limit(30).build().unwrap();
    assert_eq!(aimd.update(&sample(Duration::from_secs(5), 30)), 31);
    let mut aimd = Aimd::builder().initial_limit(30).build().unwrap();
    let slower = Duration::from_secs(5) + Duration::from_nanos(1);
    assert_eq!(aimd.update(&sample(slower, 30)), 27, "30 × 0.9");
}

// Docs (Aimd): "a call that found at least half the limit in use adds one"; "The limit stays
// within [min_limit, max_limit]"; "multiplies the limit by backoff_ratio (truncated)".
#[test]
fn aimd_half_used_and_clamp_boundaries() {
    let fresh = |initial| {
        Aimd::builder()
            .min_limit(1)
            .initial_limit(initial)
            .max_limit(100)
            .build()
            .unwrap()
    };
    let mut odd = fresh(31);
    assert_eq!(
        odd.update(&sample(ms(10), 15)),
        31,
        "15 of 31 is less than half"
    );
    assert_eq!(odd.update(&sample(ms(10), 0)), 31, "nothing in flight");
    assert_eq!(
        odd.update(&sample(ms(10), 16)),
        32,
        "16 of 31 is more than half"
    );
    assert_eq!(
        odd.update(&sample(ms(10), 16)),
        33,
        "16 of 32 is exactly half"
    );
    assert_eq!(odd.update(&sample(ms(10), u32::MAX)), 34);
    // A drop backs off whether or not the limit was used.
    let mut idle = fresh(30);
    assert_eq!(idle.update(&dropped(ms(1), 1)), 27);
    // Truncation meets the floor: 1 × 0.9 is 0, clamped to the least, 1.
    let mut floor = fresh(1);
    assert_eq!(floor.update(&dropped(ms(1), 1)), 1);
    let mut pinned = Aimd::builder()
        .min_limit(10)
        .initial_limit(10)
        .max_limit(10)
        .build()
        .unwrap();
    assert_eq!(pinned.update(&dropped(ms(1), 10)), 10);
    assert_eq!(pinned.update(&sample(ms(1), 10)), 10);
    let mut top = fresh(100);
    assert_eq!(top.update(&sample(ms(1), 100)), 100, "never past max_limit");
    // backoff 0.5 exactly (the lower bound, included): 100 → 50.
    let mut half = Aimd::builder()
        .min_limit(1)
        .initial_limit(100)
        .max_limit(100)
        .backoff_ratio(0.5)
        .build()
        .unwrap();
    assert_eq!(half.update(&dropped(ms(1), 100)), 50);
}

// Docs (Vegas): queue = ceil(limit × (1 − no_load / rtt)), unit max(1, ⌊log10 limit⌋):
// "at most threshold (1 unit) grows the limit by beta; below alpha (3 units) grows it by one
// unit; above beta (6 units) shrinks it by one unit; a drop shrinks it by one unit; anything
// else holds it." "A sample that sets ... the no-load RTT changes nothing else, and a limit
// less than half used does not grow."
#[test]
fn vegas_queue_rules_follow_the_documented_units() {
    // The example, continued: 50 ms against a no-load of 10 ms is a queue of 80 % of the limit,
    // so the limit steps down by one until ceil(0.8 × limit) <= 6, at 7, and holds there.
    let mut vegas = Vegas::builder()
        .initial_limit(10)
        .max_limit(20)
        .build()
        .unwrap();
    vegas.update(&sample(ms(10), 1));
    vegas.update(&sample(ms(10), 11));
    let mut seen = Vec::new();
    for _ in 0..12 {
        let limit = vegas.limit();
        seen.push(assert_update(&mut vegas, &sample(ms(50), limit), "vegas"));
    }
    assert_eq!(seen, [15, 14, 13, 12, 11, 10, 9, 8, 7, 7, 7, 7]);

    // Units of 2 from a limit of 100: threshold 2, alpha 6, beta 12.
    let mut big = Vegas::builder().initial_limit(150).build().unwrap();
    let at = |v: &mut Vegas, micros: u64| {
        let limit = v.limit();
        assert_update(v, &sample(Duration::from_micros(micros), limit), "vegas")
    };
    assert_eq!(
        at(&mut big, 10_000),
        150,
        "the first sample is the no-load RTT"
    );
    assert_eq!(at(&mut big, 10_000), 162, "no queue: + beta (6 units of 2)");
    assert_eq!(big.update(&dropped(ms(10), 162)), 160, "a drop: - 1 unit");
    assert_eq!(at(&mut big, 50_000), 158, "queue 128 > 12: - 1 unit");
    assert_eq!(at(&mut big, 11_000), 156, "queue 15 > 12: - 1 unit");
    assert_eq!(at(&mut big, 10_500), 156, "queue 8 within [6, 12]: held");
    assert_eq!(at(&mut big, 10_300), 158, "queue 5 < 6: + 1 unit");
    assert_eq!(at(&mut big, 10_100), 170, "queue 2 <= 2: + beta");

    // Fixed alpha and beta.
    let mut fixed = Vegas::builder()
        .initial_limit(10)
        .alpha(2)
        .beta(4)
        .build()
        .unwrap();
    fixed.update(&sample(ms(10), 1));
    assert_eq!(
        fixed.update(&sample(ms(10), 10)),
        14,
        "no queue: + beta (4)"
    );
    assert_eq!(
        fixed.update(&sample(Duration::from_micros(12_500), 14)),
        14,
        "queue 3 within [2, 4]"
    );
    assert_eq!(fixed.update(&sample(ms(20), 14)), 13, "queue 7 > 4");

    // Idle, a new least RTT, and a drop while idle.
    let mut idle = Vegas::builder().initial_limit(10).build().unwrap();
    idle.update(&sample(ms(10), 1));
    assert_eq!(
        idle.update(&sample(ms(10), 4)),
        10,
        "4 of 10 is less than half"
    );
    assert_eq!(idle.update(&sample(ms(10), 5)), 16, "5 of 10 is half");
    assert_eq!(
        idle.update(&sample(ms(5), 16)),
        16,
        "a new least RTT changes nothing else"
    );
    assert_eq!(idle.no_load_rtt(), Some(ms(5)), "the least RTT seen");
    assert_eq!(
        idle.update(&dropped(ms(5), 1)),
        15,
        "a drop shrinks, idle or not"
    );
}

// Docs (Vegas): "The new limit is clamped to [min_limit, max_limit], then blended with the old
// one by smoothing (1: no blending)."
#[test]
fn vegas_smoothing_blends_after_clamping() {
    let mut half = Vegas::builder()
        .initial_limit(10)
        .max_limit(20)
        .smoothing(0.5)
        .build()
        .unwrap();
    half.update(&sample(ms(10), 1));
    assert_eq!(half.update(&sample(ms(10), 11)), 13, "(10 + 16) / 2");
    let mut clamped = Vegas::builder()
        .initial_limit(10)
        .max_limit(12)
        .smoothing(0.5)
        .build()
        .unwrap();
    clamped.update(&sample(ms(10), 1));
    assert_eq!(
        clamped.update(&sample(ms(10), 11)),
        11,
        "16 clamped to 12 first, then (10 + 12) / 2"
    );
}

// Docs (Vegas): "The no-load RTT is the least RTT seen, replaced by a fresh measurement every
// probe_multiplier × limit samples or so (jittered by a seeded draw in [0.5, 1)), so it follows
// a dependency that got slower for good." (`seed`): "by default a fixed seed: the same samples
// give the same limits".
#[test]
fn vegas_probes_a_slower_dependency_afresh_and_is_seeded() {
    let mut pinned = Vegas::builder()
        .min_limit(10)
        .initial_limit(10)
        .max_limit(10)
        .probe_multiplier(1)
        .build()
        .unwrap();
    pinned.update(&sample(ms(10), 10));
    let mut probed_after = None;
    for i in 1..=40 {
        assert_update(&mut pinned, &sample(ms(50), 10), "vegas");
        if pinned.no_load_rtt() == Some(ms(50)) {
            probed_after = Some(i);
            break;
        }
    }
    let probed_after = probed_after.expect("the no-load RTT was measured afresh");
    assert!(
        probed_after <= 20,
        "a probe every 1 × 10 × [0.5, 1) samples came after {probed_after}"
    );

    // With room to move: the stale no-load holds the limit at 7; after the probe the queue is
    // empty and the limit grows again.
    let mut vegas = Vegas::builder()
        .initial_limit(10)
        .max_limit(100)
        .probe_multiplier(1)
        .build()
        .unwrap();
    vegas.update(&sample(ms(10), 1));
    for _ in 0..60 {
        let limit = vegas.limit();
        assert_update(&mut vegas, &sample(ms(50), limit), "vegas");
    }
    assert_eq!(vegas.no_load_rtt(), Some(ms(50)));
    assert!(vegas.limit() > 7, "grew after the probe: {}", vegas.limit());

    // Seeded: the same samples give the same limits, by default and with the same seed.
    let run = |mut v: Vegas, seed: u64| {
        let mut rng = Rng::new(seed);
        (0..3_000)
            .map(|_| {
                let limit = v.limit();
                let rtt = ms(5 + rng.below(50));
                let s = Sample {
                    rtt,
                    inflight: limit,
                    dropped: rng.chance(50),
                    at: Duration::ZERO,
                };
                (v.update(&s), v.no_load_rtt())
            })
            .collect::<Vec<_>>()
    };
    let build = || Vegas::builder().probe_multiplier(1).max_limit(50);
    assert_eq!(
        run(build().build().unwrap(), 7),
        run(build().build().unwrap(), 7)
    );
    assert_eq!(
        run(build().seed(99).build().unwrap(), 7),
        run(build().seed(99).build().unwrap(), 7)
    );
}

// Docs (Gradient2): "a drop counts as the steepest gradient, 0.5, and does not enter the
// average: a dependency that sheds load fast (a quick 503) must not read as a fast success."
#[test]
fn gradient2_drop_is_the_steepest_gradient_and_stays_out_of_the_average() {
    let warm = || {
        let mut g = Gradient2::builder().min_limit(2).build().unwrap();
        for _ in 0..5 {
            g.update(&sample(ms(10), 20));
        }
        assert_eq!(g.limit(), 24);
        let long = g.long_rtt();
        assert!(
            long > ms(10) - Duration::from_micros(1) && long < ms(10) + Duration::from_micros(1)
        );
        g
    };
    // 24 × 0.8 + (24 × 0.5 + 4) × 0.2 = 22.4.
    let mut g = warm();
    let long = g.long_rtt();
    assert_eq!(g.update(&dropped(ms(10), 24)), 22);
    assert_eq!(g.long_rtt(), long, "a drop does not enter the average");
    // 22.4 × 0.8 + (22.4 × 0.5 + 4) × 0.2 = 20.96, however long the dropped call took.
    assert_eq!(g.update(&dropped(HOUR, 24)), 20);
    assert_eq!(g.long_rtt(), long, "a slow drop does not enter the average");
    // 20.96 × 0.8 + (20.96 + 4) × 0.2 = 21.76: latency held.
    assert_eq!(g.update(&sample(ms(10), 20)), 21);
    // A quick 503: the steepest gradient all the same.
    let mut quick = warm();
    assert_eq!(quick.update(&dropped(Duration::from_nanos(1), 24)), 22);
}

// Docs (Gradient2): "A limit less than half used does not change." Module: "A limiter does not
// grow while a call found fewer than half its slots in use".
#[test]
fn idle_limits_do_not_grow_and_gradient2s_do_not_change() {
    let mut g = Gradient2::builder()
        .min_limit(2)
        .initial_limit(40)
        .build()
        .unwrap();
    for s in [
        sample(ms(10), 19),
        sample(ms(10), 19),
        sample(ms(100), 19),
        sample(Duration::ZERO, 0),
        sample(HOUR, 1),
        dropped(ms(10), 19),
    ] {
        assert_eq!(assert_update(&mut g, &s, "gradient2"), 40, "{s:?}");
    }
    // Every algorithm: a thousand fast successes from an idle service teach no growth.
    let algos: Vec<(&str, Box<dyn LimitAlgorithm>)> = vec![
        ("aimd", Box::new(aimd(40))),
        (
            "vegas",
            Box::new(Vegas::builder().initial_limit(40).build().unwrap()),
        ),
        (
            "gradient2",
            Box::new(
                Gradient2::builder()
                    .min_limit(2)
                    .initial_limit(40)
                    .build()
                    .unwrap(),
            ),
        ),
    ];
    let mut rng = Rng::new(3);
    for (name, mut algo) in algos {
        for _ in 0..1_000 {
            let inflight = u32::try_from(rng.below(20)).unwrap();
            let rtt = Duration::from_micros(1 + rng.below(10_000));
            let out = assert_update(&mut *algo, &sample(rtt, inflight), name);
            assert!(out <= 40, "{name}: an idle limit grew to {out}");
        }
        // AIMD grows only when half used and drops only on a drop or a timeout; Gradient2's
        // idle limit "does not change". (Vegas may shrink on a long queue.)
        if name != "vegas" {
            assert_eq!(algo.limit(), 40, "{name}");
        }
    }
}

// Docs (Gradient2): "latency above the long-term average (beyond the tolerance) shrinks the
// limit"; "lowered 5 % per sample while it is more than twice the sample (so it comes back down
// after a long overload)".
#[test]
fn gradient2_latency_step_backs_off_and_a_long_overload_comes_back_down() {
    let mut g = Gradient2::builder()
        .min_limit(2)
        .initial_limit(20)
        .build()
        .unwrap();
    for _ in 0..10 {
        let limit = g.limit();
        assert_update(&mut g, &sample(ms(10), limit), "gradient2");
    }
    let before = g.limit();
    assert!(
        before >= 27,
        "grew 0.8 per sample while latency held: {before}"
    );
    let mut last = before;
    for i in 0..30 {
        let now = assert_update(&mut g, &sample(ms(100), last), "gradient2");
        assert!(
            now <= last,
            "sample {i}: {last} → {now} while latency is 10×"
        );
        last = now;
    }
    assert!(last <= before / 2, "backed off from {before} to {last}");

    // An hour-long overload, then the dependency is fast again.
    let mut g = Gradient2::builder()
        .min_limit(2)
        .initial_limit(20)
        .build()
        .unwrap();
    for _ in 0..10 {
        let limit = g.limit();
        assert_update(&mut g, &sample(HOUR, limit), "gradient2");
    }
    let long = g.long_rtt();
    assert!(long > HOUR - ms(1) && long < HOUR + ms(1), "{long:?}");
    let mut recovered = None;
    for i in 0..1_000 {
        let limit = g.limit();
        assert_update(&mut g, &sample(ms(10), limit), "gradient2");
        if recovered.is_none() && g.long_rtt() < ms(20) {
            recovered = Some(i);
        }
    }
    assert!(
        recovered.is_some(),
        "the long RTT came back down: {:?}",
        g.long_rtt()
    );
    assert_eq!(g.limit(), 200, "latency held since: grown to the most");
}

// Task: "a steady signal converges". A constant RTT with the limit in use: every algorithm
// settles on one limit (here its most) and stays there, and again after a step to a slower
// steady RTT.
#[test]
fn a_steady_signal_converges_for_every_algorithm() {
    let algos: Vec<(&str, Box<dyn LimitAlgorithm>)> = vec![
        (
            "aimd",
            Box::new(
                Aimd::builder()
                    .min_limit(5)
                    .initial_limit(10)
                    .max_limit(60)
                    .build()
                    .unwrap(),
            ),
        ),
        (
            "vegas",
            Box::new(
                Vegas::builder()
                    .min_limit(5)
                    .initial_limit(10)
                    .max_limit(60)
                    .build()
                    .unwrap(),
            ),
        ),
        (
            "gradient2",
            Box::new(
                Gradient2::builder()
                    .min_limit(5)
                    .initial_limit(10)
                    .max_limit(60)
                    .build()
                    .unwrap(),
            ),
        ),
    ];
    for (name, mut algo) in algos {
        for rtt in [ms(10), ms(20)] {
            let tail: Vec<u32> = (0..5_000)
                .map(|_| {
                    let limit = algo.limit();
                    assert_update(&mut *algo, &sample(rtt, limit), name)
                })
                .skip(4_800)
                .collect();
            assert!(
                tail.iter().all(|&l| l == 60),
                "{name} at a steady {rtt:?} settled on its most: {tail:?}"
            );
        }
    }
}

// Module docs: "Nothing here reads a clock, keeps a lock or draws randomness it was not seeded
// with, so the same samples give the same limits on every machine".
#[test]
fn clones_replay_the_same_samples_identically() {
    fn replay<A: LimitAlgorithm + Clone>(mut a: A, seed: u64) {
        let mut rng = Rng::new(seed);
        let mut draw = |limit: u32| Sample {
            rtt: Duration::from_micros(rng.below(100_000)),
            inflight: u32::try_from(rng.below(u64::from(limit) * 2 + 1)).unwrap(),
            dropped: rng.chance(10),
            at: Duration::ZERO,
        };
        for _ in 0..500 {
            let s = draw(a.limit());
            a.update(&s);
        }
        let mut b = a.clone();
        for _ in 0..2_000 {
            let s = draw(a.limit());
            assert_eq!(a.update(&s), b.update(&s), "{s:?}");
        }
    }
    replay(aimd(10), 1);
    replay(Vegas::builder().probe_multiplier(1).build().unwrap(), 2);
    replay(Gradient2::builder().min_limit(1).build().unwrap(), 3);
    let mut a = aimd(10);
    let b = a.clone();
    assert_eq!(a, b);
    a.update(&dropped(ms(1), 10));
    assert_ne!(a, b);
}

// === the algorithms: extreme configurations ================================================

const LIMITS: [u32; 8] = [1, 2, 3, 10, 99, 1_000, u32::MAX - 1, u32::MAX];

fn bounds_from(rng: &mut Rng) -> (u32, u32, u32) {
    let mut three = [rng.pick(&LIMITS), rng.pick(&LIMITS), rng.pick(&LIMITS)];
    three.sort_unstable();
    (three[0], three[1], three[2])
}

fn extreme_algorithm(rng: &mut Rng) -> (String, Box<dyn LimitAlgorithm>, (u32, u32, u32)) {
    let (min, initial, max) = bounds_from(rng);
    let smoothing = rng.pick(&[f64::MIN_POSITIVE, 1e-300, 1e-9, 0.2, 0.5, 1.0]);
    match rng.below(3) {
        0 => {
            let backoff = rng.pick(&[0.5, 0.500_000_1, 0.9, 0.999_999_999]);
            let timeout = rng.pick(&[
                Duration::from_nanos(1),
                ms(1),
                Duration::from_secs(5),
                Duration::from_nanos(u64::MAX),
            ]);
            let what = format!("aimd {min}..={max} from {initial}, ×{backoff}, {timeout:?}");
            let builder = Aimd::builder()
                .min_limit(min)
                .initial_limit(initial)
                .max_limit(max)
                .backoff_ratio(backoff)
                .timeout(timeout);
            let algo = no_panic(&what, || builder.build()).unwrap();
            (what, Box::new(algo), (min, initial, max))
        }
        1 => {
            let probe = rng.pick(&[1, 2, 30, u32::MAX]);
            let mut builder = Vegas::builder()
                .min_limit(min)
                .initial_limit(initial)
                .max_limit(max)
                .smoothing(smoothing)
                .probe_multiplier(probe)
                .seed(rng.next());
            let ab = match rng.below(4) {
                0 => None,
                1 => Some((0, 0)),
                2 => Some((0, u32::MAX)),
                _ => Some((u32::MAX, u32::MAX)),
            };
            if let Some((alpha, beta)) = ab {
                builder = builder.alpha(alpha).beta(beta);
            }
            let what =
                format!("vegas {min}..={max} from {initial}, s {smoothing}, probe {probe}, {ab:?}");
            let algo = no_panic(&what, || builder.build()).unwrap();
            (what, Box::new(algo), (min, initial, max))
        }
        _ => {
            let queue = rng.pick(&[0, 1, 4, u32::MAX]);
            let window = rng.pick(&[1, 2, 600, u32::MAX]);
            let tolerance = rng.pick(&[1.0, 1.5, 1e300, f64::MAX]);
            let what = format!(
                "gradient2 {min}..={max} from {initial}, s {smoothing}, q {queue}, w {window}, t {tolerance}"
            );
            let builder = Gradient2::builder()
                .min_limit(min)
                .initial_limit(initial)
                .max_limit(max)
                .smoothing(smoothing)
                .queue_size(queue)
                .long_window(window)
                .rtt_tolerance(tolerance);
            let algo = no_panic(&what, || builder.build()).unwrap();
            (what, Box::new(algo), (min, initial, max))
        }
    }
}

// Module docs: "Every algorithm keeps its estimate as a real number and publishes its integer
// part, clamped to [min_limit, max_limit]; an RTT of zero counts as one nanosecond."
#[test]
fn seeded_extreme_configs_keep_every_limit_within_bounds_and_never_panic() {
    let mut rng = Rng::new(0x00AD_A971);
    for _ in 0..600 {
        let (what, mut algo, (min, initial, max)) = extreme_algorithm(&mut rng);
        assert_eq!(algo.bounds(), (min, max), "{what}");
        assert_eq!(algo.limit(), initial, "{what}");
        for _ in 0..200 {
            let limit = algo.limit();
            let rtt = match rng.below(6) {
                0 => Duration::ZERO,
                1 => Duration::from_nanos(1),
                2 => Duration::from_nanos(u64::MAX),
                3 => HOUR,
                _ => Duration::from_nanos(rng.below(100_000_000)),
            };
            let inflight = rng.pick(&[0, 1, limit / 2, limit, limit.saturating_add(1), u32::MAX]);
            let s = Sample {
                rtt,
                inflight,
                dropped: rng.chance(4),
                at: Duration::ZERO,
            };
            assert_update(&mut *algo, &s, &what);
        }
    }
}

// Module docs: limits "clamped to [min_limit, max_limit]; an RTT of zero counts as one
// nanosecond". `Sample::rtt` is any `Duration`: the largest there is must not panic either.
#[test]
fn rtts_of_zero_and_u64_max_nanoseconds_keep_limits_in_bounds() {
    hammer_rtts(&[
        Duration::ZERO,
        Duration::from_nanos(1),
        Duration::from_nanos(u64::MAX),
        Duration::ZERO,
        ms(10),
    ]);
}

// `Sample::rtt` is any `Duration`, and the docs bound nothing: the largest there is must keep the
// limit within bounds and not panic either (module: "every algorithm keeps [its estimate]
// finite and within its u32 bounds").
#[test]
fn an_rtt_of_duration_max_keeps_limits_in_bounds() {
    hammer_rtts(&[Duration::MAX, ms(10), Duration::MAX, Duration::ZERO]);
}

fn hammer_rtts(rtts: &[Duration]) {
    let make = |min: u32, initial: u32, max: u32| -> Vec<(&'static str, Box<dyn LimitAlgorithm>)> {
        vec![
            (
                "aimd",
                Box::new(
                    Aimd::builder()
                        .min_limit(min)
                        .initial_limit(initial)
                        .max_limit(max)
                        .build()
                        .unwrap(),
                ),
            ),
            (
                "vegas",
                Box::new(
                    Vegas::builder()
                        .min_limit(min)
                        .initial_limit(initial)
                        .max_limit(max)
                        .build()
                        .unwrap(),
                ),
            ),
            (
                "gradient2",
                Box::new(
                    Gradient2::builder()
                        .min_limit(min)
                        .initial_limit(initial)
                        .max_limit(max)
                        .build()
                        .unwrap(),
                ),
            ),
        ]
    };
    for (min, initial, max) in [
        (1, 20, 1_000),
        (7, 7, 7),
        (u32::MAX, u32::MAX, u32::MAX),
        (1, u32::MAX, u32::MAX),
    ] {
        for (name, mut algo) in make(min, initial, max) {
            let what = format!("{name} {min}..={max} from {initial}");
            for round in 0..50 {
                for &rtt in rtts {
                    let limit = algo.limit();
                    for inflight in [0, 1, limit, u32::MAX] {
                        let s = Sample {
                            rtt,
                            inflight,
                            dropped: round % 3 == 0,
                            at: Duration::ZERO,
                        };
                        let out = assert_update(&mut *algo, &s, &what);
                        if min == max {
                            assert_eq!(out, min, "{what}: min = max pins the limit");
                        }
                    }
                }
            }
        }
    }
}

// Docs (`build` of each): "ConfigError::Zero for a zero min_limit or timeout; Conflict unless
// min_limit <= initial_limit <= max_limit; OutOfRange (or NotFinite) for a backoff_ratio outside
// 0.5..1" (Aimd); "Zero for a zero min_limit, long_window or smoothing; ... OutOfRange (or
// NotFinite) for a smoothing outside (0, 1] or an rtt_tolerance below 1" (Gradient2); "Zero for
// a zero min_limit or probe_multiplier; Conflict ... or for an alpha above beta; OutOfRange (or
// NotFinite) for a smoothing outside (0, 1]" (Vegas). ConfigError: "The builder field, as named
// in the builder method."
#[test]
fn algorithm_builders_refuse_bad_input_with_typed_errors_never_panicking() {
    fn zero(r: Result<impl Sized, ConfigError>, field: &str) {
        match r {
            Err(ConfigError::Zero { field: f }) if f == field => {}
            Err(e) => panic!("{field}: expected Zero, got {e:?}"),
            Ok(_) => panic!("{field}: accepted"),
        }
    }
    fn conflict(r: Result<impl Sized, ConfigError>, what: &str) {
        match r {
            Err(ConfigError::Conflict { .. }) => {}
            Err(e) => panic!("{what}: expected Conflict, got {e:?}"),
            Ok(_) => panic!("{what}: accepted"),
        }
    }
    fn out_of_range(r: Result<impl Sized, ConfigError>, field: &str) {
        match r {
            Err(ConfigError::OutOfRange { field: f, .. }) if f == field => {}
            Err(e) => panic!("{field}: expected OutOfRange, got {e:?}"),
            Ok(_) => panic!("{field}: accepted"),
        }
    }
    fn not_finite(r: Result<impl Sized, ConfigError>, field: &str) {
        match r {
            Err(ConfigError::OutOfRange { field: f, .. } | ConfigError::NotFinite { field: f })
                if f == field => {}
            Err(e) => panic!("{field}: expected NotFinite or OutOfRange, got {e:?}"),
            Ok(_) => panic!("{field}: accepted"),
        }
    }
    let a = Aimd::builder;
    zero(no_panic("aimd", || a().min_limit(0).build()), "min_limit");
    zero(
        no_panic("aimd", || a().timeout(Duration::ZERO).build()),
        "timeout",
    );
    conflict(
        no_panic("aimd", || a().min_limit(10).initial_limit(5).build()),
        "initial < min",
    );
    conflict(
        no_panic("aimd", || a().initial_limit(300).build()),
        "initial > max 200",
    );
    conflict(
        no_panic("aimd", || {
            a().min_limit(50).initial_limit(45).max_limit(40).build()
        }),
        "min > max",
    );
    conflict(
        no_panic("aimd", || a().max_limit(0).build()),
        "max 0 < min 20",
    );
    for bad in [0.49, 1.0, 1.5, -0.0, -1.0, 0.0] {
        out_of_range(
            no_panic("aimd", || a().backoff_ratio(bad).build()),
            "backoff_ratio",
        );
    }
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        not_finite(
            no_panic("aimd", || a().backoff_ratio(bad).build()),
            "backoff_ratio",
        );
    }
    assert!(
        a().backoff_ratio(0.5).build().is_ok(),
        "0.5 is within 0.5..1"
    );
    assert!(a().backoff_ratio(0.999_999).build().is_ok());
    assert!(
        a().min_limit(1)
            .initial_limit(1)
            .max_limit(1)
            .build()
            .is_ok(),
        "min = initial = max"
    );
    assert!(a().timeout(Duration::from_nanos(1)).build().is_ok());

    let g = Gradient2::builder;
    zero(
        no_panic("gradient2", || g().min_limit(0).build()),
        "min_limit",
    );
    zero(
        no_panic("gradient2", || g().long_window(0).build()),
        "long_window",
    );
    zero(
        no_panic("gradient2", || g().smoothing(0.0).build()),
        "smoothing",
    );
    conflict(
        no_panic("gradient2", || g().initial_limit(19).build()),
        "initial < min 20",
    );
    conflict(
        no_panic("gradient2", || g().initial_limit(201).build()),
        "initial > max 200",
    );
    for bad in [-0.5, 1.000_000_1, 2.0] {
        out_of_range(
            no_panic("gradient2", || g().smoothing(bad).build()),
            "smoothing",
        );
    }
    for bad in [f64::NAN, f64::INFINITY] {
        not_finite(
            no_panic("gradient2", || g().smoothing(bad).build()),
            "smoothing",
        );
    }
    for bad in [0.999, 0.0, -1.0] {
        out_of_range(
            no_panic("gradient2", || g().rtt_tolerance(bad).build()),
            "rtt_tolerance",
        );
    }
    for bad in [f64::NAN, f64::NEG_INFINITY] {
        not_finite(
            no_panic("gradient2", || g().rtt_tolerance(bad).build()),
            "rtt_tolerance",
        );
    }
    assert!(g().smoothing(1.0).rtt_tolerance(1.0).build().is_ok());
    assert!(g().smoothing(f64::MIN_POSITIVE).build().is_ok());
    assert!(g().queue_size(0).long_window(1).build().is_ok());

    let v = Vegas::builder;
    zero(no_panic("vegas", || v().min_limit(0).build()), "min_limit");
    zero(
        no_panic("vegas", || v().probe_multiplier(0).build()),
        "probe_multiplier",
    );
    conflict(
        no_panic("vegas", || v().alpha(7).beta(6).build()),
        "alpha above beta",
    );
    conflict(
        no_panic("vegas", || v().initial_limit(1_001).build()),
        "initial > max 1000",
    );
    conflict(
        no_panic("vegas", || v().min_limit(30).build()),
        "min 30 > initial 20",
    );
    for bad in [-0.1, 1.5] {
        out_of_range(
            no_panic("vegas", || v().smoothing(bad).build()),
            "smoothing",
        );
    }
    for bad in [f64::NAN, f64::INFINITY] {
        not_finite(
            no_panic("vegas", || v().smoothing(bad).build()),
            "smoothing",
        );
    }
    assert!(v().alpha(6).beta(6).build().is_ok(), "alpha equal to beta");
    assert!(v().alpha(0).beta(0).build().is_ok());
    assert!(v().smoothing(1.0).build().is_ok());
}

// Docs (VegasBuilder::build): "ConfigError::Zero for a zero min_limit, probe_multiplier or
// smoothing; ... OutOfRange (or NotFinite) for a smoothing above 1 or below 0", as Gradient2's.
// (This test found the docs listing zero as OutOfRange while the code said Zero, like
// Gradient2; the docs were corrected to match both.)
#[test]
fn vegas_zero_smoothing_is_zero_and_out_of_range_beyond_as_its_docs_list() {
    let zero = no_panic("vegas", || Vegas::builder().smoothing(0.0).build());
    assert!(
        matches!(zero, Err(ConfigError::Zero { field: "smoothing" })),
        "{:?}",
        zero.map(|_| ())
    );
    for bad in [-0.5, 1.5] {
        let out = no_panic("vegas", || Vegas::builder().smoothing(bad).build());
        assert!(
            matches!(
                out,
                Err(ConfigError::OutOfRange {
                    field: "smoothing",
                    ..
                })
            ),
            "{bad}: {:?}",
            out.map(|_| ())
        );
    }
}

// Docs (`AdaptiveLimiterBuilder::build`): "As BulkheadBuilder::build for the queue and the wait"
// — "OutOfRange for ... a zero max_wait with a non-empty queue ... and DurationOverflow for a
// max_wait beyond u64 nanoseconds."
#[test]
fn the_limiter_builder_refuses_bad_queue_settings_like_a_bulkhead() {
    let build = |queue: usize, wait: Option<Duration>| {
        no_panic("limiter", || {
            AdaptiveLimiter::builder(aimd(2))
                .max_queue(queue)
                .max_wait(wait)
                .runtime(FakeClock::new())
                .build()
                .map(|_| ())
        })
    };
    // Whatever the bulkhead answers for the same settings.
    let bulkhead = tidewall::bulkhead::Bulkhead::builder(1)
        .max_queue(3)
        .max_wait(Duration::ZERO)
        .build()
        .map(|_| ());
    assert!(bulkhead.is_err());
    assert_eq!(build(3, Some(Duration::ZERO)), bulkhead);
    assert!(
        matches!(
            build(1, Some(Duration::MAX)),
            Err(ConfigError::DurationOverflow { .. })
        ),
        "{:?}",
        build(1, Some(Duration::MAX))
    );
    assert_eq!(
        build(0, Some(Duration::ZERO)),
        Ok(()),
        "no queue: a zero wait is fine"
    );
    assert_eq!(build(5, None), Ok(()));
    assert_eq!(build(0, Some(Duration::from_nanos(u64::MAX))), Ok(()));
}

// === the limiter and its permits ===========================================================

type OnFake<A> = AdaptiveLimiter<A, FakeClock>;

// Docs (Sample): "rtt: How long the call took, from admission to its end"; "inflight: Calls in
// flight when it was admitted, itself included"; "dropped: ... timed out, or refused". Docs
// (AdaptivePermit): "dropped without one (a cancelled call), it frees the slot and teaches the
// algorithm nothing"; `ignore`: "no sample"; `finish`: "Outcome::Ignored teaches nothing".
// Docs (builder `runtime`): "its clock times the calls".
#[test]
fn permits_teach_admission_inflight_and_virtual_rtt_and_nothing_else() {
    let clock = FakeClock::new();
    let rec = Recorder::new(4);
    let limiter = AdaptiveLimiter::builder(rec.clone())
        .runtime(clock.clone())
        .build()
        .unwrap();
    assert_eq!(
        (
            limiter.limit(),
            limiter.in_flight(),
            limiter.queued(),
            limiter.name()
        ),
        (4, 0, 0, "adaptive")
    );
    let shared = limiter.clone();
    let a = limiter.try_acquire().unwrap();
    clock.advance(ms(5));
    let b = shared.try_acquire().unwrap();
    assert_eq!(
        (limiter.in_flight(), shared.in_flight()),
        (2, 2),
        "clones share"
    );
    clock.advance(ms(7));
    a.success(); // finished with b still in flight: admitted with 1
    b.failure();
    let c = limiter.try_acquire().unwrap();
    clock.advance(ms(3));
    c.ignore();
    let d = limiter.try_acquire().unwrap();
    clock.advance(ms(3));
    drop(d);
    let e = limiter.try_acquire().unwrap();
    clock.advance(ms(2));
    e.finish(Outcome::Success);
    let f = limiter.try_acquire().unwrap();
    f.finish(Outcome::Failure);
    let g = limiter.try_acquire().unwrap();
    clock.advance(HOUR);
    g.finish(Outcome::Ignored);
    assert_eq!(
        rec.samples(),
        [
            sample(ms(12), 1),
            dropped(ms(7), 2),
            sample(ms(2), 1),
            dropped(Duration::ZERO, 1),
        ]
    );
    // Each sample's `at` is when its call ended, on the limiter's virtual clock.
    assert_eq!(rec.ends(), [ms(12), ms(12), ms(20), ms(20)]);
    assert_eq!(limiter.in_flight(), 0);
}

// Docs (`Admission::finish`): "Ends an admitted call with how it went, for a stage that learns
// from its calls (an adaptive limiter) ... A guard dropped without it (a cancelled call) teaches
// nothing." (`Wait::No`): "a stage that cannot admit now refuses with its own reason".
#[test]
fn admission_finish_teaches_a_real_aimd_and_a_dropped_guard_does_not() {
    let clock = FakeClock::new();
    let limiter = AdaptiveLimiter::builder(aimd(4))
        .runtime(clock.clone())
        .build()
        .unwrap();
    let finish = <OnFake<Aimd> as Admission>::finish;
    let g1 = limiter.try_admit().unwrap();
    let g2 = limiter.try_admit().unwrap();
    finish(g2, Outcome::Success); // admitted with 2 of 4: half used
    assert_eq!(limiter.limit(), 5);
    finish(g1, Outcome::Success); // admitted with 1 of 4: idle
    assert_eq!(limiter.limit(), 5);
    drop(limiter.try_admit().unwrap());
    let ignored = limiter.try_admit().unwrap();
    clock.advance(HOUR);
    finish(ignored, Outcome::Ignored);
    assert_eq!(
        limiter.limit(),
        5,
        "cancelled and ignored calls teach nothing"
    );
    // Slower than the 1 s timeout on the limiter's clock: a drop, reported success or not.
    let held: Vec<_> = (0..3).map(|_| limiter.try_admit().unwrap()).collect();
    clock.advance(Duration::from_secs(2));
    let mut held = held.into_iter();
    finish(held.next().unwrap(), Outcome::Success);
    assert_eq!(limiter.limit(), 2, "5 × 0.5, truncated");
    finish(held.next().unwrap(), Outcome::Failure);
    assert_eq!(limiter.limit(), 1);
    // One still held, limit 1: refused now, quietly or not.
    assert!(limiter.try_admit().is_none());
    let refused = poll_once(Box::pin(limiter.admit(Wait::No)).as_mut());
    assert!(
        matches!(refused, Poll::Ready(Err(Rejected::BulkheadFull))),
        "{refused:?}"
    );
    drop(held);
    assert_eq!((limiter.in_flight(), limiter.limit()), (0, 1));
    assert!(limiter.try_admit().is_some());
}

// Docs (module): "a smaller one revokes nothing held". Bulkhead (`reconfigure`): "shrinking
// below what is held admits nobody new until enough permits come back, so in_flight may exceed
// the capacity for a while"; "growing hands the new permits to queued callers first".
#[test]
fn a_shrinking_limit_revokes_nothing_and_admits_nobody_until_below_it() {
    let clock = FakeClock::new();
    let rec = Recorder::new(6);
    let limiter = AdaptiveLimiter::builder(rec.clone())
        .runtime(clock.clone())
        .build()
        .unwrap();
    let mut held: Vec<_> = (0..6).map(|_| limiter.try_acquire().unwrap()).collect();
    assert_eq!(limiter.try_acquire().unwrap_err(), Rejected::BulkheadFull);
    rec.then(2);
    held.pop().unwrap().success();
    assert_eq!(
        (limiter.limit(), limiter.in_flight()),
        (2, 5),
        "nothing revoked"
    );
    for expected in [4, 3, 2] {
        held.pop().unwrap().ignore();
        assert_eq!(limiter.in_flight(), expected);
        assert_eq!(
            limiter.try_acquire().unwrap_err(),
            Rejected::BulkheadFull,
            "{expected} in flight of a limit of 2"
        );
    }
    drop(held.pop().unwrap()); // cancelled: frees the slot all the same
    assert_eq!(limiter.in_flight(), 1);
    let again = limiter.try_acquire().expect("1 in flight of 2");
    assert_eq!(limiter.try_acquire().unwrap_err(), Rejected::BulkheadFull);
    // Growing: admitted up to the new limit at once.
    rec.then(10);
    again.success();
    assert_eq!((limiter.limit(), limiter.in_flight()), (10, 1));
    let more: Vec<_> = (0..9).map(|_| limiter.try_acquire().unwrap()).collect();
    assert_eq!(limiter.try_acquire().unwrap_err(), Rejected::BulkheadFull);
    drop(more);
    drop(held);
    assert_eq!(limiter.in_flight(), 0);
    assert_eq!(rec.samples().len(), 2, "only the two told outcomes taught");
}

// Docs (AdaptiveAdmit): "a bulkhead's wait, timed from the moment it admits"; Bulkhead
// (`reconfigure`): "growing hands the new permits to queued callers first"; "Cancel safety: as
// the bulkhead's: dropping it leaves the queue and holds nothing" — Bulkhead: "a permit granted
// to it at that instant is passed on"; "FIFO among waiters".
#[test]
fn queued_waiters_are_admitted_as_the_limit_grows_in_order_and_timed_from_their_grant() {
    let clock = FakeClock::new();
    let rec = Recorder::new(1);
    let limiter = AdaptiveLimiter::builder(rec.clone())
        .max_queue(8)
        .max_wait(None)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let first = limiter.try_acquire().unwrap();
    let mut waiting: Vec<_> = (0..3)
        .map(|_| Box::pin(limiter.admit(Wait::Until(Deadline::none()))))
        .collect();
    for w in &mut waiting {
        assert!(poll_once(w.as_mut()).is_pending());
    }
    assert_eq!(limiter.queued(), 3);
    clock.advance(ms(300));
    rec.then(3);
    first.success();
    assert_eq!(limiter.limit(), 3);
    let mut admitted: VecDeque<_> = waiting
        .iter_mut()
        .enumerate()
        .map(|(i, w)| match poll_once(w.as_mut()) {
            Poll::Ready(Ok(permit)) => permit,
            other => panic!("waiter {i} not admitted when the limit grew to 3: {other:?}"),
        })
        .collect();
    drop(waiting);
    assert_eq!((limiter.in_flight(), limiter.queued()), (3, 0));

    // Two more queue behind a full limit of 3.
    let mut w4 = Box::pin(limiter.admit(Wait::Until(Deadline::none())));
    let mut w5 = Box::pin(limiter.admit(Wait::Until(Deadline::none())));
    assert!(poll_once(w4.as_mut()).is_pending());
    assert!(poll_once(w5.as_mut()).is_pending());
    clock.advance(ms(20));
    admitted.pop_front().unwrap().success(); // queued 300 ms, ran 20 ms
    // The freed slot goes to w4, first in line; dropped before it looks, it passes on to w5.
    assert!(poll_once(w5.as_mut()).is_pending() || limiter.queued() == 1);
    drop(w4);
    clock.advance(ms(4));
    let last = match poll_once(w5.as_mut()) {
        Poll::Ready(Ok(permit)) => permit,
        other => panic!("the slot passed on to w5: {other:?}"),
    };
    assert_eq!((limiter.in_flight(), limiter.queued()), (3, 0));
    clock.advance(ms(6));
    last.success();
    drop(admitted);
    let samples = rec.samples();
    assert_eq!(samples.len(), 3, "{samples:?}");
    assert_eq!(samples[0], sample(ms(300), 1));
    assert_eq!(
        samples[1].rtt,
        ms(20),
        "timed from the grant, not the queueing"
    );
    assert_eq!(samples[2].rtt, ms(6), "timed from its own admission");
    assert_eq!(limiter.in_flight(), 0);
}

// Docs (module): "a new limit resizes the bulkhead; a smaller one revokes nothing held";
// Bulkhead (`reconfigure`): "shrinking below what is held admits nobody new until enough
// permits come back, so in_flight may exceed the capacity for a while". A call that ends by
// shrinking the limit must not hand its slot to a queued caller while as many as the new
// limit are still in flight: that is what the smaller limit is for.
#[test]
fn a_shrinking_limit_admits_no_queued_waiter_until_below_it() {
    let clock = FakeClock::new();
    let rec = Recorder::new(3);
    let limiter = AdaptiveLimiter::builder(rec.clone())
        .max_queue(8)
        .max_wait(None)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let mut held: VecDeque<_> = (0..3).map(|_| limiter.try_acquire().unwrap()).collect();
    let mut w4 = Box::pin(limiter.admit(Wait::Until(Deadline::none())));
    let mut w5 = Box::pin(limiter.admit(Wait::Until(Deadline::none())));
    assert!(poll_once(w4.as_mut()).is_pending());
    assert!(poll_once(w5.as_mut()).is_pending());
    rec.then(1);
    held.pop_front().unwrap().success();
    let w4_now = poll_once(w4.as_mut());
    assert!(
        w4_now.is_pending(),
        "2 still in flight of a new limit of 1, yet a waiter was admitted: {w4_now:?} \
         (in flight {}, queued {})",
        limiter.in_flight(),
        limiter.queued()
    );
    assert_eq!(
        (limiter.limit(), limiter.in_flight(), limiter.queued()),
        (1, 2, 2)
    );
    held.pop_front().unwrap().ignore();
    assert!(
        poll_once(w4.as_mut()).is_pending(),
        "1 in flight of a limit of 1"
    );
    drop(held);
    let admitted = poll_once(w4.as_mut());
    assert!(matches!(admitted, Poll::Ready(Ok(_))), "{admitted:?}");
    assert!(poll_once(w5.as_mut()).is_pending());
    assert_eq!((limiter.in_flight(), limiter.queued()), (1, 1));
    drop((admitted, w5));
    assert_eq!((limiter.in_flight(), limiter.queued()), (0, 0));
}

// The same with a real AIMD: a failure halves a limit of 4 to 2 while 4 are in flight and a
// caller waits. Docs (Aimd): "a dropped call ... multiplies the limit by backoff_ratio".
#[test]
fn a_failure_that_halves_aimds_limit_does_not_hand_its_slot_to_a_waiter() {
    let clock = FakeClock::new();
    let limiter = AdaptiveLimiter::builder(aimd(4))
        .max_queue(4)
        .max_wait(None)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let mut held: VecDeque<_> = (0..4).map(|_| limiter.try_acquire().unwrap()).collect();
    let mut waiter = Box::pin(limiter.admit(Wait::Until(Deadline::none())));
    assert!(poll_once(waiter.as_mut()).is_pending());
    held.pop_front().unwrap().failure();
    assert_eq!(limiter.limit(), 2);
    let now = poll_once(waiter.as_mut());
    assert!(
        now.is_pending(),
        "3 in flight of a limit of 2, yet the failed call's slot went to a waiter: in flight {}",
        limiter.in_flight()
    );
    assert_eq!(limiter.in_flight(), 3);
    drop((now, waiter, held));
    assert_eq!(limiter.in_flight(), 0);
}

// Docs (module): "An AdaptiveLimiter is a bulkhead whose capacity is the algorithm's limit"; at
// u32::MAX the limiter must admit, learn and shrink without overflowing.
#[test]
fn limits_at_u32_max_work_through_the_limiter() {
    let clock = FakeClock::new();
    let pinned = AdaptiveLimiter::builder(
        Aimd::builder()
            .min_limit(u32::MAX)
            .initial_limit(u32::MAX)
            .max_limit(u32::MAX)
            .build()
            .unwrap(),
    )
    .runtime(clock.clone())
    .build()
    .unwrap();
    assert_eq!(pinned.limit(), u32::MAX);
    let held: Vec<_> = (0..1_000).map(|_| pinned.try_acquire().unwrap()).collect();
    for (i, p) in held.into_iter().enumerate() {
        if i % 2 == 0 {
            p.success();
        } else {
            p.failure();
        }
    }
    assert_eq!((pinned.limit(), pinned.in_flight()), (u32::MAX, 0));

    let vegas = AdaptiveLimiter::builder(
        Vegas::builder()
            .initial_limit(u32::MAX)
            .max_limit(u32::MAX)
            .build()
            .unwrap(),
    )
    .runtime(clock.clone())
    .build()
    .unwrap();
    let p = vegas.try_acquire().unwrap();
    clock.advance(ms(1));
    p.success(); // sets the no-load RTT
    assert_eq!(vegas.limit(), u32::MAX);
    let p = vegas.try_acquire().unwrap();
    clock.advance(ms(1)); // the no-load RTT again, not a new least one
    p.failure();
    assert_eq!(
        vegas.limit(),
        u32::MAX - 9,
        "a drop: - 1 unit of ⌊log10 limit⌋ = 9"
    );

    let aimd = AdaptiveLimiter::builder(
        Aimd::builder()
            .min_limit(1)
            .initial_limit(u32::MAX)
            .max_limit(u32::MAX)
            .backoff_ratio(0.5)
            .build()
            .unwrap(),
    )
    .runtime(clock.clone())
    .build()
    .unwrap();
    aimd.try_acquire().unwrap().failure();
    assert_eq!(aimd.limit(), u32::MAX / 2);
    assert_eq!(aimd.in_flight(), 0);

    // From 1 to u32::MAX in one sample, with callers queued: all of them are admitted, at once.
    let leap = AdaptiveLimiter::builder(
        Gradient2::builder()
            .min_limit(1)
            .initial_limit(1)
            .max_limit(u32::MAX)
            .smoothing(1.0)
            .queue_size(u32::MAX)
            .build()
            .unwrap(),
    )
    .max_queue(3)
    .max_wait(None)
    .runtime(clock.clone())
    .build()
    .unwrap();
    let only = leap.try_acquire().unwrap();
    let mut waiting: Vec<_> = (0..3)
        .map(|_| Box::pin(leap.admit(Wait::Until(Deadline::none()))))
        .collect();
    for w in &mut waiting {
        assert!(poll_once(w.as_mut()).is_pending());
    }
    clock.advance(ms(1));
    only.success();
    assert_eq!(leap.limit(), u32::MAX);
    for w in &mut waiting {
        let out = poll_once(w.as_mut());
        assert!(matches!(out, Poll::Ready(Ok(_))), "{out:?}");
    }
    drop(waiting);
    assert_eq!((leap.in_flight(), leap.queued()), (0, 0));
    leap.try_acquire().unwrap().failure();
    assert!((1..=u32::MAX).contains(&leap.limit()));
    assert_eq!(leap.in_flight(), 0);
}

// Docs (builder `on_event`): "Tells listener of its refusals and waits, as a bulkhead's on_event
// does"; (`name`): "The name its events and metrics carry ..., under `policy` `adaptive`."
// EventKind::Waited: "A bulkhead admitted a caller that had waited
// in its queue this long."
#[test]
fn on_event_reports_refusals_and_waits_under_the_limiters_name() {
    let clock = FakeClock::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let rec = Recorder::new(1);
    let limiter = AdaptiveLimiter::builder(rec.clone())
        .name("inventory")
        .max_queue(1)
        .max_wait(ms(100))
        .on_event(move |event| {
            let kind = match event.kind {
                EventKind::Rejected(why) => format!("rejected {}", why.kind()),
                EventKind::Waited(d) => format!("waited {d:?}"),
                _ => return,
            };
            log.lock()
                .unwrap()
                .push(format!("{} {}: {kind}", event.policy, event.name));
        })
        .runtime(clock.clone())
        .build()
        .unwrap();
    assert_eq!(limiter.name(), "inventory");
    let held = limiter.try_acquire().unwrap();
    assert_eq!(limiter.try_acquire().unwrap_err(), Rejected::BulkheadFull);
    // Admission::try_admit: "without counting a refusal as a rejection"; admit counts.
    assert!(limiter.try_admit().is_none());
    let refused = poll_once(Box::pin(limiter.admit(Wait::No)).as_mut());
    assert!(
        matches!(refused, Poll::Ready(Err(Rejected::BulkheadFull))),
        "{refused:?}"
    );
    let mut waiter = Box::pin(limiter.admit(Wait::Until(Deadline::none())));
    assert!(poll_once(waiter.as_mut()).is_pending());
    clock.advance(ms(40));
    held.ignore();
    let granted = poll_once(waiter.as_mut());
    assert!(matches!(granted, Poll::Ready(Ok(_))), "{granted:?}");
    let mut late = Box::pin(limiter.admit(Wait::Until(Deadline::none())));
    assert!(poll_once(late.as_mut()).is_pending());
    clock.advance(ms(100));
    let out = poll_once(late.as_mut());
    assert!(
        matches!(out, Poll::Ready(Err(Rejected::BulkheadFull))),
        "{out:?}"
    );
    drop(granted);
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "adaptive inventory: rejected bulkhead_full",
            "adaptive inventory: rejected bulkhead_full",
            "adaptive inventory: waited 40ms",
            "adaptive inventory: rejected bulkhead_full",
        ]
    );
    assert!(rec.samples().is_empty());
}

// Task: "many threads hammering one limiter while checking in_flight never exceeds the largest
// limit it had"; docs: "no permit is revoked", a cancelled call "frees the slot".
#[test]
fn threads_hammering_one_limiter_never_exceed_its_largest_limit_nor_leak_a_slot() {
    let clock = FakeClock::new();
    let algo = Tracked::new(
        Aimd::builder()
            .min_limit(1)
            .initial_limit(4)
            .max_limit(16)
            .backoff_ratio(0.5)
            .timeout(ms(1))
            .build()
            .unwrap(),
    );
    let (most, samples, drops) = (algo.most.clone(), algo.samples.clone(), algo.drops.clone());
    let limiter = AdaptiveLimiter::builder(algo)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let over = AtomicUsize::new(0);
    let (taught, failed) = (AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (limiter, clock, most, over, taught, failed) =
                (&limiter, &clock, &most, &over, &taught, &failed);
            s.spawn(move || {
                let mut rng = Rng::new(t + 100);
                let mut mine = Vec::new();
                let end = |p: tidewall::adaptive::AdaptivePermit<_, _>, draw: u64| match draw % 6 {
                    0 => {
                        p.success();
                        taught.fetch_add(1, SeqCst);
                    }
                    1 => {
                        p.failure();
                        taught.fetch_add(1, SeqCst);
                        failed.fetch_add(1, SeqCst);
                    }
                    2 => p.ignore(),
                    3 => drop(p),
                    4 => {
                        p.finish(Outcome::Success);
                        taught.fetch_add(1, SeqCst);
                    }
                    _ => {
                        p.finish(Outcome::Failure);
                        taught.fetch_add(1, SeqCst);
                        failed.fetch_add(1, SeqCst);
                    }
                };
                for _ in 0..20_000 {
                    if rng.below(2) == 0 {
                        if let Ok(p) = limiter.try_acquire() {
                            mine.push(p);
                        }
                    } else if let Some(p) = mine.pop() {
                        end(p, rng.next());
                    }
                    let n = limiter.in_flight();
                    if n > usize::try_from(most.load(SeqCst)).unwrap() {
                        over.fetch_add(1, SeqCst);
                    }
                    if t == 0 && rng.chance(20) {
                        clock.advance(Duration::from_micros(rng.below(3_000)));
                    }
                }
                for p in mine {
                    end(p, rng.next());
                }
            });
        }
    });
    assert_eq!(
        over.load(SeqCst),
        0,
        "in flight above the largest limit it ever had"
    );
    assert_eq!(limiter.in_flight(), 0);
    assert_eq!(
        samples.load(SeqCst),
        taught.load(SeqCst),
        "one sample per told outcome"
    );
    assert_eq!(drops.load(SeqCst), failed.load(SeqCst));
    let limit = limiter.limit();
    assert!((1..=16).contains(&limit));
    let all: Vec<_> = (0..limit).map(|_| limiter.try_acquire().unwrap()).collect();
    assert_eq!(
        limiter.try_acquire().unwrap_err(),
        Rejected::BulkheadFull,
        "exactly the limit is free at rest"
    );
    drop(all);
    assert_eq!((limiter.in_flight(), limiter.limit()), (0, limit));
}

// Task: "long idle gaps (hours of virtual time) between calls". Docs (Sample::rtt): "from
// admission to its end" — never from the last call, nor from the limiter's creation.
#[test]
fn long_idle_gaps_between_calls_teach_nothing_and_time_only_the_call() {
    let clock = FakeClock::new();
    let rec = Recorder::new(4);
    let limiter = AdaptiveLimiter::builder(rec.clone())
        .runtime(clock.clone())
        .build()
        .unwrap();
    let gaps = [Duration::from_millis(2_500), HOUR, 30 * DAY, CENTURY];
    for gap in gaps {
        clock.advance(gap);
        let p = limiter.try_acquire().unwrap();
        clock.advance(ms(5));
        p.success();
    }
    // A permit held across a century.
    let p = limiter.try_acquire().unwrap();
    clock.advance(CENTURY);
    p.failure();
    let samples = rec.samples();
    assert_eq!(samples[..4], [sample(ms(5), 1); 4]);
    assert_eq!(samples[4], dropped(CENTURY, 1));

    // Real algorithms on the same clock: after hours idle, a quick call is quick. AIMD from 2:
    // the call admitted second found 2 in use, half of 2, 3 and 4, not of 5.
    let grows = AdaptiveLimiter::builder(aimd(2))
        .runtime(clock.clone())
        .build()
        .unwrap();
    let mut limits = Vec::new();
    for gap in gaps {
        clock.advance(gap);
        let a = grows.try_acquire().unwrap();
        let b = grows.try_acquire().unwrap();
        clock.advance(ms(5));
        b.success();
        drop(a);
        limits.push(grows.limit());
    }
    assert_eq!(limits, [3, 4, 5, 5], "no idle gap counted as a slow call");
    held_across_gaps(
        &clock,
        Vegas::builder().initial_limit(10).build().unwrap(),
        gaps,
    );
    held_across_gaps(
        &clock,
        Gradient2::builder()
            .min_limit(2)
            .initial_limit(10)
            .build()
            .unwrap(),
        gaps,
    );
}

/// Every slot held across each gap, then finished (a quarter failed): the limit stays within
/// the algorithm's bounds and every slot comes back.
fn held_across_gaps<A: LimitAlgorithm + Send + 'static>(
    clock: &FakeClock,
    algo: A,
    gaps: [Duration; 4],
) {
    let (min, max) = algo.bounds();
    let limiter = AdaptiveLimiter::builder(algo)
        .runtime(clock.clone())
        .build()
        .unwrap();
    for gap in gaps {
        let held: Vec<_> = (0..limiter.limit())
            .map(|_| limiter.try_acquire().unwrap())
            .collect();
        clock.advance(gap);
        for (i, p) in held.into_iter().enumerate() {
            if i % 4 == 0 {
                p.failure();
            } else {
                p.success();
            }
        }
        assert!(
            (min..=max).contains(&limiter.limit()),
            "{}",
            limiter.limit()
        );
        assert_eq!(limiter.in_flight(), 0);
    }
}

// === a pipeline's bulkhead stage ===========================================================

// Docs (Admission::finish): "The pipeline ... call[s] it when the call ends: Outcome::Success,
// Outcome::Failure (the classifier's failures, timeouts, the deadline running out during the
// call) or Outcome::Ignored". Pipeline: "Holds a bulkhead slot for the whole call, retries
// included". Sample::rtt: "from admission to its end".
#[test]
fn pipeline_retries_and_attempt_timeouts_teach_one_sample_per_call() {
    common::on_tokio_current_thread(|rt| async move {
        let rec = Recorder::new(4);
        let limiter = AdaptiveLimiter::builder(rec.clone())
            .runtime(rt.clone())
            .build()
            .unwrap();
        let pipeline = Pipeline::builder()
            .runtime(rt.clone())
            .bulkhead(limiter.clone())
            .retry(
                Backoff::constant(ms(10))
                    .jitter(Jitter::None)
                    .max_attempts(3)
                    .build()
                    .unwrap(),
            )
            .attempt_timeout(ms(50))
            .build()
            .unwrap();
        // Two failures, then a success: one sample, a success, the whole call long.
        let calls = AtomicU32::new(0);
        let start = rt.now();
        let out = pipeline
            .call(|| {
                let n = calls.fetch_add(1, SeqCst) + 1;
                let rt = rt.clone();
                async move {
                    rt.sleep(ms(5)).await;
                    if n < 3 { Err("busy") } else { Ok(7) }
                }
            })
            .await;
        assert_eq!(out, Ok(7));
        assert_eq!(rt.now() - start, ms(35));
        assert_eq!(rec.samples(), [sample(ms(35), 1)]);
        // Every attempt times out: one sample, a drop.
        let start = rt.now();
        let out = pipeline
            .call(|| {
                let rt = rt.clone();
                async move {
                    rt.sleep(ms(100)).await;
                    Ok::<u32, &str>(1)
                }
            })
            .await;
        assert_eq!(out, Err(Error::TimedOut));
        assert_eq!(rt.now() - start, ms(170));
        assert_eq!(rec.samples()[1..], [dropped(ms(170), 1)]);
        // Retries exhausted on the operation's own error: a drop.
        let out = pipeline.call(|| async { Err::<u32, _>("down") }).await;
        assert_eq!(out, Err(Error::Inner("down")));
        assert_eq!(rec.samples()[2..], [dropped(ms(20), 1)]);
        assert_eq!(limiter.in_flight(), 0);
    });
}

// Docs (classify): "A result is never thrown away: an Ok value judged a failure is still
// returned as Ok ... and an Err judged a success is returned as Err." Admission::finish:
// "Outcome::Ignored (the classifier's verdict, or a later stage's refusal: the dependency was
// not called)".
#[test]
fn pipeline_classifier_verdicts_and_breaker_refusals_reach_the_limiter() {
    common::on_tokio_current_thread(|rt| async move {
        let rec = Recorder::new(4);
        let limiter = AdaptiveLimiter::builder(rec.clone())
            .runtime(rt.clone())
            .build()
            .unwrap();
        let judged = Pipeline::builder()
            .runtime(rt.clone())
            .bulkhead(limiter.clone())
            .retry(
                Backoff::constant(ms(10))
                    .jitter(Jitter::None)
                    .max_attempts(2)
                    .build()
                    .unwrap(),
            )
            .classify(|r: Result<&u32, &&str>| match r {
                Ok(404) => Verdict::Ignored,
                Ok(503) => Verdict::RetryableFailure,
                Ok(_) => Verdict::Success,
                Err(&"fine") => Verdict::Success,
                Err(&"bad") => Verdict::Failure,
                Err(_) => Verdict::RetryableFailure,
            })
            .build()
            .unwrap();
        let call = |result: Result<u32, &'static str>| {
            let rt = rt.clone();
            judged.call(move || {
                let rt = rt.clone();
                async move {
                    rt.sleep(ms(3)).await;
                    result
                }
            })
        };
        assert_eq!(call(Ok(404)).await, Ok(404));
        assert!(rec.samples().is_empty(), "Ignored teaches nothing");
        assert_eq!(call(Err("bad")).await, Err(Error::Inner("bad")));
        assert_eq!(
            rec.samples(),
            [dropped(ms(3), 1)],
            "Failure: no retry, a drop"
        );
        assert_eq!(call(Err("fine")).await, Err(Error::Inner("fine")));
        assert_eq!(
            rec.samples()[1..],
            [sample(ms(3), 1)],
            "an Err judged a success"
        );
        assert_eq!(call(Ok(503)).await, Ok(503), "returned as Ok");
        assert_eq!(
            rec.samples()[2..],
            [dropped(ms(16), 1)],
            "an Ok judged a failure, retried once: a drop"
        );

        // An open breaker refuses every attempt: the dependency was never called.
        let breaker = CircuitBreaker::builder()
            .runtime(rt.clone())
            .consecutive_failures(1)
            .build()
            .unwrap();
        breaker.force_open();
        let gated = Pipeline::builder()
            .runtime(rt.clone())
            .bulkhead(limiter.clone())
            .retry(
                Backoff::constant(ms(10))
                    .jitter(Jitter::None)
                    .max_attempts(3)
                    .build()
                    .unwrap(),
            )
            .max_retry_after(ms(20))
            .breaker(breaker)
            .build()
            .unwrap();
        let out = gated.call(|| async { Ok::<u32, &str>(1) }).await;
        assert!(
            matches!(out, Err(Error::Rejected(Rejected::CircuitOpen { .. }))),
            "{out:?}"
        );
        assert_eq!(rec.samples().len(), 3, "a later stage's refusal is ignored");
        assert_eq!(limiter.in_flight(), 0);
    });
}

// Docs (Admission::finish): failure includes "the deadline running out during the call".
// Pipeline: "a retry that cannot start before it is not started — the call returns the last
// failure instead." A caller refused in the queue was never admitted: nothing to teach.
#[test]
fn caller_deadlines_during_the_call_are_drops_and_queue_timeouts_teach_nothing() {
    common::on_tokio_current_thread(|rt| async move {
        let rec = Recorder::new(1);
        let limiter = AdaptiveLimiter::builder(rec.clone())
            .max_queue(2)
            .max_wait(None)
            .runtime(rt.clone())
            .build()
            .unwrap();
        let plain = Pipeline::builder()
            .runtime(rt.clone())
            .bulkhead(limiter.clone())
            .build()
            .unwrap();
        let slow = || {
            let rt = rt.clone();
            async move {
                rt.sleep(ms(200)).await;
                Ok::<u32, &str>(1)
            }
        };
        let out = plain.call_before(Deadline::after(&rt, ms(50)), slow).await;
        assert_eq!(out, Err(Error::Rejected(Rejected::DeadlineExceeded)));
        assert_eq!(rec.samples(), [dropped(ms(50), 1)]);

        let budgeted = Pipeline::builder()
            .runtime(rt.clone())
            .deadline(ms(80))
            .bulkhead(limiter.clone())
            .build()
            .unwrap();
        let out = budgeted.call(slow).await;
        assert_eq!(out, Err(Error::Rejected(Rejected::DeadlineExceeded)));
        assert_eq!(rec.samples()[1..], [dropped(ms(80), 1)]);

        // The deadline ends the call during a backoff: the last failure, a drop.
        let retried = Pipeline::builder()
            .runtime(rt.clone())
            .deadline(ms(50))
            .bulkhead(limiter.clone())
            .retry(
                Backoff::constant(ms(100))
                    .jitter(Jitter::None)
                    .max_attempts(3)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let out = retried
            .call(|| {
                let rt = rt.clone();
                async move {
                    rt.sleep(ms(5)).await;
                    Err::<u32, _>("busy")
                }
            })
            .await;
        assert_eq!(out, Err(Error::Inner("busy")));
        assert_eq!(rec.samples()[2..], [dropped(ms(5), 1)]);

        // Refused while queued, by the caller's deadline: never admitted.
        let held = limiter.try_acquire().unwrap();
        let start = rt.now();
        let out = plain
            .call_before(Deadline::after(&rt, ms(30)), || async {
                Ok::<u32, &str>(1)
            })
            .await;
        assert_eq!(out, Err(Error::Rejected(Rejected::DeadlineExceeded)));
        assert!(
            rt.now() - start <= ms(30),
            "never past the caller's deadline"
        );
        assert_eq!((limiter.queued(), rec.samples().len()), (0, 3));
        drop(held);

        // Refused by the limiter's own max_wait (default 1 s).
        let waits = AdaptiveLimiter::builder(rec.clone())
            .max_queue(1)
            .runtime(rt.clone())
            .build()
            .unwrap();
        let queued = Pipeline::builder()
            .runtime(rt.clone())
            .bulkhead(waits.clone())
            .build()
            .unwrap();
        let held = waits.try_acquire().unwrap();
        let start = rt.now();
        let out = queued.call(|| async { Ok::<u32, &str>(1) }).await;
        assert_eq!(out, Err(Error::Rejected(Rejected::BulkheadFull)));
        assert_eq!(rt.now() - start, Duration::from_secs(1));
        assert_eq!(rec.samples().len(), 3, "a refused caller teaches nothing");
        drop(held);
        assert_eq!((limiter.in_flight(), waits.in_flight()), (0, 0));
    });
}

// Docs (Admission): "Implemented by ... Option of any of them (None admits everything: a stage
// chosen at run time ...)"; NoWait: "It wraps any stage"; `rate_limit`: "a RateLimiter, or any
// other Admission stage"; `Guard`: "Held for the whole call"; `finish`: "The pipeline and the
// tower layer call it when the call ends". An adaptive limiter wrapped or placed in either
// admission slot must still hold its slot for the call and learn how it ended.
#[test]
fn a_wrapped_or_rate_limit_placed_adaptive_limiter_still_learns_every_call() {
    async fn check(
        what: &str,
        limiter: &AdaptiveLimiter<Recorder, Clocked<Tokio>>,
        rec: &Recorder,
        pipeline: impl AsyncFn(u32) -> (Result<u32, Error<&'static str>>, usize),
    ) {
        let (out, during) = pipeline(7).await;
        assert_eq!(out, Ok(7), "{what}");
        assert_eq!(during, 1, "{what}: the slot is held while the call runs");
        let (out, _) = pipeline(0).await;
        assert_eq!(out, Err(Error::Inner("down")), "{what}");
        assert_eq!(
            rec.samples(),
            [sample(ms(5), 1), dropped(ms(5), 1)],
            "{what}: one sample per call, the failure a drop"
        );
        assert_eq!(limiter.in_flight(), 0, "{what}");
    }
    common::on_tokio_current_thread(|rt| async move {
        let fresh = || {
            let rec = Recorder::new(4);
            let limiter = AdaptiveLimiter::builder(rec.clone())
                .runtime(rt.clone())
                .build()
                .unwrap();
            (rec, limiter)
        };
        let op = |limiter: AdaptiveLimiter<Recorder, Clocked<Tokio>>, x: u32| {
            let rt = rt.clone();
            move || {
                let (rt, limiter) = (rt.clone(), limiter.clone());
                async move {
                    let during = limiter.in_flight();
                    rt.sleep(ms(5)).await;
                    if x == 0 {
                        Err(("down", during))
                    } else {
                        Ok((x, during))
                    }
                }
            }
        };
        // Unwraps (value, in flight during the op) into (result, in flight).
        fn split(
            r: Result<(u32, usize), Error<(&'static str, usize)>>,
        ) -> (Result<u32, Error<&'static str>>, usize) {
            match r {
                Ok((x, d)) => (Ok(x), d),
                Err(Error::Inner((e, d))) => (Err(Error::Inner(e)), d),
                Err(other) => panic!("{other:?}"),
            }
        }
        let classify = |r: Result<&(u32, usize), &(&'static str, usize)>| {
            if r.is_ok() {
                Verdict::Success
            } else {
                Verdict::Failure
            }
        };

        let (rec, limiter) = fresh();
        let p = Pipeline::builder()
            .runtime(rt.clone())
            .bulkhead(Some(limiter.clone()))
            .classify(classify)
            .build()
            .unwrap();
        let l = limiter.clone();
        check("bulkhead(Some(limiter))", &limiter, &rec, async |x| {
            split(p.call(op(l.clone(), x)).await)
        })
        .await;

        let (rec, limiter) = fresh();
        let p = Pipeline::builder()
            .runtime(rt.clone())
            .bulkhead(tidewall::admission::NoWait(limiter.clone()))
            .classify(classify)
            .build()
            .unwrap();
        let l = limiter.clone();
        check("bulkhead(NoWait(limiter))", &limiter, &rec, async |x| {
            split(p.call(op(l.clone(), x)).await)
        })
        .await;

        let (rec, limiter) = fresh();
        let p = Pipeline::builder()
            .runtime(rt.clone())
            .rate_limit(limiter.clone())
            .classify(classify)
            .build()
            .unwrap();
        let l = limiter.clone();
        check("rate_limit(limiter)", &limiter, &rec, async |x| {
            split(p.call(op(l.clone(), x)).await)
        })
        .await;

        // Behind the tower layer, wrapped in Some.
        let (rec, limiter) = fresh();
        let sleeper = rt.clone();
        let l = limiter.clone();
        let inner = tower::service_fn(move |x: u32| {
            let (rt, limiter) = (sleeper.clone(), l.clone());
            async move {
                let during = limiter.in_flight();
                rt.sleep(ms(5)).await;
                if x == 0 {
                    Err(Error::Inner(("down", during)))
                } else {
                    Ok((x, during))
                }
            }
        });
        let svc = AdmitLayer::new(Some(limiter.clone()), AdmitMode::Reject).layer(inner);
        check("AdmitLayer(Some(limiter))", &limiter, &rec, async |x| {
            split(ready_and_call(&mut svc.clone(), x).await)
        })
        .await;
    });
}

// Docs (module example): "One call at a time uses less than half the limit: it says nothing
// about capacity." For every algorithm, on the limiter's virtual clock.
#[test]
fn sequential_calls_through_a_pipeline_leave_every_idle_limit_alone() {
    async fn run<A: LimitAlgorithm + Send + 'static>(rt: &Clocked<Tokio>, algo: A) -> u32 {
        let limiter = AdaptiveLimiter::builder(algo)
            .runtime(rt.clone())
            .build()
            .unwrap();
        let pipeline = Pipeline::builder()
            .runtime(rt.clone())
            .deadline(Duration::from_secs(1))
            .bulkhead(limiter.clone())
            .build()
            .unwrap();
        for i in 0..10u64 {
            let out = pipeline
                .call(|| {
                    let rt = rt.clone();
                    async move {
                        rt.sleep(ms(5 + 7 * i)).await;
                        Ok::<_, ()>(())
                    }
                })
                .await;
            assert_eq!(out, Ok(()));
            rt.sleep(HOUR).await;
        }
        limiter.limit()
    }
    common::on_tokio_current_thread(|rt| async move {
        assert_eq!(run(&rt, Aimd::builder().build().unwrap()).await, 20);
        assert_eq!(run(&rt, Vegas::builder().build().unwrap()).await, 20);
        assert_eq!(run(&rt, Gradient2::builder().build().unwrap()).await, 20);
    });
}

// Docs (builder `runtime`): "its clock times the calls"; the default runtime is tokio, whose
// clock is "virtual under paused tokio time" (Clock::now). The module example itself runs on
// paused time.
#[tokio::test(start_paused = true)]
async fn the_default_runtime_times_calls_on_paused_tokio_time() {
    let rec = Recorder::new(4);
    let limiter = AdaptiveLimiter::builder(rec.clone()).build().unwrap();
    let p = limiter.try_acquire().unwrap();
    tokio::time::sleep(ms(250)).await;
    p.success();
    assert_eq!(rec.samples(), [sample(ms(250), 1)]);
    // So a pipeline call slower than AIMD's timeout is a drop.
    let limiter = AdaptiveLimiter::builder(aimd(8)).build().unwrap();
    let pipeline = Pipeline::builder()
        .bulkhead(limiter.clone())
        .build()
        .unwrap();
    let out = pipeline
        .call(|| async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok::<_, ()>(())
        })
        .await;
    assert_eq!(out, Ok(()));
    assert_eq!(
        limiter.limit(),
        4,
        "2 s is slower than the 1 s timeout: 8 × 0.5"
    );
}

// Task: "permits dropped at seeded random points (the limit must not move on a cancelled call,
// and in_flight must return to 0)". Pipeline: "dropping the future releases everything it
// holds"; AdmitLayer's ResponseFuture: "dropping it drops the pending admission ... or the
// guard ...; nothing is held afterwards."
#[test]
fn cancelled_calls_never_move_a_real_limit_nor_keep_a_slot() {
    common::on_tokio_current_thread(|rt| async move {
        for seed in 0..12u64 {
            let mut rng = Rng::new(seed);
            let limiter = AdaptiveLimiter::builder(aimd(4))
                .max_queue(16)
                .max_wait(None)
                .runtime(rt.clone())
                .build()
                .unwrap();
            let pipeline = Pipeline::builder()
                .runtime(rt.clone())
                .bulkhead(limiter.clone())
                .retry(Backoff::constant(ms(3)).max_attempts(3).build().unwrap())
                .attempt_timeout(HOUR)
                .build()
                .unwrap();
            let calls = (0..12).map(|_| {
                let mut draw = rng.next();
                if draw.is_multiple_of(3) {
                    draw += 1; // never awaited to the end: always cancelled or cut
                }
                let rt2 = rt.clone();
                let pipeline = &pipeline;
                let rt = &rt;
                async move {
                    let out = maybe_cancel(
                        rt,
                        draw,
                        pipeline.call(move || {
                            let rt = rt2.clone();
                            async move {
                                rt.sleep(2 * HOUR).await;
                                Ok::<_, ()>(())
                            }
                        }),
                    )
                    .await;
                    assert!(out.is_none() || draw.is_multiple_of(3), "{out:?}");
                }
            });
            futures_util::future::join_all(calls).await;
            assert_eq!(
                (limiter.limit(), limiter.in_flight(), limiter.queued()),
                (4, 0, 0),
                "seed {seed}"
            );

            for mode in [AdmitMode::Reject, AdmitMode::WaitReady, AdmitMode::WaitCall] {
                let sleeper = rt.clone();
                // Ten hour-long steps: more than any cancellation's poll budget.
                let inner = tower::service_fn(move |x: u32| {
                    let rt = sleeper.clone();
                    async move {
                        for _ in 0..10 {
                            rt.sleep(HOUR).await;
                        }
                        Ok::<u32, Error<&str>>(x)
                    }
                });
                let svc = AdmitLayer::new(limiter.clone(), mode)
                    .runtime(rt.clone())
                    .layer(inner);
                let calls = (0..8u32).map(|i| {
                    let mut svc = svc.clone();
                    let draw = rng.next();
                    let rt = &rt;
                    async move {
                        let out = match draw % 2 {
                            0 => ready_and_call(&mut svc, i)
                                .timeout_on(rt, ms(draw % 50))
                                .await
                                .ok(),
                            _ => {
                                PollLimit {
                                    fut: Some(Box::pin(ready_and_call(&mut svc, i))),
                                    left: (draw >> 8) % 4,
                                }
                                .await
                            }
                        };
                        // Reject mode sheds what finds the limit full; nothing else ends.
                        if let Some(out) = out {
                            assert_eq!(
                                out,
                                Err(Error::Rejected(Rejected::BulkheadFull)),
                                "{mode:?}"
                            );
                        }
                    }
                });
                futures_util::future::join_all(calls).await;
                drop(svc);
                assert_eq!(
                    (limiter.limit(), limiter.in_flight(), limiter.queued()),
                    (4, 0, 0),
                    "seed {seed}, {mode:?}"
                );
            }
            // Permits dropped outright, at random.
            let held: Vec<_> = (0..4).map(|_| limiter.try_acquire().unwrap()).collect();
            drop(held);
            assert_eq!((limiter.limit(), limiter.in_flight()), (4, 0));
        }
    });
}

// === behind the tower AdmitLayer ===========================================================

// Docs (module): "behind AdmitLayer (an error is a failure, unless a layer inside refused the
// call)"; ResponseFuture: "the deadline running out is a failure"; AdmitMode::WaitReady: "the
// guard taken there (a bulkhead slot) is held until the call's response future completes";
// Sample::rtt: "from admission to its end".
#[test]
fn the_admit_layer_reports_how_each_call_ended_in_every_mode() {
    common::on_tokio_current_thread(|rt| async move {
        for mode in [AdmitMode::Reject, AdmitMode::WaitReady, AdmitMode::WaitCall] {
            let rec = Recorder::new(2);
            let limiter = AdaptiveLimiter::builder(rec.clone())
                .max_queue(4)
                .max_wait(None)
                .runtime(rt.clone())
                .build()
                .unwrap();
            let sleeper = rt.clone();
            let inner = tower::service_fn(move |x: u32| {
                let rt = sleeper.clone();
                async move {
                    rt.sleep(ms(5)).await;
                    if x == 0 {
                        Err(Error::Inner("down"))
                    } else {
                        Ok(x)
                    }
                }
            });
            let layer = AdmitLayer::new(limiter.clone(), mode).runtime(rt.clone());
            let mut svc = layer.clone().layer(inner.clone());
            assert_eq!(ready_and_call(&mut svc, 7).await, Ok(7), "{mode:?}");
            assert_eq!(rec.samples(), [sample(ms(5), 1)], "{mode:?}");
            assert_eq!(ready_and_call(&mut svc, 0).await, Err(Error::Inner("down")));
            assert_eq!(rec.samples()[1..], [dropped(ms(5), 1)], "{mode:?}");

            // A timeout inside: a failure.
            let mut timed = layer.clone().layer(
                TimeoutLayer::new(ms(2))
                    .runtime(rt.clone())
                    .layer(inner.clone()),
            );
            assert_eq!(ready_and_call(&mut timed, 7).await, Err(Error::TimedOut));
            assert_eq!(rec.samples()[2..], [dropped(ms(2), 1)], "{mode:?}");

            // A breaker inside refuses: the dependency was not called.
            let breaker = CircuitBreaker::builder()
                .runtime(rt.clone())
                .consecutive_failures(1)
                .build()
                .unwrap();
            breaker.force_open();
            let mut gated = layer
                .clone()
                .layer(BreakerLayer::new(breaker).layer(inner.clone()));
            let out = ready_and_call(&mut gated, 7).await;
            assert!(
                matches!(out, Err(Error::Rejected(Rejected::CircuitOpen { .. }))),
                "{mode:?}: {out:?}"
            );
            assert_eq!(
                rec.samples().len(),
                3,
                "{mode:?}: a refusal inside is ignored"
            );
            drop((gated, timed));

            // A response future dropped mid-call: nothing taught, nothing held.
            poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
            let mut pending = Box::pin(svc.call(7));
            assert!(poll_once(pending.as_mut()).is_pending());
            assert_eq!(limiter.in_flight(), 1, "{mode:?}");
            drop(pending);
            assert_eq!(
                (limiter.in_flight(), rec.samples().len()),
                (0, 3),
                "{mode:?}"
            );

            // Admission time: in poll_ready for WaitReady, in the call otherwise.
            poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
            rt.sleep(ms(30)).await;
            assert_eq!(svc.call(9).await, Ok(9));
            let rtt = if mode == AdmitMode::WaitReady {
                ms(35)
            } else {
                ms(5)
            };
            assert_eq!(rec.samples()[3..], [sample(rtt, 1)], "{mode:?}");

            // WaitReady: a guard taken in poll_ready and never used is freed with the service.
            let mut unused = svc.clone();
            poll_fn(|cx| unused.poll_ready(cx)).await.unwrap();
            drop(unused);
            assert_eq!(
                (limiter.in_flight(), rec.samples().len()),
                (0, 4),
                "{mode:?}"
            );

            // Full: Reject sheds with the stage's own reason and teaches nothing.
            let held: Vec<_> = (0..2).map(|_| limiter.try_acquire().unwrap()).collect();
            if mode == AdmitMode::Reject {
                assert_eq!(
                    ready_and_call(&mut svc, 7).await,
                    Err(Error::Rejected(Rejected::BulkheadFull))
                );
            } else {
                let mut waiting = Box::pin(ready_and_call(&mut svc, 7));
                assert!(poll_once(waiting.as_mut()).is_pending());
                drop(held);
                assert_eq!(waiting.await, Ok(7), "{mode:?}");
                assert_eq!(rec.samples().len(), 5, "{mode:?}");
                continue;
            }
            drop(held);
            assert_eq!((limiter.in_flight(), rec.samples().len()), (0, 4));
        }
    });
}

// === many tasks on every runtime ===========================================================

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    ignored: AtomicU64,
    refused: AtomicU64,
    cancelled: AtomicU64,
    over: AtomicU64,
    unheld: AtomicU64,
}

/// Eight tasks, forty calls each, through one pipeline whose bulkhead is an adaptive AIMD:
/// retries, attempt timeouts, a classifier with ignored results, hour-long idle gaps, and
/// cancellation at seeded random points. Every op checks that its call holds a slot and that
/// no more are in flight than the largest limit the algorithm ever gave; at the end every told
/// call (and only those) was one sample, and the slots are all back.
async fn storm<R: Runtime>(rt: Clocked<R>) {
    let algo = Tracked::new(
        Aimd::builder()
            .min_limit(1)
            .initial_limit(4)
            .max_limit(12)
            .backoff_ratio(0.5)
            .timeout(ms(40))
            .build()
            .unwrap(),
    );
    let (most, samples, drops) = (algo.most.clone(), algo.samples.clone(), algo.drops.clone());
    let limiter = AdaptiveLimiter::builder(algo)
        .max_queue(6)
        .max_wait(ms(30))
        .runtime(rt.clone())
        .build()
        .unwrap();
    let pipeline = Arc::new(
        Pipeline::builder()
            .runtime(rt.clone())
            .bulkhead(limiter.clone())
            .retry(
                Backoff::constant(ms(3))
                    .jitter(Jitter::None)
                    .max_attempts(2)
                    .build()
                    .unwrap(),
            )
            .attempt_timeout(ms(25))
            .classify(|r: Result<&u64, &&'static str>| match r {
                Ok(v) if v % 5 == 0 => Verdict::Ignored,
                Ok(_) => Verdict::Success,
                Err(_) => Verdict::RetryableFailure,
            })
            .build()
            .unwrap(),
    );
    let tally = Arc::new(Tally::default());
    let tasks: Vec<_> = (0..8u64)
        .map(|t| {
            let (rt, pipeline, limiter, most, tally) = (
                rt.clone(),
                Arc::clone(&pipeline),
                limiter.clone(),
                Arc::clone(&most),
                Arc::clone(&tally),
            );
            rt.clone().spawn(async move {
                let mut rng = Rng::new(0x5EED ^ t);
                for _ in 0..40 {
                    let work = rng.below(60);
                    let fail = rng.chance(4);
                    let value = rng.next();
                    let draw = rng.next();
                    let op = {
                        let (rt, limiter, most, tally) = (
                            rt.clone(),
                            limiter.clone(),
                            Arc::clone(&most),
                            Arc::clone(&tally),
                        );
                        move || {
                            let in_flight = limiter.in_flight();
                            if in_flight > usize::try_from(most.load(SeqCst)).unwrap() {
                                tally.over.fetch_add(1, SeqCst);
                            }
                            if in_flight == 0 {
                                tally.unheld.fetch_add(1, SeqCst);
                            }
                            let rt = rt.clone();
                            async move {
                                rt.sleep(ms(work)).await;
                                if fail { Err("boom") } else { Ok(value) }
                            }
                        }
                    };
                    let counter = match maybe_cancel(&rt, draw, pipeline.call(op)).await {
                        None => &tally.cancelled,
                        Some(Ok(v)) if v % 5 == 0 => &tally.ignored,
                        Some(Ok(_)) => &tally.ok,
                        Some(Err(Error::Inner(_) | Error::TimedOut)) => &tally.failed,
                        Some(Err(Error::Rejected(Rejected::BulkheadFull))) => &tally.refused,
                        Some(Err(other)) => panic!("unexpected {other:?}"),
                    };
                    counter.fetch_add(1, SeqCst);
                    if rng.chance(10) {
                        rt.sleep(HOUR).await;
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let t = &tally;
    assert_eq!(
        t.over.load(SeqCst),
        0,
        "in flight above the largest limit it had"
    );
    assert_eq!(t.unheld.load(SeqCst), 0, "an attempt ran without its slot");
    assert_eq!(
        (limiter.in_flight(), limiter.queued()),
        (0, 0),
        "a slot leaked"
    );
    let (ok, failed) = (t.ok.load(SeqCst), t.failed.load(SeqCst));
    assert!(ok > 0 && failed > 0 && t.cancelled.load(SeqCst) > 0);
    assert_eq!(
        samples.load(SeqCst),
        ok + failed,
        "one sample per success or failure, none for the {} ignored, {} refused, {} cancelled",
        t.ignored.load(SeqCst),
        t.refused.load(SeqCst),
        t.cancelled.load(SeqCst)
    );
    assert_eq!(drops.load(SeqCst), failed);
    let limit = limiter.limit();
    assert!((1..=12).contains(&limit), "{limit}");
    let all: Vec<_> = (0..limit).map(|_| limiter.try_acquire().unwrap()).collect();
    assert_eq!(limiter.try_acquire().unwrap_err(), Rejected::BulkheadFull);
    drop(all);
    assert_eq!((limiter.in_flight(), limiter.limit()), (0, limit));
}

#[test]
fn many_tasks_on_one_limiter_lose_and_leak_nothing_on_every_runtime() {
    on_every_runtime!(storm);
}
