//! A pipeline call's `tracing` span and events, in a binary of its own: `tracing` caches each
//! callsite's interest process-wide, and another test emitting the same events on another
//! thread with no subscriber could have them cached as uninteresting while this test's
//! thread-local subscriber is set (seen under plain `cargo test`: "retry scheduled" lost).
#![cfg(all(feature = "metrics", feature = "tracing", feature = "toml"))]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidewall::Backoff;
use tidewall::pipeline::Pipeline;

/// Spans opened and events seen, each event with the span it was in.
#[derive(Default, Clone)]
struct Trace(Arc<Mutex<Vec<String>>>);

impl<S> tracing_subscriber::Layer<S> for Trace
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut fields = String::new();
        attrs.record(
            &mut |field: &tracing::field::Field, value: &dyn std::fmt::Debug| {
                fields.push_str(&format!("{}={value:?}", field.name()));
            },
        );
        self.0
            .lock()
            .unwrap()
            .push(format!("span {} {fields}", attrs.metadata().name()));
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let mut message = String::new();
        event.record(
            &mut |field: &tracing::field::Field, value: &dyn std::fmt::Debug| {
                if field.name() == "message" {
                    message = format!("{value:?}");
                }
            },
        );
        let span = ctx.event_span(event).map(|s| s.name()).unwrap_or("-");
        self.0.lock().unwrap().push(format!("{span}: {message}"));
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_pipeline_call_runs_in_a_span_with_an_event_per_attempt_and_retry() {
    use tracing_subscriber::layer::SubscriberExt as _;

    let trace = Trace::default();
    let subscriber = tracing_subscriber::registry().with(trace.clone());
    let _default = tracing::subscriber::set_default(subscriber);
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
    let seen = trace.0.lock().unwrap().clone();
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
