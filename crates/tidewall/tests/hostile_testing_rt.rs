//! Hostile black-box tests for `tidewall::testing` (FakeClock, Clocked, Scripted), `tidewall::rt`
//! (the Clock/Spawn/TaskHandle seam on Tokio, Smol and AsyncStd, `instant_after`) and
//! `tidewall::hedge` used directly.
//!
//! Written from the rustdoc alone (no implementation was read): each test names the documented
//! contract it attacks — a FakeClock advanced by zero, by a century or by `Duration::MAX`, timers
//! registered while the clock advances, sleeps of `Duration::MAX`, many timers at one instant,
//! join handles aborted or dropped at seeded virtual instants, panic payloads that are not
//! strings, blocking tasks aborted mid-run, hedges whose primary answers or fails exactly when a
//! hedge is due, and whole hedged calls dropped at seeded points with every attempt checked
//! dropped. Virtual time and seeded randomness only; real threads only where the assertion holds
//! whatever the timing.
#![cfg(all(
    feature = "test-util",
    feature = "tokio",
    feature = "smol",
    feature = "async-std"
))]

mod common;

use std::any::Any;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, mpsc};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use common::ms;
use tidewall::hedge::{Hedge, Idempotent};
use tidewall::rt::{
    AsyncStd, Clock, JoinError, Runtime, SmolRuntime, Spawn, TaskHandle, Tokio, instant_after,
};
use tidewall::testing::{Clocked, FakeClock, FakeSleep, Scripted};
use tidewall_core::rng::SplitMix64;

const YEAR: Duration = Duration::from_secs(365 * 86_400);

fn years(n: u32) -> Duration {
    YEAR * n
}

fn describe(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a non-string panic".to_owned())
}

/// Runs one runtime's scenario, recording its panic (if any) under `name`, so that a test
/// reports every runtime that breaks a contract, not only the first.
fn attempt(failures: &mut Vec<String>, name: &str, run: impl FnOnce()) {
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        failures.push(format!("{name}: {}", describe(&*panic)));
    }
}

/// Runs `$scenario` (a generic `async fn(rt: R) where R: Runtime`) on every raw adapter,
/// without virtual time.
macro_rules! raw_runtimes {
    ($failures:expr, $scenario:expr) => {{
        attempt($failures, "Tokio (multi-thread)", || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
                .block_on($scenario(Tokio));
        });
        attempt($failures, "Tokio (current-thread)", || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on($scenario(Tokio));
        });
        attempt($failures, "Smol (multi-threaded)", || {
            let runtime = SmolRuntime::multi_threaded(2).unwrap();
            let handle = runtime.handle();
            runtime.block_on($scenario(handle));
        });
        attempt($failures, "Smol (single-threaded)", || {
            let runtime = SmolRuntime::single_threaded();
            let handle = runtime.handle();
            runtime.block_on($scenario(handle));
        });
        attempt($failures, "AsyncStd", || {
            async_std::task::block_on($scenario(AsyncStd));
        });
    }};
}

/// Runs `$scenario` on every adapter wrapped in `Clocked` (virtual time), through the shared
/// helpers of `tests/common`.
macro_rules! clocked_runtimes {
    ($failures:expr, $scenario:expr) => {{
        attempt($failures, "Clocked<Tokio> (multi-thread)", || {
            common::on_tokio_multi_thread(|rt| $scenario(rt));
        });
        attempt($failures, "Clocked<Tokio> (current-thread)", || {
            common::on_tokio_current_thread(|rt| $scenario(rt));
        });
        attempt($failures, "Clocked<Smol> (multi-threaded)", || {
            common::on_smol_multi_thread(|rt| $scenario(rt));
        });
        attempt($failures, "Clocked<Smol> (single-threaded)", || {
            common::on_smol_single_thread(|rt| $scenario(rt));
        });
        attempt($failures, "Clocked<AsyncStd>", || {
            common::on_async_std(|rt| $scenario(rt));
        });
    }};
}

macro_rules! on_raw_runtimes {
    ($scenario:expr) => {{
        let mut failures = Vec::new();
        raw_runtimes!(&mut failures, $scenario);
        assert!(failures.is_empty(), "failed on: {failures:#?}");
    }};
}

macro_rules! on_clocked_runtimes {
    ($scenario:expr) => {{
        let mut failures = Vec::new();
        clocked_runtimes!(&mut failures, $scenario);
        assert!(failures.is_empty(), "failed on: {failures:#?}");
    }};
}

macro_rules! on_all_runtimes {
    ($scenario:expr) => {{
        let mut failures = Vec::new();
        raw_runtimes!(&mut failures, $scenario);
        clocked_runtimes!(&mut failures, $scenario);
        assert!(failures.is_empty(), "failed on: {failures:#?}");
    }};
}

// ---------------------------------------------------------------------------------------------
// Small helpers: wakers that record, drop flags, a FakeClock driver.
// ---------------------------------------------------------------------------------------------

struct Count(AtomicUsize);

impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, SeqCst);
    }
}

fn counting() -> (Arc<Count>, Waker) {
    let count = Arc::new(Count(AtomicUsize::new(0)));
    let waker = Waker::from(Arc::clone(&count));
    (count, waker)
}

struct Recorder {
    id: usize,
    log: Arc<Mutex<Vec<usize>>>,
}

impl Wake for Recorder {
    fn wake(self: Arc<Self>) {
        self.log.lock().unwrap().push(self.id);
    }
}

fn poll_with<F: Future + ?Sized>(fut: Pin<&mut F>, waker: &Waker) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(waker))
}

fn poll_noop<F: Future + ?Sized>(fut: Pin<&mut F>) -> Poll<F::Output> {
    poll_with(fut, Waker::noop())
}

struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

/// Counts itself alive until dropped.
struct Alive(Arc<AtomicUsize>);

impl Alive {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, SeqCst);
        Self(Arc::clone(count))
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// Panics with `payload` when `really` (a value, so no code after the call is unreachable).
fn boom_if<P: Any + Send + 'static, T>(really: bool, payload: P, otherwise: T) -> T {
    if really {
        std::panic::panic_any(payload);
    }
    otherwise
}

/// Polls `fut` and jumps the clock to its next timer whenever it is pending: `Clocked::drive`
/// for a bare FakeClock.
fn drive_fake<F: Future + ?Sized>(clock: &FakeClock, mut fut: Pin<&mut F>) -> F::Output {
    for _ in 0..100_000 {
        if let Poll::Ready(out) = poll_noop(fut.as_mut()) {
            return out;
        }
        assert!(
            clock.advance_to_next_timer(),
            "the future is pending with no timer left to fire"
        );
    }
    panic!("the future never finished");
}

/// Greatest `Instant` reachable from `from` (by additions that halve on overflow).
fn latest_instant(from: Instant) -> Instant {
    let mut at = from;
    let mut step = Duration::MAX;
    while step > Duration::ZERO {
        match at.checked_add(step) {
            Some(next) => at = next,
            None => step /= 2,
        }
    }
    at
}

// ---------------------------------------------------------------------------------------------
// FakeClock
// ---------------------------------------------------------------------------------------------

#[test]
fn fake_clock_wakes_due_timers_in_deadline_order_whatever_the_registration_order() {
    for seed in 0..8 {
        let mut rng = SplitMix64::new(seed);
        let clock = FakeClock::new();
        let start = clock.now();
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut sleeps = Vec::new();
        let mut deadlines = Vec::new();
        for id in 0..40 {
            // 1..=12 ms: many equal deadlines, none already due.
            let deadline = start + ms(rng.between(1, 12));
            let mut sleep = Box::pin(clock.sleep_until(deadline));
            let waker = Waker::from(Arc::new(Recorder {
                id,
                log: Arc::clone(&log),
            }));
            assert!(poll_with(sleep.as_mut(), &waker).is_pending());
            sleeps.push(sleep);
            deadlines.push(deadline);
        }
        clock.advance(ms(12));
        let order = log.lock().unwrap().clone();
        let mut woken = order.clone();
        woken.sort_unstable();
        assert_eq!(
            woken,
            (0..40).collect::<Vec<_>>(),
            "seed {seed}: every timer once"
        );
        for pair in order.windows(2) {
            assert!(
                deadlines[pair[0]] <= deadlines[pair[1]],
                "seed {seed}: timer {} (due {:?}) woken before timer {} (due {:?})",
                pair[0],
                deadlines[pair[0]] - start,
                pair[1],
                deadlines[pair[1]] - start,
            );
        }
        for sleep in &mut sleeps {
            assert!(poll_noop(sleep.as_mut()).is_ready());
        }
    }
}

#[test]
fn fake_clock_advance_by_zero_moves_nothing_and_a_deadline_of_now_is_already_due() {
    let clock = FakeClock::new();
    let start = clock.now();
    let (count, waker) = counting();
    let mut later = Box::pin(clock.sleep_until(start + Duration::from_nanos(1)));
    assert!(poll_with(later.as_mut(), &waker).is_pending());
    for _ in 0..3 {
        clock.advance(Duration::ZERO);
    }
    assert_eq!(clock.now(), start);
    assert_eq!(clock.elapsed(), Duration::ZERO);
    assert_eq!(
        count.0.load(SeqCst),
        0,
        "a zero advance fired a future timer"
    );
    assert!(poll_with(later.as_mut(), &waker).is_pending());

    // "Completes at `deadline` (at once if it has passed)": now is the deadline.
    let mut now = Box::pin(clock.sleep_until(start));
    assert!(poll_noop(now.as_mut()).is_ready());
    let mut past = Box::pin(clock.sleep(Duration::ZERO));
    assert!(poll_noop(past.as_mut()).is_ready());

    clock.advance(Duration::from_nanos(1));
    assert_eq!(count.0.load(SeqCst), 1);
    assert!(poll_noop(later.as_mut()).is_ready());
}

#[test]
fn fake_clock_advance_by_a_century_is_exact_and_fires_every_timer_it_passes() {
    let clock = FakeClock::new();
    let start = clock.now();
    let (count, waker) = counting();
    let mut sleeps: Vec<_> = [ms(1), YEAR, years(50), years(100)]
        .into_iter()
        .map(|d| Box::pin(clock.sleep_until(start + d)))
        .collect();
    for sleep in &mut sleeps {
        assert!(poll_with(sleep.as_mut(), &waker).is_pending());
    }
    clock.advance(years(100));
    assert_eq!(clock.elapsed(), years(100));
    assert_eq!(clock.now(), start + years(100));
    assert_eq!(count.0.load(SeqCst), 4);
    for sleep in &mut sleeps {
        assert!(poll_noop(sleep.as_mut()).is_ready());
    }
}

#[test]
fn fake_clock_duration_max_sleeps_about_thirty_years_and_advancing_by_it_never_panics() {
    let clock = FakeClock::new();
    let start = clock.now();
    let (count, waker) = counting();
    let mut forever = Box::pin(clock.sleep(Duration::MAX));
    assert!(poll_with(forever.as_mut(), &waker).is_pending());
    assert_eq!(clock.pending_timers(), 1);
    let deadline = clock.next_timer().unwrap();
    assert!(deadline > start + years(29), "{:?}", deadline - start);
    assert!(deadline <= start + years(31), "{:?}", deadline - start);
    assert_eq!(deadline, instant_after(start, Duration::MAX));

    // `advance` documents no panic. How far an unrepresentable step moves is left open; it
    // must move at least as far as the "forever" sleep the same duration gives.
    clock.advance(Duration::MAX);
    assert!(clock.now() >= deadline, "{:?}", clock.elapsed());
    assert_eq!(count.0.load(SeqCst), 1, "the forever sleep was not woken");
    assert!(poll_noop(forever.as_mut()).is_ready());
    drop(forever);
    assert_eq!(clock.pending_timers(), 0);
    // Again and again, from wherever it got to: never a panic, never backwards.
    for _ in 0..4 {
        let before = clock.now();
        clock.advance(Duration::MAX);
        clock.advance(Duration::from_secs(1));
        assert!(clock.now() > before);
    }
    let mut after = Box::pin(clock.sleep(Duration::from_secs(3600)));
    assert!(poll_noop(after.as_mut()).is_pending());
    clock.advance(Duration::from_secs(3600));
    assert!(poll_noop(after.as_mut()).is_ready());
}

#[test]
fn fake_clock_advance_to_next_timer_fires_every_timer_of_the_earliest_instant_and_no_later_one() {
    let clock = FakeClock::new();
    let start = clock.now();
    assert!(!clock.advance_to_next_timer(), "no timer: must say false");
    assert_eq!(clock.now(), start, "no timer: time must not move");

    let t = start + ms(7);
    let mut counts = Vec::new();
    let mut sleeps = Vec::new();
    for deadline in [t, t + Duration::from_nanos(1), t, t] {
        let (count, waker) = counting();
        let mut sleep = Box::pin(clock.sleep_until(deadline));
        assert!(poll_with(sleep.as_mut(), &waker).is_pending());
        counts.push(count);
        sleeps.push(sleep);
    }
    assert_eq!(clock.pending_timers(), 4);
    assert_eq!(
        clock.timer_deadlines(),
        vec![t, t, t, t + Duration::from_nanos(1)]
    );
    assert_eq!(clock.next_timer(), Some(t));
    assert!(clock.advance_to_next_timer());
    assert_eq!(clock.now(), t);
    let fired: Vec<usize> = counts.iter().map(|c| c.0.load(SeqCst)).collect();
    assert_eq!(fired, vec![1, 0, 1, 1]);
    assert!(poll_noop(sleeps[1].as_mut()).is_pending());
    sleeps.remove(3);
    sleeps.remove(2);
    sleeps.remove(0);
    assert_eq!(clock.pending_timers(), 1);
    assert_eq!(clock.next_timer(), Some(t + Duration::from_nanos(1)));
    assert!(clock.advance_to_next_timer());
    assert_eq!(clock.now(), t + Duration::from_nanos(1));
    assert!(poll_noop(sleeps[0].as_mut()).is_ready());
}

#[test]
fn fake_sleep_wakes_the_waker_of_its_latest_poll() {
    let clock = FakeClock::new();
    let mut sleep = Box::pin(clock.sleep(ms(5)));
    let (_first, first_waker) = counting();
    let (second, second_waker) = counting();
    assert!(poll_with(sleep.as_mut(), &first_waker).is_pending());
    assert!(poll_with(sleep.as_mut(), &second_waker).is_pending());
    assert_eq!(
        clock.pending_timers(),
        1,
        "a re-poll registered a second timer"
    );
    clock.advance(ms(5));
    assert_eq!(
        second.0.load(SeqCst),
        1,
        "the waker of the latest poll was not woken (lost wake-up)"
    );
}

#[test]
fn fake_sleep_dropped_unregisters_its_timer_and_clones_share_the_timers() {
    let clock = FakeClock::new();
    let twin = clock.clone();
    let start = clock.now();
    let before = clock.pending_timers();
    drop(clock.sleep(ms(1))); // never polled, dropped at once
    assert_eq!(clock.pending_timers(), before);

    let mut a = Box::pin(clock.sleep_until(start + ms(3)));
    let mut b = Box::pin(twin.sleep_until(start + ms(1)));
    let mut c = Box::pin(clock.sleep_until(start + ms(2)));
    for sleep in [&mut a, &mut b, &mut c] {
        assert!(poll_noop(sleep.as_mut()).is_pending());
    }
    assert_eq!(twin.pending_timers(), 3);
    assert_eq!(
        twin.timer_deadlines(),
        vec![start + ms(1), start + ms(2), start + ms(3)]
    );
    drop(b);
    assert_eq!(clock.next_timer(), Some(start + ms(2)));
    assert_eq!(clock.timer_deadlines(), vec![start + ms(2), start + ms(3)]);
    twin.advance(ms(2));
    assert_eq!(clock.now(), twin.now());
    assert_eq!(clock.elapsed(), ms(2));
    assert!(poll_noop(c.as_mut()).is_ready());
    drop(c);
    drop(a);
    assert_eq!(clock.pending_timers(), 0);
    assert_eq!(clock.next_timer(), None);
    assert!(clock.timer_deadlines().is_empty());
    assert!(!twin.advance_to_next_timer());
}

/// A timer registered from inside a wake: its deadline, the sleep, whether that first poll
/// completed it.
type Registered = (Instant, Pin<Box<FakeSleep>>, bool);

/// A waker that calls back into the clock and registers a new timer while the clock is
/// advancing (what a task on another thread of a multi-threaded executor does).
struct Reentrant {
    clock: FakeClock,
    registered: Mutex<Option<Registered>>,
    inner: Arc<Count>,
}

impl Wake for Reentrant {
    fn wake(self: Arc<Self>) {
        let now = self.clock.now();
        let _ = (self.clock.pending_timers(), self.clock.next_timer());
        let _ = self.clock.timer_deadlines();
        let deadline = now + ms(1);
        let mut sleep = Box::pin(self.clock.sleep_until(deadline));
        let waker = Waker::from(Arc::clone(&self.inner));
        let ready = poll_with(sleep.as_mut(), &waker).is_ready();
        *self.registered.lock().unwrap() = Some((deadline, sleep, ready));
    }
}

#[test]
fn fake_clock_timer_registered_by_a_waker_during_advance_is_neither_deadlocked_nor_lost() {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let clock = FakeClock::new();
        let start = clock.now();
        let hook = Arc::new(Reentrant {
            clock: clock.clone(),
            registered: Mutex::new(None),
            inner: Arc::new(Count(AtomicUsize::new(0))),
        });
        let mut first = Box::pin(clock.sleep_until(start + ms(1)));
        assert!(poll_with(first.as_mut(), &Waker::from(Arc::clone(&hook))).is_pending());
        clock.advance(ms(10));
        let now = clock.now();
        let (deadline, mut second, ready_in_wake) = hook.registered.lock().unwrap().take().unwrap();
        let woken = hook.inner.0.load(SeqCst) > 0;
        // The timer registered mid-advance: if its deadline has been passed by this advance,
        // it must have completed in that poll or been woken; otherwise nobody ever wakes it.
        let lost_in_first = deadline <= now && !ready_in_wake && !woken;
        clock.advance(ms(1));
        let woken_later = hook.inner.0.load(SeqCst) > 0;
        let ready_now = poll_noop(second.as_mut()).is_ready();
        tx.send((
            now - start,
            deadline - start,
            lost_in_first,
            ready_in_wake || woken_later,
            ready_now,
        ))
        .unwrap();
    });
    let (now, deadline, lost, eventually_woken, ready) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("FakeClock::advance deadlocked (or panicked) when a waker called back into it");
    assert_eq!(now, ms(10));
    assert!(
        !lost,
        "timer due at {deadline:?}, registered during an advance to {now:?}, was never woken"
    );
    assert!(
        eventually_woken,
        "timer due at {deadline:?} never woken, even after a further advance"
    );
    assert!(ready);
}

struct Probe {
    deadline: Instant,
    sleep: Pin<Box<FakeSleep>>,
    wakes: Arc<Count>,
}

impl Probe {
    fn poll(&mut self) -> bool {
        let waker = Waker::from(Arc::clone(&self.wakes));
        poll_with(self.sleep.as_mut(), &waker).is_ready()
    }
}

#[test]
fn fake_clock_seeded_random_steps_complete_each_sleep_exactly_when_due_and_keep_the_books() {
    for seed in 0..24 {
        let mut rng = SplitMix64::new(seed);
        let clock = FakeClock::new();
        let start = clock.now();
        let mut live: Vec<Probe> = Vec::new();
        for step in 0..80 {
            for _ in 0..rng.below_or_equal(3) {
                let deadline = if rng.below_or_equal(1) == 0 {
                    clock.now() + Duration::from_micros(rng.below_or_equal(30_000))
                } else {
                    start + Duration::from_micros(rng.below_or_equal(60_000))
                };
                let mut probe = Probe {
                    deadline,
                    sleep: Box::pin(clock.sleep_until(deadline)),
                    wakes: Arc::new(Count(AtomicUsize::new(0))),
                };
                let ready = probe.poll();
                assert_eq!(ready, deadline <= clock.now(), "seed {seed} step {step}");
                if !ready {
                    live.push(probe);
                }
            }
            let mut expected: Vec<Instant> = live.iter().map(|p| p.deadline).collect();
            expected.sort_unstable();
            assert_eq!(
                clock.pending_timers(),
                live.len(),
                "seed {seed} step {step}"
            );
            assert_eq!(clock.timer_deadlines(), expected, "seed {seed} step {step}");
            assert_eq!(clock.next_timer(), expected.first().copied());

            let before = clock.now();
            match rng.below_or_equal(5) {
                0 => clock.advance(Duration::ZERO),
                1 => clock.advance(Duration::from_micros(rng.below_or_equal(5_000))),
                2 => {
                    let target = start + Duration::from_micros(rng.below_or_equal(90_000));
                    clock.advance_to(target);
                    assert_eq!(clock.now(), before.max(target), "seed {seed} step {step}");
                }
                3 => {
                    let next = clock.next_timer();
                    assert_eq!(clock.advance_to_next_timer(), next.is_some());
                    if let Some(next) = next {
                        assert_eq!(clock.now(), next.max(before), "seed {seed} step {step}");
                    }
                }
                4 => clock.advance(Duration::from_nanos(1)),
                _ => clock.advance_to(clock.now()),
            }
            let now = clock.now();
            assert!(
                now >= before,
                "seed {seed} step {step}: time went backwards"
            );
            live.retain_mut(|probe| {
                let due = probe.deadline <= now;
                if due {
                    assert!(
                        probe.wakes.0.load(SeqCst) > 0,
                        "seed {seed} step {step}: timer due at {:?} not woken at {:?}",
                        probe.deadline - start,
                        now - start
                    );
                }
                let ready = probe.poll();
                assert_eq!(ready, due, "seed {seed} step {step}");
                !ready
            });
        }
    }
}

#[test]
fn virtual_clocks_are_never_taken_for_real_time_while_adapters_follow_tokio_pause() {
    let clock = FakeClock::new();
    assert!(!clock.is_real_time());
    assert!(
        Tokio.is_real_time(),
        "outside a runtime: the machine's clock"
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        assert!(Tokio.is_real_time(), "unpaused tokio is real time");
        assert!(
            !Clocked::new(Tokio).is_real_time(),
            "Clocked<Tokio> reads a FakeClock, yet says it is the machine's clock"
        );
        assert!(!Clocked::new(AsyncStd).is_real_time());
        tokio::time::pause();
        assert!(!Tokio.is_real_time(), "paused tokio is not real time");
        tokio::time::resume();
        assert!(Tokio.is_real_time(), "answered anew after resume");
    });
    let smol = SmolRuntime::single_threaded();
    assert!(!Clocked::new(smol.handle()).is_real_time());
}

// ---------------------------------------------------------------------------------------------
// Clocked: virtual time on every runtime
// ---------------------------------------------------------------------------------------------

async fn forever_sleep_in_a_task<R: Runtime>(rt: Clocked<R>) {
    let start = rt.now();
    let child = rt.spawn({
        let rt = rt.clone();
        async move { rt.sleep(Duration::MAX).await }
    });
    child.await.unwrap();
    let waited = rt.now() - start;
    assert!(waited > years(29) && waited <= years(31), "{waited:?}");
    assert_eq!(rt.clock().pending_timers(), 0);
    // And again from thirty years on.
    let again = rt.now();
    rt.sleep(Duration::MAX).await;
    assert!(rt.now() - again > years(29));
}

#[test]
fn clocked_sleep_of_duration_max_ends_after_about_thirty_virtual_years_on_every_runtime() {
    on_clocked_runtimes!(forever_sleep_in_a_task);
}

async fn many_timers_at_one_instant<R: Runtime>(rt: Clocked<R>) {
    let start = rt.now();
    let deadline = start + ms(25);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for i in 0..64u32 {
        let rt2 = rt.clone();
        let seen = Arc::clone(&seen);
        handles.push(rt.spawn(async move {
            if i % 2 == 0 {
                rt2.sleep_until(deadline).await;
            } else {
                rt2.sleep(ms(25)).await;
            }
            seen.lock().unwrap().push(rt2.now() - start);
        }));
    }
    rt.sleep_until(deadline).await;
    assert_eq!(rt.now() - start, ms(25));
    for handle in handles {
        handle.await.unwrap();
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 64);
    assert!(seen.iter().all(|t| *t == ms(25)), "{seen:?}");
    assert_eq!(rt.now() - start, ms(25));
}

#[test]
fn clocked_many_timers_at_one_instant_all_fire_at_exactly_that_instant_on_every_runtime() {
    on_clocked_runtimes!(many_timers_at_one_instant);
}

async fn timers_registered_while_time_moves<R: Runtime>(rt: Clocked<R>, seed: u64) {
    let mut rng = SplitMix64::new(seed);
    let start = rt.now();
    let log: Arc<Mutex<Vec<(Duration, Duration)>>> = Arc::new(Mutex::new(Vec::new()));
    let mut roots = Vec::new();
    for _ in 0..16 {
        let steps: Vec<(u64, u64)> = (0..rng.between(1, 4))
            .map(|_| (rng.below_or_equal(6), rng.below_or_equal(6)))
            .collect();
        let rt2 = rt.clone();
        let log2 = Arc::clone(&log);
        roots.push(rt.spawn(async move {
            let mut expected = Duration::ZERO;
            let mut children = Vec::new();
            for (own, child) in steps {
                rt2.sleep(ms(own)).await;
                expected += ms(own);
                log2.lock().unwrap().push((expected, rt2.now() - start));
                let child_expected = expected + ms(child);
                let rt3 = rt2.clone();
                let log3 = Arc::clone(&log2);
                children.push(rt2.spawn(async move {
                    rt3.sleep(ms(child)).await;
                    log3.lock()
                        .unwrap()
                        .push((child_expected, rt3.now() - start));
                }));
            }
            for child in children {
                child.await.unwrap();
            }
        }));
    }
    for root in roots {
        root.await.unwrap();
    }
    let log = log.lock().unwrap();
    for (expected, actual) in log.iter() {
        assert_eq!(
            expected, actual,
            "seed {seed}: a timer fired off its instant"
        );
    }
    for pair in log.windows(2) {
        assert!(
            pair[0].1 <= pair[1].1,
            "seed {seed}: events out of time order"
        );
    }
}

#[test]
fn clocked_timers_registered_while_time_advances_fire_at_their_exact_instants_on_every_runtime() {
    for seed in 0..3 {
        on_clocked_runtimes!(|rt| timers_registered_while_time_moves(rt, seed));
    }
}

// ---------------------------------------------------------------------------------------------
// Join handles: panics, aborts, detaching — identical on every runtime
// ---------------------------------------------------------------------------------------------

#[derive(Debug, PartialEq)]
struct Custom(u64);

fn expect_panic(result: Result<u8, JoinError>, what: &str) -> tidewall::rt::Panic {
    match result {
        Err(JoinError::Panicked(panic)) => panic,
        other => panic!("{what}: expected Panicked, got {other:?}"),
    }
}

async fn panic_payloads<R: Runtime>(rt: R) {
    let p = expect_panic(rt.spawn(async { boom_if(true, 42u32, 0u8) }).await, "u32");
    assert_eq!(p.message(), None);
    assert_eq!(*p.into_payload().downcast::<u32>().unwrap(), 42);

    let p = expect_panic(
        rt.spawn(async { boom_if(true, Custom(7), 0u8) }).await,
        "struct",
    );
    assert!(p.message().is_none());
    assert_eq!(*p.into_payload().downcast::<Custom>().unwrap(), Custom(7));

    let n = 5;
    let p = expect_panic(
        rt.spawn(async move { boom_if(true, format!("code {n}"), 0u8) })
            .await,
        "String",
    );
    assert_eq!(p.message(), Some("code 5"));
    assert_eq!(*p.into_payload().downcast::<String>().unwrap(), "code 5");

    let p = expect_panic(
        rt.spawn(async { boom_if(true, "static str", 0u8) }).await,
        "&str",
    );
    assert_eq!(p.message(), Some("static str"));

    let p = expect_panic(
        rt.spawn_blocking(|| boom_if(true, Custom(11), 0u8)).await,
        "blocking struct",
    );
    assert_eq!(p.message(), None);
    assert_eq!(*p.into_payload().downcast::<Custom>().unwrap(), Custom(11));

    let p = expect_panic(
        rt.spawn_blocking(|| boom_if(true, String::from("blocking"), 0u8))
            .await,
        "blocking String",
    );
    assert_eq!(p.message(), Some("blocking"));

    // A panic is not a cancellation, and the flags agree with the variant.
    let err = rt
        .spawn(async { boom_if(true, 1u8, 0u8) })
        .await
        .unwrap_err();
    assert!(err.is_panic() && !err.is_cancelled());
}

#[test]
fn join_handles_report_non_string_panic_payloads_intact_on_every_runtime() {
    on_all_runtimes!(panic_payloads);
}

async fn abort_drops_the_task<R: Runtime>(rt: R) {
    // Aborted before it ever ran.
    let dropped = Arc::new(AtomicBool::new(false));
    let polled = Arc::new(AtomicBool::new(false));
    let handle = rt.spawn({
        let guard = DropFlag(Arc::clone(&dropped));
        let polled = Arc::clone(&polled);
        async move {
            let _guard = guard;
            polled.store(true, SeqCst);
            std::future::pending::<()>().await;
        }
    });
    handle.abort();
    let result = handle.await;
    assert!(
        matches!(result, Err(JoinError::Cancelled)),
        "aborted before running: {result:?}"
    );
    assert!(result.unwrap_err().is_cancelled());
    assert!(
        dropped.load(SeqCst),
        "Cancelled reported while the task is not dropped"
    );

    // Aborted while parked at an await point.
    let dropped = Arc::new(AtomicBool::new(false));
    let (parked_tx, parked_rx) = futures_channel::oneshot::channel::<()>();
    let handle = rt.spawn({
        let guard = DropFlag(Arc::clone(&dropped));
        async move {
            let _guard = guard;
            parked_tx.send(()).unwrap();
            std::future::pending::<()>().await;
        }
    });
    parked_rx.await.unwrap();
    handle.abort();
    handle.abort(); // twice: harmless
    let result = handle.await;
    assert!(
        matches!(result, Err(JoinError::Cancelled)),
        "aborted while parked: {result:?}"
    );
    assert!(dropped.load(SeqCst));
}

#[test]
fn abort_reports_cancelled_and_drops_the_task_on_every_runtime() {
    on_all_runtimes!(abort_drops_the_task);
}

async fn abort_after_finish<R: Runtime>(rt: Clocked<R>) {
    let ok = rt.spawn(async { 7u8 });
    let bad = rt.spawn(async { boom_if(true, 9u64, 0u8) });
    // Virtual time moves only when every task is idle: both have finished by now.
    rt.sleep(ms(1)).await;
    ok.abort();
    bad.abort();
    let ok = ok.await;
    assert!(matches!(ok, Ok(7)), "aborted after it finished: {ok:?}");
    let p = expect_panic(bad.await, "aborted after it panicked");
    assert_eq!(*p.into_payload().downcast::<u64>().unwrap(), 9);
    // Aborting finished tasks holds no activity: time still moves.
    let before = rt.now();
    rt.sleep(ms(3)).await;
    assert_eq!(rt.now() - before, ms(3));
}

#[test]
fn abort_after_the_task_finished_still_yields_its_outcome_on_every_runtime() {
    on_clocked_runtimes!(abort_after_finish);
}

async fn drop_detaches<R: Runtime>(rt: R) {
    let (go_tx, go_rx) = futures_channel::oneshot::channel::<()>();
    let (done_tx, done_rx) = futures_channel::oneshot::channel::<u8>();
    let handle = rt.spawn(async move {
        go_rx.await.unwrap();
        done_tx.send(7).unwrap();
    });
    drop(handle);
    go_tx.send(()).unwrap();
    assert_eq!(
        done_rx.await,
        Ok(7),
        "dropping the handle cancelled the task"
    );
    let (done_tx, done_rx) = futures_channel::oneshot::channel::<u8>();
    drop(rt.spawn_blocking(move || done_tx.send(8).unwrap()));
    assert_eq!(done_rx.await, Ok(8));
}

#[test]
fn dropping_a_join_handle_detaches_the_task_on_every_runtime() {
    on_all_runtimes!(drop_detaches);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    Await,
    Abort,
    Drop,
}

async fn seeded_aborts_and_drops<R: Runtime>(rt: Clocked<R>, seed: u64) {
    let mut rng = SplitMix64::new(seed);
    let start = rt.now();
    let mut plans = Vec::new();
    let mut handles = Vec::new();
    for id in 0..24u64 {
        let finish = 2 * rng.between(0, 49) + 1; // odd ms
        let panics = rng.below_or_equal(3) == 0;
        let act = match rng.below_or_equal(2) {
            0 => Act::Await,
            1 => Act::Abort,
            _ => Act::Drop,
        };
        let at = 2 * rng.between(0, 50); // even ms: never the finish instant
        let finished = Arc::new(AtomicBool::new(false));
        let task = {
            let rt = rt.clone();
            let finished = Arc::clone(&finished);
            async move {
                rt.sleep_until(start + ms(finish)).await;
                finished.store(true, SeqCst);
                boom_if(panics, id, id)
            }
        };
        handles.push(Some(rt.spawn(task)));
        plans.push((id, finish, panics, act, at, finished));
    }
    let mut order: Vec<usize> = (0..plans.len())
        .filter(|&i| plans[i].3 != Act::Await)
        .collect();
    order.sort_by_key(|&i| plans[i].4);
    for i in order {
        rt.sleep_until(start + ms(plans[i].4)).await;
        if plans[i].3 == Act::Abort {
            handles[i].as_ref().unwrap().abort();
        } else {
            handles[i] = None;
        }
    }
    for (i, slot) in handles.iter_mut().enumerate() {
        let Some(handle) = slot.take() else { continue };
        let (id, finish, panics, act, at, _) = &plans[i];
        let result = handle.await;
        let what = format!("seed {seed} task {id} ({act:?} at {at} ms, finish {finish} ms)");
        if *act == Act::Abort && at < finish {
            assert!(
                matches!(result, Err(JoinError::Cancelled)),
                "{what}: {result:?}"
            );
        } else if *panics {
            match result {
                Err(JoinError::Panicked(p)) => {
                    assert_eq!(*p.into_payload().downcast::<u64>().unwrap(), *id, "{what}");
                }
                other => panic!("{what}: expected Panicked, got {other:?}"),
            }
        } else {
            assert_eq!(result.ok(), Some(*id), "{what}");
        }
    }
    rt.sleep_until(start + ms(500)).await;
    for (id, finish, _, act, at, finished) in &plans {
        let cancelled = *act == Act::Abort && at < finish;
        assert_eq!(
            finished.load(SeqCst),
            !cancelled,
            "seed {seed} task {id} ({act:?} at {at} ms, finish {finish} ms): ran past its abort, or a detached task did not run"
        );
    }
}

#[test]
fn join_handles_aborted_or_dropped_at_seeded_virtual_instants_report_consistently_on_every_runtime()
{
    for seed in [1, 2, 3] {
        on_clocked_runtimes!(|rt| seeded_aborts_and_drops(rt, seed));
    }
}

async fn abort_started_blocking<R: Runtime>(rt: R) {
    let (started_tx, started_rx) = futures_channel::oneshot::channel::<()>();
    let (done_tx, done_rx) = futures_channel::oneshot::channel::<u8>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let mut handle = rt.spawn_blocking(move || {
        started_tx.send(()).unwrap();
        release_rx.recv().unwrap();
        done_tx.send(5).unwrap();
        5u8
    });
    started_rx.await.unwrap();
    handle.abort();
    // The handle is first polled while the work is still blocked: it has not finished, at
    // the abort nor when the handle is awaited.
    let early = futures_util::poll!(&mut handle);
    release_tx.send(()).unwrap();
    // "a blocking task that has already started runs to completion"
    assert_eq!(done_rx.await, Ok(5));
    let result = match early {
        Poll::Ready(result) => result,
        Poll::Pending => handle.await,
    };
    // "aborting it does not stop it, it runs to completion and awaiting the handle yields
    // its result" (found documented as Cancelled; every runtime yields the result).
    assert!(
        matches!(result, Ok(5)),
        "a blocking task aborted while it ran (handle first awaited before it finished): \
         {result:?}"
    );
}

#[test]
fn abort_of_a_started_blocking_task_lets_it_finish_and_yields_its_result_on_every_runtime() {
    on_all_runtimes!(abort_started_blocking);
}

// ---------------------------------------------------------------------------------------------
// rt: instant_after, real adapters' far sleeps, SmolRuntime
// ---------------------------------------------------------------------------------------------

#[test]
fn instant_after_is_exact_when_it_fits_and_never_panics_at_the_end_of_the_clock() {
    let now = Instant::now();
    assert_eq!(instant_after(now, Duration::ZERO), now);
    assert_eq!(
        instant_after(now, Duration::from_nanos(1)),
        now + Duration::from_nanos(1)
    );
    assert_eq!(instant_after(now, years(200)), now + years(200));
    let forever = instant_after(now, Duration::MAX);
    assert!(forever > now + years(29) && forever <= now + years(31));
    let huge = Duration::from_secs(u64::MAX);
    let also = instant_after(now, huge);
    assert!(also > now + years(29) && also <= now + years(31));

    let end = latest_instant(now);
    assert_eq!(instant_after(end, Duration::ZERO), end);
    assert_eq!(
        instant_after(end, Duration::from_nanos(1)),
        end,
        "no room: the latest instant"
    );
    assert_eq!(instant_after(end, Duration::MAX), end);
    assert_eq!(
        instant_after(end - Duration::from_nanos(1), Duration::from_nanos(1)),
        end
    );
    let ten_before = end - years(10);
    assert_eq!(instant_after(ten_before, years(5)), ten_before + years(5));
    assert_eq!(
        instant_after(ten_before, years(11)),
        end,
        "overflow near the end: the latest instant"
    );
    assert_eq!(
        instant_after(ten_before, Duration::MAX),
        end,
        "within thirty years of the end: the latest instant"
    );
    let forty_before = end - years(40);
    let far = instant_after(forty_before, Duration::MAX);
    assert!(far > forty_before + years(29) && far <= end, "{far:?}");
}

#[test]
fn tokio_paused_sleeps_beyond_the_timer_wheel_never_complete_early() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        for long in [years(3), years(10)] {
            let start = Tokio.now();
            Tokio.sleep(long).await;
            assert!(
                Tokio.now() - start >= long,
                "a {long:?} sleep completed after {:?}",
                Tokio.now() - start
            );
        }
        let start = Tokio.now();
        let deadline = instant_after(start, Duration::MAX);
        Tokio.sleep_until(deadline).await;
        assert!(
            Tokio.now() >= deadline,
            "sleep_until completed {:?} before its deadline",
            deadline - Tokio.now()
        );
    });
}

async fn forever_sleep_is_pending<R: Runtime>(rt: R) {
    let mut forever = pin!(rt.sleep(Duration::MAX));
    assert!(futures_util::poll!(forever.as_mut()).is_pending());
    let mut huge = pin!(rt.sleep(Duration::from_secs(u64::MAX)));
    assert!(futures_util::poll!(huge.as_mut()).is_pending());
}

#[test]
fn real_adapters_sleep_of_duration_max_is_pending_not_a_panic() {
    on_raw_runtimes!(forever_sleep_is_pending);
}

async fn latest_instant_sleep_is_pending<R: Runtime>(rt: R) {
    // `instant_after` may hand out instants up to the latest a clock can hold: every
    // adapter's `sleep_until` must take them ("Completes at `deadline`"), except that
    // "tokio's timer also panics on a deadline within a millisecond of the latest `Instant`"
    // (found panicking undocumented), so this stays a second short of it.
    let far = latest_instant(rt.now()) - Duration::from_secs(1);
    let mut far = pin!(rt.sleep_until(far));
    assert!(futures_util::poll!(far.as_mut()).is_pending());
}

#[test]
fn real_adapters_sleep_until_a_second_before_the_latest_instant_is_pending_not_a_panic() {
    on_raw_runtimes!(latest_instant_sleep_is_pending);
}

#[test]
fn smol_runtime_rejects_zero_threads_as_invalid_input_wrapping_config_error_zero() {
    let err = SmolRuntime::multi_threaded(0).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    let inner = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<tidewall::ConfigError>());
    assert!(
        matches!(inner, Some(tidewall::ConfigError::Zero { .. })),
        "{err:?}"
    );
    assert_eq!(SmolRuntime::multi_threaded(3).unwrap().worker_threads(), 3);
    assert_eq!(SmolRuntime::single_threaded().worker_threads(), 0);
}

// ---------------------------------------------------------------------------------------------
// Scripted
// ---------------------------------------------------------------------------------------------

async fn scripted_offsets<R: Runtime>(rt: Clocked<R>) {
    let start = rt.now();
    let op = Scripted::with_latency(
        rt.clone(),
        [
            (ms(10), Err::<u32, &str>("a")),
            (Duration::ZERO, Err("b")),
            (ms(5), Ok(3)),
        ],
    );
    assert_eq!(op.call().await, Err("a"));
    assert_eq!(op.call().await, Err("b"));
    assert_eq!(op.call().await, Ok(3));
    assert_eq!(op.call().await, Ok(3), "the last step repeats");
    assert_eq!(
        rt.now() - start,
        ms(20),
        "the repeated step keeps its latency"
    );
    let (x, y) = futures_util::join!(op.call(), op.call());
    assert_eq!((x, y), (Ok(3), Ok(3)));
    assert_eq!(rt.now() - start, ms(25));
    assert_eq!(op.calls(), 6);
    assert_eq!(
        op.start_offsets(),
        vec![Duration::ZERO, ms(10), ms(10), ms(15), ms(20), ms(20)]
    );
}

#[test]
fn scripted_records_the_virtual_start_of_each_call_and_repeats_its_last_step_on_every_runtime() {
    on_clocked_runtimes!(scripted_offsets);
}

#[test]
fn scripted_counts_a_call_that_started_and_was_dropped_and_rejects_an_empty_script() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rt = Clocked::new(Tokio);
    runtime.block_on(async {
        let op = Scripted::with_latency(rt.clone(), [(ms(10), Ok::<u32, u32>(1))]);
        {
            let _unpolled = op.call();
        }
        assert_eq!(op.calls(), 0, "a call future never polled has not started");
        {
            let mut call = pin!(op.call());
            assert!(futures_util::poll!(call.as_mut()).is_pending());
        }
        assert_eq!(op.calls(), 1);
        assert_eq!(op.start_offsets(), vec![Duration::ZERO]);
        assert_eq!(rt.clock().pending_timers(), 0);
    });
    // "# Panics: If `script` is empty"
    let empty = std::panic::catch_unwind(|| {
        Scripted::new(Clocked::new(Tokio), Vec::<Result<u8, u8>>::new()).calls()
    });
    assert!(empty.is_err(), "an empty script was accepted");
}

// ---------------------------------------------------------------------------------------------
// Hedge, used directly on a FakeClock
// ---------------------------------------------------------------------------------------------

type Step = (Option<Duration>, Result<u32, u32>);

/// An operation whose k-th attempt takes `plan[k].0` (None: never answers) and returns
/// `plan[k].1`; records each attempt's start and counts the attempts alive.
struct Attempts {
    clock: FakeClock,
    start: Instant,
    plan: Vec<Step>,
    starts: Mutex<Vec<Duration>>,
    alive: Arc<AtomicUsize>,
}

impl Attempts {
    fn new(clock: &FakeClock, plan: Vec<Step>) -> Self {
        Self {
            clock: clock.clone(),
            start: clock.now(),
            plan,
            starts: Mutex::new(Vec::new()),
            alive: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn start(&self) -> impl Future<Output = Result<u32, u32>> + 'static {
        let k = {
            let mut starts = self.starts.lock().unwrap();
            starts.push(self.clock.now() - self.start);
            starts.len() - 1
        };
        let (latency, outcome) = self.plan[k.min(self.plan.len() - 1)];
        let alive = Alive::new(&self.alive);
        let sleep = latency.map(|l| self.clock.sleep_until(self.clock.now() + l));
        async move {
            let _alive = alive;
            match sleep {
                Some(sleep) => sleep.await,
                None => std::future::pending::<()>().await,
            }
            outcome
        }
    }

    fn starts(&self) -> Vec<Duration> {
        self.starts.lock().unwrap().clone()
    }

    fn alive(&self) -> usize {
        self.alive.load(SeqCst)
    }
}

fn hedge_on(clock: &FakeClock, delay: Duration, max_hedges: u32) -> Hedge<FakeClock> {
    Hedge::builder()
        .runtime(clock.clone())
        .delay(delay)
        .max_hedges(max_hedges)
        .build()
        .unwrap()
}

#[test]
fn hedge_first_success_wins_and_every_loser_is_dropped_as_soon_as_it_wins() {
    let clock = FakeClock::new();
    let hedge = hedge_on(&clock, ms(10), 3);
    let ops = Attempts::new(
        &clock,
        vec![
            (None, Ok(0)),
            (Some(ms(500)), Ok(1)),
            (Some(ms(15)), Ok(2)),
            (None, Ok(3)),
        ],
    );
    let mut call = Box::pin(hedge.call(Idempotent(|| ops.start())));
    let answer = drive_fake(&clock, call.as_mut());
    // What `join!(hedge.call(..), slower)` or a stored future sees: the call has answered
    // but is not dropped yet.
    let (alive_at_answer, timers_at_answer) = (ops.alive(), clock.pending_timers());
    drop(call);
    assert_eq!(answer, Ok(2));
    assert_eq!(clock.elapsed(), ms(35));
    assert_eq!(ops.starts(), vec![Duration::ZERO, ms(10), ms(20), ms(30)]);
    assert_eq!(ops.alive(), 0, "losers outlived the dropped call");
    assert_eq!(
        (alive_at_answer, timers_at_answer),
        (0, 0),
        "(losers alive, timers registered) once the winner answered: the losers are only \
         dropped with the HedgeFuture itself"
    );
}

#[test]
fn hedge_primary_answering_exactly_at_the_hedge_delay_wins() {
    let clock = FakeClock::new();
    let hedge = hedge_on(&clock, ms(10), 1);
    let ops = Attempts::new(
        &clock,
        vec![(Some(ms(10)), Ok(100)), (Some(ms(1)), Ok(200))],
    );
    let answer = {
        let mut call = pin!(hedge.call(Idempotent(|| ops.start())));
        drive_fake(&clock, call.as_mut())
    };
    assert_eq!(answer, Ok(100));
    assert_eq!(clock.elapsed(), ms(10));
    // Whether a hedge is launched at the very instant the primary answers is left open.
    assert!(ops.starts().len() <= 2 && ops.starts().iter().all(|s| *s <= ms(10)));
    assert_eq!(ops.alive(), 0);
}

#[test]
fn hedge_primary_failing_exactly_when_a_hedge_is_due_starts_one_hedge_not_two() {
    let clock = FakeClock::new();
    let hedge = hedge_on(&clock, ms(10), 3);
    let ops = Attempts::new(&clock, vec![(Some(ms(10)), Err(1)), (None, Ok(0))]);
    {
        let mut call = pin!(hedge.call(Idempotent(|| ops.start())));
        assert!(poll_noop(call.as_mut()).is_pending());
        assert_eq!(ops.starts(), vec![Duration::ZERO]);
        let mut seen = Vec::new();
        while clock.advance_to_next_timer() {
            assert!(poll_noop(call.as_mut()).is_pending());
            seen.push((clock.elapsed(), ops.starts().len()));
            assert!(seen.len() < 100);
        }
        assert_eq!(
            ops.starts(),
            vec![Duration::ZERO, ms(10), ms(20), ms(30)],
            "attempt starts (per timer: {seen:?})"
        );
        assert_eq!(seen.first(), Some(&(ms(10), 2)));
    }
    assert_eq!(ops.alive(), 0, "dropping the call left attempts running");
    assert_eq!(clock.pending_timers(), 0);
}

#[test]
fn hedge_failures_start_the_next_attempt_at_once_and_the_last_failure_is_returned() {
    let clock = FakeClock::new();
    let hedge = hedge_on(&clock, ms(10), 2);
    let ops = Attempts::new(
        &clock,
        vec![
            (Some(Duration::ZERO), Err(1)),
            (Some(Duration::ZERO), Err(2)),
            (Some(Duration::ZERO), Err(3)),
            (Some(Duration::ZERO), Ok(4)),
        ],
    );
    let answer = {
        let mut call = pin!(hedge.call(Idempotent(|| ops.start())));
        drive_fake(&clock, call.as_mut())
    };
    assert_eq!(
        answer,
        Err(3),
        "the last failure, after 1 + max_hedges attempts"
    );
    assert_eq!(ops.starts(), vec![Duration::ZERO; 3]);
    assert_eq!(clock.elapsed(), Duration::ZERO);

    // max_hedges(0): a slow success and a failure, one attempt each.
    for (plan, expected) in [
        (vec![(Some(ms(1000)), Ok(1))], Ok(1)),
        (vec![(Some(ms(5)), Err(9)), (Some(ms(1)), Ok(2))], Err(9)),
    ] {
        let clock = FakeClock::new();
        let hedge = hedge_on(&clock, ms(10), 0);
        let ops = Attempts::new(&clock, plan);
        let answer = {
            let mut call = pin!(hedge.call(Idempotent(|| ops.start())));
            drive_fake(&clock, call.as_mut())
        };
        assert_eq!(answer, expected);
        assert_eq!(ops.starts(), vec![Duration::ZERO], "max_hedges(0) hedged");
    }
}

#[test]
fn hedge_budget_of_zero_refuses_every_hedge_and_the_second_refusal_ends_the_call() {
    let clock = FakeClock::new();
    let launched = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&launched);
    let hedge = Hedge::builder()
        .runtime(clock.clone())
        .delay(ms(10))
        .max_hedges(3)
        .budget_ratio(0.0)
        .on_event(move |event| {
            if let tidewall::telemetry::EventKind::HedgeLaunched { .. } = event.kind {
                counted.fetch_add(1, SeqCst);
            }
        })
        .build()
        .unwrap();
    let ops = Attempts::new(&clock, vec![(Some(ms(50)), Err(1)), (Some(ms(1)), Ok(2))]);
    let answer = {
        let mut call = pin!(hedge.call(Idempotent(|| ops.start())));
        assert!(poll_noop(call.as_mut()).is_pending());
        clock.advance(ms(20));
        assert!(poll_noop(call.as_mut()).is_pending());
        assert_eq!(
            clock.pending_timers(),
            1,
            "after a refusal no later hedge may be scheduled: only the primary's timer"
        );
        drive_fake(&clock, call.as_mut())
    };
    assert_eq!(answer, Err(1));
    assert_eq!(ops.starts(), vec![Duration::ZERO]);
    assert_eq!(clock.elapsed(), ms(50));
    assert_eq!(launched.load(SeqCst), 0);
}

#[test]
fn hedge_budget_ratio_bounds_hedges_to_that_share_of_the_calls() {
    let clock = FakeClock::new();
    let hedge = Hedge::builder()
        .runtime(clock.clone())
        .delay(ms(10))
        .max_hedges(1)
        .budget_ratio(0.5)
        .build()
        .unwrap();
    let mut hedges = 0;
    for _ in 0..20 {
        let ops = Attempts::new(&clock, vec![(Some(ms(30)), Ok(1)), (Some(ms(30)), Ok(2))]);
        let answer = {
            let mut call = pin!(hedge.call(Idempotent(|| ops.start())));
            drive_fake(&clock, call.as_mut())
        };
        assert_eq!(answer, Ok(1));
        hedges += ops.starts().len() - 1;
        assert_eq!(ops.alive(), 0);
    }
    assert!(clock.elapsed() < Duration::from_secs(10), "one window");
    assert!(hedges <= 10, "{hedges} hedges for 20 calls at a 0.5 budget");
}

#[test]
fn hedge_dropped_at_seeded_random_points_drops_every_started_attempt_and_timer() {
    for seed in 0..200 {
        let mut rng = SplitMix64::new(seed);
        let clock = FakeClock::new();
        let delay = ms(rng.between(1, 15));
        let max_hedges = u32::try_from(rng.below_or_equal(4)).unwrap();
        let plan: Vec<Step> = (0..6u32)
            .map(|k| {
                let latency = if rng.below_or_equal(3) == 0 {
                    None
                } else {
                    Some(ms(rng.between(0, 40)))
                };
                let outcome = if rng.below_or_equal(1) == 0 {
                    Ok(k)
                } else {
                    Err(k)
                };
                (latency, outcome)
            })
            .collect();
        let hedge = hedge_on(&clock, delay, max_hedges);
        let ops = Attempts::new(&clock, plan);
        let steps = rng.between(0, 12);
        {
            let mut call = pin!(hedge.call(Idempotent(|| ops.start())));
            for _ in 0..steps {
                if poll_noop(call.as_mut()).is_ready() {
                    break;
                }
                match rng.below_or_equal(4) {
                    0 => clock.advance(Duration::ZERO),
                    1 => clock.advance(ms(rng.between(1, 10))),
                    2 => {
                        clock.advance_to_next_timer();
                    }
                    3 => clock.advance(delay),
                    _ => clock.advance(Duration::from_nanos(rng.between(1, 999_999))),
                }
            }
        }
        let what = format!("seed {seed} (delay {delay:?}, max_hedges {max_hedges})");
        assert_eq!(ops.alive(), 0, "{what}: attempts outlived the dropped call");
        assert_eq!(
            clock.pending_timers(),
            0,
            "{what}: timers outlived the call"
        );
        let max_attempts = 1 + usize::try_from(max_hedges).unwrap();
        assert!(
            ops.starts().len() <= max_attempts,
            "{what}: {:?}",
            ops.starts()
        );
    }
}

#[test]
fn hedge_build_rejects_each_documented_invalid_setting_and_accepts_the_boundaries() {
    let base = || Hedge::builder().runtime(FakeClock::new());
    let rejected = [
        ("zero delay", base().delay(Duration::ZERO).build().is_err()),
        (
            "Duration::MAX delay",
            base().delay(Duration::MAX).build().is_err(),
        ),
        (
            "max_hedges u32::MAX",
            base().max_hedges(u32::MAX).build().is_err(),
        ),
        ("quantile 0", base().percentile(0.0, 5).build().is_err()),
        ("quantile -0.5", base().percentile(-0.5, 5).build().is_err()),
        (
            "quantile 1.0001",
            base().percentile(1.0001, 5).build().is_err(),
        ),
        (
            "quantile NaN",
            base().percentile(f64::NAN, 5).build().is_err(),
        ),
        (
            "quantile +inf",
            base().percentile(f64::INFINITY, 5).build().is_err(),
        ),
        ("min_samples 0", base().percentile(0.5, 0).build().is_err()),
        ("ratio -0.01", base().budget_ratio(-0.01).build().is_err()),
        (
            "ratio 1000.01",
            base().budget_ratio(1000.01).build().is_err(),
        ),
        ("ratio 5e-7", base().budget_ratio(5e-7).build().is_err()),
        ("ratio NaN", base().budget_ratio(f64::NAN).build().is_err()),
        (
            "ratio +inf",
            base().budget_ratio(f64::INFINITY).build().is_err(),
        ),
    ];
    let bad: Vec<&str> = rejected
        .iter()
        .filter(|(_, err)| !err)
        .map(|(name, _)| *name)
        .collect();
    assert!(bad.is_empty(), "accepted: {bad:?}");
    let accepted = [
        (
            "1 ns delay",
            base().delay(Duration::from_nanos(1)).build().is_ok(),
        ),
        (
            "max_hedges u32::MAX - 1",
            base().max_hedges(u32::MAX - 1).build().is_ok(),
        ),
        ("max_hedges 0", base().max_hedges(0).build().is_ok()),
        ("quantile 1", base().percentile(1.0, 1).build().is_ok()),
        (
            "quantile MIN_POSITIVE",
            base().percentile(f64::MIN_POSITIVE, 1).build().is_ok(),
        ),
        ("ratio 0", base().budget_ratio(0.0).build().is_ok()),
        ("ratio 1e-6", base().budget_ratio(0.000_001).build().is_ok()),
        ("ratio 1000", base().budget_ratio(1000.0).build().is_ok()),
    ];
    let bad: Vec<&str> = accepted
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(name, _)| *name)
        .collect();
    assert!(bad.is_empty(), "rejected: {bad:?}");
    let hedge = base().max_hedges(4).delay(ms(30)).build().unwrap();
    assert_eq!(hedge.max_hedges(), 4);
    assert_eq!(hedge.delay(), ms(30));
}

#[test]
fn hedge_non_retryable_verdict_ends_the_call_at_once_and_drops_the_running_attempts() {
    let clock = FakeClock::new();
    let hedge = Hedge::builder()
        .runtime(clock.clone())
        .delay(ms(10))
        .max_hedges(2)
        .classify(tidewall::classify::ErrorsWhere(|e: &u32| *e == 503))
        .build()
        .unwrap();
    let ops = Attempts::new(
        &clock,
        vec![(Some(ms(100)), Ok(1)), (Some(Duration::ZERO), Err(404))],
    );
    let mut call = Box::pin(hedge.call(Idempotent(|| ops.start())));
    let answer = drive_fake(&clock, call.as_mut());
    let alive_at_answer = ops.alive();
    drop(call);
    assert_eq!(answer, Err(404));
    assert_eq!(clock.elapsed(), ms(10));
    assert_eq!(ops.starts(), vec![Duration::ZERO, ms(10)]);
    assert_eq!(ops.alive(), 0, "the primary outlived the dropped call");
    assert_eq!(
        alive_at_answer, 0,
        "the call ended with the hedge's verdict but the primary is still alive until the \
         HedgeFuture is dropped"
    );
}

#[test]
fn hedge_retryable_failure_of_a_hedge_leaves_the_primary_running_and_the_next_waits_the_delay() {
    let clock = FakeClock::new();
    let hedge = Hedge::builder()
        .runtime(clock.clone())
        .delay(ms(10))
        .max_hedges(2)
        .classify(tidewall::classify::ErrorsWhere(|e: &u32| *e == 503))
        .build()
        .unwrap();
    let ops = Attempts::new(
        &clock,
        vec![(Some(ms(100)), Ok(1)), (Some(Duration::ZERO), Err(503))],
    );
    let mut call = pin!(hedge.call(Idempotent(|| ops.start())));
    let answer = drive_fake(&clock, call.as_mut());
    assert_eq!(answer, Ok(1));
    assert_eq!(clock.elapsed(), ms(100));
    assert_eq!(ops.starts(), vec![Duration::ZERO, ms(10), ms(20)]);
    assert_eq!(ops.alive(), 0);
}

#[test]
fn hedge_percentile_delay_is_the_fixed_delay_until_min_samples_then_follows_successes() {
    let clock = FakeClock::new();
    let hedge = Hedge::builder()
        .runtime(clock.clone())
        .delay(ms(30))
        .percentile(0.95, 5)
        .max_hedges(1)
        .build()
        .unwrap();
    assert_eq!(hedge.delay(), ms(30));
    for n in 1..=5 {
        let ops = Attempts::new(&clock, vec![(Some(ms(7)), Ok(1))]);
        let answer = {
            let mut call = pin!(hedge.call(Idempotent(|| ops.start())));
            drive_fake(&clock, call.as_mut())
        };
        assert_eq!(answer, Ok(1));
        if n < 5 {
            assert_eq!(hedge.delay(), ms(30), "after {n} samples");
        }
    }
    let after_min = hedge.delay();
    for _ in 0..100 {
        let ops = Attempts::new(&clock, vec![(Some(ms(7)), Ok(1))]);
        let mut call = pin!(hedge.call(Idempotent(|| ops.start())));
        assert_eq!(drive_fake(&clock, call.as_mut()), Ok(1));
    }
    let after_many = hedge.delay();
    let near_seven = |d: Duration| d >= ms(6) && d <= ms(8);
    assert!(
        near_seven(after_many),
        "after 105 samples of 7 ms: {after_many:?}"
    );
    assert!(
        near_seven(after_min),
        "once min_samples (5) of 7 ms were seen, delay is still {after_min:?}"
    );
    // Clones share the estimate.
    assert_eq!(hedge.clone().delay(), after_many);
}

async fn hedged_scripted<R: Runtime>(rt: Clocked<R>) {
    let start = rt.now();
    let op = Scripted::with_latency(rt.clone(), [(ms(100), Ok::<u32, u32>(1)), (ms(10), Ok(2))]);
    let hedge = Hedge::builder()
        .runtime(rt.clone())
        .delay(ms(20))
        .max_hedges(1)
        .build()
        .unwrap();
    let answer = hedge.call(Idempotent(|| op.call())).await;
    assert_eq!(answer, Ok(2));
    assert_eq!(rt.now() - start, ms(30));
    assert_eq!(op.start_offsets(), vec![Duration::ZERO, ms(20)]);
    assert_eq!(
        rt.clock().pending_timers(),
        0,
        "the losing primary's timer outlived the call"
    );
}

#[test]
fn hedge_on_a_clocked_runtime_with_scripted_attempts_hedges_at_the_exact_delay_on_every_runtime() {
    on_clocked_runtimes!(hedged_scripted);
}
