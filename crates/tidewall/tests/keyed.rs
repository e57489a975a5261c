//! Keyed breakers and bulkheads: one policy per key, a hard bound on keys, and eviction that
//! never forgets a key something still depends on (virtual time).

use std::time::Duration;

use proptest::prelude::*;
use tidewall::breaker::{CircuitBreaker, KeyedCircuitBreaker, State};
use tidewall::bulkhead::{Bulkhead, KeyedBulkhead};
use tidewall::{ConfigError, Deadline, Rejected};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn breakers(max_keys: usize) -> KeyedCircuitBreaker<u32> {
    CircuitBreaker::builder()
        .consecutive_failures(2)
        .break_duration(secs(10))
        .keyed()
        .max_keys(max_keys)
        .idle_ttl(secs(60))
        .build()
        .unwrap()
}

async fn fail(breakers: &KeyedCircuitBreaker<u32>, key: u32) {
    let _ = breakers.call(&key, || async { Err::<(), _>("down") }).await;
}

async fn succeed(breakers: &KeyedCircuitBreaker<u32>, key: u32) -> Result<(), tidewall::Error<()>> {
    breakers.call(&key, || async { Ok::<_, ()>(()) }).await
}

#[tokio::test(start_paused = true)]
async fn one_failing_key_opens_only_its_own_breaker() {
    let breakers = breakers(100);
    fail(&breakers, 1).await;
    fail(&breakers, 1).await;
    assert_eq!(breakers.state(&1), Some(State::Open));
    for _ in 0..10 {
        succeed(&breakers, 2).await.unwrap();
    }
    assert_eq!(breakers.state(&2), Some(State::Closed));
    assert!(matches!(
        breakers.try_acquire(&1),
        Err(Rejected::CircuitOpen { .. })
    ));
    tokio::time::advance(secs(10)).await;
    succeed(&breakers, 1).await.unwrap();
    assert_eq!(
        breakers.state(&1),
        Some(State::Closed),
        "the probe closed it"
    );
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_is_never_evicted_and_a_full_table_refuses_new_keys() {
    let breakers = breakers(1);
    fail(&breakers, 1).await;
    fail(&breakers, 1).await;
    // However long it waits, an open breaker stays: forgetting it would let every call
    // through to a host that was failing.
    tokio::time::advance(secs(3600)).await;
    assert_eq!(
        breakers.try_acquire(&2).unwrap_err(),
        Rejected::KeysFull { retry_after: None }
    );
    assert_eq!(breakers.state(&1), Some(State::Open));
    assert_eq!(breakers.len(), 1);
    assert_eq!(breakers.evicted(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_used_closed_key_goes_after_idle_ttl() {
    let breakers = breakers(1);
    succeed(&breakers, 1).await.unwrap();
    // Only successes, no run of failures: still not pristine (the window holds calls), so it
    // waits out idle_ttl like any used key.
    assert!(matches!(
        breakers.try_acquire(&2),
        Err(Rejected::KeysFull { retry_after: Some(d) }) if d == secs(60)
    ));
    tokio::time::advance(secs(30)).await;
    fail(&breakers, 1).await; // touches the key again: idle from now, 90 s in
    // Each refusal looks again: the key was used, so it goes 60 s from that use.
    assert_eq!(
        breakers.try_acquire(&2).unwrap_err(),
        Rejected::KeysFull {
            retry_after: Some(secs(60))
        },
        "one failure, and 60 s of idle to go"
    );
    tokio::time::advance(secs(59)).await;
    assert!(
        breakers.try_acquire(&2).is_err(),
        "not idle long enough yet"
    );
    tokio::time::advance(secs(1)).await;
    let permit = breakers.try_acquire(&2).expect("key 1 went idle");
    permit.success();
    assert_eq!(breakers.state(&1), None, "key 1 was forgotten");
    assert_eq!(breakers.evicted(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_key_whose_time_window_emptied_goes_before_idle_ttl() {
    let breakers = CircuitBreaker::builder()
        .failure_rate(0.5)
        .window(tidewall::breaker::Window::Time {
            span: secs(10),
            buckets: 10,
        })
        .keyed()
        .max_keys(1)
        .idle_ttl(secs(3600))
        .build()
        .unwrap();
    let _ = breakers.call(&1, || async { Err::<(), _>(()) }).await;
    tokio::time::advance(secs(11)).await;
    // Nothing left in its window and no run of failures: forgetting it loses nothing.
    assert!(breakers.try_acquire(&2).is_ok());
    assert_eq!(breakers.state(&1), None);
}

#[tokio::test(start_paused = true)]
async fn a_key_with_a_permit_or_a_handle_out_is_kept() {
    let breakers = breakers(1);
    let permit = breakers.try_acquire(&1).unwrap();
    tokio::time::advance(secs(3600)).await;
    assert_eq!(
        breakers.try_acquire(&2).unwrap_err(),
        Rejected::KeysFull { retry_after: None }
    );
    permit.success();
    let handle = breakers.get(&1).expect("held");
    tokio::time::advance(secs(3600)).await;
    assert!(breakers.try_acquire(&2).is_err(), "a handle keeps the key");
    drop(handle);
    assert!(breakers.try_acquire(&2).is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_forgotten_key_starts_afresh() {
    let breakers = breakers(1);
    fail(&breakers, 1).await; // one failure of the two that would open it
    tokio::time::advance(secs(60)).await;
    assert_eq!(breakers.retain_in_use(), 1);
    fail(&breakers, 1).await;
    assert_eq!(
        breakers.state(&1),
        Some(State::Closed),
        "the earlier failure was forgotten with the key"
    );
}

#[tokio::test(start_paused = true)]
async fn state_changes_carry_their_key() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = std::sync::Arc::clone(&seen);
    let breakers = CircuitBreaker::builder()
        .consecutive_failures(1)
        .break_duration(secs(1))
        .keyed()
        .on_state_change(move |key: &u32, change| log.lock().unwrap().push((*key, change.to)))
        .build()
        .unwrap();
    let _ = breakers.call(&7, || async { Err::<(), _>(()) }).await;
    tokio::time::advance(secs(1)).await;
    breakers
        .call(&7, || async { Ok::<_, ()>(()) })
        .await
        .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [(7, State::Open), (7, State::HalfOpen), (7, State::Closed)]
    );
}

#[test]
fn bad_keyed_settings_are_typed_errors() {
    let zero = CircuitBreaker::builder().keyed().max_keys(0).build();
    assert_eq!(
        zero.map(|_: KeyedCircuitBreaker<u8>| ()).unwrap_err(),
        ConfigError::Zero { field: "max_keys" }
    );
    let ttl = CircuitBreaker::builder()
        .keyed()
        .idle_ttl(Duration::MAX)
        .build();
    assert_eq!(
        ttl.map(|_: KeyedCircuitBreaker<u8>| ()).unwrap_err(),
        ConfigError::DurationOverflow { field: "idle_ttl" }
    );
    let zero = Bulkhead::builder(1).keyed().max_keys(0).build::<u8>();
    assert_eq!(zero.unwrap_err(), ConfigError::Zero { field: "max_keys" });
    let no_slots = Bulkhead::builder(0).keyed().build::<u8>();
    assert_eq!(
        no_slots.unwrap_err(),
        ConfigError::Zero {
            field: "max_concurrent"
        }
    );
}

fn bulkheads(max_keys: usize) -> KeyedBulkhead<u32> {
    Bulkhead::builder(2)
        .max_queue(1)
        .max_wait(secs(5))
        .keyed()
        .max_keys(max_keys)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn each_key_has_its_own_slots_and_queue() {
    let bulkheads = bulkheads(10);
    let a1 = bulkheads.try_acquire(&1).unwrap();
    let _a2 = bulkheads.try_acquire(&1).unwrap();
    assert_eq!(
        bulkheads.try_acquire(&1).unwrap_err(),
        Rejected::BulkheadFull
    );
    assert!(bulkheads.try_acquire(&2).is_ok());
    let waiter = tokio::spawn(bulkheads.acquire_before(&1, Deadline::none()));
    tokio::task::yield_now().await;
    assert_eq!(bulkheads.get(&1).unwrap().queued(), 1);
    drop(a1);
    let permit = waiter.await.unwrap().expect("handed the freed slot");
    assert_eq!(bulkheads.in_flight(&1), 2);
    assert_eq!(bulkheads.busy(), [(1, 2)], "key 2's permit was dropped");
    drop(permit);
    assert_eq!(bulkheads.in_flight(&1), 1);
    assert_eq!(bulkheads.busy(), [(1, 1)]);
}

#[tokio::test(start_paused = true)]
async fn a_queued_waiter_keeps_its_key_and_leaves_cleanly_when_dropped() {
    let bulkheads = bulkheads(1);
    let held = [
        bulkheads.try_acquire(&1).unwrap(),
        bulkheads.try_acquire(&1).unwrap(),
    ];
    let waiting = bulkheads.acquire_before(&1, Deadline::none());
    drop(held);
    // The waiter's future still holds the key (its bulkhead is referenced), so a new key is
    // refused rather than orphaning it.
    assert_eq!(
        bulkheads.try_acquire(&2).unwrap_err(),
        Rejected::KeysFull { retry_after: None }
    );
    drop(waiting);
    let permit = bulkheads.try_acquire(&2).expect("key 1 is idle now");
    assert_eq!(bulkheads.len(), 1);
    assert_eq!(bulkheads.evicted(), 1);
    drop(permit);
}

#[tokio::test(start_paused = true)]
async fn a_new_key_in_a_full_table_is_refused_at_once_even_when_it_would_wait() {
    let bulkheads = bulkheads(1);
    let _held = bulkheads.try_acquire(&1).unwrap();
    let refused = bulkheads.acquire_before(&2, Deadline::none()).await;
    assert_eq!(
        refused.unwrap_err(),
        Rejected::KeysFull { retry_after: None }
    );
}

#[tokio::test(start_paused = true)]
async fn call_runs_inside_the_keys_bulkhead() {
    let bulkheads = bulkheads(10);
    let inside = bulkheads
        .call(&3, || {
            let in_flight = bulkheads.in_flight(&3);
            async move { Ok::<_, ()>(in_flight) }
        })
        .await;
    assert_eq!(inside, Ok(1));
    assert_eq!(bulkheads.in_flight(&3), 0);
}

#[derive(Debug, Clone)]
enum Op {
    Take(u8),
    Release(usize),
    Sweep,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..12).prop_map(Op::Take),
        (0usize..16).prop_map(Op::Release),
        Just(Op::Sweep),
    ]
}

proptest! {
    /// Whatever the order of takes, releases and sweeps: the table never holds more than
    /// `max_keys`, a key with a permit out is never forgotten (its count stays right), and a
    /// refusal for a new key happens only when every held key is busy.
    #[test]
    fn keys_stay_bounded_and_busy_keys_are_never_forgotten(
        max_keys in 1usize..6,
        ops in proptest::collection::vec(op(), 1..200),
    ) {
        let bulkheads = Bulkhead::builder(3).reject_when_full().keyed().max_keys(max_keys).build::<u8>().unwrap();
        let mut held: Vec<(u8, tidewall::bulkhead::OwnedPermit<_>)> = Vec::new();
        for op in ops {
            match op {
                Op::Take(key) => match bulkheads.try_acquire(&key) {
                    Ok(permit) => held.push((key, permit)),
                    Err(Rejected::BulkheadFull) => {
                        prop_assert_eq!(held.iter().filter(|(k, _)| *k == key).count(), 3);
                    }
                    Err(Rejected::KeysFull { retry_after: None }) => {
                        let mut busy: Vec<u8> = held.iter().map(|(k, _)| *k).collect();
                        busy.sort_unstable();
                        busy.dedup();
                        prop_assert!(!busy.contains(&key));
                        prop_assert!(busy.len() >= bulkheads.len().min(max_keys));
                    }
                    Err(other) => prop_assert!(false, "unexpected {other:?}"),
                },
                Op::Release(i) => {
                    if !held.is_empty() {
                        let i = i % held.len();
                        drop(held.swap_remove(i));
                    }
                }
                Op::Sweep => {
                    bulkheads.retain_in_use();
                }
            }
            prop_assert!(bulkheads.len() <= max_keys);
            for key in 0..12u8 {
                let out = held.iter().filter(|(k, _)| *k == key).count();
                prop_assert_eq!(bulkheads.in_flight(&key), out, "key {}", key);
            }
        }
    }
}
