//! A run summed up per phase, with the simulation's columns (docs/ADAPTIVE.md): each event
//! counts in the phase it happened in (an arrival or a shed when it arrived, an answer when it
//! came, a timeout when the client gave up), and what ended after the last phase counts
//! nowhere, as in the simulation.

use std::time::Duration;

use super::load::{Ending, Load, Run};

/// One phase of a run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Phase {
    /// Offered load, as a multiple of capacity.
    pub(crate) load: f64,
    /// Answers in time per second, as a share of the dependency's throughput.
    pub(crate) goodput: f64,
    /// The target goodput: the offered load, or all of capacity under overload.
    pub(crate) target: f64,
    /// Median latency of the answers.
    pub(crate) p50: Duration,
    /// 99th percentile latency of the answers.
    pub(crate) p99: Duration,
    /// Share of arrivals shed.
    pub(crate) shed: f64,
    /// Timeouts, as a share of the requests admitted in the phase (above 1 when a backlog
    /// from the phase before times out in it).
    pub(crate) timed_out: f64,
    /// Other errors (a non-2xx status, a failed connection), in the same terms.
    pub(crate) failed: f64,
    /// The limit at the phase's end (`None`: no limit).
    pub(crate) limit: Option<u32>,
}

#[allow(
    clippy::cast_precision_loss,
    reason = "counts of requests in a run, far below 2^53"
)]
pub(crate) fn phases(run: &Run, load: &Load) -> Vec<Phase> {
    let end = load.length();
    let in_run = |at: Duration| at < end;
    load.phases
        .iter()
        .enumerate()
        .map(|(i, (offered, length))| {
            let here = |at: Duration| in_run(at) && load.phase_at(at) == i;
            let arrived = run.arrivals.iter().filter(|a| here(a.at)).count();
            let shed = run.arrivals.iter().filter(|a| here(a.at) && a.shed).count();
            let ended = |ending: Ending| {
                run.ended
                    .iter()
                    .filter(|e| here(e.at) && e.ending == ending)
                    .count()
            };
            let mut latencies: Vec<Duration> = run
                .ended
                .iter()
                .filter(|e| here(e.at) && e.ending == Ending::Answered)
                .map(|e| e.latency)
                .collect();
            latencies.sort_unstable();
            let admitted = (arrived - shed).max(1) as f64;
            Phase {
                load: *offered,
                goodput: latencies.len() as f64 / length.as_secs_f64() / load.throughput,
                target: offered.min(1.0),
                p50: quantile(&latencies, 0.5),
                p99: quantile(&latencies, 0.99),
                shed: shed as f64 / arrived.max(1) as f64,
                timed_out: ended(Ending::TimedOut) as f64 / admitted,
                failed: ended(Ending::Failed) as f64 / admitted,
                limit: run.limits.get(i).copied().flatten(),
            }
        })
        .collect()
}

/// The `q` quantile of sorted `values`, as the simulation takes it (the value at rank
/// `round((n − 1) × q)`); zero for none.
#[allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "a rank within a slice's length, from a quantile in [0, 1]"
)]
pub(crate) fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let Some(last) = sorted.len().checked_sub(1) else {
        return Duration::ZERO;
    };
    let rank = (last as f64 * q.clamp(0.0, 1.0)).round() as usize;
    sorted[rank.min(last)]
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Phase, phases, quantile};
    use crate::overload::load::{Arrival, Ended, Ending, Load, Run};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn quantiles_take_the_simulations_rank() {
        assert_eq!(quantile(&[], 0.99), Duration::ZERO);
        assert_eq!(quantile(&[ms(5)], 0.5), ms(5));
        let hundred: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(quantile(&hundred, 0.5), ms(51)); // rank round(49.5) = 50
        assert_eq!(quantile(&hundred, 0.99), ms(99)); // rank round(98.01) = 98
        assert_eq!(quantile(&hundred, 1.0), ms(100));
    }

    #[test]
    fn events_count_in_the_phase_they_happened_in_and_not_after_the_run() {
        let load = Load {
            throughput: 10.0,
            phases: vec![(0.5, Duration::from_secs(1)), (3.0, Duration::from_secs(1))],
            timeout: Duration::from_secs(2),
            seed: 1,
        };
        let arrival = |at, shed| Arrival { at: ms(at), shed };
        let ended = |at, latency, ending| Ended {
            at: ms(at),
            latency: ms(latency),
            ending,
        };
        let run = Run {
            arrivals: vec![
                arrival(100, false),
                arrival(900, false),
                arrival(1_100, false),
                arrival(1_200, true),
                arrival(1_300, false),
                arrival(1_400, true),
            ],
            ended: vec![
                ended(200, 100, Ending::Answered),
                // Admitted in the first phase, answered in the second: counts there.
                ended(1_050, 150, Ending::Answered),
                ended(1_500, 400, Ending::TimedOut),
                // After the run: nowhere.
                ended(2_500, 1_200, Ending::Failed),
            ],
            lost: 0,
            limits: vec![Some(4), Some(3)],
        };
        let expected = [
            Phase {
                load: 0.5,
                goodput: 0.1, // 1 answer in 1 s, of 10 a second
                target: 0.5,
                p50: ms(100),
                p99: ms(100),
                shed: 0.0,
                timed_out: 0.0,
                failed: 0.0,
                limit: Some(4),
            },
            Phase {
                load: 3.0,
                goodput: 0.1,
                target: 1.0,
                p50: ms(150),
                p99: ms(150),
                shed: 0.5,      // 2 of 4 arrivals
                timed_out: 0.5, // 1 of 2 admitted
                failed: 0.0,
                limit: Some(3),
            },
        ];
        assert_eq!(phases(&run, &load), expected);
    }
}
