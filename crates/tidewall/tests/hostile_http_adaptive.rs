//! Hostile tests of the adaptive concurrency limit per authority in the HTTP client stack
//! (`ClientPoliciesBuilder::adaptive`, `ClientPolicies::adaptive_limiters`), written from the
//! rustdoc alone, over scripted in-process hosts, through both fronts (the `run` loop and the
//! tower `ClientLayer`) on every runtime in virtual time: what each attempt teaches its host's
//! algorithm (drops, samples, nothing), slots across retries, backoff waits, open breakers,
//! rate limits, deadlines, queues, full authority tables, priorities, overrides, requests
//! dropped at seeded points and extreme algorithm settings.

mod common;
mod keyed_support;
mod support;

use std::num::NonZeroU32;
use std::time::Duration;

use http::{Method, Request, StatusCode};
use keyed_support::client::{
    Answer, FRONTS, Front, Hosts, Outcome, Policies, Streaming, auth, builder, drop_after, dropped,
    get, request, send, spawn_send, status, with,
};
use keyed_support::{HOUR, ms, secs};
use tidewall::adaptive::{
    AdaptiveLimiter, AdaptiveLimiterBuilder, Aimd, AnyAlgorithm, FixedLimit, Gradient2, Priority,
    Vegas, WindowedGradient,
};
use tidewall::breaker::State;
use tidewall::bulkhead::Bulkhead;
use tidewall::classify::Verdict;
use tidewall::http::{ClientPolicies, ClientPoliciesBuilder, HttpClassifier, Overrides};
use tidewall::rate::KeyedRateLimiter;
use tidewall::rt::{Clock, Runtime, Spawn};
use tidewall::testing::Clocked;
use tidewall::{ConfigError, Error, Rejected};
use tidewall_core::rng::SplitMix64;

/// AIMD within `[min, max]` from `initial`, halving on a drop (5 s timeout).
fn aimd(min: u32, initial: u32, max: u32) -> AnyAlgorithm {
    Aimd::builder()
        .min_limit(min)
        .initial_limit(initial)
        .max_limit(max)
        .backoff_ratio(0.5)
        .build()
        .unwrap()
        .into()
}

fn limited(algorithm: AnyAlgorithm) -> AdaptiveLimiterBuilder<AnyAlgorithm> {
    AdaptiveLimiter::builder(algorithm)
}

/// The harness's stack (3 attempts 10 ms apart, 100 ms attempts, 5 s deadline, no budget, a
/// breaker opening on `failures` in a row) with `limiter` in place of the bulkhead.
fn stack<R: Runtime>(
    rt: &Clocked<R>,
    failures: u32,
    limiter: AdaptiveLimiterBuilder<AnyAlgorithm>,
) -> ClientPoliciesBuilder<Clocked<R>> {
    builder(rt, failures).bulkhead(None).adaptive(Some(limiter))
}

fn limit<R: Runtime>(policies: &Policies<R>, uri: &str) -> Option<u32> {
    policies.adaptive_limiters().unwrap().limit(&auth(uri))
}

fn in_flight<R: Runtime>(policies: &Policies<R>, uri: &str) -> usize {
    policies.adaptive_limiters().unwrap().in_flight(&auth(uri))
}

fn queued<R: Runtime>(policies: &Policies<R>, uri: &str) -> usize {
    let limits = policies.adaptive_limiters().unwrap();
    limits.get(&auth(uri)).map_or(0, |handle| handle.queued())
}

/// One attempt only.
fn once(uri: &str) -> Request<String> {
    with(get(uri), Overrides::new().no_retry())
}

/// One attempt that neither its timeout nor the deadline cuts for an hour.
fn long(uri: &str) -> Request<String> {
    with(
        get(uri),
        Overrides::new()
            .no_retry()
            .attempt_timeout(HOUR)
            .deadline(HOUR),
    )
}

fn is_rejection(outcome: &Outcome, expected: Rejected) -> bool {
    matches!(outcome, Err(Error::Rejected(r)) if *r == expected)
}

/// Sends `request` on a task of its own, dropped after `after` unless it ended before.
fn spawn_dropped<R: Runtime>(
    rt: &Clocked<R>,
    front: Front,
    policies: &Policies<R>,
    hosts: &Hosts<Clocked<R>>,
    request: Request<String>,
    after: Duration,
) -> <Clocked<R> as Spawn>::JoinHandle<Option<Outcome>> {
    let (clock, policies, hosts) = (rt.clone(), policies.clone(), hosts.clone());
    rt.spawn(
        async move { drop_after(&clock, after, send(front, &policies, &hosts, request)).await },
    )
}

// Docs (`build`): "ConfigError::Conflict for a bulkhead and an adaptive limit together"; "The
// ConfigError of any stage's builder"; (`adaptive`) "Its name and runtime are replaced by the
// stack's"; (`share`) Conflict for "a less important priority's share above a more important
// one's", OutOfRange (or NotFinite) outside (0, 1]; (`FixedLimit`) "A limit of zero is refused
// when the limiter is built".
#[test]
fn adaptive_settings_build_or_fail_as_documented() {
    let fixed = || limited(FixedLimit(8).into());
    let err = |b: ClientPoliciesBuilder| b.build().map(|_| ()).unwrap_err();
    assert!(matches!(
        err(ClientPolicies::builder().adaptive(Some(fixed()))),
        ConfigError::Conflict { .. }
    ));
    assert!(matches!(
        err(ClientPolicies::builder()
            .adaptive(Some(fixed()))
            .bulkhead(Some(Bulkhead::builder(4)))),
        ConfigError::Conflict { .. }
    ));
    // The order of the setters does not matter.
    let either_order = ClientPolicies::builder()
        .adaptive(Some(fixed()))
        .bulkhead(None)
        .build()
        .unwrap();
    assert!(either_order.adaptive_limiters().is_some() && either_order.bulkheads().is_none());
    // The last setting wins: `adaptive(None)` turns it off again.
    let off = ClientPolicies::builder()
        .bulkhead(None)
        .adaptive(Some(fixed()))
        .adaptive(None)
        .build()
        .unwrap();
    assert!(off.adaptive_limiters().is_none() && off.bulkheads().is_none());
    assert!(ClientPolicies::standard().adaptive_limiters().is_none());
    assert!(ClientPolicies::standard().bulkheads().is_some());

    let named = ClientPolicies::builder()
        .name("payments_client")
        .bulkhead(None)
        .adaptive(Some(fixed().name("mine")))
        .build()
        .unwrap();
    assert_eq!(named.adaptive_limiters().unwrap().name(), "payments_client");

    // The stage's own errors come through the stack's build.
    let no_bulkhead = || ClientPolicies::builder().bulkhead(None);
    assert!(matches!(
        err(no_bulkhead().adaptive(Some(fixed().share(Priority::Default, 0.5)))),
        ConfigError::Conflict { .. }
    ));
    assert!(matches!(
        err(no_bulkhead().adaptive(Some(fixed().share(Priority::Sheddable, 1.5)))),
        ConfigError::OutOfRange { .. }
    ));
    assert!(matches!(
        err(no_bulkhead().adaptive(Some(fixed().share(Priority::Sheddable, 0.0)))),
        ConfigError::OutOfRange { .. }
    ));
    assert!(matches!(
        err(no_bulkhead().adaptive(Some(fixed().share(Priority::Critical, 0.9)))),
        ConfigError::Conflict { .. } | ConfigError::OutOfRange { .. }
    ));
    assert!(matches!(
        err(no_bulkhead().adaptive(Some(fixed().share(Priority::Sheddable, f64::NAN)))),
        ConfigError::NotFinite { .. } | ConfigError::OutOfRange { .. }
    ));
    assert!(
        no_bulkhead()
            .adaptive(Some(limited(FixedLimit(0).into())))
            .build()
            .is_err(),
        "a fixed limit of zero"
    );
    assert!(matches!(
        err(no_bulkhead().adaptive(Some(fixed())).max_authorities(0)),
        ConfigError::Zero { .. }
    ));
    // Shares that keep the order build.
    let ordered = fixed()
        .share(Priority::Default, 0.5)
        .share(Priority::Sheddable, 0.5);
    assert!(no_bulkhead().adaptive(Some(ordered)).build().is_ok());
}

// Docs (`adaptive`): "a failure (in the standard table a 5xx, a 408, a 429, a timeout or a
// failed connection) is a drop, a success a sample of the host's latency"; (classify) "other
// 4xx: Success". AIMD: a drop halves (truncated, not below min); a success adds one only when
// at least half the limit was in flight (one call of a limit of 2 is half; of 3, a third).
async fn the_standard_table_teaches_drops_and_samples<R: Runtime>(rt: Clocked<R>) {
    use Answer::{After, Refused, Reset, Status};
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let policies = stack(&rt, 1_000, limited(aimd(1, 4, 64))).build().unwrap();
        let script = [
            (Status(500), 2),
            (Status(404), 3),
            (Status(200), 3),
            (Status(501), 1),
            (Status(302), 2),
            (Status(408), 1),
            (Status(204), 2),
            (After(429, 0), 1),
            (Status(200), 2),
            (After(503, 0), 1),
            (Status(451), 2),
            (Refused, 1),
            (Status(200), 2),
            (Reset, 1),
            (Status(200), 2),
            (Status(502), 1),
        ];
        let answers = script.map(|(answer, _)| answer);
        hosts.play("a:80", answers);
        for (i, (answer, expected)) in script.into_iter().enumerate() {
            let _ = send(front, &policies, &hosts, once("http://a/")).await;
            assert_eq!(
                limit(&policies, "http://a/"),
                Some(expected),
                "{front:?}: after #{i} {answer:?}"
            );
            assert_eq!(in_flight(&policies, "http://a/"), 0, "{front:?} #{i}");
        }
        assert_eq!(hosts.seen("a:80"), 16);
    }
}

#[test]
fn the_standard_table_teaches_drops_and_samples_on_every_runtime() {
    on_every_runtime!(the_standard_table_teaches_drops_and_samples);
}

// Docs: "Every attempt takes a slot ... and teaches the algorithm how it ended"; (pipeline
// wording) "one sample per call, retries included".
async fn each_attempt_of_a_retried_request_teaches_once<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let policies = stack(&rt, 1_000, limited(aimd(1, 8, 64))).build().unwrap();
        hosts.play(
            "a:80",
            [
                Answer::Status(503),
                Answer::Status(502),
                Answer::Status(200),
            ],
        );
        let outcome = send(front, &policies, &hosts, get("http://a/")).await;
        assert_eq!(status(&outcome), Some(200), "{front:?}");
        assert_eq!(hosts.seen("a:80"), 3);
        // 8 → 4 → 2, then one call of two in flight: 3.
        assert_eq!(limit(&policies, "http://a/"), Some(3), "{front:?}");
        assert_eq!(in_flight(&policies, "http://a/"), 0);

        hosts.script("b:80", |_| Answer::Status(500));
        let outcome = send(front, &policies, &hosts, get("http://b/")).await;
        assert_eq!(status(&outcome), Some(500), "{front:?}");
        assert_eq!(hosts.seen("b:80"), 3);
        assert_eq!(limit(&policies, "http://b/"), Some(1), "{front:?}: 8→4→2→1");

        // The attempts of one request never hold two slots at once: a host limited to one
        // still serves every retry.
        let one = stack(&rt, 1_000, limited(aimd(1, 1, 1))).build().unwrap();
        hosts.script("c:80", |_| Answer::Status(503));
        let outcome = send(front, &one, &hosts, get("http://c/")).await;
        assert_eq!(status(&outcome), Some(503), "{front:?}: {outcome:?}");
        assert_eq!(hosts.seen("c:80"), 3, "{front:?}: no retry refused");
        assert_eq!(in_flight(&one, "http://c/"), 0);
    }
}

#[test]
fn each_attempt_of_a_retried_request_teaches_once_on_every_runtime() {
    on_every_runtime!(each_attempt_of_a_retried_request_teaches_once);
}

// Docs: 429 and 503 are drops with a `Retry-After` hint; "at least the server's Retry-After
// between attempts"; a retry waiting holds no slot (the slot is the attempt's); "a
// Retry-After that ends past the deadline ends the call at once".
async fn retry_after_waits_hold_no_slot<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let policies = stack(&rt, 1_000, limited(aimd(1, 8, 64))).build().unwrap();
        hosts.play(
            "a:80",
            [
                Answer::After(429, 1),
                Answer::After(503, 1),
                Answer::Status(200),
            ],
        );
        let start = rt.now();
        let task = spawn_send(&rt, front, &policies, &hosts, get("http://a/"));
        rt.sleep(ms(500)).await;
        assert_eq!(
            in_flight(&policies, "http://a/"),
            0,
            "{front:?}: waiting out the 429"
        );
        assert_eq!(limit(&policies, "http://a/"), Some(4));
        rt.sleep(secs(1)).await;
        assert_eq!(in_flight(&policies, "http://a/"), 0, "{front:?}: the 503");
        assert_eq!(limit(&policies, "http://a/"), Some(2));
        let outcome = task.await.unwrap();
        assert_eq!(status(&outcome), Some(200), "{front:?}");
        assert_eq!(rt.now() - start, secs(2));
        assert_eq!(limit(&policies, "http://a/"), Some(3), "{front:?}");

        // A host limited to a single slot serves another request while one waits.
        let single = stack(&rt, 1_000, limited(FixedLimit(1).into()))
            .build()
            .unwrap();
        hosts.play("b:80", [Answer::After(503, 2), Answer::Status(200)]);
        let waiting = spawn_send(&rt, front, &single, &hosts, get("http://b/"));
        rt.sleep(secs(1)).await;
        let meanwhile = send(front, &single, &hosts, get("http://b/")).await;
        assert_eq!(
            status(&meanwhile),
            Some(200),
            "{front:?}: the waiting retry holds no slot: {meanwhile:?}"
        );
        assert_eq!(status(&waiting.await.unwrap()), Some(200), "{front:?}");
        assert_eq!(hosts.seen("b:80"), 3);

        // A Retry-After past the deadline: one attempt, one drop, answered at once.
        hosts.script("c:80", |_| Answer::After(503, 60));
        let start = rt.now();
        let outcome = send(front, &policies, &hosts, get("http://c/")).await;
        assert_eq!(status(&outcome), Some(503), "{front:?}");
        assert_eq!((hosts.seen("c:80"), rt.now() - start), (1, Duration::ZERO));
        assert_eq!(limit(&policies, "http://c/"), Some(4), "{front:?}");
        assert_eq!(in_flight(&policies, "http://c/"), 0);
    }
}

#[test]
fn retry_after_waits_hold_no_slot_on_every_runtime() {
    on_every_runtime!(retry_after_waits_hold_no_slot);
}

// Docs: "Every attempt takes a slot, after the breaker admitted it"; "while it is open, calls
// to that authority are refused at once"; "the failure that opened it is answered with its
// own response or error, not retried".
async fn an_open_breaker_refuses_before_the_adaptive_stage<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let policies = stack(&rt, 2, limited(aimd(1, 8, 64))).build().unwrap();
        hosts.play(
            "a:80",
            [
                Answer::Status(500),
                Answer::Status(500),
                Answer::Status(200),
            ],
        );
        // Two drops, the second opening the breaker: answered, not retried into a refusal.
        let outcome = send(front, &policies, &hosts, get("http://a/")).await;
        assert_eq!(status(&outcome), Some(500), "{front:?}: {outcome:?}");
        assert_eq!(hosts.seen("a:80"), 2);
        assert_eq!(limit(&policies, "http://a/"), Some(2), "{front:?}");
        let breakers = policies.breakers().unwrap();
        assert_eq!(breakers.state(&auth("http://a/")), Some(State::Open));
        for _ in 0..5 {
            let start = rt.now();
            let refused = send(front, &policies, &hosts, get("http://a/")).await;
            assert!(
                matches!(refused, Err(Error::Rejected(Rejected::CircuitOpen { .. }))),
                "{front:?}: {refused:?}"
            );
            assert_eq!(rt.now() - start, Duration::ZERO);
        }
        assert_eq!(
            limit(&policies, "http://a/"),
            Some(2),
            "{front:?}: refusals by the breaker teach nothing"
        );
        assert_eq!(in_flight(&policies, "http://a/"), 0);
        assert_eq!(hosts.seen("a:80"), 2);
        // Concurrent refusals never take a slot either.
        let tasks: Vec<_> = (0..4)
            .map(|_| spawn_send(&rt, front, &policies, &hosts, long("http://a/")))
            .collect();
        for task in tasks {
            assert!(task.await.unwrap().is_err());
        }
        assert_eq!(in_flight(&policies, "http://a/"), 0);

        // After the break, the probe's success is a sample: one call of two in flight.
        rt.sleep(secs(11)).await;
        let probe = send(front, &policies, &hosts, get("http://a/")).await;
        assert_eq!(status(&probe), Some(200), "{front:?}: {probe:?}");
        assert_eq!(limit(&policies, "http://a/"), Some(3), "{front:?}");
        assert_eq!(breakers.state(&auth("http://a/")), Some(State::Closed));
    }
}

#[test]
fn an_open_breaker_refuses_before_the_adaptive_stage_on_every_runtime() {
    on_every_runtime!(an_open_breaker_refuses_before_the_adaptive_stage);
}

// Docs: "An attempt refused later (by the rate limit) or cut by the deadline teaches
// nothing"; (`Wait::Until`) "returned at once when the wait is known to end past it, as a
// limiter's is"; "A refusal by any of them ends the request at once ..., not retried".
async fn a_rate_limit_refusal_after_the_slot_teaches_nothing<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let rate = KeyedRateLimiter::builder(1, secs(60))
            .burst(1)
            .jitter(Duration::ZERO);
        let policies = stack(&rt, 1_000, limited(aimd(1, 4, 64)))
            .rate_limit(Some(rate))
            .build()
            .unwrap();
        hosts.play("a:80", [Answer::Status(500), Answer::Status(200)]);
        let _ = send(front, &policies, &hosts, once("http://a/")).await;
        // At 2, one more sample moves it either way: a success to 3, a drop to 1.
        assert_eq!(limit(&policies, "http://a/"), Some(2));
        for _ in 0..3 {
            let start = rt.now();
            let refused = send(front, &policies, &hosts, get("http://a/")).await;
            assert!(
                matches!(
                    refused,
                    Err(Error::Rejected(
                        Rejected::RateLimited { .. } | Rejected::DeadlineExceeded
                    ))
                ),
                "{front:?}: {refused:?}"
            );
            assert_eq!(rt.now() - start, Duration::ZERO, "{front:?}");
        }
        assert_eq!(hosts.seen("a:80"), 1, "{front:?}: never sent");
        assert_eq!(
            limit(&policies, "http://a/"),
            Some(2),
            "{front:?}: the rate limit's refusals taught the host's limit"
        );
        assert_eq!(in_flight(&policies, "http://a/"), 0, "{front:?}");
    }
}

#[test]
fn a_rate_limit_refusal_after_the_slot_teaches_nothing_on_every_runtime() {
    on_every_runtime!(a_rate_limit_refusal_after_the_slot_teaches_nothing);
}

// Docs: "Per attempt, in order: the authority's breaker, its bulkhead or adaptive limit, and
// its rate limit (waiting no longer than the deadline), then `send`": the slot is held while
// the rate limit is waited for. "a success [is] a sample of the host's latency": the wait for
// the rate limit is not the host's latency, so a fast answer after a long wait is no drop
// for an AIMD whose timeout is shorter than the wait.
async fn a_rate_limit_wait_holds_the_slot_but_is_not_latency<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let rate = KeyedRateLimiter::builder(1, secs(1))
            .burst(1)
            .jitter(Duration::ZERO);
        let strict = Aimd::builder()
            .min_limit(1)
            .initial_limit(2)
            .backoff_ratio(0.5)
            .timeout(ms(500))
            .build()
            .unwrap();
        let policies = stack(&rt, 1_000, limited(strict.into()))
            .rate_limit(Some(rate))
            .build()
            .unwrap();
        let first = send(front, &policies, &hosts, get("http://a/")).await;
        assert_eq!(status(&first), Some(200));
        assert_eq!(limit(&policies, "http://a/"), Some(3), "{front:?}");
        let start = rt.now();
        let waiting = spawn_send(&rt, front, &policies, &hosts, get("http://a/"));
        rt.sleep(ms(400)).await;
        assert_eq!(
            (in_flight(&policies, "http://a/"), hosts.seen("a:80")),
            (1, 1),
            "{front:?}: the slot is taken before the rate limit"
        );
        assert_eq!(status(&waiting.await.unwrap()), Some(200), "{front:?}");
        assert_eq!(rt.now() - start, secs(1));
        assert_eq!(in_flight(&policies, "http://a/"), 0);
        assert_eq!(
            limit(&policies, "http://a/"),
            Some(3),
            "{front:?}: a 0 ms answer after a 1 s rate wait was taught as a drop"
        );
    }
}

#[test]
fn a_rate_limit_wait_holds_the_slot_but_is_not_latency_on_every_runtime() {
    on_every_runtime!(a_rate_limit_wait_holds_the_slot_but_is_not_latency);
}

// Docs: "by the classifier as the breaker counts it: ... what it ignores nothing";
// `client_errors(Verdict::Ignored)` "counts them as nothing"; `fail_status` "failures not to
// retry"; `retry_status` "Also retries these statuses".
async fn a_custom_classifier_decides_what_is_taught<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let classifier = HttpClassifier::standard()
            .client_errors(Verdict::Ignored)
            .fail_status([StatusCode::CONFLICT])
            .retry_status([StatusCode::from_u16(521).unwrap()]);
        let policies = stack(&rt, 1_000, limited(aimd(1, 4, 64)))
            .classifier(classifier)
            .build()
            .unwrap();
        let script = [
            (500, 2),
            (404, 2),
            (404, 2),
            (410, 2),
            (422, 2),
            (409, 1),
            (200, 2),
            (404, 2),
            (200, 3),
        ];
        hosts.play("a:80", script.map(|(code, _)| Answer::Status(code)));
        for (i, (code, expected)) in script.into_iter().enumerate() {
            // The 500 is retryable: sent once, to start from a limit of 2.
            let request = if i == 0 {
                once("http://a/")
            } else {
                get("http://a/")
            };
            let outcome = send(front, &policies, &hosts, request).await;
            assert_eq!(status(&outcome), Some(code), "{front:?} #{i}");
            assert_eq!(
                limit(&policies, "http://a/"),
                Some(expected),
                "{front:?}: after #{i} ({code})"
            );
        }
        assert_eq!(hosts.seen("a:80"), 9, "{front:?}: nothing retried");

        hosts.script("b:80", |_| Answer::Status(521));
        let outcome = send(front, &policies, &hosts, get("http://b/")).await;
        assert_eq!(status(&outcome), Some(521), "{front:?}");
        assert_eq!(hosts.seen("b:80"), 3, "{front:?}: retried as told");
        assert_eq!(limit(&policies, "http://b/"), Some(1), "{front:?}: 4→2→1→1");
    }
}

#[test]
fn a_custom_classifier_decides_what_is_taught_on_every_runtime() {
    on_every_runtime!(a_custom_classifier_decides_what_is_taught);
}

// Docs: "a timeout ... is a drop"; "An attempt ... cut by the deadline teaches nothing"; the
// limiter's runtime is the stack's, so latency is measured on its (virtual) clock, and an
// AIMD answer slower than its `timeout` is a drop.
async fn timeouts_drop_and_deadline_cuts_teach_nothing<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let policies = stack(&rt, 1_000, limited(aimd(1, 4, 64))).build().unwrap();
        hosts.script("a:80", |_| Answer::Slow(secs(1)));
        // Attempt one times out at 100 ms (a drop); attempt two starts at 110 ms and is cut
        // by the 150 ms deadline (nothing).
        let start = rt.now();
        let cut = with(get("http://a/"), Overrides::new().deadline(ms(150)));
        let outcome = send(front, &policies, &hosts, cut).await;
        assert!(
            matches!(
                outcome,
                Err(Error::Rejected(Rejected::DeadlineExceeded) | Error::TimedOut)
            ),
            "{front:?}: {outcome:?}"
        );
        assert_eq!((rt.now() - start, hosts.seen("a:80")), (ms(150), 2));
        assert_eq!(limit(&policies, "http://a/"), Some(2), "{front:?}");
        assert_eq!(in_flight(&policies, "http://a/"), 0);

        // Three attempts timed out: three drops.
        let outcome = send(front, &policies, &hosts, get("http://a/")).await;
        assert!(matches!(outcome, Err(Error::TimedOut)), "{front:?}");
        assert_eq!(limit(&policies, "http://a/"), Some(1));

        // The stack's clock times the calls: AIMD's own 50 ms timeout makes an 80 ms answer
        // a drop, a 40 ms one a sample.
        let strict = Aimd::builder()
            .min_limit(1)
            .initial_limit(4)
            .backoff_ratio(0.5)
            .timeout(ms(50))
            .build()
            .unwrap();
        let timed = stack(&rt, 1_000, limited(strict.into())).build().unwrap();
        let (slow, quick) = (Answer::Slow(ms(80)), Answer::Slow(ms(40)));
        hosts.play("b:80", [slow, quick, slow, quick]);
        for expected in [2, 3, 1, 2] {
            let outcome = send(front, &timed, &hosts, get("http://b/")).await;
            assert_eq!(status(&outcome), Some(200), "{front:?}");
            assert_eq!(limit(&timed, "http://b/"), Some(expected), "{front:?}");
        }
    }
}

#[test]
fn timeouts_drop_and_deadline_cuts_teach_nothing_on_every_runtime() {
    on_every_runtime!(timeouts_drop_and_deadline_cuts_teach_nothing);
}

// Docs: "AIMD: a call that found the limit at least half used adds one"; "A limit does not
// grow while a call found fewer than half its slots in use"; every limit stays within
// `[min_limit, max_limit]`.
async fn the_limit_recovers_only_under_concurrent_load<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let policies = stack(&rt, 1_000, limited(aimd(1, 8, 16)))
            .attempt_timeout(Some(secs(1)))
            .build()
            .unwrap();
        hosts.script("a:80", |n| {
            if n < 3 {
                Answer::Status(503)
            } else {
                Answer::Slow(ms(10))
            }
        });
        for _ in 0..3 {
            let _ = send(front, &policies, &hosts, once("http://a/")).await;
        }
        assert_eq!(limit(&policies, "http://a/"), Some(1), "{front:?}: 8→4→2→1");
        // One call at a time: 1 → 2 → 3, then a third of the limit says nothing.
        for _ in 0..6 {
            let outcome = send(front, &policies, &hosts, get("http://a/")).await;
            assert_eq!(status(&outcome), Some(200));
        }
        assert_eq!(limit(&policies, "http://a/"), Some(3), "{front:?}: idle");
        // Rounds that fill the limit: each round grows it, up to max_limit.
        let mut rounds = 0;
        loop {
            let before = limit(&policies, "http://a/").unwrap();
            if before == 16 {
                break;
            }
            let tasks: Vec<_> = (0..before)
                .map(|_| spawn_send(&rt, front, &policies, &hosts, get("http://a/")))
                .collect();
            for task in tasks {
                let outcome = task.await.unwrap();
                assert_eq!(status(&outcome), Some(200), "{front:?}: {outcome:?}");
            }
            let after = limit(&policies, "http://a/").unwrap();
            assert!(
                after > before && after <= 16,
                "{front:?}: {before} → {after}"
            );
            rounds += 1;
            assert!(rounds <= 16, "{front:?}");
        }
        assert!(hosts.gauge("a:80").most() <= 16);
        // At the ceiling, a full round keeps it there and one more is refused.
        let tasks: Vec<_> = (0..17)
            .map(|_| spawn_send(&rt, front, &policies, &hosts, get("http://a/")))
            .collect();
        let mut refused = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(e.rejection(), Some(Rejected::BulkheadFull), "{front:?}");
                    refused += 1;
                }
            }
        }
        assert_eq!(refused, 1, "{front:?}");
        assert_eq!(limit(&policies, "http://a/"), Some(16));
        assert_eq!(hosts.gauge("a:80").most(), 16, "{front:?}");
        assert_eq!(in_flight(&policies, "http://a/"), 0);
    }
}

#[test]
fn the_limit_recovers_only_under_concurrent_load_on_every_runtime() {
    on_every_runtime!(the_limit_recovers_only_under_concurrent_load);
}

// Docs (module): "a smaller one revokes nothing held, and admits nobody new ... until fewer
// are in flight"; a full limit without a queue refuses at once, not retried.
async fn a_shrinking_limit_revokes_nothing<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let policies = stack(&rt, 1_000, limited(aimd(1, 4, 64)))
            .attempt_timeout(Some(secs(5)))
            .build()
            .unwrap();
        hosts.script("a:80", |n| match n {
            0 | 1 => Answer::Slow(secs(1)),
            2 => Answer::Status(500),
            _ => Answer::Status(200),
        });
        let held: Vec<_> = (0..2)
            .map(|_| spawn_send(&rt, front, &policies, &hosts, once("http://a/")))
            .collect();
        rt.sleep(ms(1)).await;
        assert_eq!(in_flight(&policies, "http://a/"), 2);
        let failed = send(front, &policies, &hosts, once("http://a/")).await;
        assert_eq!(status(&failed), Some(500));
        assert_eq!(
            (
                limit(&policies, "http://a/"),
                in_flight(&policies, "http://a/")
            ),
            (Some(2), 2),
            "{front:?}: nothing revoked"
        );
        let start = rt.now();
        let refused = send(front, &policies, &hosts, get("http://a/")).await;
        assert!(
            is_rejection(&refused, Rejected::BulkheadFull),
            "{front:?}: {refused:?}"
        );
        assert_eq!((rt.now() - start, hosts.seen("a:80")), (Duration::ZERO, 3));
        for task in held {
            assert_eq!(status(&task.await.unwrap()), Some(200), "{front:?}");
        }
        assert_eq!(in_flight(&policies, "http://a/"), 0);
        let grown = limit(&policies, "http://a/").unwrap();
        assert!((3..=4).contains(&grown), "{front:?}: {grown}");
        let outcome = send(front, &policies, &hosts, get("http://a/")).await;
        assert_eq!(status(&outcome), Some(200), "{front:?}");
    }
}

#[test]
fn a_shrinking_limit_revokes_nothing_on_every_runtime() {
    on_every_runtime!(a_shrinking_limit_revokes_nothing);
}

// Docs: "A limiter with a queue waits within the deadline"; (`max_queue`, `max_wait`)
// "default 1 s"; "BulkheadFull when the queue is full or the wait exceeds max_wait".
async fn a_queue_waits_within_the_deadline<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let patient = limited(FixedLimit(1).into())
            .max_queue(4)
            .max_wait(None::<Duration>);
        let policies = stack(&rt, 1_000, patient)
            .attempt_timeout(Some(secs(5)))
            .deadline(Some(secs(30)))
            .build()
            .unwrap();
        hosts.script("a:80", |_| Answer::Slow(secs(1)));
        let start = rt.now();
        let tasks: Vec<_> = (0..3)
            .map(|_| spawn_send(&rt, front, &policies, &hosts, get("http://a/")))
            .collect();
        for task in tasks {
            assert_eq!(status(&task.await.unwrap()), Some(200), "{front:?}");
        }
        assert_eq!(rt.now() - start, secs(3), "{front:?}: one at a time");
        assert_eq!(hosts.gauge("a:80").most(), 1);

        // The request's own deadline bounds the wait.
        hosts.play("b:80", [Answer::Slow(secs(10)), Answer::Status(200)]);
        let holder = spawn_send(&rt, front, &policies, &hosts, long("http://b/"));
        rt.sleep(ms(1)).await;
        let start = rt.now();
        let hurried = with(get("http://b/"), Overrides::new().deadline(secs(2)));
        let outcome = send(front, &policies, &hosts, hurried).await;
        assert!(
            matches!(outcome, Err(Error::Rejected(_))),
            "{front:?}: {outcome:?}"
        );
        let waited = rt.now() - start;
        assert!(waited <= secs(2), "{front:?}: waited {waited:?}");
        assert_eq!(hosts.seen("b:80"), 1);
        assert_eq!(queued(&policies, "http://b/"), 0, "{front:?}");
        assert_eq!(status(&holder.await.unwrap()), Some(200));
        assert_eq!(in_flight(&policies, "http://b/"), 0);

        // The limiter's own max_wait (1 s by default): refused then, not retried.
        let queue = limited(FixedLimit(1).into()).max_queue(1);
        let policies = stack(&rt, 1_000, queue)
            .deadline(Some(secs(30)))
            .build()
            .unwrap();
        hosts.play("c:80", [Answer::Slow(secs(10)), Answer::Status(200)]);
        let holder = spawn_send(&rt, front, &policies, &hosts, long("http://c/"));
        rt.sleep(ms(1)).await;
        let start = rt.now();
        let waiter = spawn_send(&rt, front, &policies, &hosts, get("http://c/"));
        rt.sleep(ms(1)).await;
        assert_eq!(queued(&policies, "http://c/"), 1, "{front:?}");
        // The queue (one place) is full: refused at once.
        let full = send(front, &policies, &hosts, get("http://c/")).await;
        assert!(
            is_rejection(&full, Rejected::BulkheadFull),
            "{front:?}: {full:?}"
        );
        let outcome = waiter.await.unwrap();
        assert!(
            is_rejection(&outcome, Rejected::BulkheadFull),
            "{front:?}: {outcome:?}"
        );
        assert_eq!(rt.now() - start, secs(1), "{front:?}: one wait, not three");
        assert_eq!(hosts.seen("c:80"), 1);
        assert_eq!(status(&holder.await.unwrap()), Some(200));
        assert_eq!(
            (
                in_flight(&policies, "http://c/"),
                queued(&policies, "http://c/")
            ),
            (0, 0)
        );
    }
}

#[test]
fn a_queue_waits_within_the_deadline_on_every_runtime() {
    on_every_runtime!(a_queue_waits_within_the_deadline);
}

// Docs (`max_authorities`): "an authority is forgotten only when nothing depends on it. A new
// one meeting a full table is refused with Rejected::KeysFull"; (keyed limiter) "A key with
// anything out is never forgotten"; "its learned limit is forgotten with it, so a key seen
// again starts from the algorithm's initial limit".
async fn a_full_table_of_busy_hosts_refuses_new_ones<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let policies = stack(&rt, 1_000, limited(aimd(1, 4, 64)))
            .breaker(None)
            .max_authorities(2)
            .build()
            .unwrap();
        hosts.script("a:80", |_| Answer::Slow(secs(10)));
        hosts.script("b:80", |_| Answer::Slow(secs(10)));
        let held = [
            spawn_send(&rt, front, &policies, &hosts, long("http://a/")),
            spawn_send(&rt, front, &policies, &hosts, long("http://b/")),
        ];
        rt.sleep(ms(1)).await;
        for _ in 0..3 {
            let start = rt.now();
            let refused = send(front, &policies, &hosts, get("http://c/")).await;
            assert!(
                matches!(refused, Err(Error::Rejected(Rejected::KeysFull { .. }))),
                "{front:?}: {refused:?}"
            );
            assert_eq!(rt.now() - start, Duration::ZERO, "{front:?}: not retried");
        }
        assert_eq!(hosts.seen("c:80"), 0);
        assert_eq!(
            (
                in_flight(&policies, "http://a/"),
                in_flight(&policies, "http://b/")
            ),
            (1, 1),
            "{front:?}: the busy hosts kept their slots"
        );
        for task in held {
            assert_eq!(status(&task.await.unwrap()), Some(200), "{front:?}");
        }
        let outcome = send(front, &policies, &hosts, get("http://c/")).await;
        assert_eq!(status(&outcome), Some(200), "{front:?}: room once idle");

        // An idle host is forgotten with what it learned.
        let one = stack(&rt, 1_000, limited(aimd(1, 4, 64)))
            .breaker(None)
            .max_authorities(1)
            .build()
            .unwrap();
        hosts.play("d:80", [Answer::Status(500)]);
        let _ = send(front, &one, &hosts, once("http://d/")).await;
        assert_eq!(limit(&one, "http://d/"), Some(2));
        let outcome = send(front, &one, &hosts, get("http://e/")).await;
        assert_eq!(status(&outcome), Some(200), "{front:?}: {outcome:?}");
        assert_eq!(limit(&one, "http://d/"), None, "{front:?}: forgotten");
        assert_eq!(in_flight(&one, "http://d/"), 0);
        let _ = send(front, &one, &hosts, once("http://d/")).await;
        assert_eq!(
            limit(&one, "http://d/"),
            Some(2),
            "{front:?}: back from the initial 4, not from 2"
        );
    }
}

#[test]
fn a_full_table_of_busy_hosts_refuses_new_ones_on_every_runtime() {
    on_every_runtime!(a_full_table_of_busy_hosts_refuses_new_ones);
}

// Docs (`Overrides`): no_retry "Sends the request once"; attempt_timeout "instead of the
// client's"; max_attempts "At most this many attempts"; "Requests sent once ... through the
// breaker, bulkhead, limiter and timeouts".
async fn overrides_and_single_sends_teach_per_attempt<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let policies = stack(&rt, 1_000, limited(aimd(1, 64, 64))).build().unwrap();
        let uri = |host: &str| format!("http://{host}/");
        let two = NonZeroU32::new(2).unwrap();
        let cases: [(&str, Request<String>, u32, u32); 6] = [
            ("a", once(&uri("a")), 1, 32),
            (
                "b",
                with(get(&uri("b")), Overrides::new().max_attempts(two)),
                2,
                16,
            ),
            ("c", request(Method::POST, &uri("c")), 1, 32),
            (
                "d",
                with(
                    request(Method::POST, &uri("d")),
                    Overrides::new().idempotent(),
                ),
                3,
                8,
            ),
            (
                "e",
                with(
                    get(&uri("e")),
                    Overrides::new().no_retry().attempt_timeout(ms(30)),
                ),
                1,
                32,
            ),
            (
                "f",
                with(get(&uri("f")), Overrides::new().attempt_timeout(secs(1))),
                1,
                64,
            ),
        ];
        for (host, request, seen, expected) in cases {
            let key = format!("{host}:80");
            // e: 50 ms is past its own 30 ms timeout; f: within its 1 s one, where the
            // client's 100 ms would have cut it. Everyone else answers 503.
            match host {
                "e" | "f" => hosts.script(&key, |_| Answer::Slow(ms(50))),
                _ => hosts.script(&key, |_| Answer::Status(503)),
            }
            let _ = send(front, &policies, &hosts, request).await;
            assert_eq!(hosts.seen(&key), seen, "{front:?} {host}");
            assert_eq!(
                limit(&policies, &uri(host)),
                Some(expected),
                "{front:?} {host}"
            );
            assert_eq!(in_flight(&policies, &uri(host)), 0);
        }
        // A body that cannot be copied: sent once, one drop.
        hosts.script("g:80", |_| Answer::Status(503));
        let outcome = policies
            .run(
                Streaming(get("http://g/")),
                Overrides::new(),
                |Streaming(r)| hosts.send(r),
            )
            .await;
        assert_eq!(status(&outcome), Some(503));
        assert_eq!(hosts.seen("g:80"), 1);
        assert_eq!(limit(&policies, "http://g/"), Some(32), "{front:?}");
    }
}

#[test]
fn overrides_and_single_sends_teach_per_attempt_on_every_runtime() {
    on_every_runtime!(overrides_and_single_sends_teach_per_attempt);
}

// Docs (`run`): "Cancel safety: dropping the future drops the attempt in flight and every
// permit it holds; nothing is recorded for it"; (`adaptive`) a request dropped by the caller
// teaches nothing and gives its slot back: mid-send, mid-queue, mid-rate-wait, mid-backoff.
async fn a_dropped_request_teaches_nothing_wherever_it_is<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let queue = limited(aimd(1, 4, 64))
            .max_queue(4)
            .max_wait(None::<Duration>);
        let policies = stack(&rt, 1_000, queue)
            .attempt_timeout(Some(secs(60)))
            .deadline(Some(secs(60)))
            .build()
            .unwrap();
        // Mid-send, at a limit of 2 (a success would make it 3, a drop 1).
        hosts.play("a:80", [Answer::Status(500), Answer::Slow(secs(10))]);
        let _ = send(front, &policies, &hosts, once("http://a/")).await;
        assert!(dropped(&rt, front, &policies, &hosts, get("http://a/"), secs(1)).await);
        assert_eq!(
            (
                limit(&policies, "http://a/"),
                in_flight(&policies, "http://a/")
            ),
            (Some(2), 0),
            "{front:?}: mid-send"
        );
        assert_eq!(hosts.gauge("a:80").now(), 0);
        // A drop past AIMD's 5 s timeout is still not a sample.
        assert!(dropped(&rt, front, &policies, &hosts, get("http://a/"), secs(6)).await);
        assert_eq!(
            limit(&policies, "http://a/"),
            Some(2),
            "{front:?}: slow drop"
        );

        // Mid-queue.
        hosts.play(
            "q:80",
            [
                Answer::Status(500),
                Answer::Slow(secs(2)),
                Answer::Slow(secs(2)),
                Answer::Status(200),
            ],
        );
        let _ = send(front, &policies, &hosts, once("http://q/")).await;
        let holders: Vec<_> = (0..2)
            .map(|_| spawn_send(&rt, front, &policies, &hosts, once("http://q/")))
            .collect();
        rt.sleep(ms(1)).await;
        assert!(dropped(&rt, front, &policies, &hosts, get("http://q/"), secs(1)).await);
        assert_eq!(queued(&policies, "http://q/"), 0, "{front:?}: mid-queue");
        for task in holders {
            assert_eq!(status(&task.await.unwrap()), Some(200));
        }
        assert_eq!(in_flight(&policies, "http://q/"), 0);
        let start = rt.now();
        let outcome = send(front, &policies, &hosts, get("http://q/")).await;
        assert_eq!(status(&outcome), Some(200));
        assert_eq!((rt.now() - start, hosts.seen("q:80")), (Duration::ZERO, 4));

        // Mid-backoff: the first attempt taught its drop; the wait, dropped, nothing.
        hosts.play("k:80", [Answer::After(503, 30), Answer::Status(200)]);
        assert!(dropped(&rt, front, &policies, &hosts, get("http://k/"), secs(1)).await);
        assert_eq!(
            (
                limit(&policies, "http://k/"),
                in_flight(&policies, "http://k/")
            ),
            (Some(2), 0),
            "{front:?}: mid-backoff"
        );

        // Mid-rate-wait, holding the slot.
        let rate = KeyedRateLimiter::builder(1, secs(1))
            .burst(1)
            .jitter(Duration::ZERO);
        let rated = stack(&rt, 1_000, limited(aimd(1, 4, 64)))
            .rate_limit(Some(rate))
            .build()
            .unwrap();
        hosts.play("r:80", [Answer::Status(500), Answer::Status(200)]);
        let _ = send(front, &rated, &hosts, once("http://r/")).await;
        assert!(dropped(&rt, front, &rated, &hosts, get("http://r/"), ms(500)).await);
        assert_eq!(
            (limit(&rated, "http://r/"), in_flight(&rated, "http://r/")),
            (Some(2), 0),
            "{front:?}: mid-rate-wait"
        );
        assert_eq!(hosts.seen("r:80"), 1);
    }
}

#[test]
fn a_dropped_request_teaches_nothing_wherever_it_is_on_every_runtime() {
    on_every_runtime!(a_dropped_request_teaches_nothing_wherever_it_is);
}

const SEEDED_ANSWERS: [Answer; 9] = [
    Answer::Status(200),
    Answer::Status(200),
    Answer::Status(404),
    Answer::Status(503),
    Answer::After(429, 0),
    Answer::Slow(Duration::from_millis(40)),
    Answer::Slow(Duration::from_millis(400)),
    Answer::Refused,
    Answer::Reset,
];

// Seeded storms of concurrent requests over three hosts, with a queue and a rate limit,
// dropped at seeded instants (mid-send, mid-queue, mid-rate-wait, mid-backoff or not at all):
// at rest every slot is back, nobody is queued, every limit is within its bounds, and each
// host then admits exactly its limit at once.
async fn seeded_drops_give_every_slot_back<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        for seed in 0..6_u64 {
            let mut rng = SplitMix64::new(seed ^ 0x5EED_AD47);
            let hosts = Hosts::new(&rt);
            let queue = limited(aimd(1, 4, 8)).max_queue(2).max_wait(ms(300));
            let rate = KeyedRateLimiter::builder(20, secs(1))
                .burst(4)
                .jitter(Duration::ZERO);
            // Odd seeds add a breaker that opens on 4 failures in a row.
            let failures = if seed % 2 == 0 { 1_000 } else { 4 };
            let policies = stack(&rt, failures, queue)
                .attempt_timeout(Some(ms(200)))
                .deadline(Some(secs(2)))
                .rate_limit(Some(rate))
                .build()
                .unwrap();
            let names = ["x", "y", "z"];
            for name in names {
                let plan: Vec<Answer> = (0..64)
                    .map(|_| {
                        let i = rng.below_or_equal(8);
                        SEEDED_ANSWERS[usize::try_from(i).unwrap()]
                    })
                    .collect();
                hosts.script(&format!("{name}:80"), move |n| {
                    plan[usize::try_from(n).unwrap() % plan.len()]
                });
            }
            let mut tasks = Vec::new();
            for _ in 0..30 {
                let host = names[usize::try_from(rng.below_or_equal(2)).unwrap()];
                let uri = format!("http://{host}/");
                let request = match rng.below_or_equal(2) {
                    0 => once(&uri),
                    _ => get(&uri),
                };
                let after = if rng.below_or_equal(3) == 0 {
                    HOUR
                } else {
                    ms(rng.below_or_equal(500))
                };
                tasks.push(spawn_dropped(&rt, front, &policies, &hosts, request, after));
                if rng.below_or_equal(1) == 0 {
                    rt.sleep(ms(rng.below_or_equal(30))).await;
                }
            }
            for task in tasks {
                let _ = task.await.unwrap();
            }
            rt.sleep(secs(5)).await;
            for name in names {
                let uri = format!("http://{name}/");
                let key = format!("{name}:80");
                assert_eq!(
                    (in_flight(&policies, &uri), queued(&policies, &uri)),
                    (0, 0),
                    "{front:?} seed {seed} {name}"
                );
                assert_eq!(hosts.gauge(&key).now(), 0);
                let Some(now) = limit(&policies, &uri) else {
                    continue;
                };
                assert!((1..=8).contains(&now), "{front:?} seed {seed}: {now}");
                let breakers = policies.breakers().unwrap();
                if breakers
                    .state(&auth(&uri))
                    .is_some_and(|s| s != State::Closed)
                {
                    continue;
                }
                // Exactly `now` slots free at once (taken before the rate limit is waited
                // for), and nobody queued behind them.
                hosts.script(&key, |_| Answer::Slow(ms(100)));
                let burst: Vec<_> = (0..now)
                    .map(|_| spawn_send(&rt, front, &policies, &hosts, long(&uri)))
                    .collect();
                rt.sleep(ms(1)).await;
                assert_eq!(
                    (in_flight(&policies, &uri), queued(&policies, &uri)),
                    (usize::try_from(now).unwrap(), 0),
                    "{front:?} seed {seed} {name}: a slot leaked"
                );
                for task in burst {
                    let _ = task.await.unwrap();
                }
                rt.sleep(secs(2)).await;
                assert_eq!(in_flight(&policies, &uri), 0);
            }
        }
    }
}

#[test]
fn seeded_drops_give_every_slot_back_on_every_runtime() {
    on_every_runtime!(seeded_drops_give_every_slot_back);
}

// Docs (`share`): "they are admitted while fewer than limit × share are in flight (always
// when none are)"; the stack uses the default priority; "critical calls always have the whole
// limit" and the sheddable share does not touch default calls.
async fn the_stack_admits_at_the_default_share<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let cases = [
            (
                "half",
                limited(FixedLimit(4).into())
                    .share(Priority::Default, 0.5)
                    .share(Priority::Sheddable, 0.5),
                2,
            ),
            (
                "sheddable only",
                limited(FixedLimit(4).into()).share(Priority::Sheddable, 0.25),
                4,
            ),
            (
                "tiny",
                limited(FixedLimit(4).into())
                    .share(Priority::Default, 0.01)
                    .share(Priority::Sheddable, 0.01),
                1,
            ),
            ("default shares", limited(FixedLimit(4).into()), 4),
        ];
        for (case, limiter, admitted) in cases {
            let hosts = Hosts::new(&rt);
            let policies = stack(&rt, 1_000, limiter)
                .attempt_timeout(Some(secs(5)))
                .build()
                .unwrap();
            hosts.script("a:80", |_| Answer::Slow(secs(1)));
            let tasks: Vec<_> = (0..6)
                .map(|_| spawn_send(&rt, front, &policies, &hosts, get("http://a/")))
                .collect();
            let mut ok = 0;
            for task in tasks {
                match task.await.unwrap() {
                    Ok(_) => ok += 1,
                    Err(e) => assert_eq!(
                        e.rejection(),
                        Some(Rejected::BulkheadFull),
                        "{front:?} {case}"
                    ),
                }
            }
            assert_eq!(ok, admitted, "{front:?} {case}");
            assert_eq!(
                (hosts.seen("a:80"), hosts.gauge("a:80").most()),
                (admitted, usize::try_from(admitted).unwrap()),
                "{front:?} {case}"
            );
            assert_eq!(in_flight(&policies, "http://a/"), 0);
        }
    }
}

#[test]
fn the_stack_admits_at_the_default_share_on_every_runtime() {
    on_every_runtime!(the_stack_admits_at_the_default_share);
}

// Docs: "Every limit stays within [min_limit, max_limit]"; AIMD's "is a whole number,
// truncated on each backoff"; `1 <= min <= initial <= max`.
async fn extreme_algorithm_settings_hold_their_bounds<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        // Pinned at one.
        let pinned = stack(&rt, 1_000, limited(aimd(1, 1, 1)))
            .attempt_timeout(Some(secs(5)))
            .build()
            .unwrap();
        hosts.script("a:80", |_| Answer::Slow(ms(50)));
        let tasks: Vec<_> = (0..5)
            .map(|_| spawn_send(&rt, front, &pinned, &hosts, get("http://a/")))
            .collect();
        let ok = {
            let mut ok = 0;
            for task in tasks {
                if task.await.unwrap().is_ok() {
                    ok += 1;
                }
            }
            ok
        };
        assert_eq!((ok, hosts.seen("a:80")), (1, 1), "{front:?}");
        hosts.script("b:80", |n| {
            if n % 2 == 0 {
                Answer::Status(503)
            } else {
                Answer::Status(200)
            }
        });
        for _ in 0..6 {
            let _ = send(front, &pinned, &hosts, once("http://b/")).await;
            assert_eq!(limit(&pinned, "http://b/"), Some(1), "{front:?}");
        }

        // The widest: no overflow at u32::MAX, and a drop truncates the half.
        let wide = stack(&rt, 1_000, limited(aimd(1, u32::MAX, u32::MAX)))
            .build()
            .unwrap();
        hosts.play(
            "c:80",
            [
                Answer::Status(200),
                Answer::Status(503),
                Answer::Status(200),
            ],
        );
        let _ = send(front, &wide, &hosts, once("http://c/")).await;
        assert_eq!(limit(&wide, "http://c/"), Some(u32::MAX), "{front:?}");
        let _ = send(front, &wide, &hosts, once("http://c/")).await;
        assert_eq!(limit(&wide, "http://c/"), Some(u32::MAX / 2), "{front:?}");
        let _ = send(front, &wide, &hosts, once("http://c/")).await;
        assert_eq!(limit(&wide, "http://c/"), Some(u32::MAX / 2), "{front:?}");

        // Every algorithm through the stack, under mixed answers and bursts.
        let algorithms: [(&str, AnyAlgorithm); 5] = [
            (
                "vegas",
                Vegas::builder()
                    .min_limit(2)
                    .initial_limit(10)
                    .max_limit(40)
                    .build()
                    .unwrap()
                    .into(),
            ),
            (
                "gradient2",
                Gradient2::builder()
                    .min_limit(2)
                    .initial_limit(10)
                    .max_limit(40)
                    .build()
                    .unwrap()
                    .into(),
            ),
            (
                "windowed",
                WindowedGradient::builder()
                    .min_limit(2)
                    .initial_limit(10)
                    .max_limit(40)
                    .build()
                    .unwrap()
                    .into(),
            ),
            ("aimd", aimd(2, 10, 40)),
            ("fixed", FixedLimit(3).into()),
        ];
        for (name, algorithm) in algorithms {
            let fixed = name == "fixed";
            let policies = stack(&rt, 1_000, limited(algorithm)).build().unwrap();
            let key = format!("{name}:80");
            let uri = format!("http://{name}/");
            let mix = [
                Answer::Status(200),
                Answer::Slow(ms(30)),
                Answer::Status(503),
                Answer::Slow(ms(500)),
                Answer::Status(404),
                Answer::Refused,
                Answer::Slow(ms(5)),
            ];
            hosts.script(&key, move |n| mix[usize::try_from(n).unwrap() % mix.len()]);
            for _ in 0..12 {
                let tasks: Vec<_> = (0..5)
                    .map(|_| spawn_send(&rt, front, &policies, &hosts, once(&uri)))
                    .collect();
                for task in tasks {
                    let _ = task.await.unwrap();
                }
                let now = limit(&policies, &uri).unwrap();
                if fixed {
                    assert_eq!(now, 3, "{front:?}");
                } else {
                    assert!((2..=40).contains(&now), "{front:?} {name}: {now}");
                }
                assert_eq!(in_flight(&policies, &uri), 0, "{front:?} {name}");
                assert!(
                    hosts.gauge(&key).most() <= 40,
                    "{front:?} {name}: never past max_limit"
                );
            }
        }
    }
}

#[test]
fn extreme_algorithm_settings_hold_their_bounds_on_every_runtime() {
    on_every_runtime!(extreme_algorithm_settings_hold_their_bounds);
}

// Docs (`KeyedAdaptiveLimiter::reconfigure`): "the algorithm replaces each key's, so every key
// starts learning again from the new initial limit ... Its name, listener and runtime are not
// read": the stack's table keeps the stack's (virtual) clock and name.
async fn reconfiguring_the_stacks_table_keeps_its_runtime<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let policies = stack(&rt, 1_000, limited(aimd(1, 4, 64)))
            .name("orders_client")
            .build()
            .unwrap();
        hosts.script("a:80", |_| Answer::Slow(ms(80)));
        let _ = send(front, &policies, &hosts, get("http://a/")).await;
        assert_eq!(limit(&policies, "http://a/"), Some(4), "{front:?}");
        let strict = Aimd::builder()
            .min_limit(1)
            .initial_limit(8)
            .backoff_ratio(0.5)
            .timeout(ms(50))
            .build()
            .unwrap();
        let limits = policies.adaptive_limiters().unwrap();
        limits
            .reconfigure(limited(strict.into()).name("ignored"))
            .unwrap();
        assert_eq!(limits.name(), "orders_client");
        assert_eq!(limit(&policies, "http://a/"), Some(8), "{front:?}");
        let outcome = send(front, &policies, &hosts, get("http://a/")).await;
        assert_eq!(status(&outcome), Some(200));
        assert_eq!(
            limit(&policies, "http://a/"),
            Some(4),
            "{front:?}: 80 ms on the stack's clock is past the new 50 ms timeout"
        );
        let _ = send(front, &policies, &hosts, get("http://new/")).await;
        assert_eq!(limit(&policies, "http://new/"), Some(8), "{front:?}");
    }
}

#[test]
fn reconfiguring_the_stacks_table_keeps_its_runtime_on_every_runtime() {
    on_every_runtime!(reconfiguring_the_stacks_table_keeps_its_runtime);
}

// Docs (`adaptive`): "each host's limit follows its own latency and drops": a storm of drops
// on one host while another is busy leaves the other's limit and slots alone, and the busy
// host is never held back by the failing one's shrunken limit.
async fn one_hosts_drops_never_throttle_another<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let policies = stack(&rt, 1_000, limited(aimd(1, 4, 64)))
            .attempt_timeout(Some(secs(5)))
            .build()
            .unwrap();
        hosts.script("good:80", |_| Answer::Slow(secs(1)));
        hosts.script("bad:80", |_| Answer::Status(503));
        let good: Vec<_> = (0..4)
            .map(|_| spawn_send(&rt, front, &policies, &hosts, get("http://good/")))
            .collect();
        rt.sleep(ms(1)).await;
        for _ in 0..5 {
            let outcome = send(front, &policies, &hosts, get("http://bad/")).await;
            assert_eq!(status(&outcome), Some(503));
        }
        assert_eq!(limit(&policies, "http://bad/"), Some(1), "{front:?}");
        assert_eq!(
            (
                limit(&policies, "http://good/"),
                in_flight(&policies, "http://good/")
            ),
            (Some(4), 4),
            "{front:?}"
        );
        for task in good {
            assert_eq!(status(&task.await.unwrap()), Some(200), "{front:?}");
        }
        let grown = limit(&policies, "http://good/").unwrap();
        assert!(
            grown >= 5,
            "{front:?}: four of four in flight grow it: {grown}"
        );
        assert_eq!(in_flight(&policies, "http://bad/"), 0);
    }
}

#[test]
fn one_hosts_drops_never_throttle_another_on_every_runtime() {
    on_every_runtime!(one_hosts_drops_never_throttle_another);
}

// Docs (`run`): "Per attempt, in order: the authority's breaker, its bulkhead or adaptive
// limit, and its rate limit (waiting no longer than the deadline), then `send` under the
// attempt timeout": the waits for a slot and for the rate limit are not the attempt's time.
async fn waits_before_the_send_are_not_the_attempts_time<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let queue = limited(FixedLimit(1).into())
            .max_queue(2)
            .max_wait(None::<Duration>);
        let policies = stack(&rt, 1_000, queue).build().unwrap();
        hosts.play("a:80", [Answer::Slow(ms(500)), Answer::Slow(ms(50))]);
        let holder = spawn_send(&rt, front, &policies, &hosts, long("http://a/"));
        rt.sleep(ms(1)).await;
        let start = rt.now();
        // Queued 499 ms under a 100 ms attempt timeout, then answered in 50 ms.
        let outcome = send(front, &policies, &hosts, once("http://a/")).await;
        assert_eq!(status(&outcome), Some(200), "{front:?}: {outcome:?}");
        assert_eq!(rt.now() - start, ms(549), "{front:?}");
        assert_eq!(status(&holder.await.unwrap()), Some(200));

        let rate = KeyedRateLimiter::builder(1, secs(1))
            .burst(1)
            .jitter(Duration::ZERO);
        let rated = stack(&rt, 1_000, limited(aimd(1, 4, 64)))
            .rate_limit(Some(rate))
            .build()
            .unwrap();
        hosts.script("b:80", |_| Answer::Slow(ms(50)));
        let _ = send(front, &rated, &hosts, once("http://b/")).await;
        let start = rt.now();
        let outcome = send(front, &rated, &hosts, once("http://b/")).await;
        assert_eq!(status(&outcome), Some(200), "{front:?}: {outcome:?}");
        assert_eq!(rt.now() - start, ms(1_000), "{front:?}");
        assert_eq!(in_flight(&rated, "http://b/"), 0);
    }
}

#[test]
fn waits_before_the_send_are_not_the_attempts_time_on_every_runtime() {
    on_every_runtime!(waits_before_the_send_are_not_the_attempts_time);
}

// Docs: the breaker comes before the adaptive limit ("Every attempt takes a slot, after the
// breaker admitted it"): a host whose breaker is open and whose limit is full is refused by
// the breaker.
async fn the_breaker_answers_before_a_full_limit<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let policies = stack(&rt, 1, limited(aimd(1, 2, 64)))
            .attempt_timeout(Some(secs(5)))
            .build()
            .unwrap();
        hosts.play("a:80", [Answer::Slow(secs(1)), Answer::Status(500)]);
        let holder = spawn_send(&rt, front, &policies, &hosts, long("http://a/"));
        rt.sleep(ms(1)).await;
        let failed = send(front, &policies, &hosts, get("http://a/")).await;
        assert_eq!(status(&failed), Some(500), "{front:?}");
        assert_eq!(
            (
                limit(&policies, "http://a/"),
                in_flight(&policies, "http://a/")
            ),
            (Some(1), 1),
            "{front:?}"
        );
        let refused = send(front, &policies, &hosts, get("http://a/")).await;
        assert!(
            matches!(refused, Err(Error::Rejected(Rejected::CircuitOpen { .. }))),
            "{front:?}: open and full: {refused:?}"
        );
        assert_eq!(status(&holder.await.unwrap()), Some(200));
        assert_eq!(in_flight(&policies, "http://a/"), 0);
        assert_eq!(hosts.seen("a:80"), 2);
    }
}

#[test]
fn the_breaker_answers_before_a_full_limit_on_every_runtime() {
    on_every_runtime!(the_breaker_answers_before_a_full_limit);
}

// Docs (`max_authorities`): "a hard bound"; idle ones are forgotten as new ones arrive.
async fn the_limit_table_stays_bounded_over_many_hosts<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        // No breaker: its table keeps recently used hosts for a while.
        let policies = stack(&rt, 1_000, limited(aimd(1, 4, 64)))
            .breaker(None)
            .max_authorities(3)
            .build()
            .unwrap();
        let uris: Vec<String> = (0..40).map(|i| format!("http://h{i}/")).collect();
        for uri in &uris {
            let outcome = send(front, &policies, &hosts, get(uri)).await;
            assert_eq!(status(&outcome), Some(200), "{front:?} {uri}: {outcome:?}");
        }
        let held = uris
            .iter()
            .filter(|uri| limit(&policies, uri).is_some())
            .count();
        assert!((1..=3).contains(&held), "{front:?}: {held} hosts held");
        assert!(uris.iter().all(|uri| in_flight(&policies, uri) == 0));
    }
}

#[test]
fn the_limit_table_stays_bounded_over_many_hosts_on_every_runtime() {
    on_every_runtime!(the_limit_table_stays_bounded_over_many_hosts);
}

// Docs (`AdaptiveAdmit`): "a bulkhead's wait, timed from the moment it admits"; (module) the
// calls in flight are counted "(a queued caller's: when its slot was granted)": a queued
// request's wait is not its latency.
async fn a_queued_requests_wait_is_not_its_latency<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let strict = Aimd::builder()
            .min_limit(1)
            .initial_limit(1)
            .backoff_ratio(0.5)
            .timeout(ms(500))
            .build()
            .unwrap();
        let queue = limited(strict.into())
            .max_queue(2)
            .max_wait(None::<Duration>);
        let policies = stack(&rt, 1_000, queue).build().unwrap();
        hosts.play("a:80", [Answer::Slow(ms(800)), Answer::Slow(ms(10))]);
        let holder = spawn_send(&rt, front, &policies, &hosts, long("http://a/"));
        rt.sleep(ms(1)).await;
        let start = rt.now();
        let outcome = send(front, &policies, &hosts, once("http://a/")).await;
        assert_eq!(status(&outcome), Some(200), "{front:?}: {outcome:?}");
        assert_eq!(rt.now() - start, ms(809));
        assert_eq!(status(&holder.await.unwrap()), Some(200));
        // The holder's 800 ms was a drop (the floor keeps it at 1); the waiter's 10 ms, one of
        // one in flight, adds one.
        assert_eq!(
            limit(&policies, "http://a/"),
            Some(2),
            "{front:?}: the 799 ms in the queue were taught as latency"
        );
    }
}

#[test]
fn a_queued_requests_wait_is_not_its_latency_on_every_runtime() {
    on_every_runtime!(a_queued_requests_wait_is_not_its_latency);
}

// Docs (module): "a smaller one revokes nothing held, and admits nobody new, queued callers
// included, until fewer are in flight".
async fn a_shrunken_limit_keeps_queued_requests_waiting<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let queue = limited(aimd(1, 2, 64))
            .max_queue(2)
            .max_wait(None::<Duration>);
        let policies = stack(&rt, 1_000, queue).build().unwrap();
        hosts.play(
            "a:80",
            [
                Answer::Slow(secs(10)),
                Answer::Slow(secs(1)),
                Answer::Status(200),
            ],
        );
        let short = with(
            get("http://a/"),
            Overrides::new()
                .no_retry()
                .attempt_timeout(ms(200))
                .deadline(HOUR),
        );
        let timed_out = spawn_send(&rt, front, &policies, &hosts, short);
        rt.sleep(ms(1)).await;
        let holder = spawn_send(&rt, front, &policies, &hosts, long("http://a/"));
        rt.sleep(ms(1)).await;
        let start = rt.now();
        let waiter = spawn_send(&rt, front, &policies, &hosts, once("http://a/"));
        rt.sleep(ms(500)).await;
        assert!(matches!(timed_out.await.unwrap(), Err(Error::TimedOut)));
        assert_eq!(
            (
                limit(&policies, "http://a/"),
                in_flight(&policies, "http://a/")
            ),
            (Some(1), 1),
            "{front:?}"
        );
        assert_eq!(
            (queued(&policies, "http://a/"), hosts.seen("a:80")),
            (1, 2),
            "{front:?}: the freed slot went to nobody"
        );
        assert_eq!(status(&waiter.await.unwrap()), Some(200), "{front:?}");
        assert_eq!(
            rt.now() - start,
            ms(999),
            "{front:?}: admitted when the holder ended"
        );
        assert_eq!(status(&holder.await.unwrap()), Some(200));
        assert_eq!(in_flight(&policies, "http://a/"), 0);
    }
}

#[test]
fn a_shrunken_limit_keeps_queued_requests_waiting_on_every_runtime() {
    on_every_runtime!(a_shrunken_limit_keeps_queued_requests_waiting);
}

// Docs: "Fronts: ClientLayer ... and the tidewall-reqwest crate's middleware ... Both call
// run, so they behave alike": one set of policies behind both fronts has one limit per host.
async fn both_fronts_share_one_limit_per_host<R: Runtime>(rt: Clocked<R>) {
    let hosts = Hosts::new(&rt);
    let policies = stack(&rt, 1_000, limited(aimd(1, 2, 64)))
        .attempt_timeout(Some(secs(5)))
        .build()
        .unwrap();
    hosts.play(
        "a:80",
        [
            Answer::Slow(secs(1)),
            Answer::Slow(secs(1)),
            Answer::Status(503),
        ],
    );
    let held = [
        spawn_send(&rt, Front::Tower, &policies, &hosts, get("http://a/")),
        spawn_send(&rt, Front::Loop, &policies, &hosts, get("http://a/")),
    ];
    rt.sleep(ms(1)).await;
    for front in FRONTS {
        let refused = send(front, &policies, &hosts, get("http://a/")).await;
        assert!(
            is_rejection(&refused, Rejected::BulkheadFull),
            "{front:?}: {refused:?}"
        );
    }
    for task in held {
        assert_eq!(status(&task.await.unwrap()), Some(200));
    }
    let grown = limit(&policies, "http://a/").unwrap();
    assert!(
        (3..=4).contains(&grown),
        "both taught the one limit: {grown}"
    );
    let _ = send(Front::Tower, &policies, &hosts, once("http://a/")).await;
    let _ = send(Front::Loop, &policies, &hosts, once("http://a/")).await;
    assert_eq!(
        limit(&policies, "http://a/"),
        Some((grown / 2 / 2).max(1)),
        "two drops, one limit"
    );
}

#[test]
fn both_fronts_share_one_limit_per_host_on_every_runtime() {
    on_every_runtime!(both_fronts_share_one_limit_per_host);
}

// Docs (core): "A limit does not grow while a call found fewer than half its slots in use
// ...; Gradient2's does not move at all then, drops included": an idle host's 503s and
// timeouts and failed connections leave a Gradient2 limit where it is.
async fn an_idle_hosts_drops_leave_gradient2_alone<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let gradient = Gradient2::builder()
            .min_limit(1)
            .initial_limit(4)
            .max_limit(64)
            .build()
            .unwrap();
        let policies = stack(&rt, 1_000, limited(gradient.into())).build().unwrap();
        hosts.play(
            "a:80",
            [
                Answer::Status(503),
                Answer::Slow(secs(1)),
                Answer::Refused,
                Answer::Status(200),
            ],
        );
        for _ in 0..4 {
            let _ = send(front, &policies, &hosts, once("http://a/")).await;
            assert_eq!(limit(&policies, "http://a/"), Some(4), "{front:?}: idle");
        }
        assert_eq!(hosts.seen("a:80"), 4);
    }
}

#[test]
fn an_idle_hosts_drops_leave_gradient2_alone_on_every_runtime() {
    on_every_runtime!(an_idle_hosts_drops_leave_gradient2_alone);
}
