//! Hostile task-pattern tests, written from the rustdoc alone: worker pools, supervisors,
//! fan-out and cancellation tokens under aborted tasks and futures dropped at random await
//! points (seeded), with every job, slot and child accounted for afterwards.

mod common;
mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use support::{Gauge, Rng, assert_conserved, maybe_cancel, ms};
use tidewall::breaker::{CircuitBreaker, State};
use tidewall::bulkhead::Bulkhead;
use tidewall::fan_out::FanOut;
use tidewall::rt::{Clock, Runtime, Spawn, TaskHandle};
use tidewall::task::{
    CancellationToken, Exit,
    pool::{SubmitError, WorkerPool},
    supervisor::{ChildSpec, Supervisor},
};
use tidewall::testing::Clocked;
use tidewall::{Backoff, Jitter};

// Docs (`WorkerPool::submit`): "Cancel safety: dropping the future before it resolves drops
// `job` unqueued." (`WorkerPool`): "a shutdown that drains within a deadline and hands back
// every job never started (`submitted = completed + failed + handed back`)"; "A panicking job
// is reported as `Exit::Panicked` and the worker goes on with the next job".
async fn pool_storm<R: Runtime>(rt: Clocked<R>) {
    let started = Arc::new(Mutex::new(Vec::new()));
    let (clock, log) = (rt.clone(), started.clone());
    let pool = WorkerPool::builder()
        .workers(3)
        .queue(5)
        .job_timeout(ms(40))
        .runtime(rt.clone())
        .start(move |job: u64| {
            log.lock().unwrap().push(job);
            let clock = clock.clone();
            async move {
                clock.sleep(ms(job % 60)).await;
                assert!(!job.is_multiple_of(17), "job {job} panics");
                job
            }
        })
        .unwrap();
    let accepted = Arc::new(Mutex::new(BTreeSet::new()));
    let mut rng = Rng::new(0x9001);
    let mut producers = Vec::new();
    for job in 0..300u64 {
        let (submitter, accepted, clock) = (pool.submitter(), accepted.clone(), rt.clone());
        let (draw, delay, keep) = (rng.next(), ms(rng.below(200)), rng.chance(2));
        producers.push(rt.spawn(async move {
            clock.sleep(delay).await;
            let submitted = maybe_cancel(&clock, draw, submitter.submit(job)).await;
            let Some(result) = submitted else { return };
            match result {
                Ok(handle) => {
                    accepted.lock().unwrap().insert(job);
                    if keep {
                        let exit = handle.await;
                        let ok = matches!(exit, Exit::Ok(j) if j == job);
                        // Panicked, timed out (`Err`), or aborted or handed back at shutdown.
                        let failed =
                            matches!(exit, Exit::Panicked(_) | Exit::Err(_) | Exit::Aborted);
                        assert!(ok || failed, "job {job}: {exit:?}");
                    }
                }
                Err(SubmitError::Closed(j)) => assert_eq!(j, job),
                Err(e) => panic!("job {job}: {e}"),
            }
        }));
    }
    // Abort a quarter of the producers at random moments.
    let mut plan = Vec::new();
    for p in producers {
        let abort = rng.chance(4).then(|| ms(rng.below(250)));
        plan.push((p, abort));
    }
    for (p, abort) in &plan {
        if let Some(after) = abort {
            rt.sleep(*after / 20).await;
            p.abort();
        }
    }
    rt.sleep(ms(150)).await;
    let report = pool.shutdown(ms(30)).await;
    for (p, _) in plan {
        let _ = p.await;
    }
    let accepted = accepted.lock().unwrap().clone();
    let started: Vec<u64> = started.lock().unwrap().clone();
    let started_set: BTreeSet<u64> = started.iter().copied().collect();
    assert_eq!(started.len(), started_set.len(), "a job ran twice");
    let handed: BTreeSet<u64> = report.handed_back.iter().copied().collect();
    assert_eq!(
        handed.len(),
        report.handed_back.len(),
        "a job handed back twice"
    );
    assert!(
        started_set.is_disjoint(&handed),
        "a job both ran and was handed back"
    );
    let union: BTreeSet<u64> = started_set.union(&handed).copied().collect();
    assert_eq!(union, accepted, "jobs accepted vs. jobs run or handed back");
    assert_eq!(report.submitted, accepted.len() as u64);
    assert_eq!(
        report.submitted,
        report.completed + report.failed + report.handed_back.len() as u64,
        "{report:?}"
    );
    assert_eq!(report.completed + report.failed, started.len() as u64);
}

#[test]
fn a_worker_pool_accounts_for_every_job_under_random_cancellation_on_every_runtime() {
    on_every_runtime!(pool_storm);
}

// Docs (`Submitter::submit`): "`SubmitError::Closed` with the job once the pool is shutting
// down (also when it closes while this waits for room)."
async fn waiting_producers_get_their_jobs_back<R: Runtime>(rt: Clocked<R>) {
    let clock = rt.clone();
    let pool = WorkerPool::builder()
        .workers(1)
        .queue(1)
        .runtime(rt.clone())
        .start(move |d: u64| {
            let clock = clock.clone();
            async move {
                clock.sleep(ms(d)).await;
                d
            }
        })
        .unwrap();
    let running = pool.submit(1_000).await.unwrap();
    rt.sleep(ms(1)).await;
    let queued = pool.submit(1_000).await.unwrap();
    assert!(matches!(pool.try_submit(7), Err(SubmitError::Full(7))));
    let waiters: Vec<_> = (10..15u64)
        .map(|job| {
            let s = pool.submitter();
            rt.spawn(async move { s.submit(job).await.map(drop) })
        })
        .collect();
    rt.sleep(ms(10)).await;
    let report = pool.shutdown(ms(5_000)).await;
    for (w, job) in waiters.into_iter().zip(10..15u64) {
        assert_eq!(w.await.unwrap(), Err(SubmitError::Closed(job)));
    }
    assert!(matches!(running.await, Exit::Ok(1_000)));
    assert!(matches!(queued.await, Exit::Ok(1_000)));
    assert_eq!((report.submitted, report.completed), (2, 2));
}

#[test]
fn producers_waiting_for_room_get_their_jobs_back_on_shutdown_on_every_runtime() {
    on_every_runtime!(waiting_producers_get_their_jobs_back);
}

// Docs (`WorkerPool::shutdown`): "Cancel safety: dropping the future mid-way leaves the pool
// closed and its workers running until the queue is empty (they are detached, not aborted)."
async fn dropped_shutdown_leaves_workers_draining<R: Runtime>(rt: Clocked<R>) {
    use tidewall::FutureExt;
    let clock = rt.clone();
    let pool = WorkerPool::builder()
        .workers(1)
        .queue(10)
        .runtime(rt.clone())
        .start(move |d: u64| {
            let clock = clock.clone();
            async move {
                clock.sleep(ms(d)).await;
                d
            }
        })
        .unwrap();
    let submitter = pool.submitter();
    let mut handles = Vec::new();
    for _ in 0..5 {
        handles.push(pool.submit(100).await.unwrap());
    }
    assert!(
        pool.shutdown(ms(10_000))
            .timeout_on(&rt, ms(150))
            .await
            .is_err()
    );
    assert!(matches!(
        submitter.try_submit(1),
        Err(SubmitError::Closed(1))
    ));
    for (i, h) in handles.into_iter().enumerate() {
        let exit = h.await;
        assert!(matches!(exit, Exit::Ok(100)), "job {i}: {exit:?}");
    }
}

#[test]
fn a_dropped_pool_shutdown_leaves_the_workers_draining_on_every_runtime() {
    on_every_runtime!(dropped_shutdown_leaves_workers_draining);
}

// Docs (`Supervisor::run`): "Dropping the future cancels every child's token and aborts it
// at once"; (`Drop for Supervisor`) "no worker outlives its supervisor". Also for a nested
// supervisor child.
// The race is narrow: the scenario repeats so that a run that loses it is (all but) certain.
async fn aborted_supervisor_takes_its_children_down<R: Runtime>(rt: Clocked<R>) {
    for _round in 0..150 {
        aborted_supervisor_round(&rt).await;
    }
}

async fn aborted_supervisor_round<R: Runtime>(rt: &Clocked<R>) {
    for nested in [false, true] {
        let gauge = Gauge::default();
        let child = |name: &'static str, gauge: Gauge, clock: Clocked<R>| {
            ChildSpec::new(name, move |_stop| {
                let (gauge, clock) = (gauge.clone(), clock.clone());
                async move {
                    let _running = gauge.enter();
                    // Ignores its token: only an abort stops it.
                    clock
                        .sleep_until(clock.now() + Duration::from_secs(100 * 365 * 86_400))
                        .await;
                    Ok::<(), std::io::Error>(())
                }
            })
        };
        let inner_rt = rt.clone();
        let inner_gauge = gauge.clone();
        let mut builder = Supervisor::builder()
            .runtime(rt.clone())
            .child(child("a", gauge.clone(), rt.clone()))
            .child(child("b", gauge.clone(), rt.clone()));
        if nested {
            builder = builder.child(ChildSpec::supervisor("inner", move || {
                Supervisor::builder()
                    .runtime(inner_rt.clone())
                    .child(child("c", inner_gauge.clone(), inner_rt.clone()))
                    .child(child("d", inner_gauge.clone(), inner_rt.clone()))
                    .build()
                    .unwrap()
            }));
        }
        let sup = builder.build().unwrap();
        let task = rt.spawn(sup.run(CancellationToken::new()));
        rt.sleep(ms(5)).await;
        assert_eq!(gauge.now(), if nested { 4 } else { 2 });
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        rt.sleep(ms(5)).await;
        let soon = gauge.now();
        rt.sleep(Duration::from_secs(7_200)).await;
        assert_eq!(
            (soon, gauge.now()),
            (0, 0),
            "nested={nested}: children still running 5 ms and 2 h after their supervisor was aborted"
        );
    }
}

#[test]
fn an_aborted_supervisor_takes_every_child_down_on_every_runtime() {
    on_every_runtime!(aborted_supervisor_takes_its_children_down);
}

// Docs (`SupervisorBuilder::intensity`): "`max_restarts = 0` escalates on the first exit
// that would restart." Nested: "an escalation is a failure of that child in its parent".
async fn nested_escalation_counts<R: Runtime>(rt: Clocked<R>) {
    let inner_starts = Arc::new(AtomicU32::new(0));
    let (starts, inner_rt) = (inner_starts.clone(), rt.clone());
    let outer = Supervisor::builder()
        .runtime(rt.clone())
        .intensity(1, Duration::from_secs(60))
        .backoff(
            Backoff::constant(ms(1))
                .jitter(Jitter::None)
                .build()
                .unwrap(),
        )
        .child(ChildSpec::supervisor("inner", move || {
            let starts = starts.clone();
            Supervisor::builder()
                .runtime(inner_rt.clone())
                .intensity(0, Duration::from_secs(60))
                .child(ChildSpec::new("leaf", move |_stop| {
                    starts.fetch_add(1, SeqCst);
                    async { Err::<(), _>("leaf down") }
                }))
                .build()
                .unwrap()
        }))
        .build()
        .unwrap();
    let esc = outer.run(CancellationToken::new()).await.unwrap_err();
    assert_eq!(&*esc.child, "inner");
    // Each inner supervisor runs its leaf once and escalates at the first exit; the outer
    // restarts the inner once, then escalates.
    assert_eq!(inner_starts.load(SeqCst), 2);
    assert_eq!(esc.report.restarts, 1);
}

#[test]
fn nested_supervisors_escalate_exactly_per_their_intensities_on_every_runtime() {
    on_every_runtime!(nested_escalation_counts);
}

// Docs (fan_out): "Cancel safety: dropping the stream aborts every task still running (no
// orphaned work)"; "at most `limit` inputs are taken and not yet delivered".
async fn fan_out_inside_a_pipeline_op<R: Runtime>(rt: Clocked<R>) {
    use tidewall::pipeline::Pipeline;
    let bulkhead = Bulkhead::builder(2)
        .max_queue(100)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let pipeline = Arc::new(
        Pipeline::builder()
            .runtime(rt.clone())
            .deadline(ms(200))
            .bulkhead(bulkhead.clone())
            .build()
            .unwrap(),
    );
    let gauge = Gauge::default();
    let mut rng = Rng::new(0xFA40);
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let (pipeline, gauge, clock) = (pipeline.clone(), gauge.clone(), rt.clone());
        let (draw, stop_after) = (rng.next(), usize::try_from(rng.below(20)).unwrap());
        tasks.push(rt.spawn(async move {
            let call = pipeline.call(|| {
                let (gauge, clock) = (gauge.clone(), clock.clone());
                async move {
                    let fan = FanOut::new(3).unwrap().runtime(clock.clone());
                    let mut results = std::pin::pin!(fan.run_iter(0..40u64, move |n| {
                        let (gauge, clock) = (gauge.clone(), clock.clone());
                        async move {
                            let _running = gauge.enter();
                            clock.sleep(ms(1 + n % 9)).await;
                            n
                        }
                    }));
                    let mut got = 0;
                    while let Some(r) = results.next().await {
                        assert!(results.in_flight() <= 3);
                        r.unwrap();
                        got += 1;
                        if got == stop_after {
                            break;
                        }
                    }
                    Ok::<_, ()>(got)
                }
            });
            maybe_cancel(&clock, draw, call).await
        }));
    }
    for t in tasks {
        if rng.chance(5) {
            t.abort();
        }
        let _ = t.await;
    }
    rt.sleep(ms(5)).await;
    // Aborts take effect at the aborted task's next await point, so a call that follows a
    // dropped stream may briefly overlap its aborted tasks: only the end state is checked.
    assert_eq!(
        gauge.now(),
        0,
        "fan-out tasks outlived their dropped streams"
    );
    assert_conserved(&bulkhead);
}

#[test]
fn fan_outs_inside_pipeline_calls_leave_no_orphans_on_every_runtime() {
    on_every_runtime!(fan_out_inside_a_pipeline_op);
}

// Docs (`TaskHandle::abort`): "The task is dropped at its next await point". Tasks holding a
// bulkhead permit, queued for one, or holding a half-open probe are aborted: the bulkhead
// hands the slot to the next waiter in FIFO order, and the probe slot comes back.
async fn aborted_tasks_release_permits_and_probes<R: Runtime>(rt: Clocked<R>) {
    let bulkhead = Bulkhead::builder(1)
        .max_queue(10)
        .max_wait(None)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..6u32 {
        let (b, order, clock) = (bulkhead.clone(), order.clone(), rt.clone());
        tasks.push(rt.spawn(async move {
            let _p = b.acquire_owned(tidewall::Deadline::none()).await.unwrap();
            order.lock().unwrap().push(i);
            clock.sleep(ms(10)).await;
        }));
        rt.sleep(ms(1)).await;
    }
    assert_eq!(bulkhead.queued(), 5);
    tasks[0].abort(); // holding the slot
    tasks[2].abort(); // queued
    tasks[4].abort(); // queued
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await;
        assert_eq!(r.is_err(), [0, 2, 4].contains(&i), "task {i}: {r:?}");
    }
    assert_eq!(
        *order.lock().unwrap(),
        [0, 1, 3, 5],
        "FIFO among the survivors"
    );
    assert_conserved(&bulkhead);

    let breaker = CircuitBreaker::builder()
        .consecutive_failures(1)
        .break_duration(ms(10))
        .half_open_probes(1)
        .max_half_open_wait(None)
        .runtime(rt.clone())
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().failure();
    rt.sleep(ms(10)).await;
    let probe = breaker.try_acquire_owned().unwrap();
    let clock = rt.clone();
    let holder = rt.spawn(async move {
        clock.sleep(Duration::from_secs(3_600)).await;
        probe.success();
    });
    rt.sleep(ms(1)).await;
    assert!(breaker.try_acquire().is_err(), "the one probe is taken");
    holder.abort();
    assert!(holder.await.unwrap_err().is_cancelled());
    let p = breaker
        .try_acquire()
        .expect("the aborted probe gave its slot back");
    p.success();
    assert_eq!(breaker.state(), State::Closed);
}

#[test]
fn aborted_tasks_release_bulkhead_slots_and_probe_slots_on_every_runtime() {
    on_every_runtime!(aborted_tasks_release_permits_and_probes);
}

// Docs (`CancellationToken`): "child tokens are cancelled with their parent (with the
// parent's reason)"; "The first cancellation wins".
#[test]
fn a_child_of_a_cancelled_token_is_born_cancelled_with_the_parents_reason() {
    let root = CancellationToken::new();
    let early = root.child();
    root.cancel("first");
    root.cancel("second");
    let late = root.child();
    let grandchild = late.child();
    for t in [&early, &late, &grandchild] {
        assert!(t.is_cancelled());
        assert_eq!(t.reason().unwrap().as_str(), "first");
    }
    let r = futures_util::FutureExt::now_or_never(grandchild.cancelled());
    assert_eq!(r.unwrap().as_str(), "first");
}

// Docs (`CancellationToken`): "a parent holds its children weakly and forgets dropped ones
// when it is cancelled or when its list of children would otherwise grow, so the list stays
// within about twice the most children alive at once." Children created and dropped in a
// loop for a long-lived root must not make cancel slow or leak; cancel still reaches the
// live ones.
#[test]
fn a_long_lived_root_with_churning_children_still_cancels_the_live_ones() {
    let root = CancellationToken::new();
    let live: Vec<_> = (0..10).map(|_| root.child()).collect();
    for _ in 0..200_000 {
        let c = root.child();
        drop(c);
    }
    let woken = Arc::new(AtomicUsize::new(0));
    root.cancel("done");
    for c in &live {
        assert!(c.is_cancelled());
        if futures_util::FutureExt::now_or_never(c.cancelled()).is_some() {
            woken.fetch_add(1, SeqCst);
        }
    }
    assert_eq!(woken.load(SeqCst), 10);
}
