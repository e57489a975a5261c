//! Retry budget: exact under concurrency, sliding, and wired into the retry driver.

use std::sync::Barrier;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tidewall::Backoff;
use tidewall::budget::{RetryBudget, RetryBudgetPolicy};
use tidewall::retry::{Retry, RetryError};
use tidewall::rt::{Clock, Tokio};
use tidewall::testing::{Clocked, Scripted};

#[test]
fn racing_withdrawals_never_overdraw_over_200_rounds() {
    let policy = RetryBudgetPolicy::builder()
        .ratio(0.1)
        .min_per_second(0)
        .build()
        .unwrap();
    for _ in 0..200 {
        let now = Instant::now();
        let budget = RetryBudget::new(policy, now);
        for _ in 0..100 {
            budget.deposit(now);
        }
        let granted = AtomicUsize::new(0);
        let barrier = Barrier::new(8);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    barrier.wait();
                    for _ in 0..5 {
                        if budget.try_withdraw(now) {
                            granted.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        assert_eq!(granted.load(Ordering::SeqCst), 10);
    }
}

#[test]
fn deposits_expire_with_the_window() {
    let policy = RetryBudgetPolicy::builder()
        .ratio(0.5)
        .min_per_second(0)
        .window(Duration::from_secs(10))
        .build()
        .unwrap();
    let t0 = Instant::now();
    let budget = RetryBudget::new(policy, t0);
    for _ in 0..10 {
        budget.deposit(t0);
    }
    assert!(budget.try_withdraw(t0 + Duration::from_secs(9)));
    // Ten seconds later the deposits of the first bucket have slid out.
    assert!(!budget.try_withdraw(t0 + Duration::from_secs(10)));
}

#[test]
fn the_retry_driver_stops_when_the_budget_is_spent() {
    let rt = Clocked::new(Tokio);
    let policy = RetryBudgetPolicy::builder()
        .ratio(0.0)
        .min_per_second(1)
        .window(Duration::from_secs(2))
        .build()
        .unwrap();
    let budget = RetryBudget::new(policy, rt.now());
    let backoff = Backoff::constant(Duration::from_millis(1))
        .max_attempts(10)
        .build()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let op = Scripted::new(rt.clone(), (0..20).map(|_| Err::<(), _>("down")));
    let result = runtime.block_on(rt.drive(async {
        Retry::new(backoff, || op.call())
            .runtime(rt.clone())
            .budget(budget.clone())
            .await
    }));
    assert_eq!(result, Err(RetryError::Inner("down")));
    assert_eq!(
        op.calls(),
        3,
        "the first attempt plus the floor of 1/s over 2 s"
    );
}
