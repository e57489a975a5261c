//! The retry budget against tower's `TpsBudget`, doing the same work: one call's deposit, and
//! a retry's withdrawal, on budgets of the same policy (20 % of the calls of a 10 s window,
//! plus 10 retries a second; each crate's default).
//!
//! * `budget_deposit`: what every call pays. Tower's `deposit()` reads the clock itself
//!   (`Instant::now()` under a mutex that expires old slots); Tidewall's `deposit(now)` takes
//!   the time from its caller, so the `tidewall` row reads `Instant::now()` in the loop too,
//!   and `tidewall_time_given` shows the deposit alone (what a pipeline that already read
//!   the clock pays).
//! * `budget_withdraw`: a retry, on budgets of one retry per call (ratio 1.0) that a deposit
//!   per iteration refills on both sides, so the balance never runs out and each row is a
//!   deposit plus a granted withdrawal (both rows check that it was granted).
//!
//! Run: `cargo bench -p tidewall-benches --bench budget`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tidewall::budget::{RetryBudget, RetryBudgetPolicy};
use tower::retry::budget::{Budget as _, TpsBudget};

const WINDOW: Duration = Duration::from_secs(10);

fn tidewall_budget(ratio: f64) -> RetryBudget {
    let policy = RetryBudgetPolicy::builder()
        .ratio(ratio)
        .min_per_second(10)
        .window(WINDOW)
        .build()
        .expect("a valid budget");
    RetryBudget::new(policy, Instant::now())
}

fn tower_budget(ratio: f32) -> TpsBudget {
    TpsBudget::new(WINDOW, 10, ratio)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("budget_deposit");
    let budget = tidewall_budget(0.2);
    group.bench_function("tidewall", |b| {
        b.iter(|| budget.deposit(black_box(Instant::now())))
    });
    let now = Instant::now();
    group.bench_function("tidewall_time_given", |b| {
        b.iter(|| budget.deposit(black_box(now)))
    });
    let tower = tower_budget(0.2);
    group.bench_function("tower_tps_budget", |b| b.iter(|| tower.deposit()));
    group.finish();

    let mut group = c.benchmark_group("budget_withdraw");
    let budget = tidewall_budget(1.0);
    group.bench_function("tidewall", |b| {
        b.iter(|| {
            let now = Instant::now();
            budget.deposit(now);
            assert!(budget.try_withdraw(now), "granted");
        });
    });
    let tower = tower_budget(1.0);
    group.bench_function("tower_tps_budget", |b| {
        b.iter(|| {
            tower.deposit();
            assert!(tower.withdraw(), "granted");
        });
    });
    group.finish();
}

// criterion_group! generates an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group! { name = benches; config = tidewall_benches::criterion(); targets = bench }
}
criterion_main!(group::benches);
