//! Per-call cost through tower middleware: Tidewall's layers against plain tower and
//! tower-resilience 0.13 doing the same job, in the same groups, on a current-thread tokio
//! runtime with a trivial inner service (a ready future), nothing contended. Each iteration is
//! one `ready().await` and one `call(..).await`. Every row of a group wraps the same inner
//! service: `TYPED_ECHO` (errors typed `tidewall::Error<Infallible>`, which Tidewall's refusing
//! layers need and the others take as any error), or `ECHO` in the retry group.
//!
//! * `tower_concurrency_wait`: a limit of 64 that waits in `poll_ready` when full (never full
//!   here): `tower::limit::ConcurrencyLimit`, Tidewall `AdmitLayer` over a `Bulkhead` in
//!   `AdmitMode::WaitReady`, tower-resilience's bulkhead in backpressure mode.
//! * `tower_concurrency_shed`: a limit of 64 that rejects when full: tower `LoadShed` over
//!   `ConcurrencyLimit`, Tidewall `AdmitMode::Reject`, tower-resilience `reject_when_full`.
//! * `tower_timeout`: a 1 s timeout: `tower::timeout::Timeout`, Tidewall `TimeoutLayer` (which
//!   also bounds the wait in `poll_ready`), tower-resilience `TimeLimiter`.
//! * `tower_breaker`: a closed breaker recording successes: Tidewall `BreakerLayer`,
//!   tower-resilience `CircuitBreaker` (tower has none).
//! * `tower_retry`: up to 3 attempts, the first succeeds: Tidewall `RetryLayer` (exponential
//!   backoff from 10 ms, its engine deciding), `tower::retry::Retry` with a policy allowing 2
//!   retries (no backoff: tower leaves that to the policy), tower-resilience `RetryLayer`
//!   (exponential backoff from 10 ms). Each clones the request once for the first attempt.
//! * `tower_stack`: timeout → breaker → waiting bulkhead; tower has no breaker, so its row is
//!   timeout → `ConcurrencyLimit` (less work: say so wherever it is quoted).
//!
//! Run: `cargo bench -p tidewall-benches --bench tower`.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::time::Duration;

use criterion::{criterion_group, criterion_main};
use tidewall::Backoff;
use tidewall::breaker::CircuitBreaker;
use tidewall::bulkhead::Bulkhead;
use tidewall::tower::{AdmitLayer, AdmitMode, BreakerLayer, RetryLayer, TimeoutLayer};
use tidewall_benches::tower_echo::{ECHO, TYPED_ECHO, current_thread, per_call};
use tower::{Layer, ServiceBuilder};
use tower_resilience::bulkhead::BulkheadLayer as TrBulkheadLayer;
use tower_resilience::circuitbreaker::CircuitBreakerLayer as TrBreakerLayer;
use tower_resilience::retry::RetryLayer as TrRetryLayer;
use tower_resilience::timelimiter::TimeLimiterLayer as TrTimeLimiterLayer;

const SLOTS: usize = 64;
const TIMEOUT: Duration = Duration::from_secs(1);

fn bulkhead() -> Bulkhead {
    Bulkhead::builder(SLOTS).build().unwrap()
}

fn tr_bulkhead(backpressure: bool) -> TrBulkheadLayer {
    let builder = TrBulkheadLayer::builder().max_concurrent_calls(SLOTS);
    let builder = if backpressure {
        builder.backpressure()
    } else {
        builder.reject_when_full()
    };
    builder.build().unwrap()
}

fn tr_breaker() -> TrBreakerLayer {
    TrBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .build()
        .unwrap()
}

fn concurrency(c: &mut criterion::Criterion) {
    let rt = current_thread();
    let mut group = c.benchmark_group("tower_concurrency_wait");
    let tower = tower::limit::ConcurrencyLimitLayer::new(SLOTS).layer(TYPED_ECHO);
    per_call(&mut group, "tower", &rt, tower);
    let tidewall = AdmitLayer::new(bulkhead(), AdmitMode::WaitReady).layer(TYPED_ECHO);
    per_call(&mut group, "tidewall", &rt, tidewall);
    per_call(
        &mut group,
        "tower_resilience",
        &rt,
        tr_bulkhead(true).layer(TYPED_ECHO),
    );
    group.finish();

    let mut group = c.benchmark_group("tower_concurrency_shed");
    let tower = ServiceBuilder::new()
        .load_shed()
        .concurrency_limit(SLOTS)
        .service(TYPED_ECHO);
    per_call(&mut group, "tower", &rt, tower);
    let tidewall = AdmitLayer::new(bulkhead(), AdmitMode::Reject).layer(TYPED_ECHO);
    per_call(&mut group, "tidewall", &rt, tidewall);
    per_call(
        &mut group,
        "tower_resilience",
        &rt,
        tr_bulkhead(false).layer(TYPED_ECHO),
    );
    group.finish();
}

fn timeout(c: &mut criterion::Criterion) {
    let rt = current_thread();
    let mut group = c.benchmark_group("tower_timeout");
    let tower = tower::timeout::TimeoutLayer::new(TIMEOUT).layer(TYPED_ECHO);
    per_call(&mut group, "tower", &rt, tower);
    per_call(
        &mut group,
        "tidewall",
        &rt,
        TimeoutLayer::new(TIMEOUT).layer(TYPED_ECHO),
    );
    let tr = TrTimeLimiterLayer::builder()
        .timeout_duration(TIMEOUT)
        .cancel_running_future(true)
        .build();
    per_call(&mut group, "tower_resilience", &rt, tr.layer(TYPED_ECHO));
    group.finish();
}

fn breaker(c: &mut criterion::Criterion) {
    let rt = current_thread();
    let mut group = c.benchmark_group("tower_breaker");
    let breaker = CircuitBreaker::builder().build().unwrap();
    per_call(
        &mut group,
        "tidewall",
        &rt,
        BreakerLayer::new(breaker).layer(TYPED_ECHO),
    );
    per_call(
        &mut group,
        "tower_resilience",
        &rt,
        tr_breaker().layer(TYPED_ECHO),
    );
    group.finish();
}

/// tower's retry policy: retry an error up to `left` more times, at once.
#[derive(Clone)]
struct Attempts {
    left: u32,
}

impl<E> tower::retry::Policy<u32, u32, E> for Attempts {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut u32, result: &mut Result<u32, E>) -> Option<Self::Future> {
        match result {
            Err(_) if self.left > 0 => {
                self.left -= 1;
                Some(ready(()))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, req: &u32) -> Option<u32> {
        Some(*req)
    }
}

fn retry(c: &mut criterion::Criterion) {
    let rt = current_thread();
    let mut group = c.benchmark_group("tower_retry");
    let tower = tower::retry::RetryLayer::new(Attempts { left: 2 }).layer(ECHO);
    per_call(&mut group, "tower", &rt, tower);
    let backoff = Backoff::exponential(Duration::from_millis(10))
        .max_attempts(3)
        .build()
        .unwrap();
    per_call(
        &mut group,
        "tidewall",
        &rt,
        RetryLayer::new(backoff).layer(ECHO),
    );
    let tr = TrRetryLayer::<u32, u32, Infallible>::builder()
        .max_attempts(3)
        .exponential_backoff(Duration::from_millis(10))
        .build();
    per_call(&mut group, "tower_resilience", &rt, tr.layer(ECHO));
    group.finish();
}

fn stack(c: &mut criterion::Criterion) {
    let rt = current_thread();
    let mut group = c.benchmark_group("tower_stack");
    let tower = ServiceBuilder::new()
        .timeout(TIMEOUT)
        .concurrency_limit(SLOTS)
        .service(TYPED_ECHO);
    per_call(&mut group, "tower_without_breaker", &rt, tower);
    let tidewall = ServiceBuilder::new()
        .layer(TimeoutLayer::new(TIMEOUT))
        .layer(BreakerLayer::new(
            CircuitBreaker::builder().build().unwrap(),
        ))
        .layer(AdmitLayer::new(bulkhead(), AdmitMode::WaitReady))
        .service(TYPED_ECHO);
    per_call(&mut group, "tidewall", &rt, tidewall);
    let tr = ServiceBuilder::new()
        .layer(
            TrTimeLimiterLayer::builder()
                .timeout_duration(TIMEOUT)
                .cancel_running_future(true)
                .build(),
        )
        .layer(tr_breaker())
        .layer(tr_bulkhead(true))
        .service(TYPED_ECHO);
    per_call(&mut group, "tower_resilience", &rt, tr);
    group.finish();
}

// criterion_group! generates an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group! {
        name = benches;
        config = tidewall_benches::criterion();
        targets = concurrency, timeout, breaker, retry, stack
    }
}
criterion_main!(group::benches);
