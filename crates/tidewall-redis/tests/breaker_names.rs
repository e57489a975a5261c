//! The breaker around Redis reports under its limit's kind and name (`redis:<kind>:<name>`),
//! so two limits on a failing Redis count in series of their own. One test: it installs the
//! global metrics recorder.

mod common;

use std::time::Duration;

use metrics_util::debugging::DebugValue;
use tidewall::Rejected;
use tidewall_redis::{RedisRateLimiter, WhenUnavailable};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_limits_breaker_around_redis_counts_under_its_own_name() {
    let snapshotter = common::metrics::install_recorder();
    // A port nothing listens on: every call fails at once.
    let conn = common::unreachable_conn();
    for (name, calls) in [("a", 2), ("b", 3)] {
        let limiter = RedisRateLimiter::builder(&conn, name, 10, Duration::from_secs(1))
            .deadline(Duration::from_millis(200))
            .when_unavailable(WhenUnavailable::Closed)
            .build()
            .unwrap();
        for _ in 0..calls {
            assert_eq!(limiter.check().await, Err(Rejected::BackendUnavailable));
        }
    }
    // One snapshot: taking one resets the counters.
    let snapshot = snapshotter.snapshot().into_vec();
    let failures = |name: &str| {
        snapshot.iter().find_map(|(key, _, _, value)| {
            let key = key.key();
            let label = |k: &str, v: &str| key.labels().any(|l| l.key() == k && l.value() == v);
            (key.name() == "tidewall_calls_total"
                && label("policy", "breaker")
                && label("name", name)
                && label("outcome", "failure"))
            .then_some(value)
        })
    };
    assert_eq!(failures("redis:rate:a"), Some(&DebugValue::Counter(2)));
    assert_eq!(failures("redis:rate:b"), Some(&DebugValue::Counter(3)));
    assert_eq!(failures("redis"), None, "no series shared by every limit");
    assert_eq!(failures("redis:a"), None, "the kind is in the name");
}
