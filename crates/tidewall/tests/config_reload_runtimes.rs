//! A reload in the middle of a pipeline's traffic, the same scenario on every runtime adapter
//! in virtual time: a registry's bulkhead raised and its breaker retuned while calls hold
//! permits and queue. Nothing is lost, the held permits stay held, the new capacity is used.
#![cfg(all(
    feature = "toml",
    feature = "test-util",
    feature = "smol",
    feature = "async-std"
))]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use common::ms;
use futures_util::future::join_all;
use tidewall::breaker::State;
use tidewall::config::{Config, Registry};
use tidewall::pipeline::Pipeline;
use tidewall::rt::{Clock, Runtime};
use tidewall::testing::Clocked;

fn config(max_concurrent: usize, consecutive_failures: u32) -> Config {
    Config::from_toml(&format!(
        "[instances.api.bulkhead]\n\
         max_concurrent = {max_concurrent}\n\
         max_queue = 100\n\
         max_wait = \"1m\"\n\
         [instances.api.breaker]\n\
         consecutive_failures = {consecutive_failures}\n\
         window_calls = 20\n"
    ))
    .expect("a valid configuration")
}

/// The most calls running at once, before and after the reload.
#[derive(Default)]
struct Running {
    now: AtomicUsize,
    most_before: AtomicUsize,
    most_after: AtomicUsize,
    reloaded: std::sync::atomic::AtomicBool,
}

impl Running {
    fn enter(&self) {
        let now = self.now.fetch_add(1, SeqCst) + 1;
        let most = if self.reloaded.load(SeqCst) {
            &self.most_after
        } else {
            &self.most_before
        };
        most.fetch_max(now, SeqCst);
    }

    fn leave(&self) {
        self.now.fetch_sub(1, SeqCst);
    }
}

async fn reload_mid_traffic<R: Runtime + Clock>(rt: Clocked<R>) {
    let registry = Registry::builder(config(2, 3))
        .runtime(rt.clone())
        .build()
        .unwrap();
    let bulkhead = registry.bulkhead("api").unwrap();
    let breaker = registry.breaker("api").unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .name("api")
        .bulkhead(bulkhead.clone())
        .breaker(breaker.clone())
        .build()
        .unwrap();
    // Two failures first: under the new threshold of 5 the run of failures must be kept.
    for _ in 0..2 {
        let failed: Result<(), _> = pipeline.call(|| async { Err("down") }).await;
        assert!(failed.is_err());
    }
    let running = Running::default();
    let calls = join_all((0..12).map(|_| {
        let (pipeline, running, rt) = (&pipeline, &running, &rt);
        pipeline.call(move || async move {
            running.enter();
            rt.sleep(ms(100)).await;
            running.leave();
            Ok::<_, &str>(())
        })
    }));
    let reload = async {
        // Two calls done, two running, eight queued.
        rt.sleep(ms(150)).await;
        let held = bulkhead.in_flight();
        running.reloaded.store(true, SeqCst);
        let reload = registry.reload(config(6, 5)).unwrap();
        (held, reload)
    };
    let (results, (held, reload)) = futures_util::join!(calls, reload);
    assert!(
        results.iter().all(Result::is_ok),
        "every call answered: {results:?}"
    );
    assert_eq!(held, 2, "two permits held at the reload");
    assert_eq!((reload.retuned, reload.reset.len()), (2, 0));
    assert_eq!(running.most_before.load(SeqCst), 2);
    let after = running.most_after.load(SeqCst);
    assert!(
        after > 2 && after <= 6,
        "the new capacity is used, and bounds: {after}"
    );
    assert_eq!((bulkhead.capacity(), bulkhead.in_flight()), (6, 0));
    // The window kept its shape, so the breaker kept its state and its count of calls; the
    // successes since then ended the run of failures.
    assert_eq!(breaker.state(), State::Closed);
    let counts = breaker.counts();
    assert_eq!((counts.calls, counts.failures), (14, 2));
}

#[test]
fn a_reload_mid_traffic_loses_nothing_on_every_runtime() {
    on_every_runtime!(reload_mid_traffic);
}
