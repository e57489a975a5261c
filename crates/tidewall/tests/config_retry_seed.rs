//! `[retry] seed`: the jitter of a configured pipeline and HTTP client fixed by the file, so a
//! test in virtual time sees the same retry schedule on every run; layered as every key,
//! refused where the schedule has no jitter, and taken by a reload. On every runtime adapter.
#![cfg(all(feature = "toml", feature = "http"))]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidewall::config::{Config, Problem, Registry};
use tidewall::http::{ClientPolicies, Overrides};
use tidewall::rt::{Clock, Runtime};
use tidewall::testing::Clocked;
use tidewall::{Backoff, Jitter};

fn config(text: &str) -> Config {
    Config::from_toml(text).unwrap_or_else(|e| panic!("a valid configuration: {e}\n{text}"))
}

/// Five attempts, full jitter on 100 ms doubling: four random pauses.
fn jittered(instance: &str, seed: Option<u64>) -> String {
    let seed = seed.map_or_else(String::new, |seed| format!("seed = {seed}\n"));
    format!(
        "[instances.{instance}]\ndeadline = \"1h\"\n{}\n[instances.{instance}.retry]\n\
         initial_delay = \"100ms\"\nmax_attempts = 5\njitter = \"full\"\n{seed}",
        if instance == "client" {
            "http = {}"
        } else {
            ""
        }
    )
}

/// When each attempt of one always-failing pipeline call started, from the call's start.
async fn pipeline_schedule<R: Runtime>(
    rt: &Clocked<R>,
    registry: &Registry<Clocked<R>>,
) -> Vec<Duration> {
    let pipeline = registry.pipeline("search").unwrap();
    let start = rt.now();
    let starts = Mutex::new(Vec::new());
    let _ = pipeline
        .call(|| {
            starts.lock().unwrap().push(rt.now() - start);
            async { Err::<(), _>("busy") }
        })
        .await;
    starts.into_inner().unwrap()
}

/// The same for one request through an HTTP client whose every answer is a 503.
async fn client_schedule<R: Clock>(rt: &R, client: &ClientPolicies<R>) -> Vec<Duration> {
    let start = rt.now();
    let starts = Arc::new(Mutex::new(Vec::new()));
    let request = http::Request::get("http://api.test/").body(()).unwrap();
    let _ = client
        .run(request, Overrides::new(), |_| {
            starts.lock().unwrap().push(rt.now() - start);
            async {
                let response = http::Response::builder().status(503).body(()).unwrap();
                Ok::<_, std::io::Error>(response)
            }
        })
        .await;
    starts.lock().unwrap().clone()
}

fn registry<R: Runtime>(rt: &Clocked<R>, text: &str) -> Registry<Clocked<R>> {
    Registry::builder(config(text))
        .runtime(rt.clone())
        .build()
        .unwrap()
}

async fn a_seed_fixes_a_configured_pipelines_schedule<R: Runtime>(rt: Clocked<R>) {
    let seven = pipeline_schedule(&rt, &registry(&rt, &jittered("search", Some(7)))).await;
    assert_eq!(seven.len(), 5);
    assert_eq!(seven[0], Duration::ZERO);
    let again = registry(&rt, &jittered("search", Some(7)));
    assert_eq!(
        pipeline_schedule(&rt, &again).await,
        seven,
        "same seed, same schedule"
    );
    assert_eq!(
        pipeline_schedule(&rt, &again).await,
        seven,
        "every call of it"
    );
    let eight = registry(&rt, &jittered("search", Some(8)));
    assert_ne!(
        pipeline_schedule(&rt, &eight).await,
        seven,
        "another seed, another"
    );

    // A reload takes the new seed for the calls after it.
    again.reload(config(&jittered("search", Some(8)))).unwrap();
    assert_eq!(
        pipeline_schedule(&rt, &again).await,
        pipeline_schedule(&rt, &eight).await
    );
}

#[test]
fn a_seed_fixes_a_configured_pipelines_retry_schedule() {
    on_every_runtime!(a_seed_fixes_a_configured_pipelines_schedule);
}

async fn a_seed_fixes_a_configured_clients_schedule<R: Runtime>(rt: Clocked<R>) {
    let client = |seed| {
        registry(&rt, &jittered("client", seed))
            .http_client("client")
            .unwrap()
    };
    let seven = client_schedule(&rt, &client(Some(7))).await;
    assert_eq!(seven.len(), 5);
    assert_eq!(client_schedule(&rt, &client(Some(7))).await, seven);
    assert_ne!(client_schedule(&rt, &client(Some(8))).await, seven);

    // In code, the same seed gives the same schedule as the file's.
    let coded = ClientPolicies::builder()
        .runtime(rt.clone())
        .deadline(Some(Duration::from_secs(3600)))
        .retry(
            Backoff::exponential(Duration::from_millis(100))
                .jitter(Jitter::Full)
                .max_attempts(5)
                .build()
                .unwrap(),
        )
        .retry_budget(None)
        .breaker(None)
        .seed(7)
        .build()
        .unwrap();
    assert_eq!(client_schedule(&rt, &coded).await, seven);

    // A reload retunes the client in place, its seed included.
    let registry = registry(&rt, &jittered("client", Some(7)));
    let held = registry.http_client("client").unwrap();
    registry
        .reload(config(&jittered("client", Some(8))))
        .unwrap();
    assert_eq!(
        client_schedule(&rt, &held).await,
        client_schedule(&rt, &client(Some(8))).await
    );
}

#[test]
fn a_seed_fixes_a_configured_http_clients_retry_schedule() {
    on_every_runtime!(a_seed_fixes_a_configured_clients_schedule);
}

#[test]
fn the_seed_layers_as_every_key() {
    let config = config(
        "[defaults.retry]\nseed = 1\n[configs.fixed.retry]\nseed = 2\n\
         [instances.a]\nretry = {}\n\
         [instances.b]\nbase = \"fixed\"\nretry = {}\n\
         [instances.c.retry]\nseed = 3\n",
    );
    let seed = |name| config.instance(name).unwrap().retry_seed();
    assert_eq!(
        (seed("a"), seed("b"), seed("c")),
        (Some(1), Some(2), Some(3))
    );
    let unseeded = Config::from_toml("[instances.a]\nretry = {}\n").unwrap();
    assert_eq!(unseeded.instance("a").unwrap().retry_seed(), None);
}

#[test]
fn a_seed_with_nothing_random_to_fix_is_refused_at_its_key() {
    let refused = Config::from_toml(
        "[instances.a.retry]\nbackoff = \"constant\"\njitter = \"none\"\nseed = 7\n",
    )
    .unwrap_err();
    assert_eq!(refused.path(), "instances.a.retry.seed");
    assert!(matches!(refused.problem(), Problem::Rule(_)), "{refused}");
    // From the defaults, under an instance without jitter: refused where it is written.
    let refused =
        Config::from_toml("[defaults.retry]\nseed = 7\n[instances.a.retry]\njitter = \"none\"\n")
            .unwrap_err();
    assert_eq!(refused.path(), "defaults.retry.seed");
    // Decorrelated jitter is its own randomness: a seed fixes it.
    let fine =
        Config::from_toml("[instances.a.retry]\nbackoff = \"decorrelated_jitter\"\nseed = 7\n");
    assert!(fine.is_ok(), "{fine:?}");
    // The default jitter is full: a lone seed is fine.
    assert!(Config::from_toml("[instances.a.retry]\nseed = 7\n").is_ok());
}
