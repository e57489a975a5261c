//! What the hint tests share: the scripted errors and values, the classifier and its hints,
//! one case run through each of the four retry fronts.
#![allow(dead_code, unreachable_pub)]

use crate::common::ms;
use crate::fronts::secs;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidewall::breaker::CircuitBreaker;
use tidewall::budget::RetryBudget;
use tidewall::classify::Verdict;
use tidewall::pipeline::{BoxPipeline, Pipeline};
use tidewall::retry::RetryError;
use tidewall::rt::{Clock, Runtime};
use tidewall::testing::{Clocked, Scripted};
use tidewall::tower::RetryLayer;
use tidewall::{Backoff, Deadline, Error, RetryAfter, RetryExt};
use tower::ServiceExt as _;
use tower_layer::Layer;

/// Errors: each but `Busy` carries a hint; the classifier judges them differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Busy,
    Throttled(Duration),
    Invalid(Duration),
    Cancelled(Duration),
    Done(Duration),
}

impl RetryAfter for Api {
    fn retry_after(&self) -> Option<Duration> {
        match *self {
            Self::Busy => None,
            Self::Throttled(d) | Self::Invalid(d) | Self::Cancelled(d) | Self::Done(d) => Some(d),
        }
    }
}

impl std::fmt::Display for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

impl std::error::Error for Api {}

/// The hints an `Ok` value can carry, by index.
pub const HINTS: [Duration; 8] = [
    Duration::ZERO,
    Duration::from_nanos(1),
    Duration::from_millis(1),
    Duration::from_millis(15),
    Duration::from_millis(50),
    Duration::from_secs(1),
    Duration::from_secs(3600),
    Duration::MAX,
];
pub const H0: u32 = 0;
pub const H1NS: u32 = 1;
pub const H1MS: u32 = 2;
pub const H15: u32 = 3;
pub const H50: u32 = 4;
pub const H1S: u32 = 5;
pub const HOUR: u32 = 6;
pub const HMAX: u32 = 7;
/// `Ok` values: `RETRY + i` is a 503-like response (retryable) asking to wait `HINTS[i]`;
/// `SUCCESS`, `FAILURE` and `IGNORED + i` carry the same hint under other verdicts; values
/// under 100 are plain successes; `PENDING` is retryable with no hint.
pub const RETRY: u32 = 100;
pub const SUCCESS: u32 = 200;
pub const FAILURE: u32 = 300;
pub const IGNORED: u32 = 400;
pub const PENDING: u32 = 500;

pub fn judge(result: Result<&u32, &Api>) -> Verdict {
    match result {
        Ok(&PENDING) => Verdict::RetryableFailure,
        Ok(v) if (RETRY..SUCCESS).contains(v) => Verdict::RetryableFailure,
        Ok(v) if (FAILURE..IGNORED).contains(v) => Verdict::Failure,
        Ok(v) if (IGNORED..PENDING).contains(v) => Verdict::Ignored,
        Ok(_) | Err(Api::Done(_)) => Verdict::Success,
        Err(Api::Busy | Api::Throttled(_)) => Verdict::RetryableFailure,
        Err(Api::Invalid(_)) => Verdict::Failure,
        Err(Api::Cancelled(_)) => Verdict::Ignored,
    }
}

pub fn hint_of(result: Result<&u32, &Api>) -> Option<Duration> {
    match result {
        Err(e) => e.retry_after(),
        Ok(v) if (RETRY..PENDING).contains(v) => HINTS.get(((v - RETRY) % 100) as usize).copied(),
        Ok(_) => None,
    }
}

/// The same, over a typed tower stack's one error type.
pub fn judge_typed(result: Result<&u32, &Error<Api>>) -> Verdict {
    match result {
        Ok(v) => judge(Ok(v)),
        Err(Error::Inner(e)) => judge(Err(e)),
        Err(_) => Verdict::RetryableFailure,
    }
}

pub fn hint_typed(result: Result<&u32, &Error<Api>>) -> Option<Duration> {
    match result {
        Ok(v) => hint_of(Ok(v)),
        Err(e) => e.retry_after(),
    }
}

/// Every verdict the `retry_after_with` source was asked about ("read only for a result
/// judged a failure").
#[derive(Clone, Default)]
pub struct Reads(pub Arc<Mutex<Vec<Verdict>>>);

impl Reads {
    pub fn source(
        &self,
    ) -> impl Fn(Result<&u32, &Api>) -> Option<Duration> + Clone + Send + Sync + use<> {
        let log = self.0.clone();
        move |r: Result<&u32, &Api>| {
            log.lock().unwrap().push(judge(r));
            hint_of(r)
        }
    }
    pub fn non_failures(&self) -> Vec<Verdict> {
        let log = self.0.lock().unwrap();
        log.iter()
            .copied()
            .filter(|v| matches!(v, Verdict::Success | Verdict::Ignored))
            .collect()
    }
}

pub use crate::fronts::{constant, exponential};

pub fn now(r: Result<u32, Api>) -> (Duration, Result<u32, Api>) {
    (Duration::ZERO, r)
}

/// How a front reads hints: `honor_retry_after()` (errors only) or `retry_after_with(hint_of)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Errors,
    Results,
}

#[derive(Clone)]
pub struct Case {
    pub name: String,
    pub script: Vec<(Duration, Result<u32, Api>)>,
    pub backoff: Backoff,
    pub deadline: Option<Duration>,
    pub min_attempt_time: Duration,
    pub cap: Option<Duration>,
    pub mode: Mode,
    pub budget: Option<RetryBudget>,
}

pub fn case(name: &str, mode: Mode, script: Vec<(Duration, Result<u32, Api>)>) -> Case {
    Case {
        name: format!("{name} [{mode:?}]"),
        script,
        backoff: constant(ms(10), 4),
        deadline: None,
        min_attempt_time: Duration::ZERO,
        cap: None,
        mode,
        budget: None,
    }
}

/// The deadline cut a running attempt off before any attempt failed with an error.
pub const CUT: Api = Api::Cancelled(Duration::MAX);

/// (attempt starts from the call, when it returned, what it returned)
pub type Seen = (Vec<Duration>, Duration, Result<u32, Api>);

pub async fn by_future<R: Runtime>(rt: &Clocked<R>, c: &Case, reads: &Reads) -> Seen {
    let op = Scripted::with_latency(rt.clone(), c.script.clone());
    let start = rt.now();
    let deadline = c
        .deadline
        .map_or_else(Deadline::none, |d| Deadline::after(rt, d));
    macro_rules! run {
        ($retry:expr) => {{
            let mut retry = $retry
                .deadline(deadline)
                .min_attempt_time(c.min_attempt_time)
                .seed(7);
            if let Some(cap) = c.cap {
                retry = retry.max_retry_after(cap);
            }
            if let Some(b) = c.budget.clone() {
                retry = retry.budget(b);
            }
            retry.await
        }};
    }
    let base = (|| op.call()).retry_on(rt, c.backoff).classify(judge);
    let out = match c.mode {
        Mode::Errors => run!(base.honor_retry_after()),
        Mode::Results => run!(base.retry_after_with(reads.source())),
    };
    let result = match out {
        Ok(v) => Ok(v),
        Err(
            RetryError::Inner(e)
            | RetryError::DeadlineExceeded {
                last_error: Some(e),
                ..
            },
        ) => Err(e),
        Err(RetryError::DeadlineExceeded {
            last_error: None, ..
        }) => Err(CUT),
        Err(other) => panic!("{}: retry future ended with {other:?}", c.name),
    };
    (op.start_offsets(), rt.now() - start, result)
}

pub async fn by_pipeline<R: Runtime>(
    rt: &Clocked<R>,
    c: &Case,
    reads: &Reads,
    boxed: bool,
) -> Seen {
    let op = Scripted::with_latency(rt.clone(), c.script.clone());
    macro_rules! run {
        ($builder:expr) => {{
            let mut builder = $builder.min_attempt_time(c.min_attempt_time).seed(7);
            if let Some(cap) = c.cap {
                builder = builder.max_retry_after(cap);
            }
            if let Some(b) = c.budget.clone() {
                builder = builder.retry_budget(b);
            }
            let pipeline = builder.build().unwrap();
            let deadline = c
                .deadline
                .map_or_else(Deadline::none, |d| Deadline::after(rt, d));
            if boxed {
                let pipeline: BoxPipeline<u32, Api> = pipeline.boxed();
                pipeline.call_before(deadline, || op.call()).await
            } else {
                pipeline.call_before(deadline, || op.call()).await
            }
        }};
    }
    let start = rt.now();
    let base = Pipeline::builder()
        .runtime(rt.clone())
        .retry(c.backoff)
        .classify(judge);
    let out = match c.mode {
        Mode::Errors => run!(base.honor_retry_after()),
        Mode::Results => run!(base.retry_after_with(reads.source())),
    };
    let result = match out {
        Ok(v) => Ok(v),
        Err(Error::Inner(e)) => Err(e),
        Err(Error::TimedOut | Error::Rejected(tidewall::Rejected::DeadlineExceeded)) => Err(CUT),
        Err(other) => panic!("{}: pipeline ended with {other:?}", c.name),
    };
    (op.start_offsets(), rt.now() - start, result)
}

pub async fn by_tower<R: Runtime>(rt: &Clocked<R>, c: &Case, reads: &Reads) -> Seen {
    let op = Scripted::with_latency(rt.clone(), c.script.clone());
    let inner = {
        let op = op.clone();
        tower::service_fn(move |(): ()| {
            let op = op.clone();
            async move { op.call().await }
        })
    };
    macro_rules! run {
        ($layer:expr) => {{
            let mut layer = $layer.min_attempt_time(c.min_attempt_time).seed(7);
            if let Some(d) = c.deadline {
                layer = layer.deadline(d);
            }
            if let Some(cap) = c.cap {
                layer = layer.max_retry_after(cap);
            }
            if let Some(b) = c.budget.clone() {
                layer = layer.budget(b);
            }
            layer.layer(inner).oneshot(()).await
        }};
    }
    let start = rt.now();
    let base = RetryLayer::new(c.backoff)
        .runtime(rt.clone())
        .classify(judge);
    let result = match c.mode {
        Mode::Errors => run!(base.honor_retry_after()),
        Mode::Results => run!(base.retry_after_with(reads.source())),
    };
    (op.start_offsets(), rt.now() - start, result)
}

pub const FRONTS: [&str; 4] = [
    "retry future",
    "pipeline",
    "boxed pipeline",
    "tower RetryLayer",
];

pub async fn by_front<R: Runtime>(rt: &Clocked<R>, c: &Case, front: &str, reads: &Reads) -> Seen {
    match front {
        "retry future" => by_future(rt, c, reads).await,
        "pipeline" => by_pipeline(rt, c, reads, false).await,
        "boxed pipeline" => by_pipeline(rt, c, reads, true).await,
        _ => by_tower(rt, c, reads).await,
    }
}

/// Runs `c` through the four fronts; checks each against `expected` and the hint reads.
pub async fn four_fronts<R: Runtime>(rt: &Clocked<R>, c: &Case, expected: &Seen) -> Vec<String> {
    let mut problems = Vec::new();
    for front in FRONTS {
        let reads = Reads::default();
        let seen = by_front(rt, c, front, &reads).await;
        if &seen != expected {
            problems.push(format!(
                "{front}: {}: saw {seen:?}, expected {expected:?}",
                c.name
            ));
        }
        let wrong = reads.non_failures();
        if !wrong.is_empty() {
            // "Read only for a result judged a failure."
            problems.push(format!("{front}: {}: hint read for {wrong:?}", c.name));
        }
    }
    problems
}

pub fn at(starts: &[u64]) -> Vec<Duration> {
    starts.iter().map(|&n| ms(n)).collect()
}

/// (case, expected starts in ms, end in ms, result)
#[rustfmt::skip] // a table: one scenario a line
pub fn matrix() -> Vec<(Case, Seen)> {
    use Mode::{Errors, Results};
    let ok = |i| Ok(RETRY + i);
    let thr = |i: u32| Err(Api::Throttled(HINTS[i as usize]));
    let long = |d| Err(Api::Throttled(ms(d)));
    let mut out = Vec::new();
    let mut push = |c: Case, starts: &[u64], end: u64, r: Result<u32, Api>| out.push((c, (at(starts), ms(end), r)));
    // An Ok 503 with a hint: honoured by retry_after_with, invisible to honor_retry_after.
    push(case("ok hint longer than schedule", Results, vec![now(ok(H50)), now(Ok(7))]), &[0, 50], 50, Ok(7));
    push(case("ok hint longer than schedule", Errors, vec![now(ok(H50)), now(Ok(7))]), &[0, 10], 10, Ok(7));
    for mode in [Errors, Results] {
        for (i, delay) in [(H50, 50), (H1MS, 10), (H0, 10), (H1NS, 10), (HMAX, 60_000)] {
            push(case(&format!("err hint {:?}", HINTS[i as usize]), mode, vec![now(thr(i)), now(Ok(7))]), &[0, delay], delay, Ok(7));
        }
        // Hints on results not judged retryable delay nothing, first attempt or later.
        for r in [Ok(SUCCESS + HOUR), Ok(FAILURE + HOUR), Ok(IGNORED + HOUR), Ok(SUCCESS + HMAX)] {
            push(case(&format!("no delay for {r:?}"), mode, vec![now(r)]), &[0], 0, r);
            push(case(&format!("no delay after a retry for {r:?}"), mode, vec![now(Err(Api::Busy)), now(r)]), &[0, 10], 10, r);
        }
        for r in [Err(Api::Invalid(secs(3600))), Err(Api::Cancelled(secs(3600))), Err(Api::Done(Duration::MAX))] {
            push(case(&format!("no delay for {r:?}"), mode, vec![now(r)]), &[0], 0, r);
            push(case(&format!("no delay after a retry for {r:?}"), mode, vec![now(thr(H1MS)), now(r)]), &[0, 10], 10, r);
        }
        // The last attempt's hint is no reason to sleep.
        let c = Case { backoff: constant(ms(10), 2), ..case("hint on the last attempt", mode, vec![now(thr(HOUR))]) };
        push(c, &[0, 60_000], 60_000, thr(HOUR));
        // Hints raise an exponential schedule, never lower it.
        let c = Case { backoff: exponential(ms(10), 4), ..case("hint under later delays", mode, vec![now(thr(H15))]) };
        push(c, &[0, 15, 35, 75], 75, thr(H15));
        // Hint + min_attempt_time past the deadline: no retry (capped or not); within: retried.
        let c = Case { deadline: Some(ms(100)), min_attempt_time: ms(30), ..case("hint 80 + min 30 past deadline 100", mode, vec![now(long(80)), now(Ok(7))]) };
        push(c, &[0], 0, long(80));
        let c = Case { deadline: Some(ms(100)), min_attempt_time: ms(30), ..case("hint 60 + min 30 within deadline 100", mode, vec![now(long(60)), now(Ok(7))]) };
        push(c, &[0, 60], 60, Ok(7));
        let c = Case { cap: Some(ms(20)), deadline: Some(ms(100)), min_attempt_time: ms(30), ..case("capped hint 80 + min 30 past deadline", mode, vec![now(long(80)), now(Ok(7))]) };
        push(c, &[0], 0, long(80));
        let c = Case { cap: Some(ms(20)), deadline: Some(ms(100)), min_attempt_time: ms(30), ..case("capped hint 60 + min 30 within deadline", mode, vec![now(long(60)), now(Ok(7))]) };
        push(c, &[0, 20], 20, Ok(7));
        // max_retry_after Duration::MAX: the hint is the wait; a MAX hint before a deadline ends at once.
        let c = Case { cap: Some(Duration::MAX), ..case("cap MAX, hour hint", mode, vec![now(thr(HOUR)), now(Ok(7))]) };
        push(c, &[0, 3_600_000], 3_600_000, Ok(7));
        let c = Case { cap: Some(Duration::MAX), deadline: Some(secs(1)), ..case("cap MAX, MAX hint, deadline", mode, vec![now(thr(HMAX)), now(Ok(7))]) };
        push(c, &[0], 0, thr(HMAX));
        let c = Case { deadline: Some(secs(120)), ..case("default cap, MAX hint, deadline 2 min", mode, vec![now(thr(HMAX)), now(Ok(7))]) };
        push(c, &[0], 0, thr(HMAX));
    }
    for (mode, r) in [(Errors, thr(H50)), (Results, thr(H50)), (Results, ok(H50))] {
        // max_retry_after zero: the hint is cut to nothing, the schedule stays ...
        let c = Case { cap: Some(Duration::ZERO), ..case("cap zero", mode, vec![now(r), now(Ok(7))]) };
        push(c, &[0, 10], 10, Ok(7));
        // ... but the whole hint still ends past the deadline: no retry ("cap or not").
        let c = Case { cap: Some(Duration::ZERO), deadline: Some(ms(30)), ..case("cap zero, whole hint past deadline", mode, vec![now(r), now(Ok(7))]) };
        push(c, &[0], 0, r);
    }
    // The Ok-hint counterparts.
    for (i, delay) in [(H1MS, 10), (H0, 10), (H1NS, 10), (HMAX, 60_000), (HOUR, 60_000)] {
        push(case(&format!("ok hint {:?}", HINTS[i as usize]), Results, vec![now(ok(i)), now(Ok(7))]), &[0, delay], delay, Ok(7));
    }
    let c = Case { deadline: Some(ms(200)), ..case("ok hint past the deadline", Results, vec![now(ok(H1S)), now(Ok(7))]) };
    push(c, &[0], 0, ok(H1S));
    let c = Case { cap: Some(ms(100)), deadline: Some(ms(200)), ..case("capped ok hint past the deadline", Results, vec![now(ok(H1S)), now(Ok(7))]) };
    push(c, &[0], 0, ok(H1S));
    let c = Case { backoff: constant(ms(10), 3), ..case("ok hint values run out as Ok", Results, vec![now(ok(H50))]) };
    push(c, &[0, 50, 100], 100, ok(H50));
    out
}

pub fn brk<R: Runtime>(rt: &Clocked<R>) -> CircuitBreaker<Clocked<R>> {
    CircuitBreaker::builder()
        .runtime(rt.clone())
        .consecutive_failures(1)
        .break_duration(secs(1))
        .half_open_probes(1)
        .build()
        .unwrap()
}

pub fn service<R: Runtime>(
    op: &Scripted<Clocked<R>, u32, Api>,
) -> impl tower_service::Service<(), Response = u32, Error = Api, Future: Send + 'static>
+ Clone
+ Send
+ 'static {
    let op = op.clone();
    tower::service_fn(move |(): ()| {
        let op = op.clone();
        async move { op.call().await }
    })
}
