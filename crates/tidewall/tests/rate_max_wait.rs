//! A rate limiter's `max_wait`: the longest any front waits for a cell before refusing with
//! the limiter's own `RateLimited` and its hint — `until_ready`, a pipeline's admission, a
//! tower layer's wait, a keyed limiter's wait — and a reload that changes it.
#![cfg(all(
    feature = "tokio",
    feature = "test-util",
    feature = "tower",
    feature = "toml"
))]

use std::convert::Infallible;
use std::time::Duration;

use proptest::prelude::*;
use tidewall::config::{Config, Registry};
use tidewall::pipeline::Pipeline;
use tidewall::rate::{KeyedRateLimiter, RateLimiter};
use tidewall::testing::FakeClock;
use tidewall::tower::{AdmitLayer, AdmitMode};
use tidewall::{Deadline, Error, Rejected};
use tower_layer::Layer;
use tower_service::Service;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// One cell a second, no jitter, waiting at most `max_wait`.
fn limiter(max_wait: Option<Duration>) -> RateLimiter {
    RateLimiter::builder(1, Duration::from_secs(1))
        .jitter(Duration::ZERO)
        .max_wait(max_wait)
        .build()
        .unwrap()
}

const ONE_SECOND: Rejected = Rejected::RateLimited {
    retry_after: Duration::from_secs(1),
};

#[tokio::test(start_paused = true)]
async fn until_ready_waits_up_to_max_wait_and_refuses_with_the_hint_beyond() {
    let start = tokio::time::Instant::now();
    let limiter = limiter(Some(ms(500)));
    limiter.until_ready().await.unwrap();
    assert_eq!(limiter.until_ready().await, Err(ONE_SECOND));
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "refused at once, not after waiting"
    );
    tokio::time::advance(ms(500)).await;
    // 500 ms away: exactly max_wait, waited out.
    limiter.until_ready().await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    // The caller's deadline still bounds a wait max_wait allows.
    tokio::time::advance(ms(600)).await;
    let deadline = Deadline::after(&tidewall::rt::Tokio, ms(100));
    assert_eq!(
        limiter.until_ready_before(deadline).await,
        Err(Rejected::DeadlineExceeded)
    );
}

#[tokio::test(start_paused = true)]
async fn zero_never_waits_and_none_waits_for_the_deadline() {
    let never = limiter(Some(Duration::ZERO));
    never.check().unwrap();
    assert_eq!(never.until_ready().await, Err(ONE_SECOND));
    let patient = limiter(None);
    patient.check().unwrap();
    let start = tokio::time::Instant::now();
    patient.until_ready().await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_pipeline_refuses_with_the_limiters_hint_instead_of_waiting() {
    let pipeline = Pipeline::builder()
        .deadline(Duration::from_secs(60))
        .rate_limit(limiter(Some(Duration::ZERO)))
        .build()
        .unwrap();
    assert_eq!(pipeline.call(|| async { Ok::<_, ()>(1) }).await, Ok(1));
    assert_eq!(
        pipeline.call(|| async { Ok::<_, ()>(2) }).await,
        Err(Error::Rejected(ONE_SECOND))
    );
}

#[derive(Clone)]
struct Echo;

impl Service<u32> for Echo {
    type Response = u32;
    type Error = Error<Infallible>;
    type Future = std::future::Ready<Result<u32, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, x: u32) -> Self::Future {
        std::future::ready(Ok(x))
    }
}

#[tokio::test(start_paused = true)]
async fn a_tower_layer_waiting_in_the_call_stops_at_max_wait() {
    let mut service = AdmitLayer::new(limiter(Some(ms(300))), AdmitMode::WaitCall).layer(Echo);
    assert_eq!(service.call(1).await, Ok(1));
    assert_eq!(service.call(2).await, Err(Error::Rejected(ONE_SECOND)));
    tokio::time::advance(ms(700)).await;
    assert_eq!(service.call(3).await, Ok(3), "300 ms away: waited out");
}

#[tokio::test(start_paused = true)]
async fn a_keyed_limiters_wait_stops_at_max_wait() {
    let per_key = RateLimiter::builder(1, Duration::from_secs(1))
        .jitter(Duration::ZERO)
        .max_wait(ms(200))
        .keyed()
        .build::<u8>()
        .unwrap();
    per_key.check_key(&1).unwrap();
    assert_eq!(
        per_key.until_key_ready_before(&1, Deadline::none()).await,
        Err(ONE_SECOND)
    );
    // Another key is not held back.
    per_key
        .until_key_ready_before(&2, Deadline::none())
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn reconfigure_and_a_reload_change_max_wait() {
    let limiter = limiter(None);
    limiter
        .reconfigure(
            RateLimiter::builder(1, Duration::from_secs(1))
                .jitter(Duration::ZERO)
                .max_wait(Duration::ZERO),
        )
        .unwrap();
    limiter.check().unwrap();
    assert_eq!(limiter.until_ready().await, Err(ONE_SECOND));

    let text = |wait: &str| {
        format!(
            "[instances.api.rate_limit]\ncount = 1\nperiod = \"1s\"\njitter = \"0s\"\nmax_wait = {wait}\n"
        )
    };
    let registry = Registry::new(Config::from_toml(&text("\"0s\"")).unwrap()).unwrap();
    let api = registry.rate_limiter("api").unwrap();
    api.check().unwrap();
    assert_eq!(api.until_ready().await, Err(ONE_SECOND));
    registry
        .reload(Config::from_toml(&text("\"off\"")).unwrap())
        .unwrap();
    let start = tokio::time::Instant::now();
    api.until_ready().await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    let refused = Config::from_toml(&text("\"1s\"\nmax_wai = \"1s\"")).unwrap_err();
    assert!(refused.to_string().contains("max_wai"), "{refused}");
}

#[test]
fn a_max_wait_beyond_u64_nanoseconds_is_refused() {
    let refused = RateLimiter::builder(1, Duration::from_secs(1))
        .max_wait(Duration::MAX)
        .build()
        .unwrap_err();
    assert_eq!(
        refused,
        tidewall::ConfigError::DurationOverflow { field: "max_wait" }
    );
    let refused = KeyedRateLimiter::builder(1, Duration::from_secs(1))
        .max_wait(Duration::MAX)
        .build::<u8>()
        .unwrap_err();
    assert_eq!(
        refused,
        tidewall::ConfigError::DurationOverflow { field: "max_wait" }
    );
}

proptest! {
    /// Over the whole range: a wait is refused at once exactly when it would end past
    /// `max_wait`, and then with the limiter's exact hint.
    #[test]
    fn refused_exactly_when_the_wait_ends_past_max_wait(
        max_wait_nanos in any::<u64>(),
        elapsed_nanos in 0_u64..2_000_000_000,
    ) {
        let clock = FakeClock::new();
        let limiter = RateLimiter::builder(1, Duration::from_secs(1))
            .jitter(Duration::ZERO)
            .max_wait(Duration::from_nanos(max_wait_nanos))
            .runtime(clock.clone())
            .build()
            .unwrap();
        limiter.check().unwrap();
        clock.advance(Duration::from_nanos(elapsed_nanos));
        let wait = Duration::from_secs(1).saturating_sub(Duration::from_nanos(elapsed_nanos));
        let mut waiting = std::pin::pin!(limiter.until_ready());
        let first = futures_util::FutureExt::now_or_never(waiting.as_mut());
        if wait.is_zero() {
            prop_assert_eq!(first, Some(Ok(())));
        } else if wait > Duration::from_nanos(max_wait_nanos) {
            prop_assert_eq!(first, Some(Err(Rejected::RateLimited { retry_after: wait })));
        } else {
            prop_assert_eq!(first, None, "waits for {:?}", wait);
            clock.advance(wait);
            prop_assert_eq!(futures_util::FutureExt::now_or_never(waiting), Some(Ok(())));
        }
    }
}
