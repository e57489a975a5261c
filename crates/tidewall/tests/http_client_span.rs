//! The HTTP client's `tidewall.http` span, alone in its binary: a thread's tracing
//! subscriber sees a span only if no other test's thread cached the callsite as unwanted
//! first, which plain `cargo test` (every test of a binary in one process) may do.
#![cfg(all(feature = "tracing", feature = "http", feature = "tokio"))]

mod support;

use std::sync::{Arc, Mutex};

use support::ms;
use tidewall::http::{ClientPolicies, Overrides};

fn get(uri: &str) -> http::Request<()> {
    http::Request::get(uri).body(()).unwrap()
}

/// Each request runs in a `tidewall.http` span naming the client, the method and the host.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn each_request_runs_in_a_span_naming_its_host() {
    use tracing_subscriber::layer::SubscriberExt as _;

    #[derive(Default, Clone)]
    struct Spans(Arc<Mutex<Vec<String>>>);
    struct Fields<'a>(&'a mut String);
    impl tracing::field::Visit for Fields<'_> {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            self.0.push_str(&format!(" {}={value:?}", field.name()));
        }
        fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
            self.0.push_str(&format!(" {}={value}", field.name()));
        }
    }
    impl<S> tracing_subscriber::Layer<S> for Spans
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            _: &tracing::span::Id,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let mut line = attrs.metadata().name().to_owned();
            attrs.record(&mut Fields(&mut line));
            self.0.lock().unwrap().push(line);
        }
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            ctx: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let span = ctx.event_span(event).map(|s| s.name().to_owned());
            let mut line = format!("event in {span:?}:");
            event.record(&mut Fields(&mut line));
            self.0.lock().unwrap().push(line);
        }
    }

    let spans = Spans::default();
    let subscriber = tracing_subscriber::registry().with(spans.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    let rt = tidewall::rt::Tokio;
    let policies = ClientPolicies::builder()
        .runtime(rt)
        .name("traced")
        .retry(
            tidewall::Backoff::constant(ms(10))
                .jitter(tidewall::Jitter::None)
                .max_attempts(2)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let answers = Mutex::new(vec![200, 503]);
    let response = policies
        .run(
            get("http://api.example:8080/x"),
            Overrides::new(),
            |_request| {
                let status = answers.lock().unwrap().pop().unwrap();
                async move {
                    Ok::<_, std::io::Error>(
                        http::Response::builder().status(status).body(()).unwrap(),
                    )
                }
            },
        )
        .await;
    assert_eq!(response.unwrap().status(), 200);
    let seen = spans.0.lock().unwrap().clone();
    assert_eq!(
        seen[0],
        "tidewall.http client=traced method=GET authority=http://api.example:8080"
    );
    let in_span = |line: &&String| line.starts_with("event in Some(\"tidewall.http\")");
    let events: Vec<_> = seen.iter().filter(in_span).collect();
    assert!(events.iter().any(|l| l.contains("attempt=1")), "{seen:#?}");
    assert!(events.iter().any(|l| l.contains("attempt=2")), "{seen:#?}");
    assert!(
        events.iter().any(|l| l.contains("retry scheduled")),
        "{seen:#?}"
    );
    assert!(
        events.iter().any(|l| l.contains("outcome=Success")),
        "{seen:#?}"
    );
}
