//! Hostile black-box tests for tidewall's future-composition modules: `race`, `fallback`,
//! `time` (timeouts, deadlines, `FutureExt`), `fan_out`, `retry` and the `Rejected` / `Error`
//! types.
//!
//! Written from the rustdoc alone (the public doc comments and signatures), without reading the
//! implementation. Every test names the documented contract it checks. Time is virtual
//! (tokio's paused clock or `tidewall::testing::FakeClock`) and randomness is seeded
//! (`SplitMix64`), so every run is deterministic.

use std::error::Error as _;
use std::fmt;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::StreamExt;
use tidewall::fan_out::{FanOut, FanOutError};
use tidewall::prelude::*;
use tidewall::race::{RaceError, race_ok};
use tidewall::retry::{DEFAULT_MAX_RETRY_AFTER, Retry, RetryError, RetryEvent};
use tidewall::testing::FakeClock;
use tidewall::time::{DeadlineExceeded, Elapsed};
use tidewall::{Error, Jitter, Rejected, RetryAfter, fallback};
use tidewall_core::rng::SplitMix64;

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn now() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

/// Sets its flag when dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

fn drop_flag() -> (DropFlag, Arc<AtomicBool>) {
    let flag = Arc::new(AtomicBool::new(false));
    (DropFlag(flag.clone()), flag)
}

/// Counts live instances in a shared counter.
struct Live(Arc<AtomicUsize>);

impl Live {
    fn enter(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, SeqCst);
        Self(counter.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// Counts drops in a shared counter.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, SeqCst);
    }
}

fn poll_once<F: Future + ?Sized>(fut: Pin<&mut F>) -> Poll<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    fut.poll(&mut cx)
}

/// An error carrying an optional server hint.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hinted {
    id: u32,
    hint: Option<Duration>,
}

impl fmt::Display for Hinted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "hinted failure #{}", self.id)
    }
}

impl std::error::Error for Hinted {}

impl RetryAfter for Hinted {
    fn retry_after(&self) -> Option<Duration> {
        self.hint
    }
}

type Events = Arc<Mutex<Vec<(u32, Duration, Option<Duration>)>>>;
type Starts = Arc<Mutex<Vec<tokio::time::Instant>>>;

/// An operation that always fails with `Hinted { id: call number, hint }`, recording when each
/// attempt starts.
fn failing_op(
    hint: Option<Duration>,
    starts: &Starts,
) -> impl FnMut() -> std::future::Ready<Result<(), Hinted>> + use<> {
    let starts = starts.clone();
    let mut calls = 0u32;
    move || {
        calls += 1;
        starts.lock().unwrap().push(now());
        std::future::ready(Err(Hinted { id: calls, hint }))
    }
}

fn recorder(events: &Events) -> impl FnMut(&RetryEvent<'_, (), Hinted>) + use<> {
    let events = events.clone();
    move |ev: &RetryEvent<'_, (), Hinted>| {
        events.lock().unwrap().push((ev.attempt, ev.delay, ev.hint));
    }
}

fn gaps(starts: &Starts) -> Vec<Duration> {
    let starts = starts.lock().unwrap();
    starts.windows(2).map(|w| w[1] - w[0]).collect()
}

fn is_lowercase_message(s: &str) -> bool {
    s.chars().next().is_some_and(|c| !c.is_uppercase()) && !s.ends_with('.')
}

// ---------------------------------------------------------------------------------------------
// retry: attempts and errors
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn retry_calls_op_exactly_max_attempts_and_returns_the_last_error_intact() {
    let backoff = Backoff::exponential(ms(10))
        .max_attempts(5)
        .build()
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let result = (move || {
        let id = c.fetch_add(1, SeqCst) + 1;
        async move { Err::<(), _>(format!("failure #{id}")) }
    })
    .retry(backoff)
    .seed(1)
    .await;
    assert_eq!(calls.load(SeqCst), 5);
    assert_eq!(result, Err(RetryError::Inner("failure #5".to_owned())));
}

#[tokio::test(start_paused = true)]
async fn retry_max_attempts_one_calls_once_without_sleeping_or_notifying() {
    let backoff = Backoff::exponential(ms(10))
        .max_attempts(1)
        .build()
        .unwrap();
    let starts = Starts::default();
    let events = Events::default();
    let t0 = now();
    let result = Retry::new(backoff, failing_op(None, &starts))
        .notify(recorder(&events))
        .await;
    assert_eq!(result, Err(RetryError::Inner(Hinted { id: 1, hint: None })));
    assert_eq!(starts.lock().unwrap().len(), 1);
    assert!(events.lock().unwrap().is_empty());
    assert_eq!(now() - t0, Duration::ZERO);
}

#[test]
fn retry_max_attempts_zero_is_a_typed_config_error() {
    let built = Backoff::exponential(ms(10)).max_attempts(0).build();
    assert!(
        matches!(built, Err(tidewall::ConfigError::Zero { .. })),
        "{built:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_when_predicate_rejects_error_returns_it_at_once() {
    let backoff = Backoff::constant(ms(10)).max_attempts(5).build().unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let result = (move || {
        c.fetch_add(1, SeqCst);
        async { Err::<u8, _>(std::io::Error::other("bad request")) }
    })
    .retry(backoff)
    .when(|e: &std::io::Error| e.kind() == std::io::ErrorKind::TimedOut)
    .await;
    assert_eq!(calls.load(SeqCst), 1);
    let inner = result
        .unwrap_err()
        .into_inner()
        .expect("the caller's error");
    assert_eq!(inner.to_string(), "bad request");
}

#[tokio::test(start_paused = true)]
async fn retry_notify_sees_every_failed_attempt_but_the_last_in_order() {
    let backoff = Backoff::constant(ms(10)).max_attempts(6).build().unwrap();
    let starts = Starts::default();
    let events = Events::default();
    let _ = Retry::new(backoff, failing_op(None, &starts))
        .notify(recorder(&events))
        .seed(3)
        .await;
    let attempts: Vec<u32> = events.lock().unwrap().iter().map(|e| e.0).collect();
    assert_eq!(attempts, [1, 2, 3, 4, 5]);
    assert_eq!(starts.lock().unwrap().len(), 6);
}

// ---------------------------------------------------------------------------------------------
// retry: backoff delays, jitter, extreme configurations
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn retry_delays_equal_observed_sleeps_and_jitter_never_exceeds_max_delay() {
    let max_delay = ms(700);
    let mut seeds = SplitMix64::new(0xD1CE);
    for jitter in [Jitter::None, Jitter::Equal, Jitter::Full] {
        for _ in 0..16 {
            let seed = seeds.next_u64();
            let backoff = Backoff::exponential(ms(100))
                .factor(3.0)
                .max_delay(max_delay)
                .jitter(jitter)
                .max_attempts(8)
                .build()
                .unwrap();
            let starts = Starts::default();
            let events = Events::default();
            let _ = Retry::new(backoff, failing_op(None, &starts))
                .notify(recorder(&events))
                .seed(seed)
                .await;
            let events = events.lock().unwrap().clone();
            let gaps = gaps(&starts);
            assert_eq!(events.len(), 7, "{jitter:?} seed {seed}");
            assert_eq!(gaps.len(), 7);
            for (event, gap) in events.iter().zip(&gaps) {
                assert!(
                    event.1 <= max_delay,
                    "{jitter:?} seed {seed}: delay {:?}",
                    event.1
                );
                // tokio's timer has millisecond resolution: a sleep ends within 1 ms after.
                assert!(
                    *gap >= event.1 && *gap <= event.1 + ms(1),
                    "{jitter:?} seed {seed}: announced {:?}, slept {gap:?}",
                    event.1
                );
            }
            if matches!(jitter, Jitter::None) {
                let delays: Vec<Duration> = events.iter().map(|e| e.1).collect();
                assert_eq!(
                    delays,
                    [
                        ms(100),
                        ms(300),
                        ms(700),
                        ms(700),
                        ms(700),
                        ms(700),
                        ms(700)
                    ]
                );
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn retry_seed_makes_jittered_delays_reproducible() {
    let run = |seed: u64| async move {
        let backoff = Backoff::exponential(ms(50))
            .max_attempts(6)
            .build()
            .unwrap();
        let events = Events::default();
        let starts = Starts::default();
        let _ = Retry::new(backoff, failing_op(None, &starts))
            .notify(recorder(&events))
            .seed(seed)
            .await;
        let delays: Vec<Duration> = events.lock().unwrap().iter().map(|e| e.1).collect();
        delays
    };
    let a = run(42).await;
    let b = run(42).await;
    assert_eq!(a.len(), 5);
    assert_eq!(a, b);
}

#[tokio::test(start_paused = true)]
async fn retry_zero_delay_is_a_typed_error_or_retries_without_sleeping() {
    let built = Backoff::constant(Duration::ZERO).max_attempts(5).build();
    match built {
        Err(e) => assert!(!e.to_string().is_empty()),
        Ok(backoff) => {
            let starts = Starts::default();
            let t0 = now();
            let result = Retry::new(backoff, failing_op(None, &starts)).await;
            assert_eq!(result, Err(RetryError::Inner(Hinted { id: 5, hint: None })));
            assert_eq!(now() - t0, Duration::ZERO);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn retry_extreme_factors_give_typed_errors_or_delays_within_max_delay() {
    let max_delay = secs(1);
    for factor in [
        0.0,
        -1.0,
        0.5,
        1.0,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::MIN_POSITIVE,
        1e308,
    ] {
        let built = Backoff::exponential(ms(100))
            .factor(factor)
            .max_delay(max_delay)
            .jitter(Jitter::None)
            .max_attempts(6)
            .build();
        let Ok(backoff) = built else {
            continue;
        };
        let events = Events::default();
        let starts = Starts::default();
        let result = Retry::new(backoff, failing_op(None, &starts))
            .notify(recorder(&events))
            .await;
        assert!(
            matches!(result, Err(RetryError::Inner(_))),
            "factor {factor}"
        );
        for (_, delay, _) in events.lock().unwrap().iter() {
            assert!(*delay <= max_delay, "factor {factor}: delay {delay:?}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn retry_duration_max_initial_delay_is_rejected_or_capped_by_max_delay() {
    for jitter in [Jitter::None, Jitter::Full] {
        for built in [
            Backoff::constant(Duration::MAX)
                .max_delay(secs(2))
                .jitter(jitter)
                .max_attempts(3)
                .build(),
            Backoff::exponential(Duration::MAX)
                .max_delay(secs(2))
                .jitter(jitter)
                .max_attempts(3)
                .build(),
        ] {
            let Ok(backoff) = built else {
                continue;
            };
            let events = Events::default();
            let starts = Starts::default();
            let t0 = now();
            let result = Retry::new(backoff, failing_op(None, &starts))
                .notify(recorder(&events))
                .seed(9)
                .await;
            assert!(matches!(result, Err(RetryError::Inner(_))));
            assert!(now() - t0 <= secs(4) + ms(2), "slept {:?}", now() - t0);
            for (_, delay, _) in events.lock().unwrap().iter() {
                assert!(*delay <= secs(2), "{delay:?}");
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn retry_huge_max_delay_under_a_deadline_never_overflows_and_ends_by_the_deadline() {
    let built = Backoff::exponential(secs(1))
        .factor(1000.0)
        .max_delay(Duration::MAX)
        .max_attempts(u32::MAX)
        .build();
    let Ok(backoff) = built else {
        return;
    };
    let starts = Starts::default();
    let t0 = now();
    let deadline = Deadline::after(&Tokio, secs(3600));
    let result = Retry::new(backoff, failing_op(None, &starts))
        .deadline(deadline)
        .seed(5)
        .await;
    assert!(
        matches!(result, Err(RetryError::DeadlineExceeded { .. })),
        "{result:?}"
    );
    assert!(now() - t0 <= secs(3600));
}

#[tokio::test(start_paused = true)]
async fn retry_u32_max_attempts_stops_at_the_deadline_and_counts_attempts_truthfully() {
    let backoff = Backoff::constant(ms(1))
        .jitter(Jitter::None)
        .max_attempts(u32::MAX)
        .build()
        .unwrap();
    let starts = Starts::default();
    let t0 = now();
    let result = Retry::new(backoff, failing_op(None, &starts))
        .deadline(Deadline::after(&Tokio, secs(1)))
        .await;
    let calls = u32::try_from(starts.lock().unwrap().len()).unwrap();
    assert!(
        calls >= 900,
        "only {calls} calls in a second of 1 ms retries"
    );
    match result {
        Err(RetryError::DeadlineExceeded {
            last_error,
            attempts,
        }) => {
            assert_eq!(attempts, calls);
            assert_eq!(
                last_error,
                Some(Hinted {
                    id: calls,
                    hint: None
                })
            );
        }
        other => panic!("expected DeadlineExceeded, got {other:?}"),
    }
    assert!(now() - t0 <= secs(1));
}

// ---------------------------------------------------------------------------------------------
// retry: server hints
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn retry_honoured_hint_raises_the_delay_even_above_backoff_max_delay() {
    let backoff = Backoff::constant(ms(10))
        .max_delay(ms(100))
        .jitter(Jitter::None)
        .max_attempts(2)
        .build()
        .unwrap();
    let starts = Starts::default();
    let events = Events::default();
    let result = Retry::new(backoff, failing_op(Some(secs(5)), &starts))
        .honor_retry_after()
        .notify(recorder(&events))
        .await;
    assert!(matches!(
        result,
        Err(RetryError::Inner(Hinted { id: 2, .. }))
    ));
    let events = events.lock().unwrap().clone();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].2, Some(secs(5)), "the hint before capping");
    assert!(
        events[0].1 >= secs(5),
        "delay {:?} below the hint",
        events[0].1
    );
    assert!(gaps(&starts)[0] >= secs(5));
}

#[tokio::test(start_paused = true)]
async fn retry_hint_is_capped_at_max_retry_after_default_sixty_seconds() {
    for (hint, cap, expected) in [
        (secs(600), None, DEFAULT_MAX_RETRY_AFTER),
        (Duration::MAX, None, DEFAULT_MAX_RETRY_AFTER),
        (secs(10), Some(secs(2)), secs(2)),
    ] {
        let backoff = Backoff::constant(ms(10))
            .jitter(Jitter::None)
            .max_attempts(2)
            .build()
            .unwrap();
        let starts = Starts::default();
        let events = Events::default();
        let mut retry = Retry::new(backoff, failing_op(Some(hint), &starts))
            .honor_retry_after()
            .notify(recorder(&events));
        if let Some(cap) = cap {
            retry = retry.max_retry_after(cap);
        }
        let _ = retry.await;
        let events = events.lock().unwrap().clone();
        assert_eq!(events.len(), 1, "hint {hint:?}");
        assert_eq!(events[0].1, expected, "hint {hint:?} cap {cap:?}");
        assert_eq!(events[0].2, Some(hint));
        let gap = gaps(&starts)[0];
        assert!(gap >= expected && gap <= expected + ms(1), "slept {gap:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn retry_ignores_hints_until_honor_retry_after() {
    let backoff = Backoff::constant(ms(10))
        .jitter(Jitter::None)
        .max_attempts(2)
        .build()
        .unwrap();
    let starts = Starts::default();
    let events = Events::default();
    let _ = Retry::new(backoff, failing_op(Some(secs(30)), &starts))
        .notify(recorder(&events))
        .await;
    assert_eq!(events.lock().unwrap()[0].1, ms(10));
    assert_eq!(gaps(&starts), [ms(10)]);
}

#[tokio::test(start_paused = true)]
async fn retry_honours_rate_limited_rejection_hint() {
    let backoff = Backoff::constant(ms(1))
        .jitter(Jitter::None)
        .max_attempts(2)
        .build()
        .unwrap();
    let starts = Starts::default();
    let s = starts.clone();
    let result = Retry::new(backoff, move || {
        s.lock().unwrap().push(now());
        async {
            Err::<(), _>(Rejected::RateLimited {
                retry_after: ms(250),
            })
        }
    })
    .honor_retry_after()
    .await;
    assert!(matches!(
        result,
        Err(RetryError::Inner(Rejected::RateLimited { .. }))
    ));
    assert!(gaps(&starts)[0] >= ms(250));
}

#[tokio::test(start_paused = true)]
async fn retry_whose_whole_hint_ends_past_the_deadline_is_not_made_and_ends_at_once() {
    // max_retry_after: "a retry whose whole hint ends past the deadline is not made (the call
    // ends at once)", even though the capped sleep (1 s) would fit.
    let backoff = Backoff::constant(ms(10))
        .jitter(Jitter::None)
        .max_attempts(5)
        .build()
        .unwrap();
    let starts = Starts::default();
    let t0 = now();
    let result = Retry::new(backoff, failing_op(Some(secs(30)), &starts))
        .honor_retry_after()
        .max_retry_after(secs(1))
        .deadline(Deadline::after(&Tokio, secs(10)))
        .await;
    assert_eq!(starts.lock().unwrap().len(), 1, "a retry was made");
    assert_eq!(now() - t0, Duration::ZERO, "the call did not end at once");
    let err = result.unwrap_err();
    assert_eq!(
        err.inner(),
        Some(&Hinted {
            id: 1,
            hint: Some(secs(30))
        })
    );
}

#[tokio::test(start_paused = true)]
async fn retry_honoured_hint_is_a_floor_even_with_full_jitter() {
    let mut seeds = SplitMix64::new(0xBEEF);
    for _ in 0..32 {
        let seed = seeds.next_u64();
        let backoff = Backoff::exponential(ms(400))
            .max_delay(secs(1))
            .jitter(Jitter::Full)
            .max_attempts(4)
            .build()
            .unwrap();
        let starts = Starts::default();
        let events = Events::default();
        let _ = Retry::new(backoff, failing_op(Some(ms(700)), &starts))
            .honor_retry_after()
            .notify(recorder(&events))
            .seed(seed)
            .await;
        for (attempt, delay, _) in events.lock().unwrap().iter() {
            assert!(
                *delay >= ms(700),
                "seed {seed} attempt {attempt}: delay {delay:?} below the 700 ms hint"
            );
        }
        for gap in gaps(&starts) {
            assert!(gap >= ms(700), "seed {seed}: slept {gap:?}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn retry_short_zero_or_zero_capped_hints_keep_the_schedule() {
    for (hint, cap) in [
        (ms(1), None),
        (Duration::ZERO, None),
        (secs(30), Some(Duration::ZERO)),
    ] {
        let backoff = Backoff::constant(ms(500))
            .jitter(Jitter::None)
            .max_attempts(2)
            .build()
            .unwrap();
        let starts = Starts::default();
        let events = Events::default();
        let mut retry = Retry::new(backoff, failing_op(Some(hint), &starts))
            .honor_retry_after()
            .notify(recorder(&events));
        if let Some(cap) = cap {
            retry = retry.max_retry_after(cap);
        }
        let result = retry.await;
        assert!(matches!(
            result,
            Err(RetryError::Inner(Hinted { id: 2, .. }))
        ));
        assert_eq!(
            events.lock().unwrap()[0].1,
            ms(500),
            "hint {hint:?} cap {cap:?}"
        );
        assert_eq!(gaps(&starts), [ms(500)]);
    }
}

#[tokio::test(start_paused = true)]
async fn retry_uncapped_duration_max_hint_does_not_panic() {
    let backoff = Backoff::constant(ms(10))
        .jitter(Jitter::None)
        .max_attempts(3)
        .build()
        .unwrap();
    let starts = Starts::default();
    // No deadline: the retry sleeps "forever"; cut it from outside.
    let retry = Retry::new(backoff, failing_op(Some(Duration::MAX), &starts))
        .honor_retry_after()
        .max_retry_after(Duration::MAX);
    let outcome = tokio::time::timeout(secs(3600), retry.into_future()).await;
    assert!(
        outcome.is_err(),
        "a Duration::MAX hint was not honoured: {outcome:?}"
    );
    assert_eq!(starts.lock().unwrap().len(), 1);
    // With a deadline the whole hint ends past it: the call ends at once.
    let starts = Starts::default();
    let t0 = now();
    let result = Retry::new(backoff, failing_op(Some(Duration::MAX), &starts))
        .honor_retry_after()
        .max_retry_after(Duration::MAX)
        .deadline(Deadline::after(&Tokio, secs(60)))
        .await;
    assert_eq!(now() - t0, Duration::ZERO);
    assert_eq!(
        result.unwrap_err().inner().map(|h| h.id),
        Some(1),
        "the last error was lost"
    );
}

// ---------------------------------------------------------------------------------------------
// retry: deadlines, timeouts
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn retry_deadline_ends_at_once_when_the_next_backoff_would_pass_it() {
    let backoff = Backoff::constant(secs(1))
        .jitter(Jitter::None)
        .max_attempts(10)
        .build()
        .unwrap();
    let starts = Starts::default();
    let t0 = now();
    let result = Retry::new(backoff, failing_op(None, &starts))
        .deadline(Deadline::after(&Tokio, ms(2500)))
        .await;
    assert_eq!(
        result,
        Err(RetryError::DeadlineExceeded {
            last_error: Some(Hinted { id: 3, hint: None }),
            attempts: 3,
        })
    );
    // Attempts at 0 s, 1 s, 2 s; the sleep to 3 s would pass 2.5 s: not slept at all.
    assert_eq!(now() - t0, secs(2));
}

#[tokio::test(start_paused = true)]
async fn retry_backoff_ending_exactly_at_the_deadline_starts_no_attempt_there() {
    let backoff = Backoff::constant(secs(1))
        .jitter(Jitter::None)
        .max_attempts(10)
        .build()
        .unwrap();
    let starts = Starts::default();
    let t0 = now();
    let result = Retry::new(backoff, failing_op(None, &starts))
        .deadline(Deadline::after(&Tokio, secs(2)))
        .await;
    // Attempts at 0 s and 1 s; the next would start exactly at the deadline, with no time
    // left: "no attempt starts once it has passed (or with no more than min_attempt_time
    // left)", min_attempt_time defaulting to zero.
    assert_eq!(
        starts.lock().unwrap().len(),
        2,
        "an attempt started at the deadline"
    );
    assert!(now() - t0 <= secs(2));
    assert_eq!(
        result,
        Err(RetryError::DeadlineExceeded {
            last_error: Some(Hinted { id: 2, hint: None }),
            attempts: 2
        })
    );
}

#[tokio::test(start_paused = true)]
async fn retry_timeouts_before_a_final_error_do_not_hide_it() {
    let backoff = Backoff::constant(ms(10))
        .jitter(Jitter::None)
        .max_attempts(3)
        .build()
        .unwrap();
    let mut calls = 0u32;
    let result = Retry::new(backoff, move || {
        calls += 1;
        let n = calls;
        async move {
            if n < 3 {
                std::future::pending::<()>().await;
            }
            Err::<u8, _>(format!("final error after {n} attempts"))
        }
    })
    .attempt_timeout(ms(50))
    .await;
    assert_eq!(
        result,
        Err(RetryError::Inner("final error after 3 attempts".to_owned()))
    );
}

#[tokio::test(start_paused = true)]
async fn retry_deadline_after_a_timed_out_last_attempt_carries_no_error() {
    // RetryError::DeadlineExceeded.last_error: "None if no attempt had failed with an error:
    // none had finished, or the last one timed out".
    let backoff = Backoff::constant(ms(100))
        .jitter(Jitter::None)
        .max_attempts(10)
        .build()
        .unwrap();
    let mut calls = 0u32;
    let t0 = now();
    let result = Retry::new(backoff, move || {
        calls += 1;
        let n = calls;
        async move {
            if n > 1 {
                std::future::pending::<()>().await;
            }
            Err::<u8, _>("first")
        }
    })
    .attempt_timeout(ms(300))
    .deadline(Deadline::after(&Tokio, ms(1000)))
    .await;
    // 0: fails; 100: attempt 2 times out at 400; 500: attempt 3 times out at 800; a sleep to
    // 900 leaves 100 ms: attempt 4 starts and the deadline cuts it at 1000.
    assert!(now() - t0 <= ms(1000));
    match result {
        Err(RetryError::DeadlineExceeded { attempts, .. }) => assert!(attempts >= 3),
        other => panic!("expected DeadlineExceeded, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn retry_deadline_cuts_a_running_attempt_and_drops_it() {
    let backoff = Backoff::constant(ms(10)).max_attempts(3).build().unwrap();
    let (flag, dropped) = drop_flag();
    let mut flag = Some(flag);
    let t0 = now();
    let result = Retry::new(backoff, move || {
        let guard = flag.take();
        async move {
            let _guard = guard;
            tokio::time::sleep(secs(10)).await;
            Ok::<u8, String>(1)
        }
    })
    .deadline(Deadline::after(&Tokio, secs(1)))
    .await;
    assert_eq!(
        result,
        Err(RetryError::DeadlineExceeded {
            last_error: None,
            attempts: 1
        })
    );
    assert_eq!(now() - t0, secs(1));
    assert!(dropped.load(SeqCst));
}

#[tokio::test(start_paused = true)]
async fn retry_deadline_cut_keeps_the_last_error_seen_before_it() {
    let backoff = Backoff::constant(ms(10))
        .jitter(Jitter::None)
        .max_attempts(5)
        .build()
        .unwrap();
    let mut calls = 0u32;
    let result = Retry::new(backoff, move || {
        calls += 1;
        let first = calls == 1;
        async move {
            if first {
                Err::<u8, _>("first failure")
            } else {
                tokio::time::sleep(secs(3600)).await;
                Err("never seen")
            }
        }
    })
    .deadline(Deadline::after(&Tokio, secs(1)))
    .await;
    assert_eq!(
        result,
        Err(RetryError::DeadlineExceeded {
            last_error: Some("first failure"),
            attempts: 2
        })
    );
}

#[tokio::test(start_paused = true)]
async fn retry_with_an_expired_deadline_starts_no_attempt() {
    let backoff = Backoff::constant(ms(10)).max_attempts(3).build().unwrap();
    let starts = Starts::default();
    let result = Retry::new(backoff, failing_op(None, &starts))
        .deadline(Deadline::after(&Tokio, Duration::ZERO))
        .await;
    assert!(starts.lock().unwrap().is_empty(), "an attempt started");
    assert_eq!(
        result,
        Err(RetryError::DeadlineExceeded {
            last_error: None,
            attempts: 0
        })
    );
}

#[tokio::test(start_paused = true)]
async fn retry_min_attempt_time_longer_than_the_deadline_starts_no_attempt() {
    let backoff = Backoff::constant(ms(10)).max_attempts(3).build().unwrap();
    let starts = Starts::default();
    let result = Retry::new(backoff, failing_op(None, &starts))
        .deadline(Deadline::after(&Tokio, secs(1)))
        .min_attempt_time(secs(2))
        .await;
    assert!(
        starts.lock().unwrap().is_empty(),
        "a doomed attempt started"
    );
    assert!(matches!(
        result,
        Err(RetryError::DeadlineExceeded { attempts: 0, .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn retry_min_attempt_time_skips_the_doomed_retry_without_sleeping_first() {
    let backoff = Backoff::constant(ms(300))
        .jitter(Jitter::None)
        .max_attempts(10)
        .build()
        .unwrap();
    let starts = Starts::default();
    let t0 = now();
    let result = Retry::new(backoff, failing_op(None, &starts))
        .deadline(Deadline::after(&Tokio, secs(1)))
        .min_attempt_time(ms(500))
        .await;
    // 0 ms: attempt 1; 300 ms: attempt 2 (700 ms left); a third at 600 ms would have only
    // 400 ms left, so it is not made and the call ends at 300 ms.
    assert_eq!(starts.lock().unwrap().len(), 2);
    assert_eq!(now() - t0, ms(300));
    assert_eq!(
        result,
        Err(RetryError::DeadlineExceeded {
            last_error: Some(Hinted { id: 2, hint: None }),
            attempts: 2
        })
    );
}

#[tokio::test(start_paused = true)]
async fn retry_two_deadlines_the_earlier_wins_in_either_order() {
    for early_first in [true, false] {
        let backoff = Backoff::constant(ms(10)).max_attempts(3).build().unwrap();
        let early = Deadline::after(&Tokio, secs(1));
        let late = Deadline::after(&Tokio, secs(3600));
        let (a, b) = if early_first {
            (early, late)
        } else {
            (late, early)
        };
        let t0 = now();
        let result = Retry::new(backoff, || async {
            tokio::time::sleep(secs(7200)).await;
            Ok::<u8, String>(0)
        })
        .deadline(a)
        .deadline(b)
        .await;
        assert!(matches!(result, Err(RetryError::DeadlineExceeded { .. })));
        assert_eq!(now() - t0, secs(1), "early_first={early_first}");
    }
}

#[tokio::test(start_paused = true)]
async fn retry_attempt_timeout_counts_as_retryable_and_drops_each_hung_attempt() {
    let backoff = Backoff::constant(ms(10))
        .jitter(Jitter::None)
        .max_attempts(3)
        .build()
        .unwrap();
    let live = Arc::new(AtomicUsize::new(0));
    let calls = Arc::new(AtomicU32::new(0));
    let (l, c) = (live.clone(), calls.clone());
    let t0 = now();
    let result = Retry::new(backoff, move || {
        c.fetch_add(1, SeqCst);
        let guard = Live::enter(&l);
        async move {
            let _guard = guard;
            std::future::pending::<Result<u8, String>>().await
        }
    })
    .attempt_timeout(ms(100))
    .await;
    assert_eq!(result, Err(RetryError::AttemptTimedOut));
    assert_eq!(calls.load(SeqCst), 3);
    assert_eq!(live.load(SeqCst), 0);
    assert_eq!(now() - t0, ms(320));
}

#[tokio::test(start_paused = true)]
async fn retry_attempt_timeout_extremes_do_not_panic() {
    for timeout in [Duration::ZERO, Duration::from_nanos(1), Duration::MAX] {
        let backoff = Backoff::constant(ms(10)).max_attempts(3).build().unwrap();
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let result = Retry::new(backoff, move || {
            c.fetch_add(1, SeqCst);
            async {
                tokio::time::sleep(ms(5)).await;
                Ok::<u8, String>(7)
            }
        })
        .attempt_timeout(timeout)
        .await;
        assert!(calls.load(SeqCst) <= 3);
        if timeout == Duration::MAX {
            assert_eq!(result, Ok(7));
        } else {
            assert!(
                matches!(result, Ok(7) | Err(RetryError::AttemptTimedOut)),
                "{result:?}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn retry_deadline_duration_max_saturates_instead_of_overflowing() {
    let backoff = Backoff::constant(ms(10)).max_attempts(5).build().unwrap();
    let mut calls = 0;
    let result = Retry::new(backoff, move || {
        calls += 1;
        let ok = calls == 3;
        async move { if ok { Ok(calls) } else { Err("not yet") } }
    })
    .deadline(Deadline::after(&Tokio, Duration::MAX))
    .min_attempt_time(Duration::MAX)
    .await;
    // min_attempt_time = MAX: "more than budget remains" cannot hold for any finite deadline;
    // saturating far in the future it may or may not; it must not panic either way.
    assert!(matches!(
        result,
        Ok(3) | Err(RetryError::DeadlineExceeded { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn retry_dropped_at_seeded_points_leaves_nothing_running() {
    let mut rng = SplitMix64::new(0x5EED);
    for round in 0..64u64 {
        let backoff = Backoff::exponential(ms(20))
            .max_attempts(10)
            .build()
            .unwrap();
        let live = Arc::new(AtomicUsize::new(0));
        let calls = Arc::new(AtomicU32::new(0));
        let (l, c) = (live.clone(), calls.clone());
        let mut work_rng = SplitMix64::new(rng.next_u64());
        let retry = Retry::new(backoff, move || {
            c.fetch_add(1, SeqCst);
            let guard = Live::enter(&l);
            let work = ms(work_rng.below_or_equal(60));
            async move {
                let _guard = guard;
                tokio::time::sleep(work).await;
                Err::<(), _>("transient")
            }
        })
        .attempt_timeout(ms(40))
        .seed(round);
        let cut = ms(rng.below_or_equal(600));
        let outcome = tokio::time::timeout(cut, retry.into_future()).await;
        assert_eq!(live.load(SeqCst), 0, "round {round}: an attempt survived");
        let seen = calls.load(SeqCst);
        assert!(seen <= 10, "round {round}: {seen} calls");
        tokio::time::sleep(secs(3600)).await;
        assert_eq!(calls.load(SeqCst), seen, "round {round}: called after drop");
        if let Ok(result) = outcome {
            assert!(result.is_err());
        }
    }
}

#[test]
fn retry_on_fake_clock_honours_the_shared_deadline() {
    let clock = FakeClock::new();
    let backoff = Backoff::constant(secs(1))
        .jitter(Jitter::None)
        .max_attempts(10)
        .build()
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let deadline = Deadline::after(&clock, ms(2500));
    let start = clock.elapsed();
    let retry = Retry::new(backoff, move || {
        let id = c.fetch_add(1, SeqCst) + 1;
        async move { Err::<(), _>(id) }
    })
    .runtime(clock.clone())
    .deadline(deadline)
    .into_future();
    let mut retry = pin!(retry);
    let result = loop {
        if let Poll::Ready(r) = poll_once(retry.as_mut()) {
            break r;
        }
        assert!(clock.elapsed() - start < secs(10), "never finished");
        clock.advance(ms(100));
    };
    assert_eq!(
        result,
        Err(RetryError::DeadlineExceeded {
            last_error: Some(3),
            attempts: 3
        })
    );
    assert_eq!(clock.elapsed() - start, secs(2));
}

#[tokio::test(start_paused = true)]
async fn retry_schedule_total_delay_cap_bounds_the_sleeps() {
    let built = Backoff::constant(ms(300))
        .jitter(Jitter::None)
        .max_elapsed(secs(1))
        .max_attempts(100)
        .build();
    let Ok(backoff) = built else {
        return;
    };
    let starts = Starts::default();
    let t0 = now();
    let result = Retry::new(backoff, failing_op(None, &starts)).await;
    assert!(matches!(result, Err(RetryError::Inner(_))), "{result:?}");
    assert!(
        now() - t0 <= secs(1),
        "slept {:?} past max_elapsed",
        now() - t0
    );
    assert!(starts.lock().unwrap().len() >= 2);
}

#[tokio::test(start_paused = true)]
async fn retry_not_retryable_error_ignores_its_hint() {
    let backoff = Backoff::constant(ms(10)).max_attempts(5).build().unwrap();
    let starts = Starts::default();
    let t0 = now();
    let result = Retry::new(backoff, failing_op(Some(secs(5)), &starts))
        .when(|_e: &Hinted| false)
        .honor_retry_after()
        .await;
    assert_eq!(starts.lock().unwrap().len(), 1);
    assert_eq!(now() - t0, Duration::ZERO);
    assert!(matches!(
        result,
        Err(RetryError::Inner(Hinted { id: 1, .. }))
    ));
}

type BoxedRetry = Pin<Box<dyn Future<Output = Result<&'static str, RetryError<&'static str>>>>>;

#[tokio::test(start_paused = true)]
async fn race_of_retries_the_loser_is_never_called_again() {
    let loser_calls = Arc::new(AtomicU32::new(0));
    let lc = loser_calls.clone();
    let backoff = Backoff::constant(ms(100))
        .jitter(Jitter::None)
        .max_attempts(50)
        .build()
        .unwrap();
    let loser = Retry::new(backoff, move || {
        lc.fetch_add(1, SeqCst);
        async { Err::<&str, &str>("loser failed") }
    })
    .into_future();
    let mut winner_calls = 0u32;
    let winner = Retry::new(backoff, move || {
        winner_calls += 1;
        let ok = winner_calls == 4;
        async move { if ok { Ok("winner") } else { Err("not yet") } }
    })
    .into_future();
    let racers: Vec<BoxedRetry> = vec![Box::pin(loser), Box::pin(winner)];
    assert_eq!(race_ok(racers).await, Ok("winner"));
    let seen = loser_calls.load(SeqCst);
    assert!(seen <= 4, "{seen}");
    tokio::time::sleep(secs(60)).await;
    assert_eq!(loser_calls.load(SeqCst), seen);
}

#[tokio::test(start_paused = true)]
async fn fan_out_of_retries_spends_one_shared_deadline() {
    let t0 = now();
    let deadline = Deadline::after(&Tokio, secs(1));
    let calls: Arc<Mutex<Vec<(u32, Duration)>>> = Arc::default();
    let c = calls.clone();
    let results: Vec<_> = FanOut::new(2)
        .unwrap()
        .ordered()
        .run_iter(0..10u32, move |item| {
            let c = c.clone();
            let backoff = Backoff::constant(ms(100))
                .jitter(Jitter::None)
                .max_attempts(u32::MAX)
                .build()
                .unwrap();
            Retry::new(backoff, move || {
                c.lock().unwrap().push((item, now() - t0));
                async move { Err::<(), _>(item) }
            })
            .deadline(deadline)
            .into_future()
        })
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(results.len(), 10);
    assert!(
        now() - t0 <= secs(1),
        "the fan-out outlived the shared deadline"
    );
    let calls = calls.lock().unwrap().clone();
    for (item, at) in &calls {
        assert!(
            *at < secs(1),
            "item {item} attempted at {at:?}, at/after the deadline"
        );
    }
    for (i, r) in results.iter().enumerate() {
        let item = u32::try_from(i).unwrap();
        let made = u32::try_from(calls.iter().filter(|(it, _)| *it == item).count()).unwrap();
        match r {
            Err(RetryError::DeadlineExceeded {
                last_error,
                attempts,
            }) => {
                assert_eq!(*attempts, made, "item {i}");
                assert_eq!(*last_error, (made > 0).then_some(item), "item {i}");
            }
            other => panic!("item {i}: {other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn fallback_on_a_retry_deadline_sees_the_retry_error() {
    let backoff = Backoff::constant(ms(400))
        .jitter(Jitter::None)
        .max_attempts(10)
        .build()
        .unwrap();
    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    let result = Retry::new(backoff, || async { Err::<&str, _>("primary down") })
        .deadline(Deadline::after(&Tokio, secs(1)))
        .into_future()
        .or_fallback(
            fallback::with(move |e: RetryError<&'static str>| {
                *s.lock().unwrap() = Some(e);
                Ok("cached")
            })
            .when(|e: &RetryError<&'static str>| matches!(e, RetryError::DeadlineExceeded { .. })),
        )
        .await;
    assert_eq!(result, Ok("cached"));
    assert_eq!(
        seen.lock().unwrap().take(),
        Some(RetryError::DeadlineExceeded {
            last_error: Some("primary down"),
            attempts: 3
        })
    );
}

// ---------------------------------------------------------------------------------------------
// timeouts and deadlines
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn timeout_zero_on_a_ready_future_returns_the_output() {
    assert_eq!(async { 5 }.timeout(Duration::ZERO).await, Ok(5));
    let past = Deadline::after(&Tokio, Duration::ZERO);
    assert_eq!(async { 6 }.deadline(past).await, Ok(6));
}

#[tokio::test(start_paused = true)]
async fn timeout_zero_on_a_pending_future_elapses_without_waiting() {
    let t0 = now();
    assert_eq!(
        std::future::pending::<u8>().timeout(Duration::ZERO).await,
        Err(Elapsed)
    );
    let past = Deadline::after(&Tokio, Duration::ZERO);
    assert_eq!(
        std::future::pending::<u8>().deadline(past).await,
        Err(DeadlineExceeded)
    );
    assert_eq!(now() - t0, Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn timeout_future_and_timer_ready_in_the_same_poll_the_future_wins() {
    let inner = tokio::time::sleep(ms(100));
    assert_eq!(inner.timeout(ms(100)).await, Ok(()));
    let deadline = Deadline::after(&Tokio, ms(100));
    assert_eq!(tokio::time::sleep(ms(100)).deadline(deadline).await, Ok(()));
}

#[test]
fn timeout_on_fake_clock_future_and_timer_ready_together_the_future_wins() {
    let clock = FakeClock::new();
    let mut fut = pin!(clock.sleep(secs(1)).timeout_on(&clock, secs(1)));
    assert!(poll_once(fut.as_mut()).is_pending());
    clock.advance(secs(1));
    assert_eq!(poll_once(fut.as_mut()), Poll::Ready(Ok(())));

    let mut pending = pin!(std::future::pending::<u8>().timeout_on(&clock, secs(1)));
    assert!(poll_once(pending.as_mut()).is_pending());
    clock.advance(ms(999));
    assert!(poll_once(pending.as_mut()).is_pending());
    clock.advance(ms(1));
    assert_eq!(poll_once(pending.as_mut()), Poll::Ready(Err(Elapsed)));
}

#[tokio::test(start_paused = true)]
async fn timeout_duration_max_does_not_panic_and_lets_the_future_finish() {
    let slow = async {
        tokio::time::sleep(secs(3600)).await;
        9
    };
    assert_eq!(slow.timeout(Duration::MAX).await, Ok(9));
}

#[test]
fn timeout_duration_max_on_fake_clock_waits_about_thirty_years_and_a_century_waits_a_century() {
    // "Fails with Elapsed unless the future completes within `duration`. A `duration` the
    // clock cannot add to now (such as `Duration::MAX`) waits about thirty years instead".
    let year = secs(365 * 24 * 3600);
    let clock = FakeClock::new();
    let mut forever = pin!(std::future::pending::<u8>().timeout_on(&clock, Duration::MAX));
    let mut century = pin!(std::future::pending::<u8>().timeout_on(&clock, year * 100));
    for years in 0..29 {
        assert!(
            poll_once(forever.as_mut()).is_pending(),
            "Duration::MAX timeout elapsed after {years} virtual years"
        );
        clock.advance(year);
    }
    clock.advance(year * 2);
    assert_eq!(poll_once(forever.as_mut()), Poll::Ready(Err(Elapsed)));
    for years in 31..100 {
        assert!(
            poll_once(century.as_mut()).is_pending(),
            "a century's timeout elapsed after {years} virtual years"
        );
        clock.advance(year);
    }
    clock.advance(Duration::from_secs(1));
    assert_eq!(poll_once(century.as_mut()), Poll::Ready(Err(Elapsed)));
}

#[test]
fn deadline_on_fake_clock_past_deadline_ready_future_wins_pending_fails() {
    let clock = FakeClock::new();
    let past = Deadline::at(clock.now());
    clock.advance(secs(1));
    let mut ready = pin!(std::future::ready(3u8).deadline_on(&clock, past));
    assert_eq!(poll_once(ready.as_mut()), Poll::Ready(Ok(3)));
    let mut pending = pin!(std::future::pending::<u8>().deadline_on(&clock, past));
    assert_eq!(
        poll_once(pending.as_mut()),
        Poll::Ready(Err(DeadlineExceeded))
    );
    let mut never = pin!(std::future::pending::<u8>().deadline_on(&clock, Deadline::none()));
    clock.advance(secs(3600));
    assert!(poll_once(never.as_mut()).is_pending());
}

#[tokio::test(start_paused = true)]
async fn deadline_a_hundred_years_away_does_not_fire() {
    let century = Deadline::after(&Tokio, secs(100 * 365 * 24 * 3600));
    let work = async {
        tokio::time::sleep(secs(1)).await;
        1
    };
    assert_eq!(work.deadline(century).await, Ok(1));
    assert_eq!(
        std::future::ready(2).deadline(Deadline::none()).await,
        Ok(2)
    );
}

#[tokio::test(start_paused = true)]
async fn nested_deadlines_an_inner_later_deadline_cannot_extend_the_outer() {
    let outer = Deadline::after(&Tokio, secs(1));
    let inner = Deadline::after(&Tokio, secs(60));
    let t0 = now();
    // The inner layer tightened to the caller's deadline: whichever layer reports it, the
    // operation ends at the outer deadline with `DeadlineExceeded`.
    let result = tokio::time::sleep(secs(30))
        .deadline(outer.min(inner))
        .deadline(outer)
        .await;
    assert!(
        matches!(result, Err(DeadlineExceeded) | Ok(Err(DeadlineExceeded))),
        "{result:?}"
    );
    assert_eq!(now() - t0, secs(1));
    let t1 = now();
    let nested = tokio::time::sleep(secs(30))
        .deadline(Deadline::after(&Tokio, secs(60)))
        .deadline(Deadline::after(&Tokio, secs(2)))
        .await;
    assert_eq!(nested, Err(DeadlineExceeded));
    assert_eq!(now() - t1, secs(2));
}

#[test]
fn deadline_arithmetic_saturates_and_min_never_extends() {
    let clock = FakeClock::new();
    let t = clock.now();
    let far = Deadline::after(&clock, Duration::MAX);
    // "saturating far in the future": far, not necessarily Duration::MAX away.
    assert!(!far.is_expired(t + secs(10 * 365 * 24 * 3600)));
    assert!(far.remaining(t).unwrap() > secs(10 * 365 * 24 * 3600));
    let d = Deadline::after(&clock, secs(2));
    assert_eq!(d.min(far), d);
    assert_eq!(far.min(d), d);
    assert_eq!(Deadline::none().min(d), d);
    assert_eq!(Deadline::none().min(Deadline::none()), Deadline::none());
    assert_eq!(Deadline::default(), Deadline::none());
    assert!(!d.allows(t, Duration::MAX));
    assert!(Deadline::none().allows(t, Duration::MAX));
    clock.advance(secs(3));
    let later = clock.now();
    assert!(d.is_expired(later));
    assert_eq!(d.remaining(later), Some(Duration::ZERO));
    assert!(
        !d.allows(later, Duration::ZERO),
        "an expired deadline allows more work"
    );
    assert_eq!(Deadline::from(t), Deadline::at(t));
    assert_eq!(Deadline::at(t).instant(), Some(t));
}

#[tokio::test(start_paused = true)]
async fn timeout_drop_drops_the_inner_future() {
    let (flag, dropped) = drop_flag();
    let fut = async move {
        let _flag = flag;
        std::future::pending::<()>().await;
    };
    let mut t = Box::pin(fut.timeout(secs(5)));
    assert!(poll_once(t.as_mut()).is_pending());
    assert!(!dropped.load(SeqCst));
    drop(t);
    assert!(dropped.load(SeqCst));
}

#[test]
fn time_errors_display_lowercase() {
    assert!(is_lowercase_message(&Elapsed.to_string()), "{Elapsed}");
    assert!(
        is_lowercase_message(&DeadlineExceeded.to_string()),
        "{DeadlineExceeded}"
    );
}

// ---------------------------------------------------------------------------------------------
// race
// ---------------------------------------------------------------------------------------------

async fn replica(delay: Duration, ok: bool, id: u32, flag: DropFlag) -> Result<u32, String> {
    let _flag = flag;
    tokio::time::sleep(delay).await;
    if ok {
        Ok(id)
    } else {
        Err(format!("replica {id} failed"))
    }
}

#[tokio::test(start_paused = true)]
async fn race_first_success_wins_and_losers_are_dropped_at_once() {
    let mut flags = Vec::new();
    let mut racers = Vec::new();
    for (id, (delay, ok)) in [
        (ms(10), false),
        (ms(50), true),
        (ms(900), true),
        (secs(60), false),
    ]
    .into_iter()
    .enumerate()
    {
        let (flag, dropped) = drop_flag();
        flags.push(dropped);
        racers.push(replica(delay, ok, u32::try_from(id).unwrap(), flag));
    }
    let t0 = now();
    let result = race_ok(racers).await;
    assert_eq!(result, Ok(1));
    assert_eq!(now() - t0, ms(50));
    for (i, f) in flags.iter().enumerate() {
        assert!(
            f.load(SeqCst),
            "contestant {i} not dropped when the race ended"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn race_all_failing_returns_every_error_in_input_order() {
    let racers: Vec<_> = [(ms(30), 0), (ms(20), 1), (ms(10), 2), (ms(20), 3)]
        .into_iter()
        .map(|(d, id)| replica(d, false, id, drop_flag().0))
        .collect();
    let result = race_ok(racers).await;
    assert_eq!(
        result,
        Err(RaceError::AllFailed(vec![
            "replica 0 failed".to_owned(),
            "replica 1 failed".to_owned(),
            "replica 2 failed".to_owned(),
            "replica 3 failed".to_owned(),
        ]))
    );
}

#[tokio::test(start_paused = true)]
async fn race_with_no_contestants_is_empty_error() {
    let result = race_ok(Vec::<std::future::Ready<Result<u8, String>>>::new()).await;
    assert_eq!(result, Err(RaceError::Empty));
    let msg = RaceError::<String>::Empty.to_string();
    assert!(is_lowercase_message(&msg), "{msg}");
    let all = RaceError::AllFailed(vec!["x".to_owned()]).to_string();
    assert!(is_lowercase_message(&all), "{all}");
}

#[tokio::test(start_paused = true)]
async fn race_failure_and_success_ready_in_the_same_poll_the_success_wins() {
    let racers = vec![
        std::future::ready(Err::<u8, &str>("fast failure")),
        std::future::ready(Ok(2)),
        std::future::ready(Err("another failure")),
    ];
    assert_eq!(race_ok(racers).await, Ok(2));
    let both: Vec<_> = vec![
        std::future::ready(Ok::<u8, &str>(1)),
        std::future::ready(Ok(2)),
    ];
    let winner = race_ok(both).await.unwrap();
    assert!(winner == 1 || winner == 2);
}

/// Wakes itself, then completes with `output`; panics if polled again after completing (as
/// `async` blocks and `std::future::Ready` do).
fn wake_then_complete<T: Unpin>(output: T) -> impl Future<Output = T> + Unpin {
    let mut output = Some(output);
    std::future::poll_fn(move |cx| {
        let out = output
            .take()
            .expect("contestant polled again after it completed");
        cx.waker().wake_by_ref();
        Poll::Ready(out)
    })
}

#[tokio::test(start_paused = true)]
async fn race_never_polls_a_finished_contestant_again_even_if_it_woke_itself() {
    let failing: Pin<Box<dyn Future<Output = Result<u8, &str>>>> =
        Box::pin(wake_then_complete(Err("failed, but woke itself first")));
    let failing_too: Pin<Box<dyn Future<Output = Result<u8, &str>>>> =
        Box::pin(wake_then_complete(Err("same")));
    let slow_ok: Pin<Box<dyn Future<Output = Result<u8, &str>>>> = Box::pin(async {
        tokio::time::sleep(ms(10)).await;
        Ok(1)
    });
    assert_eq!(race_ok(vec![failing, slow_ok, failing_too]).await, Ok(1));
}

#[tokio::test(start_paused = true)]
async fn race_dropped_mid_way_drops_every_contestant() {
    let mut flags = Vec::new();
    let mut racers = Vec::new();
    for id in 0..5 {
        let (flag, dropped) = drop_flag();
        flags.push(dropped);
        racers.push(replica(secs(10 + u64::from(id)), true, id, flag));
    }
    let outcome = tokio::time::timeout(secs(1), race_ok(racers)).await;
    assert!(outcome.is_err());
    assert!(flags.iter().all(|f| f.load(SeqCst)));
}

#[tokio::test(start_paused = true)]
async fn race_many_ready_failures_then_one_success_no_stack_or_order_trouble() {
    let racers: Vec<_> = (0..10_000u32)
        .map(|i| std::future::ready(if i == 9_999 { Ok(i) } else { Err(i) }))
        .collect();
    assert_eq!(race_ok(racers).await, Ok(9_999));
    let racers: Vec<_> = (0..10_000u32)
        .map(|i| std::future::ready(Err::<u8, _>(i)))
        .collect();
    match race_ok(racers).await {
        Err(RaceError::AllFailed(errors)) => {
            assert_eq!(errors, (0..10_000).collect::<Vec<u32>>());
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn race_a_self_waking_contestant_does_not_starve_a_woken_one() {
    // A never finishes and wakes itself on every poll; after 100 polls it also wakes B, which
    // is then ready. "contestants are polled when woken": B must get its turn.
    let b_waker: Arc<Mutex<Option<Waker>>> = Arc::default();
    let b_ready = Arc::new(AtomicBool::new(false));
    let a_polls = Arc::new(AtomicUsize::new(0));
    let (bw, br, ap) = (b_waker.clone(), b_ready.clone(), a_polls.clone());
    let a: Pin<Box<dyn Future<Output = Result<&str, &str>>>> =
        Box::pin(std::future::poll_fn(move |cx| {
            let n = ap.fetch_add(1, SeqCst) + 1;
            if n == 100 {
                br.store(true, SeqCst);
                if let Some(w) = bw.lock().unwrap().take() {
                    w.wake();
                }
            }
            if n < 100_000 {
                cx.waker().wake_by_ref();
            }
            Poll::Pending
        }));
    let (bw, br) = (b_waker.clone(), b_ready.clone());
    let b: Pin<Box<dyn Future<Output = Result<&str, &str>>>> =
        Box::pin(std::future::poll_fn(move |cx| {
            if br.load(SeqCst) {
                Poll::Ready(Ok("b"))
            } else {
                *bw.lock().unwrap() = Some(cx.waker().clone());
                Poll::Pending
            }
        }));
    let result = race_ok(vec![a, b]).await;
    assert_eq!(result, Ok("b"));
    assert!(
        a_polls.load(SeqCst) < 100_000,
        "B was starved by A for {} polls",
        a_polls.load(SeqCst)
    );
}

// ---------------------------------------------------------------------------------------------
// fallback
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn fallback_is_not_run_on_success() {
    let used = Arc::new(AtomicU32::new(0));
    let u = used.clone();
    let with = fallback::with(move |_e: String| {
        u.fetch_add(1, SeqCst);
        Ok(0)
    });
    assert_eq!(async { Ok::<u8, String>(1) }.or_fallback(with).await, Ok(1));
    let u = used.clone();
    let with_async = fallback::with_async(move |_e: String| {
        u.fetch_add(1, SeqCst);
        async { Ok(0) }
    });
    assert_eq!(
        async { Ok::<u8, String>(2) }.or_fallback(with_async).await,
        Ok(2)
    );
    assert_eq!(used.load(SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn fallback_sees_the_primary_error_intact_and_may_fail_itself() {
    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    let result = async { Err::<u8, _>(String::from("primary: boom")) }
        .or_fallback(fallback::with(move |e: String| {
            *s.lock().unwrap() = Some(e.clone());
            Err(format!("fallback also failed after {e}"))
        }))
        .await;
    assert_eq!(seen.lock().unwrap().as_deref(), Some("primary: boom"));
    assert_eq!(
        result,
        Err("fallback also failed after primary: boom".to_owned())
    );
    let async_failed = async { Err::<u8, _>(7u32) }
        .or_fallback(fallback::with_async(|e: u32| async move { Err(e + 1) }))
        .await;
    assert_eq!(async_failed, Err(8));
}

#[tokio::test(start_paused = true)]
async fn fallback_when_declines_pass_the_error_through_unchanged() {
    let used = Arc::new(AtomicU32::new(0));
    let u = used.clone();
    let fb = fallback::with(move |_e: std::io::Error| {
        u.fetch_add(1, SeqCst);
        Ok(0u8)
    })
    .when(|e: &std::io::Error| e.kind() == std::io::ErrorKind::TimedOut);
    let err = async {
        Err::<u8, _>(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such key",
        ))
    }
    .or_fallback(fb)
    .await
    .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    assert_eq!(err.to_string(), "no such key");
    assert_eq!(used.load(SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn fallback_replaces_a_timeout() {
    let t0 = now();
    let slow = async {
        tokio::time::sleep(secs(5)).await;
        1u8
    };
    let result = slow.timeout(ms(10)).or_fallback(fallback::value(0u8)).await;
    assert_eq!(result, Ok(0));
    assert_eq!(now() - t0, ms(10));
}

#[tokio::test(start_paused = true)]
async fn fallback_drop_drops_whichever_future_is_running() {
    // Dropped while the primary runs.
    let (pflag, primary_dropped) = drop_flag();
    let primary = async move {
        let _f = pflag;
        std::future::pending::<Result<u8, u8>>().await
    };
    let mut fut = Box::pin(primary.or_fallback(fallback::value(0u8)));
    assert!(poll_once(fut.as_mut()).is_pending());
    drop(fut);
    assert!(primary_dropped.load(SeqCst));

    // Dropped while the fallback runs: the primary finished, the fallback future is dropped.
    let (fflag, fallback_dropped) = drop_flag();
    let (pflag, primary_dropped) = drop_flag();
    let primary = async move {
        let _f = pflag;
        Err::<u8, u8>(1)
    };
    let mut fflag = Some(fflag);
    let fb = fallback::with_async(move |_e: u8| {
        let f = fflag.take();
        async move {
            let _f = f;
            std::future::pending::<Result<u8, u8>>().await
        }
    });
    let mut fut = Box::pin(primary.or_fallback(fb));
    assert!(poll_once(fut.as_mut()).is_pending());
    assert!(primary_dropped.load(SeqCst));
    assert!(!fallback_dropped.load(SeqCst));
    drop(fut);
    assert!(fallback_dropped.load(SeqCst));
}

// ---------------------------------------------------------------------------------------------
// fan_out
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn fan_out_never_exceeds_its_limit_in_flight_or_taken_under_a_slow_consumer() {
    let mut rng = SplitMix64::new(77);
    for limit in [1usize, 2, 3, 7] {
        let durations: Vec<u64> = (0..40).map(|_| rng.between(1, 50)).collect();
        let inflight = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let pulled = Arc::new(AtomicUsize::new(0));
        let p = pulled.clone();
        let inputs = durations.clone().into_iter().inspect(move |_| {
            p.fetch_add(1, SeqCst);
        });
        let (i2, p2) = (inflight.clone(), peak.clone());
        let mut results = pin!(FanOut::new(limit).unwrap().run_iter(inputs, move |d| {
            let (i3, p3) = (i2.clone(), p2.clone());
            async move {
                let n = i3.fetch_add(1, SeqCst) + 1;
                p3.fetch_max(n, SeqCst);
                tokio::time::sleep(ms(d)).await;
                i3.fetch_sub(1, SeqCst);
                d
            }
        }));
        let mut delivered = 0usize;
        let mut got = Vec::new();
        while let Some(r) = results.next().await {
            delivered += 1;
            got.push(r.unwrap());
            let taken = pulled.load(SeqCst);
            assert!(
                taken - delivered <= limit,
                "limit {limit}: {taken} taken, {delivered} delivered"
            );
            assert!(results.in_flight() <= limit);
            tokio::time::sleep(ms(rng.between(0, 80))).await;
        }
        assert!(peak.load(SeqCst) <= limit, "limit {limit}: peak {peak:?}");
        got.sort_unstable();
        let mut want = durations.clone();
        want.sort_unstable();
        assert_eq!(got, want, "limit {limit}: results lost or duplicated");
    }
}

#[tokio::test(start_paused = true)]
async fn fan_out_ordered_delivers_every_result_in_input_order() {
    let mut rng = SplitMix64::new(4242);
    let durations: Vec<u64> = (0..60).map(|_| rng.between(0, 100)).collect();
    let inputs: Vec<(usize, u64)> = durations.iter().copied().enumerate().collect();
    let got: Vec<usize> = FanOut::new(5)
        .unwrap()
        .ordered()
        .run_iter(inputs, |(i, d)| async move {
            tokio::time::sleep(ms(d)).await;
            i
        })
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(got, (0..60).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn fan_out_ordered_slow_head_holds_later_results_within_the_bound() {
    let pulled = Arc::new(AtomicUsize::new(0));
    let p = pulled.clone();
    let inputs = (0..20u64).inspect(move |_| {
        p.fetch_add(1, SeqCst);
    });
    let mut results = pin!(
        FanOut::new(3)
            .unwrap()
            .ordered()
            .run_iter(inputs, |i| async move {
                tokio::time::sleep(if i == 0 { secs(10) } else { ms(1) }).await;
                i
            })
    );
    tokio::time::sleep(secs(5)).await;
    let first = tokio::time::timeout(ms(1), results.next()).await;
    assert!(first.is_err(), "a later result overtook the head");
    assert!(
        pulled.load(SeqCst) <= 3,
        "{} inputs taken behind a held head",
        pulled.load(SeqCst)
    );
    let all: Vec<u64> = results.map(Result::unwrap).collect().await;
    assert_eq!(all, (0..20).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn fan_out_unordered_delivers_in_completion_order() {
    let durations = [50u64, 10, 40, 20, 30];
    let got: Vec<u64> = FanOut::new(5)
        .unwrap()
        .run_iter(durations, |d| async move {
            tokio::time::sleep(ms(d)).await;
            d
        })
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(got, [10, 20, 30, 40, 50]);
}

#[tokio::test(start_paused = true)]
async fn fan_out_try_run_never_takes_more_than_limit_undelivered_inputs() {
    let mut rng = SplitMix64::new(99);
    for limit in [1usize, 2, 4] {
        let pulled = Arc::new(AtomicUsize::new(0));
        let p = pulled.clone();
        let inputs = (0..30u64).map(move |_| rng_free_duration(&p));
        let mut results = pin!(
            FanOut::new(limit)
                .unwrap()
                .try_run_iter(inputs, |d| async move {
                    tokio::time::sleep(ms(d)).await;
                    Ok::<u64, String>(d)
                })
        );
        let mut delivered = 0usize;
        while let Some(r) = results.next().await {
            r.unwrap();
            delivered += 1;
            let taken = pulled.load(SeqCst);
            assert!(
                taken - delivered <= limit,
                "limit {limit}: {taken} taken, {delivered} delivered"
            );
            tokio::time::sleep(ms(rng.between(0, 40))).await;
        }
        assert_eq!(delivered, 30);
    }
}

#[tokio::test(start_paused = true)]
async fn fan_out_pulls_at_most_limit_inputs_beside_the_result_in_hand() {
    // Checked at the moment of each pull (inside the stream's poll), not after `next`
    // returns: "at most `limit` inputs are taken and not yet delivered [...] A result counts
    // as delivered once the poll that returns it has taken it: that poll refills its slot
    // before handing it over [...] (at that moment `limit` inputs are taken, plus the result
    // in hand)".
    let mut report = Vec::new();
    for (limit, ordered) in [(1usize, false), (1, true), (3, false), (3, true)] {
        let pulled = Arc::new(AtomicUsize::new(0));
        let delivered = Arc::new(AtomicUsize::new(0));
        let worst = Arc::new(AtomicUsize::new(0));
        let (p, d, w) = (pulled.clone(), delivered.clone(), worst.clone());
        let inputs = (0..12u64).inspect(move |_| {
            let taken = p.fetch_add(1, SeqCst) + 1;
            w.fetch_max(taken - d.load(SeqCst), SeqCst);
        });
        let mut fan = FanOut::new(limit).unwrap();
        if ordered {
            fan = fan.ordered();
        }
        let mut results = pin!(fan.run_iter(inputs, |i| async move {
            tokio::time::sleep(ms(1 + i % 3)).await;
            i
        }));
        while let Some(r) = results.next().await {
            r.unwrap();
            delivered.fetch_add(1, SeqCst);
            tokio::time::sleep(ms(10)).await;
        }
        // Undelivered here counts the result in hand, which the consumer has not seen yet.
        if worst.load(SeqCst) != limit + 1 {
            report.push(format!(
                "limit {limit} ordered {ordered}: at most {} inputs taken and undelivered at once",
                worst.load(SeqCst)
            ));
        }
    }
    assert!(report.is_empty(), "{report:#?}");
}

/// Counts a pull of the input iterator and returns a duration derived from the count.
fn rng_free_duration(pulled: &AtomicUsize) -> u64 {
    let n = pulled.fetch_add(1, SeqCst);
    u64::try_from(n % 7).unwrap() * 3 + 1
}

/// Module docs: "[`FanOut::try_run`] stops at the first error or panic, aborts the tasks still
/// running, takes no further input and ends after yielding that error."
#[tokio::test(start_paused = true)]
async fn fan_out_try_run_first_error_aborts_running_tasks_and_takes_no_more_input() {
    let calls = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let live = Arc::new(AtomicUsize::new(0));
    let (c, f, l) = (calls.clone(), finished.clone(), live.clone());
    let results: Vec<_> = FanOut::new(4)
        .unwrap()
        .try_run_iter(0..100u32, move |n| {
            c.fetch_add(1, SeqCst);
            let (f, guard) = (f.clone(), Live::enter(&l));
            async move {
                let _guard = guard;
                if n == 2 {
                    tokio::time::sleep(ms(10)).await;
                    return Err(format!("input {n} is bad"));
                }
                tokio::time::sleep(secs(1)).await;
                f.fetch_add(1, SeqCst);
                Ok(n)
            }
        })
        .collect()
        .await;
    assert_eq!(results.len(), 1, "{results:?}");
    assert!(matches!(&results[0], Err(FanOutError::Inner(e)) if e == "input 2 is bad"));
    tokio::time::sleep(secs(10)).await;
    assert_eq!(
        finished.load(SeqCst),
        0,
        "an aborted task ran to completion"
    );
    assert_eq!(live.load(SeqCst), 0, "a task survived the abort");
    assert_eq!(calls.load(SeqCst), 4, "input taken after the error");
}

#[tokio::test(start_paused = true)]
async fn fan_out_try_run_reports_a_panic_as_the_stopping_error() {
    let results: Vec<_> = FanOut::new(2)
        .unwrap()
        .try_run_iter(0..10u32, |n| async move {
            tokio::time::sleep(ms(u64::from(n))).await;
            assert!(n != 3, "hostile panic in input {n}");
            Ok::<u32, String>(n)
        })
        .collect()
        .await;
    let last = results.last().expect("at least the panic");
    assert!(matches!(last, Err(FanOutError::Task(_))), "{results:?}");
    assert_eq!(results.iter().filter(|r| r.is_err()).count(), 1);
    let Err(e) = last else { unreachable!() };
    assert!(is_lowercase_message(&e.to_string()), "{e}");
}

#[tokio::test(start_paused = true)]
async fn fan_out_run_delivers_a_panic_as_a_value_and_everything_else() {
    let got: Vec<_> = FanOut::new(3)
        .unwrap()
        .ordered()
        .run_iter(0..10u32, |n| async move {
            tokio::time::sleep(ms(u64::from(10 - n))).await;
            assert!(n != 4, "hostile panic");
            n
        })
        .collect()
        .await;
    assert_eq!(got.len(), 10);
    for (i, r) in got.iter().enumerate() {
        if i == 4 {
            assert!(r.is_err());
        } else {
            assert_eq!(*r.as_ref().unwrap(), u32::try_from(i).unwrap());
        }
    }
}

#[tokio::test(start_paused = true)]
async fn fan_out_panicking_items_free_their_slots_and_lose_nothing() {
    let inflight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (i2, p2) = (inflight.clone(), peak.clone());
    let got: Vec<_> = FanOut::new(2)
        .unwrap()
        .run_iter(0..30u32, move |n| {
            let guard = Live::enter(&i2);
            p2.fetch_max(i2.load(SeqCst), SeqCst);
            async move {
                let _guard = guard;
                tokio::time::sleep(ms(u64::from(n % 4))).await;
                assert!(n % 3 != 0, "hostile panic {n}");
                n
            }
        })
        .collect()
        .await;
    assert_eq!(got.len(), 30);
    assert_eq!(got.iter().filter(|r| r.is_err()).count(), 10);
    let mut oks: Vec<u32> = got.into_iter().filter_map(Result::ok).collect();
    oks.sort_unstable();
    assert_eq!(oks, (0..30).filter(|n| n % 3 != 0).collect::<Vec<_>>());
    assert!(peak.load(SeqCst) <= 2, "peak {peak:?}");
    assert_eq!(inflight.load(SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn fan_out_try_run_ends_for_good_after_the_error() {
    let mut results = pin!(
        FanOut::new(3)
            .unwrap()
            .try_run_iter(0..50u32, |n| async move {
                tokio::time::sleep(ms(u64::from(n))).await;
                if n == 5 {
                    Err(Outer {
                        cause: std::io::Error::other("item 5"),
                    })
                } else {
                    Ok(n)
                }
            })
    );
    let mut seen = Vec::new();
    while let Some(r) = results.next().await {
        seen.push(r);
    }
    let last = seen.pop().expect("the error");
    let Err(err) = last else {
        panic!("the stream ended without the error");
    };
    assert!(seen.iter().all(Result::is_ok));
    assert!(matches!(&err, FanOutError::Inner(o) if o.cause.to_string() == "item 5"));
    let links = chain(&err);
    assert!(links.iter().any(|l| l == "item 5"), "{links:?}");
    assert!(is_lowercase_message(&err.to_string()), "{err}");
}

#[tokio::test(start_paused = true)]
async fn fan_out_empty_input_ends_at_once() {
    let none: Vec<u8> = FanOut::new(3)
        .unwrap()
        .run_iter(Vec::<u8>::new(), |n| async move { n })
        .map(Result::unwrap)
        .collect()
        .await;
    assert!(none.is_empty());
    let none: Vec<_> = FanOut::new(3)
        .unwrap()
        .try_run_iter(Vec::<u8>::new(), |n| async move { Ok::<u8, u8>(n) })
        .collect()
        .await;
    assert!(none.is_empty());
}

#[tokio::test(start_paused = true)]
async fn fan_out_limit_zero_is_a_typed_error_and_huge_limit_works() {
    assert!(matches!(
        FanOut::new(0),
        Err(tidewall::ConfigError::Zero { .. })
    ));
    let huge = FanOut::new(usize::MAX).unwrap();
    assert_eq!(huge.limit(), usize::MAX);
    let got: Vec<u32> = huge
        .ordered()
        .run_iter(0..2000u32, |n| async move {
            tokio::time::sleep(ms(1)).await;
            n
        })
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(got, (0..2000).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn fan_out_dropping_the_stream_aborts_every_task_and_drops_untaken_inputs() {
    let live = Arc::new(AtomicUsize::new(0));
    let dropped_inputs = Arc::new(AtomicUsize::new(0));
    let inputs: Vec<Counted> = (0..20).map(|_| Counted(dropped_inputs.clone())).collect();
    let l = live.clone();
    let mut results = Box::pin(FanOut::new(3).unwrap().run_iter(inputs, move |item| {
        let guard = Live::enter(&l);
        async move {
            let _item = item;
            let _guard = guard;
            std::future::pending::<()>().await;
        }
    }));
    let first = tokio::time::timeout(ms(5), results.next()).await;
    assert!(first.is_err());
    assert_eq!(live.load(SeqCst), 3);
    drop(results);
    tokio::time::sleep(ms(5)).await;
    assert_eq!(
        live.load(SeqCst),
        0,
        "orphaned work after the stream was dropped"
    );
    assert_eq!(dropped_inputs.load(SeqCst), 20, "inputs leaked");
}

#[tokio::test(start_paused = true)]
async fn fan_out_abort_delivers_arrived_results_only_and_stops_running_tasks() {
    let live = Arc::new(AtomicUsize::new(0));
    let l = live.clone();
    let mut results = pin!(FanOut::new(4).unwrap().ordered().run_iter(
        [3u64, 1, 2, 50, 60, 70],
        move |s| {
            let guard = Live::enter(&l);
            async move {
                let _guard = guard;
                tokio::time::sleep(secs(s)).await;
                s
            }
        }
    ));
    // The first poll takes 4 inputs: 3, 1, 2, 50 (the ordered head, 3, is not ready yet).
    assert!(tokio::time::timeout(ms(1), results.next()).await.is_err());
    assert_eq!(live.load(SeqCst), 4);
    // After 5 s, 3, 1 and 2 arrived (the consumer is busy); 50 still runs.
    tokio::time::sleep(secs(5)).await;
    results.as_mut().abort();
    let rest: Vec<u64> = results.map(Result::unwrap).collect().await;
    assert_eq!(rest, [3, 1, 2]);
    tokio::time::sleep(ms(1)).await;
    assert_eq!(live.load(SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn fan_out_run_local_holds_the_limit_and_order_for_non_send_work() {
    let inflight = std::rc::Rc::new(std::cell::Cell::new(0usize));
    let peak = std::rc::Rc::new(std::cell::Cell::new(0usize));
    let mut rng = SplitMix64::new(11);
    let durations: Vec<u64> = (0..30).map(|_| rng.between(0, 30)).collect();
    let (i2, p2) = (inflight.clone(), peak.clone());
    let got: Vec<usize> = FanOut::new(4)
        .unwrap()
        .ordered()
        .run_local(
            futures_util::stream::iter(durations.into_iter().enumerate()),
            move |(i, d)| {
                let (i3, p3) = (i2.clone(), p2.clone());
                async move {
                    i3.set(i3.get() + 1);
                    p3.set(p3.get().max(i3.get()));
                    tokio::time::sleep(ms(d)).await;
                    i3.set(i3.get() - 1);
                    i
                }
            },
        )
        .collect()
        .await;
    assert_eq!(got, (0..30).collect::<Vec<_>>());
    assert!(peak.get() <= 4, "peak {}", peak.get());
}

#[tokio::test(start_paused = true)]
async fn fan_out_run_local_never_polls_a_finished_future_again() {
    for ordered in [false, true] {
        let mut fan = FanOut::new(3).unwrap();
        if ordered {
            fan = fan.ordered();
        }
        let got: Vec<u32> = fan
            .run_local(futures_util::stream::iter(0..10u32), wake_then_complete)
            .collect()
            .await;
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>(), "ordered {ordered}");
    }
}

#[tokio::test(start_paused = true)]
async fn fan_out_ordered_abort_skips_the_aborted_inputs_and_closes_the_gap() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let mut results = pin!(FanOut::new(4).unwrap().ordered().run_iter(
        [3u64, 50, 1, 2, 60, 70],
        move |s| {
            c.fetch_add(1, SeqCst);
            async move {
                tokio::time::sleep(secs(s)).await;
                s
            }
        }
    ));
    // Inputs 3 and 50 and 1 and 2 are taken; 3 is delivered at 3 s.
    assert_eq!(results.next().await.unwrap().unwrap(), 3);
    tokio::time::sleep(secs(5)).await;
    // 1 and 2 arrived; 50 (ahead of them in input order) is still running.
    results.as_mut().abort();
    let before = calls.load(SeqCst);
    let rest: Vec<u64> = results.map(Result::unwrap).collect().await;
    assert_eq!(rest, [1, 2]);
    assert_eq!(calls.load(SeqCst), before, "input taken after abort");
}

#[tokio::test(start_paused = true)]
async fn fan_out_abort_before_any_poll_spawns_nothing_and_drops_the_inputs() {
    let dropped_inputs = Arc::new(AtomicUsize::new(0));
    let inputs: Vec<Counted> = (0..5).map(|_| Counted(dropped_inputs.clone())).collect();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let mut results = Box::pin(FanOut::new(2).unwrap().run_iter(inputs, move |item| {
        c.fetch_add(1, SeqCst);
        async move {
            drop(item);
        }
    }));
    results.as_mut().abort();
    assert!(results.next().await.is_none());
    assert_eq!(calls.load(SeqCst), 0, "work started after abort");
    drop(results);
    assert_eq!(dropped_inputs.load(SeqCst), 5);
}

// ---------------------------------------------------------------------------------------------
// Rejected / Error / RetryError
// ---------------------------------------------------------------------------------------------

fn every_rejection() -> Vec<Rejected> {
    vec![
        Rejected::CircuitOpen {
            retry_after: ms(30),
        },
        Rejected::RateLimited {
            retry_after: ms(20),
        },
        Rejected::InsufficientCapacity { burst: 5 },
        Rejected::BulkheadFull,
        Rejected::DeadlineExceeded,
        Rejected::BudgetExhausted,
        Rejected::KeysFull {
            retry_after: Some(ms(40)),
        },
        Rejected::BackendUnavailable,
    ]
}

#[test]
fn rejected_display_is_lowercase_and_kinds_are_the_documented_names() {
    let kinds: Vec<&str> = every_rejection().iter().map(Rejected::kind).collect();
    assert_eq!(
        kinds,
        [
            "circuit_open",
            "rate_limited",
            "insufficient_capacity",
            "bulkhead_full",
            "deadline_exceeded",
            "budget_exhausted",
            "keys_full",
            "backend_unavailable"
        ]
    );
    for r in every_rejection() {
        let msg = r.to_string();
        assert!(is_lowercase_message(&msg), "{:?} displays {msg:?}", r);
        let wrapped: Error<std::io::Error> = r.into();
        assert_eq!(wrapped.rejection(), Some(r));
        assert!(is_lowercase_message(&wrapped.to_string()), "{wrapped}");
    }
}

#[test]
fn rejected_retry_after_hints_are_exposed() {
    let hints: Vec<Option<Duration>> = every_rejection()
        .iter()
        .map(RetryAfter::retry_after)
        .collect();
    assert_eq!(hints[0], Some(ms(30)), "circuit open");
    assert_eq!(hints[1], Some(ms(20)), "rate limited");
    assert_eq!(hints[3], None, "bulkhead full");
    assert_eq!(hints[6], Some(ms(40)), "keys full");
    assert_eq!(Rejected::KeysFull { retry_after: None }.retry_after(), None);
    let e: Error<Hinted> = Error::Rejected(Rejected::RateLimited {
        retry_after: ms(20),
    });
    assert_eq!(e.retry_after(), Some(ms(20)));
    let inner: Error<Hinted> = Error::Inner(Hinted {
        id: 1,
        hint: Some(secs(9)),
    });
    assert_eq!(inner.retry_after(), Some(secs(9)));
    let retry_err: RetryError<Hinted> = RetryError::Inner(Hinted {
        id: 1,
        hint: Some(secs(4)),
    });
    assert_eq!(retry_err.retry_after(), Some(secs(4)));
}

#[derive(Debug)]
struct Outer {
    cause: std::io::Error,
}

impl fmt::Display for Outer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("outer failed")
    }
}

impl std::error::Error for Outer {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.cause)
    }
}

fn chain(e: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut out = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out
}

#[test]
fn error_inner_keeps_the_callers_error_and_its_source_chain() {
    let e: Error<Outer> = Error::Inner(Outer {
        cause: std::io::Error::other("disk on fire"),
    });
    assert!(e.rejection().is_none());
    assert_eq!(e.inner().unwrap().cause.to_string(), "disk on fire");
    let links = chain(&e);
    assert!(links.iter().any(|l| l == "disk on fire"), "{links:?}");
    assert_eq!(
        links.iter().filter(|l| *l == "disk on fire").count(),
        1,
        "{links:?}"
    );
    let back = e.into_inner().unwrap();
    assert_eq!(back.cause.kind(), std::io::ErrorKind::Other);

    let timed_out: Error<Outer> = Error::TimedOut;
    assert!(timed_out.inner().is_none() && timed_out.rejection().is_none());
    assert!(is_lowercase_message(&timed_out.to_string()));
}

#[test]
fn retry_error_exposes_the_inner_error_in_every_variant_that_has_one() {
    let inner: RetryError<Outer> = RetryError::Inner(Outer {
        cause: std::io::Error::other("a"),
    });
    assert_eq!(
        inner.inner().map(ToString::to_string).as_deref(),
        Some("outer failed")
    );
    let links = chain(&inner);
    assert!(links.iter().any(|l| l == "a"), "{links:?}");

    let deadline: RetryError<Outer> = RetryError::DeadlineExceeded {
        last_error: Some(Outer {
            cause: std::io::Error::other("b"),
        }),
        attempts: 2,
    };
    assert!(deadline.inner().is_some());
    assert!(is_lowercase_message(&deadline.to_string()), "{deadline}");
    let links = chain(&deadline);
    assert!(
        links.iter().any(|l| l == "b"),
        "last error lost from the chain: {links:?}"
    );
    assert_eq!(
        deadline
            .into_inner()
            .map(|o| o.cause.to_string())
            .as_deref(),
        Some("b")
    );

    let timed: RetryError<Outer> = RetryError::AttemptTimedOut;
    assert!(timed.inner().is_none());
    assert!(is_lowercase_message(&timed.to_string()), "{timed}");
    let _ = timed.source();
}
