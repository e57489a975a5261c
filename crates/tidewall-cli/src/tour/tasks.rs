//! The tour's task-management scenarios: a fail-fast structured-concurrency scope whose
//! failure cancels its siblings (and aborts the one that will not listen), here, and a worker
//! pool under overload ([`super::pool`]). No HTTP: the work is the runtime's own sleep, so
//! both run the same on every adapter.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tidewall::rt::Panic;
use tidewall::task::{
    CancellationToken, Ending, Exit,
    scope::{FailurePolicy, Scope},
};

use super::bounded::{missed, within};
use super::client::{Net, since};
use super::pool::worker_pool;
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
/// wait for the 30 s sleep). Generous on purpose, as every time bound in the tour: a slow
/// machine should not miss it, and the 30 s sleep it tells apart is far beyond it; the
/// measured figure is printed above.
const CLOSE_SLACK: Duration = Duration::from_secs(5);
/// How long spawning the children and joining the scope may take. Past the stubborn child's
/// 30 s sleep, so a scope that waited for it instead of aborting it still closes, and fails
/// the check on when it closed with its figure printed.
const SCOPE_LIMIT: Duration = Duration::from_secs(60);

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
    let run = async {
        // The ids the scope gave, by spawn order; `None` where it refused the spawn.
        let mut ids = Vec::with_capacity(ROLES.len());
        for role in ROLES {
            let work = child(role, rt.clone(), scope.token(), Arc::clone(&failed_at));
            ids.push(scope.spawn(work).await.ok());
        }
        let all_spawned = since(rt, start);
        (ids, all_spawned, scope.join().await)
    };
    let Some((ids, all_spawned, mut report)) = within(rt, SCOPE_LIMIT, run).await else {
        return missed(
            s,
            "the scope spawned its 8 children and closed",
            SCOPE_LIMIT,
        );
    };
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
