//! Hostile black-box tests of `tidewall::fan_out`, written from its public docs alone.
//!
//! Attacks: the bound on inputs taken and not yet delivered (limit 1, limits above the input
//! size, 10,000 inputs, both orders), the exact sliding schedule implied by "that poll refills
//! its slot before handing it over", completion order under a busy consumer, results held
//! behind an input stream that is pending (with idle gaps of days), the futures-rs #2387
//! deadlock the module docs rule out, fail-fast input taking and aborting under a busy
//! consumer, cancel safety at seeded random drop points (every future, input and queued result
//! dropped, nothing completing afterwards, a clone of the configuration still reaching its
//! limit), nested fan-outs, and fan-outs of `Pipeline` calls behind a bulkhead under a
//! `tidewall::time` timeout (the bulkhead back to zero after the drop).
//!
//! Every scenario runs on every runtime adapter under `Clocked` (virtual time); the ones that
//! could hang run with a real-time hang guard. No assertion is about real time; randomness is
//! the seeded SplitMix64 of `common::rng`.
#![cfg(all(
    feature = "test-util",
    feature = "tokio",
    feature = "smol",
    feature = "async-std"
))]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::too_many_lines,
    clippy::cast_possible_truncation,
    missing_docs
)]

mod common;
#[path = "common/every_adapter.rs"]
mod every_adapter;

use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tidewall::Deadline;
use tidewall::bulkhead::Bulkhead;
use tidewall::fan_out::{FanOut, FanOutError};
use tidewall::pipeline::Pipeline;
use tidewall::rt::Runtime;
use tidewall::time::FutureExt as _;

use common::ms;
use common::rng::{Rng, mix};

// ---------------------------------------------------------------------------------------------
// Helpers

/// Counts the work running at once and remembers the peak.
#[derive(Clone, Default)]
struct Gauge(Arc<(AtomicUsize, AtomicUsize)>);

struct Entered(Gauge);

impl Gauge {
    fn enter(&self) -> Entered {
        let now = self.0.0.fetch_add(1, SeqCst) + 1;
        self.0.1.fetch_max(now, SeqCst);
        Entered(self.clone())
    }

    fn now(&self) -> usize {
        self.0.0.load(SeqCst)
    }

    fn peak(&self) -> usize {
        self.0.1.load(SeqCst)
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        self.0.0.0.fetch_sub(1, SeqCst);
    }
}

/// One live value, counted in a shared counter until dropped.
struct Token(Arc<AtomicUsize>);

impl Token {
    fn new(live: &Arc<AtomicUsize>) -> Self {
        live.fetch_add(1, SeqCst);
        Self(Arc::clone(live))
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

fn count() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

fn fan<R: Runtime>(rt: &R, limit: usize, ordered: bool) -> FanOut<R> {
    let fan = FanOut::new(limit).unwrap().runtime(rt.clone());
    assert_eq!(fan.limit(), limit);
    if ordered { fan.ordered() } else { fan }
}

// ---------------------------------------------------------------------------------------------
// The bound

/// Module docs: "at most `limit` inputs are taken and not yet delivered ... (at that moment
/// `limit` inputs are taken, plus the result in hand)"; "`ordered` delivers in input order".
async fn ten_thousand_inputs<R: Runtime>(rt: R) {
    const N: u64 = 10_000;
    for (limit, ordered) in [
        (1, false),
        (1, true),
        (7, false),
        (7, true),
        (64, true),
        (20_000, false),
        (20_000, true),
    ] {
        let what = format!("limit {limit}, ordered {ordered}");
        let gauge = Gauge::default();
        let pulled = count();
        let p = Arc::clone(&pulled);
        let inputs = futures_util::stream::iter(0..N).inspect(move |_| {
            p.fetch_add(1, SeqCst);
        });
        let (g, r) = (gauge.clone(), rt.clone());
        let start = rt.now();
        let mut results = pin!(fan(&rt, limit, ordered).run(inputs, move |i| {
            let (g, r) = (g.clone(), r.clone());
            async move {
                let _running = g.enter();
                let d = mix(i) % 4;
                if d > 0 {
                    r.sleep(ms(d)).await;
                }
                i
            }
        }));
        let mut out = Vec::with_capacity(N as usize);
        while let Some(result) = results.next().await {
            let delivered = out.len() + 1;
            let taken = pulled.load(SeqCst);
            assert!(
                taken <= delivered + limit,
                "{what}: {taken} taken with {delivered} delivered"
            );
            assert!(results.in_flight() <= limit, "{what}");
            out.push(result.unwrap());
        }
        assert_eq!(out.len(), N as usize, "{what}");
        assert!(gauge.peak() <= limit, "{what}: peak {}", gauge.peak());
        let elapsed = rt.now() - start;
        if limit == 1 {
            assert_eq!(out, (0..N).collect::<Vec<_>>(), "{what}: one at a time");
            let total: u64 = (0..N).map(|i| mix(i) % 4).sum();
            assert_eq!(elapsed, ms(total), "{what}: back to back, no lost time");
        } else if ordered {
            assert_eq!(out, (0..N).collect::<Vec<_>>(), "{what}");
        } else {
            out.sort_unstable();
            assert_eq!(out, (0..N).collect::<Vec<_>>(), "{what}");
        }
        if limit > N as usize {
            assert_eq!(elapsed, ms(3), "{what}: everything ran at once");
        }
    }
}

#[test]
fn ten_thousand_inputs_never_exceed_the_limit_taken_and_keep_their_order_on_every_runtime() {
    on_every_runtime!(ten_thousand_inputs);
}

/// Module docs: "A result counts as delivered once the poll that returns it has taken it: that
/// poll refills its slot before handing it over, so the next input runs while the consumer
/// handles this result". So the input `limit` places after the k-th delivered result starts at
/// the very instant the k-th result is handed over, whatever the consumer then does.
async fn refill_before_handover<R: Runtime>(rt: R) {
    for limit in [1usize, 2, 3] {
        for (ordered, fail_fast) in [(false, false), (true, false), (false, true), (true, true)] {
            let what = format!("limit {limit}, ordered {ordered}, try_run {fail_fast}");
            let origin = rt.now();
            let starts = Arc::new(Mutex::new(Vec::new()));
            let (s, r) = (Arc::clone(&starts), rt.clone());
            let work = move |i: u64| {
                let (s, r) = (Arc::clone(&s), r.clone());
                s.lock().unwrap().push((i, r.now() - origin));
                async move {
                    r.sleep(ms(10 + 7 * (i % 2))).await;
                    Ok::<u64, ()>(i)
                }
            };
            let mut deliveries = Vec::new();
            if fail_fast {
                let mut results = pin!(fan(&rt, limit, ordered).try_run_iter(0..8u64, work));
                while let Some(r) = results.next().await {
                    r.unwrap();
                    deliveries.push(rt.now() - origin);
                    rt.sleep(ms(10)).await; // the consumer is busy
                }
            } else {
                let mut results = pin!(fan(&rt, limit, ordered).run_iter(0..8u64, work));
                while let Some(r) = results.next().await {
                    r.unwrap().unwrap();
                    deliveries.push(rt.now() - origin);
                    // "at that moment `limit` inputs are taken, plus the result in hand"
                    let left = 8 - deliveries.len();
                    assert_eq!(results.in_flight(), left.min(limit), "{what}");
                    rt.sleep(ms(10)).await;
                }
                assert_eq!(results.in_flight(), 0, "{what}");
                assert!(results.next().await.is_none(), "{what}: ended for good");
                assert!(results.next().await.is_none(), "{what}: ended for good");
            }
            let starts = starts.lock().unwrap().clone();
            assert_eq!(
                starts.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
                (0..8).collect::<Vec<_>>(),
                "{what}: inputs are taken in order"
            );
            for (i, (_, at)) in starts.iter().enumerate() {
                let expected = if i < limit {
                    Duration::ZERO
                } else {
                    deliveries[i - limit]
                };
                assert_eq!(
                    *at, expected,
                    "{what}: input {i} started at {at:?}; deliveries {deliveries:?}"
                );
            }
        }
    }
}

#[test]
fn each_delivering_poll_starts_the_next_input_before_handing_its_result_over_on_every_runtime() {
    on_every_runtime!(refill_before_handover);
}

// ---------------------------------------------------------------------------------------------
// Order

/// Module docs: "the default delivers in completion order", and spawned work "keeps running
/// while the consumer of the results is busy". Results that finish while the consumer sleeps
/// come out in the order they finished.
async fn completion_order_under_a_busy_consumer<R: Runtime>(rt: R) {
    let durations = [50u64, 10, 40, 20, 30];
    for (limit, expected) in [(5usize, vec![1u64, 3, 4, 2, 0]), (2, vec![1, 0, 3, 2, 4])] {
        let r = rt.clone();
        let mut results = pin!(fan(&rt, limit, false).run_iter(0..5u64, move |i| {
            let r = r.clone();
            async move {
                r.sleep(ms(durations[i as usize])).await;
                i
            }
        }));
        assert!(futures_util::FutureExt::now_or_never(results.next()).is_none());
        rt.sleep(ms(100)).await;
        let out: Vec<u64> = results.map(Result::unwrap).collect().await;
        assert_eq!(out, expected, "limit {limit}");
    }
}

#[test]
fn unordered_results_come_out_in_completion_order_even_when_they_queued_up_on_every_runtime() {
    on_every_runtime!(completion_order_under_a_busy_consumer);
}

/// Inputs that arrive one day apart: every result must be delivered the moment its work ends,
/// although the input stream is pending (slots are free, so it is being pulled).
async fn results_behind_a_pending_input_stream<R: Runtime>(rt: R) {
    const DAY: Duration = Duration::from_secs(86_400);
    for ordered in [false, true] {
        let origin = rt.now();
        let r = rt.clone();
        let inputs = futures_util::stream::unfold(0u32, move |i| {
            let r = r.clone();
            async move {
                if i == 5 {
                    return None;
                }
                r.sleep(DAY).await;
                Some((i, i + 1))
            }
        });
        let r = rt.clone();
        let mut results = pin!(fan(&rt, 4, ordered).run(inputs, move |i| {
            let r = r.clone();
            async move {
                r.sleep(Duration::from_secs(1)).await;
                i
            }
        }));
        let mut i = 0;
        while let Some(result) = results.next().await {
            assert_eq!(result.unwrap(), i, "ordered {ordered}");
            assert_eq!(
                rt.now() - origin,
                DAY * (i + 1) + Duration::from_secs(1),
                "ordered {ordered}: result {i} was held back"
            );
            i += 1;
        }
        assert_eq!(i, 5);

        // Three inputs, then an input stream that never yields again nor ends.
        let r = rt.clone();
        let inputs = futures_util::stream::iter(0..3u32).chain(futures_util::stream::pending());
        let mut results = pin!(fan(&rt, 8, ordered).run(inputs, move |i| {
            let r = r.clone();
            async move {
                r.sleep(ms(u64::from(3 - i))).await;
                i
            }
        }));
        let mut got = Vec::new();
        for _ in 0..3 {
            let next = results.next().timeout_on(&rt, ms(100)).await;
            got.push(
                next.unwrap_or_else(|_| panic!("ordered {ordered}: a finished result never came"))
                    .unwrap()
                    .unwrap(),
            );
        }
        let expected: &[u32] = if ordered { &[0, 1, 2] } else { &[2, 1, 0] };
        assert_eq!(got, expected);
        assert!(results.next().timeout_on(&rt, DAY).await.is_err());
    }
}

#[test]
fn a_result_is_not_held_behind_an_input_stream_that_is_pending_for_days_on_every_runtime() {
    on_every_runtime!(results_behind_a_pending_input_stream);
}

// ---------------------------------------------------------------------------------------------
// The futures-rs #2387 deadlock

/// Module docs: "in-flight work keeps running while the consumer of the results is busy: the
/// failure mode of futures' `buffer_unordered` (... deadlocks with semaphores held inside the
/// buffered futures) cannot happen here." Every item holds the one permit of a bulkhead across
/// a sleep; the consumer takes the same permit for every result it handles.
async fn semaphore_held_inside_items<R: Runtime>(rt: R) {
    for ordered in [false, true] {
        let bulkhead = Bulkhead::builder(1)
            .max_queue(64)
            .max_wait(None)
            .runtime(rt.clone())
            .build()
            .unwrap();
        let (b, r) = (bulkhead.clone(), rt.clone());
        let mut results = pin!(fan(&rt, 4, ordered).run_iter(0..40u32, move |i| {
            let (b, r) = (b.clone(), r.clone());
            async move {
                let _permit = b.acquire_owned(Deadline::none()).await.unwrap();
                r.sleep(ms(5)).await;
                i
            }
        }));
        let mut got = Vec::new();
        while let Some(result) = results.next().await {
            let _permit = bulkhead.acquire_owned(Deadline::none()).await.unwrap();
            rt.sleep(ms(1)).await;
            got.push(result.unwrap());
        }
        if !ordered {
            got.sort_unstable();
        }
        assert_eq!(got, (0..40).collect::<Vec<_>>(), "ordered {ordered}");
        assert_eq!(bulkhead.in_flight(), 0);
        assert_eq!(bulkhead.queued(), 0);
    }
}

#[test]
fn items_holding_a_semaphore_the_consumer_also_takes_never_deadlock_on_every_adapter() {
    every_adapter::on_each(every_adapter::clocked!(semaphore_held_inside_items));
}

// ---------------------------------------------------------------------------------------------
// Fail-fast

/// `FanOut::try_run` module docs: "It takes no input once an error or panic has been reported
/// by its task (checked before each input it takes)". Input 1 is ready long before the
/// consumer polls again, and a slot is free; but input 0 has failed by then.
async fn no_input_after_a_reported_error<R: Runtime>(rt: R) {
    for ordered in [false, true] {
        for panics in [false, true] {
            let what = format!("ordered {ordered}, panics {panics}");
            let calls = count();
            let r = rt.clone();
            let inputs = futures_util::stream::iter([0u32]).chain(futures_util::stream::unfold(
                1u32,
                move |i| {
                    let r = r.clone();
                    async move {
                        if i == 4 {
                            return None;
                        }
                        r.sleep(ms(10)).await;
                        Some((i, i + 1))
                    }
                },
            ));
            let (c, r) = (Arc::clone(&calls), rt.clone());
            let mut results = pin!(fan(&rt, 4, ordered).try_run(inputs, move |i| {
                c.fetch_add(1, SeqCst);
                let r = r.clone();
                async move {
                    r.sleep(ms(5)).await;
                    if i == 0 {
                        assert!(!panics, "input 0 panics");
                        return Err("input 0 failed");
                    }
                    Ok(i)
                }
            }));
            // One poll takes input 0; then the consumer is busy for 50 ms.
            assert!(futures_util::FutureExt::now_or_never(results.next()).is_none());
            assert_eq!(calls.load(SeqCst), 1, "{what}");
            rt.sleep(ms(50)).await;
            let rest: Vec<_> = results.collect().await;
            assert_eq!(rest.len(), 1, "{what}: {rest:?}");
            if panics {
                assert!(matches!(rest[0], Err(FanOutError::Task(_))), "{what}");
            } else {
                assert!(
                    matches!(rest[0], Err(FanOutError::Inner("input 0 failed"))),
                    "{what}"
                );
            }
            assert_eq!(
                calls.load(SeqCst),
                1,
                "{what}: an input was taken after the error was reported"
            );
        }
    }
}

#[test]
fn fail_fast_takes_no_input_once_an_error_was_reported_even_if_the_consumer_was_away_on_every_runtime()
 {
    on_every_runtime!(no_input_after_a_reported_error);
}

/// `FanOut::try_run`: "the first error or panic aborts the running tasks whose results would
/// come after it (at the first poll that sees it) and ends the stream after it is yielded".
/// Unordered: input 0's result arrived before the error, so it is yielded first; input 2 is
/// aborted at that very poll, before the consumer reaches the error.
async fn unordered_error_behind_an_arrived_result<R: Runtime>(rt: R) {
    let completed = count();
    let calls = count();
    let (c, k, r) = (Arc::clone(&completed), Arc::clone(&calls), rt.clone());
    let mut results = pin!(fan(&rt, 3, false).try_run_iter(0..10u32, move |i| {
        k.fetch_add(1, SeqCst);
        let (c, r) = (Arc::clone(&c), r.clone());
        async move {
            r.sleep(ms([10, 20, 1000].get(i as usize).copied().unwrap_or(1)))
                .await;
            c.fetch_add(1, SeqCst);
            if i == 1 { Err(i) } else { Ok(i) }
        }
    }));
    assert!(futures_util::FutureExt::now_or_never(results.next()).is_none());
    rt.sleep(ms(50)).await;
    assert_eq!(results.next().await.unwrap().unwrap(), 0);
    // The consumer now handles input 0 for 2 s: input 2 must already be aborted.
    rt.sleep(ms(2000)).await;
    assert_eq!(completed.load(SeqCst), 2, "input 2 ran on after the error");
    assert!(matches!(
        results.next().await,
        Some(Err(FanOutError::Inner(1)))
    ));
    assert!(results.next().await.is_none());
    assert_eq!(calls.load(SeqCst), 3, "no input taken after the error");
}

#[test]
fn unordered_fail_fast_yields_what_arrived_first_and_aborts_the_rest_at_that_poll_on_every_runtime()
{
    on_every_runtime!(unordered_error_behind_an_arrived_result);
}

/// `FanOut::try_run`: "ends the stream after it is yielded"; module docs: "aborts ... every
/// task still running, or for an ordered fan-out, the tasks of later inputs (the earlier ones
/// run on, and their results are yielded before the error)". Results that arrived *after* the
/// error while the consumer was away come after it, so they are never yielded.
async fn results_arriving_after_the_error<R: Runtime>(rt: R) {
    // (ordered, durations of inputs 0..3, failing input, expected Ok values before the error)
    let cases: [(bool, [u64; 3], u32, &[u32]); 3] = [
        (false, [10, 20, 1000], 0, &[]),
        (true, [30, 10, 20], 1, &[0]),
        (true, [30, 10, 1000], 1, &[0]),
    ];
    for (ordered, durations, failing, oks) in cases {
        let what = format!("ordered {ordered}, durations {durations:?}");
        let calls = count();
        let (k, r) = (Arc::clone(&calls), rt.clone());
        let mut results = pin!(fan(&rt, 3, ordered).try_run_iter(0..10u32, move |i| {
            k.fetch_add(1, SeqCst);
            let r = r.clone();
            async move {
                r.sleep(ms(durations.get(i as usize).copied().unwrap_or(1)))
                    .await;
                if i == failing { Err(i) } else { Ok(i) }
            }
        }));
        assert!(futures_util::FutureExt::now_or_never(results.next()).is_none());
        rt.sleep(ms(50)).await;
        let mut got = Vec::new();
        let error = loop {
            match results.next().await {
                Some(Ok(v)) => got.push(v),
                Some(Err(FanOutError::Inner(e))) => break e,
                other => panic!("{what}: {other:?} after {got:?}"),
            }
        };
        assert_eq!(got, oks, "{what}");
        assert_eq!(error, failing, "{what}");
        assert!(results.next().await.is_none(), "{what}");
        assert_eq!(calls.load(SeqCst), 3, "{what}");
    }
}

#[test]
fn fail_fast_never_yields_a_later_result_that_arrived_after_the_error_on_every_runtime() {
    on_every_runtime!(results_arriving_after_the_error);
}

/// `FanOutStream::abort`: "Aborts every running task and takes no more input; the stream then
/// ends once the results that already arrived are delivered." An input stream that never ends
/// must not keep an aborted fan-out open; nor a fail-fast one that has yielded its error.
async fn ends_despite_an_endless_input_stream<R: Runtime>(rt: R) {
    for ordered in [false, true] {
        let r = rt.clone();
        let inputs = futures_util::stream::iter(0..3u32).chain(futures_util::stream::pending());
        let mut results = pin!(fan(&rt, 4, ordered).run(inputs, move |i| {
            let r = r.clone();
            async move {
                r.sleep(ms([5, 3, 500][i as usize])).await;
                i
            }
        }));
        assert!(futures_util::FutureExt::now_or_never(results.next()).is_none());
        rt.sleep(ms(10)).await;
        results.as_mut().abort();
        let rest = results
            .map(Result::unwrap)
            .collect::<Vec<u32>>()
            .timeout_on(&rt, ms(1000))
            .await
            .unwrap_or_else(|_| panic!("ordered {ordered}: the aborted fan-out never ended"));
        let expected: &[u32] = if ordered { &[0, 1] } else { &[1, 0] };
        assert_eq!(rest, expected, "ordered {ordered}");

        let mut results = pin!(fan(&rt, 4, ordered).try_run(
            futures_util::stream::iter(0..2u32).chain(futures_util::stream::pending()),
            |i| async move { if i == 1 { Err(i) } else { Ok(i) } },
        ));
        let all = results
            .as_mut()
            .collect::<Vec<_>>()
            .timeout_on(&rt, ms(1000))
            .await
            .unwrap_or_else(|_| panic!("ordered {ordered}: the failed fan-out never ended"));
        assert!(
            matches!(all.last(), Some(Err(FanOutError::Inner(1)))),
            "ordered {ordered}: {all:?}"
        );
    }
}

#[test]
fn an_aborted_or_failed_fan_out_ends_although_its_input_stream_never_does_on_every_runtime() {
    on_every_runtime!(ends_despite_an_endless_input_stream);
}

/// Instant work on the raw adapters (real threads, no virtual time): tasks finish while the
/// consumer is inside its poll, the pattern that loses a wake-up. A lost one hangs, which the
/// real-time guard turns into a failure.
async fn instant_work_loses_no_wakeup<R: Runtime>(rt: R) {
    for limit in [1usize, 2, 3, 16] {
        for ordered in [false, true] {
            let n = 5_000u32;
            let sum: u64 = fan(&rt, limit, ordered)
                .run_iter(0..n, |i| async move { u64::from(i) })
                .map(Result::unwrap)
                .fold(0, |a, b| async move { a + b })
                .await;
            assert_eq!(sum, u64::from(n) * u64::from(n - 1) / 2);
            let oks = fan(&rt, limit, ordered)
                .try_run_iter(0..n, |i| async move { Ok::<_, ()>(i) })
                .filter(|r| std::future::ready(r.is_ok()))
                .count()
                .await;
            assert_eq!(oks, n as usize);
        }
    }
}

#[test]
fn instant_work_on_real_threads_never_loses_a_wakeup_on_every_adapter() {
    every_adapter::on_each(every_adapter::raw!(instant_work_loses_no_wakeup));
}

// ---------------------------------------------------------------------------------------------
// Cancel safety

/// Plays `actions` on `results` (0: a poll that does not wait, 1: the next result, else a
/// sleep of `arg` ms) until it ends or they run out, then drops it a quarter millisecond
/// later: the work completed when it was dropped.
async fn drive_then_drop<R: Runtime, S: futures_util::Stream>(
    rt: &R,
    results: S,
    actions: &[(u64, u64)],
    completed: &AtomicUsize,
) -> usize {
    let mut results = Box::pin(results);
    for &(action, arg) in actions {
        let ended = match action {
            0 => futures_util::FutureExt::now_or_never(results.next()).is_some_and(|r| r.is_none()),
            1 => results.next().await.is_none(),
            _ => {
                rt.sleep(ms(arg)).await;
                false
            }
        };
        if ended {
            break;
        }
    }
    rt.sleep(Duration::from_micros(250)).await;
    let before = completed.load(SeqCst);
    drop(results);
    before
}

/// Module docs: "Cancel safety: dropping the stream aborts every task still running (no
/// orphaned work) and drops the inputs not yet taken." Seeded random drop points over `run`
/// and `try_run`, both orders; every event happens on whole milliseconds and the drop a
/// quarter millisecond later, so no item is mid-poll when the stream is dropped.
async fn drop_at_seeded_points<R: Runtime>(rt: R) {
    let mut rng = Rng::new(0xFA_0F_0D_0F);
    for case in 0..40 {
        let limit = 1 + rng.below(6) as usize;
        let ordered = rng.one_in(2);
        let fail_fast = rng.one_in(2);
        let n = rng.below(30);
        let steps = rng.below(12);
        let what = format!(
            "case {case}: limit {limit}, ordered {ordered}, try_run {fail_fast}, {n} inputs, \
             drop after {steps} steps"
        );
        let (inputs_live, futures_live, outputs_live, completed) =
            (count(), count(), count(), count());
        let inputs: Vec<(u64, Token, u64)> = (0..n)
            .map(|i| (i, Token::new(&inputs_live), 1 + rng.below(20)))
            .collect();
        let config = fan(&rt, limit, ordered);
        let (f, o, c, r) = (
            Arc::clone(&futures_live),
            Arc::clone(&outputs_live),
            Arc::clone(&completed),
            rt.clone(),
        );
        let work = move |(i, input, d): (u64, Token, u64)| {
            let (held, o, c, r) = (Token::new(&f), Arc::clone(&o), Arc::clone(&c), r.clone());
            async move {
                let _held = (held, input);
                r.sleep(ms(d)).await;
                c.fetch_add(1, SeqCst);
                let out = Token::new(&o);
                if i % 7 == 3 { Err(out) } else { Ok(out) }
            }
        };
        let mut actions = Vec::new();
        for _ in 0..steps {
            actions.push((rng.below(3), rng.below(4)));
        }
        let ended = if fail_fast {
            let results = config.clone().try_run_iter(inputs, work);
            drive_then_drop(&rt, results, &actions, &completed).await
        } else {
            let results = config.clone().run_iter(inputs, work);
            drive_then_drop(&rt, results, &actions, &completed).await
        };
        rt.sleep(ms(100)).await;
        assert_eq!(
            completed.load(SeqCst),
            ended,
            "{what}: work completed after the stream was dropped"
        );
        assert_eq!(
            futures_live.load(SeqCst),
            0,
            "{what}: a started future was never dropped"
        );
        assert_eq!(
            inputs_live.load(SeqCst),
            0,
            "{what}: an input was never dropped"
        );
        assert_eq!(
            outputs_live.load(SeqCst),
            0,
            "{what}: a queued result was never dropped"
        );

        // The configuration, cloned before the run, still reaches its full limit.
        let gauge = Gauge::default();
        let (g, r) = (gauge.clone(), rt.clone());
        let out: Vec<_> = config
            .run_iter(0..3 * limit, move |i| {
                let (g, r) = (g.clone(), r.clone());
                async move {
                    let _running = g.enter();
                    r.sleep(ms(5)).await;
                    i
                }
            })
            .collect()
            .await;
        assert_eq!(out.len(), 3 * limit, "{what}");
        assert_eq!(gauge.peak(), limit, "{what}: slots lost");
    }
}

#[test]
fn dropping_a_fan_out_at_seeded_points_drops_every_future_input_and_result_on_every_runtime() {
    on_every_runtime!(drop_at_seeded_points);
}

// ---------------------------------------------------------------------------------------------
// Composition

/// Nested fan-outs: the bounds multiply and never more; dropping the outer stream aborts the
/// outer tasks, which drop their inner streams, which abort the inner tasks.
async fn nested_fan_outs<R: Runtime>(rt: R) {
    let leaves = Gauge::default();
    let live = count();
    let outer_run = |take: Option<usize>| {
        let (g, l, r) = (leaves.clone(), Arc::clone(&live), rt.clone());
        fan(&rt, 3, false)
            .run_iter(0..12u64, move |i| {
                let (g, l, r) = (g.clone(), Arc::clone(&l), r.clone());
                async move {
                    let r2 = r.clone();
                    let inner = fan(&r, 2, true).run_iter(0..6u64, move |j| {
                        let (g, l, r) = (g.clone(), Arc::clone(&l), r2.clone());
                        async move {
                            let _running = (g.enter(), Token::new(&l));
                            r.sleep(ms(1 + (i * j) % 5)).await;
                            i * 10 + j
                        }
                    });
                    let got: Vec<u64> = inner.map(Result::unwrap).collect().await;
                    assert_eq!(got, (0..6).map(|j| i * 10 + j).collect::<Vec<_>>());
                    i
                }
            })
            .take(take.unwrap_or(usize::MAX))
    };
    let mut all: Vec<u64> = outer_run(None).map(Result::unwrap).collect().await;
    all.sort_unstable();
    assert_eq!(all, (0..12).collect::<Vec<_>>());
    assert_eq!(leaves.peak(), 6, "3 outer slots of 2 inner slots each");
    assert_eq!(live.load(SeqCst), 0);

    for take in [0, 1, 4] {
        let mut outer = Box::pin(outer_run(Some(take + 1)));
        for _ in 0..take {
            outer.next().await.unwrap().unwrap();
        }
        // One more poll keeps every slot busy; a result it may return is dropped with it.
        let _ = futures_util::FutureExt::now_or_never(outer.next());
        rt.sleep(Duration::from_micros(250)).await;
        assert!(
            leaves.now() > 0,
            "after {take}: inner work is running at the drop"
        );
        drop(outer);
        rt.sleep(ms(50)).await;
        assert_eq!(
            leaves.now(),
            0,
            "after {take}: inner work outlived the outer drop"
        );
        assert_eq!(live.load(SeqCst), 0, "after {take}");
    }
}

#[test]
fn nested_fan_outs_multiply_their_bounds_and_a_dropped_outer_stream_reaches_the_inner_tasks_on_every_runtime()
 {
    on_every_runtime!(nested_fan_outs);
}

/// Items that are `Pipeline` calls behind a bulkhead of 2 under a fan-out of 5, the whole
/// collection under a `tidewall::time` timeout that cuts it short: the bulkhead never runs
/// more than 2, and once the stream is dropped nothing holds or waits for a permit.
async fn pipeline_items_under_a_timeout<R: Runtime>(rt: R) {
    for ordered in [false, true] {
        let bulkhead = Bulkhead::builder(2)
            .max_queue(100)
            .max_wait(None)
            .runtime(rt.clone())
            .build()
            .unwrap();
        let pipeline = Arc::new(
            Pipeline::builder()
                .runtime(rt.clone())
                .deadline(ms(45))
                .bulkhead(bulkhead.clone())
                .build()
                .unwrap(),
        );
        let gauge = Gauge::default();
        let delivered = count();
        let (g, r) = (gauge.clone(), rt.clone());
        let results = fan(&rt, 5, ordered).run_iter(0..40u64, move |i| {
            let (p, g, r) = (Arc::clone(&pipeline), g.clone(), r.clone());
            async move {
                p.call(|| {
                    let (g, r) = (g.clone(), r.clone());
                    async move {
                        let _running = g.enter();
                        r.sleep(ms(10 + 10 * (i % 3))).await;
                        Ok::<_, ()>(i)
                    }
                })
                .await
            }
        });
        let (d, b) = (Arc::clone(&delivered), bulkhead.clone());
        let consume = async move {
            let mut results = pin!(results);
            while let Some(result) = results.next().await {
                assert!(results.in_flight() <= 5);
                assert!(b.in_flight() <= 2);
                let _ = result.unwrap();
                d.fetch_add(1, SeqCst);
            }
        };
        assert!(
            consume.timeout_on(&rt, ms(95)).await.is_err(),
            "ordered {ordered}: the timeout cut the fan-out short"
        );
        let at_cut = delivered.load(SeqCst);
        assert!(at_cut > 0 && at_cut < 40, "ordered {ordered}: {at_cut}");
        rt.sleep(ms(200)).await;
        assert_eq!(gauge.peak(), 2, "ordered {ordered}");
        assert_eq!(gauge.now(), 0, "ordered {ordered}: an op outlived the drop");
        assert_eq!(
            bulkhead.in_flight(),
            0,
            "ordered {ordered}: a permit leaked"
        );
        assert_eq!(bulkhead.queued(), 0, "ordered {ordered}: a waiter leaked");
    }
}

#[test]
fn a_fan_out_of_bulkheaded_pipeline_calls_cut_by_a_timeout_returns_every_permit_on_every_runtime() {
    on_every_runtime!(pipeline_items_under_a_timeout);
}
