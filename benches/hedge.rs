//! Per-call cost of hedging when the primary attempt answers at once (the common case: the
//! hedge machinery is set up and torn down, no hedge is sent), on a current-thread tokio
//! runtime with a trivial inner service (a ready future).
//!
//! * `hedge_call`: Tidewall's `Hedge::call` on a closure, with a fixed 100 ms delay and with a
//!   p90 delay (after 10 samples; each success is recorded in the latency estimate).
//! * `tower_hedge`: one `ready().await` and one `call(..).await` per iteration through
//!   `tower::hedge::Hedge` (p90 of a rotating histogram, after 10 samples, 10 s period, made
//!   once per batch with 10 samples in it; clones the request, records each latency, builds
//!   the hedge's timer) and Tidewall's `HedgeLayer`
//!   with a p90 delay (clones the request for the attempt, records each latency, builds the
//!   hedge's timer): the same work.
//!
//! Run: `cargo bench -p tidewall-benches --bench hedge`.

use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, criterion_group, criterion_main, measurement::WallTime};
use tidewall::hedge::{Hedge, Idempotent};
use tidewall::tower::HedgeLayer;
use tidewall_benches::tower_echo::{ECHO, current_thread, per_call, per_call_made};
use tower::Layer;

const DELAY: Duration = Duration::from_millis(100);

fn hedge(percentile: bool) -> Hedge {
    let builder = Hedge::builder().delay(DELAY).max_hedges(1);
    let builder = if percentile {
        builder.percentile(0.9, 10)
    } else {
        builder
    };
    builder.build().unwrap()
}

/// Times `Hedge::call` on an operation that answers at once.
fn call(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    rt: &tokio::runtime::Runtime,
    hedge: &Hedge,
) {
    group.bench_function(name, |b| {
        b.to_async(rt).iter_custom(|iters| async move {
            let start = Instant::now();
            for _ in 0..iters {
                let out = hedge
                    .call(Idempotent(|| {
                        std::future::ready(Ok::<_, ()>(std::hint::black_box(7)))
                    }))
                    .await
                    .unwrap();
                std::hint::black_box(out);
            }
            start.elapsed()
        })
    });
}

#[derive(Clone)]
struct AlwaysHedge;

impl tower::hedge::Policy<u32> for AlwaysHedge {
    fn clone_request(&self, req: &u32) -> Option<u32> {
        Some(*req)
    }

    fn can_retry(&self, _: &u32) -> bool {
        true
    }
}

fn hedging(c: &mut criterion::Criterion) {
    let rt = current_thread();
    let mut group = c.benchmark_group("hedge_call");
    call(&mut group, "tidewall_fixed", &rt, &hedge(false));
    call(&mut group, "tidewall_p90", &rt, &hedge(true));
    group.finish();

    let mut group = c.benchmark_group("tower_hedge");
    // Not `Clone`: one per batch, its histogram given 10 samples of 0 ms to start warm, as
    // Tidewall's estimate is from the warm-up on (its clones share it).
    let tower = || {
        let period = Duration::from_secs(10);
        tower::hedge::Hedge::new_with_mock_latencies::<u32>(
            ECHO,
            AlwaysHedge,
            10,
            0.9,
            period,
            &[0; 10],
        )
    };
    per_call_made(&mut group, "tower", &rt, tower);
    per_call(
        &mut group,
        "tidewall",
        &rt,
        HedgeLayer::new(hedge(true)).layer(ECHO),
    );
    group.finish();
}

// criterion_group! generates an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group! {
        name = benches;
        config = tidewall_benches::criterion();
        targets = hedging
    }
}
criterion_main!(group::benches);
