//! Hostile tests of the HTTP client stack (`ClientPolicies::run` and the tower `ClientLayer`),
//! written from the rustdoc alone, over scripted in-process hosts on every runtime in virtual
//! time: the total deadline across retries and `Retry-After` waits, timeouts as breaker
//! failures, per-authority breakers, budgets, bulkheads and limiters, replay rules, bodies
//! that cannot be copied, relative URIs, cancellation, the authority table and the builder.

mod common;
mod keyed_support;
mod support;

use std::num::NonZeroU32;
use std::time::Duration;

use http::Method;
use keyed_support::client::{
    Answer, FRONTS, Hosts, Streaming, attempts, auth, builder, dropped, get, request, send,
    spawn_send, status, with,
};
use keyed_support::{HOUR, ms, secs};
use tidewall::breaker::{CircuitBreaker, State};
use tidewall::budget::RetryBudgetPolicy;
use tidewall::bulkhead::Bulkhead;
use tidewall::http::{Authority, ClientPolicies, ClientPoliciesBuilder, Idempotency, Overrides};
use tidewall::rate::KeyedRateLimiter;
use tidewall::rt::{Clock, Runtime};
use tidewall::testing::Clocked;
use tidewall::{ConfigError, Error, Rejected};

// Docs (`ClientPolicies`): "a total deadline over every attempt and wait"; "at least the
// server's Retry-After between attempts (capped ...; a wait that would end past the deadline
// ends the call at once)"; (`run`) "an attempt the deadline cuts records nothing".
async fn the_deadline_holds_across_retries_and_waits<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let policies = builder(&rt, 100).retry(attempts(5)).build().unwrap();
        hosts.script("a:80", |_| Answer::After(503, 2));
        let start = rt.now();
        let outcome = send(front, &policies, &hosts, get("http://a/")).await;
        // Attempts at 0, 2 s and 4 s; the next wait would end at 6 s, past the 5 s deadline.
        assert_eq!(status(&outcome), Some(503), "{front:?}");
        assert_eq!(
            (hosts.seen("a:80"), rt.now() - start),
            (3, secs(4)),
            "{front:?}"
        );

        let policies = builder(&rt, 100)
            .attempt_timeout(Some(secs(3)))
            .build()
            .unwrap();
        hosts.script("b:80", |_| Answer::Slow(secs(10)));
        let start = rt.now();
        let outcome = send(front, &policies, &hosts, get("http://b/")).await;
        assert!(
            matches!(outcome, Err(Error::Rejected(Rejected::DeadlineExceeded))),
            "{front:?}: {outcome:?}"
        );
        assert_eq!((hosts.seen("b:80"), rt.now() - start), (2, secs(5)));
        let counts = policies
            .breakers()
            .unwrap()
            .counts(&auth("http://b/"))
            .unwrap();
        assert_eq!(
            (counts.calls, counts.failures),
            (1, 1),
            "{front:?}: the timeout counts, the cut attempt does not"
        );

        // Docs (`max_retry_after`): the cut only shortens the sleep; the deadline is held
        // against the server's whole Retry-After. 100 s passes the 5 s deadline: answered at
        // once. With a deadline past the server's time, each sleep is cut to 1 s.
        let policies = builder(&rt, 100).max_retry_after(secs(1)).build().unwrap();
        hosts.script("c:80", |_| Answer::After(503, 100));
        let start = rt.now();
        let outcome = send(front, &policies, &hosts, get("http://c/")).await;
        assert_eq!(status(&outcome), Some(503));
        assert_eq!(
            (hosts.seen("c:80"), rt.now() - start),
            (1, Duration::ZERO),
            "{front:?}: the server's time passes the deadline"
        );
        let policies = builder(&rt, 100)
            .max_retry_after(secs(1))
            .deadline(Some(secs(1000)))
            .build()
            .unwrap();
        hosts.script("d:80", |_| Answer::After(503, 100));
        let start = rt.now();
        let outcome = send(front, &policies, &hosts, get("http://d/")).await;
        assert_eq!(status(&outcome), Some(503));
        assert_eq!(
            (hosts.seen("d:80"), rt.now() - start),
            (3, secs(2)),
            "{front:?}: each sleep capped at 1 s"
        );
    }
}

#[test]
fn the_deadline_holds_across_retries_and_waits_on_every_runtime() {
    on_every_runtime!(the_deadline_holds_across_retries_and_waits);
}

// Docs: "an attempt timeout (default 10 s), which the breaker counts as a failure"; "Per
// attempt, in order: the authority's breaker, its bulkhead and its rate limit ... A refusal
// by any of them ends the request at once with that refusal, not retried".
async fn timeouts_trip_the_breaker_and_its_refusal_is_final<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let policies = builder(&rt, 2).no_retry().build().unwrap();
        hosts.script("slow:80", |_| Answer::Slow(secs(1)));
        for _ in 0..2 {
            let start = rt.now();
            let outcome = send(front, &policies, &hosts, get("http://slow/")).await;
            assert!(
                matches!(outcome, Err(Error::TimedOut)),
                "{front:?}: {outcome:?}"
            );
            assert_eq!(rt.now() - start, ms(100));
        }
        let breakers = policies.breakers().unwrap();
        assert_eq!(
            breakers.state(&auth("http://slow/")),
            Some(State::Open),
            "{front:?}"
        );
        let outcome = send(front, &policies, &hosts, get("http://slow/")).await;
        assert!(matches!(
            outcome,
            Err(Error::Rejected(Rejected::CircuitOpen { .. }))
        ));
        assert_eq!(hosts.seen("slow:80"), 2);

        // One failure opens it for 10 s, well inside the deadline. Docs (`run`): "A failure
        // that leaves the authority's breaker open is not retried either (the retry would be
        // refused): its response or error is the answer"; the next call is refused at once.
        let policies = builder(&rt, 1)
            .retry(attempts(3))
            .deadline(Some(secs(30)))
            .build()
            .unwrap();
        hosts.play("flaky:80", [Answer::Status(500), Answer::Status(200)]);
        let start = rt.now();
        let outcome = send(front, &policies, &hosts, get("http://flaky/")).await;
        assert_eq!(status(&outcome), Some(500), "{front:?}: {outcome:?}");
        assert_eq!(
            (hosts.seen("flaky:80"), rt.now() - start),
            (1, Duration::ZERO)
        );
        let refused = send(front, &policies, &hosts, get("http://flaky/")).await;
        assert!(
            matches!(refused, Err(Error::Rejected(Rejected::CircuitOpen { .. }))),
            "{front:?}: {refused:?}"
        );
        assert_eq!(
            (hosts.seen("flaky:80"), rt.now() - start),
            (1, Duration::ZERO)
        );
    }
}

#[test]
fn timeouts_trip_the_breaker_and_its_refusal_is_final_on_every_runtime() {
    on_every_runtime!(timeouts_trip_the_breaker_and_its_refusal_is_final);
}

// Docs (`Authority`): "scheme, host and port, the host lowercased and the port filled in from
// the scheme"; "`scheme://host:port`, as it labels telemetry"; a breaker per authority.
async fn authorities_are_normalized_and_ports_kept_apart<R: Runtime>(rt: Clocked<R>) {
    assert_eq!(auth("HTTP://Host:80/x"), auth("http://host/y"));
    assert_eq!(auth("http://[::1]/"), auth("http://[::1]:80/"));
    assert_ne!(auth("http://host/"), auth("http://host:8080/"));
    assert_ne!(auth("http://host/"), auth("https://host/"));
    assert_eq!(
        auth("http://user:secret@Host/").as_str(),
        "http://host:80",
        "no credentials in labels"
    );
    assert_eq!(Authority::from_uri(&"/relative".parse().unwrap()), None);
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let policies = builder(&rt, 2).no_retry().build().unwrap();
        for host in ["host:80", "host:8080", "host:443"] {
            hosts.script(host, |_| Answer::Reset);
        }
        let _ = send(front, &policies, &hosts, get("HTTP://Host:80/x")).await;
        let _ = send(front, &policies, &hosts, get("http://host/y")).await;
        let breakers = policies.breakers().unwrap();
        assert_eq!(
            breakers.state(&auth("http://host/")),
            Some(State::Open),
            "{front:?}: one authority"
        );
        let _ = send(front, &policies, &hosts, get("http://host:8080/")).await;
        let _ = send(front, &policies, &hosts, get("https://HOST/")).await;
        let refused = send(front, &policies, &hosts, get("http://HOST:80/z")).await;
        assert!(matches!(
            refused,
            Err(Error::Rejected(Rejected::CircuitOpen { .. }))
        ));
        let seen = ["host:80", "host:8080", "host:443"].map(|h| hosts.seen(h));
        assert_eq!(seen, [2, 1, 1], "{front:?}");
        assert_eq!(breakers.len(), 3);
    }
}

#[test]
fn authorities_are_normalized_and_ports_kept_apart_on_every_runtime() {
    on_every_runtime!(authorities_are_normalized_and_ports_kept_apart);
}

// Docs: "drawing on a retry budget per authority (retries add at most 20 % of the
// authority's calls ...)". A host that drains its own budget leaves another's intact.
async fn each_authority_spends_its_own_budget<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let budget = RetryBudgetPolicy::builder()
            .ratio(0.2)
            .min_per_second(0)
            .build()
            .unwrap();
        let policies = builder(&rt, 1)
            .breaker(None)
            .retry_budget(Some(budget))
            .build()
            .unwrap();
        hosts.script("down:80", |_| Answer::Status(500));
        hosts.script("up:80", |n| Answer::Status(if n == 20 { 502 } else { 200 }));
        for _ in 0..20 {
            assert_eq!(
                status(&send(front, &policies, &hosts, get("http://up/")).await),
                Some(200)
            );
        }
        for _ in 0..100 {
            let _ = send(front, &policies, &hosts, get("http://down/")).await;
        }
        let down = hosts.seen("down:80");
        assert!(
            (101..=125).contains(&down),
            "{front:?}: {down} attempts for 100 calls"
        );
        let outcome = send(front, &policies, &hosts, get("http://up/")).await;
        assert_eq!(
            status(&outcome),
            Some(200),
            "{front:?}: up's own budget pays its retry"
        );
        assert_eq!(hosts.seen("up:80"), 22);
    }
}

#[test]
fn each_authority_spends_its_own_budget_on_every_runtime() {
    on_every_runtime!(each_authority_spends_its_own_budget);
}

// Docs (`Idempotency`, `Overrides`): POST, PATCH and other methods only with an
// Idempotency-Key or an allowance; `no_retry` sends once; `max_attempts` "never more than the
// client allows"; `idempotent` replays whatever the method.
async fn replay_rules_and_overrides<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let policies = builder(&rt, 1).breaker(None).build().unwrap();
        let (none, n) = (Overrides::new(), |k| NonZeroU32::new(k).unwrap());
        let cases = [
            ("PATCH", none, 1),
            ("POST", none, 1),
            ("PURGE", none, 1),
            ("PUT", none, 3),
            ("DELETE", none, 3),
            ("GET", none.max_attempts(n(9)), 3),
            ("GET", none.max_attempts(n(1)), 1),
            ("GET", none.max_attempts(n(2)), 2),
            ("PATCH", none.idempotent(), 3),
            ("POST", none.idempotent().no_retry(), 1),
        ];
        for (i, (method, overrides, expected)) in cases.into_iter().enumerate() {
            let (host, method) = (format!("h{i}:80"), Method::from_bytes(method.as_bytes()));
            hosts.script(&host, |_| Answer::After(503, 1));
            let req = with(
                request(method.unwrap(), &format!("http://h{i}/")),
                overrides,
            );
            let start = rt.now();
            let outcome = send(front, &policies, &hosts, req).await;
            assert_eq!(status(&outcome), Some(503), "{front:?} {host}: as it is");
            assert_eq!(hosts.seen(&host), expected, "{front:?} {host}");
            let waited = secs(u64::from(expected - 1));
            assert_eq!(
                rt.now() - start,
                waited,
                "{front:?} {host}: no wait after the last"
            );
        }
        // The key header can be turned off, and a method allowed instead.
        let strict = builder(&rt, 1)
            .breaker(None)
            .idempotency(Idempotency::standard().key_header(None))
            .build()
            .unwrap();
        let lenient = builder(&rt, 1)
            .breaker(None)
            .idempotency(Idempotency::standard().allow(Method::POST))
            .build()
            .unwrap();
        for (policies, host, expected) in [(&strict, "keyed:80", 1), (&lenient, "allowed:80", 3)] {
            hosts.script(host, |_| Answer::Reset);
            let mut req = request(Method::POST, &format!("http://{host}/"));
            req.headers_mut()
                .insert("idempotency-key", "k-1".parse().unwrap());
            let outcome = send(front, policies, &hosts, req).await;
            assert!(matches!(outcome, Err(Error::Inner(_))));
            assert_eq!(hosts.seen(host), expected, "{front:?} {host}");
        }
    }
}

#[test]
fn replay_rules_and_overrides_on_every_runtime() {
    on_every_runtime!(replay_rules_and_overrides);
}

// Docs: a request "whose body cannot be copied (a stream), is never retried: it is sent once,
// through the breaker, bulkhead, limiter and timeouts, and its response (a 503 included)
// comes back as it is."
async fn a_body_that_cannot_be_copied_is_sent_once_but_counted<R: Runtime>(rt: Clocked<R>) {
    let hosts = Hosts::new(&rt);
    let policies = builder(&rt, 3).build().unwrap();
    let answers = [Answer::After(503, 1), Answer::Reset, Answer::Slow(secs(1))];
    hosts.script("s:80", move |n| answers[n as usize % 3]);
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        let request = Streaming(get("http://s/"));
        outcomes.push(
            policies
                .run(request, Overrides::new().idempotent(), |Streaming(r)| {
                    hosts.send(r)
                })
                .await,
        );
    }
    assert_eq!(status(&outcomes[0]), Some(503));
    assert!(matches!(outcomes[1], Err(Error::Inner(_))));
    assert!(matches!(outcomes[2], Err(Error::TimedOut)));
    assert_eq!(hosts.seen("s:80"), 3);
    let breakers = policies.breakers().unwrap();
    assert_eq!(
        breakers.state(&auth("http://s/")),
        Some(State::Open),
        "three failures, one each"
    );
}

#[test]
fn a_body_that_cannot_be_copied_is_sent_once_but_counted_on_every_runtime() {
    on_every_runtime!(a_body_that_cannot_be_copied_is_sent_once_but_counted);
}

// Docs (`Outbound::authority`): "`None` (a relative URI) skips them [the per-host policies]".
// Even with the authority table full of open breakers.
async fn a_relative_uri_skips_the_per_host_policies<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let policies = builder(&rt, 1).max_authorities(1).build().unwrap();
        hosts.script("down:80", |_| Answer::Reset);
        let _ = send(front, &policies, &hosts, get("http://down/")).await;
        let refused = send(front, &policies, &hosts, get("http://other/")).await;
        assert!(
            matches!(refused, Err(Error::Rejected(Rejected::KeysFull { .. }))),
            "{front:?}: {refused:?}"
        );
        hosts.script("relative", |_| Answer::Status(503));
        for _ in 0..3 {
            let outcome = send(front, &policies, &hosts, get("/items")).await;
            assert_eq!(status(&outcome), Some(503), "{front:?}: {outcome:?}");
        }
        assert_eq!(
            hosts.seen("relative"),
            9,
            "{front:?}: retried, never refused"
        );
        assert_eq!(policies.breakers().unwrap().len(), 1);
        assert!(policies.bulkheads().unwrap().len() <= 1);
        assert_eq!(hosts.seen("down:80"), 1);
    }
}

#[test]
fn a_relative_uri_skips_the_per_host_policies_on_every_runtime() {
    on_every_runtime!(a_relative_uri_skips_the_per_host_policies);
}

// Docs: "a bulkhead per authority (512 calls at once, no queue)", configurable; concurrent
// calls never exceed it at the host, and each authority has its own.
async fn concurrent_calls_stay_within_each_authoritys_bulkhead<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let queued = Bulkhead::builder(2)
            .max_queue(16)
            .max_wait(None::<Duration>);
        let policies = builder(&rt, 100)
            .bulkhead(Some(queued))
            .attempt_timeout(Some(secs(5)))
            .deadline(Some(secs(30)))
            .build()
            .unwrap();
        hosts.script("a:80", |_| Answer::Slow(secs(1)));
        hosts.script("b:80", |_| Answer::Slow(secs(1)));
        let start = rt.now();
        let uris = ["http://a/"; 6].into_iter().chain(["http://b/"; 3]);
        let tasks: Vec<_> = uris
            .map(|uri| spawn_send(&rt, front, &policies, &hosts, get(uri)))
            .collect();
        for task in tasks {
            assert_eq!(status(&task.await.unwrap()), Some(200), "{front:?}");
        }
        assert_eq!(rt.now() - start, secs(3), "{front:?}: three rounds of two");
        let most = |host: &str| (hosts.seen(host), hosts.gauge(host).most());
        assert_eq!((most("a:80"), most("b:80")), ((6, 2), (3, 2)), "{front:?}");
        let bulkheads = policies.bulkheads().unwrap();
        let a = bulkheads.get(&auth("http://a/")).unwrap();
        assert_eq!((a.available(), a.queued()), (2, 0));

        // No queue: the extra calls are refused, retried, refused again; never sent.
        let policies = builder(&rt, 100)
            .bulkhead(Some(Bulkhead::builder(2).reject_when_full()))
            .attempt_timeout(Some(secs(5)))
            .build()
            .unwrap();
        hosts.script("c:80", |_| Answer::Slow(secs(1)));
        let tasks: Vec<_> = (0..5)
            .map(|_| spawn_send(&rt, front, &policies, &hosts, get("http://c/")))
            .collect();
        let mut ok = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => ok += 1,
                Err(e) => assert_eq!(e.rejection(), Some(Rejected::BulkheadFull), "{front:?}"),
            }
        }
        assert_eq!((ok, most("c:80")), (2, (2, 2)), "{front:?}");
    }
}

#[test]
fn concurrent_calls_stay_within_each_authoritys_bulkhead_on_every_runtime() {
    on_every_runtime!(concurrent_calls_stay_within_each_authoritys_bulkhead);
}

// Docs: "optionally, a rate limit per authority", "waited for within the deadline".
async fn the_rate_limit_is_per_authority_and_waited_within_the_deadline<R: Runtime>(
    rt: Clocked<R>,
) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        // No jitter on the waits (the limiter adds some by default), so the instants are exact.
        let limit = KeyedRateLimiter::builder(1, secs(1))
            .burst(1)
            .jitter(Duration::ZERO);
        let policies = builder(&rt, 100).rate_limit(Some(limit)).build().unwrap();
        let start = rt.now();
        let mut at = Vec::new();
        for _ in 0..3 {
            assert_eq!(
                status(&send(front, &policies, &hosts, get("http://a/")).await),
                Some(200)
            );
            assert_eq!(
                status(&send(front, &policies, &hosts, get("http://b/")).await),
                Some(200)
            );
            at.push(rt.now() - start);
        }
        assert_eq!(
            at,
            [Duration::ZERO, secs(1), secs(2)],
            "{front:?}: a and b do not share"
        );
        let hurried = with(
            get("http://a/"),
            Overrides::new().deadline(ms(500)).no_retry(),
        );
        let outcome = send(front, &policies, &hosts, hurried).await;
        assert!(
            matches!(outcome, Err(Error::Rejected(_))),
            "{front:?}: {outcome:?}"
        );
        assert!(
            rt.now() - start <= secs(2) + ms(500),
            "{front:?}: never past the deadline"
        );
        assert_eq!((hosts.seen("a:80"), hosts.seen("b:80")), (3, 3));
    }
}

#[test]
fn the_rate_limit_is_per_authority_and_waited_within_the_deadline_on_every_runtime() {
    on_every_runtime!(the_rate_limit_is_per_authority_and_waited_within_the_deadline);
}

// Docs (`run`): "Cancel safety: dropping the future drops the attempt in flight and every
// permit it holds; nothing is recorded for it."
async fn a_dropped_call_holds_nothing_and_records_nothing<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let queued = Bulkhead::builder(1).max_queue(4).max_wait(None::<Duration>);
        let breaker = CircuitBreaker::builder()
            .consecutive_failures(1)
            .break_duration(secs(1))
            .half_open_probes(1);
        let policies = builder(&rt, 1)
            .breaker(Some(breaker))
            .bulkhead(Some(queued))
            .attempt_timeout(Some(secs(60)))
            .deadline(Some(secs(60)))
            .build()
            .unwrap();
        let (breakers, bulkheads) = (policies.breakers().unwrap(), policies.bulkheads().unwrap());
        // Mid-send.
        let slow = Answer::Slow(secs(10));
        hosts.play("a:80", [slow, slow, Answer::Status(200)]);
        let a = auth("http://a/");
        assert!(dropped(&rt, front, &policies, &hosts, get("http://a/"), secs(1)).await);
        let now = (bulkheads.in_flight(&a), hosts.gauge("a:80").now());
        assert_eq!(now, (0, 0), "{front:?}");
        let calls = breakers.counts(&a).map(|c| c.calls);
        assert_eq!(calls, Some(0), "{front:?}: nothing recorded");
        // Mid-queue: one call holds the only slot, a second waits and is dropped.
        let holder = spawn_send(&rt, front, &policies, &hosts, get("http://a/"));
        rt.sleep(ms(10)).await;
        assert_eq!(hosts.gauge("a:80").now(), 1, "{front:?}: the holder sends");
        assert!(dropped(&rt, front, &policies, &hosts, get("http://a/"), secs(1)).await);
        assert_eq!(status(&holder.await.unwrap()), Some(200));
        let start = rt.now();
        let outcome = send(front, &policies, &hosts, get("http://a/")).await;
        assert_eq!(status(&outcome), Some(200));
        let seen = (rt.now() - start, hosts.seen("a:80"));
        assert_eq!(seen, (Duration::ZERO, 3), "{front:?}");
        let slots = bulkheads.get(&a).unwrap();
        assert_eq!((slots.available(), slots.queued()), (1, 0), "{front:?}");
        // Mid-Retry-After wait: the first attempt was recorded, the rest is dropped.
        hosts.play("b:80", [Answer::After(503, 30), Answer::Status(200)]);
        let no_queue = Some(Bulkhead::builder(1).reject_when_full());
        let other = builder(&rt, 5)
            .bulkhead(no_queue)
            .deadline(Some(secs(60)))
            .build()
            .unwrap();
        assert!(dropped(&rt, front, &other, &hosts, get("http://b/"), secs(1)).await);
        let b = auth("http://b/");
        let counts = other.breakers().unwrap().counts(&b).unwrap();
        let in_flight = other.bulkheads().unwrap().in_flight(&b);
        assert_eq!((counts.calls, counts.failures, in_flight), (1, 1, 0));
        let outcome = send(front, &other, &hosts, get("http://b/")).await;
        assert_eq!(status(&outcome), Some(200));
        // A dropped half-open probe gives its slot back.
        hosts.play("d:80", [Answer::Reset, slow, Answer::Status(200)]);
        let once = || with(get("http://d/"), Overrides::new().no_retry());
        let _ = send(front, &policies, &hosts, once()).await;
        rt.sleep(secs(1)).await;
        assert!(dropped(&rt, front, &policies, &hosts, once(), ms(500)).await);
        let outcome = send(front, &policies, &hosts, once()).await;
        assert_eq!(status(&outcome), Some(200), "{front:?}: the slot came back");
        let d = (breakers.state(&auth("http://d/")), hosts.seen("d:80"));
        assert_eq!(d, (Some(State::Closed), 3));
    }
}

#[test]
fn a_dropped_call_holds_nothing_and_records_nothing_on_every_runtime() {
    on_every_runtime!(a_dropped_call_holds_nothing_and_records_nothing);
}

// Docs: "at most max_authorities ... are tracked at once, idle ones forgotten, never one
// whose breaker is open or whose permits are out."
async fn idle_authorities_make_room_and_open_ones_never_do<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let policies = builder(&rt, 1)
            .breaker(None)
            .max_authorities(2)
            .build()
            .unwrap();
        for host in ["a", "b", "c", "d", "a", "e"] {
            let outcome = send(front, &policies, &hosts, get(&format!("http://{host}/"))).await;
            assert_eq!(status(&outcome), Some(200), "{front:?} {host}: {outcome:?}");
        }
        assert!(policies.bulkheads().unwrap().len() <= 2);

        let policies = builder(&rt, 1).max_authorities(2).build().unwrap();
        hosts.script("down:80", |_| Answer::Reset);
        let _ = send(front, &policies, &hosts, get("http://down/")).await;
        assert_eq!(
            status(&send(front, &policies, &hosts, get("http://up/")).await),
            Some(200)
        );
        let start = rt.now();
        let refused = send(front, &policies, &hosts, get("http://new/")).await;
        assert!(
            matches!(refused, Err(Error::Rejected(Rejected::KeysFull { .. }))),
            "{front:?}: {refused:?}"
        );
        assert_eq!(
            (rt.now() - start, hosts.seen("new:80")),
            (Duration::ZERO, 0),
            "{front:?}"
        );
        rt.sleep(24 * HOUR).await;
        for host in ["new", "up", "other"] {
            let outcome = send(front, &policies, &hosts, get(&format!("http://{host}/"))).await;
            assert_eq!(
                status(&outcome),
                Some(200),
                "{front:?} {host}: idle 'up' makes room: {outcome:?}"
            );
            rt.sleep(24 * HOUR).await;
        }
        let breakers = policies.breakers().unwrap();
        assert_eq!(breakers.len(), 2);
        assert_eq!(
            breakers.state(&auth("http://down/")),
            Some(State::Open),
            "{front:?}: never forgotten"
        );
        assert_eq!(hosts.seen("down:80"), 1);
    }
}

#[test]
fn idle_authorities_make_room_and_open_ones_never_do_on_every_runtime() {
    on_every_runtime!(idle_authorities_make_room_and_open_ones_never_do);
}

// Docs (`build`): "ConfigError::Zero for max_authorities == 0 or a zero deadline or attempt
// timeout; ConfigError::DurationOverflow for a max_retry_after above u64::MAX nanoseconds."
#[test]
fn bad_client_settings_are_typed_errors_and_extremes_build() {
    let err = |b: ClientPoliciesBuilder| b.build().map(|_| ()).unwrap_err();
    assert!(matches!(
        err(ClientPolicies::builder().max_authorities(0)),
        ConfigError::Zero { .. }
    ));
    assert_eq!(
        err(ClientPolicies::builder().deadline(Some(Duration::ZERO))),
        ConfigError::Zero { field: "deadline" }
    );
    assert!(matches!(
        err(ClientPolicies::builder().attempt_timeout(Some(Duration::ZERO))),
        ConfigError::Zero { .. }
    ));
    let over = Duration::from_nanos(u64::MAX) + Duration::from_nanos(1);
    for long in [over, Duration::MAX] {
        assert_eq!(
            err(ClientPolicies::builder().max_retry_after(long)),
            ConfigError::DurationOverflow {
                field: "max_retry_after"
            }
        );
    }
    let longest = ClientPolicies::builder()
        .max_retry_after(Duration::from_nanos(u64::MAX))
        .max_authorities(usize::MAX)
        .deadline(None)
        .attempt_timeout(None)
        .build()
        .unwrap();
    assert_eq!(longest.max_authorities(), usize::MAX);
    let bare = ClientPolicies::builder()
        .breaker(None)
        .bulkhead(None)
        .build()
        .unwrap();
    assert!(
        bare.breakers().is_none() && bare.bulkheads().is_none() && bare.rate_limiters().is_none()
    );
}

// Per-request extremes: a zero deadline has passed before the first attempt; an endless one
// and an endless attempt timeout overflow nothing.
async fn extreme_overrides_neither_panic_nor_send_late<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let policies = builder(&rt, 3).build().unwrap();
        let now = with(get("http://a/"), Overrides::new().deadline(Duration::ZERO));
        let outcome = send(front, &policies, &hosts, now).await;
        assert!(
            matches!(outcome, Err(Error::Rejected(Rejected::DeadlineExceeded))),
            "{front:?}: {outcome:?}"
        );
        assert_eq!(hosts.seen("a:80"), 0);
        let endless = with(
            get("http://a/"),
            Overrides::new()
                .deadline(Duration::MAX)
                .attempt_timeout(Duration::MAX),
        );
        assert_eq!(
            status(&send(front, &policies, &hosts, endless).await),
            Some(200),
            "{front:?}"
        );
        assert_eq!(hosts.seen("a:80"), 1);
    }
}

#[test]
fn extreme_overrides_neither_panic_nor_send_late_on_every_runtime() {
    on_every_runtime!(extreme_overrides_neither_panic_nor_send_late);
}
