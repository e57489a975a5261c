//! Every builder at the edges of its input: a faithful value or a typed error, never a
//! wrap, a silent rounding or a panic. No Redis is needed: connections are made on first
//! use, and these limits are never used.

use std::time::Duration;

use tidewall::ConfigError;
use tidewall::breaker::CircuitBreaker;
use tidewall::rt::Tokio;

use crate::{
    BreakerQuorum, ConnectError, RedisBulkhead, RedisConn, RedisRateLimiter, WhenUnavailable,
};

/// A connection that is never opened (nothing listens on port 1).
fn conn() -> RedisConn {
    RedisConn::open("redis://127.0.0.1:1").expect("a valid URL")
}

fn rate(count: u32, period: Duration, burst: Option<u32>) -> Result<[u64; 3], ConfigError> {
    let mut builder = RedisRateLimiter::builder(&conn(), "builder", count, period);
    if let Some(burst) = burst {
        builder = builder.burst(burst);
    }
    builder.build().map(|limiter| limiter.script_args())
}

fn is_out_of_range(result: Result<impl std::fmt::Debug, ConfigError>, field: &str) -> bool {
    matches!(result, Err(ConfigError::OutOfRange { field: f, .. }) if f == field)
}

#[tokio::test]
async fn the_rate_follows_the_in_process_rule_in_whole_microseconds() {
    let second = Duration::from_secs(1);
    // 1.43 ns per cell: refused here as in process (not rounded to 1 ns, nor to 0 µs).
    assert!(is_out_of_range(rate(700_000_000, second, Some(1)), "count"));
    // 1.001 µs rounded to 1 µs is 0.1001 % faster: refused; 1 µs exactly is not.
    assert!(is_out_of_range(rate(999_000, second, Some(1)), "count"));
    assert_eq!(rate(1_000_000, second, Some(1)), Ok([1, 1, 1]));
    // 3 per second: 333,333.33 µs, rounded down by one part in a billion.
    assert_eq!(rate(3, second, None), Ok([333_333, 3, 1]));
}

#[tokio::test]
async fn the_rate_horizon_stays_exact_in_lua_doubles() {
    let period = Duration::from_micros(1 << 40);
    assert_eq!(rate(1, period, Some(1 << 10)), Ok([1 << 40, 1 << 10, 1]));
    assert!(is_out_of_range(
        rate(1, period, Some((1 << 10) + 1)),
        "burst"
    ));
    // Past u64 nanoseconds, the in-process rule already refuses it.
    assert_eq!(
        rate(1, period, Some(u32::MAX)),
        Err(ConfigError::DurationOverflow { field: "burst" })
    );
    assert_eq!(
        rate(1, Duration::MAX, Some(1)),
        Err(ConfigError::DurationOverflow { field: "period" })
    );
    // The local share keeps the in-process rule too (its interval is only longer).
    let local = RedisRateLimiter::builder(&conn(), "builder", 1_000_000, Duration::from_secs(1))
        .when_unavailable(WhenUnavailable::Local { share: 0.3 })
        .build();
    assert!(local.is_ok(), "{local:?}");
}

#[tokio::test]
async fn deadlines_and_leases_fit_the_clocks_they_are_added_to() {
    let bulkhead = |lease: Duration, deadline: Duration| {
        RedisBulkhead::builder(&conn(), "builder", 4)
            .lease(lease)
            .deadline(deadline)
            .build()
            .map(drop)
    };
    let ms = Duration::from_millis;
    assert_eq!(bulkhead(ms(3), ms(10)), Ok(()));
    assert!(is_out_of_range(
        bulkhead(Duration::from_micros(2_999), ms(10)),
        "lease"
    ));
    assert!(is_out_of_range(
        bulkhead(Duration::from_micros((1 << 50) + 1), ms(10)),
        "lease"
    ));
    assert_eq!(
        bulkhead(Duration::MAX, ms(10)),
        Err(ConfigError::DurationOverflow { field: "lease" })
    );
    assert_eq!(
        bulkhead(ms(3), Duration::MAX),
        Err(ConfigError::DurationOverflow { field: "deadline" })
    );
    assert_eq!(
        bulkhead(ms(3), Duration::ZERO),
        Err(ConfigError::Zero { field: "deadline" })
    );
}

#[tokio::test]
async fn a_quorum_report_lives_three_whole_periods() {
    let quorum = |every: Duration| {
        let breaker = CircuitBreaker::builder()
            .runtime(Tokio)
            .build()
            .expect("default breaker");
        BreakerQuorum::builder(&conn(), "builder", breaker)
            .every(every)
            .build()
            .map(drop)
    };
    assert_eq!(quorum(Duration::from_millis(500)), Ok(()));
    // 3 × 100 ns is under a microsecond: the report would expire as it is written.
    assert!(is_out_of_range(quorum(Duration::from_nanos(100)), "every"));
    assert!(is_out_of_range(
        quorum(Duration::from_micros(1 << 50)),
        "every"
    ));
    assert_eq!(
        quorum(Duration::MAX),
        Err(ConfigError::DurationOverflow { field: "every" })
    );
    assert_eq!(
        quorum(Duration::ZERO),
        Err(ConfigError::Zero { field: "every" })
    );
}

/// r5 finding 3: a zero lease is `Zero`, as a zero limit and a zero deadline are, not the
/// `OutOfRange` of a lease under 3 ms.
#[tokio::test]
async fn a_zero_lease_is_zero() {
    let build = |lease: Duration| {
        RedisBulkhead::builder(&conn(), "builder", 4)
            .lease(lease)
            .build()
            .map(drop)
    };
    assert_eq!(
        build(Duration::ZERO),
        Err(ConfigError::Zero { field: "lease" })
    );
    assert!(is_out_of_range(build(Duration::from_nanos(1)), "lease"));
}

/// r5 finding 10: the quorum's `when_unavailable` is validated as the limits' is (and
/// otherwise changes nothing).
#[tokio::test]
async fn the_quorums_failure_policy_is_validated_like_the_limits() {
    let quorum = |policy: WhenUnavailable| {
        let breaker = CircuitBreaker::builder()
            .runtime(Tokio)
            .build()
            .expect("default breaker");
        BreakerQuorum::builder(&conn(), "builder", breaker)
            .when_unavailable(policy)
            .build()
            .map(drop)
    };
    for share in [2.0, 0.0, -0.5, f64::NAN, f64::INFINITY] {
        assert!(
            is_out_of_range(quorum(WhenUnavailable::Local { share }), "share"),
            "{share}"
        );
    }
    for policy in [
        WhenUnavailable::Open,
        WhenUnavailable::Closed,
        WhenUnavailable::Local { share: 0.5 },
    ] {
        assert_eq!(quorum(policy), Ok(()));
    }
}

/// r5 finding 12: a username without a password would not be sent (redis-rs authenticates
/// only with one), and the connection would run as `default`: refused before anything is
/// sent, for a server and a cluster, from the builder or the URL. (Nothing listens on port
/// 1: anything sent would be `Unreachable`.)
#[tokio::test]
async fn a_username_without_a_password_is_invalid() {
    for builder in [
        RedisConn::builder("redis://127.0.0.1:1").username("tidewall"),
        RedisConn::builder("redis://tidewall@127.0.0.1:1"),
        RedisConn::cluster_builder(["redis://127.0.0.1:1"]).username("tidewall"),
        RedisConn::cluster_builder(["redis://tidewall@127.0.0.1:1"]),
    ] {
        let error = builder.connect().await.unwrap_err();
        assert!(
            matches!(error, ConnectError::InvalidSettings { .. }),
            "{error:?}"
        );
    }
    // With a password, from either place, it is sent (and here unreachable).
    for builder in [
        RedisConn::builder("redis://127.0.0.1:1")
            .username("tidewall")
            .password("secret"),
        RedisConn::builder("redis://tidewall:secret@127.0.0.1:1"),
        RedisConn::builder("redis://tidewall@127.0.0.1:1").password("secret"),
        RedisConn::cluster_builder(["redis://127.0.0.1:1"])
            .username("tidewall")
            .password("secret"),
    ] {
        let error = builder
            .connect_timeout(Duration::from_millis(500))
            .connect()
            .await
            .unwrap_err();
        assert!(
            matches!(error, ConnectError::Unreachable { .. }),
            "{error:?}"
        );
    }
}
