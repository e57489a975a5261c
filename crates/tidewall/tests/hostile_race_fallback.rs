//! Hostile black-box tests of `tidewall::race` (`race_ok`, `RaceError`) and
//! `tidewall::fallback` (`value`, `with`, `with_async`, `Fallback::when`, custom `Fallback`s,
//! `FutureExt::or_fallback`), written from their public doc comments only.
//!
//! Attacked claims (quoted from the docs):
//!
//! * race: "The first `Ok` is returned and every other future is dropped at once (cancelled at
//!   its current await point)"; "If all fail, every error comes back, in input order";
//!   "dropping the race drops every contestant; nothing else is held"; "a contestant that
//!   panics in `poll` panics the race (then dropped by the caller, with every other
//!   contestant)"; "One that panics when dropped does not stop the others from being dropped:
//!   the first such panic comes out of the race's poll, or its drop"; "contestants are polled
//!   when woken, not in a fixed order; when several are ready in the same poll, the first one
//!   polled wins"; "polls every future in the calling task"; the hedging recipe ("start the
//!   second future after a sleep inside it").
//! * fallback: "An error the fallback does not handle passes through unchanged"; "Runs the
//!   primary future, then the fallback if the primary failed with an error the fallback
//!   handles"; "Handles only the errors for which `predicate` returns `true`"; "Handles `error`
//!   (`Ok(future)`) or declines it (`Err(error)`, returned to the caller)"; "dropping the future
//!   drops whichever of the primary or fallback future is running; no other state".
//!
//! Scenarios: seeded random drop points, ties on one poll, 10,000 contestants, panics in poll
//! and in drop, nested races of fallbacks of races, chains of failing fallbacks, custom
//! strategies, inside a `Pipeline` call (attempt timeouts, the shared deadline), under
//! `deadline`/`timeout` at `Duration` extremes and long idle gaps, and on every runtime adapter
//! under `testing::Clocked`. There is no tower front and no builder for either module.
//!
//! Time is virtual (tokio's paused clock, `FakeClock` driven by hand, or `Clocked`) and
//! randomness is the seeded SplitMix64 of `common::rng`: every run is the same.
#![cfg(all(
    feature = "tokio",
    feature = "test-util",
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

use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use common::ms;
use common::rng::Rng;
use every_adapter::{clocked, describe, on_each, raw};
use tidewall::breaker::{CircuitBreaker, State};
use tidewall::bulkhead::Bulkhead;
use tidewall::fallback::{self, Fallback};
use tidewall::pipeline::Pipeline;
use tidewall::prelude::*;
use tidewall::race::{RaceError, race_ok};
use tidewall::testing::FakeClock;
use tidewall::time::{DeadlineExceeded, Elapsed};

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

fn tnow() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

/// Counts live instances in a shared counter.
struct Live(Arc<AtomicUsize>);

impl Live {
    fn enter(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, SeqCst);
        Self(counter.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

impl fmt::Debug for Live {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Live")
    }
}

fn counter() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

/// An error that is alive until dropped (to see whether the race or the fallback holds it).
#[derive(Debug)]
struct Tok {
    id: usize,
    _live: Live,
}

/// A waker that counts its wakes.
#[derive(Default)]
struct CountWake(AtomicUsize);

impl Wake for CountWake {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, SeqCst);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, SeqCst);
    }
}

fn counting_waker() -> (Waker, Arc<CountWake>) {
    let count = Arc::new(CountWake::default());
    (Waker::from(count.clone()), count)
}

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Pending,
    Ok,
    Err,
}

type Log = Arc<Mutex<Vec<(usize, Step)>>>;

/// A contestant that records every poll it gets and what that poll returned.
struct Logged<'a, T, E> {
    id: usize,
    log: Log,
    inner: BoxFut<'a, Result<T, E>>,
}

impl<T, E> Future for Logged<'_, T, E> {
    type Output = Result<T, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let out = this.inner.as_mut().poll(cx);
        let step = match &out {
            Poll::Pending => Step::Pending,
            Poll::Ready(Ok(_)) => Step::Ok,
            Poll::Ready(Err(_)) => Step::Err,
        };
        this.log.lock().unwrap().push((this.id, step));
        out
    }
}

/// A future that panics with `message` when dropped (after completing or not).
struct PanicOnDrop<'a, T> {
    message: &'static str,
    inner: BoxFut<'a, T>,
}

impl<T> Future for PanicOnDrop<'_, T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        self.inner.as_mut().poll(cx)
    }
}

impl<T> Drop for PanicOnDrop<'_, T> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("{}", self.message);
        }
    }
}

/// Runs `future` to completion on `clock` by hand: polls it, and whenever a poll neither
/// finished nor woke the caller, jumps the clock to its next timer. Fails on a deadlock.
fn drive_on_fake<F: Future>(clock: &FakeClock, future: F) -> F::Output {
    let (waker, wakes) = counting_waker();
    let mut cx = Context::from_waker(&waker);
    let mut future = Box::pin(future);
    for _ in 0..10_000_000u32 {
        let before = wakes.0.load(SeqCst);
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        if wakes.0.load(SeqCst) == before {
            assert!(
                clock.advance_to_next_timer(),
                "pending with no timer and no wake: deadlock"
            );
        }
    }
    panic!("the future never finished")
}

// ---------------------------------------------------------------------------------------------
// race: who wins, what is polled, what is dropped
// ---------------------------------------------------------------------------------------------

/// One seeded race on `rt`: up to 8 contestants, each ready at once or after 0..2 ms (many
/// ties), some pending for ever, each `Ok` or `Err`. Checks from the poll log that the first
/// `Ok` polled wins, that nothing is polled after it (nor a contestant after it finished), that
/// the answer comes at the earliest `Ok`'s instant, that all-fail returns every error in input
/// order, and that every contestant is gone afterwards.
async fn one_seeded_race_round<R: Clock>(rt: &R, rng: &mut Rng, round: u32) {
    let n = 1 + rng.below(8) as usize;
    let live = counter();
    let log: Log = Arc::default();
    let mut plan = Vec::new();
    let mut racers = Vec::new();
    for id in 0..n {
        let delay = if rng.one_in(3) {
            None
        } else {
            Some(rng.below(3))
        };
        let ok = rng.one_in(2);
        let forever = rng.one_in(8);
        plan.push((delay, ok, forever));
        let token = Live::enter(&live);
        let rt2 = rt.clone();
        let inner: BoxFut<'_, Result<usize, usize>> = Box::pin(async move {
            let _token = token;
            if let Some(d) = delay {
                rt2.sleep(ms(d)).await;
            }
            if forever {
                std::future::pending::<()>().await;
            }
            if ok { Ok(id) } else { Err(id) }
        });
        racers.push(Logged {
            id,
            log: log.clone(),
            inner,
        });
    }
    let t0 = rt.now();
    let outcome = race_ok(racers).timeout_on(rt, ms(1_000)).await;
    let took = rt.now() - t0;
    let log = log.lock().unwrap().clone();
    let ctx = format!("round {round}: plan {plan:?}, outcome {outcome:?}, log {log:?}");
    assert_eq!(live.load(SeqCst), 0, "every contestant dropped; {ctx}");
    for (k, &(id, step)) in log.iter().enumerate() {
        if step != Step::Pending {
            assert!(
                log[k + 1..].iter().all(|&(j, _)| j != id),
                "contestant {id} polled again after it finished; {ctx}"
            );
        }
    }
    let finish = |p: &(Option<u64>, bool, bool)| (!p.2).then(|| p.0.unwrap_or(0));
    let earliest_ok = plan.iter().filter(|p| p.1).filter_map(finish).min();
    match outcome {
        Ok(Ok(winner)) => {
            assert_eq!(
                log.last(),
                Some(&(winner, Step::Ok)),
                "the winner is the last contestant polled; {ctx}"
            );
            assert_eq!(
                log.iter().filter(|e| e.1 == Step::Ok).count(),
                1,
                "the first Ok polled wins; {ctx}"
            );
            assert_eq!(Some(took), earliest_ok.map(ms), "{ctx}");
            assert!(
                plan[winner].1 && finish(&plan[winner]) == earliest_ok,
                "{ctx}"
            );
        }
        Ok(Err(RaceError::AllFailed(errors))) => {
            assert!(earliest_ok.is_none() && plan.iter().all(|p| !p.2), "{ctx}");
            assert_eq!(errors, (0..n).collect::<Vec<_>>(), "input order; {ctx}");
        }
        Ok(Err(other)) => panic!("unexpected {other:?}; {ctx}"),
        Err(Elapsed) => {
            assert!(
                earliest_ok.is_none() && plan.iter().any(|p| p.2),
                "the race hung; {ctx}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn race_the_first_ok_polled_wins_and_nothing_is_polled_after_it() {
    let mut rng = Rng::new(0x5EED_0001);
    for round in 0..400 {
        one_seeded_race_round(&Tokio, &mut rng, round).await;
    }
}

#[test]
fn race_losers_are_dropped_by_the_poll_that_returns_the_winner_not_later_with_the_race() {
    // Doc: "The first `Ok` is returned and every other future is dropped at once". Checked
    // while the `RaceOk` itself is still alive, right after the poll that answered.
    let mut rng = Rng::new(0x5EED_0002);
    for round in 0..200 {
        let n = 2 + rng.below(7) as usize;
        let winner = rng.below(n as u64) as usize;
        let losers = counter();
        let mut contestants: Vec<BoxFut<'_, Result<usize, usize>>> = Vec::new();
        for id in 0..n {
            let token = Live::enter(&losers);
            // A loser pends for ever, or fails at once (a finished loser is "another future"
            // too), or pends until the second poll.
            let kind = rng.below(3);
            contestants.push(Box::pin(async move {
                let token = token;
                if id == winner {
                    drop(token);
                    return Ok(id);
                }
                match kind {
                    0 => std::future::pending().await,
                    1 => Err(id),
                    _ => {
                        let mut polled = false;
                        std::future::poll_fn(|_| {
                            if polled {
                                Poll::Ready(())
                            } else {
                                polled = true;
                                Poll::Pending
                            }
                        })
                        .await;
                        std::future::pending::<()>().await;
                        drop(token);
                        Err(id)
                    }
                }
            }));
        }
        let (waker, _) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        let mut race = race_ok(contestants);
        let mut answer = None;
        for _ in 0..100 {
            if let Poll::Ready(out) = Pin::new(&mut race).poll(&mut cx) {
                answer = Some(out);
                break;
            }
        }
        assert_eq!(answer, Some(Ok(winner)), "round {round}");
        assert_eq!(
            losers.load(SeqCst),
            0,
            "round {round}: losers still alive inside the finished race"
        );
        drop(race);
    }
}

#[tokio::test(start_paused = true)]
async fn race_polls_a_contestant_only_when_it_was_woken() {
    // Doc: "contestants are polled when woken, not in a fixed order". A contestant that never
    // wakes is polled once, while another takes 300 timer wakes to finish.
    let idle_polls = counter();
    let ip = idle_polls.clone();
    let idle: BoxFut<'_, Result<&str, &str>> = Box::pin(std::future::poll_fn(move |_| {
        ip.fetch_add(1, SeqCst);
        Poll::Pending
    }));
    let busy: BoxFut<'_, Result<&str, &str>> = Box::pin(async {
        for _ in 0..300 {
            tokio::time::sleep(ms(1)).await;
        }
        Ok("busy")
    });
    let failing_later: BoxFut<'_, Result<&str, &str>> = Box::pin(async {
        tokio::time::sleep(ms(150)).await;
        Err("failed halfway")
    });
    let t0 = tnow();
    assert_eq!(race_ok(vec![idle, failing_later, busy]).await, Ok("busy"));
    assert_eq!(tnow() - t0, ms(300));
    assert_eq!(
        idle_polls.load(SeqCst),
        1,
        "a contestant never woken was polled again"
    );
}

#[test]
fn race_of_ten_thousand_sleepers_answers_at_the_earliest_ok_and_polls_each_only_when_woken() {
    let clock = FakeClock::new();
    let mut rng = Rng::new(0x5EED_0003);
    let n = 10_000usize;
    let mut delays: Vec<u64> = (1..=n as u64).collect();
    rng.shuffle(&mut delays);
    let oks: Vec<bool> = (0..n).map(|_| rng.one_in(40)).collect();
    let live = counter();
    let log: Log = Arc::default();
    let racers: Vec<_> = (0..n)
        .map(|id| {
            let (clock, delay, ok, token) =
                (clock.clone(), delays[id], oks[id], Live::enter(&live));
            Logged {
                id,
                log: log.clone(),
                inner: Box::pin(async move {
                    let _token = token;
                    clock.sleep(ms(delay)).await;
                    if ok { Ok(id) } else { Err(id) }
                }),
            }
        })
        .collect();
    let expected = (0..n)
        .filter(|&i| oks[i])
        .min_by_key(|&i| delays[i])
        .unwrap();
    let start = clock.now();
    let result = drive_on_fake(&clock, race_ok(racers));
    assert_eq!(result, Ok(expected));
    assert_eq!(clock.now() - start, ms(delays[expected]));
    assert_eq!(live.load(SeqCst), 0, "every contestant dropped");
    let mut polls = vec![0u32; n];
    for &(id, _) in log.lock().unwrap().iter() {
        polls[id] += 1;
    }
    for id in 0..n {
        let wanted = if delays[id] <= delays[expected] { 2 } else { 1 };
        assert_eq!(
            polls[id], wanted,
            "contestant {id} (delay {}ms) polled {} times; only its first poll and its one \
             timer wake were due",
            delays[id], polls[id]
        );
    }
}

#[test]
fn race_errors_come_back_in_input_order_whatever_order_they_fail_in() {
    let clock = FakeClock::new();
    let mut rng = Rng::new(0x5EED_0004);
    for round in 0..100 {
        let n = 1 + rng.below(60) as usize;
        // Failures at once, after milliseconds, and after idle gaps of days; shuffled.
        let delays: Vec<Duration> = (0..n)
            .map(|_| match rng.below(4) {
                0 => Duration::ZERO,
                1 => Duration::from_nanos(1 + rng.below(1_000)),
                2 => ms(rng.below(100)),
                _ => Duration::from_secs(86_400 * (1 + rng.below(30))),
            })
            .collect();
        let live = counter();
        let racers: Vec<_> = (0..n)
            .map(|id| {
                let (clock, delay) = (clock.clone(), delays[id]);
                let token = Live::enter(&live);
                async move {
                    if delay > Duration::ZERO {
                        clock.sleep(delay).await;
                    }
                    Err::<(), _>(Tok { id, _live: token })
                }
            })
            .collect();
        let start = clock.now();
        let result = drive_on_fake(&clock, race_ok(racers));
        assert_eq!(
            clock.now() - start,
            delays.iter().copied().max().unwrap(),
            "round {round}"
        );
        match result {
            Err(RaceError::AllFailed(errors)) => {
                let ids: Vec<usize> = errors.iter().map(|e| e.id).collect();
                assert_eq!(ids, (0..n).collect::<Vec<_>>(), "round {round}");
                assert_eq!(
                    live.load(SeqCst),
                    n,
                    "round {round}: the errors handed back"
                );
            }
            other => panic!("round {round}: {other:?}"),
        }
        assert_eq!(live.load(SeqCst), 0, "round {round}");
    }
}

#[tokio::test(start_paused = true)]
async fn race_of_one_returns_its_own_ok_or_an_all_failed_of_its_one_error() {
    assert_eq!(race_ok([async { Ok::<_, u8>(5u8) }]).await, Ok(5));
    assert_eq!(
        race_ok([async { Err::<u8, _>(9u8) }]).await,
        Err(RaceError::AllFailed(vec![9]))
    );
    let late = async {
        tokio::time::sleep(Duration::from_secs(3_600 * 24 * 365)).await;
        Err::<u8, _>("a year later")
    };
    assert_eq!(
        race_ok([late]).await,
        Err(RaceError::AllFailed(vec!["a year later"]))
    );
    // An empty race answers at once, whatever the iterator type.
    assert_eq!(
        race_ok(std::iter::empty::<std::future::Ready<Result<u8, u8>>>()).await,
        Err(RaceError::Empty)
    );
}

// ---------------------------------------------------------------------------------------------
// race: cancel safety and panics
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn race_dropped_at_a_seeded_random_point_drops_every_contestant_and_every_error_it_held() {
    // Doc: "dropping the race drops every contestant; nothing else is held".
    let mut rng = Rng::new(0x5EED_0005);
    for round in 0..400 {
        let n = 1 + rng.below(6) as usize;
        let futures_live = counter();
        let errors_live = counter();
        let mut plan = Vec::new();
        let racers: Vec<_> = (0..n)
            .map(|id| {
                let delay = rng.below(50);
                let ok = rng.one_in(4);
                let forever = rng.one_in(5);
                plan.push((delay, ok, forever));
                let token = Live::enter(&futures_live);
                let errors_live = errors_live.clone();
                async move {
                    let _token = token;
                    tokio::time::sleep(ms(delay)).await;
                    if forever {
                        std::future::pending::<()>().await;
                    }
                    if ok {
                        Ok(id)
                    } else {
                        Err(Tok {
                            id,
                            _live: Live::enter(&errors_live),
                        })
                    }
                }
            })
            .collect();
        let cut = ms(rng.below(60));
        let outcome = tokio::time::timeout(cut, race_ok(racers)).await;
        let ctx = format!("round {round}: plan {plan:?}, cut {cut:?}, outcome {outcome:?}");
        assert_eq!(futures_live.load(SeqCst), 0, "contestants alive; {ctx}");
        match &outcome {
            Ok(Err(RaceError::AllFailed(errors))) => {
                assert_eq!(errors.len(), n, "{ctx}");
                assert_eq!(errors_live.load(SeqCst), n, "{ctx}");
            }
            Ok(Err(other)) => panic!("{other:?}; {ctx}"),
            Ok(Ok(_)) | Err(_) => {
                assert_eq!(
                    errors_live.load(SeqCst),
                    0,
                    "errors held past the race; {ctx}"
                );
            }
        }
        drop(outcome);
        assert_eq!(errors_live.load(SeqCst), 0, "{ctx}");
    }
}

#[tokio::test(start_paused = true)]
async fn race_dropped_while_pending_holds_no_clone_of_the_callers_waker() {
    // Doc: "dropping the race drops every contestant; nothing else is held". Contestants wait on
    // well-behaved sources (a timer, a oneshot); once the race is dropped no clone of the
    // waker that polled it survives.
    let count = Arc::new(CountWake::default());
    let waker = Waker::from(count.clone());
    drop(waker);
    assert_eq!(Arc::strong_count(&count), 1);
    let waker = Waker::from(count.clone());
    let (tx, rx) = futures_channel::oneshot::channel::<()>();
    let contestants: Vec<BoxFut<'_, Result<u8, u8>>> = vec![
        Box::pin(async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok(1)
        }),
        Box::pin(async move {
            let _ = rx.await;
            Err(2)
        }),
        Box::pin(async { Err(3) }),
    ];
    let mut race = race_ok(contestants);
    let mut cx = Context::from_waker(&waker);
    assert!(Pin::new(&mut race).poll(&mut cx).is_pending());
    drop(race);
    drop(waker);
    assert_eq!(
        Arc::strong_count(&count),
        1,
        "a clone of the caller's waker outlived the dropped race"
    );
    drop(tx);
}

#[test]
fn race_contestant_panicking_in_poll_panics_the_race_and_dropping_it_drops_the_rest() {
    // Doc: "a contestant that panics in `poll` panics the race (then dropped by the caller, with
    // every other contestant)".
    for panicker_at in 0..4usize {
        let live = counter();
        let contestants: Vec<BoxFut<'_, Result<u8, Tok>>> = (0..4)
            .map(|i| -> BoxFut<'_, Result<u8, Tok>> {
                let token = Live::enter(&live);
                let errors = live.clone();
                if i == panicker_at {
                    let mut polls = 0;
                    Box::pin(std::future::poll_fn(move |cx| {
                        let _held = &token;
                        polls += 1;
                        if polls == 1 {
                            cx.waker().wake_by_ref();
                            Poll::Pending
                        } else {
                            panic!("contestant poll panic")
                        }
                    }))
                } else if i % 2 == 0 {
                    Box::pin(async move {
                        let _token = token;
                        Err(Tok {
                            id: i,
                            _live: Live::enter(&errors),
                        })
                    })
                } else {
                    Box::pin(async move {
                        let _token = token;
                        std::future::pending().await
                    })
                }
            })
            .collect();
        let (waker, _) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        let mut race = race_ok(contestants);
        let mut panicked = None;
        for _ in 0..10 {
            match catch_unwind(AssertUnwindSafe(|| Pin::new(&mut race).poll(&mut cx))) {
                Ok(Poll::Pending) => {}
                Ok(Poll::Ready(out)) => panic!("panicker {panicker_at}: the race answered {out:?}"),
                Err(payload) => {
                    panicked = Some(describe(&*payload));
                    break;
                }
            }
        }
        assert_eq!(
            panicked.as_deref(),
            Some("contestant poll panic"),
            "panicker {panicker_at}"
        );
        let dropped = catch_unwind(AssertUnwindSafe(|| drop(race)));
        assert!(dropped.is_ok(), "panicker {panicker_at}: the drop panicked");
        assert_eq!(
            live.load(SeqCst),
            0,
            "panicker {panicker_at}: contestants or their errors outlived the race"
        );
    }
}

/// One contestant of a panic-on-drop scenario: a bomb's message (it panics when dropped) or
/// none, and when it finishes (`None`: never) with `Ok` or `Err`.
type Spec = (Option<&'static str>, Option<u64>, bool);

#[tokio::test(start_paused = true)]
async fn race_contestants_that_panic_when_dropped_surface_their_first_panic_and_the_rest_are_dropped()
 {
    // Doc: "One that panics when dropped does not stop the others from being dropped: the first
    // such panic comes out of the race's poll, or its drop, once every contestant due to be
    // dropped then is gone". A bomb that failed, lost, or even won: its panic must come out
    // (never swallowed behind an answer), the earliest bomb's first, and every other
    // contestant must still be dropped.
    let cases: Vec<(&str, Vec<Spec>)> = vec![
        (
            "a bomb fails first, no winner",
            vec![(Some("bomb"), Some(10), false), (None, None, true)],
        ),
        (
            "a bomb fails first, a winner later",
            vec![
                (Some("bomb"), Some(10), false),
                (None, None, true),
                (None, Some(20), true),
            ],
        ),
        (
            "a bomb loses while pending",
            vec![
                (Some("bomb"), None, true),
                (None, None, true),
                (None, Some(20), true),
            ],
        ),
        (
            "a bomb would fail after the winner",
            vec![
                (Some("bomb"), Some(30), false),
                (None, None, true),
                (None, Some(20), true),
            ],
        ),
        (
            "every contestant fails, the bomb first",
            vec![(Some("bomb"), Some(10), false), (None, Some(20), false)],
        ),
        (
            "every contestant fails, the bomb last",
            vec![(None, Some(10), false), (Some("bomb"), Some(20), false)],
        ),
        (
            "the winner is the bomb",
            vec![
                (None, Some(5), false),
                (Some("bomb"), Some(10), true),
                (None, None, true),
            ],
        ),
        (
            "the winner is a bomb ready at once",
            vec![(None, None, true), (Some("bomb"), Some(0), true)],
        ),
        (
            "two bombs: one fails, one loses",
            vec![
                (Some("bomb"), Some(10), false),
                (Some("second bomb"), None, true),
                (None, Some(20), true),
            ],
        ),
    ];
    for (case, specs) in cases {
        let live = counter();
        let contestants: Vec<BoxFut<'_, Result<usize, usize>>> = specs
            .iter()
            .enumerate()
            .map(
                |(id, &(bomb, at, ok))| -> BoxFut<'_, Result<usize, usize>> {
                    let token = Live::enter(&live);
                    let inner: BoxFut<'_, Result<usize, usize>> = Box::pin(async move {
                        let _token = token;
                        match at {
                            Some(at) => {
                                if at > 0 {
                                    tokio::time::sleep(ms(at)).await;
                                }
                                if ok { Ok(id) } else { Err(id) }
                            }
                            None => std::future::pending().await,
                        }
                    });
                    match bomb {
                        Some(message) => Box::pin(PanicOnDrop { message, inner }),
                        None => inner,
                    }
                },
            )
            .collect();
        let mut race = Some(race_ok(contestants));
        let mut panics = Vec::new();
        let mut answer = None;
        let mut out_of_poll = None;
        let t0 = tnow();
        let _ = tokio::time::timeout(
            ms(1_000),
            std::future::poll_fn(|cx| {
                let polled = catch_unwind(AssertUnwindSafe(|| {
                    Pin::new(race.as_mut().unwrap()).poll(cx)
                }));
                match polled {
                    Ok(Poll::Pending) => Poll::Pending,
                    Ok(Poll::Ready(out)) => {
                        answer = Some(out);
                        Poll::Ready(())
                    }
                    Err(payload) => {
                        panics.push(describe(&*payload));
                        out_of_poll = Some((tnow() - t0, live.load(SeqCst)));
                        Poll::Ready(())
                    }
                }
            }),
        )
        .await;
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| drop(race.take()))) {
            panics.push(describe(&*payload));
        }
        // "once every contestant due to be dropped then is gone": a panic out of the poll at
        // or after the winner's instant comes after every loser is dropped.
        // (A winner that is itself a bomb is `race_whose_winner_panics_when_dropped_...`.)
        let winner = specs
            .iter()
            .filter(|s| s.2 && s.1.is_some())
            .min_by_key(|s| s.1);
        if let (Some((at, alive)), Some(&(None, Some(won), _))) = (out_of_poll, winner)
            && at >= ms(won)
        {
            assert_eq!(
                alive, 0,
                "{case}: the panic came out of the winning poll at {at:?} with {alive} \
                 losers still alive"
            );
        }
        let bombs: Vec<&str> = specs.iter().filter_map(|s| s.0).collect();
        assert!(
            !panics.is_empty() && panics[0] == "bomb",
            "{case}: panics {panics:?}, answer {answer:?}"
        );
        assert!(
            panics.len() <= bombs.len() && panics.iter().all(|p| bombs.contains(&p.as_str())),
            "{case}: panics {panics:?}"
        );
        if bombs.len() == 1 {
            assert_eq!(panics.len(), 1, "{case}: panics {panics:?}");
        }
        assert_eq!(live.load(SeqCst), 0, "{case}: contestants not dropped");
    }
}

#[test]
fn race_starts_nothing_until_polled_and_dropping_it_unpolled_drops_every_contestant() {
    let live = counter();
    let log: Log = Arc::default();
    let racers: Vec<_> = (0..5)
        .map(|id| {
            let token = Live::enter(&live);
            Logged {
                id,
                log: log.clone(),
                inner: Box::pin(async move {
                    let _token = token;
                    Ok::<usize, usize>(id)
                }),
            }
        })
        .collect();
    let race = race_ok(racers);
    assert!(log.lock().unwrap().is_empty(), "polled before the race was");
    drop(race);
    assert!(log.lock().unwrap().is_empty());
    assert_eq!(live.load(SeqCst), 0);
}

// ---------------------------------------------------------------------------------------------
// race: the calling task, hedging
// ---------------------------------------------------------------------------------------------

#[test]
fn race_wakes_the_waker_of_its_latest_poll() {
    // Doc: "`race_ok` polls every future in the calling task". Moved to another task (a new
    // waker), a contestant's wake must reach the new task.
    let (tx, rx) = futures_channel::oneshot::channel::<u8>();
    let contestants: Vec<BoxFut<'_, Result<u8, u8>>> = vec![
        Box::pin(async move { rx.await.map_err(|_| 0) }),
        Box::pin(std::future::pending()),
    ];
    let mut race = race_ok(contestants);
    let (first, first_wakes) = counting_waker();
    let (second, second_wakes) = counting_waker();
    assert!(
        Pin::new(&mut race)
            .poll(&mut Context::from_waker(&first))
            .is_pending()
    );
    assert!(
        Pin::new(&mut race)
            .poll(&mut Context::from_waker(&second))
            .is_pending()
    );
    let before = first_wakes.0.load(SeqCst);
    tx.send(4).unwrap();
    assert!(
        second_wakes.0.load(SeqCst) >= 1,
        "the current task was not woken"
    );
    assert_eq!(first_wakes.0.load(SeqCst), before, "the old task was woken");
    assert_eq!(
        Pin::new(&mut race).poll(&mut Context::from_waker(&second)),
        Poll::Ready(Ok(4))
    );
}

#[test]
fn race_contestants_need_not_be_send_they_run_in_the_calling_task() {
    // "polls every future in the calling task": `!Send` contestants (an `Rc`) are fine, and
    // they run on the calling thread.
    let caller = std::thread::current().id();
    let seen = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let contestants: Vec<_> = (0..3u8)
        .map(|i| {
            let seen = seen.clone();
            async move {
                seen.borrow_mut().push(std::thread::current().id());
                if i == 2 { Ok(i) } else { Err(i) }
            }
        })
        .collect();
    let result = futures_util::FutureExt::now_or_never(race_ok(contestants));
    assert_eq!(result, Some(Ok(2)));
    assert!(seen.borrow().iter().all(|t| *t == caller));
}

#[tokio::test(start_paused = true)]
async fn race_hedge_recipe_never_starts_the_delayed_request_once_the_first_answered() {
    // Doc: "For a *delayed* second request (hedging), start the second future after a sleep
    // inside it."
    let mut rng = Rng::new(0x5EED_0006);
    for round in 0..200 {
        let primary_takes = rng.below(200);
        let primary_ok = !rng.one_in(4);
        let hedge_after = rng.below(200);
        let hedge_takes = rng.below(100);
        let started = Arc::new(Mutex::new(Vec::new()));
        let t0 = tnow();
        let s = started.clone();
        let primary: BoxFut<'_, Result<&str, &str>> = Box::pin(async move {
            s.lock().unwrap().push(("primary", tnow() - t0));
            tokio::time::sleep(ms(primary_takes)).await;
            if primary_ok {
                Ok("primary")
            } else {
                Err("primary failed")
            }
        });
        let s = started.clone();
        let hedge: BoxFut<'_, Result<&str, &str>> = Box::pin(async move {
            tokio::time::sleep(ms(hedge_after)).await;
            s.lock().unwrap().push(("hedge", tnow() - t0));
            tokio::time::sleep(ms(hedge_takes)).await;
            Ok("hedge")
        });
        let result = race_ok(vec![primary, hedge]).await;
        let answered = tnow() - t0;
        tokio::time::sleep(Duration::from_secs(3_600)).await;
        let started = started.lock().unwrap().clone();
        let ctx = format!(
            "round {round}: primary {primary_takes}ms ok {primary_ok}, hedge after \
             {hedge_after}ms takes {hedge_takes}ms; result {result:?} at {answered:?}; started \
             {started:?}"
        );
        let hedge_done = hedge_after + hedge_takes;
        if primary_ok && primary_takes < hedge_after {
            assert_eq!(result, Ok("primary"), "{ctx}");
            assert_eq!(answered, ms(primary_takes), "{ctx}");
            assert_eq!(
                started.len(),
                1,
                "the hedge started after the answer; {ctx}"
            );
        } else if primary_ok && primary_takes < hedge_done {
            assert_eq!(result, Ok("primary"), "{ctx}");
            assert_eq!(answered, ms(primary_takes), "{ctx}");
        } else if !primary_ok || primary_takes > hedge_done {
            assert_eq!(result, Ok("hedge"), "{ctx}");
            assert_eq!(answered, ms(hedge_done), "{ctx}");
        }
        assert!(
            started.iter().all(|(_, at)| *at <= answered),
            "a request started after the answer; {ctx}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// fallback
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn fallback_starts_only_when_the_primary_has_failed_never_alongside_it() {
    let t0 = tnow();
    let called_at = Arc::new(Mutex::new(Vec::new()));
    let c = called_at.clone();
    let primary_live = counter();
    let token = Live::enter(&primary_live);
    let pl = primary_live.clone();
    let primary = async move {
        let _token = token;
        tokio::time::sleep(ms(70)).await;
        Err::<u8, _>("down")
    };
    let fb = fallback::with_async(move |e: &'static str| {
        c.lock().unwrap().push((e, tnow() - t0, pl.load(SeqCst)));
        async move {
            tokio::time::sleep(ms(5)).await;
            Ok(1)
        }
    });
    assert_eq!(primary.or_fallback(fb).await, Ok(1));
    assert_eq!(tnow() - t0, ms(75));
    assert_eq!(
        *called_at.lock().unwrap(),
        vec![("down", ms(70), 0)],
        "the fallback is made once, when the primary failed, after the primary is gone"
    );
}

#[tokio::test(start_paused = true)]
async fn fallback_nested_when_handles_only_errors_both_predicates_accept() {
    // Doc: `when`: "Handles only the errors for which `predicate` returns `true`"; an error not
    // handled "passes through unchanged".
    for e in 0u32..6 {
        let asked_inner = counter();
        let asked_outer = counter();
        let (ai, ao) = (asked_inner.clone(), asked_outer.clone());
        let fb = fallback::with(move |e: u32| Ok::<_, u32>(1000 + e))
            .when(move |e: &u32| {
                ai.fetch_add(1, SeqCst);
                e.is_multiple_of(2)
            })
            .when(move |e: &u32| {
                ao.fetch_add(1, SeqCst);
                *e < 3
            });
        let got = async move { Err::<u32, _>(e) }.or_fallback(fb).await;
        let want = if e.is_multiple_of(2) && e < 3 {
            Ok(1000 + e)
        } else {
            Err(e)
        };
        assert_eq!(got, want, "error {e}");
        assert!(asked_inner.load(SeqCst) <= 1 && asked_outer.load(SeqCst) <= 1);
    }
    // Neither predicate is consulted when the primary succeeds.
    let asked = counter();
    let a = asked.clone();
    let fb = fallback::value(0u8).when(move |_: &u8| {
        a.fetch_add(1, SeqCst);
        true
    });
    assert_eq!(async { Ok::<u8, u8>(3) }.or_fallback(fb).await, Ok(3));
    assert_eq!(
        asked.load(SeqCst),
        0,
        "the predicate was asked about a success"
    );
    // A handled error whose `with` fails returns the fallback's error; a declined one, its own.
    let fb = |_: ()| fallback::with(|e: u32| Err::<u8, _>(e * 10)).when(|e: &u32| *e == 1);
    assert_eq!(
        async { Err::<u8, u32>(1) }.or_fallback(fb(())).await,
        Err(10)
    );
    assert_eq!(
        async { Err::<u8, u32>(2) }.or_fallback(fb(())).await,
        Err(2)
    );
}

#[tokio::test(start_paused = true)]
async fn fallback_chain_whose_every_fallback_fails_returns_the_last_fallback_error() {
    let chain = |last: u32| {
        async { Err::<u8, u32>(1) }
            .or_fallback(fallback::with(|e: u32| Err(e + 1)))
            .or_fallback(fallback::with_async(|e: u32| async move {
                tokio::time::sleep(ms(10)).await;
                Err(e * 10)
            }))
            .or_fallback(fallback::value(99u8).when(move |e: &u32| *e == last))
    };
    let t0 = tnow();
    assert_eq!(chain(21).await, Err(20), "a declined last fallback");
    assert_eq!(tnow() - t0, ms(10));
    assert_eq!(chain(20).await, Ok(99), "a handling last fallback");
}

#[tokio::test(start_paused = true)]
async fn fallback_dropped_at_a_seeded_random_point_drops_primary_fallback_and_policy_state() {
    // Doc: "dropping the future drops whichever of the primary or fallback future is running;
    // no other state". Also the answer: primary's `Ok`; else the fallback's result if handled;
    // else the primary's error, unchanged.
    let mut rng = Rng::new(0x5EED_0007);
    for round in 0..500 {
        let primary_takes = rng.below(40);
        let primary_ok = rng.one_in(4);
        let fallback_takes = rng.below(40);
        let fallback_ok = !rng.one_in(3);
        let handled = !rng.one_in(4);
        let cut = rng.below(100);
        let live = counter();
        let errors = counter();
        let made = counter();

        let token = Live::enter(&live);
        let e1 = errors.clone();
        let primary = async move {
            let _token = token;
            tokio::time::sleep(ms(primary_takes)).await;
            if primary_ok {
                Ok(1u8)
            } else {
                Err(Tok {
                    id: 1,
                    _live: Live::enter(&e1),
                })
            }
        };
        let policy_token = Live::enter(&live);
        let (l2, e2, m2) = (live.clone(), errors.clone(), made.clone());
        let with = fallback::with_async(move |error: Tok| {
            let _policy = policy_token;
            m2.fetch_add(1, SeqCst);
            let token = Live::enter(&l2);
            async move {
                let _token = token;
                drop(error);
                tokio::time::sleep(ms(fallback_takes)).await;
                if fallback_ok {
                    Ok(2u8)
                } else {
                    Err(Tok {
                        id: 2,
                        _live: Live::enter(&e2),
                    })
                }
            }
        });
        let predicate_token = Live::enter(&live);
        let fb = with.when(move |_: &Tok| {
            let _predicate = predicate_token;
            handled
        });

        let t0 = tnow();
        let outcome = tokio::time::timeout(ms(cut), primary.or_fallback(fb)).await;
        let at = tnow() - t0;
        let ctx = format!(
            "round {round}: primary {primary_takes}ms ok {primary_ok}, fallback \
             {fallback_takes}ms ok {fallback_ok}, handled {handled}, cut {cut}ms; \
             got {outcome:?} at {at:?}"
        );
        assert_eq!(live.load(SeqCst), 0, "state outlived the future; {ctx}");
        let (want, done) = if primary_ok {
            (Ok(1), primary_takes)
        } else if handled {
            let r = if fallback_ok { Ok(2) } else { Err(2) };
            (r, primary_takes + fallback_takes)
        } else {
            (Err(1), primary_takes)
        };
        let fallback_made = !primary_ok && handled && primary_takes < cut;
        if done != cut {
            match &outcome {
                Ok(r) => {
                    assert!(done < cut, "{ctx}");
                    assert_eq!(r.as_ref().map(|v| *v).map_err(|e| e.id), want, "{ctx}");
                    assert_eq!(at, ms(done), "{ctx}");
                }
                Err(_) => {
                    assert!(done > cut, "{ctx}");
                    assert_eq!(at, ms(cut), "{ctx}");
                }
            }
            if primary_takes != cut {
                assert_eq!(made.load(SeqCst), usize::from(fallback_made), "{ctx}");
            }
        }
        let held = usize::from(matches!(outcome, Ok(Err(_))));
        assert_eq!(errors.load(SeqCst), held, "errors held; {ctx}");
        drop(outcome);
        assert_eq!(errors.load(SeqCst), 0, "{ctx}");
    }
}

/// A custom strategy: on a retryable error, race the replicas; a fatal one is declined.
struct ToReplicas {
    replicas: Vec<(u64, Result<u32, &'static str>)>,
    live: Arc<AtomicUsize>,
}

impl Fallback<u32, String> for ToReplicas {
    type Future = BoxFut<'static, Result<u32, String>>;

    fn on_error(self, error: String) -> Result<Self::Future, String> {
        if error.starts_with("fatal") {
            return Err(error);
        }
        let racers: Vec<_> = self
            .replicas
            .into_iter()
            .map(|(delay, outcome)| {
                let token = Live::enter(&self.live);
                async move {
                    let _token = token;
                    tokio::time::sleep(ms(delay)).await;
                    outcome
                }
            })
            .collect();
        Ok(Box::pin(async move {
            race_ok(racers).await.map_err(|e| match e {
                RaceError::AllFailed(all) => format!("{error}; replicas: {}", all.join(", ")),
                _ => format!("{error}; no replicas"),
            })
        }))
    }
}

#[tokio::test(start_paused = true)]
async fn fallback_custom_strategy_racing_replicas_declines_unchanged_and_handles_via_race() {
    let live = counter();
    let replicas = vec![(30, Err("r0 down")), (20, Ok(7)), (500, Ok(8))];
    let strategy = |replicas: Vec<(u64, Result<u32, &'static str>)>| ToReplicas {
        replicas,
        live: live.clone(),
    };
    let t0 = tnow();
    let got = async { Err::<u32, _>("fatal: bad key".to_owned()) }
        .or_fallback(strategy(replicas.clone()))
        .await;
    assert_eq!(got, Err("fatal: bad key".to_owned()));
    assert_eq!(tnow() - t0, Duration::ZERO);

    let got = async {
        tokio::time::sleep(ms(10)).await;
        Err::<u32, _>("timeout".to_owned())
    }
    .or_fallback(strategy(replicas))
    .await;
    assert_eq!(got, Ok(7));
    assert_eq!(tnow() - t0, ms(30));
    assert_eq!(live.load(SeqCst), 0, "losing replicas still alive");

    let got = async { Err::<u32, _>("timeout".to_owned()) }
        .or_fallback(strategy(vec![(5, Err("a")), (1, Err("b"))]))
        .await;
    assert_eq!(got, Err("timeout; replicas: a, b".to_owned()));

    let got = async { Err::<u32, _>("timeout".to_owned()) }
        .or_fallback(strategy(vec![]))
        .await;
    assert_eq!(got, Err("timeout; no replicas".to_owned()));

    // The trait's `when` restricts a custom strategy too.
    let got = async { Err::<u32, _>("timeout".to_owned()) }
        .or_fallback(strategy(vec![(1, Ok(1))]).when(|e: &String| e == "other"))
        .await;
    assert_eq!(got, Err("timeout".to_owned()));
}

// ---------------------------------------------------------------------------------------------
// composition: nested, pipeline, deadlines, Duration extremes
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn race_of_fallbacks_of_races_answers_the_earliest_ok_and_drops_everything() {
    let mut rng = Rng::new(0x5EED_0008);
    for round in 0..150 {
        // Distinct replica delays (multiples of 10 ms) and distinct fallback extras (1..=9 ms)
        // make every finish instant unique, so the winner is known.
        let mut pool: Vec<u64> = (1..=60).map(|k| k * 10).collect();
        rng.shuffle(&mut pool);
        let mut extras: Vec<u64> = (1..=9).collect();
        rng.shuffle(&mut extras);
        let groups = 1 + rng.below(4) as usize;
        let live = counter();
        let mut plan = Vec::new();
        let mut outer = Vec::new();
        for &extra in extras.iter().take(groups) {
            let size = rng.below(4) as usize; // 0 = an empty inner race
            let replicas: Vec<(u64, bool)> = (0..size)
                .map(|_| (pool.pop().unwrap(), rng.one_in(3)))
                .collect();
            let fb_ok = rng.one_in(2);
            plan.push((replicas.clone(), extra, fb_ok));
            let racers: Vec<_> = replicas
                .iter()
                .map(|&(delay, ok)| {
                    let token = Live::enter(&live);
                    async move {
                        let _token = token;
                        tokio::time::sleep(ms(delay)).await;
                        if ok {
                            Ok(delay)
                        } else {
                            Err(format!("replica {delay}"))
                        }
                    }
                })
                .collect();
            let fb_token = Live::enter(&live);
            let fb = fallback::with_async(move |e: RaceError<String>| async move {
                let _token = fb_token;
                tokio::time::sleep(ms(extra)).await;
                if fb_ok { Ok(10_000 + extra) } else { Err(e) }
            })
            .when(|e: &RaceError<String>| matches!(e, RaceError::AllFailed(_)));
            outer.push(race_ok(racers).or_fallback(fb));
        }
        // Expected outcome per group: (finish ms, result).
        let expected: Vec<(u64, Result<u64, RaceError<String>>)> = plan
            .iter()
            .map(|(replicas, extra, fb_ok)| {
                if let Some(&(d, _)) = replicas.iter().filter(|r| r.1).min_by_key(|r| r.0) {
                    return (d, Ok(d));
                }
                if replicas.is_empty() {
                    return (0, Err(RaceError::Empty));
                }
                let errors: Vec<String> = replicas
                    .iter()
                    .map(|(d, _)| format!("replica {d}"))
                    .collect();
                let last = replicas.iter().map(|r| r.0).max().unwrap() + extra;
                if *fb_ok {
                    (last, Ok(10_000 + extra))
                } else {
                    (last, Err(RaceError::AllFailed(errors)))
                }
            })
            .collect();
        let (want, want_at) = match expected
            .iter()
            .filter(|(_, r)| r.is_ok())
            .min_by_key(|(at, _)| *at)
        {
            Some((at, Ok(v))) => (Ok(*v), *at),
            _ => (
                Err(RaceError::AllFailed(
                    expected
                        .iter()
                        .map(|(_, r)| r.clone().unwrap_err())
                        .collect(),
                )),
                expected.iter().map(|(at, _)| *at).max().unwrap(),
            ),
        };
        let t0 = tnow();
        let got = race_ok(outer).await;
        let ctx = format!("round {round}: plan {plan:?}; got {got:?}");
        assert_eq!(got, want, "{ctx}");
        assert_eq!(tnow() - t0, ms(want_at), "{ctx}");
        assert_eq!(live.load(SeqCst), 0, "{ctx}");
    }
}

#[tokio::test(start_paused = true)]
async fn race_in_a_pipeline_attempt_cut_by_its_timeout_is_gone_before_the_retry_starts() {
    let pipeline = Pipeline::builder()
        .retry(
            Backoff::constant(ms(100))
                .jitter(Jitter::None)
                .max_attempts(3)
                .build()
                .unwrap(),
        )
        .attempt_timeout(ms(50))
        .build()
        .unwrap();
    let live = counter();
    let starts = Arc::new(Mutex::new(Vec::new()));
    let t0 = tnow();
    let result = pipeline
        .call(|| {
            starts
                .lock()
                .unwrap()
                .push((tnow() - t0, live.load(SeqCst)));
            let racers: Vec<_> = [30u64, 80, 400]
                .into_iter()
                .map(|delay| {
                    let token = Live::enter(&live);
                    async move {
                        let _token = token;
                        tokio::time::sleep(ms(delay)).await;
                        if delay == 30 { Err(delay) } else { Ok(delay) }
                    }
                })
                .collect();
            race_ok(racers)
        })
        .await;
    assert!(matches!(result, Err(Error::TimedOut)), "{result:?}");
    assert_eq!(
        *starts.lock().unwrap(),
        vec![(ms(0), 0), (ms(150), 0), (ms(300), 0)],
        "(attempt start, contestants alive from earlier attempts)"
    );
    assert_eq!(tnow() - t0, ms(350));
    assert_eq!(live.load(SeqCst), 0);

    // A race whose every contestant fails: the pipeline keeps the race's own error.
    let attempt = AtomicUsize::new(0);
    let result = pipeline
        .call(|| {
            let a = attempt.fetch_add(1, SeqCst);
            race_ok([a * 10, a * 10 + 1].map(|e| async move { Err::<u8, _>(e) }))
        })
        .await;
    match result {
        Err(Error::Inner(RaceError::AllFailed(errors))) => assert_eq!(errors, vec![20, 21]),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn fallback_on_a_pipeline_deadline_runs_after_the_cut_attempt_is_gone() {
    let pipeline = Pipeline::builder()
        .deadline(ms(100))
        .retry(
            Backoff::constant(ms(10))
                .jitter(Jitter::None)
                .max_attempts(10)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let live = counter();
    let seen = Arc::new(Mutex::new(None));
    let t0 = tnow();
    let s = seen.clone();
    let l = live.clone();
    let result = pipeline
        .call(|| {
            let token = Live::enter(&live);
            async move {
                let _token = token;
                tokio::time::sleep(ms(500)).await;
                Err::<u8, _>("slow")
            }
        })
        .or_fallback(
            fallback::with_async(move |e: Error<&'static str>| {
                *s.lock().unwrap() = Some((e.rejection(), tnow() - t0, l.load(SeqCst)));
                async { Ok(7) }
            })
            .when(|e: &Error<&str>| e.rejection() == Some(Rejected::DeadlineExceeded)),
        )
        .await;
    assert_eq!(result, Ok(7));
    assert_eq!(
        *seen.lock().unwrap(),
        Some((Some(Rejected::DeadlineExceeded), ms(100), 0))
    );
    // A declined error passes through unchanged, the caller's type intact.
    let result = pipeline
        .call(|| async { Err::<u8, _>("bad request") })
        .or_fallback(
            fallback::value(7)
                .when(|e: &Error<&str>| e.rejection() == Some(Rejected::DeadlineExceeded)),
        )
        .await;
    assert!(
        matches!(result, Err(Error::Inner("bad request"))),
        "{result:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn race_cut_by_a_deadline_mid_race_fails_at_that_instant_and_drops_every_contestant() {
    let mut rng = Rng::new(0x5EED_0009);
    for round in 0..200 {
        let n = 1 + rng.below(5) as usize;
        let plan: Vec<(u64, bool)> = (0..n).map(|_| (rng.below(200), rng.one_in(3))).collect();
        let budget = rng.below(200);
        let live = counter();
        let racers: Vec<_> = plan
            .iter()
            .enumerate()
            .map(|(i, &(delay, ok))| {
                let token = Live::enter(&live);
                async move {
                    let _token = token;
                    tokio::time::sleep(ms(delay)).await;
                    if ok { Ok(i) } else { Err(i) }
                }
            })
            .collect();
        let t0 = tnow();
        let deadline = Deadline::after(&Tokio, ms(budget));
        let got = race_ok(racers).deadline(deadline).await;
        let at = tnow() - t0;
        let ctx = format!("round {round}: plan {plan:?}, budget {budget}; got {got:?} at {at:?}");
        assert_eq!(live.load(SeqCst), 0, "{ctx}");
        let done = plan
            .iter()
            .filter(|p| p.1)
            .map(|p| p.0)
            .min()
            .unwrap_or_else(|| plan.iter().map(|p| p.0).max().unwrap());
        if done == budget {
            continue;
        }
        if done < budget {
            assert!(got.is_ok(), "{ctx}");
            assert_eq!(at, ms(done), "{ctx}");
        } else {
            assert_eq!(got, Err(DeadlineExceeded), "{ctx}");
            assert_eq!(at, ms(budget), "{ctx}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn race_and_fallback_under_timeouts_at_duration_extremes_and_long_idle_gaps() {
    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
    // Contestants behind timeouts of 0, 1 ns and Duration::MAX ("about thirty years"): each
    // fails with `Elapsed`; the errors come back in input order, the last after decades.
    let t0 = tnow();
    let got = race_ok([
        std::future::pending::<Result<u8, u8>>().timeout(Duration::MAX),
        std::future::pending().timeout(Duration::ZERO),
        std::future::pending().timeout(Duration::from_nanos(1)),
    ])
    .await;
    assert_eq!(
        got,
        Err(RaceError::AllFailed(vec![Elapsed, Elapsed, Elapsed]))
    );
    let waited = tnow() - t0;
    assert!(
        waited >= 29 * YEAR && waited <= 31 * YEAR,
        "waited {waited:?}"
    );

    // A winner after a day's idle gap beats a MAX timeout; the zero one fails first.
    let t0 = tnow();
    let after = |wait: Duration, value: u8| async move {
        tokio::time::sleep(wait).await;
        Ok::<u8, u8>(value)
    };
    let got = race_ok([
        after(Duration::from_secs(86_400), 5).timeout(Duration::MAX),
        after(Duration::ZERO, 6).timeout(Duration::MAX),
    ])
    .await;
    assert_eq!(got, Ok(Ok(6)));
    assert_eq!(tnow() - t0, Duration::ZERO);

    // A fallback after a primary bounded by a MAX deadline: falls back after about 30 years.
    let t0 = tnow();
    let got = std::future::pending::<Result<u8, DeadlineExceeded>>()
        .deadline(Deadline::after(&Tokio, Duration::MAX))
        .or_fallback(fallback::with(|_: DeadlineExceeded| Ok(Ok(1))))
        .await;
    assert_eq!(got, Ok(Ok(1)));
    let waited = tnow() - t0;
    assert!(
        waited >= 29 * YEAR && waited <= 31 * YEAR,
        "waited {waited:?}"
    );

    // A zero timeout around the whole fallback future: a ready primary still answers or the
    // timeout answers, never a half-run fallback (the fallback is made only if it ran).
    let made = counter();
    let m = made.clone();
    let got = async { Err::<u8, u8>(1) }
        .or_fallback(fallback::with_async(move |_: u8| {
            m.fetch_add(1, SeqCst);
            async {
                tokio::time::sleep(ms(1)).await;
                Ok(2)
            }
        }))
        .timeout(Duration::ZERO)
        .await;
    assert!(matches!(got, Err(Elapsed)) || got == Ok(Ok(2)), "{got:?}");
    assert!(made.load(SeqCst) <= 1);
}

// ---------------------------------------------------------------------------------------------
// every runtime adapter
// ---------------------------------------------------------------------------------------------

/// The same race and fallback scenarios on any runtime, with virtual time.
async fn race_and_fallback_scenario<R: Runtime>(rt: R) {
    let live = counter();
    let contestant = |delay: u64, ok: bool| {
        let (rt, token) = (rt.clone(), Live::enter(&live));
        async move {
            let _token = token;
            rt.sleep(ms(delay)).await;
            if ok { Ok(delay) } else { Err(delay) }
        }
    };

    // The first Ok wins at its instant; losers are gone.
    let t0 = rt.now();
    let got = race_ok([
        contestant(10, false),
        contestant(50, true),
        contestant(3_600_000, true),
    ])
    .await;
    assert_eq!(got, Ok(50));
    assert_eq!(rt.now() - t0, ms(50));
    assert_eq!(live.load(SeqCst), 0);

    // All fail, one after a day's idle gap: every error, in input order.
    let t0 = rt.now();
    let got = race_ok([
        contestant(86_400_000, false),
        contestant(1, false),
        contestant(0, false),
    ])
    .await;
    assert_eq!(got, Err(RaceError::AllFailed(vec![86_400_000, 1, 0])));
    assert_eq!(rt.now() - t0, ms(86_400_000));

    // A deadline mid-race.
    let t0 = rt.now();
    let got = race_ok([contestant(30, false), contestant(500, true)])
        .deadline_on(&rt, Deadline::after(&rt, ms(100)))
        .await;
    assert_eq!(got, Err(DeadlineExceeded));
    assert_eq!(rt.now() - t0, ms(100));
    assert_eq!(live.load(SeqCst), 0);

    // A fallback made when the primary failed, run to its end.
    let t0 = rt.now();
    let made_at = Arc::new(Mutex::new(None));
    let (m, rt2) = (made_at.clone(), rt.clone());
    let got = contestant(30, false)
        .or_fallback(fallback::with_async(move |e: u64| {
            *m.lock().unwrap() = Some(rt2.now());
            let rt = rt2.clone();
            async move {
                rt.sleep(ms(20)).await;
                Ok(e + 1)
            }
        }))
        .await;
    assert_eq!(got, Ok(31));
    assert_eq!(rt.now() - t0, ms(50));
    assert_eq!(made_at.lock().unwrap().map(|at| at - t0), Some(ms(30)));

    // A fallback for a timed-out primary.
    let t0 = rt.now();
    let got = contestant(1_000, true)
        .timeout_on(&rt, ms(40))
        .or_fallback(fallback::value(Ok(9)).when(|e: &Elapsed| *e == Elapsed))
        .await;
    assert_eq!(got, Ok(Ok(9)));
    assert_eq!(rt.now() - t0, ms(40));
    assert_eq!(live.load(SeqCst), 0);

    // Seeded ties and drop checks.
    let mut rng = Rng::new(0x5EED_000A);
    for round in 0..60 {
        one_seeded_race_round(&rt, &mut rng, round).await;
    }
}

#[test]
fn race_and_fallback_keep_their_contracts_on_every_runtime_adapter() {
    on_each(clocked!(race_and_fallback_scenario));
}

#[test]
fn race_and_fallback_debug_is_available_mid_flight() {
    let mut race = race_ok(vec![std::future::pending::<Result<u8, u8>>()]);
    let (waker, _) = counting_waker();
    assert!(
        Pin::new(&mut race)
            .poll(&mut Context::from_waker(&waker))
            .is_pending()
    );
    assert!(!format!("{race:?}").is_empty());
    let fut = async { Err::<u8, u8>(1) }.or_fallback(fallback::value(2));
    assert!(!format!("{fut:?}").is_empty());
}

#[tokio::test(start_paused = true)]
async fn race_of_pipeline_calls_frees_the_losers_bulkhead_slots_and_breaker_records_nothing() {
    // race: losers "dropped at once"; pipeline: "dropping the future releases everything it
    // holds (bulkhead slot, breaker permit — recorded as nothing)".
    let bulkhead = Bulkhead::builder(3).reject_when_full().build().unwrap();
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(1)
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .bulkhead(bulkhead.clone())
        .breaker(breaker.clone())
        .build()
        .unwrap();
    let live = counter();
    let call = |delay: u64, ok: bool| {
        let live = live.clone();
        pipeline.call(move || {
            let token = Live::enter(&live);
            async move {
                let _token = token;
                tokio::time::sleep(ms(delay)).await;
                if ok { Ok(delay) } else { Err(delay) }
            }
        })
    };
    let t0 = tnow();
    let got = race_ok([call(100, true), call(10, true), call(500, true)]).await;
    assert_eq!(got, Ok(10));
    assert_eq!(tnow() - t0, ms(10));
    assert_eq!(live.load(SeqCst), 0);
    assert_eq!(
        breaker.state(),
        State::Closed,
        "a dropped loser counted as a failure"
    );
    let held: Vec<_> = (0..3).map(|_| bulkhead.try_acquire()).collect();
    assert!(
        held.iter().all(Result::is_ok),
        "a loser's bulkhead slot was not given back"
    );
    drop(held);

    // Every call fails: the race hands back each pipeline error, in input order.
    let breaker2 = CircuitBreaker::builder()
        .consecutive_failures(10)
        .build()
        .unwrap();
    let pipeline2 = Pipeline::builder()
        .bulkhead(Bulkhead::builder(2).reject_when_full().build().unwrap())
        .breaker(breaker2)
        .build()
        .unwrap();
    let call2 = |delay: u64| {
        pipeline2.call(move || async move {
            tokio::time::sleep(ms(delay)).await;
            Err::<u8, _>(delay)
        })
    };
    match race_ok([call2(30), call2(20), call2(10)]).await {
        Err(RaceError::AllFailed(errors)) => {
            assert!(matches!(errors[0], Error::Inner(30)), "{errors:?}");
            assert!(matches!(errors[1], Error::Inner(20)), "{errors:?}");
            assert!(
                matches!(errors[2], Error::Rejected(Rejected::BulkheadFull)),
                "{errors:?}"
            );
        }
        other => panic!("{other:?}"),
    }
}

/// A payload that is not a string.
#[derive(Debug, PartialEq)]
struct Code(u32);

/// A future pending for ever that panics with `Code(code)` when dropped.
struct CodeOnDrop(u32);

impl Future for CodeOnDrop {
    type Output = Result<u8, u8>;

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Pending
    }
}

impl Drop for CodeOnDrop {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            std::panic::panic_any(Code(self.0));
        }
    }
}

#[test]
fn race_a_drop_panic_comes_out_with_its_own_payload_even_when_not_a_string() {
    let contestants: Vec<BoxFut<'_, Result<u8, u8>>> =
        vec![Box::pin(CodeOnDrop(41)), Box::pin(async { Ok(1) })];
    let mut race = race_ok(contestants);
    let (waker, _) = counting_waker();
    let out = catch_unwind(AssertUnwindSafe(|| {
        Pin::new(&mut race).poll(&mut Context::from_waker(&waker))
    }));
    let payload = out.expect_err("the loser's drop panic was swallowed");
    assert_eq!(payload.downcast_ref::<Code>(), Some(&Code(41)));
    let dropped = catch_unwind(AssertUnwindSafe(|| drop(race)));
    assert!(dropped.is_ok(), "the same panic came out twice");
}

#[test]
fn race_of_races_whose_inner_losers_panic_when_dropped_drops_everything_and_panics_once() {
    // The inner race is a loser of the outer one: its drop raises its contestant's panic
    // ("comes out of the race's ... drop"), which the outer race must treat as a contestant
    // panicking when dropped: every other contestant still dropped, the panic comes out.
    let live = counter();
    let token = Live::enter(&live);
    let inner: BoxFut<'_, Result<u8, RaceError<u8>>> = Box::pin(race_ok(vec![
        Box::pin(CodeOnDrop(7)) as BoxFut<'_, Result<u8, u8>>,
        Box::pin(async move {
            let _token = token;
            std::future::pending().await
        }),
    ]));
    let token = Live::enter(&live);
    let pending: BoxFut<'_, Result<u8, RaceError<u8>>> = Box::pin(async move {
        let _token = token;
        std::future::pending().await
    });
    let winner: BoxFut<'_, Result<u8, RaceError<u8>>> = Box::pin(async { Ok(3) });
    let mut race = race_ok(vec![inner, pending, winner]);
    let (waker, _) = counting_waker();
    let out = catch_unwind(AssertUnwindSafe(|| {
        Pin::new(&mut race).poll(&mut Context::from_waker(&waker))
    }));
    let alive_when_it_came_out = live.load(SeqCst);
    let payload = out.expect_err("the nested drop panic was swallowed");
    assert_eq!(payload.downcast_ref::<Code>(), Some(&Code(7)));
    assert_eq!(
        alive_when_it_came_out, 0,
        "the panic came out of the winning poll before every loser was dropped"
    );
    let dropped = catch_unwind(AssertUnwindSafe(|| drop(race)));
    assert!(dropped.is_ok(), "the same panic came out twice");
    assert_eq!(live.load(SeqCst), 0, "contestants outlived the races");
}

/// Outcomes only (real time, short waits, no instant asserted): contestants woken from other
/// threads in a seeded order, a fallback after a failure, a fallback after a timeout.
async fn race_and_fallback_outcomes_scenario<R: Runtime>(rt: R) {
    let mut rng = Rng::new(0x5EED_000B);
    for round in 0..100usize {
        let n = 8;
        let winner = rng.below(n as u64) as usize;
        let live = counter();
        let mut senders = Vec::new();
        let racers: Vec<_> = (0..n)
            .map(|i| {
                let (tx, rx) = futures_channel::oneshot::channel::<usize>();
                senders.push((i, tx));
                let token = Live::enter(&live);
                async move {
                    let _token = token;
                    let v = rx.await.unwrap_or(usize::MAX);
                    if i == winner { Ok(v) } else { Err(v) }
                }
            })
            .collect();
        rng.shuffle(&mut senders);
        let waker_thread = std::thread::spawn(move || {
            for (i, tx) in senders {
                let _ = tx.send(i);
            }
        });
        let got = race_ok(racers).await;
        waker_thread.join().unwrap();
        assert_eq!(got, Ok(winner), "round {round}");
        assert_eq!(live.load(SeqCst), 0, "round {round}");
    }
    let rt2 = rt.clone();
    let got = {
        let rt = rt.clone();
        async move {
            rt.sleep(ms(1)).await;
            Err::<u8, u8>(1)
        }
    }
    .or_fallback(fallback::with_async(move |e: u8| async move {
        rt2.sleep(ms(1)).await;
        Ok(e + 1)
    }))
    .await;
    assert_eq!(got, Ok(2));
    let got = std::future::pending::<u8>()
        .timeout_on(&rt, ms(2))
        .or_fallback(fallback::value(3))
        .await;
    assert_eq!(got, Ok(3));
}

#[test]
fn race_and_fallback_outcomes_hold_on_every_raw_adapter_with_wakes_from_other_threads() {
    on_each(raw!(race_and_fallback_outcomes_scenario));
}

#[test]
fn race_a_drop_panic_in_the_winning_poll_comes_out_only_after_every_loser_is_dropped() {
    // Doc (race, **Panics**): "One that panics when dropped does not stop the others from being
    // dropped: the first such panic comes out of the race's poll, or its drop, once every
    // contestant due to be dropped then is gone." Once the first `Ok` has arrived, every other
    // contestant is due ("every other future is dropped at once"). All contestants are ready
    // or pending on the first poll; the bomb (panics when dropped) is at every position,
    // winning or failing; the poll log says whether an `Ok` had arrived when the panic came
    // out of the poll.
    let mut wrong = Vec::new();
    for bomb_at in 0..4usize {
        for winner_at in 0..4usize {
            for bomb_ok in [false, true] {
                let live = counter();
                let log: Log = Arc::default();
                let contestants: Vec<BoxFut<'_, Result<usize, usize>>> = (0..4)
                    .map(|i| -> BoxFut<'_, Result<usize, usize>> {
                        let token = Live::enter(&live);
                        let inner = Logged {
                            id: i,
                            log: log.clone(),
                            inner: Box::pin(async move {
                                let _token = token;
                                if i == bomb_at {
                                    if bomb_ok { Ok(i) } else { Err(i) }
                                } else if i == winner_at {
                                    Ok(i)
                                } else {
                                    std::future::pending().await
                                }
                            }),
                        };
                        if i == bomb_at {
                            Box::pin(PanicOnDrop {
                                message: "bomb",
                                inner: Box::pin(inner),
                            })
                        } else {
                            Box::pin(inner)
                        }
                    })
                    .collect();
                let case = format!("bomb at {bomb_at} (ok: {bomb_ok}), winner at {winner_at}");
                let mut race = race_ok(contestants);
                let (waker, _) = counting_waker();
                let polled = catch_unwind(AssertUnwindSafe(|| {
                    Pin::new(&mut race).poll(&mut Context::from_waker(&waker))
                }));
                let alive = live.load(SeqCst);
                let log = log.lock().unwrap().clone();
                match polled {
                    Err(payload) => {
                        assert_eq!(describe(&*payload), "bomb", "{case}");
                        let ok_arrived = log.iter().any(|e| e.1 == Step::Ok);
                        if ok_arrived && alive != 0 {
                            wrong.push(format!(
                                "{case}: an Ok had arrived (poll log {log:?}), yet the panic \
                                 came out of that poll with {alive} losers still alive (dropped \
                                 only later, with the race)"
                            ));
                        }
                        let dropped = catch_unwind(AssertUnwindSafe(|| drop(race)));
                        assert!(dropped.is_ok(), "{case}: the panic came out twice");
                    }
                    Ok(answer) => {
                        let dropped = catch_unwind(AssertUnwindSafe(|| drop(race)));
                        let payload = dropped.expect_err("the bomb's panic was swallowed");
                        assert_eq!(describe(&*payload), "bomb", "{case}: answer {answer:?}");
                    }
                }
                assert_eq!(live.load(SeqCst), 0, "{case}");
            }
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

#[test]
fn race_whose_winner_panics_when_dropped_never_answers_with_a_loser_afterwards() {
    // Doc: "The first `Ok` is returned and every other future is dropped at once"; a drop panic
    // comes out "once every contestant due to be dropped then is gone". The winner (contestant
    // 0) panics when dropped; contestant 1 is a loser that is ready with `Ok` too. Once the
    // panic has come out, the loser must be gone: it is never polled again and can never
    // answer in the winner's place.
    let live = counter();
    let log: Log = Arc::default();
    let token = Live::enter(&live);
    let contestants: Vec<BoxFut<'_, Result<usize, usize>>> = vec![
        Box::pin(PanicOnDrop {
            message: "winner's drop",
            inner: Box::pin(async { Ok(0) }),
        }),
        Box::pin(Logged {
            id: 1,
            log: log.clone(),
            inner: Box::pin(async move {
                let _token = token;
                Ok(1)
            }),
        }),
    ];
    let mut race = race_ok(contestants);
    let (waker, _) = counting_waker();
    let mut poll = || {
        catch_unwind(AssertUnwindSafe(|| {
            Pin::new(&mut race).poll(&mut Context::from_waker(&waker))
        }))
        .map_err(|p| describe(&*p))
    };
    assert_eq!(poll(), Err("winner's drop".to_owned()));
    let alive_after_panic = live.load(SeqCst);
    let again = poll();
    assert!(
        alive_after_panic == 0
            && log.lock().unwrap().is_empty()
            && !matches!(again, Ok(Poll::Ready(Ok(_)))),
        "after the winner's drop panic: {alive_after_panic} loser(s) alive; polled again, the \
         race gave {again:?}; loser's polls {:?}",
        log.lock().unwrap()
    );
}
