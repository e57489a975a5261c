//! Hostile black-box tests of the circuit breaker's full time buckets, written from the
//! rustdoc alone (`Window::Time`, `BreakerPolicyBuilder::minimum_calls`, the module docs of
//! `tidewall::breaker`, `Bucket::add_or_halve`, `Counts`, `RetryBudget`):
//!
//! * `Window::Time`: "A bucket holds at most 65,535 calls: the call that finds it full first
//!   halves its counts (each rounded down), so it counts every call at any rate, and within a
//!   bucket that filled, later calls weigh more (each halving halves the weight of the calls
//!   before it). Past 32,767 calls, then, a bucket holds between 32,768 and 65,535 of them."
//! * `tidewall::breaker`: "the call that finds it full halves its counts first, so every call
//!   still counts and the bucket's rates follow its latest calls (a failure storm that starts
//!   in a full bucket shows within it)."
//! * `minimum_calls`: "A time bucket that fills halves its counts ..., so under load it holds
//!   32,768 calls or more, but not always 65,535: to be sure to be reached, keep the minimum
//!   at most 32,768 per bucket."
//! * `RetryBudget`: "A bucket counts at most 16,777,215 calls ...: past that a deposit stops
//!   counting" (no halving there: the stricter side).
//!
//! Every expectation below comes from a small reference model of those sentences (or from
//! hand-computed values of it). Virtual time only (`FakeClock`), seeded randomness, no
//! sleeps; calls land in the middle of buckets so that the model needs no bucket origin.
#![cfg(all(feature = "tokio", feature = "test-util", feature = "tower"))]
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

mod hostile_support;
// The seeded generator of `common`, by path: `mod common;` needs runtimes this file builds
// without.
#[path = "common/rng.rs"]
#[allow(dead_code, unreachable_pub)]
mod rng;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use hostile_support::{
    DAY, Fb, HOUR, Rules, SEC, last_reason, on_fake, ppm, tally_trip, watch_changes,
};
use rng::Rng;
use tidewall::breaker::{
    CircuitBreaker, CircuitBreakerBuilder, Counts, KeyedCircuitBreaker, Outcome, State, TripReason,
    Window,
};
use tidewall::budget::{RetryBudget, RetryBudgetPolicy};
use tidewall::classify::Verdict;
use tidewall::pipeline::Pipeline;
use tidewall::testing::FakeClock;
use tidewall::tower::BreakerLayer;
use tidewall::{Error, Rejected};
use tidewall_core::breaker::window::Bucket;
use tower::ServiceExt as _;
use tower_layer::Layer;
use tower_service::Service;

// === shared pieces =========================================================================

/// The most calls a time bucket holds.
const FULL: u32 = 65_535;
/// The slow-call threshold of every breaker here: a slow call is one the clock moved this
/// much during.
const SLOW: Duration = Duration::from_micros(1);

/// The draws of the model runs, on the shared generator.
trait Draws {
    fn pick<T: Copy>(&mut self, items: &[T]) -> T;
    /// True with probability `per_mille` / 1000.
    fn chance(&mut self, per_mille: u64) -> bool;
}

impl Draws for Rng {
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.index(items.len())]
    }
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

fn time_window(width: Duration, buckets: u32) -> Window {
    Window::Time {
        span: width * buckets,
        buckets,
    }
}

/// A builder on a fresh virtual clock that trips at a failure `rate` once its time window of
/// `buckets` buckets of `width` holds `minimum` calls.
fn rated(
    rate: f64,
    minimum: u32,
    width: Duration,
    buckets: u32,
) -> (FakeClock, CircuitBreakerBuilder<FakeClock>) {
    let (clock, builder) = on_fake();
    let builder = builder
        .failure_rate(rate)
        .minimum_calls(minimum)
        .window(time_window(width, buckets));
    (clock, builder)
}

/// Records one call: a slow one takes `SLOW` on the virtual clock.
fn record(clock: &FakeClock, breaker: &Fb, failed: bool, slow: bool) {
    let permit = breaker
        .try_acquire()
        .unwrap_or_else(|r| panic!("refused while {:?}: {r:?}", breaker.state()));
    if slow {
        clock.advance(SLOW);
    }
    if failed {
        permit.failure();
    } else {
        permit.success();
    }
}

fn counts(calls: u32, failures: u32, slow: u32) -> Counts {
    Counts {
        calls,
        failures,
        slow,
    }
}

/// The calls field of one bucket after `n` calls recorded in it, from the docs alone: it
/// counts up to 65,535; the next call halves it to 32,767 and counts itself (32,768), and so
/// on every 32,768 calls.
fn calls_after(n: u64) -> u32 {
    if n <= u64::from(FULL) {
        n as u32
    } else {
        32_767 + ((n - 65_536) % 32_768) as u32 + 1
    }
}

// === the reference model ===================================================================

/// One bucket, as the docs describe it: the call that finds it full halves every counter
/// (rounding down), then counts itself.
fn bucket_add(bucket: &mut [u32; 3], failed: bool, slow: bool) -> bool {
    let halved = bucket[0] == FULL;
    if halved {
        for counter in bucket.iter_mut() {
            *counter /= 2;
        }
    }
    bucket[0] += 1;
    bucket[1] += u32::from(failed);
    bucket[2] += u32::from(slow);
    halved
}

/// A time window of `buckets` buckets (keyed by bucket number) and the documented rules
/// (no rate and no run until set).
struct Model {
    buckets: u64,
    live: BTreeMap<u64, [u32; 3]>,
    run: u32,
    rules: Rules,
    halvings: u64,
}

impl Model {
    fn new(buckets: u64, minimum: u32) -> Self {
        Self {
            buckets,
            live: BTreeMap::new(),
            run: 0,
            rules: Rules {
                minimum: u64::from(minimum),
                failure_ppm: None,
                slow_ppm: None,
                consecutive: None,
            },
            halvings: 0,
        }
    }

    fn counts(&self, now: u64) -> Counts {
        let mut sum = Counts::default();
        for (_, b) in self.live.range(now.saturating_sub(self.buckets - 1)..=now) {
            sum.calls += b[0];
            sum.failures += b[1];
            sum.slow += b[2];
        }
        sum
    }

    /// Records a call in bucket `now`; the reasons the breaker now trips for.
    fn record(&mut self, now: u64, failed: bool, slow: bool) -> Vec<TripReason> {
        let oldest = now.saturating_sub(self.buckets - 1);
        self.live.retain(|b, _| *b >= oldest);
        let bucket = self.live.entry(now).or_insert([0; 3]);
        if bucket_add(bucket, failed, slow) {
            self.halvings += 1;
        }
        self.run = if failed { self.run + 1 } else { 0 };
        self.reasons(now)
    }

    fn reasons(&self, now: u64) -> Vec<TripReason> {
        self.rules.trips(self.counts(now), self.run)
    }

    fn reset(&mut self) {
        self.live.clear();
        self.run = 0;
    }
}

/// Virtual time in nanoseconds since the breaker was built, in buckets of `width`; calls are
/// made only in the middle half of a bucket, so the bucket a call lands in does not depend on
/// where exactly the breaker's buckets start.
struct Time {
    clock: FakeClock,
    width: u128,
    ns: u128,
}

impl Time {
    fn new(clock: &FakeClock, width: Duration) -> Self {
        let mut time = Self {
            clock: clock.clone(),
            width: width.as_nanos(),
            ns: 0,
        };
        time.advance(width / 4);
        time
    }
    fn bucket(&self) -> u64 {
        (self.ns / self.width) as u64
    }
    fn advance(&mut self, by: Duration) {
        self.clock.advance(by);
        self.ns += by.as_nanos();
        assert!(
            self.ns % self.width < self.width * 3 / 4,
            "a test moved too far into its bucket"
        );
    }
    /// To the start of bucket `bucket() + n` exactly (n ≥ 1).
    fn goto_bucket_start(&mut self, n: u64) {
        let target = (u128::from(self.bucket()) + u128::from(n)) * self.width;
        let mut left = target - self.ns;
        while left > 0 {
            let chunk = left.min(u128::from(u64::MAX / 2));
            self.clock.advance(Duration::from_nanos(chunk as u64));
            left -= chunk;
        }
        self.ns = target;
    }
    /// To a quarter into bucket `bucket() + n`.
    fn skip(&mut self, n: u64) {
        self.goto_bucket_start(n);
        self.advance(Duration::from_nanos((self.width / 4) as u64));
    }
}

// === exact arithmetic of one halving ======================================================

#[test]
fn a_full_bucket_halves_each_counter_rounding_down_then_counts_the_call() {
    let (clock, builder) = rated(1.0, 1, HOUR, 1);
    let breaker = builder.slow_call_rate(1.0, SLOW).build().unwrap();
    // 65,535 calls: a fast success first, 1,001 failures, 777 slow successes, successes.
    record(&clock, &breaker, false, false);
    for _ in 0..1_001 {
        record(&clock, &breaker, true, false);
    }
    for _ in 0..777 {
        record(&clock, &breaker, false, true);
    }
    for _ in 1 + 1_001 + 777..FULL {
        record(&clock, &breaker, false, false);
    }
    assert_eq!(breaker.counts(), counts(FULL, 1_001, 777), "a full bucket");
    assert_eq!(breaker.state(), State::Closed);

    // Ignored outcomes and dropped permits record nothing: they must not halve a full bucket.
    for i in 0..2_000 {
        let permit = breaker.try_acquire().unwrap();
        if i % 2 == 0 {
            permit.record(Outcome::Ignored);
        } else {
            drop(permit);
        }
    }
    assert_eq!(
        breaker.counts(),
        counts(FULL, 1_001, 777),
        "ignored and dropped calls touched the full bucket"
    );

    // A slow failure finds it full: (32,767, 500, 388), then itself.
    record(&clock, &breaker, true, true);
    assert_eq!(breaker.counts(), counts(32_768, 501, 389));
    // Fill it again with fast successes, and halve once more on a fast success:
    // 501 / 2 = 250 and 389 / 2 = 194 (odd counts round down).
    for _ in 32_768..FULL {
        record(&clock, &breaker, false, false);
    }
    assert_eq!(breaker.counts(), counts(FULL, 501, 389));
    record(&clock, &breaker, false, false);
    assert_eq!(breaker.counts(), counts(32_768, 250, 194));
    assert_eq!(breaker.state(), State::Closed);
}

#[test]
fn rounding_down_turns_65534_failures_of_65535_into_all_failed_and_trips_at_100_percent() {
    // 1 success and 65,534 failures: 99.998 %, below a 100 % threshold. The failure that finds
    // the bucket full halves both to 32,767 (65,535 / 2 and 65,534 / 2, rounded down), then
    // counts itself: 32,768 of 32,768 failed, which reaches 100 %.
    for next_fails in [true, false] {
        let (clock, builder) = rated(1.0, 1, HOUR, 1);
        let (builder, changes) = watch_changes(builder);
        let breaker = builder.build().unwrap();
        record(&clock, &breaker, false, false);
        for _ in 1..FULL {
            record(&clock, &breaker, true, false);
            assert_eq!(breaker.state(), State::Closed);
        }
        assert_eq!(breaker.counts(), counts(FULL, FULL - 1, 0));
        record(&clock, &breaker, next_fails, false);
        if next_fails {
            assert_eq!(
                breaker.state(),
                State::Open,
                "32,768 of 32,768 failed after the halving"
            );
            assert_eq!(last_reason(&changes), Some(TripReason::FailureRate));
            assert_eq!(breaker.counts(), counts(32_768, 32_768, 0));
        } else {
            assert_eq!(breaker.state(), State::Closed);
            assert_eq!(breaker.counts(), counts(32_768, 32_767, 0));
        }
    }

    // The same with slow calls under a 100 % slow-call rate (failures not judged).
    for next_slow in [true, false] {
        let (clock, builder) = on_fake();
        let (builder, changes) = watch_changes(
            builder
                .no_failure_rate()
                .slow_call_rate(1.0, SLOW)
                .minimum_calls(1)
                .window(time_window(HOUR, 1)),
        );
        let breaker = builder.build().unwrap();
        record(&clock, &breaker, false, false);
        for _ in 1..FULL {
            record(&clock, &breaker, false, true);
        }
        assert_eq!(breaker.state(), State::Closed);
        assert_eq!(breaker.counts(), counts(FULL, 0, FULL - 1));
        record(&clock, &breaker, false, next_slow);
        if next_slow {
            assert_eq!(breaker.state(), State::Open);
            assert_eq!(last_reason(&changes), Some(TripReason::SlowCallRate));
            assert_eq!(breaker.counts(), counts(32_768, 0, 32_768));
        } else {
            assert_eq!(breaker.state(), State::Closed);
            assert_eq!(breaker.counts(), counts(32_768, 0, 32_767));
        }
    }
}

#[test]
fn failures_recorded_without_a_failure_rule_are_still_counted_and_halved() {
    // `Counts::failures`: "Calls classified as failures" (whatever rule is set). All 65,535
    // calls failed: halving keeps failures at most calls (32,767 each), then a success.
    let (clock, builder) = on_fake();
    let breaker = builder
        .no_failure_rate()
        .slow_call_rate(1.0, HOUR)
        .minimum_calls(1)
        .window(time_window(HOUR, 1))
        .build()
        .unwrap();
    for _ in 0..FULL {
        record(&clock, &breaker, true, false);
    }
    assert_eq!(breaker.counts(), counts(FULL, FULL, 0));
    record(&clock, &breaker, false, false);
    assert_eq!(breaker.counts(), counts(32_768, 32_767, 0));
    record(&clock, &breaker, true, false);
    assert_eq!(breaker.counts(), counts(32_769, 32_768, 0));
    assert_eq!(breaker.state(), State::Closed);
}

// === many halvings in one bucket ==========================================================

#[test]
fn half_a_million_calls_in_one_bucket_follow_the_closed_form_and_the_latest_calls() {
    let (clock, builder) = rated(0.9, 32_768, HOUR, 1);
    let breaker = builder.slow_call_rate(0.9, SLOW).build().unwrap();
    let mut model = Model::new(1, 32_768);
    let mut seen_past_32767 = false;
    let mut rng = Rng::new(0x5A1F);
    for n in 1..=500_000u64 {
        // 400k calls with 5 % failures and 5 % slow, then 100k with 40 % of each.
        let share = if n <= 400_000 { 50 } else { 400 };
        let failed = rng.chance(share);
        let slow = rng.chance(share);
        record(&clock, &breaker, failed, slow);
        model.record(0, failed, slow);
        let c = breaker.counts();
        assert_eq!(c.calls, calls_after(n), "call {n}");
        assert!(
            c.failures <= c.calls && c.slow <= c.calls,
            "call {n}: {c:?}"
        );
        if n > 32_767 {
            seen_past_32767 = true;
            assert!((32_768..=FULL).contains(&c.calls), "call {n}: {c:?}");
        }
        if n % 997 == 0 || n > 499_000 {
            assert_eq!(c, model.counts(0), "call {n}");
        }
    }
    assert!(seen_past_32767);
    assert_eq!(model.halvings, 14, "(500,000 - 65,535) / 32,768 rounded up");
    assert_eq!(breaker.counts(), model.counts(0));
    assert_eq!(breaker.counts().calls, 41_248);
    // The rates follow the latest calls: 40 % of the last 100k, not the 12 % of all 500k.
    let c = breaker.counts();
    // The last 100k calls span three halvings: the calls before them keep at most an
    // eighth of a full bucket (4,096 of 41,248), so the rate is at least ~90 % of 40 %.
    let rate = f64::from(c.failures) / f64::from(c.calls);
    assert!((0.33..0.43).contains(&rate), "failure rate {rate} ({c:?})");
    assert_eq!(breaker.state(), State::Closed);
}

// === failure and slow-call storms in a full bucket ==========================================

/// Fills one bucket with 65,535 fast successes, then records `failed`/`slow` calls until the
/// breaker opens; how many it took, and the counts then.
fn storm(
    builder: CircuitBreakerBuilder<FakeClock>,
    clock: &FakeClock,
    failed: bool,
    slow: bool,
) -> (u64, Counts, Option<TripReason>) {
    let (builder, changes) = watch_changes(builder.window(time_window(DAY, 1)));
    let breaker = builder.build().unwrap();
    for _ in 0..FULL {
        record(clock, &breaker, false, false);
    }
    assert_eq!(breaker.counts(), counts(FULL, 0, 0));
    let mut k = 0u64;
    while breaker.state() == State::Closed {
        record(clock, &breaker, failed, slow);
        k += 1;
        assert!(k <= 600_000, "no trip after {k} calls of the storm");
    }
    (k, breaker.counts(), last_reason(&changes))
}

#[test]
fn a_failure_storm_in_a_full_bucket_trips_within_it_at_the_modelled_call() {
    // (rate, minimum, calls of the storm until the trip, counts at the trip): from the model
    // (65,535 successes, then failures; every 32,768 calls of the storm a halving).
    let cases: [(f64, u32, u64, u32, u32); 8] = [
        (0.25, 10, 10_923, 43_690, 10_923),
        (0.5, 10, 32_767, 65_534, 32_767),
        (0.9, 10, 106_487, 40_950, 36_855),
        (1.0, 10, 491_521, 32_768, 32_768),
        (0.999_999, 32_768, 491_521, 32_768, 32_768),
        // A minimum of 65,535 (allowed for one bucket) is reached only when it is full.
        (0.25, 65_535, 32_768, 65_535, 32_768),
        (0.9, 65_535, 131_072, 65_535, 61_440),
        (1.0, 65_535, 524_288, 65_535, 65_535),
    ];
    for (rate, minimum, k, calls, failures) in cases {
        let (clock, builder) = on_fake();
        let (took, c, reason) = storm(
            builder.failure_rate(rate).minimum_calls(minimum),
            &clock,
            true,
            false,
        );
        let what = format!("rate {rate}, minimum {minimum}");
        assert_eq!(took, k, "{what}");
        assert_eq!(c, counts(calls, failures, 0), "{what}");
        assert_eq!(reason, Some(TripReason::FailureRate), "{what}");
        // Cross-check with the model.
        let mut model = Model::new(1, minimum);
        model.rules.failure_ppm = Some(ppm(rate));
        for _ in 0..FULL {
            assert!(model.record(0, false, false).is_empty());
        }
        let mut j = 0;
        while model.record(0, true, false).is_empty() {
            j += 1;
        }
        assert_eq!(
            j + 1,
            k,
            "{what}: the model disagrees with the hand-computed value"
        );
    }
}

#[test]
fn a_slow_call_storm_in_a_full_bucket_trips_within_it() {
    for (rate, k, calls, slow) in [
        (0.25, 10_923u64, 43_690u32, 10_923u32),
        (0.5, 32_767, 65_534, 32_767),
        (0.9, 106_487, 40_950, 36_855),
    ] {
        let (clock, builder) = on_fake();
        let (took, c, reason) = storm(
            builder
                .no_failure_rate()
                .slow_call_rate(rate, SLOW)
                .minimum_calls(10),
            &clock,
            false,
            true,
        );
        assert_eq!(took, k, "slow rate {rate}");
        assert_eq!(c, counts(calls, 0, slow), "slow rate {rate}");
        assert_eq!(reason, Some(TripReason::SlowCallRate));
    }
}

#[test]
fn consecutive_failures_count_every_failure_across_halvings() {
    // 65,535 successes, then 39,999 failures: the first of them halved the bucket, and again
    // at 32,768; the run is 39,999 still, one short.
    let (clock, builder) = on_fake();
    let (builder, changes) = watch_changes(
        builder
            .no_failure_rate()
            .consecutive_failures(40_000)
            .window(time_window(DAY, 1)),
    );
    let breaker = builder.build().unwrap();
    for _ in 0..FULL {
        record(&clock, &breaker, false, false);
    }
    for _ in 0..39_999 {
        record(&clock, &breaker, true, false);
    }
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.counts().calls, calls_after(65_535 + 39_999));
    // A success breaks the run (and halving never restored one).
    record(&clock, &breaker, false, false);
    for _ in 0..39_999 {
        record(&clock, &breaker, true, false);
    }
    assert_eq!(
        breaker.state(),
        State::Closed,
        "the run restarted at the success"
    );
    record(&clock, &breaker, true, false);
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(last_reason(&changes), Some(TripReason::ConsecutiveFailures));

    // Ignored and dropped calls in a full bucket neither break the run nor count.
    let (clock, builder) = rated(1.0, 1, DAY, 1);
    let breaker = builder.consecutive_failures(3).build().unwrap();
    for _ in 0..FULL {
        record(&clock, &breaker, false, false);
    }
    record(&clock, &breaker, true, false);
    breaker.try_acquire().unwrap().record(Outcome::Ignored);
    drop(breaker.try_acquire().unwrap());
    record(&clock, &breaker, true, false);
    assert_eq!(breaker.counts(), counts(32_769, 2, 0));
    assert_eq!(breaker.state(), State::Closed);
    record(&clock, &breaker, true, false);
    assert_eq!(breaker.state(), State::Open, "three failures in a row");
}

// === minimum_calls bounds ===================================================================

#[test]
fn minimum_calls_may_be_what_the_time_window_holds_and_not_one_more() {
    // "without consecutive failures, at most what the window can hold: its calls, or 65,535
    // per time bucket".
    for buckets in [1u32, 2, 7] {
        let holds = FULL * buckets;
        let (_clock, builder) = on_fake();
        assert!(
            builder
                .minimum_calls(holds)
                .window(time_window(SEC, buckets))
                .build()
                .is_ok(),
            "{buckets} buckets hold {holds}"
        );
        let (_clock, builder) = on_fake();
        assert!(
            builder
                .minimum_calls(holds + 1)
                .window(time_window(SEC, buckets))
                .build()
                .is_err(),
            "{buckets} buckets cannot hold {}",
            holds + 1
        );
        let (_clock, builder) = on_fake();
        assert!(
            builder
                .minimum_calls(holds + 1)
                .consecutive_failures(3)
                .window(time_window(SEC, buckets))
                .build()
                .is_ok(),
            "with consecutive failures any minimum"
        );
    }
}

#[test]
fn two_full_buckets_reach_a_minimum_of_131070_only_while_both_are_full() {
    // Two buckets; the older holds 65,535 successes; the newer 65,535 successes, then a
    // failure storm. The window holds 131,070 only when the newer is full again.
    let (clock, builder) = rated(0.25, 2 * FULL, HOUR, 2);
    let (builder, changes) = watch_changes(builder);
    let breaker = builder.build().unwrap();
    let mut time = Time::new(&clock, HOUR);
    let mut model = Model::new(2, 2 * FULL);
    model.rules.failure_ppm = Some(ppm(0.25));
    for bucket in 0..2 {
        for _ in 0..FULL {
            record(&clock, &breaker, false, false);
            assert!(model.record(time.bucket(), false, false).is_empty());
        }
        if bucket == 0 {
            time.skip(1);
        }
    }
    assert_eq!(breaker.counts(), counts(2 * FULL, 0, 0));
    let mut k = 0u64;
    loop {
        record(&clock, &breaker, true, false);
        k += 1;
        let reasons = model.record(time.bucket(), true, false);
        if !reasons.is_empty() {
            assert_eq!(breaker.state(), State::Open, "storm call {k}");
            break;
        }
        assert_eq!(breaker.state(), State::Closed, "storm call {k}");
        assert!(k < 1_000_000);
    }
    // 25 % of 131,070 is 32,767.5: the newer bucket must be full with 32,768 or more failures.
    assert_eq!(k, 32_768, "the first time the newer bucket is full again");
    assert_eq!(breaker.counts(), counts(2 * FULL, 32_768, 0));
    assert_eq!(last_reason(&changes), Some(TripReason::FailureRate));
}

// === several buckets, sliding =============================================================

#[test]
fn halving_touches_only_the_full_bucket_and_a_halved_bucket_slides_out_whole() {
    let (clock, builder) = rated(1.0, 1, HOUR, 3);
    let breaker = builder.build().unwrap();
    let mut time = Time::new(&clock, HOUR);
    // Bucket 0: a success then 999 failures.
    record(&clock, &breaker, false, false);
    for _ in 0..999 {
        record(&clock, &breaker, true, false);
    }
    // Bucket 1: fills and halves (65,535 + 11 successes), then one failure.
    time.skip(1);
    for _ in 0..FULL + 11 {
        record(&clock, &breaker, false, false);
    }
    record(&clock, &breaker, true, false);
    // Bucket 1 holds 32,767 + 11 successes + 1 failure after its halving.
    assert_eq!(
        breaker.counts(),
        counts(1_000 + 32_779, 999 + 1, 0),
        "bucket 0 is not halved along"
    );
    // Bucket 2: 7 calls, 3 failed.
    time.skip(1);
    for i in 0..7 {
        record(&clock, &breaker, i < 3, false);
    }
    assert_eq!(breaker.counts(), counts(1_000 + 32_779 + 7, 1_003, 0));
    // Bucket 3 reuses bucket 0's slot: bucket 0 leaves whole.
    time.skip(1);
    assert_eq!(breaker.counts(), counts(32_779 + 7, 4, 0));
    record(&clock, &breaker, false, false);
    assert_eq!(breaker.counts(), counts(32_779 + 7 + 1, 4, 0));
    // Bucket 4 reuses the halved bucket's slot: it leaves whole, and the new bucket starts
    // from zero (not halved, not added to).
    time.skip(1);
    assert_eq!(breaker.counts(), counts(7 + 1, 3, 0));
    record(&clock, &breaker, false, false);
    assert_eq!(breaker.counts(), counts(7 + 1 + 1, 3, 0));
    assert_eq!(breaker.state(), State::Closed);
}

#[test]
fn a_full_bucket_left_behind_does_not_halve_the_bucket_that_reuses_its_slot() {
    // One bucket: its slot is reused by every next bucket.
    let (clock, builder) = rated(0.5, 1, SEC, 1);
    let breaker = builder.build().unwrap();
    let mut time = Time::new(&clock, SEC);
    for _ in 0..FULL {
        record(&clock, &breaker, false, false);
    }
    assert_eq!(breaker.counts().calls, FULL);
    time.skip(1);
    assert_eq!(breaker.counts(), Counts::default());
    // A failure alone in the fresh bucket: 1 of 1 (not 1 of 32,768).
    record(&clock, &breaker, true, false);
    assert_eq!(breaker.state(), State::Open, "1 failure of 1 call");
    assert_eq!(breaker.counts(), counts(1, 1, 0));
}

// === seeded random runs against the model ===================================================

#[test]
fn seeded_random_runs_past_full_buckets_agree_with_the_model() {
    let width = HOUR;
    let mut total_halvings = 0u64;
    let mut trips = [0usize; 3];
    for seed in 0..8u64 {
        let mut rng = Rng::new(0xF011_B0C7 ^ seed.wrapping_mul(0x9E37));
        let buckets = rng.pick(&[1u32, 2, 3, 5]);
        let minimum = rng.pick(&[1u32, 100, 20_000, 32_768]);
        let f_rate = rng.pick(&[0.5, 0.6, 0.75, 0.9]);
        let s_rate = rng.pick(&[0.3, 0.5, 0.8]);
        let consecutive = rng.chance(500).then(|| rng.pick(&[500u32, 5_000, 40_000]));
        let (clock, builder) = rated(f_rate, minimum, width, buckets);
        let mut builder = builder.slow_call_rate(s_rate, SLOW);
        if let Some(n) = consecutive {
            builder = builder.consecutive_failures(n);
        }
        let (builder, changes) = watch_changes(builder);
        let breaker = builder.build().unwrap();
        let mut model = Model::new(u64::from(buckets), minimum);
        model.rules.failure_ppm = Some(ppm(f_rate));
        model.rules.slow_ppm = Some(ppm(s_rate));
        model.rules.consecutive = consecutive;
        let mut time = Time::new(&clock, width);
        let what = format!(
            "seed {seed}: {buckets} buckets, minimum {minimum}, failure {f_rate}, slow {s_rate}, consecutive {consecutive:?}"
        );
        let mut steps = 0u64;
        while steps < 100_000 {
            let len = rng.pick(&[1u64, 50, 5_000, 30_000, 70_000, 140_000, 140_000]);
            let fail = rng.pick(&[0u64, 0, 20, 200, 450, 800, 1000]);
            let slow = rng.pick(&[0u64, 0, 50, 250, 600, 950]);
            for _ in 0..len {
                steps += 1;
                let permit = breaker
                    .try_acquire()
                    .unwrap_or_else(|r| panic!("{what}, step {steps}: refused: {r:?}"));
                let is_slow = rng.chance(slow);
                if is_slow {
                    time.advance(SLOW);
                }
                let reasons = match rng.below(100) {
                    0..=2 => {
                        permit.record(Outcome::Ignored);
                        Vec::new()
                    }
                    3..=4 => {
                        drop(permit);
                        Vec::new()
                    }
                    _ => {
                        let failed = rng.chance(fail);
                        if failed {
                            permit.failure();
                        } else {
                            permit.success();
                        }
                        model.record(time.bucket(), failed, is_slow)
                    }
                };
                if reasons.is_empty() {
                    assert_eq!(breaker.state(), State::Closed, "{what}, step {steps}");
                    let c = breaker.counts();
                    assert_eq!(c, model.counts(time.bucket()), "{what}, step {steps}");
                    assert!(c.failures <= c.calls && c.slow <= c.calls);
                } else {
                    assert_eq!(
                        breaker.state(),
                        State::Open,
                        "{what}, step {steps}: the model trips for {reasons:?} on {:?}",
                        model.counts(time.bucket())
                    );
                    let reason = last_reason(&changes).unwrap();
                    let at = format!("{what}, step {steps}");
                    tally_trip(&mut trips, reason, &reasons, &at);
                    // Reset on a bucket boundary, so a fresh window's buckets line up.
                    time.goto_bucket_start(1);
                    breaker.reset();
                    model.reset();
                    time.advance(width / 4);
                    assert_eq!(breaker.counts(), Counts::default(), "{what}: reset");
                    break;
                }
            }
            // Between phases: stay in the bucket, move on one, a few, or a long way.
            match rng.below(20) {
                0..=9 => {}
                10..=15 => time.skip(1),
                16..=18 => time.skip(1 + rng.below(2 * u64::from(buckets))),
                _ => time.skip(rng.pick(&[24u64, 8_760, 876_000, 1 << 16])),
            }
        }
        total_halvings += model.halvings;
    }
    assert!(
        total_halvings >= 10,
        "only {total_halvings} halvings in all"
    );
    assert!(
        trips[0] >= 3 && trips[1] >= 3,
        "trips by reason (failure, slow, run): {trips:?}"
    );
}

// === ignored outcomes and refusals, per key, tower, pipeline ===============================

#[test]
fn per_key_a_full_bucket_halves_only_that_keys_window_and_refusals_count_nothing() {
    let clock = FakeClock::new();
    let keyed: KeyedCircuitBreaker<&'static str, FakeClock> = CircuitBreaker::builder()
        .runtime(clock.clone())
        .failure_rate(0.5)
        .minimum_calls(10)
        .window(time_window(HOUR, 2))
        .keyed()
        .max_keys(16)
        .build()
        .unwrap();
    for _ in 0..FULL {
        keyed.try_acquire(&"a").unwrap().success();
    }
    for _ in 0..100 {
        keyed.try_acquire(&"b").unwrap().success();
    }
    for i in 0..1_000 {
        let permit = keyed.try_acquire(&"a").unwrap();
        if i % 2 == 0 {
            permit.record(Outcome::Ignored);
        } else {
            drop(permit);
        }
    }
    assert_eq!(keyed.counts(&"a"), Some(counts(FULL, 0, 0)));
    let mut k = 0;
    while keyed.state(&"a") == Some(State::Closed) {
        keyed.try_acquire(&"a").unwrap().failure();
        k += 1;
        assert!(k <= 40_000);
    }
    assert_eq!(k, 32_767, "the storm shows within the full bucket");
    assert_eq!(keyed.state(&"a"), Some(State::Open));
    let at_trip = keyed.counts(&"a").unwrap();
    assert_eq!(at_trip, counts(65_534, 32_767, 0));
    for _ in 0..100 {
        assert!(matches!(
            keyed.try_acquire(&"a"),
            Err(Rejected::CircuitOpen { .. })
        ));
    }
    assert_eq!(keyed.counts(&"a"), Some(at_trip), "refusals count nothing");
    assert_eq!(keyed.counts(&"b"), Some(counts(100, 0, 0)));
    assert_eq!(keyed.state(&"b"), Some(State::Closed));
}

#[tokio::test(flavor = "current_thread")]
async fn breaker_layer_in_a_full_bucket_ignores_what_it_should_and_trips_within_it() {
    let (_clock, builder) = rated(0.25, 10, HOUR, 1);
    let breaker = builder.build().unwrap();
    let mut service = BreakerLayer::new(breaker.clone())
        .classify(|result: Result<&u16, &Error<&str>>| match result {
            Ok(404) => Verdict::Ignored,
            Ok(code) if *code >= 500 => Verdict::Failure,
            Ok(_) => Verdict::Success,
            Err(_) => Verdict::Failure,
        })
        .layer(tower::service_fn(
            |answer: Result<u16, Error<&'static str>>| async move { answer },
        ));
    for _ in 0..FULL {
        let ok = service.ready().await.unwrap().call(Ok(200)).await;
        assert_eq!(ok, Ok(200));
    }
    assert_eq!(breaker.counts(), counts(FULL, 0, 0));
    for _ in 0..300 {
        assert_eq!(service.ready().await.unwrap().call(Ok(404)).await, Ok(404));
        let below = service
            .ready()
            .await
            .unwrap()
            .call(Err(Error::Rejected(Rejected::BulkheadFull)))
            .await;
        assert_eq!(below, Err(Error::Rejected(Rejected::BulkheadFull)));
    }
    assert_eq!(
        breaker.counts(),
        counts(FULL, 0, 0),
        "ignored results and refusals from below halved or counted"
    );
    let mut k = 0u64;
    while breaker.state() == State::Closed {
        let answer = if k.is_multiple_of(2) {
            Ok(503)
        } else {
            Err(Error::Inner("down"))
        };
        let _ = service.ready().await.unwrap().call(answer).await;
        k += 1;
        assert!(k <= 40_000);
    }
    assert_eq!(k, 10_923, "25 %: as the model says");
    let at_trip = breaker.counts();
    assert_eq!(at_trip, counts(43_690, 10_923, 0));
    for _ in 0..100 {
        let shed = service.ready().await.unwrap().call(Ok(200)).await;
        assert!(matches!(
            shed,
            Err(Error::Rejected(Rejected::CircuitOpen { .. }))
        ));
    }
    assert_eq!(breaker.counts(), at_trip, "refusals count nothing");
}

#[tokio::test(flavor = "current_thread")]
async fn a_pipelines_breaker_stage_in_a_full_bucket_counts_what_its_classifier_says() {
    let (clock, builder) = rated(0.5, 10, HOUR, 1);
    let breaker = builder.build().unwrap();
    let pipeline = Pipeline::builder()
        .runtime(clock.clone())
        .breaker(breaker.clone())
        .classify(|result: Result<&u16, &u16>| match result {
            Ok(_) => Verdict::Success,
            Err(404) => Verdict::Ignored,
            Err(_) => Verdict::Failure,
        })
        .build()
        .unwrap();
    for _ in 0..FULL {
        assert_eq!(
            pipeline.call(|| async { Ok::<u16, u16>(200) }).await,
            Ok(200)
        );
    }
    for _ in 0..500 {
        assert_eq!(
            pipeline.call(|| async { Err::<u16, u16>(404) }).await,
            Err(Error::Inner(404))
        );
    }
    assert_eq!(breaker.counts(), counts(FULL, 0, 0), "ignored: not counted");
    let mut k = 0u64;
    while breaker.state() == State::Closed {
        assert_eq!(
            pipeline.call(|| async { Err::<u16, u16>(500) }).await,
            Err(Error::Inner(500))
        );
        k += 1;
        assert!(k <= 40_000);
    }
    assert_eq!(k, 32_767);
    let at_trip = breaker.counts();
    assert_eq!(at_trip, counts(65_534, 32_767, 0));
    for _ in 0..50 {
        let shed = pipeline.call(|| async { Ok::<u16, u16>(200) }).await;
        assert!(matches!(
            shed,
            Err(Error::Rejected(Rejected::CircuitOpen { .. }))
        ));
    }
    assert_eq!(breaker.counts(), at_trip);
}

// === racing threads in one full bucket ======================================================

#[test]
fn racing_threads_into_one_bucket_keep_its_invariants_and_exact_call_count() {
    const THREADS: u64 = 4;
    const EACH: u64 = 100_000;
    // A third of each thread's calls succeed, so the bucket can never be all failures and a
    // 100 % rate never trips: every call lands.
    let (_clock, builder) = rated(1.0, 32_768, HOUR, 1);
    let breaker = builder.build().unwrap();
    let recorded = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(THREADS as usize + 2));
    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let breaker = breaker.clone();
            let recorded = Arc::clone(&recorded);
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                start.wait();
                for j in 0..EACH {
                    let permit = breaker.try_acquire().expect("closed");
                    if (j + t) % 3 == 0 {
                        permit.success();
                    } else {
                        permit.failure();
                    }
                    recorded.fetch_add(1, SeqCst);
                }
            })
        })
        .collect();
    let reader = {
        let breaker = breaker.clone();
        let recorded = Arc::clone(&recorded);
        let done = Arc::clone(&done);
        let start = Arc::clone(&start);
        std::thread::spawn(move || {
            start.wait();
            let mut reads = 0u64;
            let mut low_after_fill = 0u64;
            while !done.load(SeqCst) {
                let before = recorded.load(SeqCst);
                let c = breaker.counts();
                assert!(
                    c.failures <= c.calls && c.calls <= FULL && c.slow == 0,
                    "read {reads}: {c:?}"
                );
                // Everything counted before the read is in it, up to the halving floor.
                if u64::from(c.calls) < before.min(32_768) {
                    low_after_fill += 1;
                }
                reads += 1;
            }
            (reads, low_after_fill)
        })
    };
    start.wait();
    for writer in writers {
        writer.join().unwrap();
    }
    done.store(true, SeqCst);
    let (reads, low) = reader.join().unwrap();
    assert!(reads > 0, "the reader raced the writers");
    assert_eq!(
        low, 0,
        "{low} of {reads} reads held fewer than min(recorded, 32,768) calls"
    );
    let n = THREADS * EACH;
    let c = breaker.counts();
    assert_eq!(c.calls, calls_after(n), "every call counted ({n} of them)");
    assert_eq!(c.calls, 39_552);
    assert!(
        c.failures <= c.calls && c.failures > 0 && c.slow == 0,
        "{c:?}"
    );
    assert_eq!(breaker.state(), State::Closed);
}

// === after a trip: half-open, fresh window, idle gaps ======================================

#[test]
fn closing_after_a_storm_in_a_full_bucket_starts_a_fresh_window() {
    let (clock, builder) = rated(0.5, 10, HOUR, 1);
    let (builder, changes) = watch_changes(builder.break_duration(SEC).half_open_probes(1));
    let breaker = builder.build().unwrap();
    for _ in 0..FULL {
        record(&clock, &breaker, false, false);
    }
    let mut k = 0;
    while breaker.state() == State::Closed {
        record(&clock, &breaker, true, false);
        k += 1;
    }
    assert_eq!(k, 32_767);
    // Still in the same bucket an hour long: the break ends, one probe closes it.
    clock.advance(SEC);
    let probe = breaker.try_acquire().expect("the break ended");
    assert!(probe.is_probe());
    probe.success();
    assert_eq!(breaker.state(), State::Closed);
    let c = breaker.counts();
    assert!(
        c.calls <= 1 && c.failures == 0,
        "a transition to closed replaces the window: {c:?}"
    );
    let base = c.calls;
    // The full bucket's 32,767 failures are gone: 9 more failures (a minimum of 10 with the
    // probe, or not) decide alone.
    for _ in 0..8 {
        record(&clock, &breaker, true, false);
    }
    assert_eq!(breaker.counts(), counts(base + 8, 8, 0));
    if base == 0 {
        assert_eq!(breaker.state(), State::Closed, "8 calls: under the minimum");
        record(&clock, &breaker, true, false);
        assert_eq!(breaker.state(), State::Closed, "9 calls: under the minimum");
        record(&clock, &breaker, false, false);
    } else {
        assert_eq!(breaker.state(), State::Closed);
        record(&clock, &breaker, true, false);
    }
    assert_eq!(breaker.counts().calls, 10);
    assert_eq!(breaker.state(), State::Open, "9 failures of 10");
    assert_eq!(last_reason(&changes), Some(TripReason::FailureRate));
}

#[test]
fn a_halved_bucket_never_counts_again_after_any_idle_gap() {
    // Buckets of 1 ms, so 2^16 of them (one turn of a 16-bit stamp) pass in 65.5 s.
    let width = Duration::from_millis(1);
    let (clock, builder) = rated(0.5, 1, width, 4);
    let breaker = builder.build().unwrap();
    let mut time = Time::new(&clock, width);
    let gaps: [u64; 12] = [
        4,
        1 << 14,
        (1 << 15) - 1,
        1 << 15,
        (1 << 16) - 4,
        1 << 16,
        (1 << 16) + 1,
        3 << 16,
        3_600_000,         // an hour
        86_400_000,        // a day
        31_536_000_000,    // a year
        3_153_600_000_000, // a century
    ];
    for (round, gap) in gaps.into_iter().enumerate() {
        // Fill the bucket past full: 65,535 + 10 calls, every 4th a failure (from the 4th):
        // 16,383 failures when full, halved to 8,191, then 3 more (the halving call is one).
        let mut model = [0u32; 3];
        for i in 0..FULL + 10 {
            record(&clock, &breaker, i % 4 == 3, false);
            bucket_add(&mut model, i % 4 == 3, false);
        }
        let expected = counts(32_767 + 10, 8_191 + 3, 0);
        assert_eq!(expected, counts(model[0], model[1], model[2]));
        assert_eq!(breaker.counts(), expected, "round {round}: a halved bucket");
        time.skip(gap);
        assert_eq!(
            breaker.counts(),
            Counts::default(),
            "round {round}: after {gap} buckets the halved bucket is stale"
        );
        record(&clock, &breaker, false, false);
        assert_eq!(
            breaker.counts(),
            counts(1, 0, 0),
            "round {round}: after {gap} buckets the first call counts alone"
        );
        // The next call's failure rate is its own: 1 of 2 reaches 50 %.
        record(&clock, &breaker, true, false);
        assert_eq!(breaker.state(), State::Open, "round {round}");
        time.goto_bucket_start(1);
        breaker.reset();
        time.advance(width / 4);
    }
}

// === the core arithmetic ====================================================================

#[test]
fn add_or_halve_agrees_with_the_model_and_only_refuses_what_its_docs_say() {
    let b = Bucket::BREAKER;
    // The doc example, and its neighbours.
    let full = b.add(0, 7, [65_535, 1_001, 0]).unwrap();
    assert_eq!(b.add(full, 7, [1, 1, 0]), None);
    let next = b.add_or_halve(full, 7, [1, 1, 0]).unwrap();
    assert_eq!(
        [b.field(next, 0), b.field(next, 1), b.field(next, 2)],
        [32_768, 501, 0]
    );
    assert_eq!(Bucket::epoch(next), 7, "the stamp is kept");

    let mut rng = Rng::new(0xADD0);
    for i in 0..200_000u32 {
        let calls = match i % 4 {
            0 => FULL,
            1 => FULL - rng.below(3) as u32,
            _ => rng.below(u64::from(FULL) + 1) as u32,
        };
        let failures = rng.below(u64::from(calls) + 1) as u32;
        let slow = rng.below(u64::from(calls) + 1) as u32;
        let epoch = rng.below(1 << 16) as u16;
        let word = b
            .add(0, epoch, [calls.into(), failures.into(), slow.into()])
            .unwrap();
        let (failed, is_slow) = (rng.chance(500), rng.chance(500));
        let add = [1, u64::from(failed), u64::from(is_slow)];
        let mut expected = [calls, failures, slow];
        bucket_add(&mut expected, failed, is_slow);
        let got = b.add_or_halve(word, epoch, add).unwrap();
        assert_eq!(
            [b.field(got, 0), b.field(got, 1), b.field(got, 2)],
            expected.map(u64::from),
            "{calls}/{failures}/{slow} + {add:?}"
        );
        assert!(b.field(got, 1) <= b.field(got, 0) && b.field(got, 2) <= b.field(got, 0));
        assert_eq!(Bucket::epoch(got), epoch);
        // `add` refuses exactly when the model halves.
        assert_eq!(b.add(word, epoch, add).is_none(), calls == FULL);
    }

    // An older stamp starts from zero: a full bucket of epoch 7 is not halved into epoch 8.
    let fresh = b.add_or_halve(full, 8, [1, 1, 0]).unwrap();
    assert_eq!([b.field(fresh, 0), b.field(fresh, 1)], [1, 1]);
    assert_eq!(Bucket::epoch(fresh), 8);
    // A newer stamp is left alone.
    let newer = b.add(0, 9, [3, 1, 0]).unwrap();
    assert_eq!(b.add_or_halve(newer, 8, [1, 0, 0]), None);
    // An empty word is never newer.
    let empty_newer = b.add(0, 9, [0, 0, 0]).unwrap();
    let landed = b.add_or_halve(empty_newer, 8, [1, 0, 0]).unwrap();
    assert_eq!(b.field(landed, 0), 1);
    // An add that overflows an empty bucket is refused.
    assert_eq!(b.add_or_halve(0, 8, [65_536, 0, 0]), None);
    // An add of more than one call that fits after one halving.
    let word = b.add(0, 8, [40_000, 30_001, 3]).unwrap();
    let got = b.add_or_halve(word, 8, [40_000, 1, 1]).unwrap();
    assert_eq!(
        [b.field(got, 0), b.field(got, 1), b.field(got, 2)],
        [20_000 + 40_000, 15_000 + 1, 1 + 1]
    );
}

// `Bucket::add_or_halve` docs: "`None` only for a bucket stamped with a newer epoch, or for
// an `add` that overflows an empty bucket". Found by this suite: the first version halved
// once, so an add that fits an empty bucket but not a once-halved one (65,535 onto 2 or onto
// 65,535 calls; 60,000 onto 20,000) was refused. It now halves as often as it takes.
#[test]
fn add_or_halve_refuses_only_a_newer_stamp_or_an_add_too_big_for_an_empty_bucket() {
    let b = Bucket::BREAKER;
    let mut refused = Vec::new();
    for (held, add) in [
        (2u64, 65_535u64),
        (20_000, 60_000),
        (65_535, 65_535),
        (30_000, 50_000),
    ] {
        let word = b.add(0, 8, [held, 0, 0]).unwrap();
        match b.add_or_halve(word, 8, [add, 0, 0]) {
            // The whole add is counted, on top of what is left of the old counts.
            Some(got) => assert!(
                b.field(got, 0) >= add && b.field(got, 0) <= 65_535,
                "{held} + {add}: {}",
                b.field(got, 0)
            ),
            None => refused.push((held, add)),
        }
    }
    assert!(
        refused.is_empty(),
        "refused (held, add) though each add fits an empty bucket: {refused:?}"
    );
}

// === the retry budget stops counting instead ================================================

#[test]
fn a_retry_budgets_full_bucket_stops_counting_rather_than_halving() {
    // "A bucket counts at most 16,777,215 calls ...: past that a deposit stops counting".
    const BUDGET_FULL: u64 = 16_777_215;
    let policy = RetryBudgetPolicy::builder()
        .ratio(1.0)
        .min_per_second(0)
        .window(Duration::from_secs(10))
        .buckets(10)
        .build()
        .unwrap();
    let origin = Instant::now();
    let now = origin + Duration::from_millis(500);
    let budget = RetryBudget::new(policy, origin);
    for _ in 0..BUDGET_FULL {
        budget.deposit(now);
    }
    assert_eq!(budget.balance(now), BUDGET_FULL);
    for _ in 0..100_000 {
        budget.deposit(now);
    }
    assert_eq!(
        budget.balance(now),
        BUDGET_FULL,
        "deposits into a full budget bucket stop (a halving one would hold about 8.5 M)"
    );
    assert!(budget.try_withdraw(now));
    assert_eq!(budget.balance(now), BUDGET_FULL - 1);
    // The next bucket counts afresh.
    let later = origin + Duration::from_millis(1_500);
    for _ in 0..10 {
        budget.deposit(later);
    }
    assert_eq!(budget.balance(later), BUDGET_FULL - 1 + 10);
}
