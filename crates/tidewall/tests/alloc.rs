//! Happy paths allocate nothing: retry, breaker, bulkhead, limiter, and the 5-policy pipeline (counted, not timed).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::IntoFuture;
use std::time::Duration;

use futures_util::FutureExt;
use tidewall::{Backoff, Deadline, FutureExt as _, RetryExt};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator unchanged; only counts calls on this thread.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn retry_success_path_allocates_nothing() {
    let backoff = Backoff::exponential(Duration::from_millis(100))
        .build()
        .unwrap();
    let n = allocations_during(|| {
        for i in 0..1000u64 {
            let out = (|| async move { Ok::<_, ()>(i) })
                .retry(backoff)
                .into_future()
                .now_or_never();
            assert_eq!(out, Some(Ok(i)));
        }
    });
    assert_eq!(n, 0);
}

#[test]
fn retry_with_deadline_and_timeout_allocates_nothing_on_tokio() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let backoff = Backoff::exponential(Duration::from_millis(100))
        .build()
        .unwrap();
    runtime.block_on(async {
        // Warm tokio's timer wheel and thread-locals outside the counted region.
        let _ = async { 1 }.timeout(Duration::from_secs(1)).await;
        let n = allocations_during(|| {
            for i in 0..100u64 {
                let deadline = Deadline::after(&tidewall::rt::Tokio, Duration::from_secs(5));
                let retry = (|| async move { Ok::<_, ()>(i) })
                    .retry(backoff)
                    .attempt_timeout(Duration::from_secs(1))
                    .deadline(deadline)
                    .into_future();
                assert_eq!(retry.now_or_never(), Some(Ok(i)));
            }
        });
        assert_eq!(n, 0);
    });
}

#[test]
fn policy_hot_paths_allocate_nothing() {
    use tidewall::breaker::CircuitBreaker;
    use tidewall::bulkhead::Bulkhead;
    use tidewall::rate::RateLimiter;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let breaker = CircuitBreaker::builder().build().unwrap();
    let open = CircuitBreaker::builder()
        .consecutive_failures(1)
        .build()
        .unwrap();
    open.try_acquire().unwrap().failure();
    let bulkhead = Bulkhead::builder(4).build().unwrap();
    let limiter = RateLimiter::builder(1_000_000, Duration::from_secs(1))
        .build()
        .unwrap();
    let n = allocations_during(|| {
        for _ in 0..1000 {
            breaker.try_acquire().unwrap().success();
            assert!(open.try_acquire().is_err());
            drop(bulkhead.try_acquire().unwrap());
            let _ = limiter.check();
        }
    });
    assert_eq!(n, 0);
}

#[test]
fn five_policy_pipeline_happy_path_allocates_nothing() {
    use tidewall::breaker::CircuitBreaker;
    use tidewall::bulkhead::Bulkhead;
    use tidewall::pipeline::Pipeline;
    use tidewall::rate::RateLimiter;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        let pipeline = Pipeline::builder()
            .deadline(Duration::from_secs(5))
            .rate_limit(
                RateLimiter::builder(1_000_000, Duration::from_secs(1))
                    .build()
                    .unwrap(),
            )
            .bulkhead(Bulkhead::builder(8).build().unwrap())
            .retry(
                Backoff::exponential(Duration::from_millis(10))
                    .build()
                    .unwrap(),
            )
            .breaker(CircuitBreaker::builder().build().unwrap())
            .attempt_timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        let _ = pipeline.call(|| async { Ok::<_, ()>(0) }).await;
        let n = allocations_during(|| {
            for i in 0..100u64 {
                let out = pipeline
                    .call(|| async move { Ok::<_, ()>(i) })
                    .now_or_never();
                assert_eq!(out, Some(Ok(i)));
            }
        });
        assert_eq!(n, 0);
    });
}
