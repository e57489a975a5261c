//! Adversarial black-box tests of the rate limiter's default clock and of the runtime adapters:
//! tokio's paused time (and a limiter built before or outside it), real time outside any
//! runtime and across threads, and every adapter both under `Clocked` virtual time and on its
//! own real time. Written from the public docs only.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;
mod seam_support;
mod support;

use std::convert::Infallible;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use common::ms;
use futures_util::{StreamExt as _, stream};
use seam_support::{NS, YEAR, limited, secs};
use support::{DAY, HOUR};
use tidewall::bulkhead::Bulkhead;
use tidewall::pipeline::Pipeline;
use tidewall::rate::{KeyedRateLimiter, RateLimiter};
use tidewall::rt::{Clock, Runtime, Spawn as _, Tokio};
use tidewall::stream::{MissedTicks, StreamOps as _, interval_on};
use tidewall::testing::Clocked;
use tidewall::{Deadline, Rejected};
use tower_layer::Layer as _;
use tower_service::Service as _;

// ---------------------------------------------------------------------------------------------
// Paused tokio time: the default runtime
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_default_limiter_built_under_paused_tokio_time_follows_it_to_the_nanosecond() {
    assert!(!Tokio.is_real_time());
    let limiter = RateLimiter::builder(10, secs(1)).burst(2).build().unwrap();
    assert_eq!(limiter.check(), Ok(()));
    assert_eq!(limiter.check(), Ok(()));
    assert_eq!(limiter.check(), limited(ms(100)));
    tokio::time::advance(ms(100) - NS).await;
    assert_eq!(limiter.check(), limited(NS));
    tokio::time::advance(NS).await;
    assert_eq!(limiter.check(), Ok(()));
    assert_eq!(limiter.check(), limited(ms(100)));
    // Exactly the burst after any rest.
    tokio::time::advance(HOUR).await;
    assert_eq!(limiter.check(), Ok(()));
    assert_eq!(limiter.check(), Ok(()));
    assert_eq!(limiter.check(), limited(ms(100)));
}

#[tokio::test(start_paused = true)]
async fn a_default_limiter_under_paused_tokio_time_stays_exact_after_days_and_months_of_advance() {
    let limiter = RateLimiter::builder(1, HOUR).burst(3).build().unwrap();
    for advance in [3 * DAY, 100 * DAY, 10 * YEAR] {
        tokio::time::advance(advance).await;
        for _ in 0..3 {
            assert_eq!(limiter.check(), Ok(()), "after {advance:?}");
        }
        assert_eq!(limiter.check(), limited(HOUR), "after {advance:?}");
        tokio::time::advance(HOUR - NS).await;
        assert_eq!(limiter.check(), limited(NS));
        tokio::time::advance(NS).await;
        assert_eq!(limiter.check(), Ok(()));
    }
}

#[tokio::test(start_paused = true)]
async fn until_ready_on_a_default_limiter_under_paused_tokio_time_wakes_at_the_refill() {
    let limiter = RateLimiter::builder(10, secs(1))
        .burst(1)
        .jitter(Duration::ZERO)
        .build()
        .unwrap();
    assert_eq!(limiter.check(), Ok(()));
    for _ in 0..5 {
        let start = tokio::time::Instant::now();
        assert_eq!(limiter.until_ready().await, Ok(()));
        assert_eq!(start.elapsed(), ms(100));
    }
    let start = tokio::time::Instant::now();
    assert_eq!(
        limiter
            .until_ready_before(Deadline::after(&Tokio, ms(99)))
            .await,
        Err(Rejected::DeadlineExceeded)
    );
    assert_eq!(start.elapsed(), Duration::ZERO, "gives up at once");
}

#[tokio::test(start_paused = true)]
async fn a_default_keyed_limiter_under_paused_tokio_time_follows_it_to_the_nanosecond() {
    let limiter = KeyedRateLimiter::builder(1, HOUR)
        .burst(2)
        .max_keys(16)
        .build::<&str>()
        .unwrap();
    assert_eq!(limiter.check_key(&"a"), Ok(()));
    assert_eq!(limiter.check_key(&"a"), Ok(()));
    assert_eq!(limiter.check_key(&"a"), limited(HOUR));
    tokio::time::advance(HOUR - NS).await;
    assert_eq!(limiter.check_key(&"a"), limited(NS));
    tokio::time::advance(NS).await;
    assert_eq!(limiter.check_key(&"a"), Ok(()));
    tokio::time::advance(30 * DAY).await;
    assert_eq!(limiter.retain_recent(), 1);
    assert_eq!(limiter.check_key(&"a"), Ok(()));
    assert_eq!(limiter.check_key(&"a"), Ok(()));
    assert_eq!(limiter.check_key(&"a"), limited(HOUR));
}

#[tokio::test(start_paused = true)]
async fn a_default_pipeline_and_rate_limit_layer_under_paused_tokio_time_wait_exactly_one_interval()
{
    let limiter = RateLimiter::builder(10, secs(1))
        .burst(1)
        .jitter(Duration::ZERO)
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .deadline(secs(5))
        .rate_limit(limiter)
        .build()
        .unwrap();
    let start = tokio::time::Instant::now();
    assert_eq!(pipeline.call(|| async { Ok::<_, &str>(1) }).await, Ok(1));
    assert_eq!(pipeline.call(|| async { Ok::<_, &str>(2) }).await, Ok(2));
    assert_eq!(start.elapsed(), ms(100));

    let limiter = RateLimiter::builder(10, secs(1))
        .burst(1)
        .jitter(Duration::ZERO)
        .build()
        .unwrap();
    let mut service =
        tidewall::tower::AdmitLayer::new(limiter, tidewall::tower::AdmitMode::WaitReady).layer(
            tower::service_fn(|x: u32| async move { Ok::<_, tidewall::Error<Infallible>>(x) }),
        );
    let start = tokio::time::Instant::now();
    for x in 0..3 {
        std::future::poll_fn(|cx| service.poll_ready(cx))
            .await
            .unwrap();
        assert_eq!(service.call(x).await, Ok(x));
    }
    assert_eq!(start.elapsed(), ms(200));
}

#[test]
fn a_limiter_built_on_a_blocking_thread_of_a_paused_runtime_follows_virtual_time() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let limiter =
            tokio::task::spawn_blocking(|| RateLimiter::builder(1, HOUR).burst(1).build().unwrap())
                .await
                .unwrap();
        assert_eq!(limiter.check(), Ok(()));
        assert!(matches!(limiter.check(), Err(Rejected::RateLimited { .. })));
        tokio::time::advance(HOUR).await;
        assert_eq!(
            limiter.check(),
            Ok(()),
            "an hour of virtual time refilled the limiter"
        );
    });
}

#[test]
fn observation_a_limiter_built_before_tokio_time_is_paused_keeps_reading_real_time() {
    // The docs: "Build the limiter after pausing tokio's time: the choice is made once."
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        assert!(Tokio.is_real_time());
        let limiter = RateLimiter::builder(1, HOUR).burst(1).build().unwrap();
        tokio::time::pause();
        assert!(!Tokio.is_real_time(), "is_real_time answers now, per call");
        assert_eq!(limiter.check(), Ok(()));
        tokio::time::advance(2 * HOUR).await;
        match limiter.check() {
            Err(Rejected::RateLimited { retry_after }) => {
                assert!(retry_after > HOUR - secs(60), "{retry_after:?}");
            }
            other => panic!("a limiter built on real time ignored paused time? {other:?}"),
        }
        // Waiting on it mixes the two clocks: virtual sleeps, real-time decisions.
        let waited = limiter
            .until_ready_before(Deadline::after(&Tokio, 10 * HOUR))
            .await;
        assert_eq!(waited, Err(Rejected::DeadlineExceeded));
    });
}

#[test]
fn observation_a_limiter_built_outside_a_paused_runtime_then_used_inside_keeps_real_time() {
    let limiter = RateLimiter::builder(1, HOUR).burst(1).build().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        assert_eq!(limiter.check(), Ok(()));
        tokio::time::advance(2 * HOUR).await;
        assert!(matches!(limiter.check(), Err(Rejected::RateLimited { .. })));
    });
}

// ---------------------------------------------------------------------------------------------
// Real time: the counter
// ---------------------------------------------------------------------------------------------

const SLACK: Duration = Duration::from_secs(120);

fn assert_real_time_gcra(limiter: &RateLimiter<impl Clock>, burst: u32, interval: Duration) {
    for n in 0..burst {
        assert_eq!(limiter.check(), Ok(()), "cell {n} of the burst");
    }
    let mut last = interval;
    for _ in 0..100 {
        match limiter.check() {
            Err(Rejected::RateLimited { retry_after }) => {
                assert!(retry_after <= interval, "{retry_after:?} > {interval:?}");
                assert!(retry_after > interval - SLACK, "{retry_after:?}");
                assert!(
                    retry_after <= last,
                    "retry_after does not grow as time passes"
                );
                last = retry_after;
            }
            other => panic!("past the burst: {other:?}"),
        }
    }
    assert!(matches!(
        limiter.check_n(burst + 1),
        Err(Rejected::InsufficientCapacity { .. })
    ));
}

#[test]
fn a_default_limiter_outside_any_runtime_decides_by_gcra_on_real_time() {
    assert!(
        Tokio.is_real_time(),
        "outside a runtime, tokio's clock is real time"
    );
    let limiter = RateLimiter::builder(1, HOUR).burst(3).build().unwrap();
    assert_real_time_gcra(&limiter, 3, HOUR);
    let keyed = KeyedRateLimiter::builder(1, HOUR)
        .burst(2)
        .build::<u8>()
        .unwrap();
    assert_eq!(keyed.check_key(&1), Ok(()));
    assert_eq!(keyed.check_key(&1), Ok(()));
    match keyed.check_key(&1) {
        Err(Rejected::RateLimited { retry_after }) => {
            assert!(retry_after <= HOUR && retry_after > HOUR - SLACK)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_default_limiter_on_a_multi_thread_runtime_admits_exactly_its_burst_across_threads() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let limiter = tokio::spawn(async {
            assert!(Tokio.is_real_time());
            RateLimiter::builder(1, HOUR).burst(5).build().unwrap()
        })
        .await
        .unwrap();
        let admitted = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let (limiter, admitted) = (limiter.clone(), admitted.clone());
                tokio::spawn(async move {
                    for _ in 0..2_000 {
                        if limiter.check().is_ok() {
                            admitted.fetch_add(1, SeqCst);
                        }
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(admitted.load(SeqCst), 5, "a burst of 5, then one per hour");
        match limiter.check() {
            Err(Rejected::RateLimited { retry_after }) => {
                assert!(retry_after <= HOUR && retry_after > HOUR - SLACK)
            }
            other => panic!("{other:?}"),
        }
        let start = std::time::Instant::now();
        let refused = limiter
            .until_ready_before(Deadline::after(&Tokio, secs(1)))
            .await;
        assert_eq!(refused, Err(Rejected::DeadlineExceeded));
        assert!(start.elapsed() < SLACK, "gives up at once");
    });
}

#[test]
fn a_users_clock_that_reads_tokio_is_followed_not_replaced_by_the_counter() {
    /// Tokio's time, without saying it is real time.
    #[derive(Clone)]
    struct ViaTokio;
    impl Clock for ViaTokio {
        type Sleep = <Tokio as Clock>::Sleep;
        fn now(&self) -> Instant {
            Tokio.now()
        }
        fn sleep_until(&self, deadline: Instant) -> Self::Sleep {
            Tokio.sleep_until(deadline)
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let limiter = RateLimiter::builder(1, HOUR)
            .burst(1)
            .runtime(ViaTokio)
            .build()
            .unwrap();
        assert_eq!(limiter.check(), Ok(()));
        assert_eq!(limiter.check(), limited(HOUR));
        tokio::time::advance(HOUR).await;
        assert_eq!(limiter.check(), Ok(()));
    });
}

// ---------------------------------------------------------------------------------------------
// Every adapter (virtual time through Clocked, and the adapter's own real time)
// ---------------------------------------------------------------------------------------------

async fn clocked_limiters_follow_virtual_time_exactly<R: Runtime>(rt: Clocked<R>) {
    assert!(!rt.is_real_time());
    let limiter = RateLimiter::builder(3, secs(1))
        .burst(2)
        .jitter(Duration::ZERO)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let interval = Duration::from_nanos(333_333_333);
    assert_eq!(limiter.check(), Ok(()));
    assert_eq!(limiter.check(), Ok(()));
    assert_eq!(limiter.check(), limited(interval));
    let start = rt.now();
    assert_eq!(limiter.until_ready().await, Ok(()));
    assert_eq!(rt.now() - start, interval);
    rt.clock().advance(interval - NS);
    assert_eq!(limiter.check(), limited(NS));
    rt.clock().advance(NS);
    assert_eq!(limiter.check(), Ok(()));

    // A task on the runtime waits on the same limiter.
    let waiter = rt.spawn({
        let (rt, limiter) = (rt.clone(), limiter.clone());
        async move {
            let start = rt.now();
            limiter.until_ready().await.unwrap();
            rt.now() - start
        }
    });
    assert_eq!(waiter.await.unwrap(), interval);

    let keyed = KeyedRateLimiter::builder(1, HOUR)
        .burst(1)
        .runtime(rt.clone())
        .build::<u8>()
        .unwrap();
    assert_eq!(keyed.check_key(&0), Ok(()));
    assert_eq!(keyed.check_key(&0), limited(HOUR));
    rt.clock().advance(HOUR);
    assert_eq!(keyed.check_key(&0), Ok(()));
}

#[test]
fn limiters_on_clocked_follow_virtual_time_exactly_on_every_adapter() {
    on_every_runtime!(clocked_limiters_follow_virtual_time_exactly);
}

async fn adapters_own_real_time_limiters_decide_by_gcra<R: Runtime>(rt: Clocked<R>) {
    let inner = rt.inner().clone();
    assert!(
        inner.is_real_time(),
        "an adapter's time is real unless tokio's is paused"
    );
    let limiter = RateLimiter::builder(1, HOUR)
        .burst(2)
        .runtime(inner.clone())
        .build()
        .unwrap();
    assert_real_time_gcra(&limiter, 2, HOUR);
    let refused = limiter
        .until_ready_before(Deadline::after(&inner, secs(1)))
        .await;
    assert_eq!(refused, Err(Rejected::DeadlineExceeded));
}

#[test]
fn real_time_limiters_decide_by_gcra_on_every_adapter() {
    on_every_runtime!(adapters_own_real_time_limiters_decide_by_gcra);
}

async fn clocked_streams_and_policies_follow_virtual_time<R: Runtime>(rt: Clocked<R>) {
    let start = rt.now();
    let mut ticks = pin!(interval_on(&rt, secs(1), MissedTicks::Delay).unwrap());
    assert_eq!(ticks.next().await, Some(start + secs(1)));
    rt.sleep(ms(2500)).await;
    assert_eq!(
        ticks.next().await,
        Some(start + secs(2)),
        "one late tick at once"
    );
    assert_eq!(rt.now(), start + ms(3500));
    assert_eq!(
        ticks.next().await,
        Some(start + ms(4500)),
        "Delay restarts the schedule from it"
    );

    let start = rt.now();
    let items: Vec<_> = stream::iter(1..=3)
        .throttle_on(&rt, secs(1))
        .unwrap()
        .map(|x| (x, rt.now() - start))
        .collect()
        .await;
    assert_eq!(items, [(1, Duration::ZERO), (2, secs(1)), (3, secs(2))]);

    let bulkhead = Bulkhead::builder(1)
        .max_queue(1)
        .max_wait(ms(100))
        .runtime(rt.clone())
        .build()
        .unwrap();
    let held = bulkhead.try_acquire().unwrap();
    let start = rt.now();
    assert!(matches!(
        bulkhead.acquire().await,
        Err(Rejected::BulkheadFull)
    ));
    assert_eq!(rt.now() - start, ms(100));
    drop(held);
}

#[test]
fn streams_and_bulkheads_on_clocked_follow_virtual_time_on_every_adapter() {
    on_every_runtime!(clocked_streams_and_policies_follow_virtual_time);
}
