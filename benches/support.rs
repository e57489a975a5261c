//! Shared helpers for Tidewall's criterion benches. Each bench file measures one pattern
//! against its peers in the same run; `docs/BENCHMARKS.md` records the ratios and commands.

use std::time::Duration;

use criterion::Criterion;

pub mod overload;

/// Criterion settings sized for a 2-vCPU VM: short warm-up, enough samples for a stable median.
pub fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .noise_threshold(0.03)
}

/// Times `iters` calls of `call` in one criterion row, awaited one after the other in one
/// task on `rt`: the whole loop is timed (`iter_custom`), so the harness's per-iteration cost
/// is not in a difference between two rows. Each output goes through `black_box` and is
/// dropped, unexamined: a row checks its value before, if it needs to.
pub fn awaited_in_a_loop<F, Fut>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    call: F,
) where
    F: Fn() -> Fut + Copy,
    Fut: std::future::Future,
{
    group.bench_function(name, |b| {
        b.to_async(rt).iter_custom(|iters| async move {
            let start = std::time::Instant::now();
            for _ in 0..iters {
                std::hint::black_box(call().await);
            }
            start.elapsed()
        })
    });
}

/// What the tower benches share: a trivial inner service and the per-call harness.
pub mod tower_echo {
    use std::convert::Infallible;
    use std::future::{Ready, ready};
    use std::marker::PhantomData;
    use std::task::{Context, Poll};
    use std::time::Instant;

    use criterion::{BenchmarkGroup, measurement::WallTime};
    use tokio::runtime::Runtime;
    use tower::{Service, ServiceExt as _};

    /// The inner service: answers at once. `E` is its error type, never produced.
    #[derive(Debug)]
    pub struct Echo<E>(PhantomData<fn() -> E>);

    impl<E> Clone for Echo<E> {
        fn clone(&self) -> Self {
            *self
        }
    }

    impl<E> Copy for Echo<E> {}

    /// `Echo` for tower, tower-resilience and Tidewall's `RetryLayer` and `HedgeLayer`, which
    /// take any error type.
    pub const ECHO: Echo<Infallible> = Echo(PhantomData);

    /// `Echo` whose (never produced) error is `tidewall::Error<Infallible>`: Tidewall's layers
    /// that can refuse or time out return their inner service's error type, which must be a
    /// `PolicyError`. A group that has such a layer wraps this one on every row, peers
    /// included, so each row wraps the same service.
    pub const TYPED_ECHO: Echo<tidewall::Error<Infallible>> = Echo(PhantomData);

    impl<E> Service<u32> for Echo<E> {
        type Response = u32;
        type Error = E;
        type Future = Ready<Result<u32, E>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), E>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, x: u32) -> Self::Future {
            ready(Ok(x))
        }
    }

    /// A current-thread tokio runtime with time enabled.
    ///
    /// # Panics
    ///
    /// If the runtime cannot be built.
    pub fn current_thread() -> Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Times `ready().await` + `call().await` on a clone of `service` made once per batch.
    ///
    /// # Panics
    ///
    /// If the service fails: a bench measures the success path only.
    pub fn per_call<S>(
        group: &mut BenchmarkGroup<'_, WallTime>,
        name: &str,
        rt: &Runtime,
        service: S,
    ) where
        S: Service<u32, Response = u32> + Clone,
        S::Error: std::fmt::Debug,
    {
        per_call_made(group, name, rt, || service.clone());
    }

    /// Times `ready().await` + `call().await` on a service `make` builds once per batch (for
    /// services that are not `Clone`).
    ///
    /// # Panics
    ///
    /// If the service fails: a bench measures the success path only.
    pub fn per_call_made<S>(
        group: &mut BenchmarkGroup<'_, WallTime>,
        name: &str,
        rt: &Runtime,
        make: impl Fn() -> S,
    ) where
        S: Service<u32, Response = u32>,
        S::Error: std::fmt::Debug,
    {
        group.bench_function(name, |b| {
            b.to_async(rt).iter_custom(|iters| {
                let mut service = make();
                async move {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let out = service
                            .ready()
                            .await
                            .unwrap()
                            .call(std::hint::black_box(7))
                            .await
                            .unwrap();
                        std::hint::black_box(out);
                    }
                    start.elapsed()
                }
            })
        });
    }
}
