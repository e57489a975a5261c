//! The HTTP client stack's own telemetry, through both fronts on every runtime in virtual
//! time: each request reported once (listener and metrics) by how it ended, its retries, the
//! retries its budget refused, its duration; the per-authority tables' gauges; the
//! `tidewall.http` span.
#![cfg(all(feature = "metrics", feature = "tracing"))]

mod common;
mod keyed_support;
mod support;

use std::sync::{Arc, Mutex};

use keyed_support::client::{Answer, FRONTS, Hosts, builder, dropped, get, send, status};
use keyed_support::secs;
use support::ms;
use support::snapshot::{gauges_during, recorded, samples, series_total, snapshot};
use tidewall::budget::RetryBudgetPolicy;
use tidewall::classify::Verdict;
use tidewall::http::{ClientPolicies, ClientPoliciesBuilder, HttpClassifier, Overrides};
use tidewall::rt::{Clock, Runtime};
use tidewall::telemetry::{Event, EventKind};
use tidewall::testing::Clocked;

/// What the listener heard, one line per event: `policy name key kind` (`-` for no key).
type Heard = Arc<Mutex<Vec<String>>>;

fn heard_by<R>(builder: ClientPoliciesBuilder<R>) -> (ClientPoliciesBuilder<R>, Heard) {
    let heard = Heard::default();
    let log = Arc::clone(&heard);
    let builder = builder.on_event(move |event: &Event<'_>| {
        let kind = match event.kind {
            EventKind::RetryScheduled { attempt, delay } => format!("retry {attempt} {delay:?}"),
            EventKind::Rejected(why) => format!("rejected {}", why.kind()),
            other => format!("{other:?}"),
        };
        log.lock().unwrap().push(format!(
            "{} {} {} {kind}",
            event.policy,
            event.name,
            event.key.unwrap_or("-")
        ));
    });
    (builder, heard)
}

fn take(heard: &Heard) -> Vec<String> {
    std::mem::take(&mut *heard.lock().unwrap())
}

/// One request of each ending, counted once whatever its attempts: the listener's events in
/// order, and the counters and histogram that match them.
async fn each_request_is_reported_once_by_its_ending<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        // 4xx ignored, not the standard table's successes: every ending once.
        let classifier = HttpClassifier::standard().client_errors(Verdict::Ignored);
        let (builder, heard) = heard_by(builder(&rt, 3).name("upstreams").classifier(classifier));
        let (policies, snapshotter) = recorded(|| builder.build().unwrap());
        let client = "upstreams";

        // A 503 then a 200: one retry, then a success.
        hosts.play("a:80", [Answer::Status(503), Answer::Status(200)]);
        assert_eq!(
            status(&send(front, &policies, &hosts, get("http://a/")).await),
            Some(200)
        );
        assert_eq!(
            take(&heard),
            [
                format!("http_client {client} http://a:80 retry 1 10ms"),
                format!("http_client {client} http://a:80 Succeeded"),
            ]
        );

        // A 404: an answer this classifier ignores, sent once.
        hosts.play("b:80", [Answer::Status(404)]);
        assert_eq!(
            status(&send(front, &policies, &hosts, get("http://b/")).await),
            Some(404)
        );
        assert_eq!(
            take(&heard),
            [format!("http_client {client} http://b:80 Ignored")]
        );

        // Three 503s: two retries, then the last 503 is the answer, a failure. The host's
        // breaker opened on the third; the next request is refused at once.
        hosts.play("c:80", [Answer::Status(503)]);
        assert_eq!(
            status(&send(front, &policies, &hosts, get("http://c/")).await),
            Some(503)
        );
        let refused = send(front, &policies, &hosts, get("http://c/")).await;
        assert!(refused.is_err(), "{refused:?}");
        assert_eq!(hosts.seen("c:80"), 3);
        assert_eq!(
            take(&heard),
            [
                format!("http_client {client} http://c:80 retry 1 10ms"),
                format!("http_client {client} http://c:80 retry 2 10ms"),
                format!("http_client {client} http://c:80 Failed"),
                format!("http_client {client} http://c:80 rejected circuit_open"),
            ]
        );

        // Every attempt too slow: three timeouts, the last one the answer.
        hosts.play("d:80", [Answer::Slow(secs(1))]);
        let timed_out = send(front, &policies, &hosts, get("http://d/")).await;
        assert!(
            matches!(timed_out, Err(tidewall::Error::TimedOut)),
            "{timed_out:?}"
        );
        assert_eq!(
            take(&heard),
            [
                format!("http_client {client} http://d:80 retry 1 10ms"),
                format!("http_client {client} http://d:80 retry 2 10ms"),
                format!("http_client {client} http://d:80 TimedOut"),
            ]
        );

        // Dropped while its first attempt runs: cancelled, and not timed.
        hosts.play("e:80", [Answer::Slow(secs(1))]);
        assert!(dropped(&rt, front, &policies, &hosts, get("http://e/"), ms(50)).await);
        assert_eq!(
            take(&heard),
            [format!("http_client {client} http://e:80 Cancelled")]
        );

        let all = snapshot(&snapshotter);
        let calls = |outcome: &str| {
            let labels = [
                ("policy", "http_client"),
                ("name", "upstreams"),
                ("outcome", outcome),
            ];
            series_total(&all, "tidewall_calls_total", &labels)
        };
        let counted: Vec<u64> = [
            "success",
            "ignored",
            "failure",
            "rejected",
            "timed_out",
            "cancelled",
        ]
        .into_iter()
        .map(calls)
        .collect();
        assert_eq!(counted, [1; 6], "{front:?}");
        let client_labels = [("policy", "http_client"), ("name", "upstreams")];
        assert_eq!(
            series_total(&all, "tidewall_retries_total", &client_labels),
            5
        );
        assert_eq!(
            series_total(
                &all,
                "tidewall_retry_budget_exhausted_total",
                &client_labels
            ),
            0
        );
        // Every request but the cancelled one is timed, on the runtime's clock, in seconds:
        // a's retry 10 ms, c's two 20 ms, d's three timeouts and two backoffs 320 ms.
        let timed: f64 = samples(
            &all,
            "tidewall_call_duration_seconds",
            &[("policy", "http_client")],
        )
        .iter()
        .sum();
        assert!((timed - 0.350).abs() < 1e-9, "{timed} s, {front:?}");
        assert_eq!(
            series_total(&all, "tidewall_call_duration_seconds", &client_labels),
            5,
            "{front:?}"
        );
    }
}

#[test]
fn each_request_is_reported_once_by_its_ending_on_every_runtime() {
    on_every_runtime!(each_request_is_reported_once_by_its_ending);
}

/// A refusal from a policy below the stack (another middleware's rate limit) on every
/// attempt: retried after its hint, never counted by the host's breaker, and the request
/// counted `rejected` (the docs: "a policy refused the last attempt, the client's own or one
/// below it"), heard as a refusal, not a failure.
async fn a_refusal_from_below_is_counted_rejected<R: Runtime>(rt: Clocked<R>) {
    use tidewall::Rejected;
    let (builder, heard) = heard_by(builder(&rt, 1).name("stacked"));
    let (policies, snapshotter) = recorded(|| builder.build().unwrap());
    let sent = std::sync::atomic::AtomicU32::new(0);
    let below = Rejected::RateLimited {
        retry_after: ms(20),
    };
    let start = rt.now();
    let answer = policies
        .run(
            http::Request::get("http://a/").body(()).unwrap(),
            Overrides::new(),
            |_request| {
                sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move {
                    Err::<http::Response<()>, _>(tidewall::Error::<std::io::Error>::Rejected(below))
                }
            },
        )
        .await;
    assert!(
        matches!(answer, Err(tidewall::Error::Inner(tidewall::Error::Rejected(why))) if why == below),
        "{answer:?}"
    );
    // Three attempts, each retry after the refusal's hint; the breaker (one failure opens
    // it) never counted them.
    assert_eq!(sent.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(rt.now() - start, ms(40));
    assert_eq!(
        take(&heard),
        [
            "http_client stacked http://a:80 retry 1 20ms",
            "http_client stacked http://a:80 retry 2 20ms",
            "http_client stacked http://a:80 rejected rate_limited",
        ]
    );
    let all = snapshot(&snapshotter);
    let calls = |outcome: &str| {
        let labels = [
            ("policy", "http_client"),
            ("name", "stacked"),
            ("outcome", outcome),
        ];
        series_total(&all, "tidewall_calls_total", &labels)
    };
    assert_eq!((calls("rejected"), calls("failure")), (1, 0));
}

#[test]
fn a_refusal_from_below_is_counted_rejected_on_every_runtime() {
    on_every_runtime!(a_refusal_from_below_is_counted_rejected);
}

/// A budget with nothing to grant refuses the first retry: heard and counted, and the
/// failure is the answer.
async fn a_refused_retry_is_reported<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let none_left = RetryBudgetPolicy::builder()
            .ratio(0.0)
            .min_per_second(0)
            .build()
            .unwrap();
        let (builder, heard) = heard_by(
            builder(&rt, 10)
                .name("frugal")
                .retry_budget(Some(none_left)),
        );
        let (policies, snapshotter) = recorded(|| builder.build().unwrap());
        hosts.play("a:80", [Answer::Status(503)]);
        assert_eq!(
            status(&send(front, &policies, &hosts, get("http://a/")).await),
            Some(503)
        );
        assert_eq!(hosts.seen("a:80"), 1);
        assert_eq!(
            take(&heard),
            [
                "http_client frugal http://a:80 BudgetExhausted",
                "http_client frugal http://a:80 Failed"
            ]
        );
        let all = snapshot(&snapshotter);
        let labels = [("policy", "http_client"), ("name", "frugal")];
        assert_eq!(
            series_total(&all, "tidewall_retry_budget_exhausted_total", &labels),
            1,
            "{front:?}"
        );
        assert_eq!(series_total(&all, "tidewall_retries_total", &labels), 0);
    }
}

#[test]
fn a_refused_retry_is_reported_on_every_runtime() {
    on_every_runtime!(a_refused_retry_is_reported);
}

/// A request with no authority (a relative URI) runs with no per-host policy, and its events
/// name no key.
async fn a_request_without_an_authority_names_no_key<R: Runtime>(rt: Clocked<R>) {
    let (builder, heard) = heard_by(builder(&rt, 1).name("relative"));
    let policies = builder.build().unwrap();
    let answers = Mutex::new(vec![200, 503]);
    let request = http::Request::get("/items").body(()).unwrap();
    let response = policies
        .run(request, Overrides::new(), |_request| {
            let status = answers.lock().unwrap().pop().unwrap();
            async move {
                let response = http::Response::builder().status(status).body(());
                Ok::<_, std::io::Error>(response.unwrap())
            }
        })
        .await;
    assert_eq!(response.unwrap().status(), 200);
    assert_eq!(
        take(&heard),
        [
            "http_client relative - retry 1 10ms",
            "http_client relative - Succeeded"
        ]
    );
}

#[test]
fn a_request_without_an_authority_names_no_key_on_every_runtime() {
    on_every_runtime!(a_request_without_an_authority_names_no_key);
}

/// A send that panics unwinds through the request, which is heard as `Cancelled` under its
/// host; a listener that panics there too has its panic dropped (a second panic while
/// unwinding would abort the process), and the send's panic reaches the caller.
async fn a_listener_panicking_while_a_send_unwinds_does_not_abort<R: Runtime>(rt: Clocked<R>) {
    let heard = Heard::default();
    let log = Arc::clone(&heard);
    let policies = builder(&rt, 1)
        .name("unwinding")
        .on_event(move |event: &Event<'_>| {
            log.lock()
                .unwrap()
                .push(format!("{:?} {:?}", event.key, event.kind));
            if let EventKind::Cancelled = event.kind {
                panic!("the listener panics too");
            }
        })
        .build()
        .unwrap();
    let request = http::Request::get("http://panics.example/")
        .body(())
        .unwrap();
    let run = policies.run(request, Overrides::new(), |_request| async {
        panic!("the send panics");
        #[allow(unreachable_code)]
        Ok::<http::Response<()>, std::io::Error>(http::Response::new(()))
    });
    let unwound = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(run)).await;
    let panic = unwound.expect_err("the send's panic reaches the caller");
    assert_eq!(panic.downcast_ref::<&str>(), Some(&"the send panics"));
    assert_eq!(
        take(&heard),
        ["Some(\"http://panics.example:80\") Cancelled"]
    );
}

#[test]
fn a_listener_panicking_while_a_send_unwinds_does_not_abort_on_every_runtime() {
    on_every_runtime!(a_listener_panicking_while_a_send_unwinds_does_not_abort);
}

/// The breaker-state gauge counts the hosts in each state, and goes back to 0 for `open` once
/// the host recovers.
async fn the_gauges_follow_the_hosts_breakers<R: Runtime>(rt: Clocked<R>) {
    let hosts = Hosts::new(&rt);
    let policies = builder(&rt, 3).name("gauged").build().unwrap();
    hosts.play("down:80", [Answer::Status(503)]);
    let overrides = Overrides::new().no_retry();
    for _ in 0..3 {
        let _ = policies
            .run(get("http://down/"), overrides, |request| {
                hosts.send(request)
            })
            .await;
    }
    let _ = policies
        .run(get("http://up/"), overrides, |request| hosts.send(request))
        .await;
    let gauges = |policies: &ClientPolicies<Clocked<R>>| {
        let all = gauges_during(|| policies.record_gauges());
        let keys = |state: &str| {
            let labels = [("name", "gauged"), ("state", state)];
            series_total(&all, "tidewall_keyed_breaker_keys", &labels)
        };
        let table = |name: &str, policy: &str| {
            series_total(&all, name, &[("policy", policy), ("name", "gauged")])
        };
        (
            keys("closed"),
            keys("open"),
            keys("half_open"),
            table("tidewall_keyed_keys", "keyed_breaker"),
            table("tidewall_keyed_max_keys", "keyed_bulkhead"),
        )
    };
    assert_eq!(gauges(&policies), (1, 1, 0, 2, 10_000));
    assert_eq!(
        policies.breakers().unwrap().not_closed(),
        [(
            keyed_support::client::auth("http://down/"),
            tidewall::breaker::State::Open
        )]
    );

    // The break ends, the host answers again: its probe closes the breaker.
    rt.sleep(secs(11)).await;
    hosts.play("down:80", [Answer::Status(200)]);
    let answer = policies
        .run(get("http://down/"), overrides, |request| {
            hosts.send(request)
        })
        .await;
    assert_eq!(status(&answer), Some(200));
    assert_eq!(gauges(&policies), (2, 0, 0, 2, 10_000));
    assert!(policies.breakers().unwrap().not_closed().is_empty());
}

#[test]
fn the_gauges_follow_the_hosts_breakers_on_every_runtime() {
    on_every_runtime!(the_gauges_follow_the_hosts_breakers);
}
