//! Rate limiter scenarios: the exact theoretical count, waits, deadlines, keyed memory.

mod common;

use common::ms;

use std::time::Duration;

use futures_util::FutureExt as _;
use tidewall::rate::{KeyedRateLimiter, RateLimiter};
use tidewall::rt::{Clock, Runtime, Spawn, Tokio};
use tidewall::testing::Clocked;
use tidewall::{ConfigError, Deadline, Rejected};

/// A greedy caller over virtual time admits exactly `burst + floor(span / interval)`.
#[test]
fn admits_exactly_the_theoretical_count_for_many_rates_and_bursts() {
    for (count, period_ms, burst, span_ms) in [
        (10, 1000, 1, 5_000),
        (10, 1000, 10, 5_000),
        (100, 1000, 7, 2_345),
        (3, 10, 2, 1_000),
        (1000, 1000, 50, 999),
        (7, 3000, 3, 60_000),
    ] {
        let rt = Clocked::new(Tokio);
        let limiter = RateLimiter::builder(count, ms(period_ms))
            .burst(burst)
            .runtime(rt.clone())
            .build()
            .unwrap();
        let start = rt.now();
        let mut admitted = 0u64;
        loop {
            match limiter.check() {
                Ok(()) => admitted += 1,
                Err(Rejected::RateLimited { retry_after }) => {
                    if rt.now() + retry_after - start > ms(span_ms) {
                        break;
                    }
                    rt.clock().advance(retry_after);
                }
                Err(other) => panic!("{other:?}"),
            }
        }
        let interval = period_ms * 1_000_000 / u64::from(count);
        let expected = u64::from(burst) + span_ms * 1_000_000 / interval;
        assert_eq!(
            admitted, expected,
            "{count}/{period_ms}ms burst {burst} over {span_ms}ms"
        );
    }
}

async fn waits_with_jitter_and_deadlines<R: Runtime>(rt: Clocked<R>) {
    let limiter = RateLimiter::builder(10, ms(1000))
        .burst(1)
        .jitter(Duration::ZERO)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let start = rt.now();
    for _ in 0..5 {
        limiter.until_ready().await.unwrap();
    }
    assert_eq!(rt.now() - start, ms(400), "1 at once, then one per 100 ms");
    // The next cell is 100 ms away: a 50 ms deadline fails at once, without sleeping.
    let before = rt.now();
    assert_eq!(
        limiter
            .until_ready_before(Deadline::after(&rt, ms(50)))
            .await,
        Err(Rejected::DeadlineExceeded)
    );
    assert_eq!(rt.now(), before);
    assert_eq!(
        limiter.until_n_ready_before(2, Deadline::none()).await,
        Err(Rejected::InsufficientCapacity { burst: 1 })
    );
}

#[test]
fn waits_and_deadlines_on_every_runtime() {
    on_every_runtime!(waits_with_jitter_and_deadlines);
}

/// Eight waiters denied at the same instant: without jitter they all set their timer for the
/// same instant (a herd); with jitter the timers spread over the jitter window.
async fn jittered_waiters_do_not_wake_together<R: Runtime>(rt: Clocked<R>) {
    for (jitter, distinct) in [(Duration::ZERO, 1), (ms(50), 8)] {
        let limiter = RateLimiter::builder(10, ms(1000))
            .burst(1)
            .jitter(jitter)
            .runtime(rt.clone())
            .build()
            .unwrap();
        limiter.check().unwrap();
        let start = rt.now();
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let limiter = limiter.clone();
                rt.spawn(async move { limiter.until_ready().await })
            })
            .collect();
        // Let every waiter run, get denied and park on its timer.
        rt.sleep(Duration::from_micros(1)).await;
        let mut wakes: Vec<Duration> = rt
            .clock()
            .timer_deadlines()
            .into_iter()
            .map(|at| at - start)
            .collect();
        assert_eq!(wakes.len(), 8, "{wakes:?}");
        assert!(
            wakes.iter().all(|&w| w >= ms(100) && w <= ms(100) + jitter),
            "{wakes:?}"
        );
        wakes.dedup();
        assert_eq!(wakes.len(), distinct, "jitter {jitter:?}: {wakes:?}");
        for waiter in waiters {
            waiter.await.unwrap().unwrap();
        }
    }
}

#[test]
fn jitter_spreads_waiters_on_every_runtime() {
    on_every_runtime!(jittered_waiters_do_not_wake_together);
}

#[test]
fn bad_configuration_is_a_typed_error() {
    let b = |count, period, burst| {
        RateLimiter::builder(count, period)
            .burst(burst)
            .build()
            .map(drop)
    };
    assert_eq!(b(0, ms(1), 1), Err(ConfigError::Zero { field: "count" }));
    assert_eq!(
        b(1, Duration::ZERO, 1),
        Err(ConfigError::Zero { field: "period" })
    );
    assert_eq!(b(1, ms(1), 0), Err(ConfigError::Zero { field: "burst" }));
    assert_eq!(
        b(1, Duration::MAX, 1),
        Err(ConfigError::DurationOverflow { field: "period" })
    );
    let keyed = KeyedRateLimiter::builder(1, ms(1))
        .max_keys(0)
        .build::<u64>();
    assert_eq!(keyed.unwrap_err(), ConfigError::Zero { field: "max_keys" });
}

/// Evicting rested keys cannot be observed: a limiter that evicts after every step answers
/// exactly like one that never evicts.
#[test]
fn evicting_a_rested_key_is_indistinguishable_from_a_fresh_key() {
    let rt = Clocked::new(Tokio);
    let build = || {
        KeyedRateLimiter::builder(5, ms(100))
            .burst(3)
            .runtime(rt.clone())
            .build::<u64>()
            .unwrap()
    };
    let (evicting, keeping) = (build(), build());
    let mut rng = tidewall_core::rng::SplitMix64::new(99);
    let mut evictions = 0;
    for _ in 0..20_000 {
        let key = rng.below_or_equal(40);
        assert_eq!(evicting.check_key(&key), keeping.check_key(&key));
        rt.clock()
            .advance(Duration::from_micros(rng.below_or_equal(20_000)));
        evictions += evicting.retain_recent();
    }
    assert!(
        evictions > 1_000,
        "the test must actually evict ({evictions})"
    );
    assert!(keeping.len() > evicting.len());
}

#[test]
fn keyed_memory_stays_bounded_and_full_shards_reject_new_keys_honestly() {
    let rt = Clocked::new(Tokio);
    let limiter = KeyedRateLimiter::builder(1, ms(1000))
        .burst(1)
        .max_keys(64)
        .runtime(rt.clone())
        .build::<u64>()
        .unwrap();
    let mut rejected_new = 0;
    for key in 0..10_000u64 {
        match limiter.check_key(&key) {
            Ok(()) => {}
            Err(Rejected::RateLimited { retry_after }) => {
                assert!(retry_after <= ms(1000));
                rejected_new += 1;
            }
            Err(other) => panic!("{other:?}"),
        }
        assert!(limiter.len() <= limiter.max_keys());
        rt.clock().advance(Duration::from_micros(500));
    }
    assert!(
        rejected_new > 0,
        "a full limiter refuses new keys until one rests"
    );
    assert!(
        limiter.evicted() > 0,
        "rested keys were evicted to make room"
    );
}

#[test]
fn memory_per_key_is_at_most_40_bytes() {
    let limiter = KeyedRateLimiter::builder(10, ms(1000))
        .max_keys(1 << 20)
        .build::<u64>()
        .unwrap();
    for n in [10_000u64, 100_000, 458_000] {
        for key in 0..n {
            limiter.check_key(&key).unwrap();
        }
        #[allow(clippy::cast_precision_loss)]
        let per_key = limiter.allocated_bytes() as f64 / limiter.len() as f64;
        assert!(per_key <= 40.0, "{per_key:.1} B per key at {n} keys");
    }
}

/// Waits dropped at random points reserve nothing: afterwards the limiter admits exactly a
/// full burst after resting, and one cell per interval.
#[test]
fn cancelled_waits_take_no_capacity() {
    let rt = Clocked::new(Tokio);
    let limiter = RateLimiter::builder(10, ms(1000))
        .burst(5)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let mut rng = tidewall_core::rng::SplitMix64::new(3);
    for _ in 0..100_000 {
        let mut wait = Box::pin(limiter.until_ready());
        if rng.below_or_equal(1) == 0 {
            let _ = (&mut wait).now_or_never();
        }
        drop(wait);
        if rng.below_or_equal(100) == 0 {
            rt.clock().advance(ms(rng.below_or_equal(50)));
        }
    }
    rt.clock().advance(ms(1000));
    let burst = (0..20).filter(|_| limiter.check().is_ok()).count();
    assert_eq!(burst, 5);
}

/// On real time (the default runtime outside a paused runtime, so the limiter reads the
/// timestamp counter) a limiter decides as on virtual time; an interval of an hour keeps the
/// test independent of how fast it runs.
#[test]
fn on_real_time_a_limiter_decides_as_on_virtual_time() {
    let limiter = RateLimiter::builder(1, Duration::from_secs(3600))
        .burst(3)
        .build()
        .unwrap();
    for _ in 0..3 {
        limiter.check().unwrap();
    }
    match limiter.check() {
        Err(Rejected::RateLimited { retry_after }) => {
            assert!(
                retry_after > Duration::from_secs(3599) && retry_after <= Duration::from_secs(3600),
                "{retry_after:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    let keyed = KeyedRateLimiter::builder(1, Duration::from_secs(3600))
        .burst(1)
        .build::<u8>()
        .unwrap();
    assert!(keyed.check_key(&1).is_ok());
    assert!(keyed.check_key(&1).is_err());
    assert!(keyed.check_key(&2).is_ok());
}

/// Under paused tokio time the default limiter follows tokio's virtual clock exactly: it
/// refills when, and only when, virtual time moves.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn under_paused_tokio_time_the_default_limiter_follows_virtual_time() {
    let limiter = RateLimiter::builder(10, Duration::from_secs(1))
        .burst(2)
        .build()
        .unwrap();
    let keyed = KeyedRateLimiter::builder(10, Duration::from_secs(1))
        .burst(1)
        .build::<u8>()
        .unwrap();
    assert!(limiter.check().is_ok() && limiter.check().is_ok());
    assert!(keyed.check_key(&1).is_ok());
    // Virtual time has not moved: refused, with exactly the full interval to wait.
    assert_eq!(
        limiter.check(),
        Err(Rejected::RateLimited {
            retry_after: ms(100)
        })
    );
    assert_eq!(
        keyed.check_key(&1),
        Err(Rejected::RateLimited {
            retry_after: ms(100)
        })
    );
    tokio::time::advance(ms(100)).await;
    assert!(limiter.check().is_ok());
    assert!(limiter.check().is_err());
    assert!(keyed.check_key(&1).is_ok());
}
