//! Hedging by name: the `[hedge]` section's keys, layers and key paths, the registry's live
//! handle, and reloads that reach new calls but not running ones, keeping what the hedge
//! learned (its latency estimate, its budget's window), in virtual time.
#![cfg(feature = "toml")]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidewall::classify::ErrorsWhere;
use tidewall::config::{Config, LiveHedge, Problem, Registry};
use tidewall::hedge::Idempotent;
use tidewall::telemetry::EventKind;

fn config(text: &str) -> Config {
    Config::from_toml(text).expect("a valid configuration")
}

fn refused(text: &str) -> String {
    Config::from_toml(text)
        .expect_err("an invalid configuration")
        .to_string()
}

const MS: Duration = Duration::from_millis(1);

/// One hedged call whose every copy takes `took` (a copy numbered from 1 takes `took(n)`),
/// returning the answer and how many copies were started.
async fn hedged(hedge: &LiveHedge, took: impl Fn(u32) -> u64) -> (Result<u32, ()>, u32) {
    let started = AtomicU32::new(0);
    let answer = hedge
        .call(Idempotent(|| {
            let n = started.fetch_add(1, Ordering::Relaxed) + 1;
            let wait = Duration::from_millis(took(n));
            async move {
                tokio::time::sleep(wait).await;
                Ok(n)
            }
        }))
        .await;
    (answer, started.load(Ordering::Relaxed))
}

#[test]
fn every_key_reaches_the_builder() {
    let c = config(
        "[instances.a.hedge]\ndelay = \"40ms\"\nmax_hedges = 3\npercentile = 0.9\nbudget_ratio = 0.1\n",
    );
    let hedge = c.instance("a").unwrap().hedge().unwrap().build().unwrap();
    assert_eq!((hedge.delay(), hedge.max_hedges()), (40 * MS, 3));
    let bare = config("[instances.a.hedge]\n");
    let hedge = bare
        .instance("a")
        .unwrap()
        .hedge()
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(
        (hedge.delay(), hedge.max_hedges()),
        (100 * MS, 1),
        "the builder's defaults"
    );
}

#[test]
fn layers_fill_in_and_off_turns_a_lower_layer_off() {
    let c = config(
        "[defaults.hedge]\ndelay = \"70ms\"\npercentile = 0.99\nmin_samples = 5\nbudget_ratio = 0.2\n\
         [configs.fast.hedge]\nmax_hedges = 2\n\
         [instances.a]\nbase = \"fast\"\n[instances.a.hedge]\npercentile = \"off\"\nbudget_ratio = \"off\"\n",
    );
    let a = c.instance("a").unwrap();
    let hedge = a.hedge().unwrap().build().unwrap();
    assert_eq!((hedge.delay(), hedge.max_hedges()), (70 * MS, 2));
    let s = c.instances["a"].hedge.as_ref().unwrap();
    assert_eq!(s.percentile, Some(tidewall::config::Toggle::Off));
}

#[test]
fn bad_values_are_reported_at_their_key() {
    let e = refused("[instances.a.hedge]\ndelay = \"0s\"\n");
    assert!(e.starts_with("instances.a.hedge.delay:"), "{e}");
    let e = refused("[instances.a.hedge]\npercentile = 1.5\n");
    assert!(e.starts_with("instances.a.hedge.percentile:"), "{e}");
    let e = refused("[instances.a.hedge]\npercentile = nan\n");
    assert!(e.starts_with("instances.a.hedge.percentile:"), "{e}");
    let e = refused("[defaults.hedge]\npercentile = 0.5\n[instances.a.hedge]\nmin_samples = 0\n");
    assert!(e.starts_with("instances.a.hedge.min_samples:"), "{e}");
    let e = refused("[instances.a.hedge]\nbudget_ratio = 2000\n");
    assert!(e.starts_with("instances.a.hedge.budget_ratio:"), "{e}");
    let e = refused("[instances.a.hedge]\nmax_hedges = 4294967295\n");
    assert!(e.starts_with("instances.a.hedge.max_hedges:"), "{e}");
    let e = refused("[instances.a.hedge]\nmax_hedge = 2\n");
    assert!(e.contains("unknown field `max_hedge`"), "{e}");
    let e = refused("[defaults.hedge]\ndelay = \"1ms\"\n[configs.b.hedge]\ndelay = \"0s\"\n");
    assert!(e.starts_with("configs.b.hedge.delay:"), "{e}");
}

#[test]
fn min_samples_without_any_percentile_is_refused_where_it_is_set() {
    let e = refused("[defaults.hedge]\nmin_samples = 10\n[instances.a.hedge]\ndelay = \"5ms\"\n");
    assert!(e.starts_with("defaults.hedge.min_samples:"), "{e}");
    assert!(e.contains("only with a `percentile`"), "{e}");
    // Turned off above it, it waits unused for a layer that turns the percentile on.
    let c = config(
        "[defaults.hedge]\npercentile = 0.9\nmin_samples = 10\n[instances.a.hedge]\npercentile = \"off\"\n",
    );
    assert!(c.instance("a").unwrap().hedge().is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_declared_hedge_is_built_up_front_and_shared_by_its_handles() {
    let registry = Registry::new(config("[instances.search.hedge]\ndelay = \"20ms\"\n")).unwrap();
    let listed = registry.hedges();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0.as_ref(), "search");
    let (a, b) = (registry.hedge("search").unwrap(), listed[0].1.clone());
    // The stuck primary is hedged after 20 ms; the hedge answers 10 ms later.
    let started = tokio::time::Instant::now();
    assert_eq!(
        hedged(&a, |n| if n == 1 { 10_000 } else { 10 }).await,
        (Ok(2), 2)
    );
    assert_eq!(started.elapsed(), 30 * MS);
    registry
        .reload(config("[instances.search.hedge]\ndelay = \"5ms\"\n"))
        .unwrap();
    assert_eq!(b.hedge().delay(), 5 * MS, "every handle follows the reload");
}

#[tokio::test(start_paused = true)]
async fn a_strict_registry_refuses_an_undeclared_hedge_and_a_lax_one_uses_the_defaults() {
    let text = "[defaults.hedge]\ndelay = \"30ms\"\n[instances.a.hedge]\n";
    let strict = Registry::builder(config(text))
        .strict(true)
        .build()
        .unwrap();
    let e = strict.hedge("other").unwrap_err();
    assert_eq!(*e.problem(), Problem::Undeclared);
    let lax = Registry::new(config(text)).unwrap();
    assert_eq!(lax.hedge("other").unwrap().hedge().delay(), 30 * MS);
}

#[tokio::test(start_paused = true)]
async fn a_running_call_keeps_its_settings_and_the_next_takes_the_new_ones() {
    let registry = Registry::new(config(
        "[instances.s.hedge]\ndelay = \"50ms\"\nmax_hedges = 1\n",
    ))
    .unwrap();
    let hedge = registry.hedge("s").unwrap();
    let running = tokio::spawn({
        let hedge = hedge.clone();
        async move { hedged(&hedge, |n| if n == 1 { 1_000 } else { 10 }).await }
    });
    tokio::time::sleep(10 * MS).await;
    registry
        .reload(config(
            "[instances.s.hedge]\ndelay = \"50ms\"\nmax_hedges = 0\n",
        ))
        .unwrap();
    assert_eq!(
        running.await.unwrap(),
        (Ok(2), 2),
        "started with one hedge: it keeps it"
    );
    let started = tokio::time::Instant::now();
    assert_eq!(
        hedged(&hedge, |n| if n == 1 { 1_000 } else { 10 }).await,
        (Ok(1), 1),
        "after the reload: no hedge"
    );
    assert_eq!(started.elapsed(), 1_000 * MS);
}

#[tokio::test(start_paused = true)]
async fn an_invalid_reload_is_refused_and_the_hedge_stays_as_it_was() {
    let registry = Registry::new(config("[instances.s.hedge]\ndelay = \"50ms\"\n")).unwrap();
    let hedge = registry.hedge("s").unwrap();
    let bad = Config::from_toml("[instances.s.hedge]\ndelay = \"0ms\"\n");
    assert!(bad.is_err(), "refused as it is read");
    // A configuration built in code skips reading: the reload refuses it.
    let mut unread = config("[instances.s.hedge]\n");
    unread
        .instances
        .get_mut("s")
        .unwrap()
        .hedge
        .as_mut()
        .unwrap()
        .percentile = Some(tidewall::config::Toggle::On(0.0));
    let e = registry.reload(unread).unwrap_err();
    assert!(
        e.to_string().starts_with("instances.s.hedge.percentile:"),
        "{e}"
    );
    assert_eq!(hedge.hedge().delay(), 50 * MS, "the old settings stay");
}

#[tokio::test(start_paused = true)]
async fn the_estimate_survives_a_reload_that_keeps_its_quantile_and_restarts_with_another() {
    let text = |delay: &str, quantile: f64| {
        config(&format!(
            "[instances.s.hedge]\ndelay = \"{delay}\"\npercentile = {quantile}\nmin_samples = 10\n"
        ))
    };
    let registry = Registry::new(text("500ms", 0.5)).unwrap();
    let hedge = registry.hedge("s").unwrap();
    for _ in 0..10 {
        assert_eq!(hedged(&hedge, |_| 20).await, (Ok(1), 1));
    }
    let learned = hedge.hedge().delay();
    assert!(
        learned >= 20 * MS && learned < 500 * MS,
        "the estimate is in force: {learned:?}"
    );
    registry.reload(text("400ms", 0.5)).unwrap();
    assert_eq!(hedge.hedge().delay(), learned, "the same quantile: kept");
    registry.reload(text("400ms", 0.9)).unwrap();
    assert_eq!(
        hedge.hedge().delay(),
        400 * MS,
        "another quantile starts anew, on the fixed delay"
    );
}

/// A fixed delay measures no quantile: a reload that turns on a percentile (even the median
/// with one sample, the settings a fixed hedge was built with underneath) starts a new
/// estimate, on the fixed delay, not one made of the fixed hedge's calls.
#[tokio::test(start_paused = true)]
async fn a_reload_that_turns_a_percentile_on_starts_a_new_estimate() {
    let fixed = config("[instances.s.hedge]\ndelay = \"10ms\"\nmax_hedges = 0\n");
    let registry = Registry::new(fixed).unwrap();
    let hedge = registry.hedge("s").unwrap();
    for _ in 0..64 {
        assert_eq!(hedged(&hedge, |_| 30).await, (Ok(1), 1));
    }
    assert_eq!(hedge.hedge().delay(), 10 * MS);
    registry
        .reload(config(
            "[instances.s.hedge]\ndelay = \"10ms\"\nmax_hedges = 0\npercentile = 0.5\n\
             min_samples = 1\n",
        ))
        .unwrap();
    assert_eq!(
        hedge.hedge().delay(),
        10 * MS,
        "a new estimate, no sample yet"
    );
    assert_eq!(hedged(&hedge, |_| 30).await, (Ok(1), 1));
    let learned = hedge.hedge().delay();
    assert!(learned >= 30 * MS && learned < 40 * MS, "{learned:?}");
}

#[tokio::test(start_paused = true)]
async fn the_budget_keeps_its_window_across_a_reload() {
    let text = |delay: &str| {
        config(&format!(
            "[instances.s.hedge]\ndelay = \"{delay}\"\nbudget_ratio = 0.1\n"
        ))
    };
    let slow = |n: u32| if n == 1 { 1_000 } else { 10 };
    // A new hedge's budget has no calls in its window: its first slow call may not hedge.
    let fresh = Registry::new(text("50ms")).unwrap();
    assert_eq!(hedged(&fresh.hedge("s").unwrap(), slow).await, (Ok(1), 1));

    let registry = Registry::new(text("50ms")).unwrap();
    let hedge = registry.hedge("s").unwrap();
    for _ in 0..20 {
        assert_eq!(hedged(&hedge, |_| 1).await, (Ok(1), 1));
    }
    registry.reload(text("40ms")).unwrap();
    assert_eq!(
        hedged(&hedge, slow).await,
        (Ok(2), 2),
        "twenty calls paid for two hedges, and the reload kept them"
    );
}

#[tokio::test(start_paused = true)]
async fn the_registry_listener_hears_hedges_before_and_after_a_reload() {
    let heard = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&heard);
    let registry = Registry::builder(config("[instances.s.hedge]\ndelay = \"5ms\"\n"))
        .on_event(move |event| {
            if let EventKind::HedgeLaunched { hedge } = event.kind {
                sink.lock()
                    .unwrap()
                    .push((event.policy, event.name.to_owned(), hedge));
            }
        })
        .build()
        .unwrap();
    let hedge = registry.hedge("s").unwrap();
    assert_eq!(
        hedged(&hedge, |n| if n == 1 { 100 } else { 1 }).await,
        (Ok(2), 2)
    );
    registry
        .reload(config(
            "[instances.s.hedge]\ndelay = \"5ms\"\nmax_hedges = 2\n",
        ))
        .unwrap();
    assert_eq!(
        hedged(&hedge, |n| if n < 3 { 100 } else { 1 }).await,
        (Ok(3), 3)
    );
    let s = || "s".to_owned();
    assert_eq!(
        *heard.lock().unwrap(),
        [("hedge", s(), 1), ("hedge", s(), 1), ("hedge", s(), 2)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_handle_keeps_its_classifier_across_reloads() {
    let registry = Registry::new(config("[instances.s.hedge]\nmax_hedges = 2\n")).unwrap();
    let hedge = registry
        .hedge("s")
        .unwrap()
        .classify(ErrorsWhere(|e: &&str| *e == "busy"));
    registry
        .reload(config("[instances.s.hedge]\nmax_hedges = 3\n"))
        .unwrap();
    let copies = AtomicU32::new(0);
    let answer = hedge
        .call(Idempotent(|| {
            copies.fetch_add(1, Ordering::Relaxed);
            async { Err::<u32, _>("not found") }
        }))
        .await;
    assert_eq!(answer, Err("not found"));
    assert_eq!(
        copies.load(Ordering::Relaxed),
        1,
        "not worth another copy, after the reload too"
    );
}

#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn an_http_client_instance_has_its_hedge_too() {
    let registry = Registry::new(config(
        "[instances.api]\nhttp = {}\n[instances.api.retry]\nmax_attempts = 2\n\
         [instances.api.hedge]\ndelay = \"20ms\"\n",
    ))
    .unwrap();
    assert!(registry.http_client("api").is_ok());
    let listed: Vec<String> = registry
        .hedges()
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    assert_eq!(listed, ["api"]);
    let hedge = registry.hedge("api").unwrap();
    assert_eq!(
        hedged(&hedge, |n| if n == 1 { 1_000 } else { 10 }).await,
        (Ok(2), 2)
    );
}
