//! Fault injection by name: the `[chaos]` section's rules and key paths, the registry's
//! handle around a pipeline's operation, and a reload that switches and moves the rates at
//! once while the seed stays fixed, in virtual time.
#![cfg(all(feature = "toml", feature = "chaos"))]

use std::time::Duration;

use tidewall::chaos::{Chaos, Fault, InjectedFault};
use tidewall::config::{Config, Problem, Registry};

fn config(text: &str) -> Config {
    Config::from_toml(text).expect("a valid configuration")
}

/// Whether two rates are the same (rates are kept in parts per million).
fn same(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

fn refused(text: &str) -> String {
    Config::from_toml(text)
        .expect_err("an invalid configuration")
        .to_string()
}

#[test]
fn bad_values_are_reported_at_their_key() {
    let e = refused("[instances.a.chaos]\nerror_rate = 1.5\n");
    assert!(e.starts_with("instances.a.chaos.error_rate:"), "{e}");
    let e = refused("[defaults.chaos]\nhang_rate = nan\n");
    assert!(e.starts_with("defaults.chaos.hang_rate:"), "{e}");
    let e = refused("[instances.a.chaos]\nlatency_rate = 0.5\n");
    assert!(
        e.starts_with("instances.a.chaos.latency:"),
        "a rate needs its latency: {e}"
    );
    let e = refused("[instances.a.chaos]\nerror_rate = 0.6\nalter_rate = 0.5\n");
    assert!(
        e.starts_with("instances.a.chaos:"),
        "a sum past 1 is the section's: {e}"
    );
    // The defaults alone may leave a sum past 1 for an instance to settle.
    let settled = "[defaults.chaos]\nerror_rate = 0.6\nhang_rate = 0.6\n\
                   [instances.a.chaos]\nhang_rate = 0.1\n";
    assert!(Registry::new(config(settled)).is_ok());
    let e = refused("[instances.a.chaos]\nerror_rat = 0.5\n");
    assert!(e.contains("unknown field `error_rat`"), "{e}");
}

#[test]
fn a_configured_handle_replays_as_one_built_in_code() {
    let c = config(
        "[defaults.chaos]\nseed = 42\n[instances.a.chaos]\nerror_rate = 0.25\nlatency_rate = 0.5\nlatency = \"20ms\"\n",
    );
    let registry = Registry::builder(c)
        .runtime(tidewall::testing::FakeClock::new())
        .build()
        .unwrap();
    let configured = registry.chaos("a").unwrap();
    let coded = Chaos::builder()
        .seed(42)
        .error(0.25)
        .latency(0.5, Duration::from_millis(20))
        .build()
        .unwrap();
    assert!((0..200).all(|n| configured.decide_nth(n) == coded.decide_nth(n)));
    assert_eq!(configured.name(), "a");
    assert_eq!(
        registry.chaos_handles().len(),
        1,
        "built from the start, to list"
    );
    // A name the file does not declare gets the defaults: the seed, no rate.
    let other = registry.chaos("other").unwrap();
    assert_eq!(other.seed(), 42);
    assert!(same(other.settings().error_rate, 0.0));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_reload_switches_and_moves_the_rates_at_once() {
    let text = |enabled: bool, error: f64, hang: f64| {
        format!(
            "[instances.a]\nattempt_timeout = \"100ms\"\n[instances.a.chaos]\nseed = 9\nenabled = {enabled}\nerror_rate = {error}\nhang_rate = {hang}\n"
        )
    };
    let registry = Registry::new(config(&text(false, 0.6, 0.4))).unwrap();
    let (pipeline, chaos) = (
        registry.pipeline("a").unwrap(),
        registry.chaos("a").unwrap(),
    );
    let op = || async { Ok::<_, InjectedFault>(1) };
    assert_eq!(pipeline.call(chaos.wrap(op)).await, Ok(1));
    assert_eq!(chaos.decided(), 0, "switched off: no number drawn");

    // Error and hang trade shares in one reload: as two steps, either order would pass
    // through a sum above 1 and be refused.
    let reload = registry.reload(config(&text(true, 0.4, 0.6))).unwrap();
    assert_eq!(reload.retuned, 1);
    let settings = chaos.settings();
    assert!(settings.enabled);
    assert!(
        same(settings.error_rate, 0.4) && same(settings.hang_rate, 0.6),
        "{settings:?}"
    );
    // Every call now gets an error or a hang: the attempt timeout ends the hangs.
    for n in 0..20 {
        let expected = chaos.decide_nth(chaos.decided());
        let result = pipeline.call(chaos.wrap(op)).await;
        match expected.fault {
            Some(Fault::Error) => assert!(result.is_err(), "call {n}"),
            Some(Fault::Hang) => assert_eq!(result, Err(tidewall::Error::TimedOut), "call {n}"),
            other => panic!("call {n}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_seed_is_fixed_while_the_handle_is_held() {
    let registry =
        Registry::new(config("[instances.a.chaos]\nseed = 1\nerror_rate = 0.5\n")).unwrap();
    let chaos = registry.chaos("a").unwrap();
    let e = registry
        .reload(config("[instances.a.chaos]\nseed = 2\nerror_rate = 0.1\n"))
        .unwrap_err();
    assert_eq!(e.path(), "instances.a.chaos.seed");
    assert!(matches!(e.problem(), Problem::Fixed), "{e}");
    assert!(
        same(chaos.settings().error_rate, 0.5),
        "refused whole: nothing changed"
    );
    // Leaving the seed out keeps the one in force.
    registry
        .reload(config("[instances.a.chaos]\nerror_rate = 0.1\n"))
        .unwrap();
    assert_eq!(chaos.seed(), 1);
    assert!(same(chaos.settings().error_rate, 0.1));
}

#[test]
fn every_section_prints_back_to_itself() {
    let c = config(
        "[defaults.chaos]\nenabled = false\nseed = 18446744073709551615\n\
         [instances.a.chaos]\nlatency_rate = 0.000001\nlatency = \"1h\"\nalter_rate = 1\n",
    );
    let printed = toml::to_string(&c).unwrap();
    assert_eq!(Config::from_toml(&printed).unwrap(), c);
}
