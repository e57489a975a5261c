//! Circuit breaker overhead: Tidewall vs recloser vs failsafe, each with its library-default
//! policy unless stated.
//!
//! * `breaker_closed`: one admitted call recorded as a success on a closed breaker (Tidewall:
//!   `try_acquire().unwrap().success()`, count window of 100; recloser: ring buffer of 100;
//!   failsafe: success rate over a time window OR consecutive failures, which reads the clock
//!   on every success), plus a bare `black_box` baseline.
//! * `breaker_open`: the rejection cost of an open breaker (tripped once before measuring,
//!   break duration 1 hour, so it stays open for the whole run).
//! * `breaker_closed_2_threads`: the closed path while 2 threads hammer one shared breaker;
//!   each thread makes half the iterations, so the reported time per iteration is wall time
//!   divided by total calls (half the single-thread time would be perfect scaling).
//!
//! Run: `cargo bench -p tidewall-benches --bench breaker`.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main};
use failsafe::CircuitBreaker as _;
use tidewall::breaker::{CircuitBreaker, State};

const HOUR: Duration = Duration::from_secs(3600);

fn tidewall_open() -> CircuitBreaker {
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(1)
        .break_duration(HOUR)
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Open);
    breaker
}

fn recloser_open() -> recloser::Recloser {
    let r = recloser::Recloser::custom()
        .closed_len(1)
        .open_wait(HOUR)
        .build();
    // The first call fills the 1-slot ring buffer, the second computes a 100 % error rate.
    for _ in 0..2 {
        let _ = r.call(|| Err::<(), ()>(()));
    }
    assert!(matches!(
        r.call(|| Ok::<(), ()>(())),
        Err(recloser::Error::Rejected)
    ));
    r
}

fn failsafe_open() -> impl failsafe::CircuitBreaker {
    let policy =
        failsafe::failure_policy::consecutive_failures(1, failsafe::backoff::constant(HOUR));
    let cb = failsafe::Config::new().failure_policy(policy).build();
    let _ = cb.call(|| Err::<(), ()>(()));
    assert!(matches!(
        cb.call(|| Ok::<(), ()>(())),
        Err(failsafe::Error::Rejected)
    ));
    cb
}

fn breaker_closed(c: &mut criterion::Criterion) {
    let mut group = c.benchmark_group("breaker_closed");
    group.bench_function("baseline_black_box", |b| {
        b.iter(|| black_box(Ok::<u64, ()>(1)))
    });
    let tidewall = CircuitBreaker::builder().build().unwrap();
    group.bench_function("tidewall", |b| {
        b.iter(|| tidewall.try_acquire().unwrap().success())
    });
    let recloser = recloser::Recloser::default();
    group.bench_function("recloser", |b| {
        b.iter(|| recloser.call(|| Ok::<_, ()>(black_box(1u64))))
    });
    let failsafe = failsafe::Config::new().build();
    group.bench_function("failsafe", |b| {
        b.iter(|| failsafe.call(|| Ok::<_, ()>(black_box(1u64))))
    });
    group.finish();
    // Every variant must still be closed, or the numbers measured the wrong path.
    assert_eq!(tidewall.state(), State::Closed);
    assert!(recloser.call(|| Ok::<_, ()>(())).is_ok());
    assert!(failsafe.call(|| Ok::<_, ()>(())).is_ok());
}

fn breaker_open(c: &mut criterion::Criterion) {
    let mut group = c.benchmark_group("breaker_open");
    let tidewall = tidewall_open();
    group.bench_function("tidewall", |b| b.iter(|| tidewall.try_acquire().is_err()));
    let recloser = recloser_open();
    group.bench_function("recloser", |b| {
        b.iter(|| recloser.call(|| Ok::<_, ()>(black_box(1u64))).is_err())
    });
    let failsafe = failsafe_open();
    group.bench_function("failsafe", |b| {
        b.iter(|| failsafe.call(|| Ok::<_, ()>(black_box(1u64))).is_err())
    });
    group.finish();
}

/// Runs `call` `iters` times split over 2 threads released together; returns the wall time
/// from the release until both finish (thread start-up is not timed).
fn two_threads(iters: u64, call: &(impl Fn() + Sync)) -> Duration {
    let barrier = Barrier::new(3);
    std::thread::scope(|s| {
        let workers: Vec<_> = [iters / 2, iters - iters / 2]
            .into_iter()
            .map(|n| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    for _ in 0..n {
                        call();
                    }
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        for worker in workers {
            worker.join().unwrap();
        }
        start.elapsed()
    })
}

fn breaker_closed_2_threads(c: &mut criterion::Criterion) {
    let mut group = c.benchmark_group("breaker_closed_2_threads");
    let tidewall = CircuitBreaker::builder().build().unwrap();
    group.bench_function("tidewall", |b| {
        b.iter_custom(|iters| two_threads(iters, &|| tidewall.try_acquire().unwrap().success()));
    });
    let recloser = recloser::Recloser::default();
    group.bench_function("recloser", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, &|| {
                black_box(recloser.call(|| Ok::<_, ()>(black_box(1u64))).is_ok());
            })
        });
    });
    // failsafe's default `StateMachine` is `Sync` (a parking_lot Mutex in an Arc), so both
    // threads share one breaker, as they share Tidewall's.
    let failsafe = failsafe::Config::new().build();
    group.bench_function("failsafe", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, &|| {
                black_box(failsafe.call(|| Ok::<_, ()>(black_box(1u64))).is_ok());
            })
        });
    });
    group.finish();
    assert_eq!(tidewall.state(), State::Closed);
}

// criterion_group! generates an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group! {
        name = benches;
        config = tidewall_benches::criterion();
        targets = breaker_closed, breaker_open, breaker_closed_2_threads
    }
}
criterion_main!(group::benches);
