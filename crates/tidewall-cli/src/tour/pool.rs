//! The tour's worker-pool scenario: a pool under overload that sheds, pushes back, and
//! accounts for every job when it is shut down. No HTTP here: the work is the runtime's own
//! sleep, so it runs the same on every adapter.
//!
//! [`worker_pool`] runs it step by step: [`start`] the pool; a [`Producer`] makes jobs in three
//! phases ([`Producer::burst`], [`Producer::press`], [`Producer::top_up_and_shut_down`]);
//! [`Producer::settle`] awaits every handle; [`metrics`] prints the figures and [`checks`]
//! verifies them. Each wait on the pool is bounded ([`PHASE_LIMIT`]): a pool that hangs
//! fails the section's check.

use std::time::Duration;

use tidewall::task::Exit;
use tidewall::task::pool::{JobHandle, PoolReport, SubmitError, WorkerPool};

use super::bounded::{missed, within};
use super::client::{Net, since};
use super::report::{Section, ms};
use super::resilience::valid;
use super::scenarios::Size;

const WORKERS: usize = 2;
const QUEUE: usize = 8;
const JOB: Duration = Duration::from_millis(20);
const SLOW: Duration = Duration::from_secs(1);
const JOB_TIMEOUT: Duration = Duration::from_millis(100);
/// 8 queued jobs are 80 ms of work for 2 workers: a 30 ms drain cannot finish them.
const DRAIN: Duration = Duration::from_millis(30);
/// How long each phase that waits on the pool may take (the pressed submits, the shutdown,
/// the handles): each needs under a second.
const PHASE_LIMIT: Duration = Duration::from_secs(30);

/// The pool under test: jobs are numbered, and each returns its own number.
type Pool<R> = WorkerPool<usize, usize, R>;

/// The pool's jobs are numbered in submission order; every 10th (3, 13, 23, …) is slow.
fn is_slow(job: usize) -> bool {
    job % 10 == 3
}

pub(crate) async fn worker_pool<R: Net>(rt: &R, size: Size) -> Section {
    let quick = size == Size::Quick;
    let burst: usize = if quick { 50 } else { 100 };
    let pressed: usize = if quick { 12 } else { 24 };
    let mut s = Section::new(
        "Tasks: worker pool under overload, drained on shutdown",
        "WorkerPool::builder().workers(2).queue(8).job_timeout(100 ms).start(job)?; \
         try_submit / submit / shutdown(30 ms)",
    );
    let pool = start(rt);
    let mut producer = Producer::new();
    let burst = producer.burst(&pool, burst);
    let pressing = producer.press(rt, &pool, pressed, burst.queued_after);
    let Some(press) = within(rt, PHASE_LIMIT, pressing).await else {
        return missed(s, "submit().await admitted every job", PHASE_LIMIT);
    };
    let stopping = producer.top_up_and_shut_down(rt, pool);
    let Some(stop) = within(rt, PHASE_LIMIT, stopping).await else {
        return missed(s, "shutdown(30 ms) returned its report", PHASE_LIMIT);
    };
    let Some((tally, handles)) = within(rt, PHASE_LIMIT, producer.settle()).await else {
        return missed(
            s,
            "every job handle resolved after the shutdown",
            PHASE_LIMIT,
        );
    };
    let outcome = Outcome {
        burst,
        press,
        stop,
        tally,
        handles,
    };
    metrics(&mut s, &outcome);
    checks(&mut s, &outcome);
    s
}

/// Set up: 2 workers, a queue of 8, a 100 ms job timeout; a job sleeps 20 ms (1 s if slow)
/// on `rt`'s clock and returns its number.
fn start<R: Net>(rt: &R) -> Pool<R> {
    let clock = rt.clone();
    valid(
        WorkerPool::builder()
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
            }),
    )
}

/// Makes the jobs, numbered in order. Every job produced is admitted (its handle kept) or shed
/// (handed back by the error, and checked to be the very job submitted).
struct Producer {
    produced: usize,
    admitted: Vec<(usize, JobHandle<usize>)>,
    shed: usize,
    refused_closed: usize,
    intact: bool,
}

/// Phase 1: a burst with `try_submit`.
struct Burst {
    jobs: usize,
    admitted: usize,
    shed: usize,
    queued_after: usize,
}

/// Phase 2: jobs with `submit().await`, which holds the producer back.
struct Press {
    jobs: usize,
    held_back: Duration,
    /// The least time `held_back` can be.
    floor: Duration,
    peak_queued: usize,
}

/// Phase 3: the queue topped up, then the pool shut down.
struct Stop {
    queued_at_shutdown: usize,
    took: Duration,
    report: PoolReport<usize>,
}

/// Every job the producer made, once the phases are over.
struct Tally {
    produced: usize,
    /// The admitted jobs, in submission order.
    admitted: Vec<usize>,
    shed: usize,
    refused_closed: usize,
    intact: bool,
}

/// How the admitted jobs' handles resolved.
struct Handles {
    completed: usize,
    timed_out: usize,
    panicked: usize,
    aborted_or_handed_back: usize,
    only_slow_timed_out: bool,
}

/// Everything the scenario measured.
struct Outcome {
    burst: Burst,
    press: Press,
    stop: Stop,
    tally: Tally,
    handles: Handles,
}

impl Producer {
    fn new() -> Self {
        Self {
            produced: 0,
            admitted: Vec::new(),
            shed: 0,
            refused_closed: 0,
            intact: true,
        }
    }

    fn next_job(&mut self) -> usize {
        let job = self.produced;
        self.produced += 1;
        job
    }

    /// Keeps the handle of an admitted `job`, or counts it shed (`Full`, which only
    /// `try_submit` returns) or refused (`Closed`); `true` when it was admitted.
    fn record(
        &mut self,
        job: usize,
        submitted: Result<JobHandle<usize>, SubmitError<usize>>,
    ) -> bool {
        match submitted {
            Ok(handle) => {
                self.admitted.push((job, handle));
                return true;
            }
            Err(SubmitError::Full(back)) => {
                self.shed += 1;
                self.intact &= back == job;
            }
            Err(other) => {
                self.refused_closed += 1;
                self.intact &= other.into_job() == job;
            }
        }
        false
    }

    /// 1. A burst with try_submit: the queue fills, the rest is shed at once, nothing waits.
    fn burst<R: Net>(&mut self, pool: &Pool<R>, jobs: usize) -> Burst {
        let (admitted, shed) = (self.admitted.len(), self.shed);
        for _ in 0..jobs {
            let job = self.next_job();
            self.record(job, pool.try_submit(job));
        }
        Burst {
            jobs,
            admitted: self.admitted.len() - admitted,
            shed: self.shed - shed,
            queued_after: pool.queued(),
        }
    }

    /// 2. More jobs with submit().await: the producer waits for room. At least `jobs − 8` of
    ///    them need a job to end first (even from an empty queue), and each worker ends at
    ///    most one job at once plus one per 20 ms: that bounds the wait from below.
    async fn press<R: Net>(
        &mut self,
        rt: &R,
        pool: &Pool<R>,
        jobs: usize,
        queued_before: usize,
    ) -> Press {
        let started = rt.now();
        let mut peak_queued = queued_before;
        for _ in 0..jobs {
            let job = self.next_job();
            self.record(job, pool.submit(job).await);
            peak_queued = peak_queued.max(pool.queued());
        }
        let held_back = since(rt, started);
        let rounds = jobs
            .saturating_sub(QUEUE)
            .div_ceil(WORKERS)
            .saturating_sub(1);
        Press {
            jobs,
            held_back,
            floor: JOB * u32::try_from(rounds).unwrap_or(u32::MAX),
            peak_queued,
        }
    }

    /// 3. Fill the queue to the brim and shut down at once (no await in between): the drain
    ///    starts with 8 queued jobs, and in 30 ms two workers can start at most 4 of them.
    async fn top_up_and_shut_down<R: Net>(&mut self, rt: &R, pool: Pool<R>) -> Stop {
        for _ in 0..4 * QUEUE {
            let job = self.next_job();
            if !self.record(job, pool.try_submit(job)) {
                break;
            }
        }
        let queued_at_shutdown = pool.queued();
        let stopping = rt.now();
        let report = pool.shutdown(DRAIN).await;
        Stop {
            queued_at_shutdown,
            took: since(rt, stopping),
            report,
        }
    }

    /// Every handle resolves now: run, timed out, or `Aborted`, which a handle reads both for
    /// a job aborted at the deadline and for one handed back (the report tells them apart).
    async fn settle(self) -> (Tally, Handles) {
        let tally = Tally {
            produced: self.produced,
            admitted: self.admitted.iter().map(|(job, _)| *job).collect(),
            shed: self.shed,
            refused_closed: self.refused_closed,
            intact: self.intact,
        };
        let mut handles = Handles {
            completed: 0,
            timed_out: 0,
            panicked: 0,
            aborted_or_handed_back: 0,
            only_slow_timed_out: true,
        };
        for (job, handle) in self.admitted {
            match handle.await {
                Exit::Ok(done) => {
                    handles.completed += 1;
                    handles.only_slow_timed_out &= done == job && !is_slow(job);
                }
                Exit::Err(_) => {
                    handles.timed_out += 1;
                    handles.only_slow_timed_out &= is_slow(job);
                }
                Exit::Panicked(_) => handles.panicked += 1,
                _ => handles.aborted_or_handed_back += 1,
            }
        }
        (tally, handles)
    }
}

fn metrics(s: &mut Section, outcome: &Outcome) {
    let Outcome {
        burst,
        press,
        stop,
        tally,
        handles,
    } = outcome;
    let report = &stop.report;
    s.metric(
        "workers / queue / job timeout",
        format!("{WORKERS} / {QUEUE} / {}", ms(JOB_TIMEOUT)),
    )
    .metric("jobs", "20 ms each; every 10th sleeps 1 s (times out)")
    .metric(
        "burst: produced / admitted / shed (try_submit)",
        format!("{} / {} / {}", burst.jobs, burst.admitted, burst.shed),
    )
    .metric("queued after the burst", burst.queued_after)
    .metric("backpressured jobs (submit().await)", press.jobs)
    .metric("producer held back", ms(press.held_back))
    .metric(
        &format!(
            "floor: ≥ {} jobs must end first, ≤ 2 per 20 ms",
            press.jobs.saturating_sub(QUEUE)
        ),
        ms(press.floor),
    )
    .metric("queue peak (sampled after each submit)", press.peak_queued)
    .metric(
        "queued at shutdown (after a top-up)",
        stop.queued_at_shutdown,
    )
    .metric("drain deadline", ms(DRAIN))
    .metric("shutdown took", ms(stop.took))
    .metric(
        "produced / admitted / shed",
        format!(
            "{} / {} / {}",
            tally.produced,
            tally.admitted.len(),
            tally.shed
        ),
    )
    .metric(
        "submitted / completed / failed (aborted) / handed back",
        format!(
            "{} / {} / {} ({}) / {}",
            report.submitted,
            report.completed,
            report.failed,
            report.aborted,
            report.handed_back.len()
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
        format!(
            "{} / {} / {} / {}",
            handles.completed, handles.timed_out, handles.panicked, handles.aborted_or_handed_back
        ),
    );
}

fn checks(s: &mut Section, outcome: &Outcome) {
    let Outcome {
        burst,
        press,
        stop,
        tally,
        handles,
    } = outcome;
    let report = &stop.report;
    let handed_back = report.handed_back.len();
    s.check(
        "shed + admitted = produced; every shed job came back intact in SubmitError::Full",
        tally.shed + tally.admitted.len() == tally.produced
            && tally.refused_closed == 0
            && tally.intact,
    );
    s.check(
        "the burst filled the queue (≥ 8 admitted) and shed the rest without waiting",
        burst.admitted >= QUEUE && burst.admitted + burst.shed == burst.jobs,
    );
    s.check(
        &format!(
            "backpressure: submit() held the producer ≥ {} for {} jobs",
            ms(press.floor),
            press.jobs
        ),
        press.held_back >= press.floor,
    );
    s.check(
        "submitted = completed + failed + handed back",
        report.submitted == report.completed + report.failed + handed_back as u64,
    );
    s.check(
        "the pool counted exactly the admitted jobs (shed ones never entered)",
        report.submitted == tally.admitted.len() as u64,
    );
    s.check(
        "the 30 ms drain was too short: jobs handed back, the latest admitted, in order",
        handed_back > 0 && tally.admitted.ends_with(&report.handed_back),
    );
    s.check(
        "the job handles agree with the report",
        handles.completed as u64 == report.completed
            && (handles.timed_out + handles.panicked) as u64 + report.aborted == report.failed
            && handles.aborted_or_handed_back as u64 == report.aborted + handed_back as u64,
    );
    s.check(
        "the 100 ms job timeout cut only the slow jobs",
        handles.only_slow_timed_out,
    );
}
