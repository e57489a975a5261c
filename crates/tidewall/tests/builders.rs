//! Every builder at the edges of its input (0, 1, MAX, `Duration::MAX`, huge durations): a
//! faithful value or a typed `ConfigError`, never a wrap, a silent rounding or a panic.

use std::time::Duration;

use proptest::prelude::*;
use tidewall::breaker::CircuitBreaker;
use tidewall::bulkhead::Bulkhead;
use tidewall::pipeline::Pipeline;
use tidewall::rate::{KeyedRateLimiter, RateLimiter};
use tidewall::rt::Tokio;
use tidewall::task::{
    pool::WorkerPool,
    scope::Scope,
    supervisor::{ChildSpec, SupervisorBuilder},
};
use tidewall::testing::Clocked;
use tidewall::{Backoff, ConfigError, Jitter, Rejected};

/// The largest `Duration` whose nanoseconds fit in a `u64` (about 584 years).
const LONGEST: Duration = Duration::from_nanos(u64::MAX);

fn is_out_of_range<T>(result: &Result<T, ConfigError>, field: &str) -> bool {
    matches!(result, Err(ConfigError::OutOfRange { field: f, .. }) if *f == field)
}

#[test]
fn seven_hundred_million_per_second_is_refused_by_both_limiters() {
    let second = Duration::from_secs(1);
    // It used to build with a 1 ns interval and admit 1,000,000,001 cells a second.
    let direct = RateLimiter::builder(700_000_000, second).build();
    assert!(is_out_of_range(&direct, "count"), "{direct:?}");
    let keyed = KeyedRateLimiter::builder(700_000_000, second).build::<u64>();
    assert!(is_out_of_range(&keyed, "count"), "{keyed:?}");
    // The same limiter, admitted as asked once the rate is a whole number of nanoseconds.
    let limiter = RateLimiter::builder(500_000_000, second).build().unwrap();
    assert_eq!(limiter.gcra().interval_nanos(), 2);
}

proptest! {
    /// Any count and any period (1 ns to beyond `u64::MAX` ns): the limiter that builds
    /// admits at most 0.1 % more than asked and never less; the one that does not says why.
    #[test]
    fn a_limiter_is_within_a_tenth_of_a_percent_of_its_rate_or_refused(
        count in prop_oneof![1u32..=u32::MAX, 1u32..2_000],
        nanos in prop_oneof![1u64..=u64::MAX, 1u64..10_000_000],
        past_u64 in any::<bool>(),
    ) {
        let period = if past_u64 {
            Duration::MAX - Duration::from_nanos(nanos)
        } else {
            Duration::from_nanos(nanos)
        };
        let rt = Clocked::new(Tokio);
        let direct = RateLimiter::builder(count, period).burst(1).runtime(rt.clone()).build();
        let keyed = KeyedRateLimiter::builder(count, period)
            .burst(1)
            .runtime(rt.clone())
            .build::<u8>();
        match (&direct, &keyed) {
            (Ok(direct), Ok(keyed)) => {
                // Measured, not read back: one cell passes, the next waits one interval.
                prop_assert_eq!(direct.check(), Ok(()));
                prop_assert_eq!(keyed.check_key(&0), Ok(()));
                let wait = match (direct.check(), keyed.check_key(&0)) {
                    (Err(Rejected::RateLimited { retry_after: a }), Err(Rejected::RateLimited { retry_after: b })) => {
                        prop_assert_eq!(a, b);
                        a
                    }
                    other => return Err(TestCaseError::fail(format!("{other:?}"))),
                };
                prop_assert_eq!(wait.as_nanos(), u128::from(direct.gcra().interval_nanos()));
                let admitted_period = wait.as_nanos() * u128::from(count);
                prop_assert!(admitted_period <= period.as_nanos(), "never slower than asked");
                prop_assert!(period.as_nanos() * 1000 <= admitted_period * 1001, "at most 0.1 % faster");
            }
            (Err(a), Err(b)) => {
                prop_assert_eq!(a, b);
                let typed = matches!(a, ConfigError::OutOfRange { field: "count", .. })
                    || *a == ConfigError::DurationOverflow { field: "period" };
                prop_assert!(typed, "{a:?}");
            }
            _ => prop_assert!(false, "{direct:?} vs {keyed:?}"),
        }
    }
}

#[test]
fn keyed_max_keys_is_exactly_what_was_asked() {
    // usize::MAX used to build and report max_keys() == 0 (a panic in debug builds): the
    // bound was rounded up to a multiple of the shard count and multiplied back.
    for max_keys in [
        1,
        255,
        256,
        257,
        64 * 256 + 1,
        100_000,
        usize::MAX / 2,
        usize::MAX - 1,
        usize::MAX,
    ] {
        let limiter = KeyedRateLimiter::builder(1, Duration::from_secs(1))
            .max_keys(max_keys)
            .build::<u64>()
            .unwrap();
        assert_eq!(limiter.max_keys(), max_keys);
        assert!(limiter.check_key(&7).is_ok());
        assert_eq!(limiter.len(), 1);
    }
    let zero = KeyedRateLimiter::builder(1, Duration::from_secs(1))
        .max_keys(0)
        .build::<u64>();
    assert_eq!(zero.unwrap_err(), ConfigError::Zero { field: "max_keys" });
}

#[test]
fn a_bound_of_three_keys_holds_three() {
    let rt = Clocked::new(Tokio);
    let limiter = KeyedRateLimiter::builder(1, Duration::from_secs(3600))
        .burst(1)
        .max_keys(3)
        .runtime(rt)
        .build::<u64>()
        .unwrap();
    for key in 0..3 {
        assert_eq!(limiter.check_key(&key), Ok(()));
    }
    assert!(matches!(
        limiter.check_key(&3),
        Err(Rejected::RateLimited { .. })
    ));
    assert_eq!(limiter.len(), 3);
}

#[test]
fn rate_limiter_durations_fit_the_clock_or_are_refused() {
    let second = Duration::from_secs(1);
    assert_eq!(
        RateLimiter::builder(1, second)
            .jitter(Duration::MAX)
            .build()
            .map(drop),
        Err(ConfigError::DurationOverflow { field: "jitter" })
    );
    assert_eq!(
        KeyedRateLimiter::builder(1, second)
            .jitter(Duration::MAX)
            .build::<u64>()
            .map(drop),
        Err(ConfigError::DurationOverflow { field: "jitter" })
    );
    assert!(
        RateLimiter::builder(1, second)
            .jitter(LONGEST)
            .build()
            .is_ok()
    );
    // The longest period, one cell: its state would pass u64::MAX nanoseconds (a saturated
    // state admitted the second cell at once): refused. Half of it builds, and is exact.
    assert_eq!(
        RateLimiter::builder(1, LONGEST).build().map(drop),
        Err(ConfigError::DurationOverflow { field: "period" })
    );
    let half = Duration::from_nanos(u64::MAX / 2);
    let slow = RateLimiter::builder(1, half).build().unwrap();
    assert_eq!(slow.gcra().interval_nanos(), u64::MAX / 2);
    assert_eq!(slow.check(), Ok(()));
    assert!(
        matches!(slow.check(), Err(Rejected::RateLimited { retry_after }) if retry_after >= half - Duration::from_secs(1)),
        "the second cell waits the interval"
    );
    // u32::MAX cells bursting over half the longest period overflow the horizon: refused.
    assert_eq!(
        RateLimiter::builder(1, half)
            .burst(u32::MAX)
            .build()
            .map(drop),
        Err(ConfigError::DurationOverflow { field: "burst" })
    );
    // The fastest faithful rate: one cell a nanosecond, every one of u32::MAX at once.
    let fast = RateLimiter::builder(u32::MAX, Duration::from_nanos(u64::from(u32::MAX)))
        .burst(u32::MAX)
        .build()
        .unwrap();
    assert_eq!(fast.gcra().interval_nanos(), 1);
}

#[tokio::test]
async fn worker_pool_sizes_are_bounded_and_durations_fit() {
    let start = |workers, queue, timeout: Option<Duration>| {
        let builder = WorkerPool::builder().workers(workers).queue(queue);
        let builder = match timeout {
            Some(timeout) => builder.job_timeout(timeout),
            None => builder,
        };
        builder
            .start(|n: u64| async move { n })
            .map(|pool| drop(pool.submitter()))
    };
    // usize::MAX workers used to overflow the handles' allocation (a panic) after spawning.
    for workers in [65_537, usize::MAX] {
        assert!(is_out_of_range(&start(workers, 1, None), "workers"));
    }
    assert_eq!(
        start(0, 1, None),
        Err(ConfigError::Zero { field: "workers" })
    );
    assert_eq!(start(1, 0, None), Err(ConfigError::Zero { field: "queue" }));
    assert_eq!(
        start(1, 1, Some(Duration::MAX)),
        Err(ConfigError::DurationOverflow {
            field: "job_timeout"
        })
    );
    // A queue of any size costs nothing until jobs arrive.
    let pool = WorkerPool::builder()
        .workers(2)
        .queue(usize::MAX)
        .job_timeout(LONGEST)
        .runtime(Tokio)
        .start(|n: u64| async move { n + 1 })
        .unwrap();
    let job = pool.submit(41).await.unwrap();
    assert!(matches!(job.await, tidewall::task::Exit::Ok(42)));
    let report = pool.shutdown(Duration::MAX).await;
    assert_eq!((report.submitted, report.completed), (1, 1));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn retry_settings_at_their_extremes_never_panic() {
    let backoff = Backoff::constant(Duration::ZERO)
        .jitter(Jitter::None)
        .max_attempts(u32::MAX)
        .build()
        .unwrap();
    let mut calls = 0u32;
    let result = tidewall::retry::retry(backoff, || {
        calls += 1;
        let fail = calls < 3;
        async move { if fail { Err("again") } else { Ok(calls) } }
    })
    .attempt_timeout(Duration::MAX)
    .max_retry_after(Duration::MAX)
    .min_attempt_time(Duration::MAX)
    .retry_after_with(|_: Result<&u32, &&str>| Some(Duration::MAX))
    .await;
    // Each hint of Duration::MAX is a sleep "forever" (about 30 years of virtual time),
    // not an overflow.
    assert_eq!(result, Ok(3));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn pipeline_durations_fit_the_clock_or_are_refused() {
    assert_eq!(
        Pipeline::builder()
            .deadline(Duration::MAX)
            .build()
            .map(drop),
        Err(ConfigError::DurationOverflow { field: "deadline" })
    );
    assert_eq!(
        Pipeline::builder()
            .attempt_timeout(Duration::ZERO)
            .build()
            .map(drop),
        Err(ConfigError::Zero {
            field: "attempt_timeout"
        })
    );
    assert_eq!(
        Pipeline::builder()
            .min_attempt_time(Duration::MAX)
            .build()
            .map(drop),
        Err(ConfigError::DurationOverflow {
            field: "min_attempt_time"
        })
    );
    let pipeline = Pipeline::builder()
        .deadline(LONGEST)
        .min_attempt_time(LONGEST)
        .attempt_timeout(LONGEST)
        .build()
        .unwrap();
    let answer = pipeline.call(|| async { Ok::<_, ()>(42) }).await;
    assert_eq!(answer.ok(), Some(42));
}

#[tokio::test]
async fn scope_builder_extremes() {
    assert_eq!(
        Scope::builder().limit(0).build::<(), ()>().map(drop),
        Err(ConfigError::Zero { field: "limit" })
    );
    assert_eq!(
        Scope::builder()
            .grace(Duration::MAX)
            .build::<(), ()>()
            .map(drop),
        Err(ConfigError::DurationOverflow { field: "grace" })
    );
    let scope = Scope::builder()
        .limit(usize::MAX)
        .grace(LONGEST)
        .build::<u8, ()>()
        .unwrap();
    scope.spawn(async { Ok(1) }).await.unwrap();
    let report = scope.join().await;
    assert_eq!((report.spawned, report.succeeded), (1, 1), "{report:?}");
}

#[tokio::test]
async fn supervisor_builder_extremes() {
    let child = || {
        ChildSpec::new("idle", |stop| async move {
            stop.cancelled().await;
            Ok::<(), std::io::Error>(())
        })
    };
    let build = |builder: SupervisorBuilder| builder.build().map(drop);
    assert_eq!(
        build(
            SupervisorBuilder::new()
                .intensity(u32::MAX, Duration::MAX)
                .child(child())
        ),
        Err(ConfigError::DurationOverflow { field: "period" })
    );
    assert_eq!(
        build(
            SupervisorBuilder::new()
                .intensity(0, Duration::ZERO)
                .child(child())
        ),
        Err(ConfigError::Zero { field: "period" })
    );
    assert_eq!(
        build(
            SupervisorBuilder::new()
                .stable_after(Duration::MAX)
                .child(child())
        ),
        Err(ConfigError::DurationOverflow {
            field: "stable_after"
        })
    );
    assert_eq!(
        build(SupervisorBuilder::new().child(child().shutdown_timeout(Duration::MAX))),
        Err(ConfigError::DurationOverflow {
            field: "shutdown_timeout"
        })
    );
    assert_eq!(
        build(
            SupervisorBuilder::new()
                .intensity(u32::MAX, LONGEST)
                .stable_after(LONGEST)
                .child(child().shutdown_timeout(LONGEST))
        ),
        Ok(())
    );
}

#[test]
fn policies_built_on_the_core_keep_its_bounds() {
    // A breaker's time window must add up to its span (2047 ns in 1024 buckets would be
    // 1024 ns of 1 ns buckets).
    let window = CircuitBreaker::builder()
        .runtime(Tokio)
        .window(tidewall_core::breaker::Window::Time {
            span: Duration::from_nanos(2_047),
            buckets: 1_024,
        })
        .build();
    assert!(is_out_of_range(&window, "window.buckets"));
    // A retry budget allocates one atomic per bucket: bounded like the breaker's.
    let budget = tidewall::budget::RetryBudgetPolicy::builder()
        .buckets(u32::MAX)
        .build();
    assert!(is_out_of_range(&budget, "buckets"));
    // A hedge budget under one part per million used to round to no hedges at all.
    let hedge = tidewall::hedge::Hedge::builder()
        .budget_ratio(1e-9)
        .runtime(Tokio)
        .build();
    assert!(is_out_of_range(&hedge, "budget_ratio"));
    // Sizes are faithful where nothing is allocated up front: a bulkhead up to isize::MAX
    // permits (its count is signed, so a live shrink can leave it below zero), refused with
    // a typed error beyond, never wrapped.
    let too_many = Bulkhead::builder(isize::MAX.unsigned_abs() + 1)
        .runtime(Tokio)
        .build();
    assert!(is_out_of_range(&too_many, "max_concurrent"));
    let bulkhead = Bulkhead::builder(isize::MAX.unsigned_abs())
        .max_queue(usize::MAX)
        .max_wait(LONGEST)
        .runtime(Tokio)
        .build()
        .unwrap();
    let permit = bulkhead.try_acquire().unwrap();
    drop(permit);
    assert_eq!(
        Bulkhead::builder(1)
            .max_wait(Duration::MAX)
            .runtime(Tokio)
            .build()
            .map(drop),
        Err(ConfigError::DurationOverflow { field: "max_wait" })
    );
}

/// Readers and generators sized by the caller: a size past `stream::MAX_BUFFER` (or one the
/// process cannot allocate) is a typed error, never an abort on a failed allocation.
#[test]
fn reader_buffers_and_generator_capacities_are_bounded() {
    use tidewall::stream::{self, BlockingReader, LineReader, MAX_BUFFER, Overlong};

    let empty: &[u8] = &[];
    for (buffer, max_line) in [
        (usize::MAX, 1),
        (1, usize::MAX),
        (MAX_BUFFER + 1, 1),
        (1, MAX_BUFFER),
    ] {
        let reader = LineReader::new(empty, buffer, max_line, Overlong::Skip);
        assert!(
            matches!(reader, Err(ConfigError::OutOfRange { .. })),
            "buffer {buffer}, max_line {max_line}"
        );
    }
    assert!(LineReader::new(empty, 64 << 10, 1 << 20, Overlong::Skip).is_ok());

    common_tokio(|| {
        let rt = Tokio;
        for chunk in [usize::MAX, MAX_BUFFER + 1] {
            let reader = BlockingReader::new(rt, std::io::empty(), chunk);
            assert!(matches!(
                reader,
                Err(ConfigError::OutOfRange { field: "chunk", .. })
            ));
        }
        assert!(BlockingReader::new(rt, std::io::empty(), 64 << 10).is_ok());
    });

    for capacity in [usize::MAX, usize::MAX >> 2, (1 << 30) + 1] {
        let generator = stream::generator(capacity, |_yielder: stream::Yielder<u8>| async {});
        assert!(
            matches!(
                generator,
                Err(ConfigError::OutOfRange {
                    field: "capacity",
                    ..
                })
            ),
            "capacity {capacity}"
        );
    }
    assert!(stream::generator(1 << 30, |_yielder: stream::Yielder<u8>| async {}).is_ok());
}

fn common_tokio(f: impl FnOnce()) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let _entered = rt.enter();
    f();
}
