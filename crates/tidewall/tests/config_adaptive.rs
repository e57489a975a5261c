//! Adaptive limiters by name: the `[adaptive]` section's rules and key paths, the registry's
//! limiter and pipeline stage, and what a reload keeps (the limit learned, permits held) and
//! what it replaces, in virtual time.
#![cfg(feature = "toml")]

mod support;

use std::time::Duration;

use tidewall::adaptive::{LimitAlgorithm, Priority};
use tidewall::config::{Config, Problem, Registry};
use tidewall::{Error, Rejected};

fn config(text: &str) -> Config {
    Config::from_toml(text).expect("a valid configuration")
}

fn refused(text: &str) -> String {
    Config::from_toml(text)
        .expect_err("an invalid configuration")
        .to_string()
}

const AIMD: &str = r#"
    [instances.search.adaptive]
    algorithm = "aimd"
    initial_limit = 10
    min_limit = 1
    timeout = "100ms"
"#;

#[test]
fn an_algorithm_must_be_named_by_some_layer() {
    assert_eq!(
        refused("[instances.search.adaptive]\ninitial_limit = 5\n"),
        "instances.search.adaptive.algorithm: must be set (it has no default)"
    );
    // The defaults may name it for every instance.
    let c = config(
        "[defaults.adaptive]\nalgorithm = \"vegas\"\n[instances.search.adaptive]\ninitial_limit = 5\n",
    );
    let search = c.instance("search").unwrap().adaptive_limiter().unwrap();
    assert_eq!(search.build().unwrap().limit(), 5);
}

#[test]
fn a_layer_naming_an_algorithm_sets_only_its_keys() {
    let e = refused("[instances.a.adaptive]\nalgorithm = \"aimd\"\nsmoothing = 0.5\n");
    assert!(
        e.starts_with("instances.a.adaptive.smoothing: not a key of `algorithm = \"aimd\"`"),
        "{e}"
    );
    let e = refused("[configs.b.adaptive]\nalgorithm = \"gradient2\"\nwindow = 10\n");
    assert!(e.starts_with("configs.b.adaptive.window:"), "{e}");
    // Across layers, the defaults may hold keys only some instances' algorithms read.
    let c = config(
        "[defaults.adaptive]\nbackoff_ratio = 0.5\nsmoothing = 0.5\n\
         [instances.a.adaptive]\nalgorithm = \"aimd\"\n\
         [instances.b.adaptive]\nalgorithm = \"vegas\"\n",
    );
    assert!(Registry::new(c).is_ok());
}

#[test]
fn codel_durations_only_next_to_codel() {
    let e = refused(
        "[instances.a.adaptive]\nalgorithm = \"aimd\"\ndiscipline = \"lifo\"\ncodel_target = \"5ms\"\n",
    );
    assert!(e.starts_with("instances.a.adaptive.codel_target:"), "{e}");
    let e = refused(
        "[instances.a.adaptive]\nalgorithm = \"aimd\"\nmax_queue = 4\ndiscipline = \"codel\"\ncodel_interval = \"0s\"\n",
    );
    assert!(e.starts_with("instances.a.adaptive.codel_interval:"), "{e}");
}

#[test]
fn bad_values_are_reported_at_the_layer_that_sets_them() {
    let e = refused(
        "[defaults.adaptive]\nbackoff_ratio = 1.5\n[instances.a.adaptive]\nalgorithm = \"aimd\"\n",
    );
    assert!(e.starts_with("defaults.adaptive.backoff_ratio:"), "{e}");
    let e = refused("[instances.a.adaptive]\nalgorithm = \"vegas\"\nmin_limit = 0\n");
    assert!(e.starts_with("instances.a.adaptive.min_limit:"), "{e}");
    let e = refused("[instances.a.adaptive]\nalgorithm = \"gradient2\"\nsheddable_share = 1.5\n");
    assert!(
        e.starts_with("instances.a.adaptive.sheddable_share:"),
        "{e}"
    );
    let e = refused(
        "[instances.a.adaptive]\nalgorithm = \"windowed_gradient\"\ndefault_share = 0.5\nsheddable_share = 0.9\n",
    );
    assert!(
        e.starts_with("instances.a.adaptive:"),
        "a conflict is the section's: {e}"
    );
    // The defaults alone may leave a contradiction for an instance to settle.
    let c = config(
        "[defaults.adaptive]\nmin_limit = 50\n[instances.a.adaptive]\nalgorithm = \"aimd\"\ninitial_limit = 60\nmax_limit = 100\n",
    );
    assert!(Registry::new(c).is_ok());
}

#[test]
fn an_instance_limits_calls_in_flight_one_way() {
    let e = refused(
        "[instances.a.bulkhead]\nmax_concurrent = 4\n[instances.a.adaptive]\nalgorithm = \"aimd\"\n",
    );
    assert!(
        e.starts_with("instances.a.adaptive: an instance limits calls in flight"),
        "{e}"
    );
    // A base's section counts as the instance's; the defaults' only fill sections in.
    let e = refused(
        "[configs.capped.bulkhead]\nmax_concurrent = 4\n\
         [instances.a]\nbase = \"capped\"\n[instances.a.adaptive]\nalgorithm = \"aimd\"\n",
    );
    assert!(e.contains("not both"), "{e}");
    // A base with both could serve no instance: it is refused where it is written, used or not.
    let e = refused(
        "[configs.capped.bulkhead]\nmax_concurrent = 4\n[configs.capped.adaptive]\nalgorithm = \"aimd\"\n",
    );
    assert!(
        e.starts_with("configs.capped.adaptive: an instance limits calls in flight"),
        "{e}"
    );
    let c = config(
        "[defaults.bulkhead]\nmax_concurrent = 4\n[instances.a.adaptive]\nalgorithm = \"aimd\"\n",
    );
    assert!(Registry::new(c).is_ok());
}

#[test]
fn every_section_prints_back_to_itself() {
    let c = config(
        r#"
        [defaults.adaptive]
        algorithm = "windowed_gradient"
        window = 20
        buffer = 0.5
        probe_interval = "30s"
        [instances.a.adaptive]
        max_queue = 8
        max_wait = "off"
        discipline = "codel"
        codel_target = "10ms"
        sheddable_share = 0.5
        "#,
    );
    let printed = toml::to_string(&c).unwrap();
    assert_eq!(Config::from_toml(&printed).unwrap(), c);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_registry_builds_a_declared_limiter_with_its_keys() {
    let registry = Registry::new(config(
        r#"
        [instances.search.adaptive]
        algorithm = "gradient2"
        min_limit = 1
        initial_limit = 3
        max_limit = 50
        max_queue = 2
        default_share = 0.8
        "#,
    ))
    .unwrap();
    let listed = registry.adaptive_limiters();
    assert_eq!(listed.len(), 1, "built from the start, to list");
    assert_eq!(listed[0].0, "search");
    let search = registry.adaptive_limiter("search").unwrap();
    assert_eq!((search.name(), search.limit()), ("search", 3));
    // 0.8 of 3 admits default calls while fewer than 2.4 are in flight: 3 of them.
    let held: Vec<_> = (0..3).map(|_| search.try_acquire().unwrap()).collect();
    assert!(search.try_acquire().is_err());
    let critical = search.with_priority(Priority::Critical);
    assert!(critical.try_acquire().is_err(), "the limit itself is full");
    drop(held);
    assert_eq!(search.in_flight(), 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_pipeline_admits_through_the_limiter_and_teaches_it() {
    let registry = Registry::new(config(AIMD)).unwrap();
    let pipeline = registry.pipeline("search").unwrap();
    let search = registry.adaptive_limiter("search").unwrap();
    // A call slower than AIMD's timeout is a drop: 10 × 0.9.
    let slow = pipeline
        .call(|| async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok::<_, ()>(())
        })
        .await;
    assert_eq!(slow, Ok(()));
    assert_eq!(search.limit(), 9);
    // The pipeline's calls hold the same slots the limiter hands out.
    let held: Vec<_> = (0..9).map(|_| search.try_acquire().unwrap()).collect();
    let full = pipeline.call(|| async { Ok::<_, ()>(()) }).await;
    assert_eq!(full, Err(Error::Rejected(Rejected::BulkheadFull)));
    drop(held);
    assert_eq!(search.in_flight(), 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_reload_keeps_what_was_learned_unless_the_algorithm_changed() {
    let registry = Registry::new(config(AIMD)).unwrap();
    let search = registry.adaptive_limiter("search").unwrap();
    let drop_one = || {
        let permit = search.try_acquire().unwrap();
        permit.failure();
    };
    drop_one();
    assert_eq!(search.limit(), 9);
    let held = search.try_acquire().unwrap();

    // Queue, wait and shares change in place; the limit learned stays.
    let with_queue = format!("{AIMD}max_queue = 4\nmax_wait = \"5s\"\nsheddable_share = 0.5\n");
    let reload = registry.reload(config(&with_queue)).unwrap();
    assert!(reload.relearning.is_empty(), "{reload:?}");
    assert_eq!((search.limit(), search.in_flight()), (9, 1));

    // A default key of another algorithm changes nothing this limiter reads.
    let other = format!("[defaults.adaptive]\nsmoothing = 0.3\n{with_queue}");
    let reload = registry.reload(config(&other)).unwrap();
    assert!(reload.relearning.is_empty(), "{reload:?}");
    assert_eq!(search.limit(), 9);

    // Its defaults written out are no change.
    let spelled = format!("{with_queue}backoff_ratio = 0.9\nmax_limit = 200\n");
    let reload = registry.reload(config(&spelled)).unwrap();
    assert!(reload.relearning.is_empty(), "{reload:?}");
    assert_eq!(search.limit(), 9);

    // Its own key changed: learning starts again, nothing held is revoked.
    let faster = with_queue.replace("timeout = \"100ms\"", "timeout = \"50ms\"");
    let reload = registry.reload(config(&faster)).unwrap();
    assert_eq!(reload.relearning, vec![tidewall::Name::from("search")]);
    assert_eq!((search.limit(), search.in_flight()), (10, 1));
    held.success();
    assert_eq!(search.in_flight(), 0);

    // Another algorithm altogether.
    let vegas = faster
        .replace("\"aimd\"", "\"vegas\"")
        .replace("timeout = \"50ms\"", "initial_limit = 4");
    let vegas = vegas.replacen("initial_limit = 10\n", "", 1);
    registry.reload(config(&vegas)).unwrap();
    assert_eq!(search.limit(), 4);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_larger_share_admits_the_queued_caller_at_once() {
    let text = |share: f64| {
        format!(
            "[instances.a.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = 2\nmax_queue = 4\nmax_wait = \"1h\"\nsheddable_share = {share}\n"
        )
    };
    let registry = Registry::new(config(&text(0.5))).unwrap();
    let a = registry.adaptive_limiter("a").unwrap();
    let prefetch = a.with_priority(Priority::Sheddable);
    let first = prefetch.try_acquire().unwrap();
    let waiting = tokio::spawn({
        let prefetch = prefetch.clone();
        async move {
            use tidewall::admission::{Admission, Wait};
            prefetch
                .admit(Wait::Until(tidewall::Deadline::none()))
                .await
                .map(drop)
        }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(a.queued(), 1, "half of 2 is in flight: it waits");
    registry.reload(config(&text(1.0))).unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(
        waiting.is_finished(),
        "admitted by the reload, not by a release"
    );
    assert_eq!(waiting.await.unwrap(), Ok(()));
    drop(first);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_reload_that_cannot_build_a_held_limiter_changes_nothing() {
    let registry = Registry::new(config(AIMD)).unwrap();
    let search = registry.adaptive_limiter("search").unwrap();
    search.try_acquire().unwrap().failure();
    let e = registry
        .reload(config("[instances.other.breaker]\n"))
        .unwrap_err();
    assert_eq!(e.path(), "defaults.adaptive.algorithm");
    assert!(matches!(e.problem(), Problem::Missing), "{e}");
    assert_eq!(search.limit(), 9);
    assert_eq!(
        registry.config().instances.len(),
        1,
        "the old configuration stays"
    );
}

#[test]
fn any_algorithm_is_the_algorithm_inside() {
    use tidewall::adaptive::{Aimd, AnyAlgorithm, Sample};
    let aimd = Aimd::builder()
        .min_limit(1)
        .initial_limit(20)
        .build()
        .unwrap();
    let mut any = AnyAlgorithm::from(aimd);
    let dropped = Sample {
        rtt: Duration::from_millis(1),
        inflight: 20,
        dropped: true,
        at: Duration::ZERO,
    };
    assert_eq!(any.update(&dropped), 18);
    assert_eq!((any.limit(), any.bounds()), (18, (1, 200)));
}

#[cfg(feature = "metrics")]
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn gauges_show_the_limit_learned() {
    use support::snapshot::{gauge, gauges_during};
    let registry = Registry::new(config(AIMD)).unwrap();
    let search = registry.adaptive_limiter("search").unwrap();
    search.try_acquire().unwrap().failure();
    let _held = search.try_acquire().unwrap();
    let all = gauges_during(|| registry.record_gauges());
    let of_search = |name: &str| gauge(&all, name, &[("name", "search")]);
    assert_eq!(of_search("tidewall_adaptive_limit"), Some(9.0));
    assert_eq!(of_search("tidewall_adaptive_in_flight"), Some(1.0));
    assert_eq!(of_search("tidewall_adaptive_queued"), Some(0.0));
}

#[test]
fn a_contradiction_left_for_an_instance_hides_no_bad_value() {
    // The defaults' limits contradict Aimd's default initial limit (20 > 1): an instance may
    // settle that, but the values themselves are checked all the same.
    for bad in [
        "backoff_ratio = nan",
        "sheddable_share = nan",
        "default_share = 0.0",
    ] {
        let text = format!("[defaults.adaptive]\nmax_limit = 1\n{bad}\n");
        let key = bad.split(' ').next().unwrap();
        let e = refused(&text);
        assert!(
            e.starts_with(&format!("defaults.adaptive.{key}:")),
            "{bad}: {e}"
        );
    }
    let named = "[defaults.adaptive]\nalgorithm = \"windowed_gradient\"\nmin_limit = 500\nprobe_interval = \"0s\"\n";
    assert!(refused(named).starts_with("defaults.adaptive.probe_interval:"));
}

#[test]
fn a_refused_reconfiguration_changes_nothing() {
    use tidewall::adaptive::{AdaptiveLimiter, Aimd};
    let aimd = |limit| {
        Aimd::builder()
            .min_limit(1)
            .initial_limit(limit)
            .build()
            .unwrap()
    };
    let limiter = AdaptiveLimiter::builder(aimd(4)).build().unwrap();
    limiter.try_acquire().unwrap().failure();
    assert_eq!(limiter.limit(), 3);
    let bad_share = AdaptiveLimiter::builder(aimd(8)).share(Priority::Sheddable, f64::NAN);
    assert!(limiter.reconfigure(bad_share).is_err());
    let bad_codel =
        AdaptiveLimiter::builder(aimd(8)).discipline(tidewall::adaptive::QueueDiscipline::Codel {
            target: Duration::ZERO,
            interval: Duration::from_millis(100),
        });
    assert!(limiter.reconfigure(bad_codel).is_err());
    assert_eq!(limiter.limit(), 3, "the algorithm in force stays");
    limiter
        .reconfigure(AdaptiveLimiter::builder(aimd(8)))
        .unwrap();
    assert_eq!(limiter.limit(), 8);
    let held: Vec<_> = (0..8).map(|_| limiter.try_acquire().unwrap()).collect();
    assert!(limiter.try_acquire().is_err());
    drop(held);
}

const HOSTS: &str = r#"
    [instances.hosts.adaptive]
    algorithm = "aimd"
    min_limit = 1
    initial_limit = 4
    [instances.hosts.keys]
    max_keys = 100
"#;

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_keyed_table_learns_per_key_and_follows_reloads() {
    let registry = Registry::new(config(HOSTS)).unwrap();
    let hosts = registry.keyed_adaptive_limiter::<String>("hosts").unwrap();
    let (slow, fast) = ("slow.example".to_owned(), "fast.example".to_owned());
    hosts.try_acquire(&slow).unwrap().failure();
    let held = hosts.try_acquire(&fast).unwrap();
    assert_eq!((hosts.limit(&slow), hosts.limit(&fast)), (Some(3), Some(4)));
    assert_eq!(hosts.max_keys(), 100);
    assert!(
        registry.keyed_adaptive_limiter::<u64>("hosts").is_err(),
        "one key type per table"
    );
    let listed = registry.keyed_tables();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].policy, listed[0].keys), ("keyed_adaptive", 2));

    // Shares and queue in place: each key keeps what it learned.
    let shed = format!("{HOSTS}\n[instances.hosts.adaptive]\n");
    let shed = shed.replacen(
        "[instances.hosts.adaptive]\n",
        "[instances.hosts.adaptive]\nsheddable_share = 0.5\nmax_queue = 2\n",
        1,
    );
    let shed = shed.trim_end_matches("[instances.hosts.adaptive]\n");
    let reload = registry.reload(config(shed)).unwrap();
    assert!(reload.relearning.is_empty(), "{reload:?}");
    assert_eq!((hosts.limit(&slow), hosts.limit(&fast)), (Some(3), Some(4)));

    // The algorithm changed: every key starts again, new keys too; nothing held is revoked.
    let eight = shed.replace("initial_limit = 4", "initial_limit = 8");
    let reload = registry.reload(config(&eight)).unwrap();
    assert_eq!(reload.relearning, vec![tidewall::Name::from("hosts")]);
    assert_eq!((hosts.limit(&slow), hosts.limit(&fast)), (Some(8), Some(8)));
    assert_eq!(hosts.in_flight(&fast), 1);
    hosts
        .try_acquire(&"new.example".to_owned())
        .unwrap()
        .success();
    assert_eq!(hosts.limit(&"new.example".to_owned()), Some(8));
    held.success();

    // The bound is fixed while the table is held.
    let wider = eight.replace("max_keys = 100", "max_keys = 200");
    let e = registry.reload(config(&wider)).unwrap_err();
    assert_eq!(e.path(), "instances.hosts.keys.max_keys");
    assert!(matches!(e.problem(), Problem::Fixed), "{e}");
}

#[test]
fn a_refused_keyed_reconfiguration_changes_no_key() {
    use tidewall::adaptive::{AdaptiveLimiter, Aimd, FixedLimit};
    let aimd = |limit| {
        Aimd::builder()
            .min_limit(1)
            .initial_limit(limit)
            .build()
            .unwrap()
    };
    let hosts = AdaptiveLimiter::builder(aimd(4))
        .keyed()
        .build::<u8>()
        .unwrap();
    hosts.try_acquire(&1).unwrap().failure();
    let bad = AdaptiveLimiter::builder(aimd(9)).share(Priority::Default, 0.0);
    assert!(hosts.reconfigure(bad).is_err());
    assert_eq!(hosts.limit(&1), Some(3));
    let zero = AdaptiveLimiter::builder(FixedLimit(0));
    let fixed = AdaptiveLimiter::builder(FixedLimit(2))
        .keyed()
        .build::<u8>()
        .unwrap();
    assert!(
        fixed.reconfigure(zero).is_err(),
        "a limit of zero is refused"
    );
    assert_eq!(fixed.try_acquire(&1).map(|p| p.success()), Ok(()));
    assert_eq!(fixed.limit(&1), Some(2));
}
