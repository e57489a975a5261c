//! Contracts the rustdoc states and the code once did otherwise: `periodic`'s missed ticks,
//! the health checker's first probe, `timeout_each`'s timer, `LineReader`'s batches.

mod common;
mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream};
use proptest::prelude::*;
use support::Chunky;
use tidewall::rt::{Clock, Runtime, Spawn};
use tidewall::stream::{LineReader, MissedTicks, Overlong, StreamOps};
use tidewall::task::{CancellationToken, Health, HealthChecker, periodic};
use tidewall::testing::Clocked;
use tidewall::time::Elapsed;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `start + k` periods of `period` (k as wide as any stall).
fn periods_after(start: Instant, period: Duration, k: u128) -> Instant {
    let nanos = period.as_nanos() * k;
    let secs = u64::try_from(nanos / 1_000_000_000).unwrap();
    start + Duration::new(secs, u32::try_from(nanos % 1_000_000_000).unwrap())
}

/// Beyond 2^32 periods, where a 32-bit count of skipped periods saturated.
const HUGE_OVERRUN: u128 = (1 << 32) + 5;

/// `periodic` with `Skip`: a run that overruns `n` periods is followed at once by one late
/// run (for the earliest overrun tick), then the original schedule resumes; for ordinary
/// overruns and for one of more than 2^32 periods (50 days at 1 ms).
async fn periodic_skip_runs_once_late_then_resumes<R: Runtime>(rt: Clocked<R>) {
    let period = ms(1);
    for overrun in [1u128, 2, 250, HUGE_OVERRUN] {
        let token = CancellationToken::new();
        // (tick, instant the run started)
        let runs = Arc::new(Mutex::new(Vec::new()));
        let (log, clock, stop) = (Arc::clone(&runs), rt.clone(), token.clone());
        let start = rt.now();
        let reason = periodic(rt.clone(), period, MissedTicks::Skip, &token, move |tick| {
            let (clock, stop) = (clock.clone(), stop.clone());
            let n = {
                let mut log = log.lock().unwrap();
                log.push((tick, clock.now()));
                log.len()
            };
            async move {
                match n {
                    // The second run lasts `overrun` periods and a half.
                    2 => {
                        let until = periods_after(clock.now(), period, overrun) + period / 2;
                        clock.sleep_until(until).await;
                    }
                    5 => stop.cancel("five runs"),
                    _ => {}
                }
            }
        })
        .unwrap()
        .await;
        assert_eq!(reason.as_str(), "five runs");
        // Run 2 starts at 2p and ends at (overrun + 2.5)p; the late run starts then, for
        // tick 3p; the schedule resumes at (overrun + 3)p.
        let at = |k: u128| periods_after(start, period, k);
        let ended = at(overrun + 2) + period / 2;
        assert_eq!(
            *runs.lock().unwrap(),
            [
                (at(1), at(1)),
                (at(2), at(2)),
                (at(3), ended),
                (at(overrun + 3), at(overrun + 3)),
                (at(overrun + 4), at(overrun + 4)),
            ],
            "overrun of {overrun} periods"
        );
    }
}

#[test]
fn periodic_skip_after_any_overrun_on_every_runtime() {
    on_every_runtime!(periodic_skip_runs_once_late_then_resumes);
}

/// The schedule of `periodic` starts when its future is first polled, not when it is built.
async fn periodic_starts_its_schedule_when_first_polled<R: Runtime>(rt: Clocked<R>) {
    let token = CancellationToken::new();
    let runs = Arc::new(Mutex::new(Vec::new()));
    let (log, clock, stop) = (Arc::clone(&runs), rt.clone(), token.clone());
    let work = periodic(rt.clone(), ms(100), MissedTicks::Skip, &token, move |_| {
        let mut log = log.lock().unwrap();
        log.push(clock.now());
        if log.len() == 2 {
            stop.cancel("two runs");
        }
        async {}
    })
    .unwrap();
    rt.sleep(Duration::from_secs(3600)).await;
    let polled = rt.now();
    assert_eq!(work.await.as_str(), "two runs");
    assert_eq!(*runs.lock().unwrap(), [polled + ms(100), polled + ms(200)]);
}

#[test]
fn periodic_schedule_starts_at_first_poll_on_every_runtime() {
    on_every_runtime!(periodic_starts_its_schedule_when_first_polled);
}

/// The health checker probes as soon as it is first polled (even when built an hour earlier),
/// then once per period from that first probe.
async fn health_checker_probes_at_once_then_every_period<R: Runtime>(rt: Clocked<R>) {
    let token = CancellationToken::new();
    let probes = Arc::new(Mutex::new(Vec::new()));
    let (log, clock) = (Arc::clone(&probes), rt.clone());
    let (health, checker) = HealthChecker::builder()
        .period(Duration::from_secs(5))
        .timeout(Duration::from_secs(1))
        .runtime(rt.clone())
        .start(&token, move || {
            log.lock().unwrap().push(clock.now());
            async { Ok::<(), String>(()) }
        })
        .unwrap();
    rt.sleep(Duration::from_secs(3600)).await;
    let spawned = rt.now();
    let running = rt.spawn(checker);
    assert_eq!(health.changed(&Health::Unknown).await, Health::Healthy);
    assert_eq!(rt.now(), spawned, "a verdict without waiting a period");
    assert_eq!(health.latest(), (Health::Healthy, Some(spawned)));
    rt.sleep(Duration::from_secs(12)).await;
    token.cancel("done");
    assert_eq!(running.await.unwrap().as_str(), "done");
    let secs = Duration::from_secs;
    assert_eq!(
        *probes.lock().unwrap(),
        [spawned, spawned + secs(5), spawned + secs(10)]
    );
}

#[test]
fn health_checker_probes_at_once_on_every_runtime() {
    on_every_runtime!(health_checker_probes_at_once_then_every_period);
}

/// A probe that overruns more than 2^32 periods (its timeout allows it) is followed by one late
/// probe at once, then probes resume on the schedule.
async fn health_checker_after_a_huge_overrun<R: Runtime>(rt: Clocked<R>) {
    let period = ms(1);
    let token = CancellationToken::new();
    let probes = Arc::new(Mutex::new(Vec::new()));
    let (log, clock, stop) = (Arc::clone(&probes), rt.clone(), token.clone());
    let (_health, checker) = HealthChecker::builder()
        .period(period)
        .timeout(Duration::from_secs(365 * 86_400))
        .runtime(rt.clone())
        .start(&token, move || {
            let (clock, stop) = (clock.clone(), stop.clone());
            let n = {
                let mut log = log.lock().unwrap();
                log.push(clock.now());
                log.len()
            };
            async move {
                match n {
                    2 => {
                        let until = periods_after(clock.now(), period, HUGE_OVERRUN);
                        clock.sleep_until(until).await;
                    }
                    5 => stop.cancel("five probes"),
                    _ => {}
                }
                Ok::<(), String>(())
            }
        })
        .unwrap();
    let first = rt.now();
    assert_eq!(checker.await.as_str(), "five probes");
    let at = |k: u128| periods_after(first, period, k);
    // Probe 2 runs from p to (overrun + 1)p; probe 3 is the late one, at once.
    assert_eq!(
        *probes.lock().unwrap(),
        [
            at(0),
            at(1),
            at(HUGE_OVERRUN + 1),
            at(HUGE_OVERRUN + 2),
            at(HUGE_OVERRUN + 3)
        ]
    );
}

#[test]
fn health_checker_after_a_huge_overrun_on_every_runtime() {
    on_every_runtime!(health_checker_after_a_huge_overrun);
}

/// `timeout_each` times the upstream from the moment the consumer asks for an item: a busy
/// consumer causes no `Elapsed`, an upstream slower than the timeout yields one, and an item
/// ready when the timer fires wins.
async fn timeout_each_times_the_upstream_from_the_ask<R: Runtime>(rt: Clocked<R>) {
    let r = rt.clone();
    let upstream = stream::iter([40u64, 40, 80, 50, 10]).then(move |d| {
        let r = r.clone();
        async move {
            r.sleep(ms(d)).await;
            d
        }
    });
    let mut items = Box::pin(upstream.timeout_each_on(&rt, ms(50)).unwrap());
    let mut seen = Vec::new();
    loop {
        let asked = rt.now();
        let Some(item) = items.next().await else {
            break;
        };
        let delivered = item.is_ok();
        seen.push((item, rt.now() - asked));
        if delivered {
            // Busy with each item for 30 ms: 40 + 30 would exceed the timeout if the timer
            // ran from the delivery of the previous item.
            rt.sleep(ms(30)).await;
        }
    }
    assert_eq!(
        seen,
        [
            (Ok(40), ms(40)),
            (Ok(40), ms(40)),
            (Err(Elapsed), ms(50)),
            (Ok(80), ms(30)),
            (Ok(50), ms(50)),
            (Ok(10), ms(10)),
        ]
    );
}

#[test]
fn timeout_each_times_the_upstream_on_every_runtime() {
    on_every_runtime!(timeout_each_times_the_upstream_from_the_ask);
}

#[tokio::test(start_paused = true)]
async fn timeout_each_ignores_a_slow_consumer_on_tokio() {
    let mut items = Box::pin(stream::iter(0..3).timeout_each(ms(10)).unwrap());
    let mut seen = Vec::new();
    while let Some(item) = items.next().await {
        seen.push(item);
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    assert_eq!(seen, [Ok(0), Ok(1), Ok(2)]);
}

proptest! {
    /// With `Overlong::Skip`, no batch is empty, whatever the lines, reads and buffer: the
    /// batches hold exactly the lines that fit.
    #[test]
    fn skipping_overlong_lines_never_yields_an_empty_batch(
        lens in proptest::collection::vec(0usize..30, 0..40),
        trailing_newline in any::<bool>(),
        sizes in proptest::collection::vec(1usize..40, 1..4),
        buffer in 1usize..64,
        max_line in 1usize..20,
    ) {
        let lines: Vec<Vec<u8>> = lens.iter().map(|&n| vec![b'x'; n]).collect();
        let mut data = lines.join(&b'\n');
        if trailing_newline && !lines.is_empty() {
            data.push(b'\n');
        }
        // An empty last line without a newline is no line at all.
        let mut all = lines.clone();
        if !trailing_newline && all.last().is_some_and(Vec::is_empty) {
            all.pop();
        }
        let fitting: Vec<Vec<u8>> = all.iter().filter(|l| l.len() <= max_line).cloned().collect();
        let reader = Chunky { data, pos: 0, sizes, turn: 0 };
        let (batches, skipped) = futures_util::FutureExt::now_or_never(async {
            let mut reader = LineReader::new(reader, buffer, max_line, Overlong::Skip).unwrap();
            let mut batches = Vec::new();
            while let Some(batch) = reader.next_batch().await.unwrap() {
                batches.push(batch.lines().map(<[u8]>::to_vec).collect::<Vec<_>>());
            }
            (batches, reader.skipped())
        })
        .unwrap();
        prop_assert!(batches.iter().all(|b| !b.is_empty()), "an empty batch: {:?}", batches);
        prop_assert_eq!(batches.concat(), fitting);
        prop_assert_eq!(skipped, (all.len() - all.iter().filter(|l| l.len() <= max_line).count()) as u64);
    }
}

#[test]
fn a_read_of_only_overlong_lines_is_not_a_batch() {
    let input = Chunky {
        data: b"aaaaaaaa\nbbbbbbbb\nok\n".to_vec(),
        pos: 0,
        sizes: vec![18, 3],
        turn: 0,
    };
    let batches = futures_util::FutureExt::now_or_never(async {
        let mut reader = LineReader::new(input, 64, 4, Overlong::Skip).unwrap();
        let mut batches = Vec::new();
        while let Some(batch) = reader.next_batch().await.unwrap() {
            batches.push(batch.as_bytes().to_vec());
        }
        batches
    })
    .unwrap();
    assert_eq!(batches, [b"ok\n".to_vec()]);
}
