//! The HTTP client stack (`ClientPolicies`) against scripted hosts, through both fronts (the
//! loop itself and the tower `ClientLayer`), on every runtime in virtual time: attempts as
//! each host counts them, per-host breakers, budgets, deadlines and overrides.

mod common;
mod keyed_support;
mod support;

use std::num::NonZeroU32;
use std::time::Duration;

use common::ms;
use http::Request;
use keyed_support::client::{
    Answer, FRONTS, Hosts, Streaming, auth, dropped, send, spawn_send, status,
};
use tidewall::adaptive::{AdaptiveLimiter, Aimd};
use tidewall::breaker::{CircuitBreaker, State};
use tidewall::budget::RetryBudgetPolicy;
use tidewall::http::{Authority, ClientPolicies, ClientPoliciesBuilder, Overrides};
use tidewall::rt::{Clock, Runtime};
use tidewall::testing::Clocked;
use tidewall::{Backoff, Error, Jitter, Rejected};

fn get(host: &str) -> Request<String> {
    Request::get(format!("http://{host}/"))
        .body(String::new())
        .unwrap()
}

fn post(host: &str) -> Request<String> {
    Request::post(format!("http://{host}/"))
        .body("order".to_owned())
        .unwrap()
}

/// Three attempts 10 ms apart, no jitter; a breaker per host opening on 3 failures in a row
/// for 10 s; no budget unless a scenario sets one.
fn builder<R: Runtime>(rt: &Clocked<R>) -> ClientPoliciesBuilder<Clocked<R>> {
    ClientPolicies::builder()
        .runtime(rt.clone())
        .retry(
            Backoff::constant(ms(10))
                .jitter(Jitter::None)
                .max_attempts(3)
                .build()
                .unwrap(),
        )
        .attempt_timeout(Some(ms(100)))
        .deadline(Some(Duration::from_secs(5)))
        .retry_budget(None)
        .breaker(Some(
            CircuitBreaker::builder()
                .no_failure_rate()
                .consecutive_failures(3)
                .break_duration(Duration::from_secs(10)),
        ))
}

async fn retries_follow_the_table_and_retry_after<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let policies = builder(&rt).build().unwrap();
        // A 503 asking for a second: the retry waits it out, not the 10 ms backoff.
        hosts.script("a:80", |n| {
            if n == 0 {
                Answer::After(503, 1)
            } else {
                Answer::Status(200)
            }
        });
        let start = rt.now();
        let outcome = send(front, &policies, &hosts, get("a")).await;
        assert_eq!(status(&outcome), Some(200), "{front:?}");
        assert_eq!(
            (hosts.seen("a:80"), rt.now() - start),
            (2, Duration::from_secs(1))
        );

        // A 429 whose wait ends past the deadline: answered at once.
        hosts.script("b:80", |_| Answer::After(429, 60));
        let start = rt.now();
        let outcome = send(front, &policies, &hosts, get("b")).await;
        assert_eq!(status(&outcome), Some(429), "{front:?}");
        assert_eq!((hosts.seen("b:80"), rt.now() - start), (1, Duration::ZERO));

        // A 404 is an answer: one attempt each, and the host's breaker stays closed.
        hosts.script("c:80", |_| Answer::Status(404));
        for _ in 0..10 {
            let outcome = send(front, &policies, &hosts, get("c")).await;
            assert_eq!(status(&outcome), Some(404));
        }
        assert_eq!(hosts.seen("c:80"), 10);
        let breakers = policies.breakers().unwrap();
        let c = Authority::new("http", "c", None).unwrap();
        assert_eq!(breakers.state(&c), Some(State::Closed), "{front:?}");

        // A slow first attempt times out and the retry answers.
        hosts.script("d:80", |n| {
            if n == 0 {
                Answer::Slow(Duration::from_secs(1))
            } else {
                Answer::Status(200)
            }
        });
        let start = rt.now();
        let outcome = send(front, &policies, &hosts, get("d")).await;
        assert_eq!(status(&outcome), Some(200), "{front:?}");
        assert_eq!((hosts.seen("d:80"), rt.now() - start), (2, ms(110)));
    }
}

#[test]
fn retries_follow_the_table_and_retry_after_on_every_runtime() {
    on_every_runtime!(retries_follow_the_table_and_retry_after);
}

async fn only_replayable_requests_are_sent_again<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let policies = builder(&rt).breaker(None).build().unwrap();
        hosts.script("a:80", |_| Answer::Reset);
        let outcome = send(front, &policies, &hosts, get("a")).await;
        assert!(matches!(outcome, Err(Error::Inner(_))), "{front:?}");
        assert_eq!(hosts.seen("a:80"), 3, "a GET is retried");

        hosts.script("b:80", |_| Answer::Reset);
        let outcome = send(front, &policies, &hosts, post("b")).await;
        assert!(matches!(outcome, Err(Error::Inner(_))));
        assert_eq!(hosts.seen("b:80"), 1, "a POST is sent once ({front:?})");

        hosts.script("c:80", |_| Answer::Reset);
        let mut keyed = post("c");
        keyed
            .headers_mut()
            .insert("idempotency-key", "order-7".parse().unwrap());
        let _ = send(front, &policies, &hosts, keyed).await;
        assert_eq!(
            hosts.seen("c:80"),
            3,
            "a POST with an Idempotency-Key is retried"
        );

        hosts.script("d:80", |_| Answer::Status(503));
        let mut opted_in = post("d");
        opted_in
            .extensions_mut()
            .insert(Overrides::new().idempotent());
        let outcome = send(front, &policies, &hosts, opted_in).await;
        assert_eq!(status(&outcome), Some(503));
        assert_eq!(hosts.seen("d:80"), 3, "a POST marked idempotent is retried");
    }
}

#[test]
fn only_replayable_requests_are_sent_again_on_every_runtime() {
    on_every_runtime!(only_replayable_requests_are_sent_again);
}

async fn overrides_change_one_request<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let policies = builder(&rt).breaker(None).build().unwrap();
        hosts.script("a:80", |_| Answer::Status(503));
        let mut once = get("a");
        once.extensions_mut().insert(Overrides::new().no_retry());
        assert_eq!(
            status(&send(front, &policies, &hosts, once).await),
            Some(503)
        );
        assert_eq!(hosts.seen("a:80"), 1, "{front:?}");

        let mut twice = get("a");
        twice
            .extensions_mut()
            .insert(Overrides::new().max_attempts(NonZeroU32::new(2).unwrap()));
        let _ = send(front, &policies, &hosts, twice).await;
        assert_eq!(hosts.seen("a:80"), 3, "two more ({front:?})");

        hosts.script("b:80", |_| Answer::Slow(Duration::from_secs(10)));
        let mut hurried = get("b");
        hurried.extensions_mut().insert(
            Overrides::new()
                .deadline(ms(50))
                .attempt_timeout(Duration::from_secs(1)),
        );
        let start = rt.now();
        let outcome = send(front, &policies, &hosts, hurried).await;
        assert!(
            matches!(outcome, Err(Error::Rejected(Rejected::DeadlineExceeded))),
            "{front:?}: {outcome:?}"
        );
        assert_eq!(rt.now() - start, ms(50), "the request's own deadline holds");
    }
}

#[test]
fn overrides_change_one_request_on_every_runtime() {
    on_every_runtime!(overrides_change_one_request);
}

async fn a_failing_host_opens_only_its_own_breaker<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let policies = builder(&rt).build().unwrap();
        hosts.script("down:80", |_| Answer::Refused);
        // Three refused attempts open the host's breaker; the rest of the calls are refused
        // by it without reaching the host.
        for _ in 0..5 {
            let outcome = send(front, &policies, &hosts, get("down")).await;
            assert!(outcome.is_err());
            let _ = send(front, &policies, &hosts, get("up")).await.unwrap();
        }
        assert_eq!(hosts.seen("down:80"), 3, "{front:?}");
        assert_eq!(hosts.seen("up:80"), 5);
        let breakers = policies.breakers().unwrap();
        let down = Authority::new("http", "down", None).unwrap();
        let up = Authority::new("http", "up", Some(80)).unwrap();
        assert_eq!(breakers.state(&down), Some(State::Open));
        assert_eq!(breakers.state(&up), Some(State::Closed));
        // Open, it answers at once: the refusal is final, not waited out and retried.
        let start = rt.now();
        let refused = send(front, &policies, &hosts, get("down")).await;
        assert!(matches!(
            refused,
            Err(Error::Rejected(Rejected::CircuitOpen { .. }))
        ));
        assert_eq!(rt.now() - start, Duration::ZERO, "{front:?}");

        // A 503 asking for 30 s keeps its host's breaker open that long, not 10 s.
        hosts.script("busy:80", |_| Answer::After(503, 30));
        for _ in 0..3 {
            let mut once = get("busy");
            once.extensions_mut().insert(Overrides::new().no_retry());
            let _ = send(front, &policies, &hosts, once).await;
        }
        let busy = Authority::new("http", "busy", None).unwrap();
        assert_eq!(breakers.state(&busy), Some(State::Open));
        rt.clock().advance(Duration::from_secs(20));
        let mut once = get("busy");
        once.extensions_mut().insert(Overrides::new().no_retry());
        let refused = send(front, &policies, &hosts, once).await;
        assert!(
            matches!(refused, Err(Error::Rejected(Rejected::CircuitOpen { .. }))),
            "{front:?}: still open after 20 s: {refused:?}"
        );
        assert_eq!(hosts.seen("busy:80"), 3);
    }
}

#[test]
fn a_failing_host_opens_only_its_own_breaker_on_every_runtime() {
    on_every_runtime!(a_failing_host_opens_only_its_own_breaker);
}

async fn the_budget_bounds_the_load_on_a_failing_host<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let budget = RetryBudgetPolicy::builder()
            .ratio(0.2)
            .min_per_second(0)
            .build()
            .unwrap();
        let policies = builder(&rt)
            .breaker(None)
            .retry_budget(Some(budget))
            .build()
            .unwrap();
        hosts.script("down:80", |_| Answer::Status(500));
        // One attempt in 11 fails: a retry rate well inside the budget.
        hosts.script("up:80", |n| {
            if n % 11 == 10 {
                Answer::Status(502)
            } else {
                Answer::Status(200)
            }
        });
        let calls = 200;
        for _ in 0..calls {
            let _ = send(front, &policies, &hosts, get("down")).await;
            let up = send(front, &policies, &hosts, get("up")).await;
            assert_eq!(status(&up), Some(200), "{front:?}: every 502 was retried");
        }
        // Without the budget the failing host would see 3 attempts per call; with it, retries
        // add at most 20 % of its own calls. Each host has its own budget, so the failing one
        // does not spend the other's.
        let down = hosts.seen("down:80");
        assert!(
            down <= calls * 6 / 5,
            "{front:?}: {down} attempts for {calls} calls"
        );
        assert!(down > calls, "some retries were granted");
    }
}

#[test]
fn the_budget_bounds_the_load_on_a_failing_host_on_every_runtime() {
    on_every_runtime!(the_budget_bounds_the_load_on_a_failing_host);
}

async fn a_full_authority_table_refuses_new_hosts<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let policies = builder(&rt).max_authorities(2).build().unwrap();
        for host in ["a", "b"] {
            hosts.script(host, |_| Answer::Refused);
            let _ = send(front, &policies, &hosts, get(host)).await;
        }
        // Both open: neither may be forgotten, so a third host is refused before sending.
        let outcome = send(front, &policies, &hosts, get("c")).await;
        assert!(
            matches!(outcome, Err(Error::Rejected(Rejected::KeysFull { .. }))),
            "{front:?}: {outcome:?}"
        );
        assert_eq!(hosts.seen("c:80"), 0);
    }
}

#[test]
fn a_full_authority_table_refuses_new_hosts_on_every_runtime() {
    on_every_runtime!(a_full_authority_table_refuses_new_hosts);
}

/// Each per-authority table forgets a host by its own rule (`ClientPolicies`' docs): a
/// budget after its window with no call drawing on it (until then a new host gets no budget
/// and is sent once), an adaptive limit once no call is in flight (learned again from its
/// initial value).
async fn each_authority_table_forgets_by_its_own_rule<R: Runtime>(rt: Clocked<R>) {
    let window = Duration::from_secs(10);
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let budget = RetryBudgetPolicy::builder().window(window).build().unwrap();
        let policies = builder(&rt)
            .breaker(None)
            .retry_budget(Some(budget))
            .max_authorities(1)
            .build()
            .unwrap();
        assert_eq!(
            status(&send(front, &policies, &hosts, get("a")).await),
            Some(200)
        );
        let once_then_fine = |n| {
            if n == 0 {
                Answer::Status(503)
            } else {
                Answer::Status(200)
            }
        };
        hosts.script("b:80", once_then_fine);
        rt.sleep(window - ms(1)).await;
        let outcome = send(front, &policies, &hosts, get("b")).await;
        assert_eq!(
            (status(&outcome), hosts.seen("b:80")),
            (Some(503), 1),
            "{front:?}: a's budget is drawn on within its window, so b has none"
        );
        rt.sleep(ms(1)).await;
        hosts.script("c:80", once_then_fine);
        let outcome = send(front, &policies, &hosts, get("c")).await;
        assert_eq!(
            (status(&outcome), hosts.seen("c:80")),
            (Some(200), 2),
            "{front:?}: a's window passed, so c has a budget and is retried"
        );

        let aimd = Aimd::builder()
            .min_limit(1)
            .initial_limit(8)
            .backoff_ratio(0.5)
            .build()
            .unwrap();
        let policies = builder(&rt)
            .breaker(None)
            .bulkhead(None)
            .adaptive(Some(AdaptiveLimiter::builder(aimd.into())))
            .max_authorities(1)
            .build()
            .unwrap();
        let limits = policies.adaptive_limiters().unwrap();
        hosts.script("slow:80", |_| Answer::Reset);
        let once = |host| send(front, &policies, &hosts, get(host));
        let _ = once("slow").await;
        let learned = limits.limit(&auth("http://slow/"));
        assert!(learned.is_some_and(|l| l < 8), "{front:?}: {learned:?}");
        assert_eq!(status(&once("d").await), Some(200), "{front:?}");
        assert_eq!(
            limits.limit(&auth("http://slow/")),
            None,
            "{front:?}: forgotten"
        );
        hosts.script("slow:80", |_| Answer::Status(200));
        assert_eq!(status(&once("slow").await), Some(200), "{front:?}");
        assert_eq!(
            limits.limit(&auth("http://slow/")),
            Some(8),
            "{front:?}: learned again from the initial limit"
        );
    }
}

#[test]
fn each_authority_table_forgets_by_its_own_rule_on_every_runtime() {
    on_every_runtime!(each_authority_table_forgets_by_its_own_rule);
}

/// An attempt timeout that ends at the deadline is the deadline cutting the attempt, which
/// records nothing (`run`'s docs): a breaker that opens on one failure stays closed.
async fn a_timeout_at_the_deadline_records_nothing<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let policies = builder(&rt)
            .breaker(Some(
                CircuitBreaker::builder()
                    .no_failure_rate()
                    .consecutive_failures(1),
            ))
            .deadline(Some(Duration::from_secs(1)))
            .attempt_timeout(Some(Duration::from_secs(1)))
            .build()
            .unwrap();
        hosts.script("slow:80", |_| Answer::Slow(Duration::from_secs(60)));
        let outcome = send(front, &policies, &hosts, get("slow")).await;
        assert!(
            matches!(outcome, Err(Error::Rejected(Rejected::DeadlineExceeded))),
            "{front:?}: {outcome:?}"
        );
        let breakers = policies.breakers().unwrap();
        assert_eq!(
            breakers.state(&auth("http://slow/")),
            Some(State::Closed),
            "{front:?}: the deadline's cut is no failure of the host"
        );
    }
}

#[test]
fn a_timeout_at_the_deadline_records_nothing_on_every_runtime() {
    on_every_runtime!(a_timeout_at_the_deadline_records_nothing);
}

/// A call's time, which a breaker's slow-call rule judges, is the host's alone: not the
/// stack's own wait for its rate limit before the send.
async fn the_stacks_own_waits_are_not_the_hosts_slowness<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let limit = tidewall::rate::KeyedRateLimiter::builder(1, Duration::from_secs(1))
            .burst(1)
            .jitter(Duration::ZERO);
        let policies = builder(&rt)
            .breaker(Some(
                CircuitBreaker::builder()
                    .slow_call_rate(0.5, ms(100))
                    .minimum_calls(1),
            ))
            .rate_limit(Some(limit))
            .build()
            .unwrap();
        for _ in 0..2 {
            assert_eq!(
                status(&send(front, &policies, &hosts, get("a")).await),
                Some(200)
            );
        }
        let counts = policies
            .breakers()
            .unwrap()
            .counts(&auth("http://a/"))
            .unwrap();
        assert_eq!(
            (counts.calls, counts.slow),
            (2, 0),
            "{front:?}: the second call waited 1 s for the rate limit, then was answered at once"
        );
        assert_eq!(
            policies.breakers().unwrap().state(&auth("http://a/")),
            Some(State::Closed)
        );
    }
}

#[test]
fn the_stacks_own_waits_are_not_the_hosts_slowness_on_every_runtime() {
    on_every_runtime!(the_stacks_own_waits_are_not_the_hosts_slowness);
}

async fn a_body_that_cannot_be_copied_is_sent_once<R: Runtime>(rt: Clocked<R>) {
    let hosts = Hosts::new(&rt);
    let policies = builder(&rt).build().unwrap();
    hosts.script("a:80", |_| Answer::Status(503));
    let outcome = policies
        .run(
            Streaming(get("a")),
            Overrides::new(),
            |Streaming(request)| hosts.send(request),
        )
        .await;
    assert_eq!(
        status(&outcome),
        Some(503),
        "the response comes back as it is"
    );
    assert_eq!(hosts.seen("a:80"), 1);
}

#[test]
fn a_body_that_cannot_be_copied_is_sent_once_on_every_runtime() {
    on_every_runtime!(a_body_that_cannot_be_copied_is_sent_once);
}

async fn each_host_teaches_its_own_adaptive_limit<R: Runtime>(rt: Clocked<R>) {
    use tidewall::adaptive::{AdaptiveLimiter, Aimd, AnyAlgorithm};
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let aimd = Aimd::builder()
            .min_limit(1)
            .initial_limit(4)
            .backoff_ratio(0.5)
            .build()
            .unwrap();
        let policies = builder(&rt)
            .bulkhead(None)
            .adaptive(Some(AdaptiveLimiter::builder(AnyAlgorithm::from(aimd))))
            .build()
            .unwrap();
        let limits = policies.adaptive_limiters().unwrap();
        let (busy, fine, slow) = (
            Authority::new("http", "busy", None).unwrap(),
            Authority::new("http", "fine", None).unwrap(),
            Authority::new("http", "slow", None).unwrap(),
        );
        hosts.script("busy:80", |_| Answer::After(503, 0));
        hosts.script("fine:80", |_| Answer::Status(200));
        hosts.script("slow:80", |_| Answer::Slow(Duration::from_secs(60)));

        // Each of the three attempts was a drop for busy alone: 4, 2, 1, then the floor.
        let answered = send(front, &policies, &hosts, get("busy")).await;
        assert_eq!(status(&answered), Some(503), "{front:?}");
        assert_eq!(hosts.seen("busy:80"), 3);
        assert_eq!(limits.limit(&busy), Some(1), "{front:?}");
        let _ = send(front, &policies, &hosts, get("fine")).await.unwrap();
        assert_eq!(
            limits.limit(&fine),
            Some(4),
            "{front:?}: fine taught only itself"
        );

        // Attempts timed out are drops; a request the caller dropped teaches nothing.
        let mut once = get("slow");
        once.extensions_mut().insert(Overrides::new().no_retry());
        let timed_out = send(front, &policies, &hosts, once).await;
        assert!(
            matches!(timed_out, Err(Error::TimedOut)),
            "{front:?}: {timed_out:?}"
        );
        assert_eq!(limits.limit(&slow), Some(2));
        let mut patient = get("slow");
        patient.extensions_mut().insert(
            Overrides::new()
                .no_retry()
                .attempt_timeout(Duration::from_secs(3600)),
        );
        assert!(dropped(&rt, front, &policies, &hosts, patient, ms(50)).await);
        assert_eq!(
            limits.limit(&slow),
            Some(2),
            "{front:?}: cancelled, not a sample"
        );
        assert_eq!(limits.in_flight(&slow), 0, "{front:?}: its slot came back");

        // Full, it refuses at once (no queue by default), and the refusal is final.
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut long = get("slow");
            long.extensions_mut().insert(
                Overrides::new()
                    .no_retry()
                    .attempt_timeout(Duration::from_secs(3600)),
            );
            held.push(spawn_send(&rt, front, &policies, &hosts, long));
        }
        rt.sleep(ms(1)).await;
        assert_eq!(limits.in_flight(&slow), 2);
        let start = rt.now();
        let refused = send(front, &policies, &hosts, get("slow")).await;
        assert!(
            matches!(refused, Err(Error::Rejected(Rejected::BulkheadFull))),
            "{front:?}: {refused:?}"
        );
        assert_eq!(rt.now() - start, Duration::ZERO);
        // The deadline (5 s) cuts the two held: their slots come back, and they teach
        // nothing.
        for handle in held {
            let cut = handle.await.unwrap();
            assert!(
                matches!(cut, Err(Error::Rejected(Rejected::DeadlineExceeded))),
                "{front:?}: {cut:?}"
            );
        }
        assert_eq!((limits.in_flight(&slow), limits.limit(&slow)), (0, Some(2)));
    }
}

#[test]
fn each_host_teaches_its_own_adaptive_limit_on_every_runtime() {
    on_every_runtime!(each_host_teaches_its_own_adaptive_limit);
}

#[test]
fn bad_client_settings_are_typed_errors() {
    let adaptive = tidewall::adaptive::AdaptiveLimiter::builder(
        tidewall::adaptive::AnyAlgorithm::from(tidewall::adaptive::FixedLimit(8)),
    );
    assert!(
        matches!(
            ClientPolicies::builder()
                .adaptive(Some(adaptive.clone()))
                .build(),
            Err(tidewall::ConfigError::Conflict { .. })
        ),
        "the standard bulkhead and an adaptive limit"
    );
    assert!(
        ClientPolicies::builder()
            .bulkhead(None)
            .adaptive(Some(adaptive))
            .build()
            .is_ok()
    );
    let zero = ClientPolicies::builder().max_authorities(0).build();
    assert_eq!(
        zero.unwrap_err(),
        tidewall::ConfigError::Zero {
            field: "max_authorities"
        }
    );
    // With no per-authority table at all, zero is still refused.
    let bare = ClientPolicies::builder()
        .retry_budget(None)
        .breaker(None)
        .bulkhead(None)
        .max_authorities(0)
        .build();
    assert_eq!(
        bare.unwrap_err(),
        tidewall::ConfigError::Zero {
            field: "max_authorities"
        }
    );
    let zero = ClientPolicies::builder()
        .deadline(Some(Duration::ZERO))
        .build();
    assert_eq!(
        zero.unwrap_err(),
        tidewall::ConfigError::Zero { field: "deadline" }
    );
    let long = ClientPolicies::builder()
        .max_retry_after(Duration::MAX)
        .build();
    assert_eq!(
        long.unwrap_err(),
        tidewall::ConfigError::DurationOverflow {
            field: "max_retry_after"
        }
    );
    // As a pipeline refuses them, not silently cut to about 30 years (audit s35).
    for (builder, field) in [
        (
            ClientPolicies::builder().deadline(Some(Duration::MAX)),
            "deadline",
        ),
        (
            ClientPolicies::builder().attempt_timeout(Some(Duration::MAX)),
            "attempt_timeout",
        ),
    ] {
        assert_eq!(
            builder.build().unwrap_err(),
            tidewall::ConfigError::DurationOverflow { field }
        );
    }
    let _ = ClientPolicies::standard();
}

/// A refusal by a policy below the stack (here: the inner client answers with a bulkhead's
/// `BulkheadFull`, as a tidewall layer under it would) says nothing of the host: the host's
/// breaker does not count it, as a `BreakerLayer` over the refusing layer would not (audit
/// s35: three such refusals opened the breaker of a host that never failed).
#[tokio::test(start_paused = true)]
async fn a_refusal_from_below_is_not_a_failure_of_the_host() {
    let policies = ClientPolicies::builder()
        .no_retry()
        .breaker(Some(
            CircuitBreaker::builder()
                .no_failure_rate()
                .consecutive_failures(3),
        ))
        .build()
        .unwrap();
    for _ in 0..5 {
        let refused = policies
            .run(get("h"), Overrides::new(), |_request| async {
                Err::<http::Response<()>, Error<std::io::Error>>(Error::Rejected(
                    Rejected::BulkheadFull,
                ))
            })
            .await;
        assert!(
            matches!(
                refused,
                Err(Error::Inner(Error::Rejected(Rejected::BulkheadFull)))
            ),
            "{refused:?}"
        );
    }
    let host = Authority::new("http", "h", None).unwrap();
    assert_eq!(
        policies.breakers().unwrap().state(&host),
        Some(State::Closed)
    );
    // The host's own failures still count.
    for _ in 0..3 {
        let _ = policies
            .run(get("h"), Overrides::new(), |_request| async {
                Err::<http::Response<()>, Error<std::io::Error>>(Error::Inner(
                    std::io::ErrorKind::ConnectionRefused.into(),
                ))
            })
            .await;
    }
    assert_eq!(policies.breakers().unwrap().state(&host), Some(State::Open));
}

/// On the default runtime (tokio, in paused time): three attempts `delay` apart, no jitter,
/// no breaker.
fn on_tokio(delay: Duration) -> ClientPoliciesBuilder {
    ClientPolicies::builder()
        .retry(
            Backoff::constant(delay)
                .jitter(Jitter::None)
                .max_attempts(3)
                .build()
                .unwrap(),
        )
        .breaker(None)
}

/// A body that counts its copies.
#[derive(Debug)]
struct CountedBody(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Clone for CountedBody {
    fn clone(&self) -> Self {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(std::sync::Arc::clone(&self.0))
    }
}

/// A request is copied only while another attempt could follow: three 503s in three attempts
/// take two copies (none for the last attempt), a request capped at one attempt none, and
/// the last attempt's 503 is still the answer, after the same three sends.
#[tokio::test(start_paused = true)]
async fn the_last_attempt_sends_the_request_without_copying_it() {
    let policies = on_tokio(ms(10)).retry_budget(None).build().unwrap();
    let sends = std::sync::atomic::AtomicUsize::new(0);
    let run = |overrides: Overrides| {
        let copies = std::sync::Arc::default();
        let request = Request::get("http://a/")
            .body(CountedBody(std::sync::Arc::clone(&copies)))
            .unwrap();
        let sends = &sends;
        let policies = &policies;
        async move {
            let answer = policies
                .run(request, overrides, |_request| async move {
                    sends.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    Ok::<_, std::io::Error>(http::Response::builder().status(503).body(()).unwrap())
                })
                .await;
            (
                answer.map(|r| r.status().as_u16()).ok(),
                copies.load(std::sync::atomic::Ordering::SeqCst),
            )
        }
    };
    assert_eq!(run(Overrides::new()).await, (Some(503), 2));
    assert_eq!(sends.swap(0, std::sync::atomic::Ordering::SeqCst), 3);
    let once = Overrides::new().max_attempts(NonZeroU32::MIN);
    assert_eq!(run(once).await, (Some(503), 0));
    assert_eq!(sends.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// "For the retry budgets, [an authority is forgotten only when] no call has drawn on its
/// budget for the budget's window": a request whose first attempt took 10 s draws its two
/// retries at 10 s, long after it took the budget. Its budget is not forgotten a window after
/// the request began: a new authority, in a table of one, finds it still there and gets no
/// budget, so its 503 is sent once, not retried on a fresh budget.
#[tokio::test(start_paused = true)]
async fn a_budget_is_kept_for_a_window_after_its_last_retry() {
    let policies = on_tokio(ms(100))
        .retry_budget(Some(
            RetryBudgetPolicy::builder()
                .ratio(0.0)
                .min_per_second(1)
                .window(Duration::from_secs(2))
                .build()
                .unwrap(),
        ))
        .bulkhead(None)
        .attempt_timeout(None)
        .deadline(Some(Duration::from_secs(60)))
        .max_authorities(1)
        .build()
        .unwrap();
    let sends = std::sync::Mutex::new(Vec::new());
    let send = |request: Request<String>| {
        let host = request.uri().host().unwrap().to_owned();
        let first = {
            let mut sends = sends.lock().unwrap();
            sends.push(host.clone());
            sends.iter().filter(|h| **h == host).count() == 1
        };
        async move {
            if host == "a" && first {
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            Ok::<_, std::io::Error>(http::Response::builder().status(503).body(()).unwrap())
        }
    };
    let slow = policies.run(get("a"), Overrides::new(), send);
    let later = async {
        tokio::time::sleep(ms(10_300)).await;
        policies.run(get("c"), Overrides::new(), send).await
    };
    let (slow, later) = tokio::join!(slow, later);
    assert_eq!(slow.unwrap().status(), 503);
    assert_eq!(later.unwrap().status(), 503);
    let sends = sends.into_inner().unwrap();
    let count = |host: &str| sends.iter().filter(|h| *h == host).count();
    assert_eq!((count("a"), count("c")), (3, 1), "{sends:?}");
}
