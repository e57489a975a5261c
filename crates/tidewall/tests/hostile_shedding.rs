//! Hostile black-box tests of load shedding, written from the rustdoc alone: `Priority` shares
//! on the `AdaptiveLimiter` (`limit × share` at odd limits and shares, tiny and exact ones),
//! its queue (most important first, the newest of the least important shed to make room, the
//! documented rejection), `QueueDiscipline` (LIFO within priorities, CoDel's bound exactly as
//! documented, target above interval, `Duration::MAX`), `Bulkhead::reconfigure` with a
//! discipline, and `WindowedGradient` behind the limiter across hours of virtual time. Attacked
//! as users compose them (pipelines with deadlines and retries on every runtime, `AdmitLayer`
//! in every mode, deep nesting), with drops at every point (queued, granted, shed), a reference
//! model of the queue driven by seeded random operations, and threads. Nothing may be lost:
//! `in_flight` and `queued` return to 0 and the whole limit is usable again.
#![cfg(all(feature = "tokio", feature = "test-util", feature = "tower"))]
#![allow(clippy::float_cmp)] // shares compared with the exact values the docs name

mod common;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use common::ms;
use futures_util::task::noop_waker_ref;
use tidewall::adaptive::{
    AdaptiveLimiter, AdaptivePermit, FixedLimit, LimitAlgorithm, Priority, QueueDiscipline, Sample,
    WindowedGradient,
};
use tidewall::admission::{Admission, Wait};
use tidewall::bulkhead::{Bulkhead, OwnedPermit};
use tidewall::pipeline::Pipeline;
use tidewall::rt::{Clock, Runtime};
use tidewall::telemetry::EventKind;
use tidewall::testing::{Clocked, FakeClock};
use tidewall::tower::{AdmitLayer, AdmitMode};
use tidewall::{Backoff, ConfigError, Deadline, Error, FutureExt as _, Rejected};
use tidewall_core::rng::SplitMix64;
use tower_layer::Layer;
use tower_service::Service;

// === shared pieces =========================================================================

const HOUR: Duration = Duration::from_secs(3_600);

/// Seeded draws from the library's own generator: every run draws the same numbers.
struct Rng(SplitMix64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(SplitMix64::new(seed))
    }
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    /// Uniform in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        let max = u64::try_from(n - 1).unwrap();
        usize::try_from(self.0.below_or_equal(max)).unwrap()
    }
    fn priority(&mut self) -> Priority {
        Priority::ALL[self.below(3)]
    }
}

/// A limit set from outside: each update answers what the knob says then.
#[derive(Debug, Clone)]
struct Dial {
    knob: Arc<AtomicU32>,
    current: u32,
}

impl Dial {
    fn new(knob: &Arc<AtomicU32>) -> Self {
        Self {
            knob: Arc::clone(knob),
            current: knob.load(SeqCst),
        }
    }
}

impl LimitAlgorithm for Dial {
    fn limit(&self) -> u32 {
        self.current
    }
    fn update(&mut self, _: &Sample) -> u32 {
        self.current = self.knob.load(SeqCst);
        self.current
    }
    fn bounds(&self) -> (u32, u32) {
        (1, u32::MAX)
    }
}

type Permit<A = FixedLimit> = AdaptivePermit<A, FakeClock>;
type Waiting<T> = Pin<Box<dyn Future<Output = Result<T, Rejected>> + Send>>;

fn cx() -> Context<'static> {
    Context::from_waker(noop_waker_ref())
}

fn poll<T>(future: &mut Waiting<T>) -> Poll<Result<T, Rejected>> {
    future.as_mut().poll(&mut cx())
}

/// A poll's result in short: `None` waiting, `Some(true)` admitted, `Some(false)` refused.
fn shown<T>(p: &Poll<Result<T, Rejected>>) -> Option<bool> {
    match p {
        Poll::Ready(r) => Some(r.is_ok()),
        Poll::Pending => None,
    }
}

fn poll_any<F: Future + ?Sized>(future: Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut cx())
}

/// A caller of `priority` on `limiter` that waits with no deadline, polled once: `Pending`
/// when it queued.
fn join<A: LimitAlgorithm + Send + 'static>(
    limiter: &AdaptiveLimiter<A, FakeClock>,
    priority: Priority,
) -> (Waiting<Permit<A>>, Poll<Result<(), Rejected>>) {
    let mut future: Waiting<Permit<A>> = Box::pin(
        limiter
            .with_priority(priority)
            .admit(Wait::Until(Deadline::none())),
    );
    let first = poll(&mut future).map(|r| r.map(drop));
    (future, first)
}

/// As `join`, and it must have queued.
fn queued<A: LimitAlgorithm + Send + 'static>(
    limiter: &AdaptiveLimiter<A, FakeClock>,
    priority: Priority,
) -> Waiting<Permit<A>> {
    let (future, first) = join(limiter, priority);
    assert!(
        first.is_pending(),
        "{priority:?} should queue, got {first:?}"
    );
    future
}

fn fixed(limit: u32, queue: usize, clock: &FakeClock) -> AdaptiveLimiterBuilderFixed {
    AdaptiveLimiter::builder(FixedLimit(limit))
        .max_queue(queue)
        .max_wait(None)
        .runtime(clock.clone())
}

type AdaptiveLimiterBuilderFixed =
    tidewall::adaptive::AdaptiveLimiterBuilder<FixedLimit, FakeClock>;

fn settled<A: LimitAlgorithm + Send + 'static>(limiter: &AdaptiveLimiter<A, FakeClock>) {
    assert_eq!(
        (limiter.in_flight(), limiter.queued()),
        (0, 0),
        "everything came back"
    );
    let limit = limiter.limit() as usize;
    let critical = limiter.with_priority(Priority::Critical);
    let all: Vec<_> = (0..limit)
        .map(|i| {
            critical
                .try_acquire()
                .unwrap_or_else(|e| panic!("slot {i} of {limit}: {e:?}"))
        })
        .collect();
    assert_eq!(
        critical.try_acquire().unwrap_err(),
        Rejected::BulkheadFull,
        "no more than the limit"
    );
    drop(all);
    assert_eq!(limiter.in_flight(), 0);
}

fn no_panic<T>(what: &str, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| panic!("{what} panicked"))
}

fn held_by<A: LimitAlgorithm + Send + 'static>(
    limiter: &AdaptiveLimiter<A, FakeClock>,
    priority: Priority,
    n: usize,
) -> Vec<Permit<A>> {
    let handle = limiter.with_priority(priority);
    (0..n)
        .map(|i| {
            handle
                .try_acquire()
                .unwrap_or_else(|e| panic!("{priority:?} #{i}: {e:?}"))
        })
        .collect()
}

// === shares ================================================================================

/// Doc (`share`): "they are admitted while fewer than `limit × share` are in flight (always
/// when none are)". So a priority holds `⌈limit × share⌉` slots at once (at least one), at
/// odd limits and shares, tiny ones (1e-9, the least subnormal) and the largest limit.
#[test]
fn a_share_holds_the_ceiling_of_limit_times_share() {
    let clock = FakeClock::new();
    for (limit, share, admitted) in [
        (7, 0.3, 3),     // 2.1
        (10, 0.25, 3),   // 2.5
        (10, 0.21, 3),   // 2.1
        (3, 0.4, 2),     // 1.2
        (9, 0.5, 5),     // 4.5
        (11, 0.8, 9),    // 8.8
        (13, 0.3, 4),    // 3.9
        (6, 0.9, 6),     // 5.4
        (4, 0.8, 4),     // 3.2
        (2, 0.8, 2),     // 1.6
        (1, 0.8, 1),     // 0.8: none in flight
        (1, 1e-9, 1),    // always when none are
        (10, 1e-9, 1),   // ditto
        (10, 5e-324, 1), // the least positive f64
        (1, 1.0, 1),
        (u32::MAX, 1e-9, 5), // 4.29…
    ] {
        for priority in [Priority::Default, Priority::Sheddable] {
            let limiter = AdaptiveLimiter::builder(FixedLimit(limit))
                .share(Priority::Default, share)
                .share(Priority::Sheddable, share)
                .runtime(clock.clone())
                .build()
                .unwrap();
            let handle = limiter.with_priority(priority);
            let held: Vec<_> = std::iter::from_fn(|| handle.try_acquire().ok())
                .take(admitted + 5)
                .collect();
            assert_eq!(
                held.len(),
                admitted,
                "limit {limit}, share {share}, {priority:?}"
            );
            // Critical calls still have the whole limit.
            let critical = limiter.with_priority(Priority::Critical);
            let more = usize::try_from(limit).unwrap().min(64) - admitted.min(64);
            let rest: Vec<_> = (0..more)
                .map(|_| critical.try_acquire().expect("critical: the whole limit"))
                .collect();
            drop((held, rest));
            assert_eq!(limiter.in_flight(), 0);
        }
    }
}

/// Doc (`share`): "sheddable calls are refused once the limit is four-fifths used"; "admitted
/// while fewer than `limit × share` are in flight". With a decimal share whose product is a
/// whole number (100 × 0.55 = 55, 25 × 0.28 = 7, 100 × 0.07 = 7), exactly that many: a
/// binary rounding of the share (0.55 is 0.55000000000000004…) must not admit one more.
#[test]
fn a_whole_limit_times_share_is_not_exceeded_by_float_rounding() {
    let clock = FakeClock::new();
    for (limit, share, admitted) in [
        (100, 0.55, 55),
        (25, 0.28, 7),
        (100, 0.07, 7),
        (50, 0.56, 28),
    ] {
        let limiter = AdaptiveLimiter::builder(FixedLimit(limit))
            .share(Priority::Sheddable, share)
            .runtime(clock.clone())
            .build()
            .unwrap();
        let sheddable = limiter.with_priority(Priority::Sheddable);
        let held: Vec<_> = std::iter::from_fn(|| sheddable.try_acquire().ok())
            .take(100)
            .collect();
        assert_eq!(
            held.len(),
            admitted,
            "limit {limit} × share {share} = {admitted}"
        );
    }
}

/// Doc (`build`): "`ConfigError::OutOfRange` (or `NotFinite`) for a share outside `(0, 1]`
/// (the field is `critical_share`, `default_share` or `sheddable_share`), and
/// `ConfigError::Conflict` for a critical share below 1 or a less important priority's share
/// above a more important one's". Every combination of odd shares: the documented error, or
/// a limiter, never a panic.
#[test]
fn any_shares_are_a_limiter_or_the_documented_error() {
    let odd = [
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        -1.0,
        -0.0,
        0.0,
        5e-324,
        1e-9,
        0.5,
        0.8,
        0.999_999_999_999_999_9,
        1.0,
        1.000_000_000_000_000_2,
        2.0,
        f64::MAX,
    ];
    let in_range = |x: f64| x > 0.0 && x <= 1.0;
    for &c in &odd {
        for &d in &odd {
            for &s in &odd {
                let built = no_panic("build", || {
                    AdaptiveLimiter::builder(FixedLimit(10))
                        .share(Priority::Critical, c)
                        .share(Priority::Default, d)
                        .share(Priority::Sheddable, s)
                        .build()
                        .map(drop)
                });
                let what = format!("critical {c}, default {d}, sheddable {s}: {built:?}");
                let conflict = c < 1.0 || d > c || s > d;
                let share_of = |field: &str| match field {
                    "critical_share" => c,
                    "default_share" => d,
                    "sheddable_share" => s,
                    _ => panic!("{what}: unknown field {field}"),
                };
                match built {
                    Ok(()) => assert!(
                        in_range(c) && in_range(d) && in_range(s) && c == 1.0 && s <= d,
                        "accepted {what}"
                    ),
                    Err(ConfigError::NotFinite { field }) => {
                        assert!(!share_of(field).is_finite(), "{what}");
                    }
                    Err(ConfigError::OutOfRange { field, .. }) => {
                        assert!(!in_range(share_of(field)), "{what}");
                    }
                    Err(ConfigError::Conflict { .. }) => assert!(conflict, "{what}"),
                    Err(other) => panic!("undocumented {other:?} for {what}"),
                }
            }
        }
    }
    // Exactly 1 everywhere, and a tiny sheddable share, are fine.
    assert!(
        AdaptiveLimiter::builder(FixedLimit(10))
            .share(Priority::Critical, 1.0)
            .share(Priority::Default, 1.0)
            .share(Priority::Sheddable, 1.0)
            .build()
            .is_ok()
    );
    assert!(
        AdaptiveLimiter::builder(FixedLimit(10))
            .share(Priority::Sheddable, 1e-9)
            .build()
            .is_ok()
    );
}

/// Doc (`max_wait`, `discipline`, `build`): "As `BulkheadBuilder::build` for the queue, the
/// wait and the discipline": a `max_wait` beyond `u64` nanoseconds is `DurationOverflow`, a
/// zero `max_wait` with a queue `OutOfRange`, a huge queue and `Duration::MAX` CoDel settings
/// answer without a panic.
#[test]
fn extreme_queue_settings_are_typed_errors_or_limiters() {
    let base = || AdaptiveLimiter::builder(FixedLimit(4));
    assert_eq!(
        base()
            .max_queue(1)
            .max_wait(Duration::MAX)
            .build()
            .map(drop),
        Err(ConfigError::DurationOverflow { field: "max_wait" })
    );
    assert!(base().max_queue(0).max_wait(Duration::ZERO).build().is_ok());
    let huge = no_panic("max_queue(usize::MAX)", || {
        base().max_queue(usize::MAX).build().map(drop)
    });
    assert!(
        matches!(huge, Ok(()) | Err(ConfigError::OutOfRange { .. })),
        "{huge:?}"
    );
    for codel in [
        QueueDiscipline::Codel {
            target: ms(5),
            interval: Duration::MAX,
        },
        QueueDiscipline::Codel {
            target: Duration::MAX,
            interval: Duration::MAX,
        },
    ] {
        let got = no_panic("codel MAX", || {
            base().max_queue(2).discipline(codel).build().map(drop)
        });
        assert!(
            matches!(got, Ok(()) | Err(ConfigError::DurationOverflow { .. })),
            "{codel:?}: {got:?}"
        );
        let got = no_panic("codel MAX", || {
            Bulkhead::builder(1).discipline(codel).build().map(drop)
        });
        assert!(
            matches!(got, Ok(()) | Err(ConfigError::DurationOverflow { .. })),
            "{codel:?}: {got:?}"
        );
    }
}

/// Doc (`AdaptiveLimiterBuilder::build`): "As `BulkheadBuilder::build` for the queue, the
/// wait and the discipline", and `BulkheadBuilder::build`: "`ConfigError::Zero` for
/// `max_concurrent == 0`, and for a zero `max_wait` with a non-empty queue". (The doc once
/// read as if this were `OutOfRange`; this test found it.)
#[test]
fn a_zero_max_wait_with_a_queue_is_zero_as_documented() {
    for built in [
        AdaptiveLimiter::builder(FixedLimit(4))
            .max_queue(1)
            .max_wait(Duration::ZERO)
            .build()
            .map(drop),
        Bulkhead::builder(4)
            .max_queue(1)
            .max_wait(Duration::ZERO)
            .build()
            .map(drop),
    ] {
        assert!(
            matches!(built, Err(ConfigError::Zero { field: "max_wait" })),
            "{built:?}"
        );
    }
}

/// Doc (`with_priority`): "A handle to the same limiter whose calls have `priority` (this
/// one's are `Priority::Default` unless it was made here too)"; "Cheap to clone: clones share
/// the limit."
#[test]
fn handles_share_one_limit_and_keep_their_priority() {
    let clock = FakeClock::new();
    let limiter = fixed(3, 0, &clock).build().unwrap();
    assert_eq!(limiter.priority(), Priority::Default);
    let sheddable = limiter.with_priority(Priority::Sheddable);
    assert_eq!(sheddable.clone().priority(), Priority::Sheddable);
    let critical = sheddable.with_priority(Priority::Critical);
    assert_eq!(critical.priority(), Priority::Critical);
    assert_eq!(
        critical.with_priority(Priority::Default).priority(),
        Priority::Default
    );
    let a = critical.try_acquire().unwrap();
    let b = sheddable.try_acquire().unwrap();
    assert_eq!(
        (
            limiter.in_flight(),
            critical.in_flight(),
            sheddable.in_flight()
        ),
        (2, 2, 2)
    );
    // 2 of 3 in flight: 2 < 2.4, a sheddable call still fits; then 3 is the whole limit.
    let c = sheddable.clone().try_acquire().unwrap();
    assert_eq!(critical.try_acquire().unwrap_err(), Rejected::BulkheadFull);
    drop((a, b, c));
    settled(&limiter);
}

// === the queue: order, shedding, the rejection ============================================

/// Doc (`try_acquire`): "Admits a call of this handle's priority now if fewer than its share
/// of the limit are in flight and nobody as important or more is queued (queued callers of
/// lower priority, or waiting for their own share, are passed)".
#[test]
fn try_acquire_passes_only_waiters_less_important_or_waiting_for_their_share() {
    let clock = FakeClock::new();
    let limiter = fixed(4, 4, &clock)
        .share(Priority::Sheddable, 0.5)
        .build()
        .unwrap();
    let held = held_by(&limiter, Priority::Default, 3);
    let waiter = queued(&limiter, Priority::Sheddable);
    // A sheddable caller is behind a sheddable waiter (and over its share anyway).
    assert_eq!(
        limiter
            .with_priority(Priority::Sheddable)
            .try_acquire()
            .unwrap_err(),
        Rejected::BulkheadFull
    );
    // A default caller passes the sheddable waiter, who cannot use the free slot.
    let passed = limiter.try_acquire().expect("3 of 4: a default call fits");
    // Full now: a critical caller is refused like anyone.
    assert_eq!(
        limiter
            .with_priority(Priority::Critical)
            .try_acquire()
            .unwrap_err(),
        Rejected::BulkheadFull
    );
    // A default waiter joins (the limit is full); when a slot frees, a default caller does
    // not pass it: it is as important.
    let mut default_waiter = queued(&limiter, Priority::Default);
    drop(passed);
    assert_eq!(limiter.try_acquire().unwrap_err(), Rejected::BulkheadFull);
    assert!(matches!(poll(&mut default_waiter), Poll::Ready(Ok(_))));
    drop((waiter, default_waiter, held));
    settled(&limiter);
}

/// Doc (`Priority`): "its queue serves the most important waiters first". A sheddable waiter
/// that cannot use a free slot (3 of 4 in flight, its share 2) heads the queue: a default or
/// critical caller who comes next is the most important waiter and the slot is free, so it is
/// admitted, not stuck behind the sheddable one until some call ends.
#[test]
fn a_free_slot_goes_to_a_more_important_caller_behind_a_waiter_that_cannot_use_it() {
    let clock = FakeClock::new();
    let limiter = fixed(4, 4, &clock)
        .share(Priority::Sheddable, 0.5)
        .build()
        .unwrap();
    let mut held = held_by(&limiter, Priority::Default, 3);
    let mut sheddable = queued(&limiter, Priority::Sheddable);
    let mut default: Waiting<Permit> = Box::pin(limiter.admit(Wait::Until(Deadline::none())));
    let permit = match poll(&mut default) {
        Poll::Ready(Ok(permit)) => permit,
        Poll::Ready(Err(e)) => panic!("refused: {e:?}"),
        Poll::Pending => match poll(&mut default) {
            Poll::Ready(Ok(permit)) => permit,
            _ => panic!(
                "3 of 4 in flight and the default caller is the most important waiter, yet it \
                 waits (queued: {})",
                limiter.queued()
            ),
        },
    };
    assert_eq!((limiter.in_flight(), limiter.queued()), (4, 1));
    drop(permit);
    drop(held.pop());
    assert!(
        poll(&mut sheddable).is_pending(),
        "2 in flight: not below 2"
    );
    drop(held.pop());
    assert!(matches!(poll(&mut sheddable), Poll::Ready(Ok(_))));
    drop((sheddable, held));
    settled(&limiter);
}

/// Doc (`Priority`): "its queue serves the most important waiters first, shedding the newest
/// of the least important to make room". Room is made in the queue for a caller who must
/// wait; a default caller with a free slot for it (4 of 6 in flight) waits for nothing, so
/// the sheddable waiter (waiting for its share of 3) must not be shed for it.
#[test]
fn a_caller_admitted_at_once_sheds_nobody() {
    let clock = FakeClock::new();
    let limiter = fixed(6, 1, &clock)
        .share(Priority::Sheddable, 0.5)
        .build()
        .unwrap();
    let held = held_by(&limiter, Priority::Default, 3);
    let mut sheddable = queued(&limiter, Priority::Sheddable);
    let mut default: Waiting<Permit> = Box::pin(limiter.admit(Wait::Until(Deadline::none())));
    let Poll::Ready(Ok(permit)) = poll(&mut default) else {
        panic!("a free slot for a default call")
    };
    assert_eq!(limiter.in_flight(), 4);
    let shed = poll(&mut sheddable).map(|r| r.map(drop));
    assert!(
        shed.is_pending(),
        "the sheddable waiter was refused ({shed:?}) to make room the default caller never used"
    );
    drop((permit, default, sheddable, held));
    settled(&limiter);
}

/// Doc (`Priority`): "An adaptive limiter admits each priority while fewer than its share of
/// the limit are in flight, and its queue serves the most important waiters first". A
/// critical call that does not wait (`Wait::No`, an `AdmitLayer` in `Reject` mode) at 3 of 4
/// in flight is admitted even though a sheddable caller waits for its share (2) in the queue:
/// the waiter is not ahead of it. (Only `try_acquire` documents "and nobody is queued".)
#[test]
fn a_waiting_sheddable_caller_does_not_refuse_a_critical_call_that_does_not_wait() {
    let clock = FakeClock::new();
    let limiter = fixed(4, 4, &clock)
        .share(Priority::Sheddable, 0.5)
        .build()
        .unwrap();
    let held = held_by(&limiter, Priority::Default, 3);
    let sheddable = queued(&limiter, Priority::Sheddable);
    let critical = limiter.with_priority(Priority::Critical);
    let mut now = Box::pin(critical.admit(Wait::No));
    let got = poll_any(now.as_mut()).map(|r| r.map(drop));
    let mut svc = AdmitLayer::new(critical.clone(), AdmitMode::Reject)
        .runtime(clock.clone())
        .layer(echo());
    let through_tower = poll_any(std::pin::pin!(async {
        std::future::poll_fn(|cx| svc.poll_ready(cx)).await?;
        svc.call(1).await
    }));
    assert_eq!(
        (got, through_tower),
        (Poll::Ready(Ok(())), Poll::Ready(Ok(1))),
        "3 of 4 in flight: a critical call has a free slot, a sheddable waiter is behind it"
    );
    drop((now, sheddable, held));
    settled(&limiter);
}

/// Doc (`Priority`): "its queue serves the most important waiters first, shedding the newest
/// of the least important to make room". A full queue of [S1, D1, S2]: each critical caller
/// sheds S2, then S1, then D1; a fourth critical caller, and any default one, find only their
/// equals or betters and are refused at once; the shed get `BulkheadFull` (the bulkhead's
/// rejection for a full queue). The queue never holds more than `max_queue`.
#[test]
fn critical_callers_shed_the_newest_least_important_in_turn() {
    let clock = FakeClock::new();
    let limiter = fixed(1, 3, &clock).build().unwrap();
    let first = limiter.try_acquire().unwrap();
    let mut s1 = queued(&limiter, Priority::Sheddable);
    let mut d1 = queued(&limiter, Priority::Default);
    let mut s2 = queued(&limiter, Priority::Sheddable);
    let full = || Poll::Ready(Err::<(), _>(Rejected::BulkheadFull));

    let mut c1 = queued(&limiter, Priority::Critical);
    assert_eq!(
        poll(&mut s2).map(|r| r.map(drop)),
        full(),
        "S2 is the newest sheddable"
    );
    assert!(poll(&mut s1).is_pending() && poll(&mut d1).is_pending());
    assert_eq!(limiter.queued(), 3);

    let mut c2 = queued(&limiter, Priority::Critical);
    assert_eq!(poll(&mut s1).map(|r| r.map(drop)), full(), "then S1");
    assert!(poll(&mut d1).is_pending());

    let mut c3 = queued(&limiter, Priority::Critical);
    assert_eq!(poll(&mut d1).map(|r| r.map(drop)), full(), "then D1");
    assert_eq!(limiter.queued(), 3);

    for priority in Priority::ALL {
        let (_, first) = join(&limiter, priority);
        assert_eq!(first, full(), "{priority:?}: a queue of critical callers");
        assert_eq!(limiter.queued(), 3);
    }
    // FIFO among the critical.
    drop(first);
    let Poll::Ready(Ok(p)) = poll(&mut c1) else {
        panic!("C1 first")
    };
    assert!(poll(&mut c2).is_pending() && poll(&mut c3).is_pending());
    drop(p);
    let Poll::Ready(Ok(p)) = poll(&mut c2) else {
        panic!("then C2")
    };
    assert!(poll(&mut c3).is_pending());
    drop(p);
    assert!(matches!(poll(&mut c3), Poll::Ready(Ok(_))));
    drop((c1, c2, c3, s1, s2, d1));
    settled(&limiter);
}

/// Doc (`QueueDiscipline::Lifo`): "The newest first"; (`Priority`): "its queue serves the most
/// important waiters first". Under LIFO the priorities still come first, newest first within
/// each: [D1, D2, C1, D3, S1, C2] are served C2, C1, D3, D2, D1, S1.
#[test]
fn lifo_serves_the_most_important_first_and_the_newest_within() {
    let clock = FakeClock::new();
    let limiter = fixed(1, 10, &clock)
        .discipline(QueueDiscipline::Lifo)
        .build()
        .unwrap();
    let first = limiter.try_acquire().unwrap();
    let plan = [
        ("D1", Priority::Default),
        ("D2", Priority::Default),
        ("C1", Priority::Critical),
        ("D3", Priority::Default),
        ("S1", Priority::Sheddable),
        ("C2", Priority::Critical),
    ];
    let mut waiters: Vec<(&str, Option<Waiting<Permit>>)> = plan
        .iter()
        .map(|&(name, p)| (name, Some(queued(&limiter, p))))
        .collect();
    drop(first);
    let mut order = Vec::new();
    for _ in 0..plan.len() {
        let mut served = None;
        for (name, slot) in &mut waiters {
            if let Some(w) = slot {
                match poll(w) {
                    Poll::Ready(Ok(permit)) => {
                        assert!(served.is_none(), "two served at once");
                        served = Some((*name, permit));
                        *slot = None;
                    }
                    Poll::Ready(Err(e)) => panic!("{name}: {e:?}"),
                    Poll::Pending => {}
                }
            }
        }
        let (name, permit) = served.expect("one waiter is served per slot");
        order.push(name);
        drop(permit);
    }
    assert_eq!(order, ["C2", "C1", "D3", "D2", "D1", "S1"]);
    settled(&limiter);
}

/// Doc (`Priority`): "shedding the newest of the least important to make room", whatever the
/// discipline: under LIFO too the newest sheddable waiter is the one shed.
#[test]
fn lifo_sheds_the_newest_of_the_least_important_too() {
    let clock = FakeClock::new();
    let limiter = fixed(1, 2, &clock)
        .discipline(QueueDiscipline::Lifo)
        .build()
        .unwrap();
    let first = limiter.try_acquire().unwrap();
    let mut old = queued(&limiter, Priority::Sheddable);
    let mut new = queued(&limiter, Priority::Sheddable);
    let mut default = queued(&limiter, Priority::Default);
    assert!(matches!(
        poll(&mut new),
        Poll::Ready(Err(Rejected::BulkheadFull))
    ));
    assert!(poll(&mut old).is_pending());
    drop(first);
    let Poll::Ready(Ok(p)) = poll(&mut default) else {
        panic!("the default caller first")
    };
    drop(p);
    assert!(matches!(poll(&mut old), Poll::Ready(Ok(_))));
    drop((old, new, default));
    settled(&limiter);
}

/// Doc (`max_queue`): "Callers that may wait for a slot when the limit is reached (default 0:
/// refused at once with `Rejected::BulkheadFull`, as load shedding wants)": with no queue a
/// critical caller sheds nobody and is refused at once, through `admit` too.
#[test]
fn with_no_queue_every_priority_is_refused_at_once() {
    let clock = FakeClock::new();
    let limiter = AdaptiveLimiter::builder(FixedLimit(1))
        .runtime(clock.clone())
        .build()
        .unwrap();
    let held = limiter
        .with_priority(Priority::Sheddable)
        .try_acquire()
        .unwrap();
    for priority in Priority::ALL {
        let handle = limiter.with_priority(priority);
        assert_eq!(handle.try_acquire().unwrap_err(), Rejected::BulkheadFull);
        for wait in [Wait::No, Wait::Until(Deadline::none())] {
            let mut f = Box::pin(handle.admit(wait));
            assert!(
                matches!(
                    poll_any(f.as_mut()),
                    Poll::Ready(Err(Rejected::BulkheadFull))
                ),
                "{priority:?} {wait:?}"
            );
        }
    }
    assert_eq!(limiter.queued(), 0);
    drop(held);
    settled(&limiter);
}

/// Doc (`share`): "admitted while fewer than `limit × share` are in flight"; `Wait::No`:
/// refused at once with the stage's own reason.
#[test]
fn admit_without_waiting_respects_the_share() {
    let clock = FakeClock::new();
    let limiter = fixed(5, 4, &clock).build().unwrap();
    let held = held_by(&limiter, Priority::Critical, 4);
    let mut refused = Box::pin(limiter.with_priority(Priority::Sheddable).admit(Wait::No));
    assert!(matches!(
        poll_any(refused.as_mut()),
        Poll::Ready(Err(Rejected::BulkheadFull))
    ));
    let mut ok = Box::pin(limiter.admit(Wait::No));
    assert!(matches!(poll_any(ok.as_mut()), Poll::Ready(Ok(_))));
    drop((ok, refused, held));
    settled(&limiter);
}

/// Doc (builder `on_event`): "Tells `listener` of its refusals and waits, as a bulkhead's
/// `on_event` does" (a bulkhead's: "each refusal with its reason"). A waiter shed from the
/// queue is refused: one `bulkhead_full` event for it, one for the caller refused at once.
#[test]
fn a_shed_waiter_is_reported_as_a_refusal() {
    let clock = FakeClock::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let limiter = fixed(1, 1, &clock)
        .name("shedder")
        .on_event(move |event| {
            if let EventKind::Rejected(why) = event.kind {
                log.lock()
                    .unwrap()
                    .push(format!("{} {}", event.name, why.kind()));
            }
        })
        .build()
        .unwrap();
    let held = limiter.try_acquire().unwrap();
    let mut sheddable = queued(&limiter, Priority::Sheddable);
    let (_refused, first) = join(&limiter, Priority::Sheddable);
    assert_eq!(first, Poll::Ready(Err(Rejected::BulkheadFull)));
    assert_eq!(seen.lock().unwrap().len(), 1);
    let default = queued(&limiter, Priority::Default);
    assert!(matches!(
        poll(&mut sheddable),
        Poll::Ready(Err(Rejected::BulkheadFull))
    ));
    assert_eq!(
        *seen.lock().unwrap(),
        ["shedder bulkhead_full", "shedder bulkhead_full"],
        "the shed waiter's refusal is reported"
    );
    drop((default, sheddable, held));
    settled(&limiter);
}

// === cancellation ==========================================================================

/// Doc (bulkhead, cancel safety): "a waiter dropped while queued leaves the queue; a permit
/// granted to it at that instant is passed on. Nothing leaks." With priorities: a grant to the
/// critical waiter, dropped before it was polled, goes to the next most important waiter.
#[test]
fn a_grant_to_a_dropped_waiter_passes_to_the_next_most_important() {
    let clock = FakeClock::new();
    let limiter = fixed(1, 5, &clock).build().unwrap();
    let first = limiter.try_acquire().unwrap();
    let mut s1 = queued(&limiter, Priority::Sheddable);
    let mut d1 = queued(&limiter, Priority::Default);
    let c1 = queued(&limiter, Priority::Critical);
    drop(first); // granted to C1
    drop(c1); // which never sees it
    let Poll::Ready(Ok(p)) = poll(&mut d1) else {
        panic!("the slot passes to D1")
    };
    assert!(poll(&mut s1).is_pending());
    assert_eq!((limiter.in_flight(), limiter.queued()), (1, 1));
    drop(p);
    // S1 granted, then dropped unpolled as well.
    drop(s1);
    drop(d1);
    settled(&limiter);
}

/// A shed waiter dropped without ever being polled again, another dropped after seeing its
/// rejection, callers dropped right after a grant: nothing is released twice or kept.
#[test]
fn dropping_shed_and_granted_waiters_loses_nothing() {
    let clock = FakeClock::new();
    let limiter = fixed(2, 2, &clock).build().unwrap();
    let held = held_by(&limiter, Priority::Default, 2);
    let unseen = queued(&limiter, Priority::Sheddable);
    let mut seen = queued(&limiter, Priority::Sheddable);
    let c1 = queued(&limiter, Priority::Critical); // sheds `seen`
    let c2 = queued(&limiter, Priority::Critical); // sheds `unseen`
    assert!(matches!(
        poll(&mut seen),
        Poll::Ready(Err(Rejected::BulkheadFull))
    ));
    drop(seen);
    drop(unseen);
    assert_eq!(limiter.queued(), 2);
    drop(held); // both critical callers granted...
    drop((c1, c2)); // ...and dropped unpolled
    settled(&limiter);
}

// === a reference model of the queue ========================================================

#[derive(Debug, Clone, Copy, PartialEq)]
enum Order {
    Fifo,
    Lifo,
}

/// The queue as the docs describe it: each priority admitted while fewer than its share are
/// in flight; waiters served most important first (FIFO or LIFO within); a full queue sheds
/// its newest least important waiter for a more important caller; a grant to a dropped waiter
/// passes on.
struct Model {
    limit: u32,
    shares: [f64; 3],
    max_queue: usize,
    order: Order,
    in_flight: usize,
    /// (id, priority, arrival)
    queue: Vec<(usize, Priority, u64)>,
    granted: BTreeSet<usize>,
    shed: BTreeSet<usize>,
    arrivals: u64,
}

fn rank(p: Priority) -> usize {
    Priority::ALL.iter().position(|&q| q == p).unwrap()
}

impl Model {
    fn allowed(&self, p: Priority) -> bool {
        // ⌈limit × share⌉, read as the decimal the test chose.
        let slots = (f64::from(self.limit) * self.shares[rank(p)] - 1e-9)
            .ceil()
            .max(1.0);
        #[allow(clippy::cast_precision_loss)]
        let in_flight = self.in_flight as f64;
        in_flight < slots
    }
    fn next(&self) -> Option<usize> {
        (0..self.queue.len()).min_by_key(|&i| {
            let (_, p, at) = self.queue[i];
            let at = if self.order == Order::Fifo {
                at
            } else {
                u64::MAX - at
            };
            (rank(p), at)
        })
    }
    fn serve(&mut self) {
        while let Some(i) = self.next() {
            if !self.allowed(self.queue[i].1) {
                break;
            }
            let (id, _, _) = self.queue.remove(i);
            self.in_flight += 1;
            self.granted.insert(id);
        }
    }
    /// Whether someone as important as `p` or more waits (a caller of `p` does not pass them).
    fn waits_at_or_above(&self, p: Priority) -> bool {
        self.queue.iter().any(|w| rank(w.1) <= rank(p))
    }
    fn try_acquire(&mut self, p: Priority) -> bool {
        let ok = !self.waits_at_or_above(p) && self.allowed(p);
        if ok {
            self.in_flight += 1;
        }
        ok
    }
    /// The first poll of a waiting caller: `Some(true)` admitted, `Some(false)` refused,
    /// `None` queued.
    fn admit(&mut self, id: usize, p: Priority) -> Option<bool> {
        if !self.waits_at_or_above(p) && self.allowed(p) {
            // Admitted at once, past waiters who could not use the slot: nobody is shed.
            self.in_flight += 1;
            return Some(true);
        }
        self.arrivals += 1;
        if self.queue.len() < self.max_queue {
            self.queue.push((id, p, self.arrivals));
            return None;
        }
        let victim = (0..self.queue.len())
            .filter(|&i| rank(self.queue[i].1) > rank(p))
            .max_by_key(|&i| (rank(self.queue[i].1), self.queue[i].2));
        match victim {
            Some(i) => {
                let (shed, _, _) = self.queue.remove(i);
                self.shed.insert(shed);
                self.queue.push((id, p, self.arrivals));
                None
            }
            None => Some(false),
        }
    }
    fn release(&mut self) {
        self.in_flight -= 1;
        self.serve();
    }
    fn drop_waiter(&mut self, id: usize) {
        if self.granted.remove(&id) {
            self.release();
        } else {
            self.shed.remove(&id);
            self.queue.retain(|w| w.0 != id);
        }
    }
    fn poll(&mut self, id: usize) -> Poll<bool> {
        if self.granted.remove(&id) {
            Poll::Ready(true)
        } else if self.shed.remove(&id) {
            Poll::Ready(false)
        } else {
            Poll::Pending
        }
    }
}

/// The limiter against the model, over seeded random operations (acquire, wait, poll, drop a
/// waiter granted or not, end a call), for both disciplines, several limits, shares and
/// queue lengths: every result the same, every count the same.
#[test]
fn the_queue_matches_a_reference_model_under_random_operations() {
    for seed in 0..600_u64 {
        let mut rng = Rng::new(seed);
        let limit = [1, 2, 3, 5, 6][rng.below(5)];
        let shares = [
            [1.0, 1.0, 0.8],
            [1.0, 0.9, 0.5],
            [1.0, 0.5, 0.25],
            [1.0, 1.0, 1.0],
            [1.0, 0.8, 0.3],
        ][rng.below(5)];
        let max_queue = rng.below(5);
        let order = if rng.below(2) == 0 {
            Order::Fifo
        } else {
            Order::Lifo
        };
        let clock = FakeClock::new();
        let limiter = AdaptiveLimiter::builder(FixedLimit(limit))
            .share(Priority::Default, shares[1])
            .share(Priority::Sheddable, shares[2])
            .max_queue(max_queue)
            .max_wait(None)
            .discipline(match order {
                Order::Fifo => QueueDiscipline::Fifo,
                Order::Lifo => QueueDiscipline::Lifo,
            })
            .runtime(clock.clone())
            .build()
            .unwrap();
        let mut model = Model {
            limit,
            shares,
            max_queue,
            order,
            in_flight: 0,
            queue: Vec::new(),
            granted: BTreeSet::new(),
            shed: BTreeSet::new(),
            arrivals: 0,
        };
        let mut permits: Vec<Permit> = Vec::new();
        let mut waiters: Vec<(usize, Priority, Waiting<Permit>)> = Vec::new();
        let mut log: Vec<String> = Vec::new();
        for step in 0..250_usize {
            let p = rng.priority();
            let what = rng.below(10);
            match what {
                0 | 1 => {
                    let got = limiter.with_priority(p).try_acquire();
                    let want = model.try_acquire(p);
                    log.push(format!("try {p:?} → {}", got.is_ok()));
                    assert_eq!(got.is_ok(), want, "seed {seed} step {step}: {log:#?}");
                    if let Ok(permit) = got {
                        permits.push(permit);
                    }
                }
                2..=4 => {
                    let id = step;
                    let mut f: Waiting<Permit> = Box::pin(
                        limiter
                            .with_priority(p)
                            .admit(Wait::Until(Deadline::none())),
                    );
                    let got = poll(&mut f);
                    let want = model.admit(id, p);
                    log.push(format!("admit #{id} {p:?} → {:?}", shown(&got)));
                    match (got, want) {
                        (Poll::Ready(Ok(permit)), Some(true)) => permits.push(permit),
                        (Poll::Ready(Err(Rejected::BulkheadFull)), Some(false)) => {}
                        (Poll::Pending, None) => waiters.push((id, p, f)),
                        (got, want) => panic!(
                            "seed {seed} step {step}: admit {p:?} gave {:?}, the docs say {want:?} \
                             (true: admitted, false: refused, None: queued)\n{log:#?}\n\
                             limit {limit}, shares {shares:?}, max_queue {max_queue}, {order:?}; \
                             model: in flight {}, queue {:?}; limiter: in flight {}, queued {}",
                            got.map(|r| r.map(drop)),
                            model.in_flight,
                            model.queue,
                            limiter.in_flight(),
                            limiter.queued()
                        ),
                    }
                }
                5 | 6 => {
                    if !permits.is_empty() {
                        let i = rng.below(permits.len());
                        drop(permits.swap_remove(i));
                        model.release();
                        log.push("release".into());
                    }
                }
                7 => {
                    if !waiters.is_empty() {
                        let i = rng.below(waiters.len());
                        let (id, p, f) = waiters.swap_remove(i);
                        drop(f);
                        model.drop_waiter(id);
                        log.push(format!("drop #{id} {p:?}"));
                    }
                }
                _ => {
                    let mut i = 0;
                    while i < waiters.len() {
                        let (id, p) = (waiters[i].0, waiters[i].1);
                        let got = poll(&mut waiters[i].2);
                        let want = model.poll(id);
                        log.push(format!("poll #{id} {p:?} → {:?}", shown(&got)));
                        match (got, want) {
                            (Poll::Ready(Ok(permit)), Poll::Ready(true)) => {
                                permits.push(permit);
                                drop(waiters.swap_remove(i));
                            }
                            (Poll::Ready(Err(Rejected::BulkheadFull)), Poll::Ready(false)) => {
                                drop(waiters.swap_remove(i));
                            }
                            (Poll::Pending, Poll::Pending) => i += 1,
                            (got, want) => panic!(
                                "seed {seed} step {step}: #{id} {p:?} polled {:?}, the docs say \
                                 {want:?}\n{log:#?}",
                                got.map(|r| r.map(drop))
                            ),
                        }
                    }
                    if model.granted.is_empty() && model.shed.is_empty() {
                        assert_eq!(
                            (limiter.in_flight(), limiter.queued()),
                            (model.in_flight, model.queue.len()),
                            "seed {seed} step {step}: counts\n{log:#?}"
                        );
                    }
                }
            }
            assert!(
                limiter.in_flight() <= limit as usize,
                "seed {seed}: over the limit"
            );
            assert!(limiter.queued() <= max_queue, "seed {seed}: over max_queue");
        }
        drop(waiters);
        drop(permits);
        settled(&limiter);
    }
}

// === CoDel =================================================================================

fn codel_bulkhead(
    clock: &FakeClock,
    target: Duration,
    interval: Duration,
    max_wait: Option<Duration>,
) -> Bulkhead<FakeClock> {
    Bulkhead::builder(1)
        .max_queue(10)
        .max_wait(max_wait)
        .discipline(QueueDiscipline::Codel { target, interval })
        .runtime(clock.clone())
        .build()
        .unwrap()
}

fn wait_on(bulkhead: &Bulkhead<FakeClock>) -> Waiting<OwnedPermit<FakeClock>> {
    let mut f: Waiting<OwnedPermit<FakeClock>> = Box::pin(bulkhead.acquire_owned(Deadline::none()));
    assert!(poll(&mut f).is_pending(), "it should wait");
    f
}

/// How long a waiter waits from `start` (its join): advances the clock, timer by timer, to
/// the moment it is refused (at most `limit` after the call), and returns that time since
/// `start`; `None` if still waiting at `limit`. Fails the test if it is admitted.
fn refused_after(
    clock: &FakeClock,
    waiter: &mut Waiting<OwnedPermit<FakeClock>>,
    limit: Duration,
) -> Option<Duration> {
    let joined = clock.now();
    refused_since(clock, waiter, limit, joined)
}

fn refused_since(
    clock: &FakeClock,
    waiter: &mut Waiting<OwnedPermit<FakeClock>>,
    limit: Duration,
    joined: std::time::Instant,
) -> Option<Duration> {
    let start = clock.now();
    loop {
        match poll(waiter) {
            Poll::Ready(Ok(_)) => panic!("admitted"),
            Poll::Ready(Err(e)) => {
                assert_eq!(e, Rejected::BulkheadFull, "a wait cut short by the queue");
                return Some(clock.now() - joined);
            }
            Poll::Pending => {}
        }
        let next = clock
            .timer_deadlines()
            .into_iter()
            .filter(|&t| t > clock.now())
            .min();
        match next {
            Some(t) if t - start <= limit => clock.advance(t - clock.now()),
            _ => {
                if clock.now() - start < limit {
                    clock.advance(limit - (clock.now() - start));
                    if let Poll::Ready(Err(_)) = poll(waiter) {
                        return Some(clock.now() - joined);
                    }
                }
                return None;
            }
        }
    }
}

/// Doc (`Codel`): "once the queue has not been empty for `interval`, a caller who joins it
/// waits at most `target`". What counts is the queue being non-empty, not any one waiter's
/// age: A joins at 0, B at 50 ms, A is served at 60 ms (B still waits); at 100 ms the queue
/// has not been empty for 100 ms, so C, joining then, waits 5 ms at most.
#[test]
fn codel_counts_the_queue_standing_not_the_oldest_waiters_age() {
    let clock = FakeClock::new();
    let bulkhead = codel_bulkhead(&clock, ms(5), ms(100), Some(Duration::from_secs(1)));
    let held = bulkhead.try_acquire_owned().unwrap();
    let mut a = wait_on(&bulkhead);
    clock.advance(ms(50));
    let mut b = wait_on(&bulkhead);
    clock.advance(ms(10));
    drop(held);
    let Poll::Ready(Ok(a_permit)) = poll(&mut a) else {
        panic!("A is served")
    };
    assert_eq!(
        bulkhead.queued(),
        1,
        "B still waits: the queue never emptied"
    );
    clock.advance(ms(40));
    let mut c = wait_on(&bulkhead);
    assert_eq!(
        refused_after(&clock, &mut c, Duration::from_secs(2)),
        Some(ms(5)),
        "the queue has stood for 100 ms: C waits 5 ms at most"
    );
    assert!(poll(&mut b).is_pending(), "B keeps its own wait");
    drop(a_permit);
    assert!(matches!(poll(&mut b), Poll::Ready(Ok(_))));
    drop((a, b, c));
    assert_eq!((bulkhead.in_flight(), bulkhead.queued()), (0, 0));
}

/// Doc (`Codel`): "once the queue has not been empty for `interval`". A waiter that leaves
/// (dropped) empties the queue: the standing time starts over, so a caller joining 40 ms
/// after the next waiter (100 ms after the first) keeps the full `max_wait`.
#[test]
fn codel_restarts_when_a_cancelled_waiter_empties_the_queue() {
    let clock = FakeClock::new();
    let bulkhead = codel_bulkhead(&clock, ms(5), ms(100), Some(Duration::from_secs(1)));
    let held = bulkhead.try_acquire_owned().unwrap();
    let a = wait_on(&bulkhead);
    clock.advance(ms(60));
    drop(a);
    assert_eq!(bulkhead.queued(), 0);
    let b = wait_on(&bulkhead);
    clock.advance(ms(40));
    let mut c = wait_on(&bulkhead);
    assert_eq!(
        refused_after(&clock, &mut c, Duration::from_secs(2)),
        Some(Duration::from_secs(1)),
        "the queue has stood 40 ms only: the whole max_wait"
    );
    drop((b, c, held));
    assert_eq!((bulkhead.in_flight(), bulkhead.queued()), (0, 0));
}

/// Doc (`Codel`): "a caller who joins it waits at most `target`" also when `target` is longer
/// than `interval` (500 ms against 100 ms; not refused by the docs), and to the nanosecond:
/// joining 1 ns before the queue has stood `interval` keeps `max_wait`.
#[test]
fn codel_with_a_target_above_its_interval_and_at_the_nanosecond() {
    let clock = FakeClock::new();
    let bulkhead = codel_bulkhead(&clock, ms(500), ms(100), Some(Duration::from_secs(2)));
    let held = bulkhead.try_acquire_owned().unwrap();
    let first = wait_on(&bulkhead);
    clock.advance(ms(100) - Duration::from_nanos(1));
    let early_at = clock.now();
    let mut early = wait_on(&bulkhead);
    clock.advance(Duration::from_nanos(1));
    let mut late = wait_on(&bulkhead);
    assert_eq!(
        refused_after(&clock, &mut late, Duration::from_secs(5)),
        Some(ms(500)),
        "joined at 100 ms of standing: 500 ms"
    );
    assert_eq!(
        refused_since(&clock, &mut early, Duration::from_secs(5), early_at),
        Some(Duration::from_secs(2)),
        "joined 1 ns earlier: max_wait"
    );
    drop((first, early, late, held));
    assert_eq!((bulkhead.in_flight(), bulkhead.queued()), (0, 0));
}

/// Doc (`Codel`): "waits at most `target`"; (bulkhead): "waits ... for at most `max_wait`".
/// A target longer than `max_wait` (5 s against 1 s) lets nobody wait longer than `max_wait`;
/// and with `max_wait(None)` a caller waits until its slot before the queue stands (hours),
/// `target` once it stands.
#[test]
fn codel_never_lengthens_max_wait_and_bounds_an_unbounded_wait() {
    let clock = FakeClock::new();
    let bulkhead = codel_bulkhead(
        &clock,
        Duration::from_secs(5),
        ms(100),
        Some(Duration::from_secs(1)),
    );
    let held = bulkhead.try_acquire_owned().unwrap();
    let mut first = wait_on(&bulkhead);
    clock.advance(ms(200));
    let mut late = wait_on(&bulkhead);
    assert_eq!(
        refused_after(&clock, &mut late, Duration::from_secs(10)),
        Some(Duration::from_secs(1))
    );
    assert!(matches!(
        poll(&mut first),
        Poll::Ready(Err(Rejected::BulkheadFull))
    ));
    drop((first, late, held));

    let unbounded = codel_bulkhead(&clock, ms(5), ms(100), None);
    let held = unbounded.try_acquire_owned().unwrap();
    let mut patient = wait_on(&unbounded);
    assert_eq!(
        refused_after(&clock, &mut patient, 5 * HOUR),
        None,
        "no bound yet"
    );
    let mut late = wait_on(&unbounded);
    assert_eq!(
        refused_after(&clock, &mut late, HOUR),
        Some(ms(5)),
        "the queue has stood for hours"
    );
    drop(held);
    assert!(matches!(poll(&mut patient), Poll::Ready(Ok(_))));
    drop((patient, late));
    assert_eq!((unbounded.in_flight(), unbounded.queued()), (0, 0));
}

/// Doc (bulkhead): "never past the caller's `Deadline`" (`Rejected::DeadlineExceeded` then),
/// under CoDel too: a caller whose deadline comes before `target` ends at its deadline.
#[test]
fn codel_still_ends_a_wait_at_the_callers_deadline() {
    let clock = FakeClock::new();
    let bulkhead = codel_bulkhead(&clock, ms(50), ms(10), Some(Duration::from_secs(1)));
    let held = bulkhead.try_acquire_owned().unwrap();
    let first = wait_on(&bulkhead);
    clock.advance(ms(20));
    let mut f: Waiting<OwnedPermit<FakeClock>> =
        Box::pin(bulkhead.acquire_owned(Deadline::after(&clock, ms(3))));
    assert!(poll(&mut f).is_pending());
    clock.advance(ms(3));
    assert!(matches!(
        poll(&mut f),
        Poll::Ready(Err(Rejected::DeadlineExceeded))
    ));
    drop((f, first, held));
    assert_eq!((bulkhead.in_flight(), bulkhead.queued()), (0, 0));
}

/// Doc (`Codel`): "a caller who joins it waits at most `target`" — any caller, of any
/// priority, on an adaptive limiter's queue (`discipline`: "The order its queue admits
/// waiters in, and how long they may wait once it stands").
#[test]
fn codel_bounds_every_priority_on_the_adaptive_limiter() {
    let clock = FakeClock::new();
    let limiter = AdaptiveLimiter::builder(FixedLimit(1))
        .max_queue(10)
        .max_wait(Duration::from_secs(1))
        .discipline(QueueDiscipline::Codel {
            target: ms(5),
            interval: ms(100),
        })
        .runtime(clock.clone())
        .build()
        .unwrap();
    let held = limiter.try_acquire().unwrap();
    let first = queued(&limiter, Priority::Sheddable);
    clock.advance(ms(100));
    let mut late: Vec<_> = Priority::ALL
        .into_iter()
        .map(|p| (p, queued(&limiter, p)))
        .collect();
    clock.advance(ms(5));
    for (p, w) in &mut late {
        assert!(
            matches!(poll(w), Poll::Ready(Err(Rejected::BulkheadFull))),
            "{p:?} waits 5 ms at most"
        );
    }
    drop((late, first, held));
    settled(&limiter);
}

/// `Codel` at the largest settings that fit (`u64::MAX` ns): built, and then a queue that
/// stands for hours neither panics nor cuts anyone early.
#[test]
fn codel_at_u64_max_nanoseconds_neither_panics_nor_cuts() {
    let clock = FakeClock::new();
    let huge = Duration::from_nanos(u64::MAX);
    for (target, interval) in [(huge, ms(1)), (ms(1), huge), (huge, huge)] {
        let bulkhead = no_panic("build", || {
            Bulkhead::builder(1)
                .max_queue(4)
                .max_wait(Duration::from_secs(10))
                .discipline(QueueDiscipline::Codel { target, interval })
                .runtime(clock.clone())
                .build()
                .unwrap()
        });
        let held = bulkhead.try_acquire_owned().unwrap();
        let first = wait_on(&bulkhead);
        clock.advance(ms(5));
        let mut second = no_panic("join", || wait_on(&bulkhead));
        let waited = no_panic("wait", || refused_after(&clock, &mut second, HOUR));
        // Either the target is longer than max_wait, or the queue never stands long
        // enough: max_wait either way.
        assert_eq!(
            waited,
            Some(Duration::from_secs(10)),
            "{target:?} {interval:?}"
        );
        drop((first, second, held));
        assert_eq!((bulkhead.in_flight(), bulkhead.queued()), (0, 0));
    }
}

/// Doc (`Codel`): "once the queue has not been empty for `interval`, a caller who joins it
/// waits at most `target`". A full queue of one sheddable waiter that has stood for 150 ms
/// sheds it for a default caller: the queue was never empty, so the default caller (and one
/// joining 50 ms later) waits 5 ms at most, not its whole `max_wait`.
#[test]
fn codel_keeps_counting_when_a_waiter_is_shed_for_another() {
    let clock = FakeClock::new();
    let limiter = AdaptiveLimiter::builder(FixedLimit(1))
        .max_queue(1)
        .max_wait(Duration::from_secs(1))
        .discipline(QueueDiscipline::Codel {
            target: ms(5),
            interval: ms(100),
        })
        .runtime(clock.clone())
        .build()
        .unwrap();
    let held = limiter.try_acquire().unwrap();
    let mut sheddable = queued(&limiter, Priority::Sheddable);
    clock.advance(ms(150));
    let mut default = queued(&limiter, Priority::Default);
    assert!(matches!(
        poll(&mut sheddable),
        Poll::Ready(Err(Rejected::BulkheadFull))
    ));
    assert_eq!(limiter.queued(), 1, "never empty: one out, one in");
    clock.advance(ms(5));
    let cut = poll(&mut default).map(|r| r.map(drop));
    assert_eq!(
        cut,
        Poll::Ready(Err(Rejected::BulkheadFull)),
        "the queue has stood 150 ms when the default caller joined: 5 ms at most"
    );
    drop((default, sheddable, held));
    settled(&limiter);
    assert_eq!(clock.pending_timers(), 0, "no timer left behind");
}

/// Doc (module): "a new limit resizes the bulkhead before the call's slot goes back";
/// (`reconfigure`, which the resize is): "growing hands the new permits to queued callers
/// first". A sheddable waiter held back by its share is admitted once the limit grows enough
/// (4 → 10: a share of 5), and a critical one at a shrunken limit only below it.
#[test]
fn a_moving_limit_moves_the_shares_of_queued_callers() {
    let clock = FakeClock::new();
    let knob = Arc::new(AtomicU32::new(4));
    let limiter = AdaptiveLimiter::builder(Dial::new(&knob))
        .share(Priority::Sheddable, 0.5)
        .max_queue(4)
        .max_wait(None)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let mut held = held_by(&limiter, Priority::Default, 4);
    let mut sheddable = queued(&limiter, Priority::Sheddable);
    knob.store(10, SeqCst);
    held.pop().unwrap().success();
    assert_eq!(limiter.limit(), 10);
    let Poll::Ready(Ok(s)) = poll(&mut sheddable) else {
        panic!("3 in flight, a share of 5: admitted")
    };
    // Shrink to 2 under 4 held calls: a critical waiter waits for fewer than 2.
    knob.store(2, SeqCst);
    s.success();
    assert_eq!((limiter.limit(), limiter.in_flight()), (2, 3));
    let mut critical = queued(&limiter, Priority::Critical);
    drop(held.pop());
    assert!(
        poll(&mut critical).is_pending(),
        "2 in flight, a limit of 2"
    );
    drop(held.pop());
    assert!(matches!(poll(&mut critical), Poll::Ready(Ok(_))));
    drop((critical, sheddable, held));
    settled(&limiter);
}

/// Doc (`Priority`): "`ALL`: Every priority, the most important first"; "`as_str`: Its name
/// in metrics and configuration: `critical`, `default` or `sheddable`"; `QueueDiscipline`
/// defaults to `Fifo`.
#[test]
fn priority_and_discipline_constants() {
    assert_eq!(
        Priority::ALL,
        [Priority::Critical, Priority::Default, Priority::Sheddable]
    );
    assert_eq!(
        Priority::ALL.map(Priority::as_str),
        ["critical", "default", "sheddable"]
    );
    assert!(Priority::ALL.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(QueueDiscipline::default(), QueueDiscipline::Fifo);
}

// === reconfigure with a discipline =========================================================

fn served_order(waiters: &mut [Option<Waiting<OwnedPermit<FakeClock>>>]) -> Vec<usize> {
    let mut order = Vec::new();
    loop {
        let mut served = None;
        for (i, slot) in waiters.iter_mut().enumerate() {
            if let Some(w) = slot
                && let Poll::Ready(r) = poll(w)
            {
                let permit = r.expect("served, not refused");
                assert!(served.is_none(), "two served at once");
                served = Some((i, permit));
                *slot = None;
            }
        }
        match served {
            Some((i, permit)) => {
                order.push(i);
                drop(permit);
            }
            None => return order,
        }
    }
}

/// Doc (`reconfigure`): "Applies `settings` to this bulkhead in place ... validated as
/// `build` validates them; on an error nothing changes." A FIFO bulkhead made LIFO serves
/// the callers who join afterwards newest first; a refused reconfiguration (a zero CoDel
/// target) leaves the discipline, the capacity and the queue as they were.
#[test]
fn reconfigure_switches_the_discipline_and_a_refusal_changes_nothing() {
    let clock = FakeClock::new();
    let bulkhead = Bulkhead::builder(1)
        .max_queue(5)
        .max_wait(None)
        .runtime(clock.clone())
        .build()
        .unwrap();
    bulkhead
        .reconfigure(
            Bulkhead::builder(1)
                .max_queue(5)
                .max_wait(None)
                .discipline(QueueDiscipline::Lifo),
        )
        .unwrap();
    let held = bulkhead.try_acquire_owned().unwrap();
    let mut waiters: Vec<_> = (0..3).map(|_| Some(wait_on(&bulkhead))).collect();
    assert_eq!(
        bulkhead.reconfigure(Bulkhead::builder(4).max_queue(1).discipline(
            QueueDiscipline::Codel {
                target: Duration::ZERO,
                interval: ms(100),
            }
        ),),
        Err(ConfigError::Zero { field: "target" })
    );
    assert_eq!(
        (bulkhead.capacity(), bulkhead.queued()),
        (1, 3),
        "nothing changed"
    );
    drop(held);
    assert_eq!(served_order(&mut waiters), [2, 1, 0], "still LIFO");
    assert_eq!((bulkhead.in_flight(), bulkhead.queued()), (0, 0));
}

/// Doc (`reconfigure`): "growing hands the new permits to queued callers first"; under LIFO
/// ("The newest first") the newest queued callers get them.
#[test]
fn growing_a_lifo_bulkhead_hands_new_permits_to_the_newest() {
    let clock = FakeClock::new();
    let settings = |n| {
        Bulkhead::builder(n)
            .max_queue(5)
            .max_wait(None)
            .discipline(QueueDiscipline::Lifo)
    };
    let bulkhead = settings(1).runtime(clock.clone()).build().unwrap();
    let held = bulkhead.try_acquire_owned().unwrap();
    let mut waiters: Vec<_> = (0..4).map(|_| wait_on(&bulkhead)).collect();
    bulkhead.reconfigure(settings(3)).unwrap();
    let ready: Vec<bool> = waiters.iter_mut().map(|w| poll(w).is_ready()).collect();
    assert_eq!(ready, [false, false, true, true], "the two newest");
    drop((waiters, held));
    assert_eq!((bulkhead.in_flight(), bulkhead.queued()), (0, 0));
}

/// Doc (`reconfigure`): "Applies `settings` ... in place". Leaving CoDel for FIFO lifts the
/// bound for callers who join afterwards: the queue has stood for an hour, yet a new caller
/// waits its whole `max_wait`.
#[test]
fn reconfigure_away_from_codel_lifts_the_bound() {
    let clock = FakeClock::new();
    let codel = QueueDiscipline::Codel {
        target: ms(5),
        interval: ms(100),
    };
    let bulkhead = codel_bulkhead(&clock, ms(5), ms(100), Some(2 * HOUR));
    let held = bulkhead.try_acquire_owned().unwrap();
    let first = wait_on(&bulkhead);
    clock.advance(HOUR);
    let mut cut = wait_on(&bulkhead);
    assert_eq!(refused_after(&clock, &mut cut, HOUR), Some(ms(5)));
    bulkhead
        .reconfigure(Bulkhead::builder(1).max_queue(10).max_wait(ms(700)))
        .unwrap();
    let mut patient = wait_on(&bulkhead);
    assert_eq!(refused_after(&clock, &mut patient, HOUR), Some(ms(700)));
    // And back to CoDel: the queue still stands, so the bound applies again.
    bulkhead
        .reconfigure(
            Bulkhead::builder(1)
                .max_queue(10)
                .max_wait(ms(700))
                .discipline(codel),
        )
        .unwrap();
    let mut again = wait_on(&bulkhead);
    assert_eq!(refused_after(&clock, &mut again, HOUR), Some(ms(5)));
    drop((first, cut, patient, again, held));
    assert_eq!((bulkhead.in_flight(), bulkhead.queued()), (0, 0));
}

/// Doc (`reconfigure`): "Callers already queued stay queued when the queue shrinks" —
/// to `max_queue(0)` too — and are still served; new callers are refused at once.
#[test]
fn reconfigure_to_no_queue_keeps_the_queued_callers() {
    let clock = FakeClock::new();
    let bulkhead = Bulkhead::builder(1)
        .max_queue(3)
        .max_wait(None)
        .discipline(QueueDiscipline::Lifo)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let held = bulkhead.try_acquire_owned().unwrap();
    let mut waiters: Vec<_> = (0..3).map(|_| Some(wait_on(&bulkhead))).collect();
    bulkhead
        .reconfigure(
            Bulkhead::builder(1)
                .max_queue(0)
                .discipline(QueueDiscipline::Lifo),
        )
        .unwrap();
    assert_eq!(bulkhead.queued(), 3);
    let mut late: Waiting<OwnedPermit<FakeClock>> =
        Box::pin(bulkhead.acquire_owned(Deadline::none()));
    assert!(matches!(
        poll(&mut late),
        Poll::Ready(Err(Rejected::BulkheadFull))
    ));
    drop(held);
    assert_eq!(served_order(&mut waiters), [2, 1, 0]);
    assert_eq!((bulkhead.in_flight(), bulkhead.queued()), (0, 0));
}

/// Doc (`reconfigure`): "No permit is revoked ... Callers already queued stay queued"; and
/// (`available`): "Once nothing is running or queued, it equals the capacity: tests check
/// that capacity is conserved this way." Threads acquiring, waiting (with and without
/// deadlines), dropping at random points, while one reconfigures capacity, queue and
/// discipline (FIFO, LIFO, CoDel) and advances the clock: nothing lost.
#[test]
fn threads_while_reconfiguring_disciplines_conserve_capacity() {
    let clock = FakeClock::new();
    let bulkhead = Bulkhead::builder(4)
        .max_queue(3)
        .max_wait(ms(20))
        .runtime(clock.clone())
        .build()
        .unwrap();
    let threads: Vec<_> = (0..4_u64)
        .map(|t| {
            let (bulkhead, clock) = (bulkhead.clone(), clock.clone());
            std::thread::spawn(move || {
                let mut rng = Rng::new(t + 99);
                let mut held = Vec::new();
                let mut waiting: Vec<Waiting<OwnedPermit<FakeClock>>> = Vec::new();
                for _ in 0..15_000 {
                    match rng.below(10) {
                        0 | 1 => {
                            if let Ok(p) = bulkhead.try_acquire_owned() {
                                held.push(p);
                            }
                        }
                        2 | 3 => {
                            let deadline = if rng.below(2) == 0 {
                                Deadline::none()
                            } else {
                                Deadline::after(&clock, ms(rng.below(30) as u64))
                            };
                            let mut f: Waiting<_> = Box::pin(bulkhead.acquire_owned(deadline));
                            match poll(&mut f) {
                                Poll::Ready(Ok(p)) => held.push(p),
                                Poll::Ready(Err(_)) => {}
                                Poll::Pending => waiting.push(f),
                            }
                        }
                        4 => {
                            if !waiting.is_empty() {
                                let i = rng.below(waiting.len());
                                drop(waiting.swap_remove(i));
                            }
                        }
                        5 => waiting.retain_mut(|w| match poll(w) {
                            Poll::Ready(Ok(p)) => {
                                held.push(p);
                                false
                            }
                            Poll::Ready(Err(_)) => false,
                            Poll::Pending => true,
                        }),
                        6 if t == 0 => {
                            let discipline = match rng.below(3) {
                                0 => QueueDiscipline::Fifo,
                                1 => QueueDiscipline::Lifo,
                                _ => QueueDiscipline::Codel {
                                    target: ms(1 + rng.below(5) as u64),
                                    interval: ms(1 + rng.below(10) as u64),
                                },
                            };
                            bulkhead
                                .reconfigure(
                                    Bulkhead::builder(1 + rng.below(8))
                                        .max_queue(rng.below(5))
                                        .max_wait(ms(1 + rng.below(40) as u64))
                                        .discipline(discipline),
                                )
                                .unwrap();
                        }
                        7 if t == 1 => clock.advance(ms(rng.below(5) as u64)),
                        _ => {
                            if !held.is_empty() {
                                let i = rng.below(held.len());
                                drop(held.swap_remove(i));
                            }
                        }
                    }
                }
                drop(waiting);
                drop(held);
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!((bulkhead.in_flight(), bulkhead.queued()), (0, 0));
    assert_eq!(
        bulkhead.available(),
        bulkhead.capacity(),
        "capacity conserved"
    );
    let all: Vec<_> = (0..bulkhead.capacity())
        .map(|_| bulkhead.try_acquire_owned().unwrap())
        .collect();
    assert!(bulkhead.try_acquire_owned().is_err());
    drop(all);
}

// === WindowedGradient behind the limiter, across hours =====================================

/// Doc (`Sample::at`): "When it ended, as time since any fixed origin (the limiter's clock)";
/// (`WindowedGradient`): "It measures from the first sample on, and again once
/// `probe_interval` has passed"; (module): "a smaller one revokes nothing held, and admits
/// nobody new, queued callers included, until fewer are in flight". On a limiter: `min_limit`
/// to begin with, back to `initial_limit` after the probe; three idle hours later the next
/// call ends into a new measurement, the limit drops to `min_limit` under 9 held calls, and a
/// critical waiter gets in only once fewer than 2 are in flight.
#[test]
fn the_limiter_measures_windowed_gradient_on_its_clock_across_idle_hours() {
    let clock = FakeClock::new();
    let algorithm = WindowedGradient::builder()
        .initial_limit(10)
        .min_limit(2)
        .window(4)
        .probe_samples(2)
        .probe_interval(Duration::from_secs(60))
        .build()
        .unwrap();
    let limiter = AdaptiveLimiter::builder(algorithm)
        .max_queue(4)
        .max_wait(None)
        .runtime(clock.clone())
        .build()
        .unwrap();
    assert_eq!(limiter.limit(), 2, "probing first");
    let probe = held_by(&limiter, Priority::Critical, 2);
    assert!(
        limiter
            .with_priority(Priority::Critical)
            .try_acquire()
            .is_err()
    );
    clock.advance(ms(10));
    for permit in probe {
        permit.success();
    }
    assert_eq!(limiter.limit(), 10);
    let mut held = held_by(&limiter, Priority::Default, 10);
    clock.advance(3 * HOUR);
    held.pop().unwrap().success();
    assert_eq!(
        limiter.limit(),
        2,
        "3 h since the measurement: measuring again"
    );
    let mut critical = queued(&limiter, Priority::Critical);
    while held.len() > 2 {
        drop(held.pop());
        assert!(
            poll(&mut critical).is_pending(),
            "{} in flight, a limit of 2",
            limiter.in_flight()
        );
    }
    assert!(
        poll(&mut critical).is_pending(),
        "2 in flight, a limit of 2"
    );
    drop(held.pop());
    let Poll::Ready(Ok(p)) = poll(&mut critical) else {
        panic!("1 in flight: admitted")
    };
    drop(held.pop());
    clock.advance(ms(12));
    p.success();
    let another = limiter.try_acquire().unwrap();
    clock.advance(ms(12));
    another.success();
    assert_eq!(limiter.limit(), 10, "measured: back to what it was");
    drop(critical);
    assert_eq!((limiter.in_flight(), limiter.queued()), (0, 0));
}

/// An algorithm that keeps every sample it is taught.
#[derive(Debug, Clone)]
struct Recorder {
    limit: u32,
    samples: Arc<Mutex<Vec<Sample>>>,
}

impl LimitAlgorithm for Recorder {
    fn limit(&self) -> u32 {
        self.limit
    }
    fn update(&mut self, sample: &Sample) -> u32 {
        self.samples.lock().unwrap().push(*sample);
        self.limit
    }
    fn bounds(&self) -> (u32, u32) {
        (self.limit, self.limit)
    }
}

/// Doc (`Sample::inflight`): "Calls in flight when it was admitted, itself included"; (module):
/// "the calls in flight when it was admitted (a queued caller's: when its slot was granted)".
/// A critical waiter is granted its slot when one of two ends (2 in flight, itself included);
/// the other ends before the waiter looks: its sample still says 2. And `at` is the limiter's
/// clock at the end: two calls ending an hour apart are an hour apart.
#[test]
fn a_queued_callers_sample_counts_the_calls_in_flight_at_its_grant() {
    let clock = FakeClock::new();
    let samples = Arc::new(Mutex::new(Vec::new()));
    let limiter = AdaptiveLimiter::builder(Recorder {
        limit: 2,
        samples: Arc::clone(&samples),
    })
    .max_queue(2)
    .max_wait(None)
    .runtime(clock.clone())
    .build()
    .unwrap();
    let mut held = held_by(&limiter, Priority::Sheddable, 1);
    held.extend(held_by(&limiter, Priority::Default, 1));
    let mut critical = queued(&limiter, Priority::Critical);
    drop(held.pop()); // granted: 2 in flight
    drop(held.pop()); // 1 in flight when it looks
    let Poll::Ready(Ok(permit)) = poll(&mut critical) else {
        panic!("granted")
    };
    clock.advance(ms(7));
    permit.success();
    let other = limiter.try_acquire().unwrap();
    clock.advance(HOUR);
    other.failure();
    let samples = samples.lock().unwrap().clone();
    assert_eq!(samples.len(), 2);
    assert_eq!(
        samples[0].inflight, 2,
        "in flight at its grant, itself included"
    );
    assert_eq!(samples[1].inflight, 1);
    assert!(!samples[0].dropped && samples[1].dropped);
    assert_eq!(samples[1].at - samples[0].at, HOUR);
    drop(critical);
    settled(&limiter);
}

/// `WindowedGradient` behind a limiter shared by threads of every priority, with the clock
/// jumping minutes and hours (measurements come and go) and calls ending as successes,
/// failures, ignored or dropped: the limit stays within `[min_limit, max_limit]`, never more
/// than `max_limit` in flight, and at the end nothing is held and the limit in force is the
/// number of calls admitted at once.
#[test]
fn threads_on_a_windowed_gradient_limiter_across_jumps_in_time() {
    let clock = FakeClock::new();
    let algorithm = WindowedGradient::builder()
        .min_limit(1)
        .initial_limit(6)
        .max_limit(16)
        .window(5)
        .probe_samples(3)
        .probe_interval(Duration::from_secs(60))
        .build()
        .unwrap();
    let limiter = AdaptiveLimiter::builder(algorithm)
        .share(Priority::Default, 0.9)
        .share(Priority::Sheddable, 0.5)
        .max_queue(4)
        .max_wait(ms(100))
        .runtime(clock.clone())
        .build()
        .unwrap();
    let most = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..4_u64)
        .map(|t| {
            let (limiter, clock, most) = (limiter.clone(), clock.clone(), Arc::clone(&most));
            std::thread::spawn(move || {
                let mut rng = Rng::new(t + 1234);
                let mut held: Vec<Permit<WindowedGradient>> = Vec::new();
                let mut waiting: Vec<Waiting<Permit<WindowedGradient>>> = Vec::new();
                for _ in 0..10_000 {
                    let handle = limiter.with_priority(rng.priority());
                    match rng.below(10) {
                        0 | 1 => {
                            if let Ok(p) = handle.try_acquire() {
                                held.push(p);
                            }
                        }
                        2 => {
                            let mut f: Waiting<_> =
                                Box::pin(handle.admit(Wait::Until(Deadline::none())));
                            match poll(&mut f) {
                                Poll::Ready(Ok(p)) => held.push(p),
                                Poll::Ready(Err(_)) => {}
                                Poll::Pending => waiting.push(f),
                            }
                        }
                        3 => {
                            if !waiting.is_empty() {
                                let i = rng.below(waiting.len());
                                drop(waiting.swap_remove(i));
                            }
                        }
                        4 => waiting.retain_mut(|w| match poll(w) {
                            Poll::Ready(Ok(p)) => {
                                held.push(p);
                                false
                            }
                            Poll::Ready(Err(_)) => false,
                            Poll::Pending => true,
                        }),
                        5 if t == 0 => {
                            let jump = match rng.below(20) {
                                0 => HOUR,
                                1 => Duration::from_secs(61),
                                _ => ms(rng.below(20) as u64),
                            };
                            clock.advance(jump);
                        }
                        _ => {
                            if !held.is_empty() {
                                let i = rng.below(held.len());
                                let p = held.swap_remove(i);
                                match rng.below(5) {
                                    0 | 1 => p.success(),
                                    2 => p.failure(),
                                    3 => p.ignore(),
                                    _ => drop(p),
                                }
                            }
                        }
                    }
                    let limit = limiter.limit();
                    assert!((1..=16).contains(&limit), "limit {limit}");
                    most.fetch_max(limiter.in_flight(), SeqCst);
                }
                drop(waiting);
                drop(held);
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert!(most.load(SeqCst) <= 16);
    settled(&limiter);
}

// === pipelines =============================================================================

/// Doc (`Priority`): "shedding the newest of the least important to make room"; a shed waiter
/// is refused, in a pipeline as `Error::Rejected` — at the moment it is shed, not at its
/// deadline. Then the default call runs when the slot frees, and nothing is held.
async fn a_pipeline_call_is_shed_for_a_more_important_one<R: Runtime + Clock>(rt: Clocked<R>) {
    let limiter = AdaptiveLimiter::builder(FixedLimit(1))
        .max_queue(1)
        .max_wait(None)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let pipeline = |priority| {
        Pipeline::builder()
            .runtime(rt.clone())
            .deadline(Duration::from_secs(10))
            .bulkhead(limiter.with_priority(priority))
            .build()
            .unwrap()
    };
    let (default, sheddable) = (pipeline(Priority::Default), pipeline(Priority::Sheddable));
    let held = limiter
        .with_priority(Priority::Critical)
        .try_acquire()
        .unwrap();
    let start = rt.now();
    let shed = async {
        let out = sheddable.call(|| async { Ok::<_, ()>("shed") }).await;
        (out, rt.now() - start)
    };
    let wins = async {
        rt.sleep(ms(10)).await;
        let out = default.call(|| async { Ok::<_, ()>("default") }).await;
        (out, rt.now() - start)
    };
    let release = async {
        rt.sleep(ms(100)).await;
        drop(held);
    };
    let ((shed, shed_at), (wins, wins_at), ()) = futures_util::join!(shed, wins, release);
    assert_eq!(shed, Err(Error::Rejected(Rejected::BulkheadFull)));
    assert_eq!(shed_at, ms(10), "shed when the default call came");
    assert_eq!((wins, wins_at), (Ok("default"), ms(100)));
    assert_eq!((limiter.in_flight(), limiter.queued()), (0, 0));
}

#[test]
fn a_pipeline_call_is_shed_for_a_more_important_one_on_every_runtime() {
    on_every_runtime!(a_pipeline_call_is_shed_for_a_more_important_one);
}

/// Doc (pipeline): "deadline → rate limit → bulkhead → retry → ..." and "It retries ...
/// `Rejected::CircuitOpen` rejections": a sheddable pipeline refused by its share (no queue)
/// never calls the operation and is not retried; a critical one with the same retries runs.
#[test]
fn a_sheddable_pipeline_refused_by_its_share_never_runs_or_retries() {
    let clock = FakeClock::new();
    let limiter = AdaptiveLimiter::builder(FixedLimit(5))
        .runtime(clock.clone())
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let pipeline = |priority| {
        Pipeline::builder()
            .runtime(clock.clone())
            .deadline(Duration::from_secs(1))
            .bulkhead(limiter.with_priority(priority))
            .retry(Backoff::constant(ms(1)).max_attempts(5).build().unwrap())
            .build()
            .unwrap()
    };
    let held = held_by(&limiter, Priority::Default, 4);
    let op = || {
        let calls = Arc::clone(&calls);
        move || {
            calls.fetch_add(1, SeqCst);
            async { Ok::<_, ()>(1) }
        }
    };
    let (sheddable, critical) = (pipeline(Priority::Sheddable), pipeline(Priority::Critical));
    let mut refused = Box::pin(sheddable.call(op()));
    assert_eq!(
        poll_any(refused.as_mut()),
        Poll::Ready(Err(Error::Rejected(Rejected::BulkheadFull)))
    );
    assert_eq!(calls.load(SeqCst), 0);
    let mut runs = Box::pin(critical.call(op()));
    assert_eq!(poll_any(runs.as_mut()), Poll::Ready(Ok(1)));
    assert_eq!(calls.load(SeqCst), 1);
    drop((refused, runs, held));
    settled(&limiter);
}

/// Many pipeline calls of random priorities, durations and cancellation points (a timeout
/// around the call, a deadline on it), on every runtime: never more running than the limit,
/// never more sheddable calls than `⌈limit × 0.5⌉` nor non-critical ones than `⌈limit × 0.9⌉`,
/// and nothing held afterwards.
async fn random_pipeline_calls<R: Runtime + Clock>(rt: Clocked<R>) {
    let limiter = AdaptiveLimiter::builder(FixedLimit(5))
        .share(Priority::Default, 0.7)
        .share(Priority::Sheddable, 0.3)
        .max_queue(3)
        .max_wait(ms(40))
        .runtime(rt.clone())
        .build()
        .unwrap();
    let pipelines: Vec<_> = Priority::ALL
        .into_iter()
        .map(|p| {
            Pipeline::builder()
                .runtime(rt.clone())
                .deadline(ms(200))
                .bulkhead(limiter.with_priority(p))
                .build()
                .unwrap()
        })
        .collect();
    // Running now: all, non-critical, sheddable.
    let running = Arc::new([
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    ]);
    let most = Arc::new([
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    ]);
    struct Running(Arc<[AtomicUsize; 3]>, usize);
    impl Drop for Running {
        fn drop(&mut self) {
            for counter in &self.0[..self.1] {
                counter.fetch_sub(1, SeqCst);
            }
        }
    }
    let mut rng = Rng::new(0xC0FFEE);
    let calls = (0..60).map(|i| {
        let rank = rng.below(3);
        let (delay, length, cancel) = (rng.below(150), rng.below(60), rng.below(4));
        let pipeline = &pipelines[rank];
        let (rt, running, most) = (rt.clone(), Arc::clone(&running), Arc::clone(&most));
        async move {
            rt.sleep(ms(delay as u64)).await;
            let call = pipeline.call(|| {
                let (rt, running, most) = (rt.clone(), Arc::clone(&running), Arc::clone(&most));
                async move {
                    let levels = rank + 1;
                    for level in 0..levels {
                        let now = running[level].fetch_add(1, SeqCst) + 1;
                        most[level].fetch_max(now, SeqCst);
                    }
                    let _running = Running(running, levels);
                    rt.sleep(ms(length as u64)).await;
                    Ok::<_, ()>(i)
                }
            });
            match cancel {
                0 => drop(call.timeout_on(&rt, ms(rng_free(i) % 30)).await),
                _ => drop(call.await),
            }
        }
    });
    futures_util::future::join_all(calls).await;
    assert!(
        most[0].load(SeqCst) <= 5,
        "{} ran at once",
        most[0].load(SeqCst)
    );
    assert!(
        most[1].load(SeqCst) <= 4,
        "non-critical: {}",
        most[1].load(SeqCst)
    );
    assert!(
        most[2].load(SeqCst) <= 2,
        "sheddable: {}",
        most[2].load(SeqCst)
    );
    assert_eq!(running.iter().map(|c| c.load(SeqCst)).sum::<usize>(), 0);
    assert_eq!((limiter.in_flight(), limiter.queued()), (0, 0));
    let all: Vec<_> = (0..5)
        .map(|_| {
            limiter
                .with_priority(Priority::Critical)
                .try_acquire()
                .unwrap()
        })
        .collect();
    drop(all);
}

/// A cheap per-call draw that needs no shared generator.
fn rng_free(i: usize) -> u64 {
    Rng::new(i as u64).next()
}

#[test]
fn random_pipeline_calls_keep_every_share_on_every_runtime() {
    on_every_runtime!(random_pipeline_calls);
}

// === tower =================================================================================

type EchoFn = fn(u32) -> std::future::Ready<Result<u32, Error<Infallible>>>;
type Echo = tower::util::ServiceFn<EchoFn>;

fn echo() -> Echo {
    let f: EchoFn = |x| std::future::ready(Ok(x));
    tower::service_fn(f)
}

async fn ready_and_call<S: Service<u32>>(mut svc: S, req: u32) -> Result<S::Response, S::Error> {
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await?;
    svc.call(req).await
}

fn ready_now<S: Service<u32>>(svc: &mut S) -> Poll<Result<(), S::Error>> {
    svc.poll_ready(&mut cx())
}

/// Doc (`AdmitLayer`): "A refusal is the inner service's own error type"; (`with_priority`):
/// "in a pipeline or a tower layer, one handle per class of calls". In Reject mode a
/// sheddable layer is refused once four-fifths are used, a critical one is admitted.
#[test]
fn reject_mode_sheds_the_sheddable_layer_only() {
    let clock = FakeClock::new();
    let limiter = AdaptiveLimiter::builder(FixedLimit(5))
        .runtime(clock.clone())
        .build()
        .unwrap();
    let layer =
        |p| AdmitLayer::new(limiter.with_priority(p), AdmitMode::Reject).runtime(clock.clone());
    let mut sheddable = layer(Priority::Sheddable).layer(echo());
    let mut critical = layer(Priority::Critical).layer(echo());
    let held = held_by(&limiter, Priority::Default, 4);
    let out = match ready_now(&mut sheddable) {
        Poll::Ready(Ok(())) => poll_any(std::pin::pin!(sheddable.call(1))),
        other => other.map(|r| r.map(|()| 0)),
    };
    assert_eq!(
        out,
        Poll::Ready(Err(Error::Rejected(Rejected::BulkheadFull)))
    );
    assert_eq!(ready_now(&mut critical), Poll::Ready(Ok(())));
    assert_eq!(
        poll_any(std::pin::pin!(critical.call(2))),
        Poll::Ready(Ok(2))
    );
    drop(held);
    settled(&limiter);
}

/// Doc (`AdmitMode`): a wait "in `poll_ready` (backpressure ...), or in the response future";
/// (`Priority`): "shedding the newest of the least important to make room". A sheddable
/// service waiting in either place is shed when a default one needs its queue place: its
/// response future ends with `BulkheadFull` (in `poll_ready`, doc (`AdmitMode::WaitReady`):
/// "`poll_ready` then reports ready and the next call fails at once with the refusal");
/// the default call then runs when the slot frees, and nothing is held afterwards.
#[test]
fn a_waiting_sheddable_service_is_shed_in_every_waiting_mode() {
    for mode in [AdmitMode::WaitReady, AdmitMode::WaitCall] {
        let clock = FakeClock::new();
        let limiter = AdaptiveLimiter::builder(FixedLimit(1))
            .max_queue(1)
            .max_wait(None)
            .runtime(clock.clone())
            .build()
            .unwrap();
        let layer = |p| AdmitLayer::new(limiter.with_priority(p), mode).runtime(clock.clone());
        let mut sheddable = layer(Priority::Sheddable).layer(echo());
        let mut default = layer(Priority::Default).layer(echo());
        let held = limiter
            .with_priority(Priority::Critical)
            .try_acquire()
            .unwrap();
        // Start each: WaitReady waits in poll_ready, WaitCall in the response future.
        let mut shed_call = None;
        let shed_ready = ready_now(&mut sheddable);
        if mode == AdmitMode::WaitCall {
            assert_eq!(shed_ready, Poll::Ready(Ok(())));
            let mut f = Box::pin(sheddable.call(1));
            assert!(poll_any(f.as_mut()).is_pending());
            shed_call = Some(f);
        } else {
            assert!(shed_ready.is_pending());
        }
        assert_eq!(limiter.queued(), 1, "{mode:?}");
        let mut default_call = None;
        let default_ready = ready_now(&mut default);
        if mode == AdmitMode::WaitCall {
            assert_eq!(default_ready, Poll::Ready(Ok(())));
            let mut f = Box::pin(default.call(2));
            assert!(poll_any(f.as_mut()).is_pending());
            default_call = Some(f);
        } else {
            assert!(default_ready.is_pending());
        }
        let shed = match shed_call.as_mut() {
            Some(f) => poll_any(f.as_mut()).map(|r| r.map(drop)),
            None => {
                assert_eq!(
                    ready_now(&mut sheddable),
                    Poll::Ready(Ok(())),
                    "{mode:?}: ready, the refusal waits for the call"
                );
                // Polled once on a clock that does not move: the call fails at once.
                poll_any(std::pin::pin!(sheddable.call(1))).map(|r| r.map(drop))
            }
        };
        assert_eq!(
            shed,
            Poll::Ready(Err(Error::Rejected(Rejected::BulkheadFull))),
            "{mode:?}: shed"
        );
        drop(held);
        let out = match default_call.as_mut() {
            Some(f) => poll_any(f.as_mut()),
            None => {
                assert_eq!(ready_now(&mut default), Poll::Ready(Ok(())), "{mode:?}");
                poll_any(std::pin::pin!(default.call(2)))
            }
        };
        assert_eq!(out, Poll::Ready(Ok(2)), "{mode:?}");
        drop((shed_call, default_call, sheddable, default));
        settled(&limiter);
    }
}

/// Doc (`AdmitLayer::max_wait`): "Bounds each wait (in `poll_ready` or in the call) by
/// `max_wait`: a stage that cannot admit in time refuses with `Rejected::DeadlineExceeded`".
/// A sheddable caller waiting for its share (a slot is free, but not for it) ends so, and
/// leaves the queue.
#[test]
fn a_layer_max_wait_ends_a_wait_for_the_share() {
    for mode in [AdmitMode::WaitReady, AdmitMode::WaitCall] {
        let clock = FakeClock::new();
        let limiter = AdaptiveLimiter::builder(FixedLimit(5))
            .max_queue(2)
            .max_wait(None)
            .runtime(clock.clone())
            .build()
            .unwrap();
        let svc = AdmitLayer::new(limiter.with_priority(Priority::Sheddable), mode)
            .runtime(clock.clone())
            .max_wait(ms(30))
            .layer(echo());
        let held = held_by(&limiter, Priority::Default, 4);
        let mut call = Box::pin(ready_and_call(svc, 5));
        assert!(poll_any(call.as_mut()).is_pending(), "{mode:?}");
        assert_eq!(limiter.queued(), 1);
        clock.advance(ms(30));
        assert_eq!(
            poll_any(call.as_mut()),
            Poll::Ready(Err(Error::Rejected(Rejected::DeadlineExceeded))),
            "{mode:?}"
        );
        assert_eq!(limiter.queued(), 0);
        drop((call, held));
        settled(&limiter);
    }
}

/// Deep nesting: eight `AdmitLayer`s over one limiter of 8, of mixed priorities; a call
/// holds one slot per layer. Layer `i` finds `i` in flight, so a sheddable layer is refused
/// from the seventh on (7 is not fewer than 8 × 0.8 = 6.4): the whole call is refused with
/// `BulkheadFull` and every outer slot comes back.
#[test]
fn deep_nesting_of_priorities_on_one_limiter() {
    use Priority::{Critical as C, Default as D, Sheddable as S};
    let clock = FakeClock::new();
    let limiter = AdaptiveLimiter::builder(FixedLimit(8))
        .max_queue(4)
        .max_wait(None)
        .runtime(clock.clone())
        .build()
        .unwrap();
    for (plan, ok) in [
        ([C, D, S, D, S, C, S, C], true),
        ([C, D, S, D, S, C, S, S], false),
        ([S, S, S, S, S, S, S, C], true),
        ([S, S, S, S, S, S, S, S], false),
        ([D, D, D, D, D, D, D, D], true),
    ] {
        for mode in [AdmitMode::Reject, AdmitMode::WaitReady, AdmitMode::WaitCall] {
            let l = |i: usize| {
                AdmitLayer::new(limiter.with_priority(plan[i]), mode)
                    .runtime(clock.clone())
                    .max_wait(ms(10))
            };
            let svc = tower::ServiceBuilder::new()
                .layer(l(0))
                .layer(l(1))
                .layer(l(2))
                .layer(l(3))
                .layer(l(4))
                .layer(l(5))
                .layer(l(6))
                .layer(l(7))
                .service(echo());
            let mut call = Box::pin(ready_and_call(svc, 8));
            let mut out = poll_any(call.as_mut());
            if out.is_pending() {
                clock.advance(ms(10));
                out = poll_any(call.as_mut());
            }
            let want = if ok {
                Ok(8)
            } else if mode == AdmitMode::Reject {
                Err(Error::Rejected(Rejected::BulkheadFull))
            } else {
                Err(Error::Rejected(Rejected::DeadlineExceeded))
            };
            assert_eq!(out, Poll::Ready(want), "{plan:?} {mode:?}");
            drop(call);
            assert_eq!(
                (limiter.in_flight(), limiter.queued()),
                (0, 0),
                "{plan:?} {mode:?}"
            );
        }
    }
    settled(&limiter);
}

// === threads ===============================================================================

/// Threads of every priority on a limiter whose limit moves (1 to 8) and a CoDel queue, with
/// the clock advanced by one of them: permits taken, ended (teaching the new limit) or
/// dropped, waiters with and without deadlines dropped at random points, granted or not, shed
/// or cut. The queue never exceeds `max_queue`, never more than 8 run, never more sheddable
/// calls than `⌈8 × 0.5⌉`, and at the end everything is back and the whole limit usable.
#[test]
fn threads_on_a_moving_limit_with_codel_lose_nothing() {
    let clock = FakeClock::new();
    let dial = Arc::new(AtomicU32::new(8));
    let limiter = AdaptiveLimiter::builder(Dial::new(&dial))
        .share(Priority::Default, 0.9)
        .share(Priority::Sheddable, 0.5)
        .max_queue(5)
        .max_wait(ms(50))
        .discipline(QueueDiscipline::Codel {
            target: ms(3),
            interval: ms(20),
        })
        .runtime(clock.clone())
        .build()
        .unwrap();
    let sheddable_now = Arc::new(AtomicUsize::new(0));
    let sheddable_most = Arc::new(AtomicUsize::new(0));
    let in_flight_most = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..4_u64)
        .map(|t| {
            let limiter = limiter.clone();
            let (clock, dial) = (clock.clone(), Arc::clone(&dial));
            let (now, most, flight) = (
                Arc::clone(&sheddable_now),
                Arc::clone(&sheddable_most),
                Arc::clone(&in_flight_most),
            );
            std::thread::spawn(move || {
                let mut rng = Rng::new(t * 7 + 1);
                let mut held: Vec<(Priority, Permit<Dial>)> = Vec::new();
                let mut waiting: Vec<(Priority, Waiting<Permit<Dial>>)> = Vec::new();
                let take = |p: Priority,
                            permit: Permit<Dial>,
                            held: &mut Vec<(Priority, Permit<Dial>)>| {
                    if p == Priority::Sheddable {
                        let n = now.fetch_add(1, SeqCst) + 1;
                        most.fetch_max(n, SeqCst);
                    }
                    held.push((p, permit));
                };
                let give = |(p, permit): (Priority, Permit<Dial>), how: usize| {
                    if p == Priority::Sheddable {
                        now.fetch_sub(1, SeqCst);
                    }
                    match how {
                        0 => permit.success(),
                        1 => permit.failure(),
                        2 => permit.ignore(),
                        _ => drop(permit),
                    }
                };
                for _ in 0..15_000 {
                    let p = rng.priority();
                    let handle = limiter.with_priority(p);
                    match rng.below(12) {
                        0 | 1 => {
                            if let Ok(permit) = handle.try_acquire() {
                                take(p, permit, &mut held);
                            }
                        }
                        2 | 3 => {
                            let wait = if rng.below(2) == 0 {
                                Wait::Until(Deadline::none())
                            } else {
                                Wait::Until(Deadline::after(&clock, ms(rng.below(10) as u64)))
                            };
                            let mut f: Waiting<_> = Box::pin(handle.admit(wait));
                            match poll(&mut f) {
                                Poll::Ready(Ok(permit)) => take(p, permit, &mut held),
                                Poll::Ready(Err(_)) => {}
                                Poll::Pending => waiting.push((p, f)),
                            }
                        }
                        4 => {
                            if !waiting.is_empty() {
                                let i = rng.below(waiting.len());
                                drop(waiting.swap_remove(i));
                            }
                        }
                        5 | 6 => {
                            let mut i = 0;
                            while i < waiting.len() {
                                match poll(&mut waiting[i].1) {
                                    Poll::Ready(Ok(permit)) => {
                                        let (p, _) = waiting.swap_remove(i);
                                        take(p, permit, &mut held);
                                    }
                                    Poll::Ready(Err(_)) => drop(waiting.swap_remove(i)),
                                    Poll::Pending => i += 1,
                                }
                            }
                        }
                        7 => {
                            dial.store(1 + u32::try_from(rng.below(8)).unwrap(), SeqCst);
                        }
                        8 if t == 0 => clock.advance(ms(rng.below(8) as u64)),
                        _ => {
                            if !held.is_empty() {
                                let i = rng.below(held.len());
                                give(held.swap_remove(i), rng.below(4));
                            }
                        }
                    }
                    assert!(limiter.queued() <= 5, "queue over max_queue");
                    flight.fetch_max(limiter.in_flight(), SeqCst);
                }
                drop(waiting);
                for h in held {
                    give(h, 3);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert!(in_flight_most.load(SeqCst) <= 8);
    assert!(
        sheddable_most.load(SeqCst) <= 4,
        "{} sheddable at once",
        sheddable_most.load(SeqCst)
    );
    assert_eq!((limiter.in_flight(), limiter.queued()), (0, 0));
    dial.store(8, SeqCst);
    limiter.try_acquire().unwrap().success();
    assert_eq!(limiter.limit(), 8);
    settled(&limiter);
}
