//! The advisory breaker quorum against a real redis-server: refreshes driven by hand, so
//! every step is deterministic.

mod common;

use std::time::Duration;

use common::RedisServer;
use tidewall::breaker::{CircuitBreaker, State};
use tidewall::rt::Tokio;
use tidewall_redis::{BreakerQuorum, RedisConn};

/// A breaker that opens on its first failure and stays open for a minute.
fn breaker() -> CircuitBreaker<Tokio> {
    CircuitBreaker::builder()
        .consecutive_failures(1)
        .break_duration(Duration::from_secs(60))
        .runtime(Tokio)
        .build()
        .unwrap()
}

fn trip(breaker: &CircuitBreaker<Tokio>) {
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Open);
}

/// Three instances of one service, each with its breaker and its quorum layer. The
/// refreshes are driven by hand, so time plays no part in what these tests check: a 2 s
/// deadline covers a first connect on a loaded machine, and a period of a minute keeps every
/// instance live however long the machine stalls between two refreshes.
fn instances(server: &RedisServer) -> Vec<(CircuitBreaker<Tokio>, BreakerQuorum)> {
    (0..3)
        .map(|i| {
            let conn = RedisConn::open(server.url()).unwrap();
            let breaker = breaker();
            let quorum = BreakerQuorum::builder(&conn, "payments", breaker.clone())
                .instance(&format!("pod-{i}"))
                .quorum(0.5)
                .every(Duration::from_secs(60))
                .deadline(Duration::from_secs(2))
                .build()
                .unwrap();
            (breaker, quorum)
        })
        .collect()
}

async fn refresh_all(instances: &[(CircuitBreaker<Tokio>, BreakerQuorum)]) {
    for (_, quorum) in instances {
        quorum.refresh().await.unwrap();
    }
}

#[tokio::test]
async fn a_quorum_of_open_breakers_opens_the_rest_and_lets_go_when_it_heals() {
    let server = RedisServer::start();
    let pods = instances(&server);
    refresh_all(&pods).await;
    // One of three open: below the quorum of one half.
    trip(&pods[0].0);
    refresh_all(&pods).await;
    let view = pods[2].1.refresh().await.unwrap();
    assert_eq!((view.open, view.live, view.forced_open), (1, 3, false));
    assert_eq!(pods[2].0.state(), State::Closed);
    // Two of three: the third is forced open without a failure of its own.
    trip(&pods[1].0);
    refresh_all(&pods).await;
    let view = pods[2].1.refresh().await.unwrap();
    assert_eq!((view.open, view.live, view.forced_open), (2, 3, true));
    assert_eq!(pods[2].0.state(), State::ForcedOpen);
    // The forced one does not count itself open: still two reports, not three.
    assert_eq!(pods[0].1.refresh().await.unwrap().open, 2);
    // The dependency heals: the two reset; the quorum is gone, and so is the force.
    pods[0].0.reset();
    pods[1].0.reset();
    refresh_all(&pods).await;
    let view = pods[2].1.refresh().await.unwrap();
    assert_eq!((view.open, view.forced_open), (0, false));
    assert_eq!(pods[2].0.state(), State::Closed);
}

#[tokio::test]
async fn a_breaker_forced_by_hand_is_left_alone() {
    let server = RedisServer::start();
    let pods = instances(&server);
    pods[2].0.force_closed();
    trip(&pods[0].0);
    trip(&pods[1].0);
    refresh_all(&pods).await;
    assert_eq!(pods[2].0.state(), State::ForcedClosed);
}

#[tokio::test]
async fn without_redis_the_layer_lets_go_of_what_it_forced() {
    let mut server = RedisServer::start();
    let pods = instances(&server);
    trip(&pods[0].0);
    trip(&pods[1].0);
    refresh_all(&pods).await;
    refresh_all(&pods).await;
    assert_eq!(pods[2].0.state(), State::ForcedOpen);
    server.kill();
    assert!(pods[2].1.refresh().await.is_err());
    assert_eq!(
        pods[2].0.state(),
        State::Closed,
        "the local breaker decides alone again"
    );
}

/// An instance that stops reporting still counts just after its report, and no longer
/// after three periods (3 s here: a loaded machine's stall between the first two reports
/// cannot reach that).
#[tokio::test]
async fn silent_instances_are_forgotten_after_three_periods() {
    let server = RedisServer::start();
    let conn = RedisConn::open(server.url()).unwrap();
    let quick = |id: &str, breaker: &CircuitBreaker<Tokio>| {
        BreakerQuorum::builder(&conn, "forgetful", breaker.clone())
            .instance(id)
            .every(Duration::from_secs(1))
            .deadline(Duration::from_secs(2))
            .build()
            .unwrap()
    };
    let (gone, here) = (breaker(), breaker());
    trip(&gone);
    quick("gone", &gone).refresh().await.unwrap();
    let view = quick("here", &here).refresh().await.unwrap();
    assert_eq!((view.open, view.live), (1, 2));
    // "gone" never reports again: after three periods (3 s) it no longer counts.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let view = quick("here", &here).refresh().await.unwrap();
    assert_eq!((view.open, view.live, view.forced_open), (0, 1, false));
}

#[tokio::test]
async fn bad_configurations_are_typed_errors() {
    let conn = RedisConn::open("redis://127.0.0.1:1").unwrap();
    let build = |quorum: f64, every: Duration| {
        BreakerQuorum::builder(&conn, "bad", breaker())
            .quorum(quorum)
            .every(every)
            .build()
    };
    assert!(build(0.0, Duration::from_secs(1)).is_err());
    assert!(build(1.5, Duration::from_secs(1)).is_err());
    assert!(build(0.5, Duration::ZERO).is_err());
    assert!(build(0.5, Duration::from_secs(1)).is_ok());
}

/// Dropping the `Refreshing` handles of `spawn` lets go of a breaker the layer forced open:
/// nobody refreshes any more, so nothing else ever would (r5 finding 7: it stayed
/// `ForcedOpen`, refusing every call).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_refresh_lets_go_of_what_it_forced() {
    let server = RedisServer::start();
    let conn = RedisConn::open(server.url()).unwrap();
    let (a, b) = (breaker(), breaker());
    let layer = |id: &str, breaker: &CircuitBreaker<Tokio>| {
        BreakerQuorum::builder(&conn, "dropped", breaker.clone())
            .instance(id)
            .quorum(0.5)
            // A report lives three periods (1.5 s): a loaded machine's stall of a refresh
            // task must not let `a`'s report lapse while the test looks.
            .every(Duration::from_millis(500))
            .deadline(Duration::from_secs(1))
            .build()
            .unwrap()
    };
    let (quorum_a, quorum_b) = (layer("a", &a), layer("b", &b));
    let refreshing = [quorum_a.spawn(), quorum_b.spawn()];
    trip(&a);
    common::eventually(async || (b.state() == State::ForcedOpen).then_some(())).await;
    drop(refreshing);
    assert_eq!(b.state(), State::Closed, "let go when the refresh stopped");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b.state(), State::Closed);
    assert_eq!(
        a.state(),
        State::Open,
        "a breaker open on its own evidence is left alone"
    );
    // The layers lived until here: the handles let go, not the layers' own drop.
    drop((quorum_a, quorum_b));
}

/// Two `Refreshing` handles of one layer (say, one per server worker): dropping one lets go
/// of nothing while the other still refreshes and the quorum holds; dropping the last lets
/// go (r11 finding 6: the first drop reset the breaker the other still kept forced).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_one_of_two_refreshes_keeps_the_force_the_other_holds() {
    let server = RedisServer::start();
    let conn = RedisConn::open(server.url()).unwrap();
    let (a, b) = (breaker(), breaker());
    let layer = |id: &str, breaker: &CircuitBreaker<Tokio>| {
        BreakerQuorum::builder(&conn, "two-refreshes", breaker.clone())
            .instance(id)
            .quorum(0.5)
            // A report lives three periods (1.5 s): a loaded machine's stall of a refresh
            // task must not let `a`'s report lapse while the test looks.
            .every(Duration::from_millis(500))
            .deadline(Duration::from_secs(1))
            .build()
            .unwrap()
    };
    let (quorum_a, quorum_b) = (layer("a", &a), layer("b", &b));
    let refreshing_a = quorum_a.spawn();
    let (first, second) = (quorum_b.spawn(), quorum_b.clone().spawn());
    trip(&a);
    common::eventually(async || (b.state() == State::ForcedOpen).then_some(())).await;
    drop(first);
    assert_eq!(
        b.state(),
        State::ForcedOpen,
        "the other refresh still holds the quorum's force"
    );
    // Two rounds of the remaining refresh: each keeps the force.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(b.state(), State::ForcedOpen);
    drop(second);
    assert_eq!(
        b.state(),
        State::Closed,
        "let go when the last refresh stopped"
    );
    drop(refreshing_a);
    drop((quorum_a, quorum_b));
}

/// Dropping the last handle of a layer that forced its breaker open (refreshed by hand, no
/// `Refreshing`) lets go of the force: nobody could ever undo it otherwise.
#[tokio::test]
async fn dropping_the_last_handle_of_a_layer_lets_go_of_its_force() {
    let server = RedisServer::start();
    let pods = instances(&server);
    trip(&pods[0].0);
    trip(&pods[1].0);
    refresh_all(&pods).await;
    refresh_all(&pods).await;
    assert_eq!(pods[2].0.state(), State::ForcedOpen);
    let mut pods = pods;
    let (breaker, quorum) = pods.pop().unwrap();
    let clone = quorum.clone();
    drop(quorum);
    assert_eq!(
        breaker.state(),
        State::ForcedOpen,
        "a clone still holds the layer"
    );
    drop(clone);
    assert_eq!(
        breaker.state(),
        State::Closed,
        "let go with the last handle"
    );
}

/// A breaker whose state-change listener panics the first time it is forced open (a metrics
/// sink that is down, say).
fn breaker_panicking_on_its_first_force() -> CircuitBreaker<Tokio> {
    let armed = std::sync::atomic::AtomicBool::new(true);
    CircuitBreaker::builder()
        .runtime(Tokio)
        .on_state_change(move |change| {
            if change.to == State::ForcedOpen
                && armed.swap(false, std::sync::atomic::Ordering::SeqCst)
            {
                panic!("the listener panics (on purpose)");
            }
        })
        .build()
        .unwrap()
}

/// Docs (`telemetry::Event`, `BreakerQuorum`): a listener that panics loses the policy
/// nothing, and "once the quorum is gone, the breaker this layer forced is reset". The force
/// is recorded before the breaker tells its listener, so a refresh that unwound still lets
/// go of it later.
#[tokio::test]
async fn a_force_whose_listener_panicked_is_still_let_go() {
    let server = RedisServer::start();
    let conn = RedisConn::open(server.url()).unwrap();
    let (local, peer) = (breaker_panicking_on_its_first_force(), breaker());
    let layer = |id: &str, breaker: &CircuitBreaker<Tokio>| {
        BreakerQuorum::builder(&conn, "panicking-listener", breaker.clone())
            .instance(id)
            .quorum(0.5)
            .every(Duration::from_secs(60))
            .deadline(Duration::from_secs(2))
            .build()
            .unwrap()
    };
    let (a, b) = (layer("a", &local), layer("b", &peer));
    a.refresh().await.unwrap();
    trip(&peer);
    b.refresh().await.unwrap();
    let forcing = a.clone();
    let unwound = tokio::spawn(async move { forcing.refresh().await }).await;
    assert!(unwound.unwrap_err().is_panic(), "the listener's panic");
    assert_eq!(local.state(), State::ForcedOpen);
    peer.reset();
    b.refresh().await.unwrap();
    let view = a.refresh().await.unwrap();
    assert!(!view.forced_open);
    assert_eq!(local.state(), State::Closed, "the quorum is gone: let go");
}

/// The same through `spawn`: the panic ends one round, not the refresh.
#[tokio::test]
async fn a_refresh_task_outlives_a_panicking_listener() {
    let server = RedisServer::start();
    let conn = RedisConn::open(server.url()).unwrap();
    let (local, peer) = (breaker_panicking_on_its_first_force(), breaker());
    let layer = |id: &str, breaker: &CircuitBreaker<Tokio>| {
        BreakerQuorum::builder(&conn, "panicking-listener-task", breaker.clone())
            .instance(id)
            .quorum(0.5)
            .every(Duration::from_millis(500))
            .deadline(Duration::from_secs(2))
            .build()
            .unwrap()
    };
    let (a, b) = (layer("a", &local), layer("b", &peer));
    let refreshing = a.spawn();
    trip(&peer);
    b.refresh().await.unwrap();
    common::eventually(async || (local.state() == State::ForcedOpen).then_some(())).await;
    peer.reset();
    b.refresh().await.unwrap();
    common::eventually(async || (local.state() == State::Closed).then_some(())).await;
    drop(refreshing);
}
