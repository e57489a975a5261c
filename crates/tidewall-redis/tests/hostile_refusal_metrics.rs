//! Black-box test, from the public docs only, of how the limits shared through Redis count
//! their refusals: "each answer that refuses, whatever decided it (Redis, a remembered denial,
//! lease mode's local cells, `WhenUnavailable::Closed` as `backend_unavailable`, or the
//! `Local` share), once per call (a wait that asks again counts only its final answer)", in
//! `tidewall_rejections_total{policy, name, reason}` with `policy` `redis_rate` or
//! `redis_bulkhead` and `name` the limit's name (partitions share it); "the `Local` share
//! reports nothing of its own"; and `Refusals`, the
//! counter they count through. Composed as users compose them: inside a pipeline, behind an
//! `AdmitLayer` in every mode, dropped at random (seeded) points, concurrently, on a Redis
//! that fills up under held leases, is killed or is frozen.
//!
//! One test: it installs the global metrics recorder. Each phase takes a snapshot, which
//! resets the counters, so each phase's expectations are exact.

mod common;

use std::convert::Infallible;
use std::time::Duration;

use common::metrics::{Counters, REJECTIONS, Row, row};
use common::{RedisServer, eventually, hourly};
use tidewall::pipeline::Pipeline;
use tidewall::rt::Tokio;
use tidewall::telemetry::Refusals;
use tidewall::tower::{AdmitLayer, AdmitMode};
use tidewall::{Deadline, Error, Rejected};
use tidewall_core::rng::SplitMix64;
use tidewall_redis::{LeaseMode, RedisBulkhead, RedisConn, RedisRateLimiter, WhenUnavailable};
use tower::ServiceExt as _;

const HOUR: Duration = Duration::from_secs(3600);

/// Rows for the refusals observed by callers: `policy`/`name` with each reason's count.
fn rows_of(policy: &str, name: &str, observed: &[Rejected]) -> Vec<Row> {
    let mut by_reason = std::collections::BTreeMap::<&str, u64>::new();
    for r in observed {
        *by_reason.entry(r.kind()).or_default() += 1;
    }
    by_reason
        .into_iter()
        .map(|(reason, n)| row(policy, name, reason, n))
        .collect()
}

fn sorted(mut rows: Vec<Row>) -> Vec<Row> {
    rows.sort();
    rows
}

fn bulkhead(
    conn: &RedisConn,
    name: &str,
    limit: u32,
    policy: WhenUnavailable,
    deadline: Duration,
) -> RedisBulkhead {
    RedisBulkhead::builder(conn, name, limit)
        .deadline(deadline)
        .when_unavailable(policy)
        .build()
        .unwrap()
}

/// An echo service behind an `AdmitLayer` over `admission` in `mode`.
fn admit_svc<A: tidewall::admission::Admission + Clone>(
    admission: A,
    mode: AdmitMode,
    max_wait: Option<Duration>,
) -> impl tower::Service<u32, Response = u32, Error = Error<Infallible>> {
    let mut layer = AdmitLayer::new(admission, mode);
    if let Some(max_wait) = max_wait {
        layer = layer.max_wait(max_wait);
    }
    tower::ServiceBuilder::new()
        .layer(layer)
        .service_fn(|x: u32| async move { Ok::<_, Error<Infallible>>(x) })
}

/// One call through `svc` (ready, then called): the refusal, if any.
async fn call_once<S>(svc: &mut S) -> Option<Rejected>
where
    S: tower::Service<u32, Response = u32, Error = Error<Infallible>>,
{
    let ready = svc
        .ready()
        .await
        .unwrap_or_else(|e| panic!("poll_ready failed: {e:?}"));
    match ready.call(7).await {
        Ok(7) => None,
        Ok(other) => panic!("echo answered {other}"),
        Err(e) => Some(e.rejection().expect("a refusal")),
    }
}

/// How one cancellable call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Admitted,
    Refused(Rejected),
    Cancelled,
}

fn refused(ends: &[Ended]) -> Vec<Rejected> {
    ends.iter()
        .filter_map(|e| match e {
            Ended::Refused(r) => Some(*r),
            _ => None,
        })
        .collect()
}

fn admitted(ends: &[Ended]) -> usize {
    ends.iter().filter(|e| **e == Ended::Admitted).count()
}

async fn join_all<T: Send + 'static>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusing_answer_counts_once_under_its_limits_policy_name_and_reason() {
    let snapshotter = common::metrics::install_recorder();
    let server = RedisServer::start();
    let conn = RedisConn::builder(server.url()).connect().await.unwrap();
    let second = Duration::from_secs(1);
    let closed = WhenUnavailable::Closed;

    // ------------------------------------------------------------------------------------
    // 0. `Refusals` itself, and registration when a policy is built.
    let quota = Refusals::new("s49_quota", "tenant:{x}%", &[Rejected::BulkheadFull]);
    assert_eq!(quota.policy(), "s49_quota");
    assert_eq!(quota.name(), "tenant:{x}%");
    let reg_rate = hourly(&conn, "s49-reg-rate", "default", 1, closed, second);
    let reg_bulkhead = bulkhead(&conn, "s49-reg-bh", 1, closed, second);
    let built = Counters::take(&snapshotter);
    assert!(
        built.registered("s49_quota", "tenant:{x}%", "bulkhead_full"),
        "a reason given to `new` is registered then: {:?}",
        built.0
    );
    assert!(
        !built.registered("s49_quota", "tenant:{x}%", "rate_limited"),
        "a reason not given registers on its first refusal only"
    );
    assert!(
        built.registered("redis_rate", "s49-reg-rate", "rate_limited"),
        "a Redis rate limit's refusal counter is registered when it is built: {:?}",
        built.0
    );
    assert!(
        built.registered("redis_bulkhead", "s49-reg-bh", "bulkhead_full"),
        "a Redis bulkhead's refusal counter is registered when it is built: {:?}",
        built.0
    );
    assert!(built.refusals().is_empty(), "{:?}", built.refusals());
    quota.refused(&Rejected::BulkheadFull);
    quota.refused(&Rejected::BulkheadFull);
    quota.refused(&Rejected::RateLimited {
        retry_after: Duration::from_millis(5),
    });
    // Admitted calls count nothing.
    assert_eq!(reg_rate.check().await, Ok(()));
    drop(reg_bulkhead.try_acquire().await.unwrap());
    let counted = Counters::take(&snapshotter);
    assert_eq!(
        counted.refusals(),
        vec![
            row("s49_quota", "tenant:{x}%", "bulkhead_full", 2),
            row("s49_quota", "tenant:{x}%", "rate_limited", 1),
        ]
    );

    // ------------------------------------------------------------------------------------
    // 1. Inside a pipeline: a rate limit with two partitions of one odd name, in front of a
    //    bulkhead of one slot. Each call's refusal counts once, under the stage that gave
    //    it; the stage that admitted counts nothing.
    const PIPE_RATE: &str = "s49:pipe{r}%";
    let rate_t1 = hourly(&conn, PIPE_RATE, "t1", 2, closed, second);
    let rate_t2 = hourly(&conn, PIPE_RATE, "t:2", 2, closed, second);
    let pipe_bh = bulkhead(&conn, "s49-pipe-bh", 1, closed, second);
    let pipeline = |rate: &RedisRateLimiter| {
        Pipeline::builder()
            .deadline(Duration::from_millis(400))
            .rate_limit(rate.clone())
            .bulkhead(pipe_bh.clone())
            .build()
            .unwrap()
    };
    let (p1, p2) = (pipeline(&rate_t1), pipeline(&rate_t2));
    // t1's first cell: admitted by both stages.
    assert_eq!(p1.call(|| async { Ok::<_, ()>(1) }).await, Ok(1));
    // t1's second cell: holds the bulkhead's slot until told (its own long deadline).
    let (release, held) = tokio::sync::oneshot::channel::<()>();
    let holder = {
        let rate_t1 = rate_t1.clone();
        let pipe_bh = pipe_bh.clone();
        tokio::spawn(async move {
            let long = Pipeline::builder()
                .deadline(Duration::from_secs(30))
                .rate_limit(rate_t1)
                .bulkhead(pipe_bh)
                .build()
                .unwrap();
            let mut held = Some(held);
            long.call(|| {
                let held = held.take();
                async move {
                    if let Some(held) = held {
                        let _ = held.await;
                    }
                    Ok::<_, ()>(2)
                }
            })
            .await
        })
    };
    eventually(async || (server.zcard(pipe_bh.key()) == 1).then_some(())).await;
    let deadline_exceeded = Err(Error::Rejected(Rejected::DeadlineExceeded));
    let ok = || async { Ok::<u32, ()>(0) };
    // t2's first cell, then the bulkhead's wait runs out: the bulkhead's refusal.
    assert_eq!(p2.call(ok).await, deadline_exceeded);
    // t1 is spent: the rate limit's refusal (from Redis, then remembered).
    assert_eq!(p1.call(ok).await, deadline_exceeded);
    assert_eq!(p1.call(ok).await, deadline_exceeded);
    // t2's second cell, the bulkhead full again; then t2 spent.
    assert_eq!(p2.call(ok).await, deadline_exceeded);
    assert_eq!(p2.call(ok).await, deadline_exceeded);
    release.send(()).unwrap();
    assert_eq!(holder.await.unwrap(), Ok(2));
    let piped = Counters::take(&snapshotter);
    assert_eq!(
        piped.refusals(),
        vec![
            row("redis_bulkhead", "s49-pipe-bh", "deadline_exceeded", 2),
            row("redis_rate", PIPE_RATE, "deadline_exceeded", 3),
        ],
        "pipeline: {:?}",
        piped.0
    );
    assert_eq!(
        piped.sum(
            "tidewall_calls_total",
            &[("policy", "pipeline"), ("outcome", "rejected")]
        ),
        5
    );

    // ------------------------------------------------------------------------------------
    // 2. Behind an `AdmitLayer`, in every mode.
    let tower_rate = hourly(&conn, "s49-tower-rate", "default", 1, closed, second);
    let tower_bh = bulkhead(&conn, "s49-tower-bh", 1, closed, second);
    let short = Some(Duration::from_millis(200));
    let mut shed = admit_svc(tower_rate.clone(), AdmitMode::Reject, None);
    assert_eq!(call_once(&mut shed).await, None);
    for _ in 0..3 {
        assert!(matches!(
            call_once(&mut shed).await,
            Some(Rejected::RateLimited { .. })
        ));
    }
    for mode in [AdmitMode::WaitCall, AdmitMode::WaitReady] {
        let mut svc = admit_svc(tower_rate.clone(), mode, short);
        for _ in 0..2 {
            assert_eq!(
                call_once(&mut svc).await,
                Some(Rejected::DeadlineExceeded),
                "{mode:?}"
            );
        }
    }
    let held = tower_bh.try_acquire().await.unwrap();
    let mut shed = admit_svc(tower_bh.clone(), AdmitMode::Reject, None);
    for _ in 0..2 {
        assert_eq!(call_once(&mut shed).await, Some(Rejected::BulkheadFull));
    }
    for mode in [AdmitMode::WaitCall, AdmitMode::WaitReady] {
        let mut svc = admit_svc(tower_bh.clone(), mode, short);
        for _ in 0..2 {
            assert_eq!(
                call_once(&mut svc).await,
                Some(Rejected::DeadlineExceeded),
                "{mode:?}"
            );
        }
    }
    // Waits that end admitted count nothing, however many full answers they saw.
    let mut held = Some(held);
    for mode in [AdmitMode::WaitCall, AdmitMode::WaitReady] {
        let permit = match held.take() {
            Some(permit) => permit,
            None => {
                // Not polled with `try_acquire`: a refusal while the release lands counts.
                server.until_no_lease(tower_bh.key()).await;
                tower_bh.try_acquire().await.unwrap()
            }
        };
        let mut svc = admit_svc(tower_bh.clone(), mode, Some(Duration::from_secs(8)));
        let freer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(permit);
        });
        assert_eq!(call_once(&mut svc).await, None, "{mode:?}");
        freer.await.unwrap();
    }
    // A `WaitReady` wait given up, its service then dropped: nothing counted.
    server.until_no_lease(tower_bh.key()).await;
    let permit = tower_bh.try_acquire().await.unwrap();
    let mut svc = admit_svc(tower_bh.clone(), AdmitMode::WaitReady, None);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), svc.ready())
            .await
            .is_err()
    );
    drop(svc);
    drop(permit);
    server.until_no_lease(tower_bh.key()).await;
    let towered = Counters::take(&snapshotter);
    assert_eq!(
        towered.refusals(),
        vec![
            row("redis_bulkhead", "s49-tower-bh", "bulkhead_full", 2),
            row("redis_bulkhead", "s49-tower-bh", "deadline_exceeded", 4),
            row("redis_rate", "s49-tower-rate", "deadline_exceeded", 4),
            row("redis_rate", "s49-tower-rate", "rate_limited", 3),
        ],
        "tower: {:?}",
        towered.0
    );

    // ------------------------------------------------------------------------------------
    // 2b. Rate waits that end admitted count nothing, whatever denials they were told on the
    //     way (exact and lease mode; directly, in a pipeline, behind a waiting layer); waits
    //     cut while they sleep count nothing; lease mode's fast path counts nothing; a
    //     shedding layer's refusal counts once.
    let mut shed_told = Vec::new();
    for lease in [None, Some(LeaseMode::new(1).unwrap())] {
        let name = if lease.is_some() {
            "s49-wait-lease"
        } else {
            "s49-wait-exact"
        };
        let builder = RedisRateLimiter::builder(&conn, name, 1, Duration::from_millis(300))
            .burst(1)
            .deadline(second)
            .when_unavailable(closed);
        let limiter = match lease {
            Some(mode) => builder.lease_mode(mode),
            None => builder,
        }
        .build()
        .unwrap();
        let long = || Deadline::after(&Tokio, Duration::from_secs(3));
        assert_eq!(limiter.check().await, Ok(()));
        assert_eq!(limiter.until_ready_before(long()).await, Ok(()), "{name}");
        let waiting = Pipeline::builder()
            .deadline(Duration::from_secs(3))
            .rate_limit(limiter.clone())
            .build()
            .unwrap();
        assert_eq!(waiting.call(|| async { Ok::<_, ()>(()) }).await, Ok(()));
        for mode in [AdmitMode::WaitCall, AdmitMode::WaitReady] {
            let mut svc = admit_svc(limiter.clone(), mode, Some(Duration::from_secs(3)));
            assert_eq!(call_once(&mut svc).await, None, "{name} {mode:?}");
        }
        for cut in [50, 150, 250, 20] {
            let cut = Duration::from_millis(cut);
            match tokio::time::timeout(cut, limiter.until_ready_before(long())).await {
                Err(_) | Ok(Ok(())) => {}
                Ok(Err(refused)) => panic!("{name}: a 3 s wait refused: {refused:?}"),
            }
        }
        for _ in 0..5 {
            let _fast_path: Option<()> = tidewall::admission::Admission::try_admit(&limiter);
        }
        let mut told = vec![limiter.check_n(2).await.unwrap_err()];
        assert_eq!(
            told,
            [Rejected::InsufficientCapacity { burst: 1 }],
            "{name}"
        );
        let mut shed = admit_svc(limiter.clone(), AdmitMode::Reject, None);
        for _ in 0..4 {
            if let Some(refused) = call_once(&mut shed).await {
                told.push(refused);
            }
        }
        assert!(!told.is_empty(), "{name}: four calls at once, none refused");
        shed_told.push((name, told));
    }
    let waited = Counters::take(&snapshotter);
    assert_eq!(
        waited.refusals(),
        sorted(
            shed_told
                .iter()
                .flat_map(|(name, told)| rows_of("redis_rate", name, told))
                .collect()
        ),
        "waits: {:?}",
        waited.0
    );

    // ------------------------------------------------------------------------------------
    // 3. Many concurrent callers, each cut at a random (seeded) point: what callers were
    //    told is exactly what was counted; a dropped call counts nothing.
    let mut rng = SplitMix64::new(0x5_49);
    let drop_bh = bulkhead(&conn, "s49-drop-bh", 3, closed, second);
    let drop_rate = hourly(&conn, "s49-drop-rate", "default", 6, closed, second);
    let drop_lease = RedisRateLimiter::builder(&conn, "s49-drop-lease", 1, HOUR)
        .burst(8)
        .deadline(second)
        .when_unavailable(closed)
        .lease_mode(LeaseMode::new(3).unwrap())
        .build()
        .unwrap();
    let mut bh_tasks = Vec::new();
    for _ in 0..48 {
        let (bh, wait, cut, hold, waits) = (
            drop_bh.clone(),
            Duration::from_millis(rng.between(0, 300)),
            Duration::from_millis(rng.between(0, 350)),
            Duration::from_millis(rng.between(0, 80)),
            rng.below_or_equal(3) > 0,
        );
        bh_tasks.push(tokio::spawn(async move {
            let asked = async {
                if waits {
                    bh.acquire_before(Deadline::after(&Tokio, wait)).await
                } else {
                    bh.try_acquire().await
                }
            };
            match tokio::time::timeout(cut, asked).await {
                Err(_) => Ended::Cancelled,
                Ok(Ok(permit)) => {
                    tokio::time::sleep(hold).await;
                    drop(permit);
                    Ended::Admitted
                }
                Ok(Err(r)) => Ended::Refused(r),
            }
        }));
    }
    let mut rate_tasks = Vec::new();
    for i in 0..80 {
        let (limiter, wait, cut, how) = (
            if i % 2 == 0 {
                drop_rate.clone()
            } else {
                drop_lease.clone()
            },
            Duration::from_millis(rng.between(0, 200)),
            Duration::from_millis(rng.between(0, 40)),
            rng.below_or_equal(2),
        );
        rate_tasks.push(tokio::spawn(async move {
            let asked = async {
                match how {
                    0 => limiter.check().await,
                    1 => {
                        limiter
                            .until_ready_before(Deadline::after(&Tokio, wait))
                            .await
                    }
                    _ => {
                        tidewall::admission::Admission::admit(
                            &limiter,
                            tidewall::admission::Wait::No,
                        )
                        .await
                    }
                }
            };
            match tokio::time::timeout(cut, asked).await {
                Err(_) => Ended::Cancelled,
                Ok(Ok(())) => Ended::Admitted,
                Ok(Err(r)) => Ended::Refused(r),
            }
        }));
    }
    let drop_prate = hourly(&conn, "s49-drop-prate", "default", 5, closed, second);
    let drop_pbh = bulkhead(&conn, "s49-drop-pbh", 2, closed, second);
    let drop_pipeline = Pipeline::builder()
        .deadline(Duration::from_secs(3))
        .rate_limit(drop_prate.clone())
        .bulkhead(drop_pbh.clone())
        .build()
        .unwrap();
    let mut pipe_tasks = Vec::new();
    for _ in 0..30 {
        let (pipeline, cut) = (
            drop_pipeline.clone(),
            Duration::from_millis(rng.between(0, 80)),
        );
        pipe_tasks.push(tokio::spawn(async move {
            let call = pipeline.call(|| async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok::<_, ()>(())
            });
            match tokio::time::timeout(cut, call).await {
                Err(_) => Ended::Cancelled,
                Ok(Ok(())) => Ended::Admitted,
                Ok(Err(Error::Rejected(r))) => Ended::Refused(r),
                Ok(Err(other)) => panic!("pipeline: {other:?}"),
            }
        }));
    }
    let bh_ends = join_all(bh_tasks).await;
    let rate_ends = join_all(rate_tasks).await;
    let pipe_ends = join_all(pipe_tasks).await;
    let (exact_ends, lease_ends): (Vec<_>, Vec<_>) =
        rate_ends.iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let exact_ends: Vec<Ended> = exact_ends.into_iter().map(|(_, e)| *e).collect();
    let lease_ends: Vec<Ended> = lease_ends.into_iter().map(|(_, e)| *e).collect();
    let dropped = Counters::take(&snapshotter);
    let expected = sorted(
        [
            rows_of("redis_bulkhead", "s49-drop-bh", &refused(&bh_ends)),
            rows_of("redis_rate", "s49-drop-rate", &refused(&exact_ends)),
            rows_of("redis_rate", "s49-drop-lease", &refused(&lease_ends)),
            rows_of("redis_rate", "s49-drop-prate", &refused(&pipe_ends)),
        ]
        .concat(),
    );
    assert_eq!(
        dropped.refusals(),
        expected,
        "bulkhead {bh_ends:?}\nexact {exact_ends:?}\nlease {lease_ends:?}\npipeline {pipe_ends:?}"
    );
    assert!(admitted(&exact_ends) <= 6 && admitted(&lease_ends) <= 8);
    assert!(admitted(&pipe_ends) <= 5);
    // Calls were cut, and calls were refused (how many of each depends on the host's speed).
    let every = [&bh_ends[..], &exact_ends, &lease_ends, &pipe_ends].concat();
    assert!(every.contains(&Ended::Cancelled) && !refused(&every).is_empty());
    // Nothing leaked by the cancelled acquires (their refusals are not this phase's).
    common::whole_limit_free(&drop_bh, 3).await;
    common::whole_limit_free(&drop_pbh, 2).await;
    drop(Counters::take(&snapshotter));

    // ------------------------------------------------------------------------------------
    // 4. Redis fills up under a held lease: acquires are refused with OOM and each failure
    //    policy decides, once per call; the held lease's renewals (refused, tried again)
    //    and its release count nothing, and go past the breaker.
    let held_bh = RedisBulkhead::builder(&conn, "s49-full-held", 2)
        .lease(Duration::from_secs(3))
        .deadline(second)
        .when_unavailable(closed)
        .build()
        .unwrap();
    let full_closed = bulkhead(&conn, "s49-full-closed", 2, closed, second);
    let full_local = bulkhead(
        &conn,
        "s49-full-local",
        4,
        WhenUnavailable::Local { share: 0.5 },
        second,
    );
    let full_open = bulkhead(&conn, "s49-full-open", 1, WhenUnavailable::Open, second);
    let full_rate = hourly(&conn, "s49-full-rate", "default", 5, closed, second);
    let lease = held_bh.try_acquire().await.unwrap();
    assert!(lease.is_shared());
    // A wait under way when Redis fills: told "full" by Redis, then, its holder gone while
    // Redis is full, OOM. One call, one refusal: its final answer's.
    let wait_bh = bulkhead(&conn, "s49-full-wait", 1, closed, second);
    let wait_held = wait_bh.try_acquire().await.unwrap();
    let waiter = {
        let wait_bh = wait_bh.clone();
        tokio::spawn(async move {
            wait_bh
                .acquire_before(Deadline::after(&Tokio, Duration::from_secs(4)))
                .await
                .map(drop)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.fill_up();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(wait_held);
    let waiter_told = waiter.await.unwrap().unwrap_err();
    let mut closed_told = Vec::new();
    for _ in 0..3 {
        closed_told.push(full_closed.try_acquire().await.map(drop).unwrap_err());
    }
    closed_told.push(
        full_closed
            .acquire_before(Deadline::after(&Tokio, Duration::from_millis(500)))
            .await
            .map(drop)
            .unwrap_err(),
    );
    assert_eq!(closed_told[..3], [Rejected::BackendUnavailable; 3]);
    // A free slot, but no lease can be written.
    assert_eq!(
        held_bh.try_acquire().await.map(drop),
        Err(Rejected::BackendUnavailable)
    );
    let local_a = full_local.try_acquire().await.unwrap();
    let local_b = full_local.try_acquire().await.unwrap();
    assert!(!local_a.is_shared() && !local_b.is_shared());
    assert_eq!(
        full_local.try_acquire().await.map(drop),
        Err(Rejected::BulkheadFull)
    );
    for _ in 0..3 {
        let permit = full_open.try_acquire().await.unwrap();
        assert!(!permit.is_shared());
    }
    for _ in 0..2 {
        assert_eq!(full_rate.check().await, Err(Rejected::BackendUnavailable));
    }
    // A renewal falls due (every second) while full, and is refused.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(lease);
    server.until_no_lease(held_bh.key()).await;
    let maxmemory: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory")
        .query(&mut server.admin().unwrap())
        .unwrap();
    assert_eq!(maxmemory[1], "1", "released while Redis was still full");
    drop((local_a, local_b));
    let full = Counters::take(&snapshotter);
    assert_eq!(
        full.refusals(),
        sorted(
            [
                vec![
                    row("redis_bulkhead", "s49-full-held", "backend_unavailable", 1),
                    row("redis_bulkhead", "s49-full-local", "bulkhead_full", 1),
                    row("redis_rate", "s49-full-rate", "backend_unavailable", 2),
                ],
                rows_of("redis_bulkhead", "s49-full-closed", &closed_told),
                rows_of("redis_bulkhead", "s49-full-wait", &[waiter_told]),
            ]
            .concat()
        ),
        "full: {:?}",
        full.0
    );
    let breaker_seen = full.sum(
        "tidewall_calls_total",
        &[
            ("policy", "breaker"),
            ("name", "redis:bulkhead:s49-full-held"),
        ],
    ) + full.sum(
        REJECTIONS,
        &[
            ("policy", "breaker"),
            ("name", "redis:bulkhead:s49-full-held"),
        ],
    );
    assert_eq!(
        breaker_seen, 2,
        "the held bulkhead's two acquires only: renewals and the release go past the breaker"
    );
    server.make_room();
    eventually(async || held_bh.try_acquire().await.ok()).await;
    drop(Counters::take(&snapshotter));

    // ------------------------------------------------------------------------------------
    // 5. Redis killed, then frozen: each call refused by the closed policy counts once,
    //    concurrent callers included; the `Local` rate share counts as `redis_rate` (no
    //    in-process `rate` series); calls cut while Redis is silent count nothing.
    let mut other = RedisServer::start();
    let other_conn = RedisConn::builder(other.url()).connect().await.unwrap();
    let short_deadline = Duration::from_millis(200);
    let dead_rate = hourly(
        &other_conn,
        "s49-dead-rate",
        "default",
        50,
        closed,
        short_deadline,
    );
    let dead_bh = bulkhead(&other_conn, "s49-dead-bh", 2, closed, short_deadline);
    let dead_local = RedisRateLimiter::builder(&other_conn, "s49-dead-lrate", 4, HOUR)
        .deadline(short_deadline)
        .when_unavailable(WhenUnavailable::Local { share: 0.5 })
        .build()
        .unwrap();
    assert_eq!(dead_rate.check().await, Ok(()));
    drop(dead_bh.try_acquire().await.unwrap());
    assert_eq!(dead_local.check().await, Ok(()));
    let dead_lbh = bulkhead(
        &other_conn,
        "s49-dead-lbh",
        4,
        WhenUnavailable::Local { share: 0.5 },
        short_deadline,
    );
    drop(dead_lbh.try_acquire().await.unwrap());
    // A Local rate share of two cells per 400 ms (half of four).
    let dead_lwait =
        RedisRateLimiter::builder(&other_conn, "s49-dead-lwait", 4, Duration::from_millis(400))
            .deadline(short_deadline)
            .when_unavailable(WhenUnavailable::Local { share: 0.5 })
            .build()
            .unwrap();
    assert_eq!(dead_lwait.check().await, Ok(()));
    other.kill();
    // Its waits that end admitted count nothing, however often they ask.
    for _ in 0..4 {
        assert_eq!(
            dead_lwait
                .until_ready_before(Deadline::after(&Tokio, Duration::from_secs(3)))
                .await,
            Ok(())
        );
    }
    // The Local share of a bulkhead: two slots; a wait that runs out is one refusal in the
    // limit's series (its final answer).
    let local_a = dead_lbh.try_acquire().await.unwrap();
    let local_b = dead_lbh.try_acquire().await.unwrap();
    assert!(!local_a.is_shared() && !local_b.is_shared());
    let local_waited = dead_lbh
        .acquire_before(Deadline::after(&Tokio, Duration::from_millis(400)))
        .await
        .map(drop)
        .unwrap_err();
    // (A wait on the share that a freed slot ends: see `hostile_local_share_metrics.rs`.)
    drop((local_a, local_b));
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (rate, bh) = (dead_rate.clone(), dead_bh.clone());
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                ("rate", rate.check().await.err())
            } else {
                ("bh", bh.try_acquire().await.map(drop).err())
            }
        }));
    }
    let killed = join_all(tasks).await;
    let mut local_told = Vec::new();
    for _ in 0..4 {
        local_told.push(dead_local.check().await);
    }
    assert_eq!(local_told[..2], [Ok(()), Ok(())], "half of a burst of four");
    assert!(
        local_told[2..]
            .iter()
            .all(|t| matches!(t, Err(Rejected::RateLimited { .. }))),
        "{local_told:?}"
    );
    let killed_phase = Counters::take(&snapshotter);
    let told = |kind: &str| -> Vec<Rejected> {
        killed
            .iter()
            .filter(|(k, _)| *k == kind)
            .filter_map(|(_, r)| *r)
            .collect()
    };
    let (killed_rate, killed_bh) = (told("rate"), told("bh"));
    assert_eq!(
        (killed_rate.len(), killed_bh.len()),
        (8, 8),
        "a killed Redis, failing closed, refuses every call: {killed:?}"
    );
    // The share reports nothing of its own: every row is a limit's.
    assert_eq!(
        killed_phase.refusals(),
        sorted(
            [
                rows_of("redis_bulkhead", "s49-dead-bh", &killed_bh),
                rows_of("redis_rate", "s49-dead-rate", &killed_rate),
                vec![row("redis_rate", "s49-dead-lrate", "rate_limited", 2)],
                rows_of("redis_bulkhead", "s49-dead-lbh", &[local_waited]),
            ]
            .concat()
        ),
        "killed: {:?}",
        killed_phase.0
    );
    other.restart();
    eventually(async || dead_rate.check().await.ok()).await;
    drop(Counters::take(&snapshotter));
    other.freeze();
    let frozen_pipeline = Pipeline::builder()
        .deadline(Duration::from_secs(2))
        .rate_limit(dead_rate.clone())
        .bulkhead(dead_bh.clone())
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..12 {
        let (rate, pipeline) = (dead_rate.clone(), frozen_pipeline.clone());
        tasks.push(tokio::spawn(async move {
            match i % 3 {
                0 => match rate.check().await {
                    Ok(()) => Ended::Admitted,
                    Err(r) => Ended::Refused(r),
                },
                1 => match pipeline.call(|| async { Ok::<_, ()>(()) }).await {
                    Ok(()) => Ended::Admitted,
                    Err(Error::Rejected(r)) => Ended::Refused(r),
                    Err(other) => panic!("{other:?}"),
                },
                // Cut well within the limit's deadline.
                _ => match tokio::time::timeout(Duration::from_millis(30), rate.check()).await {
                    Err(_) => Ended::Cancelled,
                    Ok(Ok(())) => Ended::Admitted,
                    Ok(Err(r)) => Ended::Refused(r),
                },
            }
        }));
    }
    let frozen = join_all(tasks).await;
    other.thaw();
    let frozen_phase = Counters::take(&snapshotter);
    assert_eq!(admitted(&frozen), 0, "{frozen:?}");
    assert!(frozen.contains(&Ended::Cancelled), "{frozen:?}");
    // Every refusal is the rate limit's: it stands first in the pipeline, and admits none.
    assert_eq!(
        frozen_phase.refusals(),
        rows_of("redis_rate", "s49-dead-rate", &refused(&frozen)),
        "frozen: {frozen:?}\n{:?}",
        frozen_phase.0
    );
    assert!(
        frozen_phase
            .refusals()
            .iter()
            .all(|(policy, _, _, _)| policy != "rate"),
        "a Local rate share reports no in-process series"
    );
}
