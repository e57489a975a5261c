//! Timer lateness: how long after its deadline a sleep wakes, alone or among 10k concurrent
//! timers, with each runtime's own sleep. Every runtime sleeps once, untimed, first: a first
//! timer may pay for more than a wake-up (embassy-time starts its driver thread on it), and
//! that cost must not land in one runtime's figures and not in another's.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::ensure;

use super::Measurement;
use crate::runtimes::{Rt, Spawner};
use crate::stats::Summary;

/// Lateness percentiles (µs) of `sleep` with `concurrent` timers at once; with one timer,
/// `sequential` sleeps one after another give the distribution.
pub(super) fn lateness(
    rt: &Rt,
    sleep: Duration,
    concurrent: u64,
    sequential: u64,
) -> anyhow::Result<Measurement> {
    let spawner = rt.spawner();
    let late_us: Vec<f64> = rt.run(async move {
        let timer = &spawner;
        if concurrent <= 1 {
            one_after_another(sleep, sequential, || timer.sleep(sleep)).await
        } else {
            // The same untimed first sleep as one_after_another's.
            timer.sleep(sleep).await;
            let timers: Vec<_> = (0..concurrent)
                .map(|_| {
                    let inner = spawner.clone();
                    spawner.spawn(async move { one(&inner, sleep).await })
                })
                .collect();
            let mut late = Vec::with_capacity(timers.len());
            for timer in timers {
                late.push(timer.await);
            }
            late
        }
    });
    let expected = if concurrent <= 1 {
        sequential
    } else {
        concurrent
    };
    summarize(late_us, expected, 0.0)
}

/// Lateness percentiles (µs) once every one of `expected` timers is checked to have fired,
/// none earlier than `early_tolerance_us` before its deadline.
pub(crate) fn summarize(
    late_us: Vec<f64>,
    expected: u64,
    early_tolerance_us: f64,
) -> anyhow::Result<Measurement> {
    ensure!(
        late_us.len() as u64 == expected,
        "timers: {} of {expected} fired",
        late_us.len()
    );
    ensure!(
        late_us.iter().all(|&l| l >= -early_tolerance_us),
        "a timer fired before its deadline"
    );
    let mut sorted = late_us;
    sorted.sort_by(f64::total_cmp);
    let p99 = percentile(&sorted, 0.99);
    let max = sorted.last().copied().unwrap_or(f64::NAN);
    Ok(Measurement {
        unit: "µs late (p50)".to_owned(),
        summary: Summary::of(vec![percentile(&sorted, 0.5)]),
        extra: vec![
            ("µs late (p99)".to_owned(), p99),
            ("µs late (max)".to_owned(), max),
        ],
        extra_rounds: Vec::new(),
    })
}

/// How late (µs) each of `count` sleeps of `duration` woke, one after another, after one
/// untimed sleep (see the module docs). `sleep` starts one sleep of `duration` on the runtime.
pub(crate) async fn one_after_another<F, Fut>(
    duration: Duration,
    count: u64,
    mut sleep: F,
) -> Vec<f64>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    sleep().await;
    let mut late = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    for _ in 0..count {
        let deadline = Instant::now() + duration;
        sleep().await;
        late.push(late_us(deadline));
    }
    late
}

/// How late (µs) one sleep of `duration` woke.
async fn one(spawner: &Spawner, duration: Duration) -> f64 {
    let deadline = Instant::now() + duration;
    spawner.sleep(duration).await;
    late_us(deadline)
}

/// µs from `deadline` to now: negative when it is still ahead (a timer that fired early).
pub(crate) fn late_us(deadline: Instant) -> f64 {
    let now = Instant::now();
    match now.checked_duration_since(deadline) {
        Some(late) => late.as_secs_f64() * 1e6,
        None => -(deadline - now).as_secs_f64() * 1e6,
    }
}

/// The `q` quantile of sorted samples (nearest rank).
pub(crate) fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // The smallest rank r (1-based) with r ≥ q·len; no float-to-integer cast needed.
    let wanted = q * sorted.len() as f64;
    let rank = (1..=sorted.len())
        .find(|&r| r as f64 >= wanted)
        .unwrap_or(sorted.len());
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{one_after_another, percentile};

    /// One sleep more than the samples: the first, untimed, on every runtime alike.
    #[test]
    fn the_first_sleep_is_a_warm_up_and_not_a_sample() {
        let mut sleeps = 0u64;
        let late = futures_lite::future::block_on(one_after_another(Duration::ZERO, 3, || {
            sleeps += 1;
            std::future::ready(())
        }));
        assert_eq!(late.len(), 3);
        assert_eq!(sleeps, 4);
        assert!(late.iter().all(|l| *l >= 0.0));
    }

    #[test]
    fn an_early_timer_is_negative_and_fails_the_check() {
        // An hour ahead, asked within a minute of it: only a stall of a minute between the
        // two lines could fail this, while a wrong sign or unit is off by orders of magnitude.
        let ahead = std::time::Instant::now() + std::time::Duration::from_secs(3600);
        assert!(super::late_us(ahead) < -3_540_000_000.0);
        let error = super::summarize(vec![5.0, -2.0], 2, 1.0).unwrap_err();
        assert!(error.to_string().contains("before its deadline"), "{error}");
        assert!(super::summarize(vec![5.0, -0.5], 2, 1.0).is_ok());
    }

    #[test]
    fn nearest_rank_percentiles() {
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 0.5).to_bits(), 50.0f64.to_bits());
        assert_eq!(percentile(&sorted, 0.99).to_bits(), 99.0f64.to_bits());
        assert_eq!(percentile(&sorted, 1.0).to_bits(), 100.0f64.to_bits());
        assert!(percentile(&[], 0.5).is_nan());
    }
}
