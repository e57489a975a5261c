//! The tour's configuration sections: a registry's pipeline, its bulkhead raised and its
//! deadline lengthened by a reload while calls queue behind it (the held permits stay held,
//! the queue is served at once, the pipeline is made anew with the new deadline, and every
//! call is answered); and
//! an adaptive limit and a fault injector by name, chaos switched on by a reload and the
//! limit learning from the latency it injects; and a hedge by name, turned off by a reload.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tidewall::classify::{DefaultClassifier, WithRetryAfter};
use tidewall::config::{Config, LivePipeline, Registry};
use tidewall::hedge::Idempotent;

use super::bounded::{secs, until, within};
use super::client::{Client, HttpError, Net, since};
use super::report::{Section, ms};
use super::scenarios::{Size, settle};
use super::server::Server;

/// The instance whose bulkhead the reload raises.
const INSTANCE: &str = "tour-reload";
/// Its capacity before and after.
const BEFORE: usize = 2;
const AFTER: usize = 8;
/// Each call's time at the server.
const CALL: &str = "/delay/20";
/// Its pipeline's deadline before and after, in seconds.
const DEADLINE_BEFORE: u32 = 60;
const DEADLINE_AFTER: u32 = 120;
/// `Retry-After` hints that pin the deadline down: the retry engine refuses at once a retry
/// the deadline cannot wait for, and waits for one it can. 90 s lies between the two
/// deadlines, 150 s past both.
const BETWEEN: Duration = Duration::from_secs(90);
const PAST_BOTH: Duration = Duration::from_secs(150);
/// How long a call the pipeline waits to retry is watched before it is dropped: a refused
/// one answers in microseconds, a waiting one sleeps for a minute (the capped hint).
const WATCH: Duration = Duration::from_millis(200);
/// How long a refusal may take to come back before the probe counts it as a wait.
const ANSWER_LIMIT: Duration = Duration::from_secs(10);
/// How long the reload waits for a quarter of the calls, and how long the calls and the
/// reload may take in all (well under a second when the patterns behave).
const QUARTER_LIMIT: Duration = Duration::from_secs(20);
const TRAFFIC_LIMIT: Duration = Duration::from_secs(30);

pub(crate) async fn all<R: Net>(rt: R, server: &Server, size: Size) -> Vec<Section> {
    vec![
        reload_mid_traffic(&rt, server, size).await,
        game_day(&rt, server).await,
        hedge_by_name(&rt, server).await,
    ]
}

/// The hedge's delay, and how long the first copy of each of its calls takes at the server
/// (any later copy takes 5 ms).
const HEDGE_AFTER: Duration = Duration::from_millis(20);
const SLOW_COPY: Duration = Duration::from_millis(300);

/// The hedge instance, with `max_hedges` hedges per call.
fn hedge_config(max_hedges: u32) -> Config {
    let text = format!(
        "[instances.tour-hedge.hedge]\n\
         delay = \"{}ms\"\n\
         max_hedges = {max_hedges}\n",
        HEDGE_AFTER.as_millis()
    );
    Config::from_toml(&text).expect("a valid configuration")
}

/// A hedge by name: a call whose first copy is slow is answered by the hedge sent after the
/// configured delay; a reload to `max_hedges = 0` reaches the same handle, and the same call
/// then waits for its one slow copy.
async fn hedge_by_name<R: Net>(rt: &R, server: &Server) -> Section {
    let mut s = Section::new(
        "config: a hedge by name, turned off by a reload",
        "[hedge] by name; registry.hedge(name).call(Idempotent(op)); Registry::reload",
    );
    settle(rt, server).await;
    let registry = Registry::builder(hedge_config(1))
        .runtime(rt.clone())
        .build()
        .expect("a valid registry");
    let hedge = registry.hedge("tour-hedge").expect("a declared hedge");
    let client = Client::new(rt.clone(), server.addr);
    let slow = format!("/delay/{}", SLOW_COPY.as_millis());
    // One call: its answer, the copies it sent, and how long it took.
    let call = || async {
        let copies = AtomicUsize::new(0);
        let start = rt.now();
        let answered = hedge
            .call(Idempotent(|| {
                let first = copies.fetch_add(1, SeqCst) == 0;
                client.get(if first { &slow } else { "/delay/5" })
            }))
            .await
            .is_ok();
        (answered, copies.load(SeqCst), since(rt, start))
    };
    let hedged = call().await;
    let reload = registry.reload(hedge_config(0));
    let plain = call().await;
    s.metric(
        "first copy / any later copy",
        format!("{} / 5 ms at the server", ms(SLOW_COPY)),
    )
    .metric(
        "hedged after",
        format!("{} (max_hedges 1 → 0 by a reload)", ms(HEDGE_AFTER)),
    )
    .metric(
        "call before / after the reload",
        format!("{} / {}", ms(hedged.2), ms(plain.2)),
    )
    .metric(
        "copies sent before / after",
        format!("{} / {}", hedged.1, plain.1),
    );
    s.check(
        "the slow first copy was hedged after the configured delay, and the fast copy answered",
        hedged.0 && hedged.1 == 2 && hedged.2 >= HEDGE_AFTER && hedged.2 < SLOW_COPY,
    );
    s.check(
        "the reload reached the handle: the same call sent one copy and waited for it",
        reload.is_ok_and(|r| r.retuned == 1) && plain.0 && plain.1 == 1 && plain.2 >= SLOW_COPY,
    );
    s
}

/// The latency the game day's fault injector adds to every call it draws for.
const INJECTED: Duration = Duration::from_millis(100);

/// The instance of the game day: an AIMD limit whose timeout (50 ms) is far above the
/// server's 5 ms, and a fault injector delaying every call by [`INJECTED`], off until `chaos`.
fn game_day_config(chaos: bool) -> Config {
    let text = format!(
        "[instances.tour-game-day]\n\
         deadline = \"10s\"\n\
         [instances.tour-game-day.adaptive]\n\
         algorithm = \"aimd\"\n\
         initial_limit = 16\n\
         min_limit = 1\n\
         backoff_ratio = 0.5\n\
         timeout = \"50ms\"\n\
         [instances.tour-game-day.chaos]\n\
         seed = 7\n\
         enabled = {chaos}\n\
         latency_rate = 1.0\n\
         latency = \"{}ms\"\n",
        INJECTED.as_millis()
    );
    Config::from_toml(&text).expect("a valid configuration")
}

/// A game day by configuration: the instance's pipeline calls the server through its
/// adaptive limit and its fault injector; a reload switches the injector on, and the limit
/// learns from the latency it adds, one call at a time.
async fn game_day<R: Net>(rt: &R, server: &Server) -> Section {
    const CALLS: usize = 10;
    const NAME: &str = "tour-game-day";
    let mut s = Section::new(
        "config: a game day by reload (adaptive limit + chaos)",
        "[adaptive] and [chaos] by name; Registry::reload switches chaos on; pipeline.call(chaos.wrap(op))",
    );
    settle(rt, server).await;
    let registry = Registry::builder(game_day_config(false))
        .runtime(rt.clone())
        .build()
        .expect("a valid registry");
    let pipeline = registry.pipeline(NAME).expect("a declared pipeline");
    let chaos = registry.chaos(NAME).expect("a declared fault injector");
    let limit = registry.adaptive_limiter(NAME).expect("a declared limiter");
    let client = Client::new(rt.clone(), server.addr);
    let call = || async {
        pipeline
            .call(chaos.wrap(|| async {
                client
                    .get("/delay/5")
                    .await
                    .map_err(Box::<dyn std::error::Error + Send + Sync>::from)
            }))
            .await
            .is_ok()
    };
    let mut answered = 0;
    let start = rt.now();
    for _ in 0..CALLS {
        answered += usize::from(call().await);
    }
    let calm = since(rt, start);
    let limit_calm = limit.limit();
    let drawn_calm = chaos.decided();
    let reload = registry.reload(game_day_config(true));
    let start = rt.now();
    for _ in 0..CALLS {
        answered += usize::from(call().await);
    }
    let stormy = since(rt, start);
    let limit_stormy = limit.limit();
    let drawn_stormy = chaos.decided().saturating_sub(drawn_calm);
    let per_call = |d: Duration| ms(d / u32::try_from(CALLS).unwrap_or(1));
    s.metric(
        "calls, one at a time",
        format!("{CALLS} calm, then {CALLS} under chaos"),
    )
    .metric(
        "time per call calm / under chaos",
        format!("{} / {}", per_call(calm), per_call(stormy)),
    )
    .metric(
        "calls the injector drew for, calm / under chaos",
        format!("{drawn_calm} / {drawn_stormy}"),
    )
    .metric(
        "adaptive limit calm / under chaos",
        format!("{limit_calm} / {limit_stormy}"),
    )
    .metric("answered", format!("{answered} of {}", 2 * CALLS));
    s.check(
        "switched off, the injector drew nothing and the limit held at 16",
        drawn_calm == 0 && limit_calm == 16,
    );
    s.check(
        "the reload switched chaos on in place: every later call was delayed, none relearned",
        reload.as_ref().is_ok_and(|r| r.relearning.is_empty())
            && drawn_stormy == u64::try_from(CALLS).unwrap_or(u64::MAX)
            && stormy >= INJECTED * u32::try_from(CALLS).unwrap_or(u32::MAX),
    );
    s.check(
        "each delayed call was a drop for AIMD: 16 halved to its floor of 1",
        limit_stormy == 1,
    );
    s.check(
        "every call was answered (chaos delayed, did not fail)",
        answered == 2 * CALLS,
    );
    s
}

/// The configuration with the bulkhead at `max_concurrent` and the pipeline's deadline at
/// `deadline_s` seconds: a queue long enough for every call, a wait long enough for the
/// slowest, and a retry, through which the probes read the deadline.
fn config(max_concurrent: usize, deadline_s: u32) -> Config {
    let text = format!(
        "[instances.{INSTANCE}]\n\
         deadline = \"{deadline_s}s\"\n\
         [instances.{INSTANCE}.bulkhead]\n\
         max_concurrent = {max_concurrent}\n\
         max_queue = 1000\n\
         max_wait = \"60s\"\n\
         [instances.{INSTANCE}.retry]\n\
         backoff = \"constant\"\n\
         initial_delay = \"10ms\"\n\
         max_attempts = 2\n"
    );
    Config::from_toml(&text).expect("a valid configuration")
}

/// A handle on the instance's pipeline that honours an error's `Retry-After`.
type Probe<R> = LivePipeline<R, WithRetryAfter<DefaultClassifier>>;

/// Whether `probe` answered within `wait` a call whose one attempt is a 503 asking to retry
/// `hint` from now. It answers at once when its deadline has less than `hint` left (no time
/// for the retry); otherwise it sleeps towards the retry, and is dropped after `wait`.
async fn answers_within<R: Net>(rt: &R, probe: &Probe<R>, hint: Duration, wait: Duration) -> bool {
    let busy = || async move {
        Err::<(), _>(HttpError::Status {
            code: 503,
            retry_after: Some(hint),
        })
    };
    within(rt, wait, probe.call(busy)).await.is_some()
}

/// What the answers to the hint probes say of the deadline: below `hint` when one `hint`
/// away was refused at once, at least `hint` when it was waited for.
fn deadline_vs(hint: Duration, refused: bool) -> String {
    format!(
        "{} {}",
        if refused { "under" } else { "at least" },
        secs(hint)
    )
}

async fn reload_mid_traffic<R: Net>(rt: &R, server: &Server, size: Size) -> Section {
    let calls = if size == Size::Quick { 40 } else { 120 };
    let mut s = Section::new(
        "config: a reload in the middle of traffic",
        "Registry::reload(config) while the registry's pipeline queues calls on its bulkhead",
    );
    settle(rt, server).await;
    let registry = Registry::builder(config(BEFORE, DEADLINE_BEFORE))
        .runtime(rt.clone())
        .build()
        .expect("a valid registry");
    let bulkhead = registry.bulkhead(INSTANCE).expect("a declared bulkhead");
    let pipeline = registry.pipeline(INSTANCE).expect("a declared pipeline");
    let probe: Probe<R> = registry
        .pipeline(INSTANCE)
        .expect("a declared pipeline")
        .classify(WithRetryAfter(DefaultClassifier));
    // Before the traffic, so the probe holds no slot the calls need.
    let refused_before = answers_within(rt, &probe, BETWEEN, ANSWER_LIMIT).await;
    let client = Client::new(rt.clone(), server.addr);
    let before = server.stats.requests();
    server.stats.reset_peak();
    let start = rt.now();
    let traffic_done = AtomicBool::new(false);
    let traffic = async {
        let answered = join_all((0..calls).map(|_| {
            let (pipeline, client) = (&pipeline, &client);
            async move { pipeline.call(|| client.get(CALL)).await.is_ok() }
        }))
        .await;
        traffic_done.store(true, SeqCst);
        answered
    };
    // A quarter of the calls through at the old capacity, then the reload. Calls refused
    // before they reach the server would never make the quarter: the wait also ends when the
    // traffic does, or at its limit, and the reload comes either way.
    let quarter = calls / 4;
    let reload = async {
        until(rt, QUARTER_LIMIT, Duration::from_millis(2), || {
            server.stats.requests() - before >= quarter || traffic_done.load(SeqCst)
        })
        .await;
        let peak_before = server.stats.peak_in_flight();
        let held = bulkhead.in_flight();
        let done_before = server.stats.requests() - before;
        let reached_at = since(rt, start);
        server.stats.reset_peak();
        let asked = Instant::now();
        let reload = registry.reload(config(AFTER, DEADLINE_AFTER));
        let took = asked.elapsed();
        (reload, took, peak_before, held, done_before, reached_at)
    };
    let Some((answered, (reload, took, peak_before, held, done_before, reached_at))) =
        within(rt, TRAFFIC_LIMIT, async {
            futures_util::join!(traffic, reload)
        })
        .await
    else {
        s.check(
            &format!(
                "the {calls} calls and the reload ended within {}",
                secs(TRAFFIC_LIMIT)
            ),
            false,
        );
        return s;
    };
    let elapsed = since(rt, start);
    let peak_after = server.stats.peak_in_flight();
    // After the traffic: every slot is free, so only the deadline decides.
    let waited_after = !answers_within(rt, &probe, BETWEEN, WATCH).await;
    let refused_after = answers_within(rt, &probe, PAST_BOTH, ANSWER_LIMIT).await;
    let answered = answered.iter().filter(|ok| **ok).count();
    let (retuned, remade) = reload.as_ref().map_or((0, 0), |r| (r.retuned, r.pipelines));
    let after = calls - done_before;
    let rate =
        |n: usize, d: Duration| format!("{:.0} calls/s", n as f64 / d.as_secs_f64().max(1e-9));
    s.metric("calls (all at once, 20 ms each at the server)", calls)
        .metric("bulkhead", format!("{BEFORE} → {AFTER} by a reload"))
        .metric(
            "pipeline deadline",
            format!("{DEADLINE_BEFORE} s → {DEADLINE_AFTER} s by the same reload"),
        )
        .metric(
            "  probed before (a 503 with Retry-After: 90 s)",
            deadline_vs(BETWEEN, refused_before),
        )
        .metric(
            "  probed after (Retry-After: 90 s, then 150 s)",
            format!(
                "{}, {}",
                deadline_vs(BETWEEN, !waited_after),
                deadline_vs(PAST_BOTH, refused_after)
            ),
        )
        .metric(
            "reload applied after",
            format!("{done_before} calls, {}", ms(reached_at)),
        )
        .metric("permits held through the reload", held)
        .metric("the reload took", format!("{} µs", took.as_micros()))
        .metric(
            "max in flight before / after (server-observed)",
            format!("{peak_before} / {peak_after}"),
        )
        .metric("throughput before", rate(done_before, reached_at))
        .metric(
            "throughput after",
            rate(after, elapsed.saturating_sub(reached_at)),
        )
        .metric("answered", format!("{answered} of {calls}"));
    s.check(
        &format!("a quarter of the calls ({quarter}) reached the server before the reload"),
        done_before >= quarter,
    );
    s.check(
        "the reload was applied, retuning the bulkhead and making the pipeline anew",
        reload.is_ok() && retuned == 1 && remade == 1,
    );
    s.check(
        "the new pipeline's deadline is the new one: a retry 90 s away was refused at once \
         before the reload (60 s), waited for after it (120 s); one 150 s away was refused",
        refused_before && waited_after && refused_after,
    );
    s.check(
        "every call was answered: none lost, none refused",
        answered == calls,
    );
    s.check(
        &format!("never more than {BEFORE} in flight before the reload"),
        peak_before <= BEFORE,
    );
    s.check(
        &format!("more than {BEFORE}, never more than {AFTER}, in flight after it"),
        peak_after > BEFORE && peak_after <= AFTER,
    );
    s.check(
        "the permits held at the reload stayed held, and the new capacity counts them",
        held == BEFORE && bulkhead.capacity() == AFTER,
    );
    s
}
