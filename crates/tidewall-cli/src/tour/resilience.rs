//! The tour's resilience scenarios: circuit breaker, bulkhead, hedging and the composed
//! pipeline against the shared service, and the rate limiter against its own timer (it calls
//! nothing), all timed on the runtime's own clock.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::join_all;
use tidewall::breaker::{CircuitBreaker, State, StateChange, TripReason, Window};
use tidewall::bulkhead::Bulkhead;
use tidewall::hedge::{Hedge, Idempotent};
use tidewall::pipeline::Pipeline;
use tidewall::rate::RateLimiter;
use tidewall::{Backoff, ConfigError, Deadline, Error, Rejected};

use super::bounded::{missed, within};
use super::client::{Client, Net, since};
use super::report::{Section, ms};
use super::scenarios::{Size, settle};
use super::server::Server;

pub(crate) async fn all<R: Net>(rt: R, server: &Server, size: Size) -> Vec<Section> {
    let client = Client::new(rt.clone(), server.addr);
    // Warm one connection so the first scenario does not pay the TCP handshake alone.
    let _ = client.get("/delay/0").await;
    vec![
        breaker(&client, &rt, server, size).await,
        bulkhead(&client, &rt, server, size).await,
        rate(&rt, size).await,
        hedging(&client, &rt, server, size).await,
        pipeline(&client, &rt, server, size).await,
    ]
}

/// One breaker transition: when (since the scenario started), from, to, and why it opened.
type Transition = (Duration, State, State, Option<TripReason>);

async fn breaker<R: Net>(client: &Client<R>, rt: &R, server: &Server, size: Size) -> Section {
    // The outage is the service's next 5 requests, and the breaker opens on the 5th failure in
    // a row: the first probe after the break is then the first request after the outage, so
    // the timeline is deterministic (count-based, not a race against the clock).
    const OUTAGE: u32 = 5;
    let quick = size == Size::Quick;
    let calls = if quick { 30 } else { 50 };
    let pause = Duration::from_millis(if quick { 150 } else { 250 });
    let mut s = Section::new(
        "Circuit breaker: a service that goes down and comes back",
        "CircuitBreaker::builder()..build()?.call(op)",
    );
    settle(rt, server).await;
    let start = rt.now();
    let log: Arc<Mutex<Vec<Transition>>> = Arc::default();
    let (sink, clock) = (Arc::clone(&log), rt.clone());
    let breaker = CircuitBreaker::builder()
        .runtime(rt.clone())
        .name("tour-outage")
        .consecutive_failures(OUTAGE)
        .break_duration(pause)
        .half_open_probes(2)
        .on_state_change(move |c: &StateChange<'_>| {
            lock(&sink).push((since(&clock, start), c.from, c.to, c.reason));
        });
    let breaker = valid(breaker.build());
    let path = format!("/flaky/tour-breaker/{OUTAGE}/-");
    let before = server.stats.requests();
    let (mut ok, mut failed, mut shed) = (0usize, 0usize, 0usize);
    // Sequential calls at a steady pace: a slower machine only means fewer calls land in the
    // break, never that the breaker misses a transition.
    for _ in 0..calls {
        match breaker.call(|| client.get(&path)).await {
            Ok(_) => ok += 1,
            Err(Error::Rejected(Rejected::CircuitOpen { .. })) => shed += 1,
            Err(_) => failed += 1,
        }
        rt.sleep(Duration::from_millis(10)).await;
    }
    let reached = server.stats.requests() - before;
    let log = lock(&log).clone();
    let steps: Vec<(State, State)> = log.iter().map(|t| (t.1, t.2)).collect();
    let timeline = log
        .iter()
        .map(|(at, from, to, _)| format!("{from} → {to} at {}", ms(*at)))
        .collect::<Vec<_>>()
        .join(", ");
    let open_for = match log.as_slice() {
        [opened, probing, ..] => ms(probing.0.saturating_sub(opened.0)),
        _ => "n/a".into(),
    };
    s.metric("calls (one after another, 10 ms apart)", calls)
        .metric("failed (reached the down service)", failed)
        .metric("shed while open", shed)
        .metric("succeeded", ok)
        .metric("requests at the server", reached)
        .metric("open for (until the first probe)", open_for)
        .metric("timeline", timeline);
    s.check(
        "state changes were exactly closed → open → half_open → closed",
        steps
            == [
                (State::Closed, State::Open),
                (State::Open, State::HalfOpen),
                (State::HalfOpen, State::Closed),
            ],
    );
    s.check(
        "it opened on the 5th consecutive failure",
        u32::try_from(failed) == Ok(OUTAGE)
            && log.first().and_then(|t| t.3) == Some(TripReason::ConsecutiveFailures),
    );
    s.check(
        "shed calls never reached the server (requests = calls − shed)",
        shed > 0 && reached == calls - shed,
    );
    s.check("it ended closed", breaker.state() == State::Closed);
    s
}

async fn bulkhead<R: Net>(client: &Client<R>, rt: &R, server: &Server, size: Size) -> Section {
    const SLOTS: usize = 4;
    const QUEUE: usize = 8;
    let total = if size == Size::Quick { 20 } else { 40 };
    // Between one and two 50 ms service times: the first queued wave gets a slot, the second
    // times out, so all three outcomes show (admitted, waited then admitted, rejected).
    let max_wait = Duration::from_millis(75);
    let mut s = Section::new(
        "Bulkhead: overload",
        "Bulkhead::builder(4).max_queue(8).max_wait(75 ms)..acquire()",
    );
    settle(rt, server).await;
    server.stats.reset_peak();
    let before = server.stats.requests();
    let bulkhead = Bulkhead::builder(SLOTS).max_queue(QUEUE).max_wait(max_wait);
    let bulkhead = &valid(bulkhead.runtime(rt.clone()).build());
    let done = AtomicBool::new(false);
    let start = rt.now();
    let calls = async {
        // Ok(call succeeded) or Err(time until rejected).
        let outcomes = join_all((0..total).map(|_| async move {
            let asked = rt.now();
            match bulkhead.acquire().await {
                Ok(_slot) => Ok(client.get("/delay/50").await.is_ok()),
                Err(_) => Err(since(rt, asked)),
            }
        }))
        .await;
        done.store(true, SeqCst);
        outcomes
    };
    // The bulkhead reports its current queue depth, not a peak: sample it while calls run.
    let sampler = async {
        let mut peak = 0;
        while !done.load(SeqCst) {
            peak = peak.max(bulkhead.queued());
            rt.sleep(Duration::from_millis(1)).await;
        }
        peak
    };
    let (outcomes, peak_queued) = futures_util::join!(calls, sampler);
    let elapsed = since(rt, start);
    let admitted: Vec<bool> = outcomes.iter().copied().filter_map(Result::ok).collect();
    let rejected: Vec<Duration> = outcomes.iter().copied().filter_map(Result::err).collect();
    // A wait timer fires no earlier than max_wait; a full queue refuses at once.
    let timed_out = rejected.iter().filter(|w| **w >= max_wait).count();
    let peak = server.stats.peak_in_flight();
    let reached = server.stats.requests() - before;
    s.metric("calls (all at once, 50 ms each)", total)
        .metric("admitted", admitted.len())
        .metric("queued (peak, sampled each ms)", peak_queued)
        .metric("rejected", rejected.len())
        .metric("rejected after waiting max_wait", timed_out)
        .metric("max in flight (server-observed)", peak)
        .metric("elapsed", ms(elapsed));
    s.check("never more than 4 in flight at the server", peak <= SLOTS);
    s.check(
        "admitted + rejected = calls, and the bulkhead's rejected() agrees",
        admitted.len() + rejected.len() == total
            && usize::try_from(bulkhead.rejected()) == Ok(rejected.len()),
    );
    s.check(
        "rejected calls never reached the server",
        reached == admitted.len(),
    );
    s.check("the queue never held more than 8", peak_queued <= QUEUE);
    s.check("every admitted call succeeded", !admitted.contains(&false));
    s
}

async fn rate<R: Net>(rt: &R, size: Size) -> Section {
    const COUNT: u32 = 50;
    const BURST: u32 = 5;
    // Half an interval past a whole number of 20 ms intervals, so no admission is due exactly
    // at the end of the span.
    let span = Duration::from_millis(if size == Size::Quick { 310 } else { 510 });
    let mut s = Section::new(
        "Rate limiter: admitted vs theory",
        "RateLimiter::builder(50, 1 s).burst(5).jitter(0)..until_ready_before(..)",
    );
    // Taken before the build: the limiter's origin is no earlier, so the span covers its life.
    let start = rt.now();
    // Jitter spreads a herd of waiters; a single greedy caller has none, and it would add
    // delay the theory does not count.
    let limiter = RateLimiter::builder(COUNT, Duration::from_secs(1)).burst(BURST);
    let limiter = valid(limiter.jitter(Duration::ZERO).runtime(rt.clone()).build());
    let deadline = Deadline::at(start + span);
    let mut admitted = 0u64;
    // Stop once the span is over: a late wake-up could otherwise take a cell due after it.
    while !deadline.is_expired(rt.now()) {
        if limiter.until_ready_before(deadline).await.is_err() {
            break;
        }
        admitted += 1;
    }
    let elapsed = since(rt, start);
    let interval = Duration::from_nanos(limiter.gcra().interval_nanos());
    let theory =
        u64::from(BURST) + u64::try_from(span.as_nanos() / interval.as_nanos()).unwrap_or(u64::MAX);
    s.metric("rate", format!("{COUNT} / s (one per {})", ms(interval)))
        .metric("burst", BURST)
        .metric("span", ms(span))
        .metric("admitted", admitted)
        .metric("theory: burst + ⌊span / interval⌋", theory)
        .metric("elapsed", ms(elapsed));
    s.check("admitted ≤ theory", admitted <= theory);
    s.check("admitted ≥ theory − 1", admitted + 1 >= theory);
    s
}

async fn hedging<R: Net>(client: &Client<R>, rt: &R, server: &Server, size: Size) -> Section {
    let calls = if size == Size::Quick { 200 } else { 400 };
    let delay = Duration::from_millis(20);
    let mut s = Section::new(
        "Hedging: p99 with and without",
        "Hedge::builder().delay(20 ms).max_hedges(1)..call(Idempotent(op))",
    );
    settle(rt, server).await;
    let attempts = AtomicUsize::new(0);
    let attempts = &attempts;
    let plain = timed_calls(rt, calls, move |call| async move {
        attempts.fetch_add(1, SeqCst);
        client.get(latency_path(call, 0)).await.is_ok()
    });
    let Some(plain) = within(rt, HEDGING_LIMIT, plain).await else {
        let what = format!("the {calls} calls without hedging ended");
        return missed(s, &what, HEDGING_LIMIT);
    };
    attempts.store(0, SeqCst);
    let hedge = Hedge::builder().delay(delay).max_hedges(1);
    let hedge = &valid(hedge.runtime(rt.clone()).build());
    // Attempts per call, primary included: the bound is per call, which a total cannot show.
    let per_call: &[AtomicUsize] = &(0..calls).map(|_| AtomicUsize::new(0)).collect::<Vec<_>>();
    let before = server.stats.requests();
    let hedged = timed_calls(rt, calls, move |call| async move {
        let mine = &per_call[call];
        // Each attempt, primary or hedge, draws its own latency: a hedge is a fresh roll.
        hedge
            .call(Idempotent(|| {
                attempts.fetch_add(1, SeqCst);
                client.get(latency_path(call, mine.fetch_add(1, SeqCst)))
            }))
            .await
            .is_ok()
    });
    let Some(hedged) = within(rt, HEDGING_LIMIT, hedged).await else {
        let what = format!("the {calls} calls with hedging ended");
        return missed(s, &what, HEDGING_LIMIT);
    };
    let per_call: Vec<usize> = per_call.iter().map(|n| n.load(SeqCst)).collect();
    let launched = attempts.load(SeqCst).saturating_sub(calls);
    // A hedge dropped before its request was read never counts at the server.
    let extra = (server.stats.requests() - before).saturating_sub(calls);
    let (p99_plain, p99_hedged) = (percentile(&plain.0, 99), percentile(&hedged.0, 99));
    let p50_p99 = |sorted: &[Duration]| {
        format!(
            "{} / {}",
            ms(percentile(sorted, 50)),
            ms(percentile(sorted, 99))
        )
    };
    s.metric("calls (8 at a time)", calls)
        .metric(
            "latency",
            "1 call in 20 meets a slow replica (200 ms), every other attempt 5 ms",
        )
        .metric("hedge delay", ms(delay))
        .metric("p50 / p99 without", p50_p99(&plain.0))
        .metric("p50 / p99 with", p50_p99(&hedged.0))
        .metric(
            "hedges launched",
            format!("{launched} (+{} %)", launched * 100 / calls),
        )
        .metric(
            "calls with 1 / 2 / more attempts",
            format!(
                "{} / {} / {}",
                per_call.iter().filter(|n| **n == 1).count(),
                per_call.iter().filter(|n| **n == 2).count(),
                per_call.iter().filter(|n| **n > 2).count()
            ),
        )
        .metric("extra requests at the server", extra);
    s.check(
        "every call succeeded in both runs",
        plain.1 == calls && hedged.1 == calls,
    );
    // One call in 20 is slow, so without hedging the p99 is a slow call; its hedge goes to
    // another replica and answers in 5 ms, so the p99 falls to about delay + 5 ms.
    s.check(
        "p99 without hedging shows the 200 ms tail",
        p99_plain >= Duration::from_millis(200),
    );
    // The slow replica's 200 ms is a floor for any call that waited for it: a p99 below it
    // means the tail calls were answered by their hedges (about 25 ms), with room for a
    // loaded machine.
    s.check(
        "with hedging, p99 falls below the slow replica's 200 ms",
        p99_hedged < Duration::from_millis(200),
    );
    s.check(
        "at most one hedge per call (every call made 1 or 2 attempts)",
        at_most_one_hedge_each(&per_call),
    );
    s
}

/// How long each run of the hedging section may take: its calls, 8 at a time, need about a
/// second.
const HEDGING_LIMIT: Duration = Duration::from_secs(60);

/// Whether every call made its primary attempt and at most one hedge. The per-call counts
/// matter: a total of `calls` hedges also fits one call with three hedges and others with none.
fn at_most_one_hedge_each(attempts_per_call: &[usize]) -> bool {
    !attempts_per_call.is_empty() && attempts_per_call.iter().all(|n| (1..=2).contains(n))
}

/// The first attempt of every 20th call meets a slow replica; every other attempt (a hedge
/// goes elsewhere) is fast. Tied to the call, not to a shared attempt counter, so whether a
/// hedge is slow does not depend on how many attempts the other calls happened to start.
fn latency_path(call: usize, attempt: usize) -> &'static str {
    if call.is_multiple_of(20) && attempt == 0 {
        "/delay/200"
    } else {
        "/delay/5"
    }
}

/// Runs `calls` calls (`call(i)` for i in `0..calls`), 8 at a time; their sorted latencies and
/// how many succeeded.
async fn timed_calls<R: Net, F, Fut>(rt: &R, calls: usize, call: F) -> (Vec<Duration>, usize)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = bool>,
{
    let results: Vec<(Duration, bool)> = futures_util::stream::iter(0..calls)
        .map(|i| {
            let attempt = call(i);
            async move {
                let started = rt.now();
                let ok = attempt.await;
                (since(rt, started), ok)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let ok = results.iter().filter(|r| r.1).count();
    let mut latencies: Vec<Duration> = results.into_iter().map(|r| r.0).collect();
    latencies.sort_unstable();
    (latencies, ok)
}

/// The nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], pct: usize) -> Duration {
    let rank = (sorted.len() * pct).div_ceil(100).max(1);
    sorted.get(rank - 1).copied().unwrap_or_default()
}

async fn pipeline<R: Net>(client: &Client<R>, rt: &R, server: &Server, size: Size) -> Section {
    let calls: usize = if size == Size::Quick { 4 } else { 8 };
    let budget = Duration::from_secs(5);
    let mut s = Section::new(
        "Pipeline against the flaky service",
        "Pipeline::builder().runtime(rt)..honor_retry_after().build()?.call(..)",
    );
    settle(rt, server).await;
    let transitions = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&transitions);
    // All calls start together, so the first 2 × calls outcomes are failures: a breaker that
    // judged on that little evidence would open on a service that answers every third try.
    // It is here for real outages; minimum_calls asks for more evidence than this run makes.
    let breaker = CircuitBreaker::builder()
        .runtime(rt.clone())
        .failure_rate(0.5)
        .minimum_calls(50)
        .window(Window::Count { calls: 100 })
        .on_state_change(move |_: &StateChange<'_>| {
            counter.fetch_add(1, SeqCst);
        });
    let limiter = RateLimiter::builder(20, Duration::from_secs(1)).burst(4);
    // Slots are held across retries (~2 s a call): one per call, so none waits.
    let bulkhead = Bulkhead::builder(8).max_queue(8).runtime(rt.clone());
    let backoff = Backoff::exponential(Duration::from_millis(50)).max_attempts(4);
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(budget)
        .rate_limit(valid(limiter.runtime(rt.clone()).build()))
        .bulkhead(valid(bulkhead.build()))
        .retry(valid(backoff.build()))
        .breaker(valid(breaker.build()))
        .attempt_timeout(Duration::from_millis(500))
        .honor_retry_after()
        .build();
    let pipeline = &valid(pipeline);
    let before = server.stats.requests();
    let start = rt.now();
    let results = join_all((0..calls).map(|i| {
        // Fails twice with `Retry-After: 1`, then answers.
        let path = format!("/flaky/tour-pipeline-{i}/2/1");
        async move {
            let began = rt.now();
            let result = pipeline.call(|| client.get(&path)).await;
            (result.is_ok(), since(rt, began))
        }
    }))
    .await;
    let elapsed = since(rt, start);
    let reached = server.stats.requests() - before;
    let ok = results.iter().filter(|r| r.0).count();
    let slowest = results.iter().map(|r| r.1).max().unwrap_or_default();
    let transitions = transitions.load(SeqCst);
    s.metric("calls (each fails twice, Retry-After: 1)", calls)
        .metric("succeeded", ok)
        .metric("attempts at the server", reached)
        .metric("slowest call", ms(slowest))
        .metric("elapsed", ms(elapsed))
        .metric("breaker transitions", transitions);
    s.check(
        "every call succeeded within its 5 s deadline",
        results.iter().all(|r| r.0 && r.1 <= budget),
    );
    s.check(
        "the server saw exactly 3 attempts per call",
        reached == 3 * calls,
    );
    s.check(
        "each call waited out both Retry-After hints (≥ 2 s)",
        results.iter().all(|r| r.1 >= Duration::from_secs(2)),
    );
    s.check(
        "the breaker stayed closed (transient failures are the retry's job)",
        transitions == 0,
    );
    s
}

/// The tour's configurations are constants: an invalid one is a bug in the tour.
#[track_caller]
pub(super) fn valid<T>(built: Result<T, ConfigError>) -> T {
    built.expect("a valid configuration")
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::at_most_one_hedge_each;

    #[test]
    fn one_call_with_three_hedges_fails_even_when_the_total_fits() {
        // Five calls, three hedges in all (the old total check passed it), all on one call.
        assert!(!at_most_one_hedge_each(&[1, 4, 1, 1, 1]));
        assert!(at_most_one_hedge_each(&[1, 2, 1, 2, 1]));
    }

    #[test]
    fn a_call_without_an_attempt_or_no_calls_fail() {
        assert!(!at_most_one_hedge_each(&[1, 0, 2]));
        assert!(!at_most_one_hedge_each(&[]));
    }
}
