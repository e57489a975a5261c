//! Keyed policies: the cost of one decision on a key already held, and on a new key, for the
//! keyed rate limiter, breaker and bulkhead, in the same run.
//!
//! * `keyed_hot`: one key, always present. Limiter: `check_key`. Breaker: `try_acquire` and
//!   `success()` (the permit recorded, as every call records it). Bulkhead: `try_acquire` and
//!   the permit dropped.
//! * `keyed_new`: a never-seen key every iteration, in a table of `MAX_KEYS` keys that is
//!   full, so every new key also pays its share of the sweep that evicts idle keys. Every key is
//!   idle at once (limiter: rested after 1 ns; breaker: `idle_ttl` zero; bulkhead: its permit
//!   dropped), so no new key is refused. Each table has seen `2 × MAX_KEYS` keys through the
//!   same code before timing, so none is timed while it first grows.
//!
//! The limiter's key is a `u64` in the table; a breaker's or a bulkhead's is a whole breaker or
//! bulkhead, allocated when the key is new (memory per key: `tests/keyed_memory.rs`).
//!
//! Run: `cargo bench -p tidewall-benches --bench keyed`.

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, criterion_group, criterion_main};
use tidewall::breaker::{CircuitBreaker, KeyedCircuitBreaker};
use tidewall::bulkhead::{Bulkhead, KeyedBulkhead};
use tidewall::rate::KeyedRateLimiter;

const MAX_KEYS: usize = 1 << 16;
const WARM_KEYS: u64 = 2 * MAX_KEYS as u64;

fn limiter() -> KeyedRateLimiter<u64> {
    KeyedRateLimiter::builder(1_000_000_000, Duration::from_secs(1))
        .burst(1_000_000_000)
        .max_keys(MAX_KEYS)
        .build()
        .expect("valid")
}

fn breakers() -> KeyedCircuitBreaker<u64> {
    CircuitBreaker::builder()
        .keyed()
        .max_keys(MAX_KEYS)
        .idle_ttl(Duration::ZERO)
        .build()
        .expect("valid")
}

fn bulkheads() -> KeyedBulkhead<u64> {
    Bulkhead::builder(64)
        .reject_when_full()
        .keyed()
        .max_keys(MAX_KEYS)
        .build()
        .expect("valid")
}

/// One decision on `key`, recorded or released as a caller would.
trait Decide {
    fn decide(&self, key: u64) -> bool;
    fn keys(&self) -> usize;
}

impl Decide for KeyedRateLimiter<u64> {
    fn decide(&self, key: u64) -> bool {
        self.check_key(&key).is_ok()
    }
    fn keys(&self) -> usize {
        self.len()
    }
}

impl Decide for KeyedCircuitBreaker<u64> {
    fn decide(&self, key: u64) -> bool {
        self.try_acquire(&key)
            .map(|permit| permit.success())
            .is_ok()
    }
    fn keys(&self) -> usize {
        self.len()
    }
}

impl Decide for KeyedBulkhead<u64> {
    fn decide(&self, key: u64) -> bool {
        self.try_acquire(&key).is_ok()
    }
    fn keys(&self) -> usize {
        self.len()
    }
}

fn bench_hot(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, policy: &impl Decide) {
    let hot = 42;
    assert!((0..10_000).all(|_| policy.decide(hot)), "{name}");
    group.bench_function(name, |b| b.iter(|| policy.decide(black_box(hot))));
}

fn bench_new(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, policy: &impl Decide) {
    assert!((1..=WARM_KEYS).all(|k| policy.decide(k)), "{name}");
    assert!(policy.keys() <= MAX_KEYS, "{name}: {} keys", policy.keys());
    let mut next = WARM_KEYS;
    group.bench_function(name, |b| {
        b.iter(|| {
            next += 1;
            policy.decide(black_box(next))
        });
    });
    assert!(policy.keys() <= MAX_KEYS, "{name}: {} keys", policy.keys());
}

fn keyed_hot(c: &mut criterion::Criterion) {
    let mut group = c.benchmark_group("keyed_hot");
    bench_hot(&mut group, "limiter", &limiter());
    bench_hot(&mut group, "breaker", &breakers());
    bench_hot(&mut group, "bulkhead", &bulkheads());
    group.finish();
}

fn keyed_new(c: &mut criterion::Criterion) {
    let mut group = c.benchmark_group("keyed_new");
    bench_new(&mut group, "limiter", &limiter());
    bench_new(&mut group, "breaker", &breakers());
    bench_new(&mut group, "bulkhead", &bulkheads());
    group.finish();
}

// criterion_group! generates an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group! {
        name = benches;
        config = tidewall_benches::criterion();
        targets = keyed_hot, keyed_new
    }
}
criterion_main!(group::benches);
