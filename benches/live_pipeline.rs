//! What a pipeline from a registry costs a call, against the same stages built by hand: the
//! same registry's rate limiter, bulkhead, retry with its budget and breaker, under the same
//! deadline, around a ready operation (every stage admits at once).
//!
//! * `static_pipeline`: `Pipeline<Tokio, RateLimiter, Bulkhead, RetryStage, CircuitBreaker>`,
//!   built with the builder from `registry.rate_limiter("api")` and the others;
//! * `live_pipeline`: `registry.pipeline("api")`, which reads the pipeline in force (an
//!   `Arc` taken from an arc-swap) and runs its stages, each an `Option`.
//!
//! Both do the same work: the same policies, each call admitted, retried never, recorded
//! once. `cargo bench -p tidewall-benches --bench live_pipeline`.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tidewall::config::{Config, Registry};
use tidewall::pipeline::Pipeline;
use tokio::runtime::Runtime;

const CONFIG: &str = r#"
    [instances.api]
    deadline = "2s"
    [instances.api.rate_limit]
    count = 1000000000
    period = "1s"
    [instances.api.bulkhead]
    max_concurrent = 64
    [instances.api.retry]
    max_attempts = 4
    initial_delay = "10ms"
    [instances.api.budget]
    ratio = 0.2
    [instances.api.breaker]
    failure_rate = 0.5
"#;

async fn ready_op() -> Result<u64, std::io::Error> {
    Ok(std::hint::black_box(7))
}

fn live_pipeline(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let _entered = rt.enter();
    let registry = Registry::new(Config::from_toml(CONFIG).unwrap()).unwrap();
    let config = registry.config();
    let api = config.instance("api").unwrap();
    let by_hand = Pipeline::builder()
        .name("api")
        .deadline(api.deadline().unwrap())
        .rate_limit(registry.rate_limiter("api").unwrap())
        .bulkhead(registry.bulkhead("api").unwrap())
        .retry(api.backoff().unwrap())
        .retry_budget(registry.retry_budget("api").unwrap())
        .max_retry_after(api.max_retry_after())
        .breaker(registry.breaker("api").unwrap())
        .build()
        .unwrap();
    let live = registry.pipeline("api").unwrap();
    assert_eq!(api.deadline(), Some(Duration::from_secs(2)));

    let mut group = c.benchmark_group("live_pipeline_ready_op");
    group.bench_function("static_pipeline", |b| {
        b.to_async(&rt).iter(|| by_hand.call(ready_op));
    });
    group.bench_function("live_pipeline", |b| {
        b.to_async(&rt).iter(|| live.call(ready_op));
    });
    group.finish();
}

// criterion_group! generates an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::{criterion_group, live_pipeline};
    criterion_group! { name = benches; config = tidewall_benches::criterion(); targets = live_pipeline }
}
criterion_main!(group::benches);
