//! A call that chaos gives nothing allocates nothing, through every front, whether the handle
//! is off or draws a number and finds no fault (counted, not timed). A process-wide allocator
//! counting per thread: in its own binary, so no other test's allocator is replaced.
#![cfg(all(feature = "chaos", feature = "tower", feature = "tokio"))]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use futures_util::FutureExt as _;
use tidewall::chaos::{Chaos, ChaosLayer, InjectedFault};
use tidewall::pipeline::Pipeline;
use tower_layer::Layer as _;
use tower_service::Service as _;

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

/// A service that answers at once, with an error type that takes injected faults.
#[derive(Clone, Copy)]
struct Echo;

impl tower_service::Service<u32> for Echo {
    type Response = u32;
    type Error = InjectedFault;
    type Future = std::future::Ready<Result<u32, InjectedFault>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), InjectedFault>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, x: u32) -> Self::Future {
        std::future::ready(Ok(x))
    }
}

/// 1,000 calls through each front: the call alone, a pipeline's operation, a tower service.
fn calls_allocate_nothing(chaos: &Chaos) -> usize {
    let pipeline = Pipeline::builder().build().unwrap();
    let mut service = ChaosLayer::new(chaos.clone()).layer(Echo);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _enter = runtime.enter();
    allocations_during(|| {
        for i in 0..1_000u32 {
            let op = || async move { Ok::<_, InjectedFault>(i) };
            assert_eq!(chaos.call(op).now_or_never(), Some(Ok(i)));
            assert_eq!(pipeline.call(chaos.wrap(op)).now_or_never(), Some(Ok(i)));
            assert_eq!(service.call(i).now_or_never(), Some(Ok(i)));
        }
    })
}

#[test]
fn a_disabled_handle_allocates_nothing() {
    let chaos = Chaos::builder()
        .error(1.0)
        .latency(1.0, std::time::Duration::from_secs(1))
        .enabled(false)
        .build()
        .unwrap();
    assert_eq!(calls_allocate_nothing(&chaos), 0);
    assert_eq!(chaos.decided(), 0);
}

#[test]
fn an_armed_handle_that_draws_no_fault_allocates_nothing() {
    // One part per million: the seed's first 3,000 calls draw no fault (checked first).
    let chaos = Chaos::builder().seed(7).error(0.000_001).build().unwrap();
    assert!((0..3_000).all(|n| chaos.decide_nth(n).is_none()));
    assert_eq!(calls_allocate_nothing(&chaos), 0);
    assert_eq!(chaos.decided(), 3_000);
}

#[test]
fn a_fault_allocates_its_state_once() {
    let chaos = Chaos::builder().error(1.0).build().unwrap();
    let n = allocations_during(|| {
        let failed = chaos
            .call(|| async { Ok::<(), InjectedFault>(()) })
            .now_or_never();
        assert_eq!(failed, Some(Err(InjectedFault::Error)));
    });
    assert_eq!(n, 1, "the fault's state, nothing else");
}
