//! Hostile black-box tests of how scope children end (`task::{Exit, Ending}` in scope
//! reports), written from the rustdoc alone: `Scope` and `LocalScope` against one model,
//! with seeded stop points, long idle gaps and limits, in virtual time.

mod common;
mod report_support;
mod support;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use report_support::{Seen, aborted, pick, seen, stopped};
use support::{DAY, Gauge, HOUR, Rng, ms};
use tidewall::rt::{Clock, Runtime};
use tidewall::task::scope::{
    ChildId, ChildReport, FailurePolicy, LocalScope, Scope, ScopeBuilder, ScopeReport, SpawnError,
};
use tidewall::task::{CancellationToken, Ending};
use tidewall::testing::Clocked;
use tidewall::{ConfigError, FutureExt as _};

type Child = BoxFuture<'static, Result<u32, u32>>;
type Report = ScopeReport<u32, u32>;

/// The two scope fronts behind one face, so one scenario runs through both.
trait Front<R: Runtime>: Sized {
    const NAME: &'static str;
    fn make(builder: ScopeBuilder<Clocked<R>>) -> Result<Self, ConfigError>;
    fn try_spawn(&self, child: Child) -> Result<ChildId, SpawnError<Child>>;
    fn running(&self) -> usize;
    fn cancel(&self, reason: &str);
    fn close(&self);
    fn token(&self) -> CancellationToken;
    fn next(&mut self) -> impl Future<Output = Option<ChildReport<u32, u32>>>;
    fn join(self) -> impl Future<Output = Report>;
    fn join_within(self, limit: Duration, reason: &str) -> impl Future<Output = Report>;
    fn shutdown(self, reason: &str, grace: Duration) -> impl Future<Output = Report>;
}

macro_rules! front {
    ($ty:ident, $build:ident) => {
        impl<R: Runtime> Front<R> for $ty<u32, u32, Clocked<R>> {
            const NAME: &'static str = stringify!($ty);
            fn make(builder: ScopeBuilder<Clocked<R>>) -> Result<Self, ConfigError> {
                builder.$build()
            }
            fn try_spawn(&self, child: Child) -> Result<ChildId, SpawnError<Child>> {
                $ty::try_spawn(self, child)
            }
            fn running(&self) -> usize {
                $ty::running(self)
            }
            fn cancel(&self, reason: &str) {
                $ty::cancel(self, reason)
            }
            fn close(&self) {
                $ty::close(self)
            }
            fn token(&self) -> CancellationToken {
                $ty::token(self)
            }
            async fn next(&mut self) -> Option<ChildReport<u32, u32>> {
                $ty::next(self).await
            }
            async fn join(self) -> Report {
                $ty::join(self).await
            }
            async fn join_within(self, limit: Duration, reason: &str) -> Report {
                $ty::join_within(self, limit, reason.to_owned()).await
            }
            async fn shutdown(self, reason: &str, grace: Duration) -> Report {
                $ty::shutdown(self, reason.to_owned(), grace).await
            }
        }
    };
}
front!(Scope, build);
front!(LocalScope, build_local);

/// A child in the model: it returns (or panics) at `at` ignoring the token, or waits for the
/// token and then takes `after` to stop.
#[derive(Debug, Clone, Copy)]
enum Plan {
    Ends { at: Duration, how: u8 },
    Cooperates { after: Duration },
}

/// The child a plan describes; an `Ends` child's `at` counts from `start`.
fn child<R: Runtime>(
    rt: &Clocked<R>,
    id: u32,
    plan: Plan,
    start: Instant,
    token: CancellationToken,
    gauge: &Gauge,
) -> Child {
    let (rt, gauge) = (rt.clone(), gauge.clone());
    Box::pin(async move {
        let _alive = gauge.enter();
        match plan {
            Plan::Cooperates { after } => {
                token.cancelled().await;
                rt.sleep(after).await;
            }
            Plan::Ends { at, how } => {
                rt.sleep_until(start + at).await;
                assert!(how < 2, "child {id} panics");
                return if how == 0 { Ok(id) } else { Err(id) };
            }
        }
        Ok(id)
    })
}

fn on<R: Runtime>(rt: &Clocked<R>) -> ScopeBuilder<Clocked<R>> {
    Scope::builder().runtime(rt.clone())
}

fn cooperates(after: Duration) -> Plan {
    Plan::Cooperates { after }
}

/// The id a successful spawn got.
fn admitted<F>(spawn: Result<ChildId, SpawnError<F>>) -> u64 {
    spawn.map(ChildId::index).unwrap_or_else(|e| panic!("{e}"))
}

/// What the docs say each child's report must read, and when it ended (from `start`).
fn expected(plan: Plan, id: u32, stop: Duration, grace: Duration) -> (Seen, Ending, Duration) {
    match plan {
        Plan::Ends { at, how } => {
            let exit = match how {
                0 => Seen::Ok(id),
                1 => Seen::Err(id),
                _ => Seen::Panicked(format!("child {id} panics")),
            };
            if at < stop {
                (exit, Ending::Finished, at)
            } else if at < stop + grace {
                (exit, stopped(at - stop), at)
            } else {
                (Seen::Aborted, aborted(grace), stop + grace)
            }
        }
        Plan::Cooperates { after } if after < grace => (Seen::Ok(id), stopped(after), stop + after),
        Plan::Cooperates { .. } => (Seen::Aborted, aborted(grace), stop + grace),
    }
}

/// One seeded scenario through one front: children that end every way, a stop at a seeded
/// point (after an idle gap of up to a month), closed by `shutdown`, `cancel` + `join`,
/// `join_within`, or a drop. Times avoid ties: ends ≡ 0, the stop ≡ 1, grace ≡ 2 (mod 4 ms).
async fn modelled_scope<R: Runtime, F: Front<R>>(rt: &Clocked<R>, seed: u64) {
    let mut rng = Rng::new(seed);
    let gap = pick(&mut rng, &[Duration::ZERO, HOUR, 30 * DAY]);
    let stop = gap + ms(4 * rng.below(60) + 1);
    let grace = ms(4 * rng.below(40) + 2);
    let mode = rng.below(4);
    let builder_grace = if mode == 0 { ms(3) } else { grace }; // `shutdown` brings its own
    let mut scope = F::make(
        on(rt)
            .policy(FailurePolicy::CollectAll)
            .grace(builder_grace),
    )
    .unwrap();
    let (start, gauge) = (rt.now(), Gauge::default());
    let plans: Vec<Plan> = (0..1 + rng.below(10))
        .map(|_| match rng.below(4) {
            0 => cooperates(ms(4 * rng.below(50))),
            _ => Plan::Ends {
                at: pick(&mut rng, &[Duration::ZERO, gap]) + ms(4 * (1 + rng.below(100))),
                how: pick(&mut rng, &[0, 1, 2]),
            },
        })
        .collect();
    for (id, plan) in (0u32..).zip(&plans) {
        let got = admitted(scope.try_spawn(child(rt, id, *plan, start, scope.token(), &gauge)));
        assert_eq!(got, u64::from(id), "ids count spawns from 0");
    }
    let ctx = format!(
        "{} seed {seed}: {plans:?} {stop:?} {grace:?} {mode}",
        F::NAME
    );
    assert_eq!(scope.running(), plans.len(), "{ctx}");
    let token = scope.token();
    let mut taken = Vec::new();
    let report = if mode == 2 {
        scope.join_within(stop, "stop").await
    } else {
        // Drive (a local scope's children run only while its owner awaits it) up to the stop.
        while rt.now() < start + stop {
            let left = start + stop - rt.now();
            match scope.next().timeout_on(rt, left).await {
                Ok(Some(report)) => taken.push(report),
                Ok(None) => rt.sleep_until(start + stop).await,
                Err(_) => {}
            }
        }
        let still = plans
            .iter()
            .filter(|p| !matches!(p, Plan::Ends { at, .. } if *at < stop));
        let still = still.count();
        assert_eq!(scope.running(), still, "running at the stop: {ctx}");
        match mode {
            0 => {
                let report = scope.shutdown("stop", grace).await;
                assert_eq!(gauge.now(), 0, "shutdown waits for the aborted: {ctx}");
                report
            }
            1 => {
                scope.cancel("stop");
                scope.join().await
            }
            _ => {
                drop(scope);
                assert!(token.is_cancelled(), "a dropped scope cancels: {ctx}");
                rt.sleep(ms(1)).await;
                assert_eq!(gauge.now(), 0, "dropping a scope aborts every child: {ctx}");
                return;
            }
        }
    };
    rt.sleep(ms(1)).await;
    assert_eq!(gauge.now(), 0, "no child outlives its scope: {ctx}");
    let ends = (0u32..)
        .zip(&plans)
        .map(|(i, p)| expected(*p, i, stop, grace).2);
    let last_end = ends.max().unwrap();
    // `join_within` cancels only if a child still runs at its limit.
    let stopped = mode != 2 || last_end > stop;
    let closed_at = if stopped {
        last_end.max(stop)
    } else {
        last_end
    };
    assert_eq!(
        rt.now() - start,
        closed_at + ms(1),
        "closed with the last child: {ctx}"
    );
    assert_eq!(token.is_cancelled(), stopped, "{ctx}");
    let reason = report.cancel_reason.as_ref().map(|r| r.as_str());
    assert_eq!(reason, stopped.then_some("stop"), "{ctx}");
    assert_eq!(report.first_failure, None, "{ctx}");
    assert!(report.is_balanced(), "{ctx}: {report:?}");
    let all: Vec<&ChildReport<u32, u32>> = taken.iter().chain(&report.children).collect();
    let mut ids: Vec<u64> = all.iter().map(|c| c.id.index()).collect();
    ids.sort_unstable();
    let want: Vec<u64> = (0..plans.len() as u64).collect();
    assert_eq!(ids, want, "each child reported once: {ctx}");
    let mut ends = Vec::new();
    let mut counts = [0u64; 4];
    for c in &all {
        let i = u32::try_from(c.id.index()).unwrap();
        let (exit, ending, end) = expected(plans[i as usize], i, stop, grace);
        assert_eq!(
            (seen(&c.exit), c.ending),
            (exit.clone(), ending),
            "{i}: {ctx}"
        );
        let kind = [Seen::Ok(i), Seen::Err(i), Seen::Aborted]
            .iter()
            .position(|k| *k == exit);
        counts[kind.map_or(2, |k| [0, 1, 3][k])] += 1;
        ends.push(end);
    }
    assert!(
        ends.is_sorted(),
        "reports in the order children ended: {ends:?}: {ctx}"
    );
    let got = [report.succeeded, report.failed, report.panicked];
    let got = [got[0], got[1], got[2], report.aborted];
    assert_eq!((report.spawned, got), (plans.len() as u64, counts), "{ctx}");
}

async fn both_fronts_match_the_model<R: Runtime>(rt: Clocked<R>) {
    for seed in 0..400 {
        modelled_scope::<R, Scope<u32, u32, Clocked<R>>>(&rt, seed).await;
        modelled_scope::<R, LocalScope<u32, u32, Clocked<R>>>(&rt, seed).await;
    }
}

#[test]
fn scope_and_local_scope_report_every_ending_exactly_as_documented_on_every_runtime() {
    on_every_runtime!(both_fronts_match_the_model);
}

/// A future that notes whether it was ever polled.
fn flagged(polled: &Arc<AtomicBool>, result: Result<u32, u32>) -> Child {
    let polled = polled.clone();
    Box::pin(async move {
        polled.store(true, SeqCst);
        std::future::pending::<()>().await;
        result
    })
}

/// `limit(1)`, `try_spawn`, `close`, `cancel`, a huge limit: the same answers from both fronts.
async fn limits_and_refusals<R: Runtime, F: Front<R>>(rt: &Clocked<R>) -> Vec<String> {
    let mut log = Vec::new();
    let scope = F::make(Scope::builder().runtime(rt.clone()).limit(1).grace(ms(10))).unwrap();
    let token = scope.token();
    let first = scope.try_spawn(Box::pin(async move {
        token.cancelled().await;
        Ok(0)
    }));
    log.push(format!(
        "first {:?} running {}",
        first.map(ChildId::index).ok(),
        scope.running()
    ));
    let polled = Arc::new(AtomicBool::new(false));
    match scope.try_spawn(flagged(&polled, Ok(1))) {
        Err(SpawnError::Full(fut)) => drop(fut),
        other => panic!(
            "{}: at the limit: {:?}",
            F::NAME,
            other.map_err(|e| e.to_string())
        ),
    }
    assert!(
        !polled.load(SeqCst),
        "{}: a refused future comes back unpolled",
        F::NAME
    );
    log.push(format!("running after a refusal {}", scope.running()));
    scope.close();
    let refused = matches!(
        scope.try_spawn(flagged(&polled, Ok(2))),
        Err(SpawnError::Closed(_))
    );
    log.push(format!(
        "closed refuses {refused} running {}",
        scope.running()
    ));
    scope.cancel("enough");
    let refused = matches!(
        scope.try_spawn(flagged(&polled, Ok(3))),
        Err(SpawnError::Closed(_))
    );
    let report = scope.join().await;
    log.push(format!(
        "cancelled refuses {refused}; spawned {} ok {} ids {:?} endings {:?} reason {:?}",
        report.spawned,
        report.succeeded,
        report
            .children
            .iter()
            .map(|c| c.id.index())
            .collect::<Vec<_>>(),
        report.children.iter().map(|c| c.ending).collect::<Vec<_>>(),
        report.cancel_reason.map(|r| r.to_string()),
    ));
    // A huge limit: 2,000 children admitted at once, every one accounted for.
    let mut scope = F::make(Scope::builder().runtime(rt.clone()).limit(usize::MAX)).unwrap();
    for n in 0..2_000u32 {
        let rt = rt.clone();
        assert!(
            scope
                .try_spawn(Box::pin(async move {
                    rt.sleep(ms(1 + u64::from(n % 7))).await;
                    Ok(n)
                }))
                .is_ok()
        );
    }
    log.push(format!("huge limit running {}", scope.running()));
    let first = scope.next().await.map(|c| c.ending);
    let report = scope.join().await;
    log.push(format!(
        "first {first:?} then {} reports, {} ok, balanced {}",
        report.children.len(),
        report.succeeded,
        report.is_balanced()
    ));
    log
}

async fn both_fronts_refuse_alike<R: Runtime>(rt: Clocked<R>) {
    let tasks = limits_and_refusals::<R, Scope<u32, u32, Clocked<R>>>(&rt).await;
    let local = limits_and_refusals::<R, LocalScope<u32, u32, Clocked<R>>>(&rt).await;
    assert_eq!(tasks, local);
    assert_eq!(tasks[0], "first Some(0) running 1");
    assert_eq!(tasks[1], "running after a refusal 1");
    assert_eq!(tasks[2], "closed refuses true running 1");
    assert_eq!(
        tasks[3],
        "cancelled refuses true; spawned 1 ok 1 ids [0] endings [Stopped { took: 0ns }] reason Some(\"enough\")"
    );
    assert_eq!(tasks[4], "huge limit running 2000");
    assert_eq!(
        tasks[5],
        "first Some(Finished) then 1999 reports, 2000 ok, balanced true"
    );
}

#[test]
fn scope_and_local_scope_give_the_same_answers_at_limit_one_and_beyond_on_every_runtime() {
    on_every_runtime!(both_fronts_refuse_alike);
}

/// A scope cancelled at `t0`, shut down 10 ms later with 50 ms of grace: `took` counts from the
/// cancel, the grace from the `shutdown` call, and the first reason stays.
async fn late_shutdown<R: Runtime, F: Front<R>>(rt: &Clocked<R>) -> Vec<(u64, Seen, Ending)> {
    let mut scope = F::make(Scope::builder().runtime(rt.clone()).grace(ms(1_000))).unwrap();
    let gauge = Gauge::default();
    let start = rt.now();
    for (id, plan) in [
        (0, Plan::Cooperates { after: ms(30) }),
        (1, Plan::Ends { at: HOUR, how: 0 }),
        (2, Plan::Ends { at: ms(8), how: 0 }),
    ] {
        admitted(scope.try_spawn(child(rt, id, plan, start, scope.token(), &gauge)));
    }
    assert!(scope.next().timeout_on(rt, ms(4)).await.is_err());
    scope.cancel("first");
    assert!(matches!(
        scope.next().timeout_on(rt, ms(10)).await,
        Ok(Some(_))
    ));
    rt.sleep_until(start + ms(14)).await;
    let report = scope.shutdown("second", ms(50)).await;
    assert_eq!(
        rt.now() - start,
        ms(64),
        "{}: the grace runs from the shutdown call",
        F::NAME
    );
    assert_eq!(
        report.cancel_reason.map(|r| r.to_string()).as_deref(),
        Some("first")
    );
    assert_eq!(gauge.now(), 0);
    report
        .children
        .iter()
        .map(|c| (c.id.index(), seen(&c.exit), c.ending))
        .collect()
}

async fn late_shutdowns_alike<R: Runtime>(rt: Clocked<R>) {
    let tasks = late_shutdown::<R, Scope<u32, u32, Clocked<R>>>(&rt).await;
    let local = late_shutdown::<R, LocalScope<u32, u32, Clocked<R>>>(&rt).await;
    assert_eq!(tasks, local);
    assert_eq!(
        tasks,
        [
            (0, Seen::Ok(0), stopped(ms(30))),
            (1, Seen::Aborted, aborted(ms(60))),
        ]
    );
}

#[test]
fn a_shutdown_after_a_cancel_times_took_from_the_cancel_and_grace_from_the_call_on_every_runtime() {
    on_every_runtime!(late_shutdowns_alike);
}
