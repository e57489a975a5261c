//! The tour's overload section: the service's capacity endpoint driven at 3x what it can serve,
//! without a limit and with the adaptive limiter. `tidewall overload` runs the whole scenario
//! (0.5x → 3x → 0.5x, with a fixed limit too); docs/ADAPTIVE.md compares it with the
//! simulation.

use std::time::Duration;

use crate::overload::load::{Ending, Limit, Load, NoLimit, Run, drive};
use crate::overload::summary::{Phase, phases, quantile};
use crate::overload::{
    CAPACITY, SERVICE_MS, TIMEOUT, adaptive_limiter, algorithm, backlog, path, throughput,
};

use super::client::{Client, Net, since};
use super::report::{Section, ms};
use super::scenarios::{Size, settle};
use super::server::Server;

pub(crate) async fn all<R: Net>(rt: R, server: &Server, size: Size) -> Vec<Section> {
    vec![three_times_capacity(&rt, server, size).await]
}

/// What one run showed.
struct Outcome {
    /// The run's only phase.
    phase: Phase,
    /// Every answer's latency, sorted, those after the run's end included.
    answers: Vec<Duration>,
    timed_out: usize,
    admitted: usize,
    arrived: usize,
    /// Every arrival was shed or ended, and no request task was lost.
    accounted: bool,
    /// What the dependency still held once every request had ended.
    left: usize,
}

async fn three_times_capacity<R: Net>(rt: &R, server: &Server, size: Size) -> Section {
    let length = Duration::from_millis(if size == Size::Quick { 1500 } else { 2000 });
    let load = Load {
        throughput: throughput(),
        phases: vec![(3.0, length)],
        timeout: TIMEOUT,
        seed: 20_261_205,
    };
    let limiter = adaptive_limiter(rt.clone());
    let (name, initial) = (algorithm(&limiter), limiter.limit());
    let mut s = Section::new(
        "Adaptive limiter: 3x overload, without a limit and with one",
        "AdaptiveLimiter::builder(algorithm).build()?.try_acquire() → permit.success() / .failure()",
    );
    settle(rt, server).await;
    let started = rt.now();
    let without = run(rt, server, "tour-overload-none", &NoLimit, &load).await;
    let with = run(rt, server, "tour-overload-adaptive", &limiter, &load).await;
    let elapsed = since(rt, started);
    let p50_p99 = |o: &Outcome| {
        format!(
            "{} / {}",
            ms(quantile(&o.answers, 0.5)),
            ms(quantile(&o.answers, 0.99))
        )
    };
    let percent = |share: f64| format!("{:.0} %", share * 100.0);
    s.metric(
        "dependency",
        format!(
            "{CAPACITY} at once, {SERVICE_MS} ms each, the rest queued FIFO ({:.0} / s); \
             abandoned requests are served anyway",
            throughput()
        ),
    )
    .metric(
        "offered",
        format!(
            "3x capacity: Poisson, {:.0} / s for {:.1} s; client timeout {:.1} s",
            3.0 * throughput(),
            length.as_secs_f64(),
            TIMEOUT.as_secs_f64()
        ),
    )
    .metric(
        "goodput without / with (answers during the run, of capacity)",
        format!(
            "{} / {}",
            percent(without.phase.goodput),
            percent(with.phase.goodput)
        ),
    )
    .metric("p50 / p99 without (every answer)", p50_p99(&without))
    .metric(
        &format!("p50 / p99 with {name} (every answer)"),
        p50_p99(&with),
    )
    .metric(
        "timed out without / with",
        format!(
            "{} of {} admitted / {} of {}",
            without.timed_out, without.admitted, with.timed_out, with.admitted
        ),
    )
    .metric(
        "shed by the limiter",
        format!(
            "{} of {} arrivals",
            with.arrived - with.admitted,
            with.arrived
        ),
    )
    .metric(
        "limit: initial / at the run's end",
        format!(
            "{initial} / {}",
            with.phase
                .limit
                .map_or_else(|| "none".into(), |l| l.to_string())
        ),
    )
    .metric(
        "left at the dependency, given up on (without / with)",
        format!("{} / {}", without.left, with.left),
    )
    .metric(
        "elapsed (both runs, until every request ended)",
        ms(elapsed),
    );
    s.check(
        "every arrival was shed or ended (answered, timed out, failed), and no request task panicked",
        without.accounted && with.accounted,
    );
    let (p99_without, p99_with) = (
        quantile(&without.answers, 0.99),
        quantile(&with.answers, 0.99),
    );
    s.check(
        "with the limiter, p99 is lower than without",
        !without.answers.is_empty() && !with.answers.is_empty() && p99_with < p99_without,
    );
    s.check(
        "with the limiter, fewer requests timed out than without",
        with.timed_out < without.timed_out,
    );
    s
}

/// One run against the dependency named `key`, with a fresh client.
async fn run<R: Net, L: Limit>(
    rt: &R,
    server: &Server,
    key: &str,
    limit: &L,
    load: &Load,
) -> Outcome {
    let client = Client::new(rt.clone(), server.addr);
    let run: Run = drive(rt, &client, &path(key), limit, load).await;
    let mut answers: Vec<Duration> = run
        .ended
        .iter()
        .filter(|e| e.ending == Ending::Answered)
        .map(|e| e.latency)
        .collect();
    answers.sort_unstable();
    let admitted = run.arrivals.iter().filter(|a| !a.shed).count();
    Outcome {
        phase: phases(&run, load).swap_remove(0),
        answers,
        timed_out: run
            .ended
            .iter()
            .filter(|e| e.ending == Ending::TimedOut)
            .count(),
        admitted,
        arrived: run.arrivals.len(),
        accounted: run.lost == 0 && run.ended.len() == admitted,
        left: backlog(server, key),
    }
}
