//! Hedging scenarios: the tail is cut, losers are cancelled, budgets and percentiles hold.

mod common;

use common::ms;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use tidewall::hedge::{Hedge, Idempotent};
use tidewall::rt::{Clock, Runtime};
use tidewall::testing::Clocked;

/// Counts attempts that are dropped before finishing.
struct DropCounter(Arc<AtomicUsize>, bool);
impl Drop for DropCounter {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn hedge_wins_and_the_loser_is_cancelled<R: Runtime>(rt: Clocked<R>) {
    let hedge = Hedge::builder()
        .delay(ms(50))
        .max_hedges(2)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let calls = AtomicU32::new(0);
    let cancelled = Arc::new(AtomicUsize::new(0));
    let start = rt.now();
    let answer = hedge
        .call(Idempotent(|| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            let (rt, cancelled) = (rt.clone(), cancelled.clone());
            async move {
                let mut guard = DropCounter(cancelled, false);
                rt.sleep(if n == 0 { ms(1_000) } else { ms(20) }).await;
                guard.1 = true;
                Ok::<_, ()>(n)
            }
        }))
        .await;
    assert_eq!(answer, Ok(1));
    assert_eq!(
        rt.now() - start,
        ms(70),
        "hedged at 50 ms, answered 20 ms later"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the second hedge was never needed"
    );
    assert_eq!(
        cancelled.load(Ordering::SeqCst),
        1,
        "the stuck primary was dropped"
    );
}

#[test]
fn a_hedge_cuts_the_tail_on_every_runtime() {
    on_every_runtime!(hedge_wins_and_the_loser_is_cancelled);
}

async fn failures_hedge_at_once_and_the_last_error_returns<R: Runtime>(rt: Clocked<R>) {
    let hedge = Hedge::builder()
        .delay(ms(500))
        .max_hedges(2)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let calls = AtomicU32::new(0);
    let start = rt.now();
    let answer: Result<(), u32> = hedge
        .call(Idempotent(|| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            let rt = rt.clone();
            async move {
                rt.sleep(ms(10)).await;
                Err(n)
            }
        }))
        .await;
    assert_eq!(answer, Err(2));
    assert_eq!(
        rt.now() - start,
        ms(30),
        "each failure starts the next hedge at once"
    );
}

#[test]
fn failures_hedge_immediately_on_every_runtime() {
    on_every_runtime!(failures_hedge_at_once_and_the_last_error_returns);
}

async fn the_budget_caps_hedges<R: Runtime>(rt: Clocked<R>) {
    let hedge = Hedge::builder()
        .delay(ms(10))
        .budget_ratio(0.1)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let calls = AtomicU32::new(0);
    for _ in 0..100 {
        hedge
            .call(Idempotent(|| {
                calls.fetch_add(1, Ordering::SeqCst);
                let rt = rt.clone();
                async move {
                    rt.sleep(ms(20)).await;
                    Ok::<_, ()>(())
                }
            }))
            .await
            .unwrap();
    }
    // Every call would hedge; the 10 % budget allows 10 hedges over 100 calls.
    assert_eq!(calls.load(Ordering::SeqCst), 110);
}

#[test]
fn the_hedge_budget_holds_on_every_runtime() {
    on_every_runtime!(the_budget_caps_hedges);
}

async fn percentile_delay_follows_observed_latency<R: Runtime>(rt: Clocked<R>) {
    let hedge = Hedge::builder()
        .delay(ms(500))
        .percentile(0.9, 20)
        .max_hedges(0)
        .runtime(rt.clone())
        .build()
        .unwrap();
    assert_eq!(hedge.delay(), ms(500), "the fallback until 20 samples");
    for i in 0..100u64 {
        let rt2 = rt.clone();
        hedge
            .call(Idempotent(move || {
                let rt = rt2.clone();
                async move {
                    rt.sleep(ms(1 + i % 10 * 10)).await;
                    Ok::<_, ()>(())
                }
            }))
            .await
            .unwrap();
    }
    // Latencies 1..=91 ms uniformly: p90 is 81 ms, the estimate within 12.5 % above.
    let p90 = hedge.delay();
    assert!(p90 >= ms(81) && p90 <= ms(92), "{p90:?}");
}

#[test]
fn percentile_delay_on_every_runtime() {
    on_every_runtime!(percentile_delay_follows_observed_latency);
}

#[test]
fn bad_configuration_is_a_typed_error() {
    use tidewall::ConfigError;
    assert_eq!(
        Hedge::builder().delay(Duration::ZERO).build().unwrap_err(),
        ConfigError::Zero { field: "delay" }
    );
    assert!(matches!(
        Hedge::builder().percentile(1.5, 1).build(),
        Err(ConfigError::OutOfRange { .. })
    ));
    assert!(matches!(
        Hedge::builder().percentile(f64::NAN, 1).build(),
        Err(ConfigError::NotFinite { .. })
    ));
    assert_eq!(
        Hedge::builder().percentile(0.9, 0).build().unwrap_err(),
        ConfigError::Zero {
            field: "min_samples"
        }
    );
    assert!(matches!(
        Hedge::builder().budget_ratio(-1.0).build(),
        Err(ConfigError::OutOfRange { .. })
    ));
}

/// The primary fails at 10 ms asking for 200 ms (its hint, read by the classifier): the hedge
/// that would start at once waits until 210 ms. Without a hint it starts at 10 ms.
async fn a_failures_hint_delays_the_next_hedge<R: Runtime>(rt: Clocked<R>) {
    use tidewall::classify::{Hinted, Verdict};

    let judge = |r: Result<&u32, &u64>| match r {
        Ok(_) => Verdict::Success,
        Err(_) => Verdict::RetryableFailure,
    };
    // The error is the wait it asks for, in ms (0: none).
    let hint = |r: Result<&u32, &u64>| r.err().filter(|wait| **wait > 0).map(|wait| ms(*wait));
    for (asked, second_at) in [(200, ms(210)), (0, ms(10)), (3_600_000, ms(60_010))] {
        let hedge = Hedge::builder()
            .delay(ms(50))
            .max_hedges(1)
            .runtime(rt.clone())
            .classify(Hinted(judge, hint))
            .build()
            .unwrap();
        let starts = std::sync::Mutex::new(Vec::new());
        let start = rt.now();
        let answer = hedge
            .call(Idempotent(|| {
                let mut seen = starts.lock().unwrap();
                seen.push(rt.now() - start);
                let first = seen.len() == 1;
                let rt = rt.clone();
                async move {
                    rt.sleep(ms(10)).await;
                    if first { Err(asked) } else { Ok(7) }
                }
            }))
            .await;
        assert_eq!(answer, Ok(7));
        assert_eq!(
            *starts.lock().unwrap(),
            [ms(0), second_at],
            "asked {asked} ms (a hint is capped at 60 s, as a retry's)"
        );
    }
}

#[test]
fn a_failures_hint_delays_the_next_hedge_on_every_runtime() {
    on_every_runtime!(a_failures_hint_delays_the_next_hedge);
}

/// "older latencies fade as the counts halve whenever they hold 4,096 latencies: after the
/// first halving, every 2,048 or so." 4,096 latencies of 1 ms, then 3,008 of 100 ms (7,104 in
/// all, a multiple of 64, so the last one refreshes the estimate): halved at 4,096 and at
/// 6,144, the counts hold 1,024 of 1 ms and 1,984 of 100 ms, and the 0.37 quantile is 100 ms.
/// Halving every 4,096 instead would leave 2,048 and 3,008: a quantile of 1 ms.
#[tokio::test(start_paused = true)]
async fn the_percentile_forgets_at_the_documented_pace() {
    let hedge = Hedge::builder()
        .delay(ms(10))
        .percentile(0.37, 1)
        .max_hedges(0)
        .build()
        .unwrap();
    for (calls, latency) in [(4_096, ms(1)), (3_008, ms(100))] {
        for _ in 0..calls {
            hedge
                .call(Idempotent(|| async move {
                    tokio::time::sleep(latency).await;
                    Ok::<_, ()>(())
                }))
                .await
                .unwrap();
        }
    }
    let delay = hedge.delay();
    assert!(delay >= ms(100) && delay <= ms(113), "{delay:?}");
}

/// The hedge delay of a quantile estimated from one call per latency in `slow`, then 20,000
/// of 1 ms, each in paused time, one after another (no hedges).
async fn delay_after_an_incident(
    quantile: f64,
    slow: impl IntoIterator<Item = Duration>,
) -> Duration {
    let hedge = Hedge::builder()
        .delay(ms(10))
        .percentile(quantile, 1)
        .max_hedges(0)
        .build()
        .unwrap();
    let slept = |latency: Duration| {
        hedge.call(Idempotent(move || async move {
            tokio::time::sleep(latency).await;
            Ok::<_, ()>(())
        }))
    };
    for latency in slow {
        slept(latency).await.unwrap();
    }
    for _ in 0..20_000 {
        slept(ms(1)).await.unwrap();
    }
    hedge.delay()
}

/// "Each count halves rounded down, so a latency seen once is gone at the next halving": one
/// 5 s call, then 20,000 of 1 ms, and the 1.0 quantile (the slowest seen) is 1 ms again.
/// Halved rounding up, the 5 s bucket kept its one latency for good.
#[tokio::test(start_paused = true)]
async fn the_slowest_latency_seen_once_fades() {
    let delay = delay_after_an_incident(1.0, [ms(5_000)]).await;
    assert!(delay >= ms(1) && delay <= ms(2), "{delay:?}");
}

/// A p99 after an incident whose slow latencies each fell in a bucket of their own (64
/// latencies from 100 ms up, 13 % apart, more than the 1 % a warm histogram's top holds):
/// once 20,000 calls of 1 ms have gone through, the p99 is 1 ms again.
#[tokio::test(start_paused = true)]
async fn an_incident_spread_over_many_buckets_fades_from_the_p99() {
    let slow = std::iter::successors(Some(ms(100)), |d| Some(d.mul_f64(1.13))).take(64);
    let delay = delay_after_an_incident(0.99, slow).await;
    assert!(delay >= ms(1) && delay <= ms(2), "{delay:?}");
}
