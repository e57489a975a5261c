//! Hostile black-box tests of the adaptive limiter's permit life cycle, written from the rustdoc
//! alone: permits that outlive every handle of their limiter (or keyed table), permits and
//! guards moved to other threads and finished there, a differential check of the limiter
//! against the pure algorithm it wraps (AIMD's lock-free steady path included), AIMD's
//! documented arithmetic through real permits, priority shares at their boundaries, extreme
//! bounds, reconfiguration under held permits, and seeded storms with random outcomes and
//! random drop points through `Pipeline` (bulkhead and rate-limit slots) and `AdmitLayer` in all
//! three modes. Virtual time (`FakeClock`, `Clocked`, paused tokio) and a seeded generator
//! throughout. Where a test ends permits on other threads (or outside any runtime, where the
//! clock is the machine's), it asserts only what holds in any order and at any time: counts,
//! bounds, every slot back.
#![cfg(all(feature = "tokio", feature = "test-util", feature = "tower"))]

mod common;

use std::future::{Future, poll_fn};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use common::ms;
use common::rng::Rng;
use tidewall::adaptive::{
    AdaptiveLimiter, AdaptivePermit, Aimd, FixedLimit, Gradient2, LimitAlgorithm, Priority, Sample,
    Vegas,
};
use tidewall::admission::{Admission, Wait};
use tidewall::breaker::Outcome;
use tidewall::classify::Verdict;
use tidewall::pipeline::Pipeline;
use tidewall::rt::{Clock, Tokio};
use tidewall::testing::{Clocked, FakeClock};
use tidewall::tower::{AdmitLayer, AdmitMode};
use tidewall::{Deadline, Error, FutureExt as _, Rejected};
use tower_layer::Layer;
use tower_service::Service;

const DAY: Duration = Duration::from_secs(86_400);

type OnFake<A> = AdaptiveLimiter<A, FakeClock>;

// === shared pieces =========================================================================

/// What a [`Watched`] algorithm saw: its samples, drops, limits outside its bounds, and how
/// many copies of it are alive (a leak check: every copy is dropped with the last handle,
/// permit and waiter).
#[derive(Default)]
struct Watch {
    samples: AtomicU64,
    drops: AtomicU64,
    out_of_bounds: AtomicU64,
    alive: AtomicUsize,
    log: Mutex<Vec<Sample>>,
}

/// A real (or scripted) algorithm, watched.
struct Watched<A> {
    inner: A,
    watch: Arc<Watch>,
}

impl<A> Watched<A> {
    fn new(inner: A) -> (Self, Arc<Watch>) {
        let watch = Arc::new(Watch::default());
        watch.alive.fetch_add(1, SeqCst);
        (
            Self {
                inner,
                watch: watch.clone(),
            },
            watch,
        )
    }
}

impl<A: Clone> Clone for Watched<A> {
    fn clone(&self) -> Self {
        self.watch.alive.fetch_add(1, SeqCst);
        Self {
            inner: self.inner.clone(),
            watch: self.watch.clone(),
        }
    }
}

impl<A> Drop for Watched<A> {
    fn drop(&mut self) {
        self.watch.alive.fetch_sub(1, SeqCst);
    }
}

impl<A: LimitAlgorithm> LimitAlgorithm for Watched<A> {
    fn limit(&self) -> u32 {
        self.inner.limit()
    }
    fn update(&mut self, sample: &Sample) -> u32 {
        let out = self.inner.update(sample);
        let (min, max) = self.inner.bounds();
        if !(min..=max).contains(&out) {
            self.watch.out_of_bounds.fetch_add(1, SeqCst);
        }
        self.watch.samples.fetch_add(1, SeqCst);
        if sample.dropped {
            self.watch.drops.fetch_add(1, SeqCst);
        }
        self.watch.log.lock().unwrap().push(*sample);
        out
    }
    fn bounds(&self) -> (u32, u32) {
        self.inner.bounds()
    }
}

/// A user's algorithm that answers with a scripted limit (the same one when nothing is left).
#[derive(Clone)]
struct Scripted {
    limit: u32,
    plan: Arc<Mutex<Vec<u32>>>,
}

impl Scripted {
    fn new(limit: u32) -> Self {
        Self {
            limit,
            plan: Arc::default(),
        }
    }
    fn then(&self, limit: u32) {
        self.plan.lock().unwrap().insert(0, limit);
    }
}

impl LimitAlgorithm for Scripted {
    fn limit(&self) -> u32 {
        self.limit
    }
    fn update(&mut self, _: &Sample) -> u32 {
        if let Some(next) = self.plan.lock().unwrap().pop() {
            self.limit = next;
        }
        self.limit
    }
    fn bounds(&self) -> (u32, u32) {
        (1, u32::MAX)
    }
}

fn aimd(min: u32, initial: u32, max: u32, backoff: f64, timeout: Duration) -> Aimd {
    Aimd::builder()
        .min_limit(min)
        .initial_limit(initial)
        .max_limit(max)
        .backoff_ratio(backoff)
        .timeout(timeout)
        .build()
        .unwrap()
}

fn on_fake<A: LimitAlgorithm + Clone + Send + 'static>(clock: &FakeClock, algo: A) -> OnFake<A> {
    AdaptiveLimiter::builder(algo)
        .runtime(clock.clone())
        .build()
        .unwrap()
}

/// A limiter on `rt` with a queue of `max_queue` whose callers wait as long as they need.
fn queued<A: LimitAlgorithm + Clone + Send + 'static, R: Clock + Clone>(
    rt: &R,
    algo: A,
    max_queue: usize,
) -> AdaptiveLimiter<A, R> {
    AdaptiveLimiter::builder(algo)
        .max_queue(max_queue)
        .max_wait(None)
        .runtime(rt.clone())
        .build()
        .unwrap()
}

fn poll_once<F: Future + ?Sized>(fut: Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(Waker::noop()))
}

fn no_panic<T>(what: &str, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| panic!("{what} panicked"))
}

fn assert_send<T: Send + 'static>(_: &T) {}

/// The seven ways a permit can end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Success,
    Failure,
    Ignore,
    FinishSuccess,
    FinishFailure,
    FinishIgnored,
    Drop,
}

const ENDS: [End; 7] = [
    End::Success,
    End::Failure,
    End::Ignore,
    End::FinishSuccess,
    End::FinishFailure,
    End::FinishIgnored,
    End::Drop,
];

impl End {
    /// Whether it teaches, and if so whether the sample is a drop.
    fn teaches(self) -> Option<bool> {
        match self {
            End::Success | End::FinishSuccess => Some(false),
            End::Failure | End::FinishFailure => Some(true),
            End::Ignore | End::FinishIgnored | End::Drop => None,
        }
    }
    fn apply<A: LimitAlgorithm, R: Clock>(self, permit: AdaptivePermit<A, R>) {
        match self {
            End::Success => permit.success(),
            End::Failure => permit.failure(),
            End::Ignore => permit.ignore(),
            End::FinishSuccess => permit.finish(Outcome::Success),
            End::FinishFailure => permit.finish(Outcome::Failure),
            End::FinishIgnored => permit.finish(Outcome::Ignored),
            End::Drop => drop(permit),
        }
    }
}

// === permits outliving their limiter =======================================================

// Docs (AdaptivePermit): "dropped without one (a cancelled call), it frees the slot and teaches
// the algorithm nothing"; (success): "its time since admission is a sample"; (AdaptiveLimiter):
// "Cheap to clone: clones share the limit". A permit is the last thing holding the limiter: it
// must still end cleanly, teach (or not) as documented, and free everything with it.
#[test]
fn a_permit_outliving_every_handle_ends_cleanly_teaches_as_told_and_frees_everything() {
    for end in ENDS {
        let clock = FakeClock::new();
        let (algo, watch) = Watched::new(Scripted::new(3));
        let limiter = on_fake(&clock, algo);
        let sheddable = limiter.with_priority(Priority::Sheddable);
        let permit = sheddable.try_acquire().unwrap();
        let other = limiter.try_acquire().unwrap();
        drop((limiter, sheddable));
        assert!(
            watch.alive.load(SeqCst) >= 1,
            "{end:?}: the permits still hold the limiter's state"
        );
        clock.advance(ms(9));
        no_panic(&format!("{end:?}"), || end.apply(permit));
        let expected = u64::from(end.teaches().is_some());
        assert_eq!(watch.samples.load(SeqCst), expected, "{end:?}");
        if let Some(dropped) = end.teaches() {
            let log = watch.log.lock().unwrap();
            assert_eq!(
                (log[0].rtt, log[0].inflight, log[0].dropped),
                (ms(9), 1, dropped),
                "{end:?}: timed from admission, alone in flight then"
            );
        }
        no_panic("the last permit", || other.finish(Outcome::Success));
        assert_eq!(watch.samples.load(SeqCst), expected + 1, "{end:?}");
        assert_eq!(
            watch.alive.load(SeqCst),
            0,
            "{end:?}: every copy of the algorithm is freed with the last permit"
        );
    }
}

// Docs (AdaptiveLimiter): "Cheap to clone: clones share the limit"; (in_flight): "Calls in
// flight now". The handle that admitted (and its priority handle) is gone; a clone kept
// elsewhere sees the permits end, on other threads.
#[test]
fn a_clone_kept_elsewhere_sees_permits_of_dropped_handles_end_on_other_threads() {
    let clock = FakeClock::new();
    let (algo, watch) = Watched::new(aimd(1, 40, 100, 0.5, Duration::from_secs(1)));
    let limiter = on_fake(&clock, algo);
    let observer = limiter.clone();
    let critical = limiter.with_priority(Priority::Critical);
    let mut permits = Vec::new();
    for i in 0..32 {
        let handle = if i % 2 == 0 { &limiter } else { &critical };
        permits.push(handle.try_acquire().unwrap());
    }
    assert_send(&permits[0]);
    drop((limiter, critical));
    assert_eq!(observer.in_flight(), 32);
    let barrier = Arc::new(Barrier::new(5));
    let mut chunks: Vec<Vec<_>> = (0..4).map(|_| Vec::new()).collect();
    for (i, p) in permits.into_iter().enumerate() {
        chunks[i % 4].push((ENDS[i % ENDS.len()], p));
    }
    let threads: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                for (end, p) in chunk {
                    end.apply(p);
                }
            })
        })
        .collect();
    clock.advance(ms(3));
    barrier.wait();
    for t in threads {
        t.join().expect("a permit ended on another thread panicked");
    }
    assert_eq!((observer.in_flight(), observer.queued()), (0, 0));
    let told = (0..32)
        .filter(|i| ENDS[i % ENDS.len()].teaches().is_some())
        .count();
    let failed = (0..32)
        .filter(|i| ENDS[i % ENDS.len()].teaches() == Some(true))
        .count();
    assert_eq!(watch.samples.load(SeqCst), told as u64);
    assert_eq!(watch.drops.load(SeqCst), failed as u64);
    assert_eq!(watch.out_of_bounds.load(SeqCst), 0);
    let limit = observer.limit();
    assert!((1..=100).contains(&limit), "{limit}");
    // All slots back: the whole limit can be taken again, and no more.
    let again: Vec<_> = (0..limit)
        .map(|_| observer.try_acquire().unwrap())
        .collect();
    assert_eq!(observer.try_acquire().unwrap_err(), Rejected::BulkheadFull);
    drop(again);
    drop(observer);
    assert_eq!(watch.alive.load(SeqCst), 0, "nothing leaked");
}

// Docs (Admission): "Guards and futures own what they need (`'static`)"; (admit): "Cancel
// safety: dropping the future releases whatever it was waiting for or held"; (AdaptiveAdmit):
// "dropping it leaves the queue and holds nothing"; (finish): "A guard dropped without it (a
// cancelled call) teaches nothing".
#[test]
fn admission_guards_and_waiters_outlive_their_handles_and_move_between_threads() {
    let clock = FakeClock::new();
    let (algo, watch) = Watched::new(Scripted::new(1));
    let limiter = queued(&clock, algo, 4);
    let observer = limiter.clone();
    let finish = <OnFake<Watched<Scripted>> as Admission>::finish;
    let first = limiter.try_admit().expect("a free slot");
    assert!(limiter.try_admit().is_none(), "limit 1, one held");
    let mut waiting = Box::pin(limiter.admit(Wait::Until(Deadline::none())));
    let mut abandoned = Box::pin(limiter.admit(Wait::Until(Deadline::none())));
    assert!(poll_once(waiting.as_mut()).is_pending());
    assert!(poll_once(abandoned.as_mut()).is_pending());
    assert_eq!((observer.queued(), observer.in_flight()), (2, 1));
    drop(limiter);
    // The first guard ends on another thread, after every handle but the observer is gone.
    clock.advance(ms(4));
    std::thread::spawn(move || finish(first, Outcome::Success))
        .join()
        .unwrap();
    assert_eq!(watch.samples.load(SeqCst), 1);
    let Poll::Ready(Ok(second)) = poll_once(waiting.as_mut()) else {
        panic!("the slot goes to the first waiter");
    };
    drop(waiting);
    assert_eq!((observer.queued(), observer.in_flight()), (1, 1));
    // The slot is granted to the abandoned waiter as the guard drops (cancelled); the waiter
    // is then dropped without being polled: the slot must come back.
    drop(second);
    drop(abandoned);
    assert_eq!(
        (observer.queued(), observer.in_flight()),
        (0, 0),
        "a slot granted to a dropped waiter is passed on, not leaked"
    );
    assert_eq!(
        watch.samples.load(SeqCst),
        1,
        "cancelled guards teach nothing"
    );
    drop(observer);
    assert_eq!(watch.alive.load(SeqCst), 0, "nothing leaked");
}

// Docs (module, Time): "in a test, build the limiter after pausing tokio's time, inside the
// paused runtime"; (AdaptivePermit) as above. A permit of a tokio-timed limiter ended on a plain
// thread outside the runtime, after the runtime and every handle are gone: no panic, the slot
// returns to a clone, and whatever the sample, the limit stays within the algorithm's bounds.
#[test]
fn a_tokio_timed_permit_ended_on_a_plain_thread_after_its_runtime_is_gone() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let (algo, watch) = Watched::new(aimd(2, 10, 30, 0.5, Duration::from_secs(1)));
    let (observer, permits) = runtime.block_on(async move {
        let limiter = AdaptiveLimiter::builder(algo).build().unwrap();
        let permits: Vec<_> = (0..6).map(|_| limiter.try_acquire().unwrap()).collect();
        tokio::time::advance(DAY).await;
        (limiter.clone(), permits)
    });
    drop(runtime);
    let handle = std::thread::spawn(move || {
        for (i, p) in permits.into_iter().enumerate() {
            ENDS[i].apply(p);
        }
    });
    handle
        .join()
        .expect("ending permits outside the runtime panicked");
    assert_eq!((observer.in_flight(), observer.queued()), (0, 0));
    assert!((2..=30).contains(&observer.limit()), "{}", observer.limit());
    assert_eq!(watch.samples.load(SeqCst), 4);
    drop(observer);
    assert_eq!(watch.alive.load(SeqCst), 0);
}

// === the limiter against the pure algorithm ================================================

// Docs (module): "When a call ends, its time since admission, the calls in flight when it was
// admitted ... and whether it failed go to the algorithm, and a new limit resizes the bulkhead";
// "A call that was cancelled, or whose outcome was ignored, teaches the algorithm nothing";
// "that call ends without the lock, with the same outcome" (the steady path); "admits a call
// while fewer than the limit are in flight"; (Sample::inflight): "Calls in flight when it was
// admitted, itself included". The limiter fed random permits, outcomes, drop points and clock
// steps must publish exactly the limit the same algorithm gives for the same samples.
fn differential<A: LimitAlgorithm + Clone + Send + 'static>(what: &str, algo: A, seed: u64) {
    let clock = FakeClock::new();
    let mut model = algo.clone();
    let (min, max) = model.bounds();
    let limiter = on_fake(&clock, algo);
    let mut rng = Rng::new(seed);
    let mut held: Vec<(AdaptivePermit<A, FakeClock>, u32, Duration)> = Vec::new();
    let steps = [
        Duration::ZERO,
        Duration::from_nanos(1),
        Duration::from_nanos(499),
        Duration::from_nanos(500),
        Duration::from_micros(1),
        ms(1),
        ms(3),
        ms(17),
        Duration::from_secs(2),
        DAY,
    ];
    let mut taught = 0;
    for step in 0..6_000 {
        let limit = limiter.limit();
        assert_eq!(limit, model.limit(), "{what} step {step}: published limit");
        assert!((min..=max).contains(&limit), "{what}: {limit}");
        assert_eq!(limiter.in_flight(), held.len(), "{what} step {step}");
        match rng.below(10) {
            0..=3 => {
                let free = held.len() < limit as usize;
                match limiter.try_acquire() {
                    Ok(p) => {
                        assert!(free, "{what} step {step}: admitted over the limit");
                        let inflight = u32::try_from(limiter.in_flight()).unwrap();
                        held.push((p, inflight, clock.elapsed()));
                    }
                    Err(e) => {
                        assert!(!free, "{what} step {step}: refused below the limit");
                        assert_eq!(e, Rejected::BulkheadFull);
                    }
                }
            }
            4 | 5 => clock.advance(steps[rng.index(steps.len())]),
            _ if held.is_empty() => {}
            _ => {
                let (permit, inflight, start) = held.swap_remove(rng.index(held.len()));
                let end = ENDS[rng.index(ENDS.len())];
                end.apply(permit);
                if let Some(dropped) = end.teaches() {
                    taught += 1;
                    model.update(&Sample {
                        rtt: clock.elapsed() - start,
                        inflight,
                        dropped,
                        at: clock.elapsed(),
                    });
                }
            }
        }
    }
    assert!(taught > 500, "{what}: the run taught {taught} samples");
    drop(held);
    assert_eq!((limiter.in_flight(), limiter.queued()), (0, 0), "{what}");
}

#[test]
fn aimd_through_permits_matches_the_pure_algorithm_sample_for_sample() {
    // Timeouts with sub-microsecond parts: the steady path's RTT bound is rounded.
    let timeouts = [
        Duration::new(0, 3_000_500),
        ms(3),
        Duration::from_nanos(1),
        Duration::from_secs(1),
    ];
    for (i, timeout) in timeouts.into_iter().enumerate() {
        let seed = 0xA1D0 + i as u64;
        differential("aimd", aimd(1, 4, 12, 0.5, timeout), seed);
        differential("aimd 0.9", aimd(3, 20, 40, 0.9, timeout), seed ^ 7);
        differential("aimd at max", aimd(2, 6, 6, 0.75, timeout), seed ^ 11);
    }
}

#[test]
fn vegas_and_gradient2_through_permits_match_the_pure_algorithms() {
    for seed in [1_u64, 2, 3] {
        let vegas = Vegas::builder()
            .min_limit(1)
            .initial_limit(4)
            .max_limit(16)
            .build()
            .unwrap();
        differential("vegas", vegas, seed);
        let gradient = Gradient2::builder()
            .min_limit(1)
            .initial_limit(4)
            .max_limit(16)
            .build()
            .unwrap();
        differential("gradient2", gradient, seed + 100);
    }
}

// === AIMD's documented arithmetic through real permits =====================================

// Docs (Aimd): "a dropped call, or one slower than `timeout`, multiplies the limit by
// `backoff_ratio` (truncated); a call that found at least half the limit in use adds one. The
// limit stays within `[min_limit, max_limit]`." Module: "A call that was cancelled, or whose
// outcome was ignored, teaches the algorithm nothing: it never counts as a fast success."
#[test]
fn aimd_backs_off_to_its_minimum_grows_only_when_half_used_and_ignores_the_untold() {
    let clock = FakeClock::new();
    let limiter = on_fake(&clock, aimd(3, 100, 120, 0.5, Duration::from_secs(1)));
    for expected in [50, 25, 12, 6, 3, 3, 3] {
        limiter.try_acquire().unwrap().failure();
        assert_eq!(limiter.limit(), expected);
    }
    // Ignored or cancelled calls, however slow or busy, never move it.
    let busy: Vec<_> = (0..3).map(|_| limiter.try_acquire().unwrap()).collect();
    clock.advance(DAY);
    let mut busy = busy.into_iter();
    busy.next().unwrap().ignore();
    busy.next().unwrap().finish(Outcome::Ignored);
    drop(busy);
    assert_eq!((limiter.limit(), limiter.in_flight()), (3, 0));
    // At the minimum: 3 in flight of 3 and a success adds one.
    let held: Vec<_> = (0..3).map(|_| limiter.try_acquire().unwrap()).collect();
    held.into_iter().last().unwrap().success();
    assert_eq!(limiter.limit(), 4);
    // Half used exactly (2 of 4) grows; under half (1 of 5 .. 2 of 5) does not.
    let a = limiter.try_acquire().unwrap();
    let b = limiter.try_acquire().unwrap();
    b.success();
    assert_eq!(limiter.limit(), 5, "2 of 4 is half: grows");
    let c = limiter.try_acquire().unwrap(); // 2 of 5
    c.success();
    assert_eq!(limiter.limit(), 5, "2 of 5 is under half");
    a.success(); // admitted with 1 of 4, ends at 5
    assert_eq!(limiter.limit(), 5);
    // Odd limits: 3 of 7 is under half, 4 of 7 is over.
    for _ in 0..2 {
        let held: Vec<_> = (0..5).map(|_| limiter.try_acquire().unwrap()).collect();
        held.into_iter().last().unwrap().success();
    }
    assert_eq!(limiter.limit(), 7);
    let held: Vec<_> = (0..3).map(|_| limiter.try_acquire().unwrap()).collect();
    held.into_iter().last().unwrap().success();
    assert_eq!(limiter.limit(), 7, "3 of 7");
    let held: Vec<_> = (0..4).map(|_| limiter.try_acquire().unwrap()).collect();
    held.into_iter().last().unwrap().success();
    assert_eq!(limiter.limit(), 8, "4 of 7");
    // A success slower than the timeout is a drop; exactly at the timeout it is not.
    let mut held: Vec<_> = (0..4).map(|_| limiter.try_acquire().unwrap()).collect();
    clock.advance(Duration::from_secs(1));
    held.pop().unwrap().success();
    assert_eq!(
        limiter.limit(),
        9,
        "4 of 8 at exactly the timeout: a success"
    );
    clock.advance(Duration::from_nanos(1));
    held.pop().unwrap().success();
    assert_eq!(
        limiter.limit(),
        4,
        "slower than the timeout: 9 × 0.5, truncated"
    );
    drop(held);
    assert_eq!(limiter.in_flight(), 0);
}

// Docs (Aimd): the limit stays within `[min_limit, max_limit]`; (module, steady): "AIMD's steady
// samples are the successes within its timeout that found under half the limit in use (or any
// number, at its most limit)".
#[test]
fn aimd_at_its_maximum_stays_and_min_equal_max_one_admits_one_at_a_time() {
    let clock = FakeClock::new();
    let top = on_fake(&clock, aimd(1, 6, 6, 0.5, Duration::from_secs(1)));
    for _ in 0..3 {
        let held: Vec<_> = (0..6).map(|_| top.try_acquire().unwrap()).collect();
        assert_eq!(top.try_acquire().unwrap_err(), Rejected::BulkheadFull);
        for p in held {
            p.success();
        }
        assert_eq!(top.limit(), 6, "never above max");
    }
    top.try_acquire().unwrap().failure();
    assert_eq!(top.limit(), 3);

    let one = on_fake(&clock, aimd(1, 1, 1, 0.5, ms(1)));
    let sheddable = one.with_priority(Priority::Sheddable);
    for end in ENDS {
        for handle in [&one, &sheddable] {
            let p = handle
                .try_acquire()
                .expect("none in flight: always admitted");
            assert_eq!(one.try_acquire().unwrap_err(), Rejected::BulkheadFull);
            assert_eq!(sheddable.try_acquire().unwrap_err(), Rejected::BulkheadFull);
            clock.advance(ms(2));
            end.apply(p);
            assert_eq!((one.limit(), one.in_flight()), (1, 0), "{end:?}");
        }
    }
}

// Docs (module): "Every limit stays within `[min_limit, max_limit]`"; LimitAlgorithm: "A limiter
// applies at least 1". Bounds at the edges of `u32`.
#[test]
fn limits_at_the_edges_of_u32_stay_within_bounds_through_permits() {
    let clock = FakeClock::new();
    let configs = [
        (1, u32::MAX, u32::MAX),
        (u32::MAX, u32::MAX, u32::MAX),
        (u32::MAX - 1, u32::MAX - 1, u32::MAX),
        (1, 1, u32::MAX),
    ];
    for (min, initial, max) in configs {
        // Docs (AimdBuilder::build): refused only for a zero min or timeout, bounds out of
        // order, or a ratio outside `0.5..1`; none of these is.
        let algo = Aimd::builder()
            .min_limit(min)
            .initial_limit(initial)
            .max_limit(max)
            .backoff_ratio(0.5)
            .build()
            .unwrap_or_else(|e| panic!("({min}, {initial}, {max}) refused: {e:?}"));
        let mut model = algo.clone();
        let limiter = on_fake(&clock, algo);
        assert_eq!(limiter.limit(), initial);
        let mut rng = Rng::new(u64::from(min) ^ u64::from(initial));
        for _ in 0..200 {
            let p = limiter
                .try_acquire()
                .expect("one in flight of a huge limit");
            let end = ENDS[rng.index(ENDS.len())];
            no_panic("ending a permit", || end.apply(p));
            if let Some(dropped) = end.teaches() {
                model.update(&Sample {
                    rtt: Duration::ZERO,
                    inflight: 1,
                    dropped,
                    at: clock.elapsed(),
                });
            }
            assert_eq!(limiter.limit(), model.limit(), "({min}, {initial}, {max})");
            assert!((min..=max).contains(&limiter.limit()));
        }
        assert_eq!(limiter.in_flight(), 0);
    }
    // Vegas and Gradient2 pinned at min = max = 1 stay there whatever they are taught.
    let vegas = Vegas::builder()
        .min_limit(1)
        .initial_limit(1)
        .max_limit(1)
        .build()
        .unwrap();
    let gradient = Gradient2::builder()
        .min_limit(1)
        .initial_limit(1)
        .max_limit(1)
        .build()
        .unwrap();
    differential("vegas 1..=1", vegas, 77);
    differential("gradient2 1..=1", gradient, 78);
}

// === priorities ============================================================================

// Docs (share): "they are admitted while fewer than `limit × share` are in flight (always when
// none are) ... critical calls always have the whole limit"; (Priority): "the less it matters,
// the sooner it is refused". Permits of priority handles outlive those handles and still count.
#[test]
fn each_priority_is_admitted_exactly_below_its_share_and_sheddable_is_refused_first() {
    let clock = FakeClock::new();
    let shares = [(1.0, 0.8), (0.9, 0.5), (0.5, 0.25), (1.0, 1.0), (0.75, 0.3)];
    for limit in [1_u32, 2, 3, 5, 7, 10, 64] {
        for (default_share, sheddable_share) in shares {
            let limiter = AdaptiveLimiter::builder(FixedLimit(limit))
                .share(Priority::Default, default_share)
                .share(Priority::Sheddable, sheddable_share)
                .runtime(clock.clone())
                .build()
                .unwrap();
            let observer = limiter.clone();
            let mut held = Vec::new();
            let mut refused_at = [None; 3];
            for n in 0..=limit as usize {
                assert_eq!(observer.in_flight(), n);
                for (i, (priority, share)) in [
                    (Priority::Critical, 1.0),
                    (Priority::Default, default_share),
                    (Priority::Sheddable, sheddable_share),
                ]
                .into_iter()
                .enumerate()
                {
                    let handle = observer.with_priority(priority);
                    let expected = n == 0 || (n as f64) < f64::from(limit) * share;
                    let got = handle.try_acquire();
                    assert_eq!(
                        got.is_ok(),
                        expected,
                        "limit {limit}, shares {default_share}/{sheddable_share}: \
                         {priority:?} with {n} in flight"
                    );
                    if got.is_err() && refused_at[i].is_none() {
                        refused_at[i] = Some(n);
                    }
                    drop(got); // cancelled: frees the slot at once
                    assert_eq!(observer.in_flight(), n);
                }
                if n < limit as usize {
                    // Taken through a handle dropped at once: the permit still counts.
                    held.push(
                        limiter
                            .with_priority(Priority::Critical)
                            .try_acquire()
                            .unwrap(),
                    );
                }
            }
            let at = |i: usize| refused_at[i].unwrap_or(usize::MAX);
            assert!(at(2) <= at(1) && at(1) <= at(0), "{refused_at:?}");
            assert_eq!(at(0), limit as usize, "critical has the whole limit");
            drop(limiter);
            drop(held);
            assert_eq!(observer.in_flight(), 0);
        }
    }
}

// === reconfiguration under held permits ====================================================

// Docs (reconfigure): "Calls in flight keep their slots, and their samples go to the new
// algorithm when they end; a limit below what is held admits nobody new, queued callers
// included, until enough slots come back".
#[test]
fn permits_held_across_reconfigure_teach_the_new_algorithm_even_from_another_thread() {
    let clock = FakeClock::new();
    let (old, old_watch) = Watched::new(Scripted::new(6));
    let limiter = queued(&clock, old, 2);
    let observer = limiter.clone();
    let held: Vec<_> = (0..6).map(|_| limiter.try_acquire().unwrap()).collect();
    let mut waiter = Box::pin(limiter.admit(Wait::Until(Deadline::none())));
    assert!(poll_once(waiter.as_mut()).is_pending());
    let (new, new_watch) = Watched::new(Scripted::new(2));
    limiter
        .reconfigure(AdaptiveLimiter::builder(new).max_queue(2).max_wait(None))
        .unwrap();
    assert_eq!(
        (observer.limit(), observer.in_flight()),
        (2, 6),
        "nothing revoked"
    );
    drop(limiter);
    clock.advance(ms(5));
    let mut held = held.into_iter();
    let moved: Vec<_> = held.by_ref().take(3).collect();
    std::thread::spawn(move || {
        for p in moved {
            p.success();
        }
    })
    .join()
    .unwrap();
    assert_eq!(
        old_watch.samples.load(SeqCst),
        0,
        "the old algorithm is out"
    );
    assert_eq!(new_watch.samples.load(SeqCst), 3);
    assert_eq!(observer.in_flight(), 3);
    assert!(
        poll_once(waiter.as_mut()).is_pending(),
        "3 held of a limit of 2: the queued caller is not admitted"
    );
    held.next().unwrap().failure();
    assert!(poll_once(waiter.as_mut()).is_pending(), "2 of 2");
    drop(held.next());
    let Poll::Ready(Ok(guard)) = poll_once(waiter.as_mut()) else {
        panic!("1 of 2 in flight: the waiter is admitted");
    };
    drop(waiter);
    clock.advance(ms(3));
    <OnFake<Watched<Scripted>> as Admission>::finish(guard, Outcome::Failure);
    // Docs (module): "the calls in flight when it was admitted (a queued caller's: when its
    // slot was granted)"; (AdaptiveAdmit): "timed from the moment it admits".
    let last = *new_watch.log.lock().unwrap().last().unwrap();
    assert_eq!(
        (last.rtt, last.inflight, last.dropped),
        (ms(3), 2, true),
        "a waiter's sample: timed from its grant, in flight counted then"
    );
    drop(held);
    assert_eq!((observer.in_flight(), observer.queued()), (0, 0));
    assert_eq!(new_watch.samples.load(SeqCst), 5);
    assert_eq!(new_watch.drops.load(SeqCst), 2);
    drop(observer);
    assert_eq!(
        (old_watch.alive.load(SeqCst), new_watch.alive.load(SeqCst)),
        (0, 0),
        "nothing leaked"
    );
}

// === keyed =================================================================================

// Docs (KeyedAdaptiveLimiter): "A key with anything out is never forgotten"; a key "with no
// permit out, no waiter queued and no handle from `get` held ... may be forgotten ... (and by
// `retain_in_use`)"; "its calls teach its algorithm alone".
#[test]
fn keyed_permits_pin_their_key_outlive_the_table_and_end_on_other_threads() {
    let clock = FakeClock::new();
    let table = AdaptiveLimiter::builder(aimd(1, 4, 10, 0.5, Duration::from_secs(1)))
        .runtime(clock.clone())
        .keyed()
        .max_keys(8)
        .build::<u32>()
        .unwrap();
    let mut held = Vec::new();
    for key in 0..4_u32 {
        for _ in 0..=key {
            held.push((key, table.try_acquire(&key).unwrap()));
        }
    }
    assert_eq!(table.retain_in_use(), 0, "every key has a permit out");
    let mut rng = Rng::new(99);
    let mut back = Vec::new();
    // Key 3's permits go to a thread and fail there: only key 3 backs off.
    let (three, rest): (Vec<_>, Vec<_>) = held.into_iter().partition(|(k, _)| *k == 3);
    std::thread::spawn(move || {
        for (_, p) in three {
            p.failure();
        }
    })
    .join()
    .unwrap();
    assert_eq!(table.limit(&3), Some(1), "4 → 2 → 1 → 1 → 1");
    assert_eq!(table.in_flight(&3), 0);
    assert_eq!(table.limit(&2), Some(4));
    assert_eq!(table.retain_in_use(), 1, "key 3 is idle now and may go");
    assert_eq!(table.limit(&3), None);
    for (k, p) in rest {
        if rng.below(2) == 0 {
            back.push((k, p));
        } else {
            p.ignore();
        }
    }
    let busy: usize = table.busy().iter().map(|(_, n)| n).sum();
    assert_eq!(busy, back.len());
    // A key's handle in a pipeline outlives the table too; its calls still admit and end.
    let handle = table.get(&9).unwrap();
    let observer = handle.clone();
    let pipeline = Pipeline::builder()
        .runtime(clock.clone())
        .bulkhead(handle)
        .build()
        .unwrap();
    // The table goes; its permits end later, on another thread.
    drop(table);
    std::thread::spawn(move || {
        for (i, (_, p)) in back.into_iter().enumerate() {
            ENDS[i % ENDS.len()].apply(p);
        }
    })
    .join()
    .expect("keyed permits outliving their table panicked");
    for x in 0..20_u32 {
        let mut call =
            Box::pin(pipeline.call(move || async move { if x % 3 == 0 { Err(x) } else { Ok(x) } }));
        let Poll::Ready(out) = poll_once(call.as_mut()) else {
            panic!("a call that waits for nothing completes at once");
        };
        assert_eq!(out.is_ok(), x % 3 != 0, "{out:?}");
        assert_eq!(observer.in_flight(), 0);
    }
    let limit = observer.limit();
    assert!((1..=10).contains(&limit), "{limit}");
}

// === seeded storms through the pipeline and the tower layer ================================

/// Runs `fut`, or drops it at a seeded point: after some virtual time, or after some polls.
async fn maybe_cancel<R: Clock, F: Future>(rt: &R, draw: u64, fut: F) -> Option<F::Output> {
    match draw % 4 {
        0 | 1 => Some(fut.await),
        2 => fut.timeout_on(rt, ms(draw % 30)).await.ok(),
        _ => {
            let mut fut = Box::pin(fut);
            let mut left = (draw >> 8) % 4;
            poll_fn(move |cx| match fut.as_mut().poll(cx) {
                Poll::Ready(out) => Poll::Ready(Some(out)),
                Poll::Pending if left == 0 => Poll::Ready(None),
                Poll::Pending => {
                    left -= 1;
                    Poll::Pending
                }
            })
            .await
        }
    }
}

#[derive(Default)]
struct Told {
    success: AtomicU64,
    failure: AtomicU64,
    calls: AtomicU64,
}

// Docs (module): "It is an Admission stage: in a pipeline (as its bulkhead, told how each call
// ended: one sample per call ...)"; (PipelineBuilder::rate_limit): "any other Admission stage";
// (Admission::finish): Success, Failure (the classifier's failures), Ignored (the classifier's
// verdict), "A guard dropped without it (a cancelled call) teaches nothing". Thousands of calls,
// random outcomes, random drop points, random idle gaps: every slot comes back, the queue
// empties, each told call is one sample, and the limit never leaves [min, max].
#[test]
fn a_seeded_pipeline_storm_returns_every_slot_and_keeps_aimd_within_bounds() {
    common::on_tokio_current_thread(|rt| async move {
        let (algo, watch) = Watched::new(aimd(2, 8, 24, 0.5, ms(20)));
        let limiter = AdaptiveLimiter::builder(algo)
            .max_queue(3)
            .max_wait(ms(15))
            .runtime(rt.clone())
            .build()
            .unwrap();
        // The front's limit is scripted to jump around under load (1 to 12).
        let script = Scripted::new(12);
        let mut draws = Rng::new(0xF207);
        for _ in 0..2_000 {
            script.then(1 + u32::try_from(draws.below(12)).unwrap());
        }
        let (front_algo, front_watch) = Watched::new(script);
        let front = AdaptiveLimiter::builder(front_algo)
            .max_queue(2)
            .max_wait(ms(10))
            .runtime(rt.clone())
            .build()
            .unwrap();
        let pipelines: Vec<_> = [Priority::Critical, Priority::Default, Priority::Sheddable]
            .into_iter()
            .map(|priority| {
                Pipeline::builder()
                    .runtime(rt.clone())
                    .rate_limit(front.with_priority(priority))
                    .bulkhead(limiter.with_priority(priority))
                    .classify(|r: Result<&u64, &u64>| match r {
                        Ok(_) => Verdict::Success,
                        Err(e) if e % 3 == 0 => Verdict::Ignored,
                        Err(_) => Verdict::Failure,
                    })
                    .build()
                    .unwrap()
            })
            .collect();
        let told = Arc::new(Told::default());
        let tasks = (0..16_u64).map(|task| {
            let (rt, limiter, told) = (rt.clone(), limiter.clone(), told.clone());
            let pipelines = &pipelines;
            async move {
                let mut rng = Rng::new(0x5EED ^ ((task + 1) * 0x9E37));
                for _ in 0..200 {
                    if rng.below(50) == 0 {
                        rt.sleep(DAY).await; // a long idle gap
                    } else {
                        rt.sleep(ms(rng.below(6))).await;
                    }
                    let pipeline = &pipelines[rng.index(3)];
                    let (work, result) = (rng.below(40), rng.next());
                    let (rt2, limiter2) = (rt.clone(), limiter.clone());
                    let call = pipeline.call(move || {
                        let (rt, limiter) = (rt2.clone(), limiter2.clone());
                        async move {
                            assert!(limiter.in_flight() >= 1, "the call holds a slot");
                            rt.sleep(ms(work)).await;
                            if result % 4 == 0 {
                                Err(result)
                            } else {
                                Ok(result)
                            }
                        }
                    });
                    told.calls.fetch_add(1, SeqCst);
                    match maybe_cancel(&rt, rng.next(), call).await {
                        Some(Ok(_)) => {
                            told.success.fetch_add(1, SeqCst);
                        }
                        Some(Err(Error::Inner(e))) if e % 3 != 0 => {
                            told.failure.fetch_add(1, SeqCst);
                        }
                        Some(Err(Error::Inner(_) | Error::Rejected(_))) | None => {}
                        Some(Err(other)) => panic!("unexpected {other:?}"),
                    }
                    let limit = limiter.limit();
                    assert!((2..=24).contains(&limit), "{limit}");
                }
            }
        });
        futures_util::future::join_all(tasks).await;
        assert_eq!(told.calls.load(SeqCst), 16 * 200);
        assert_eq!((limiter.in_flight(), limiter.queued()), (0, 0));
        assert_eq!((front.in_flight(), front.queued()), (0, 0));
        let (s, f) = (told.success.load(SeqCst), told.failure.load(SeqCst));
        assert!(
            s > 300 && f > 50,
            "a storm worth the name: {s} ok, {f} failed"
        );
        assert_eq!(
            watch.samples.load(SeqCst),
            s + f,
            "one sample per told call"
        );
        assert_eq!(
            watch.drops.load(SeqCst),
            f,
            "failures and only failures are drops"
        );
        assert_eq!(watch.out_of_bounds.load(SeqCst), 0);
        assert!(front_watch.samples.load(SeqCst) <= s + f);
        drop((pipelines, limiter, front));
        assert_eq!(
            (watch.alive.load(SeqCst), front_watch.alive.load(SeqCst)),
            (0, 0),
            "nothing leaked"
        );
    });
}

type Reply = Result<u64, Error<u64>>;

// Docs (AdmitLayer): "The stage's guard (a bulkhead slot) is held until the response future
// completes, or is dropped with it"; (module): "behind AdmitLayer (an error is a failure ...)";
// (AdmitMode::WaitReady): "the guard taken there ... is held until the call's response future
// completes", "A caller that stops polling (a `ready()` given up) does not end the wait";
// (AdmitService): "A clone shares the stage and starts with nothing admitted"; (ResponseFuture):
// "dropping it drops the pending admission (leaving a bulkhead's queue) or the guard (freeing
// the slot); nothing is held afterwards".
#[test]
fn a_seeded_tower_storm_in_every_mode_returns_every_slot_and_guard() {
    for (m, mode) in [AdmitMode::Reject, AdmitMode::WaitReady, AdmitMode::WaitCall]
        .into_iter()
        .enumerate()
    {
        common::on_tokio_current_thread(|rt| async move {
            let seed = m as u64;
            if mode == AdmitMode::WaitReady {
                let vegas = Vegas::builder()
                    .min_limit(1)
                    .initial_limit(6)
                    .max_limit(20)
                    .build()
                    .unwrap();
                storm_mode(rt, mode, seed, vegas).await;
            } else {
                let gradient = Gradient2::builder()
                    .min_limit(1)
                    .initial_limit(6)
                    .max_limit(20)
                    .build()
                    .unwrap();
                storm_mode(rt, mode, seed, gradient).await;
            }
        });
    }
}

async fn storm_mode<A: LimitAlgorithm + Clone + Send + Sync + 'static>(
    rt: Clocked<Tokio>,
    mode: AdmitMode,
    seed: u64,
    algo: A,
) {
    let (algo, watch) = Watched::new(algo);
    let limiter = AdaptiveLimiter::builder(algo)
        .max_queue(3)
        .max_wait(ms(25))
        .runtime(rt.clone())
        .build()
        .unwrap();
    let sleeper = rt.clone();
    let inner = tower::service_fn(move |x: u64| {
        let rt = sleeper.clone();
        async move {
            rt.sleep(ms(x % 35)).await;
            if x.is_multiple_of(5) {
                Err(Error::Inner(x))
            } else {
                Ok(x)
            }
        }
    });
    let told = Arc::new(Told::default());
    let mut layer = AdmitLayer::new(limiter.clone(), mode).runtime(rt.clone());
    if seed == 2 {
        layer = layer.max_wait(ms(20)); // the layer's own bound on the wait, too
    }
    let template = layer.layer(inner);
    let callers = (0..12_u64).map(|caller| {
        let (rt, told, limiter) = (rt.clone(), told.clone(), limiter.clone());
        let template = template.clone();
        async move {
            let mut rng = Rng::new((seed + 1) * 0xC0FFEE + caller);
            let mut svc = template.clone();
            for _ in 0..100 {
                if rng.below(40) == 0 {
                    rt.sleep(DAY).await;
                } else {
                    rt.sleep(ms(rng.below(5))).await;
                }
                let x = rng.next();
                told.calls.fetch_add(1, SeqCst);
                // Get ready, or give up on readiness after a few polls.
                let ready = {
                    let svc = &mut svc;
                    maybe_cancel(&rt, rng.next() | 1, poll_fn(|cx| svc.poll_ready(cx))).await
                };
                match ready {
                    Some(Ok(())) => {}
                    Some(Err(e)) => panic!("poll_ready failed: {e:?}"),
                    None => {
                        // Given up; sometimes the service goes too (its wait or guard with it).
                        if rng.below(2) == 0 {
                            svc = template.clone();
                        }
                        continue;
                    }
                }
                match rng.below(8) {
                    0 => {
                        // Ready, then dropped without a call: the guard must go with it.
                        svc = template.clone();
                        continue;
                    }
                    1 => {
                        // Ready, then the clone that calls is a fresh one (breach of the
                        // contract: refused or admitted at once, never a leak).
                        let mut fresh = template.clone();
                        let out: Option<Reply> = maybe_cancel(&rt, 0, fresh.call(x)).await;
                        record(&told, out);
                        continue;
                    }
                    _ => {}
                }
                let out = maybe_cancel(&rt, rng.next(), svc.call(x)).await;
                record(&told, out);
                let limit = limiter.limit();
                assert!((1..=20).contains(&limit), "{limit}");
            }
            drop(svc);
        }
    });
    futures_util::future::join_all(callers).await;
    drop((template, layer));
    assert_eq!(told.calls.load(SeqCst), 1_200);
    assert_eq!(
        (limiter.in_flight(), limiter.queued()),
        (0, 0),
        "{mode:?}: every guard and waiter is gone"
    );
    let (s, f) = (told.success.load(SeqCst), told.failure.load(SeqCst));
    assert!(s > 100 && f > 10, "{mode:?}: {s} ok, {f} failed");
    assert_eq!(
        watch.samples.load(SeqCst),
        s + f,
        "{mode:?}: one sample per answer"
    );
    assert_eq!(watch.drops.load(SeqCst), f, "{mode:?}");
    assert_eq!(watch.out_of_bounds.load(SeqCst), 0);
    drop(limiter);
    assert_eq!(watch.alive.load(SeqCst), 0, "{mode:?}: nothing leaked");
}

fn record(told: &Told, out: Option<Reply>) {
    match out {
        Some(Ok(_)) => {
            told.success.fetch_add(1, SeqCst);
        }
        Some(Err(Error::Inner(_))) => {
            told.failure.fetch_add(1, SeqCst);
        }
        Some(Err(Error::Rejected(_))) | None => {}
        Some(Err(other)) => panic!("unexpected {other:?}"),
    }
}

// === tower: targeted =======================================================================

// Docs (AdmitMode::WaitReady): "the guard taken there (a bulkhead slot) is held until the
// call's response future completes"; (AdmitLayer): "or is dropped with it"; (AdmitService): "A
// clone shares the stage and starts with nothing admitted". A service admitted in poll_ready
// and dropped must free its slot for the next waiter, even after every limiter handle and the
// layer are gone.
#[test]
fn wait_ready_services_dropped_after_admission_release_their_guards() {
    common::on_tokio_current_thread(|rt| async move {
        let (algo, watch) = Watched::new(Scripted::new(1));
        let limiter = queued(&rt, algo, 2);
        let observer = limiter.clone();
        let inner = tower::service_fn(|x: u64| async move { Ok::<_, Error<u64>>(x) });
        let layer = AdmitLayer::new(limiter, AdmitMode::WaitReady).runtime(rt.clone());
        let mut a = layer.layer(inner);
        let mut b = a.clone();
        let mut c = a.clone();
        drop(layer);
        let cx = &mut Context::from_waker(Waker::noop());
        assert!(a.poll_ready(cx).is_ready());
        assert_eq!(observer.in_flight(), 1);
        assert!(b.poll_ready(cx).is_pending(), "limit 1, held by a");
        assert_eq!(observer.queued(), 1);
        drop(a); // admitted, never called
        assert!(
            matches!(b.poll_ready(cx), Poll::Ready(Ok(()))),
            "a's slot went to b"
        );
        assert_eq!((observer.in_flight(), observer.queued()), (1, 0));
        assert!(c.poll_ready(cx).is_pending());
        // b's call completes: its guard goes to c; c is dropped while admitted.
        assert_eq!(b.call(5).await, Ok(5));
        assert!(c.poll_ready(cx).is_ready());
        assert_eq!(observer.in_flight(), 1);
        drop(c);
        drop(b);
        assert_eq!((observer.in_flight(), observer.queued()), (0, 0));
        assert_eq!(watch.samples.load(SeqCst), 1, "only b's call taught");
        drop(observer);
        assert_eq!(watch.alive.load(SeqCst), 0, "nothing leaked");
    });
}

// Docs (ResponseFuture): "Cancel safety: dropping it drops the pending admission (leaving a
// bulkhead's queue) or the guard (freeing the slot); nothing is held afterwards"; (Admission::
// finish): "A guard dropped without it (a cancelled call) teaches nothing".
#[test]
fn tower_response_futures_dropped_mid_call_or_mid_wait_hold_and_teach_nothing() {
    common::on_tokio_current_thread(|rt| async move {
        for mode in [AdmitMode::Reject, AdmitMode::WaitReady, AdmitMode::WaitCall] {
            let (algo, watch) = Watched::new(Scripted::new(1));
            let limiter = queued(&rt, algo, 2);
            let sleeper = rt.clone();
            let inner = tower::service_fn(move |x: u64| {
                let rt = sleeper.clone();
                async move {
                    rt.sleep(ms(10)).await;
                    Ok::<_, Error<u64>>(x)
                }
            });
            let mut svc = AdmitLayer::new(limiter.clone(), mode)
                .runtime(rt.clone())
                .layer(inner);
            let cx = &mut Context::from_waker(Waker::noop());
            assert!(svc.poll_ready(cx).is_ready());
            let mut running = Box::pin(svc.call(1));
            assert!(running.as_mut().poll(cx).is_pending());
            assert_eq!(limiter.in_flight(), 1, "{mode:?}");
            if mode == AdmitMode::WaitCall {
                // A second call waits in its response future; dropped there, it leaves the queue.
                let mut other = svc.clone();
                assert!(other.poll_ready(cx).is_ready());
                let mut waiting = Box::pin(other.call(2));
                assert!(waiting.as_mut().poll(cx).is_pending());
                assert_eq!(limiter.queued(), 1, "{mode:?}");
                drop(waiting);
                assert_eq!(limiter.queued(), 0, "{mode:?}");
            }
            rt.sleep(ms(5)).await;
            drop(running);
            assert_eq!((limiter.in_flight(), limiter.queued()), (0, 0), "{mode:?}");
            assert_eq!(
                watch.samples.load(SeqCst),
                0,
                "{mode:?}: cancelled teaches nothing"
            );
            drop((svc, limiter));
            assert_eq!(watch.alive.load(SeqCst), 0, "{mode:?}: nothing leaked");
        }
    });
}

// === long idle gaps on paused tokio time ===================================================

// Docs (module, Time): "in a test, build the limiter after pausing tokio's time, inside the
// paused runtime"; "When a call ends, its time since admission ... go to the algorithm"; AIMD:
// "a call that found at least half the limit in use adds one", "one slower than `timeout`
// multiplies the limit by `backoff_ratio`"; ignored and cancelled calls teach nothing.
#[tokio::test(start_paused = true)]
async fn days_of_idle_virtual_time_between_calls_are_not_latency() {
    let limiter = AdaptiveLimiter::builder(aimd(1, 10, 20, 0.5, Duration::from_secs(1)))
        .build()
        .unwrap();
    for round in 0..5 {
        tokio::time::advance(DAY * 3).await;
        // At least half of the limit in flight, this call included.
        let half = limiter.limit().div_ceil(2);
        let others: Vec<_> = (1..half).map(|_| limiter.try_acquire().unwrap()).collect();
        let permit = limiter.try_acquire().unwrap();
        tokio::time::advance(ms(5)).await;
        permit.success();
        assert_eq!(
            limiter.limit(),
            11 + round,
            "round {round}: days idle are not latency"
        );
        drop(others);
    }
    assert_eq!(limiter.limit(), 15);
    // Held across days and ignored, or cancelled: nothing.
    let (ignored, cancelled) = (
        limiter.try_acquire().unwrap(),
        limiter.try_acquire().unwrap(),
    );
    tokio::time::advance(DAY * 7).await;
    ignored.ignore();
    drop(cancelled);
    assert_eq!(limiter.limit(), 15);
    // Held across a day and reported a success: slower than the timeout, a drop.
    let slow = limiter.try_acquire().unwrap();
    tokio::time::advance(DAY).await;
    slow.success();
    assert_eq!(limiter.limit(), 7);
    // Through a pipeline after a month idle: calls take 5 ms, one at a time, limit unchanged.
    let pipeline = Pipeline::builder()
        .bulkhead(limiter.clone())
        .build()
        .unwrap();
    for _ in 0..3 {
        tokio::time::advance(DAY * 30).await;
        pipeline
            .call(|| async {
                tokio::time::sleep(ms(5)).await;
                Ok::<_, ()>(())
            })
            .await
            .unwrap();
    }
    assert_eq!(limiter.limit(), 7, "one call at a time is idle");
    assert_eq!((limiter.in_flight(), limiter.queued()), (0, 0));
}

// === threads swapping permits ==============================================================

// Docs (AdaptivePermit): "Record how it ended with success, failure or ignore; dropped without
// one (a cancelled call), it frees the slot"; (module): "Updates are made one at a time, under
// the algorithm's lock, except for a sample that the algorithm says would leave it exactly as
// it is". Four threads take permits and pass them to one another over channels, so most end
// on a thread other than the one that took them, while the handles that took them are dropped
// along the way. Whatever the interleaving: every told call is one sample, the limit stays
// within bounds, and every slot comes back.
#[test]
fn permits_passed_between_threads_lose_no_slot_and_no_sample() {
    use std::sync::mpsc;
    let clock = FakeClock::new();
    let (algo, watch) = Watched::new(aimd(2, 6, 40, 0.75, ms(4)));
    let limiter = on_fake(&clock, algo);
    let told = Arc::new(Told::default());
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..4)
        .map(|_| mpsc::channel::<AdaptivePermit<Watched<Aimd>, FakeClock>>())
        .unzip();
    let threads: Vec<_> = receivers
        .into_iter()
        .enumerate()
        .map(|(t, inbox)| {
            let handle = limiter.with_priority(Priority::ALL[t % 3]);
            let (senders, clock, told) = (senders.clone(), clock.clone(), told.clone());
            std::thread::spawn(move || {
                let mut handle = Some(handle);
                let mut rng = Rng::new(0xBEEF + t as u64);
                for i in 0..2_000 {
                    if i == 1_000 {
                        handle = None; // permits it took are still out there
                    }
                    if let Some(Ok(p)) = handle.as_ref().map(AdaptiveLimiter::try_acquire) {
                        senders[rng.index(4)].send(p).unwrap();
                    }
                    if rng.below(5) == 0 {
                        clock.advance(Duration::from_micros(rng.below(3_000)));
                    }
                    while let Ok(p) = inbox.try_recv() {
                        let end = ENDS[rng.index(ENDS.len())];
                        match end.teaches() {
                            Some(false) => told.success.fetch_add(1, SeqCst),
                            Some(true) => told.failure.fetch_add(1, SeqCst),
                            None => 0,
                        };
                        end.apply(p);
                    }
                }
                drop(senders);
                // Drain what is left once every sender is gone.
                for p in inbox {
                    told.calls.fetch_add(1, SeqCst);
                    p.success();
                }
            })
        })
        .collect();
    drop(senders);
    let observer = limiter.clone();
    drop(limiter);
    for t in threads {
        t.join().expect("a thread ending permits panicked");
    }
    let (s, f) = (told.success.load(SeqCst), told.failure.load(SeqCst));
    let late = told.calls.load(SeqCst);
    assert_eq!((observer.in_flight(), observer.queued()), (0, 0));
    assert_eq!(watch.samples.load(SeqCst), s + f + late);
    assert_eq!(watch.drops.load(SeqCst), f);
    assert_eq!(watch.out_of_bounds.load(SeqCst), 0);
    assert!((2..=40).contains(&observer.limit()), "{}", observer.limit());
    drop(observer);
    assert_eq!(watch.alive.load(SeqCst), 0, "nothing leaked");
}

// Docs (KeyedAdaptiveLimiter): "A key with no permit out, no waiter queued and no handle from
// `get` held ... may be forgotten whenever a shard fills up ... A key with anything out is
// never forgotten: a new key meeting a table ... full of busy keys is refused with
// `Rejected::KeysFull`"; (max_keys): "at exactly `max_keys` below 512 keys (one shard)". A
// permit is the only thing keeping its key (no handle held): the key and what it learned stay.
#[test]
fn a_keyed_permit_alone_keeps_its_key_and_its_learned_limit_through_evictions() {
    let clock = FakeClock::new();
    let table = AdaptiveLimiter::builder(aimd(1, 8, 10, 0.5, Duration::from_secs(1)))
        .runtime(clock.clone())
        .keyed()
        .max_keys(2)
        .build::<&str>()
        .unwrap();
    table.try_acquire(&"a").unwrap().failure();
    assert_eq!(table.limit(&"a"), Some(4), "a learned");
    let a = table.try_acquire(&"a").unwrap();
    drop(table.try_acquire(&"b").unwrap());
    // The table is full (a, b); c makes room by forgetting b, never a.
    let c = table.try_acquire(&"c").expect("b is idle and may go");
    assert_eq!(
        table.limit(&"a"),
        Some(4),
        "a's permit keeps a and what it learned"
    );
    assert_eq!(table.limit(&"b"), None);
    let refused = table.try_acquire(&"d").unwrap_err();
    assert!(
        matches!(refused, Rejected::KeysFull { .. }),
        "a and c both have a permit out: {refused:?}"
    );
    // a's permit ends on another thread; then d may take a's place.
    std::thread::spawn(move || a.ignore()).join().unwrap();
    assert_eq!(table.in_flight(&"a"), 0);
    let d = table.try_acquire(&"d").expect("a is idle now");
    assert_eq!(table.limit(&"a"), None, "forgotten with what it learned");
    assert_eq!(table.in_flight(&"c"), 1);
    drop(table);
    c.success();
    d.failure();
}

// Docs (Admission::finish): "A guard dropped without it (a cancelled call) teaches nothing";
// (AdmitLayer): "The stage's guard (a bulkhead slot) is held until the response future
// completes, or is dropped with it". A call that panics unwinds through the pipeline's and the
// layer's futures: the guard goes with them, the slot comes back, nothing is taught.
#[test]
fn a_panicking_call_through_pipeline_or_layer_frees_its_slot_and_teaches_nothing() {
    use futures_util::FutureExt as _;
    common::on_tokio_current_thread(|rt| async move {
        let (algo, watch) = Watched::new(Scripted::new(2));
        let limiter = AdaptiveLimiter::builder(algo)
            .runtime(rt.clone())
            .build()
            .unwrap();
        let pipeline = Pipeline::builder()
            .runtime(rt.clone())
            .bulkhead(limiter.clone())
            .build()
            .unwrap();
        let sleeper = rt.clone();
        let unwound = AssertUnwindSafe(pipeline.call(move || {
            let rt = sleeper.clone();
            async move {
                rt.sleep(ms(3)).await;
                if rt.clock().elapsed() > Duration::ZERO {
                    panic!("the operation panics mid-call");
                }
                Ok::<u32, u32>(1)
            }
        }))
        .catch_unwind()
        .await;
        assert!(unwound.is_err());
        assert_eq!((limiter.in_flight(), watch.samples.load(SeqCst)), (0, 0));
        for mode in [AdmitMode::Reject, AdmitMode::WaitReady, AdmitMode::WaitCall] {
            let inner = tower::service_fn(|x: u64| async move {
                if x > 0 {
                    panic!("the inner service panics");
                }
                Ok::<_, Error<u64>>(x)
            });
            let mut svc = AdmitLayer::new(limiter.clone(), mode)
                .runtime(rt.clone())
                .layer(inner);
            poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
            let unwound = AssertUnwindSafe(svc.call(1)).catch_unwind().await;
            assert!(unwound.is_err(), "{mode:?}");
            assert_eq!(limiter.in_flight(), 0, "{mode:?}");
            assert_eq!(watch.samples.load(SeqCst), 0, "{mode:?}");
        }
        assert_eq!(pipeline.call(|| async { Ok::<_, ()>(5) }).await, Ok(5));
        assert_eq!(watch.samples.load(SeqCst), 1, "the limiter still works");
    });
}
