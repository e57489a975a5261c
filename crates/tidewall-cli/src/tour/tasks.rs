//! The tour's task-management scenarios: a fail-fast structured-concurrency scope whose
//! failure cancels its siblings (and aborts the one that will not listen), and a worker pool
//! under overload that sheds, pushes back, and accounts for every job when it is shut down.
//! No HTTP here: the work is the runtime's own sleep, so both run the same on every adapter.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tidewall::rt::Panic;
use tidewall::task::{
    CancellationToken, Ending, Exit,
    pool::{SubmitError, WorkerPool},
    scope::{FailurePolicy, Scope},
};

use super::client::Net;
use super::report::{Section, ms};
use super::scenarios::Size;

pub(crate) async fn all<R: Net>(rt: R, size: Size) -> Vec<Section> {
    vec![
        fail_fast_scope(&rt, size).await,
        worker_pool(&rt, size).await,
    ]
}

/// What a child of the fail-fast scope does. Its index in [`ROLES`] is its spawn order, which
/// is its `ChildId`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Works this many ms, then returns `Ok`.
    Brief(u64),
    /// Would work this many ms; stops (with `Ok`) as soon as the scope's token is cancelled.
    Cooperative(u64),
    /// Works this many ms and never looks at the token: only an abort stops it.
    Stubborn(u64),
    /// Returns `Err` after this many ms.
    Failing(u64),
}

impl Role {
    fn describe(self) -> String {
        match self {
            Self::Brief(n) => format!("brief, {n} ms"),
            Self::Cooperative(n) => format!("cooperative, {} s unless cancelled", n / 1000),
            Self::Stubborn(n) => format!("stubborn, sleeps {} s ignoring the token", n / 1000),
            Self::Failing(n) => format!("fails after {n} ms"),
        }
    }
}

/// At most 4 run at once, so the scope admits #4–#7 only as #0, #1, #3 and #6 end (at about
/// 10, 20, 30 and 40 ms): all 8 are running or done by ~40 ms, and #5 fails at ~170 ms (20 ms
/// for its slot + 150 ms), far after. The failure cancels the scope: the cooperative children
/// (#4, #7) stop at once, the stubborn one (#2) sleeps on until the grace runs out.
const LIMIT: usize = 4;
const ROLES: [Role; 8] = [
    Role::Brief(10),
    Role::Brief(20),
    Role::Stubborn(30_000),
    Role::Brief(30),
    Role::Cooperative(10_000),
    Role::Failing(150),
    Role::Brief(10),
    Role::Cooperative(10_000),
];
/// How late past `failure + grace` the scope may close and still show the point (it did not
/// wait for the 30 s sleep). Generous on purpose: tour checks are invariants, not timings a
/// slow machine could miss; the measured figure is printed above.
const CLOSE_SLACK: Duration = Duration::from_secs(5);

const DONE: &str = "done";
const STOPPED: &str = "stopped on cancel";
const BAD: &str = "bad record";

/// One child: what `role` says, on `rt`'s clock, watching `token` if it cooperates. The
/// failing one records when it failed.
async fn child<R: Net>(
    role: Role,
    rt: R,
    token: CancellationToken,
    failed_at: Arc<OnceLock<Instant>>,
) -> Result<&'static str, &'static str> {
    match role {
        Role::Brief(n) => {
            rt.sleep(Duration::from_millis(n)).await;
            Ok(DONE)
        }
        Role::Cooperative(n) => {
            match token
                .run_until_cancelled(rt.sleep(Duration::from_millis(n)))
                .await
            {
                Ok(()) => Ok(DONE),
                Err(_reason) => Ok(STOPPED),
            }
        }
        Role::Stubborn(n) => {
            rt.sleep(Duration::from_millis(n)).await;
            Ok(DONE)
        }
        Role::Failing(n) => {
            rt.sleep(Duration::from_millis(n)).await;
            let _ = failed_at.set(rt.now());
            Err(BAD)
        }
    }
}

async fn fail_fast_scope<R: Net>(rt: &R, size: Size) -> Section {
    let quick = size == Size::Quick;
    let grace = Duration::from_millis(if quick { 100 } else { 200 });
    let mut s = Section::new(
        "Tasks: structured concurrency, fail-fast",
        if quick {
            "Scope::builder().limit(4).policy(FailFast).grace(100 ms)..build()?; spawn; join"
        } else {
            "Scope::builder().limit(4).policy(FailFast).grace(200 ms)..build()?; spawn; join"
        },
    );
    let scope = Scope::builder()
        .runtime(rt.clone())
        .limit(LIMIT)
        .policy(FailurePolicy::FailFast)
        .grace(grace)
        .build::<&'static str, &'static str>()
        .expect("a valid configuration");
    let failed_at: Arc<OnceLock<Instant>> = Arc::default();
    let start = rt.now();
    // The ids the scope gave, by spawn order; `None` where it refused the spawn.
    let mut ids = Vec::with_capacity(ROLES.len());
    for role in ROLES {
        let work = child(role, rt.clone(), scope.token(), Arc::clone(&failed_at));
        ids.push(scope.spawn(work).await.ok());
    }
    let all_spawned = since(rt, start);
    let mut report = scope.join().await;
    let closed_at = rt.now();
    let failed_at = failed_at.get().copied();
    report.children.sort_by_key(|c| c.id);
    let of = |index: usize| {
        let id = ids.get(index).copied().flatten()?;
        report.children.iter().find(|c| c.id == id)
    };
    let reason = report.cancel_reason.as_ref().map(|r| r.as_str().to_owned());
    s.metric("children (at most 4 at once)", ROLES.len())
        .metric("grace", ms(grace))
        .metric("all spawned after", ms(all_spawned))
        .metric(
            "failure at",
            failed_at.map_or_else(
                || "never".into(),
                |t| ms(t.saturating_duration_since(start)),
            ),
        )
        .metric(
            "scope closed at",
            ms(closed_at.saturating_duration_since(start)),
        )
        .metric(
            "closed after the failure",
            failed_at.map_or_else(
                || "n/a".into(),
                |t| ms(closed_at.saturating_duration_since(t)),
            ),
        )
        .metric("cancel reason", reason.as_deref().unwrap_or("none"));
    for (index, role) in ROLES.iter().enumerate() {
        let ended = of(index).map_or_else(
            || "not spawned".into(),
            |c| format!("{}, {}", exit(&c.exit), ending(c.ending)),
        );
        s.metric(&format!("#{index} ({})", role.describe()), ended);
    }
    let counts = (
        report.succeeded,
        report.failed,
        report.panicked,
        report.aborted,
    );
    s.metric(
        "succeeded / failed / panicked / aborted",
        format!("{} / {} / {} / {}", counts.0, counts.1, counts.2, counts.3),
    );

    let failing = indices(|r| matches!(r, Role::Failing(_))).next();
    let stubborn = indices(|r| matches!(r, Role::Stubborn(_))).next();
    let failing_id = failing.and_then(|i| ids.get(i).copied().flatten());
    s.check(
        "all 8 children spawned (a slot freed for each before the failure)",
        ids.iter().all(Option::is_some) && report.spawned == 8,
    );
    s.check(
        "the cancel reason names the failing child (#5)",
        reason
            .as_deref()
            .zip(failing_id)
            .is_some_and(|(reason, id)| reason.contains(&id.to_string())),
    );
    s.check(
        &format!(
            "the stubborn child (#2) was aborted once the {} grace ran out",
            ms(grace)
        ),
        stubborn.and_then(of).is_some_and(|c| {
            matches!(c.exit, Exit::Aborted)
                && matches!(c.ending, Ending::Aborted { took } if took >= grace)
        }),
    );
    s.check(
        "the cooperative children (#4, #7) stopped on the cancel, within the grace",
        indices(|r| matches!(r, Role::Cooperative(_))).all(|i| {
            of(i).is_some_and(|c| {
                matches!(c.exit, Exit::Ok(STOPPED))
                    && matches!(c.ending, Ending::Stopped { took } if took < grace)
            })
        }),
    );
    s.check(
        "the brief children and the failing one ended on their own (Finished)",
        indices(|r| matches!(r, Role::Brief(_))).all(|i| {
            of(i).is_some_and(|c| matches!(c.exit, Exit::Ok(DONE)) && c.ending == Ending::Finished)
        }) && failing
            .and_then(of)
            .is_some_and(|c| matches!(c.exit, Exit::Err(BAD)) && c.ending == Ending::Finished),
    );
    s.check(
        "report.is_balanced(): 8 spawned = 6 ok + 1 failed + 0 panicked + 1 aborted",
        report.is_balanced() && report.children.len() == 8 && counts == (6, 1, 0, 1),
    );
    s.check(
        &format!(
            "closed within [grace, grace + {}] of the failure, not after the 30 s sleep",
            ms(CLOSE_SLACK)
        ),
        failed_at.is_some_and(|t| {
            (grace..=grace + CLOSE_SLACK).contains(&closed_at.saturating_duration_since(t))
        }),
    );
    s
}

/// The indices (spawn order) of the roles `wanted` picks.
fn indices(wanted: fn(Role) -> bool) -> impl Iterator<Item = usize> {
    (0..ROLES.len()).filter(move |&index| wanted(ROLES[index]))
}

fn exit(exit: &Exit<&str, &str, Panic>) -> String {
    match exit {
        Exit::Ok(value) => format!("Ok({value:?})"),
        Exit::Err(error) => format!("Err({error:?})"),
        Exit::Panicked(panic) => format!(
            "panicked: {}",
            panic.message().unwrap_or("<non-string payload>")
        ),
        Exit::Aborted => "Aborted".into(),
        other => format!("{other:?}"),
    }
}

fn ending(ending: Ending) -> String {
    match ending {
        Ending::Finished => "Finished".into(),
        Ending::Stopped { took } => format!("Stopped {{ took: {} }}", ms(took)),
        Ending::Aborted { took } => format!("Aborted {{ took: {} }}", ms(took)),
        other => format!("{other:?}"),
    }
}

/// The pool's jobs are numbered in submission order; every 10th (3, 13, 23, …) is slow.
fn is_slow(job: usize) -> bool {
    job % 10 == 3
}

async fn worker_pool<R: Net>(rt: &R, size: Size) -> Section {
    const WORKERS: usize = 2;
    const QUEUE: usize = 8;
    const JOB: Duration = Duration::from_millis(20);
    const SLOW: Duration = Duration::from_secs(1);
    const JOB_TIMEOUT: Duration = Duration::from_millis(100);
    // 8 queued jobs are 80 ms of work for 2 workers: a 30 ms drain cannot finish them.
    const DRAIN: Duration = Duration::from_millis(30);
    let quick = size == Size::Quick;
    let burst: usize = if quick { 50 } else { 100 };
    let pressed: usize = if quick { 12 } else { 24 };
    let mut s = Section::new(
        "Tasks: worker pool under overload, drained on shutdown",
        "WorkerPool::builder().workers(2).queue(8).job_timeout(100 ms).start(job)?; \
         try_submit / submit / shutdown(30 ms)",
    );
    let clock = rt.clone();
    let pool = WorkerPool::builder()
        .workers(WORKERS)
        .queue(QUEUE)
        .job_timeout(JOB_TIMEOUT)
        .runtime(rt.clone())
        .start(move |job: usize| {
            let clock = clock.clone();
            async move {
                clock.sleep(if is_slow(job) { SLOW } else { JOB }).await;
                job
            }
        })
        .expect("a valid configuration");
    // Every job produced is admitted (its handle kept) or shed (handed back by the error).
    let mut admitted = Vec::new();
    let (mut shed, mut refused_closed, mut intact) = (0usize, 0usize, true);
    let mut produced = 0usize;

    // 1. A burst with try_submit: the queue fills, the rest is shed at once, nothing waits.
    for _ in 0..burst {
        let job = produced;
        produced += 1;
        match pool.try_submit(job) {
            Ok(handle) => admitted.push((job, handle)),
            Err(SubmitError::Full(back)) => {
                shed += 1;
                intact &= back == job;
            }
            Err(other) => {
                refused_closed += 1;
                intact &= other.into_job() == job;
            }
        }
    }
    let burst_admitted = admitted.len();
    let burst_shed = shed;
    let queued_after_burst = pool.queued();

    // 2. More jobs with submit().await: the producer waits for room. At least `pressed − 8`
    //    of them need a job to end first (even from an empty queue), and each worker ends at
    //    most one job at once plus one per 20 ms: that bounds the wait from below.
    let started = rt.now();
    let mut peak_queued = queued_after_burst;
    for _ in 0..pressed {
        let job = produced;
        produced += 1;
        match pool.submit(job).await {
            Ok(handle) => admitted.push((job, handle)),
            Err(other) => {
                refused_closed += 1;
                intact &= other.into_job() == job;
            }
        }
        peak_queued = peak_queued.max(pool.queued());
    }
    let held_back = since(rt, started);
    let rounds = pressed
        .saturating_sub(QUEUE)
        .div_ceil(WORKERS)
        .saturating_sub(1);
    let floor = JOB * u32::try_from(rounds).unwrap_or(u32::MAX);

    // 3. Fill the queue to the brim and shut down at once (no await in between): the drain
    //    starts with 8 queued jobs, and in 30 ms two workers can start at most 4 of them.
    for _ in 0..4 * QUEUE {
        let job = produced;
        produced += 1;
        match pool.try_submit(job) {
            Ok(handle) => admitted.push((job, handle)),
            Err(SubmitError::Full(back)) => {
                shed += 1;
                intact &= back == job;
                break;
            }
            Err(other) => {
                refused_closed += 1;
                intact &= other.into_job() == job;
                break;
            }
        }
    }
    let queued_at_shutdown = pool.queued();
    let stopping = rt.now();
    let report = pool.shutdown(DRAIN).await;
    let shutdown_took = since(rt, stopping);

    let admitted_jobs: Vec<usize> = admitted.iter().map(|(job, _)| *job).collect();
    let handed_back = report.handed_back.len();
    // Every handle resolves now: run, timed out, or `Aborted`, which a handle reads both for
    // a job aborted at the deadline and for one handed back (the report tells them apart).
    let (mut completed, mut timed_out, mut panicked, mut aborted_or_handed_back) =
        (0usize, 0usize, 0usize, 0usize);
    let mut only_slow_timed_out = true;
    for (job, handle) in admitted {
        match handle.await {
            Exit::Ok(done) => {
                completed += 1;
                only_slow_timed_out &= done == job && !is_slow(job);
            }
            Exit::Err(_) => {
                timed_out += 1;
                only_slow_timed_out &= is_slow(job);
            }
            Exit::Panicked(_) => panicked += 1,
            _ => aborted_or_handed_back += 1,
        }
    }
    s.metric(
        "workers / queue / job timeout",
        format!("{WORKERS} / {QUEUE} / {}", ms(JOB_TIMEOUT)),
    )
    .metric("jobs", "20 ms each; every 10th sleeps 1 s (times out)")
    .metric(
        "burst: produced / admitted / shed (try_submit)",
        format!("{burst} / {burst_admitted} / {burst_shed}"),
    )
    .metric("queued after the burst", queued_after_burst)
    .metric("backpressured jobs (submit().await)", pressed)
    .metric("producer held back", ms(held_back))
    .metric(
        &format!(
            "floor: ≥ {} jobs must end first, ≤ 2 per 20 ms",
            pressed.saturating_sub(QUEUE)
        ),
        ms(floor),
    )
    .metric("queue peak (sampled after each submit)", peak_queued)
    .metric("queued at shutdown (after a top-up)", queued_at_shutdown)
    .metric("drain deadline", ms(DRAIN))
    .metric("shutdown took", ms(shutdown_took))
    .metric(
        "produced / admitted / shed",
        format!("{produced} / {} / {shed}", admitted_jobs.len()),
    )
    .metric(
        "submitted / completed / failed (aborted) / handed back",
        format!(
            "{} / {} / {} ({}) / {handed_back}",
            report.submitted, report.completed, report.failed, report.aborted
        ),
    )
    .metric(
        "handed back",
        report
            .handed_back
            .iter()
            .map(|job| format!("#{job}"))
            .collect::<Vec<_>>()
            .join(", "),
    )
    .metric(
        "handles: completed / timed out / panicked / aborted or handed back",
        format!("{completed} / {timed_out} / {panicked} / {aborted_or_handed_back}"),
    );
    s.check(
        "shed + admitted = produced; every shed job came back intact in SubmitError::Full",
        shed + admitted_jobs.len() == produced && refused_closed == 0 && intact,
    );
    s.check(
        "the burst filled the queue (≥ 8 admitted) and shed the rest without waiting",
        burst_admitted >= QUEUE && burst_admitted + burst_shed == burst,
    );
    s.check(
        &format!(
            "backpressure: submit() held the producer ≥ {} for {pressed} jobs",
            ms(floor)
        ),
        held_back >= floor,
    );
    s.check(
        "submitted = completed + failed + handed back",
        report.submitted == report.completed + report.failed + handed_back as u64,
    );
    s.check(
        "the pool counted exactly the admitted jobs (shed ones never entered)",
        report.submitted == admitted_jobs.len() as u64,
    );
    s.check(
        "the 30 ms drain was too short: jobs handed back, the latest admitted, in order",
        handed_back > 0 && admitted_jobs.ends_with(&report.handed_back),
    );
    s.check(
        "the job handles agree with the report",
        completed as u64 == report.completed
            && (timed_out + panicked) as u64 + report.aborted == report.failed
            && aborted_or_handed_back as u64 == report.aborted + handed_back as u64,
    );
    s.check(
        "the 100 ms job timeout cut only the slow jobs",
        only_slow_timed_out,
    );
    s
}

fn since<R: Net>(rt: &R, start: Instant) -> Duration {
    rt.now().saturating_duration_since(start)
}
