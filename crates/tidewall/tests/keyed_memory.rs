//! Memory per key of the keyed policies, counted by a byte-counting allocator (not timed):
//! every byte a key costs, its table slot and its own state together.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use tidewall::breaker::{CircuitBreaker, Window};
use tidewall::bulkhead::Bulkhead;
use tidewall::rate::KeyedRateLimiter;

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator unchanged; only counts bytes on this thread.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LIVE.try_with(|n| n.set(n.get() + layout.size() as isize));
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = LIVE.try_with(|n| n.set(n.get() - layout.size() as isize));
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const KEYS: u64 = 20_000;

/// Bytes per key that `fill` leaves allocated, with `KEYS` keys.
fn bytes_per_key<T>(build: impl FnOnce() -> T, fill: impl Fn(&T, u64)) -> f64 {
    let before = LIVE.with(Cell::get);
    let policy = build();
    for key in 0..KEYS {
        fill(&policy, key);
    }
    let used = LIVE.with(Cell::get) - before;
    drop(policy);
    used as f64 / KEYS as f64
}

#[test]
#[expect(
    clippy::print_stderr,
    reason = "prints the figures docs/BENCHMARKS.md quotes"
)]
fn keyed_breakers_and_bulkheads_cost_a_bounded_number_of_bytes_per_key() {
    let limiter = bytes_per_key(
        || {
            KeyedRateLimiter::builder(1, Duration::from_secs(3600))
                .build::<u64>()
                .unwrap()
        },
        |limiter, key| limiter.check_key(&key).unwrap(),
    );
    let bulkhead = bytes_per_key(
        || {
            Bulkhead::builder(8)
                .keyed()
                .max_keys(100_000)
                .build::<u64>()
                .unwrap()
        },
        |bulkheads, key| {
            let permit = bulkheads.try_acquire(&key).unwrap();
            // Held until the fill ends would block eviction; the table keeps idle keys
            // until it is full, so dropping it keeps the key.
            drop(permit);
        },
    );
    let breaker = |builder: tidewall::breaker::CircuitBreakerBuilder| {
        bytes_per_key(
            move || builder.keyed().max_keys(100_000).build().unwrap(),
            |breakers, key: u64| breakers.try_acquire(&key).unwrap().success(),
        )
    };
    let consecutive = breaker(
        CircuitBreaker::builder()
            .no_failure_rate()
            .consecutive_failures(5),
    );
    let count_20 = breaker(
        CircuitBreaker::builder()
            .window(Window::Count { calls: 20 })
            .minimum_calls(20),
    );
    let time_10 = breaker(CircuitBreaker::builder().window(Window::Time {
        span: Duration::from_secs(10),
        buckets: 10,
    }));
    eprintln!(
        "bytes per key with {KEYS} u64 keys: limiter {limiter:.0}, bulkhead {bulkhead:.0}, \
         breaker (consecutive) {consecutive:.0}, (count 20) {count_20:.0}, (time 10 buckets) {time_10:.0}"
    );
    // Measured (docs/BENCHMARKS.md), with a little room for allocator-layout changes: a key
    // of a keyed breaker or bulkhead is a whole breaker or bulkhead (its policy copy, state
    // and a handle on the table's shared telemetry), 8-23 times a limiter key, which is one
    // `u64`.
    assert!(limiter <= 32.0, "limiter {limiter}");
    assert!(bulkhead <= 240.0, "bulkhead {bulkhead}");
    assert!(
        consecutive <= 720.0,
        "breaker, default 100-call window: {consecutive}"
    );
    assert!(count_20 <= 600.0, "breaker, 20-call window: {count_20}");
    assert!(time_10 <= 660.0, "breaker, 10 buckets: {time_10}");
}
