//! Which names a registry makes policies for: a pipeline or an HTTP client only for a declared
//! instance, any policy for any name unless the registry is strict; and the reloads that
//! remove an instance the registry holds something of: refused for a stack (and for anything,
//! strict), reported in `Reload::removed` otherwise, with nothing changed when refused.
#![cfg(all(feature = "toml", feature = "http", feature = "tokio"))]

use tidewall::config::{Config, Invalid, Problem, Registry};

fn config(text: &str) -> Config {
    Config::from_toml(text).unwrap_or_else(|e| panic!("a valid configuration: {e}\n{text}"))
}

/// An HTTP client instance, a pipeline instance and a plain one, over defaults that would
/// make any policy.
const FILE: &str = r#"
    [defaults.breaker]
    consecutive_failures = 5
    [defaults.bulkhead]
    max_concurrent = 8
    [defaults.rate_limit]
    count = 100
    period = "1s"
    [defaults.adaptive]
    algorithm = "aimd"

    [instances.outbound]
    http = {}
    [instances.outbound.breaker]
    consecutive_failures = 2

    [instances.payments.bulkhead]
    max_concurrent = 4
    max_queue = 0

    [instances.search.breaker]
    consecutive_failures = 3

    [instances.sessions.keys]
    max_keys = 10
    [instances.sessions.bulkhead]
    max_concurrent = 1
"#;

/// `FILE` without the instance named `name`.
fn without(name: &str) -> Config {
    config(&text_without(name))
}

/// `FILE`'s text without the instance named `name` (each is one block of lines).
fn text_without(name: &str) -> String {
    let mut kept = Vec::new();
    let mut skipping = false;
    for line in FILE.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            skipping = trimmed.starts_with(&format!("[instances.{name}"));
        }
        if !skipping {
            kept.push(line);
        }
    }
    kept.join("\n")
}

fn assert_refused<T>(result: Result<T, Invalid>, path: &str, problem: &Problem) {
    match result {
        Ok(_) => panic!("{path}: accepted, expected {problem:?}"),
        Err(err) => {
            assert_eq!((err.path(), err.problem()), (path, problem), "{err}");
            assert!(!err.to_string().is_empty());
        }
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn stacks_are_made_only_for_declared_instances() {
    let registry = Registry::new(config(FILE)).unwrap();
    assert_refused(
        registry.http_client("outbund"),
        "instances.outbund",
        &Problem::Undeclared,
    );
    assert_refused(
        registry.pipeline("paymnets"),
        "instances.paymnets",
        &Problem::Undeclared,
    );
    // Refused lookups take no place and hold nothing.
    assert_eq!(registry.http_clients().len(), 1);
    assert!(registry.pipelines().is_empty());
    // Declared, with or without `[http]`: made.
    assert!(registry.http_client("search").unwrap().breakers().is_some());
    assert!(registry.pipeline("payments").is_ok());
    // A declared instance with no section at all is a stack of none, asked for by name.
    let registry = Registry::new(config("[instances.bare]\n")).unwrap();
    assert!(registry.pipeline("bare").is_ok());
    assert!(registry.http_client("bare").unwrap().breakers().is_none());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_lenient_registry_makes_single_policies_for_any_name() {
    let registry = Registry::new(config(FILE)).unwrap();
    assert_eq!(registry.bulkhead("anything").unwrap().capacity(), 8);
    assert!(registry.breaker("anything").is_ok());
    assert!(registry.rate_limiter("anything").is_ok());
    assert!(registry.adaptive_limiter("anything").is_ok());
    assert!(registry.retry_budget("anything").is_ok());
    assert!(registry.keyed_bulkhead::<u64>("anything").is_ok());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_strict_registry_refuses_every_undeclared_name() {
    let registry = Registry::builder(config(FILE))
        .strict(true)
        .build()
        .unwrap();
    let at = "instances.anything";
    let undeclared = &Problem::Undeclared;
    assert_refused(registry.breaker("anything"), at, undeclared);
    assert_refused(registry.bulkhead("anything"), at, undeclared);
    assert_refused(registry.rate_limiter("anything"), at, undeclared);
    assert_refused(registry.adaptive_limiter("anything"), at, undeclared);
    assert_refused(registry.retry_budget("anything"), at, undeclared);
    assert_refused(registry.keyed_breaker::<u64>("anything"), at, undeclared);
    assert_refused(registry.keyed_bulkhead::<u64>("anything"), at, undeclared);
    assert_refused(
        registry.keyed_rate_limiter::<u64>("anything"),
        at,
        undeclared,
    );
    assert_refused(
        registry.keyed_adaptive_limiter::<u64>("anything"),
        at,
        undeclared,
    );
    assert_refused(registry.pipeline("anything"), at, undeclared);
    assert_refused(registry.http_client("anything"), at, undeclared);
    // A declared instance gets any kind, section or not (from the defaults).
    assert_eq!(registry.bulkhead("payments").unwrap().capacity(), 4);
    assert!(registry.breaker("payments").is_ok());
    assert!(registry.keyed_bulkhead::<u64>("sessions").is_ok());
    assert!(registry.breakers().iter().all(|(n, _)| n != "anything"));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_reload_cannot_strip_a_held_client_and_changes_nothing_when_refused() {
    let registry = Registry::new(config(FILE)).unwrap();
    let outbound = registry.http_client("outbound").unwrap();
    assert_refused(
        registry.reload(without("outbound")),
        "instances.outbound",
        &Problem::Removed,
    );
    assert!(outbound.breakers().is_some(), "the client keeps its stages");
    // The configuration in force is the old one: a policy made now is made from it.
    assert_eq!(registry.bulkhead("payments").unwrap().capacity(), 4);
    // Renamed in the file: the held name is gone all the same.
    let renamed = config(&FILE.replace("instances.outbound", "instances.outbound2"));
    assert_refused(
        registry.reload(renamed),
        "instances.outbound",
        &Problem::Removed,
    );
    // Kept declared, its sections gone: allowed, and the client has no stage after.
    let emptied = config(&format!(
        "{}\n[instances.outbound]\nhttp = {{}}\n",
        text_without("outbound")
    ));
    registry.reload(emptied).unwrap();
    assert!(outbound.breakers().is_none());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_reload_cannot_strip_a_held_pipeline() {
    let registry = Registry::new(config(FILE)).unwrap();
    let payments = registry.pipeline("payments").unwrap();
    assert_refused(
        registry.reload(without("payments")),
        "instances.payments",
        &Problem::Removed,
    );
    // The pipeline still holds its bulkhead of 4 with no queue.
    let bulkhead = registry.bulkhead("payments").unwrap();
    let held: Vec<_> = (0..4).map(|_| bulkhead.try_acquire().unwrap()).collect();
    let refused = payments.call(|| async { Ok::<_, ()>(()) }).await;
    assert!(
        refused.is_err(),
        "the bulkhead is still full for the pipeline"
    );
    drop(held);
    assert!(payments.call(|| async { Ok::<_, ()>(()) }).await.is_ok());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_lenient_reload_reports_the_instances_it_removed() {
    let registry = Registry::new(config(FILE)).unwrap();
    let search = registry.breaker("search").unwrap();
    let sessions = registry.keyed_bulkhead::<u64>("sessions").unwrap();
    let reload = registry.reload(without("search")).unwrap();
    assert_eq!(reload.removed, vec!["search"]);
    // The breaker runs on the defaults now, and is still held and listed.
    assert_eq!(search.name(), "search");
    assert!(registry.breakers().iter().any(|(n, _)| n == "search"));
    // A held keyed table's bound cannot fall back to the default's: that refusal stands.
    assert_refused(
        registry.reload(without("sessions")),
        "instances.sessions.keys.max_keys",
        &Problem::Fixed,
    );
    drop(sessions);
    // A name the file never declared is not "removed" by any reload.
    registry.breaker("adhoc").unwrap();
    assert!(registry.reload(config(FILE)).unwrap().removed.is_empty());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_strict_reload_cannot_remove_anything_held() {
    let registry = Registry::builder(config(FILE))
        .strict(true)
        .build()
        .unwrap();
    // Built up front: a plain instance's policies are held from the start.
    assert_refused(
        registry.reload(without("search")),
        "instances.search",
        &Problem::Removed,
    );
    // A keyed instance holds nothing until its table is asked for.
    registry.reload(without("sessions")).unwrap();
    registry.reload(config(FILE)).unwrap();
    registry.keyed_bulkhead::<u64>("sessions").unwrap();
    assert_refused(
        registry.reload(without("sessions")),
        "instances.sessions",
        &Problem::Removed,
    );
    // Adding instances is always fine.
    let more = config(&format!("{FILE}\n[instances.fresh.breaker]\n"));
    assert_eq!(
        registry.reload(more).unwrap().removed,
        Vec::<tidewall::Name>::new()
    );
}
