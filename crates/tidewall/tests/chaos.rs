//! Fault injection (feature `chaos`): the seeded decisions and their rates, run-time changes,
//! and each fault through every front (one call, a pipeline's operation, a tower service) in
//! virtual time, on every runtime adapter.
#![cfg(all(
    feature = "chaos",
    feature = "test-util",
    feature = "tower",
    feature = "smol",
    feature = "async-std"
))]
// Rates read back are compared exactly: a rate kept is its parts per million divided by 10^6,
// correctly rounded, so it is the very `f64` the literal of that rate is.
#![allow(clippy::float_cmp)]

mod common;

use common::ms;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::task::{Context, Poll};
use std::time::Duration;

use proptest::prelude::*;
use tidewall::breaker::CircuitBreaker;
use tidewall::chaos::{Chaos, ChaosLayer, Fault, InjectedFault, Injection};
use tidewall::pipeline::Pipeline;
use tidewall::rt::Runtime;
use tidewall::tower::TimeoutLayer;
use tidewall::{Backoff, ConfigError, Error, Jitter, Rejected};
use tidewall_core::rng::SplitMix64;
use tower::{BoxError, Service, ServiceExt as _};
use tower_layer::Layer as _;

const DECISIONS: u64 = 10_000;

/// Counts the calls of an operation (or a service) that really ran.
#[derive(Clone, Default)]
struct Calls(Arc<AtomicUsize>);

impl Calls {
    fn add(&self) {
        self.0.fetch_add(1, SeqCst);
    }

    fn get(&self) -> usize {
        self.0.load(SeqCst)
    }
}

/// An operation that counts its calls and succeeds with `value`.
fn counted<T: Clone>(
    calls: &Calls,
    value: T,
) -> impl FnMut() -> std::future::Ready<Result<T, BoxError>> {
    let calls = calls.clone();
    move || {
        calls.add();
        std::future::ready(Ok(value.clone()))
    }
}

fn seeded(seed: u64) -> tidewall::chaos::ChaosBuilder {
    Chaos::builder().seed(seed)
}

// ---------------------------------------------------------------------------------------------
// Decisions: determinism, the documented rule, rates
// ---------------------------------------------------------------------------------------------

#[test]
fn the_same_seed_gives_the_same_faults_and_another_seed_others() {
    let build = |seed| {
        seeded(seed)
            .latency(0.3, ms(5))
            .error(0.2)
            .hang(0.1)
            .alter(0.1)
            .build()
            .unwrap()
    };
    let (a, b, c) = (build(42), build(42), build(43));
    let draw = |chaos: &Chaos| (0..1_000).map(|_| chaos.decide()).collect::<Vec<_>>();
    let (from_a, from_b, from_c) = (draw(&a), draw(&b), draw(&c));
    assert_eq!(from_a, from_b);
    assert_ne!(from_a, from_c);
    let pure: Vec<_> = (0..1_000).map(|n| a.decide_nth(n)).collect();
    assert_eq!(pure, from_a, "decide_nth is what the n-th call gets");
    assert_eq!((a.seed(), c.seed()), (42, 43));
    // Nearby seeds are not the same stream shifted by a call.
    assert_ne!(from_a[1..], from_c[..999]);
    assert_ne!(from_c[1..], from_a[..999]);
}

#[test]
fn decisions_follow_the_documented_rule_exactly() {
    const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
    let (error, hang, alter, latency) = (150_000, 250_000, 100_000, 400_000);
    for seed in [0, 1, 42, u64::MAX] {
        let chaos = seeded(seed)
            .error(0.15)
            .hang(0.25)
            .alter(0.1)
            .latency(0.4, ms(7))
            .build()
            .unwrap();
        let key = SplitMix64::new(seed).next_u64();
        for n in (0..2_000).chain([u64::MAX / 2, u64::MAX - 1, u64::MAX]) {
            let mut rng = SplitMix64::new(key.wrapping_add(n.wrapping_mul(GAMMA.wrapping_mul(2))));
            let a = rng.below_or_equal(999_999);
            let b = rng.below_or_equal(999_999);
            let fault = if a < error {
                Some(Fault::Error)
            } else if a < error + hang {
                Some(Fault::Hang)
            } else if a < error + hang + alter {
                Some(Fault::Alter)
            } else {
                None
            };
            let expected = (fault, (b < latency).then_some(ms(7)));
            let got = chaos.decide_nth(n);
            assert_eq!((got.fault, got.latency), expected, "seed {seed}, call {n}");
        }
    }
}

/// `|observed - n·p| <= 5σ` for a binomial(n, p), σ = sqrt(n·p·(1 - p)) (plus one for the
/// count being whole). Seeded, so the result is the same on every run; 5σ leaves a seeded
/// stream that is merely unlucky no excuse and a biased one no place to hide.
fn assert_binomial(what: &str, observed: u64, n: u64, p: f64) {
    #[allow(clippy::cast_precision_loss)]
    let (observed, n) = (observed as f64, n as f64);
    let sigma = (n * p * (1.0 - p)).sqrt();
    let tolerance = 5.0 * sigma + 1.0;
    assert!(
        (observed - n * p).abs() <= tolerance,
        "{what}: {observed} of {n} at rate {p}: expected {} ± {tolerance:.1}",
        n * p
    );
}

#[test]
fn observed_rates_over_ten_thousand_calls_are_within_the_binomial_tolerance() {
    for seed in [1, 2, 3] {
        for (latency, error, hang, alter) in [
            (0.001, 0.01, 0.1, 0.3),
            (0.5, 0.5, 0.25, 0.25),
            (0.9, 0.05, 0.05, 0.9),
            (0.1, 0.333_333, 0.333_333, 0.333_334),
        ] {
            let chaos = seeded(seed)
                .latency(latency, ms(1))
                .error(error)
                .hang(hang)
                .alter(alter)
                .build()
                .unwrap();
            let mut counts = [0u64; 5]; // latency, error, hang, alter, latency with error
            for _ in 0..DECISIONS {
                let injection = chaos.decide();
                let delayed = injection.latency.is_some();
                counts[0] += u64::from(delayed);
                match injection.fault {
                    Some(Fault::Error) => {
                        counts[1] += 1;
                        counts[4] += u64::from(delayed);
                    }
                    Some(Fault::Hang) => counts[2] += 1,
                    Some(Fault::Alter) => counts[3] += 1,
                    _ => {}
                }
            }
            let label = format!("seed {seed}, rates {latency}/{error}/{hang}/{alter}");
            assert_binomial(&format!("latency, {label}"), counts[0], DECISIONS, latency);
            assert_binomial(&format!("error, {label}"), counts[1], DECISIONS, error);
            assert_binomial(&format!("hang, {label}"), counts[2], DECISIONS, hang);
            assert_binomial(&format!("alter, {label}"), counts[3], DECISIONS, alter);
            // Independent draws: latency and error together at the product of their rates.
            assert_binomial(
                &format!("latency and error, {label}"),
                counts[4],
                DECISIONS,
                latency * error,
            );
            assert_eq!(chaos.decided(), DECISIONS);
        }
    }
}

#[test]
fn rate_zero_never_injects_and_rate_one_always_does() {
    let always = [
        (seeded(5).error(1.0).build().unwrap(), Some(Fault::Error)),
        (seeded(5).hang(1.0).build().unwrap(), Some(Fault::Hang)),
        (seeded(5).alter(1.0).build().unwrap(), Some(Fault::Alter)),
    ];
    for (chaos, fault) in &always {
        for _ in 0..DECISIONS {
            let injection = chaos.decide();
            assert_eq!((injection.fault, injection.latency), (*fault, None));
        }
    }
    let delayed = seeded(5).latency(1.0, ms(3)).build().unwrap();
    for _ in 0..DECISIONS {
        assert_eq!(delayed.decide().latency, Some(ms(3)));
    }
    // Every rate but one at its most, that one at 0: it never appears.
    let no_error = seeded(6)
        .latency(1.0, ms(1))
        .hang(0.5)
        .alter(0.5)
        .build()
        .unwrap();
    let no_latency = seeded(6).error(1.0).build().unwrap();
    for _ in 0..DECISIONS {
        assert_ne!(no_error.decide().fault, Some(Fault::Error));
        assert_eq!(no_latency.decide().latency, None);
    }
}

#[test]
fn the_smallest_rate_is_one_part_per_million_and_below_it_is_refused() {
    let rare = seeded(11).error(0.000_001).build().unwrap();
    assert_eq!(rare.settings().error_rate, 0.000_001);
    let errors = (0..3_000_000u64)
        .filter(|&n| rare.decide_nth(n).fault == Some(Fault::Error))
        .count();
    assert!(
        (1..=12).contains(&errors),
        "{errors} errors in 3e6 calls at 1e-6"
    );
    assert!(matches!(
        seeded(11).error(0.000_000_9).build(),
        Err(ConfigError::OutOfRange { field: "error", .. })
    ));
}

#[test]
fn concurrent_callers_each_draw_their_own_number() {
    let chaos = seeded(8).error(0.3).latency(0.2, ms(1)).build().unwrap();
    let per_thread = 5_000u64;
    let drawn: Vec<Injection> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|_| s.spawn(|| (0..per_thread).map(|_| chaos.decide()).collect::<Vec<_>>()))
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    assert_eq!(chaos.decided(), 4 * per_thread);
    // The same multiset of decisions as calls 0..20_000 in order: no number drawn twice.
    let key = |i: &Injection| (i.fault.map(|f| f.as_str()), i.latency);
    let mut got: Vec<_> = drawn.iter().map(key).collect();
    let mut expected: Vec<_> = (0..4 * per_thread)
        .map(|n| chaos.decide_nth(n))
        .map(|i| key(&i))
        .collect();
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
}

// ---------------------------------------------------------------------------------------------
// The switch and run-time changes
// ---------------------------------------------------------------------------------------------

#[test]
fn a_disabled_or_idle_handle_never_injects_and_draws_no_number() {
    let disabled = seeded(1)
        .error(1.0)
        .latency(1.0, ms(1))
        .enabled(false)
        .build()
        .unwrap();
    let idle = seeded(1).build().unwrap();
    for chaos in [&disabled, &idle] {
        for n in 0..1_000 {
            assert!(chaos.decide().is_none());
            assert!(chaos.decide_nth(n).is_none());
        }
        assert_eq!(chaos.decided(), 0);
    }
    // Switched on, the first call is number 0.
    disabled.set_enabled(true);
    assert_eq!(disabled.decide(), disabled.decide_nth(0));
    assert_eq!(disabled.decided(), 1);
    // Off again: rates kept, nothing drawn.
    disabled.set_enabled(false);
    assert!(disabled.decide().is_none());
    assert_eq!(disabled.decided(), 1);
    assert_eq!(disabled.settings().error_rate, 1.0);
    assert!(!disabled.settings().enabled);
}

#[test]
fn a_disabled_handle_runs_every_operation_untouched_through_every_front() {
    let calls = Calls::default();
    let chaos = seeded(2).error(1.0).enabled(false).build().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        for _ in 0..100 {
            assert_eq!(chaos.call(counted(&calls, 7)).await.unwrap(), 7);
        }
        let pipeline = Pipeline::builder().build().unwrap();
        let mut op = counted(&calls, 8);
        for _ in 0..100 {
            assert_eq!(pipeline.call(chaos.wrap(&mut op)).await.unwrap(), 8);
        }
        let mut service = ChaosLayer::new(chaos.clone()).layer(echo(&calls));
        for x in 0..100 {
            assert_eq!(service.ready().await.unwrap().call(x).await.unwrap(), x);
        }
    });
    assert_eq!(calls.get(), 300);
    assert_eq!(chaos.decided(), 0);
}

#[test]
fn changes_take_effect_for_the_next_call() {
    let chaos = seeded(3).build().unwrap();
    assert!(chaos.decide().is_none());
    chaos.set_error_rate(1.0).unwrap();
    assert_eq!(chaos.decide().fault, Some(Fault::Error));
    chaos.set_error_rate(0.0).unwrap();
    chaos.set_hang_rate(1.0).unwrap();
    assert_eq!(chaos.decide().fault, Some(Fault::Hang));
    chaos.set_hang_rate(0.0).unwrap();
    chaos.set_alter_rate(1.0).unwrap();
    assert_eq!(chaos.decide().fault, Some(Fault::Alter));
    chaos.set_latency(1.0, ms(9)).unwrap();
    assert_eq!(chaos.decide().latency, Some(ms(9)));
    chaos.set_alter_rate(0.0).unwrap();
    chaos.set_latency(0.0, Duration::ZERO).unwrap();
    assert!(chaos.decide().is_none());
    assert_eq!(chaos.decided(), 4, "the idle calls drew nothing");
    // A clone shares the settings and the counter.
    let clone = chaos.clone();
    clone.set_error_rate(1.0).unwrap();
    assert_eq!(chaos.decide().fault, Some(Fault::Error));
    assert_eq!(clone.decided(), 5);
}

#[test]
fn raising_the_error_rate_keeps_every_earlier_error() {
    let chaos = seeded(4).error(0.1).build().unwrap();
    let at_low: Vec<_> = (0..5_000).map(|n| chaos.decide_nth(n).fault).collect();
    chaos.set_error_rate(0.4).unwrap();
    for (n, low) in (0..5_000).zip(at_low) {
        if low == Some(Fault::Error) {
            assert_eq!(chaos.decide_nth(n).fault, Some(Fault::Error), "call {n}");
        }
    }
}

#[test]
fn invalid_changes_are_refused_and_the_settings_in_force_stay() {
    let chaos = seeded(5)
        .latency(0.5, ms(20))
        .error(0.4)
        .hang(0.3)
        .alter(0.2)
        .build()
        .unwrap();
    let before = chaos.settings();
    let decisions: Vec<_> = (0..200).map(|n| chaos.decide_nth(n)).collect();
    let refused = [
        (chaos.set_error_rate(f64::NAN), "error"),
        (chaos.set_hang_rate(f64::INFINITY), "hang"),
        (chaos.set_alter_rate(-0.1), "alter"),
        (chaos.set_error_rate(1.5), "error"),
        (chaos.set_latency(f64::NEG_INFINITY, ms(1)), "latency_rate"),
        (chaos.set_latency(0.5, Duration::ZERO), "latency"),
        (chaos.set_latency(0.5, Duration::MAX), "latency"),
    ];
    for (result, field) in refused {
        let err = result.unwrap_err();
        assert_eq!(err.field(), Some(field), "{err}");
    }
    for sum_too_high in [
        chaos.set_error_rate(0.6),
        chaos.set_hang_rate(0.5),
        chaos.set_alter_rate(0.300_001),
    ] {
        assert!(
            matches!(sum_too_high, Err(ConfigError::Conflict { .. })),
            "{sum_too_high:?}"
        );
    }
    assert_eq!(chaos.settings(), before);
    assert!(
        decisions
            .iter()
            .copied()
            .eq((0..200).map(|n| chaos.decide_nth(n)))
    );
    // Exactly 1 in all is allowed.
    chaos.set_alter_rate(0.3).unwrap();
    assert_eq!(chaos.settings().alter_rate, 0.3);
}

#[test]
fn the_builder_refuses_each_bad_setting_with_its_field() {
    let cases = [
        (Chaos::builder().error(f64::NAN).build(), "error"),
        (Chaos::builder().hang(2.0).build(), "hang"),
        (Chaos::builder().alter(-1e-9).build(), "alter"),
        (
            Chaos::builder().latency(f64::INFINITY, ms(1)).build(),
            "latency_rate",
        ),
        (
            Chaos::builder().latency(0.1, Duration::ZERO).build(),
            "latency",
        ),
        (
            Chaos::builder()
                .latency(
                    0.1,
                    Duration::from_nanos(u64::MAX) + Duration::from_nanos(1),
                )
                .build(),
            "latency",
        ),
    ];
    for (result, field) in cases {
        assert_eq!(result.unwrap_err().field(), Some(field));
    }
    assert!(matches!(
        Chaos::builder()
            .error(0.5)
            .hang(0.5)
            .alter(0.000_001)
            .build(),
        Err(ConfigError::Conflict { .. })
    ));
    // The longest latency kept, and a zero latency at rate 0 (nothing to delay).
    let longest = Chaos::builder()
        .latency(1.0, Duration::from_nanos(u64::MAX))
        .build()
        .unwrap();
    assert_eq!(longest.settings().latency, Duration::from_nanos(u64::MAX));
    assert!(
        Chaos::builder()
            .latency(0.0, Duration::ZERO)
            .build()
            .is_ok()
    );
}

proptest! {
    /// Any `f64` for any rate, any latency: a handle or a typed error, never a panic; a handle
    /// keeps each rate in [0, 1] to the part per million asked and exclusive rates summing to
    /// at most 1; a change is applied whole or refused whole.
    #[test]
    fn any_rates_give_a_handle_or_a_typed_error(
        // Mostly rates that can build together, so that the changes below run often.
        rates in proptest::array::uniform4(prop_oneof![
            2 => any::<f64>(),
            6 => 0.0..=0.34f64,
            1 => Just(f64::NAN),
            1 => Just(f64::INFINITY),
            1 => Just(-0.0),
            1 => Just(1.0),
            1 => Just(1e-6),
            1 => Just(9e-7),
        ]),
        nanos in any::<u64>(),
        past_u64 in any::<bool>(),
        changes in proptest::collection::vec((0u8..4, any::<f64>(), 0.0..=1.0f64, any::<bool>()), 0..8),
    ) {
        let latency = if past_u64 { Duration::MAX } else { Duration::from_nanos(nanos) };
        let [latency_rate, error, hang, alter] = rates;
        let built = seeded(1)
            .latency(latency_rate, latency)
            .error(error)
            .hang(hang)
            .alter(alter)
            .build();
        let chaos = match built {
            Ok(chaos) => chaos,
            Err(err) => {
                prop_assert!(matches!(
                    err,
                    ConfigError::NotFinite { .. }
                        | ConfigError::OutOfRange { .. }
                        | ConfigError::Zero { field: "latency" }
                        | ConfigError::DurationOverflow { field: "latency" }
                        | ConfigError::Conflict { .. }
                ), "{err:?}");
                return Ok(());
            }
        };
        for (asked, kept) in [latency_rate, error, hang, alter].into_iter().zip(kept_rates(&chaos)) {
            prop_assert!((0.0..=1.0).contains(&asked));
            prop_assert!((asked * 1e6 - kept * 1e6).abs() <= 0.5 + 1e-9, "{asked} kept as {kept}");
        }
        check_invariants(&chaos)?;
        for (which, wild, tame, pick_wild) in changes {
            let rate = if pick_wild { wild } else { tame };
            let before = chaos.settings();
            let result = match which {
                0 => chaos.set_error_rate(rate),
                1 => chaos.set_hang_rate(rate),
                2 => chaos.set_alter_rate(rate),
                _ => chaos.set_latency(rate, latency),
            };
            if result.is_err() {
                prop_assert_eq!(chaos.settings(), before);
            }
            check_invariants(&chaos)?;
            let _ = chaos.decide();
        }
    }
}

/// The rates kept, in builder order: latency, error, hang, alter.
fn kept_rates(chaos: &Chaos) -> [f64; 4] {
    let s = chaos.settings();
    [s.latency_rate, s.error_rate, s.hang_rate, s.alter_rate]
}

fn check_invariants(chaos: &Chaos) -> Result<(), TestCaseError> {
    let kept = kept_rates(chaos);
    for rate in kept {
        prop_assert!((0.0..=1.0).contains(&rate));
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let ppm: u64 = kept[1..].iter().map(|r| (r * 1e6).round() as u64).sum();
    prop_assert!(ppm <= 1_000_000);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The faults in virtual time, one call and a pipeline's operation, on every runtime
// ---------------------------------------------------------------------------------------------

/// Latency waits exactly its length on the runtime's clock before the operation is polled,
/// and combines with an error (a slow failure) and with an altered outcome.
async fn latency_delays_by_exactly_its_length<R: Runtime>(rt: R) {
    let chaos = seeded(1)
        .latency(1.0, ms(250))
        .runtime(rt.clone())
        .build()
        .unwrap();
    let start = rt.now();
    let polled_at = Arc::new(std::sync::Mutex::new(None));
    let seen = polled_at.clone();
    let clock = rt.clone();
    let result = chaos
        .call(move || async move {
            *seen.lock().unwrap() = Some(clock.now());
            Ok::<_, BoxError>(5)
        })
        .await;
    assert_eq!(result.unwrap(), 5);
    assert_eq!(rt.now() - start, ms(250));
    assert_eq!(
        *polled_at.lock().unwrap(),
        Some(start + ms(250)),
        "first polled after the delay"
    );

    chaos.set_error_rate(1.0).unwrap();
    let calls = Calls::default();
    let start = rt.now();
    let slow_failure = chaos.call(counted(&calls, ())).await.unwrap_err();
    assert_eq!(slow_failure.downcast_ref(), Some(&InjectedFault::Error));
    assert_eq!((rt.now() - start, calls.get()), (ms(250), 0));

    chaos.set_error_rate(0.0).unwrap();
    chaos.set_alter_rate(1.0).unwrap();
    let start = rt.now();
    let altered = chaos.call(counted(&calls, ())).await.unwrap_err();
    assert_eq!(altered.downcast_ref(), Some(&InjectedFault::Altered));
    assert_eq!((rt.now() - start, calls.get()), (ms(250), 1));

    // Through a pipeline: the attempt waits the delay, inside the attempt timeout.
    chaos.set_alter_rate(0.0).unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .attempt_timeout(ms(300))
        .build()
        .unwrap();
    let start = rt.now();
    let value = pipeline.call(chaos.wrap(counted(&calls, 9))).await;
    assert_eq!(value.unwrap(), 9);
    assert_eq!((rt.now() - start, calls.get()), (ms(250), 2));
    // ... and a delay longer than the attempt timeout is cut by it.
    chaos.set_latency(1.0, ms(500)).unwrap();
    let start = rt.now();
    let cut = pipeline.call(chaos.wrap(counted(&calls, 9))).await;
    assert!(matches!(cut, Err(Error::TimedOut)), "{cut:?}");
    assert_eq!(rt.now() - start, ms(300));
}

#[test]
fn latency_delays_by_exactly_its_length_on_every_runtime() {
    on_every_runtime!(latency_delays_by_exactly_its_length);
}

/// A hang never completes: the pipeline's deadline ends the call, an attempt timeout ends
/// each attempt (and the retry stage retries it), and the operation never runs.
async fn a_hang_is_ended_by_a_deadline_or_an_attempt_timeout<R: Runtime>(rt: R) {
    let calls = Calls::default();
    let chaos = seeded(1).hang(1.0).runtime(rt.clone()).build().unwrap();
    let deadline = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(ms(1_000))
        .build()
        .unwrap();
    let start = rt.now();
    let ended = deadline.call(chaos.wrap(counted(&calls, ()))).await;
    assert!(
        matches!(ended, Err(Error::Rejected(Rejected::DeadlineExceeded))),
        "{ended:?}"
    );
    assert_eq!(rt.now() - start, ms(1_000));

    let per_attempt = Pipeline::builder()
        .runtime(rt.clone())
        .retry(constant(ms(10), 3))
        .attempt_timeout(ms(100))
        .build()
        .unwrap();
    let start = rt.now();
    let ended = per_attempt.call(chaos.wrap(counted(&calls, ()))).await;
    assert!(matches!(ended, Err(Error::TimedOut)), "{ended:?}");
    assert_eq!(rt.now() - start, ms(3 * 100 + 2 * 10));
    assert_eq!((calls.get(), chaos.decided()), (0, 4));
}

#[test]
fn a_hang_is_ended_by_a_deadline_or_an_attempt_timeout_on_every_runtime() {
    on_every_runtime!(a_hang_is_ended_by_a_deadline_or_an_attempt_timeout);
}

fn constant(delay: Duration, attempts: u32) -> Backoff {
    Backoff::constant(delay)
        .jitter(Jitter::None)
        .max_attempts(attempts)
        .build()
        .unwrap()
}

/// The retry stage retries injected errors: with a seeded error rate of one half, a call
/// takes exactly as many attempts as the seed's first calls say, and the operation runs only
/// for the attempt that was let through.
async fn the_retry_stage_retries_injected_errors<R: Runtime>(rt: R) {
    let chaos = seeded(21).error(0.5).runtime(rt.clone()).build().unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .retry(constant(ms(10), 20))
        .build()
        .unwrap();
    let calls = Calls::default();
    for call in 0..20 {
        let first = chaos.decided();
        let attempts = (first..)
            .position(|n| chaos.decide_nth(n).fault != Some(Fault::Error))
            .unwrap() as u64
            + 1;
        let start = rt.now();
        let value = pipeline.call(chaos.wrap(counted(&calls, call))).await;
        assert_eq!(value.unwrap(), call);
        assert_eq!(chaos.decided() - first, attempts);
        assert_eq!(
            rt.now() - start,
            ms(10) * u32::try_from(attempts - 1).unwrap()
        );
    }
    assert_eq!(calls.get(), 20, "the operation ran once per call");
}

#[test]
fn the_retry_stage_retries_injected_errors_on_every_runtime() {
    on_every_runtime!(the_retry_stage_retries_injected_errors);
}

/// A breaker counts injected errors as the service's and opens on them; the calls it then
/// refuses never reach the chaos stage (no number drawn).
async fn a_breaker_opens_on_injected_errors<R: Runtime>(rt: R) {
    let chaos = seeded(1).error(1.0).runtime(rt.clone()).build().unwrap();
    let breaker = CircuitBreaker::builder()
        .runtime(rt.clone())
        .consecutive_failures(3)
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .breaker(breaker.clone())
        .build()
        .unwrap();
    let calls = Calls::default();
    for _ in 0..3 {
        let failed = pipeline.call(chaos.wrap(counted(&calls, ()))).await;
        let Err(Error::Inner(err)) = failed else {
            panic!("expected the injected error, got {failed:?}");
        };
        assert_eq!(err.downcast_ref(), Some(&InjectedFault::Error));
    }
    let refused = pipeline.call(chaos.wrap(counted(&calls, ()))).await;
    assert!(
        matches!(refused, Err(Error::Rejected(Rejected::CircuitOpen { .. }))),
        "{refused:?}"
    );
    assert_eq!(breaker.state(), tidewall::breaker::State::Open);
    assert_eq!((calls.get(), chaos.decided()), (0, 3));
}

#[test]
fn a_breaker_opens_on_injected_errors_on_every_runtime() {
    on_every_runtime!(a_breaker_opens_on_injected_errors);
}

/// An altered outcome runs the operation and replaces its success; its own errors pass.
async fn an_altered_outcome_runs_the_operation<R: Runtime>(rt: R) {
    let chaos = seeded(1).alter(1.0).runtime(rt.clone()).build().unwrap();
    let calls = Calls::default();
    for _ in 0..5 {
        let altered = chaos.call(counted(&calls, "value")).await;
        assert_eq!(
            altered.unwrap_err().downcast_ref(),
            Some(&InjectedFault::Altered)
        );
    }
    assert_eq!(calls.get(), 5);
    let own = chaos.call(|| async { Err::<(), _>(Own("own")) }).await;
    assert_eq!(own, Err(Own("own")), "the operation's own error passes");
    assert_eq!(calls.get(), 5);
    // Through a pipeline without a retry: one attempt, one run, the altered error.
    let pipeline = Pipeline::builder().runtime(rt.clone()).build().unwrap();
    let result = pipeline.call(chaos.wrap(counted(&calls, 1))).await;
    assert!(matches!(result, Err(Error::Inner(ref e)) if e.is::<InjectedFault>()));
    assert_eq!(calls.get(), 6);
}

/// A caller's own error type, with `From<InjectedFault>`.
#[derive(Debug, PartialEq)]
struct Own(&'static str);

impl From<InjectedFault> for Own {
    fn from(fault: InjectedFault) -> Self {
        Self(fault.kind())
    }
}

#[test]
fn an_altered_outcome_runs_the_operation_on_every_runtime() {
    on_every_runtime!(an_altered_outcome_runs_the_operation);
}

// ---------------------------------------------------------------------------------------------
// The tower front
// ---------------------------------------------------------------------------------------------

/// A service that counts its calls and echoes its request.
fn echo(
    calls: &Calls,
) -> impl Service<
    u32,
    Response = u32,
    Error = BoxError,
    Future = std::future::Ready<Result<u32, BoxError>>,
> + Clone {
    let calls = calls.clone();
    tower::service_fn(move |x: u32| {
        calls.add();
        std::future::ready(Ok::<_, BoxError>(x))
    })
}

async fn the_layer_injects_every_fault<R: Runtime>(rt: R) {
    let calls = Calls::default();
    let chaos = seeded(1).runtime(rt.clone()).build().unwrap();
    let layer = ChaosLayer::new(chaos.clone());
    let mut service = layer.layer(echo(&calls));

    // Off: the inner service answers.
    assert_eq!(service.ready().await.unwrap().call(1).await.unwrap(), 1);

    // Error: not passed on.
    chaos.set_error_rate(1.0).unwrap();
    let err = service.ready().await.unwrap().call(2).await.unwrap_err();
    assert_eq!(err.downcast_ref(), Some(&InjectedFault::Error));
    assert_eq!(calls.get(), 1);

    // Latency and error: a slow failure, measured exactly.
    chaos.set_latency(1.0, ms(40)).unwrap();
    let start = rt.now();
    let err = service.ready().await.unwrap().call(3).await.unwrap_err();
    assert_eq!(err.downcast_ref(), Some(&InjectedFault::Error));
    assert_eq!(rt.now() - start, ms(40));

    // Alter: passed on, its answer replaced.
    chaos.set_error_rate(0.0).unwrap();
    chaos.set_alter_rate(1.0).unwrap();
    let start = rt.now();
    let err = service.ready().await.unwrap().call(4).await.unwrap_err();
    assert_eq!(err.downcast_ref(), Some(&InjectedFault::Altered));
    assert_eq!((rt.now() - start, calls.get()), (ms(40), 2));

    // Hang: ended by a timeout layer above it, the inner service never called.
    chaos.set_alter_rate(0.0).unwrap();
    chaos.set_latency(0.0, Duration::ZERO).unwrap();
    chaos.set_hang_rate(1.0).unwrap();
    let mut bounded = TimeoutLayer::new(ms(150))
        .runtime(rt.clone())
        .layer(layer.layer(echo(&calls)));
    let start = rt.now();
    let err = bounded.ready().await.unwrap().call(5).await.unwrap_err();
    assert!(
        tidewall::tower::cause::<tidewall::time::Elapsed>(&*err).is_some(),
        "{err}"
    );
    assert_eq!((rt.now() - start, calls.get()), (ms(150), 2));

    // Latency alone, on a clone of the service: it shares the handle.
    chaos.set_hang_rate(0.0).unwrap();
    chaos.set_latency(1.0, ms(70)).unwrap();
    let mut clone = service.clone();
    let start = rt.now();
    assert_eq!(clone.ready().await.unwrap().call(6).await.unwrap(), 6);
    assert_eq!((rt.now() - start, calls.get()), (ms(70), 3));
    // Every call but the first (through a handle that was idle) drew a number.
    assert_eq!(chaos.decided(), 5);
}

#[test]
fn the_layer_injects_every_fault_on_every_runtime() {
    on_every_runtime!(the_layer_injects_every_fault);
}

/// The handle, the layer, the service (axum needs `Sync`) and a call's future (spawnable) can
/// cross threads.
#[test]
fn the_types_cross_threads() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let calls = Calls::default();
    let chaos = seeded(1).build().unwrap();
    let layer = ChaosLayer::new(chaos.clone());
    let service = layer.layer(echo(&calls));
    send_sync(&chaos);
    send_sync(&layer);
    send_sync(&service);
    send(&chaos.call(counted(&calls, 1)));
}

/// `poll_ready` is the inner service's: its readiness and its errors, untouched.
#[test]
fn the_service_is_ready_when_its_inner_service_is() {
    struct Gate(Option<Result<(), &'static str>>);

    impl Service<u32> for Gate {
        type Response = u32;
        type Error = Own;
        type Future = std::future::Ready<Result<u32, Own>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Own>> {
            match self.0 {
                None => Poll::Pending,
                Some(ready) => Poll::Ready(ready.map_err(Own)),
            }
        }

        fn call(&mut self, x: u32) -> Self::Future {
            std::future::ready(Ok(x))
        }
    }

    let chaos = seeded(1).error(1.0).build().unwrap();
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    let mut pending = ChaosLayer::new(chaos.clone()).layer(Gate(None));
    assert!(pending.poll_ready(&mut cx).is_pending());
    let mut failing = ChaosLayer::new(chaos.clone()).layer(Gate(Some(Err("down"))));
    assert_eq!(failing.poll_ready(&mut cx), Poll::Ready(Err(Own("down"))));
    let mut open = ChaosLayer::new(chaos.clone()).layer(Gate(Some(Ok(()))));
    assert_eq!(open.poll_ready(&mut cx), Poll::Ready(Ok(())));
    let mut call = std::pin::pin!(open.call(1));
    assert_eq!(call.as_mut().poll(&mut cx), Poll::Ready(Err(Own("error"))));
    assert_eq!(chaos.decided(), 1, "readiness draws nothing");
}

// ---------------------------------------------------------------------------------------------
// Telemetry
// ---------------------------------------------------------------------------------------------

#[cfg(feature = "metrics")]
#[test]
fn each_injection_is_counted_by_its_fault() {
    let counters = common::tally::Counters::installed();
    let chaos = seeded(12)
        .name("chaos-counted")
        .latency(0.5, ms(1))
        .error(0.2)
        .hang(0.2)
        .alter(0.2)
        .build()
        .unwrap();
    let mut expected = [0u64; 4];
    for _ in 0..1_000 {
        let injection = chaos.decide();
        expected[0] += u64::from(injection.latency.is_some());
        match injection.fault {
            Some(Fault::Error) => expected[1] += 1,
            Some(Fault::Hang) => expected[2] += 1,
            Some(Fault::Alter) => expected[3] += 1,
            _ => {}
        }
    }
    chaos.set_enabled(false);
    let _ = chaos.decide();
    for (fault, expected) in ["latency", "error", "hang", "alter"]
        .into_iter()
        .zip(expected)
    {
        let counted = counters.total(
            "tidewall_chaos_injections_total",
            &[
                "policy=chaos",
                "name=chaos-counted",
                &format!("fault={fault}"),
            ],
        );
        assert_eq!(counted, expected, "{fault}");
        assert!(expected > 100, "{fault}: {expected}");
    }
}
