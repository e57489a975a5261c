//! The HTTP client's `tidewall.http` span, alone in its binary: a thread's tracing
//! subscriber sees a span only if no other test's thread cached the callsite as unwanted
//! first, which plain `cargo test` (every test of a binary in one process) may do.
#![cfg(all(feature = "tracing", feature = "http", feature = "tokio"))]

mod support;

use std::sync::Mutex;

use support::ms;
use support::trace::Trace;
use tidewall::http::{ClientPolicies, Overrides};

fn get(uri: &str) -> http::Request<()> {
    http::Request::get(uri).body(()).unwrap()
}

/// Each request runs in a `tidewall.http` span naming the client, the method and the host.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn each_request_runs_in_a_span_naming_its_host() {
    let trace = Trace::default();
    let _guard = trace.install();
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
    let seen = trace.lines();
    assert_eq!(
        seen[0],
        "span tidewall.http client=\"traced\" method=GET authority=http://api.example:8080"
    );
    let in_span = |line: &&String| line.starts_with("tidewall.http: ");
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
