//! The tour's scenarios. Each runs its client side on runtime `R` against the shared service
//! and reports what it measured, plus invariants it checked.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use tidewall::fallback::{self, Fallback};
use tidewall::race::race_ok;
use tidewall::retry::{RetryError, RetryEvent};
use tidewall::{Backoff, Deadline, FutureExt, Jitter, RetryExt};

use super::bounded::{missed, within};
use super::client::{Client, HttpError, Net};
use super::report::{Section, ms};
use super::server::Server;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Size {
    Quick,
    Full,
}

pub(crate) async fn all<R: Net>(rt: R, server: &Server, size: Size) -> Vec<Section> {
    let client = Client::new(rt.clone(), server.addr);
    // Warm one connection so the first scenario does not pay the TCP handshake alone.
    let _ = client.get("/delay/0").await;
    vec![
        sequential_vs_concurrent(&client).await,
        retry_with_backoff(&client, &rt).await,
        retry_after_hint(&client, &rt).await,
        timeout_with_fallback(&client, &rt).await,
        race_two_endpoints(&client).await,
        deadline_across_retries(&client, &rt).await,
        bounded_fan_out(&client, &rt, server, size).await,
    ]
}

async fn sequential_vs_concurrent<R: Net>(client: &Client<R>) -> Section {
    let mut s = Section::new(
        "three independent 100 ms calls",
        "futures::join vs .await in sequence",
    );
    let start = Instant::now();
    let mut in_sequence = 0;
    for _ in 0..3 {
        in_sequence += usize::from(client.get("/delay/100").await.is_ok());
    }
    let sequential = start.elapsed();
    let start = Instant::now();
    let (a, b, c) = futures_util::join!(
        client.get("/delay/100"),
        client.get("/delay/100"),
        client.get("/delay/100")
    );
    let concurrent = start.elapsed();
    let speedup = sequential.as_secs_f64() / concurrent.as_secs_f64();
    s.metric("sequential", ms(sequential))
        .metric("concurrent", ms(concurrent))
        .metric("speedup", format!("{speedup:.2}x"));
    s.check(
        "all six calls succeeded (three in sequence, three at once)",
        in_sequence == 3 && a.is_ok() && b.is_ok() && c.is_ok(),
    );
    s.check(
        "concurrent is faster than sequential",
        concurrent < sequential,
    );
    s
}

type DelayLog = Arc<Mutex<Vec<Duration>>>;

/// Records each retry's delay as the notify hook reports it.
fn delay_log() -> (
    DelayLog,
    impl FnMut(&RetryEvent<'_, bytes::Bytes, HttpError>),
) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&log);
    (
        log,
        move |event: &RetryEvent<'_, bytes::Bytes, HttpError>| {
            sink.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(event.delay);
        },
    )
}

/// A fresh key for the service's per-key failure counters (one server per tour run).
pub(crate) fn unique(name: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "{name}-{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

async fn retry_with_backoff<R: Net>(client: &Client<R>, rt: &R) -> Section {
    let mut s = Section::new(
        "retry with backoff (endpoint fails twice)",
        "op.retry(Backoff::exponential(..))",
    );
    let backoff = Backoff::exponential(Duration::from_millis(100))
        .max_attempts(5)
        .build()
        .expect("valid backoff");
    let path = format!("/flaky/{}/2/-", unique("retry"));
    let (delays, hook) = delay_log();
    let mut attempts = 0u32;
    let start = Instant::now();
    let result = (|| {
        attempts += 1;
        client.get(&path)
    })
    .retry_on(rt, backoff)
    .notify(hook)
    .await;
    let elapsed = start.elapsed();
    let delays = delays
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let slept: Duration = delays.iter().sum();
    s.metric("attempts", attempts)
        .metric(
            "delays (full jitter)",
            delays.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", "),
        )
        .metric("slept in total", ms(slept))
        .metric("elapsed", ms(elapsed))
        .metric(
            "result",
            if result.is_ok() {
                "ok".into()
            } else {
                format!("{:?}", result.as_ref().err())
            },
        );
    s.check(
        "succeeded on the third attempt",
        result.is_ok() && attempts == 3,
    );
    s.check(
        "delays within the exponential bounds (≤ 100 ms, ≤ 200 ms)",
        delays.len() == 2
            && delays[0] <= Duration::from_millis(100)
            && delays[1] <= Duration::from_millis(200),
    );
    s
}

async fn retry_after_hint<R: Net>(client: &Client<R>, rt: &R) -> Section {
    let mut s = Section::new(
        "retry honouring Retry-After: 1 (503 once)",
        ".honor_retry_after()",
    );
    let backoff = Backoff::constant(Duration::from_millis(10))
        .max_attempts(3)
        .build()
        .expect("valid backoff");
    let path = format!("/flaky/{}/1/1", unique("hint"));
    let (delays, hook) = delay_log();
    let start = Instant::now();
    let result = (|| client.get(&path))
        .retry_on(rt, backoff)
        .honor_retry_after()
        .notify(hook)
        .await;
    let elapsed = start.elapsed();
    let delays = delays
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    s.metric(
        "delay before retry",
        delays.first().map_or_else(|| "none".into(), |d| ms(*d)),
    )
    .metric("elapsed", ms(elapsed));
    s.check(
        "succeeded after one retry",
        result.is_ok() && delays.len() == 1,
    );
    s.check(
        "waited the hinted 1 s, not the 10 ms backoff",
        delays.first() == Some(&Duration::from_secs(1)),
    );
    s
}

async fn timeout_with_fallback<R: Net>(client: &Client<R>, rt: &R) -> Section {
    let mut s = Section::new(
        "timeout with fallback (500 ms endpoint, 100 ms budget)",
        "fut.timeout_on(..).or_fallback(..)",
    );
    let start = Instant::now();
    let result = client
        .get("/delay/500")
        .timeout_on(rt, Duration::from_millis(100))
        .or_fallback(fallback::value(Ok(bytes::Bytes::from_static(b"cached"))).when(|_| true))
        .await;
    let elapsed = start.elapsed();
    let served = match &result {
        Ok(Ok(body)) => String::from_utf8_lossy(body).into_owned(),
        other => format!("{other:?}"),
    };
    s.metric("served", &served).metric("elapsed", ms(elapsed));
    s.check("the cached value was served", served == "cached");
    s.check(
        "it did not wait for the slow endpoint",
        elapsed < Duration::from_millis(500),
    );
    s
}

async fn race_two_endpoints<R: Net>(client: &Client<R>) -> Section {
    let mut s = Section::new(
        "race of two endpoints (300 ms vs 50 ms)",
        "race::race_ok([..])",
    );
    let start = Instant::now();
    let slow = async { client.get("/delay/300").await.map(|_| "slow (300 ms)") };
    let fast = async { client.get("/delay/50").await.map(|_| "fast (50 ms)") };
    let winner = race_ok([
        futures_util::future::Either::Left(slow),
        futures_util::future::Either::Right(fast),
    ])
    .await;
    let elapsed = start.elapsed();
    s.metric("winner", winner.as_ref().map_or("none", |w| *w))
        .metric("elapsed", ms(elapsed));
    s.check(
        "the fast endpoint won",
        winner.as_ref().is_ok_and(|w| w.starts_with("fast")),
    );
    s.check(
        "the loser was not awaited",
        elapsed < Duration::from_millis(300),
    );
    s
}

async fn deadline_across_retries<R: Net>(client: &Client<R>, rt: &R) -> Section {
    let mut s = Section::new(
        "one deadline across retries (always failing, 1 s budget)",
        ".retry(..).deadline(Deadline)",
    );
    let backoff = Backoff::constant(Duration::from_millis(300))
        .jitter(Jitter::None)
        .max_attempts(100)
        .build()
        .expect("valid");
    let path = format!("/flaky/{}/1000000/-", unique("deadline"));
    let mut attempts = 0u32;
    let start = Instant::now();
    let result = (|| {
        attempts += 1;
        client.get(&path)
    })
    .retry_on(rt, backoff)
    .deadline(Deadline::after(rt, Duration::from_secs(1)))
    .await;
    let elapsed = start.elapsed();
    let outcome = match &result {
        Err(RetryError::DeadlineExceeded {
            last_error: Some(e),
            attempts,
        }) => {
            format!("deadline exceeded after {attempts} attempts, last error: {e}")
        }
        other => format!("{other:?}"),
    };
    s.metric("attempts", attempts)
        .metric("elapsed", ms(elapsed))
        .metric("outcome", &outcome);
    s.check(
        "ended with DeadlineExceeded and the last error",
        outcome.starts_with("deadline exceeded"),
    );
    // The engine returns early when the next 300 ms backoff cannot fit; when a late wake-up
    // lets the 4th attempt start instead, the deadline cuts it at 1 s plus the timer's
    // lateness. The slack covers that on a loaded machine and stays under one more backoff,
    // which an engine that overran the deadline would add.
    s.check(
        &format!(
            "returned by the 1 s deadline (+ {} for timer lateness; one more backoff is 300 ms)",
            ms(DEADLINE_SLACK)
        ),
        elapsed <= Duration::from_secs(1) + DEADLINE_SLACK,
    );
    s
}

/// How long the fan-out may take to deliver every result: at most 1000 requests of 10 ms,
/// 50 at a time, need about 200 ms.
const FAN_OUT_LIMIT: Duration = Duration::from_secs(60);

/// How late past the 1 s deadline the retries may return: see `deadline_across_retries`.
const DEADLINE_SLACK: Duration = Duration::from_millis(150);

async fn bounded_fan_out<R: Net>(
    client: &Client<R>,
    rt: &R,
    server: &Server,
    size: Size,
) -> Section {
    let requests = if size == Size::Quick { 200 } else { 1000 };
    let limit = 50;
    let mut s = Section::new(
        "bounded fan-out (10 ms endpoint)",
        "FanOut::new(50)?.runtime(rt).run_iter(..)",
    );
    // Requests abandoned by earlier scenarios (the race's loser, the timed-out call) may still
    // be sleeping on the server; let them finish so the peak below is this scenario's alone.
    settle(rt, server).await;
    server.stats.reset_peak();
    let before = server.stats.requests();
    let start = Instant::now();
    let fan_out = tidewall::fan_out::FanOut::new(limit)
        .expect("a non-zero limit")
        .runtime(rt.clone());
    let client = client.clone();
    let taken = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&taken);
    let stream = fan_out.run_iter(0..requests, move |_| {
        // Called as the fan-out takes an input, just before it spawns the request.
        counter.fetch_add(1, Ordering::SeqCst);
        let client = client.clone();
        async move { client.get("/delay/10").await.is_ok() }
    });
    let drained = within(
        rt,
        FAN_OUT_LIMIT,
        drain_watching_window(stream, &taken, requests),
    );
    let Some((results, window)) = drained.await else {
        let what = format!("the fan-out delivered all {requests} results");
        return missed(s, &what, FAN_OUT_LIMIT);
    };
    let elapsed = start.elapsed();
    let ok = results.iter().filter(|r| matches!(r, Ok(true))).count();
    let peak = server.stats.peak_in_flight();
    #[allow(clippy::cast_precision_loss, reason = "a request count")]
    let throughput = requests as f64 / elapsed.as_secs_f64();
    s.metric("requests", requests)
        .metric("limit", limit)
        .metric("succeeded", ok)
        .metric("max in flight (server-observed)", peak)
        .metric(
            "in flight after each result while inputs remained (min–max)",
            format!(
                "{}–{} over {} results",
                window.iter().min().copied().unwrap_or(0),
                window.iter().max().copied().unwrap_or(0),
                window.len()
            ),
        )
        .metric("elapsed", ms(elapsed))
        .metric("throughput", format!("{throughput:.0} req/s"))
        .metric(
            "ideal at this limit",
            format!(
                "{:.0} req/s",
                1000.0 / 10.0 * f64::from(u32::try_from(limit).unwrap_or(0))
            ),
        );
    s.check("every request succeeded", ok == requests);
    s.check("never more than 50 in flight", peak <= limit);
    s.check(
        "a sliding window, not chunks: 50 in flight after every result while inputs remained",
        window_stayed_full(&window, limit, requests),
    );
    s.check(
        "the server saw exactly one request per input",
        server.stats.requests() - before == requests,
    );
    s
}

/// Drains a fan-out's results. After each result delivered while inputs remained, records how
/// many inputs were in flight: taken (`taken` counts them, bumped by the fan-out's function as
/// it takes each one) and not yet delivered.
async fn drain_watching_window<S: Stream + Unpin>(
    mut results: S,
    taken: &AtomicUsize,
    inputs: usize,
) -> (Vec<S::Item>, Vec<usize>) {
    let mut delivered = Vec::with_capacity(inputs);
    let mut window = Vec::new();
    while let Some(result) = results.next().await {
        delivered.push(result);
        let taken = taken.load(Ordering::SeqCst);
        if taken < inputs {
            window.push(taken.saturating_sub(delivered.len()));
        }
    }
    (delivered, window)
}

/// Whether the window stayed full: a sliding window takes the next input the moment a result
/// frees a slot, so `limit` are in flight after every result while inputs remain; chunks
/// drain to zero before the next chunk starts. There must be such results (at least `limit + 2`
/// inputs), or nothing was shown.
fn window_stayed_full(window: &[usize], limit: usize, inputs: usize) -> bool {
    !window.is_empty()
        && inputs.checked_sub(limit + 1) == Some(window.len())
        && window.iter().all(|n| *n == limit)
}

/// Waits (up to 2 s) for requests abandoned earlier — cancelled hedges, timed-out calls, a
/// race's loser — to finish on the server, so a scenario's request counts and peaks are its own.
pub(super) async fn settle<R: Net>(rt: &R, server: &Server) {
    for _ in 0..200 {
        if server.stats.in_flight() == 0 {
            break;
        }
        rt.sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures_util::{Stream, StreamExt};
    use tidewall::fan_out::FanOut;
    use tidewall::rt::{AsyncStd, Runtime, SmolRuntime, Tokio};

    use super::{drain_watching_window, window_stayed_full};

    const INPUTS: usize = 40;
    const LIMIT: usize = 8;

    /// Counts each input as it is taken; the work itself is ready at once, so no clock is
    /// involved and the window depends only on when inputs are taken.
    fn counted(taken: &Arc<AtomicUsize>) -> impl FnMut(usize) -> std::future::Ready<usize> {
        let taken = Arc::clone(taken);
        move |i| {
            taken.fetch_add(1, Ordering::SeqCst);
            std::future::ready(i)
        }
    }

    /// A chunked fan-out, the broken variant: takes `LIMIT` inputs, runs them all, delivers
    /// them, and only then takes the next `LIMIT`.
    fn chunked<R: Runtime>(rt: R, taken: &Arc<AtomicUsize>) -> impl Stream<Item = usize> + Unpin {
        let mut work = counted(taken);
        let chunks: Vec<Vec<usize>> = (0..INPUTS)
            .collect::<Vec<_>>()
            .chunks(LIMIT)
            .map(<[usize]>::to_vec)
            .collect();
        Box::pin(
            futures_util::stream::iter(chunks)
                .then(move |chunk| {
                    let tasks: Vec<_> = chunk.into_iter().map(|i| rt.spawn(work(i))).collect();
                    futures_util::future::join_all(tasks)
                })
                .flat_map(|outcomes| {
                    futures_util::stream::iter(outcomes.into_iter().map(Result::unwrap))
                }),
        )
    }

    async fn windows<R: Runtime>(rt: R) -> (Vec<usize>, Vec<usize>) {
        let taken = Arc::new(AtomicUsize::new(0));
        let sliding = FanOut::new(LIMIT)
            .unwrap()
            .runtime(rt.clone())
            .run_iter(0..INPUTS, counted(&taken));
        let (results, sliding) = drain_watching_window(sliding, &taken, INPUTS).await;
        assert_eq!(results.len(), INPUTS);
        let taken = Arc::new(AtomicUsize::new(0));
        let (results, chunks) = drain_watching_window(chunked(rt, &taken), &taken, INPUTS).await;
        assert_eq!(results.len(), INPUTS);
        (sliding, chunks)
    }

    fn assert_only_the_sliding_window_passes((sliding, chunks): (Vec<usize>, Vec<usize>)) {
        assert_eq!(sliding, [LIMIT; INPUTS - LIMIT - 1]);
        assert!(window_stayed_full(&sliding, LIMIT, INPUTS));
        // Each chunk drains: 7, 6, …, 0 in flight before the next one is taken.
        assert_eq!(chunks[..LIMIT], [7, 6, 5, 4, 3, 2, 1, 0]);
        assert!(!window_stayed_full(&chunks, LIMIT, INPUTS));
    }

    #[test]
    fn the_window_check_passes_the_fan_out_and_fails_chunks_on_every_runtime() {
        let tokio = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_only_the_sliding_window_passes(tokio.block_on(windows(Tokio)));
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        assert_only_the_sliding_window_passes(tokio.block_on(windows(Tokio)));
        let smol = SmolRuntime::single_threaded();
        assert_only_the_sliding_window_passes(smol.block_on(windows(smol.handle())));
        let smol = SmolRuntime::multi_threaded(2).unwrap();
        assert_only_the_sliding_window_passes(smol.block_on(windows(smol.handle())));
        assert_only_the_sliding_window_passes(async_std::task::block_on(windows(AsyncStd)));
    }

    #[test]
    fn an_empty_or_short_window_shows_nothing() {
        assert!(!window_stayed_full(&[], LIMIT, INPUTS));
        assert!(!window_stayed_full(&[], LIMIT, LIMIT + 1));
        assert!(!window_stayed_full(&[LIMIT; 3], LIMIT, INPUTS));
        assert!(window_stayed_full(&[LIMIT], LIMIT, LIMIT + 2));
    }
}
