//! The adaptive limiter per key: each key learns from its own calls alone, the table holds at
//! most `max_keys` keys and forgets only keys with nothing out (their learned limit with
//! them), and a key's handle is a pipeline stage, a tower layer and a priority class of its
//! own; in virtual time (a `FakeClock`, or paused tokio time).
#![cfg(all(feature = "tokio", feature = "test-util", feature = "tower"))]

mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::FutureExt as _;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use support::Rng;
use tidewall::adaptive::{
    AdaptiveLimiter, AdaptivePermit, Aimd, FixedLimit, KeyedAdaptiveLimiter, LimitAlgorithm,
    Priority, Sample,
};
use tidewall::admission::{Admission, Wait};
use tidewall::classify::Verdict;
use tidewall::pipeline::Pipeline;
use tidewall::telemetry::EventKind;
use tidewall::testing::FakeClock;
use tidewall::tower::{AdmitLayer, AdmitMode};
use tidewall::{ConfigError, Deadline, Error, Rejected};
use tower_layer::Layer;
use tower_service::Service;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const FULL: Rejected = Rejected::KeysFull { retry_after: None };

/// AIMD within 1..=100: +1 per call that found half the limit in use, ×0.5 per drop (a
/// failure, or a call slower than 1 s).
fn aimd(initial: u32) -> Aimd {
    Aimd::builder()
        .min_limit(1)
        .initial_limit(initial)
        .max_limit(100)
        .backoff_ratio(0.5)
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap()
}

/// AIMD per key on `clock`, refusing at once when a key's limit is reached.
fn hosts<K: std::hash::Hash + Eq + Clone>(
    initial: u32,
    max_keys: usize,
    clock: &FakeClock,
) -> KeyedAdaptiveLimiter<K, Aimd, FakeClock> {
    AdaptiveLimiter::builder(aimd(initial))
        .runtime(clock.clone())
        .keyed()
        .max_keys(max_keys)
        .build()
        .unwrap()
}

/// Every permit `key` admits now, taken until the first refusal (which must be its limit's).
fn take_all<K: std::hash::Hash + Eq + Clone + std::fmt::Debug, A: LimitAlgorithm + Clone>(
    hosts: &KeyedAdaptiveLimiter<K, A, FakeClock>,
    key: K,
) -> Vec<AdaptivePermit<A, FakeClock>> {
    let mut held = Vec::new();
    loop {
        match hosts.try_acquire(&key) {
            Ok(permit) => held.push(permit),
            Err(refused) => {
                assert_eq!(refused, Rejected::BulkheadFull, "key {key:?}");
                return held;
            }
        }
    }
}

fn poll_once<F: Future + ?Sized>(future: Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(Waker::noop()))
}

type Waiter<A> =
    Pin<Box<dyn Future<Output = Result<AdaptivePermit<A, FakeClock>, Rejected>> + Send>>;

#[test]
fn one_slow_key_lowers_only_its_own_limit() {
    let clock = FakeClock::new();
    let hosts = hosts::<&str>(4, 8, &clock);
    let slow = hosts.try_acquire(&"slow").unwrap();
    clock.advance(Duration::from_secs(2));
    // Two calls of `fast` at once, each done at once: the second found half its limit in use.
    let first = hosts.try_acquire(&"fast").unwrap();
    let second = hosts.try_acquire(&"fast").unwrap();
    first.success();
    second.success();
    assert_eq!(hosts.limit(&"fast"), Some(5));
    assert_eq!(hosts.limit(&"slow"), Some(4), "nothing learned yet");
    // Two seconds, past the 1 s timeout: a drop, for `slow` alone.
    slow.success();
    assert_eq!(hosts.limit(&"slow"), Some(2));
    assert_eq!(hosts.limit(&"fast"), Some(5));
    for _ in 0..5 {
        hosts.try_acquire(&"slow").unwrap().failure();
    }
    assert_eq!(
        (hosts.limit(&"slow"), hosts.limit(&"fast")),
        (Some(1), Some(5))
    );
    let sorted = |mut listed: Vec<(&'static str, u32)>| {
        listed.sort_unstable();
        listed
    };
    assert_eq!(sorted(hosts.limits()), [("fast", 5), ("slow", 1)]);
    assert_eq!(hosts.busy(), [], "nothing runs");
    // Each key's slots follow its own limit.
    let slow_held = take_all(&hosts, "slow");
    let fast_held = take_all(&hosts, "fast");
    assert_eq!((slow_held.len(), fast_held.len()), (1, 5));
    let mut busy = hosts.busy();
    busy.sort_unstable();
    assert_eq!(busy, [("fast", 5), ("slow", 1)]);
    drop(fast_held);
    assert_eq!(hosts.busy(), [("slow", 1)]);
    // A key never seen starts from the initial limit.
    assert_eq!(hosts.limit(&"new"), None);
    drop(hosts.try_acquire(&"new").unwrap());
    assert_eq!(hosts.limit(&"new"), Some(4));
    assert_eq!(
        sorted(hosts.limits()),
        [("fast", 5), ("new", 4), ("slow", 1)]
    );
    // A forgotten key is listed no more.
    drop(slow_held);
    assert_eq!(hosts.retain_in_use(), 3);
    assert_eq!((hosts.limits(), hosts.busy()), (vec![], vec![]));
}

// Docs: a permit dropped without an outcome (a cancelled call) or ignored teaches nothing.
#[test]
fn cancelled_and_ignored_calls_teach_their_key_nothing() {
    let clock = FakeClock::new();
    let hosts = hosts::<u32>(2, 8, &clock);
    let held = [
        hosts.try_acquire(&1).unwrap(),
        hosts.try_acquire(&1).unwrap(),
    ];
    clock.advance(Duration::from_secs(5));
    let [dropped, ignored] = held;
    drop(dropped);
    ignored.ignore();
    assert_eq!(hosts.limit(&1), Some(2), "slow, but cancelled or ignored");
    assert_eq!(hosts.in_flight(&1), 0);
    hosts.try_acquire(&1).unwrap().failure();
    assert_eq!(hosts.limit(&1), Some(1));
}

// Docs: "A key with anything out is never forgotten"; one with nothing out "may be forgotten
// whenever a shard fills up ... its learned limit is forgotten with it, so a key seen again
// starts from the algorithm's initial limit"; "refused with Rejected::KeysFull (its
// retry_after is None: only a permit's release frees room)".
#[test]
fn a_busy_key_is_never_forgotten_an_idle_one_is_with_what_it_learned() {
    let clock = FakeClock::new();
    let hosts = hosts::<u32>(4, 2, &clock);
    let one = hosts.try_acquire(&1).unwrap();
    let two = hosts.try_acquire(&2).unwrap();
    for gap in [ms(1), support::HOUR, 400 * support::DAY] {
        clock.advance(gap);
        assert_eq!(hosts.try_acquire(&3).unwrap_err(), FULL, "after {gap:?}");
        assert_eq!(hosts.get(&3).unwrap_err(), FULL);
        assert_eq!(hosts.retain_in_use(), 0);
    }
    assert_eq!((hosts.len(), hosts.evicted()), (2, 0));
    one.failure(); // key 1 learns (4 → 2) and has nothing out now
    assert_eq!(hosts.limit(&1), Some(2));
    let three = hosts
        .try_acquire(&3)
        .expect("key 1 is idle: forgotten to make room");
    assert_eq!(
        (hosts.limit(&1), hosts.len(), hosts.evicted()),
        (None, 2, 1)
    );
    assert_eq!(hosts.in_flight(&2), 1, "the busy key kept its permit");
    assert_eq!(hosts.try_acquire(&1).unwrap_err(), FULL, "2 and 3 are busy");
    drop(three);
    let again = hosts.try_acquire(&1).expect("key 3 went");
    assert_eq!(
        hosts.limit(&1),
        Some(4),
        "key 1 starts afresh: what it learned was forgotten with it"
    );
    drop((again, two));
    assert_eq!(hosts.retain_in_use(), 2);
    assert!(hosts.is_empty());
    assert_eq!(hosts.evicted(), 4);
}

// Docs: no handle from `get` held, "nor a pipeline or a layer built over one"; for
// `acquire_before`: "The key is held (never evicted) while the future exists", and dropping
// it "leaves the queue and leaks nothing".
#[test]
fn a_handle_a_pipeline_or_a_waiter_keeps_its_key() {
    let clock = FakeClock::new();
    let hosts = AdaptiveLimiter::builder(FixedLimit(1))
        .max_queue(2)
        .max_wait(None)
        .runtime(clock.clone())
        .keyed()
        .max_keys(1)
        .build::<u32>()
        .unwrap();
    let handle = hosts.get(&1).unwrap();
    assert_eq!(hosts.try_acquire(&2).unwrap_err(), FULL, "a handle is out");
    let pipeline = Pipeline::builder().bulkhead(handle).build().unwrap();
    assert_eq!(hosts.retain_in_use(), 0, "the pipeline holds the handle");
    drop(pipeline);
    assert_eq!(hosts.retain_in_use(), 1);

    // A granted waiter that never looks at its slot still holds the key; dropped, it passes
    // the slot on to the next waiter, and the last one's slot comes back.
    let held = hosts.try_acquire(&1).unwrap();
    let mut first: Waiter<FixedLimit> = Box::pin(hosts.acquire_before(&1, Deadline::none()));
    let mut second: Waiter<FixedLimit> = Box::pin(hosts.acquire_before(&1, Deadline::none()));
    assert!(poll_once(first.as_mut()).is_pending());
    assert!(poll_once(second.as_mut()).is_pending());
    assert_eq!(hosts.get(&1).unwrap().queued(), 2);
    drop(held);
    assert_eq!(hosts.try_acquire(&2).unwrap_err(), FULL);
    drop(first);
    let Poll::Ready(Ok(permit)) = poll_once(second.as_mut()) else {
        panic!("the slot of a dropped, granted waiter was lost");
    };
    assert_eq!(hosts.try_acquire(&2).unwrap_err(), FULL, "a permit is out");
    drop(permit);
    drop(second);
    let _two = hosts.try_acquire(&2).expect("key 1 has nothing out");
    assert_eq!((hosts.len(), hosts.evicted()), (1, 2));
}

// Docs (`acquire_before`): "Rejected::KeysFull (at once) for a new key when its shard is full
// of busy keys"; a key's wait ends at its deadline.
#[test]
fn waits_are_bounded_and_a_new_key_in_a_full_table_is_refused_at_once() {
    let clock = FakeClock::new();
    let hosts = AdaptiveLimiter::builder(FixedLimit(1))
        .max_queue(1)
        .max_wait(None)
        .runtime(clock.clone())
        .keyed()
        .max_keys(1)
        .build::<u32>()
        .unwrap();
    let _held = hosts.try_acquire(&1).unwrap();
    let refused = hosts.acquire_before(&2, Deadline::none()).now_or_never();
    assert_eq!(refused.map(|r| r.map(drop)), Some(Err(FULL)));
    let deadline = Deadline::after(&clock, ms(100));
    let mut waiting: Waiter<FixedLimit> = Box::pin(hosts.acquire_before(&1, deadline));
    assert!(poll_once(waiting.as_mut()).is_pending());
    let full = hosts.acquire_before(&1, Deadline::none()).now_or_never();
    assert_eq!(
        full.map(|r| r.map(drop)),
        Some(Err(Rejected::BulkheadFull)),
        "a queue of one"
    );
    clock.advance(ms(100));
    assert!(matches!(
        poll_once(waiting.as_mut()),
        Poll::Ready(Err(Rejected::DeadlineExceeded))
    ));
    drop(waiting);
    assert_eq!(hosts.get(&1).unwrap().queued(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_keys_handle_in_a_pipeline_teaches_its_key_and_waits_within_the_deadline() {
    let hosts = AdaptiveLimiter::builder(aimd(2))
        .max_queue(4)
        .max_wait(None)
        .keyed()
        .build::<&str>()
        .unwrap();
    let pipeline = |key| {
        Pipeline::builder()
            .deadline(ms(100))
            .bulkhead(hosts.get(&key).unwrap())
            .classify(|r: Result<&u32, &&str>| match r {
                Ok(404) => Verdict::Ignored,
                Ok(_) => Verdict::Success,
                Err(_) => Verdict::Failure,
            })
            .build()
            .unwrap()
    };
    let (a, b) = (pipeline("a"), pipeline("b"));
    // One call of a limit of 2 is half of it: a success grows `a`'s limit, not `b`'s.
    assert_eq!(a.call(|| async { Ok::<u32, &str>(200) }).await, Ok(200));
    assert_eq!((hosts.limit(&"a"), hosts.limit(&"b")), (Some(3), Some(2)));
    assert_eq!(a.call(|| async { Ok::<u32, &str>(404) }).await, Ok(404));
    assert_eq!(hosts.limit(&"a"), Some(3), "ignored");
    assert!(a.call(|| async { Err::<u32, _>("503") }).await.is_err());
    assert_eq!((hosts.limit(&"a"), hosts.limit(&"b")), (Some(1), Some(2)));

    // `a`'s one slot is held: its pipeline's call waits, and the wait ends at the deadline.
    let held = hosts.try_acquire(&"a").unwrap();
    let start = tokio::time::Instant::now();
    let waited = a.call(|| async { Ok::<u32, &str>(1) }).await;
    assert_eq!(waited, Err(Error::Rejected(Rejected::DeadlineExceeded)));
    assert_eq!(start.elapsed(), ms(100));
    // `b` is not held up by `a`.
    assert_eq!(b.call(|| async { Ok::<u32, &str>(2) }).await, Ok(2));

    // A call of `b` cancelled after a long wait teaches nothing.
    let mut call = Box::pin(b.call(|| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok::<u32, &str>(3)
    }));
    assert!((&mut call).now_or_never().is_none());
    assert_eq!(hosts.in_flight(&"b"), 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    drop(call);
    assert_eq!((hosts.in_flight(&"b"), hosts.limit(&"b")), (0, Some(3)));
    drop(held);
    assert_eq!(a.call(|| async { Ok::<u32, &str>(4) }).await, Ok(4));
    assert_eq!(hosts.in_flight(&"a"), 0);
}

#[derive(Clone)]
struct Echo;

impl Service<u32> for Echo {
    type Response = u32;
    type Error = Error<&'static str>;
    type Future = std::future::Ready<Result<u32, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, x: u32) -> Self::Future {
        std::future::ready(if x == 0 {
            Err(Error::Inner("down"))
        } else {
            Ok(x)
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_keys_handle_behind_a_tower_layer_teaches_its_key() {
    let hosts = AdaptiveLimiter::builder(aimd(2))
        .keyed()
        .build::<u32>()
        .unwrap();
    let mut one = AdmitLayer::new(hosts.get(&1).unwrap(), AdmitMode::Reject).layer(Echo);
    let mut two = AdmitLayer::new(hosts.get(&2).unwrap(), AdmitMode::Reject).layer(Echo);
    assert_eq!(one.call(7).await, Ok(7));
    assert_eq!((hosts.limit(&1), hosts.limit(&2)), (Some(3), Some(2)));
    assert!(one.call(0).await.is_err());
    assert!(two.call(0).await.is_err());
    assert_eq!((hosts.limit(&1), hosts.limit(&2)), (Some(1), Some(1)));
    drop((one, two));
    assert_eq!(hosts.retain_in_use(), 2, "the layers held their keys");
}

#[test]
fn priorities_shed_per_key() {
    let clock = FakeClock::new();
    let hosts = AdaptiveLimiter::builder(FixedLimit(5))
        .share(Priority::Default, 0.8)
        .share(Priority::Sheddable, 0.4)
        .max_queue(4)
        .max_wait(None)
        .runtime(clock.clone())
        .keyed()
        .build::<u32>()
        .unwrap();
    let shed_one = hosts.get(&1).unwrap().with_priority(Priority::Sheddable);
    let critical_one = hosts.get(&1).unwrap().with_priority(Priority::Critical);
    assert_eq!(shed_one.priority(), Priority::Sheddable);
    let mut held: Vec<_> = std::iter::from_fn(|| shed_one.try_acquire().ok()).collect();
    assert_eq!(held.len(), 2, "sheddable calls fill 0.4 × 5");
    // Key 2's shares are its own.
    let shed_two = hosts.get(&2).unwrap().with_priority(Priority::Sheddable);
    let other: Vec<_> = std::iter::from_fn(|| shed_two.try_acquire().ok()).collect();
    assert_eq!(other.len(), 2);
    // Key 1's default calls go on to 4 of 5 (try_acquire's priority), critical ones to 5.
    held.extend(std::iter::from_fn(|| hosts.try_acquire(&1).ok()));
    assert_eq!(held.len(), 4);
    held.push(critical_one.try_acquire().unwrap());
    assert_eq!(
        critical_one.try_acquire().unwrap_err(),
        Rejected::BulkheadFull
    );
    // Key 1's queue serves its critical waiter first; key 2 admits meanwhile.
    let mut shed: Waiter<FixedLimit> = Box::pin(shed_one.admit(Wait::Until(Deadline::none())));
    let mut critical: Waiter<FixedLimit> =
        Box::pin(critical_one.admit(Wait::Until(Deadline::none())));
    assert!(poll_once(shed.as_mut()).is_pending());
    assert!(poll_once(critical.as_mut()).is_pending());
    assert!(hosts.try_acquire(&2).is_ok());
    held.pop();
    let Poll::Ready(Ok(permit)) = poll_once(critical.as_mut()) else {
        panic!("the critical waiter goes first");
    };
    assert!(poll_once(shed.as_mut()).is_pending());
    drop(permit);
    held.truncate(1);
    assert!(matches!(poll_once(shed.as_mut()), Poll::Ready(Ok(_))));
    drop((held, other, shed, critical));
    assert_eq!((hosts.in_flight(&1), hosts.in_flight(&2)), (0, 0));
}

#[test]
fn refusals_are_reported_per_key_and_for_the_table() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let hosts = AdaptiveLimiter::builder(FixedLimit(1))
        .name("hosts")
        .on_event(move |event| {
            if let EventKind::Rejected(why) = event.kind {
                log.lock()
                    .unwrap()
                    .push((event.policy, event.name.to_owned(), why.kind()));
            }
        })
        .runtime(FakeClock::new())
        .keyed()
        .max_keys(1)
        .build::<u32>()
        .unwrap();
    let _held = hosts.try_acquire(&1).unwrap();
    assert_eq!(hosts.try_acquire(&1).unwrap_err(), Rejected::BulkheadFull);
    assert_eq!(hosts.try_acquire(&2).unwrap_err(), FULL);
    assert_eq!(
        *seen.lock().unwrap(),
        [
            ("adaptive", "hosts".to_owned(), "bulkhead_full"),
            ("keyed_adaptive", "hosts".to_owned(), "keys_full"),
        ]
    );
}

#[test]
fn clones_share_the_table_and_builders_make_separate_ones() {
    let clock = FakeClock::new();
    let builder = AdaptiveLimiter::builder(aimd(3))
        .name("tenants")
        .runtime(clock)
        .keyed()
        .max_keys(7);
    let other = builder.clone().build::<u32>().unwrap();
    let hosts = builder.build::<u32>().unwrap();
    let copy = hosts.clone();
    let permit = copy.try_acquire(&1).unwrap();
    assert_eq!((hosts.in_flight(&1), other.in_flight(&1)), (1, 0));
    assert_eq!((hosts.len(), other.len()), (1, 0));
    permit.failure();
    assert_eq!((hosts.limit(&1), other.limit(&1)), (Some(1), None));
    assert_eq!(hosts.name(), "tenants");
    assert_eq!(hosts.max_keys(), 7);
    let debug = format!("{hosts:?}");
    for part in [
        "KeyedAdaptiveLimiter",
        "tenants",
        "initial_limit: 3",
        "keys: 1",
        "max_keys: 7",
    ] {
        assert!(debug.contains(part), "{debug}");
    }
    let builder_debug = format!("{:?}", AdaptiveLimiter::builder(aimd(3)).keyed());
    assert!(builder_debug.contains("max_keys: 10000"), "{builder_debug}");
}

#[test]
fn bad_settings_are_the_limiters_typed_errors() {
    let zero = AdaptiveLimiter::builder(aimd(2))
        .keyed()
        .max_keys(0)
        .build::<u8>();
    assert_eq!(zero.unwrap_err(), ConfigError::Zero { field: "max_keys" });
    let plain = AdaptiveLimiter::builder(aimd(2))
        .share(Priority::Sheddable, 1.5)
        .build()
        .unwrap_err();
    let keyed = AdaptiveLimiter::builder(aimd(2))
        .share(Priority::Sheddable, 1.5)
        .keyed()
        .build::<u8>()
        .unwrap_err();
    assert_eq!(keyed, plain);
    let keyed = AdaptiveLimiter::builder(aimd(2))
        .max_queue(1)
        .max_wait(Duration::ZERO)
        .keyed()
        .build::<u8>()
        .unwrap_err();
    assert_eq!(keyed, ConfigError::Zero { field: "max_wait" });
    let no_slot = AdaptiveLimiter::builder(FixedLimit(0))
        .keyed()
        .build::<u8>();
    assert_eq!(
        no_slot.unwrap_err(),
        AdaptiveLimiter::builder(FixedLimit(0)).build().unwrap_err()
    );
}

/// An algorithm whose copies after the first have no slot: a `Clone` that is not a copy.
#[derive(Debug)]
struct Fickle(Arc<AtomicU32>, u32);

impl Clone for Fickle {
    fn clone(&self) -> Self {
        let copies = self.0.fetch_add(1, SeqCst);
        Self(Arc::clone(&self.0), if copies == 0 { self.1 } else { 0 })
    }
}

impl LimitAlgorithm for Fickle {
    fn limit(&self) -> u32 {
        self.1
    }
    fn update(&mut self, _: &Sample) -> u32 {
        self.1
    }
    fn bounds(&self) -> (u32, u32) {
        (self.1, self.1)
    }
}

// Docs: no panic on user input. A copy of the algorithm that fails what `build` checked makes
// a key with no slot: refused, and not stored.
#[test]
fn an_algorithm_whose_copies_differ_refuses_without_panicking() {
    let hosts = AdaptiveLimiter::builder(Fickle(Arc::new(AtomicU32::new(0)), 2))
        .keyed()
        .build::<u8>()
        .expect("the first copy is the algorithm");
    assert_eq!(hosts.try_acquire(&1).unwrap_err(), Rejected::BulkheadFull);
    assert_eq!(hosts.get(&1).unwrap_err(), Rejected::BulkheadFull);
    assert_eq!((hosts.len(), hosts.limit(&1)), (0, None));
}

/// Threads taking and ending calls over 16 keys in a table of 8, on one virtual clock some
/// of them move: the bound holds at every step, a key with a permit out is always there with
/// it counted, no key ever runs more than the most its limit allows, and every slot comes
/// back.
#[test]
fn threads_over_random_keys_lose_no_permit() {
    const KEYS: u64 = 16;
    const MAX_KEYS: usize = 8;
    let clock = FakeClock::new();
    let hosts = hosts::<u64>(4, MAX_KEYS, &clock);
    let most = Arc::new(AtomicUsize::new(0));
    let full = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..4_u64)
        .map(|t| {
            let (hosts, clock) = (hosts.clone(), clock.clone());
            let (most, full) = (Arc::clone(&most), Arc::clone(&full));
            std::thread::spawn(move || {
                let mut rng = Rng::new(0x6b65_7965_6441 ^ t);
                let mut held: Vec<(u64, AdaptivePermit<Aimd, FakeClock>)> = Vec::new();
                for _ in 0..20_000 {
                    let key = rng.below(KEYS);
                    match rng.below(8) {
                        0..=3 if held.len() < 12 => {
                            let handle = rng.chance(4).then(|| hosts.get(&key));
                            let taken = match handle {
                                Some(Ok(handle)) => {
                                    handle.with_priority(Priority::Sheddable).try_acquire()
                                }
                                Some(Err(refused)) => Err(refused),
                                None => hosts.try_acquire(&key),
                            };
                            match taken {
                                Ok(permit) => {
                                    let now = hosts.in_flight(&key);
                                    assert!(now >= 1, "key {key} lost its permit");
                                    most.fetch_max(now, SeqCst);
                                    held.push((key, permit));
                                }
                                Err(Rejected::BulkheadFull) => {}
                                Err(Rejected::KeysFull { retry_after: None }) => {
                                    full.fetch_add(1, SeqCst);
                                }
                                Err(other) => panic!("unexpected {other:?}"),
                            }
                        }
                        4..=6 if !held.is_empty() => {
                            let i = usize::try_from(rng.below(held.len() as u64)).unwrap();
                            let (key, permit) = held.swap_remove(i);
                            assert!(hosts.in_flight(&key) >= 1, "key {key} was forgotten");
                            assert!(hosts.limit(&key).is_some(), "key {key} was forgotten");
                            match rng.below(4) {
                                0 => permit.success(),
                                1 => permit.failure(),
                                2 => permit.ignore(),
                                _ => drop(permit),
                            }
                        }
                        7 if rng.chance(50) => clock.advance(ms(300)),
                        7 if rng.chance(50) => drop(hosts.retain_in_use()),
                        _ => {}
                    }
                    assert!(hosts.len() <= MAX_KEYS);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert!(full.load(SeqCst) > 0, "the table filled up");
    assert!(hosts.evicted() > 0, "idle keys went");
    assert!(
        most.load(SeqCst) <= 100,
        "never more than max_limit in flight"
    );
    for key in 0..KEYS {
        let Some(limit) = hosts.limit(&key) else {
            continue;
        };
        assert!((1..=100).contains(&limit), "{limit}");
        let handle = hosts.get(&key).unwrap();
        assert_eq!((handle.in_flight(), handle.queued()), (0, 0), "key {key}");
        // Its slots still match its limit: exactly `limit` can be taken now.
        let taken: Vec<_> = (0..limit).map(|_| handle.try_acquire().unwrap()).collect();
        assert_eq!(handle.try_acquire().unwrap_err(), Rejected::BulkheadFull);
        drop(taken);
    }
    let len = hosts.len();
    assert_eq!(hosts.retain_in_use(), len);
    assert!(hosts.is_empty());
}

/// A fixed seed and no regression files: every run explores the same cases.
fn fixed(cases: u32, seed: u64) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Ask for a key's permit.
    Take(u8),
    /// End the i-th permit held: success, failure, ignored or dropped (0..4).
    End(usize, u8),
    /// Take a handle to a key.
    Handle(u8),
    DropHandle(usize),
    Sweep,
    /// Move the clock by this many milliseconds.
    Wait(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..10).prop_map(Op::Take),
        3 => (0usize..16, 0u8..4).prop_map(|(i, how)| Op::End(i, how)),
        1 => (0u8..10).prop_map(Op::Handle),
        1 => (0usize..4).prop_map(Op::DropHandle),
        1 => Just(Op::Sweep),
        1 => (0u16..2_000).prop_map(Op::Wait),
    ]
}

proptest! {
    #![proptest_config(fixed(512, 0x6164_6170_7469_7665))]

    /// Any `max_keys`, from zero to `usize::MAX`: zero is a typed error; any other builds,
    /// holds at most that many keys, fills a table of one shard exactly (a larger one to
    /// within a few percent), refuses new keys only with `KeysFull` and no hint, and gives
    /// every key back once nothing is out.
    #[test]
    fn any_max_keys_is_a_typed_error_or_a_hard_bound(
        max_keys in prop_oneof![
            Just(0usize), Just(1), Just(2), 1usize..1_100, Just(usize::MAX),
            Just(usize::MAX - 1), Just(usize::MAX / 2 + 1), any::<usize>(),
        ],
        keys in 1usize..700,
    ) {
        let clock = FakeClock::new();
        let built = AdaptiveLimiter::builder(FixedLimit(1))
            .runtime(clock)
            .keyed()
            .max_keys(max_keys)
            .build::<u64>();
        if max_keys == 0 {
            prop_assert_eq!(built.unwrap_err(), ConfigError::Zero { field: "max_keys" });
            return Ok(());
        }
        let hosts = built.unwrap();
        prop_assert_eq!(hosts.max_keys(), max_keys);
        let mut held = Vec::new();
        for key in 0..keys as u64 {
            match hosts.try_acquire(&(key * 7919)) {
                Ok(permit) => held.push(permit),
                Err(refused) => {
                    prop_assert_eq!(refused, FULL);
                    prop_assert!(max_keys > 511 || hosts.len() == max_keys);
                }
            }
            prop_assert!(hosts.len() <= max_keys);
        }
        let fits = keys.min(max_keys);
        if max_keys <= 511 {
            prop_assert_eq!(held.len(), fits);
        } else {
            prop_assert!(held.len() * 10 >= fits * 9, "{} of {}", held.len(), fits);
        }
        prop_assert_eq!(hosts.len(), held.len());
        drop(held);
        let len = hosts.len();
        prop_assert_eq!(hosts.retain_in_use(), len);
        prop_assert!(hosts.is_empty());
    }

    /// Whatever is taken, ended, held by handle, swept and waited for: the bound holds after
    /// every step; a key with a permit or a handle out is never forgotten and counts its
    /// permits right; a key admits exactly while fewer than its limit are in flight; a new
    /// key is refused only when every key held is busy; a sweep leaves only the busy keys.
    #[test]
    fn busy_keys_are_never_forgotten_and_each_admits_to_its_own_limit(
        max_keys in 1usize..6,
        ops in proptest::collection::vec(op(), 1..200),
    ) {
        let clock = FakeClock::new();
        let hosts = hosts::<u8>(2, max_keys, &clock);
        let mut held: Vec<(u8, AdaptivePermit<Aimd, FakeClock>)> = Vec::new();
        let mut handles: Vec<(u8, AdaptiveLimiter<Aimd, FakeClock>)> = Vec::new();
        for op in ops {
            let busy = |held: &[(u8, _)], handles: &[(u8, _)]| {
                let mut keys: Vec<u8> =
                    held.iter().map(|(k, _)| *k).chain(handles.iter().map(|(k, _)| *k)).collect();
                keys.sort_unstable();
                keys.dedup();
                keys
            };
            match op {
                Op::Take(key) => {
                    let out = held.iter().filter(|(k, _)| *k == key).count();
                    let limit = hosts.limit(&key);
                    match hosts.try_acquire(&key) {
                        Ok(permit) => {
                            prop_assert!(out < limit.unwrap_or(2) as usize, "key {}", key);
                            held.push((key, permit));
                        }
                        Err(Rejected::BulkheadFull) => {
                            prop_assert!(out >= limit.unwrap() as usize, "key {}", key);
                        }
                        Err(Rejected::KeysFull { retry_after: None }) => {
                            let busy = busy(&held, &handles);
                            prop_assert!(!busy.contains(&key));
                            prop_assert_eq!(busy.len(), max_keys);
                        }
                        Err(other) => prop_assert!(false, "unexpected {:?}", other),
                    }
                }
                Op::End(i, how) => {
                    if !held.is_empty() {
                        let (_, permit) = held.swap_remove(i % held.len());
                        match how {
                            0 => permit.success(),
                            1 => permit.failure(),
                            2 => permit.ignore(),
                            _ => drop(permit),
                        }
                    }
                }
                Op::Handle(key) => match hosts.get(&key) {
                    Ok(handle) => handles.push((key, handle)),
                    Err(refused) => {
                        prop_assert_eq!(refused, FULL);
                        prop_assert_eq!(busy(&held, &handles).len(), max_keys);
                    }
                },
                Op::DropHandle(i) => {
                    if !handles.is_empty() {
                        handles.swap_remove(i % handles.len());
                    }
                }
                Op::Sweep => {
                    hosts.retain_in_use();
                    prop_assert_eq!(hosts.len(), busy(&held, &handles).len());
                }
                Op::Wait(n) => clock.advance(ms(u64::from(n))),
            }
            prop_assert!(hosts.len() <= max_keys);
            for key in busy(&held, &handles) {
                let out = held.iter().filter(|(k, _)| *k == key).count();
                prop_assert!(hosts.limit(&key).is_some(), "busy key {} forgotten", key);
                prop_assert_eq!(hosts.in_flight(&key), out, "key {}", key);
            }
        }
    }
}
