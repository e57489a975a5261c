//! Hostile black-box tests of the one task-ending vocabulary (`task::{Exit, Ending,
//! TaskReport}`) outside scopes, written from the rustdoc alone: pool job handles,
//! supervisor and shutdown reports, nesting stopped at random, unbounded waits and extreme
//! configurations, in virtual time.

mod common;
mod report_support;
mod support;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use report_support::{aborted, stopped};
use support::{DAY, Gauge, HOUR, Rng, ms};
use tidewall::ConfigError;
use tidewall::rt::{Clock, Runtime};
use tidewall::task::pool::{WorkerPool, WorkerPoolBuilder};
use tidewall::task::scope::Scope;
use tidewall::task::shutdown::{Cause, ShutdownBuilder};
use tidewall::task::supervisor::{
    ChildSpec, Ended, Restart, SUPERVISOR_SHUTDOWN_TIMEOUT, Supervisor, SupervisorEvent,
};
use tidewall::task::{CancellationToken, Ending, Exit};
use tidewall::testing::Clocked;

/// A builder's answer to bad input, named: never a panic.
fn verdict<T>(f: impl FnOnce() -> Result<T, ConfigError>) -> &'static str {
    match catch_unwind(AssertUnwindSafe(f)) {
        Err(_) => "panicked",
        Ok(Ok(_)) => "ok",
        Ok(Err(ConfigError::Zero { .. })) => "zero",
        Ok(Err(ConfigError::OutOfRange { .. })) => "out of range",
        Ok(Err(ConfigError::DurationOverflow { .. })) => "overflow",
        Ok(Err(ConfigError::Conflict { .. })) => "conflict",
        Ok(Err(_)) => "other",
    }
}

#[test]
fn task_builders_answer_extreme_configurations_with_typed_errors() {
    type Rt = Clocked<tidewall::rt::Tokio>;
    let rt = Clocked::new(tidewall::rt::Tokio);
    let scope = || Scope::builder().runtime(rt.clone());
    let pool = |f: fn(WorkerPoolBuilder<Rt>) -> WorkerPoolBuilder<Rt>| {
        verdict(|| f(WorkerPool::builder().runtime(rt.clone())).start(|n: u8| async move { n }))
    };
    let down = |deadline| {
        verdict(|| {
            ShutdownBuilder::new()
                .runtime(rt.clone())
                .deadline(deadline)
                .build()
        })
    };
    let spec = |name: &'static str| ChildSpec::new(name, |_stop| async { Ok::<(), &str>(()) });
    let sup = || Supervisor::builder().runtime(rt.clone());
    let answers = [
        verdict(|| scope().limit(0).build::<(), ()>()),
        verdict(|| scope().limit(0).build_local::<(), ()>()),
        verdict(|| scope().grace(Duration::MAX).build::<(), ()>()),
        verdict(|| scope().grace(Duration::MAX).build_local::<(), ()>()),
        verdict(|| {
            scope()
                .grace(Duration::from_nanos(u64::MAX))
                .build::<(), ()>()
        }),
        verdict(|| {
            scope()
                .grace(Duration::ZERO)
                .limit(1)
                .build_local::<(), ()>()
        }),
        pool(|b| b.workers(0)),
        pool(|b| b.workers(65_537)),
        pool(|b| b.queue(0)),
        pool(|b| b.job_timeout(Duration::ZERO)),
        pool(|b| b.job_timeout(Duration::MAX)),
        down(Duration::ZERO),
        down(Duration::MAX),
        verdict(|| sup().build()),
        verdict(|| sup().intensity(0, Duration::ZERO).child(spec("a")).build()),
        verdict(|| sup().intensity(3, Duration::MAX).child(spec("a")).build()),
        verdict(|| sup().child(spec("a")).child(spec("a")).build()),
    ];
    let expected = [
        "zero",
        "zero",
        "overflow",
        "overflow",
        "ok",
        "ok",
        "zero",
        "out of range",
        "zero",
        "zero",
        "overflow",
        "zero",
        "overflow",
        "zero",
        "zero",
        "overflow",
        "conflict",
    ];
    assert_eq!(answers, expected);
    // Whether a child's `Duration::MAX` shutdown timeout is refused is not said; a panic is out.
    let child = verdict(|| {
        sup()
            .child(spec("a").shutdown_timeout(Duration::MAX))
            .build()
    });
    assert!(child == "ok" || child == "overflow", "{child}");
}

/// `Scope::shutdown`, `join_within` and `WorkerPool::shutdown` take their time as an argument,
/// past every builder's check: `Duration::MAX` must mean "no limit", not an overflow.
async fn unbounded_waits<R: Runtime>(rt: Clocked<R>) {
    let start = rt.now();
    let scope = Scope::builder()
        .runtime(rt.clone())
        .build::<u32, u32>()
        .unwrap();
    let (token, clock) = (scope.token(), rt.clone());
    scope
        .try_spawn(async move {
            token.cancelled().await;
            clock.sleep(ms(5)).await;
            Ok(1)
        })
        .map_err(|e| e.to_string())
        .unwrap();
    let report = scope.shutdown("stop", Duration::MAX).await;
    let endings: Vec<_> = report.children.iter().map(|c| c.ending).collect();
    assert_eq!(endings, [stopped(ms(5))]);
    let scope = Scope::builder()
        .runtime(rt.clone())
        .build::<u32, u32>()
        .unwrap();
    let clock = rt.clone();
    scope
        .try_spawn(async move {
            clock.sleep(ms(7)).await;
            Ok(2)
        })
        .map_err(|e| e.to_string())
        .unwrap();
    let report = scope.join_within(Duration::MAX, "never").await;
    assert_eq!(
        report.children.iter().map(|c| c.ending).collect::<Vec<_>>(),
        [Ending::Finished]
    );
    assert_eq!(report.cancel_reason, None);
    let clock = rt.clone();
    let pool = WorkerPool::builder()
        .workers(1)
        .runtime(rt.clone())
        .job_timeout(Duration::from_nanos(u64::MAX))
        .start(move |n: u64| {
            let clock = clock.clone();
            async move {
                clock.sleep(ms(n)).await;
                n
            }
        })
        .unwrap();
    let job = pool.submit(9).await.unwrap();
    let report = pool.shutdown(Duration::MAX).await;
    assert!(matches!(job.await, Exit::Ok(9)));
    assert_eq!(
        (report.submitted, report.completed, report.failed),
        (1, 1, 0)
    );
    assert_eq!(rt.now() - start, ms(5 + 7 + 9));
}

#[test]
fn duration_max_waits_mean_no_limit_not_an_overflow_on_every_runtime() {
    on_every_runtime!(unbounded_waits);
}

#[derive(Debug, Clone, Copy)]
enum Job {
    Sleeps(u64),
    Panics,
}

/// Every way a pool job ends, in one timeline (2 workers, 100 ms job timeout, a 30 ms drain
/// from 120 ms): A ok at 10, B panics at 0, C times out at 100, D ok at 90, E and F still run
/// at the drain deadline (150), G and H never start.
async fn every_pool_job_ending<R: Runtime>(rt: Clocked<R>) {
    for gap in [Duration::ZERO, HOUR, 30 * DAY] {
        let clock = rt.clone();
        let gauge = Gauge::default();
        let alive = gauge.clone();
        let pool = WorkerPool::builder()
            .workers(2)
            .queue(10)
            .job_timeout(ms(100))
            .runtime(rt.clone())
            .start(move |(name, job): (char, Job)| {
                let (clock, alive) = (clock.clone(), alive.clone());
                async move {
                    let _alive = alive.enter();
                    match job {
                        Job::Sleeps(n) => clock.sleep(ms(n)).await,
                        Job::Panics => panic!("job {name} panics"),
                    }
                    name
                }
            })
            .unwrap();
        rt.sleep(gap).await; // an idle pool, for hours, before any work
        let start = rt.now();
        let jobs = [
            ('A', Job::Sleeps(10)),
            ('B', Job::Panics),
            ('C', Job::Sleeps(500)),
            ('D', Job::Sleeps(80)),
            ('E', Job::Sleeps(95)),
            ('F', Job::Sleeps(95)),
            ('G', Job::Sleeps(1)),
            ('H', Job::Sleeps(1)),
        ];
        let mut handles = Vec::new();
        for job in jobs {
            handles.push(pool.submit(job).await.unwrap());
        }
        rt.sleep(ms(120)).await;
        let report = pool.shutdown(ms(30)).await;
        assert_eq!(rt.now() - start, ms(150), "the drain ends at its deadline");
        let mut exits = Vec::new();
        for handle in handles {
            exits.push(match handle.await {
                Exit::Ok(name) => format!("ok {name}"),
                Exit::Err(tidewall::time::Elapsed) => "timed out".to_owned(),
                Exit::Panicked(p) => format!("panicked: {}", p.message().unwrap_or("?")),
                Exit::Aborted => "aborted".to_owned(),
                other => panic!("{other:?}"),
            });
        }
        assert_eq!(
            exits,
            [
                "ok A",
                "panicked: job B panics",
                "timed out",
                "ok D",
                "aborted",
                "aborted",
                "aborted",
                "aborted"
            ],
            "gap {gap:?}"
        );
        let handed: Vec<char> = report.handed_back.iter().map(|(name, _)| *name).collect();
        assert_eq!(handed, ['G', 'H'], "handed back in submission order");
        let counts = (
            report.submitted,
            report.completed,
            report.failed,
            report.aborted,
        );
        assert_eq!(counts, (8, 2, 4, 2), "gap {gap:?}: {report:?}");
        assert_eq!(gauge.now(), 0, "no aborted job still runs");
    }
}

#[test]
fn every_pool_job_ending_reads_as_documented_after_long_idle_gaps_on_every_runtime() {
    on_every_runtime!(every_pool_job_ending);
}

/// Supervisor children that stop every way, after an idle gap of hours: the report lists the
/// running ones in reverse start order, never `Finished`, each `took` counted from its cancel
/// (a temporary child that ended before the stop is not in it); the events say the same.
async fn supervisor_stop_endings<R: Runtime>(rt: Clocked<R>) {
    for gap in [ms(20), HOUR, 30 * DAY] {
        let events = Arc::new(Mutex::new(Vec::new()));
        let log = events.clone();
        let coop = |name: &'static str, took: u64| {
            let clock = rt.clone();
            ChildSpec::new(name, move |stop: CancellationToken| {
                let clock = clock.clone();
                async move {
                    stop.cancelled().await;
                    clock.sleep(ms(took)).await;
                    Ok::<(), &str>(())
                }
            })
        };
        let deaf = |name| ChildSpec::new(name, |_| std::future::pending::<Result<(), &str>>());
        let clock = rt.clone();
        let temp = ChildSpec::new("temp", move |_stop| {
            let clock = clock.clone();
            async move {
                clock.sleep(ms(10)).await;
                Ok::<(), &str>(())
            }
        });
        let supervisor = Supervisor::builder()
            .runtime(rt.clone())
            .child(coop("coop", 30))
            .child(ChildSpec::new(
                "erring",
                |stop: CancellationToken| async move {
                    stop.cancelled().await;
                    Err::<(), _>("flush failed")
                },
            ))
            .child(ChildSpec::new(
                "panicky",
                |stop: CancellationToken| async move {
                    stop.cancelled().await;
                    panic!("stop panic") as Result<(), &str>
                },
            ))
            .child(deaf("stubborn").shutdown_timeout(ms(50)))
            .child(deaf("brutal").shutdown_timeout(Duration::ZERO))
            .child(coop("patient", 40).shutdown_timeout(SUPERVISOR_SHUTDOWN_TIMEOUT))
            .child(temp.restart(Restart::Temporary))
            .on_event(move |e| log.lock().unwrap().push(e.clone()))
            .build()
            .unwrap();
        let stop = CancellationToken::new();
        let (trigger, clock) = (stop.clone(), rt.clone());
        let run = async move {
            clock.sleep(gap).await;
            trigger.cancel("deploy");
            clock.now()
        };
        let (report, stopped_at) = futures_util::join!(supervisor.run(stop), run);
        let report = report.unwrap();
        assert_eq!(rt.now() - stopped_at, ms(40 + 50 + 30), "gap {gap:?}");
        assert_eq!((&report.ended, report.restarts), (&Ended::Stopped, 0));
        let got: Vec<(String, Exit, Ending)> = report
            .stopped
            .iter()
            .map(|r| (r.name.to_string(), r.exit.clone(), r.ending))
            .collect();
        let want = [
            ("patient", Exit::Ok(()), stopped(ms(40))),
            ("brutal", Exit::Aborted, aborted(Duration::ZERO)),
            ("stubborn", Exit::Aborted, aborted(ms(50))),
            (
                "panicky",
                Exit::Panicked("stop panic".into()),
                stopped(Duration::ZERO),
            ),
            (
                "erring",
                Exit::Err("flush failed".into()),
                stopped(Duration::ZERO),
            ),
            ("coop", Exit::Ok(()), stopped(ms(30))),
        ]
        .map(|(name, exit, ending)| (name.to_owned(), exit, ending));
        assert_eq!(got, want, "gap {gap:?}");
        let from_events: Vec<(String, Exit, Ending)> = events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                SupervisorEvent::Stopped {
                    child,
                    exit,
                    ending,
                    ..
                } => Some((child.to_string(), exit.clone(), *ending)),
                _ => None,
            })
            .collect();
        assert_eq!(from_events, want, "events and report agree, once each");
    }
}

#[test]
fn supervisor_reports_every_stop_ending_after_long_idle_gaps_on_every_runtime() {
    on_every_runtime!(supervisor_stop_endings);
}

/// Shutdown components that end every way, after an idle gap (1 s deadline): a component done
/// before the trigger is `Finished`; the hog registered first gets what the deadline leaves.
async fn shutdown_component_endings<R: Runtime>(rt: Clocked<R>) {
    for gap in [ms(20), HOUR, 30 * DAY] {
        let mut shutdown = ShutdownBuilder::new()
            .runtime(rt.clone())
            .deadline(ms(1_000))
            .build()
            .unwrap();
        let coop = |clock: Clocked<R>, took: u64| {
            move |stop: CancellationToken| async move {
                stop.cancelled().await;
                clock.sleep(ms(took)).await;
                Ok::<(), &str>(())
            }
        };
        shutdown.register("hog", |_stop| std::future::pending::<Result<(), &str>>());
        let clock = rt.clone();
        shutdown.register("migrations", move |_stop| async move {
            clock.sleep(ms(10)).await;
            Ok::<(), &str>(())
        });
        shutdown.register("coop", coop(rt.clone(), 30));
        shutdown.register("panicky", |stop: CancellationToken| async move {
            stop.cancelled().await;
            panic!("stop panic") as Result<(), &str>
        });
        shutdown.register_with_timeout("stubborn", ms(200), |_stop| {
            std::future::pending::<Result<(), &str>>()
        });
        shutdown.register_with_timeout("patient", Duration::MAX, coop(rt.clone(), 40));
        rt.sleep(gap).await;
        let began = rt.now();
        let report = shutdown.stop("deploy").await;
        assert!(matches!(report.cause, Cause::Triggered(ref r) if r.as_str() == "deploy"));
        let got: Vec<(&str, Exit, Ending)> = report
            .components
            .iter()
            .map(|c| (&*c.name, c.exit.clone(), c.ending))
            .collect();
        assert_eq!(
            got,
            [
                ("patient", Exit::Ok(()), stopped(ms(40))),
                ("stubborn", Exit::Aborted, aborted(ms(200))),
                (
                    "panicky",
                    Exit::Panicked("stop panic".into()),
                    stopped(Duration::ZERO)
                ),
                ("coop", Exit::Ok(()), stopped(ms(30))),
                ("migrations", Exit::Ok(()), Ending::Finished),
                ("hog", Exit::Aborted, aborted(ms(1_000 - 40 - 200 - 30))),
            ],
            "gap {gap:?}"
        );
        assert_eq!(
            (report.took, report.deadline_exceeded, report.forced),
            (ms(1_000), true, false)
        );
        assert_eq!(rt.now() - began, ms(1_000));
        assert!(!report.is_clean());
    }
}

#[test]
fn shutdown_reports_every_component_ending_after_long_idle_gaps_on_every_runtime() {
    on_every_runtime!(shutdown_component_endings);
}

/// Scopes in pool jobs in a scope, the outer scope shut down at a seeded point: every inner
/// scope closes balanced or is dropped with its job, the pool accounts for every job, and no
/// inner child outlives the pool's shutdown.
async fn nested_accounting<R: Runtime>(rt: Clocked<R>) {
    for seed in 0..25u64 {
        let mut rng = Rng::new(seed);
        let (gauge, inner) = (Gauge::default(), Arc::new(Mutex::new(Vec::new())));
        let (clock, alive, log) = (rt.clone(), gauge.clone(), inner.clone());
        let pool = WorkerPool::builder()
            .workers(2)
            .queue(4)
            .runtime(rt.clone())
            .start(move |(seed, parts): (u64, u64)| {
                let (clock, alive, log) = (clock.clone(), alive.clone(), log.clone());
                async move {
                    let scope = Scope::builder()
                        .runtime(clock.clone())
                        .grace(ms(5))
                        .build::<u64, ()>()
                        .unwrap();
                    for part in 0..parts {
                        let (clock, alive) = (clock.clone(), alive.clone());
                        scope
                            .spawn(async move {
                                let _alive = alive.enter();
                                clock.sleep(ms((seed + part * 7) % 40)).await;
                                Ok(part)
                            })
                            .await
                            .map_err(|e| e.to_string())
                            .unwrap();
                    }
                    let report = scope.join().await;
                    log.lock().unwrap().push((
                        report.spawned,
                        report.succeeded,
                        report.is_balanced(),
                    ));
                    report.succeeded
                }
            })
            .unwrap();
        let outer = Scope::builder()
            .runtime(rt.clone())
            .grace(ms(rng.below(30) + 1))
            .build::<u64, String>()
            .unwrap();
        for job in 0..6 {
            let (submitter, parts) = (pool.submitter(), 1 + rng.below(4));
            outer
                .spawn(async move {
                    match submitter
                        .submit((seed * 31 + job, parts))
                        .await
                        .map_err(|e| e.to_string())?
                        .await
                    {
                        Exit::Ok(n) => Ok(n),
                        other => Err(format!("{other:?}")),
                    }
                })
                .await
                .map_err(|e| e.to_string())
                .unwrap();
        }
        rt.sleep(ms(rng.below(80))).await;
        let report = outer.shutdown("stop", ms(rng.below(20) + 1)).await;
        assert!(report.is_balanced(), "seed {seed}: {report:?}");
        assert_eq!(report.spawned, 6);
        let pool_report = pool.shutdown(ms(rng.below(30))).await;
        let handed = pool_report.handed_back.len() as u64;
        assert_eq!(
            pool_report.submitted,
            pool_report.completed + pool_report.failed + handed,
            "seed {seed}"
        );
        rt.sleep(ms(1)).await;
        assert_eq!(
            gauge.now(),
            0,
            "seed {seed}: an inner child outlived its pool"
        );
        let inner = inner.lock().unwrap();
        assert_eq!(
            inner.len() as u64,
            pool_report.completed,
            "seed {seed}: one inner report per completed job"
        );
        assert!(
            inner
                .iter()
                .all(|&(spawned, ok, balanced)| balanced && spawned == ok),
            "seed {seed}: {inner:?}"
        );
    }
}

#[test]
fn scopes_in_pool_jobs_in_a_scope_account_for_every_task_when_stopped_at_random_on_every_runtime() {
    on_every_runtime!(nested_accounting);
}
