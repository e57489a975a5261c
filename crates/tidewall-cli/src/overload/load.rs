//! Open-loop load over real HTTP: Poisson arrivals whose rate steps by phase, each admitted by
//! a limit (or shed at once, never sent) and given up on after a client timeout. Arrivals
//! keep their schedule whatever the answers do: a late timer sends the requests that are due
//! at once, so a slow machine does not quietly offer less load.

use std::sync::Arc;
use std::time::Duration;

use tidewall::FutureExt as _;
use tidewall::adaptive::{AdaptiveLimiter, AdaptivePermit, LimitAlgorithm};
use tidewall::bulkhead::{Bulkhead, OwnedPermit};
use tidewall::rt::Clock;
use tidewall_core::rng::SplitMix64;

use crate::tour::client::{Client, Net};

/// What to offer, and for how long.
#[derive(Debug, Clone)]
pub(crate) struct Load {
    /// Requests a second at 1x: the dependency's throughput at full use.
    pub(crate) throughput: f64,
    /// Offered load as a multiple of `throughput`, and for how long.
    pub(crate) phases: Vec<(f64, Duration)>,
    /// The client gives up on a request after this (a drop, for the limit).
    pub(crate) timeout: Duration,
    /// Seeds the arrivals.
    pub(crate) seed: u64,
}

impl Load {
    /// The whole run.
    pub(crate) fn length(&self) -> Duration {
        self.phases.iter().map(|(_, length)| *length).sum()
    }

    /// When phase `i` ends, as time since the start.
    pub(crate) fn phase_end(&self, i: usize) -> Duration {
        self.phases
            .iter()
            .take(i + 1)
            .map(|(_, length)| *length)
            .sum()
    }

    /// The phase `at` (time since the start) falls in; the last one past the end.
    pub(crate) fn phase_at(&self, at: Duration) -> usize {
        let mut end = Duration::ZERO;
        for (i, (_, length)) in self.phases.iter().enumerate() {
            end += *length;
            if at < end {
                return i;
            }
        }
        self.phases.len().saturating_sub(1)
    }

    /// Requests a second offered at `at`.
    fn rate_at(&self, at: Duration) -> f64 {
        self.phases
            .get(self.phase_at(at))
            .map_or(0.0, |(load, _)| load * self.throughput)
    }

    /// The arrival after one at `at`: an exponential gap at the rate in force then, as the
    /// simulation draws it.
    fn next_arrival(&self, rng: &mut SplitMix64, at: Duration) -> Duration {
        let gap = -(1.0 - unit(rng)).ln() / self.rate_at(at);
        at.saturating_add(Duration::try_from_secs_f64(gap).unwrap_or(Duration::MAX))
    }
}

/// How a run admits its requests: no limit, a fixed one, or the adaptive limiter. Each arrival
/// takes a permit now or is shed; the permit is told how the request ended.
pub(crate) trait Limit: Send + Sync + 'static {
    /// Held while the request is in flight.
    type Permit: Send + 'static;

    /// A permit now, or `None`: refused, the request is shed.
    fn try_acquire(&self) -> Option<Self::Permit>;

    /// Ends a request: answered in time, or not (timed out or failed: a drop).
    fn finish(permit: Self::Permit, answered: bool);

    /// The limit in force (`None`: there is none).
    fn current(&self) -> Option<u32>;
}

/// Admits everything.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NoLimit;

impl Limit for NoLimit {
    type Permit = ();

    fn try_acquire(&self) -> Option<()> {
        Some(())
    }

    fn finish((): (), _: bool) {}

    fn current(&self) -> Option<u32> {
        None
    }
}

/// A fixed limit: a bulkhead that refuses when full.
impl<R: Clock> Limit for Bulkhead<R> {
    type Permit = OwnedPermit<R>;

    fn try_acquire(&self) -> Option<OwnedPermit<R>> {
        self.try_acquire_owned().ok()
    }

    fn finish(permit: OwnedPermit<R>, _: bool) {
        drop(permit);
    }

    fn current(&self) -> Option<u32> {
        Some(u32::try_from(self.capacity()).unwrap_or(u32::MAX))
    }
}

impl<A: LimitAlgorithm + Send + 'static, R: Clock> Limit for AdaptiveLimiter<A, R> {
    type Permit = AdaptivePermit<A, R>;

    fn try_acquire(&self) -> Option<AdaptivePermit<A, R>> {
        AdaptiveLimiter::try_acquire(self).ok()
    }

    fn finish(permit: AdaptivePermit<A, R>, answered: bool) {
        if answered {
            permit.success();
        } else {
            permit.failure();
        }
    }

    fn current(&self) -> Option<u32> {
        Some(self.limit())
    }
}

/// How an admitted request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Answered (2xx) within the timeout.
    Answered,
    /// The client gave up on it.
    TimedOut,
    /// An error before the timeout: a status other than 2xx, or a connection failure.
    Failed,
}

/// One arrival, at its time since the run's start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrival {
    pub(crate) at: Duration,
    pub(crate) shed: bool,
}

/// One admitted request that ended, at its time since the run's start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ended {
    pub(crate) at: Duration,
    /// From admission to the answer (or to giving up).
    pub(crate) latency: Duration,
    pub(crate) ending: Ending,
}

/// What a run saw. Every request admitted during the run was waited for, so `ended` holds
/// them all, those that ended after the run's last phase included.
#[derive(Debug, Default)]
pub(crate) struct Run {
    pub(crate) arrivals: Vec<Arrival>,
    pub(crate) ended: Vec<Ended>,
    /// Request tasks that panicked (or were cancelled) instead of ending.
    pub(crate) lost: usize,
    /// The limit in force at each phase's end (`None`: no limit).
    pub(crate) limits: Vec<Option<u32>>,
}

/// Offers `load` to `path` through `client`, admitting each arrival by `limit`; returns once
/// every admitted request has ended (at most `timeout` after the last phase).
pub(crate) async fn drive<R: Net, L: Limit>(
    rt: &R,
    client: &Client<R>,
    path: &str,
    limit: &L,
    load: &Load,
) -> Run {
    let path: Arc<str> = Arc::from(path);
    let end = load.length();
    let mut rng = SplitMix64::new(load.seed);
    let mut run = Run::default();
    let mut requests = Vec::new();
    let start = rt.now();
    let mut at = load.next_arrival(&mut rng, Duration::ZERO);
    while at < end {
        // The limit at the end of every phase this arrival is past.
        while run.limits.len() < load.phase_at(at) {
            rt.sleep_until(start + load.phase_end(run.limits.len()))
                .await;
            run.limits.push(limit.current());
        }
        rt.sleep_until(start + at).await;
        let Some(permit) = limit.try_acquire() else {
            run.arrivals.push(Arrival { at, shed: true });
            at = load.next_arrival(&mut rng, at);
            continue;
        };
        run.arrivals.push(Arrival { at, shed: false });
        let admitted = rt.now();
        let (rt2, client, path, timeout) =
            (rt.clone(), client.clone(), Arc::clone(&path), load.timeout);
        requests.push(rt.spawn(async move {
            let answer = client.get(&path).timeout_on(&rt2, timeout).await;
            let now = rt2.now();
            let ending = match answer {
                Ok(Ok(_)) => Ending::Answered,
                Ok(Err(_)) => Ending::Failed,
                Err(_) => Ending::TimedOut,
            };
            L::finish(permit, ending == Ending::Answered);
            Ended {
                at: now.saturating_duration_since(start),
                latency: now.saturating_duration_since(admitted),
                ending,
            }
        }));
        at = load.next_arrival(&mut rng, at);
    }
    while run.limits.len() < load.phases.len() {
        rt.sleep_until(start + load.phase_end(run.limits.len()))
            .await;
        run.limits.push(limit.current());
    }
    for request in requests {
        match request.await {
            Ok(ended) => run.ended.push(ended),
            Err(_) => run.lost += 1,
        }
    }
    run
}

/// Uniform in `[0, 1)` from the simulation's generator: the top 53 bits, exactly
/// representable.
#[allow(
    clippy::cast_precision_loss,
    reason = "53-bit integers are exact in an f64"
)]
fn unit(rng: &mut SplitMix64) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1_u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Load, unit};
    use tidewall_core::rng::SplitMix64;

    fn steps(each: Duration) -> Load {
        Load {
            throughput: 100.0,
            phases: vec![(0.5, each), (3.0, each), (0.5, each)],
            timeout: Duration::from_secs(2),
            seed: 20_261_205,
        }
    }

    /// Every arrival time of `load`, as the driver draws them.
    fn arrivals(load: &Load) -> Vec<Duration> {
        let mut rng = SplitMix64::new(load.seed);
        let mut out = Vec::new();
        let mut at = load.next_arrival(&mut rng, Duration::ZERO);
        while at < load.length() {
            out.push(at);
            at = load.next_arrival(&mut rng, at);
        }
        out
    }

    #[test]
    fn phases_cover_the_run_and_the_last_takes_what_is_past_it() {
        let load = steps(Duration::from_secs(10));
        assert_eq!(load.length(), Duration::from_secs(30));
        assert_eq!(load.phase_end(0), Duration::from_secs(10));
        assert_eq!(load.phase_end(2), Duration::from_secs(30));
        assert_eq!(load.phase_at(Duration::ZERO), 0);
        assert_eq!(load.phase_at(Duration::from_millis(9_999)), 0);
        assert_eq!(load.phase_at(Duration::from_secs(10)), 1);
        assert_eq!(load.phase_at(Duration::from_secs(25)), 2);
        assert_eq!(load.phase_at(Duration::from_secs(99)), 2);
    }

    #[test]
    fn arrivals_are_seeded_increasing_and_at_the_offered_rate() {
        let load = steps(Duration::from_secs(100));
        let all = arrivals(&load);
        assert_eq!(
            all,
            arrivals(&load),
            "the same seed draws the same arrivals"
        );
        assert_ne!(
            all,
            arrivals(&Load {
                seed: 7,
                ..load.clone()
            })
        );
        assert!(all.windows(2).all(|w| w[0] <= w[1]));
        // 5,000 + 30,000 + 5,000 expected; Poisson counts this large stay within a few
        // percent (the standard deviation is the square root of the mean).
        let in_phase = |p: usize| all.iter().filter(|at| load.phase_at(**at) == p).count();
        for (phase, expected) in [(0, 5_000), (1, 30_000), (2, 5_000)] {
            let seen = in_phase(phase);
            assert!(
                seen.abs_diff(expected) * 100 < expected * 3,
                "phase {phase}: {seen} arrivals, expected about {expected}"
            );
        }
    }

    #[test]
    fn the_generator_is_splitmix64() {
        // The reference sequence for seed 0 (Vigna's splitmix64.c).
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        let unit = unit(&mut SplitMix64::new(1));
        assert!((0.0..1.0).contains(&unit));
    }
}
