//! Black-box test of what each limit's breaker around Redis reports with tidewall's `metrics`
//! feature, from the crate docs only: "a breaker named `redis:<kind>:<name>` (`rate`,
//! `bulkhead` or `quorum`, and the limit's name, as given; the partitions of one name share
//! it): its calls by outcome, its transitions, and its refusals while open (`circuit_open`), counted
//! even when the policy then admits. A limit's own refusals count [...] in
//! `tidewall_rejections_total{policy, name, reason}` [...] with `policy` `redis_rate` or
//! `redis_bulkhead` and `name` the limit's name (partitions share it): each answer that
//! refuses [...] once per call." One test: it installs the global recorder.

mod common;

use std::time::Duration;

use common::metrics::Counters;
use common::{RedisServer, eventually, hourly};
use tidewall::Rejected;
use tidewall_redis::{RedisBulkhead, RedisConn, RedisRateLimiter, WhenUnavailable};

fn rate(
    conn: &RedisConn,
    name: &str,
    partition: &str,
    policy: WhenUnavailable,
) -> RedisRateLimiter {
    hourly(conn, name, partition, 2, policy, Duration::from_secs(1))
}

fn bulkhead(
    conn: &RedisConn,
    name: &str,
    lease: Duration,
    policy: WhenUnavailable,
) -> RedisBulkhead {
    RedisBulkhead::builder(conn, name, 1)
        .lease(lease)
        .deadline(Duration::from_secs(1))
        .when_unavailable(policy)
        .build()
        .unwrap()
}

/// The name needs escaping in keys; the series carry it as given. Three partitions of it
/// (two failing open, one closed) and a bulkhead failing open run as a user whose keys an ACL
/// change takes away; a healthy rate limit and bulkhead refuse on their own meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_breaker_around_redis_reports_calls_transitions_and_open_refusals_as_redis_kind_and_name()
 {
    const ODD: &str = "m:{r}%";
    const SERIES: &str = "redis:rate:m:{r}%";
    let snapshotter = common::metrics::install_recorder();

    let server = RedisServer::start();
    server.acl_setuser("metered", "on >pw ~* &* +@all");
    let metered = RedisConn::builder(server.url())
        .username("metered")
        .password("pw")
        .connect()
        .await
        .unwrap();
    let healthy = RedisConn::builder(server.url()).connect().await.unwrap();
    let open_a = rate(&metered, ODD, "p-a", WhenUnavailable::Open);
    let open_b = rate(&metered, ODD, "p-b", WhenUnavailable::Open);
    let closed_c = rate(&metered, ODD, "p-c", WhenUnavailable::Closed);
    let open_bulkhead = bulkhead(
        &metered,
        "mb",
        Duration::from_secs(30),
        WhenUnavailable::Open,
    );
    let healthy_rate = rate(&healthy, "healthy-rate", "default", WhenUnavailable::Closed);
    // Renewed every 20 ms while held: renewals go past the breaker.
    let healthy_bulkhead = bulkhead(
        &healthy,
        "healthy-bh",
        Duration::from_millis(60),
        WhenUnavailable::Closed,
    );

    // 1. Healthy: answers, the limits' own refusals, renewals and a release.
    open_a.check().await.unwrap();
    assert_eq!(healthy_rate.check().await, Ok(()));
    assert_eq!(healthy_rate.check().await, Ok(()));
    for _ in 0..3 {
        assert!(matches!(
            healthy_rate.check().await,
            Err(Rejected::RateLimited { .. })
        ));
    }
    let held = healthy_bulkhead.try_acquire().await.unwrap();
    assert!(held.is_shared());
    assert_eq!(
        healthy_bulkhead.try_acquire().await.map(drop),
        Err(Rejected::BulkheadFull)
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    drop(held);
    server.until_no_lease(healthy_bulkhead.key()).await;
    let healthy_phase = Counters::take(&snapshotter);
    assert_eq!(
        healthy_phase.calls(SERIES, "success"),
        1,
        "{:?}",
        healthy_phase.0
    );
    // Two admissions and one denial from Redis; the later denials are remembered locally.
    assert_eq!(healthy_phase.calls("redis:rate:healthy-rate", "success"), 3);
    // Two acquires; the ~30 renewals and the release go past the breaker.
    assert_eq!(
        healthy_phase.calls("redis:bulkhead:healthy-bh", "success"),
        2,
        "renewals or the release counted as calls of the breaker"
    );
    for name in [
        "redis:rate:healthy-rate",
        "redis:bulkhead:healthy-bh",
        SERIES,
    ] {
        assert_eq!(healthy_phase.calls(name, "failure"), 0, "{name}");
    }
    // The limits' own refusals: three rate denials (one from Redis, two remembered), one
    // full bulkhead; nothing else refused.
    for (policy, name, reason, count) in [
        ("redis_rate", "healthy-rate", "rate_limited", 3),
        ("redis_bulkhead", "healthy-bh", "bulkhead_full", 1),
    ] {
        let wanted = [("policy", policy), ("name", name), ("reason", reason)];
        assert_eq!(
            healthy_phase.sum("tidewall_rejections_total", &wanted),
            count,
            "{wanted:?}: {:?}",
            healthy_phase.0
        );
    }
    assert_eq!(
        healthy_phase.sum("tidewall_rejections_total", &[]),
        4,
        "{:?}",
        healthy_phase.0
    );

    // 2. The ACL takes the keys away: every call answered NOPERM, until each breaker opens.
    server.acl_setuser("metered", "resetkeys ~other:*");
    for _ in 0..20 {
        assert_eq!(open_a.check().await, Ok(()));
        assert_eq!(open_b.check().await, Ok(()));
        assert_eq!(closed_c.check().await, Err(Rejected::BackendUnavailable));
        let permit = open_bulkhead.try_acquire().await.unwrap();
        assert!(!permit.is_shared());
    }
    let failing = Counters::take(&snapshotter);
    let (failures, refusals) = (
        failing.calls(SERIES, "failure"),
        failing.circuit_open(SERIES),
    );
    assert!(
        failures >= 3 && refusals >= 3,
        "each of three breakers fails, opens and refuses: {failures} failures, \
         {refusals} refusals"
    );
    assert_eq!(
        failures + refusals,
        60,
        "each of the 60 decisions is one failed call or one refusal while open \
         (admitted by the open policy or not)"
    );
    assert_eq!(failing.calls(SERIES, "success"), 0);
    // Only the closed partition refuses; the open ones and the open bulkhead admit.
    assert_eq!(
        failing.sum(
            "tidewall_rejections_total",
            &[("policy", "redis_rate"), ("name", ODD)]
        ),
        20,
        "{:?}",
        failing.0
    );
    assert_eq!(
        failing.sum(
            "tidewall_rejections_total",
            &[("policy", "redis_rate"), ("reason", "backend_unavailable")]
        ),
        20
    );
    assert_eq!(
        failing.sum("tidewall_rejections_total", &[("policy", "redis_bulkhead")]),
        0
    );
    assert!(failing.transitions(SERIES, "open") >= 3, "{:?}", failing.0);
    let (failures, refusals) = (
        failing.calls("redis:bulkhead:mb", "failure"),
        failing.circuit_open("redis:bulkhead:mb"),
    );
    assert!(failures >= 1 && refusals >= 1, "{failures}, {refusals}");
    assert_eq!(failures + refusals, 20, "the bulkhead's 20 acquires");
    assert!(failing.transitions("redis:bulkhead:mb", "open") >= 1);
    // Named by the limit's name as given: never by its partition, its escaped form, nor one
    // series shared by every limit.
    for name in failing.names().iter().chain(healthy_phase.names().iter()) {
        assert!(
            !name.contains("p-a")
                && !name.contains("p-b")
                && !name.contains("p-c")
                && !name.contains("%3A")
                && name != "redis",
            "a series named {name:?}"
        );
    }

    // 3. Keys given back: the closed partition's breaker probes and closes again.
    server.acl_setuser("metered", "~*");
    eventually(async || closed_c.check().await.ok()).await;
    let healed = Counters::take(&snapshotter);
    assert!(
        healed.transitions(SERIES, "half_open") >= 1,
        "{:?}",
        healed.0
    );
    assert!(healed.transitions(SERIES, "closed") >= 1, "{:?}", healed.0);
    assert!(healed.calls(SERIES, "success") >= 1);
}
