//! With the `metrics` feature, breaker transitions, rejections and supervisor restarts reach
//! the installed recorder; with `tracing`, they are events.

#![cfg(all(feature = "metrics", feature = "tracing"))]

mod common;

use common::tally::Counters;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tidewall::breaker::CircuitBreaker;
use tidewall::rt::Tokio;
use tidewall::testing::Clocked;

/// Counts tracing events.
struct Events(Arc<AtomicU64>);

impl tracing::Subscriber for Events {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn transitions_and_rejections_reach_metrics_and_tracing() {
    let counters = Counters::installed();
    let events = Arc::new(AtomicU64::new(0));
    let _subscriber = tracing::subscriber::set_default(Events(events.clone()));

    let rt = Clocked::new(Tokio);
    let breaker = CircuitBreaker::builder()
        .name("payments")
        .runtime(rt.clone())
        .consecutive_failures(1)
        .break_duration(Duration::from_secs(1))
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().failure(); // closed → open
    for _ in 0..3 {
        assert!(breaker.try_acquire().is_err());
    }
    rt.clock().advance(Duration::from_secs(1));
    breaker.try_acquire().unwrap().success(); // open → half-open → closed

    assert_eq!(counters.total("tidewall_breaker_transitions_total", &[]), 3);
    assert_eq!(
        counters.total(
            "tidewall_rejections_total",
            &["policy=breaker", "name=payments"]
        ),
        3
    );
    assert_eq!(
        counters.total(
            "tidewall_rejections_total",
            &["policy=breaker", "name=payments", "reason=circuit_open"]
        ),
        3,
        "each rejection carries its reason"
    );
    assert_eq!(
        events.load(Ordering::SeqCst),
        3 + 3,
        "3 transitions and 3 rejections"
    );

    // A supervisor whose only child keeps failing: one restart, then an escalation. Its
    // events are emitted from the `run` future, driven on this thread.
    let supervisor = tidewall::task::supervisor::Supervisor::builder()
        .intensity(1, Duration::from_secs(10))
        .child(tidewall::task::supervisor::ChildSpec::new(
            "ingest",
            |_stop| async { Err::<(), _>("broken") },
        ))
        .build()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let before = events.load(Ordering::SeqCst);
    let escalation = runtime
        .block_on(supervisor.run(tidewall::task::CancellationToken::new()))
        .unwrap_err();
    assert_eq!(&*escalation.child, "ingest");
    assert_eq!(
        counters.total("tidewall_supervisor_restarts_total", &["child=ingest"]),
        1
    );
    assert_eq!(
        counters.total("tidewall_supervisor_escalations_total", &["child=ingest"]),
        1
    );
    // started, exited, restarting, started, exited, escalating.
    assert_eq!(events.load(Ordering::SeqCst) - before, 6);
}
