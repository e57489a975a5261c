//! `Overrides::priority`: a request's attempts are admitted within their priority's share of
//! the host's adaptive limit, from code and from a configuration file; without an adaptive
//! limit the priority changes nothing.
#![cfg(all(feature = "http", feature = "toml", feature = "tokio"))]

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tidewall::adaptive::{AdaptiveLimiter, Aimd, AnyAlgorithm};
use tidewall::admission::Priority;
use tidewall::config::{Config, Registry};
use tidewall::http::{ClientPolicies, Overrides};
use tidewall::{Error, Rejected};

type Answer = Result<http::Response<()>, Error<std::io::Error>>;
type Request = Pin<Box<dyn Future<Output = Answer>>>;

/// A request to `host` whose send never answers (it holds its slot while it is kept), or
/// answers 200 at once.
fn request(policies: &ClientPolicies, host: &str, priority: Priority, hangs: bool) -> Request {
    let policies = policies.clone();
    let request = http::Request::get(format!("http://{host}/"))
        .body(())
        .unwrap();
    let overrides = Overrides::new().priority(priority).no_retry();
    Box::pin(async move {
        policies
            .run(request, overrides, move |_request| async move {
                if hangs {
                    std::future::pending::<()>().await;
                }
                Ok(http::Response::new(()))
            })
            .await
    })
}

/// Polls `request` once: `None` while it is in flight.
fn poll_once(request: &mut Request) -> Option<Answer> {
    match request
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(answer) => Some(answer),
        Poll::Pending => None,
    }
}

fn refused(answer: Option<Answer>) -> bool {
    matches!(answer, Some(Err(Error::Rejected(Rejected::BulkheadFull))))
}

/// A fixed limit of 5 per host, no queue: `default` admitted while fewer than 4 are in
/// flight, `sheddable` while fewer than 2.5.
fn policies() -> ClientPolicies {
    let fixed = Aimd::builder()
        .min_limit(5)
        .initial_limit(5)
        .max_limit(5)
        .build()
        .unwrap();
    ClientPolicies::builder()
        .bulkhead(None)
        .adaptive(Some(
            AdaptiveLimiter::builder(AnyAlgorithm::from(fixed))
                .share(Priority::Default, 0.8)
                .share(Priority::Sheddable, 0.5),
        ))
        .build()
        .unwrap()
}

/// Fills `host` from its default priority's share down: checks each priority's edge.
fn each_priority_stops_at_its_share(policies: &ClientPolicies, host: &str) {
    let mut held: Vec<Request> = Vec::new();
    for _ in 0..3 {
        let mut hanging = request(policies, host, Priority::Sheddable, true);
        assert!(
            poll_once(&mut hanging).is_none(),
            "fewer than 2.5: sheddable admitted"
        );
        held.push(hanging);
    }
    let mut fourth = request(policies, host, Priority::Sheddable, false);
    assert!(refused(poll_once(&mut fourth)), "3 of 5: sheddable refused");
    let mut default = request(policies, host, Priority::Default, true);
    assert!(poll_once(&mut default).is_none(), "3 of 5, fewer than 4");
    held.push(default);
    let mut default = request(policies, host, Priority::Default, false);
    assert!(refused(poll_once(&mut default)), "4 of 5: default refused");
    let mut critical = request(policies, host, Priority::Critical, true);
    assert!(
        poll_once(&mut critical).is_none(),
        "critical has the whole limit"
    );
    held.push(critical);
    let mut critical = request(policies, host, Priority::Critical, false);
    assert!(refused(poll_once(&mut critical)), "5 of 5");
    // Another host has its own limit; the slots come back as the requests are dropped.
    let mut elsewhere = request(policies, "other.test", Priority::Sheddable, false);
    assert!(matches!(poll_once(&mut elsewhere), Some(Ok(_))));
    let limits = policies.adaptive_limiters().unwrap();
    let key = tidewall::http::Authority::new("http", host, None).unwrap();
    assert_eq!(limits.in_flight(&key), 5);
    drop(held);
    assert_eq!(limits.in_flight(&key), 0);
    let mut sheddable = request(policies, host, Priority::Sheddable, false);
    assert!(matches!(poll_once(&mut sheddable), Some(Ok(_))));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn each_priority_is_admitted_within_its_share_of_the_hosts_limit() {
    each_priority_stops_at_its_share(&policies(), "busy.test");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_configured_client_admits_by_the_requests_priority() {
    let registry = Registry::new(
        Config::from_toml(
            r#"
            [instances.outbound]
            http = {}
            [instances.outbound.adaptive]
            algorithm = "aimd"
            min_limit = 5
            initial_limit = 5
            max_limit = 5
            max_queue = 0
            default_share = 0.8
            sheddable_share = 0.5
            "#,
        )
        .unwrap(),
    )
    .unwrap();
    let outbound = registry.http_client("outbound").unwrap();
    each_priority_stops_at_its_share(&outbound, "configured.test");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn without_an_adaptive_limit_the_priority_changes_nothing() {
    let policies = ClientPolicies::builder()
        .bulkhead(Some(tidewall::bulkhead::Bulkhead::builder(1).max_queue(0)))
        .build()
        .unwrap();
    let mut held = request(&policies, "one.test", Priority::Sheddable, true);
    assert!(poll_once(&mut held).is_none(), "a bulkhead has no shares");
    let mut critical = request(&policies, "one.test", Priority::Critical, false);
    assert!(
        refused(poll_once(&mut critical)),
        "nor any order of priority"
    );
    drop(held);
    let mut after = request(&policies, "one.test", Priority::Critical, false);
    assert!(matches!(poll_once(&mut after), Some(Ok(_))));
}
