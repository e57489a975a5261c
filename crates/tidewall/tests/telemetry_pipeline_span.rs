//! A pipeline call's `tracing` span and events, in a binary of its own: `tracing` caches each
//! callsite's interest process-wide, and another test emitting the same events on another
//! thread with no subscriber could have them cached as uninteresting while this test's
//! thread-local subscriber is set (seen under plain `cargo test`: "retry scheduled" lost).
#![cfg(all(feature = "metrics", feature = "tracing", feature = "toml"))]

mod support;

use std::time::Duration;

use support::trace::Trace;
use tidewall::Backoff;
use tidewall::pipeline::Pipeline;

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_pipeline_call_runs_in_a_span_with_an_event_per_attempt_and_retry() {
    let trace = Trace::default();
    let _default = trace.install();
    let pipeline = Pipeline::builder()
        .name("quotes")
        .retry(
            Backoff::constant(Duration::from_millis(5))
                .max_attempts(2)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let mut failures = 1;
    let result = pipeline
        .call(|| {
            let fail = failures > 0;
            failures -= 1;
            async move { if fail { Err("flaky") } else { Ok(1) } }
        })
        .await;
    assert_eq!(result, Ok(1));
    let seen = trace.outline();
    assert_eq!(
        seen,
        vec![
            "span tidewall.call pipeline=\"quotes\"",
            "tidewall.call: attempt",
            "tidewall.call: retry scheduled",
            "tidewall.call: attempt",
            "tidewall.call: call ended",
        ]
    );
}
