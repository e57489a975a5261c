//! Constant memory, counted: aggregating a log of any size holds the same peak heap, and
//! line streaming allocates nothing per line. The work runs on the test's thread and only that
//! thread is counted (see common/stream_memory.rs).

#[path = "common/stream_memory.rs"]
mod stream_memory;

use stream_memory::{GeneratedLog, aggregate, measure_this_thread};

#[test]
fn peak_heap_does_not_grow_with_the_input_and_no_line_allocates() {
    let run =
        |len| futures_util::FutureExt::now_or_never(aggregate(GeneratedLog::new(len))).unwrap();
    let (small, small_peak, small_allocs) = measure_this_thread(|| run(16 << 20));
    let (large, large_peak, large_allocs) = measure_this_thread(|| run(128 << 20));
    assert!(
        large.iter().sum::<u64>() > 7 * small.iter().sum::<u64>(),
        "{small:?} {large:?}"
    );
    // One 1 MiB buffer plus the generator's line buffer, whatever the size.
    assert!(large_peak <= (1 << 20) + 4096, "{large_peak}");
    assert_eq!(
        small_peak, large_peak,
        "peak heap is independent of the input size"
    );
    assert_eq!(
        small_allocs, large_allocs,
        "a constant number of allocations, none per line"
    );
}
