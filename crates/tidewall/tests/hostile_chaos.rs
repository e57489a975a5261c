//! Hostile black-box tests of `tidewall::chaos`, written from its public documentation alone:
//! the documented decision rule re-implemented independently (SplitMix64, Lemire's
//! multiply-high) and checked against rates that need rounding; the part-per-million rounding
//! and its edges (the smallest accepted rate, the `f64` just below it, sums of exactly 1 as
//! kept and a part above); pipelines with deadline + bulkhead + retry + breaker + attempt
//! timeout around `chaos.wrap(op)`; tower stacks (ChaosLayer under AdmitLayer / TimeoutLayer /
//! RetryLayer, reserved readiness, clones sharing call numbers); cancellation at random points
//! (timers and bulkhead slots released); run-time switches racing callers on threads;
//! determinism on every runtime adapter; nesting; extreme latencies; and the metrics counter.
#![cfg(all(
    feature = "chaos",
    feature = "tokio",
    feature = "test-util",
    feature = "tower"
))]
// Rates read back are compared exactly: the docs promise the rate kept, to the part per million.
#![allow(clippy::float_cmp)]

#[cfg(all(feature = "smol", feature = "async-std"))]
mod common;

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tidewall::breaker::{CircuitBreaker, State};
use tidewall::bulkhead::Bulkhead;
use tidewall::chaos::{Chaos, ChaosLayer, Fault, InjectedFault, Injection};
use tidewall::pipeline::Pipeline;
use tidewall::rt::Clock;
use tidewall::testing::FakeClock;
use tidewall::tower::{AdmitLayer, AdmitMode, RetryLayer, TimeoutLayer};
use tidewall::{Backoff, ConfigError, Deadline, Error, Jitter, Rejected};
use tower::{BoxError, Service, ServiceExt as _};
use tower_layer::Layer as _;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn constant(delay: Duration, attempts: u32) -> Backoff {
    Backoff::constant(delay)
        .jitter(Jitter::None)
        .max_attempts(attempts)
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// An independent implementation of the documented decision rule
// ---------------------------------------------------------------------------------------------

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Output number `k` (counting from 1) of SplitMix64 started at `state`.
fn splitmix_output(state: u64, k: u64) -> u64 {
    mix(state.wrapping_add(k.wrapping_mul(GAMMA)))
}

/// Lemire's multiply-high reduction to `0..1_000_000`.
fn uniform(x: u64) -> u64 {
    u64::try_from((u128::from(x) * 1_000_000) >> 64).unwrap()
}

/// Rates in parts per million, in the order latency, error, hang, alter.
#[derive(Clone, Copy, Debug)]
struct Ppm {
    latency: u64,
    error: u64,
    hang: u64,
    alter: u64,
}

/// What call `n` gets, from the rule in the docs of `Chaos` ("Determinism").
fn reference(seed: u64, n: u64, p: Ppm, latency: Duration) -> (Option<Fault>, Option<Duration>) {
    let key = splitmix_output(seed, 1);
    let a = uniform(splitmix_output(key, n.wrapping_mul(2).wrapping_add(1)));
    let b = uniform(splitmix_output(key, n.wrapping_mul(2).wrapping_add(2)));
    let fault = if a < p.error {
        Some(Fault::Error)
    } else if a < p.error + p.hang {
        Some(Fault::Hang)
    } else if a < p.error + p.hang + p.alter {
        Some(Fault::Alter)
    } else {
        None
    };
    (fault, (b < p.latency).then_some(latency))
}

fn parts(i: Injection) -> (Option<Fault>, Option<Duration>) {
    (i.fault, i.latency)
}

// Doc (Chaos, Determinism): "Call number `n` ... gets the two uniform draws `a` and `b` in
// `0..1_000_000` made from outputs `2n + 1` and `2n + 2` of SplitMix64 started at the seed's
// own first output (each by Lemire's multiply-high reduction). With every rate kept as an
// integer `p` parts per million: ..." and (module docs) "rounded to the nearest part per
// million (0.1234567 is kept as 123,457 parts ...)".
#[test]
fn decisions_follow_the_documented_rule_with_rates_that_need_rounding() {
    let seeds = [0, 1, 7, 0xDEAD_BEEF, u64::MAX];
    // (asked, kept in ppm) for latency, error, hang, alter.
    let configs = [
        (
            [0.123_456_7, 0.000_001_4, 0.333_333_4, 0.1],
            [123_457, 1, 333_333, 100_000],
        ),
        (
            [0.999_999_6, 0.1 + 0.2, 0.000_001_6, 0.4],
            [1_000_000, 300_000, 2, 400_000],
        ),
        ([0.000_001, 0.999_999_4, 0.0, 0.0], [1, 999_999, 0, 0]),
        ([0.5, 0.0, 0.999_999_7, 0.0], [500_000, 0, 1_000_000, 0]),
    ];
    for seed in seeds {
        for (asked, kept) in configs {
            let chaos = Chaos::builder()
                .seed(seed)
                .latency(asked[0], ms(3))
                .error(asked[1])
                .hang(asked[2])
                .alter(asked[3])
                .build()
                .unwrap_or_else(|e| panic!("{asked:?}: {e}"));
            let p = Ppm {
                latency: kept[0],
                error: kept[1],
                hang: kept[2],
                alter: kept[3],
            };
            for n in (0..3_000).chain([u64::MAX / 3, u64::MAX - 1, u64::MAX]) {
                assert_eq!(
                    parts(chaos.decide_nth(n)),
                    reference(seed, n, p, ms(3)),
                    "seed {seed}, rates {asked:?}, call {n}"
                );
            }
            // And the calls draw the same, in order.
            for n in 0..500 {
                assert_eq!(parts(chaos.decide()), reference(seed, n, p, ms(3)));
            }
            assert_eq!(chaos.decided(), 500);
        }
    }
}

// Doc (module): "a rate is 0 or within [0.000001, 1], rounded to the nearest part per million
// (0.1234567 is kept as 123,457 parts, and [`Chaos::settings`] reports it so)".
#[test]
fn each_field_is_kept_to_the_nearest_part_per_million_and_reported_so() {
    let cases: [(f64, f64); 9] = [
        (0.123_456_7, 0.123_457),
        (0.000_001_4, 0.000_001),
        (0.000_001_6, 0.000_002),
        (0.000_001, 0.000_001),
        (0.999_999_4, 0.999_999),
        (0.999_999_6, 1.0),
        (0.1 + 0.2, 0.3),
        (0.000_002_500_1, 0.000_003),
        (0.999_999_999_999, 1.0),
    ];
    for (asked, kept) in cases {
        let s = Chaos::builder()
            .latency(asked, ms(1))
            .build()
            .unwrap()
            .settings();
        assert_eq!(s.latency_rate, kept, "latency {asked}");
        for which in 0..3 {
            let b = Chaos::builder();
            let b = match which {
                0 => b.error(asked),
                1 => b.hang(asked),
                _ => b.alter(asked),
            };
            let s = b.build().unwrap().settings();
            let got = [s.error_rate, s.hang_rate, s.alter_rate][which];
            assert_eq!(got, kept, "field {which}, rate {asked}");
            // The setters keep the same.
            let c = Chaos::builder().build().unwrap();
            match which {
                0 => c.set_error_rate(asked).unwrap(),
                1 => c.set_hang_rate(asked).unwrap(),
                _ => c.set_alter_rate(asked).unwrap(),
            }
            let s = c.settings();
            assert_eq!([s.error_rate, s.hang_rate, s.alter_rate][which], kept);
        }
    }
}

// Doc (build, Errors): "[`ConfigError::OutOfRange`] for one that is negative, above 1, or above 0
// but below 0.000001 (one part per million, the unit rates are kept in)" and "NotFinite for NaN
// or an infinity" — "never a panic".
#[test]
fn rates_outside_the_documented_range_are_refused_with_their_field_even_when_they_round_in() {
    let just_below_ppm = f64::from_bits(0.000_001f64.to_bits() - 1);
    let just_above_one = f64::from_bits(1.0f64.to_bits() + 1);
    let out_of_range = [
        just_below_ppm,     // rounds to 1 ppm, but is below 0.000001
        0.000_000_999_9,    // rounds to 1 ppm
        0.000_000_5,        // a tie at half a part
        0.000_000_4,        // rounds to 0
        f64::MIN_POSITIVE,  // the smallest normal
        5e-324,             // the smallest subnormal
        just_above_one,     // rounds to 10^6
        1.000_000_1,        // rounds to 10^6
        -f64::MIN_POSITIVE, // negative
        -1.0,
        f64::MAX,
        f64::MIN,
    ];
    let not_finite = [f64::NAN, -f64::NAN, f64::INFINITY, f64::NEG_INFINITY];
    for rate in out_of_range.into_iter().chain(not_finite) {
        let expect_field = |r: Result<(), ConfigError>, field: &'static str| {
            let err = r.unwrap_err();
            if rate.is_finite() {
                assert!(
                    matches!(err, ConfigError::OutOfRange { .. }),
                    "{field} {rate:e}: {err:?}"
                );
            } else {
                assert!(
                    matches!(err, ConfigError::NotFinite { .. }),
                    "{field} {rate:e}: {err:?}"
                );
            }
            assert_eq!(err.field(), Some(field), "{rate:e}: {err:?}");
        };
        let built = |b: tidewall::chaos::ChaosBuilder| b.build().map(|_| ());
        expect_field(built(Chaos::builder().error(rate)), "error");
        expect_field(built(Chaos::builder().hang(rate)), "hang");
        expect_field(built(Chaos::builder().alter(rate)), "alter");
        expect_field(built(Chaos::builder().latency(rate, ms(1))), "latency_rate");
        let c = Chaos::builder()
            .seed(1)
            .latency(0.25, ms(4))
            .error(0.25)
            .build()
            .unwrap();
        let before = c.settings();
        expect_field(c.set_error_rate(rate), "error");
        expect_field(c.set_hang_rate(rate), "hang");
        expect_field(c.set_alter_rate(rate), "alter");
        expect_field(c.set_latency(rate, ms(1)), "latency_rate");
        assert_eq!(c.settings(), before, "refused: kept");
    }
}

// Doc (build, Errors): "[`ConfigError::Conflict`] when the error, hang and alter rates (as kept,
// in parts per million) sum to more than 1." and (set_error_rate) "if with the hang and alter
// rates in force it sums past 1".
#[test]
fn the_exclusive_sum_is_judged_on_the_rates_as_kept() {
    // Floating sums a hair above 1 that are exactly 1 as kept.
    let ok = [
        (0.1, 0.2, 0.7),
        (0.7, 0.2, 0.1),
        (0.5, 0.500_000_4, 0.0),
        (0.333_333_4, 0.333_333_4, 0.333_333_4), // 999,999 parts
        (0.999_999_6, 0.0, 0.0),
        (0.0, 0.0, 1.0),
    ];
    for (e, h, a) in ok {
        let built = Chaos::builder().error(e).hang(h).alter(a).build();
        assert!(built.is_ok(), "{e} + {h} + {a}: {built:?}");
        let c = Chaos::builder().error(e).build().unwrap();
        c.set_hang_rate(h).unwrap();
        c.set_alter_rate(a).unwrap();
    }
    // A part (or two) above 1 as kept.
    let conflict = [
        (0.333_333_6, 0.333_333_6, 0.333_333_6), // 1,000,002 parts
        (1.0, 0.000_001, 0.0),
        (0.999_999_6, 0.0, 0.000_001), // 10^6 + 1 as kept
        (0.5, 0.5, 0.000_001_4),
    ];
    for (e, h, a) in conflict {
        let built = Chaos::builder().error(e).hang(h).alter(a).build();
        assert!(
            matches!(built, Err(ConfigError::Conflict { .. })),
            "{e} + {h} + {a}: {built:?}"
        );
        // Through the setters, one at a time: the one that crosses 1 is refused.
        let c = Chaos::builder().error(e).build().unwrap();
        let set = c.set_hang_rate(h).and_then(|()| c.set_alter_rate(a));
        assert!(
            matches!(set, Err(ConfigError::Conflict { .. })),
            "{e} + {h} + {a}: {set:?}"
        );
        let s = c.settings();
        let kept = [s.error_rate, s.hang_rate, s.alter_rate].map(|r| {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let ppm = (r * 1e6).round() as u64;
            ppm
        });
        assert!(kept.iter().sum::<u64>() <= 1_000_000, "{s:?}");
    }
}

// Doc (build, Errors): "[`ConfigError::Zero`] for a zero `latency` with a latency rate above 0,
// [`ConfigError::DurationOverflow`] for one beyond `u64` nanoseconds".
#[test]
fn latency_edges_are_typed_errors_or_kept_whole() {
    assert!(matches!(
        Chaos::builder().latency(0.000_001, Duration::ZERO).build(),
        Err(ConfigError::Zero { field: "latency" })
    ));
    assert!(matches!(
        Chaos::builder().latency(1.0, Duration::MAX).build(),
        Err(ConfigError::DurationOverflow { field: "latency" })
    ));
    let one_past = Duration::from_nanos(u64::MAX) + Duration::from_nanos(1);
    assert!(matches!(
        Chaos::builder().latency(1.0, one_past).build(),
        Err(ConfigError::DurationOverflow { field: "latency" })
    ));
    let shortest = Chaos::builder()
        .latency(1.0, Duration::from_nanos(1))
        .build()
        .unwrap();
    assert_eq!(
        shortest.decide().latency,
        Some(Duration::from_nanos(1)),
        "one nanosecond is a latency"
    );
    let c = Chaos::builder().build().unwrap();
    assert_eq!(
        c.set_latency(0.000_001, Duration::ZERO),
        Err(ConfigError::Zero { field: "latency" })
    );
    assert!(matches!(
        c.set_latency(1.0, Duration::MAX),
        Err(ConfigError::DurationOverflow { field: "latency" })
    ));
    c.set_latency(1.0, Duration::from_nanos(u64::MAX)).unwrap();
    assert_eq!(c.settings().latency, Duration::from_nanos(u64::MAX));
}

// Doc (Chaos): "a rate of `p` parts per million faults each call with probability `p / 10^6`".
// 200,000 seeded draws per rate, within 5σ of the binomial.
#[test]
fn observed_rates_at_the_edges_are_within_binomial_bounds() {
    const N: u64 = 200_000;
    for (seed, rate) in [(3, 0.000_05), (4, 0.999_95), (5, 0.5), (6, 0.000_001_4)] {
        let chaos = Chaos::builder().seed(seed).hang(rate).build().unwrap();
        let kept = chaos.settings().hang_rate;
        let hangs = (0..N)
            .filter(|&n| chaos.decide_nth(n).fault == Some(Fault::Hang))
            .count();
        #[allow(clippy::cast_precision_loss)]
        let (hangs, n) = (hangs as f64, N as f64);
        let sigma = (n * kept * (1.0 - kept)).sqrt();
        assert!(
            (hangs - n * kept).abs() <= 5.0 * sigma + 1.0,
            "rate {rate} (kept {kept}): {hangs} of {n}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Manual polling on a FakeClock
// ---------------------------------------------------------------------------------------------

fn poll_once<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
    f.poll(&mut Context::from_waker(Waker::noop()))
}

/// Polls `fut`, moving `clock` to its next timer while it is pending, until it is ready (or
/// `None`: pending with no timer left).
fn run<F: Future>(clock: &FakeClock, fut: F) -> Option<F::Output> {
    let mut fut = pin!(fut);
    for _ in 0..100_000 {
        if let Poll::Ready(out) = poll_once(fut.as_mut()) {
            return Some(out);
        }
        if !clock.advance_to_next_timer() {
            return None;
        }
    }
    panic!("no end after 100,000 steps");
}

/// What an operation's futures did: made, polled, completed, dropped.
#[derive(Default)]
struct Tracker {
    made: AtomicUsize,
    polled: AtomicUsize,
    completed: AtomicUsize,
    dropped: AtomicUsize,
}

impl Tracker {
    fn get(&self) -> (usize, usize, usize, usize) {
        (
            self.made.load(SeqCst),
            self.polled.load(SeqCst),
            self.completed.load(SeqCst),
            self.dropped.load(SeqCst),
        )
    }
}

/// An operation's future: works `work` on the clock, then succeeds with `value`.
/// Lazy, as an `async` block is: its work starts at its first poll.
struct Work {
    tracker: Arc<Tracker>,
    clock: FakeClock,
    work: Duration,
    sleep: Option<Pin<Box<tidewall::testing::FakeSleep>>>,
    value: u32,
}

impl Future for Work {
    type Output = Result<u32, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.tracker.polled.fetch_add(1, SeqCst);
        if self.sleep.is_none() {
            let deadline = self.clock.now() + self.work;
            self.sleep = Some(Box::pin(self.clock.sleep_until(deadline)));
        }
        match self.sleep.as_mut().unwrap().as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.tracker.completed.fetch_add(1, SeqCst);
                Poll::Ready(Ok(self.value))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        self.tracker.dropped.fetch_add(1, SeqCst);
    }
}

fn work(tracker: &Arc<Tracker>, clock: &FakeClock, d: Duration) -> impl FnMut() -> Work + use<> {
    let (tracker, clock) = (tracker.clone(), clock.clone());
    move || {
        tracker.made.fetch_add(1, SeqCst);
        Work {
            tracker: tracker.clone(),
            clock: clock.clone(),
            work: d,
            sleep: None,
            value: 7,
        }
    }
}

// Doc (Call): "latency: the call waits on the runtime's clock, then goes on" and "Cancel
// safety: dropping it drops the delay's timer and the operation's future; nothing else is held."
#[test]
fn dropping_a_call_during_its_latency_drops_the_timer_and_the_operation() {
    let clock = FakeClock::new();
    let tracker = Arc::new(Tracker::default());
    let chaos = Chaos::builder()
        .seed(1)
        .latency(1.0, ms(100))
        .runtime(clock.clone())
        .build()
        .unwrap();
    let mut op = work(&tracker, &clock, ms(10));
    let mut call = Box::pin(chaos.call(&mut op));
    assert!(poll_once(call.as_mut()).is_pending());
    clock.advance(ms(99));
    assert!(poll_once(call.as_mut()).is_pending());
    let (_, polled, _, _) = tracker.get();
    assert_eq!(polled, 0, "not polled before the delay is over");
    assert_eq!(clock.pending_timers(), 1, "only the delay's timer");
    drop(call);
    assert_eq!(clock.pending_timers(), 0, "the delay's timer dropped");
    let (made, _, _, dropped) = tracker.get();
    assert_eq!(made, dropped, "the operation's future (if made) dropped");
    assert_eq!(chaos.decided(), 1);
}

// Doc (Call): "hang: never ready, the operation never called (it registers no waker: only a
// deadline or timeout around it, which drops it, ends it)"; "latency ... then goes on (to its
// result or its fault)".
#[test]
fn a_delayed_hang_holds_no_timer_once_the_delay_is_over_and_never_calls_the_operation() {
    let clock = FakeClock::new();
    let tracker = Arc::new(Tracker::default());
    let chaos = Chaos::builder()
        .seed(2)
        .latency(1.0, ms(10))
        .hang(1.0)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let mut call = Box::pin(chaos.call(work(&tracker, &clock, ms(1))));
    assert!(poll_once(call.as_mut()).is_pending());
    clock.advance(ms(10));
    for _ in 0..1_000 {
        assert!(poll_once(call.as_mut()).is_pending());
    }
    assert_eq!(clock.pending_timers(), 0, "a hang registers nothing");
    clock.advance(Duration::from_secs(365 * 24 * 3600));
    assert!(poll_once(call.as_mut()).is_pending(), "a hang is forever");
    drop(call);
    assert_eq!(
        tracker.get(),
        (0, 0, 0, 0),
        "the operation was never called"
    );
}

// Doc (Chaos::set_enabled): "for the calls that start after this returns (a call already
// delayed or hanging keeps its fault)"; and the setters: "for the calls that start after this
// returns".
#[test]
fn a_call_already_delayed_keeps_its_fault_whatever_is_switched_meanwhile() {
    let clock = FakeClock::new();
    let tracker = Arc::new(Tracker::default());
    let chaos = Chaos::builder()
        .seed(3)
        .latency(1.0, ms(50))
        .error(1.0)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let mut op = work(&tracker, &clock, ms(0));
    let mut slow_failure = Box::pin(chaos.call(&mut op));
    assert!(poll_once(slow_failure.as_mut()).is_pending());
    clock.advance(ms(20));
    chaos.set_enabled(false);
    chaos.set_error_rate(0.0).unwrap();
    chaos.set_latency(0.0, Duration::ZERO).unwrap();
    assert!(poll_once(slow_failure.as_mut()).is_pending());
    clock.advance(ms(30));
    let Poll::Ready(Err(err)) = poll_once(slow_failure.as_mut()) else {
        panic!("the delayed call should fail at 50 ms");
    };
    assert_eq!(err.downcast_ref(), Some(&InjectedFault::Error));
    assert_eq!(tracker.get().0, 0, "its operation never called");
    // The next call runs untouched.
    let start = clock.now();
    let value = run(&clock, chaos.call(&mut op)).unwrap().unwrap();
    assert_eq!((value, clock.now() - start, chaos.decided()), (7, ms(0), 1));
}

// Doc (Call): "alter: the operation's error as it is, or for its success
// `Err(E::from(InjectedFault::Altered))` (the value is dropped)" + "Cancel safety: dropping it
// drops ... the operation's future".
#[test]
fn dropping_an_altered_call_while_its_operation_runs_drops_the_operation() {
    let clock = FakeClock::new();
    let tracker = Arc::new(Tracker::default());
    let chaos = Chaos::builder()
        .seed(4)
        .alter(1.0)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let mut op = work(&tracker, &clock, ms(100));
    let mut call = Box::pin(chaos.call(&mut op));
    assert!(poll_once(call.as_mut()).is_pending());
    clock.advance(ms(99));
    assert!(poll_once(call.as_mut()).is_pending());
    assert_eq!(tracker.get(), (1, 2, 0, 0), "the operation is running");
    drop(call);
    assert_eq!(tracker.get(), (1, 2, 0, 1), "its future dropped");
    assert_eq!(clock.pending_timers(), 0);
    // Run to the end: the operation completed, its value replaced.
    let start = clock.now();
    let altered = run(&clock, chaos.call(&mut op)).unwrap().unwrap_err();
    assert_eq!(altered.downcast_ref(), Some(&InjectedFault::Altered));
    assert_eq!(clock.now() - start, ms(100));
    assert_eq!(tracker.get(), (2, 4, 1, 2));
}

// Doc (Pipeline::call): "Cancel safety: dropping the future releases everything it holds
// (bulkhead slot, breaker permit ...) and drops the running attempt"; (Chaos::wrap) "Cancel
// safety: as call, per attempt". Dropped at seeded random points, under every kind of fault.
#[test]
fn pipelines_dropped_at_random_points_lose_no_slot_and_leave_no_timer() {
    let clock = FakeClock::new();
    let bulkhead = Bulkhead::builder(2).runtime(clock.clone()).build().unwrap();
    let breaker = CircuitBreaker::builder()
        .runtime(clock.clone())
        .consecutive_failures(1_000_000)
        .no_failure_rate()
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .runtime(clock.clone())
        .deadline(ms(400))
        .bulkhead(bulkhead.clone())
        .retry(constant(ms(5), 4))
        .breaker(breaker.clone())
        .attempt_timeout(ms(60))
        .build()
        .unwrap();
    let tracker = Arc::new(Tracker::default());
    let mut rng = 0x1234_5678_u64;
    let mut finished = 0;
    for trial in 0..300u64 {
        let chaos = Chaos::builder()
            .seed(trial)
            .latency(0.4, ms(30))
            .error(0.25)
            .hang(0.2)
            .alter(0.25)
            .runtime(clock.clone())
            .build()
            .unwrap();
        rng = mix(rng.wrapping_add(GAMMA));
        let steps = rng % 12;
        let mut op = work(&tracker, &clock, ms(20));
        {
            let mut fut = Box::pin(pipeline.call(chaos.wrap(&mut op)));
            for _ in 0..steps {
                if poll_once(fut.as_mut()).is_ready() {
                    finished += 1;
                    break;
                }
                if !clock.advance_to_next_timer() {
                    break;
                }
            }
        }
        assert_eq!(bulkhead.in_flight(), 0, "trial {trial}: a slot lost");
        assert_eq!(bulkhead.available(), 2, "trial {trial}");
        assert_eq!(clock.pending_timers(), 0, "trial {trial}: a timer left");
        let (made, _, _, dropped) = tracker.get();
        assert_eq!(made, dropped, "trial {trial}: an operation's future kept");
    }
    assert!(finished > 10, "some trials should finish: {finished}");
    assert_eq!(breaker.state(), State::Closed);
}

// ---------------------------------------------------------------------------------------------
// Pipelines around chaos.wrap(op)
// ---------------------------------------------------------------------------------------------

// Doc (module): "the retry stage retries injected errors, the breaker counts them, and the
// attempt timeout and the deadline end hangs and long delays"; (Pipeline::call, Errors)
// "[`Rejected::DeadlineExceeded`] when the deadline ended the call, an attempt still running
// included".
#[test]
fn a_hang_in_a_full_stack_ends_exactly_at_the_deadline_and_returns_the_slot() {
    let clock = FakeClock::new();
    let bulkhead = Bulkhead::builder(1).runtime(clock.clone()).build().unwrap();
    let breaker = CircuitBreaker::builder()
        .runtime(clock.clone())
        .consecutive_failures(100)
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .runtime(clock.clone())
        .deadline(ms(1_000))
        .bulkhead(bulkhead.clone())
        .retry(constant(ms(50), 10))
        .breaker(breaker)
        .attempt_timeout(ms(400))
        .build()
        .unwrap();
    let chaos = Chaos::builder()
        .seed(5)
        .hang(1.0)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let tracker = Arc::new(Tracker::default());
    let start = clock.now();
    let ended = run(
        &clock,
        pipeline.call(chaos.wrap(work(&tracker, &clock, ms(1)))),
    )
    .unwrap();
    assert!(
        matches!(ended, Err(Error::Rejected(Rejected::DeadlineExceeded))),
        "{ended:?}"
    );
    assert_eq!(clock.now() - start, ms(1_000), "exactly at the deadline");
    // Attempts at 0, 450 and 900 ms (each cut at 400 ms, the last by the deadline).
    assert_eq!(chaos.decided(), 3);
    assert_eq!(
        tracker.get(),
        (0, 0, 0, 0),
        "a hang never calls the operation"
    );
    assert_eq!(bulkhead.in_flight(), 0);
    assert_eq!(clock.pending_timers(), 0);

    // The caller's own, earlier deadline wins.
    let start = clock.now();
    let ended = run(
        &clock,
        pipeline.call_before(
            Deadline::after(&clock, ms(250)),
            chaos.wrap(work(&tracker, &clock, ms(1))),
        ),
    )
    .unwrap();
    assert!(
        matches!(ended, Err(Error::Rejected(Rejected::DeadlineExceeded))),
        "{ended:?}"
    );
    assert_eq!(clock.now() - start, ms(250));
    assert_eq!((chaos.decided(), bulkhead.in_flight()), (4, 0));
}

// Doc (build): "latency ... [`ConfigError::DurationOverflow`] for one beyond `u64`
// nanoseconds" — so u64::MAX nanoseconds (~584 years) is accepted, and (module) "the attempt
// timeout and the deadline end ... long delays".
#[test]
fn the_longest_latency_is_ended_by_a_deadline_without_a_panic() {
    let clock = FakeClock::new();
    let chaos = Chaos::builder()
        .seed(6)
        .latency(1.0, Duration::from_nanos(u64::MAX))
        .runtime(clock.clone())
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .runtime(clock.clone())
        .deadline(ms(1_000))
        .build()
        .unwrap();
    let tracker = Arc::new(Tracker::default());
    let start = clock.now();
    let ended = run(
        &clock,
        pipeline.call(chaos.wrap(work(&tracker, &clock, ms(1)))),
    )
    .unwrap();
    assert!(
        matches!(ended, Err(Error::Rejected(Rejected::DeadlineExceeded))),
        "{ended:?}"
    );
    assert_eq!(clock.now() - start, ms(1_000));
    assert_eq!(clock.pending_timers(), 0);
    let (made, polled, _, dropped) = tracker.get();
    assert_eq!(
        (polled, made),
        (0, dropped),
        "never polled, dropped if made"
    );
}

// Doc (module): "every attempt is a call, so the retry stage retries injected errors, the
// breaker counts them"; table: "alter | its success becomes InjectedFault::Altered; its errors
// pass | runs".
#[test]
fn a_breaker_opens_on_altered_outcomes_and_slow_failures() {
    let clock = FakeClock::new();
    for (alter, error) in [(1.0, 0.0), (0.0, 1.0)] {
        let breaker = CircuitBreaker::builder()
            .runtime(clock.clone())
            .consecutive_failures(3)
            .break_duration(Duration::from_secs(60))
            .build()
            .unwrap();
        let pipeline = Pipeline::builder()
            .runtime(clock.clone())
            .breaker(breaker.clone())
            .build()
            .unwrap();
        let chaos = Chaos::builder()
            .seed(7)
            .latency(1.0, ms(30))
            .alter(alter)
            .error(error)
            .runtime(clock.clone())
            .build()
            .unwrap();
        let tracker = Arc::new(Tracker::default());
        let mut op = work(&tracker, &clock, ms(5));
        for _ in 0..3 {
            let start = clock.now();
            let failed = run(&clock, pipeline.call(chaos.wrap(&mut op))).unwrap();
            let Err(Error::Inner(err)) = failed else {
                panic!("expected the injected fault, got {failed:?}");
            };
            let (expected, took) = if alter > 0.0 {
                (InjectedFault::Altered, ms(35))
            } else {
                (InjectedFault::Error, ms(30))
            };
            assert_eq!(err.downcast_ref(), Some(&expected));
            assert_eq!(clock.now() - start, took);
        }
        assert_eq!(breaker.state(), State::Open);
        let start = clock.now();
        let refused = run(&clock, pipeline.call(chaos.wrap(&mut op))).unwrap();
        assert!(
            matches!(refused, Err(Error::Rejected(Rejected::CircuitOpen { .. }))),
            "{refused:?}"
        );
        assert_eq!(clock.now() - start, Duration::ZERO);
        assert_eq!(chaos.decided(), 3, "refused calls draw nothing");
        let runs = if alter > 0.0 { 3 } else { 0 };
        assert_eq!(tracker.get().2, runs, "altered calls run their operation");
        // Let the breaker close again, for the next round.
        clock.advance(Duration::from_secs(60));
    }
}

/// What a pipeline with `attempts` attempts (backoff 10 ms, attempt timeout 100 ms) around
/// `chaos.wrap(op)` should do, from `decide_nth` alone, with an operation taking `work`: the
/// result (as text), the time taken, the attempts, the operation's runs.
fn predict(
    chaos: &Chaos<impl Clock>,
    first: u64,
    attempts: u64,
    work: Duration,
) -> (String, Duration, u64, u64) {
    let timeout = ms(100);
    let mut elapsed = Duration::ZERO;
    let mut runs = 0;
    for i in 0..attempts {
        if i > 0 {
            elapsed += ms(10);
        }
        let injection = chaos.decide_nth(first + i);
        let delay = injection.latency.unwrap_or_default();
        let (outcome, took) = match injection.fault {
            Some(Fault::Error) => ("Inner(Error)", delay),
            Some(Fault::Hang) => ("TimedOut", timeout),
            Some(Fault::Alter) => {
                runs += 1;
                ("Inner(Altered)", delay + work)
            }
            _ => {
                runs += 1;
                ("Ok(7)", delay + work)
            }
        };
        let (outcome, took) = if took >= timeout {
            ("TimedOut", timeout)
        } else {
            (outcome, took)
        };
        elapsed += took;
        if outcome == "Ok(7)" || i + 1 == attempts {
            return (outcome.to_string(), elapsed, i + 1, runs);
        }
    }
    unreachable!()
}

fn show(result: &Result<u32, Error<BoxError>>) -> String {
    match result {
        Ok(v) => format!("Ok({v})"),
        Err(Error::TimedOut) => "TimedOut".into(),
        Err(Error::Inner(e)) => match e.downcast_ref::<InjectedFault>() {
            Some(InjectedFault::Error) => "Inner(Error)".into(),
            Some(InjectedFault::Altered) => "Inner(Altered)".into(),
            _ => format!("Inner({e})"),
        },
        Err(other) => format!("{other:?}"),
    }
}

/// A retrying pipeline around every fault at once, 150 calls, each checked against the
/// prediction from `decide_nth`; returns the trace (to compare runtimes).
async fn seeded_pipeline_trace<R: Clock + Clone>(rt: R) -> Vec<(String, Duration, u64, u64)> {
    let chaos = Chaos::builder()
        .seed(77)
        .latency(0.3, ms(60))
        .error(0.2)
        .hang(0.1)
        .alter(0.2)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .retry(constant(ms(10), 4))
        .attempt_timeout(ms(100))
        .build()
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let mut trace = Vec::new();
    for _ in 0..150 {
        let first = chaos.decided();
        let expected = predict(&chaos, first, 4, ms(25));
        let before = runs.load(SeqCst);
        let start = rt.now();
        let (clock, counted) = (rt.clone(), runs.clone());
        let result = pipeline
            .call(chaos.wrap(move || {
                counted.fetch_add(1, SeqCst);
                let clock = clock.clone();
                async move {
                    clock.sleep(ms(25)).await;
                    Ok::<u32, BoxError>(7)
                }
            }))
            .await;
        let got = (
            show(&result),
            rt.now() - start,
            chaos.decided() - first,
            (runs.load(SeqCst) - before) as u64,
        );
        assert_eq!(got, expected, "call from number {first}");
        trace.push(got);
    }
    trace
}

// Doc (wrap): "each of its attempts a call through this handle: the innermost stage, so the
// pipeline's attempt timeout, breaker, retry and deadline all see the injected faults"; (Call)
// "error: ... the operation never called; hang: ... the operation never called; alter: ... runs";
// (Chaos) "the same on every runtime and machine".
#[test]
fn a_seeded_retrying_pipeline_does_what_decide_nth_predicts() {
    let clock = FakeClock::new();
    let trace = run(&clock, seeded_pipeline_trace(clock.clone())).unwrap();
    // The scenario exercises retries and failures, not only first-attempt successes.
    assert!(trace.iter().any(|t| t.2 > 1), "{trace:?}");
    assert!(trace.iter().any(|t| t.0 != "Ok(7)"), "{trace:?}");
}

#[cfg(all(feature = "smol", feature = "async-std"))]
#[test]
fn a_seeded_retrying_pipeline_replays_the_same_on_every_runtime_adapter() {
    let clock = FakeClock::new();
    let reference = run(&clock, seeded_pipeline_trace(clock.clone())).unwrap();
    let traces = [
        common::on_tokio_multi_thread(seeded_pipeline_trace),
        common::on_tokio_current_thread(seeded_pipeline_trace),
        common::on_smol_multi_thread(seeded_pipeline_trace),
        common::on_smol_single_thread(seeded_pipeline_trace),
        common::on_async_std(seeded_pipeline_trace),
    ];
    for (i, trace) in traces.iter().enumerate() {
        assert_eq!(trace, &reference, "adapter {i}");
    }
}

// Doc (module table): "alter | its success becomes [`InjectedFault::Altered`]; its errors pass |
// runs" — under a retry, the operation's own error passes as it is, and is retried.
#[test]
fn under_retry_an_altered_call_passes_the_operations_own_error_and_retries_it() {
    let clock = FakeClock::new();
    let chaos = Chaos::builder()
        .seed(8)
        .alter(1.0)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .runtime(clock.clone())
        .retry(constant(ms(10), 3))
        .build()
        .unwrap();
    let mut runs = 0;
    let result = run(
        &clock,
        pipeline.call(chaos.wrap(|| {
            runs += 1;
            let own = runs;
            async move { Err::<u32, BoxError>(format!("own {own}").into()) }
        })),
    )
    .unwrap();
    let Err(Error::Inner(err)) = result else {
        panic!("{result:?}");
    };
    assert_eq!(err.to_string(), "own 3", "the last attempt's own error");
    assert_eq!((runs, chaos.decided()), (3, 3));
}

// ---------------------------------------------------------------------------------------------
// Nesting
// ---------------------------------------------------------------------------------------------

/// A caller's error type.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Own {
    Injected(InjectedFault),
    Down,
}

impl From<InjectedFault> for Own {
    fn from(fault: InjectedFault) -> Self {
        Self::Injected(fault)
    }
}

// Doc (Chaos, Determinism): "Call number `n` (counting from 0, in the order calls draw: [`decided`]
// says how many have)"; table: alter "its errors pass"; error "not called".
#[test]
fn chaos_inside_chaos_on_one_handle_draws_outer_first_and_composes_the_faults() {
    let clock = FakeClock::new();
    let chaos = Chaos::builder()
        .seed(9)
        .latency(0.5, ms(10))
        .error(0.3)
        .alter(0.3)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let mut seen = [0usize; 4];
    for _ in 0..300 {
        let k = chaos.decided();
        let (outer, inner) = (chaos.decide_nth(k), chaos.decide_nth(k + 1));
        let inner_called = Arc::new(AtomicBool::new(false));
        let flag = inner_called.clone();
        let start = clock.now();
        let result = run(
            &clock,
            chaos.call(|| {
                flag.store(true, SeqCst);
                chaos.call(|| async { Ok::<u32, Own>(1) })
            }),
        )
        .unwrap();
        let outer_delay = outer.latency.unwrap_or_default();
        let (expected, took, draws) = match outer.fault {
            Some(Fault::Error) => (Err(Own::Injected(InjectedFault::Error)), outer_delay, 1),
            _ => {
                let inner_delay = inner.latency.unwrap_or_default();
                let inner_result = match inner.fault {
                    Some(Fault::Error) => Err(Own::Injected(InjectedFault::Error)),
                    Some(Fault::Alter) => Err(Own::Injected(InjectedFault::Altered)),
                    _ => Ok(1),
                };
                let result = match (outer.fault, inner_result) {
                    // The outer alter replaces a success; the inner error passes.
                    (Some(Fault::Alter), Ok(_)) => Err(Own::Injected(InjectedFault::Altered)),
                    (_, r) => r,
                };
                // A call's delay starts when it is drawn ("drawn, counted, and its timer
                // started"), and the outer call makes its operation's future (the inner call)
                // when it is created: the two delays overlap.
                (result, outer_delay.max(inner_delay), 2)
            }
        };
        assert_eq!(result, expected, "outer {outer:?}, inner {inner:?}");
        assert_eq!(
            clock.now() - start,
            took,
            "outer {outer:?}, inner {inner:?}"
        );
        assert_eq!(chaos.decided() - k, draws);
        assert_eq!(inner_called.load(SeqCst), draws == 2);
        seen[0] += usize::from(outer.fault == Some(Fault::Error));
        seen[1] += usize::from(outer.fault == Some(Fault::Alter));
        seen[2] += usize::from(draws == 2 && inner.fault == Some(Fault::Error));
        seen[3] += usize::from(outer.latency.is_some() && draws == 2 && inner.latency.is_some());
    }
    assert!(seen.iter().all(|&n| n > 10), "{seen:?}");
}

// Doc (InjectedFault): "and so does [`Error<E>`](crate::Error) when `E` does (as `Error::Inner`)"
// — a pipeline (with its own chaos) inside a chaos call.
#[test]
fn a_pipeline_with_chaos_inside_a_chaos_call() {
    let clock = FakeClock::new();
    let outer = Chaos::builder()
        .seed(10)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let inner = Chaos::builder()
        .seed(11)
        .error(1.0)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .runtime(clock.clone())
        .retry(constant(ms(10), 2))
        .attempt_timeout(ms(50))
        .build()
        .unwrap();
    let mut runs = 0;
    let result: Result<u32, Error<Own>> = run(
        &clock,
        outer.call(|| {
            pipeline.call(inner.wrap(|| {
                runs += 1;
                async { Err::<u32, Own>(Own::Down) }
            }))
        }),
    )
    .unwrap();
    assert_eq!(
        result,
        Err(Error::Inner(Own::Injected(InjectedFault::Error)))
    );
    assert_eq!((inner.decided(), outer.decided()), (2, 0));
    // The outer handle hangs: the inner pipeline is never called.
    outer.set_hang_rate(1.0).unwrap();
    let hung = Box::pin(outer.call(|| {
        pipeline.call(inner.wrap(|| {
            runs += 1;
            async { Ok::<u32, Own>(1) }
        }))
    }));
    assert!(
        run(&clock, hung).is_none(),
        "a hang with no timeout never ends"
    );
    assert_eq!((inner.decided(), outer.decided(), runs), (2, 1, 0));
}

// ---------------------------------------------------------------------------------------------
// Tower stacks
// ---------------------------------------------------------------------------------------------

/// Counts a service's calls.
#[derive(Clone, Default)]
struct Calls(Arc<AtomicUsize>);

impl Calls {
    fn get(&self) -> usize {
        self.0.load(SeqCst)
    }
}

/// An echo service that answers after `d` on `clock`, counting its calls.
fn slow_echo(
    calls: &Calls,
    clock: &FakeClock,
    d: Duration,
) -> impl Service<u32, Response = u32, Error = BoxError, Future: Send> + Clone + use<> {
    let (calls, clock) = (calls.clone(), clock.clone());
    tower::service_fn(move |x: u32| {
        calls.0.fetch_add(1, SeqCst);
        let sleep = clock.sleep_until(clock.now() + d);
        async move {
            sleep.await;
            Ok::<_, BoxError>(x)
        }
    })
}

// Doc (ChaosService): "A request given an error or a hang is not passed to the inner service (the
// readiness it reserved stays with it, for the next request)".
#[test]
fn readiness_reserved_by_the_inner_service_stays_for_the_next_request() {
    let clock = FakeClock::new();
    let bulkhead = Bulkhead::builder(1).runtime(clock.clone()).build().unwrap();
    let chaos = Chaos::builder()
        .seed(12)
        .error(1.0)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let calls = Calls::default();
    let inner = AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitReady)
        .runtime(clock.clone())
        .layer(slow_echo(&calls, &clock, ms(5)));
    let mut svc = ChaosLayer::new(chaos.clone()).layer(inner);
    let cx = &mut Context::from_waker(Waker::noop());
    assert!(matches!(svc.poll_ready(cx), Poll::Ready(Ok(()))));
    assert_eq!(
        bulkhead.available(),
        0,
        "the inner service reserved the slot"
    );
    let err = run(&clock, svc.call(1)).unwrap().unwrap_err();
    assert_eq!(err.downcast_ref(), Some(&InjectedFault::Error));
    assert_eq!(calls.get(), 0);
    // The reservation is still the service's: ready at once, no second slot needed.
    chaos.set_enabled(false);
    assert!(
        matches!(svc.poll_ready(cx), Poll::Ready(Ok(()))),
        "the reserved slot should serve the next request"
    );
    let start = clock.now();
    assert_eq!(run(&clock, svc.call(2)).unwrap().unwrap(), 2);
    assert_eq!((clock.now() - start, calls.get()), (ms(5), 1));
    assert_eq!(bulkhead.available(), 1, "released when the call completed");
    // A hang, then the service dropped: its reservation goes with it.
    chaos.set_enabled(true);
    chaos.set_error_rate(0.0).unwrap();
    chaos.set_hang_rate(1.0).unwrap();
    assert!(matches!(svc.poll_ready(cx), Poll::Ready(Ok(()))));
    let mut hung = Box::pin(svc.call(3));
    assert!(poll_once(hung.as_mut()).is_pending());
    drop(hung);
    drop(svc);
    assert_eq!(bulkhead.available(), 1);
    assert_eq!(calls.get(), 1);
}

// Doc (ChaosLayer): "Put it innermost ... a timeout ends its hangs and delays"; (ChaosService)
// "one given latency is passed at once and its response future first polled after the delay";
// "Cancel safety: dropping the response future drops the delay's timer and the inner response
// future".
#[test]
fn under_timeout_and_admission_a_delayed_request_is_passed_at_once_and_its_slot_returned() {
    let clock = FakeClock::new();
    let bulkhead = Bulkhead::builder(2).runtime(clock.clone()).build().unwrap();
    let chaos = Chaos::builder()
        .seed(13)
        .latency(1.0, ms(100))
        .runtime(clock.clone())
        .build()
        .unwrap();
    let calls = Calls::default();
    for mode in [AdmitMode::WaitCall, AdmitMode::WaitReady, AdmitMode::Reject] {
        let mut svc = TimeoutLayer::new(ms(50)).runtime(clock.clone()).layer(
            AdmitLayer::new(bulkhead.clone(), mode)
                .runtime(clock.clone())
                .layer(ChaosLayer::new(chaos.clone()).layer(slow_echo(&calls, &clock, ms(1)))),
        );
        let before = calls.get();
        let start = clock.now();
        let err = run(&clock, async {
            svc.ready().await?;
            svc.call(1).await
        })
        .unwrap()
        .unwrap_err();
        assert!(
            tidewall::tower::cause::<tidewall::time::Elapsed>(&*err).is_some()
                || err.to_string().contains("timed out"),
            "{mode:?}: {err}"
        );
        assert_eq!(clock.now() - start, ms(50), "{mode:?}");
        assert_eq!(calls.get() - before, 1, "{mode:?}: passed at once");
        assert_eq!(bulkhead.in_flight(), 0, "{mode:?}: slot returned");
        assert_eq!(clock.pending_timers(), 0, "{mode:?}: timers dropped");
    }
    // Without the timeout: the inner call made at once, its answer after the delay.
    let mut svc = ChaosLayer::new(chaos.clone()).layer(slow_echo(&calls, &clock, ms(1)));
    let before = calls.get();
    let cx = &mut Context::from_waker(Waker::noop());
    assert!(matches!(svc.poll_ready(cx), Poll::Ready(Ok(()))));
    let mut fut = Box::pin(svc.call(9));
    assert_eq!(calls.get() - before, 1, "passed at once");
    let start = clock.now();
    assert_eq!(run(&clock, fut.as_mut()).unwrap().unwrap(), 9);
    // The echo started its 1 ms when it was called (at once), so it is done by the delay's end.
    assert_eq!(clock.now() - start, ms(100));
}

// Doc (ChaosLayer): "a retry retries its errors"; (ChaosService example) an altered request "was
// called".
#[test]
fn a_retry_layer_over_altered_requests_calls_the_inner_service_each_attempt() {
    let clock = FakeClock::new();
    let chaos = Chaos::builder()
        .seed(14)
        .alter(1.0)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let calls = Calls::default();
    let mut svc = RetryLayer::new(constant(ms(10), 3))
        .runtime(clock.clone())
        .layer(ChaosLayer::new(chaos.clone()).layer(slow_echo(&calls, &clock, ms(5))));
    let start = clock.now();
    let result = run(&clock, async {
        svc.ready().await?;
        svc.call(4).await
    })
    .unwrap();
    let err = result.unwrap_err();
    assert!(
        tidewall::tower::cause::<InjectedFault>(&*err) == Some(&InjectedFault::Altered),
        "{err}"
    );
    assert_eq!((calls.get(), chaos.decided()), (3, 3));
    assert_eq!(clock.now() - start, ms(3 * 5 + 2 * 10));
}

// Doc (ChaosLayer): "Clones of the layer, and every service it makes, share the handle: its
// settings, its switch and its call numbers."
#[test]
fn clones_of_the_layer_and_its_services_share_one_sequence_of_call_numbers() {
    let clock = FakeClock::new();
    let chaos = Chaos::builder()
        .seed(15)
        .error(0.5)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let calls = Calls::default();
    let layer = ChaosLayer::new(chaos.clone());
    let a = layer.layer(slow_echo(&calls, &clock, ms(0)));
    let b = layer.clone().layer(slow_echo(&calls, &clock, ms(0)));
    let mut services = [a.clone(), b.clone(), a, b];
    for n in 0..400u64 {
        let svc = &mut services[(n % 4) as usize];
        let expected = chaos.decide_nth(n).fault;
        let result = run(&clock, async {
            svc.ready().await?;
            svc.call(1).await
        })
        .unwrap();
        match expected {
            Some(Fault::Error) => assert_eq!(
                result.unwrap_err().downcast_ref(),
                Some(&InjectedFault::Error),
                "call {n}"
            ),
            _ => assert_eq!(result.unwrap(), 1, "call {n}"),
        }
        if n == 200 {
            // Switched off through a clone of the layer: every service follows.
            layer.clone().chaos().set_enabled(false);
            services[1].chaos().set_enabled(true);
        }
    }
    assert_eq!(chaos.decided(), 400);
}

// ---------------------------------------------------------------------------------------------
// Run-time switches racing calls on threads
// ---------------------------------------------------------------------------------------------

// Doc (Chaos, When off): "A call through a handle that is disabled ... no number is drawn (the
// counter does not move)"; (decide) "A handle that is off draws nothing and returns
// [`Injection::NONE`]".
#[test]
fn toggling_the_switch_while_threads_call_counts_exactly_the_calls_that_drew() {
    let chaos = Chaos::builder().seed(16).error(1.0).build().unwrap();
    let stop = AtomicBool::new(false);
    let per_thread = 20_000;
    let injected: usize = std::thread::scope(|s| {
        s.spawn(|| {
            let mut on = false;
            while !stop.load(SeqCst) {
                chaos.set_enabled(on);
                on = !on;
            }
        });
        let workers: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0;
                    for _ in 0..per_thread {
                        let i = chaos.decide();
                        if i.is_none() {
                            continue;
                        }
                        assert_eq!((i.fault, i.latency), (Some(Fault::Error), None));
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let total = workers.into_iter().map(|w| w.join().unwrap()).sum();
        stop.store(true, SeqCst);
        total
    });
    assert_eq!(chaos.decided(), injected as u64);
}

// Doc (set_latency): "Delays a `rate` of the calls that start after this returns by `latency`";
// (handle.rs) "shared settings read lock-free on every call, changed by one writer at a time";
// (module) "a change is ... refused with its error and the settings in force stay". A decision
// must read one whole setting: never the new rate with the old length, or the reverse.
#[test]
fn latency_changes_racing_calls_are_seen_whole() {
    let chaos = Chaos::builder().seed(17).build().unwrap();
    let stop = AtomicBool::new(false);
    let allowed = [
        (0.0, Duration::ZERO),
        (1.0, ms(5)),
        (1.0, ms(7)),
        (0.000_001, ms(9)),
    ];
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut i = 0;
            while !stop.load(SeqCst) {
                let (rate, d) = allowed[i % allowed.len()];
                chaos.set_latency(rate, d).unwrap();
                // Refused changes leave the settings whole, too.
                assert!(chaos.set_latency(0.5, Duration::ZERO).is_err());
                i += 1;
            }
        });
        let workers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    for _ in 0..30_000 {
                        let i = chaos.decide();
                        assert!(
                            matches!(i.latency, None | Some(_) if i.latency != Some(Duration::ZERO)),
                            "{i:?}"
                        );
                        if let Some(d) = i.latency {
                            assert!([ms(5), ms(7), ms(9)].contains(&d), "{d:?}");
                        }
                        let s = chaos.settings();
                        assert!(
                            allowed.contains(&(s.latency_rate, s.latency)),
                            "a torn setting: {s:?}"
                        );
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        stop.store(true, SeqCst);
    });
}

// Doc (set_error_rate): "[`ConfigError::Conflict`] if with the hang and alter rates in force it
// sums past 1; the settings in force are then kept"; (build) "... sum to more than 1". Two
// writers racing must never leave (or show) a sum above 1.
#[test]
fn racing_writers_never_make_the_exclusive_rates_sum_past_one() {
    let chaos = Chaos::builder().seed(18).build().unwrap();
    let stop = AtomicBool::new(false);
    let (refused_e, refused_h) = std::thread::scope(|s| {
        let writer = |set: fn(&Chaos, f64) -> Result<(), ConfigError>| {
            let (chaos, stop) = (&chaos, &stop);
            move || {
                let mut refused = 0u64;
                let mut i = 0u64;
                while !stop.load(SeqCst) {
                    let rate = if i.is_multiple_of(2) { 0.6 } else { 0.0 };
                    match set(chaos, rate) {
                        Ok(()) => {}
                        Err(ConfigError::Conflict { .. }) => refused += 1,
                        Err(other) => panic!("{other:?}"),
                    }
                    i += 1;
                }
                refused
            }
        };
        let e = s.spawn(writer(|c, r| c.set_error_rate(r)));
        let h = s.spawn(writer(|c, r| c.set_hang_rate(r)));
        for _ in 0..100_000 {
            let s = chaos.settings();
            assert!(
                s.error_rate + s.hang_rate <= 1.0,
                "error {} + hang {} past 1",
                s.error_rate,
                s.hang_rate
            );
            let _ = chaos.decide();
        }
        stop.store(true, SeqCst);
        (e.join().unwrap(), h.join().unwrap())
    });
    let s = chaos.settings();
    assert!(s.error_rate + s.hang_rate <= 1.0, "{s:?}");
    // How many raises the race refused is not specified (only that none got through whole).
    let _ = (refused_e, refused_h);
}

// ---------------------------------------------------------------------------------------------
// Long idle gaps, counters
// ---------------------------------------------------------------------------------------------

// Doc (decided): "How many call numbers have been drawn: the next call is number `decided()`";
// (latency) "Delays a `rate` of calls by `latency` before they go on".
#[test]
fn after_a_long_idle_gap_numbering_and_delays_go_on_unchanged() {
    let clock = FakeClock::new();
    let chaos = Chaos::builder()
        .seed(19)
        .latency(0.5, ms(40))
        .error(0.5)
        .runtime(clock.clone())
        .build()
        .unwrap();
    for gap in [
        Duration::ZERO,
        Duration::from_secs(86_400 * 365 * 50),
        ms(1),
    ] {
        clock.advance(gap);
        for _ in 0..50 {
            let n = chaos.decided();
            let expected = chaos.decide_nth(n);
            let start = clock.now();
            let result = run(&clock, chaos.call(|| async { Ok::<u32, Own>(3) })).unwrap();
            assert_eq!(clock.now() - start, expected.latency.unwrap_or_default());
            let want = match expected.fault {
                Some(Fault::Error) => Err(Own::Injected(InjectedFault::Error)),
                _ => Ok(3),
            };
            assert_eq!(result, want, "call {n}");
            assert_eq!(chaos.decided(), n + 1);
        }
    }
}

// Doc (module): "With the `metrics` feature, each injection counts in
// `tidewall_chaos_injections_total`"; (Fault::as_str) "as the `fault` label of the injection
// counter"; (When off) "nothing is counted" — through the call, wrap and tower fronts.
#[cfg(feature = "metrics")]
#[test]
fn each_front_counts_its_injections_and_nothing_when_off() {
    use std::sync::{Mutex, OnceLock};

    use metrics::{Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder};
    use metrics::{SharedString, Unit};

    #[derive(Default)]
    struct Tally(std::sync::atomic::AtomicU64);
    impl CounterFn for Tally {
        fn increment(&self, value: u64) {
            self.0.fetch_add(value, SeqCst);
        }
        fn absolute(&self, value: u64) {
            self.0.store(value, SeqCst);
        }
    }
    type Entry = (String, Vec<String>, Arc<Tally>);
    #[derive(Default, Clone)]
    struct Rec(Arc<Mutex<Vec<Entry>>>);
    impl Recorder for Rec {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            let tally = Arc::new(Tally::default());
            let labels = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            self.0
                .lock()
                .unwrap()
                .push((key.name().to_string(), labels, tally.clone()));
            Counter::from_arc(tally)
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }
    static REC: OnceLock<Rec> = OnceLock::new();
    let rec = REC.get_or_init(|| {
        let rec = Rec::default();
        metrics::set_global_recorder(rec.clone()).unwrap();
        rec
    });
    let total = |fault: &str| -> u64 {
        rec.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(name, labels, _)| {
                name == "tidewall_chaos_injections_total"
                    && labels.iter().any(|l| l == "name=hostile-counted")
                    && labels.iter().any(|l| l == &format!("fault={fault}"))
            })
            .map(|(_, _, t)| t.0.load(SeqCst))
            .sum()
    };

    let clock = FakeClock::new();
    let chaos = Chaos::builder()
        .seed(20)
        .name("hostile-counted")
        .error(1.0)
        .runtime(clock.clone())
        .build()
        .unwrap();
    for _ in 0..5 {
        let _ = run(&clock, chaos.call(|| async { Ok::<u32, Own>(1) })).unwrap();
    }
    let pipeline = Pipeline::builder()
        .runtime(clock.clone())
        .retry(constant(ms(1), 2))
        .build()
        .unwrap();
    let _ = run(
        &clock,
        pipeline.call(chaos.wrap(|| async { Ok::<u32, Own>(1) })),
    );
    assert_eq!(total("error"), 7);
    chaos.set_error_rate(0.0).unwrap();
    chaos.set_latency(1.0, ms(2)).unwrap();
    chaos.set_alter_rate(1.0).unwrap();
    let calls = Calls::default();
    let mut svc = ChaosLayer::new(chaos.clone()).layer(slow_echo(&calls, &clock, ms(0)));
    for _ in 0..3 {
        let _ = run(&clock, async {
            svc.ready().await?;
            svc.call(1).await
        });
    }
    chaos.set_enabled(false);
    for _ in 0..4 {
        let _ = run(&clock, chaos.call(|| async { Ok::<u32, Own>(1) }));
    }
    assert_eq!(
        (
            total("error"),
            total("latency"),
            total("alter"),
            total("hang")
        ),
        (7, 3, 3, 0)
    );
    assert_eq!(chaos.decided(), 10);
}

/// A FakeClock that counts how often it is read and asked for a timer.
#[derive(Clone, Default)]
struct CountingClock {
    clock: FakeClock,
    reads: Arc<AtomicUsize>,
}

impl Clock for CountingClock {
    type Sleep = tidewall::testing::FakeSleep;

    fn now(&self) -> std::time::Instant {
        self.reads.fetch_add(1, SeqCst);
        self.clock.now()
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Self::Sleep {
        self.reads.fetch_add(1, SeqCst);
        self.clock.sleep_until(deadline)
    }
}

// Doc (Chaos, When off): "A call through a handle that is disabled or has every rate at 0 reads
// one atomic (relaxed) and runs as it would without chaos: no number is drawn (the counter does
// not move), no clock is read, nothing is counted." — through every front.
#[test]
fn a_handle_that_is_off_reads_no_clock_and_draws_nothing_through_every_front() {
    let clock = CountingClock::default();
    let disabled = Chaos::builder()
        .seed(21)
        .latency(1.0, ms(10))
        .error(0.5)
        .hang(0.5)
        .enabled(false)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let idle = Chaos::builder()
        .seed(21)
        .latency(0.0, ms(10))
        .runtime(clock.clone())
        .build()
        .unwrap();
    let pipeline = Pipeline::builder().build().unwrap();
    let calls = Calls::default();
    for chaos in [&disabled, &idle] {
        let mut svc = ChaosLayer::new(chaos.clone()).layer(slow_echo(&calls, &clock.clock, ms(0)));
        for _ in 0..50 {
            let one = run(&clock.clock, chaos.call(|| async { Ok::<u32, Own>(1) }));
            assert_eq!(one, Some(Ok(1)));
            let wrapped = run(
                &clock.clock,
                pipeline.call(chaos.wrap(|| async { Ok::<u32, Own>(2) })),
            );
            assert_eq!(wrapped, Some(Ok(2)));
            let served = run(&clock.clock, async {
                svc.ready().await?;
                svc.call(3).await
            });
            assert_eq!(served.unwrap().unwrap(), 3);
        }
        assert_eq!(chaos.decided(), 0);
    }
    assert_eq!(clock.reads.load(SeqCst), 0, "no clock is read");
    assert_eq!(calls.get(), 100);
}

// Doc (Chaos, Determinism): "Raising the error or latency rate at run time only adds faults:
// every call that failed (or was delayed) at the lower rate still does." — with the other
// exclusive rates in force, and the latency rate raised alongside.
#[test]
fn raising_error_and_latency_rates_beside_hang_and_alter_only_adds_faults() {
    let chaos = Chaos::builder()
        .seed(22)
        .latency(0.123_456_7, ms(2))
        .error(0.05)
        .hang(0.3)
        .alter(0.2)
        .build()
        .unwrap();
    let before: Vec<_> = (0..20_000).map(|n| chaos.decide_nth(n)).collect();
    chaos.set_latency(0.5, ms(2)).unwrap();
    chaos.set_error_rate(0.5).unwrap();
    let mut added = 0;
    for (n, low) in (0u64..).zip(&before) {
        let high = chaos.decide_nth(n);
        if low.fault == Some(Fault::Error) {
            assert_eq!(high.fault, Some(Fault::Error), "call {n}");
        }
        if low.latency.is_some() {
            assert_eq!(high.latency, Some(ms(2)), "call {n}");
        }
        added += usize::from(high.fault == Some(Fault::Error) && low.fault != Some(Fault::Error));
    }
    assert!(added > 5_000, "{added}");
    // A refused raise changes nothing.
    let kept = chaos.settings();
    assert!(chaos.set_error_rate(0.500_001).is_err());
    assert_eq!(chaos.settings(), kept);
    // Refused while disabled, too: validated against the settings in force.
    chaos.set_enabled(false);
    assert!(matches!(
        chaos.set_hang_rate(0.6),
        Err(ConfigError::Conflict { .. })
    ));
    assert_eq!(chaos.settings().hang_rate, 0.3);
}

// Doc (ChaosService): "one given latency is passed at once and its response future first polled
// after the delay"; (ChaosService example) an altered request "was called".
#[test]
fn a_delayed_altered_request_is_called_at_once_and_its_response_polled_only_after_the_delay() {
    let clock = FakeClock::new();
    let chaos = Chaos::builder()
        .seed(23)
        .latency(1.0, ms(40))
        .alter(1.0)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let tracker = Arc::new(Tracker::default());
    let mut make = work(&tracker, &clock, ms(15));
    let mut svc = ChaosLayer::new(chaos).layer(tower::service_fn(move |_: u32| make()));
    let cx = &mut Context::from_waker(Waker::noop());
    assert!(matches!(svc.poll_ready(cx), Poll::Ready(Ok(()))));
    let start = clock.now();
    let mut fut = Box::pin(svc.call(1));
    assert_eq!(tracker.get(), (1, 0, 0, 0), "called at once, not polled");
    assert!(poll_once(fut.as_mut()).is_pending());
    clock.advance(ms(39));
    assert!(poll_once(fut.as_mut()).is_pending());
    assert_eq!(tracker.get().1, 0, "not polled before the delay is over");
    let err = run(&clock, fut.as_mut()).unwrap().unwrap_err();
    assert_eq!(err.downcast_ref(), Some(&InjectedFault::Altered));
    assert_eq!(
        clock.now() - start,
        ms(40 + 15),
        "the delay, then the response"
    );
    drop(fut);
    let (made, _, completed, dropped) = tracker.get();
    assert_eq!((made, completed, dropped), (1, 1, 1));
}
