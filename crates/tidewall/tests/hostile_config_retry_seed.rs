//! Hostile, docs-only tests of `[retry] seed`, `Instance::retry_seed` and
//! `ClientPoliciesBuilder::seed`: layering, refusals at their key paths, extreme and
//! ill-typed seeds, serde round trips, determinism across registries, runtimes and calls,
//! reloads (of a pipeline and of an HTTP client held before them), per-host schedules,
//! budgets, `Retry-After` hints and deadlines cutting a seeded schedule. Virtual time only.
#![cfg(all(feature = "toml", feature = "http"))]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidewall::config::{Config, JitterKind, Problem, Registry};
use tidewall::http::{ClientPolicies, Overrides};
use tidewall::pipeline::Pipeline;
use tidewall::retry::Retry;
use tidewall::rt::{Clock, Runtime};
use tidewall::testing::Clocked;
use tidewall::{Backoff, Jitter};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn config(text: &str) -> Config {
    Config::from_toml(text).unwrap_or_else(|e| panic!("a valid configuration: {e}\n{text}"))
}

fn refused(text: &str) -> tidewall::config::Invalid {
    match Config::from_toml(text) {
        Ok(_) => panic!("expected a refusal of:\n{text}"),
        Err(e) => e,
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// An instance (`search` for a pipeline, `client` with `http = {}`) with five attempts of
/// full jitter on 100 ms doubling, an hour's deadline, and `extra` lines in its `[retry]`.
fn instance(name: &str, extra: &str) -> String {
    let http = if name == "client" { "http = {}\n" } else { "" };
    format!(
        "[instances.{name}]\ndeadline = \"1h\"\n{http}\n[instances.{name}.retry]\n\
         initial_delay = \"100ms\"\nmax_attempts = 5\njitter = \"full\"\n{extra}\n"
    )
}

fn seeded(name: &str, seed: u64) -> String {
    instance(name, &format!("seed = {seed}"))
}

fn registry<R: Runtime>(rt: &Clocked<R>, text: &str) -> Registry<Clocked<R>> {
    Registry::builder(config(text))
        .runtime(rt.clone())
        .build()
        .unwrap()
}

fn registry_of<R: Runtime>(rt: &Clocked<R>, config: Config) -> Registry<Clocked<R>> {
    Registry::builder(config)
        .runtime(rt.clone())
        .build()
        .unwrap()
}

/// When each attempt of one always-failing call of `name`'s pipeline started, from the
/// call's start, and when the call ended.
async fn pipeline_run<R: Runtime>(
    rt: &Clocked<R>,
    registry: &Registry<Clocked<R>>,
    name: &str,
) -> (Vec<Duration>, Duration) {
    let pipeline = registry.pipeline(name).unwrap();
    let start = rt.now();
    let starts = Mutex::new(Vec::new());
    let _ = pipeline
        .call(|| {
            starts.lock().unwrap().push(rt.now() - start);
            async { Err::<(), _>("busy") }
        })
        .await;
    (starts.into_inner().unwrap(), rt.now() - start)
}

async fn pipeline_schedule<R: Runtime>(
    rt: &Clocked<R>,
    registry: &Registry<Clocked<R>>,
) -> Vec<Duration> {
    pipeline_run(rt, registry, "search").await.0
}

/// The schedule of a fresh registry's `search` pipeline under `text`.
async fn schedule_of<R: Runtime>(rt: &Clocked<R>, text: &str) -> Vec<Duration> {
    pipeline_schedule(rt, &registry(rt, text)).await
}

/// One request to `uri` through `client`, every answer a 503 (with `Retry-After: hint` when
/// given): when each attempt started, from the request's start.
async fn client_run<R: Clock>(
    rt: &R,
    client: &ClientPolicies<R>,
    uri: &str,
    hint: Option<&str>,
) -> Vec<Duration> {
    let start = rt.now();
    let starts = Arc::new(Mutex::new(Vec::new()));
    let request = http::Request::get(uri).body(()).unwrap();
    let hint = hint.map(str::to_owned);
    let _ = client
        .run(request, Overrides::new(), |_| {
            starts.lock().unwrap().push(rt.now() - start);
            let hint = hint.clone();
            async move {
                let mut response = http::Response::builder().status(503);
                if let Some(hint) = hint {
                    response = response.header("Retry-After", hint);
                }
                Ok::<_, std::io::Error>(response.body(()).unwrap())
            }
        })
        .await;
    starts.lock().unwrap().clone()
}

async fn client_schedule<R: Clock>(rt: &R, client: &ClientPolicies<R>) -> Vec<Duration> {
    client_run(rt, client, "http://api.test/", None).await
}

fn client<R: Runtime>(rt: &Clocked<R>, text: &str) -> ClientPolicies<Clocked<R>> {
    registry(rt, text).http_client("client").unwrap()
}

/// The pauses between attempts.
fn pauses(starts: &[Duration]) -> Vec<Duration> {
    starts.windows(2).map(|w| w[1] - w[0]).collect()
}

fn assert_full_jitter_bounds(starts: &[Duration]) {
    for (k, pause) in pauses(starts).into_iter().enumerate() {
        let cap = ms(100) * (1 << k);
        assert!(pause <= cap, "full jitter: pause {k} = {pause:?} > {cap:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Layering
// ---------------------------------------------------------------------------------------------

#[test]
fn the_seed_layers_defaults_under_bases_under_instances() {
    let c = config(
        "[defaults.retry]\nseed = 1\n\
         [configs.fixed.retry]\nseed = 2\n\
         [configs.plain.retry]\nmax_attempts = 2\n\
         [instances.a]\nretry = {}\n\
         [instances.b]\nbase = \"fixed\"\nretry = {}\n\
         [instances.c]\nbase = \"fixed\"\n[instances.c.retry]\nseed = 3\n\
         [instances.d]\nbase = \"plain\"\n\
         [instances.e.retry]\nseed = 0\n",
    );
    let seed = |name| c.instance(name).unwrap().retry_seed();
    assert_eq!(seed("a"), Some(1), "the defaults' seed");
    assert_eq!(seed("b"), Some(2), "the base's over the defaults'");
    assert_eq!(seed("c"), Some(3), "the instance's own over its base's");
    assert_eq!(seed("d"), Some(1), "a base without a seed: the defaults'");
    assert_eq!(seed("e"), Some(0), "zero is a seed, not `none`");

    let unseeded =
        config("[configs.fixed.retry]\nmax_attempts = 2\n[instances.a]\nbase = \"fixed\"\n");
    assert_eq!(unseeded.instance("a").unwrap().retry_seed(), None);
}

async fn a_seed_from_any_layer_is_the_same_seed<R: Runtime>(rt: Clocked<R>) {
    let own = schedule_of(&rt, &seeded("search", 7)).await;
    assert_eq!(own.len(), 5);
    let from_defaults = schedule_of(
        &rt,
        &format!("[defaults.retry]\nseed = 7\n{}", instance("search", "")),
    )
    .await;
    assert_eq!(
        from_defaults, own,
        "the defaults' seed 7 is the instance's seed 7"
    );
    let from_base = schedule_of(
        &rt,
        &format!(
            "[configs.fixed.retry]\nseed = 7\n{}",
            instance("search", "")
                .replace("deadline = \"1h\"", "deadline = \"1h\"\nbase = \"fixed\"")
        ),
    )
    .await;
    assert_eq!(from_base, own, "the base's seed 7 is the instance's seed 7");

    // An instance overriding a lower layer's seed runs on its own.
    let overridden = schedule_of(
        &rt,
        &format!("[defaults.retry]\nseed = 1\n{}", seeded("search", 7)),
    )
    .await;
    assert_eq!(overridden, own, "the instance's 7 over the defaults' 1");
    let one = schedule_of(&rt, &seeded("search", 1)).await;
    assert_ne!(overridden, one, "not the defaults' seed");
}

#[test]
fn a_seed_from_the_defaults_or_a_base_is_the_instances_seed() {
    on_every_runtime!(a_seed_from_any_layer_is_the_same_seed);
}

async fn an_upper_layers_jitter_keeps_a_lower_seed<R: Runtime>(rt: Clocked<R>) {
    // The defaults' seed under an instance with equal jitter.
    let layered = schedule_of(
        &rt,
        &format!(
            "[defaults.retry]\nseed = 7\n{}",
            instance("search", "").replace("jitter = \"full\"", "jitter = \"equal\"")
        ),
    )
    .await;
    let own = schedule_of(
        &rt,
        &instance("search", "seed = 7").replace("jitter = \"full\"", "jitter = \"equal\""),
    )
    .await;
    assert_eq!(layered, own);
    // Equal jitter: each pause in [d/2, d].
    for (k, pause) in pauses(&own).into_iter().enumerate() {
        let d = ms(100) * (1 << k);
        assert!(
            pause >= d / 2 && pause <= d,
            "pause {k} = {pause:?} for {d:?}"
        );
    }
    assert_ne!(
        own,
        schedule_of(&rt, &seeded("search", 7)).await,
        "equal is not full"
    );
}

#[test]
fn an_upper_layers_jitter_over_a_lower_seed() {
    on_every_runtime!(an_upper_layers_jitter_keeps_a_lower_seed);
}

// ---------------------------------------------------------------------------------------------
// Refusals
// ---------------------------------------------------------------------------------------------

#[test]
fn a_seed_next_to_jitter_none_is_refused_at_the_seed_in_every_layer() {
    let e = refused("[instances.a.retry]\njitter = \"none\"\nseed = 7\n");
    assert_eq!(e.path(), "instances.a.retry.seed", "{e}");
    assert!(matches!(e.problem(), Problem::Rule(_)), "{e}");

    let e = refused(
        "[configs.fixed.retry]\njitter = \"none\"\nseed = 7\n\
         [instances.a]\nbase = \"fixed\"\nretry = {}\n",
    );
    assert_eq!(e.path(), "configs.fixed.retry.seed", "{e}");
    assert!(matches!(e.problem(), Problem::Rule(_)), "{e}");

    let e = refused("[defaults.retry]\njitter = \"none\"\nseed = 7\n[instances.a]\nretry = {}\n");
    assert_eq!(e.path(), "defaults.retry.seed", "{e}");
    assert!(matches!(e.problem(), Problem::Rule(_)), "{e}");

    // Every schedule shape: none of them draws anything without jitter.
    for backoff in ["constant", "linear", "exponential"] {
        let e = refused(&format!(
            "[instances.a.retry]\nbackoff = \"{backoff}\"\njitter = \"none\"\nseed = 0\n"
        ));
        assert_eq!(e.path(), "instances.a.retry.seed", "{backoff}: {e}");
    }
}

#[test]
fn a_seed_over_or_under_jitter_none_of_another_layer_is_refused_where_it_is_written() {
    // The base's seed, the instance's jitter none.
    let e = refused(
        "[configs.fixed.retry]\nseed = 7\n\
         [instances.a]\nbase = \"fixed\"\n[instances.a.retry]\njitter = \"none\"\n",
    );
    assert_eq!(e.path(), "configs.fixed.retry.seed", "{e}");
    assert!(matches!(e.problem(), Problem::Rule(_)), "{e}");

    // The defaults' jitter none, the instance's seed.
    let e = refused("[defaults.retry]\njitter = \"none\"\n[instances.a.retry]\nseed = 7\n");
    assert_eq!(e.path(), "instances.a.retry.seed", "{e}");

    // The base's jitter none, the instance's seed.
    let e = refused(
        "[configs.fixed.retry]\njitter = \"none\"\n\
         [instances.a]\nbase = \"fixed\"\n[instances.a.retry]\nseed = 7\n",
    );
    assert_eq!(e.path(), "instances.a.retry.seed", "{e}");

    // The defaults' seed, the base's jitter none, the instance's section empty.
    let e = refused(
        "[defaults.retry]\nseed = 7\n[configs.fixed.retry]\njitter = \"none\"\n\
         [instances.a]\nbase = \"fixed\"\nretry = {}\n",
    );
    assert_eq!(e.path(), "defaults.retry.seed", "{e}");

    // An instance of its own seed over another's jitter none is refused at its own seed,
    // not at the lower layer's seed it replaces.
    let e = refused(
        "[defaults.retry]\nseed = 1\n\
         [instances.a.retry]\njitter = \"none\"\nseed = 2\n",
    );
    assert_eq!(e.path(), "instances.a.retry.seed", "{e}");

    // Config is Deserialize: the same configuration read from JSON is refused by validate at
    // the same key path.
    let c: Config = serde_json::from_str(
        r#"{"configs":{"fixed":{"retry":{"seed":7}}},
            "instances":{"a":{"base":"fixed","retry":{"jitter":"none"}}}}"#,
    )
    .unwrap();
    let e = c.validate().unwrap_err();
    assert_eq!(e.path(), "configs.fixed.retry.seed", "{e}");
}

#[test]
fn decorrelated_jitter_takes_a_seed_whatever_jitter_is_below_it() {
    for below in ["none", "full", "equal"] {
        let c = config(&format!(
            "[defaults.retry]\njitter = \"{below}\"\n\
             [instances.a.retry]\nbackoff = \"decorrelated_jitter\"\nseed = 7\n"
        ));
        assert_eq!(c.instance("a").unwrap().retry_seed(), Some(7), "{below}");
        let c = config(&format!(
            "[configs.fixed.retry]\njitter = \"{below}\"\n\
             [instances.a]\nbase = \"fixed\"\n\
             [instances.a.retry]\nbackoff = \"decorrelated_jitter\"\nseed = 7\n"
        ));
        assert_eq!(c.instance("a").unwrap().retry_seed(), Some(7), "{below}");
    }
    // The seed from the defaults, decorrelated jitter named by the instance over jitter none.
    let c = config(
        "[defaults.retry]\nseed = 9\n[configs.fixed.retry]\njitter = \"none\"\n\
         [instances.a]\nbase = \"fixed\"\n[instances.a.retry]\nbackoff = \"decorrelated_jitter\"\n",
    );
    assert_eq!(c.instance("a").unwrap().retry_seed(), Some(9));
}

#[test]
fn a_jitter_in_or_above_the_decorrelated_layer_is_refused_at_the_jitter() {
    for jitter in ["none", "full", "equal"] {
        let e = refused(&format!(
            "[instances.a.retry]\nbackoff = \"decorrelated_jitter\"\njitter = \"{jitter}\"\nseed = 7\n"
        ));
        assert_eq!(e.path(), "instances.a.retry.jitter", "{jitter}: {e}");

        // Decorrelated jitter in the defaults, a jitter in the instance above it.
        let e = refused(&format!(
            "[defaults.retry]\nbackoff = \"decorrelated_jitter\"\nseed = 7\n\
             [instances.a.retry]\njitter = \"{jitter}\"\n"
        ));
        assert_eq!(e.path(), "instances.a.retry.jitter", "{jitter}: {e}");

        // Decorrelated jitter in a base, a jitter in the instance over it.
        let e = refused(&format!(
            "[configs.fixed.retry]\nbackoff = \"decorrelated_jitter\"\n\
             [instances.a]\nbase = \"fixed\"\n[instances.a.retry]\njitter = \"{jitter}\"\nseed = 3\n"
        ));
        assert_eq!(e.path(), "instances.a.retry.jitter", "{jitter}: {e}");
    }
}

#[test]
fn an_instance_leaving_decorrelated_jitter_for_jitter_none_does_not_keep_the_seed() {
    // The defaults' decorrelated schedule takes their seed; an instance that names a constant
    // schedule without jitter has nothing left for that seed to fix.
    let e = refused(
        "[defaults.retry]\nbackoff = \"decorrelated_jitter\"\nseed = 7\n\
         [instances.a.retry]\nbackoff = \"constant\"\njitter = \"none\"\n",
    );
    assert!(
        ["defaults.retry.seed", "instances.a.retry.jitter"].contains(&e.path()),
        "{e}"
    );
}

#[test]
fn a_refusal_is_for_the_whole_file_even_when_another_instance_would_use_the_seed() {
    // Instance `a` would take the defaults' seed with full jitter; `b` has jitter none under it.
    let e = refused(
        "[defaults.retry]\nseed = 7\n\
         [instances.a]\nretry = {}\n\
         [instances.b.retry]\njitter = \"none\"\n",
    );
    assert_eq!(e.path(), "defaults.retry.seed", "{e}");
}

#[test]
fn a_lower_layers_seed_next_to_jitter_none_is_judged_where_an_instance_takes_it() {
    // The defaults alone: nothing takes the schedule yet.
    let text = "[defaults.retry]\njitter = \"none\"\nseed = 7\n";
    let c = config(&format!("{text}[instances.quiet]\ndeadline = \"1s\"\n"));
    // An Instance building the retry for a name (declared without [retry], or undeclared:
    // the defaults alone) meets the seed with no jitter: refused where it is written.
    for name in ["quiet", "ghost"] {
        let e = c.instance(name).unwrap().backoff().unwrap_err();
        assert_eq!(e.path(), "defaults.retry.seed", "{name}: {e}");
        assert!(matches!(e.problem(), Problem::Rule(_)), "{name}: {e}");
    }
    // An unused base of the same: accepted, and refused at its key once an instance takes it.
    let unused = "[configs.unused.retry]\njitter = \"none\"\nseed = 7\n";
    assert!(Config::from_toml(unused).is_ok());
    let e = refused(&format!(
        "{unused}[instances.a]\nbase = \"unused\"\nretry = {{}}\n"
    ));
    assert_eq!(e.path(), "configs.unused.retry.seed", "{e}");

    // An instance with jitter over it: the seed fixes that jitter.
    let c = config(&format!("{text}{}", instance("search", "")));
    assert_eq!(c.instance("search").unwrap().retry_seed(), Some(7));
    let (layered, own) = common::on_tokio_current_thread(|rt| async move {
        let layered = pipeline_schedule(&rt, &registry_of(&rt, c)).await;
        (layered, schedule_of(&rt, &seeded("search", 7)).await)
    });
    assert_eq!(layered, own);
}

// ---------------------------------------------------------------------------------------------
// Extremes and types
// ---------------------------------------------------------------------------------------------

#[test]
fn ill_typed_seeds_are_syntax_errors_naming_the_key() {
    for value in ["-1", "1.5", "7.0", "\"7\"", "true", "\"off\"", "[7]", "1e3"] {
        let e = refused(&format!("[instances.a.retry]\nseed = {value}\n"));
        assert!(matches!(e.problem(), Problem::Syntax(_)), "{value}: {e:?}");
        assert_eq!(e.path(), "", "{value}: a syntax error's path is empty");
        assert!(e.to_string().contains("seed"), "{value}: {e}");
    }
    // The whole u64 range is written as a TOML integer; one past it is a syntax error, never
    // wrapped or saturated.
    let c = config(&format!("[instances.a.retry]\nseed = {}\n", i64::MAX));
    assert_eq!(c.instance("a").unwrap().retry_seed(), Some(i64::MAX as u64));
    let c = config(&format!("[instances.a.retry]\nseed = {}\n", u64::MAX));
    assert_eq!(c.instance("a").unwrap().retry_seed(), Some(u64::MAX));
    let e = refused("[instances.a.retry]\nseed = 18446744073709551616\n");
    assert!(matches!(e.problem(), Problem::Syntax(_)), "{e:?}");
    // Hex is an integer in TOML.
    let c = config("[instances.a.retry]\nseed = 0xff\n");
    assert_eq!(c.instance("a").unwrap().retry_seed(), Some(255));
}

fn json_seeded(seed: u64) -> Config {
    let json = format!(
        r#"{{"instances":{{"search":{{"deadline":"1h","retry":
            {{"initial_delay":"100ms","max_attempts":5,"jitter":"full","seed":{seed}}}}}}}}}"#
    );
    let c: Config = serde_json::from_str(&json).unwrap();
    c.validate().unwrap();
    c
}

async fn extreme_seeds_are_seeds<R: Runtime>(rt: Clocked<R>) {
    let max = json_seeded(u64::MAX);
    assert_eq!(max.instance("search").unwrap().retry_seed(), Some(u64::MAX));
    let a = pipeline_schedule(&rt, &registry_of(&rt, max.clone())).await;
    let b = pipeline_schedule(&rt, &registry_of(&rt, max)).await;
    assert_eq!(a.len(), 5);
    assert_eq!(a, b, "u64::MAX fixes the schedule");
    assert_full_jitter_bounds(&a);

    let zero = schedule_of(&rt, &seeded("search", 0)).await;
    assert_eq!(
        zero,
        schedule_of(&rt, &seeded("search", 0)).await,
        "0 fixes it"
    );
    assert_eq!(
        zero,
        pipeline_schedule(&rt, &registry_of(&rt, json_seeded(0))).await
    );
    assert_full_jitter_bounds(&zero);
    assert_ne!(zero, a, "0 and u64::MAX differ");
    let imax = schedule_of(&rt, &seeded("search", i64::MAX as u64)).await;
    assert_ne!(imax, a);
    assert_ne!(imax, zero);
}

#[test]
fn zero_and_u64_max_are_seeds_like_any_other() {
    on_every_runtime!(extreme_seeds_are_seeds);
}

// ---------------------------------------------------------------------------------------------
// Serde round trip
// ---------------------------------------------------------------------------------------------

#[test]
fn printing_and_reading_back_keeps_every_layers_seed() {
    let c = config(&format!(
        "[defaults.retry]\nseed = 0\n\
         [configs.fixed.retry]\nseed = {}\n\
         [instances.a]\nretry = {{}}\n\
         [instances.b]\nbase = \"fixed\"\nretry = {{}}\n\
         [instances.c.retry]\nbackoff = \"decorrelated_jitter\"\nseed = 12345\n",
        i64::MAX
    ));
    let printed = toml::to_string(&c).unwrap();
    let back = Config::from_toml(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}"));
    assert_eq!(back, c, "{printed}");
    for name in ["a", "b", "c"] {
        assert_eq!(
            back.instance(name).unwrap().retry_seed(),
            c.instance(name).unwrap().retry_seed(),
            "{name}"
        );
    }
    assert_eq!(
        back.instance("b").unwrap().retry_seed(),
        Some(i64::MAX as u64)
    );

    // Through JSON, the whole u64 range survives.
    let max = json_seeded(u64::MAX);
    let json = serde_json::to_string(&max).unwrap();
    let back: Config = serde_json::from_str(&json).unwrap();
    assert_eq!(back, max);
    assert_eq!(
        back.instance("search").unwrap().retry_seed(),
        Some(u64::MAX)
    );

    // Config is Serialize "so an admin endpoint can print the configuration in force": a seed
    // above i64::MAX (read from JSON, say) prints as TOML and reads back the same.
    let max = json_seeded(u64::MAX);
    let printed = toml::to_string(&max).unwrap();
    let back = Config::from_toml(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}"));
    assert_eq!(back, max, "{printed}");
    assert_eq!(
        back.instance("search").unwrap().retry_seed(),
        Some(u64::MAX)
    );

    // An unseeded configuration prints no seed, and reads back unseeded.
    let plain = config("[instances.a]\nretry = {}\n");
    let printed = toml::to_string(&plain).unwrap();
    assert!(!printed.contains("seed"), "{printed}");
    assert_eq!(config(&printed).instance("a").unwrap().retry_seed(), None);
}

// ---------------------------------------------------------------------------------------------
// Determinism
// ---------------------------------------------------------------------------------------------

async fn both_schedules<R: Runtime>(rt: Clocked<R>) -> (Vec<Duration>, Vec<Duration>) {
    let pipeline = schedule_of(&rt, &seeded("search", 7)).await;
    let client = client_schedule(&rt, &client(&rt, &seeded("client", 7))).await;
    (pipeline, client)
}

#[test]
fn the_same_seed_gives_the_same_schedule_on_every_runtime() {
    let runs = [
        common::on_tokio_multi_thread(both_schedules),
        common::on_tokio_current_thread(both_schedules),
        common::on_smol_multi_thread(both_schedules),
        common::on_smol_single_thread(both_schedules),
        common::on_async_std(both_schedules),
    ];
    for run in &runs[1..] {
        assert_eq!(run, &runs[0]);
    }
    assert_eq!(runs[0].0.len(), 5);
    assert_eq!(runs[0].1.len(), 5);
}

async fn same_seed_same_schedule_everywhere<R: Runtime>(rt: Clocked<R>) {
    let registry_a = registry(&rt, &seeded("search", 42));
    let registry_b = registry(&rt, &seeded("search", 42));
    let first = pipeline_schedule(&rt, &registry_a).await;
    assert_eq!(first.len(), 5);
    assert_eq!(first[0], Duration::ZERO);
    assert_full_jitter_bounds(&first);
    for _ in 0..3 {
        assert_eq!(pipeline_schedule(&rt, &registry_a).await, first);
        assert_eq!(pipeline_schedule(&rt, &registry_b).await, first);
    }
    // Two handles of one instance, two calls at once: the same schedule, in lockstep.
    let (x, y) = futures_util::future::join(
        pipeline_schedule(&rt, &registry_a),
        pipeline_schedule(&rt, &registry_b),
    )
    .await;
    assert_eq!((x, y), (first.clone(), first));

    // An HTTP client's requests, one after another and at once.
    let client = client(&rt, &seeded("client", 42));
    let one = client_schedule(&rt, &client).await;
    assert_eq!(one.len(), 5);
    assert_full_jitter_bounds(&one);
    assert_eq!(client_schedule(&rt, &client).await, one);
    let (x, y) =
        futures_util::future::join(client_schedule(&rt, &client), client_schedule(&rt, &client))
            .await;
    assert_eq!((x, y), (one.clone(), one));
}

#[test]
fn the_same_seed_gives_the_same_schedule_across_registries_calls_and_concurrent_calls() {
    on_every_runtime!(same_seed_same_schedule_everywhere);
}

async fn different_seeds_differ<R: Runtime>(rt: Clocked<R>) {
    let mut seen: Vec<(u64, Vec<Duration>)> = Vec::new();
    for seed in [0, 1, 2, 3, 7, 8, 1 << 32, i64::MAX as u64] {
        let schedule = schedule_of(&rt, &seeded("search", seed)).await;
        for (other, earlier) in &seen {
            assert_ne!(&schedule, earlier, "seeds {seed} and {other}");
        }
        seen.push((seed, schedule));
    }
    // Unseeded, each call draws afresh: neither a fixed schedule nor a seeded one.
    let unseeded = registry(&rt, &instance("search", ""));
    let a = pipeline_schedule(&rt, &unseeded).await;
    let b = pipeline_schedule(&rt, &unseeded).await;
    assert_eq!(a.len(), 5);
    assert_ne!(a, b, "each unseeded call draws a fresh seed");
    assert!(seen.iter().all(|(_, s)| s != &a && s != &b));
}

#[test]
fn different_seeds_give_different_schedules_and_no_seed_none_fixed() {
    on_every_runtime!(different_seeds_differ);
}

async fn file_seed_is_the_builders_seed<R: Runtime>(rt: Clocked<R>) {
    let backoff = || {
        Backoff::exponential(ms(100))
            .jitter(Jitter::Full)
            .max_delay(Duration::from_secs(30))
            .max_attempts(5)
            .build()
            .unwrap()
    };
    for seed in [0, 7, u64::MAX] {
        let from_file = pipeline_schedule(&rt, &registry_of(&rt, json_seeded(seed))).await;

        // PipelineBuilder::seed.
        let coded = Pipeline::builder()
            .runtime(rt.clone())
            .deadline(Duration::from_secs(3600))
            .seed(seed)
            .retry(backoff())
            .build()
            .unwrap();
        let start = rt.now();
        let starts = Mutex::new(Vec::new());
        let _ = coded
            .call(|| {
                starts.lock().unwrap().push(rt.now() - start);
                async { Err::<(), _>("busy") }
            })
            .await;
        assert_eq!(
            starts.into_inner().unwrap(),
            from_file,
            "pipeline, seed {seed}"
        );

        // Instance::backoff with Instance::retry_seed, given to a retry made by hand.
        let c = json_seeded(seed);
        let inst = c.instance("search").unwrap();
        let start = rt.now();
        let starts = Mutex::new(Vec::new());
        let _ = Retry::new(inst.backoff().unwrap(), || {
            starts.lock().unwrap().push(rt.now() - start);
            async { Err::<(), _>("busy") }
        })
        .runtime(rt.clone())
        .seed(inst.retry_seed().unwrap())
        .await;
        assert_eq!(
            starts.into_inner().unwrap(),
            from_file,
            "retry, seed {seed}"
        );

        // ClientPoliciesBuilder::seed, next to the file's client.
        let text = seeded("client", 0).replace("seed = 0", &format!("seed = {seed}"));
        {
            let from_file = client_schedule(&rt, &client(&rt, &text)).await;
            let coded = ClientPolicies::builder()
                .runtime(rt.clone())
                .deadline(Some(Duration::from_secs(3600)))
                .retry(backoff())
                .retry_budget(None)
                .breaker(None)
                .seed(seed)
                .build()
                .unwrap();
            assert_eq!(
                client_schedule(&rt, &coded).await,
                from_file,
                "client, seed {seed}"
            );
        }
    }
}

#[test]
fn a_files_seed_is_the_builders_seed() {
    on_every_runtime!(file_seed_is_the_builders_seed);
}

async fn decorrelated_jitter_is_fixed_by_a_seed<R: Runtime>(rt: Clocked<R>) {
    let text = |seed: u64, below: &str| {
        format!(
            "{below}[instances.search]\ndeadline = \"1h\"\n[instances.search.retry]\n\
             backoff = \"decorrelated_jitter\"\ninitial_delay = \"100ms\"\nmax_attempts = 6\n\
             max_delay = \"10s\"\nseed = {seed}\n"
        )
    };
    let seven = schedule_of(&rt, &text(7, "")).await;
    assert_eq!(seven.len(), 6);
    assert_eq!(seven, schedule_of(&rt, &text(7, "")).await);
    assert_ne!(seven, schedule_of(&rt, &text(8, "")).await);
    for pause in pauses(&seven) {
        assert!(
            pause >= ms(100) && pause <= Duration::from_secs(10),
            "{pause:?}"
        );
    }
    // A jitter from a layer below is ignored by that schedule: the same delays.
    for below in ["none", "full", "equal"] {
        let under = format!("[defaults.retry]\njitter = \"{below}\"\n");
        assert_eq!(schedule_of(&rt, &text(7, &under)).await, seven, "{below}");
    }
}

#[test]
fn a_seed_fixes_decorrelated_jitter_and_a_jitter_below_changes_nothing() {
    on_every_runtime!(decorrelated_jitter_is_fixed_by_a_seed);
}

// ---------------------------------------------------------------------------------------------
// Reloads
// ---------------------------------------------------------------------------------------------

async fn reload_across_a_call<R: Runtime>(rt: Clocked<R>) {
    let seven = schedule_of(&rt, &seeded("search", 7)).await;
    let eight = schedule_of(&rt, &seeded("search", 8)).await;
    assert_ne!(seven, eight);

    let registry = registry(&rt, &seeded("search", 7));
    let pipeline = registry.pipeline("search").unwrap();
    // The call reloads to seed 8 and two attempts during its first attempt: it keeps the
    // schedule it started with, whole.
    let start = rt.now();
    let starts = Mutex::new(Vec::new());
    let _ = pipeline
        .call(|| {
            let mut starts = starts.lock().unwrap();
            if starts.is_empty() {
                registry
                    .reload(config(
                        &instance("search", "seed = 8\nmax_attempts = 2")
                            .replace("max_attempts = 5\n", ""),
                    ))
                    .unwrap();
            }
            starts.push(rt.now() - start);
            async { Err::<(), _>("busy") }
        })
        .await;
    assert_eq!(
        starts.into_inner().unwrap(),
        seven,
        "the call across the reload"
    );
    // The calls after it: seed 8, two attempts.
    let after = pipeline_schedule(&rt, &registry).await;
    assert_eq!(after, eight[..2].to_vec());
}

#[test]
fn a_call_across_a_reload_keeps_its_seeded_schedule_calls_after_take_the_new_one() {
    on_every_runtime!(reload_across_a_call);
}

async fn reload_adds_and_removes_the_seed<R: Runtime>(rt: Clocked<R>) {
    let seven = schedule_of(&rt, &seeded("search", 7)).await;
    let registry = registry(&rt, &instance("search", ""));
    let held = registry.pipeline("search").unwrap();
    assert_eq!(
        registry.config().instance("search").unwrap().retry_seed(),
        None
    );

    registry.reload(config(&seeded("search", 7))).unwrap();
    assert_eq!(pipeline_schedule(&rt, &registry).await, seven, "seed added");
    let start = rt.now();
    let starts = Mutex::new(Vec::new());
    let _ = held
        .call(|| {
            starts.lock().unwrap().push(rt.now() - start);
            async { Err::<(), _>("busy") }
        })
        .await;
    assert_eq!(
        starts.into_inner().unwrap(),
        seven,
        "a handle held before the reload"
    );

    // A call across the removal keeps seed 7.
    let start = rt.now();
    let starts = Mutex::new(Vec::new());
    let _ = held
        .call(|| {
            let mut starts = starts.lock().unwrap();
            if starts.is_empty() {
                registry.reload(config(&instance("search", ""))).unwrap();
            }
            starts.push(rt.now() - start);
            async { Err::<(), _>("busy") }
        })
        .await;
    assert_eq!(starts.into_inner().unwrap(), seven, "across the removal");

    let a = pipeline_schedule(&rt, &registry).await;
    let b = pipeline_schedule(&rt, &registry).await;
    assert_eq!(a.len(), 5);
    assert_ne!(a, seven, "seed removed: fresh draws");
    assert_ne!(a, b, "each call its own");
}

#[test]
fn a_reload_adds_and_removes_the_seed() {
    on_every_runtime!(reload_adds_and_removes_the_seed);
}

async fn refused_reload_keeps_the_seed<R: Runtime>(rt: Clocked<R>) {
    let seven = schedule_of(&rt, &seeded("search", 7)).await;
    let registry = registry(&rt, &seeded("search", 7));
    // Jitter none with a seed, built in code (from_toml would refuse it before the reload).
    let mut c = config(&seeded("search", 8));
    c.instances
        .get_mut("search")
        .unwrap()
        .retry
        .as_mut()
        .unwrap()
        .jitter = Some(JitterKind::None);
    let e = registry.reload(c).unwrap_err();
    assert_eq!(e.path(), "instances.search.retry.seed", "{e}");
    assert_eq!(
        pipeline_schedule(&rt, &registry).await,
        seven,
        "nothing changed"
    );
    assert_eq!(
        registry.config().instance("search").unwrap().retry_seed(),
        Some(7)
    );
}

#[test]
fn a_refused_reload_keeps_the_old_seed() {
    on_every_runtime!(refused_reload_keeps_the_seed);
}

async fn held_client_follows_seed_reloads<R: Runtime>(rt: Clocked<R>) {
    let seven = client_schedule(&rt, &client(&rt, &seeded("client", 7))).await;
    let eight = client_schedule(&rt, &client(&rt, &seeded("client", 8))).await;
    assert_ne!(seven, eight);

    let registry = registry(&rt, &instance("client", ""));
    let held = registry.http_client("client").unwrap();
    let clone = held.clone();
    registry.reload(config(&seeded("client", 7))).unwrap();
    assert_eq!(client_schedule(&rt, &held).await, seven, "seed added");
    assert_eq!(client_schedule(&rt, &clone).await, seven, "every clone");

    // A request across the reload to seed 8 keeps seed 7.
    let start = rt.now();
    let starts = Arc::new(Mutex::new(Vec::new()));
    let request = http::Request::get("http://api.test/").body(()).unwrap();
    let _ = held
        .run(request, Overrides::new(), |_| {
            let mut s = starts.lock().unwrap();
            if s.is_empty() {
                registry.reload(config(&seeded("client", 8))).unwrap();
            }
            s.push(rt.now() - start);
            async {
                let response = http::Response::builder().status(503).body(()).unwrap();
                Ok::<_, std::io::Error>(response)
            }
        })
        .await;
    assert_eq!(
        *starts.lock().unwrap(),
        seven,
        "the request across the reload"
    );
    assert_eq!(
        client_schedule(&rt, &held).await,
        eight,
        "requests after it"
    );

    registry.reload(config(&instance("client", ""))).unwrap();
    let a = client_schedule(&rt, &held).await;
    let b = client_schedule(&rt, &held).await;
    assert_eq!(a.len(), 5);
    assert_ne!(a, eight, "seed removed");
    assert_ne!(a, b, "fresh draws per request");
}

#[test]
fn an_http_client_held_before_reloads_follows_the_seed() {
    on_every_runtime!(held_client_follows_seed_reloads);
}

// ---------------------------------------------------------------------------------------------
// HTTP client per host, budgets, hints, deadlines
// ---------------------------------------------------------------------------------------------

async fn every_host_same_schedule<R: Runtime>(rt: Clocked<R>) {
    let client = client(&rt, &seeded("client", 7));
    let a = client_run(&rt, &client, "http://a.test/", None).await;
    let b = client_run(&rt, &client, "http://b.test:8080/x", None).await;
    assert_eq!(a.len(), 5);
    assert_eq!(a, b, "every request draws from the seed, whatever its host");
    let (x, y) = futures_util::future::join(
        client_run(&rt, &client, "http://a.test/", None),
        client_run(&rt, &client, "https://b.test/", None),
    )
    .await;
    assert_eq!((x, y), (a.clone(), a));
}

#[test]
fn two_hosts_of_one_seeded_client_get_the_same_schedule() {
    on_every_runtime!(every_host_same_schedule);
}

async fn budget_cuts_a_seeded_schedule<R: Runtime>(rt: Clocked<R>) {
    let budget = "[instances.search.budget]\nratio = 2.0\nmin_per_second = 0\n";
    let seven = schedule_of(&rt, &seeded("search", 7)).await;
    let registry = registry(&rt, &format!("{}{budget}", seeded("search", 7)));
    let cut = pipeline_schedule(&rt, &registry).await;
    assert_eq!(
        cut,
        seven[..3].to_vec(),
        "two retries for one call, on seed 7's delays"
    );

    let budget = "[instances.client.budget]\nratio = 2.0\nmin_per_second = 0\n";
    let seven = client_schedule(&rt, &client(&rt, &seeded("client", 7))).await;
    let client = client(&rt, &format!("{}{budget}", seeded("client", 7)));
    assert_eq!(client_schedule(&rt, &client).await, seven[..3].to_vec());
    // A budget per host: another host has its own, on the same seeded delays.
    assert_eq!(
        client_run(&rt, &client, "http://other.test/", None).await,
        seven[..3].to_vec()
    );
}

#[test]
fn a_retry_budget_cuts_a_seeded_schedule_to_its_prefix() {
    on_every_runtime!(budget_cuts_a_seeded_schedule);
}

async fn hints_are_not_jittered<R: Runtime>(rt: Clocked<R>) {
    let seven = client(&rt, &seeded("client", 7));
    let eight = client(&rt, &seeded("client", 8));
    let secs = |s: &[u64]| {
        s.iter()
            .map(|&s| Duration::from_secs(s))
            .collect::<Vec<_>>()
    };
    // A 2 s hint is longer than every delay of the schedule (at most 800 ms): each sleep is
    // the hint, exactly, whatever the seed.
    let hinted = client_run(&rt, &seven, "http://api.test/", Some("2")).await;
    assert_eq!(hinted, secs(&[0, 2, 4, 6, 8]));
    assert_eq!(
        client_run(&rt, &eight, "http://api.test/", Some("2")).await,
        hinted
    );

    // A zero hint raises nothing: the seeded schedule, as without a hint.
    let plain = client_schedule(&rt, &seven).await;
    assert_eq!(
        client_run(&rt, &seven, "http://api.test/", Some("0")).await,
        plain
    );

    // A hint longer than max_retry_after is cut to it, not jittered either.
    let capped = client(
        &rt,
        &instance("client", "seed = 7\nmax_retry_after = \"1s\""),
    );
    assert_eq!(
        client_run(&rt, &capped, "http://api.test/", Some("5")).await,
        secs(&[0, 1, 2, 3, 4])
    );
}

#[test]
fn a_retry_after_hint_is_not_jittered_by_the_seed() {
    on_every_runtime!(hints_are_not_jittered);
}

async fn deadline_cuts_a_seeded_schedule<R: Runtime>(rt: Clocked<R>) {
    let seven = schedule_of(&rt, &seeded("search", 7)).await;
    // A deadline just past the third attempt's start.
    let deadline = u64::try_from(seven[2].as_millis()).unwrap() + 1;
    let text =
        seeded("search", 7).replace("deadline = \"1h\"", &format!("deadline = \"{deadline}ms\""));
    let expected: Vec<Duration> = seven
        .iter()
        .copied()
        .filter(|s| *s < ms(deadline))
        .collect();
    assert!(expected.len() >= 3);
    let registry = registry(&rt, &text);
    let (cut, ended) = pipeline_run(&rt, &registry, "search").await;
    assert_eq!(cut, expected, "the seeded schedule, up to the deadline");
    assert_eq!(
        ended,
        *expected.last().unwrap(),
        "a sleep past the deadline is not slept: the call ends at once"
    );
    assert_eq!(
        pipeline_run(&rt, &registry, "search").await,
        (cut.clone(), ended),
        "every call"
    );

    // The HTTP client: the same cut of its own seeded schedule.
    let seven = client_schedule(&rt, &client(&rt, &seeded("client", 7))).await;
    let deadline = u64::try_from(seven[2].as_millis()).unwrap() + 1;
    let text =
        seeded("client", 7).replace("deadline = \"1h\"", &format!("deadline = \"{deadline}ms\""));
    let expected: Vec<Duration> = seven
        .iter()
        .copied()
        .filter(|s| *s < ms(deadline))
        .collect();
    let client = client(&rt, &text);
    assert_eq!(client_schedule(&rt, &client).await, expected);
    assert_eq!(client_schedule(&rt, &client).await, expected);
}

#[test]
fn a_deadline_cuts_a_seeded_schedule_the_same_way_every_call() {
    on_every_runtime!(deadline_cuts_a_seeded_schedule);
}

async fn overrides_cut_a_seeded_schedule<R: Runtime>(rt: Clocked<R>) {
    let client = client(&rt, &seeded("client", 7));
    let seven = client_schedule(&rt, &client).await;
    let run = |overrides: Overrides| {
        let starts = Arc::new(Mutex::new(Vec::new()));
        let client = &client;
        let rt = &rt;
        async move {
            let start = rt.now();
            let request = http::Request::get("http://api.test/").body(()).unwrap();
            let _ = client
                .run(request, overrides, |_| {
                    starts.lock().unwrap().push(rt.now() - start);
                    async {
                        let response = http::Response::builder().status(503).body(()).unwrap();
                        Ok::<_, std::io::Error>(response)
                    }
                })
                .await;
            starts.lock().unwrap().clone()
        }
    };
    let three = std::num::NonZeroU32::new(3).unwrap();
    assert_eq!(
        run(Overrides::new().max_attempts(three)).await,
        seven[..3].to_vec(),
        "fewer attempts: the first of the seeded delays"
    );
    let deadline = seven[3] - Duration::from_nanos(1);
    let expected: Vec<Duration> = seven.iter().copied().filter(|s| *s < deadline).collect();
    assert_eq!(run(Overrides::new().deadline(deadline)).await, expected);
    assert_eq!(run(Overrides::new().no_retry()).await, vec![Duration::ZERO]);
    // And the client's own schedule is untouched after them.
    assert_eq!(client_schedule(&rt, &client).await, seven);
}

#[test]
fn per_request_overrides_cut_a_seeded_schedule() {
    on_every_runtime!(overrides_cut_a_seeded_schedule);
}

async fn a_pipeline_in_force_keeps_its_seed<R: Runtime>(rt: Clocked<R>) {
    let seven = schedule_of(&rt, &seeded("search", 7)).await;
    let eight = schedule_of(&rt, &seeded("search", 8)).await;
    let registry = registry(&rt, &seeded("search", 7));
    let live = registry.pipeline("search").unwrap();
    let before = live.pipeline();
    registry.reload(config(&seeded("search", 8))).unwrap();
    // The pipeline in force before the reload "stays usable": on its own schedule.
    let start = rt.now();
    let starts = Mutex::new(Vec::new());
    let _ = before
        .call(|| {
            starts.lock().unwrap().push(rt.now() - start);
            async { Err::<(), _>("busy") }
        })
        .await;
    assert_eq!(starts.into_inner().unwrap(), seven);
    assert_eq!(pipeline_schedule(&rt, &registry).await, eight);
}

#[test]
fn the_pipeline_in_force_before_a_reload_keeps_its_seed() {
    on_every_runtime!(a_pipeline_in_force_keeps_its_seed);
}

async fn max_elapsed_cuts_a_seeded_schedule<R: Runtime>(rt: Clocked<R>) {
    let seven = schedule_of(&rt, &seeded("search", 7)).await;
    // "Stop before the delays add up to more than this": the attempts whose delays so far
    // add up to no more than max_elapsed.
    let limit = u64::try_from(seven[2].as_millis()).unwrap() + 1;
    let text = instance("search", &format!("seed = 7\nmax_elapsed = \"{limit}ms\""));
    let expected: Vec<Duration> = seven.iter().copied().filter(|s| *s <= ms(limit)).collect();
    assert!(expected.len() >= 3 && expected.len() < 5, "{seven:?}");
    let registry = registry(&rt, &text);
    assert_eq!(pipeline_schedule(&rt, &registry).await, expected);
    assert_eq!(pipeline_schedule(&rt, &registry).await, expected);

    // max_delay caps each jittered delay: with a 150 ms cap and full jitter, no pause is
    // longer, and the seed still fixes them.
    let text = instance("search", "seed = 7\nmax_delay = \"150ms\"");
    let capped = schedule_of(&rt, &text).await;
    assert_eq!(capped.len(), 5);
    assert_eq!(capped, schedule_of(&rt, &text).await);
    assert!(pauses(&capped).iter().all(|p| *p <= ms(150)), "{capped:?}");
}

#[test]
fn max_elapsed_and_max_delay_cut_a_seeded_schedule_the_same_way() {
    on_every_runtime!(max_elapsed_cuts_a_seeded_schedule);
}

async fn a_reload_of_the_shape_keeps_the_seed<R: Runtime>(rt: Clocked<R>) {
    let equal =
        |name| instance(name, "seed = 7").replace("jitter = \"full\"", "jitter = \"equal\"");
    let equal_pipeline = schedule_of(&rt, &equal("search")).await;
    let equal_client = client_schedule(&rt, &client(&rt, &equal("client"))).await;

    let registry_p = registry(&rt, &seeded("search", 7));
    registry_p.reload(config(&equal("search"))).unwrap();
    assert_eq!(pipeline_schedule(&rt, &registry_p).await, equal_pipeline);

    let registry_c = registry(&rt, &seeded("client", 7));
    let held = registry_c.http_client("client").unwrap();
    registry_c.reload(config(&equal("client"))).unwrap();
    assert_eq!(client_schedule(&rt, &held).await, equal_client);
    // And to decorrelated jitter, on the same seed.
    let decorrelated = "[instances.client]\ndeadline = \"1h\"\nhttp = {}\n[instances.client.retry]\n\
         backoff = \"decorrelated_jitter\"\ninitial_delay = \"100ms\"\nmax_attempts = 5\nseed = 7\n";
    let fresh = client_schedule(&rt, &client(&rt, decorrelated)).await;
    assert_eq!(
        fresh,
        client_schedule(&rt, &client(&rt, decorrelated)).await
    );
    registry_c.reload(config(decorrelated)).unwrap();
    assert_eq!(client_schedule(&rt, &held).await, fresh);
}

#[test]
fn a_reload_changing_the_jitter_under_the_same_seed() {
    on_every_runtime!(a_reload_of_the_shape_keeps_the_seed);
}
